/*
 * mod_mailoauth - putting a file into a user's directory, safely
 */

#ifndef _GNU_SOURCE
# define _GNU_SOURCE
#endif

#include "mailoauth/io.h"
#include "mailoauth/crashpoint.h"
#include "mailoauth/deposit.h"
#include "mailoauth/imsg.h"
#include "mailoauth/names.h"
#include "mailoauth/trace.h"
#include "mailoauth/yield.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <openssl/evp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#ifdef __linux__
# include <linux/capability.h>
# include <sys/prctl.h>
#endif

static const char *trace_channel = "mailoauth.deposit";

#ifndef RENAME_NOREPLACE
# define RENAME_NOREPLACE       (1 << 0)
#endif

/* Intermediate directories only need to be searched, not read: O_PATH lets
 * the walk pass through directories that are 0711.
 */
#ifdef O_PATH
# define DEPOSIT_O_SEARCH       O_PATH
#else
# define DEPOSIT_O_SEARCH       O_RDONLY
#endif

#define DEPOSIT_HEX_LEN         16

/* ".in." + stem + "." + hex + ".mailoauth." must fit in one component. */
#define DEPOSIT_TEMP_EXTRA      (sizeof(MAILOAUTH_DEPOSIT_TEMP_PREFIX) - 1 + \
  1 + DEPOSIT_HEX_LEN + sizeof(MAILOAUTH_DEPOSIT_TEMP_SUFFIX) - 1)
#define DEPOSIT_TEMP_STEM_MAX   (MAILOAUTH_NAMES_MAX - DEPOSIT_TEMP_EXTRA)

/* Renames lost to a racing writer before giving up. */
#define DEPOSIT_RENAME_TRIES    100

#define DEPOSIT_COPY_CHUNK      (64 * 1024)

static int deposit_force_link = 0;
static int deposit_no_renameat2 = 0;

void mailoauth_deposit_force_link_fallback(int on) {
  deposit_force_link = on;
}

static int deposit_fail(struct mailoauth_deposit_result *res, int stage,
    int err) {
  res->error = err;
  res->stage = stage;
  errno = err;
  return -1;
}

static void deposit_close(int fd) {
  int xerrno = errno;

  if (fd >= 0) {
    (void) close(fd);
  }
  errno = xerrno;
}

/* ------------------------------------------------------------------------
 * Checking requests.
 */

/* Next component of *pp, skipping empty and "." ones; NULL at the end. */
static const char *deposit_next_comp(const char **pp, size_t *len) {
  const char *p = *pp, *start;

  for (;;) {
    while (*p == '/') {
      p++;
    }
    if (*p == '\0') {
      *pp = p;
      return NULL;
    }

    start = p;
    while (*p != '\0' && *p != '/') {
      p++;
    }

    if (p - start == 1 && start[0] == '.') {
      continue;
    }

    *pp = p;
    *len = (size_t) (p - start);
    return start;
  }
}

static int deposit_check_dir(const char *dir) {
  const char *p, *c;
  size_t len;

  if (dir == NULL || dir[0] != '/') {
    errno = EINVAL;
    return -1;
  }

  if (strlen(dir) >= PATH_MAX) {
    errno = ENAMETOOLONG;
    return -1;
  }

  /* No operator configures such a path; refusing it keeps log lines that
   * quote a refused request clean.
   */
  for (p = dir; *p != '\0'; p++) {
    if ((unsigned char) *p < 0x20 || *p == 0x7f) {
      errno = EINVAL;
      return -1;
    }
  }

  /* ".." would make the rules' prefix test meaningless. */
  p = dir;
  while ((c = deposit_next_comp(&p, &len)) != NULL) {
    if (len == 2 && c[0] == '.' && c[1] == '.') {
      errno = EINVAL;
      return -1;
    }
    if (len > MAILOAUTH_NAMES_MAX) {
      errno = ENAMETOOLONG;
      return -1;
    }
  }

  return 0;
}

/* The name is expected to come out of the names unit; this only makes sure
 * that nothing unsafe slips through if it did not.
 */
static int deposit_check_component(const char *s, size_t len) {
  size_t i;

  if (len == 0 || len > MAILOAUTH_NAMES_MAX || s[0] == '.') {
    return -1;
  }

  for (i = 0; i < len; i++) {
    unsigned char c = (unsigned char) s[i];

    if (c < 0x20 || c == 0x7f || c == '\\') {
      return -1;
    }
  }

  return 0;
}

static int deposit_check_name(const char *name) {
  const char *p = name, *c;
  size_t len, n = 0;

  if (name == NULL || name[0] == '/' || strlen(name) == 0) {
    errno = EINVAL;
    return -1;
  }

  if (strlen(name) > MAILOAUTH_DEPOSIT_NAME_MAX) {
    errno = ENAMETOOLONG;
    return -1;
  }

  /* Every component, "." and empty ones included: deposit_next_comp()
   * would skip those, hiding names like "a//b" or "./x".
   */
  while (*p != '\0') {
    c = p;
    while (*p != '\0' && *p != '/') {
      p++;
    }
    len = (size_t) (p - c);

    if (deposit_check_component(c, len) < 0 ||
        ++n > MAILOAUTH_DEPOSIT_MAX_DEPTH) {
      errno = EINVAL;
      return -1;
    }

    if (*p == '/') {
      p++;
      if (*p == '\0') {
        errno = EINVAL;
        return -1;
      }
    }
  }

  return 0;
}

static int deposit_check_owner(const struct mailoauth_deposit_request *req) {
  size_t i;

  /* Root never writes into a user's directory, whatever the request. */
  if (req->uid == 0 || req->gid == 0 ||
      req->uid == (uid_t) -1 || req->gid == (gid_t) -1) {
    errno = EPERM;
    return -1;
  }

  if (req->ngroups > MAILOAUTH_DEPOSIT_MAX_GROUPS ||
      (req->ngroups > 0 && req->groups == NULL)) {
    errno = EINVAL;
    return -1;
  }

  for (i = 0; i < req->ngroups; i++) {
    if (req->groups[i] == 0) {
      errno = EPERM;
      return -1;
    }
  }

  if (geteuid() != 0 &&
      (geteuid() != req->uid || getegid() != req->gid)) {
    /* Without root we can only write as ourselves. */
    errno = EPERM;
    return -1;
  }

  return 0;
}

/* ------------------------------------------------------------------------
 * Reaching the directory, and becoming its owner.
 */

/* openat() of one directory component that refuses symbolic links.  Linux
 * says ENOTDIR for a symbolic link opened with O_DIRECTORY|O_NOFOLLOW; it
 * is reported as ELOOP so that the caller can tell an attack (or a
 * misconfiguration) from a missing directory.
 */
static int deposit_open_dir(int at, const char *comp, int flags) {
  struct stat st;
  int fd, xerrno;

  fd = openat(at, comp, flags|O_DIRECTORY|O_NOFOLLOW|O_CLOEXEC);
  if (fd < 0 &&
      (errno == ENOTDIR || errno == ELOOP)) {
    xerrno = errno;
    if (fstatat(at, comp, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
        S_ISLNK(st.st_mode)) {
      xerrno = ELOOP;
    }
    errno = xerrno;
  }

  return fd;
}

/* Opens dir from "/" one component at a time, so that no symbolic link
 * anywhere in the path is followed.  Returns a descriptor open for reading
 * (fsync(), fdopendir()), or -1 with errno.
 */
static int deposit_walk(const char *dir) {
  char comp[MAILOAUTH_NAMES_MAX + 1];
  const char *p = dir, *c;
  size_t len;
  int fd, next;

  fd = open("/", DEPOSIT_O_SEARCH|O_DIRECTORY|O_CLOEXEC);
  if (fd < 0) {
    return -1;
  }

  while ((c = deposit_next_comp(&p, &len)) != NULL) {
    memcpy(comp, c, len);
    comp[len] = '\0';

    next = deposit_open_dir(fd, comp, DEPOSIT_O_SEARCH);
    if (next < 0) {
      int xerrno = errno;

      mailoauth_trace(trace_channel, 5, "cannot open '%s' in '%s': %s",
        comp, dir, strerror(xerrno));
      (void) close(fd);
      errno = xerrno;
      return -1;
    }

    (void) close(fd);
    fd = next;
  }

  next = openat(fd, ".", O_RDONLY|O_DIRECTORY|O_CLOEXEC);
  deposit_close(fd);
  return next;
}

struct deposit_ident {
  int active;
  gid_t egid;
  int ngroups;
  gid_t groups[MAILOAUTH_DEPOSIT_MAX_GROUPS];
};

static void deposit_restore(struct deposit_ident *id);

/* Takes the owner's effective uid, gid and groups (root only; a process
 * that is already the owner has nothing to do).  Leaving euid 0 also clears
 * the effective capabilities: CAP_DAC_OVERRIDE (the owner's permissions
 * apply), CAP_SYS_RESOURCE (quotas and reserved blocks apply).  setfsuid()
 * alone would keep CAP_SYS_RESOURCE.
 */
static int deposit_become(const struct mailoauth_deposit_request *req,
    struct deposit_ident *id) {
  int xerrno;

  id->active = 0;
  if (geteuid() != 0) {
    return 0;
  }

  id->egid = getegid();
  id->ngroups = getgroups(MAILOAUTH_DEPOSIT_MAX_GROUPS, id->groups);
  if (id->ngroups < 0) {
    return -1;
  }

  if (req->ngroups > 0) {
    if (setgroups(req->ngroups, req->groups) < 0) {
      return -1;
    }

  } else if (setgroups(1, &req->gid) < 0) {
    return -1;
  }

  /* From here on, a failure has something to undo. */
  id->active = 1;

  /* Saved uid 0, whatever it was: the way back must stay open. */
  if (setresgid((gid_t) -1, req->gid, (gid_t) -1) < 0 ||
      setresuid((uid_t) -1, req->uid, 0) < 0) {
    xerrno = errno;
    deposit_restore(id);
    errno = xerrno;
    return -1;
  }

  return 0;
}

static void deposit_restore(struct deposit_ident *id) {
  int xerrno = errno;

  if (!id->active) {
    return;
  }

  /* euid first: setgroups() needs CAP_SETGID back. */
  if (setresuid((uid_t) -1, 0, (uid_t) -1) < 0 ||
      setresgid((gid_t) -1, id->egid, (gid_t) -1) < 0 ||
      setgroups((size_t) id->ngroups, id->groups) < 0) {
    /* Carrying on with a half-restored identity would serve the next
     * request with the wrong rights.
     */
    mailoauth_log("deposit: cannot restore root identity: %s; aborting",
      strerror(errno));
    abort();
  }

  id->active = 0;
  errno = xerrno;
}

/* ------------------------------------------------------------------------
 * Writing.
 */

static uint64_t deposit_random(void) {
  static unsigned long counter = 0;
  uint64_t r = 0;

#ifdef SYS_getrandom
  if (syscall(SYS_getrandom, &r, sizeof(r), 1 /* GRND_NONBLOCK */) ==
      (long) sizeof(r)) {
    return r;
  }
#endif

  /* Uniqueness is what matters (O_EXCL retries on a clash), not secrecy. */
  {
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    r = ((uint64_t) getpid() << 40) ^ ((uint64_t) ts.tv_sec << 20) ^
      (uint64_t) ts.tv_nsec ^ ((uint64_t) ++counter << 56);
  }

  return r;
}

static void deposit_temp_name(const char *leaf, char *out, size_t outsz) {
  size_t stem = strlen(leaf);

  if (stem > DEPOSIT_TEMP_STEM_MAX) {
    stem = DEPOSIT_TEMP_STEM_MAX;

    /* Not in the middle of a UTF-8 sequence: the name shows in listings. */
    while (stem > 0 && (((unsigned char) leaf[stem]) & 0xc0) == 0x80) {
      stem--;
    }
  }

  snprintf(out, outsz, "%s%.*s.%016llx%s", MAILOAUTH_DEPOSIT_TEMP_PREFIX,
    (int) stem, leaf, (unsigned long long) deposit_random(),
    MAILOAUTH_DEPOSIT_TEMP_SUFFIX);
}

static int deposit_is_temp_name(const char *name) {
  size_t len = strlen(name), plen, slen, i;
  const char *hex;

  plen = sizeof(MAILOAUTH_DEPOSIT_TEMP_PREFIX) - 1;
  slen = sizeof(MAILOAUTH_DEPOSIT_TEMP_SUFFIX) - 1;

  if (len < DEPOSIT_TEMP_EXTRA ||
      strncmp(name, MAILOAUTH_DEPOSIT_TEMP_PREFIX, plen) != 0 ||
      strcmp(name + len - slen, MAILOAUTH_DEPOSIT_TEMP_SUFFIX) != 0) {
    return 0;
  }

  hex = name + len - slen - DEPOSIT_HEX_LEN;
  if (hex[-1] != '.') {
    return 0;
  }

  for (i = 0; i < DEPOSIT_HEX_LEN; i++) {
    if (!((hex[i] >= '0' && hex[i] <= '9') ||
          (hex[i] >= 'a' && hex[i] <= 'f'))) {
      return 0;
    }
  }

  return 1;
}

/* Copies size bytes from offset 0 of in to out.  In-kernel copies first
 * (copy_file_range(), then sendfile()), plain pread()/write() where the
 * kernel or the file systems cannot.  Explicit offsets: the descriptor's
 * file position is shared with the worker that passed it.
 */
static int deposit_copy(int in, int out, uint64_t size, int *stage) {
  char buf[DEPOSIT_COPY_CHUNK];
  int method = 0;
  off_t off = 0;

#ifndef SYS_copy_file_range
  method = 1;
#endif

  while ((uint64_t) off < size) {
    uint64_t left = size - (uint64_t) off;
    size_t chunk = left > (1U << 30) ? (1U << 30) : (size_t) left;
    ssize_t n;

    if (method == 0) {
#ifdef SYS_copy_file_range
      n = syscall(SYS_copy_file_range, in, &off, out, NULL, chunk, 0);
      if (n < 0 &&
          (errno == EXDEV || errno == EINVAL || errno == ENOSYS ||
           errno == EOPNOTSUPP || errno == ETXTBSY || errno == EBADF)) {
        /* EBADF: a descriptor not open for reading; pread() says which. */
        method = errno == EBADF ? 2 : 1;
        mailoauth_trace(trace_channel, 17,
          "copy_file_range unavailable (%s), falling back", strerror(errno));
        continue;
      }
#else
      n = 0;
#endif

    } else if (method == 1) {
      n = sendfile(out, in, &off, chunk);
      if (n < 0 &&
          (errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP ||
           errno == EBADF)) {
        mailoauth_trace(trace_channel, 17,
          "sendfile unavailable (%s), copying by read/write", strerror(errno));
        method = 2;
        continue;
      }

    } else {
      if (chunk > sizeof(buf)) {
        chunk = sizeof(buf);
      }

      n = pread(in, buf, chunk, off);
      if (n < 0) {
        if (errno == EINTR) {
          continue;
        }
        *stage = MAILOAUTH_DEPOSIT_STAGE_CONTENT;
        return -1;
      }

      if (n > 0 &&
          mailoauth_io_write_all(out, buf, (size_t) n) < 0) {
        *stage = MAILOAUTH_DEPOSIT_STAGE_WRITE;
        return -1;
      }

      if (n > 0) {
        off += n;
      }
    }

    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      *stage = MAILOAUTH_DEPOSIT_STAGE_WRITE;
      return -1;
    }

    if (n == 0 && method < 2) {
      /* Some file systems answer 0 to in-kernel copies they cannot do;
       * only pread() is trusted to mean end of file.
       */
      method = 2;
      continue;
    }

    if (n == 0) {
      /* The worker's file shrank under us: what we have is not the
       * attachment.
       */
      *stage = MAILOAUTH_DEPOSIT_STAGE_CONTENT;
      errno = EIO;
      return -1;
    }
  }

  return 0;
}

static int deposit_check_space(int dirfd, uint64_t size, uint64_t min_free) {
  struct statvfs sv;
  uint64_t avail, want;

  if (min_free == 0) {
    return 0;
  }

  if (fstatvfs(dirfd, &sv) < 0 ||
      sv.f_blocks == 0) {
    /* No figures (some FUSE file systems): the write itself will tell. */
    mailoauth_trace(trace_channel, 5, "no free-space figures, floor not checked");
    return 0;
  }

  avail = (uint64_t) sv.f_bavail;
  if (sv.f_frsize > 0 && avail > UINT64_MAX / sv.f_frsize) {
    avail = UINT64_MAX;
  } else {
    avail *= sv.f_frsize;
  }

  want = size + min_free;
  if (want < size) {
    want = UINT64_MAX;
  }

  if (avail < want ||
      (sv.f_files > 0 && sv.f_favail == 0)) {
    mailoauth_trace(trace_channel, 5, "%llu bytes free, %llu needed "
      "(%llu + floor of %llu)", (unsigned long long) avail,
      (unsigned long long) want, (unsigned long long) size,
      (unsigned long long) min_free);
    errno = ENOSPC;
    return -1;
  }

  return 0;
}

static int deposit_exists(const char *name, void *arg) {
  struct stat st;
  int dirfd = *(int *) arg;

  /* A symbolic link counts as taken: it is never followed nor replaced. */
  if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
    return 1;
  }

  return errno == ENOENT ? 0 : -1;
}

static int deposit_rename_noreplace(int dirfd, const char *from,
    const char *to) {
  if (!deposit_force_link && !deposit_no_renameat2) {
#ifdef SYS_renameat2
    if (syscall(SYS_renameat2, dirfd, from, dirfd, to, RENAME_NOREPLACE) == 0) {
      return 0;
    }
#else
    errno = ENOSYS;
#endif

    if (errno == ENOSYS) {
      deposit_no_renameat2 = 1;

    } else if (errno != EINVAL) {
      return -1;
    }

    /* EINVAL: this file system does not know RENAME_NOREPLACE. */
    mailoauth_trace(trace_channel, 9, "renameat2: %s, using link/unlink",
      strerror(errno));
  }

  /* linkat() fails with EEXIST rather than replace anything. */
  if (linkat(dirfd, from, dirfd, to, 0) < 0) {
    if (errno == EPERM) {
      /* The file is ours, so this is a file system without hard links:
       * without them or RENAME_NOREPLACE no rename is safe from
       * replacing a file that appears at the last moment.
       */
      errno = EOPNOTSUPP;
    }
    return -1;
  }

  if (unlinkat(dirfd, from, 0) < 0) {
    /* Still hidden; a later cleanup removes this second name. */
    mailoauth_trace(trace_channel, 3, "cannot remove temporary name '%s': %s",
      from, strerror(errno));
  }

  return 0;
}

/* Opens (creating as the owner if needed) the subdirectories of a
 * template name; *dirfd moves to the innermost one.  Returns the leaf
 * name (a pointer into name), or NULL with errno.
 */
static const char *deposit_subdirs(int *dirfd, char *name, mode_t mode) {
  mode_t dmode;
  char *p = name, *slash;

  /* Whoever may read the files may list the directories. */
  dmode = (mode & 0777) | ((mode & 0444) >> 2) | 0700;

  while ((slash = strchr(p, '/')) != NULL) {
    int fd, created = 0;

    *slash = '\0';
    fd = deposit_open_dir(*dirfd, p, O_RDONLY);
    if (fd < 0 && errno == ENOENT) {
      if (mkdirat(*dirfd, p, dmode) == 0) {
        created = 1;

      } else if (errno != EEXIST) {
        *slash = '/';
        return NULL;
      }

      fd = deposit_open_dir(*dirfd, p, O_RDONLY);
    }

    if (fd < 0) {
      *slash = '/';
      return NULL;
    }

    if (created) {
      /* Exact bits whatever the umask; the new entry made durable now, as
       * the file's rename will only flush the innermost directory.
       */
      if (fchmod(fd, dmode) < 0 ||
          fsync(*dirfd) < 0) {
        deposit_close(fd);
        *slash = '/';
        return NULL;
      }
      mailoauth_trace(trace_channel, 9, "created subdirectory '%s'", p);
    }

    *slash = '/';
    (void) close(*dirfd);
    *dirfd = fd;
    p = slash + 1;
  }

  return p;
}

/* The part of a deposit done as the owner, in the directory dirfd. */
static int deposit_as_owner(int *dirfd,
    const struct mailoauth_deposit_request *req, int content_fd,
    uint64_t size, struct mailoauth_deposit_result *res) {
  char name[MAILOAUTH_DEPOSIT_NAME_MAX + 1], tmp[MAILOAUTH_NAMES_MAX + 1],
    final[MAILOAUTH_NAMES_MAX + 1];
  const char *leaf;
  int fd = -1, i, rc, stage, xerrno;
  size_t dirlen, finalsz;

  memcpy(name, req->name, strlen(req->name) + 1);
  leaf = deposit_subdirs(dirfd, name, req->mode);
  if (leaf == NULL) {
    return deposit_fail(res, MAILOAUTH_DEPOSIT_STAGE_SUBDIR, errno);
  }
  dirlen = (size_t) (leaf - name);

  if (deposit_check_space(*dirfd, size, req->min_free) < 0) {
    return deposit_fail(res, MAILOAUTH_DEPOSIT_STAGE_SPACE, errno);
  }

  for (i = 0; i < 16; i++) {
    deposit_temp_name(leaf, tmp, sizeof(tmp));

    /* Mode 0600 until the content is complete: nobody reads half a file. */
    fd = openat(*dirfd, tmp, O_WRONLY|O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC,
      0600);
    if (fd >= 0 || errno != EEXIST) {
      break;
    }
  }

  if (fd < 0) {
    return deposit_fail(res, MAILOAUTH_DEPOSIT_STAGE_CREATE, errno);
  }

  stage = MAILOAUTH_DEPOSIT_STAGE_WRITE;
  if (deposit_copy(content_fd, fd, size, &stage) < 0 ||
      fchmod(fd, req->mode) < 0) {
    goto fail;
  }
  MAILOAUTH_CRASHPOINT("temp-written");

  /* close() too: NFS reports deferred write errors there. */
  stage = MAILOAUTH_DEPOSIT_STAGE_SYNC;
  if (fsync(fd) < 0) {
    goto fail;
  }
  rc = close(fd);
  fd = -1;
  if (rc < 0) {
    goto fail;
  }
  MAILOAUTH_CRASHPOINT("temp-synced");

  /* The numbered name must still fit in res->name with its directories. */
  finalsz = MAILOAUTH_DEPOSIT_NAME_MAX + 1 - dirlen;
  if (finalsz > sizeof(final)) {
    finalsz = sizeof(final);
  }

  stage = MAILOAUTH_DEPOSIT_STAGE_RENAME;
  for (i = 0; ; i++) {
    if (mailoauth_names_unique(leaf, deposit_exists, dirfd, final,
        finalsz) < 0) {
      goto fail;
    }

    if (deposit_rename_noreplace(*dirfd, tmp, final) == 0) {
      break;
    }

    if (errno != EEXIST || i >= DEPOSIT_RENAME_TRIES) {
      goto fail;
    }

    /* Someone took the name between the probe and the rename. */
    mailoauth_trace(trace_channel, 9, "'%s' appeared meanwhile, next name",
      final);
  }

  memcpy(res->name, name, dirlen);
  memcpy(res->name + dirlen, final, strlen(final) + 1);
  res->size = size;
  MAILOAUTH_CRASHPOINT("renamed");

  if (fsync(*dirfd) < 0) {
    /* The file is complete and visible, its name maybe not yet durable:
     * the caller keeps the mail and may deposit it again (a duplicate,
     * never a loss).
     */
    return deposit_fail(res, MAILOAUTH_DEPOSIT_STAGE_DIRSYNC, errno);
  }
  MAILOAUTH_CRASHPOINT("dir-synced");

  return 0;

fail:
  xerrno = errno;
  deposit_close(fd);
  if (unlinkat(*dirfd, tmp, 0) < 0 && errno != ENOENT) {
    mailoauth_trace(trace_channel, 3, "cannot remove '%s': %s", tmp,
      strerror(errno));
  }
  return deposit_fail(res, stage, xerrno);
}

int mailoauth_deposit_file(const struct mailoauth_deposit_request *req,
    int content_fd, struct mailoauth_deposit_result *res) {
  struct mailoauth_deposit_result local;
  struct deposit_ident id;
  struct stat st;
  int dirfd, rc;

  if (res == NULL) {
    res = &local;
  }
  memset(res, 0, sizeof(*res));

  if (req == NULL) {
    return deposit_fail(res, MAILOAUTH_DEPOSIT_STAGE_REQUEST, EINVAL);
  }

  if (deposit_check_dir(req->dir) < 0 ||
      deposit_check_name(req->name) < 0 ||
      deposit_check_owner(req) < 0) {
    int xerrno = errno;

    mailoauth_trace(trace_channel, 3, "request refused: %s", strerror(xerrno));
    return deposit_fail(res, MAILOAUTH_DEPOSIT_STAGE_REQUEST, xerrno);
  }

  if ((req->mode & ~((mode_t) 0777)) != 0 ||
      (req->mode & 0400) == 0) {
    return deposit_fail(res, MAILOAUTH_DEPOSIT_STAGE_REQUEST, EINVAL);
  }

  /* A pipe or a device could feed the disk forever. */
  if (fstat(content_fd, &st) < 0) {
    return deposit_fail(res, MAILOAUTH_DEPOSIT_STAGE_CONTENT, errno);
  }
  if (!S_ISREG(st.st_mode)) {
    return deposit_fail(res, MAILOAUTH_DEPOSIT_STAGE_CONTENT, EINVAL);
  }

  dirfd = deposit_walk(req->dir);
  if (dirfd < 0) {
    return deposit_fail(res, MAILOAUTH_DEPOSIT_STAGE_PATH, errno);
  }

  if (deposit_become(req, &id) < 0) {
    rc = deposit_fail(res, MAILOAUTH_DEPOSIT_STAGE_OWNER, errno);
    deposit_close(dirfd);
    return rc;
  }

  rc = deposit_as_owner(&dirfd, req, content_fd, (uint64_t) st.st_size, res);
  deposit_restore(&id);
  deposit_close(dirfd);

  if (rc < 0) {
    mailoauth_trace(trace_channel, 3, "deposit of '%s' into '%s' failed at "
      "%s: %s", req->name, req->dir, mailoauth_deposit_stage_name(res->stage),
      strerror(res->error));
    errno = res->error;
    return -1;
  }

  mailoauth_trace(trace_channel, 7, "deposited %llu bytes as '%s' in '%s' "
    "(uid %lu)", (unsigned long long) res->size, res->name, req->dir,
    (unsigned long) req->uid);
  return 0;
}

/* ------------------------------------------------------------------------
 * After a crash: was it deposited?
 */

struct deposit_probe {
  int dirfd;
  uid_t uid;
  const struct mailoauth_deposit_ident *ident;
  int found;
  int error;
  char name[MAILOAUTH_NAMES_MAX + 1];
};

/* 1: fd holds exactly the SHA-256 wanted, 0: it does not, -1: I/O error. */
static int deposit_same_digest(int fd, const unsigned char *want) {
  unsigned char buf[DEPOSIT_COPY_CHUNK], digest[EVP_MAX_MD_SIZE];
  unsigned int dlen = 0;
  EVP_MD_CTX *ctx;
  off_t off = 0;
  int res = -1;

  ctx = EVP_MD_CTX_new();
  if (ctx == NULL ||
      EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
    EVP_MD_CTX_free(ctx);
    errno = ENOMEM;
    return -1;
  }

  for (;;) {
    ssize_t n = pread(fd, buf, sizeof(buf), off);

    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      break;
    }
    if (n == 0) {
      if (EVP_DigestFinal_ex(ctx, digest, &dlen) == 1) {
        res = dlen == MAILOAUTH_DEPOSIT_SHA256_LEN &&
          memcmp(digest, want, dlen) == 0;
      }
      break;
    }
    (void) EVP_DigestUpdate(ctx, buf, (size_t) n);
    off += n;
  }

  EVP_MD_CTX_free(ctx);
  return res;
}

/* names_unique() callback: 0 ends the search (the family stops at its
 * first free name, or this is the file), 1 goes on to the next name.
 */
static int deposit_probe_one(const char *name, void *arg) {
  struct deposit_probe *pr = arg;
  struct stat st;
  int fd, same;

  /* O_NONBLOCK: a FIFO planted under the name must not hang the helper. */
  fd = openat(pr->dirfd, name,
    O_RDONLY|O_NOFOLLOW|O_NONBLOCK|O_NOCTTY|O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) {
      return 0;
    }
    if (errno == ELOOP || errno == EACCES || errno == ENXIO ||
        errno == EPERM || errno == EISDIR) {
      /* Taken, by something we did not write. */
      return 1;
    }
    pr->error = errno;
    return -1;
  }

  if (fstat(fd, &st) < 0) {
    pr->error = errno;
    deposit_close(fd);
    return -1;
  }

  /* ctime, not mtime: the owner can set mtime back, not ctime.  One second
   * of slack for clocks of different grain; a clock stepped back gives a
   * second copy, never a loss.
   */
  if (!S_ISREG(st.st_mode) ||
      st.st_uid != pr->uid ||
      (uint64_t) st.st_size != pr->ident->size ||
      (long long) st.st_ctime < (long long) pr->ident->not_before - 1) {
    deposit_close(fd);
    return 1;
  }

  same = 1;
  if (pr->ident->has_sha256) {
    same = deposit_same_digest(fd, pr->ident->sha256);
  }
  deposit_close(fd);
  if (same < 0) {
    pr->error = errno;
    return -1;
  }
  if (!same) {
    return 1;
  }

  pr->found = 1;
  snprintf(pr->name, sizeof(pr->name), "%s", name);
  return 0;
}

static int deposit_probe_as_owner(int *dirfd,
    const struct mailoauth_deposit_request *req,
    const struct mailoauth_deposit_ident *ident,
    struct mailoauth_deposit_result *res) {
  char name[MAILOAUTH_DEPOSIT_NAME_MAX + 1], out[MAILOAUTH_NAMES_MAX + 1];
  struct deposit_probe pr;
  char *p = name, *slash;
  size_t dirlen;

  memcpy(name, req->name, strlen(req->name) + 1);

  /* Template subdirectories are looked into, never made. */
  while ((slash = strchr(p, '/')) != NULL) {
    int fd;

    *slash = '\0';
    fd = deposit_open_dir(*dirfd, p, O_RDONLY);
    *slash = '/';
    if (fd < 0) {
      return deposit_fail(res, MAILOAUTH_DEPOSIT_STAGE_PROBE, errno);
    }
    (void) close(*dirfd);
    *dirfd = fd;
    p = slash + 1;
  }
  dirlen = (size_t) (p - name);

  memset(&pr, 0, sizeof(pr));
  pr.dirfd = *dirfd;
  pr.uid = req->uid;
  pr.ident = ident;
  if (mailoauth_names_unique(p, deposit_probe_one, &pr, out,
      sizeof(out)) < 0 &&
      !pr.found) {
    return deposit_fail(res, MAILOAUTH_DEPOSIT_STAGE_PROBE,
      pr.error ? pr.error : errno);
  }
  if (!pr.found) {
    return deposit_fail(res, MAILOAUTH_DEPOSIT_STAGE_PROBE, ENOENT);
  }

  if (dirlen + strlen(pr.name) > MAILOAUTH_DEPOSIT_NAME_MAX) {
    return deposit_fail(res, MAILOAUTH_DEPOSIT_STAGE_PROBE, ENAMETOOLONG);
  }
  memcpy(res->name, name, dirlen);
  memcpy(res->name + dirlen, pr.name, strlen(pr.name) + 1);
  res->size = ident->size;
  return 0;
}

int mailoauth_deposit_probe(const struct mailoauth_deposit_request *req,
    const struct mailoauth_deposit_ident *ident,
    struct mailoauth_deposit_result *res) {
  struct mailoauth_deposit_result local;
  struct deposit_ident id;
  int dirfd, rc;

  if (res == NULL) {
    res = &local;
  }
  memset(res, 0, sizeof(*res));

  if (req == NULL || ident == NULL) {
    return deposit_fail(res, MAILOAUTH_DEPOSIT_STAGE_REQUEST, EINVAL);
  }

  if (deposit_check_dir(req->dir) < 0 ||
      deposit_check_name(req->name) < 0 ||
      deposit_check_owner(req) < 0) {
    return deposit_fail(res, MAILOAUTH_DEPOSIT_STAGE_REQUEST, errno);
  }

  dirfd = deposit_walk(req->dir);
  if (dirfd < 0) {
    return deposit_fail(res, MAILOAUTH_DEPOSIT_STAGE_PATH, errno);
  }

  /* As the owner: the kernel then lets us read only what the owner may
   * read, whatever a hard link in the owner's directory points to.
   */
  if (deposit_become(req, &id) < 0) {
    rc = deposit_fail(res, MAILOAUTH_DEPOSIT_STAGE_OWNER, errno);
    deposit_close(dirfd);
    return rc;
  }

  rc = deposit_probe_as_owner(&dirfd, req, ident, res);
  deposit_restore(&id);
  deposit_close(dirfd);

  if (rc < 0) {
    mailoauth_trace(trace_channel, 7, "no earlier deposit of '%s' in '%s': "
      "%s", req->name, req->dir, strerror(res->error));
    errno = res->error;
    return -1;
  }

  mailoauth_trace(trace_channel, 7, "'%s' in '%s' is the earlier deposit "
    "of '%s'", res->name, req->dir, req->name);
  return 0;
}

/* ------------------------------------------------------------------------
 * Cleaning up after crashes.
 */

static int deposit_cleanup_dir(int dirfd, uid_t uid, time_t cutoff,
    unsigned int depth, unsigned int *removed) {
  struct dirent *e;
  unsigned int here = 0;
  int fd, err = 0;
  DIR *d;

  /* A new open file description: readdir must not share an offset. */
  fd = openat(dirfd, ".", O_RDONLY|O_DIRECTORY|O_CLOEXEC);
  if (fd < 0) {
    return -1;
  }

  d = fdopendir(fd);
  if (d == NULL) {
    deposit_close(fd);
    return -1;
  }

  while ((errno = 0, e = readdir(d)) != NULL) {
    struct stat st;

    if (deposit_is_temp_name(e->d_name)) {
      if (fstatat(dirfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
          !S_ISREG(st.st_mode) ||
          st.st_uid != uid ||
          st.st_mtime > cutoff) {
        continue;
      }

      if (unlinkat(dirfd, e->d_name, 0) < 0) {
        if (errno != ENOENT) {
          if (err == 0) {
            err = errno;
          }
          mailoauth_trace(trace_channel, 3, "cannot remove '%s': %s",
            e->d_name, strerror(errno));
        }
        continue;
      }

      here++;
      mailoauth_trace(trace_channel, 7, "removed stale temporary file '%s'",
        e->d_name);
      continue;
    }

    if (depth > 0 &&
        e->d_name[0] != '.' &&
        (e->d_type == DT_DIR || e->d_type == DT_UNKNOWN)) {
      int sub = deposit_open_dir(dirfd, e->d_name, O_RDONLY);

      if (sub >= 0) {
        if (deposit_cleanup_dir(sub, uid, cutoff, depth - 1, removed) < 0 &&
            err == 0) {
          err = errno;
        }
        (void) close(sub);
      }
    }
  }

  if (errno != 0 && err == 0) {
    err = errno;
  }
  (void) closedir(d);

  if (here > 0) {
    *removed += here;
    (void) fsync(dirfd);
  }

  if (err != 0) {
    errno = err;
    return -1;
  }

  return 0;
}

int mailoauth_deposit_cleanup(const struct mailoauth_deposit_request *req,
    struct mailoauth_deposit_result *res) {
  struct mailoauth_deposit_result local;
  struct deposit_ident id;
  unsigned int depth;
  int dirfd, rc;
  time_t cutoff;

  if (res == NULL) {
    res = &local;
  }
  memset(res, 0, sizeof(*res));

  if (req == NULL ||
      deposit_check_dir(req->dir) < 0 ||
      deposit_check_owner(req) < 0) {
    return deposit_fail(res, MAILOAUTH_DEPOSIT_STAGE_REQUEST,
      req == NULL ? EINVAL : errno);
  }

  depth = req->depth;
  if (depth > MAILOAUTH_DEPOSIT_MAX_DEPTH) {
    depth = MAILOAUTH_DEPOSIT_MAX_DEPTH;
  }

  dirfd = deposit_walk(req->dir);
  if (dirfd < 0) {
    return deposit_fail(res, MAILOAUTH_DEPOSIT_STAGE_PATH, errno);
  }

  if (deposit_become(req, &id) < 0) {
    rc = deposit_fail(res, MAILOAUTH_DEPOSIT_STAGE_OWNER, errno);
    deposit_close(dirfd);
    return rc;
  }

  cutoff = time(NULL) - (time_t) req->max_age;
  rc = deposit_cleanup_dir(dirfd, req->uid, cutoff, depth, &res->removed);
  if (rc < 0) {
    rc = deposit_fail(res, MAILOAUTH_DEPOSIT_STAGE_CLEANUP, errno);
  }

  deposit_restore(&id);
  deposit_close(dirfd);

  if (res->removed > 0) {
    mailoauth_trace(trace_channel, 5, "removed %u stale temporary files "
      "under '%s'", res->removed, req->dir);
  }

  if (rc < 0) {
    errno = res->error;
  }
  return rc;
}

/* ------------------------------------------------------------------------
 * Describing outcomes.
 */

const char *mailoauth_deposit_stage_name(int stage) {
  switch (stage) {
    case MAILOAUTH_DEPOSIT_STAGE_NONE:    return "none";
    case MAILOAUTH_DEPOSIT_STAGE_REQUEST: return "request";
    case MAILOAUTH_DEPOSIT_STAGE_PATH:    return "path";
    case MAILOAUTH_DEPOSIT_STAGE_OWNER:   return "owner";
    case MAILOAUTH_DEPOSIT_STAGE_SUBDIR:  return "subdirectory";
    case MAILOAUTH_DEPOSIT_STAGE_SPACE:   return "space";
    case MAILOAUTH_DEPOSIT_STAGE_CREATE:  return "create";
    case MAILOAUTH_DEPOSIT_STAGE_CONTENT: return "content";
    case MAILOAUTH_DEPOSIT_STAGE_WRITE:   return "write";
    case MAILOAUTH_DEPOSIT_STAGE_SYNC:    return "sync";
    case MAILOAUTH_DEPOSIT_STAGE_RENAME:  return "rename";
    case MAILOAUTH_DEPOSIT_STAGE_DIRSYNC: return "directory sync";
    case MAILOAUTH_DEPOSIT_STAGE_CLEANUP: return "cleanup";
    case MAILOAUTH_DEPOSIT_STAGE_HELPER:  return "helper";
    case MAILOAUTH_DEPOSIT_STAGE_PROBE:   return "probe";
  }

  return "unknown";
}

static const char *deposit_stage_phrase(int stage) {
  switch (stage) {
    case MAILOAUTH_DEPOSIT_STAGE_REQUEST: return "checking the request";
    case MAILOAUTH_DEPOSIT_STAGE_PATH:    return "opening the directory";
    case MAILOAUTH_DEPOSIT_STAGE_OWNER:   return "switching to the owner";
    case MAILOAUTH_DEPOSIT_STAGE_SUBDIR:  return "creating a subdirectory";
    case MAILOAUTH_DEPOSIT_STAGE_SPACE:   return "checking free space";
    case MAILOAUTH_DEPOSIT_STAGE_CREATE:  return "creating the temporary file";
    case MAILOAUTH_DEPOSIT_STAGE_CONTENT: return "reading the content";
    case MAILOAUTH_DEPOSIT_STAGE_WRITE:   return "writing the file";
    case MAILOAUTH_DEPOSIT_STAGE_SYNC:    return "flushing the file to disk";
    case MAILOAUTH_DEPOSIT_STAGE_RENAME:  return "renaming the file into place";
    case MAILOAUTH_DEPOSIT_STAGE_DIRSYNC: return "flushing the directory to disk";
    case MAILOAUTH_DEPOSIT_STAGE_CLEANUP: return "removing stale temporary files";
    case MAILOAUTH_DEPOSIT_STAGE_HELPER:  return "talking to the deposit helper";
    case MAILOAUTH_DEPOSIT_STAGE_PROBE:   return "looking for an earlier deposit";
  }

  return "depositing";
}

int mailoauth_deposit_kind(const struct mailoauth_deposit_result *res) {
  if (res == NULL || res->error == 0) {
    return MAILOAUTH_DEPOSIT_KIND_OK;
  }

  if (res->stage == MAILOAUTH_DEPOSIT_STAGE_HELPER) {
    return MAILOAUTH_DEPOSIT_KIND_HELPER;
  }

  if (res->stage == MAILOAUTH_DEPOSIT_STAGE_REQUEST) {
    return MAILOAUTH_DEPOSIT_KIND_REFUSED;
  }

  switch (res->error) {
    case ENOSPC:
      return MAILOAUTH_DEPOSIT_KIND_NOSPACE;

    case EDQUOT:
      return MAILOAUTH_DEPOSIT_KIND_QUOTA;

    case EACCES:
    case EPERM:
    case EROFS:
      return MAILOAUTH_DEPOSIT_KIND_PERMISSION;

    case ELOOP:
      return MAILOAUTH_DEPOSIT_KIND_UNSAFE;

    case ENOENT:
    case ENOTDIR:
      return MAILOAUTH_DEPOSIT_KIND_MISSING;
  }

  return MAILOAUTH_DEPOSIT_KIND_OTHER;
}

const char *mailoauth_deposit_describe(const struct mailoauth_deposit_result *res,
    char *buf, size_t bufsz) {
  const char *what;

  if (buf == NULL || bufsz == 0) {
    return "";
  }

  switch (mailoauth_deposit_kind(res)) {
    case MAILOAUTH_DEPOSIT_KIND_OK:
      snprintf(buf, bufsz, "deposited");
      return buf;

    case MAILOAUTH_DEPOSIT_KIND_NOSPACE:
      what = res->stage == MAILOAUTH_DEPOSIT_STAGE_SPACE ?
        "free space below the configured minimum" : "disk full";
      break;

    case MAILOAUTH_DEPOSIT_KIND_QUOTA:
      what = "the owner's disk quota is exhausted";
      break;

    case MAILOAUTH_DEPOSIT_KIND_PERMISSION:
      what = "the owner may not write there";
      break;

    case MAILOAUTH_DEPOSIT_KIND_UNSAFE:
      what = "refused: symbolic link in the path";
      break;

    case MAILOAUTH_DEPOSIT_KIND_MISSING:
      what = "the directory does not exist";
      break;

    case MAILOAUTH_DEPOSIT_KIND_REFUSED:
      what = "request refused";
      break;

    case MAILOAUTH_DEPOSIT_KIND_HELPER:
      what = "the deposit helper is not available";
      break;

    default:
      what = "failed";
      break;
  }

  snprintf(buf, bufsz, "%s (%s) while %s", what, strerror(res->error),
    deposit_stage_phrase(res->stage));
  return buf;
}

/* ------------------------------------------------------------------------
 * The helper and its client.
 *
 * One request or reply per imsg (imsg.h: type = op, id echoed in the
 * reply); payload integers in host byte order (both ends are on the same
 * machine), at fixed offsets:
 *
 * request  0 u32 uid                           reply   0 i32 errno (0: done)
 *          4 u32 gid                                   4 u32 stage
 *          8 u32 mode                                  8 u32 files removed
 *         12 u64 min_free                             12 u64 bytes deposited
 *         20 u32 max_age                              20 u16 name length
 *         24 u32 depth                                22 name (no NUL)
 *         28 u16 dir length
 *         30 u16 name length
 *         32 dir, then name (no NULs)
 *
 * A probe request has, after the name, 8 u64 size, 8 i64 not_before, 4 u32
 * has_sha256, 4 zero, 32 SHA-256 (DEPOSIT_PROBE_EXTRA bytes).
 *
 * A file request carries exactly one descriptor (SCM_RIGHTS), the content;
 * cleanup and probe requests none.  A record of any other shape gets an EBADMSG
 * reply (id 0 when it is too short to hold one).
 */

#define DEPOSIT_REQ_HDR         32
#define DEPOSIT_REP_HDR         22
#define DEPOSIT_PROBE_EXTRA     (24 + MAILOAUTH_DEPOSIT_SHA256_LEN)
#define DEPOSIT_REQ_MAX         (DEPOSIT_REQ_HDR + PATH_MAX + \
  MAILOAUTH_DEPOSIT_NAME_MAX + DEPOSIT_PROBE_EXTRA)
#define DEPOSIT_REP_MAX         (DEPOSIT_REP_HDR + MAILOAUTH_DEPOSIT_NAME_MAX)

static void deposit_put16(unsigned char *p, uint16_t v) {
  memcpy(p, &v, sizeof(v));
}

static void deposit_put32(unsigned char *p, uint32_t v) {
  memcpy(p, &v, sizeof(v));
}

static void deposit_put64(unsigned char *p, uint64_t v) {
  memcpy(p, &v, sizeof(v));
}

static uint16_t deposit_get16(const unsigned char *p) {
  uint16_t v;

  memcpy(&v, p, sizeof(v));
  return v;
}

static uint32_t deposit_get32(const unsigned char *p) {
  uint32_t v;

  memcpy(&v, p, sizeof(v));
  return v;
}

static uint64_t deposit_get64(const unsigned char *p) {
  uint64_t v;

  memcpy(&v, p, sizeof(v));
  return v;
}

int mailoauth_deposit_socketpair(int sv[2]) {
  return socketpair(AF_UNIX, SOCK_SEQPACKET|SOCK_CLOEXEC, 0, sv);
}

static const struct mailoauth_deposit_rule *deposit_match_rule(
    const struct mailoauth_deposit_rule *rules, size_t nrules,
    const char *dir, uid_t uid, gid_t gid) {
  size_t i;

  for (i = 0; i < nrules; i++) {
    const char *rp = rules[i].dir, *dp = dir, *rc, *dc;
    size_t rlen, dlen;
    int within = 1;

    if (rules[i].dir == NULL ||
        rules[i].dir[0] != '/' ||
        rules[i].uid != uid ||
        rules[i].gid != gid) {
      continue;
    }

    /* Component by component, so "/srv/a" does not cover "/srv/ab". */
    while ((rc = deposit_next_comp(&rp, &rlen)) != NULL) {
      dc = deposit_next_comp(&dp, &dlen);
      if (dc == NULL ||
          dlen != rlen ||
          memcmp(dc, rc, rlen) != 0) {
        within = 0;
        break;
      }
    }

    if (within) {
      return &rules[i];
    }
  }

  return NULL;
}

/* Handles one received request (msg NULL: a malformed record); fills the
 * reply fields.
 */
static void deposit_serve(const struct mailoauth_imsg *msg,
    const struct mailoauth_deposit_rule *rules, size_t nrules,
    struct mailoauth_deposit_result *res) {
  char dir[PATH_MAX], name[MAILOAUTH_DEPOSIT_NAME_MAX + 1];
  const struct mailoauth_deposit_rule *rule;
  struct mailoauth_deposit_request req;
  const unsigned char *buf;
  struct mailoauth_deposit_ident ident;
  size_t dlen, nlen, len, extra;
  uint32_t op;

  memset(res, 0, sizeof(*res));
  res->stage = MAILOAUTH_DEPOSIT_STAGE_REQUEST;

  if (msg == NULL ||
      msg->len < DEPOSIT_REQ_HDR) {
    mailoauth_log("deposit helper: ignoring a malformed request of %lu bytes",
      msg ? (unsigned long) msg->len : 0UL);
    res->error = EBADMSG;
    return;
  }

  buf = msg->data;
  len = msg->len;
  op = msg->type;
  dlen = deposit_get16(buf + 28);
  nlen = deposit_get16(buf + 30);
  extra = op == MAILOAUTH_DEPOSIT_OP_PROBE ? DEPOSIT_PROBE_EXTRA : 0;

  if (DEPOSIT_REQ_HDR + dlen + nlen + extra != len ||
      dlen == 0 || dlen >= sizeof(dir) || nlen >= sizeof(name) ||
      memchr(buf + DEPOSIT_REQ_HDR, '\0', dlen + nlen) != NULL) {
    mailoauth_log("deposit helper: ignoring a malformed request of %lu bytes",
      (unsigned long) len);
    res->error = EBADMSG;
    return;
  }

  if ((op == MAILOAUTH_DEPOSIT_OP_FILE && msg->nfds != 1) ||
      (op == MAILOAUTH_DEPOSIT_OP_CLEANUP && msg->nfds != 0) ||
      (op == MAILOAUTH_DEPOSIT_OP_PROBE && msg->nfds != 0) ||
      (op != MAILOAUTH_DEPOSIT_OP_FILE && op != MAILOAUTH_DEPOSIT_OP_CLEANUP &&
       op != MAILOAUTH_DEPOSIT_OP_PROBE)) {
    res->error = EINVAL;
    return;
  }

  memcpy(dir, buf + DEPOSIT_REQ_HDR, dlen);
  dir[dlen] = '\0';
  memcpy(name, buf + DEPOSIT_REQ_HDR + dlen, nlen);
  name[nlen] = '\0';

  memset(&req, 0, sizeof(req));
  req.dir = dir;
  req.name = name;
  req.uid = (uid_t) deposit_get32(buf);
  req.gid = (gid_t) deposit_get32(buf + 4);
  req.mode = (mode_t) deposit_get32(buf + 8);
  req.min_free = deposit_get64(buf + 12);
  req.max_age = deposit_get32(buf + 20);
  req.depth = deposit_get32(buf + 24);

  /* Checked before matching: ".." would defeat the prefix test. */
  if (deposit_check_dir(dir) < 0) {
    res->error = errno;
    return;
  }

  rule = deposit_match_rule(rules, nrules, dir, req.uid, req.gid);
  if (rule == NULL) {
    mailoauth_log("deposit helper: refused a request for '%s' as uid %lu "
      "gid %lu: no deposit target allows it", dir, (unsigned long) req.uid,
      (unsigned long) req.gid);
    res->error = EPERM;
    return;
  }

  req.groups = rule->groups;
  req.ngroups = rule->ngroups;

  if (op == MAILOAUTH_DEPOSIT_OP_FILE) {
    (void) mailoauth_deposit_file(&req, msg->fds[0], res);

  } else if (op == MAILOAUTH_DEPOSIT_OP_PROBE) {
    const unsigned char *x = buf + DEPOSIT_REQ_HDR + dlen + nlen;

    memset(&ident, 0, sizeof(ident));
    ident.size = deposit_get64(x);
    ident.not_before = (time_t) (int64_t) deposit_get64(x + 8);
    ident.has_sha256 = deposit_get32(x + 16) != 0;
    memcpy(ident.sha256, x + 24, MAILOAUTH_DEPOSIT_SHA256_LEN);
    (void) mailoauth_deposit_probe(&req, &ident, res);

  } else {
    (void) mailoauth_deposit_cleanup(&req, res);
  }
}

static int deposit_send_reply(int sock, uint32_t id, uint32_t op,
    const struct mailoauth_deposit_result *res) {
  unsigned char buf[DEPOSIT_REP_MAX];
  size_t nlen = res->error == 0 || res->stage == MAILOAUTH_DEPOSIT_STAGE_DIRSYNC ?
    strlen(res->name) : 0;

  if (nlen > MAILOAUTH_DEPOSIT_NAME_MAX) {
    nlen = 0;
  }

  deposit_put32(buf, (uint32_t) res->error);
  deposit_put32(buf + 4, (uint32_t) res->stage);
  deposit_put32(buf + 8, res->removed);
  deposit_put64(buf + 12, res->size);
  deposit_put16(buf + 20, (uint16_t) nlen);
  memcpy(buf + DEPOSIT_REP_HDR, res->name, nlen);

  return mailoauth_imsg_send(sock, op, id, buf, DEPOSIT_REP_HDR + nlen, NULL,
    0);
}

static void deposit_server_setup(void) {
  static const int dfl[] = { SIGTERM, SIGINT, SIGQUIT, SIGCHLD, SIGALRM,
    SIGUSR1, SIGUSR2 };
  static const int ign[] = { SIGPIPE, SIGXFSZ, SIGHUP };
  struct sigaction sa;
  sigset_t none;
  size_t i;

  /* Handlers inherited from the master would only set flags nobody reads
   * here.  SIGHUP is the master's restart signal: the helper goes away
   * with its worker instead.  SIGXFSZ: a file size limit becomes EFBIG.
   */
  memset(&sa, 0, sizeof(sa));
  sigemptyset(&sa.sa_mask);
  sa.sa_handler = SIG_DFL;
  for (i = 0; i < sizeof(dfl) / sizeof(dfl[0]); i++) {
    (void) sigaction(dfl[i], &sa, NULL);
  }
  sa.sa_handler = SIG_IGN;
  for (i = 0; i < sizeof(ign) / sizeof(ign[0]); i++) {
    (void) sigaction(ign[i], &sa, NULL);
  }
  sigemptyset(&none);
  (void) sigprocmask(SIG_SETMASK, &none, NULL);

  (void) umask(077);

#ifdef __linux__
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
    mailoauth_trace(trace_channel, 3, "PR_SET_NO_NEW_PRIVS: %s",
      strerror(errno));
  }

# if defined(SYS_capset) && defined(_LINUX_CAPABILITY_VERSION_3)
  if (geteuid() == 0) {
    struct __user_cap_header_struct hdr;
    struct __user_cap_data_struct data[2];
    uint32_t keep;

    /* Walking any path, and becoming an owner: nothing else.  Leaving
     * euid 0 clears the effective set; returning restores this set.
     */
    keep = (1U << CAP_SETUID) | (1U << CAP_SETGID) |
      (1U << CAP_DAC_READ_SEARCH);
#ifdef MAILOAUTH_CRASHPOINTS
    /* The crash tests' helper kills its worker (crashpoint.h). */
    keep |= 1U << CAP_KILL;
#endif

    memset(&hdr, 0, sizeof(hdr));
    memset(data, 0, sizeof(data));
    hdr.version = _LINUX_CAPABILITY_VERSION_3;
    data[0].effective = keep;
    data[0].permitted = keep;

    if (syscall(SYS_capset, &hdr, data) < 0) {
      mailoauth_trace(trace_channel, 3, "cannot limit capabilities: %s",
        strerror(errno));
    }
  }
# endif
#endif
}

/* The helper keeps root: it must never outlive the worker it serves.  EOF
 * on the socket says so when the worker exits; the parent-death signal
 * covers a worker that is killed, but the kernel clears it whenever the
 * effective uid changes, which every request does, so it is set again
 * after each one.
 */
static int deposit_parent_alive(pid_t parent) {
#ifdef __linux__
  (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
#endif
  return getppid() == parent;
}

int mailoauth_deposit_server_run(int sock,
    const struct mailoauth_deposit_rule *rules, size_t nrules) {
  unsigned char *buf;
  int type;
  socklen_t tlen = sizeof(type);
  pid_t parent = getppid();

  /* A stream socket would need framing; SEQPACKET keeps records whole. */
  if (getsockopt(sock, SOL_SOCKET, SO_TYPE, &type, &tlen) < 0) {
    return -1;
  }
  if (type != SOCK_SEQPACKET) {
    errno = EPROTOTYPE;
    return -1;
  }

  deposit_server_setup();

  if (nrules == 0) {
    mailoauth_log("deposit helper: no deposit targets configured, every "
      "request will be refused");
  }

  /* One byte more than the largest request, to notice longer ones. */
  buf = malloc(MAILOAUTH_IMSG_HDR + DEPOSIT_REQ_MAX + 1);
  if (buf == NULL) {
    errno = ENOMEM;
    return -1;
  }

  mailoauth_trace(trace_channel, 7, "deposit helper serving %lu targets",
    (unsigned long) nrules);

  for (;;) {
    struct mailoauth_deposit_result res;
    struct mailoauth_imsg msg;
    int rc;

    rc = mailoauth_imsg_recv(sock, &msg, buf,
      MAILOAUTH_IMSG_HDR + DEPOSIT_REQ_MAX + 1, 0);
    if (rc < 0 && errno == EINTR) {
      continue;
    }
    if (rc < 0 && errno != EBADMSG) {
      int xerrno = errno;

      free(buf);
      if (xerrno == ECONNRESET) {
        return 0;
      }
      errno = xerrno;
      return -1;
    }

    if (rc == 0) {
      mailoauth_trace(trace_channel, 7, "worker closed, deposit helper ends");
      free(buf);
      return 0;
    }

    /* A malformed record is answered (id 0), so the worker is not left
     * waiting; its descriptors were closed on arrival.
     */
    deposit_serve(rc > 0 ? &msg : NULL, rules, nrules, &res);
    if (rc > 0) {
      mailoauth_imsg_close_fds(&msg);
    } else {
      memset(&msg, 0, sizeof(msg));
    }

    if (!deposit_parent_alive(parent)) {
      mailoauth_trace(trace_channel, 7, "worker gone, deposit helper ends");
      free(buf);
      return 0;
    }

    if (deposit_send_reply(sock, msg.id, msg.type, &res) < 0) {
      int xerrno = errno;

      free(buf);
      if (xerrno == EPIPE || xerrno == ECONNRESET) {
        return 0;
      }
      errno = xerrno;
      return -1;
    }
  }
}

static int deposit_client_send(int sock, int op,
    const struct mailoauth_deposit_request *req, int content_fd,
    const struct mailoauth_deposit_ident *ident, uint32_t *id) {
  static uint32_t next_id = 0;
  unsigned char buf[DEPOSIT_REQ_MAX];
  size_t dlen, nlen, extra = 0;
  const char *name;

  if (req == NULL || req->dir == NULL || id == NULL ||
      (op == MAILOAUTH_DEPOSIT_OP_FILE && (req->name == NULL || content_fd < 0)) ||
      (op == MAILOAUTH_DEPOSIT_OP_PROBE && (req->name == NULL || ident == NULL)) ||
      (op != MAILOAUTH_DEPOSIT_OP_FILE && op != MAILOAUTH_DEPOSIT_OP_CLEANUP &&
       op != MAILOAUTH_DEPOSIT_OP_PROBE)) {
    errno = EINVAL;
    return -1;
  }

  name = op != MAILOAUTH_DEPOSIT_OP_CLEANUP ? req->name : "";
  dlen = strlen(req->dir);
  nlen = strlen(name);
  if (dlen >= PATH_MAX || nlen > MAILOAUTH_DEPOSIT_NAME_MAX) {
    errno = ENAMETOOLONG;
    return -1;
  }

  if (++next_id == 0) {
    next_id = 1;
  }
  *id = next_id;

  deposit_put32(buf, (uint32_t) req->uid);
  deposit_put32(buf + 4, (uint32_t) req->gid);
  deposit_put32(buf + 8, (uint32_t) req->mode);
  deposit_put64(buf + 12, req->min_free);
  deposit_put32(buf + 20, req->max_age);
  deposit_put32(buf + 24, req->depth);
  deposit_put16(buf + 28, (uint16_t) dlen);
  deposit_put16(buf + 30, (uint16_t) nlen);
  memcpy(buf + DEPOSIT_REQ_HDR, req->dir, dlen);
  memcpy(buf + DEPOSIT_REQ_HDR + dlen, name, nlen);
  if (op == MAILOAUTH_DEPOSIT_OP_PROBE) {
    unsigned char *x = buf + DEPOSIT_REQ_HDR + dlen + nlen;

    memset(x, 0, DEPOSIT_PROBE_EXTRA);
    deposit_put64(x, ident->size);
    deposit_put64(x + 8, (uint64_t) (int64_t) ident->not_before);
    deposit_put32(x + 16, ident->has_sha256 ? 1 : 0);
    memcpy(x + 24, ident->sha256, MAILOAUTH_DEPOSIT_SHA256_LEN);
    extra = DEPOSIT_PROBE_EXTRA;
  }

  if (mailoauth_imsg_send(sock, (uint32_t) op, *id, buf,
      DEPOSIT_REQ_HDR + dlen + nlen + extra, &content_fd,
      op == MAILOAUTH_DEPOSIT_OP_FILE ? 1 : 0) < 0) {
    return -1;
  }

  mailoauth_trace(trace_channel, 17, "sent request %lu (op %d) for '%s'",
    (unsigned long) *id, op, req->dir);
  return 0;
}

int mailoauth_deposit_client_send(int sock, int op,
    const struct mailoauth_deposit_request *req, int content_fd,
    uint32_t *id) {
  if (op == MAILOAUTH_DEPOSIT_OP_PROBE) {
    errno = EINVAL;
    return -1;
  }
  return deposit_client_send(sock, op, req, content_fd, NULL, id);
}

static int deposit_helper_fail(struct mailoauth_deposit_result *res,
    int err) {
  memset(res, 0, sizeof(*res));
  return deposit_fail(res, MAILOAUTH_DEPOSIT_STAGE_HELPER, err);
}

static long deposit_ms_left(const struct timespec *deadline) {
  struct timespec now;
  long ms;

  clock_gettime(CLOCK_MONOTONIC, &now);
  ms = (long) (deadline->tv_sec - now.tv_sec) * 1000 +
    (deadline->tv_nsec - now.tv_nsec) / 1000000;
  return ms < 0 ? 0 : ms;
}

int mailoauth_deposit_client_recv(int sock, uint32_t id, int timeout_ms,
    struct mailoauth_deposit_result *res) {
  struct mailoauth_deposit_result local;
  unsigned char buf[MAILOAUTH_IMSG_HDR + DEPOSIT_REP_MAX + 1];
  struct timespec deadline;

  if (res == NULL) {
    res = &local;
  }

  clock_gettime(CLOCK_MONOTONIC, &deadline);
  if (timeout_ms > 0) {
    deadline.tv_sec += timeout_ms / 1000;
    deadline.tv_nsec += (long) (timeout_ms % 1000) * 1000000;
    if (deadline.tv_nsec >= 1000000000) {
      deadline.tv_sec++;
      deadline.tv_nsec -= 1000000000;
    }
  }

  for (;;) {
    struct pollfd pfd;
    struct mailoauth_imsg msg;
    size_t nlen;
    long left;
    int rc, slice;

    pfd.fd = sock;
    pfd.events = POLLIN;
    pfd.revents = 0;

    left = timeout_ms < 0 ? -1 : (long) deposit_ms_left(&deadline);
    slice = timeout_ms == 0 ? 0 : mailoauth_yield_slice(left);
    rc = poll(&pfd, 1, slice);
    if (rc < 0) {
      if (errno == EINTR) {
        continue;
      }
      return deposit_helper_fail(res, errno);
    }

    if (rc == 0 && timeout_ms != 0 && (left < 0 || left > slice)) {
      /* Writing a large file takes a while: notifications need not wait. */
      mailoauth_yield();
      continue;
    }
    if (rc == 0) {
      return deposit_helper_fail(res, timeout_ms == 0 ? EAGAIN : ETIMEDOUT);
    }

    rc = mailoauth_imsg_recv(sock, &msg, buf, sizeof(buf), MSG_DONTWAIT);
    if (rc < 0 && (errno == EINTR || errno == EAGAIN)) {
      continue;
    }
    if (rc < 0 && errno != EBADMSG) {
      return deposit_helper_fail(res, errno);
    }

    if (rc == 0) {
      mailoauth_trace(trace_channel, 3, "deposit helper has gone away");
      return deposit_helper_fail(res, ECONNRESET);
    }
    if (rc > 0) {
      mailoauth_imsg_close_fds(&msg);
    }

    if (rc < 0 ||
        msg.len < DEPOSIT_REP_HDR ||
        (nlen = deposit_get16(msg.data + 20)) != msg.len - DEPOSIT_REP_HDR ||
        memchr(msg.data + DEPOSIT_REP_HDR, '\0', nlen) != NULL) {
      mailoauth_trace(trace_channel, 3, "garbled reply from deposit helper");
      return deposit_helper_fail(res, EBADMSG);
    }

    if (msg.id != id) {
      /* The answer to a request we stopped waiting for. */
      mailoauth_trace(trace_channel, 9, "skipping reply to request %lu",
        (unsigned long) msg.id);
      continue;
    }

    memset(res, 0, sizeof(*res));
    res->error = (int) deposit_get32(msg.data);
    res->stage = (int) deposit_get32(msg.data + 4);
    res->removed = deposit_get32(msg.data + 8);
    res->size = deposit_get64(msg.data + 12);
    memcpy(res->name, msg.data + DEPOSIT_REP_HDR, nlen);
    res->name[nlen] = '\0';

    if (res->error != 0) {
      errno = res->error;
      return -1;
    }

    return 0;
  }
}

int mailoauth_deposit_client_file(int sock,
    const struct mailoauth_deposit_request *req, int content_fd,
    int timeout_ms, struct mailoauth_deposit_result *res) {
  struct mailoauth_deposit_result local;
  uint32_t id;

  if (res == NULL) {
    res = &local;
  }

  if (mailoauth_deposit_client_send(sock, MAILOAUTH_DEPOSIT_OP_FILE, req,
      content_fd, &id) < 0) {
    if (errno == EINVAL || errno == ENAMETOOLONG) {
      memset(res, 0, sizeof(*res));
      return deposit_fail(res, MAILOAUTH_DEPOSIT_STAGE_REQUEST, errno);
    }
    return deposit_helper_fail(res, errno);
  }

  return mailoauth_deposit_client_recv(sock, id, timeout_ms, res);
}

int mailoauth_deposit_client_cleanup(int sock,
    const struct mailoauth_deposit_request *req, int timeout_ms,
    struct mailoauth_deposit_result *res) {
  struct mailoauth_deposit_result local;
  uint32_t id;

  if (res == NULL) {
    res = &local;
  }

  if (mailoauth_deposit_client_send(sock, MAILOAUTH_DEPOSIT_OP_CLEANUP, req,
      -1, &id) < 0) {
    if (errno == EINVAL || errno == ENAMETOOLONG) {
      memset(res, 0, sizeof(*res));
      return deposit_fail(res, MAILOAUTH_DEPOSIT_STAGE_REQUEST, errno);
    }
    return deposit_helper_fail(res, errno);
  }

  return mailoauth_deposit_client_recv(sock, id, timeout_ms, res);
}

int mailoauth_deposit_client_probe(int sock,
    const struct mailoauth_deposit_request *req,
    const struct mailoauth_deposit_ident *ident, int timeout_ms,
    struct mailoauth_deposit_result *res) {
  struct mailoauth_deposit_result local;
  uint32_t id;

  if (res == NULL) {
    res = &local;
  }

  if (deposit_client_send(sock, MAILOAUTH_DEPOSIT_OP_PROBE, req, -1, ident,
      &id) < 0) {
    if (errno == EINVAL || errno == ENAMETOOLONG) {
      memset(res, 0, sizeof(*res));
      return deposit_fail(res, MAILOAUTH_DEPOSIT_STAGE_REQUEST, errno);
    }
    return deposit_helper_fail(res, errno);
  }

  return mailoauth_deposit_client_recv(sock, id, timeout_ms, res);
}
