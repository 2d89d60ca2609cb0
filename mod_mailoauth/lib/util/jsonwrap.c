/*
 * mod_mailoauth - jansson, safe to use inside proftpd
 */

#include "mailoauth/jsonwrap.h"

#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

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

json_t *mailoauth_json_text(const char *s) {
  static const char hex[] = "0123456789abcdef";
  json_t *v;
  char *copy, *o;
  size_t i;

  if (s == NULL) {
    return json_null();
  }

  v = json_string(s);
  if (v != NULL) {
    return v;
  }

  /* Not UTF-8 (a name a mail server sent): bytes above 0x7f as \xNN. */
  copy = malloc(strlen(s) * 4 + 1);
  if (copy == NULL) {
    return json_null();
  }
  for (i = 0, o = copy; s[i] != '\0'; i++) {
    unsigned char c = (unsigned char) s[i];

    if (c >= 0x80) {
      *o++ = '\\';
      *o++ = 'x';
      *o++ = hex[c >> 4];
      *o++ = hex[c & 0x0f];
    } else {
      *o++ = (char) c;
    }
  }
  *o = '\0';
  v = json_string(copy);
  free(copy);
  return v != NULL ? v : json_null();
}
