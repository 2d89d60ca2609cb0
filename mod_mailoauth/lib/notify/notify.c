/*
 * mod_mailoauth - delivering upload notifications from the worker's queue
 */

#include "mailoauth/notify.h"
#include "mailoauth/event.h"
#include "mailoauth/jsonwrap.h"
#include "mailoauth/mailauth.h"
#include "mailoauth/message.h"
#include "mailoauth/safeopen.h"
#include "mailoauth/graph.h"
#include "mailoauth/smtp.h"
#include "mailoauth/spool.h"
#include "mailoauth/trace.h"
#include "mailoauth/worker.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/rand.h>

static const char *trace_channel = "mailoauth.notify";

#define MAILOAUTH_NOTIFY_RATE_MAX       1000
#define MAILOAUTH_NOTIFY_BACKOFF_BASE   5
#define MAILOAUTH_NOTIFY_BACKOFF_CAP    300
#define MAILOAUTH_NOTIFY_MAX_GROUPS     256
#define MAILOAUTH_NOTIFY_DIGEST_MAX     1000

struct mailoauth_notify_account {
  char name[MAILOAUTH_TOKENSTORE_ACCOUNT_MAX + 1];
  struct mailoauth_smtp *smtp;
  struct mailoauth_graph *graph;  /* transport=graph instead of smtp */
  char where[512];              /* the server, for log lines */
  long retry_after;             /* the server asked to wait this long */
  time_t retry_at;              /* backoff after failures */
  time_t blocked_until;         /* rate limit or no token, this pass on */
  unsigned int failures;
  unsigned int rate;            /* mails a minute */
  time_t sends[MAILOAUTH_NOTIFY_RATE_MAX];  /* ring of recent send times */
  unsigned int send_head, send_count;

  /* This pass: mails the rate held back, and mails left queued for any
   * reason (rate, backoff, no token).
   */
  int rate_blocked;
  unsigned int held, waiting;

  /* A send-rate backlog was logged: since when, and the sends then. */
  time_t backlog_since;
  unsigned long sent, backlog_sent;
};

struct mailoauth_notify_group {
  char account[MAILOAUTH_TOKENSTORE_ACCOUNT_MAX + 1];
  char rule[256];
  time_t oldest;
  long window;
  unsigned int n;
  char **names;
};

struct mailoauth_notify {
  struct mailoauth_registry *reg;
  char *queue_dir;
  char *dead_dir;
  unsigned int rate;
  unsigned int naccounts;
  struct mailoauth_notify_account accounts[MAILOAUTH_REGISTRY_MAX];
  time_t next_due;
  struct mailoauth_notify_stats stats;
};

struct mailoauth_notify *mailoauth_notify_create(
    struct mailoauth_registry *reg, const char *queue_dir,
    const char *dead_dir, unsigned int rate_per_minute) {
  struct mailoauth_notify *n;

  n = calloc(1, sizeof(*n));
  if (n == NULL) {
    return NULL;
  }

  n->reg = reg;
  n->queue_dir = strdup(queue_dir);
  n->dead_dir = strdup(dead_dir);
  n->rate = rate_per_minute == 0 ? MAILOAUTH_NOTIFY_DEFAULT_RATE :
    rate_per_minute;
  if (n->rate > MAILOAUTH_NOTIFY_RATE_MAX) {
    n->rate = MAILOAUTH_NOTIFY_RATE_MAX;
  }

  if (n->queue_dir == NULL ||
      n->dead_dir == NULL) {
    mailoauth_notify_destroy(n);
    errno = ENOMEM;
    return NULL;
  }

  return n;
}

void mailoauth_notify_destroy(struct mailoauth_notify *n) {
  unsigned int i;

  if (n == NULL) {
    return;
  }

  for (i = 0; i < n->naccounts; i++) {
    mailoauth_smtp_destroy(n->accounts[i].smtp);
    mailoauth_graph_destroy(n->accounts[i].graph);
  }

  free(n->queue_dir);
  free(n->dead_dir);
  free(n);
}

time_t mailoauth_notify_next_due(const struct mailoauth_notify *n) {
  return n->next_due;
}

void mailoauth_notify_get_stats(const struct mailoauth_notify *n,
    struct mailoauth_notify_stats *st) {
  unsigned int i;

  *st = n->stats;
  st->connections = 0;
  for (i = 0; i < n->naccounts; i++) {
    if (n->accounts[i].graph != NULL) {
      st->connections += mailoauth_graph_connections(n->accounts[i].graph);
    }
    if (n->accounts[i].smtp != NULL) {
      st->connections += mailoauth_smtp_connections(n->accounts[i].smtp);
    }
  }
}

static void mailoauth_notify_due(struct mailoauth_notify *n, time_t when) {
  if (when > 0 &&
      (n->next_due == 0 || when < n->next_due)) {
    n->next_due = when;
  }
}

static struct mailoauth_notify_account *mailoauth_notify_account(
    struct mailoauth_notify *n, const char *name) {
  const struct mailoauth_account *acct;
  struct mailoauth_notify_account *a;
  unsigned int i;

  for (i = 0; i < n->naccounts; i++) {
    if (strcmp(n->accounts[i].name, name) == 0) {
      return &n->accounts[i];
    }
  }

  acct = mailoauth_registry_account(n->reg, name);
  if (acct == NULL ||
      (acct->smtp_url == NULL &&
       acct->transport != MAILOAUTH_ACCOUNT_TRANSPORT_GRAPH) ||
      n->naccounts >= MAILOAUTH_REGISTRY_MAX) {
    return NULL;
  }

  a = &n->accounts[n->naccounts];
  memset(a, 0, sizeof(*a));
  snprintf(a->name, sizeof(a->name), "%s", name);
  a->rate = acct->send_rate ? acct->send_rate : n->rate;
  if (a->rate > MAILOAUTH_NOTIFY_RATE_MAX) {
    a->rate = MAILOAUTH_NOTIFY_RATE_MAX;
  }
  if (acct->transport == MAILOAUTH_ACCOUNT_TRANSPORT_GRAPH) {
    a->graph = mailoauth_graph_create(acct->graph_url, acct->mailbox,
      acct->oauth.ca_file);
    if (a->graph == NULL) {
      return NULL;
    }
    snprintf(a->where, sizeof(a->where), "Microsoft Graph (%s)",
      acct->graph_url);

  } else {
    a->smtp = mailoauth_smtp_create(acct->smtp_url, acct->mailbox,
      acct->oauth.ca_file);
    if (a->smtp == NULL) {
      return NULL;
    }
    snprintf(a->where, sizeof(a->where), "%s", acct->smtp_url);
  }

  n->naccounts++;
  return a;
}

/* Sliding one-minute window: may this account send now? */
static int mailoauth_notify_rate_ok(struct mailoauth_notify *n,
    struct mailoauth_notify_account *a, time_t now) {
  unsigned int oldest;

  if (a->send_count < a->rate) {
    return 1;
  }

  oldest = (a->send_head + MAILOAUTH_NOTIFY_RATE_MAX - a->send_count) %
    MAILOAUTH_NOTIFY_RATE_MAX;
  if (a->sends[oldest] + 60 <= now) {
    a->send_count--;
    return 1;
  }

  a->blocked_until = a->sends[oldest] + 60;
  a->rate_blocked = 1;
  mailoauth_notify_due(n, a->blocked_until);
  return 0;
}

/* How many mails the account may send right now. */
static unsigned int mailoauth_notify_rate_free(
    const struct mailoauth_notify_account *a, time_t now) {
  unsigned int i, recent = 0;

  if (a->retry_at > now ||
      a->blocked_until > now) {
    return 0;
  }

  for (i = 0; i < a->send_count; i++) {
    unsigned int k = (a->send_head + MAILOAUTH_NOTIFY_RATE_MAX - 1 - i) %
      MAILOAUTH_NOTIFY_RATE_MAX;

    if (a->sends[k] + 60 > now) {
      recent++;
    }
  }

  return recent < a->rate ? a->rate - recent : 0;
}

static void mailoauth_notify_rate_note(struct mailoauth_notify_account *a,
    time_t now) {
  a->sends[a->send_head] = now;
  a->send_head = (a->send_head + 1) % MAILOAUTH_NOTIFY_RATE_MAX;
  if (a->send_count < MAILOAUTH_NOTIFY_RATE_MAX) {
    a->send_count++;
  }
}

static int mailoauth_notify_can_send(struct mailoauth_notify *n,
    struct mailoauth_notify_account *a, time_t now) {
  if (a->retry_at > now) {
    mailoauth_notify_due(n, a->retry_at);
    a->waiting++;
    return 0;
  }

  if (a->blocked_until > now) {
    mailoauth_notify_due(n, a->blocked_until);
    a->waiting++;
    a->held += a->rate_blocked ? 1 : 0;
    return 0;
  }

  if (!mailoauth_notify_rate_ok(n, a, now)) {
    a->waiting++;
    a->held++;
    return 0;
  }

  return 1;
}

/* One line when the send rate starts holding mail back (how many, and
 * when the last of them goes at this rate), one when nothing waits any
 * more: a thousand uploads take over half an hour at 30 a minute.
 */
static void mailoauth_notify_backlog(struct mailoauth_notify_account *a,
    time_t now) {
  if (a->held > 0 &&
      a->backlog_since == 0) {
    unsigned int mins = (a->held + a->rate - 1) / a->rate;

    a->backlog_since = now;
    a->backlog_sent = a->sent;
    mailoauth_log("account %s: %u notification%s wait%s for the send rate "
      "(%u a minute); at this rate the last goes out in about %u minute%s",
      a->name, a->held, a->held == 1 ? "" : "s", a->held == 1 ? "s" : "",
      a->rate, mins, mins == 1 ? "" : "s");

  } else if (a->waiting == 0 &&
             a->backlog_since != 0) {
    mailoauth_log("account %s: send-rate backlog cleared: %lu notification%s "
      "sent in %ld s", a->name, a->sent - a->backlog_sent,
      a->sent - a->backlog_sent == 1 ? "" : "s",
      (long) (now - a->backlog_since));
    a->backlog_since = 0;
  }
}

static void mailoauth_notify_remove(struct mailoauth_notify *n,
    const char *name) {
  char path[4096];

  snprintf(path, sizeof(path), "%s/%s", n->queue_dir, name);
  (void) unlink(path);
}

static void mailoauth_notify_bury(struct mailoauth_notify *n,
    const char *name) {
  char from[4096], to[4096];

  snprintf(from, sizeof(from), "%s/%s", n->queue_dir, name);
  snprintf(to, sizeof(to), "%s/%s", n->dead_dir, name);
  if (rename(from, to) < 0) {
    mailoauth_log("cannot move '%s' to '%s': %s", from, to, strerror(errno));
  }
  n->stats.dead++;
}

static time_t mailoauth_notify_event_time(const struct mailoauth_event *ev) {
  char buf[64];

  return (time_t) strtoll(mailoauth_event_str(ev, MAILOAUTH_EVENT_F_TIME, buf,
    sizeof(buf)), NULL, 10);
}

static const char *mailoauth_notify_basename(const char *path) {
  const char *slash = strrchr(path, '/');

  return slash ? slash + 1 : path;
}

static int mailoauth_notify_add_rcpts(struct mailoauth_message *msg,
    const struct mailoauth_event *ev, unsigned char tag, int kind) {
  const struct mailoauth_event_field *f = NULL;
  int added = 0;

  while ((f = mailoauth_event_next(ev, tag, f)) != NULL) {
    char addr[512];

    snprintf(addr, sizeof(addr), "%.*s", (int) f->len, f->value);
    if (mailoauth_message_add_recipient(msg, kind, addr, NULL) == 0) {
      added++;
    }
  }

  return added;
}

/* The envelope and headers every notification of this rule shares. */
static struct mailoauth_message *mailoauth_notify_message(
    const struct mailoauth_account *acct, const struct mailoauth_event *ev,
    char *why, size_t whylen) {
  struct mailoauth_message *msg;
  char from[512], from_name[512];
  int rcpts = 0;

  msg = mailoauth_message_create();
  if (msg == NULL) {
    snprintf(why, whylen, "out of memory");
    return NULL;
  }

  mailoauth_event_str(ev, MAILOAUTH_EVENT_F_FROM, from, sizeof(from));
  mailoauth_event_str(ev, MAILOAUTH_EVENT_F_FROM_NAME, from_name,
    sizeof(from_name));

  if (mailoauth_message_set_from(msg, from[0] ? from : acct->mailbox,
      from_name[0] ? from_name : NULL) < 0) {
    snprintf(why, whylen, "unusable From address '%s'",
      from[0] ? from : acct->mailbox);
    mailoauth_message_free(msg);
    return NULL;
  }

  rcpts += mailoauth_notify_add_rcpts(msg, ev, MAILOAUTH_EVENT_F_TO,
    MAILOAUTH_MESSAGE_TO);
  rcpts += mailoauth_notify_add_rcpts(msg, ev, MAILOAUTH_EVENT_F_CC,
    MAILOAUTH_MESSAGE_CC);
  rcpts += mailoauth_notify_add_rcpts(msg, ev, MAILOAUTH_EVENT_F_BCC,
    MAILOAUTH_MESSAGE_BCC);
  if (rcpts == 0) {
    snprintf(why, whylen, "no usable recipient");
    mailoauth_message_free(msg);
    return NULL;
  }

  (void) mailoauth_message_set_mailer(msg, "mod_mailoauth");
  (void) mailoauth_message_set_date(msg, mailoauth_notify_event_time(ev), 0);
  return msg;
}

/* A retried notification keeps its Message-ID (built from the queue file's
 * name, unique and stable), so a receiving system can recognise a copy sent
 * twice after a crash between the server's 250 and the queue removal.
 */
static void mailoauth_notify_message_id(struct mailoauth_message *msg,
    const char *queue_name, const char *suffix) {
  const char *from = mailoauth_message_get_from(msg), *at;
  char id[512];
  size_t len = strlen(queue_name), slen = strlen(MAILOAUTH_SPOOL_QUEUE_SUFFIX);

  at = from ? strrchr(from, '@') : NULL;
  if (at == NULL) {
    return;
  }

  if (len > slen) {
    len -= slen;
  }

  snprintf(id, sizeof(id), "%.*s%s.mailoauth%s", (int) len, queue_name,
    suffix, at);
  if (mailoauth_message_set_message_id(msg, id) < 0) {
    mailoauth_trace(trace_channel, 5, "Message-ID '%s' refused; a random "
      "one is used", id);
  }
}

/* Attaches the uploaded file if it may go: reached with no symbolic link
 * on the way, still the file the session recorded, a regular file not
 * belonging to the worker's own user (tokens and state are never
 * attachments) and within the rule's limit as it is now.  Otherwise fills
 * note with the line the body gets instead and returns -1.
 */
static int mailoauth_notify_attach(struct mailoauth_message *msg,
    const struct mailoauth_event *ev, char *note, size_t notelen) {
  struct mailoauth_safeopen_expect want;
  char path[4096], vpath[4096], shown[1024];
  const char *name, *why = NULL;
  uint64_t max, dev, ino;
  struct stat st;
  int fd;

  mailoauth_event_str(ev, MAILOAUTH_EVENT_F_PATH, path, sizeof(path));
  mailoauth_event_str(ev, MAILOAUTH_EVENT_F_VPATH, vpath, sizeof(vpath));
  name = mailoauth_notify_basename(vpath[0] ? vpath : path);
  mailoauth_worker_printable(path, strlen(path), shown, sizeof(shown));

  if (mailoauth_event_u64(ev, MAILOAUTH_EVENT_F_ATTACH_MAX, &max) < 0 ||
      max > (uint64_t) INT64_MAX) {
    max = 0;
  }

  memset(&want, 0, sizeof(want));
  if (mailoauth_event_u64(ev, MAILOAUTH_EVENT_F_DEVICE, &dev) < 0 ||
      mailoauth_event_u64(ev, MAILOAUTH_EVENT_F_INODE, &ino) < 0) {
    /* Without the identity there is no telling what the path now names. */
    mailoauth_log("notification for '%s': not attaching the file: the "
      "upload record does not say which file it was", shown);
    snprintf(note, notelen, "The file was not attached: it could not be "
      "verified.");
    return -1;
  }
  want.check_id = 1;
  want.dev = (dev_t) dev;
  want.ino = (ino_t) ino;
  want.check_owner = 1;
  want.refuse_uid = geteuid();

  fd = mailoauth_safeopen_file(AT_FDCWD, path, &want, &st, &why);
  if (fd < 0) {
    mailoauth_log("notification for '%s': not attaching the file: %s%s%s",
      shown, why ? why : "", why ? ": " : "", strerror(errno));
    snprintf(note, notelen, "The file was not attached: %s.",
      errno == ENOENT ? "it is no longer there" :
      "it could not be read safely");
    return -1;
  }

  if (mailoauth_message_attach_fd(msg, fd, name, strlen(name), NULL,
      (off_t) max) < 0) {
    int xerrno = errno;

    (void) close(fd);
    if (xerrno == EFBIG) {
      mailoauth_trace(trace_channel, 5, "'%s' has %lld bytes, more than "
        "the %llu attach= allows", shown, (long long) st.st_size,
        (unsigned long long) max);
      snprintf(note, notelen, "The file was not attached: it is larger "
        "than %llu bytes.", (unsigned long long) max);
    } else {
      mailoauth_log("notification for '%s': not attaching the file: %s",
        shown, strerror(xerrno));
      snprintf(note, notelen, "The file was not attached: it could not be "
        "read.");
    }
    return -1;
  }

  return 0;
}

static struct mailoauth_message *mailoauth_notify_single(
    const struct mailoauth_account *acct, const struct mailoauth_event *ev,
    const char *queue_name, char *why, size_t whylen) {
  struct mailoauth_message *msg;
  const struct mailoauth_event_field *f;
  char note[256];

  msg = mailoauth_notify_message(acct, ev, why, whylen);
  if (msg == NULL) {
    return NULL;
  }

  mailoauth_notify_message_id(msg, queue_name, "");
  f = mailoauth_event_get(ev, MAILOAUTH_EVENT_F_SUBJECT);
  (void) mailoauth_message_set_subject(msg, f ? f->value : "File received",
    f ? f->len : MAILOAUTH_MESSAGE_STRLEN);

  /* Refused, too large, gone or unreadable: the mail still goes, without
   * the copy and saying so.
   */
  note[0] = '\0';
  if (mailoauth_event_get(ev, MAILOAUTH_EVENT_F_ATTACH_MAX) != NULL) {
    (void) mailoauth_notify_attach(msg, ev, note, sizeof(note));
  }

  f = mailoauth_event_get(ev, MAILOAUTH_EVENT_F_BODY);
  if (note[0] != '\0') {
    size_t len = f ? f->len : 0, nlen = strlen(note), sep = len ? 2 : 0;
    char *text = malloc(len + sep + nlen + 1);

    if (text == NULL) {
      snprintf(why, whylen, "out of memory");
      mailoauth_message_free(msg);
      return NULL;
    }
    if (len > 0) {
      memcpy(text, f->value, len);
    }
    memcpy(text + len, "\n\n", sep);
    memcpy(text + len + sep, note, nlen + 1);
    (void) mailoauth_message_set_body(msg, text, len + sep + nlen);
    free(text);

  } else {
    (void) mailoauth_message_set_body(msg, f ? f->value : "",
      f ? f->len : 0);
  }

  if (mailoauth_message_prepare(msg) < 0) {
    snprintf(why, whylen, "cannot build the message: %s", strerror(errno));
    mailoauth_message_free(msg);
    return NULL;
  }

  return msg;
}

/* Sends msg for account; returns the outcome (retrying once on a refused
 * token with a fresh one over a new connection).
 */
static mailoauth_smtp_status_t mailoauth_notify_send(
    struct mailoauth_notify *n, struct mailoauth_notify_account *a,
    struct mailoauth_message *msg, time_t now, char *reply, size_t replylen) {
  struct mailoauth_tokens *tokens;
  mailoauth_smtp_status_t status = MAILOAUTH_SMTP_TEMPFAIL;
  int attempt;

  tokens = mailoauth_registry_tokens(n->reg, a->name);
  for (attempt = 0; attempt < 2; attempt++) {
    mailoauth_oauth_class_t cls = MAILOAUTH_OAUTH_OK;
    const char *token;

    token = tokens ? mailoauth_tokens_get(tokens, now, &cls) : NULL;
    if (token == NULL) {
      /* The token lifecycle logs why; mail waits until there is one. */
      time_t due = tokens ? mailoauth_tokens_next_due(tokens, now) : 0;

      a->blocked_until = due > now ? due : now + 30;
      mailoauth_notify_due(n, a->blocked_until);
      snprintf(reply, replylen, "no access token (%s)",
        mailoauth_oauth_class_name(cls));
      return MAILOAUTH_SMTP_TEMPFAIL;
    }

    a->retry_after = 0;
    if (a->graph != NULL) {
      status = mailoauth_graph_send(a->graph, token, msg, reply, replylen,
        &a->retry_after);
    } else {
      status = mailoauth_smtp_send(a->smtp, token, msg, reply, replylen);
    }
    if (status == MAILOAUTH_SMTP_CONFIG && a->graph != NULL &&
        mailoauth_graph_last_status(a->graph) == 403) {
      /* Graph's permissions travel in the token: once an admin grants
       * Mail.Send, only a new token carries it.
       */
      mailoauth_tokens_invalidate(tokens);
    }
    if (status != MAILOAUTH_SMTP_AUTHFAIL) {
      break;
    }

    /* Perhaps revoked or too close to expiry for the server: one refresh,
     * one new connection, one more try.
     */
    mailoauth_tokens_invalidate(tokens);
    if (a->graph != NULL) {
      mailoauth_graph_reconnect(a->graph);
    } else {
      mailoauth_smtp_reconnect(a->smtp);
    }
  }

  return status;
}

static uint32_t mailoauth_notify_rand(void *data) {
  uint32_t r = 0;

  (void) data;
  if (RAND_bytes((unsigned char *) &r, sizeof(r)) != 1) {
    r = (uint32_t) rand();
  }
  return r;
}

/* Bookkeeping after a send; returns 1 when the queue files may go. */
static int mailoauth_notify_outcome(struct mailoauth_notify *n,
    struct mailoauth_notify_account *a, mailoauth_smtp_status_t status,
    const char *what, const char *rcpt_desc, const char *reply, time_t now) {
  const char *hint;

  hint = mailoauth_mailauth_hint(reply);

  switch (status) {
    case MAILOAUTH_SMTP_SENT:
      if (a->failures > 0) {
        mailoauth_log("notifications through %s (account %s) work again "
          "after %u failed attempts", a->where, a->name, a->failures);
      }
      a->failures = 0;
      a->retry_at = 0;
      mailoauth_notify_rate_note(a, now);
      a->sent++;
      n->stats.sent++;
      mailoauth_log("notification for %s sent to %s through %s", what,
        rcpt_desc, a->where);
      return 1;

    case MAILOAUTH_SMTP_PERMFAIL:
      mailoauth_log("notification for %s refused for good by %s: %s%s%s; "
        "moved to %s", what, a->where, reply, hint ? " - " : "",
        hint ? hint : "", n->dead_dir);
      return -1;

    case MAILOAUTH_SMTP_AUTHFAIL:
    case MAILOAUTH_SMTP_CONFIG:
    case MAILOAUTH_SMTP_TEMPFAIL: {
      long delay_ms;

      a->waiting++;
      if (strncmp(reply, "no access token", 15) == 0) {
        n->stats.deferred++;
        return 0;
      }

      a->failures++;
      /* Graph's Retry-After is the least to wait, however few failures. */
      delay_ms = mailoauth_oauth_backoff_ms(a->failures - 1,
        MAILOAUTH_NOTIFY_BACKOFF_BASE * 1000L,
        MAILOAUTH_NOTIFY_BACKOFF_CAP * 1000L,
        a->retry_after > 0 ? a->retry_after : -1, mailoauth_notify_rand,
        NULL);
      if (delay_ms < 1000) {
        delay_ms = 1000;
      }
      a->retry_at = now + delay_ms / 1000;
      mailoauth_notify_due(n, a->retry_at);
      n->stats.deferred++;

      if (a->failures == 1) {
        mailoauth_log("cannot send notifications through %s (account %s): "
          "%s: %s%s%s; they stay queued and are retried with backoff",
          a->where, a->name, mailoauth_smtp_status_name(status), reply,
          hint ? " - " : "", hint ? hint : "");
      } else {
        mailoauth_trace(trace_channel, 5, "account %s: attempt %u failed "
          "(%s); next in %ld s", a->name, a->failures, reply,
          delay_ms / 1000);
      }
      return 0;
    }
  }

  return 0;
}

static void mailoauth_notify_describe_rcpts(const struct mailoauth_event *ev,
    char *buf, size_t bufsz) {
  static const unsigned char tags[] = {
    MAILOAUTH_EVENT_F_TO, MAILOAUTH_EVENT_F_CC, MAILOAUTH_EVENT_F_BCC
  };
  size_t off = 0, i;

  buf[0] = '\0';
  for (i = 0; i < sizeof(tags); i++) {
    const struct mailoauth_event_field *f = NULL;

    while ((f = mailoauth_event_next(ev, tags[i], f)) != NULL &&
           off < bufsz) {
      off += (size_t) snprintf(buf + off, bufsz - off, "%s%.*s",
        off ? ", " : "", (int) f->len, f->value);
    }
  }
}

static void mailoauth_notify_one(struct mailoauth_notify *n,
    const char *name, const struct mailoauth_event *ev, time_t now) {
  struct mailoauth_notify_account *a;
  const struct mailoauth_account *acct;
  struct mailoauth_message *msg;
  mailoauth_smtp_status_t status;
  char account[128], path[1024], what[1100], rcpts[1024], reply[1024];
  int res;

  mailoauth_event_str(ev, MAILOAUTH_EVENT_F_ACCOUNT, account, sizeof(account));
  mailoauth_event_str(ev, MAILOAUTH_EVENT_F_PATH, path, sizeof(path));
  snprintf(what, sizeof(what), "'%s'",
    mailoauth_worker_printable(path, strlen(path), reply, sizeof(reply)));

  a = mailoauth_notify_account(n, account);
  acct = mailoauth_registry_account(n->reg, account);
  if (a == NULL ||
      acct == NULL) {
    mailoauth_log("notification for %s names account '%s', which is not "
      "configured; moved to %s", what, account, n->dead_dir);
    mailoauth_notify_bury(n, name);
    return;
  }

  if (!mailoauth_notify_can_send(n, a, now)) {
    return;
  }

  msg = mailoauth_notify_single(acct, ev, name, reply, sizeof(reply));
  if (msg == NULL) {
    mailoauth_log("notification for %s cannot be built: %s; moved to %s",
      what, reply, n->dead_dir);
    mailoauth_notify_bury(n, name);
    return;
  }

  mailoauth_notify_describe_rcpts(ev, rcpts, sizeof(rcpts));
  status = mailoauth_notify_send(n, a, msg, now, reply, sizeof(reply));
  mailoauth_message_free(msg);

  res = mailoauth_notify_outcome(n, a, status, what, rcpts, reply, now);
  if (res > 0) {
    mailoauth_notify_remove(n, name);
  } else if (res < 0) {
    mailoauth_notify_bury(n, name);
  }
}

static struct mailoauth_notify_group *mailoauth_notify_group(
    struct mailoauth_notify_group *groups, unsigned int *ngroups,
    const struct mailoauth_event *ev) {
  char account[MAILOAUTH_TOKENSTORE_ACCOUNT_MAX + 1], rule[256], buf[32];
  struct mailoauth_notify_group *g;
  unsigned int i;

  mailoauth_event_str(ev, MAILOAUTH_EVENT_F_ACCOUNT, account, sizeof(account));
  mailoauth_event_str(ev, MAILOAUTH_EVENT_F_RULE, rule, sizeof(rule));

  for (i = 0; i < *ngroups; i++) {
    if (strcmp(groups[i].account, account) == 0 &&
        strcmp(groups[i].rule, rule) == 0) {
      return &groups[i];
    }
  }

  if (*ngroups >= MAILOAUTH_NOTIFY_MAX_GROUPS) {
    return NULL;
  }

  g = &groups[(*ngroups)++];
  memset(g, 0, sizeof(*g));
  snprintf(g->account, sizeof(g->account), "%s", account);
  snprintf(g->rule, sizeof(g->rule), "%s", rule);
  g->window = strtol(mailoauth_event_str(ev, MAILOAUTH_EVENT_F_DIGEST_SECS,
    buf, sizeof(buf)), NULL, 10);
  g->names = calloc(MAILOAUTH_NOTIFY_DIGEST_MAX, sizeof(char *));
  if (g->names == NULL) {
    (*ngroups)--;
    return NULL;
  }
  return g;
}

/* One mail for a whole digest window: the first upload's envelope and
 * subject, then one line per upload.
 */
static void mailoauth_notify_digest(struct mailoauth_notify *n,
    struct mailoauth_notify_group *g, int burst, time_t now) {
  struct mailoauth_notify_account *a;
  const struct mailoauth_account *acct;
  struct mailoauth_message *msg = NULL;
  struct mailoauth_event ev;
  unsigned char *first = NULL;
  char **lines;
  char reply[1024], rcpts[1024], what[512], subject[2200], intro[160];
  const struct mailoauth_event_field *f;
  mailoauth_smtp_status_t status;
  unsigned int i, nlines = 0;
  size_t len;
  int res;

  a = mailoauth_notify_account(n, g->account);
  acct = mailoauth_registry_account(n->reg, g->account);
  if (a == NULL ||
      acct == NULL) {
    mailoauth_log("digest names account '%s', which is not configured; "
      "%u events moved to %s", g->account, g->n, n->dead_dir);
    for (i = 0; i < g->n; i++) {
      mailoauth_notify_bury(n, g->names[i]);
    }
    return;
  }

  if (!mailoauth_notify_can_send(n, a, now)) {
    return;
  }

  lines = calloc(g->n, sizeof(char *));
  if (lines == NULL) {
    return;
  }

  for (i = 0; i < g->n; i++) {
    unsigned char *data = mailoauth_queue_read(n->queue_dir, g->names[i],
      &len);

    if (data == NULL ||
        mailoauth_event_parse(data, len, &ev) <= 0) {
      free(data);
      continue;
    }

    f = mailoauth_event_get(&ev, MAILOAUTH_EVENT_F_DIGEST_LINE);
    if (f == NULL) {
      f = mailoauth_event_get(&ev, MAILOAUTH_EVENT_F_PATH);
    }
    lines[nlines] = f ? strndup(f->value, f->len) : strdup("(upload)");
    if (lines[nlines] != NULL) {
      nlines++;
    }

    if (first == NULL) {
      first = data;
    } else {
      free(data);
    }
  }

  if (first != NULL &&
      mailoauth_event_parse(first, MAILOAUTH_EVENT_MAX_PAYLOAD + 64, &ev) > 0) {
    msg = mailoauth_notify_message(acct, &ev, reply, sizeof(reply));
  }

  if (msg != NULL) {
    char buf[2048];

    mailoauth_event_str(&ev, MAILOAUTH_EVENT_F_SUBJECT, buf, sizeof(buf));
    snprintf(subject, sizeof(subject), "%s (%u uploads)",
      buf[0] ? buf : "Files received", nlines);
    if (burst) {
      snprintf(intro, sizeof(intro), "%u uploads arrived, more than the "
        "%u a minute this mailbox may send; here they are in one mail:",
        nlines, a->rate);
    } else {
      snprintf(intro, sizeof(intro), "%u uploads arrived:", nlines);
    }
    (void) mailoauth_message_set_subject(msg, subject,
      MAILOAUTH_MESSAGE_STRLEN);
    (void) mailoauth_message_set_digest_body(msg, intro,
      (const char *const *) lines, nlines, NULL);
    (void) mailoauth_message_set_date(msg, now, 0);
    mailoauth_notify_message_id(msg, g->names[0], ".digest");
    if (mailoauth_message_prepare(msg) < 0) {
      mailoauth_message_free(msg);
      msg = NULL;
    }
  }

  if (msg != NULL) {
    mailoauth_notify_describe_rcpts(&ev, rcpts, sizeof(rcpts));
    if (burst) {
      snprintf(what, sizeof(what), "a digest of %u uploads (burst=digest: "
        "the send-rate backlog of the rule at %s, folded into one mail)",
        nlines, g->rule);
    } else {
      snprintf(what, sizeof(what), "a digest of %u uploads", nlines);
    }
    status = mailoauth_notify_send(n, a, msg, now, reply, sizeof(reply));
    res = mailoauth_notify_outcome(n, a, status, what, rcpts, reply, now);

    for (i = 0; i < g->n && res != 0; i++) {
      if (res > 0) {
        mailoauth_notify_remove(n, g->names[i]);
      } else {
        mailoauth_notify_bury(n, g->names[i]);
      }
    }
    mailoauth_message_free(msg);

  } else {
    mailoauth_log("digest for account %s cannot be built; %u events moved "
      "to %s", g->account, g->n, n->dead_dir);
    for (i = 0; i < g->n; i++) {
      mailoauth_notify_bury(n, g->names[i]);
    }
  }

  for (i = 0; i < nlines; i++) {
    free(lines[i]);
  }
  free(lines);
  free(first);
}

static void mailoauth_notify_one_file(struct mailoauth_notify *n,
    const char *name, time_t now) {
  struct mailoauth_event ev;
  unsigned char *data;
  size_t len = 0;

  data = mailoauth_queue_read(n->queue_dir, name, &len);
  if (data != NULL &&
      mailoauth_event_parse(data, len, &ev) > 0) {
    mailoauth_notify_one(n, name, &ev, now);
  }
  free(data);
}

/* burst=digest: the uploads of one rule go one mail each while the
 * account's send rate lets them all go now; when more wait than that,
 * all of them go as one digest instead of waiting in line.
 */
static void mailoauth_notify_burst(struct mailoauth_notify *n,
    struct mailoauth_notify_group *g, time_t now) {
  struct mailoauth_notify_account *a;
  unsigned int i;

  a = mailoauth_notify_account(n, g->account);
  if (a != NULL &&
      (g->n == 1 || g->n <= mailoauth_notify_rate_free(a, now))) {
    for (i = 0; i < g->n; i++) {
      mailoauth_notify_one_file(n, g->names[i], now);
    }
    return;
  }

  mailoauth_trace(trace_channel, 5, "account %s: %u notifications of the "
    "rule at %s wait for the send rate: one digest (burst=digest)",
    g->account, g->n, g->rule);
  mailoauth_notify_digest(n, g, 1, now);
}

static void mailoauth_notify_group_free(struct mailoauth_notify_group *g) {
  unsigned int j;

  for (j = 0; j < g->n; j++) {
    free(g->names[j]);
  }
  free(g->names);
}

static int mailoauth_notify_select(const struct dirent *d) {
  size_t len = strlen(d->d_name), slen = strlen(MAILOAUTH_SPOOL_QUEUE_SUFFIX);

  return d->d_name[0] != '.' && len > slen &&
    strcmp(d->d_name + len - slen, MAILOAUTH_SPOOL_QUEUE_SUFFIX) == 0;
}

int mailoauth_notify_process(struct mailoauth_notify *n, time_t now) {
  struct mailoauth_notify_group *groups, *bursts;
  struct dirent **names = NULL;
  unsigned int ngroups = 0, nbursts = 0, i;
  unsigned long sent_before = n->stats.sent;
  int count, k;

  n->next_due = 0;
  for (i = 0; i < n->naccounts; i++) {
    n->accounts[i].blocked_until = 0;
    n->accounts[i].rate_blocked = 0;
    n->accounts[i].held = 0;
    n->accounts[i].waiting = 0;
  }

  count = scandir(n->queue_dir, &names, mailoauth_notify_select, alphasort);
  if (count < 0) {
    return -1;
  }

  groups = calloc(MAILOAUTH_NOTIFY_MAX_GROUPS, sizeof(*groups));
  bursts = calloc(MAILOAUTH_NOTIFY_MAX_GROUPS, sizeof(*bursts));

  for (k = 0; k < count; k++) {
    struct mailoauth_event ev;
    unsigned char *data;
    size_t len = 0;
    char buf[32];

    data = mailoauth_queue_read(n->queue_dir, names[k]->d_name, &len);
    if (data == NULL) {
      continue;
    }

    if (mailoauth_event_parse(data, len, &ev) <= 0) {
      mailoauth_log("queued event %s is damaged; moved to %s",
        names[k]->d_name, n->dead_dir);
      mailoauth_notify_bury(n, names[k]->d_name);

    } else if (mailoauth_event_get(&ev, MAILOAUTH_EVENT_F_ACCOUNT) == NULL) {
      char id[512];

      /* No rule matched this upload: the log line is all there is. */
      snprintf(id, sizeof(id), "%.*s", (int) (strlen(names[k]->d_name) -
        strlen(MAILOAUTH_SPOOL_QUEUE_SUFFIX)), names[k]->d_name);
      (void) mailoauth_worker_log_event(id, data, len, NULL);
      mailoauth_notify_remove(n, names[k]->d_name);

    } else if (strtol(mailoauth_event_str(&ev, MAILOAUTH_EVENT_F_DIGEST_SECS,
                 buf, sizeof(buf)), NULL, 10) > 0 &&
               groups != NULL) {
      struct mailoauth_notify_group *g = mailoauth_notify_group(groups,
        &ngroups, &ev);
      time_t when = mailoauth_notify_event_time(&ev);

      if (g != NULL &&
          g->n < MAILOAUTH_NOTIFY_DIGEST_MAX) {
        g->names[g->n++] = strdup(names[k]->d_name);
        if (g->oldest == 0 || when < g->oldest) {
          g->oldest = when;
        }
      }

    } else if (mailoauth_event_get(&ev, MAILOAUTH_EVENT_F_BURST) != NULL &&
               bursts != NULL) {
      struct mailoauth_notify_group *g = mailoauth_notify_group(bursts,
        &nbursts, &ev);

      if (g != NULL &&
          g->n < MAILOAUTH_NOTIFY_DIGEST_MAX) {
        g->names[g->n++] = strdup(names[k]->d_name);
      }

    } else {
      mailoauth_notify_one(n, names[k]->d_name, &ev, now);
    }

    free(data);
  }

  /* After the single mails: they were there first. */
  for (i = 0; bursts != NULL && i < nbursts; i++) {
    mailoauth_notify_burst(n, &bursts[i], now);
    mailoauth_notify_group_free(&bursts[i]);
  }

  for (i = 0; groups != NULL && i < ngroups; i++) {
    struct mailoauth_notify_group *g = &groups[i];

    if (g->oldest + g->window <= now ||
        g->n >= MAILOAUTH_NOTIFY_DIGEST_MAX) {
      mailoauth_notify_digest(n, g, 0, now);
    } else {
      mailoauth_notify_due(n, g->oldest + g->window);
    }

    mailoauth_notify_group_free(g);
  }

  for (i = 0; i < n->naccounts; i++) {
    mailoauth_notify_backlog(&n->accounts[i], now);
  }

  free(groups);
  free(bursts);
  for (k = 0; k < count; k++) {
    free(names[k]);
  }
  free(names);

  return (int) (n->stats.sent - sent_before);
}

int mailoauth_notify_retry_dead(struct mailoauth_notify *n, time_t now) {
  int moved = mailoauth_queue_move_all(n->dead_dir, n->queue_dir);

  if (moved > 0) {
    mailoauth_log("%d dead letter%s moved back to the queue (%s) on request",
      moved, moved == 1 ? "" : "s", n->queue_dir);
    mailoauth_notify_due(n, now);
  }
  return moved;
}

struct json_t *mailoauth_notify_status(const struct mailoauth_notify *n,
    time_t now) {
  time_t oldest = 0;
  int queued, dead;

  (void) now;
  queued = mailoauth_queue_oldest(n->queue_dir, &oldest);
  dead = mailoauth_queue_count(n->dead_dir);

  return json_pack("{s:I, s:I, s:I, s:i, s:i, s:o}",
    "sent", (json_int_t) n->stats.sent,
    "failed", (json_int_t) n->stats.deferred,
    "dead_lettered", (json_int_t) n->stats.dead,
    "queued", queued < 0 ? 0 : queued,
    "dead_letters", dead < 0 ? 0 : dead,
    "oldest_queued", oldest != 0 ? json_integer((json_int_t) oldest) :
      json_null());
}
