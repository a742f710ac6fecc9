"""Conformal audit against references we did not write: MAPIE called directly on the native model,
the coverage guarantee of split conformal prediction on exchangeable synthetic data, and the law of
empirical coverage (binomial noise plus a Beta-distributed coverage given the calibration rows)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from mapie.classification import SplitConformalClassifier
from mapie.regression import SplitConformalRegressor
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LinearRegression, LogisticRegression

from audits.core.context import ModelUnderAudit, build_context
from audits.core.plan import PlannedAudit
from audits.core.result import Verdict
from audits.core.runner import run_planned
from audits.methods.conformal_sets import conformal_intervals, conformal_sets, coverage_se
from audits.testing import check_audit_contract
from audits.uncertainty.conformal import ConformalAudit, ConformalConfig
from tests.conftest import make_tabular


def run(context, thresholds=ConformalAudit.default_thresholds, **config):
    return run_planned(PlannedAudit("conformal", ConformalAudit(ConformalConfig(**config)), thresholds), context)


def synthetic(task, n, seed):
    """Exchangeable rows: a 3-class softmax model or a linear model with unit Gaussian noise."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(n, 3)), columns=["a", "b", "c"])
    if task == "classification":
        logits = X.to_numpy() @ np.array([[1.5, -1.0, 0.0], [0.0, 1.0, -1.5], [0.5, 0.5, 0.5]])
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        y = pd.Series(np.array(["cat", "dog", "eel"])[(rng.random(n)[:, None] > p.cumsum(axis=1)).sum(axis=1).clip(0, 2)], name="y")
    else:
        y = pd.Series(X.to_numpy() @ np.array([2.0, -1.0, 0.5]) + rng.normal(size=n), name="y")
    return X, y


def context_of(estimator, X, y, split, segments=None):
    return build_context(ModelUnderAudit.from_estimator(estimator), (X.iloc[:split], y.iloc[:split]),
                         (X.iloc[split:], y.iloc[split:]), target="y", seed=0,
                         segments=(None, None) if segments is None else (segments.iloc[:split], segments.iloc[split:]))


def split_of(context, fraction=0.5):
    """The audit's seeded calibration / evaluation split of the labelled current rows."""
    order = context.rng("conformal.calibration_split").permutation(len(context.current))
    n_cal = int(fraction * len(order))
    return np.sort(order[:n_cal]), np.sort(order[n_cal:])


@pytest.fixture(scope="module")
def classification_case():
    X, y = synthetic("classification", 5500, 0)
    return context_of(LogisticRegression(max_iter=1000).fit(X.iloc[:1500], y.iloc[:1500]), X, y, 1500)


@pytest.fixture(scope="module")
def regression_case():
    X, y = synthetic("regression", 5500, 1)
    return context_of(LinearRegression().fit(X.iloc[:1500], y.iloc[:1500]), X, y, 1500)


@pytest.mark.filterwarnings("ignore:X does not have valid feature names")  # MAPIE probes the native model
@pytest.mark.parametrize("case", ["classification_case", "regression_case"])
def test_coverage_holds_on_exchangeable_data_and_equals_mapie_on_the_native_model(case, request):
    context = request.getfixturevalue(case)
    model, cur = context.model.estimator, context.current
    cal, held = split_of(context)
    size_key = "mean_set_size" if context.task == "classification" else "mean_width"
    sizes = {}
    for level in (0.8, 0.95):
        m = run(context, confidence_level=level).metrics
        n = len(held)
        assert m["conformal.evaluation_rows"] == n and m["conformal.calibration_rows"] == len(cal)
        assert abs(m["conformal.coverage"] - level) <= 3 * np.sqrt(level * (1 - level) / n)
        # MAPIE itself, on the model and its features
        if context.task == "classification":
            direct = SplitConformalClassifier(model, confidence_level=level, prefit=True)
            sets = direct.conformalize(cur.X.iloc[cal], cur.y.iloc[cal]).predict_set(cur.X.iloc[held])[1][:, :, 0]
            truth = pd.Index(model.classes_).get_indexer(cur.y.iloc[held])
            covered, size = sets[np.arange(n), truth], sets.sum(axis=1)
        else:
            direct = SplitConformalRegressor(model, confidence_level=level, prefit=True)
            bounds = direct.conformalize(cur.X.iloc[cal], cur.y.iloc[cal]).predict_interval(cur.X.iloc[held])[1][:, :, 0]
            y = cur.y.iloc[held].to_numpy()
            covered, size = (bounds[:, 0] <= y) & (y <= bounds[:, 1]), bounds[:, 1] - bounds[:, 0]
        assert m["conformal.coverage"] == pytest.approx(covered.mean(), abs=1e-12)
        assert m[f"conformal.{size_key}"] == pytest.approx(size.mean(), rel=1e-9)
        se = np.sqrt(level * (1 - level) * (1 / n + 1 / (len(cal) + 2)))
        assert m["conformal.coverage_shortfall_z"] == pytest.approx((covered.mean() - level) / se, rel=1e-9)
        assert m["conformal.coverage_lower_tolerance"] == pytest.approx(-3 * se, rel=1e-9)
        sizes[level] = m[f"conformal.{size_key}"]
    assert sizes[0.95] > sizes[0.8]


def test_the_stated_standard_error_is_the_spread_of_empirical_coverage():
    """Across independent calibration/evaluation draws, coverage varies as coverage_se says, about twice the
    binomial-only figure here: the coverage given a calibration set is itself random (a Beta law)."""
    rng = np.random.default_rng(5)
    n_cal, n_eval, level = 60, 200, 0.8
    cls, reg = [], []
    for _ in range(400):
        n = n_cal + n_eval
        p = rng.uniform(0.05, 0.95, n)
        P, y = np.column_stack([1 - p, p]), (rng.random(n) < p).astype(int)
        sets = conformal_sets(P[:n_cal], y[:n_cal], P[n_cal:], level)
        cls.append(sets[np.arange(n_eval), y[n_cal:]].mean())
        pred = rng.normal(size=n)
        target = pred + rng.normal(size=n)
        bounds = conformal_intervals(pred[:n_cal], target[:n_cal], pred[n_cal:], level)
        reg.append(((bounds[:, 0] <= target[n_cal:]) & (target[n_cal:] <= bounds[:, 1])).mean())
    se = coverage_se(level, n_eval, n_cal)
    for coverages in (cls, reg):
        assert np.std(coverages) == pytest.approx(se, rel=0.2)
        assert np.std(coverages) > 1.5 * np.sqrt(level * (1 - level) / n_eval)
        assert abs(np.mean(coverages) - level) < 0.01


def test_segment_metrics_match_a_recomputation_with_mapie(classifier_context):
    result = run(classifier_context, ())
    model, cur = classifier_context.model.estimator, classifier_context.current
    cal, held = split_of(classifier_context)
    sets = SplitConformalClassifier(model, confidence_level=0.9, prefit=True).conformalize(
        cur.X.iloc[cal], cur.y.iloc[cal]).predict_set(cur.X.iloc[held])[1][:, :, 0]
    covered = sets[np.arange(len(held)), pd.Index(model.classes_).get_indexer(cur.y.iloc[held])]
    colour = cur.segments["colour"].iloc[held].to_numpy()
    assert set(colour) == {"red", "green", "blue"}
    for value in set(colour):
        mask = colour == value
        assert result.metrics[f"conformal.segment.colour.{value}.coverage"] == pytest.approx(covered[mask].mean(), abs=1e-12)
        assert result.metrics[f"conformal.segment.colour.{value}.mean_set_size"] == pytest.approx(sets[mask].sum(axis=1).mean())
        assert result.metrics[f"conformal.segment.colour.{value}.rows"] == mask.sum()
    table = next(a.content for a in result.artifacts if a.name == "segments.json")
    assert table.loc[table["value"] == "red", "coverage"].item() == pytest.approx(covered[colour == "red"].mean())


def test_segments_are_capped_to_the_most_frequent_values():
    X, y = synthetic("regression", 1600, 2)
    rng = np.random.default_rng(0)
    weights = np.arange(30, 0, -1) / np.arange(30, 0, -1).sum()  # value v00 most frequent, v29 least
    segments = pd.DataFrame({"city": rng.choice([f"v{i:02d}" for i in range(30)], size=len(X), p=weights)})
    context = context_of(LinearRegression().fit(X.iloc[:600], y.iloc[:600]), X, y, 600, segments)
    result = run(context, (), max_segment_values=20)
    _, held = split_of(context)
    counts = segments["city"].iloc[600:].iloc[held].value_counts()
    expected = sorted(counts.index, key=lambda v: (-counts[v], v))[:20]
    reported = {k.split(".")[3] for k in result.metrics if k.startswith("conformal.segment.city.")}
    assert reported == set(expected)
    assert "20 most frequent of 30" in result.info["segments.city"]


def test_conformalizing_on_the_training_data_undercovers_and_warns():
    """A deep forest's in-sample residuals are tiny: intervals calibrated on its training rows are too narrow."""
    rng = np.random.default_rng(3)
    X = pd.DataFrame(rng.normal(size=(1500, 3)), columns=["a", "b", "c"])
    y = pd.Series(np.sin(2 * X["a"]) + X["b"] ** 2 + rng.normal(size=len(X)), name="y")
    forest = RandomForestRegressor(n_estimators=30, random_state=0).fit(X.iloc[:500], y.iloc[:500])
    context = context_of(forest, X, y, 500)
    on_reference = run(context, calibration_data="reference")
    on_current = run(context)
    assert on_reference.metrics["conformal.coverage"] < 0.75
    assert on_reference.metrics["conformal.coverage_shortfall_z"] < -3 and on_reference.verdict is Verdict.WARN
    assert on_reference.metrics["conformal.mean_width"] < on_current.metrics["conformal.mean_width"]
    assert abs(on_current.metrics["conformal.coverage"] - 0.9) <= 3 * np.sqrt(0.09 / 500)
    assert on_current.verdict is Verdict.PASS
    assert "did not train the model" in on_reference.info["calibration_data"]


def test_sample_rows_show_sets_that_contain_the_label_when_covered(classifier_context):
    result = run(classifier_context, (), sample_rows=10)
    sample = next(a.content for a in result.artifacts if a.name == "sample.json")
    assert len(sample) == 10
    for row in sample.itertuples():
        assert row.covered == (row.label in row.set.split(", "))
        assert classifier_context.current.y.loc[int(row.row)] == row.label


@pytest.mark.parametrize("config", [{}, {"calibration_data": "reference"}])
def test_contract_on_both_fixtures(classifier_context, regressor_context, config):
    check_audit_contract(ConformalAudit, classifier_context, config)
    result = check_audit_contract(ConformalAudit, regressor_context, config)
    assert "conformal.mean_width" in result.metrics and "conformal.segment.colour.red.coverage" in result.metrics


def test_skipped_without_current_labels_or_with_too_few_rows(tabular):
    X, y = tabular
    model = ModelUnderAudit.from_estimator(LogisticRegression().fit(X[["x1", "x2"]], y))
    unlabelled = build_context(model, (X[["x1", "x2"]].iloc[:250], y.iloc[:250]), (X[["x1", "x2"]].iloc[250:], None))
    assert run(unlabelled).verdict is Verdict.SKIPPED
    tiny = build_context(model, (X[["x1", "x2"]].iloc[:250], y.iloc[:250]), (X[["x1", "x2"]].iloc[250:280], y.iloc[250:280]))
    result = run(tiny, confidence_level=0.95)  # 15 calibration rows < 1 / 0.05
    assert result.verdict is Verdict.SKIPPED and "too few labelled rows" in result.reason
    X_small, y_small = make_tabular(60, seed=9)
    assert run(build_context(model, (X_small[["x1", "x2"]], None), (X_small[["x1", "x2"]], y_small)),
               calibration_data="reference").verdict is Verdict.SKIPPED
