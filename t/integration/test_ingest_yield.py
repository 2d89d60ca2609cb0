"""A long ingestion step does not hold notifications back.

The worker is one event loop; a message of a gigabyte takes seconds to
fetch, parse and deposit.  While the front (t/lib/imapfront.py) holds a
large fetch half-way, an upload's notification must still go out, in
about the time it takes when the worker is idle: the waits inside that
step let the spool pass and the queue run (lib/util/yield.c).
"""

import os
import time
import uuid

import pytest

from imapfront import IMAPFront
from test_accounts import ALICE, AccountServer, wait_for
from test_foundation import curl_upload
from test_ingest import UID, clear_mailbox, make_mail, visible, wait_files


@pytest.fixture(scope="module")
def mail_users():
    return []


@pytest.fixture
def front(pki, dovecot):
    f = IMAPFront(pki, dovecot.host, dovecot.imaps_port,
                  host=dovecot.host).start()
    yield f
    f.close()


def test_notification_goes_out_while_a_fetch_is_held(
        make_proftpd, tokensvc, tokensvc_app, pki, dovecot, postfix, front):
    clear_mailbox(dovecot)
    to = "ops-%s@contoso.test" % uuid.uuid4().hex[:8]
    a = AccountServer(make_proftpd, tokensvc, tokensvc_app, pki,
                      extra="imap=imaps://%s:%d smtp=smtp://127.0.0.1:%d"
                      % (front.host, front.port, postfix.smtp_port))
    inbox = os.path.join(a.srv.home("alice"), "inbox")
    a.srv.extra_conf += (
        "\nMailOAuthIngest t1 account=notify every=1 dir=%s owner=%d:%d\n"
        % (inbox, UID, UID))
    a.srv.global_conf += ("\n<Global>\nMailOAuthNotify notify to=%s "
                          "\"subject=Arrived %%{basename}\"\n</Global>\n"
                          % to)
    a.seed()
    data = os.urandom(3 * 1024 * 1024)
    dovecot.deliver(ALICE, make_mail([("big.bin", data,
                                       "application/octet-stream")]))
    # The body fetch stops after its first 256 KB until released.
    front.stall_pattern = rb"(?i)UID FETCH \d+ BODY(\.PEEK)?\[\]"
    front.stall_after = 256 * 1024
    a.srv._prepare()
    os.makedirs(inbox, exist_ok=True)
    os.chown(inbox, UID, UID)
    a.srv.start()
    try:
        wait_for(front.stalled.is_set, timeout=30, what="a fetch under way")
        t0 = time.monotonic()
        curl_upload(a.srv, "ftp", "during.txt", b"while ingesting")
        dovecot.wait_for_message(to, "Arrived during.txt", timeout=20)
        took = time.monotonic() - t0
        # Still held: the notification did not wait for the fetch.
        assert front.stalled.is_set()
        assert visible(inbox) == []
    finally:
        front.release()
    wait_files(inbox, 1, timeout=60)
    assert visible(inbox) == ["big.bin"]
    assert took < 20
