/*
 * mod_mailoauth - starting a role program by fork+exec
 *
 * Every process that talks to the network, parses mail or keeps root for
 * the deposits is a fresh image of the mailoauthd program: a plain fork
 * would carry the daemon's whole memory (other modules' passwords, cached
 * key passphrases) and its descriptors.  The child gets exactly the
 * descriptors it is given, as 3, 4, 5 ... in order, with 0, 1 and 2 on
 * /dev/null; nothing else survives the exec.
 *
 * No ProFTPD headers.
 */

#ifndef MOD_MAILOAUTH_SPAWN_H
#define MOD_MAILOAUTH_SPAWN_H

#include <sys/types.h>

/* The first descriptor a spawned program receives. */
#define MAILOAUTH_SPAWN_FD0     3

/* At most this many descriptors are handed over. */
#define MAILOAUTH_SPAWN_MAX_FDS 8

/* Forks and execs path with argv (argv[0] is the process title) and envp
 * (NULL: an empty environment).  fds[i] (-1: /dev/null in its place)
 * becomes descriptor MAILOAUTH_SPAWN_FD0 + i in the child.  Returns the
 * child's pid, or -1 with errno (the exec's failure shows as the child's
 * exit status 127).
 */
pid_t mailoauth_spawn(const char *path, char *const argv[],
  char *const envp[], const int *fds, int nfds);

/* The child's half of mailoauth_spawn(), for a caller that has forked
 * already: never returns (exit status 127 when the exec fails).
 */
void mailoauth_spawn_exec(const char *path, char *const argv[],
  char *const envp[], const int *fds, int nfds)
#ifdef __GNUC__
  __attribute__((noreturn))
#endif
  ;

/* Closes every descriptor from lowfd up. */
void mailoauth_spawn_close_from(int lowfd);

/* Moves *fd above 2 (close-on-exec), so that it never sits where stdio
 * is expected.  0, or -1 with errno.
 */
int mailoauth_spawn_fd_above_stdio(int *fd);

/* Why a process is being stopped: the value its SIGTERM carries
 * (sigqueue), passed down from the master to the worker, so that the
 * worker's last line can say.  0: a plain SIGTERM, reason unknown.
 */
#define MAILOAUTH_STOP_RESTART      1   /* the server is restarting */
#define MAILOAUTH_STOP_SHUTDOWN     2   /* the server is shutting down */
#define MAILOAUTH_STOP_EXIT         3   /* the server is stopping */
#define MAILOAUTH_STOP_MASTER_GONE  4   /* the supervisor lost the master */

/* "the server is restarting" etc.; NULL for 0 or an unknown value. */
const char *mailoauth_stop_reason(int code);

/* Sends pid SIGTERM carrying code.  0, or -1 with errno. */
int mailoauth_stop_signal(pid_t pid, int code);

#endif /* MOD_MAILOAUTH_SPAWN_H */
