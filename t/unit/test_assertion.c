/*
 * Unit tests: client assertion JWTs (certificate credentials), checked
 * the way the token service checks them: the signature with the
 * certificate's public key (RSA-PSS SHA-256, salt = digest length), the
 * header's x5t#S256 against the DER certificate, the claims, and
 * base64url without padding.
 */

#include "mailoauth/account.h"
#include "mailoauth/assertion.h"

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#define CLIENT "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"
#define AUD "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
#define NOW ((time_t) 1760000000)

struct pair {
  EVP_PKEY *key;
  X509 *cert;
  char *key_pem;
  char *cert_pem;
};

static char *pem_of(int (*write)(BIO *, void *), void *obj) {
  BIO *bio = BIO_new(BIO_s_mem());
  char *data, *copy;
  long n;

  ck_assert_ptr_nonnull(bio);
  ck_assert_int_eq(write(bio, obj), 1);
  n = BIO_get_mem_data(bio, &data);
  copy = strndup(data, (size_t) n);
  BIO_free(bio);
  return copy;
}

static int write_key(BIO *bio, void *key) {
  return PEM_write_bio_PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL);
}

static int write_cert(BIO *bio, void *cert) {
  return PEM_write_bio_X509(bio, cert);
}

static void make_pair(struct pair *p, unsigned int bits) {
  X509_NAME *name;

  p->key = EVP_RSA_gen(bits);
  ck_assert_ptr_nonnull(p->key);

  p->cert = X509_new();
  X509_set_version(p->cert, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(p->cert), 7);
  X509_gmtime_adj(X509_getm_notBefore(p->cert), 0);
  X509_gmtime_adj(X509_getm_notAfter(p->cert), 86400L * 30);
  X509_set_pubkey(p->cert, p->key);
  name = X509_get_subject_name(p->cert);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
    (const unsigned char *) "ftp-notify", -1, -1, 0);
  X509_set_issuer_name(p->cert, name);
  ck_assert_int_gt(X509_sign(p->cert, p->key, EVP_sha256()), 0);

  p->key_pem = pem_of(write_key, p->key);
  p->cert_pem = pem_of(write_cert, p->cert);
}

static void free_pair(struct pair *p) {
  EVP_PKEY_free(p->key);
  X509_free(p->cert);
  free(p->key_pem);
  free(p->cert_pem);
}

/* base64url, no padding, strictly. */
static unsigned char *b64u_decode(const char *s, size_t len, size_t *outlen) {
  char *std = malloc(len + 4);
  unsigned char *out = malloc(len + 4);
  size_t i, n = len;
  int dec;

  for (i = 0; i < len; i++) {
    ck_assert_msg(s[i] != '=' && s[i] != '+' && s[i] != '/',
      "not base64url without padding: '%c'", s[i]);
    std[i] = s[i] == '-' ? '+' : s[i] == '_' ? '/' : s[i];
  }
  while (n % 4 != 0) {
    std[n++] = '=';
  }
  dec = EVP_DecodeBlock(out, (unsigned char *) std, (int) n);
  ck_assert_int_ge(dec, 0);
  *outlen = (size_t) dec - (n - len);
  free(std);
  return out;
}

static json_t *json_part(const char *s, size_t len) {
  size_t n;
  unsigned char *raw = b64u_decode(s, len, &n);
  json_t *j = json_loadb((const char *) raw, n, 0, NULL);

  free(raw);
  ck_assert_ptr_nonnull(j);
  return j;
}

START_TEST(test_assertion_verifies_with_the_certificate) {
  struct pair p;
  char *jwt = NULL, err[512] = "";
  const char *dot1, *dot2;
  json_t *header, *claims;
  unsigned char md[32], *sig;
  unsigned int mdlen;
  size_t siglen, x5tlen;
  unsigned char *x5t;
  EVP_MD_CTX *ctx;
  EVP_PKEY_CTX *pctx = NULL;
  const char *jti;

  make_pair(&p, 2048);
  ck_assert_int_eq(mailoauth_assertion_make(p.key_pem, strlen(p.key_pem),
    p.cert_pem, strlen(p.cert_pem), CLIENT, AUD, NOW, &jwt, err,
    sizeof(err)), 0);

  dot1 = strchr(jwt, '.');
  ck_assert_ptr_nonnull(dot1);
  dot2 = strchr(dot1 + 1, '.');
  ck_assert_ptr_nonnull(dot2);
  ck_assert_ptr_null(strchr(dot2 + 1, '.'));

  header = json_part(jwt, (size_t) (dot1 - jwt));
  ck_assert_str_eq(json_string_value(json_object_get(header, "alg")), "PS256");
  ck_assert_str_eq(json_string_value(json_object_get(header, "typ")), "JWT");
  ck_assert_int_eq(json_object_size(header), 3);

  /* x5t#S256: SHA-256 of the DER certificate. */
  X509_digest(p.cert, EVP_sha256(), md, &mdlen);
  {
    const char *v = json_string_value(json_object_get(header, "x5t#S256"));

    ck_assert_ptr_nonnull(v);
    x5t = b64u_decode(v, strlen(v), &x5tlen);
    ck_assert_uint_eq(x5tlen, 32);
    ck_assert_int_eq(memcmp(x5t, md, 32), 0);
    free(x5t);
  }

  claims = json_part(dot1 + 1, (size_t) (dot2 - dot1 - 1));
  ck_assert_str_eq(json_string_value(json_object_get(claims, "aud")), AUD);
  ck_assert_str_eq(json_string_value(json_object_get(claims, "iss")), CLIENT);
  ck_assert_str_eq(json_string_value(json_object_get(claims, "sub")), CLIENT);
  ck_assert_int_eq(json_integer_value(json_object_get(claims, "nbf")), NOW);
  ck_assert_int_eq(json_integer_value(json_object_get(claims, "iat")), NOW);
  ck_assert_int_eq(json_integer_value(json_object_get(claims, "exp")),
    NOW + 600);
  jti = json_string_value(json_object_get(claims, "jti"));
  ck_assert_ptr_nonnull(jti);
  ck_assert_uint_eq(strlen(jti), 36);
  ck_assert_int_eq(jti[14], '4');

  /* The signature, with the public key only: PSS, SHA-256, salt 32. */
  sig = b64u_decode(dot2 + 1, strlen(dot2 + 1), &siglen);
  ck_assert_uint_eq(siglen, 256);
  ctx = EVP_MD_CTX_new();
  ck_assert_int_eq(EVP_DigestVerifyInit(ctx, &pctx, EVP_sha256(), NULL,
    X509_get0_pubkey(p.cert)), 1);
  EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING);
  EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, 32);
  ck_assert_int_eq(EVP_DigestVerify(ctx, sig, siglen,
    (const unsigned char *) jwt, (size_t) (dot2 - jwt)), 1);

  /* A changed claim breaks it. */
  EVP_MD_CTX_reset(ctx);
  pctx = NULL;
  EVP_DigestVerifyInit(ctx, &pctx, EVP_sha256(), NULL,
    X509_get0_pubkey(p.cert));
  EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING);
  EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, 32);
  jwt[dot1 - jwt + 3] ^= 1;
  ck_assert_int_ne(EVP_DigestVerify(ctx, sig, siglen,
    (const unsigned char *) jwt, (size_t) (dot2 - jwt)), 1);

  EVP_MD_CTX_free(ctx);
  free(sig);
  json_decref(header);
  json_decref(claims);
  free(jwt);
  free_pair(&p);
}
END_TEST

START_TEST(test_each_assertion_has_its_own_jti) {
  struct pair p;
  char *a = NULL, *b = NULL, err[512];

  make_pair(&p, 2048);
  ck_assert_int_eq(mailoauth_assertion_make(p.key_pem, strlen(p.key_pem),
    p.cert_pem, strlen(p.cert_pem), CLIENT, AUD, NOW, &a, err,
    sizeof(err)), 0);
  ck_assert_int_eq(mailoauth_assertion_make(p.key_pem, strlen(p.key_pem),
    p.cert_pem, strlen(p.cert_pem), CLIENT, AUD, NOW, &b, err,
    sizeof(err)), 0);
  /* Same header, different claims (the jti). */
  ck_assert_int_eq(strncmp(a, b, (size_t) (strchr(a, '.') - a)), 0);
  ck_assert_str_ne(a, b);
  free(a);
  free(b);
  free_pair(&p);
}
END_TEST

START_TEST(test_cert_info_thumbprints_and_dates) {
  struct mailoauth_cert_info info;
  struct pair p;
  unsigned char md[20];
  unsigned int n;
  char hex[41], err[256];
  unsigned int i;

  make_pair(&p, 2048);
  ck_assert_int_eq(mailoauth_assertion_cert_info(p.cert_pem,
    strlen(p.cert_pem), &info, err, sizeof(err)), 0);
  X509_digest(p.cert, EVP_sha1(), md, &n);
  for (i = 0; i < 20; i++) {
    snprintf(hex + 2 * i, 3, "%02X", md[i]);
  }
  ck_assert_str_eq(info.sha1, hex);
  ck_assert_uint_eq(strlen(info.sha256), 64);
  ck_assert_str_eq(info.subject, "CN=ftp-notify");
  ck_assert_int_gt(info.not_after - info.not_before, 86400L * 29);

  /* A key and certificate in one text: the certificate is found. */
  {
    size_t len = strlen(p.key_pem) + strlen(p.cert_pem) + 1;
    char *both = malloc(len);

    snprintf(both, len, "%s%s", p.key_pem, p.cert_pem);
    ck_assert_int_eq(mailoauth_assertion_cert_info(both, strlen(both), &info,
      err, sizeof(err)), 0);
    ck_assert_str_eq(info.sha1, hex);
    free(both);
  }
  free_pair(&p);
}
END_TEST

START_TEST(test_wrong_or_weak_keys_refused_without_quoting_them) {
  struct pair a, b, weak;
  char err[512], *jwt = NULL;

  make_pair(&a, 2048);
  make_pair(&b, 2048);
  make_pair(&weak, 1024);

  ck_assert_int_eq(mailoauth_assertion_check_pair(a.key_pem,
    strlen(a.key_pem), a.cert_pem, strlen(a.cert_pem), err, sizeof(err)), 0);

  ck_assert_int_eq(mailoauth_assertion_check_pair(a.key_pem,
    strlen(a.key_pem), b.cert_pem, strlen(b.cert_pem), err, sizeof(err)), -1);
  ck_assert_ptr_nonnull(strstr(err, "does not belong to the private key"));

  ck_assert_int_eq(mailoauth_assertion_check_pair(weak.key_pem,
    strlen(weak.key_pem), weak.cert_pem, strlen(weak.cert_pem), err,
    sizeof(err)), -1);
  ck_assert_ptr_nonnull(strstr(err, "1024 bits"));

  ck_assert_int_eq(mailoauth_assertion_make(a.cert_pem, strlen(a.cert_pem),
    a.cert_pem, strlen(a.cert_pem), CLIENT, AUD, NOW, &jwt, err,
    sizeof(err)), -1);
  ck_assert_ptr_null(jwt);
  ck_assert_ptr_nonnull(strstr(err, "private key"));
  ck_assert_ptr_null(strstr(err, "BEGIN PRIVATE KEY-----\nMII"));

  free_pair(&a);
  free_pair(&b);
  free_pair(&weak);
}
END_TEST

static char *write_file(const char *text, mode_t mode) {
  char *path = strdup("/tmp/test_assertion.XXXXXX");
  int fd = mkstemp(path);

  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t) strlen(text));
  fchmod(fd, mode);
  close(fd);
  return path;
}

static int parse_one(struct mailoauth_account *a, const char *setting,
    char *err, size_t errlen) {
  char *argv[6];

  argv[0] = (char *) "tenant=contoso.onmicrosoft.com";
  argv[1] = (char *) "client-id=" CLIENT;
  argv[2] = (char *) "mailbox=ftp@contoso.com";
  argv[3] = (char *) "grant=app-only";
  argv[4] = (char *) setting;
  return mailoauth_account_parse(a, "sales", 5, argv, err, errlen);
}

START_TEST(test_account_client_cert_loads_key_and_cert) {
  struct mailoauth_account a;
  struct pair p;
  char err[512], setting[600], *key, *cert, *both, *pem = NULL;
  size_t len;

  make_pair(&p, 2048);
  len = strlen(p.key_pem) + strlen(p.cert_pem) + 1;
  both = malloc(len);
  snprintf(both, len, "%s%s", p.key_pem, p.cert_pem);

  /* One file holding both. */
  key = write_file(both, 0600);
  snprintf(setting, sizeof(setting), "client-cert=file:%s", key);
  ck_assert_msg(parse_one(&a, setting, err, sizeof(err)) == 0, "%s", err);
  ck_assert_int_eq(mailoauth_account_check_secret(&a, err, sizeof(err)), 0);
  ck_assert_ptr_null(a.oauth.client_key_pem);
  ck_assert_int_eq(mailoauth_account_load_secret(&a, err, sizeof(err)), 0);
  ck_assert_ptr_nonnull(strstr(a.oauth.client_key_pem, "PRIVATE KEY"));
  ck_assert_ptr_null(strstr(a.oauth.client_cert_pem, "PRIVATE KEY"));
  ck_assert_ptr_nonnull(strstr(a.oauth.client_cert_pem, "CERTIFICATE"));
  ck_assert_int_eq(mailoauth_account_read_cert(&a, &pem, err, sizeof(err)),
    0);
  ck_assert_ptr_null(strstr(pem, "PRIVATE KEY"));
  free(pem);
  mailoauth_account_clear(&a);

  /* Readable by others: refused, saying what to do. */
  chmod(key, 0644);
  ck_assert_int_eq(parse_one(&a, setting, err, sizeof(err)), 0);
  ck_assert_int_eq(mailoauth_account_check_secret(&a, err, sizeof(err)), -1);
  ck_assert_ptr_nonnull(strstr(err, "chmod 0600"));
  mailoauth_account_clear(&a);
  unlink(key);
  free(key);

  /* Key and certificate apart; the certificate may be public. */
  key = write_file(p.key_pem, 0600);
  cert = write_file(p.cert_pem, 0644);
  snprintf(setting, sizeof(setting), "client-cert=file:%s,%s", key, cert);
  ck_assert_msg(parse_one(&a, setting, err, sizeof(err)) == 0, "%s", err);
  ck_assert_int_eq(mailoauth_account_load_secret(&a, err, sizeof(err)), 0);
  ck_assert_ptr_nonnull(a.oauth.client_cert_pem);
  mailoauth_account_clear(&a);

  /* A key file without the certificate says how to add it. */
  snprintf(setting, sizeof(setting), "client-cert=file:%s", key);
  ck_assert_int_eq(parse_one(&a, setting, err, sizeof(err)), 0);
  ck_assert_int_eq(mailoauth_account_check_secret(&a, err, sizeof(err)), -1);
  ck_assert_ptr_nonnull(strstr(err, "holds no certificate"));
  mailoauth_account_clear(&a);
  unlink(key);
  unlink(cert);
  free(key);
  free(cert);
  free(both);
  free_pair(&p);
}
END_TEST

START_TEST(test_account_secret_and_cert_exclude_each_other) {
  struct mailoauth_account a;
  char err[512];
  char *argv[6];

  argv[0] = (char *) "tenant=contoso.onmicrosoft.com";
  argv[1] = (char *) "client-id=" CLIENT;
  argv[2] = (char *) "mailbox=ftp@contoso.com";
  argv[3] = (char *) "client-secret=file:/etc/proftpd/s.secret";
  argv[4] = (char *) "client-cert=file:/etc/proftpd/s.key";
  ck_assert_int_eq(mailoauth_account_parse(&a, "sales", 5, argv, err,
    sizeof(err)), -1);
  ck_assert_ptr_nonnull(strstr(err, "exclude each other"));
  mailoauth_account_clear(&a);

  ck_assert_int_eq(parse_one(&a, "client-cert=/etc/proftpd/s.key", err,
    sizeof(err)), -1);
  ck_assert_ptr_nonnull(strstr(err, "client-cert=file:/etc/proftpd/sales.key"));
  mailoauth_account_clear(&a);

  ck_assert_int_eq(parse_one(&a, "secret-expires=2027-02-30x", err,
    sizeof(err)), -1);
  ck_assert_ptr_nonnull(strstr(err, "YYYY-MM-DD"));
  mailoauth_account_clear(&a);
}
END_TEST

int main(void) {
  Suite *s = suite_create("assertion");
  TCase *tc = tcase_create("assertion");
  SRunner *sr;
  int failed;

  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_assertion_verifies_with_the_certificate);
  tcase_add_test(tc, test_each_assertion_has_its_own_jti);
  tcase_add_test(tc, test_cert_info_thumbprints_and_dates);
  tcase_add_test(tc, test_wrong_or_weak_keys_refused_without_quoting_them);
  tcase_add_test(tc, test_account_client_cert_loads_key_and_cert);
  tcase_add_test(tc, test_account_secret_and_cert_exclude_each_other);
  suite_add_tcase(s, tc);

  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
