/*
 * mod_mailoauth - jansson, safe to use inside proftpd
 *
 * ProFTPD exports a json_delete() of its own (its bundled ccan-json).
 * jansson's json_decref() is an inline function that calls json_delete()
 * by name, so in a proftpd process our calls would bind to ProFTPD's
 * function and corrupt memory.  Every unit includes this header instead of
 * <jansson.h>, which routes those calls to jansson's own json_delete().
 */

#ifndef MOD_MAILOAUTH_JSONWRAP_H
#define MOD_MAILOAUTH_JSONWRAP_H

#define json_delete mailoauth_json_delete
#include <jansson.h>
#undef json_delete

/* s as a JSON string, its non-UTF-8 bytes as \\xNN; null for NULL.  Never
 * NULL.
 */
json_t *mailoauth_json_text(const char *s);

#endif /* MOD_MAILOAUTH_JSONWRAP_H */
