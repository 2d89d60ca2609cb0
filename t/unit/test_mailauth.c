/*
 * Unit tests for mod_mailoauth/lib/mail/mailauth.c: the hint table for Exchange
 * Online's answers, XOAUTH2 error challenges, the redaction of client
 * lines, URL schemes, and set-up errors.  Real logins are tested against
 * Dovecot and Postfix in t/integration/test_signin.py.
 */

#include "mailoauth/mailauth.h"
#include "mailoauth/trace.h"

#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOKEN "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.bearer-token-secret"

/* base64('user=alice@contoso.test\x01auth=Bearer ' TOKEN '\x01\x01') starts
 * like this; any part of it is a secret.
 */
#define IR "dXNlcj1hbGljZUBjb250b3NvLnRlc3QBYXV0aD1CZWFyZXIgZXlKMGVYQWlPaUpLVjFRaUxDSmhiR2NpT2lKU1V6STFOaUo5LmJlYXJlci10b2tlbi1zZWNyZXQBAQ=="

/* {"status":"401","schemes":"bearer","scope":"mail"} */
#define CHALLENGE_401 \
  "eyJzdGF0dXMiOiI0MDEiLCJzY2hlbWVzIjoiYmVhcmVyIiwic2NvcGUiOiJtYWlsIn0="

/* {"status":400,"schemes":"Bearer"} */
#define CHALLENGE_400_INT "eyJzdGF0dXMiOjQwMCwic2NoZW1lcyI6IkJlYXJlciJ9"

static void assert_contains(const char *text, const char *part) {
  ck_assert_msg(text != NULL && strstr(text, part) != NULL,
    "'%s' not in '%s'", part, text != NULL ? text : "(null)");
}

START_TEST(test_proto) {
  mailoauth_mailauth_proto_t proto = MAILOAUTH_MAILAUTH_IMAP;
  int tls = -1;

  ck_assert_int_eq(mailoauth_mailauth_proto("smtp://smtp.office365.com:587",
    &proto, &tls), 0);
  ck_assert_int_eq(proto, MAILOAUTH_MAILAUTH_SMTP);
  ck_assert_int_eq(tls, 0);

  ck_assert_int_eq(mailoauth_mailauth_proto("SMTPS://h:465", &proto, &tls), 0);
  ck_assert_int_eq(proto, MAILOAUTH_MAILAUTH_SMTP);
  ck_assert_int_eq(tls, 1);

  ck_assert_int_eq(mailoauth_mailauth_proto("imaps://outlook.office365.com",
    &proto, &tls), 0);
  ck_assert_int_eq(proto, MAILOAUTH_MAILAUTH_IMAP);
  ck_assert_int_eq(tls, 1);

  ck_assert_int_eq(mailoauth_mailauth_proto("imap://h:143", &proto, NULL), 0);
  ck_assert_int_eq(proto, MAILOAUTH_MAILAUTH_IMAP);

  ck_assert_int_eq(mailoauth_mailauth_proto("https://h/", &proto, &tls), -1);
  ck_assert_int_eq(errno, EINVAL);
  ck_assert_int_eq(mailoauth_mailauth_proto("pop3s://h", NULL, NULL), -1);
  ck_assert_int_eq(mailoauth_mailauth_proto(NULL, NULL, NULL), -1);
}
END_TEST

START_TEST(test_hints_exchange) {
  const char *h;

  h = mailoauth_mailauth_hint("535 5.7.139 Authentication unsuccessful, "
    "SmtpClientAuthentication is disabled for the Tenant. Visit "
    "https://aka.ms/smtp_auth_disabled for more information. "
    "[SN4PR0501CA0042.namprd05.prod.outlook.com]");
  assert_contains(h, "Set-CASMailbox");
  assert_contains(h, "-SmtpClientAuthenticationDisabled $false");
  assert_contains(h, "admin center");

  /* 5.7.139 is not mistaken for 5.7.3. */
  h = mailoauth_mailauth_hint("535 5.7.139 Authentication unsuccessful, the "
    "request did not meet the criteria to be authenticated successfully.");
  assert_contains(h, "turned off");

  h = mailoauth_mailauth_hint("535 5.7.3 Authentication unsuccessful "
    "[BN0PR04CA0155.namprd04.prod.outlook.com 2024-05-01T10:00:00.000Z]");
  assert_contains(h, "another account than mailbox=");
  assert_contains(h, "wrong resource");

  h = mailoauth_mailauth_hint("554 5.2.252 SendAsDenied; "
    "ftp@contoso.com not allowed to send as sales@contoso.com; "
    "STOREDRV.Submission.Exception:SendAsDeniedException."
    "MapiExceptionSendAsDenied");
  assert_contains(h, "SendAsDenied");
  assert_contains(h, "Add-RecipientPermission");

  h = mailoauth_mailauth_hint("A3 BAD User is authenticated but not "
    "connected.");
  assert_contains(h, "licence");
  assert_contains(h, "-ImapEnabled $true");
  assert_contains(h, "Add-MailboxPermission");
  assert_contains(h, "FullAccess");

  /* Case does not matter. */
  ck_assert_ptr_nonnull(mailoauth_mailauth_hint("a3 bad user is "
    "AUTHENTICATED but NOT connected"));

  h = mailoauth_mailauth_hint("530 5.7.57 Client not authenticated to send "
    "mail. [DM6PR]");
  ck_assert_ptr_nonnull(h);

  h = mailoauth_mailauth_hint("A2 NO [AUTHENTICATIONFAILED] Authentication "
    "failed.");
  assert_contains(h, "IMAP");
}
END_TEST

START_TEST(test_hints_none) {
  ck_assert_ptr_null(mailoauth_mailauth_hint(NULL));
  ck_assert_ptr_null(mailoauth_mailauth_hint(""));
  ck_assert_ptr_null(mailoauth_mailauth_hint("235 2.7.0 Authentication "
    "successful"));
  ck_assert_ptr_null(mailoauth_mailauth_hint("250-AUTH XOAUTH2 OAUTHBEARER"));
  ck_assert_ptr_null(mailoauth_mailauth_hint("A2 OK Logged in"));
  ck_assert_ptr_null(mailoauth_mailauth_hint("334 "));
  ck_assert_ptr_null(mailoauth_mailauth_hint("+ "));
}
END_TEST

START_TEST(test_challenge_decode) {
  char json[512], status[16];

  ck_assert_int_eq(mailoauth_mailauth_decode_challenge("334 " CHALLENGE_401,
    json, sizeof(json), status, sizeof(status)), 0);
  ck_assert_str_eq(json, "{\"status\":\"401\",\"schemes\":\"bearer\","
    "\"scope\":\"mail\"}");
  ck_assert_str_eq(status, "401");

  /* IMAP's continuation; the status pointer is optional. */
  ck_assert_int_eq(mailoauth_mailauth_decode_challenge("+ " CHALLENGE_401
    "\r\n", json, sizeof(json), NULL, 0), 0);
  assert_contains(json, "\"401\"");

  /* A number works as well as a string. */
  ck_assert_int_eq(mailoauth_mailauth_decode_challenge("334 "
    CHALLENGE_400_INT, json, sizeof(json), status, sizeof(status)), 0);
  ck_assert_str_eq(status, "400");

  /* Not challenges. */
  ck_assert_int_eq(mailoauth_mailauth_decode_challenge("334 ", json,
    sizeof(json), status, sizeof(status)), -1);
  ck_assert_int_eq(mailoauth_mailauth_decode_challenge("235 " CHALLENGE_401,
    json, sizeof(json), status, sizeof(status)), -1);
  ck_assert_int_eq(mailoauth_mailauth_decode_challenge("334 VXNlcm5hbWU6",
    json, sizeof(json), status, sizeof(status)), -1);
  ck_assert_int_eq(mailoauth_mailauth_decode_challenge("334 not*base64!",
    json, sizeof(json), status, sizeof(status)), -1);
  ck_assert_int_eq(mailoauth_mailauth_decode_challenge("334 abc", json,
    sizeof(json), status, sizeof(status)), -1);
  ck_assert_int_eq(mailoauth_mailauth_decode_challenge(NULL, json,
    sizeof(json), status, sizeof(status)), -1);
}
END_TEST

START_TEST(test_challenge_hints) {
  const char *h;

  h = mailoauth_mailauth_hint("334 " CHALLENGE_401);
  assert_contains(h, "401");
  assert_contains(h, "another account than mailbox=");

  h = mailoauth_mailauth_hint("+ " CHALLENGE_401);
  assert_contains(h, "401");

  h = mailoauth_mailauth_hint("334 " CHALLENGE_400_INT);
  assert_contains(h, "400");
}
END_TEST

START_TEST(test_redact) {
  char out[512];

  mailoauth_mailauth_redact(MAILOAUTH_MAILAUTH_SMTP, "AUTH XOAUTH2 " IR
    "\r\n", out, sizeof(out));
  ck_assert_str_eq(out, "AUTH XOAUTH2 [initial response hidden]");

  mailoauth_mailauth_redact(MAILOAUTH_MAILAUTH_SMTP, "AUTH XOAUTH2\r\n", out,
    sizeof(out));
  ck_assert_str_eq(out, "AUTH XOAUTH2");

  mailoauth_mailauth_redact(MAILOAUTH_MAILAUTH_IMAP, "A002 AUTHENTICATE "
    "XOAUTH2 " IR "\r\n", out, sizeof(out));
  ck_assert_str_eq(out, "A002 AUTHENTICATE XOAUTH2 [initial response hidden]");

  mailoauth_mailauth_redact(MAILOAUTH_MAILAUTH_IMAP, "A1 LOGIN alice s3cret",
    out, sizeof(out));
  ck_assert_str_eq(out, "A1 LOGIN [hidden]");

  /* A bare SASL response, or the rest of a split line. */
  mailoauth_mailauth_redact(MAILOAUTH_MAILAUTH_SMTP, IR "\r\n", out,
    sizeof(out));
  ck_assert_str_eq(out, "[hidden]");
  mailoauth_mailauth_redact(MAILOAUTH_MAILAUTH_SMTP, "\r\n", out, sizeof(out));
  ck_assert_str_eq(out, "[hidden]");
  mailoauth_mailauth_redact(MAILOAUTH_MAILAUTH_IMAP, "dXNlcj1 hbGljZQ", out,
    sizeof(out));
  ck_assert_str_eq(out, "[hidden]");

  /* Harmless commands are shown whole. */
  mailoauth_mailauth_redact(MAILOAUTH_MAILAUTH_SMTP, "EHLO ftp.contoso.com\r\n",
    out, sizeof(out));
  ck_assert_str_eq(out, "EHLO ftp.contoso.com");
  mailoauth_mailauth_redact(MAILOAUTH_MAILAUTH_SMTP, "MAIL FROM:<a@b.test>",
    out, sizeof(out));
  ck_assert_str_eq(out, "MAIL FROM:<a@b.test>");
  mailoauth_mailauth_redact(MAILOAUTH_MAILAUTH_IMAP, "A003 EXAMINE INBOX\r\n",
    out, sizeof(out));
  ck_assert_str_eq(out, "A003 EXAMINE INBOX");
  mailoauth_mailauth_redact(MAILOAUTH_MAILAUTH_SMTP, "STARTTLS\r\n", out,
    sizeof(out));
  ck_assert_str_eq(out, "STARTTLS");

  /* Unknown commands: nothing of them (they could be credentials). */
  mailoauth_mailauth_redact(MAILOAUTH_MAILAUTH_SMTP, "XCLIENT NAME=x", out,
    sizeof(out));
  ck_assert_str_eq(out, "[hidden]");
  mailoauth_mailauth_redact(MAILOAUTH_MAILAUTH_SMTP, "dXNlcj1hbGlj ZQ", out,
    sizeof(out));
  ck_assert_str_eq(out, "[hidden]");

  /* Small buffers are cut, never overrun. */
  mailoauth_mailauth_redact(MAILOAUTH_MAILAUTH_SMTP, "AUTH XOAUTH2 " IR, out,
    8);
  ck_assert_str_eq(out, "AUTH XO");
  mailoauth_mailauth_redact(MAILOAUTH_MAILAUTH_SMTP, NULL, out, sizeof(out));
  ck_assert_str_eq(out, "");
}
END_TEST

START_TEST(test_setup_errors) {
  struct mailoauth_mailauth_config cfg;
  char err[512] = "";
  CURL *curl = curl_easy_init();

  ck_assert_ptr_nonnull(curl);
  memset(&cfg, 0, sizeof(cfg));
  cfg.url = "http://mail.contoso.test/";
  cfg.username = "alice@contoso.test";
  cfg.bearer = TOKEN;
  ck_assert_int_eq(mailoauth_mailauth_setup(curl, &cfg, NULL, err,
    sizeof(err)), -1);
  assert_contains(err, "smtp://");

  cfg.url = "smtp://127.0.0.1:1";
  cfg.bearer = "";
  ck_assert_int_eq(mailoauth_mailauth_setup(curl, &cfg, NULL, err,
    sizeof(err)), -1);
  assert_contains(err, "access token");

  cfg.bearer = TOKEN;
  ck_assert_int_eq(mailoauth_mailauth_setup(curl, &cfg, NULL, err,
    sizeof(err)), 0);
  curl_easy_cleanup(curl);
}
END_TEST

START_TEST(test_unreachable) {
  struct mailoauth_mailauth_transcript tr;
  struct mailoauth_mailauth_config cfg;
  char err[512] = "";

  memset(&tr, 0, sizeof(tr));
  memset(&cfg, 0, sizeof(cfg));
  cfg.url = "smtp://127.0.0.1:1";
  cfg.username = "alice@contoso.test";
  cfg.bearer = TOKEN;
  cfg.connect_timeout_ms = 2000;

  ck_assert_int_eq(mailoauth_mailauth_test(&cfg, &tr, err, sizeof(err)), -1);
  assert_contains(err, "smtp://127.0.0.1:1");
  ck_assert_ptr_null(strstr(err, TOKEN));
  ck_assert_int_eq(tr.authenticated, 0);
  ck_assert_int_eq(tr.auth_sent, 0);

  cfg.url = "imaps://127.0.0.1:1/INBOX";
  ck_assert_int_eq(mailoauth_mailauth_test(&cfg, &tr, err, sizeof(err)), -1);
  assert_contains(err, "imaps://127.0.0.1:1");
  mailoauth_mailauth_transcript_clear(&tr);
  mailoauth_mailauth_transcript_clear(NULL);
}
END_TEST

static Suite *mailauth_suite(void) {
  Suite *s = suite_create("mailauth");
  TCase *tc = tcase_create("mailauth");

  tcase_set_timeout(tc, 30);
  tcase_add_test(tc, test_proto);
  tcase_add_test(tc, test_hints_exchange);
  tcase_add_test(tc, test_hints_none);
  tcase_add_test(tc, test_challenge_decode);
  tcase_add_test(tc, test_challenge_hints);
  tcase_add_test(tc, test_redact);
  tcase_add_test(tc, test_setup_errors);
  tcase_add_test(tc, test_unreachable);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr;
  int failed;

  curl_global_init(CURL_GLOBAL_DEFAULT);
  sr = srunner_create(mailauth_suite());
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  curl_global_cleanup();
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
