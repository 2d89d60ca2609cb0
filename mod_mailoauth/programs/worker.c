/*
 * mailoauthd - the worker: the one process with the network and the tokens
 *
 * Started (as root) by the supervisor.  While still root and before any
 * secret is in memory it starts its helpers, each a fresh exec: the
 * deposit helper (keeps root, serves only the configured destinations),
 * the parser (drops to User; parses the fetched mail, which is hostile
 * input, where no token is) and the TNEF helper (drops to User).  Then it reads the client secrets,
 * drops to User and Group for good, and runs the event loop (worker.h).
 */

#include "mailoauthd.h"
#include "mailoauth/control.h"
#include "mailoauth/crashpoint.h"
#include "mailoauth/deposit.h"
#include "mailoauth/ingest.h"
#include "mailoauth/imsg.h"
#include "mailoauth/jsonwrap.h"
#include "mailoauth/metrics.h"
#include "mailoauth/notify.h"
#include "mailoauth/redis.h"
#include "mailoauth/registry.h"
#include "mailoauth/spawn.h"
#include "mailoauth/spool.h"
#include "mailoauth/tnef.h"
#include "mailoauth/trace.h"
#include "mailoauth/worker.h"

#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <libgen.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#define WORKER_SCAN_INTERVAL_MS  5000

static const char *trace_channel = "mailoauth";

/* Rewrite an unchanged status at least this often (ages in the metrics). */
#define WORKER_REPORT_REFRESH_SECS 15

/* The parser process: started before the secrets are read, started
 * again (a fresh exec, as User) when one died or misbehaved.
 */
struct worker_parser {
  const struct mailoauth_wconf *conf;
  pid_t pid;
  int sock;
};

struct worker_state {
  const struct mailoauth_wconf *conf;
  struct worker_parser parser;
  struct mailoauth_registry *reg;
  struct mailoauth_notify *notify;
  struct mailoauth_ingest *ingest;
  struct mailoauth_ingest_idle *idle;   /* IMAP IDLE watchers */

  time_t started;
  char *last_status;            /* the last document written, sans time */
  time_t last_written;
  int status_errno, metrics_errno;  /* logged once until it changes */
};

static char *worker_path(const char *dir, const char *name) {
  size_t len = strlen(dir) + strlen(name) + 2;
  char *path = malloc(len);

  if (path != NULL) {
    snprintf(path, len, "%s/%s", dir, name);
  }
  return path;
}

static struct mailoauth_registry *worker_registry(
    const struct mailoauth_wconf *conf) {
  struct mailoauth_registry *reg;
  char *tokens, err[512];
  size_t i;

  tokens = worker_path(conf->state_dir, "tokens");
  if (tokens == NULL) {
    return NULL;
  }
  reg = mailoauth_registry_create(tokens, conf->uid, conf->signin_fmt);
  free(tokens);
  if (reg == NULL) {
    return NULL;
  }

  for (i = 0; i < conf->naccounts; i++) {
    const struct mailoauth_wconf_account *a = &conf->accounts[i];

    if (mailoauth_registry_add(reg, a->name, a->argc, a->argv, err,
        sizeof(err)) < 0) {
      mailoauth_log("account %s: %s", a->name, err);
    }
  }

  return reg;
}

/* The deposit helper: the one process that keeps root, to write
 * attachments into users' directories as those users, and only into the
 * destinations of the configured tasks and routes (given as its
 * arguments).  Returns the worker's end of its socket, or -1.
 */
static int worker_deposit_helper(const struct mailoauth_wconf *conf) {
  char **argv, num[2][32];
  size_t i, j, n = 0, argc = 0;
  int sv[2];
  pid_t pid;

  for (i = 0; i < conf->ntasks; i++) {
    n += 1 + conf->tasks[i]->nroutes;
  }

  argv = calloc(2 + 3 * n + 1, sizeof(char *));
  if (argv == NULL) {
    return -1;
  }
  argv[argc++] = "mailoauth deposit helper";
  argv[argc++] = "deposit";
  for (i = 0; i < conf->ntasks; i++) {
    const struct mailoauth_ingest_config *cfg = conf->tasks[i];

    for (j = 0; j <= cfg->nroutes; j++) {
      const char *dir = j == 0 ? cfg->dir : cfg->routes[j - 1]->dir;
      uid_t uid = j == 0 ? cfg->uid : cfg->routes[j - 1]->uid;
      gid_t gid = j == 0 ? cfg->gid : cfg->routes[j - 1]->gid;

      snprintf(num[0], sizeof(num[0]), "%lu", (unsigned long) uid);
      snprintf(num[1], sizeof(num[1]), "%lu", (unsigned long) gid);
      argv[argc++] = (char *) dir;
      argv[argc++] = strdup(num[0]);
      argv[argc++] = strdup(num[1]);
    }
  }

  if (mailoauth_deposit_socketpair(sv) < 0 ||
      mailoauth_spawn_fd_above_stdio(&sv[0]) < 0 ||
      mailoauth_spawn_fd_above_stdio(&sv[1]) < 0) {
    mailoauth_log("worker: cannot create the deposit helper's socket: %s; "
      "mail ingestion is off", strerror(errno));
    return -1;
  }

  {
    char **envp = NULL;
#ifdef MAILOAUTH_CRASHPOINTS
    static char crash_env[128];
    char *crash_envp[] = { crash_env, NULL };

    if (mailoauth_crashpoint_spec() != NULL) {
      snprintf(crash_env, sizeof(crash_env), "%s=%s",
        MAILOAUTH_CRASHPOINT_ENV, mailoauth_crashpoint_spec());
      envp = crash_envp;
    }
#endif
    pid = mailoauth_spawn(conf->program, argv, envp, &sv[1], 1);
  }
  (void) close(sv[1]);
  for (i = 2; i < argc; i += 3) {
    free(argv[i + 1]);
    free(argv[i + 2]);
  }
  free(argv);
  if (pid < 0) {
    mailoauth_log("worker: cannot start the deposit helper: %s; mail "
      "ingestion is off", strerror(errno));
    (void) close(sv[0]);
    return -1;
  }

  mailoauth_trace("mailoauth.ingest", 3, "started deposit helper pid %lu",
    (unsigned long) pid);
  return sv[0];
}

static void worker_parser_stop(struct worker_parser *p) {
  int status;

  if (p->sock >= 0) {
    (void) close(p->sock);
    p->sock = -1;
  }
  if (p->pid > 0) {
    /* Only this process reaps it: the pid cannot be another's yet. */
    (void) kill(p->pid, SIGKILL);
    while (waitpid(p->pid, &status, 0) < 0 && errno == EINTR) {
    }
    p->pid = 0;
  }
}

static int worker_parser_start(struct worker_parser *p) {
  char uid_arg[32], gid_arg[32];
  char *argv[] = { "mailoauth parser", "parser", uid_arg, gid_arg, NULL };
  int sv[2];

  snprintf(uid_arg, sizeof(uid_arg), "%lu", (unsigned long) p->conf->uid);
  snprintf(gid_arg, sizeof(gid_arg), "%lu", (unsigned long) p->conf->gid);
  if (mailoauth_imsg_socketpair(sv) < 0) {
    return -1;
  }

  p->pid = mailoauth_spawn(p->conf->program, argv, NULL, &sv[1], 1);
  (void) close(sv[1]);
  if (p->pid < 0) {
    int xerrno = errno;

    (void) close(sv[0]);
    p->pid = 0;
    errno = xerrno;
    return -1;
  }

  p->sock = sv[0];
  mailoauth_trace("mailoauth.ingest", 3, "started parser pid %lu",
    (unsigned long) p->pid);
  return 0;
}

/* For ingest: the parser's socket, from a new parser if the last one
 * broke.
 */
static int worker_parser_get(int restart, void *arg) {
  struct worker_parser *p = arg;

  if (restart) {
    worker_parser_stop(p);
  }
  if (p->sock < 0 &&
      worker_parser_start(p) < 0) {
    mailoauth_log("worker: cannot start the parser: %s", strerror(errno));
    return -1;
  }
  return p->sock;
}

static void worker_tnef_helper(const struct mailoauth_wconf *conf) {
  static char uid_arg[32], gid_arg[32], test_env[64];
  static char *argv[] = { "mailoauth TNEF helper", "tnef", uid_arg, gid_arg,
    NULL };
  static char *envp[] = { NULL, NULL };
  size_t i;
  int wanted = 0;

  for (i = 0; i < conf->ntasks; i++) {
    if (conf->tasks[i]->tnef) {
      wanted = 1;
    }
  }
  if (!wanted) {
    return;
  }

  snprintf(uid_arg, sizeof(uid_arg), "%lu", (unsigned long) conf->uid);
  snprintf(gid_arg, sizeof(gid_arg), "%lu", (unsigned long) conf->gid);
  /* Of the environment, the helper gets only its test switch (see
   * tnefhelper.c), which makes its sandbox check fail for a test.
   */
  if (getenv("MAILOAUTH_TEST_NO_SECCOMP") != NULL) {
    snprintf(test_env, sizeof(test_env), "MAILOAUTH_TEST_NO_SECCOMP=%s",
      getenv("MAILOAUTH_TEST_NO_SECCOMP"));
    envp[0] = test_env;
  }
  mailoauth_tnef_helper_set_program(conf->program, argv, envp);

  if (mailoauth_tnef_helper_start(NULL, NULL) < 0) {
    mailoauth_log("worker: cannot start the TNEF helper: %s; unpacking is "
      "off: winmail.dat files are deposited as they are", strerror(errno));
    return;
  }

  mailoauth_trace("mailoauth.ingest", 3, "started TNEF helper pid %lu",
    (unsigned long) mailoauth_tnef_helper_pid());
}

static time_t worker_tick(time_t now, void *arg) {
  struct worker_state *st = arg;
  time_t next, due;

  next = st->reg ? mailoauth_registry_tick(st->reg, now) : 0;

  if (st->ingest != NULL) {
    due = mailoauth_ingest_tick(st->ingest, now);
    if (due != 0 && (next == 0 || due < next)) {
      next = due;
    }
  }

  if (st->notify != NULL) {
    due = mailoauth_notify_next_due(st->notify);
    if (due != 0 && due <= now) {
      (void) mailoauth_notify_process(st->notify, now);
      due = mailoauth_notify_next_due(st->notify);
    }
    if (due != 0 && (next == 0 || due < next)) {
      next = due;
    }
  }

  return next;
}

static unsigned int worker_idle_fds(struct pollfd *pfds, unsigned int max,
    long long *wait_ms, void *arg) {
  struct worker_state *st = arg;

  return mailoauth_ingest_idle_fds(st->idle, pfds, max, wait_ms);
}

static int worker_idle_ready(const struct pollfd *pfds, unsigned int n,
    void *arg) {
  struct worker_state *st = arg;

  return mailoauth_ingest_idle_ready(st->idle, pfds, n);
}

static int worker_process(void *arg) {
  struct worker_state *st = arg;

  return mailoauth_notify_process(st->notify, time(NULL));
}

/* ftpdctl's requests, passed on by the supervisor. */
static void worker_request(uint32_t type, const unsigned char *data,
    size_t len, void *arg) {
  struct worker_state *st = arg;
  time_t now = time(NULL);

  if (type == MAILOAUTH_CTL_RUN_TASK) {
    char name[256], shown[1024];

    if (len == 0 || len >= sizeof(name)) {
      return;
    }
    memcpy(name, data, len);
    name[len] = '\0';
    mailoauth_worker_printable(name, len, shown, sizeof(shown));

    if (mailoauth_ingest_run_now(st->ingest, name, now) < 0) {
      mailoauth_log("ftpdctl: no ingest task '%s' is running; nothing to run",
        shown);
    } else {
      mailoauth_log("ingest %s: run now, as asked with ftpdctl", shown);
    }

  } else if (type == MAILOAUTH_CTL_RETRY) {
    int moved = st->notify ? mailoauth_notify_retry_dead(st->notify, now) : 0;

    if (moved == 0) {
      mailoauth_log("ftpdctl: no dead letters to retry");
    } else if (moved < 0) {
      mailoauth_log("ftpdctl: cannot move the dead letters back: %s",
        strerror(errno));
    }
  }
}

static json_t *worker_status(struct worker_state *st, time_t now) {
  json_t *doc, *notify;

  notify = st->notify ? mailoauth_notify_status(st->notify, now) :
    json_pack("{s:i, s:i, s:i, s:i, s:i, s:n}", "sent", 0, "failed", 0,
      "dead_lettered", 0, "queued", 0, "dead_letters", 0, "oldest_queued");

  doc = json_pack("{s:i, s:I, s:I, s:o, s:o, s:o}",
    "version", 1,
    "pid", (json_int_t) getpid(),
    "started", (json_int_t) st->started,
    "accounts", st->reg ? mailoauth_registry_status(st->reg, now) :
      json_array(),
    "notifications", notify ? notify : json_object(),
    "tasks", mailoauth_ingest_status(st->ingest, now));
  return doc;
}

/* Logs a failure to write once, until it changes or goes away. */
static void worker_write_failed(int *last, int xerrno, const char *what,
    const char *path) {
  if (xerrno != *last &&
      xerrno != 0) {
    mailoauth_log("worker: cannot write the %s '%s': %s", what, path,
      strerror(xerrno));
  }
  *last = xerrno;
}

static void worker_write(const char *path, const char *text, mode_t mode,
    int *last, const char *what) {
  char *d = strdup(path), *b = strdup(path);
  int xerrno = ENOMEM;

  if (d != NULL && b != NULL) {
    xerrno = mailoauth_spool_write_atomic(dirname(d), basename(b), text,
      strlen(text), mode) < 0 ? errno : 0;
  }
  worker_write_failed(last, xerrno, what, path);
  free(d);
  free(b);
}

/* The status file and the metrics: rewritten when something changed, and
 * every WORKER_REPORT_REFRESH_SECS in any case.
 */
static void worker_report(time_t now, void *arg) {
  struct worker_state *st = arg;
  char *text, *metrics, *path;
  json_t *doc;

  doc = worker_status(st, now);
  if (doc == NULL) {
    return;
  }

  text = json_dumps(doc, JSON_COMPACT|JSON_SORT_KEYS);
  if (text == NULL) {
    json_decref(doc);
    return;
  }
  if (st->last_status != NULL &&
      strcmp(text, st->last_status) == 0 &&
      now - st->last_written < WORKER_REPORT_REFRESH_SECS) {
    free(text);
    json_decref(doc);
    return;
  }
  free(st->last_status);
  st->last_status = text;
  st->last_written = now;

  (void) json_object_set_new(doc, "written", json_integer((json_int_t) now));
  text = json_dumps(doc, JSON_INDENT(2)|JSON_SORT_KEYS);
  path = worker_path(st->conf->state_dir, MAILOAUTH_STATUS_FILE);
  if (text != NULL &&
      path != NULL) {
    worker_write(path, text, 0600, &st->status_errno, "status file");
  }
  free(path);
  free(text);

  if (st->conf->metrics_file != NULL) {
    metrics = mailoauth_metrics_render(doc, now);
    if (metrics != NULL) {
      /* Readable by node_exporter, which runs as a user of its own. */
      worker_write(st->conf->metrics_file, metrics, 0644,
        &st->metrics_errno, "metrics file");
      free(metrics);
    }
  }

  json_decref(doc);
}

int mailoauthd_worker_main(struct mailoauthd *d) {
  const struct mailoauth_wconf *conf = &d->conf;
  struct mailoauth_worker_config cfg;
  struct worker_state state;
  struct mailoauth_redis *cluster = NULL;
  char *spool, *queue, *dead;
  int res, deposit_fd = -1;
  pid_t supervisor;
  size_t i;

  (void) signal(SIGPIPE, SIG_IGN);
  (void) signal(SIGHUP, SIG_IGN);
  (void) signal(SIGINT, SIG_IGN);

  curl_global_init(CURL_GLOBAL_DEFAULT);
  memset(&state, 0, sizeof(state));
  state.conf = conf;
  state.started = time(NULL);
  state.parser.conf = conf;
  state.parser.sock = -1;
  state.reg = worker_registry(conf);

#ifdef MAILOAUTH_CRASHPOINTS
  mailoauth_crashpoint_load(conf->state_dir);
#endif

  /* Helpers first: they must never see a secret, and the deposit helper
   * needs the root the worker is about to give up.
   */
  if (conf->ntasks > 0 &&
      state.reg != NULL) {
    deposit_fd = worker_deposit_helper(conf);
    if (deposit_fd >= 0) {
      if (worker_parser_start(&state.parser) < 0) {
        /* Tried again at the first message, as User. */
        mailoauth_log("worker: cannot start the parser: %s",
          strerror(errno));
      }
      worker_tnef_helper(conf);
    }
  }

  if (state.reg != NULL) {
    (void) mailoauth_registry_load_secrets(state.reg);
  }

  /* Several nodes, one Redis: read its password while root can. */
  if (conf->redis_argc > 0) {
    char err[512];

    cluster = mailoauth_redis_open(conf->redis_argc, conf->redis_argv, NULL,
      err, sizeof(err));
    if (cluster == NULL) {
      mailoauth_log("worker: MailOAuthRedis: %s; exiting", err);
      return 1;
    }
    mailoauth_tokens_use_cluster(cluster);
  }

  if (mailoauthd_drop_privs(conf->uid, conf->gid) < 0) {
    mailoauth_log("worker: cannot switch to uid %lu, gid %lu: %s; exiting",
      (unsigned long) conf->uid, (unsigned long) conf->gid, strerror(errno));
    return 1;
  }

  /* Set after the identity change, which clears it. */
  (void) prctl(PR_SET_PDEATHSIG, SIGTERM);
  supervisor = getppid();
  if (supervisor == 1) {
    return 0;
  }

  if (chdir(conf->state_dir) < 0 &&
      chdir("/") < 0) {
    /* Only the working directory is at stake; every path used is absolute. */
  }

  mailoauth_log("worker started (pid %lu, uid %lu, gid %lu)",
    (unsigned long) getpid(), (unsigned long) getuid(),
    (unsigned long) getgid());

  if (state.reg != NULL) {
    (void) mailoauth_registry_start(state.reg, time(NULL));
  }

  spool = worker_path(conf->state_dir, "spool");
  queue = worker_path(conf->state_dir, "queue");
  dead = worker_path(conf->state_dir, "deadletter");
  if (spool == NULL || queue == NULL || dead == NULL) {
    mailoauth_log("worker: out of memory; exiting");
    return 1;
  }

  memset(&cfg, 0, sizeof(cfg));
  cfg.spool_dir = spool;
  cfg.queue_dir = queue;
  cfg.master_fd = MAILOAUTHD_CONTROL_FD;
  cfg.scan_interval_ms = WORKER_SCAN_INTERVAL_MS;
  cfg.deliver = mailoauth_worker_log_event;

  state.notify = state.reg ? mailoauth_notify_create(state.reg, queue, dead,
    MAILOAUTH_NOTIFY_DEFAULT_RATE) : NULL;
  if (state.notify != NULL) {
    cfg.process = worker_process;
    cfg.process_arg = &state;
  }

  if (deposit_fd >= 0) {
    state.ingest = mailoauth_ingest_create(conf->state_dir, state.reg,
      deposit_fd);
    if (state.ingest != NULL) {
      mailoauth_ingest_set_parser(state.ingest, worker_parser_get,
        &state.parser);
    }
    for (i = 0; state.ingest != NULL && i < conf->ntasks; i++) {
      if (mailoauth_ingest_add(state.ingest, conf->tasks[i]) < 0) {
        mailoauth_log("ingest %s: cannot start: %s", conf->tasks[i]->name,
          strerror(errno));
      }
    }
  }
  state.idle = mailoauth_ingest_idle_create(state.ingest);
  if (state.idle != NULL) {
    cfg.fds = worker_idle_fds;
    cfg.fds_ready = worker_idle_ready;
    cfg.fds_arg = &state;
  }
  cfg.tick = worker_tick;
  cfg.tick_arg = &state;
  cfg.request = worker_request;
  cfg.request_arg = &state;
  cfg.report = worker_report;
  cfg.report_arg = &state;

  mailoauth_trace(trace_channel, 3, "worker running");
  res = mailoauth_worker_run(&cfg);

  mailoauth_ingest_idle_destroy(state.idle);
  mailoauth_ingest_destroy(state.ingest);
  worker_parser_stop(&state.parser);
  (void) mailoauth_tnef_helper_stop();
  if (deposit_fd >= 0) {
    (void) close(deposit_fd);
  }
  mailoauth_notify_destroy(state.notify);
  mailoauth_registry_destroy(state.reg);
  free(state.last_status);
  mailoauth_tokens_use_cluster(NULL);
  mailoauth_redis_destroy(cluster);

  {
    const char *why = mailoauth_stop_reason(mailoauth_worker_stop_code());

    /* Said as it is: stopped for the server's restart or shutdown, left
     * behind by a supervisor that died, or sent SIGTERM by someone else.
     */
    if (res == MAILOAUTH_WORKER_ORPHANED ||
        (why == NULL && getppid() != supervisor)) {
      why = "its supervisor is gone";
    } else if (why == NULL) {
      why = "stop requested (SIGTERM)";
    }
    mailoauth_log("worker (pid %lu) exiting: %s", (unsigned long) getpid(),
      why);
  }
  free(spool);
  free(queue);
  free(dead);
  return 0;
}
