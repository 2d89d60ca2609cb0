/*
 * mod_mailoauth - logging in to SMTP and IMAP with SASL XOAUTH2 (libcurl)
 *
 * One place sets a libcurl mail handle up for an OAuth login, so that the
 * worker (sending notifications, fetching mail) and the operator's test
 * command log in exactly the same way:
 *
 *   CURLOPT_USERNAME (the mailbox) + CURLOPT_XOAUTH2_BEARER +
 *   CURLOPT_LOGIN_OPTIONS "AUTH=XOAUTH2", TLS required (STARTTLS on
 *   smtp:// and imap://), certificates verified.
 *
 * CURLOPT_HTTPAUTH is never set on a mail handle: before libcurl 8.6.0 it
 * overrides the mechanism, and OAUTHBEARER is picked when offered.
 *
 * The transcript keeps what the server said and what we sent, with every
 * credential replaced, and recognises the answers Exchange Online gives
 * when something outside this program is wrong; mailoauth_mailauth_hint()
 * says what to do about them.
 *
 * No ProFTPD headers.
 */

#ifndef MOD_MAILOAUTH_MAILAUTH_H
#define MOD_MAILOAUTH_MAILAUTH_H

#include <stddef.h>

#include <curl/curl.h>

typedef enum {
  MAILOAUTH_MAILAUTH_SMTP = 0,
  MAILOAUTH_MAILAUTH_IMAP
} mailoauth_mailauth_proto_t;

#define MAILOAUTH_MAILAUTH_DEFAULT_CONNECT_TIMEOUT_MS  10000L
#define MAILOAUTH_MAILAUTH_DEFAULT_TIMEOUT_MS          30000L

/* A transcript keeps at most this much; later lines are dropped. */
#define MAILOAUTH_MAILAUTH_TRANSCRIPT_MAX              (64 * 1024)

struct mailoauth_mailauth_config {
  /* smtp://host:587 (STARTTLS required), smtps://host:465,
   * imaps://host:993, imap://host:143 (STARTTLS required).
   */
  const char *url;
  const char *username;        /* the mailbox: XOAUTH2 user= */
  const char *bearer;          /* the access token (secret) */
  const char *ca_file;         /* NULL: libcurl's default bundle */
  long connect_timeout_ms;     /* 0: default */
  long timeout_ms;             /* 0: default; the whole exchange */
};

/* What one login showed.  Zero it before first use; release with
 * mailoauth_mailauth_transcript_clear().
 */
struct mailoauth_mailauth_transcript {
  mailoauth_mailauth_proto_t proto;

  /* "S: ..." (server) and "C: ..." (client, credentials replaced) lines,
   * each ending in "\n"; NULL when nothing was said.
   */
  char *text;
  size_t len;
  size_t size;

  int auth_sent;          /* we sent AUTH / AUTHENTICATE */
  int authenticated;      /* 235, or the tagged OK to AUTHENTICATE */
  char challenge[512];    /* the decoded XOAUTH2 error challenge, or "" */
  char last_reply[512];   /* the last server line, or "" */

  /* Private: where the client side of the conversation stands. */
  int out_partial;        /* the last client chunk did not end a line */
  int in_sasl;            /* between AUTH and the server's verdict */
  char auth_tag[16];      /* IMAP: the tag of AUTHENTICATE */
};

/* Which protocol a URL is for, and whether TLS starts at once (smtps://,
 * imaps://) rather than with STARTTLS.  -1 with errno EINVAL for any other
 * scheme.
 */
int mailoauth_mailauth_proto(const char *url,
  mailoauth_mailauth_proto_t *proto, int *implicit_tls);

/* Sets the login options on a libcurl handle: URL, protocols, TLS and
 * certificate checks, timeouts, user, bearer token, mechanism.  With a
 * transcript, also CURLOPT_VERBOSE and a debug function recording the
 * conversation into it.  The caller adds what the transfer needs.
 */
int mailoauth_mailauth_setup(CURL *curl,
  const struct mailoauth_mailauth_config *cfg,
  struct mailoauth_mailauth_transcript *tr, char *errbuf, size_t errlen);

/* Logs in, and checks what a login alone does not show:
 *   SMTP: CURLOPT_CONNECT_ONLY (greeting, EHLO, STARTTLS, AUTH; nothing is
 *         sent), then checks that the server really accepted a login (235):
 *         libcurl skips authentication silently when none is offered;
 *   IMAP: EXAMINE INBOX after the login (read-only), because Exchange
 *         accepts the login of a mailbox it cannot open and refuses only
 *         the first mailbox command.
 * 0 on success; -1 with a one-line reason in errbuf (no secrets).
 */
int mailoauth_mailauth_test(const struct mailoauth_mailauth_config *cfg,
  struct mailoauth_mailauth_transcript *tr, char *errbuf, size_t errlen);

void mailoauth_mailauth_transcript_clear(
  struct mailoauth_mailauth_transcript *tr);

/* Pure functions. */

/* What to do about a server line (SMTP reply or IMAP response), for the
 * answers Exchange Online gives when the mailbox, tenant or app
 * registration is wrong; also for an XOAUTH2 error challenge ("334 ..."
 * or "+ ..." with base64 JSON).  NULL when there is nothing to say.
 */
const char *mailoauth_mailauth_hint(const char *server_line);

/* Decodes an XOAUTH2 error challenge line ("334 <base64>" or
 * "+ <base64>") into buf as JSON text; *status gets its "status" member
 * (e.g. "401") when status is not NULL.  -1 when the line is not one.
 */
int mailoauth_mailauth_decode_challenge(const char *server_line, char *buf,
  size_t buflen, char *status, size_t statuslen);

/* The text to show for one client command line: the command and harmless
 * arguments, every credential replaced.  Always NUL-terminates buf.
 */
void mailoauth_mailauth_redact(mailoauth_mailauth_proto_t proto,
  const char *client_line, char *buf, size_t buflen);

#endif /* MOD_MAILOAUTH_MAILAUTH_H */
