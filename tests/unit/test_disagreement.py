"""Disagreement audit against references we did not write: entropies and KL divergences by scipy, the
textbook standard error of an OLS prediction (from scipy's linregress), models whose members cannot
disagree, and a designed problem where the data say nothing about one direction."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from scipy.stats import entropy as scipy_entropy
from scipy.stats import linregress
from sklearn.dummy import DummyClassifier, DummyRegressor
from sklearn.linear_model import LinearRegression, LogisticRegression

from audits.core.context import ModelUnderAudit, build_context
from audits.core.plan import PlannedAudit
from audits.core.result import Verdict
from audits.core.runner import run_planned
from audits.methods.ensemble import classifier_uncertainty, fit_ensemble, row_uncertainty
from audits.testing import check_audit_contract
from audits.uncertainty.disagreement import DisagreementAudit, DisagreementConfig


def run(context, **config):
    audit = DisagreementAudit(DisagreementConfig(**config))
    return run_planned(PlannedAudit("disagreement", audit, DisagreementAudit.default_thresholds), context)


def context_of(estimator, X, y, current, seed: int = 0):
    return build_context(ModelUnderAudit.from_estimator(estimator.fit(X, y)), (X, y), (current, None), seed=seed)


def table(result, name: str) -> pd.DataFrame:
    return next(a.content for a in result.artifacts if a.name == f"{name}.json")


def test_contract_on_both_fixtures(classifier_context, regressor_context):
    classifier = check_audit_contract(DisagreementAudit, classifier_context)
    assert {f"disagreement.{k}" for k in ("mean_total", "mean_aleatoric", "mean_epistemic", "epistemic_share", "mean_variance",
                                          "reference.mean_epistemic", "epistemic_ratio", "members")} <= classifier.metrics.keys()
    assert classifier.verdict is Verdict.PASS  # an unshifted batch: the ratio stays near 1
    regressor = check_audit_contract(DisagreementAudit, regressor_context)
    assert {"disagreement.mean_std", "disagreement.reference.mean_std", "disagreement.epistemic_ratio"} <= regressor.metrics.keys()
    assert not any("aleatoric" in key for key in regressor.metrics)


def test_decomposition_matches_scipy_entropy_and_kl():
    """total = H(mean p), aleatoric = mean H(p_m), epistemic = mean KL(p_m || mean p): the mutual information."""
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet([0.5, 1.0, 2.0, 1.0], size=(7, 60))  # (members, rows, classes)
    predicted = rng.integers(0, 4, size=60)
    frame = classifier_uncertainty(probabilities, predicted)
    mean = probabilities.mean(axis=0)
    assert np.allclose(frame["total"], scipy_entropy(mean, axis=1), rtol=0, atol=1e-12)
    assert np.allclose(frame["aleatoric"], scipy_entropy(probabilities, axis=2).mean(axis=0), rtol=0, atol=1e-12)
    kl = np.mean([scipy_entropy(probabilities[m], mean, axis=1) for m in range(7)], axis=0)
    assert np.allclose(frame["epistemic"], kl, rtol=0, atol=1e-12)
    p_predicted = probabilities[:, np.arange(60), predicted]
    assert np.allclose(frame["variance"], [np.var(column, ddof=1) for column in p_predicted.T], rtol=0, atol=1e-15)
    assert np.allclose(frame["p_predicted"], p_predicted.mean(axis=0), rtol=0, atol=1e-15)


def test_identity_holds_per_row_on_a_real_ensemble(classifier_context):
    ensemble = fit_ensemble(classifier_context, 10, 5000, 0.25, "disagreement")
    current = classifier_context.current
    frame = row_uncertainty(classifier_context, ensemble.members, current.X, current.predictions.labels)
    assert np.abs(frame["total"] - frame["aleatoric"] - frame["epistemic"]).max() <= 1e-12
    assert (frame["epistemic"] >= 0).all() and frame["epistemic"].max() > 0
    # held-out reference rows are disjoint from the rows the members were fitted on
    assert not set(ensemble.holdout_positions) & set(ensemble.fit_positions)
    result = run(classifier_context)
    m = result.metrics
    assert m["disagreement.mean_total"] == pytest.approx(m["disagreement.mean_aleatoric"] + m["disagreement.mean_epistemic"], abs=1e-12)
    assert m["disagreement.mean_total"] == pytest.approx(frame["total"].mean(), abs=1e-12)  # same seed, same members
    assert m["disagreement.epistemic_share"] == pytest.approx(m["disagreement.mean_epistemic"] / m["disagreement.mean_total"])
    assert m["disagreement.reference.rows"] == len(ensemble.holdout_positions) == round(0.25 * len(classifier_context.reference))


def test_identical_members_have_exactly_zero_epistemic_uncertainty(tabular):
    rng = np.random.default_rng(1)
    probabilities = np.repeat(rng.dirichlet([1, 1, 1], size=(1, 40)), 2, axis=0)  # two identical members
    assert (classifier_uncertainty(probabilities, np.zeros(40, dtype=int))["epistemic"] == 0).all()

    # Members that ignore their data: every clone predicts [1/2, 1/2] whatever it is fitted on.
    X, y = tabular
    X = X.drop(columns="colour")
    result = run(context_of(DummyClassifier(strategy="uniform"), X.iloc[:250], y.iloc[:250], X.iloc[250:]))
    assert result.metrics["disagreement.mean_epistemic"] == 0
    assert result.metrics["disagreement.mean_variance"] == 0
    assert result.metrics["disagreement.mean_aleatoric"] == pytest.approx(np.log(2), abs=1e-12)
    assert result.metrics["disagreement.epistemic_ratio"] == 1.0  # 0 / 0: members that agree everywhere

    target = pd.Series(np.arange(len(X), dtype=float), name="t")
    result = run(context_of(DummyRegressor(strategy="constant", constant=1.5), X.iloc[:250], target.iloc[:250], X.iloc[250:]))
    assert result.metrics["disagreement.mean_std"] == 0 and result.metrics["disagreement.reference.mean_std"] == 0


def symmetric_problem(seed: int):
    """y depends on 'a' only; each training row appears again with 'b' negated, so the fitted effect of 'b'
    is 0 and only resampling moves it: far along 'b' the data cannot say which class a row belongs to."""
    rng = np.random.default_rng(seed)

    def draw(n):
        y = rng.integers(0, 2, n)
        X = pd.DataFrame({"a": np.where(y == 1, 1.0, -1.0) + rng.normal(size=n), "b": rng.normal(size=n)})
        return X, pd.Series(np.where(y == 1, "yes", "no"), name="label")

    X, y = draw(200)
    X, y = pd.concat([X, X.assign(b=-X["b"])], ignore_index=True), pd.concat([y, y], ignore_index=True)
    inside, _ = draw(200)
    far = inside.assign(b=rng.choice([-1.0, 1.0], 200) * rng.uniform(20, 40, 200))
    return X, y, pd.concat([inside, far], ignore_index=True)


def test_epistemic_uncertainty_is_far_higher_far_outside_the_training_range():
    X, y, current = symmetric_problem(seed=0)
    context = context_of(LogisticRegression(), X, y, current)
    ensemble = fit_ensemble(context, 10, 5000, 0.25, "disagreement")
    frame = row_uncertainty(context, ensemble.members, current, context.current.predictions.labels)
    inside, far = frame.iloc[:200], frame.iloc[200:]
    assert far["epistemic"].mean() > 20 * inside["epistemic"].mean()
    assert far["epistemic"].mean() > 0.25  # of at most log 2 = 0.69 nats
    assert far["epistemic"].mean() / far["total"].mean() > 0.5 > inside["epistemic"].mean() / inside["total"].mean()

    result = run(context)
    assert result.metrics["disagreement.epistemic_ratio"] > 2 and result.verdict is Verdict.WARN
    rows = table(result, "rows")
    assert (rows["row"].astype(int).iloc[:100] >= 200).all()  # the most uncertain rows are the far ones
    assert rows["epistemic"].is_monotonic_decreasing


def test_regression_spread_matches_the_ols_standard_error():
    """The bootstrap std of a linear fit's prediction at x0 estimates its standard error,
    sigma sqrt(1/n + (x0 - mean x)^2 / Sxx), computed here from scipy's linregress on the same rows."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=2000)
    X, y = pd.DataFrame({"x": x}), pd.Series(1.0 + 2.0 * x + rng.normal(size=2000), name="y")
    grid = pd.DataFrame({"x": [0.0, 2.0, 10.0, 25.0]})
    context = context_of(LinearRegression(), X, y, grid)
    ensemble = fit_ensemble(context, 500, 5000, 0.25, "disagreement")
    spread = row_uncertainty(context, ensemble.members, grid, context.current.predictions.labels)["std"].to_numpy()

    fit = linregress(x[ensemble.fit_positions], y.to_numpy()[ensemble.fit_positions])
    x_mean = x[ensemble.fit_positions].mean()
    var_slope = fit.stderr**2
    var_intercept, cov = fit.intercept_stderr**2, -x_mean * fit.stderr**2
    standard_error = np.sqrt(var_intercept + grid["x"] ** 2 * var_slope + 2 * grid["x"] * cov).to_numpy()
    assert np.allclose(spread, standard_error, rtol=0.15)  # 500 members: the std itself is within about 3 %
    assert spread[-1] > 10 * spread[0]


def test_skipped_without_reference_labels_or_a_native_model(classifier_context):
    unlabelled = dataclasses.replace(classifier_context, reference=dataclasses.replace(classifier_context.reference, y=None))
    result = run(unlabelled)
    assert result.verdict is Verdict.SKIPPED and "labels on the reference" in result.reason
    pyfunc = dataclasses.replace(classifier_context, model=dataclasses.replace(classifier_context.model, estimator=None, flavor="python_function"))
    result = run(pyfunc)
    assert result.verdict is Verdict.SKIPPED and "native scikit-learn model" in result.reason


def test_seeded_members_are_reproducible_and_the_seed_matters(tabular):
    from tests.conftest import context_for, make_pipeline_model

    X, y = tabular
    model = make_pipeline_model(X, y, "gbm")
    a, b = run(context_for(model, X, y, seed=5)), run(context_for(model, X, y, seed=5))
    c = run(context_for(model, X, y, seed=6))
    assert a.metrics == b.metrics
    assert a.metrics["disagreement.mean_epistemic"] != c.metrics["disagreement.mean_epistemic"]
