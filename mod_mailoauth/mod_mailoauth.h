/*
 * ProFTPD - mod_mailoauth
 *
 * This program is free software; you can redistribute it and/or modify
 * it under the terms of the GNU General Public License as published by
 * the Free Software Foundation; either version 2 of the License, or
 * (at your option) any later version.
 */

#ifndef MOD_MAILOAUTH_H
#define MOD_MAILOAUTH_H

#define MOD_MAILOAUTH_VERSION           "mod_mailoauth/0.1.0"

/* Make sure the version of proftpd is as necessary. */
#if PROFTPD_VERSION_NUMBER < 0x0001030800
# error "ProFTPD 1.3.8 or later required"
#endif

#endif /* MOD_MAILOAUTH_H */
