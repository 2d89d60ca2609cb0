/*
 * Unit tests: notification mail.  Every message is rendered and parsed back
 * by an independent checker in this file (line discipline, header syntax,
 * RFC 2047 words, RFC 2231 parameters, MIME structure, base64 and
 * quoted-printable), and compared with what went in.
 */

#include "mailoauth/message.h"

#include <check.h>
#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* 2023-11-14 22:13:20 UTC, a Tuesday. */
#define T0 ((time_t) 1700000000)

#define ALICE   "alice@example.com"
#define FROM    "ftp@files.example.com"

static char tmpdir[64];

/* For the checker's loops: libcheck reports every passing ck_assert to the
 * runner over a pipe, which makes per-byte assertions crawl.
 */
#define REQUIRE(expr, ...) \
  do { if (!(expr)) ck_abort_msg(__VA_ARGS__); } while (0)
#define REQUIRE1(expr)  REQUIRE(expr, "failed: %s", #expr)

/* ------------------------------------------------------------------ */
/* The checker                                                        */
/* ------------------------------------------------------------------ */

#define MAX_HDRS 64

struct hdr {
  char name[80];
  char *value;          /* unfolded, leading white space removed */
};

struct entity {
  struct hdr h[MAX_HDRS];
  int nh;
  const char *body;
  size_t body_len;
};

static void entity_free(struct entity *e) {
  int i;

  for (i = 0; i < e->nh; i++) {
    free(e->h[i].value);
  }
  memset(e, 0, sizeof(*e));
}

/* Wire discipline for a whole message: CRLF only, no NUL, no line over
 * 998 octets, ends with CRLF.
 */
static void check_wire(const char *buf, size_t len) {
  size_t i, line = 0;

  REQUIRE1(len > 2);
  REQUIRE(memcmp(buf + len - 2, "\r\n", 2) == 0, "no final CRLF");

  for (i = 0; i < len; i++) {
    REQUIRE(buf[i] != '\0', "NUL at %zu", i);

    if (buf[i] == '\r') {
      REQUIRE(i + 1 < len && buf[i + 1] == '\n', "bare CR at %zu", i);
      continue;
    }

    if (buf[i] == '\n') {
      REQUIRE(i > 0 && buf[i - 1] == '\r', "bare LF at %zu", i);
      line = 0;
      continue;
    }

    line++;
    REQUIRE(line <= 998, "line over 998 octets at %zu", i);
  }
}

/* Parses a header block; header lines may not exceed fold_limit. */
static void parse_entity(const char *buf, size_t len, struct entity *e,
    size_t fold_limit) {
  const char *p = buf, *end = buf + len, *hend;

  memset(e, 0, sizeof(*e));
  hend = memmem(buf, len, "\r\n\r\n", 4);
  REQUIRE(hend != NULL, "no end of headers");
  hend += 2;

  while (p < hend) {
    const char *eol = memmem(p, (size_t) (hend - p), "\r\n", 2);
    size_t line_len;

    REQUIRE1(eol != NULL);
    line_len = (size_t) (eol - p);
    REQUIRE(line_len <= fold_limit, "header line of %zu chars: %.*s",
      line_len, (int) line_len, p);

    if (*p == ' ' || *p == '\t') {
      struct hdr *h;
      size_t k, old;
      int blank = 1;

      REQUIRE(e->nh > 0, "continuation line first");
      for (k = 0; k < line_len; k++) {
        if (p[k] != ' ' && p[k] != '\t') {
          blank = 0;
        }
      }
      REQUIRE(!blank, "white-space-only header line");

      h = &e->h[e->nh - 1];
      old = strlen(h->value);
      h->value = realloc(h->value, old + line_len + 1);
      memcpy(h->value + old, p, line_len);
      h->value[old + line_len] = '\0';

    } else {
      const char *colon = memchr(p, ':', line_len), *v;
      struct hdr *h;
      const char *c;

      REQUIRE(colon != NULL && colon > p, "not a header: %.*s",
        (int) line_len, p);
      for (c = p; c < colon; c++) {
        REQUIRE(*c > 32 && *c < 127, "bad header name char");
      }
      REQUIRE1(e->nh < MAX_HDRS);
      REQUIRE1((size_t) (colon - p) < sizeof(h->name));

      h = &e->h[e->nh++];
      memcpy(h->name, p, (size_t) (colon - p));
      h->name[colon - p] = '\0';
      v = colon + 1;
      while (v < eol && (*v == ' ' || *v == '\t')) {
        v++;
      }
      h->value = strndup(v, (size_t) (eol - v));
    }

    p = eol + 2;
  }

  /* A value may start on a continuation line. */
  {
    int i;

    for (i = 0; i < e->nh; i++) {
      char *v = e->h[i].value;
      size_t skip = strspn(v, " \t");

      memmove(v, v + skip, strlen(v + skip) + 1);
    }
  }

  e->body = hend + 2;
  e->body_len = (size_t) (end - e->body);
}

static int hdr_count(const struct entity *e, const char *name) {
  int i, n = 0;

  for (i = 0; i < e->nh; i++) {
    if (strcasecmp(e->h[i].name, name) == 0) {
      n++;
    }
  }
  return n;
}

static const char *hdr_get(const struct entity *e, const char *name) {
  int i;

  for (i = 0; i < e->nh; i++) {
    if (strcasecmp(e->h[i].name, name) == 0) {
      return e->h[i].value;
    }
  }
  return NULL;
}

/* Strict UTF-8 check (no overlongs, surrogates or values over U+10FFFF). */
static int utf8_valid(const unsigned char *s, size_t len) {
  size_t i = 0;

  while (i < len) {
    unsigned char c = s[i];
    size_t n, k;
    unsigned char lo = 0x80, hi = 0xbf;

    if (c < 0x80) {
      i++;
      continue;
    }
    if (c >= 0xc2 && c <= 0xdf) {
      n = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
      n = 3;
      lo = c == 0xe0 ? 0xa0 : 0x80;
      hi = c == 0xed ? 0x9f : 0xbf;
    } else if (c >= 0xf0 && c <= 0xf4) {
      n = 4;
      lo = c == 0xf0 ? 0x90 : 0x80;
      hi = c == 0xf4 ? 0x8f : 0xbf;
    } else {
      return 0;
    }
    for (k = 1; k < n; k++) {
      if (i + k >= len || s[i + k] < lo || s[i + k] > hi) {
        return 0;
      }
      lo = 0x80;
      hi = 0xbf;
    }
    i += n;
  }

  return 1;
}

static int b64val(int c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

/* Strict base64 of one chunk (length a multiple of 4); appends to out. */
static size_t b64_decode(const char *s, size_t len, unsigned char *out) {
  size_t i, n = 0;

  REQUIRE(len % 4 == 0, "base64 length %zu", len);
  for (i = 0; i < len; i += 4) {
    int a = b64val(s[i]), b = b64val(s[i + 1]);
    int c = s[i + 2] == '=' ? 0 : b64val(s[i + 2]);
    int d = s[i + 3] == '=' ? 0 : b64val(s[i + 3]);

    REQUIRE1(a >= 0 && b >= 0 && c >= 0 && d >= 0);
    out[n++] = (unsigned char) (a << 2 | b >> 4);
    if (s[i + 2] != '=') {
      out[n++] = (unsigned char) (b << 4 | c >> 2);
    } else {
      REQUIRE1(s[i + 3] == '=' && i + 4 == len);
    }
    if (s[i + 3] != '=') {
      out[n++] = (unsigned char) (c << 6 | d);
    } else {
      REQUIRE1(i + 4 == len);
    }
  }
  return n;
}

static int hexval(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

/* RFC 2047 decoder: encoded words become their UTF-8 text, white space
 * between adjacent encoded words disappears.  Also checks that each word
 * is at most 75 characters and holds whole UTF-8 characters.
 */
static char *decode_2047(const char *v, int *words) {
  size_t len = strlen(v), i = 0, n = 0, mark = 0;
  unsigned char *out = malloc(len + 1);
  int prev_ew = 0;

  if (words != NULL) {
    *words = 0;
  }

  while (i < len) {
    if (v[i] == '=' && v[i + 1] == '?') {
      const char *cs = v + i + 2, *q1, *q2, *q3;

      q1 = strchr(cs, '?');
      if (q1 != NULL && q1[1] != '\0' && q1[2] == '?' &&
          (q3 = strstr(q1 + 3, "?=")) != NULL) {
        unsigned char tmp[256];
        size_t tn = 0, tl;
        const char *t = q1 + 3;

        q2 = q1 + 2;
        REQUIRE((size_t) (q3 + 2 - (v + i)) <= 75,
          "encoded word over 75 characters");
        REQUIRE(strncasecmp(cs, "UTF-8", (size_t) (q1 - cs)) == 0,
          "charset %.*s", (int) (q1 - cs), cs);
        tl = (size_t) (q3 - t);
        (void) q2;

        if (q1[1] == 'B' || q1[1] == 'b') {
          tn = b64_decode(t, tl, tmp);
        } else {
          size_t k;

          REQUIRE1(q1[1] == 'Q' || q1[1] == 'q');
          for (k = 0; k < tl; k++) {
            if (t[k] == '_') {
              tmp[tn++] = ' ';
            } else if (t[k] == '=') {
              REQUIRE1(hexval(t[k + 1]) >= 0 && hexval(t[k + 2]) >= 0);
              tmp[tn++] = (unsigned char) (hexval(t[k + 1]) * 16 +
                hexval(t[k + 2]));
              k += 2;
            } else {
              REQUIRE(t[k] > 32 && t[k] < 127 && t[k] != '?',
                "raw char in Q word");
              tmp[tn++] = (unsigned char) t[k];
            }
          }
        }

        REQUIRE(utf8_valid(tmp, tn), "encoded word splits a character");
        if (prev_ew) {
          n = mark;
        }
        memcpy(out + n, tmp, tn);
        n += tn;
        mark = n;
        prev_ew = 1;
        if (words != NULL) {
          (*words)++;
        }
        i = (size_t) (q3 + 2 - v);
        continue;
      }
    }

    if (v[i] != ' ' && v[i] != '\t') {
      prev_ew = 0;
    }
    out[n++] = (unsigned char) v[i++];
  }

  out[n] = '\0';
  return (char *) out;
}

/* One mailbox of an address list: decoded display name and address. */
struct mbox {
  char *name;
  char *addr;
};

static int parse_mailboxes(const char *v, struct mbox *out, int max) {
  int n = 0;
  const char *p = v;

  while (*p != '\0') {
    const char *start, *lt, *gt, *end;
    int inq = 0;
    char *item;

    while (*p == ' ' || *p == '\t') {
      p++;
    }
    start = p;
    for (end = p; *end != '\0'; end++) {
      if (*end == '\\' && inq) {
        end++;
        continue;
      }
      if (*end == '"') {
        inq = !inq;
      }
      if (*end == ',' && !inq) {
        break;
      }
    }
    REQUIRE1(n < max);
    item = strndup(start, (size_t) (end - start));

    lt = strrchr(item, '<');
    if (lt != NULL) {
      char *disp = strndup(item, (size_t) (lt - item));
      size_t dl = strlen(disp);

      gt = strchr(lt, '>');
      REQUIRE1(gt != NULL);
      out[n].addr = strndup(lt + 1, (size_t) (gt - lt - 1));
      while (dl > 0 && disp[dl - 1] == ' ') {
        disp[--dl] = '\0';
      }
      if (disp[0] == '"') {
        char *u = malloc(dl + 1);
        size_t k, m = 0;

        REQUIRE1(dl >= 2 && disp[dl - 1] == '"');
        for (k = 1; k + 1 < dl; k++) {
          if (disp[k] == '\\') {
            k++;
          }
          u[m++] = disp[k];
        }
        u[m] = '\0';
        out[n].name = u;
      } else {
        out[n].name = decode_2047(disp, NULL);
      }
      free(disp);

    } else {
      out[n].name = NULL;
      out[n].addr = strdup(item);
    }
    free(item);
    n++;
    p = *end == ',' ? end + 1 : end;
  }

  return n;
}

static void mboxes_free(struct mbox *m, int n) {
  int i;

  for (i = 0; i < n; i++) {
    free(m[i].name);
    free(m[i].addr);
  }
}

/* Parameters of a structured header (Content-Type, Content-Disposition),
 * with RFC 2231 continuations and extended values decoded.  Returns the
 * value of param (plain form in *plain, extended form as the result), or
 * NULL.
 */
static char *get_param(const char *v, const char *param, char **plain) {
  unsigned char *ext = malloc(strlen(v) + 1);
  size_t ext_len = 0, plen = strlen(param);
  int seg_expected = 0, have_ext = 0;
  const char *p = strchr(v, ';');

  *plain = NULL;
  while (p != NULL && *p == ';') {
    const char *name, *eq, *val, *end;
    size_t nlen;

    p++;
    while (*p == ' ' || *p == '\t') {
      p++;
    }
    name = p;
    eq = strchr(name, '=');
    REQUIRE1(eq != NULL);
    nlen = (size_t) (eq - name);
    val = eq + 1;

    if (*val == '"') {
      const char *q;
      char *u = malloc(strlen(val) + 1);
      size_t m = 0;

      for (q = val + 1; *q != '"'; q++) {
        REQUIRE1(*q != '\0');
        if (*q == '\\') {
          q++;
        }
        u[m++] = *q;
      }
      u[m] = '\0';
      end = q + 1;
      if (nlen == plen && strncasecmp(name, param, plen) == 0) {
        free(*plain);
        *plain = u;
      } else {
        free(u);
      }

    } else {
      for (end = val; *end != '\0' && *end != ';' && *end != ' '; end++) {
      }

      if (nlen > plen && strncasecmp(name, param, plen) == 0 &&
          name[plen] == '*') {
        const char *s = val;
        int seg = 0, extended = name[nlen - 1] == '*';

        if (nlen > plen + 1 + (size_t) extended) {
          seg = atoi(name + plen + 1);
        }
        REQUIRE1(seg == seg_expected);
        seg_expected++;
        have_ext = 1;

        if (seg == 0 && extended) {
          REQUIRE(strncmp(s, "UTF-8''", 7) == 0, "charset");
          s += 7;
        }
        {
          size_t start = ext_len;

          for (; s < end; s++) {
            if (*s == '%' && extended) {
              REQUIRE1(hexval(s[1]) >= 0 && hexval(s[2]) >= 0);
              ext[ext_len++] = (unsigned char) (hexval(s[1]) * 16 +
                hexval(s[2]));
              s += 2;
            } else {
              REQUIRE(strchr("()<>@,;:\\\"/[]?= *'%", *s) == NULL ||
                (*s == '%' && !extended), "bad char in extended value");
              ext[ext_len++] = (unsigned char) *s;
            }
          }
          /* We split only between characters. */
          REQUIRE(utf8_valid(ext + start, ext_len - start),
            "RFC 2231 segment splits a character");
        }
      }
    }

    p = end;
    while (*p == ' ' || *p == '\t') {
      p++;
    }
  }

  if (!have_ext) {
    free(ext);
    return NULL;
  }
  ext[ext_len] = '\0';
  return (char *) ext;
}

/* A decoded MIME body. */
static unsigned char *decode_body(const char *cte, const char *b, size_t len,
    size_t *out_len) {
  unsigned char *out = malloc(len + 1);
  size_t n = 0, i = 0;

  if (strcasecmp(cte, "base64") == 0) {
    while (i < len) {
      const char *eol = memmem(b + i, len - i, "\r\n", 2);
      size_t l = eol != NULL ? (size_t) (eol - (b + i)) : len - i;

      REQUIRE(l <= 76, "base64 line of %zu", l);
      n += b64_decode(b + i, l, out + n);
      i += l + 2;
    }

  } else if (strcasecmp(cte, "quoted-printable") == 0) {
    while (i < len) {
      const char *eol = memmem(b + i, len - i, "\r\n", 2);
      size_t l = eol != NULL ? (size_t) (eol - (b + i)) : len - i, k;
      int soft = 0;

      REQUIRE(l <= 76, "quoted-printable line of %zu", l);
      REQUIRE(l == 0 || (b[i + l - 1] != ' ' && b[i + l - 1] != '\t'),
        "trailing white space in quoted-printable");
      for (k = 0; k < l; k++) {
        char c = b[i + k];

        if (c == '=') {
          if (k + 1 == l) {
            soft = 1;
            break;
          }
          REQUIRE1(hexval(b[i + k + 1]) >= 0 && hexval(b[i + k + 2]) >= 0);
          out[n++] = (unsigned char) (hexval(b[i + k + 1]) * 16 +
            hexval(b[i + k + 2]));
          k += 2;
        } else {
          REQUIRE1(c == '\t' || (c >= 32 && c < 127));
          out[n++] = (unsigned char) c;
        }
      }
      if (!soft && eol != NULL) {
        out[n++] = '\r';
        out[n++] = '\n';
      }
      i += l + 2;
    }

  } else {
    ck_assert_str_eq(cte, "7bit");
    for (i = 0; i < len; i++) {
      REQUIRE1((unsigned char) b[i] < 0x80);
    }
    memcpy(out, b, len);
    n = len;
  }

  out[n] = '\0';
  *out_len = n;
  return out;
}

/* The whole structure of a rendered message. */
struct parsed {
  char *raw;                    /* the rendered message, when ours */
  struct entity top;
  int nparts;
  struct entity part[2];
  unsigned char *text;          /* decoded text body */
  size_t text_len;
  unsigned char *file;          /* decoded attachment */
  size_t file_len;
};

static void parsed_free(struct parsed *m) {
  int i;

  entity_free(&m->top);
  for (i = 0; i < m->nparts; i++) {
    entity_free(&m->part[i]);
  }
  free(m->text);
  free(m->file);
  free(m->raw);
  memset(m, 0, sizeof(*m));
}

static const char *required_once[] = { "Date", "From", "Subject",
  "Message-ID", "MIME-Version", "Content-Type", "Auto-Submitted", NULL };
static const char *at_most_once[] = { "To", "Cc", "Reply-To", "X-Mailer",
  "Content-Transfer-Encoding", "X-Auto-Response-Suppress", NULL };

static void check_message(const char *buf, size_t len, struct parsed *m,
    size_t fold_limit) {
  const char *ct;
  int i;

  memset(m, 0, sizeof(*m));
  check_wire(buf, len);
  parse_entity(buf, len, &m->top, fold_limit);

  for (i = 0; required_once[i] != NULL; i++) {
    REQUIRE(hdr_count(&m->top, required_once[i]) == 1,
      "%s appears %d times", required_once[i],
      hdr_count(&m->top, required_once[i]));
  }
  for (i = 0; at_most_once[i] != NULL; i++) {
    REQUIRE(hdr_count(&m->top, at_most_once[i]) <= 1,
      "%s repeated", at_most_once[i]);
  }
  ck_assert_int_eq(hdr_count(&m->top, "Bcc"), 0);
  ck_assert_int_eq(hdr_count(&m->top, "To"), 1);
  ck_assert_str_eq(hdr_get(&m->top, "MIME-Version"), "1.0");
  ck_assert_str_eq(hdr_get(&m->top, "Auto-Submitted"), "auto-generated");

  /* Only the names this unit writes, whatever went in. */
  for (i = 0; i < m->top.nh; i++) {
    static const char *known[] = { "Date", "From", "Reply-To", "To", "Cc",
      "Subject", "Message-ID", "MIME-Version", "Auto-Submitted",
      "X-Auto-Response-Suppress", "X-Mailer", "Content-Type",
      "Content-Transfer-Encoding", NULL };
    int k, ok = 0;

    for (k = 0; known[k] != NULL; k++) {
      if (strcmp(m->top.h[i].name, known[k]) == 0) {
        ok = 1;
      }
    }
    REQUIRE(ok, "unexpected header %s", m->top.h[i].name);
  }

  ct = hdr_get(&m->top, "Content-Type");
  if (strncmp(ct, "multipart/mixed;", 16) == 0) {
    char *plain, *ext, *delim;
    const char *p, *end = m->top.body + m->top.body_len;
    size_t dlen;

    ext = get_param(ct, "boundary", &plain);
    ck_assert_ptr_null(ext);
    ck_assert_ptr_nonnull(plain);
    ck_assert_int_eq(hdr_count(&m->top, "Content-Transfer-Encoding"), 0);

    dlen = strlen(plain) + 2;
    delim = malloc(dlen + 1);
    sprintf(delim, "--%s", plain);
    REQUIRE(memcmp(m->top.body, delim, dlen) == 0 &&
      memcmp(m->top.body + dlen, "\r\n", 2) == 0, "first delimiter");
    p = m->top.body + dlen + 2;

    for (;;) {
      const char *next = p;
      const char *d;

      /* The next delimiter line: CRLF "--" boundary. */
      for (;;) {
        d = memmem(next, (size_t) (end - next), delim, dlen);
        REQUIRE1(d != NULL);
        if (d[-1] == '\n' && d[-2] == '\r') {
          break;
        }
        next = d + 1;
      }
      REQUIRE1(m->nparts < 2);
      parse_entity(p, (size_t) (d - 2 - p) + 2, &m->part[m->nparts],
        fold_limit);
      m->part[m->nparts].body_len = (size_t) (d - 2 -
        m->part[m->nparts].body);
      m->nparts++;

      if (memcmp(d + dlen, "--\r\n", 4) == 0) {
        REQUIRE(d + dlen + 4 == end, "epilogue after close");
        break;
      }
      REQUIRE1(memcmp(d + dlen, "\r\n", 2) == 0);
      p = d + dlen + 2;
    }
    free(plain);
    free(delim);
    REQUIRE1(m->nparts == 2);

    ck_assert_str_eq(hdr_get(&m->part[0], "Content-Type"),
      "text/plain; charset=UTF-8");
    m->text = decode_body(hdr_get(&m->part[0], "Content-Transfer-Encoding"),
      m->part[0].body, m->part[0].body_len, &m->text_len);
    ck_assert_str_eq(hdr_get(&m->part[1], "Content-Transfer-Encoding"),
      "base64");
    m->file = decode_body("base64", m->part[1].body, m->part[1].body_len,
      &m->file_len);

  } else {
    ck_assert_str_eq(ct, "text/plain; charset=UTF-8");
    m->text = decode_body(hdr_get(&m->top, "Content-Transfer-Encoding"),
      m->top.body, m->top.body_len, &m->text_len);
  }

  REQUIRE(utf8_valid(m->text, m->text_len), "body not UTF-8");
}

/* ------------------------------------------------------------------ */
/* Helpers                                                            */
/* ------------------------------------------------------------------ */

static struct mailoauth_message *new_msg(void) {
  struct mailoauth_message *msg = mailoauth_message_create();

  ck_assert_ptr_nonnull(msg);
  ck_assert_int_eq(mailoauth_message_set_from(msg, FROM, "File Server"), 0);
  ck_assert_int_eq(mailoauth_message_add_recipient(msg,
    MAILOAUTH_MESSAGE_TO, ALICE, NULL), 0);
  ck_assert_int_eq(mailoauth_message_set_date(msg, T0, 1), 0);
  return msg;
}

static char *render(struct mailoauth_message *msg, size_t *len) {
  char *out = NULL;

  ck_assert_msg(mailoauth_message_render(msg, &out, len) == 0,
    "render: %s", strerror(errno));
  ck_assert_uint_eq(strlen(out), *len);
  return out;
}

static void render_check(struct mailoauth_message *msg, struct parsed *m) {
  size_t len;
  char *out = render(msg, &len);

  check_message(out, len, m, 78);
  /* The entities point into out. */
  m->raw = out;
}

static char *subject_of(struct parsed *m) {
  return decode_2047(hdr_get(&m->top, "Subject"), NULL);
}

static void make_file(const char *name, const unsigned char *data,
    size_t len, char *path, size_t pathsz) {
  int fd;

  snprintf(path, pathsz, "%s/%s", tmpdir, name);
  fd = open(path, O_WRONLY|O_CREAT|O_TRUNC, 0600);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(write(fd, data, len), (ssize_t) len);
  close(fd);
}

static unsigned char *random_bytes(size_t len, uint32_t seed) {
  unsigned char *p = malloc(len ? len : 1);
  uint32_t x = seed ? seed : 1;
  size_t i;

  for (i = 0; i < len; i++) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    p[i] = (unsigned char) x;
  }
  return p;
}

/* ------------------------------------------------------------------ */
/* Tests                                                              */
/* ------------------------------------------------------------------ */

START_TEST(test_plain_message) {
  struct mailoauth_message *msg = new_msg();
  struct parsed m;
  const char *id;

  ck_assert_int_eq(mailoauth_message_set_subject(msg, "Upload: report.pdf",
    MAILOAUTH_MESSAGE_STRLEN), 0);
  ck_assert_int_eq(mailoauth_message_set_body(msg,
    "alice uploaded report.pdf\n(12 KB)\n", MAILOAUTH_MESSAGE_STRLEN), 0);
  ck_assert_int_eq(mailoauth_message_set_mailer(msg, "mod_mailoauth/0.1"), 0);
  render_check(msg, &m);

  ck_assert_str_eq(hdr_get(&m.top, "Date"), "Tue, 14 Nov 2023 22:13:20 +0000");
  ck_assert_str_eq(hdr_get(&m.top, "From"),
    "\"File Server\" <" FROM ">");
  ck_assert_str_eq(hdr_get(&m.top, "To"), ALICE);
  ck_assert_str_eq(hdr_get(&m.top, "Subject"), "Upload: report.pdf");
  ck_assert_str_eq(hdr_get(&m.top, "Content-Transfer-Encoding"), "7bit");
  ck_assert_str_eq(hdr_get(&m.top, "X-Mailer"), "mod_mailoauth/0.1");
  ck_assert_str_eq(hdr_get(&m.top, "X-Auto-Response-Suppress"), "All");
  ck_assert_str_eq((char *) m.text,
    "alice uploaded report.pdf\r\n(12 KB)\r\n");

  id = mailoauth_message_get_message_id(msg);
  ck_assert_ptr_nonnull(id);
  ck_assert_str_eq(mailoauth_message_get_from(msg), FROM);
  {
    char want[128];

    snprintf(want, sizeof(want), "<%s>", id);
    ck_assert_str_eq(hdr_get(&m.top, "Message-ID"), want);
  }

  parsed_free(&m);
  mailoauth_message_free(msg);
}
END_TEST

START_TEST(test_date_offsets) {
  static const struct {
    const char *tz;
    const char *want;
  } cases[] = {
    { "ABC-5:30", "Wed, 15 Nov 2023 03:43:20 +0530" },
    { "XYZ+3", "Tue, 14 Nov 2023 19:13:20 -0300" },
    { "UTC0", "Tue, 14 Nov 2023 22:13:20 +0000" },
  };
  char *old = getenv("TZ") ? strdup(getenv("TZ")) : NULL;
  size_t i;

  for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    struct mailoauth_message *msg = new_msg();
    struct parsed m;

    setenv("TZ", cases[i].tz, 1);
    tzset();
    ck_assert_int_eq(mailoauth_message_set_date(msg, T0, 0), 0);
    render_check(msg, &m);
    ck_assert_str_eq(hdr_get(&m.top, "Date"), cases[i].want);
    parsed_free(&m);
    mailoauth_message_free(msg);
  }

  if (old != NULL) {
    setenv("TZ", old, 1);
    free(old);
  } else {
    unsetenv("TZ");
  }
  tzset();
}
END_TEST

START_TEST(test_message_id) {
  struct mailoauth_message *a = new_msg(), *b = new_msg();
  const char *ida, *idb, *at;
  size_t k;

  ck_assert_ptr_null(mailoauth_message_get_message_id(a));
  ck_assert_int_eq(mailoauth_message_prepare(a), 0);
  ck_assert_int_eq(mailoauth_message_prepare(b), 0);
  ida = mailoauth_message_get_message_id(a);
  idb = mailoauth_message_get_message_id(b);
  ck_assert_str_ne(ida, idb);

  /* 128 random bits in hex, at the From domain. */
  at = strchr(ida, '@');
  ck_assert_ptr_nonnull(at);
  ck_assert_int_eq(at - ida, 32);
  for (k = 0; k < 32; k++) {
    ck_assert(strchr("0123456789abcdef", ida[k]) != NULL);
  }
  ck_assert_str_eq(at + 1, "files.example.com");

  /* Stable across rewinds. */
  ck_assert_int_eq(mailoauth_message_rewind(a), 0);
  ck_assert_int_eq(mailoauth_message_prepare(a), 0);
  ck_assert_str_eq(mailoauth_message_get_message_id(a), ida);

  /* Set by the caller; validated. */
  ck_assert_int_eq(mailoauth_message_set_message_id(b, "q123.abc@h.example"),
    0);
  ck_assert_int_eq(mailoauth_message_prepare(b), 0);
  ck_assert_str_eq(mailoauth_message_get_message_id(b), "q123.abc@h.example");
  ck_assert_int_eq(mailoauth_message_set_message_id(b, "<x@y>"), -1);
  ck_assert_int_eq(errno, EINVAL);
  ck_assert_int_eq(mailoauth_message_set_message_id(b, "x\r\nBcc: v@y"), -1);
  ck_assert_int_eq(mailoauth_message_set_message_id(b, "nodomain"), -1);
  ck_assert_int_eq(mailoauth_message_set_message_id(b, "a@b@c"), -1);
  ck_assert_int_eq(mailoauth_message_set_message_id(b, "a..b@c"), -1);

  mailoauth_message_free(a);
  mailoauth_message_free(b);
}
END_TEST

START_TEST(test_bcc_envelope_only) {
  struct mailoauth_message *msg = mailoauth_message_create();
  const char *const *rcpts;
  struct mbox mb[8];
  size_t n, len;
  char *out;
  struct parsed m;
  int nm;

  mailoauth_message_set_from(msg, FROM, NULL);
  mailoauth_message_set_date(msg, T0, 1);
  ck_assert_int_eq(mailoauth_message_add_recipient(msg, MAILOAUTH_MESSAGE_TO,
    ALICE, "Alice"), 0);
  ck_assert_int_eq(mailoauth_message_add_recipient(msg, MAILOAUTH_MESSAGE_CC,
    "carol@example.org", NULL), 0);
  ck_assert_int_eq(mailoauth_message_add_recipient(msg,
    MAILOAUTH_MESSAGE_BCC, "hidden.auditor@secret.example", "Auditor"), 0);
  /* The same person twice is one envelope recipient. */
  ck_assert_int_eq(mailoauth_message_add_recipient(msg,
    MAILOAUTH_MESSAGE_BCC, "Alice@Example.com", NULL), 0);
  ck_assert_int_eq(mailoauth_message_add_recipient(msg, 7, ALICE, NULL), -1);
  ck_assert_int_eq(errno, EINVAL);

  rcpts = mailoauth_message_get_recipients(msg, &n);
  ck_assert_uint_eq(n, 3);
  ck_assert_str_eq(rcpts[0], ALICE);
  ck_assert_str_eq(rcpts[1], "carol@example.org");
  ck_assert_str_eq(rcpts[2], "hidden.auditor@secret.example");

  out = render(msg, &len);
  ck_assert_ptr_null(memmem(out, len, "hidden", 6));
  ck_assert_ptr_null(memmem(out, len, "Auditor", 7));
  check_message(out, len, &m, 78);
  nm = parse_mailboxes(hdr_get(&m.top, "To"), mb, 8);
  ck_assert_int_eq(nm, 1);
  ck_assert_str_eq(mb[0].addr, ALICE);
  ck_assert_str_eq(mb[0].name, "Alice");
  mboxes_free(mb, nm);
  ck_assert_str_eq(hdr_get(&m.top, "Cc"), "carol@example.org");
  parsed_free(&m);
  free(out);
  mailoauth_message_free(msg);

  /* Only Bcc: an empty group in To. */
  msg = mailoauth_message_create();
  mailoauth_message_set_from(msg, FROM, NULL);
  mailoauth_message_add_recipient(msg, MAILOAUTH_MESSAGE_BCC,
    "hidden@secret.example", NULL);
  out = render(msg, &len);
  check_message(out, len, &m, 78);
  ck_assert_str_eq(hdr_get(&m.top, "To"), "undisclosed-recipients:;");
  ck_assert_ptr_null(memmem(out, len, "hidden", 6));
  parsed_free(&m);
  free(out);
  mailoauth_message_free(msg);
}
END_TEST

START_TEST(test_addresses) {
  static const char *good[] = { "a@b.co", "first.last@example.com",
    "x+tag@sub.example.org", "o'brien@example.ie", "UPPER@EXAMPLE.COM",
    "a-b_c!#$%&*/=?^`{|}~@ex-ample.com", "1@2.3", NULL };
  static const char *bad[] = { "", "plain", "@example.com", "a@", "a@b",
    "a@@b.com", "a@b@c.com", "a b@example.com", "a@exa mple.com",
    "<a@example.com>", "a@example.com>", "a,b@example.com",
    "a@example.com,b@example.com", "a@example.com\r\nBcc: v@x.com",
    "a\n@example.com", ".a@example.com", "a.@example.com",
    "a..b@example.com", "a@-example.com", "a@example-.com",
    "a@example..com", "a@.example.com", "a@example.com.",
    "\"quoted\"@example.com", "r\xc3\xa9@example.com",
    "a@\xc3\xa9xample.com", "a@[127.0.0.1]", "a@exa_mple.com",
    "a\t@example.com", "a@example.com\x7f", NULL };
  struct mailoauth_message *msg = mailoauth_message_create();
  char longlocal[80], longaddr[300];
  int i;

  for (i = 0; good[i] != NULL; i++) {
    ck_assert_msg(mailoauth_message_check_address(good[i]) == 0,
      "rejected %s", good[i]);
  }
  for (i = 0; bad[i] != NULL; i++) {
    errno = 0;
    ck_assert_msg(mailoauth_message_check_address(bad[i]) == -1 &&
      errno == EINVAL, "accepted %s", bad[i]);
    ck_assert_int_eq(mailoauth_message_add_recipient(msg,
      MAILOAUTH_MESSAGE_TO, bad[i], NULL), -1);
    ck_assert_int_eq(mailoauth_message_set_from(msg, bad[i], NULL), -1);
  }
  ck_assert_int_eq(mailoauth_message_check_address(NULL), -1);

  memset(longlocal, 'x', 65);
  strcpy(longlocal + 65, "@example.com");
  ck_assert_int_eq(mailoauth_message_check_address(longlocal), -1);
  memset(longaddr, 'a', 60);
  longaddr[60] = '@';
  for (i = 0; i < 4; i++) {
    memset(longaddr + 61 + i * 50, 'd', 49);
    longaddr[61 + i * 50 + 49] = '.';
  }
  strcpy(longaddr + 261, "com");
  ck_assert_int_eq(mailoauth_message_check_address(longaddr), -1);

  mailoauth_message_free(msg);
}
END_TEST

/* Subjects that must come back exactly (after cleaning). */
START_TEST(test_subject_roundtrip) {
  static const struct {
    const char *in;
    const char *want;
  } cases[] = {
    { "Upload: R\xc3\xa9sum\xc3\xa9.pdf", NULL },
    { "\xe4\xb8\x8a\xe4\xbc\xa0\xe5\xae\x8c\xe6\x88\x90\xef\xbc\x9a"
      "\xe6\x8a\xa5\xe5\x91\x8a.xlsx", NULL },
    { "\xf0\x9f\x98\x80\xf0\x9f\x93\x81 new file \xf0\x9f\x8e\x89", NULL },
    { "\xd0\x9d\xd0\xbe\xd0\xb2\xd1\x8b\xd0\xb9 \xd1\x84\xd0\xb0\xd0\xb9"
      "\xd0\xbb", NULL },
    /* Looks like an encoded word: must arrive as typed. */
    { "=?UTF-8?B?SGVsbG8=?= literal", NULL },
    { "under_score and = equals ? question", NULL },
    { "tabs\tand  double  spaces  ", "tabs and double spaces" },
    { "  leading", "leading" },
    { "", "" },
  };
  size_t i;

  for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    struct mailoauth_message *msg = new_msg();
    struct parsed m;
    char *got;

    ck_assert_int_eq(mailoauth_message_set_subject(msg, cases[i].in,
      MAILOAUTH_MESSAGE_STRLEN), 0);
    render_check(msg, &m);
    got = subject_of(&m);
    ck_assert_str_eq(got, cases[i].want ? cases[i].want : cases[i].in);
    free(got);
    parsed_free(&m);
    mailoauth_message_free(msg);
  }
}
END_TEST

START_TEST(test_subject_long) {
  static const char *units[] = { "a", "ab ", "\xc3\xa9", "\xe6\x97\xa5",
    "\xf0\x9f\x98\x80", "x\xe6\x97\xa5 ", "word " };
  size_t u;

  for (u = 0; u < sizeof(units) / sizeof(units[0]); u++) {
    struct mailoauth_message *msg = new_msg();
    struct parsed m;
    char *in, *got, *want;
    size_t ulen = strlen(units[u]), i, n = 2000, wl;
    int words;

    in = malloc(n * ulen + 1);
    for (i = 0; i < n; i++) {
      memcpy(in + i * ulen, units[u], ulen);
    }
    in[n * ulen] = '\0';

    ck_assert_int_eq(mailoauth_message_set_subject(msg, in,
      MAILOAUTH_MESSAGE_STRLEN), 0);
    render_check(msg, &m);
    got = decode_2047(hdr_get(&m.top, "Subject"), &words);

    /* Cut at a character boundary, within the limit, trailing space
     * trimmed.
     */
    want = strndup(in, MAILOAUTH_MESSAGE_MAX_SUBJECT);
    wl = strlen(want);
    while (wl > 0 && !utf8_valid((unsigned char *) want, wl)) {
      want[--wl] = '\0';
    }
    while (wl > 0 && want[wl - 1] == ' ') {
      want[--wl] = '\0';
    }
    ck_assert_uint_le(strlen(got), MAILOAUTH_MESSAGE_MAX_SUBJECT);
    ck_assert_msg(strcmp(got, want) == 0, "unit %zu: got %zu bytes, want %zu",
      u, strlen(got), wl);
    if (u == 0) {
      /* One unbreakable ASCII word: only encoding can fold it. */
      ck_assert_int_gt(words, 1);
    }
    if (units[u][0] == 'w') {
      /* Plain words fold as themselves. */
      ck_assert_int_eq(words, 0);
    }

    free(in);
    free(got);
    free(want);
    parsed_free(&m);
    mailoauth_message_free(msg);
  }
}
END_TEST

START_TEST(test_hostile_subject) {
  static const struct {
    const char *in;
    size_t len;
    const char *want;
  } cases[] = {
    { "Upload\r\nBcc: victim@x.example", MAILOAUTH_MESSAGE_STRLEN,
      "Upload Bcc: victim@x.example" },
    { "a\nb\rc\r\n\r\nd", MAILOAUTH_MESSAGE_STRLEN, "a b c d" },
    { "x\r\n\r\nbody injection", MAILOAUTH_MESSAGE_STRLEN,
      "x body injection" },
    { "nul\0Bcc: v@x.example", 20, "nul\xef\xbf\xbd" "Bcc: v@x.example" },
    { "bad \xff\xfe utf8 \xc0\xaf \xed\xa0\x80 \xf4\x90\x80\x80 \xe6\x97",
      MAILOAUTH_MESSAGE_STRLEN,
      "bad \xef\xbf\xbd\xef\xbf\xbd utf8 \xef\xbf\xbd\xef\xbf\xbd "
      "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd \xef\xbf\xbd\xef\xbf\xbd"
      "\xef\xbf\xbd\xef\xbf\xbd \xef\xbf\xbd" },
    { "esc\x1b[31mred\x7f", MAILOAUTH_MESSAGE_STRLEN,
      "esc\xef\xbf\xbd[31mred\xef\xbf\xbd" },
    { "c1\xc2\x85nel\xc2\x9b", MAILOAUTH_MESSAGE_STRLEN,
      "c1 nel\xef\xbf\xbd" },
    { "ls\xe2\x80\xa8ps\xe2\x80\xa9", MAILOAUTH_MESSAGE_STRLEN, "ls ps" },
    { "rlo\xe2\x80\xaetxt.exe", MAILOAUTH_MESSAGE_STRLEN,
      "rlo\xef\xbf\xbdtxt.exe" },
  };
  size_t i;

  for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    struct mailoauth_message *msg = new_msg();
    struct parsed m;
    char *got;

    ck_assert_int_eq(mailoauth_message_set_subject(msg, cases[i].in,
      cases[i].len), 0);
    render_check(msg, &m);
    got = subject_of(&m);
    ck_assert_msg(strcmp(got, cases[i].want) == 0, "case %zu: '%s'", i, got);
    free(got);
    parsed_free(&m);
    mailoauth_message_free(msg);
  }
}
END_TEST

START_TEST(test_display_names) {
  static const struct {
    const char *in;
    const char *want;
  } cases[] = {
    { "Plain Name", NULL },
    { "Quote \" and \\ backslash", NULL },
    { "Doe, John (Files)", NULL },
    { "\xc3\x84lice \xc3\x9cnderwood", NULL },
    { "\xe5\xb1\xb1\xe7\x94\xb0 \xe5\xa4\xaa\xe9\x83\x8e", NULL },
    { "=?UTF-8?Q?sneaky?=", NULL },
    { "Evil\r\nBcc: victim@x.example", "Evil Bcc: victim@x.example" },
    { "A very long display name that cannot possibly fit on one header "
      "line in quotes", NULL },
  };
  size_t i;

  for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    struct mailoauth_message *msg = mailoauth_message_create();
    struct parsed m;
    struct mbox mb[4];
    int n;

    mailoauth_message_set_from(msg, FROM, cases[i].in);
    mailoauth_message_add_recipient(msg, MAILOAUTH_MESSAGE_TO, ALICE,
      cases[i].in);
    mailoauth_message_add_recipient(msg, MAILOAUTH_MESSAGE_TO,
      "bob@example.com", "Bob");
    mailoauth_message_add_recipient(msg, MAILOAUTH_MESSAGE_CC,
      "carol@example.com", cases[i].in);
    render_check(msg, &m);

    n = parse_mailboxes(hdr_get(&m.top, "From"), mb, 4);
    ck_assert_int_eq(n, 1);
    ck_assert_str_eq(mb[0].addr, FROM);
    ck_assert_str_eq(mb[0].name, cases[i].want ? cases[i].want : cases[i].in);
    mboxes_free(mb, n);

    n = parse_mailboxes(hdr_get(&m.top, "To"), mb, 4);
    ck_assert_int_eq(n, 2);
    ck_assert_str_eq(mb[0].addr, ALICE);
    ck_assert_str_eq(mb[0].name, cases[i].want ? cases[i].want : cases[i].in);
    ck_assert_str_eq(mb[1].addr, "bob@example.com");
    ck_assert_str_eq(mb[1].name, "Bob");
    mboxes_free(mb, n);

    n = parse_mailboxes(hdr_get(&m.top, "Cc"), mb, 4);
    ck_assert_int_eq(n, 1);
    ck_assert_str_eq(mb[0].name, cases[i].want ? cases[i].want : cases[i].in);
    mboxes_free(mb, n);

    parsed_free(&m);
    mailoauth_message_free(msg);
  }
}
END_TEST

START_TEST(test_many_recipients_fold) {
  struct mailoauth_message *msg = mailoauth_message_create();
  struct parsed m;
  struct mbox mb[64];
  char addr[64], name[64];
  int i, n;

  mailoauth_message_set_from(msg, FROM, NULL);
  for (i = 0; i < 40; i++) {
    snprintf(addr, sizeof(addr), "user%d@example.com", i);
    snprintf(name, sizeof(name), i % 2 ? "User %d" : "\xc3\x9c%d", i);
    ck_assert_int_eq(mailoauth_message_add_recipient(msg,
      MAILOAUTH_MESSAGE_TO, addr, name), 0);
  }
  render_check(msg, &m);
  n = parse_mailboxes(hdr_get(&m.top, "To"), mb, 64);
  ck_assert_int_eq(n, 40);
  for (i = 0; i < 40; i++) {
    snprintf(addr, sizeof(addr), "user%d@example.com", i);
    snprintf(name, sizeof(name), i % 2 ? "User %d" : "\xc3\x9c%d", i);
    ck_assert_str_eq(mb[i].addr, addr);
    ck_assert_str_eq(mb[i].name, name);
  }
  mboxes_free(mb, n);
  parsed_free(&m);
  mailoauth_message_free(msg);

  /* The recipient limit. */
  msg = mailoauth_message_create();
  for (i = 0; i < MAILOAUTH_MESSAGE_MAX_RCPTS; i++) {
    snprintf(addr, sizeof(addr), "u%d@example.com", i);
    ck_assert_int_eq(mailoauth_message_add_recipient(msg,
      MAILOAUTH_MESSAGE_BCC, addr, NULL), 0);
  }
  ck_assert_int_eq(mailoauth_message_add_recipient(msg,
    MAILOAUTH_MESSAGE_BCC, "one@more.example", NULL), -1);
  ck_assert_int_eq(errno, E2BIG);
  mailoauth_message_free(msg);
}
END_TEST

#define STR MAILOAUTH_MESSAGE_STRLEN

START_TEST(test_body_encodings) {
  static const struct {
    const char *in;
    size_t len;
    const char *cte;
    const char *want;
  } cases[] = {
    { "plain\nascii\n", STR, "7bit", "plain\r\nascii\r\n" },
    { "no final newline", STR, "7bit", "no final newline\r\n" },
    { "cr\ronly\r\nmixed\n\rend", STR, "7bit",
      "cr\r\nonly\r\nmixed\r\n\r\nend\r\n" },
    { ".leading dot\n..two\nFrom me\n", STR, "7bit",
      ".leading dot\r\n..two\r\nFrom me\r\n" },
    { "R\xc3\xa9sum\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x98\x80\n", STR,
      "quoted-printable",
      "R\xc3\xa9sum\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x98\x80\r\n" },
    { "nul\0here \xff\n", 11, "quoted-printable",
      "nul\xef\xbf\xbdhere \xef\xbf\xbd\r\n" },
    { "trailing space \nand tab\t\n", STR, "7bit",
      "trailing space \r\nand tab\t\r\n" },
    { "\xc3\xa9 trailing space \n.dot\nFrom x\n= sign\n", STR,
      "quoted-printable",
      "\xc3\xa9 trailing space \r\n.dot\r\nFrom x\r\n= sign\r\n" },
    { "", 0, "7bit", "" },
  };
  size_t i;

  for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    struct mailoauth_message *msg = new_msg();
    struct parsed m;

    ck_assert_int_eq(mailoauth_message_set_body(msg, cases[i].in,
      cases[i].len), 0);
    render_check(msg, &m);
    ck_assert_str_eq(hdr_get(&m.top, "Content-Transfer-Encoding"),
      cases[i].cte);
    ck_assert_uint_eq(m.text_len, strlen(cases[i].want));
    ck_assert_msg(memcmp(m.text, cases[i].want, m.text_len) == 0,
      "case %zu: %s", i, m.text);
    parsed_free(&m);
    mailoauth_message_free(msg);
  }
}
END_TEST

START_TEST(test_body_long_lines) {
  static const size_t lens[] = { 76, 77, 998, 999, 5000 };
  size_t i;

  for (i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
    struct mailoauth_message *msg = new_msg();
    struct parsed m;
    char *body = malloc(lens[i] + 3);
    size_t k;

    for (k = 0; k < lens[i]; k++) {
      body[k] = (char) ('a' + k % 26);
      if (k % 50 == 49) {
        body[k] = '=';
      }
    }
    memcpy(body + lens[i], "\r\n", 3);
    ck_assert_int_eq(mailoauth_message_set_body(msg, body,
      MAILOAUTH_MESSAGE_STRLEN), 0);
    render_check(msg, &m);
    ck_assert_str_eq(hdr_get(&m.top, "Content-Transfer-Encoding"),
      lens[i] > 998 ? "quoted-printable" : "7bit");
    ck_assert_str_eq((char *) m.text, body);
    free(body);
    parsed_free(&m);
    mailoauth_message_free(msg);
  }
}
END_TEST

START_TEST(test_digest_body) {
  static const char *items[] = {
    "/in/a.txt (1 KB, alice, sftp)",
    "/in/evil\nBcc: x@y.example\r\n.\r\n (2 KB)",
    "/in/\xe6\x97\xa5\xe6\x9c\xac.pdf",
    "  indented   item  ",
    NULL,
    "/in/bad\xff.bin",
  };
  struct mailoauth_message *msg = new_msg();
  struct parsed m;
  const char *want =
    "3 new files:\r\n"
    "/in/a.txt (1 KB, alice, sftp)\r\n"
    "/in/evil Bcc: x@y.example  .   (2 KB)\r\n"
    "/in/\xe6\x97\xa5\xe6\x9c\xac.pdf\r\n"
    "  indented   item  \r\n"
    "/in/bad\xef\xbf\xbd.bin\r\n"
    "-- \r\nmod_mailoauth\r\n";

  ck_assert_int_eq(mailoauth_message_set_digest_body(msg, "3 new files:",
    items, 6, "-- \nmod_mailoauth\n"), 0);
  render_check(msg, &m);
  ck_assert_str_eq((char *) m.text, want);
  parsed_free(&m);

  ck_assert_int_eq(mailoauth_message_set_digest_body(msg, NULL, NULL, 0,
    NULL), 0);
  ck_assert_int_eq(mailoauth_message_set_digest_body(msg, NULL, NULL, 1,
    NULL), -1);
  ck_assert_int_eq(errno, EINVAL);
  mailoauth_message_free(msg);
}
END_TEST

static void check_attachment_roundtrip(size_t size, uint32_t seed) {
  struct mailoauth_message *msg = new_msg();
  struct parsed m;
  unsigned char *data = random_bytes(size, seed);
  char path[256], *plain, *ext;
  const char *cd;

  make_file("data.bin", data, size, path, sizeof(path));
  ck_assert_int_eq(mailoauth_message_set_body(msg, "see attached\n",
    MAILOAUTH_MESSAGE_STRLEN), 0);
  ck_assert_int_eq(mailoauth_message_attach_file(msg, path, "report.pdf",
    MAILOAUTH_MESSAGE_STRLEN, NULL), 0);
  ck_assert_int_eq(mailoauth_message_attachment_size(msg), (off_t) size);
  render_check(msg, &m);

  ck_assert_str_eq((char *) m.text, "see attached");
  ck_assert_str_eq(hdr_get(&m.part[1], "Content-Type"),
    "application/pdf; name=\"report.pdf\"");
  cd = hdr_get(&m.part[1], "Content-Disposition");
  ck_assert_str_eq(cd, "attachment; filename=\"report.pdf\"");
  ext = get_param(cd, "filename", &plain);
  ck_assert_ptr_null(ext);
  ck_assert_str_eq(plain, "report.pdf");
  free(plain);

  ck_assert_uint_eq(m.file_len, size);
  ck_assert(size == 0 || memcmp(m.file, data, size) == 0);

  free(data);
  parsed_free(&m);
  mailoauth_message_free(msg);
  unlink(path);
}

START_TEST(test_attachment_sizes) {
  static const size_t sizes[] = { 0, 1, 2, 3, 56, 57, 58, 114,
    57 * 1024 - 1, 57 * 1024, 57 * 1024 + 1, 1024 * 1024, 3 * 1024 * 1024 + 7 };
  size_t i;

  for (i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
    check_attachment_roundtrip(sizes[i], (uint32_t) (i + 1));
  }
}
END_TEST

/* For Graph: the Bcc header on request, and the message without its file
 * while the file stays available for a separate upload.
 */
START_TEST(test_bcc_header_and_omitted_attachment) {
  struct mailoauth_message *msg = new_msg();
  struct parsed m;
  const char *name, *type;
  char path[256], *out;
  size_t len;
  off_t size;
  int fd;

  ck_assert_int_eq(mailoauth_message_add_recipient(msg,
    MAILOAUTH_MESSAGE_BCC, "hidden@secret.example", "Hidden"), 0);
  ck_assert_int_eq(mailoauth_message_get_attachment(msg, &fd, &name, &type,
    &size), -1);
  ck_assert_int_eq(errno, ENOENT);

  make_file("g.pdf", (const unsigned char *) "%PDF-1.4 x", 10, path,
    sizeof(path));
  ck_assert_int_eq(mailoauth_message_attach_file(msg, path, NULL, 0, NULL),
    0);
  ck_assert_int_eq(mailoauth_message_set_bcc_header(msg, 1), 0);
  ck_assert_int_eq(mailoauth_message_set_omit_attachment(msg, 1), 0);
  /* (check_message() insists on no Bcc header, rightly for SMTP.) */
  out = render(msg, &len);
  ck_assert_ptr_nonnull(strstr(out, "\r\nBcc: hidden@secret.example\r\n"));
  ck_assert_ptr_null(memmem(out, len, "Hidden", 6));
  ck_assert_ptr_null(memmem(out, len, "multipart", 9));
  ck_assert_ptr_null(memmem(out, len, "g.pdf", 5));
  free(out);

  ck_assert_int_eq(mailoauth_message_get_attachment(msg, &fd, &name, &type,
    &size), 0);
  ck_assert_int_ge(fd, 0);
  ck_assert_str_eq(name, "g.pdf");
  ck_assert_str_eq(type, "application/pdf");
  ck_assert_int_eq((int) size, 10);

  /* Back on: the file is in the message again; off: no Bcc header. */
  ck_assert_int_eq(mailoauth_message_set_omit_attachment(msg, 0), 0);
  ck_assert_int_eq(mailoauth_message_set_bcc_header(msg, 0), 0);
  render_check(msg, &m);
  ck_assert_uint_eq(m.file_len, 10);
  ck_assert_int_eq(hdr_count(&m.top, "Bcc"), 0);
  parsed_free(&m);
  mailoauth_message_free(msg);
  unlink(path);
}
END_TEST

START_TEST(test_attachment_empty_body) {
  struct mailoauth_message *msg = new_msg();
  struct parsed m;
  char path[256];

  make_file("e.txt", (const unsigned char *) "", 0, path, sizeof(path));
  ck_assert_int_eq(mailoauth_message_attach_file(msg, path, NULL, 0, NULL),
    0);
  render_check(msg, &m);
  ck_assert_uint_eq(m.text_len, 0);
  ck_assert_uint_eq(m.file_len, 0);
  ck_assert_str_eq(hdr_get(&m.part[1], "Content-Type"),
    "text/plain; name=\"e.txt\"");
  parsed_free(&m);
  mailoauth_message_free(msg);
  unlink(path);
}
END_TEST

/* Attachment names: the RFC 2231 value decodes to the cleaned name, the
 * fallback is plain ASCII safe in a quoted string.
 */
START_TEST(test_attachment_names) {
  static const struct {
    const char *in;
    size_t len;
    const char *want;           /* RFC 2231 value; NULL: none expected */
    const char *fallback;
  } cases[] = {
    { "report.pdf", 10, NULL, "report.pdf" },
    { "R\xc3\xa9sum\xc3\xa9.pdf", 12, "R\xc3\xa9sum\xc3\xa9.pdf",
      "Resume.pdf" },
    { "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e.txt", 13,
      "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e.txt", "___.txt" },
    { "\xf0\x9f\x98\x80 party.zip", 14, "\xf0\x9f\x98\x80 party.zip",
      "_ party.zip" },
    { "line\nbreak.txt", 14, NULL, "line break.txt" },
    { "cr\r\nlf.txt", 10, NULL, "cr  lf.txt" },
    { "nul\0name.txt", 12, "nul\xef\xbf\xbdname.txt", "nul_name.txt" },
    { "dir/..\\x.txt", 12, NULL, "dir_.._x.txt" },
    { "quote\"back\\slash.txt", 20, "quote\"back_slash.txt",
      "quote_back_slash.txt" },
    { "inv\xff\xfe.txt", 9, "inv\xef\xbf\xbd\xef\xbf\xbd.txt",
      "inv__.txt" },
    { "invoice\xe2\x80\xae" "fdp.exe", 17, "invoice\xef\xbf\xbd" "fdp.exe",
      "invoice_fdp.exe" },
    { "what?*:<>|.txt", 14, "what?*:<>|.txt", "what______.txt" },
    { "", 0, NULL, "attachment" },
    { "\n", 1, NULL, " " },
  };
  size_t i;
  char path[256];

  make_file("x.bin", (const unsigned char *) "abc", 3, path, sizeof(path));

  for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    struct mailoauth_message *msg = new_msg();
    struct parsed m;
    char *plain, *ext, *ctplain, *ctext;
    const char *cd;
    size_t k;

    ck_assert_int_eq(mailoauth_message_attach_file(msg, path, cases[i].in,
      cases[i].len, "application/octet-stream"), 0);
    render_check(msg, &m);
    cd = hdr_get(&m.part[1], "Content-Disposition");
    ck_assert_msg(strncmp(cd, "attachment;", 11) == 0, "%s", cd);
    ext = get_param(cd, "filename", &plain);

    if (cases[i].want != NULL) {
      ck_assert_msg(ext != NULL && strcmp(ext, cases[i].want) == 0,
        "case %zu: got '%s'", i, ext);
    } else {
      ck_assert_ptr_null(ext);
    }
    ck_assert_ptr_nonnull(plain);
    ck_assert_msg(strcmp(plain, cases[i].fallback) == 0,
      "case %zu: fallback '%s'", i, plain);
    for (k = 0; plain[k] != '\0'; k++) {
      ck_assert(plain[k] >= 32 && plain[k] < 127 && plain[k] != '"' &&
        plain[k] != '\\');
    }

    ctext = get_param(hdr_get(&m.part[1], "Content-Type"), "name",
      &ctplain);
    ck_assert_ptr_null(ctext);
    ck_assert_str_eq(ctplain, plain);
    ck_assert_str_eq((char *) m.file, "abc");

    free(ext);
    free(plain);
    free(ctplain);
    parsed_free(&m);
    mailoauth_message_free(msg);
  }

  unlink(path);
}
END_TEST

START_TEST(test_attachment_long_names) {
  static const char *units[] = { "a", "\xc3\xa9", "\xe6\x97\xa5",
    "\xf0\x9f\x98\x80", " " };
  char path[256];
  size_t u;

  make_file("y.bin", (const unsigned char *) "xyz", 3, path, sizeof(path));

  for (u = 0; u < sizeof(units) / sizeof(units[0]); u++) {
    struct mailoauth_message *msg = new_msg();
    struct parsed m;
    char name[2048], *plain, *ext, want[2048];
    size_t ulen = strlen(units[u]), n = 0, wl;

    while (n + ulen + 4 < 1200) {
      memcpy(name + n, units[u], ulen);
      n += ulen;
    }
    memcpy(name + n, ".pdf", 5);
    n += 4;

    ck_assert_int_eq(mailoauth_message_attach_file(msg, path, name, n,
      NULL), 0);
    render_check(msg, &m);
    ext = get_param(hdr_get(&m.part[1], "Content-Disposition"), "filename",
      &plain);
    ck_assert_ptr_nonnull(ext);

    /* Cut to the limit at a character boundary, keeping the extension. */
    wl = MAILOAUTH_MESSAGE_MAX_FILENAME - 4;
    memcpy(want, name, wl);
    want[wl] = '\0';
    while (!utf8_valid((unsigned char *) want, wl)) {
      want[--wl] = '\0';
    }
    strcat(want, ".pdf");
    ck_assert_str_eq(ext, want);

    ck_assert_uint_le(strlen(plain), 60);
    ck_assert_str_eq(plain + strlen(plain) - 4, ".pdf");
    ck_assert(strncmp(hdr_get(&m.part[1], "Content-Type"),
      "application/pdf;", 16) == 0);

    free(ext);
    free(plain);
    parsed_free(&m);
    mailoauth_message_free(msg);
  }

  /* A long name within the limit keeps its extension in the fallback. */
  {
    struct mailoauth_message *msg = new_msg();
    struct parsed m;
    char name[300], *plain, *ext;
    size_t plen;

    memset(name, 'n', 200);
    strcpy(name + 200, ".xlsx");
    ck_assert_int_eq(mailoauth_message_attach_file(msg, path, name,
      MAILOAUTH_MESSAGE_STRLEN, NULL), 0);
    render_check(msg, &m);
    ext = get_param(hdr_get(&m.part[1], "Content-Disposition"), "filename",
      &plain);
    ck_assert_str_eq(ext, name);
    plen = strlen(plain);
    ck_assert_uint_eq(plen, 60);
    ck_assert_str_eq(plain + plen - 5, ".xlsx");
    ck_assert(strncmp(hdr_get(&m.part[1], "Content-Type"),
      "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet;",
      66) == 0);
    free(ext);
    free(plain);
    parsed_free(&m);
    mailoauth_message_free(msg);
  }

  unlink(path);
}
END_TEST

START_TEST(test_content_types) {
  static const struct {
    const char *name;
    const char *type;
  } cases[] = {
    { "a.pdf", "application/pdf" },
    { "A.PDF", "application/pdf" },
    { "photo.JpG", "image/jpeg" },
    { "archive.tar.gz", "application/gzip" },
    { "data.csv", "text/csv" },
    { "noext", "application/octet-stream" },
    { "trailingdot.", "application/octet-stream" },
    { ".bashrc", "application/octet-stream" },
    { "dir.pdf/file", "application/octet-stream" },
    { "x.unknownext", "application/octet-stream" },
    { "mail.eml", "application/octet-stream" },
    { "", "application/octet-stream" },
  };
  struct mailoauth_message *msg = new_msg();
  char path[256];
  size_t i;

  for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    ck_assert_msg(strcmp(mailoauth_message_content_type(cases[i].name,
      MAILOAUTH_MESSAGE_STRLEN), cases[i].type) == 0, "%s", cases[i].name);
  }
  ck_assert_str_eq(mailoauth_message_content_type(NULL, 0),
    "application/octet-stream");
  ck_assert_str_eq(mailoauth_message_content_type("a.pdfx", 5),
    "application/pdf");

  make_file("z.bin", (const unsigned char *) "1", 1, path, sizeof(path));
  ck_assert_int_eq(mailoauth_message_attach_file(msg, path, "x", 1,
    "text/plain"), 0);
  ck_assert_int_eq(mailoauth_message_attach_file(msg, path, "x", 1,
    "text/plain\r\nBcc: v@x.example"), -1);
  ck_assert_int_eq(errno, EINVAL);
  ck_assert_int_eq(mailoauth_message_attach_file(msg, path, "x", 1,
    "text"), -1);
  ck_assert_int_eq(mailoauth_message_attach_file(msg, path, "x", 1,
    "text/plain; charset=x"), -1);
  ck_assert_int_eq(mailoauth_message_attach_file(msg, path, "x", 1,
    "a/b/c"), -1);
  mailoauth_message_free(msg);
  unlink(path);
}
END_TEST

START_TEST(test_attachment_refusals) {
  struct mailoauth_message *msg = new_msg();
  char path[256], link[256], fifo[256];

  make_file("real.txt", (const unsigned char *) "x", 1, path, sizeof(path));
  snprintf(link, sizeof(link), "%s/link.txt", tmpdir);
  snprintf(fifo, sizeof(fifo), "%s/fifo", tmpdir);
  ck_assert_int_eq(symlink(path, link), 0);
  ck_assert_int_eq(mkfifo(fifo, 0600), 0);

  ck_assert_int_eq(mailoauth_message_attach_file(msg, link, NULL, 0, NULL),
    -1);
  ck_assert_int_eq(errno, ELOOP);
  ck_assert_int_eq(mailoauth_message_attach_file(msg, fifo, NULL, 0, NULL),
    -1);
  ck_assert_int_eq(errno, EINVAL);
  ck_assert_int_eq(mailoauth_message_attach_file(msg, tmpdir, NULL, 0,
    NULL), -1);
  ck_assert_int_eq(errno, EINVAL);
  ck_assert_int_eq(mailoauth_message_attach_file(msg, "/nonexistent/x",
    NULL, 0, NULL), -1);
  ck_assert_int_eq(errno, ENOENT);
  ck_assert_int_eq(mailoauth_message_attachment_size(msg), -1);

  unlink(link);
  unlink(fifo);
  unlink(path);
  mailoauth_message_free(msg);
}
END_TEST

/* A file that keeps growing is sent as it was when attached; one that
 * shrinks ends early, still well-formed.
 */
START_TEST(test_attachment_changes) {
  struct mailoauth_message *msg = new_msg();
  unsigned char *data = random_bytes(200000, 7);
  struct parsed m;
  char path[256];
  int fd;

  make_file("grow.bin", data, 100000, path, sizeof(path));
  ck_assert_int_eq(mailoauth_message_attach_file(msg, path, NULL, 0, NULL),
    0);
  fd = open(path, O_WRONLY|O_APPEND);
  ck_assert_int_eq(write(fd, data + 100000, 100000), 100000);
  close(fd);
  render_check(msg, &m);
  ck_assert_uint_eq(m.file_len, 100000);
  ck_assert(memcmp(m.file, data, 100000) == 0);
  parsed_free(&m);

  ck_assert_int_eq(truncate(path, 12345), 0);
  render_check(msg, &m);
  ck_assert_uint_eq(m.file_len, 12345);
  ck_assert(memcmp(m.file, data, 12345) == 0);
  parsed_free(&m);

  ck_assert_int_eq(truncate(path, 0), 0);
  render_check(msg, &m);
  ck_assert_uint_eq(m.file_len, 0);
  parsed_free(&m);

  /* Replacing the file after attaching does not change what is sent. */
  mailoauth_message_free(msg);
  msg = new_msg();
  make_file("swap.bin", data, 1000, path, sizeof(path));
  ck_assert_int_eq(mailoauth_message_attach_file(msg, path, NULL, 0, NULL),
    0);
  unlink(path);
  make_file("swap.bin", data + 5000, 1000, path, sizeof(path));
  render_check(msg, &m);
  ck_assert_uint_eq(m.file_len, 1000);
  ck_assert(memcmp(m.file, data, 1000) == 0);
  parsed_free(&m);

  unlink(path);
  free(data);
  mailoauth_message_free(msg);
}
END_TEST

/* attach_fd: the limit applies to the file as opened, and what is sent
 * stays within it however the file grows afterwards.
 */
START_TEST(test_attachment_fd_limit) {
  struct mailoauth_message *msg = new_msg();
  unsigned char *data = random_bytes(3000, 11);
  struct parsed m;
  char path[256];
  int fd, wfd;

  make_file("cap.bin", data, 1000, path, sizeof(path));
  fd = open(path, O_RDONLY);
  ck_assert_int_ge(fd, 0);

  errno = 0;
  ck_assert_int_eq(mailoauth_message_attach_fd(msg, fd, "cap.bin",
    MAILOAUTH_MESSAGE_STRLEN, NULL, 999), -1);
  ck_assert_int_eq(errno, EFBIG);
  ck_assert_int_eq(mailoauth_message_attachment_size(msg), -1);
  /* Refused: the descriptor is still the caller's. */
  ck_assert_int_ge(fcntl(fd, F_GETFD), 0);

  ck_assert_int_eq(mailoauth_message_attach_fd(msg, fd, "cap.bin",
    MAILOAUTH_MESSAGE_STRLEN, NULL, 1000), 0);
  wfd = open(path, O_WRONLY|O_APPEND);
  ck_assert_int_eq(write(wfd, data + 1000, 2000), 2000);
  close(wfd);
  render_check(msg, &m);
  ck_assert_uint_eq(m.file_len, 1000);
  ck_assert(memcmp(m.file, data, 1000) == 0);
  parsed_free(&m);

  /* Anything but a regular file is refused. */
  fd = open(tmpdir, O_RDONLY|O_DIRECTORY);
  errno = 0;
  ck_assert_int_eq(mailoauth_message_attach_fd(msg, fd, "d", 1, NULL, -1),
    -1);
  ck_assert_int_eq(errno, EINVAL);
  close(fd);
  ck_assert_int_eq(mailoauth_message_attachment_size(msg), 1000);

  unlink(path);
  free(data);
  mailoauth_message_free(msg);
}
END_TEST

START_TEST(test_escape) {
  static const struct {
    const char *in;
    size_t len;
    const char *want;
  } cases[] = {
    { "plain.txt", MAILOAUTH_MESSAGE_STRLEN, "plain.txt" },
    { "a\r\nBcc: x@y", MAILOAUTH_MESSAGE_STRLEN, "a\\r\\nBcc: x@y" },
    { "t\tab\x01\x1b[31m\x7f", MAILOAUTH_MESSAGE_STRLEN,
      "t\\tab\\x01\\x1B[31m\\x7F" },
    { "nul\0.txt", 8, "nul\\x00.txt" },
    { "r\xc3\xa9sum\xc3\xa9 \xe6\x97\xa5", MAILOAUTH_MESSAGE_STRLEN,
      "r\xc3\xa9sum\xc3\xa9 \xe6\x97\xa5" },
    { "bad\xff\xc3(", MAILOAUTH_MESSAGE_STRLEN, "bad\\xFF\\xC3(" },
    { "nel\xc2\x85ls\xe2\x80\xa8ps\xe2\x80\xa9", MAILOAUTH_MESSAGE_STRLEN,
      "nel\\u0085ls\\u2028ps\\u2029" },
    { "inv\xe2\x80\xae" "fdp.exe", MAILOAUTH_MESSAGE_STRLEN,
      "inv\\u202Efdp.exe" },
    { "keep\xef\xbf\xbd", MAILOAUTH_MESSAGE_STRLEN, "keep\xef\xbf\xbd" },
    { "back\\slash", MAILOAUTH_MESSAGE_STRLEN, "back\\slash" },
  };
  size_t i, len;

  for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    char *out = mailoauth_message_escape(cases[i].in, cases[i].len, &len);

    ck_assert_ptr_nonnull(out);
    ck_assert_str_eq(out, cases[i].want);
    ck_assert_uint_eq(len, strlen(cases[i].want));
    ck_assert_ptr_null(strpbrk(out, "\r\n"));
    free(out);
  }
}
END_TEST

/* The read callback in small pieces gives the same bytes as render(), and
 * again after a rewind.
 */
START_TEST(test_stream_chunks) {
  static const size_t chunks[] = { 1, 2, 3, 7, 76, 77, 78, 1000, 16384 };
  struct mailoauth_message *msg = new_msg();
  unsigned char *data = random_bytes(300000, 99);
  char path[256], *ref, *got;
  size_t ref_len, i;

  ck_assert_uint_eq(MAILOAUTH_MESSAGE_READ_ABORT, CURL_READFUNC_ABORT);

  make_file("s.bin", data, 300000, path, sizeof(path));
  mailoauth_message_set_subject(msg, "\xe6\x97\xa5 stream", 10);
  mailoauth_message_set_body(msg, "\xc3\xa9t\xc3\xa9\n", 6);
  ck_assert_int_eq(mailoauth_message_attach_file(msg, path, NULL, 0, NULL),
    0);
  ref = render(msg, &ref_len);
  got = malloc(ref_len + 16384);

  for (i = 0; i < sizeof(chunks) / sizeof(chunks[0]); i++) {
    size_t n = 0, r;

    ck_assert_int_eq(mailoauth_message_rewind(msg), 0);
    while ((r = mailoauth_message_read(got + n, 1, chunks[i], msg)) > 0) {
      REQUIRE1(r != MAILOAUTH_MESSAGE_READ_ABORT);
      REQUIRE1(r <= chunks[i]);
      n += r;
      REQUIRE1(n <= ref_len);

      /* No changes while being read. */
      REQUIRE1(mailoauth_message_set_subject(msg, "x", 1) == -1 &&
        errno == EBUSY);
    }
    ck_assert_uint_eq(n, ref_len);
    ck_assert(memcmp(got, ref, ref_len) == 0);
    /* Stays at the end. */
    ck_assert_uint_eq(mailoauth_message_read(got, 1, 10, msg), 0);
  }

  /* size * nitems as libcurl passes it. */
  {
    size_t n = 0, r;

    ck_assert_int_eq(mailoauth_message_rewind(msg), 0);
    while ((r = mailoauth_message_read(got + n, 4, 1000, msg)) > 0) {
      n += r;
    }
    ck_assert_uint_eq(n, ref_len);
  }

  ck_assert_int_eq(mailoauth_message_rewind(msg), 0);
  ck_assert_int_eq(mailoauth_message_set_subject(msg, "changed", 7), 0);
  free(ref);
  free(got);
  free(data);
  unlink(path);
  mailoauth_message_free(msg);
}
END_TEST

START_TEST(test_incomplete_message) {
  struct mailoauth_message *msg = mailoauth_message_create();
  char buf[64], *out;
  size_t len;

  ck_assert_int_eq(mailoauth_message_prepare(msg), -1);
  ck_assert_int_eq(errno, EINVAL);
  ck_assert_uint_eq(mailoauth_message_read(buf, 1, sizeof(buf), msg),
    MAILOAUTH_MESSAGE_READ_ABORT);
  ck_assert_int_eq(mailoauth_message_stream_error(msg), EINVAL);
  ck_assert_uint_eq(mailoauth_message_read(buf, 1, sizeof(buf), msg),
    MAILOAUTH_MESSAGE_READ_ABORT);
  ck_assert_int_eq(mailoauth_message_render(msg, &out, &len), -1);
  ck_assert_int_eq(errno, EINVAL);

  /* From but no recipient. */
  ck_assert_int_eq(mailoauth_message_rewind(msg), 0);
  ck_assert_int_eq(mailoauth_message_set_from(msg, FROM, NULL), 0);
  ck_assert_int_eq(mailoauth_message_prepare(msg), -1);
  ck_assert_int_eq(mailoauth_message_add_recipient(msg, MAILOAUTH_MESSAGE_TO,
    ALICE, NULL), 0);
  ck_assert_int_eq(mailoauth_message_render(msg, &out, &len), 0);
  free(out);

  ck_assert_int_eq(mailoauth_message_set_mailer(msg, "bad\r\nX: y"), -1);
  ck_assert_int_eq(mailoauth_message_set_mailer(msg, ""), -1);
  ck_assert_int_eq(mailoauth_message_set_mailer(msg, NULL), 0);
  ck_assert_uint_eq(mailoauth_message_read(buf, 1, sizeof(buf), NULL),
    MAILOAUTH_MESSAGE_READ_ABORT);
  mailoauth_message_free(msg);
  mailoauth_message_free(NULL);
}
END_TEST

/* Everything hostile at once, with an attachment: still exactly the
 * expected headers, nothing injected.
 */
START_TEST(test_everything_hostile) {
  struct mailoauth_message *msg = mailoauth_message_create();
  struct parsed m;
  char path[256], subject[2100], *out;
  size_t i, len;
  static const char name[] = "x\r\nContent-Type: text/html\r\n\r\n<b>\0"
    "\xff.pdf";

  for (i = 0; i < sizeof(subject) - 1; i++) {
    subject[i] = "\r\nBcc: v@x.example\0\xe6\x97\xa5\xff"[i % 24];
  }
  subject[sizeof(subject) - 1] = '\0';

  make_file("h.bin", (const unsigned char *) "data", 4, path, sizeof(path));
  mailoauth_message_set_from(msg, FROM, "\r\nBcc: a@b.example");
  mailoauth_message_add_recipient(msg, MAILOAUTH_MESSAGE_TO, ALICE,
    "\"\r\n\tTo: b@c.example");
  ck_assert_int_eq(mailoauth_message_set_subject(msg, subject,
    sizeof(subject) - 1), 0);
  ck_assert_int_eq(mailoauth_message_set_body(msg, "\r\n.\r\nQUIT\r\n",
    MAILOAUTH_MESSAGE_STRLEN), 0);
  ck_assert_int_eq(mailoauth_message_attach_file(msg, path, name,
    sizeof(name) - 1, NULL), 0);
  out = render(msg, &len);
  check_message(out, len, &m, 78);
  ck_assert_int_eq(hdr_count(&m.part[1], "Content-Type"), 1);
  ck_assert_int_eq(hdr_count(&m.part[1], "Content-Disposition"), 1);
  ck_assert_int_eq(m.part[1].nh, 3);
  ck_assert_uint_eq(m.file_len, 4);
  parsed_free(&m);
  free(out);
  mailoauth_message_free(msg);
  unlink(path);
}
END_TEST

static void setup(void) {
  strcpy(tmpdir, "/tmp/mailoauth-message.XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

/* Also after a failed test, which leaves its files behind. */
static void teardown(void) {
  DIR *d = opendir(tmpdir);
  struct dirent *de;

  while (d != NULL && (de = readdir(d)) != NULL) {
    char path[512];

    if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0) {
      snprintf(path, sizeof(path), "%s/%s", tmpdir, de->d_name);
      unlink(path);
    }
  }
  if (d != NULL) {
    closedir(d);
  }
  rmdir(tmpdir);
}

int main(void) {
  Suite *s = suite_create("message");
  TCase *tc = tcase_create("message");
  SRunner *sr;
  int failed;

  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_plain_message);
  tcase_add_test(tc, test_date_offsets);
  tcase_add_test(tc, test_message_id);
  tcase_add_test(tc, test_bcc_envelope_only);
  tcase_add_test(tc, test_addresses);
  tcase_add_test(tc, test_subject_roundtrip);
  tcase_add_test(tc, test_subject_long);
  tcase_add_test(tc, test_hostile_subject);
  tcase_add_test(tc, test_display_names);
  tcase_add_test(tc, test_many_recipients_fold);
  tcase_add_test(tc, test_body_encodings);
  tcase_add_test(tc, test_body_long_lines);
  tcase_add_test(tc, test_digest_body);
  tcase_add_test(tc, test_attachment_sizes);
  tcase_add_test(tc, test_attachment_empty_body);
  tcase_add_test(tc, test_bcc_header_and_omitted_attachment);
  tcase_add_test(tc, test_attachment_names);
  tcase_add_test(tc, test_attachment_long_names);
  tcase_add_test(tc, test_content_types);
  tcase_add_test(tc, test_attachment_refusals);
  tcase_add_test(tc, test_attachment_changes);
  tcase_add_test(tc, test_attachment_fd_limit);
  tcase_add_test(tc, test_escape);
  tcase_add_test(tc, test_stream_chunks);
  tcase_add_test(tc, test_incomplete_message);
  tcase_add_test(tc, test_everything_hostile);
  suite_add_tcase(s, tc);

  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
