/*
 * mod_mailoauth - the IMAP side of mail ingestion, over libcurl
 */

#include "mailoauth/imap.h"
#include "mailoauth/mailauth.h"
#include "mailoauth/trace.h"
#include "mailoauth/yield.h"

#include <curl/curl.h>
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <poll.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

static const char *trace_channel = "mailoauth.imap";

/* libcurl's buffer: response lines up to half of it arrive whole. */
#define IMAP_BUFFER_SIZE        (64 * 1024L)

/* UIDs per SEARCH: "* SEARCH" and 2000 numbers of up to 10 digits stay
 * under 23 KB, below both half the buffer and libcurl's 300 KB cap on one
 * request's response lines.
 */
#define IMAP_SEARCH_SPAN        2000u

/* Messages per mailoauth_imap_info() call, and per request.  libcurl
 * counts the bytes it read after an untagged line again for every such
 * line, against its 300 KB cap on one request's response lines: N lines of
 * ~80 bytes arriving together count about N * N * 40 bytes.
 */
#define IMAP_INFO_MAX           1000u
#define IMAP_INFO_CHUNK         50u

#define IMAP_LOW_SPEED_TIME     60L
#define IMAP_MAX_IDLE_S         118L
#define IMAP_TIMEOUT_MS         30000L

/* Reading buffer of the fetch connection. */
#define IMAP_FBUF_SIZE          (64 * 1024)

/* A literal other than the body (none is asked for) is skipped up to
 * this size; a larger one ends the connection.
 */
#define IMAP_OTHER_LITERAL_MAX  (1024 * 1024)

/* Log in again this long before the token expires, at most. */
#define IMAP_TOKEN_MARGIN_MAX   300

struct mailoauth_imap {
  CURL *curl;
  char *base_url;               /* imaps://host:port/ */
  char *mbox_url;               /* base_url + the folder, URL-escaped */
  char *folder;                 /* as configured (UTF-8) */
  char *wire;                   /* modified UTF-7 */
  char *quoted;                 /* the wire name as an IMAP quoted string */
  char *user;
  char *ca_file;
  char *token;
  long connect_timeout_ms;
  long timeout_ms;
  long max_idle_s;
  int fresh;

  /* From the last successful select; changed: a UIDVALIDITY change was
   * seen since, so UIDs the caller holds mean other messages now.
   */
  int selected;
  int changed;
  uint32_t uidvalidity;
  uint32_t uidnext;
  uint32_t exists;

  int have_caps;
  unsigned caps;
  char *target;                 /* a move target known to exist (wire) */

  unsigned long connections;
  unsigned long requests;

  char reply[512];
  const char *hint;

  /* Per request. */
  struct mailoauth_imap_resp resp;
  char *line;                   /* a server line being collected */
  size_t line_len;
  int line_clipped;
  char challenge[512];          /* a "+ ..." line of the login, or "" */

  /* Per fetch. */
  mailoauth_imap_sink_fn sink;
  void *sink_arg;
  uint64_t sink_bytes;
  uint64_t sink_cap;
  int sink_failed;
  int sink_toobig;
  int sink_errno;

  /* The token's expiry, and where fresh ones come from. */
  time_t token_expires;
  time_t token_lifetime;
  mailoauth_imap_token_fn token_fn;
  void *token_arg;
  unsigned token_gen;           /* bumped by every new token */
  int token_expired;            /* the last failure: an expired token */

  /* The fetch connection: logged in by libcurl, spoken to here. */
  CURL *fcurl;
  unsigned fcurl_gen;           /* token_gen it logged in with */
  int f_examined;
  unsigned f_tag;
  time_t f_used;
  char *fbuf;
  size_t f_len, f_off;

  uint32_t search_buf[IMAP_SEARCH_SPAN];
};

/* What a request is, for classifying its failures. */
enum imap_kind {
  IMAP_KIND_SELECT,             /* a NO here means the folder */
  IMAP_KIND_COMMAND             /* a NO here means this command */
};

static void imap_f_close(struct mailoauth_imap *s, int logout);

const char *mailoauth_imap_status_name(mailoauth_imap_status_t status) {
  switch (status) {
    case MAILOAUTH_IMAP_OK:
      return "ok";
    case MAILOAUTH_IMAP_TEMPFAIL:
      return "temporary failure";
    case MAILOAUTH_IMAP_AUTHFAIL:
      return "login refused";
    case MAILOAUTH_IMAP_MAILBOX:
      return "mailbox problem";
    case MAILOAUTH_IMAP_PERM:
      return "refused";
    case MAILOAUTH_IMAP_CONFIG:
      return "configuration problem";
    case MAILOAUTH_IMAP_GONE:
      return "message gone";
    case MAILOAUTH_IMAP_TOOBIG:
      return "message too large";
  }
  return "unknown";
}

/* ------------------------------------------------------------------------
 * The session.
 */

static void imap_reply(struct mailoauth_imap *s, const char *fmt, ...)
#ifdef __GNUC__
  __attribute__((format(printf, 2, 3)))
#endif
  ;

static void imap_reply(struct mailoauth_imap *s, const char *fmt, ...) {
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(s->reply, sizeof(s->reply), fmt, ap);
  va_end(ap);
}

static char *imap_strdup(const char *s) {
  return s != NULL ? strdup(s) : NULL;
}

static void imap_wipe_token(struct mailoauth_imap *s) {
  if (s->token != NULL) {
    OPENSSL_cleanse(s->token, strlen(s->token));
    free(s->token);
    s->token = NULL;
  }
}

/* Base URL and folder of an imap(s):// URL; ";params" and "?query" (IMAP
 * URL parts libcurl would act on) are refused.
 */
static int imap_split_url(const char *url, char **base, char **folder) {
  CURLU *u;
  char *path = NULL, *decoded = NULL, *out = NULL, *query = NULL;
  mailoauth_mailauth_proto_t proto;
  int rc = -1;

  *base = NULL;
  *folder = NULL;

  if (mailoauth_mailauth_proto(url, &proto, NULL) < 0 ||
      proto != MAILOAUTH_MAILAUTH_IMAP) {
    errno = EINVAL;
    return -1;
  }

  u = curl_url();
  if (u == NULL) {
    errno = ENOMEM;
    return -1;
  }

  if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_PATH, &path, 0) != CURLUE_OK) {
    errno = EINVAL;
    goto out;
  }

  if (curl_url_get(u, CURLUPART_QUERY, &query, 0) == CURLUE_OK &&
      query != NULL) {
    errno = EINVAL;
    goto out;
  }

  if (strchr(path, ';') != NULL) {
    errno = EINVAL;
    goto out;
  }

  if (curl_url_get(u, CURLUPART_PATH, &decoded, CURLU_URLDECODE) !=
      CURLUE_OK) {
    errno = EINVAL;
    goto out;
  }

  {
    const char *f = decoded[0] == '/' ? decoded + 1 : decoded;
    size_t n = strlen(f);
    size_t i;

    if (n > 0 && f[n - 1] == '/') {
      n--;
    }
    for (i = 0; i < n; i++) {
      if ((unsigned char) f[i] < 0x20 || f[i] == 0x7f) {
        errno = EINVAL;
        goto out;
      }
    }
    *folder = n > 0 ? strndup(f, n) : strdup("INBOX");
  }

  /* The credentials come from the configuration, never from the URL. */
  if (*folder == NULL ||
      curl_url_set(u, CURLUPART_PATH, "/", 0) != CURLUE_OK ||
      curl_url_set(u, CURLUPART_USER, NULL, 0) != CURLUE_OK ||
      curl_url_set(u, CURLUPART_PASSWORD, NULL, 0) != CURLUE_OK ||
      curl_url_set(u, CURLUPART_OPTIONS, NULL, 0) != CURLUE_OK ||
      curl_url_set(u, CURLUPART_FRAGMENT, NULL, 0) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_URL, &out, 0) != CURLUE_OK) {
    errno = *folder == NULL ? ENOMEM : EINVAL;
    goto out;
  }

  *base = strdup(out);
  if (*base == NULL) {
    errno = ENOMEM;
    goto out;
  }
  rc = 0;

out:
  if (rc < 0) {
    free(*folder);
    *folder = NULL;
  }
  curl_free(path);
  curl_free(decoded);
  curl_free(query);
  curl_free(out);
  curl_url_cleanup(u);
  return rc;
}

/* base + the wire name, escaped as one URL path segment. */
static char *imap_mailbox_url(CURL *curl, const char *base,
    const char *wire) {
  char *esc, *url;
  size_t n;

  esc = curl_easy_escape(curl, wire, 0);
  if (esc == NULL) {
    return NULL;
  }

  n = strlen(base) + strlen(esc) + 1;
  url = malloc(n);
  if (url != NULL) {
    snprintf(url, n, "%s%s", base, esc);
  }
  curl_free(esc);
  return url;
}

struct mailoauth_imap *mailoauth_imap_create(const char *url,
    const char *user, const char *ca_file) {
  struct mailoauth_imap *s;
  char wire[MAILOAUTH_IMAP_NAME_MAX + 1];
  char quoted[2 * MAILOAUTH_IMAP_NAME_MAX + 3];

  if (url == NULL || user == NULL || *user == '\0') {
    errno = EINVAL;
    return NULL;
  }

  s = calloc(1, sizeof(*s));
  if (s == NULL) {
    errno = ENOMEM;
    return NULL;
  }

  if (imap_split_url(url, &s->base_url, &s->folder) < 0) {
    int xerrno = errno;

    mailoauth_imap_destroy(s);
    errno = xerrno;
    return NULL;
  }

  if (mailoauth_imap_folder_name(s->folder, wire, sizeof(wire)) < 0 ||
      mailoauth_imap_quote(wire, quoted, sizeof(quoted)) < 0) {
    mailoauth_imap_destroy(s);
    errno = EINVAL;
    return NULL;
  }

  s->curl = curl_easy_init();
  s->wire = strdup(wire);
  s->quoted = strdup(quoted);
  s->user = strdup(user);
  s->ca_file = imap_strdup(ca_file);
  s->line = malloc(IMAP_BUFFER_SIZE + 1);
  s->fbuf = malloc(IMAP_FBUF_SIZE);
  if (s->curl == NULL || s->wire == NULL || s->quoted == NULL ||
      s->user == NULL || (ca_file != NULL && s->ca_file == NULL) ||
      s->line == NULL || s->fbuf == NULL) {
    mailoauth_imap_destroy(s);
    errno = ENOMEM;
    return NULL;
  }

  s->mbox_url = imap_mailbox_url(s->curl, s->base_url, s->wire);
  if (s->mbox_url == NULL) {
    mailoauth_imap_destroy(s);
    errno = ENOMEM;
    return NULL;
  }

  s->max_idle_s = IMAP_MAX_IDLE_S;

  /* One connection: a connection logged in with an old token is closed
   * when the new one is opened, not kept idle.
   */
  curl_easy_setopt(s->curl, CURLOPT_MAXCONNECTS, 1L);
  curl_easy_setopt(s->curl, CURLOPT_BUFFERSIZE, IMAP_BUFFER_SIZE);
  return s;
}

void mailoauth_imap_destroy(struct mailoauth_imap *s) {
  if (s == NULL) {
    return;
  }

  imap_f_close(s, 1);

  /* Says LOGOUT on a connection still open. */
  if (s->curl != NULL) {
    curl_easy_cleanup(s->curl);
  }
  imap_wipe_token(s);
  free(s->base_url);
  free(s->mbox_url);
  free(s->folder);
  free(s->wire);
  free(s->quoted);
  free(s->user);
  free(s->ca_file);
  free(s->line);
  free(s->fbuf);
  free(s->target);
  free(s);
}

int mailoauth_imap_set_token(struct mailoauth_imap *s, const char *token) {
  char *copy;

  if (s == NULL || token == NULL || *token == '\0') {
    errno = EINVAL;
    return -1;
  }

  if (s->token != NULL && strcmp(s->token, token) == 0) {
    return 0;
  }

  copy = strdup(token);
  if (copy == NULL) {
    errno = ENOMEM;
    return -1;
  }
  imap_wipe_token(s);
  s->token = copy;
  s->token_expires = 0;
  s->token_lifetime = 0;

  /* Connections logged in with the old token end with it. */
  s->token_gen++;
  s->fresh = 1;
  return 0;
}

void mailoauth_imap_set_token_expiry(struct mailoauth_imap *s,
    time_t expires) {
  time_t now = time(NULL);

  s->token_expires = expires;
  s->token_lifetime = expires > now ? expires - now : 0;
}

void mailoauth_imap_set_token_source(struct mailoauth_imap *s,
    mailoauth_imap_token_fn fn, void *arg) {
  s->token_fn = fn;
  s->token_arg = arg;
}

int mailoauth_imap_token_expired(const struct mailoauth_imap *s) {
  return s->token_expired;
}

/* min(5 minutes, 10% of the lifetime), at least a second. */
static time_t imap_token_margin(const struct mailoauth_imap *s) {
  time_t m = s->token_lifetime / 10;

  if (m > IMAP_TOKEN_MARGIN_MAX) {
    m = IMAP_TOKEN_MARGIN_MAX;
  }
  return m < 1 ? 1 : m;
}

/* Before a command: a session whose token is about to expire logs in
 * again with a fresh one, rather than be cut off by the server mid-way.
 */
static void imap_token_check(struct mailoauth_imap *s) {
  time_t now;

  if (s->token_fn == NULL || s->token_expires == 0) {
    return;
  }
  now = time(NULL);
  if (now + imap_token_margin(s) < s->token_expires) {
    return;
  }

  mailoauth_trace(trace_channel, 5, "the token of %s expires in %ld s: "
    "logging in again with a fresh one", s->user,
    (long) (s->token_expires - now));
  (void) s->token_fn(s, 0, s->token_arg);
}

/* Whether a failure is the server ending the session for an expired
 * token: its BYE says so, or the connection was lost once the token's
 * time was up.
 */
static int imap_expiry_failure(const struct mailoauth_imap *s,
    const struct mailoauth_imap_resp *r) {
  if (r->bye && strstr(r->bye_text, "AccessTokenExpired") != NULL) {
    return 1;
  }
  return s->token_expires != 0 && time(NULL) >= s->token_expires;
}

void mailoauth_imap_set_timeouts(struct mailoauth_imap *s,
    long connect_timeout_ms, long timeout_ms, long max_idle_s) {
  s->connect_timeout_ms = connect_timeout_ms;
  s->timeout_ms = timeout_ms;
  s->max_idle_s = max_idle_s > 0 ? max_idle_s : IMAP_MAX_IDLE_S;
}

void mailoauth_imap_reconnect(struct mailoauth_imap *s) {
  s->fresh = 1;
  imap_f_close(s, 1);
}

const char *mailoauth_imap_folder(const struct mailoauth_imap *s) {
  return s->folder;
}

const char *mailoauth_imap_folder_wire(const struct mailoauth_imap *s) {
  return s->wire;
}

const char *mailoauth_imap_reply(const struct mailoauth_imap *s) {
  return s->reply;
}

const char *mailoauth_imap_hint(const struct mailoauth_imap *s) {
  return s->hint;
}

unsigned long mailoauth_imap_connections(const struct mailoauth_imap *s) {
  return s->connections;
}

unsigned long mailoauth_imap_requests(const struct mailoauth_imap *s) {
  return s->requests;
}

/* ------------------------------------------------------------------------
 * One request.
 */

static void imap_server_line(struct mailoauth_imap *s, const char *line,
    size_t len) {
  if (len >= 2 && line[0] == '+' && line[1] == ' ') {
    /* An XOAUTH2 error challenge (server data, not a secret). */
    while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) {
      len--;
    }
    mailoauth_imap_copy_text(s->challenge, sizeof(s->challenge), line, len);
    return;
  }
  (void) mailoauth_imap_parse_line(&s->resp, line, len);
}

/* Every server line, in pieces of up to 16 KB: collected into whole
 * lines.  libcurl clips lines longer than half its buffer, so a longer one
 * cannot come; if it did, it is cut.
 */
static size_t imap_header_cb(char *data, size_t size, size_t nmemb,
    void *arg) {
  struct mailoauth_imap *s = arg;
  size_t total = size * nmemb, i = 0;

  while (i < total) {
    const char *nl = memchr(data + i, '\n', total - i);
    size_t n = nl != NULL ? (size_t) (nl - (data + i)) + 1 : total - i;
    size_t room = IMAP_BUFFER_SIZE - s->line_len;
    size_t take = n < room ? n : room;

    memcpy(s->line + s->line_len, data + i, take);
    s->line_len += take;
    if (take < n) {
      s->line_clipped = 1;
    }

    if (nl != NULL) {
      if (s->line_clipped) {
        s->resp.malformed++;
      } else {
        imap_server_line(s, s->line, s->line_len);
      }
      s->line_len = 0;
      s->line_clipped = 0;
    }
    i += n;
  }
  return total;
}

static size_t imap_discard_cb(char *data, size_t size, size_t nmemb,
    void *arg) {
  (void) data;
  (void) arg;
  return size * nmemb;
}

/* libcurl URL-decodes a custom request: keep '%' literal. */
static char *imap_custom_escape(const char *cmd) {
  size_t n = strlen(cmd), extra = 0, i, k = 0;
  char *out;

  for (i = 0; i < n; i++) {
    if (cmd[i] == '%') {
      extra += 2;
    }
  }

  out = malloc(n + extra + 1);
  if (out == NULL) {
    return NULL;
  }
  for (i = 0; i < n; i++) {
    out[k++] = cmd[i];
    if (cmd[i] == '%') {
      out[k++] = '2';
      out[k++] = '5';
    }
  }
  out[k] = '\0';
  return out;
}

static int imap_code_is(const struct mailoauth_imap_resp *r,
    const char *code) {
  return strcasecmp(r->tagged_code, code) == 0;
}

static int imap_text_has(const char *text, const char *needle) {
  size_t n = strlen(needle);

  for (; *text != '\0'; text++) {
    if (strncasecmp(text, needle, n) == 0) {
      return 1;
    }
  }
  return 0;
}

/* What a tagged NO/BAD means; kind_default when nothing more specific. */
static mailoauth_imap_status_t imap_classify_tagged(
    const struct mailoauth_imap_resp *r, mailoauth_imap_status_t dflt) {
  if (r->bye) {
    return MAILOAUTH_IMAP_TEMPFAIL;
  }

  if (imap_code_is(r, "AUTHENTICATIONFAILED") ||
      imap_code_is(r, "AUTHORIZATIONFAILED") ||
      imap_code_is(r, "EXPIRED")) {
    return MAILOAUTH_IMAP_AUTHFAIL;
  }

  if (imap_code_is(r, "UNAVAILABLE") || imap_code_is(r, "INUSE") ||
      imap_code_is(r, "SERVERBUG") || imap_code_is(r, "LIMIT") ||
      imap_text_has(r->tagged_text, "Server Unavailable") ||
      imap_text_has(r->tagged_text, "try again")) {
    return MAILOAUTH_IMAP_TEMPFAIL;
  }

  /* Exchange: logged in, but the mailbox cannot be reached. */
  if (imap_text_has(r->tagged_text,
      "User is authenticated but not connected")) {
    return MAILOAUTH_IMAP_MAILBOX;
  }

  if (imap_code_is(r, "NONEXISTENT") || imap_code_is(r, "TRYCREATE") ||
      imap_code_is(r, "NOPERM")) {
    return MAILOAUTH_IMAP_MAILBOX;
  }

  return dflt;
}

/* A reused connection the server had given up on: worth one more try on a
 * new one.
 */
static int imap_dead_connection(CURLcode rc,
    const struct mailoauth_imap_resp *r) {
  if (r->bye) {
    return 1;
  }

  switch (rc) {
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_WEIRD_SERVER_REPLY:
      return 1;

    case CURLE_QUOTE_ERROR:
    case CURLE_LOGIN_DENIED:
      /* libcurl believed a folder selected that the server did not. */
      return imap_text_has(r->tagged_text, "No mailbox selected");

    default:
      return 0;
  }
}

static mailoauth_imap_status_t imap_classify(struct mailoauth_imap *s,
    enum imap_kind kind, CURLcode rc, long connects,
    const struct mailoauth_mailauth_transcript *tr, const char *curl_err,
    const char *what) {
  const struct mailoauth_imap_resp *r = &s->resp;
  mailoauth_imap_status_t status;
  char line[400];

  s->hint = NULL;
  line[0] = '\0';
  if (r->have & MAILOAUTH_IMAP_HAVE_TAGGED) {
    snprintf(line, sizeof(line), "%s%s%s%s%s", r->tagged_status,
      r->tagged_code[0] ? " [" : "", r->tagged_code,
      r->tagged_code[0] ? "] " : " ", r->tagged_text);
  }

  switch (rc) {
    case CURLE_OK:
      imap_reply(s, "%s: %s", what, line[0] ? line : "OK");
      return MAILOAUTH_IMAP_OK;

    case CURLE_LOGIN_DENIED:
      if (tr->auth_sent && !tr->authenticated) {
        if (s->challenge[0] != '\0') {
          s->hint = mailoauth_mailauth_hint(s->challenge);
        }
        if (tr->challenge[0] != '\0') {
          imap_reply(s, "XOAUTH2 refused as %s: %s%s%s", s->user,
            tr->challenge, line[0] ? " / " : "", line);
        } else {
          imap_reply(s, "login refused as %s: %s", s->user,
            line[0] ? line : tr->last_reply);
        }
        if (s->hint == NULL) {
          s->hint = mailoauth_mailauth_hint(line);
        }
        return MAILOAUTH_IMAP_AUTHFAIL;
      }

      if (!tr->auth_sent && !tr->authenticated && connects > 0) {
        imap_reply(s, "%s does not offer XOAUTH2 (last answer: %s)",
          s->base_url, tr->last_reply);
        return MAILOAUTH_IMAP_CONFIG;
      }

      /* libcurl reports its own failed SELECT as a refused login. */
      imap_reply(s, "SELECT %s: %s", s->quoted,
        line[0] ? line : "failed");
      s->hint = mailoauth_mailauth_hint(line);
      status = imap_classify_tagged(r, MAILOAUTH_IMAP_MAILBOX);
      return status == MAILOAUTH_IMAP_PERM ? MAILOAUTH_IMAP_MAILBOX : status;

    case CURLE_QUOTE_ERROR:
      imap_reply(s, "%s: %s", what, line[0] ? line : "refused");
      s->hint = mailoauth_mailauth_hint(line);
      return imap_classify_tagged(r, kind == IMAP_KIND_SELECT ?
        MAILOAUTH_IMAP_MAILBOX : MAILOAUTH_IMAP_PERM);

    case CURLE_REMOTE_FILE_NOT_FOUND:
      if ((r->have & MAILOAUTH_IMAP_HAVE_UIDVALIDITY) &&
          r->uidvalidity != s->uidvalidity) {
        imap_reply(s, "the UIDVALIDITY of %s changed from %lu to %lu: the "
          "folder's UIDs start over", s->folder,
          (unsigned long) s->uidvalidity, (unsigned long) r->uidvalidity);
        s->selected = 0;
        s->changed = 1;

      } else {
        imap_reply(s, "%s: no such message", what);
      }
      return MAILOAUTH_IMAP_GONE;

    case CURLE_WRITE_ERROR:
      if (s->sink_toobig) {
        imap_reply(s, "%s: larger than %llu bytes", what,
          (unsigned long long) s->sink_cap);
        return MAILOAUTH_IMAP_TOOBIG;
      }
      if (s->sink_failed) {
        imap_reply(s, "%s: storing the message failed: %s", what,
          strerror(s->sink_errno));
        return MAILOAUTH_IMAP_TEMPFAIL;
      }
      break;

    case CURLE_USE_SSL_FAILED:
      imap_reply(s, "%s does not offer STARTTLS: not logging in without TLS",
        s->base_url);
      return MAILOAUTH_IMAP_CONFIG;

    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
      imap_reply(s, "%s: %s", s->base_url,
        curl_err[0] ? curl_err : curl_easy_strerror(rc));
      return MAILOAUTH_IMAP_CONFIG;

    default:
      break;
  }

  if (r->bye) {
    imap_reply(s, "%s: the server closed the connection: BYE %s", what,
      r->bye_text);
  } else {
    imap_reply(s, "%s: %s", what,
      curl_err[0] ? curl_err : curl_easy_strerror(rc));
  }
  return MAILOAUTH_IMAP_TEMPFAIL;
}

/* One libcurl request: url, and cmd as CURLOPT_CUSTOMREQUEST (NULL: a
 * fetch through the URL).  The caller set up s->resp's arrays; they are
 * kept, what was parsed is reset.  Repeated once on a new connection when
 * a reused one turns out dead.
 */
static mailoauth_imap_status_t imap_request(struct mailoauth_imap *s,
    enum imap_kind kind, const char *url, const char *cmd, const char *what) {
  struct mailoauth_imap_resp keep = s->resp;
  mailoauth_imap_status_t status = MAILOAUTH_IMAP_TEMPFAIL;
  char *custom = NULL;
  int attempt;

  s->hint = NULL;
  s->token_expired = 0;
  imap_token_check(s);
  if (s->token == NULL) {
    imap_reply(s, "no access token for %s", s->user);
    return MAILOAUTH_IMAP_AUTHFAIL;
  }

  if (cmd != NULL) {
    custom = imap_custom_escape(cmd);
    if (custom == NULL) {
      imap_reply(s, "out of memory");
      return MAILOAUTH_IMAP_TEMPFAIL;
    }
  }

  for (attempt = 0; attempt < 2; attempt++) {
    struct mailoauth_mailauth_config cfg;
    struct mailoauth_mailauth_transcript tr;
    char curl_err[CURL_ERROR_SIZE], setup_err[256];
    long connects = 0;
    CURLcode rc;

    /* The caller's arrays stay; what the last attempt parsed goes. */
    mailoauth_imap_resp_init(&s->resp);
    s->resp.search_lo = keep.search_lo;
    s->resp.search_hi = keep.search_hi;
    s->resp.uids = keep.uids;
    s->resp.max_uids = keep.max_uids;
    s->resp.want = keep.want;
    s->resp.info = keep.info;
    s->resp.n_want = keep.n_want;
    s->resp.list_name = keep.list_name;
    if (keep.info != NULL) {
      memset(keep.info, 0, keep.n_want * sizeof(*keep.info));
    }
    s->line_len = 0;
    s->line_clipped = 0;
    s->challenge[0] = '\0';
    s->sink_bytes = 0;
    s->sink_failed = 0;
    s->sink_toobig = 0;

    memset(&tr, 0, sizeof(tr));
    memset(&cfg, 0, sizeof(cfg));
    cfg.url = url;
    cfg.username = s->user;
    cfg.bearer = s->token;
    cfg.ca_file = s->ca_file;
    cfg.connect_timeout_ms = s->connect_timeout_ms;
    cfg.timeout_ms = s->timeout_ms;

    if (mailoauth_mailauth_setup(s->curl, &cfg, &tr, setup_err,
        sizeof(setup_err)) < 0) {
      imap_reply(s, "%s", setup_err);
      free(custom);
      return MAILOAUTH_IMAP_CONFIG;
    }

    curl_err[0] = '\0';
    curl_easy_setopt(s->curl, CURLOPT_CUSTOMREQUEST, custom);
    curl_easy_setopt(s->curl, CURLOPT_HEADERFUNCTION, imap_header_cb);
    curl_easy_setopt(s->curl, CURLOPT_HEADERDATA, s);
    curl_easy_setopt(s->curl, CURLOPT_WRITEFUNCTION, imap_discard_cb);
    curl_easy_setopt(s->curl, CURLOPT_WRITEDATA, s);
    curl_easy_setopt(s->curl, CURLOPT_ERRORBUFFER, curl_err);
    curl_easy_setopt(s->curl, CURLOPT_MAXAGE_CONN, s->max_idle_s);
    curl_easy_setopt(s->curl, CURLOPT_FRESH_CONNECT,
      (s->fresh || attempt > 0) ? 1L : 0L);
    curl_easy_setopt(s->curl, CURLOPT_LOW_SPEED_LIMIT, 0L);
    curl_easy_setopt(s->curl, CURLOPT_LOW_SPEED_TIME, 0L);
    s->fresh = 0;

    mailoauth_trace(trace_channel, 9, "%s: %s%s%s", s->base_url,
      cmd != NULL ? cmd : "fetch ", cmd != NULL ? "" : url,
      attempt > 0 ? " (new connection)" : "");

    rc = curl_easy_perform(s->curl);
    s->requests++;
    curl_easy_getinfo(s->curl, CURLINFO_NUM_CONNECTS, &connects);
    s->connections += (unsigned long) connects;

    /* A last line without its LF. */
    if (s->line_len > 0 && !s->line_clipped) {
      imap_server_line(s, s->line, s->line_len);
    }
    s->line_len = 0;

    curl_easy_setopt(s->curl, CURLOPT_CUSTOMREQUEST, NULL);
    curl_easy_setopt(s->curl, CURLOPT_ERRORBUFFER, NULL);
    curl_easy_setopt(s->curl, CURLOPT_DEBUGFUNCTION, NULL);
    curl_easy_setopt(s->curl, CURLOPT_DEBUGDATA, NULL);
    curl_easy_setopt(s->curl, CURLOPT_VERBOSE, 0L);

    status = imap_classify(s, kind, rc, connects, &tr, curl_err, what);

    mailoauth_trace(trace_channel, rc == CURLE_OK ? 9 : 4,
      "%s: %s (curl %d, %ld new connections): %s", what,
      mailoauth_imap_status_name(status), (int) rc, connects, s->reply);

    if (rc != CURLE_OK && s->token_fn != NULL &&
        imap_expiry_failure(s, &s->resp)) {
      /* Not a failure: the session's token ran out.  A fresh one, a new
       * login and this command once more.
       */
      if (attempt == 0 && s->token_fn(s, 1, s->token_arg) == 0) {
        mailoauth_trace(trace_channel, 5, "%s: the session of %s ended "
          "with its token; once more with a fresh one", what, s->user);
        s->fresh = 0;
        mailoauth_mailauth_transcript_clear(&tr);
        continue;
      }
      s->token_expired = 1;
    }

    if (rc != CURLE_OK && attempt == 0 && connects == 0 &&
        s->sink_bytes == 0 && !s->sink_toobig && !s->sink_failed &&
        imap_dead_connection(rc, &s->resp)) {
      mailoauth_trace(trace_channel, 5, "%s: the reused connection to %s "
        "is gone (%s): once more on a new one", what, s->base_url,
        s->reply);
      mailoauth_mailauth_transcript_clear(&tr);
      continue;
    }

    mailoauth_mailauth_transcript_clear(&tr);
    break;
  }

  free(custom);
  return status;
}

/* The folder's URL, with ";UIDVALIDITY=v" once a select told it, and
 * ";UID=n" for a fetch.
 */
static char *imap_url(struct mailoauth_imap *s, uint32_t uid) {
  size_t n = strlen(s->mbox_url) + 64;
  char *url = malloc(n);
  int k;

  if (url == NULL) {
    return NULL;
  }

  k = snprintf(url, n, "%s", s->mbox_url);
  if (s->selected && s->uidvalidity != 0) {
    k += snprintf(url + k, n - (size_t) k, ";UIDVALIDITY=%lu",
      (unsigned long) s->uidvalidity);
  }
  if (uid != 0) {
    snprintf(url + k, n - (size_t) k, ";UID=%lu", (unsigned long) uid);
  }
  return url;
}

/* A command on the selected folder (libcurl selects it when this
 * connection has not).
 */
static mailoauth_imap_status_t imap_folder_command(struct mailoauth_imap *s,
    const char *cmd, const char *what) {
  mailoauth_imap_status_t status;
  char *url = imap_url(s, 0);

  if (url == NULL) {
    imap_reply(s, "out of memory");
    return MAILOAUTH_IMAP_TEMPFAIL;
  }
  status = imap_request(s, IMAP_KIND_COMMAND, url, cmd, what);
  free(url);
  return status;
}

static void imap_resp_clear_targets(struct mailoauth_imap *s) {
  mailoauth_imap_resp_init(&s->resp);
}

/* UIDs mean something only with the UIDVALIDITY a select told: no UID
 * command before one, none after a change until the caller selected again
 * (and so learnt of it).
 */
static int imap_need_select(struct mailoauth_imap *s,
    mailoauth_imap_status_t *status) {
  if (s->selected) {
    return 0;
  }

  if (s->changed) {
    imap_reply(s, "the UIDVALIDITY of %s changed: select it again",
      s->folder);
    *status = MAILOAUTH_IMAP_GONE;
  } else {
    imap_reply(s, "%s is not selected: select it first", s->folder);
    *status = MAILOAUTH_IMAP_PERM;
  }
  return -1;
}

mailoauth_imap_status_t mailoauth_imap_select(struct mailoauth_imap *s,
    struct mailoauth_imap_mailbox *mb) {
  mailoauth_imap_status_t status;
  char cmd[2 * MAILOAUTH_IMAP_NAME_MAX + 16];

  if (mb != NULL) {
    memset(mb, 0, sizeof(*mb));
  }

  /* On the bare server URL: libcurl's own SELECT would keep the untagged
   * answers from the write function and report a missing folder as a
   * refused login.
   */
  snprintf(cmd, sizeof(cmd), "SELECT %s", s->quoted);
  imap_resp_clear_targets(s);
  status = imap_request(s, IMAP_KIND_SELECT, s->base_url, cmd, cmd);

  if (status != MAILOAUTH_IMAP_OK) {
    /* A failed SELECT leaves nothing selected, which libcurl's bookkeeping
     * of this connection would not know.
     */
    s->selected = 0;
    s->fresh = 1;
    return status;
  }

  if (!(s->resp.have & MAILOAUTH_IMAP_HAVE_UIDVALIDITY)) {
    imap_reply(s, "%s: the server sent no UIDVALIDITY", cmd);
    s->selected = 0;
    return MAILOAUTH_IMAP_PERM;
  }

  if (s->selected && s->uidvalidity != s->resp.uidvalidity) {
    mailoauth_trace(trace_channel, 3, "UIDVALIDITY of %s changed from %lu "
      "to %lu", s->folder, (unsigned long) s->uidvalidity,
      (unsigned long) s->resp.uidvalidity);
  }

  s->selected = 1;
  s->changed = 0;
  s->uidvalidity = s->resp.uidvalidity;
  s->uidnext = (s->resp.have & MAILOAUTH_IMAP_HAVE_UIDNEXT) ?
    s->resp.uidnext : 0;
  s->exists = (s->resp.have & MAILOAUTH_IMAP_HAVE_EXISTS) ?
    s->resp.exists : 0;

  if (mb != NULL) {
    mb->uidvalidity = s->uidvalidity;
    mb->uidnext = s->uidnext;
    mb->exists = s->exists;
    mb->read_only = s->resp.read_only;
  }
  return MAILOAUTH_IMAP_OK;
}

static int imap_cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *) a, y = *(const uint32_t *) b;

  return x < y ? -1 : x > y;
}

mailoauth_imap_status_t mailoauth_imap_search(struct mailoauth_imap *s,
    uint32_t from, unsigned flags, uint32_t *uids, size_t max,
    size_t *count) {
  mailoauth_imap_status_t status;
  uint32_t lo, last = 0;

  *count = 0;
  if (uids == NULL || max == 0) {
    errno = EINVAL;
    return MAILOAUTH_IMAP_PERM;
  }

  if (imap_need_select(s, &status) < 0) {
    return status;
  }

  lo = from > 0 ? from : 1;

  /* Nothing new since the select: no request at all. */
  if (s->exists == 0 || (s->uidnext != 0 && lo >= s->uidnext)) {
    imap_reply(s, "no UIDs from %lu (UIDNEXT %lu)", (unsigned long) lo,
      (unsigned long) s->uidnext);
    return MAILOAUTH_IMAP_OK;
  }

  for (;;) {
    char cmd[96];
    uint32_t hi = 0;
    size_t i;

    if (s->uidnext != 0) {
      hi = s->uidnext - 1;
      if (hi - lo >= IMAP_SEARCH_SPAN) {
        hi = lo + IMAP_SEARCH_SPAN - 1;
      }
      snprintf(cmd, sizeof(cmd), "UID SEARCH UID %lu:%lu%s",
        (unsigned long) lo, (unsigned long) hi,
        (flags & MAILOAUTH_IMAP_SEARCH_UNSEEN) ? " UNSEEN" : "");

    } else {
      /* No UIDNEXT (an IMAP4rev1 server always sends one): one open
       * range, whose answer is kept only up to the buffer.
       */
      snprintf(cmd, sizeof(cmd), "UID SEARCH UID %lu:*%s",
        (unsigned long) lo,
        (flags & MAILOAUTH_IMAP_SEARCH_UNSEEN) ? " UNSEEN" : "");
    }

    imap_resp_clear_targets(s);
    s->resp.search_lo = lo;
    s->resp.search_hi = hi;
    s->resp.uids = s->search_buf;
    s->resp.max_uids = IMAP_SEARCH_SPAN;

    status = imap_folder_command(s, cmd, cmd);
    if (status != MAILOAUTH_IMAP_OK) {
      return status;
    }

    if (!(s->resp.have & MAILOAUTH_IMAP_HAVE_SEARCH) || s->resp.malformed) {
      imap_reply(s, "%s: no usable SEARCH answer", cmd);
      return MAILOAUTH_IMAP_TEMPFAIL;
    }

    /* Servers answer in ascending order, but need not. */
    qsort(s->search_buf, s->resp.n_uids, sizeof(uint32_t), imap_cmp_u32);
    for (i = 0; i < s->resp.n_uids && *count < max; i++) {
      if (s->search_buf[i] > last) {
        uids[(*count)++] = s->search_buf[i];
        last = s->search_buf[i];
      }
    }

    if (*count >= max || hi == 0 || hi >= s->uidnext - 1 ||
        hi == UINT32_MAX) {
      break;
    }
    lo = hi + 1;
  }

  imap_reply(s, "%lu UIDs from %lu", (unsigned long) *count,
    (unsigned long) (from > 0 ? from : 1));
  return MAILOAUTH_IMAP_OK;
}

/* "5,7:9,12" from UIDs (any order, duplicates allowed). */
static char *imap_uid_set(const uint32_t *uids, size_t n) {
  uint32_t *sorted;
  size_t size = n * 22 + 1, len = 0, i;
  char *out;

  sorted = malloc(n * sizeof(*sorted));
  out = malloc(size);
  if (sorted == NULL || out == NULL) {
    free(sorted);
    free(out);
    return NULL;
  }
  memcpy(sorted, uids, n * sizeof(*sorted));
  qsort(sorted, n, sizeof(*sorted), imap_cmp_u32);

  out[0] = '\0';
  for (i = 0; i < n; ) {
    size_t j = i;

    while (j + 1 < n && (sorted[j + 1] == sorted[j] ||
           sorted[j + 1] == sorted[j] + 1)) {
      j++;
    }
    if (sorted[j] == sorted[i]) {
      len += (size_t) snprintf(out + len, size - len, "%s%lu",
        len > 0 ? "," : "", (unsigned long) sorted[i]);
    } else {
      len += (size_t) snprintf(out + len, size - len, "%s%lu:%lu",
        len > 0 ? "," : "", (unsigned long) sorted[i],
        (unsigned long) sorted[j]);
    }
    i = j + 1;
  }

  free(sorted);
  return out;
}

mailoauth_imap_status_t mailoauth_imap_info(struct mailoauth_imap *s,
    const uint32_t *uids, size_t n, struct mailoauth_imap_msginfo *info,
    size_t *found) {
  mailoauth_imap_status_t status = MAILOAUTH_IMAP_OK;
  size_t i, off, total = 0;

  if (found != NULL) {
    *found = 0;
  }
  if (uids == NULL || info == NULL || n == 0 || n > IMAP_INFO_MAX) {
    errno = EINVAL;
    return MAILOAUTH_IMAP_PERM;
  }
  for (i = 0; i < n; i++) {
    if (uids[i] == 0) {
      errno = EINVAL;
      return MAILOAUTH_IMAP_PERM;
    }
  }
  memset(info, 0, n * sizeof(*info));
  if (imap_need_select(s, &status) < 0) {
    return status;
  }

  for (off = 0; off < n && status == MAILOAUTH_IMAP_OK;
       off += IMAP_INFO_CHUNK) {
    size_t chunk = n - off < IMAP_INFO_CHUNK ? n - off : IMAP_INFO_CHUNK;
    char *set, *cmd;
    size_t len;

    set = imap_uid_set(uids + off, chunk);
    if (set == NULL) {
      imap_reply(s, "out of memory");
      return MAILOAUTH_IMAP_TEMPFAIL;
    }
    len = strlen(set) + 64;
    cmd = malloc(len);
    if (cmd == NULL) {
      free(set);
      imap_reply(s, "out of memory");
      return MAILOAUTH_IMAP_TEMPFAIL;
    }
    snprintf(cmd, len, "UID FETCH %s (UID RFC822.SIZE FLAGS)", set);
    free(set);

    imap_resp_clear_targets(s);
    s->resp.want = uids + off;
    s->resp.info = info + off;
    s->resp.n_want = chunk;

    status = imap_folder_command(s, cmd,
      n == 1 ? cmd : "UID FETCH (UID RFC822.SIZE FLAGS)");
    free(cmd);
    total += s->resp.fetches;
  }

  if (found != NULL) {
    *found = total;
  }
  return status;
}

struct imap_fd_sink {
  int fd;
};

static int imap_fd_write(const char *data, size_t len, void *arg) {
  struct imap_fd_sink *sink = arg;

  while (len > 0) {
    ssize_t n = write(sink->fd, data, len);

    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return -1;
    }
    data += n;
    len -= (size_t) n;
  }
  return 0;
}

/* ------------------------------------------------------------------------
 * The fetch connection: libcurl connects and logs in (CONNECT_ONLY), the
 * commands and the literal are handled here, so that a body comes with
 * BODY.PEEK[] and exactly as many bytes as announced.
 */

static void imap_f_close(struct mailoauth_imap *s, int logout) {
  curl_socket_t fd = CURL_SOCKET_BAD;

  if (s->fcurl == NULL) {
    return;
  }

  if (logout) {
    size_t n = 0;

    /* Best effort, unanswered: the connection ends either way. */
    (void) curl_easy_send(s->fcurl, "Z LOGOUT\r\n", 10, &n);
  }

  /* Whatever the server still sends (the rest of a body cut short) is not
   * read: the connection ends here.
   */
  if (curl_easy_getinfo(s->fcurl, CURLINFO_ACTIVESOCKET, &fd) == CURLE_OK &&
      fd != CURL_SOCKET_BAD) {
    (void) shutdown(fd, SHUT_RDWR);
  }
  curl_easy_cleanup(s->fcurl);
  s->fcurl = NULL;
  s->f_examined = 0;
  s->f_len = 0;
  s->f_off = 0;
}

static int imap_f_wait(struct mailoauth_imap *s, int out, long ms) {
  curl_socket_t fd = CURL_SOCKET_BAD;
  struct pollfd p;

  if (curl_easy_getinfo(s->fcurl, CURLINFO_ACTIVESOCKET, &fd) != CURLE_OK ||
      fd == CURL_SOCKET_BAD) {
    return -1;
  }

  for (;;) {
    int n, slice = mailoauth_yield_slice(ms);

    p.fd = fd;
    p.events = out ? POLLOUT : POLLIN;
    p.revents = 0;
    n = poll(&p, 1, slice);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n == 0 && ms > slice) {
      /* A slow server must not hold notifications back. */
      ms -= slice;
      mailoauth_yield();
      continue;
    }
    return n > 0 ? 0 : -1;
  }
}

static int imap_f_send(struct mailoauth_imap *s, const char *buf,
    size_t len) {
  while (len > 0) {
    size_t n = 0;
    CURLcode rc = curl_easy_send(s->fcurl, buf, len, &n);

    if (rc == CURLE_AGAIN) {
      if (imap_f_wait(s, 1, IMAP_TIMEOUT_MS) < 0) {
        return -1;
      }
      continue;
    }
    if (rc != CURLE_OK) {
      return -1;
    }
    buf += n;
    len -= n;
  }
  return 0;
}

/* More bytes into the (consumed) buffer; -1 on a lost connection or
 * nothing for ms.
 */
static int imap_f_fill(struct mailoauth_imap *s, long ms) {
  s->f_len = 0;
  s->f_off = 0;

  for (;;) {
    size_t n = 0;
    CURLcode rc = curl_easy_recv(s->fcurl, s->fbuf, IMAP_FBUF_SIZE, &n);

    if (rc == CURLE_AGAIN) {
      if (imap_f_wait(s, 0, ms) < 0) {
        return -1;
      }
      continue;
    }
    if (rc != CURLE_OK || n == 0) {
      return -1;
    }
    s->f_len = n;
    return 0;
  }
}

/* The next line into s->line, CRLF stripped and NUL-terminated.  A line
 * longer than s->line fails: no answer to what is asked here has one.
 */
static int imap_f_line(struct mailoauth_imap *s, long ms, size_t *len) {
  size_t have = 0;
  int clipped = 0;

  for (;;) {
    const char *start = s->fbuf + s->f_off;
    size_t avail = s->f_len - s->f_off;
    const char *nl = memchr(start, '\n', avail);
    size_t take = nl != NULL ? (size_t) (nl - start) + 1 : avail;
    size_t room = IMAP_BUFFER_SIZE - have;

    if (take > room) {
      clipped = 1;
    }
    memcpy(s->line + have, start, take < room ? take : room);
    have += take < room ? take : room;
    s->f_off += take;

    if (nl != NULL) {
      if (clipped) {
        return -1;
      }
      while (have > 0 && (s->line[have - 1] == '\n' ||
             s->line[have - 1] == '\r')) {
        have--;
      }
      s->line[have] = '\0';
      *len = have;
      return 0;
    }

    if (imap_f_fill(s, ms) < 0) {
      return -1;
    }
  }
}

/* n bytes of a literal: to the sink, or skipped. */
static int imap_f_literal(struct mailoauth_imap *s, uint64_t n, int to_sink) {
  while (n > 0) {
    size_t avail, take;

    if (s->f_off == s->f_len &&
        imap_f_fill(s, IMAP_LOW_SPEED_TIME * 1000L) < 0) {
      return -1;
    }
    avail = s->f_len - s->f_off;
    take = (uint64_t) avail < n ? avail : (size_t) n;

    if (to_sink) {
      if (s->sink(s->fbuf + s->f_off, take, s->sink_arg) < 0) {
        s->sink_failed = 1;
        s->sink_errno = errno;
        return -1;
      }
      s->sink_bytes += take;
    }
    s->f_off += take;
    n -= take;
    mailoauth_yield();
  }
  return 0;
}

/* Logs in on a new fetch connection (or keeps the one there is, when it
 * logged in with this token and has not been idle too long).
 */
static mailoauth_imap_status_t imap_f_open(struct mailoauth_imap *s) {
  struct mailoauth_mailauth_config cfg;
  struct mailoauth_mailauth_transcript tr;
  mailoauth_imap_status_t status;
  char curl_err[CURL_ERROR_SIZE], setup_err[256];
  long connects = 0;
  CURLcode rc;

  if (s->fcurl != NULL && (s->fcurl_gen != s->token_gen ||
      time(NULL) - s->f_used > s->max_idle_s)) {
    imap_f_close(s, 1);
  }
  if (s->fcurl != NULL) {
    return MAILOAUTH_IMAP_OK;
  }

  s->fcurl = curl_easy_init();
  if (s->fcurl == NULL) {
    imap_reply(s, "out of memory");
    return MAILOAUTH_IMAP_TEMPFAIL;
  }

  memset(&tr, 0, sizeof(tr));
  memset(&cfg, 0, sizeof(cfg));
  cfg.url = s->base_url;
  cfg.username = s->user;
  cfg.bearer = s->token;
  cfg.ca_file = s->ca_file;
  cfg.connect_timeout_ms = s->connect_timeout_ms;
  cfg.timeout_ms = s->timeout_ms;
  if (mailoauth_mailauth_setup(s->fcurl, &cfg, &tr, setup_err,
      sizeof(setup_err)) < 0) {
    imap_reply(s, "%s", setup_err);
    imap_f_close(s, 0);
    return MAILOAUTH_IMAP_CONFIG;
  }

  mailoauth_imap_resp_init(&s->resp);
  s->line_len = 0;
  s->line_clipped = 0;
  s->challenge[0] = '\0';
  curl_err[0] = '\0';
  curl_easy_setopt(s->fcurl, CURLOPT_CONNECT_ONLY, 1L);
  curl_easy_setopt(s->fcurl, CURLOPT_MAXCONNECTS, 1L);
  curl_easy_setopt(s->fcurl, CURLOPT_HEADERFUNCTION, imap_header_cb);
  curl_easy_setopt(s->fcurl, CURLOPT_HEADERDATA, s);
  curl_easy_setopt(s->fcurl, CURLOPT_ERRORBUFFER, curl_err);

  rc = curl_easy_perform(s->fcurl);
  s->requests++;
  curl_easy_getinfo(s->fcurl, CURLINFO_NUM_CONNECTS, &connects);
  s->connections += (unsigned long) connects;
  curl_easy_setopt(s->fcurl, CURLOPT_ERRORBUFFER, NULL);
  curl_easy_setopt(s->fcurl, CURLOPT_DEBUGFUNCTION, NULL);
  curl_easy_setopt(s->fcurl, CURLOPT_DEBUGDATA, NULL);
  curl_easy_setopt(s->fcurl, CURLOPT_VERBOSE, 0L);

  status = imap_classify(s, IMAP_KIND_COMMAND, rc, connects, &tr, curl_err,
    "login for fetching");
  mailoauth_mailauth_transcript_clear(&tr);
  if (status != MAILOAUTH_IMAP_OK) {
    imap_f_close(s, 0);
    return status;
  }

  s->fcurl_gen = s->token_gen;
  s->f_examined = 0;
  s->f_tag = 0;
  s->f_len = 0;
  s->f_off = 0;
  s->f_used = time(NULL);
  return MAILOAUTH_IMAP_OK;
}

/* One command on the fetch connection, read to its tagged answer.
 * Untagged lines go to s->resp; with body (MAILOAUTH_IMAP_LITERAL_*), the
 * literal of that section goes to the sink (*got_body counts them).
 */
static mailoauth_imap_status_t imap_f_command(struct mailoauth_imap *s,
    const char *cmd, const char *what, int body, int *got_body) {
  char tag[16], out[2 * MAILOAUTH_IMAP_NAME_MAX + 64];
  size_t taglen;
  int n;

  n = snprintf(tag, sizeof(tag), "M%u", ++s->f_tag);
  taglen = (size_t) n;
  n = snprintf(out, sizeof(out), "%s %s\r\n", tag, cmd);
  if (n < 0 || (size_t) n >= sizeof(out)) {
    imap_reply(s, "%s: command too long", what);
    return MAILOAUTH_IMAP_PERM;
  }

  mailoauth_trace(trace_channel, 9, "%s: %s (fetch connection)",
    s->base_url, cmd);
  if (imap_f_send(s, out, (size_t) n) < 0) {
    imap_reply(s, "%s: the connection to %s was lost", what, s->base_url);
    return MAILOAUTH_IMAP_TEMPFAIL;
  }
  s->f_used = time(NULL);

  for (;;) {
    uint64_t lit = 0;
    size_t len = 0;
    int is_body = 0, has;

    if (imap_f_line(s, s->timeout_ms > 0 ? s->timeout_ms : IMAP_TIMEOUT_MS,
        &len) < 0) {
      if (s->resp.bye) {
        imap_reply(s, "%s: the server closed the connection: BYE %s", what,
          s->resp.bye_text);
      } else {
        imap_reply(s, "%s: the connection to %s was lost", what,
          s->base_url);
      }
      return MAILOAUTH_IMAP_TEMPFAIL;
    }

    has = mailoauth_imap_literal(s->line, len, &lit, &is_body);
    if (has < 0) {
      imap_reply(s, "%s: an unusable literal", what);
      return MAILOAUTH_IMAP_TEMPFAIL;
    }
    if (has > 0) {
      if (body != 0 && is_body == body && *got_body == 0) {
        if (s->sink_cap > 0 && lit > s->sink_cap) {
          s->sink_toobig = 1;
          imap_reply(s, "%s: larger than %llu bytes", what,
            (unsigned long long) s->sink_cap);
          return MAILOAUTH_IMAP_TOOBIG;
        }
        (*got_body)++;
        if (imap_f_literal(s, lit, 1) < 0) {
          if (s->sink_failed) {
            imap_reply(s, "%s: storing the message failed: %s", what,
              strerror(s->sink_errno));
          } else {
            imap_reply(s, "%s: the connection to %s was lost after %llu of "
              "%llu bytes", what, s->base_url,
              (unsigned long long) s->sink_bytes, (unsigned long long) lit);
          }
          return MAILOAUTH_IMAP_TEMPFAIL;
        }

      } else if (lit > IMAP_OTHER_LITERAL_MAX ||
                 imap_f_literal(s, lit, 0) < 0) {
        imap_reply(s, "%s: an unexpected literal of %llu bytes", what,
          (unsigned long long) lit);
        return MAILOAUTH_IMAP_TEMPFAIL;
      }
      continue;
    }

    (void) mailoauth_imap_parse_line(&s->resp, s->line, len);

    if (len > taglen && memcmp(s->line, tag, taglen) == 0 &&
        s->line[taglen] == ' ') {
      break;
    }
  }

  if (strcmp(s->resp.tagged_status, "OK") == 0) {
    imap_reply(s, "%s: OK", what);
    return MAILOAUTH_IMAP_OK;
  }

  imap_reply(s, "%s: %s%s%s%s%s", what, s->resp.tagged_status,
    s->resp.tagged_code[0] ? " [" : "", s->resp.tagged_code,
    s->resp.tagged_code[0] ? "] " : " ", s->resp.tagged_text);
  s->hint = mailoauth_mailauth_hint(s->resp.tagged_text);
  return imap_classify_tagged(&s->resp, MAILOAUTH_IMAP_PERM);
}

/* EXAMINE (read-only: nothing done here can change a flag) once per
 * connection, then UID FETCH n BODY.PEEK[].
 */
static mailoauth_imap_status_t imap_f_fetch(struct mailoauth_imap *s,
    uint32_t uid, int section, int *got_body) {
  mailoauth_imap_status_t status;
  char cmd[2 * MAILOAUTH_IMAP_NAME_MAX + 32];
  int tries;

  *got_body = 0;
  status = imap_f_open(s);
  if (status != MAILOAUTH_IMAP_OK) {
    return status;
  }

  for (tries = 0; tries < 2; tries++) {
    if (!s->f_examined) {
      snprintf(cmd, sizeof(cmd), "EXAMINE %s", s->quoted);
      mailoauth_imap_resp_init(&s->resp);
      status = imap_f_command(s, cmd, cmd, 0, got_body);
      if (status != MAILOAUTH_IMAP_OK) {
        return status == MAILOAUTH_IMAP_PERM ? MAILOAUTH_IMAP_MAILBOX :
          status;
      }
      if (!(s->resp.have & MAILOAUTH_IMAP_HAVE_UIDVALIDITY)) {
        imap_reply(s, "%s: the server sent no UIDVALIDITY", cmd);
        return MAILOAUTH_IMAP_TEMPFAIL;
      }
      if (s->resp.uidvalidity != s->uidvalidity) {
        imap_reply(s, "the UIDVALIDITY of %s changed from %lu to %lu: the "
          "folder's UIDs start over", s->folder,
          (unsigned long) s->uidvalidity,
          (unsigned long) s->resp.uidvalidity);
        s->selected = 0;
        s->changed = 1;
        return MAILOAUTH_IMAP_GONE;
      }
      s->f_examined = 1;
    }

    snprintf(cmd, sizeof(cmd), "UID FETCH %lu BODY.PEEK[%s]",
      (unsigned long) uid,
      section == MAILOAUTH_IMAP_LITERAL_HEADER ? "HEADER" : "");
    mailoauth_imap_resp_init(&s->resp);
    status = imap_f_command(s, cmd, cmd, section, got_body);
    if (status != MAILOAUTH_IMAP_OK || *got_body > 0) {
      return status;
    }

    /* Mail that came after this connection's EXAMINE may be unknown to
     * it: look again once.
     */
    s->f_examined = 0;
  }

  imap_reply(s, "UID %lu: no such message in %s", (unsigned long) uid,
    s->folder);
  return MAILOAUTH_IMAP_GONE;
}

/* The literal of one section (MAILOAUTH_IMAP_LITERAL_*) to the sink, on
 * the fetch connection: repeated once on a new connection when a reused
 * one is gone, or with a fresh token when the server ended the session for
 * an expired one, as long as the sink has nothing yet.
 */
static mailoauth_imap_status_t imap_fetch_section(struct mailoauth_imap *s,
    uint32_t uid, int section, uint64_t max_bytes,
    mailoauth_imap_sink_fn sink, void *arg) {
  mailoauth_imap_status_t status = MAILOAUTH_IMAP_TEMPFAIL;
  int attempt, got_body = 0;

  s->sink = sink;
  s->sink_arg = arg;
  s->sink_cap = max_bytes;

  for (attempt = 0; attempt < 2; attempt++) {
    int reused;

    s->token_expired = 0;
    s->sink_bytes = 0;
    s->sink_failed = 0;
    s->sink_toobig = 0;
    imap_token_check(s);
    reused = s->fcurl != NULL && s->fcurl_gen == s->token_gen;

    status = imap_f_fetch(s, uid, section, &got_body);
    if (status == MAILOAUTH_IMAP_OK) {
      break;
    }

    /* The connection's state is not known after a failure. */
    imap_f_close(s, 0);
    if (status != MAILOAUTH_IMAP_TEMPFAIL || s->sink_failed) {
      break;
    }

    if (s->token_fn != NULL && imap_expiry_failure(s, &s->resp)) {
      int fresh = s->token_fn(s, 1, s->token_arg) == 0;

      if (s->sink_bytes > 0 || attempt > 0 || !fresh) {
        /* Part of the body is with the caller: only the caller can start
         * it over, with the fresh token now in place.
         */
        s->token_expired = fresh;
        break;
      }
      mailoauth_trace(trace_channel, 5, "UID %lu: the session of %s ended "
        "with its token; once more with a fresh one", (unsigned long) uid,
        s->user);
      continue;
    }

    if (!reused || s->sink_bytes > 0) {
      break;
    }
    mailoauth_trace(trace_channel, 5, "UID %lu: the reused fetch connection "
      "to %s is gone (%s): once more on a new one", (unsigned long) uid,
      s->base_url, s->reply);
  }

  s->sink = NULL;
  s->sink_arg = NULL;
  return status;
}

mailoauth_imap_status_t mailoauth_imap_fetch(struct mailoauth_imap *s,
    uint32_t uid, uint64_t max_bytes, mailoauth_imap_sink_fn sink, void *arg,
    struct mailoauth_imap_fetched *out) {
  struct mailoauth_imap_msginfo info;
  mailoauth_imap_status_t status;
  size_t found = 0;

  if (out != NULL) {
    memset(out, 0, sizeof(*out));
  }
  if (uid == 0 || sink == NULL) {
    errno = EINVAL;
    return MAILOAUTH_IMAP_PERM;
  }

  status = mailoauth_imap_info(s, &uid, 1, &info, &found);
  if (status != MAILOAUTH_IMAP_OK) {
    return status;
  }
  if (found == 0) {
    imap_reply(s, "UID %lu: no such message in %s", (unsigned long) uid,
      s->folder);
    return MAILOAUTH_IMAP_GONE;
  }

  if (out != NULL) {
    out->size = info.size;
    out->was_seen = (info.flags & MAILOAUTH_IMAP_FLAG_SEEN) != 0;
  }

  if (max_bytes > 0 && info.size > max_bytes) {
    imap_reply(s, "UID %lu is %llu bytes, over the limit of %llu",
      (unsigned long) uid, (unsigned long long) info.size,
      (unsigned long long) max_bytes);
    return MAILOAUTH_IMAP_TOOBIG;
  }

  status = imap_fetch_section(s, uid, MAILOAUTH_IMAP_LITERAL_BODY,
    max_bytes, sink, arg);
  if (out != NULL) {
    out->bytes = s->sink_bytes;
  }
  return status;
}

mailoauth_imap_status_t mailoauth_imap_fetch_header(struct mailoauth_imap *s,
    uint32_t uid, uint64_t max_bytes, mailoauth_imap_sink_fn sink,
    void *arg) {
  mailoauth_imap_status_t status;

  if (uid == 0 || sink == NULL) {
    errno = EINVAL;
    return MAILOAUTH_IMAP_PERM;
  }
  if (imap_need_select(s, &status) < 0) {
    return status;
  }
  return imap_fetch_section(s, uid, MAILOAUTH_IMAP_LITERAL_HEADER,
    max_bytes, sink, arg);
}

mailoauth_imap_status_t mailoauth_imap_fetch_fd(struct mailoauth_imap *s,
    uint32_t uid, uint64_t max_bytes, int fd,
    struct mailoauth_imap_fetched *out) {
  struct imap_fd_sink sink;

  sink.fd = fd;
  return mailoauth_imap_fetch(s, uid, max_bytes, imap_fd_write, &sink, out);
}

/* UID STORE, not .SILENT: the FETCH it answers with shows the message is
 * there.
 */
static mailoauth_imap_status_t imap_store(struct mailoauth_imap *s,
    uint32_t uid, const char *change) {
  struct mailoauth_imap_msginfo info;
  mailoauth_imap_status_t status;
  char cmd[96];

  if (imap_need_select(s, &status) < 0) {
    return status;
  }

  snprintf(cmd, sizeof(cmd), "UID STORE %lu %s", (unsigned long) uid,
    change);
  imap_resp_clear_targets(s);
  s->resp.want = &uid;
  s->resp.info = &info;
  s->resp.n_want = 1;

  status = imap_folder_command(s, cmd, cmd);
  if (status == MAILOAUTH_IMAP_OK && s->resp.fetches == 0) {
    imap_reply(s, "%s: no such message in %s", cmd, s->folder);
    return MAILOAUTH_IMAP_GONE;
  }
  return status;
}

mailoauth_imap_status_t mailoauth_imap_set_seen(struct mailoauth_imap *s,
    uint32_t uid, int seen) {
  if (uid == 0) {
    errno = EINVAL;
    return MAILOAUTH_IMAP_PERM;
  }
  return imap_store(s, uid, seen ? "+FLAGS (\\Seen)" : "-FLAGS (\\Seen)");
}

mailoauth_imap_status_t mailoauth_imap_capabilities(struct mailoauth_imap *s,
    unsigned *caps) {
  mailoauth_imap_status_t status;

  if (!s->have_caps) {
    imap_resp_clear_targets(s);
    status = imap_request(s, IMAP_KIND_COMMAND, s->base_url, "CAPABILITY",
      "CAPABILITY");
    if (status != MAILOAUTH_IMAP_OK) {
      return status;
    }
    if (!(s->resp.have & MAILOAUTH_IMAP_HAVE_CAPS)) {
      imap_reply(s, "CAPABILITY: no capability list in the answer");
      return MAILOAUTH_IMAP_PERM;
    }
    s->caps = s->resp.caps;
    s->have_caps = 1;
  }

  if (caps != NULL) {
    *caps = s->caps;
  }
  return MAILOAUTH_IMAP_OK;
}

/* Whether the folder is there: LIST answers OK either way, where a
 * refused CREATE or STATUS would make libcurl drop the connection.
 */
static mailoauth_imap_status_t imap_folder_listed(struct mailoauth_imap *s,
    const char *wire, const char *quoted, int *listed) {
  mailoauth_imap_status_t status;
  char cmd[2 * MAILOAUTH_IMAP_NAME_MAX + 16];

  *listed = 0;
  snprintf(cmd, sizeof(cmd), "LIST \"\" %s", quoted);
  imap_resp_clear_targets(s);
  s->resp.list_name = wire;
  status = imap_request(s, IMAP_KIND_COMMAND, s->base_url, cmd, cmd);
  *listed = s->resp.list_found;
  return status;
}

mailoauth_imap_status_t mailoauth_imap_create_folder(struct mailoauth_imap *s,
    const char *folder) {
  char wire[MAILOAUTH_IMAP_NAME_MAX + 1];
  char quoted[2 * MAILOAUTH_IMAP_NAME_MAX + 3];
  char cmd[sizeof(quoted) + 32], created[sizeof(s->reply)];
  mailoauth_imap_status_t status;
  int listed = 0;

  if (folder == NULL ||
      mailoauth_imap_folder_name(folder, wire, sizeof(wire)) < 0 ||
      mailoauth_imap_quote(wire, quoted, sizeof(quoted)) < 0) {
    imap_reply(s, "'%s' is not a folder name",
      folder != NULL ? folder : "");
    return MAILOAUTH_IMAP_PERM;
  }

  status = imap_folder_listed(s, wire, quoted, &listed);
  if (status != MAILOAUTH_IMAP_OK) {
    return status;
  }
  if (listed) {
    imap_reply(s, "%s exists", quoted);
    return MAILOAUTH_IMAP_OK;
  }

  snprintf(cmd, sizeof(cmd), "CREATE %s", quoted);
  imap_resp_clear_targets(s);
  status = imap_request(s, IMAP_KIND_COMMAND, s->base_url, cmd, cmd);
  if (status != MAILOAUTH_IMAP_PERM && status != MAILOAUTH_IMAP_MAILBOX) {
    return status;
  }

  if (imap_code_is(&s->resp, "ALREADYEXISTS")) {
    return MAILOAUTH_IMAP_OK;
  }

  /* Someone else may have made it meanwhile. */
  snprintf(created, sizeof(created), "%s", s->reply);
  if (imap_folder_listed(s, wire, quoted, &listed) == MAILOAUTH_IMAP_OK &&
      listed) {
    imap_reply(s, "%s exists", quoted);
    return MAILOAUTH_IMAP_OK;
  }

  snprintf(s->reply, sizeof(s->reply), "%s", created);
  return status;
}

static mailoauth_imap_status_t imap_copy_or_move(struct mailoauth_imap *s,
    const char *verb, uint32_t uid, const char *quoted, uint32_t *new_uid) {
  mailoauth_imap_status_t status;
  char cmd[2 * MAILOAUTH_IMAP_NAME_MAX + 64];

  snprintf(cmd, sizeof(cmd), "UID %s %lu %s", verb, (unsigned long) uid,
    quoted);
  imap_resp_clear_targets(s);
  status = imap_folder_command(s, cmd, cmd);
  if (status == MAILOAUTH_IMAP_OK && new_uid != NULL &&
      (s->resp.have & MAILOAUTH_IMAP_HAVE_COPYUID)) {
    *new_uid = s->resp.copyuid_uid;
  }
  return status;
}

static int imap_missing_target(const struct mailoauth_imap *s) {
  return imap_code_is(&s->resp, "TRYCREATE") ||
    imap_code_is(&s->resp, "NONEXISTENT");
}

mailoauth_imap_status_t mailoauth_imap_move(struct mailoauth_imap *s,
    uint32_t uid, const char *folder, int create, uint32_t *new_uid) {
  char wire[MAILOAUTH_IMAP_NAME_MAX + 1];
  char quoted[2 * MAILOAUTH_IMAP_NAME_MAX + 3];
  mailoauth_imap_status_t status;
  unsigned caps = 0;
  int tries;

  if (new_uid != NULL) {
    *new_uid = 0;
  }
  if (uid == 0 || folder == NULL ||
      mailoauth_imap_folder_name(folder, wire, sizeof(wire)) < 0 ||
      mailoauth_imap_quote(wire, quoted, sizeof(quoted)) < 0) {
    imap_reply(s, "cannot move to '%s': not a folder name",
      folder != NULL ? folder : "");
    return MAILOAUTH_IMAP_PERM;
  }

  if (imap_need_select(s, &status) < 0) {
    return status;
  }

  status = mailoauth_imap_capabilities(s, &caps);
  if (status != MAILOAUTH_IMAP_OK) {
    return status;
  }

  for (tries = 0; tries < 2; tries++) {
    /* Made sure of once per target: a move to a missing folder fails,
     * and libcurl drops the connection after any failed command.
     */
    if (create && (s->target == NULL || strcmp(s->target, wire) != 0)) {
      status = mailoauth_imap_create_folder(s, wire);
      if (status != MAILOAUTH_IMAP_OK) {
        return status;
      }
      free(s->target);
      s->target = strdup(wire);
    }

    if (caps & MAILOAUTH_IMAP_CAP_MOVE) {
      status = imap_copy_or_move(s, "MOVE", uid, quoted, new_uid);
      if (status == MAILOAUTH_IMAP_OK && s->resp.expunged == 0 &&
          !(s->resp.have & MAILOAUTH_IMAP_HAVE_COPYUID)) {
        imap_reply(s, "UID MOVE %lu: no such message in %s",
          (unsigned long) uid, s->folder);
        return MAILOAUTH_IMAP_GONE;
      }

    } else {
      status = imap_copy_or_move(s, "COPY", uid, quoted, new_uid);
      if (status == MAILOAUTH_IMAP_OK) {
        if ((caps & MAILOAUTH_IMAP_CAP_UIDPLUS) &&
            !(s->resp.have & MAILOAUTH_IMAP_HAVE_COPYUID)) {
          imap_reply(s, "UID COPY %lu: no such message in %s",
            (unsigned long) uid, s->folder);
          return MAILOAUTH_IMAP_GONE;
        }
        return mailoauth_imap_delete(s, uid);
      }
    }

    if (status == MAILOAUTH_IMAP_OK || !imap_missing_target(s)) {
      return status;
    }

    /* Gone since it was made sure of (or never was): once more. */
    free(s->target);
    s->target = NULL;
    if (!create) {
      return status;
    }
  }
  return status;
}

mailoauth_imap_status_t mailoauth_imap_delete(struct mailoauth_imap *s,
    uint32_t uid) {
  mailoauth_imap_status_t status;
  unsigned caps = 0;
  char cmd[64];

  if (uid == 0) {
    errno = EINVAL;
    return MAILOAUTH_IMAP_PERM;
  }

  if (imap_need_select(s, &status) < 0) {
    return status;
  }

  status = mailoauth_imap_capabilities(s, &caps);
  if (status != MAILOAUTH_IMAP_OK) {
    return status;
  }

  status = imap_store(s, uid, "+FLAGS (\\Deleted)");
  if (status != MAILOAUTH_IMAP_OK) {
    return status;
  }

  if (!(caps & MAILOAUTH_IMAP_CAP_UIDPLUS)) {
    imap_reply(s, "UID %lu marked \\Deleted; the server offers no UID "
      "EXPUNGE, so it stays until the folder is expunged",
      (unsigned long) uid);
    return MAILOAUTH_IMAP_OK;
  }

  snprintf(cmd, sizeof(cmd), "UID EXPUNGE %lu", (unsigned long) uid);
  imap_resp_clear_targets(s);
  return imap_folder_command(s, cmd, cmd);
}
