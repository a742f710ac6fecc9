"""The local Prefect server that `auditlens audit` starts and reuses when no PREFECT_API_URL is set: found again by
the next command, replaced when stale, started once by concurrent commands, stopped by `prefect-server stop` and
by itself when idle. Real processes: the CLI, the supervisor and uvicorn; each test has its own AUDITLENS_STATE_DIR
and stops every server it started."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tasks.adapters.prefect_local import LocalPrefectServer, ServerState, expected_version
from tests.helpers import build_world, wait_for, write_config

pytestmark = pytest.mark.e2e

AUDITLENS = Path(sys.executable).parent / "auditlens"
TEMPORARY = "Starting temporary server"  # what Prefect logs when a flow call starts its ephemeral server
STARTING = "Starting the local Prefect server"  # what auditlens says when it starts its own


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    world = build_world(tmp_path_factory.mktemp("local-prefect-world"))
    return world, write_config(world.folder, world.tracking_uri, name="performance.yaml", audits=[{"audit": "performance"}])


def supervisors(state_dir: Path) -> list[int]:
    """Every process that is the supervisor of a server for this state folder (whatever any state file says)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            words = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"tasks.adapters.prefect_local" in words and [b"--state-dir", str(state_dir).encode()] in map(list, zip(words, words[1:])):
            found.append(int(cmdline.parent.name))
    return found


def running_in(folder: Path) -> list[int]:
    """Every process whose working directory is ``folder``: the supervisors and uvicorns of a state folder run in
    its prefect-server/, an orphaned uvicorn too."""
    found = []
    for cwd in Path("/proc").glob("[0-9]*/cwd"):
        try:
            if Path(os.readlink(cwd)) == folder:
                found.append(int(cwd.parent.name))
        except OSError:
            continue
    return found


def group(pgid: int) -> list[int]:
    """The live (not zombie) processes of a process group."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


class Sandbox:
    def __init__(self, tmp_path: Path, **env: str) -> None:
        self.path = (tmp_path / "auditlens-state").resolve()
        self.server = LocalPrefectServer(self.path)
        base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_URL", "MLFLOW_TRACKING", "AUDITLENS_"))}
        self.env = {**base, "AUDITLENS_STATE_DIR": str(self.path), "PREFECT_HOME": str(tmp_path / "prefect-client"),
                    "COLUMNS": "200", **env}  # fmt: skip
        self.cwd = tmp_path

    def cli(self, *args: str, timeout: float = 300, **env: str) -> tuple[int, str, float]:
        started = time.monotonic()
        completed = subprocess.run([str(AUDITLENS), *args], env={**self.env, **env}, cwd=self.cwd, capture_output=True,
                                   text=True, timeout=timeout)  # fmt: skip
        return completed.returncode, completed.stdout + completed.stderr, time.monotonic() - started

    def audit(self, world, **env: str) -> tuple[int, str, float]:
        _, config = world
        # --verbose: Prefect's log lines on the console, where a temporary server would announce itself
        return self.cli("audit", "--model", "models:/e2e-model@champion", "--config", str(config), "--fail-on", "never", "--verbose", **env)

    def state(self) -> ServerState | None:
        return self.server.read_state()

    def log(self) -> str:
        return self.server.log_file.read_text() if self.server.log_file.exists() else ""

    def cleanup(self) -> None:
        try:
            self.server.stop(timeout_s=30)
        finally:
            for pid in running_in(self.server.folder):  # anything a failed test left behind
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture()
def sandbox(tmp_path):
    """A private state folder (AUDITLENS_STATE_DIR) and Prefect client home; the servers started there are stopped."""
    made: list[Sandbox] = []

    def make(**env: str) -> Sandbox:
        made.append(Sandbox(tmp_path, **env))
        return made[-1]

    yield make
    for each in made:
        each.cleanup()
    for each in made:
        wait_for(lambda: running_in(each.server.folder) == [], timeout=15, interval=0.2)  # else: a server outlived its test


def flow_runs(state: ServerState) -> int:
    request = urllib.request.Request(f"{state.api_url}/flow_runs/count", data=b"{}", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_first_call_starts_the_server_the_next_finds_it_and_stop_stops_it(world, sandbox):
    h = sandbox()
    code, output, first_s = h.audit(world)
    assert code == 0, output
    assert TEMPORARY not in output and STARTING in output
    state = h.state()
    assert state is not None and state.version == expected_version() and state.port != 4200
    assert supervisors(h.path) == [state.pid] and sorted(group(state.pid)) == sorted([state.pid, state.server_pid])
    assert flow_runs(state) == 1  # the flow ran against this server, not a temporary one
    assert Path(state.prefect_home, "prefect.db").is_file() and not (Path(h.env["PREFECT_HOME"]) / "prefect.db").exists()

    code, output, second_s = h.audit(world)
    assert code == 0, output
    assert TEMPORARY not in output and STARTING not in output
    assert h.state() == state  # same pid, same port
    assert flow_runs(state) == 2
    assert second_s < first_s - 2, (first_s, second_s)  # no server start the second time (it takes 5-30 s)
    assert h.log().count("auditlens: serving") == 1

    code, output, _ = h.cli("prefect-server", "status")
    assert code == 0 and state.api_url in output and f"pid {state.pid}" in output, output

    # and `stop` stops every process of it
    code, output, _ = h.cli("prefect-server", "stop")
    assert code == 0 and f"Stopped the local Prefect server (pid {state.pid}" in output, output
    assert group(state.pid) == [] and supervisors(h.path) == [] and running_in(h.server.folder) == []
    assert h.state() is None
    with pytest.raises(OSError):
        urllib.request.urlopen(state.health_url, timeout=2)
    code, output, _ = h.cli("prefect-server", "status")
    assert code == 1 and "not running" in output, output
    code, output, _ = h.cli("prefect-server", "stop")
    assert code == 0 and "was not running" in output, output


def test_a_stale_state_file_is_replaced(world, sandbox):
    h = sandbox()
    h.server.folder.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    innocent = subprocess.Popen(["sleep", "120"])  # a live pid that is not our server: after a reboot, any program
    try:
        for pid in (dead.pid, innocent.pid):
            stale = ServerState(port=9, pid=pid, server_pid=pid, version=expected_version(), prefect_home=str(h.server.prefect_home),
                                idle_timeout_s=3600, started_at=time.time() - 86400)  # fmt: skip
            h.server.state_file.write_text(json.dumps(stale.__dict__))
            code, output, _ = h.audit(world)
            assert code == 0, output
            state = h.state()
            assert state is not None and state.pid not in (dead.pid, innocent.pid) and supervisors(h.path) == [state.pid]
            assert flow_runs(state) >= 1
            assert innocent.poll() is None, "a process that is not our server was signalled"
            h.server.stop()
    finally:
        innocent.kill()
        innocent.wait()
    assert h.log().count("replacing the server") == 2


def test_a_killed_supervisor_leaves_no_server_behind(world, sandbox):
    h = sandbox()
    code, output, _ = h.cli("prefect-server", "start", "--idle-timeout", "600")
    assert code == 0, output
    old = h.state()
    assert old is not None and old.idle_timeout_s == 600 and len(group(old.pid)) == 2
    os.kill(old.pid, signal.SIGKILL)  # uvicorn goes on serving, alone in the old process group
    wait_for(lambda: group(old.pid) == [old.server_pid], timeout=10, interval=0.1)
    code, output, _ = h.audit(world)
    assert code == 0, output
    assert group(old.pid) == []  # the orphaned uvicorn was stopped...
    new = h.state()
    assert new.pid != old.pid and supervisors(h.path) == [new.pid] and flow_runs(new) == 1  # ...and replaced


def test_concurrent_first_calls_start_one_server(world, sandbox):
    h = sandbox()
    _, config = world
    command = [str(AUDITLENS), "audit", "--model", "models:/e2e-model@champion", "--config", str(config), "--fail-on", "never", "--verbose"]
    processes = [subprocess.Popen(command, env=h.env, cwd=h.cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for _ in range(4)]  # fmt: skip
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=600)[0])
    finally:
        for process in processes:
            process.kill()
    assert [p.returncode for p in processes] == [0] * 4, "\n---\n".join(o[-2000:] for o in outputs)
    assert not any(TEMPORARY in o for o in outputs)
    state = h.state()
    assert supervisors(h.path) == [state.pid]  # exactly one server was started...
    assert h.log().count("auditlens: starting") == 1 and h.log().count("auditlens: serving") == 1
    assert flow_runs(state) == 4  # ...and every command used it


def test_the_server_stops_itself_once_idle_but_not_while_used(world, sandbox):
    idle_s = 4.0
    h = sandbox(AUDITLENS_PREFECT_IDLE_TIMEOUT=str(idle_s))
    # the command lasts longer than the idle timeout: had the server stopped under it, the flow would have failed
    code, output, wall_s = h.audit(world)
    assert code == 0 and wall_s > idle_s, (wall_s, output)
    state = h.state()
    assert state is not None and state.idle_timeout_s == idle_s
    wait_for(lambda: not group(state.pid), timeout=60, interval=0.2)
    last_use = h.server.last_use()  # touched by the command as it exited
    assert time.time() - last_use >= idle_s, time.time() - last_use  # idleness counts from the end of the last use
    assert h.state() is None and f"idle for {idle_s:g} s: stopping" in h.log()


def test_a_configured_prefect_api_wins(world, sandbox, prefect_harness):
    from prefect.settings import PREFECT_API_URL

    h = sandbox()
    code, output, _ = h.audit(world, PREFECT_API_URL=PREFECT_API_URL.value())
    assert code == 0, output
    assert h.state() is None and supervisors(h.path) == []


def test_the_ephemeral_switch_uses_prefects_temporary_server(world, sandbox):
    h = sandbox(AUDITLENS_PREFECT_SERVER="ephemeral")
    code, output, _ = h.audit(world)
    assert code == 0, output
    assert TEMPORARY in output and h.state() is None and supervisors(h.path) == []


@pytest.mark.parametrize("case", ["start-timeout", "state-dir-is-a-file", "bad-mode"])
def test_a_server_that_cannot_start_is_one_clear_error(world, sandbox, tmp_path, case):
    h = sandbox()
    env = {
        "start-timeout": {"AUDITLENS_PREFECT_START_TIMEOUT": "0.5"},
        "state-dir-is-a-file": {"AUDITLENS_STATE_DIR": str(tmp_path / "a-file")},
        "bad-mode": {"AUDITLENS_PREFECT_SERVER": "sometimes"},
    }[case]
    (tmp_path / "a-file").write_text("not a folder")
    code, output, _ = h.audit(world, **env)
    assert code == 2, output
    assert "Traceback" not in output and output.count("error:") == 1 and "fix:" in output, output
    expected = {
        "start-timeout": [f"did not answer within 0.5 s; its log is {h.server.log_file}", "AUDITLENS_PREFECT_START_TIMEOUT", "PREFECT_API_URL"],
        "state-dir-is-a-file": [f"cannot use {tmp_path / 'a-file'}", "set AUDITLENS_STATE_DIR to a folder you can write"],
        "bad-mode": ["AUDITLENS_PREFECT_SERVER='sometimes' is not a mode"],
    }[case]
    for text in expected:
        assert text in output, output
    assert supervisors(h.path) == [] and supervisors(tmp_path / "a-file") == []
    assert "Traceback" not in h.log()  # a start cut short is logged as such, not as a crash
    assert "MLflow run" not in output  # nothing was opened
