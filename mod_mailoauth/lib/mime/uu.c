/*
 * mod_mailoauth - the uudecoder of MIME bodies (Content-Transfer-Encoding
 * x-uuencode, uuencode, x-uue)
 */

#include "mailoauth/mime.h"
#include "mime/mimeint.h"

#include <string.h>

/* Line by line, in a fixed buffer: text before "begin MODE NAME" is
 * skipped; each data line is its length character and the characters of
 * that many bytes; "`" (or " ") and "end" close it.  What senders get
 * wrong is tolerated: CRLF, trailing spaces stripped by a gateway (the
 * missing characters are zero bits), no "end", text after the data.  A
 * line that cannot be data once data has started ends it (a signature
 * after an encoding without "end"), and is a loss only if the line before
 * was a full one; before any data it is skipped as broken.
 */

#define MIME_UU_BEFORE          0
#define MIME_UU_DATA            1
#define MIME_UU_DONE            2

/* Encoders write 45 bytes a line but the last. */
#define MIME_UU_FULL            45

void mailoauth_mime_uu_init(struct mime_uu *u) {
  memset(u, 0, sizeof(*u));
}

static int mime_uu_is_begin(const unsigned char *s, size_t n) {
  size_t i = 6, digits = 0;

  if (n < 8 || memcmp(s, "begin ", 6) != 0) {
    return 0;
  }
  while (i < n && s[i] >= '0' && s[i] <= '7') {
    i++;
    digits++;
  }
  return digits > 0 && digits <= 6 && i < n && s[i] == ' ';
}

/* 0: not a data line; else the line is decoded into out, *outlen bytes. */
static int mime_uu_decode_line(const unsigned char *s, size_t n,
    unsigned char *out, size_t *outlen) {
  unsigned char q[MIME_UU_LINE];
  size_t len, need, i;

  if (n == 0) {
    return 0;
  }
  for (i = 0; i < n; i++) {
    if (s[i] < 0x20 || s[i] > 0x60) {
      return 0;
    }
  }

  len = (size_t) ((s[0] - 0x20) & 0x3f);
  need = (len + 2) / 3 * 4;
  /* A checksum character or two may follow; up to a quantum may be
   * missing (trailing spaces, zero bits, stripped); a line further off is
   * text, not this format.
   */
  if (n - 1 > need + 2 || n - 1 + 4 < need) {
    return 0;
  }
  memset(q, 0, need);
  for (i = 0; i < need && i + 1 < n; i++) {
    q[i] = (unsigned char) ((s[i + 1] - 0x20) & 0x3f);
  }

  for (i = 0; i * 4 < need; i++) {
    const unsigned char *c = q + i * 4;

    out[i * 3] = (unsigned char) ((c[0] << 2) | (c[1] >> 4));
    out[i * 3 + 1] = (unsigned char) ((c[1] << 4) | (c[2] >> 2));
    out[i * 3 + 2] = (unsigned char) ((c[2] << 6) | c[3]);
  }
  *outlen = len;
  return 1;
}

static int mime_uu_line(struct mime_uu *u, mime_out_fn fn, void *arg) {
  unsigned char out[MIME_UU_LINE];
  const unsigned char *s = u->line;
  size_t n = u->len, outlen = 0;
  int overflow = u->overflow;

  u->len = 0;
  u->overflow = 0;
  while (n > 0 && (s[n - 1] == '\r' || s[n - 1] == ' ' || s[n - 1] == '\t')) {
    n--;
  }

  switch (u->state) {
    case MIME_UU_BEFORE:
      if (!overflow && mime_uu_is_begin(s, n)) {
        u->state = MIME_UU_DATA;
        u->begun = 1;
      }
      return 0;

    case MIME_UU_DATA:
      if (n == 3 && memcmp(s, "end", 3) == 0) {
        u->state = MIME_UU_DONE;
        return 0;
      }
      if (n == 0) {
        /* A blank line: "`" or " " with its trailing space stripped ends
         * the data; plain blank lines between data lines are harmless.
         */
        return 0;
      }
      if (overflow || !mime_uu_decode_line(s, n, out, &outlen)) {
        if (u->ndata > 0) {
          u->state = MIME_UU_DONE;
          /* After a full line the data was not over: a line lost. */
          if (u->last >= MIME_UU_FULL) {
            u->bad = 1;
          }
        } else {
          u->bad = 1;
        }
        return 0;
      }
      if (outlen == 0) {
        u->state = MIME_UU_DONE;
        return 0;
      }
      u->ndata++;
      u->last = outlen;
      return fn(arg, out, outlen);

    default:
      return 0;
  }
}

int mailoauth_mime_uu_update(struct mime_uu *u, const unsigned char *in,
    size_t len, mime_out_fn fn, void *arg) {
  size_t i = 0;

  while (i < len) {
    const unsigned char *nl;
    size_t take;

    if (u->state == MIME_UU_DONE) {
      return 0;
    }

    nl = memchr(in + i, '\n', len - i);
    take = nl ? (size_t) (nl - (in + i)) : len - i;
    if (take > sizeof(u->line) - u->len) {
      /* Too long for any uuencoded line: kept only as "too long". */
      memcpy(u->line + u->len, in + i, sizeof(u->line) - u->len);
      u->len = sizeof(u->line);
      u->overflow = 1;
    } else {
      memcpy(u->line + u->len, in + i, take);
      u->len += take;
    }
    i += take;

    if (nl != NULL) {
      i++;
      if (mime_uu_line(u, fn, arg) < 0) {
        return -1;
      }
    }
  }
  return 0;
}

int mailoauth_mime_uu_final(struct mime_uu *u, mime_out_fn fn, void *arg) {
  if (u->len > 0 || u->overflow) {
    if (mime_uu_line(u, fn, arg) < 0) {
      return -1;
    }
  }
  if (u->state == MIME_UU_DATA && u->last >= MIME_UU_FULL) {
    /* Cut after a full line, with neither "`" nor "end". */
    u->bad = 1;
  }
  if (!u->begun) {
    /* No "begin" line: nothing of it could be decoded. */
    u->bad = 1;
  }
  return 0;
}
