/*
 * mailoauthd - the worker's helpers: deposit (root) and TNEF (User)
 */

#include "mailoauthd.h"
#include "mailoauth/crashpoint.h"
#include "mailoauth/deposit.h"
#include "mailoauth/tnef.h"
#include "tnef/tnefint.h"

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

static int helpers_id(const char *s, unsigned long *id) {
  char *end = NULL;

  errno = 0;
  *id = strtoul(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0') {
    return -1;
  }
  return 0;
}

/* Arguments: DIR UID GID, once per destination the helper may write to. */
/* The owner's supplementary groups, as login would give them: write access
 * to a deposit directory often comes through a secondary group.  Only for
 * a uid with a passwd entry; an owner given as bare UID:GID keeps just its
 * gid.  Group 0 is never taken (root's group is no owner's business), and
 * at most MAILOAUTH_DEPOSIT_MAX_GROUPS are.
 */
static void helpers_owner_groups(struct mailoauth_deposit_rule *rule) {
  gid_t found[MAILOAUTH_DEPOSIT_MAX_GROUPS], *kept;
  int nfound = MAILOAUTH_DEPOSIT_MAX_GROUPS, i;
  size_t n = 0;
  struct passwd *pw;

  rule->groups = NULL;
  rule->ngroups = 0;

  errno = 0;
  pw = getpwuid(rule->uid);
  if (pw == NULL || pw->pw_name == NULL) {
    return;
  }
  if (getgrouplist(pw->pw_name, rule->gid, found, &nfound) < 0) {
    /* More than fit: glibc filled the array; the rest are not held. */
    nfound = MAILOAUTH_DEPOSIT_MAX_GROUPS;
  }
  if (nfound <= 0) {
    return;
  }

  kept = calloc((size_t) nfound, sizeof(*kept));
  if (kept == NULL) {
    return;
  }
  for (i = 0; i < nfound && i < MAILOAUTH_DEPOSIT_MAX_GROUPS; i++) {
    if (found[i] != 0 && found[i] != (gid_t) -1) {
      kept[n++] = found[i];
    }
  }
  if (n == 0) {
    free(kept);
    return;
  }
  rule->groups = kept;
  rule->ngroups = n;
}

int mailoauthd_deposit_main(int argc, char **argv) {
  struct mailoauth_deposit_rule *rules;
  size_t n, i;

  if (argc % 3 != 0) {
    return 2;
  }

  n = (size_t) argc / 3;
  rules = calloc(n ? n : 1, sizeof(*rules));
  if (rules == NULL) {
    return 1;
  }
  for (i = 0; i < n; i++) {
    unsigned long uid, gid;

    if (argv[3 * i][0] != '/' ||
        helpers_id(argv[3 * i + 1], &uid) < 0 ||
        helpers_id(argv[3 * i + 2], &gid) < 0 ||
        uid == 0 || gid == 0) {
      return 2;
    }
    rules[i].dir = argv[3 * i];
    rules[i].uid = (uid_t) uid;
    rules[i].gid = (gid_t) gid;
    helpers_owner_groups(&rules[i]);
  }

#ifdef MAILOAUTH_CRASHPOINTS
  mailoauth_crashpoint_set(getenv(MAILOAUTH_CRASHPOINT_ENV), 1);
#endif

  /* A helper outliving its worker would be a root process serving no
   * one; EOF on the socket ends it too, this covers a stopped worker.
   */
  (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() == 1) {
    return 0;
  }

  return mailoauth_deposit_server_run(MAILOAUTHD_CONTROL_FD, rules, n) == 0 ?
    0 : 1;
}

static uid_t helpers_tnef_uid;
static gid_t helpers_tnef_gid;

static int helpers_tnef_init(void *arg) {
  (void) arg;
  return mailoauthd_drop_privs(helpers_tnef_uid, helpers_tnef_gid);
}

/* Arguments: UID GID to run as. */
int mailoauthd_tnef_main(int argc, char **argv) {
  unsigned long uid, gid;

  if (argc != 2 ||
      helpers_id(argv[0], &uid) < 0 ||
      helpers_id(argv[1], &gid) < 0) {
    return 2;
  }
  helpers_tnef_uid = (uid_t) uid;
  helpers_tnef_gid = (gid_t) gid;

  mailoauth_tnef_helper_main(MAILOAUTHD_CONTROL_FD, getppid(),
    helpers_tnef_init, NULL);
  return 1;
}
