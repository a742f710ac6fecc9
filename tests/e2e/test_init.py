"""`auditlens init` as a newcomer runs it: their own scikit-learn Pipeline, logged and registered the way MLflow's
documentation shows into a SQLite store of their own (outside this repository), two CSV files; `auditlens init` with no
terminal to ask on writes the configuration, and the `auditlens audit` command it prints runs as printed.

The processes share the test session's Prefect API (PREFECT_API_URL) instead of each starting their own."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tasks.adapters.settings import load_settings
from tasks.adapters.tracking import make_client
from tests.helpers import runs_with_status

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_harness")]

AUDITLENS = Path(sys.executable).parent / "auditlens"

# The user's own script: their data, their model, MLflow's documented calls; nothing of auditlens.
USER_SCRIPT = textwrap.dedent('''
    import sys
    import mlflow, mlflow.sklearn
    import numpy as np, pandas as pd
    from sklearn.compose import make_column_transformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    def patients(rows, seed):
        rng = np.random.default_rng(seed)
        frame = pd.DataFrame({"age": rng.integers(20, 80, rows), "glucose": rng.normal(100, 20, rows),
                              "bmi": rng.normal(27, 4, rows), "clinic": rng.choice(["north", "south", "east"], rows),
                              "patient_id": [f"P{seed}-{i:04d}" for i in range(rows)]})
        risk = (frame["glucose"] - 100) / 20 + (frame["age"] - 50) / 15 + rng.normal(0, 0.7, rows)
        return frame.assign(readmitted=(risk > 0).astype(int))

    store = sys.argv[1]
    reference, current = patients(300, 1), patients(200, 2)
    reference.to_csv(f"{store}/reference.csv", index=False)
    current.to_csv(f"{store}/current.csv", index=False)
    X, y = reference[["age", "glucose", "bmi", "clinic"]], reference["readmitted"]
    pipe = make_pipeline(make_column_transformer((StandardScaler(), ["age", "glucose", "bmi"]),
                                                 (OneHotEncoder(handle_unknown="ignore"), ["clinic"])),
                         LogisticRegression()).fit(X, y)
    mlflow.set_tracking_uri(f"sqlite:///{store}/mlflow.db")
    with mlflow.start_run():
        # pip_requirements stated, as many users do: MLflow would otherwise load the model again to infer them
        mlflow.sklearn.log_model(pipe, name="model", registered_model_name="readmission", input_example=X.head(3),
                                 pip_requirements=["scikit-learn", "pandas", "numpy"])
''')


@pytest.fixture()
def cli_env(prefect_harness):
    from prefect.settings import PREFECT_API_URL

    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_TRACKING")}
    return {**env, "PREFECT_API_URL": PREFECT_API_URL.value(), "COLUMNS": "200"}


def test_init_writes_a_configuration_whose_printed_command_audits_the_model(tmp_path_factory, cli_env):
    store = tmp_path_factory.mktemp("users-store")  # the user's own folder, outside this repository
    project = tmp_path_factory.mktemp("users-project")  # where they run auditlens
    assert not store.resolve().is_relative_to(Path(__file__).resolve().parents[2])
    (store / "train.py").write_text(USER_SCRIPT)
    trained = subprocess.run([sys.executable, "train.py", str(store)], cwd=store, capture_output=True, text=True,
                             timeout=300, env={**cli_env, "PYTHONPATH": ""})
    assert trained.returncode == 0, trained.stderr
    uri = f"sqlite:///{store / 'mlflow.db'}"

    init = subprocess.run([str(AUDITLENS), "init", "--model", "models:/readmission/1", "--reference", str(store / "reference.csv"),
                           "--current", str(store / "current.csv"), "--tracking-uri", uri, "--plan", "quick"],
                          cwd=project, env=cli_env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert init.returncode == 0, init.stdout + init.stderr
    written = project / "auditlens.yaml"
    assert sorted(p.name for p in project.iterdir()) == ["auditlens.yaml"]  # nothing else: no ./mlflow.db, no ./mlruns
    loaded = load_settings(written)
    settings = loaded.settings
    assert (settings.plan, settings.model.task, settings.security.model_loading) == ("quick", "classification", "strict")
    assert (settings.data.target, list(settings.data.segments), settings.data.modality) == ("readmitted", ["clinic"], "tabular")
    assert settings.data.features is None and settings.audits == []  # the model's own features; the plan unchanged
    assert loaded.data_path("reference") == (store / "reference.csv").resolve()
    assert loaded.tracking_uri() == uri and [p.id for p in loaded.plan] == ["data_quality", "drift", "performance",
                                                                            "calibration", "shap"]
    text = written.read_text()
    assert "#   clinic      category, 3 values" in text and "the gate accepts every type in model.skops" in text
    assert "#   patient_id  category, 300 values; not read by the model" in text
    assert f"Wrote auditlens.yaml (valid audit configuration, hash {loaded.config_hash})" in init.stdout

    command = init.stdout.strip().splitlines()[-1].strip()
    assert command == f"{AUDITLENS} audit --model models:/readmission/1 --config auditlens.yaml"
    audit = subprocess.run(shlex.split(command), cwd=project, env=cli_env, stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=300)
    assert audit.returncode in (0, 1), audit.stdout + audit.stderr
    assert "Audit of readmission v1" in audit.stdout and "Verdict:" in audit.stdout
    [run] = [r for r in runs_with_status(make_client(uri), "FINISHED") if r.data.tags.get("auditlens.trigger") == "cli"]
    assert run.data.tags["audit.verdict"] in audit.stdout and run.data.params["config.hash"] == loaded.config_hash
    assert sorted(p.name for p in project.iterdir()) == ["auditlens.yaml"]
