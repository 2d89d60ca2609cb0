/*
 * mod_mailoauth - IMAP IDLE watchers (see imapidle.h)
 */

#include "mailoauth/imapidle.h"
#include "mailoauth/imap.h"
#include "mailoauth/mailauth.h"
#include "mailoauth/trace.h"

#include <curl/curl.h>
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

static const char *trace_channel = "mailoauth.imap";

/* The line reader
 */

void mailoauth_imapidle_reader_init(struct mailoauth_imapidle_reader *r) {
  memset(r, 0, sizeof(*r));
}

/* "{123}" or "{123+}" at the end of a line: the size of the literal that
 * follows, or -1.
 */
static int imapidle_literal(const char *s, size_t len, uint64_t *size) {
  size_t i;
  uint64_t n = 0;

  if (len < 3 || s[len - 1] != '}') {
    return -1;
  }
  len--;
  if (s[len - 1] == '+') {
    len--;
  }
  i = len;
  while (i > 0 && s[i - 1] >= '0' && s[i - 1] <= '9') {
    i--;
  }
  if (i == len || i == 0 || s[i - 1] != '{' || len - i > 19) {
    return -1;
  }
  for (; i < len; i++) {
    n = n * 10 + (uint64_t) (s[i] - '0');
  }
  *size = n;
  return 0;
}

static void imapidle_tail(struct mailoauth_imapidle_reader *r, char c) {
  if (r->tail_len == sizeof(r->tail)) {
    memmove(r->tail, r->tail + 1, sizeof(r->tail) - 1);
    r->tail_len--;
  }
  r->tail[r->tail_len++] = c;
}

int mailoauth_imapidle_feed(struct mailoauth_imapidle_reader *r,
    const char *data, size_t len,
    int (*fn)(const char *line, size_t len, int cont, void *arg), void *arg) {
  size_t i = 0;

  while (i < len) {
    char c;
    int res, cont;
    size_t n;

    if (r->literal > 0) {
      uint64_t skip = len - i;

      if (skip > r->literal) {
        skip = r->literal;
      }
      r->literal -= skip;
      i += (size_t) skip;
      continue;
    }

    c = data[i++];
    if (c != '\n') {
      if (r->len < MAILOAUTH_IMAPIDLE_LINE_MAX) {
        r->line[r->len++] = c;
      } else {
        r->clipped = 1;
        imapidle_tail(r, c);
      }
      continue;
    }

    n = r->len;
    if (!r->clipped && n > 0 && r->line[n - 1] == '\r') {
      n--;
    }
    r->line[n] = '\0';

    /* A literal's size is at the very end, which a clipped line kept in
     * its tail.
     */
    if (r->clipped) {
      size_t t = r->tail_len;

      if (t > 0 && r->tail[t - 1] == '\r') {
        t--;
      }
      if (imapidle_literal(r->tail, t, &r->literal) < 0) {
        r->literal = 0;
      }
    } else if (imapidle_literal(r->line, n, &r->literal) < 0) {
      r->literal = 0;
    }

    cont = r->cont;
    r->cont = r->literal > 0;
    r->len = 0;
    r->clipped = 0;
    r->tail_len = 0;

    res = fn(r->line, n, cont, arg);
    if (res != 0) {
      return res;
    }
  }

  return 0;
}

/* Line classification
 */

static int imapidle_recent(const char *line, size_t len) {
  size_t i = 2;
  int nonzero = 0;

  if (len < 4 || line[0] != '*' || line[1] != ' ') {
    return 0;
  }
  while (i < len && line[i] >= '0' && line[i] <= '9') {
    if (line[i] != '0') {
      nonzero = 1;
    }
    i++;
  }
  if (i == 2 || i >= len || line[i] != ' ') {
    return 0;
  }
  i++;
  return nonzero && len - i == 6 && strncasecmp(line + i, "RECENT", 6) == 0;
}

void mailoauth_imapidle_classify(const char *line, size_t len,
    const char *tag, struct mailoauth_imapidle_line *out) {
  struct mailoauth_imap_resp r;
  size_t taglen = tag ? strlen(tag) : 0;

  memset(out, 0, sizeof(*out));
  out->kind = MAILOAUTH_IMAPIDLE_L_OTHER;
  if (line == NULL || len == 0) {
    return;
  }

  if (line[0] == '+') {
    out->kind = MAILOAUTH_IMAPIDLE_L_CONTINUE;
    return;
  }

  if (imapidle_recent(line, len)) {
    out->kind = MAILOAUTH_IMAPIDLE_L_NEWMAIL;
    return;
  }

  mailoauth_imap_resp_init(&r);
  (void) mailoauth_imap_parse_line(&r, line, len);

  if (r.have & MAILOAUTH_IMAP_HAVE_CAPS) {
    out->has_caps = 1;
    out->idle = (r.caps & MAILOAUTH_IMAP_CAP_IDLE) != 0;
  }

  if (line[0] == '*') {
    if (r.have & MAILOAUTH_IMAP_HAVE_EXISTS) {
      out->kind = MAILOAUTH_IMAPIDLE_L_NEWMAIL;
    } else if (r.bye) {
      out->kind = MAILOAUTH_IMAPIDLE_L_BYE;
      snprintf(out->text, sizeof(out->text), "%s", r.bye_text);
    } else if (out->has_caps) {
      out->kind = MAILOAUTH_IMAPIDLE_L_CAPS;
    }
    return;
  }

  if ((r.have & MAILOAUTH_IMAP_HAVE_TAGGED) &&
      taglen > 0 && len > taglen && line[taglen] == ' ' &&
      strncmp(line, tag, taglen) == 0) {
    out->kind = MAILOAUTH_IMAPIDLE_L_TAGGED;
    snprintf(out->status, sizeof(out->status), "%s", r.tagged_status);
    snprintf(out->text, sizeof(out->text), "%s", r.tagged_text);
  }
}

/* The watcher
 */

enum imapidle_state {
  IDLE_CLOSED = 0,
  IDLE_CAPA,                    /* CAPABILITY sent */
  IDLE_EXAMINE,                 /* EXAMINE sent */
  IDLE_START,                   /* IDLE sent, waiting for "+" */
  IDLE_IDLING,
  IDLE_DONE                     /* DONE sent, waiting for IDLE's OK */
};

struct mailoauth_imapidle {
  char *base_url;
  char *user;
  char *ca_file;
  char *quoted;                 /* the folder, wire form, quoted */
  char *shown;                  /* the folder as configured (logs) */
  CURL *curl;
  curl_socket_t sock;
  enum imapidle_state state;
  unsigned int tagn;
  char tag[16];                 /* of the command in flight */
  int has_idle;                 /* the capabilities list IDLE */
  int fresh;                    /* not idled yet on this connection */
  unsigned int renew_s;
  long long deadline_ms;        /* an answer is due (0: none) */
  long long idle_since_ms;
  unsigned events;              /* gathered while reading */
  int status;                   /* set while reading: not OK stops */
  struct mailoauth_imapidle_reader reader;
  char reply[300];
};

static char *imapidle_strdup(const char *s) {
  return s ? strdup(s) : NULL;
}

struct mailoauth_imapidle *mailoauth_imapidle_create(const char *base_url,
    const char *folder, const char *user, const char *ca_file) {
  struct mailoauth_imapidle *w;
  char wire[MAILOAUTH_IMAP_NAME_MAX + 1];
  char quoted[2 * MAILOAUTH_IMAP_NAME_MAX + 3];

  if (base_url == NULL || folder == NULL || user == NULL || *user == '\0' ||
      mailoauth_imap_folder_name(folder, wire, sizeof(wire)) < 0 ||
      mailoauth_imap_quote(wire, quoted, sizeof(quoted)) < 0) {
    errno = EINVAL;
    return NULL;
  }

  w = calloc(1, sizeof(*w));
  if (w == NULL) {
    return NULL;
  }
  w->sock = CURL_SOCKET_BAD;
  w->renew_s = MAILOAUTH_IMAPIDLE_RENEW_S;
  w->base_url = strdup(base_url);
  w->user = strdup(user);
  w->ca_file = imapidle_strdup(ca_file);
  w->quoted = strdup(quoted);
  w->shown = strdup(folder);
  if (w->base_url == NULL || w->user == NULL || w->quoted == NULL ||
      w->shown == NULL || (ca_file != NULL && w->ca_file == NULL)) {
    mailoauth_imapidle_destroy(w);
    errno = ENOMEM;
    return NULL;
  }
  return w;
}

void mailoauth_imapidle_destroy(struct mailoauth_imapidle *w) {
  if (w == NULL) {
    return;
  }
  mailoauth_imapidle_close(w);
  free(w->base_url);
  free(w->user);
  free(w->ca_file);
  free(w->quoted);
  free(w->shown);
  free(w);
}

void mailoauth_imapidle_set_renew(struct mailoauth_imapidle *w,
    unsigned int secs) {
  if (w != NULL && secs > 0) {
    w->renew_s = secs;
  }
}

void mailoauth_imapidle_close(struct mailoauth_imapidle *w) {
  if (w->curl != NULL) {
    if (w->sock != CURL_SOCKET_BAD) {
      char bye[48];
      size_t n = 0;

      /* Goodbye without waiting for the answer; then the socket is shut,
       * because libcurl's cleanup would send a LOGOUT of its own in the
       * middle of our conversation and wait for an answer that its tag
       * never gets.
       */
      snprintf(bye, sizeof(bye), "%si%u LOGOUT\r\n",
        w->state == IDLE_IDLING ? "DONE\r\n" : "", ++w->tagn);
      (void) curl_easy_send(w->curl, bye, strlen(bye), &n);
      (void) shutdown(w->sock, SHUT_RDWR);
    }
    curl_easy_cleanup(w->curl);
    w->curl = NULL;
  }
  w->sock = CURL_SOCKET_BAD;
  w->state = IDLE_CLOSED;
  w->deadline_ms = 0;
  mailoauth_imapidle_reader_init(&w->reader);
}

int mailoauth_imapidle_fd(const struct mailoauth_imapidle *w) {
  return (w != NULL && w->state != IDLE_CLOSED) ? (int) w->sock : -1;
}

int mailoauth_imapidle_idling(const struct mailoauth_imapidle *w) {
  return w != NULL && w->state == IDLE_IDLING;
}

const char *mailoauth_imapidle_reply(const struct mailoauth_imapidle *w) {
  return w->reply;
}

long long mailoauth_imapidle_next_ms(const struct mailoauth_imapidle *w) {
  if (w == NULL || w->state == IDLE_CLOSED) {
    return 0;
  }
  if (w->state == IDLE_IDLING) {
    return w->idle_since_ms + (long long) w->renew_s * 1000;
  }
  return w->deadline_ms;
}

static int imapidle_fail(struct mailoauth_imapidle *w, int status,
    const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int imapidle_fail(struct mailoauth_imapidle *w, int status,
    const char *fmt, ...) {
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(w->reply, sizeof(w->reply), fmt, ap);
  va_end(ap);
  return status;
}

/* Sends one line whole; the socket is non-blocking, and a command is far
 * smaller than a socket buffer, so waiting is rare and short.
 */
static int imapidle_send(struct mailoauth_imapidle *w, const char *text) {
  size_t off = 0, len = strlen(text);

  mailoauth_trace(trace_channel, 9, "%s %s: C: %.*s", w->base_url, w->shown,
    (int) (len > 2 ? len - 2 : len), text);
  while (off < len) {
    size_t n = 0;
    CURLcode rc = curl_easy_send(w->curl, text + off, len - off, &n);

    if (rc == CURLE_AGAIN) {
      struct pollfd pfd;

      pfd.fd = w->sock;
      pfd.events = POLLOUT;
      if (poll(&pfd, 1, 5000) <= 0) {
        return imapidle_fail(w, MAILOAUTH_IMAPIDLE_FAIL,
          "cannot send to %s: timed out", w->base_url);
      }
      continue;
    }
    if (rc != CURLE_OK) {
      return imapidle_fail(w, MAILOAUTH_IMAPIDLE_FAIL, "cannot send to %s: %s",
        w->base_url, curl_easy_strerror(rc));
    }
    off += n;
  }
  return MAILOAUTH_IMAPIDLE_OK;
}

static int imapidle_command(struct mailoauth_imapidle *w, const char *cmd,
    const char *arg, enum imapidle_state next, long long now_ms) {
  char line[2 * MAILOAUTH_IMAP_NAME_MAX + 64];

  snprintf(w->tag, sizeof(w->tag), "i%u", ++w->tagn);
  snprintf(line, sizeof(line), "%s %s%s%s\r\n", w->tag, cmd, arg ? " " : "",
    arg ? arg : "");
  w->state = next;
  w->deadline_ms = now_ms + MAILOAUTH_IMAPIDLE_ANSWER_MS;
  return imapidle_send(w, line);
}

int mailoauth_imapidle_connect(struct mailoauth_imapidle *w,
    const char *token, long long now_ms) {
  struct mailoauth_mailauth_config cfg;
  char err[256], curl_err[CURL_ERROR_SIZE];
  curl_socket_t sock = CURL_SOCKET_BAD;
  CURLcode rc;

  mailoauth_imapidle_close(w);
  w->reply[0] = '\0';
  w->has_idle = 0;
  w->fresh = 1;

  w->curl = curl_easy_init();
  if (w->curl == NULL) {
    return imapidle_fail(w, MAILOAUTH_IMAPIDLE_FAIL, "out of memory");
  }

  memset(&cfg, 0, sizeof(cfg));
  cfg.url = w->base_url;
  cfg.username = w->user;
  cfg.bearer = token;
  cfg.ca_file = w->ca_file;
  /* The login blocks the worker's loop: a server that does not answer
   * must not hold notifications back for long.
   */
  cfg.connect_timeout_ms = MAILOAUTH_IMAPIDLE_LOGIN_MS / 2;
  cfg.timeout_ms = MAILOAUTH_IMAPIDLE_LOGIN_MS;
  if (mailoauth_mailauth_setup(w->curl, &cfg, NULL, err, sizeof(err)) < 0) {
    mailoauth_imapidle_close(w);
    return imapidle_fail(w, MAILOAUTH_IMAPIDLE_CONFIG, "%s", err);
  }

  /* libcurl runs the connect phase only (greeting, CAPABILITY, STARTTLS,
   * AUTHENTICATE) and leaves the logged-in connection to us.
   */
  curl_err[0] = '\0';
  curl_easy_setopt(w->curl, CURLOPT_CONNECT_ONLY, 1L);
  curl_easy_setopt(w->curl, CURLOPT_ERRORBUFFER, curl_err);
  rc = curl_easy_perform(w->curl);
  curl_easy_setopt(w->curl, CURLOPT_ERRORBUFFER, NULL);
  /* The bearer token stays in libcurl's copy of the options only as long
   * as the handle; nothing after the login needs it.
   */
  curl_easy_setopt(w->curl, CURLOPT_XOAUTH2_BEARER, NULL);
  if (rc != CURLE_OK) {
    int status = rc == CURLE_LOGIN_DENIED ? MAILOAUTH_IMAPIDLE_AUTHFAIL :
      MAILOAUTH_IMAPIDLE_FAIL;

    mailoauth_imapidle_close(w);
    return imapidle_fail(w, status, "cannot log in to %s as %s: %s",
      w->base_url, w->user, curl_err[0] ? curl_err : curl_easy_strerror(rc));
  }

  if (curl_easy_getinfo(w->curl, CURLINFO_ACTIVESOCKET, &sock) != CURLE_OK ||
      sock == CURL_SOCKET_BAD) {
    mailoauth_imapidle_close(w);
    return imapidle_fail(w, MAILOAUTH_IMAPIDLE_FAIL,
      "no connection to %s after the login", w->base_url);
  }
  w->sock = sock;

  mailoauth_trace(trace_channel, 7, "%s %s: logged in as %s", w->base_url,
    w->shown, w->user);
  /* The login's own capability answer is libcurl's: ask again. */
  if (imapidle_command(w, "CAPABILITY", NULL, IDLE_CAPA, now_ms) !=
      MAILOAUTH_IMAPIDLE_OK) {
    mailoauth_imapidle_close(w);
    return MAILOAUTH_IMAPIDLE_FAIL;
  }
  return MAILOAUTH_IMAPIDLE_OK;
}

struct imapidle_ctx {
  struct mailoauth_imapidle *w;
  long long now_ms;
};

/* One server line; non-zero stops reading (w->status says why). */
static int imapidle_line(const char *line, size_t len, int cont,
    void *arg) {
  struct imapidle_ctx *ctx = arg;
  struct mailoauth_imapidle *w = ctx->w;
  struct mailoauth_imapidle_line l;
  int tagged_ok;

  if (cont) {
    return 0;
  }

  mailoauth_imapidle_classify(line, len, w->tag, &l);
  mailoauth_trace(trace_channel, 9, "%s %s: S: %.*s", w->base_url, w->shown,
    (int) (len > 200 ? 200 : len), line);

  if (l.has_caps && l.idle) {
    w->has_idle = 1;
  }

  switch (l.kind) {
    case MAILOAUTH_IMAPIDLE_L_NEWMAIL:
      /* EXAMINE's own answer counts what is there already. */
      if (w->state != IDLE_EXAMINE) {
        w->events |= MAILOAUTH_IMAPIDLE_EV_NEWMAIL;
      }
      return 0;

    case MAILOAUTH_IMAPIDLE_L_BYE:
      w->status = imapidle_fail(w, MAILOAUTH_IMAPIDLE_FAIL,
        "%s ended the session: %s", w->base_url, l.text);
      return 1;

    case MAILOAUTH_IMAPIDLE_L_CONTINUE:
      if (w->state == IDLE_START) {
        w->state = IDLE_IDLING;
        w->deadline_ms = 0;
        w->idle_since_ms = ctx->now_ms;
        if (w->fresh) {
          w->fresh = 0;
          w->events |= MAILOAUTH_IMAPIDLE_EV_IDLING;
        }
        mailoauth_trace(trace_channel, 7, "%s %s: idling", w->base_url,
          w->shown);
      }
      return 0;

    case MAILOAUTH_IMAPIDLE_L_TAGGED:
      break;

    default:
      return 0;
  }

  tagged_ok = strcmp(l.status, "OK") == 0;
  w->deadline_ms = 0;

  switch (w->state) {
    case IDLE_CAPA:
      if (!tagged_ok || !w->has_idle) {
        w->status = imapidle_fail(w, MAILOAUTH_IMAPIDLE_NOIDLE,
          "%s does not offer IDLE", w->base_url);
        return 1;
      }
      w->status = imapidle_command(w, "EXAMINE", w->quoted, IDLE_EXAMINE,
        ctx->now_ms);
      break;

    case IDLE_EXAMINE:
      if (!tagged_ok) {
        w->status = imapidle_fail(w, MAILOAUTH_IMAPIDLE_FAIL,
          "cannot open folder '%s' on %s: %s %s", w->shown, w->base_url,
          l.status, l.text);
        return 1;
      }
      w->status = imapidle_command(w, "IDLE", NULL, IDLE_START, ctx->now_ms);
      break;

    case IDLE_START:
      w->status = imapidle_fail(w, !tagged_ok ? MAILOAUTH_IMAPIDLE_NOIDLE :
        MAILOAUTH_IMAPIDLE_FAIL, "%s refused IDLE: %s %s", w->base_url,
        l.status, l.text);
      return 1;

    case IDLE_IDLING:
    case IDLE_DONE:
      /* IDLE ended (by our DONE, or by the server): start it again. */
      if (!tagged_ok) {
        w->status = imapidle_fail(w, MAILOAUTH_IMAPIDLE_FAIL,
          "%s ended IDLE: %s %s", w->base_url, l.status, l.text);
        return 1;
      }
      w->status = imapidle_command(w, "IDLE", NULL, IDLE_START, ctx->now_ms);
      break;

    default:
      break;
  }

  return w->status != MAILOAUTH_IMAPIDLE_OK;
}

int mailoauth_imapidle_step(struct mailoauth_imapidle *w, long long now_ms,
    unsigned *events) {
  struct imapidle_ctx ctx;
  char buf[4096];
  int status = MAILOAUTH_IMAPIDLE_OK;

  if (w->state == IDLE_CLOSED) {
    return imapidle_fail(w, MAILOAUTH_IMAPIDLE_FAIL, "not connected");
  }

  ctx.w = w;
  ctx.now_ms = now_ms;
  w->events = 0;
  w->status = MAILOAUTH_IMAPIDLE_OK;

  /* Until libcurl says AGAIN: TLS may hold decrypted bytes that the socket
   * no longer shows as readable.
   */
  for (;;) {
    size_t n = 0;
    CURLcode rc = curl_easy_recv(w->curl, buf, sizeof(buf), &n);

    if (rc == CURLE_AGAIN) {
      break;
    }
    if (rc != CURLE_OK) {
      status = imapidle_fail(w, MAILOAUTH_IMAPIDLE_FAIL,
        "connection to %s lost: %s", w->base_url, curl_easy_strerror(rc));
      break;
    }
    if (n == 0) {
      status = imapidle_fail(w, MAILOAUTH_IMAPIDLE_FAIL,
        "%s closed the connection", w->base_url);
      break;
    }
    if (mailoauth_imapidle_feed(&w->reader, buf, n, imapidle_line,
        &ctx) != 0) {
      status = w->status;
      break;
    }
  }

  if (status == MAILOAUTH_IMAPIDLE_OK) {
    if (w->deadline_ms != 0 && now_ms >= w->deadline_ms) {
      status = imapidle_fail(w, MAILOAUTH_IMAPIDLE_FAIL,
        "%s did not answer within %d s", w->base_url,
        MAILOAUTH_IMAPIDLE_ANSWER_MS / 1000);

    } else if (w->state == IDLE_IDLING &&
        now_ms >= w->idle_since_ms + (long long) w->renew_s * 1000) {
      /* RFC 2177: servers may end an IDLE after 30 minutes. */
      mailoauth_trace(trace_channel, 7, "%s %s: renewing IDLE", w->base_url,
        w->shown);
      w->state = IDLE_DONE;
      w->deadline_ms = now_ms + MAILOAUTH_IMAPIDLE_ANSWER_MS;
      status = imapidle_send(w, "DONE\r\n");
    }
  }

  *events |= w->events;
  if (status != MAILOAUTH_IMAPIDLE_OK) {
    mailoauth_imapidle_close(w);
  }
  return status;
}
