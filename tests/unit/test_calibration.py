"""Calibration audit against references we did not write: the uncertainty-calibration package (Kumar
et al.) for the ECE and its bins, scikit-learn for Brier, log loss and recalibration, scipy for the
temperature, and synthetic ground truth (a model squashed towards 0.5; labels drawn from the model)."""

from __future__ import annotations

import calibration as cal
import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize_scalar
from scipy.special import softmax
from sklearn import metrics as skm
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from audits.core.context import ModelUnderAudit, build_context
from audits.core.plan import PlannedAudit
from audits.core.result import Verdict
from audits.core.runner import run_planned
from audits.methods.reliability import consistency_ece, expected_calibration_error
from audits.testing import check_audit_contract
from audits.uncertainty.calibration import CalibrationAudit, CalibrationConfig
from tests.conftest import context_for, make_pipeline_model, make_tabular


def run(context, thresholds=CalibrationAudit.default_thresholds, **config):
    return run_planned(PlannedAudit("calibration", CalibrationAudit(CalibrationConfig(**config)), thresholds), context)


class Squashed(ClassifierMixin, BaseEstimator):
    """Probabilities pulled towards uniform: 1/k + factor * (p - 1/k) (binary: 0.5 + 0.3 (p - 0.5))."""

    def __init__(self, model=None, factor=0.3):
        self.model, self.factor = model, factor

    def fit(self, X, y):
        self.classes_ = self.model.classes_
        return self

    def predict_proba(self, X):
        p = self.model.predict_proba(X)
        return 1.0 / p.shape[1] + self.factor * (p - 1.0 / p.shape[1])

    def predict(self, X):
        return self.classes_[self.predict_proba(X).argmax(axis=1)]


def logistic_data(n, seed):
    """Labels drawn from a logistic model, so a logistic regression fitted on them is well calibrated."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(n, 3)), columns=["a", "b", "c"])
    logit = 2.0 * X["a"] - 1.5 * X["b"] + 0.5
    return X, pd.Series(np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "pos", "neg"), name="y")


def context_of(model, X, y, split):
    m = ModelUnderAudit.from_estimator(model)
    return build_context(m, (X.iloc[:split], y.iloc[:split]), (X.iloc[split:], y.iloc[split:]), target="y", seed=0)


def random_probabilities(n, k, rng, grid=None):
    P = softmax(rng.normal(size=(n, k)) * 2.0, axis=1)
    if grid is not None:  # many ties, and values exactly on the equal-width edges k/15
        P = np.round(P * grid) / grid
        P[:, -1] = 1.0 - P[:, :-1].sum(axis=1)
        P = np.clip(P, 0, 1)
    y = (rng.random(n)[:, None] > np.cumsum(P, axis=1)).sum(axis=1).clip(0, k - 1)
    return P, y


@pytest.mark.parametrize("n,k,grid", [(700, 2, None), (900, 3, None), (600, 2, 15), (500, 4, 15), (9, 3, None)])
@pytest.mark.parametrize("bins", [15, 7])
def test_ece_equals_the_uncertainty_calibration_package(n, k, grid, bins):
    P, y = random_probabilities(n, k, np.random.default_rng(n + k + bins), grid)
    conf, correct = P.max(axis=1), P.argmax(axis=1) == y
    ece, mce, table = expected_calibration_error(conf, correct, bins, "uniform")
    assert ece == pytest.approx(cal.get_ece(P, y, num_bins=bins), abs=1e-12)
    assert expected_calibration_error(conf, correct, bins, "quantile")[0] == pytest.approx(cal.get_ece_em(P, y, num_bins=bins), abs=1e-12)
    # the bins themselves: the package's equal-width edges and its own binning of (confidence, correct)
    binned = cal.bin(list(zip(conf, correct.astype(float), strict=True)), cal.get_equal_prob_bins(conf, bins))
    assert table["count"].tolist() == [len(b) for b in binned]
    gaps = [abs(np.mean(b[:, 0]) - np.mean(b[:, 1])) for b in binned if len(b)]
    assert mce == pytest.approx(max(gaps), abs=1e-12)
    em_binned = cal.bin(list(zip(conf, correct.astype(float), strict=True)), cal.get_equal_bins(conf, bins))
    assert expected_calibration_error(conf, correct, bins, "quantile")[2]["count"].tolist() == [len(b) for b in em_binned]
    # class-wise: binary = ECE of P(positive), multiclass = the package's marginal (one-vs-rest) mode
    if k == 2:
        classwise = expected_calibration_error(P[:, 1], y == 1, bins)[0]
        assert classwise == pytest.approx(cal.get_ece(P[:, 1], y, num_bins=bins), abs=1e-12)
    else:
        classwise = np.mean([expected_calibration_error(P[:, c], y == c, bins)[0] for c in range(k)])
        assert classwise == pytest.approx(cal.get_ece(P, y, num_bins=bins, mode="marginal"), abs=1e-12)


def test_audit_metrics_equal_the_references_on_a_multiclass_model():
    from sklearn.datasets import load_iris

    iris = load_iris(as_frame=True)
    X, y = iris.data.sample(frac=1, random_state=0), iris.target.rename("y").sample(frac=1, random_state=0)
    model = LogisticRegression(max_iter=1000, C=0.05).fit(X.iloc[:90], y.iloc[:90])
    result = run(context_of(model, X, y, 90), ())
    P, labels = model.predict_proba(X.iloc[90:]), y.iloc[90:].to_numpy()
    m = {k.removeprefix("calibration.current."): v for k, v in result.metrics.items() if k.startswith("calibration.current.")}
    assert m["ece"] == pytest.approx(cal.get_ece(P, labels), abs=1e-12)
    assert m["ece_equal_mass"] == pytest.approx(cal.get_ece_em(P, labels), abs=1e-12)
    assert m["classwise_ece"] == pytest.approx(cal.get_ece(P, labels, mode="marginal"), abs=1e-12)
    one_hot = np.eye(3)[labels]
    assert m["brier"] == pytest.approx(np.mean(np.sum((P - one_hot) ** 2, axis=1)), rel=1e-12)
    assert m["brier"] == pytest.approx(skm.brier_score_loss(labels, P), rel=1e-12)
    assert m["log_loss"] == pytest.approx(skm.log_loss(labels, P), rel=1e-12)


def test_brier_and_log_loss_equal_sklearn_on_the_binary_fixture(classifier_context):
    result = run(classifier_context, ())
    model = classifier_context.model.estimator
    for name in ("reference", "current"):
        ds = classifier_context.dataset(name)
        P = model.predict_proba(ds.X)
        assert result.metrics[f"calibration.{name}.brier"] == pytest.approx(skm.brier_score_loss(ds.y == "yes", P[:, 1]), rel=1e-12)
        assert result.metrics[f"calibration.{name}.log_loss"] == pytest.approx(skm.log_loss(ds.y, P, labels=model.classes_), rel=1e-12)
        assert result.metrics[f"calibration.{name}.ece"] == pytest.approx(cal.get_ece(P, (ds.y == "yes").to_numpy(int)), abs=1e-12)
        assert result.metrics[f"calibration.{name}.classwise_ece"] == pytest.approx(
            cal.get_ece(P[:, 1], (ds.y == "yes").to_numpy(int)), abs=1e-12)
    assert {a.name for a in result.artifacts} == {"reliability.png", "bins.json", "classwise.json", "recalibration.json"}


@pytest.mark.parametrize("source", ["reference", "current_split"])
def test_a_squashed_model_fails_and_recalibration_repairs_it(source):
    X, y = logistic_data(6000, 0)
    squashed = Squashed(LogisticRegression().fit(X.iloc[:2000], y.iloc[:2000])).fit(X, y)
    result = run(context_of(squashed, X, y, 2000), recalibration_data=source)
    m = result.metrics
    # top-label confidence is 0.5 + 0.3 (c - 0.5) while accuracy is c: the gap is 0.7 (c - 0.5), about 0.2 here
    assert m["calibration.current.ece"] > 0.15 and m["calibration.current.ece_excess"] > 0.10
    assert result.verdict is Verdict.FAIL
    assert m["calibration.temperature"] < 0.5  # underconfident: the fitted temperature sharpens
    for method in ("temperature", "isotonic"):
        assert m[f"calibration.recalibrated.{method}.ece"] < 0.05
        assert m[f"calibration.recalibrated.{method}.ece"] < 0.25 * m["calibration.recalibrated.none.ece"]
    assert result.info["suggested_recalibration"].split(":")[0] in {"temperature", "isotonic"}
    assert "training data" in result.info["recalibration_data"] or "half" in result.info["recalibration_data"]


def test_labels_drawn_from_the_model_give_a_low_ece_and_no_recalibration():
    X, _ = make_tabular(5000, seed=4)
    X_fit, y_fit = make_tabular(400, seed=5)
    model = make_pipeline_model(X_fit, y_fit, "gbm")
    p_yes = model.predict_proba(X)[:, 1]
    y = pd.Series(np.where(np.random.default_rng(6).random(len(X)) < p_yes, "yes", "no"), name="label")
    result = run(context_for(model, X, y, split=1000))
    m = result.metrics
    assert m["calibration.current.ece"] < 0.03  # 4,000 rows: the noise floor is about 0.015
    assert m["calibration.current.ece_excess"] < 0.02
    assert 0.9 < m["calibration.temperature"] < 1.1
    assert result.verdict is Verdict.PASS


def test_temperature_equals_a_direct_log_loss_minimisation():
    X, y = logistic_data(3000, 1)
    model = Squashed(LogisticRegression().fit(X.iloc[:1000], y.iloc[:1000]), factor=0.5).fit(X, y)
    result = run(context_of(model, X, y, 1500), ())
    P_ref, P_cur = model.predict_proba(X.iloc[:1500]), model.predict_proba(X.iloc[1500:])

    def nll(log_t, P, labels):
        return skm.log_loss(labels, softmax(np.log(P) / np.exp(log_t), axis=1), labels=model.classes_)

    log_t = minimize_scalar(nll, bounds=(-5, 5), method="bounded", args=(P_ref, y.iloc[:1500]), options={"xatol": 1e-9}).x
    assert result.metrics["calibration.temperature"] == pytest.approx(np.exp(log_t), rel=1e-4)
    assert result.metrics["calibration.recalibrated.temperature.log_loss"] == pytest.approx(nll(log_t, P_cur, y.iloc[1500:]), rel=1e-6)


def test_isotonic_equals_calibratedclassifiercv_on_the_model_itself(tabular):
    # A k-NN pipeline: predict_proba only (scikit-learn would calibrate a decision_function where there is one,
    # while the audit always calibrates the probabilities), and many tied probabilities.
    X, y = tabular
    context = context_for(make_pipeline_model(X.iloc[:250], y.iloc[:250], "knn"), X, y)
    result = run(context, ())
    model, ref, cur = context.model.estimator, context.reference, context.current
    iso = CalibratedClassifierCV(FrozenEstimator(model), method="isotonic").fit(ref.X, ref.y)
    P = iso.predict_proba(cur.X)
    labels = (cur.y == "yes").to_numpy(int)
    assert result.metrics["calibration.recalibrated.isotonic.ece"] == pytest.approx(cal.get_ece(P, labels), abs=1e-12)
    assert result.metrics["calibration.recalibrated.isotonic.brier"] == pytest.approx(skm.brier_score_loss(labels, P[:, 1]), rel=1e-12)


def test_current_split_fits_on_one_half_and_evaluates_on_the_other(classifier_context):
    result = run(classifier_context, (), recalibration_data="current_split")
    cur = classifier_context.current
    order = classifier_context.rng("calibration.recalibration_split").permutation(len(cur))
    held = np.sort(order[len(order) // 2:])
    P, labels = cur.predictions.proba[held], (cur.y.iloc[held] == "yes").to_numpy(int)
    assert result.metrics["calibration.recalibrated.none.ece"] == pytest.approx(cal.get_ece(P, labels), abs=1e-12)
    fit = np.sort(order[: len(order) // 2])
    iso = IsotonicRegression(out_of_bounds="clip").fit(cur.predictions.proba[fit, 1], cur.y.iloc[fit] == "yes")
    q = iso.predict(P[:, 1])
    assert result.metrics["calibration.recalibrated.isotonic.ece"] == pytest.approx(
        cal.get_ece(np.column_stack([1 - q, q]), labels), abs=1e-12)
    assert "half" in result.info["recalibration_data"]


def test_consistency_resampling_is_the_ece_of_labels_drawn_from_the_confidences():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.3, 1.0, size=300)
    eces, accuracy = consistency_ece(conf, 10, "uniform", np.random.default_rng(7), 25)
    draws = np.random.default_rng(7).random((25, len(conf)))  # the same stream, drawn in bin order
    order = np.argsort(np.minimum(np.searchsorted(np.arange(1, 11) / 10, conf), 9), kind="stable")
    for r in range(25):
        outcomes = np.empty(len(conf))
        outcomes[order] = draws[r] < conf[order]
        ece, _, table = expected_calibration_error(conf, outcomes, 10, "uniform")
        assert eces[r] == pytest.approx(ece, abs=1e-12)
        np.testing.assert_allclose(accuracy[r], table["accuracy"], equal_nan=True)


def test_labels_unknown_to_the_model_are_dropped_and_said(classifier_context):
    cur = classifier_context.current
    y = cur.y.copy()
    y.iloc[:5] = "maybe"
    context = build_context(classifier_context.model, (classifier_context.reference.X, classifier_context.reference.y),
                            (cur.X, y), target="label")
    result = run(context, ())
    kept = cur.predictions.proba[5:], (cur.y.iloc[5:] == "yes").to_numpy(int)
    assert result.metrics["calibration.current.ece"] == pytest.approx(cal.get_ece(*kept), abs=1e-12)
    assert result.metrics["calibration.current.rows"] == len(cur) - 5
    assert "5 row(s)" in result.info["current_dropped_rows"]


def test_contract_on_the_classifier_fixture(classifier_context):
    check_audit_contract(CalibrationAudit, classifier_context)
    check_audit_contract(CalibrationAudit, classifier_context, {"recalibration_data": "current_split", "bins": 10})


def test_regressors_are_skipped_with_a_reason(regressor_context):
    result = run(regressor_context)
    assert result.verdict is Verdict.SKIPPED
    assert "classification" in result.reason and "regression" in result.reason


def test_unlabelled_current_data_is_skipped(tabular):
    X, y = tabular
    model = ModelUnderAudit.from_estimator(make_pipeline_model(X, y))
    context = build_context(model, (X.iloc[:250], y.iloc[:250]), (X.iloc[250:], None), target="label")
    result = run(context)
    assert result.verdict is Verdict.SKIPPED and "labels on the current" in result.reason


def test_an_unlabelled_reference_falls_back_to_a_split_of_current(tabular):
    X, y = tabular
    model = ModelUnderAudit.from_estimator(make_pipeline_model(X, y))
    context = build_context(model, (X.iloc[:250], None), (X.iloc[250:], y.iloc[250:]), target="label")
    result = run(context, ())
    assert not any(k.startswith("calibration.reference.") for k in result.metrics)
    assert "half" in result.info["recalibration_fallback"] and "half" in result.info["recalibration_data"]
    assert result.metrics["calibration.current.ece"] == pytest.approx(
        cal.get_ece(context.current.predictions.proba, (y.iloc[250:] == "yes").to_numpy(int)), abs=1e-12)
