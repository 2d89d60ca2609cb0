/*
 * mod_mailoauth - small string helpers of the MIME parser
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

/* ------------------------------------------------------------------------
 * Small string helpers.
 */

int mailoauth_mime_hexval(int c) {
  if (c >= '0' && c <= '9') {
    return c - '0';
  }
  if (c >= 'a' && c <= 'f') {
    return c - 'a' + 10;
  }
  if (c >= 'A' && c <= 'F') {
    return c - 'A' + 10;
  }
  return -1;
}

int mailoauth_mime_is_wsp(int c) {
  return c == ' ' || c == '\t';
}

char *mailoauth_mime_strndup(const char *s, size_t n) {
  char *d = malloc(n + 1);

  if (d == NULL) {
    errno = ENOMEM;
    return NULL;
  }
  memcpy(d, s, n);
  d[n] = '\0';
  return d;
}

char *mailoauth_mime_lower_dup(const char *s, size_t n) {
  char *d = mailoauth_mime_strndup(s, n);
  size_t i;

  if (d != NULL) {
    for (i = 0; i < n; i++) {
      d[i] = (char) tolower((unsigned char) d[i]);
    }
  }
  return d;
}

/* Length of the longest prefix of s[0..len) that does not end inside a
 * UTF-8 sequence.
 */
static size_t mime_utf8_cut(const char *s, size_t len) {
  size_t j = len, need;
  unsigned char lead;

  while (j > 0 && ((unsigned char) s[j - 1] & 0xc0) == 0x80 && len - j < 3) {
    j--;
  }
  if (j == 0) {
    return len;
  }
  lead = (unsigned char) s[j - 1];
  if (lead < 0xc0) {
    return len;
  }
  need = lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : 2;
  return len - (j - 1) < need ? j - 1 : len;
}

/* Turns a decoded buffer into a field string: NUL bytes become U+FFFD (so a
 * hidden ".exe" after a NUL stays visible), and the length is capped on a
 * UTF-8 boundary.
 */
char *mailoauth_mime_field_str(const char *d, size_t n) {
  struct mailoauth_buf out = { NULL, 0, 0, 0, 0 };
  size_t i = 0;
  int cut = 0;

  if (mailoauth_buf_reserve(&out, n < MAILOAUTH_MIME_MAX_FIELD ? n :
      MAILOAUTH_MIME_MAX_FIELD) < 0) {
    return NULL;
  }

  while (i < n && !cut) {
    const char *nul = memchr(d + i, '\0', n - i);
    size_t run = nul ? (size_t) (nul - d) - i : n - i;

    if (run > MAILOAUTH_MIME_MAX_FIELD - out.len) {
      run = MAILOAUTH_MIME_MAX_FIELD - out.len;
      cut = 1;
    }
    if (mailoauth_buf_add(&out, d + i, run) < 0) {
      mailoauth_buf_free(&out);
      return NULL;
    }
    i += run;

    if (!cut && i < n) {
      if (out.len + 3 > MAILOAUTH_MIME_MAX_FIELD) {
        cut = 1;
      } else if (mailoauth_buf_add(&out, "\xef\xbf\xbd", 3) < 0) {
        mailoauth_buf_free(&out);
        return NULL;
      } else {
        i++;
      }
    }
  }

  if (cut) {
    out.len = mime_utf8_cut(out.data, out.len);
  }
  out.data[out.len] = '\0';
  return out.data;
}

