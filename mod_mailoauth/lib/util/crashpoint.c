/*
 * mod_mailoauth - crash points for the crash tests (crashpoint.h); empty
 * unless compiled with -DMAILOAUTH_CRASHPOINTS
 */

#include "mailoauth/crashpoint.h"

#ifdef MAILOAUTH_CRASHPOINTS

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char crashpoint_name[64];
static unsigned long crashpoint_at, crashpoint_seen;
static int crashpoint_kill_parent;
static char crashpoint_spec_buf[96];

void mailoauth_crashpoint_set(const char *spec, int kill_parent) {
  char name[64];
  unsigned long n = 1;

  crashpoint_name[0] = '\0';
  crashpoint_seen = 0;
  crashpoint_kill_parent = kill_parent;
  if (spec == NULL ||
      sscanf(spec, "%63s %lu", name, &n) < 1 ||
      n == 0) {
    return;
  }
  snprintf(crashpoint_name, sizeof(crashpoint_name), "%s", name);
  crashpoint_at = n;
  snprintf(crashpoint_spec_buf, sizeof(crashpoint_spec_buf), "%s %lu", name,
    n);
}

void mailoauth_crashpoint_load(const char *state_dir) {
  char path[4096], line[96];
  FILE *fp;

  snprintf(path, sizeof(path), "%s/%s", state_dir, MAILOAUTH_CRASHPOINT_FILE);
  fp = fopen(path, "re");
  if (fp == NULL) {
    return;
  }
  if (fgets(line, sizeof(line), fp) != NULL) {
    mailoauth_crashpoint_set(line, 0);
  }
  fclose(fp);
  (void) unlink(path);
}

const char *mailoauth_crashpoint_spec(void) {
  return crashpoint_name[0] ? crashpoint_spec_buf : NULL;
}

void mailoauth_crashpoint_hit(const char *name) {
  if (crashpoint_name[0] == '\0' ||
      strcmp(name, crashpoint_name) != 0 ||
      ++crashpoint_seen != crashpoint_at) {
    return;
  }

  if (crashpoint_kill_parent) {
    /* The helper may be acting as an owner: back to euid 0 (its saved
     * uid) for the capability to signal the worker.
     */
    if (seteuid(0) < 0) {
      /* kill() says whether it matters */
    }
    (void) kill(getppid(), SIGKILL);
  }
  (void) raise(SIGKILL);
}

#else
/* ISO C wants something in a translation unit. */
typedef int mailoauth_crashpoint_unused;
#endif /* MAILOAUTH_CRASHPOINTS */
