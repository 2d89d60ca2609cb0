/*
 * mod_mailoauth - crash points for the crash tests (never in a product)
 *
 * MAILOAUTH_CRASHPOINT("name") marks a step after which a kill -9 must
 * neither lose nor duplicate anything.  In the normal build it is nothing
 * at all.  Only a program compiled with -DMAILOAUTH_CRASHPOINTS (make's
 * build/mailoauthd-crashtest, never installed) acts on it: the worker reads
 * "NAME N" from <statedir>/crashpoint as it starts (and removes the file,
 * so that the next worker runs through), and the Nth time it passes NAME
 * it kills itself with SIGKILL.  The deposit helper gets the same setting
 * from the worker and, at its own points, kills the worker and then itself,
 * as a kill of the whole process tree at that instant would.
 *
 * No ProFTPD headers.
 */

#ifndef MOD_MAILOAUTH_CRASHPOINT_H
#define MOD_MAILOAUTH_CRASHPOINT_H

#ifdef MAILOAUTH_CRASHPOINTS

/* The file under the state directory that names the point. */
#define MAILOAUTH_CRASHPOINT_FILE       "crashpoint"

/* The deposit helper's environment variable carrying the setting. */
#define MAILOAUTH_CRASHPOINT_ENV        "MAILOAUTH_CRASHPOINT"

/* spec: "NAME N" (N >= 1; "NAME" alone: 1); NULL or "" disarms.
 * kill_parent: kill the parent process too when the point is reached.
 */
void mailoauth_crashpoint_set(const char *spec, int kill_parent);

/* Reads and removes <state_dir>/crashpoint; arms it when present. */
void mailoauth_crashpoint_load(const char *state_dir);

/* The armed setting ("NAME N"), or NULL. */
const char *mailoauth_crashpoint_spec(void);

void mailoauth_crashpoint_hit(const char *name);

# define MAILOAUTH_CRASHPOINT(name)     mailoauth_crashpoint_hit(name)

#else
# define MAILOAUTH_CRASHPOINT(name)     do { } while (0)
#endif /* MAILOAUTH_CRASHPOINTS */

#endif /* MOD_MAILOAUTH_CRASHPOINT_H */
