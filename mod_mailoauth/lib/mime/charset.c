/*
 * mod_mailoauth - charsets: header and name text to UTF-8
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
int mailoauth_mime_guess_to_utf8(const char *fallback, const char *in,
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

int mailoauth_mime_convert(const char *charset, const char *in, size_t len,
    struct mailoauth_buf *out, int *bad) {
  char norm[64];
  const char *cs;
  int rc;

  cs = mime_charset_resolve(charset, norm, sizeof(norm));
  if (cs == NULL) {
    return mailoauth_mime_guess_to_utf8(NULL, in, len, out, bad);
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
    return mailoauth_mime_guess_to_utf8(NULL, in, len, out, bad);
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
char *mailoauth_mime_buf_field(struct mailoauth_buf *out, int filled) {
  char *res = NULL;

  if (filled < 0 || mailoauth_buf_reserve(out, 0) < 0) {
    errno = ENOMEM;
  } else {
    res = mailoauth_mime_field_str(out->data, out->len);
  }
  mailoauth_buf_free(out);
  return res;
}

char *mailoauth_mime_to_utf8(const char *charset, const char *in, size_t len,
    int *bad) {
  struct mailoauth_buf out = { NULL, 0, 0, 0, 0 };
  int dummy = 0;

  return mailoauth_mime_buf_field(&out, mailoauth_mime_convert(charset, in, len, &out,
    bad ? bad : &dummy));
}

