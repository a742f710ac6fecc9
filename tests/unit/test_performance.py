"""Performance metrics equal scikit-learn's own, on both datasets, for classifiers and regressors."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from audits.core.plan import PlannedAudit
from audits.core.result import Verdict
from audits.core.runner import run_planned
from audits.performance.performance import PerformanceAudit
from tests.conftest import context_for, make_pipeline_model


def run(context):
    return run_planned(PlannedAudit("performance", PerformanceAudit(), ()), context)


def test_classification_metrics_match_sklearn(classifier_context):
    result = run(classifier_context)
    model = classifier_context.model.estimator
    for name, ds in (("reference", classifier_context.reference), ("current", classifier_context.current)):
        proba = model.predict_proba(ds.X)
        assert result.metrics[f"performance.{name}.accuracy"] == pytest.approx(skm.accuracy_score(ds.y, model.predict(ds.X)))
        assert result.metrics[f"performance.{name}.roc_auc"] == pytest.approx(skm.roc_auc_score(ds.y == "yes", proba[:, 1]))
        assert result.metrics[f"performance.{name}.log_loss"] == pytest.approx(skm.log_loss(ds.y, proba, labels=model.classes_))
        assert result.metrics[f"performance.{name}.f1"] == pytest.approx(skm.f1_score(ds.y, model.predict(ds.X), pos_label="yes"))
    assert result.metrics["performance.delta.accuracy"] == pytest.approx(
        result.metrics["performance.current.accuracy"] - result.metrics["performance.reference.accuracy"])
    assert {a.name for a in result.artifacts} == {"metrics.json", "confusion_matrix.png"}


def test_regression_metrics_match_sklearn(regressor_context):
    result = run(regressor_context)
    ds = regressor_context.current
    pred = regressor_context.model.estimator.predict(ds.X)
    assert result.metrics["performance.current.rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(ds.y, pred)))
    assert result.metrics["performance.current.mae"] == pytest.approx(skm.mean_absolute_error(ds.y, pred))
    assert result.metrics["performance.current.r2"] == pytest.approx(skm.r2_score(ds.y, pred))
    assert "actual_vs_predicted.png" in {a.name for a in result.artifacts}


def test_multiclass_uses_macro_averages():
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    iris = load_iris(as_frame=True)
    X, y = iris.data, iris.target.rename("species")
    Xs, ys = X.sample(frac=1, random_state=0), y.sample(frac=1, random_state=0)
    context = context_for(LogisticRegression(max_iter=1000).fit(X, y), Xs, ys, split=90)
    result = run(context)
    ds = context.current
    proba = context.model.estimator.predict_proba(ds.X)
    assert result.metrics["performance.current.f1"] == pytest.approx(skm.f1_score(ds.y, proba.argmax(1), average="macro"))
    assert result.metrics["performance.current.roc_auc"] == pytest.approx(skm.roc_auc_score(ds.y, proba, multi_class="ovr"))


def test_unlabelled_current_data_is_skipped_with_the_reason(tabular):
    X, y = tabular
    context = context_for(make_pipeline_model(X, y, "gbm"), X, None)
    result = run(context)
    assert result.verdict is Verdict.SKIPPED and "labels on the current data" in result.reason


def test_roc_auc_is_nan_not_a_crash_when_one_class_is_present(tabular):
    X, y = tabular
    only_yes = y == "yes"
    context = context_for(make_pipeline_model(X, y, "gbm"), X[only_yes], y[only_yes], split=100)
    result = run(context)
    assert np.isnan(result.metrics["performance.current.roc_auc"])
    assert result.metrics["performance.current.accuracy"] > 0.5
