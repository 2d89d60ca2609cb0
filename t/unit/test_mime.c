/*
 * Unit tests: the streaming MIME parser.  Real-world message shapes (files
 * under mime-corpus/), encoded names in many charsets, and hostile input.
 * Every message is parsed whole, byte by byte and in random chunks, and the
 * three event logs (structure, statuses, hashes of the decoded bodies) must
 * be identical.
 */

#include "mailoauth/mime.h"
#include "mailoauth/names.h"

#include <check.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#if defined(__SANITIZE_ADDRESS__)
# define TEST_ASAN 1
#elif defined(__has_feature)
# if __has_feature(address_sanitizer)
#  define TEST_ASAN 1
# endif
#endif
#ifdef TEST_ASAN
/* From the sanitizer runtime (its header ships with clang only). */
size_t __sanitizer_get_current_allocated_bytes(void);
#else
# include <malloc.h>
#endif

/* ------------------------------------------------------------------------
 * Recorder
 */

struct tbuf {
  unsigned char *d;
  size_t len, size;
};

static void tbuf_add(struct tbuf *b, const void *d, size_t n) {
  if (b->len + n + 1 > b->size) {
    size_t size = b->size ? b->size : 256;

    while (size < b->len + n + 1) {
      size *= 2;
    }
    b->d = realloc(b->d, size);
    ck_assert_ptr_nonnull(b->d);
    b->size = size;
  }
  if (n > 0) {
    memcpy(b->d + b->len, d, n);
  }
  b->len += n;
  b->d[b->len] = '\0';
}

static void tbuf_printf(struct tbuf *b, const char *fmt, ...) {
  char tmp[4096];
  va_list ap;
  int n;

  va_start(ap, fmt);
  n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
  va_end(ap);
  tbuf_add(b, tmp, n < (int) sizeof(tmp) ? (size_t) n : sizeof(tmp) - 1);
}

#define MODE_ALL        0   /* bodies of leaves, descend into messages */
#define MODE_NONE       1   /* structure only */
#define MODE_EML        2   /* bodies of leaves, messages as .eml */
#define MODE_EML_BOTH   3   /* messages as .eml and descended into */

struct rpart {
  const struct mailoauth_mime_part *ptr;
  unsigned int index, depth, in_message;
  char *section, *type, *charset, *filename, *cid, *subject, *from;
  char *from_addr, *msgid, *date, *encname, *rcpts, *authres;
  int disposition, encoding, is_multipart, is_message;
  uint64_t size_hint, hash, nbytes;
  struct tbuf data;
  unsigned int status;
  int ended;
};

struct rec {
  struct tbuf log;
  struct rpart *parts;
  size_t nparts, cap;
  unsigned int stack[4096];
  unsigned int depth;
  int mode;
  size_t store_max;
  uint64_t abort_after;         /* part_data fails after this many bytes */
  uint64_t stop_after;          /* part_data returns 1 after this many */
  uint64_t seen;
  int warn[8];
  int fatal;
};

static char *xdup(const char *s) {
  return s ? strdup(s) : NULL;
}

static uint64_t fnv64(uint64_t h, const unsigned char *d, size_t n) {
  size_t i;

  for (i = 0; i < n; i++) {
    h ^= d[i];
    h *= 1099511628211ULL;
  }
  return h;
}

static struct rpart *rec_find(struct rec *r,
    const struct mailoauth_mime_part *p) {
  ck_assert_uint_lt(p->index, r->nparts);
  ck_assert_ptr_eq(r->parts[p->index].ptr, p);
  ck_assert_int_eq(r->parts[p->index].ended, 0);
  return &r->parts[p->index];
}

static int cb_begin(const struct mailoauth_mime_part *p, void *arg) {
  struct rec *r = arg;
  struct rpart *rp;

  ck_assert_uint_eq(p->index, r->nparts);
  if (r->nparts == r->cap) {
    r->cap = r->cap ? r->cap * 2 : 16;
    r->parts = realloc(r->parts, r->cap * sizeof(*r->parts));
    ck_assert_ptr_nonnull(r->parts);
  }
  rp = &r->parts[r->nparts++];
  memset(rp, 0, sizeof(*rp));
  rp->ptr = p;
  rp->index = p->index;
  rp->depth = p->depth;
  rp->in_message = p->in_message;
  rp->section = xdup(p->section);
  rp->type = xdup(p->content_type);
  rp->charset = xdup(p->charset);
  rp->filename = xdup(p->filename);
  rp->cid = xdup(p->content_id);
  rp->encname = xdup(p->encoding_name);
  ck_assert_ptr_nonnull(p->message);
  rp->subject = xdup(p->message->subject);
  rp->from = xdup(p->message->from);
  rp->from_addr = xdup(p->message->from_addr);
  rp->rcpts = xdup(p->message->recipients);
  rp->authres = xdup(p->message->auth_results);
  rp->msgid = xdup(p->message->message_id);
  rp->date = xdup(p->message->date);
  rp->disposition = p->disposition;
  rp->encoding = p->encoding;
  rp->is_multipart = p->is_multipart;
  rp->is_message = p->is_message;
  rp->size_hint = p->size_hint;
  rp->hash = 14695981039346656037ULL;

  ck_assert_uint_lt(r->depth, 4096);
  r->stack[r->depth++] = p->index;

  tbuf_printf(&r->log, "B %u [%s] d%u %s cs=%s disp=%d enc=%d(%s) mp=%d "
    "msg=%d in=%u fn=%s cid=%s size=%llu subj=%s from=%s addr=%s id=%s\n",
    p->index, p->section, p->depth, p->content_type, p->charset,
    p->disposition, p->encoding, p->encoding_name, p->is_multipart,
    p->is_message, p->in_message, p->filename ? p->filename : "-",
    p->content_id ? p->content_id : "-", (unsigned long long) p->size_hint,
    p->message->subject, p->message->from, p->message->from_addr,
    p->message->message_id);

  switch (r->mode) {
    case MODE_NONE:
      return MAILOAUTH_MIME_SKIP;
    case MODE_EML:
      return MAILOAUTH_MIME_BODY;
    case MODE_EML_BOTH:
      return MAILOAUTH_MIME_BODY | MAILOAUTH_MIME_DESCEND;
    default:
      return p->is_message ? MAILOAUTH_MIME_DESCEND : MAILOAUTH_MIME_BODY;
  }
}

static int cb_data(const struct mailoauth_mime_part *p,
    const unsigned char *d, size_t n, void *arg) {
  struct rec *r = arg;
  struct rpart *rp = rec_find(r, p);

  ck_assert_uint_gt(n, 0);
  ck_assert_uint_gt(r->depth, 0);
  ck_assert(!p->is_multipart);
  if (p->is_message) {
    /* A message's .eml bytes flow while the parts inside it are open. */
    unsigned int i;

    for (i = 0; i < r->depth && r->stack[i] != p->index; i++) {
    }
    ck_assert_uint_lt(i, r->depth);
  } else {
    ck_assert_uint_eq(r->stack[r->depth - 1], p->index);
  }

  if (rp->data.len < r->store_max) {
    size_t k = r->store_max - rp->data.len;

    tbuf_add(&rp->data, d, n < k ? n : k);
  }
  rp->hash = fnv64(rp->hash, d, n);
  rp->nbytes += n;

  r->seen += n;
  if (r->abort_after && r->seen >= r->abort_after) {
    return -1;
  }
  if (r->stop_after && rp->nbytes >= r->stop_after) {
    return 1;
  }
  return 0;
}

static int cb_end(const struct mailoauth_mime_part *p, unsigned int status,
    void *arg) {
  struct rec *r = arg;
  struct rpart *rp = rec_find(r, p);

  /* Strictly nested. */
  ck_assert_uint_gt(r->depth, 0);
  ck_assert_uint_eq(r->stack[r->depth - 1], p->index);
  r->depth--;

  rp->ended = 1;
  rp->status = status;
  if (p->is_message && (status & (MAILOAUTH_MIME_ST_TRUNCATED |
      MAILOAUTH_MIME_ST_ABORTED))) {
    /* How much .eml a message cut inside received is left open. */
    tbuf_printf(&r->log, "E %u st=%u\n", p->index, status);
  } else {
    tbuf_printf(&r->log, "E %u st=%u n=%llu h=%016llx\n", p->index, status,
      (unsigned long long) rp->nbytes, (unsigned long long) rp->hash);
  }
  return 0;
}

static void cb_error(int code, const struct mailoauth_mime_part *p,
    void *arg) {
  struct rec *r = arg;

  if (MAILOAUTH_MIME_IS_FATAL(code)) {
    ck_assert_int_eq(r->fatal, 0);
    r->fatal = code;
  } else {
    ck_assert_int_ge(code, 100);
    ck_assert_int_lt(code, 108);
    r->warn[code - 100]++;
  }
  tbuf_printf(&r->log, "W %d %s\n", code, p ? p->section : "-");
}

static void rec_free(struct rec *r) {
  size_t i;

  for (i = 0; i < r->nparts; i++) {
    struct rpart *p = &r->parts[i];

    free(p->section);
    free(p->type);
    free(p->charset);
    free(p->filename);
    free(p->cid);
    free(p->subject);
    free(p->from);
    free(p->from_addr);
    free(p->rcpts);
    free(p->authres);
    free(p->msgid);
    free(p->date);
    free(p->encname);
    free(p->data.d);
  }
  free(r->parts);
  free(r->log.d);
  free(r);
}

static uint64_t xs_state;

static uint64_t xs_next(void) {
  xs_state ^= xs_state << 13;
  xs_state ^= xs_state >> 7;
  xs_state ^= xs_state << 17;
  return xs_state;
}

#define CHUNK_WHOLE     0
#define CHUNK_BYTES     1

struct runopt {
  const struct mailoauth_mime_limits *lim;
  int mode;
  uint64_t abort_after;
  uint64_t stop_after;
};

/* chunk: CHUNK_WHOLE, CHUNK_BYTES, or a seed for random chunk sizes. */
static struct rec *run_opt(const void *msg, size_t len, uint64_t chunk,
    const struct runopt *o, int *rc_out, int *err_out) {
  struct mailoauth_mime_callbacks cb;
  struct mailoauth_mime *p;
  struct rec *r;
  const unsigned char *m = msg;
  size_t off = 0;
  int rc = 0;

  r = calloc(1, sizeof(*r));
  ck_assert_ptr_nonnull(r);
  r->mode = o ? o->mode : MODE_ALL;
  r->store_max = 1 << 20;
  r->abort_after = o ? o->abort_after : 0;
  r->stop_after = o ? o->stop_after : 0;

  memset(&cb, 0, sizeof(cb));
  cb.part_begin = cb_begin;
  cb.part_data = cb_data;
  cb.part_end = cb_end;
  cb.error = cb_error;
  cb.arg = r;

  p = mailoauth_mime_create(o ? o->lim : NULL, &cb);
  ck_assert_ptr_nonnull(p);

  xs_state = chunk * 2654435761ULL + 1;
  while (off < len && rc == 0) {
    size_t n;

    if (chunk == CHUNK_WHOLE) {
      n = len;
    } else if (chunk == CHUNK_BYTES) {
      n = 1;
    } else {
      uint64_t x = xs_next();

      n = (x & 7) == 0 ? (size_t) (x >> 8) % 5000 + 1 :
        (size_t) (x >> 8) % 97 + 1;
    }
    if (n > len - off) {
      n = len - off;
    }
    rc = mailoauth_mime_feed(p, m + off, n);
    off += n;
  }
  if (rc == 0) {
    rc = mailoauth_mime_finish(p);
  }

  if (err_out != NULL) {
    *err_out = mailoauth_mime_error(p);
  }
  if (rc == 0) {
    ck_assert_int_eq(mailoauth_mime_error(p), 0);
  } else {
    ck_assert(MAILOAUTH_MIME_IS_FATAL(mailoauth_mime_error(p)));
  }

  /* Every part that began has ended. */
  ck_assert_uint_eq(r->depth, 0);
  mailoauth_mime_destroy(p);

  if (rc_out != NULL) {
    *rc_out = rc;
  }
  return r;
}

/* Parses whole, byte by byte (unless the message is large) and in random
 * chunks; all must agree.  Returns the whole-message record.
 */
static struct rec *run_all(const void *msg, size_t len,
    const struct runopt *o, int *rc_out, int *err_out) {
  struct rec *whole, *other;
  uint64_t seeds[] = { CHUNK_BYTES, 7, 12345, 999983 };
  size_t i;
  int rc, err, rc2, err2;

  whole = run_opt(msg, len, CHUNK_WHOLE, o, &rc, &err);
  for (i = 0; i < sizeof(seeds) / sizeof(seeds[0]); i++) {
    if (seeds[i] == CHUNK_BYTES && len > (4 << 20)) {
      continue;
    }
    other = run_opt(msg, len, seeds[i], o, &rc2, &err2);
    ck_assert_int_eq(rc2, rc);
    ck_assert_int_eq(err2, err);
    if (strcmp((char *) whole->log.d, (char *) other->log.d) != 0) {
      fprintf(stderr, "--- whole\n%s--- chunked (%llu)\n%s", whole->log.d,
        (unsigned long long) seeds[i], other->log.d);
    }
    ck_assert_str_eq((char *) whole->log.d, (char *) other->log.d);
    rec_free(other);
  }

  if (rc_out != NULL) {
    *rc_out = rc;
  }
  if (err_out != NULL) {
    *err_out = err;
  }
  return whole;
}

static struct rec *run_simple(const char *msg, int mode) {
  struct runopt o = { NULL, mode, 0, 0 };
  int rc;
  struct rec *r = run_all(msg, strlen(msg), &o, &rc, NULL);

  ck_assert_int_eq(rc, 0);
  return r;
}

/* ------------------------------------------------------------------------
 * Helpers
 */

static unsigned char *payload(size_t n, unsigned int seed) {
  unsigned char *d = malloc(n + 1);
  size_t i;

  ck_assert_ptr_nonnull(d);
  for (i = 0; i < n; i++) {
    d[i] = (unsigned char) ((i * 7 + seed * 13 + 3) & 0xff);
  }
  return d;
}

static void assert_payload(const struct rpart *p, size_t n,
    unsigned int seed) {
  unsigned char *want = payload(n, seed);

  ck_assert_uint_eq(p->data.len, n);
  ck_assert_mem_eq(p->data.d, want, n);
  free(want);
}

static char *load_corpus(const char *name, size_t *len) {
  char path[4096], *dir, *slash, *data;
  FILE *fp;
  long size;

  dir = strdup(__FILE__);
  slash = strrchr(dir, '/');
  if (slash != NULL) {
    *slash = '\0';
    snprintf(path, sizeof(path), "%s/mime-corpus/%s", dir, name);
  } else {
    snprintf(path, sizeof(path), "mime-corpus/%s", name);
  }
  free(dir);

  fp = fopen(path, "rb");
  ck_assert_msg(fp != NULL, "cannot open %s", path);
  fseek(fp, 0, SEEK_END);
  size = ftell(fp);
  fseek(fp, 0, SEEK_SET);
  data = malloc((size_t) size + 1);
  ck_assert_ptr_nonnull(data);
  ck_assert_uint_eq(fread(data, 1, (size_t) size, fp), (size_t) size);
  data[size] = '\0';
  fclose(fp);
  *len = (size_t) size;
  return data;
}

/* CRLF to LF. */
static char *to_lf(const char *s, size_t len, size_t *out_len) {
  char *d = malloc(len + 1);
  size_t i, o = 0;

  ck_assert_ptr_nonnull(d);
  for (i = 0; i < len; i++) {
    if (s[i] == '\r' && i + 1 < len && s[i + 1] == '\n') {
      continue;
    }
    d[o++] = s[i];
  }
  d[o] = '\0';
  *out_len = o;
  return d;
}

/* LF to CRLF, for literals written with \n. */
static char *crlf(const char *s) {
  size_t len = strlen(s), i, o = 0;
  char *d = malloc(2 * len + 1);

  ck_assert_ptr_nonnull(d);
  for (i = 0; i < len; i++) {
    if (s[i] == '\n') {
      d[o++] = '\r';
    }
    d[o++] = s[i];
  }
  d[o] = '\0';
  return d;
}

static void assert_part(const struct rec *r, size_t i, const char *section,
    unsigned int depth, const char *type, const char *filename) {
  ck_assert_uint_lt(i, r->nparts);
  ck_assert_str_eq(r->parts[i].section, section);
  ck_assert_uint_eq(r->parts[i].depth, depth);
  ck_assert_str_eq(r->parts[i].type, type);
  if (filename == NULL) {
    ck_assert_ptr_null(r->parts[i].filename);
  } else {
    ck_assert_ptr_nonnull(r->parts[i].filename);
    ck_assert_str_eq(r->parts[i].filename, filename);
  }
}

/* ------------------------------------------------------------------------
 * Real-world shapes
 */

/* Routing rules match recipients: every address of To, Cc and
 * Delivered-To, whatever the display names and comments around them.
 */
START_TEST(test_recipients) {
  static const char msg[] =
    "From: Scanner <scanner@example.com>\r\n"
    "To: \"Doe, Jane\" <Jane.Doe@Example.com>, (team, list) Ops+Invoices@EXAMPLE.com,\r\n"
    " undisclosed-recipients:;\r\n"
    "Cc: <cc@example.org> (a comment, with a comma)\r\n"
    "Delivered-To: inbox+scans@example.net\r\n"
    "Subject: x\r\n"
    "\r\n"
    "body\r\n";
  struct rec *r = run_simple(msg, MODE_NONE);

  ck_assert_uint_ge(r->nparts, 1);
  ck_assert_str_eq(r->parts[0].rcpts, "jane.doe@example.com,"
    "ops+invoices@example.com,cc@example.org,inbox+scans@example.net");
  rec_free(r);
}
END_TEST

/* Routes that ask for a verdict read every Authentication-Results header
 * in order, unfolded, one a line; a line break inside one cannot make two.
 */
START_TEST(test_auth_results) {
  static const char msg[] =
    "Authentication-Results: spf=pass (sender IP is 192.0.2.7)\r\n"
    " smtp.mailfrom=contoso.com; dmarc=pass action=none\r\n"
    "\theader.from=contoso.com\r\n"
    "Received: from x by y\r\n"
    "authentication-results : mx.evil.test; dmarc=pass\x0b"
    "header.from=contoso.com\r\n"
    "From: bob@contoso.com\r\n"
    "Subject: x\r\n"
    "\r\n"
    "body\r\n";
  static const char none[] = "From: a@b.c\r\n\r\nbody\r\n";
  struct rec *r = run_simple(msg, MODE_NONE);
  char *big;
  size_t i;

  ck_assert_uint_ge(r->nparts, 1);
  ck_assert_str_eq(r->parts[0].authres, " spf=pass (sender IP is "
    "192.0.2.7) smtp.mailfrom=contoso.com; dmarc=pass action=none "
    "header.from=contoso.com\n"
    " mx.evil.test; dmarc=pass header.from=contoso.com\n");
  rec_free(r);

  r = run_simple(none, MODE_NONE);
  ck_assert_str_eq(r->parts[0].authres, "");
  rec_free(r);

  /* At most MAILOAUTH_MIME_MAX_AUTHRES, the top-most; one too long is
   * named so, not cut.
   */
  big = malloc(MAILOAUTH_MIME_AUTHRES_LEN + 1024);
  ck_assert_ptr_nonnull(big);
  strcpy(big, "Authentication-Results: ");
  i = strlen(big);
  memset(big + i, 'a', MAILOAUTH_MIME_AUTHRES_LEN + 1);
  strcpy(big + i + MAILOAUTH_MIME_AUTHRES_LEN + 1, "\r\n");
  for (i = 0; i < MAILOAUTH_MIME_MAX_AUTHRES + 3; i++) {
    sprintf(big + strlen(big), "Authentication-Results: h%zu\r\n", i);
  }
  strcat(big, "From: a@b.c\r\n\r\nbody\r\n");
  r = run_simple(big, MODE_NONE);
  ck_assert_str_eq(r->parts[0].authres, "(too long)\n h0\n h1\n h2\n h3\n"
    " h4\n h5\n h6\n");
  rec_free(r);
  free(big);
}
END_TEST


/* cid: references, fed in every chunking: what the HTML body shows. */
START_TEST(test_cid_refs) {
  static const char html[] =
    "<html><body><img src=\"cid:image001.png@01D9A1B2.C3D4E5F0\">"
    "<IMG SRC='CID:logo%40example.com'>"
    "<div style=\"background:url(cid:bg.jpg)\"></div>"
    "acid:notone xcid:nottwo <a href=\"mailto:cid:\">x</a>"
    "<img src=\"cid:image001.png@01D9A1B2.C3D4E5F0\">"
    "<img src=\"cid:tail";
  size_t step, i;

  for (step = 1; step <= sizeof(html); step++) {
    struct mailoauth_mime_cids *c = malloc(sizeof(*c));

    ck_assert_ptr_nonnull(c);
    mailoauth_mime_cids_init(c);
    for (i = 0; i < sizeof(html) - 1; i += step) {
      size_t n = sizeof(html) - 1 - i < step ? sizeof(html) - 1 - i : step;

      mailoauth_mime_cids_feed(c, (const unsigned char *) html + i, n);
    }
    mailoauth_mime_cids_end(c);
    ck_assert(mailoauth_mime_cids_has(c, "image001.png@01D9A1B2.C3D4E5F0"));
    ck_assert(mailoauth_mime_cids_has(c, "logo@example.com"));
    ck_assert(mailoauth_mime_cids_has(c, "bg.jpg"));
    ck_assert(mailoauth_mime_cids_has(c, "tail"));
    ck_assert(!mailoauth_mime_cids_has(c, "notone"));
    ck_assert(!mailoauth_mime_cids_has(c, "nottwo"));
    ck_assert(!mailoauth_mime_cids_has(c, "image001.png"));
    ck_assert(!mailoauth_mime_cids_has(c, NULL));
    ck_assert(!mailoauth_mime_cids_has(c, ""));
    ck_assert_uint_eq(c->n, 4);
    free(c);
  }
}
END_TEST

/* Bounded: long ids and ids beyond the count are not kept. */
START_TEST(test_cid_bounds) {
  struct mailoauth_mime_cids *c = malloc(sizeof(*c));
  char buf[1200], id[32];
  unsigned int k;

  ck_assert_ptr_nonnull(c);
  mailoauth_mime_cids_init(c);
  memcpy(buf, "cid:", 4);
  memset(buf + 4, 'a', sizeof(buf) - 5);
  buf[sizeof(buf) - 1] = ' ';
  mailoauth_mime_cids_feed(c, (const unsigned char *) buf, sizeof(buf));
  ck_assert_uint_eq(c->n, 0);

  for (k = 0; k < MAILOAUTH_MIME_CIDS_MAX + 10; k++) {
    int n = snprintf(id, sizeof(id), " cid:id%u ", k);

    mailoauth_mime_cids_feed(c, (const unsigned char *) id, (size_t) n);
  }
  mailoauth_mime_cids_end(c);
  ck_assert_uint_eq(c->n, MAILOAUTH_MIME_CIDS_MAX);
  ck_assert(mailoauth_mime_cids_has(c, "id0"));
  ck_assert(!mailoauth_mime_cids_has(c, "id300"));
  free(c);
}
END_TEST

START_TEST(test_outlook) {
  size_t len;
  char *msg = load_corpus("outlook.eml", &len);
  struct runopt o = { NULL, MODE_ALL, 0, 0 };
  int rc;
  struct rec *r = run_all(msg, len, &o, &rc, NULL);
  static const char plain[] =
    "Sehr geehrte Damen und Herren,\r\n\r\nanbei erhalten Sie die Rechnung "
    "f\xfcr M\xe4rz sowie den Lieferschein. Bitte pr\xfc" "fen Sie die "
    "Positionen und geben Sie uns bis Monatsende R\xfc" "ckmeldung.\r\n\r\n"
    "Mit freundlichen Gr\xfc\xdf" "en\r\nJ\xfcrgen M\xfcller\r\n";

  ck_assert_int_eq(rc, 0);
  ck_assert_uint_eq(r->nparts, 8);
  assert_part(r, 0, "", 0, "multipart/mixed", NULL);
  assert_part(r, 1, "1", 1, "multipart/related", NULL);
  assert_part(r, 2, "1.1", 2, "multipart/alternative", NULL);
  assert_part(r, 3, "1.1.1", 3, "text/plain", NULL);
  assert_part(r, 4, "1.1.2", 3, "text/html", NULL);
  assert_part(r, 5, "1.2", 2, "image/png", "image001.png");
  assert_part(r, 6, "2", 1, "application/pdf",
    "Rechnung M\xc3\xa4rz 2024.pdf");
  assert_part(r, 7, "3", 1, "application/ms-tnef", "winmail.dat");

  ck_assert_str_eq(r->parts[3].charset, "iso-8859-1");
  ck_assert_int_eq(r->parts[3].encoding, MAILOAUTH_MIME_ENC_QP);
  ck_assert_uint_eq(r->parts[3].data.len, sizeof(plain) - 1);
  ck_assert_mem_eq(r->parts[3].data.d, plain, sizeof(plain) - 1);
  ck_assert(strstr((char *) r->parts[4].data.d,
    "<img src=\"cid:image001.png@01DA6E9B.5A7C2B40\"") != NULL);

  ck_assert_int_eq(r->parts[5].disposition, MAILOAUTH_MIME_DISP_INLINE);
  ck_assert_str_eq(r->parts[5].cid, "image001.png@01DA6E9B.5A7C2B40");
  ck_assert_uint_eq(r->parts[5].size_hint, 700);
  assert_payload(&r->parts[5], 700, 1);
  ck_assert_int_eq(r->parts[6].disposition, MAILOAUTH_MIME_DISP_ATTACHMENT);
  ck_assert_uint_eq(r->parts[6].size_hint, 5000);
  assert_payload(&r->parts[6], 5000, 2);
  assert_payload(&r->parts[7], 333, 3);

  ck_assert_str_eq(r->parts[0].subject,
    "Rechnung M\xc3\xa4rz / Lieferschein");
  ck_assert_str_eq(r->parts[0].from,
    "J\xc3\xbcrgen M\xc3\xbcller <juergen.mueller@example.de>");
  ck_assert_str_eq(r->parts[0].from_addr, "juergen.mueller@example.de");
  ck_assert_str_eq(r->parts[0].msgid,
    "AM0PR01MB1234ABCD@AM0PR01MB1234.eurprd01.prod.outlook.com");
  ck_assert_str_eq(r->parts[0].date, "Tue, 5 Mar 2024 09:14:02 +0000");
  /* Every part carries its message's headers. */
  ck_assert_str_eq(r->parts[7].subject, r->parts[0].subject);
  for (len = 0; len < r->nparts; len++) {
    ck_assert_uint_eq(r->parts[len].status, 0);
  }
  ck_assert_int_eq(r->warn[MAILOAUTH_MIME_W_BAD_BASE64 - 100], 0);
  rec_free(r);
  free(msg);
}
END_TEST

START_TEST(test_gmail) {
  size_t len, plen;
  char *msg = load_corpus("gmail.eml", &len);
  struct rec *r;
  struct runopt o = { NULL, MODE_ALL, 0, 0 };
  int rc;
  static const char text[] =
    "Hallo zusammen,\r\n\r\nanbei der Bericht f\xc3\xbcr Q1 \xe2\x80\x93 "
    "bitte bis Freitag kommentieren. Die Zahlen f\xc3\xbcr M\xc3\xa4rz sind "
    "vorl\xc3\xa4ufig und werden n\xc3\xa4" "chste Woche aktualisiert.\r\n\r\n"
    "Viele Gr\xc3\xbc\xc3\x9f" "e\r\nAnna\r\n";

  r = run_all(msg, len, &o, &rc, NULL);
  ck_assert_int_eq(rc, 0);
  ck_assert_uint_eq(r->nparts, 6);
  assert_part(r, 0, "", 0, "multipart/mixed", NULL);
  assert_part(r, 1, "1", 1, "multipart/alternative", NULL);
  assert_part(r, 2, "1.1", 2, "text/plain", NULL);
  assert_part(r, 3, "1.2", 2, "text/html", NULL);
  /* The name's U+00DC is split between two encoded words. */
  assert_part(r, 4, "2", 1, "application/pdf",
    "Quartalsbericht_\xc3\x9c" "bersicht_2024_Q1_final.pdf");
  assert_part(r, 5, "3", 1, "text/csv", "data.csv");
  plen = sizeof(text) - 1;
  ck_assert_uint_eq(r->parts[2].data.len, plen);
  ck_assert_mem_eq(r->parts[2].data.d, text, plen);
  ck_assert_str_eq((char *) r->parts[3].data.d,
    "<div dir=\"ltr\">Hallo zusammen,<div><br></div><div>anbei der Bericht "
    "f\xc3\xbcr Q1.</div></div>\r\n");
  ck_assert_str_eq(r->parts[4].cid, "f_lt1abc0");
  assert_payload(&r->parts[4], 20000, 4);
  ck_assert_str_eq((char *) r->parts[5].data.d,
    "id;name;amount\r\n1;Widget;9.99\r\n");
  ck_assert_str_eq(r->parts[0].subject,
    "Quartalsbericht \xc3\x9c" "bersicht");
  ck_assert_str_eq(r->parts[0].from_addr, "anna.schmidt@gmail.com");
  ck_assert_str_eq(r->parts[0].msgid, "CAF=abc123XYZ@mail.gmail.com");
  rec_free(r);
  free(msg);
}
END_TEST

START_TEST(test_applemail) {
  size_t len;
  char *msg = load_corpus("applemail.eml", &len);
  struct rec *r;
  struct runopt o = { NULL, MODE_ALL, 0, 0 };
  int rc;
  static const char name[] = "Devis signe\xcc\x81 \xe2\x80\x94 tr\xc3\xa8s "
    "long nom de fichier pour tester les continuations RFC 2231.pdf";

  r = run_all(msg, len, &o, &rc, NULL);
  ck_assert_int_eq(rc, 0);
  ck_assert_uint_eq(r->nparts, 4);
  assert_part(r, 0, "", 0, "multipart/mixed", NULL);
  assert_part(r, 1, "1", 1, "text/plain", NULL);
  assert_part(r, 2, "2", 1, "application/pdf", name);
  assert_part(r, 3, "3", 1, "text/html", NULL);
  ck_assert_str_eq((char *) r->parts[1].data.d,
    "Bonjour,\r\n\r\nVoici le devis.\r\n");
  ck_assert_str_eq(r->parts[1].charset, "us-ascii");
  assert_payload(&r->parts[2], 3000, 5);
  ck_assert_str_eq(r->parts[0].subject, "Devis sign\xc3\xa9");
  rec_free(r);
  free(msg);
}
END_TEST

START_TEST(test_thunderbird) {
  size_t len;
  char *msg = load_corpus("thunderbird.eml", &len);
  struct rec *r;
  struct runopt o = { NULL, MODE_ALL, 0, 0 };
  int rc;

  r = run_all(msg, len, &o, &rc, NULL);
  ck_assert_int_eq(rc, 0);
  ck_assert_uint_eq(r->nparts, 4);
  assert_part(r, 1, "1", 1, "text/plain", NULL);
  assert_part(r, 2, "2", 1, "application/vnd.oasis.opendocument.text",
    "r\xc3\xa9sum\xc3\xa9 \xc3\xa9t\xc3\xa9 2024.odt");
  assert_part(r, 3, "3", 1, "text/plain", "notes d'\xc3\xa9t\xc3\xa9.txt");
  /* 8bit: the bytes as sent. */
  ck_assert_str_eq((char *) r->parts[1].data.d,
    "Bonjour, voici mon r\xe9sum\xe9 et les pi\xe8" "ces jointes.\r\n");
  ck_assert_int_eq(r->parts[1].encoding, MAILOAUTH_MIME_ENC_8BIT);
  assert_payload(&r->parts[2], 1500, 6);
  ck_assert_str_eq((char *) r->parts[3].data.d, "Notes d'\xc3\xa9t\xc3\xa9\n");
  ck_assert_str_eq(r->parts[0].subject,
    "R\xc3\xa9sum\xc3\xa9 et pi\xc3\xa8" "ces jointes");
  ck_assert_str_eq(r->parts[0].from,
    "Ren\xc3\xa9" "e Lef\xc3\xa8vre <renee@example.net>");
  rec_free(r);
  free(msg);
}
END_TEST

START_TEST(test_forwarded_descend) {
  size_t len;
  char *msg = load_corpus("forwarded.eml", &len);
  struct rec *r;
  struct runopt o = { NULL, MODE_ALL, 0, 0 };
  int rc;

  r = run_all(msg, len, &o, &rc, NULL);
  ck_assert_int_eq(rc, 0);
  ck_assert_uint_eq(r->nparts, 6);
  assert_part(r, 0, "", 0, "multipart/mixed", NULL);
  assert_part(r, 1, "1", 1, "text/plain", NULL);
  assert_part(r, 2, "2", 1, "message/rfc822", "Invoice 4711.eml");
  ck_assert_int_eq(r->parts[2].is_message, 1);
  ck_assert_uint_eq(r->parts[2].in_message, 0);
  ck_assert_str_eq(r->parts[2].subject, "Fwd: Invoice 4711");
  assert_part(r, 3, "2", 2, "multipart/mixed", NULL);
  ck_assert_uint_eq(r->parts[3].in_message, 1);
  ck_assert_str_eq(r->parts[3].subject,
    "Invoice 4711 \xe2\x80\x93 due soon");
  ck_assert_str_eq(r->parts[3].from,
    "\"Supplier Billing\" <billing@supplier.example>");
  ck_assert_str_eq(r->parts[3].from_addr, "billing@supplier.example");
  assert_part(r, 4, "2.1", 3, "text/plain", NULL);
  assert_part(r, 5, "2.2", 3, "application/pdf", "invoice-4711.pdf");
  ck_assert_uint_eq(r->parts[5].in_message, 1);
  ck_assert_str_eq(r->parts[5].subject, r->parts[3].subject);
  assert_payload(&r->parts[5], 2500, 7);
  ck_assert_str_eq((char *) r->parts[1].data.d, "See attached.");
  ck_assert_uint_eq(r->parts[2].nbytes, 0);
  rec_free(r);
  free(msg);
}
END_TEST

START_TEST(test_forwarded_as_eml) {
  size_t len;
  char *msg = load_corpus("forwarded.eml", &len);
  const char *start, *end;
  struct rec *r;
  struct runopt o = { NULL, MODE_EML, 0, 0 };
  int rc;

  start = strstr(msg, "From: \"Supplier Billing\"");
  end = strstr(msg, "\r\n--outer-b--");
  ck_assert_ptr_nonnull(start);
  ck_assert_ptr_nonnull(end);

  /* Not descended: the attached message is one opaque .eml part. */
  r = run_all(msg, len, &o, &rc, NULL);
  ck_assert_int_eq(rc, 0);
  ck_assert_uint_eq(r->nparts, 3);
  ck_assert_uint_eq(r->parts[2].data.len, (size_t) (end - start));
  ck_assert_mem_eq(r->parts[2].data.d, start, (size_t) (end - start));
  rec_free(r);

  /* Both: the .eml and the parts inside it. */
  o.mode = MODE_EML_BOTH;
  r = run_all(msg, len, &o, &rc, NULL);
  ck_assert_int_eq(rc, 0);
  ck_assert_uint_eq(r->nparts, 6);
  ck_assert_uint_eq(r->parts[2].data.len, (size_t) (end - start));
  assert_payload(&r->parts[5], 2500, 7);
  rec_free(r);
  free(msg);
}
END_TEST

START_TEST(test_inline_images) {
  size_t len;
  char *msg = load_corpus("inline-images.eml", &len);
  struct runopt o = { NULL, MODE_ALL, 0, 0 };
  int rc;
  struct rec *r = run_all(msg, len, &o, &rc, NULL);
  char name[MAILOAUTH_NAMES_MAX + 1];

  ck_assert_int_eq(rc, 0);
  ck_assert_uint_eq(r->nparts, 4);
  assert_part(r, 0, "", 0, "multipart/related", NULL);
  assert_part(r, 1, "1", 1, "text/html", NULL);
  assert_part(r, 2, "2", 1, "image/png", "logo.png");
  assert_part(r, 3, "3", 1, "image/jpeg", NULL);
  ck_assert_str_eq(r->parts[2].cid, "logo@example.com");
  ck_assert_str_eq(r->parts[3].cid, "chart-1");
  ck_assert_int_eq(r->parts[3].disposition, MAILOAUTH_MIME_DISP_NONE);
  assert_payload(&r->parts[2], 400, 8);
  assert_payload(&r->parts[3], 900, 9);
  /* A nameless part still gets a usable name. */
  ck_assert_int_eq(mailoauth_names_sanitize(NULL, 0, r->parts[3].type, name,
    sizeof(name)), 14);
  ck_assert_str_eq(name, "attachment.jpg");
  ck_assert_str_eq(r->parts[0].from_addr, "newsletter@example.com");
  rec_free(r);
  free(msg);
}
END_TEST

START_TEST(test_signed) {
  size_t len;
  char *msg = load_corpus("signed.eml", &len);
  struct runopt o = { NULL, MODE_ALL, 0, 0 };
  int rc;
  struct rec *r = run_all(msg, len, &o, &rc, NULL);

  ck_assert_int_eq(rc, 0);
  ck_assert_uint_eq(r->nparts, 5);
  assert_part(r, 0, "", 0, "multipart/signed", NULL);
  assert_part(r, 1, "1", 1, "multipart/mixed", NULL);
  assert_part(r, 2, "1.1", 2, "text/plain", NULL);
  assert_part(r, 3, "1.2", 2,
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "report.xlsx");
  assert_part(r, 4, "2", 1, "application/pkcs7-signature", "smime.p7s");
  ck_assert_str_eq((char *) r->parts[2].data.d, "Monthly report attached.");
  assert_payload(&r->parts[3], 4096, 10);
  assert_payload(&r->parts[4], 1200, 11);
  rec_free(r);
  free(msg);
}
END_TEST

START_TEST(test_report) {
  size_t len;
  char *msg = load_corpus("report.eml", &len);
  struct runopt o = { NULL, MODE_ALL, 0, 0 };
  int rc;
  struct rec *r = run_all(msg, len, &o, &rc, NULL);

  ck_assert_int_eq(rc, 0);
  ck_assert_uint_eq(r->nparts, 4);
  assert_part(r, 0, "", 0, "multipart/report", NULL);
  assert_part(r, 2, "2", 1, "message/delivery-status", NULL);
  assert_part(r, 3, "3", 1, "text/rfc822-headers", NULL);
  ck_assert(strstr((char *) r->parts[2].data.d, "Status: 5.1.1") != NULL);
  /* A comment after the address is not part of it. */
  ck_assert_str_eq(r->parts[0].from_addr, "MAILER-DAEMON@mx.example.com");
  rec_free(r);
  free(msg);
}
END_TEST

/* The same messages with bare LF line ends: same tree, same attachments. */
START_TEST(test_lf_line_ends) {
  static const char *files[] = {
    "outlook.eml", "gmail.eml", "applemail.eml", "thunderbird.eml",
    "forwarded.eml", "inline-images.eml", "signed.eml", "report.eml", NULL
  };
  size_t i, j;

  for (i = 0; files[i] != NULL; i++) {
    size_t len, lflen;
    char *msg = load_corpus(files[i], &len), *lf = to_lf(msg, len, &lflen);
    struct runopt o = { NULL, MODE_ALL, 0, 0 };
    int rc1, rc2;
    struct rec *a = run_all(msg, len, &o, &rc1, NULL);
    struct rec *b = run_all(lf, lflen, &o, &rc2, NULL);

    ck_assert_int_eq(rc1, 0);
    ck_assert_int_eq(rc2, 0);
    ck_assert_uint_eq(a->nparts, b->nparts);
    for (j = 0; j < a->nparts; j++) {
      ck_assert_str_eq(a->parts[j].section, b->parts[j].section);
      ck_assert_str_eq(a->parts[j].type, b->parts[j].type);
      ck_assert_uint_eq(a->parts[j].status, b->parts[j].status);
      if (a->parts[j].filename != NULL) {
        ck_assert_str_eq(a->parts[j].filename, b->parts[j].filename);
      }
      if (a->parts[j].encoding == MAILOAUTH_MIME_ENC_BASE64) {
        ck_assert_uint_eq(a->parts[j].nbytes, b->parts[j].nbytes);
        ck_assert(a->parts[j].hash == b->parts[j].hash);
      }
    }
    rec_free(a);
    rec_free(b);
    free(msg);
    free(lf);
  }
}
END_TEST

/* Every prefix of every corpus message: no crash, every part ended, the
 * chunking makes no difference.
 */
START_TEST(test_truncated_messages) {
  static const char *files[] = {
    "outlook.eml", "applemail.eml", "thunderbird.eml", "forwarded.eml",
    "signed.eml", NULL
  };
  size_t i, cut;

  for (i = 0; files[i] != NULL; i++) {
    size_t len;
    char *msg = load_corpus(files[i], &len);

    for (cut = 0; cut < len; cut += 97) {
      struct runopt o = { NULL, MODE_EML_BOTH, 0, 0 };
      struct rec *r = run_opt(msg, cut, CHUNK_WHOLE, &o, NULL, NULL);
      struct rec *r2 = run_opt(msg, cut, 4242, &o, NULL, NULL);

      ck_assert_str_eq((char *) r->log.d, (char *) r2->log.d);
      rec_free(r);
      rec_free(r2);
    }
    free(msg);
  }
}
END_TEST

/* ------------------------------------------------------------------------
 * Encoded names
 */

static const struct {
  const char *charset, *b, *q, *pct, *utf8;
} charset_cases[] = {
/* Generated: the same names in RFC 2047 B and Q words and RFC 2231. */
  { "UTF-8", "=?UTF-8?B?0J/RgNC40LLQtdGCINC80LjRgC5wZGY=?=", "=?UTF-8?Q?=D0=9F=D1=80=D0=B8=D0=B2=D0=B5=D1=82_=D0=BC=D0=B8=D1=80=2Epdf?=", "UTF-8''%D0%9F%D1%80%D0%B8%D0%B2%D0%B5%D1%82%20%D0%BC%D0%B8%D1%80.pdf",
    "\xd0\x9f\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82 \xd0\xbc\xd0\xb8\xd1\x80.pdf" },
  { "ISO-8859-1", "=?ISO-8859-1?B?R3L832UgYXVzIEv2bG4udHh0?=", "=?ISO-8859-1?Q?Gr=FC=DFe_aus_K=F6ln=2Etxt?=", "ISO-8859-1''Gr%FC%DFe%20aus%20K%F6ln.txt",
    "Gr\xc3\xbc\xc3\x9f" "e aus K\xc3\xb6ln.txt" },
  { "windows-1252", "=?windows-1252?B?k0FuZ2Vib3SUIIAgMjAyNC5kb2N4?=", "=?windows-1252?Q?=93Angebot=94_=80_2024=2Edocx?=", "windows-1252''%93Angebot%94%20%80%202024.docx",
    "\xe2\x80\x9c" "Angebot\xe2\x80\x9d \xe2\x82\xac 2024.docx" },
  { "Shift_JIS", "=?Shift_JIS?B?k/qWe4zqgsyQv4uBj5EucGRm?=", "=?Shift_JIS?Q?=93=FA=96=7B=8C=EA=82=CC=90=BF=8B=81=8F=91=2Epdf?=", "Shift_JIS''%93%FA%96%7B%8C%EA%82%CC%90%BF%8B%81%8F%91.pdf",
    "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e\xe3\x81\xae\xe8\xab\x8b\xe6\xb1\x82\xe6\x9b\xb8.pdf" },
  { "GB18030", "=?GB18030?B?1tDOxLGouOYyMDI0Lnhsc3g=?=", "=?GB18030?Q?=D6=D0=CE=C4=B1=A8=B8=E62024=2Exlsx?=", "GB18030''%D6%D0%CE%C4%B1%A8%B8%E62024.xlsx",
    "\xe4\xb8\xad\xe6\x96\x87\xe6\x8a\xa5\xe5\x91\x8a" "2024.xlsx" },
  { "GB2312", "=?GB2312?B?t6LGsS5wZGY=?=", "=?GB2312?Q?=B7=A2=C6=B1=2Epdf?=", "GB2312''%B7%A2%C6%B1.pdf",
    "\xe5\x8f\x91\xe7\xa5\xa8.pdf" },
  { "KOI8-R", "=?KOI8-R?B?79Teo9Qg2sEgzcHS1C54bHM=?=", "=?KOI8-R?Q?=EF=D4=DE=A3=D4_=DA=C1_=CD=C1=D2=D4=2Exls?=", "KOI8-R''%EF%D4%DE%A3%D4%20%DA%C1%20%CD%C1%D2%D4.xls",
    "\xd0\x9e\xd1\x82\xd1\x87\xd1\x91\xd1\x82 \xd0\xb7\xd0\xb0 \xd0\xbc\xd0\xb0\xd1\x80\xd1\x82.xls" },
  { "Big5", "=?Big5?B?wWPF6aSkpOUuZG9j?=", "=?Big5?Q?=C1c=C5=E9=A4=A4=A4=E5=2Edoc?=", "Big5''%C1c%C5%E9%A4%A4%A4%E5.doc",
    "\xe7\xb9\x81\xe9\xab\x94\xe4\xb8\xad\xe6\x96\x87.doc" },
  { "ISO-2022-JP", "=?ISO-2022-JP?B?GyRCOCtAUT1xGyhCLnBkZg==?=", "=?ISO-2022-JP?Q?=1B=24B8=2B=40Q=3Dq=1B=28B=2Epdf?=", "ISO-2022-JP''%1B%24B8%2B%40Q%3Dq%1B%28B.pdf",
    "\xe8\xa6\x8b\xe7\xa9\x8d\xe6\x9b\xb8.pdf" },
  { "ks_c_5601-1987", "=?ks_c_5601-1987?B?sN/A+7ytLnBkZg==?=", "=?ks_c_5601-1987?Q?=B0=DF=C0=FB=BC=AD=2Epdf?=", "ks_c_5601-1987''%B0%DF%C0%FB%BC%AD.pdf",
    "\xea\xb2\xac\xec\xa0\x81\xec\x84\x9c.pdf" },
  { "EUC-KR", "=?EUC-KR?B?uriw7bytLnR4dA==?=", "=?EUC-KR?Q?=BA=B8=B0=ED=BC=AD=2Etxt?=", "EUC-KR''%BA%B8%B0%ED%BC%AD.txt",
    "\xeb\xb3\xb4\xea\xb3\xa0\xec\x84\x9c.txt" },
  { "ISO-8859-15", "=?ISO-8859-15?B?UHJlaXMgMTCkLnR4dA==?=", "=?ISO-8859-15?Q?Preis_10=A4=2Etxt?=", "ISO-8859-15''Preis%2010%A4.txt",
    "Preis 10\xe2\x82\xac.txt" },
  { "windows-1251", "=?windows-1251?B?0fe48i5wZGY=?=", "=?windows-1251?Q?=D1=F7=B8=F2=2Epdf?=", "windows-1251''%D1%F7%B8%F2.pdf",
    "\xd0\xa1\xd1\x87\xd1\x91\xd1\x82.pdf" },
};

START_TEST(test_charset_names) {
  size_t i;

  for (i = 0; i < sizeof(charset_cases) / sizeof(charset_cases[0]); i++) {
    char *s, param[512];
    int bad = 0;

    s = mailoauth_mime_decode_header(charset_cases[i].b,
      strlen(charset_cases[i].b), NULL, &bad);
    ck_assert_msg(strcmp(s, charset_cases[i].utf8) == 0, "%s B: %s",
      charset_cases[i].charset, s);
    ck_assert_int_eq(bad, 0);
    free(s);

    s = mailoauth_mime_decode_header(charset_cases[i].q,
      strlen(charset_cases[i].q), NULL, &bad);
    ck_assert_msg(strcmp(s, charset_cases[i].utf8) == 0, "%s Q: %s",
      charset_cases[i].charset, s);
    free(s);

    snprintf(param, sizeof(param), "attachment; filename*=%s",
      charset_cases[i].pct);
    s = mailoauth_mime_header_param(param, strlen(param), "filename", NULL,
      &bad);
    ck_assert_msg(s != NULL && strcmp(s, charset_cases[i].utf8) == 0,
      "%s 2231: %s", charset_cases[i].charset, s ? s : "(null)");
    ck_assert_int_eq(bad, 0);
    free(s);

    /* 2047 inside a quoted parameter, as Outlook and Gmail send it. */
    snprintf(param, sizeof(param), "application/octet-stream; name=\"%s\"",
      charset_cases[i].b);
    s = mailoauth_mime_header_param(param, strlen(param), "NAME", NULL,
      &bad);
    ck_assert_str_eq(s, charset_cases[i].utf8);
    free(s);
  }
}
END_TEST

static const struct {
  const char *in, *fallback, *out;
  int bad;
} header_cases[] = {
  /* Adjacent encoded words: the whitespace between them goes. */
  { "=?UTF-8?B?w6Q=?= =?UTF-8?B?w7Y=?=", NULL, "\xc3\xa4\xc3\xb6", 0 },
  { "=?UTF-8?Q?a?=\r\n =?UTF-8?Q?b?=", NULL, "ab", 0 },
  { "=?UTF-8?Q?a?==?UTF-8?Q?b?=", NULL, "ab", 0 },
  /* One character split across words, Q and B. */
  { "=?UTF-8?Q?=C3?= =?UTF-8?Q?=A4?=", NULL, "\xc3\xa4", 0 },
  { "=?utf-8?b?w6Tw?= =?utf-8?b?n5iA?=", NULL, "\xc3\xa4\xf0\x9f\x98\x80",
    0 },
  /* A base64 quantum split across words. */
  { "=?UTF-8?B?YW?= =?UTF-8?B?Jj?=", NULL, "abc", 0 },
  /* Different charsets next to each other. */
  { "=?ISO-8859-1?Q?=E9?= =?UTF-8?Q?=C3=A9?=", NULL, "\xc3\xa9\xc3\xa9", 0 },
  /* Words and text: the whitespace around text stays. */
  { "Re: =?UTF-8?Q?caf=C3=A9?= ok", NULL, "Re: caf\xc3\xa9 ok", 0 },
  { "=?UTF-8?Q?a?= b =?UTF-8?Q?c?=", NULL, "a b c", 0 },
  { "=?UTF-8?Q?a_b?=", NULL, "a b", 0 },
  /* Language suffix (RFC 2231 section 5). */
  { "=?UTF-8*de?Q?Gr=C3=BC=C3=9Fe?=", NULL, "Gr\xc3\xbc\xc3\x9f" "e", 0 },
  /* Not encoded words: left alone. */
  { "=?UTF-8?X?abc?=", NULL, "=?UTF-8?X?abc?=", 0 },
  { "a =? b ?= c", NULL, "a =? b ?= c", 0 },
  { "=?UTF-8?Q?unterminated", NULL, "=?UTF-8?Q?unterminated", 0 },
  { "=??Q?x?=", NULL, "=??Q?x?=", 0 },
  /* Invalid escapes pass through. */
  { "=?UTF-8?Q?100=ZZ=4?=", NULL, "100=ZZ=4", 0 },
  /* Unknown charset: UTF-8 if valid, else windows-1252. */
  { "=?x-klingon?Q?caf=C3=A9?=", NULL, "caf\xc3\xa9", 1 },
  { "=?x-klingon?Q?caf=E9?=", NULL, "caf\xc3\xa9", 1 },
  /* Invalid bytes in a known charset are replaced. */
  { "=?UTF-8?Q?a=FFb?=", NULL, "a\xef\xbf\xbd" "b", 1 },
  { "=?Shift_JIS?Q?=82?=", NULL, "\xef\xbf\xbd", 1 },
  /* Broken base64. */
  { "=?UTF-8?B?YW!!Jj?=", NULL, "abc", 1 },
  /* Raw 8-bit: UTF-8 if valid, else the fallback, else windows-1252. */
  { "Gr\xc3\xbc\xc3\x9f" "e", NULL, "Gr\xc3\xbc\xc3\x9f" "e", 0 },
  { "Gr\xfc\xdf" "e \x80", NULL, "Gr\xc3\xbc\xc3\x9f" "e \xe2\x82\xac", 0 },
  { "\x8c\xa9\x90\xcf", "shift_jis", "\xe8\xa6\x8b\xe7\xa9\x8d", 0 },
  { "\xf3\xe3\xe5\xf2", "koi8-r", "\xd0\xa1\xd0\xa6\xd0\x95\xd0\xa0", 0 },
  /* NUL never truncates. */
  { "=?UTF-8?Q?a.pdf=00.exe?=", NULL, "a.pdf\xef\xbf\xbd.exe", 0 },
  { "", NULL, "", 0 },
};

START_TEST(test_decode_header) {
  size_t i;

  for (i = 0; i < sizeof(header_cases) / sizeof(header_cases[0]); i++) {
    int bad = 0;
    char *s = mailoauth_mime_decode_header(header_cases[i].in,
      strlen(header_cases[i].in), header_cases[i].fallback, &bad);

    ck_assert_ptr_nonnull(s);
    ck_assert_msg(strcmp(s, header_cases[i].out) == 0,
      "case %lu: '%s' gave '%s'", (unsigned long) i, header_cases[i].in, s);
    ck_assert_msg(bad == header_cases[i].bad, "case %lu: bad=%d",
      (unsigned long) i, bad);
    free(s);
  }
}
END_TEST

static const struct {
  const char *value, *name, *out;
} param_cases[] = {
  { "attachment; filename=\"a b.pdf\"", "filename", "a b.pdf" },
  { "attachment; FileName=plain.pdf", "filename", "plain.pdf" },
  { "attachment;filename=\"q\\\"uote\\\\d.txt\"", "filename",
    "q\"uote\\d.txt" },
  /* Old Windows mailers: backslashes in a quoted path are not escapes. */
  { "attachment; filename=\"C:\\Users\\bob\\x.doc\"", "filename",
    "C:\\Users\\bob\\x.doc" },
  /* Comments are ignored. */
  { "text/plain (body text); charset=us-ascii (Plain text)", "charset",
    "us-ascii" },
  { "attachment; (c) filename (the name) = \"x.txt\" (c2)", "filename",
    "x.txt" },
  { "attachment; filename=Scan(1).pdf", "filename", "Scan(1).pdf" },
  /* Semicolons and equals signs inside quotes. */
  { "attachment; filename=\"a;b=c.txt\"; size=3", "filename", "a;b=c.txt" },
  { "attachment; filename=\"a;b=c.txt\"; size=3", "size", "3" },
  /* RFC 2231 beats the plain parameter, continuations in any order. */
  { "attachment; filename=\"old.pdf\"; filename*=UTF-8''new%E2%82%AC.pdf",
    "filename", "new\xe2\x82\xac.pdf" },
  { "attachment; filename*1=\"def\"; filename*0=\"abc\"; filename*2=.txt",
    "filename", "abcdef.txt" },
  { "attachment; filename*0*=UTF-8''%E2%82; filename*1*=%AC; "
    "filename*2=\" rates.pdf\"", "filename", "\xe2\x82\xac rates.pdf" },
  { "attachment; filename*0*=iso-8859-1'fr'%E9t%E9; filename*1=.txt",
    "filename", "\xc3\xa9t\xc3\xa9.txt" },
  /* A duplicate segment: the first one counts. */
  { "a; n*0=x; n*0=y; n*1=z", "n", "xz" },
  /* Leading zeros are not a segment number. */
  { "a; n*0=x; n*01=y", "n", "x" },
  /* No charset in the 2231 value. */
  { "attachment; filename*=''a%20b.txt", "filename", "a b.txt" },
  { "attachment; filename*=a%20b.txt", "filename", "a b.txt" },
  /* Encoded words in a plain continuation. */
  { "a; name*0=\"=?UTF-8?Q?caf?=\"; name*1=\"=?UTF-8?Q?=C3=A9?=\"", "name",
    "caf\xc3\xa9" },
  /* Missing values. */
  { "attachment; filename", "filename", NULL },
  { "attachment", "filename", NULL },
  { "attachment; filenamex=1", "filename", NULL },
  { "attachment; filename=\"unterminated", "filename", "unterminated" },
  { "attachment; filename=", "filename", "" },
  /* Hostile names come through as they are; the names unit cleans them. */
  { "attachment; filename=\"../../etc/passwd\"", "filename",
    "../../etc/passwd" },
  { "attachment; filename*=UTF-8''a%00b%0D%0Ac.txt", "filename",
    "a\xef\xbf\xbd" "b\r\nc.txt" },
};

START_TEST(test_header_params) {
  size_t i;

  for (i = 0; i < sizeof(param_cases) / sizeof(param_cases[0]); i++) {
    char *s = mailoauth_mime_header_param(param_cases[i].value,
      strlen(param_cases[i].value), param_cases[i].name, NULL, NULL);

    if (param_cases[i].out == NULL) {
      ck_assert_msg(s == NULL, "case %lu: got '%s'", (unsigned long) i, s);
      ck_assert_int_eq(errno, ENOENT);
    } else {
      ck_assert_msg(s != NULL && strcmp(s, param_cases[i].out) == 0,
        "case %lu: '%s' gave '%s'", (unsigned long) i, param_cases[i].value,
        s ? s : "(null)");
    }
    free(s);
  }
}
END_TEST

START_TEST(test_to_utf8) {
  char *s;
  int bad = 0;

  s = mailoauth_mime_to_utf8("latin1", "\x93x\x94", 3, &bad);
  ck_assert_str_eq(s, "\xe2\x80\x9cx\xe2\x80\x9d");
  ck_assert_int_eq(bad, 0);
  free(s);

  /* Overlong and surrogate forms are not UTF-8. */
  s = mailoauth_mime_to_utf8("utf-8", "\xc0\xaf\xed\xa0\x80", 5, &bad);
  ck_assert_ptr_null(strchr(s, '/'));
  ck_assert_int_eq(bad, 1);
  free(s);

  bad = 0;
  s = mailoauth_mime_to_utf8("\"UTF-7\"", "+AOQ-", 5, &bad);
  ck_assert_str_eq(s, "\xc3\xa4");
  free(s);

  /* Cut short in a multibyte charset. */
  s = mailoauth_mime_to_utf8("gb18030", "\xd6", 1, &bad);
  ck_assert_str_eq(s, "\xef\xbf\xbd");
  ck_assert_int_eq(bad, 1);
  free(s);
}
END_TEST

/* Hostile names survive decoding as they are, and come out of the names
 * unit safe.
 */
START_TEST(test_hostile_names) {
  struct tbuf b = { NULL, 0, 0 };
  static const struct {
    const char *header, *decoded, *safe;
  } cases[] = {
    { "filename=\"../../etc/passwd\"", "../../etc/passwd", "passwd" },
    { "filename=\"..\\..\\x\"", "..\\..\\x", "x" },
    /* Escaped backslashes in a quoted string. */
    { "filename=\"..\\\\..\\\\y\"", "..\\..\\y", "y" },
    { "filename=/abs", "/abs", "abs" },
    { "filename*=UTF-8''evil.pdf%00.exe", "evil.pdf\xef\xbf\xbd.exe",
      "evil.pdf\xef\xbf\xbd.exe" },
    { "filename=\"=?UTF-8?Q?a=0D=0Ab.txt?=\"", "a\r\nb.txt", "a__b.txt" },
    { "filename*=UTF-8''invoice%E2%80%AEfdp.exe",
      "invoice\xe2\x80\xae" "fdp.exe", "invoice_fdp.exe" },
    { "filename=\"CON.txt\"", "CON.txt", "_CON.txt" },
    { "filename=\"  .hidden. \"", "  .hidden. ", "hidden" },
  };
  char name[400], safe[MAILOAUTH_NAMES_MAX + 1];
  struct rec *r;
  size_t i;

  tbuf_printf(&b, "Content-Type: multipart/mixed; boundary=h\r\n\r\n");
  for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    tbuf_printf(&b, "--h\r\nContent-Disposition: attachment; %s\r\n\r\n"
      "x\r\n", cases[i].header);
  }
  memset(name, 'n', 296);
  strcpy(name + 296, ".pdf");
  tbuf_printf(&b, "--h\r\nContent-Type: application/pdf; name=\"%s\"\r\n"
    "\r\nx\r\n--h--\r\n", name);

  r = run_simple((char *) b.d, MODE_ALL);
  ck_assert_uint_eq(r->nparts, sizeof(cases) / sizeof(cases[0]) + 2);
  for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    const char *fn = r->parts[i + 1].filename;

    ck_assert_ptr_nonnull(fn);
    ck_assert_str_eq(fn, cases[i].decoded);
    ck_assert_int_ge(mailoauth_names_sanitize(fn, strlen(fn), NULL, safe,
      sizeof(safe)), 1);
    ck_assert_str_eq(safe, cases[i].safe);
  }

  ck_assert_str_eq(r->parts[i + 1].filename, name);
  ck_assert_int_eq(mailoauth_names_sanitize(name, 300, NULL, safe,
    sizeof(safe)), MAILOAUTH_NAMES_MAX);
  ck_assert_str_eq(safe + MAILOAUTH_NAMES_MAX - 4, ".pdf");
  rec_free(r);
  free(b.d);
}
END_TEST

/* ------------------------------------------------------------------------
 * Structure
 */

START_TEST(test_boundary_lookalikes) {
  char *msg = crlf(
    "Content-Type: multipart/mixed; boundary=\"abc\"\n"
    "\n"
    "preamble --abc is not here\n"
    "--abcdef\n"
    "--abc\n"
    "\n"
    "line one\n"
    "--abcdef\n"
    "--abc-x\n"
    "--abc -\n"
    "--ab\n"
    "-\n"
    "--abc\t \n"
    "Content-Type: text/plain\n"
    "\n"
    "second\n"
    "--abc-- \t\n"
    "epilogue\n"
    "--abc\n"
    "still epilogue\n");
  struct rec *r = run_simple(msg, MODE_ALL);

  ck_assert_uint_eq(r->nparts, 3);
  ck_assert_str_eq((char *) r->parts[1].data.d,
    "line one\r\n--abcdef\r\n--abc-x\r\n--abc -\r\n--ab\r\n-");
  ck_assert_str_eq((char *) r->parts[2].data.d, "second");
  ck_assert_uint_eq(r->parts[0].status, 0);
  rec_free(r);
  free(msg);
}
END_TEST

START_TEST(test_bare_lf_and_mixed) {
  /* LF boundaries, a CRLF body line, a lone CR kept as data. */
  static const char msg[] =
    "Content-Type: multipart/mixed; boundary=b\n"
    "\n"
    "--b\n"
    "\n"
    "x\r\ny\rz\n"
    "--b--";
  struct rec *r = run_simple(msg, MODE_ALL);

  ck_assert_uint_eq(r->nparts, 2);
  ck_assert_str_eq((char *) r->parts[1].data.d, "x\r\ny\rz");
  ck_assert_uint_eq(r->parts[0].status, 0);
  ck_assert_uint_eq(r->parts[1].status, 0);
  rec_free(r);
}
END_TEST

START_TEST(test_missing_boundaries) {
  struct rec *r;
  char *msg;

  /* Closing boundary never comes. */
  msg = crlf(
    "Content-Type: multipart/mixed; boundary=b\n\n"
    "--b\n\nfirst\n"
    "--b\nContent-Type: multipart/alternative; boundary=c\n\n"
    "--c\n\ninner\n");
  r = run_simple(msg, MODE_ALL);
  ck_assert_uint_eq(r->nparts, 4);
  ck_assert_uint_eq(r->parts[0].status, MAILOAUTH_MIME_ST_UNTERMINATED);
  ck_assert_uint_eq(r->parts[1].status, 0);
  ck_assert_uint_eq(r->parts[2].status, MAILOAUTH_MIME_ST_UNTERMINATED);
  ck_assert_uint_eq(r->parts[3].status, MAILOAUTH_MIME_ST_UNTERMINATED);
  /* At the end of input the last line break belongs to the part. */
  ck_assert_str_eq((char *) r->parts[3].data.d, "inner\r\n");
  ck_assert_int_eq(r->warn[MAILOAUTH_MIME_W_UNTERMINATED - 100], 2);
  rec_free(r);
  free(msg);

  /* The outer boundary closes an inner multipart left open. */
  msg = crlf(
    "Content-Type: multipart/mixed; boundary=b\n\n"
    "--b\nContent-Type: multipart/alternative; boundary=c\n\n"
    "--c\n\ninner\n"
    "--b\n\nafter\n"
    "--b--\n");
  r = run_simple(msg, MODE_ALL);
  ck_assert_uint_eq(r->nparts, 4);
  ck_assert_uint_eq(r->parts[0].status, 0);
  ck_assert_uint_eq(r->parts[1].status, MAILOAUTH_MIME_ST_UNTERMINATED);
  ck_assert_uint_eq(r->parts[2].status, MAILOAUTH_MIME_ST_UNTERMINATED);
  ck_assert_str_eq((char *) r->parts[2].data.d, "inner");
  ck_assert_uint_eq(r->parts[3].status, 0);
  ck_assert_str_eq(r->parts[3].section, "2");
  rec_free(r);
  free(msg);

  /* The boundary never appears at all. */
  msg = crlf("Content-Type: multipart/mixed; boundary=zzz\n\nonly text\n");
  r = run_simple(msg, MODE_ALL);
  ck_assert_uint_eq(r->nparts, 1);
  ck_assert_uint_eq(r->parts[0].status, MAILOAUTH_MIME_ST_UNTERMINATED);
  rec_free(r);
  free(msg);

  /* Multipart without a boundary parameter: one opaque part. */
  msg = crlf("Content-Type: multipart/mixed\n\n--x\n\nbody\n");
  r = run_simple(msg, MODE_ALL);
  ck_assert_uint_eq(r->nparts, 1);
  ck_assert_int_eq(r->parts[0].is_multipart, 0);
  ck_assert_int_eq(r->warn[MAILOAUTH_MIME_W_NO_BOUNDARY - 100], 1);
  ck_assert_str_eq((char *) r->parts[0].data.d, "--x\r\n\r\nbody\r\n");
  rec_free(r);
  free(msg);

  /* A part whose header block the boundary cuts short. */
  msg = crlf("Content-Type: multipart/mixed; boundary=b\n\n"
    "--b\nContent-Type: text/csv\n--b--\n");
  r = run_simple(msg, MODE_ALL);
  ck_assert_uint_eq(r->nparts, 2);
  ck_assert_str_eq(r->parts[1].type, "text/csv");
  ck_assert_uint_eq(r->parts[1].nbytes, 0);
  rec_free(r);
  free(msg);
}
END_TEST

START_TEST(test_header_oddities) {
  struct rec *r;
  char *msg;

  /* Folding, case-insensitive names, space before the colon, repeated
   * headers (the first wins), a line that is no header (body starts).
   */
  msg = crlf(
    "From user@example.com Mon Mar 11 08:00:00 2024\n"
    "SUBJECT: first\n"
    "  line\n"
    "\tcontinued\n"
    "subject: second\n"
    "content-TYPE :\n"
    " text/plain;\n"
    " charset=\"UTF-8\"\n"
    "This line has no colon\n"
    "X-Not-A-Header: body\n");
  r = run_simple(msg, MODE_ALL);
  ck_assert_uint_eq(r->nparts, 1);
  ck_assert_str_eq(r->parts[0].subject, "first  line continued");
  ck_assert_str_eq(r->parts[0].charset, "utf-8");
  ck_assert_str_eq((char *) r->parts[0].data.d,
    "This line has no colon\r\nX-Not-A-Header: body\r\n");
  ck_assert_int_eq(r->warn[MAILOAUTH_MIME_W_BAD_HEADER_LINE - 100], 1);
  rec_free(r);
  free(msg);

  /* A boundary right after the headers, no blank line. */
  msg = crlf(
    "Content-Type: multipart/mixed; boundary=x\n"
    "--x\n"
    "\n"
    "a\n"
    "--x--\n");
  r = run_simple(msg, MODE_ALL);
  ck_assert_uint_eq(r->nparts, 2);
  ck_assert_str_eq((char *) r->parts[1].data.d, "a");
  rec_free(r);
  free(msg);

  /* Boundary with a space in it, cut short by the header-line check. */
  msg = crlf(
    "Content-Type: multipart/mixed; boundary=\"my b\"\n"
    "--my b\n"
    "\n"
    "a\n"
    "--my b--\n");
  r = run_simple(msg, MODE_ALL);
  ck_assert_uint_eq(r->nparts, 2);
  ck_assert_str_eq((char *) r->parts[1].data.d, "a");
  rec_free(r);
  free(msg);

  /* No headers at all, no body. */
  r = run_simple("", MODE_ALL);
  ck_assert_uint_eq(r->nparts, 1);
  ck_assert_str_eq(r->parts[0].type, "text/plain");
  ck_assert_str_eq(r->parts[0].section, "1");
  ck_assert_str_eq(r->parts[0].subject, "");
  rec_free(r);

  /* Header block ending at EOF without a line break. */
  r = run_simple("Subject: x\r\nContent-Type: text/csv\r", MODE_ALL);
  ck_assert_uint_eq(r->nparts, 1);
  ck_assert_str_eq(r->parts[0].type, "text/csv");
  ck_assert_str_eq(r->parts[0].subject, "x");
  ck_assert_uint_eq(r->parts[0].nbytes, 0);
  rec_free(r);

  /* Malformed Content-Type falls back to text/plain. */
  r = run_simple("Content-Type: garbage\r\n\r\nx", MODE_ALL);
  ck_assert_str_eq(r->parts[0].type, "text/plain");
  rec_free(r);
  msg = malloc(400);
  strcpy(msg, "Content-Type: text/");
  memset(msg + 19, 'x', 128);
  strcpy(msg + 147, "\r\n\r\n");
  r = run_simple(msg, MODE_ALL);
  ck_assert_str_eq(r->parts[0].type, "text/plain");
  rec_free(r);
  free(msg);

  /* Control characters never reach the subject. */
  r = run_simple("Subject: =?UTF-8?Q?a=0D=0Ab=1B?=\r\n\r\n", MODE_ALL);
  ck_assert_str_eq(r->parts[0].subject, "a  b ");
  rec_free(r);
}
END_TEST

static const struct {
  const char *from, *addr;
} from_cases[] = {
  { "\"Doe, John\" <john@example.com>", "john@example.com" },
  { "john@example.com (John Doe)", "john@example.com" },
  { "=?UTF-8?Q?J=C3=B6rg?= <joerg@example.de>", "joerg@example.de" },
  { "<bare@example.com>", "bare@example.com" },
  { "plain@example.com", "plain@example.com" },
  { "\"a <fake@evil>\" <real@example.com>", "real@example.com" },
  { "undisclosed-recipients:;", "" },
  { "", "" },
};

START_TEST(test_from_addr) {
  size_t i;

  for (i = 0; i < sizeof(from_cases) / sizeof(from_cases[0]); i++) {
    char msg[512];
    struct rec *r;

    snprintf(msg, sizeof(msg), "From: %s\r\n\r\n", from_cases[i].from);
    r = run_simple(msg, MODE_NONE);
    ck_assert_msg(strcmp(r->parts[0].from_addr, from_cases[i].addr) == 0,
      "'%s' gave '%s'", from_cases[i].from, r->parts[0].from_addr);
    rec_free(r);
  }
}
END_TEST

START_TEST(test_digest_and_rfc822_encoded) {
  struct rec *r;
  char *msg;

  /* multipart/digest: parts are messages unless they say otherwise. */
  msg = crlf(
    "Content-Type: multipart/digest; boundary=d\n\n"
    "--d\n\nSubject: one\n\nbody one\n"
    "--d\nContent-Type: text/plain\n\nnot a message\n"
    "--d--\n");
  r = run_simple(msg, MODE_ALL);
  ck_assert_uint_eq(r->nparts, 4);
  ck_assert_str_eq(r->parts[1].type, "message/rfc822");
  ck_assert_str_eq(r->parts[2].subject, "one");
  ck_assert_str_eq(r->parts[2].section, "1.1");
  ck_assert_str_eq((char *) r->parts[2].data.d, "body one");
  ck_assert_str_eq(r->parts[3].type, "text/plain");
  rec_free(r);
  free(msg);

  /* A base64-encoded attached message is decoded, then parsed. */
  msg = crlf(
    "Content-Type: multipart/mixed; boundary=o\n\n"
    "--o\n"
    "Content-Type: message/rfc822\n"
    "Content-Transfer-Encoding: base64\n\n"
    /* "Subject: inner\r\nContent-Type: text/plain\r\n\r\nhello" */
    "U3ViamVjdDogaW5uZXINCkNvbnRlbnQtVHlwZTogdGV4dC9wbGFpbg0KDQpoZWxs\n"
    "bw==\n"
    "--o--\n");
  r = run_simple(msg, MODE_ALL);
  ck_assert_uint_eq(r->nparts, 3);
  ck_assert_str_eq(r->parts[2].subject, "inner");
  ck_assert_str_eq(r->parts[2].section, "1.1");
  ck_assert_uint_eq(r->parts[2].in_message, 1);
  ck_assert_str_eq((char *) r->parts[2].data.d, "hello");
  rec_free(r);
  free(msg);
}
END_TEST

/* ------------------------------------------------------------------------
 * Decoding
 */

static struct rec *one_part(const char *cte, const char *body) {
  char *msg = malloc(strlen(body) + 256);
  struct rec *r;
  struct runopt o = { NULL, MODE_ALL, 0, 0 };
  int rc;

  sprintf(msg, "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
    "Content-Transfer-Encoding: %s\r\n\r\n%s\r\n--b--\r\n", cte, body);
  r = run_all(msg, strlen(msg), &o, &rc, NULL);
  ck_assert_int_eq(rc, 0);
  ck_assert_uint_eq(r->nparts, 2);
  free(msg);
  return r;
}

START_TEST(test_base64) {
  struct rec *r;

  /* Line lengths and whitespace do not matter. */
  r = one_part("BASE64", "YW Jj\r\n\tZG\r\nVm\r\n");
  ck_assert_str_eq((char *) r->parts[1].data.d, "abcdef");
  ck_assert_uint_eq(r->parts[1].status, 0);
  rec_free(r);

  /* Padding in mid-stream: concatenated encodings. */
  r = one_part("base64", "YQ==\r\nYWI=\r\nYWJj");
  ck_assert_str_eq((char *) r->parts[1].data.d, "aababc");
  ck_assert_uint_eq(r->parts[1].status, 0);
  rec_free(r);

  /* Garbage skipped and reported. */
  r = one_part("base64", "YW*Jj!ZG-Vm");
  ck_assert_str_eq((char *) r->parts[1].data.d, "abcdef");
  ck_assert_uint_eq(r->parts[1].status, MAILOAUTH_MIME_ST_BAD_ENCODING);
  ck_assert_int_eq(r->warn[MAILOAUTH_MIME_W_BAD_BASE64 - 100], 1);
  rec_free(r);

  /* Without padding: whole bytes, exact, nothing lost. */
  r = one_part("base64", "YWJjZGU");
  ck_assert_str_eq((char *) r->parts[1].data.d, "abcde");
  ck_assert_uint_eq(r->parts[1].status, 0);
  ck_assert_int_eq(r->warn[MAILOAUTH_MIME_W_BAD_BASE64 - 100], 0);
  rec_free(r);

  r = one_part("base64", "YWJjZA\r\n");
  ck_assert_str_eq((char *) r->parts[1].data.d, "abcd");
  ck_assert_uint_eq(r->parts[1].status, 0);
  rec_free(r);

  /* Part of the padding. */
  r = one_part("base64", "YWJjZA=");
  ck_assert_str_eq((char *) r->parts[1].data.d, "abcd");
  ck_assert_uint_eq(r->parts[1].status, 0);
  rec_free(r);

  /* Early padding: concatenated encodings, on one line or several. */
  r = one_part("base64", "YQ==YWI=YWJj\r\nYQ=\r\nYg");
  ck_assert_str_eq((char *) r->parts[1].data.d, "aababcab");
  ck_assert_uint_eq(r->parts[1].status, 0);
  rec_free(r);

  /* A lone final character is six bits of a lost byte. */
  r = one_part("base64", "YWJjZ");
  ck_assert_str_eq((char *) r->parts[1].data.d, "abc");
  ck_assert_uint_eq(r->parts[1].status, MAILOAUTH_MIME_ST_BAD_ENCODING);
  rec_free(r);

  /* Excess padding carries nothing. */
  r = one_part("base64", "YQ====\r\n=");
  ck_assert_str_eq((char *) r->parts[1].data.d, "a");
  rec_free(r);

  r = one_part("base64", "YQ=x");
  ck_assert_str_eq((char *) r->parts[1].data.d, "a");
  rec_free(r);

  r = one_part("base64", "");
  ck_assert_uint_eq(r->parts[1].nbytes, 0);
  ck_assert_uint_eq(r->parts[1].status, 0);
  rec_free(r);
}
END_TEST

START_TEST(test_quoted_printable) {
  struct rec *r;

  r = one_part("quoted-printable",
    "caf=C3=A9 =c3=a9=\r\n"
    "joined=  \r\n"
    "too   \r\n"
    "100=ZZ and =4 and =\r\n"
    "=3D=3d end=");
  ck_assert_str_eq((char *) r->parts[1].data.d,
    "caf\xc3\xa9 \xc3\xa9joinedtoo\r\n100=ZZ and =4 and == end");
  rec_free(r);

  /* Trailing whitespace of the last line is padding too. */
  r = one_part("quoted-printable", "x \t");
  ck_assert_str_eq((char *) r->parts[1].data.d, "x");
  rec_free(r);

  /* An '=' and whitespace not at the end of the line are literal. */
  r = one_part("quoted-printable", "a= b");
  ck_assert_str_eq((char *) r->parts[1].data.d, "a= b");
  rec_free(r);
}
END_TEST

START_TEST(test_passthrough_encodings) {
  struct rec *r;

  r = one_part("8bit", "\xff\xfe\r\nline");
  ck_assert_str_eq((char *) r->parts[1].data.d, "\xff\xfe\r\nline");
  rec_free(r);

  r = one_part("x-binhex", "(This file must be converted with BinHex 4.0)");
  ck_assert_int_eq(r->parts[1].encoding, MAILOAUTH_MIME_ENC_UNKNOWN);
  ck_assert_str_eq(r->parts[1].encname, "x-binhex");
  ck_assert_str_eq((char *) r->parts[1].data.d,
    "(This file must be converted with BinHex 4.0)");
  ck_assert_int_eq(r->warn[MAILOAUTH_MIME_W_UNKNOWN_ENCODING - 100], 1);
  rec_free(r);
}
END_TEST

static struct rec *roundtrip(const char *cte, const char *body, size_t blen);

START_TEST(test_uuencode) {
  struct rec *r;

  /* "Cat" and "abcdefgh", text before and after, CRLF. */
  r = one_part("x-uuencode", "some text\r\n\r\nbegin 644 cat.txt\r\n"
    "#0V%T\r\n`\r\nend\r\ntrailing words\r\n");
  ck_assert_int_eq(r->parts[1].encoding, MAILOAUTH_MIME_ENC_UUENCODE);
  ck_assert_uint_eq(r->parts[1].nbytes, 3);
  ck_assert_mem_eq(r->parts[1].data.d, "Cat", 3);
  ck_assert_uint_eq(r->parts[1].status, 0);
  ck_assert_int_eq(r->warn[MAILOAUTH_MIME_W_UNKNOWN_ENCODING - 100], 0);
  rec_free(r);

  /* LF only, no "`", no "end", a signature after the data. */
  r = one_part("uuencode", "begin 600 a b\n(86)C9&5F9VA\n-- \nMe\n");
  ck_assert_uint_eq(r->parts[1].nbytes, 8);
  ck_assert_mem_eq(r->parts[1].data.d, "abcdefgh", 8);
  ck_assert_uint_eq(r->parts[1].status, 0);
  rec_free(r);

  /* Trailing spaces stripped by a gateway are zero bits; a checksum
   * character after the data is ignored.
   */
  r = one_part("X-UUEncode", "begin 644 z\r\n#80  \r\n#80``X\r\n \r\nend");
  ck_assert_uint_eq(r->parts[1].nbytes, 6);
  ck_assert_mem_eq(r->parts[1].data.d, "a\0\0a\0\0", 6);
  ck_assert_uint_eq(r->parts[1].status, 0);
  rec_free(r);

  /* Broken lines before any data are skipped and reported. */
  r = one_part("x-uuencode", "begin 644 y\r\nthis is not data\r\n#0V%T\r\n");
  ck_assert_mem_eq(r->parts[1].data.d, "Cat", 3);
  ck_assert_uint_eq(r->parts[1].nbytes, 3);
  ck_assert_uint_eq(r->parts[1].status, MAILOAUTH_MIME_ST_BAD_ENCODING);
  ck_assert_int_eq(r->warn[MAILOAUTH_MIME_W_BAD_UUENCODE - 100], 1);
  rec_free(r);

  /* Cut after a full line (45 bytes), with neither "`" nor "end": more
   * was coming.  The same line closed by "`" is a whole file.
   */
  r = one_part("x-uuencode", "begin 644 f\r\n"
    "M86)C9&5F9VAI:FML;6YO<'%R<W1U=G=X>7HQ,C,T-38W.#DP86)C9&5F9VAI\r\n");
  ck_assert_uint_eq(r->parts[1].nbytes, 45);
  ck_assert_mem_eq(r->parts[1].data.d,
    "abcdefghijklmnopqrstuvwxyz1234567890abcdefghi", 45);
  ck_assert_uint_eq(r->parts[1].status, MAILOAUTH_MIME_ST_BAD_ENCODING);
  rec_free(r);

  r = one_part("x-uuencode", "begin 644 f\r\n"
    "M86)C9&5F9VAI:FML;6YO<'%R<W1U=G=X>7HQ,C,T-38W.#DP86)C9&5F9VAI\r\n"
    "`\r\n");
  ck_assert_uint_eq(r->parts[1].nbytes, 45);
  ck_assert_uint_eq(r->parts[1].status, 0);
  rec_free(r);

  /* No "begin": nothing decodable, and said so. */
  r = one_part("x-uuencode", "#0V%T\r\n`\r\nend");
  ck_assert_uint_eq(r->parts[1].nbytes, 0);
  ck_assert_uint_eq(r->parts[1].status, MAILOAUTH_MIME_ST_BAD_ENCODING);
  rec_free(r);

  /* A line too long for uuencode, before the data. */
  {
    char body[600];

    strcpy(body, "begin 644 q\r\n");
    memset(body + strlen(body), 'M', 400);
    strcpy(body + strlen("begin 644 q\r\n") + 400, "\r\n#0V%T\r\nend");
    r = one_part("x-uuencode", body);
    ck_assert_uint_eq(r->parts[1].nbytes, 3);
    ck_assert_mem_eq(r->parts[1].data.d, "Cat", 3);
    ck_assert_uint_eq(r->parts[1].status, MAILOAUTH_MIME_ST_BAD_ENCODING);
    rec_free(r);
  }
}
END_TEST

/* A uuencoder here (the classic one: "`" for zero); lines of 45 bytes. */
static void uuencode_into(struct tbuf *b, const unsigned char *d, size_t n,
    size_t per_line) {
  size_t off = 0;

  tbuf_printf(b, "begin 644 file.bin\r\n");
  while (off < n) {
    size_t len = n - off < per_line ? n - off : per_line, i;
    char line[128];
    size_t k = 0;

    line[k++] = (char) (len == 0 ? '`' : 0x20 + len);
    for (i = 0; i < len; i += 3) {
      unsigned char c[3] = { 0, 0, 0 };
      unsigned int v[4], j;

      memcpy(c, d + off + i, len - i < 3 ? len - i : 3);
      v[0] = c[0] >> 2;
      v[1] = ((c[0] & 3) << 4) | (c[1] >> 4);
      v[2] = ((c[1] & 15) << 2) | (c[2] >> 6);
      v[3] = c[2] & 63;
      for (j = 0; j < 4; j++) {
        line[k++] = (char) (v[j] == 0 ? '`' : 0x20 + v[j]);
      }
    }
    tbuf_add(b, line, k);
    if (xs_next() & 1) {
      tbuf_add(b, "\r\n", 2);
    } else {
      tbuf_add(b, "\n", 1);
    }
    off += len;
  }
  tbuf_printf(b, "`\r\nend\r\n");
}

START_TEST(test_uuencode_random) {
  unsigned int iter;

  xs_state = 1181783497276652981ULL;
  for (iter = 0; iter < 60; iter++) {
    size_t n = (size_t) (xs_next() % 5000), i;
    size_t per_line = 1 + xs_next() % 45;
    unsigned char *raw = malloc(n + 1);
    struct tbuf enc = { NULL, 0, 0 };
    uint64_t seed;
    struct rec *r;

    for (i = 0; i < n; i++) {
      raw[i] = (unsigned char) xs_next();
    }
    uuencode_into(&enc, raw, n, per_line);

    seed = xs_state;
    r = roundtrip("x-uuencode", (char *) enc.d, enc.len);
    xs_state = seed;
    ck_assert_uint_eq(r->parts[1].nbytes, n);
    if (n > 0) {
      ck_assert_mem_eq(r->parts[1].data.d, raw, n);
    }
    ck_assert_uint_eq(r->parts[1].status, 0);
    rec_free(r);
    free(enc.d);
    free(raw);
  }
}
END_TEST

/* Random data encoded independently (OpenSSL's encoder, a QP encoder
 * here), wrapped and padded in random ways, decodes to itself.
 */
static struct rec *roundtrip(const char *cte, const char *body, size_t blen) {
  struct tbuf b = { NULL, 0, 0 };
  struct runopt o = { NULL, MODE_ALL, 0, 0 };
  struct rec *r;
  int rc;

  tbuf_printf(&b, "Content-Type: multipart/mixed; boundary=rt\r\n\r\n--rt\r\n"
    "Content-Transfer-Encoding: %s\r\n\r\n", cte);
  tbuf_add(&b, body, blen);
  tbuf_printf(&b, "\r\n--rt--\r\n");
  r = run_all(b.d, b.len, &o, &rc, NULL);
  ck_assert_int_eq(rc, 0);
  ck_assert_uint_eq(r->nparts, 2);
  free(b.d);
  return r;
}

START_TEST(test_base64_random) {
  unsigned int iter;

  xs_state = 88172645463325252ULL;
  for (iter = 0; iter < 150; iter++) {
    size_t n = (size_t) (xs_next() % 6000), i, pieces = 1 + xs_next() % 3;
    size_t width = 4 * (1 + xs_next() % 30), done = 0;
    unsigned char *raw = malloc(n + 1);
    struct tbuf enc = { NULL, 0, 0 };
    uint64_t seed;
    struct rec *r;

    for (i = 0; i < n; i++) {
      raw[i] = (unsigned char) xs_next();
    }
    /* Several independently padded encodings back to back. */
    for (i = 0; i < pieces; i++) {
      size_t len = i + 1 == pieces ? n - done : (n - done) / 2;
      unsigned char *e = malloc(4 * (len / 3 + 1) + 1);
      int elen = EVP_EncodeBlock(e, raw + done, (int) len), k;

      for (k = 0; k < elen; k++) {
        tbuf_add(&enc, e + k, 1);
        if ((size_t) (k + 1) % width == 0) {
          tbuf_add(&enc, (xs_next() & 1) ? "\r\n" : " \t\r\n", 2);
        }
      }
      tbuf_add(&enc, "\r\n", 2);
      done += len;
      free(e);
    }

    seed = xs_state;
    r = roundtrip("base64", (char *) enc.d, enc.len);
    xs_state = seed;
    ck_assert_uint_eq(r->parts[1].nbytes, n);
    if (n > 0) {
      ck_assert_mem_eq(r->parts[1].data.d, raw, n);
    }
    ck_assert_uint_eq(r->parts[1].status, 0);
    rec_free(r);
    free(enc.d);
    free(raw);
  }
}
END_TEST

START_TEST(test_qp_random) {
  unsigned int iter;

  xs_state = 1442695040888963407ULL;
  for (iter = 0; iter < 150; iter++) {
    size_t n = (size_t) (xs_next() % 3000), i, col = 0;
    unsigned char *raw = malloc(n + 1);
    struct tbuf enc = { NULL, 0, 0 };
    uint64_t seed;
    struct rec *r;

    /* Text-like bytes with some binary, CRLF line breaks kept as such. */
    for (i = 0; i < n; i++) {
      uint64_t x = xs_next() % 100;

      raw[i] = x < 70 ? (unsigned char) ('a' + x % 26) : x < 80 ? ' ' :
        x < 85 ? '=' : (unsigned char) xs_next();
      if (x == 99 && i + 1 < n) {
        raw[i] = '\r';
        raw[++i] = '\n';
      }
    }

    for (i = 0; i < n; i++) {
      unsigned char c = raw[i];
      char tmp[4];
      int literal = (c >= 33 && c <= 126 && c != '=') ||
        (c == ' ' && i + 1 < n && raw[i + 1] != '\r');

      if (c == '\r' && i + 1 < n && raw[i + 1] == '\n') {
        tbuf_add(&enc, "\r\n", 2);
        i++;
        col = 0;
        continue;
      }
      if (col > 70) {
        /* Soft break, sometimes with transport padding. */
        if (xs_next() & 1) {
          tbuf_add(&enc, "=\r\n", 3);
        } else {
          tbuf_add(&enc, "=  \r\n", 5);
        }
        col = 0;
      }
      if (literal) {
        tbuf_add(&enc, &c, 1);
        col++;
      } else {
        snprintf(tmp, sizeof(tmp), (xs_next() & 1) ? "=%02X" : "=%02x", c);
        tbuf_add(&enc, tmp, 3);
        col += 3;
      }
    }

    seed = xs_state;
    r = roundtrip("quoted-printable", enc.d ? (char *) enc.d : "", enc.len);
    xs_state = seed;
    ck_assert_uint_eq(r->parts[1].nbytes, n);
    if (n > 0) {
      ck_assert_mem_eq(r->parts[1].data.d, raw, n);
    }
    rec_free(r);
    free(enc.d);
    free(raw);
  }
}
END_TEST

/* ------------------------------------------------------------------------
 * Limits and the caller's control
 */

static char *many_parts(unsigned int n, size_t *len) {
  struct tbuf b = { NULL, 0, 0 };
  unsigned int i;

  tbuf_printf(&b, "Content-Type: multipart/mixed; boundary=p\r\n\r\n");
  for (i = 0; i < n; i++) {
    tbuf_printf(&b, "--p\r\nContent-Type: text/plain; name=\"f%u.txt\"\r\n"
      "\r\npart %u\r\n", i, i);
  }
  tbuf_printf(&b, "--p--\r\n");
  *len = b.len;
  return (char *) b.d;
}

START_TEST(test_many_parts) {
  struct mailoauth_mime_limits lim;
  struct runopt o = { NULL, MODE_ALL, 0, 0 };
  size_t len, i;
  char *msg = many_parts(5000, &len);
  struct rec *r;
  int rc, err;

  r = run_all(msg, len, &o, &rc, &err);
  ck_assert_int_eq(rc, -1);
  ck_assert_int_eq(err, MAILOAUTH_MIME_E_TOO_MANY_PARTS);
  ck_assert_int_eq(r->fatal, MAILOAUTH_MIME_E_TOO_MANY_PARTS);
  ck_assert_uint_eq(r->nparts, MAILOAUTH_MIME_DEFAULT_MAX_PARTS);
  ck_assert_uint_eq(r->parts[0].status, MAILOAUTH_MIME_ST_TRUNCATED);
  rec_free(r);

  memset(&lim, 0, sizeof(lim));
  lim.max_parts = 6000;
  o.lim = &lim;
  r = run_all(msg, len, &o, &rc, &err);
  ck_assert_int_eq(rc, 0);
  ck_assert_uint_eq(r->nparts, 5001);
  for (i = 1; i < r->nparts; i += 999) {
    char want[32];

    snprintf(want, sizeof(want), "part %lu", (unsigned long) (i - 1));
    ck_assert_str_eq((char *) r->parts[i].data.d, want);
  }
  rec_free(r);
  free(msg);
}
END_TEST

START_TEST(test_deep_nesting) {
  struct tbuf b = { NULL, 0, 0 };
  struct runopt o = { NULL, MODE_ALL, 0, 0 };
  struct rec *r;
  unsigned int i;
  int rc, err;

  /* 1000 nested multiparts. */
  for (i = 0; i < 1000; i++) {
    tbuf_printf(&b, "Content-Type: multipart/mixed; boundary=\"n%u\"\r\n\r\n"
      "--n%u\r\n", i, i);
  }
  tbuf_printf(&b, "\r\ndeepest\r\n");
  r = run_all(b.d, b.len, &o, &rc, &err);
  ck_assert_int_eq(rc, -1);
  ck_assert_int_eq(err, MAILOAUTH_MIME_E_TOO_DEEP);
  ck_assert_uint_eq(r->nparts, MAILOAUTH_MIME_DEFAULT_MAX_DEPTH + 1);
  for (i = 0; i < r->nparts; i++) {
    ck_assert_uint_eq(r->parts[i].status, MAILOAUTH_MIME_ST_TRUNCATED);
  }
  rec_free(r);
  free(b.d);

  /* 1000 messages each attached to the one before. */
  memset(&b, 0, sizeof(b));
  for (i = 0; i < 1000; i++) {
    tbuf_printf(&b, "Subject: level %u\r\nContent-Type: message/rfc822\r\n"
      "\r\n", i);
  }
  r = run_all(b.d, b.len, &o, &rc, &err);
  ck_assert_int_eq(rc, -1);
  ck_assert_int_eq(err, MAILOAUTH_MIME_E_TOO_DEEP);
  ck_assert_uint_eq(r->nparts, MAILOAUTH_MIME_DEFAULT_MAX_DEPTH + 1);
  ck_assert_str_eq(r->parts[5].subject, "level 5");
  ck_assert_uint_eq(r->parts[5].in_message, 5);
  rec_free(r);
  free(b.d);
}
END_TEST

START_TEST(test_huge_header_line) {
  struct runopt o = { NULL, MODE_ALL, 0, 0 };
  size_t len = 10 << 20, i;
  char *msg = malloc(len);
  struct rec *r;
  int rc, err;

  ck_assert_ptr_nonnull(msg);
  memcpy(msg, "X-Long: ", 8);
  for (i = 8; i < len; i++) {
    msg[i] = (char) ('a' + i % 26);
  }
  r = run_all(msg, len, &o, &rc, &err);
  ck_assert_int_eq(rc, -1);
  ck_assert_int_eq(err, MAILOAUTH_MIME_E_HEADER_TOO_BIG);
  ck_assert_uint_eq(r->nparts, 0);
  rec_free(r);

  /* Not a header: flows through as body. */
  msg[1] = ' ';
  r = run_all(msg, len, &o, &rc, &err);
  ck_assert_int_eq(rc, 0);
  ck_assert_uint_eq(r->nparts, 1);
  ck_assert_uint_eq(r->parts[0].nbytes, len);
  rec_free(r);
  free(msg);
}
END_TEST

START_TEST(test_size_limits) {
  struct mailoauth_mime_limits lim;
  struct runopt o = { &lim, MODE_ALL, 0, 0 };
  size_t len;
  char *msg = many_parts(10, &len);
  struct rec *r;
  int rc, err;

  /* "part N" is 6 or 7 bytes. */
  memset(&lim, 0, sizeof(lim));
  lim.max_part_bytes = 5;
  r = run_all(msg, len, &o, &rc, &err);
  ck_assert_int_eq(rc, -1);
  ck_assert_int_eq(err, MAILOAUTH_MIME_E_PART_TOO_BIG);
  ck_assert_uint_eq(r->nparts, 2);
  ck_assert_str_eq((char *) r->parts[1].data.d, "part ");
  ck_assert_uint_eq(r->parts[1].status, MAILOAUTH_MIME_ST_TRUNCATED);
  ck_assert_uint_eq(r->parts[0].status, MAILOAUTH_MIME_ST_TRUNCATED);
  rec_free(r);

  memset(&lim, 0, sizeof(lim));
  lim.max_total_bytes = 20;
  r = run_all(msg, len, &o, &rc, &err);
  ck_assert_int_eq(err, MAILOAUTH_MIME_E_TOTAL_TOO_BIG);
  ck_assert_uint_eq(r->nparts, 5);
  ck_assert_str_eq((char *) r->parts[4].data.d, "pa");
  ck_assert_uint_eq(r->parts[3].status, 0);
  ck_assert_uint_eq(r->parts[4].status, MAILOAUTH_MIME_ST_TRUNCATED);
  rec_free(r);

  /* Skipped parts cost nothing. */
  o.mode = MODE_NONE;
  r = run_all(msg, len, &o, &rc, &err);
  ck_assert_int_eq(rc, 0);
  rec_free(r);

  /* Exactly at the limit is fine. */
  memset(&lim, 0, sizeof(lim));
  lim.max_part_bytes = 6;
  lim.max_header_bytes = 60;
  o.mode = MODE_ALL;
  r = run_all(msg, len, &o, &rc, &err);
  ck_assert_int_eq(rc, 0);
  rec_free(r);

  lim.max_header_bytes = 40;
  r = run_all(msg, len, &o, &rc, &err);
  ck_assert_int_eq(err, MAILOAUTH_MIME_E_HEADER_TOO_BIG);
  rec_free(r);
  free(msg);

  /* A line found not to be a header only after some bytes: those bytes
   * count against the limit however the input is chunked (found by
   * fuzzing).
   */
  msg = crlf("Subject: 0123456789\nabcdefghij klm\n\nbody\n");
  memset(&lim, 0, sizeof(lim));
  lim.max_header_bytes = 25;
  r = run_all(msg, strlen(msg), &o, &rc, &err);
  ck_assert_int_eq(err, MAILOAUTH_MIME_E_HEADER_TOO_BIG);
  rec_free(r);
  lim.max_header_bytes = 31;
  r = run_all(msg, strlen(msg), &o, &rc, &err);
  ck_assert_int_eq(rc, 0);
  ck_assert_str_eq((char *) r->parts[0].data.d,
    "abcdefghij klm\r\n\r\nbody\r\n");
  rec_free(r);
  free(msg);
}
END_TEST

/* Limits inside an attached message received as .eml and descended into
 * (found by fuzzing: counted at both levels, the total was reached at a
 * point that depended on the chunking).
 */
START_TEST(test_limits_in_attached_message) {
  struct mailoauth_mime_limits lim;
  struct runopt o = { &lim, MODE_EML_BOTH, 0, 0 };
  size_t len;
  char *msg = load_corpus("forwarded.eml", &len);
  struct rec *r;
  int rc, err;

  /* The .eml does not count toward the total: its parts do. */
  memset(&lim, 0, sizeof(lim));
  lim.max_total_bytes = 1000;
  r = run_all(msg, len, &o, &rc, &err);
  ck_assert_int_eq(err, MAILOAUTH_MIME_E_TOTAL_TOO_BIG);
  ck_assert_uint_eq(r->nparts, 6);
  ck_assert_uint_eq(r->parts[5].nbytes, 1000 - 13 - 33);
  ck_assert_uint_eq(r->parts[5].status, MAILOAUTH_MIME_ST_TRUNCATED);
  ck_assert_uint_eq(r->parts[2].status, MAILOAUTH_MIME_ST_TRUNCATED);
  rec_free(r);

  /* Its own limit still applies, before the parts inside see the bytes. */
  memset(&lim, 0, sizeof(lim));
  lim.max_part_bytes = 400;
  r = run_all(msg, len, &o, &rc, &err);
  ck_assert_int_eq(err, MAILOAUTH_MIME_E_PART_TOO_BIG);
  ck_assert_uint_eq(r->parts[2].nbytes, 400);
  ck_assert_uint_eq(r->parts[2].status, MAILOAUTH_MIME_ST_TRUNCATED);
  rec_free(r);
  free(msg);
}
END_TEST

START_TEST(test_caller_stops) {
  struct runopt o = { NULL, MODE_ALL, 0, 0 };
  size_t len;
  char *msg = many_parts(10, &len);
  struct rec *r;
  int rc, err;

  /* How much arrives before the caller says stop depends on the chunks,
   * so these runs are not compared across chunkings.
   */

  /* part_data returning 1: no more of that part, parsing goes on. */
  o.stop_after = 2;
  r = run_opt(msg, len, CHUNK_WHOLE, &o, &rc, &err);
  ck_assert_int_eq(rc, 0);
  ck_assert_uint_eq(r->nparts, 11);
  ck_assert_str_eq((char *) r->parts[4].data.d, "part 3");
  rec_free(r);
  r = run_opt(msg, len, CHUNK_BYTES, &o, &rc, &err);
  ck_assert_int_eq(rc, 0);
  ck_assert_uint_eq(r->nparts, 11);
  ck_assert_str_eq((char *) r->parts[4].data.d, "pa");
  rec_free(r);

  /* part_data returning -1: everything open ends, marked aborted. */
  o.stop_after = 0;
  o.abort_after = 15;
  r = run_opt(msg, len, CHUNK_BYTES, &o, &rc, &err);
  ck_assert_int_eq(rc, -1);
  ck_assert_int_eq(err, MAILOAUTH_MIME_E_ABORTED);
  ck_assert_int_eq(r->fatal, MAILOAUTH_MIME_E_ABORTED);
  ck_assert_uint_eq(r->nparts, 4);
  ck_assert_str_eq((char *) r->parts[3].data.d, "par");
  ck_assert_uint_eq(r->parts[3].status, MAILOAUTH_MIME_ST_ABORTED);
  ck_assert_uint_eq(r->parts[0].status, MAILOAUTH_MIME_ST_ABORTED);
  rec_free(r);
  free(msg);
}
END_TEST

static int begin_abort(const struct mailoauth_mime_part *p, void *arg) {
  (void) arg;
  return p->index == 2 ? -1 : MAILOAUTH_MIME_BODY;
}

static int end_count(const struct mailoauth_mime_part *p, unsigned int st,
    void *arg) {
  (void) p;
  (void) st;
  (*(int *) arg)++;
  return 0;
}

START_TEST(test_api_misuse) {
  struct mailoauth_mime_callbacks cb;
  struct mailoauth_mime *p;
  size_t len;
  char *msg = many_parts(3, &len);
  int ends = 0;

  memset(&cb, 0, sizeof(cb));
  cb.part_begin = begin_abort;
  cb.part_end = end_count;
  cb.arg = &ends;
  p = mailoauth_mime_create(NULL, &cb);
  ck_assert_int_eq(mailoauth_mime_feed(p, msg, len), -1);
  ck_assert_int_eq(errno, ECANCELED);
  /* The part that refused gets no end; the two before it do. */
  ck_assert_int_eq(ends, 2);
  ck_assert_int_eq(mailoauth_mime_feed(p, "x", 1), -1);
  ck_assert_int_eq(mailoauth_mime_finish(p), -1);
  ck_assert_int_eq(mailoauth_mime_feed(p, "x", 1), -1);
  ck_assert_int_eq(errno, EINVAL);
  ck_assert_str_eq(mailoauth_mime_strerror(mailoauth_mime_error(p)),
    "stopped by the caller");
  mailoauth_mime_destroy(p);

  /* No callbacks at all; destroy while parts are open. */
  p = mailoauth_mime_create(NULL, NULL);
  ck_assert_int_eq(mailoauth_mime_feed(p, msg, len / 2), 0);
  mailoauth_mime_destroy(p);

  p = mailoauth_mime_create(NULL, NULL);
  ck_assert_int_eq(mailoauth_mime_feed(p, msg, len), 0);
  ck_assert_int_eq(mailoauth_mime_finish(p), 0);
  ck_assert_int_eq(mailoauth_mime_finish(p), -1);
  ck_assert_int_eq(errno, EINVAL);
  mailoauth_mime_destroy(p);
  mailoauth_mime_destroy(NULL);
  free(msg);
}
END_TEST

/* ------------------------------------------------------------------------
 * Constant memory for a large attachment
 */

static size_t heap_in_use(void) {
#ifdef TEST_ASAN
  return __sanitizer_get_current_allocated_bytes();
#else
  struct mallinfo2 mi = mallinfo2();

  return mi.uordblks + mi.hblkhd;
#endif
}

struct big_ctx {
  uint64_t bytes, hash;
};

static int big_begin(const struct mailoauth_mime_part *p, void *arg) {
  (void) p;
  (void) arg;
  return MAILOAUTH_MIME_BODY;
}

static int big_data(const struct mailoauth_mime_part *p,
    const unsigned char *d, size_t n, void *arg) {
  struct big_ctx *c = arg;

  (void) p;
  c->bytes += n;
  c->hash = fnv64(c->hash, d, n);
  return 0;
}

START_TEST(test_large_attachment_constant_memory) {
  struct mailoauth_mime_limits lim;
  struct mailoauth_mime_callbacks cb;
  struct mailoauth_mime *p;
  struct big_ctx ctx = { 0, 14695981039346656037ULL };
  const char *env = getenv("MAILOAUTH_TEST_BIG_MB");
  uint64_t mb = env ? strtoull(env, NULL, 10) : 64, target, fed = 0;
  uint64_t want_hash = 14695981039346656037ULL;
  unsigned char raw[57 * 64], line[78 * 64 + 1];
  size_t before, peak = 0, i, k;
  static const char head[] =
    "Content-Type: multipart/mixed; boundary=big\r\n\r\n--big\r\n"
    "Content-Type: application/octet-stream; name=big.bin\r\n"
    "Content-Transfer-Encoding: base64\r\n\r\n";

  target = mb << 20;
  memset(&lim, 0, sizeof(lim));
  lim.max_part_bytes = UINT64_MAX;
  lim.max_total_bytes = UINT64_MAX;
  memset(&cb, 0, sizeof(cb));
  cb.part_begin = big_begin;
  cb.part_data = big_data;
  cb.arg = &ctx;

  before = heap_in_use();
  p = mailoauth_mime_create(&lim, &cb);
  ck_assert_int_eq(mailoauth_mime_feed(p, head, sizeof(head) - 1), 0);

  for (i = 0; i < sizeof(raw); i++) {
    raw[i] = (unsigned char) (i * 31 + 7);
  }
  /* 64 lines of 76 base64 characters per round. */
  for (k = 0; k < 64; k++) {
    EVP_EncodeBlock(line + k * 78, raw + k * 57, 57);
    line[k * 78 + 76] = '\r';
    line[k * 78 + 77] = '\n';
  }
  while (fed < target) {
    ck_assert_int_eq(mailoauth_mime_feed(p, line, 78 * 64), 0);
    want_hash = fnv64(want_hash, raw, sizeof(raw));
    fed += sizeof(raw);
    if ((fed & ((1 << 22) - 1)) < sizeof(raw)) {
      size_t now = heap_in_use();

      if (now > peak) {
        peak = now;
      }
    }
  }
  ck_assert_int_eq(mailoauth_mime_feed(p, "\r\n--big--\r\n", 11), 0);
  ck_assert_int_eq(mailoauth_mime_finish(p), 0);
  mailoauth_mime_destroy(p);

  ck_assert(ctx.bytes == fed);
  ck_assert(ctx.hash == want_hash);
  /* The parser holds kilobytes, whatever the size of the attachment. */
  ck_assert_msg(peak < before + (256 << 10), "heap grew by %lu bytes",
    (unsigned long) (peak - before));
}
END_TEST

int main(void) {
  Suite *s = suite_create("mime");
  TCase *tc = tcase_create("mime");
  SRunner *sr;
  int failed;

  tcase_set_timeout(tc, 600);
  tcase_add_test(tc, test_outlook);
  tcase_add_test(tc, test_uuencode);
  tcase_add_test(tc, test_uuencode_random);
  tcase_add_test(tc, test_recipients);
  tcase_add_test(tc, test_auth_results);
  tcase_add_test(tc, test_gmail);
  tcase_add_test(tc, test_applemail);
  tcase_add_test(tc, test_thunderbird);
  tcase_add_test(tc, test_cid_refs);
  tcase_add_test(tc, test_cid_bounds);
  tcase_add_test(tc, test_forwarded_descend);
  tcase_add_test(tc, test_forwarded_as_eml);
  tcase_add_test(tc, test_inline_images);
  tcase_add_test(tc, test_signed);
  tcase_add_test(tc, test_report);
  tcase_add_test(tc, test_lf_line_ends);
  tcase_add_test(tc, test_truncated_messages);
  tcase_add_test(tc, test_charset_names);
  tcase_add_test(tc, test_decode_header);
  tcase_add_test(tc, test_header_params);
  tcase_add_test(tc, test_to_utf8);
  tcase_add_test(tc, test_hostile_names);
  tcase_add_test(tc, test_boundary_lookalikes);
  tcase_add_test(tc, test_bare_lf_and_mixed);
  tcase_add_test(tc, test_missing_boundaries);
  tcase_add_test(tc, test_header_oddities);
  tcase_add_test(tc, test_from_addr);
  tcase_add_test(tc, test_digest_and_rfc822_encoded);
  tcase_add_test(tc, test_base64);
  tcase_add_test(tc, test_quoted_printable);
  tcase_add_test(tc, test_passthrough_encodings);
  tcase_add_test(tc, test_base64_random);
  tcase_add_test(tc, test_qp_random);
  tcase_add_test(tc, test_many_parts);
  tcase_add_test(tc, test_deep_nesting);
  tcase_add_test(tc, test_huge_header_line);
  tcase_add_test(tc, test_size_limits);
  tcase_add_test(tc, test_limits_in_attached_message);
  tcase_add_test(tc, test_caller_stops);
  tcase_add_test(tc, test_api_misuse);
  tcase_add_test(tc, test_large_attachment_constant_memory);
  suite_add_tcase(s, tc);

  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
