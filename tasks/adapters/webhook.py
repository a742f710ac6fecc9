"""A small receiver for MLflow's ``model_version.created`` webhook (open-source MLflow 3).

MLflow signs each delivery: ``X-MLflow-Signature: v1,<base64 HMAC-SHA256(secret, "{delivery_id}.{timestamp}.{body}")>``
with ``X-MLflow-Delivery-Id`` and ``X-MLflow-Timestamp`` (unix seconds). Anything unsigned, wrongly
signed, stale (or from the future) beyond ``max_age_s``, or replayed is rejected with 401 and never
triggers anything. A valid ``model_version.created`` calls ``on_new_version(name, version)`` and answers
202; other events answer 200. The shared secret comes from the environment.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

logger = logging.getLogger(__name__)

SIGNATURE, TIMESTAMP, DELIVERY = "X-MLflow-Signature", "X-MLflow-Timestamp", "X-MLflow-Delivery-Id"
MAX_BODY = 1 << 20


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


class WebhookReceiver:
    """Serves POST ``path`` on host:port in a background thread; ``stop()`` ends it."""

    def __init__(self, secret: str, on_new_version: Callable[[str, str], object], host: str = "127.0.0.1",
                 port: int = 8765, path: str = "/mlflow", max_age_s: float = 300, remember: int = 10_000) -> None:
        if not secret:
            raise ValueError("the webhook secret is empty: set it in the environment variable named by webhook.secret_env")
        self.secret, self.on_new_version, self.path, self.max_age_s = secret, on_new_version, path, max_age_s
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._remember, self._lock = remember, threading.Lock()
        self.accepted = 0
        self.server = ThreadingHTTPServer((host, port), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, name="auditlens-webhook", daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def start(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _replayed(self, delivery_id: str) -> bool:
        with self._lock:
            if delivery_id in self._seen:
                return True
            self._seen[delivery_id] = None
            while len(self._seen) > self._remember:
                self._seen.popitem(last=False)
            return False

    def handle(self, headers: dict[str, str], body: bytes) -> tuple[int, str]:
        reason = verify(self.secret, headers, body, self.max_age_s)
        if reason:
            return 401, reason
        if self._replayed(headers[DELIVERY]):
            return 401, "replayed delivery"
        try:
            event = json.loads(body)
        except json.JSONDecodeError:
            return 400, "body is not JSON"
        if (event.get("entity"), event.get("action")) != ("model_version", "created"):
            return 200, "ignored event"
        data = event.get("data") or {}
        name, version = data.get("name"), data.get("version")
        if not name or version is None:
            return 400, "model_version.created without name or version"
        self.on_new_version(str(name), str(version))
        self.accepted += 1
        return 202, f"audit of {name} v{version} requested"

    def _handler(self):
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path != receiver.path:
                    return self._answer(404, "unknown path")
                length = int(self.headers.get("Content-Length", "0") or 0)
                if length > MAX_BODY:
                    return self._answer(413, "body too large")
                body = self.rfile.read(length)
                headers = {key: self.headers.get(key, "") for key in (SIGNATURE, TIMESTAMP, DELIVERY)}
                try:
                    status, message = receiver.handle(headers, body)
                except Exception as exc:  # the trigger failed: MLflow retries 5xx answers
                    logger.exception("webhook trigger failed")
                    status, message = 503, f"trigger failed: {type(exc).__name__}"
                if status == 401:
                    logger.warning("webhook delivery rejected: %s", message)
                self._answer(status, message)

            def _answer(self, status: int, message: str) -> None:
                payload = json.dumps({"message": message}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:  # quiet: rejections are logged above
                return

        return Handler
