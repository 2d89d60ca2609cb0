/*
 * mod_mailoauth - sending one message over SMTP with SASL XOAUTH2
 */

#include "mailoauth/smtp.h"
#include "mailoauth/mailauth.h"
#include "mailoauth/trace.h"

#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *trace_channel = "mailoauth.smtp";

struct mailoauth_smtp {
  CURL *curl;
  char *url;
  char *mailbox;
  char *ca_file;
  int fresh;                    /* force a new connection next time */
  unsigned long connections;
};

const char *mailoauth_smtp_status_name(mailoauth_smtp_status_t status) {
  switch (status) {
    case MAILOAUTH_SMTP_SENT:
      return "sent";
    case MAILOAUTH_SMTP_TEMPFAIL:
      return "temporary failure";
    case MAILOAUTH_SMTP_PERMFAIL:
      return "permanent failure";
    case MAILOAUTH_SMTP_AUTHFAIL:
      return "login refused";
    case MAILOAUTH_SMTP_CONFIG:
      return "configuration problem";
  }
  return "unknown";
}

static char *mailoauth_smtp_dup(const char *s) {
  return s ? strdup(s) : NULL;
}

struct mailoauth_smtp *mailoauth_smtp_create(const char *url,
    const char *mailbox, const char *ca_file) {
  struct mailoauth_smtp *s;

  s = calloc(1, sizeof(*s));
  if (s == NULL) {
    return NULL;
  }

  s->url = mailoauth_smtp_dup(url);
  s->mailbox = mailoauth_smtp_dup(mailbox);
  s->ca_file = mailoauth_smtp_dup(ca_file);
  s->curl = curl_easy_init();
  if (s->url == NULL ||
      s->mailbox == NULL ||
      (ca_file != NULL && s->ca_file == NULL) ||
      s->curl == NULL) {
    mailoauth_smtp_destroy(s);
    errno = ENOMEM;
    return NULL;
  }

  return s;
}

void mailoauth_smtp_destroy(struct mailoauth_smtp *s) {
  if (s == NULL) {
    return;
  }

  if (s->curl != NULL) {
    curl_easy_cleanup(s->curl);
  }
  free(s->url);
  free(s->mailbox);
  free(s->ca_file);
  free(s);
}

void mailoauth_smtp_reconnect(struct mailoauth_smtp *s) {
  s->fresh = 1;
}

unsigned long mailoauth_smtp_connections(const struct mailoauth_smtp *s) {
  return s->connections;
}

static mailoauth_smtp_status_t mailoauth_smtp_classify(CURLcode rc,
    long code) {
  switch (rc) {
    case CURLE_OK:
      return MAILOAUTH_SMTP_SENT;

    case CURLE_LOGIN_DENIED:
      return MAILOAUTH_SMTP_AUTHFAIL;

    /* No STARTTLS offered, or a certificate that does not verify: never
     * authenticate anyway, and say so.
     */
    case CURLE_USE_SSL_FAILED:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
      return MAILOAUTH_SMTP_CONFIG;

    default:
      break;
  }

  if (code == 535 || code == 534 || code == 530) {
    return MAILOAUTH_SMTP_AUTHFAIL;
  }

  if (code >= 500 && code < 600) {
    return MAILOAUTH_SMTP_PERMFAIL;
  }

  return MAILOAUTH_SMTP_TEMPFAIL;
}

mailoauth_smtp_status_t mailoauth_smtp_send(struct mailoauth_smtp *s,
    const char *token, struct mailoauth_message *msg, char *reply,
    size_t replylen) {
  struct mailoauth_mailauth_config cfg;
  struct mailoauth_mailauth_transcript tr;
  struct curl_slist *rcpts = NULL;
  const char *const *list;
  char err[CURL_ERROR_SIZE], setup_err[256];
  mailoauth_smtp_status_t status;
  size_t n, i;
  long code = 0, connects = 0;
  CURLcode rc;

  reply[0] = '\0';
  memset(&tr, 0, sizeof(tr));
  memset(&cfg, 0, sizeof(cfg));
  cfg.url = s->url;
  cfg.username = s->mailbox;
  cfg.bearer = token;
  cfg.ca_file = s->ca_file;

  if (mailoauth_mailauth_setup(s->curl, &cfg, &tr, setup_err,
      sizeof(setup_err)) < 0) {
    snprintf(reply, replylen, "%s", setup_err);
    return MAILOAUTH_SMTP_CONFIG;
  }

  list = mailoauth_message_get_recipients(msg, &n);
  for (i = 0; i < n; i++) {
    struct curl_slist *next = curl_slist_append(rcpts, list[i]);

    if (next == NULL) {
      curl_slist_free_all(rcpts);
      snprintf(reply, replylen, "out of memory");
      return MAILOAUTH_SMTP_TEMPFAIL;
    }
    rcpts = next;
  }

  err[0] = '\0';
  (void) mailoauth_message_rewind(msg);
  curl_easy_setopt(s->curl, CURLOPT_MAIL_FROM,
    mailoauth_message_get_from(msg));
  curl_easy_setopt(s->curl, CURLOPT_MAIL_RCPT, rcpts);
  curl_easy_setopt(s->curl, CURLOPT_UPLOAD, 1L);
  curl_easy_setopt(s->curl, CURLOPT_READFUNCTION, mailoauth_message_read);
  curl_easy_setopt(s->curl, CURLOPT_READDATA, msg);
  curl_easy_setopt(s->curl, CURLOPT_ERRORBUFFER, err);
  curl_easy_setopt(s->curl, CURLOPT_FRESH_CONNECT, s->fresh ? 1L : 0L);
  /* Large attachments must not time out as a whole: watch for stalls
   * instead.
   */
  curl_easy_setopt(s->curl, CURLOPT_TIMEOUT_MS, 0L);
  curl_easy_setopt(s->curl, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(s->curl, CURLOPT_LOW_SPEED_TIME, 60L);
  s->fresh = 0;

  rc = curl_easy_perform(s->curl);
  curl_easy_getinfo(s->curl, CURLINFO_RESPONSE_CODE, &code);
  curl_easy_getinfo(s->curl, CURLINFO_NUM_CONNECTS, &connects);
  s->connections += (unsigned long) connects;

  curl_easy_setopt(s->curl, CURLOPT_MAIL_RCPT, NULL);
  curl_easy_setopt(s->curl, CURLOPT_ERRORBUFFER, NULL);
  curl_easy_setopt(s->curl, CURLOPT_DEBUGFUNCTION, NULL);
  curl_easy_setopt(s->curl, CURLOPT_DEBUGDATA, NULL);
  curl_easy_setopt(s->curl, CURLOPT_VERBOSE, 0L);
  curl_slist_free_all(rcpts);

  if (rc == CURLE_ABORTED_BY_CALLBACK ||
      mailoauth_message_stream_error(msg) != 0) {
    snprintf(reply, replylen, "reading the message (attachment) failed");
    mailoauth_mailauth_transcript_clear(&tr);
    return MAILOAUTH_SMTP_TEMPFAIL;
  }

  status = mailoauth_smtp_classify(rc, code);

  if (rc == CURLE_USE_SSL_FAILED) {
    snprintf(reply, replylen, "%s does not offer STARTTLS: refusing to log "
      "in over an unencrypted connection", s->url);

  } else if (tr.challenge[0] != '\0') {
    snprintf(reply, replylen, "XOAUTH2 refused: %s", tr.challenge);

  } else if (tr.last_reply[0] != '\0' &&
             status != MAILOAUTH_SMTP_SENT) {
    snprintf(reply, replylen, "%s%s%s", tr.last_reply,
      err[0] ? " / " : "", err);

  } else if (status != MAILOAUTH_SMTP_SENT) {
    snprintf(reply, replylen, "%s", err[0] ? err : curl_easy_strerror(rc));

  } else {
    snprintf(reply, replylen, "%s", tr.last_reply);
  }

  mailoauth_trace(trace_channel, rc == CURLE_OK ? 9 : 4,
    "send via %s: %s (curl %d, SMTP %ld, %ld new connections): %s", s->url,
    mailoauth_smtp_status_name(status), (int) rc, code, connects, reply);
  mailoauth_mailauth_transcript_clear(&tr);
  return status;
}
