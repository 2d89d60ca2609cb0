/*
 * ProFTPD - mod_mailoauth: Microsoft 365 (OAuth2) mail for ProFTPD
 *
 * This program is free software; you can redistribute it and/or modify
 * it under the terms of the GNU General Public License as published by
 * the Free Software Foundation; either version 2 of the License, or
 * (at your option) any later version.
 *
 * This file is only the ProFTPD glue: directives, the upload hook, and the
 * worker process's lifecycle.  The work itself lives in the units beside it,
 * which build and test without ProFTPD.
 *
 * $Archive: mod_mailoauth.a$
 * $Libraries: -lcurl -ljansson -lssl -lcrypto -lytnef$
 */

#include "conf.h"
#include "privs.h"

#include "mod_mailoauth.h"
#include "account.h"
#include "deposit.h"
#include "event.h"
#include "ingest.h"
#include "notify.h"
#include "registry.h"
#include "spool.h"
#include "tnef.h"
#include "trace.h"
#include "worker.h"

#include <curl/curl.h>
#include <grp.h>
#include <sys/socket.h>

#ifdef HAVE_SYS_PRCTL_H
# include <sys/prctl.h>
#endif

extern pid_t mpid;
extern xaset_t *server_list;

module mailoauth_module;

static const char *trace_channel = "mailoauth";

/* Set in the environment across a SIGHUP: mod_dso reloads this module, so
 * no static survives to tell the new instance that it is being restarted
 * (and so must start the worker itself) rather than started.
 */
#define MAILOAUTH_RESTART_ENV           "MOD_MAILOAUTH_RESTARTING"

#define MAILOAUTH_DEFAULT_STATE_DIR     "/var/lib/proftpd/mailoauth"
#define MAILOAUTH_STOP_TIMEOUT_SECS     5
#define MAILOAUTH_BACKOFF_MAX_SECS      60
#define MAILOAUTH_HEALTHY_SECS          60
#define MAILOAUTH_SCAN_INTERVAL_MS      5000

static pool *mailoauth_pool = NULL;
static int mailoauth_engine = FALSE;    /* on for at least one server */
static int mailoauth_logfd = -1;
static const char *mailoauth_state_dir = NULL;
static uid_t mailoauth_uid = 0;
static gid_t mailoauth_gid = 0;

/* Master-side worker bookkeeping. */
static pid_t mailoauth_worker_pid = 0;
static int mailoauth_worker_fd = -1;
static time_t mailoauth_worker_started = 0;
static time_t mailoauth_worker_restart_at = 0;
static unsigned int mailoauth_worker_backoff = 0;
static int mailoauth_watch_timerno = -1;

/* Session-side state. */
static int mailoauth_journal_fd = -1;

/* Where the directive being parsed stands, from core.parsed-line, so that
 * checks made after parsing can still name the file and line.
 */
static char mailoauth_parse_src[PR_TUNABLE_PATH_MAX + 32];
static char mailoauth_main_conf[PR_TUNABLE_PATH_MAX + 1];

const char *mailoauth_config_location(void) {
  return mailoauth_parse_src;
}

config_rec *mailoauth_account_find(const char *name) {
  config_rec *c;

  for (c = find_config(main_server->conf, CONF_PARAM, "MailOAuthAccount",
         FALSE);
       c != NULL;
       c = find_config_next(c, c->next, CONF_PARAM, "MailOAuthAccount",
         FALSE)) {
    if (strcmp(c->argv[0], name) == 0) {
      return c;
    }
  }

  return NULL;
}

static void mailoauth_log_sink(const char *fmt, va_list ap) {
  if (mailoauth_logfd >= 0) {
    (void) pr_log_vwritefile(mailoauth_logfd, MOD_MAILOAUTH_VERSION, fmt, ap);
  }
}

static void mailoauth_trace_sink(const char *channel, int level,
    const char *fmt, va_list ap) {
  (void) pr_trace_vmsg(channel, level, fmt, ap);
}

static void mailoauth_parsed_line_ev(const void *event_data, void *user_data) {
  const pr_parsed_line_t *pl = event_data;

  (void) user_data;
  if (pl != NULL &&
      pl->source_file != NULL) {
    /* The first line parsed belongs to the main configuration file, which
     * the sign-in command quoted in log lines must read too.
     */
    if (mailoauth_main_conf[0] == '\0') {
      sstrncpy(mailoauth_main_conf, pl->source_file,
        sizeof(mailoauth_main_conf));
    }

    pr_snprintf(mailoauth_parse_src, sizeof(mailoauth_parse_src),
      "line %u of '%s'", pl->source_lineno, pl->source_file);
  }
}

/* A fatal configuration problem found after parsing: stop, naming where the
 * directive is and what to write instead, as a parse error would.
 */
static void mailoauth_config_fatal(const char *where, const char *fmt, ...)
#ifdef __GNUC__
  __attribute__((format(printf, 2, 3)))
#endif
  ;

static void mailoauth_config_fatal(const char *where, const char *fmt, ...) {
  char msg[1024];
  va_list ap;

  va_start(ap, fmt);
  pr_vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);

  pr_log_pri(PR_LOG_WARNING, "fatal: %s%s%s", msg, where ? " on " : "",
    where ? where : "");
  if (mailoauth_logfd >= 0) {
    (void) pr_log_writefile(mailoauth_logfd, MOD_MAILOAUTH_VERSION,
      "fatal: %s%s%s", msg, where ? " on " : "", where ? where : "");
  }

  pr_session_end(PR_SESS_END_FL_ERROR);
}

/* Configuration handlers
 */

/* usage: MailOAuthEngine on|off */
MODRET set_mailoauthengine(cmd_rec *cmd) {
  int engine;
  config_rec *c;

  CHECK_ARGS(cmd, 1);
  CHECK_CONF(cmd, CONF_ROOT|CONF_VIRTUAL|CONF_GLOBAL);

  engine = get_boolean(cmd, 1);
  if (engine == -1) {
    CONF_ERROR(cmd, "expected Boolean parameter: write MailOAuthEngine on "
      "or MailOAuthEngine off");
  }

  c = add_config_param(cmd->argv[0], 1, NULL);
  c->argv[0] = palloc(c->pool, sizeof(int));
  *((int *) c->argv[0]) = engine;

  return PR_HANDLED(cmd);
}

/* usage: MailOAuthLog path|none */
MODRET set_mailoauthlog(cmd_rec *cmd) {
  const char *path;

  CHECK_ARGS(cmd, 1);
  CHECK_CONF(cmd, CONF_ROOT);

  path = cmd->argv[1];
  if (strcasecmp(path, "none") != 0 &&
      pr_fs_valid_path(path) < 0) {
    CONF_ERROR(cmd, pstrcat(cmd->tmp_pool, "'", path, "' is not an absolute "
      "path: write e.g. MailOAuthLog /var/log/proftpd/mailoauth.log", NULL));
  }

  add_config_param_str(cmd->argv[0], 1, path);
  return PR_HANDLED(cmd);
}

/* usage: MailOAuthStateDir path */
MODRET set_mailoauthstatedir(cmd_rec *cmd) {
  const char *path;
  size_t len;

  CHECK_ARGS(cmd, 1);
  CHECK_CONF(cmd, CONF_ROOT);

  path = cmd->argv[1];
  if (pr_fs_valid_path(path) < 0) {
    CONF_ERROR(cmd, pstrcat(cmd->tmp_pool, "'", path, "' is not an absolute "
      "path: write e.g. MailOAuthStateDir " MAILOAUTH_DEFAULT_STATE_DIR, NULL));
  }

  /* Leave room for the longest name the units build beneath it. */
  len = strlen(path);
  if (len > 1024) {
    CONF_ERROR(cmd, "path is too long (at most 1024 characters)");
  }

  while (len > 1 && path[len-1] == '/') {
    len--;
  }

  add_config_param_str(cmd->argv[0], 2, pstrndup(cmd->tmp_pool, path, len),
    mailoauth_parse_src);
  return PR_HANDLED(cmd);
}

/* The handler before may have left any effective uid (AuthUserFile and its
 * kind relinquish to User, which on a restart is no longer root), and the
 * documented place for a secret is a file only root can read.
 */
static int mailoauth_check_secret(const struct mailoauth_account *acct,
    char *errbuf, size_t errlen) {
  int res, xerrno;

  pr_signals_block();
  PRIVS_ROOT
  res = mailoauth_account_check_secret(acct, errbuf, errlen);
  xerrno = errno;
  PRIVS_RELINQUISH
  pr_signals_unblock();

  errno = xerrno;
  return res;
}

/* usage: MailOAuthAccount name key=value ... */
MODRET set_mailoauthaccount(cmd_rec *cmd) {
  struct mailoauth_account acct;
  config_rec *c;
  char err[512];
  int i;

  CHECK_CONF(cmd, CONF_ROOT);

  if (cmd->argc < 3) {
    CONF_ERROR(cmd, "write MailOAuthAccount NAME tenant=... client-id=... "
      "mailbox=... [client-secret=file:/path] (see doc/mod_mailoauth.html)");
  }

  for (c = find_config(cmd->server->conf, CONF_PARAM, cmd->argv[0], FALSE);
       c != NULL;
       c = find_config_next(c, c->next, CONF_PARAM, cmd->argv[0], FALSE)) {
    if (strcmp(c->argv[0], cmd->argv[1]) == 0) {
      CONF_ERROR(cmd, pstrcat(cmd->tmp_pool, "account '",
        (char *) cmd->argv[1], "' is already defined", NULL));
    }
  }

  /* Checked now so a mistake names this line; the worker parses again and
   * is the only process that keeps the secret.
   */
  if (mailoauth_account_parse(&acct, cmd->argv[1], cmd->argc - 2,
        (char *const *) &cmd->argv[2], err, sizeof(err)) < 0) {
    mailoauth_account_clear(&acct);
    CONF_ERROR(cmd, pstrcat(cmd->tmp_pool, "account '",
      (char *) cmd->argv[1], "': ", err, NULL));
  }

  if (mailoauth_check_secret(&acct, err, sizeof(err)) < 0) {
    mailoauth_account_clear(&acct);

    /* A secret that went missing must not take the running FTP service
     * down with it: the worker, which reads the secrets for use, leaves
     * this account out and says so in MailOAuthLog.
     */
    if (getenv(MAILOAUTH_RESTART_ENV) == NULL) {
      CONF_ERROR(cmd, pstrcat(cmd->tmp_pool, "account '",
        (char *) cmd->argv[1], "': ", err, NULL));
    }

    pr_log_pri(PR_LOG_WARNING, MOD_MAILOAUTH_VERSION ": MailOAuthAccount: "
      "account '%s' cannot be used until its secret is fixed: %s on %s",
      (char *) cmd->argv[1], err, mailoauth_parse_src);

  } else {
    mailoauth_account_clear(&acct);
  }

  c = add_config_param(cmd->argv[0], 0);
  c->argc = cmd->argc - 1;
  c->argv = pcalloc(c->pool, (c->argc + 1) * sizeof(void *));
  for (i = 1; i < (int) cmd->argc; i++) {
    c->argv[i-1] = pstrdup(c->pool, cmd->argv[i]);
  }

  return PR_HANDLED(cmd);
}

/* State directory
 */

/* Creates dir (if missing) as uid:gid 0700, or checks that an existing one is
 * a real directory, ours, and not open to others: the journals in it decide
 * what mail the worker sends.
 */
static int mailoauth_prepare_dir(const char *dir, const char *where) {
  struct stat st;
  int res, xerrno;

  PRIVS_ROOT
  res = lstat(dir, &st);
  xerrno = errno;
  if (res < 0 &&
      xerrno == ENOENT) {
    res = mkdir(dir, 0700);
    xerrno = errno;
    if (res == 0) {
      res = chown(dir, mailoauth_uid, mailoauth_gid);
      xerrno = errno;
      if (res == 0) {
        res = lstat(dir, &st);
        xerrno = errno;
      }
    }
  }
  PRIVS_RELINQUISH

  if (res < 0) {
    mailoauth_config_fatal(where, "MailOAuthStateDir: cannot create '%s': "
      "%s (create the parent directory, or set MailOAuthStateDir to a "
      "directory root can create)", dir, strerror(xerrno));
    return -1;
  }

  if (!S_ISDIR(st.st_mode)) {
    mailoauth_config_fatal(where, "MailOAuthStateDir: '%s' is not a "
      "directory (symbolic links are refused)", dir);
    return -1;
  }

  if (st.st_uid != mailoauth_uid ||
      (st.st_mode & 077) != 0) {
    mailoauth_config_fatal(where, "MailOAuthStateDir: '%s' must belong to "
      "the server's User (uid %lu) and be mode 0700; it is uid %lu, mode %04o "
      "(fix with: chown %lu:%lu '%s' && chmod 0700 '%s')", dir,
      (unsigned long) mailoauth_uid, (unsigned long) st.st_uid,
      (unsigned int) (st.st_mode & 07777), (unsigned long) mailoauth_uid,
      (unsigned long) mailoauth_gid, dir, dir);
    return -1;
  }

  return 0;
}

static const char *mailoauth_subdir(pool *p, const char *name) {
  return pdircat(p, mailoauth_state_dir, name, NULL);
}

/* Worker lifecycle (master side)
 */

static void mailoauth_close_listeners(void) {
  int fd, max_fd;

  /* The worker must not keep the FTP ports bound once the master is gone:
   * a restarted proftpd could not listen again.
   */
  max_fd = (int) sysconf(_SC_OPEN_MAX);
  if (max_fd < 0 || max_fd > 65536) {
    max_fd = 65536;
  }

  for (fd = 3; fd < max_fd; fd++) {
    int listening = 0;
    socklen_t len = sizeof(listening);

    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) == 0 &&
        listening) {
      (void) close(fd);
    }
  }
}

static int mailoauth_drop_privs(void) {
  int res = 0;

  PRIVS_ROOT
  if (getuid() == PR_ROOT_UID) {
    if (setgroups(1, &mailoauth_gid) < 0 ||
        setresgid(mailoauth_gid, mailoauth_gid, mailoauth_gid) < 0 ||
        setresuid(mailoauth_uid, mailoauth_uid, mailoauth_uid) < 0) {
      res = -1;
    }
  }

  /* From here on ProFTPD's PRIVS_* macros must not try to switch back. */
  session.uid = session.ouid = getuid();
  session.gid = getgid();
  session.disable_id_switching = TRUE;
  return res;
}

static struct mailoauth_registry *mailoauth_worker_registry(pool *p) {
  struct mailoauth_registry *reg;
  const char *signin_fmt;
  config_rec *c;
  char err[512];

  /* The command an operator runs to sign an account in again. */
  signin_fmt = "ftpmailoauth signin %s";
  if (mailoauth_main_conf[0] != '\0' &&
      strcmp(mailoauth_main_conf, PR_CONFIG_FILE_PATH) != 0 &&
      strchr(mailoauth_main_conf, '%') == NULL) {
    signin_fmt = pstrcat(p, "ftpmailoauth -c ", mailoauth_main_conf,
      " signin %s", NULL);
  }

  reg = mailoauth_registry_create(mailoauth_subdir(p, "tokens"),
    mailoauth_uid, signin_fmt);
  if (reg == NULL) {
    return NULL;
  }

  for (c = find_config(main_server->conf, CONF_PARAM, "MailOAuthAccount",
         FALSE);
       c != NULL;
       c = find_config_next(c, c->next, CONF_PARAM, "MailOAuthAccount",
         FALSE)) {
    if (mailoauth_registry_add(reg, c->argv[0], c->argc - 1,
        (char *const *) &c->argv[1], err, sizeof(err)) < 0) {
      (void) pr_log_writefile(mailoauth_logfd, MOD_MAILOAUTH_VERSION,
        "account %s: %s", (const char *) c->argv[0], err);
    }
  }

  return reg;
}

struct mailoauth_worker_state {
  struct mailoauth_registry *reg;
  struct mailoauth_notify *notify;
  struct mailoauth_ingest *ingest;
};

/* Forks the deposit helper: the one process that keeps root, to write
 * attachments into users' directories as those users.  It serves only the
 * directories and owners of the MailOAuthIngest tasks, so a worker
 * subverted by hostile mail gains nothing beyond them.  Returns the
 * worker's end of the socket, or -1.
 */
static int mailoauth_deposit_helper_start(pool *p, array_header *tasks,
    int master_fd) {
  struct mailoauth_deposit_rule *rules;
  int sv[2];
  pid_t pid;
  unsigned int i;
  size_t nrules = 0;

  for (i = 0; i < tasks->nelts; i++) {
    nrules += 1 + ((const struct mailoauth_ingest_config **)
      tasks->elts)[i]->nroutes;
  }

  rules = pcalloc(p, nrules * sizeof(*rules));
  nrules = 0;
  for (i = 0; i < tasks->nelts; i++) {
    const struct mailoauth_ingest_config *cfg =
      ((const struct mailoauth_ingest_config **) tasks->elts)[i];
    unsigned int j;

    rules[nrules].dir = cfg->dir;
    rules[nrules].uid = cfg->uid;
    rules[nrules].gid = cfg->gid;
    nrules++;
    for (j = 0; j < cfg->nroutes; j++) {
      rules[nrules].dir = cfg->routes[j]->dir;
      rules[nrules].uid = cfg->routes[j]->uid;
      rules[nrules].gid = cfg->routes[j]->gid;
      nrules++;
    }
  }

  if (mailoauth_deposit_socketpair(sv) < 0) {
    (void) pr_log_writefile(mailoauth_logfd, MOD_MAILOAUTH_VERSION,
      "worker: cannot create the deposit helper's socket: %s; mail "
      "ingestion is off", strerror(errno));
    return -1;
  }

  /* With -n (and after daemonizing) descriptors 0-2 are free: the socket
   * must not sit there, where the helper's clean-up below would keep the
   * worker's end open in the helper, which then never sees the worker go.
   */
  if (pr_fs_get_usable_fd2(&sv[0]) < 0 ||
      pr_fs_get_usable_fd2(&sv[1]) < 0) {
    (void) pr_log_writefile(mailoauth_logfd, MOD_MAILOAUTH_VERSION,
      "worker: cannot set up the deposit helper's socket: %s; mail "
      "ingestion is off", strerror(errno));
    (void) close(sv[0]);
    (void) close(sv[1]);
    return -1;
  }
  (void) fcntl(sv[0], F_SETFD, FD_CLOEXEC);
  (void) fcntl(sv[1], F_SETFD, FD_CLOEXEC);

  pid = fork();
  if (pid < 0) {
    int xerrno = errno;

    (void) close(sv[0]);
    (void) close(sv[1]);
    (void) pr_log_writefile(mailoauth_logfd, MOD_MAILOAUTH_VERSION,
      "worker: cannot fork the deposit helper: %s; mail ingestion is off",
      strerror(xerrno));
    return -1;
  }

  if (pid == 0) {
    int fd, max_fd, res;

    /* Nothing of the daemon's (listeners, logs, the master's socket) is
     * the helper's business: it keeps only its socket.
     */
    (void) master_fd;
    max_fd = (int) sysconf(_SC_OPEN_MAX);
    if (max_fd < 0 || max_fd > 65536) {
      max_fd = 65536;
    }
    for (fd = 0; fd < max_fd; fd++) {
      if (fd != sv[1]) {
        (void) close(fd);
      }
    }
    fd = open("/dev/null", O_RDWR);
    while (fd >= 0 && fd < 2) {
      fd = dup(fd);
    }

#if defined(HAVE_SYS_PRCTL_H) && defined(PR_SET_PDEATHSIG)
    /* A helper outliving its worker would be a root process serving no
     * one; EOF on the socket ends it too, this covers a stopped worker.
     */
    (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
#endif
    if (getppid() == 1) {
      _exit(0);
    }

    pr_proctitle_set("mailoauth deposit helper");
    PRIVS_ROOT
    res = mailoauth_deposit_server_run(sv[1], rules, nrules);
    _exit(res == 0 ? 0 : 1);
  }

  (void) close(sv[1]);
  pr_trace_msg("mailoauth.ingest", 3, "forked deposit helper pid %lu",
    (unsigned long) pid);
  return sv[0];
}

/* Runs in the TNEF helper just after the fork, with the worker's
 * descriptors still open: it becomes the worker's User and Group the way
 * the worker does, so that neither it nor the decoders it forks are root.
 */
static int mailoauth_tnef_helper_init(void *arg) {
  (void) arg;

  pr_proctitle_set("mailoauth TNEF helper");
  return mailoauth_drop_privs();
}

/* Forks the TNEF helper, which forks the winmail.dat decoders: each is a
 * copy of it, so it must be forked before the worker holds any secret or
 * token (a decoder subverted by hostile mail could otherwise copy them
 * into a file it "extracts").  Only tasks with tnef=on need it.
 */
static void mailoauth_tnef_helper_begin(array_header *tasks) {
  unsigned int i;
  int wanted = FALSE;

  for (i = 0; i < tasks->nelts; i++) {
    if (((const struct mailoauth_ingest_config **) tasks->elts)[i]->tnef) {
      wanted = TRUE;
    }
  }
  if (wanted == FALSE) {
    return;
  }

  if (mailoauth_tnef_helper_start(mailoauth_tnef_helper_init, NULL) < 0) {
    (void) pr_log_writefile(mailoauth_logfd, MOD_MAILOAUTH_VERSION,
      "worker: cannot start the TNEF helper: %s; unpacking is off: "
      "winmail.dat files are deposited as they are", strerror(errno));
    return;
  }

  pr_trace_msg("mailoauth.ingest", 3, "forked TNEF helper pid %lu",
    (unsigned long) mailoauth_tnef_helper_pid());
}

static time_t mailoauth_worker_tick(time_t now, void *arg) {
  struct mailoauth_worker_state *st = arg;
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

static int mailoauth_worker_process(void *arg) {
  struct mailoauth_worker_state *st = arg;

  return mailoauth_notify_process(st->notify, time(NULL));
}

static void mailoauth_worker_main(int fd) {
  struct mailoauth_worker_config cfg;
  struct mailoauth_worker_state state;
  struct mailoauth_registry *reg;
  array_header *tasks;
  pool *p;
  int res, deposit_fd = -1;

  session.pid = getpid();

  /* Whatever the master would do on these events is not ours to do. */
  pr_event_unregister(&mailoauth_module, NULL, NULL);
  pr_event_unregister(NULL, "core.exit", NULL);
  pr_event_unregister(NULL, "core.shutdown", NULL);
  pr_event_unregister(NULL, "core.restart", NULL);
  pr_timer_remove(-1, ANY_MODULE);

  (void) signal(SIGALRM, SIG_IGN);
  (void) signal(SIGHUP, SIG_IGN);
  (void) signal(SIGINT, SIG_IGN);
  (void) signal(SIGUSR1, SIG_IGN);
  (void) signal(SIGUSR2, SIG_IGN);
  (void) signal(SIGPIPE, SIG_IGN);
  (void) signal(SIGCHLD, SIG_DFL);
  /* A crash must look like one to the master, not be swallowed by the
   * daemon's own handlers.
   */
  (void) signal(SIGSEGV, SIG_DFL);
  (void) signal(SIGBUS, SIG_DFL);
  (void) signal(SIGABRT, SIG_DFL);
  (void) signal(SIGFPE, SIG_DFL);
  (void) signal(SIGILL, SIG_DFL);

  mailoauth_close_listeners();

  p = make_sub_pool(mailoauth_pool);
  curl_global_init(CURL_GLOBAL_DEFAULT);

  reg = mailoauth_worker_registry(p);

  /* The deposit helper must be forked while root is still ours, and
   * before the client secrets are in memory: it never needs them.  So far
   * the registry holds only what the configuration says.
   */
  tasks = mailoauth_ingest_configs(p);
  if (tasks->nelts > 0 &&
      reg != NULL) {
    deposit_fd = mailoauth_deposit_helper_start(p, tasks, fd);
  }

  /* The TNEF helper likewise, while nothing secret is in memory: every
   * decoder is a copy of it.  Only ingestion uses it.
   */
  if (deposit_fd >= 0) {
    mailoauth_tnef_helper_begin(tasks);
  }

  /* Secrets are read while root can still read root-only files. */
  if (reg != NULL) {
    PRIVS_ROOT
    (void) mailoauth_registry_load_secrets(reg);
    PRIVS_RELINQUISH
  }

  if (mailoauth_drop_privs() < 0) {
    (void) pr_log_writefile(mailoauth_logfd, MOD_MAILOAUTH_VERSION,
      "worker: cannot switch to uid %lu, gid %lu: %s; exiting",
      (unsigned long) mailoauth_uid, (unsigned long) mailoauth_gid,
      strerror(errno));
    _exit(1);
  }

#if defined(HAVE_SYS_PRCTL_H) && defined(PR_SET_PDEATHSIG)
  /* Set after the identity change, which clears it. */
  (void) prctl(PR_SET_PDEATHSIG, SIGTERM);
#endif
  if (getppid() != mpid) {
    _exit(0);
  }

  if (chdir(mailoauth_state_dir) < 0 &&
      chdir("/") < 0) {
    /* Only the working directory is at stake; every path used is absolute. */
  }

  pr_proctitle_set("mailoauth worker");

  (void) pr_log_writefile(mailoauth_logfd, MOD_MAILOAUTH_VERSION,
    "worker started (pid %lu, uid %lu, gid %lu)", (unsigned long) getpid(),
    (unsigned long) getuid(), (unsigned long) getgid());

  if (reg != NULL) {
    (void) mailoauth_registry_start(reg, time(NULL));
  }

  memset(&cfg, 0, sizeof(cfg));
  cfg.spool_dir = mailoauth_subdir(p, "spool");
  cfg.queue_dir = mailoauth_subdir(p, "queue");
  cfg.master_fd = fd;
  cfg.scan_interval_ms = MAILOAUTH_SCAN_INTERVAL_MS;
  cfg.deliver = mailoauth_worker_log_event;

  state.reg = reg;
  state.notify = reg ? mailoauth_notify_create(reg, cfg.queue_dir,
    mailoauth_subdir(p, "deadletter"), MAILOAUTH_NOTIFY_DEFAULT_RATE) : NULL;
  if (state.notify != NULL) {
    cfg.process = mailoauth_worker_process;
    cfg.process_arg = &state;
  }
  state.ingest = NULL;
  if (deposit_fd >= 0) {
    unsigned int i;

    state.ingest = mailoauth_ingest_create(mailoauth_state_dir, reg,
      deposit_fd);
    for (i = 0; state.ingest != NULL && i < tasks->nelts; i++) {
      const struct mailoauth_ingest_config *icfg =
        ((const struct mailoauth_ingest_config **) tasks->elts)[i];

      if (mailoauth_ingest_add(state.ingest, icfg) < 0) {
        (void) pr_log_writefile(mailoauth_logfd, MOD_MAILOAUTH_VERSION,
          "ingest %s: cannot start: %s", icfg->name, strerror(errno));
      }
    }
  }
  cfg.tick = mailoauth_worker_tick;
  cfg.tick_arg = &state;

  res = mailoauth_worker_run(&cfg);
  mailoauth_ingest_destroy(state.ingest);
  (void) mailoauth_tnef_helper_stop();
  if (deposit_fd >= 0) {
    (void) close(deposit_fd);
  }
  mailoauth_notify_destroy(state.notify);
  mailoauth_registry_destroy(reg);

  (void) pr_log_writefile(mailoauth_logfd, MOD_MAILOAUTH_VERSION,
    "worker (pid %lu) exiting: %s", (unsigned long) getpid(),
    res == MAILOAUTH_WORKER_ORPHANED ? "the master process is gone" :
    "stop requested");
  _exit(0);
}

static int mailoauth_worker_start(void) {
  int fds[2];
  pid_t pid;

  if (socketpair(AF_UNIX, SOCK_STREAM|SOCK_CLOEXEC, 0, fds) < 0) {
    (void) pr_log_writefile(mailoauth_logfd, MOD_MAILOAUTH_VERSION,
      "cannot create the worker's control socket: %s", strerror(errno));
    return -1;
  }

  /* With -n, stdin and stdout are closed: a descriptor landing on 0 or 1
   * would be overwritten by each session's client connection.
   */
  if (pr_fs_get_usable_fd2(&fds[0]) < 0 ||
      pr_fs_get_usable_fd2(&fds[1]) < 0) {
    (void) pr_log_writefile(mailoauth_logfd, MOD_MAILOAUTH_VERSION,
      "cannot set up the worker's control socket: %s", strerror(errno));
    (void) close(fds[0]);
    (void) close(fds[1]);
    return -1;
  }
  (void) fcntl(fds[0], F_SETFD, FD_CLOEXEC);
  (void) fcntl(fds[1], F_SETFD, FD_CLOEXEC);

  pid = fork();
  if (pid < 0) {
    int xerrno = errno;

    (void) close(fds[0]);
    (void) close(fds[1]);
    (void) pr_log_writefile(mailoauth_logfd, MOD_MAILOAUTH_VERSION,
      "cannot fork the worker: %s", strerror(xerrno));
    return -1;
  }

  if (pid == 0) {
    (void) close(fds[0]);
    mailoauth_worker_main(fds[1]);
    _exit(0);
  }

  (void) close(fds[1]);
  (void) fcntl(fds[0], F_SETFL, O_NONBLOCK);
  mailoauth_worker_fd = fds[0];
  mailoauth_worker_pid = pid;
  mailoauth_worker_started = time(NULL);
  pr_trace_msg(trace_channel, 3, "forked worker pid %lu",
    (unsigned long) pid);
  return 0;
}

/* Waits for the worker to exit, SIGKILLing it after the timeout.  The
 * daemon's SIGCHLD handler may reap it first (ECHILD), which is fine.
 */
static void mailoauth_worker_stop(const char *why) {
  time_t deadline;
  pid_t pid = mailoauth_worker_pid;

  if (pid <= 0) {
    return;
  }

  mailoauth_worker_pid = 0;
  if (mailoauth_worker_fd >= 0) {
    (void) close(mailoauth_worker_fd);
    mailoauth_worker_fd = -1;
  }

  (void) pr_log_writefile(mailoauth_logfd, MOD_MAILOAUTH_VERSION,
    "stopping worker (pid %lu): %s", (unsigned long) pid, why);

  if (kill(pid, SIGTERM) < 0 &&
      errno == ESRCH) {
    return;
  }

  deadline = time(NULL) + MAILOAUTH_STOP_TIMEOUT_SECS;
  for (;;) {
    pid_t res = waitpid(pid, NULL, WNOHANG);

    if (res == pid ||
        (res < 0 && errno == ECHILD)) {
      return;
    }

    if (res < 0 &&
        errno != EINTR) {
      break;
    }

    if (kill(pid, 0) < 0 &&
        errno == ESRCH) {
      return;
    }

    if (time(NULL) >= deadline) {
      break;
    }

    pr_timer_usleep(50 * 1000);
  }

  (void) pr_log_writefile(mailoauth_logfd, MOD_MAILOAUTH_VERSION,
    "worker (pid %lu) did not stop within %d seconds; killing it",
    (unsigned long) pid, MAILOAUTH_STOP_TIMEOUT_SECS);
  (void) kill(pid, SIGKILL);
  (void) waitpid(pid, NULL, 0);
}

/* The master notices a dead worker by EOF on its end of the control socket:
 * unlike the PID, which the daemon's SIGCHLD handler may reap and the kernel
 * may reuse, the socket cannot lie.
 */
static int mailoauth_worker_alive(void) {
  char c;
  ssize_t n;

  if (mailoauth_worker_fd < 0) {
    return FALSE;
  }

  n = recv(mailoauth_worker_fd, &c, 1, MSG_DONTWAIT);
  if (n == 0 ||
      (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
    return FALSE;
  }

  return TRUE;
}

static int mailoauth_watch_cb(CALLBACK_FRAME) {
  time_t now;

  (void) p1;
  (void) p2;
  (void) p3;
  (void) data;

  /* A session process may inherit this timer before sess_init removes it. */
  if (getpid() != mpid) {
    return 0;
  }

  now = time(NULL);

  if (mailoauth_worker_pid > 0 &&
      !mailoauth_worker_alive()) {
    pid_t pid = mailoauth_worker_pid;

    (void) waitpid(pid, NULL, WNOHANG);
    (void) close(mailoauth_worker_fd);
    mailoauth_worker_fd = -1;
    mailoauth_worker_pid = 0;

    /* A worker that ran a good while earns a fresh start; one that keeps
     * dying waits longer each time, so a crash loop costs little.
     */
    if (now - mailoauth_worker_started >= MAILOAUTH_HEALTHY_SECS) {
      mailoauth_worker_backoff = 0;
    }
    mailoauth_worker_backoff = mailoauth_worker_backoff == 0 ? 1 :
      mailoauth_worker_backoff * 2;
    if (mailoauth_worker_backoff > MAILOAUTH_BACKOFF_MAX_SECS) {
      mailoauth_worker_backoff = MAILOAUTH_BACKOFF_MAX_SECS;
    }

    mailoauth_worker_restart_at = now + mailoauth_worker_backoff;
    (void) pr_log_writefile(mailoauth_logfd, MOD_MAILOAUTH_VERSION,
      "worker (pid %lu) exited unexpectedly after %lu seconds; restarting it "
      "in %u seconds", (unsigned long) pid,
      (unsigned long) (now - mailoauth_worker_started),
      mailoauth_worker_backoff);
  }

  if (mailoauth_worker_pid == 0 &&
      mailoauth_worker_restart_at > 0 &&
      now >= mailoauth_worker_restart_at) {
    mailoauth_worker_restart_at = 0;
    (void) mailoauth_worker_start();
  }

  return 1;
}

static void mailoauth_supervise(void) {
  if (mailoauth_worker_start() < 0) {
    mailoauth_worker_restart_at = time(NULL) + 1;
  }

  mailoauth_watch_timerno = pr_timer_add(1, -1, &mailoauth_module,
    mailoauth_watch_cb, "mod_mailoauth worker supervision");
}

static void mailoauth_unsupervise(const char *why) {
  if (mailoauth_watch_timerno > 0) {
    (void) pr_timer_remove(mailoauth_watch_timerno, &mailoauth_module);
    mailoauth_watch_timerno = -1;
  }

  mailoauth_worker_restart_at = 0;
  mailoauth_worker_stop(why);
}

/* Event listeners
 */

static int mailoauth_openlog(void) {
  config_rec *c;
  const char *path;
  int res, xerrno;

  c = find_config(main_server->conf, CONF_PARAM, "MailOAuthLog", FALSE);
  if (c == NULL) {
    return 0;
  }

  path = c->argv[0];
  if (strcasecmp(path, "none") == 0) {
    return 0;
  }

  pr_signals_block();
  PRIVS_ROOT
  res = pr_log_openfile(path, &mailoauth_logfd, 0600);
  xerrno = errno;
  PRIVS_RELINQUISH
  pr_signals_unblock();

  if (res < 0) {
    const char *why = res == PR_LOG_WRITABLE_DIR ?
      "its directory is world-writable" : res == PR_LOG_SYMLINK ?
      "it is a symbolic link" : strerror(xerrno);

    mailoauth_config_fatal(NULL, "MailOAuthLog: cannot open '%s': %s "
      "(write MailOAuthLog with a path in a directory only root can write, "
      "or MailOAuthLog none)", path, why);
    return -1;
  }

  return 0;
}

static void mailoauth_postparse_ev(const void *event_data, void *user_data) {
  server_rec *s;
  config_rec *c;
  const char *where = NULL;
  uid_t *uid;
  gid_t *gid;
  int restarting;

  (void) event_data;
  (void) user_data;

  restarting = (getenv(MAILOAUTH_RESTART_ENV) != NULL);
  (void) unsetenv(MAILOAUTH_RESTART_ENV);

  mailoauth_engine = FALSE;
  for (s = (server_rec *) server_list->xas_list; s; s = s->next) {
    int *engine = get_param_ptr(s->conf, "MailOAuthEngine", FALSE);

    if (engine != NULL &&
        *engine == TRUE) {
      mailoauth_engine = TRUE;
      break;
    }
  }

  if (mailoauth_engine == FALSE) {
    return;
  }

  uid = get_param_ptr(main_server->conf, "UserID", FALSE);
  gid = get_param_ptr(main_server->conf, "GroupID", FALSE);
  mailoauth_uid = uid ? *uid : PR_ROOT_UID;
  mailoauth_gid = gid ? *gid : PR_ROOT_GID;

  if (mailoauth_openlog() < 0) {
    return;
  }

  mailoauth_state_dir = MAILOAUTH_DEFAULT_STATE_DIR;
  c = find_config(main_server->conf, CONF_PARAM, "MailOAuthStateDir", FALSE);
  if (c != NULL) {
    mailoauth_state_dir = pstrdup(mailoauth_pool, c->argv[0]);
    where = pstrdup(mailoauth_pool, c->argv[1]);
  }

  if (mailoauth_prepare_dir(mailoauth_state_dir, where) < 0 ||
      mailoauth_prepare_dir(mailoauth_subdir(mailoauth_pool, "spool"),
        where) < 0 ||
      mailoauth_prepare_dir(mailoauth_subdir(mailoauth_pool, "queue"),
        where) < 0 ||
      mailoauth_prepare_dir(mailoauth_subdir(mailoauth_pool, "tokens"),
        where) < 0 ||
      mailoauth_prepare_dir(mailoauth_subdir(mailoauth_pool, "deadletter"),
        where) < 0 ||
      mailoauth_prepare_dir(mailoauth_subdir(mailoauth_pool, "tasks"),
        where) < 0 ||
      mailoauth_prepare_dir(mailoauth_subdir(mailoauth_pool, "tmp"),
        where) < 0) {
    return;
  }

  for (s = (server_rec *) server_list->xas_list; s; s = s->next) {
    const char *bad = NULL, *rule_where = NULL;

    if (mailoauth_notify_check_accounts(s, &bad, &rule_where) < 0) {
      mailoauth_config_fatal(rule_where, "MailOAuthNotify: no "
        "MailOAuthAccount named '%s' (declare it in the server config, or "
        "fix the name)", bad);
      return;
    }
  }

  {
    const char *bad = NULL, *task_where = NULL;

    if (mailoauth_ingest_check_accounts(&bad, &task_where) < 0) {
      mailoauth_config_fatal(task_where, "MailOAuthIngest: no "
        "MailOAuthAccount named '%s' (declare it in the server config, or "
        "fix account=)", bad);
      return;
    }
  }

  /* A restart re-parses the configuration inside the running daemon, where
   * core.startup does not fire again.
   */
  if (restarting &&
      ServerType == SERVER_STANDALONE) {
    mailoauth_supervise();
  }
}

static void mailoauth_startup_ev(const void *event_data, void *user_data) {
  (void) event_data;
  (void) user_data;

  if (mailoauth_engine == FALSE) {
    return;
  }

  if (ServerType == SERVER_INETD) {
    (void) pr_log_writefile(mailoauth_logfd, MOD_MAILOAUTH_VERSION,
      "ServerType inetd has no master process to run the worker: upload "
      "events stay in the spool until a standalone server runs");
    return;
  }

  mailoauth_supervise();
}

static void mailoauth_restart_ev(const void *event_data, void *user_data) {
  (void) event_data;
  (void) user_data;

  if (mailoauth_engine == FALSE) {
    return;
  }

  mailoauth_unsupervise("the server is restarting");
  (void) setenv(MAILOAUTH_RESTART_ENV, "1", 1);

  if (mailoauth_logfd >= 0) {
    (void) close(mailoauth_logfd);
    mailoauth_logfd = -1;
  }
}

static void mailoauth_shutdown_ev(const void *event_data, void *user_data) {
  (void) event_data;
  (void) user_data;

  if (getpid() == mpid) {
    mailoauth_unsupervise("the server is shutting down");
  }
}

static void mailoauth_exit_ev(const void *event_data, void *user_data) {
  (void) event_data;
  (void) user_data;

  if (mailoauth_journal_fd >= 0) {
    /* Closing releases the lock: the worker then knows the journal is
     * complete.
     */
    (void) close(mailoauth_journal_fd);
    mailoauth_journal_fd = -1;

  } else if (getpid() == mpid) {
    mailoauth_unsupervise("the server is exiting");
  }
}

/* Command handlers
 */

static int mailoauth_append_record(const unsigned char *rec, size_t len) {
  return mailoauth_spool_journal_append(mailoauth_journal_fd, rec, len);
}

MODRET mailoauth_log_upload(cmd_rec *cmd) {
  unsigned char storage[16 * 1024];
  struct mailoauth_event_buf b;
  const char *path, *abs_path, *proto;
  const off_t *file_size;
  struct timeval tv;
  char num[64];
  int *engine;

  if (mailoauth_journal_fd < 0) {
    return PR_DECLINED(cmd);
  }

  engine = get_param_ptr(main_server->conf, "MailOAuthEngine", FALSE);
  if (engine == NULL ||
      *engine == FALSE) {
    return PR_DECLINED(cmd);
  }

  path = pr_table_get(cmd->notes, "mod_xfer.store-path", NULL);
  if (path == NULL) {
    return PR_DECLINED(cmd);
  }

  gettimeofday(&tv, NULL);
  abs_path = dir_abs_path(cmd->tmp_pool, path, TRUE);
  proto = pr_session_get_protocol(0);

  mailoauth_event_buf_init(&b, storage, sizeof(storage));
  (void) mailoauth_event_add_str(&b, MAILOAUTH_EVENT_F_PATH,
    abs_path ? abs_path : path);
  (void) mailoauth_event_add_str(&b, MAILOAUTH_EVENT_F_VPATH, path);
  (void) mailoauth_event_add_str(&b, MAILOAUTH_EVENT_F_USER, session.user);
  (void) mailoauth_event_add_str(&b, MAILOAUTH_EVENT_F_PROTOCOL, proto);
  (void) mailoauth_event_add_str(&b, MAILOAUTH_EVENT_F_COMMAND,
    (const char *) cmd->argv[0]);
  (void) mailoauth_event_add_str(&b, MAILOAUTH_EVENT_F_SERVER,
    main_server->ServerName);
  if (session.c != NULL) {
    (void) mailoauth_event_add_str(&b, MAILOAUTH_EVENT_F_REMOTE_ADDR,
      pr_netaddr_get_ipstr(session.c->remote_addr));
  }

  file_size = pr_table_get(cmd->notes, "mod_xfer.file-size", NULL);
  if (file_size != NULL) {
    pr_snprintf(num, sizeof(num), "%" PR_LU, (pr_off_t) *file_size);
    (void) mailoauth_event_add_str(&b, MAILOAUTH_EVENT_F_SIZE, num);
  }

  pr_snprintf(num, sizeof(num), "%" PR_LU, (pr_off_t) session.xfer.total_bytes);
  (void) mailoauth_event_add_str(&b, MAILOAUTH_EVENT_F_BYTES, num);

  pr_snprintf(num, sizeof(num), "%lld.%06ld", (long long) tv.tv_sec,
    (long) tv.tv_usec);
  if (mailoauth_event_add_str(&b, MAILOAUTH_EVENT_F_TIME, num) < 0 ||
      mailoauth_notify_records(cmd, abs_path ? abs_path : path, storage,
        b.len, mailoauth_append_record) < 0) {
    (void) pr_log_writefile(mailoauth_logfd, MOD_MAILOAUTH_VERSION,
      "cannot record the upload of '%s' by %s: %s", path, session.user,
      strerror(errno));
    return PR_DECLINED(cmd);
  }

  pr_trace_msg(trace_channel, 9, "recorded %s of '%s'",
    (const char *) cmd->argv[0], path);
  return PR_DECLINED(cmd);
}

/* Initialization routines
 */

static int mailoauth_init(void) {
  mailoauth_pool = make_sub_pool(permanent_pool);
  pr_pool_tag(mailoauth_pool, MOD_MAILOAUTH_VERSION);

  mailoauth_log_set_sink(mailoauth_log_sink);
  mailoauth_trace_set_sink(mailoauth_trace_sink);

  pr_event_register(&mailoauth_module, "core.parsed-line",
    mailoauth_parsed_line_ev, NULL);
  pr_event_register(&mailoauth_module, "core.postparse",
    mailoauth_postparse_ev, NULL);
  pr_event_register(&mailoauth_module, "core.restart",
    mailoauth_restart_ev, NULL);
  pr_event_register(&mailoauth_module, "core.shutdown",
    mailoauth_shutdown_ev, NULL);
  pr_event_register(&mailoauth_module, "core.startup",
    mailoauth_startup_ev, NULL);
  pr_event_register(&mailoauth_module, "core.exit",
    mailoauth_exit_ev, NULL);

  return 0;
}

static int mailoauth_sess_init(void) {
  int xerrno;

  /* Master-only machinery a session must not keep: the worker's control
   * socket (a session holding it would hide the master's death from the
   * worker) and the supervision timer.
   */
  if (mailoauth_watch_timerno > 0) {
    (void) pr_timer_remove(mailoauth_watch_timerno, &mailoauth_module);
    mailoauth_watch_timerno = -1;
  }
  if (mailoauth_worker_fd >= 0) {
    (void) close(mailoauth_worker_fd);
    mailoauth_worker_fd = -1;
  }
  mailoauth_worker_pid = 0;
  pr_event_unregister(&mailoauth_module, "core.restart", NULL);
  pr_event_unregister(&mailoauth_module, "core.shutdown", NULL);

  if (mailoauth_engine == FALSE ||
      mailoauth_state_dir == NULL) {
    return 0;
  }

  /* The journal is opened now because later the session may be chrooted
   * and unable to regain root (RootRevoke); the descriptor stays usable.
   */
  PRIVS_ROOT
  mailoauth_journal_fd = mailoauth_spool_journal_open(
    mailoauth_subdir(session.pool, "spool"), mailoauth_uid, mailoauth_gid);
  xerrno = errno;
  PRIVS_RELINQUISH

  if (mailoauth_journal_fd < 0) {
    (void) pr_log_writefile(mailoauth_logfd, MOD_MAILOAUTH_VERSION,
      "cannot open an upload journal in '%s/spool': %s; uploads in this "
      "session will not be notified", mailoauth_state_dir, strerror(xerrno));
    return 0;
  }

  /* Keep it out of children that exec other programs (mod_exec). */
  (void) fcntl(mailoauth_journal_fd, F_SETFD, FD_CLOEXEC);
  return 0;
}

/* Module API tables
 */

static conftable mailoauth_conftab[] = {
  { "MailOAuthAccount",         set_mailoauthaccount,   NULL },
  { "MailOAuthEngine",          set_mailoauthengine,    NULL },
  { "MailOAuthIngest",          set_mailoauthingest,    NULL },
  { "MailOAuthIngestRoute",     set_mailoauthingestroute, NULL },
  { "MailOAuthLog",             set_mailoauthlog,       NULL },
  { "MailOAuthNotify",          set_mailoauthnotify,    NULL },
  { "MailOAuthStateDir",        set_mailoauthstatedir,  NULL },
  { NULL, NULL, NULL }
};

static cmdtable mailoauth_cmdtab[] = {
  { LOG_CMD, C_STOR, G_NONE, mailoauth_log_upload, FALSE, FALSE, CL_WRITE,
    NULL },
  { LOG_CMD, C_STOU, G_NONE, mailoauth_log_upload, FALSE, FALSE, CL_WRITE,
    NULL },
  { LOG_CMD, C_APPE, G_NONE, mailoauth_log_upload, FALSE, FALSE, CL_WRITE,
    NULL },
  { 0, NULL, NULL, NULL, 0, 0, 0, NULL }
};

module mailoauth_module = {
  /* Always NULL */
  NULL, NULL,

  /* Module API version 2.0 */
  0x20,

  /* Module name */
  "mailoauth",

  /* Module configuration handler table */
  mailoauth_conftab,

  /* Module command handler table */
  mailoauth_cmdtab,

  /* Module authentication handler table */
  NULL,

  /* Module initialization function */
  mailoauth_init,

  /* Session initialization function */
  mailoauth_sess_init,

  /* Module version */
  MOD_MAILOAUTH_VERSION,

  /* Filled in by the module loader */
  NULL, 0
};
