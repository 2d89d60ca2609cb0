/*
 * mod_mailoauth - OAuth2 token endpoint client
 *
 * Talks to the Microsoft identity platform (global, US Government, China),
 * Google, or a generic OAuth2 server: builds the browser sign-in URL (PKCE
 * S256), redeems authorization codes, runs the device code flow, refreshes
 * tokens and gets app-only tokens with client credentials.  It also turns
 * every failure into one of a few classes the caller acts on (sign in again,
 * fix the configuration, retry later) and into one log line a person can act
 * on.
 *
 * No ProFTPD headers: used by the module's worker process and by the
 * command-line sign-in tool.
 *
 * Process-wide set-up is the caller's job, once, before any context exists:
 * curl_global_init(CURL_GLOBAL_DEFAULT) (libcurl's global state is not
 * thread-safe to initialise, and only the program knows when it is alone),
 * and optionally mailoauth_oauth_wipe_json_memory().
 *
 * Secrets (client secret, private key, client assertion, access token, refresh token, authorization code,
 * code_verifier, device_code) never appear in trace lines, in `detail` or in
 * the text made by mailoauth_oauth_format_error().
 */

#ifndef MOD_MAILOAUTH_OAUTH_H
#define MOD_MAILOAUTH_OAUTH_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

typedef enum {
  MAILOAUTH_OAUTH_PROVIDER_MICROSOFT = 0,
  MAILOAUTH_OAUTH_PROVIDER_MICROSOFT_USGOV,
  MAILOAUTH_OAUTH_PROVIDER_MICROSOFT_CHINA,
  MAILOAUTH_OAUTH_PROVIDER_GOOGLE,
  MAILOAUTH_OAUTH_PROVIDER_GENERIC
} mailoauth_oauth_provider_t;

typedef enum {
  /* A person signs in once; the refresh token then acts for that mailbox. */
  MAILOAUTH_OAUTH_GRANT_DELEGATED = 0,

  /* Client credentials: the app acts on its own (IMAP.AccessAsApp,
   * SMTP.SendAsApp); no person, no refresh token.
   */
  MAILOAUTH_OAUTH_GRANT_APP_ONLY
} mailoauth_oauth_grant_t;

/* What to do about the outcome of a token request. */
typedef enum {
  MAILOAUTH_OAUTH_OK = 0,
  MAILOAUTH_OAUTH_REAUTH,      /* a person must sign in again */
  MAILOAUTH_OAUTH_CONFIG,      /* the configuration or app registration is wrong */
  MAILOAUTH_OAUTH_TRANSIENT,   /* retry later, with backoff */
  MAILOAUTH_OAUTH_PENDING,     /* device code: the person has not finished yet */
  MAILOAUTH_OAUTH_SLOW_DOWN,   /* device code: poll less often */
  MAILOAUTH_OAUTH_DECLINED,    /* the person refused the sign-in or consent */
  MAILOAUTH_OAUTH_EXPIRED      /* device code: the code expired, start over */
} mailoauth_oauth_class_t;

typedef enum {
  MAILOAUTH_OAUTH_REQ_REFRESH = 0,
  MAILOAUTH_OAUTH_REQ_CLIENT_CREDENTIALS,
  MAILOAUTH_OAUTH_REQ_AUTH_CODE,
  MAILOAUTH_OAUTH_REQ_DEVICE_START,
  MAILOAUTH_OAUTH_REQ_DEVICE_POLL
} mailoauth_oauth_request_t;

#define MAILOAUTH_OAUTH_DEFAULT_CONNECT_TIMEOUT_MS  10000L
#define MAILOAUTH_OAUTH_DEFAULT_TIMEOUT_MS          30000L
#define MAILOAUTH_OAUTH_DEFAULT_MAX_RESPONSE        (64 * 1024)

/* Default Microsoft tenant for delegated sign-in when none is configured:
 * any work or school account.  App-only tokens need the real tenant.
 */
#define MAILOAUTH_OAUTH_DEFAULT_TENANT   "organizations"

/* An account's OAuth settings.  The strings are borrowed by the pure
 * functions and copied by mailoauth_oauth_ctx_create().
 */
struct mailoauth_oauth_config {
  mailoauth_oauth_provider_t provider;
  mailoauth_oauth_grant_t grant;

  /* Scheme and host (and optional port) replacing the provider's sign-in
   * host, e.g. "https://127.0.0.1:8443"; NULL for the provider's own.
   */
  const char *authority;

  /* Microsoft: GUID, domain, "organizations", "common", "consumers". */
  const char *tenant;

  const char *client_id;

  /* NULL for a public client (device code, or "Allow public client flows"). */
  const char *client_secret;

  /* Certificate credentials instead of a secret (assertion.h): the PEM
   * private key and the PEM certificate uploaded to the app registration.
   * Each request then carries a fresh client assertion.
   */
  const char *client_key_pem;
  const char *client_cert_pem;

  /* Space-separated; NULL for the provider's default for the grant. */
  const char *scopes;

  /* The default scopes are Microsoft Graph's (Mail.Send) instead of the
   * Outlook mail servers' (SMTP.Send, IMAP.AccessAsUser.All).
   */
  int graph;

  /* Add "openid email profile" to the default delegated scopes, so the
   * response carries an id_token naming who signed in.
   */
  int want_identity;

  /* Explicit endpoints: required for the generic provider, optional
   * overrides for the others.
   */
  const char *authorize_url;
  const char *token_url;
  const char *devicecode_url;

  /* CA bundle file; NULL for libcurl's default. */
  const char *ca_file;

  /* NULL: libcurl's default (the https_proxy environment variable);
   * "": no proxy at all; otherwise the proxy URL.
   */
  const char *proxy;

  const char *user_agent;        /* NULL: "mod_mailoauth" */

  long connect_timeout_ms;       /* 0: default */
  long timeout_ms;               /* 0: default; the whole request */
  size_t max_response;           /* 0: default; larger answers are refused */
};

/* Who signed in, from the id_token's claims. */
struct mailoauth_oauth_identity {
  char *username;     /* preferred_username, else upn, else email */
  char *email;
  char *name;
  char *tenant;       /* tid (Google: hd) */
  char *oid;          /* oid (Google: sub) */
};

/* The outcome of one token endpoint request.  Zero it once before first
 * use (`= {0}` or memset); every function filling it clears what it held,
 * and mailoauth_oauth_response_clear() releases it, wiping the secrets.
 */
struct mailoauth_oauth_response {
  mailoauth_oauth_class_t oauth_class;
  mailoauth_oauth_request_t request;  /* which request this answers */
  long http_status;          /* 0 when no HTTP answer came */
  int curl_code;             /* CURLcode; 0 when the transfer succeeded */
  long retry_after;          /* seconds from Retry-After; -1 when absent */

  /* Token requests that succeeded. */
  char *access_token;
  char *refresh_token;       /* NULL: none issued, keep the one you have */
  char *token_type;
  char *scope;
  long expires_in;           /* seconds; 0 when the server did not say */
  time_t expires_at;         /* now + expires_in; 0 when unknown */
  struct mailoauth_oauth_identity identity;

  /* Device code start that succeeded (expires_in/expires_at too). */
  char *device_code;
  char *user_code;
  char *verification_uri;
  char *message;             /* the provider's instructions for the person */
  long interval;             /* seconds between polls */

  /* Failures. */
  char *error;               /* OAuth "error", e.g. "invalid_grant" */
  char *suberror;            /* Microsoft "suberror", e.g. "bad_token" */
  char *error_description;   /* one line, capped, CR/LF removed */
  long error_code;           /* first of "error_codes" (AADSTS number); 0 */
  char *trace_id;
  char *correlation_id;
  char detail[256];          /* our words when there is no OAuth error body */
};

/* A known AADSTS code. */
struct mailoauth_oauth_aadsts {
  long code;
  mailoauth_oauth_class_t oauth_class;
  const char *meaning;
  /* "{cmd}" stands for the sign-in command given to format_error. */
  const char *remedy;
};

struct mailoauth_oauth_authorize_params {
  const char *redirect_uri;    /* required, e.g. "http://localhost:8400/" */
  const char *state;           /* required: from mailoauth_oauth_random_state() */
  const char *code_challenge;  /* required: from mailoauth_oauth_pkce_challenge() */
  const char *login_hint;      /* optional: the mailbox expected to sign in */
  const char *prompt;          /* optional: "select_account", "consent", "login" */
};

typedef uint32_t (*mailoauth_oauth_rand_fn)(void *data);

struct mailoauth_oauth_ctx;

/* Names, for logs and for configuration directives. */
const char *mailoauth_oauth_class_name(mailoauth_oauth_class_t oauth_class);
const char *mailoauth_oauth_provider_name(mailoauth_oauth_provider_t provider);

/* "microsoft", "microsoft-usgov", "microsoft-china", "google", "generic"
 * (any case); -1 with errno ENOENT for anything else.
 */
int mailoauth_oauth_provider_parse(const char *name,
  mailoauth_oauth_provider_t *provider);
const char *mailoauth_oauth_grant_name(mailoauth_oauth_grant_t grant);

/* "delegated", "app-only" (or "client_credentials"). */
int mailoauth_oauth_grant_parse(const char *name, mailoauth_oauth_grant_t *grant);

/* Configuration and endpoints.  Pure; results are malloc'd: free() them. */

/* Whether cfg can work at all (URLs https, tenant shape, app-only has a
 * tenant ID and a secret, ...): 0, or -1 with errno EINVAL and the reason in
 * errbuf.  Never quotes the client secret.
 */
int mailoauth_oauth_config_check(const struct mailoauth_oauth_config *cfg,
  char *errbuf, size_t errlen);

/* The scopes requested: cfg->scopes, or the provider's default for the
 * grant.
 */
int mailoauth_oauth_scopes(const struct mailoauth_oauth_config *cfg,
  char **scopes);

/* The token and device code endpoints; -1 with errno ENOENT when the
 * generic provider has no such URL configured.
 */
int mailoauth_oauth_token_url(const struct mailoauth_oauth_config *cfg,
  char **url);
int mailoauth_oauth_devicecode_url(const struct mailoauth_oauth_config *cfg,
  char **url);

/* The URL to open in a browser for a delegated sign-in (authorization code
 * with PKCE S256, response_mode=query; Google adds access_type=offline).
 */
int mailoauth_oauth_authorize_url(const struct mailoauth_oauth_config *cfg,
  const struct mailoauth_oauth_authorize_params *params, char **url);

/* PKCE (RFC 7636) and state, from OpenSSL's RAND_bytes(). */
#define MAILOAUTH_OAUTH_VERIFIER_MIN    43
#define MAILOAUTH_OAUTH_VERIFIER_MAX    128
#define MAILOAUTH_OAUTH_CHALLENGE_LEN   43
#define MAILOAUTH_OAUTH_STATE_LEN       32

/* A code_verifier of len (43-128) characters; bufsz > len. */
int mailoauth_oauth_pkce_verifier(char *buf, size_t bufsz, size_t len);

/* BASE64URL(SHA256(verifier)) without padding; bufsz > 43. */
int mailoauth_oauth_pkce_challenge(const char *verifier, char *buf,
  size_t bufsz);

/* A 32-character random state; bufsz > 32. */
int mailoauth_oauth_random_state(char *buf, size_t bufsz);

/* Parsing and classification.  Pure. */

/* Seconds to wait from a Retry-After value (delay-seconds or HTTP-date,
 * relative to now), at most a day; -1 when absent or unreadable.
 */
long mailoauth_oauth_parse_retry_after(const char *value, time_t now);

/* Who signed in, from an id_token's claims (signature not verified: see
 * oauth.c).  Clears identity first.
 */
int mailoauth_oauth_decode_id_token(const char *id_token,
  struct mailoauth_oauth_identity *identity);

/* The class of an outcome, from the transfer's CURLcode (0: none), the HTTP
 * status, the OAuth "error" and the first AADSTS code; never from the
 * description.  With client credentials, what a sign-in would fix is
 * CONFIG.
 */
mailoauth_oauth_class_t mailoauth_oauth_classify(mailoauth_oauth_request_t kind,
  long http_status, int curl_code, const char *error, long error_code);

/* Fill resp from a token endpoint answer.  0 when resp->oauth_class is OK;
 * otherwise -1 with errno EAGAIN (TRANSIENT, PENDING, SLOW_DOWN) or EPROTO
 * (the others); EINVAL/ENOMEM for bad arguments or memory.
 */
int mailoauth_oauth_parse_response(mailoauth_oauth_request_t kind,
  long http_status, const char *body, size_t len, const char *retry_after,
  time_t now, struct mailoauth_oauth_response *resp);

/* The table entry for an AADSTS code, or NULL. */
const struct mailoauth_oauth_aadsts *mailoauth_oauth_aadsts_lookup(long code);

/* "the token endpoint", or "the device-code endpoint" for the request
 * that starts a device-code sign-in: errors name the one that answered.
 */
const char *mailoauth_oauth_endpoint_name(mailoauth_oauth_request_t kind);

/* One log line for a failed request:
 *   class: meaning [AADSTSn error, HTTP n]; remedy: ...; detail;
 *   server said: "..."; trace_id=... correlation_id=...
 * signin_cmd (e.g. "ftpmailoauth signin sales") is quoted in remedies that
 * need a sign-in; NULL for a generic wording.  Returns what snprintf()
 * returns.
 */
int mailoauth_oauth_format_error(const struct mailoauth_oauth_response *resp,
  const char *signin_cmd, char *buf, size_t buflen);

/* Free everything resp holds, wiping the secrets; resp can be reused. */
void mailoauth_oauth_response_clear(struct mailoauth_oauth_response *resp);
void mailoauth_oauth_identity_clear(struct mailoauth_oauth_identity *identity);

/* Milliseconds to wait before retry number attempt (0 for the first):
 * uniform in [0, min(cap_ms, base_ms * 2^attempt)] ("full jitter"), and at
 * least retry_after seconds when that is positive.  rnd: NULL for
 * RAND_bytes(), or a source returning uniform 32-bit values (for tests).
 */
long mailoauth_oauth_backoff_ms(unsigned int attempt, long base_ms, long cap_ms,
  long retry_after, mailoauth_oauth_rand_fn rnd, void *rnd_data);

/* Make jansson wipe every block it frees.  Process-wide: call it in main()
 * before any other jansson use, if at all.
 */
int mailoauth_oauth_wipe_json_memory(void);

/* Requests.  A context holds one account's settings (copied), one libcurl
 * easy handle reused across requests (keep-alive), and buffers.  Not
 * thread-safe; one context per account per process.
 */
struct mailoauth_oauth_ctx *mailoauth_oauth_ctx_create(
  const struct mailoauth_oauth_config *cfg, char *errbuf, size_t errlen);
void mailoauth_oauth_ctx_destroy(struct mailoauth_oauth_ctx *ctx);

/* Each POSTs a form to the endpoint over HTTPS (certificate verified, no
 * redirects, answers capped at max_response) and fills resp as
 * mailoauth_oauth_parse_response() does; transfer failures are classified
 * too (resp->curl_code).  now: the time expires_at is computed from.
 */

/* grant_type=refresh_token.  resp->refresh_token NULL: keep the old one. */
int mailoauth_oauth_refresh(struct mailoauth_oauth_ctx *ctx,
  const char *refresh_token, time_t now, struct mailoauth_oauth_response *resp);

/* grant_type=client_credentials (app-only). */
int mailoauth_oauth_client_credentials(struct mailoauth_oauth_ctx *ctx,
  time_t now, struct mailoauth_oauth_response *resp);

/* grant_type=authorization_code, with the PKCE verifier and the same
 * redirect_uri as in the authorize URL.
 */
int mailoauth_oauth_redeem_code(struct mailoauth_oauth_ctx *ctx,
  const char *code, const char *code_verifier, const char *redirect_uri,
  time_t now, struct mailoauth_oauth_response *resp);

/* Start a device code sign-in: resp gets device_code, user_code,
 * verification_uri, message, interval, expires_in.
 */
int mailoauth_oauth_device_start(struct mailoauth_oauth_ctx *ctx, time_t now,
  struct mailoauth_oauth_response *resp);

/* Poll once (urn:ietf:params:oauth:grant-type:device_code): PENDING, keep
 * polling every interval; SLOW_DOWN, add 5 s to it (RFC 8628 3.5); OK,
 * tokens; DECLINED or EXPIRED, stop.
 */
int mailoauth_oauth_device_poll(struct mailoauth_oauth_ctx *ctx,
  const char *device_code, time_t now, struct mailoauth_oauth_response *resp);

#endif /* MOD_MAILOAUTH_OAUTH_H */
