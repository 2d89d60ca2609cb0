#!/usr/bin/python3
"""Local stand-in for Microsoft Graph mail endpoints, backed by a real Dovecot.

What it models (the v1.0 mail API as documented in 2026):
  POST /v1.0/users/{id}/messages with a base64 MIME body makes a draft
       (201, {"id": ...}); POST .../messages/{id}/attachments/
       createUploadSession with an AttachmentItem opens an upload session
       (201, {"uploadUrl": ...}); PUTs to the upload URL, without an
       Authorization header, with Content-Range pieces in order (416 for a
       piece out of order, 404 once the session expired; 200 with
       nextExpectedRanges, 201 for the last); POST .../messages/{id}/send
       sends the draft with its files (202); DELETE .../messages/{id}
       removes a draft.
  POST /v1.0/users/{id|upn}/sendMail   (also /me/sendMail for delegated
       tokens) with Content-Type text/plain: the body is a base64-encoded
       MIME message.  202 Accepted with an empty body on success.  The
       recipients come from the MIME To/Cc/Bcc headers; Bcc is removed
       before delivery.  Each recipient gets the message over LMTP into
       the Dovecot the tests read back over IMAP, and a copy lands in the
       sender's "Sent Items" folder, as Exchange does.

Authentication as Graph checks it: a bearer token issued by the token
stand-in (looked up through its control API) for the Graph resource.  A
token for another audience (Outlook/Exchange) gets 401
InvalidAuthenticationToken; an expired one 401 too; an app-only token
without the Mail.Send application role, or a delegated token without the
Mail.Send scope, gets 403 ErrorAccessDenied (drafts and upload sessions
need Mail.ReadWrite instead, as Graph's permission tables say); a delegated user sending as
another mailbox gets 403 ErrorSendAsDenied.  A mailbox the tenant does
not have gets 404 ErrorInvalidUser.  A request over 4 MB gets 413
ErrorRequestEntityTooLarge; a body that is not base64 MIME gets 400
ErrorMimeContentInvalidBase64String.  More than 4 requests at once for one
mailbox get 429 (MailboxConcurrency) with Retry-After, and faults injected
by the test (429/503 with Retry-After) are answered in order.

Error bodies have Graph's shape: {"error": {"code": ..., "message": ...,
"innerError": {"date": ..., "request-id": ..., "client-request-id": ...}}}.

Standard library only; runs in a thread of the test process.
"""

import base64
import binascii
import email
import email.message
import email.policy
import email.utils
import http.server
import json
import os
import socket
import ssl
import threading
import time
import urllib.parse
import uuid

MAX_REQUEST = 4 * 1024 * 1024
MAX_CONCURRENT = 4


class GraphError(Exception):
    def __init__(self, status, code, message, retry_after=None):
        Exception.__init__(self, "%d %s" % (status, code))
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def _send_json(self, status, body, headers=()):
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("request-id", str(uuid.uuid4()))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _read_body(self):
        te = self.headers.get("Transfer-Encoding", "").lower()
        if te == "chunked":
            chunks, total = [], 0
            while True:
                line = self.rfile.readline(100)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline(100)
                    break
                total += size
                if total > MAX_REQUEST + 1:
                    # Read on so that the answer reaches the client.
                    self.rfile.read(size)
                    self.rfile.readline(10)
                    chunks = None
                    continue
                data = self.rfile.read(size)
                self.rfile.readline(10)
                if chunks is not None:
                    chunks.append(data)
            return (b"".join(chunks) if chunks is not None else None), total
        n = int(self.headers.get("Content-Length") or 0)
        if n > MAX_REQUEST:
            left = n
            while left > 0:
                left -= len(self.rfile.read(min(left, 1 << 20)))
            return None, n
        return self.rfile.read(n), n

    def do_POST(self):
        self._do("POST")

    def do_PUT(self):
        self._do("PUT")

    def do_DELETE(self):
        self._do("DELETE")

    def _do(self, method):
        svc = self.server.svc
        body, size = self._read_body()
        try:
            status, answer = svc.handle(method, self.path, self.headers,
                                        body, size)
        except GraphError as e:
            headers = []
            if e.retry_after is not None:
                headers.append(("Retry-After", str(e.retry_after)))
            self._send_json(e.status, svc.error_body(e.code, e.message),
                            headers)
            return
        self._send_json(status, answer)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class GraphService:
    """Start with GraphService(pki, tokensvc, dovecot).start(); .url is the
    base (https://127.0.0.1:PORT) to give the module as graph=URL."""

    def __init__(self, pki, tokensvc, dovecot, host="127.0.0.1"):
        self.pki = pki
        self.tokensvc = tokensvc
        self.dovecot = dovecot
        self.host = host
        self.lock = threading.Lock()
        self.requests = []          # (method, path, status, code, size)
        self.times = []             # when each was answered (monotonic)
        self.sent = []              # Message-IDs accepted, in order
        self.faults = []            # [status, retry_after, code]
        self.upload_faults = []     # the same, for upload-session PUTs
        self.throttle_every = 0     # every Nth request: 429, Retry-After 1
        self.sent_items = True      # keep a copy in the sender's Sent Items
        self.count = 0
        self.active = {}            # mailbox -> requests in progress
        self.max_active = {}        # mailbox -> most at once
        self.known_mailboxes = set()
        self.drafts = {}            # id -> {"mailbox", "mime", "files"}
        self.sessions = {}          # upload id -> session
        self.deleted = []           # draft ids deleted by the client
        self.server = None
        self.thread = None

    # -- lifecycle ------------------------------------------------------

    def start(self):
        self.server = _Server((self.host, 0), _Handler)
        self.server.svc = self
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.pki.chain, self.pki.key)
        self.server.socket = ctx.wrap_socket(self.server.socket,
                                             server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       daemon=True)
        self.thread.start()
        return self

    def stop(self):
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    @property
    def url(self):
        return "https://%s:%d" % (self.host, self.server.server_address[1])

    # -- test controls --------------------------------------------------

    def reset(self):
        with self.lock:
            self.requests = []
            self.times = []
            self.sent = []
            self.faults = []
            self.active = {}
            self.max_active = {}
            self.drafts = {}
            self.sessions = {}
            self.deleted = []
            self.upload_faults = []
            self.throttle_every = 0
            self.count = 0
            self.sent_items = True

    def expire_upload_sessions(self):
        with self.lock:
            for sess in self.sessions.values():
                sess["expires"] = 0

    def inject(self, status, count=1, retry_after=None, code=None):
        with self.lock:
            for _ in range(count):
                self.faults.append([status, retry_after, code])

    def statuses(self):
        with self.lock:
            return [r[2] for r in self.requests]

    # -- protocol -------------------------------------------------------

    @staticmethod
    def error_body(code, message):
        return {"error": {"code": code, "message": message, "innerError": {
            "date": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()),
            "request-id": str(uuid.uuid4()),
            "client-request-id": str(uuid.uuid4())}}}

    def _record(self, method, path, status, code, size):
        with self.lock:
            self.requests.append((method, path, status, code, size))
            self.times.append(time.monotonic())

    def _authenticate(self, headers):
        auth = headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            raise GraphError(401, "InvalidAuthenticationToken",
                             "Access token is empty.")
        info = self.tokensvc.token_info(auth[7:])
        if info.get("kind") != "access_token":
            raise GraphError(401, "InvalidAuthenticationToken",
                             "IDX14100: JWT is not well formed.")
        if info.get("resource") != "graph":
            raise GraphError(401, "InvalidAuthenticationToken",
                             "Access token validation failure. Invalid "
                             "audience.")
        if info.get("exp", 0) <= time.time():
            raise GraphError(401, "InvalidAuthenticationToken",
                             "Lifetime validation failed, the token is "
                             "expired.")
        return info

    def _mailbox(self, path, info):
        parts = [urllib.parse.unquote(p) for p in
                 path.split("?")[0].strip("/").split("/")]
        # v1.0 / users / {id} / sendMail  or  v1.0 / me / sendMail
        if len(parts) >= 3 and parts[0] == "v1.0" and parts[1] == "me":
            if info.get("app_only"):
                raise GraphError(400, "BadRequest", "/me request is only "
                                 "valid with delegated authentication flow.")
            return info["user"], parts[2:]
        if len(parts) >= 4 and parts[0] == "v1.0" and parts[1] == "users":
            return parts[2].lower(), parts[3:]
        raise GraphError(400, "BadRequest", "Resource not found for the "
                         "segment '%s'." % parts[-1])

    def _is_mailbox(self, addr):
        # A Dovecot without a user list takes any address of the tenant.
        users = [u.lower() for u in self.dovecot.users]
        if users:
            return addr in users or addr in self.known_mailboxes
        return addr.endswith("@contoso.test")

    @staticmethod
    def _needs(method, rest):
        """The permission Graph asks for: sendMail and sending a draft
        need Mail.Send; making, filling and deleting a draft (the way for
        files over 3 MB) need Mail.ReadWrite."""
        if rest == ["sendMail"] or (len(rest) == 3 and rest[0] == "messages"
                                    and rest[2] == "send"):
            return "Mail.Send"
        return "Mail.ReadWrite"

    def _check_permission(self, info, mailbox, need="Mail.Send"):
        if info.get("app_only"):
            if need not in (info.get("roles") or []):
                raise GraphError(403, "ErrorAccessDenied",
                                 "Access is denied. Check credentials and "
                                 "try again.")
            return
        scope = (info.get("scope") or "").split()
        if need not in scope:
            raise GraphError(403, "ErrorAccessDenied",
                             "Access is denied. Check credentials and try "
                             "again.")
        if (info.get("user") or "").lower() != mailbox:
            raise GraphError(403, "ErrorSendAsDenied",
                             "The user account which was used to submit "
                             "this request does not have the right to send "
                             "mail on behalf of the specified sending "
                             "account., Cannot submit message.")

    def handle(self, method, path, headers, body, size):
        try:
            status, answer = self._handle(method, path, headers, body, size)
        except GraphError as e:
            self._record(method, path, e.status, e.code, size)
            raise
        self._record(method, path, status, None, size)
        return status, answer

    def _handle(self, method, path, headers, body, size):
        if path.startswith("/upload/"):
            return self._upload(path, headers, body, size)
        info = self._authenticate(headers)
        mailbox, rest = self._mailbox(path, info)
        if not self._is_mailbox(mailbox):
            raise GraphError(404, "ErrorInvalidUser",
                             "The requested user '%s' is invalid." % mailbox)
        self._check_permission(info, mailbox, self._needs(method, rest))
        with self.lock:
            self.count += 1
            if self.throttle_every and self.count % self.throttle_every == 0:
                raise GraphError(429, "ApplicationThrottled", "Application "
                                 "is over its MailboxConcurrency limit.",
                                 retry_after=1)
            if self.faults:
                status, retry_after, code = self.faults.pop(0)
                raise GraphError(status, code or (
                    "ApplicationThrottled" if status == 429 else
                    "ServiceUnavailable"), "Injected fault.", retry_after)
            n = self.active.get(mailbox, 0) + 1
            if n > MAX_CONCURRENT:
                raise GraphError(429, "ApplicationThrottled",
                                 "Application is over its MailboxConcurrency "
                                 "limit.", retry_after=1)
            self.active[mailbox] = n
            self.max_active[mailbox] = max(self.max_active.get(mailbox, 0), n)
        try:
            return self._route(method, mailbox, rest, headers, body, size)
        finally:
            with self.lock:
                self.active[mailbox] -= 1

    def _route(self, method, mailbox, rest, headers, body, size):
        if body is None or size > MAX_REQUEST:
            raise GraphError(413, "ErrorRequestEntityTooLarge",
                             "The request exceeds the maximum supported "
                             "size.")
        if method == "POST" and rest == ["sendMail"]:
            msg = self._mime(headers, body)
            self._deliver(mailbox, msg)
            return 202, None
        if method == "POST" and rest == ["messages"]:
            msg = self._mime(headers, body)
            did = "AAMk" + uuid.uuid4().hex
            with self.lock:
                self.drafts[did] = {"mailbox": mailbox, "mime": msg,
                                    "files": []}
            return 201, {"id": did, "isDraft": True}
        if len(rest) >= 2 and rest[0] == "messages":
            with self.lock:
                draft = self.drafts.get(rest[1])
            if draft is None or draft["mailbox"] != mailbox:
                raise GraphError(404, "ErrorItemNotFound", "The specified "
                                 "object was not found in the store.")
            if method == "DELETE" and len(rest) == 2:
                with self.lock:
                    del self.drafts[rest[1]]
                    self.deleted.append(rest[1])
                return 204, None
            if method == "POST" and rest[2:] == ["attachments",
                                                 "createUploadSession"]:
                return self._create_session(rest[1], draft, body)
            if method == "POST" and rest[2:] == ["send"]:
                with self.lock:
                    if any(not f["done"] for f in draft["files"]):
                        raise GraphError(400, "ErrorInvalidRequest",
                                         "An attachment upload is not "
                                         "complete.")
                    del self.drafts[rest[1]]
                msg = draft["mime"]
                for f in draft["files"]:
                    maintype, _, subtype = f["type"].partition("/")
                    if msg.get_content_maintype() != "multipart":
                        msg = self._as_mixed(msg)
                    part = email.message.Message()
                    part["Content-Type"] = f["type"]
                    part.add_header("Content-Disposition", "attachment",
                                    filename=f["name"])
                    part["Content-Transfer-Encoding"] = "base64"
                    part.set_payload(base64.encodebytes(bytes(f["data"]))
                                     .decode())
                    msg.attach(part)
                self._deliver(mailbox, msg)
                return 202, None
        raise GraphError(400, "BadRequest", "Resource not found for the "
                         "segment '%s'." % "/".join(rest))

    @staticmethod
    def _as_mixed(msg):
        mixed = email.message.Message()
        for k, v in msg.items():
            if k.lower() not in ("content-type", "content-transfer-encoding",
                                 "mime-version"):
                mixed[k] = v
        mixed["MIME-Version"] = "1.0"
        mixed["Content-Type"] = 'multipart/mixed; boundary="=_gs_%s"' \
            % uuid.uuid4().hex
        body = email.message.Message()
        for k in ("Content-Type", "Content-Transfer-Encoding"):
            if msg.get(k):
                body[k] = msg[k]
        body.set_payload(msg.get_payload())
        mixed.set_payload([body])
        return mixed

    def _create_session(self, did, draft, body):
        try:
            item = json.loads(body or b"{}")["AttachmentItem"]
            name, total = item["name"], int(item["size"])
            ctype = item.get("contentType") or "application/octet-stream"
        except (ValueError, KeyError, TypeError):
            raise GraphError(400, "ErrorInvalidRequest", "The AttachmentItem "
                             "is missing or invalid.")
        if item.get("attachmentType") != "file":
            raise GraphError(400, "ErrorInvalidRequest",
                             "attachmentType must be file.")
        if total > 150 * 1024 * 1024:
            raise GraphError(400, "ErrorAttachmentSizeLimitExceeded",
                             "The attachment is larger than 150 MB.")
        sid = uuid.uuid4().hex
        f = {"name": name, "type": ctype, "size": total,
             "data": bytearray(), "done": False}
        with self.lock:
            draft["files"].append(f)
            self.sessions[sid] = {"file": f, "expires": time.time() + 900}
        return 201, {
            "uploadUrl": "%s/upload/%s?authtoken=%s" % (
                self.url, sid, uuid.uuid4().hex),
            "expirationDateTime": time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 900)),
            "nextExpectedRanges": ["0-"]}

    def _upload(self, path, headers, body, size):
        sid = path[len("/upload/"):].split("?")[0]
        with self.lock:
            sess = self.sessions.get(sid)
        if sess is None or sess["expires"] < time.time():
            raise GraphError(404, "ItemNotFound", "The upload session was "
                             "not found or has expired.")
        with self.lock:
            fault = self.upload_faults.pop(0) if self.upload_faults else None
        if fault is not None:
            status, retry_after, code = fault
            raise GraphError(status, code or "ServiceUnavailable",
                             "Injected fault.", retry_after)
        if headers.get("Authorization"):
            # The upload URL carries its own authorization.
            raise GraphError(401, "InvalidAuthenticationToken", "An "
                             "Authorization header is not allowed on an "
                             "upload session URL.")
        rng = headers.get("Content-Range", "")
        try:
            unit, _, spec = rng.partition(" ")
            span, _, total = spec.partition("/")
            start, _, end = span.partition("-")
            start, end, total = int(start), int(end), int(total)
        except ValueError:
            raise GraphError(400, "InvalidRange", "Content-Range is missing "
                             "or malformed.")
        f = sess["file"]
        with self.lock:
            have = len(f["data"])
            if unit != "bytes" or total != f["size"] or start != have or \
                    end < start or end >= total or \
                    end - start + 1 != len(body or b""):
                raise GraphError(416, "InvalidRange", "The Content-Range "
                                 "does not match the next expected range "
                                 "%d-." % have)
            if len(body) > MAX_REQUEST:
                raise GraphError(413, "ErrorRequestEntityTooLarge",
                                 "A fragment may carry at most 4 MB.")
            f["data"] += body
            if len(f["data"]) == total:
                f["done"] = True
                del self.sessions[sid]
                return 201, {"id": uuid.uuid4().hex}
            return 200, {"expirationDateTime": "", "nextExpectedRanges": [
                "%d-" % len(f["data"])]}

    def _mime(self, headers, body):
        ctype = headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype != "text/plain":
            raise GraphError(400, "ErrorInvalidRequest" if ctype else
                             "BadRequest", "Unsupported Content-Type for a "
                             "MIME message: use text/plain with base64.")
        try:
            raw = base64.b64decode(b"".join(body.split()), validate=True)
        except (binascii.Error, ValueError):
            raise GraphError(400, "ErrorMimeContentInvalidBase64String",
                             "Invalid base64 string for MIME content.")
        msg = email.message_from_bytes(raw, policy=email.policy.compat32)
        if not msg.keys() or msg.get("From") is None:
            raise GraphError(400, "ErrorMimeContentInvalid",
                             "The MIME content is invalid.")
        return msg

    def _deliver(self, mailbox, msg):
        rcpts = []
        for field in ("To", "Cc", "Bcc"):
            for _, addr in email.utils.getaddresses(msg.get_all(field, [])):
                if addr and addr.lower() not in rcpts:
                    rcpts.append(addr.lower())
        if not rcpts:
            raise GraphError(400, "ErrorInvalidRecipients",
                             "At least one recipient is not valid.")
        del msg["Bcc"]
        data = msg.as_bytes(policy=email.policy.compat32.clone(linesep="\r\n"))
        local = [r for r in rcpts if self._is_mailbox(r)]
        if local:
            lmtp = self.dovecot.lmtp()
            try:
                lmtp.sendmail(mailbox, local, data)
            finally:
                lmtp.quit()
        # Exchange keeps a copy of what was sent.
        if not self.sent_items:
            with self.lock:
                self.sent.append(msg.get("Message-ID", ""))
            return
        self.dovecot.doveadm("mailbox", "create", "-u", mailbox,
                             "Sent Items", check=False)
        self.dovecot.deliver(mailbox, data, mailbox="Sent Items")
        with self.lock:
            self.sent.append(msg.get("Message-ID", ""))
