/*
 * mod_mailoauth - sending one message through Microsoft Graph sendMail
 *
 * For tenants where SMTP AUTH is switched off (Security defaults, "block
 * legacy authentication"): POST /v1.0/users/{mailbox}/sendMail with the
 * same MIME message the SMTP path sends, base64-encoded, as text/plain.
 * Graph takes the recipients from the To/Cc/Bcc headers and removes Bcc
 * itself, and keeps a copy in the mailbox's Sent Items.  A request may
 * carry at most 4 MB (MAILOAUTH_GRAPH_MAX_REQUEST); larger ones go through
 * a draft and an attachment upload session.
 *
 * Outcomes use the SMTP sender's classification, so the queue treats both
 * transports alike.  Throttling (429, 503) carries the server's
 * Retry-After.
 *
 * No ProFTPD headers.
 */

#ifndef MOD_MAILOAUTH_GRAPH_H
#define MOD_MAILOAUTH_GRAPH_H

#include "mailoauth/message.h"
#include "mailoauth/smtp.h"

#include <stddef.h>
#include <sys/types.h>

/* Graph refuses requests larger than this (the base64 MIME body).  A
 * larger message goes as a draft without its file, the file through an
 * upload session in pieces of MAILOAUTH_GRAPH_UPLOAD_CHUNK (at most 4 MB,
 * a multiple of 320 KiB), then send; up to MAILOAUTH_GRAPH_MAX_ATTACHMENT.
 */
#define MAILOAUTH_GRAPH_MAX_REQUEST     (4L * 1024L * 1024L)
#define MAILOAUTH_GRAPH_UPLOAD_CHUNK    (12L * 320L * 1024L)
#define MAILOAUTH_GRAPH_MAX_ATTACHMENT  ((off_t) 150 * 1024 * 1024)

struct mailoauth_graph;

/* base_url: "https://graph.microsoft.com" (or a national cloud's, or a
 * test stand-in's); mailbox: the sending mailbox (user principal name).
 */
struct mailoauth_graph *mailoauth_graph_create(const char *base_url,
  const char *mailbox, const char *ca_file);
void mailoauth_graph_destroy(struct mailoauth_graph *g);

/* Sends msg with a Graph-audience access token.  reply gets Graph's error
 * code and message (never the token).  *retry_after_s gets the server's
 * Retry-After in seconds for throttling answers, else 0.
 */
mailoauth_smtp_status_t mailoauth_graph_send(struct mailoauth_graph *g,
  const char *token, struct mailoauth_message *msg, char *reply,
  size_t replylen, long *retry_after_s);

/* The next send opens a new connection (after a refused token). */
void mailoauth_graph_reconnect(struct mailoauth_graph *g);

/* The HTTP status of the last answer (0: none). */
long mailoauth_graph_last_status(const struct mailoauth_graph *g);

/* How many connections were opened so far (for benchmarks). */
unsigned long mailoauth_graph_connections(const struct mailoauth_graph *g);

/* Classifies a Graph answer: HTTP status and the error.code of its body
 * (NULL when none).  Exposed for unit tests.
 */
mailoauth_smtp_status_t mailoauth_graph_classify(long http_status,
  const char *code);

#endif /* MOD_MAILOAUTH_GRAPH_H */
