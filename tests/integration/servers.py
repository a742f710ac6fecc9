"""Real servers for integration tests, on 127.0.0.1 and free ports, each bounded in time and stopped by the test.

- ``MlflowServer``: one ``mlflow server`` (SQLite store, proxied artifacts) that can be stopped and started again
  on the same port and store (an outage), waiting for its whole process group (uvicorn, the job runner's huey
  consumers) to exit and for the port to be free.
- ``AutoStack``: the production topology of ``auditlens up`` (``tasks.adapters.local_servers.LocalStack``: an
  MLflow server with webhooks enabled, a Prefect server, ``auditlens serve --webhook``), with a Prefect
  scheduler loop short enough for a test, and a check that nothing is left running once it stops.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from tasks.adapters.local_servers import LocalStack, healthy

STARTUP_TIMEOUT_S = 120  # an mlflow server takes 10-15 s to answer on this 2-core machine; a Prefect server ~15 s
STOP_TIMEOUT_S = 30
BENCH = Path(__file__).resolve().parents[2] / "bench" / "out" / "integration_timings.json"  # git-ignored


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def wait_for(predicate, timeout: float, interval: float = 0.5, what: str = "condition"):
    """The predicate's first truthy value, or TimeoutError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not met within {timeout:g} s")
        time.sleep(interval)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user reuses the id: not ours
        return False
    return True


def stop_group(process: subprocess.Popen, grace_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the process group of ``process`` (started with start_new_session), SIGKILL what is left after
    ``grace_s``; return once the leader is reaped and no process of the group remains."""
    pgid = process.pid
    if process.poll() is None or group_alive(pgid):
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    try:
        process.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if group_alive(pgid) or process.poll() is None:
        os.killpg(pgid, signal.SIGKILL)
        process.wait(timeout=10)
        wait_for(lambda: not group_alive(pgid), timeout=10, interval=0.1, what=f"process group {pgid} gone")


def log_tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


class MlflowServer:
    """``mlflow server`` on 127.0.0.1:``port`` over ``folder``/mlflow.db, restartable on the same port and store."""

    def __init__(self, folder: Path, port: int | None = None, env: dict[str, str] | None = None) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", **(env or {})}
        self.process: subprocess.Popen | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.folder / f"mlflow-server-{self.starts}.log"

    def start(self, timeout_s: float = STARTUP_TIMEOUT_S) -> float:
        """Start and wait until /health answers; the seconds it took."""
        assert self.process is None or self.process.poll() is not None, "already running"
        wait_for(lambda: port_free(self.port), timeout=STOP_TIMEOUT_S, what=f"port {self.port} free")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        began = time.monotonic()
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [str(Path(sys.executable).parent / "mlflow"), "server",
                 "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
                 "--artifacts-destination", str(self.folder / "mlartifacts"),
                 "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=self.env,
            )  # fmt: skip
        deadline = began + timeout_s
        while not healthy(f"{self.url}/health"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mlflow server did not start within {timeout_s:g} s:\n{log_tail(self.log)}")
            time.sleep(0.25)
        return time.monotonic() - began

    def stop(self, grace_s: float = STOP_TIMEOUT_S) -> float:
        """Stop the whole process group and wait for the port to be free; the seconds it took."""
        began = time.monotonic()
        if self.process is not None:
            stop_group(self.process, grace_s)
        wait_for(lambda: port_free(self.port), timeout=grace_s, interval=0.1, what=f"port {self.port} free")
        return time.monotonic() - began

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class AutoStack:
    """``auditlens up`` for a test: LocalStack's servers and environment on free ports, its ``serve --webhook``,
    plus a short Prefect scheduler loop (``PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS``; the default is 60 s)
    and MLflow's webhook cache at 1 s."""

    def __init__(self, store: Path, state: Path, scheduler_loop_s: int = 5) -> None:
        self.local = LocalStack(store, state, free_port(), free_port())
        self.env = {
            **self.local.environment(),
            "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": str(scheduler_loop_s),
            # MLflow caches each event's webhook list for 60 s: a webhook created (or deleted) within a minute of
            # the last delivery attempt would be ignored (or still called) that long; tests toggle it at once
            "MLFLOW_WEBHOOK_CACHE_TTL": "1",
            "PREFECT_API_URL": "",  # the servers' own; `serve` gets the stack's below (LocalStack.start_serve)
            "MLFLOW_TRACKING_URI": "",
        }
        self.env = {k: v for k, v in self.env.items() if v != ""}
        self.groups: list[subprocess.Popen] = []
        self.timings: dict[str, float] = {}

    @property
    def mlflow_url(self) -> str:
        return self.local.mlflow_url

    @property
    def prefect_api(self) -> str:
        return self.local.prefect_api

    @property
    def serve_log(self) -> Path:
        return self.local.state / "serve.log"

    @property
    def webhook_secret(self) -> str:
        return self.env["AUDITLENS_WEBHOOK_SECRET"]

    def start_servers(self, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        began = time.monotonic()
        try:
            self.local.start_servers(self.env, timeout_s)
        finally:
            self.groups = list(self.local.processes)
        self.timings["servers_start_s"] = time.monotonic() - began

    def start_serve(self, deployments: Path, webhook_port: int, expected: list[str], timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        """Start ``auditlens serve --webhook`` and wait until the webhook port answers and ``expected``
        deployments ("flow/deployment") exist in the Prefect server."""
        began = time.monotonic()
        process = self.local.start_serve(self.env, deployments)
        self.groups = list(self.local.processes)
        deadline = began + timeout_s

        def ready() -> bool:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"auditlens serve did not come up:\n{log_tail(self.serve_log)}")
            if port_free(webhook_port):
                return False
            return all(find_deployment(self, name) is not None for name in expected)

        wait_for(ready, timeout=timeout_s + 5, what="auditlens serve ready")
        self.timings["serve_start_s"] = time.monotonic() - began

    @contextmanager
    def prefect(self):
        """This process's Prefect client settings pointed at the stack's server (contexts do not cross threads:
        enter this in each thread that talks to Prefect)."""
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: self.prefect_api}):
            yield

    def stop(self) -> None:
        self.local.stop()
        for process in self.groups:  # LocalStack waits for each leader; the groups' children must be gone too
            stop_group(process, grace_s=STOP_TIMEOUT_S)
        for port in (self.local.mlflow_port, self.local.prefect_port):
            wait_for(lambda port=port: port_free(port), timeout=STOP_TIMEOUT_S, what=f"port {port} free")
        left = [p.pid for p in self.groups if group_alive(p.pid)]
        assert not left, f"process groups left running: {left}"


def find_deployment(stack: AutoStack, name: str):
    """The deployment "flow/deployment" in the stack's Prefect server, or None."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with stack.prefect(), get_client(sync_client=True) as client:
        try:
            return client.read_deployment_by_name(name)
        except ObjectNotFound:
            return None


def record_timing(key: str, value) -> None:
    """Keep a measured delay for the notes: bench/out/integration_timings.json (git-ignored)."""
    BENCH.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(BENCH.read_text()) if BENCH.exists() else {}
    load = round(os.getloadavg()[0], 1)  # this machine is shared: the load says how far to trust a delay
    data[key] = {"value": value, "load_avg_1m": load}
    BENCH.write_text(json.dumps(data, indent=2, sort_keys=True))
    print(f"[timing] {key} = {value} (load average {load})")
