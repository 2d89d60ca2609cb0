/*
 * mod_mailoauth - the worker's status in the Prometheus text format
 */

#include "mailoauth/metrics.h"
#include "mailoauth/buf.h"
#include "mailoauth/jsonwrap.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A label value: backslash, double quote and line feed escaped, as the
 * format wants.
 */
static void metrics_label(struct mailoauth_buf *b, const char *s) {
  for (; *s != '\0'; s++) {
    if (*s == '\\' || *s == '"') {
      mailoauth_buf_addf(b, "\\%c", *s);
    } else if (*s == '\n') {
      mailoauth_buf_addf(b, "\\n");
    } else {
      mailoauth_buf_addf(b, "%c", *s);
    }
  }
}

static void metrics_head(struct mailoauth_buf *b, const char *name,
    const char *type, const char *help) {
  mailoauth_buf_addf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static long long metrics_int(json_t *obj, const char *key, int *known) {
  json_t *v = json_object_get(obj, key);

  if (known != NULL) {
    *known = json_is_integer(v);
  }
  return json_is_integer(v) ? (long long) json_integer_value(v) : 0;
}

/* One sample of a per-account or per-task family for each element of list
 * that has key (as a number); rel: the value is a time, shown as seconds
 * from now (its sign flipped when rel < 0).
 */
static void metrics_family(struct mailoauth_buf *b, json_t *list,
    const char *label, const char *name, const char *type, const char *help,
    const char *key, time_t now, int rel) {
  size_t i;
  json_t *item;
  int headed = 0;

  json_array_foreach(list, i, item) {
    const char *id = json_string_value(json_object_get(item, "name"));
    long long v;
    int known;

    v = metrics_int(item, key, &known);
    if (id == NULL || !known) {
      continue;
    }
    if (rel > 0) {
      v -= (long long) now;
    } else if (rel < 0) {
      v = (long long) now - v;
    }

    if (!headed) {
      metrics_head(b, name, type, help);
      headed = 1;
    }
    mailoauth_buf_addf(b, "%s{%s=\"", name, label);
    metrics_label(b, id);
    mailoauth_buf_addf(b, "\"} %lld\n", v);
  }
}

char *mailoauth_metrics_render(json_t *status, time_t now) {
  struct mailoauth_buf b;
  json_t *n, *accounts, *tasks, *item;
  long long oldest;
  size_t i;
  int known;

  mailoauth_buf_init(&b, 0);

  n = json_object_get(status, "notifications");
  accounts = json_object_get(status, "accounts");
  tasks = json_object_get(status, "tasks");

  metrics_head(&b, "mailoauth_notifications_sent_total", "counter",
    "Notification mails the SMTP server accepted.");
  mailoauth_buf_addf(&b, "mailoauth_notifications_sent_total %lld\n",
    metrics_int(n, "sent", NULL));
  metrics_head(&b, "mailoauth_notifications_failed_total", "counter",
    "Attempts to send a notification that failed and will be retried.");
  mailoauth_buf_addf(&b, "mailoauth_notifications_failed_total %lld\n",
    metrics_int(n, "failed", NULL));
  metrics_head(&b, "mailoauth_notifications_dead_lettered_total", "counter",
    "Notifications refused for good and moved to the dead-letter directory.");
  mailoauth_buf_addf(&b, "mailoauth_notifications_dead_lettered_total %lld\n",
    metrics_int(n, "dead_lettered", NULL));
  metrics_head(&b, "mailoauth_notifications_queued", "gauge",
    "Upload events waiting in the queue.");
  mailoauth_buf_addf(&b, "mailoauth_notifications_queued %lld\n",
    metrics_int(n, "queued", NULL));
  metrics_head(&b, "mailoauth_notifications_dead_letters", "gauge",
    "Events in the dead-letter directory.");
  mailoauth_buf_addf(&b, "mailoauth_notifications_dead_letters %lld\n",
    metrics_int(n, "dead_letters", NULL));
  oldest = metrics_int(n, "oldest_queued", &known);
  metrics_head(&b, "mailoauth_notifications_oldest_queued_age_seconds",
    "gauge", "Age of the oldest queued event (0: the queue is empty).");
  mailoauth_buf_addf(&b, "mailoauth_notifications_oldest_queued_age_seconds "
    "%lld\n", known && oldest <= (long long) now ?
    (long long) now - oldest : 0);

  metrics_family(&b, accounts, "account", "mailoauth_token_refreshes_total",
    "counter", "Successful access-token refreshes.", "refreshes", now, 0);
  metrics_family(&b, accounts, "account",
    "mailoauth_token_refresh_failures_total", "counter",
    "Failed access-token refreshes.", "refresh_failures", now, 0);
  metrics_family(&b, accounts, "account",
    "mailoauth_refresh_token_lapse_seconds", "gauge",
    "Seconds until the refresh token lapses unused (delegated accounts).",
    "refresh_token_lapses", now, 1);

  {
    int headed = 0;

    json_array_foreach(accounts, i, item) {
      const char *id = json_string_value(json_object_get(item, "name"));
      const char *state = json_string_value(json_object_get(item, "state"));

      if (id == NULL || state == NULL) {
        continue;
      }
      if (!headed) {
        metrics_head(&b, "mailoauth_account_ok", "gauge",
          "1 when the account can get tokens, 0 when it needs attention.");
        headed = 1;
      }
      mailoauth_buf_addf(&b, "mailoauth_account_ok{account=\"");
      metrics_label(&b, id);
      mailoauth_buf_addf(&b, "\"} %d\n", strcmp(state, "ok") == 0 ? 1 : 0);
    }
  }

  metrics_family(&b, tasks, "task", "mailoauth_ingest_messages_total",
    "counter", "Mail messages ingested.", "messages", now, 0);
  metrics_family(&b, tasks, "task", "mailoauth_ingest_bytes_total",
    "counter", "Bytes of mail ingested.", "bytes", now, 0);
  metrics_family(&b, tasks, "task", "mailoauth_ingest_errors_total",
    "counter", "Errors of an ingest task.", "errors", now, 0);
  metrics_family(&b, tasks, "task",
    "mailoauth_ingest_last_success_timestamp_seconds", "gauge",
    "When the task last completed a run.", "last_success", now, 0);
  metrics_family(&b, tasks, "task",
    "mailoauth_ingest_last_run_timestamp_seconds", "gauge",
    "When the task last started a run.", "last_run", now, 0);

  return mailoauth_buf_take(&b, NULL);
}
