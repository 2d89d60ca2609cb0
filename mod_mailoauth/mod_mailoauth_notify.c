/*
 * ProFTPD - mod_mailoauth: notification rules (ProFTPD glue)
 *
 * This program is free software; you can redistribute it and/or modify
 * it under the terms of the GNU General Public License as published by
 * the Free Software Foundation; either version 2 of the License, or
 * (at your option) any later version.
 *
 * The MailOAuthNotify directive, and what a session adds to an upload's
 * record when a rule matches: the recipients, and the subject, body and
 * digest line rendered with ProFTPD's LogFormat variables (the Jot API),
 * which only the session can resolve.  Sending is the worker's job.
 */

#include "conf.h"
#include "jot.h"
#include "logfmt.h"

#include "mod_mailoauth.h"
#include "mailoauth/event.h"
#include "mailoauth/message.h"
#include "mailoauth/trace.h"

#include <fnmatch.h>

static const char *trace_channel = "mailoauth.notify";

#define MAILOAUTH_NOTIFY_DEFAULT_SUBJECT  "File received: %{basename}"
#define MAILOAUTH_NOTIFY_DEFAULT_BODY \
  "%u uploaded %f (%b bytes) from %a via %{protocol} at %{iso8601-tz}."
#define MAILOAUTH_NOTIFY_DEFAULT_LINE \
  "%f (%b bytes) by %u from %a via %{protocol} at %{iso8601-tz}"

/* %{iso8601} is local time with no zone: a mail read elsewhere cannot tell
 * when that was.  %{iso8601-tz} is the same time with its UTC offset (RFC
 * 3339), rendered by us: the template carries it to us as a %{time:}
 * variable with this marker for its format.
 */
#define MAILOAUTH_NOTIFY_ISO8601_TZ       "%{iso8601-tz}"
#define MAILOAUTH_NOTIFY_ISO8601_TZ_MARK  "mailoauth-iso8601-tz"

/* Rendered texts longer than this are cut: a subject or a body line made
 * from a hostile file name must not grow without bound.
 */
#define MAILOAUTH_NOTIFY_MAX_TEXT         (16 * 1024)

struct mailoauth_notify_rule {
  const char *account;
  const char *from;
  const char *from_name;
  array_header *rcpts[3];       /* To, Cc, Bcc */
  const char *match;
  unsigned char *subject, *body, *line;
  off_t attach_max;             /* -1: never attach */
  long digest_secs;
  int burst_digest;             /* fold a send-rate backlog into a digest */
  const char *key;              /* where the rule is: groups digests */
};

struct mailoauth_notify_text {
  char *buf;
  size_t len, size;
};

/* Templates
 */

static const char *mailoauth_notify_iso8601_tz(char *buf, size_t bufsz) {
  struct timeval now;
  struct tm tm;
  char zone[8];
  size_t len;

  gettimeofday(&now, NULL);
  if (localtime_r(&now.tv_sec, &tm) == NULL) {
    return NULL;
  }

  len = strftime(buf, bufsz, "%Y-%m-%dT%H:%M:%S", &tm);
  if (len == 0 ||
      strftime(zone, sizeof(zone), "%z", &tm) != 5) {
    return NULL;
  }

  /* +0100 becomes +01:00. */
  pr_snprintf(buf + len, bufsz - len, ".%03lu%.3s:%.2s",
    (unsigned long) (now.tv_usec / 1000), zone, zone + 3);
  return buf;
}

/* Replaces each %{iso8601-tz} with %{time:MARK}, which Jot parses. */
static const char *mailoauth_notify_prepare(pool *p, const char *text) {
  const char *tz = MAILOAUTH_NOTIFY_ISO8601_TZ;
  const char *repl = "%{time:" MAILOAUTH_NOTIFY_ISO8601_TZ_MARK "}";
  const char *at;
  char *out = "";

  while ((at = strstr(text, tz)) != NULL) {
    out = pstrcat(p, out, pstrndup(p, text, at - text), repl, NULL);
    text = at + strlen(tz);
  }

  return pstrcat(p, out, text, NULL);
}

static unsigned char *mailoauth_notify_compile(pool *p, const char *text,
    char *err, size_t errlen) {
  unsigned char buf[4096];
  pr_jot_ctx_t *ctx;
  pr_jot_parsed_t *parsed;
  unsigned char *fmt;
  size_t len;

  text = mailoauth_notify_prepare(p, text);
  ctx = pcalloc(p, sizeof(pr_jot_ctx_t));
  parsed = pcalloc(p, sizeof(pr_jot_parsed_t));
  parsed->bufsz = parsed->buflen = sizeof(buf) - 1;
  parsed->ptr = parsed->buf = buf;
  ctx->log = parsed;

  if (pr_jot_parse_logfmt(p, text, ctx, pr_jot_parse_on_meta,
      pr_jot_parse_on_unknown, pr_jot_parse_on_other, 0) < 0) {
    pr_snprintf(err, errlen, "cannot parse template '%s': %s", text,
      strerror(errno));
    return NULL;
  }

  len = parsed->bufsz - parsed->buflen;
  fmt = palloc(p, len + 1);
  memcpy(fmt, buf, len);
  fmt[len] = '\0';
  return fmt;
}

static void mailoauth_notify_append(struct mailoauth_notify_text *t,
    const char *text, size_t len) {
  if (text == NULL ||
      t->len >= t->size - 1) {
    return;
  }

  if (len > t->size - 1 - t->len) {
    len = t->size - 1 - t->len;
  }

  memcpy(t->buf + t->len, text, len);
  t->len += len;
  t->buf[t->len] = '\0';
}

/* Numbers arrive as doubles, texts as strings (as in mod_log). */
static int mailoauth_notify_on_meta(pool *p, pr_jot_ctx_t *ctx,
    unsigned char id, const char *hint, const void *val) {
  struct mailoauth_notify_text *t = ctx->log;
  char buf[256];
  const char *text = NULL;

  switch (id) {
    case LOGFMT_META_TIME:
      if (hint != NULL &&
          strcmp(hint, MAILOAUTH_NOTIFY_ISO8601_TZ_MARK) == 0) {
        text = mailoauth_notify_iso8601_tz(buf, sizeof(buf));
      } else {
        text = val;
      }
      break;

    case LOGFMT_META_BYTES_SENT:
    case LOGFMT_META_FILE_OFFSET:
    case LOGFMT_META_FILE_SIZE:
    case LOGFMT_META_RAW_BYTES_IN:
    case LOGFMT_META_RAW_BYTES_OUT:
    case LOGFMT_META_RESPONSE_MS:
    case LOGFMT_META_XFER_MS:
    case LOGFMT_META_EPOCH:
    case LOGFMT_META_PID:
    case LOGFMT_META_MICROSECS:
    case LOGFMT_META_MILLISECS:
    case LOGFMT_META_LOCAL_PORT:
    case LOGFMT_META_REMOTE_PORT:
    case LOGFMT_META_RESPONSE_CODE:
    case LOGFMT_META_XFER_PORT:
      pr_snprintf(buf, sizeof(buf), "%" PR_LU,
        (pr_off_t) *((const double *) val));
      text = buf;
      break;

    case LOGFMT_META_UID:
      text = pr_uid2str(p, (uid_t) *((const double *) val));
      break;

    case LOGFMT_META_GID:
      text = pr_gid2str(p, (gid_t) *((const double *) val));
      break;

    case LOGFMT_META_SECONDS:
      pr_snprintf(buf, sizeof(buf), "%0.3f", *((const double *) val));
      text = buf;
      break;

    case LOGFMT_META_FILE_MODIFIED:
      text = *((const int *) val) ? "true" : "false";
      break;

    default: {
      char *esc;
      size_t len;

      /* File, user and command texts are the client's choice: a CR or LF
       * in them must not make a line of the body (a line that reads like
       * a header, say).  The template's own line breaks are kept.
       */
      esc = mailoauth_message_escape(val, MAILOAUTH_MESSAGE_STRLEN, &len);
      if (esc != NULL) {
        mailoauth_notify_append(t, esc, len);
        free(esc);
      }
      return 0;
    }
  }

  if (text != NULL) {
    mailoauth_notify_append(t, text, strlen(text));
  }
  return 0;
}

static int mailoauth_notify_on_default(pool *p, pr_jot_ctx_t *ctx,
    unsigned char id) {
  (void) p;
  (void) id;
  mailoauth_notify_append(ctx->log, "-", 1);
  return 0;
}

static int mailoauth_notify_on_other(pool *p, pr_jot_ctx_t *ctx,
    unsigned char *text, size_t len) {
  (void) p;
  mailoauth_notify_append(ctx->log, (const char *) text, len);
  return 0;
}

static const char *mailoauth_notify_render(pool *p, cmd_rec *cmd,
    unsigned char *fmt, size_t *len) {
  struct mailoauth_notify_text *t;
  pr_jot_ctx_t *ctx;

  t = pcalloc(p, sizeof(*t));
  t->size = MAILOAUTH_NOTIFY_MAX_TEXT;
  t->buf = pcalloc(p, t->size);
  ctx = pcalloc(p, sizeof(pr_jot_ctx_t));
  ctx->log = t;

  if (pr_jot_resolve_logfmt(p, cmd, NULL, fmt, ctx, mailoauth_notify_on_meta,
      mailoauth_notify_on_default, mailoauth_notify_on_other) < 0) {
    pr_trace_msg(trace_channel, 3, "cannot render template: %s",
      strerror(errno));
  }

  *len = t->len;
  return t->buf;
}

/* Configuration
 */

static int mailoauth_notify_size(const char *text, off_t *size) {
  char *end = NULL;
  double num;

  num = strtod(text, &end);
  if (end == text ||
      num < 0) {
    return -1;
  }

  switch (*end) {
    case '\0':
      break;
    case 'k': case 'K':
      num *= 1024;
      end++;
      break;
    case 'm': case 'M':
      num *= 1024 * 1024;
      end++;
      break;
    case 'g': case 'G':
      num *= 1024 * 1024 * 1024;
      end++;
      break;
    default:
      return -1;
  }

  if (*end != '\0' && strcasecmp(end, "B") != 0) {
    return -1;
  }

  *size = (off_t) num;
  return 0;
}

static int mailoauth_notify_add_addrs(pool *p, array_header *list,
    const char *value, char *err, size_t errlen) {
  char *copy, *tok, *save = NULL;

  copy = pstrdup(p, value);
  for (tok = strtok_r(copy, ",", &save); tok != NULL;
       tok = strtok_r(NULL, ",", &save)) {
    while (*tok == ' ') {
      tok++;
    }

    if (mailoauth_message_check_address(tok) < 0) {
      pr_snprintf(err, errlen, "'%s' is not an email address (write e.g. "
        "to=ops@contoso.com,partner@example.com)", tok);
      return -1;
    }

    *((char **) push_array(list)) = pstrdup(p, tok);
  }

  return 0;
}

static const char *mailoauth_notify_read_file(pool *p, const char *path,
    char *err, size_t errlen) {
  pr_fh_t *fh;
  char buf[8192];
  int n;

  fh = pr_fsio_open(path, O_RDONLY);
  if (fh == NULL) {
    pr_snprintf(err, errlen, "cannot read body-file '%s': %s", path,
      strerror(errno));
    return NULL;
  }

  n = pr_fsio_read(fh, buf, sizeof(buf) - 1);
  (void) pr_fsio_close(fh);
  if (n < 0) {
    pr_snprintf(err, errlen, "cannot read body-file '%s': %s", path,
      strerror(errno));
    return NULL;
  }

  buf[n] = '\0';
  return pstrdup(p, buf);
}

/* usage: MailOAuthNotify account to=... [cc=...] [bcc=...] [from=...]
 *          [from-name=...] [match=glob] [subject=...] [body=...]
 *          [body-file=...] [digest-line=...] [attach=size] [digest=secs]
 *          [burst=digest|wait]
 *        MailOAuthNotify none
 */
modret_t *set_mailoauthnotify(cmd_rec *cmd) {
  struct mailoauth_notify_rule *rule;
  const char *subject = MAILOAUTH_NOTIFY_DEFAULT_SUBJECT;
  const char *body = MAILOAUTH_NOTIFY_DEFAULT_BODY;
  const char *line = MAILOAUTH_NOTIFY_DEFAULT_LINE;
  config_rec *c;
  char err[512];
  unsigned int i;

  CHECK_CONF(cmd, CONF_ROOT|CONF_VIRTUAL|CONF_GLOBAL|CONF_ANON|CONF_DIR);

  if (cmd->argc < 2) {
    CONF_ERROR(cmd, "write MailOAuthNotify ACCOUNT to=address[,address] ... "
      "or MailOAuthNotify none");
  }

  /* Not merged down: lookups walk up from the file's directory, so that
   * the nearest rules replace, rather than add to, those further up.
   */
  c = add_config_param(cmd->argv[0], 1, NULL);

  /* "none" switches inherited rules off below this context. */
  if (cmd->argc == 2 &&
      strcasecmp(cmd->argv[1], "none") == 0) {
    return PR_HANDLED(cmd);
  }

  rule = pcalloc(c->pool, sizeof(*rule));
  rule->account = pstrdup(c->pool, cmd->argv[1]);
  rule->attach_max = -1;
  for (i = 0; i < 3; i++) {
    rule->rcpts[i] = make_array(c->pool, 2, sizeof(char *));
  }
  rule->key = pstrdup(c->pool, mailoauth_config_location());

  for (i = 2; i < cmd->argc; i++) {
    char *arg = cmd->argv[i], *eq, *key, *value;

    eq = strchr(arg, '=');
    if (eq == NULL) {
      CONF_ERROR(cmd, pstrcat(cmd->tmp_pool, "expected key=value, got '", arg,
        "' (e.g. to=ops@contoso.com)", NULL));
    }

    key = pstrndup(cmd->tmp_pool, arg, eq - arg);
    value = eq + 1;
    err[0] = '\0';

    if (strcasecmp(key, "to") == 0 ||
        strcasecmp(key, "cc") == 0 ||
        strcasecmp(key, "bcc") == 0) {
      int kind = strcasecmp(key, "to") == 0 ? 0 :
        strcasecmp(key, "cc") == 0 ? 1 : 2;

      if (mailoauth_notify_add_addrs(c->pool, rule->rcpts[kind], value, err,
          sizeof(err)) < 0) {
        CONF_ERROR(cmd, pstrdup(cmd->tmp_pool, err));
      }

    } else if (strcasecmp(key, "from") == 0) {
      if (mailoauth_message_check_address(value) < 0) {
        CONF_ERROR(cmd, pstrcat(cmd->tmp_pool, "from '", value, "' is not "
          "an email address", NULL));
      }
      rule->from = pstrdup(c->pool, value);

    } else if (strcasecmp(key, "from-name") == 0) {
      rule->from_name = pstrdup(c->pool, value);

    } else if (strcasecmp(key, "match") == 0) {
      rule->match = pstrdup(c->pool, value);

    } else if (strcasecmp(key, "subject") == 0) {
      subject = value;

    } else if (strcasecmp(key, "body") == 0) {
      body = value;

    } else if (strcasecmp(key, "body-file") == 0) {
      body = mailoauth_notify_read_file(cmd->tmp_pool, value, err,
        sizeof(err));
      if (body == NULL) {
        CONF_ERROR(cmd, pstrdup(cmd->tmp_pool, err));
      }

    } else if (strcasecmp(key, "digest-line") == 0) {
      line = value;

    } else if (strcasecmp(key, "attach") == 0) {
      if (strcasecmp(value, "off") == 0) {
        rule->attach_max = -1;
      } else if (mailoauth_notify_size(value, &rule->attach_max) < 0) {
        CONF_ERROR(cmd, pstrcat(cmd->tmp_pool, "attach '", value, "' is not "
          "a size: write e.g. attach=10M (files up to 10 MB are attached) "
          "or attach=off", NULL));
      }

    } else if (strcasecmp(key, "digest") == 0) {
      int secs = 0;

      if (pr_str_get_duration(value, &secs) < 0 ||
          secs < 0) {
        CONF_ERROR(cmd, pstrcat(cmd->tmp_pool, "digest '", value, "' is not "
          "a duration: write e.g. digest=10m (one mail per 10 minutes) or "
          "digest=0", NULL));
      }
      rule->digest_secs = secs;

    } else if (strcasecmp(key, "burst") == 0) {
      if (strcasecmp(value, "digest") == 0) {
        rule->burst_digest = TRUE;
      } else if (strcasecmp(value, "wait") == 0) {
        rule->burst_digest = FALSE;
      } else {
        CONF_ERROR(cmd, pstrcat(cmd->tmp_pool, "burst '", value, "' is not "
          "known: write burst=digest (more uploads than the send rate lets "
          "go become one digest) or burst=wait", NULL));
      }

    } else {
      CONF_ERROR(cmd, pstrcat(cmd->tmp_pool, "unknown setting '", key, "' "
        "(known: to, cc, bcc, from, from-name, match, subject, body, "
        "body-file, digest-line, attach, digest, burst)", NULL));
    }
  }

  if (rule->rcpts[0]->nelts + rule->rcpts[1]->nelts +
      rule->rcpts[2]->nelts == 0) {
    CONF_ERROR(cmd, "no recipients: add to=address (and/or cc=, bcc=)");
  }

  if ((rule->subject = mailoauth_notify_compile(c->pool, subject, err,
         sizeof(err))) == NULL ||
      (rule->body = mailoauth_notify_compile(c->pool, body, err,
         sizeof(err))) == NULL ||
      (rule->line = mailoauth_notify_compile(c->pool, line, err,
         sizeof(err))) == NULL) {
    CONF_ERROR(cmd, pstrdup(cmd->tmp_pool, err));
  }

  c->argv[0] = rule;
  return PR_HANDLED(cmd);
}

/* The account named by every rule must exist; checked once everything is
 * parsed, naming the rule's line.
 */
int mailoauth_notify_check_accounts(server_rec *s, const char **bad_account,
    const char **where) {
  config_rec *c;

  c = find_config(s->conf, CONF_PARAM, "MailOAuthNotify", TRUE);
  while (c != NULL) {
    struct mailoauth_notify_rule *rule = c->argv[0];

    if (rule != NULL) {
      config_rec *acct = mailoauth_account_find(rule->account);

      if (acct == NULL) {
        *bad_account = rule->account;
        *where = rule->key;
        return -1;
      }

      if (rule->from != NULL) {
        unsigned int i;

        for (i = 1; i < acct->argc; i++) {
          const char *arg = acct->argv[i];

          /* Exchange refuses (554 5.2.252 SendAsDenied) a From other than
           * the signed-in mailbox unless Send As was granted: say so now,
           * not at the first upload.
           */
          if (strncasecmp(arg, "mailbox=", 8) == 0 &&
              strcasecmp(arg + 8, rule->from) != 0) {
            pr_log_pri(PR_LOG_NOTICE, "mod_mailoauth: MailOAuthNotify on %s "
              "sends as %s, but account '%s' is mailbox %s: Exchange refuses "
              "this (554 5.2.252 SendAsDenied) unless %s has Send As rights "
              "on %s", rule->key, rule->from, rule->account, arg + 8,
              arg + 8, rule->from);
            mailoauth_log("MailOAuthNotify on %s sends as %s, but account "
              "'%s' is mailbox %s: Exchange refuses this (554 5.2.252 "
              "SendAsDenied) unless it has Send As rights", rule->key,
              rule->from, rule->account, arg + 8);
          }
        }
      }
    }

    c = find_config_next(c, c->next, CONF_PARAM, "MailOAuthNotify", TRUE);
  }

  return 0;
}

/* Upload time
 */

static int mailoauth_notify_matches(const struct mailoauth_notify_rule *rule,
    const char *abs_path) {
  const char *base;

  if (rule->match == NULL) {
    return TRUE;
  }

  /* A pattern with a slash is about where the file is; one without, about
   * what it is called.
   */
  if (strchr(rule->match, '/') != NULL) {
    return fnmatch(rule->match, abs_path, 0) == 0;
  }

  base = strrchr(abs_path, '/');
  return fnmatch(rule->match, base ? base + 1 : abs_path, 0) == 0;
}

static int mailoauth_notify_add_rule(pool *p, cmd_rec *cmd,
    struct mailoauth_event_buf *b, const struct mailoauth_notify_rule *rule,
    const struct stat *st) {
  static const unsigned char tags[3] = {
    MAILOAUTH_EVENT_F_TO, MAILOAUTH_EVENT_F_CC, MAILOAUTH_EVENT_F_BCC
  };
  const char *text;
  char num[64];
  size_t len;
  unsigned int i, j;
  int res = 0;

  res |= mailoauth_event_add_str(b, MAILOAUTH_EVENT_F_ACCOUNT, rule->account);
  res |= mailoauth_event_add_str(b, MAILOAUTH_EVENT_F_RULE, rule->key);
  if (rule->from != NULL) {
    res |= mailoauth_event_add_str(b, MAILOAUTH_EVENT_F_FROM, rule->from);
  }
  if (rule->from_name != NULL) {
    res |= mailoauth_event_add_str(b, MAILOAUTH_EVENT_F_FROM_NAME,
      rule->from_name);
  }

  for (i = 0; i < 3; i++) {
    char **addrs = rule->rcpts[i]->elts;

    for (j = 0; j < rule->rcpts[i]->nelts; j++) {
      res |= mailoauth_event_add_str(b, tags[i], addrs[j]);
    }
  }

  text = mailoauth_notify_render(p, cmd, rule->subject, &len);
  res |= mailoauth_event_add(b, MAILOAUTH_EVENT_F_SUBJECT, text, len);

  if (rule->digest_secs > 0) {
    pr_snprintf(num, sizeof(num), "%ld", rule->digest_secs);
    res |= mailoauth_event_add_str(b, MAILOAUTH_EVENT_F_DIGEST_SECS, num);
    text = mailoauth_notify_render(p, cmd, rule->line, &len);
    res |= mailoauth_event_add(b, MAILOAUTH_EVENT_F_DIGEST_LINE, text, len);

  } else {
    text = mailoauth_notify_render(p, cmd, rule->body, &len);
    res |= mailoauth_event_add(b, MAILOAUTH_EVENT_F_BODY, text, len);

    /* Its line too, should the worker fold it into a digest. */
    if (rule->burst_digest) {
      res |= mailoauth_event_add_str(b, MAILOAUTH_EVENT_F_BURST, "digest");
      text = mailoauth_notify_render(p, cmd, rule->line, &len);
      res |= mailoauth_event_add(b, MAILOAUTH_EVENT_F_DIGEST_LINE, text, len);
    }
  }

  if (rule->attach_max >= 0) {
    pr_snprintf(num, sizeof(num), "%" PR_LU, (pr_off_t) rule->attach_max);
    res |= mailoauth_event_add_str(b, MAILOAUTH_EVENT_F_ATTACH_MAX, num);

    /* Which file this was: the worker attaches only that one. */
    if (st != NULL) {
      pr_snprintf(num, sizeof(num), "%llu", (unsigned long long) st->st_dev);
      res |= mailoauth_event_add_str(b, MAILOAUTH_EVENT_F_DEVICE, num);
      pr_snprintf(num, sizeof(num), "%llu", (unsigned long long) st->st_ino);
      res |= mailoauth_event_add_str(b, MAILOAUTH_EVENT_F_INODE, num);
      pr_snprintf(num, sizeof(num), "%llu",
        (unsigned long long) st->st_size);
      res |= mailoauth_event_add_str(b, MAILOAUTH_EVENT_F_STAT_SIZE, num);
    }
  }

  return res;
}

int mailoauth_notify_records(cmd_rec *cmd, const char *abs_path,
    const unsigned char *base, size_t base_len,
    int (*emit)(const unsigned char *rec, size_t len)) {
  config_rec *dir, *c;
  xaset_t *set;
  const char *store_path;
  struct stat st;
  int emitted = 0, res = 0, have_st = FALSE;

  /* The file was just written, by this user: look at it now, as this
   * user, through the session's own view of the file system (chroot,
   * FSIO modules).  lstat: a name that is already a symlink names
   * nothing worth attaching.
   */
  store_path = pr_table_get(cmd->notes, "mod_xfer.store-path", NULL);
  if (store_path != NULL &&
      pr_fsio_lstat(store_path, &st) == 0 &&
      S_ISREG(st.st_mode)) {
    have_st = TRUE;
  }

  /* The nearest context with rules decides: the <Directory> the file is
   * in, then its enclosing ones, then <Anonymous>, then the server.
   */
  set = NULL;
  for (dir = dir_match_path(cmd->tmp_pool, (char *) abs_path);
       dir != NULL;
       dir = dir->parent) {
    if (dir->subset != NULL &&
        find_config(dir->subset, CONF_PARAM, "MailOAuthNotify",
          FALSE) != NULL) {
      set = dir->subset;
      break;
    }
  }

  if (set == NULL) {
    set = session.anon_config ? session.anon_config->subset :
      main_server->conf;
    if (find_config(set, CONF_PARAM, "MailOAuthNotify", FALSE) == NULL) {
      set = main_server->conf;
    }
  }

  for (c = find_config(set, CONF_PARAM, "MailOAuthNotify", FALSE);
       c != NULL;
       c = find_config_next(c, c->next, CONF_PARAM, "MailOAuthNotify",
         FALSE)) {
    const struct mailoauth_notify_rule *rule = c->argv[0];
    unsigned char *storage;
    struct mailoauth_event_buf b;
    ssize_t len;

    if (rule == NULL) {
      /* MailOAuthNotify none */
      break;
    }

    if (!mailoauth_notify_matches(rule, abs_path)) {
      continue;
    }

    storage = palloc(cmd->tmp_pool, MAILOAUTH_EVENT_MAX_PAYLOAD);
    mailoauth_event_buf_init(&b, storage, MAILOAUTH_EVENT_MAX_PAYLOAD);
    memcpy(storage, base, base_len);
    b.len = base_len;

    if (mailoauth_notify_add_rule(cmd->tmp_pool, cmd, &b, rule,
          have_st ? &st : NULL) != 0 ||
        (len = mailoauth_event_finish(&b)) < 0) {
      pr_trace_msg(trace_channel, 3, "notification record for '%s' too "
        "large", abs_path);
      res = -1;
      continue;
    }

    if (emit(storage, (size_t) len) < 0) {
      res = -1;
    }
    emitted++;
  }

  if (emitted == 0) {
    struct mailoauth_event_buf b;
    unsigned char *storage;
    ssize_t len;

    storage = palloc(cmd->tmp_pool, base_len + 16);
    memcpy(storage, base, base_len);
    mailoauth_event_buf_init(&b, storage, base_len + 16);
    b.len = base_len;
    len = mailoauth_event_finish(&b);
    if (len < 0 ||
        emit(storage, (size_t) len) < 0) {
      res = -1;
    }
  }

  return res;
}
