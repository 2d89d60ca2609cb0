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
#include "mailoauth/account.h"
#include "mailoauth/event.h"
#include "mailoauth/spool.h"
#include "mailoauth/imsg.h"
#include "mailoauth/jsonwrap.h"
#include "mailoauth/redis.h"
#include "mailoauth/spawn.h"
#include "mailoauth/trace.h"
#include "mailoauth/wconf.h"

#include <grp.h>
#include <limits.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>

extern char **environ;

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

/* Where make install puts mailoauthd (the build passes the real one). */
#ifndef MAILOAUTH_PROGRAM_PATH
# define MAILOAUTH_PROGRAM_PATH         "/usr/lib/proftpd/mailoauthd"
#endif

static pool *mailoauth_pool = NULL;
static int mailoauth_engine = FALSE;    /* on for at least one server */
static int mailoauth_logfd = -1;
static const char *mailoauth_state_dir = NULL;
static uid_t mailoauth_uid = 0;
static gid_t mailoauth_gid = 0;

/* The program every role runs (MailOAuthProgram). */
static const char *mailoauth_program = MAILOAUTH_PROGRAM_PATH;
static const char *mailoauth_metrics_file = NULL;

/* TraceLog, seen while parsing: ProFTPD keeps the path to itself. */
static char mailoauth_trace_log[PR_TUNABLE_PATH_MAX + 1];

/* Master-side bookkeeping of the supervisor. */
static pid_t mailoauth_supervisor_pid = 0;
static int mailoauth_supervisor_fd = -1;

/* Session-side state. */
static struct mailoauth_journal mailoauth_journal = { -1, { 0 } };

/* Where the directive being parsed stands, from core.parsed-line, so that
 * checks made after parsing can still name the file and line.
 */
static char mailoauth_parse_src[PR_TUNABLE_PATH_MAX + 32];
static char mailoauth_main_conf[PR_TUNABLE_PATH_MAX + 1];

const char *mailoauth_config_location(void) {
  return mailoauth_parse_src;
}

const char *mailoauth_get_state_dir(void) {
  return mailoauth_engine ? mailoauth_state_dir : NULL;
}

uid_t mailoauth_get_uid(void) {
  return mailoauth_uid;
}

int mailoauth_supervisor_request(uint32_t type, const void *data,
    size_t len) {
  if (mailoauth_supervisor_fd < 0 ||
      mailoauth_supervisor_pid <= 0) {
    errno = ESRCH;
    return -1;
  }

  /* Non-blocking socket: a supervisor that does not read makes this fail
   * (EAGAIN), never the master wait.
   */
  return mailoauth_imsg_send(mailoauth_supervisor_fd, type, 0, data, len,
    NULL, 0);
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

  if (pl != NULL &&
      pl->cmd != NULL &&
      pl->cmd->argc == 2 &&
      strcasecmp(pl->cmd->argv[0], "TraceLog") == 0) {
    sstrncpy(mailoauth_trace_log, pl->cmd->argv[1],
      sizeof(mailoauth_trace_log));
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

/* usage: MailOAuthMetricsFile path|none */
MODRET set_mailoauthmetricsfile(cmd_rec *cmd) {
  const char *path;

  CHECK_ARGS(cmd, 1);
  CHECK_CONF(cmd, CONF_ROOT);

  path = cmd->argv[1];
  if (strcasecmp(path, "none") != 0 &&
      (pr_fs_valid_path(path) < 0 ||
       path[strlen(path) - 1] == '/')) {
    CONF_ERROR(cmd, pstrcat(cmd->tmp_pool, "'", path, "' is not an absolute "
      "file path: write e.g. MailOAuthMetricsFile "
      "/var/lib/prometheus/node-exporter/mailoauth.prom", NULL));
  }

  add_config_param_str(cmd->argv[0], 2, path, mailoauth_parse_src);
  return PR_HANDLED(cmd);
}

/* usage: MailOAuthProgram path */
MODRET set_mailoauthprogram(cmd_rec *cmd) {
  CHECK_ARGS(cmd, 1);
  CHECK_CONF(cmd, CONF_ROOT);

  if (pr_fs_valid_path(cmd->argv[1]) < 0) {
    CONF_ERROR(cmd, pstrcat(cmd->tmp_pool, "'", (char *) cmd->argv[1],
      "' is not an absolute path: write e.g. MailOAuthProgram "
      MAILOAUTH_PROGRAM_PATH, NULL));
  }

  add_config_param_str(cmd->argv[0], 2, cmd->argv[1], mailoauth_parse_src);
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
      "mailbox=... [client-secret=file:/path | client-cert=file:/path] "
      "(see doc/mod_mailoauth.html)");
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
      "account '%s' cannot be used until its secret or key is fixed: %s "
      "on %s",
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

/* usage: MailOAuthRedis host:port|/path/to/socket|sentinel=host:port,...
 *          [master=NAME] [prefix=NAME] [db=N] [password=file:/path]
 *          [timeout=MS] | off
 *
 * Not RedisServer: the worker that refreshes tokens is a program of its
 * own (started by exec, no ProFTPD API in it) and talks to Redis through
 * hiredis; the nodes naming the same Redis and prefix form one cluster.
 */
MODRET set_mailoauthredis(cmd_rec *cmd) {
  struct mailoauth_redis_conf conf;
  config_rec *c;
  char err[512];
  int i, res;

  CHECK_CONF(cmd, CONF_ROOT);

  if (cmd->argc < 2) {
    CONF_ERROR(cmd, "write MailOAuthRedis host:port [prefix=NAME] or "
      "MailOAuthRedis sentinel=host:port,... master=NAME [prefix=NAME] "
      "(see doc/mod_mailoauth.html)");
  }

  if (find_config(cmd->server->conf, CONF_PARAM, cmd->argv[0], FALSE) !=
      NULL) {
    CONF_ERROR(cmd, "MailOAuthRedis is already set: one Redis per server");
  }

  if (cmd->argc == 2 &&
      strcasecmp(cmd->argv[1], "off") == 0) {
    (void) add_config_param(cmd->argv[0], 0);
    return PR_HANDLED(cmd);
  }

  err[0] = '\0';
  if (mailoauth_redis_conf_parse(&conf, cmd->argc - 1,
        (char *const *) &cmd->argv[1], err, sizeof(err)) < 0) {
    CONF_ERROR(cmd, pstrdup(cmd->tmp_pool, err));
  }

  /* The password file must be readable now, as root, like a client
   * secret; the worker reads it again for use and keeps it.
   */
  if (conf.password_file != NULL) {
    pr_signals_block();
    PRIVS_ROOT
    res = mailoauth_redis_conf_load_password(&conf, err, sizeof(err));
    PRIVS_RELINQUISH
    pr_signals_unblock();

    if (res < 0) {
      mailoauth_redis_conf_clear(&conf);
      CONF_ERROR(cmd, pstrdup(cmd->tmp_pool, err));
    }
  }
  mailoauth_redis_conf_clear(&conf);

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
      int fd;

      /* The subdirectories are made inside a directory User owns, which a
       * User process could rename the new one out of and put a symbolic
       * link in its place: chown only what was opened without following
       * one.
       */
      fd = open(dir, O_RDONLY|O_DIRECTORY|O_NOFOLLOW|O_CLOEXEC);
      res = fd < 0 ? -1 : 0;
      xerrno = errno;
      if (res == 0) {
        res = fchown(fd, mailoauth_uid, mailoauth_gid);
        xerrno = errno;
        if (res == 0) {
          res = fstat(fd, &st);
          xerrno = errno;
        }
        (void) close(fd);
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

/* mailoauthd runs as root before it drops privileges: it must be a file
 * only root can change.
 */
static int mailoauth_check_program(void) {
  const char *where = NULL;
  config_rec *c;
  struct stat st;

  mailoauth_program = MAILOAUTH_PROGRAM_PATH;
  c = find_config(main_server->conf, CONF_PARAM, "MailOAuthProgram", FALSE);
  if (c != NULL) {
    mailoauth_program = pstrdup(mailoauth_pool, c->argv[0]);
    where = pstrdup(mailoauth_pool, c->argv[1]);
  }

  if (stat(mailoauth_program, &st) < 0) {
    mailoauth_config_fatal(where, "MailOAuthProgram: cannot use '%s': %s "
      "(install mod_mailoauth's programs with make install, or point "
      "MailOAuthProgram at the mailoauthd built with the module)",
      mailoauth_program, strerror(errno));
    return -1;
  }

  if (!S_ISREG(st.st_mode) ||
      st.st_uid != PR_ROOT_UID ||
      (st.st_mode & (S_IWGRP|S_IWOTH)) != 0 ||
      (st.st_mode & S_IXUSR) == 0) {
    mailoauth_config_fatal(where, "MailOAuthProgram: '%s' must be an "
      "executable file owned by root and writable by no one else (it starts "
      "as root); it is uid %lu, mode %04o (fix with: chown root '%s' && "
      "chmod 0755 '%s')", mailoauth_program, (unsigned long) st.st_uid,
      (unsigned int) (st.st_mode & 07777), mailoauth_program,
      mailoauth_program);
    return -1;
  }

  return 0;
}

/* The worker writes the metrics file as User, by temp file and rename in
 * its directory: that directory must be one User can write.
 */
static int mailoauth_check_metrics_file(void) {
  const char *where, *dir, *slash;
  config_rec *c;
  struct stat st;
  int res, xerrno;

  mailoauth_metrics_file = NULL;
  c = find_config(main_server->conf, CONF_PARAM, "MailOAuthMetricsFile",
    FALSE);
  if (c == NULL ||
      strcasecmp(c->argv[0], "none") == 0) {
    return 0;
  }
  where = pstrdup(mailoauth_pool, c->argv[1]);

  slash = strrchr(c->argv[0], '/');
  dir = slash == c->argv[0] ? "/" :
    pstrndup(mailoauth_pool, c->argv[0], slash - (char *) c->argv[0]);

  PRIVS_ROOT
  res = stat(dir, &st);
  xerrno = errno;
  PRIVS_RELINQUISH

  if (res < 0) {
    mailoauth_config_fatal(where, "MailOAuthMetricsFile: cannot use the "
      "directory '%s': %s (create it, writable by the server's User, uid "
      "%lu)", dir, strerror(xerrno), (unsigned long) mailoauth_uid);
    return -1;
  }

  if (!S_ISDIR(st.st_mode) ||
      !((st.st_uid == mailoauth_uid && (st.st_mode & S_IWUSR)) ||
        (st.st_gid == mailoauth_gid && (st.st_mode & S_IWGRP)) ||
        (st.st_mode & S_IWOTH))) {
    mailoauth_config_fatal(where, "MailOAuthMetricsFile: the worker writes "
      "'%s' as the server's User (uid %lu), by a temporary file and a rename "
      "in '%s', which User cannot write (owner uid %lu, group %lu, mode "
      "%04o); use a directory of User's (e.g. install -d -o %lu -g %lu -m "
      "0755 '%s') and point node_exporter's "
      "--collector.textfile.directory at it", (char *) c->argv[0],
      (unsigned long) mailoauth_uid, dir, (unsigned long) st.st_uid,
      (unsigned long) st.st_gid, (unsigned int) (st.st_mode & 07777),
      (unsigned long) mailoauth_uid, (unsigned long) mailoauth_gid, dir);
    return -1;
  }

  mailoauth_metrics_file = pstrdup(mailoauth_pool, c->argv[0]);
  return 0;
}

/* Worker lifecycle (master side)
 *
 * The master starts one supervisor (mailoauthd, by fork+exec) and stops it
 * on restart and shutdown; everything else (the worker, its helpers,
 * restarts after a crash) is the supervisor's.  No timer of ours runs in
 * the master: ProFTPD pauses its accept loop after every signal.
 */

/* Adds one channel's level if it is one of ours and on. */
static void mailoauth_trace_levels(json_t *obj) {
  pr_table_t *tab;
  const void *key;

  tab = pr_trace_get_table();
  if (tab == NULL ||
      pr_table_rewind(tab) < 0) {
    return;
  }

  while ((key = pr_table_knext(tab, NULL)) != NULL) {
    const char *channel = key;
    int level;

    if (strncmp(channel, "mailoauth", 9) != 0) {
      continue;
    }
    level = pr_trace_get_max_level(channel);
    if (level > 0) {
      (void) json_object_set_new(obj, channel, json_integer(level));
    }
  }
}

/* The task's settings as the workers read them (wconf.h). */
static json_t *mailoauth_task_json(config_rec *c) {
  const array_header *args = c->argv[2], *routes = c->argv[3];
  json_t *task, *list, *rlist;
  unsigned int i, j;

  task = json_object();
  list = json_array();
  for (i = 0; i < args->nelts; i++) {
    (void) json_array_append_new(list,
      json_string(((char **) args->elts)[i]));
  }
  (void) json_object_set_new(task, "args", list);

  rlist = json_array();
  for (i = 0; i < routes->nelts; i++) {
    const array_header *r = ((array_header **) routes->elts)[i];

    list = json_array();
    for (j = 0; j < r->nelts; j++) {
      (void) json_array_append_new(list, json_string(((char **) r->elts)[j]));
    }
    (void) json_array_append_new(rlist, list);
  }
  (void) json_object_set_new(task, "routes", rlist);
  return task;
}

/* What the supervisor and the worker need of the configuration: no secret,
 * only where each account's secret is to be read.
 */
static char *mailoauth_worker_conf(pool *p) {
  const char *signin_fmt;
  json_t *root, *list, *trace;
  config_rec *c;
  char *text, *copy;

  /* The command an operator runs to sign an account in again. */
  signin_fmt = "ftpmailoauth signin %s";
  if (mailoauth_main_conf[0] != '\0' &&
      strcmp(mailoauth_main_conf, PR_CONFIG_FILE_PATH) != 0 &&
      strchr(mailoauth_main_conf, '%') == NULL) {
    signin_fmt = pstrcat(p, "ftpmailoauth -c ", mailoauth_main_conf,
      " signin %s", NULL);
  }

  root = json_object();
  (void) json_object_set_new(root, "version", json_integer(1));
  (void) json_object_set_new(root, "state_dir",
    json_string(mailoauth_state_dir));
  (void) json_object_set_new(root, "uid", json_integer(mailoauth_uid));
  (void) json_object_set_new(root, "gid", json_integer(mailoauth_gid));
  (void) json_object_set_new(root, "signin", json_string(signin_fmt));
  (void) json_object_set_new(root, "program",
    json_string(mailoauth_program));
  if (mailoauth_metrics_file != NULL) {
    (void) json_object_set_new(root, "metrics_file",
      json_string(mailoauth_metrics_file));
  }

  trace = json_object();
  mailoauth_trace_levels(trace);
  (void) json_object_set_new(root, "trace", trace);

  list = json_array();
  for (c = find_config(main_server->conf, CONF_PARAM, "MailOAuthAccount",
         FALSE);
       c != NULL;
       c = find_config_next(c, c->next, CONF_PARAM, "MailOAuthAccount",
         FALSE)) {
    json_t *acct = json_array();
    unsigned int i;

    for (i = 0; i < c->argc; i++) {
      (void) json_array_append_new(acct, json_string(c->argv[i]));
    }
    (void) json_array_append_new(list, acct);
  }
  (void) json_object_set_new(root, "accounts", list);

  c = find_config(main_server->conf, CONF_PARAM, "MailOAuthRedis", FALSE);
  if (c != NULL &&
      c->argc > 0) {
    unsigned int i;

    list = json_array();
    for (i = 0; i < c->argc; i++) {
      (void) json_array_append_new(list, json_string(c->argv[i]));
    }
    (void) json_object_set_new(root, "redis", list);
  }

  list = json_array();
  for (c = find_config(main_server->conf, CONF_PARAM, "MailOAuthIngest",
         FALSE);
       c != NULL;
       c = find_config_next(c, c->next, CONF_PARAM, "MailOAuthIngest",
         FALSE)) {
    (void) json_array_append_new(list, mailoauth_task_json(c));
  }
  (void) json_object_set_new(root, "tasks", list);

  text = json_dumps(root, JSON_COMPACT);
  json_decref(root);
  if (text == NULL) {
    return NULL;
  }

  copy = pstrdup(p, text);
  free(text);
  return copy;
}

/* Opens TraceLog once more for the programs (ProFTPD keeps its own
 * descriptor to itself), the way ProFTPD opens it.  -1: no trace.
 */
static int mailoauth_open_tracelog(void) {
  int fd = -1, res;

  if (mailoauth_trace_log[0] == '\0') {
    return -1;
  }

  pr_signals_block();
  PRIVS_ROOT
  res = pr_log_openfile(mailoauth_trace_log, &fd, 0640);
  PRIVS_RELINQUISH
  pr_signals_unblock();

  return res < 0 ? -1 : fd;
}

static int mailoauth_supervisor_start(void) {
  char *argv[] = { "mailoauth supervisor", "supervisor", NULL };
  int sv[2], fds[3];
  char *conf;
  pool *tmp;
  pid_t pid;

  tmp = make_sub_pool(mailoauth_pool);
  conf = mailoauth_worker_conf(tmp);
  if (conf == NULL) {
    (void) pr_log_writefile(mailoauth_logfd, MOD_MAILOAUTH_VERSION,
      "cannot describe the configuration to the worker: out of memory");
    destroy_pool(tmp);
    return -1;
  }

  /* Both ends above 2: with -n, stdin and stdout are closed, and a
   * descriptor there would be overwritten by each session's client.
   */
  if (mailoauth_imsg_socketpair(sv) < 0) {
    (void) pr_log_writefile(mailoauth_logfd, MOD_MAILOAUTH_VERSION,
      "cannot create the worker's control socket: %s", strerror(errno));
    destroy_pool(tmp);
    return -1;
  }

  fds[0] = sv[1];
  fds[1] = mailoauth_logfd;
  fds[2] = mailoauth_open_tracelog();

  /* The environment goes along: a client secret may be env:NAME.  The
   * program starts as root (real, effective and saved): it hands root on
   * to the deposit helper and reads root-only secrets before dropping to
   * User for good.
   */
  PRIVS_ROOT
  pid = mailoauth_spawn(mailoauth_program, argv, environ, fds, 3);
  PRIVS_RELINQUISH
  if (fds[2] >= 0) {
    (void) close(fds[2]);
  }
  (void) close(sv[1]);
  if (pid < 0) {
    (void) pr_log_writefile(mailoauth_logfd, MOD_MAILOAUTH_VERSION,
      "cannot start %s: %s; upload notifications and mail ingestion are off "
      "until the next restart", mailoauth_program, strerror(errno));
    (void) close(sv[0]);
    destroy_pool(tmp);
    return -1;
  }

  if (mailoauth_wconf_send(sv[0], conf, strlen(conf)) < 0) {
    (void) pr_log_writefile(mailoauth_logfd, MOD_MAILOAUTH_VERSION,
      "cannot hand the configuration to the worker: %s", strerror(errno));
  }

  /* Later messages are ftpdctl's requests: the master never waits on them. */
  (void) fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK);
  destroy_pool(tmp);

  mailoauth_supervisor_fd = sv[0];
  mailoauth_supervisor_pid = pid;
  pr_trace_msg(trace_channel, 3, "started supervisor pid %lu",
    (unsigned long) pid);
  return 0;
}

/* Stops the supervisor (which stops the worker first) and waits for it:
 * EOF on its socket says it is gone.  The daemon's SIGCHLD handler may
 * reap it before we do (ECHILD), which is fine.  why (MAILOAUTH_STOP_*)
 * travels with the SIGTERM down to the worker, whose last line says it.
 */
static void mailoauth_supervisor_stop(int why) {
  pid_t pid = mailoauth_supervisor_pid;
  struct pollfd pfd;
  int gone = FALSE;

  if (pid <= 0) {
    return;
  }
  mailoauth_supervisor_pid = 0;

  pr_trace_msg(trace_channel, 3, "stopping supervisor pid %lu: %s",
    (unsigned long) pid, mailoauth_stop_reason(why));

  if (mailoauth_stop_signal(pid, why) == 0) {
    pfd.fd = mailoauth_supervisor_fd;
    pfd.events = POLLIN;
    for (;;) {
      char c;
      int n = poll(&pfd, 1, MAILOAUTH_STOP_TIMEOUT_SECS * 1000);

      if (n < 0 && errno == EINTR) {
        continue;
      }
      gone = n > 0 && read(mailoauth_supervisor_fd, &c, 1) <= 0;
      break;
    }

    if (!gone) {
      (void) pr_log_writefile(mailoauth_logfd, MOD_MAILOAUTH_VERSION,
        "worker supervisor (pid %lu) did not stop within %d seconds; "
        "killing it", (unsigned long) pid, MAILOAUTH_STOP_TIMEOUT_SECS);
      (void) kill(pid, SIGKILL);
    }
  }

  (void) close(mailoauth_supervisor_fd);
  mailoauth_supervisor_fd = -1;
  while (waitpid(pid, NULL, 0) < 0 &&
         errno == EINTR) {
  }
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

  if (mailoauth_check_program() < 0 ||
      mailoauth_check_metrics_file() < 0) {
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

    if (mailoauth_ingest_check_transports(&bad, &task_where) < 0) {
      mailoauth_config_fatal(task_where, "MailOAuthIngest: account '%s' "
        "has transport=graph, so its token is for Microsoft Graph, which "
        "IMAP does not accept: give the task a MailOAuthAccount of its own "
        "without transport=graph (same app, its own sign-in)", bad);
      return;
    }
  }

  /* A restart re-parses the configuration inside the running daemon, where
   * core.startup does not fire again.
   */
  if (restarting &&
      ServerType == SERVER_STANDALONE) {
    (void) mailoauth_supervisor_start();
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

  (void) mailoauth_supervisor_start();
}

static void mailoauth_restart_ev(const void *event_data, void *user_data) {
  (void) event_data;
  (void) user_data;

  /* The ACLs are set again as the configuration is read again. */
  mailoauth_ctrls_restart();

  if (mailoauth_engine == FALSE) {
    return;
  }

  mailoauth_supervisor_stop(MAILOAUTH_STOP_RESTART);
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
    mailoauth_supervisor_stop(MAILOAUTH_STOP_SHUTDOWN);
  }
}

static void mailoauth_exit_ev(const void *event_data, void *user_data) {
  (void) event_data;
  (void) user_data;

  if (mailoauth_journal.fd >= 0) {
    /* Closing releases the lock: the worker then knows the journal is
     * complete.
     */
    mailoauth_spool_journal_close(&mailoauth_journal);

  } else if (getpid() == mpid) {
    mailoauth_supervisor_stop(MAILOAUTH_STOP_EXIT);
  }
}

/* Command handlers
 */

static int mailoauth_append_record(const unsigned char *rec, size_t len) {
  return mailoauth_spool_journal_append(&mailoauth_journal, rec, len);
}

MODRET mailoauth_log_upload(cmd_rec *cmd) {
  unsigned char storage[16 * 1024];
  struct mailoauth_event_buf b;
  const char *path, *abs_path, *proto;
  const off_t *file_size;
  struct timeval tv;
  char num[64];
  int *engine;

  if (mailoauth_journal.fd < 0) {
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

  mailoauth_ctrls_init(mailoauth_pool);
  return 0;
}

/* Creates the session's journal with the identity of User, the owner of the
 * spool directory: a process running as User could replace the directory
 * with a symbolic link, and root must not create a file wherever it points.
 * The session may hold root or not at this point (mod_auth and mod_sftp
 * differ), so the identity in place is noted and put back exactly, with no
 * PRIVS_* macro that would change the caller's state.
 */
static int mailoauth_journal_open_as_user(const char *spool_dir) {
  uid_t euid = geteuid();
  gid_t egid = getegid(), groups[NGROUPS_MAX];
  int ngroups, switched = FALSE, res, xerrno;

  ngroups = getgroups(NGROUPS_MAX, groups);
  if (euid != mailoauth_uid ||
      egid != mailoauth_gid ||
      ngroups != 1 ||
      groups[0] != mailoauth_gid) {
    if (ngroups < 0 ||
        (euid != PR_ROOT_UID && seteuid(PR_ROOT_UID) < 0)) {
      errno = EPERM;
      return -1;
    }

    switched = TRUE;
    if (setgroups(1, &mailoauth_gid) < 0 ||
        setegid(mailoauth_gid) < 0 ||
        seteuid(mailoauth_uid) < 0) {
      res = -1;
      xerrno = errno;
      goto restore;
    }
  }

  res = mailoauth_spool_journal_open(&mailoauth_journal, spool_dir,
    mailoauth_uid);
  xerrno = errno;

restore:
  if (switched) {
    if (seteuid(PR_ROOT_UID) < 0 ||
        setgroups((size_t) ngroups, groups) < 0 ||
        setegid(egid) < 0 ||
        seteuid(euid) < 0) {
      /* Going on with another identity than ProFTPD thinks it has would be
       * worse than ending this session.
       */
      pr_log_pri(PR_LOG_ERR, MOD_MAILOAUTH_VERSION
        ": cannot restore the session's identity: %s", strerror(errno));
      pr_session_end(0);
    }
  }

  errno = xerrno;
  return res;
}

/* mod_auth and mod_sftp announce a successful login with this event before
 * they chroot the session or revoke root (DefaultRoot, RootRevoke): the last
 * moment at which the spool directory can be reached, and the first at
 * which the session can upload anything.
 */
static void mailoauth_auth_code_ev(const void *event_data, void *user_data) {
  const int *auth_code = event_data;
  const char *spool_dir;
  int *engine;

  (void) user_data;

  if (auth_code == NULL ||
      *auth_code < 0 ||
      mailoauth_journal.fd >= 0 ||
      mailoauth_state_dir == NULL) {
    return;
  }

  /* main_server is the virtual host the client logged in to. */
  engine = get_param_ptr(main_server->conf, "MailOAuthEngine", FALSE);
  if (engine == NULL ||
      *engine == FALSE) {
    return;
  }

  spool_dir = mailoauth_subdir(session.pool, "spool");
  if (mailoauth_journal_open_as_user(spool_dir) < 0) {
    int xerrno = errno;

    (void) pr_log_writefile(mailoauth_logfd, MOD_MAILOAUTH_VERSION,
      "cannot open an upload journal in '%s': %s%s; uploads in this session "
      "will not be notified", spool_dir, strerror(xerrno),
      xerrno == ELOOP || xerrno == ENOTDIR || xerrno == EPERM ?
        " (it must be a real directory, owned by the server's User, "
        "mode 0700)" : "");
  }
}

static int mailoauth_sess_init(void) {
  /* Master-only machinery a session must not keep: the worker's control
   * socket (a session holding it would hide the master's death from the
   * worker) and the supervision timer.
   */
  if (mailoauth_supervisor_fd >= 0) {
    (void) close(mailoauth_supervisor_fd);
    mailoauth_supervisor_fd = -1;
  }
  mailoauth_supervisor_pid = 0;
  pr_event_unregister(&mailoauth_module, "core.restart", NULL);
  pr_event_unregister(&mailoauth_module, "core.shutdown", NULL);

  if (mailoauth_engine == FALSE ||
      mailoauth_state_dir == NULL) {
    return 0;
  }

  /* A journal is made once the client has logged in, in a virtual host
   * with the engine on (mailoauth_auth_code_ev), not for every connection.
   */
  pr_event_register(&mailoauth_module, "mod_auth.authentication-code",
    mailoauth_auth_code_ev, NULL);
  return 0;
}

/* Module API tables
 */

static conftable mailoauth_conftab[] = {
  { "MailOAuthAccount",         set_mailoauthaccount,   NULL },
  { "MailOAuthEngine",          set_mailoauthengine,    NULL },
  { "MailOAuthIngest",          set_mailoauthingest,    NULL },
  { "MailOAuthIngestRoute",     set_mailoauthingestroute, NULL },
  { "MailOAuthControlsACLs",    set_mailoauthcontrolsacls, NULL },
  { "MailOAuthLog",             set_mailoauthlog,       NULL },
  { "MailOAuthMetricsFile",     set_mailoauthmetricsfile, NULL },
  { "MailOAuthNotify",          set_mailoauthnotify,    NULL },
  { "MailOAuthProgram",         set_mailoauthprogram,   NULL },
  { "MailOAuthRedis",           set_mailoauthredis,     NULL },
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
