/*
 * ftpmailoauth - the local web server that receives the browser sign-in
 *
 * After signing in, the identity provider sends the browser to the
 * registered redirect URI (by default
 * http://localhost:9090/register_microsoft_graph_api/) with the
 * authorization code in the query.  This listener binds that host and
 * port, answers 404 to every other path, and hands the callback's query to
 * the caller, who answers it with a page once the code is redeemed.
 */

#ifndef FTPMAILOAUTH_LISTENER_H
#define FTPMAILOAUTH_LISTENER_H

#include <stddef.h>
#include <time.h>

struct ftpmailoauth_listener;

/* Binds the redirect URI's host and port: "localhost" means 127.0.0.1 and
 * ::1 (when the host has IPv6); a name resolves to its addresses.  Only
 * http:// redirect URIs can be served.
 */
struct ftpmailoauth_listener *ftpmailoauth_listener_open(
  const char *redirect_uri, char *errbuf, size_t errlen);

/* Where it listens, e.g. "127.0.0.1:9090, [::1]:9090". */
const char *ftpmailoauth_listener_where(
  const struct ftpmailoauth_listener *l);

/* Serves requests until one for the callback path arrives or deadline
 * passes: 0 with the request's query string (malloc'd, may be "") in
 * *query; -1 with errno ETIMEDOUT, or another error in errbuf.  The
 * request waits for ftpmailoauth_listener_reply().
 */
int ftpmailoauth_listener_wait(struct ftpmailoauth_listener *l,
  time_t deadline, char **query, char *errbuf, size_t errlen);

/* Answers the waiting callback request with an HTML page. */
int ftpmailoauth_listener_reply(struct ftpmailoauth_listener *l, int status,
  const char *html);

/* The port, e.g. "9090". */
const char *ftpmailoauth_listener_port(
  const struct ftpmailoauth_listener *l);

void ftpmailoauth_listener_close(struct ftpmailoauth_listener *l);

#endif /* FTPMAILOAUTH_LISTENER_H */
