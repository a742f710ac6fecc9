"""Against a real `mlflow server` on 127.0.0.1 (SQLite backend, proxied artifacts), started and stopped
by this test: register a model through the server, run the audit flow under Prefect, read it all back."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from flows.audit_model import audit_model
from tasks.adapters.tracking import make_client
from tests.helpers import audited_model_inputs, build_world, runs_with_status, sha256
from tests.integration.servers import MlflowServer

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_harness")]

@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()  # the CLI, uvicorn and the job runner's consumers: the whole process group, port free again


def test_audit_recorded_through_a_real_server(mlflow_server, tmp_path):
    world = build_world(tmp_path / "world", tracking_uri=mlflow_server, versions=1)
    summary = audit_model(model_uri="models:/e2e-model@champion", config_path=str(world.config), tracking_uri=mlflow_server)

    client = make_client(mlflow_server)
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")  # uploaded through the server
    assert run.data.params["model.load_uri"] == "models:/e2e-model/1"
    assert run.data.params["data.reference.sha256"] == sha256(world.reference)
    assert run.data.tags["audit.verdict"] == summary["verdict"]

    current = pd.read_csv(world.current)
    model = _load(client)
    expected_accuracy = (model.predict(current.drop(columns="label")) == current["label"]).mean()
    assert run.data.metrics["performance.current.accuracy"] == pytest.approx(expected_accuracy)
    assert run.data.metrics["shap.additivity_relative_error"] < 1e-9

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(client.download_artifacts(summary["run_id"], "", tmp))
        manifest = json.loads((root / "manifest.json").read_text())
        assert manifest["complete"] and manifest["tracking_uri"] == mlflow_server
        for name, entry in manifest["artifacts"].items():
            assert entry["sha256"] == sha256(root / name), name
        assert (root / "audit_report.html").stat().st_size > 10_000

    tags = client.get_model_version("e2e-model", "1").tags
    assert (tags["audit.status"], tags["audit.verdict"], tags["audit.run_id"]) == ("done", summary["verdict"], summary["run_id"])
    # through the server too: the version's logged model names the version (the server wrote it at registration: the
    # sink left it as it was) and carries the checked metrics of this run, on the current data
    [logged], [reference] = audited_model_inputs(client, run)
    assert reference.experiment_id == run.info.experiment_id and reference.tags["auditlens.audited_model_id"] == logged.model_id
    assert json.loads(logged.tags["mlflow.modelVersions"]) == [{"name": "e2e-model", "version": 1}]
    linked = {m.key: m.value for m in logged.metrics if m.run_id == summary["run_id"]}
    assert linked["performance.current.accuracy"] == run.data.metrics["performance.current.accuracy"]
    assert runs_with_status(client, "RUNNING") == []


def _load(client):
    import mlflow
    from mlflow.artifacts import download_artifacts

    source = client.get_model_version("e2e-model", "1").source  # mlflow-artifacts:/..., served by the server
    return mlflow.sklearn.load_model(download_artifacts(artifact_uri=source, tracking_uri=client.tracking_uri,
                                                        dst_path=tempfile.mkdtemp()))
