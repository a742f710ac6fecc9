"""`auditlens doctor` against a real `mlflow server` on 127.0.0.1 (started and stopped here): the same findings and
repairs as on a SQLite file, through the REST API (runs searched across experiments, versions across the registry)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.adapters.tracking import make_client
from tests.integration.servers import MlflowServer

pytestmark = pytest.mark.integration

AUDITLENS = Path(sys.executable).parent / "auditlens"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("doctor-server"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def doctor(url: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_TRACKING")}
    return subprocess.run([str(AUDITLENS), "doctor", "--tracking-uri", url, *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_doctor_finds_and_repairs_a_killed_audit_through_a_server(server, tmp_path):
    client = make_client(server)
    client.create_registered_model("served")
    experiment = client.create_experiment("auditlens/served")
    tags = {"auditlens.audit_key": "prefect:f1", "auditlens.model_name": "served", "auditlens.model_version": "1",
            "audit.status": "running", "audit.heartbeat_s": "30", "audit.heartbeat_at": f"{time.time() - 300:.1f}"}
    dead = client.create_run(experiment, tags=tags).info.run_id  # its last beat 300 s ago: 10 beats missed
    alive = client.create_run(experiment, tags={**tags, "auditlens.audit_key": "prefect:f2",
                                                 "audit.heartbeat_at": f"{time.time():.1f}"}).info.run_id
    source = f"{client.get_run(dead).info.artifact_uri}/model"  # the server accepts only a source its run holds
    version = str(client.create_model_version("served", source=source, run_id=dead, tags={
        "audit.status": "running", "audit.run_id": dead, "audit.prefect_flow_run_id": "f1", "audit.verdict": "PASS"}).version)

    found = doctor(server, tmp_path)
    assert found.returncode == 1, found.stdout + found.stderr
    assert [line.split(":")[0] for line in found.stdout.splitlines()] == [f"run {dead} (served v1)", f"version served v{version}"]
    assert "Traceback" not in found.stderr

    repaired = doctor(server, tmp_path, "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert all("; repaired: " in line for line in repaired.stdout.splitlines())
    run = client.get_run(dead)
    assert run.info.status == "KILLED" and "its last heartbeat was at" in run.data.tags["audit.error"]
    tags = client.get_model_version("served", version).tags
    assert (tags["audit.status"], tags["audit.error"]) == ("failed", run.data.tags["audit.error"])
    # written by an auditlens from before this protocol: a stale verdict beside 'running', on the killed run's id.
    # Which run it came from is lost, so it goes rather than being filed under the wrong run's name.
    assert "audit.verdict" not in tags and "audit.previous_verdict" not in tags
    assert client.get_run(alive).info.status == "RUNNING"  # beating: left alone

    healthy = doctor(server, tmp_path)
    assert healthy.returncode == 0 and healthy.stdout.startswith("healthy: "), healthy.stdout + healthy.stderr
