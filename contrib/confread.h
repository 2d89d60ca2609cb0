/*
 * ftpmailoauth - reading what the sign-in tool needs from proftpd.conf
 *
 * Only a few directives matter to the tool: MailOAuthAccount (every
 * account, parsed later by the module's own parser), MailOAuthStateDir
 * (where the token files live), MailOAuthRedis (the cluster's Redis, which
 * gets the tokens too) and User/Group (who must own them, since the
 * module's worker runs as that user).  The rest of the file is read with
 * ProFTPD's lexical rules (comments, line continuation with a trailing
 * backslash, double-quoted words, %{env:NAME}) and Include (files, globs,
 * directories) and otherwise skipped; <IfModule> and other blocks are read
 * through.
 */

#ifndef FTPMAILOAUTH_CONFREAD_H
#define FTPMAILOAUTH_CONFREAD_H

#include <stddef.h>

/* One MailOAuthAccount line: the words after the directive. */
struct ftpmailoauth_conf_account {
  char *name;
  int argc;
  char **argv;            /* key=value words after the name */
  char *where;            /* "FILE:LINE" */
};

/* A directive's value and where it was set (NULL when it was not). */
struct ftpmailoauth_conf_value {
  char *value;
  char *where;
};

struct ftpmailoauth_conf {
  struct ftpmailoauth_conf_value state_dir;   /* MailOAuthStateDir */
  struct ftpmailoauth_conf_value user;        /* User */
  struct ftpmailoauth_conf_value group;       /* Group */

  struct ftpmailoauth_conf_account *accounts;
  unsigned int naccounts;

  /* MailOAuthRedis's words (name unused); argc 0: none. */
  struct ftpmailoauth_conf_account redis;
};

/* Reads path (and everything it includes) into conf, which the caller
 * zeroes first and releases with ftpmailoauth_conf_free() in any case.
 * -1 with "FILE:LINE: what is wrong" in errbuf.
 */
int ftpmailoauth_conf_read(const char *path, struct ftpmailoauth_conf *conf,
  char *errbuf, size_t errlen);

const struct ftpmailoauth_conf_account *ftpmailoauth_conf_find(
  const struct ftpmailoauth_conf *conf, const char *name);

void ftpmailoauth_conf_free(struct ftpmailoauth_conf *conf);

/* Splits one logical configuration line into words the way ProFTPD does
 * (exposed for tests).  Returns the number of words, -1 on error; free
 * with ftpmailoauth_conf_free_words().
 */
int ftpmailoauth_conf_split(const char *line, char ***words);
void ftpmailoauth_conf_free_words(char **words, int n);

#endif /* FTPMAILOAUTH_CONFREAD_H */
