/*
 * mod_mailoauth - the worker's status in the Prometheus text format
 *
 * Rendered from the status document (control.h) for node_exporter's
 * textfile collector (MailOAuthMetricsFile).  Counters count since the
 * worker started (Prometheus handles the reset); a gauge whose value is not
 * known (the lapse of an app-only account's refresh token, the last
 * success of a task that has not had one) is left out.
 *
 * No ProFTPD headers.
 */

#ifndef MOD_MAILOAUTH_METRICS_H
#define MOD_MAILOAUTH_METRICS_H

#include <time.h>

struct json_t;

/* The exposition text (malloc()ed, NUL-terminated), or NULL when out of
 * memory.  now: for ages and the time left before a lapse.
 */
char *mailoauth_metrics_render(struct json_t *status, time_t now);

#endif /* MOD_MAILOAUTH_METRICS_H */
