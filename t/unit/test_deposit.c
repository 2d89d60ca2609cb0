/*
 * Unit tests: depositing files into users' directories, directly and
 * through the privileged helper.
 *
 * Meant to run as root (CI does): the "user" is uid/gid 2001, another user
 * 2002.  Without root the owner is the current user and the cases that need
 * root say so and pass without checking anything.
 */

#include "mailoauth/deposit.h"
#include "mailoauth/names.h"

#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define USER_ID         2001
#define OTHER_ID        2002

static uid_t owner_uid;
static gid_t owner_gid;
static int is_root;

static char base[256], home[300], alice[320], state[300];

/* ------------------------------------------------------------------------
 * Fixture and helpers.
 */

static void setup(void) {
  is_root = (geteuid() == 0);
  owner_uid = is_root ? USER_ID : geteuid();
  owner_gid = is_root ? USER_ID : getegid();

  strcpy(base, "/tmp/mailoauth-deposit-XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(base));
  ck_assert_int_eq(chmod(base, 0755), 0);
  snprintf(home, sizeof(home), "%s/home", base);
  snprintf(alice, sizeof(alice), "%s/alice", home);
  snprintf(state, sizeof(state), "%s/state", base);
  ck_assert_int_eq(mkdir(home, 0755), 0);
  ck_assert_int_eq(mkdir(alice, 0755), 0);
  ck_assert_int_eq(mkdir(state, 0700), 0);
  if (is_root) {
    ck_assert_int_eq(chown(alice, owner_uid, owner_gid), 0);
  }

  mailoauth_deposit_force_link_fallback(0);
}

static void teardown(void) {
  char cmd[400];

  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", base);
  ck_assert_int_eq(system(cmd), 0);
}

static void skip(const char *test, const char *why) {
  fprintf(stderr, "%s: SKIPPED: %s\n", test, why);
}

static struct mailoauth_deposit_request request(const char *dir,
    const char *name) {
  struct mailoauth_deposit_request req;

  memset(&req, 0, sizeof(req));
  req.dir = dir;
  req.name = name;
  req.uid = owner_uid;
  req.gid = owner_gid;
  req.mode = 0640;
  return req;
}

static void fill(unsigned char *buf, size_t len, unsigned int seed) {
  size_t i;

  for (i = 0; i < len; i++) {
    seed = seed * 1103515245U + 12345U;
    buf[i] = (unsigned char) (seed >> 16);
  }
}

/* The worker's side: an unlinked temporary file holding data, its offset
 * left at the end as a writer would leave it.
 */
static int content(const void *data, size_t len) {
  char path[400];
  const char *p = data;
  int fd;

  snprintf(path, sizeof(path), "%s/content-XXXXXX", state);
  fd = mkstemp(path);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(unlink(path), 0);

  while (len > 0) {
    ssize_t n = write(fd, p, len);

    ck_assert_int_gt(n, 0);
    p += n;
    len -= (size_t) n;
  }

  return fd;
}

static int content_str(const char *s) {
  return content(s, strlen(s));
}

static size_t slurp(const char *dir, const char *name, char *buf,
    size_t bufsz) {
  char path[1400];
  size_t have = 0;
  ssize_t n;
  int fd;

  snprintf(path, sizeof(path), "%s/%s", dir, name);
  fd = open(path, O_RDONLY|O_NOFOLLOW);
  ck_assert_msg(fd >= 0, "cannot open %s: %s", path, strerror(errno));
  while ((n = read(fd, buf + have, bufsz - have)) > 0) {
    have += (size_t) n;
  }
  close(fd);
  return have;
}

static void assert_file(const char *dir, const char *name, const char *want) {
  char buf[4096];
  size_t n = slurp(dir, name, buf, sizeof(buf) - 1);

  buf[n] = '\0';
  ck_assert_str_eq(buf, want);
}

static int count_prefix(const char *dir, const char *prefix) {
  DIR *d = opendir(dir);
  struct dirent *e;
  int n = 0;

  ck_assert_ptr_nonnull(d);
  while ((e = readdir(d)) != NULL) {
    if (strncmp(e->d_name, prefix, strlen(prefix)) == 0) {
      n++;
    }
  }
  closedir(d);
  return n;
}

/* Entries other than "." and "..". */
static int count_entries(const char *dir) {
  return count_prefix(dir, "") - 2;
}

static int exists(const char *dir, const char *name) {
  char path[1400];
  struct stat st;

  snprintf(path, sizeof(path), "%s/%s", dir, name);
  return lstat(path, &st) == 0;
}

/* A file that looks like one our crashed predecessor left. */
static void plant(const char *dir, const char *name, uid_t uid,
    time_t age) {
  char path[1400];
  struct timespec ts[2];
  int fd;

  snprintf(path, sizeof(path), "%s/%s", dir, name);
  fd = open(path, O_WRONLY|O_CREAT|O_EXCL, 0600);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(write(fd, "partial", 7), 7);
  close(fd);
  if (is_root) {
    ck_assert_int_eq(chown(path, uid, owner_gid), 0);
  }

  ts[0].tv_sec = ts[1].tv_sec = time(NULL) - age;
  ts[0].tv_nsec = ts[1].tv_nsec = 0;
  ck_assert_int_eq(utimensat(AT_FDCWD, path, ts, AT_SYMLINK_NOFOLLOW), 0);
}

/* What a child reports back to the test through a pipe. */
struct outcome {
  int skipped;          /* errno of the set-up step that was impossible */
  int n;
  int rc[8];
  int error[8];
  int stage[8];
  int temps[8];
  char name[8][64];
};

static void record(struct outcome *out, int rc,
    const struct mailoauth_deposit_result *res, const char *dir) {
  int i = out->n++;

  out->rc[i] = rc;
  out->error[i] = res->error;
  out->stage[i] = res->stage;
  out->temps[i] = dir ? count_prefix(dir, ".in.") : 0;
  snprintf(out->name[i], sizeof(out->name[i]), "%.63s", res->name);
}

/* Runs fn in a child process (as uid/gid when not (uid_t) -1), so that it
 * can change identity or mount namespace without touching the test.
 */
static void in_child(void (*fn)(struct outcome *, void *), void *arg,
    uid_t uid, gid_t gid, struct outcome *out) {
  int p[2], status;
  pid_t pid;

  memset(out, 0, sizeof(*out));
  ck_assert_int_eq(pipe(p), 0);
  pid = fork();
  ck_assert_int_ge(pid, 0);

  if (pid == 0) {
    struct outcome o;

    memset(&o, 0, sizeof(o));
    close(p[0]);
    if (uid != (uid_t) -1 &&
        (setgroups(0, NULL) < 0 ||
         setresgid(gid, gid, gid) < 0 ||
         setresuid(uid, uid, uid) < 0)) {
      o.skipped = errno;
    } else {
      fn(&o, arg);
    }
    if (write(p[1], &o, sizeof(o)) != (ssize_t) sizeof(o)) {
      _exit(2);
    }
    _exit(0);
  }

  close(p[1]);
  ck_assert_int_eq(read(p[0], out, sizeof(*out)), (ssize_t) sizeof(*out));
  close(p[0]);
  ck_assert_int_eq(waitpid(pid, &status, 0), pid);
  ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* ------------------------------------------------------------------------
 * Direct deposits.
 */

START_TEST(test_deposit_plain) {
  struct mailoauth_deposit_request req = request(alice, "report.pdf");
  struct mailoauth_deposit_result res;
  struct stat st;
  char path[400];
  int fd;

  fd = content_str("hello, world\n");
  ck_assert_int_eq(lseek(fd, 5, SEEK_SET), 5);

  ck_assert_int_eq(mailoauth_deposit_file(&req, fd, &res), 0);
  ck_assert_int_eq(res.error, 0);
  ck_assert_str_eq(res.name, "report.pdf");
  ck_assert_uint_eq(res.size, 13);
  ck_assert_int_eq(mailoauth_deposit_kind(&res), MAILOAUTH_DEPOSIT_KIND_OK);

  /* The worker's file position is its own. */
  ck_assert_int_eq(lseek(fd, 0, SEEK_CUR), 5);
  close(fd);

  assert_file(alice, "report.pdf", "hello, world\n");
  snprintf(path, sizeof(path), "%s/report.pdf", alice);
  ck_assert_int_eq(lstat(path, &st), 0);
  ck_assert(S_ISREG(st.st_mode));
  ck_assert_uint_eq(st.st_mode & 07777, 0640);
  ck_assert_uint_eq(st.st_uid, owner_uid);
  ck_assert_uint_eq(st.st_gid, owner_gid);
  ck_assert_int_eq(count_prefix(alice, ".in."), 0);
  ck_assert_int_eq(count_entries(alice), 1);

  /* Identity restored afterwards. */
  ck_assert_uint_eq(geteuid(), is_root ? 0 : owner_uid);

  /* An empty attachment is a file too. */
  req.name = "empty.txt";
  req.mode = 0600;
  fd = content("", 0);
  ck_assert_int_eq(mailoauth_deposit_file(&req, fd, &res), 0);
  close(fd);
  ck_assert_uint_eq(res.size, 0);
  assert_file(alice, "empty.txt", "");
}
END_TEST

START_TEST(test_deposit_large) {
  struct mailoauth_deposit_request req = request(alice, "big.bin");
  struct mailoauth_deposit_result res;
  size_t len = 3 * 1024 * 1024 + 17;
  unsigned char *data = malloc(len), *back = malloc(len + 1);
  int fd, pass;

  ck_assert_ptr_nonnull(data);
  ck_assert_ptr_nonnull(back);
  fill(data, len, 7);
  fd = content(data, len);

  /* Once with renameat2(), once with the link/unlink fallback. */
  for (pass = 0; pass < 2; pass++) {
    mailoauth_deposit_force_link_fallback(pass);
    ck_assert_int_eq(mailoauth_deposit_file(&req, fd, &res), 0);
    ck_assert_str_eq(res.name, pass == 0 ? "big.bin" : "big (1).bin");
    ck_assert_uint_eq(res.size, len);
    ck_assert_uint_eq(slurp(alice, res.name, (char *) back, len + 1), len);
    ck_assert(memcmp(data, back, len) == 0);
  }
  mailoauth_deposit_force_link_fallback(0);

  ck_assert_int_eq(count_prefix(alice, ".in."), 0);
  close(fd);
  free(data);
  free(back);
}
END_TEST

START_TEST(test_collision_numbering) {
  struct mailoauth_deposit_request req = request(alice, "report.pdf");
  struct mailoauth_deposit_result res;
  char path[400];
  int fd, i;

  snprintf(path, sizeof(path), "%s/report.pdf", alice);
  fd = open(path, O_WRONLY|O_CREAT|O_EXCL, 0644);
  ck_assert_int_eq(write(fd, "old", 3), 3);
  close(fd);

  for (i = 1; i <= 3; i++) {
    char want[64], text[16];

    mailoauth_deposit_force_link_fallback(i == 3);
    snprintf(text, sizeof(text), "new %d", i);
    fd = content_str(text);
    ck_assert_int_eq(mailoauth_deposit_file(&req, fd, &res), 0);
    close(fd);
    snprintf(want, sizeof(want), "report (%d).pdf", i);
    ck_assert_str_eq(res.name, want);
    assert_file(alice, want, text);
  }
  mailoauth_deposit_force_link_fallback(0);

  assert_file(alice, "report.pdf", "old");
  ck_assert_int_eq(count_entries(alice), 4);
}
END_TEST

START_TEST(test_long_and_utf8_names) {
  struct mailoauth_deposit_request req = request(alice, NULL);
  struct mailoauth_deposit_result res;
  char name[MAILOAUTH_NAMES_MAX + 1];
  int fd, i;

  /* 255 bytes: the temporary name must be cut to fit, the numbered one
   * must stay within the limit.
   */
  memset(name, 'a', 251);
  memcpy(name + 251, ".pdf", 5);
  req.name = name;
  fd = content_str("x");
  ck_assert_int_eq(mailoauth_deposit_file(&req, fd, &res), 0);
  ck_assert_str_eq(res.name, name);
  ck_assert_int_eq(mailoauth_deposit_file(&req, fd, &res), 0);
  ck_assert_uint_le(strlen(res.name), MAILOAUTH_NAMES_MAX);
  ck_assert_ptr_nonnull(strstr(res.name, " (1).pdf"));

  /* Two-byte characters across the temporary name's cut. */
  for (i = 0; i < 125; i++) {
    memcpy(name + 2 * i, "\xc3\xa9", 2);
  }
  memcpy(name + 250, ".pdf", 5);
  ck_assert_int_eq(mailoauth_deposit_file(&req, fd, &res), 0);
  ck_assert_str_eq(res.name, name);
  close(fd);

  ck_assert_int_eq(count_prefix(alice, ".in."), 0);
  ck_assert_int_eq(count_entries(alice), 3);
}
END_TEST

START_TEST(test_subdirectories) {
  struct mailoauth_deposit_request req = request(alice, "2024/05/x.pdf");
  struct mailoauth_deposit_result res;
  char path[1400];
  struct stat st;
  int fd;

  fd = content_str("monthly");
  ck_assert_int_eq(mailoauth_deposit_file(&req, fd, &res), 0);
  ck_assert_str_eq(res.name, "2024/05/x.pdf");
  ck_assert_int_eq(mailoauth_deposit_file(&req, fd, &res), 0);
  ck_assert_str_eq(res.name, "2024/05/x (1).pdf");
  close(fd);

  /* A numbered name that would no longer fit the longest relative name:
   * refused, nothing left behind.
   */
  {
    char longname[MAILOAUTH_DEPOSIT_NAME_MAX + 1], *q = longname;
    int j;

    for (j = 0; j < 4; j++) {
      memset(q, 'd', 250);
      q[250] = '/';
      q += 251;
    }
    strcpy(q, "abcdefghijklmn.txt");
    ck_assert_uint_eq(strlen(longname), 1022);
    req.name = longname;
    fd = content_str("deep");
    ck_assert_int_eq(mailoauth_deposit_file(&req, fd, &res), 0);
    ck_assert_str_eq(res.name, longname);
    ck_assert_int_eq(mailoauth_deposit_file(&req, fd, &res), -1);
    ck_assert_int_eq(res.error, ENAMETOOLONG);
    ck_assert_int_eq(res.stage, MAILOAUTH_DEPOSIT_STAGE_RENAME);
    *strrchr(longname, '/') = '\0';
    snprintf(path, sizeof(path), "%s/%s", alice, longname);
    ck_assert_int_eq(count_prefix(path, ".in."), 0);
    ck_assert_int_eq(count_entries(path), 1);
    close(fd);
  }

  assert_file(alice, "2024/05/x.pdf", "monthly");
  snprintf(path, sizeof(path), "%s/2024/05", alice);
  ck_assert_int_eq(lstat(path, &st), 0);
  ck_assert(S_ISDIR(st.st_mode));
  ck_assert_uint_eq(st.st_mode & 07777, 0750);    /* file 0640 */
  ck_assert_uint_eq(st.st_uid, owner_uid);
  ck_assert_int_eq(count_prefix(path, ".in."), 0);
}
END_TEST

/* ------------------------------------------------------------------------
 * Symbolic links.
 */

START_TEST(test_symlink_in_path_refused) {
  struct mailoauth_deposit_request req;
  struct mailoauth_deposit_result res;
  char link1[400], link2[400], dir2[500];
  int fd;

  /* The last component a link... */
  snprintf(link1, sizeof(link1), "%s/link", home);
  ck_assert_int_eq(symlink(alice, link1), 0);
  /* ...or one in the middle. */
  snprintf(link2, sizeof(link2), "%s/homelink", base);
  ck_assert_int_eq(symlink(home, link2), 0);
  snprintf(dir2, sizeof(dir2), "%s/alice", link2);

  fd = content_str("data");

  req = request(link1, "a.txt");
  ck_assert_int_eq(mailoauth_deposit_file(&req, fd, &res), -1);
  ck_assert_int_eq(errno, ELOOP);
  ck_assert_int_eq(res.error, ELOOP);
  ck_assert_int_eq(res.stage, MAILOAUTH_DEPOSIT_STAGE_PATH);
  ck_assert_int_eq(mailoauth_deposit_kind(&res), MAILOAUTH_DEPOSIT_KIND_UNSAFE);

  req = request(dir2, "a.txt");
  ck_assert_int_eq(mailoauth_deposit_file(&req, fd, &res), -1);
  ck_assert_int_eq(res.error, ELOOP);
  ck_assert_int_eq(res.stage, MAILOAUTH_DEPOSIT_STAGE_PATH);

  ck_assert_int_eq(count_entries(alice), 0);

  /* Redundant slashes and "." are not links. */
  {
    char odd[500];

    snprintf(odd, sizeof(odd), "%s//./alice/", home);
    req = request(odd, "a.txt");
    ck_assert_int_eq(mailoauth_deposit_file(&req, fd, &res), 0);
    assert_file(alice, "a.txt", "data");
  }

  close(fd);
}
END_TEST

START_TEST(test_symlink_at_final_name) {
  struct mailoauth_deposit_request req = request(alice, "report.pdf");
  struct mailoauth_deposit_result res;
  char victim[400], link[400], missing[400];
  struct stat st;
  int fd;

  snprintf(victim, sizeof(victim), "%s/victim", base);
  fd = open(victim, O_WRONLY|O_CREAT|O_EXCL, 0644);
  ck_assert_int_eq(write(fd, "secret", 6), 6);
  close(fd);

  snprintf(link, sizeof(link), "%s/report.pdf", alice);
  ck_assert_int_eq(symlink(victim, link), 0);
  if (is_root) {
    ck_assert_int_eq(lchown(link, owner_uid, owner_gid), 0);
  }

  fd = content_str("attacker wanted this in the victim");
  ck_assert_int_eq(mailoauth_deposit_file(&req, fd, &res), 0);
  ck_assert_str_eq(res.name, "report (1).pdf");
  assert_file(base, "victim", "secret");
  ck_assert_int_eq(lstat(link, &st), 0);
  ck_assert(S_ISLNK(st.st_mode));

  /* A dangling link must not create its target either. */
  snprintf(missing, sizeof(missing), "%s/created-through-link", base);
  snprintf(link, sizeof(link), "%s/notes.txt", alice);
  ck_assert_int_eq(symlink(missing, link), 0);
  req.name = "notes.txt";
  ck_assert_int_eq(mailoauth_deposit_file(&req, fd, &res), 0);
  ck_assert_str_eq(res.name, "notes (1).txt");
  ck_assert_int_eq(lstat(missing, &st), -1);
  close(fd);
}
END_TEST

START_TEST(test_symlink_subdirectory_refused) {
  struct mailoauth_deposit_request req = request(alice, "2024/x.pdf");
  struct mailoauth_deposit_result res;
  char elsewhere[400], link[400];
  int fd;

  snprintf(elsewhere, sizeof(elsewhere), "%s/elsewhere", base);
  ck_assert_int_eq(mkdir(elsewhere, 0777), 0);
  snprintf(link, sizeof(link), "%s/2024", alice);
  ck_assert_int_eq(symlink(elsewhere, link), 0);

  fd = content_str("x");
  ck_assert_int_eq(mailoauth_deposit_file(&req, fd, &res), -1);
  ck_assert_int_eq(res.error, ELOOP);
  ck_assert_int_eq(res.stage, MAILOAUTH_DEPOSIT_STAGE_SUBDIR);
  ck_assert_int_eq(count_entries(elsewhere), 0);
  close(fd);
}
END_TEST

/* ------------------------------------------------------------------------
 * Refusals and errors.
 */

static void expect_refused(struct mailoauth_deposit_request *req, int fd,
    int err, int stage) {
  struct mailoauth_deposit_result res;

  errno = 0;
  ck_assert_int_eq(mailoauth_deposit_file(req, fd, &res), -1);
  ck_assert_msg(errno == err && res.error == err && res.stage == stage,
    "dir '%s' name '%s' uid %lu mode %o: got %s at %s, want %s at %s",
    req->dir ? req->dir : "(null)", req->name ? req->name : "(null)",
    (unsigned long) req->uid, (unsigned) req->mode, strerror(res.error),
    mailoauth_deposit_stage_name(res.stage), strerror(err),
    mailoauth_deposit_stage_name(stage));
}

START_TEST(test_refusals) {
  static const char *bad_names[] = { "", ".hidden", "../x", "a/../x",
    "a//b", "a/", "/abs", "./x", "x\ny", "x\\y", "a/.b/c", "tab\there" };
  struct mailoauth_deposit_request req;
  char rel[400], dotdot[500];
  gid_t groups[2];
  int fd, p[2];
  size_t i;

  fd = content_str("x");

  /* Never as root, in any form. */
  req = request(alice, "a.txt");
  req.uid = 0;
  expect_refused(&req, fd, EPERM, MAILOAUTH_DEPOSIT_STAGE_REQUEST);
  req = request(alice, "a.txt");
  req.gid = 0;
  expect_refused(&req, fd, EPERM, MAILOAUTH_DEPOSIT_STAGE_REQUEST);
  req = request(alice, "a.txt");
  groups[0] = owner_gid;
  groups[1] = 0;
  req.groups = groups;
  req.ngroups = 2;
  expect_refused(&req, fd, EPERM, MAILOAUTH_DEPOSIT_STAGE_REQUEST);

  /* Paths. */
  snprintf(rel, sizeof(rel), "%s", alice + 1);
  req = request(rel, "a.txt");
  expect_refused(&req, fd, EINVAL, MAILOAUTH_DEPOSIT_STAGE_REQUEST);
  snprintf(dotdot, sizeof(dotdot), "%s/../alice", home);
  req = request(dotdot, "a.txt");
  expect_refused(&req, fd, EINVAL, MAILOAUTH_DEPOSIT_STAGE_REQUEST);
  req = request(NULL, "a.txt");
  expect_refused(&req, fd, EINVAL, MAILOAUTH_DEPOSIT_STAGE_REQUEST);

  for (i = 0; i < sizeof(bad_names) / sizeof(bad_names[0]); i++) {
    req = request(alice, bad_names[i]);
    expect_refused(&req, fd, EINVAL, MAILOAUTH_DEPOSIT_STAGE_REQUEST);
  }

  /* Modes. */
  req = request(alice, "a.txt");
  req.mode = 04755;
  expect_refused(&req, fd, EINVAL, MAILOAUTH_DEPOSIT_STAGE_REQUEST);
  req.mode = 0;
  expect_refused(&req, fd, EINVAL, MAILOAUTH_DEPOSIT_STAGE_REQUEST);

  /* Content that is not a regular file. */
  req = request(alice, "a.txt");
  ck_assert_int_eq(pipe(p), 0);
  expect_refused(&req, p[0], EINVAL, MAILOAUTH_DEPOSIT_STAGE_CONTENT);
  close(p[0]);
  close(p[1]);
  expect_refused(&req, -1, EBADF, MAILOAUTH_DEPOSIT_STAGE_CONTENT);

  /* A directory that does not exist. */
  snprintf(rel, sizeof(rel), "%s/nobody", home);
  req = request(rel, "a.txt");
  expect_refused(&req, fd, ENOENT, MAILOAUTH_DEPOSIT_STAGE_PATH);

  ck_assert_int_eq(count_entries(alice), 0);
  close(fd);
}
END_TEST

START_TEST(test_unwritable_directory) {
  struct mailoauth_deposit_request req;
  struct mailoauth_deposit_result res;
  char dir[400], msg[256];
  int fd;

  fd = content_str("x");

  if (is_root) {
    /* Root could write there; the owner cannot, so neither may we. */
    snprintf(dir, sizeof(dir), "%s/rootonly", home);
    ck_assert_int_eq(mkdir(dir, 0755), 0);
    req = request(dir, "a.txt");
    ck_assert_int_eq(mailoauth_deposit_file(&req, fd, &res), -1);
    ck_assert_int_eq(res.error, EACCES);
    ck_assert_int_eq(res.stage, MAILOAUTH_DEPOSIT_STAGE_CREATE);
    ck_assert_int_eq(count_entries(dir), 0);

    /* Another user's private directory. */
    snprintf(dir, sizeof(dir), "%s/bob", home);
    ck_assert_int_eq(mkdir(dir, 0700), 0);
    ck_assert_int_eq(chown(dir, OTHER_ID, OTHER_ID), 0);
    req = request(dir, "a.txt");
    ck_assert_int_eq(mailoauth_deposit_file(&req, fd, &res), -1);
    ck_assert_int_eq(res.error, EACCES);
    ck_assert_int_eq(count_entries(dir), 0);

  } else {
    ck_assert_int_eq(chmod(alice, 0555), 0);
    req = request(alice, "a.txt");
    ck_assert_int_eq(mailoauth_deposit_file(&req, fd, &res), -1);
    ck_assert_int_eq(res.error, EACCES);
    ck_assert_int_eq(chmod(alice, 0755), 0);
  }

  ck_assert_int_eq(mailoauth_deposit_kind(&res),
    MAILOAUTH_DEPOSIT_KIND_PERMISSION);
  mailoauth_deposit_describe(&res, msg, sizeof(msg));
  ck_assert_ptr_nonnull(strstr(msg, "may not write"));
  close(fd);
}
END_TEST

static void as_owner_deposits(struct outcome *out, void *arg) {
  struct mailoauth_deposit_request req = request(alice, "mine.txt");
  struct mailoauth_deposit_result res;
  int fd = *(int *) arg, rc;

  rc = mailoauth_deposit_file(&req, fd, &res);
  record(out, rc, &res, alice);

  /* Without root, nobody else's identity. */
  req.uid = OTHER_ID;
  req.gid = OTHER_ID;
  rc = mailoauth_deposit_file(&req, fd, &res);
  record(out, rc, &res, alice);
}

START_TEST(test_as_owner_without_root) {
  struct outcome out;
  struct stat st;
  char path[400];
  int fd;

  if (!is_root) {
    skip("test_as_owner_without_root", "needs root to become the owner");
    return;
  }

  fd = content_str("written by the owner");
  in_child(as_owner_deposits, &fd, owner_uid, owner_gid, &out);
  close(fd);

  ck_assert_int_eq(out.skipped, 0);
  ck_assert_int_eq(out.rc[0], 0);
  ck_assert_str_eq(out.name[0], "mine.txt");
  ck_assert_int_eq(out.rc[1], -1);
  ck_assert_int_eq(out.error[1], EPERM);
  ck_assert_int_eq(out.stage[1], MAILOAUTH_DEPOSIT_STAGE_REQUEST);

  assert_file(alice, "mine.txt", "written by the owner");
  snprintf(path, sizeof(path), "%s/mine.txt", alice);
  ck_assert_int_eq(stat(path, &st), 0);
  ck_assert_uint_eq(st.st_uid, owner_uid);
}
END_TEST

/* Runs in a child with its own mount namespace: a 64 KiB tmpfs. */
static void disk_full_child(struct outcome *out, void *arg) {
  const char *dir = arg;
  struct mailoauth_deposit_request req = request(dir, "big.bin");
  struct mailoauth_deposit_result res;
  unsigned char *data;
  size_t len = 200 * 1024;
  int fd, rc;

  if (unshare(CLONE_NEWNS) < 0 ||
      mount(NULL, "/", NULL, MS_REC|MS_PRIVATE, NULL) < 0 ||
      mount("tmpfs", dir, "tmpfs", MS_NOSUID|MS_NODEV, "size=64k,mode=0755") < 0 ||
      chown(dir, owner_uid, owner_gid) < 0) {
    out->skipped = errno;
    return;
  }

  data = malloc(len);
  fill(data, len, 3);
  fd = content(data, len);

  /* No floor: the write itself runs out of space. */
  rc = mailoauth_deposit_file(&req, fd, &res);
  record(out, rc, &res, dir);

  /* A floor: refused before writing. */
  req.min_free = 1024 * 1024;
  req.name = "small.bin";
  close(fd);
  fd = content(data, 1000);
  rc = mailoauth_deposit_file(&req, fd, &res);
  record(out, rc, &res, dir);

  /* After the failure the space is back: the small file fits. */
  req.min_free = 0;
  rc = mailoauth_deposit_file(&req, fd, &res);
  record(out, rc, &res, dir);

  close(fd);
  free(data);
  (void) umount(dir);
}

START_TEST(test_disk_full) {
  struct mailoauth_deposit_result res;
  struct outcome out;
  char dir[400], msg[256];

  if (!is_root) {
    skip("test_disk_full", "needs root to mount a tmpfs");
    return;
  }

  snprintf(dir, sizeof(dir), "%s/full", home);
  ck_assert_int_eq(mkdir(dir, 0755), 0);
  in_child(disk_full_child, dir, (uid_t) -1, (gid_t) -1, &out);
  if (out.skipped != 0) {
    char why[128];

    snprintf(why, sizeof(why), "cannot mount a 64k tmpfs here (%s)",
      strerror(out.skipped));
    skip("test_disk_full", why);
    return;
  }

  ck_assert_int_eq(out.rc[0], -1);
  ck_assert_int_eq(out.error[0], ENOSPC);
  ck_assert_int_eq(out.stage[0], MAILOAUTH_DEPOSIT_STAGE_WRITE);
  ck_assert_int_eq(out.temps[0], 0);    /* the partial file is gone */

  ck_assert_int_eq(out.rc[1], -1);
  ck_assert_int_eq(out.error[1], ENOSPC);
  ck_assert_int_eq(out.stage[1], MAILOAUTH_DEPOSIT_STAGE_SPACE);
  ck_assert_int_eq(out.temps[1], 0);

  ck_assert_int_eq(out.rc[2], 0);
  ck_assert_str_eq(out.name[2], "small.bin");

  /* Distinct, clear messages for the two cases. */
  memset(&res, 0, sizeof(res));
  res.error = ENOSPC;
  res.stage = MAILOAUTH_DEPOSIT_STAGE_WRITE;
  ck_assert_int_eq(mailoauth_deposit_kind(&res), MAILOAUTH_DEPOSIT_KIND_NOSPACE);
  mailoauth_deposit_describe(&res, msg, sizeof(msg));
  ck_assert_ptr_nonnull(strstr(msg, "disk full"));
  res.stage = MAILOAUTH_DEPOSIT_STAGE_SPACE;
  mailoauth_deposit_describe(&res, msg, sizeof(msg));
  ck_assert_ptr_nonnull(strstr(msg, "below the configured minimum"));
}
END_TEST

START_TEST(test_error_kinds) {
  static const struct {
    int error, stage, kind;
    const char *text;
  } cases[] = {
    { ENOSPC, MAILOAUTH_DEPOSIT_STAGE_WRITE, MAILOAUTH_DEPOSIT_KIND_NOSPACE,
      "disk full" },
    { EDQUOT, MAILOAUTH_DEPOSIT_STAGE_WRITE, MAILOAUTH_DEPOSIT_KIND_QUOTA,
      "quota" },
    { EDQUOT, MAILOAUTH_DEPOSIT_STAGE_CREATE, MAILOAUTH_DEPOSIT_KIND_QUOTA,
      "quota" },
    { EACCES, MAILOAUTH_DEPOSIT_STAGE_CREATE,
      MAILOAUTH_DEPOSIT_KIND_PERMISSION, "may not write" },
    { EROFS, MAILOAUTH_DEPOSIT_STAGE_CREATE,
      MAILOAUTH_DEPOSIT_KIND_PERMISSION, "may not write" },
    { ELOOP, MAILOAUTH_DEPOSIT_STAGE_PATH, MAILOAUTH_DEPOSIT_KIND_UNSAFE,
      "symbolic link" },
    { ENOENT, MAILOAUTH_DEPOSIT_STAGE_PATH, MAILOAUTH_DEPOSIT_KIND_MISSING,
      "does not exist" },
    { EPERM, MAILOAUTH_DEPOSIT_STAGE_REQUEST, MAILOAUTH_DEPOSIT_KIND_REFUSED,
      "refused" },
    { ECONNRESET, MAILOAUTH_DEPOSIT_STAGE_HELPER,
      MAILOAUTH_DEPOSIT_KIND_HELPER, "helper" },
    { EIO, MAILOAUTH_DEPOSIT_STAGE_SYNC, MAILOAUTH_DEPOSIT_KIND_OTHER,
      "flushing the file" },
  };
  size_t i;

  for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    struct mailoauth_deposit_result res;
    char msg[256];

    memset(&res, 0, sizeof(res));
    res.error = cases[i].error;
    res.stage = cases[i].stage;
    ck_assert_int_eq(mailoauth_deposit_kind(&res), cases[i].kind);
    mailoauth_deposit_describe(&res, msg, sizeof(msg));
    ck_assert_msg(strstr(msg, cases[i].text) != NULL, "'%s' lacks '%s'", msg,
      cases[i].text);
  }

  ck_assert_int_eq(mailoauth_deposit_kind(NULL), MAILOAUTH_DEPOSIT_KIND_OK);
  ck_assert_str_eq(mailoauth_deposit_stage_name(MAILOAUTH_DEPOSIT_STAGE_RENAME),
    "rename");
  ck_assert_str_eq(mailoauth_deposit_stage_name(999), "unknown");
}
END_TEST

/* Another writer creating the same name at any moment: its file is never
 * replaced (RENAME_NOREPLACE, or link() which cannot replace either).  On a
 * tmpfs when one can be mounted (fsync() costs nothing there, so the race
 * is run thousands of times a second), else in the test's directory.
 */
static void race_child(struct outcome *out, void *arg) {
  const char *dir = arg;
  struct mailoauth_deposit_request req = request(dir, "race.txt");
  char path[400];
  int fd, p[2], status, pass;

  if (is_root &&
      (unshare(CLONE_NEWNS) < 0 ||
       mount(NULL, "/", NULL, MS_REC|MS_PRIVATE, NULL) < 0 ||
       mount("tmpfs", dir, "tmpfs", MS_NOSUID|MS_NODEV, "size=16m") < 0 ||
       chown(dir, owner_uid, owner_gid) < 0)) {
    out->skipped = errno;
  }
  if (!is_root) {
    out->skipped = EPERM;
  }

  snprintf(path, sizeof(path), "%s/race.txt", dir);
  fd = content_str("deposit");

  for (pass = 0; pass < 2; pass++) {
    struct timespec start, now;
    int deposits = 0, replaced = -1, failed = 0;
    pid_t pid;

    if (pipe(p) < 0) {
      _exit(3);
    }
    pid = fork();
    if (pid == 0) {
      /* The racer: creates the name exclusively, checks that what it
       * wrote is still what the name holds, removes it, again.
       */
      int hits = 0, rounds = 0;

      close(p[0]);
      for (;;) {
        char buf[16];
        ssize_t n;
        int wfd = open(path, O_WRONLY|O_CREAT|O_EXCL, 0644);

        if (wfd >= 0) {
          if (write(wfd, "racer", 5) != 5) {
            _exit(2);
          }
          close(wfd);
          wfd = open(path, O_RDONLY);
          if (wfd >= 0) {
            n = read(wfd, buf, sizeof(buf));
            close(wfd);
            if (n != 5 || memcmp(buf, "racer", 5) != 0) {
              hits++;
            }
          }
          (void) unlink(path);
        }

        if (++rounds % 64 == 0 &&
            write(p[1], &hits, sizeof(hits)) != (ssize_t) sizeof(hits)) {
          _exit(2);
        }
      }
    }
    close(p[1]);

    mailoauth_deposit_force_link_fallback(pass);
    clock_gettime(CLOCK_MONOTONIC, &start);
    do {
      struct mailoauth_deposit_result res;
      char mine[1500];

      if (mailoauth_deposit_file(&req, fd, &res) < 0) {
        failed++;
      } else {
        /* Ours to remove: while it exists the racer cannot take it. */
        snprintf(mine, sizeof(mine), "%s/%s", dir, res.name);
        (void) unlink(mine);
      }
      deposits++;
      clock_gettime(CLOCK_MONOTONIC, &now);
    } while ((now.tv_sec - start.tv_sec) * 1000 +
      (now.tv_nsec - start.tv_nsec) / 1000000 < 1500);
    mailoauth_deposit_force_link_fallback(0);

    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    {
      int v;

      while (read(p[0], &v, sizeof(v)) == (ssize_t) sizeof(v)) {
        replaced = v;
      }
    }
    close(p[0]);

    out->rc[out->n] = deposits;
    out->error[out->n] = replaced;
    out->stage[out->n] = failed;
    out->n++;
  }

  close(fd);
  if (out->skipped == 0 && is_root) {
    (void) umount(dir);
  }
}

START_TEST(test_rename_race_never_replaces) {
  struct outcome out;
  char dir[400];
  int pass;

  snprintf(dir, sizeof(dir), "%s/race", home);
  ck_assert_int_eq(mkdir(dir, 0755), 0);
  if (is_root) {
    ck_assert_int_eq(chown(dir, owner_uid, owner_gid), 0);
  }

  in_child(race_child, dir, (uid_t) -1, (gid_t) -1, &out);
  for (pass = 0; pass < 2; pass++) {
    fprintf(stderr, "test_rename_race (%s, %s): %d deposits, %d failed, "
      "the other writer's file replaced %d times\n",
      pass ? "link" : "renameat2", out.skipped ? "on disk" : "on tmpfs",
      out.rc[pass], out.stage[pass], out.error[pass]);
    ck_assert_int_gt(out.rc[pass], 0);
    ck_assert_int_eq(out.stage[pass], 0);
    ck_assert_int_eq(out.error[pass], 0);
  }
}
END_TEST

/* ------------------------------------------------------------------------
 * Crashes and what they leave.
 */

#define OLD_TEMP        ".in.a.pdf.0123456789abcdef.mailoauth."

START_TEST(test_stale_temp_cleanup) {
  struct mailoauth_deposit_request req = request(alice, NULL);
  struct mailoauth_deposit_result res;
  char sub[400], link[400];
  struct timespec ts[2];

  plant(alice, OLD_TEMP, owner_uid, 7200);
  plant(alice, ".in.fresh.pdf.00000000000000aa.mailoauth.", owner_uid, 10);
  /* ProFTPD's own HiddenStores upload in progress: never ours to remove. */
  plant(alice, ".in.upload.bin.", owner_uid, 7200);
  /* Near misses of the pattern. */
  plant(alice, ".in.b.0123456789ABCDEF.mailoauth.", owner_uid, 7200);
  plant(alice, ".in.b.0123456789abcde.mailoauth.", owner_uid, 7200);
  plant(alice, "x.in.b.0123456789abcdef.mailoauth.", owner_uid, 7200);
  if (is_root) {
    /* Not the owner's. */
    plant(alice, ".in.c.0123456789abcdef.mailoauth.", OTHER_ID, 7200);
  }
  /* A link with our pattern is not a file we wrote. */
  snprintf(link, sizeof(link), "%s/.in.d.0123456789abcdef.mailoauth.", alice);
  ck_assert_int_eq(symlink("/etc/passwd", link), 0);
  ts[0].tv_sec = ts[1].tv_sec = time(NULL) - 7200;
  ts[0].tv_nsec = ts[1].tv_nsec = 0;
  ck_assert_int_eq(utimensat(AT_FDCWD, link, ts, AT_SYMLINK_NOFOLLOW), 0);

  snprintf(sub, sizeof(sub), "%s/2024", alice);
  ck_assert_int_eq(mkdir(sub, 0755), 0);
  if (is_root) {
    ck_assert_int_eq(chown(sub, owner_uid, owner_gid), 0);
  }
  plant(sub, OLD_TEMP, owner_uid, 7200);

  req.max_age = 3600;
  req.depth = 0;
  ck_assert_int_eq(mailoauth_deposit_cleanup(&req, &res), 0);
  ck_assert_uint_eq(res.removed, 1);
  ck_assert(!exists(alice, OLD_TEMP));
  ck_assert(exists(sub, OLD_TEMP));

  req.depth = 1;
  ck_assert_int_eq(mailoauth_deposit_cleanup(&req, &res), 0);
  ck_assert_uint_eq(res.removed, 1);
  ck_assert(!exists(sub, OLD_TEMP));

  ck_assert(exists(alice, ".in.fresh.pdf.00000000000000aa.mailoauth."));
  ck_assert(exists(alice, ".in.upload.bin."));
  ck_assert(exists(alice, ".in.b.0123456789ABCDEF.mailoauth."));
  ck_assert(exists(alice, ".in.b.0123456789abcde.mailoauth."));
  ck_assert(exists(alice, "x.in.b.0123456789abcdef.mailoauth."));
  ck_assert(exists(alice, ".in.d.0123456789abcdef.mailoauth."));
  if (is_root) {
    ck_assert(exists(alice, ".in.c.0123456789abcdef.mailoauth."));
  }
  ck_assert_int_eq(access("/etc/passwd", F_OK), 0);

  /* Refused like a deposit. */
  req.uid = 0;
  ck_assert_int_eq(mailoauth_deposit_cleanup(&req, &res), -1);
  ck_assert_int_eq(res.stage, MAILOAUTH_DEPOSIT_STAGE_REQUEST);
}
END_TEST

#define KILL_ROUNDS     12
#define KILL_SIZE       (2 * 1024 * 1024 + 3)

START_TEST(test_kill9_leaves_whole_files_only) {
  struct mailoauth_deposit_request req = request(alice, "big.bin");
  struct mailoauth_deposit_result res;
  unsigned char *data, *back;
  struct dirent *e;
  int fd, round, visible = 0;
  DIR *d;

  data = malloc(KILL_SIZE);
  back = malloc(KILL_SIZE + 1);
  fill(data, KILL_SIZE, 11);
  fd = content(data, KILL_SIZE);
  srand((unsigned int) getpid());

  for (round = 0; round < KILL_ROUNDS; round++) {
    int status;
    pid_t pid = fork();

    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
      for (;;) {
        (void) mailoauth_deposit_file(&req, fd, NULL);
      }
    }

    usleep((useconds_t) (1000 + rand() % 40000));
    ck_assert_int_eq(kill(pid, SIGKILL), 0);
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert(WIFSIGNALED(status));
  }

  /* Every visible file is whole. */
  d = opendir(alice);
  ck_assert_ptr_nonnull(d);
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.') {
      continue;
    }
    visible++;
    ck_assert_uint_eq(slurp(alice, e->d_name, (char *) back, KILL_SIZE + 1),
      KILL_SIZE);
    ck_assert_msg(memcmp(back, data, KILL_SIZE) == 0, "%s damaged",
      e->d_name);
  }
  closedir(d);
  fprintf(stderr, "test_kill9: %d whole files, %d temporary files after "
    "%d kills\n", visible, count_prefix(alice, ".in."), KILL_ROUNDS);

  /* What was cut short is hidden, and the next run removes it. */
  req.max_age = 0;
  ck_assert_int_eq(mailoauth_deposit_cleanup(&req, &res), 0);
  ck_assert_int_eq(count_prefix(alice, ".in."), 0);
  ck_assert_int_eq(count_entries(alice), visible);

  close(fd);
  free(data);
  free(back);
}
END_TEST

/* ------------------------------------------------------------------------
 * The helper.
 */

struct helper {
  pid_t pid;
  int sock;
};

static struct mailoauth_deposit_rule rules[1];
static gid_t rule_groups[1];

static void helper_start(struct helper *h) {
  int sv[2];

  rules[0].dir = home;
  rules[0].uid = owner_uid;
  rules[0].gid = owner_gid;
  rule_groups[0] = owner_gid;
  rules[0].groups = is_root ? rule_groups : NULL;
  rules[0].ngroups = is_root ? 1 : 0;

  ck_assert_int_eq(mailoauth_deposit_socketpair(sv), 0);
  h->pid = fork();
  ck_assert_int_ge(h->pid, 0);
  if (h->pid == 0) {
    close(sv[0]);
    _exit(mailoauth_deposit_server_run(sv[1], rules, 1) == 0 ? 0 : 1);
  }

  close(sv[1]);
  h->sock = sv[0];
}

/* The helper must end by itself once the worker's end is closed. */
static void helper_stop(struct helper *h) {
  int i, status;

  close(h->sock);
  for (i = 0; i < 500; i++) {
    pid_t r = waitpid(h->pid, &status, WNOHANG);

    ck_assert_int_ge(r, 0);
    if (r == h->pid) {
      ck_assert(WIFEXITED(status));
      ck_assert_int_eq(WEXITSTATUS(status), 0);
      return;
    }
    usleep(10000);
  }

  kill(h->pid, SIGKILL);
  waitpid(h->pid, &status, 0);
  ck_abort_msg("helper did not exit after its socket closed");
}

static void helper_alive(struct helper *h, const char *name) {
  struct mailoauth_deposit_request req = request(alice, name);
  struct mailoauth_deposit_result res;
  int fd = content_str(name);

  ck_assert_int_eq(mailoauth_deposit_client_file(h->sock, &req, fd, 5000,
    &res), 0);
  ck_assert_str_eq(res.name, name);
  assert_file(alice, name, name);
  close(fd);
}

static uint32_t be32(const unsigned char *p) {
  return ((uint32_t) p[0] << 24) | ((uint32_t) p[1] << 16) |
    ((uint32_t) p[2] << 8) | p[3];
}

static void put_be32(unsigned char *p, uint32_t v) {
  p[0] = (unsigned char) (v >> 24);
  p[1] = (unsigned char) (v >> 16);
  p[2] = (unsigned char) (v >> 8);
  p[3] = (unsigned char) v;
}

/* Sends raw bytes (and optionally descriptors), returns the reply's errno. */
static int raw_request(struct helper *h, const void *buf, size_t len,
    const int *fds, int nfds) {
  union {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int) * 4)];
  } control;
  unsigned char reply[2048];
  struct msghdr msg;
  struct iovec iov;
  int32_t err;
  ssize_t n;

  memset(&msg, 0, sizeof(msg));
  iov.iov_base = (void *) buf;
  iov.iov_len = len;
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (nfds > 0) {
    struct cmsghdr *cmsg;

    memset(&control, 0, sizeof(control));
    msg.msg_control = control.buf;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
    cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    memcpy(CMSG_DATA(cmsg), fds, sizeof(int) * nfds);
  }
  ck_assert_int_eq(sendmsg(h->sock, &msg, MSG_NOSIGNAL), (ssize_t) len);

  /* An imsg reply: 16-byte header, then errno first in the payload. */
  n = recv(h->sock, reply, sizeof(reply), 0);
  ck_assert_int_ge(n, 16 + 22);
  ck_assert_uint_eq(be32(reply + 4), (uint32_t) n - 16);
  memcpy(&err, reply + 16, sizeof(err));
  return err;
}

/* A well-formed request for raw_request(): the imsg header (type = op,
 * payload length, id 77), then the request's fields.
 */
static size_t raw_header(unsigned char *buf, uint32_t op, const char *dir,
    const char *name) {
  uint32_t v;
  uint64_t z = 0;
  uint16_t dl = (uint16_t) strlen(dir), nl = (uint16_t) strlen(name);
  unsigned char *p = buf + 16;

  put_be32(buf, op);
  put_be32(buf + 4, 32 + (uint32_t) dl + nl);
  put_be32(buf + 8, 77);
  put_be32(buf + 12, 0);
  v = owner_uid;
  memcpy(p, &v, 4);
  v = owner_gid;
  memcpy(p + 4, &v, 4);
  v = 0644;
  memcpy(p + 8, &v, 4);
  memcpy(p + 12, &z, 8);
  memset(p + 20, 0, 8);
  memcpy(p + 28, &dl, 2);
  memcpy(p + 30, &nl, 2);
  memcpy(p + 32, dir, dl);
  memcpy(p + 32 + dl, name, nl);
  return 16 + 32 + (size_t) dl + nl;
}

START_TEST(test_helper_round_trip) {
  struct mailoauth_deposit_request req;
  struct mailoauth_deposit_result res;
  struct helper h;
  struct stat st;
  char path[400], other[400], dotdot[500];
  int fd;

  helper_start(&h);

  req = request(alice, "from-helper.txt");
  req.mode = 0644;
  fd = content_str("through the helper\n");
  ck_assert_int_eq(mailoauth_deposit_client_file(h.sock, &req, fd, 5000,
    &res), 0);
  ck_assert_str_eq(res.name, "from-helper.txt");
  ck_assert_uint_eq(res.size, 19);
  assert_file(alice, "from-helper.txt", "through the helper\n");
  snprintf(path, sizeof(path), "%s/from-helper.txt", alice);
  ck_assert_int_eq(stat(path, &st), 0);
  ck_assert_uint_eq(st.st_uid, owner_uid);
  ck_assert_uint_eq(st.st_gid, owner_gid);
  ck_assert_uint_eq(st.st_mode & 07777, 0644);

  /* Collisions through the helper too. */
  ck_assert_int_eq(mailoauth_deposit_client_file(h.sock, &req, fd, 5000,
    &res), 0);
  ck_assert_str_eq(res.name, "from-helper (1).txt");

  /* Outside every rule. */
  req = request(state, "x.txt");
  ck_assert_int_eq(mailoauth_deposit_client_file(h.sock, &req, fd, 5000,
    &res), -1);
  ck_assert_int_eq(errno, EPERM);
  ck_assert_int_eq(res.stage, MAILOAUTH_DEPOSIT_STAGE_REQUEST);
  ck_assert_int_eq(mailoauth_deposit_kind(&res), MAILOAUTH_DEPOSIT_KIND_REFUSED);

  /* A sibling whose name starts like the rule's directory. */
  snprintf(other, sizeof(other), "%sX", home);
  ck_assert_int_eq(mkdir(other, 0777), 0);
  req = request(other, "x.txt");
  ck_assert_int_eq(mailoauth_deposit_client_file(h.sock, &req, fd, 5000,
    &res), -1);
  ck_assert_int_eq(res.error, EPERM);
  ck_assert_int_eq(count_entries(other), 0);

  /* Climbing out of the rule's directory. */
  snprintf(dotdot, sizeof(dotdot), "%s/../state", home);
  req = request(dotdot, "x.txt");
  ck_assert_int_eq(mailoauth_deposit_client_file(h.sock, &req, fd, 5000,
    &res), -1);
  ck_assert_int_eq(res.error, EINVAL);
  ck_assert_int_eq(count_entries(state), 0);

  /* Another owner than the rule's, and root. */
  req = request(alice, "x.txt");
  req.uid = OTHER_ID;
  ck_assert_int_eq(mailoauth_deposit_client_file(h.sock, &req, fd, 5000,
    &res), -1);
  ck_assert_int_eq(res.error, EPERM);
  req.uid = 0;
  ck_assert_int_eq(mailoauth_deposit_client_file(h.sock, &req, fd, 5000,
    &res), -1);
  ck_assert_int_eq(res.error, EPERM);

  /* A symbolic link beneath the rule's directory. */
  snprintf(path, sizeof(path), "%s/link", home);
  ck_assert_int_eq(symlink(state, path), 0);
  req = request(path, "x.txt");
  ck_assert_int_eq(mailoauth_deposit_client_file(h.sock, &req, fd, 5000,
    &res), -1);
  ck_assert_int_eq(res.error, ELOOP);
  ck_assert_int_eq(res.stage, MAILOAUTH_DEPOSIT_STAGE_PATH);
  ck_assert_int_eq(count_entries(state), 0);

  /* Cleanup through the helper. */
  plant(alice, OLD_TEMP, owner_uid, 7200);
  req = request(alice, NULL);
  req.max_age = 3600;
  ck_assert_int_eq(mailoauth_deposit_client_cleanup(h.sock, &req, 5000,
    &res), 0);
  ck_assert_uint_eq(res.removed, 1);
  ck_assert(!exists(alice, OLD_TEMP));

  /* Directories above the owner's that the owner cannot enter: the walk
   * is root's, with no more than CAP_DAC_READ_SEARCH.
   */
  if (is_root) {
    ck_assert_int_eq(chmod(home, 0700), 0);
    helper_alive(&h, "behind-0700.txt");
    ck_assert_int_eq(chmod(home, 0755), 0);
  }

  /* A control character in the path. */
  snprintf(path, sizeof(path), "%s/al\nice", home);
  req = request(path, "x.txt");
  ck_assert_int_eq(mailoauth_deposit_client_file(h.sock, &req, fd, 5000,
    &res), -1);
  ck_assert_int_eq(res.error, EINVAL);

  close(fd);
  helper_alive(&h, "still-alive.txt");
  helper_stop(&h);
}
END_TEST

START_TEST(test_helper_survives_garbage) {
  unsigned char buf[6000];
  struct helper h;
  int fd, fds[3], p[2], i;
  size_t len;

  helper_start(&h);

  ck_assert_int_eq(raw_request(&h, "garbage bytes!", 14, NULL, 0), EBADMSG);
  ck_assert_int_eq(raw_request(&h, "MDQ", 3, NULL, 0), EBADMSG);

  /* Well-formed headers with lying lengths. */
  len = raw_header(buf, MAILOAUTH_DEPOSIT_OP_FILE, alice, "a.txt");
  fd = content_str("x");
  ck_assert_int_eq(raw_request(&h, buf, len - 1, &fd, 1), EBADMSG);
  buf[len] = 'y';
  ck_assert_int_eq(raw_request(&h, buf, len + 1, &fd, 1), EBADMSG);

  /* An embedded NUL. */
  len = raw_header(buf, MAILOAUTH_DEPOSIT_OP_FILE, alice, "a.txt");
  buf[len - 3] = '\0';
  ck_assert_int_eq(raw_request(&h, buf, len, &fd, 1), EBADMSG);

  /* Descriptors: none, too many, not a regular file; unknown op. */
  len = raw_header(buf, MAILOAUTH_DEPOSIT_OP_FILE, alice, "a.txt");
  ck_assert_int_eq(raw_request(&h, buf, len, NULL, 0), EINVAL);
  fds[0] = fds[1] = fds[2] = fd;
  ck_assert_int_eq(raw_request(&h, buf, len, fds, 3), EINVAL);
  ck_assert_int_eq(pipe(p), 0);
  ck_assert_int_eq(raw_request(&h, buf, len, &p[0], 1), EINVAL);
  close(p[0]);
  close(p[1]);
  len = raw_header(buf, MAILOAUTH_DEPOSIT_OP_CLEANUP, alice, "");
  ck_assert_int_eq(raw_request(&h, buf, len, &fd, 1), EINVAL);
  len = raw_header(buf, 99, alice, "a.txt");
  ck_assert_int_eq(raw_request(&h, buf, len, &fd, 1), EINVAL);

  /* Oversized: truncated by the socket, refused. */
  memset(buf, 'A', sizeof(buf));
  put_be32(buf, MAILOAUTH_DEPOSIT_OP_FILE);
  put_be32(buf + 4, sizeof(buf) - 16);
  put_be32(buf + 12, 0);
  ck_assert_int_eq(raw_request(&h, buf, sizeof(buf), NULL, 0), EBADMSG);

  /* Random records, some with a header that fits their length. */
  srand(12345);
  for (i = 0; i < 300; i++) {
    size_t j, n = 1 + (size_t) rand() % 300;

    for (j = 0; j < n; j++) {
      buf[j] = (unsigned char) rand();
    }
    if (i % 2 == 0 && n >= 16) {
      put_be32(buf, 1 + (uint32_t) (i % 3));
      put_be32(buf + 4, (uint32_t) n - 16);
      put_be32(buf + 12, 0);
    }
    ck_assert_int_ne(raw_request(&h, buf, n, (i % 3 == 0) ? &fd : NULL,
      (i % 3 == 0) ? 1 : 0), 0);
  }

  ck_assert_int_eq(count_entries(alice), 0);
  close(fd);
  helper_alive(&h, "after-garbage.txt");
  helper_stop(&h);
}
END_TEST

START_TEST(test_helper_skips_abandoned_replies) {
  struct mailoauth_deposit_request req = request(alice, "first.txt");
  struct mailoauth_deposit_result res;
  struct helper h;
  uint32_t id;
  int fd;

  helper_start(&h);
  fd = content_str("x");

  /* A request whose caller stopped waiting: its late reply must not be
   * taken for the next request's.
   */
  ck_assert_int_eq(mailoauth_deposit_client_send(h.sock,
    MAILOAUTH_DEPOSIT_OP_FILE, &req, fd, &id), 0);
  req.name = "second.txt";
  ck_assert_int_eq(mailoauth_deposit_client_file(h.sock, &req, fd, 5000,
    &res), 0);
  ck_assert_str_eq(res.name, "second.txt");
  ck_assert(exists(alice, "first.txt"));

  /* Nothing pending: a look without waiting says so. */
  ck_assert_int_eq(mailoauth_deposit_client_recv(h.sock, id + 1, 0, &res), -1);
  ck_assert_int_eq(errno, EAGAIN);
  ck_assert_int_eq(res.stage, MAILOAUTH_DEPOSIT_STAGE_HELPER);

  close(fd);
  helper_stop(&h);
}
END_TEST

START_TEST(test_helper_privileges) {
  char path[64], line[256];
  unsigned long long prm = 0, eff = ~0ULL;
  int nnp = -1;
  struct helper h;
  FILE *f;

  if (!is_root) {
    skip("test_helper_privileges", "needs root");
    return;
  }

  helper_start(&h);
  helper_alive(&h, "ready.txt");

  snprintf(path, sizeof(path), "/proc/%ld/status", (long) h.pid);
  f = fopen(path, "r");
  ck_assert_ptr_nonnull(f);
  while (fgets(line, sizeof(line), f) != NULL) {
    sscanf(line, "CapPrm: %llx", &prm);
    sscanf(line, "CapEff: %llx", &eff);
    sscanf(line, "NoNewPrivs: %d", &nnp);
  }
  fclose(f);

  /* CAP_DAC_READ_SEARCH (2), CAP_SETGID (6), CAP_SETUID (7). */
  ck_assert_uint_eq(prm, 0xc4);
  ck_assert_uint_eq(eff, 0xc4);
  ck_assert_int_eq(nnp, 1);

  helper_stop(&h);
}
END_TEST

START_TEST(test_helper_gone_or_silent) {
  struct mailoauth_deposit_request req = request(alice, "x.txt");
  struct mailoauth_deposit_result res;
  char msg[256];
  int sv[2], fd, type;

  fd = content_str("x");

  /* Nobody answering. */
  ck_assert_int_eq(mailoauth_deposit_socketpair(sv), 0);
  ck_assert_int_eq(mailoauth_deposit_client_file(sv[0], &req, fd, 100, &res),
    -1);
  ck_assert_int_eq(errno, ETIMEDOUT);
  ck_assert_int_eq(res.stage, MAILOAUTH_DEPOSIT_STAGE_HELPER);
  ck_assert_int_eq(mailoauth_deposit_kind(&res), MAILOAUTH_DEPOSIT_KIND_HELPER);

  /* The helper's end closed. */
  close(sv[1]);
  ck_assert_int_eq(mailoauth_deposit_client_file(sv[0], &req, fd, 1000, &res),
    -1);
  ck_assert(res.error == ECONNRESET || res.error == EPIPE);
  ck_assert_int_eq(mailoauth_deposit_kind(&res), MAILOAUTH_DEPOSIT_KIND_HELPER);
  mailoauth_deposit_describe(&res, msg, sizeof(msg));
  ck_assert_ptr_nonnull(strstr(msg, "helper"));
  close(sv[0]);

  /* A stream socket cannot keep records apart: refused up front. */
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  ck_assert_int_eq(mailoauth_deposit_server_run(sv[1], rules, 0), -1);
  ck_assert_int_eq(errno, EPROTOTYPE);
  close(sv[0]);
  close(sv[1]);

  /* The socketpair we hand out keeps records apart. */
  ck_assert_int_eq(mailoauth_deposit_socketpair(sv), 0);
  {
    socklen_t tl = sizeof(type);

    ck_assert_int_eq(getsockopt(sv[0], SOL_SOCKET, SO_TYPE, &type, &tl), 0);
    ck_assert_int_eq(type, SOCK_SEQPACKET);
  }
  close(sv[0]);
  close(sv[1]);

  ck_assert_int_eq(count_entries(alice), 0);
  close(fd);
}
END_TEST

int main(void) {
  Suite *s = suite_create("deposit");
  TCase *tc = tcase_create("direct");
  TCase *th = tcase_create("helper");
  SRunner *sr;
  int failed;

  if (geteuid() != 0) {
    fprintf(stderr, "test_deposit: not running as root: the owner is the "
      "current user and cases needing root are skipped\n");
  }

  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, test_deposit_plain);
  tcase_add_test(tc, test_deposit_large);
  tcase_add_test(tc, test_collision_numbering);
  tcase_add_test(tc, test_long_and_utf8_names);
  tcase_add_test(tc, test_subdirectories);
  tcase_add_test(tc, test_symlink_in_path_refused);
  tcase_add_test(tc, test_symlink_at_final_name);
  tcase_add_test(tc, test_symlink_subdirectory_refused);
  tcase_add_test(tc, test_refusals);
  tcase_add_test(tc, test_unwritable_directory);
  tcase_add_test(tc, test_as_owner_without_root);
  tcase_add_test(tc, test_disk_full);
  tcase_add_test(tc, test_error_kinds);
  tcase_add_test(tc, test_rename_race_never_replaces);
  tcase_add_test(tc, test_stale_temp_cleanup);
  tcase_add_test(tc, test_kill9_leaves_whole_files_only);
  suite_add_tcase(s, tc);

  tcase_add_checked_fixture(th, setup, teardown);
  tcase_set_timeout(th, 120);
  tcase_add_test(th, test_helper_round_trip);
  tcase_add_test(th, test_helper_survives_garbage);
  tcase_add_test(th, test_helper_skips_abandoned_replies);
  tcase_add_test(th, test_helper_privileges);
  tcase_add_test(th, test_helper_gone_or_silent);
  suite_add_tcase(s, th);

  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
