/*
 * libFuzzer target: Authentication-Results parsing and verdicts.
 *
 * The headers come from whoever sent the message.  Whatever they hold, the
 * parser stays inside the input and keeps only whole, clean names; a
 * verdict needs the word "pass" and the From: domain in the header that
 * decided it; a header of another server above ends the trust; asking for
 * more methods never passes more messages.
 */

#include "mailoauth/authres.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static void fuzz_check_name(const char *s) {
  size_t i, len = strlen(s);

  if (len > MAILOAUTH_AUTHRES_NAME_MAX) {
    abort();
  }
  for (i = 0; i < len; i++) {
    unsigned char c = (unsigned char) s[i];

    if (c <= 0x20 || c == 0x7f || (c >= 'A' && c <= 'Z')) {
      abort();
    }
  }
}

static int fuzz_contains(const char *hay, size_t n, const char *needle) {
  size_t k, len = strlen(needle);

  for (k = 0; k + len <= n; k++) {
    if (strncasecmp(hay + k, needle, len) == 0) {
      return 1;
    }
  }
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const char *from = "bob@contoso.com";
  static const char foreign[] = "mx.evil.test; none\n";
  struct mailoauth_authres ar;
  char *copy, *s, *withforeign;
  size_t i, first;
  unsigned int m;

  /* Exactly the input: ASan sees any read past it. */
  copy = malloc(size ? size : 1);
  if (copy == NULL) {
    return 0;
  }
  memcpy(copy, data, size);
  mailoauth_authres_parse(copy, size, &ar);
  free(copy);

  if (ar.nresults > MAILOAUTH_AUTHRES_MAX_RESULTS) {
    abort();
  }
  fuzz_check_name(ar.authserv_id);
  if (!ar.has_id && ar.authserv_id[0] != '\0') {
    abort();
  }
  for (i = 0; i < ar.nresults; i++) {
    m = ar.results[i].method;
    if (m != MAILOAUTH_AUTHRES_SPF && m != MAILOAUTH_AUTHRES_DKIM &&
        m != MAILOAUTH_AUTHRES_DMARC) {
      abort();
    }
    fuzz_check_name(ar.results[i].domain);
  }

  /* As the message parser hands them over: NUL-terminated lines. */
  s = malloc(size + 1);
  withforeign = malloc(sizeof(foreign) + size);
  if (s == NULL || withforeign == NULL) {
    free(s);
    free(withforeign);
    return 0;
  }
  memcpy(s, data, size);
  s[size] = '\0';
  for (i = 0; i < size; i++) {
    if (s[i] == '\0') {
      s[i] = ' ';
    }
  }
  first = strcspn(s, "\n");
  memcpy(withforeign, foreign, sizeof(foreign) - 1);
  memcpy(withforeign + sizeof(foreign) - 1, s, size + 1);

  for (m = 1; m <= 7; m++) {
    int exo = mailoauth_authres_verify(s, NULL, m, from);
    int id = mailoauth_authres_verify(s, "mx.example.com", m, from);
    unsigned int bit;

    /* Exchange Online's verdict is in the first line, or nowhere. */
    if (exo && (!fuzz_contains(s, first, "pass") ||
        !fuzz_contains(s, first, "contoso.com"))) {
      abort();
    }
    if (id && (!fuzz_contains(s, size, "pass") ||
        !fuzz_contains(s, size, "contoso.com") ||
        !fuzz_contains(s, first, "mx.example.com"))) {
      abort();
    }

    /* Another server's header on top: nothing below it is trusted. */
    if (mailoauth_authres_verify(withforeign, NULL, m, from) ||
        mailoauth_authres_verify(withforeign, "mx.example.com", m, from)) {
      abort();
    }

    /* More methods asked for never pass more. */
    for (bit = 1; bit <= 4; bit <<= 1) {
      if ((m & bit) != 0 && exo &&
          !mailoauth_authres_verify(s, NULL, bit, from)) {
        abort();
      }
      if ((m & bit) != 0 && id &&
          !mailoauth_authres_verify(s, "mx.example.com", bit, from)) {
        abort();
      }
    }
  }

  free(s);
  free(withforeign);
  return 0;
}
