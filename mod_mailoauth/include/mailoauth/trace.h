/*
 * mod_mailoauth - logging and tracing hooks for the ProFTPD-independent units
 *
 * The core units (oauth, tokenstore, smtp, imap, mime, ...) are built and
 * tested without ProFTPD, so they cannot call pr_trace_msg() directly.  They
 * call mailoauth_trace(), which the module glue points at ProFTPD's trace API
 * and the unit tests point at a recorder (used to prove that no secret ever
 * reaches a trace line).
 */

#ifndef MOD_MAILOAUTH_TRACE_H
#define MOD_MAILOAUTH_TRACE_H

#include <stdarg.h>
#include <stddef.h>

typedef void (*mailoauth_trace_fn)(const char *channel, int level,
  const char *fmt, va_list ap);

/* Operator-facing lines for the MailOAuthLog (one line per event). */
typedef void (*mailoauth_log_fn)(const char *fmt, va_list ap);

void mailoauth_log_set_sink(mailoauth_log_fn fn);

void mailoauth_log(const char *fmt, ...)
#ifdef __GNUC__
  __attribute__((format(printf, 1, 2)))
#endif
  ;

/* Install the sink; NULL discards trace messages (the default). */
void mailoauth_trace_set_sink(mailoauth_trace_fn fn);

void mailoauth_trace(const char *channel, int level, const char *fmt, ...)
#ifdef __GNUC__
  __attribute__((format(printf, 3, 4)))
#endif
  ;

/* Formats an error message into a caller's buffer (which may be NULL or
 * empty: then nothing is written).  Every unit reports errors this way.
 */
void mailoauth_errf(char *errbuf, size_t errlen, const char *fmt, ...)
#ifdef __GNUC__
  __attribute__((format(printf, 3, 4)))
#endif
  ;

#endif /* MOD_MAILOAUTH_TRACE_H */
