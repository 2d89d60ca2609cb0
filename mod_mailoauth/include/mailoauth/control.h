/*
 * mod_mailoauth - requests from ftpdctl to the worker, and its status file
 *
 * The master never waits for the worker: `ftpdctl mailoauth run|retry`
 * become one imsg (imsg.h) on the supervisor's control socket, which the
 * supervisor passes on to the worker's; `ftpdctl mailoauth status` reads
 * the status file the worker keeps in the state directory (at most one
 * write a second, temp file and rename), whose document is also
 * `ftpmailoauth status --json` and the source of the metrics (metrics.h):
 *
 *   {"version": 1, "pid": N, "started": T, "written": T,
 *    "accounts": [{"name", "grant", "state", "access_expires",
 *                  "next_refresh", "refresh_token_lapses", "refreshes",
 *                  "refresh_failures", "last_error": {"class", "message",
 *                  "at"} | null}, ...],
 *    "notifications": {"sent", "failed", "dead_lettered", "queued",
 *                      "dead_letters", "oldest_queued"},
 *    "tasks": [{"name", "account", "every", "last_run", "next_run",
 *               "last_success", "last_error", "errors", "messages",
 *               "bytes"}, ...]}
 *
 * Times are seconds since the epoch (null: none); counters count since the
 * worker started.
 *
 * No ProFTPD headers.
 */

#ifndef MOD_MAILOAUTH_CONTROL_H
#define MOD_MAILOAUTH_CONTROL_H

/* imsg types (the configuration handoff uses 1 and 2). */
#define MAILOAUTH_CTL_RUN_TASK  16      /* payload: the task's name */
#define MAILOAUTH_CTL_RETRY     17      /* no payload */

/* In the state directory. */
#define MAILOAUTH_STATUS_FILE   "status.json"

/* Larger is not a status file of ours. */
#define MAILOAUTH_STATUS_MAX    (1024 * 1024)

#endif /* MOD_MAILOAUTH_CONTROL_H */
