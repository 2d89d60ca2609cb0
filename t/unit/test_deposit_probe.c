/*
 * Unit tests: after a crash, whether a deposit was made (the probe the
 * deposit helper answers for the worker, which cannot look into an
 * owner's 0700 directory).
 *
 * Meant to run as root (CI does): the owner is uid/gid 2001 and its
 * directory is mode 0700.  Without root the owner is the current user.
 */

#include "mailoauth/deposit.h"

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define USER_ID         2001

static uid_t owner_uid;
static gid_t owner_gid;
static int is_root;
static char base[256], home[300], alice[320], state[300];

static void setup(void) {
  is_root = (geteuid() == 0);
  owner_uid = is_root ? USER_ID : geteuid();
  owner_gid = is_root ? USER_ID : getegid();

  strcpy(base, "/tmp/mailoauth-probe-XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(base));
  ck_assert_int_eq(chmod(base, 0755), 0);
  snprintf(home, sizeof(home), "%s/home", base);
  snprintf(alice, sizeof(alice), "%s/alice", home);
  snprintf(state, sizeof(state), "%s/state", base);
  ck_assert_int_eq(mkdir(home, 0755), 0);
  ck_assert_int_eq(mkdir(alice, 0700), 0);
  ck_assert_int_eq(mkdir(state, 0700), 0);
  if (is_root) {
    ck_assert_int_eq(chown(alice, owner_uid, owner_gid), 0);
  }
}

static void teardown(void) {
  char cmd[400];

  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", base);
  ck_assert_int_eq(system(cmd), 0);
}

static struct mailoauth_deposit_request request(const char *name) {
  struct mailoauth_deposit_request req;

  memset(&req, 0, sizeof(req));
  req.dir = alice;
  req.name = name;
  req.uid = owner_uid;
  req.gid = owner_gid;
  req.mode = 0600;
  return req;
}

static int content(const char *data) {
  char path[400];
  int fd;

  snprintf(path, sizeof(path), "%s/content-XXXXXX", state);
  fd = mkstemp(path);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(unlink(path), 0);
  ck_assert_int_eq(write(fd, data, strlen(data)), (ssize_t) strlen(data));
  return fd;
}

static struct mailoauth_deposit_ident ident_of(const char *data,
    time_t not_before) {
  struct mailoauth_deposit_ident id;
  unsigned int len = 0;

  memset(&id, 0, sizeof(id));
  id.size = strlen(data);
  id.not_before = not_before;
  id.has_sha256 = 1;
  ck_assert_int_eq(EVP_Digest(data, strlen(data), id.sha256, &len,
    EVP_sha256(), NULL), 1);
  ck_assert_uint_eq(len, MAILOAUTH_DEPOSIT_SHA256_LEN);
  return id;
}

/* A file of the owner's put there directly, as the owner would. */
static void plant(const char *name, const char *data) {
  char path[400];
  int fd;

  snprintf(path, sizeof(path), "%s/%s", alice, name);
  fd = open(path, O_WRONLY|O_CREAT|O_EXCL, 0600);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(write(fd, data, strlen(data)), (ssize_t) strlen(data));
  ck_assert_int_eq(fchown(fd, owner_uid, owner_gid), 0);
  close(fd);
}

static int count_entries(const char *dir) {
  char cmd[400];
  FILE *fp;
  int n = 0;

  snprintf(cmd, sizeof(cmd), "ls -A '%s' | wc -l", dir);
  fp = popen(cmd, "r");
  ck_assert_ptr_nonnull(fp);
  ck_assert_int_eq(fscanf(fp, "%d", &n), 1);
  pclose(fp);
  return n;
}

START_TEST(test_probe_finds_the_deposit_by_digest) {
  struct mailoauth_deposit_request req = request("scan.pdf");
  struct mailoauth_deposit_result res;
  struct mailoauth_deposit_ident id;
  time_t asked = time(NULL);
  int fd;

  /* An older file of the same name and size but other bytes takes the
   * plain name: the deposit becomes "scan (1).pdf".
   */
  plant("scan.pdf", "AAAAAAAAAAAAAAAA");
  fd = content("the real content");
  ck_assert_int_eq(mailoauth_deposit_file(&req, fd, &res), 0);
  ck_assert_str_eq(res.name, "scan (1).pdf");
  close(fd);

  id = ident_of("the real content", asked);
  ck_assert_int_eq(mailoauth_deposit_probe(&req, &id, &res), 0);
  ck_assert_str_eq(res.name, "scan (1).pdf");
  ck_assert_uint_eq(res.size, 16);

  /* Other bytes of the same size: not this part. */
  id = ident_of("the fake content", asked);
  ck_assert_int_eq(mailoauth_deposit_probe(&req, &id, &res), -1);
  ck_assert_int_eq(errno, ENOENT);
  ck_assert_int_eq(res.stage, MAILOAUTH_DEPOSIT_STAGE_PROBE);

  /* Asked for after the file was last changed: another message's copy. */
  id = ident_of("the real content", time(NULL) + 60);
  ck_assert_int_eq(mailoauth_deposit_probe(&req, &id, &res), -1);
  ck_assert_int_eq(errno, ENOENT);

  /* A request line from before digests: size and time only, so the
   * first file of that size in the family is taken.
   */
  id = ident_of("the real content", asked - 3600);
  id.has_sha256 = 0;
  ck_assert_int_eq(mailoauth_deposit_probe(&req, &id, &res), 0);
  ck_assert_str_eq(res.name, "scan.pdf");
}
END_TEST

START_TEST(test_probe_follows_no_link_and_hangs_on_nothing) {
  struct mailoauth_deposit_request req = request("x.bin");
  struct mailoauth_deposit_result res;
  struct mailoauth_deposit_ident id = ident_of("secret", time(NULL) - 5);
  char target[400], link[400], fifo[400];
  int fd;

  /* The matching bytes elsewhere, reached by a link of the owner's. */
  snprintf(target, sizeof(target), "%s/target", state);
  fd = open(target, O_WRONLY|O_CREAT|O_EXCL, 0600);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(write(fd, "secret", 6), 6);
  if (is_root) {
    ck_assert_int_eq(fchown(fd, owner_uid, owner_gid), 0);
  }
  close(fd);
  snprintf(link, sizeof(link), "%s/x.bin", alice);
  ck_assert_int_eq(symlink(target, link), 0);

  /* A FIFO next in the family: opening it must not wait for a writer. */
  snprintf(fifo, sizeof(fifo), "%s/x (1).bin", alice);
  ck_assert_int_eq(mkfifo(fifo, 0600), 0);
  if (is_root) {
    ck_assert_int_eq(lchown(fifo, owner_uid, owner_gid), 0);
  }

  ck_assert_int_eq(mailoauth_deposit_probe(&req, &id, &res), -1);
  ck_assert_int_eq(errno, ENOENT);

  /* The real one after them is found. */
  plant("x (2).bin", "secret");
  ck_assert_int_eq(mailoauth_deposit_probe(&req, &id, &res), 0);
  ck_assert_str_eq(res.name, "x (2).bin");
}
END_TEST

START_TEST(test_probe_makes_no_subdirectory) {
  struct mailoauth_deposit_request req = request("2026/12/a.txt");
  struct mailoauth_deposit_result res;
  struct mailoauth_deposit_ident id = ident_of("a", time(NULL) - 5);

  ck_assert_int_eq(mailoauth_deposit_probe(&req, &id, &res), -1);
  ck_assert_int_eq(errno, ENOENT);
  ck_assert_int_eq(count_entries(alice), 0);
}
END_TEST

START_TEST(test_probe_through_the_helper) {
  struct mailoauth_deposit_rule rule;
  struct mailoauth_deposit_request req = request("r.bin");
  struct mailoauth_deposit_result res;
  struct mailoauth_deposit_ident id;
  int sv[2], fd, status;
  pid_t pid;

  memset(&rule, 0, sizeof(rule));
  rule.dir = home;
  rule.uid = owner_uid;
  rule.gid = owner_gid;

  ck_assert_int_eq(mailoauth_deposit_socketpair(sv), 0);
  pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    close(sv[0]);
    _exit(mailoauth_deposit_server_run(sv[1], &rule, 1) == 0 ? 0 : 1);
  }
  close(sv[1]);

  id = ident_of("helper bytes", time(NULL) - 5);
  ck_assert_int_eq(mailoauth_deposit_client_probe(sv[0], &req, &id, 5000,
    &res), -1);
  ck_assert_int_eq(errno, ENOENT);

  fd = content("helper bytes");
  ck_assert_int_eq(mailoauth_deposit_client_file(sv[0], &req, fd, 5000,
    &res), 0);
  close(fd);
  ck_assert_int_eq(mailoauth_deposit_client_probe(sv[0], &req, &id, 5000,
    &res), 0);
  ck_assert_str_eq(res.name, "r.bin");

  /* Only where a rule allows, as for deposits. */
  req.dir = state;
  ck_assert_int_eq(mailoauth_deposit_client_probe(sv[0], &req, &id, 5000,
    &res), -1);
  ck_assert_int_eq(errno, EPERM);
  ck_assert_int_eq(res.stage, MAILOAUTH_DEPOSIT_STAGE_REQUEST);

  close(sv[0]);
  ck_assert_int_eq(waitpid(pid, &status, 0), pid);
  ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}
END_TEST

int main(void) {
  Suite *s = suite_create("deposit_probe");
  TCase *tc = tcase_create("probe");
  SRunner *sr;
  int failed;

  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_probe_finds_the_deposit_by_digest);
  tcase_add_test(tc, test_probe_follows_no_link_and_hangs_on_nothing);
  tcase_add_test(tc, test_probe_makes_no_subdirectory);
  tcase_add_test(tc, test_probe_through_the_helper);
  suite_add_tcase(s, tc);

  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
