/*
 * mod_mailoauth - names for files deposited from mail
 */

#include "mailoauth/buf.h"
#include "mailoauth/names.h"
#include "mailoauth/trace.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const char *trace_channel = "mailoauth.names";

/* An extension longer than this is probably no extension ("Report. Final
 * figures for the year") and is not worth keeping when cutting.
 */
#define NAMES_MAX_EXT           32

/* ------------------------------------------------------------------------
 * UTF-8, strictly: overlong forms, surrogates and values beyond U+10FFFF
 * are invalid, so they cannot smuggle a '/' or '.' past the checks.
 */

/* Decodes one character at s (n > 0 bytes); returns its length and sets
 * *cp, or returns 1 with *cp = -1 for an invalid byte.
 */
static size_t names_utf8_next(const unsigned char *s, size_t n, long *cp) {
  unsigned char c = s[0];
  size_t len, i;
  long v, min;

  if (c < 0x80) {
    *cp = c;
    return 1;
  }

  if (c >= 0xc2 && c <= 0xdf) {
    len = 2;
    v = c & 0x1f;
    min = 0x80;
  } else if (c >= 0xe0 && c <= 0xef) {
    len = 3;
    v = c & 0x0f;
    min = 0x800;
  } else if (c >= 0xf0 && c <= 0xf4) {
    len = 4;
    v = c & 0x07;
    min = 0x10000;
  } else {
    *cp = -1;
    return 1;
  }

  if (n < len) {
    *cp = -1;
    return 1;
  }

  for (i = 1; i < len; i++) {
    if ((s[i] & 0xc0) != 0x80) {
      *cp = -1;
      return 1;
    }
    v = (v << 6) | (s[i] & 0x3f);
  }

  if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff)) {
    *cp = -1;
    return 1;
  }

  *cp = v;
  return len;
}

static size_t names_utf8_put(long cp, char *out) {
  if (cp < 0x80) {
    out[0] = (char) cp;
    return 1;
  }
  if (cp < 0x800) {
    out[0] = (char) (0xc0 | (cp >> 6));
    out[1] = (char) (0x80 | (cp & 0x3f));
    return 2;
  }
  if (cp < 0x10000) {
    out[0] = (char) (0xe0 | (cp >> 12));
    out[1] = (char) (0x80 | ((cp >> 6) & 0x3f));
    out[2] = (char) (0x80 | (cp & 0x3f));
    return 3;
  }
  out[0] = (char) (0xf0 | (cp >> 18));
  out[1] = (char) (0x80 | ((cp >> 12) & 0x3f));
  out[2] = (char) (0x80 | ((cp >> 6) & 0x3f));
  out[3] = (char) (0x80 | (cp & 0x3f));
  return 4;
}

/* Largest length <= max that does not split a character of valid UTF-8. */
static size_t names_utf8_floor(const char *s, size_t len, size_t max) {
  if (len <= max) {
    return len;
  }
  while (max > 0 && ((unsigned char) s[max] & 0xc0) == 0x80) {
    max--;
  }
  return max;
}

/* Characters that must not reach a file name. */
static int names_unsafe(long cp) {
  switch (cp) {
    /* Separators, and what Windows refuses in a name. */
    case '/': case '\\': case '<': case '>': case ':': case '"': case '|':
    case '?': case '*':
    /* Bidirectional controls: "invoice\u202Efdp.exe" shows as
     * "invoiceexe.pdf".
     */
    case 0x061c: case 0x200e: case 0x200f: case 0x202a: case 0x202b:
    case 0x202c: case 0x202d: case 0x202e: case 0x2066: case 0x2067:
    case 0x2068: case 0x2069:
    /* Line and paragraph separators, the byte order mark. */
    case 0x2028: case 0x2029: case 0xfeff:
    /* Slash look-alikes that Windows' best-fit conversion turns into real
     * separators on a client using the ANSI file APIs.
     */
    case 0x2044: case 0x2215: case 0x29f5: case 0x29f8: case 0x29f9:
    case 0xfe68: case 0xff0f: case 0xff3c:
    case 0xfffe: case 0xffff:
      return 1;
    default:
      break;
  }

  /* C0, DEL, C1 */
  return cp < 0x20 || (cp >= 0x7f && cp <= 0x9f);
}

/* Copies in to out (out holds len + 1), unsafe or invalid characters
 * replaced by '_'.  Returns the length written.
 */
static size_t names_clean(const char *in, size_t len, char *out) {
  const unsigned char *s = (const unsigned char *) in;
  size_t i = 0, o = 0;

  while (i < len) {
    long cp;
    size_t n = names_utf8_next(s + i, len - i, &cp);

    if (cp < 0 || names_unsafe(cp)) {
      out[o++] = '_';
    } else {
      o += names_utf8_put(cp, out + o);
    }
    i += n;
  }

  out[o] = '\0';
  return o;
}

/* Device names Windows resolves in any directory, with any extension. */
static int names_reserved(const char *s, size_t len) {
  static const char *const plain[] = {
    "CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$", NULL
  };
  const char *dot = memchr(s, '.', len);
  size_t stem = dot ? (size_t) (dot - s) : len, i;

  while (stem > 0 && s[stem - 1] == ' ') {
    stem--;
  }

  for (i = 0; plain[i] != NULL; i++) {
    if (strlen(plain[i]) == stem && strncasecmp(s, plain[i], stem) == 0) {
      return 1;
    }
  }

  /* COM0-9, LPT0-9, and the superscript digits Windows also accepts. */
  if ((stem == 4 || stem == 5) &&
      (strncasecmp(s, "COM", 3) == 0 || strncasecmp(s, "LPT", 3) == 0)) {
    if (stem == 4 && s[3] >= '0' && s[3] <= '9') {
      return 1;
    }
    if (stem == 5 && (unsigned char) s[3] == 0xc2 &&
        ((unsigned char) s[4] == 0xb9 || (unsigned char) s[4] == 0xb2 ||
         (unsigned char) s[4] == 0xb3)) {
      return 1;
    }
  }

  return 0;
}

/* Offset of the extension's dot, or len when there is none worth keeping. */
static size_t names_ext_pos(const char *s, size_t len) {
  const char *dot = NULL;
  size_t i;

  for (i = len; i-- > 1;) {
    if (s[i] == '.') {
      dot = s + i;
      break;
    }
  }

  if (dot == NULL || len - (size_t) (dot - s) > NAMES_MAX_EXT ||
      len - (size_t) (dot - s) < 2) {
    return len;
  }
  return (size_t) (dot - s);
}

static size_t names_trim_tail(const char *s, size_t len) {
  while (len > 0 && (s[len - 1] == '.' || s[len - 1] == ' ')) {
    len--;
  }
  return len;
}

/* The part of sanitizing shared by file names and template components:
 * buf (cleaned UTF-8 of length len, room for two more bytes) is trimmed,
 * de-reserved and cut in place.  Returns the length.
 */
static size_t names_finish(char *buf, size_t len) {
  size_t start = 0, ext;

  while (start < len && (buf[start] == '.' || buf[start] == '-' ||
      buf[start] == ' ')) {
    start++;
  }
  memmove(buf, buf + start, len - start);
  len = names_trim_tail(buf, len - start);

  if (len > 0 && names_reserved(buf, len)) {
    memmove(buf + 1, buf, len);
    buf[0] = '_';
    len++;
  }

  if (len > MAILOAUTH_NAMES_MAX) {
    ext = names_ext_pos(buf, len);
    if (ext < len) {
      size_t extlen = len - ext;
      size_t stem = names_utf8_floor(buf, ext, MAILOAUTH_NAMES_MAX - extlen);

      stem = names_trim_tail(buf, stem);
      memmove(buf + stem, buf + ext, extlen);
      len = stem + extlen;
    } else {
      len = names_trim_tail(buf, names_utf8_floor(buf, len,
        MAILOAUTH_NAMES_MAX));
    }
  }

  buf[len] = '\0';
  return len;
}

static const struct {
  const char *type;
  const char *ext;
} names_types[] = {
  { "application/pdf", ".pdf" },
  { "application/zip", ".zip" },
  { "application/x-zip-compressed", ".zip" },
  { "application/gzip", ".gz" },
  { "application/x-gzip", ".gz" },
  { "application/x-7z-compressed", ".7z" },
  { "application/json", ".json" },
  { "application/xml", ".xml" },
  { "text/xml", ".xml" },
  { "text/plain", ".txt" },
  { "text/csv", ".csv" },
  { "text/html", ".html" },
  { "text/calendar", ".ics" },
  { "text/rtf", ".rtf" },
  { "application/rtf", ".rtf" },
  { "application/msword", ".doc" },
  { "application/vnd.ms-excel", ".xls" },
  { "application/vnd.ms-powerpoint", ".ppt" },
  { "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ".docx" },
  { "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    ".xlsx" },
  { "application/vnd.openxmlformats-officedocument.presentationml."
    "presentation", ".pptx" },
  { "application/vnd.oasis.opendocument.text", ".odt" },
  { "application/vnd.oasis.opendocument.spreadsheet", ".ods" },
  { "application/edi-x12", ".x12" },
  { "application/edifact", ".edi" },
  { "application/ms-tnef", ".dat" },
  { "application/vnd.ms-tnef", ".dat" },
  { "application/pkcs7-signature", ".p7s" },
  { "application/x-pkcs7-signature", ".p7s" },
  { "application/pkcs7-mime", ".p7m" },
  { "application/x-pkcs7-mime", ".p7m" },
  { "message/rfc822", ".eml" },
  { "message/global", ".eml" },
  { "image/jpeg", ".jpg" },
  { "image/png", ".png" },
  { "image/gif", ".gif" },
  { "image/tiff", ".tif" },
  { "image/bmp", ".bmp" },
  { "image/webp", ".webp" },
  { "image/svg+xml", ".svg" },
  { "audio/mpeg", ".mp3" },
  { "video/mp4", ".mp4" },
  { NULL, NULL }
};

const char *mailoauth_names_ext_for_type(const char *content_type) {
  size_t i;

  if (content_type == NULL) {
    return NULL;
  }

  for (i = 0; names_types[i].type != NULL; i++) {
    if (strcasecmp(content_type, names_types[i].type) == 0) {
      return names_types[i].ext;
    }
  }
  return NULL;
}

/* Sanitizes one component into out (MAILOAUTH_NAMES_MAX + 1 bytes);
 * basename: keep only what follows the last separator.  An empty result is
 * left empty.
 */
static ssize_t names_component(const char *name, size_t len, int basename,
    char *out) {
  size_t i, n;
  char *buf;

  if (len > SIZE_MAX - 8) {
    errno = EINVAL;
    return -1;
  }

  if (basename) {
    for (i = len; i-- > 0;) {
      if (name[i] == '/' || name[i] == '\\') {
        name += i + 1;
        len -= i + 1;
        break;
      }
    }
  }

  /* Cleaning never lengthens: a replacement is one byte for at least one. */
  buf = malloc(len + 8);
  if (buf == NULL) {
    errno = ENOMEM;
    return -1;
  }
  n = names_clean(name, len, buf);

  n = names_finish(buf, n);
  memcpy(out, buf, n + 1);
  free(buf);
  return (ssize_t) n;
}

ssize_t mailoauth_names_sanitize(const char *name, size_t len,
    const char *content_type, char *out, size_t outsz) {
  ssize_t n;

  if (out == NULL || outsz < MAILOAUTH_NAMES_MAX + 1) {
    errno = EINVAL;
    return -1;
  }

  if (name == NULL) {
    len = 0;
    name = "";
  }

  n = names_component(name, len, 1, out);
  if (n < 0) {
    return -1;
  }

  if (n == 0) {
    const char *ext = mailoauth_names_ext_for_type(content_type);

    n = snprintf(out, outsz, "%s%s", MAILOAUTH_NAMES_FALLBACK,
      ext ? ext : "");
  }

  if ((size_t) n != len || memcmp(out, name, len) != 0) {
    mailoauth_trace(trace_channel, 9, "name of %lu bytes sanitized to '%s'",
      (unsigned long) len, out);
  }

  return n;
}

/* ------------------------------------------------------------------------
 * Templates.
 */

/* A field value: no character in it may act as a separator. */
static int names_add_field(struct mailoauth_buf *b, const char *v) {
  size_t len = v ? strlen(v) : 0;
  char *tmp;
  size_t n;
  int rc;

  if (len == 0) {
    return 0;
  }

  /* Longer fields cannot fit in a component anyway. */
  if (len > 4 * MAILOAUTH_NAMES_MAX) {
    len = 4 * MAILOAUTH_NAMES_MAX;
  }

  tmp = malloc(len + 1);
  if (tmp == NULL) {
    errno = ENOMEM;
    return -1;
  }
  n = names_clean(v, len, tmp);
  rc = mailoauth_buf_add(b, tmp, n);
  free(tmp);
  return rc;
}

static const char *const names_fields[] = {
  "sender", "subject", "uid", "filename", "basename", "ext", "counter", NULL
};

static int names_is(const char *name, size_t len, const char *field) {
  return strlen(field) == len && strncmp(field, name, len) == 0;
}

static int names_field_known(const char *name, size_t len) {
  size_t i;

  for (i = 0; names_fields[i] != NULL; i++) {
    if (names_is(name, len, names_fields[i])) {
      return 1;
    }
  }
  return 0;
}

/* Length of the directive at t ('%' included), 0 if invalid. */
static size_t names_directive(const char *t) {
  const char *end;

  if (t[1] == '{') {
    end = strchr(t + 2, '}');
    if (end == NULL || !names_field_known(t + 2, (size_t) (end - t - 2))) {
      return 0;
    }
    return (size_t) (end - t) + 1;
  }

  return t[1] != '\0' && strchr("%YmdHMSyj", t[1]) != NULL ? 2 : 0;
}

int mailoauth_names_template_check(const char *tmpl) {
  const char *t = tmpl, *comp = tmpl;
  int literal_only = 1;

  if (tmpl == NULL || tmpl[0] == '\0' || tmpl[0] == '/') {
    errno = EINVAL;
    return -1;
  }

  for (;;) {
    if (*t == '/' || *t == '\0') {
      size_t clen = (size_t) (t - comp);

      if (clen == 0 || (literal_only &&
          ((clen == 1 && comp[0] == '.') ||
           (clen == 2 && comp[0] == '.' && comp[1] == '.')))) {
        errno = EINVAL;
        return -1;
      }
      if (*t == '\0') {
        return 0;
      }
      comp = ++t;
      literal_only = 1;
      continue;
    }

    if (*t == '\\') {
      errno = EINVAL;
      return -1;
    }

    if (*t == '%') {
      size_t n = names_directive(t);

      if (n == 0) {
        errno = EINVAL;
        return -1;
      }
      literal_only = 0;
      t += n;
      continue;
    }

    t++;
  }
}

struct names_ctx {
  const struct mailoauth_names_fields *f;
  char filename[MAILOAUTH_NAMES_MAX + 1];
  size_t ext;                   /* dot of filename's extension */
};

static int names_expand_directive(struct names_ctx *c, const char *t,
    size_t n, struct mailoauth_buf *b) {
  const struct tm *tm = c->f->tm;
  char num[32];

  if (n == 2) {
    int v = 0, width = 2;

    switch (t[1]) {
      case '%':
        return mailoauth_buf_add(b, "%", 1);
      case 'Y':
        v = tm ? tm->tm_year + 1900 : 0;
        width = 4;
        break;
      case 'y':
        v = tm ? (tm->tm_year + 1900) % 100 : 0;
        break;
      case 'm':
        v = tm ? tm->tm_mon + 1 : 0;
        break;
      case 'd':
        v = tm ? tm->tm_mday : 0;
        break;
      case 'H':
        v = tm ? tm->tm_hour : 0;
        break;
      case 'M':
        v = tm ? tm->tm_min : 0;
        break;
      case 'S':
        v = tm ? tm->tm_sec : 0;
        break;
      case 'j':
        v = tm ? tm->tm_yday + 1 : 0;
        width = 3;
        break;
    }
    snprintf(num, sizeof(num), "%0*d", width, v);
    return names_add_field(b, num);
  }

  t += 2;
  n -= 3;
  if (names_is(t, n, "sender")) {
    return names_add_field(b, c->f->sender);
  }
  if (names_is(t, n, "subject")) {
    return names_add_field(b, c->f->subject);
  }
  if (names_is(t, n, "uid")) {
    return names_add_field(b, c->f->uid);
  }
  if (names_is(t, n, "filename")) {
    return mailoauth_buf_add(b, c->filename, strlen(c->filename));
  }
  if (names_is(t, n, "basename")) {
    return mailoauth_buf_add(b, c->filename, c->ext);
  }
  if (names_is(t, n, "ext")) {
    size_t len = strlen(c->filename);

    return c->ext < len ?
      mailoauth_buf_add(b, c->filename + c->ext + 1, len - c->ext - 1) : 0;
  }
  snprintf(num, sizeof(num), "%lu", c->f->counter);
  return mailoauth_buf_add(b, num, strlen(num));
}

/* Appends the sanitized component to out. */
static int names_put_component(struct names_ctx *c, const char *comp,
    size_t len, int last, char *out, size_t outsz, size_t *olen) {
  char name[MAILOAUTH_NAMES_MAX + 1];
  ssize_t n;

  n = names_component(comp, len, 0, name);
  if (n < 0) {
    return -1;
  }
  if (n == 0) {
    const char *ext = last ?
      mailoauth_names_ext_for_type(c->f->content_type) : NULL;

    n = snprintf(name, sizeof(name), "%s%s",
      last ? MAILOAUTH_NAMES_FALLBACK : "_", ext ? ext : "");
  }

  if (*olen + (*olen > 0) + (size_t) n + 1 > outsz) {
    errno = ENAMETOOLONG;
    return -1;
  }
  if (*olen > 0) {
    out[(*olen)++] = '/';
  }
  memcpy(out + *olen, name, (size_t) n + 1);
  *olen += (size_t) n;
  return 0;
}

ssize_t mailoauth_names_expand(const char *tmpl,
    const struct mailoauth_names_fields *fields, char *out, size_t outsz) {
  struct names_ctx ctx;
  struct mailoauth_buf comp = { NULL, 0, 0, 0, 0 };
  const char *t;
  size_t olen = 0;
  ssize_t n;
  int rc = 0;

  if (mailoauth_names_template_check(tmpl) < 0 || fields == NULL ||
      out == NULL || outsz == 0) {
    errno = EINVAL;
    return -1;
  }

  ctx.f = fields;
  n = mailoauth_names_sanitize(fields->filename,
    fields->filename ? strlen(fields->filename) : 0, fields->content_type,
    ctx.filename, sizeof(ctx.filename));
  if (n < 0) {
    return -1;
  }
  ctx.ext = names_ext_pos(ctx.filename, (size_t) n);

  if (mailoauth_buf_add(&comp, "", 0) < 0) {
    return -1;
  }

  for (t = tmpl; rc == 0; ) {
    if (*t == '/' || *t == '\0') {
      rc = names_put_component(&ctx, comp.data, comp.len, *t == '\0', out,
        outsz, &olen);
      comp.len = 0;
      if (*t == '\0') {
        break;
      }
      t++;

    } else if (*t == '%') {
      size_t len = names_directive(t);

      rc = names_expand_directive(&ctx, t, len, &comp);
      t += len;

    } else {
      rc = mailoauth_buf_add(&comp, t, 1);
      t++;
    }
  }

  mailoauth_buf_free(&comp);
  if (rc < 0) {
    return -1;
  }

  out[olen] = '\0';
  return (ssize_t) olen;
}

/* ------------------------------------------------------------------------
 * Collisions.
 */

ssize_t mailoauth_names_unique(const char *name,
    mailoauth_names_exists_fn exists, void *arg, char *out, size_t outsz) {
  const char *comp, *slash;
  size_t len, dirlen, clen, ext, extlen;
  unsigned int i;
  int rc;

  if (name == NULL || exists == NULL || out == NULL) {
    errno = EINVAL;
    return -1;
  }

  len = strlen(name);
  if (len + 1 > outsz) {
    errno = ENAMETOOLONG;
    return -1;
  }

  rc = exists(name, arg);
  if (rc < 0) {
    return -1;
  }
  if (rc == 0) {
    memcpy(out, name, len + 1);
    return (ssize_t) len;
  }

  slash = strrchr(name, '/');
  comp = slash ? slash + 1 : name;
  dirlen = (size_t) (comp - name);
  clen = len - dirlen;
  ext = names_ext_pos(comp, clen);
  extlen = clen - ext;

  for (i = 1; i <= MAILOAUTH_NAMES_MAX_TRIES; i++) {
    char suffix[24];
    size_t slen, stem, total;

    slen = (size_t) snprintf(suffix, sizeof(suffix), " (%u)", i);
    stem = ext;
    if (stem + slen + extlen > MAILOAUTH_NAMES_MAX) {
      stem = names_utf8_floor(comp, ext, MAILOAUTH_NAMES_MAX > slen + extlen ?
        MAILOAUTH_NAMES_MAX - slen - extlen : 0);
    }

    total = dirlen + stem + slen + extlen;
    if (total + 1 > outsz) {
      errno = ENAMETOOLONG;
      return -1;
    }

    memcpy(out, name, dirlen + stem);
    memcpy(out + dirlen + stem, suffix, slen);
    memcpy(out + dirlen + stem + slen, comp + ext, extlen);
    out[total] = '\0';

    rc = exists(out, arg);
    if (rc < 0) {
      return -1;
    }
    if (rc == 0) {
      return (ssize_t) total;
    }
  }

  errno = EEXIST;
  return -1;
}
