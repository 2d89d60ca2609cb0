/*
 * mod_mailoauth - what the MIME parser's files share (lib/mime only)
 *
 * mime.c (the stream parser), mimehdr.c (header values), b64.c, uu.c, charset.c
 * and mimeutil.c.
 */

#ifndef MOD_MAILOAUTH_MIMEINT_H
#define MOD_MAILOAUTH_MIMEINT_H

#include "mailoauth/buf.h"
#include "mailoauth/mime.h"

#include <stddef.h>

/* Where decoded bytes go (b64.c). */
typedef int (*mime_out_fn)(void *arg, const unsigned char *d, size_t n);

/* Decoded in blocks this large; whole quanta. */
#define MIME_B64_CHUNK          1024

struct mime_b64 {
  unsigned char in[MIME_B64_CHUNK];     /* whole quanta not yet decoded */
  size_t nin;
  unsigned int pads;            /* '=' in the last quantum of in */
  unsigned char hold[4];        /* the quantum being gathered */
  unsigned int nhold, npad;
  int bad;
};

/* Longer lines are no uuencode (a line holds at most 63 bytes). */
#define MIME_UU_LINE            128

struct mime_uu {
  unsigned char line[MIME_UU_LINE];     /* the line being gathered */
  size_t len;
  int overflow;                 /* the line was longer than line */
  int state;
  int begun;                    /* a "begin" line was seen */
  unsigned long ndata;          /* data lines decoded */
  size_t last;                  /* bytes of the last one */
  int bad;
};

typedef int (*mime_param_fn)(const char *attr, size_t alen, const char *val,
  size_t vlen, void *arg);

/* The raw (unquoted, undecoded) value: boundaries are compared byte for
 * byte and must not go through any charset machinery.
 */
struct mime_rawget {
  const char *name;
  char *value;
  size_t len;
};

int mailoauth_mime_b64_final(struct mime_b64 *b, mime_out_fn fn, void *arg);
void mailoauth_mime_b64_init(struct mime_b64 *b);
int mailoauth_mime_b64_update(struct mime_b64 *b, const unsigned char *in, size_t len, mime_out_fn fn, void *arg);
char * mailoauth_mime_buf_field(struct mailoauth_buf *out, int filled);
int mailoauth_mime_buf_out(void *arg, const unsigned char *d, size_t n);
int mailoauth_mime_convert(const char *charset, const char *in, size_t len, struct mailoauth_buf *out, int *bad);
char * mailoauth_mime_field_str(const char *d, size_t n);
int mailoauth_mime_guess_to_utf8(const char *fallback, const char *in, size_t len, struct mailoauth_buf *out, int *bad);
int mailoauth_mime_hexval(int c);
int mailoauth_mime_is_wsp(int c);
char * mailoauth_mime_lower_dup(const char *s, size_t n);
int mailoauth_mime_params_scan(const char *s, size_t n, mime_param_fn fn, void *arg);
int mailoauth_mime_uu_final(struct mime_uu *u, mime_out_fn fn, void *arg);
void mailoauth_mime_uu_init(struct mime_uu *u);
int mailoauth_mime_uu_update(struct mime_uu *u, const unsigned char *in, size_t len, mime_out_fn fn, void *arg);
int mailoauth_mime_rawget_cb(const char *attr, size_t alen, const char *val, size_t vlen, void *arg);
size_t mailoauth_mime_skip_cfws(const char *s, size_t n, size_t i);
char * mailoauth_mime_strndup(const char *s, size_t n);
size_t mailoauth_mime_token(const char *s, size_t n, size_t *i, const char *stops);

#endif /* MOD_MAILOAUTH_MIMEINT_H */
