"""The audit_model flow end to end: a real Prefect flow run, a real MLflow store, a registered model.
Everything is read back from MLflow and checked by value."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from flows.audit_model import audit_model
from tasks.adapters.errors import DataError, ModelLoadError
from tasks.adapters.model_gate import ModelRefusedError
from tasks.adapters.settings import load_settings
from tasks.adapters.tracking import make_client
from tests.helpers import audited_model_inputs, build_world, runs_with_status, sha256, write_config

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_harness")]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("world"), versions=2)


@pytest.fixture(scope="module")
def audited(world):
    summary = audit_model(model_uri="models:/e2e-model@champion", config_path=str(world.config), tracking_uri=world.tracking_uri)
    return summary


def test_the_run_is_finished_named_and_parametrised(world, audited):
    client = make_client(world.tracking_uri)
    run = client.get_run(audited["run_id"])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "audit e2e-model v1"
    assert client.get_experiment(run.info.experiment_id).name == "auditlens/e2e-model"
    params = run.data.params
    assert params["model.uri"] == "models:/e2e-model@champion" and params["model.load_uri"] == "models:/e2e-model/1"
    assert params["model.version"] == "1" and params["model.alias"] == "champion"
    assert params["config.hash"] == load_settings(world.config).config_hash
    assert params["data.current.sha256"] == sha256(world.current)
    assert params["data.reference.rows"] == "300" and params["data.current.rows_used"] == "200"
    assert params["seed"] == "3" and params["pkg.mlflow"] == mlflow.__version__
    assert run.data.tags["audit.verdict"] == audited["verdict"]
    assert run.data.tags["audit.status"] == "done"
    assert "| performance |" in run.data.tags["mlflow.note.content"]
    contexts = {d.tags[0].value: d.dataset for d in run.inputs.dataset_inputs}
    assert set(contexts) == {"reference", "current"} and contexts["current"].source_type == "local"
    source = client.get_model_version("e2e-model", "1").source
    [linked], _ = audited_model_inputs(client, run)
    assert source.startswith(linked.artifact_location)


def test_the_run_and_the_version_it_audited_are_linked_both_ways(world, audited):
    """The audit run's model input is the version's logged model; that model names the version (MLflow's
    mlflow.modelVersions tag, which a version created straight in a database lacks) and carries the checked metrics,
    measured by the audit run on the current data: MLflow's UI lists the run on the model's page through them. The
    version's source run stays its training run, and the description's title links to the version's page."""
    client = make_client(world.tracking_uri)
    run = client.get_run(audited["run_id"])
    version = client.get_model_version("e2e-model", "1")
    [logged], [reference] = audited_model_inputs(client, run)
    assert json.loads(logged.tags["mlflow.modelVersions"]) == [{"name": "e2e-model", "version": 1}]
    # the run's page lists "Registered models" only from models in its own experiment: a reference stands there
    assert (reference.experiment_id, reference.tags["auditlens.audited_model_id"]) == (run.info.experiment_id, logged.model_id)
    assert json.loads(reference.tags["mlflow.modelVersions"]) == [{"name": "e2e-model", "version": 1}]
    assert logged.experiment_id != run.info.experiment_id and reference.source_run_id is None
    assert version.run_id == logged.source_run_id != run.info.run_id
    linked = {m.key: m for m in logged.metrics if m.run_id == run.info.run_id}
    checked = {c["metric"] for r in audited["audits"] for c in json.loads(Path(client.download_artifacts(
        run.info.run_id, f"{r}/result.json", tempfile.mkdtemp())).read_text())["checks"]}
    assert set(linked) == checked and {"performance.current.accuracy", "data_quality.user.failed"} <= checked
    assert all(m.value == run.data.metrics[k] and m.dataset_name.startswith("current:") for k, m in linked.items())
    assert "**Audit of [e2e-model v1](#/models/e2e-model/versions/1): " in run.data.tags["mlflow.note.content"]

    from tasks.adapters.mlflow_sink import AuditRun, MlflowSink

    sink = MlflowSink(world.tracking_uri)
    assert sink.list_version_on_model(logged.model_id, "e2e-model", "1") is False  # idempotent
    again = AuditRun(run.info.run_id, run.info.experiment_id, "", world.tracking_uri, "e2e-model", "1")
    assert sink.version_reference(again, logged.model_id) == reference.model_id  # one per model and experiment
    assert json.loads(client.get_logged_model(logged.model_id).tags["mlflow.modelVersions"]) == [
        {"name": "e2e-model", "version": 1}]


def test_metrics_equal_an_independent_recomputation(world, audited):
    client = make_client(world.tracking_uri)
    metrics = client.get_run(audited["run_id"]).data.metrics
    model = mlflow.sklearn.load_model(client.get_model_version("e2e-model", "1").source)  # a file:// URI
    current = pd.read_csv(world.current)
    X, y = current.drop(columns="label"), current["label"]
    assert metrics["performance.current.accuracy"] == pytest.approx(skm.accuracy_score(y, model.predict(X)))
    assert metrics["performance.current.roc_auc"] == pytest.approx(skm.roc_auc_score(y == "yes", model.predict_proba(X)[:, 1]))
    assert metrics["data_quality.user.failed"] == 0 and metrics["data_quality.user.evaluated"] == 1
    assert metrics["shap.additivity_relative_error"] < 1e-9 and metrics["shap.rows_explained"] == 60
    assert metrics["shap.importance.x1"] > metrics["shap.importance.noise"]


def test_artifacts_are_complete_and_the_manifest_hashes_them(world, audited):
    client = make_client(world.tracking_uri)
    run_id = audited["run_id"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(client.download_artifacts(run_id, "", tmp))
        files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
        expected = {
            "audit_report.html", "manifest.json",
            "data_quality/expectations.json", "data_quality/columns.json", "data_quality/data_docs.html",
            "data_quality/result.json",
            "performance/metrics.json", "performance/confusion_matrix.png",
            "shap/values.json", "shap/importance.json", "shap/beeswarm.png", "shap/bar.png", "shap/feature_map.json",
        }  # fmt: skip
        assert expected <= files
        manifest = json.loads((root / "manifest.json").read_text())
        assert manifest["complete"] is True and manifest["verdict"] == audited["verdict"]
        assert set(manifest["artifacts"]) == files - {"manifest.json"}
        for name, entry in manifest["artifacts"].items():
            assert entry["sha256"] == sha256(root / name), name
        values = pd.read_json(root / "shap" / "values.json", orient="split")
        assert len(values) == 60 and {"row", "explained_output", "base_value", "model_output", "x1", "colour"} <= set(values.columns)
        np.testing.assert_allclose(values[["x1", "x2", "x3", "noise", "colour"]].sum(axis=1) + values["base_value"],
                                   values["model_output"], atol=1e-9)
        report = (root / "audit_report.html").read_text()
        assert audited["verdict"] in report and "data:image/png;base64," in report
    tables = json.loads(client.get_run(run_id).data.tags["mlflow.loggedArtifacts"])
    assert {"path": "shap/values.json", "type": "table"} in tables


def test_the_model_version_carries_the_audit(world, audited):
    client = make_client(world.tracking_uri)
    tags = client.get_model_version("e2e-model", "1").tags
    assert tags["audit.status"] == "done"
    assert tags["audit.verdict"] == audited["verdict"]
    assert tags["audit.run_id"] == audited["run_id"]
    assert "audit.status" not in client.get_model_version("e2e-model", "2").tags
    assert runs_with_status(client, "RUNNING") == []


def test_versions_audited_with_one_plan_share_metric_keys(world, audited):
    second = audit_model(model_uri="models:/e2e-model/2", config_path=str(world.config), tracking_uri=world.tracking_uri)
    client = make_client(world.tracking_uri)
    first_keys = set(client.get_run(audited["run_id"]).data.metrics)
    second_keys = set(client.get_run(second["run_id"]).data.metrics)
    assert first_keys == second_keys  # what makes side-by-side comparison in the MLflow UI work
    shap_info = json.loads(Path(client.download_artifacts(second["run_id"], "shap/result.json", tempfile.mkdtemp())).read_text())
    assert shap_info["info"]["explainer"] == "linear"


def test_a_passing_audit_promotes_its_version_in_a_step_of_its_own(world, caplog):
    """mlflow.promote_alias_on_pass: once the run is closed, the flow's promote-on-pass step points the alias at a
    version whose audit PASSed and tags it audit.promoted_to; an audit that does not pass moves nothing."""
    client = make_client(world.tracking_uri)
    settings = {"tracking_uri": world.tracking_uri, "promote_alias_on_pass": "audited"}
    strict = write_config(world.folder, world.tracking_uri, name="promote_strict.yaml", mlflow=settings, audits=[
        {"audit": "performance", "thresholds": [{"metric": "performance.current.accuracy", "min": 0.999}]}])
    failed = audit_model(model_uri="models:/e2e-model/2", config_path=str(strict), tracking_uri=world.tracking_uri)
    assert failed["verdict"] != "PASS"
    assert "audited" not in client.get_registered_model("e2e-model").aliases
    assert "audit.promoted_to" not in client.get_model_version("e2e-model", "2").tags

    lenient = write_config(world.folder, world.tracking_uri, name="promote.yaml", mlflow=settings, audits=[
        {"audit": "performance", "thresholds": [{"metric": "performance.current.accuracy", "min": 0.5}]}])
    with caplog.at_level(logging.INFO):
        passed = audit_model(model_uri="models:/e2e-model/2", config_path=str(lenient), tracking_uri=world.tracking_uri)
    assert passed["verdict"] == "PASS"
    assert str(client.get_registered_model("e2e-model").aliases["audited"]) == "2"
    tags = client.get_model_version("e2e-model", "2").tags
    assert tags["audit.promoted_to"] == "audited" and tags["audit.status"] == "done" and tags["audit.verdict"] == "PASS"
    assert client.get_run(passed["run_id"]).info.status == "FINISHED"
    assert any("now points at it (verdict PASS)" in r.getMessage() and "models:/e2e-model@audited" in r.getMessage()
               for r in caplog.records)
    assert "audited" not in client.get_model_version("e2e-model", "1").aliases


def test_a_crashing_audit_is_an_error_and_the_others_still_record(world):
    config = write_config(world.folder, world.tracking_uri, name="forced.yaml", audits=[
        {"audit": "performance"}, {"audit": "shap", "config": {"explainer": "linear"}}])
    summary = audit_model(model_uri="models:/e2e-model/1", config_path=str(config), tracking_uri=world.tracking_uri)
    assert summary["verdict"] == "ERROR"
    assert summary["audits"]["shap"]["verdict"] == "ERROR" and "not a linear model" in summary["audits"]["shap"]["reason"]
    assert summary["audits"]["performance"]["verdict"] == "PASS"
    run = make_client(world.tracking_uri).get_run(summary["run_id"])
    assert run.info.status == "FINISHED" and "performance.current.accuracy" in run.data.metrics


def test_bad_data_inside_the_flow_stops_it_before_any_run_and_leaves_the_version_alone(world):
    """The flow loads and checks the data before it opens a run: nothing was audited, so nothing is recorded, and a
    version whose audit nobody queued (this is not the watcher's flow run) keeps its tags."""
    broken = world.folder / "current_missing_column.csv"
    pd.read_csv(world.current).drop(columns="x2").to_csv(broken, index=False)
    config = write_config(world.folder, world.tracking_uri, name="broken.yaml",
                          data={"reference": "reference.csv", "current": broken.name, "target": "label"})
    client = make_client(world.tracking_uri)
    runs_before, tags_before = len(all_runs(client)), client.get_model_version("e2e-model", "2").tags
    with pytest.raises(DataError, match=r"lacks feature column\(s\) \['x2'\]"):
        audit_model(model_uri="models:/e2e-model/2", config_path=str(config), tracking_uri=world.tracking_uri)
    assert len(all_runs(client)) == runs_before
    assert client.get_model_version("e2e-model", "2").tags == tags_before
    assert runs_with_status(client, "RUNNING") == []


def all_runs(client) -> list:
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_a_run_uri_is_audited_without_registry_tags(world):
    client = make_client(world.tracking_uri)
    run_id = client.get_model_version("e2e-model", "1").run_id
    summary = audit_model(model_uri=f"runs:/{run_id}/model", config_path=str(world.config), tracking_uri=world.tracking_uri)
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["model.uri"] == f"runs:/{run_id}/model"
    assert run.data.params["model.version"] == ""
    assert client.get_experiment(run.info.experiment_id).name == "auditlens/unregistered"
    first = client.search_runs([run.info.experiment_id])[0]
    assert first.data.metrics.keys() >= {"performance.current.accuracy", "shap.additivity_relative_error"}


class LinearFormula(mlflow.pyfunc.PythonModel):
    """A model that is not scikit-learn: only pyfunc's predict is available."""

    def predict(self, context, model_input, params=None):
        return (2.0 * model_input["x1"] - model_input["x2"]).to_numpy()


def test_a_pyfunc_model_is_audited_by_its_predictions(world, tmp_path):
    from tasks.adapters.demo import register_model_files
    from tasks.adapters.mlflow_sink import MlflowSink
    from tests.conftest import make_tabular

    X, _ = make_tabular(300, seed=5)
    data = X.assign(y=2.0 * X["x1"] - X["x2"])
    data.iloc[:200].to_csv(world.folder / "formula_reference.csv", index=False)
    data.iloc[200:].to_csv(world.folder / "formula_current.csv", index=False)
    mlflow.pyfunc.save_model(str(tmp_path / "formula"), python_model=LinearFormula())
    register_model_files(MlflowSink(world.tracking_uri), tmp_path / "formula", name="formula", experiment="e2e/training",
                         params={}, artifact_location=(world.folder / "mlartifacts").as_uri())
    data_spec = {"reference": "formula_reference.csv", "current": "formula_current.csv", "target": "y"}
    strict = write_config(world.folder, world.tracking_uri, name="formula_strict.yaml", data=data_spec, model={"task": "regression"})
    with pytest.raises(ModelRefusedError, match="refused before loading: it has flavors python_function") as refused:
        audit_model(model_uri="models:/formula/1", config_path=str(strict), tracking_uri=world.tracking_uri)
    failed = make_client(world.tracking_uri).get_run(refused.value.audit_run_id)
    assert failed.info.status == "FAILED" and "security.model_loading: trusted" in failed.data.tags["audit.error"]

    trusted = {"model_loading": "trusted"}  # its own code runs: the user says so
    auto = write_config(world.folder, world.tracking_uri, name="formula_auto.yaml", data=data_spec, security=trusted)
    with pytest.raises(ModelLoadError, match="set model.task to 'classification' or 'regression'"):
        audit_model(model_uri="models:/formula/1", config_path=str(auto), tracking_uri=world.tracking_uri)

    config = write_config(world.folder, world.tracking_uri, name="formula.yaml", data=data_spec, security=trusted,
                          model={"task": "regression"}, audits=[{"audit": "performance"}, {"audit": "shap"}])
    summary = audit_model(model_uri="models:/formula/1", config_path=str(config), tracking_uri=world.tracking_uri)
    metrics = make_client(world.tracking_uri).get_run(summary["run_id"]).data.metrics
    assert summary["verdict"] == "PASS"
    assert metrics["performance.current.r2"] == pytest.approx(1.0) and metrics["performance.current.rmse"] < 1e-9
    # a model-agnostic explainer on the formula: x1 and x2 carry it, the rest gets nothing
    assert metrics["shap.importance.noise"] == pytest.approx(0.0, abs=1e-12)
    assert metrics["shap.importance.x1"] > metrics["shap.importance.x2"] > 0
    assert metrics["shap.additivity_relative_error"] < 1e-9


def test_the_champion_is_loaded_as_the_baseline_for_explanation_drift(world):
    config = write_config(world.folder, world.tracking_uri, name="drift.yaml", audits=[{"audit": "explanation_drift"}])
    challenger = audit_model(model_uri="models:/e2e-model/2", config_path=str(config), tracking_uri=world.tracking_uri)
    champion = audit_model(model_uri="models:/e2e-model@champion", config_path=str(config), tracking_uri=world.tracking_uri)
    client = make_client(world.tracking_uri)
    run = client.get_run(challenger["run_id"])
    assert run.data.params["baseline.model"] == "models:/e2e-model/1"
    assert challenger["audits"]["explanation_drift"]["verdict"] == "PASS"
    assert -1 <= run.data.metrics["explanation_drift.importance_spearman"] <= 1
    assert champion["audits"]["explanation_drift"]["verdict"] == "SKIPPED"
    assert "is @champion itself" in champion["audits"]["explanation_drift"]["reason"]
