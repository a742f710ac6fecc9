"""The `auditlens` command as a user runs it (a real process, its exit code, its terminal output): a good
audit, and every kind of bad input answered with one clear message, exit code 2, no MLflow run left RUNNING.

The processes share the test session's Prefect API (PREFECT_API_URL) instead of each starting its own."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data_variant(world, name, mutate, role="current"):
    frame = mutate(pd.read_csv(world.current if role == "current" else world.reference))
    path = world.folder / f"{name}.csv"
    frame.to_csv(path, index=False)
    data = {"reference": "reference.csv", "current": "current.csv", "target": "label", role: path.name}
    return write_config(world.folder, world.tracking_uri, name=f"{name}.yaml", data=data)


BAD_INPUTS = {
    "malformed-yaml": (lambda w: _raw(w, "malformed.yaml", "kind: audit\naudits: [ {audit: shap\n"), "models:/e2e-model/1",
                       "malformed YAML"),
    "unknown-audit": (lambda w: write_config(w.folder, w.tracking_uri, name="unknown.yaml", audits=[{"audit": "lime2"}]),
                      "models:/e2e-model/1", "unknown audit 'lime2'"),
    "unknown-key": (lambda w: write_config(w.folder, w.tracking_uri, name="key.yaml", sampling={"rows": 5}),
                    "models:/e2e-model/1", "sampling.rows: unknown key"),
    "unknown-model": (lambda w: w.config, "models:/no-such-model/1", "no registered model 'no-such-model'"),
    "unknown-version": (lambda w: w.config, "models:/e2e-model/7", "has no version 7"),
    "unknown-alias": (lambda w: w.config, "models:/e2e-model@gold", "has no alias @gold"),
    "bad-uri": (lambda w: w.config, "s3://bucket/model", "unsupported model URI"),
    "missing-target": (lambda w: _data_variant(w, "no_target", lambda f: f.drop(columns="label"), "reference"),
                       "models:/e2e-model/1", "lacks the target column 'label'"),
    "missing-feature": (lambda w: _data_variant(w, "no_feature", lambda f: f.drop(columns="colour")),
                        "models:/e2e-model/1", "lacks feature column(s) ['colour']"),
    "empty-dataset": (lambda w: _raw(w, "empty.yaml", None), "models:/e2e-model/1", "is empty"),
    "nan-dataset": (lambda w: _data_variant(w, "all_nan", lambda f: f.assign(x1=None, x2=None, x3=None, noise=None, colour=None)),
                    "models:/e2e-model/1", "every feature value is missing"),
    "server-down": (lambda w: write_config(w.folder, f"http://127.0.0.1:{_free_port()}", name="down.yaml"),
                    "models:/e2e-model/1", "is not reachable"),
}


def _raw(world, name, text):
    path = world.folder / name
    if text is None:  # an empty current dataset
        (world.folder / "empty.csv").write_text("")
        return write_config(world.folder, world.tracking_uri, name=name,
                            data={"reference": "reference.csv", "current": "empty.csv", "target": "label"})
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gets_one_clear_error_and_loses_nothing(world, case, invoke):
    make_config, model_uri, message = BAD_INPUTS[case]
    client = make_client(world.tracking_uri)
    finished_before = len(runs_with_status(client, "FINISHED"))
    result = invoke("audit", "--model", model_uri, "--config", str(make_config(world)))
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert "fix:" in result.output and "Traceback" not in result.output
    assert runs_with_status(client, "RUNNING") == []
    assert len(runs_with_status(client, "FINISHED")) == finished_before  # nothing passed off as an audit
