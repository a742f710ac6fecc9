"""The webhook receiver accepts exactly what MLflow signs, and nothing else."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from tasks.adapters.webhook import DELIVERY, SIGNATURE, TIMESTAMP, WebhookReceiver, signature, verify

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


def post(port: int, body: bytes, headers: dict[str, str], path: str = "/mlflow") -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())["message"]
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())["message"]


def test_the_receiver_over_http_triggers_once_per_authentic_delivery():
    calls = []
    receiver = WebhookReceiver(SECRET, lambda name, version: calls.append((name, version)), port=0).start()
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


def test_a_receiver_without_a_secret_refuses_to_start():
    with pytest.raises(ValueError, match="secret is empty"):
        WebhookReceiver("", lambda n, v: None, port=0)
