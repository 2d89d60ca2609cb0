/*
 * libFuzzer target: the uudecoder of MIME bodies.
 *
 * Input: one byte choosing the chunk size, then the body.  Decoded whole
 * and in chunks, the output must be the same bytes and the same verdict,
 * and never more than three bytes for every four of input.
 */

#include "mime/mimeint.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct fuzz_out {
  unsigned char *d;
  size_t len, cap;
};

static int fuzz_out_add(void *arg, const unsigned char *d, size_t n) {
  struct fuzz_out *o = arg;

  if (n > o->cap - o->len) {
    abort();
  }
  memcpy(o->d + o->len, d, n);
  o->len += n;
  return 0;
}

static int fuzz_decode(const uint8_t *in, size_t len, size_t chunk,
    struct fuzz_out *o) {
  struct mime_uu u;
  size_t off = 0;

  mailoauth_mime_uu_init(&u);
  while (off < len) {
    size_t n = len - off < chunk ? len - off : chunk;

    if (mailoauth_mime_uu_update(&u, in + off, n, fuzz_out_add, o) < 0) {
      abort();
    }
    off += n;
  }
  if (mailoauth_mime_uu_final(&u, fuzz_out_add, o) < 0) {
    abort();
  }
  return u.bad;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  struct fuzz_out a, b;
  size_t chunk;
  int bad_a, bad_b;

  if (size < 1) {
    return 0;
  }
  chunk = (size_t) data[0] % 67 + 1;
  data++;
  size--;

  /* Each decoded line of n bytes comes from at least n * 4 / 3 + 1
   * characters, missing trailing spaces aside (at most four each).
   */
  a.cap = b.cap = size + 16;
  a.d = malloc(a.cap);
  b.d = malloc(b.cap);
  if (a.d == NULL || b.d == NULL) {
    abort();
  }
  a.len = b.len = 0;

  bad_a = fuzz_decode(data, size, size > 0 ? size : 1, &a);
  bad_b = fuzz_decode(data, size, chunk, &b);
  if (bad_a != bad_b || a.len != b.len || memcmp(a.d, b.d, a.len) != 0) {
    abort();
  }

  free(a.d);
  free(b.d);
  return 0;
}
