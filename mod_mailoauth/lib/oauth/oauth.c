/*
 * mod_mailoauth - OAuth2 token endpoint client
 */

#include "mailoauth/assertion.h"
#include "mailoauth/buf.h"
#include "mailoauth/oauth.h"
#include "mailoauth/trace.h"
#include "oauth/oauthint.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <curl/curl.h>
#include "mailoauth/jsonwrap.h"
#include <openssl/crypto.h>
#include <openssl/evp.h>

static const char *trace_channel = "mailoauth.oauth";

/* Error descriptions are logged; Microsoft's run to several lines of ids. */
#define MAILOAUTH_OAUTH_DESCRIPTION_MAX   300

/* ------------------------------------------------------------------------
 * Growing buffer that never leaves a copy of its contents behind in freed
 * memory: request bodies and responses hold secrets.
 */

/* "name=value", URL-encoded, '&'-separated. */
static int buf_add_param(struct mailoauth_buf *b, const char *name,
    const char *value) {
  char *esc;
  int res;

  /* curl_easy_escape() ignores its handle since 7.82.0. */
  esc = curl_easy_escape(NULL, value, 0);
  if (esc == NULL) {
    errno = ENOMEM;
    return -1;
  }

  res = 0;
  if ((b->len > 0 && mailoauth_buf_add(b, "&", 1) < 0) ||
      mailoauth_buf_adds(b, name) < 0 ||
      mailoauth_buf_add(b, "=", 1) < 0 ||
      mailoauth_buf_adds(b, esc) < 0) {
    res = -1;
  }

  OPENSSL_cleanse(esc, strlen(esc));
  curl_free(esc);
  return res;
}

/* ------------------------------------------------------------------------
 * Small string helpers.
 */

static void secret_free(char **s) {
  if (*s != NULL) {
    OPENSSL_cleanse(*s, strlen(*s));
    free(*s);
    *s = NULL;
  }
}

static int str_dup(char **dst, const char *src) {
  if (src == NULL) {
    *dst = NULL;
    return 0;
  }

  *dst = strdup(src);
  if (*dst == NULL) {
    errno = ENOMEM;
    return -1;
  }
  return 0;
}

static int is_blank(const char *s) {
  return s == NULL || *s == '\0';
}

static int has_ctrl(const char *s) {
  for (; *s != '\0'; s++) {
    if ((unsigned char) *s < 0x20 || *s == 0x7f) {
      return 1;
    }
  }
  return 0;
}

static int is_https(const char *url) {
  return strncasecmp(url, "https://", 8) == 0 && url[8] != '\0';
}

/* Replace every occurrence of secret in text (in place) so that a server
 * echoing a parameter back cannot get it into a log.
 */
static void scrub_secret(char *text, const char *secret) {
  static const char mask[] = "[redacted]";
  size_t slen, mlen;
  char *p;

  if (text == NULL || is_blank(secret)) {
    return;
  }

  slen = strlen(secret);
  mlen = sizeof(mask) - 1;

  /* Too short to tell apart from ordinary words. */
  if (slen < 8) {
    return;
  }

  while ((p = strstr(text, secret)) != NULL) {
    memcpy(p, mask, mlen);
    memmove(p + mlen, p + slen, strlen(p + slen) + 1);
  }
}

/* One line, capped: descriptions go into logs.  Microsoft's carry
 * "\r\nTrace ID: ...\r\nCorrelation ID: ...", kept as one line.
 */
static char *one_line(const char *s, size_t max) {
  size_t i, n, len;
  char *out;
  int space = 0;

  len = strlen(s);
  out = malloc((len < max ? len : max) + 4);
  if (out == NULL) {
    errno = ENOMEM;
    return NULL;
  }

  n = 0;
  for (i = 0; s[i] != '\0' && n < max; i++) {
    unsigned char c = (unsigned char) s[i];

    if (c < 0x20 || c == 0x7f || c == ' ') {
      space = (n > 0);
      continue;
    }

    if (space) {
      out[n++] = ' ';
      space = 0;
      if (n >= max) {
        break;
      }
    }
    out[n++] = (char) c;
  }

  if (s[i] != '\0') {
    /* Never end inside a UTF-8 sequence: drop the last character whole. */
    while (n > 0 && ((unsigned char) out[n - 1] & 0xc0) == 0x80) {
      n--;
    }
    if (n > 0 && ((unsigned char) out[n - 1] & 0x80) != 0) {
      n--;
    }

    memcpy(out + n, "...", 3);
    n += 3;
  }
  out[n] = '\0';
  return out;
}

/* ------------------------------------------------------------------------
 * Names.
 */

static const char *class_names[] = {
  "ok", "reauth", "config", "transient", "pending", "slow_down", "declined",
  "expired"
};

const char *mailoauth_oauth_class_name(mailoauth_oauth_class_t oauth_class) {
  if ((unsigned int) oauth_class >=
      sizeof(class_names) / sizeof(class_names[0])) {
    return "unknown";
  }
  return class_names[oauth_class];
}

struct provider_info {
  const char *name;
  const char *authority;     /* sign-in host */
  const char *mail_resource; /* prefix of the delegated mail scopes */
  const char *app_scope;     /* client credentials scope */
  const char *graph_resource; /* Microsoft Graph in this cloud */
};

static const struct provider_info providers[] = {
  { "microsoft", "https://login.microsoftonline.com",
    "https://outlook.office.com/", "https://outlook.office365.com/.default",
    "https://graph.microsoft.com/" },
  { "microsoft-usgov", "https://login.microsoftonline.us",
    "https://outlook.office365.us/", "https://outlook.office365.us/.default",
    "https://graph.microsoft.us/" },
  { "microsoft-china", "https://login.partner.microsoftonline.cn",
    "https://partner.outlook.cn/", "https://partner.outlook.cn/.default",
    "https://microsoftgraph.chinacloudapi.cn/" },
  { "google", "https://accounts.google.com", "https://mail.google.com/",
    NULL, NULL },
  { "generic", NULL, NULL, NULL, NULL }
};

#define PROVIDER_COUNT (sizeof(providers) / sizeof(providers[0]))

static const char *google_authorize_url =
  "https://accounts.google.com/o/oauth2/v2/auth";
static const char *google_token_url = "https://oauth2.googleapis.com/token";
static const char *google_devicecode_url =
  "https://oauth2.googleapis.com/device/code";

static int is_microsoft(mailoauth_oauth_provider_t provider) {
  return provider == MAILOAUTH_OAUTH_PROVIDER_MICROSOFT ||
    provider == MAILOAUTH_OAUTH_PROVIDER_MICROSOFT_USGOV ||
    provider == MAILOAUTH_OAUTH_PROVIDER_MICROSOFT_CHINA;
}

const char *mailoauth_oauth_provider_name(mailoauth_oauth_provider_t provider) {
  if ((unsigned int) provider >= PROVIDER_COUNT) {
    return "unknown";
  }
  return providers[provider].name;
}

int mailoauth_oauth_provider_parse(const char *name,
    mailoauth_oauth_provider_t *provider) {
  unsigned int i;

  if (name == NULL || provider == NULL) {
    errno = EINVAL;
    return -1;
  }

  for (i = 0; i < PROVIDER_COUNT; i++) {
    if (strcasecmp(name, providers[i].name) == 0) {
      *provider = (mailoauth_oauth_provider_t) i;
      return 0;
    }
  }

  errno = ENOENT;
  return -1;
}

const char *mailoauth_oauth_grant_name(mailoauth_oauth_grant_t grant) {
  switch (grant) {
    case MAILOAUTH_OAUTH_GRANT_DELEGATED:
      return "delegated";

    case MAILOAUTH_OAUTH_GRANT_APP_ONLY:
      return "app-only";
  }
  return "unknown";
}

int mailoauth_oauth_grant_parse(const char *name,
    mailoauth_oauth_grant_t *grant) {
  if (name == NULL || grant == NULL) {
    errno = EINVAL;
    return -1;
  }

  if (strcasecmp(name, "delegated") == 0) {
    *grant = MAILOAUTH_OAUTH_GRANT_DELEGATED;
    return 0;
  }

  if (strcasecmp(name, "app-only") == 0 ||
      strcasecmp(name, "client_credentials") == 0) {
    *grant = MAILOAUTH_OAUTH_GRANT_APP_ONLY;
    return 0;
  }

  errno = ENOENT;
  return -1;
}

/* ------------------------------------------------------------------------
 * Configuration and endpoints.
 */

static const char *cfg_tenant(const struct mailoauth_oauth_config *cfg) {
  return is_blank(cfg->tenant) ? MAILOAUTH_OAUTH_DEFAULT_TENANT : cfg->tenant;
}

static int valid_tenant(const char *tenant) {
  size_t i, len;

  len = strlen(tenant);
  if (len == 0 || len > 253) {
    return 0;
  }

  /* It becomes a URL path segment: GUID or DNS name characters only. */
  for (i = 0; i < len; i++) {
    char c = tenant[i];

    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
          (c >= '0' && c <= '9') || c == '-' || c == '.')) {
      return 0;
    }
  }

  return tenant[0] != '.';
}

/* Client credentials are refused on the multi-tenant aliases
 * (AADSTS9001023); say so before a round trip does.
 */
static int is_tenant_alias(const char *tenant) {
  return strcasecmp(tenant, "common") == 0 ||
    strcasecmp(tenant, "organizations") == 0 ||
    strcasecmp(tenant, "consumers") == 0;
}

static int check_url(const char *what, const char *url, char *errbuf,
    size_t errlen) {
  if (url == NULL) {
    return 0;
  }

  if (!is_https(url) || has_ctrl(url) || strchr(url, ' ') != NULL) {
    mailoauth_errf(errbuf, errlen, "%s must be an https:// URL", what);
    errno = EINVAL;
    return -1;
  }
  return 0;
}

static int check_microsoft(const struct mailoauth_oauth_config *cfg,
    char *errbuf, size_t errlen) {
  const char *tenant = cfg_tenant(cfg);

  if (!valid_tenant(tenant)) {
    mailoauth_errf(errbuf, errlen, "tenant must be a directory (tenant) ID, a domain, "
      "'organizations' or 'common'");
    errno = EINVAL;
    return -1;
  }

  if (cfg->grant == MAILOAUTH_OAUTH_GRANT_APP_ONLY && is_tenant_alias(tenant)) {
    mailoauth_errf(errbuf, errlen, "app-only access needs the directory (tenant) ID "
      "or domain, not '%s'", tenant);
    errno = EINVAL;
    return -1;
  }
  return 0;
}

int mailoauth_oauth_config_check(const struct mailoauth_oauth_config *cfg,
    char *errbuf, size_t errlen) {
  if (cfg == NULL) {
    errno = EINVAL;
    return -1;
  }

  if ((unsigned int) cfg->provider >= PROVIDER_COUNT) {
    mailoauth_errf(errbuf, errlen, "unknown OAuth provider");
    errno = EINVAL;
    return -1;
  }

  if (is_blank(cfg->client_id) || has_ctrl(cfg->client_id)) {
    mailoauth_errf(errbuf, errlen, "a client ID is required");
    errno = EINVAL;
    return -1;
  }

  if (cfg->client_secret != NULL && has_ctrl(cfg->client_secret)) {
    /* Never quote it: it is a secret. */
    mailoauth_errf(errbuf, errlen, "the client secret contains control characters "
      "(a stray line break when it was pasted?)");
    errno = EINVAL;
    return -1;
  }

  if (!is_blank(cfg->client_secret) && !is_blank(cfg->client_key_pem)) {
    mailoauth_errf(errbuf, errlen, "use either a client secret or a "
      "certificate, not both");
    errno = EINVAL;
    return -1;
  }

  if (!is_blank(cfg->client_key_pem) && is_blank(cfg->client_cert_pem)) {
    mailoauth_errf(errbuf, errlen, "a certificate credential needs the "
      "certificate as well as the private key");
    errno = EINVAL;
    return -1;
  }

  if (cfg->scopes != NULL && (is_blank(cfg->scopes) || has_ctrl(cfg->scopes))) {
    mailoauth_errf(errbuf, errlen, "scopes must be a space-separated list");
    errno = EINVAL;
    return -1;
  }

  if (check_url("the authority", cfg->authority, errbuf, errlen) < 0 ||
      check_url("the authorize URL", cfg->authorize_url, errbuf, errlen) < 0 ||
      check_url("the token URL", cfg->token_url, errbuf, errlen) < 0 ||
      check_url("the device code URL", cfg->devicecode_url, errbuf,
        errlen) < 0) {
    return -1;
  }

  if (cfg->connect_timeout_ms < 0 || cfg->timeout_ms < 0) {
    mailoauth_errf(errbuf, errlen, "timeouts cannot be negative");
    errno = EINVAL;
    return -1;
  }

  if (is_microsoft(cfg->provider) &&
      check_microsoft(cfg, errbuf, errlen) < 0) {
    return -1;
  }

  if (cfg->grant == MAILOAUTH_OAUTH_GRANT_APP_ONLY) {
    if (cfg->provider == MAILOAUTH_OAUTH_PROVIDER_GOOGLE) {
      /* Google's app-only access uses service-account JWTs, not client
       * credentials.
       */
      mailoauth_errf(errbuf, errlen, "Google does not offer app-only access with "
        "client credentials; use delegated sign-in");
      errno = EINVAL;
      return -1;
    }

    if (is_blank(cfg->client_secret) && is_blank(cfg->client_key_pem)) {
      mailoauth_errf(errbuf, errlen, "app-only access needs a client secret "
        "or a certificate");
      errno = EINVAL;
      return -1;
    }
  }

  if (cfg->provider == MAILOAUTH_OAUTH_PROVIDER_GENERIC) {
    if (cfg->token_url == NULL) {
      mailoauth_errf(errbuf, errlen, "the generic provider needs a token URL");
      errno = EINVAL;
      return -1;
    }

    if (cfg->scopes == NULL) {
      mailoauth_errf(errbuf, errlen, "the generic provider needs explicit scopes");
      errno = EINVAL;
      return -1;
    }
  }

  return 0;
}

static int build_scopes(const struct mailoauth_oauth_config *cfg,
    struct mailoauth_buf *out) {
  const struct provider_info *info;

  if (cfg->scopes != NULL) {
    return mailoauth_buf_adds(out, cfg->scopes);
  }

  if ((unsigned int) cfg->provider >= PROVIDER_COUNT) {
    errno = EINVAL;
    return -1;
  }
  info = &providers[cfg->provider];

  if (cfg->graph) {
    if (info->graph_resource == NULL) {
      errno = EINVAL;
      return -1;
    }
    if (mailoauth_buf_adds(out, info->graph_resource) < 0 ||
        mailoauth_buf_adds(out, cfg->grant == MAILOAUTH_OAUTH_GRANT_APP_ONLY ?
          ".default" : "Mail.Send offline_access") < 0) {
      return -1;
    }
    if (cfg->grant != MAILOAUTH_OAUTH_GRANT_APP_ONLY && cfg->want_identity &&
        mailoauth_buf_adds(out, " openid email profile") < 0) {
      return -1;
    }
    return 0;
  }

  if (cfg->grant == MAILOAUTH_OAUTH_GRANT_APP_ONLY) {
    if (info->app_scope == NULL) {
      errno = EINVAL;
      return -1;
    }
    return mailoauth_buf_adds(out, info->app_scope);
  }

  if (info->mail_resource == NULL) {
    errno = EINVAL;
    return -1;
  }

  if (is_microsoft(cfg->provider)) {
    /* All scopes of one request must belong to one resource. */
    if (mailoauth_buf_adds(out, info->mail_resource) < 0 ||
        mailoauth_buf_adds(out, "SMTP.Send ") < 0 ||
        mailoauth_buf_adds(out, info->mail_resource) < 0 ||
        mailoauth_buf_adds(out, "IMAP.AccessAsUser.All offline_access") < 0) {
      return -1;
    }

  } else if (mailoauth_buf_adds(out, info->mail_resource) < 0) {
    return -1;
  }

  if (cfg->want_identity && mailoauth_buf_adds(out, " openid email profile") < 0) {
    return -1;
  }
  return 0;
}

int mailoauth_oauth_scopes(const struct mailoauth_oauth_config *cfg,
    char **scopes) {
  struct mailoauth_buf b = MAILOAUTH_BUF_SECRET;

  if (cfg == NULL || scopes == NULL) {
    errno = EINVAL;
    return -1;
  }

  if (build_scopes(cfg, &b) < 0) {
    mailoauth_buf_free(&b);
    return -1;
  }

  *scopes = mailoauth_buf_take(&b, NULL);
  return *scopes != NULL ? 0 : -1;
}

enum endpoint {
  ENDPOINT_AUTHORIZE,
  ENDPOINT_TOKEN,
  ENDPOINT_DEVICECODE
};

/* The authority without a trailing slash. */
static int append_authority(struct mailoauth_buf *out, const char *authority) {
  size_t len = strlen(authority);

  while (len > 0 && authority[len - 1] == '/') {
    len--;
  }
  return mailoauth_buf_add(out, authority, len);
}

static int build_endpoint(const struct mailoauth_oauth_config *cfg,
    enum endpoint which, struct mailoauth_buf *out) {
  static const char *ms_names[] = { "authorize", "token", "devicecode" };
  static const char *google_paths[] = { "/o/oauth2/v2/auth", "/token",
    "/device/code" };
  const char *explicit_urls[3];

  explicit_urls[0] = cfg->authorize_url;
  explicit_urls[1] = cfg->token_url;
  explicit_urls[2] = cfg->devicecode_url;

  if (explicit_urls[which] != NULL) {
    return mailoauth_buf_adds(out, explicit_urls[which]);
  }

  if (is_microsoft(cfg->provider)) {
    const char *authority = cfg->authority != NULL ? cfg->authority :
      providers[cfg->provider].authority;

    if (append_authority(out, authority) < 0 ||
        mailoauth_buf_add(out, "/", 1) < 0 ||
        mailoauth_buf_adds(out, cfg_tenant(cfg)) < 0 ||
        mailoauth_buf_adds(out, "/oauth2/v2.0/") < 0) {
      return -1;
    }
    return mailoauth_buf_adds(out, ms_names[which]);
  }

  if (cfg->provider == MAILOAUTH_OAUTH_PROVIDER_GOOGLE) {
    const char *defaults[3];

    if (cfg->authority != NULL) {
      if (append_authority(out, cfg->authority) < 0) {
        return -1;
      }
      return mailoauth_buf_adds(out, google_paths[which]);
    }

    defaults[0] = google_authorize_url;
    defaults[1] = google_token_url;
    defaults[2] = google_devicecode_url;
    return mailoauth_buf_adds(out, defaults[which]);
  }

  /* Generic provider without this endpoint configured. */
  errno = ENOENT;
  return -1;
}

static int endpoint_url(const struct mailoauth_oauth_config *cfg,
    enum endpoint which, char **url) {
  struct mailoauth_buf b = MAILOAUTH_BUF_SECRET;

  if (cfg == NULL || url == NULL) {
    errno = EINVAL;
    return -1;
  }

  if (mailoauth_oauth_config_check(cfg, NULL, 0) < 0) {
    return -1;
  }

  if (build_endpoint(cfg, which, &b) < 0) {
    mailoauth_buf_free(&b);
    return -1;
  }

  *url = mailoauth_buf_take(&b, NULL);
  return *url != NULL ? 0 : -1;
}

int mailoauth_oauth_token_url(const struct mailoauth_oauth_config *cfg,
    char **url) {
  return endpoint_url(cfg, ENDPOINT_TOKEN, url);
}

int mailoauth_oauth_devicecode_url(const struct mailoauth_oauth_config *cfg,
    char **url) {
  return endpoint_url(cfg, ENDPOINT_DEVICECODE, url);
}

static int build_authorize_query(const struct mailoauth_oauth_config *cfg,
    const struct mailoauth_oauth_authorize_params *params,
    struct mailoauth_buf *query) {
  struct mailoauth_buf scopes = MAILOAUTH_BUF_SECRET;
  int res = -1;

  if (build_scopes(cfg, &scopes) < 0) {
    goto out;
  }

  if (buf_add_param(query, "client_id", cfg->client_id) < 0 ||
      buf_add_param(query, "response_type", "code") < 0 ||
      buf_add_param(query, "redirect_uri", params->redirect_uri) < 0 ||
      buf_add_param(query, "response_mode", "query") < 0 ||
      buf_add_param(query, "scope", scopes.data) < 0 ||
      buf_add_param(query, "state", params->state) < 0 ||
      buf_add_param(query, "code_challenge", params->code_challenge) < 0 ||
      buf_add_param(query, "code_challenge_method", "S256") < 0) {
    goto out;
  }

  /* Google issues a refresh token only for offline access. */
  if (cfg->provider == MAILOAUTH_OAUTH_PROVIDER_GOOGLE &&
      buf_add_param(query, "access_type", "offline") < 0) {
    goto out;
  }

  if (!is_blank(params->login_hint) &&
      buf_add_param(query, "login_hint", params->login_hint) < 0) {
    goto out;
  }

  if (!is_blank(params->prompt) &&
      buf_add_param(query, "prompt", params->prompt) < 0) {
    goto out;
  }

  res = 0;

out:
  mailoauth_buf_free(&scopes);
  return res;
}

int mailoauth_oauth_authorize_url(const struct mailoauth_oauth_config *cfg,
    const struct mailoauth_oauth_authorize_params *params, char **url) {
  struct mailoauth_buf b = MAILOAUTH_BUF_SECRET, query = MAILOAUTH_BUF_SECRET;
  int res = -1;

  if (cfg == NULL || params == NULL || url == NULL ||
      is_blank(params->redirect_uri) || is_blank(params->state) ||
      is_blank(params->code_challenge)) {
    errno = EINVAL;
    return -1;
  }

  if (cfg->grant != MAILOAUTH_OAUTH_GRANT_DELEGATED ||
      mailoauth_oauth_config_check(cfg, NULL, 0) < 0) {
    errno = EINVAL;
    return -1;
  }

  if (build_endpoint(cfg, ENDPOINT_AUTHORIZE, &b) < 0 ||
      build_authorize_query(cfg, params, &query) < 0 ||
      mailoauth_buf_add(&b, strchr(b.data, '?') != NULL ? "&" : "?", 1) < 0 ||
      mailoauth_buf_adds(&b, query.data) < 0) {
    goto out;
  }

  *url = mailoauth_buf_take(&b, NULL);
  res = *url != NULL ? 0 : -1;

out:
  mailoauth_buf_free(&query);
  mailoauth_buf_free(&b);
  return res;
}

/* ------------------------------------------------------------------------
 * Response parsing.
 */

void mailoauth_oauth_identity_clear(struct mailoauth_oauth_identity *identity) {
  if (identity == NULL) {
    return;
  }

  free(identity->username);
  free(identity->email);
  free(identity->name);
  free(identity->tenant);
  free(identity->oid);
  memset(identity, 0, sizeof(*identity));
}

void mailoauth_oauth_response_clear(struct mailoauth_oauth_response *resp) {
  if (resp == NULL) {
    return;
  }

  secret_free(&resp->access_token);
  secret_free(&resp->refresh_token);
  secret_free(&resp->device_code);
  free(resp->token_type);
  free(resp->scope);
  free(resp->user_code);
  free(resp->verification_uri);
  free(resp->message);
  free(resp->error);
  free(resp->suberror);
  free(resp->error_description);
  free(resp->trace_id);
  free(resp->correlation_id);
  mailoauth_oauth_identity_clear(&resp->identity);

  memset(resp, 0, sizeof(*resp));
  resp->retry_after = -1;
}

static int json_str(json_t *obj, const char *key, char **dst) {
  json_t *v = json_object_get(obj, key);

  if (v == NULL || !json_is_string(v)) {
    *dst = NULL;
    return 0;
  }
  return str_dup(dst, json_string_value(v));
}

/* expires_in and interval: a number, or a numeric string (older Azure AD
 * endpoints sent strings).
 */
static long json_seconds(json_t *obj, const char *key, long fallback) {
  json_t *v = json_object_get(obj, key);

  if (json_is_integer(v)) {
    json_int_t n = json_integer_value(v);

    return n >= 0 && n <= LONG_MAX ? (long) n : fallback;
  }

  if (json_is_string(v)) {
    const char *s = json_string_value(v);
    char *end;
    long n;

    errno = 0;
    n = strtol(s, &end, 10);
    if (end != s && *end == '\0' && errno == 0 && n >= 0) {
      return n;
    }
  }

  return fallback;
}

/* base64url, unpadded, to bytes (NUL-terminated for JSON parsing). */
static unsigned char *b64url_decode(const char *in, size_t inlen,
    size_t *outlen) {
  unsigned char *out;
  char *std;
  size_t i, pad, stdlen;
  int n;

  if (inlen % 4 == 1 || inlen > INT_MAX / 2) {
    errno = EINVAL;
    return NULL;
  }

  pad = (4 - inlen % 4) % 4;
  stdlen = inlen + pad;

  std = malloc(stdlen + 1);
  out = malloc(stdlen / 4 * 3 + 1);
  if (std == NULL || out == NULL) {
    free(std);
    free(out);
    errno = ENOMEM;
    return NULL;
  }

  for (i = 0; i < inlen; i++) {
    char c = in[i];

    if (c == '-') {
      c = '+';

    } else if (c == '_') {
      c = '/';

    } else if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                 (c >= '0' && c <= '9'))) {
      free(std);
      free(out);
      errno = EINVAL;
      return NULL;
    }
    std[i] = c;
  }
  memset(std + inlen, '=', pad);
  std[stdlen] = '\0';

  n = EVP_DecodeBlock(out, (unsigned char *) std, (int) stdlen);
  free(std);

  if (n < 0 || (size_t) n < pad) {
    free(out);
    errno = EINVAL;
    return NULL;
  }

  /* EVP_DecodeBlock() counts the padding as zero bytes. */
  *outlen = (size_t) n - pad;
  out[*outlen] = '\0';
  return out;
}

static int identity_from_claims(json_t *claims,
    struct mailoauth_oauth_identity *id) {
  static const char *user_claims[] = { "preferred_username", "upn", "email",
    "unique_name" };
  unsigned int i;

  for (i = 0; i < sizeof(user_claims) / sizeof(user_claims[0]); i++) {
    if (id->username == NULL &&
        json_str(claims, user_claims[i], &id->username) < 0) {
      return -1;
    }
  }

  if (json_str(claims, "email", &id->email) < 0 ||
      json_str(claims, "name", &id->name) < 0 ||
      json_str(claims, "tid", &id->tenant) < 0 ||
      json_str(claims, "oid", &id->oid) < 0) {
    return -1;
  }

  /* Google: hosted domain and subject instead of tenant and object id. */
  if ((id->tenant == NULL && json_str(claims, "hd", &id->tenant) < 0) ||
      (id->oid == NULL && json_str(claims, "sub", &id->oid) < 0)) {
    return -1;
  }

  return 0;
}

/* The id_token's signature is not verified: it came over a verified TLS
 * connection straight from the token endpoint in answer to our own request
 * (OpenID Connect Core 3.1.3.7 allows TLS server validation in place of the
 * signature here), and it is only used to show who signed in, never to
 * grant anything.
 */
int mailoauth_oauth_decode_id_token(const char *id_token,
    struct mailoauth_oauth_identity *identity) {
  const char *p1, *p2;
  unsigned char *payload;
  size_t len;
  json_t *claims;
  json_error_t jerr;
  int res;

  if (id_token == NULL || identity == NULL) {
    errno = EINVAL;
    return -1;
  }

  mailoauth_oauth_identity_clear(identity);

  p1 = strchr(id_token, '.');
  p2 = p1 != NULL ? strchr(p1 + 1, '.') : NULL;
  if (p2 == NULL) {
    errno = EINVAL;
    return -1;
  }

  payload = b64url_decode(p1 + 1, (size_t) (p2 - p1 - 1), &len);
  if (payload == NULL) {
    return -1;
  }

  claims = json_loadb((const char *) payload, len, 0, &jerr);
  free(payload);

  if (!json_is_object(claims)) {
    json_decref(claims);
    errno = EINVAL;
    return -1;
  }

  res = identity_from_claims(claims, identity);
  json_decref(claims);

  if (res < 0) {
    mailoauth_oauth_identity_clear(identity);
  }
  return res;
}

static int parse_token_success(json_t *json, time_t now,
    struct mailoauth_oauth_response *resp) {
  json_t *id_token;

  if (json_str(json, "access_token", &resp->access_token) < 0 ||
      json_str(json, "refresh_token", &resp->refresh_token) < 0 ||
      json_str(json, "token_type", &resp->token_type) < 0 ||
      json_str(json, "scope", &resp->scope) < 0) {
    return -1;
  }

  if (is_blank(resp->access_token)) {
    snprintf(resp->detail, sizeof(resp->detail),
      "the token endpoint's answer has no access token");
    resp->oauth_class = MAILOAUTH_OAUTH_TRANSIENT;
    return 0;
  }

  /* An empty refresh token is no refresh token: keep the old one. */
  if (resp->refresh_token != NULL && resp->refresh_token[0] == '\0') {
    secret_free(&resp->refresh_token);
  }

  resp->expires_in = json_seconds(json, "expires_in", 0);
  resp->expires_at = resp->expires_in > 0 ? now + resp->expires_in : 0;

  id_token = json_object_get(json, "id_token");
  if (json_is_string(id_token) &&
      mailoauth_oauth_decode_id_token(json_string_value(id_token),
        &resp->identity) < 0) {
    if (errno == ENOMEM) {
      return -1;
    }
    mailoauth_trace(trace_channel, 3,
      "id_token in the token response is unreadable; signed-in identity "
      "unknown");
  }

  resp->oauth_class = MAILOAUTH_OAUTH_OK;
  return 0;
}

static int parse_device_success(json_t *json, time_t now,
    struct mailoauth_oauth_response *resp) {
  if (json_str(json, "device_code", &resp->device_code) < 0 ||
      json_str(json, "user_code", &resp->user_code) < 0 ||
      json_str(json, "verification_uri", &resp->verification_uri) < 0 ||
      json_str(json, "message", &resp->message) < 0) {
    return -1;
  }

  /* Google calls it verification_url. */
  if (resp->verification_uri == NULL &&
      json_str(json, "verification_url", &resp->verification_uri) < 0) {
    return -1;
  }

  if (is_blank(resp->device_code) || is_blank(resp->user_code) ||
      is_blank(resp->verification_uri)) {
    snprintf(resp->detail, sizeof(resp->detail),
      "the device code endpoint's answer lacks device_code, user_code or "
      "verification_uri");
    resp->oauth_class = MAILOAUTH_OAUTH_TRANSIENT;
    return 0;
  }

  /* RFC 8628 3.2: five seconds when the server does not say. */
  resp->interval = json_seconds(json, "interval", 5);
  if (resp->interval < 1) {
    resp->interval = 5;
  }

  resp->expires_in = json_seconds(json, "expires_in", 0);
  resp->expires_at = resp->expires_in > 0 ? now + resp->expires_in : 0;
  resp->oauth_class = MAILOAUTH_OAUTH_OK;
  return 0;
}

static int parse_error_body(mailoauth_oauth_request_t kind, json_t *json,
    struct mailoauth_oauth_response *resp) {
  json_t *codes, *desc;

  if (json_str(json, "error", &resp->error) < 0 ||
      json_str(json, "suberror", &resp->suberror) < 0 ||
      json_str(json, "trace_id", &resp->trace_id) < 0 ||
      json_str(json, "correlation_id", &resp->correlation_id) < 0) {
    return -1;
  }

  desc = json_object_get(json, "error_description");
  if (json_is_string(desc)) {
    resp->error_description = one_line(json_string_value(desc),
      MAILOAUTH_OAUTH_DESCRIPTION_MAX);
    if (resp->error_description == NULL) {
      return -1;
    }
  }

  codes = json_object_get(json, "error_codes");
  if (json_is_array(codes) && json_is_integer(json_array_get(codes, 0))) {
    json_int_t code = json_integer_value(json_array_get(codes, 0));

    if (code > 0 && code <= LONG_MAX) {
      resp->error_code = (long) code;
    }
  }

  if (resp->error == NULL) {
    snprintf(resp->detail, sizeof(resp->detail),
      "%s answered HTTP %ld without an OAuth error",
      mailoauth_oauth_endpoint_name(kind), resp->http_status);
  }

  resp->oauth_class = mailoauth_oauth_classify(kind, resp->http_status, 0,
    resp->error, resp->error_code);
  return 0;
}

int mailoauth_oauth_parse_response(mailoauth_oauth_request_t kind,
    long http_status, const char *body, size_t len, const char *retry_after,
    time_t now, struct mailoauth_oauth_response *resp) {
  json_t *json = NULL;
  json_error_t jerr;
  int res;

  if (resp == NULL || (body == NULL && len > 0)) {
    errno = EINVAL;
    return -1;
  }

  mailoauth_oauth_response_clear(resp);
  resp->request = kind;
  resp->http_status = http_status;
  resp->retry_after = mailoauth_oauth_parse_retry_after(retry_after, now);

  if (body != NULL && len > 0) {
    json = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
  }

  if (!json_is_object(json)) {
    /* Never quote the body or jansson's message (which quotes the body):
     * either could hold a token.
     */
    snprintf(resp->detail, sizeof(resp->detail),
      "%s answered HTTP %ld with %s (%lu bytes)",
      mailoauth_oauth_endpoint_name(kind), http_status,
      len == 0 ? "an empty body" : "a body that is not a JSON object",
      (unsigned long) len);
    resp->oauth_class = mailoauth_oauth_classify(kind, http_status, 0, NULL, 0);
    json_decref(json);
    errno = mailoauth_oauth_class_errno(resp->oauth_class);
    return -1;
  }

  if (http_status >= 200 && http_status < 300 &&
      json_object_get(json, "error") == NULL) {
    res = kind == MAILOAUTH_OAUTH_REQ_DEVICE_START ?
      parse_device_success(json, now, resp) :
      parse_token_success(json, now, resp);

  } else {
    res = parse_error_body(kind, json, resp);
  }

  json_decref(json);

  if (res < 0) {
    int xerrno = errno;

    mailoauth_oauth_response_clear(resp);
    resp->oauth_class = MAILOAUTH_OAUTH_TRANSIENT;
    snprintf(resp->detail, sizeof(resp->detail), "out of memory");
    errno = xerrno;
    return -1;
  }

  if (resp->oauth_class != MAILOAUTH_OAUTH_OK) {
    errno = mailoauth_oauth_class_errno(resp->oauth_class);
    return -1;
  }
  return 0;
}

/* ------------------------------------------------------------------------
 * jansson memory that is wiped when freed.
 */

union wipe_header {
  size_t size;
  long double align_ld;
  void *align_p;
  long long align_ll;
};

static void *wipe_malloc(size_t size) {
  union wipe_header *h;

  if (size > SIZE_MAX - sizeof(*h)) {
    return NULL;
  }

  h = malloc(sizeof(*h) + size);
  if (h == NULL) {
    return NULL;
  }

  h->size = size;
  return h + 1;
}

static void wipe_free(void *ptr) {
  union wipe_header *h;

  if (ptr == NULL) {
    return;
  }

  h = (union wipe_header *) ptr - 1;
  OPENSSL_cleanse(ptr, h->size);
  free(h);
}

/* jansson keeps its own copies of every string it parses or builds; with
 * this they are wiped when freed.  Process-wide, and must come before any
 * other jansson use, so only the program's main() may decide it.
 */
int mailoauth_oauth_wipe_json_memory(void) {
  json_malloc_t cur_malloc = NULL;
  json_free_t cur_free = NULL;

  json_get_alloc_funcs(&cur_malloc, &cur_free);
  if (cur_malloc == wipe_malloc) {
    return 0;
  }

  json_set_alloc_funcs(wipe_malloc, wipe_free);
  return 0;
}

/* ------------------------------------------------------------------------
 * Requests.
 */

struct mailoauth_oauth_ctx {
  struct mailoauth_oauth_config cfg;   /* strings below are ours */
  char *authority;
  char *tenant;
  char *client_id;
  char *client_secret;
  char *client_key_pem;
  char *client_cert_pem;
  char *assertion;      /* the current request's; wiped after it */
  char *scopes;
  char *token_url;
  char *devicecode_url;
  char *ca_file;
  char *proxy;
  char *user_agent;

  CURL *curl;
  struct curl_slist *headers;
  struct mailoauth_buf body;
  struct mailoauth_buf reply;
  int reply_overflow;
  char retry_after[64];
  char curl_err[CURL_ERROR_SIZE];
};

static size_t write_cb(char *data, size_t size, size_t nmemb, void *user) {
  struct mailoauth_oauth_ctx *ctx = user;
  size_t n = size * nmemb;

  if (n > ctx->cfg.max_response - ctx->reply.len ||
      ctx->reply.len > ctx->cfg.max_response) {
    ctx->reply_overflow = 1;
    return 0;
  }

  if (mailoauth_buf_add(&ctx->reply, data, n) < 0) {
    return 0;
  }
  return n;
}

/* Keep only Retry-After; every new status line (after a proxy's CONNECT
 * answer, say) starts over.
 */
static size_t header_cb(char *data, size_t size, size_t nitems, void *user) {
  struct mailoauth_oauth_ctx *ctx = user;
  size_t n = size * nitems;
  static const char name[] = "Retry-After:";

  if (n >= 5 && strncmp(data, "HTTP/", 5) == 0) {
    ctx->retry_after[0] = '\0';

  } else if (n > sizeof(name) - 1 &&
             strncasecmp(data, name, sizeof(name) - 1) == 0) {
    size_t vlen = n - (sizeof(name) - 1);

    if (vlen >= sizeof(ctx->retry_after)) {
      vlen = sizeof(ctx->retry_after) - 1;
    }

    memcpy(ctx->retry_after, data + sizeof(name) - 1, vlen);
    ctx->retry_after[vlen] = '\0';
  }

  return n;
}

static int ctx_copy_config(struct mailoauth_oauth_ctx *ctx,
    const struct mailoauth_oauth_config *cfg) {
  ctx->cfg = *cfg;

  if (str_dup(&ctx->authority, cfg->authority) < 0 ||
      str_dup(&ctx->tenant, cfg->tenant) < 0 ||
      str_dup(&ctx->client_id, cfg->client_id) < 0 ||
      str_dup(&ctx->client_secret, cfg->client_secret) < 0 ||
      str_dup(&ctx->client_key_pem, cfg->client_key_pem) < 0 ||
      str_dup(&ctx->client_cert_pem, cfg->client_cert_pem) < 0 ||
      str_dup(&ctx->ca_file, cfg->ca_file) < 0 ||
      str_dup(&ctx->proxy, cfg->proxy) < 0 ||
      str_dup(&ctx->user_agent,
        cfg->user_agent != NULL ? cfg->user_agent : "mod_mailoauth") < 0) {
    return -1;
  }

  ctx->cfg.authority = ctx->authority;
  ctx->cfg.tenant = ctx->tenant;
  ctx->cfg.client_id = ctx->client_id;
  ctx->cfg.client_secret = ctx->client_secret;
  ctx->cfg.client_key_pem = ctx->client_key_pem;
  ctx->cfg.client_cert_pem = ctx->client_cert_pem;
  ctx->cfg.ca_file = ctx->ca_file;
  ctx->cfg.proxy = ctx->proxy;
  ctx->cfg.user_agent = ctx->user_agent;

  if (mailoauth_oauth_scopes(cfg, &ctx->scopes) < 0 ||
      mailoauth_oauth_token_url(cfg, &ctx->token_url) < 0) {
    return -1;
  }
  ctx->cfg.scopes = ctx->scopes;
  ctx->cfg.token_url = ctx->token_url;

  /* Only some providers/configurations have one. */
  if (mailoauth_oauth_devicecode_url(cfg, &ctx->devicecode_url) < 0) {
    if (errno != ENOENT) {
      return -1;
    }
    ctx->devicecode_url = NULL;
  }
  ctx->cfg.devicecode_url = ctx->devicecode_url;

  /* Not needed after this: the authorize URL is built from a config. */
  ctx->cfg.authorize_url = NULL;

  if (ctx->cfg.connect_timeout_ms == 0) {
    ctx->cfg.connect_timeout_ms = MAILOAUTH_OAUTH_DEFAULT_CONNECT_TIMEOUT_MS;
  }

  if (ctx->cfg.timeout_ms == 0) {
    ctx->cfg.timeout_ms = MAILOAUTH_OAUTH_DEFAULT_TIMEOUT_MS;
  }

  if (ctx->cfg.max_response == 0) {
    ctx->cfg.max_response = MAILOAUTH_OAUTH_DEFAULT_MAX_RESPONSE;
  }

  return 0;
}

static int ctx_setup_curl(struct mailoauth_oauth_ctx *ctx) {
  CURL *c = ctx->curl;
  CURLcode rc = CURLE_OK;

  ctx->headers = curl_slist_append(NULL, "Accept: application/json");

  /* No "Expect: 100-continue" round trip before a large form body. */
  if (ctx->headers != NULL) {
    struct curl_slist *more = curl_slist_append(ctx->headers, "Expect:");

    if (more == NULL) {
      curl_slist_free_all(ctx->headers);
    }
    ctx->headers = more;
  }

  if (ctx->headers == NULL) {
    errno = ENOMEM;
    return -1;
  }

#define SETOPT(opt, val) \
  if (rc == CURLE_OK) rc = curl_easy_setopt(c, opt, val)

#if LIBCURL_VERSION_NUM >= 0x075500
  SETOPT(CURLOPT_PROTOCOLS_STR, "https");
#else
  SETOPT(CURLOPT_PROTOCOLS, (long) CURLPROTO_HTTPS);
#endif
  /* Tokens go to the configured endpoint and nowhere else. */
  SETOPT(CURLOPT_FOLLOWLOCATION, 0L);
  SETOPT(CURLOPT_SSL_VERIFYPEER, 1L);
  SETOPT(CURLOPT_SSL_VERIFYHOST, 2L);
  SETOPT(CURLOPT_SSLVERSION, (long) CURL_SSLVERSION_TLSv1_2);
  SETOPT(CURLOPT_NOSIGNAL, 1L);
  SETOPT(CURLOPT_CONNECTTIMEOUT_MS, ctx->cfg.connect_timeout_ms);
  SETOPT(CURLOPT_TIMEOUT_MS, ctx->cfg.timeout_ms);
  SETOPT(CURLOPT_USERAGENT, ctx->cfg.user_agent);
  SETOPT(CURLOPT_HTTPHEADER, ctx->headers);
  SETOPT(CURLOPT_POST, 1L);
  SETOPT(CURLOPT_WRITEFUNCTION, write_cb);
  SETOPT(CURLOPT_WRITEDATA, ctx);
  SETOPT(CURLOPT_HEADERFUNCTION, header_cb);
  SETOPT(CURLOPT_HEADERDATA, ctx);
  SETOPT(CURLOPT_ERRORBUFFER, ctx->curl_err);

  if (ctx->cfg.ca_file != NULL) {
    SETOPT(CURLOPT_CAINFO, ctx->cfg.ca_file);
  }

  if (ctx->cfg.proxy != NULL) {
    SETOPT(CURLOPT_PROXY, ctx->cfg.proxy);
  }

#undef SETOPT

  if (rc != CURLE_OK) {
    errno = EINVAL;
    return -1;
  }
  return 0;
}

struct mailoauth_oauth_ctx *mailoauth_oauth_ctx_create(
    const struct mailoauth_oauth_config *cfg, char *errbuf, size_t errlen) {
  struct mailoauth_oauth_ctx *ctx;

  if (mailoauth_oauth_config_check(cfg, errbuf, errlen) < 0) {
    return NULL;
  }

  ctx = calloc(1, sizeof(*ctx));
  if (ctx == NULL) {
    mailoauth_errf(errbuf, errlen, "out of memory");
    errno = ENOMEM;
    return NULL;
  }
  /* Request bodies carry secrets and refresh tokens, replies tokens. */
  mailoauth_buf_init(&ctx->body, 1);
  mailoauth_buf_init(&ctx->reply, 1);

  if (ctx_copy_config(ctx, cfg) < 0) {
    int xerrno = errno;

    mailoauth_errf(errbuf, errlen, "cannot set up the token client: %s",
      strerror(xerrno));
    mailoauth_oauth_ctx_destroy(ctx);
    errno = xerrno;
    return NULL;
  }

  ctx->curl = curl_easy_init();
  if (ctx->curl == NULL || ctx_setup_curl(ctx) < 0) {
    mailoauth_errf(errbuf, errlen, "cannot set up libcurl (was curl_global_init() "
      "called, and does libcurl support HTTPS?)");
    mailoauth_oauth_ctx_destroy(ctx);
    errno = EINVAL;
    return NULL;
  }

  return ctx;
}

void mailoauth_oauth_ctx_destroy(struct mailoauth_oauth_ctx *ctx) {
  if (ctx == NULL) {
    return;
  }

  if (ctx->curl != NULL) {
    curl_easy_cleanup(ctx->curl);
  }
  curl_slist_free_all(ctx->headers);

  mailoauth_buf_free(&ctx->body);
  mailoauth_buf_free(&ctx->reply);
  secret_free(&ctx->client_secret);
  secret_free(&ctx->client_key_pem);
  secret_free(&ctx->assertion);
  free(ctx->client_cert_pem);
  free(ctx->authority);
  free(ctx->tenant);
  free(ctx->client_id);
  free(ctx->scopes);
  free(ctx->token_url);
  free(ctx->devicecode_url);
  free(ctx->ca_file);
  free(ctx->proxy);
  free(ctx->user_agent);
  free(ctx);
}

static const char *request_name(mailoauth_oauth_request_t kind) {
  switch (kind) {
    case MAILOAUTH_OAUTH_REQ_REFRESH:
      return "refresh_token";

    case MAILOAUTH_OAUTH_REQ_CLIENT_CREDENTIALS:
      return "client_credentials";

    case MAILOAUTH_OAUTH_REQ_AUTH_CODE:
      return "authorization_code";

    case MAILOAUTH_OAUTH_REQ_DEVICE_START:
      return "device code start";

    case MAILOAUTH_OAUTH_REQ_DEVICE_POLL:
      return "device_code";
  }
  return "unknown";
}

static void scrub_response(struct mailoauth_oauth_response *resp,
    const char *const *secrets) {
  size_t i;

  for (i = 0; secrets[i] != NULL; i++) {
    scrub_secret(resp->error_description, secrets[i]);
    scrub_secret(resp->detail, secrets[i]);
  }
}

static void trace_outcome(struct mailoauth_oauth_ctx *ctx,
    mailoauth_oauth_request_t kind, const struct mailoauth_oauth_response *resp) {
  char line[1024];

  if (resp->oauth_class == MAILOAUTH_OAUTH_OK) {
    if (kind == MAILOAUTH_OAUTH_REQ_DEVICE_START) {
      mailoauth_trace(trace_channel, 8, "device code issued for client %s: "
        "user code %s at %s, expires in %ld s, poll every %ld s",
        ctx->cfg.client_id, resp->user_code, resp->verification_uri,
        resp->expires_in, resp->interval);
      return;
    }

    mailoauth_trace(trace_channel, 8, "%s grant for client %s: access token "
      "valid %ld s, refresh token %s, scope '%s', signed in as %s",
      request_name(kind), ctx->cfg.client_id, resp->expires_in,
      resp->refresh_token != NULL ? "issued" : "not issued",
      resp->scope != NULL ? resp->scope : "",
      resp->identity.username != NULL ? resp->identity.username : "(unknown)");
    return;
  }

  mailoauth_oauth_format_error(resp, NULL, line, sizeof(line));
  mailoauth_trace(trace_channel, resp->oauth_class == MAILOAUTH_OAUTH_PENDING ?
    9 : 3, "%s request for client %s failed: %s", request_name(kind),
    ctx->cfg.client_id, line);
}

/* POST ctx->body to url and parse the answer.  secrets: NULL-terminated
 * list of this request's secrets, kept out of error texts.
 */
static int perform(struct mailoauth_oauth_ctx *ctx,
    mailoauth_oauth_request_t kind, const char *url, time_t now,
    struct mailoauth_oauth_response *resp, const char *const *secrets) {
  CURLcode rc;
  long status = 0;
  int res, xerrno;

  mailoauth_buf_clear(&ctx->reply);
  ctx->reply_overflow = 0;
  ctx->retry_after[0] = '\0';
  ctx->curl_err[0] = '\0';

  mailoauth_trace(trace_channel, 9, "POST %s (%s, client %s)", url,
    request_name(kind), ctx->cfg.client_id);

  curl_easy_setopt(ctx->curl, CURLOPT_URL, url);
  curl_easy_setopt(ctx->curl, CURLOPT_POSTFIELDS, ctx->body.data);
  curl_easy_setopt(ctx->curl, CURLOPT_POSTFIELDSIZE, (long) ctx->body.len);

  rc = curl_easy_perform(ctx->curl);
  mailoauth_buf_clear(&ctx->body);
  curl_easy_getinfo(ctx->curl, CURLINFO_RESPONSE_CODE, &status);

  if (rc != CURLE_OK) {
    mailoauth_oauth_response_clear(resp);
    resp->request = kind;
    resp->curl_code = (int) rc;
    resp->http_status = status;
    resp->oauth_class = mailoauth_oauth_classify(kind, status, (int) rc, NULL,
      0);

    if (ctx->reply_overflow) {
      snprintf(resp->detail, sizeof(resp->detail), "%s's answer is larger "
        "than %lu bytes", mailoauth_oauth_endpoint_name(kind),
        (unsigned long) ctx->cfg.max_response);

    } else {
      snprintf(resp->detail, sizeof(resp->detail), "network error (curl %d): "
        "%.200s", (int) rc, ctx->curl_err[0] != '\0' ? ctx->curl_err :
        curl_easy_strerror(rc));
    }

    res = -1;
    xerrno = mailoauth_oauth_class_errno(resp->oauth_class);

  } else {
    res = mailoauth_oauth_parse_response(kind, status, ctx->reply.data,
      ctx->reply.len, ctx->retry_after[0] != '\0' ? ctx->retry_after : NULL,
      now, resp);
    xerrno = errno;
  }

  mailoauth_buf_clear(&ctx->reply);
  scrub_response(resp, secrets);
  if (ctx->assertion != NULL) {
    const char *more[2] = { ctx->assertion, NULL };

    scrub_response(resp, more);
    secret_free(&ctx->assertion);
  }
  trace_outcome(ctx, kind, resp);

  errno = xerrno;
  return res;
}

/* The client's credential: a secret (client_secret_post, accepted by
 * Microsoft and Google alike) or, with a certificate, a client assertion
 * made for this request to the token endpoint.  -1: a local failure; with
 * *config set, one the configuration must fix (its reason in errbuf).
 */
static int add_client_auth(struct mailoauth_oauth_ctx *ctx, time_t now,
    int *config, char *errbuf, size_t errlen) {
  *config = 0;

  if (buf_add_param(&ctx->body, "client_id", ctx->cfg.client_id) < 0) {
    return -1;
  }

  if (!is_blank(ctx->cfg.client_key_pem)) {
    secret_free(&ctx->assertion);
    if (mailoauth_assertion_make(ctx->cfg.client_key_pem,
          strlen(ctx->cfg.client_key_pem), ctx->cfg.client_cert_pem,
          strlen(ctx->cfg.client_cert_pem), ctx->cfg.client_id,
          ctx->cfg.token_url, now, &ctx->assertion, errbuf, errlen) < 0) {
      *config = errno != ENOMEM;
      return -1;
    }

    return buf_add_param(&ctx->body, "client_assertion_type",
        MAILOAUTH_ASSERTION_TYPE) < 0 ||
      buf_add_param(&ctx->body, "client_assertion", ctx->assertion) < 0 ?
      -1 : 0;
  }

  if (!is_blank(ctx->cfg.client_secret) &&
      buf_add_param(&ctx->body, "client_secret", ctx->cfg.client_secret) < 0) {
    return -1;
  }
  return 0;
}

static int start_request(struct mailoauth_oauth_ctx *ctx,
    struct mailoauth_oauth_response *resp) {
  if (ctx == NULL || resp == NULL) {
    errno = EINVAL;
    return -1;
  }

  mailoauth_buf_clear(&ctx->body);
  return 0;
}

static int local_failure(struct mailoauth_oauth_ctx *ctx,
    struct mailoauth_oauth_response *resp) {
  int xerrno = errno;

  mailoauth_buf_clear(&ctx->body);
  secret_free(&ctx->assertion);
  mailoauth_oauth_response_clear(resp);
  resp->oauth_class = MAILOAUTH_OAUTH_TRANSIENT;
  snprintf(resp->detail, sizeof(resp->detail), "cannot build the request: %s",
    strerror(xerrno));
  errno = xerrno;
  return -1;
}

/* Adds the client's credential; on failure fills resp (CONFIG when the key
 * or certificate is unusable) and returns -1.
 */
static int client_auth(struct mailoauth_oauth_ctx *ctx, time_t now,
    mailoauth_oauth_request_t kind, struct mailoauth_oauth_response *resp) {
  char err[sizeof(resp->detail)];
  int config;

  err[0] = '\0';
  if (add_client_auth(ctx, now, &config, err, sizeof(err)) == 0) {
    return 0;
  }

  if (!config) {
    return local_failure(ctx, resp);
  }

  mailoauth_buf_clear(&ctx->body);
  mailoauth_oauth_response_clear(resp);
  resp->request = kind;
  resp->oauth_class = MAILOAUTH_OAUTH_CONFIG;
  snprintf(resp->detail, sizeof(resp->detail), "the certificate credential "
    "cannot be used: %s", err);
  mailoauth_trace(trace_channel, 3, "%s request for client %s not sent: %s",
    request_name(kind), ctx->cfg.client_id, resp->detail);
  errno = EINVAL;
  return -1;
}

int mailoauth_oauth_refresh(struct mailoauth_oauth_ctx *ctx,
    const char *refresh_token, time_t now,
    struct mailoauth_oauth_response *resp) {
  const char *secrets[3];

  if (start_request(ctx, resp) < 0 || is_blank(refresh_token)) {
    errno = EINVAL;
    return -1;
  }

  if (client_auth(ctx, now, MAILOAUTH_OAUTH_REQ_REFRESH, resp) < 0) {
    return -1;
  }

  if (buf_add_param(&ctx->body, "grant_type", "refresh_token") < 0 ||
      buf_add_param(&ctx->body, "refresh_token", refresh_token) < 0 ||
      buf_add_param(&ctx->body, "scope", ctx->cfg.scopes) < 0) {
    return local_failure(ctx, resp);
  }

  secrets[0] = refresh_token;
  secrets[1] = ctx->cfg.client_secret;
  secrets[2] = NULL;
  return perform(ctx, MAILOAUTH_OAUTH_REQ_REFRESH, ctx->cfg.token_url, now,
    resp, secrets);
}

int mailoauth_oauth_client_credentials(struct mailoauth_oauth_ctx *ctx,
    time_t now, struct mailoauth_oauth_response *resp) {
  const char *secrets[2];

  if (start_request(ctx, resp) < 0 || (is_blank(ctx->cfg.client_secret) &&
      is_blank(ctx->cfg.client_key_pem))) {
    errno = EINVAL;
    return -1;
  }

  if (client_auth(ctx, now, MAILOAUTH_OAUTH_REQ_CLIENT_CREDENTIALS,
      resp) < 0) {
    return -1;
  }

  if (buf_add_param(&ctx->body, "grant_type", "client_credentials") < 0 ||
      buf_add_param(&ctx->body, "scope", ctx->cfg.scopes) < 0) {
    return local_failure(ctx, resp);
  }

  secrets[0] = ctx->cfg.client_secret;
  secrets[1] = NULL;
  return perform(ctx, MAILOAUTH_OAUTH_REQ_CLIENT_CREDENTIALS,
    ctx->cfg.token_url, now, resp, secrets);
}

int mailoauth_oauth_redeem_code(struct mailoauth_oauth_ctx *ctx,
    const char *code, const char *code_verifier, const char *redirect_uri,
    time_t now, struct mailoauth_oauth_response *resp) {
  const char *secrets[4];

  if (start_request(ctx, resp) < 0 || is_blank(code) ||
      is_blank(code_verifier) || is_blank(redirect_uri)) {
    errno = EINVAL;
    return -1;
  }

  if (client_auth(ctx, now, MAILOAUTH_OAUTH_REQ_AUTH_CODE, resp) < 0) {
    return -1;
  }

  /* No scope: the code already carries the consented ones. */
  if (buf_add_param(&ctx->body, "grant_type", "authorization_code") < 0 ||
      buf_add_param(&ctx->body, "code", code) < 0 ||
      buf_add_param(&ctx->body, "redirect_uri", redirect_uri) < 0 ||
      buf_add_param(&ctx->body, "code_verifier", code_verifier) < 0) {
    return local_failure(ctx, resp);
  }

  secrets[0] = code;
  secrets[1] = code_verifier;
  secrets[2] = ctx->cfg.client_secret;
  secrets[3] = NULL;
  return perform(ctx, MAILOAUTH_OAUTH_REQ_AUTH_CODE, ctx->cfg.token_url, now,
    resp, secrets);
}

int mailoauth_oauth_device_start(struct mailoauth_oauth_ctx *ctx, time_t now,
    struct mailoauth_oauth_response *resp) {
  const char *secrets[2];

  if (start_request(ctx, resp) < 0) {
    return -1;
  }

  if (ctx->cfg.devicecode_url == NULL) {
    mailoauth_oauth_response_clear(resp);
    resp->oauth_class = MAILOAUTH_OAUTH_CONFIG;
    snprintf(resp->detail, sizeof(resp->detail),
      "no device code URL is configured");
    errno = ENOENT;
    return -1;
  }

  /* The device authorization request identifies the client only; the
   * secret, where there is one, goes with the polls.
   */
  if (buf_add_param(&ctx->body, "client_id", ctx->cfg.client_id) < 0 ||
      buf_add_param(&ctx->body, "scope", ctx->cfg.scopes) < 0) {
    return local_failure(ctx, resp);
  }

  secrets[0] = ctx->cfg.client_secret;
  secrets[1] = NULL;
  return perform(ctx, MAILOAUTH_OAUTH_REQ_DEVICE_START,
    ctx->cfg.devicecode_url, now, resp, secrets);
}

int mailoauth_oauth_device_poll(struct mailoauth_oauth_ctx *ctx,
    const char *device_code, time_t now,
    struct mailoauth_oauth_response *resp) {
  const char *secrets[3];

  if (start_request(ctx, resp) < 0 || is_blank(device_code)) {
    errno = EINVAL;
    return -1;
  }

  if (client_auth(ctx, now, MAILOAUTH_OAUTH_REQ_DEVICE_POLL, resp) < 0) {
    return -1;
  }

  if (buf_add_param(&ctx->body, "grant_type",
        "urn:ietf:params:oauth:grant-type:device_code") < 0 ||
      buf_add_param(&ctx->body, "device_code", device_code) < 0) {
    return local_failure(ctx, resp);
  }

  secrets[0] = device_code;
  secrets[1] = ctx->cfg.client_secret;
  secrets[2] = NULL;
  return perform(ctx, MAILOAUTH_OAUTH_REQ_DEVICE_POLL, ctx->cfg.token_url,
    now, resp, secrets);
}
