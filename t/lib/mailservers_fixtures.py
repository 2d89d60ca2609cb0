"""pytest fixtures for the real Dovecot and Postfix of t/lib/mailservers.py.

Load with `pytest_plugins = ["mailservers_fixtures"]` (t/lib on sys.path).

Provided (module scope: one pair of servers per test module):
    mail_workdir   a fresh 0755 directory for both servers under
                   $MAILOAUTH_TEST_WORKDIR (default /tmp/mailoauth-tests),
                   removed afterwards unless MAILOAUTH_KEEP_WORKDIR is set
    dovecot        a started mailservers.Dovecot
    postfix        a started mailservers.Postfix delivering into `dovecot`,
                   with the no-STARTTLS listener (smtp_plain_port) enabled

Override any of these to change what the servers are built from:
    mail_pki                (session) the TestPKI; default: the `pki` fixture
                            when one is defined, else a PKI of our own
    mail_introspection_url  the token service's introspection URL; default:
                            the `tokensvc_server` fixture's introspect_url
    mail_users              mailbox addresses Dovecot knows
    mail_domains            domains Postfix delivers into Dovecot

When a test that used these servers fails, the tail of their logs is added
to the report (needs this module loaded as a plugin, not just imported).
"""

import os
import shutil
import tempfile

import pytest

from certs import TestPKI
from mailservers import Dovecot, Postfix

__all__ = ["mail_pki", "mail_introspection_url", "mail_users", "mail_domains",
           "mail_workdir", "dovecot", "postfix"]

DEFAULT_USERS = ["alice@contoso.test", "bob@contoso.test",
                 "carol@contoso.test"]


@pytest.fixture(scope="session")
def mail_pki(request, tmp_path_factory):
    try:
        return request.getfixturevalue("pki")
    except pytest.FixtureLookupError:
        return TestPKI(str(tmp_path_factory.mktemp("mail-pki"))).create()


@pytest.fixture(scope="module")
def mail_introspection_url(request):
    # The session-wide token service (t/lib/tokensvc_fixtures.py); tests
    # reset its state, but its address stays the same for the session.
    svc = request.getfixturevalue("tokensvc_server")
    return getattr(svc, "introspect_url", None) or \
        svc.url.rstrip("/") + "/introspect"


@pytest.fixture(scope="module")
def mail_users():
    return list(DEFAULT_USERS)


@pytest.fixture(scope="module")
def mail_domains():
    return ["contoso.test"]


@pytest.fixture(scope="module")
def mail_workdir():
    # Not tmp_path: pytest's base directory is mode 0700, and the servers'
    # unprivileged processes must reach into the work directory. Same base
    # as the other integration work directories.
    base = os.environ.get("MAILOAUTH_TEST_WORKDIR", "/tmp/mailoauth-tests")
    os.makedirs(base, exist_ok=True)
    os.chmod(base, 0o755)
    path = tempfile.mkdtemp(prefix="mailservers.", dir=base)
    os.chmod(path, 0o755)
    yield path
    if not os.environ.get("MAILOAUTH_KEEP_WORKDIR"):
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def dovecot(mail_workdir, mail_pki, mail_introspection_url, mail_users):
    server = Dovecot(mail_workdir, mail_pki, mail_introspection_url,
                     users=mail_users)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def postfix(mail_workdir, mail_pki, dovecot, mail_domains):
    server = Postfix(mail_workdir, mail_pki, dovecot, domains=mail_domains,
                     plain_listener=True)
    server.start()
    yield server
    server.stop()


def _tail(text, lines=80):
    return "\n".join(text.splitlines()[-lines:])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    for name in ("dovecot", "postfix"):
        server = getattr(item, "funcargs", {}).get(name)
        if server is not None:
            report.sections.append(("%s log" % name, _tail(server.logs())))
