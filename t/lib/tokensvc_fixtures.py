"""pytest fixtures for the Entra ID stand-in (load with pytest_plugins).

pki             session-wide test CA and loopback server certificate
tokensvc_server one token service process for the whole session
tokensvc        that service, reset to empty before each test
tokensvc_app    a registered confidential app plus alice@contoso.test

One process serves every test because starting Python with TLS costs a few
hundred milliseconds; the per-test reset gives each test a clean directory.
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from certs import TestPKI  # noqa: E402
from tokensvc import TokenService  # noqa: E402

DEFAULT_REDIRECT_URI = "http://localhost:8400/callback"


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    return TestPKI(str(tmp_path_factory.mktemp("pki"))).create()


@pytest.fixture(scope="session")
def tokensvc_server(pki, tmp_path_factory):
    svc = TokenService(str(tmp_path_factory.mktemp("tokensvc")), pki).start()
    yield svc
    svc.stop()


@pytest.fixture
def tokensvc(tokensvc_server):
    tokensvc_server.reset()
    return tokensvc_server


@pytest.fixture
def tokensvc_app(tokensvc):
    """A confidential app in tenant contoso.test with one user; the dict has
    client_id, secret (the value), secret_id, tenant_id, redirect_uris."""
    app = tokensvc.add_app(redirect_uris=[DEFAULT_REDIRECT_URI])
    tokensvc.add_user("alice@contoso.test", display_name="Alice Example")
    return app
