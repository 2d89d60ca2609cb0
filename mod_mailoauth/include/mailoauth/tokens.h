/*
 * mod_mailoauth - the access-token lifecycle of one account
 *
 * Hands out a valid access token, refreshing it about ten minutes before it
 * expires (Exchange refuses tokens close to expiry), storing every rotated
 * refresh token atomically *before* the new access token is used, and
 * classifying failures: a person must sign in again (logged once, no
 * retries until the token file changes), the configuration is wrong (logged
 * once), or the service is having trouble (retried with exponential backoff
 * and jitter, honouring Retry-After).
 *
 * Refreshes are serialised per account across processes with an flock() on
 * "<dir>/<account>.lock", so the worker and the sign-in tool can never both
 * spend the same refresh token.  A token file rewritten by the sign-in tool
 * is picked up on the next call, without a restart.
 *
 * No ProFTPD headers.  Operator-facing lines go to mailoauth_log().
 */

#ifndef MOD_MAILOAUTH_TOKENS_H
#define MOD_MAILOAUTH_TOKENS_H

#include "mailoauth/account.h"
#include "mailoauth/oauth.h"
#include "mailoauth/tokenstore.h"

#include <sys/types.h>
#include <time.h>

/* Refresh this long before the access token expires. */
#define MAILOAUTH_TOKENS_REFRESH_MARGIN   600

/* Refresh a delegated account at least this often even when no mail is
 * sent, so its refresh token (90 days from last use) never lapses.
 */
#define MAILOAUTH_TOKENS_KEEPALIVE        (7 * 24 * 3600)

struct mailoauth_tokens;
struct mailoauth_redis;

/* Several nodes sharing one Redis (redis.h): handles created after this
 * call keep the account's record in Redis as well as in the file, and
 * refresh under a lease there, so that the cluster makes one refresh per
 * token lifetime and every node uses its result.  While Redis cannot be
 * reached, no refresh is made (a node holding a valid access token keeps
 * using it).  The handle r must outlive the token handles; NULL: no
 * cluster (the default).
 */
void mailoauth_tokens_use_cluster(struct mailoauth_redis *r);

/* dir: the token directory; owner: uid the token files belong to ((uid_t)
 * -1: whoever we are); signin_cmd: the command a person runs to sign in
 * again, quoted in log lines (e.g. "ftpmailoauth signin NAME").  The account
 * must stay alive as long as the handle.
 */
struct mailoauth_tokens *mailoauth_tokens_create(
  const struct mailoauth_account *acct, const char *dir, uid_t owner,
  const char *signin_cmd, char *errbuf, size_t errlen);
void mailoauth_tokens_destroy(struct mailoauth_tokens *t);

/* A valid access token for the account, or NULL.  The pointer stays valid
 * until the next call on this handle.  *oauth_class says why there is none:
 * REAUTH (sign in again), CONFIG (fix the configuration), TRANSIENT (try
 * again after mailoauth_tokens_next_due()).
 */
const char *mailoauth_tokens_get(struct mailoauth_tokens *t, time_t now,
  mailoauth_oauth_class_t *oauth_class);

/* The server refused the token we gave it (XOAUTH2 rejected): forget it, so
 * the next get() refreshes once.
 */
void mailoauth_tokens_invalidate(struct mailoauth_tokens *t);

/* When get() should next be called without being asked: the refresh
 * margin, the keep-alive, or the end of a backoff.  0: nothing scheduled
 * (for example, waiting for a person to sign in again).
 */
time_t mailoauth_tokens_next_due(const struct mailoauth_tokens *t,
  time_t now);

/* Stores the result of a sign-in (authorization code or device code):
 * new refresh and access tokens, identity, scope; clears any last error.
 */
int mailoauth_tokens_store_signin(struct mailoauth_tokens *t,
  const struct mailoauth_oauth_response *resp, time_t now, char *errbuf,
  size_t errlen);

/* What the token file says now (for a status display): fills rec (which the
 * caller frees with mailoauth_tokenstore_record_free()); -1 with errno
 * ENOENT when nobody has signed in yet.
 */
int mailoauth_tokens_status(struct mailoauth_tokens *t,
  struct mailoauth_tokenstore_record *rec, char *errbuf, size_t errlen);

/* A delegated refresh token lapses after this long unused. */
#define MAILOAUTH_TOKENS_REFRESH_LIFETIME (90 * 24 * 3600)

/* What the handle knows now, without reading the file (for the status file
 * and the metrics).  The strings point into the handle: valid until its next
 * call.
 */
struct mailoauth_tokens_info {
  int delegated;
  int signed_in;                /* app-only: always */
  mailoauth_oauth_class_t blocked;  /* OK: nothing holds requests back */
  time_t retry_at;              /* when blocked ends (0: a sign-in does) */
  time_t next_due;              /* next refresh (0: none scheduled) */
  time_t access_expires;        /* 0: no access token */
  time_t last_use;              /* of the refresh token; 0: none */
  unsigned long refreshes;      /* successful refreshes since start */
  unsigned long refresh_failures;
  const char *error_class;      /* the token file's last error, or NULL */
  const char *error_message;
  time_t error_at;
};

void mailoauth_tokens_info(const struct mailoauth_tokens *t, time_t now,
  struct mailoauth_tokens_info *info);

#endif /* MOD_MAILOAUTH_TOKENS_H */
