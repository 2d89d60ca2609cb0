/*
 * Unit tests: Authentication-Results parsing and the verdicts routes rely
 * on (whose headers count, alignment with From:, hostile input).
 */

#include "mailoauth/authres.h"
#include "mailoauth/route.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* What Exchange Online writes on top of mail from outside. */
#define EXO_PASS \
  "spf=pass (sender IP is 192.0.2.7) smtp.mailfrom=contoso.com; " \
  "dkim=pass (signature was verified) header.d=contoso.com;dmarc=pass " \
  "action=none header.from=contoso.com;compauth=pass reason=100\n"

#define EXO_FAIL \
  "spf=fail (sender IP is 198.51.100.9) smtp.mailfrom=contoso.com; " \
  "dkim=none (message not signed) header.d=none;dmarc=fail action=none " \
  "header.from=contoso.com;compauth=fail reason=000\n"

static void parse(const char *s, struct mailoauth_authres *ar) {
  mailoauth_authres_parse(s, strlen(s), ar);
}

START_TEST(test_parse_rfc8601) {
  struct mailoauth_authres ar;

  parse("mx.example.com 1; spf=pass smtp.mailfrom=Bob@Contoso.COM;\r\n"
    "\tdkim=pass (good sig) header.d=contoso.com header.b=abc/de+f=;\r\n"
    "\tdmarc=pass (p=reject dis=none) header.from=contoso.com", &ar);
  ck_assert(ar.has_id);
  ck_assert_str_eq(ar.authserv_id, "mx.example.com");
  ck_assert(!ar.overflow);
  ck_assert_uint_eq(ar.nresults, 3);
  ck_assert_uint_eq(ar.results[0].method, MAILOAUTH_AUTHRES_SPF);
  ck_assert(ar.results[0].pass);
  ck_assert_str_eq(ar.results[0].domain, "contoso.com");
  ck_assert_uint_eq(ar.results[1].method, MAILOAUTH_AUTHRES_DKIM);
  ck_assert_str_eq(ar.results[1].domain, "contoso.com");
  ck_assert_uint_eq(ar.results[2].method, MAILOAUTH_AUTHRES_DMARC);
  ck_assert(ar.results[2].pass);

  /* Comments and quoted strings wherever CFWS may be. */
  parse("(first) \"MX.Example.COM\" (x;y=z) ; (c) DKIM (c) = (c) pass "
    "(sig; dmarc=pass) reason=\"a;b\" header.i=\"@contoso.com\"", &ar);
  ck_assert(ar.has_id);
  ck_assert_str_eq(ar.authserv_id, "mx.example.com");
  ck_assert_uint_eq(ar.nresults, 1);
  ck_assert_uint_eq(ar.results[0].method, MAILOAUTH_AUTHRES_DKIM);
  ck_assert(ar.results[0].pass);
  ck_assert_str_eq(ar.results[0].domain, "contoso.com");

  /* No results. */
  parse("mx.example.com; none", &ar);
  ck_assert(ar.has_id);
  ck_assert_uint_eq(ar.nresults, 0);
  ck_assert(!ar.overflow);

  /* Methods this does not use are left out. */
  parse("mx.example.com; arc=pass; auth=pass smtp.auth=bob", &ar);
  ck_assert_uint_eq(ar.nresults, 0);
}
END_TEST

START_TEST(test_parse_exchange_online) {
  struct mailoauth_authres ar;

  parse(EXO_PASS, &ar);
  ck_assert(!ar.has_id);
  ck_assert(!ar.overflow);
  ck_assert_uint_eq(ar.nresults, 3);
  ck_assert(ar.results[2].pass);
  ck_assert_str_eq(ar.results[2].domain, "contoso.com");

  /* The older form, with the receiving domain as a stray item. */
  parse("spf=pass (sender IP is 192.0.2.7) smtp.mailfrom=contoso.com; "
    "fabrikam.com; dkim=none (message not signed) header.d=none;"
    "fabrikam.com; dmarc=pass action=none header.from=contoso.com;", &ar);
  ck_assert(!ar.has_id);
  ck_assert(!ar.overflow);
  ck_assert_uint_eq(ar.nresults, 3);
  ck_assert(!ar.results[1].pass);
  ck_assert(ar.results[2].pass);
}
END_TEST

START_TEST(test_parse_hostile) {
  struct mailoauth_authres ar;
  char *big;
  size_t i;

  /* Unterminated comment and quoted string: nothing after them counts. */
  parse("mx.example.com; dmarc=fail (oops; dmarc=pass header.from=a.test",
    &ar);
  ck_assert_uint_eq(ar.nresults, 1);
  ck_assert(!ar.results[0].pass);
  parse("\"mx.example.com; dmarc=pass header.from=a.test", &ar);
  ck_assert(!ar.has_id);
  ck_assert_uint_eq(ar.nresults, 0);

  /* Deeply nested comments, no recursion. */
  big = malloc(200001);
  ck_assert_ptr_nonnull(big);
  for (i = 0; i < 100000; i++) {
    big[i] = '(';
  }
  for (; i < 200000; i++) {
    big[i] = ')';
  }
  big[i] = '\0';
  mailoauth_authres_parse(big, strlen(big), &ar);
  ck_assert_uint_eq(ar.nresults, 0);

  /* A domain too long is never cut into a shorter one. */
  memset(big, 'a', 300);
  strcpy(big + 300, ".contoso.com");
  {
    char hdr[1024];

    snprintf(hdr, sizeof(hdr), "dmarc=pass header.from=contoso.com%s", big);
    parse(hdr, &ar);
    ck_assert(ar.overflow);
    ck_assert(!mailoauth_authres_verify(hdr, NULL, MAILOAUTH_AUTHRES_DMARC,
      "bob@contoso.com"));
  }

  /* A long value of no concern to the verdict changes nothing. */
  {
    char hdr[1024];

    snprintf(hdr, sizeof(hdr), "mx.example.com; dmarc=pass reason=\"%.300s\" "
      "header.from=contoso.com header.b=%.300s\n", big, big);
    parse(hdr, &ar);
    ck_assert(!ar.overflow);
    ck_assert(mailoauth_authres_verify(hdr, "mx.example.com",
      MAILOAUTH_AUTHRES_DMARC, "bob@contoso.com"));
  }
  free(big);

  /* Too many results: the header is not relied on. */
  {
    char hdr[4096] = "mx.example.com";

    for (i = 0; i < MAILOAUTH_AUTHRES_MAX_RESULTS + 1; i++) {
      strcat(hdr, "; dkim=pass header.d=contoso.com");
    }
    parse(hdr, &ar);
    ck_assert(ar.overflow);
    strcat(hdr, "\n");
    ck_assert(!mailoauth_authres_verify(hdr, "mx.example.com",
      MAILOAUTH_AUTHRES_DKIM, "bob@contoso.com"));
  }

  /* A result of a method used that cannot be read spoils the header. */
  parse("mx.example.com; dmarc=pass header.from=contoso.com x; ", &ar);
  ck_assert(ar.overflow);

  /* Two identities in one result: neither passed. */
  parse("mx.example.com; dmarc=pass header.from=evil.test "
    "header.from=contoso.com", &ar);
  ck_assert_uint_eq(ar.nresults, 1);
  ck_assert(!ar.results[0].pass);

  /* Control characters and empty input. */
  parse("", &ar);
  ck_assert_uint_eq(ar.nresults, 0);
  mailoauth_authres_parse("x\0; dmarc=pass", 14, &ar);
  ck_assert(!ar.has_id);
  mailoauth_authres_parse(NULL, 0, &ar);
  ck_assert_uint_eq(ar.nresults, 0);
}
END_TEST

START_TEST(test_verify_exchange_online) {
  /* The top-most header decides, whatever the sender added below. */
  ck_assert(mailoauth_authres_verify(EXO_PASS, NULL,
    MAILOAUTH_AUTHRES_DMARC, "bob@contoso.com"));
  ck_assert(mailoauth_authres_verify(EXO_PASS, NULL,
    MAILOAUTH_AUTHRES_DMARC | MAILOAUTH_AUTHRES_SPF | MAILOAUTH_AUTHRES_DKIM,
    "Bob@CONTOSO.com"));
  ck_assert(!mailoauth_authres_verify(EXO_FAIL EXO_PASS, NULL,
    MAILOAUTH_AUTHRES_DMARC, "bob@contoso.com"));
  /* A forged header with an authserv-id on top: not Exchange's. */
  ck_assert(!mailoauth_authres_verify("mx.evil.test; dmarc=pass "
    "header.from=contoso.com\n" EXO_PASS, NULL, MAILOAUTH_AUTHRES_DMARC,
    "bob@contoso.com"));
  /* No header at all. */
  ck_assert(!mailoauth_authres_verify("", NULL, MAILOAUTH_AUTHRES_DMARC,
    "bob@contoso.com"));
  /* The verdict is about contoso.com, the From: says otherwise. */
  ck_assert(!mailoauth_authres_verify(EXO_PASS, NULL,
    MAILOAUTH_AUTHRES_DMARC, "bob@fabrikam.com"));
  ck_assert(!mailoauth_authres_verify(EXO_PASS, NULL,
    MAILOAUTH_AUTHRES_DMARC, "bob@mail.contoso.com"));
  ck_assert(!mailoauth_authres_verify(EXO_PASS, NULL,
    MAILOAUTH_AUTHRES_DMARC, "nobody"));
  ck_assert(!mailoauth_authres_verify(EXO_PASS, NULL,
    MAILOAUTH_AUTHRES_DMARC, ""));
  /* A method the header does not report did not pass. */
  ck_assert(!mailoauth_authres_verify("spf=pass smtp.mailfrom=contoso.com\n",
    NULL, MAILOAUTH_AUTHRES_DMARC, "bob@contoso.com"));
  /* Too long to be kept whole by the parser of the message. */
  ck_assert(!mailoauth_authres_verify("(too long)\n" EXO_PASS, NULL,
    MAILOAUTH_AUTHRES_DMARC, "bob@contoso.com"));
}
END_TEST

START_TEST(test_verify_authserv_id) {
  const char *mine = "mx.example.com; dmarc=pass header.from=contoso.com\n";
  const char *forged = "mx.evil.test; dmarc=pass header.from=contoso.com\n";
  char buf[1024];

  ck_assert(mailoauth_authres_verify(mine, "MX.example.com",
    MAILOAUTH_AUTHRES_DMARC, "bob@contoso.com"));
  ck_assert(!mailoauth_authres_verify(forged, "mx.example.com",
    MAILOAUTH_AUTHRES_DMARC, "bob@contoso.com"));
  /* Exchange Online's form has no authserv-id to match. */
  ck_assert(!mailoauth_authres_verify(EXO_PASS, "mx.example.com",
    MAILOAUTH_AUTHRES_DMARC, "bob@contoso.com"));

  /* Only the top-most run counts: a matching header below a foreign one
   * was there before the message reached the receiving server.
   */
  snprintf(buf, sizeof(buf), "%s%s", forged, mine);
  ck_assert(!mailoauth_authres_verify(buf, "mx.example.com",
    MAILOAUTH_AUTHRES_DMARC, "bob@contoso.com"));

  /* Several headers of the receiving server (one per milter). */
  ck_assert(mailoauth_authres_verify(
    "mx.example.com; dmarc=pass header.from=contoso.com\n"
    "mx.example.com; dkim=pass header.d=contoso.com header.s=sel\n"
    "mx.example.com; spf=pass smtp.mailfrom=bounce.contoso.com\n",
    "mx.example.com", MAILOAUTH_AUTHRES_DMARC | MAILOAUTH_AUTHRES_DKIM |
    MAILOAUTH_AUTHRES_SPF, "bob@contoso.com"));

  /* The top-most header reporting a method decides it. */
  ck_assert(!mailoauth_authres_verify(
    "mx.example.com; dmarc=fail header.from=contoso.com\n"
    "mx.example.com; dmarc=pass header.from=contoso.com\n",
    "mx.example.com", MAILOAUTH_AUTHRES_DMARC, "bob@contoso.com"));

  /* Of several DKIM signatures, one aligned pass is enough. */
  ck_assert(mailoauth_authres_verify("mx.example.com; "
    "dkim=fail header.d=contoso.com; dkim=pass header.d=esp.test; "
    "dkim=pass header.i=@contoso.com\n", "mx.example.com",
    MAILOAUTH_AUTHRES_DKIM, "bob@contoso.com"));
  ck_assert(!mailoauth_authres_verify("mx.example.com; "
    "dkim=fail header.d=contoso.com; dkim=pass header.d=esp.test\n",
    "mx.example.com", MAILOAUTH_AUTHRES_DKIM, "bob@contoso.com"));
}
END_TEST

START_TEST(test_alignment) {
  static const struct {
    const char *hdr, *from;
    unsigned int method;
    int ok;
  } cases[] = {
    { "a; spf=pass smtp.mailfrom=contoso.com", "b@contoso.com",
      MAILOAUTH_AUTHRES_SPF, 1 },
    { "a; spf=pass smtp.mailfrom=x@bounce.contoso.com", "b@contoso.com",
      MAILOAUTH_AUTHRES_SPF, 1 },
    { "a; spf=pass smtp.mailfrom=contoso.com", "b@mail.contoso.com",
      MAILOAUTH_AUTHRES_SPF, 1 },
    { "a; spf=pass smtp.mailfrom=evil.test", "b@contoso.com",
      MAILOAUTH_AUTHRES_SPF, 0 },
    { "a; spf=pass smtp.mailfrom=notcontoso.com", "b@contoso.com",
      MAILOAUTH_AUTHRES_SPF, 0 },
    { "a; spf=pass smtp.mailfrom=contoso.com.evil.test", "b@contoso.com",
      MAILOAUTH_AUTHRES_SPF, 0 },
    { "a; spf=pass smtp.mailfrom=com", "b@contoso.com",
      MAILOAUTH_AUTHRES_SPF, 0 },
    { "a; spf=pass smtp.mailfrom=com.", "b@contoso.com",
      MAILOAUTH_AUTHRES_SPF, 0 },
    { "a; spf=pass smtp.mailfrom=", "b@contoso.com",
      MAILOAUTH_AUTHRES_SPF, 0 },
    { "a; spf=softfail smtp.mailfrom=contoso.com", "b@contoso.com",
      MAILOAUTH_AUTHRES_SPF, 0 },
    { "a; dkim=pass header.d=contoso.com.", "b@contoso.com",
      MAILOAUTH_AUTHRES_DKIM, 1 },
    { "a; dkim=pass", "b@contoso.com", MAILOAUTH_AUTHRES_DKIM, 0 },
    /* DMARC already aligned; its header.from must be the From: domain. */
    { "a; dmarc=pass header.from=contoso.com", "b@contoso.com",
      MAILOAUTH_AUTHRES_DMARC, 1 },
    { "a; dmarc=pass header.from=contoso.com", "b@mail.contoso.com",
      MAILOAUTH_AUTHRES_DMARC, 0 },
    { "a; dmarc=pass header.from=mail.contoso.com", "b@contoso.com",
      MAILOAUTH_AUTHRES_DMARC, 0 },
    { "a; dmarc=PASS header.from=CONTOSO.com", "b@contoso.com",
      MAILOAUTH_AUTHRES_DMARC, 1 },
    { "a; dmarc=bestguesspass header.from=contoso.com", "b@contoso.com",
      MAILOAUTH_AUTHRES_DMARC, 0 },
  };
  size_t i;

  for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    ck_assert_msg(mailoauth_authres_verify(cases[i].hdr, "a",
      cases[i].method, cases[i].from) == cases[i].ok, "%s / %s: expected %d",
      cases[i].hdr, cases[i].from, cases[i].ok);
  }
}
END_TEST

START_TEST(test_methods) {
  unsigned int m;

  ck_assert_int_eq(mailoauth_authres_methods("dmarc", &m), 0);
  ck_assert_uint_eq(m, MAILOAUTH_AUTHRES_DMARC);
  ck_assert_int_eq(mailoauth_authres_methods("SPF,dkim", &m), 0);
  ck_assert_uint_eq(m, MAILOAUTH_AUTHRES_SPF | MAILOAUTH_AUTHRES_DKIM);
  ck_assert_int_eq(mailoauth_authres_methods("", &m), -1);
  ck_assert_int_eq(mailoauth_authres_methods("dmarc,", &m), -1);
  ck_assert_int_eq(mailoauth_authres_methods(",dmarc", &m), -1);
  ck_assert_int_eq(mailoauth_authres_methods("compauth", &m), -1);
  ck_assert_int_eq(mailoauth_authres_methods("dmarcx", &m), -1);
}
END_TEST

/* The route side: auth= joins the other conditions. */
START_TEST(test_route_auth) {
  struct mailoauth_route r;
  char from[] = "contoso.com", auth[] = "dmarc", id[] = "exchange-online";
  char bad[] = "dmarc,bogus", badid[] = "a b";
  char err[512];

  memset(&r, 0, sizeof(r));
  ck_assert_int_eq(mailoauth_route_parse_setting(&r, "from", from, err,
    sizeof(err)), 0);
  ck_assert_int_eq(mailoauth_route_parse_setting(&r, "auth", auth, err,
    sizeof(err)), 0);
  /* auth= without whose verdict to trust is refused, saying what to add. */
  ck_assert_int_eq(mailoauth_route_check(&r, err, sizeof(err)), -1);
  ck_assert_ptr_nonnull(strstr(err, "authserv-id=exchange-online"));
  /* Until then nothing matches. */
  ck_assert(!mailoauth_route_match(&r, "bob@contoso.com", "", "",
    EXO_PASS));

  ck_assert_int_eq(mailoauth_route_parse_setting(&r, "authserv-id", id, err,
    sizeof(err)), 0);
  ck_assert_int_eq(mailoauth_route_check(&r, err, sizeof(err)), 0);
  ck_assert(mailoauth_route_match(&r, "bob@contoso.com", "", "", EXO_PASS));
  /* Forged From:, no verdict or a verdict of the sender's own. */
  ck_assert(!mailoauth_route_match(&r, "bob@contoso.com", "", "", NULL));
  ck_assert(!mailoauth_route_match(&r, "bob@contoso.com", "", "",
    "mx.evil.test; dmarc=pass header.from=contoso.com\n" EXO_PASS));
  ck_assert(!mailoauth_route_match(&r, "bob@contoso.com", "", "", EXO_FAIL));
  /* The verdict does not lift the other conditions. */
  ck_assert(!mailoauth_route_match(&r, "bob@fabrikam.com", "", "",
    EXO_PASS));

  ck_assert_int_eq(mailoauth_route_parse_setting(&r, "auth", bad, err,
    sizeof(err)), -1);
  ck_assert_ptr_nonnull(strstr(err, "auth=dmarc"));
  ck_assert_int_eq(mailoauth_route_parse_setting(&r, "authserv-id", badid,
    err, sizeof(err)), -1);
}
END_TEST

static Suite *authres_suite(void) {
  Suite *s = suite_create("authres");
  TCase *tc = tcase_create("authres");

  tcase_add_test(tc, test_parse_rfc8601);
  tcase_add_test(tc, test_parse_exchange_online);
  tcase_add_test(tc, test_parse_hostile);
  tcase_add_test(tc, test_verify_exchange_online);
  tcase_add_test(tc, test_verify_authserv_id);
  tcase_add_test(tc, test_alignment);
  tcase_add_test(tc, test_methods);
  tcase_add_test(tc, test_route_auth);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(authres_suite());
  int failed;

  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
