"""What `auditlens audit` shows while it runs, as a user sees it: on a terminal (a tmux pane, captured while the audit
runs and after) a live display with each audit running and its time, then every audit's verdict; in a pipe, one plain
line per audit and no escape codes. Prefect's own lines in neither (they need --verbose: test_cli.py)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import build_world, write_config

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_harness")]

AUDITLENS = Path(sys.executable).parent / "auditlens"
TMUX = "/usr/bin/tmux"
PLAN = [{"audit": "performance"}, {"audit": "calibration"}, {"audit": "shap", "config": {"rows": 40}}]
IDS = ("performance", "calibration", "shap")
VERDICT = "(PASS|WARN|FAIL|SKIPPED|ERROR)"
PREFECT_LINES = re.compile(r"Finished in state|Beginning flow run|Flow run '|Task run '|\| INFO +\|")


def tmux_pane(tmux: list[str]) -> str:
    return subprocess.run([*tmux, "capture-pane", "-p", "-S", "-", "-t", "audit"], capture_output=True, text=True,
                          timeout=30).stdout


@pytest.mark.skipif(not os.access(TMUX, os.X_OK), reason="tmux is not installed")
def test_a_live_display_on_a_terminal_and_a_line_per_audit_in_a_pipe(tmp_path):
    from prefect.settings import PREFECT_API_URL

    world = build_world(tmp_path / "world")
    config = write_config(world.folder, world.tracking_uri, name="progress.yaml", audits=PLAN)
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("MLFLOW_TRACKING") and key not in ("COLUMNS", "LINES", "TMUX", "TMUX_PANE")}
    env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    command = [str(AUDITLENS), "audit", "--model", "models:/e2e-model/1", "--config", str(config), "--fail-on", "never"]

    # a terminal: a tmux server of this test's own (its socket in the test's folder, gone with it), the pane as wide as
    # a laptop's terminal
    script = tmp_path / "audit.sh"
    script.write_text(f"cd {shlex.quote(str(tmp_path))}\n{shlex.join(command)}\necho __exit=$?\nsleep 300\n")
    tmux = [TMUX, "-S", str(tmp_path / "tmux.sock"), "-f", "/dev/null"]
    frames = []
    try:
        subprocess.run([*tmux, "new-session", "-d", "-s", "audit", "-x", "160", "-y", "50", f"bash --norc --noprofile {script}"],
                       env=env, check=True, timeout=30)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            frames.append(tmux_pane(tmux))
            if "__exit=" in frames[-1]:
                break
            time.sleep(0.2)
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True, timeout=30)
    last = frames[-1]
    assert "__exit=0" in last, last
    running = [m for pane in frames for m in re.finditer(rf"^\S +({'|'.join(IDS)}) +running +\d+\.\ds\s*$", pane, re.M)]
    assert running, "no frame showed an audit running with its time:\n" + "\n---\n".join(frames[-20:])
    for audit_id in IDS:  # the last frame of the display: each audit's verdict and duration, above the summary table
        assert re.search(rf"^ +{audit_id} +{VERDICT} +\d+\.\ds", last, re.M), last
    assert "✓ recording to MLflow" in last and "3 of 3 audits done" in last
    assert "Audit of e2e-model v1" in last and "Verdict:" in last and "Open the MLflow UI" in last
    assert not any(PREFECT_LINES.search(pane) for pane in frames), last

    # a pipe: the same audit again (its results now come from the cache), plain lines
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "\x1b" not in done.stdout + done.stderr and not PREFECT_LINES.search(done.stdout + done.stderr)
    lines = done.stdout.splitlines()
    ended = [re.fullmatch(rf"\[(\d)/3\] (\w+) +{VERDICT} +cached  .+", line) for line in lines if line.startswith("[")]
    assert all(ended) and [m[1] for m in ended] == ["1", "2", "3"] and sorted(m[2] for m in ended) == sorted(IDS), done.stdout
    assert lines[: lines.index(next(line for line in lines if line.startswith("[")))] == [
        "checking the configuration, the model and the data", "starting the Prefect flow",
        "resolving models:/e2e-model/1", "loading e2e-model v1 and the data, predicting", "opening the MLflow run",
        "auditing (3 audits)"]
    assert lines[lines.index(ended[-1][0]) + 1] == "recording to MLflow" and "Verdict:" in done.stdout
