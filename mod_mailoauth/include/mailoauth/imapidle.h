/*
 * mod_mailoauth - IMAP IDLE (RFC 2177): one watcher connection per folder
 *
 * libcurl (7.88) has no IDLE, so a watcher logs in with libcurl exactly as
 * imap.c does (mailauth.h: XOAUTH2, TLS, certificate checks) but with
 * CURLOPT_CONNECT_ONLY: libcurl runs the IMAP connect phase (greeting,
 * CAPABILITY, STARTTLS, AUTHENTICATE) and then hands the connection over.
 * The watcher then speaks CAPABILITY, EXAMINE, IDLE and DONE itself with
 * curl_easy_send()/curl_easy_recv(), and the caller polls its socket.
 * Nothing is fetched on this connection: "* n EXISTS" or "* n RECENT"
 * only tells the caller to run the task, which fetches on its own.
 *
 * No ProFTPD headers.
 */

#ifndef MOD_MAILOAUTH_IMAPIDLE_H
#define MOD_MAILOAUTH_IMAPIDLE_H

#include <stddef.h>
#include <stdint.h>

/* Server lines are kept up to this length (longer ones are cut: only the
 * start of the lines watched for matters).
 */
#define MAILOAUTH_IMAPIDLE_LINE_MAX     1024

/* RFC 2177: clients should re-issue IDLE at least every 29 minutes. */
#define MAILOAUTH_IMAPIDLE_RENEW_S      (25 * 60)

/* The whole login (connect, TLS, AUTHENTICATE) at most. */
#define MAILOAUTH_IMAPIDLE_LOGIN_MS     10000

/* A command not answered in this long: the connection is dead. */
#define MAILOAUTH_IMAPIDLE_ANSWER_MS    30000

/* A bounded line reader: whole lines (CRLF or LF ended) go to fn, clipped
 * to MAILOAUTH_IMAPIDLE_LINE_MAX; the bytes of a literal ("{n}" at a
 * line's end) are skipped and the rest of that response is passed with
 * cont set, so that no literal's content is ever taken for a response.
 */
struct mailoauth_imapidle_reader {
  char line[MAILOAUTH_IMAPIDLE_LINE_MAX + 1];
  size_t len;
  int clipped;
  char tail[24];                /* a clipped line's last bytes */
  size_t tail_len;
  uint64_t literal;             /* bytes still to skip */
  int cont;                     /* the next line continues a response */
};

void mailoauth_imapidle_reader_init(struct mailoauth_imapidle_reader *r);

/* Returns 0, or the first non-zero value fn returned (reading stops). */
int mailoauth_imapidle_feed(struct mailoauth_imapidle_reader *r,
  const char *data, size_t len,
  int (*fn)(const char *line, size_t len, int cont, void *arg), void *arg);

/* What a server line is, for a watcher. */
#define MAILOAUTH_IMAPIDLE_L_OTHER      0
#define MAILOAUTH_IMAPIDLE_L_NEWMAIL    1   /* * n EXISTS, * n RECENT (n>0) */
#define MAILOAUTH_IMAPIDLE_L_CONTINUE   2   /* + ... (IDLE accepted) */
#define MAILOAUTH_IMAPIDLE_L_BYE        3
#define MAILOAUTH_IMAPIDLE_L_TAGGED     4   /* tag matched: status in out */
#define MAILOAUTH_IMAPIDLE_L_CAPS       5   /* * CAPABILITY ...: idle set */

struct mailoauth_imapidle_line {
  int kind;                     /* MAILOAUTH_IMAPIDLE_L_* */
  char status[4];               /* TAGGED: "OK", "NO", "BAD" */
  int idle;                     /* CAPS, or a tagged OK's [CAPABILITY]:
                                 * IDLE was listed */
  int has_caps;                 /* a capability list was seen */
  char text[256];               /* TAGGED/BYE: the server's text */
};

/* Classifies one line (without CRLF); tag: the tag of the command in
 * flight ("" for none).  Pure: never reads past len.
 */
void mailoauth_imapidle_classify(const char *line, size_t len,
  const char *tag, struct mailoauth_imapidle_line *out);

/* The watcher */

#define MAILOAUTH_IMAPIDLE_OK           0
#define MAILOAUTH_IMAPIDLE_FAIL         1   /* gone or failed: reconnect */
#define MAILOAUTH_IMAPIDLE_AUTHFAIL     2   /* the token was refused */
#define MAILOAUTH_IMAPIDLE_NOIDLE       3   /* the server has no IDLE */
#define MAILOAUTH_IMAPIDLE_CONFIG       4   /* cannot work as configured */

/* Events from mailoauth_imapidle_step(). */
#define MAILOAUTH_IMAPIDLE_EV_NEWMAIL   0x01
#define MAILOAUTH_IMAPIDLE_EV_IDLING    0x02  /* idling after a (re)connect */

struct mailoauth_imapidle;

/* base_url: imaps://host:port (or imap:// with STARTTLS); folder: UTF-8.
 * NULL with errno on failure.
 */
struct mailoauth_imapidle *mailoauth_imapidle_create(const char *base_url,
  const char *folder, const char *user, const char *ca_file);
void mailoauth_imapidle_destroy(struct mailoauth_imapidle *w);

/* Re-issues IDLE after this many seconds instead of
 * MAILOAUTH_IMAPIDLE_RENEW_S (tests).
 */
void mailoauth_imapidle_set_renew(struct mailoauth_imapidle *w,
  unsigned int secs);

/* Logs in (blocking, within libcurl's connect timeout) and asks for the
 * capabilities; EXAMINE and IDLE follow from step().  The token is not
 * kept.  MAILOAUTH_IMAPIDLE_* status.
 */
int mailoauth_imapidle_connect(struct mailoauth_imapidle *w,
  const char *token, long long now_ms);

/* Drops the connection (no LOGOUT: nothing is pending on it). */
void mailoauth_imapidle_close(struct mailoauth_imapidle *w);

/* The socket to poll for input, -1 when not connected. */
int mailoauth_imapidle_fd(const struct mailoauth_imapidle *w);

/* When step() must run even without input (0: no timer). */
long long mailoauth_imapidle_next_ms(const struct mailoauth_imapidle *w);

/* Reads what arrived, answers it and runs the timers; ORs
 * MAILOAUTH_IMAPIDLE_EV_* into *events.  A status other than OK closes
 * the connection; mailoauth_imapidle_reply() says why.
 */
int mailoauth_imapidle_step(struct mailoauth_imapidle *w, long long now_ms,
  unsigned *events);

/* Whether the watcher is idling now. */
int mailoauth_imapidle_idling(const struct mailoauth_imapidle *w);

/* The last failure, for the log (no secrets). */
const char *mailoauth_imapidle_reply(const struct mailoauth_imapidle *w);

#endif /* MOD_MAILOAUTH_IMAPIDLE_H */
