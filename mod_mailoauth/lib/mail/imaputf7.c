/*
 * mod_mailoauth - IMAP folder names: modified UTF-7 (RFC 3501 5.1.3) and
 * quoting
 */

#include "mailoauth/imap.h"

#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const char imap_b64[] =
  "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

static int imap_b64_value(unsigned char ch) {
  const char *p;

  if (ch == '\0') {
    return -1;
  }
  p = strchr(imap_b64, ch);
  return p != NULL ? (int) (p - imap_b64) : -1;
}

struct imap_out {
  char *buf;
  size_t len;
  size_t size;
  int full;
};

static void imap_out_init(struct imap_out *o, char *buf, size_t size) {
  o->buf = buf;
  o->len = 0;
  o->size = size;
  o->full = 0;
  buf[0] = '\0';
}

static void imap_put(struct imap_out *o, char ch) {
  if (o->len + 1 < o->size) {
    o->buf[o->len++] = ch;
    o->buf[o->len] = '\0';
  } else {
    o->full = 1;
  }
}

/* One code point from UTF-8 (strict: no overlongs, no surrogates). */
static int imap_utf8_next(const unsigned char **pp, uint32_t *cp) {
  const unsigned char *p = *pp;
  uint32_t v;
  int n, i;

  if (p[0] < 0x80) {
    *cp = p[0];
    *pp = p + 1;
    return 0;
  }

  if (p[0] >= 0xc2 && p[0] <= 0xdf) {
    v = p[0] & 0x1f;
    n = 1;
  } else if (p[0] >= 0xe0 && p[0] <= 0xef) {
    v = p[0] & 0x0f;
    n = 2;
  } else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
    v = p[0] & 0x07;
    n = 3;
  } else {
    return -1;
  }

  for (i = 1; i <= n; i++) {
    if ((p[i] & 0xc0) != 0x80) {
      return -1;
    }
    v = (v << 6) | (p[i] & 0x3f);
  }

  if ((n == 2 && v < 0x800) || (n == 3 && (v < 0x10000 || v > 0x10ffff)) ||
      (v >= 0xd800 && v <= 0xdfff)) {
    return -1;
  }

  *cp = v;
  *pp = p + n + 1;
  return 0;
}

static void imap_put_utf8(struct imap_out *o, uint32_t cp) {
  if (cp < 0x80) {
    imap_put(o, (char) cp);
  } else if (cp < 0x800) {
    imap_put(o, (char) (0xc0 | (cp >> 6)));
    imap_put(o, (char) (0x80 | (cp & 0x3f)));
  } else if (cp < 0x10000) {
    imap_put(o, (char) (0xe0 | (cp >> 12)));
    imap_put(o, (char) (0x80 | ((cp >> 6) & 0x3f)));
    imap_put(o, (char) (0x80 | (cp & 0x3f)));
  } else {
    imap_put(o, (char) (0xf0 | (cp >> 18)));
    imap_put(o, (char) (0x80 | ((cp >> 12) & 0x3f)));
    imap_put(o, (char) (0x80 | ((cp >> 6) & 0x3f)));
    imap_put(o, (char) (0x80 | (cp & 0x3f)));
  }
}

int mailoauth_imap_utf7_encode(const char *utf8, char *out, size_t outlen) {
  const unsigned char *p = (const unsigned char *) utf8;
  struct imap_out o;
  uint32_t bits = 0;
  int nbits = 0, shifted = 0;

  if (utf8 == NULL || out == NULL || outlen == 0) {
    errno = EINVAL;
    return -1;
  }

  imap_out_init(&o, out, outlen);

  while (*p != '\0') {
    uint32_t cp;

    if (imap_utf8_next(&p, &cp) < 0 || cp < 0x20 || cp == 0x7f) {
      errno = EILSEQ;
      return -1;
    }

    if (cp < 0x7f) {
      if (shifted) {
        if (nbits > 0) {
          imap_put(&o, imap_b64[(bits << (6 - nbits)) & 0x3f]);
        }
        imap_put(&o, '-');
        shifted = 0;
        nbits = 0;
        bits = 0;
      }
      imap_put(&o, (char) cp);
      if (cp == '&') {
        imap_put(&o, '-');
      }
      continue;
    }

    if (!shifted) {
      imap_put(&o, '&');
      shifted = 1;
    }

    {
      uint32_t units[2];
      int nunits = 1, i;

      if (cp >= 0x10000) {
        cp -= 0x10000;
        units[0] = 0xd800 | (cp >> 10);
        units[1] = 0xdc00 | (cp & 0x3ff);
        nunits = 2;
      } else {
        units[0] = cp;
      }

      for (i = 0; i < nunits; i++) {
        bits = (bits << 16) | units[i];
        nbits += 16;
        while (nbits >= 6) {
          nbits -= 6;
          imap_put(&o, imap_b64[(bits >> nbits) & 0x3f]);
        }
        bits &= (1u << nbits) - 1;
      }
    }
  }

  if (shifted) {
    if (nbits > 0) {
      imap_put(&o, imap_b64[(bits << (6 - nbits)) & 0x3f]);
    }
    imap_put(&o, '-');
  }

  if (o.full) {
    errno = ENAMETOOLONG;
    return -1;
  }
  return 0;
}

int mailoauth_imap_utf7_decode(const char *mutf7, char *out, size_t outlen) {
  const unsigned char *p = (const unsigned char *) mutf7;
  struct imap_out o;

  if (mutf7 == NULL || out == NULL || outlen == 0) {
    errno = EINVAL;
    return -1;
  }

  imap_out_init(&o, out, outlen);

  while (*p != '\0') {
    uint32_t bits = 0, high = 0;
    int nbits = 0, units = 0;

    if (*p < 0x20 || *p > 0x7e) {
      errno = EILSEQ;
      return -1;
    }

    if (*p != '&') {
      imap_put(&o, (char) *p++);
      continue;
    }
    p++;

    if (*p == '-') {
      imap_put(&o, '&');
      p++;
      continue;
    }

    for (; *p != '-'; p++) {
      int v = imap_b64_value(*p);

      if (v < 0) {
        errno = EILSEQ;
        return -1;
      }
      bits = (bits << 6) | (uint32_t) v;
      nbits += 6;

      if (nbits >= 16) {
        uint32_t unit;

        nbits -= 16;
        unit = (bits >> nbits) & 0xffff;
        bits &= (1u << nbits) - 1;
        units++;

        if (high != 0) {
          if (unit < 0xdc00 || unit > 0xdfff) {
            errno = EILSEQ;
            return -1;
          }
          imap_put_utf8(&o, 0x10000 + ((high - 0xd800) << 10) +
            (unit - 0xdc00));
          high = 0;

        } else if (unit >= 0xd800 && unit <= 0xdbff) {
          high = unit;

        } else if ((unit >= 0xdc00 && unit <= 0xdfff) ||
                   (unit >= 0x20 && unit < 0x7f) || unit < 0x20 ||
                   unit == 0x7f) {
          /* Printable ASCII must stand for itself; controls never. */
          errno = EILSEQ;
          return -1;

        } else {
          imap_put_utf8(&o, unit);
        }
      }
    }
    p++;

    /* Left-over bits are padding: fewer than 6, all zero. */
    if (units == 0 || high != 0 || nbits >= 6 || bits != 0) {
      errno = EILSEQ;
      return -1;
    }
  }

  if (o.full) {
    errno = ENAMETOOLONG;
    return -1;
  }
  return 0;
}

int mailoauth_imap_folder_name(const char *name, char *out, size_t outlen) {
  char decoded[MAILOAUTH_IMAP_NAME_MAX * 2];
  const char *p;
  int ascii = 1;

  if (name == NULL || *name == '\0' || out == NULL || outlen == 0) {
    errno = EINVAL;
    return -1;
  }

  for (p = name; *p != '\0'; p++) {
    if ((unsigned char) *p >= 0x80) {
      ascii = 0;
      break;
    }
  }

  if (ascii && strchr(name, '&') != NULL &&
      mailoauth_imap_utf7_decode(name, decoded, sizeof(decoded)) == 0) {
    if (strlen(name) + 1 > outlen) {
      errno = ENAMETOOLONG;
      return -1;
    }
    memcpy(out, name, strlen(name) + 1);
    return 0;
  }

  return mailoauth_imap_utf7_encode(name, out, outlen);
}

int mailoauth_imap_quote(const char *s, char *out, size_t outlen) {
  struct imap_out o;
  const char *p;

  if (s == NULL || out == NULL || outlen == 0) {
    errno = EINVAL;
    return -1;
  }

  imap_out_init(&o, out, outlen);

  imap_put(&o, '"');
  for (p = s; *p != '\0'; p++) {
    unsigned char ch = (unsigned char) *p;

    /* Wire names are modified UTF-7: printable ASCII only. */
    if (ch < 0x20 || ch > 0x7e) {
      errno = EINVAL;
      return -1;
    }
    if (ch == '"' || ch == '\\') {
      imap_put(&o, '\\');
    }
    imap_put(&o, (char) ch);
  }
  imap_put(&o, '"');

  if (o.full) {
    errno = ENAMETOOLONG;
    return -1;
  }
  return 0;
}

