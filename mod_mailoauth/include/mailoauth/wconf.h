/*
 * mod_mailoauth - the configuration the master hands to mailoauthd
 *
 * The master parses and checks proftpd.conf; the programs it starts by
 * exec get what they need of it as one JSON document on their control
 * socket (never a secret: a client secret is named by its source, and read
 * by the worker itself):
 *
 *   {"version": 1, "state_dir": "...", "uid": N, "gid": N,
 *    "signin": "ftpmailoauth signin %s", "program": "/path/mailoauthd",
 *    "metrics_file": "/path/mailoauth.prom" (optional),
 *    "trace": {"mailoauth.smtp": 10, ...},
 *    "accounts": [["NAME", "arg", ...], ...],
 *    "redis": ["host:port", "prefix=NAME", ...] (optional: MailOAuthRedis),
 *    "tasks": [{"args": ["NAME", "key=value", ...],
 *               "routes": [["key=value", ...], ...]}, ...]}
 *
 * Account arguments are MailOAuthAccount's own; task and route settings are
 * MailOAuthIngest's and MailOAuthIngestRoute's with owner= resolved to
 * UID:GID and every= to seconds, so that they mean the same here, where
 * AuthUserFile users cannot be looked up.
 *
 * On the socket (SOCK_SEQPACKET): the document in imsg messages (imsg.h).
 *
 * No ProFTPD headers.
 */

#ifndef MOD_MAILOAUTH_WCONF_H
#define MOD_MAILOAUTH_WCONF_H

#include "mailoauth/ingest.h"

#include <stddef.h>
#include <sys/types.h>

/* Largest document accepted. */
#define MAILOAUTH_WCONF_MAX     (4 * 1024 * 1024)

struct mailoauth_wconf_account {
  const char *name;
  int argc;
  char **argv;
};

struct mailoauth_wconf {
  const char *state_dir;
  uid_t uid;
  gid_t gid;
  const char *signin_fmt;
  const char *program;
  const char *metrics_file;     /* MailOAuthMetricsFile, NULL: none */

  struct mailoauth_wconf_account *accounts;
  size_t naccounts;

  /* MailOAuthRedis's words (redis.h); redis_argc 0: no cluster. */
  int redis_argc;
  char **redis_argv;

  struct mailoauth_ingest_config **tasks;
  size_t ntasks;

  /* Trace channels and their levels (NULL-terminated, parallel). */
  const char **trace_channels;
  int *trace_levels;

  /* Private: every allocation, freed together. */
  void **allocs;
  size_t nallocs, allocs_size;
};

/* Parses a document into w.  Returns 0, or -1 with a message in errbuf
 * (and everything freed).
 */
int mailoauth_wconf_parse(struct mailoauth_wconf *w, const char *json,
  size_t len, char *errbuf, size_t errlen);

void mailoauth_wconf_free(struct mailoauth_wconf *w);

/* The level configured for channel (0: off). */
int mailoauth_wconf_trace_level(const struct mailoauth_wconf *w,
  const char *channel);

/* Sends / receives one document.  Receive returns a malloc()ed,
 * NUL-terminated buffer, or NULL with errno (EBADMSG: too large or not a
 * configuration message; EPIPE: the peer closed first).
 */
int mailoauth_wconf_send(int fd, const char *json, size_t len);
char *mailoauth_wconf_recv(int fd, size_t *len);

#endif /* MOD_MAILOAUTH_WCONF_H */
