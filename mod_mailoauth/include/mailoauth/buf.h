/*
 * mod_mailoauth - the one growable buffer
 *
 * Text and bytes built piece by piece (HTTP bodies, token documents, mail
 * messages, decoded header values) go into a mailoauth_buf.  Its contents
 * are always NUL-terminated once anything was added.  A buffer marked
 * secret is wiped (OPENSSL_cleanse) whenever its memory is given up, on
 * growth too, so a token never lingers in freed memory.  An allocation
 * failure is sticky (failed), for writers that check once at the end.
 *
 * No ProFTPD headers.
 */

#ifndef MOD_MAILOAUTH_BUF_H
#define MOD_MAILOAUTH_BUF_H

#include <stdarg.h>
#include <stddef.h>

struct mailoauth_buf {
  char *data;
  size_t len;
  size_t size;
  int secret;
  int failed;
};

/* Initializers: a zeroed struct is an empty buffer; this one a secret
 * one.
 */
#define MAILOAUTH_BUF_SECRET    { NULL, 0, 0, 1, 0 }

/* secret: wipe on release. */
void mailoauth_buf_init(struct mailoauth_buf *b, int secret);

/* Room for extra more bytes and the NUL.  0, or -1 with ENOMEM. */
int mailoauth_buf_reserve(struct mailoauth_buf *b, size_t extra);

int mailoauth_buf_add(struct mailoauth_buf *b, const void *data, size_t len);
int mailoauth_buf_adds(struct mailoauth_buf *b, const char *s);
int mailoauth_buf_addc(struct mailoauth_buf *b, char c);

/* printf() into the buffer. */
int mailoauth_buf_addf(struct mailoauth_buf *b, const char *fmt, ...)
#ifdef __GNUC__
  __attribute__((format(printf, 2, 3)))
#endif
  ;

/* Empties it, keeping the memory (wiped if secret). */
void mailoauth_buf_clear(struct mailoauth_buf *b);

void mailoauth_buf_free(struct mailoauth_buf *b);

/* Hands the contents over as a malloc()ed NUL-terminated string (*len may
 * be NULL) and leaves the buffer empty; NULL with ENOMEM after a failure
 * (the buffer is then freed).
 */
char *mailoauth_buf_take(struct mailoauth_buf *b, size_t *len);

#endif /* MOD_MAILOAUTH_BUF_H */
