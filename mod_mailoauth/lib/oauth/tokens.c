/*
 * mod_mailoauth - the access-token lifecycle of one account
 */

#include "mailoauth/tokens.h"
#include "mailoauth/redis.h"
#include "mailoauth/trace.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

static const char *trace_channel = "mailoauth.tokens";

/* Backoff for a failing token service: 2 s, doubling, at most 10 minutes,
 * with full jitter (mailoauth_oauth_backoff_ms()).
 */
#define TOKENS_BACKOFF_BASE_MS      2000L
#define TOKENS_BACKOFF_CAP_MS       (10L * 60 * 1000)

/* A configuration problem may be fixed without a restart (a secret file
 * rewritten, a consent granted): look again this often, no more.
 */
#define TOKENS_CONFIG_RETRY         600

/* A token this close to its expiry is not worth handing out: the mail
 * server may see it expired by the time it checks.
 */
#define TOKENS_EXPIRY_SLACK         30

/* When the token endpoint does not say how long a token lives. */
#define TOKENS_DEFAULT_LIFETIME     3600

/* Another process refreshing holds the lock for at most one token request
 * (oauth.c's 30 s timeout, plus a connect); wait a little longer than that.
 */
#define TOKENS_LOCK_WAIT_MS         60000L
#define TOKENS_LOCK_POLL_MS         50L

#define TOKENS_DIGEST_LEN           32

/* In a cluster, the refresh lease outlives one token request (its whole
 * timeout) by this much.  A node that finds it taken looks at the record
 * this often, for a refresh's usual duration at most, then lets its loop
 * run and looks again a second later (the holder may be stuck until its
 * lease expires).
 */
#define TOKENS_LEASE_SLACK_MS       5000L
#define TOKENS_LEASE_POLL_MS        100L
#define TOKENS_LEASE_WAIT_MS        3000L
#define TOKENS_LEASE_RETRY          1

/* Redis cannot be reached: look again this soon. */
#define TOKENS_CLUSTER_RETRY        2

/* The cluster handles created from now on use (NULL: none). */
static struct mailoauth_redis *tokens_cluster = NULL;

struct mailoauth_tokens {
  const struct mailoauth_account *acct;
  struct mailoauth_tokenstore *ts;
  struct mailoauth_oauth_ctx *ctx;
  char *dir;
  char *lock_path;
  char *signin_cmd;
  uid_t owner;

  /* The token file as last read or written. */
  struct mailoauth_tokenstore_record rec;

  /* Why no request is made now: REAUTH (until the file changes), CONFIG
   * (until retry_at, or until the file changes when retry_at is 0),
   * TRANSIENT (until retry_at); OK when nothing holds us back.
   */
  mailoauth_oauth_class_t blocked;
  time_t retry_at;
  unsigned int failures;

  /* The file was looked at at least once. */
  int looked;

  /* What was last logged, so that a repeated failure is not. */
  mailoauth_oauth_class_t logged_class;
  long logged_code;

  /* The access token a server refused (its SHA-256, not the token). */
  unsigned char rejected[TOKENS_DIGEST_LEN];
  int have_rejected;

  /* Since the worker started, for the metrics. */
  unsigned long refreshes, refresh_failures;

  /* In a cluster: the record's key and the refresh lease's, the record's
   * text as last read from or written to Redis (secret), and whether the
   * record here is newer than Redis's (a refresh Redis could not take, or
   * a token file found at start or rewritten by the sign-in tool).
   */
  struct mailoauth_redis *redis;
  char redis_key[256];
  char lease_key[256];
  char *seen;
  size_t seen_len;
  int pending_push;
  int push_failed_logged;
};

static const char *tokens_name(const struct mailoauth_tokens *t) {
  return t->acct->name;
}

static int tokens_delegated(const struct mailoauth_tokens *t) {
  return t->acct->oauth.grant == MAILOAUTH_OAUTH_GRANT_DELEGATED;
}

static int tokens_digest(const char *token, unsigned char *out) {
  unsigned int len = 0;

  if (EVP_Digest(token, strlen(token), out, &len, EVP_sha256(), NULL) != 1 ||
      len != TOKENS_DIGEST_LEN) {
    return -1;
  }
  return 0;
}

static int tokens_is_rejected(const struct mailoauth_tokens *t,
    const char *token) {
  unsigned char digest[TOKENS_DIGEST_LEN];

  if (!t->have_rejected) {
    return 0;
  }

  /* Cannot tell: better one refresh too many than a refused token. */
  if (tokens_digest(token, digest) < 0) {
    return 1;
  }

  return CRYPTO_memcmp(digest, t->rejected, sizeof(digest)) == 0;
}

/* How long before expiry to refresh.  A token living less than twice the
 * margin (not one of Microsoft's, which live an hour or more) would be
 * refreshed on every use: refresh it at half its life instead.
 */
static time_t tokens_margin(const struct mailoauth_tokens *t) {
  time_t lifetime = t->rec.access_expires - t->rec.refreshed_at;

  if (t->rec.refreshed_at != 0 &&
      lifetime > 0 &&
      lifetime < 2 * MAILOAUTH_TOKENS_REFRESH_MARGIN) {
    return lifetime / 2;
  }
  return MAILOAUTH_TOKENS_REFRESH_MARGIN;
}

/* The cached access token is good for at least `margin` more seconds. */
static int tokens_usable(const struct mailoauth_tokens *t, time_t now,
    time_t margin) {
  const struct mailoauth_tokenstore_record *rec = &t->rec;

  if (rec->access_token == NULL ||
      rec->access_token[0] == '\0' ||
      rec->access_expires <= now + margin) {
    return 0;
  }

  /* A file written for the other grant holds a token for the wrong
   * principal.
   */
  if (rec->grant != NULL &&
      strcmp(rec->grant, mailoauth_oauth_grant_name(t->acct->oauth.grant)) !=
        0) {
    return 0;
  }

  return !tokens_is_rejected(t, rec->access_token);
}

static time_t tokens_last_use(const struct mailoauth_tokens *t) {
  return t->rec.refreshed_at != 0 ? t->rec.refreshed_at : t->rec.obtained_at;
}

/* A delegated refresh token lapses after 90 days unused: use it weekly
 * even when there is no mail to send.
 */
static int tokens_keepalive_due(const struct mailoauth_tokens *t, time_t now) {
  time_t last = tokens_last_use(t);

  return tokens_delegated(t) &&
    t->rec.refresh_token != NULL &&
    last != 0 &&
    last + MAILOAUTH_TOKENS_KEEPALIVE <= now;
}

static int tokens_fresh(const struct mailoauth_tokens *t, time_t now) {
  return tokens_usable(t, now, tokens_margin(t)) &&
    !tokens_keepalive_due(t, now);
}

static int tokens_signed_in(const struct mailoauth_tokens *t) {
  return t->rec.refresh_token != NULL &&
    t->rec.refresh_token[0] != '\0' &&
    (t->rec.grant == NULL ||
     strcmp(t->rec.grant, "delegated") == 0);
}

static void tokens_unblock(struct mailoauth_tokens *t) {
  t->blocked = MAILOAUTH_OAUTH_OK;
  t->retry_at = 0;
  t->logged_class = MAILOAUTH_OAUTH_OK;
  t->logged_code = 0;
}

/* ------------------------------------------------------------------------
 * Handles.
 */

struct mailoauth_tokens *mailoauth_tokens_create(
    const struct mailoauth_account *acct, const char *dir, uid_t owner,
    const char *signin_cmd, char *errbuf, size_t errlen) {
  struct mailoauth_tokens *t;
  char cmd[256];
  size_t len;

  if (acct == NULL || acct->name == NULL || dir == NULL) {
    mailoauth_errf(errbuf, errlen, "no account or token directory given");
    errno = EINVAL;
    return NULL;
  }

  t = calloc(1, sizeof(*t));
  if (t == NULL) {
    mailoauth_errf(errbuf, errlen, "out of memory");
    errno = ENOMEM;
    return NULL;
  }

  t->acct = acct;
  t->owner = owner;
  t->ts = mailoauth_tokenstore_create(dir, acct->name, owner, errbuf, errlen);
  if (t->ts == NULL) {
    int xerrno = errno;

    free(t);
    errno = xerrno;
    return NULL;
  }

  if (signin_cmd == NULL) {
    snprintf(cmd, sizeof(cmd), "ftpmailoauth signin %s", acct->name);
    signin_cmd = cmd;
  }

  len = strlen(dir) + strlen(acct->name) + sizeof("/.lock");
  t->dir = strdup(dir);
  t->signin_cmd = strdup(signin_cmd);
  t->lock_path = malloc(len);
  if (t->dir == NULL || t->signin_cmd == NULL || t->lock_path == NULL) {
    mailoauth_tokens_destroy(t);
    mailoauth_errf(errbuf, errlen, "out of memory");
    errno = ENOMEM;
    return NULL;
  }

  snprintf(t->lock_path, len, "%s/%s.lock", dir, acct->name);

  if (tokens_cluster != NULL) {
    if (mailoauth_redis_key(tokens_cluster, t->redis_key,
          sizeof(t->redis_key), "tokens", acct->name) < 0 ||
        mailoauth_redis_key(tokens_cluster, t->lease_key,
          sizeof(t->lease_key), "refresh", acct->name) < 0) {
      mailoauth_tokens_destroy(t);
      mailoauth_errf(errbuf, errlen, "the Redis key prefix and account name "
        "are too long together");
      errno = ENAMETOOLONG;
      return NULL;
    }
    t->redis = tokens_cluster;
  }
  return t;
}

void mailoauth_tokens_use_cluster(struct mailoauth_redis *r) {
  tokens_cluster = r;
}

static void tokens_seen_free(struct mailoauth_tokens *t) {
  if (t->seen != NULL) {
    OPENSSL_cleanse(t->seen, t->seen_len);
    free(t->seen);
    t->seen = NULL;
  }
  t->seen_len = 0;
}

void mailoauth_tokens_destroy(struct mailoauth_tokens *t) {
  if (t == NULL) {
    return;
  }

  mailoauth_oauth_ctx_destroy(t->ctx);
  mailoauth_tokenstore_destroy(t->ts);
  mailoauth_tokenstore_record_free(&t->rec);
  free(t->dir);
  free(t->lock_path);
  free(t->signin_cmd);
  tokens_seen_free(t);
  OPENSSL_cleanse(t, sizeof(*t));
  free(t);
}

/* ------------------------------------------------------------------------
 * Logging: one line per change of state, never per retry.
 */

static void tokens_log_failure(struct mailoauth_tokens *t,
    const struct mailoauth_oauth_response *resp, const char *text,
    long delay) {
  mailoauth_oauth_class_t c = t->blocked;

  if (c == t->logged_class &&
      (c == MAILOAUTH_OAUTH_TRANSIENT || resp == NULL ||
       resp->error_code == t->logged_code)) {
    return;
  }

  t->logged_class = c;
  t->logged_code = resp != NULL ? resp->error_code : 0;

  switch (c) {
    case MAILOAUTH_OAUTH_REAUTH:
      mailoauth_log("account %s: a person must sign in again; no token "
        "requests until then: %s", tokens_name(t), text);
      break;

    case MAILOAUTH_OAUTH_CONFIG:
      if (t->retry_at != 0) {
        mailoauth_log("account %s: the token request was refused, fix the "
          "configuration (retried every %d minutes): %s", tokens_name(t),
          TOKENS_CONFIG_RETRY / 60, text);

      } else {
        mailoauth_log("account %s: %s", tokens_name(t), text);
      }
      break;

    default:
      mailoauth_log("account %s: token refresh failing, retrying with "
        "backoff (next attempt in %ld s; logged again when it works): %s",
        tokens_name(t), delay, text);
      break;
  }
}

static void tokens_log_recovery(struct mailoauth_tokens *t) {
  if (t->failures > 0) {
    mailoauth_log("token refresh for account %s works again after %u "
      "failure%s", tokens_name(t), t->failures, t->failures == 1 ? "" : "s");

  } else if (t->logged_class != MAILOAUTH_OAUTH_OK) {
    mailoauth_log("token refresh for account %s works again",
      tokens_name(t));
  }

  t->failures = 0;
  tokens_unblock(t);
}

/* A problem with the token file or lock itself: someone must fix the file
 * (the tokenstore notices the fix as a change).
 */
static void tokens_file_problem(struct mailoauth_tokens *t, const char *text) {
  t->blocked = MAILOAUTH_OAUTH_CONFIG;
  t->retry_at = 0;
  tokens_log_failure(t, NULL, text, 0);
}

static void tokens_not_signed_in(struct mailoauth_tokens *t) {
  char text[1024];

  t->blocked = MAILOAUTH_OAUTH_REAUTH;
  t->retry_at = 0;

  snprintf(text, sizeof(text), "nobody has signed in yet (no refresh token "
    "in %s): run %s", mailoauth_tokenstore_path(t->ts), t->signin_cmd);
  tokens_log_failure(t, NULL, text, 0);
}

/* ------------------------------------------------------------------------
 * The token file.
 */

/* Picks up a file rewritten by another process (the sign-in tool after a
 * person signed in, or another refresher).
 */
static void tokens_reload(struct mailoauth_tokens *t) {
  struct mailoauth_tokenstore_record fresh;
  char err[1024];
  int changed, had_signin;
  mailoauth_oauth_class_t was;

  changed = mailoauth_tokenstore_changed(t->ts);
  if (changed == 0) {
    return;
  }

  /* What the person may just have fixed: said again below once it is. */
  was = t->blocked;
  had_signin = t->rec.refresh_token != NULL;

  t->looked = 1;
  if (changed < 0) {
    /* Cannot even look (the directory?): the read below says why. */
    mailoauth_trace(trace_channel, 3, "account %s: cannot check token file "
      "%s: %s", tokens_name(t), mailoauth_tokenstore_path(t->ts),
      strerror(errno));

  } else if (t->blocked != MAILOAUTH_OAUTH_TRANSIENT) {
    /* Whatever held us back may be what the person just fixed. */
    tokens_unblock(t);
  }

  memset(&fresh, 0, sizeof(fresh));
  if (mailoauth_tokenstore_read(t->ts, &fresh, err, sizeof(err)) < 0) {
    int xerrno = errno;

    mailoauth_tokenstore_record_free(&fresh);
    mailoauth_tokenstore_record_free(&t->rec);

    if (xerrno != ENOENT) {
      tokens_file_problem(t, err);
    }
    return;
  }

  mailoauth_tokenstore_record_free(&t->rec);
  t->rec = fresh;
  mailoauth_trace(trace_channel, 9, "account %s: token file %s (re)read",
    tokens_name(t), mailoauth_tokenstore_path(t->ts));

  /* Found at start, or written by the sign-in tool: the cluster gets it
   * unless it knows a newer record (the push is a check-and-set).
   */
  if (t->redis != NULL &&
      (t->rec.refresh_token != NULL || t->rec.access_token != NULL)) {
    t->pending_push = 1;
  }

  /* The "must sign in" line was logged once; its end is too, or the log
   * would leave the account broken.
   */
  if (was == MAILOAUTH_OAUTH_REAUTH &&
      t->rec.refresh_token != NULL &&
      t->rec.error_class == NULL) {
    mailoauth_log("account %s: new sign-in%s%s found in %s; the account is "
      "usable %s", tokens_name(t), t->rec.username ? " as " : "",
      t->rec.username ? t->rec.username : "",
      mailoauth_tokenstore_path(t->ts), had_signin ? "again" : "now");
  }
}

/* Writes the cached record.  A failure is logged, not returned: the tokens
 * in memory are still good for this process.
 */
static void tokens_write(struct mailoauth_tokens *t) {
  char err[1024];

  if (mailoauth_tokenstore_write(t->ts, &t->rec, err, sizeof(err)) < 0) {
    mailoauth_log("account %s: %s", tokens_name(t), err);
  }
}

/* ------------------------------------------------------------------------
 * The cluster's copy of the record (Redis), when there is a cluster.
 *
 * Redis holds the record every node uses; the token file is this node's
 * mirror of it (for `ftpmailoauth status`, and the record to push should
 * Redis lose it).  A node reads Redis's record on every use, so a refresh
 * or a sign-in made on another node is used at once.
 */

static void tokens_seen_set(struct mailoauth_tokens *t, char *text,
    size_t len) {
  tokens_seen_free(t);
  t->seen = text;
  t->seen_len = len;
}

/* Pushes the record here, newer than Redis's, unless Redis's changed since
 * it was last seen.  1: pushed (or nothing to push); 0: Redis has another
 * record (the caller adopts it); -1: Redis cannot be reached.
 */
static int tokens_cluster_push(struct mailoauth_tokens *t) {
  char *text = NULL;
  size_t len = 0;
  int res;

  if (!t->pending_push) {
    return 1;
  }

  if (mailoauth_tokenstore_encode(t->ts, &t->rec, &text, &len) < 0) {
    return -1;
  }

  res = mailoauth_redis_cas(t->redis, t->redis_key, t->seen, t->seen_len,
    text, len);
  if (res < 0) {
    OPENSSL_cleanse(text, len);
    free(text);
    return -1;
  }

  t->pending_push = 0;
  if (res == 0) {
    OPENSSL_cleanse(text, len);
    free(text);
    mailoauth_trace(trace_channel, 5, "account %s: the cluster has a newer "
      "token record than this node; using it", tokens_name(t));
    return 0;
  }

  tokens_seen_set(t, text, len);
  if (t->push_failed_logged) {
    mailoauth_log("account %s: the rotated tokens are stored in Redis now",
      tokens_name(t));
    t->push_failed_logged = 0;
  }
  mailoauth_trace(trace_channel, 7, "account %s: token record stored in "
    "Redis (%s)", tokens_name(t), t->redis_key);
  return 1;
}

/* Takes Redis's record when it is not the one last seen.  1: taken; 0:
 * nothing new; -1: Redis cannot be reached (or the record is unusable:
 * logged).
 */
static int tokens_cluster_fetch(struct mailoauth_tokens *t) {
  struct mailoauth_tokenstore_record fresh;
  char *text = NULL, err[1024];
  size_t len = 0;
  mailoauth_oauth_class_t was;
  int res, had_signin;

  if (tokens_cluster_push(t) < 0) {
    return -1;
  }

  res = mailoauth_redis_get(t->redis, t->redis_key, &text, &len);
  if (res < 0) {
    return -1;
  }

  if (res == 0) {
    /* Nobody has stored a record yet (or Redis lost it): ours, if any,
     * becomes the cluster's.
     */
    tokens_seen_free(t);
    if (t->rec.refresh_token != NULL || t->rec.access_token != NULL) {
      t->pending_push = 1;
      (void) tokens_cluster_push(t);
    }
    return 0;
  }

  if (t->seen != NULL &&
      len == t->seen_len &&
      CRYPTO_memcmp(text, t->seen, len) == 0) {
    OPENSSL_cleanse(text, len);
    free(text);
    return 0;
  }

  memset(&fresh, 0, sizeof(fresh));
  if (mailoauth_tokenstore_decode(t->ts, text, len, &fresh, err,
      sizeof(err)) < 0) {
    mailoauth_tokenstore_record_free(&fresh);
    OPENSSL_cleanse(text, len);
    free(text);
    mailoauth_log("account %s: the token record in Redis (%s) cannot be "
      "used: %s", tokens_name(t), t->redis_key, err);
    return -1;
  }

  was = t->blocked;
  had_signin = t->rec.refresh_token != NULL;
  mailoauth_tokenstore_record_free(&t->rec);
  t->rec = fresh;
  t->looked = 1;
  tokens_seen_set(t, text, len);
  mailoauth_trace(trace_channel, 8, "account %s: token record taken from "
    "Redis (%s)", tokens_name(t), t->redis_key);

  /* This node's mirror, for the status tool. */
  tokens_write(t);

  if (was != MAILOAUTH_OAUTH_TRANSIENT) {
    tokens_unblock(t);
  }
  if (was == MAILOAUTH_OAUTH_REAUTH &&
      t->rec.refresh_token != NULL &&
      t->rec.error_class == NULL) {
    mailoauth_log("account %s: new sign-in%s%s found in Redis; the account "
      "is usable %s", tokens_name(t), t->rec.username ? " as " : "",
      t->rec.username ? t->rec.username : "", had_signin ? "again" : "now");
  }
  return 1;
}

/* After a refresh, before the access token is used: the rotated refresh
 * token goes to Redis first, so no node ever refreshes with the one it
 * replaced.  Should Redis fail right now, the record stays here (and in the
 * file) and is pushed as soon as Redis is back.
 */
static void tokens_cluster_store(struct mailoauth_tokens *t) {
  t->pending_push = 1;
  if (tokens_cluster_push(t) < 0 &&
      !t->push_failed_logged) {
    mailoauth_log("account %s: cannot store the rotated tokens in Redis at "
      "%s; kept in %s and stored in Redis when it is back",
      tokens_name(t), mailoauth_redis_where(t->redis),
      mailoauth_tokenstore_path(t->ts));
    t->push_failed_logged = 1;
  }
}

/* ------------------------------------------------------------------------
 * The per-account lock.
 */

static int tokens_lock_open(struct mailoauth_tokens *t, char *errbuf,
    size_t errlen) {
  struct stat st;
  int fd, xerrno;

  /* Read-only is enough for flock(), and lets a process that did not
   * create the file still take the lock.
   */
  fd = open(t->lock_path, O_RDONLY | O_CREAT | O_NOFOLLOW | O_NONBLOCK |
    O_CLOEXEC | O_NOCTTY, 0600);
  if (fd < 0) {
    xerrno = errno;
    mailoauth_errf(errbuf, errlen, "cannot open lock file %s: %s%s",
      t->lock_path, strerror(xerrno), xerrno == ELOOP ?
      " (a symbolic link: remove it)" : "");
    errno = xerrno;
    return -1;
  }

  if (fstat(fd, &st) < 0 ||
      !S_ISREG(st.st_mode)) {
    close(fd);
    mailoauth_errf(errbuf, errlen, "lock file %s is not a regular file",
      t->lock_path);
    errno = EINVAL;
    return -1;
  }

  /* Only a file of this directory: a hard link would make us create,
   * lock and keep open some other file.
   */
  if (st.st_nlink > 1) {
    close(fd);
    mailoauth_errf(errbuf, errlen, "lock file %s has %lu links (a hard link "
      "to another file): remove it", t->lock_path,
      (unsigned long) st.st_nlink);
    errno = EMLINK;
    return -1;
  }

  return fd;
}

/* flock() cannot time out; poll for the lock instead of blocking forever
 * behind a hung process.
 */
static int tokens_lock(struct mailoauth_tokens *t, char *errbuf,
    size_t errlen) {
  long waited = 0;
  int fd;

  fd = tokens_lock_open(t, errbuf, errlen);
  if (fd < 0) {
    return -1;
  }

  while (flock(fd, LOCK_EX | LOCK_NB) < 0) {
    int xerrno = errno;
    struct timespec ts = { 0, TOKENS_LOCK_POLL_MS * 1000000L };

    if (xerrno == EINTR) {
      continue;
    }

    if (xerrno != EWOULDBLOCK ||
        waited >= TOKENS_LOCK_WAIT_MS) {
      close(fd);
      mailoauth_errf(errbuf, errlen, "cannot lock %s: %s", t->lock_path,
        xerrno == EWOULDBLOCK ? "another process holds it too long" :
        strerror(xerrno));
      errno = xerrno == EWOULDBLOCK ? ETIMEDOUT : xerrno;
      return -1;
    }

    if (waited == 0) {
      mailoauth_trace(trace_channel, 8, "account %s: waiting for another "
        "process's token refresh", tokens_name(t));
    }

    nanosleep(&ts, NULL);
    waited += TOKENS_LOCK_POLL_MS;
  }

  return fd;
}

static void tokens_unlock(int fd) {
  if (fd >= 0) {
    (void) flock(fd, LOCK_UN);
    close(fd);
  }
}

/* ------------------------------------------------------------------------
 * Refreshing.
 */

static int tokens_ctx(struct mailoauth_tokens *t,
    struct mailoauth_oauth_response *resp) {
  if (t->ctx != NULL) {
    return 0;
  }

  t->ctx = mailoauth_oauth_ctx_create(&t->acct->oauth, resp->detail,
    sizeof(resp->detail));
  if (t->ctx == NULL) {
    resp->oauth_class = MAILOAUTH_OAUTH_CONFIG;
    return -1;
  }
  return 0;
}

static int tokens_request(struct mailoauth_tokens *t, time_t now,
    struct mailoauth_oauth_response *resp) {
  if (tokens_ctx(t, resp) < 0) {
    return -1;
  }

  if (tokens_delegated(t)) {
    mailoauth_trace(trace_channel, 8, "account %s: refreshing the access "
      "token", tokens_name(t));
    return mailoauth_oauth_refresh(t->ctx, t->rec.refresh_token, now, resp);
  }

  mailoauth_trace(trace_channel, 8, "account %s: requesting an app-only "
    "access token", tokens_name(t));
  return mailoauth_oauth_client_credentials(t->ctx, now, resp);
}

static int tokens_set_identity(struct mailoauth_tokenstore_record *rec,
    const struct mailoauth_oauth_identity *id) {
  /* A refresh without an id_token says nothing about who: keep it. */
  if (id->username == NULL) {
    return 0;
  }

  if (mailoauth_tokenstore_set(&rec->username, id->username) < 0 ||
      mailoauth_tokenstore_set(&rec->name, id->name) < 0 ||
      mailoauth_tokenstore_set(&rec->tenant, id->tenant) < 0 ||
      mailoauth_tokenstore_set(&rec->oid, id->oid) < 0) {
    return -1;
  }
  return 0;
}

static void tokens_clear_error(struct mailoauth_tokenstore_record *rec) {
  (void) mailoauth_tokenstore_set(&rec->error_class, NULL);
  (void) mailoauth_tokenstore_set(&rec->error_message, NULL);
  rec->error_code = 0;
  rec->error_at = 0;
}

static time_t tokens_expiry(const struct mailoauth_oauth_response *resp,
    time_t now) {
  if (resp->expires_at > now) {
    return resp->expires_at;
  }
  return now + TOKENS_DEFAULT_LIFETIME;
}

/* The new tokens into the record; the caller writes it. */
static int tokens_apply(struct mailoauth_tokens *t,
    const struct mailoauth_oauth_response *resp, time_t now) {
  struct mailoauth_tokenstore_record *rec = &t->rec;

  if (mailoauth_tokenstore_set(&rec->grant,
        mailoauth_oauth_grant_name(t->acct->oauth.grant)) < 0 ||
      mailoauth_tokenstore_set(&rec->access_token, resp->access_token) < 0 ||
      (resp->refresh_token != NULL &&
       mailoauth_tokenstore_set(&rec->refresh_token, resp->refresh_token) < 0) ||
      (resp->scope != NULL &&
       mailoauth_tokenstore_set(&rec->scope, resp->scope) < 0) ||
      tokens_set_identity(rec, &resp->identity) < 0) {
    return -1;
  }

  rec->access_expires = tokens_expiry(resp, now);
  rec->refreshed_at = now;
  if (rec->obtained_at == 0) {
    rec->obtained_at = now;
  }

  tokens_clear_error(rec);
  t->have_rejected = 0;
  return 0;
}

static void tokens_record_error(struct mailoauth_tokens *t,
    const struct mailoauth_oauth_response *resp, const char *text,
    time_t now) {
  struct mailoauth_tokenstore_record *rec = &t->rec;

  if (mailoauth_tokenstore_set(&rec->error_class,
        mailoauth_oauth_class_name(resp->oauth_class)) < 0 ||
      mailoauth_tokenstore_set(&rec->error_message, text) < 0) {
    return;
  }

  rec->error_code = resp->error_code;
  rec->error_at = now;
  tokens_write(t);
}

/* Decides what a failed request means for the next ones, and says so
 * once.
 */
static void tokens_failed(struct mailoauth_tokens *t,
    const struct mailoauth_oauth_response *resp, const char *text,
    time_t now) {
  long delay_ms, delay;

  switch (resp->oauth_class) {
    case MAILOAUTH_OAUTH_REAUTH:
    case MAILOAUTH_OAUTH_DECLINED:
    case MAILOAUTH_OAUTH_EXPIRED:
      t->blocked = MAILOAUTH_OAUTH_REAUTH;
      t->retry_at = 0;
      tokens_log_failure(t, resp, text, 0);
      return;

    case MAILOAUTH_OAUTH_CONFIG:
      t->blocked = MAILOAUTH_OAUTH_CONFIG;
      t->retry_at = now + TOKENS_CONFIG_RETRY;
      tokens_log_failure(t, resp, text, 0);
      return;

    default:
      break;
  }

  delay_ms = mailoauth_oauth_backoff_ms(t->failures, TOKENS_BACKOFF_BASE_MS,
    TOKENS_BACKOFF_CAP_MS, resp->retry_after, NULL, NULL);

  /* Whole seconds, and never a busy loop. */
  delay = (delay_ms + 999) / 1000;
  if (delay < 1) {
    delay = 1;
  }

  t->failures++;
  t->blocked = MAILOAUTH_OAUTH_TRANSIENT;
  t->retry_at = now + delay;
  tokens_log_failure(t, resp, text, delay);
}

/* Re-reads the file under the lock: another process may have refreshed
 * while we waited for it.  0: rec is current; -1: unusable file (logged).
 */
static int tokens_reread_locked(struct mailoauth_tokens *t) {
  struct mailoauth_tokenstore_record fresh;
  char err[1024];

  memset(&fresh, 0, sizeof(fresh));
  if (mailoauth_tokenstore_read(t->ts, &fresh, err, sizeof(err)) < 0) {
    int xerrno = errno;

    mailoauth_tokenstore_record_free(&fresh);
    if (xerrno != ENOENT) {
      tokens_file_problem(t, err);
      return -1;
    }

    mailoauth_tokenstore_record_free(&t->rec);
    return 0;
  }

  mailoauth_tokenstore_record_free(&t->rec);
  t->rec = fresh;
  return 0;
}

/* The request and its bookkeeping, with the lock held. */
static mailoauth_oauth_class_t tokens_refresh_locked(
    struct mailoauth_tokens *t, time_t now) {
  struct mailoauth_oauth_response resp;
  char text[1536];

  /* In a cluster the caller has just read Redis's record, which is the
   * current one: the file is only its mirror.
   */
  if (t->redis == NULL &&
      tokens_reread_locked(t) < 0) {
    return MAILOAUTH_OAUTH_CONFIG;
  }

  if (tokens_fresh(t, now)) {
    mailoauth_trace(trace_channel, 8, "account %s: another process has just "
      "refreshed the token; using it", tokens_name(t));
    tokens_log_recovery(t);
    return MAILOAUTH_OAUTH_OK;
  }

  if (tokens_delegated(t) &&
      !tokens_signed_in(t)) {
    tokens_not_signed_in(t);
    return MAILOAUTH_OAUTH_REAUTH;
  }

  memset(&resp, 0, sizeof(resp));
  if (tokens_request(t, now, &resp) == 0 &&
      resp.oauth_class == MAILOAUTH_OAUTH_OK) {
    if (tokens_apply(t, &resp, now) < 0) {
      mailoauth_oauth_response_clear(&resp);
      mailoauth_log("account %s: out of memory storing new tokens",
        tokens_name(t));
      return MAILOAUTH_OAUTH_TRANSIENT;
    }

    /* The rotated refresh token is on disk (and in the cluster's Redis)
     * before anyone uses the new access token: a crash now cannot lose the
     * only valid one.
     */
    if (t->redis != NULL) {
      tokens_cluster_store(t);
    }
    tokens_write(t);
    mailoauth_oauth_response_clear(&resp);
    t->refreshes++;
    tokens_log_recovery(t);
    mailoauth_trace(trace_channel, 7, "account %s: access token valid until "
      "%lld", tokens_name(t), (long long) t->rec.access_expires);
    return MAILOAUTH_OAUTH_OK;
  }

  if (resp.oauth_class == MAILOAUTH_OAUTH_OK) {
    /* The request could not even be made. */
    resp.oauth_class = MAILOAUTH_OAUTH_TRANSIENT;
  }

  t->refresh_failures++;
  mailoauth_oauth_format_error(&resp, t->signin_cmd, text, sizeof(text));
  tokens_record_error(t, &resp, text, now);
  tokens_failed(t, &resp, text, now);
  mailoauth_oauth_response_clear(&resp);
  return t->blocked;
}

static long long tokens_now_ms(void) {
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Redis cannot be reached, or another node's refresh takes long: no
 * refresh now (another node might make one with the same refresh token),
 * look again soon.  Redis's own degraded-mode line says why; nothing is
 * logged per account.
 */
static mailoauth_oauth_class_t tokens_cluster_wait(struct mailoauth_tokens *t,
    time_t now, time_t delay, const char *why) {
  t->blocked = MAILOAUTH_OAUTH_TRANSIENT;
  t->retry_at = now + delay;
  mailoauth_trace(trace_channel, 7, "account %s: no refresh now: %s",
    tokens_name(t), why);
  return MAILOAUTH_OAUTH_TRANSIENT;
}

static long tokens_lease_ms(const struct mailoauth_tokens *t) {
  long request = t->acct->oauth.timeout_ms > 0 ? t->acct->oauth.timeout_ms :
    MAILOAUTH_OAUTH_DEFAULT_TIMEOUT_MS;

  return request + TOKENS_LEASE_SLACK_MS;
}

/* One refresh per account cluster-wide: under a lease in Redis, after
 * reading the record once more under it.  A node that finds the lease
 * taken waits for the holder's record instead of refreshing.
 */
static mailoauth_oauth_class_t tokens_refresh_cluster(
    struct mailoauth_tokens *t, time_t now) {
  struct mailoauth_redis_lease lease;
  mailoauth_oauth_class_t c;
  long long deadline = tokens_now_ms() + TOKENS_LEASE_WAIT_MS;
  int res, waited = 0;

  for (;;) {
    res = mailoauth_redis_lease_acquire(t->redis, t->lease_key,
      tokens_lease_ms(t), &lease);
    if (res < 0) {
      return tokens_cluster_wait(t, now, TOKENS_CLUSTER_RETRY,
        "Redis cannot be reached");
    }
    if (res > 0) {
      break;
    }

    if (!waited) {
      mailoauth_trace(trace_channel, 8, "account %s: another node is "
        "refreshing the token; waiting for its record", tokens_name(t));
      waited = 1;
    }

    {
      struct timespec ts = { 0, TOKENS_LEASE_POLL_MS * 1000000L };

      nanosleep(&ts, NULL);
    }

    if (tokens_cluster_fetch(t) < 0) {
      return tokens_cluster_wait(t, now, TOKENS_CLUSTER_RETRY,
        "Redis cannot be reached");
    }
    if (tokens_fresh(t, time(NULL))) {
      tokens_log_recovery(t);
      return MAILOAUTH_OAUTH_OK;
    }

    if (tokens_now_ms() >= deadline) {
      return tokens_cluster_wait(t, now, TOKENS_LEASE_RETRY,
        "another node is still refreshing");
    }
  }

  /* The holder before us may have finished just now. */
  if (tokens_cluster_fetch(t) < 0) {
    (void) mailoauth_redis_lease_release(t->redis, &lease);
    return tokens_cluster_wait(t, now, TOKENS_CLUSTER_RETRY,
      "Redis cannot be reached");
  }

  if (tokens_fresh(t, now)) {
    mailoauth_trace(trace_channel, 8, "account %s: another node has just "
      "refreshed the token; using it", tokens_name(t));
    tokens_log_recovery(t);
    c = MAILOAUTH_OAUTH_OK;

  } else {
    c = tokens_refresh_locked(t, now);
  }

  if (mailoauth_redis_lease_release(t->redis, &lease) == 0) {
    mailoauth_trace(trace_channel, 3, "account %s: the refresh lease had "
      "expired before its release", tokens_name(t));
  }
  return c;
}

static mailoauth_oauth_class_t tokens_refresh(struct mailoauth_tokens *t,
    time_t now) {
  mailoauth_oauth_class_t c;
  char err[1024];
  int fd;

  fd = tokens_lock(t, err, sizeof(err));
  if (fd < 0) {
    if (errno == ETIMEDOUT) {
      struct mailoauth_oauth_response resp;

      memset(&resp, 0, sizeof(resp));
      resp.oauth_class = MAILOAUTH_OAUTH_TRANSIENT;
      resp.retry_after = -1;
      t->refresh_failures++;
      tokens_failed(t, &resp, err, now);
      return MAILOAUTH_OAUTH_TRANSIENT;
    }

    tokens_file_problem(t, err);
    return MAILOAUTH_OAUTH_CONFIG;
  }

  c = t->redis != NULL ? tokens_refresh_cluster(t, now) :
    tokens_refresh_locked(t, now);
  tokens_unlock(fd);
  return c;
}

/* Nothing may be asked of the token endpoint now. */
static int tokens_waiting(const struct mailoauth_tokens *t, time_t now) {
  switch (t->blocked) {
    case MAILOAUTH_OAUTH_OK:
      return 0;

    case MAILOAUTH_OAUTH_REAUTH:
      return 1;

    default:
      return t->retry_at == 0 || now < t->retry_at;
  }
}

/* ------------------------------------------------------------------------
 * The API.
 */

const char *mailoauth_tokens_get(struct mailoauth_tokens *t, time_t now,
    mailoauth_oauth_class_t *oauth_class) {
  mailoauth_oauth_class_t c = MAILOAUTH_OAUTH_OK, dummy;

  if (oauth_class == NULL) {
    oauth_class = &dummy;
  }

  if (t == NULL) {
    *oauth_class = MAILOAUTH_OAUTH_CONFIG;
    errno = EINVAL;
    return NULL;
  }

  tokens_reload(t);
  if (t->redis != NULL) {
    (void) tokens_cluster_fetch(t);
  }

  if (tokens_fresh(t, now)) {
    /* Another process (or node) got it while we were backing off or
     * waiting for Redis.
     */
    if (t->failures > 0 ||
        t->blocked == MAILOAUTH_OAUTH_TRANSIENT) {
      tokens_log_recovery(t);
    }

    *oauth_class = MAILOAUTH_OAUTH_OK;
    return t->rec.access_token;
  }

  if (tokens_waiting(t, now)) {
    c = t->blocked;

  } else {
    c = tokens_refresh(t, now);
    if (c == MAILOAUTH_OAUTH_OK) {
      *oauth_class = MAILOAUTH_OAUTH_OK;
      return t->rec.access_token;
    }
  }

  /* Refreshing early failed, but the current token still works. */
  if (tokens_usable(t, now, TOKENS_EXPIRY_SLACK)) {
    *oauth_class = MAILOAUTH_OAUTH_OK;
    return t->rec.access_token;
  }

  *oauth_class = c;
  errno = c == MAILOAUTH_OAUTH_TRANSIENT ? EAGAIN : EPERM;
  return NULL;
}

void mailoauth_tokens_invalidate(struct mailoauth_tokens *t) {
  if (t == NULL ||
      t->rec.access_token == NULL) {
    return;
  }

  if (tokens_digest(t->rec.access_token, t->rejected) == 0) {
    t->have_rejected = 1;
  }

  /* The next get() refreshes once, even in the middle of a backoff. */
  if (t->blocked == MAILOAUTH_OAUTH_TRANSIENT) {
    t->retry_at = 0;
    t->blocked = MAILOAUTH_OAUTH_OK;
  }

  mailoauth_trace(trace_channel, 7, "account %s: the mail server refused the "
    "access token; the next use refreshes it", tokens_name(t));
}

time_t mailoauth_tokens_next_due(const struct mailoauth_tokens *t,
    time_t now) {
  time_t due = 0;

  if (t == NULL) {
    return 0;
  }

  /* Nothing known yet: the first get() finds out. */
  if (!t->looked) {
    return now;
  }

  switch (t->blocked) {
    case MAILOAUTH_OAUTH_OK:
      break;

    case MAILOAUTH_OAUTH_REAUTH:
      return 0;

    default:
      return t->retry_at;
  }

  if (t->rec.access_token != NULL &&
      !tokens_is_rejected(t, t->rec.access_token)) {
    due = t->rec.access_expires - tokens_margin(t);

  } else if (!tokens_delegated(t) ||
             tokens_signed_in(t)) {
    due = now;
  }

  if (tokens_delegated(t) &&
      tokens_signed_in(t) &&
      tokens_last_use(t) != 0) {
    time_t keepalive = tokens_last_use(t) + MAILOAUTH_TOKENS_KEEPALIVE;

    if (due == 0 || keepalive < due) {
      due = keepalive;
    }
  }

  /* Rotated tokens that Redis has not got yet: the other nodes hold the
   * refresh token they replace, so push as soon as Redis is back.
   */
  if (t->pending_push &&
      (due == 0 || due > now + TOKENS_CLUSTER_RETRY)) {
    due = now + TOKENS_CLUSTER_RETRY;
  }

  if (due != 0 && due < now) {
    due = now;
  }
  return due;
}

static int tokens_signin_record(struct mailoauth_tokens *t,
    const struct mailoauth_oauth_response *resp, time_t now) {
  struct mailoauth_tokenstore_record *rec = &t->rec;

  /* A sign-in starts a new history: nothing of the old file is kept. */
  mailoauth_tokenstore_record_free(rec);

  if (mailoauth_tokenstore_set(&rec->grant,
        mailoauth_oauth_grant_name(t->acct->oauth.grant)) < 0 ||
      mailoauth_tokenstore_set(&rec->access_token, resp->access_token) < 0 ||
      mailoauth_tokenstore_set(&rec->refresh_token, resp->refresh_token) < 0 ||
      mailoauth_tokenstore_set(&rec->scope, resp->scope) < 0 ||
      tokens_set_identity(rec, &resp->identity) < 0) {
    return -1;
  }

  rec->access_expires = tokens_expiry(resp, now);
  rec->obtained_at = now;
  rec->refreshed_at = now;
  return 0;
}

int mailoauth_tokens_store_signin(struct mailoauth_tokens *t,
    const struct mailoauth_oauth_response *resp, time_t now, char *errbuf,
    size_t errlen) {
  int fd, res, xerrno;

  if (t == NULL || resp == NULL ||
      resp->oauth_class != MAILOAUTH_OAUTH_OK ||
      resp->access_token == NULL) {
    mailoauth_errf(errbuf, errlen, "no successful sign-in to store");
    errno = EINVAL;
    return -1;
  }

  /* Not in the middle of somebody else's refresh, whose write would then
   * replace the sign-in with the tokens it replaces.
   */
  fd = tokens_lock(t, errbuf, errlen);
  if (fd < 0) {
    return -1;
  }

  if (tokens_signin_record(t, resp, now) < 0) {
    tokens_unlock(fd);
    mailoauth_errf(errbuf, errlen, "out of memory");
    errno = ENOMEM;
    return -1;
  }

  res = mailoauth_tokenstore_write(t->ts, &t->rec, errbuf, errlen);
  xerrno = errno;

  /* A sign-in starts a new history for the whole cluster: whatever Redis
   * held is replaced.
   */
  if (res == 0 &&
      t->redis != NULL) {
    char *text = NULL;
    size_t len = 0;

    if (mailoauth_tokenstore_encode(t->ts, &t->rec, &text, &len) < 0 ||
        mailoauth_redis_set(t->redis, t->redis_key, text, len) < 0) {
      xerrno = errno;
      mailoauth_errf(errbuf, errlen, "the sign-in is stored in %s, but not "
        "in Redis at %s (%s): the other nodes do not see it; sign in "
        "again when Redis can be reached", mailoauth_tokenstore_path(t->ts),
        mailoauth_redis_where(t->redis), xerrno == EAGAIN ?
        "cannot be reached" : strerror(xerrno));
      if (text != NULL) {
        OPENSSL_cleanse(text, len);
        free(text);
      }
      res = -1;

    } else {
      tokens_seen_set(t, text, len);
      t->pending_push = 0;
    }
  }
  tokens_unlock(fd);

  if (res < 0) {
    errno = xerrno;
    return -1;
  }

  t->failures = 0;
  t->have_rejected = 0;
  tokens_unblock(t);
  mailoauth_trace(trace_channel, 7, "account %s: sign-in stored in %s",
    tokens_name(t), mailoauth_tokenstore_path(t->ts));
  return 0;
}

int mailoauth_tokens_status(struct mailoauth_tokens *t,
    struct mailoauth_tokenstore_record *rec, char *errbuf, size_t errlen) {
  struct mailoauth_tokenstore *ts;
  int res, xerrno;

  if (t == NULL || rec == NULL) {
    errno = EINVAL;
    return -1;
  }

  /* A handle of its own: reading through t->ts would make get() miss a
   * change that this read saw first.
   */
  ts = mailoauth_tokenstore_create(t->dir, tokens_name(t), t->owner, errbuf,
    errlen);
  if (ts == NULL) {
    return -1;
  }

  /* In a cluster, what every node uses; the file when Redis is away. */
  if (t->redis != NULL) {
    char *text = NULL;
    size_t len = 0;

    if (mailoauth_redis_get(t->redis, t->redis_key, &text, &len) > 0) {
      res = mailoauth_tokenstore_decode(ts, text, len, rec, errbuf, errlen);
      xerrno = errno;
      OPENSSL_cleanse(text, len);
      free(text);
      mailoauth_tokenstore_destroy(ts);
      errno = xerrno;
      return res;
    }
  }

  res = mailoauth_tokenstore_read(ts, rec, errbuf, errlen);
  xerrno = errno;
  mailoauth_tokenstore_destroy(ts);
  errno = xerrno;
  return res;
}

void mailoauth_tokens_info(const struct mailoauth_tokens *t, time_t now,
    struct mailoauth_tokens_info *info) {
  memset(info, 0, sizeof(*info));
  if (t == NULL) {
    return;
  }

  info->delegated = tokens_delegated(t);
  info->signed_in = !info->delegated || tokens_signed_in(t);
  info->blocked = t->blocked;
  info->retry_at = t->retry_at;
  info->next_due = mailoauth_tokens_next_due(t, now);
  info->access_expires = t->rec.access_token != NULL ?
    t->rec.access_expires : 0;
  if (info->delegated &&
      t->rec.refresh_token != NULL) {
    info->last_use = tokens_last_use(t);
  }
  info->refreshes = t->refreshes;
  info->refresh_failures = t->refresh_failures;
  info->error_class = t->rec.error_class;
  info->error_message = t->rec.error_message;
  info->error_at = t->rec.error_at;
}
