"""A registered version's logged model is found by the id its source names, checked against the store, and only
searched for when the source does not name one (or names one this store does not hold)."""

from __future__ import annotations

from sklearn.linear_model import LogisticRegression

from audits.testing import make_tabular
from tasks.adapters.demo import register_sklearn_model
from tasks.adapters.mlflow_sink import MlflowSink
from tasks.adapters.models import resolve_model


def test_the_logged_model_of_a_version_is_the_one_its_source_names(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    X, y = make_tabular(60, seed=1)
    X = X.select_dtypes("number").fillna(0.0)
    sink = MlflowSink(uri)
    version = register_sklearn_model(sink, LogisticRegression(max_iter=200).fit(X, y), name="m", experiment="training",
                                     input_example=X.head(2), params={}, artifact_location=(tmp_path / "art").as_uri())
    client = sink.client
    mv = client.get_model_version("m", version)
    [logged] = client.search_logged_models(experiment_ids=[client.get_experiment_by_name("training").experiment_id])
    assert f"/models/{logged.model_id}/artifacts" in mv.source  # the source names it (no model_id on the version)
    assert resolve_model("models:/m/1", client).model_id == logged.model_id

    # a version whose source names a logged model this store does not hold: found by its run's models, or none
    other = client.create_model_version("m", mv.source.replace(logged.model_id, "m-" + "0" * 32), run_id=mv.run_id)
    assert resolve_model(f"models:/m/{other.version}", client).model_id is None


def test_a_model_uri_of_another_form_is_refused_before_any_store_is_read():
    import pytest

    from tasks.adapters.errors import ModelNotFoundError
    from tasks.adapters.models import check_model_uri

    for fine in ("models:/churn/3", "models:/churn@champion", "runs:/" + "a" * 32 + "/model"):
        check_model_uri(fine)
    for wrong in ("s3://bucket/model", "models:/churn", "models:/churn/v3", "runs:/abc/model", "churn"):
        with pytest.raises(ModelNotFoundError, match="unsupported model URI"):
            check_model_uri(wrong)
