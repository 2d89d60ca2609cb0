/*
 * ProFTPD - mod_mailoauth: mail-to-folder ingestion (ProFTPD glue)
 *
 * This program is free software; you can redistribute it and/or modify
 * it under the terms of the GNU General Public License as published by
 * the Free Software Foundation; either version 2 of the License, or
 * (at your option) any later version.
 *
 * The MailOAuthIngest directive.  Everything that needs the system is
 * settled here, in the master, at configuration time: the owner's uid and
 * gid (users known only to an AuthUserFile or SQL cannot be resolved by the
 * daemon-forked worker) and the destination directory's form.  The work is
 * in ingest.c, run by the worker.
 */

#include "conf.h"

#include "mod_mailoauth.h"
#include "mailoauth/ingest.h"

static const char *trace_channel = "mailoauth.ingest";

#define MAILOAUTH_INGEST_USAGE \
  "write MailOAuthIngest NAME account=ACCOUNT every=DURATION dir=/abs/path " \
  "owner=USER|UID:GID [folder=INBOX] [from=PATTERN] [to=PATTERN] " \
  "[subject=glob] [auth=dmarc|spf|dkim authserv-id=ID|exchange-online] " \
  "[files=glob,glob] [max-size=SIZE] " \
  "[after=seen|delete|move:Folder] [failed=leave|move:Folder] " \
  "[name=TEMPLATE] [inline=off|on] [eml=off|on] [metadata=off|on] " \
  "[tnef=on|off] [idle=on|off]"

#define MAILOAUTH_ROUTE_USAGE \
  "write MailOAuthIngestRoute TASK [from=PATTERN] [to=PATTERN] " \
  "[subject=glob] [auth=dmarc|spf|dkim] [authserv-id=ID|exchange-online] " \
  "dir=/abs/path [owner=USER|UID:GID], e.g. " \
  "MailOAuthIngestRoute scans from=contoso.com dir=/srv/ftp/contoso " \
  "owner=contoso"

/* owner=USER or owner=UID:GID; never root: files written as root in a
 * user's directory are exactly what the deposit design avoids.
 */
static int mailoauth_ingest_owner(cmd_rec *cmd, const char *value, uid_t *uid,
    gid_t *gid, const char **err) {
  const char *colon = strchr(value, ':');

  if (colon != NULL) {
    char *end = NULL;
    unsigned long u, g;

    u = strtoul(value, &end, 10);
    if (end != colon || value == colon || *value == '-') {
      *err = "owner=UID:GID takes numbers, e.g. owner=2001:2001";
      return -1;
    }
    g = strtoul(colon + 1, &end, 10);
    if (*end != '\0' || colon[1] == '\0' || colon[1] == '-') {
      *err = "owner=UID:GID takes numbers, e.g. owner=2001:2001";
      return -1;
    }
    *uid = (uid_t) u;
    *gid = (gid_t) g;

  } else {
    struct passwd *pw = getpwnam(value);

    if (pw == NULL) {
      *err = pstrcat(cmd->tmp_pool, "owner '", value, "' is not a system "
        "user (users of an AuthUserFile or SQL are not known here): write "
        "owner=UID:GID, e.g. owner=2001:2001", NULL);
      return -1;
    }
    *uid = pw->pw_uid;
    *gid = pw->pw_gid;
  }

  if (*uid == 0 || *gid == 0) {
    *err = "owner must not be root (uid or gid 0): name the user who owns "
      "the directory";
    return -1;
  }

  return 0;
}

/* usage: MailOAuthIngest NAME key=value ... */
modret_t *set_mailoauthingest(cmd_rec *cmd) {
  struct mailoauth_ingest_config *cfg;
  array_header *args;
  config_rec *c;
  char err[512];
  int have_every = FALSE, have_owner = FALSE;
  unsigned int i;

  CHECK_CONF(cmd, CONF_ROOT);

  if (cmd->argc < 3) {
    CONF_ERROR(cmd, MAILOAUTH_INGEST_USAGE);
  }

  if (!mailoauth_ingest_valid_name(cmd->argv[1])) {
    CONF_ERROR(cmd, pstrcat(cmd->tmp_pool, "task name '",
      (char *) cmd->argv[1], "' must be 1-64 letters, digits, '-', '_' or "
      "'.' (it names the task's state files)", NULL));
  }

  for (c = find_config(cmd->server->conf, CONF_PARAM, cmd->argv[0], FALSE);
       c != NULL;
       c = find_config_next(c, c->next, CONF_PARAM, cmd->argv[0], FALSE)) {
    const struct mailoauth_ingest_config *other = c->argv[0];

    if (strcmp(other->name, cmd->argv[1]) == 0) {
      CONF_ERROR(cmd, pstrcat(cmd->tmp_pool, "task '",
        (char *) cmd->argv[1], "' is already defined: give each "
        "MailOAuthIngest its own name", NULL));
    }
  }

  /* argv: the task, where it was configured, its settings as the worker
   * reads them (owner= and every= resolved here, see wconf.h) and its
   * routes' likewise.
   */
  c = add_config_param(cmd->argv[0], 4, NULL, NULL, NULL, NULL);
  cfg = pcalloc(c->pool, sizeof(*cfg));
  mailoauth_ingest_config_init(cfg);
  cfg->name = pstrdup(c->pool, cmd->argv[1]);
  args = make_array(c->pool, cmd->argc, sizeof(char *));
  *((char **) push_array(args)) = (char *) cfg->name;

  for (i = 2; i < cmd->argc; i++) {
    char *arg = pstrdup(c->pool, cmd->argv[i]), *eq, *key, *value;

    eq = strchr(arg, '=');
    if (eq == NULL) {
      CONF_ERROR(cmd, pstrcat(cmd->tmp_pool, "expected key=value, got '",
        (char *) cmd->argv[i], "' (e.g. every=5m; quote a setting with "
        "spaces as one word: \"subject=Scan *\")", NULL));
    }

    *eq = '\0';
    key = arg;
    value = eq + 1;

    if (strcasecmp(key, "every") == 0) {
      int secs = 0;

      if (pr_str_get_duration(value, &secs) < 0 ||
          secs <= 0) {
        CONF_ERROR(cmd, pstrcat(cmd->tmp_pool, "every '", value, "' is not "
          "a duration: write e.g. every=60, every=5m or every=1h", NULL));
      }
      cfg->every = (unsigned int) secs;
      have_every = TRUE;
      *((char **) push_array(args)) = pstrcat(c->pool, "every=",
        pr_uid2str(c->pool, (uid_t) secs), NULL);

    } else if (strcasecmp(key, "owner") == 0) {
      const char *why = NULL;

      if (mailoauth_ingest_owner(cmd, value, &cfg->uid, &cfg->gid,
          &why) < 0) {
        CONF_ERROR(cmd, pstrdup(cmd->tmp_pool, why));
      }
      have_owner = TRUE;
      *((char **) push_array(args)) = pstrcat(c->pool, "owner=",
        pr_uid2str(c->pool, cfg->uid), ":", pr_gid2str(c->pool, cfg->gid),
        NULL);

    } else {
      *((char **) push_array(args)) = pstrdup(c->pool, cmd->argv[i]);
      if (mailoauth_ingest_parse_setting(cfg, key, value, err,
          sizeof(err)) < 0) {
        CONF_ERROR(cmd, pstrdup(cmd->tmp_pool, err));
      }
    }
  }

  if (mailoauth_route_check(&cfg->filter, err, sizeof(err)) < 0) {
    CONF_ERROR(cmd, pstrdup(cmd->tmp_pool, err));
  }

  if (cfg->account == NULL ||
      !have_every ||
      cfg->dir == NULL ||
      !have_owner) {
    CONF_ERROR(cmd, pstrcat(cmd->tmp_pool, "missing ",
      cfg->account == NULL ? "account=ACCOUNT" : !have_every ?
      "every=DURATION" : cfg->dir == NULL ? "dir=/abs/path" :
      "owner=USER|UID:GID", ": " MAILOAUTH_INGEST_USAGE, NULL));
  }

  c->argv[0] = cfg;
  c->argv[1] = pstrdup(c->pool, mailoauth_config_location());
  c->argv[2] = args;
  c->argv[3] = make_array(c->pool, 1, sizeof(array_header *));

  pr_trace_msg(trace_channel, 9, "task %s: account %s, folder %s, every %u "
    "s, into %s as %lu:%lu", cfg->name, cfg->account, cfg->folder,
    cfg->every, cfg->dir, (unsigned long) cfg->uid, (unsigned long) cfg->gid);
  return PR_HANDLED(cmd);
}

int mailoauth_ingest_check_accounts(const char **bad_account,
    const char **where) {
  config_rec *c;

  for (c = find_config(main_server->conf, CONF_PARAM, "MailOAuthIngest",
         FALSE);
       c != NULL;
       c = find_config_next(c, c->next, CONF_PARAM, "MailOAuthIngest",
         FALSE)) {
    const struct mailoauth_ingest_config *cfg = c->argv[0];

    if (mailoauth_account_find(cfg->account) == NULL) {
      *bad_account = cfg->account;
      *where = c->argv[1];
      return -1;
    }
  }

  return 0;
}

/* Ingestion reads mail over IMAP; an account signed in for Microsoft Graph
 * holds a token IMAP refuses.
 */
int mailoauth_ingest_check_transports(const char **bad_account,
    const char **where) {
  config_rec *c;

  for (c = find_config(main_server->conf, CONF_PARAM, "MailOAuthIngest",
         FALSE);
       c != NULL;
       c = find_config_next(c, c->next, CONF_PARAM, "MailOAuthIngest",
         FALSE)) {
    const struct mailoauth_ingest_config *cfg = c->argv[0];
    config_rec *acct = mailoauth_account_find(cfg->account);
    unsigned int i;

    for (i = 1; acct != NULL && i < acct->argc; i++) {
      const char *arg = acct->argv[i];

      if (strncasecmp(arg, "transport=", 10) == 0 &&
          strcasecmp(arg + 10, "graph") == 0) {
        *bad_account = cfg->account;
        *where = c->argv[1];
        return -1;
      }
    }
  }

  return 0;
}

static config_rec *mailoauth_ingest_find(server_rec *s, const char *name) {
  config_rec *c;

  for (c = find_config(s->conf, CONF_PARAM, "MailOAuthIngest", FALSE);
       c != NULL;
       c = find_config_next(c, c->next, CONF_PARAM, "MailOAuthIngest",
         FALSE)) {
    struct mailoauth_ingest_config *cfg = c->argv[0];

    if (cfg != NULL && strcmp(cfg->name, name) == 0) {
      return c;
    }
  }

  return NULL;
}

/* usage: MailOAuthIngestRoute TASK [from=...] [to=...] [subject=...]
 *          [auth=...] [authserv-id=...] dir=/abs/path [owner=USER|UID:GID]
 */
modret_t *set_mailoauthingestroute(cmd_rec *cmd) {
  struct mailoauth_ingest_config *task;
  struct mailoauth_route *route;
  array_header *args;
  config_rec *c;
  char err[512];
  int have_dir = FALSE, have_owner = FALSE;
  unsigned int i;

  CHECK_CONF(cmd, CONF_ROOT);

  if (cmd->argc < 3) {
    CONF_ERROR(cmd, MAILOAUTH_ROUTE_USAGE);
  }

  c = mailoauth_ingest_find(cmd->server, cmd->argv[1]);
  if (c == NULL) {
    CONF_ERROR(cmd, pstrcat(cmd->tmp_pool, "no MailOAuthIngest task named '",
      (char *) cmd->argv[1], "' above this line: define the task first, "
      "then its routes", NULL));
  }

  task = c->argv[0];
  if (task->nroutes >= MAILOAUTH_INGEST_MAX_ROUTES) {
    CONF_ERROR(cmd, pstrcat(cmd->tmp_pool, "task '", task->name, "' has "
      "too many routes (at most 32): split the mailbox into folders and "
      "use one task per folder", NULL));
  }

  /* The task's pool: the route lives as long as the task. */
  route = pcalloc(c->pool, sizeof(*route));
  route->uid = task->uid;
  route->gid = task->gid;
  args = make_array(c->pool, cmd->argc, sizeof(char *));
  /* The task's authserv-id= holds for its routes unless they name one
   * (mailoauth_wconf_parse() does the same in the worker).
   */
  route->authserv_id = task->filter.authserv_id;

  for (i = 2; i < cmd->argc; i++) {
    char *arg = pstrdup(c->pool, cmd->argv[i]), *eq, *key, *value;
    int res;

    eq = strchr(arg, '=');
    if (eq == NULL) {
      CONF_ERROR(cmd, pstrcat(cmd->tmp_pool, "expected key=value, got '",
        (char *) cmd->argv[i], "': " MAILOAUTH_ROUTE_USAGE, NULL));
    }

    *eq = '\0';
    key = arg;
    value = eq + 1;

    if (strcasecmp(key, "dir") == 0) {
      if (mailoauth_ingest_check_dir(value, err, sizeof(err)) < 0) {
        CONF_ERROR(cmd, pstrdup(cmd->tmp_pool, err));
      }
      route->dir = value;
      have_dir = TRUE;
      *((char **) push_array(args)) = pstrcat(c->pool, "dir=", value, NULL);

    } else if (strcasecmp(key, "owner") == 0) {
      const char *why = NULL;

      if (mailoauth_ingest_owner(cmd, value, &route->uid, &route->gid,
          &why) < 0) {
        CONF_ERROR(cmd, pstrdup(cmd->tmp_pool, why));
      }
      have_owner = TRUE;

    } else {
      *((char **) push_array(args)) = pstrdup(c->pool, cmd->argv[i]);
      res = mailoauth_route_parse_setting(route, key, value, err,
        sizeof(err));
      if (res < 0) {
        CONF_ERROR(cmd, pstrdup(cmd->tmp_pool, err));
      }
      if (res > 0) {
        CONF_ERROR(cmd, pstrcat(cmd->tmp_pool, "unknown setting '", key,
          "' (known: from, to, subject, auth, authserv-id, dir, owner)",
          NULL));
      }
    }
  }

  if (!have_dir) {
    CONF_ERROR(cmd, "missing dir=/abs/path: " MAILOAUTH_ROUTE_USAGE);
  }

  if (route->from[0] == NULL && route->to[0] == NULL &&
      route->subject == NULL) {
    CONF_ERROR(cmd, "a route needs from=, to= or subject= (the task's own "
      "dir= takes what no route matches): " MAILOAUTH_ROUTE_USAGE);
  }

  if (mailoauth_route_check(route, err, sizeof(err)) < 0) {
    CONF_ERROR(cmd, pstrdup(cmd->tmp_pool, err));
  }

  task->routes[task->nroutes++] = route;
  *((char **) push_array(args)) = pstrcat(c->pool, "owner=",
    pr_uid2str(c->pool, route->uid), ":", pr_gid2str(c->pool, route->gid),
    NULL);
  *((array_header **) push_array(c->argv[3])) = args;
  pr_trace_msg(trace_channel, 9, "task %s: route %u into %s as %lu:%lu%s",
    task->name, task->nroutes, route->dir, (unsigned long) route->uid,
    (unsigned long) route->gid, have_owner ? "" : " (the task's owner)");
  return PR_HANDLED(cmd);
}
