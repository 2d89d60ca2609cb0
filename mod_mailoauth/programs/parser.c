/*
 * mailoauthd - the parser: MIME parsing of fetched mail, holding no token
 *
 * Started by the worker before it reads any secret (and again, as User,
 * after a parser died), as a fresh exec with an empty environment and
 * only its socket to the worker as descriptor 3.  It reads the messages
 * and writes the decoded parts through the descriptors the worker hands
 * it (mimeproc.h), as User and Group, and ends with its socket's EOF.
 */

#include "mailoauthd.h"
#include "mailoauth/mimeproc.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <unistd.h>

static int parser_id(const char *s, unsigned long *id) {
  char *end = NULL;

  errno = 0;
  *id = strtoul(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0') {
    return -1;
  }
  return 0;
}

/* Arguments: UID GID to run as. */
int mailoauthd_parser_main(int argc, char **argv) {
  unsigned long uid, gid;

  if (argc != 2 ||
      parser_id(argv[0], &uid) < 0 ||
      parser_id(argv[1], &gid) < 0 ||
      uid == 0 || gid == 0) {
    return 2;
  }

  (void) signal(SIGPIPE, SIG_IGN);
  if (mailoauthd_drop_privs((uid_t) uid, (gid_t) gid) < 0) {
    return 1;
  }

  /* After the identity change, which clears the death signal. */
  (void) prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
  (void) prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
  (void) prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
  (void) prctl(PR_SET_NAME, "mailoauth parse", 0, 0, 0);
  if (getppid() == 1) {
    return 0;
  }
  if (chdir("/") < 0) {
    return 1;
  }

  return mailoauth_mimeproc_serve(MAILOAUTHD_CONTROL_FD, NULL) == 0 ? 0 : 1;
}
