"""docs/your-first-audit.md, run as written: its Python files saved under the names they give, its shell blocks run
one after another by bash in an empty folder outside the repository, as a newcomer would, with this environment's
`auditlens` and `mlflow` first on the PATH (the page's install block is the one block not run: the suite runs inside
that environment). Its `mlflow ui` block is started on a free port of 127.0.0.1, asked for the audit run, and stopped.

What the page promises is then checked against the store: `init` wrote a valid configuration with what it says it
found, and printed the very command the page runs next; the audit is FINISHED and the version carries its verdict.

The processes share the test session's Prefect API (PREFECT_API_URL) instead of each starting its own."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.servers import free_port, healthy, port_free, stop_group, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_harness")]

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "your-first-audit.md"
BIN = Path(sys.executable).parent
BLOCK = re.compile(r"(?:<!-- tutorial: (?P<mark>\w+)[^>]*-->\n)?```(?P<lang>\w*)\n(?P<body>.*?)\n\s*```", re.S)


@dataclass(frozen=True)
class Block:
    lang: str
    body: str
    mark: str | None  # 'skip' (not run), 'server' (a long-running command) or None


def blocks(text: str) -> list[Block]:
    return [Block(m["lang"], m["body"], m["mark"]) for m in BLOCK.finditer(text)]


def test_the_page_has_the_blocks_this_test_runs():
    """The parser sees the page as written: the install block marked skip, the server block marked, one Python file."""
    found = blocks(PAGE.read_text(encoding="utf-8"))
    assert [b.mark for b in found if b.mark] == ["skip", "server"]
    assert [b.body.splitlines()[0] for b in found if b.lang == "python"] == ["# train.py"]
    assert found[0].body.startswith("make install")


@pytest.fixture(scope="module")
def walked(tmp_path_factory, prefect_harness):
    """Every block of the page, run in order in an empty folder; returns the folder, the shell's output, the server's
    command."""
    from prefect.settings import PREFECT_API_URL

    folder = tmp_path_factory.mktemp("first-audit")
    script, server = ["set -euo pipefail"], None
    for number, block in enumerate(blocks(PAGE.read_text(encoding="utf-8"))):
        if block.mark == "skip" or block.lang not in ("bash", "python"):
            continue
        if block.lang == "python":
            name = block.body.splitlines()[0].removeprefix("# ").strip()
            assert re.fullmatch(r"[\w.-]+\.py", name), f"a Python block starts with '# FILE.py': {name!r}"
            (folder / name).write_text(block.body + "\n", encoding="utf-8")
        elif block.mark == "server":
            server = block.body.strip()
        else:
            script += [f"echo '=== block {number}'", block.body]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", PREFECT_API_URL=PREFECT_API_URL.value(), COLUMNS="200")
    done = subprocess.run(["bash", "-c", "\n".join(script)], cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"the page's commands failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return folder, done.stdout, server, env


def test_init_writes_what_it_found_and_prints_the_command_the_page_runs_next(walked):
    from tasks.adapters.settings import load_settings

    folder, output, _, env = walked
    loaded = load_settings(folder / "auditlens.yaml")
    settings = loaded.settings
    assert (settings.plan, settings.data.target, settings.model.task) == ("quick", "benign", "classification")
    assert list(settings.data.segments) == ["clinic"] and settings.data.holdout == "holdout.csv"
    printed = [line.strip() for line in output.splitlines() if re.match(r"\s*\S*auditlens audit ", line)]
    page = next(line for line in PAGE.read_text(encoding="utf-8").splitlines() if line.startswith("auditlens audit "))
    # the page adds one option to the printed command; the rest is the same command
    assert [shlex.split(p)[1:] for p in printed][:1] == [shlex.split(page.replace(" --fail-on never", ""))[1:]], output
    assert {"data_quality", "drift", "performance", "calibration", "shap"} <= {p.id for p in loaded.plan}


def test_the_preset_is_listed_as_the_page_says(walked):
    _, output, _, _ = walked
    [listed] = [part for part in output.split("=== block ") if "preset quick (plan: quick)" in part]
    tabular = listed.split("tabular classifier (tabular_classifier):")[1].split("tabular regressor")[0]
    assert [line.split()[0] for line in tabular.strip().splitlines()] == [
        "data_quality", "drift", "performance", "performance_estimation", "calibration", "shap"], listed


def test_the_audit_is_recorded_and_the_version_carries_its_verdict(walked):
    from tasks.adapters.tracking import make_client

    folder, output, _, _ = walked
    client = make_client(f"sqlite:///{folder / 'mlflow.db'}")
    [experiment] = [e for e in client.search_experiments() if e.name == "auditlens/breast-cancer"]
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "audit breast-cancer v1"
    assert run.data.params["config.plan"] == "quick"  # the preset the audits came from, beside their list
    assert run.data.params["audits"].split(",")[:3] == ["data_quality", "drift", "performance"]
    tags = client.get_model_version("breast-cancer", "1").tags
    assert (tags["audit.status"], tags["audit.run_id"]) == ("done", run.info.run_id)
    assert tags["audit.verdict"] == run.data.tags["audit.verdict"] in ("PASS", "WARN", "FAIL")
    assert f"Verdict: {tags['audit.verdict']}" in output or tags["audit.verdict"] in output
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "audit_report.html" in artifacts and {"shap", "drift", "performance"} <= artifacts


def test_the_mlflow_ui_command_serves_the_audit(walked):
    folder, _, server, env = walked
    port = free_port()
    command = shlex.split(server.replace("--port 5000", f"--port {port}"))
    assert command[:2] == ["mlflow", "ui"] and "127.0.0.1" in command
    log = (folder / "ui.log").open("w")
    process = subprocess.Popen(command, cwd=folder, env={**env, "MLFLOW_DISABLE_TELEMETRY": "true"}, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: healthy(f"http://127.0.0.1:{port}/health") or process.poll() is not None, timeout=120,
                 what="mlflow ui")
        assert process.poll() is None, (folder / "ui.log").read_text()
        name = urllib.parse.quote("auditlens/breast-cancer", safe="")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name?experiment_name={name}",
                                    timeout=30) as response:
            assert b"auditlens/breast-cancer" in response.read()
    finally:
        stop_group(process)
        log.close()
        wait_for(lambda: port_free(port), timeout=30, what=f"port {port} free")
