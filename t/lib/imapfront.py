"""A TLS-terminating IMAP front for tests, between the module and Dovecot.

Dovecot cannot behave like Exchange Online at token expiry, nor hold a
transfer still on request; this front can:

  - session_seconds: this long after a client's AUTHENTICATE it sends
    "* BYE Session invalidated - AccessTokenExpired" and closes, as
    Exchange does when the token the session logged in with expires;
  - stall_pattern: once a client command matches (a regular expression on
    bytes), at most stall_after bytes of the server's answer go through
    and the rest is held until release() (stalled is set then): a large
    fetch caught half-way, to kill the client at that moment;
  - latency: seconds added before every tagged server answer to a command
    after the login (logins stay quick), so that a run takes a while.

It records the client's commands (everything after AUTHENTICATE replaced)
in commands, and counts logins and BYEs sent.

Use: front = IMAPFront(pki, dovecot.host, dovecot.imaps_port).start();
point the client at imaps://<front.host>:<front.port>/; front.close().
"""

import re
import select
import socket
import ssl
import threading
import time


class IMAPFront:
    def __init__(self, pki, upstream_host, upstream_port, host="127.0.0.1"):
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self.pki = pki
        self.session_seconds = None
        self.stall_pattern = None
        self.stall_after = 0
        self.latency = 0.0
        self.commands = []
        self.logins = 0
        self.byes = 0
        self.stalled = threading.Event()
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._stop = False
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.server_ctx.load_cert_chain(pki.chain, pki.key)
        self.client_ctx = ssl.create_default_context(cafile=pki.ca_cert)
        self.client_ctx.check_hostname = False
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def url(self, folder=""):
        return "imaps://%s:%d/%s" % (self.host, self.port, folder)

    def release(self):
        """Lets held answers through, and stops holding new ones."""
        self.stall_pattern = None
        self._release.set()

    def close(self):
        self._stop = True
        self._release.set()
        self.thread.join(5)
        self.sock.close()

    def body_fetches(self):
        """The client's commands that fetch a whole body."""
        with self._lock:
            return [c for c in self.commands
                    if re.search(rb"BODY(\.PEEK)?\[\]", c, re.I)]

    # -- inside ---------------------------------------------------------

    def _serve(self):
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            threading.Thread(target=self._one, args=(conn,),
                             daemon=True).start()

    def _one(self, conn):
        c = u = None
        try:
            conn.settimeout(10)
            c = self.server_ctx.wrap_socket(conn, server_side=True)
            raw = socket.create_connection(self.upstream, timeout=10)
            u = self.client_ctx.wrap_socket(raw,
                                            server_hostname=self.upstream[0])
            self._pump(c, u)
        except (OSError, ssl.SSLError):
            pass
        finally:
            for s in (c, u):
                if s is not None:
                    try:
                        s.close()
                    except OSError:
                        pass

    def _pump(self, c, u):
        deadline = None
        quick = set()
        armed = False
        passed = 0
        cbuf = b""
        sbuf = b""
        while not self._stop:
            if deadline is not None and time.monotonic() >= deadline:
                c.sendall(b"* BYE Session invalidated - AccessTokenExpired"
                          b"\r\n")
                with self._lock:
                    self.byes += 1
                return

            holding = armed and passed >= self.stall_after and \
                not self._release.is_set()
            watch = [c] if holding else [c, u]
            ready = [s for s in watch if s.pending()]
            if not ready:
                ready, _, _ = select.select(watch, [], [], 0.1)

            for s in ready:
                data = s.recv(65536)
                if not data:
                    return
                if s is c:
                    cbuf += data
                    while b"\n" in cbuf:
                        line, cbuf = cbuf.split(b"\n", 1)
                        shown = line
                        if re.search(rb"\bAUTHENTICATE\b", line, re.I):
                            shown = line.split(b"AUTHENTICATE")[0] + \
                                b"AUTHENTICATE ..."
                            with self._lock:
                                self.logins += 1
                            if self.session_seconds is not None:
                                deadline = time.monotonic() + \
                                    self.session_seconds
                        words = line.split()
                        if len(words) >= 2 and words[1].upper() in (
                                b"CAPABILITY", b"AUTHENTICATE", b"LOGOUT",
                                b"STARTTLS"):
                            quick.add(words[0])
                        pat = self.stall_pattern
                        if pat is not None and re.search(pat, line):
                            armed = True
                            passed = 0
                        with self._lock:
                            self.commands.append(shown)
                        u.sendall(line + b"\n")
                    continue

                # Server to client.
                if armed and not self._release.is_set():
                    room = max(self.stall_after - passed, 0)
                    if len(data) > room:
                        sbuf += data[room:]
                        data = data[:room]
                        self.stalled.set()
                    passed += len(data)
                    if data:
                        c.sendall(data)
                    continue
                if sbuf:
                    data = sbuf + data
                    sbuf = b""
                if self.latency:
                    self._delay_tagged(data, quick)
                c.sendall(data)

            if sbuf and self._release.is_set():
                c.sendall(sbuf)
                sbuf = b""

    def _delay_tagged(self, data, quick):
        # Before a tagged answer ("A001 OK ..."): the server takes a while.
        for m in re.finditer(rb"(?:^|\n)([A-Za-z][0-9]+) (?:OK|NO|BAD)",
                             data):
            if m.group(1) not in quick:
                time.sleep(self.latency)
                return
