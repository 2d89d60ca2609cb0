/*
 * mod_mailoauth - MIME header values: RFC 2047 encoded words,
 * parameters with RFC 2231 continuations and charsets
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

/* RFC 2047 words are at most 75 characters; real mailers overshoot, but
 * the bound keeps a header full of unterminated "=?" linear to scan.
 */
#define MIME_EW_MAX             1000

/* RFC 2231 continuations kept per parameter. */
#define MIME_MAX_SEGMENTS       128

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

  mailoauth_mime_b64_init(&b);
  rc = mailoauth_mime_b64_update(&b, (unsigned char *) run->b64.data, run->b64.len,
    mailoauth_mime_buf_out, &run->bytes);
  if (rc == 0) {
    rc = mailoauth_mime_b64_final(&b, mailoauth_mime_buf_out, &run->bytes);
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
      mailoauth_mime_convert(run->charset, run->bytes.data ? run->bytes.data : "",
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
        (hi = mailoauth_mime_hexval((unsigned char) ew->text[i + 1])) >= 0 &&
        (lo = mailoauth_mime_hexval((unsigned char) ew->text[i + 2])) >= 0) {
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
        if (mailoauth_mime_guess_to_utf8(fallback, raw.data, raw.len, out, bad) < 0) {
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

    if (mailoauth_mime_is_wsp((unsigned char) v[i]) || v[i] == '\r' || v[i] == '\n') {
      size_t j = i;

      while (j < n && (mailoauth_mime_is_wsp((unsigned char) v[j]) || v[j] == '\r' ||
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

      while (j < n && v[j] != '=' && !mailoauth_mime_is_wsp((unsigned char) v[j]) &&
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
      mailoauth_mime_guess_to_utf8(fallback, raw.data, raw.len, out, bad) < 0) {
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

  return mailoauth_mime_buf_field(&out, mime_decode_words(value, len,
    fallback_charset, &out, bad ? bad : &dummy));
}

/* ------------------------------------------------------------------------
 * Structured header values (RFC 2045 with RFC 822 comments).
 */

/* Skips whitespace and (nested) comments. */
size_t mailoauth_mime_skip_cfws(const char *s, size_t n, size_t i) {
  while (i < n) {
    if (mailoauth_mime_is_wsp((unsigned char) s[i]) || s[i] == '\r' || s[i] == '\n') {
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
    } else if (s[i] == '(' && (i == 0 || mailoauth_mime_is_wsp((unsigned char) s[i - 1]))) {
      i = mailoauth_mime_skip_cfws(s, n, i);
    } else {
      i++;
    }
  }
  return i;
}

/* A token (type, subtype, disposition) at *i. */
size_t mailoauth_mime_token(const char *s, size_t n, size_t *i,
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


/* Calls fn for every attribute=value after the first top-level ';'.  Quoted
 * values are unquoted the way mailers expect, not strictly: only \\ and \"
 * are escapes, so "C:\dir\file.doc" from old Windows mailers keeps its
 * backslashes.  A '(' opens a comment only after whitespace, so an unquoted
 * "Scan(1).pdf" survives.
 */
int mailoauth_mime_params_scan(const char *s, size_t n, mime_param_fn fn,
    void *arg) {
  struct mailoauth_buf val = { NULL, 0, 0, 0, 0 };
  size_t i;
  int rc = 0;

  i = mime_next_semicolon(s, n, 0);
  while (i < n && rc == 0) {
    size_t astart, alen;

    i = mailoauth_mime_skip_cfws(s, n, i + 1);
    astart = i;
    while (i < n && s[i] != '=' && s[i] != ';' && s[i] != '"' &&
        !mailoauth_mime_is_wsp((unsigned char) s[i]) && s[i] != '(') {
      i++;
    }
    alen = i - astart;
    i = mailoauth_mime_skip_cfws(s, n, i);
    if (alen == 0 || i >= n || s[i] != '=') {
      i = mime_next_semicolon(s, n, i);
      continue;
    }
    i = mailoauth_mime_skip_cfws(s, n, i + 1);

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
        if (s[i] == '(' && mailoauth_mime_is_wsp((unsigned char) s[i - 1])) {
          i = mailoauth_mime_skip_cfws(s, n, i);
          continue;
        }
        val.data[val.len++] = s[i];
        i++;
      }
      end = val.len;
      while (end > 0 && (mailoauth_mime_is_wsp((unsigned char) val.data[end - 1]) ||
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
      g->plain = mailoauth_mime_strndup(val, vlen);
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
      g->ext = mailoauth_mime_strndup(val, vlen);
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
    s->value = mailoauth_mime_strndup(val, vlen);
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
        (hi = mailoauth_mime_hexval((unsigned char) s[i + 1])) >= 0 &&
        (lo = mailoauth_mime_hexval((unsigned char) s[i + 2])) >= 0) {
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
      rc = cs ? mailoauth_mime_convert(cs, bytes.data ? bytes.data : "", bytes.len,
          out, bad) :
        mailoauth_mime_guess_to_utf8(fallback, bytes.data ? bytes.data : "",
          bytes.len, out, bad);
    }

  } else if (g->ext != NULL) {
    size_t skip;

    cs = mime_2231_split(g->ext, g->ext_len, charset, sizeof(charset), &skip);
    if (mime_pct_decode(g->ext + skip, g->ext_len - skip, &bytes) < 0) {
      goto done;
    }
    rc = cs ? mailoauth_mime_convert(cs, bytes.data ? bytes.data : "", bytes.len, out,
        bad) :
      mailoauth_mime_guess_to_utf8(fallback, bytes.data ? bytes.data : "", bytes.len,
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

  if (mailoauth_mime_params_scan(value, len, mime_pget_cb, g) < 0) {
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
  res = mailoauth_mime_field_str(out.data, out.len);

done:
  mailoauth_buf_free(&out);
  mime_pget_free(g);
  return res;
}


int mailoauth_mime_rawget_cb(const char *attr, size_t alen, const char *val,
    size_t vlen, void *arg) {
  struct mime_rawget *g = arg;

  if (g->value == NULL && alen == strlen(g->name) &&
      strncasecmp(attr, g->name, alen) == 0) {
    g->value = mailoauth_mime_strndup(val, vlen);
    g->len = vlen;
    return g->value ? 0 : -1;
  }
  return 0;
}

