"""Test PKI: a throwaway CA and a server certificate for the loopback hosts.

Every TLS server in the tests (token service, Dovecot, Postfix, proftpd's
mod_tls) presents a certificate from this CA, and every client is given the
CA file, so certificate verification stays on in tests exactly as in
production.
"""

import os
import subprocess

SERVER_NAMES = ("localhost",)
SERVER_IPS = ("127.0.0.1", "127.0.0.2", "::1")


class TestPKI:
    """Files: ca.pem, ca.key, server.pem (leaf), server.key, server-chain.pem."""

    def __init__(self, directory):
        self.dir = directory
        self.ca_cert = os.path.join(directory, "ca.pem")
        self.ca_key = os.path.join(directory, "ca.key")
        self.cert = os.path.join(directory, "server.pem")
        self.key = os.path.join(directory, "server.key")
        self.chain = os.path.join(directory, "server-chain.pem")

    def create(self):
        os.makedirs(self.dir, exist_ok=True)
        if os.path.exists(self.chain):
            return self
        run = lambda *a: subprocess.run(a, check=True, capture_output=True)
        run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
            "ec_paramgen_curve:prime256v1", "-nodes", "-days", "30",
            "-subj", "/CN=mod_mailoauth test CA", "-keyout", self.ca_key,
            "-out", self.ca_cert,
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        csr = os.path.join(self.dir, "server.csr")
        run("openssl", "req", "-newkey", "ec", "-pkeyopt",
            "ec_paramgen_curve:prime256v1", "-nodes", "-subj", "/CN=localhost",
            "-keyout", self.key, "-out", csr)
        ext = os.path.join(self.dir, "server.ext")
        sans = ["DNS:%s" % n for n in SERVER_NAMES] + \
               ["IP:%s" % ip for ip in SERVER_IPS]
        with open(ext, "w") as f:
            f.write("subjectAltName=%s\n" % ",".join(sans))
            f.write("extendedKeyUsage=serverAuth\n")
            f.write("basicConstraints=CA:FALSE\n")
        run("openssl", "x509", "-req", "-in", csr, "-CA", self.ca_cert,
            "-CAkey", self.ca_key, "-CAcreateserial", "-days", "30",
            "-extfile", ext, "-out", self.cert)
        with open(self.chain, "w") as out:
            for p in (self.cert, self.ca_cert):
                with open(p) as f:
                    out.write(f.read())
        for p in (self.key, self.ca_key):
            os.chmod(p, 0o600)
        # Servers that drop privileges (Dovecot, Postfix) must read these.
        for p in (self.cert, self.chain, self.ca_cert):
            os.chmod(p, 0o644)
        os.chmod(self.dir, 0o755)
        return self
