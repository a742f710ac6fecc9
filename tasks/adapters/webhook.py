"""A small receiver for MLflow's ``model_version.created`` webhook (open-source MLflow 3).

MLflow signs each delivery: ``X-MLflow-Signature: v1,<base64 HMAC-SHA256(secret, "{delivery_id}.{timestamp}.{body}")>``
with ``X-MLflow-Delivery-Id`` and ``X-MLflow-Timestamp`` (unix seconds). Anything unsigned, wrongly
signed, stale (or from the future) beyond ``max_age_s``, or replayed is rejected with 401 and never
triggers anything. A valid ``model_version.created`` calls ``on_new_version(name, version)`` and answers
202; other events answer 200. The shared secret comes from the environment.

The receiver faces whoever can reach its port, so before any signature is checked:
- the body is framed by exactly one Content-Length of ASCII digits, at most ``MAX_BODY`` bytes: anything else
  (absent, negative, not a number, conflicting values, ``Transfer-Encoding``) is answered 4xx before the body
  is read, and the body is read in bounded chunks;
- a client has ``read_timeout_s`` from connecting to send its whole request (a deadline, not a per-read
  timeout, so trickling a byte at a time does not extend it);
- at most ``max_connections`` requests are handled at once, a thread each; further connections wait in the
  listen backlog, without a thread, until a slot frees (within ``read_timeout_s`` plus the handling time);
- accepted delivery ids are kept in a SQLite file (``ReplayStore``), so a replay is refused across restarts and
  across receivers sharing the file.
Every answer is JSON ``{"message": ...}`` and closes the connection.

``ensure_webhook`` registers the webhook with MLflow (``auditlens up``, the compose stack's deploy step): the only
write to MLflow's webhooks.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import logging
import os
import re
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from contextlib import closing
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tasks.adapters.errors import ConfigError

logger = logging.getLogger(__name__)

SIGNATURE, TIMESTAMP, DELIVERY = "X-MLflow-Signature", "X-MLflow-Timestamp", "X-MLflow-Delivery-Id"
MAX_BODY = 1 << 20
CHUNK = 64 << 10
# ASCII digits only: int() would also take "+10", "1_0", " 10 " and other scripts' digits
_DIGITS = re.compile(r"[0-9]+")


def ensure_webhook(tracking_uri: str, name: str, url: str, secret: str, events: list[str],
                   outage_timeout_s: float = 120.0) -> str:
    """One webhook named ``name`` delivering ``events`` to ``url`` (replaced if it pointed elsewhere); its id."""
    from tasks.adapters.tracking import ResilientClient

    client = ResilientClient.connect(tracking_uri, outage_timeout_s)
    for hook in client.list_webhooks():
        if hook.name == name:
            if hook.url == url:
                return hook.webhook_id
            client.delete_webhook(hook.webhook_id)
    return client.create_webhook(name, url, events=events, secret=secret,
                                 description="auditlens: audit every new model version").webhook_id


def signature(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{delivery_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(secret: str, headers: dict[str, str], body: bytes, max_age_s: float, now: float | None = None) -> str | None:
    """None when the delivery is authentic and fresh, else why it is not."""
    delivery_id, timestamp, signed = headers.get(DELIVERY), headers.get(TIMESTAMP), headers.get(SIGNATURE)
    if not (delivery_id and timestamp and signed):
        return "unsigned delivery (missing signature, timestamp or delivery id)"
    try:
        age = (time.time() if now is None else now) - int(timestamp)
    except ValueError:
        return "malformed timestamp"
    if abs(age) > max_age_s:
        return f"stale delivery ({int(age)} s old; at most {int(max_age_s)} s)"
    if not hmac.compare_digest(signed, signature(secret, delivery_id, timestamp, body)):
        return "bad signature"
    return None


class Refused(Exception):
    """A request answered with ``status`` and ``message`` before it reaches the signature check."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _shown(value: str, limit: int = 20) -> str:
    """A client's value in a message or a log line, cut short: headers may be 64 KiB long."""
    return value if len(value) <= limit else value[:limit] + "..."


def content_length(headers: Message) -> int:
    """The body's length, from exactly one Content-Length of ASCII digits (RFC 9112 section 6.3), else Refused."""
    if headers.get_all("Transfer-Encoding"):
        # chunked bodies have no length to check before reading; MLflow always sends Content-Length
        raise Refused(411, "Transfer-Encoding is not accepted: send the body with a Content-Length header")
    values = headers.get_all("Content-Length") or []
    if not values:
        raise Refused(411, "Content-Length is required: send the body with a Content-Length header")
    lengths = set()
    for value in values:
        for item in value.split(","):  # "10, 10" is one length repeated (RFC 9110 section 8.6); "10, 12" is not
            item = item.strip(" \t")
            if not _DIGITS.fullmatch(item):
                raise Refused(400, f"invalid Content-Length {_shown(value)!r}: it must be the body's size in bytes, digits only")
            lengths.add(item.lstrip("0") or "0")  # compared as text: int() refuses more than 4300 digits
    if len(lengths) > 1:
        raise Refused(400, f"conflicting Content-Length values {sorted(_shown(n) for n in lengths)}: send exactly one")
    length = lengths.pop()
    if len(length) > len(str(MAX_BODY)) or int(length) > MAX_BODY:
        raise Refused(413, f"body of {_shown(length)} bytes is over the limit of {MAX_BODY} bytes")
    return int(length)


class ReplayStore:
    """Delivery ids already accepted, in one SQLite table, shared by the threads of a receiver, by its restarts and
    by other receivers on the same file (the primary key decides which one accepts a delivery).

    An id is only needed while its delivery could still pass the age check: ``keep_s`` after it was first seen
    (twice ``max_age_s``: a delivery stamped ``max_age_s`` in the future stays fresh that long). Older ids are
    purged as new ones arrive. Only authentic deliveries are recorded, so the table grows with MLflow's rate,
    not an attacker's.
    """

    def __init__(self, path: str | Path, keep_s: float) -> None:
        self.path, self.keep_s = Path(path), keep_s
        try:
            # exist_ok: a receiver started beside this one may create the folder between a check and the mkdir
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))  # before SQLite creates it with the umask
            os.chmod(self.path, 0o600)  # the ids are not secret, but nobody else should be able to write them
            with closing(self._connect()) as db:
                db.execute("CREATE TABLE IF NOT EXISTS deliveries (id TEXT PRIMARY KEY, first_seen REAL NOT NULL)")
                db.execute("CREATE INDEX IF NOT EXISTS deliveries_first_seen ON deliveries (first_seen)")
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"the webhook's replay store {self.path} cannot be opened ({exc})",
                              "set webhook.replay_db in the deployments file (or AUDITLENS_STATE_DIR) to a file in a folder "
                              "this user can write") from None

    def _connect(self) -> sqlite3.Connection:
        # a connection per call: nothing shared between threads; timeout: waits for another receiver's write lock
        return sqlite3.connect(self.path, timeout=10, isolation_level=None)

    def claim(self, delivery_id: str, now: float | None = None) -> bool:
        """True the first time ``delivery_id`` is seen (the caller acts on it), False for a replay."""
        now = time.time() if now is None else now
        with closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("DELETE FROM deliveries WHERE first_seen < ?", (now - self.keep_s,))
                inserted = db.execute("INSERT OR IGNORE INTO deliveries (id, first_seen) VALUES (?, ?)", (delivery_id, now))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return inserted.rowcount == 1

    def release(self, delivery_id: str) -> None:
        """Forget a claimed id whose trigger failed: MLflow retries a 5xx with the same delivery id."""
        with closing(self._connect()) as db:
            db.execute("DELETE FROM deliveries WHERE id = ?", (delivery_id,))


class _DeadlineReader(io.RawIOBase):
    """The connection's bytes, until a deadline: each read waits only for the time left."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock, self._deadline = sock, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("request deadline passed")
        self._sock.settimeout(max(left, 0.001))  # never 0, which would make the socket non-blocking
        return self._sock.recv_into(buffer)


class _BoundedServer(ThreadingHTTPServer):
    """A thread per connection, at most ``max_connections`` at once; connections over the cap wait in the listen
    backlog (in the kernel: no thread, no memory of ours) until a slot frees."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler, max_connections: int) -> None:
        self._slots = threading.BoundedSemaphore(max_connections)
        self.closing = threading.Event()
        super().__init__(address, handler)

    def process_request(self, request, client_address) -> None:
        # waiting here holds up accept(), which is the point; polling lets stop() end the wait
        while not self._slots.acquire(timeout=0.1):
            if self.closing.is_set():
                self.shutdown_request(request)
                return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address) -> None:
        # a client that vanished or misbehaved is one line in the log, not socketserver's traceback on stderr
        exc = sys.exc_info()[1]
        logger.warning("webhook connection from %s ended: %s: %s", client_address[0], type(exc).__name__, exc)


class WebhookReceiver:
    """Serves POST ``path`` on host:port in a background thread; ``stop()`` ends it. ``replay_db`` is the SQLite file
    of accepted delivery ids (created 0600, with its folder)."""

    def __init__(self, secret: str, on_new_version: Callable[[str, str], object], host: str = "127.0.0.1",
                 port: int = 8765, path: str = "/mlflow", max_age_s: float = 300, *, replay_db: str | Path,
                 read_timeout_s: float = 10, max_connections: int = 32) -> None:
        if not secret:
            raise ValueError("the webhook secret is empty: set it in the environment variable named by webhook.secret_env")
        self.secret, self.on_new_version, self.path, self.max_age_s = secret, on_new_version, path, max_age_s
        self.read_timeout_s = read_timeout_s
        self.replays = ReplayStore(replay_db, keep_s=2 * max_age_s)
        self.accepted = 0
        self.server = _BoundedServer((host, port), self._handler(), max_connections)
        self.thread = threading.Thread(target=self.server.serve_forever, name="auditlens-webhook", daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def start(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.closing.set()
        if self.thread.is_alive():  # shutdown() waits for serve_forever, forever if it never started
            self.server.shutdown()
        self.server.server_close()

    def handle(self, headers: dict[str, str], body: bytes) -> tuple[int, str]:
        reason = verify(self.secret, headers, body, self.max_age_s)
        if reason:
            return 401, reason
        delivery_id = headers[DELIVERY]
        if not self.replays.claim(delivery_id):
            return 401, "replayed delivery"
        try:
            event = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return 400, "body is not JSON"
        if not isinstance(event, dict):
            return 400, "body is not a JSON object"
        if (event.get("entity"), event.get("action")) != ("model_version", "created"):
            return 200, "ignored event"
        data = event.get("data") if isinstance(event.get("data"), dict) else {}
        name, version = data.get("name"), data.get("version")
        if not name or version is None:
            return 400, "model_version.created without name or version"
        try:
            self.on_new_version(str(name), str(version))
        except BaseException:
            self.replays.release(delivery_id)
            raise
        self.accepted += 1
        return 202, f"audit of {name} v{version} requested"

    def _handler(self):
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            # until a request line names its version, answer with a status line and headers (0.9 has neither)
            default_request_version = "HTTP/1.0"

            def setup(self) -> None:
                super().setup()
                self.rfile.close()  # the plain socket reader: replaced by one bound to this request's deadline
                self.rfile = io.BufferedReader(_DeadlineReader(self.connection, time.monotonic() + receiver.read_timeout_s))

            def parse_request(self) -> bool:
                try:
                    return super().parse_request()
                except TimeoutError:  # the headers did not arrive in time (a silent connection just closes)
                    self._answer(408, self._late())
                    return False

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                try:
                    if self.path != receiver.path:
                        raise Refused(404, "unknown path")
                    body = self._body(content_length(self.headers))
                except Refused as refused:
                    if refused.status != 404:
                        logger.warning("webhook request refused (%d): %s", refused.status, refused.message)
                    return self._answer(refused.status, refused.message)
                headers = {key: self.headers.get(key, "") for key in (SIGNATURE, TIMESTAMP, DELIVERY)}
                try:
                    status, message = receiver.handle(headers, body)
                except Exception as exc:  # the trigger or the replay store failed: MLflow retries 5xx answers
                    logger.exception("webhook trigger failed")
                    status, message = 503, f"trigger failed: {type(exc).__name__}"
                if status == 401:
                    logger.warning("webhook delivery rejected: %s", message)
                self._answer(status, message)

            def _body(self, length: int) -> bytes:
                chunks, left = [], length
                while left:
                    try:
                        chunk = self.rfile.read1(min(left, CHUNK))
                    except TimeoutError:
                        raise Refused(408, self._late()) from None
                    if not chunk:
                        raise Refused(400, f"the body ended after {length - left} of its {length} bytes (Content-Length)")
                    chunks.append(chunk)
                    left -= len(chunk)
                return b"".join(chunks)

            @staticmethod
            def _late() -> str:
                return f"the request was not received within {receiver.read_timeout_s:g} s"

            def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
                # http.server's own refusals (malformed request line, too many headers, other methods), as JSON too
                self._answer(code, _shown(message, 200) if message else HTTPStatus(code).phrase)

            def _answer(self, status: int, message: str) -> None:
                payload = json.dumps({"message": message}).encode()
                self.connection.settimeout(receiver.read_timeout_s)  # a client that does not read cannot hold us
                self.close_connection = True  # a refused body may still be on its way: never parse it as a request
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's naming)
                logger.debug("webhook %s: " + format, self.address_string(), *args)

        return Handler
