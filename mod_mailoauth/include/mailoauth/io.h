/*
 * mod_mailoauth - the one set of I/O helpers
 *
 * Whole writes and reads across short counts and EINTR, and the directory
 * flush that makes a rename durable.  No ProFTPD headers.
 */

#ifndef MOD_MAILOAUTH_IO_H
#define MOD_MAILOAUTH_IO_H

#include <stddef.h>

/* Writes all len bytes.  0, or -1 with errno. */
int mailoauth_io_write_all(int fd, const void *data, size_t len);

/* Reads exactly len bytes.  0, or -1 with errno (EPIPE: end of file
 * first).
 */
int mailoauth_io_read_all(int fd, void *data, size_t len);

/* fsync() of a directory, so that a rename or creation in it survives a
 * crash.  0, or -1 with errno.
 */
int mailoauth_io_fsync_dir(const char *dir);

#endif /* MOD_MAILOAUTH_IO_H */
