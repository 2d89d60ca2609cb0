/*
 * Unit tests: the configuration the master hands to mailoauthd (parsing,
 * tasks and routes rebuilt with the same rules as the directives, framing
 * on a socket).
 */

#include "mailoauth/imsg.h"
#include "mailoauth/wconf.h"

#include <errno.h>

#include <check.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static const char *doc =
  "{\"version\": 1, \"state_dir\": \"/var/lib/x\", \"uid\": 101, "
  "\"gid\": 102, \"signin\": \"ftpmailoauth signin %s\", "
  "\"program\": \"/usr/lib/proftpd/mailoauthd\", "
  "\"trace\": {\"mailoauth.smtp\": 10}, "
  "\"accounts\": [[\"notify\", \"tenant=contoso.com\", \"client-id=x\"]], "
  "\"tasks\": [{\"args\": [\"scans\", \"account=notify\", \"every=300\", "
  "\"dir=/srv/in/\", \"owner=2001:2002\", \"files=*.pdf,*.csv\", "
  "\"authserv-id=mx.contoso.com\"], "
  "\"routes\": [[\"from=contoso.com\", \"dir=/srv/c\", "
  "\"owner=3001:3002\"], [\"subject=Inv*\", \"auth=dmarc\", "
  "\"dir=/srv/i\", \"owner=2001:2002\"]]}]}";

START_TEST(test_parse) {
  struct mailoauth_wconf w;
  const struct mailoauth_ingest_config *t;
  char err[256];

  ck_assert_int_eq(mailoauth_wconf_parse(&w, doc, strlen(doc), err,
    sizeof(err)), 0);
  ck_assert_str_eq(w.state_dir, "/var/lib/x");
  ck_assert_int_eq(w.uid, 101);
  ck_assert_int_eq(w.gid, 102);
  ck_assert_str_eq(w.program, "/usr/lib/proftpd/mailoauthd");
  ck_assert_int_eq(mailoauth_wconf_trace_level(&w, "mailoauth.smtp"), 10);
  ck_assert_int_eq(mailoauth_wconf_trace_level(&w, "mailoauth.imap"), 0);

  ck_assert_uint_eq(w.naccounts, 1);
  ck_assert_str_eq(w.accounts[0].name, "notify");
  ck_assert_int_eq(w.accounts[0].argc, 2);
  ck_assert_str_eq(w.accounts[0].argv[1], "client-id=x");

  ck_assert_uint_eq(w.ntasks, 1);
  t = w.tasks[0];
  ck_assert_str_eq(t->name, "scans");
  ck_assert_str_eq(t->account, "notify");
  ck_assert_uint_eq(t->every, 300);
  ck_assert_str_eq(t->dir, "/srv/in");
  ck_assert_int_eq(t->uid, 2001);
  ck_assert_int_eq(t->gid, 2002);
  ck_assert_str_eq(t->files[1], "*.csv");
  ck_assert_uint_eq(t->nroutes, 2);
  ck_assert_str_eq(t->routes[0]->dir, "/srv/c");
  ck_assert_int_eq(t->routes[0]->uid, 3001);
  ck_assert_str_eq(t->routes[0]->from[0], "contoso.com");
  ck_assert_str_eq(t->routes[1]->subject, "Inv*");
  /* A route takes the task's authserv-id=, as the directive does. */
  ck_assert_str_eq(t->routes[1]->authserv_id, "mx.contoso.com");
  /* No MailOAuthMetricsFile: no metrics. */
  ck_assert_ptr_null(w.metrics_file);
  mailoauth_wconf_free(&w);
}
END_TEST

START_TEST(test_metrics_file) {
  static const char *with =
    "{\"version\": 1, \"state_dir\": \"/x\", \"signin\": \"s\", "
    "\"program\": \"/p\", \"uid\": 1, \"gid\": 1, \"accounts\": [], "
    "\"tasks\": [], \"metrics_file\": \"/var/lib/node/mailoauth.prom\"}";
  static const char *relative =
    "{\"version\": 1, \"state_dir\": \"/x\", \"signin\": \"s\", "
    "\"program\": \"/p\", \"uid\": 1, \"gid\": 1, \"accounts\": [], "
    "\"tasks\": [], \"metrics_file\": \"m.prom\"}";
  struct mailoauth_wconf w;
  char err[256];

  ck_assert_int_eq(mailoauth_wconf_parse(&w, with, strlen(with), err,
    sizeof(err)), 0);
  ck_assert_str_eq(w.metrics_file, "/var/lib/node/mailoauth.prom");
  mailoauth_wconf_free(&w);

  ck_assert_int_eq(mailoauth_wconf_parse(&w, relative, strlen(relative), err,
    sizeof(err)), -1);
  ck_assert_ptr_nonnull(strstr(err, "metrics_file"));
}
END_TEST

START_TEST(test_refused) {
  static const char *bad[] = {
    "", "[]", "{\"version\": 2}",
    "{\"version\": 1, \"state_dir\": \"/x\", \"signin\": \"s\", "
      "\"program\": \"/p\", \"uid\": -1, \"gid\": 1}",
    /* owner= must be resolved to numbers by the master, never root. */
    "{\"version\": 1, \"state_dir\": \"/x\", \"signin\": \"s\", "
      "\"program\": \"/p\", \"uid\": 1, \"gid\": 1, \"accounts\": [], "
      "\"tasks\": [{\"args\": [\"t\", \"account=a\", \"every=5\", "
      "\"dir=/d\", \"owner=alice\"]}]}",
    "{\"version\": 1, \"state_dir\": \"/x\", \"signin\": \"s\", "
      "\"program\": \"/p\", \"uid\": 1, \"gid\": 1, \"accounts\": [], "
      "\"tasks\": [{\"args\": [\"t\", \"account=a\", \"every=5\", "
      "\"dir=/d\", \"owner=0:0\"]}]}",
    "{\"version\": 1, \"state_dir\": \"/x\", \"signin\": \"s\", "
      "\"program\": \"/p\", \"uid\": 1, \"gid\": 1, \"accounts\": [], "
      "\"tasks\": [{\"args\": [\"t\", \"account=a\", \"every=5\", "
      "\"dir=../d\", \"owner=1:1\"]}]}",
    NULL
  };
  struct mailoauth_wconf w;
  char err[256];
  int i;

  for (i = 0; bad[i] != NULL; i++) {
    err[0] = '\0';
    ck_assert_msg(mailoauth_wconf_parse(&w, bad[i], strlen(bad[i]), err,
      sizeof(err)) == -1, "accepted: %s", bad[i]);
    ck_assert(err[0] != '\0');
  }
}
END_TEST

START_TEST(test_framing) {
  int sv[2];
  size_t len = 0, big_len = 300 * 1024;
  char *got, *big;

  ck_assert_int_eq(mailoauth_imsg_socketpair(sv), 0);
  ck_assert_int_eq(mailoauth_wconf_send(sv[0], doc, strlen(doc)), 0);
  got = mailoauth_wconf_recv(sv[1], &len);
  ck_assert_ptr_nonnull(got);
  ck_assert_uint_eq(len, strlen(doc));
  ck_assert_str_eq(got, doc);
  free(got);

  /* Larger than one message: sent in parts, received whole.  A reader
   * runs alongside, as the socket holds only so much.
   */
  big = malloc(big_len);
  ck_assert_ptr_nonnull(big);
  memset(big, 'x', big_len);
  if (fork() == 0) {
    _exit(mailoauth_wconf_send(sv[0], big, big_len) == 0 ? 0 : 1);
  }
  got = mailoauth_wconf_recv(sv[1], &len);
  ck_assert_ptr_nonnull(got);
  ck_assert_uint_eq(len, big_len);
  ck_assert(memcmp(got, big, big_len) == 0);
  free(got);
  free(big);

  /* A message of another protocol is refused. */
  ck_assert_int_eq(mailoauth_imsg_send(sv[0], 77, 0, "{}", 2, NULL, 0), 0);
  ck_assert_ptr_null(mailoauth_wconf_recv(sv[1], &len));
  ck_assert_int_eq(errno, EBADMSG);

  /* A datagram shorter than its header says. */
  ck_assert_int_eq(write(sv[0], "\0\0\0\2\0\0\0\x10", 8), 8);
  ck_assert_ptr_null(mailoauth_wconf_recv(sv[1], &len));

  /* The peer going away before the end. */
  ck_assert_int_eq(mailoauth_imsg_send(sv[0], 1, 0, "{", 1, NULL, 0), 0);
  close(sv[0]);
  ck_assert_ptr_null(mailoauth_wconf_recv(sv[1], &len));
  ck_assert_int_eq(errno, EPIPE);
  close(sv[1]);
}
END_TEST

int main(void) {
  Suite *s = suite_create("wconf");
  TCase *tc = tcase_create("wconf");
  SRunner *sr;
  int failed;

  tcase_add_test(tc, test_parse);
  tcase_add_test(tc, test_metrics_file);
  tcase_add_test(tc, test_refused);
  tcase_add_test(tc, test_framing);
  suite_add_tcase(s, tc);

  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
