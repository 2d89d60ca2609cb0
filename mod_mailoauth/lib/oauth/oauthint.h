/*
 * mod_mailoauth - what oauth.c (requests) and oautherr.c (meaning of the
 * answers) share, beyond oauth.h
 */

#ifndef MOD_MAILOAUTH_OAUTHINT_H
#define MOD_MAILOAUTH_OAUTHINT_H

#include "mailoauth/oauth.h"

/* errno for a failed request: EAGAIN when waiting helps, EPROTO when the
 * server said no.
 */
int mailoauth_oauth_class_errno(mailoauth_oauth_class_t c);

#endif /* MOD_MAILOAUTH_OAUTHINT_H */
