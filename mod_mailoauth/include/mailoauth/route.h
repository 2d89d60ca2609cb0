/*
 * mod_mailoauth - routing rules for mail-to-folder tasks
 *
 * One mailbox often serves several partners: invoices from one domain go to
 * one FTP user, scans sent to inbox+scans@ to another.  A route names the
 * messages it takes (sender, recipient, subject) and where their files go;
 * a task tries its routes in the order configured and uses its own
 * destination when none matches.
 *
 * From:, To: and Subject: are whatever the sender wrote, so these
 * conditions sort mail; they do not say who sent it.  auth= adds that: the
 * receiving mail system's Authentication-Results verdict (authres.h) for
 * the From: domain, from the authserv-id configured as trusted.
 *
 * Address patterns, case-insensitive:
 *   contoso.com  @contoso.com   the domain (fnmatch glob: *.contoso.com)
 *   +invoices                   a recipient tag (plus-addressing:
 *                               alice+invoices@...); also a glob
 *   *@contoso.com, bob@x.org    the whole address (fnmatch glob)
 *
 * No ProFTPD headers.
 */

#ifndef MOD_MAILOAUTH_ROUTE_H
#define MOD_MAILOAUTH_ROUTE_H

#include <stddef.h>
#include <sys/types.h>

/* Patterns per from= or to= list (comma-separated). */
#define MAILOAUTH_ROUTE_MAX_PATTERNS    16

struct mailoauth_route {
  const char *from[MAILOAUTH_ROUTE_MAX_PATTERNS + 1];  /* NULL-terminated */
  const char *to[MAILOAUTH_ROUTE_MAX_PATTERNS + 1];
  const char *subject;          /* fnmatch glob; NULL: any */
  unsigned int auth;            /* MAILOAUTH_AUTHRES_* that must pass; 0:
                                 * none asked for */
  const char *authserv_id;      /* whose verdict counts (NULL: unset) */

  /* Where matching messages go (set by the caller, which resolves users). */
  const char *dir;
  uid_t uid;
  gid_t gid;
};

/* Whether one address pattern (see above) matches addr. */
int mailoauth_route_addr_match(const char *pattern, const char *addr);

/* Splits value (modified in place) into a NULL-terminated pattern list of
 * at most MAILOAUTH_ROUTE_MAX_PATTERNS; -1 with a message in errbuf when a
 * pattern is empty or there are too many.
 */
int mailoauth_route_patterns(char *value, const char **list, const char *key,
  char *errbuf, size_t errlen);

/* authserv-id= value meaning "the top-most Authentication-Results header,
 * which has no authserv-id".
 */
#define MAILOAUTH_ROUTE_AUTHSERV_EXO    "exchange-online"

/* Parses from=, to=, subject=, auth= or authserv-id= into r (strings point into value, which
 * must outlive r).  Returns 0, 1 when key is not a routing key (the caller
 * handles it), or -1 with what to write in errbuf.
 */
int mailoauth_route_parse_setting(struct mailoauth_route *r, const char *key,
  char *value, char *errbuf, size_t errlen);

/* After all settings of a rule: -1 with what to write in errbuf when auth=
 * has no authserv-id= to go with (what the caller inherits must be set by
 * then).
 */
int mailoauth_route_check(const struct mailoauth_route *r, char *errbuf,
  size_t errlen);

/* Whether a message matches: every condition given must hold; from= holds
 * when a pattern matches the sender, to= when a pattern matches any of the
 * comma-separated recipients, auth= when mailoauth_authres_verify() says so
 * of auth_results (the Authentication-Results values, top-most first, each
 * ending in '\n').  NULL strings count as empty.
 */
int mailoauth_route_match(const struct mailoauth_route *r,
  const char *from_addr, const char *recipients, const char *subject,
  const char *auth_results);

#endif /* MOD_MAILOAUTH_ROUTE_H */
