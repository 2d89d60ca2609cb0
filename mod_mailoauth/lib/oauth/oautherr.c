/*
 * mod_mailoauth - what the token endpoint's answers mean: AADSTS codes and
 * OAuth errors classified (retry, sign in again, fix the configuration),
 * Retry-After and backoff, and the one log line an operator reads
 */

#include "mailoauth/oauth.h"
#include "oauth/oauthint.h"

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <curl/curl.h>
#include <openssl/rand.h>

/* Retry-After values beyond a day are treated as a day: a misbehaving
 * server must not park an account for weeks.
 */
#define MAILOAUTH_OAUTH_RETRY_AFTER_MAX   86400L

/* ------------------------------------------------------------------------
 * Retry-After and backoff.
 */

long mailoauth_oauth_parse_retry_after(const char *value, time_t now) {
  static const char *formats[] = {
    "%a, %d %b %Y %H:%M:%S GMT",   /* IMF-fixdate */
    "%A, %d-%b-%y %H:%M:%S GMT",   /* obsolete RFC 850 */
    "%a %b %e %H:%M:%S %Y"         /* asctime() */
  };
  unsigned int i;

  if (value == NULL) {
    return -1;
  }

  while (*value == ' ' || *value == '\t') {
    value++;
  }

  if (*value >= '0' && *value <= '9') {
    char *end;
    long secs;

    errno = 0;
    secs = strtol(value, &end, 10);
    while (*end == ' ' || *end == '\t' || *end == '\r' || *end == '\n') {
      end++;
    }

    if (*end != '\0') {
      return -1;
    }

    if (errno == ERANGE || secs > MAILOAUTH_OAUTH_RETRY_AFTER_MAX) {
      return MAILOAUTH_OAUTH_RETRY_AFTER_MAX;
    }
    return secs;
  }

  for (i = 0; i < sizeof(formats) / sizeof(formats[0]); i++) {
    struct tm tm;
    const char *end;
    time_t when;

    memset(&tm, 0, sizeof(tm));
    end = strptime(value, formats[i], &tm);
    if (end == NULL) {
      continue;
    }

    while (*end == ' ' || *end == '\t' || *end == '\r' || *end == '\n') {
      end++;
    }

    if (*end != '\0') {
      continue;
    }

    when = timegm(&tm);
    if (when == (time_t) -1) {
      return -1;
    }

    if (when <= now) {
      return 0;
    }

    if (when - now > MAILOAUTH_OAUTH_RETRY_AFTER_MAX) {
      return MAILOAUTH_OAUTH_RETRY_AFTER_MAX;
    }
    return (long) (when - now);
  }

  return -1;
}

static uint32_t default_rand(void *data) {
  unsigned char b[4];

  (void) data;

  /* Without randomness the caller still gets a bounded delay. */
  if (RAND_bytes(b, sizeof(b)) != 1) {
    return UINT32_MAX;
  }

  return ((uint32_t) b[0] << 24) | ((uint32_t) b[1] << 16) |
    ((uint32_t) b[2] << 8) | (uint32_t) b[3];
}

/* Exponential backoff with "full jitter": a uniform delay in
 * [0, min(cap, base * 2^attempt)], so that many accounts failing together
 * do not retry together; a Retry-After from the server is a floor.
 */
long mailoauth_oauth_backoff_ms(unsigned int attempt, long base_ms, long cap_ms,
    long retry_after, mailoauth_oauth_rand_fn rnd, void *rnd_data) {
  long ceiling, delay;
  unsigned int i;

  if (base_ms < 1) {
    base_ms = 1;
  }

  /* Keeps (ceiling + 1) * 2^32 within 64 bits; about 24 days. */
  if (cap_ms < 1) {
    cap_ms = 1;

  } else if (cap_ms > 0x7fffffffL) {
    cap_ms = 0x7fffffffL;
  }

  if (base_ms > cap_ms) {
    base_ms = cap_ms;
  }

  ceiling = base_ms;
  for (i = 0; i < attempt && ceiling < cap_ms; i++) {
    ceiling = ceiling > cap_ms / 2 ? cap_ms : ceiling * 2;
  }

  if (ceiling > cap_ms) {
    ceiling = cap_ms;
  }

  if (rnd == NULL) {
    rnd = default_rand;
  }

  delay = (long) (((uint64_t) rnd(rnd_data) * ((uint64_t) ceiling + 1)) >> 32);

  if (retry_after > 0) {
    long floor_ms;

    if (retry_after > MAILOAUTH_OAUTH_RETRY_AFTER_MAX) {
      retry_after = MAILOAUTH_OAUTH_RETRY_AFTER_MAX;
    }

    floor_ms = retry_after * 1000L;
    if (delay < floor_ms) {
      delay = floor_ms;
    }
  }

  return delay;
}

/* ------------------------------------------------------------------------
 * Classification.
 */

/* What the AADSTS codes mean to an operator.  Classes: REAUTH when a person
 * signing in again fixes it, CONFIG when someone must change the app
 * registration, the tenant or this configuration first.
 *
 * 65001 (no consent) is REAUTH: signing in again shows the consent prompt.
 * Where the tenant does not let users consent, the sign-in then fails with
 * 90094/90095 (admin consent required), which is CONFIG.
 */
static const struct mailoauth_oauth_aadsts aadsts_table[] = {
  { 28000, MAILOAUTH_OAUTH_CONFIG,
    "the scopes mix more than one resource",
    "request only the mail scopes of one host (no Graph scopes)" },
  { 28003, MAILOAUTH_OAUTH_CONFIG,
    "the request carried no scope",
    "configure the scopes to request" },
  { 50000, MAILOAUTH_OAUTH_TRANSIENT,
    "the sign-in service had an internal error",
    "nothing to do: the request is retried later" },
  { 50011, MAILOAUTH_OAUTH_CONFIG,
    "the redirect URI does not match one registered for the app",
    "add the exact redirect URI (scheme, host, port, path) under "
    "Authentication in the app registration" },
  { 50027, MAILOAUTH_OAUTH_CONFIG,
    "the client assertion (certificate credential) is not a valid JWT",
    "check that client-cert= names the RSA key and its certificate" },
  { 50034, MAILOAUTH_OAUTH_REAUTH,
    "the account that signed in does not exist in this tenant",
    "sign in with a mailbox account of this tenant: {cmd}" },
  { 50053, MAILOAUTH_OAUTH_REAUTH,
    "the account is locked or the sign-in was blocked as suspicious",
    "wait for the lock to clear, then sign in again: {cmd}" },
  { 50055, MAILOAUTH_OAUTH_REAUTH,
    "the account's password has expired",
    "change the password, then sign in again: {cmd}" },
  { 50057, MAILOAUTH_OAUTH_REAUTH,
    "the account is disabled",
    "enable the account (or use another), then sign in again: {cmd}" },
  { 50058, MAILOAUTH_OAUTH_REAUTH,
    "no one is signed in for a silent request",
    "sign in again: {cmd}" },
  { 50059, MAILOAUTH_OAUTH_CONFIG,
    "the request does not say which tenant it is for",
    "configure the directory (tenant) ID" },
  { 50072, MAILOAUTH_OAUTH_REAUTH,
    "the account must register for multi-factor authentication",
    "sign in again interactively and complete the registration: {cmd}" },
  { 50074, MAILOAUTH_OAUTH_REAUTH,
    "strong authentication is required",
    "sign in again interactively: {cmd}" },
  { 50076, MAILOAUTH_OAUTH_REAUTH,
    "multi-factor authentication is now required for this account",
    "sign in again interactively: {cmd}" },
  { 50079, MAILOAUTH_OAUTH_REAUTH,
    "the account must register for multi-factor authentication",
    "sign in again interactively and complete the registration: {cmd}" },
  { 50105, MAILOAUTH_OAUTH_CONFIG,
    "the account is not assigned to the app",
    "assign the user to the app under Enterprise applications, or turn "
    "off 'Assignment required'" },
  { 50126, MAILOAUTH_OAUTH_REAUTH,
    "the user name or password is wrong",
    "sign in again: {cmd}" },
  { 50132, MAILOAUTH_OAUTH_REAUTH,
    "the session ended after a password change or expiry",
    "sign in again: {cmd}" },
  { 50158, MAILOAUTH_OAUTH_REAUTH,
    "an external security challenge was not satisfied",
    "sign in again interactively: {cmd}" },
  { 50173, MAILOAUTH_OAUTH_REAUTH,
    "the refresh token was revoked (password change or sign-out by an "
    "administrator)",
    "sign in again: {cmd}" },
  { 50194, MAILOAUTH_OAUTH_CONFIG,
    "the app is single-tenant but the request used a multi-tenant endpoint",
    "configure the directory (tenant) ID instead of 'common' or "
    "'organizations'" },
  { 50196, MAILOAUTH_OAUTH_TRANSIENT,
    "the sign-in service saw too many identical requests",
    "nothing to do: the request is retried later, more slowly" },
  { 53003, MAILOAUTH_OAUTH_CONFIG,
    "a Conditional Access policy blocked the sign-in",
    "an administrator must allow this app or location in Conditional "
    "Access" },
  { 54005, MAILOAUTH_OAUTH_REAUTH,
    "the authorization code was already used",
    "sign in again: {cmd}" },
  { 65001, MAILOAUTH_OAUTH_REAUTH,
    "the app has no consent for the requested permissions",
    "sign in again and accept the consent prompt: {cmd} (where users may "
    "not consent, an administrator must grant admin consent first)" },
  { 65004, MAILOAUTH_OAUTH_DECLINED,
    "the person declined to consent to the app",
    "sign in again and accept the consent prompt: {cmd}" },
  { 70000, MAILOAUTH_OAUTH_REAUTH,
    "the grant is invalid or no longer covers the requested scopes",
    "sign in again: {cmd}" },
  { 70001, MAILOAUTH_OAUTH_CONFIG,
    "the app is disabled or unknown in this tenant",
    "check the application (client) ID and that the app is enabled" },
  { 70002, MAILOAUTH_OAUTH_CONFIG,
    "the app's client credentials were not accepted",
    "check the client ID and secret, and whether the app is a public "
    "client" },
  { 70003, MAILOAUTH_OAUTH_CONFIG,
    "the app is not allowed to use this grant type",
    "check the app registration's platform settings" },
  { 70008, MAILOAUTH_OAUTH_REAUTH,
    "the refresh token expired after 90 days unused or was revoked",
    "sign in again: {cmd}" },
  { 70011, MAILOAUTH_OAUTH_CONFIG,
    "the requested scope is invalid",
    "check the configured scopes (one resource, exact spelling)" },
  { 70012, MAILOAUTH_OAUTH_TRANSIENT,
    "the account service had a server error",
    "nothing to do: the request is retried later" },
  { 70016, MAILOAUTH_OAUTH_PENDING,
    "the person has not finished signing in yet",
    "finish the sign-in in the browser" },
  { 70019, MAILOAUTH_OAUTH_EXPIRED,
    "the device code expired before the sign-in finished",
    "start the sign-in again: {cmd}" },
  { 70043, MAILOAUTH_OAUTH_REAUTH,
    "the refresh token expired under a Conditional Access sign-in "
    "frequency policy",
    "sign in again: {cmd} (or relax the sign-in frequency for this app)" },
  { 90002, MAILOAUTH_OAUTH_CONFIG,
    "the tenant was not found",
    "check the directory (tenant) ID and the cloud (global, US "
    "Government, China)" },
  { 90014, MAILOAUTH_OAUTH_CONFIG,
    "a required field is missing from the request",
    "check the client ID, secret and redirect URI configuration" },
  { 90033, MAILOAUTH_OAUTH_TRANSIENT,
    "the sign-in service had a transient error",
    "nothing to do: the request is retried later" },
  { 90094, MAILOAUTH_OAUTH_CONFIG,
    "an administrator must consent to the app's permissions",
    "an administrator must grant admin consent under API permissions" },
  { 90095, MAILOAUTH_OAUTH_CONFIG,
    "an administrator must consent to the app's permissions",
    "an administrator must grant admin consent under API permissions" },
  { 500011, MAILOAUTH_OAUTH_CONFIG,
    "the mail service is not present in this tenant or cloud",
    "check that the tenant has Exchange Online and that the provider "
    "(global, US Government, China) is right" },
  { 500113, MAILOAUTH_OAUTH_CONFIG,
    "the app has no redirect URI registered",
    "add the redirect URI under Authentication in the app registration" },
  { 501481, MAILOAUTH_OAUTH_REAUTH,
    "the PKCE code verifier does not match the sign-in request",
    "sign in again: {cmd}" },
  { 650057, MAILOAUTH_OAUTH_CONFIG,
    "the app does not list the requested permissions",
    "add the mail permissions (SMTP.Send, IMAP.AccessAsUser.All or the "
    "app-only ones) under API permissions" },
  { 700016, MAILOAUTH_OAUTH_CONFIG,
    "the application (client) ID was not found in the tenant",
    "check the client ID and the tenant ID; a single-tenant app works only "
    "in its own tenant" },
  { 700021, MAILOAUTH_OAUTH_CONFIG,
    "the client assertion names another application than client_id",
    "check the application (client) ID" },
  { 700023, MAILOAUTH_OAUTH_CONFIG,
    "the client assertion's audience is not this token endpoint",
    "check the tenant and the cloud (provider=) configured" },
  { 700024, MAILOAUTH_OAUTH_CONFIG,
    "the client assertion is outside its valid time range",
    "set this server's clock right (NTP): assertions are valid 10 "
    "minutes from the server's now" },
  { 700027, MAILOAUTH_OAUTH_CONFIG,
    "the client assertion's certificate is not registered on the app, or "
    "its signature does not verify",
    "upload the certificate (ftpmailoauth cert ACCOUNT prints its "
    "thumbprint) under Certificates & secrets, or configure the key that "
    "belongs to the uploaded one" },
  { 700082, MAILOAUTH_OAUTH_REAUTH,
    "the refresh token expired after 90 days unused",
    "sign in again: {cmd}" },
  { 700084, MAILOAUTH_OAUTH_REAUTH,
    "the refresh token was issued to a single-page app and expired after "
    "24 hours",
    "register the redirect URI as 'Mobile and desktop' or 'Web', not "
    "'Single-page application', then sign in again: {cmd}" },
  { 900023, MAILOAUTH_OAUTH_CONFIG,
    "the tenant identifier is malformed",
    "configure the directory (tenant) ID or the tenant's domain" },
  { 900144, MAILOAUTH_OAUTH_CONFIG,
    "a required parameter is missing from the request",
    "check the client ID, secret and scopes configuration" },
  { 7000112, MAILOAUTH_OAUTH_CONFIG,
    "the app is disabled",
    "an administrator must enable the app under Enterprise applications" },
  { 7000215, MAILOAUTH_OAUTH_CONFIG,
    "the client secret is wrong",
    "paste the secret's Value, not its Secret ID, from Certificates & "
    "secrets" },
  { 7000218, MAILOAUTH_OAUTH_CONFIG,
    "the app needs a client secret but none was sent",
    "configure the client secret, or turn on 'Allow public client flows' "
    "for device code sign-in" },
  { 7000222, MAILOAUTH_OAUTH_CONFIG,
    "the client secret has expired",
    "create a new secret under Certificates & secrets and configure its "
    "Value" },
  { 9001023, MAILOAUTH_OAUTH_CONFIG,
    "this grant is not supported on the 'common' or 'consumers' endpoint",
    "configure the directory (tenant) ID" },
  { 9002313, MAILOAUTH_OAUTH_CONFIG,
    "the request was malformed",
    "check the configured URLs, client ID and scopes" },
  { 9002326, MAILOAUTH_OAUTH_CONFIG,
    "the redirect URI is registered as a single-page app",
    "register the redirect URI as 'Mobile and desktop' or 'Web', not "
    "'Single-page application'" }
};

#define AADSTS_COUNT (sizeof(aadsts_table) / sizeof(aadsts_table[0]))

const struct mailoauth_oauth_aadsts *mailoauth_oauth_aadsts_lookup(long code) {
  size_t lo = 0, hi = AADSTS_COUNT;

  /* The table is sorted by code. */
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;

    if (aadsts_table[mid].code == code) {
      return &aadsts_table[mid];
    }

    if (aadsts_table[mid].code < code) {
      lo = mid + 1;

    } else {
      hi = mid;
    }
  }

  return NULL;
}

struct error_info {
  const char *error;
  mailoauth_oauth_class_t oauth_class;
  const char *meaning;
  const char *remedy;
};

/* OAuth "error" values (RFC 6749 5.2, RFC 8628 3.5, OpenID Connect), for
 * servers that send no AADSTS code and for codes not in the table above.
 */
static const struct error_info error_table[] = {
  { "invalid_grant", MAILOAUTH_OAUTH_REAUTH,
    "the refresh token or code is expired, revoked or invalid",
    "sign in again: {cmd}" },
  { "interaction_required", MAILOAUTH_OAUTH_REAUTH,
    "the account must sign in interactively",
    "sign in again: {cmd}" },
  { "login_required", MAILOAUTH_OAUTH_REAUTH,
    "the account must sign in interactively",
    "sign in again: {cmd}" },
  { "consent_required", MAILOAUTH_OAUTH_REAUTH,
    "the app has no consent for the requested permissions",
    "sign in again and accept the consent prompt: {cmd}" },
  { "invalid_client", MAILOAUTH_OAUTH_CONFIG,
    "the client ID or client secret was not accepted",
    "check the client ID and secret" },
  { "unauthorized_client", MAILOAUTH_OAUTH_CONFIG,
    "the app may not use this grant or is unknown in this tenant",
    "check the client ID, tenant and the app registration's platforms" },
  { "invalid_scope", MAILOAUTH_OAUTH_CONFIG,
    "the requested scopes are invalid",
    "check the configured scopes" },
  { "invalid_request", MAILOAUTH_OAUTH_CONFIG,
    "{endpoint} refused the request as malformed",
    "check the configured URLs, tenant, client ID and redirect URI" },
  { "invalid_resource", MAILOAUTH_OAUTH_CONFIG,
    "the requested resource is unknown",
    "check the configured scopes" },
  { "invalid_target", MAILOAUTH_OAUTH_CONFIG,
    "the requested resource is unknown",
    "check the configured scopes" },
  { "unsupported_grant_type", MAILOAUTH_OAUTH_CONFIG,
    "the server does not support this grant",
    "check the provider and token URL" },
  { "unsupported_response_type", MAILOAUTH_OAUTH_CONFIG,
    "the server does not support this response type",
    "check the provider and authorize URL" },
  { "bad_verification_code", MAILOAUTH_OAUTH_CONFIG,
    "the device code was not recognised",
    "start the sign-in again: {cmd}" },
  { "temporarily_unavailable", MAILOAUTH_OAUTH_TRANSIENT,
    "the token service is temporarily unavailable",
    "nothing to do: the request is retried later" },
  { "server_error", MAILOAUTH_OAUTH_TRANSIENT,
    "the token service had an internal error",
    "nothing to do: the request is retried later" },
  { "authorization_pending", MAILOAUTH_OAUTH_PENDING,
    "the person has not finished signing in yet",
    "finish the sign-in in the browser" },
  { "slow_down", MAILOAUTH_OAUTH_SLOW_DOWN,
    "the device code is being polled too often",
    "nothing to do: polling slows down" },
  { "authorization_declined", MAILOAUTH_OAUTH_DECLINED,
    "the person declined the sign-in",
    "sign in again and approve it: {cmd}" },
  { "access_denied", MAILOAUTH_OAUTH_DECLINED,
    "the person or an administrator declined the sign-in",
    "sign in again and approve it: {cmd}" },
  { "expired_token", MAILOAUTH_OAUTH_EXPIRED,
    "the device code expired before the sign-in finished",
    "start the sign-in again: {cmd}" },
  { "code_expired", MAILOAUTH_OAUTH_EXPIRED,
    "the device code expired before the sign-in finished",
    "start the sign-in again: {cmd}" }
};

#define ERROR_COUNT (sizeof(error_table) / sizeof(error_table[0]))

static const struct error_info *error_lookup(const char *error) {
  size_t i;

  if (error == NULL) {
    return NULL;
  }

  for (i = 0; i < ERROR_COUNT; i++) {
    if (strcmp(error_table[i].error, error) == 0) {
      return &error_table[i];
    }
  }
  return NULL;
}

static int is_device_poll_class(mailoauth_oauth_class_t c) {
  return c == MAILOAUTH_OAUTH_PENDING || c == MAILOAUTH_OAUTH_SLOW_DOWN ||
    c == MAILOAUTH_OAUTH_DECLINED || c == MAILOAUTH_OAUTH_EXPIRED;
}

/* errno for a failed request: EAGAIN when waiting helps, EPROTO when the
 * server said no.
 */
int mailoauth_oauth_class_errno(mailoauth_oauth_class_t c) {
  return c == MAILOAUTH_OAUTH_TRANSIENT || c == MAILOAUTH_OAUTH_PENDING ||
    c == MAILOAUTH_OAUTH_SLOW_DOWN ? EAGAIN : EPROTO;
}

static mailoauth_oauth_class_t classify_curl(int curl_code) {
  switch ((CURLcode) curl_code) {
    /* Retrying cannot fix these: the URL, the CA bundle or the server's
     * certificate is wrong (or someone is in the middle).
     */
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_NOT_BUILT_IN:
    case CURLE_UNKNOWN_OPTION:
    case CURLE_BAD_FUNCTION_ARGUMENT:
      return MAILOAUTH_OAUTH_CONFIG;

    default:
      return MAILOAUTH_OAUTH_TRANSIENT;
  }
}

static mailoauth_oauth_class_t classify_status(long http_status) {
  if (http_status == 0 || (http_status >= 200 && http_status < 300) ||
      http_status == 408 || http_status == 425 || http_status == 429 ||
      http_status >= 500) {
    /* No answer, a garbled success, or the server asking for patience. */
    return MAILOAUTH_OAUTH_TRANSIENT;
  }

  /* Redirects (not followed: the token endpoint never redirects), 401/403
   * from a proxy, 404 for a wrong tenant or URL: someone must look.
   */
  return MAILOAUTH_OAUTH_CONFIG;
}

/* Only the machine-readable parts count: descriptions are for people and
 * change wording (and language) without notice.
 */
mailoauth_oauth_class_t mailoauth_oauth_classify(mailoauth_oauth_request_t kind,
    long http_status, int curl_code, const char *error, long error_code) {
  const struct mailoauth_oauth_aadsts *code_info;
  const struct error_info *err_info;
  mailoauth_oauth_class_t c;

  if (curl_code != 0) {
    return classify_curl(curl_code);
  }

  err_info = error_lookup(error);
  code_info = error_code != 0 ? mailoauth_oauth_aadsts_lookup(error_code) :
    NULL;

  if (err_info != NULL && is_device_poll_class(err_info->oauth_class)) {
    /* Google answers authorization_pending with 428 and slow_down with 403
     * or 429: the error decides, not the status.
     */
    c = err_info->oauth_class;

  } else if (http_status == 429 || http_status >= 500) {
    c = MAILOAUTH_OAUTH_TRANSIENT;

  } else if (code_info != NULL) {
    c = code_info->oauth_class;

  } else if (err_info != NULL) {
    c = err_info->oauth_class;

  } else if (error != NULL) {
    /* An error we do not know: retrying blindly would hammer the server. */
    c = MAILOAUTH_OAUTH_CONFIG;

  } else {
    c = classify_status(http_status);
  }

  /* With client credentials nobody can sign in: whatever a person would
   * have fixed by signing in, the app registration must fix.
   */
  if (kind == MAILOAUTH_OAUTH_REQ_CLIENT_CREDENTIALS &&
      (c == MAILOAUTH_OAUTH_REAUTH || c == MAILOAUTH_OAUTH_DECLINED)) {
    c = MAILOAUTH_OAUTH_CONFIG;
  }

  return c;
}

/* ------------------------------------------------------------------------
 * The log line.
 */

/* The remedy with "{cmd}" replaced by the caller's sign-in command. */
static void expand_remedy(const char *remedy, const char *cmd, char *out,
    size_t outlen) {
  const char *p = strstr(remedy, "{cmd}");

  if (cmd == NULL) {
    cmd = "the sign-in command";
  }

  if (p == NULL) {
    snprintf(out, outlen, "%s", remedy);
    return;
  }

  snprintf(out, outlen, "%.*s%s%s", (int) (p - remedy), remedy, cmd, p + 5);
}

/* Which endpoint answered: a device-code sign-in starts at its own. */
const char *mailoauth_oauth_endpoint_name(mailoauth_oauth_request_t kind) {
  return kind == MAILOAUTH_OAUTH_REQ_DEVICE_START ?
    "the device-code endpoint" : "the token endpoint";
}

/* The meaning with "{endpoint}" replaced by the endpoint that answered. */
static void expand_endpoint(const char *meaning,
    mailoauth_oauth_request_t kind, char *out, size_t outlen) {
  const char *p = strstr(meaning, "{endpoint}");

  if (p == NULL) {
    snprintf(out, outlen, "%s", meaning);
    return;
  }

  snprintf(out, outlen, "%.*s%s%s", (int) (p - meaning), meaning,
    mailoauth_oauth_endpoint_name(kind), p + 10);
}

static void generic_advice(const struct mailoauth_oauth_response *resp,
    const char **meaning, const char **remedy) {
  switch (resp->oauth_class) {
    case MAILOAUTH_OAUTH_REAUTH:
      *meaning = "the sign-in is no longer valid";
      *remedy = "sign in again: {cmd}";
      break;

    case MAILOAUTH_OAUTH_CONFIG:
      *meaning = resp->curl_code != 0 ?
        "{endpoint} cannot be reached securely as configured" :
        "{endpoint} refused the request";
      *remedy = resp->curl_code != 0 ?
        "check the authority URL, proxy and CA bundle" :
        "check the tenant, client ID, client secret, scopes and the app "
        "registration";
      break;

    case MAILOAUTH_OAUTH_TRANSIENT:
      *meaning = "{endpoint} is unreachable or failing";
      *remedy = "nothing to do: the request is retried later";
      break;

    default:
      *meaning = "the sign-in did not complete";
      *remedy = "sign in again: {cmd}";
      break;
  }
}

static void advice(const struct mailoauth_oauth_response *resp,
    const char **meaning, const char **remedy) {
  const struct mailoauth_oauth_aadsts *code_info;
  const struct error_info *err_info;

  code_info = resp->error_code != 0 ?
    mailoauth_oauth_aadsts_lookup(resp->error_code) : NULL;
  err_info = error_lookup(resp->error);

  /* Prefer the entry that agrees with the class actually decided. */
  if (code_info != NULL && code_info->oauth_class == resp->oauth_class) {
    *meaning = code_info->meaning;
    *remedy = code_info->remedy;

  } else if (err_info != NULL && err_info->oauth_class == resp->oauth_class) {
    *meaning = err_info->meaning;
    *remedy = err_info->remedy;

  } else {
    generic_advice(resp, meaning, remedy);
    if (code_info != NULL) {
      *meaning = code_info->meaning;
    }
  }
}

int mailoauth_oauth_format_error(const struct mailoauth_oauth_response *resp,
    const char *signin_cmd, char *buf, size_t buflen) {
  const char *meaning, *remedy;
  char remedy_text[512], meaning_text[256], code_text[32], http_text[32],
    ids[200];

  if (resp == NULL || buf == NULL || buflen == 0) {
    errno = EINVAL;
    return -1;
  }

  if (resp->oauth_class == MAILOAUTH_OAUTH_OK) {
    return snprintf(buf, buflen, "ok");
  }

  advice(resp, &meaning, &remedy);
  expand_remedy(remedy, signin_cmd, remedy_text, sizeof(remedy_text));
  expand_endpoint(meaning, resp->request, meaning_text, sizeof(meaning_text));

  code_text[0] = ids[0] = '\0';
  if (resp->error_code != 0) {
    snprintf(code_text, sizeof(code_text), "AADSTS%ld ", resp->error_code);
  }

  if (resp->http_status != 0) {
    snprintf(http_text, sizeof(http_text), "HTTP %ld", resp->http_status);

  } else {
    snprintf(http_text, sizeof(http_text), "no HTTP answer");
  }

  /* Safe to log, and what Microsoft support asks for. */
  if (resp->trace_id != NULL || resp->correlation_id != NULL) {
    snprintf(ids, sizeof(ids), "; trace_id=%.64s correlation_id=%.64s",
      resp->trace_id != NULL ? resp->trace_id : "-",
      resp->correlation_id != NULL ? resp->correlation_id : "-");
  }

  /* class: meaning [AADSTSn error, HTTP n]; remedy: ...; detail;
   * server said: "..."; trace_id=... correlation_id=...
   */
  return snprintf(buf, buflen, "%s: %s [%s%s%s%s]; remedy: %s%s%s%s%s%s%s",
    mailoauth_oauth_class_name(resp->oauth_class), meaning_text, code_text,
    resp->error != NULL ? resp->error : "", resp->error != NULL ? ", " : "",
    http_text, remedy_text,
    resp->detail[0] != '\0' ? "; " : "", resp->detail,
    resp->error_description != NULL ? "; server said: \"" : "",
    resp->error_description != NULL ? resp->error_description : "",
    resp->error_description != NULL ? "\"" : "", ids);
}

