/*
 * ProFTPD - mod_mailoauth: ftpdctl actions
 *
 * This program is free software; you can redistribute it and/or modify
 * it under the terms of the GNU General Public License as published by
 * the Free Software Foundation; either version 2 of the License, or
 * (at your option) any later version.
 *
 * `ftpdctl mailoauth status|run TASK|retry`, in the manner of mod_delay's
 * `delay info|reset`: one control, an ACL per action (MailOAuthControlsACLs).
 * Controls run in the master, which must never wait on the network nor on
 * the worker: status reads the file the worker keeps in the state directory
 * (control.h), run and retry are passed to the worker through the
 * supervisor without waiting for an answer.
 */

#include "conf.h"
#include "privs.h"

#include "mod_mailoauth.h"
#include "mailoauth/control.h"
#include "mailoauth/ingest.h"
#include "mailoauth/jsonwrap.h"

#if defined(PR_USE_CTRLS)
# include "mod_ctrls.h"
#endif

extern module mailoauth_module;

#if defined(PR_USE_CTRLS)

static pool *mailoauth_ctrls_parent = NULL;
static pool *mailoauth_ctrls_pool = NULL;

static ctrls_acttab_t mailoauth_acttab[] = {
  { "status",   NULL, NULL, NULL },
  { "run",      NULL, NULL, NULL },
  { "retry",    NULL, NULL, NULL },
  { NULL,       NULL, NULL, NULL }
};

/* The status file, read as root through descriptors checked on the way:
 * the state directory belongs to User, who could put a link, a FIFO or a
 * huge file there.  NULL with a reason in *why.
 */
static char *mailoauth_ctrls_read_status(pool *p, const char **why) {
  const char *dir = mailoauth_get_state_dir();
  struct stat st;
  char *buf = NULL;
  int dfd = -1, fd = -1, xerrno = 0;
  ssize_t n = 0;

  if (dir == NULL) {
    *why = "MailOAuthEngine is off";
    return NULL;
  }

  PRIVS_ROOT
  dfd = open(dir, O_RDONLY|O_DIRECTORY|O_NOFOLLOW|O_CLOEXEC);
  if (dfd >= 0) {
    fd = openat(dfd, MAILOAUTH_STATUS_FILE,
      O_RDONLY|O_NOFOLLOW|O_NONBLOCK|O_NOCTTY|O_CLOEXEC);
  }
  xerrno = errno;
  PRIVS_RELINQUISH
  if (dfd >= 0) {
    (void) close(dfd);
  }

  if (fd < 0) {
    *why = xerrno == ENOENT ? "the worker has not written its status yet "
      "(is it running? see MailOAuthLog)" :
      pstrcat(p, "cannot open the status file in ", dir, ": ",
        strerror(xerrno), NULL);
    return NULL;
  }

  if (fstat(fd, &st) < 0 ||
      !S_ISREG(st.st_mode) ||
      st.st_uid != mailoauth_get_uid() ||
      st.st_size > MAILOAUTH_STATUS_MAX) {
    (void) close(fd);
    *why = pstrcat(p, "the status file in ", dir, " is not a regular file "
      "of the server's User, or too large; ignored", NULL);
    return NULL;
  }

  buf = palloc(p, (size_t) st.st_size + 1);
  while ((size_t) n < (size_t) st.st_size) {
    ssize_t r = read(fd, buf + n, (size_t) st.st_size - (size_t) n);

    if (r < 0 && errno == EINTR) {
      continue;
    }
    if (r <= 0) {
      break;
    }
    n += r;
  }
  (void) close(fd);
  buf[n] = '\0';
  return buf;
}

/* "in 5m", "3h ago", "-" for none. */
static const char *mailoauth_ctrls_when(pool *p, json_t *v, time_t now) {
  long long t, d;
  char num[64];
  const char *unit = "s";

  if (!json_is_integer(v)) {
    return "-";
  }

  t = (long long) json_integer_value(v);
  d = t >= now ? t - now : now - t;
  if (d >= 2 * 86400) {
    d /= 86400;
    unit = "d";
  } else if (d >= 2 * 3600) {
    d /= 3600;
    unit = "h";
  } else if (d >= 2 * 60) {
    d /= 60;
    unit = "m";
  }

  pr_snprintf(num, sizeof(num), t >= now ? "in %lld%s" : "%lld%s ago", d,
    unit);
  return pstrdup(p, num);
}

static long long mailoauth_ctrls_int(json_t *obj, const char *key) {
  json_t *v = json_object_get(obj, key);

  return json_is_integer(v) ? (long long) json_integer_value(v) : 0;
}

/* A string of the document, with control characters shown as '?': the
 * file is User's, the output goes to root's terminal.
 */
static const char *mailoauth_ctrls_str(pool *p, json_t *obj,
    const char *key) {
  const char *s = json_string_value(json_object_get(obj, key));
  char *copy, *c;

  if (s == NULL) {
    return "-";
  }

  copy = pstrdup(p, s);
  for (c = copy; *c != '\0'; c++) {
    if ((unsigned char) *c < 0x20 || *c == 0x7f) {
      *c = '?';
    }
  }
  return copy;
}

static int mailoauth_ctrls_status(pr_ctrls_t *ctrl) {
  const char *why = NULL;
  json_t *doc, *v, *item;
  time_t now = time(NULL);
  pool *p = ctrl->ctrls_tmp_pool;
  char *text;
  size_t i;

  text = mailoauth_ctrls_read_status(p, &why);
  if (text == NULL) {
    pr_ctrls_add_response(ctrl, "mailoauth: %s", why);
    return -1;
  }

  doc = json_loads(text, 0, NULL);
  if (!json_is_object(doc)) {
    json_decref(doc);
    pr_ctrls_add_response(ctrl, "mailoauth: the status file cannot be read "
      "as JSON");
    return -1;
  }

  pr_ctrls_add_response(ctrl, "worker: pid %lld, started %s, status written "
    "%s", mailoauth_ctrls_int(doc, "pid"),
    mailoauth_ctrls_when(p, json_object_get(doc, "started"), now),
    mailoauth_ctrls_when(p, json_object_get(doc, "written"), now));

  json_array_foreach(json_object_get(doc, "accounts"), i, item) {
    json_t *err = json_object_get(item, "last_error");

    pr_ctrls_add_response(ctrl, "account %s (%s): %s; access token expires "
      "%s; next refresh %s; refresh token lapses %s; %lld refreshes, %lld "
      "failed", mailoauth_ctrls_str(p, item, "name"),
      mailoauth_ctrls_str(p, item, "grant"),
      mailoauth_ctrls_str(p, item, "state"),
      mailoauth_ctrls_when(p, json_object_get(item, "access_expires"), now),
      mailoauth_ctrls_when(p, json_object_get(item, "next_refresh"), now),
      mailoauth_ctrls_when(p, json_object_get(item, "refresh_token_lapses"),
        now),
      mailoauth_ctrls_int(item, "refreshes"),
      mailoauth_ctrls_int(item, "refresh_failures"));
    pr_ctrls_add_response(ctrl, "  last error: %s%s%s%s%s",
      json_is_object(err) ? mailoauth_ctrls_str(p, err, "class") : "none",
      json_is_object(err) ? " " : "",
      json_is_object(err) ? mailoauth_ctrls_when(p,
        json_object_get(err, "at"), now) : "",
      json_is_object(err) ? ": " : "",
      json_is_object(err) ? mailoauth_ctrls_str(p, err, "message") : "");
  }

  v = json_object_get(doc, "notifications");
  pr_ctrls_add_response(ctrl, "notifications: %lld queued (oldest %s), %lld "
    "dead letters; since start %lld sent, %lld failed attempts, %lld "
    "dead-lettered", mailoauth_ctrls_int(v, "queued"),
    mailoauth_ctrls_when(p, json_object_get(v, "oldest_queued"), now),
    mailoauth_ctrls_int(v, "dead_letters"), mailoauth_ctrls_int(v, "sent"),
    mailoauth_ctrls_int(v, "failed"), mailoauth_ctrls_int(v, "dead_lettered"));

  json_array_foreach(json_object_get(doc, "tasks"), i, item) {
    pr_ctrls_add_response(ctrl, "task %s (account %s, every %llds): last run "
      "%s, next run %s, last success %s; %lld messages, %lld bytes, %lld "
      "errors", mailoauth_ctrls_str(p, item, "name"),
      mailoauth_ctrls_str(p, item, "account"),
      mailoauth_ctrls_int(item, "every"),
      mailoauth_ctrls_when(p, json_object_get(item, "last_run"), now),
      mailoauth_ctrls_when(p, json_object_get(item, "next_run"), now),
      mailoauth_ctrls_when(p, json_object_get(item, "last_success"), now),
      mailoauth_ctrls_int(item, "messages"), mailoauth_ctrls_int(item, "bytes"),
      mailoauth_ctrls_int(item, "errors"));
    pr_ctrls_add_response(ctrl, "  last error: %s",
      json_is_string(json_object_get(item, "last_error")) ?
        mailoauth_ctrls_str(p, item, "last_error") : "none");
  }

  json_decref(doc);
  return 0;
}

static int mailoauth_ctrls_task_known(const char *name) {
  config_rec *c;

  for (c = find_config(main_server->conf, CONF_PARAM, "MailOAuthIngest",
         FALSE);
       c != NULL;
       c = find_config_next(c, c->next, CONF_PARAM, "MailOAuthIngest",
         FALSE)) {
    const struct mailoauth_ingest_config *cfg = c->argv[0];

    if (strcmp(cfg->name, name) == 0) {
      return TRUE;
    }
  }

  return FALSE;
}

static int mailoauth_ctrls_send(pr_ctrls_t *ctrl, uint32_t type,
    const char *data, const char *what) {
  if (mailoauth_get_state_dir() == NULL) {
    pr_ctrls_add_response(ctrl, "mailoauth: MailOAuthEngine is off");
    return -1;
  }

  if (mailoauth_supervisor_request(type, data, data ? strlen(data) : 0) < 0) {
    pr_ctrls_add_response(ctrl, "mailoauth: cannot ask the worker to %s: %s",
      what, errno == ESRCH ? "it is not running" : strerror(errno));
    return -1;
  }

  pr_ctrls_add_response(ctrl, "mailoauth: asked the worker to %s; "
    "MailOAuthLog says what it did", what);
  return 0;
}

static int mailoauth_ctrls_handle(pr_ctrls_t *ctrl, int reqargc,
    char **reqargv) {
  const char *action;

  if (reqargc < 1 ||
      reqargv == NULL) {
    pr_ctrls_add_response(ctrl, "mailoauth: missing action (status, run "
      "TASK, retry)");
    return -1;
  }

  action = reqargv[0];
  if (strcmp(action, "status") != 0 &&
      strcmp(action, "run") != 0 &&
      strcmp(action, "retry") != 0) {
    pr_ctrls_add_response(ctrl, "mailoauth: unknown action '%s' (status, "
      "run TASK, retry)", action);
    return -1;
  }

  if (!pr_ctrls_check_acl(ctrl, mailoauth_acttab, action)) {
    pr_ctrls_add_response(ctrl, "access denied");
    return -1;
  }

  if (strcmp(action, "status") == 0) {
    if (reqargc != 1) {
      pr_ctrls_add_response(ctrl, "mailoauth: status takes no argument");
      return -1;
    }
    return mailoauth_ctrls_status(ctrl);
  }

  if (strcmp(action, "run") == 0) {
    if (reqargc != 2) {
      pr_ctrls_add_response(ctrl, "mailoauth: write run TASK (a "
        "MailOAuthIngest name)");
      return -1;
    }
    if (!mailoauth_ctrls_task_known(reqargv[1])) {
      pr_ctrls_add_response(ctrl, "mailoauth: no MailOAuthIngest task named "
        "'%s'", reqargv[1]);
      return -1;
    }
    return mailoauth_ctrls_send(ctrl, MAILOAUTH_CTL_RUN_TASK, reqargv[1],
      pstrcat(ctrl->ctrls_tmp_pool, "run task ", reqargv[1], " now", NULL));
  }

  if (reqargc != 1) {
    pr_ctrls_add_response(ctrl, "mailoauth: retry takes no argument");
    return -1;
  }
  return mailoauth_ctrls_send(ctrl, MAILOAUTH_CTL_RETRY, NULL,
    "move the dead letters back to the queue");
}

static void mailoauth_ctrls_acls_init(void) {
  unsigned int i;

  for (i = 0; mailoauth_acttab[i].act_action != NULL; i++) {
    mailoauth_acttab[i].act_acl = pcalloc(mailoauth_ctrls_pool,
      sizeof(ctrls_acl_t));
    pr_ctrls_init_acl(mailoauth_acttab[i].act_acl);
  }
}

#endif /* PR_USE_CTRLS */

void mailoauth_ctrls_init(pool *p) {
#if defined(PR_USE_CTRLS)
  mailoauth_ctrls_parent = p;
  mailoauth_ctrls_pool = make_sub_pool(p);
  pr_pool_tag(mailoauth_ctrls_pool, MOD_MAILOAUTH_VERSION ": ctrls");
  mailoauth_ctrls_acls_init();

  if (pr_ctrls_register(&mailoauth_module, "mailoauth",
      "mod_mailoauth status, run a pull task now, retry dead letters",
      mailoauth_ctrls_handle) < 0) {
    pr_log_pri(PR_LOG_NOTICE, MOD_MAILOAUTH_VERSION
      ": error registering 'mailoauth' control: %s", strerror(errno));
  }
#else
  (void) p;
#endif /* PR_USE_CTRLS */
}

void mailoauth_ctrls_restart(void) {
#if defined(PR_USE_CTRLS)
  if (mailoauth_ctrls_pool != NULL) {
    destroy_pool(mailoauth_ctrls_pool);
    mailoauth_ctrls_pool = make_sub_pool(mailoauth_ctrls_parent);
    pr_pool_tag(mailoauth_ctrls_pool, MOD_MAILOAUTH_VERSION ": ctrls");
    mailoauth_ctrls_acls_init();
  }
#endif /* PR_USE_CTRLS */
}

/* usage: MailOAuthControlsACLs actions|all allow|deny user|group list */
modret_t *set_mailoauthcontrolsacls(cmd_rec *cmd) {
#if defined(PR_USE_CTRLS)
  char *bad_action = NULL, **actions = NULL;

  CHECK_ARGS(cmd, 4);
  CHECK_CONF(cmd, CONF_ROOT);

  actions = pr_ctrls_parse_acl(cmd->tmp_pool, cmd->argv[1]);

  if (strcmp(cmd->argv[2], "allow") != 0 &&
      strcmp(cmd->argv[2], "deny") != 0) {
    CONF_ERROR(cmd, "second parameter must be 'allow' or 'deny'");
  }

  if (strcmp(cmd->argv[3], "user") != 0 &&
      strcmp(cmd->argv[3], "group") != 0) {
    CONF_ERROR(cmd, "third parameter must be 'user' or 'group'");
  }

  bad_action = pr_ctrls_set_module_acls(mailoauth_acttab,
    mailoauth_ctrls_pool, actions, cmd->argv[2], cmd->argv[3], cmd->argv[4]);
  if (bad_action != NULL) {
    CONF_ERROR(cmd, pstrcat(cmd->tmp_pool, "unknown mailoauth action: '",
      bad_action, "' (status, run, retry, or all)", NULL));
  }

  return PR_HANDLED(cmd);
#else
  CONF_ERROR(cmd, "requires Controls support (--enable-ctrls)");
#endif /* PR_USE_CTRLS */
}
