/*
 * mod_mailoauth - letting other work through during one long step
 */

#include "mailoauth/yield.h"

#include <stddef.h>
#include <time.h>

static mailoauth_yield_fn yield_fn = NULL;
static void *yield_arg = NULL;
static int yield_busy = 0;
static long long yield_last_ms = 0;

static long long yield_now_ms(void) {
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void mailoauth_yield_set(mailoauth_yield_fn fn, void *arg) {
  yield_fn = fn;
  yield_arg = arg;
  yield_last_ms = yield_now_ms();
}

void mailoauth_yield(void) {
  long long now;

  if (yield_fn == NULL ||
      yield_busy) {
    return;
  }

  now = yield_now_ms();
  if (now - yield_last_ms < MAILOAUTH_YIELD_INTERVAL_MS) {
    return;
  }

  yield_busy = 1;
  yield_fn(yield_arg);
  yield_busy = 0;
  yield_last_ms = yield_now_ms();
}

int mailoauth_yield_slice(long ms) {
  if (yield_fn == NULL ||
      yield_busy) {
    return ms < 0 ? -1 : (int) ms;
  }
  if (ms < 0 || ms > MAILOAUTH_YIELD_SLICE_MS) {
    return MAILOAUTH_YIELD_SLICE_MS;
  }
  return (int) ms;
}
