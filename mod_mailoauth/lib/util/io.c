/*
 * mod_mailoauth - the one set of I/O helpers
 */

#include "mailoauth/io.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

int mailoauth_io_write_all(int fd, const void *data, size_t len) {
  const unsigned char *p = data;

  while (len > 0) {
    ssize_t n = write(fd, p, len);

    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return -1;
    }

    p += n;
    len -= (size_t) n;
  }

  return 0;
}

int mailoauth_io_read_all(int fd, void *data, size_t len) {
  unsigned char *p = data;

  while (len > 0) {
    ssize_t n = read(fd, p, len);

    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return -1;
    }
    if (n == 0) {
      errno = EPIPE;
      return -1;
    }

    p += n;
    len -= (size_t) n;
  }

  return 0;
}

int mailoauth_io_fsync_dir(const char *dir) {
  int fd, res, xerrno;

  fd = open(dir, O_RDONLY|O_DIRECTORY|O_CLOEXEC);
  if (fd < 0) {
    return -1;
  }

  res = fsync(fd);
  xerrno = errno;
  (void) close(fd);
  errno = xerrno;
  return res;
}
