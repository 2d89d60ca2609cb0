/*
 * libFuzzer target: sanitizing, template expansion and collision names.
 *
 * Input: one selector byte, then NUL-separated strings used as the name,
 * the template and the fields.  Whatever comes in, a sanitized name must be
 * one safe component (and sanitizing it again must change nothing), and an
 * expanded template must be a relative path of safe components.
 */

#include "mailoauth/names.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void fuzz_check_component(const char *s, size_t len) {
  size_t i;

  if (len == 0 || len > MAILOAUTH_NAMES_MAX || s[0] == '.' || s[0] == '-' ||
      s[0] == ' ' || s[len - 1] == '.' || s[len - 1] == ' ') {
    abort();
  }
  for (i = 0; i < len; i++) {
    unsigned char c = (unsigned char) s[i];

    if (c < 0x20 || c == 0x7f || strchr("/\\<>:\"|?*", c) != NULL) {
      abort();
    }
    if (c == 0xc2 && i + 1 < len && (unsigned char) s[i + 1] <= 0x9f) {
      abort();
    }
  }
}

static void fuzz_check_path(const char *s, size_t len) {
  const char *p = s, *end = s + len;

  if (len == 0 || strlen(s) != len) {
    abort();
  }
  while (p < end) {
    const char *slash = memchr(p, '/', (size_t) (end - p));
    size_t clen = slash ? (size_t) (slash - p) : (size_t) (end - p);

    fuzz_check_component(p, clen);
    p += clen + 1;
  }
}

static void fuzz_sanitize(const char *in, size_t len) {
  char out[MAILOAUTH_NAMES_MAX + 1], again[MAILOAUTH_NAMES_MAX + 1];
  ssize_t n, m;

  n = mailoauth_names_sanitize(in, len, "application/pdf", out, sizeof(out));
  if (n < 0 || (size_t) n != strlen(out)) {
    abort();
  }
  fuzz_check_component(out, (size_t) n);

  m = mailoauth_names_sanitize(out, (size_t) n, "application/pdf", again,
    sizeof(again));
  if (m != n || strcmp(out, again) != 0) {
    abort();
  }
}

static int fuzz_exists(const char *name, void *arg) {
  unsigned int *left = arg;

  (void) name;
  if (*left == 0) {
    return 0;
  }
  (*left)--;
  return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *fields[6] = { "", "", "", "", "", "" };
  char *copy, out[4096];
  struct mailoauth_names_fields f;
  struct tm tm;
  size_t i, nf = 0, start = 1;
  ssize_t n;
  unsigned int left;

  if (size < 1) {
    return 0;
  }

  fuzz_sanitize((const char *) data + 1, size - 1);

  copy = malloc(size + 1);
  if (copy == NULL) {
    return 0;
  }
  memcpy(copy, data, size);
  copy[size] = '\0';
  for (i = 1; i <= size && nf < 6; i++) {
    if (i == size || copy[i] == '\0') {
      copy[i] = '\0';
      fields[nf++] = copy + start;
      start = i + 1;
    }
  }

  /* fields: template, sender, subject, filename, uid, content type */
  memset(&tm, 0, sizeof(tm));
  tm.tm_year = data[0];
  tm.tm_mon = data[0] % 12;
  memset(&f, 0, sizeof(f));
  f.sender = fields[1];
  f.subject = fields[2];
  f.filename = fields[3];
  f.uid = fields[4];
  f.content_type = fields[5];
  f.tm = (data[0] & 1) ? &tm : NULL;
  f.counter = data[0];

  if (mailoauth_names_template_check(fields[0]) == 0) {
    n = mailoauth_names_expand(fields[0], &f, out, sizeof(out));
    if (n >= 0) {
      fuzz_check_path(out, (size_t) n);
    } else if (errno != ENAMETOOLONG) {
      abort();
    }
  } else if (mailoauth_names_expand(fields[0], &f, out, sizeof(out)) != -1) {
    abort();
  }

  /* Collisions on a sanitized name stay safe and within bounds. */
  n = mailoauth_names_sanitize(fields[3], strlen(fields[3]), NULL, out,
    sizeof(out));
  if (n > 0) {
    char uniq[512];

    left = data[0] % 13;
    n = mailoauth_names_unique(out, fuzz_exists, &left, uniq, sizeof(uniq));
    if (n < 0) {
      abort();
    }
    fuzz_check_component(uniq, (size_t) n);
  }

  free(copy);
  return 0;
}
