"""An `auditlens audit` process killed outright (SIGKILL: an OOM kill, a lost container) ends nothing: its MLflow run
stays RUNNING and its version says running. Its heartbeat stops, and that alone is the evidence: the watcher's pass,
and `auditlens doctor --repair` where no watcher runs, end the run KILLED with the reason and mark the version failed,
and the verdict of the audit before it is never left beside that state as if it were current.

Real processes against a SQLite store built by ``build_world``; they share the test session's Prefect API."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tasks.adapters.mlflow_sink import MlflowSink
from tasks.adapters.tracking import make_client
from tests.helpers import build_world, runs_with_status, wait_for, write_config

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_harness")]

AUDITLENS = Path(sys.executable).parent / "auditlens"
HEARTBEAT_S = 1
MODEL = "models:/e2e-model/1"
# four bootstrap ensembles of 200 clones each: about 40 s of CPU on this machine, killed a couple of seconds in
SLOW_PLAN = [{"audit": "disagreement", "id": f"slow_{i}", "config": {"members": 200}} for i in range(4)]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    world = build_world(tmp_path_factory.mktemp("killed-world"))
    write_config(world.folder, world.tracking_uri, name="quick.yaml", audits=[{"audit": "performance"}])
    write_config(world.folder, world.tracking_uri, name="slow.yaml", audits=SLOW_PLAN,
                 mlflow={"tracking_uri": world.tracking_uri, "heartbeat_s": HEARTBEAT_S})
    return world


@pytest.fixture(scope="module")
def cli_env(prefect_harness):
    from prefect.settings import PREFECT_API_URL

    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_TRACKING")}
    return {**env, "PREFECT_API_URL": PREFECT_API_URL.value(), "COLUMNS": "200"}


def utc(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def auditlens(cli_env, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(AUDITLENS), *args], env=cli_env, cwd=cwd, capture_output=True, text=True, timeout=300)


def version_tags(world) -> dict:
    return make_client(world.tracking_uri).get_model_version("e2e-model", "1").tags


def audited(world, cli_env, cwd: Path) -> str:
    """A complete audit of v1 first: the version carries its verdict when the next audit starts."""
    done = auditlens(cli_env, cwd, "audit", "--model", MODEL, "--config", str(world.folder / "quick.yaml"), "--fail-on", "never")
    assert done.returncode == 0, done.stdout + done.stderr
    tags = version_tags(world)
    assert tags["audit.status"] == "done"
    return tags["audit.verdict"]


def killed_mid_audit(world, cli_env, cwd: Path, previous_verdict: str) -> tuple[str, float]:
    """Start the slow audit, wait until its run beats, SIGKILL the process: (the run id, its last heartbeat)."""
    client = make_client(world.tracking_uri)
    before = {r.info.run_id for r in runs_with_status(client, "RUNNING")}
    with open(cwd / "audit.log", "w") as log:
        process = subprocess.Popen([str(AUDITLENS), "audit", "--model", MODEL, "--config", str(world.folder / "slow.yaml")],
                                   env=cli_env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    try:
        def opened():
            fresh = [r for r in runs_with_status(client, "RUNNING") if r.info.run_id not in before]
            return fresh[0] if fresh else None

        run = wait_for(opened, 240, 0.2)
        # audit.status is written last: once it says running, the state it names is complete
        tags = wait_for(lambda: (t := version_tags(world)).get("audit.status") == "running" and t, 30, 0.2)
        assert tags["audit.run_id"] == run.info.run_id  # while it runs: the version names this audit...
        assert "audit.verdict" not in tags and tags["audit.previous_verdict"] == previous_verdict  # ...and no earlier verdict
        # the thread beats on its own, beyond the beat written as the audit starts
        first = float(wait_for(lambda: client.get_run(run.info.run_id).data.tags.get("audit.heartbeat_at"), 30, 0.2))
        wait_for(lambda: float(client.get_run(run.info.run_id).data.tags["audit.heartbeat_at"]) > first, 30, 0.2)
        assert client.get_run(run.info.run_id).data.tags["audit.heartbeat_s"] == str(HEARTBEAT_S)
        assert process.poll() is None, (cwd / "audit.log").read_text()  # mid-audit: the plan is far from done
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
    assert process.returncode == -signal.SIGKILL
    after = client.get_run(run.info.run_id)
    assert (after.info.status, after.info.end_time) == ("RUNNING", None)  # nobody ended it: it was killed outright
    assert version_tags(world)["audit.status"] == "running"
    return run.info.run_id, float(after.data.tags["audit.heartbeat_at"])


def until_dead(last_beat: float) -> None:
    """4 missed beats make a run dead; wait a little past that."""
    time.sleep(max(0.0, last_beat + 4 * HEARTBEAT_S + 1.5 - time.time()))


def assert_repaired(world, run_id: str, last_beat: float, previous_verdict: str) -> None:
    client = make_client(world.tracking_uri)
    run = client.get_run(run_id)
    assert run.info.status == "KILLED" and run.info.end_time is not None
    error = run.data.tags["audit.error"]
    assert error.startswith(f"the audit process stopped: its last heartbeat was at {utc(last_beat)}, ")
    assert error.endswith(f"(it beats every {HEARTBEAT_S} s)")
    assert run.data.tags["audit.status"] == "failed"
    tags = version_tags(world)
    assert (tags["audit.status"], tags["audit.run_id"], tags["audit.error"]) == ("failed", run_id, error)
    assert "audit.verdict" not in tags and tags["audit.previous_verdict"] == previous_verdict
    assert runs_with_status(client, "RUNNING") == []


def test_the_watcher_repairs_an_audit_whose_process_was_killed(world, cli_env, tmp_path):
    previous = audited(world, cli_env, tmp_path)
    run_id, last_beat = killed_mid_audit(world, cli_env, tmp_path, previous)
    until_dead(last_beat)
    from flows.watch_registry import settle_audits
    # the watcher's pass, in this process; its flow run (killed too) still says RUNNING in Prefect: no help there
    dead = settle_audits(make_client(world.tracking_uri), MlflowSink(world.tracking_uri), "e2e-model", stale_after_s=3600)
    assert [(d.version, d.run_id, d.end_run_as) for d in dead] == [("1", run_id, "KILLED")]
    assert_repaired(world, run_id, last_beat, previous)
    assert settle_audits(make_client(world.tracking_uri), MlflowSink(world.tracking_uri), "e2e-model", stale_after_s=3600) == []


def test_auditlens_doctor_repairs_an_audit_whose_process_was_killed(world, cli_env, tmp_path):
    previous = audited(world, cli_env, tmp_path)
    run_id, last_beat = killed_mid_audit(world, cli_env, tmp_path, previous)
    until_dead(last_beat)
    uri = world.tracking_uri

    found = auditlens(cli_env, tmp_path, "doctor", "--tracking-uri", uri)
    assert found.returncode == 1, found.stdout + found.stderr
    run_line, version_line = found.stdout.splitlines()
    assert run_line.startswith(f"run {run_id} (e2e-model v1): RUNNING, but the audit process stopped: its last heartbeat "
                               f"was at {utc(last_beat)}, ")
    assert run_line.endswith("; not repaired (--repair would end the run KILLED with that reason)")
    assert version_line.startswith(f"version e2e-model v1: says running, but its run {run_id} is dead: the audit process stopped")
    assert make_client(uri).get_run(run_id).info.status == "RUNNING"  # only looked

    repaired = auditlens(cli_env, tmp_path, "doctor", "--tracking-uri", uri, "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    run_line, version_line = repaired.stdout.splitlines()
    assert run_line.endswith("; repaired: end the run KILLED with that reason")
    assert version_line == (f"version e2e-model v1: says running, but its run {run_id} ended KILLED; "
                            "repaired: mark it failed, as its run says")
    assert_repaired(world, run_id, last_beat, previous)

    healthy = auditlens(cli_env, tmp_path, "doctor", "--tracking-uri", uri)
    assert healthy.returncode == 0 and healthy.stdout.startswith("healthy: "), healthy.stdout + healthy.stderr
