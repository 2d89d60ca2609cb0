/*
 * mod_mailoauth - logging in to SMTP and IMAP with SASL XOAUTH2 (libcurl)
 */

#include "mailoauth/mailauth.h"
#include "mailoauth/trace.h"

#include <ctype.h>
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "mailoauth/jsonwrap.h"
#include <openssl/crypto.h>
#include <openssl/evp.h>

static const char *trace_channel = "mailoauth.mailauth";

/* Longest line kept in a transcript (Exchange's are far shorter). */
#define MAILAUTH_LINE_MAX     400

static int mailauth_blank(const char *s) {
  return s == NULL || *s == '\0';
}

int mailoauth_mailauth_proto(const char *url,
    mailoauth_mailauth_proto_t *proto, int *implicit_tls) {
  static const struct {
    const char *scheme;
    mailoauth_mailauth_proto_t proto;
    int implicit_tls;
  } schemes[] = {
    { "smtp://", MAILOAUTH_MAILAUTH_SMTP, 0 },
    { "smtps://", MAILOAUTH_MAILAUTH_SMTP, 1 },
    { "imap://", MAILOAUTH_MAILAUTH_IMAP, 0 },
    { "imaps://", MAILOAUTH_MAILAUTH_IMAP, 1 }
  };
  size_t i;

  for (i = 0; url != NULL && i < sizeof(schemes) / sizeof(schemes[0]); i++) {
    if (strncasecmp(url, schemes[i].scheme, strlen(schemes[i].scheme)) == 0) {
      if (proto != NULL) {
        *proto = schemes[i].proto;
      }
      if (implicit_tls != NULL) {
        *implicit_tls = schemes[i].implicit_tls;
      }
      return 0;
    }
  }

  errno = EINVAL;
  return -1;
}

/* ------------------------------------------------------------------------
 * Pure functions: hints, challenges, redaction.
 */

struct mailauth_hint {
  const char *match;      /* case-insensitive substring of the line */
  const char *hint;
};

/* First match wins: the specific codes before the general ones. */
static const struct mailauth_hint mailauth_hints[] = {
  { "5.7.139",
    "SMTP AUTH is turned off for this mailbox or the whole tenant (or "
    "Security defaults block it). Turn it on for the mailbox in the "
    "Microsoft 365 admin center (Users > Active users > the mailbox > Mail > "
    "Manage email apps > Authenticated SMTP) or with Exchange Online "
    "PowerShell: Set-CASMailbox -Identity <mailbox> "
    "-SmtpClientAuthenticationDisabled $false; where the tenant turned it "
    "off, the mailbox setting must say so explicitly. Allow up to an hour. "
    "Where the security team keeps SMTP AUTH off, send through Microsoft "
    "Graph instead: transport=graph on the MailOAuthAccount (the app needs "
    "the Mail.Send permission; sign in again)." },
  { "SmtpClientAuthentication is disabled",
    "SMTP AUTH is switched off for the tenant. Turn it on for this mailbox "
    "(Set-CASMailbox -Identity <mailbox> -SmtpClientAuthenticationDisabled "
    "$false), or send through Microsoft Graph instead: transport=graph on "
    "the MailOAuthAccount (the app needs the Mail.Send permission; sign in "
    "again)." },
  { "535 5.7.3 ",
    "Exchange refused the login. Usual causes: the token belongs to another "
    "account than mailbox= (see who signed in with 'ftpmailoauth status'), "
    "the token is for the wrong resource (the scopes must be "
    "https://outlook.office.com/SMTP.Send and IMAP.AccessAsUser.All), or "
    "SMTP AUTH is disabled for the mailbox (Set-CASMailbox -Identity "
    "<mailbox> -SmtpClientAuthenticationDisabled $false)." },
  { "5.2.252",
    "Exchange will not send mail whose From is not the mailbox that signed "
    "in (SendAsDenied). Send from the signed-in mailbox, or give it Send As "
    "rights on the From address: Add-RecipientPermission -Identity <from "
    "address> -Trustee <signed-in mailbox> -AccessRights SendAs." },
  { "SendAsDenied",
    "Exchange will not send mail whose From is not the mailbox that signed "
    "in. Send from the signed-in mailbox, or give it Send As rights on the "
    "From address (Add-RecipientPermission ... -AccessRights SendAs)." },
  { "User is authenticated but not connected",
    "The login worked but Exchange cannot open the mailbox: the account has "
    "no Exchange Online licence or mailbox, IMAP is disabled for it "
    "(Set-CASMailbox -Identity <mailbox> -ImapEnabled $true, or Manage email "
    "apps in the admin center), or, for app-only access, the app's service "
    "principal has no rights on it (New-ServicePrincipal -AppId <client id> "
    "-ObjectId <enterprise application object id>, then "
    "Add-MailboxPermission -Identity <mailbox> -User <service principal "
    "id> -AccessRights FullAccess)." },
  { "draft for a large file refused",
    "A file over 3 MB goes through a draft and an attachment upload "
    "session, which Microsoft Graph allows only with Mail.ReadWrite as well "
    "as Mail.Send. Delegated: add the Microsoft Graph delegated permission "
    "Mail.ReadWrite, put it in scopes= (scopes=\"https://graph.microsoft.com/"
    "Mail.Send https://graph.microsoft.com/Mail.ReadWrite offline_access\") "
    "and sign in again; app-only: the Mail.ReadWrite application permission "
    "with admin consent. Or keep attach= at 3M or less." },
  { "ErrorAccessDenied",
    "Microsoft Graph refused: the token lacks Mail.Send. Delegated: add the "
    "Microsoft Graph delegated permission Mail.Send to the app registration "
    "and sign in again. App-only: add the Mail.Send application permission "
    "and grant admin consent; an application access policy or RBAC for "
    "Applications scope may also exclude this mailbox." },
  { "MailboxNotEnabledForRESTAPI",
    "The mailbox is not an Exchange Online mailbox (on-premises, or no "
    "licence): Graph cannot send from it." },
  { "ErrorInvalidUser",
    "Microsoft Graph does not know this mailbox in the tenant: check "
    "mailbox= (the user principal name)." },
  { "InvalidAuthenticationToken",
    "Microsoft Graph refused the token: it is for another resource or "
    "expired. With transport=graph the account signs in for Graph "
    "(https://graph.microsoft.com/Mail.Send): run the sign-in again after "
    "changing transport=." },
  { "5.7.57",
    "The server wants a login before mail: the login did not happen (no "
    "XOAUTH2 offered after STARTTLS?)." },
  { "5.7.60",
    "The signed-in mailbox may not send as this From address: send from the "
    "signed-in mailbox or grant Send As rights." },
  { "Must issue a STARTTLS",
    "The server wants STARTTLS first: use smtp://host:587 (STARTTLS is "
    "then required) or smtps://host:465." },
  { "AUTHENTICATIONFAILED",
    "The IMAP server refused the token: it expired or was revoked, it was "
    "issued for another account than mailbox=, it lacks "
    "IMAP.AccessAsUser.All (or, app-only, IMAP.AccessAsApp), or IMAP is "
    "disabled for the mailbox." },
  { "5.7.8",
    "The server refused the token: expired or revoked, issued for another "
    "account than mailbox=, or for the wrong resource." },
  { "4.7.0",
    "The server is throttling (Exchange allows about 30 messages a minute "
    "per mailbox): try again later." }
};

static const struct {
  const char *status;
  const char *hint;
} mailauth_challenge_hints[] = {
  { "401",
    "XOAUTH2 error 401: the token is not valid for this mailbox: it expired "
    "or was revoked, it was issued for another account than mailbox=, or "
    "for the wrong resource. The next use refreshes it once; if that does "
    "not help, sign in again as the mailbox." },
  { "400",
    "XOAUTH2 error 400: the server could not read the login (mailbox= "
    "malformed?)." },
  { "403",
    "XOAUTH2 error 403: the token is valid but lacks the permission "
    "(SMTP.Send / IMAP.AccessAsUser.All, or SMTP.SendAsApp / "
    "IMAP.AccessAsApp for app-only)." }
};

static const char *mailauth_strcasestr(const char *hay, const char *needle) {
  size_t n = strlen(needle);

  for (; *hay != '\0'; hay++) {
    if (strncasecmp(hay, needle, n) == 0) {
      return hay;
    }
  }
  return NULL;
}

/* The base64 payload of "334 <b64>" or "+ <b64>", or NULL. */
static const char *mailauth_challenge_payload(const char *line) {
  if (strncmp(line, "334 ", 4) == 0) {
    line += 4;

  } else if (strncmp(line, "+ ", 2) == 0) {
    line += 2;

  } else {
    return NULL;
  }

  while (*line == ' ') {
    line++;
  }
  return *line != '\0' ? line : NULL;
}

static int mailauth_b64decode(const char *in, size_t inlen,
    unsigned char *out, size_t outlen, size_t *len) {
  int n, pad = 0;

  /* EVP_DecodeBlock wants whole quanta and counts the padding as data. */
  if (inlen == 0 || inlen % 4 != 0 || (inlen / 4) * 3 > outlen) {
    return -1;
  }

  n = EVP_DecodeBlock(out, (const unsigned char *) in, (int) inlen);
  if (n < 0) {
    return -1;
  }

  if (in[inlen - 1] == '=') {
    pad++;
    if (in[inlen - 2] == '=') {
      pad++;
    }
  }

  *len = (size_t) n - (size_t) pad;
  return 0;
}

int mailoauth_mailauth_decode_challenge(const char *server_line, char *buf,
    size_t buflen, char *status, size_t statuslen) {
  unsigned char raw[1024];
  const char *payload;
  json_t *json, *st;
  size_t inlen, len = 0, i;

  if (server_line == NULL || buf == NULL || buflen == 0) {
    errno = EINVAL;
    return -1;
  }

  payload = mailauth_challenge_payload(server_line);
  if (payload == NULL) {
    errno = ENOENT;
    return -1;
  }

  inlen = strcspn(payload, " \r\n");
  if (mailauth_b64decode(payload, inlen, raw, sizeof(raw) - 1, &len) < 0) {
    errno = EINVAL;
    return -1;
  }
  raw[len] = '\0';

  json = json_loadb((const char *) raw, len, 0, NULL);
  if (!json_is_object(json)) {
    json_decref(json);
    errno = EINVAL;
    return -1;
  }

  if (status != NULL && statuslen > 0) {
    st = json_object_get(json, "status");
    status[0] = '\0';
    if (json_is_string(st)) {
      snprintf(status, statuslen, "%s", json_string_value(st));

    } else if (json_is_integer(st)) {
      snprintf(status, statuslen, "%lld", (long long) json_integer_value(st));
    }
  }
  json_decref(json);

  /* The server's own words, shown as they are, minus control bytes. */
  for (i = 0; i < len; i++) {
    if (raw[i] < 0x20 || raw[i] == 0x7f) {
      raw[i] = '?';
    }
  }
  snprintf(buf, buflen, "%s", (const char *) raw);
  return 0;
}

const char *mailoauth_mailauth_hint(const char *server_line) {
  char json[512], status[16];
  size_t i;

  if (server_line == NULL) {
    return NULL;
  }

  if (mailoauth_mailauth_decode_challenge(server_line, json, sizeof(json),
      status, sizeof(status)) == 0) {
    for (i = 0; i < sizeof(mailauth_challenge_hints) /
        sizeof(mailauth_challenge_hints[0]); i++) {
      if (strcmp(status, mailauth_challenge_hints[i].status) == 0) {
        return mailauth_challenge_hints[i].hint;
      }
    }
    return NULL;
  }

  for (i = 0; i < sizeof(mailauth_hints) / sizeof(mailauth_hints[0]); i++) {
    if (mailauth_strcasestr(server_line, mailauth_hints[i].match) != NULL) {
      return mailauth_hints[i].hint;
    }
  }
  return NULL;
}

/* A client command split into its IMAP tag (if any), verb and the rest. */
struct mailauth_command {
  char tag[16];
  char verb[16];
  const char *args;     /* after the verb's space; "" when none */
  size_t args_len;
};

static int mailauth_parse_command(mailoauth_mailauth_proto_t proto,
    const char *line, size_t len, struct mailauth_command *cmd) {
  size_t i = 0, n;

  memset(cmd, 0, sizeof(*cmd));
  cmd->args = "";

  if (proto == MAILOAUTH_MAILAUTH_IMAP) {
    for (n = 0; i < len && isalnum((unsigned char) line[i]); i++, n++) {
      if (n + 1 >= sizeof(cmd->tag)) {
        return -1;
      }
      cmd->tag[n] = line[i];
    }

    if (n == 0 || i >= len || line[i] != ' ') {
      return -1;
    }
    i++;
  }

  for (n = 0; i < len && isalpha((unsigned char) line[i]); i++, n++) {
    if (n + 1 >= sizeof(cmd->verb)) {
      return -1;
    }
    cmd->verb[n] = (char) toupper((unsigned char) line[i]);
  }

  if (n == 0 || (i < len && line[i] != ' ')) {
    return -1;
  }

  if (i < len) {
    cmd->args = line + i + 1;
    cmd->args_len = len - i - 1;
  }
  return 0;
}

static int mailauth_is_auth(const struct mailauth_command *cmd) {
  return strcmp(cmd->verb, "AUTH") == 0 ||
    strcmp(cmd->verb, "AUTHENTICATE") == 0;
}

/* Commands whose arguments hold no credential. */
static int mailauth_shown(mailoauth_mailauth_proto_t proto,
    const char *verb) {
  static const char *smtp[] = {
    "EHLO", "HELO", "STARTTLS", "QUIT", "NOOP", "RSET", "MAIL", "RCPT",
    "DATA", "VRFY", "EXPN", "HELP", NULL
  };
  static const char *imap[] = {
    "CAPABILITY", "STARTTLS", "LOGOUT", "NOOP", "EXAMINE", "SELECT", "LIST",
    "LSUB", "STATUS", "UID", "SEARCH", "FETCH", "STORE", "EXPUNGE", "CLOSE",
    "MOVE", "COPY", "ENABLE", "ID", NULL
  };
  const char **list = proto == MAILOAUTH_MAILAUTH_IMAP ? imap : smtp;
  size_t i;

  for (i = 0; list[i] != NULL; i++) {
    if (strcmp(list[i], verb) == 0) {
      return 1;
    }
  }
  return 0;
}

void mailoauth_mailauth_redact(mailoauth_mailauth_proto_t proto,
    const char *client_line, char *buf, size_t buflen) {
  struct mailauth_command cmd;
  const char *tag_sep;
  size_t len, mech_len;

  if (buf == NULL || buflen == 0) {
    return;
  }
  buf[0] = '\0';

  if (client_line == NULL) {
    return;
  }

  len = strcspn(client_line, "\r\n");
  if (mailauth_parse_command(proto, client_line, len, &cmd) < 0) {
    snprintf(buf, buflen, "[hidden]");
    return;
  }

  tag_sep = cmd.tag[0] != '\0' ? " " : "";

  if (mailauth_is_auth(&cmd)) {
    /* The mechanism name, never what follows it. */
    mech_len = 0;
    while (mech_len < cmd.args_len && mech_len < 32 &&
           (isalnum((unsigned char) cmd.args[mech_len]) ||
            cmd.args[mech_len] == '-' || cmd.args[mech_len] == '_')) {
      mech_len++;
    }

    snprintf(buf, buflen, "%s%s%s %.*s%s", cmd.tag, tag_sep, cmd.verb,
      (int) mech_len, cmd.args, cmd.args_len > mech_len ?
      " [initial response hidden]" : "");
    return;
  }

  /* An unknown "command" may be a piece of a credential: show none of it. */
  if (strcmp(cmd.verb, "LOGIN") == 0) {
    snprintf(buf, buflen, "%s%sLOGIN [hidden]", cmd.tag, tag_sep);
    return;
  }

  if (!mailauth_shown(proto, cmd.verb)) {
    snprintf(buf, buflen, "[hidden]");
    return;
  }

  snprintf(buf, buflen, "%s%s%s%s%.*s", cmd.tag, tag_sep, cmd.verb,
    cmd.args_len > 0 ? " " : "",
    (int) (cmd.args_len > MAILAUTH_LINE_MAX ? MAILAUTH_LINE_MAX :
      cmd.args_len), cmd.args);
}

/* ------------------------------------------------------------------------
 * Transcripts.
 */

void mailoauth_mailauth_transcript_clear(
    struct mailoauth_mailauth_transcript *tr) {
  if (tr == NULL) {
    return;
  }

  free(tr->text);
  memset(tr, 0, sizeof(*tr));
}

static void mailauth_append(struct mailoauth_mailauth_transcript *tr,
    const char *prefix, const char *line) {
  size_t need = strlen(prefix) + strlen(line) + 2;

  if (tr->len + need + 1 > MAILOAUTH_MAILAUTH_TRANSCRIPT_MAX) {
    return;
  }

  if (tr->len + need + 1 > tr->size) {
    size_t size = tr->size > 0 ? tr->size * 2 : 4096;
    char *bigger;

    while (size < tr->len + need + 1) {
      size *= 2;
    }

    bigger = realloc(tr->text, size);
    if (bigger == NULL) {
      return;
    }
    tr->text = bigger;
    tr->size = size;
  }

  tr->len += (size_t) snprintf(tr->text + tr->len, tr->size - tr->len,
    "%s%s\n", prefix, line);
}

/* One line, without its line end or control bytes, at most
 * MAILAUTH_LINE_MAX bytes.
 */
static void mailauth_clean_line(const char *data, size_t size, char *out,
    size_t outlen) {
  size_t i, n = 0;

  for (i = 0; i < size && n + 1 < outlen && n < MAILAUTH_LINE_MAX; i++) {
    unsigned char c = (unsigned char) data[i];

    if (c == '\r' || c == '\n') {
      break;
    }
    out[n++] = (c < 0x20 || c == 0x7f) ? '?' : (char) c;
  }
  out[n] = '\0';
}

static void mailauth_server_line(struct mailoauth_mailauth_transcript *tr,
    const char *line) {
  char status[16];
  size_t tlen;

  mailauth_append(tr, "S: ", line);
  snprintf(tr->last_reply, sizeof(tr->last_reply), "%s", line);

  if (mailoauth_mailauth_decode_challenge(line, tr->challenge,
      sizeof(tr->challenge), status, sizeof(status)) == 0) {
    return;
  }

  if (tr->proto == MAILOAUTH_MAILAUTH_SMTP) {
    if (strncmp(line, "235", 3) == 0) {
      tr->authenticated = 1;
    }

    if (strncmp(line, "334", 3) != 0) {
      tr->in_sasl = 0;
    }
    return;
  }

  tlen = strlen(tr->auth_tag);
  if (tlen > 0 &&
      strncmp(line, tr->auth_tag, tlen) == 0 &&
      line[tlen] == ' ') {
    tr->in_sasl = 0;
    tr->auth_tag[0] = '\0';
    if (strncasecmp(line + tlen + 1, "OK", 2) == 0) {
      tr->authenticated = 1;
    }
  }
}

static void mailauth_server_data(struct mailoauth_mailauth_transcript *tr,
    const char *data, size_t size) {
  char line[MAILAUTH_LINE_MAX + 1];

  while (size > 0) {
    const char *nl = memchr(data, '\n', size);
    size_t n = nl != NULL ? (size_t) (nl - data) + 1 : size;

    mailauth_clean_line(data, n, line, sizeof(line));
    if (line[0] != '\0') {
      mailauth_server_line(tr, line);
    }

    data += n;
    size -= n;
  }
}

/* Every credential stays out: the SASL exchange is hidden as a whole, and
 * the rest of a command written in pieces is never shown.
 */
static void mailauth_client_data(struct mailoauth_mailauth_transcript *tr,
    const char *data, size_t size) {
  struct mailauth_command cmd;
  char shown[MAILAUTH_LINE_MAX + 1];
  int partial = tr->out_partial;
  size_t len;

  tr->out_partial = size == 0 || data[size - 1] != '\n';
  if (partial) {
    return;
  }

  if (tr->in_sasl) {
    mailauth_append(tr, "C: ", "[SASL response hidden]");
    return;
  }

  len = size;
  while (len > 0 && (data[len - 1] == '\n' || data[len - 1] == '\r')) {
    len--;
  }

  if (mailauth_parse_command(tr->proto, data, len, &cmd) == 0 &&
      mailauth_is_auth(&cmd)) {
    tr->in_sasl = 1;
    tr->auth_sent = 1;
    snprintf(tr->auth_tag, sizeof(tr->auth_tag), "%s", cmd.tag);
  }

  /* Redact a bounded copy: the command may be long. */
  {
    char copy[MAILAUTH_LINE_MAX + 1];
    size_t n = len < MAILAUTH_LINE_MAX ? len : MAILAUTH_LINE_MAX;

    memcpy(copy, data, n);
    copy[n] = '\0';
    mailoauth_mailauth_redact(tr->proto, copy, shown, sizeof(shown));
    OPENSSL_cleanse(copy, sizeof(copy));
  }

  mailauth_append(tr, "C: ", shown);
}

static int mailauth_debug_cb(CURL *curl, curl_infotype type, char *data,
    size_t size, void *userp) {
  struct mailoauth_mailauth_transcript *tr = userp;

  (void) curl;

  /* Only the protocol lines: TEXT may quote anything, DATA is mail. */
  switch (type) {
    case CURLINFO_HEADER_IN:
      mailauth_server_data(tr, data, size);
      break;

    case CURLINFO_HEADER_OUT:
      mailauth_client_data(tr, data, size);
      break;

    default:
      break;
  }
  return 0;
}

/* ------------------------------------------------------------------------
 * libcurl.
 */

int mailoauth_mailauth_setup(CURL *curl,
    const struct mailoauth_mailauth_config *cfg,
    struct mailoauth_mailauth_transcript *tr, char *errbuf, size_t errlen) {
  mailoauth_mailauth_proto_t proto;
  CURLcode rc = CURLE_OK;

  if (curl == NULL || cfg == NULL) {
    errno = EINVAL;
    return -1;
  }

  if (mailoauth_mailauth_proto(cfg->url, &proto, NULL) < 0) {
    mailoauth_errf(errbuf, errlen, "mail server URL '%s' must start with "
      "smtp://, smtps://, imap:// or imaps://", cfg->url ? cfg->url : "");
    errno = EINVAL;
    return -1;
  }

  if (mailauth_blank(cfg->username) || mailauth_blank(cfg->bearer)) {
    mailoauth_errf(errbuf, errlen, "a mailbox and an access token are needed "
      "to log in to %s", cfg->url);
    errno = EINVAL;
    return -1;
  }

#define SETOPT(opt, val) \
  if (rc == CURLE_OK) rc = curl_easy_setopt(curl, opt, val)

  SETOPT(CURLOPT_URL, cfg->url);
#if LIBCURL_VERSION_NUM >= 0x075500
  SETOPT(CURLOPT_PROTOCOLS_STR, proto == MAILOAUTH_MAILAUTH_SMTP ?
    "smtp,smtps" : "imap,imaps");
#else
  SETOPT(CURLOPT_PROTOCOLS, proto == MAILOAUTH_MAILAUTH_SMTP ?
    (long) (CURLPROTO_SMTP | CURLPROTO_SMTPS) :
    (long) (CURLPROTO_IMAP | CURLPROTO_IMAPS));
#endif
  /* A bearer token never crosses the network in clear text. */
  SETOPT(CURLOPT_USE_SSL, (long) CURLUSESSL_ALL);
  SETOPT(CURLOPT_SSL_VERIFYPEER, 1L);
  SETOPT(CURLOPT_SSL_VERIFYHOST, 2L);
  SETOPT(CURLOPT_SSLVERSION, (long) CURL_SSLVERSION_TLSv1_2);
  SETOPT(CURLOPT_NOSIGNAL, 1L);
  SETOPT(CURLOPT_CONNECTTIMEOUT_MS, cfg->connect_timeout_ms > 0 ?
    cfg->connect_timeout_ms : MAILOAUTH_MAILAUTH_DEFAULT_CONNECT_TIMEOUT_MS);
  SETOPT(CURLOPT_TIMEOUT_MS, cfg->timeout_ms > 0 ? cfg->timeout_ms :
    MAILOAUTH_MAILAUTH_DEFAULT_TIMEOUT_MS);
  SETOPT(CURLOPT_USERNAME, cfg->username);
  SETOPT(CURLOPT_XOAUTH2_BEARER, cfg->bearer);
  SETOPT(CURLOPT_LOGIN_OPTIONS, "AUTH=XOAUTH2");

  if (!mailauth_blank(cfg->ca_file)) {
    SETOPT(CURLOPT_CAINFO, cfg->ca_file);
  }

  if (tr != NULL) {
    tr->proto = proto;
    SETOPT(CURLOPT_DEBUGFUNCTION, mailauth_debug_cb);
    SETOPT(CURLOPT_DEBUGDATA, tr);
    SETOPT(CURLOPT_VERBOSE, 1L);
  }

#undef SETOPT

  if (rc != CURLE_OK) {
    mailoauth_errf(errbuf, errlen, "cannot set up libcurl for %s: %s", cfg->url,
      curl_easy_strerror(rc));
    errno = EINVAL;
    return -1;
  }

  return 0;
}

static size_t mailauth_discard(char *data, size_t size, size_t nmemb,
    void *user) {
  (void) data;
  (void) user;
  return size * nmemb;
}

/* The server part of an IMAP URL: a mailbox in the path would make
 * libcurl SELECT it (read-write) before our EXAMINE.
 */
static char *mailauth_imap_base(const char *url) {
  CURLU *u = curl_url();
  char *out = NULL, *copy = NULL;

  if (u != NULL &&
      curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
      curl_url_set(u, CURLUPART_PATH, "/", 0) == CURLUE_OK &&
      curl_url_set(u, CURLUPART_QUERY, NULL, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_URL, &out, 0) == CURLUE_OK) {
    copy = strdup(out);
  }

  curl_free(out);
  curl_url_cleanup(u);
  return copy;
}

/* libcurl closes a CONNECT_ONLY connection without a word, which the
 * server logs as a lost connection: say goodbye properly.
 */
static void mailauth_smtp_quit(CURL *curl,
    struct mailoauth_mailauth_transcript *tr) {
  static const char quit[] = "QUIT\r\n";
  char reply[MAILAUTH_LINE_MAX + 1];
  curl_socket_t sock = CURL_SOCKET_BAD;
  size_t sent = 0, have = 0;
  int waited;

  if (curl_easy_getinfo(curl, CURLINFO_ACTIVESOCKET, &sock) != CURLE_OK ||
      sock == CURL_SOCKET_BAD ||
      curl_easy_send(curl, quit, sizeof(quit) - 1, &sent) != CURLE_OK ||
      sent != sizeof(quit) - 1) {
    return;
  }
  mailauth_append(tr, "C: ", "QUIT");

  for (waited = 0; waited < 2000 && have < sizeof(reply) - 1; waited += 50) {
    struct pollfd pfd;
    size_t n = 0;
    CURLcode rc;

    rc = curl_easy_recv(curl, reply + have, sizeof(reply) - 1 - have, &n);
    if (rc == CURLE_OK) {
      if (n == 0) {
        break;
      }
      have += n;
      if (memchr(reply, '\n', have) != NULL) {
        break;
      }
      continue;
    }

    if (rc != CURLE_AGAIN) {
      break;
    }

    pfd.fd = sock;
    pfd.events = POLLIN;
    pfd.revents = 0;
    (void) poll(&pfd, 1, 50);
  }

  if (have > 0) {
    mailauth_server_data(tr, reply, have);
  }
}

static void mailauth_explain(const struct mailoauth_mailauth_config *cfg,
    const struct mailoauth_mailauth_transcript *tr, CURLcode rc,
    const char *curl_err, char *errbuf, size_t errlen) {
  const char *what = tr->proto == MAILOAUTH_MAILAUTH_SMTP ? "SMTP" : "IMAP";

  if (rc == CURLE_OK && !tr->authenticated) {
    mailoauth_errf(errbuf, errlen, "%s server %s did not authenticate us: it "
      "offers no login after TLS", what, cfg->url);

  } else if (rc == CURLE_LOGIN_DENIED && !tr->auth_sent) {
    mailoauth_errf(errbuf, errlen, "%s server %s does not offer XOAUTH2 (last "
      "answer: %s)", what, cfg->url, tr->last_reply);

  } else if (rc == CURLE_LOGIN_DENIED) {
    mailoauth_errf(errbuf, errlen, "%s server %s refused the login as %s%s%s%s",
      what, cfg->url, cfg->username,
      tr->challenge[0] != '\0' ? " (XOAUTH2 error: " : "", tr->challenge,
      tr->challenge[0] != '\0' ? ")" : "");

  } else if (rc == CURLE_QUOTE_ERROR) {
    mailoauth_errf(errbuf, errlen, "logged in to %s as %s, but the mailbox "
      "cannot be opened: %s", cfg->url, cfg->username, tr->last_reply);

  } else if (rc == CURLE_USE_SSL_FAILED) {
    mailoauth_errf(errbuf, errlen, "%s server %s does not offer STARTTLS: not "
      "logging in without TLS", what, cfg->url);

  } else {
    mailoauth_errf(errbuf, errlen, "%s: %s", cfg->url, curl_err[0] != '\0' ?
      curl_err : curl_easy_strerror(rc));
  }
}

int mailoauth_mailauth_test(const struct mailoauth_mailauth_config *cfg,
    struct mailoauth_mailauth_transcript *tr, char *errbuf, size_t errlen) {
  struct mailoauth_mailauth_config conf;
  char curl_err[CURL_ERROR_SIZE] = "";
  char *imap_url = NULL;
  CURLcode rc = CURLE_OK;
  CURL *curl;
  int res = -1;

  if (cfg == NULL || tr == NULL) {
    errno = EINVAL;
    return -1;
  }

  conf = *cfg;
  mailoauth_mailauth_transcript_clear(tr);

  curl = curl_easy_init();
  if (curl == NULL) {
    mailoauth_errf(errbuf, errlen, "cannot set up libcurl");
    errno = ENOMEM;
    return -1;
  }

  if (mailoauth_mailauth_setup(curl, &conf, tr, errbuf, errlen) < 0) {
    goto out;
  }

  if (tr->proto == MAILOAUTH_MAILAUTH_IMAP) {
    imap_url = mailauth_imap_base(conf.url);
    if (imap_url == NULL) {
      mailoauth_errf(errbuf, errlen, "cannot parse IMAP URL '%s'", conf.url);
      goto out;
    }

    /* Untagged answers go to the write function: not needed. */
    rc = curl_easy_setopt(curl, CURLOPT_URL, imap_url);
    if (rc == CURLE_OK) {
      rc = curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, "EXAMINE INBOX");
    }
    if (rc == CURLE_OK) {
      rc = curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, mailauth_discard);
    }

  } else {
    /* Greeting, EHLO, STARTTLS, EHLO, AUTH: all in libcurl's connect
     * phase, which is all CONNECT_ONLY performs.  Nothing is sent.
     */
    rc = curl_easy_setopt(curl, CURLOPT_CONNECT_ONLY, 1L);
  }

  if (rc == CURLE_OK) {
    rc = curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, curl_err);
  }

  if (rc != CURLE_OK) {
    mailoauth_errf(errbuf, errlen, "cannot set up libcurl for %s: %s", conf.url,
      curl_easy_strerror(rc));
    goto out;
  }

  mailoauth_trace(trace_channel, 8, "logging in to %s as %s", conf.url,
    conf.username);
  rc = curl_easy_perform(curl);

  if (rc == CURLE_OK && tr->authenticated) {
    res = 0;
    if (tr->proto == MAILOAUTH_MAILAUTH_SMTP) {
      mailauth_smtp_quit(curl, tr);
    }
    mailoauth_trace(trace_channel, 8, "logged in to %s as %s", conf.url,
      conf.username);

  } else {
    mailauth_explain(&conf, tr, rc, curl_err, errbuf, errlen);
    mailoauth_trace(trace_channel, 5, "login to %s as %s failed: %s",
      conf.url, conf.username, errbuf != NULL ? errbuf : "");
  }

out:
  /* IMAP: says LOGOUT, into the transcript too. */
  curl_easy_cleanup(curl);
  free(imap_url);
  if (res < 0) {
    errno = EPROTO;
  }
  return res;
}
