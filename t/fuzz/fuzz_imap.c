/*
 * libFuzzer target: the IMAP response parser and folder names.
 *
 * Input: one selector byte, then the data.
 *   even selector: server lines (split at LF) fed to one response, with
 *     search bounds and wanted UIDs taken from the selector; whatever
 *     comes, kept UIDs stay within the bounds and the arrays, and the
 *     texts stay terminated; each line also goes to the literal
 *     announcement parser (the fetch connection's framing);
 *   odd selector: a folder name; modified UTF-7 must round-trip, the wire
 *     name must quote, and decoding what was decoded must be stable.
 *
 * Build (clang 14):
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Imod_mailoauth/include \
 *     t/fuzz/fuzz_imap.c mod_mailoauth/lib/mail/imap*.c mod_mailoauth/lib/util/trace.c \
 *     mod_mailoauth/lib/mail/mailauth.c mod_mailoauth/lib/util/jsonwrap.c \
 *     $(pkg-config --cflags --libs libcurl openssl jansson)
 */

#include "mailoauth/imap.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_UIDS 16

static void fuzz_lines(uint8_t sel, const uint8_t *data, size_t size) {
  static const uint32_t want[] = { 1, 5, 7, 4294967295u };
  struct mailoauth_imap_msginfo info[4];
  uint32_t uids[MAX_UIDS];
  struct mailoauth_imap_resp r;
  const uint8_t *p = data, *end = data + size;
  size_t i;

  memset(info, 0, sizeof(info));
  mailoauth_imap_resp_init(&r);
  r.search_lo = (sel & 0x10) ? 5 : 1;
  r.search_hi = (sel & 0x20) ? 9 : 0;
  r.uids = (sel & 0x40) ? NULL : uids;
  r.max_uids = MAX_UIDS;
  r.want = want;
  r.info = info;
  r.n_want = 4;
  r.list_name = (sel & 0x80) ? "INBOX" : "Sent Items";

  while (p < end) {
    const uint8_t *nl = memchr(p, '\n', (size_t) (end - p));
    size_t n = nl != NULL ? (size_t) (nl - p) + 1 : (size_t) (end - p);
    uint8_t *copy = malloc(n > 0 ? n : 1);

    /* An exact-size copy: ASan sees any read past the line. */
    memcpy(copy, p, n);
    (void) mailoauth_imap_parse_line(&r, (const char *) copy, n);
    {
      uint64_t lit = 0;
      int is_body = 0;
      int has = mailoauth_imap_literal((const char *) copy, n, &lit,
        &is_body);

      /* A literal is announced only at a line's end, below 10^18 bytes,
       * and only an untagged FETCH line's literal is a body.
       */
      if (has < -1 || has > 1 || (has != 1 && (lit != 0 || is_body)) ||
          is_body < 0 || is_body > MAILOAUTH_IMAP_LITERAL_HEADER ||
          (has == 1 && lit >= 1000000000000000000ULL) ||
          (is_body && (n < 2 || copy[0] != '*'))) {
        abort();
      }
    }
    free(copy);
    p += n;
  }

  if (r.n_uids > MAX_UIDS || (r.uids == NULL && r.n_uids != 0)) {
    abort();
  }
  for (i = 0; i < r.n_uids; i++) {
    if (uids[i] < r.search_lo || uids[i] == 0 ||
        (r.search_hi != 0 && uids[i] > r.search_hi)) {
      abort();
    }
  }
  for (i = 0; i < 4; i++) {
    if (info[i].uid != 0 && info[i].uid != want[i]) {
      abort();
    }
  }
  if (r.fetches > 4 ||
      memchr(r.tagged_status, '\0', sizeof(r.tagged_status)) == NULL ||
      memchr(r.tagged_code, '\0', sizeof(r.tagged_code)) == NULL ||
      memchr(r.tagged_text, '\0', sizeof(r.tagged_text)) == NULL ||
      memchr(r.bye_text, '\0', sizeof(r.bye_text)) == NULL) {
    abort();
  }
}

static void fuzz_name(const uint8_t *data, size_t size) {
  char *name = malloc(size + 1);
  static char enc[16 * 1024], dec[16 * 1024], dec2[16 * 1024];
  static char quoted[40 * 1024];

  memcpy(name, data, size);
  name[size] = '\0';

  /* UTF-8 in: the encoding is printable ASCII and decodes back. */
  if (mailoauth_imap_utf7_encode(name, enc, sizeof(enc)) == 0) {
    const char *q;

    for (q = enc; *q != '\0'; q++) {
      if ((unsigned char) *q < 0x20 || (unsigned char) *q > 0x7e) {
        abort();
      }
    }
    if (mailoauth_imap_utf7_decode(enc, dec, sizeof(dec)) != 0 ||
        strcmp(dec, name) != 0) {
      abort();
    }
    if (mailoauth_imap_quote(enc, quoted, sizeof(quoted)) != 0 ||
        quoted[0] != '"' || quoted[strlen(quoted) - 1] != '"') {
      abort();
    }
  }

  /* Modified UTF-7 in: what it means encodes to something that means the
   * same.
   */
  if (mailoauth_imap_utf7_decode(name, dec, sizeof(dec)) == 0) {
    if (mailoauth_imap_utf7_encode(dec, enc, sizeof(enc)) != 0 ||
        mailoauth_imap_utf7_decode(enc, dec2, sizeof(dec2)) != 0 ||
        strcmp(dec, dec2) != 0) {
      abort();
    }
  }

  /* Whatever an operator writes: a wire name, or a refusal. */
  if (mailoauth_imap_folder_name(name, enc, sizeof(enc)) == 0 &&
      (mailoauth_imap_utf7_decode(enc, dec, sizeof(dec)) != 0 ||
       mailoauth_imap_quote(enc, quoted, sizeof(quoted)) != 0)) {
    abort();
  }

  free(name);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0) {
    return 0;
  }

  if (data[0] & 1) {
    fuzz_name(data + 1, size - 1);
  } else {
    fuzz_lines(data[0], data + 1, size - 1);
  }
  return 0;
}
