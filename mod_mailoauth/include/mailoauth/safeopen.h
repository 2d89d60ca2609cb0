/*
 * mod_mailoauth - opening files by path without following symbolic links
 *
 * A privileged process that opens a path inside a directory someone else
 * controls must not let that someone redirect it: O_NOFOLLOW guards only
 * the last component, so "d/file" with d swapped for a symlink to
 * somewhere private still opens the private file.  These routines refuse a
 * symbolic link in any component: openat2() with RESOLVE_NO_SYMLINKS where
 * the kernel has it (Linux 5.6), otherwise a walk of openat() calls, one
 * component at a time, each with O_NOFOLLOW.
 *
 * No ProFTPD headers: the unit is tested on its own and usable by any of
 * the module's programs.
 */

#ifndef MOD_MAILOAUTH_SAFEOPEN_H
#define MOD_MAILOAUTH_SAFEOPEN_H

#include <sys/stat.h>
#include <sys/types.h>

/* Opens path (absolute, or relative to dirfd, which may be AT_FDCWD) with
 * flags, adding O_NOFOLLOW and O_CLOEXEC.  No component may be a symbolic
 * link: -1/ELOOP if one is (ENOTDIR or ENOENT as open(2) for the rest).
 * ".." is allowed; it leads to the real parent of the directory reached.
 */
int mailoauth_safeopen_at(int dirfd, const char *path, int flags);

/* The component walk used when openat2() is unavailable; exposed so that
 * tests exercise it on kernels that have openat2().
 */
int mailoauth_safeopen_walk(int dirfd, const char *path, int flags);

/* What the file opened by mailoauth_safeopen_file() must be. */
struct mailoauth_safeopen_expect {
  int check_id;         /* refuse unless st_dev/st_ino are these */
  dev_t dev;
  ino_t ino;
  int check_owner;      /* refuse a file owned by this uid */
  uid_t refuse_uid;
};

/* Opens a regular file for reading as mailoauth_safeopen_at() does (also
 * with O_NONBLOCK, so that a FIFO put in its place cannot block), then
 * checks the open descriptor, never the path again.  Returns the
 * descriptor, with its fstat() in *st; or -1 with errno:
 *   ELOOP   a symbolic link on the way
 *   ESTALE  not the file expected (device or inode differ)
 *   EINVAL  not a regular file
 *   EPERM   owned by want->refuse_uid
 *   or open(2)'s own.
 * *why (may be NULL) gets a short static text saying which, for logs.
 */
int mailoauth_safeopen_file(int dirfd, const char *path,
  const struct mailoauth_safeopen_expect *want, struct stat *st,
  const char **why);

#endif /* MOD_MAILOAUTH_SAFEOPEN_H */
