/*
 * mod_mailoauth - sending one message through Microsoft Graph sendMail
 */

#include "mailoauth/graph.h"
#include "mailoauth/buf.h"
#include "mailoauth/trace.h"
#include "mailoauth/version.h"

#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *trace_channel = "mailoauth.graph";

/* Raw bytes encoded per read: a multiple of 3, so that the pieces of
 * base64 join without padding in the middle.
 */
#define GRAPH_RAW_CHUNK         (3 * 4096)

/* Graph's error bodies are small; more is not an error body. */
#define GRAPH_BODY_MAX          16384

struct mailoauth_graph {
  CURL *curl;
  char *base_url;
  char *mailbox;
  char *ca_file;
  int fresh;
  long last_status;             /* HTTP status of the last answer */
  unsigned long connections;
};

/* The message's MIME stream turned into base64 on the fly. */
struct graph_b64 {
  struct mailoauth_message *msg;
  unsigned char raw[GRAPH_RAW_CHUNK];
  unsigned char out[GRAPH_RAW_CHUNK / 3 * 4 + 1];
  size_t out_len, out_off;
  int eof, failed;
};

struct graph_answer {
  struct mailoauth_buf body;
  long retry_after;
};

struct mailoauth_graph *mailoauth_graph_create(const char *base_url,
    const char *mailbox, const char *ca_file) {
  struct mailoauth_graph *g;
  size_t len;

  g = calloc(1, sizeof(*g));
  if (g == NULL) {
    return NULL;
  }

  g->base_url = strdup(base_url);
  g->mailbox = strdup(mailbox);
  g->ca_file = ca_file ? strdup(ca_file) : NULL;
  g->curl = curl_easy_init();
  if (g->base_url == NULL ||
      g->mailbox == NULL ||
      (ca_file != NULL && g->ca_file == NULL) ||
      g->curl == NULL) {
    mailoauth_graph_destroy(g);
    errno = ENOMEM;
    return NULL;
  }

  /* "https://graph.microsoft.com/" and without the slash alike. */
  len = strlen(g->base_url);
  while (len > 0 && g->base_url[len - 1] == '/') {
    g->base_url[--len] = '\0';
  }
  return g;
}

void mailoauth_graph_destroy(struct mailoauth_graph *g) {
  if (g == NULL) {
    return;
  }

  if (g->curl != NULL) {
    curl_easy_cleanup(g->curl);
  }
  free(g->base_url);
  free(g->mailbox);
  free(g->ca_file);
  free(g);
}

void mailoauth_graph_reconnect(struct mailoauth_graph *g) {
  g->fresh = 1;
}

long mailoauth_graph_last_status(const struct mailoauth_graph *g) {
  return g->last_status;
}

unsigned long mailoauth_graph_connections(const struct mailoauth_graph *g) {
  return g->connections;
}

mailoauth_smtp_status_t mailoauth_graph_classify(long http_status,
    const char *code) {
  if (http_status >= 200 && http_status < 300) {
    return MAILOAUTH_SMTP_SENT;
  }

  if (http_status == 401) {
    return MAILOAUTH_SMTP_AUTHFAIL;
  }

  if (http_status == 429 || http_status == 408 || http_status >= 500 ||
      http_status == 0) {
    return MAILOAUTH_SMTP_TEMPFAIL;
  }

  /* Missing permissions, Send As rights, an unknown or REST-disabled
   * mailbox, an application access policy: nothing wrong with the
   * message, a person must fix the tenant; keep it queued.
   */
  if (http_status == 403 || http_status == 404) {
    return MAILOAUTH_SMTP_CONFIG;
  }
  if (code != NULL &&
      strcmp(code, "MailboxNotEnabledForRESTAPI") == 0) {
    return MAILOAUTH_SMTP_CONFIG;
  }

  /* 400 (invalid MIME, recipients), 413 (too large): this message never
   * will go.
   */
  return MAILOAUTH_SMTP_PERMFAIL;
}

static size_t graph_read(char *buf, size_t size, size_t nitems, void *arg) {
  struct graph_b64 *b = arg;
  size_t want = size * nitems, n;

  if (b->out_off == b->out_len && !b->eof) {
    size_t have = 0;

    while (have < sizeof(b->raw)) {
      size_t got = mailoauth_message_read((char *) b->raw + have, 1,
        sizeof(b->raw) - have, b->msg);

      if (got == MAILOAUTH_MESSAGE_READ_ABORT) {
        b->failed = 1;
        return CURL_READFUNC_ABORT;
      }
      if (got == 0) {
        b->eof = 1;
        break;
      }
      have += got;
    }

    b->out_len = have > 0 ?
      (size_t) EVP_EncodeBlock(b->out, b->raw, (int) have) : 0;
    b->out_off = 0;
  }

  n = b->out_len - b->out_off;
  if (n > want) {
    n = want;
  }
  memcpy(buf, b->out + b->out_off, n);
  b->out_off += n;
  return n;
}

/* The base64 size of the whole message, by reading it once: the request
 * must be known to fit before it is sent, and Content-Length spares the
 * chunked encoding.  -1 when the message cannot be read.
 */
static curl_off_t graph_encoded_size(struct mailoauth_message *msg) {
  char buf[16384];
  curl_off_t raw = 0;

  if (mailoauth_message_rewind(msg) < 0) {
    return -1;
  }
  for (;;) {
    size_t got = mailoauth_message_read(buf, 1, sizeof(buf), msg);

    if (got == MAILOAUTH_MESSAGE_READ_ABORT) {
      return -1;
    }
    if (got == 0) {
      break;
    }
    raw += (curl_off_t) got;
  }
  if (mailoauth_message_rewind(msg) < 0) {
    return -1;
  }
  return (raw + 2) / 3 * 4;
}

static size_t graph_write(char *data, size_t size, size_t nmemb, void *arg) {
  struct graph_answer *a = arg;
  size_t n = size * nmemb;

  if (a->body.len + n <= GRAPH_BODY_MAX) {
    (void) mailoauth_buf_add(&a->body, data, n);
  }
  return n;
}

static size_t graph_header(char *data, size_t size, size_t nmemb,
    void *arg) {
  struct graph_answer *a = arg;
  size_t n = size * nmemb;

  if (n > 12 && strncasecmp(data, "Retry-After:", 12) == 0) {
    char tmp[32];
    size_t len = n - 12 < sizeof(tmp) - 1 ? n - 12 : sizeof(tmp) - 1;
    long v;

    memcpy(tmp, data + 12, len);
    tmp[len] = '\0';
    v = strtol(tmp, NULL, 10);
    if (v > 0 && v < 86400) {
      a->retry_after = v;
    }
  }
  return n;
}

/* "ErrorSendAsDenied: The user account ..." from Graph's error body. */
static void graph_describe(long http_status, const struct mailoauth_buf *body,
    char *code, size_t codelen, char *reply, size_t replylen) {
  json_t *root, *err;
  const char *c = NULL, *m = NULL;

  code[0] = '\0';
  root = body->len > 0 ?
    json_loadb(body->data, body->len, JSON_DISABLE_EOF_CHECK, NULL) : NULL;
  err = root ? json_object_get(root, "error") : NULL;
  if (json_is_object(err)) {
    c = json_string_value(json_object_get(err, "code"));
    m = json_string_value(json_object_get(err, "message"));
  }

  if (c != NULL) {
    snprintf(code, codelen, "%s", c);
  }
  snprintf(reply, replylen, "HTTP %ld%s%s%s%.300s", http_status,
    c ? " " : "", c ? c : "", m ? ": " : "", m ? m : "");
  json_decref(root);
}

mailoauth_smtp_status_t mailoauth_graph_send(struct mailoauth_graph *g,
    const char *token, struct mailoauth_message *msg, char *reply,
    size_t replylen, long *retry_after_s) {
  struct graph_b64 *b64 = NULL;
  struct graph_answer ans;
  struct mailoauth_buf url = { NULL, 0, 0, 0, 0 };
  struct mailoauth_buf auth = MAILOAUTH_BUF_SECRET;
  struct curl_slist *headers = NULL, *h;
  mailoauth_smtp_status_t status;
  char err[CURL_ERROR_SIZE], code[128];
  char *mailbox_esc = NULL;
  curl_off_t size;
  long http_status = 0, connects = 0;
  CURLcode rc;

  reply[0] = '\0';
  *retry_after_s = 0;
  g->last_status = 0;
  memset(&ans, 0, sizeof(ans));

  /* A retry finds the message read to its end. */
  if (mailoauth_message_rewind(msg) < 0 ||
      mailoauth_message_set_bcc_header(msg, 1) < 0 ||
      mailoauth_message_prepare(msg) < 0) {
    snprintf(reply, replylen, "cannot build the message: %s",
      strerror(errno));
    return MAILOAUTH_SMTP_PERMFAIL;
  }

  size = graph_encoded_size(msg);
  if (size < 0) {
    snprintf(reply, replylen, "reading the message (attachment) failed");
    return MAILOAUTH_SMTP_TEMPFAIL;
  }
  if (size > MAILOAUTH_GRAPH_MAX_REQUEST) {
    snprintf(reply, replylen, "the message is %lld bytes in base64, over "
      "the %ld bytes Graph sendMail takes in one request",
      (long long) size, MAILOAUTH_GRAPH_MAX_REQUEST);
    return MAILOAUTH_SMTP_PERMFAIL;
  }

  b64 = calloc(1, sizeof(*b64));
  mailbox_esc = curl_easy_escape(g->curl, g->mailbox, 0);
  if (b64 == NULL ||
      mailbox_esc == NULL ||
      mailoauth_buf_addf(&url, "%s/v1.0/users/%s/sendMail", g->base_url,
        mailbox_esc) < 0 ||
      mailoauth_buf_addf(&auth, "Authorization: Bearer %s", token) < 0) {
    snprintf(reply, replylen, "out of memory");
    status = MAILOAUTH_SMTP_TEMPFAIL;
    goto done;
  }
  b64->msg = msg;

  h = curl_slist_append(headers, auth.data);
  if (h != NULL) {
    headers = h;
    h = curl_slist_append(headers, "Content-Type: text/plain");
  }
  if (h != NULL) {
    headers = h;
    /* Sent at once: a 100-continue round trip per message buys nothing
     * when the answer is almost always 202.
     */
    h = curl_slist_append(headers, "Expect:");
  }
  if (h == NULL) {
    snprintf(reply, replylen, "out of memory");
    status = MAILOAUTH_SMTP_TEMPFAIL;
    goto done;
  }
  headers = h;

  err[0] = '\0';
  curl_easy_reset(g->curl);
  curl_easy_setopt(g->curl, CURLOPT_URL, url.data);
#if LIBCURL_VERSION_NUM >= 0x075500
  curl_easy_setopt(g->curl, CURLOPT_PROTOCOLS_STR, "https");
#else
  curl_easy_setopt(g->curl, CURLOPT_PROTOCOLS, (long) CURLPROTO_HTTPS);
#endif
  curl_easy_setopt(g->curl, CURLOPT_SSL_VERIFYPEER, 1L);
  curl_easy_setopt(g->curl, CURLOPT_SSL_VERIFYHOST, 2L);
  if (g->ca_file != NULL) {
    curl_easy_setopt(g->curl, CURLOPT_CAINFO, g->ca_file);
  }
  curl_easy_setopt(g->curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(g->curl, CURLOPT_USERAGENT, MOD_MAILOAUTH_VERSION);
  curl_easy_setopt(g->curl, CURLOPT_POST, 1L);
  curl_easy_setopt(g->curl, CURLOPT_POSTFIELDSIZE_LARGE, size);
  curl_easy_setopt(g->curl, CURLOPT_READFUNCTION, graph_read);
  curl_easy_setopt(g->curl, CURLOPT_READDATA, b64);
  curl_easy_setopt(g->curl, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(g->curl, CURLOPT_WRITEFUNCTION, graph_write);
  curl_easy_setopt(g->curl, CURLOPT_WRITEDATA, &ans);
  curl_easy_setopt(g->curl, CURLOPT_HEADERFUNCTION, graph_header);
  curl_easy_setopt(g->curl, CURLOPT_HEADERDATA, &ans);
  curl_easy_setopt(g->curl, CURLOPT_ERRORBUFFER, err);
  curl_easy_setopt(g->curl, CURLOPT_CONNECTTIMEOUT_MS, 30000L);
  curl_easy_setopt(g->curl, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(g->curl, CURLOPT_LOW_SPEED_TIME, 60L);
  curl_easy_setopt(g->curl, CURLOPT_FRESH_CONNECT, g->fresh ? 1L : 0L);
  g->fresh = 0;

  rc = curl_easy_perform(g->curl);
  curl_easy_getinfo(g->curl, CURLINFO_RESPONSE_CODE, &http_status);
  g->last_status = http_status;
  curl_easy_getinfo(g->curl, CURLINFO_NUM_CONNECTS, &connects);
  g->connections += (unsigned long) connects;

  /* Nothing of the token may stay referenced by the handle. */
  curl_easy_setopt(g->curl, CURLOPT_HTTPHEADER, NULL);
  curl_easy_setopt(g->curl, CURLOPT_ERRORBUFFER, NULL);

  if (b64->failed || mailoauth_message_stream_error(msg) != 0) {
    snprintf(reply, replylen, "reading the message (attachment) failed");
    status = MAILOAUTH_SMTP_TEMPFAIL;

  } else if (rc != CURLE_OK) {
    snprintf(reply, replylen, "%s", err[0] ? err : curl_easy_strerror(rc));
    status = (rc == CURLE_PEER_FAILED_VERIFICATION ||
              rc == CURLE_SSL_CACERT_BADFILE ||
              rc == CURLE_URL_MALFORMAT ||
              rc == CURLE_UNSUPPORTED_PROTOCOL) ?
      MAILOAUTH_SMTP_CONFIG : MAILOAUTH_SMTP_TEMPFAIL;

  } else {
    graph_describe(http_status, &ans.body, code, sizeof(code), reply,
      replylen);
    status = mailoauth_graph_classify(http_status, code[0] ? code : NULL);
    if (status == MAILOAUTH_SMTP_TEMPFAIL) {
      *retry_after_s = ans.retry_after;
    }
  }

  mailoauth_trace(trace_channel, status == MAILOAUTH_SMTP_SENT ? 9 : 4,
    "sendMail for %s: %s (curl %d, HTTP %ld, %lld bytes, %ld new "
    "connections): %s", g->mailbox, mailoauth_smtp_status_name(status),
    (int) rc, http_status, (long long) size, connects, reply);

done:
  curl_slist_free_all(headers);
  curl_free(mailbox_esc);
  mailoauth_buf_free(&auth);
  mailoauth_buf_free(&url);
  mailoauth_buf_free(&ans.body);
  free(b64);
  return status;
}
