"""Shared fixtures for the integration tests (real servers on loopback)."""

import os
import shutil
import sys
import tempfile

import pytest

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(TOP, "t", "lib"))

from certs import TestPKI  # noqa: E402
from proftpd import ProFTPD  # noqa: E402
from tokensvc_fixtures import (  # noqa: E402,F401
    tokensvc_server, tokensvc, tokensvc_app)
from mailservers_fixtures import (  # noqa: E402,F401
    mail_pki, mail_introspection_url, mail_users, mail_domains, mail_workdir,
    dovecot, postfix)

# Work directories live where the daemon's unprivileged User can reach them
# (pytest's own tmp_path is private to root).
WORK_BASE = os.environ.get("MAILOAUTH_TEST_WORKDIR", "/tmp/mailoauth-tests")


def pytest_configure(config):
    if os.geteuid() != 0:
        raise pytest.UsageError(
            "the integration tests start proftpd, Dovecot and Postfix and "
            "need root (run: sudo make check)")


def _new_workdir(name):
    os.makedirs(WORK_BASE, exist_ok=True)
    os.chmod(WORK_BASE, 0o755)
    safe = "".join(ch if ch.isalnum() else "-" for ch in name)[:60]
    path = tempfile.mkdtemp(prefix=safe + ".", dir=WORK_BASE)
    os.chmod(path, 0o755)
    return path


@pytest.fixture(scope="session")
def module_path():
    path = os.environ.get("MAILOAUTH_MODULE",
                          os.path.join(TOP, "build", "mod_mailoauth.so"))
    if not os.path.exists(path):
        pytest.exit("mod_mailoauth.so not built (%s): run make first" % path,
                    returncode=2)
    return path


@pytest.fixture(scope="session")
def proftpd_bin():
    return os.environ.get("PROFTPD", "/usr/sbin/proftpd")


@pytest.fixture(scope="session")
def pki():
    path = _new_workdir("pki")
    yield TestPKI(path).create()
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def workdir(request):
    path = _new_workdir(request.node.name)
    yield path
    if not getattr(request.node, "rep_failed", False):
        shutil.rmtree(path, ignore_errors=True)


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed:
        item.rep_failed = True


@pytest.fixture
def make_proftpd(request, module_path, proftpd_bin, pki):
    """Factory: make_proftpd(**ProFTPD kwargs) -> ProFTPD (not started).

    Every instance is stopped at the end of the test, whatever happened; a
    failed test's logs are printed to help the reader.
    """
    made = []

    def factory(**kwargs):
        wd = _new_workdir("%s-%d" % (request.node.name, len(made)))
        kwargs.setdefault("pki", pki)
        srv = ProFTPD(wd, module_path, proftpd=proftpd_bin, **kwargs)
        made.append(srv)
        return srv

    yield factory

    failed = getattr(request.node, "rep_failed", False)
    for srv in made:
        srv.stop()
        if failed:
            sys.stderr.write("\n--- diagnostics for %s ---\n%s\n"
                             % (srv.dir, srv.diagnostics()))
        else:
            shutil.rmtree(srv.dir, ignore_errors=True)
