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

static const char *trace_channel = "mailoauth.mime";

/* Transport padding accepted after a boundary (RFC 2046 LWSP). */
#define MIME_MAX_PAD            128

/* A line start held back while it may be a boundary line:
 * "--" boundary "--" padding CR.
 */
#define MIME_LBUF_SIZE          (2 + MAILOAUTH_MIME_MAX_BOUNDARY + 2 + \
                                 MIME_MAX_PAD + 1 + 1)



/* Longest type or subtype name (RFC 6838), also used for encodings. */
#define MIME_MAX_TYPE_NAME      127

/* A header buffer this large is kept between header blocks. */
#define MIME_HBUF_KEEP          4096

#define MIME_EOL_LF             1
#define MIME_EOL_CRLF           2

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
  struct mime_uu uu;
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
    case MAILOAUTH_MIME_W_BAD_UUENCODE:
      return "broken uuencode";
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
        if (mailoauth_mime_hexval(c) >= 0) {
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
        if (mailoauth_mime_hexval(c) >= 0) {
          mime_obuf_addc(o, (unsigned char) (mailoauth_mime_hexval(q->hex1) * 16 +
            mailoauth_mime_hexval(c)));
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
      mailoauth_mime_b64_update(&f->b64, d, n, mime_deliver, f);
      break;

    case MAILOAUTH_MIME_ENC_UUENCODE:
      mailoauth_mime_uu_update(&f->uu, d, n, mime_deliver, f);
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

    case MAILOAUTH_MIME_ENC_UUENCODE:
      mailoauth_mime_uu_update(&f->uu, (const unsigned char *) "\n", 1,
        mime_deliver, f);
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
      mailoauth_mime_b64_final(&f->b64, mime_deliver, f);
      break;

    case MAILOAUTH_MIME_ENC_UUENCODE:
      mailoauth_mime_uu_final(&f->uu, mime_deliver, f);
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
    if (blk[r] == '\n' && r + 1 < n && mailoauth_mime_is_wsp((unsigned char) blk[r + 1])) {
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
    if (llen == 0 || mailoauth_mime_is_wsp((unsigned char) line[0])) {
      continue;         /* a continuation with nothing to continue */
    }

    colon = memchr(line, ':', llen);
    if (colon == NULL) {
      continue;
    }
    nlen = (size_t) (colon - line);
    while (nlen > 0 && mailoauth_mime_is_wsp((unsigned char) line[nlen - 1])) {
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

        while (vlen > 0 && (mailoauth_mime_is_wsp((unsigned char) *v) || *v == '\r')) {
          v++;
          vlen--;
        }
        while (vlen > 0 && (mailoauth_mime_is_wsp((unsigned char) v[vlen - 1]) ||
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
      i = mailoauth_mime_skip_cfws(v, n, i);
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

      i = mailoauth_mime_skip_cfws(v, n, i);
      ws = i;
      while (i < n && !mailoauth_mime_is_wsp((unsigned char) v[i]) && v[i] != ',' &&
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

  while (start < end && mailoauth_mime_is_wsp((unsigned char) v[start])) {
    start++;
  }
  while (end > start && mailoauth_mime_is_wsp((unsigned char) v[end - 1])) {
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
        i = mailoauth_mime_skip_cfws(v, n, i) - 1;
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

    k = mailoauth_mime_skip_cfws(v, n, 0);
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
  size_t i = mailoauth_mime_skip_cfws(v, n, 0), len;
  const char *tok;
  char *lower;

  tok = v + i;
  len = mailoauth_mime_token(v, n, &i, "");
  if (len > MIME_MAX_TYPE_NAME) {
    len = MIME_MAX_TYPE_NAME;
  }
  lower = mailoauth_mime_lower_dup(tok, len);
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
  if (strcmp(*name, "x-uuencode") == 0 || strcmp(*name, "uuencode") == 0 ||
      strcmp(*name, "x-uue") == 0) {
    return MAILOAUTH_MIME_ENC_UUENCODE;
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
      return mailoauth_mime_strndup(base, strlen(base));
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
    size_t n = h.len[MIME_H_CTYPE], i = mailoauth_mime_skip_cfws(ct, n, 0), tlen, slen;
    size_t tstart = i, sstart;

    tlen = mailoauth_mime_token(ct, n, &i, "/");
    i = mailoauth_mime_skip_cfws(ct, n, i);
    if (tlen > 0 && i < n && ct[i] == '/') {
      i = mailoauth_mime_skip_cfws(ct, n, i + 1);
      sstart = i;
      slen = mailoauth_mime_token(ct, n, &i, "/");
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
    size_t n = h.len[MIME_H_CDISP], i = mailoauth_mime_skip_cfws(v, n, 0), start = i;
    size_t len = mailoauth_mime_token(v, n, &i, "");
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
    size_t n = h.len[MIME_H_CID], i = mailoauth_mime_skip_cfws(v, n, 0);

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
      if (mailoauth_mime_params_scan(ct, h.len[MIME_H_CTYPE], mailoauth_mime_rawget_cb, &g) < 0) {
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

  mailoauth_mime_b64_init(&f->b64);
  mailoauth_mime_uu_init(&f->uu);
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
    if (f->uu.bad) {
      f->status |= MAILOAUTH_MIME_ST_BAD_ENCODING;
      mime_warn(p, MAILOAUTH_MIME_W_BAD_UUENCODE, f);
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
  while (i < n && mailoauth_mime_is_wsp(l[i])) {
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
      if (mailoauth_mime_is_wsp(c)) {
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
      if (mailoauth_mime_is_wsp(c)) {
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
      return mailoauth_mime_is_wsp(c) ? MIME_LK_NAME_WS : MIME_LK_BAD;

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
    line = mailoauth_mime_strndup(p->hbuf.data + p->line_start, len);
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
  p->base_section = mailoauth_mime_strndup(section, strlen(section));
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
