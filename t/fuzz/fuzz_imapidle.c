/*
 * libFuzzer target: the IDLE watcher's line reader and classifier.
 *
 * Input: one selector byte, then server bytes.  The selector picks the
 * read size (1..8 bytes, or all at once) and the tag in flight.  Every line
 * handed over stays within the bound and is terminated; classifying it
 * gives a known kind and terminated texts.
 *
 * Build: make build/fuzz/fuzz_imapidle (see Makefile.in).
 */

#include "mailoauth/imapidle.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const char *fuzz_tag;

static int fuzz_line(const char *line, size_t len, int cont, void *arg) {
  struct mailoauth_imapidle_line l;
  char *copy;

  (void) cont;
  (void) arg;
  if (len > MAILOAUTH_IMAPIDLE_LINE_MAX || line[len] != '\0') {
    abort();
  }

  /* An exact-size copy: ASan sees any read past the line. */
  copy = malloc(len > 0 ? len : 1);
  memcpy(copy, line, len);
  mailoauth_imapidle_classify(copy, len, fuzz_tag, &l);
  free(copy);

  if (l.kind < MAILOAUTH_IMAPIDLE_L_OTHER ||
      l.kind > MAILOAUTH_IMAPIDLE_L_CAPS ||
      memchr(l.status, '\0', sizeof(l.status)) == NULL ||
      memchr(l.text, '\0', sizeof(l.text)) == NULL ||
      (l.kind == MAILOAUTH_IMAPIDLE_L_TAGGED && l.status[0] == '\0')) {
    abort();
  }
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const char *tags[] = { "i1", "i3", "", "A" };
  struct mailoauth_imapidle_reader r;
  size_t step, off = 0;

  if (size < 1) {
    return 0;
  }
  step = (data[0] & 0x0f) < 8 ? (size_t) (data[0] & 0x07) + 1 : size;
  fuzz_tag = tags[(data[0] >> 4) & 0x03];
  data++;
  size--;

  mailoauth_imapidle_reader_init(&r);
  while (off < size) {
    size_t n = size - off < step ? size - off : step;

    (void) mailoauth_imapidle_feed(&r, (const char *) data + off, n,
      fuzz_line, NULL);
    off += n;
  }
  return 0;
}
