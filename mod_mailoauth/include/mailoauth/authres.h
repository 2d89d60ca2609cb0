/*
 * mod_mailoauth - Authentication-Results (RFC 8601) verdicts for routes
 *
 * From:, To: and Subject: are written by whoever sends the message; a
 * route that sorts by them cannot tell a partner from someone using the
 * partner's address.  What the receiving mail system found out about the
 * sender (SPF, DKIM, DMARC) is in the Authentication-Results header it
 * puts on top of the message.  The sender can add headers of that name
 * too, so only those of the receiving system count:
 *
 *  - by authserv-id: the top-most run of Authentication-Results headers
 *    whose authserv-id is the configured one (RFC 8601 section 5: the
 *    receiving system removes headers carrying its own id from incoming
 *    mail, and whatever it adds lies above everything the sender wrote);
 *  - Exchange Online writes its header without an authserv-id
 *    ("spf=pass (sender IP is ...) smtp.mailfrom=contoso.com; ..."): only
 *    the top-most Authentication-Results header counts, and only when it
 *    has no authserv-id.
 *
 * A method holds when the top-most trusted header that reports it has a
 * "pass" for a domain of the From: address: dmarc's header.from equal to
 * it, spf's smtp.mailfrom and dkim's header.d (else header.i) equal to it
 * or a parent or child domain of it.  Anything unparseable counts as not
 * passed.
 *
 * No ProFTPD headers.
 */

#ifndef MOD_MAILOAUTH_AUTHRES_H
#define MOD_MAILOAUTH_AUTHRES_H

#include <stddef.h>

#define MAILOAUTH_AUTHRES_SPF           0x1
#define MAILOAUTH_AUTHRES_DKIM          0x2
#define MAILOAUTH_AUTHRES_DMARC         0x4

/* Results of these methods kept per header; more make the header count as
 * not passed.
 */
#define MAILOAUTH_AUTHRES_MAX_RESULTS   16

/* Longest authserv-id or domain kept; longer ones are never matched. */
#define MAILOAUTH_AUTHRES_NAME_MAX      255

struct mailoauth_authres_result {
  unsigned int method;          /* MAILOAUTH_AUTHRES_* */
  int pass;                     /* the result is "pass" */
  char domain[MAILOAUTH_AUTHRES_NAME_MAX + 1];  /* lowercased; see above */
};

/* One header, parsed.  Other methods (compauth, arc, auth...) are not
 * kept.
 */
struct mailoauth_authres {
  int has_id;                   /* starts with an authserv-id */
  char authserv_id[MAILOAUTH_AUTHRES_NAME_MAX + 1];
  int overflow;                 /* too many results, or a value too long */
  size_t nresults;
  struct mailoauth_authres_result results[MAILOAUTH_AUTHRES_MAX_RESULTS];
};

/* Parses one header value (unfolded or not; comments, quoted strings and
 * malformed results are dealt with).  Never fails: what cannot be read is
 * left out.
 */
void mailoauth_authres_parse(const char *value, size_t len,
  struct mailoauth_authres *ar);

/* "dmarc", "spf,dkim": a MAILOAUTH_AUTHRES_* mask; -1 for an empty list or
 * an unknown method.
 */
int mailoauth_authres_methods(const char *list, unsigned int *methods);

/* Whether every method in methods passed for from_addr's domain.  headers:
 * the message's Authentication-Results values, top-most first, each
 * ending in '\n'.  authserv_id: the trusted one; NULL: the top-most header
 * if it has no authserv-id (Exchange Online).
 */
int mailoauth_authres_verify(const char *headers, const char *authserv_id,
  unsigned int methods, const char *from_addr);

#endif /* MOD_MAILOAUTH_AUTHRES_H */
