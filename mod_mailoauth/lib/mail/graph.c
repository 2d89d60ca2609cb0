/*
 * mod_mailoauth - sending one message through Microsoft Graph sendMail
 */

#include "mailoauth/graph.h"
#include "mailoauth/buf.h"
#include "mailoauth/jsonwrap.h"
#include "mailoauth/trace.h"
#include "mailoauth/version.h"

#include <curl/curl.h>
#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

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

/* One request's body: bytes in memory, the message in base64, or a range
 * of the attached file.
 */
struct graph_body {
  const char *data;             /* in memory (may be NULL with len 0) */
  size_t len, off;
  struct graph_b64 *b64;        /* or the message */
  int fd;                       /* or pread() of the file from pos */
  off_t pos, end;
  int failed;
};

static size_t graph_body_read(char *buf, size_t size, size_t nitems,
    void *arg) {
  struct graph_body *body = arg;
  size_t want = size * nitems;

  if (body->b64 != NULL) {
    size_t n = graph_read(buf, size, nitems, body->b64);

    if (n == CURL_READFUNC_ABORT) {
      body->failed = 1;
    }
    return n;
  }

  if (body->fd >= 0) {
    ssize_t n;

    if (body->pos >= body->end) {
      return 0;
    }
    if ((off_t) want > body->end - body->pos) {
      want = (size_t) (body->end - body->pos);
    }
    n = pread(body->fd, buf, want, body->pos);
    if (n <= 0) {
      /* The file shrank or cannot be read: the declared length cannot be
       * met, so the request must not complete.
       */
      body->failed = 1;
      return CURL_READFUNC_ABORT;
    }
    body->pos += n;
    return (size_t) n;
  }

  if (want > body->len - body->off) {
    want = body->len - body->off;
  }
  memcpy(buf, body->data + body->off, want);
  body->off += want;
  return want;
}

/* One HTTPS request to Graph.  token NULL: no Authorization header (an
 * upload session's URL carries its own authorization, and Graph refuses
 * a bearer token there).  Returns the outcome; *answer holds the body.
 */
static mailoauth_smtp_status_t graph_request(struct mailoauth_graph *g,
    const char *method, const char *url, const char *token,
    const char *content_type, const char *extra_header,
    struct graph_body *body, curl_off_t body_len, struct graph_answer *ans,
    char *reply, size_t replylen, long *retry_after_s) {
  struct mailoauth_buf auth = MAILOAUTH_BUF_SECRET;
  struct curl_slist *headers = NULL, *h = NULL;
  mailoauth_smtp_status_t status;
  char err[CURL_ERROR_SIZE], code[128], ctype[128];
  long http_status = 0, connects = 0;
  CURLcode rc;

  mailoauth_buf_clear(&ans->body);
  ans->retry_after = 0;
  g->last_status = 0;

  snprintf(ctype, sizeof(ctype), "Content-Type: %s",
    content_type ? content_type : "application/json");
  if (token != NULL &&
      mailoauth_buf_addf(&auth, "Authorization: Bearer %s", token) < 0) {
    snprintf(reply, replylen, "out of memory");
    return MAILOAUTH_SMTP_TEMPFAIL;
  }

  /* Sent at once: a 100-continue round trip per request buys nothing
   * when the answer is almost always a success.
   */
  h = curl_slist_append(NULL, "Expect:");
  if (h != NULL) {
    headers = h;
    h = curl_slist_append(headers, ctype);
  }
  if (h != NULL && token != NULL) {
    headers = h;
    h = curl_slist_append(headers, auth.data);
  }
  if (h != NULL && extra_header != NULL) {
    headers = h;
    h = curl_slist_append(headers, extra_header);
  }
  if (h == NULL) {
    curl_slist_free_all(headers);
    mailoauth_buf_free(&auth);
    snprintf(reply, replylen, "out of memory");
    return MAILOAUTH_SMTP_TEMPFAIL;
  }
  headers = h;

  err[0] = '\0';
  curl_easy_reset(g->curl);
  curl_easy_setopt(g->curl, CURLOPT_URL, url);
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
  if (strcmp(method, "PUT") == 0) {
    curl_easy_setopt(g->curl, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(g->curl, CURLOPT_INFILESIZE_LARGE, body_len);
  } else {
    curl_easy_setopt(g->curl, CURLOPT_POST, 1L);
    curl_easy_setopt(g->curl, CURLOPT_POSTFIELDSIZE_LARGE, body_len);
    if (strcmp(method, "POST") != 0) {
      curl_easy_setopt(g->curl, CURLOPT_CUSTOMREQUEST, method);
    }
  }
  curl_easy_setopt(g->curl, CURLOPT_READFUNCTION, graph_body_read);
  curl_easy_setopt(g->curl, CURLOPT_READDATA, body);
  curl_easy_setopt(g->curl, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(g->curl, CURLOPT_WRITEFUNCTION, graph_write);
  curl_easy_setopt(g->curl, CURLOPT_WRITEDATA, ans);
  curl_easy_setopt(g->curl, CURLOPT_HEADERFUNCTION, graph_header);
  curl_easy_setopt(g->curl, CURLOPT_HEADERDATA, ans);
  curl_easy_setopt(g->curl, CURLOPT_ERRORBUFFER, err);
  curl_easy_setopt(g->curl, CURLOPT_CONNECTTIMEOUT_MS, 30000L);
  curl_easy_setopt(g->curl, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(g->curl, CURLOPT_LOW_SPEED_TIME, 60L);
  curl_easy_setopt(g->curl, CURLOPT_FRESH_CONNECT, g->fresh ? 1L : 0L);
  g->fresh = 0;

  rc = curl_easy_perform(g->curl);
  curl_easy_getinfo(g->curl, CURLINFO_RESPONSE_CODE, &http_status);
  curl_easy_getinfo(g->curl, CURLINFO_NUM_CONNECTS, &connects);
  g->connections += (unsigned long) connects;
  g->last_status = http_status;

  /* Nothing of the token may stay referenced by the handle. */
  curl_easy_setopt(g->curl, CURLOPT_HTTPHEADER, NULL);
  curl_easy_setopt(g->curl, CURLOPT_ERRORBUFFER, NULL);
  curl_slist_free_all(headers);
  mailoauth_buf_free(&auth);

  if (body->failed) {
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
    graph_describe(http_status, &ans->body, code, sizeof(code), reply,
      replylen);
    status = mailoauth_graph_classify(http_status, code[0] ? code : NULL);
    if (status == MAILOAUTH_SMTP_TEMPFAIL) {
      *retry_after_s = ans->retry_after;
    }
  }

  mailoauth_trace(trace_channel, status == MAILOAUTH_SMTP_SENT ? 9 : 4,
    "%s %s for %s: %s (curl %d, HTTP %ld, %lld bytes, %ld new "
    "connections): %s", method, strstr(url, "/v1.0/") ?
      strstr(url, "/v1.0/") : "(upload session)", g->mailbox,
    mailoauth_smtp_status_name(status), (int) rc, http_status,
    (long long) body_len, connects, reply);
  return status;
}

/* A string member of the JSON answer, copied; NULL if absent. */
static char *graph_answer_str(const struct graph_answer *ans,
    const char *key) {
  json_t *root, *v;
  char *out = NULL;

  root = json_loadb(ans->body.data ? ans->body.data : "", ans->body.len, 0,
    NULL);
  v = root ? json_object_get(root, key) : NULL;
  if (json_is_string(v)) {
    out = strdup(json_string_value(v));
  }
  json_decref(root);
  return out;
}

static mailoauth_smtp_status_t graph_post_mime(struct mailoauth_graph *g,
    const char *url, const char *token, struct mailoauth_message *msg,
    curl_off_t size, struct graph_answer *ans, char *reply, size_t replylen,
    long *retry_after_s) {
  struct graph_b64 *b64;
  struct graph_body body;
  mailoauth_smtp_status_t status;

  b64 = calloc(1, sizeof(*b64));
  if (b64 == NULL) {
    snprintf(reply, replylen, "out of memory");
    return MAILOAUTH_SMTP_TEMPFAIL;
  }
  b64->msg = msg;
  memset(&body, 0, sizeof(body));
  body.fd = -1;
  body.b64 = b64;

  status = graph_request(g, "POST", url, token, "text/plain", NULL, &body,
    size, ans, reply, replylen, retry_after_s);
  if (status == MAILOAUTH_SMTP_SENT &&
      mailoauth_message_stream_error(msg) != 0) {
    status = MAILOAUTH_SMTP_TEMPFAIL;
  }
  free(b64);
  return status;
}

/* The file in PUTs of at most 4 MB to the upload session, each a
 * multiple of 320 KiB as Graph asks.  A piece whose connection broke
 * without an answer is sent again at once (a few times); an answer that
 * refuses it, throttling included, ends the upload: the caller deletes the
 * draft and the queue waits, at least as long as Retry-After says.
 */
static mailoauth_smtp_status_t graph_upload(struct mailoauth_graph *g,
    const char *upload_url, int fd, off_t size, struct graph_answer *ans,
    char *reply, size_t replylen, long *retry_after_s) {
  mailoauth_smtp_status_t status = MAILOAUTH_SMTP_SENT;
  off_t pos = 0;
  unsigned int tries = 0;

  while (pos < size) {
    struct graph_body body;
    char range[96];
    off_t end = pos + MAILOAUTH_GRAPH_UPLOAD_CHUNK;

    if (end > size) {
      end = size;
    }
    snprintf(range, sizeof(range), "Content-Range: bytes %lld-%lld/%lld",
      (long long) pos, (long long) end - 1, (long long) size);
    memset(&body, 0, sizeof(body));
    body.fd = fd;
    body.pos = pos;
    body.end = end;

    status = graph_request(g, "PUT", upload_url, NULL,
      "application/octet-stream", range, &body, (curl_off_t) (end - pos),
      ans, reply, replylen, retry_after_s);
    if (status == MAILOAUTH_SMTP_SENT) {
      pos = end;
      tries = 0;
      continue;
    }
    if (status != MAILOAUTH_SMTP_TEMPFAIL || g->last_status != 0 ||
        ++tries > 3) {
      return status;
    }
  }
  return status;
}

/* Making and filling a draft needs Mail.ReadWrite, which a sender with
 * Mail.Send alone lacks: the reply says which step was refused, and the
 * hint (mailauth.c) what to grant.
 */
static void graph_large_refusal(const struct mailoauth_graph *g,
    char *reply, size_t replylen) {
  char was[512];

  if (g->last_status != 403) {
    return;
  }
  snprintf(was, sizeof(was), "%s", reply);
  snprintf(reply, replylen, "draft for a large file refused: %s", was);
}

/* Over one request's size: a draft from the MIME without the file, the
 * file through an upload session, then send.  The draft is deleted when a
 * step fails, so that a retry does not leave copies in Drafts.
 */
static mailoauth_smtp_status_t graph_send_large(struct mailoauth_graph *g,
    const char *user_url, const char *token, struct mailoauth_message *msg,
    struct graph_answer *ans, char *reply, size_t replylen,
    long *retry_after_s) {
  struct mailoauth_buf url = { NULL, 0, 0, 0, 0 };
  struct graph_body empty;
  mailoauth_smtp_status_t status;
  const char *name, *type;
  char *id = NULL, *upload_url = NULL, *json = NULL, *id_esc = NULL;
  curl_off_t draft_size;
  json_t *item;
  off_t size;
  int fd;

  if (mailoauth_message_get_attachment(msg, &fd, &name, &type, &size) < 0) {
    snprintf(reply, replylen, "the message is over the %ld bytes Graph "
      "takes in one request", MAILOAUTH_GRAPH_MAX_REQUEST);
    return MAILOAUTH_SMTP_PERMFAIL;
  }
  if (size > MAILOAUTH_GRAPH_MAX_ATTACHMENT) {
    snprintf(reply, replylen, "the attachment is %lld bytes, over the "
      "%lld bytes Microsoft Graph takes", (long long) size,
      (long long) MAILOAUTH_GRAPH_MAX_ATTACHMENT);
    return MAILOAUTH_SMTP_PERMFAIL;
  }

  if (mailoauth_message_rewind(msg) < 0 ||
      mailoauth_message_set_omit_attachment(msg, 1) < 0 ||
      mailoauth_message_prepare(msg) < 0 ||
      (draft_size = graph_encoded_size(msg)) < 0) {
    (void) mailoauth_message_set_omit_attachment(msg, 0);
    snprintf(reply, replylen, "cannot build the message: %s",
      strerror(errno));
    return MAILOAUTH_SMTP_TEMPFAIL;
  }

  memset(&empty, 0, sizeof(empty));
  empty.fd = -1;

  if (mailoauth_buf_addf(&url, "%s/messages", user_url) < 0) {
    status = MAILOAUTH_SMTP_TEMPFAIL;
    goto done;
  }
  status = graph_post_mime(g, url.data, token, msg, draft_size, ans, reply,
    replylen, retry_after_s);
  (void) mailoauth_message_set_omit_attachment(msg, 0);
  if (status != MAILOAUTH_SMTP_SENT) {
    graph_large_refusal(g, reply, replylen);
    goto done;
  }
  id = graph_answer_str(ans, "id");
  id_esc = id ? curl_easy_escape(g->curl, id, 0) : NULL;
  if (id_esc == NULL) {
    snprintf(reply, replylen, "Graph created a draft without an id");
    status = MAILOAUTH_SMTP_TEMPFAIL;
    goto done;
  }

  item = json_pack("{s:{s:s, s:s, s:I, s:s}}", "AttachmentItem",
    "attachmentType", "file", "name", name, "size", (json_int_t) size,
    "contentType", type);
  json = item ? json_dumps(item, JSON_COMPACT) : NULL;
  json_decref(item);
  mailoauth_buf_clear(&url);
  if (json == NULL ||
      mailoauth_buf_addf(&url, "%s/messages/%s/attachments/"
        "createUploadSession", user_url, id_esc) < 0) {
    snprintf(reply, replylen, "out of memory");
    status = MAILOAUTH_SMTP_TEMPFAIL;
    goto cancel;
  }
  empty.data = json;
  empty.len = strlen(json);
  status = graph_request(g, "POST", url.data, token, NULL, NULL, &empty,
    (curl_off_t) empty.len, ans, reply, replylen, retry_after_s);
  if (status != MAILOAUTH_SMTP_SENT) {
    graph_large_refusal(g, reply, replylen);
    goto cancel;
  }
  upload_url = graph_answer_str(ans, "uploadUrl");
  if (upload_url == NULL ||
      strncasecmp(upload_url, "https://", 8) != 0) {
    snprintf(reply, replylen, "Graph opened an upload session without an "
      "https uploadUrl");
    status = MAILOAUTH_SMTP_TEMPFAIL;
    goto cancel;
  }

  status = graph_upload(g, upload_url, fd, size, ans, reply, replylen,
    retry_after_s);
  if (status != MAILOAUTH_SMTP_SENT) {
    goto cancel;
  }

  mailoauth_buf_clear(&url);
  if (mailoauth_buf_addf(&url, "%s/messages/%s/send", user_url,
      id_esc) < 0) {
    status = MAILOAUTH_SMTP_TEMPFAIL;
    goto cancel;
  }
  memset(&empty, 0, sizeof(empty));
  empty.fd = -1;
  status = graph_request(g, "POST", url.data, token, NULL, NULL, &empty, 0,
    ans, reply, replylen, retry_after_s);
  if (status == MAILOAUTH_SMTP_SENT) {
    goto done;
  }

cancel:
  if (id_esc != NULL) {
    struct graph_answer scratch;
    char ignored[256];
    long ra;

    memset(&scratch, 0, sizeof(scratch));
    memset(&empty, 0, sizeof(empty));
    empty.fd = -1;
    mailoauth_buf_clear(&url);
    if (mailoauth_buf_addf(&url, "%s/messages/%s", user_url, id_esc) == 0) {
      (void) graph_request(g, "DELETE", url.data, token, NULL, NULL, &empty,
        0, &scratch, ignored, sizeof(ignored), &ra);
    }
    mailoauth_buf_free(&scratch.body);
  }

done:
  curl_free(id_esc);
  free(id);
  free(upload_url);
  free(json);
  mailoauth_buf_free(&url);
  return status;
}

mailoauth_smtp_status_t mailoauth_graph_send(struct mailoauth_graph *g,
    const char *token, struct mailoauth_message *msg, char *reply,
    size_t replylen, long *retry_after_s) {
  struct graph_answer ans;
  struct mailoauth_buf user_url = { NULL, 0, 0, 0, 0 };
  struct mailoauth_buf url = { NULL, 0, 0, 0, 0 };
  mailoauth_smtp_status_t status;
  char *mailbox_esc;
  curl_off_t size;

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

  mailbox_esc = curl_easy_escape(g->curl, g->mailbox, 0);
  if (mailbox_esc == NULL ||
      mailoauth_buf_addf(&user_url, "%s/v1.0/users/%s", g->base_url,
        mailbox_esc) < 0 ||
      mailoauth_buf_addf(&url, "%s/sendMail", user_url.data) < 0) {
    curl_free(mailbox_esc);
    mailoauth_buf_free(&user_url);
    mailoauth_buf_free(&url);
    snprintf(reply, replylen, "out of memory");
    return MAILOAUTH_SMTP_TEMPFAIL;
  }
  curl_free(mailbox_esc);

  /* A file that cannot fit is not even read for the size. */
  if (mailoauth_message_attachment_size(msg) >
      MAILOAUTH_GRAPH_MAX_REQUEST / 4 * 3) {
    size = MAILOAUTH_GRAPH_MAX_REQUEST + 1;
  } else {
    size = graph_encoded_size(msg);
  }

  if (size < 0) {
    snprintf(reply, replylen, "reading the message (attachment) failed");
    status = MAILOAUTH_SMTP_TEMPFAIL;

  } else if (size > MAILOAUTH_GRAPH_MAX_REQUEST) {
    status = graph_send_large(g, user_url.data, token, msg, &ans, reply,
      replylen, retry_after_s);

  } else {
    status = graph_post_mime(g, url.data, token, msg, size, &ans, reply,
      replylen, retry_after_s);
  }

  mailoauth_buf_free(&user_url);
  mailoauth_buf_free(&url);
  mailoauth_buf_free(&ans.body);
  return status;
}
