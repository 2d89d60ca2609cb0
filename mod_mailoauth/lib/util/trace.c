/*
 * mod_mailoauth - logging and tracing hooks for the ProFTPD-independent units
 */

#include "mailoauth/trace.h"

#include <stddef.h>
#include <stdio.h>

static mailoauth_trace_fn mailoauth_trace_sink = NULL;
static mailoauth_log_fn mailoauth_log_sink = NULL;

void mailoauth_log_set_sink(mailoauth_log_fn fn) {
  mailoauth_log_sink = fn;
}

void mailoauth_log(const char *fmt, ...) {
  va_list ap;

  if (mailoauth_log_sink == NULL) {
    return;
  }

  va_start(ap, fmt);
  mailoauth_log_sink(fmt, ap);
  va_end(ap);
}

void mailoauth_trace_set_sink(mailoauth_trace_fn fn) {
  mailoauth_trace_sink = fn;
}

void mailoauth_trace(const char *channel, int level, const char *fmt, ...) {
  va_list ap;

  if (mailoauth_trace_sink == NULL) {
    return;
  }

  va_start(ap, fmt);
  mailoauth_trace_sink(channel, level, fmt, ap);
  va_end(ap);
}

void mailoauth_errf(char *errbuf, size_t errlen, const char *fmt, ...) {
  va_list ap;

  if (errbuf == NULL ||
      errlen == 0) {
    return;
  }

  va_start(ap, fmt);
  vsnprintf(errbuf, errlen, fmt, ap);
  va_end(ap);
}
