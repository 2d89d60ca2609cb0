/*
 * mod_mailoauth - opening files by path without following symbolic links
 */

#include "mailoauth/safeopen.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <unistd.h>

#if defined(__linux__)
# include <sys/syscall.h>
# if defined(SYS_openat2)
#  include <linux/openat2.h>
#  define MAILOAUTH_SAFEOPEN_HAVE_OPENAT2 1
# endif
#endif

static int mailoauth_safeopen_close(int fd) {
  int xerrno = errno;

  if (fd >= 0) {
    (void) close(fd);
  }
  errno = xerrno;
  return -1;
}

/* ENOTDIR from an O_DIRECTORY|O_NOFOLLOW open may be a symlink: say so. */
static void mailoauth_safeopen_explain(int dirfd, const char *name) {
  struct stat st;
  int xerrno = errno;

  if ((xerrno == ENOTDIR || xerrno == ELOOP) &&
      fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
      S_ISLNK(st.st_mode)) {
    xerrno = ELOOP;
  }
  errno = xerrno;
}

int mailoauth_safeopen_walk(int dirfd, const char *path, int flags) {
  char buf[PATH_MAX];
  char *p, *next;
  int cur, fd;
  size_t len;

  if (path == NULL ||
      *path == '\0') {
    errno = ENOENT;
    return -1;
  }

  len = strlen(path);
  if (len >= sizeof(buf)) {
    errno = ENAMETOOLONG;
    return -1;
  }
  memcpy(buf, path, len + 1);

  /* Trailing slashes name the last component, not an empty one. */
  while (len > 1 && buf[len - 1] == '/') {
    buf[--len] = '\0';
  }

  p = buf;
  cur = dirfd;
  if (*p == '/') {
    cur = open("/", O_PATH|O_DIRECTORY|O_CLOEXEC);
    if (cur < 0) {
      return -1;
    }
    while (*p == '/') {
      p++;
    }
    if (*p == '\0') {
      p = (char *) ".";
    }
  }

  for (;;) {
    int nfd;

    next = strchr(p, '/');
    if (next == NULL) {
      break;
    }
    *next++ = '\0';
    while (*next == '/') {
      next++;
    }

    if (strcmp(p, ".") == 0) {
      p = next;
      continue;
    }

    /* O_PATH: traversal needs search permission only, as path lookup
     * does; O_DIRECTORY|O_NOFOLLOW: a symlink here is refused, not taken.
     */
    nfd = openat(cur, p, O_PATH|O_DIRECTORY|O_NOFOLLOW|O_CLOEXEC);
    if (nfd < 0) {
      mailoauth_safeopen_explain(cur, p);
      return cur != dirfd ? mailoauth_safeopen_close(cur) : -1;
    }

    if (cur != dirfd) {
      (void) close(cur);
    }
    cur = nfd;
    p = next;
  }

  fd = openat(cur, p, flags|O_NOFOLLOW|O_CLOEXEC);
  if (fd < 0) {
    mailoauth_safeopen_explain(cur, p);
  }
  if (cur != dirfd) {
    int xerrno = errno;

    (void) close(cur);
    errno = xerrno;
  }
  return fd;
}

int mailoauth_safeopen_at(int dirfd, const char *path, int flags) {
#if defined(MAILOAUTH_SAFEOPEN_HAVE_OPENAT2)
  struct open_how how;
  long fd;

  if (path == NULL) {
    errno = ENOENT;
    return -1;
  }

  memset(&how, 0, sizeof(how));
  how.flags = (unsigned long long) (flags|O_NOFOLLOW|O_CLOEXEC);
  how.resolve = RESOLVE_NO_SYMLINKS|RESOLVE_NO_MAGICLINKS;

  fd = syscall(SYS_openat2, dirfd, path, &how, sizeof(how));
  if (fd >= 0) {
    return (int) fd;
  }

  /* An older kernel (ENOSYS), or a seccomp filter that does not know the
   * call (ENOSYS or EPERM): walk instead.
   */
  if (errno != ENOSYS &&
      errno != EPERM) {
    return -1;
  }
#endif

  return mailoauth_safeopen_walk(dirfd, path, flags);
}

int mailoauth_safeopen_file(int dirfd, const char *path,
    const struct mailoauth_safeopen_expect *want, struct stat *st,
    const char **why) {
  const char *dummy;
  int fd;

  if (why == NULL) {
    why = &dummy;
  }

  fd = mailoauth_safeopen_at(dirfd, path, O_RDONLY|O_NONBLOCK);
  if (fd < 0) {
    *why = errno == ELOOP ? "a symbolic link is on its path" :
      "it cannot be opened";
    return -1;
  }

  if (fstat(fd, st) < 0) {
    *why = "it cannot be examined";
    return mailoauth_safeopen_close(fd);
  }

  if (!S_ISREG(st->st_mode)) {
    *why = "it is not a regular file";
    (void) close(fd);
    errno = EINVAL;
    return -1;
  }

  if (want != NULL &&
      want->check_id &&
      (st->st_dev != want->dev || st->st_ino != want->ino)) {
    *why = "it is not the file that was recorded";
    (void) close(fd);
    errno = ESTALE;
    return -1;
  }

  if (want != NULL &&
      want->check_owner &&
      st->st_uid == want->refuse_uid) {
    *why = "it belongs to the server's own user";
    (void) close(fd);
    errno = EPERM;
    return -1;
  }

  *why = NULL;
  return fd;
}
