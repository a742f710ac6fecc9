"""`auditlens demo`, as the README runs it: models trained on bundled data, registered, audited; the right
explainer for each; the planted faults found; the way to the MLflow UI printed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tasks.adapters.tracking import make_client
from tests.conftest import ROOT
from tests.helpers import runs_with_status

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_harness")]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from prefect.settings import PREFECT_API_URL

    folder = tmp_path_factory.mktemp("demo")
    shutil.copytree(ROOT / "config", folder / "config")
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "COLUMNS": "250"}
    completed = subprocess.run([str(Path(sys.executable).parent / "auditlens"), "demo"], cwd=folder, env=env,
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return folder, completed.stdout, f"sqlite:///{folder / '.auditlens-demo' / 'mlflow.db'}"


def shap_info(client, run_id):
    return json.loads(Path(client.download_artifacts(run_id, "shap/result.json", tempfile.mkdtemp())).read_text())["info"]


def test_demo_prints_verdicts_and_the_ui_command(demo):
    folder, output, tracking_uri = demo
    assert f"mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000" in output
    for label in ("demo-classifier v1", "demo-classifier v2", "demo-regressor v1", "demo-readmission v1", "demo-digits v1",
                  "demo-adverts v1"):
        assert f"Audit of {label}" in output
    assert (folder / ".auditlens-demo" / "demo-classifier.audit.yaml").is_file()


def test_each_demo_model_gets_the_right_explainer(demo):
    _, _, tracking_uri = demo
    client = make_client(tracking_uri)
    runs = {r.info.run_name: r for r in runs_with_status(client, "FINISHED") if r.info.run_name.startswith("audit ")}
    assert set(runs) == {"audit demo-classifier v1", "audit demo-classifier v2", "audit demo-regressor v1",
                         "audit demo-readmission v1", "audit demo-digits v1", "audit demo-adverts v1"}
    expected = {
        "audit demo-classifier v1": ("linear", "LogisticRegression", "log-odds"),
        "audit demo-classifier v2": ("tree", "GradientBoostingClassifier", "log-odds"),
        "audit demo-regressor v1": ("tree", "RandomForestRegressor", "prediction"),
    }
    for name, (explainer, model_class, output) in expected.items():
        info = shap_info(client, runs[name].info.run_id)
        assert (info["explainer"], info["model_class"]) == (explainer, model_class), name
        assert info["explained_space"] == "transformed, summed back to original columns"
        assert output in info["output"]
        assert runs[name].data.metrics["shap.additivity_relative_error"] < 1e-9
    assert str(client.get_model_version_by_alias("demo-classifier", "champion").version) == "2"
    exact = json.loads(Path(client.download_artifacts(runs["audit demo-classifier v2"].info.run_id, "shap_exact/result.json",
                                                      tempfile.mkdtemp())).read_text())["info"]
    assert exact["explainer"] == "exact" and runs["audit demo-classifier v2"].data.metrics["shap_exact.additivity_relative_error"] < 1e-9


def test_the_planted_faults_are_found_and_the_random_column_does_not_matter(demo):
    _, _, tracking_uri = demo
    client = make_client(tracking_uri)
    [v2] = [r for r in runs_with_status(client, "FINISHED") if r.info.run_name == "audit demo-classifier v2"]
    metrics = v2.data.metrics
    # the user suite: 'mean radius' nulls, negative 'mean smoothness', size_class 'unknown' -> all three fail
    assert metrics["data_quality.user.failed"] == 3 and v2.data.tags["audit.data_quality.verdict"] == "FAIL"
    importance = {k.removeprefix("shap.importance."): v for k, v in metrics.items() if k.startswith("shap.importance.")}
    assert min(importance, key=importance.get) == "clinic"  # random by construction
    # every explanation part ran and has a verdict; v2 is the champion, so only its drift is skipped
    parts = ("lime", "explanation_agreement", "prototypes", "importance", "sanity_checks", "explanation_stability")
    assert all(v2.data.tags[f"audit.{p}.verdict"] in ("PASS", "WARN") for p in parts), {p: v2.data.tags.get(f"audit.{p}.verdict") for p in parts}
    assert v2.data.tags["audit.explanation_drift.verdict"] == "SKIPPED"
    # how sure is the model: every part ran; the planted texture shift and clinic mix are found as drift
    uncertainty = ("calibration", "conformal", "disagreement", "ood", "concordance", "drift", "segments", "projections")
    assert all(v2.data.tags[f"audit.{p}.verdict"] in ("PASS", "WARN", "FAIL") for p in uncertainty)
    drifted = {k.split(".")[2] for k, v in metrics.items() if k.startswith("drift.feature.") and k.endswith(".drifted") and v == 1}
    assert {"mean texture", "clinic"} <= drifted, drifted
    assert metrics["drift.domain_auc"] > 0.8 and v2.data.tags["audit.drift.verdict"] == "FAIL"
    tags = client.get_model_version("demo-classifier", "2").tags
    assert tags["audit.status"] == "done" and tags["audit.verdict"] == v2.data.tags["audit.verdict"]
    assert runs_with_status(client, "RUNNING") == []


def test_the_network_and_the_text_model_are_audited_with_every_part(demo):
    """demo-digits (a CNN; a quarter of the current digits inverted or noise) and demo-adverts (TF-IDF text)."""
    _, _, tracking_uri = demo
    client = make_client(tracking_uri)
    runs = {r.info.run_name: r for r in runs_with_status(client, "FINISHED")}
    digits, adverts = runs["audit demo-digits v1"], runs["audit demo-adverts v1"]
    version = client.get_model_version("demo-digits", "1")
    assert (digits.data.params["model.flavor"], digits.data.params["data.modality"], digits.data.params["data.input_shape"]) == \
        ("pytorch", "image", "1x8x8")
    assert adverts.data.params["data.modality"] == "text" and digits.data.params["pkg.torch"].startswith("2.13.0")
    network_parts = ("network_attributions", "occlusion", "network_sanity", "mc_dropout", "autoencoder_ood",
                     "embedding_projections", "embedding_prototypes", "calibration", "conformal", "ood")
    verdicts = {p: digits.data.tags[f"audit.{p}.verdict"] for p in network_parts}
    assert set(verdicts.values()) <= {"PASS", "WARN", "FAIL"}, verdicts  # every part ran: no ERROR, no SKIPPED
    m = digits.data.metrics
    assert m["network_attributions.shap.additivity_max_error"] < 1e-3
    # an overconfident network (sure of inverted and noise digits): temperature scaling lowers its ECE
    assert m["calibration.recalibrated.temperature.ece"] < m["calibration.recalibrated.none.ece"] - 0.03
    # the planted unfamiliar digits (25 % of current rows) are found by the network's own uncertainty tools
    assert m["autoencoder_ood.flagged_share"] > 0.2 and m["mc_dropout.max_excess_z"] > 3
    assert m["network_sanity.gradients.max_spearman"] < 0.5 and m["network_sanity.smoothgrad.max_spearman"] < 0.5
    assert version.tags["audit.status"] == "done" and version.tags["audit.verdict"] == digits.data.tags["audit.verdict"]
    assert adverts.data.tags["audit.text_explanations.verdict"] == "PASS"
    assert adverts.data.metrics["text_explanations.agreement.top1_match"] == 1.0
    highlighted = Path(client.download_artifacts(adverts.info.run_id, "text_explanations", tempfile.mkdtemp()))
    assert any(p.suffix == ".html" for p in highlighted.iterdir())
    report = Path(client.download_artifacts(adverts.info.run_id, "audit_report.html", tempfile.mkdtemp())).read_text()
    assert "background" in report and "text_explanations" in report  # the highlighted words are in the report itself


def test_the_deployed_model_is_estimated_without_labels_its_weak_slice_found_and_its_history_shows_the_decline(demo):
    """demo-readmission: the audit of v1 on labelled current data estimates its accuracy from the holdout (checked
    against the labels) and finds the planted weak slice first; six daily audits of @champion follow, the last three
    without labels, and the history page shows the estimated accuracy falling."""
    _, _, tracking_uri = demo
    client = make_client(tracking_uri)
    experiment = client.get_experiment_by_name("auditlens/demo-readmission").experiment_id
    runs = client.search_runs([experiment], order_by=["attributes.start_time ASC"])
    audit = next(r for r in runs if r.data.tags.get("auditlens.model_uri") == "models:/demo-readmission/1")
    m = audit.data.metrics
    assert m["performance_estimation.holdout"] == 1 and m["performance_estimation.trusted"] == 1
    assert m["performance_estimation.estimated.accuracy_low"] < m["performance_estimation.estimated.accuracy"] \
        < m["performance_estimation.estimated.accuracy_high"]
    assert abs(m["performance_estimation.estimated.accuracy"] - m["performance.current.accuracy"]) < 0.03
    slices = json.loads(Path(client.download_artifacts(audit.info.run_id, "slices/result.json", tempfile.mkdtemp())).read_text())
    top = slices["info"]["slice_1"]
    assert "clinic = north" in top and "age <=" in top, top  # the planted slice: north clinic, age under 42
    assert m["slices.found"] >= 1 and m["slices.top.conditions"] == 2

    daily = [r for r in runs if r.data.tags.get("auditlens.model_uri") == "models:/demo-readmission@champion"]
    assert [r.data.tags["auditlens.trigger"] for r in daily] == ["schedule"] * 6
    days = sorted(daily, key=lambda r: r.data.tags["audit.as_of"])
    assert [r.data.tags["audit.performance.verdict"] for r in days] == ["PASS"] * 3 + ["SKIPPED"] * 3  # labels come late
    estimated = [r.data.metrics["performance_estimation.estimated.accuracy"] for r in days]
    assert estimated[-1] < estimated[0] - 0.04
    assert days[-1].data.tags["audit.performance_estimation.verdict"] == "WARN"  # the decline crosses its bound
    assert "History of models:/demo-readmission@champion" in days[-1].data.tags["mlflow.note.content"]

    [history] = [r for r in runs if r.data.tags.get("auditlens.kind") == "history"]
    assert history.data.tags["auditlens.history_of"] == "models:/demo-readmission@champion"
    page = Path(client.download_artifacts(history.info.run_id, "history.html", tempfile.mkdtemp())).read_text()
    assert "Estimated accuracy without labels fell from" in page and "the model is probably degrading" in page
    assert "<script" not in page.lower()
    assert [x.value for x in client.get_metric_history(history.info.run_id, "history.audits")] == [1, 2, 3, 4, 5, 6]


def test_concordance_shows_which_signal_catches_each_planted_corruption(demo):
    _, _, tracking_uri = demo
    client = make_client(tracking_uri)
    [digits] = [r for r in runs_with_status(client, "FINISHED") if r.info.run_name == "audit demo-digits v1"]
    m = digits.data.metrics
    for kind in ("inverted", "noise"):
        assert m[f"concordance.planted.{kind}.knn.auroc"] > 0.95
        assert 0 <= m[f"concordance.planted.{kind}.mc_dropout.auroc"] <= 1
    assert m["concordance.planted.none.rows"] > m["concordance.planted.inverted.rows"] > m["concordance.planted.noise.rows"] > 0


def test_the_history_command_writes_the_page_and_says_what_it_found(demo):
    folder, _, tracking_uri = demo
    auditlens = str(Path(sys.executable).parent / "auditlens")
    page = folder / "history.html"
    done = subprocess.run([auditlens, "history", "models:/demo-readmission@champion", "--config",
                           ".auditlens-demo/demo-readmission.audit.yaml", "-o", str(page)], cwd=folder, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "History of models:/demo-readmission@champion over 6 audit(s): MLflow run" in done.stdout
    assert "- Estimated accuracy without labels fell from" in done.stdout
    assert "the model is probably degrading" in page.read_text()
    client = make_client(tracking_uri)
    experiment = client.get_experiment_by_name("auditlens/demo-readmission").experiment_id
    [history] = [r for r in client.search_runs([experiment]) if r.data.tags.get("auditlens.kind") == "history"]
    assert len(client.get_metric_history(history.info.run_id, "history.audits")) == 7  # six scheduled audits, then this

    unknown = subprocess.run([auditlens, "history", "models:/no-such-model", "--tracking-uri", tracking_uri], cwd=folder,
                             capture_output=True, text=True, timeout=300)
    assert unknown.returncode == 2
    assert "no audits of no-such-model" in unknown.stdout + unknown.stderr and "Traceback" not in unknown.stderr
