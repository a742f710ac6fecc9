"""Conformal coverage on every row: a segment of 1.5 % of 300,000 current rows whose labels are noise is reported with
its exact coverage (recomputed here with numpy's order statistic, or with MAPIE on the whole frame), beside the exact
coverage and sizes of every row; conformalized on the sample, evaluated on every other row. Merged states equal the
one-frame answer for every conformity score and both calibration sources."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from mapie._machine_precision import EPSILON
from mapie.regression import SplitConformalRegressor
from sklearn.base import BaseEstimator, RegressorMixin

from audits.core.context import AuditContext, Dataset, ModelUnderAudit, Predictions
from audits.core.partial import decode_state, encode_state
from audits.uncertainty.conformal import WIDTH_RELATIVE_ERROR, ConformalAudit, ConformalConfig
from tests.unit.test_partial import assert_merges_to_one_frame

CLASSES = ("cat", "dog", "eel")
REGIONS = np.array([f"r{i}" for i in range(6)], dtype=object)
NOISY = 0.015  # share of rows in region "rz", whose labels are noise


def regions(n: int, rng: np.random.Generator) -> np.ndarray:
    return np.where(rng.random(n) < NOISY, "rz", REGIONS[rng.integers(0, len(REGIONS), n)]).astype(object)


def classification_rows(n: int, rng: np.random.Generator) -> tuple[pd.DataFrame, pd.Series, np.ndarray]:
    """A calibrated 3-class model (labels drawn from its probabilities), except in region rz: labels uniform."""
    a, b = rng.normal(size=(2, n))
    logits = np.column_stack([2.5 * a, 2.5 * b, -1.25 * (a + b)])
    proba = np.exp(logits - logits.max(axis=1, keepdims=True))
    proba /= proba.sum(axis=1, keepdims=True)
    region = regions(n, rng)
    index = (rng.random(n)[:, None] > proba.cumsum(axis=1)).sum(axis=1).clip(0, 2)
    index = np.where(region == "rz", rng.integers(0, 3, n), index)
    X = pd.DataFrame({"a": a, "b": b, "region": region})
    return X, pd.Series(np.asarray(CLASSES, dtype=object)[index], name="y"), proba


def regression_rows(n: int, rng: np.random.Generator) -> tuple[pd.DataFrame, pd.Series, np.ndarray]:
    """Positive predictions with 10 % multiplicative noise, except in region rz: a factor e^N(0, 1)."""
    a = rng.normal(size=n)
    pred = 2 * np.exp(0.5 * a)
    region = regions(n, rng)
    y = pred * np.exp(np.where(region == "rz", 1.0, 0.1) * rng.normal(size=n))
    return pd.DataFrame({"a": a, "region": region}), pd.Series(y, name="y"), pred


def dataset(name: str, X: pd.DataFrame, y: pd.Series, proba: np.ndarray | None, pred: np.ndarray | None,
            rows: np.ndarray, reset: bool = False) -> Dataset:
    """Rows of the data as a Dataset, with the predictions computed once above (a partition, or the sample with its
    index reset as the pipeline resets it)."""
    Xr, yr = X.iloc[rows], y.iloc[rows]
    if reset:
        Xr, yr = Xr.reset_index(drop=True), yr.reset_index(drop=True)
    if proba is not None:
        labels = np.asarray(CLASSES, dtype=object)[proba[rows].argmax(axis=1)]
        predictions = Predictions(labels, proba[rows])
    else:
        predictions = Predictions(pred[rows])
    return Dataset(name, Xr[["a", "b"] if "b" in Xr else ["a"]], yr, predictions, f"{name}-part", Xr[["region"]])


def context_of(task: str, reference: Dataset, current: Dataset) -> AuditContext:
    def unused(X):
        raise AssertionError("the audit calls no model: predictions are computed once")

    model = ModelUnderAudit(task=task, predict=unused, predict_proba=unused if task == "classification" else None,
                            classes=CLASSES if task == "classification" else None, flavor="test")
    return AuditContext(model=model, reference=reference, current=current, features=tuple(current.X.columns), target="y")


def every_row(audit: ConformalAudit, context: AuditContext, parts: list[Dataset], population: int):
    """What the every-row pipeline does: fit on the sample, one state per partition through bytes, merged, finalized."""
    fitted = audit.fit(context)
    state = audit.init(context, fitted)
    sizes = []
    for part in reversed(parts):
        encoded = encode_state(audit.update(audit.init(context, fitted), part, context, fitted))
        sizes.append(len(encoded))
        state = audit.merge(state, decode_state(encoded))
    return audit.finalize(state, context, fitted, {"reference": len(context.reference), "current": population}), max(sizes)


def test_coverage_of_every_row_and_of_a_small_noisy_segment_is_exact():
    rng = np.random.default_rng(11)
    n, sample_rows = 300_000, 20_000
    X, y, proba = classification_rows(n, rng)
    parts = [dataset("current", X, y, proba, None, rows) for rows in np.array_split(np.arange(n), 6)]
    pick = np.sort(rng.choice(n, sample_rows, replace=False))  # the sample: rows of the data, index reset
    Xr, yr, pr = classification_rows(5_000, rng)
    reference = dataset("reference", Xr, yr, pr, None, np.arange(5_000))
    context = context_of("classification", reference, dataset("current", X, y, proba, None, pick, reset=True))
    audit = ConformalAudit(ConformalConfig(confidence_level=0.9))
    result, state_bytes = every_row(audit, context, parts, n)
    m = result.metrics

    # The truth, with numpy: conformalized on the audit's seeded half of the sample, every other row evaluated
    order = context.rng("conformal.calibration_split").permutation(sample_rows)
    n_cal = int(0.5 * sample_rows)
    calibration = pick[np.sort(order[:n_cal])]
    target = pd.Index(CLASSES).get_indexer(y)
    scores = np.sort(1 - proba[calibration, target[calibration]])
    q = scores[int(np.ceil(0.9 * (n_cal + 1))) - 1]  # the split-conformal order statistic
    sets = (1 - proba) - q <= EPSILON
    evaluated = np.ones(n, dtype=bool)
    evaluated[calibration] = False
    covered = sets[np.arange(n), target]

    assert m["evaluation_rows"] == n - n_cal and m["calibration_rows"] == n_cal
    assert m["coverage"] == pytest.approx(covered[evaluated].mean(), abs=1e-12)
    assert m["mean_set_size"] == pytest.approx(sets[evaluated].sum(axis=1).mean(), rel=1e-12)
    assert m["singleton_rate"] == pytest.approx((sets[evaluated].sum(axis=1) == 1).mean(), abs=1e-12)
    assert m["empty_set_rate"] == pytest.approx((sets[evaluated].sum(axis=1) == 0).mean(), abs=1e-12)
    se = np.sqrt(0.09 * (1 / (n - n_cal) + 1 / (n_cal + 2)))
    assert m["coverage_shortfall_z"] == pytest.approx((covered[evaluated].mean() - 0.9) / se, rel=1e-9)
    for region in ("rz", "r0"):
        rows = evaluated & (X["region"] == region).to_numpy()
        assert m[f"segment.region.{region}.rows"] == rows.sum()
        assert m[f"segment.region.{region}.coverage"] == pytest.approx(covered[rows].mean(), abs=1e-12)
        assert m[f"segment.region.{region}.mean_set_size"] == pytest.approx(sets[rows].sum(axis=1).mean(), rel=1e-12)
    # the noisy segment collapses, visibly beyond its (every-row) standard error; the rest is covered
    assert m["segment.region.rz.coverage"] < 0.6 and abs(m["coverage"] - 0.9) < 0.01
    table = next(a.content for a in result.artifacts if a.name == "segments.json").set_index("value")
    assert table.loc["rz", "coverage_shortfall_z"] < -8
    assert "every labelled current row but those" in result.info["calibration_data"]
    assert "300,000 current rows" in result.info["every_row"]
    assert state_bytes < 5_000  # a partition's state: counts, not rows

    # the sample alone sees about 150 evaluated rows of the segment, 1/30 of them
    sample_only = audit.compute(context).metrics
    assert sample_only["segment.region.rz.rows"] < m["segment.region.rz.rows"] / 20


class Identity(RegressorMixin, BaseEstimator):
    """A fitted 'regressor' returning its one input column: MAPIE on predictions computed once."""

    def __init__(self) -> None:
        self.n_features_in_ = 1

    def fit(self, X, y=None):
        return self

    def predict(self, X):
        return np.asarray(X, dtype=float)[:, 0]


def test_intervals_of_every_row_calibrated_on_the_reference_match_mapie_on_the_whole_frame():
    """Gamma score (widths proportional to the prediction, each row's its own): the median width from binned widths
    lies within the stated relative error of numpy's on every row."""
    rng = np.random.default_rng(12)
    n = 300_000
    X, y, pred = regression_rows(n, rng)
    parts = [dataset("current", X, y, None, pred, rows) for rows in np.array_split(np.arange(n), 5)]
    Xr, yr, pr = regression_rows(4_000, rng)
    reference = dataset("reference", Xr, yr, None, pr, np.arange(4_000))
    sample = dataset("current", X, y, None, pred, np.sort(rng.choice(n, 20_000, replace=False)), reset=True)
    context = context_of("regression", reference, sample)
    audit = ConformalAudit(ConformalConfig(calibration_data="reference", regression_score="gamma", confidence_level=0.8))
    result, _ = every_row(audit, context, parts, n)
    m = result.metrics

    mapie = SplitConformalRegressor(Identity(), confidence_level=0.8, conformity_score="gamma", prefit=True)
    bounds = mapie.conformalize(pr[:, None], yr.to_numpy()).predict_interval(pred[:, None])[1][:, :, 0]
    target = y.to_numpy()
    covered = (bounds[:, 0] <= target) & (target <= bounds[:, 1])
    width = bounds[:, 1] - bounds[:, 0]
    assert m["evaluation_rows"] == n and m["calibration_rows"] == 4_000
    assert m["coverage"] == pytest.approx(covered.mean(), abs=1e-12)
    assert m["mean_width"] == pytest.approx(width.mean(), rel=1e-9)
    assert m["median_width"] == pytest.approx(np.median(width), rel=WIDTH_RELATIVE_ERROR)
    assert m["median_width"] != np.median(width) and "log-spaced bins" in result.info["median_width"]
    for region in ("rz", "r3"):
        rows = (X["region"] == region).to_numpy()
        assert m[f"segment.region.{region}.rows"] == rows.sum()
        assert m[f"segment.region.{region}.coverage"] == pytest.approx(covered[rows].mean(), abs=1e-12)
        assert m[f"segment.region.{region}.mean_width"] == pytest.approx(width[rows].mean(), rel=1e-9)
    assert m["segment.region.rz.coverage"] < 0.4 and abs(m["segment.region.r3.coverage"] - 0.8) < 0.02
    assert "every one: 300,000 current rows" in result.info["calibration_data"]


@pytest.mark.parametrize("config", [{}, {"classification_score": "aps"}, {"classification_score": "raps"},
                                    {"classification_score": "top_k"}, {"calibration_data": "reference"},
                                    {"max_segment_values": 1, "tracked_segment_values": 1}])
def test_merged_states_equal_the_one_frame_answer_for_every_score(config):
    """Three classes (APS, RAPS and top-k refuse a binary target); one tracked value: the other regions pooled."""
    rng = np.random.default_rng(14)
    X, y, proba = classification_rows(3_000, rng)
    context = context_of("classification", dataset("reference", X, y, proba, None, np.arange(1_000)),
                         dataset("current", X, y, proba, None, np.arange(1_000, 3_000)))
    audit = ConformalAudit(ConformalConfig(**config))
    whole = assert_merges_to_one_frame(audit, context, 7, nan_ok=False)
    if config.get("tracked_segment_values") == 1:
        assert "pooled" in whole.info["segments.region"]


@pytest.mark.parametrize("calibration_data", ["current_split", "reference"])
@pytest.mark.parametrize("exact_width_values", [50, 1_000_000])
def test_merged_regression_states_equal_the_one_frame_answer(calibration_data, exact_width_values):
    """Gamma score, 2,000 distinct widths: binned beyond 50 of them, in any order of merging alike."""
    rng = np.random.default_rng(13)
    X, y, pred = regression_rows(3_000, rng)
    context = context_of("regression", dataset("reference", X, y, None, pred, np.arange(1_000)),
                         dataset("current", X, y, None, pred, np.arange(1_000, 3_000)))
    audit = ConformalAudit(ConformalConfig(regression_score="gamma", calibration_data=calibration_data,
                                           exact_width_values=exact_width_values))
    whole = assert_merges_to_one_frame(audit, context, 7, nan_ok=False)
    assert ("median_width" in whole.info) == (exact_width_values == 50)


def test_a_sample_that_is_not_of_the_rows_reduced_is_refused(classifier_context):
    """current_split subtracts the calibration rows' tallies: they must be among the rows reduced."""
    audit = ConformalAudit()
    fitted = audit.fit(classifier_context)
    with pytest.raises(ValueError, match="not among"):
        audit.finalize(audit.init(classifier_context, fitted), classifier_context, fitted, {"reference": 0, "current": 0})
