"""A model version is untrusted input, audited as a user runs auditlens (the command, a SQLite store in a folder of its
own, credentials in the environment).

- A model whose pickle runs a command when loaded is refused before load: the command never runs, the run ends FAILED
  with the reason in audit.error, the version says 'failed' with it, and the command says what was found and how to
  trust it, once.
- A model whose code the config trusts runs in the model's process: from inside ``predict`` it finds no credentials (in
  its environment, the auditor's, any other process's or ~/.mlflow/credentials), cannot write a tag into the store whose
  path it knows, and cannot open a TCP connection; the audit is recorded as usual.
"""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import cloudpickle
import mlflow.pyfunc
import pytest

from tasks.adapters.demo import register_model_files
from tasks.adapters.mlflow_sink import MlflowSink
from tasks.adapters.tracking import make_client
from tests.helpers import RunsCommand, build_world, write_config

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_harness")]

AUDITLENS = Path(sys.executable).parent / "auditlens"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("untrusted-world"))


@pytest.fixture()
def cli_env(prefect_harness, tmp_path):
    from prefect.settings import PREFECT_API_URL

    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_TRACKING")}
    home = tmp_path / "home"
    (home / ".mlflow").mkdir(parents=True)
    (home / ".mlflow" / "credentials").write_text("[mlflow]\nmlflow_tracking_username = alice\nmlflow_tracking_password = SNOOP_BAIT-file\n")
    return {**env, "PREFECT_API_URL": PREFECT_API_URL.value(), "COLUMNS": "200", "HOME": str(home),
            # what an auditor's environment holds, and the model must not
            "MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": "SNOOP_BAIT-password",
            "AUDITLENS_SIGNING_KEY": "SNOOP_BAIT-signing-key-0123456789abcdef", "PREFECT_API_KEY": "SNOOP_BAIT-prefect"}


def run_cli(env: dict, cwd: Path, *args: str) -> tuple[int, str]:
    done = subprocess.run([str(AUDITLENS), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    return done.returncode, done.stdout + done.stderr


def test_a_pickle_that_runs_code_when_loaded_is_refused_before_load_and_recorded_as_failed(world, cli_env, tmp_path):
    import mlflow.sklearn

    from tests.conftest import make_pipeline_model, make_tabular

    X, y = make_tabular(200, seed=3)
    folder = tmp_path / "evil"
    mlflow.sklearn.save_model(make_pipeline_model(X, y, "logistic"), str(folder), serialization_format="pickle",
                              pip_requirements=["scikit-learn"])
    marker = tmp_path / "the-model-ran"
    (folder / "model.pkl").write_bytes(pickle.dumps(RunsCommand(marker)))
    version = register_model_files(MlflowSink(world.tracking_uri), folder, name="evil", experiment="e2e/training", params={},
                                   artifact_location=(world.folder / "mlartifacts").as_uri())

    code, output = run_cli(cli_env, tmp_path, "audit", "--model", f"models:/evil/{version}", "--config", str(world.config))
    flat = " ".join(output.split())
    assert code != 0, output
    assert not marker.exists(), "the model's code ran"
    found = f"evil v{version}: refused before loading: model.pkl (pickle) names posix.system (runs commands or touches the system)"
    assert flat.count(found) == 1, output
    assert "security.model_loading: trusted" in flat and "Traceback" not in output
    client = make_client(world.tracking_uri)
    tags = client.get_model_version("evil", version).tags
    assert tags["audit.status"] == "failed" and "posix.system" in tags["audit.error"]
    run = client.get_run(tags["audit.run_id"])
    assert run.info.status == "FAILED" and "refused before loading" in run.data.tags["audit.error"]
    assert "audit.verdict" not in run.data.tags


@pytest.mark.parametrize("engine", ["local", "dask"])
def test_trusted_model_code_finds_no_credentials_and_cannot_write_the_store_or_connect(world, cli_env, tmp_path, engine):
    """With the Dask engine the model's code also runs on the cluster's workers, which the model's process starts: they
    hold nothing either, and are confined the same way, except that TCP is open (they talk to their scheduler)."""
    from tests.e2e import faulty_models

    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    port = listener.getsockname()[1]
    store = world.tracking_uri.removeprefix("sqlite:///")
    folder = tmp_path / "snoop"
    cloudpickle.register_pickle_by_value(faulty_models)  # its code travels in the model file, as a user's would
    try:
        mlflow.pyfunc.save_model(str(folder), python_model=faulty_models.Snoop(), pip_requirements=["pandas"],
                                 model_config={"store": store, "name": "snoop", "version": "1", "port": port})
    finally:
        cloudpickle.unregister_pickle_by_value(faulty_models)
    version = register_model_files(MlflowSink(world.tracking_uri), folder, name="snoop", experiment="e2e/training", params={},
                                   artifact_location=(world.folder / "mlartifacts").as_uri())
    import pandas as pd

    for role in ("reference", "current"):
        frame = pd.read_csv(world.folder / f"{role}.csv")
        frame.assign(y=2.0 * frame["x1"] - frame["x2"]).drop(columns="label").to_csv(world.folder / f"snoop-{role}.csv", index=False)
    config = write_config(world.folder, world.tracking_uri, name=f"snoop-{engine}.yaml", model={"task": "regression"},
                          security={"model_loading": "trusted"}, audits=[{"audit": "performance"}],
                          execution={"engine": engine, "workers": 2} if engine == "dask" else {"engine": "local"},
                          data={"reference": "snoop-reference.csv", "current": "snoop-current.csv", "target": "y"})

    code, output = run_cli(cli_env, tmp_path, "audit", "--model", f"models:/snoop/{version}", "--config", str(config), "--fail-on", "never")
    try:
        listener.accept()
        connected = True
    except OSError:
        connected = False
    listener.close()
    assert code == 0, output
    found: dict[str, list[str]] = {}
    for line in output.splitlines():
        if line.startswith("SNOOP "):
            key, value = line.removeprefix("SNOOP ").split(": ", 1)
            found.setdefault(key, []).append(value)
    processes = len(found["env"])  # the model's process, and with Dask each worker that scored a partition
    assert processes >= 1, output
    assert found["env"] == ["[]"] * processes, output
    assert all(uri.startswith("none://") for uri in found["tracking uri"])
    assert found["other environments"] == ["[]"] * processes, "the model read another process's environment"
    assert all(f.startswith("refused") for f in found["credentials file"]), found["credentials file"]
    assert all(t.startswith("refused") and "readonly database" in t for t in found["tag"]), found["tag"]
    if engine == "local":
        assert all(t.startswith("refused") for t in found["tcp"]) and not connected
    client = make_client(world.tracking_uri)
    tags = client.get_model_version("snoop", version).tags
    assert tags["audit.status"] == "done" and tags.get("audit.verdict") == client.get_run(tags["audit.run_id"]).data.tags["audit.verdict"]
    run = client.get_run(tags["audit.run_id"])
    assert run.data.metrics["performance.current.r2"] == pytest.approx(1.0)
    assert run.data.params["isolation.network"] == ("no TCP connection (Landlock)" if engine == "local"
                                                    else "TCP allowed (the Dask engine talks to its cluster)")
    assert "writes only beneath" in run.data.params["isolation.filesystem"]
    assert "SNOOP_BAIT" not in " ".join(f"{k}={v}" for k, v in {**run.data.params, **run.data.tags}.items())
