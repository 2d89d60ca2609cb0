/*
 * mod_mailoauth - mail-to-folder ingestion tasks (the MailOAuthIngest
 * directive's work, in the worker)
 *
 * Each task polls one folder of one account's mailbox on its own schedule,
 * takes the wanted attachments of every new message and deposits them, as
 * the destination's owner, through the privileged deposit helper
 * (deposit.h).  Only then is the message flagged, moved or deleted.
 *
 * Nothing may be lost or duplicated across a kill -9, so each task keeps
 * two files under <statedir>/tasks:
 *
 *   NAME.json    {"uidvalidity": V, "next": U}: every message below U is
 *                done with (written atomically after a message's
 *                after-action);
 *   NAME.ledger  "V UID PART NAME" lines, fsync()ed after each deposit and
 *                before the after-action: a message taken up again after a
 *                crash skips the parts it lists.  Before each deposit a
 *                "? V UID PART TIME SIZE sha256=HEX NAME" line records the
 *                request (lines without the digest, from older versions,
 *                are still read), so that after a crash while the helper
 *                was writing, the helper itself, as the owner and through
 *                descriptors, looks for a file of that name family with
 *                that size and SHA-256, changed since TIME: found, it is
 *                recorded, not deposited again.  The worker could not look:
 *                the owner's directory may be closed to it (mode 0700).
 *                A probe that cannot answer keeps the message for a later
 *                run rather than risk a second copy.
 *
 * The supervisor restarts a dead worker only once the worker's helpers are
 * gone (it is their subreaper), so a helper finishing a file cannot race
 * the new worker's probe for it.  Crash points (crashpoint.h) prove all
 * this in a test build only.
 *
 * Messages are fetched into anonymous files in <statedir>/tmp and parsed
 * from there, by the parser process (mimeproc.h), which writes the parts
 * asked for into anonymous files beside them: nothing is held in memory, a
 * crash leaves nothing, and hostile mail is never parsed where the tokens
 * are.
 *
 * No ProFTPD headers.
 */

#ifndef MOD_MAILOAUTH_INGEST_H
#define MOD_MAILOAUTH_INGEST_H

#include "mailoauth/registry.h"
#include "mailoauth/route.h"

#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#define MAILOAUTH_INGEST_AFTER_SEEN     0
#define MAILOAUTH_INGEST_AFTER_DELETE   1
#define MAILOAUTH_INGEST_AFTER_MOVE     2
#define MAILOAUTH_INGEST_AFTER_LEAVE    3   /* failed= only */

/* Longest task name (it names files under <statedir>/tasks). */
#define MAILOAUTH_INGEST_NAME_MAX       64

/* Free space a deposit leaves on the destination's file system unless
 * min-free= says otherwise.
 */
#define MAILOAUTH_INGEST_DEFAULT_MIN_FREE  ((uint64_t) 100 * 1024 * 1024)

/* At most this many files= globs. */
#define MAILOAUTH_INGEST_MAX_GLOBS      32

/* At most this many MailOAuthIngestRoute rules per task. */
#define MAILOAUTH_INGEST_MAX_ROUTES     32

/* One task as configured.  Strings must outlive the task. */
/* inline=: which parts not marked attachment are taken (with a name). */
#define MAILOAUTH_INGEST_INLINE_AUTO  0 /* all but those the body shows */
#define MAILOAUTH_INGEST_INLINE_ON    1 /* all */
#define MAILOAUTH_INGEST_INLINE_OFF   2 /* none */

struct mailoauth_ingest_config {
  const char *name;
  const char *account;
  const char *folder;           /* UTF-8; "INBOX" by default */
  unsigned int every;           /* seconds between runs */
  const char *dir;              /* absolute destination directory */
  uid_t uid;                    /* owner of the deposited files, never 0 */
  gid_t gid;
  struct mailoauth_route filter; /* from=, to=, subject=: which messages
                                 * the task takes at all (dir unused) */
  const struct mailoauth_route *routes[MAILOAUTH_INGEST_MAX_ROUTES];
  unsigned int nroutes;         /* tried in order; none matching: dir */
  const char *files[MAILOAUTH_INGEST_MAX_GLOBS];  /* NULL-terminated */
  uint64_t max_size;            /* 0: no cap */
  uint64_t min_free;            /* bytes a deposit must leave free */
  int after;                    /* MAILOAUTH_INGEST_AFTER_SEEN/DELETE/MOVE */
  const char *after_folder;
  int failed;                   /* MAILOAUTH_INGEST_AFTER_LEAVE/MOVE */
  const char *failed_folder;
  const char *name_tmpl;        /* NULL: the sanitized attachment name */
  int inline_parts;             /* MAILOAUTH_INGEST_INLINE_* */
  int save_message;             /* eml=on: the message itself as NAME.eml */
  int metadata;                 /* metadata=on: NAME.json beside the files */
  int tnef;                     /* tnef=on: winmail.dat unpacked */
  int idle;                     /* idle=on: IMAP IDLE wakes the task */
  unsigned int idle_renew;      /* idle-renew=SECS (tests): re-IDLE */
};

/* Parses one key=value setting into cfg (strings point into value, which
 * must outlive cfg; list settings split it in place).  Returns 0, or -1
 * with a message saying what to write in errbuf.  "owner" is the caller's
 * (it needs the system).
 */
int mailoauth_ingest_parse_setting(struct mailoauth_ingest_config *cfg,
  const char *key, char *value, char *errbuf, size_t errlen);

/* Checks and normalizes (trailing slashes) a destination directory for
 * dir=: absolute, no "." or ".." components.  0, or -1 with errbuf.
 */
int mailoauth_ingest_check_dir(char *value, char *errbuf, size_t errlen);

/* Fills in the defaults. */
void mailoauth_ingest_config_init(struct mailoauth_ingest_config *cfg);

/* Whether a task name can name its state files. */
int mailoauth_ingest_valid_name(const char *name);

struct mailoauth_ingest;

/* state_dir: holds tasks/ and tmp/; deposit_sock: the worker's end of the
 * deposit helper's socket.  NULL with errno on failure.
 */
struct mailoauth_ingest *mailoauth_ingest_create(const char *state_dir,
  struct mailoauth_registry *reg, int deposit_sock);

/* Where messages are parsed: get(restart, arg) returns the socket of a
 * parser process (mimeproc.h), after replacing the one it gave last when
 * restart is set (that one broke), or -1.  Without it no message is
 * taken: mail is never parsed in the process that holds the tokens.
 */
void mailoauth_ingest_set_parser(struct mailoauth_ingest *ing,
  int (*get)(int restart, void *arg), void *arg);

/* cfg is copied (not its strings). */
int mailoauth_ingest_add(struct mailoauth_ingest *ing,
  const struct mailoauth_ingest_config *cfg);

/* Runs the tasks that are due; returns when next to call (0: never). */
time_t mailoauth_ingest_tick(struct mailoauth_ingest *ing, time_t now);

void mailoauth_ingest_destroy(struct mailoauth_ingest *ing);

/* Makes the task of that name due now (ENOENT: no such task). */
int mailoauth_ingest_run_now(struct mailoauth_ingest *ing, const char *name,
  time_t now);

/* Each task's schedule and counters as a JSON array (a new reference). */
struct json_t;
struct json_t *mailoauth_ingest_status(const struct mailoauth_ingest *ing,
  time_t now);

/* IMAP IDLE (idle=on, idle.c): one watcher connection per account
 * and folder makes its tasks due the moment mail arrives; polling at
 * every= stays as the fallback.
 */
struct pollfd;
struct mailoauth_ingest_idle;

/* NULL when no task wants IDLE (or out of memory). */
struct mailoauth_ingest_idle *mailoauth_ingest_idle_create(
  struct mailoauth_ingest *ing);
void mailoauth_ingest_idle_destroy(struct mailoauth_ingest_idle *idle);

/* Before poll(): (re)connects the watchers that are due to, puts their
 * sockets into pfds (at most max) and shortens *wait_ms to their next
 * timer.  Returns how many descriptors it added.
 */
unsigned int mailoauth_ingest_idle_fds(struct mailoauth_ingest_idle *idle,
  struct pollfd *pfds, unsigned int max, long long *wait_ms);

/* After poll(), with the same pfds: reads what the servers said and makes
 * the tasks with new mail due (after a short debounce, so that a burst of
 * mail is one run).  1 when a task was made due.
 */
int mailoauth_ingest_idle_ready(struct mailoauth_ingest_idle *idle,
  const struct pollfd *pfds, unsigned int n);

#endif /* MOD_MAILOAUTH_INGEST_H */
