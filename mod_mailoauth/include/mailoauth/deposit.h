/*
 * mod_mailoauth - putting a file into a user's directory, safely
 *
 * Pull tasks deposit attachments into directories that belong to FTP users.
 * Those users control the directories, so whoever writes there must never
 * do it with more rights than the user has, and must never let a symbolic
 * link chosen by the user redirect the write:
 *
 *   - the directory is reached component by component from "/" with
 *     openat(O_NOFOLLOW): a symbolic link anywhere in the path is refused;
 *   - everything is created as the owner (euid/egid/groups switched before
 *     anything is created, which also drops root's capabilities, so the
 *     owner's permissions, quota and the file system's reserved blocks are
 *     enforced by the kernel as for the owner's own writes);
 *   - the data goes into a hidden temporary file ".in.<name>.<hex>.mailoauth."
 *     (O_CREAT|O_EXCL|O_NOFOLLOW), is fsync()ed, then renamed into place
 *     with renameat2(RENAME_NOREPLACE) (or linkat() + unlinkat() where the
 *     file system lacks it): an existing file is never replaced, even by a
 *     racing writer; a taken name gets a " (n)" suffix (names.h);
 *   - the directory is fsync()ed before success is reported, so the caller
 *     may then flag, move or delete the mail.
 * A kill -9 at any moment leaves either no visible file or the complete
 * file; an orphaned temporary file is removed by a later cleanup request.
 *
 * The worker runs without root, so the writing is done by a small helper
 * process forked as root before the worker drops its privileges.  The
 * worker sends requests over a SOCK_SEQPACKET socketpair (the content as a
 * descriptor passed with SCM_RIGHTS); the helper only serves requests whose
 * directory and owner match one of the rules it was started with, so a
 * worker subverted by hostile mail cannot write as arbitrary users.
 *
 * The same code runs without the helper (mailoauth_deposit_file()) in a
 * process that is root or already the owner.  No ProFTPD headers.
 */

#ifndef MOD_MAILOAUTH_DEPOSIT_H
#define MOD_MAILOAUTH_DEPOSIT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

/* Longest relative name (template subdirectories included) in bytes. */
#define MAILOAUTH_DEPOSIT_NAME_MAX      1023

/* At most this many components in a relative name ("2024/05/x.pdf": 3). */
#define MAILOAUTH_DEPOSIT_MAX_DEPTH     16

/* At most this many supplementary groups for an owner. */
#define MAILOAUTH_DEPOSIT_MAX_GROUPS    64

/* Hidden temporary files: ".in." + name + "." + 16 hex digits + this. */
#define MAILOAUTH_DEPOSIT_TEMP_PREFIX   ".in."
#define MAILOAUTH_DEPOSIT_TEMP_SUFFIX   ".mailoauth."

struct mailoauth_deposit_request {
  /* Absolute path of an existing directory, free of symbolic links and
   * ".." components.
   */
  const char *dir;

  /* Deposit: the wanted name relative to dir, already sanitized (names.h).
   * '/' separates subdirectories made by a naming template; they are
   * created as the owner when missing.  Every component must be non-empty,
   * must not start with '.', and must hold no control characters.
   */
  const char *name;

  /* The owner: never 0.  groups/ngroups: supplementary groups held while
   * writing (none: gid only).  Through the helper, groups come from the
   * matching rule and these two fields are not sent.
   */
  uid_t uid;
  gid_t gid;
  const gid_t *groups;
  size_t ngroups;

  /* Deposit: permission bits of the new file (0400 at least, nothing
   * beyond 0777); subdirectories get the same bits plus search where read
   * is granted, and 0700 for the owner.
   */
  mode_t mode;

  /* Deposit: bytes that must remain free (for unprivileged users) after the
   * file is written; checked with statvfs() before writing.  0: no check
   * (for file systems whose statvfs() figures mean nothing).
   */
  uint64_t min_free;

  /* Cleanup: temporary files at least this old (seconds) are removed, in
   * dir and in subdirectories up to depth levels below it.
   */
  unsigned int max_age;
  unsigned int depth;
};

/* Where a request stopped. */
#define MAILOAUTH_DEPOSIT_STAGE_NONE     0
#define MAILOAUTH_DEPOSIT_STAGE_REQUEST  1  /* refused before any file access */
#define MAILOAUTH_DEPOSIT_STAGE_PATH     2  /* reaching the directory */
#define MAILOAUTH_DEPOSIT_STAGE_OWNER    3  /* taking the owner's identity */
#define MAILOAUTH_DEPOSIT_STAGE_SUBDIR   4  /* creating template subdirectories */
#define MAILOAUTH_DEPOSIT_STAGE_SPACE    5  /* free space below min_free */
#define MAILOAUTH_DEPOSIT_STAGE_CREATE   6  /* creating the temporary file */
#define MAILOAUTH_DEPOSIT_STAGE_CONTENT  7  /* reading the content descriptor */
#define MAILOAUTH_DEPOSIT_STAGE_WRITE    8  /* writing the temporary file */
#define MAILOAUTH_DEPOSIT_STAGE_SYNC     9  /* flushing the file */
#define MAILOAUTH_DEPOSIT_STAGE_RENAME   10 /* choosing the name, renaming */
#define MAILOAUTH_DEPOSIT_STAGE_DIRSYNC  11 /* flushing the directory */
#define MAILOAUTH_DEPOSIT_STAGE_CLEANUP  12 /* scanning for stale temp files */
#define MAILOAUTH_DEPOSIT_STAGE_HELPER   13 /* talking to the helper */
#define MAILOAUTH_DEPOSIT_STAGE_PROBE    14 /* looking for an earlier deposit */

struct mailoauth_deposit_result {
  int error;            /* 0, or the errno value of the failure */
  int stage;            /* MAILOAUTH_DEPOSIT_STAGE_*, where it failed */
  uint64_t size;        /* bytes deposited */
  unsigned int removed; /* cleanup: temporary files removed */

  /* The final name relative to dir (set once the file is visible, so also
   * when only the directory flush failed).
   */
  char name[MAILOAUTH_DEPOSIT_NAME_MAX + 1];
};

/* Deposits the regular file open as content_fd (read from offset 0 to its
 * current size; its file offset is not used or moved).  As root: walks to
 * dir as root, then becomes the owner for everything else.  As anyone else:
 * only for req->uid == geteuid().  Returns 0, or -1 with errno and res
 * filled in (res may be NULL).  Errors worth telling apart: ENOSPC (disk
 * full, or below min_free at STAGE_SPACE), EDQUOT (owner's quota), EACCES
 * or EPERM (owner may not write there), ELOOP (symbolic link in the path),
 * ENOENT/ENOTDIR (directory missing), EINVAL/EPERM at STAGE_REQUEST
 * (request refused).  On failure no file is left behind (subdirectories
 * it created may remain), except at STAGE_DIRSYNC: the complete file is
 * then visible as res->name but may not survive a crash, so the caller
 * keeps the mail, and a retry may leave a duplicate, never a loss.
 */
int mailoauth_deposit_file(const struct mailoauth_deposit_request *req,
  int content_fd, struct mailoauth_deposit_result *res);

/* What a deposit asked for before a crash must be, to count as done. */
#define MAILOAUTH_DEPOSIT_SHA256_LEN    32

struct mailoauth_deposit_ident {
  uint64_t size;
  time_t not_before;            /* asked for at this time (ctime bound) */
  int has_sha256;               /* 0: a ledger from before digests */
  unsigned char sha256[MAILOAUTH_DEPOSIT_SHA256_LEN];
};

/* After a crash between asking for a deposit of req->name and learning
 * the outcome: whether it happened.  Looks at the name's family ("x.pdf",
 * "x (1).pdf", ... up to the first free name, in the template
 * subdirectories, never creating any) through descriptors: the directory
 * reached as for a deposit, each candidate opened with O_NOFOLLOW as the
 * owner (so only what the owner could read is read), taken when it is a
 * regular file of the owner with that size, changed no earlier than
 * not_before (an older identical file is another message's), and, with
 * has_sha256, that SHA-256.  Returns 0 with res->name, or -1 with errno:
 * ENOENT when no file matches (deposit it), other errors as for a
 * deposit (then do not deposit: it may be a duplicate).
 */
int mailoauth_deposit_probe(const struct mailoauth_deposit_request *req,
  const struct mailoauth_deposit_ident *ident,
  struct mailoauth_deposit_result *res);

/* Removes our temporary files older than req->max_age seconds from req->dir
 * (and req->depth levels of subdirectories, symbolic links never
 * followed), as the owner; only regular files owned by req->uid whose
 * names match the temporary pattern exactly.  res->removed counts them.
 * Returns 0 or -1 with errno.
 */
int mailoauth_deposit_cleanup(const struct mailoauth_deposit_request *req,
  struct mailoauth_deposit_result *res);

/* Error classes for the caller's single log line and for deciding whether
 * the rest of a run into the same directory is pointless.
 */
#define MAILOAUTH_DEPOSIT_KIND_OK         0
#define MAILOAUTH_DEPOSIT_KIND_NOSPACE    1  /* disk full or below the floor */
#define MAILOAUTH_DEPOSIT_KIND_QUOTA      2  /* the owner's quota */
#define MAILOAUTH_DEPOSIT_KIND_PERMISSION 3  /* the owner may not write */
#define MAILOAUTH_DEPOSIT_KIND_UNSAFE     4  /* symbolic link in the path */
#define MAILOAUTH_DEPOSIT_KIND_MISSING    5  /* the directory does not exist */
#define MAILOAUTH_DEPOSIT_KIND_REFUSED    6  /* invalid or not allowed */
#define MAILOAUTH_DEPOSIT_KIND_HELPER     7  /* helper gone or not answering */
#define MAILOAUTH_DEPOSIT_KIND_OTHER      8  /* I/O errors and the rest */

int mailoauth_deposit_kind(const struct mailoauth_deposit_result *res);

/* One line for the operator, e.g. "disk full (No space left on device)
 * while writing the file".  Returns buf.
 */
const char *mailoauth_deposit_describe(const struct mailoauth_deposit_result *res,
  char *buf, size_t bufsz);

/* "write", "rename"... for trace lines. */
const char *mailoauth_deposit_stage_name(int stage);

/* ------------------------------------------------------------------------
 * The privileged helper and its client.
 */

/* What the helper may do: requests for dir or any directory beneath it,
 * with exactly this uid and gid, are served as that owner with these
 * supplementary groups.
 */
struct mailoauth_deposit_rule {
  const char *dir;
  uid_t uid;
  gid_t gid;
  const gid_t *groups;
  size_t ngroups;
};

/* A SOCK_SEQPACKET socketpair (close-on-exec): sv[0] for the worker,
 * sv[1] for the helper.  Each process must close the other's end, or the
 * helper never sees the worker go away.
 */
int mailoauth_deposit_socketpair(int sv[2]);

/* The helper's loop, run as root in a process forked before the worker
 * drops root.  Resets signal handling (TERM, INT, HUP, QUIT: default;
 * PIPE, XFSZ: ignored; nothing blocked), sets umask 077, no_new_privs,
 * and keeps only the capabilities it uses (SETUID, SETGID,
 * DAC_READ_SEARCH).  Serves requests one at a time, each matched against
 * rules (nrules 0: every request refused).  Returns 0 when the worker
 * closes its end, -1 with errno on a socket error; the caller then exits.
 * Other inherited descriptors are the caller's to close beforehand.
 */
int mailoauth_deposit_server_run(int sock,
  const struct mailoauth_deposit_rule *rules, size_t nrules);

/* Client side, in the worker.  Request kinds: */
#define MAILOAUTH_DEPOSIT_OP_FILE       1
#define MAILOAUTH_DEPOSIT_OP_CLEANUP    2
#define MAILOAUTH_DEPOSIT_OP_PROBE      3

/* Sends one request (content_fd: the content for OP_FILE, -1 for
 * OP_CLEANUP; the caller keeps its descriptor; OP_PROBE goes through
 * mailoauth_deposit_client_probe(), which carries the identity).  *id identifies the reply.
 * Returns 0 or -1 with errno.
 */
int mailoauth_deposit_client_send(int sock, int op,
  const struct mailoauth_deposit_request *req, int content_fd, uint32_t *id);

/* Waits up to timeout_ms (-1: no limit, 0: just look) for the reply to id;
 * replies to earlier, abandoned requests are skipped.  Returns 0 when the
 * request succeeded, -1 with errno otherwise: the helper's error with res
 * filled in, or a transport error (EAGAIN/ETIMEDOUT: no reply yet,
 * ECONNRESET: helper gone, EBADMSG: garbled reply) with res->stage
 * STAGE_HELPER.
 */
int mailoauth_deposit_client_recv(int sock, uint32_t id, int timeout_ms,
  struct mailoauth_deposit_result *res);

/* send + recv for a deposit or a cleanup. */
int mailoauth_deposit_client_file(int sock,
  const struct mailoauth_deposit_request *req, int content_fd,
  int timeout_ms, struct mailoauth_deposit_result *res);

int mailoauth_deposit_client_cleanup(int sock,
  const struct mailoauth_deposit_request *req, int timeout_ms,
  struct mailoauth_deposit_result *res);

/* mailoauth_deposit_probe() in the helper: 0 found (res->name), -1 with
 * errno (ENOENT: not there).
 */
int mailoauth_deposit_client_probe(int sock,
  const struct mailoauth_deposit_request *req,
  const struct mailoauth_deposit_ident *ident, int timeout_ms,
  struct mailoauth_deposit_result *res);

/* Skips renameat2() and uses linkat() + unlinkat() (tests; file systems
 * that accept RENAME_NOREPLACE but mishandle it).
 */
void mailoauth_deposit_force_link_fallback(int on);

#endif /* MOD_MAILOAUTH_DEPOSIT_H */
