/*
 * mod_mailoauth - the cluster's shared state in Redis
 *
 * Several ProFTPD nodes that name the same Redis and key prefix
 * (MailOAuthRedis) form one cluster: their workers share what must be done
 * once (a token refresh per account; later: pull tasks, the notification
 * queue).  The worker is a program of its own, started by exec, with no
 * ProFTPD API: it talks to Redis with hiredis, directly or through Redis
 * Sentinel for a Redis that fails over.
 *
 * The handle connects lazily, with connect and command timeouts, and after
 * a failure waits (0.5 s, doubling, at most 5 s) before trying again, so a
 * caller may ask on every turn of its loop.  While Redis cannot be reached
 * the cluster is "degraded": one line goes to the log when that starts and
 * one when it ends, never one per retry.
 *
 * Primitives:
 *   - leases: SET key value NX PX ttl, the value carrying a fencing token
 *     from INCR (strictly increasing per key), renewed and released only by
 *     their holder (a short Lua script, atomic in Redis);
 *   - values: get, set, and check-and-set against the value last read;
 *   - fenced set: write a value only while a lease is still held, in one
 *     step on the Redis side (for side effects a fenced-out holder must not
 *     make);
 *   - mailoauth_redis_argv(): any other command, for the cluster units to
 *     come (a Stream with a consumer group for notifications, XAUTOCLAIM of
 *     entries whose consumer died, node heartbeats for a status view).
 *
 * Secrets: the password is read from a file like a client secret and never
 * logged; values may be secret (token records) and are never logged or
 * traced, only their keys.
 *
 * No ProFTPD headers.
 */

#ifndef MOD_MAILOAUTH_REDIS_H
#define MOD_MAILOAUTH_REDIS_H

#include <stddef.h>
#include <sys/types.h>
#include <time.h>

#define MAILOAUTH_REDIS_DEFAULT_PORT        6379
#define MAILOAUTH_REDIS_DEFAULT_PREFIX      "mailoauth"
#define MAILOAUTH_REDIS_DEFAULT_TIMEOUT_MS  2000L
#define MAILOAUTH_REDIS_MAX_SENTINELS       8
#define MAILOAUTH_REDIS_PREFIX_MAX          64

/* What MailOAuthRedis says.  Strings malloc'd; release with
 * mailoauth_redis_conf_clear() (which wipes the password).
 */
struct mailoauth_redis_conf {
  /* Either a server (host and port, or a Unix socket path)... */
  char *host;
  int port;
  char *socket_path;

  /* ...or Sentinels and the name of the master they watch. */
  char *sentinel_hosts[MAILOAUTH_REDIS_MAX_SENTINELS];
  int sentinel_ports[MAILOAUTH_REDIS_MAX_SENTINELS];
  unsigned int nsentinels;
  char *master;

  char *prefix;
  int db;
  long timeout_ms;
  char *password_file;      /* password=file:/path; NULL: none */
  char *password;           /* secret, once loaded */
};

/* Parses MailOAuthRedis's words:
 *   host:port | host | /path/to/socket | sentinel=h:p,h:p master=NAME
 *   [prefix=NAME] [db=N] [password=file:/path] [timeout=MS]
 * 0, or -1 with a message in errbuf (nothing allocated then).
 */
int mailoauth_redis_conf_parse(struct mailoauth_redis_conf *conf, int argc,
  char *const *argv, char *errbuf, size_t errlen);

/* Reads the password file (mode 0600 or stricter, no symlink), trimmed.
 * Nothing to do without password=.
 */
int mailoauth_redis_conf_load_password(struct mailoauth_redis_conf *conf,
  char *errbuf, size_t errlen);

void mailoauth_redis_conf_clear(struct mailoauth_redis_conf *conf);

struct mailoauth_redis;

/* A handle on conf (copied, password included); no connection yet.  node:
 * this node's name in lease values (NULL: hostname:pid).
 */
struct mailoauth_redis *mailoauth_redis_create(
  const struct mailoauth_redis_conf *conf, const char *node, char *errbuf,
  size_t errlen);
void mailoauth_redis_destroy(struct mailoauth_redis *r);

/* Parse, read the password, create: MailOAuthRedis's words to a handle. */
struct mailoauth_redis *mailoauth_redis_open(int argc, char *const *argv,
  const char *node, char *errbuf, size_t errlen);

/* "<prefix>:<kind>:<name>" into buf; -1 (ENAMETOOLONG) when it does not
 * fit.
 */
int mailoauth_redis_key(const struct mailoauth_redis *r, char *buf,
  size_t len, const char *kind, const char *name);

/* Where the handle connects, for messages ("127.0.0.1:6379",
 * "sentinel master NAME", "/run/redis.sock"); never the password.
 */
const char *mailoauth_redis_where(const struct mailoauth_redis *r);
const char *mailoauth_redis_node(const struct mailoauth_redis *r);

/* 1: connected (connecting now if needed and the backoff allows); 0: not
 * (degraded; the reason went to the log once).
 */
int mailoauth_redis_up(struct mailoauth_redis *r);

/* 1 while the cluster is degraded (Redis unreachable). */
int mailoauth_redis_degraded(const struct mailoauth_redis *r);

/* Every call below returns -1 with errno EAGAIN when Redis cannot be
 * reached now (degraded), or EPROTO when it answered with an error.
 */

struct mailoauth_redis_lease {
  char key[256];
  char value[192];          /* "<fence> <node>" */
  long long fence;          /* strictly increasing per key */
  long ttl_ms;
};

/* 1: acquired (l filled); 0: another holder has it. */
int mailoauth_redis_lease_acquire(struct mailoauth_redis *r, const char *key,
  long ttl_ms, struct mailoauth_redis_lease *l);

/* 1: still ours, expiry pushed to ttl_ms from now; 0: lost (expired, or
 * taken by another holder since).
 */
int mailoauth_redis_lease_renew(struct mailoauth_redis *r,
  struct mailoauth_redis_lease *l);

/* 1: released; 0: it was no longer ours (nothing deleted). */
int mailoauth_redis_lease_release(struct mailoauth_redis *r,
  struct mailoauth_redis_lease *l);

/* 1: *value (malloc'd, NUL-terminated, *len bytes) found; 0: no such key. */
int mailoauth_redis_get(struct mailoauth_redis *r, const char *key,
  char **value, size_t *len);

int mailoauth_redis_set(struct mailoauth_redis *r, const char *key,
  const char *value, size_t len);

/* Sets key to value only if it still holds expected (NULL: only if it does
 * not exist).  1: set; 0: somebody changed it first.
 */
int mailoauth_redis_cas(struct mailoauth_redis *r, const char *key,
  const char *expected, size_t explen, const char *value, size_t len);

/* Sets key to value only while l is still held.  1: set; 0: lease lost. */
int mailoauth_redis_fenced_set(struct mailoauth_redis *r,
  const struct mailoauth_redis_lease *l, const char *key, const char *value,
  size_t len);

/* Any command, binary-safe; the reply is hiredis's (include hiredis.h to
 * read it, freeReplyObject() it).  NULL with errno as above; an error reply
 * is returned as it is.
 */
struct redisReply;
struct redisReply *mailoauth_redis_argv(struct mailoauth_redis *r, int argc,
  const char **argv, const size_t *lens);

#endif /* MOD_MAILOAUTH_REDIS_H */
