/*
 * mod_mailoauth - the cluster's shared state in Redis
 */

#include "mailoauth/redis.h"
#include "mailoauth/trace.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <openssl/crypto.h>

static const char *trace_channel = "mailoauth.cluster";

/* After a failure, wait this long before the next attempt, doubling. */
#define REDIS_BACKOFF_BASE_MS   500L
#define REDIS_BACKOFF_CAP_MS    5000L

#define REDIS_PASSWORD_MAX      1024

/* Atomic on the Redis side: a holder's check and its action are one step,
 * so a lease that expired and was taken by another in between is never
 * extended, released or written through.
 */
static const char redis_renew_lua[] =
  "if redis.call('GET', KEYS[1]) == ARGV[1] then "
  "return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";

static const char redis_release_lua[] =
  "if redis.call('GET', KEYS[1]) == ARGV[1] then "
  "return redis.call('DEL', KEYS[1]) else return 0 end";

static const char redis_cas_lua[] =
  "local v = redis.call('GET', KEYS[1]) "
  "if (ARGV[1] == '0' and v == false) or (ARGV[1] == '1' and v == ARGV[2]) "
  "then redis.call('SET', KEYS[1], ARGV[3]) return 1 else return 0 end";

static const char redis_fenced_lua[] =
  "if redis.call('GET', KEYS[1]) == ARGV[1] then "
  "redis.call('SET', KEYS[2], ARGV[2]) return 1 else return 0 end";

struct mailoauth_redis {
  struct mailoauth_redis_conf conf;
  redisContext *ctx;
  char where[512];
  char node[128];

  /* Degraded mode: since when (0: not degraded), and when to try again. */
  time_t degraded_since;
  long long next_try_ms;
  unsigned int failures;
  int ever_up;
};

/* ------------------------------------------------------------------------
 * Configuration.
 */

static int redis_parse_int(const char *s, long min, long max, long *out) {
  char *end;
  long v;

  if (*s == '\0' || !isdigit((unsigned char) *s)) {
    return -1;
  }
  errno = 0;
  v = strtol(s, &end, 10);
  if (errno != 0 || *end != '\0' || v < min || v > max) {
    return -1;
  }
  *out = v;
  return 0;
}

/* "host", "host:port", "[v6]:port" into a malloc'd host and a port. */
static int redis_parse_hostport(const char *s, char **host, int *port) {
  const char *colon, *hend;
  long p = MAILOAUTH_REDIS_DEFAULT_PORT;

  if (*s == '[') {
    hend = strchr(s, ']');
    if (hend == NULL || hend == s + 1) {
      return -1;
    }
    colon = hend[1] == ':' ? hend + 1 : NULL;
    if (hend[1] != '\0' && colon == NULL) {
      return -1;
    }
    s++;

  } else {
    colon = strrchr(s, ':');
    if (colon != NULL && strchr(s, ':') != colon) {
      /* A bare IPv6 address: write it in brackets to give a port. */
      colon = NULL;
    }
    hend = colon != NULL ? colon : s + strlen(s);
  }

  if (hend == s ||
      (colon != NULL && redis_parse_int(colon + 1, 1, 65535, &p) < 0)) {
    return -1;
  }

  *host = strndup(s, (size_t) (hend - s));
  if (*host == NULL) {
    return -1;
  }
  *port = (int) p;
  return 0;
}

static int redis_valid_prefix(const char *s) {
  size_t n = strlen(s), i;

  if (n == 0 || n > MAILOAUTH_REDIS_PREFIX_MAX) {
    return 0;
  }
  for (i = 0; i < n; i++) {
    if (!isalnum((unsigned char) s[i]) && strchr("._-", s[i]) == NULL) {
      return 0;
    }
  }
  return 1;
}

static int redis_parse_sentinels(struct mailoauth_redis_conf *conf,
    const char *list, char *errbuf, size_t errlen) {
  char *copy, *item, *save = NULL;

  copy = strdup(list);
  if (copy == NULL) {
    mailoauth_errf(errbuf, errlen, "out of memory");
    return -1;
  }

  for (item = strtok_r(copy, ",", &save); item != NULL;
       item = strtok_r(NULL, ",", &save)) {
    unsigned int i = conf->nsentinels;

    if (i == MAILOAUTH_REDIS_MAX_SENTINELS) {
      mailoauth_errf(errbuf, errlen, "sentinel=: at most %d Sentinels",
        MAILOAUTH_REDIS_MAX_SENTINELS);
      free(copy);
      return -1;
    }
    conf->sentinel_ports[i] = 26379;
    if (redis_parse_hostport(item, &conf->sentinel_hosts[i],
        &conf->sentinel_ports[i]) < 0) {
      mailoauth_errf(errbuf, errlen, "sentinel=: '%s' is not host:port "
        "(write e.g. sentinel=10.0.0.1:26379,10.0.0.2:26379)", item);
      free(copy);
      return -1;
    }
    if (strchr(item, ':') == NULL) {
      conf->sentinel_ports[i] = 26379;
    }
    conf->nsentinels++;
  }

  free(copy);
  if (conf->nsentinels == 0) {
    mailoauth_errf(errbuf, errlen, "sentinel=: no Sentinel named (write e.g. "
      "sentinel=10.0.0.1:26379,10.0.0.2:26379)");
    return -1;
  }
  return 0;
}

static int redis_parse_word(struct mailoauth_redis_conf *conf,
    const char *word, char *errbuf, size_t errlen) {
  const char *eq = strchr(word, '=');
  const char *v;
  long n;

  if (eq == NULL) {
    mailoauth_errf(errbuf, errlen, "'%s': expected key=value after the "
      "server", word);
    return -1;
  }
  v = eq + 1;

#define KEY(k) ((size_t) (eq - word) == sizeof(k) - 1 && \
  strncmp(word, k, sizeof(k) - 1) == 0)

  if (KEY("sentinel")) {
    if (conf->nsentinels > 0) {
      mailoauth_errf(errbuf, errlen, "sentinel= given twice");
      return -1;
    }
    return redis_parse_sentinels(conf, v, errbuf, errlen);
  }

  if (KEY("master")) {
    if (!redis_valid_prefix(v)) {
      mailoauth_errf(errbuf, errlen, "master=: '%s' is not a Sentinel "
        "master name (letters, digits, '.', '_', '-')", v);
      return -1;
    }
    free(conf->master);
    conf->master = strdup(v);
    return conf->master != NULL ? 0 : -1;
  }

  if (KEY("prefix")) {
    if (!redis_valid_prefix(v)) {
      mailoauth_errf(errbuf, errlen, "prefix=: '%s' is not a key prefix "
        "(1-%d of letters, digits, '.', '_', '-')", v,
        MAILOAUTH_REDIS_PREFIX_MAX);
      return -1;
    }
    free(conf->prefix);
    conf->prefix = strdup(v);
    return conf->prefix != NULL ? 0 : -1;
  }

  if (KEY("db")) {
    if (redis_parse_int(v, 0, 100000, &n) < 0) {
      mailoauth_errf(errbuf, errlen, "db=: '%s' is not a database number "
        "(0, 1, ...)", v);
      return -1;
    }
    conf->db = (int) n;
    return 0;
  }

  if (KEY("timeout")) {
    if (redis_parse_int(v, 10, 60000, &n) < 0) {
      mailoauth_errf(errbuf, errlen, "timeout=: '%s' is not a number of "
        "milliseconds between 10 and 60000", v);
      return -1;
    }
    conf->timeout_ms = n;
    return 0;
  }

  if (KEY("password")) {
    if (strncmp(v, "file:/", 6) != 0) {
      /* Never echo the value: it may be the password itself. */
      mailoauth_errf(errbuf, errlen, "password=: name a file holding it, "
        "as password=file:/etc/proftpd/redis.password (mode 0600); a "
        "password is not written in the configuration");
      return -1;
    }
    free(conf->password_file);
    conf->password_file = strdup(v + 5);
    return conf->password_file != NULL ? 0 : -1;
  }

#undef KEY

  mailoauth_errf(errbuf, errlen, "unknown setting '%.*s' (known: sentinel=, "
    "master=, prefix=, db=, password=, timeout=)", (int) (eq - word), word);
  return -1;
}

int mailoauth_redis_conf_parse(struct mailoauth_redis_conf *conf, int argc,
    char *const *argv, char *errbuf, size_t errlen) {
  int i = 0;

  memset(conf, 0, sizeof(*conf));
  conf->timeout_ms = MAILOAUTH_REDIS_DEFAULT_TIMEOUT_MS;

  if (argc < 1 || argv == NULL) {
    mailoauth_errf(errbuf, errlen, "name a Redis server (host:port or "
      "/path/to/socket) or sentinel=host:port,... master=NAME");
    errno = EINVAL;
    return -1;
  }

  if (strchr(argv[0], '=') == NULL) {
    if (argv[0][0] == '/') {
      conf->socket_path = strdup(argv[0]);
      if (conf->socket_path == NULL) {
        goto fail;
      }

    } else if (redis_parse_hostport(argv[0], &conf->host, &conf->port) < 0) {
      mailoauth_errf(errbuf, errlen, "'%s' is not host:port or an absolute "
        "socket path", argv[0]);
      goto fail;
    }
    i = 1;
  }

  for (; i < argc; i++) {
    if (redis_parse_word(conf, argv[i], errbuf, errlen) < 0) {
      goto fail;
    }
  }

  if (conf->nsentinels > 0 && (conf->host || conf->socket_path)) {
    mailoauth_errf(errbuf, errlen, "name either a server or Sentinels "
      "(sentinel=), not both");
    goto fail;
  }
  if (conf->nsentinels > 0 && conf->master == NULL) {
    mailoauth_errf(errbuf, errlen, "sentinel= needs master=NAME, the name "
      "the Sentinels know the master by");
    goto fail;
  }
  if (conf->nsentinels == 0 && conf->master != NULL) {
    mailoauth_errf(errbuf, errlen, "master= needs sentinel=host:port,...");
    goto fail;
  }
  if (conf->nsentinels == 0 && conf->host == NULL &&
      conf->socket_path == NULL) {
    mailoauth_errf(errbuf, errlen, "name a Redis server (host:port or "
      "/path/to/socket) or sentinel=host:port,... master=NAME");
    goto fail;
  }

  if (conf->prefix == NULL) {
    conf->prefix = strdup(MAILOAUTH_REDIS_DEFAULT_PREFIX);
    if (conf->prefix == NULL) {
      goto fail;
    }
  }
  return 0;

fail:
  if (errbuf != NULL && errlen > 0 && errbuf[0] == '\0') {
    mailoauth_errf(errbuf, errlen, "out of memory");
  }
  mailoauth_redis_conf_clear(conf);
  errno = EINVAL;
  return -1;
}

int mailoauth_redis_conf_load_password(struct mailoauth_redis_conf *conf,
    char *errbuf, size_t errlen) {
  char buf[REDIS_PASSWORD_MAX + 2];
  struct stat st;
  ssize_t n;
  size_t have = 0;
  int fd, xerrno;

  if (conf->password_file == NULL ||
      conf->password != NULL) {
    return 0;
  }

  fd = open(conf->password_file, O_RDONLY|O_NOFOLLOW|O_NONBLOCK|O_NOCTTY|
    O_CLOEXEC);
  if (fd < 0) {
    xerrno = errno;
    mailoauth_errf(errbuf, errlen, "cannot read the Redis password file "
      "'%s': %s%s", conf->password_file, strerror(xerrno),
      xerrno == ELOOP ? " (symbolic links are refused: name the file itself)"
      : "");
    errno = xerrno;
    return -1;
  }

  if (fstat(fd, &st) < 0 ||
      !S_ISREG(st.st_mode) ||
      (st.st_mode & 077) != 0) {
    (void) close(fd);
    mailoauth_errf(errbuf, errlen, "the Redis password file '%s' must be a "
      "regular file readable only by its owner (chmod 0600 '%s')",
      conf->password_file, conf->password_file);
    errno = EPERM;
    return -1;
  }

  while (have < sizeof(buf) - 1) {
    n = read(fd, buf + have, sizeof(buf) - 1 - have);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      break;
    }
    have += (size_t) n;
  }
  (void) close(fd);
  buf[have] = '\0';

  while (have > 0 && strchr("\r\n \t", buf[have-1]) != NULL) {
    buf[--have] = '\0';
  }

  if (have == 0 || have > REDIS_PASSWORD_MAX) {
    OPENSSL_cleanse(buf, sizeof(buf));
    mailoauth_errf(errbuf, errlen, "the Redis password file '%s' is %s",
      conf->password_file, have == 0 ? "empty" : "too large (at most 1024 "
      "bytes)");
    errno = EINVAL;
    return -1;
  }

  conf->password = strdup(buf);
  OPENSSL_cleanse(buf, sizeof(buf));
  if (conf->password == NULL) {
    mailoauth_errf(errbuf, errlen, "out of memory");
    errno = ENOMEM;
    return -1;
  }
  return 0;
}

static void redis_free_secret(char **s) {
  if (*s != NULL) {
    OPENSSL_cleanse(*s, strlen(*s));
    free(*s);
    *s = NULL;
  }
}

void mailoauth_redis_conf_clear(struct mailoauth_redis_conf *conf) {
  unsigned int i;

  if (conf == NULL) {
    return;
  }
  free(conf->host);
  free(conf->socket_path);
  for (i = 0; i < conf->nsentinels; i++) {
    free(conf->sentinel_hosts[i]);
  }
  free(conf->master);
  free(conf->prefix);
  free(conf->password_file);
  redis_free_secret(&conf->password);
  memset(conf, 0, sizeof(*conf));
}

static int redis_conf_copy(struct mailoauth_redis_conf *dst,
    const struct mailoauth_redis_conf *src) {
  unsigned int i;

  memset(dst, 0, sizeof(*dst));
  dst->port = src->port;
  dst->db = src->db;
  dst->timeout_ms = src->timeout_ms > 0 ? src->timeout_ms :
    MAILOAUTH_REDIS_DEFAULT_TIMEOUT_MS;

#define DUP(f) if (src->f != NULL && (dst->f = strdup(src->f)) == NULL) \
  goto fail

  DUP(host);
  DUP(socket_path);
  DUP(master);
  DUP(prefix);
  DUP(password_file);
  DUP(password);
  for (i = 0; i < src->nsentinels; i++) {
    DUP(sentinel_hosts[i]);
    dst->sentinel_ports[i] = src->sentinel_ports[i];
    dst->nsentinels++;
  }
#undef DUP

  if (dst->prefix == NULL &&
      (dst->prefix = strdup(MAILOAUTH_REDIS_DEFAULT_PREFIX)) == NULL) {
    goto fail;
  }
  return 0;

fail:
  mailoauth_redis_conf_clear(dst);
  errno = ENOMEM;
  return -1;
}

/* ------------------------------------------------------------------------
 * Handles and connections.
 */

static long long redis_now_ms(void) {
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

struct mailoauth_redis *mailoauth_redis_create(
    const struct mailoauth_redis_conf *conf, const char *node, char *errbuf,
    size_t errlen) {
  struct mailoauth_redis *r;

  if (conf == NULL) {
    mailoauth_errf(errbuf, errlen, "no Redis configuration");
    errno = EINVAL;
    return NULL;
  }

  r = calloc(1, sizeof(*r));
  if (r == NULL ||
      redis_conf_copy(&r->conf, conf) < 0) {
    free(r);
    mailoauth_errf(errbuf, errlen, "out of memory");
    errno = ENOMEM;
    return NULL;
  }

  if (node != NULL) {
    snprintf(r->node, sizeof(r->node), "%s", node);

  } else {
    char host[96];

    if (gethostname(host, sizeof(host)) < 0) {
      snprintf(host, sizeof(host), "unknown");
    }
    host[sizeof(host) - 1] = '\0';
    snprintf(r->node, sizeof(r->node), "%s:%lu", host,
      (unsigned long) getpid());
  }

  if (r->conf.nsentinels > 0) {
    size_t used = (size_t) snprintf(r->where, sizeof(r->where),
      "Sentinel master %s (", r->conf.master);
    unsigned int i;

    for (i = 0; i < r->conf.nsentinels && used < sizeof(r->where); i++) {
      used += (size_t) snprintf(r->where + used, sizeof(r->where) - used,
        "%s%s:%d", i ? "," : "", r->conf.sentinel_hosts[i],
        r->conf.sentinel_ports[i]);
    }
    if (used < sizeof(r->where)) {
      snprintf(r->where + used, sizeof(r->where) - used, ")");
    }

  } else if (r->conf.socket_path != NULL) {
    snprintf(r->where, sizeof(r->where), "%s", r->conf.socket_path);

  } else {
    snprintf(r->where, sizeof(r->where), strchr(r->conf.host, ':') ?
      "[%s]:%d" : "%s:%d", r->conf.host, r->conf.port);
  }

  return r;
}

struct mailoauth_redis *mailoauth_redis_open(int argc, char *const *argv,
    const char *node, char *errbuf, size_t errlen) {
  struct mailoauth_redis_conf conf;
  struct mailoauth_redis *r;

  if (mailoauth_redis_conf_parse(&conf, argc, argv, errbuf, errlen) < 0) {
    return NULL;
  }
  if (mailoauth_redis_conf_load_password(&conf, errbuf, errlen) < 0) {
    mailoauth_redis_conf_clear(&conf);
    return NULL;
  }
  r = mailoauth_redis_create(&conf, node, errbuf, errlen);
  mailoauth_redis_conf_clear(&conf);
  return r;
}

static void redis_disconnect(struct mailoauth_redis *r) {
  if (r->ctx != NULL) {
    redisFree(r->ctx);
    r->ctx = NULL;
  }
}

void mailoauth_redis_destroy(struct mailoauth_redis *r) {
  if (r == NULL) {
    return;
  }
  redis_disconnect(r);
  mailoauth_redis_conf_clear(&r->conf);
  free(r);
}

int mailoauth_redis_key(const struct mailoauth_redis *r, char *buf,
    size_t len, const char *kind, const char *name) {
  int n = snprintf(buf, len, "%s:%s:%s", r->conf.prefix, kind, name);

  if (n < 0 || (size_t) n >= len) {
    errno = ENAMETOOLONG;
    return -1;
  }
  return 0;
}

const char *mailoauth_redis_where(const struct mailoauth_redis *r) {
  return r->where;
}

const char *mailoauth_redis_node(const struct mailoauth_redis *r) {
  return r->node;
}

int mailoauth_redis_degraded(const struct mailoauth_redis *r) {
  return r != NULL && r->degraded_since != 0;
}

static struct timeval redis_tv(long ms) {
  struct timeval tv;

  tv.tv_sec = ms / 1000;
  tv.tv_usec = (ms % 1000) * 1000;
  return tv;
}

static redisContext *redis_open(const struct mailoauth_redis *r,
    const char *host, int port, const char *path, char *errbuf,
    size_t errlen) {
  struct timeval tv = redis_tv(r->conf.timeout_ms);
  redisContext *c;

  c = path != NULL ? redisConnectUnixWithTimeout(path, tv) :
    redisConnectWithTimeout(host, port, tv);
  if (c == NULL) {
    mailoauth_errf(errbuf, errlen, "out of memory");
    return NULL;
  }
  if (c->err != 0) {
    mailoauth_errf(errbuf, errlen, "%s", c->errstr);
    redisFree(c);
    return NULL;
  }
  if (redisSetTimeout(c, tv) != REDIS_OK) {
    mailoauth_errf(errbuf, errlen, "cannot set the command timeout");
    redisFree(c);
    return NULL;
  }
  return c;
}

/* The master's address from the first Sentinel that knows it. */
static int redis_ask_sentinels(struct mailoauth_redis *r, char **host,
    int *port, char *errbuf, size_t errlen) {
  unsigned int i;

  for (i = 0; i < r->conf.nsentinels; i++) {
    redisContext *c;
    redisReply *rep;
    long p;

    c = redis_open(r, r->conf.sentinel_hosts[i], r->conf.sentinel_ports[i],
      NULL, errbuf, errlen);
    if (c == NULL) {
      mailoauth_trace(trace_channel, 5, "Sentinel %s:%d: %s",
        r->conf.sentinel_hosts[i], r->conf.sentinel_ports[i], errbuf);
      continue;
    }

    rep = redisCommand(c, "SENTINEL get-master-addr-by-name %s",
      r->conf.master);
    if (rep != NULL &&
        rep->type == REDIS_REPLY_ARRAY &&
        rep->elements == 2 &&
        rep->element[0]->type == REDIS_REPLY_STRING &&
        rep->element[1]->type == REDIS_REPLY_STRING &&
        redis_parse_int(rep->element[1]->str, 1, 65535, &p) == 0) {
      *host = strdup(rep->element[0]->str);
      *port = (int) p;
      freeReplyObject(rep);
      redisFree(c);
      return *host != NULL ? 0 : -1;
    }

    mailoauth_errf(errbuf, errlen, "Sentinel %s:%d does not know master "
      "'%s'%s%s", r->conf.sentinel_hosts[i], r->conf.sentinel_ports[i],
      r->conf.master, rep == NULL ? ": " : "",
      rep == NULL ? c->errstr : "");
    if (rep != NULL) {
      freeReplyObject(rep);
    }
    redisFree(c);
  }
  return -1;
}

/* An error reply that means "not the server to talk to now": after a
 * failover the old master answers READONLY until it is told.
 */
static int redis_reply_says_reconnect(const redisReply *rep) {
  return rep->type == REDIS_REPLY_ERROR &&
    (strncmp(rep->str, "READONLY", 8) == 0 ||
     strncmp(rep->str, "LOADING", 7) == 0 ||
     strncmp(rep->str, "MASTERDOWN", 10) == 0 ||
     strncmp(rep->str, "NOAUTH", 6) == 0);
}

static int redis_setup(struct mailoauth_redis *r, redisContext *c,
    char *errbuf, size_t errlen) {
  redisReply *rep;

  if (r->conf.password != NULL) {
    const char *argv[2] = { "AUTH", r->conf.password };

    rep = redisCommandArgv(c, 2, argv, NULL);
    if (rep == NULL || rep->type == REDIS_REPLY_ERROR) {
      /* Redis's reply, never the password. */
      mailoauth_errf(errbuf, errlen, "authentication failed: %s",
        rep != NULL ? rep->str : c->errstr);
      if (rep != NULL) {
        freeReplyObject(rep);
      }
      return -1;
    }
    freeReplyObject(rep);
  }

  if (r->conf.db != 0) {
    rep = redisCommand(c, "SELECT %d", r->conf.db);
    if (rep == NULL || rep->type == REDIS_REPLY_ERROR) {
      mailoauth_errf(errbuf, errlen, "SELECT %d: %s", r->conf.db,
        rep != NULL ? rep->str : c->errstr);
      if (rep != NULL) {
        freeReplyObject(rep);
      }
      return -1;
    }
    freeReplyObject(rep);
  }

  if (r->conf.nsentinels > 0) {
    /* A Sentinel may answer with a master that has just been demoted. */
    rep = redisCommand(c, "ROLE");
    if (rep == NULL ||
        rep->type != REDIS_REPLY_ARRAY ||
        rep->elements < 1 ||
        rep->element[0]->type != REDIS_REPLY_STRING ||
        strcmp(rep->element[0]->str, "master") != 0) {
      mailoauth_errf(errbuf, errlen, "the server the Sentinels named is "
        "not a master (yet)");
      if (rep != NULL) {
        freeReplyObject(rep);
      }
      return -1;
    }
    freeReplyObject(rep);
  }

  return 0;
}

static void redis_failed(struct mailoauth_redis *r, const char *why) {
  long backoff = REDIS_BACKOFF_BASE_MS;
  unsigned int i;

  redis_disconnect(r);

  for (i = 0; i < r->failures && backoff < REDIS_BACKOFF_CAP_MS; i++) {
    backoff *= 2;
  }
  if (backoff > REDIS_BACKOFF_CAP_MS) {
    backoff = REDIS_BACKOFF_CAP_MS;
  }
  r->failures++;
  r->next_try_ms = redis_now_ms() + backoff;

  if (r->degraded_since == 0) {
    r->degraded_since = time(NULL);
    mailoauth_log("cluster: Redis at %s cannot be reached (%s): degraded "
      "mode, shared work waits until it is back (logged again then)",
      r->where, why);

  } else {
    mailoauth_trace(trace_channel, 8, "Redis at %s: still unreachable "
      "(%s); next attempt in %ld ms", r->where, why, backoff);
  }
}

static int redis_connect(struct mailoauth_redis *r) {
  char err[512], *host = NULL;
  redisContext *c;
  int port = 0;

  err[0] = '\0';
  if (r->conf.nsentinels > 0) {
    if (redis_ask_sentinels(r, &host, &port, err, sizeof(err)) < 0) {
      free(host);
      redis_failed(r, err[0] ? err : "no Sentinel answered");
      return -1;
    }
    c = redis_open(r, host, port, NULL, err, sizeof(err));
    mailoauth_trace(trace_channel, 6, "Sentinels name %s:%d as master %s",
      host, port, r->conf.master);
    free(host);

  } else {
    c = redis_open(r, r->conf.host, r->conf.port, r->conf.socket_path, err,
      sizeof(err));
  }

  if (c == NULL) {
    redis_failed(r, err);
    return -1;
  }

  if (redis_setup(r, c, err, sizeof(err)) < 0) {
    redisFree(c);
    redis_failed(r, err);
    return -1;
  }

  r->ctx = c;
  r->failures = 0;
  r->next_try_ms = 0;

  if (r->degraded_since != 0) {
    mailoauth_log("cluster: Redis at %s reachable again after %ld s: "
      "degraded mode over", r->where,
      (long) (time(NULL) - r->degraded_since));
    r->degraded_since = 0;

  } else if (!r->ever_up) {
    mailoauth_log("cluster: node %s connected to Redis at %s (key prefix "
      "%s)", r->node, r->where, r->conf.prefix);
  }
  r->ever_up = 1;
  return 0;
}

int mailoauth_redis_up(struct mailoauth_redis *r) {
  if (r == NULL) {
    return 0;
  }
  if (r->ctx != NULL) {
    return 1;
  }
  if (r->next_try_ms != 0 &&
      redis_now_ms() < r->next_try_ms) {
    return 0;
  }
  return redis_connect(r) == 0;
}

struct redisReply *mailoauth_redis_argv(struct mailoauth_redis *r, int argc,
    const char **argv, const size_t *lens) {
  redisReply *rep;

  if (!mailoauth_redis_up(r)) {
    errno = EAGAIN;
    return NULL;
  }

  rep = redisCommandArgv(r->ctx, argc, argv, lens);
  if (rep == NULL) {
    char why[256];

    snprintf(why, sizeof(why), "%s", r->ctx->errstr[0] ? r->ctx->errstr :
      "connection lost");
    redis_failed(r, why);
    errno = EAGAIN;
    return NULL;
  }

  if (redis_reply_says_reconnect(rep)) {
    char why[256];

    snprintf(why, sizeof(why), "%s", rep->str);
    freeReplyObject(rep);
    redis_failed(r, why);
    errno = EAGAIN;
    return NULL;
  }

  return rep;
}

/* A command whose reply must be an integer (or nil, read as -1). */
static int redis_integer(struct mailoauth_redis *r, int argc,
    const char **argv, const size_t *lens, long long *out) {
  redisReply *rep;

  rep = mailoauth_redis_argv(r, argc, argv, lens);
  if (rep == NULL) {
    return -1;
  }

  if (rep->type == REDIS_REPLY_INTEGER) {
    *out = rep->integer;
    freeReplyObject(rep);
    return 0;
  }

  if (rep->type == REDIS_REPLY_NIL) {
    *out = -1;
    freeReplyObject(rep);
    return 0;
  }

  mailoauth_trace(trace_channel, 3, "Redis %s %s: unexpected reply%s%s",
    argv[0], argc > 1 && strcmp(argv[0], "EVAL") != 0 ? argv[1] : "",
    rep->type == REDIS_REPLY_ERROR ? ": " : "",
    rep->type == REDIS_REPLY_ERROR ? rep->str : "");
  freeReplyObject(rep);
  errno = EPROTO;
  return -1;
}

/* ------------------------------------------------------------------------
 * Leases.
 */

int mailoauth_redis_lease_acquire(struct mailoauth_redis *r, const char *key,
    long ttl_ms, struct mailoauth_redis_lease *l) {
  char fence_key[300], ttl[32];
  const char *argv[6];
  redisReply *rep;
  long long fence;
  int acquired;

  memset(l, 0, sizeof(*l));
  if (strlen(key) >= sizeof(l->key) || ttl_ms <= 0) {
    errno = EINVAL;
    return -1;
  }

  /* The fencing token: a holder that lost its lease (paused, cut off) and
   * comes back carries a smaller number than the holder after it.
   */
  snprintf(fence_key, sizeof(fence_key), "%s:fence", key);
  argv[0] = "INCR";
  argv[1] = fence_key;
  if (redis_integer(r, 2, argv, NULL, &fence) < 0) {
    return -1;
  }

  snprintf(l->key, sizeof(l->key), "%s", key);
  snprintf(l->value, sizeof(l->value), "%lld %s", fence, r->node);
  snprintf(ttl, sizeof(ttl), "%ld", ttl_ms);
  l->fence = fence;
  l->ttl_ms = ttl_ms;

  argv[0] = "SET";
  argv[1] = l->key;
  argv[2] = l->value;
  argv[3] = "NX";
  argv[4] = "PX";
  argv[5] = ttl;
  rep = mailoauth_redis_argv(r, 6, argv, NULL);
  if (rep == NULL) {
    memset(l, 0, sizeof(*l));
    return -1;
  }

  if (rep->type == REDIS_REPLY_ERROR) {
    mailoauth_trace(trace_channel, 3, "Redis SET %s NX: %s", key, rep->str);
    freeReplyObject(rep);
    memset(l, 0, sizeof(*l));
    errno = EPROTO;
    return -1;
  }

  acquired = rep->type == REDIS_REPLY_STATUS;
  freeReplyObject(rep);
  if (!acquired) {
    memset(l, 0, sizeof(*l));
    return 0;
  }

  mailoauth_trace(trace_channel, 9, "lease %s acquired (fence %lld, %ld ms)",
    key, fence, ttl_ms);
  return 1;
}

static int redis_lease_script(struct mailoauth_redis *r, const char *script,
    const struct mailoauth_redis_lease *l, const char *extra) {
  const char *argv[6];
  long long res;
  int argc = 5;

  if (l->key[0] == '\0') {
    return 0;
  }

  argv[0] = "EVAL";
  argv[1] = script;
  argv[2] = "1";
  argv[3] = l->key;
  argv[4] = l->value;
  if (extra != NULL) {
    argv[5] = extra;
    argc = 6;
  }

  if (redis_integer(r, argc, argv, NULL, &res) < 0) {
    return -1;
  }
  return res > 0 ? 1 : 0;
}

int mailoauth_redis_lease_renew(struct mailoauth_redis *r,
    struct mailoauth_redis_lease *l) {
  char ttl[32];

  snprintf(ttl, sizeof(ttl), "%ld", l->ttl_ms);
  return redis_lease_script(r, redis_renew_lua, l, ttl);
}

int mailoauth_redis_lease_release(struct mailoauth_redis *r,
    struct mailoauth_redis_lease *l) {
  int res = redis_lease_script(r, redis_release_lua, l, NULL);

  if (res >= 0) {
    memset(l, 0, sizeof(*l));
  }
  return res;
}

/* ------------------------------------------------------------------------
 * Values.
 */

int mailoauth_redis_get(struct mailoauth_redis *r, const char *key,
    char **value, size_t *len) {
  const char *argv[2] = { "GET", key };
  redisReply *rep;

  *value = NULL;
  if (len != NULL) {
    *len = 0;
  }

  rep = mailoauth_redis_argv(r, 2, argv, NULL);
  if (rep == NULL) {
    return -1;
  }

  if (rep->type == REDIS_REPLY_NIL) {
    freeReplyObject(rep);
    return 0;
  }

  if (rep->type != REDIS_REPLY_STRING) {
    mailoauth_trace(trace_channel, 3, "Redis GET %s: unexpected reply%s%s",
      key, rep->type == REDIS_REPLY_ERROR ? ": " : "",
      rep->type == REDIS_REPLY_ERROR ? rep->str : "");
    freeReplyObject(rep);
    errno = EPROTO;
    return -1;
  }

  *value = malloc(rep->len + 1);
  if (*value == NULL) {
    freeReplyObject(rep);
    errno = ENOMEM;
    return -1;
  }
  memcpy(*value, rep->str, rep->len);
  (*value)[rep->len] = '\0';
  if (len != NULL) {
    *len = rep->len;
  }

  /* The reply may hold a secret: hiredis frees without wiping. */
  OPENSSL_cleanse(rep->str, rep->len);
  freeReplyObject(rep);
  return 1;
}

int mailoauth_redis_set(struct mailoauth_redis *r, const char *key,
    const char *value, size_t len) {
  const char *argv[3] = { "SET", key, value };
  size_t lens[3];
  redisReply *rep;
  int ok;

  lens[0] = 3;
  lens[1] = strlen(key);
  lens[2] = len;
  rep = mailoauth_redis_argv(r, 3, argv, lens);
  if (rep == NULL) {
    return -1;
  }

  ok = rep->type == REDIS_REPLY_STATUS;
  if (!ok) {
    mailoauth_trace(trace_channel, 3, "Redis SET %s: %s", key,
      rep->type == REDIS_REPLY_ERROR ? rep->str : "unexpected reply");
  }
  freeReplyObject(rep);
  if (!ok) {
    errno = EPROTO;
    return -1;
  }
  return 0;
}

int mailoauth_redis_cas(struct mailoauth_redis *r, const char *key,
    const char *expected, size_t explen, const char *value, size_t len) {
  const char *argv[7];
  size_t lens[7];
  long long res;

  argv[0] = "EVAL";
  argv[1] = redis_cas_lua;
  argv[2] = "1";
  argv[3] = key;
  argv[4] = expected != NULL ? "1" : "0";
  argv[5] = expected != NULL ? expected : "";
  argv[6] = value;
  lens[0] = 4;
  lens[1] = strlen(redis_cas_lua);
  lens[2] = 1;
  lens[3] = strlen(key);
  lens[4] = 1;
  lens[5] = expected != NULL ? explen : 0;
  lens[6] = len;

  if (redis_integer(r, 7, argv, lens, &res) < 0) {
    return -1;
  }
  return res > 0 ? 1 : 0;
}

int mailoauth_redis_fenced_set(struct mailoauth_redis *r,
    const struct mailoauth_redis_lease *l, const char *key, const char *value,
    size_t len) {
  const char *argv[7];
  size_t lens[7];
  long long res;

  if (l->key[0] == '\0') {
    return 0;
  }

  argv[0] = "EVAL";
  argv[1] = redis_fenced_lua;
  argv[2] = "2";
  argv[3] = l->key;
  argv[4] = key;
  argv[5] = l->value;
  argv[6] = value;
  lens[0] = 4;
  lens[1] = strlen(redis_fenced_lua);
  lens[2] = 1;
  lens[3] = strlen(l->key);
  lens[4] = strlen(key);
  lens[5] = strlen(l->value);
  lens[6] = len;

  if (redis_integer(r, 7, argv, lens, &res) < 0) {
    return -1;
  }
  return res > 0 ? 1 : 0;
}
