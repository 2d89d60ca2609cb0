/*
 * mod_mailoauth - the one growable buffer
 */

#include "mailoauth/buf.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

void mailoauth_buf_init(struct mailoauth_buf *b, int secret) {
  memset(b, 0, sizeof(*b));
  b->secret = secret;
}

int mailoauth_buf_reserve(struct mailoauth_buf *b, size_t extra) {
  size_t need, size;
  char *data;

  if (b->failed) {
    errno = ENOMEM;
    return -1;
  }

  if (extra > SIZE_MAX / 2 - b->len) {
    b->failed = 1;
    errno = ENOMEM;
    return -1;
  }

  need = b->len + extra + 1;
  if (need <= b->size) {
    return 0;
  }

  size = b->size > 0 ? b->size : 256;
  while (size < need) {
    size *= 2;
  }

  if (b->secret) {
    /* Not realloc(): it may give the old block up without wiping it. */
    data = malloc(size);
    if (data != NULL && b->data != NULL) {
      memcpy(data, b->data, b->len + 1);
      OPENSSL_cleanse(b->data, b->size);
      free(b->data);
    }

  } else {
    data = realloc(b->data, size);
  }

  if (data == NULL) {
    b->failed = 1;
    errno = ENOMEM;
    return -1;
  }

  if (b->data == NULL) {
    data[0] = '\0';
  }
  b->data = data;
  b->size = size;
  return 0;
}

int mailoauth_buf_add(struct mailoauth_buf *b, const void *data, size_t len) {
  if (mailoauth_buf_reserve(b, len) < 0) {
    return -1;
  }

  if (len > 0) {
    memcpy(b->data + b->len, data, len);
  }
  b->len += len;
  b->data[b->len] = '\0';
  return 0;
}

int mailoauth_buf_adds(struct mailoauth_buf *b, const char *s) {
  return mailoauth_buf_add(b, s, strlen(s));
}

int mailoauth_buf_addc(struct mailoauth_buf *b, char c) {
  return mailoauth_buf_add(b, &c, 1);
}

int mailoauth_buf_addf(struct mailoauth_buf *b, const char *fmt, ...) {
  va_list ap;
  int n;

  va_start(ap, fmt);
  n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n < 0) {
    b->failed = 1;
    errno = EINVAL;
    return -1;
  }

  if (mailoauth_buf_reserve(b, (size_t) n) < 0) {
    return -1;
  }

  va_start(ap, fmt);
  (void) vsnprintf(b->data + b->len, b->size - b->len, fmt, ap);
  va_end(ap);
  b->len += (size_t) n;
  return 0;
}

void mailoauth_buf_clear(struct mailoauth_buf *b) {
  if (b->data != NULL) {
    if (b->secret) {
      OPENSSL_cleanse(b->data, b->size);
    }
    b->data[0] = '\0';
  }
  b->len = 0;
}

void mailoauth_buf_free(struct mailoauth_buf *b) {
  int secret = b->secret;

  if (b->data != NULL && secret) {
    OPENSSL_cleanse(b->data, b->size);
  }
  free(b->data);
  mailoauth_buf_init(b, secret);
}

char *mailoauth_buf_take(struct mailoauth_buf *b, size_t *len) {
  int secret = b->secret;
  char *s;

  if (b->failed ||
      mailoauth_buf_reserve(b, 0) < 0) {
    mailoauth_buf_free(b);
    errno = ENOMEM;
    return NULL;
  }

  /* Writers that filled data directly (after a reserve) leave no NUL. */
  b->data[b->len] = '\0';
  s = b->data;
  if (len != NULL) {
    *len = b->len;
  }
  mailoauth_buf_init(b, secret);
  return s;
}
