/*
 * mod_mailoauth - the base64 decoder of MIME bodies and encoded words
 */

#include "mailoauth/buf.h"
#include "mailoauth/mime.h"
#include "mailoauth/trace.h"
#include "mime/mimeint.h"

#include <ctype.h>
#include <errno.h>
#include <iconv.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>

/* Decoded by OpenSSL's EVP_DecodeBlock().  That function takes whole
 * quanta and rejects the input as a whole on anything else, so the
 * characters are sorted here first: whitespace and line lengths do not
 * matter, garbage is skipped (and reported), only whole quanta are handed
 * over, a padded quantum ends a block (padding in mid-stream: concatenated
 * encodings), and an unpadded final quantum is padded so its whole bytes
 * survive; only a lone final character (six bits, no byte) is a loss.
 */

#define MIME_B64_GARBAGE        0
#define MIME_B64_ALPHA          1
#define MIME_B64_PAD            2
#define MIME_B64_SPACE          3

static const unsigned char mime_b64_class[256] = {
  0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 3, 3, 3, 3, 0, 0,
  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
  3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1,
  1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 2, 0, 0,
  0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
  1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0,
  0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
  1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0,
  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
};



void mailoauth_mime_b64_init(struct mime_b64 *b) {
  memset(b, 0, sizeof(*b));
}

static int mime_b64_push(struct mime_b64 *b, mime_out_fn fn, void *arg) {
  unsigned char out[MIME_B64_CHUNK / 4 * 3];
  int n;

  if (b->nin == 0) {
    return 0;
  }

  n = EVP_DecodeBlock(out, b->in, (int) b->nin);
  b->nin = 0;
  if (n < 0) {
    /* Cannot happen with sorted input; lose the block rather than stall. */
    b->bad = 1;
    b->pads = 0;
    return 0;
  }

  /* EVP_DecodeBlock() counts the padding as zero bytes. */
  n -= (int) b->pads;
  b->pads = 0;
  return n > 0 ? fn(arg, out, (size_t) n) : 0;
}

static int mime_b64_take(struct mime_b64 *b, mime_out_fn fn, void *arg) {
  memcpy(b->in + b->nin, b->hold, 4);
  b->nin += 4;
  b->nhold = 0;

  if (b->npad > 0) {
    b->pads = b->npad;
    b->npad = 0;
    return mime_b64_push(b, fn, arg);
  }
  return b->nin == sizeof(b->in) ? mime_b64_push(b, fn, arg) : 0;
}

int mailoauth_mime_b64_update(struct mime_b64 *b, const unsigned char *in,
    size_t len, mime_out_fn fn, void *arg) {
  size_t i = 0;

  while (i < len) {
    int c;

    /* The common case: a run of whole quanta, copied as one. */
    if (b->nhold == 0) {
      size_t lim = len - i < sizeof(b->in) - b->nin ?
        len : i + sizeof(b->in) - b->nin;
      size_t j = i, run;

      while (j < lim && mime_b64_class[in[j]] == MIME_B64_ALPHA) {
        j++;
      }
      run = (j - i) & ~(size_t) 3;
      if (run > 0) {
        memcpy(b->in + b->nin, in + i, run);
        b->nin += run;
        i += run;
        if (b->nin == sizeof(b->in) && mime_b64_push(b, fn, arg) < 0) {
          return -1;
        }
        continue;
      }
    }

    c = in[i++];
    switch (mime_b64_class[c]) {
      case MIME_B64_ALPHA:
        if (b->npad > 0) {
          /* "xx=" followed by data: finish the quantum first. */
          b->hold[b->nhold++] = '=';
          b->npad++;
          if (mime_b64_take(b, fn, arg) < 0) {
            return -1;
          }
        }
        b->hold[b->nhold++] = (unsigned char) c;
        break;

      case MIME_B64_PAD:
        if ((b->npad == 0 && b->nhold >= 2) ||
            (b->npad == 1 && b->nhold == 3)) {
          b->hold[b->nhold++] = '=';
          b->npad++;
        }
        /* Other '=' (excess padding) carry no data: dropped. */
        break;

      case MIME_B64_SPACE:
        break;

      default:
        b->bad = 1;
        break;
    }

    if (b->nhold == 4 && mime_b64_take(b, fn, arg) < 0) {
      return -1;
    }
  }

  return 0;
}

int mailoauth_mime_b64_final(struct mime_b64 *b, mime_out_fn fn, void *arg) {
  if (b->nhold == 1) {
    /* Six bits make no byte. */
    b->bad = 1;
    b->nhold = b->npad = 0;

  } else if (b->nhold > 1) {
    /* Two or three characters (with or without some of their padding)
     * are one or two whole bytes: an encoder that leaves the padding out,
     * not a loss.
     */
    while (b->nhold < 4) {
      b->hold[b->nhold++] = '=';
      b->npad++;
    }
    if (mime_b64_take(b, fn, arg) < 0) {
      return -1;
    }
  }

  return mime_b64_push(b, fn, arg);
}

int mailoauth_mime_buf_out(void *arg, const unsigned char *d, size_t n) {
  return mailoauth_buf_add(arg, d, n);
}

