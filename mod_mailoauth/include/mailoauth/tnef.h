/*
 * mod_mailoauth - unpacking Outlook's winmail.dat (application/ms-tnef)
 *
 * Outlook and Exchange sometimes wrap a message's attachments into one
 * TNEF stream, winmail.dat.  This unit takes out the files it carries, with
 * libytnef doing the MAPI property decoding.
 *
 * libytnef has a long history of memory-safety bugs, and the process that
 * ingests mail (the worker) holds OAuth tokens.  So the decoding runs in a
 * short-lived child process: forked per call, stripped of every descriptor
 * but its input and a pipe, with resource limits, no new privileges and a
 * seccomp filter that leaves it little more than read() and write() on
 * what it has.  The child gets its input only once the process that forked
 * it has seen in /proc/PID/status that the filter is in place; where that
 * cannot be seen (no seccomp, no filter for the architecture, no /proc),
 * nothing is decoded at all.  The parent reads the files back over the
 * pipe, trusting nothing the child says: lengths are checked against the
 * limits before anything is read, a child that crashes, hangs or sends
 * garbage is killed, reaped and reported as an error.
 *
 * The child is not forked from the caller, whose memory a code-execution
 * bug could copy into an "extracted file": it is forked by the TNEF
 * helper, a process the caller forks before it reads any secret and that
 * does nothing but fork decoders on request.  Without a helper, nothing is
 * unpacked.
 *
 * Files come out, and attached Outlook items (embedded messages) as the
 * TNEF streams they are, named "<display name>.tnef"; attachments by
 * reference and the message body are skipped.  A damaged stream (a wrong
 * checksum, cut short) is read as far as it goes: its whole files come
 * out, then the result says EBADMSG.  No ProFTPD headers.
 */

#ifndef MOD_MAILOAUTH_TNEF_H
#define MOD_MAILOAUTH_TNEF_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Defaults for the limits; a zero field means the default. */
#define MAILOAUTH_TNEF_DEFAULT_MAX_INPUT        ((uint64_t) 100 << 20)
#define MAILOAUTH_TNEF_DEFAULT_MAX_FILES        1000
#define MAILOAUTH_TNEF_DEFAULT_MAX_FILE_BYTES   ((uint64_t) 100 << 20)
#define MAILOAUTH_TNEF_DEFAULT_MAX_TOTAL_BYTES  ((uint64_t) 100 << 20)
#define MAILOAUTH_TNEF_DEFAULT_TIMEOUT_MS       10000

/* Longest file name passed on, in bytes; a longer one is passed over for
 * the next the TNEF offers (the 8.3 title), or for none (NULL: the caller
 * names the file).
 */
#define MAILOAUTH_TNEF_MAX_NAME                 1024

struct mailoauth_tnef_limits {
  uint64_t max_input;           /* bytes of winmail.dat */
  unsigned int max_files;       /* files taken out */
  uint64_t max_file_bytes;      /* bytes of one file */
  uint64_t max_total_bytes;     /* bytes of all files */
  unsigned int timeout_ms;      /* time spent waiting for the decoder; the
                                 * callbacks and the writing of temporary
                                 * files do not count */
};

/* Fills in the defaults. */
void mailoauth_tnef_limits_init(struct mailoauth_tnef_limits *lim);

/* One file: name is valid UTF-8 (converted from the TNEF's code page; what
 * cannot be converted is U+FFFD), NUL-terminated, or NULL when the TNEF
 * gives none (the caller names the file).  It is the name as sent, not
 * sanitized: it may hold '/', '\\' or control characters.  fd is an
 * anonymous temporary file holding the size bytes, at an unspecified
 * offset (use pread() or fstat()); it is closed when the callback returns
 * (dup() it to keep it).  Return 0 to go on, -1 (errno set) to stop.
 */
typedef int (*mailoauth_tnef_file_fn)(const char *name, int fd,
  uint64_t size, void *arg);

/* The TNEF helper.  mailoauth_tnef_helper_start() forks it from this
 * process, which must not yet hold anything a decoder should not see, and
 * makes mailoauth_tnef_unpack() use it.  The helper closes every descriptor
 * but its socket (0, 1 and 2 become /dev/null), empties its environment,
 * and runs init(arg) (may be NULL) first, with the caller's descriptors
 * still open: the place to drop privileges and set the process title
 * (return -1 with errno to make the helper give up).  After that it keeps
 * no saved set-user-ID other than its effective one.  It ends when the
 * caller closes its socket or exits.
 *
 * Returns the caller's end of the socket (close-on-exec, above 2: for
 * information only, mailoauth_tnef_helper_stop() closes it), or -1 with
 * errno: EBUSY (a helper is running), the init function's errno,
 * ETIMEDOUT (the helper did not report ready), ECHILD (it died first),
 * anything from socketpair() or fork().
 */
typedef int (*mailoauth_tnef_helper_init_fn)(void *arg);

int mailoauth_tnef_helper_start(mailoauth_tnef_helper_init_fn init,
  void *arg);

/* Makes mailoauth_tnef_helper_start() exec path (argv: title, role, ...)
 * with the socket as descriptor 3 and the environment envp (NULL: none;
 * the helper empties it anyway once started), instead of
 * running the helper in a fork of this process; the program then runs
 * mailoauth_tnef_helper_main() itself and init is not called here.
 * Strings must outlive the helper.
 */
void mailoauth_tnef_helper_set_program(const char *path, char *const argv[],
  char *const envp[]);

/* The helper's pid, or -1 when there is none (never started, stopped, or
 * found dead).
 */
pid_t mailoauth_tnef_helper_pid(void);

/* Closes the caller's socket and reaps the helper, which then ends by
 * itself (it is killed if it has not within a second).  Returns 0 when it
 * ended by itself with status 0, -1 otherwise (ESRCH: there was none;
 * ECHILD: it had to be killed, or ended otherwise).
 */
int mailoauth_tnef_helper_stop(void);

/* Unpacks the winmail.dat held by the regular file in_fd (read from offset
 * 0 to its size, with pread(): its file offset is not used or moved) and
 * calls cb for every file it carries, in order.  The temporary files are
 * created in tmp_dir (O_TMPFILE, mode 0600; a named file unlinked at once
 * where the file system lacks O_TMPFILE).  lim may be NULL for the
 * defaults.  *nfiles (may be NULL) counts the callbacks made.
 *
 * Returns 0, or -1 with errno:
 *   ESRCH      no TNEF helper: none was started by this process, or it
 *              died or was stopped (then logged once; it is not
 *              restarted);
 *   ENOTSUP    the decoder could not be verified to run under its seccomp
 *              filter, so it was given nothing to decode: logged once with
 *              the reason, and the helper is stopped (ESRCH from then on);
 *   EBADMSG    not TNEF, or broken (truncated, bad checksum, malformed,
 *              an item that could not be kept), possibly after callbacks
 *              for the files before the damage;
 *   EFBIG      a limit was exceeded (before any callback, except when the
 *              decoder lied about what it found);
 *   ETIMEDOUT  the decoder ran out of time (timeout_ms, or its CPU limit);
 *   ECHILD     the decoder died (killed by a signal: a crash) or ended
 *              without finishing;
 *   EIO        the decoder sent something malformed, or could not read
 *              in_fd;
 *   ENOMEM     the decoder ran out of memory (its limit or the system's);
 *   the callback's errno when it returned -1; anything else from creating
 *   or writing the temporary files (ENOSPC...) or from pipe(), or from the
 *   helper's fork() (EAGAIN...).
 * Files already passed to cb stay passed: on an error after some callbacks,
 * the caller decides what to do with them (a decoder that crashes half-way
 * is the usual case).  No descriptor and no process is left behind: the
 * helper has reaped the decoder when this returns.
 */
int mailoauth_tnef_unpack(int in_fd, const char *tmp_dir,
  const struct mailoauth_tnef_limits *lim, mailoauth_tnef_file_fn cb,
  void *arg, unsigned int *nfiles);

/* The parts below are what mailoauth_tnef_unpack() is made of; they are
 * exposed for tests and fuzzing.
 */

/* A file as the decoder finds it.  name: the bytes of the name, with a NUL
 * after them, or NULL; codepage: the Windows code page the name is in
 * (65001 for UTF-8), 0 when the stream does not say.  data/size: the
 * content, valid during the callback only.
 */
struct mailoauth_tnef_file {
  const char *name;
  size_t name_len;
  unsigned int codepage;
  const unsigned char *data;
  uint64_t size;
};

typedef int (*mailoauth_tnef_found_fn)(const struct mailoauth_tnef_file *f,
  void *arg);

/* The decoder itself, in this process (the child runs this; fuzzing calls
 * it directly, forking nothing): decodes the TNEF stream buf (len bytes)
 * and calls fn for every file, in order, but only once the whole stream
 * was decoded and found within the limits, so a stream over a limit makes
 * no call at all.  A damaged one yields the files read before the damage
 * (none when it is not TNEF), then -1 with EBADMSG.  Returns 0, or -1 with
 * errno EBADMSG, EFBIG, ENOMEM, or fn's errno.  libytnef prints diagnostics on stdout,
 * whatever it is told.
 */
int mailoauth_tnef_decode_mem(const unsigned char *buf, size_t len,
  const struct mailoauth_tnef_limits *lim, mailoauth_tnef_found_fn fn,
  void *arg, unsigned int *nfiles);

/* The parent's side of the pipe: a reader fed with the child's bytes in
 * chunks of any size, which writes each file into a temporary file in
 * tmp_dir and calls cb (as for mailoauth_tnef_unpack()).  Every length is
 * checked against lim before anything is read or written.
 */
struct mailoauth_tnef_reader;

struct mailoauth_tnef_reader *mailoauth_tnef_reader_new(const char *tmp_dir,
  const struct mailoauth_tnef_limits *lim, mailoauth_tnef_file_fn cb,
  void *arg);

/* Returns 0 to go on, or -1 with errno (EFBIG, EIO for malformed input,
 * the callback's or a temporary file's errno); the reader then refuses
 * further input with the same errno.
 */
int mailoauth_tnef_reader_feed(struct mailoauth_tnef_reader *r,
  const void *buf, size_t len);

/* After the last byte: 0 when the stream ended with the decoder's
 * successful end record, -1 with errno otherwise (the decoder's own error,
 * ECHILD for a stream cut short, or the reader's error).  *nfiles (may be
 * NULL) counts the callbacks made.
 */
int mailoauth_tnef_reader_finish(struct mailoauth_tnef_reader *r,
  unsigned int *nfiles);

/* Closes whatever the reader holds open. */
void mailoauth_tnef_reader_free(struct mailoauth_tnef_reader *r);

#endif /* MOD_MAILOAUTH_TNEF_H */
