/*
 * mod_mailoauth - PKCE (RFC 7636) and the state parameter of the browser
 * sign-in
 */

#include "mailoauth/oauth.h"

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/rand.h>

/* ------------------------------------------------------------------------
 * PKCE and state.
 */

/* base64url without padding (RFC 4648 section 5); out must hold
 * 4 * ceil(inlen / 3) + 1 bytes.
 */
static size_t b64url_encode(const unsigned char *in, size_t inlen, char *out) {
  size_t i, n;

  n = (size_t) EVP_EncodeBlock((unsigned char *) out, in, (int) inlen);
  while (n > 0 && out[n - 1] == '=') {
    n--;
  }
  out[n] = '\0';

  for (i = 0; i < n; i++) {
    if (out[i] == '+') {
      out[i] = '-';

    } else if (out[i] == '/') {
      out[i] = '_';
    }
  }
  return n;
}

/* len characters from [A-Za-z0-9-_], each carrying six random bits. */
static int random_urlsafe(char *buf, size_t bufsz, size_t len) {
  unsigned char raw[MAILOAUTH_OAUTH_VERIFIER_MAX];
  char text[4 * (MAILOAUTH_OAUTH_VERIFIER_MAX / 3 + 1) + 1];
  size_t nbytes;

  if (buf == NULL || len == 0 || len > MAILOAUTH_OAUTH_VERIFIER_MAX ||
      bufsz <= len) {
    errno = EINVAL;
    return -1;
  }

  nbytes = (len * 3 + 3) / 4;
  if (RAND_bytes(raw, (int) nbytes) != 1) {
    errno = EIO;
    return -1;
  }

  b64url_encode(raw, nbytes, text);
  memcpy(buf, text, len);
  buf[len] = '\0';

  OPENSSL_cleanse(raw, sizeof(raw));
  OPENSSL_cleanse(text, sizeof(text));
  return 0;
}

int mailoauth_oauth_pkce_verifier(char *buf, size_t bufsz, size_t len) {
  if (len < MAILOAUTH_OAUTH_VERIFIER_MIN || len > MAILOAUTH_OAUTH_VERIFIER_MAX) {
    errno = EINVAL;
    return -1;
  }
  return random_urlsafe(buf, bufsz, len);
}

static int valid_verifier(const char *v) {
  size_t i, len = strlen(v);

  if (len < MAILOAUTH_OAUTH_VERIFIER_MIN || len > MAILOAUTH_OAUTH_VERIFIER_MAX) {
    return 0;
  }

  /* RFC 7636 section 4.1: unreserved characters only. */
  for (i = 0; i < len; i++) {
    char c = v[i];

    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
          (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' ||
          c == '~')) {
      return 0;
    }
  }
  return 1;
}

int mailoauth_oauth_pkce_challenge(const char *verifier, char *buf,
    size_t bufsz) {
  unsigned char md[EVP_MAX_MD_SIZE];
  char text[4 * (EVP_MAX_MD_SIZE / 3 + 1) + 1];
  unsigned int mdlen = 0;

  if (verifier == NULL || buf == NULL ||
      bufsz <= MAILOAUTH_OAUTH_CHALLENGE_LEN || !valid_verifier(verifier)) {
    errno = EINVAL;
    return -1;
  }

  if (EVP_Digest(verifier, strlen(verifier), md, &mdlen, EVP_sha256(),
      NULL) != 1 || mdlen != 32) {
    errno = EIO;
    return -1;
  }

  b64url_encode(md, mdlen, text);
  memcpy(buf, text, MAILOAUTH_OAUTH_CHALLENGE_LEN + 1);
  return 0;
}

int mailoauth_oauth_random_state(char *buf, size_t bufsz) {
  return random_urlsafe(buf, bufsz, MAILOAUTH_OAUTH_STATE_LEN);
}

