"""The resident auditor, as a user runs it: `auditlens resident --detach`, then `auditlens audit` commands that hand it
their audits. What it records must be what the command records in its own process (the same verdicts, figures and
confinement of the model), its bad-input answers the same messages and exit codes; it must refuse a command whose
environment differs, stop on --stop, and leave nothing behind when it dies."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from tasks.adapters.tracking import make_client
from tests.helpers import build_world, figures, same, wait_for, write_config

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_harness")]

AUDITLENS = Path(sys.executable).parent / "auditlens"
PLAN = [{"audit": "performance"}, {"audit": "drift"}, {"audit": "shap", "config": {"rows": 40}}]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def commands(tmp_path):
    """Run `auditlens ...` with a private state folder (short: a Unix socket's path has 107 bytes) and the harness's
    Prefect API; every resident started is stopped, or killed, at the end."""
    from prefect.settings import PREFECT_API_URL

    state = Path(tempfile.mkdtemp(prefix="al-res-"))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")},
           "PREFECT_API_URL": PREFECT_API_URL.value(), "AUDITLENS_STATE_DIR": str(state), "COLUMNS": "200"}
    started: list[int] = []

    def run(*args: str, cwd: Path = tmp_path, extra_env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        done = subprocess.run([str(AUDITLENS), *args], env={**env, **(extra_env or {})}, cwd=cwd, capture_output=True,
                              text=True, timeout=timeout)
        found = re.search(r"Resident auditor started: pid (\d+)", done.stdout)
        if found:
            started.append(int(found.group(1)))
        return done

    run.state, run.started = state, started
    yield run
    for pid in started:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_the_resident_records_what_the_command_records_answers_bad_input_alike_and_leaves_nothing(tmp_path, commands):
    world = build_world(tmp_path / "world")
    config = write_config(world.folder, world.tracking_uri, name="plan.yaml", audits=PLAN)
    audit = ("audit", "--model", "models:/e2e-model/1", "--fail-on", "never")

    started = commands("resident", "--detach", "--idle-minutes", "5", timeout=180)
    assert started.returncode == 0, started.stdout + started.stderr
    pid = commands.started[0]
    socket = commands.state / "resident" / "auditor.sock"
    assert socket.exists() and oct(socket.parent.stat().st_mode & 0o777) == "0o700"

    here = commands(*audit, "--config", str(config), "--no-resident", "--no-cache")
    assert here.returncode == 0, here.stdout + here.stderr
    assert "Audited by the resident" not in here.stdout
    # a relative config, from its own folder: the resident audits from the command's folder
    there = commands(*audit, "--config", "plan.yaml", "--no-cache", cwd=world.folder)
    assert there.returncode == 0, there.stdout + there.stderr
    assert f"Audited by the resident auditor (pid {pid})" in there.stdout
    assert "[3/3]" in there.stdout  # the command drew the resident's progress, a line per audit ended
    verdicts = [line for line in here.stdout.splitlines() if line.startswith("│")]
    assert verdicts and verdicts == [line for line in there.stdout.splitlines() if line.startswith("│")]

    client = make_client(world.tracking_uri)
    experiment = client.get_experiment_by_name("auditlens/e2e-model").experiment_id
    first, second = client.search_runs([experiment], order_by=["attributes.start_time ASC"])
    assert second.info.status == "FINISHED" and second.data.tags["audit.verdict"] == first.data.tags["audit.verdict"]
    assert same(figures(first), figures(second))
    # the model ran in its confined process there too, not in the resident, which holds the credentials
    confinement = [re.sub(r"process-\w+", "process-*", run.data.params["isolation.filesystem"]) for run in (first, second)]
    assert confinement[0] == confinement[1] and not confinement[1].startswith("not started")  # each audit has its own folder
    assert second.data.params["config.hash"] == first.data.params["config.hash"]

    again = commands(*audit, "--config", str(config))
    assert again.returncode == 0 and "3 of 3 results reused" in again.stdout, again.stdout + again.stderr

    # bad input: the same message and exit code as in the command's own process, and no run
    broken = world.folder / "broken.yaml"
    broken.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), "data": {
        "reference": "reference.csv", "current": "current.csv", "target": "no_such_column"}}))
    answers = [commands(*audit, "--config", str(broken), *flag) for flag in ((), ("--no-resident",))]
    assert [a.returncode for a in answers] == [2, 2]
    # (the command's own process may add a library's warning to its stderr; the resident's answer is all in it)
    assert "no_such_column" in answers[0].stderr and answers[0].stderr.strip() in answers[1].stderr
    unknown = [commands("audit", "--model", "models:/e2e-model/9", "--config", str(config), *flag) for flag in ((), ("--no-resident",))]
    assert [a.returncode for a in unknown] == [2, 2] and "e2e-model" in unknown[0].stderr
    assert unknown[0].stderr.strip() in unknown[1].stderr
    assert len(client.search_runs([experiment])) == 3

    # another environment: refused, by the variable's name (never its value), and audited in the command's process
    other = commands(*audit, "--config", str(config), "--no-cache", extra_env={"MLFLOW_HTTP_REQUEST_TIMEOUT": "77"})
    assert other.returncode == 0, other.stdout + other.stderr
    assert "did not take this audit" in other.stderr and "MLFLOW_HTTP_REQUEST_TIMEOUT" in other.stderr and "77" not in other.stderr
    assert "Audited by the resident" not in other.stdout

    status = commands("resident", "--status")
    assert status.returncode == 0 and f"pid {pid}" in status.stdout and "4 audit(s) served" in status.stdout, status.stdout

    stopped = commands("resident", "--stop")
    assert stopped.returncode == 0 and f"Stopped: pid {pid}" in stopped.stdout
    wait_for(lambda: not alive(pid), timeout=30)
    assert not socket.exists()
    assert commands("resident", "--status").returncode == 1

    # one that dies leaves its socket: the command audits alone, saying nothing of it, and a new one starts there
    assert commands("resident", "--detach", "--idle-minutes", "0.1", timeout=180).returncode == 0
    died = commands.started[-1]
    assert commands("resident", "--detach", timeout=180).returncode == 2  # one per state folder
    os.kill(died, signal.SIGKILL)
    wait_for(lambda: not alive(died), timeout=30)
    assert socket.exists()  # left behind: nobody listens on it
    alone = commands(*audit, "--config", str(config))
    assert alone.returncode == 0 and "3 of 3 results reused" in alone.stdout, alone.stdout + alone.stderr
    assert "resident auditor" not in alone.stdout + alone.stderr
    assert commands("resident", "--status").returncode == 1
    restarted = commands("resident", "--detach", "--idle-minutes", "0.05", timeout=180)
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    successor = commands.started[-1]
    assert successor not in (pid, died)
    wait_for(lambda: not alive(successor), timeout=60)  # three idle seconds, then it stops itself
    assert not socket.exists()
