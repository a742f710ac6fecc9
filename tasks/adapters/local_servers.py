"""The production topology on one machine, for a laptop: an MLflow server on the demo's store (with
webhooks enabled for a local receiver), a Prefect server, and `auditlens serve` with the webhook
receiver. Every process binds to 127.0.0.1, runs in its own process group, and is stopped together.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tasks.adapters.errors import TrackingServerError


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def wait_until(url: str, process: subprocess.Popen, timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while not healthy(url):
        if process.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise TrackingServerError(f"{url} did not come up within {timeout_s:g} s (log {log}):\n{tail}",
                                      "read the log above; is the port already taken?")
        time.sleep(0.5)


def persistent_secret(path: Path, make) -> str:
    if not path.exists():
        path.write_text(make())
        path.chmod(0o600)
    return path.read_text().strip()


@dataclass
class LocalStack:
    store: Path  # the folder holding mlflow.db (the demo's workdir)
    state: Path  # where logs, keys and Prefect's database live
    mlflow_port: int = 5000
    prefect_port: int = 4200
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def prefect_api(self) -> str:
        return f"http://127.0.0.1:{self.prefect_port}/api"

    def environment(self) -> dict[str, str]:
        from cryptography.fernet import Fernet

        self.state.mkdir(parents=True, exist_ok=True)
        fernet = persistent_secret(self.state / "webhook-encryption.key", lambda: Fernet.generate_key().decode())
        secret = os.environ.get("AUDITLENS_WEBHOOK_SECRET") or persistent_secret(self.state / "webhook.secret",
                                                                                 lambda: secrets.token_hex(24))
        return {
            **os.environ,
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_HOME": str(self.state / "prefect"),
            # deployment concurrency leases on disk (in PREFECT_HOME), not in memory: a restarted server then
            # finds a dead run's lease, lets it expire and frees the watcher's slot
            "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect.server.concurrency.lease_storage.filesystem",
            # a local receiver: MLflow only delivers to https and public addresses unless told otherwise
            "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
            "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
            "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": fernet,  # stable, or webhook secrets die with the process
            "AUDITLENS_WEBHOOK_SECRET": secret,
        }

    def _start(self, name: str, command: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, Path]:
        log = self.state / f"{name}.log"
        process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.processes.append(process)
        return process, log

    def start_servers(self, env: dict[str, str], timeout_s: float = 180) -> None:
        bin_dir = Path(sys.executable).parent
        mlflow, mlflow_log = self._start("mlflow-server", [
            str(bin_dir / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.store / 'mlflow.db'}",
            "--artifacts-destination", str(self.store / "mlartifacts" / "served"),
            "--host", "127.0.0.1", "--port", str(self.mlflow_port), "--workers", "1",
        ], env)  # fmt: skip
        prefect, prefect_log = self._start("prefect-server", [
            str(bin_dir / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(self.prefect_port),
        ], env)  # fmt: skip
        wait_until(f"{self.mlflow_url}/health", mlflow, timeout_s, mlflow_log)
        wait_until(f"{self.prefect_api}/health", prefect, timeout_s, prefect_log)

    def start_serve(self, env: dict[str, str], deployments: Path) -> subprocess.Popen:
        command = [str(Path(sys.executable).parent / "auditlens"), "serve", "--deployments", str(deployments),
                   "--tracking-uri", self.mlflow_url, "--webhook"]
        # the runner looks for runs to start every 10 s by default; a triggered audit should not wait that long
        process, _ = self._start("serve", command, {**env, "PREFECT_API_URL": self.prefect_api, "PREFECT_RUNNER_POLL_FREQUENCY": "2"})
        return process

    def stop(self, grace_s: float = 20) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        self.processes.clear()
