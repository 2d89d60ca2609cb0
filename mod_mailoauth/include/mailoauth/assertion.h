/*
 * mod_mailoauth - certificate credentials (client assertion JWTs)
 *
 * An app registration can prove who it is with a certificate instead of a
 * client secret: each token request then carries a short-lived JWT signed
 * with the certificate's private key (RFC 7523 client authentication,
 * client_assertion_type=urn:ietf:params:oauth:client-assertion-type:
 * jwt-bearer), in the form Microsoft's identity platform documents:
 *
 *   header  {"alg":"PS256","typ":"JWT","x5t#S256":<SHA-256 of the DER cert>}
 *   claims  aud = the token endpoint URL, iss = sub = the client ID,
 *           jti = a random UUID, nbf = iat = now, exp = now + 10 minutes
 *   signed  RSASSA-PSS with SHA-256, salt length = digest length
 *
 * The key and certificate come as PEM text (the certificate may follow the
 * key in the same text).  The key is parsed for each assertion and freed
 * at once; the callers keep the PEM text in memory they wipe.  An assertion
 * is a credential for its lifetime: never log it.
 *
 * No ProFTPD headers.
 */

#ifndef MOD_MAILOAUTH_ASSERTION_H
#define MOD_MAILOAUTH_ASSERTION_H

#include <stddef.h>
#include <time.h>

#define MAILOAUTH_ASSERTION_TYPE \
  "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

/* Microsoft accepts assertions valid for at most about 10 minutes. */
#define MAILOAUTH_ASSERTION_LIFETIME  600

/* What an operator uploads and watches: the certificate's identity. */
struct mailoauth_cert_info {
  char sha1[41];            /* hex, upper case: Azure's "Thumbprint" */
  char sha256[65];          /* hex, upper case */
  char x5t_s256[44];        /* base64url(SHA-256(DER)), no padding */
  char subject[256];        /* one line, RFC 2253 */
  time_t not_before;
  time_t not_after;
};

/* The first certificate in pem (which may also hold the key).  0, or -1
 * with errno EINVAL and the reason in errbuf.
 */
int mailoauth_assertion_cert_info(const char *pem, size_t len,
  struct mailoauth_cert_info *info, char *errbuf, size_t errlen);

/* Checks that key_pem holds an RSA private key (2048 bits at least, as
 * Microsoft requires) and that cert_pem's certificate is its public half.
 * Never quotes the key.
 */
int mailoauth_assertion_check_pair(const char *key_pem, size_t key_len,
  const char *cert_pem, size_t cert_len, char *errbuf, size_t errlen);

/* A signed assertion for one request to aud (the token endpoint URL),
 * valid from now for MAILOAUTH_ASSERTION_LIFETIME seconds, into *out
 * (malloc'd; the caller wipes and frees it).  0, or -1 with errno and the
 * reason in errbuf.
 */
int mailoauth_assertion_make(const char *key_pem, size_t key_len,
  const char *cert_pem, size_t cert_len, const char *client_id,
  const char *aud, time_t now, char **out, char *errbuf, size_t errlen);

#endif /* MOD_MAILOAUTH_ASSERTION_H */
