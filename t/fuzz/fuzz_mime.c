/*
 * libFuzzer target: the streaming MIME parser and its header decoders.
 *
 * Input: one configuration byte (limits, what the callbacks ask for), one
 * byte seeding the chunk sizes, then the message.  The message is parsed
 * whole and again in chunks of pseudo-random sizes; both runs must report
 * the same events and the same decoded bytes, every part that began must
 * end, in nesting order, and the parser's own bounds must hold.  A third
 * run has a callback fail at a point taken from the input, for the paths
 * that unwind a parse.  The message is also scanned for cid: references,
 * whole and in chunks.
 */

#include "mailoauth/mime.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_MAX_OPEN   (MAILOAUTH_MIME_MAX_DEPTH_LIMIT + 8)

struct fuzz_rec {
  uint64_t log;                 /* hash of the whole event stream */
  uint64_t open_hash[FUZZ_MAX_OPEN];
  const struct mailoauth_mime_part *open[FUZZ_MAX_OPEN];
  unsigned int depth, nparts;
  int mode;
  int fatal;
  unsigned int fail_at;         /* callback number that returns -1, 0: none */
  unsigned int calls;
};

static int fuzz_fail_now(struct fuzz_rec *r) {
  return r->fail_at != 0 && ++r->calls == r->fail_at;
}

static uint64_t fuzz_fnv(uint64_t h, const void *d, size_t n) {
  const unsigned char *p = d;
  size_t i;

  for (i = 0; i < n; i++) {
    h ^= p[i];
    h *= 1099511628211ULL;
  }
  return h;
}

static uint64_t fuzz_str(uint64_t h, const char *s) {
  if (s == NULL) {
    return fuzz_fnv(h, "\xff", 1);
  }
  if (strlen(s) > MAILOAUTH_MIME_MAX_FIELD) {
    abort();
  }
  return fuzz_fnv(h, s, strlen(s) + 1);
}

static int fuzz_begin(const struct mailoauth_mime_part *p, void *arg) {
  struct fuzz_rec *r = arg;
  uint64_t h = r->log;

  if (r->depth >= FUZZ_MAX_OPEN || p->index != r->nparts ||
      p->message == NULL || p->section == NULL || p->content_type == NULL ||
      p->charset == NULL || p->encoding_name == NULL) {
    abort();
  }
  r->nparts++;
  if (fuzz_fail_now(r)) {
    return -1;
  }

  h = fuzz_fnv(h, "B", 1);
  h = fuzz_fnv(h, &p->depth, sizeof(p->depth));
  h = fuzz_str(h, p->section);
  h = fuzz_str(h, p->content_type);
  h = fuzz_str(h, p->charset);
  h = fuzz_str(h, p->filename);
  h = fuzz_str(h, p->content_id);
  h = fuzz_str(h, p->encoding_name);
  h = fuzz_str(h, p->message->subject);
  h = fuzz_str(h, p->message->from);
  h = fuzz_str(h, p->message->from_addr);
  h = fuzz_str(h, p->message->date);
  h = fuzz_str(h, p->message->message_id);
  h = fuzz_fnv(h, &p->disposition, sizeof(p->disposition));
  h = fuzz_fnv(h, &p->encoding, sizeof(p->encoding));
  h = fuzz_fnv(h, &p->is_multipart, sizeof(p->is_multipart));
  h = fuzz_fnv(h, &p->is_message, sizeof(p->is_message));
  h = fuzz_fnv(h, &p->in_message, sizeof(p->in_message));
  h = fuzz_fnv(h, &p->size_hint, sizeof(p->size_hint));
  r->log = h;

  r->open[r->depth] = p;
  r->open_hash[r->depth] = 14695981039346656037ULL;
  r->depth++;

  switch (r->mode) {
    case 0:
      return p->is_message ? MAILOAUTH_MIME_DESCEND : MAILOAUTH_MIME_BODY;
    case 1:
      return MAILOAUTH_MIME_BODY | MAILOAUTH_MIME_DESCEND;
    case 2:
      return MAILOAUTH_MIME_BODY;
    default:
      return (p->index & 1) ? MAILOAUTH_MIME_DESCEND : MAILOAUTH_MIME_SKIP;
  }
}

static int fuzz_data(const struct mailoauth_mime_part *p,
    const unsigned char *d, size_t n, void *arg) {
  struct fuzz_rec *r = arg;
  unsigned int i;

  if (n == 0 || r->depth == 0 || p->is_multipart) {
    abort();
  }
  /* Only a message's .eml may flow while parts inside it are open. */
  if (r->open[r->depth - 1] != p && !p->is_message) {
    abort();
  }
  for (i = r->depth; i-- > 0;) {
    if (r->open[i] == p) {
      r->open_hash[i] = fuzz_fnv(r->open_hash[i], d, n);
      return fuzz_fail_now(r) ? -1 : 0;
    }
  }
  abort();
}

static int fuzz_end(const struct mailoauth_mime_part *p, unsigned int status,
    void *arg) {
  struct fuzz_rec *r = arg;

  if (r->depth == 0 || r->open[r->depth - 1] != p || status > 0xf) {
    abort();
  }
  r->depth--;
  r->log = fuzz_fnv(r->log, "E", 1);
  r->log = fuzz_fnv(r->log, &status, sizeof(status));
  /* How much .eml a message cut by a fatal error inside it received is
   * left open by the API; everything else must match.
   */
  if (!(p->is_message && (status & (MAILOAUTH_MIME_ST_TRUNCATED |
      MAILOAUTH_MIME_ST_ABORTED)))) {
    r->log = fuzz_fnv(r->log, &r->open_hash[r->depth], sizeof(uint64_t));
  }
  return fuzz_fail_now(r) ? -1 : 0;
}

static void fuzz_error(int code, const struct mailoauth_mime_part *p,
    void *arg) {
  struct fuzz_rec *r = arg;

  if (MAILOAUTH_MIME_IS_FATAL(code)) {
    if (r->fatal != 0) {
      abort();
    }
    r->fatal = code;
  }
  r->log = fuzz_fnv(r->log, &code, sizeof(code));
  r->log = fuzz_str(r->log, p ? p->section : NULL);
}

static uint64_t fuzz_parse(const uint8_t *d, size_t n, uint8_t cfg,
    uint8_t seed, int chunked, unsigned int fail_at) {
  struct mailoauth_mime_limits lim;
  struct mailoauth_mime_callbacks cb;
  struct mailoauth_mime *p;
  struct fuzz_rec r;
  uint32_t x = 0x9e3779b9u ^ seed;
  size_t off = 0;
  int rc = 0;

  memset(&r, 0, sizeof(r));
  r.mode = (cfg >> 1) & 3;
  r.fail_at = fail_at;
  r.log = 14695981039346656037ULL;

  memset(&lim, 0, sizeof(lim));
  if (cfg & 1) {
    lim.max_header_bytes = 512;
    lim.max_parts = 40;
    lim.max_depth = 6;
    lim.max_part_bytes = 3000;
    lim.max_total_bytes = 6000;
  }

  memset(&cb, 0, sizeof(cb));
  cb.part_begin = fuzz_begin;
  cb.part_data = fuzz_data;
  cb.part_end = fuzz_end;
  cb.error = fuzz_error;
  cb.arg = &r;

  p = mailoauth_mime_create(&lim, &cb);
  if (p == NULL) {
    abort();
  }

  while (off < n && rc == 0) {
    size_t k = n - off;

    if (chunked) {
      x ^= x << 13;
      x ^= x >> 17;
      x ^= x << 5;
      k = (x & 3) == 0 ? x % 300 + 1 : (x >> 3) % 5 + 1;
      if (k > n - off) {
        k = n - off;
      }
    }
    rc = mailoauth_mime_feed(p, d + off, k);
    off += k;
  }
  if (rc == 0) {
    rc = mailoauth_mime_finish(p);
  }

  if (r.depth != 0 || (rc == 0) != (mailoauth_mime_error(p) == 0) ||
      r.fatal != mailoauth_mime_error(p)) {
    abort();
  }
  if (fail_at != 0 && r.calls >= fail_at &&
      mailoauth_mime_error(p) != MAILOAUTH_MIME_E_ABORTED &&
      !MAILOAUTH_MIME_IS_FATAL(mailoauth_mime_error(p))) {
    abort();
  }
  mailoauth_mime_destroy(p);

  return fuzz_fnv(r.log, &rc, sizeof(rc));
}

/* The cid: collector: the same ids whatever the chunking, within its
 * bounds, each one found again by lookup.
 */
static void fuzz_cids(const uint8_t *d, size_t n, uint8_t seed) {
  static struct mailoauth_mime_cids a, b;
  uint32_t x = 0x85ebca6bu ^ seed;
  size_t off = 0;
  unsigned int i;

  mailoauth_mime_cids_init(&a);
  mailoauth_mime_cids_feed(&a, d, n);
  mailoauth_mime_cids_end(&a);

  mailoauth_mime_cids_init(&b);
  while (off < n) {
    size_t k;

    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    k = x % 7 + 1;
    if (k > n - off) {
      k = n - off;
    }
    mailoauth_mime_cids_feed(&b, d + off, k);
    off += k;
  }
  mailoauth_mime_cids_end(&b);

  if (a.n != b.n || a.n > MAILOAUTH_MIME_CIDS_MAX) {
    abort();
  }
  for (i = 0; i < a.n; i++) {
    if (strlen(a.ids[i]) > MAILOAUTH_MIME_CID_LEN ||
        strcmp(a.ids[i], b.ids[i]) != 0 ||
        !mailoauth_mime_cids_has(&b, a.ids[i])) {
      abort();
    }
  }
}

static void fuzz_helpers(const uint8_t *d, size_t n, uint8_t cfg) {
  static const char *charsets[] = {
    "utf-8", "iso-8859-1", "shift_jis", "gb18030", "big5", "iso-2022-jp",
    "utf-7", "koi8-r", "x-unknown", NULL
  };
  const char *cs = charsets[cfg % 10];
  char *s;

  s = mailoauth_mime_decode_header((const char *) d, n, cs, NULL);
  if (s == NULL || strlen(s) > MAILOAUTH_MIME_MAX_FIELD) {
    abort();
  }
  free(s);

  s = mailoauth_mime_header_param((const char *) d, n, "filename", cs, NULL);
  if (s != NULL && strlen(s) > MAILOAUTH_MIME_MAX_FIELD) {
    abort();
  }
  free(s);

  s = mailoauth_mime_to_utf8(cs, (const char *) d, n, NULL);
  if (s == NULL) {
    abort();
  }
  free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  uint64_t whole, chunked;

  if (size < 2) {
    return 0;
  }

  whole = fuzz_parse(data + 2, size - 2, data[0], data[1], 0, 0);
  chunked = fuzz_parse(data + 2, size - 2, data[0], data[1], 1, 0);
  if (whole != chunked) {
    fprintf(stderr, "whole and chunked parses differ\n");
    abort();
  }
  (void) fuzz_parse(data + 2, size - 2, data[0], data[1], 1,
    (data[1] & 0x1f) + 1);

  if (size - 2 <= 4096) {
    fuzz_helpers(data + 2, size - 2, data[0]);
  }
  fuzz_cids(data + 2, size - 2, data[1]);
  return 0;
}
