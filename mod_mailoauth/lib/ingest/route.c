/*
 * mod_mailoauth - routing rules for mail-to-folder tasks
 *
 * This program is free software; you can redistribute it and/or modify
 * it under the terms of the GNU General Public License as published by
 * the Free Software Foundation; either version 2 of the License, or
 * (at your option) any later version.
 */

#include "mailoauth/route.h"
#include "mailoauth/authres.h"
#include "mailoauth/trace.h"

#include <fnmatch.h>
#include <string.h>
#include <strings.h>

static int route_glob(const char *pattern, const char *s, size_t n) {
  char buf[1024];

  /* fnmatch wants a NUL-terminated subject; addresses are far shorter. */
  if (n >= sizeof(buf)) {
    return 0;
  }
  memcpy(buf, s, n);
  buf[n] = '\0';
  return fnmatch(pattern, buf, FNM_CASEFOLD) == 0;
}

int mailoauth_route_addr_match(const char *pattern, const char *addr) {
  const char *at;

  if (pattern == NULL || addr == NULL) {
    return 0;
  }

  at = strrchr(addr, '@');

  if (pattern[0] == '+') {
    const char *plus;

    /* The tag is what follows the first '+' of the local part: Exchange
     * and Gmail deliver alice+invoices@ to alice and keep the address.
     */
    if (at == NULL) {
      return 0;
    }
    plus = memchr(addr, '+', (size_t) (at - addr));
    return plus != NULL &&
      route_glob(pattern + 1, plus + 1, (size_t) (at - plus - 1));
  }

  if (pattern[0] == '@' || strchr(pattern, '@') == NULL) {
    const char *dom = pattern[0] == '@' ? pattern + 1 : pattern;

    return at != NULL && route_glob(dom, at + 1, strlen(at + 1));
  }

  return route_glob(pattern, addr, strlen(addr));
}

int mailoauth_route_patterns(char *value, const char **list, const char *key,
    char *errbuf, size_t errlen) {
  char *p = value;
  size_t n = 0;

  for (;;) {
    char *comma = strchr(p, ',');

    if (comma != NULL) {
      *comma = '\0';
    }
    if (*p == '\0' || (p[0] == '+' && p[1] == '\0') ||
        (p[0] == '@' && p[1] == '\0')) {
      mailoauth_errf(errbuf, errlen, "%s= has an empty pattern: write e.g. "
        "%s=contoso.com, %s=bob@contoso.com%s", key, key, key,
        strcasecmp(key, "to") == 0 ? " or to=+invoices" : "");
      return -1;
    }
    if (n >= MAILOAUTH_ROUTE_MAX_PATTERNS) {
      mailoauth_errf(errbuf, errlen, "%s= takes at most %d patterns", key,
        MAILOAUTH_ROUTE_MAX_PATTERNS);
      return -1;
    }
    list[n++] = p;
    if (comma == NULL) {
      break;
    }
    p = comma + 1;
  }

  list[n] = NULL;
  return 0;
}

int mailoauth_route_parse_setting(struct mailoauth_route *r, const char *key,
    char *value, char *errbuf, size_t errlen) {
  if (strcasecmp(key, "from") == 0) {
    return mailoauth_route_patterns(value, r->from, "from", errbuf, errlen);
  }

  if (strcasecmp(key, "to") == 0) {
    return mailoauth_route_patterns(value, r->to, "to", errbuf, errlen);
  }

  if (strcasecmp(key, "subject") == 0) {
    if (*value == '\0') {
      mailoauth_errf(errbuf, errlen, "subject= is empty: write e.g. "
        "\"subject=Invoice *\" (quoted when it holds spaces)");
      return -1;
    }
    r->subject = value;
    return 0;
  }

  if (strcasecmp(key, "auth") == 0) {
    if (mailoauth_authres_methods(value, &r->auth) < 0) {
      mailoauth_errf(errbuf, errlen, "auth= '%s' is not a list of methods: "
        "write auth=dmarc (recommended), auth=dkim, auth=spf or e.g. "
        "auth=spf,dkim (every one listed must pass)", value);
      return -1;
    }
    return 0;
  }

  if (strcasecmp(key, "authserv-id") == 0) {
    if (*value == '\0' || strlen(value) > MAILOAUTH_AUTHRES_NAME_MAX ||
        strpbrk(value, " \t;()\"=") != NULL) {
      mailoauth_errf(errbuf, errlen, "authserv-id= takes the name the "
        "receiving mail server writes first in its Authentication-Results "
        "header, e.g. authserv-id=mx.example.com, or "
        "authserv-id=" MAILOAUTH_ROUTE_AUTHSERV_EXO " for Exchange Online");
      return -1;
    }
    r->authserv_id = value;
    return 0;
  }

  return 1;
}

int mailoauth_route_check(const struct mailoauth_route *r, char *errbuf,
    size_t errlen) {
  if (r->auth != 0 && r->authserv_id == NULL) {
    mailoauth_errf(errbuf, errlen, "auth= needs to know whose verdict to "
      "trust: add authserv-id=" MAILOAUTH_ROUTE_AUTHSERV_EXO " for an "
      "Exchange Online mailbox, or authserv-id=NAME with the name your "
      "receiving mail server writes first in its Authentication-Results "
      "header (e.g. authserv-id=mx.example.com)");
    return -1;
  }
  return 0;
}

static int route_any(const char *const *patterns, const char *addr) {
  size_t i;

  for (i = 0; patterns[i] != NULL; i++) {
    if (mailoauth_route_addr_match(patterns[i], addr)) {
      return 1;
    }
  }
  return 0;
}

int mailoauth_route_match(const struct mailoauth_route *r,
    const char *from_addr, const char *recipients, const char *subject,
    const char *auth_results) {
  if (r->from[0] != NULL && !route_any(r->from, from_addr ? from_addr : "")) {
    return 0;
  }

  if (r->to[0] != NULL) {
    const char *p = recipients ? recipients : "";
    int found = 0;

    while (!found && *p != '\0') {
      const char *comma = strchr(p, ',');
      size_t n = comma ? (size_t) (comma - p) : strlen(p);
      char addr[512];

      if (n < sizeof(addr)) {
        memcpy(addr, p, n);
        addr[n] = '\0';
        found = route_any(r->to, addr);
      }
      p += n + (comma ? 1 : 0);
    }
    if (!found) {
      return 0;
    }
  }

  if (r->subject != NULL &&
      fnmatch(r->subject, subject ? subject : "", FNM_CASEFOLD) != 0) {
    return 0;
  }

  if (r->auth != 0) {
    const char *id = r->authserv_id;

    /* Unset (a bug: the configuration check refuses it) trusts nothing. */
    if (id == NULL) {
      return 0;
    }
    if (strcasecmp(id, MAILOAUTH_ROUTE_AUTHSERV_EXO) == 0) {
      id = NULL;
    }
    if (!mailoauth_authres_verify(auth_results ? auth_results : "", id,
        r->auth, from_addr ? from_addr : "")) {
      return 0;
    }
  }

  return 1;
}
