/*
 * Unit tests: opening by path without following symbolic links, through
 * openat2() and through the component walk, and the checks made on the
 * opened file.
 */

#include "mailoauth/safeopen.h"

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef int (*opener_t)(int, const char *, int);

static const opener_t openers[2] = {
  mailoauth_safeopen_at, mailoauth_safeopen_walk
};

static char top[PATH_MAX];

/* top/d/f.txt ("upload"), top/private/secret ("secret"). */
static void setup(void) {
  char path[PATH_MAX + 64];
  FILE *f;

  snprintf(top, sizeof(top), "/tmp/safeopen-XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(top));

  snprintf(path, sizeof(path), "%s/d", top);
  ck_assert_int_eq(mkdir(path, 0755), 0);
  snprintf(path, sizeof(path), "%s/private", top);
  ck_assert_int_eq(mkdir(path, 0700), 0);

  snprintf(path, sizeof(path), "%s/d/f.txt", top);
  f = fopen(path, "w");
  ck_assert_ptr_nonnull(f);
  fputs("upload", f);
  fclose(f);

  snprintf(path, sizeof(path), "%s/private/f.txt", top);
  f = fopen(path, "w");
  ck_assert_ptr_nonnull(f);
  fputs("secret", f);
  fclose(f);
}

static void teardown(void) {
  char cmd[PATH_MAX + 16];

  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", top);
  ck_assert_int_eq(system(cmd), 0);
}

static void path_of(char *buf, size_t size, const char *rel) {
  snprintf(buf, size, "%s/%s", top, rel);
}

static void read_is(int fd, const char *want) {
  char buf[64];
  ssize_t n;

  ck_assert_int_ge(fd, 0);
  n = read(fd, buf, sizeof(buf) - 1);
  ck_assert_int_ge(n, 0);
  buf[n] = '\0';
  ck_assert_str_eq(buf, want);
  (void) close(fd);
}

/* The directory an upload sat in is swapped for a symlink to a private
 * one: the file of the same name there must not be opened.
 */
START_TEST(test_symlink_in_middle_refused) {
  char path[PATH_MAX + 64], d[PATH_MAX + 64], priv[PATH_MAX + 64];
  int fd;

  path_of(path, sizeof(path), "d/f.txt");
  read_is(openers[_i](AT_FDCWD, path, O_RDONLY), "upload");

  path_of(d, sizeof(d), "d");
  path_of(priv, sizeof(priv), "private");
  ck_assert_int_eq(rename(d, strcat(strcpy(path, d), ".old")), 0);
  ck_assert_int_eq(symlink(priv, d), 0);

  path_of(path, sizeof(path), "d/f.txt");
  errno = 0;
  fd = openers[_i](AT_FDCWD, path, O_RDONLY);
  ck_assert_int_eq(fd, -1);
  ck_assert_int_eq(errno, ELOOP);

  /* Relative to a directory descriptor, too. */
  {
    int dfd = open(top, O_PATH|O_DIRECTORY);

    ck_assert_int_ge(dfd, 0);
    errno = 0;
    ck_assert_int_eq(openers[_i](dfd, "d/f.txt", O_RDONLY), -1);
    ck_assert_int_eq(errno, ELOOP);
    read_is(openers[_i](dfd, "private/f.txt", O_RDONLY), "secret");
    (void) close(dfd);
  }
}
END_TEST

START_TEST(test_symlink_leaf_refused) {
  char path[PATH_MAX + 64], target[PATH_MAX + 64];

  path_of(target, sizeof(target), "private/f.txt");
  path_of(path, sizeof(path), "d/link.txt");
  ck_assert_int_eq(symlink(target, path), 0);

  errno = 0;
  ck_assert_int_eq(openers[_i](AT_FDCWD, path, O_RDONLY), -1);
  ck_assert_int_eq(errno, ELOOP);
}
END_TEST

/* ".", "..", doubled and trailing slashes are path syntax, not links. */
START_TEST(test_plain_paths_open) {
  char path[PATH_MAX + 64];

  path_of(path, sizeof(path), "./d//../d/./f.txt");
  read_is(openers[_i](AT_FDCWD, path, O_RDONLY), "upload");

  path_of(path, sizeof(path), "d/");
  {
    int fd = openers[_i](AT_FDCWD, path, O_RDONLY|O_DIRECTORY);

    ck_assert_int_ge(fd, 0);
    (void) close(fd);
  }

  path_of(path, sizeof(path), "d/missing");
  errno = 0;
  ck_assert_int_eq(openers[_i](AT_FDCWD, path, O_RDONLY), -1);
  ck_assert_int_eq(errno, ENOENT);

  errno = 0;
  ck_assert_int_eq(openers[_i](AT_FDCWD, "", O_RDONLY), -1);
  ck_assert_int_eq(errno, ENOENT);
}
END_TEST

/* A symlinked directory higher up (even /tmp itself would be one on some
 * systems) is refused as well: no component at all may be a link.
 */
START_TEST(test_symlink_high_up_refused) {
  char link[PATH_MAX + 64], path[PATH_MAX + 128];

  path_of(link, sizeof(link), "alias");
  ck_assert_int_eq(symlink(top, link), 0);
  snprintf(path, sizeof(path), "%s/d/f.txt", link);
  errno = 0;
  ck_assert_int_eq(openers[_i](AT_FDCWD, path, O_RDONLY), -1);
  ck_assert_int_eq(errno, ELOOP);
}
END_TEST

START_TEST(test_file_identity_mismatch_refused) {
  struct mailoauth_safeopen_expect want;
  char path[PATH_MAX + 64], other[PATH_MAX + 64];
  const char *why = NULL;
  struct stat st, st2;
  int fd;

  path_of(path, sizeof(path), "d/f.txt");
  ck_assert_int_eq(stat(path, &st), 0);
  memset(&want, 0, sizeof(want));
  want.check_id = 1;
  want.dev = st.st_dev;
  want.ino = st.st_ino;

  fd = mailoauth_safeopen_file(AT_FDCWD, path, &want, &st2, &why);
  ck_assert_int_ge(fd, 0);
  ck_assert_ptr_null(why);
  ck_assert_uint_eq(st2.st_ino, st.st_ino);
  read_is(fd, "upload");

  /* Another file renamed into its place has the name, not the identity. */
  path_of(other, sizeof(other), "d/other.txt");
  {
    FILE *f = fopen(other, "w");

    ck_assert_ptr_nonnull(f);
    fputs("other", f);
    fclose(f);
  }
  ck_assert_int_eq(rename(other, path), 0);

  errno = 0;
  ck_assert_int_eq(mailoauth_safeopen_file(AT_FDCWD, path, &want, &st2,
    &why), -1);
  ck_assert_int_eq(errno, ESTALE);
  ck_assert_ptr_nonnull(why);
}
END_TEST

START_TEST(test_file_checks) {
  struct mailoauth_safeopen_expect want;
  char path[PATH_MAX + 64], link[PATH_MAX + 64];
  const char *why = NULL;
  struct stat st;

  memset(&want, 0, sizeof(want));

  /* Not a regular file: a directory, a FIFO (without hanging). */
  path_of(path, sizeof(path), "d");
  errno = 0;
  ck_assert_int_eq(mailoauth_safeopen_file(AT_FDCWD, path, &want, &st,
    &why), -1);
  ck_assert_int_eq(errno, EINVAL);

  path_of(path, sizeof(path), "d/fifo");
  ck_assert_int_eq(mkfifo(path, 0644), 0);
  errno = 0;
  ck_assert_int_eq(mailoauth_safeopen_file(AT_FDCWD, path, &want, &st,
    &why), -1);
  ck_assert_int_eq(errno, EINVAL);

  /* Owned by the uid that must never be attached. */
  path_of(path, sizeof(path), "d/f.txt");
  want.check_owner = 1;
  want.refuse_uid = geteuid();
  errno = 0;
  ck_assert_int_eq(mailoauth_safeopen_file(AT_FDCWD, path, &want, &st,
    &why), -1);
  ck_assert_int_eq(errno, EPERM);
  ck_assert_str_eq(why, "it belongs to the server's own user");

  want.refuse_uid = geteuid() + 1;
  read_is(mailoauth_safeopen_file(AT_FDCWD, path, &want, &st, &why),
    "upload");

  /* And the path walk rules hold here too. */
  path_of(link, sizeof(link), "d/l.txt");
  ck_assert_int_eq(symlink(path, link), 0);
  errno = 0;
  ck_assert_int_eq(mailoauth_safeopen_file(AT_FDCWD, link, NULL, &st, &why),
    -1);
  ck_assert_int_eq(errno, ELOOP);
}
END_TEST

int main(void) {
  Suite *s = suite_create("safeopen");
  TCase *tc = tcase_create("open");
  SRunner *sr;
  int failed;

  tcase_add_checked_fixture(tc, setup, teardown);
  /* Each path test runs through openat2() (0) and the walk (1). */
  tcase_add_loop_test(tc, test_symlink_in_middle_refused, 0, 2);
  tcase_add_loop_test(tc, test_symlink_leaf_refused, 0, 2);
  tcase_add_loop_test(tc, test_plain_paths_open, 0, 2);
  tcase_add_loop_test(tc, test_symlink_high_up_refused, 0, 2);
  tcase_add_test(tc, test_file_identity_mismatch_refused);
  tcase_add_test(tc, test_file_checks);
  suite_add_tcase(s, tc);

  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
