/*
 * mod_mailoauth - letting other work through during one long step
 *
 * The worker is one event loop.  Some steps of it take long: fetching,
 * parsing or depositing a message of a gigabyte.  Upload notifications
 * must not wait for them, so the code that waits inside such a step (for
 * the server's next bytes, the parser's next answer, the deposit helper's
 * reply) calls mailoauth_yield() at least every few hundred milliseconds,
 * and the worker's hook, registered once, runs what may run meanwhile
 * (a spool pass and the notification queue, never another ingestion).
 *
 * The hook runs at most every MAILOAUTH_YIELD_INTERVAL_MS and never
 * inside itself.  Without a hook (unit tests, the sign-in tool) the call
 * does nothing.  No ProFTPD headers.
 */

#ifndef MOD_MAILOAUTH_YIELD_H
#define MOD_MAILOAUTH_YIELD_H

/* Notifications wait at most about this long for a long step. */
#define MAILOAUTH_YIELD_INTERVAL_MS     200

/* A poll() inside a long step waits at most this long at a time. */
#define MAILOAUTH_YIELD_SLICE_MS        100

typedef void (*mailoauth_yield_fn)(void *arg);

/* NULL removes the hook. */
void mailoauth_yield_set(mailoauth_yield_fn fn, void *arg);

void mailoauth_yield(void);

/* How long to poll now when the whole wait may last ms (-1: forever):
 * at most a slice when a hook is set, so that the caller yields between
 * slices.
 */
int mailoauth_yield_slice(long ms);

#endif /* MOD_MAILOAUTH_YIELD_H */
