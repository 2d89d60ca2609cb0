/*
 * mod_mailoauth - jansson, safe to use inside proftpd
 */

#include "mailoauth/jsonwrap.h"

#include <dlfcn.h>

typedef void (*mailoauth_json_delete_fn)(json_t *);

void mailoauth_json_delete(json_t *json) {
  static mailoauth_json_delete_fn real = NULL;

  /* RTLD_NEXT skips the proftpd executable (and this module), whose
   * json_delete() is ProFTPD's, and finds libjansson's.
   */
  if (real == NULL) {
    void *sym = dlsym(RTLD_NEXT, "json_delete");

    if (sym == NULL) {
      /* Leaking is better than freeing with the wrong allocator. */
      return;
    }

    *(void **) &real = sym;
  }

  real(json);
}
