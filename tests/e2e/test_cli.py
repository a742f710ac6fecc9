"""The `auditlens` command as a user runs it (a real process, its exit code, its terminal output): a good audit and the
--fail-on gate. Bad input through the command: test_bad_input_corpus.py and test_cli_tracking_uris.py.

The processes share the test session's Prefect API (PREFECT_API_URL) instead of each starting its own."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.adapters.tracking import make_client
from tests.helpers import build_world, runs_with_status, write_config

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_harness")]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("cli-world"))


AUDITLENS = Path(sys.executable).parent / "auditlens"


@pytest.fixture(scope="module")
def cli_env(prefect_harness):
    from prefect.settings import PREFECT_API_URL

    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_TRACKING")}
    return {**env, "PREFECT_API_URL": PREFECT_API_URL.value(), "COLUMNS": "200"}


class Outcome:
    def __init__(self, completed: subprocess.CompletedProcess) -> None:
        self.exit_code = completed.returncode
        self.output = completed.stdout + completed.stderr


@pytest.fixture()
def invoke(cli_env, tmp_path):
    def run(*args):
        completed = subprocess.run([str(AUDITLENS), *args], env=cli_env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        # nothing may fall back to MLflow's cwd-relative defaults (./mlflow.db, ./mlruns)
        assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()
        return Outcome(completed)

    return run


def test_audit_prints_the_verdict_and_how_to_open_the_ui(world, invoke):
    result = invoke("audit", "--model", "models:/e2e-model@champion", "--config", str(world.config), "--fail-on", "never")
    assert result.exit_code == 0, result.output
    assert "Audit of e2e-model v1" in result.output and "Verdict:" in result.output
    assert f"mlflow ui --backend-store-uri {world.tracking_uri}" in result.output
    client = make_client(world.tracking_uri)
    [run] = [r for r in runs_with_status(client, "FINISHED") if r.data.tags.get("auditlens.trigger") == "cli"]
    assert run.data.tags["audit.verdict"] in result.output


def test_fail_on_gates_the_exit_code(world, invoke):
    strict = write_config(world.folder, world.tracking_uri, name="strict.yaml",
                          audits=[{"audit": "performance", "thresholds": [{"metric": "performance.current.accuracy", "min": 0.999}]}])
    failing = invoke("audit", "--model", "models:/e2e-model/1", "--config", str(strict))
    assert failing.exit_code == 1 and "FAIL" in failing.output
    assert invoke("audit", "--model", "models:/e2e-model/1", "--config", str(strict), "--fail-on", "never").exit_code == 0


def test_prefect_lines_only_with_verbose(world, invoke):
    """Prefect's own log lines (a line per state change) reach the console only when asked for; the verdict always."""
    # the cheapest plan (no Great Expectations, no SHAP): what is under test is the console, not the audits
    light = write_config(world.folder, world.tracking_uri, name="light.yaml", audits=[{"audit": "performance"}])
    quiet = invoke("audit", "--model", "models:/e2e-model/1", "--config", str(light), "--fail-on", "never")
    loud = invoke("audit", "--model", "models:/e2e-model/1", "--config", str(light), "--fail-on", "never", "--verbose")
    assert quiet.exit_code == loud.exit_code == 0, quiet.output + loud.output
    assert "Verdict:" in quiet.output and "Verdict:" in loud.output
    assert "Finished in state Completed()" not in quiet.output and "Flow run '" not in quiet.output
    assert "Finished in state Completed()" in loud.output and "Beginning flow run" in loud.output


@pytest.fixture(scope="module")
def audits_verbose(cli_env, tmp_path_factory) -> Outcome:
    """`auditlens audits -v`, run once for the tests that read its output."""
    cwd = tmp_path_factory.mktemp("audits-verbose")
    completed = subprocess.run([str(AUDITLENS), "audits", "-v"], env=cli_env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert not (cwd / "mlflow.db").exists() and not (cwd / "mlruns").exists()
    return Outcome(completed)


def test_audits_verbose_says_how_many_rows_each_audit_sees(audits_verbose):
    result = audits_verbose
    assert result.exit_code == 0, result.output
    rows = dict(re.findall(r"^(\w+) +audits\.[\w.]+:\w+\n(?:(?!\w+ +audits\.).*\n)*?    rows: (.*)$", result.output, re.M))
    assert rows["concordance"] == "a seeded sample of 200,000 rows a side (plan key sample_rows)"
    assert rows["shap"] == "a seeded sample of 20,000 rows a side (plan key sample_rows)"
    assert rows["drift"] == "fitted on a seeded sample of 20,000 rows a side (plan key sample_rows), applied to every row"
    assert rows["performance"] == "every row"


def test_audits_verbose_lists_the_keys_a_threshold_may_name_and_the_defaults_in_full(audits_verbose):
    result = audits_verbose
    assert result.exit_code == 0, result.output
    assert "    threshold: calibration.current.ece_excess <= 0.1 (fail)" in result.output  # declared locally, shown in full
    metrics = dict(re.findall(r"^(\w+) +audits\.[\w.]+:\w+\n(?:(?!\w+ +audits\.).*\n)*?    metrics: (.*)$", result.output, re.M))
    from audits.core.registry import available_audits, get_audit_class

    declaring = [name for name in available_audits() if get_audit_class(name).metric_keys]
    assert len(declaring) >= 29 and sorted(metrics) == sorted(declaring)  # every audit that declares keys lists them
    assert metrics["shap"].startswith("shap.importance.*, ")
