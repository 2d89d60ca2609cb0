/*
 * mod_mailoauth - certificate credentials (client assertion JWTs)
 */

#include "mailoauth/assertion.h"
#include "mailoauth/buf.h"
#include "mailoauth/jsonwrap.h"
#include "mailoauth/trace.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

/* Microsoft refuses certificate keys shorter than this. */
#define MAILOAUTH_ASSERTION_MIN_BITS  2048

/* base64url without padding (RFC 4648 section 5) of in, appended to b. */
static int assertion_b64url(struct mailoauth_buf *b, const unsigned char *in,
    size_t inlen) {
  size_t i, n, start;

  if (mailoauth_buf_reserve(b, 4 * (inlen / 3 + 1)) < 0) {
    return -1;
  }

  start = b->len;
  n = (size_t) EVP_EncodeBlock((unsigned char *) b->data + start, in,
    (int) inlen);
  while (n > 0 && b->data[start + n - 1] == '=') {
    n--;
  }

  for (i = start; i < start + n; i++) {
    if (b->data[i] == '+') {
      b->data[i] = '-';

    } else if (b->data[i] == '/') {
      b->data[i] = '_';
    }
  }

  b->len = start + n;
  b->data[b->len] = '\0';
  return 0;
}

/* Encrypted keys cannot be used unattended: never prompt for a passphrase. */
static int assertion_no_passphrase(char *buf, int size, int rwflag,
    void *data) {
  (void) buf;
  (void) size;
  (void) rwflag;
  (void) data;
  return -1;
}

static X509 *assertion_read_cert(const char *pem, size_t len, char *errbuf,
    size_t errlen) {
  BIO *bio;
  X509 *cert;

  if (pem == NULL || len == 0 || len > INT32_MAX) {
    mailoauth_errf(errbuf, errlen, "no certificate given");
    errno = EINVAL;
    return NULL;
  }

  bio = BIO_new_mem_buf(pem, (int) len);
  if (bio == NULL) {
    errno = ENOMEM;
    return NULL;
  }

  /* Skips the key's block when both are in one file. */
  cert = PEM_read_bio_X509(bio, NULL, assertion_no_passphrase, NULL);
  BIO_free(bio);
  ERR_clear_error();

  if (cert == NULL) {
    mailoauth_errf(errbuf, errlen, "no PEM certificate (-----BEGIN "
      "CERTIFICATE-----) found");
    errno = EINVAL;
  }
  return cert;
}

static EVP_PKEY *assertion_read_key(const char *pem, size_t len, char *errbuf,
    size_t errlen) {
  BIO *bio;
  EVP_PKEY *key;

  if (pem == NULL || len == 0 || len > INT32_MAX) {
    mailoauth_errf(errbuf, errlen, "no private key given");
    errno = EINVAL;
    return NULL;
  }

  bio = BIO_new_mem_buf(pem, (int) len);
  if (bio == NULL) {
    errno = ENOMEM;
    return NULL;
  }

  key = PEM_read_bio_PrivateKey(bio, NULL, assertion_no_passphrase, NULL);
  BIO_free(bio);
  ERR_clear_error();

  if (key == NULL) {
    mailoauth_errf(errbuf, errlen, "no usable PEM private key found (an "
      "unencrypted RSA key is needed: -----BEGIN PRIVATE KEY----- or "
      "-----BEGIN RSA PRIVATE KEY-----; remove a passphrase with "
      "openssl pkey -in KEY -out KEY.new)");
    errno = EINVAL;
    return NULL;
  }

  if (EVP_PKEY_base_id(key) != EVP_PKEY_RSA) {
    EVP_PKEY_free(key);
    mailoauth_errf(errbuf, errlen, "the private key is not an RSA key "
      "(Microsoft's certificate credentials need RSA, 2048 bits or more)");
    errno = EINVAL;
    return NULL;
  }

  if (EVP_PKEY_get_bits(key) < MAILOAUTH_ASSERTION_MIN_BITS) {
    int bits = EVP_PKEY_get_bits(key);

    EVP_PKEY_free(key);
    mailoauth_errf(errbuf, errlen, "the RSA key has %d bits; Microsoft "
      "needs at least %d", bits, MAILOAUTH_ASSERTION_MIN_BITS);
    errno = EINVAL;
    return NULL;
  }

  return key;
}

static time_t assertion_asn1_time(const ASN1_TIME *t) {
  struct tm tm;

  memset(&tm, 0, sizeof(tm));
  if (t == NULL ||
      ASN1_TIME_to_tm(t, &tm) != 1) {
    return 0;
  }
  return timegm(&tm);
}

static void assertion_hex(const unsigned char *md, unsigned int len,
    char *out) {
  static const char digits[] = "0123456789ABCDEF";
  unsigned int i;

  for (i = 0; i < len; i++) {
    out[2 * i] = digits[md[i] >> 4];
    out[2 * i + 1] = digits[md[i] & 0x0f];
  }
  out[2 * len] = '\0';
}

static int assertion_fill_info(X509 *cert, struct mailoauth_cert_info *info) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int mdlen = 0;
  struct mailoauth_buf b = { NULL, 0, 0, 0, 0 };
  BIO *bio;
  int n;

  memset(info, 0, sizeof(*info));

  if (X509_digest(cert, EVP_sha1(), md, &mdlen) != 1 || mdlen != 20) {
    errno = EINVAL;
    return -1;
  }
  assertion_hex(md, mdlen, info->sha1);

  if (X509_digest(cert, EVP_sha256(), md, &mdlen) != 1 || mdlen != 32) {
    errno = EINVAL;
    return -1;
  }
  assertion_hex(md, mdlen, info->sha256);

  if (assertion_b64url(&b, md, mdlen) < 0) {
    mailoauth_buf_free(&b);
    return -1;
  }
  snprintf(info->x5t_s256, sizeof(info->x5t_s256), "%s", b.data);
  mailoauth_buf_free(&b);

  bio = BIO_new(BIO_s_mem());
  if (bio != NULL) {
    X509_NAME_print_ex(bio, X509_get_subject_name(cert), 0,
      XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB);
    n = BIO_read(bio, info->subject, (int) sizeof(info->subject) - 1);
    info->subject[n > 0 ? n : 0] = '\0';
    BIO_free(bio);
  }

  info->not_before = assertion_asn1_time(X509_get0_notBefore(cert));
  info->not_after = assertion_asn1_time(X509_get0_notAfter(cert));
  return 0;
}

int mailoauth_assertion_cert_info(const char *pem, size_t len,
    struct mailoauth_cert_info *info, char *errbuf, size_t errlen) {
  X509 *cert;
  int res;

  if (info == NULL) {
    errno = EINVAL;
    return -1;
  }

  cert = assertion_read_cert(pem, len, errbuf, errlen);
  if (cert == NULL) {
    return -1;
  }

  res = assertion_fill_info(cert, info);
  if (res < 0) {
    mailoauth_errf(errbuf, errlen, "cannot read the certificate's "
      "fingerprints");
  }
  X509_free(cert);
  return res;
}

int mailoauth_assertion_check_pair(const char *key_pem, size_t key_len,
    const char *cert_pem, size_t cert_len, char *errbuf, size_t errlen) {
  EVP_PKEY *key;
  X509 *cert;
  int res = 0;

  key = assertion_read_key(key_pem, key_len, errbuf, errlen);
  if (key == NULL) {
    return -1;
  }

  cert = assertion_read_cert(cert_pem, cert_len, errbuf, errlen);
  if (cert == NULL) {
    EVP_PKEY_free(key);
    return -1;
  }

  if (X509_check_private_key(cert, key) != 1) {
    mailoauth_errf(errbuf, errlen, "the certificate does not belong to the "
      "private key (name the certificate made from this key)");
    errno = EINVAL;
    res = -1;
  }

  ERR_clear_error();
  X509_free(cert);
  EVP_PKEY_free(key);
  return res;
}

/* A version 4 UUID from RAND_bytes(). */
static int assertion_uuid(char *buf, size_t bufsz) {
  unsigned char r[16];

  if (RAND_bytes(r, sizeof(r)) != 1) {
    errno = EIO;
    return -1;
  }

  r[6] = (unsigned char) ((r[6] & 0x0f) | 0x40);
  r[8] = (unsigned char) ((r[8] & 0x3f) | 0x80);
  snprintf(buf, bufsz, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
    "%02x%02x%02x%02x%02x%02x", r[0], r[1], r[2], r[3], r[4], r[5], r[6],
    r[7], r[8], r[9], r[10], r[11], r[12], r[13], r[14], r[15]);
  return 0;
}

/* Appends base64url(compact JSON of obj) to b. */
static int assertion_add_json(struct mailoauth_buf *b, json_t *obj) {
  char text[2048];
  size_t n;

  n = json_dumpb(obj, text, sizeof(text), JSON_COMPACT);
  if (n == 0 || n >= sizeof(text)) {
    errno = E2BIG;
    return -1;
  }
  return assertion_b64url(b, (const unsigned char *) text, n);
}

static int assertion_sign(EVP_PKEY *key, struct mailoauth_buf *b) {
  EVP_MD_CTX *md;
  EVP_PKEY_CTX *pctx = NULL;
  unsigned char *sig = NULL;
  size_t siglen = 0;
  int res = -1;

  md = EVP_MD_CTX_new();
  if (md == NULL) {
    errno = ENOMEM;
    return -1;
  }

  if (EVP_DigestSignInit(md, &pctx, EVP_sha256(), NULL, key) == 1 &&
      EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) == 1 &&
      EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) == 1 &&
      EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, EVP_sha256()) == 1 &&
      EVP_DigestSign(md, NULL, &siglen, (const unsigned char *) b->data,
        b->len) == 1) {
    sig = malloc(siglen);
    if (sig != NULL &&
        EVP_DigestSign(md, sig, &siglen, (const unsigned char *) b->data,
          b->len) == 1 &&
        mailoauth_buf_addc(b, '.') == 0 &&
        assertion_b64url(b, sig, siglen) == 0) {
      res = 0;
    }
  }

  if (res < 0) {
    errno = EINVAL;
  }

  free(sig);
  EVP_MD_CTX_free(md);
  ERR_clear_error();
  return res;
}

int mailoauth_assertion_make(const char *key_pem, size_t key_len,
    const char *cert_pem, size_t cert_len, const char *client_id,
    const char *aud, time_t now, char **out, char *errbuf, size_t errlen) {
  struct mailoauth_cert_info info;
  struct mailoauth_buf b = MAILOAUTH_BUF_SECRET;
  json_t *header = NULL, *claims = NULL;
  EVP_PKEY *key = NULL;
  X509 *cert = NULL;
  char jti[40];
  int res = -1, xerrno = EINVAL;

  if (out == NULL || client_id == NULL || *client_id == '\0' ||
      aud == NULL || *aud == '\0') {
    mailoauth_errf(errbuf, errlen, "a client assertion needs a client ID "
      "and the token endpoint");
    errno = EINVAL;
    return -1;
  }
  *out = NULL;

  cert = assertion_read_cert(cert_pem, cert_len, errbuf, errlen);
  if (cert == NULL) {
    return -1;
  }

  if (assertion_fill_info(cert, &info) < 0 ||
      assertion_uuid(jti, sizeof(jti)) < 0) {
    xerrno = errno;
    mailoauth_errf(errbuf, errlen, "cannot make a client assertion: %s",
      strerror(xerrno));
    goto done;
  }

  key = assertion_read_key(key_pem, key_len, errbuf, errlen);
  if (key == NULL) {
    xerrno = errno;
    goto done;
  }

  header = json_pack("{s:s, s:s, s:s}", "alg", "PS256", "typ", "JWT",
    "x5t#S256", info.x5t_s256);
  claims = json_pack("{s:s, s:s, s:s, s:s, s:I, s:I, s:I}", "aud", aud,
    "iss", client_id, "sub", client_id, "jti", jti,
    "nbf", (json_int_t) now, "iat", (json_int_t) now,
    "exp", (json_int_t) now + MAILOAUTH_ASSERTION_LIFETIME);
  if (header == NULL || claims == NULL) {
    xerrno = ENOMEM;
    mailoauth_errf(errbuf, errlen, "cannot make a client assertion: the "
      "client ID or token URL is not valid UTF-8, or out of memory");
    goto done;
  }

  if (assertion_add_json(&b, header) < 0 ||
      mailoauth_buf_addc(&b, '.') < 0 ||
      assertion_add_json(&b, claims) < 0 ||
      b.failed) {
    xerrno = errno;
    mailoauth_errf(errbuf, errlen, "cannot make a client assertion: %s",
      strerror(xerrno));
    goto done;
  }

  if (assertion_sign(key, &b) < 0) {
    xerrno = errno;
    mailoauth_errf(errbuf, errlen, "cannot sign the client assertion with "
      "the private key (RSA-PSS SHA-256)");
    goto done;
  }

  *out = mailoauth_buf_take(&b, NULL);
  if (*out == NULL) {
    xerrno = ENOMEM;
    mailoauth_errf(errbuf, errlen, "out of memory");
    goto done;
  }
  res = 0;

done:
  json_decref(header);
  json_decref(claims);
  /* RSA keys clear their private numbers when freed. */
  EVP_PKEY_free(key);
  X509_free(cert);
  mailoauth_buf_free(&b);
  if (res < 0) {
    errno = xerrno;
  }
  return res;
}
