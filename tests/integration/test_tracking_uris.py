"""Tracking URIs against real servers on 127.0.0.1: a real ``mlflow server`` reached with credentials in every
spelling (the plain server accepts any basic-auth credentials, which is what is needed here), a stub that records
what arrives, and stubs that answer 401/403/404/500 or never answer, each bounded in time and stopped.

The stub servers here are also used by tests/e2e/test_cli_tracking_uris.py."""

from __future__ import annotations

import base64
import http.server
import json
import socket
import threading
import time
from contextlib import contextmanager

import pytest

from tasks.adapters.errors import TrackingServerError
from tasks.adapters.tracking import HEALTH_TIMEOUT_S, check_reachable, make_client
from tests.integration.servers import MlflowServer

pytestmark = [pytest.mark.integration]

# (userinfo as written in the URI, the password the server must receive)
CREDENTIALS = {
    "plain": ("alice:pass", "pass"),
    "at-sign": ("alice:Tr1@lPW55", "Tr1@lPW55"),
    "slash": ("alice:pa/ss", "pa/ss"),
    "percent-encoded": ("alice:p%40ss%2Fw0rd", "p@ss/w0rd"),
    "colon-hash-question": ("alice:a:b#c?d", "a:b#c?d"),
}


@contextmanager
def http_stub(status: int = 200, body: bytes = b"OK", seen: list | None = None, api_status: int | None = None):
    """A stdlib HTTP server on 127.0.0.1 answering every GET and POST with ``status`` and ``body`` (paths under
    /api/ with ``api_status`` when given); each request's (path, Host header, decoded basic-auth credentials)
    goes to ``seen``. Yields its port; stopped on exit."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            auth = self.headers.get("Authorization", "")
            credentials = base64.b64decode(auth.split()[1]).decode() if auth.startswith("Basic ") else None
            if seen is not None:
                seen.append((self.path, self.headers.get("Host"), credentials))
            self.send_response(api_status if api_status and self.path.startswith("/api/") else status)
            self.send_header("Content-Type", "application/json" if body.startswith(b"{") else "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = answer

        def log_message(self, *args) -> None:  # keep the test output for the test
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextmanager
def silent_server():
    """A server on 127.0.0.1 that accepts connections and never answers. Yields its port; stopped on exit."""
    listening = socket.create_server(("127.0.0.1", 0))
    listening.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(listening.accept()[0])  # read nothing, answer nothing
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listening.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=10)
        listening.close()
        for connection in held:
            connection.close()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("tracking-uris-server"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
    assert not server.running


@pytest.mark.parametrize("form", sorted(CREDENTIALS))
def test_a_credentialed_uri_reaches_a_real_server_and_the_client_works(mlflow_server, form):
    userinfo, _ = CREDENTIALS[form]
    uri = f"http://{userinfo}@127.0.0.1:{mlflow_server.port}"
    check_reachable(uri)
    client = make_client(uri)
    name = f"tracking-uri-{form}"
    experiment_id = client.create_experiment(name)
    assert client.get_experiment(experiment_id).name == name
    assert client.get_experiment_by_name(name).experiment_id == experiment_id


@pytest.mark.parametrize("form", sorted(CREDENTIALS))
def test_the_credentials_arrive_as_basic_auth_exactly(form):
    """What the server receives, from the check and from MlflowClient alike: the decoded password as HTTP basic
    auth, and nothing of it in the request line or the Host header."""
    userinfo, password = CREDENTIALS[form]
    seen: list = []
    experiment = {"experiment": {"experiment_id": "7", "name": "x", "lifecycle_stage": "active"}}
    with http_stub(body=json.dumps(experiment).encode(), seen=seen) as port:
        uri = f"http://{userinfo}@127.0.0.1:{port}"
        check_reachable(uri)
        assert make_client(uri).get_experiment("7").name == "x"
    assert [s[0].split("?")[0] for s in seen] == ["/health", "/api/2.0/mlflow/experiments/search", "/api/2.0/mlflow/experiments/get"]
    assert {s[1] for s in seen} == {f"127.0.0.1:{port}"}
    assert {s[2] for s in seen} == {f"alice:{password}"}


@pytest.mark.parametrize(
    "status, words",
    [
        (500, ["answered 500 Internal Server Error on /health", "is failing"]),
        (401, ["answered 401 Unauthorized on /health", "refused the credentials"]),
        (403, ["answered 403 Forbidden on /health"]),
        (404, ["answered 404 Not Found on /health", "no MLflow tracking server"]),
    ],
)
def test_a_server_that_answers_an_error_is_named_in_one_line(status, words):
    with http_stub(status=status, body=b"no") as port:
        uri = f"http://alice:Tr1@lPW55@127.0.0.1:{port}"
        began = time.monotonic()
        with pytest.raises(TrackingServerError) as raised:
            check_reachable(uri)
        elapsed = time.monotonic() - began
    assert elapsed < 3  # answered at once: no retries
    error = raised.value
    assert "\n" not in error.problem and error.problem.startswith(f"MLflow tracking server http://***@127.0.0.1:{port} ")
    for word in words:
        assert word in error.problem
    assert "lPW55" not in str(error) and "Tr1" not in str(error)
    if status == 403:
        assert "--allowed-hosts" in error.fix
    if status == 401:
        assert "MLFLOW_TRACKING_USERNAME" in error.fix


def test_a_server_that_never_answers_is_named_within_the_health_timeout():
    with silent_server() as port:
        began = time.monotonic()
        with pytest.raises(TrackingServerError) as raised:
            check_reachable(f"http://alice:pa/ss@127.0.0.1:{port}")
        elapsed = time.monotonic() - began
    assert HEALTH_TIMEOUT_S == 5
    assert HEALTH_TIMEOUT_S - 0.5 <= elapsed < HEALTH_TIMEOUT_S + 3, elapsed
    assert raised.value.problem == f"MLflow tracking server http://***@127.0.0.1:{port} did not answer within 5 s (GET /health)"
    assert "pa/ss" not in str(raised.value)


def test_credentials_refused_by_the_api_are_named_before_anything_runs():
    """MLflow's basic-auth app answers /health without credentials and the API with 401 for wrong ones."""
    seen: list = []
    with http_stub(status=200, api_status=401, seen=seen) as port:
        with pytest.raises(TrackingServerError) as raised:
            check_reachable(f"http://alice:Wr0ngPw@127.0.0.1:{port}")
    assert raised.value.problem == (f"MLflow tracking server http://***@127.0.0.1:{port} answered 401 Unauthorized on "
                                    "/api/2.0/mlflow/experiments/search: it refused the credentials")
    assert "MLFLOW_TRACKING_PASSWORD" in raised.value.fix and "Wr0ngPw" not in str(raised.value)
    assert [s[2] for s in seen] == ["alice:Wr0ngPw", "alice:Wr0ngPw"]
