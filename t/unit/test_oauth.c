/*
 * Unit tests for mod_mailoauth/lib/oauth/oauth.c, oautherr.c, pkce.c: endpoints, PKCE, parsing,
 * classification, the log line, backoff, and the request paths against a
 * small HTTPS token endpoint run in a child process.
 */

#include "mailoauth/oauth.h"
#include "mailoauth/trace.h"

#include <check.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <curl/curl.h>
#include "mailoauth/jsonwrap.h"
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

/* Secrets used throughout: none may reach a trace line or an error text. */
#define SECRET_CLIENT   "Xq8~cLiEnTsEcReT.vAlUe_0123456789abcdef"
#define SECRET_REFRESH  "0.AReFrEsHtOkEn-SeCrEt-AAAABBBBCCCCDDDD"
#define SECRET_REFRESH2 "0.ANeWrOtAtEd-ReFrEsH-EEEEFFFFGGGGHHHH"
#define SECRET_ACCESS   "eyJ0eXAiOiJKV1QiLCJub25jZSI6ImFjY2Vzcy1zZWNyZXQ"
#define SECRET_CODE     "0.AuThCoDe-SeCrEt-1111222233334444"
#define SECRET_DEVICE   "DAQABAAEAAAD-dEvIcE-cOdE-SeCrEt-5555"

static const char *all_secrets[] = {
  SECRET_CLIENT, SECRET_REFRESH, SECRET_REFRESH2, SECRET_ACCESS, SECRET_CODE,
  SECRET_DEVICE, NULL
};

static const time_t NOW = 1795860000;   /* 2026-11-28 */

/* ------------------------------------------------------------------------
 * Trace recorder.
 */

static char *rec_text = NULL;
static size_t rec_len = 0, rec_size = 0;

static void rec_append(const char *s, size_t n) {
  if (rec_len + n + 1 > rec_size) {
    size_t size = rec_size > 0 ? rec_size : 4096;

    while (size < rec_len + n + 1) {
      size *= 2;
    }
    rec_text = realloc(rec_text, size);
    ck_assert_ptr_nonnull(rec_text);
    rec_size = size;
  }

  memcpy(rec_text + rec_len, s, n);
  rec_len += n;
  rec_text[rec_len] = '\0';
}

static void rec_sink(const char *channel, int level, const char *fmt,
    va_list ap) {
  char line[8192];
  int n;

  n = snprintf(line, sizeof(line), "%s %d: ", channel, level);
  rec_append(line, (size_t) n);
  n = vsnprintf(line, sizeof(line), fmt, ap);
  rec_append(line, (size_t) n < sizeof(line) ? (size_t) n : sizeof(line) - 1);
  rec_append("\n", 1);
}

static void rec_setup(void) {
  rec_len = 0;
  if (rec_text != NULL) {
    rec_text[0] = '\0';
  }
  mailoauth_trace_set_sink(rec_sink);
}

static void rec_teardown(void) {
  mailoauth_trace_set_sink(NULL);
  free(rec_text);
  rec_text = NULL;
  rec_len = rec_size = 0;
}

static void assert_no_secret_in(const char *what, const char *text) {
  unsigned int i;

  if (text == NULL) {
    return;
  }

  for (i = 0; all_secrets[i] != NULL; i++) {
    ck_assert_msg(strstr(text, all_secrets[i]) == NULL,
      "secret #%u found in %s", i, what);
  }
}

static void assert_no_secret_in_traces(void) {
  assert_no_secret_in("trace lines", rec_text);
}

/* ------------------------------------------------------------------------
 * Helpers.
 */

static void ms_config(struct mailoauth_oauth_config *cfg) {
  memset(cfg, 0, sizeof(*cfg));
  cfg->provider = MAILOAUTH_OAUTH_PROVIDER_MICROSOFT;
  cfg->grant = MAILOAUTH_OAUTH_GRANT_DELEGATED;
  cfg->tenant = "contoso.onmicrosoft.com";
  cfg->client_id = "11111111-2222-3333-4444-555555555555";
  cfg->client_secret = SECRET_CLIENT;
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Percent-decoded value of name in a query or form string (malloc'd). */
static char *query_param(const char *query, const char *name) {
  size_t nlen = strlen(name);
  const char *p = query;

  while (p != NULL && *p != '\0') {
    const char *end = strchr(p, '&');
    size_t len = end != NULL ? (size_t) (end - p) : strlen(p);

    if (len > nlen && strncmp(p, name, nlen) == 0 && p[nlen] == '=') {
      char *out = malloc(len + 1), *o = out;
      size_t i;

      for (i = nlen + 1; i < len; i++) {
        if (p[i] == '%' && i + 2 < len + 1 && hexval(p[i + 1]) >= 0 &&
            hexval(p[i + 2]) >= 0) {
          *o++ = (char) (hexval(p[i + 1]) * 16 + hexval(p[i + 2]));
          i += 2;

        } else if (p[i] == '+') {
          *o++ = ' ';

        } else {
          *o++ = p[i];
        }
      }
      *o = '\0';
      return out;
    }

    p = end != NULL ? end + 1 : NULL;
  }

  return NULL;
}

static void assert_param(const char *query, const char *name,
    const char *expected) {
  char *v = query_param(query, name);

  if (expected == NULL) {
    ck_assert_msg(v == NULL, "parameter %s should be absent", name);
    return;
  }

  ck_assert_msg(v != NULL, "parameter %s missing", name);
  ck_assert_str_eq(v, expected);
  free(v);
}

static char *b64url(const char *s) {
  size_t len = strlen(s);
  char *out = malloc(4 * (len / 3 + 1) + 1);
  int n, i;

  n = EVP_EncodeBlock((unsigned char *) out, (const unsigned char *) s,
    (int) len);
  while (n > 0 && out[n - 1] == '=') {
    n--;
  }
  out[n] = '\0';

  for (i = 0; i < n; i++) {
    if (out[i] == '+') out[i] = '-';
    if (out[i] == '/') out[i] = '_';
  }
  return out;
}

static char *make_id_token(const char *claims) {
  char *h = b64url("{\"alg\":\"RS256\",\"typ\":\"JWT\"}"), *p = b64url(claims);
  char *tok = malloc(strlen(h) + strlen(p) + 16);

  sprintf(tok, "%s.%s.c2lnbmF0dXJl", h, p);
  free(h);
  free(p);
  return tok;
}

/* ------------------------------------------------------------------------
 * Names.
 */

START_TEST(test_names) {
  mailoauth_oauth_provider_t p;
  mailoauth_oauth_grant_t g;

  ck_assert_str_eq(mailoauth_oauth_class_name(MAILOAUTH_OAUTH_OK), "ok");
  ck_assert_str_eq(mailoauth_oauth_class_name(MAILOAUTH_OAUTH_REAUTH),
    "reauth");
  ck_assert_str_eq(mailoauth_oauth_class_name(MAILOAUTH_OAUTH_CONFIG),
    "config");
  ck_assert_str_eq(mailoauth_oauth_class_name(MAILOAUTH_OAUTH_TRANSIENT),
    "transient");
  ck_assert_str_eq(mailoauth_oauth_class_name(MAILOAUTH_OAUTH_PENDING),
    "pending");
  ck_assert_str_eq(mailoauth_oauth_class_name(MAILOAUTH_OAUTH_SLOW_DOWN),
    "slow_down");
  ck_assert_str_eq(mailoauth_oauth_class_name(MAILOAUTH_OAUTH_DECLINED),
    "declined");
  ck_assert_str_eq(mailoauth_oauth_class_name(MAILOAUTH_OAUTH_EXPIRED),
    "expired");
  ck_assert_str_eq(mailoauth_oauth_class_name((mailoauth_oauth_class_t) 99),
    "unknown");

  ck_assert_int_eq(mailoauth_oauth_provider_parse("Microsoft-USGov", &p), 0);
  ck_assert_int_eq(p, MAILOAUTH_OAUTH_PROVIDER_MICROSOFT_USGOV);
  ck_assert_int_eq(mailoauth_oauth_provider_parse("microsoft-china", &p), 0);
  ck_assert_int_eq(p, MAILOAUTH_OAUTH_PROVIDER_MICROSOFT_CHINA);
  ck_assert_int_eq(mailoauth_oauth_provider_parse("google", &p), 0);
  ck_assert_str_eq(mailoauth_oauth_provider_name(p), "google");
  ck_assert_int_eq(mailoauth_oauth_provider_parse("yahoo", &p), -1);
  ck_assert_int_eq(errno, ENOENT);

  ck_assert_int_eq(mailoauth_oauth_grant_parse("app-only", &g), 0);
  ck_assert_int_eq(g, MAILOAUTH_OAUTH_GRANT_APP_ONLY);
  ck_assert_int_eq(mailoauth_oauth_grant_parse("delegated", &g), 0);
  ck_assert_int_eq(g, MAILOAUTH_OAUTH_GRANT_DELEGATED);
  ck_assert_str_eq(mailoauth_oauth_grant_name(MAILOAUTH_OAUTH_GRANT_APP_ONLY),
    "app-only");
  ck_assert_int_eq(mailoauth_oauth_grant_parse("password", &g), -1);
}
END_TEST

/* ------------------------------------------------------------------------
 * Configuration, scopes and endpoints.
 */

START_TEST(test_config_check) {
  struct mailoauth_oauth_config cfg;
  char err[256];

  ms_config(&cfg);
  ck_assert_int_eq(mailoauth_oauth_config_check(&cfg, err, sizeof(err)), 0);

  cfg.client_id = NULL;
  ck_assert_int_eq(mailoauth_oauth_config_check(&cfg, err, sizeof(err)), -1);
  ck_assert_int_eq(errno, EINVAL);
  ck_assert_ptr_nonnull(strstr(err, "client ID"));

  ms_config(&cfg);
  cfg.authority = "http://127.0.0.1:8080";
  ck_assert_int_eq(mailoauth_oauth_config_check(&cfg, err, sizeof(err)), -1);
  ck_assert_ptr_nonnull(strstr(err, "https://"));

  ms_config(&cfg);
  cfg.token_url = "ftp://example.com/token";
  ck_assert_int_eq(mailoauth_oauth_config_check(&cfg, err, sizeof(err)), -1);

  ms_config(&cfg);
  cfg.tenant = "contoso/../evil";
  ck_assert_int_eq(mailoauth_oauth_config_check(&cfg, err, sizeof(err)), -1);
  ck_assert_ptr_nonnull(strstr(err, "tenant"));

  /* App-only needs the real tenant and a secret. */
  ms_config(&cfg);
  cfg.grant = MAILOAUTH_OAUTH_GRANT_APP_ONLY;
  cfg.tenant = "organizations";
  ck_assert_int_eq(mailoauth_oauth_config_check(&cfg, err, sizeof(err)), -1);
  ck_assert_ptr_nonnull(strstr(err, "tenant"));
  cfg.tenant = NULL;
  ck_assert_int_eq(mailoauth_oauth_config_check(&cfg, err, sizeof(err)), -1);
  cfg.tenant = "9188040d-6c67-4c5b-b112-36a304b66dad";
  ck_assert_int_eq(mailoauth_oauth_config_check(&cfg, err, sizeof(err)), 0);
  cfg.client_secret = NULL;
  ck_assert_int_eq(mailoauth_oauth_config_check(&cfg, err, sizeof(err)), -1);
  ck_assert_ptr_nonnull(strstr(err, "secret"));

  ms_config(&cfg);
  cfg.provider = MAILOAUTH_OAUTH_PROVIDER_GOOGLE;
  cfg.grant = MAILOAUTH_OAUTH_GRANT_APP_ONLY;
  ck_assert_int_eq(mailoauth_oauth_config_check(&cfg, err, sizeof(err)), -1);
  ck_assert_ptr_nonnull(strstr(err, "Google"));

  ms_config(&cfg);
  cfg.provider = MAILOAUTH_OAUTH_PROVIDER_GENERIC;
  ck_assert_int_eq(mailoauth_oauth_config_check(&cfg, err, sizeof(err)), -1);
  cfg.token_url = "https://idp.example/token";
  ck_assert_int_eq(mailoauth_oauth_config_check(&cfg, err, sizeof(err)), -1);
  cfg.scopes = "mail offline_access";
  ck_assert_int_eq(mailoauth_oauth_config_check(&cfg, err, sizeof(err)), 0);

  /* A secret pasted with a line break: reported, never quoted. */
  ms_config(&cfg);
  cfg.client_secret = SECRET_CLIENT "\n";
  ck_assert_int_eq(mailoauth_oauth_config_check(&cfg, err, sizeof(err)), -1);
  assert_no_secret_in("config error", err);

  ms_config(&cfg);
  cfg.timeout_ms = -1;
  ck_assert_int_eq(mailoauth_oauth_config_check(&cfg, err, sizeof(err)), -1);

  ck_assert_int_eq(mailoauth_oauth_config_check(NULL, err, sizeof(err)), -1);
}
END_TEST

struct scope_case {
  mailoauth_oauth_provider_t provider;
  mailoauth_oauth_grant_t grant;
  int want_identity;
  const char *expected;
};

START_TEST(test_default_scopes) {
  static const struct scope_case cases[] = {
    { MAILOAUTH_OAUTH_PROVIDER_MICROSOFT, MAILOAUTH_OAUTH_GRANT_DELEGATED, 0,
      "https://outlook.office.com/SMTP.Send "
      "https://outlook.office.com/IMAP.AccessAsUser.All offline_access" },
    { MAILOAUTH_OAUTH_PROVIDER_MICROSOFT, MAILOAUTH_OAUTH_GRANT_DELEGATED, 1,
      "https://outlook.office.com/SMTP.Send "
      "https://outlook.office.com/IMAP.AccessAsUser.All offline_access "
      "openid email profile" },
    { MAILOAUTH_OAUTH_PROVIDER_MICROSOFT, MAILOAUTH_OAUTH_GRANT_APP_ONLY, 0,
      "https://outlook.office365.com/.default" },
    { MAILOAUTH_OAUTH_PROVIDER_MICROSOFT_USGOV, MAILOAUTH_OAUTH_GRANT_DELEGATED,
      0, "https://outlook.office365.us/SMTP.Send "
      "https://outlook.office365.us/IMAP.AccessAsUser.All offline_access" },
    { MAILOAUTH_OAUTH_PROVIDER_MICROSOFT_USGOV, MAILOAUTH_OAUTH_GRANT_APP_ONLY,
      0, "https://outlook.office365.us/.default" },
    { MAILOAUTH_OAUTH_PROVIDER_MICROSOFT_CHINA, MAILOAUTH_OAUTH_GRANT_DELEGATED,
      0, "https://partner.outlook.cn/SMTP.Send "
      "https://partner.outlook.cn/IMAP.AccessAsUser.All offline_access" },
    { MAILOAUTH_OAUTH_PROVIDER_MICROSOFT_CHINA, MAILOAUTH_OAUTH_GRANT_APP_ONLY,
      0, "https://partner.outlook.cn/.default" },
    { MAILOAUTH_OAUTH_PROVIDER_GOOGLE, MAILOAUTH_OAUTH_GRANT_DELEGATED, 0,
      "https://mail.google.com/" },
    { MAILOAUTH_OAUTH_PROVIDER_GOOGLE, MAILOAUTH_OAUTH_GRANT_DELEGATED, 1,
      "https://mail.google.com/ openid email profile" }
  };
  struct mailoauth_oauth_config cfg;
  unsigned int i;
  char *s = NULL;

  for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    ms_config(&cfg);
    cfg.provider = cases[i].provider;
    cfg.grant = cases[i].grant;
    cfg.want_identity = cases[i].want_identity;
    ck_assert_int_eq(mailoauth_oauth_scopes(&cfg, &s), 0);
    ck_assert_str_eq(s, cases[i].expected);
    free(s);
  }

  /* Explicit scopes are used as given. */
  ms_config(&cfg);
  cfg.scopes = "https://outlook.office.com/SMTP.Send offline_access";
  cfg.want_identity = 1;
  ck_assert_int_eq(mailoauth_oauth_scopes(&cfg, &s), 0);
  ck_assert_str_eq(s, "https://outlook.office.com/SMTP.Send offline_access");
  free(s);
}
END_TEST

struct url_case {
  mailoauth_oauth_provider_t provider;
  const char *authority;
  const char *tenant;
  const char *token;
  const char *device;
};

START_TEST(test_endpoint_urls) {
  static const struct url_case cases[] = {
    { MAILOAUTH_OAUTH_PROVIDER_MICROSOFT, NULL, "contoso.com",
      "https://login.microsoftonline.com/contoso.com/oauth2/v2.0/token",
      "https://login.microsoftonline.com/contoso.com/oauth2/v2.0/devicecode" },
    { MAILOAUTH_OAUTH_PROVIDER_MICROSOFT, NULL, NULL,
      "https://login.microsoftonline.com/organizations/oauth2/v2.0/token",
      "https://login.microsoftonline.com/organizations/oauth2/v2.0/"
      "devicecode" },
    { MAILOAUTH_OAUTH_PROVIDER_MICROSOFT_USGOV, NULL, "common",
      "https://login.microsoftonline.us/common/oauth2/v2.0/token",
      "https://login.microsoftonline.us/common/oauth2/v2.0/devicecode" },
    { MAILOAUTH_OAUTH_PROVIDER_MICROSOFT_CHINA, NULL, "contoso.partner.cn",
      "https://login.partner.microsoftonline.cn/contoso.partner.cn/oauth2/"
      "v2.0/token",
      "https://login.partner.microsoftonline.cn/contoso.partner.cn/oauth2/"
      "v2.0/devicecode" },
    { MAILOAUTH_OAUTH_PROVIDER_MICROSOFT, "https://127.0.0.1:8443/",
      "9188040d-6c67-4c5b-b112-36a304b66dad",
      "https://127.0.0.1:8443/9188040d-6c67-4c5b-b112-36a304b66dad/oauth2/"
      "v2.0/token",
      "https://127.0.0.1:8443/9188040d-6c67-4c5b-b112-36a304b66dad/oauth2/"
      "v2.0/devicecode" },
    { MAILOAUTH_OAUTH_PROVIDER_GOOGLE, NULL, NULL,
      "https://oauth2.googleapis.com/token",
      "https://oauth2.googleapis.com/device/code" },
    { MAILOAUTH_OAUTH_PROVIDER_GOOGLE, "https://127.0.0.1:9443", NULL,
      "https://127.0.0.1:9443/token", "https://127.0.0.1:9443/device/code" }
  };
  struct mailoauth_oauth_config cfg;
  unsigned int i;
  char *url = NULL;

  for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    ms_config(&cfg);
    cfg.provider = cases[i].provider;
    cfg.authority = cases[i].authority;
    cfg.tenant = cases[i].tenant;

    ck_assert_int_eq(mailoauth_oauth_token_url(&cfg, &url), 0);
    ck_assert_str_eq(url, cases[i].token);
    free(url);

    ck_assert_int_eq(mailoauth_oauth_devicecode_url(&cfg, &url), 0);
    ck_assert_str_eq(url, cases[i].device);
    free(url);
  }

  /* Explicit URLs win; the generic provider has only what it is given. */
  ms_config(&cfg);
  cfg.token_url = "https://proxy.example/tok";
  ck_assert_int_eq(mailoauth_oauth_token_url(&cfg, &url), 0);
  ck_assert_str_eq(url, "https://proxy.example/tok");
  free(url);

  ms_config(&cfg);
  cfg.provider = MAILOAUTH_OAUTH_PROVIDER_GENERIC;
  cfg.token_url = "https://idp.example/oauth/token";
  cfg.scopes = "mail";
  ck_assert_int_eq(mailoauth_oauth_token_url(&cfg, &url), 0);
  ck_assert_str_eq(url, "https://idp.example/oauth/token");
  free(url);
  ck_assert_int_eq(mailoauth_oauth_devicecode_url(&cfg, &url), -1);
  ck_assert_int_eq(errno, ENOENT);
}
END_TEST

START_TEST(test_authorize_url) {
  struct mailoauth_oauth_config cfg;
  struct mailoauth_oauth_authorize_params ap;
  char *url = NULL, *q;

  ms_config(&cfg);
  cfg.want_identity = 1;
  memset(&ap, 0, sizeof(ap));
  ap.redirect_uri = "http://localhost:8400/callback?x=1";
  ap.state = "st4te-Value_123";
  ap.code_challenge = "E9Melhoa2OwvFrEMTJguCgvrTXNE3mY-aSmh5dNHX5M";
  ap.login_hint = "ftp-alerts@contoso.com";
  ap.prompt = "select_account";

  ck_assert_int_eq(mailoauth_oauth_authorize_url(&cfg, &ap, &url), 0);
  q = strchr(url, '?');
  ck_assert_ptr_nonnull(q);
  ck_assert_int_eq((int) (q - url), (int) strlen(
    "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/"
    "authorize"));
  ck_assert_int_eq(strncmp(url, "https://login.microsoftonline.com/"
    "contoso.onmicrosoft.com/oauth2/v2.0/authorize?", (size_t) (q - url) + 1),
    0);
  q++;

  /* Everything is percent-encoded: no raw separators inside values. */
  ck_assert_ptr_null(strchr(q, ' '));
  ck_assert_ptr_null(strchr(q, '#'));

  assert_param(q, "client_id", "11111111-2222-3333-4444-555555555555");
  assert_param(q, "response_type", "code");
  assert_param(q, "redirect_uri", "http://localhost:8400/callback?x=1");
  assert_param(q, "response_mode", "query");
  assert_param(q, "scope", "https://outlook.office.com/SMTP.Send "
    "https://outlook.office.com/IMAP.AccessAsUser.All offline_access "
    "openid email profile");
  assert_param(q, "state", "st4te-Value_123");
  assert_param(q, "code_challenge",
    "E9Melhoa2OwvFrEMTJguCgvrTXNE3mY-aSmh5dNHX5M");
  assert_param(q, "code_challenge_method", "S256");
  assert_param(q, "login_hint", "ftp-alerts@contoso.com");
  assert_param(q, "prompt", "select_account");
  assert_param(q, "access_type", NULL);
  /* Never a secret in a URL given to a browser. */
  assert_param(q, "client_secret", NULL);
  ck_assert_ptr_null(strstr(url, SECRET_CLIENT));
  free(url);

  /* Google: offline access; optional parameters left out when unset. */
  ms_config(&cfg);
  cfg.provider = MAILOAUTH_OAUTH_PROVIDER_GOOGLE;
  ap.login_hint = NULL;
  ap.prompt = "";
  ck_assert_int_eq(mailoauth_oauth_authorize_url(&cfg, &ap, &url), 0);
  ck_assert_int_eq(strncmp(url, "https://accounts.google.com/o/oauth2/v2/auth?",
    44), 0);
  q = strchr(url, '?') + 1;
  assert_param(q, "access_type", "offline");
  assert_param(q, "scope", "https://mail.google.com/");
  assert_param(q, "login_hint", NULL);
  assert_param(q, "prompt", NULL);
  free(url);

  /* An authorize URL that already has a query string. */
  ms_config(&cfg);
  cfg.provider = MAILOAUTH_OAUTH_PROVIDER_GENERIC;
  cfg.token_url = "https://idp.example/token";
  cfg.authorize_url = "https://idp.example/auth?tenant=a";
  cfg.scopes = "mail.send";
  ck_assert_int_eq(mailoauth_oauth_authorize_url(&cfg, &ap, &url), 0);
  ck_assert_int_eq(strncmp(url, "https://idp.example/auth?tenant=a&client_id=",
    44), 0);
  free(url);

  /* Missing pieces and app-only are refused. */
  ms_config(&cfg);
  ap.state = NULL;
  ck_assert_int_eq(mailoauth_oauth_authorize_url(&cfg, &ap, &url), -1);
  ck_assert_int_eq(errno, EINVAL);
  ap.state = "s";
  cfg.grant = MAILOAUTH_OAUTH_GRANT_APP_ONLY;
  ck_assert_int_eq(mailoauth_oauth_authorize_url(&cfg, &ap, &url), -1);
}
END_TEST

/* ------------------------------------------------------------------------
 * PKCE and state.
 */

static int all_unreserved(const char *s) {
  for (; *s != '\0'; s++) {
    if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
          (*s >= '0' && *s <= '9') || *s == '-' || *s == '.' || *s == '_' ||
          *s == '~')) {
      return 0;
    }
  }
  return 1;
}

START_TEST(test_pkce_rfc7636_vector) {
  char challenge[MAILOAUTH_OAUTH_CHALLENGE_LEN + 1];

  /* RFC 7636 Appendix B (verifier = base64url of the octets listed there). */
  ck_assert_int_eq(mailoauth_oauth_pkce_challenge(
    "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk", challenge,
    sizeof(challenge)), 0);
  ck_assert_str_eq(challenge, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");

  /* Another verifier (this one is often misquoted as the RFC's) gives
   * another challenge.
   */
  ck_assert_int_eq(mailoauth_oauth_pkce_challenge(
    "dBjftJeZ4CVP-mJ0kq4D4lT8e5zq1AeC8TqUvTwvmpM", challenge,
    sizeof(challenge)), 0);
  ck_assert_str_eq(challenge, "NRd75ZDVROBcHmJBpWoXtcOB6vwmDD--NEBxdXZInjM");

  /* Buffer too small, verifier too short, too long, bad characters. */
  ck_assert_int_eq(mailoauth_oauth_pkce_challenge(
    "dBjftJeZ4CVP-mJ0kq4D4lT8e5zq1AeC8TqUvTwvmpM", challenge, 43), -1);
  ck_assert_int_eq(errno, EINVAL);
  ck_assert_int_eq(mailoauth_oauth_pkce_challenge(
    "dBjftJeZ4CVP-mJ0kq4D4lT8e5zq1AeC8TqUvTwvmp", challenge,
    sizeof(challenge)), -1);
  ck_assert_int_eq(mailoauth_oauth_pkce_challenge(
    "dBjftJeZ4CVP+mJ0kq4D4lT8e5zq1AeC8TqUvTwvmpM", challenge,
    sizeof(challenge)), -1);
  {
    char longv[130];

    memset(longv, 'a', 129);
    longv[129] = '\0';
    ck_assert_int_eq(mailoauth_oauth_pkce_challenge(longv, challenge,
      sizeof(challenge)), -1);
    longv[128] = '\0';
    ck_assert_int_eq(mailoauth_oauth_pkce_challenge(longv, challenge,
      sizeof(challenge)), 0);
  }
}
END_TEST

START_TEST(test_pkce_verifier) {
  char v1[MAILOAUTH_OAUTH_VERIFIER_MAX + 1], v2[MAILOAUTH_OAUTH_VERIFIER_MAX + 1];
  char challenge[MAILOAUTH_OAUTH_CHALLENGE_LEN + 1];
  size_t lens[] = { 43, 44, 64, 100, 127, 128 };
  unsigned int i;

  for (i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
    ck_assert_int_eq(mailoauth_oauth_pkce_verifier(v1, sizeof(v1), lens[i]), 0);
    ck_assert_uint_eq(strlen(v1), lens[i]);
    ck_assert(all_unreserved(v1));
    ck_assert_int_eq(mailoauth_oauth_pkce_challenge(v1, challenge,
      sizeof(challenge)), 0);
    ck_assert_uint_eq(strlen(challenge), MAILOAUTH_OAUTH_CHALLENGE_LEN);
    ck_assert(all_unreserved(challenge));
  }

  ck_assert_int_eq(mailoauth_oauth_pkce_verifier(v1, sizeof(v1), 64), 0);
  ck_assert_int_eq(mailoauth_oauth_pkce_verifier(v2, sizeof(v2), 64), 0);
  ck_assert_str_ne(v1, v2);

  ck_assert_int_eq(mailoauth_oauth_pkce_verifier(v1, sizeof(v1), 42), -1);
  ck_assert_int_eq(errno, EINVAL);
  ck_assert_int_eq(mailoauth_oauth_pkce_verifier(v1, sizeof(v1), 129), -1);
  ck_assert_int_eq(mailoauth_oauth_pkce_verifier(v1, 64, 64), -1);
  ck_assert_int_eq(mailoauth_oauth_pkce_verifier(NULL, 0, 64), -1);
}
END_TEST

START_TEST(test_random_state) {
  char s1[MAILOAUTH_OAUTH_STATE_LEN + 1], s2[MAILOAUTH_OAUTH_STATE_LEN + 1];

  ck_assert_int_eq(mailoauth_oauth_random_state(s1, sizeof(s1)), 0);
  ck_assert_int_eq(mailoauth_oauth_random_state(s2, sizeof(s2)), 0);
  ck_assert_uint_eq(strlen(s1), MAILOAUTH_OAUTH_STATE_LEN);
  ck_assert(all_unreserved(s1));
  ck_assert_str_ne(s1, s2);
  ck_assert_int_eq(mailoauth_oauth_random_state(s1, MAILOAUTH_OAUTH_STATE_LEN),
    -1);
}
END_TEST

/* ------------------------------------------------------------------------
 * Retry-After and backoff.
 */

START_TEST(test_retry_after) {
  char date[64];
  struct tm tm;
  time_t when;

  ck_assert_int_eq(mailoauth_oauth_parse_retry_after(NULL, NOW), -1);
  ck_assert_int_eq(mailoauth_oauth_parse_retry_after("120", NOW), 120);
  ck_assert_int_eq(mailoauth_oauth_parse_retry_after(" 5\r\n", NOW), 5);
  ck_assert_int_eq(mailoauth_oauth_parse_retry_after("0", NOW), 0);
  ck_assert_int_eq(mailoauth_oauth_parse_retry_after("", NOW), -1);
  ck_assert_int_eq(mailoauth_oauth_parse_retry_after("soon", NOW), -1);
  ck_assert_int_eq(mailoauth_oauth_parse_retry_after("-5", NOW), -1);
  ck_assert_int_eq(mailoauth_oauth_parse_retry_after("12abc", NOW), -1);
  ck_assert_int_eq(mailoauth_oauth_parse_retry_after("999999999999999999999",
    NOW), 86400);
  ck_assert_int_eq(mailoauth_oauth_parse_retry_after("604800", NOW), 86400);

  /* HTTP-date, all three forms of RFC 9110 5.6.7. */
  when = NOW + 90;
  gmtime_r(&when, &tm);
  strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
  ck_assert_int_eq(mailoauth_oauth_parse_retry_after(date, NOW), 90);
  strcat(date, "\r\n");
  ck_assert_int_eq(mailoauth_oauth_parse_retry_after(date, NOW), 90);

  strftime(date, sizeof(date), "%A, %d-%b-%y %H:%M:%S GMT", &tm);
  ck_assert_int_eq(mailoauth_oauth_parse_retry_after(date, NOW), 90);

  strftime(date, sizeof(date), "%a %b %e %H:%M:%S %Y", &tm);
  ck_assert_int_eq(mailoauth_oauth_parse_retry_after(date, NOW), 90);

  ck_assert_int_eq(mailoauth_oauth_parse_retry_after(
    "Wed, 21 Oct 2015 07:28:00 GMT", NOW), 0);
  ck_assert_int_eq(mailoauth_oauth_parse_retry_after(
    "Wed, 21 Oct 2099 07:28:00 GMT", NOW), 86400);
  ck_assert_int_eq(mailoauth_oauth_parse_retry_after(
    "Wed, 21 Oct 2015 07:28:00 GMT trailing", NOW), -1);
}
END_TEST

static uint32_t rand_zero(void *data) {
  (void) data;
  return 0;
}

static uint32_t rand_max(void *data) {
  (void) data;
  return UINT32_MAX;
}

static uint32_t rand_half(void *data) {
  (void) data;
  return UINT32_MAX / 2;
}

static uint32_t rand_seq(void *data) {
  uint32_t *state = data;

  /* xorshift32: reproducible spread over the whole range. */
  *state ^= *state << 13;
  *state ^= *state >> 17;
  *state ^= *state << 5;
  return *state;
}

START_TEST(test_backoff) {
  unsigned int attempt;
  uint32_t seed = 2463534242u;
  long base = 1000, cap = 300000;

  /* Full jitter: the bounds are 0 and min(cap, base * 2^attempt). */
  ck_assert_int_eq(mailoauth_oauth_backoff_ms(0, base, cap, -1, rand_zero,
    NULL), 0);
  ck_assert_int_eq(mailoauth_oauth_backoff_ms(0, base, cap, -1, rand_max,
    NULL), base);
  ck_assert_int_eq(mailoauth_oauth_backoff_ms(3, base, cap, -1, rand_max,
    NULL), 8000);
  ck_assert_int_eq(mailoauth_oauth_backoff_ms(3, base, cap, -1, rand_half,
    NULL), 4000);
  ck_assert_int_eq(mailoauth_oauth_backoff_ms(8, base, cap, -1, rand_max,
    NULL), 256000);
  ck_assert_int_eq(mailoauth_oauth_backoff_ms(9, base, cap, -1, rand_max,
    NULL), cap);
  ck_assert_int_eq(mailoauth_oauth_backoff_ms(1000, base, cap, -1, rand_max,
    NULL), cap);
  ck_assert_int_eq(mailoauth_oauth_backoff_ms(UINT_MAX, base, cap, -1,
    rand_max, NULL), cap);

  for (attempt = 0; attempt < 40; attempt++) {
    long ceiling = attempt < 20 ? base << attempt : cap;
    unsigned int k;

    if (ceiling > cap) {
      ceiling = cap;
    }

    for (k = 0; k < 50; k++) {
      long d = mailoauth_oauth_backoff_ms(attempt, base, cap, -1, rand_seq,
        &seed);

      ck_assert_int_ge(d, 0);
      ck_assert_int_le(d, ceiling);

      /* The default source (RAND_bytes) keeps the same bounds. */
      d = mailoauth_oauth_backoff_ms(attempt, base, cap, -1, NULL, NULL);
      ck_assert_int_ge(d, 0);
      ck_assert_int_le(d, ceiling);
    }
  }

  /* Retry-After is a floor, even above the cap; capped at a day. */
  ck_assert_int_eq(mailoauth_oauth_backoff_ms(0, base, cap, 30, rand_zero,
    NULL), 30000);
  ck_assert_int_eq(mailoauth_oauth_backoff_ms(5, base, cap, 1, rand_max,
    NULL), 32000);
  ck_assert_int_eq(mailoauth_oauth_backoff_ms(0, base, cap, 600, rand_max,
    NULL), 600000);
  ck_assert_int_eq(mailoauth_oauth_backoff_ms(0, base, cap, 10000000,
    rand_zero, NULL), 86400000L);

  /* Nonsense parameters are clamped, not trusted. */
  ck_assert_int_eq(mailoauth_oauth_backoff_ms(4, 0, 0, -1, rand_max, NULL), 1);
  ck_assert_int_eq(mailoauth_oauth_backoff_ms(4, 5000, 1000, -1, rand_max,
    NULL), 1000);
  ck_assert_int_le(mailoauth_oauth_backoff_ms(60, 1000, LONG_MAX, -1, rand_max,
    NULL), 0x7fffffffL);
}
END_TEST

/* ------------------------------------------------------------------------
 * Classification, table-driven with Entra-shaped and Google-shaped bodies.
 */

#define ENTRA(err, code, text) \
  "{\"error\":\"" err "\",\"error_description\":\"AADSTS" #code ": " text \
  "\\r\\nTrace ID: 0d7c5e3a-1b2c-4d5e-8f90-a1b2c3d4e500\\r\\nCorrelation ID: " \
  "5f0e9a8b-7c6d-4e3f-a2b1-c0d9e8f7a600\\r\\nTimestamp: 2026-11-28 10:00:00Z\"," \
  "\"error_codes\":[" #code "],\"timestamp\":\"2026-11-28 10:00:00Z\"," \
  "\"trace_id\":\"0d7c5e3a-1b2c-4d5e-8f90-a1b2c3d4e500\"," \
  "\"correlation_id\":\"5f0e9a8b-7c6d-4e3f-a2b1-c0d9e8f7a600\"," \
  "\"error_uri\":\"https://login.microsoftonline.com/error?code=" #code "\"}"

struct class_case {
  const char *name;
  mailoauth_oauth_request_t kind;
  long status;
  const char *body;
  const char *retry_after;
  mailoauth_oauth_class_t expected;
  long code;
  const char *error;
};

static const struct class_case class_cases[] = {
  /* A person must sign in again. */
  { "70008 expired refresh token", MAILOAUTH_OAUTH_REQ_REFRESH, 400,
    ENTRA("invalid_grant", 70008, "The provided authorization code or refresh "
    "token has expired due to inactivity. Send a new interactive "
    "authorization request for this user and resource."), NULL,
    MAILOAUTH_OAUTH_REAUTH, 70008, "invalid_grant" },
  { "700082 inactive 90 days", MAILOAUTH_OAUTH_REQ_REFRESH, 400,
    ENTRA("invalid_grant", 700082, "The refresh token has expired due to "
    "inactivity. The token was issued on 2026-08-01 and was inactive for "
    "90.00:00:00."), NULL, MAILOAUTH_OAUTH_REAUTH, 700082, "invalid_grant" },
  { "70043 sign-in frequency", MAILOAUTH_OAUTH_REQ_REFRESH, 400,
    ENTRA("invalid_grant", 70043, "The refresh token has expired or is invalid "
    "due to sign-in frequency checks by conditional access."), NULL,
    MAILOAUTH_OAUTH_REAUTH, 70043, "invalid_grant" },
  { "50076 MFA required", MAILOAUTH_OAUTH_REQ_REFRESH, 400,
    ENTRA("invalid_grant", 50076, "Due to a configuration change made by your "
    "administrator, or because you moved to a new location, you must use "
    "multi-factor authentication."), NULL, MAILOAUTH_OAUTH_REAUTH, 50076,
    "invalid_grant" },
  { "50079 MFA enrolment", MAILOAUTH_OAUTH_REQ_REFRESH, 400,
    ENTRA("interaction_required", 50079, "Due to a configuration change made "
    "by your administrator, you must enroll in multi-factor authentication."),
    NULL, MAILOAUTH_OAUTH_REAUTH, 50079, "interaction_required" },
  { "50173 revoked", MAILOAUTH_OAUTH_REQ_REFRESH, 400,
    ENTRA("invalid_grant", 50173, "The provided grant has expired due to it "
    "being revoked, a fresh auth token is needed."), NULL,
    MAILOAUTH_OAUTH_REAUTH, 50173, "invalid_grant" },
  { "65001 no consent", MAILOAUTH_OAUTH_REQ_REFRESH, 400,
    ENTRA("invalid_grant", 65001, "The user or administrator has not consented "
    "to use the application."), NULL, MAILOAUTH_OAUTH_REAUTH, 65001,
    "invalid_grant" },
  { "50126 bad password", MAILOAUTH_OAUTH_REQ_REFRESH, 400,
    ENTRA("invalid_grant", 50126, "Error validating credentials due to invalid "
    "username or password."), NULL, MAILOAUTH_OAUTH_REAUTH, 50126,
    "invalid_grant" },
  { "70000 invalid grant", MAILOAUTH_OAUTH_REQ_REFRESH, 400,
    ENTRA("invalid_grant", 70000, "Provided grant is invalid or malformed."),
    NULL, MAILOAUTH_OAUTH_REAUTH, 70000, "invalid_grant" },
  { "700084 SPA 24 hours", MAILOAUTH_OAUTH_REQ_REFRESH, 400,
    ENTRA("invalid_grant", 700084, "The refresh token was issued to a single "
    "page app (SPA), and therefore has a fixed, limited lifetime of 1.00:00:00, "
    "which cannot be extended."), NULL, MAILOAUTH_OAUTH_REAUTH, 700084,
    "invalid_grant" },
  { "54005 code redeemed", MAILOAUTH_OAUTH_REQ_AUTH_CODE, 400,
    ENTRA("invalid_grant", 54005, "OAuth2 Authorization code was already "
    "redeemed, please retry with a new valid code."), NULL,
    MAILOAUTH_OAUTH_REAUTH, 54005, "invalid_grant" },
  { "invalid_grant, unknown code", MAILOAUTH_OAUTH_REQ_REFRESH, 400,
    ENTRA("invalid_grant", 123456789, "Something new."), NULL,
    MAILOAUTH_OAUTH_REAUTH, 123456789, "invalid_grant" },
  { "Google invalid_grant", MAILOAUTH_OAUTH_REQ_REFRESH, 400,
    "{\n  \"error\": \"invalid_grant\",\n  \"error_description\": \"Token has "
    "been expired or revoked.\"\n}", NULL, MAILOAUTH_OAUTH_REAUTH, 0,
    "invalid_grant" },

  /* Misconfiguration. */
  { "7000215 secret ID pasted", MAILOAUTH_OAUTH_REQ_REFRESH, 401,
    ENTRA("invalid_client", 7000215, "Invalid client secret provided. Ensure "
    "the secret being sent in the request is the client secret value, not the "
    "client secret ID, for a secret added to app "
    "'11111111-2222-3333-4444-555555555555'."), NULL, MAILOAUTH_OAUTH_CONFIG,
    7000215, "invalid_client" },
  { "7000222 secret expired", MAILOAUTH_OAUTH_REQ_REFRESH, 401,
    ENTRA("invalid_client", 7000222, "The provided client secret keys for app "
    "'11111111-2222-3333-4444-555555555555' are expired."), NULL,
    MAILOAUTH_OAUTH_CONFIG, 7000222, "invalid_client" },
  { "700016 app not in tenant", MAILOAUTH_OAUTH_REQ_REFRESH, 400,
    ENTRA("unauthorized_client", 700016, "Application with identifier "
    "'11111111-2222-3333-4444-555555555555' was not found in the directory "
    "'Contoso'."), NULL, MAILOAUTH_OAUTH_CONFIG, 700016,
    "unauthorized_client" },
  { "50194 single-tenant on common", MAILOAUTH_OAUTH_REQ_AUTH_CODE, 400,
    ENTRA("invalid_request", 50194, "Application is not configured as a "
    "multi-tenant application. Usage of the /common endpoint is not "
    "supported."), NULL, MAILOAUTH_OAUTH_CONFIG, 50194, "invalid_request" },
  { "9001023 client credentials on common",
    MAILOAUTH_OAUTH_REQ_CLIENT_CREDENTIALS, 400,
    ENTRA("invalid_request", 9001023, "The grant type is not supported over "
    "the /common or /consumers endpoints."), NULL, MAILOAUTH_OAUTH_CONFIG,
    9001023, "invalid_request" },
  { "50011 redirect URI mismatch", MAILOAUTH_OAUTH_REQ_AUTH_CODE, 400,
    ENTRA("invalid_request", 50011, "The redirect URI 'http://localhost:8400/' "
    "specified in the request does not match the redirect URIs configured."),
    NULL, MAILOAUTH_OAUTH_CONFIG, 50011, "invalid_request" },
  { "7000218 secret missing", MAILOAUTH_OAUTH_REQ_DEVICE_POLL, 401,
    ENTRA("invalid_client", 7000218, "The request body must contain the "
    "following parameter: 'client_assertion' or 'client_secret'."), NULL,
    MAILOAUTH_OAUTH_CONFIG, 7000218, "invalid_client" },
  { "70011 invalid scope", MAILOAUTH_OAUTH_REQ_REFRESH, 400,
    ENTRA("invalid_scope", 70011, "The provided value for the input parameter "
    "'scope' is not valid."), NULL, MAILOAUTH_OAUTH_CONFIG, 70011,
    "invalid_scope" },
  { "28000 mixed resources", MAILOAUTH_OAUTH_REQ_REFRESH, 400,
    ENTRA("invalid_scope", 28000, "Provided value for the input parameter "
    "scope is not valid because it contains more than one resource."), NULL,
    MAILOAUTH_OAUTH_CONFIG, 28000, "invalid_scope" },
  { "90094 admin consent", MAILOAUTH_OAUTH_REQ_AUTH_CODE, 400,
    ENTRA("invalid_grant", 90094, "Admin consent is required for the "
    "permissions requested by this application."), NULL,
    MAILOAUTH_OAUTH_CONFIG, 90094, "invalid_grant" },
  { "Google invalid_client", MAILOAUTH_OAUTH_REQ_REFRESH, 401,
    "{\"error\":\"invalid_client\",\"error_description\":\"Unauthorized\"}",
    NULL, MAILOAUTH_OAUTH_CONFIG, 0, "invalid_client" },
  { "unauthorized_client, no code", MAILOAUTH_OAUTH_REQ_REFRESH, 400,
    "{\"error\":\"unauthorized_client\"}", NULL, MAILOAUTH_OAUTH_CONFIG, 0,
    "unauthorized_client" },
  { "invalid_scope, no code", MAILOAUTH_OAUTH_REQ_REFRESH, 400,
    "{\"error\":\"invalid_scope\"}", NULL, MAILOAUTH_OAUTH_CONFIG, 0,
    "invalid_scope" },
  { "unknown error string", MAILOAUTH_OAUTH_REQ_REFRESH, 400,
    "{\"error\":\"brand_new_error\"}", NULL, MAILOAUTH_OAUTH_CONFIG, 0,
    "brand_new_error" },
  { "client credentials invalid_grant", MAILOAUTH_OAUTH_REQ_CLIENT_CREDENTIALS,
    400, "{\"error\":\"invalid_grant\"}", NULL, MAILOAUTH_OAUTH_CONFIG, 0,
    "invalid_grant" },
  { "404 HTML (wrong tenant host)", MAILOAUTH_OAUTH_REQ_REFRESH, 404,
    "<html><body>Not Found</body></html>", NULL, MAILOAUTH_OAUTH_CONFIG, 0,
    NULL },
  { "407 proxy wants credentials", MAILOAUTH_OAUTH_REQ_REFRESH, 407,
    "Proxy Authentication Required", NULL, MAILOAUTH_OAUTH_CONFIG, 0, NULL },
  { "302 redirect not followed", MAILOAUTH_OAUTH_REQ_REFRESH, 302, "", NULL,
    MAILOAUTH_OAUTH_CONFIG, 0, NULL },
  { "description text is ignored", MAILOAUTH_OAUTH_REQ_REFRESH, 400,
    "{\"error\":\"invalid_client\",\"error_description\":\"AADSTS70008: "
    "refresh token has expired, temporarily_unavailable\"}", NULL,
    MAILOAUTH_OAUTH_CONFIG, 0, "invalid_client" },

  /* Retry later. */
  { "500 Entra server error", MAILOAUTH_OAUTH_REQ_REFRESH, 500,
    ENTRA("server_error", 90033, "A transient error has occurred. Please try "
    "again."), NULL, MAILOAUTH_OAUTH_TRANSIENT, 90033, "server_error" },
  { "503 HTML with Retry-After", MAILOAUTH_OAUTH_REQ_REFRESH, 503,
    "<html>Service Unavailable</html>", "30", MAILOAUTH_OAUTH_TRANSIENT, 0,
    NULL },
  { "429 throttled", MAILOAUTH_OAUTH_REQ_REFRESH, 429,
    "{\"error\":\"invalid_request\",\"error_description\":\"too many\"}",
    "120", MAILOAUTH_OAUTH_TRANSIENT, 0, "invalid_request" },
  { "500 with invalid_grant still transient", MAILOAUTH_OAUTH_REQ_REFRESH,
    500, "{\"error\":\"invalid_grant\"}", NULL, MAILOAUTH_OAUTH_TRANSIENT, 0,
    "invalid_grant" },
  { "temporarily_unavailable", MAILOAUTH_OAUTH_REQ_REFRESH, 400,
    "{\"error\":\"temporarily_unavailable\"}", NULL,
    MAILOAUTH_OAUTH_TRANSIENT, 0, "temporarily_unavailable" },
  { "server_error 400", MAILOAUTH_OAUTH_REQ_REFRESH, 400,
    "{\"error\":\"server_error\"}", NULL, MAILOAUTH_OAUTH_TRANSIENT, 0,
    "server_error" },
  { "50196 loop detected", MAILOAUTH_OAUTH_REQ_REFRESH, 400,
    ENTRA("invalid_request", 50196, "The server terminated an operation "
    "because it encountered a client request loop."), NULL,
    MAILOAUTH_OAUTH_TRANSIENT, 50196, "invalid_request" },
  { "200 not JSON", MAILOAUTH_OAUTH_REQ_REFRESH, 200,
    "<html>captive portal</html>", NULL, MAILOAUTH_OAUTH_TRANSIENT, 0, NULL },
  { "200 truncated JSON", MAILOAUTH_OAUTH_REQ_REFRESH, 200,
    "{\"token_type\":\"Bearer\",\"scope\":\"x\",\"expires_in\":3599,"
    "\"access_token\":\"" SECRET_ACCESS, NULL, MAILOAUTH_OAUTH_TRANSIENT, 0,
    NULL },
  { "200 empty body", MAILOAUTH_OAUTH_REQ_REFRESH, 200, "", NULL,
    MAILOAUTH_OAUTH_TRANSIENT, 0, NULL },
  { "200 JSON array", MAILOAUTH_OAUTH_REQ_REFRESH, 200, "[1,2]", NULL,
    MAILOAUTH_OAUTH_TRANSIENT, 0, NULL },
  { "200 without access_token", MAILOAUTH_OAUTH_REQ_REFRESH, 200,
    "{\"token_type\":\"Bearer\",\"expires_in\":3599}", NULL,
    MAILOAUTH_OAUTH_TRANSIENT, 0, NULL },
  { "200 duplicate keys", MAILOAUTH_OAUTH_REQ_REFRESH, 200,
    "{\"access_token\":\"a\",\"access_token\":\"b\"}", NULL,
    MAILOAUTH_OAUTH_TRANSIENT, 0, NULL },
  { "502 truncated JSON", MAILOAUTH_OAUTH_REQ_REFRESH, 502,
    "{\"error\":\"server_err", NULL, MAILOAUTH_OAUTH_TRANSIENT, 0, NULL },
  { "408 timeout", MAILOAUTH_OAUTH_REQ_REFRESH, 408, "", NULL,
    MAILOAUTH_OAUTH_TRANSIENT, 0, NULL },

  /* Device code polling. */
  { "Entra authorization_pending", MAILOAUTH_OAUTH_REQ_DEVICE_POLL, 400,
    ENTRA("authorization_pending", 70016, "OAuth 2.0 device flow error. "
    "Authorization is pending. Continue polling."), NULL,
    MAILOAUTH_OAUTH_PENDING, 70016, "authorization_pending" },
  { "Google authorization_pending 428", MAILOAUTH_OAUTH_REQ_DEVICE_POLL, 428,
    "{\"error\":\"authorization_pending\",\"error_description\":\"Precondition "
    "Required\"}", NULL, MAILOAUTH_OAUTH_PENDING, 0,
    "authorization_pending" },
  { "slow_down 400", MAILOAUTH_OAUTH_REQ_DEVICE_POLL, 400,
    "{\"error\":\"slow_down\"}", NULL, MAILOAUTH_OAUTH_SLOW_DOWN, 0,
    "slow_down" },
  { "Google slow_down 429", MAILOAUTH_OAUTH_REQ_DEVICE_POLL, 429,
    "{\"error\":\"slow_down\",\"error_description\":\"Forbidden\"}", NULL,
    MAILOAUTH_OAUTH_SLOW_DOWN, 0, "slow_down" },
  { "Entra authorization_declined", MAILOAUTH_OAUTH_REQ_DEVICE_POLL, 400,
    ENTRA("authorization_declined", 70019, "The end user denied the "
    "authorization request."), NULL, MAILOAUTH_OAUTH_DECLINED, 70019,
    "authorization_declined" },
  { "Google access_denied", MAILOAUTH_OAUTH_REQ_DEVICE_POLL, 403,
    "{\"error\":\"access_denied\",\"error_description\":\"Forbidden\"}", NULL,
    MAILOAUTH_OAUTH_DECLINED, 0, "access_denied" },
  { "Entra expired_token", MAILOAUTH_OAUTH_REQ_DEVICE_POLL, 400,
    ENTRA("expired_token", 70019, "Verification code expired."), NULL,
    MAILOAUTH_OAUTH_EXPIRED, 70019, "expired_token" },
  { "code_expired", MAILOAUTH_OAUTH_REQ_DEVICE_POLL, 400,
    "{\"error\":\"code_expired\"}", NULL, MAILOAUTH_OAUTH_EXPIRED, 0,
    "code_expired" },
  { "bad_verification_code", MAILOAUTH_OAUTH_REQ_DEVICE_POLL, 400,
    "{\"error\":\"bad_verification_code\"}", NULL, MAILOAUTH_OAUTH_CONFIG, 0,
    "bad_verification_code" }
};

START_TEST(test_classification_table) {
  struct mailoauth_oauth_response resp = { 0 };
  const struct class_case *c = &class_cases[_i];
  char line[2048];
  int res;

  res = mailoauth_oauth_parse_response(c->kind, c->status, c->body,
    strlen(c->body), c->retry_after, NOW, &resp);

  ck_assert_msg(resp.oauth_class == c->expected, "%s: class %s, expected %s",
    c->name, mailoauth_oauth_class_name(resp.oauth_class),
    mailoauth_oauth_class_name(c->expected));
  ck_assert_int_eq(res, -1);
  ck_assert(errno == EAGAIN || errno == EPROTO);
  ck_assert_int_eq(errno, c->expected == MAILOAUTH_OAUTH_TRANSIENT ||
    c->expected == MAILOAUTH_OAUTH_PENDING ||
    c->expected == MAILOAUTH_OAUTH_SLOW_DOWN ? EAGAIN : EPROTO);
  ck_assert_int_eq(resp.http_status, c->status);
  ck_assert_msg(resp.error_code == c->code, "%s: code %ld", c->name,
    resp.error_code);

  if (c->error != NULL) {
    ck_assert_ptr_nonnull(resp.error);
    ck_assert_str_eq(resp.error, c->error);

  } else {
    ck_assert_ptr_null(resp.error);
    ck_assert_msg(resp.detail[0] != '\0', "%s: no detail", c->name);
  }

  if (c->retry_after != NULL) {
    ck_assert_int_eq(resp.retry_after, atol(c->retry_after));

  } else {
    ck_assert_int_eq(resp.retry_after, -1);
  }

  ck_assert_ptr_null(resp.access_token);

  /* Every outcome formats to one line without secrets. */
  ck_assert_int_gt(mailoauth_oauth_format_error(&resp, "ftpmailoauth login x",
    line, sizeof(line)), 0);
  ck_assert_ptr_null(strchr(line, '\n'));
  ck_assert_ptr_null(strchr(line, '\r'));
  ck_assert_int_eq(strncmp(line, mailoauth_oauth_class_name(c->expected),
    strlen(mailoauth_oauth_class_name(c->expected))), 0);
  assert_no_secret_in(c->name, line);
  assert_no_secret_in(c->name, resp.detail);

  mailoauth_oauth_response_clear(&resp);
  assert_no_secret_in_traces();
}
END_TEST

START_TEST(test_classify_direct) {
  /* Transfer failures. */
  ck_assert_int_eq(mailoauth_oauth_classify(MAILOAUTH_OAUTH_REQ_REFRESH, 0,
    CURLE_COULDNT_CONNECT, NULL, 0), MAILOAUTH_OAUTH_TRANSIENT);
  ck_assert_int_eq(mailoauth_oauth_classify(MAILOAUTH_OAUTH_REQ_REFRESH, 0,
    CURLE_COULDNT_RESOLVE_HOST, NULL, 0), MAILOAUTH_OAUTH_TRANSIENT);
  ck_assert_int_eq(mailoauth_oauth_classify(MAILOAUTH_OAUTH_REQ_REFRESH, 0,
    CURLE_OPERATION_TIMEDOUT, NULL, 0), MAILOAUTH_OAUTH_TRANSIENT);
  ck_assert_int_eq(mailoauth_oauth_classify(MAILOAUTH_OAUTH_REQ_REFRESH, 200,
    CURLE_PARTIAL_FILE, NULL, 0), MAILOAUTH_OAUTH_TRANSIENT);
  ck_assert_int_eq(mailoauth_oauth_classify(MAILOAUTH_OAUTH_REQ_REFRESH, 0,
    CURLE_SSL_CONNECT_ERROR, NULL, 0), MAILOAUTH_OAUTH_TRANSIENT);
  ck_assert_int_eq(mailoauth_oauth_classify(MAILOAUTH_OAUTH_REQ_REFRESH, 0,
    CURLE_PEER_FAILED_VERIFICATION, NULL, 0), MAILOAUTH_OAUTH_CONFIG);
  ck_assert_int_eq(mailoauth_oauth_classify(MAILOAUTH_OAUTH_REQ_REFRESH, 0,
    CURLE_SSL_CACERT_BADFILE, NULL, 0), MAILOAUTH_OAUTH_CONFIG);
  ck_assert_int_eq(mailoauth_oauth_classify(MAILOAUTH_OAUTH_REQ_REFRESH, 0,
    CURLE_UNSUPPORTED_PROTOCOL, NULL, 0), MAILOAUTH_OAUTH_CONFIG);

  /* The code outranks the error, the device words outrank the status. */
  ck_assert_int_eq(mailoauth_oauth_classify(MAILOAUTH_OAUTH_REQ_REFRESH, 400,
    0, "invalid_grant", 7000215), MAILOAUTH_OAUTH_CONFIG);
  ck_assert_int_eq(mailoauth_oauth_classify(MAILOAUTH_OAUTH_REQ_DEVICE_POLL,
    429, 0, "slow_down", 0), MAILOAUTH_OAUTH_SLOW_DOWN);
  ck_assert_int_eq(mailoauth_oauth_classify(MAILOAUTH_OAUTH_REQ_REFRESH, 503,
    0, "invalid_client", 7000215), MAILOAUTH_OAUTH_TRANSIENT);
  ck_assert_int_eq(mailoauth_oauth_classify(
    MAILOAUTH_OAUTH_REQ_CLIENT_CREDENTIALS, 400, 0, "invalid_grant", 70008),
    MAILOAUTH_OAUTH_CONFIG);
  ck_assert_int_eq(mailoauth_oauth_classify(MAILOAUTH_OAUTH_REQ_REFRESH, 0,
    0, NULL, 0), MAILOAUTH_OAUTH_TRANSIENT);
}
END_TEST

START_TEST(test_aadsts_table) {
  static const struct {
    long code;
    mailoauth_oauth_class_t cls;
  } known[] = {
    { 70008, MAILOAUTH_OAUTH_REAUTH }, { 700082, MAILOAUTH_OAUTH_REAUTH },
    { 70043, MAILOAUTH_OAUTH_REAUTH }, { 50076, MAILOAUTH_OAUTH_REAUTH },
    { 50079, MAILOAUTH_OAUTH_REAUTH }, { 50173, MAILOAUTH_OAUTH_REAUTH },
    { 65001, MAILOAUTH_OAUTH_REAUTH }, { 50126, MAILOAUTH_OAUTH_REAUTH },
    { 70000, MAILOAUTH_OAUTH_REAUTH }, { 700084, MAILOAUTH_OAUTH_REAUTH },
    { 7000215, MAILOAUTH_OAUTH_CONFIG }, { 7000222, MAILOAUTH_OAUTH_CONFIG },
    { 700016, MAILOAUTH_OAUTH_CONFIG }, { 50194, MAILOAUTH_OAUTH_CONFIG },
    { 9001023, MAILOAUTH_OAUTH_CONFIG }, { 50011, MAILOAUTH_OAUTH_CONFIG },
    { 7000218, MAILOAUTH_OAUTH_CONFIG }, { 70011, MAILOAUTH_OAUTH_CONFIG },
    { 28000, MAILOAUTH_OAUTH_CONFIG }, { 90094, MAILOAUTH_OAUTH_CONFIG },
    { 70016, MAILOAUTH_OAUTH_PENDING }, { 70019, MAILOAUTH_OAUTH_EXPIRED },
    { 90033, MAILOAUTH_OAUTH_TRANSIENT }
  };
  const struct mailoauth_oauth_aadsts *e;
  unsigned int i;
  long last = 0, code;

  for (i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
    e = mailoauth_oauth_aadsts_lookup(known[i].code);
    ck_assert_msg(e != NULL, "AADSTS%ld missing", known[i].code);
    ck_assert_int_eq(e->code, known[i].code);
    ck_assert_msg(e->oauth_class == known[i].cls, "AADSTS%ld class %s",
      known[i].code, mailoauth_oauth_class_name(e->oauth_class));
    ck_assert(e->meaning != NULL && e->meaning[0] != '\0');
    ck_assert(e->remedy != NULL && e->remedy[0] != '\0');
    if (e->oauth_class == MAILOAUTH_OAUTH_REAUTH) {
      ck_assert_msg(strstr(e->remedy, "{cmd}") != NULL,
        "AADSTS%ld remedy lacks the sign-in command", e->code);
    }
  }

  /* The binary search finds every entry: walk all codes it knows. */
  for (code = 1; code < 10000000; code++) {
    e = mailoauth_oauth_aadsts_lookup(code);
    if (e != NULL) {
      ck_assert_int_gt(e->code, last);
      last = e->code;
    }
  }
  ck_assert_int_eq(last, 9002326);

  ck_assert_ptr_null(mailoauth_oauth_aadsts_lookup(0));
  ck_assert_ptr_null(mailoauth_oauth_aadsts_lookup(-70008));
  ck_assert_ptr_null(mailoauth_oauth_aadsts_lookup(12345));
}
END_TEST

/* ------------------------------------------------------------------------
 * Successful responses.
 */

START_TEST(test_parse_success) {
  struct mailoauth_oauth_response resp = { 0 };
  char *idt, body[4096];

  idt = make_id_token("{\"aud\":\"11111111-2222-3333-4444-555555555555\","
    "\"iss\":\"https://login.microsoftonline.com/9188040d/v2.0\","
    "\"name\":\"FTP Alerts\",\"oid\":\"00000000-0000-0000-66f3-3332eca7ea81\","
    "\"preferred_username\":\"ftp-alerts@contoso.com\","
    "\"email\":\"alerts@contoso.com\","
    "\"tid\":\"9188040d-6c67-4c5b-b112-36a304b66dad\",\"ver\":\"2.0\"}");
  snprintf(body, sizeof(body), "{\"token_type\":\"Bearer\",\"scope\":"
    "\"https://outlook.office.com/IMAP.AccessAsUser.All "
    "https://outlook.office.com/SMTP.Send\",\"expires_in\":3599,"
    "\"ext_expires_in\":3599,\"access_token\":\"" SECRET_ACCESS "\","
    "\"refresh_token\":\"" SECRET_REFRESH2 "\",\"id_token\":\"%s\"}", idt);
  free(idt);

  ck_assert_int_eq(mailoauth_oauth_parse_response(MAILOAUTH_OAUTH_REQ_REFRESH,
    200, body, strlen(body), NULL, NOW, &resp), 0);
  ck_assert_int_eq(resp.oauth_class, MAILOAUTH_OAUTH_OK);
  ck_assert_str_eq(resp.access_token, SECRET_ACCESS);
  ck_assert_str_eq(resp.refresh_token, SECRET_REFRESH2);
  ck_assert_str_eq(resp.token_type, "Bearer");
  ck_assert_int_eq(resp.expires_in, 3599);
  ck_assert_int_eq(resp.expires_at, NOW + 3599);
  ck_assert_str_eq(resp.scope, "https://outlook.office.com/IMAP.AccessAsUser.All "
    "https://outlook.office.com/SMTP.Send");
  ck_assert_str_eq(resp.identity.username, "ftp-alerts@contoso.com");
  ck_assert_str_eq(resp.identity.email, "alerts@contoso.com");
  ck_assert_str_eq(resp.identity.name, "FTP Alerts");
  ck_assert_str_eq(resp.identity.tenant, "9188040d-6c67-4c5b-b112-36a304b66dad");
  ck_assert_str_eq(resp.identity.oid, "00000000-0000-0000-66f3-3332eca7ea81");
  ck_assert_ptr_null(resp.error);

  /* Reusing the response clears the previous one; no rotation here. */
  snprintf(body, sizeof(body), "{\"token_type\":\"Bearer\",\"expires_in\":"
    "\"3600\",\"access_token\":\"" SECRET_ACCESS "\",\"refresh_token\":\"\"}");
  ck_assert_int_eq(mailoauth_oauth_parse_response(MAILOAUTH_OAUTH_REQ_REFRESH,
    200, body, strlen(body), NULL, NOW, &resp), 0);
  ck_assert_ptr_null(resp.refresh_token);
  ck_assert_ptr_null(resp.scope);
  ck_assert_ptr_null(resp.identity.username);
  ck_assert_int_eq(resp.expires_in, 3600);
  ck_assert_int_eq(resp.expires_at, NOW + 3600);

  /* No expires_in: unknown, not invented. */
  snprintf(body, sizeof(body), "{\"access_token\":\"" SECRET_ACCESS "\"}");
  ck_assert_int_eq(mailoauth_oauth_parse_response(
    MAILOAUTH_OAUTH_REQ_CLIENT_CREDENTIALS, 200, body, strlen(body), NULL, NOW,
    &resp), 0);
  ck_assert_int_eq(resp.expires_in, 0);
  ck_assert_int_eq(resp.expires_at, 0);

  /* An unreadable id_token does not fail the refresh. */
  snprintf(body, sizeof(body), "{\"access_token\":\"" SECRET_ACCESS "\","
    "\"expires_in\":60,\"id_token\":\"not-a-jwt\"}");
  ck_assert_int_eq(mailoauth_oauth_parse_response(MAILOAUTH_OAUTH_REQ_AUTH_CODE,
    200, body, strlen(body), NULL, NOW, &resp), 0);
  ck_assert_ptr_null(resp.identity.username);

  mailoauth_oauth_response_clear(&resp);
  ck_assert_ptr_null(resp.access_token);
  ck_assert_int_eq(resp.retry_after, -1);
  assert_no_secret_in_traces();
}
END_TEST

START_TEST(test_id_token_claims) {
  struct mailoauth_oauth_identity id = { 0 };
  char *t;

  /* upn when there is no preferred_username (v1-style tokens). */
  t = make_id_token("{\"upn\":\"bob@contoso.com\",\"tid\":\"t1\",\"oid\":\"o1\"}");
  ck_assert_int_eq(mailoauth_oauth_decode_id_token(t, &id), 0);
  ck_assert_str_eq(id.username, "bob@contoso.com");
  ck_assert_str_eq(id.tenant, "t1");
  free(t);

  /* Google: email, hd, sub. */
  t = make_id_token("{\"iss\":\"https://accounts.google.com\",\"sub\":"
    "\"110169484474386276334\",\"email\":\"ops@example.org\",\"hd\":"
    "\"example.org\",\"name\":\"Ops \\u00e9quipe\"}");
  ck_assert_int_eq(mailoauth_oauth_decode_id_token(t, &id), 0);
  ck_assert_str_eq(id.username, "ops@example.org");
  ck_assert_str_eq(id.tenant, "example.org");
  ck_assert_str_eq(id.oid, "110169484474386276334");
  ck_assert_str_eq(id.name, "Ops \xc3\xa9quipe");
  free(t);

  ck_assert_int_eq(mailoauth_oauth_decode_id_token("abc", &id), -1);
  ck_assert_int_eq(errno, EINVAL);
  ck_assert_int_eq(mailoauth_oauth_decode_id_token("a.b!c.d", &id), -1);
  ck_assert_int_eq(mailoauth_oauth_decode_id_token("a.Zm9v.d", &id), -1);
  ck_assert_int_eq(mailoauth_oauth_decode_id_token("a.W10.d", &id), -1);
  ck_assert_int_eq(mailoauth_oauth_decode_id_token("a.A.d", &id), -1);
  ck_assert_ptr_null(id.username);
  mailoauth_oauth_identity_clear(&id);
}
END_TEST

START_TEST(test_parse_device_start) {
  struct mailoauth_oauth_response resp = { 0 };
  const char *ms = "{\"user_code\":\"F3QXKZ4PL\",\"device_code\":\""
    SECRET_DEVICE "\",\"verification_uri\":"
    "\"https://microsoft.com/devicelogin\",\"expires_in\":900,\"interval\":5,"
    "\"message\":\"To sign in, use a web browser to open the page "
    "https://microsoft.com/devicelogin and enter the code F3QXKZ4PL to "
    "authenticate.\"}";
  const char *google = "{\"device_code\":\"" SECRET_DEVICE "\",\"user_code\":"
    "\"GQVQ-JKEC\",\"verification_url\":\"https://www.google.com/device\","
    "\"expires_in\":1800}";

  ck_assert_int_eq(mailoauth_oauth_parse_response(
    MAILOAUTH_OAUTH_REQ_DEVICE_START, 200, ms, strlen(ms), NULL, NOW, &resp),
    0);
  ck_assert_str_eq(resp.device_code, SECRET_DEVICE);
  ck_assert_str_eq(resp.user_code, "F3QXKZ4PL");
  ck_assert_str_eq(resp.verification_uri, "https://microsoft.com/devicelogin");
  ck_assert_int_eq(resp.interval, 5);
  ck_assert_int_eq(resp.expires_at, NOW + 900);
  ck_assert_ptr_nonnull(strstr(resp.message, "F3QXKZ4PL"));

  ck_assert_int_eq(mailoauth_oauth_parse_response(
    MAILOAUTH_OAUTH_REQ_DEVICE_START, 200, google, strlen(google), NULL, NOW,
    &resp), 0);
  ck_assert_str_eq(resp.verification_uri, "https://www.google.com/device");
  ck_assert_int_eq(resp.interval, 5);
  ck_assert_ptr_null(resp.message);

  ck_assert_int_eq(mailoauth_oauth_parse_response(
    MAILOAUTH_OAUTH_REQ_DEVICE_START, 200, "{\"user_code\":\"x\"}", 18, NULL,
    NOW, &resp), -1);
  ck_assert_int_eq(resp.oauth_class, MAILOAUTH_OAUTH_TRANSIENT);
  mailoauth_oauth_response_clear(&resp);
  assert_no_secret_in_traces();
}
END_TEST

/* ------------------------------------------------------------------------
 * Error details and the log line.
 */

START_TEST(test_error_fields) {
  struct mailoauth_oauth_response resp = { 0 };
  const char *body = ENTRA("invalid_grant", 70008, "The provided "
    "authorization code or refresh token has expired due to inactivity.");
  char longdesc[3000], longbody[3200];

  ck_assert_int_eq(mailoauth_oauth_parse_response(MAILOAUTH_OAUTH_REQ_REFRESH,
    400, body, strlen(body), NULL, NOW, &resp), -1);
  ck_assert_str_eq(resp.trace_id, "0d7c5e3a-1b2c-4d5e-8f90-a1b2c3d4e500");
  ck_assert_str_eq(resp.correlation_id, "5f0e9a8b-7c6d-4e3f-a2b1-c0d9e8f7a600");
  ck_assert_int_eq(resp.error_code, 70008);
  ck_assert_ptr_null(strchr(resp.error_description, '\r'));
  ck_assert_ptr_null(strchr(resp.error_description, '\n'));
  ck_assert_int_eq(strncmp(resp.error_description, "AADSTS70008: The provided",
    25), 0);
  ck_assert_ptr_nonnull(strstr(resp.error_description,
    "inactivity. Trace ID: 0d7c5e3a"));

  /* Long descriptions are capped. */
  memset(longdesc, 'x', sizeof(longdesc) - 1);
  longdesc[sizeof(longdesc) - 1] = '\0';
  snprintf(longbody, sizeof(longbody), "{\"error\":\"invalid_request\","
    "\"error_description\":\"%s\"}", longdesc);
  ck_assert_int_eq(mailoauth_oauth_parse_response(MAILOAUTH_OAUTH_REQ_REFRESH,
    400, longbody, strlen(longbody), NULL, NOW, &resp), -1);
  ck_assert_uint_le(strlen(resp.error_description), 303);
  ck_assert_ptr_nonnull(strstr(resp.error_description, "..."));

  /* Capped on a character boundary: no half UTF-8 sequence at the end. */
  {
    size_t i, len;

    longdesc[0] = '\0';
    for (i = 0; i < 400; i++) {
      strcat(longdesc, "\xc3\xa9");
    }
    snprintf(longbody, sizeof(longbody), "{\"error\":\"invalid_request\","
      "\"error_description\":\"%s\"}", longdesc);
    ck_assert_int_eq(mailoauth_oauth_parse_response(
      MAILOAUTH_OAUTH_REQ_REFRESH, 400, longbody, strlen(longbody), NULL, NOW,
      &resp), -1);
    len = strlen(resp.error_description);
    ck_assert_uint_ge(len, 200);
    ck_assert_str_eq(resp.error_description + len - 5, "\xc3\xa9...");
    for (i = 0; i + 3 < len; i += 2) {
      ck_assert_int_eq((unsigned char) resp.error_description[i], 0xc3);
      ck_assert_int_eq((unsigned char) resp.error_description[i + 1], 0xa9);
    }
  }

  /* Invalid arguments. */
  ck_assert_int_eq(mailoauth_oauth_parse_response(MAILOAUTH_OAUTH_REQ_REFRESH,
    400, NULL, 5, NULL, NOW, &resp), -1);
  ck_assert_int_eq(errno, EINVAL);
  ck_assert_int_eq(mailoauth_oauth_parse_response(MAILOAUTH_OAUTH_REQ_REFRESH,
    400, body, strlen(body), NULL, NOW, NULL), -1);

  mailoauth_oauth_response_clear(&resp);
}
END_TEST

START_TEST(test_format_error) {
  struct mailoauth_oauth_response resp = { 0 };
  const char *body;
  char line[2048];

  body = ENTRA("invalid_grant", 70008, "The provided authorization code or "
    "refresh token has expired due to inactivity.");
  mailoauth_oauth_parse_response(MAILOAUTH_OAUTH_REQ_REFRESH, 400, body,
    strlen(body), NULL, NOW, &resp);
  mailoauth_oauth_format_error(&resp, "ftpmailoauth login sales", line,
    sizeof(line));
  {
    const char *expect = "reauth: the refresh token expired after 90 days "
      "unused or was revoked [AADSTS70008 invalid_grant, HTTP 400]; remedy: "
      "sign in again: ftpmailoauth login sales; server said: \"AADSTS70008: "
      "The provided authorization code or refresh token has expired due to "
      "inactivity. Trace ID: 0d7c5e3a-1b2c-4d5e-8f90-a1b2c3d4e500 Correlation "
      "ID: 5f0e9a8b-7c6d-4e3f-a2b1-c0d9e8f7a600 Timestamp: 2026-11-28 "
      "10:00:00Z\"";

    ck_assert_int_eq(strncmp(line, expect, strlen(expect)), 0);
  }
  ck_assert_ptr_nonnull(strstr(line, "; trace_id=0d7c5e3a-1b2c-4d5e-8f90-"
    "a1b2c3d4e500 correlation_id=5f0e9a8b-7c6d-4e3f-a2b1-c0d9e8f7a600"));

  /* Without a command the remedy still reads. */
  mailoauth_oauth_format_error(&resp, NULL, line, sizeof(line));
  ck_assert_ptr_nonnull(strstr(line, "sign in again: the sign-in command"));

  body = ENTRA("invalid_client", 7000215, "Invalid client secret provided.");
  mailoauth_oauth_parse_response(MAILOAUTH_OAUTH_REQ_REFRESH, 401, body,
    strlen(body), NULL, NOW, &resp);
  mailoauth_oauth_format_error(&resp, "x", line, sizeof(line));
  ck_assert_ptr_nonnull(strstr(line, "config: the client secret is wrong "
    "[AADSTS7000215 invalid_client, HTTP 401]; remedy: paste the secret's "
    "Value, not its Secret ID"));

  /* Google: the error's own entry. */
  body = "{\"error\":\"invalid_grant\",\"error_description\":\"Token has been "
    "expired or revoked.\"}";
  mailoauth_oauth_parse_response(MAILOAUTH_OAUTH_REQ_REFRESH, 400, body,
    strlen(body), NULL, NOW, &resp);
  mailoauth_oauth_format_error(&resp, "cmd", line, sizeof(line));
  ck_assert_str_eq(line, "reauth: the refresh token or code is expired, "
    "revoked or invalid [invalid_grant, HTTP 400]; remedy: sign in again: cmd; "
    "server said: \"Token has been expired or revoked.\"");

  /* A server that is down. */
  mailoauth_oauth_parse_response(MAILOAUTH_OAUTH_REQ_REFRESH, 503,
    "<html>", 6, "17", NOW, &resp);
  mailoauth_oauth_format_error(&resp, "cmd", line, sizeof(line));
  ck_assert_int_eq(strncmp(line, "transient: the token endpoint is unreachable "
    "or failing [HTTP 503]; remedy: nothing to do", 88), 0);

  /* Starting a device-code sign-in talks to the device-code endpoint: the
   * words name that one, never the token endpoint.
   */
  body = "{\"error\":\"unauthorized_request\"}";
  mailoauth_oauth_parse_response(MAILOAUTH_OAUTH_REQ_DEVICE_START, 400,
    body, strlen(body), NULL, NOW, &resp);
  mailoauth_oauth_format_error(&resp, "cmd", line, sizeof(line));
  ck_assert_msg(strncmp(line, "config: the device-code endpoint refused the "
    "request [unauthorized_request, HTTP 400]", 80) == 0, "%s", line);
  ck_assert_ptr_null(strstr(line, "token endpoint"));
  body = "{\"error\":\"invalid_request\"}";
  mailoauth_oauth_parse_response(MAILOAUTH_OAUTH_REQ_DEVICE_START, 400,
    body, strlen(body), NULL, NOW, &resp);
  mailoauth_oauth_format_error(&resp, "cmd", line, sizeof(line));
  ck_assert_msg(strstr(line, "the device-code endpoint refused the request "
    "as malformed") != NULL, "%s", line);
  mailoauth_oauth_parse_response(MAILOAUTH_OAUTH_REQ_DEVICE_START, 502,
    "", 0, NULL, NOW, &resp);
  mailoauth_oauth_format_error(&resp, "cmd", line, sizeof(line));
  ck_assert_msg(strstr(line, "the device-code endpoint is unreachable or "
    "failing") != NULL && strstr(line, "the device-code endpoint answered "
    "HTTP 502 with an empty body") != NULL, "%s", line);
  ck_assert_ptr_null(strstr(line, "token endpoint"));
  mailoauth_oauth_parse_response(MAILOAUTH_OAUTH_REQ_DEVICE_POLL, 400,
    body, strlen(body), NULL, NOW, &resp);
  mailoauth_oauth_format_error(&resp, "cmd", line, sizeof(line));
  ck_assert_msg(strstr(line, "the token endpoint refused the request as "
    "malformed") != NULL, "%s", line);

  /* Truncation is safe. */
  mailoauth_oauth_parse_response(MAILOAUTH_OAUTH_REQ_REFRESH, 503,
    "<html>", 6, "17", NOW, &resp);
  ck_assert_int_gt(mailoauth_oauth_format_error(&resp, "cmd", line, 10), 10);
  ck_assert_uint_eq(strlen(line), 9);

  mailoauth_oauth_response_clear(&resp);
  ck_assert_int_eq(mailoauth_oauth_format_error(&resp, "cmd", line,
    sizeof(line)), 2);
  ck_assert_str_eq(line, "ok");
  ck_assert_int_eq(mailoauth_oauth_format_error(NULL, "cmd", line,
    sizeof(line)), -1);
}
END_TEST

START_TEST(test_malformed_bodies_quote_nothing) {
  static const char *bodies[] = {
    "{\"access_token\":\"" SECRET_ACCESS,
    "{\"access_token\":\"" SECRET_ACCESS "\",\"refresh_token\":\""
      SECRET_REFRESH "\"",
    "{\"access_token\": " SECRET_ACCESS "}",
    SECRET_REFRESH,
    "{\"refresh_token\":\"" SECRET_REFRESH "\" \"x\"}",
    "\xff\xfe{\"access_token\":\"" SECRET_ACCESS "\"}"
  };
  struct mailoauth_oauth_response resp = { 0 };
  unsigned int i;
  char line[2048];

  for (i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
    ck_assert_int_eq(mailoauth_oauth_parse_response(
      MAILOAUTH_OAUTH_REQ_REFRESH, 200, bodies[i], strlen(bodies[i]), NULL,
      NOW, &resp), -1);
    ck_assert_int_eq(resp.oauth_class, MAILOAUTH_OAUTH_TRANSIENT);
    ck_assert_ptr_null(resp.access_token);
    mailoauth_oauth_format_error(&resp, "cmd", line, sizeof(line));
    assert_no_secret_in("malformed body detail", resp.detail);
    assert_no_secret_in("malformed body line", line);
  }

  mailoauth_oauth_response_clear(&resp);
  assert_no_secret_in_traces();
}
END_TEST

START_TEST(test_wipe_json_memory) {
  json_malloc_t m = NULL;
  json_free_t f = NULL;
  json_t *j;

  /* main() installed it; a second call is harmless. */
  ck_assert_int_eq(mailoauth_oauth_wipe_json_memory(), 0);
  json_get_alloc_funcs(&m, &f);
  ck_assert_ptr_nonnull(m);
  ck_assert(m != (json_malloc_t) malloc);
  ck_assert(f != (json_free_t) free);

  /* jansson works through it. */
  j = json_pack("{s:s, s:i}", "access_token", SECRET_ACCESS, "n", 3);
  ck_assert_ptr_nonnull(j);
  ck_assert_str_eq(json_string_value(json_object_get(j, "access_token")),
    SECRET_ACCESS);
  json_decref(j);
}
END_TEST

/* ------------------------------------------------------------------------
 * A token endpoint for the request paths: a child process serving canned
 * HTTPS answers on 127.0.0.1 with a throwaway self-signed certificate.
 */

struct canned {
  int status;
  const char *headers;     /* extra header lines, each ending in \r\n */
  const char *body;
  int close;               /* close the connection after answering */
  int delay_ms;            /* wait before answering */
  long claim_len;          /* Content-Length to announce; -1: the real one */
  size_t repeat_body;      /* answer with this many bytes of 'x' instead */
};

struct server {
  pid_t pid;
  int port;
  int log_fd;
  char ca_file[64];
  EVP_PKEY *key;
  X509 *cert;
};

static void srv_make_cert(struct server *srv) {
  X509V3_CTX v3;
  X509_EXTENSION *ext;
  X509_NAME *name;
  FILE *fh;
  int fd;

  srv->key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
  ck_assert_ptr_nonnull(srv->key);

  srv->cert = X509_new();
  X509_set_version(srv->cert, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(srv->cert), 1);
  X509_gmtime_adj(X509_getm_notBefore(srv->cert), -3600);
  X509_gmtime_adj(X509_getm_notAfter(srv->cert), 86400);
  X509_set_pubkey(srv->cert, srv->key);

  name = X509_get_subject_name(srv->cert);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
    (const unsigned char *) "mod_mailoauth unit test", -1, -1, 0);
  X509_set_issuer_name(srv->cert, name);

  X509V3_set_ctx_nodb(&v3);
  X509V3_set_ctx(&v3, srv->cert, srv->cert, NULL, NULL, 0);
  ext = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, "IP:127.0.0.1");
  X509_add_ext(srv->cert, ext, -1);
  X509_EXTENSION_free(ext);
  ext = X509V3_EXT_conf_nid(NULL, &v3, NID_basic_constraints,
    "critical,CA:TRUE");
  X509_add_ext(srv->cert, ext, -1);
  X509_EXTENSION_free(ext);
  ck_assert_int_gt(X509_sign(srv->cert, srv->key, EVP_sha256()), 0);

  strcpy(srv->ca_file, "/tmp/mailoauth-test-ca-XXXXXX");
  fd = mkstemp(srv->ca_file);
  ck_assert_int_ge(fd, 0);
  fh = fdopen(fd, "w");
  PEM_write_X509(fh, srv->cert);
  fclose(fh);
}

/* Read one request; 0 at EOF, 1 when one was read. */
static int srv_read_request(SSL *ssl, char *buf, size_t size, char **body) {
  size_t n = 0, need = 0;
  char *hdr_end = NULL;

  for (;;) {
    int r;

    if (hdr_end != NULL && n >= need) {
      buf[n] = '\0';
      *body = hdr_end + 4;
      return 1;
    }

    r = SSL_read(ssl, buf + n, (int) (size - n - 1));
    if (r <= 0) {
      return 0;
    }
    n += (size_t) r;
    buf[n] = '\0';

    if (hdr_end == NULL && (hdr_end = strstr(buf, "\r\n\r\n")) != NULL) {
      const char *cl = strcasestr(buf, "\r\nContent-Length:");
      size_t clen = cl != NULL ? (size_t) atol(cl + 17) : 0;

      need = (size_t) (hdr_end + 4 - buf) + clen;
      if (need >= size) {
        return 0;
      }
    }
  }
}

static void srv_answer(SSL *ssl, const struct canned *c) {
  char head[1024], *big = NULL;
  const char *body = c->body != NULL ? c->body : "";
  size_t blen = strlen(body);
  int n;

  if (c->repeat_body > 0) {
    big = malloc(c->repeat_body);
    memset(big, 'x', c->repeat_body);
    body = big;
    blen = c->repeat_body;
  }

  if (c->delay_ms > 0) {
    usleep((useconds_t) c->delay_ms * 1000);
  }

  n = snprintf(head, sizeof(head), "HTTP/1.1 %d Canned\r\nContent-Type: "
    "application/json; charset=utf-8\r\nContent-Length: %ld\r\n%s%s\r\n",
    c->status, c->claim_len >= 0 ? c->claim_len : (long) blen,
    c->headers != NULL ? c->headers : "", c->close ? "Connection: close\r\n" :
    "");
  SSL_write(ssl, head, n);
  if (blen > 0) {
    SSL_write(ssl, body, (int) blen);
  }
  free(big);
}

/* Child: answer n requests, log "conn=<k> <request line> | <body>". */
static void srv_child(struct server *srv, int lfd, int log_fd,
    const struct canned *script, size_t n) {
  SSL_CTX *sctx = SSL_CTX_new(TLS_server_method());
  static char buf[256 * 1024];
  size_t served = 0;
  int conn = 0;

  signal(SIGPIPE, SIG_IGN);
  SSL_CTX_use_certificate(sctx, srv->cert);
  SSL_CTX_use_PrivateKey(sctx, srv->key);

  while (served < n) {
    int cfd = accept(lfd, NULL, NULL);
    SSL *ssl;

    if (cfd < 0) {
      break;
    }
    conn++;

    ssl = SSL_new(sctx);
    SSL_set_fd(ssl, cfd);
    if (SSL_accept(ssl) == 1) {
      char *body;

      while (served < n && srv_read_request(ssl, buf, sizeof(buf), &body)) {
        char line[512];
        char *eol = strstr(buf, "\r\n");
        int len;

        len = snprintf(line, sizeof(line), "conn=%d %.*s | ", conn,
          (int) (eol - buf), buf);
        /* A short write only shortens the request log the test reads. */
        if (write(log_fd, line, (size_t) len) < 0 ||
            write(log_fd, body, strlen(body)) < 0 ||
            write(log_fd, "\n", 1) < 0) {
          break;
        }

        srv_answer(ssl, &script[served]);
        if (script[served++].close) {
          break;
        }
      }
      SSL_shutdown(ssl);
    }

    SSL_free(ssl);
    close(cfd);
  }

  _exit(0);
}

static void srv_start(struct server *srv, const struct canned *script,
    size_t n) {
  struct sockaddr_in sin;
  socklen_t slen = sizeof(sin);
  int lfd, pfd[2], one = 1;

  memset(srv, 0, sizeof(*srv));
  srv_make_cert(srv);

  lfd = socket(AF_INET, SOCK_STREAM, 0);
  ck_assert_int_ge(lfd, 0);
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  memset(&sin, 0, sizeof(sin));
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ck_assert_int_eq(bind(lfd, (struct sockaddr *) &sin, sizeof(sin)), 0);
  ck_assert_int_eq(listen(lfd, 8), 0);
  getsockname(lfd, (struct sockaddr *) &sin, &slen);
  srv->port = ntohs(sin.sin_port);

  ck_assert_int_eq(pipe(pfd), 0);
  srv->pid = fork();
  ck_assert_int_ge(srv->pid, 0);
  if (srv->pid == 0) {
    close(pfd[0]);
    srv_child(srv, lfd, pfd[1], script, n);
  }

  close(pfd[1]);
  close(lfd);
  srv->log_fd = pfd[0];
}

/* Stop the child (kill: it may still wait for requests that never come)
 * and return what it logged.
 */
static char *srv_stop(struct server *srv, int kill_it) {
  char *log = NULL;
  size_t len = 0;
  char buf[4096];
  ssize_t r;

  if (kill_it) {
    kill(srv->pid, SIGKILL);
  }

  while ((r = read(srv->log_fd, buf, sizeof(buf))) > 0) {
    log = realloc(log, len + (size_t) r + 1);
    memcpy(log + len, buf, (size_t) r);
    len += (size_t) r;
  }
  if (log == NULL) {
    log = calloc(1, 1);
  }
  log[len] = '\0';

  close(srv->log_fd);
  waitpid(srv->pid, NULL, 0);
  unlink(srv->ca_file);
  X509_free(srv->cert);
  EVP_PKEY_free(srv->key);
  return log;
}

static void srv_config(struct server *srv, struct mailoauth_oauth_config *cfg,
    char *authority, size_t authlen) {
  ms_config(cfg);
  snprintf(authority, authlen, "https://127.0.0.1:%d", srv->port);
  cfg->authority = authority;
  cfg->ca_file = srv->ca_file;
  cfg->proxy = "";              /* ignore any proxy in the environment */
  cfg->connect_timeout_ms = 5000;
  cfg->timeout_ms = 10000;
}

/* The n-th (0-based) logged request line. */
static char *log_line(const char *log, unsigned int n) {
  const char *p = log, *end;
  char *line;

  while (n-- > 0 && p != NULL) {
    p = strchr(p, '\n');
    p = p != NULL ? p + 1 : NULL;
  }
  ck_assert_ptr_nonnull(p);
  end = strchr(p, '\n');
  ck_assert_ptr_nonnull(end);

  line = strndup(p, (size_t) (end - p));
  return line;
}

static const char *form_of(const char *line) {
  const char *bar = strstr(line, " | ");

  ck_assert_ptr_nonnull(bar);
  return bar + 3;
}

START_TEST(test_request_refresh_rotation_and_reuse) {
  static const struct canned script[] = {
    { 200, NULL, "{\"token_type\":\"Bearer\",\"scope\":\"https://outlook."
      "office.com/SMTP.Send\",\"expires_in\":3599,\"access_token\":\""
      SECRET_ACCESS "\",\"refresh_token\":\"" SECRET_REFRESH2 "\"}", 0, 0, -1,
      0 },
    { 200, NULL, "{\"token_type\":\"Bearer\",\"expires_in\":3599,"
      "\"access_token\":\"" SECRET_ACCESS "\"}", 0, 0, -1, 0 }
  };
  struct mailoauth_oauth_response resp = { 0 };
  struct mailoauth_oauth_config cfg;
  struct mailoauth_oauth_ctx *ctx;
  struct server srv;
  char authority[64], err[256], *log, *l0, *l1, *v;

  srv_start(&srv, script, 2);
  srv_config(&srv, &cfg, authority, sizeof(authority));
  ctx = mailoauth_oauth_ctx_create(&cfg, err, sizeof(err));
  ck_assert_msg(ctx != NULL, "%s", err);

  ck_assert_int_eq(mailoauth_oauth_refresh(ctx, SECRET_REFRESH, NOW, &resp), 0);
  ck_assert_int_eq(resp.oauth_class, MAILOAUTH_OAUTH_OK);
  ck_assert_str_eq(resp.access_token, SECRET_ACCESS);
  ck_assert_str_eq(resp.refresh_token, SECRET_REFRESH2);
  ck_assert_int_eq(resp.expires_at, NOW + 3599);

  /* No rotation on the second: the caller keeps what it has. */
  ck_assert_int_eq(mailoauth_oauth_refresh(ctx, SECRET_REFRESH2, NOW + 10,
    &resp), 0);
  ck_assert_ptr_null(resp.refresh_token);
  ck_assert_int_eq(resp.expires_at, NOW + 10 + 3599);

  mailoauth_oauth_response_clear(&resp);
  mailoauth_oauth_ctx_destroy(ctx);
  log = srv_stop(&srv, 0);

  l0 = log_line(log, 0);
  l1 = log_line(log, 1);
  ck_assert_int_eq(strncmp(l0, "conn=1 POST /contoso.onmicrosoft.com/oauth2/"
    "v2.0/token HTTP/1.1 | ", 60), 0);
  /* One connection for both requests. */
  ck_assert_int_eq(strncmp(l1, "conn=1 POST ", 12), 0);

  assert_param(form_of(l0), "grant_type", "refresh_token");
  assert_param(form_of(l0), "refresh_token", SECRET_REFRESH);
  assert_param(form_of(l0), "client_id",
    "11111111-2222-3333-4444-555555555555");
  assert_param(form_of(l0), "client_secret", SECRET_CLIENT);
  assert_param(form_of(l0), "scope", "https://outlook.office.com/SMTP.Send "
    "https://outlook.office.com/IMAP.AccessAsUser.All offline_access");
  assert_param(form_of(l1), "refresh_token", SECRET_REFRESH2);

  /* Reserved characters in the secret are percent-encoded. */
  v = strstr(form_of(l0), "client_secret=");
  ck_assert_ptr_nonnull(v);
  ck_assert_int_eq(strncmp(v, "client_secret=Xq8~cLiEnTsEcReT.vAlUe_", 37), 0);

  free(l0);
  free(l1);
  free(log);
  assert_no_secret_in_traces();
  ck_assert_ptr_nonnull(strstr(rec_text, "refresh token issued"));
}
END_TEST

START_TEST(test_request_errors_and_retry_after) {
  static const struct canned script[] = {
    { 400, NULL, "{\"error\":\"invalid_grant\",\"error_description\":"
      "\"AADSTS9002313: Invalid request. Request is malformed: refresh_token="
      SECRET_REFRESH " client_secret=" SECRET_CLIENT "\",\"error_codes\":"
      "[70008],\"trace_id\":\"tr-1\",\"correlation_id\":\"co-1\"}", 0, 0, -1,
      0 },
    { 503, "Retry-After: 42\r\n", "<html>busy</html>", 0, 0, -1, 0 },
    { 429, "Retry-After: Wed, 21 Oct 2099 07:28:00 GMT\r\n",
      "{\"error\":\"temporarily_unavailable\"}", 0, 0, -1, 0 },
    { 401, NULL, ENTRA("invalid_client", 7000215, "Invalid client secret "
      "provided."), 1, 0, -1, 0 }
  };
  struct mailoauth_oauth_response resp = { 0 };
  struct mailoauth_oauth_config cfg;
  struct mailoauth_oauth_ctx *ctx;
  struct server srv;
  char authority[64], err[256], line[2048], *log;

  srv_start(&srv, script, 4);
  srv_config(&srv, &cfg, authority, sizeof(authority));
  ctx = mailoauth_oauth_ctx_create(&cfg, err, sizeof(err));
  ck_assert_ptr_nonnull(ctx);

  ck_assert_int_eq(mailoauth_oauth_refresh(ctx, SECRET_REFRESH, NOW, &resp),
    -1);
  ck_assert_int_eq(errno, EPROTO);
  ck_assert_int_eq(resp.oauth_class, MAILOAUTH_OAUTH_REAUTH);
  ck_assert_int_eq(resp.error_code, 70008);
  ck_assert_str_eq(resp.trace_id, "tr-1");
  /* The server echoed secrets into the description: they are masked. */
  ck_assert_ptr_nonnull(strstr(resp.error_description,
    "refresh_token=[redacted] client_secret=[redacted]"));
  mailoauth_oauth_format_error(&resp, "ftpmailoauth login a", line,
    sizeof(line));
  assert_no_secret_in("echoed description", line);

  ck_assert_int_eq(mailoauth_oauth_refresh(ctx, SECRET_REFRESH, NOW, &resp),
    -1);
  ck_assert_int_eq(errno, EAGAIN);
  ck_assert_int_eq(resp.oauth_class, MAILOAUTH_OAUTH_TRANSIENT);
  ck_assert_int_eq(resp.http_status, 503);
  ck_assert_int_eq(resp.retry_after, 42);

  ck_assert_int_eq(mailoauth_oauth_refresh(ctx, SECRET_REFRESH, NOW, &resp),
    -1);
  ck_assert_int_eq(resp.oauth_class, MAILOAUTH_OAUTH_TRANSIENT);
  ck_assert_int_eq(resp.retry_after, 86400);

  ck_assert_int_eq(mailoauth_oauth_refresh(ctx, SECRET_REFRESH, NOW, &resp),
    -1);
  ck_assert_int_eq(resp.oauth_class, MAILOAUTH_OAUTH_CONFIG);
  ck_assert_int_eq(resp.error_code, 7000215);
  ck_assert_int_eq(resp.retry_after, -1);

  mailoauth_oauth_response_clear(&resp);
  mailoauth_oauth_ctx_destroy(ctx);
  log = srv_stop(&srv, 0);
  free(log);
  assert_no_secret_in_traces();
}
END_TEST

START_TEST(test_request_code_and_client_credentials) {
  static const struct canned script[] = {
    { 200, NULL, "{\"token_type\":\"Bearer\",\"expires_in\":4000,"
      "\"access_token\":\"" SECRET_ACCESS "\",\"refresh_token\":\""
      SECRET_REFRESH "\"}", 0, 0, -1, 0 },
    { 200, NULL, "{\"token_type\":\"Bearer\",\"expires_in\":3599,"
      "\"ext_expires_in\":3599,\"access_token\":\"" SECRET_ACCESS "\"}", 0, 0,
      -1, 0 }
  };
  struct mailoauth_oauth_response resp = { 0 };
  struct mailoauth_oauth_config cfg;
  struct mailoauth_oauth_ctx *ctx;
  struct server srv;
  char authority[64], err[256], *log, *l0, *l1;
  char verifier[MAILOAUTH_OAUTH_VERIFIER_MAX + 1];

  ck_assert_int_eq(mailoauth_oauth_pkce_verifier(verifier, sizeof(verifier),
    64), 0);

  srv_start(&srv, script, 2);
  srv_config(&srv, &cfg, authority, sizeof(authority));
  ctx = mailoauth_oauth_ctx_create(&cfg, err, sizeof(err));
  ck_assert_ptr_nonnull(ctx);
  ck_assert_int_eq(mailoauth_oauth_redeem_code(ctx, SECRET_CODE, verifier,
    "http://localhost:8400/", NOW, &resp), 0);
  ck_assert_str_eq(resp.refresh_token, SECRET_REFRESH);
  mailoauth_oauth_ctx_destroy(ctx);

  cfg.grant = MAILOAUTH_OAUTH_GRANT_APP_ONLY;
  ctx = mailoauth_oauth_ctx_create(&cfg, err, sizeof(err));
  ck_assert_ptr_nonnull(ctx);
  ck_assert_int_eq(mailoauth_oauth_client_credentials(ctx, NOW, &resp), 0);
  ck_assert_ptr_null(resp.refresh_token);
  ck_assert_int_eq(resp.expires_in, 3599);
  mailoauth_oauth_ctx_destroy(ctx);

  mailoauth_oauth_response_clear(&resp);
  log = srv_stop(&srv, 0);
  l0 = log_line(log, 0);
  l1 = log_line(log, 1);

  assert_param(form_of(l0), "grant_type", "authorization_code");
  assert_param(form_of(l0), "code", SECRET_CODE);
  assert_param(form_of(l0), "code_verifier", verifier);
  assert_param(form_of(l0), "redirect_uri", "http://localhost:8400/");
  assert_param(form_of(l0), "client_secret", SECRET_CLIENT);

  assert_param(form_of(l1), "grant_type", "client_credentials");
  assert_param(form_of(l1), "scope", "https://outlook.office365.com/.default");
  assert_param(form_of(l1), "client_secret", SECRET_CLIENT);
  assert_param(form_of(l1), "refresh_token", NULL);

  free(l0);
  free(l1);
  free(log);
  assert_no_secret_in_traces();
  ck_assert(strstr(rec_text, verifier) == NULL);
}
END_TEST

/* Certificate credentials: a client assertion instead of the secret, made
 * for the token endpoint the request goes to, and never in a trace line; an
 * unusable key is a configuration error and nothing is sent.
 */
static char *rsa_pem(EVP_PKEY *key, X509 *cert) {
  BIO *bio = BIO_new(BIO_s_mem());
  char *data, *copy;
  long n;

  if (key != NULL) {
    PEM_write_bio_PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL);
  } else {
    PEM_write_bio_X509(bio, cert);
  }
  n = BIO_get_mem_data(bio, &data);
  copy = strndup(data, (size_t) n);
  BIO_free(bio);
  return copy;
}

START_TEST(test_request_with_client_assertion) {
  static const struct canned script[] = {
    { 200, NULL, "{\"token_type\":\"Bearer\",\"expires_in\":3599,"
      "\"access_token\":\"" SECRET_ACCESS "\"}", 0, 0, -1, 0 }
  };
  struct mailoauth_oauth_response resp = { 0 };
  struct mailoauth_oauth_config cfg;
  struct mailoauth_oauth_ctx *ctx;
  struct server srv;
  char authority[64], err[256], aud[128], *log, *l0, *jwt, *claims;
  const char *dot;
  EVP_PKEY *key = EVP_RSA_gen(2048);
  X509 *cert = X509_new();
  char *key_pem, *cert_pem;

  X509_set_pubkey(cert, key);
  X509_gmtime_adj(X509_getm_notBefore(cert), 0);
  X509_gmtime_adj(X509_getm_notAfter(cert), 86400);
  ck_assert_int_gt(X509_sign(cert, key, EVP_sha256()), 0);
  key_pem = rsa_pem(key, NULL);
  cert_pem = rsa_pem(NULL, cert);

  srv_start(&srv, script, 1);
  srv_config(&srv, &cfg, authority, sizeof(authority));
  cfg.grant = MAILOAUTH_OAUTH_GRANT_APP_ONLY;

  /* Both credentials: refused. */
  cfg.client_key_pem = key_pem;
  cfg.client_cert_pem = cert_pem;
  ck_assert_ptr_null(mailoauth_oauth_ctx_create(&cfg, err, sizeof(err)));
  ck_assert_ptr_nonnull(strstr(err, "not both"));

  cfg.client_secret = NULL;
  ctx = mailoauth_oauth_ctx_create(&cfg, err, sizeof(err));
  ck_assert_msg(ctx != NULL, "%s", err);
  ck_assert_int_eq(mailoauth_oauth_client_credentials(ctx, NOW, &resp), 0);
  mailoauth_oauth_ctx_destroy(ctx);

  /* A key that is not one: CONFIG, before any request. */
  cfg.client_key_pem = "-----BEGIN PRIVATE KEY-----\nnot a key\n";
  ctx = mailoauth_oauth_ctx_create(&cfg, err, sizeof(err));
  ck_assert_ptr_nonnull(ctx);
  ck_assert_int_eq(mailoauth_oauth_client_credentials(ctx, NOW, &resp), -1);
  ck_assert_int_eq(resp.oauth_class, MAILOAUTH_OAUTH_CONFIG);
  ck_assert_ptr_nonnull(strstr(resp.detail, "certificate credential"));
  mailoauth_oauth_ctx_destroy(ctx);
  mailoauth_oauth_response_clear(&resp);

  log = srv_stop(&srv, 0);
  l0 = log_line(log, 0);
  /* The request with the broken key never left. */
  ck_assert_ptr_null(strstr(strstr(log, " POST ") + 1, " POST "));
  assert_param(form_of(l0), "client_secret", NULL);
  assert_param(form_of(l0), "client_assertion_type",
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer");
  jwt = query_param(form_of(l0), "client_assertion");
  ck_assert_ptr_nonnull(jwt);

  /* aud: exactly the URL the request went to. */
  dot = strchr(jwt, '.');
  ck_assert_ptr_nonnull(dot);
  claims = strndup(dot + 1, (size_t) (strchr(dot + 1, '.') - dot - 1));
  {
    size_t n = strlen(claims), i;
    unsigned char raw[2048];
    char std[2048];
    int len;
    json_t *j;

    for (i = 0; i < n; i++) {
      std[i] = claims[i] == '-' ? '+' : claims[i] == '_' ? '/' : claims[i];
    }
    while (n % 4) {
      std[n++] = '=';
    }
    len = EVP_DecodeBlock(raw, (unsigned char *) std, (int) n);
    ck_assert_int_gt(len, 0);
    while (len > 0 && raw[len - 1] == '\0') {
      len--;
    }
    j = json_loadb((char *) raw, (size_t) len, 0, NULL);
    ck_assert_ptr_nonnull(j);
    snprintf(aud, sizeof(aud), "https://127.0.0.1:%d/contoso.onmicrosoft.com"
      "/oauth2/v2.0/token", srv.port);
    ck_assert_str_eq(json_string_value(json_object_get(j, "aud")), aud);
    ck_assert_str_eq(json_string_value(json_object_get(j, "iss")),
      "11111111-2222-3333-4444-555555555555");
    json_decref(j);
  }

  /* Nothing of the assertion in the trace. */
  ck_assert(strstr(rec_text, jwt) == NULL);
  ck_assert(strstr(rec_text, claims) == NULL);

  free(claims);
  free(jwt);
  free(l0);
  free(log);
  free(key_pem);
  free(cert_pem);
  X509_free(cert);
  EVP_PKEY_free(key);
}
END_TEST

START_TEST(test_request_device_flow) {
  static const struct canned script[] = {
    { 200, NULL, "{\"user_code\":\"F3QXKZ4PL\",\"device_code\":\""
      SECRET_DEVICE "\",\"verification_uri\":\"https://microsoft.com/"
      "devicelogin\",\"expires_in\":900,\"interval\":5,\"message\":\"To sign "
      "in, enter the code F3QXKZ4PL.\"}", 0, 0, -1, 0 },
    { 400, NULL, ENTRA("authorization_pending", 70016, "OAuth 2.0 device flow "
      "error. Authorization is pending. Continue polling."), 0, 0, -1, 0 },
    { 400, NULL, "{\"error\":\"slow_down\"}", 0, 0, -1, 0 },
    { 200, NULL, "{\"token_type\":\"Bearer\",\"expires_in\":3599,"
      "\"access_token\":\"" SECRET_ACCESS "\",\"refresh_token\":\""
      SECRET_REFRESH "\"}", 0, 0, -1, 0 }
  };
  struct mailoauth_oauth_response start = { 0 }, poll = { 0 };
  struct mailoauth_oauth_config cfg;
  struct mailoauth_oauth_ctx *ctx;
  struct server srv;
  char authority[64], err[256], *log, *l0, *l1;

  srv_start(&srv, script, 4);
  srv_config(&srv, &cfg, authority, sizeof(authority));
  cfg.client_secret = NULL;    /* a public client */
  ctx = mailoauth_oauth_ctx_create(&cfg, err, sizeof(err));
  ck_assert_ptr_nonnull(ctx);

  ck_assert_int_eq(mailoauth_oauth_device_start(ctx, NOW, &start), 0);
  ck_assert_str_eq(start.user_code, "F3QXKZ4PL");
  ck_assert_int_eq(start.interval, 5);

  ck_assert_int_eq(mailoauth_oauth_device_poll(ctx, start.device_code, NOW,
    &poll), -1);
  ck_assert_int_eq(poll.oauth_class, MAILOAUTH_OAUTH_PENDING);
  ck_assert_int_eq(errno, EAGAIN);
  ck_assert_int_eq(mailoauth_oauth_device_poll(ctx, start.device_code, NOW,
    &poll), -1);
  ck_assert_int_eq(poll.oauth_class, MAILOAUTH_OAUTH_SLOW_DOWN);
  ck_assert_int_eq(mailoauth_oauth_device_poll(ctx, start.device_code, NOW,
    &poll), 0);
  ck_assert_str_eq(poll.refresh_token, SECRET_REFRESH);

  mailoauth_oauth_response_clear(&start);
  mailoauth_oauth_response_clear(&poll);
  mailoauth_oauth_ctx_destroy(ctx);
  log = srv_stop(&srv, 0);

  l0 = log_line(log, 0);
  l1 = log_line(log, 1);
  ck_assert_ptr_nonnull(strstr(l0, "/contoso.onmicrosoft.com/oauth2/v2.0/"
    "devicecode "));
  assert_param(form_of(l0), "client_id",
    "11111111-2222-3333-4444-555555555555");
  assert_param(form_of(l0), "client_secret", NULL);
  ck_assert_ptr_nonnull(strstr(l1, "/oauth2/v2.0/token "));
  assert_param(form_of(l1), "grant_type",
    "urn:ietf:params:oauth:grant-type:device_code");
  assert_param(form_of(l1), "device_code", SECRET_DEVICE);
  assert_param(form_of(l1), "client_secret", NULL);

  free(l0);
  free(l1);
  free(log);
  assert_no_secret_in_traces();
}
END_TEST

START_TEST(test_request_transport_failures) {
  static const struct canned script[] = {
    /* Redirect: not followed. */
    { 302, "Location: https://evil.example/steal\r\n", "", 0, 0, -1, 0 },
    /* Larger than the cap. */
    { 200, NULL, NULL, 0, 0, -1, 100 * 1024 },
    /* Body cut short. */
    { 200, NULL, "{\"access_token\":\"" SECRET_ACCESS, 1, 0, 4096, 0 }
  };
  struct mailoauth_oauth_response resp = { 0 };
  struct mailoauth_oauth_config cfg;
  struct mailoauth_oauth_ctx *ctx;
  struct server srv;
  char authority[64], err[256], line[2048], *log;

  srv_start(&srv, script, 3);
  srv_config(&srv, &cfg, authority, sizeof(authority));
  ctx = mailoauth_oauth_ctx_create(&cfg, err, sizeof(err));
  ck_assert_ptr_nonnull(ctx);

  ck_assert_int_eq(mailoauth_oauth_refresh(ctx, SECRET_REFRESH, NOW, &resp),
    -1);
  ck_assert_int_eq(resp.http_status, 302);
  ck_assert_int_eq(resp.oauth_class, MAILOAUTH_OAUTH_CONFIG);

  ck_assert_int_eq(mailoauth_oauth_refresh(ctx, SECRET_REFRESH, NOW, &resp),
    -1);
  ck_assert_int_eq(resp.curl_code, CURLE_WRITE_ERROR);
  ck_assert_int_eq(resp.oauth_class, MAILOAUTH_OAUTH_TRANSIENT);
  ck_assert_ptr_nonnull(strstr(resp.detail, "larger than 65536 bytes"));

  ck_assert_int_eq(mailoauth_oauth_refresh(ctx, SECRET_REFRESH, NOW, &resp),
    -1);
  ck_assert_int_eq(resp.oauth_class, MAILOAUTH_OAUTH_TRANSIENT);
  ck_assert_int_ne(resp.curl_code, 0);
  ck_assert_ptr_null(resp.access_token);
  mailoauth_oauth_format_error(&resp, "cmd", line, sizeof(line));
  ck_assert_ptr_nonnull(strstr(line, "network error"));
  assert_no_secret_in("transport failure", line);

  mailoauth_oauth_response_clear(&resp);
  mailoauth_oauth_ctx_destroy(ctx);
  log = srv_stop(&srv, 0);
  free(log);
  assert_no_secret_in_traces();
}
END_TEST

START_TEST(test_request_timeout) {
  static const struct canned script[] = {
    { 200, NULL, "{}", 0, 3000, -1, 0 }
  };
  struct mailoauth_oauth_response resp = { 0 };
  struct mailoauth_oauth_config cfg;
  struct mailoauth_oauth_ctx *ctx;
  struct server srv;
  char authority[64], err[256], *log;

  srv_start(&srv, script, 1);
  srv_config(&srv, &cfg, authority, sizeof(authority));
  cfg.timeout_ms = 400;
  ctx = mailoauth_oauth_ctx_create(&cfg, err, sizeof(err));
  ck_assert_ptr_nonnull(ctx);

  ck_assert_int_eq(mailoauth_oauth_refresh(ctx, SECRET_REFRESH, NOW, &resp),
    -1);
  ck_assert_int_eq(resp.curl_code, CURLE_OPERATION_TIMEDOUT);
  ck_assert_int_eq(resp.oauth_class, MAILOAUTH_OAUTH_TRANSIENT);
  ck_assert_int_eq(errno, EAGAIN);

  mailoauth_oauth_response_clear(&resp);
  mailoauth_oauth_ctx_destroy(ctx);
  log = srv_stop(&srv, 1);
  free(log);
  assert_no_secret_in_traces();
}
END_TEST

START_TEST(test_request_tls_verification) {
  static const struct canned script[] = {
    { 200, NULL, "{}", 0, 0, -1, 0 }
  };
  struct mailoauth_oauth_response resp = { 0 };
  struct mailoauth_oauth_config cfg;
  struct mailoauth_oauth_ctx *ctx;
  struct server srv;
  char authority[64], err[256], *log;

  srv_start(&srv, script, 1);
  srv_config(&srv, &cfg, authority, sizeof(authority));
  cfg.ca_file = NULL;          /* the system's CAs do not know this one */
  ctx = mailoauth_oauth_ctx_create(&cfg, err, sizeof(err));
  ck_assert_ptr_nonnull(ctx);

  ck_assert_int_eq(mailoauth_oauth_refresh(ctx, SECRET_REFRESH, NOW, &resp),
    -1);
  ck_assert_int_eq(resp.curl_code, CURLE_PEER_FAILED_VERIFICATION);
  ck_assert_int_eq(resp.oauth_class, MAILOAUTH_OAUTH_CONFIG);

  mailoauth_oauth_response_clear(&resp);
  mailoauth_oauth_ctx_destroy(ctx);
  log = srv_stop(&srv, 1);
  /* The request never reached the server. */
  ck_assert_str_eq(log, "");
  free(log);
  assert_no_secret_in_traces();
}
END_TEST

START_TEST(test_request_unreachable) {
  struct mailoauth_oauth_response resp = { 0 };
  struct mailoauth_oauth_config cfg;
  struct mailoauth_oauth_ctx *ctx;
  char err[256];

  ms_config(&cfg);
  cfg.authority = "https://127.0.0.1:1";
  cfg.proxy = "";
  ctx = mailoauth_oauth_ctx_create(&cfg, err, sizeof(err));
  ck_assert_ptr_nonnull(ctx);

  ck_assert_int_eq(mailoauth_oauth_refresh(ctx, SECRET_REFRESH, NOW, &resp),
    -1);
  ck_assert_int_eq(resp.curl_code, CURLE_COULDNT_CONNECT);
  ck_assert_int_eq(resp.oauth_class, MAILOAUTH_OAUTH_TRANSIENT);
  ck_assert_int_eq(resp.http_status, 0);

  /* Invalid arguments do not reach the network. */
  ck_assert_int_eq(mailoauth_oauth_refresh(ctx, NULL, NOW, &resp), -1);
  ck_assert_int_eq(errno, EINVAL);
  ck_assert_int_eq(mailoauth_oauth_refresh(ctx, "", NOW, &resp), -1);
  ck_assert_int_eq(mailoauth_oauth_redeem_code(ctx, SECRET_CODE, NULL,
    "http://localhost/", NOW, &resp), -1);
  ck_assert_int_eq(mailoauth_oauth_device_poll(ctx, NULL, NOW, &resp), -1);
  ck_assert_int_eq(mailoauth_oauth_refresh(NULL, SECRET_REFRESH, NOW, &resp),
    -1);

  mailoauth_oauth_response_clear(&resp);
  mailoauth_oauth_ctx_destroy(ctx);
  mailoauth_oauth_ctx_destroy(NULL);

  /* Generic provider without a device code URL. */
  cfg.provider = MAILOAUTH_OAUTH_PROVIDER_GENERIC;
  cfg.token_url = "https://127.0.0.1:1/token";
  cfg.scopes = "mail";
  ctx = mailoauth_oauth_ctx_create(&cfg, err, sizeof(err));
  ck_assert_ptr_nonnull(ctx);
  ck_assert_int_eq(mailoauth_oauth_device_start(ctx, NOW, &resp), -1);
  ck_assert_int_eq(resp.oauth_class, MAILOAUTH_OAUTH_CONFIG);
  mailoauth_oauth_response_clear(&resp);
  mailoauth_oauth_ctx_destroy(ctx);

  /* A bad configuration never makes a context. */
  cfg.token_url = "http://127.0.0.1:1/token";
  ck_assert_ptr_null(mailoauth_oauth_ctx_create(&cfg, err, sizeof(err)));
  ck_assert_int_eq(errno, EINVAL);

  assert_no_secret_in_traces();
}
END_TEST

static Suite *oauth_suite(void) {
  Suite *s = suite_create("oauth");
  TCase *tc;

  tc = tcase_create("pure");
  tcase_add_checked_fixture(tc, rec_setup, rec_teardown);
  tcase_add_test(tc, test_names);
  tcase_add_test(tc, test_config_check);
  tcase_add_test(tc, test_default_scopes);
  tcase_add_test(tc, test_endpoint_urls);
  tcase_add_test(tc, test_authorize_url);
  tcase_add_test(tc, test_pkce_rfc7636_vector);
  tcase_add_test(tc, test_pkce_verifier);
  tcase_add_test(tc, test_random_state);
  tcase_add_test(tc, test_retry_after);
  tcase_add_test(tc, test_backoff);
  tcase_add_loop_test(tc, test_classification_table, 0,
    (int) (sizeof(class_cases) / sizeof(class_cases[0])));
  tcase_add_test(tc, test_classify_direct);
  tcase_add_test(tc, test_aadsts_table);
  tcase_add_test(tc, test_parse_success);
  tcase_add_test(tc, test_id_token_claims);
  tcase_add_test(tc, test_parse_device_start);
  tcase_add_test(tc, test_error_fields);
  tcase_add_test(tc, test_format_error);
  tcase_add_test(tc, test_malformed_bodies_quote_nothing);
  tcase_add_test(tc, test_wipe_json_memory);
  suite_add_tcase(s, tc);

  tc = tcase_create("requests");
  tcase_add_checked_fixture(tc, rec_setup, rec_teardown);
  tcase_set_timeout(tc, 30);
  tcase_add_test(tc, test_request_refresh_rotation_and_reuse);
  tcase_add_test(tc, test_request_errors_and_retry_after);
  tcase_add_test(tc, test_request_with_client_assertion);
  tcase_add_test(tc, test_request_code_and_client_credentials);
  tcase_add_test(tc, test_request_device_flow);
  tcase_add_test(tc, test_request_transport_failures);
  tcase_add_test(tc, test_request_timeout);
  tcase_add_test(tc, test_request_tls_verification);
  tcase_add_test(tc, test_request_unreachable);
  suite_add_tcase(s, tc);

  return s;
}

int main(void) {
  SRunner *sr;
  int failed;

  /* What the worker and the sign-in tool do at start-up. */
  mailoauth_oauth_wipe_json_memory();
  curl_global_init(CURL_GLOBAL_DEFAULT);

  sr = srunner_create(oauth_suite());
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);

  curl_global_cleanup();
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
