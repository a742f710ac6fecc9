"""The webhook receiver accepts exactly what MLflow signs, and nothing else."""

from __future__ import annotations

import json
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydantic import ValidationError

from tasks.adapters.deployments import Webhook
from tasks.adapters.errors import ConfigError
from tasks.adapters.webhook import (DELIVERY, MAX_BODY, SIGNATURE, TIMESTAMP, ReplayStore, WebhookReceiver, signature,
                                    verify)
from tests.conftest import ROOT

SECRET = "a-shared-secret"
EVENT = {"entity": "model_version", "action": "created", "timestamp": "2026-11-22T14:04:14+00:00",
         "data": {"name": "credit", "version": "7", "source": "models:/m-1", "run_id": None, "tags": {}, "description": None}}


def signed(body: bytes, secret: str = SECRET, delivery: str = "d-1", at: float | None = None) -> dict[str, str]:
    timestamp = str(int(time.time() if at is None else at))
    from mlflow.webhooks.delivery import _generate_hmac_signature  # MLflow's own signer is the reference

    return {DELIVERY: delivery, TIMESTAMP: timestamp, SIGNATURE: _generate_hmac_signature(secret, delivery, timestamp, body.decode())}


def test_our_signature_is_mlflows():
    body = json.dumps(EVENT).encode()
    headers = signed(body)
    assert signature(SECRET, headers[DELIVERY], headers[TIMESTAMP], body) == headers[SIGNATURE]
    assert verify(SECRET, headers, body, 300) is None


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda h, b: ({k: v for k, v in h.items() if k != SIGNATURE}, b), "unsigned"),
        (lambda h, b: (signed(b, secret="another"), b), "bad signature"),
        (lambda h, b: (h, b.replace(b'"7"', b'"8"')), "bad signature"),
        (lambda h, b: (signed(b, at=time.time() - 3600), b), "stale"),
        (lambda h, b: (signed(b, at=time.time() + 3600), b), "stale"),
        (lambda h, b: ({**h, TIMESTAMP: "yesterday"}, b), "malformed timestamp"),
    ],
    ids=["unsigned", "wrong-secret", "tampered-body", "old", "future", "bad-timestamp"],
)
def test_anything_not_signed_now_by_the_secret_is_rejected(mutate, reason):
    body = json.dumps(EVENT).encode()
    headers, body = mutate(signed(body), body)
    assert reason in verify(SECRET, headers, body, 300)


def post(port: int, body: bytes, headers: dict[str, str], path: str = "/mlflow", timeout: float = 5) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())["message"]
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())["message"]


def test_the_receiver_over_http_triggers_once_per_authentic_delivery(tmp_path):
    calls = []
    receiver = WebhookReceiver(SECRET, lambda name, version: calls.append((name, version)), port=0,
                               replay_db=tmp_path / "deliveries.sqlite3").start()
    try:
        body = json.dumps(EVENT).encode()
        headers = signed(body, delivery="d-42")
        assert post(receiver.port, body, headers) == (202, "audit of credit v7 requested")
        assert post(receiver.port, body, headers) == (401, "replayed delivery")
        assert post(receiver.port, body, {})[0] == 401
        other = json.dumps({**EVENT, "action": "tag_set"}).encode()
        assert post(receiver.port, other, signed(other, delivery="d-43")) == (200, "ignored event")
        assert post(receiver.port, body, signed(body, delivery="d-44"), path="/elsewhere")[0] == 404
        assert calls == [("credit", "7")]
    finally:
        receiver.stop()


def test_a_receiver_without_a_secret_refuses_to_start(tmp_path):
    with pytest.raises(ValueError, match="secret is empty"):
        WebhookReceiver("", lambda n, v: None, port=0, replay_db=tmp_path / "deliveries.sqlite3")


# --- hostile input: framing, time, connections, replays across restarts -------------------------------------
# Raw sockets: urllib would fix the framing for us. Each receiver gets its own replay store in tmp_path.
def receiver_on(tmp_path, calls=None, db: str = "deliveries.sqlite3", **settings) -> WebhookReceiver:
    calls = [] if calls is None else calls
    return WebhookReceiver(SECRET, lambda name, version: calls.append((name, version)), port=0,
                           replay_db=tmp_path / db, **settings).start()


def exchange(port: int, head: str, body: bytes = b"", timeout: float = 5) -> tuple[int, str, dict[str, str]]:
    """Send ``head`` (request line and headers, without the blank line) and ``body``; read the answer until the
    receiver closes the connection: (status, JSON message, headers)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as client:
        client.sendall(head.encode("latin-1") + b"\r\n\r\n" + body)
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    raw_headers, _, payload = rest.partition(b"\r\n\r\n")
    headers = dict(line.split(": ", 1) for line in raw_headers.decode("latin-1").split("\r\n") if line)
    return int(status_line.split()[1]), json.loads(payload)["message"], headers


def signed_head(body: bytes, delivery: str, content_length: str | None = None, extra: str = "") -> str:
    headers = signed(body, delivery=delivery)
    lines = ["POST /mlflow HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json",
             *(f"{k}: {v}" for k, v in headers.items())]
    if content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    return "\r\n".join(lines) + extra


@pytest.mark.parametrize(
    "lengths, status, says",
    [
        ([], 411, "Content-Length is required"),
        (["-1"], 400, "invalid Content-Length '-1'"),
        (["abc"], 400, "invalid Content-Length 'abc'"),
        (["+10"], 400, "invalid Content-Length '+10'"),  # int() takes these three
        (["1_0"], 400, "invalid Content-Length '1_0'"),
        (["0x10"], 400, "invalid Content-Length '0x10'"),
        (["10, 12"], 400, "conflicting Content-Length"),
        (["10", "12"], 400, "conflicting Content-Length"),
    ],
    ids=["absent", "negative", "letters", "plus-sign", "underscore", "hex", "list", "two-headers"],
)
def test_a_body_length_that_is_not_one_number_of_bytes_is_refused_before_any_body_is_read(tmp_path, capfd, lengths, status, says):
    calls = []
    receiver = receiver_on(tmp_path, calls, read_timeout_s=5)
    try:
        body = json.dumps(EVENT).encode()
        head = signed_head(body, "d-len") + "".join(f"\r\nContent-Length: {value}" for value in lengths)
        started = time.monotonic()
        # headers only: an answer that waited for a body would come after read_timeout_s (5 s)
        answer_status, message, headers = exchange(receiver.port, head)
        assert (answer_status, headers["Content-Type"], headers["Connection"]) == (status, "application/json", "close")
        assert says in message and "Content-Length" in message
        assert time.monotonic() - started < 2
        assert calls == [] and receiver.accepted == 0
    finally:
        receiver.stop()
    assert "Traceback" not in capfd.readouterr().err


def test_a_declared_length_over_the_limit_is_answered_413_without_reading_the_body(tmp_path):
    receiver = receiver_on(tmp_path, read_timeout_s=5)
    try:
        for declared in ("1048577", str(10**12), "9" * 5000):  # 5000 digits: more than int() parses by default
            started = time.monotonic()
            status, message, _ = exchange(receiver.port, signed_head(b"", "d-big", declared))
            assert status == 413 and message == f"body of {declared[:20]}{'...' if len(declared) > 20 else ''} bytes is over the limit of 1048576 bytes"
            assert time.monotonic() - started < 2  # the headers alone got the answer: no body was awaited
        body = json.dumps(EVENT).encode()  # the limit itself is the lengths' only bound: 202 just under it
        padded = body + b" " * (MAX_BODY - len(body))
        status, message, _ = exchange(receiver.port, signed_head(padded, "d-max", str(len(padded))), padded)
        assert (status, message) == (202, "audit of credit v7 requested")
    finally:
        receiver.stop()


@pytest.mark.parametrize("content_length", [None, "10"], ids=["chunked", "chunked-and-length"])
def test_chunked_bodies_are_refused_411(tmp_path, content_length):
    receiver = receiver_on(tmp_path, read_timeout_s=5)
    try:
        body = json.dumps(EVENT).encode()
        chunked = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
        head = signed_head(body, "d-chunked", content_length, extra="\r\nTransfer-Encoding: chunked")
        status, message, _ = exchange(receiver.port, head, chunked)
        assert status == 411 and message == "Transfer-Encoding is not accepted: send the body with a Content-Length header"
        assert receiver.accepted == 0
    finally:
        receiver.stop()


def test_a_body_shorter_than_its_length_is_answered_408_at_the_deadline(tmp_path):
    receiver = receiver_on(tmp_path, read_timeout_s=0.5)
    try:
        body = json.dumps(EVENT).encode()
        started = time.monotonic()
        status, message, _ = exchange(receiver.port, signed_head(body, "d-short", str(len(body) + 5)), body)
        assert (status, message) == (408, "the request was not received within 0.5 s")
        assert 0.4 < time.monotonic() - started < 3
        assert receiver.accepted == 0
    finally:
        receiver.stop()


def wait_closed(client: socket.socket) -> float:
    """Seconds until the receiver closes ``client``'s connection (the test fails after 5 s)."""
    started = time.monotonic()
    client.settimeout(5)
    try:
        while client.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - started


def test_an_idle_connection_is_closed_at_the_read_timeout(tmp_path):
    receiver = receiver_on(tmp_path, read_timeout_s=0.5)
    try:
        with socket.create_connection(("127.0.0.1", receiver.port)) as idle:
            assert 0.4 < wait_closed(idle) < 3
    finally:
        receiver.stop()


def test_a_trickling_client_is_cut_off_at_the_deadline_though_it_never_pauses_that_long(tmp_path):
    receiver = receiver_on(tmp_path, read_timeout_s=0.6)
    try:
        with socket.create_connection(("127.0.0.1", receiver.port)) as slow:
            slow.sendall(b"POST /mlflow HTTP/1.1\r\nX-Slow: ")
            started, answer = time.monotonic(), b""
            slow.settimeout(0.1)
            while time.monotonic() - started < 5:  # a byte every 0.1 s: each well inside the timeout
                try:
                    slow.sendall(b"a")
                    chunk = slow.recv(65536)
                except socket.timeout:
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    break
                if not chunk:
                    break
                answer += chunk
            assert 0.5 < time.monotonic() - started < 3
            assert answer.startswith(b"HTTP/1.0 408 ")
    finally:
        receiver.stop()


def test_idle_connections_hold_at_most_max_connections_threads_and_a_delivery_still_gets_through(tmp_path):
    calls = []
    threads_before = threading.active_count()
    receiver = receiver_on(tmp_path, calls, read_timeout_s=0.5, max_connections=4)
    idle = [socket.create_connection(("127.0.0.1", receiver.port)) for _ in range(12)]
    try:
        time.sleep(0.2)
        assert threading.active_count() - threads_before <= 1 + 4  # the accept loop and one thread per slot
        body = json.dumps(EVENT).encode()
        started = time.monotonic()
        # behind 12 idle connections, 4 at a time, each closed at 0.5 s
        assert post(receiver.port, body, signed(body, delivery="d-busy"), timeout=10) == (202, "audit of credit v7 requested")
        assert time.monotonic() - started < 5
        assert calls == [("credit", "7")]
        assert all(wait_closed(client) < 3 for client in idle)
    finally:
        for client in idle:
            client.close()
        receiver.stop()


def test_a_replay_is_refused_after_a_restart_on_the_same_store(tmp_path):
    calls = []
    body = json.dumps(EVENT).encode()
    headers = signed(body, delivery="d-restart")
    first = receiver_on(tmp_path, calls)
    try:
        assert post(first.port, body, headers) == (202, "audit of credit v7 requested")
    finally:
        first.stop()
    second = receiver_on(tmp_path, calls)  # a new process would find the same file
    try:
        assert post(second.port, body, headers) == (401, "replayed delivery")
        other = signed(body, delivery="d-after-restart")
        assert post(second.port, body, other) == (202, "audit of credit v7 requested")
    finally:
        second.stop()
    assert calls == [("credit", "7"), ("credit", "7")]
    store = tmp_path / "deliveries.sqlite3"
    assert stat.S_IMODE(store.stat().st_mode) == 0o600


def test_two_receivers_on_one_store_accept_a_delivery_once(tmp_path):
    calls = []
    a, b = receiver_on(tmp_path, calls), receiver_on(tmp_path, calls)
    try:
        body = json.dumps(EVENT).encode()
        for n in range(5):
            headers = signed(body, delivery=f"d-both-{n}")
            with ThreadPoolExecutor(2) as pool:
                answers = sorted(pool.map(lambda receiver: post(receiver.port, body, headers)[0], (a, b)))
            assert answers == [202, 401]
        assert len(calls) == 5
    finally:
        a.stop()
        b.stop()


CLAIMER = """
import sys
from tasks.adapters.webhook import ReplayStore
store = ReplayStore(sys.argv[1], keep_s=600)
print(" ".join(str(n) for n in range(int(sys.argv[2])) if store.claim(f"d-{n}")))
"""


def test_receivers_in_two_processes_claim_each_delivery_once(tmp_path):
    db, ids = tmp_path / "shared" / "deliveries.sqlite3", 60
    procs = [subprocess.Popen([sys.executable, "-c", CLAIMER, str(db), str(ids)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    claimed = []
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        claimed.append({int(n) for n in out.split()})
    assert claimed[0] | claimed[1] == set(range(ids)) and not claimed[0] & claimed[1]
    assert stat.S_IMODE(db.stat().st_mode) == 0o600  # the folder was created, the file is the owner's only


def test_the_store_forgets_ids_only_once_they_could_no_longer_pass_the_age_check(tmp_path):
    store = ReplayStore(tmp_path / "d.sqlite3", keep_s=2 * 300)
    assert store.claim("d-1", now=1000.0) and not store.claim("d-1", now=1000.0 + 599)
    # a delivery stamped 300 s ahead passes the age check until 600 s after it was first seen
    assert store.claim("d-1", now=1000.0 + 601)
    with sqlite3.connect(tmp_path / "d.sqlite3") as db:
        assert db.execute("SELECT id, first_seen FROM deliveries").fetchall() == [("d-1", 1601.0)]


def test_a_delivery_whose_trigger_failed_can_be_retried(tmp_path):
    outcomes = iter([RuntimeError("prefect is down"), None])

    def on_new_version(name, version):
        if (failure := next(outcomes)) is not None:
            raise failure

    receiver = WebhookReceiver(SECRET, on_new_version, port=0, replay_db=tmp_path / "d.sqlite3").start()
    try:
        body = json.dumps(EVENT).encode()
        headers = signed(body, delivery="d-retried")
        assert post(receiver.port, body, headers) == (503, "trigger failed: RuntimeError")
        assert post(receiver.port, body, headers) == (202, "audit of credit v7 requested")  # MLflow's retry: same id
        assert post(receiver.port, body, headers) == (401, "replayed delivery")
    finally:
        receiver.stop()


def test_an_unusable_store_is_one_clear_error(tmp_path):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ConfigError) as caught:
        WebhookReceiver(SECRET, lambda n, v: None, port=0, replay_db=tmp_path / "a-file" / "d.sqlite3")
    assert "replay store" in caught.value.problem and "webhook.replay_db" in caught.value.fix


def test_where_the_replay_store_lives(tmp_path, monkeypatch):
    deployments = tmp_path / "conf" / "deployments.yaml"
    monkeypatch.setenv("AUDITLENS_STATE_DIR", str(tmp_path / "home"))
    assert Webhook().replay_store(deployments) == tmp_path / "home" / "webhook-deliveries.sqlite3"
    monkeypatch.delenv("AUDITLENS_STATE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert Webhook().replay_store(deployments) == tmp_path / "user" / ".auditlens" / "webhook-deliveries.sqlite3"
    assert Webhook(replay_db="state/d.sqlite3").replay_store(deployments) == tmp_path / "conf" / "state" / "d.sqlite3"
    assert Webhook(replay_db="/srv/d.sqlite3").replay_store(deployments) == Path("/srv/d.sqlite3")
    with pytest.raises(ValidationError):
        Webhook(read_timeout_s=0)


@pytest.mark.parametrize(
    "head, status",
    [("GET /mlflow HTTP/1.1\r\nHost: 127.0.0.1", 501), ("POST /mlflow HTTP/9", 400),
     ("POST /mlflow HTTP/1.1\r\n" + "X-Pad: a\r\n" * 101 + "Host: 127.0.0.1", 431)],
    ids=["get", "bad-version", "too-many-headers"],
)
def test_http_servers_own_refusals_are_json_too(tmp_path, head, status):
    receiver = receiver_on(tmp_path, read_timeout_s=5)
    try:
        answer_status, message, headers = exchange(receiver.port, head)
        assert (answer_status, headers["Content-Type"]) == (status, "application/json") and message
    finally:
        receiver.stop()
