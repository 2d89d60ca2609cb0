/*
 * Unit tests for mod_mailoauth/lib/cluster/redis.c and the cluster side of
 * lib/oauth/tokens.c, against a real redis-server (Debian's), started
 * privately on a free loopback port for this program (no persistence).
 * Without /usr/bin/redis-server the tests are skipped (t/setup-debian.sh
 * installs it).
 */

#include "mailoauth/redis.h"
#include "mailoauth/tokens.h"
#include "mailoauth/trace.h"
#include "mailoauth/wconf.h"

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <hiredis/hiredis.h>

#define REDIS_SERVER    "/usr/bin/redis-server"
#define PASSWORD        "pW-redis-SeCrEt-0123456789"
#define SECRET_REFRESH  "0.ARt0kEn-SeCrEt-refresh-AAAABBBBCCCCDDDDEEEE"
#define SECRET_ACCESS   "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.access-secret"
#define SECRET_ACCESS2  "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.second-access"
#define SECRET_REFRESH2 "0.ARt0kEn-SeCrEt-rotated-FFFFGGGGHHHHIIIIJJJJ"
#define SECRET_CLIENT   "Xy78Q~client-secret-value-0123456789abcd"
#define ACCOUNT         "sales"

static const char *all_secrets[] = {
  PASSWORD, SECRET_REFRESH, SECRET_ACCESS, SECRET_ACCESS2, SECRET_REFRESH2,
  SECRET_CLIENT, NULL
};

static char srv_dir[PATH_MAX];
static int srv_port;
static pid_t srv_pid;
static char prefix[64];
static unsigned int prefix_seq;

/* ------------------------------------------------------------------------
 * Log and trace recorders.
 */

struct recorder {
  char text[65536];
  size_t len;
};

static struct recorder logs, traces;

static void rec_add(struct recorder *r, const char *fmt, va_list ap) {
  int n;

  if (r->len >= sizeof(r->text) - 2) {
    return;
  }
  n = vsnprintf(r->text + r->len, sizeof(r->text) - r->len - 1, fmt, ap);
  if (n > 0) {
    r->len += (size_t) n < sizeof(r->text) - r->len - 1 ? (size_t) n :
      sizeof(r->text) - r->len - 2;
  }
  r->text[r->len++] = '\n';
  r->text[r->len] = '\0';
}

static void log_sink(const char *fmt, va_list ap) {
  rec_add(&logs, fmt, ap);
}

static void trace_sink(const char *channel, int level, const char *fmt,
    va_list ap) {
  (void) channel;
  (void) level;
  rec_add(&traces, fmt, ap);
}

static unsigned int count(const char *text, const char *what) {
  unsigned int n = 0;
  const char *p = text;

  while ((p = strstr(p, what)) != NULL) {
    n++;
    p++;
  }
  return n;
}

static void assert_no_secret(const char *what, const char *text) {
  unsigned int i;

  for (i = 0; all_secrets[i] != NULL; i++) {
    ck_assert_msg(strstr(text, all_secrets[i]) == NULL, "secret #%u in %s",
      i, what);
  }
}

/* ------------------------------------------------------------------------
 * A private redis-server.
 */

static int free_port(void) {
  struct sockaddr_in sin;
  socklen_t len = sizeof(sin);
  int fd, port;

  fd = socket(AF_INET, SOCK_STREAM, 0);
  memset(&sin, 0, sizeof(sin));
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 ||
      bind(fd, (struct sockaddr *) &sin, sizeof(sin)) < 0 ||
      getsockname(fd, (struct sockaddr *) &sin, &len) < 0) {
    abort();
  }
  port = ntohs(sin.sin_port);
  close(fd);
  return port;
}

static pid_t start_redis(int port, const char *dir, const char *password) {
  char portarg[16];
  pid_t pid;
  int i;

  snprintf(portarg, sizeof(portarg), "%d", port);
  pid = fork();
  if (pid == 0) {
    int null = open("/dev/null", O_RDWR);

    dup2(null, 1);
    dup2(null, 2);
    if (password != NULL) {
      execl(REDIS_SERVER, REDIS_SERVER, "--port", portarg, "--bind",
        "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir,
        "--requirepass", password, (char *) NULL);
    } else {
      execl(REDIS_SERVER, REDIS_SERVER, "--port", portarg, "--bind",
        "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir,
        (char *) NULL);
    }
    _exit(127);
  }

  /* Ready when it accepts a connection. */
  for (i = 0; i < 200; i++) {
    struct timeval tv = { 0, 200000 };
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
    int ok = c != NULL && c->err == 0;
    struct timespec ts = { 0, 25000000L };

    if (c != NULL) {
      redisFree(c);
    }
    if (ok) {
      return pid;
    }
    nanosleep(&ts, NULL);
  }
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
  return -1;
}

static void stop_redis(pid_t pid) {
  if (pid > 0) {
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
  }
}

static void suite_setup(void) {
  strcpy(srv_dir, "/tmp/mailoauth-redis-XXXXXX");
  if (mkdtemp(srv_dir) == NULL) {
    abort();
  }
  srv_port = free_port();
  srv_pid = start_redis(srv_port, srv_dir, NULL);
  if (srv_pid < 0) {
    fprintf(stderr, "cannot start %s\n", REDIS_SERVER);
    abort();
  }
}

static void suite_teardown(void) {
  char cmd[PATH_MAX + 32];

  stop_redis(srv_pid);
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", srv_dir);
  if (system(cmd) != 0) {
    fprintf(stderr, "cannot remove %s\n", srv_dir);
  }
}

static void setup(void) {
  memset(&logs, 0, sizeof(logs));
  memset(&traces, 0, sizeof(traces));
  mailoauth_log_set_sink(log_sink);
  mailoauth_trace_set_sink(trace_sink);

  /* Each test its own cluster. */
  snprintf(prefix, sizeof(prefix), "t%lu-%u", (unsigned long) getpid(),
    ++prefix_seq);
}

static void teardown(void) {
  assert_no_secret("log lines", logs.text);
  assert_no_secret("trace lines", traces.text);
  mailoauth_log_set_sink(NULL);
  mailoauth_trace_set_sink(NULL);
}

static struct mailoauth_redis *make_redis(int port, const char *node) {
  struct mailoauth_redis_conf conf;
  struct mailoauth_redis *r;
  char addr[64], pfx[80], err[512];
  char *argv[] = { addr, pfx, "timeout=500" };

  snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
  snprintf(pfx, sizeof(pfx), "prefix=%s", prefix);
  ck_assert_msg(mailoauth_redis_conf_parse(&conf, 3, argv, err,
    sizeof(err)) == 0, "%s", err);
  r = mailoauth_redis_create(&conf, node, err, sizeof(err));
  ck_assert_msg(r != NULL, "%s", err);
  mailoauth_redis_conf_clear(&conf);
  return r;
}

/* ------------------------------------------------------------------------
 * Configuration.
 */

static int parse(const char *line, struct mailoauth_redis_conf *conf,
    char *err, size_t errlen) {
  char *copy = strdup(line), *argv[16], *save = NULL, *w;
  int argc = 0, res;

  for (w = strtok_r(copy, " ", &save); w != NULL && argc < 16;
       w = strtok_r(NULL, " ", &save)) {
    argv[argc++] = w;
  }
  err[0] = '\0';
  res = mailoauth_redis_conf_parse(conf, argc, argv, err, errlen);
  free(copy);
  return res;
}

START_TEST(test_conf_parse) {
  struct mailoauth_redis_conf conf;
  char err[512];

  ck_assert_int_eq(parse("10.0.0.5:6380 prefix=acme db=3 timeout=250",
    &conf, err, sizeof(err)), 0);
  ck_assert_str_eq(conf.host, "10.0.0.5");
  ck_assert_int_eq(conf.port, 6380);
  ck_assert_str_eq(conf.prefix, "acme");
  ck_assert_int_eq(conf.db, 3);
  ck_assert_int_eq(conf.timeout_ms, 250);
  mailoauth_redis_conf_clear(&conf);

  ck_assert_int_eq(parse("redis.example", &conf, err, sizeof(err)), 0);
  ck_assert_int_eq(conf.port, 6379);
  ck_assert_str_eq(conf.prefix, "mailoauth");
  mailoauth_redis_conf_clear(&conf);

  ck_assert_int_eq(parse("/run/redis/redis.sock", &conf, err, sizeof(err)),
    0);
  ck_assert_str_eq(conf.socket_path, "/run/redis/redis.sock");
  mailoauth_redis_conf_clear(&conf);

  ck_assert_int_eq(parse("[::1]:7000", &conf, err, sizeof(err)), 0);
  ck_assert_str_eq(conf.host, "::1");
  ck_assert_int_eq(conf.port, 7000);
  mailoauth_redis_conf_clear(&conf);

  ck_assert_int_eq(parse("sentinel=10.0.0.1:26379,10.0.0.2 master=mymaster "
    "password=file:/etc/proftpd/redis.pass", &conf, err, sizeof(err)), 0);
  ck_assert_uint_eq(conf.nsentinels, 2);
  ck_assert_str_eq(conf.sentinel_hosts[1], "10.0.0.2");
  ck_assert_int_eq(conf.sentinel_ports[1], 26379);
  ck_assert_str_eq(conf.master, "mymaster");
  ck_assert_str_eq(conf.password_file, "/etc/proftpd/redis.pass");
  mailoauth_redis_conf_clear(&conf);

  /* Mistakes, each with its own explanation. */
  ck_assert_int_eq(parse("host:99999", &conf, err, sizeof(err)), -1);
  ck_assert_ptr_nonnull(strstr(err, "host:port"));
  ck_assert_int_eq(parse("h:1 db=x", &conf, err, sizeof(err)), -1);
  ck_assert_ptr_nonnull(strstr(err, "db="));
  ck_assert_int_eq(parse("h:1 prefix=a:b", &conf, err, sizeof(err)), -1);
  ck_assert_ptr_nonnull(strstr(err, "prefix="));
  ck_assert_int_eq(parse("h:1 colour=blue", &conf, err, sizeof(err)), -1);
  ck_assert_ptr_nonnull(strstr(err, "unknown setting 'colour'"));
  ck_assert_int_eq(parse("sentinel=h:1", &conf, err, sizeof(err)), -1);
  ck_assert_ptr_nonnull(strstr(err, "master="));
  ck_assert_int_eq(parse("h:1 sentinel=h:2 master=m", &conf, err,
    sizeof(err)), -1);
  ck_assert_ptr_nonnull(strstr(err, "not both"));
  ck_assert_int_eq(parse("prefix=x", &conf, err, sizeof(err)), -1);
  ck_assert_ptr_nonnull(strstr(err, "name a Redis server"));

  /* A password written inline is refused without being repeated. */
  ck_assert_int_eq(parse("h:1 password=" PASSWORD, &conf, err, sizeof(err)),
    -1);
  ck_assert_ptr_null(strstr(err, PASSWORD));
  ck_assert_ptr_nonnull(strstr(err, "password=file:"));
}
END_TEST

START_TEST(test_password_file) {
  struct mailoauth_redis_conf conf;
  struct mailoauth_redis *r;
  char path[PATH_MAX], dir[PATH_MAX], line[2 * PATH_MAX], err[512];
  pid_t pid;
  int fd, port;

  strcpy(dir, "/tmp/mailoauth-redispw-XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(dir));
  snprintf(path, sizeof(path), "%s/pass", dir);
  fd = open(path, O_WRONLY|O_CREAT|O_EXCL, 0644);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(write(fd, PASSWORD "\n", sizeof(PASSWORD)),
    (ssize_t) sizeof(PASSWORD));
  close(fd);

  port = free_port();
  pid = start_redis(port, dir, PASSWORD);
  ck_assert_int_gt(pid, 0);

  snprintf(line, sizeof(line), "127.0.0.1:%d prefix=%s password=file:%s",
    port, prefix, path);
  ck_assert_int_eq(parse(line, &conf, err, sizeof(err)), 0);

  /* Readable by others: refused. */
  ck_assert_int_eq(mailoauth_redis_conf_load_password(&conf, err,
    sizeof(err)), -1);
  ck_assert_ptr_nonnull(strstr(err, "chmod 0600"));

  ck_assert_int_eq(chmod(path, 0600), 0);
  ck_assert_msg(mailoauth_redis_conf_load_password(&conf, err,
    sizeof(err)) == 0, "%s", err);
  ck_assert_str_eq(conf.password, PASSWORD);

  r = mailoauth_redis_create(&conf, "node-a", err, sizeof(err));
  ck_assert_ptr_nonnull(r);
  ck_assert_int_eq(mailoauth_redis_set(r, "k", "v", 1), 0);
  mailoauth_redis_destroy(r);

  /* A wrong password: not connected, and the log does not repeat it. */
  free(conf.password);
  conf.password = strdup("wrong-" PASSWORD);
  r = mailoauth_redis_create(&conf, "node-a", err, sizeof(err));
  ck_assert_int_eq(mailoauth_redis_up(r), 0);
  ck_assert_uint_eq(count(logs.text, "cannot be reached"), 1);
  ck_assert_ptr_nonnull(strstr(logs.text, "authentication failed"));
  ck_assert_ptr_null(strstr(logs.text, "wrong-"));
  mailoauth_redis_destroy(r);
  mailoauth_redis_conf_clear(&conf);

  stop_redis(pid);
  snprintf(line, sizeof(line), "rm -rf '%s'", dir);
  ck_assert_int_eq(system(line), 0);
}
END_TEST

/* The master hands MailOAuthRedis's words to the worker in its JSON. */
START_TEST(test_wconf_handoff) {
  static const char with[] = "{\"version\": 1, \"state_dir\": \"/s\", "
    "\"uid\": 1, \"gid\": 1, \"signin\": \"x %s\", \"program\": \"/p\", "
    "\"accounts\": [], \"tasks\": [], \"trace\": {}, "
    "\"redis\": [\"127.0.0.1:6380\", \"prefix=acme\"]}";
  static const char bad[] = "{\"version\": 1, \"state_dir\": \"/s\", "
    "\"uid\": 1, \"gid\": 1, \"signin\": \"x %s\", \"program\": \"/p\", "
    "\"accounts\": [], \"tasks\": [], \"trace\": {}, \"redis\": [1]}";
  struct mailoauth_wconf w;
  struct mailoauth_redis *r;
  char err[512];

  ck_assert_msg(mailoauth_wconf_parse(&w, with, sizeof(with) - 1, err,
    sizeof(err)) == 0, "%s", err);
  ck_assert_int_eq(w.redis_argc, 2);
  ck_assert_str_eq(w.redis_argv[1], "prefix=acme");
  r = mailoauth_redis_open(w.redis_argc, w.redis_argv, "n", err,
    sizeof(err));
  ck_assert_msg(r != NULL, "%s", err);
  ck_assert_str_eq(mailoauth_redis_where(r), "127.0.0.1:6380");
  mailoauth_redis_destroy(r);
  mailoauth_wconf_free(&w);

  /* Without the key: no cluster. */
  {
    char without[sizeof(with)];
    size_t n = (size_t) (strstr(with, ", \"redis\"") - with);

    memcpy(without, with, n);
    strcpy(without + n, "}");
    ck_assert_msg(mailoauth_wconf_parse(&w, without, strlen(without), err,
      sizeof(err)) == 0, "%s", err);
    ck_assert_int_eq(w.redis_argc, 0);
    mailoauth_wconf_free(&w);
  }
  ck_assert_int_eq(mailoauth_wconf_parse(&w, bad, sizeof(bad) - 1, err,
    sizeof(err)), -1);
}
END_TEST

/* ------------------------------------------------------------------------
 * Leases and values.
 */

START_TEST(test_lease_exclusive_and_fenced) {
  struct mailoauth_redis *a, *b;
  struct mailoauth_redis_lease la, lb, lc;
  char key[256], data[256], *value = NULL;
  const char *del[2];
  struct redisReply *rep;
  size_t len;

  a = make_redis(srv_port, "node-a");
  b = make_redis(srv_port, "node-b");
  ck_assert_int_eq(mailoauth_redis_key(a, key, sizeof(key), "task", "inbox"),
    0);
  snprintf(data, sizeof(data), "%s:task:inbox", prefix);
  ck_assert_str_eq(key, data);

  /* One holder at a time. */
  ck_assert_int_eq(mailoauth_redis_lease_acquire(a, key, 60000, &la), 1);
  ck_assert_int_eq(mailoauth_redis_lease_acquire(b, key, 60000, &lb), 0);
  ck_assert_ptr_nonnull(strstr(la.value, "node-a"));

  /* The holder renews; writes through its lease. */
  ck_assert_int_eq(mailoauth_redis_lease_renew(a, &la), 1);
  snprintf(data, sizeof(data), "%s:ledger", prefix);
  ck_assert_int_eq(mailoauth_redis_fenced_set(a, &la, data, "1", 1), 1);

  /* The lease goes (as if it expired while a was paused); b takes it with
   * a larger fencing token.
   */
  del[0] = "DEL";
  del[1] = key;
  rep = mailoauth_redis_argv(b, 2, del, NULL);
  ck_assert_ptr_nonnull(rep);
  freeReplyObject(rep);
  ck_assert_int_eq(mailoauth_redis_lease_acquire(b, key, 60000, &lb), 1);
  ck_assert(lb.fence > la.fence);

  /* a is fenced out: no renewal, no release of b's lease, no write. */
  ck_assert_int_eq(mailoauth_redis_lease_renew(a, &la), 0);
  ck_assert_int_eq(mailoauth_redis_fenced_set(a, &la, data, "2", 1), 0);
  ck_assert_int_eq(mailoauth_redis_lease_release(a, &la), 0);
  ck_assert_int_eq(mailoauth_redis_lease_acquire(a, key, 60000, &lc), 0);
  ck_assert_int_eq(mailoauth_redis_get(b, data, &value, &len), 1);
  ck_assert_str_eq(value, "1");
  free(value);

  ck_assert_int_eq(mailoauth_redis_fenced_set(b, &lb, data, "3", 1), 1);
  ck_assert_int_eq(mailoauth_redis_lease_release(b, &lb), 1);
  ck_assert_int_eq(mailoauth_redis_lease_acquire(a, key, 60000, &lc), 1);
  ck_assert(lc.fence > lb.fence);

  /* A short lease lapses by itself. */
  ck_assert_int_eq(mailoauth_redis_lease_release(a, &lc), 1);
  ck_assert_int_eq(mailoauth_redis_lease_acquire(a, key, 50, &lc), 1);
  {
    struct timespec ts = { 0, 300000000L };

    nanosleep(&ts, NULL);
  }
  ck_assert_int_eq(mailoauth_redis_lease_renew(a, &lc), 0);
  ck_assert_int_eq(mailoauth_redis_lease_acquire(b, key, 60000, &lb), 1);

  mailoauth_redis_destroy(a);
  mailoauth_redis_destroy(b);
  ck_assert_uint_eq(count(logs.text, "\n"),
    count(logs.text, "connected to Redis"));
}
END_TEST

START_TEST(test_get_set_cas) {
  struct mailoauth_redis *r;
  char key[256], *value = NULL;
  size_t len = 0;

  r = make_redis(srv_port, NULL);
  ck_assert_ptr_nonnull(strchr(mailoauth_redis_node(r), ':'));
  ck_assert_int_eq(mailoauth_redis_key(r, key, sizeof(key), "tokens", "x"),
    0);

  ck_assert_int_eq(mailoauth_redis_get(r, key, &value, &len), 0);
  ck_assert_ptr_null(value);

  /* Only if absent. */
  ck_assert_int_eq(mailoauth_redis_cas(r, key, NULL, 0, "one", 3), 1);
  ck_assert_int_eq(mailoauth_redis_cas(r, key, NULL, 0, "two", 3), 0);

  /* Only if unchanged since read; binary-safe. */
  ck_assert_int_eq(mailoauth_redis_cas(r, key, "two", 3, "three", 5), 0);
  ck_assert_int_eq(mailoauth_redis_cas(r, key, "one", 3, "t\0o", 3), 1);
  ck_assert_int_eq(mailoauth_redis_get(r, key, &value, &len), 1);
  ck_assert_uint_eq(len, 3);
  ck_assert_int_eq(memcmp(value, "t\0o", 3), 0);
  free(value);

  ck_assert_int_eq(mailoauth_redis_set(r, key, "four", 4), 0);
  ck_assert_int_eq(mailoauth_redis_get(r, key, &value, &len), 1);
  ck_assert_str_eq(value, "four");
  free(value);

  mailoauth_redis_destroy(r);
}
END_TEST

/* Through Redis Sentinel: the master's address comes from a Sentinel. */
START_TEST(test_sentinel) {
  char dir[PATH_MAX], conf[PATH_MAX + 32], text[512], line[256], err[512];
  char *argv[3] = { line, "master=mymaster", "timeout=500" };
  struct mailoauth_redis *r;
  char *value = NULL;
  int port = free_port(), i, fd, up = 0;
  pid_t pid;

  if (access("/usr/bin/redis-sentinel", X_OK) != 0) {
    return;
  }

  strcpy(dir, "/tmp/mailoauth-sentinel-XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(dir));
  snprintf(conf, sizeof(conf), "%s/sentinel.conf", dir);
  snprintf(text, sizeof(text), "port %d\nbind 127.0.0.1\ndir %s\n"
    "sentinel monitor mymaster 127.0.0.1 %d 1\n", port, dir, srv_port);
  fd = open(conf, O_WRONLY|O_CREAT|O_EXCL, 0600);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t) strlen(text));
  close(fd);

  pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    int null = open("/dev/null", O_RDWR);

    dup2(null, 1);
    dup2(null, 2);
    execl("/usr/bin/redis-sentinel", "redis-sentinel", conf, (char *) NULL);
    _exit(127);
  }

  snprintf(line, sizeof(line), "sentinel=127.0.0.1:%d", port);
  r = mailoauth_redis_open(3, argv, "node-s", err, sizeof(err));
  ck_assert_msg(r != NULL, "%s", err);
  ck_assert_ptr_nonnull(strstr(mailoauth_redis_where(r),
    "Sentinel master mymaster"));

  /* Polled until the Sentinel listens (the backoff caps at 5 s). */
  for (i = 0; i < 300 && !up; i++) {
    struct timespec ts = { 0, 50000000L };

    up = mailoauth_redis_up(r);
    if (!up) {
      nanosleep(&ts, NULL);
    }
  }
  ck_assert(up);
  ck_assert_int_eq(mailoauth_redis_set(r, "via-sentinel", "yes", 3), 0);
  mailoauth_redis_destroy(r);

  /* The value is on the master itself. */
  r = make_redis(srv_port, "node-a");
  ck_assert_int_eq(mailoauth_redis_get(r, "via-sentinel", &value, NULL), 1);
  ck_assert_str_eq(value, "yes");
  free(value);
  mailoauth_redis_destroy(r);

  /* A master the Sentinels do not know: degraded, said once. */
  argv[1] = "master=other";
  memset(&logs, 0, sizeof(logs));
  r = mailoauth_redis_open(3, argv, "node-s", err, sizeof(err));
  ck_assert_ptr_nonnull(r);
  ck_assert_int_eq(mailoauth_redis_up(r), 0);
  ck_assert_int_eq(mailoauth_redis_up(r), 0);
  ck_assert_uint_eq(count(logs.text, "cannot be reached"), 1);
  ck_assert_ptr_nonnull(strstr(logs.text, "does not know master 'other'"));
  mailoauth_redis_destroy(r);

  stop_redis(pid);
  snprintf(text, sizeof(text), "rm -rf '%s'", dir);
  ck_assert_int_eq(system(text), 0);
}
END_TEST

/* Redis away, then back: one line each way, however many calls between. */
START_TEST(test_degraded_logged_once_each_way) {
  struct mailoauth_redis *r;
  struct mailoauth_redis_lease l;
  char *value = NULL;
  int port = free_port(), i, up = 0;
  pid_t pid;

  r = make_redis(port, "node-a");
  for (i = 0; i < 20; i++) {
    ck_assert_int_eq(mailoauth_redis_get(r, "k", &value, NULL), -1);
    ck_assert_int_eq(errno, EAGAIN);
    ck_assert_int_eq(mailoauth_redis_lease_acquire(r, "l", 1000, &l), -1);
  }
  ck_assert(mailoauth_redis_degraded(r));
  ck_assert_uint_eq(count(logs.text, "cannot be reached"), 1);
  ck_assert_uint_eq(count(logs.text, "degraded mode"), 1);

  pid = start_redis(port, srv_dir, NULL);
  ck_assert_int_gt(pid, 0);

  /* Within the backoff's cap (5 s); polled, not slept on. */
  for (i = 0; i < 200 && !up; i++) {
    struct timespec ts = { 0, 50000000L };

    up = mailoauth_redis_up(r);
    if (!up) {
      nanosleep(&ts, NULL);
    }
  }
  ck_assert(up);
  ck_assert(!mailoauth_redis_degraded(r));
  ck_assert_int_eq(mailoauth_redis_set(r, "k", "v", 1), 0);
  ck_assert_uint_eq(count(logs.text, "cannot be reached"), 1);
  ck_assert_uint_eq(count(logs.text, "reachable again"), 1);

  /* Lost again mid-use: a new episode, one more line. */
  stop_redis(pid);
  for (i = 0; i < 5; i++) {
    ck_assert_int_eq(mailoauth_redis_set(r, "k", "v", 1), -1);
  }
  ck_assert_uint_eq(count(logs.text, "cannot be reached"), 2);

  mailoauth_redis_destroy(r);
}
END_TEST

/* ------------------------------------------------------------------------
 * Tokens shared by the nodes of a cluster.
 */

static struct mailoauth_account account;

static void make_account(void) {
  char *argv[] = {
    "client-id=00001111-aaaa-2222-bbbb-3333cccc4444",
    "mailbox=ftp-alerts@contoso.test", "tenant=contoso.test",
    /* Nothing listens: a token request would fail (and be traced). */
    "authority=https://127.0.0.1:1", "client-secret=env:TEST_REDIS_SECRET",
    "grant=delegated"
  };
  char err[512];

  setenv("TEST_REDIS_SECRET", SECRET_CLIENT, 1);
  memset(&account, 0, sizeof(account));
  ck_assert_msg(mailoauth_account_parse(&account, ACCOUNT, 6, argv, err,
    sizeof(err)) == 0, "%s", err);
  ck_assert_msg(mailoauth_account_load_secret(&account, err,
    sizeof(err)) == 0, "%s", err);
}

static struct mailoauth_tokens *node_tokens(struct mailoauth_redis *r,
    char *dir) {
  struct mailoauth_tokens *t;
  char err[512];

  strcpy(dir, "/tmp/mailoauth-node-XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(dir));
  mailoauth_tokens_use_cluster(r);
  t = mailoauth_tokens_create(&account, dir, (uid_t) -1, NULL, err,
    sizeof(err));
  mailoauth_tokens_use_cluster(NULL);
  ck_assert_msg(t != NULL, "%s", err);
  return t;
}

static void remove_dir(const char *dir) {
  char cmd[PATH_MAX + 32];

  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
  ck_assert_int_eq(system(cmd), 0);
}

static void fill_signin(struct mailoauth_oauth_response *resp,
    const char *access, const char *refresh, time_t expires) {
  memset(resp, 0, sizeof(*resp));
  resp->oauth_class = MAILOAUTH_OAUTH_OK;
  resp->access_token = strdup(access);
  resp->refresh_token = strdup(refresh);
  resp->scope = strdup("https://outlook.office.com/SMTP.Send");
  resp->expires_at = expires;
  resp->identity.username = strdup("ftp-alerts@contoso.test");
}

static unsigned int token_requests(void) {
  return count(traces.text, "POST https://");
}

/* A sign-in on one node is used by another, which makes no request. */
START_TEST(test_signin_reaches_other_node) {
  struct mailoauth_redis *ra, *rb;
  struct mailoauth_tokens *a, *b;
  struct mailoauth_oauth_response resp;
  mailoauth_oauth_class_t c = MAILOAUTH_OAUTH_OK;
  char dira[PATH_MAX], dirb[PATH_MAX], key[256], err[512], *value = NULL;
  const char *tok;
  time_t now = time(NULL);

  make_account();
  ra = make_redis(srv_port, "node-a");
  rb = make_redis(srv_port, "node-b");
  a = node_tokens(ra, dira);
  b = node_tokens(rb, dirb);

  /* Node b has no sign-in yet. */
  ck_assert_ptr_null(mailoauth_tokens_get(b, now, &c));
  ck_assert_int_eq(c, MAILOAUTH_OAUTH_REAUTH);

  fill_signin(&resp, SECRET_ACCESS, SECRET_REFRESH, now + 3600);
  ck_assert_msg(mailoauth_tokens_store_signin(a, &resp, now, err,
    sizeof(err)) == 0, "%s", err);
  mailoauth_oauth_response_clear(&resp);

  /* In Redis, as the file has it. */
  ck_assert_int_eq(mailoauth_redis_key(ra, key, sizeof(key), "tokens",
    ACCOUNT), 0);
  ck_assert_int_eq(mailoauth_redis_get(ra, key, &value, NULL), 1);
  ck_assert_ptr_nonnull(strstr(value, SECRET_REFRESH));
  free(value);

  tok = mailoauth_tokens_get(b, now, &c);
  ck_assert_ptr_nonnull(tok);
  ck_assert_str_eq(tok, SECRET_ACCESS);
  ck_assert_uint_eq(count(logs.text, "new sign-in as ftp-alerts@contoso.test "
    "found in Redis"), 1);

  /* A second sign-in, on b this time, replaces the record for a too. */
  fill_signin(&resp, SECRET_ACCESS2, SECRET_REFRESH2, now + 3600);
  ck_assert_msg(mailoauth_tokens_store_signin(b, &resp, now, err,
    sizeof(err)) == 0, "%s", err);
  mailoauth_oauth_response_clear(&resp);
  tok = mailoauth_tokens_get(a, now + 1, &c);
  ck_assert_ptr_nonnull(tok);
  ck_assert_str_eq(tok, SECRET_ACCESS2);

  /* ...and b's token file mirrors it, for the status tool on b. */
  {
    struct mailoauth_tokenstore_record rec;

    memset(&rec, 0, sizeof(rec));
    ck_assert_int_eq(mailoauth_tokens_status(a, &rec, err, sizeof(err)), 0);
    ck_assert_str_eq(rec.refresh_token, SECRET_REFRESH2);
    mailoauth_tokenstore_record_free(&rec);
  }

  ck_assert_uint_eq(token_requests(), 0);
  mailoauth_tokens_destroy(a);
  mailoauth_tokens_destroy(b);
  mailoauth_redis_destroy(ra);
  mailoauth_redis_destroy(rb);
  remove_dir(dira);
  remove_dir(dirb);
  mailoauth_account_clear(&account);
}
END_TEST

/* While another node holds the refresh lease, this one waits for its
 * record instead of refreshing.
 */
START_TEST(test_waits_for_other_nodes_refresh) {
  struct mailoauth_redis *ra, *rb;
  struct mailoauth_redis_lease lease;
  struct mailoauth_tokens *a, *b;
  struct mailoauth_oauth_response resp;
  mailoauth_oauth_class_t c = MAILOAUTH_OAUTH_OK;
  char dira[PATH_MAX], dirb[PATH_MAX], key[256], err[512];
  const char *tok;
  time_t now = time(NULL);
  pid_t pid;
  int status;

  make_account();
  ra = make_redis(srv_port, "node-a");
  rb = make_redis(srv_port, "node-b");
  a = node_tokens(ra, dira);
  b = node_tokens(rb, dirb);

  /* Signed in long ago: the access token has expired. */
  fill_signin(&resp, SECRET_ACCESS, SECRET_REFRESH, now - 10);
  ck_assert_msg(mailoauth_tokens_store_signin(a, &resp, now - 3700, err,
    sizeof(err)) == 0, "%s", err);
  mailoauth_oauth_response_clear(&resp);

  /* Node a is refreshing (holds the lease); it stores its result a little
   * later, from another process.
   */
  ck_assert_int_eq(mailoauth_redis_key(ra, key, sizeof(key), "refresh",
    ACCOUNT), 0);
  ck_assert_int_eq(mailoauth_redis_lease_acquire(ra, key, 60000, &lease), 1);

  pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    struct mailoauth_redis *rc = make_redis(srv_port, "node-a");
    struct timespec ts = { 0, 300000000L };

    nanosleep(&ts, NULL);
    fill_signin(&resp, SECRET_ACCESS2, SECRET_REFRESH2, now + 3600);
    mailoauth_tokens_use_cluster(rc);
    {
      struct mailoauth_tokens *t = mailoauth_tokens_create(&account, dira,
        (uid_t) -1, NULL, err, sizeof(err));

      _exit(t != NULL &&
        mailoauth_tokens_store_signin(t, &resp, now, err, sizeof(err)) == 0 ?
        0 : 1);
    }
  }

  tok = mailoauth_tokens_get(b, now, &c);
  ck_assert_int_eq(waitpid(pid, &status, 0), pid);
  ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  ck_assert_ptr_nonnull(tok);
  ck_assert_str_eq(tok, SECRET_ACCESS2);

  /* No request of b's own. */
  ck_assert_uint_eq(token_requests(), 0);
  ck_assert_ptr_nonnull(strstr(traces.text, "another node is refreshing"));

  ck_assert_int_eq(mailoauth_redis_lease_release(ra, &lease), 1);
  mailoauth_tokens_destroy(a);
  mailoauth_tokens_destroy(b);
  mailoauth_redis_destroy(ra);
  mailoauth_redis_destroy(rb);
  remove_dir(dira);
  remove_dir(dirb);
  mailoauth_account_clear(&account);
}
END_TEST

/* The lease holder is stuck (or died mid-request): the others do not
 * refresh before its lease expires, and do not block their loop either.
 */
START_TEST(test_stuck_holder_not_overtaken) {
  struct mailoauth_redis *ra, *rb;
  struct mailoauth_redis_lease lease;
  struct mailoauth_tokens *a, *b;
  struct mailoauth_oauth_response resp;
  mailoauth_oauth_class_t c = MAILOAUTH_OAUTH_OK;
  char dira[PATH_MAX], dirb[PATH_MAX], key[256], err[512];
  time_t now = time(NULL), due;

  make_account();
  ra = make_redis(srv_port, "node-a");
  rb = make_redis(srv_port, "node-b");
  a = node_tokens(ra, dira);
  b = node_tokens(rb, dirb);

  fill_signin(&resp, SECRET_ACCESS, SECRET_REFRESH, now - 10);
  ck_assert_msg(mailoauth_tokens_store_signin(a, &resp, now - 3700, err,
    sizeof(err)) == 0, "%s", err);
  mailoauth_oauth_response_clear(&resp);
  ck_assert_int_eq(mailoauth_redis_key(ra, key, sizeof(key), "refresh",
    ACCOUNT), 0);
  ck_assert_int_eq(mailoauth_redis_lease_acquire(ra, key, 60000, &lease), 1);

  ck_assert_ptr_null(mailoauth_tokens_get(b, now, &c));
  ck_assert_int_eq(c, MAILOAUTH_OAUTH_TRANSIENT);
  due = mailoauth_tokens_next_due(b, now);
  ck_assert(due > now && due <= now + 2);
  ck_assert_uint_eq(token_requests(), 0);
  ck_assert_uint_eq(count(logs.text, "\n"),
    count(logs.text, "connected to Redis"));

  ck_assert_int_eq(mailoauth_redis_lease_release(ra, &lease), 1);
  mailoauth_tokens_destroy(a);
  mailoauth_tokens_destroy(b);
  mailoauth_redis_destroy(ra);
  mailoauth_redis_destroy(rb);
  remove_dir(dira);
  remove_dir(dirb);
  mailoauth_account_clear(&account);
}
END_TEST

/* Redis away: no refresh (the refresh token might be spent twice), the
 * valid access token still handed out, the expired one not.
 */
START_TEST(test_no_refresh_while_degraded) {
  struct mailoauth_redis *r;
  struct mailoauth_tokens *t;
  struct mailoauth_oauth_response resp;
  mailoauth_oauth_class_t c = MAILOAUTH_OAUTH_OK;
  char dir[PATH_MAX], err[512];
  const char *tok;
  time_t now = time(NULL);

  make_account();
  r = make_redis(free_port(), "node-a");
  t = node_tokens(r, dir);

  /* The sign-in reaches the file, and says Redis did not get it. */
  fill_signin(&resp, SECRET_ACCESS, SECRET_REFRESH, now + 300);
  ck_assert_int_eq(mailoauth_tokens_store_signin(t, &resp, now - 3000, err,
    sizeof(err)), -1);
  ck_assert_ptr_nonnull(strstr(err, "not in Redis"));
  ck_assert_ptr_null(strstr(err, SECRET_REFRESH));
  mailoauth_oauth_response_clear(&resp);

  /* Due for a refresh (within the margin), but still valid: used. */
  tok = mailoauth_tokens_get(t, now, &c);
  ck_assert_ptr_nonnull(tok);
  ck_assert_str_eq(tok, SECRET_ACCESS);

  /* Expired: none, TRANSIENT, and still no request. */
  ck_assert_ptr_null(mailoauth_tokens_get(t, now + 400, &c));
  ck_assert_int_eq(c, MAILOAUTH_OAUTH_TRANSIENT);
  ck_assert_uint_eq(token_requests(), 0);
  ck_assert_uint_eq(count(logs.text, "cannot be reached"), 1);

  mailoauth_tokens_destroy(t);
  mailoauth_redis_destroy(r);
  remove_dir(dir);
  mailoauth_account_clear(&account);
}
END_TEST

/* A record this node has and Redis has not (a token file found while
 * Redis was away): pushed as soon as Redis is back, and asked for soon.
 */
START_TEST(test_pending_record_pushed_when_back) {
  struct mailoauth_redis *r;
  struct mailoauth_tokens *t, *w;
  struct mailoauth_oauth_response resp;
  mailoauth_oauth_class_t c = MAILOAUTH_OAUTH_OK;
  char dir[PATH_MAX], key[256], err[512], *value = NULL;
  const char *tok;
  time_t now = time(NULL), due;
  int port = free_port(), i, found = 0;
  pid_t pid;

  make_account();

  /* The sign-in tool wrote the file (no cluster configured for it). */
  strcpy(dir, "/tmp/mailoauth-node-XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(dir));
  w = mailoauth_tokens_create(&account, dir, (uid_t) -1, NULL, err,
    sizeof(err));
  ck_assert_ptr_nonnull(w);
  fill_signin(&resp, SECRET_ACCESS, SECRET_REFRESH, now + 3600);
  ck_assert_msg(mailoauth_tokens_store_signin(w, &resp, now, err,
    sizeof(err)) == 0, "%s", err);
  mailoauth_oauth_response_clear(&resp);
  mailoauth_tokens_destroy(w);

  r = make_redis(port, "node-a");
  mailoauth_tokens_use_cluster(r);
  t = mailoauth_tokens_create(&account, dir, (uid_t) -1, NULL, err,
    sizeof(err));
  mailoauth_tokens_use_cluster(NULL);
  ck_assert_ptr_nonnull(t);

  tok = mailoauth_tokens_get(t, now, &c);
  ck_assert_ptr_nonnull(tok);
  ck_assert_str_eq(tok, SECRET_ACCESS);
  due = mailoauth_tokens_next_due(t, now);
  ck_assert(due > now && due <= now + 2);

  pid = start_redis(port, srv_dir, NULL);
  ck_assert_int_gt(pid, 0);
  ck_assert_int_eq(mailoauth_redis_key(r, key, sizeof(key), "tokens",
    ACCOUNT), 0);
  for (i = 0; i < 300 && !found; i++) {
    struct timespec ts = { 0, 50000000L };

    (void) mailoauth_tokens_get(t, now, &c);
    found = mailoauth_redis_get(r, key, &value, NULL) == 1;
    if (!found) {
      nanosleep(&ts, NULL);
    }
  }
  ck_assert(found);
  ck_assert_ptr_nonnull(strstr(value, SECRET_REFRESH));
  free(value);

  /* Nothing more to push: the usual schedule again. */
  due = mailoauth_tokens_next_due(t, now);
  ck_assert(due > now + 600);

  stop_redis(pid);
  mailoauth_tokens_destroy(t);
  mailoauth_redis_destroy(r);
  remove_dir(dir);
  mailoauth_account_clear(&account);
}
END_TEST

static Suite *redis_suite(void) {
  Suite *s = suite_create("redis");
  TCase *tc = tcase_create("redis");

  tcase_add_unchecked_fixture(tc, suite_setup, suite_teardown);
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_conf_parse);
  tcase_add_test(tc, test_password_file);
  tcase_add_test(tc, test_wconf_handoff);
  tcase_add_test(tc, test_lease_exclusive_and_fenced);
  tcase_add_test(tc, test_get_set_cas);
  tcase_add_test(tc, test_degraded_logged_once_each_way);
  tcase_add_test(tc, test_sentinel);
  tcase_add_test(tc, test_signin_reaches_other_node);
  tcase_add_test(tc, test_waits_for_other_nodes_refresh);
  tcase_add_test(tc, test_stuck_holder_not_overtaken);
  tcase_add_test(tc, test_no_refresh_while_degraded);
  tcase_add_test(tc, test_pending_record_pushed_when_back);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr;
  int failed;

  if (access(REDIS_SERVER, X_OK) != 0) {
    printf("test_redis: %s not installed (t/setup-debian.sh installs it); "
      "skipped\n", REDIS_SERVER);
    return EXIT_SUCCESS;
  }

  curl_global_init(CURL_GLOBAL_DEFAULT);
  sr = srunner_create(redis_suite());
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  curl_global_cleanup();
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
