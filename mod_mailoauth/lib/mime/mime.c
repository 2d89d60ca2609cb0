/*
 * mod_mailoauth - streaming MIME parser
 *
 * A line engine cuts the input into lines and hands them to the innermost
 * open entity: to its header block, to its body decoder, or to nothing
 * (preamble, epilogue, bodies nobody asked for).  Lines are never buffered
 * whole: only the first bytes of a line are held back, and only while they
 * could still turn out to be a boundary of an open multipart.  The line
 * break before a boundary belongs to the boundary (RFC 2046), so a body's
 * line break is passed on only once the next line is known not to be one.
 *
 * An attached message the caller descends into gets a parser of its own,
 * fed with the decoded body of the message/rfc822 part: a base64-encoded
 * attached message is then parsed like any other, and the enclosing
 * multipart's boundaries are still seen first.
 */

#include "mailoauth/buf.h"
#include "mailoauth/mime.h"
#include "mailoauth/trace.h"

#include <ctype.h>
#include <errno.h>
#include <iconv.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>

static const char *trace_channel = "mailoauth.mime";

/* Transport padding accepted after a boundary (RFC 2046 LWSP). */
#define MIME_MAX_PAD            128

/* A line start held back while it may be a boundary line:
 * "--" boundary "--" padding CR.
 */
#define MIME_LBUF_SIZE          (2 + MAILOAUTH_MIME_MAX_BOUNDARY + 2 + \
                                 MIME_MAX_PAD + 1 + 1)

/* RFC 2047 words are at most 75 characters; real mailers overshoot, but
 * the bound keeps a header full of unterminated "=?" linear to scan.
 */
#define MIME_EW_MAX             1000

/* RFC 2231 continuations kept per parameter. */
#define MIME_MAX_SEGMENTS       128

/* Longest type or subtype name (RFC 6838), also used for encodings. */
#define MIME_MAX_TYPE_NAME      127

/* A header buffer this large is kept between header blocks. */
#define MIME_HBUF_KEEP          4096

#define MIME_EOL_LF             1
#define MIME_EOL_CRLF           2

/* ------------------------------------------------------------------------
 * Growing byte buffer, always NUL-terminated.
 */

static int mime_hexval(int c) {
  if (c >= '0' && c <= '9') {
    return c - '0';
  }
  if (c >= 'a' && c <= 'f') {
    return c - 'a' + 10;
  }
  if (c >= 'A' && c <= 'F') {
    return c - 'A' + 10;
  }
  return -1;
}

static int mime_is_wsp(int c) {
  return c == ' ' || c == '\t';
}

static char *mime_strndup(const char *s, size_t n) {
  char *d = malloc(n + 1);

  if (d == NULL) {
    errno = ENOMEM;
    return NULL;
  }
  memcpy(d, s, n);
  d[n] = '\0';
  return d;
}

static char *mime_lower_dup(const char *s, size_t n) {
  char *d = mime_strndup(s, n);
  size_t i;

  if (d != NULL) {
    for (i = 0; i < n; i++) {
      d[i] = (char) tolower((unsigned char) d[i]);
    }
  }
  return d;
}

/* Length of the longest prefix of s[0..len) that does not end inside a
 * UTF-8 sequence.
 */
static size_t mime_utf8_cut(const char *s, size_t len) {
  size_t j = len, need;
  unsigned char lead;

  while (j > 0 && ((unsigned char) s[j - 1] & 0xc0) == 0x80 && len - j < 3) {
    j--;
  }
  if (j == 0) {
    return len;
  }
  lead = (unsigned char) s[j - 1];
  if (lead < 0xc0) {
    return len;
  }
  need = lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : 2;
  return len - (j - 1) < need ? j - 1 : len;
}

/* Turns a decoded buffer into a field string: NUL bytes become U+FFFD (so a
 * hidden ".exe" after a NUL stays visible), and the length is capped on a
 * UTF-8 boundary.
 */
static char *mime_field_str(const char *d, size_t n) {
  struct mailoauth_buf out = { NULL, 0, 0, 0, 0 };
  size_t i = 0;
  int cut = 0;

  if (mailoauth_buf_reserve(&out, n < MAILOAUTH_MIME_MAX_FIELD ? n :
      MAILOAUTH_MIME_MAX_FIELD) < 0) {
    return NULL;
  }

  while (i < n && !cut) {
    const char *nul = memchr(d + i, '\0', n - i);
    size_t run = nul ? (size_t) (nul - d) - i : n - i;

    if (run > MAILOAUTH_MIME_MAX_FIELD - out.len) {
      run = MAILOAUTH_MIME_MAX_FIELD - out.len;
      cut = 1;
    }
    if (mailoauth_buf_add(&out, d + i, run) < 0) {
      mailoauth_buf_free(&out);
      return NULL;
    }
    i += run;

    if (!cut && i < n) {
      if (out.len + 3 > MAILOAUTH_MIME_MAX_FIELD) {
        cut = 1;
      } else if (mailoauth_buf_add(&out, "\xef\xbf\xbd", 3) < 0) {
        mailoauth_buf_free(&out);
        return NULL;
      } else {
        i++;
      }
    }
  }

  if (cut) {
    out.len = mime_utf8_cut(out.data, out.len);
  }
  out.data[out.len] = '\0';
  return out.data;
}

/* ------------------------------------------------------------------------
 * Charsets.  Labels name what mailers mean, not what they say: mail
 * labelled iso-8859-1 routinely holds windows-1252 quotes and euro signs,
 * gb2312 holds GBK, shift_jis holds Microsoft's CP932 (the WHATWG encoding
 * standard maps them the same way).
 */

static const struct {
  const char *label;
  const char *name;     /* NULL: guess between UTF-8 and windows-1252 */
} mime_charset_aliases[] = {
  { "us-ascii", NULL },
  { "ascii", NULL },
  { "ansi_x3.4-1968", NULL },
  { "us", NULL },
  { "unknown", NULL },
  { "unknown-8bit", NULL },
  { "x-unknown", NULL },
  { "default", NULL },
  { "x-user-defined", NULL },
  { "utf-8", "UTF-8" },
  { "utf8", "UTF-8" },
  { "unicode-1-1-utf-8", "UTF-8" },
  { "iso-8859-1", "WINDOWS-1252" },
  { "iso8859-1", "WINDOWS-1252" },
  { "iso_8859-1", "WINDOWS-1252" },
  { "iso-ir-100", "WINDOWS-1252" },
  { "latin1", "WINDOWS-1252" },
  { "l1", "WINDOWS-1252" },
  { "cp819", "WINDOWS-1252" },
  { "iso-8859-9", "WINDOWS-1254" },
  { "latin5", "WINDOWS-1254" },
  { "iso-8859-11", "WINDOWS-874" },
  { "tis-620", "WINDOWS-874" },
  { "gb2312", "GB18030" },
  { "gbk", "GB18030" },
  { "x-gbk", "GB18030" },
  { "cp936", "GB18030" },
  { "euc-cn", "GB18030" },
  { "csgb2312", "GB18030" },
  { "chinese", "GB18030" },
  { "shift_jis", "CP932" },
  { "shift-jis", "CP932" },
  { "sjis", "CP932" },
  { "x-sjis", "CP932" },
  { "ms_kanji", "CP932" },
  { "csshiftjis", "CP932" },
  { "windows-31j", "CP932" },
  { "ks_c_5601-1987", "CP949" },
  { "ks_c_5601", "CP949" },
  { "ksc5601", "CP949" },
  { "euc-kr", "CP949" },
  { "korean", "CP949" },
  { "big5", "BIG5-HKSCS" },
  { "x-x-big5", "BIG5-HKSCS" },
  { "cn-big5", "BIG5-HKSCS" },
  { "csbig5", "BIG5-HKSCS" },
  { NULL, NULL }
};

/* The converters mail commonly needs, loaded ahead by a process that
 * cannot open files later (mailoauth_mime_preload()).
 */
static const char *mime_preload_names[] = {
  "WINDOWS-1250", "WINDOWS-1251", "WINDOWS-1252", "WINDOWS-1253",
  "WINDOWS-1254", "WINDOWS-1255", "WINDOWS-1256", "WINDOWS-1257",
  "WINDOWS-1258", "WINDOWS-874", "ISO-8859-2", "ISO-8859-3", "ISO-8859-4",
  "ISO-8859-5", "ISO-8859-6", "ISO-8859-7", "ISO-8859-8", "ISO-8859-9",
  "ISO-8859-10", "ISO-8859-11", "ISO-8859-13", "ISO-8859-14",
  "ISO-8859-15", "ISO-8859-16", "KOI8-R", "KOI8-U", "GB18030", "GBK",
  "EUC-CN", "BIG5", "BIG5-HKSCS", "CP932", "CP949", "EUC-JP", "EUC-KR",
  "EUC-TW", "ISO-2022-JP", "ISO-2022-JP-2", "ISO-2022-KR", "ISO-2022-CN",
  "SHIFT_JIS", "UTF-7", "UTF-16", "UTF-16LE", "UTF-16BE", "UTF-32",
  "IBM437", "IBM850", "IBM852", "IBM866", "MACINTOSH", "TIS-620", "VISCII",
  "CP1125", NULL
};

int mailoauth_mime_preload(void) {
  static iconv_t kept[sizeof(mime_preload_names) /
    sizeof(mime_preload_names[0])];
  int n = 0;
  size_t i;

  for (i = 0; mime_preload_names[i] != NULL; i++) {
    if (kept[i] == NULL || kept[i] == (iconv_t) -1) {
      /* Kept open: a converter in use is never unloaded. */
      kept[i] = iconv_open("UTF-8", mime_preload_names[i]);
    }
    if (kept[i] != (iconv_t) -1) {
      n++;
    }
  }
  return n;
}

/* Normalises a label (case, quotes, RFC 2231 "*language" suffix) into buf
 * and returns the iconv name, or NULL to guess.
 */
static const char *mime_charset_resolve(const char *label, char *buf,
    size_t bufsz) {
  size_t i, n = 0;

  if (label == NULL) {
    return NULL;
  }

  for (i = 0; label[i] != '\0' && label[i] != '*'; i++) {
    unsigned char c = (unsigned char) label[i];

    if (c <= ' ' || c == '"' || c == '\'') {
      continue;
    }
    if (n + 1 >= bufsz) {
      return NULL;
    }
    buf[n++] = (char) tolower(c);
  }
  buf[n] = '\0';

  if (n == 0) {
    return NULL;
  }

  for (i = 0; mime_charset_aliases[i].label != NULL; i++) {
    if (strcmp(buf, mime_charset_aliases[i].label) == 0) {
      return mime_charset_aliases[i].name;
    }
  }

  return buf;
}

/* Appends the conversion of in to out.  Returns 0, 1 if bytes had to be
 * replaced (strict: stops at the first invalid byte), or -1 (ENOMEM).
 */
static int mime_iconv(iconv_t cd, const char *in, size_t len,
    struct mailoauth_buf *out, int strict) {
  char *ip = (char *) in;
  size_t il = len;
  int bad = 0, flushing = 0;

  for (;;) {
    char *op;
    size_t ol, before, r;

    if (mailoauth_buf_reserve(out, (il < 16384 ? il : 16384) * 4 + 32) < 0) {
      return -1;
    }

    op = out->data + out->len;
    before = ol = out->size - out->len - 1;
    if (flushing) {
      /* Back to the initial shift state (ISO-2022-JP and friends). */
      r = iconv(cd, NULL, NULL, &op, &ol);
    } else {
      r = iconv(cd, &ip, &il, &op, &ol);
    }
    out->len += before - ol;
    out->data[out->len] = '\0';

    if (r != (size_t) -1) {
      if (flushing) {
        return bad;
      }
      flushing = 1;
      continue;
    }

    if (errno == E2BIG) {
      if (mailoauth_buf_reserve(out, out->size) < 0) {
        return -1;
      }
      continue;
    }

    if (flushing) {
      return bad;
    }

    bad = 1;
    if (strict) {
      return 1;
    }
    if (mailoauth_buf_add(out, "\xef\xbf\xbd", 3) < 0) {
      return -1;
    }

    if (errno == EILSEQ && il > 0) {
      ip++;
      il--;
    } else {
      /* EINVAL: a sequence cut short by the end of the input. */
      flushing = 1;
    }
  }
}

static int mime_iconv_from(const char *from, const char *in, size_t len,
    struct mailoauth_buf *out, int strict) {
  iconv_t cd;
  int rc;

  cd = iconv_open("UTF-8", from);
  if (cd == (iconv_t) -1) {
    return -2;
  }

  rc = mime_iconv(cd, in, len, out, strict);
  iconv_close(cd);
  return rc;
}

static int mime_is_ascii(const char *in, size_t len) {
  size_t i;

  for (i = 0; i < len; i++) {
    if ((unsigned char) in[i] >= 0x80) {
      return 0;
    }
  }
  return 1;
}

/* Text of unknown charset: UTF-8 if it is valid UTF-8 (RFC 6532 headers,
 * modern mailers), else the fallback, else windows-1252.
 */
static int mime_guess_to_utf8(const char *fallback, const char *in,
    size_t len, struct mailoauth_buf *out, int *bad) {
  size_t start = out->len;
  char norm[64];
  const char *cs;
  int rc;

  if (mime_is_ascii(in, len)) {
    return mailoauth_buf_add(out, in, len);
  }

  rc = mime_iconv_from("UTF-8", in, len, out, 1);
  if (rc == 0 || rc == -1) {
    return rc;
  }

  out->len = start;
  cs = mime_charset_resolve(fallback, norm, sizeof(norm));
  if (cs != NULL && strcmp(cs, "UTF-8") != 0) {
    rc = mime_iconv_from(cs, in, len, out, 0);
    if (rc == -2) {
      *bad = 1;
    } else if (rc < 0) {
      return -1;
    } else {
      if (rc > 0) {
        *bad = 1;
      }
      return 0;
    }
  }

  out->len = start;
  rc = mime_iconv_from("WINDOWS-1252", in, len, out, 0);
  if (rc < 0) {
    return -1;
  }
  if (rc > 0) {
    *bad = 1;
  }
  return 0;
}

static int mime_convert(const char *charset, const char *in, size_t len,
    struct mailoauth_buf *out, int *bad) {
  char norm[64];
  const char *cs;
  int rc;

  cs = mime_charset_resolve(charset, norm, sizeof(norm));
  if (cs == NULL) {
    return mime_guess_to_utf8(NULL, in, len, out, bad);
  }

  if (strcmp(cs, "UTF-8") == 0 && mime_is_ascii(in, len)) {
    return mailoauth_buf_add(out, in, len);
  }

  rc = mime_iconv_from(cs, in, len, out, 0);
  if (rc == -2 && strncmp(cs, "x-", 2) == 0) {
    rc = mime_iconv_from(cs + 2, in, len, out, 0);
  }
  if (rc == -2) {
    *bad = 1;
    return mime_guess_to_utf8(NULL, in, len, out, bad);
  }
  if (rc < 0) {
    return -1;
  }
  if (rc > 0) {
    *bad = 1;
  }
  return 0;
}

/* The field string of what a conversion filled into out (freed);
 * filled < 0: it ran out of memory.
 */
static char *mime_buf_field(struct mailoauth_buf *out, int filled) {
  char *res = NULL;

  if (filled < 0 || mailoauth_buf_reserve(out, 0) < 0) {
    errno = ENOMEM;
  } else {
    res = mime_field_str(out->data, out->len);
  }
  mailoauth_buf_free(out);
  return res;
}

char *mailoauth_mime_to_utf8(const char *charset, const char *in, size_t len,
    int *bad) {
  struct mailoauth_buf out = { NULL, 0, 0, 0, 0 };
  int dummy = 0;

  return mime_buf_field(&out, mime_convert(charset, in, len, &out,
    bad ? bad : &dummy));
}

/* ------------------------------------------------------------------------
 * Base64, decoded by OpenSSL's EVP_DecodeBlock().  That function takes
 * whole quanta and rejects the input as a whole on anything else, so the
 * characters are sorted here first: whitespace and line lengths do not
 * matter, garbage is skipped (and reported), only whole quanta are handed
 * over, a padded quantum ends a block (padding in mid-stream: concatenated
 * encodings), and a truncated final quantum is padded so its whole bytes
 * survive.
 */

typedef int (*mime_out_fn)(void *arg, const unsigned char *d, size_t n);

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

static void mime_b64_init(struct mime_b64 *b) {
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

static int mime_b64_update(struct mime_b64 *b, const unsigned char *in,
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

static int mime_b64_final(struct mime_b64 *b, mime_out_fn fn, void *arg) {
  if (b->nhold == 1) {
    /* Six bits make no byte. */
    b->bad = 1;
    b->nhold = b->npad = 0;

  } else if (b->nhold > 1) {
    b->bad = 1;
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

static int mime_buf_out(void *arg, const unsigned char *d, size_t n) {
  return mailoauth_buf_add(arg, d, n);
}

/* ------------------------------------------------------------------------
 * RFC 2047 encoded words.
 */

struct mime_ew {
  const char *charset;
  size_t charset_len;
  int enc;                      /* 'B' or 'Q' */
  const char *text;
  size_t text_len;
  size_t total;                 /* bytes of "=?...?=" */
};

static int mime_parse_ew(const char *s, size_t n, struct mime_ew *ew) {
  size_t i, lim;

  if (n < 8 || s[0] != '=' || s[1] != '?') {
    return 0;
  }

  lim = n < MIME_EW_MAX ? n : MIME_EW_MAX;
  for (i = 2; i < lim && s[i] != '?'; i++) {
    unsigned char c = (unsigned char) s[i];

    if (c <= ' ' || c >= 0x7f || c == '"' || c == '(' || c == ')') {
      return 0;
    }
  }
  if (i == 2 || i > 66 || i + 3 >= lim || s[i + 2] != '?') {
    return 0;
  }

  ew->charset = s + 2;
  ew->charset_len = i - 2;
  ew->enc = toupper((unsigned char) s[i + 1]);
  if (ew->enc != 'B' && ew->enc != 'Q') {
    return 0;
  }

  ew->text = s + i + 3;
  for (i += 3; i + 1 < lim; i++) {
    if (s[i] == '?' && s[i + 1] == '=') {
      ew->text_len = (size_t) (s + i - ew->text);
      ew->total = i + 2;
      return 1;
    }
    if (s[i] == '\r' || s[i] == '\n') {
      return 0;
    }
  }

  return 0;
}

/* Bytes of a run of adjacent encoded words in one charset. */
struct mime_ewrun {
  char charset[68];
  int active;
  struct mailoauth_buf bytes;
  struct mailoauth_buf b64;
  int bad;
};

static int mime_ewrun_b64_flush(struct mime_ewrun *run) {
  struct mime_b64 b;
  int rc;

  if (run->b64.len == 0) {
    return 0;
  }

  mime_b64_init(&b);
  rc = mime_b64_update(&b, (unsigned char *) run->b64.data, run->b64.len,
    mime_buf_out, &run->bytes);
  if (rc == 0) {
    rc = mime_b64_final(&b, mime_buf_out, &run->bytes);
  }
  if (b.bad) {
    run->bad = 1;
  }
  run->b64.len = 0;
  return rc;
}

static int mime_ewrun_flush(struct mime_ewrun *run, struct mailoauth_buf *out,
    int *bad) {
  if (!run->active) {
    return 0;
  }

  run->active = 0;
  if (mime_ewrun_b64_flush(run) < 0 ||
      mime_convert(run->charset, run->bytes.data ? run->bytes.data : "",
        run->bytes.len, out, bad) < 0) {
    return -1;
  }
  if (run->bad) {
    *bad = 1;
  }
  run->bytes.len = 0;
  run->bad = 0;
  return 0;
}

static int mime_ewrun_add(struct mime_ewrun *run, const struct mime_ew *ew,
    struct mailoauth_buf *out, int *bad) {
  size_t i;

  if (run->active &&
      (strlen(run->charset) != ew->charset_len ||
       strncasecmp(run->charset, ew->charset, ew->charset_len) != 0)) {
    if (mime_ewrun_flush(run, out, bad) < 0) {
      return -1;
    }
  }

  if (!run->active) {
    memcpy(run->charset, ew->charset, ew->charset_len);
    run->charset[ew->charset_len] = '\0';
    run->active = 1;
  }

  if (ew->enc == 'B') {
    /* Words are joined before decoding: some mailers split a quantum. */
    return mailoauth_buf_add(&run->b64, ew->text, ew->text_len);
  }

  if (mime_ewrun_b64_flush(run) < 0) {
    return -1;
  }

  if (mailoauth_buf_reserve(&run->bytes, ew->text_len) < 0) {
    return -1;
  }

  for (i = 0; i < ew->text_len; i++) {
    char c = ew->text[i];
    int hi, lo;

    if (c == '_') {
      c = ' ';
    } else if (c == '=' && i + 2 < ew->text_len &&
        (hi = mime_hexval((unsigned char) ew->text[i + 1])) >= 0 &&
        (lo = mime_hexval((unsigned char) ew->text[i + 2])) >= 0) {
      c = (char) (hi * 16 + lo);
      i += 2;
    }
    run->bytes.data[run->bytes.len++] = c;
  }
  run->bytes.data[run->bytes.len] = '\0';

  return 0;
}

static int mime_decode_words(const char *v, size_t n, const char *fallback,
    struct mailoauth_buf *out, int *bad) {
  struct mime_ewrun run;
  struct mailoauth_buf raw = { NULL, 0, 0, 0, 0 };
  size_t i = 0;
  int last_ew = 0, rc = -1;

  memset(&run, 0, sizeof(run));

  while (i < n) {
    struct mime_ew ew;

    if (v[i] == '=' && mime_parse_ew(v + i, n - i, &ew)) {
      if (!last_ew && raw.len > 0) {
        if (mime_guess_to_utf8(fallback, raw.data, raw.len, out, bad) < 0) {
          goto done;
        }
        raw.len = 0;
      }
      if (mime_ewrun_add(&run, &ew, out, bad) < 0) {
        goto done;
      }
      i += ew.total;
      last_ew = 1;
      continue;
    }

    if (mime_is_wsp((unsigned char) v[i]) || v[i] == '\r' || v[i] == '\n') {
      size_t j = i;

      while (j < n && (mime_is_wsp((unsigned char) v[j]) || v[j] == '\r' ||
          v[j] == '\n')) {
        j++;
      }

      /* Whitespace between two encoded words is not part of the text. */
      if (last_ew && j < n && v[j] == '=' && mime_parse_ew(v + j, n - j, &ew)) {
        i = j;
        continue;
      }

      if (last_ew) {
        if (mime_ewrun_flush(&run, out, bad) < 0) {
          goto done;
        }
        last_ew = 0;
      }
      if (mailoauth_buf_add(&raw, v + i, j - i) < 0) {
        goto done;
      }
      i = j;
      continue;
    }

    if (last_ew) {
      if (mime_ewrun_flush(&run, out, bad) < 0) {
        goto done;
      }
      last_ew = 0;
    }

    {
      size_t j = i + 1;

      while (j < n && v[j] != '=' && !mime_is_wsp((unsigned char) v[j]) &&
          v[j] != '\r' && v[j] != '\n') {
        j++;
      }
      if (mailoauth_buf_add(&raw, v + i, j - i) < 0) {
        goto done;
      }
      i = j;
    }
  }

  if (mime_ewrun_flush(&run, out, bad) < 0) {
    goto done;
  }
  if (raw.len > 0 &&
      mime_guess_to_utf8(fallback, raw.data, raw.len, out, bad) < 0) {
    goto done;
  }
  rc = 0;

done:
  mailoauth_buf_free(&raw);
  mailoauth_buf_free(&run.bytes);
  mailoauth_buf_free(&run.b64);
  return rc;
}

char *mailoauth_mime_decode_header(const char *value, size_t len,
    const char *fallback_charset, int *bad) {
  struct mailoauth_buf out = { NULL, 0, 0, 0, 0 };
  int dummy = 0;

  return mime_buf_field(&out, mime_decode_words(value, len,
    fallback_charset, &out, bad ? bad : &dummy));
}

/* ------------------------------------------------------------------------
 * Structured header values (RFC 2045 with RFC 822 comments).
 */

/* Skips whitespace and (nested) comments. */
static size_t mime_skip_cfws(const char *s, size_t n, size_t i) {
  while (i < n) {
    if (mime_is_wsp((unsigned char) s[i]) || s[i] == '\r' || s[i] == '\n') {
      i++;

    } else if (s[i] == '(') {
      unsigned int level = 0;

      for (; i < n; i++) {
        if (s[i] == '\\' && i + 1 < n) {
          i++;
        } else if (s[i] == '(') {
          level++;
        } else if (s[i] == ')' && --level == 0) {
          i++;
          break;
        }
      }

    } else {
      break;
    }
  }

  return i;
}

/* Index of the next ';' outside quoted strings and comments, or n. */
static size_t mime_next_semicolon(const char *s, size_t n, size_t i) {
  while (i < n && s[i] != ';') {
    if (s[i] == '"') {
      for (i++; i < n && s[i] != '"'; i++) {
        if (s[i] == '\\' && i + 1 < n) {
          i++;
        }
      }
      if (i < n) {
        i++;
      }
    } else if (s[i] == '(' && (i == 0 || mime_is_wsp((unsigned char) s[i - 1]))) {
      i = mime_skip_cfws(s, n, i);
    } else {
      i++;
    }
  }
  return i;
}

/* A token (type, subtype, disposition) at *i. */
static size_t mime_token(const char *s, size_t n, size_t *i,
    const char *stops) {
  size_t start = *i;

  while (*i < n) {
    unsigned char c = (unsigned char) s[*i];

    if (c <= ' ' || c == '(' || c == '"' || c == ';' ||
        strchr(stops, c) != NULL) {
      break;
    }
    (*i)++;
  }
  return *i - start;
}

typedef int (*mime_param_fn)(const char *attr, size_t alen, const char *val,
  size_t vlen, void *arg);

/* Calls fn for every attribute=value after the first top-level ';'.  Quoted
 * values are unquoted the way mailers expect, not strictly: only \\ and \"
 * are escapes, so "C:\dir\file.doc" from old Windows mailers keeps its
 * backslashes.  A '(' opens a comment only after whitespace, so an unquoted
 * "Scan(1).pdf" survives.
 */
static int mime_params_scan(const char *s, size_t n, mime_param_fn fn,
    void *arg) {
  struct mailoauth_buf val = { NULL, 0, 0, 0, 0 };
  size_t i;
  int rc = 0;

  i = mime_next_semicolon(s, n, 0);
  while (i < n && rc == 0) {
    size_t astart, alen;

    i = mime_skip_cfws(s, n, i + 1);
    astart = i;
    while (i < n && s[i] != '=' && s[i] != ';' && s[i] != '"' &&
        !mime_is_wsp((unsigned char) s[i]) && s[i] != '(') {
      i++;
    }
    alen = i - astart;
    i = mime_skip_cfws(s, n, i);
    if (alen == 0 || i >= n || s[i] != '=') {
      i = mime_next_semicolon(s, n, i);
      continue;
    }
    i = mime_skip_cfws(s, n, i + 1);

    /* A value is never longer than what is left of the header. */
    val.len = 0;
    if (mailoauth_buf_reserve(&val, n - i) < 0) {
      rc = -1;
      break;
    }

    if (i < n && s[i] == '"') {
      for (i++; i < n && s[i] != '"'; i++) {
        if (s[i] == '\\' && i + 1 < n && (s[i + 1] == '\\' || s[i + 1] == '"')) {
          i++;
        }
        val.data[val.len++] = s[i];
      }
      val.data[val.len] = '\0';
      i = mime_next_semicolon(s, n, i < n ? i + 1 : i);

    } else {
      size_t end;

      while (i < n && s[i] != ';') {
        if (s[i] == '(' && mime_is_wsp((unsigned char) s[i - 1])) {
          i = mime_skip_cfws(s, n, i);
          continue;
        }
        val.data[val.len++] = s[i];
        i++;
      }
      end = val.len;
      while (end > 0 && (mime_is_wsp((unsigned char) val.data[end - 1]) ||
          val.data[end - 1] == '\r' || val.data[end - 1] == '\n')) {
        end--;
      }
      val.len = end;
      val.data[end] = '\0';
    }

    if (rc == 0) {
      rc = fn(s + astart, alen, val.data, val.len, arg);
    }
  }

  mailoauth_buf_free(&val);
  return rc;
}

struct mime_segment {
  unsigned int idx;
  int encoded;
  char *value;
  size_t len;
};

struct mime_pget {
  const char *name;
  size_t nlen;
  char *plain;                  /* name=  */
  size_t plain_len;
  char *ext;                    /* name*= */
  size_t ext_len;
  struct mime_segment *seg;     /* name*N= / name*N*= */
  unsigned int nseg, segsize;
};

static int mime_pget_cb(const char *attr, size_t alen, const char *val,
    size_t vlen, void *arg) {
  struct mime_pget *g = arg;
  const char *rest;
  size_t rlen, k;

  if (alen < g->nlen || strncasecmp(attr, g->name, g->nlen) != 0) {
    return 0;
  }

  rest = attr + g->nlen;
  rlen = alen - g->nlen;

  if (rlen == 0) {
    if (g->plain == NULL) {
      g->plain = mime_strndup(val, vlen);
      g->plain_len = vlen;
      return g->plain ? 0 : -1;
    }
    return 0;
  }

  if (rest[0] != '*') {
    return 0;
  }

  if (rlen == 1) {
    if (g->ext == NULL) {
      g->ext = mime_strndup(val, vlen);
      g->ext_len = vlen;
      return g->ext ? 0 : -1;
    }
    return 0;
  }

  /* "*N" or "*N*": at most three digits, no leading zeros but for 0. */
  {
    unsigned int idx = 0, digits = 0;
    int encoded = 0;
    struct mime_segment *s;

    for (k = 1; k < rlen && isdigit((unsigned char) rest[k]); k++) {
      idx = idx * 10 + (unsigned int) (rest[k] - '0');
      digits++;
    }
    if (digits == 0 || digits > 3 || (digits > 1 && rest[1] == '0')) {
      return 0;
    }
    if (k < rlen) {
      if (rest[k] != '*' || k + 1 != rlen) {
        return 0;
      }
      encoded = 1;
    }

    for (k = 0; k < g->nseg; k++) {
      if (g->seg[k].idx == idx) {
        return 0;
      }
    }
    if (g->nseg >= MIME_MAX_SEGMENTS) {
      return 0;
    }
    if (g->nseg == g->segsize) {
      unsigned int size = g->segsize ? g->segsize * 2 : 4;
      struct mime_segment *seg = realloc(g->seg, size * sizeof(*seg));

      if (seg == NULL) {
        errno = ENOMEM;
        return -1;
      }
      g->seg = seg;
      g->segsize = size;
    }

    s = &g->seg[g->nseg];
    s->value = mime_strndup(val, vlen);
    if (s->value == NULL) {
      return -1;
    }
    s->idx = idx;
    s->encoded = encoded;
    s->len = vlen;
    g->nseg++;
  }

  return 0;
}

static int mime_pct_decode(const char *s, size_t n, struct mailoauth_buf *out) {
  size_t i;

  if (mailoauth_buf_reserve(out, n) < 0) {
    return -1;
  }

  for (i = 0; i < n; i++) {
    char c = s[i];
    int hi, lo;

    if (c == '%' && i + 2 < n &&
        (hi = mime_hexval((unsigned char) s[i + 1])) >= 0 &&
        (lo = mime_hexval((unsigned char) s[i + 2])) >= 0) {
      c = (char) (hi * 16 + lo);
      i += 2;
    }
    out->data[out->len++] = c;
  }
  out->data[out->len] = '\0';
  return 0;
}

/* Splits "charset'language'rest"; without both quotes there is no charset. */
static const char *mime_2231_split(const char *v, size_t n, char *charset,
    size_t csz, size_t *skip) {
  const char *q1, *q2;

  *skip = 0;
  q1 = memchr(v, '\'', n);
  if (q1 == NULL) {
    return NULL;
  }
  q2 = memchr(q1 + 1, '\'', n - (size_t) (q1 + 1 - v));
  if (q2 == NULL) {
    return NULL;
  }

  *skip = (size_t) (q2 + 1 - v);
  if ((size_t) (q1 - v) >= csz || q1 == v) {
    return NULL;
  }
  memcpy(charset, v, (size_t) (q1 - v));
  charset[q1 - v] = '\0';
  return charset;
}

static int mime_seg_cmp(const void *a, const void *b) {
  const struct mime_segment *x = a, *y = b;

  return x->idx < y->idx ? -1 : x->idx > y->idx;
}

static int mime_pget_decode(struct mime_pget *g, const char *fallback,
    struct mailoauth_buf *out, int *bad) {
  struct mailoauth_buf bytes = { NULL, 0, 0, 0, 0 };
  char charset[68];
  const char *cs = NULL;
  int rc = -1;
  unsigned int k;

  if (g->nseg > 0) {
    qsort(g->seg, g->nseg, sizeof(g->seg[0]), mime_seg_cmp);

    for (k = 0; k < g->nseg; k++) {
      const char *v = g->seg[k].value;
      size_t vlen = g->seg[k].len, skip = 0;

      if (!g->seg[k].encoded) {
        if (mailoauth_buf_add(&bytes, v, vlen) < 0) {
          goto done;
        }
        continue;
      }
      if (k == 0) {
        cs = mime_2231_split(v, vlen, charset, sizeof(charset), &skip);
      }
      if (mime_pct_decode(v + skip, vlen - skip, &bytes) < 0) {
        goto done;
      }
    }

    if (!g->seg[0].encoded) {
      /* Plain continuations only: may still hold RFC 2047 words. */
      rc = mime_decode_words(bytes.data ? bytes.data : "", bytes.len,
        fallback, out, bad);
    } else {
      rc = cs ? mime_convert(cs, bytes.data ? bytes.data : "", bytes.len,
          out, bad) :
        mime_guess_to_utf8(fallback, bytes.data ? bytes.data : "",
          bytes.len, out, bad);
    }

  } else if (g->ext != NULL) {
    size_t skip;

    cs = mime_2231_split(g->ext, g->ext_len, charset, sizeof(charset), &skip);
    if (mime_pct_decode(g->ext + skip, g->ext_len - skip, &bytes) < 0) {
      goto done;
    }
    rc = cs ? mime_convert(cs, bytes.data ? bytes.data : "", bytes.len, out,
        bad) :
      mime_guess_to_utf8(fallback, bytes.data ? bytes.data : "", bytes.len,
        out, bad);

  } else {
    rc = mime_decode_words(g->plain, g->plain_len, fallback, out, bad);
  }

done:
  mailoauth_buf_free(&bytes);
  return rc;
}

static void mime_pget_free(struct mime_pget *g) {
  unsigned int k;

  free(g->plain);
  free(g->ext);
  for (k = 0; k < g->nseg; k++) {
    free(g->seg[k].value);
  }
  free(g->seg);
}

char *mailoauth_mime_header_param(const char *value, size_t len,
    const char *name, const char *fallback_charset, int *bad) {
  struct mime_pget pg, *g = &pg;
  struct mailoauth_buf out = { NULL, 0, 0, 0, 0 };
  int dummy = 0;
  char *res = NULL;

  if (bad == NULL) {
    bad = &dummy;
  }

  memset(g, 0, sizeof(*g));
  g->name = name;
  g->nlen = strlen(name);

  if (mime_params_scan(value, len, mime_pget_cb, g) < 0) {
    errno = ENOMEM;
    goto done;
  }

  if (g->plain == NULL && g->ext == NULL && g->nseg == 0) {
    errno = ENOENT;
    goto done;
  }

  if (mime_pget_decode(g, fallback_charset, &out, bad) < 0 ||
      mailoauth_buf_reserve(&out, 0) < 0) {
    errno = ENOMEM;
    goto done;
  }
  res = mime_field_str(out.data, out.len);

done:
  mailoauth_buf_free(&out);
  mime_pget_free(g);
  return res;
}

/* The raw (unquoted, undecoded) value: boundaries are compared byte for
 * byte and must not go through any charset machinery.
 */
struct mime_rawget {
  const char *name;
  char *value;
  size_t len;
};

static int mime_rawget_cb(const char *attr, size_t alen, const char *val,
    size_t vlen, void *arg) {
  struct mime_rawget *g = arg;

  if (g->value == NULL && alen == strlen(g->name) &&
      strncasecmp(attr, g->name, alen) == 0) {
    g->value = mime_strndup(val, vlen);
    g->len = vlen;
    return g->value ? 0 : -1;
  }
  return 0;
}

/* ------------------------------------------------------------------------
 * The parser.
 */

/* Frame kinds and states. */
#define MIME_FK_LEAF            0
#define MIME_FK_MULTIPART       1

#define MIME_FS_HEADERS         0   /* collecting the header block */
#define MIME_FS_BODY            1   /* leaf body */
#define MIME_FS_PREAMBLE        2   /* multipart, before the first boundary */
#define MIME_FS_INSIDE          3   /* multipart, a child is open */
#define MIME_FS_EPILOGUE        4   /* multipart, closed */

/* Header line kinds, decided from the first bytes of the line. */
#define MIME_LK_NEW             0
#define MIME_LK_NAME            1
#define MIME_LK_NAME_WS         2
#define MIME_LK_HEADER          3   /* decided from here on */
#define MIME_LK_CONT            4
#define MIME_LK_FROM            5   /* mbox "From " line: dropped */
#define MIME_LK_BAD             6

#define MIME_MAX_OWNED          16

struct mime_qp {
  int state;
  int hex1;
  unsigned char ws[256];
  size_t wslen;
};

#define MIME_QP_TEXT    0
#define MIME_QP_EQ      1
#define MIME_QP_EQ_HEX  2
#define MIME_QP_EQ_WS   3

struct mime_shared {
  struct mailoauth_mime_limits lim;
  struct mailoauth_mime_callbacks cb;
  unsigned int nparts;
  uint64_t total;
  int reported;
};

struct mime_frame {
  struct mailoauth_mime_part info;
  struct mailoauth_mime_message msg;
  struct mailoauth_mime *p;
  char *owned[MIME_MAX_OWNED];
  unsigned int nowned;
  int kind, state;
  char *boundary;
  size_t blen;
  unsigned int nchildren;
  int begun, want, digest;
  uint64_t delivered;
  unsigned int status;
  struct mime_b64 b64;
  struct mime_qp qp;
  struct mailoauth_mime *child;
};

struct mailoauth_mime {
  struct mime_shared *sh;
  int owns_shared;
  unsigned int base_depth;
  unsigned int in_message;
  char *base_section;
  int top_level;

  struct mime_frame **frames;
  unsigned int nframes, frames_size;

  /* line engine */
  int bol;
  unsigned char lbuf[MIME_LBUF_SIZE];
  size_t llen;
  int held_cr;
  int pending_eol;

  /* header block of the innermost frame */
  struct mailoauth_buf hbuf;
  size_t line_start;
  int lkind;
  char lname[8];
  size_t lname_len;

  int error;
  int finished;
};

static void mime_process(struct mailoauth_mime *p, const unsigned char *d,
  size_t n);
static struct mailoauth_mime *mime_new(struct mime_shared *sh,
  unsigned int base_depth, unsigned int in_message, const char *section);
static void mime_unwind(struct mailoauth_mime *p);

static struct mime_frame *mime_top(struct mailoauth_mime *p) {
  return p->nframes > 0 ? p->frames[p->nframes - 1] : NULL;
}

static int mime_errno(int code) {
  switch (code) {
    case MAILOAUTH_MIME_E_HEADER_TOO_BIG:
      return EMSGSIZE;
    case MAILOAUTH_MIME_E_TOO_MANY_PARTS:
      return EMLINK;
    case MAILOAUTH_MIME_E_TOO_DEEP:
      return ELOOP;
    case MAILOAUTH_MIME_E_PART_TOO_BIG:
    case MAILOAUTH_MIME_E_TOTAL_TOO_BIG:
      return EFBIG;
    case MAILOAUTH_MIME_E_ABORTED:
      return ECANCELED;
    default:
      return ENOMEM;
  }
}

const char *mailoauth_mime_strerror(int code) {
  switch (code) {
    case MAILOAUTH_MIME_OK:
      return "no error";
    case MAILOAUTH_MIME_E_HEADER_TOO_BIG:
      return "header block too large";
    case MAILOAUTH_MIME_E_TOO_MANY_PARTS:
      return "too many MIME parts";
    case MAILOAUTH_MIME_E_TOO_DEEP:
      return "MIME parts nested too deeply";
    case MAILOAUTH_MIME_E_PART_TOO_BIG:
      return "part larger than the limit";
    case MAILOAUTH_MIME_E_TOTAL_TOO_BIG:
      return "message larger than the limit";
    case MAILOAUTH_MIME_E_ABORTED:
      return "stopped by the caller";
    case MAILOAUTH_MIME_E_NOMEM:
      return "out of memory";
    case MAILOAUTH_MIME_W_BAD_HEADER_LINE:
      return "malformed header line";
    case MAILOAUTH_MIME_W_BAD_BASE64:
      return "broken base64";
    case MAILOAUTH_MIME_W_UNKNOWN_ENCODING:
      return "unknown transfer encoding";
    case MAILOAUTH_MIME_W_NO_BOUNDARY:
      return "multipart without a usable boundary";
    case MAILOAUTH_MIME_W_UNTERMINATED:
      return "multipart without its closing boundary";
    case MAILOAUTH_MIME_W_BAD_CHARSET:
      return "unknown charset or invalid characters";
    default:
      return "unknown MIME error";
  }
}

static void mime_fail(struct mailoauth_mime *p, int code) {
  struct mime_frame *f;

  if (p->error != 0) {
    return;
  }
  p->error = code;

  mailoauth_trace(trace_channel, 3, "parsing stopped: %s",
    mailoauth_mime_strerror(code));

  if (!p->sh->reported) {
    p->sh->reported = 1;
    f = mime_top(p);
    if (p->sh->cb.error != NULL) {
      p->sh->cb.error(code, f && f->begun ? &f->info : NULL, p->sh->cb.arg);
    }
  }
}

static void mime_warn(struct mailoauth_mime *p, int code,
    struct mime_frame *f) {
  mailoauth_trace(trace_channel, 8, "part %s: %s",
    f && f->info.section ? f->info.section : "?",
    mailoauth_mime_strerror(code));

  if (p->sh->cb.error != NULL) {
    p->sh->cb.error(code, f ? &f->info : NULL, p->sh->cb.arg);
  }
}

/* Keeps a string for the frame's lifetime; NULL in means NULL out. */
static const char *mime_own(struct mailoauth_mime *p, struct mime_frame *f,
    char *s) {
  if (s == NULL) {
    return NULL;
  }
  if (f->nowned >= MIME_MAX_OWNED) {
    free(s);
    mime_fail(p, MAILOAUTH_MIME_E_NOMEM);
    return NULL;
  }
  f->owned[f->nowned++] = s;
  return s;
}

static void mime_frame_free(struct mime_frame *f) {
  unsigned int i;

  for (i = 0; i < f->nowned; i++) {
    free(f->owned[i]);
  }
  if (f->child != NULL) {
    mailoauth_mime_destroy(f->child);
  }
  free(f->boundary);
  free(f);
}

static int mime_push(struct mailoauth_mime *p) {
  struct mime_frame *f;

  if (p->nframes == p->frames_size) {
    unsigned int size = p->frames_size ? p->frames_size * 2 : 8;
    struct mime_frame **frames;

    frames = realloc(p->frames, size * sizeof(*frames));
    if (frames == NULL) {
      mime_fail(p, MAILOAUTH_MIME_E_NOMEM);
      return -1;
    }
    p->frames = frames;
    p->frames_size = size;
  }

  f = calloc(1, sizeof(*f));
  if (f == NULL) {
    mime_fail(p, MAILOAUTH_MIME_E_NOMEM);
    return -1;
  }

  f->p = p;
  f->state = MIME_FS_HEADERS;
  f->info.depth = p->base_depth + p->nframes;
  f->info.in_message = p->in_message;
  p->frames[p->nframes++] = f;

  p->hbuf.len = 0;
  p->line_start = 0;
  p->lkind = MIME_LK_NEW;
  p->lname_len = 0;
  return 0;
}

static void mime_pop(struct mailoauth_mime *p) {
  mime_frame_free(p->frames[--p->nframes]);
}

/* ---- delivery of decoded bytes ---- */

static int mime_deliver(void *arg, const unsigned char *d, size_t n) {
  struct mime_frame *f = arg;
  struct mailoauth_mime *p = f->p;
  struct mime_shared *sh = p->sh;
  size_t m = n;
  int code = 0, rc = 0;

  if (p->error != 0) {
    return -1;
  }

  if (f->want && n > 0) {
    if (sh->lim.max_part_bytes - f->delivered < m) {
      m = (size_t) (sh->lim.max_part_bytes - f->delivered);
      code = MAILOAUTH_MIME_E_PART_TOO_BIG;
    }

    /* A message also descended into counts through its parts: counted at
     * every level, the same bytes would reach the limit at a point that
     * depends on how the input happened to be chunked.
     */
    if (f->child == NULL && sh->lim.max_total_bytes - sh->total < m) {
      m = (size_t) (sh->lim.max_total_bytes - sh->total);
      code = MAILOAUTH_MIME_E_TOTAL_TOO_BIG;
    }

    if (m > 0) {
      f->delivered += m;
      if (f->child == NULL) {
        sh->total += m;
      }
      if (sh->cb.part_data != NULL) {
        rc = sh->cb.part_data(&f->info, d, m, sh->cb.arg);
      }
    }

    if (rc < 0) {
      mime_fail(p, MAILOAUTH_MIME_E_ABORTED);
      return -1;
    }
    if (rc > 0) {
      /* The caller wants no more: its limits no longer apply. */
      f->want = 0;
      m = n;
      code = 0;
    }
  }

  /* The attached message sees exactly the bytes within its part's limit,
   * so what it finds in them does not depend on the chunking either.
   */
  if (f->child != NULL && m > 0) {
    if (mailoauth_mime_feed(f->child, d, m) < 0) {
      p->error = f->child->error;
      return -1;
    }
  }

  if (code != 0) {
    mime_fail(p, code);
    return -1;
  }
  return 0;
}

/* Output of the body decoders, gathered so the caller sees few large
 * chunks rather than one per input line.
 */
struct mime_obuf {
  unsigned char data[2048];
  size_t len;
  struct mime_frame *f;
  int failed;
};

static void mime_obuf_flush(struct mime_obuf *o) {
  if (o->len > 0 && !o->failed) {
    if (mime_deliver(o->f, o->data, o->len) < 0) {
      o->failed = 1;
    }
  }
  o->len = 0;
}

static void mime_obuf_add(struct mime_obuf *o, const void *d, size_t n) {
  const unsigned char *s = d;

  while (n > 0 && !o->failed) {
    size_t room = sizeof(o->data) - o->len, k = n < room ? n : room;

    memcpy(o->data + o->len, s, k);
    o->len += k;
    s += k;
    n -= k;
    if (o->len == sizeof(o->data)) {
      mime_obuf_flush(o);
    }
  }
}

static void mime_obuf_addc(struct mime_obuf *o, unsigned char c) {
  mime_obuf_add(o, &c, 1);
}

/* ---- quoted-printable ---- */

static void mime_qp_flush_ws(struct mime_qp *q, struct mime_obuf *o) {
  mime_obuf_add(o, q->ws, q->wslen);
  q->wslen = 0;
}

static void mime_qp_data(struct mime_qp *q, const unsigned char *d,
    size_t n, struct mime_obuf *o) {
  size_t i = 0;

  while (i < n && !o->failed) {
    unsigned char c = d[i];

    switch (q->state) {
      case MIME_QP_TEXT:
        if (c == '=') {
          mime_qp_flush_ws(q, o);
          q->state = MIME_QP_EQ;
        } else if (c == ' ' || c == '\t') {
          /* Held: trailing whitespace is transport padding. */
          if (q->wslen == sizeof(q->ws)) {
            mime_qp_flush_ws(q, o);
          }
          q->ws[q->wslen++] = c;
        } else {
          if (q->wslen > 0) {
            mime_qp_flush_ws(q, o);
          }
          mime_obuf_addc(o, c);
        }
        i++;
        break;

      case MIME_QP_EQ:
        if (mime_hexval(c) >= 0) {
          q->hex1 = c;
          q->state = MIME_QP_EQ_HEX;
          i++;
        } else if (c == ' ' || c == '\t') {
          q->ws[q->wslen++] = c;
          q->state = MIME_QP_EQ_WS;
          i++;
        } else {
          /* Not an escape: the '=' stands for itself. */
          mime_obuf_addc(o, '=');
          q->state = MIME_QP_TEXT;
        }
        break;

      case MIME_QP_EQ_HEX:
        if (mime_hexval(c) >= 0) {
          mime_obuf_addc(o, (unsigned char) (mime_hexval(q->hex1) * 16 +
            mime_hexval(c)));
          i++;
        } else {
          mime_obuf_addc(o, '=');
          mime_obuf_addc(o, (unsigned char) q->hex1);
        }
        q->state = MIME_QP_TEXT;
        break;

      case MIME_QP_EQ_WS:
        if ((c == ' ' || c == '\t') && q->wslen < sizeof(q->ws)) {
          q->ws[q->wslen++] = c;
          i++;
        } else {
          mime_obuf_addc(o, '=');
          mime_qp_flush_ws(q, o);
          q->state = MIME_QP_TEXT;
        }
        break;
    }
  }
}

static void mime_qp_end(struct mime_qp *q, struct mime_obuf *o,
    const char *eol, size_t eollen) {
  switch (q->state) {
    case MIME_QP_TEXT:
      q->wslen = 0;
      mime_obuf_add(o, eol, eollen);
      break;

    case MIME_QP_EQ:
    case MIME_QP_EQ_WS:
      /* Soft line break. */
      q->wslen = 0;
      break;

    case MIME_QP_EQ_HEX:
      mime_obuf_addc(o, '=');
      mime_obuf_addc(o, (unsigned char) q->hex1);
      mime_obuf_add(o, eol, eollen);
      break;
  }
  q->state = MIME_QP_TEXT;
}

/* ---- body sink ---- */

static int mime_body_wanted(struct mime_frame *f) {
  return f->want || f->child != NULL;
}

static void mime_body_data(struct mailoauth_mime *p, struct mime_frame *f,
    const unsigned char *d, size_t n) {
  struct mime_obuf o;

  if (!mime_body_wanted(f)) {
    return;
  }

  switch (f->info.encoding) {
    case MAILOAUTH_MIME_ENC_BASE64:
      mime_b64_update(&f->b64, d, n, mime_deliver, f);
      break;

    case MAILOAUTH_MIME_ENC_QP:
      o.len = 0;
      o.f = f;
      o.failed = 0;
      mime_qp_data(&f->qp, d, n, &o);
      mime_obuf_flush(&o);
      break;

    default:
      mime_deliver(f, d, n);
      break;
  }
  (void) p;
}

static void mime_body_eol(struct mailoauth_mime *p, struct mime_frame *f,
    int eol) {
  const char *s = eol == MIME_EOL_CRLF ? "\r\n" : "\n";
  size_t n = eol == MIME_EOL_CRLF ? 2 : 1;
  struct mime_obuf o;

  if (!mime_body_wanted(f)) {
    return;
  }

  switch (f->info.encoding) {
    case MAILOAUTH_MIME_ENC_BASE64:
      break;

    case MAILOAUTH_MIME_ENC_QP:
      o.len = 0;
      o.f = f;
      o.failed = 0;
      mime_qp_end(&f->qp, &o, s, n);
      mime_obuf_flush(&o);
      break;

    default:
      mime_deliver(f, (const unsigned char *) s, n);
      break;
  }
  (void) p;
}

static void mime_body_final(struct mailoauth_mime *p, struct mime_frame *f) {
  struct mime_obuf o;

  if (!mime_body_wanted(f)) {
    return;
  }

  switch (f->info.encoding) {
    case MAILOAUTH_MIME_ENC_BASE64:
      mime_b64_final(&f->b64, mime_deliver, f);
      break;

    case MAILOAUTH_MIME_ENC_QP:
      /* The last line's break went with the boundary: its trailing
       * whitespace is padding and a final '=' a soft break.
       */
      o.len = 0;
      o.f = f;
      o.failed = 0;
      mime_qp_end(&f->qp, &o, "", 0);
      mime_obuf_flush(&o);
      break;

    default:
      break;
  }
  (void) p;
}

/* ---- header block → part info ---- */

#define MIME_NHDRS      11

struct mime_hdrs {
  const char *v[MIME_NHDRS];
  size_t len[MIME_NHDRS];

  /* Authentication-Results, every one up to the cap, in order */
  const char *ar[MAILOAUTH_MIME_MAX_AUTHRES];
  size_t arlen[MAILOAUTH_MIME_MAX_AUTHRES];
  size_t nar;
};

#define MIME_H_CTYPE    0
#define MIME_H_CDISP    1
#define MIME_H_CTE      2
#define MIME_H_CID      3
#define MIME_H_SUBJECT  4
#define MIME_H_FROM     5
#define MIME_H_DATE     6
#define MIME_H_MSGID    7
#define MIME_H_TO       8
#define MIME_H_CC       9
#define MIME_H_DELIVTO  10

static const char *mime_hdr_names[MIME_NHDRS] = {
  "content-type", "content-disposition", "content-transfer-encoding",
  "content-id", "subject", "from", "date", "message-id", "to", "cc",
  "delivered-to"
};

/* Unfolds the block in place (a line break before whitespace goes, the
 * whitespace stays) and records the first occurrence of each header used.
 */
static void mime_scan_headers(char *blk, size_t n, struct mime_hdrs *h,
    int want_message) {
  size_t r, w = 0, i;

  for (r = 0; r < n; r++) {
    if (blk[r] == '\n' && r + 1 < n && mime_is_wsp((unsigned char) blk[r + 1])) {
      continue;
    }
    blk[w++] = blk[r];
  }
  n = w;

  memset(h, 0, sizeof(*h));
  i = 0;
  while (i < n) {
    char *line = blk + i, *nl = memchr(line, '\n', n - i), *colon;
    size_t llen = nl ? (size_t) (nl - line) : n - i, nlen, k;

    i += llen + 1;
    if (llen == 0 || mime_is_wsp((unsigned char) line[0])) {
      continue;         /* a continuation with nothing to continue */
    }

    colon = memchr(line, ':', llen);
    if (colon == NULL) {
      continue;
    }
    nlen = (size_t) (colon - line);
    while (nlen > 0 && mime_is_wsp((unsigned char) line[nlen - 1])) {
      nlen--;
    }

    if (want_message && nlen == 22 &&
        strncasecmp(line, "authentication-results", nlen) == 0) {
      if (h->nar < MAILOAUTH_MIME_MAX_AUTHRES) {
        h->ar[h->nar] = colon + 1;
        h->arlen[h->nar++] = llen - (size_t) (colon + 1 - line);
      }
      continue;
    }

    for (k = 0; k < MIME_NHDRS; k++) {
      if (k >= MIME_H_SUBJECT && !want_message) {
        break;
      }
      if (h->v[k] == NULL && strlen(mime_hdr_names[k]) == nlen &&
          strncasecmp(line, mime_hdr_names[k], nlen) == 0) {
        const char *v = colon + 1;
        size_t vlen = llen - (size_t) (v - line);

        while (vlen > 0 && (mime_is_wsp((unsigned char) *v) || *v == '\r')) {
          v++;
          vlen--;
        }
        while (vlen > 0 && (mime_is_wsp((unsigned char) v[vlen - 1]) ||
            v[vlen - 1] == '\r')) {
          vlen--;
        }
        h->v[k] = v;
        h->len[k] = vlen;
        break;
      }
    }
  }
}

/* Display strings must not carry line breaks or escapes into logs and
 * rule matching.
 */
static char *mime_no_controls(char *s) {
  size_t i;

  if (s != NULL) {
    for (i = 0; s[i] != '\0'; i++) {
      if ((unsigned char) s[i] < 0x20 || s[i] == 0x7f) {
        s[i] = ' ';
      }
    }
  }
  return s;
}

/* The first address of a From: value: inside <...>, else the first word
 * with an '@', quoted strings and comments skipped.
 */
static char *mime_from_addr(const char *v, size_t n) {
  size_t i = 0, start = 0, end = 0;
  int found = 0;

  while (i < n && !found) {
    if (v[i] == '"') {
      for (i++; i < n && v[i] != '"'; i++) {
        if (v[i] == '\\' && i + 1 < n) {
          i++;
        }
      }
      i++;
    } else if (v[i] == '(') {
      i = mime_skip_cfws(v, n, i);
    } else if (v[i] == '<') {
      start = ++i;
      while (i < n && v[i] != '>') {
        i++;
      }
      end = i;
      found = 1;
    } else {
      i++;
    }
  }

  if (!found) {
    i = 0;
    while (i < n && !found) {
      size_t ws;

      i = mime_skip_cfws(v, n, i);
      ws = i;
      while (i < n && !mime_is_wsp((unsigned char) v[i]) && v[i] != ',' &&
          v[i] != '(' && v[i] != '<' && v[i] != ';' && v[i] != '\r' &&
          v[i] != '\n') {
        i++;
      }
      if (i > ws && memchr(v + ws, '@', i - ws) != NULL) {
        start = ws;
        end = i;
        found = 1;
      } else if (i == ws) {
        i++;
      }
    }
  }

  while (start < end && mime_is_wsp((unsigned char) v[start])) {
    start++;
  }
  while (end > start && mime_is_wsp((unsigned char) v[end - 1])) {
    end--;
  }

  return mailoauth_mime_decode_header(v + start, found ? end - start : 0,
    NULL, NULL);
}

/* Every addr-spec of an address-list header, appended to *out as
 * "addr,addr" (lowercased, so that rules compare them as mail systems do).
 * Commas inside quoted strings, comments and <...> do not split.
 */
static void mime_addr_list(const char *v, size_t n, char **out) {
  size_t i = 0, start = 0;

  while (start < n) {
    char *addr;

    for (i = start; i < n && v[i] != ','; i++) {
      if (v[i] == '"') {
        for (i++; i < n && v[i] != '"'; i++) {
          if (v[i] == '\\' && i + 1 < n) {
            i++;
          }
        }
      } else if (v[i] == '(') {
        i = mime_skip_cfws(v, n, i) - 1;
      } else if (v[i] == '<') {
        while (i < n && v[i] != '>') {
          i++;
        }
      }
      if (i >= n) {
        break;
      }
    }

    addr = mime_from_addr(v + start, (i < n ? i : n) - start);
    if (addr != NULL && strchr(addr, '@') != NULL &&
        strchr(addr, ',') == NULL) {
      size_t have = *out ? strlen(*out) : 0, add = strlen(addr), k;
      char *grown = realloc(*out, have + add + 2);

      if (grown != NULL) {
        if (have > 0) {
          grown[have++] = ',';
        }
        for (k = 0; k < add; k++) {
          grown[have + k] = (char) tolower((unsigned char) addr[k]);
        }
        grown[have + add] = '\0';
        *out = grown;
      }
    }
    free(addr);
    start = i + 1;
  }
}

/* The Authentication-Results values as one string, a line each: control
 * characters become spaces, so that a value cannot pass for two.  A value
 * too long is not cut (what is left could read as another verdict).
 */
static char *mime_auth_results(const struct mime_hdrs *h) {
  static const char too_long[] = "(too long)";
  size_t total = 1, i, k, w = 0;
  char *s;

  for (i = 0; i < h->nar; i++) {
    total += (h->arlen[i] > MAILOAUTH_MIME_AUTHRES_LEN ?
      sizeof(too_long) - 1 : h->arlen[i]) + 1;
  }
  s = malloc(total);
  if (s == NULL) {
    return NULL;
  }

  for (i = 0; i < h->nar; i++) {
    if (h->arlen[i] > MAILOAUTH_MIME_AUTHRES_LEN) {
      memcpy(s + w, too_long, sizeof(too_long) - 1);
      w += sizeof(too_long) - 1;
    } else {
      for (k = 0; k < h->arlen[i]; k++) {
        unsigned char c = (unsigned char) h->ar[i][k];

        s[w++] = c < 0x20 || c == 0x7f ? ' ' : (char) c;
      }
    }
    s[w++] = '\n';
  }
  s[w] = '\0';
  return s;
}

static const char *mime_msg_field(struct mailoauth_mime *p,
    struct mime_frame *f, char *s) {
  const char *r = mime_own(p, f, mime_no_controls(s));

  return r ? r : "";
}

static void mime_parse_message_headers(struct mailoauth_mime *p,
    struct mime_frame *f, const struct mime_hdrs *h, const char *charset,
    int *bad) {
  struct mailoauth_mime_message *m = &f->msg;
  size_t k;

  m->subject = mime_msg_field(p, f, h->v[MIME_H_SUBJECT] ?
    mailoauth_mime_decode_header(h->v[MIME_H_SUBJECT],
      h->len[MIME_H_SUBJECT], charset, bad) : NULL);
  m->from = mime_msg_field(p, f, h->v[MIME_H_FROM] ?
    mailoauth_mime_decode_header(h->v[MIME_H_FROM], h->len[MIME_H_FROM],
      charset, bad) : NULL);
  m->from_addr = mime_msg_field(p, f, h->v[MIME_H_FROM] ?
    mime_from_addr(h->v[MIME_H_FROM], h->len[MIME_H_FROM]) : NULL);
  {
    char *rcpts = NULL;

    for (k = MIME_H_TO; k <= MIME_H_DELIVTO; k++) {
      if (h->v[k] != NULL) {
        mime_addr_list(h->v[k], h->len[k], &rcpts);
      }
    }
    m->recipients = mime_msg_field(p, f, rcpts);
  }
  {
    /* Not mime_msg_field(): the line breaks separate the values. */
    const char *ar = mime_own(p, f, mime_auth_results(h));

    m->auth_results = ar ? ar : "";
  }
  m->date = mime_msg_field(p, f, h->v[MIME_H_DATE] ?
    mailoauth_mime_decode_header(h->v[MIME_H_DATE], h->len[MIME_H_DATE],
      NULL, NULL) : NULL);

  if (h->v[MIME_H_MSGID] != NULL) {
    const char *v = h->v[MIME_H_MSGID];
    size_t n = h->len[MIME_H_MSGID];

    k = mime_skip_cfws(v, n, 0);
    v += k;
    n -= k;
    if (n > 0 && v[0] == '<') {
      const char *gt = memchr(v, '>', n);

      v++;
      n = gt ? (size_t) (gt - v) : n - 1;
    }
    m->message_id = mime_msg_field(p, f,
      mailoauth_mime_decode_header(v, n, NULL, NULL));
  } else {
    m->message_id = "";
  }
}

static int mime_parse_encoding(const char *v, size_t n, const char **name,
    struct mailoauth_mime *p, struct mime_frame *f) {
  size_t i = mime_skip_cfws(v, n, 0), len;
  const char *tok;
  char *lower;

  tok = v + i;
  len = mime_token(v, n, &i, "");
  if (len > MIME_MAX_TYPE_NAME) {
    len = MIME_MAX_TYPE_NAME;
  }
  lower = mime_lower_dup(tok, len);
  *name = mime_own(p, f, lower);
  if (*name == NULL) {
    *name = "";
    return MAILOAUTH_MIME_ENC_7BIT;
  }

  if (len == 0 || strcmp(*name, "7bit") == 0) {
    return MAILOAUTH_MIME_ENC_7BIT;
  }
  if (strcmp(*name, "8bit") == 0) {
    return MAILOAUTH_MIME_ENC_8BIT;
  }
  if (strcmp(*name, "binary") == 0) {
    return MAILOAUTH_MIME_ENC_BINARY;
  }
  if (strcmp(*name, "quoted-printable") == 0) {
    return MAILOAUTH_MIME_ENC_QP;
  }
  if (strcmp(*name, "base64") == 0) {
    return MAILOAUTH_MIME_ENC_BASE64;
  }
  return MAILOAUTH_MIME_ENC_UNKNOWN;
}

static char *mime_param(const char *v, size_t n, const char *name,
    const char *fallback, int *bad) {
  if (v == NULL) {
    return NULL;
  }
  return mailoauth_mime_header_param(v, n, name, fallback, bad);
}

static char *mime_section(struct mailoauth_mime *p, int multipart) {
  char buf[32];
  struct mailoauth_buf s = { NULL, 0, 0, 0, 0 };
  const char *base;

  if (p->nframes == 1) {
    base = p->base_section;
    if (multipart) {
      return mime_strndup(base, strlen(base));
    }
    strcpy(buf, "1");
  } else {
    struct mime_frame *parent = p->frames[p->nframes - 2];

    base = parent->info.section;
    snprintf(buf, sizeof(buf), "%u", parent->nchildren);
  }

  if ((base[0] != '\0' &&
       (mailoauth_buf_add(&s, base, strlen(base)) < 0 ||
        mailoauth_buf_addc(&s, '.') < 0)) ||
      mailoauth_buf_add(&s, buf, strlen(buf)) < 0) {
    mailoauth_buf_free(&s);
    return NULL;
  }
  return s.data;
}

/* Fills f->info (and f->msg for a message root) from the header block. */
static void mime_parse_headers(struct mailoauth_mime *p,
    struct mime_frame *f) {
  struct mailoauth_mime_part *info = &f->info;
  struct mime_hdrs h;
  struct mime_frame *parent = p->nframes >= 2 ?
    p->frames[p->nframes - 2] : NULL;
  const char *ct;
  char *cs, *name, *fname = NULL;
  int bad = 0, is_root = p->nframes == 1, no_boundary = 0;

  if (mailoauth_buf_reserve(&p->hbuf, 0) < 0) {
    mime_fail(p, MAILOAUTH_MIME_E_NOMEM);
    return;
  }
  mime_scan_headers(p->hbuf.data, p->hbuf.len, &h, is_root);
  ct = h.v[MIME_H_CTYPE];

  /* Content-Type: type "/" subtype *(";" parameter) */
  info->content_type = NULL;
  if (ct != NULL) {
    size_t n = h.len[MIME_H_CTYPE], i = mime_skip_cfws(ct, n, 0), tlen, slen;
    size_t tstart = i, sstart;

    tlen = mime_token(ct, n, &i, "/");
    i = mime_skip_cfws(ct, n, i);
    if (tlen > 0 && i < n && ct[i] == '/') {
      i = mime_skip_cfws(ct, n, i + 1);
      sstart = i;
      slen = mime_token(ct, n, &i, "/");
      if (slen > 0 && tlen <= MIME_MAX_TYPE_NAME &&
          slen <= MIME_MAX_TYPE_NAME) {
        char *t = malloc(tlen + slen + 2);

        if (t != NULL) {
          size_t k;

          memcpy(t, ct + tstart, tlen);
          t[tlen] = '/';
          memcpy(t + tlen + 1, ct + sstart, slen);
          t[tlen + slen + 1] = '\0';
          for (k = 0; t[k] != '\0'; k++) {
            t[k] = (char) tolower((unsigned char) t[k]);
          }
        }
        info->content_type = mime_own(p, f, t);
      }
    }
  }
  if (info->content_type == NULL) {
    info->content_type = parent && parent->digest ? "message/rfc822" :
      "text/plain";
  }

  cs = mime_param(ct, h.len[MIME_H_CTYPE], "charset", NULL, &bad);
  if (cs != NULL) {
    size_t k;

    for (k = 0; cs[k] != '\0'; k++) {
      cs[k] = (char) tolower((unsigned char) cs[k]);
    }
  }
  info->charset = mime_own(p, f, cs);
  if (info->charset == NULL) {
    info->charset = "";
  }
  cs = info->charset[0] != '\0' ? (char *) info->charset : NULL;

  /* Content-Disposition: type *(";" parameter) */
  info->disposition = MAILOAUTH_MIME_DISP_NONE;
  if (h.v[MIME_H_CDISP] != NULL) {
    const char *v = h.v[MIME_H_CDISP];
    size_t n = h.len[MIME_H_CDISP], i = mime_skip_cfws(v, n, 0), start = i;
    size_t len = mime_token(v, n, &i, "");
    char *size;

    if (len == 6 && strncasecmp(v + start, "inline", 6) == 0) {
      info->disposition = MAILOAUTH_MIME_DISP_INLINE;
    } else if (len > 0) {
      info->disposition = MAILOAUTH_MIME_DISP_ATTACHMENT;
    }

    fname = mime_param(v, n, "filename", cs, &bad);
    size = mime_param(v, n, "size", NULL, NULL);
    if (size != NULL) {
      char *end;
      unsigned long long sz;

      errno = 0;
      sz = strtoull(size, &end, 10);
      if (errno == 0 && end != size && *end == '\0' && size[0] != '-') {
        info->size_hint = sz;
      }
      free(size);
    }
  }

  name = mime_param(ct, h.len[MIME_H_CTYPE], "name", cs, &bad);
  if (fname == NULL || fname[0] == '\0') {
    free(fname);
    fname = name;
  } else {
    free(name);
  }
  info->filename = mime_own(p, f, fname);

  if (h.v[MIME_H_CID] != NULL) {
    const char *v = h.v[MIME_H_CID];
    size_t n = h.len[MIME_H_CID], i = mime_skip_cfws(v, n, 0);

    v += i;
    n -= i;
    if (n > 0 && v[0] == '<') {
      const char *gt = memchr(v, '>', n);

      v++;
      n = gt ? (size_t) (gt - v) : n - 1;
    }
    info->content_id = mime_own(p, f, mime_no_controls(
      mailoauth_mime_decode_header(v, n, NULL, NULL)));
  }

  info->encoding = MAILOAUTH_MIME_ENC_7BIT;
  info->encoding_name = "";
  if (h.v[MIME_H_CTE] != NULL) {
    info->encoding = mime_parse_encoding(h.v[MIME_H_CTE], h.len[MIME_H_CTE],
      &info->encoding_name, p, f);
  }

  f->kind = MIME_FK_LEAF;
  if (strncmp(info->content_type, "multipart/", 10) == 0) {
    struct mime_rawget g = { "boundary", NULL, 0 };

    if (ct != NULL) {
      if (mime_params_scan(ct, h.len[MIME_H_CTYPE], mime_rawget_cb, &g) < 0) {
        mime_fail(p, MAILOAUTH_MIME_E_NOMEM);
      }
    }
    if (g.value != NULL && g.len > 0 && g.len <= MAILOAUTH_MIME_MAX_BOUNDARY &&
        memchr(g.value, '\r', g.len) == NULL &&
        memchr(g.value, '\n', g.len) == NULL) {
      f->kind = MIME_FK_MULTIPART;
      f->boundary = g.value;
      f->blen = g.len;
      f->digest = strcmp(info->content_type, "multipart/digest") == 0;
    } else {
      free(g.value);
      no_boundary = 1;
    }
  }
  info->is_multipart = f->kind == MIME_FK_MULTIPART;
  info->is_message = strcmp(info->content_type, "message/rfc822") == 0 ||
    strcmp(info->content_type, "message/global") == 0;
  if (info->is_multipart) {
    /* A multipart has no body of its own to decode. */
    info->encoding = MAILOAUTH_MIME_ENC_7BIT;
  }

  if (is_root) {
    mime_parse_message_headers(p, f, &h, cs, &bad);
  }
  info->message = &p->frames[0]->msg;

  info->section = mime_own(p, f, mime_section(p, info->is_multipart));
  if (info->section == NULL) {
    info->section = "";
    mime_fail(p, MAILOAUTH_MIME_E_NOMEM);
  }

  /* Reported once the part is fully described. */
  if (no_boundary) {
    mime_warn(p, MAILOAUTH_MIME_W_NO_BOUNDARY, f);
  }
  if (bad) {
    mime_warn(p, MAILOAUTH_MIME_W_BAD_CHARSET, f);
  }
  if (info->encoding == MAILOAUTH_MIME_ENC_UNKNOWN) {
    mime_warn(p, MAILOAUTH_MIME_W_UNKNOWN_ENCODING, f);
  }
}

/* The header block of the innermost frame is complete. */
static void mime_headers_done(struct mailoauth_mime *p) {
  struct mime_frame *f = mime_top(p);
  struct mime_shared *sh = p->sh;
  int want = 0;

  mime_parse_headers(p, f);

  if (p->hbuf.size > MIME_HBUF_KEEP) {
    mailoauth_buf_free(&p->hbuf);
  }
  p->hbuf.len = 0;
  p->line_start = 0;
  p->lkind = MIME_LK_NEW;
  p->lname_len = 0;

  if (p->error != 0) {
    return;
  }

  if (f->info.depth > sh->lim.max_depth) {
    mime_fail(p, MAILOAUTH_MIME_E_TOO_DEEP);
    return;
  }
  if (sh->nparts >= sh->lim.max_parts) {
    mime_fail(p, MAILOAUTH_MIME_E_TOO_MANY_PARTS);
    return;
  }
  f->info.index = sh->nparts++;

  if (sh->cb.part_begin != NULL) {
    want = sh->cb.part_begin(&f->info, sh->cb.arg);
    if (want < 0) {
      mime_fail(p, MAILOAUTH_MIME_E_ABORTED);
      return;
    }
  }
  f->begun = 1;

  if (f->kind == MIME_FK_MULTIPART) {
    f->state = MIME_FS_PREAMBLE;
    return;
  }

  f->state = MIME_FS_BODY;
  f->want = (want & MAILOAUTH_MIME_BODY) != 0;

  if ((want & MAILOAUTH_MIME_DESCEND) && f->info.is_message) {
    f->child = mime_new(sh, f->info.depth + 1, p->in_message + 1,
      f->info.section);
    if (f->child == NULL) {
      mime_fail(p, MAILOAUTH_MIME_E_NOMEM);
      return;
    }
  }

  mime_b64_init(&f->b64);
}

/* Ends the innermost frame; cut: it lies inside a multipart that ends
 * without its own closing boundary.
 */
static void mime_end_frame(struct mailoauth_mime *p, int cut) {
  struct mime_frame *f = mime_top(p);
  struct mime_shared *sh = p->sh;
  unsigned int status;

  if (f->state == MIME_FS_HEADERS) {
    mime_headers_done(p);
    if (p->error != 0) {
      return;
    }
  }

  status = cut ? MAILOAUTH_MIME_ST_UNTERMINATED : 0;
  if (f->kind == MIME_FK_MULTIPART && f->state != MIME_FS_EPILOGUE) {
    status |= MAILOAUTH_MIME_ST_UNTERMINATED;
    mime_warn(p, MAILOAUTH_MIME_W_UNTERMINATED, f);
  }

  if (f->state == MIME_FS_BODY) {
    mime_body_final(p, f);
    if (p->error != 0) {
      return;
    }
    if (f->b64.bad) {
      f->status |= MAILOAUTH_MIME_ST_BAD_ENCODING;
      mime_warn(p, MAILOAUTH_MIME_W_BAD_BASE64, f);
    }
    if (f->child != NULL) {
      if (mailoauth_mime_finish(f->child) < 0) {
        p->error = f->child->error;
        return;
      }
      mailoauth_mime_destroy(f->child);
      f->child = NULL;
    }
  }

  status |= f->status;
  if (f->begun) {
    f->begun = 0;
    if (sh->cb.part_end != NULL &&
        sh->cb.part_end(&f->info, status, sh->cb.arg) < 0) {
      mime_pop(p);
      mime_fail(p, MAILOAUTH_MIME_E_ABORTED);
      return;
    }
  }
  mime_pop(p);
}

/* A boundary line of frame k (an index into frames). */
static void mime_boundary(struct mailoauth_mime *p, unsigned int k,
    int closing) {
  struct mime_frame *f;

  while (p->nframes > k + 1 && p->error == 0) {
    mime_end_frame(p, p->nframes > k + 2);
  }
  if (p->error != 0) {
    return;
  }

  f = p->frames[k];
  if (closing) {
    f->state = MIME_FS_EPILOGUE;
    return;
  }

  f->state = MIME_FS_INSIDE;
  f->nchildren++;
  mime_push(p);
}

/* ---- line engine ---- */

/* 0: lbuf cannot start a boundary line of this frame; 1: it still may;
 * 2: it is a complete boundary line; 3: a complete closing one.
 */
static int mime_boundary_match(const unsigned char *l, size_t n,
    const struct mime_frame *f) {
  size_t i, m = n < 2 + f->blen ? n : 2 + f->blen, pad;
  int closing = 0;

  for (i = 0; i < m; i++) {
    if (l[i] != (i < 2 ? '-' : (unsigned char) f->boundary[i - 2])) {
      return 0;
    }
  }
  if (n < 2 + f->blen) {
    return 1;
  }

  if (i < n && l[i] == '-') {
    if (i + 1 == n) {
      return 1;
    }
    if (l[i + 1] != '-') {
      return 0;
    }
    closing = 1;
    i += 2;
  }

  pad = i;
  while (i < n && mime_is_wsp(l[i])) {
    i++;
  }
  if (i - pad > MIME_MAX_PAD) {
    return 0;
  }
  if (i < n && !(l[i] == '\r' && i + 1 == n)) {
    return 0;
  }

  return closing ? 3 : 2;
}

/* Innermost frame whose boundary lbuf may start (complete == 0) or
 * completes (complete == 1); -1 if none.
 */
static int mime_match(struct mailoauth_mime *p, int complete, int *closing) {
  unsigned int i;

  for (i = p->nframes; i-- > 0;) {
    struct mime_frame *f = p->frames[i];
    int r;

    if (f->kind != MIME_FK_MULTIPART ||
        (f->state != MIME_FS_PREAMBLE && f->state != MIME_FS_INSIDE)) {
      continue;
    }

    r = mime_boundary_match(p->lbuf, p->llen, f);
    if (complete ? r >= 2 : r >= 1) {
      if (closing != NULL) {
        *closing = r == 3;
      }
      return (int) i;
    }
  }

  return -1;
}

static int mime_have_boundaries(struct mailoauth_mime *p) {
  unsigned int i;

  for (i = 0; i < p->nframes; i++) {
    if (p->frames[i]->kind == MIME_FK_MULTIPART &&
        (p->frames[i]->state == MIME_FS_PREAMBLE ||
         p->frames[i]->state == MIME_FS_INSIDE)) {
      return 1;
    }
  }
  return 0;
}

static void mime_emit_pending(struct mailoauth_mime *p) {
  struct mime_frame *f = mime_top(p);
  int eol = p->pending_eol;

  p->pending_eol = 0;
  if (eol != 0 && f != NULL && f->state == MIME_FS_BODY) {
    mime_body_eol(p, f, eol);
  }
}

static void mime_header_data(struct mailoauth_mime *p,
  const unsigned char *d, size_t n);
static void mime_header_eol(struct mailoauth_mime *p, int eol);

static void mime_line_data(struct mailoauth_mime *p, const unsigned char *d,
    size_t n) {
  struct mime_frame *f = mime_top(p);

  if (f == NULL || n == 0) {
    return;
  }

  if (f->state == MIME_FS_HEADERS) {
    mime_header_data(p, d, n);
  } else if (f->state == MIME_FS_BODY) {
    mime_body_data(p, f, d, n);
  }
}

static void mime_end_line(struct mailoauth_mime *p, int eol) {
  struct mime_frame *f = mime_top(p);

  p->bol = 1;
  if (f == NULL) {
    return;
  }
  if (f->state == MIME_FS_HEADERS) {
    mime_header_eol(p, eol);
  } else {
    p->pending_eol = eol;
  }
}

/* The held-back line start is not a boundary: it is ordinary line data. */
static void mime_not_boundary(struct mailoauth_mime *p) {
  unsigned char tmp[MIME_LBUF_SIZE];
  size_t n = p->llen;

  memcpy(tmp, p->lbuf, n);
  p->llen = 0;
  p->bol = 0;
  mime_emit_pending(p);
  if (n > 0 && p->error == 0) {
    mime_process(p, tmp, n);
  }
}

/* One byte at the start of a line; returns 1 if it was consumed, 0 if it
 * has to be looked at again in the new state.
 */
static size_t mime_bol_byte(struct mailoauth_mime *p, unsigned char c) {
  int k, closing = 0;

  if (p->llen == 0 && (c != '-' || !mime_have_boundaries(p))) {
    mime_not_boundary(p);
    return 0;
  }

  if (c == '\n') {
    k = mime_match(p, 1, &closing);
    if (k >= 0) {
      p->llen = 0;
      p->pending_eol = 0;
      mime_boundary(p, (unsigned int) k, closing);
      return 1;
    }
    mime_not_boundary(p);
    return 0;
  }

  p->lbuf[p->llen++] = c;
  if (p->llen == sizeof(p->lbuf) || mime_match(p, 0, NULL) < 0) {
    mime_not_boundary(p);
  }
  return 1;
}

/* Bytes in the middle of a line; returns how many were consumed. */
static size_t mime_midline(struct mailoauth_mime *p, const unsigned char *d,
    size_t n) {
  const unsigned char *lf, *cr;
  size_t lim, stop;

  if (d[0] == '\n') {
    mime_end_line(p, MIME_EOL_LF);
    return 1;
  }

  if (d[0] == '\r') {
    if (n == 1) {
      p->held_cr = 1;
      return 1;
    }
    if (d[1] == '\n') {
      mime_end_line(p, MIME_EOL_CRLF);
      return 2;
    }
    mime_line_data(p, d, 1);
    return 1;
  }

  lf = memchr(d, '\n', n);
  lim = lf ? (size_t) (lf - d) : n;
  cr = memchr(d, '\r', lim);
  stop = cr ? (size_t) (cr - d) : lim;
  mime_line_data(p, d, stop);
  return stop;
}

static void mime_process(struct mailoauth_mime *p, const unsigned char *d,
    size_t n) {
  size_t i = 0;

  while (i < n && p->error == 0) {
    if (p->held_cr) {
      p->held_cr = 0;
      if (d[i] == '\n') {
        mime_end_line(p, MIME_EOL_CRLF);
        i++;
      } else {
        mime_line_data(p, (const unsigned char *) "\r", 1);
      }
      continue;
    }

    if (p->bol) {
      i += mime_bol_byte(p, d[i]);
      continue;
    }

    i += mime_midline(p, d + i, n - i);
  }
}

/* ---- header block ---- */

static int mime_lkind_step(struct mailoauth_mime *p, unsigned char c) {
  switch (p->lkind) {
    case MIME_LK_NEW:
      if (mime_is_wsp(c)) {
        return MIME_LK_CONT;
      }
      if (c > ' ' && c < 0x7f && c != ':') {
        p->lname[0] = (char) c;
        p->lname_len = 1;
        return MIME_LK_NAME;
      }
      return MIME_LK_BAD;

    case MIME_LK_NAME:
      if (c == ':') {
        return MIME_LK_HEADER;
      }
      if (mime_is_wsp(c)) {
        /* The mbox separator some .eml files still start with. */
        if (p->top_level && p->nframes == 1 && p->line_start == 0 &&
            p->lname_len == 4 && memcmp(p->lname, "From", 4) == 0) {
          return MIME_LK_FROM;
        }
        return MIME_LK_NAME_WS;
      }
      if (c > ' ' && c < 0x7f) {
        if (p->lname_len < sizeof(p->lname)) {
          p->lname[p->lname_len] = (char) c;
        }
        p->lname_len++;
        return MIME_LK_NAME;
      }
      return MIME_LK_BAD;

    case MIME_LK_NAME_WS:
      if (c == ':') {
        return MIME_LK_HEADER;
      }
      return mime_is_wsp(c) ? MIME_LK_NAME_WS : MIME_LK_BAD;

    default:
      return p->lkind;
  }
}

/* A line that is no header ends the block and is the body's first line
 * (what Python's email package and most readers do).  It is parsed again
 * from its start, so that it may turn out to be a boundary of the multipart
 * the headers just declared.
 */
static void mime_header_bad(struct mailoauth_mime *p, const unsigned char *d,
    size_t n, int eol) {
  size_t len = p->hbuf.len - p->line_start;
  char *line = NULL;
  struct mime_frame *f = mime_top(p);

  if (len > 0) {
    line = mime_strndup(p->hbuf.data + p->line_start, len);
    if (line == NULL) {
      mime_fail(p, MAILOAUTH_MIME_E_NOMEM);
      return;
    }
  }
  p->hbuf.len = p->line_start;

  mime_headers_done(p);
  if (p->error == 0) {
    mime_warn(p, MAILOAUTH_MIME_W_BAD_HEADER_LINE, f);
    p->bol = 1;
    p->llen = 0;
    p->pending_eol = 0;
    if (len > 0) {
      mime_process(p, (unsigned char *) line, len);
    }
    if (n > 0 && p->error == 0) {
      mime_process(p, d, n);
    }
    if (eol != 0 && p->error == 0) {
      mime_process(p, (const unsigned char *) (eol == MIME_EOL_CRLF ?
        "\r\n" : "\n"), eol == MIME_EOL_CRLF ? 2 : 1);
    }
  }
  free(line);
}

static void mime_header_data(struct mailoauth_mime *p,
    const unsigned char *d, size_t n) {
  size_t k;

  for (k = 0; k < n && p->lkind < MIME_LK_HEADER; k++) {
    p->lkind = mime_lkind_step(p, d[k]);
  }

  if (p->lkind == MIME_LK_BAD) {
    /* The bytes before the one that decided count against the cap as if
     * buffered: arriving in smaller chunks, they would have been.
     */
    if (p->hbuf.len + (k - 1) > p->sh->lim.max_header_bytes) {
      mime_fail(p, MAILOAUTH_MIME_E_HEADER_TOO_BIG);
      return;
    }
    mime_header_bad(p, d, n, 0);
    return;
  }

  if (p->hbuf.len + n > p->sh->lim.max_header_bytes ||
      p->hbuf.len + n < n) {
    mime_fail(p, MAILOAUTH_MIME_E_HEADER_TOO_BIG);
    return;
  }
  if (mailoauth_buf_add(&p->hbuf, d, n) < 0) {
    mime_fail(p, MAILOAUTH_MIME_E_NOMEM);
  }
}

static void mime_header_eol(struct mailoauth_mime *p, int eol) {
  if (p->hbuf.len == p->line_start && p->lkind == MIME_LK_NEW) {
    mime_headers_done(p);
    return;
  }

  if (p->lkind == MIME_LK_NAME || p->lkind == MIME_LK_NAME_WS) {
    mime_header_bad(p, NULL, 0, eol);
    return;
  }

  if (p->lkind == MIME_LK_FROM) {
    p->hbuf.len = p->line_start;
  } else {
    if (p->hbuf.len + 1 > p->sh->lim.max_header_bytes) {
      mime_fail(p, MAILOAUTH_MIME_E_HEADER_TOO_BIG);
      return;
    }
    if (mailoauth_buf_addc(&p->hbuf, '\n') < 0) {
      mime_fail(p, MAILOAUTH_MIME_E_NOMEM);
      return;
    }
  }

  p->line_start = p->hbuf.len;
  p->lkind = MIME_LK_NEW;
  p->lname_len = 0;
}

/* ---- life cycle ---- */

void mailoauth_mime_limits_init(struct mailoauth_mime_limits *l) {
  l->max_header_bytes = MAILOAUTH_MIME_DEFAULT_MAX_HEADER;
  l->max_parts = MAILOAUTH_MIME_DEFAULT_MAX_PARTS;
  l->max_depth = MAILOAUTH_MIME_DEFAULT_MAX_DEPTH;
  l->max_part_bytes = MAILOAUTH_MIME_DEFAULT_MAX_PART_BYTES;
  l->max_total_bytes = MAILOAUTH_MIME_DEFAULT_MAX_TOTAL_BYTES;
}

static struct mailoauth_mime *mime_new(struct mime_shared *sh,
    unsigned int base_depth, unsigned int in_message, const char *section) {
  struct mailoauth_mime *p;

  p = calloc(1, sizeof(*p));
  if (p == NULL) {
    errno = ENOMEM;
    return NULL;
  }

  p->sh = sh;
  p->base_depth = base_depth;
  p->in_message = in_message;
  p->bol = 1;
  p->base_section = mime_strndup(section, strlen(section));
  if (p->base_section == NULL || mime_push(p) < 0) {
    free(p->base_section);
    free(p->frames);
    free(p);
    errno = ENOMEM;
    return NULL;
  }

  return p;
}

struct mailoauth_mime *mailoauth_mime_create(
    const struct mailoauth_mime_limits *limits,
    const struct mailoauth_mime_callbacks *callbacks) {
  struct mime_shared *sh;
  struct mailoauth_mime *p;

  sh = calloc(1, sizeof(*sh));
  if (sh == NULL) {
    errno = ENOMEM;
    return NULL;
  }

  mailoauth_mime_limits_init(&sh->lim);
  if (limits != NULL) {
    if (limits->max_header_bytes) {
      sh->lim.max_header_bytes = limits->max_header_bytes;
    }
    if (limits->max_parts) {
      sh->lim.max_parts = limits->max_parts;
    }
    if (limits->max_depth) {
      sh->lim.max_depth = limits->max_depth;
    }
    /* Each attached message descended into nests a parser call. */
    if (sh->lim.max_depth > MAILOAUTH_MIME_MAX_DEPTH_LIMIT) {
      sh->lim.max_depth = MAILOAUTH_MIME_MAX_DEPTH_LIMIT;
    }
    if (limits->max_part_bytes) {
      sh->lim.max_part_bytes = limits->max_part_bytes;
    }
    if (limits->max_total_bytes) {
      sh->lim.max_total_bytes = limits->max_total_bytes;
    }
  }
  if (callbacks != NULL) {
    sh->cb = *callbacks;
  }

  p = mime_new(sh, 0, 0, "");
  if (p == NULL) {
    free(sh);
    return NULL;
  }
  p->owns_shared = 1;
  p->top_level = 1;
  return p;
}

/* Ends every open part after a fatal error, innermost first. */
static void mime_unwind(struct mailoauth_mime *p) {
  struct mime_shared *sh = p->sh;
  unsigned int status;

  switch (p->error) {
    case MAILOAUTH_MIME_E_ABORTED:
    case MAILOAUTH_MIME_E_NOMEM:
      status = MAILOAUTH_MIME_ST_ABORTED;
      break;
    default:
      status = MAILOAUTH_MIME_ST_TRUNCATED;
      break;
  }

  while (p->nframes > 0) {
    struct mime_frame *f = mime_top(p);

    if (f->child != NULL) {
      if (f->child->error == 0) {
        f->child->error = p->error;
      }
      mime_unwind(f->child);
    }
    if (f->begun) {
      f->begun = 0;
      if (sh->cb.part_end != NULL) {
        (void) sh->cb.part_end(&f->info, f->status | status, sh->cb.arg);
      }
    }
    mime_pop(p);
  }
}

int mailoauth_mime_feed(struct mailoauth_mime *p, const void *data,
    size_t len) {
  if (p == NULL || p->finished) {
    errno = EINVAL;
    return -1;
  }

  if (p->error == 0 && len > 0) {
    mime_process(p, data, len);
  }

  if (p->error != 0) {
    mime_unwind(p);
    errno = mime_errno(p->error);
    return -1;
  }
  return 0;
}

int mailoauth_mime_finish(struct mailoauth_mime *p) {
  if (p == NULL || p->finished) {
    errno = EINVAL;
    return -1;
  }

  /* Whatever is held back gets its final reading: a boundary line may end
   * the input without a line break.  Re-reading can hold bytes back again
   * (a header line becoming body), hence the loop.
   */
  while (p->error == 0 && (p->held_cr || p->llen > 0)) {
    if (p->held_cr) {
      /* A CR ending the input is a line break cut short; in a header
       * block it must not pass for a body line.
       */
      p->held_cr = 0;
      if (mime_top(p) != NULL && mime_top(p)->state == MIME_FS_HEADERS) {
        mime_end_line(p, MIME_EOL_CRLF);
      } else {
        mime_line_data(p, (const unsigned char *) "\r", 1);
      }
      continue;
    }
    if (p->bol) {
      int closing = 0, k = mime_match(p, 1, &closing);

      if (k >= 0) {
        p->llen = 0;
        p->pending_eol = 0;
        mime_boundary(p, (unsigned int) k, closing);
        continue;
      }
    }
    mime_not_boundary(p);
  }

  if (p->error == 0) {
    mime_emit_pending(p);
  }

  /* An unterminated last header line. */
  if (p->error == 0 && p->nframes > 0 &&
      mime_top(p)->state == MIME_FS_HEADERS &&
      (p->hbuf.len > p->line_start || p->lkind != MIME_LK_NEW)) {
    mime_header_eol(p, 0);
    while (p->error == 0 && (p->held_cr || p->llen > 0)) {
      mime_not_boundary(p);
    }
    if (p->error == 0) {
      mime_emit_pending(p);
    }
  }

  while (p->error == 0 && p->nframes > 0) {
    mime_end_frame(p, p->nframes > 1);
  }

  p->finished = 1;
  if (p->error != 0) {
    mime_unwind(p);
    errno = mime_errno(p->error);
    return -1;
  }
  return 0;
}

int mailoauth_mime_error(const struct mailoauth_mime *p) {
  return p ? p->error : MAILOAUTH_MIME_OK;
}

void mailoauth_mime_destroy(struct mailoauth_mime *p) {
  if (p == NULL) {
    return;
  }

  while (p->nframes > 0) {
    mime_pop(p);
  }
  free(p->frames);
  mailoauth_buf_free(&p->hbuf);
  free(p->base_section);
  if (p->owns_shared) {
    free(p->sh);
  }
  free(p);
}
