"""Networks, images and text end to end: a PyTorch CNN registered with mlflow.pytorch and a text Pipeline,
image data as .npz and text as a raw column, audited by the audit_model flow (a real Prefect flow run, a real
MLflow store), and read back by value."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn import metrics as skm

from flows.audit_model import audit_model
from tasks.adapters.datasets import read_table
from tasks.adapters.demo import register_pytorch_model, register_sklearn_model
from tasks.adapters.errors import DataError
from tasks.adapters.mlflow_sink import MlflowSink
from tasks.adapters.models import load_model, resolve_model
from tasks.adapters.tracking import make_client
from tests.conftest import train_network

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_harness")]


def write(folder, name, audits, data, tracking_uri):
    path = folder / name
    path.write_text(yaml.safe_dump({"kind": "audit", "seed": 5, "data": data, "mlflow": {"tracking_uri": tracking_uri},
                                    "audits": audits}))  # fmt: skip
    return path


@pytest.fixture(scope="module")
def image_world(tmp_path_factory):
    from audits.methods.architectures import SmallCNN
    from audits.methods.synthetic import digits

    folder = tmp_path_factory.mktemp("image-world")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    X, y = digits()
    model = train_network(SmallCNN(), X[:900], y[:900], epochs=10)
    version = register_pytorch_model(MlflowSink(uri), model.network(), name="digits", experiment="e2e/training",
                                     input_example=X[:3], classes=list(range(10)), params={})  # fmt: skip
    np.savez(folder / "reference.npz", images=X[:600], label=y[:600])
    np.savez(folder / "current.npz", images=X[1500:], label=y[1500:])
    return folder, uri, version, model, X, y


def test_a_logged_cnn_loads_natively_and_predicts_as_trained(image_world):
    folder, uri, version, model, X, _ = image_world
    client = make_client(uri)
    loaded = load_model(resolve_model(f"models:/digits/{version}", client), client)
    assert (loaded.flavor, loaded.task, loaded.classes) == ("pytorch", "classification", tuple(range(10)))
    assert loaded.estimator.input_shape == (1, 8, 8)
    flat = X[1500:1600].reshape(100, -1)
    np.testing.assert_array_equal(loaded.predict_proba(flat), model.predict_proba(flat))
    frame = read_table(folder / "current.npz")
    assert list(frame.columns[:2]) == ["p0_0_0", "p0_0_1"] and frame.shape == (297, 65)
    np.testing.assert_array_equal(frame.drop(columns="label").to_numpy(np.float32), X[1500:].reshape(297, -1))


def test_the_image_audit_records_what_sklearn_computes(image_world):
    folder, uri, version, model, X, y = image_world
    config = write(folder, "image.yaml", [{"audit": "performance"}, {"audit": "calibration"}, {"audit": "shap"}],
                   {"reference": "reference.npz", "current": "current.npz", "target": "label", "modality": "image"}, uri)
    summary = audit_model(model_uri=f"models:/digits/{version}", config_path=str(config), tracking_uri=uri)
    run = make_client(uri).get_run(summary["run_id"])
    predicted = model.predict(X[1500:].reshape(297, -1))
    assert run.data.metrics["performance.current.accuracy"] == pytest.approx(skm.accuracy_score(y[1500:], predicted), abs=1e-12)
    assert run.data.tags["audit.shap.verdict"] == "SKIPPED"  # made for tables: said so, not run on pixels
    assert run.data.params["data.current.rows"] == "297"
    assert make_client(uri).get_model_version("digits", version).tags["audit.status"] == "done"


def test_image_data_must_be_npz_with_an_images_array(image_world):
    folder, uri, version, _, X, y = image_world
    pd.DataFrame(X[:50].reshape(50, -1)).assign(label=y[:50]).to_csv(folder / "flat.csv", index=False)
    config = write(folder, "csv.yaml", [{"audit": "performance"}],
                   {"reference": "flat.csv", "current": "current.npz", "target": "label", "modality": "image"}, uri)
    with pytest.raises(DataError, match=r"image data must be a \.npz file"):
        audit_model(model_uri=f"models:/digits/{version}", config_path=str(config), tracking_uri=uri)
    np.savez(folder / "wrong.npz", pixels=X[:50], label=y[:50])
    config = write(folder, "wrong.yaml", [{"audit": "performance"}],
                   {"reference": "wrong.npz", "current": "current.npz", "target": "label", "modality": "image"}, uri)
    with pytest.raises(DataError, match="needs an array 'images' of shape N x C x H x W"):
        audit_model(model_uri=f"models:/digits/{version}", config_path=str(config), tracking_uri=uri)


def test_a_text_pipeline_is_audited_on_its_raw_text_column(tmp_path):
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    from audits.methods.synthetic import job_adverts

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    data = job_adverts(400, seed=3)
    data.iloc[:250].to_csv(tmp_path / "reference.csv", index=False)
    data.iloc[250:].to_csv(tmp_path / "current.csv", index=False)
    model = Pipeline([("tfidf", ColumnTransformer([("words", TfidfVectorizer(), "text")])),
                      ("model", LogisticRegression(max_iter=1000))]).fit(data.iloc[:250][["text"]], data.iloc[:250]["salary"])  # fmt: skip
    version = register_sklearn_model(MlflowSink(uri), model, name="adverts", experiment="e2e/training",
                                     input_example=data[["text"]].head(2), params={})  # fmt: skip
    config = write(tmp_path, "text.yaml", [{"audit": "performance"}, {"audit": "text_explanations"}, {"audit": "drift"}],
                   {"reference": "reference.csv", "current": "current.csv", "target": "salary", "modality": "text"}, uri)
    summary = audit_model(model_uri=f"models:/adverts/{version}", config_path=str(config), tracking_uri=uri)
    run = make_client(uri).get_run(summary["run_id"])
    current = data.iloc[250:]
    assert run.data.metrics["performance.current.accuracy"] == pytest.approx(
        skm.accuracy_score(current["salary"], model.predict(current[["text"]])), abs=1e-12)
    assert run.data.tags["audit.text_explanations.verdict"] in {"PASS", "WARN"}
    assert run.data.metrics["text_explanations.agreement.top1_match"] == 1.0  # planted words: both methods agree
    assert run.data.tags["audit.drift.verdict"] == "SKIPPED"


def test_an_sklearn_mlp_on_images_gets_the_network_audits(image_world):
    """scikit-learn's MLPClassifier, logged as a scikit-learn model, trained on the pixel columns as auditlens
    reads them: audited as the network it is (gradients, occlusion, embeddings), with sklearn's own predictions."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    folder, uri, _, _, X, y = image_world
    frame = read_table(folder / "reference.npz")
    pixels = frame.drop(columns="label")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp = MLPClassifier((32,), max_iter=200, random_state=0).fit(pixels, frame["label"])
    version = register_sklearn_model(MlflowSink(uri), mlp, name="digits-mlp", experiment="e2e/training",
                                     input_example=pixels.head(2), params={})  # fmt: skip
    config = write(folder, "mlp.yaml", [{"audit": "performance"}, {"audit": "network_attributions", "config": {"rows": 8}},
                                        {"audit": "occlusion", "config": {"rows": 8}}, {"audit": "embedding_projections"}],
                   {"reference": "reference.npz", "current": "current.npz", "target": "label", "modality": "image"}, uri)
    summary = audit_model(model_uri=f"models:/digits-mlp/{version}", config_path=str(config), tracking_uri=uri)
    run = make_client(uri).get_run(summary["run_id"])
    current = read_table(folder / "current.npz")
    expected = skm.accuracy_score(current["label"], mlp.predict(current.drop(columns="label")))
    assert run.data.metrics["performance.current.accuracy"] == pytest.approx(expected, abs=1e-12)
    assert run.data.params["model.flavor"] == "sklearn-mlp"
    for part in ("network_attributions", "occlusion", "embedding_projections"):
        assert run.data.tags[f"audit.{part}.verdict"] in {"PASS", "WARN"}, (part, run.data.tags.get(f"audit.{part}.verdict"))
    assert run.data.metrics["network_attributions.shap.additivity_max_error"] < 1e-3
