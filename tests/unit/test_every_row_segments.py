"""Segments on every row: merged states equal the one-frame answer on contexts with several segment columns, rare
values and missing values; a fault planted in a segment of 2 % of 400,000 rows is found with its exact accuracy; the
values kept are the most frequent on every row, not on the sample or on one partition."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from audits.core.context import Dataset, ModelUnderAudit, Predictions, build_context
from audits.core.partial import decode_state, encode_state
from audits.core.result import key_part
from audits.performance.segments import OTHER, SegmentsAudit, SegmentsConfig
from tests.unit.test_partial import assert_merges_to_one_frame, merged_result
from tests.unit.test_segments import world

CLASSES = ("no", "yes")


def planted_proba(X: pd.DataFrame) -> np.ndarray:
    """P(yes): right about sign(x) except on rows with ``wrong``; confidence grows with |x|."""
    truth = X["x"].to_numpy() > 0
    says_yes = truth ^ X["wrong"].to_numpy().astype(bool)
    confidence = 0.55 + 0.4 * np.tanh(np.abs(X["x"].to_numpy()))
    p = np.where(says_yes, confidence, 1 - confidence)
    return np.column_stack([1 - p, p])


def planted_model() -> ModelUnderAudit:
    def predict(X):
        return np.asarray(CLASSES, dtype=object)[(planted_proba(X)[:, 1] > 0.5).astype(int)]

    return ModelUnderAudit(task="classification", predict=predict, predict_proba=planted_proba, classes=CLASSES, flavor="test")


def planted_rows(n: int, rng: np.random.Generator, regions: list[str], shares: list[float], error: dict[str, float]):
    """Rows whose region is drawn with ``shares``; the model is wrong with the region's ``error`` rate (5 % elsewhere)."""
    region = np.asarray(regions, dtype=object)[rng.choice(len(regions), n, p=shares)]
    rate = pd.Series(region).map(error).fillna(0.05).to_numpy()
    X = pd.DataFrame({"x": rng.normal(size=n), "wrong": (rng.random(n) < rate).astype(np.int64), "region": region})
    y = pd.Series(np.where(X["x"] > 0, "yes", "no"), name="y")
    return X, y


def partitions(X: pd.DataFrame, y: pd.Series, pieces: int) -> list[Dataset]:
    """The rows as ``pieces`` current partitions, predictions computed directly (no context)."""
    out = []
    for rows in np.array_split(np.arange(len(X)), pieces):
        proba = planted_proba(X.iloc[rows])
        labels = np.asarray(CLASSES, dtype=object)[(proba[:, 1] > 0.5).astype(int)]
        out.append(Dataset("current", X.iloc[rows], y.iloc[rows], Predictions(labels, proba), f"part-{len(out)}",
                           X.iloc[rows][["region"]]))
    return out


def sample_context(X: pd.DataFrame, y: pd.Series, rows: int, rng: np.random.Generator):
    """The pipeline's sample: ``rows`` current rows drawn uniformly (and as many as reference)."""
    pick = np.sort(rng.choice(len(X), rows, replace=False))
    Xs, ys = X.iloc[pick].reset_index(drop=True), y.iloc[pick].reset_index(drop=True)
    return build_context(planted_model(), (Xs, ys), (Xs, ys), target="y", seed=0, segments=(Xs[["region"]], Xs[["region"]]))


def every_row(audit: SegmentsAudit, context, parts: list[Dataset], population: int):
    """What the every-row pipeline does: fit on the sample, one state per partition through bytes, merged, finalized."""
    fitted = audit.fit(context)
    state = audit.init(context, fitted)
    for part in reversed(parts):
        state = audit.merge(state, decode_state(encode_state(audit.update(audit.init(context, fitted), part, context, fitted))))
    return audit.finalize(state, context, fitted, {"reference": len(context.reference), "current": population})


def test_a_fault_in_two_percent_of_the_rows_is_found_with_its_exact_accuracy():
    rng = np.random.default_rng(7)
    regions = [f"r{i}" for i in range(7)] + ["rz"]
    X, y = planted_rows(400_000, rng, regions, [0.14] * 7 + [0.02], {"rz": 0.45})
    parts = partitions(X, y, 6)
    context = sample_context(X, y, 5_000, rng)
    result = every_row(SegmentsAudit(), context, parts, len(X))

    pred = np.concatenate([p.predictions.labels for p in parts])
    for region in ("rz", "r0"):
        rows = (X["region"] == region).to_numpy()
        assert result.metrics[f"region.{region}.rows"] == rows.sum()
        assert result.metrics[f"region.{region}.accuracy"] == pytest.approx(skm.accuracy_score(y[rows], pred[rows]), rel=1e-12)
        assert result.metrics[f"region.{region}.tpr"] == pytest.approx(skm.recall_score(y[rows], pred[rows], pos_label="yes"), rel=1e-12)
    assert (X["region"] == "rz").mean() == pytest.approx(0.02, abs=0.002)
    gaps = next(a.content for a in result.artifacts if a.name == "gaps.json").set_index("metric")
    assert gaps.loc["accuracy", "worst_group"] == "rz"  # the weak segment the audit names
    assert result.metrics["max_gap.accuracy"] > 0.35
    assert "400,000 labelled current row(s), every one" in result.info["rows"]
    assert "of the 5,000-row sample" in result.info["coverage"]  # coverage stays on the sample, and says so
    assert 0.5 < result.metrics["region.r0.coverage"] <= 1


def test_kept_values_are_the_most_frequent_on_every_row_not_on_the_sample():
    """Sample: a > b > c; every row: c > b > a. With max_values=2, b and c are kept and a is '(other)'; a value the sample
    never saw ('new') is '(other)' too, and said so."""
    rng = np.random.default_rng(1)
    Xs, ys = planted_rows(600, rng, ["a", "b", "c"], [0.5, 0.3, 0.2], {})
    context = build_context(planted_model(), (Xs, ys), (Xs, ys), target="y", segments=(Xs[["region"]], Xs[["region"]]))
    X, y = planted_rows(20_000, rng, ["a", "b", "c", "new"], [0.1, 0.3, 0.5, 0.1], {})
    audit = SegmentsAudit(SegmentsConfig(max_values=2, coverage=False))
    result = every_row(audit, context, partitions(X, y, 4), len(X))
    counts = X["region"].value_counts()
    assert result.metrics["region.c.rows"] == counts["c"] and result.metrics["region.b.rows"] == counts["b"]
    assert result.metrics[f"region.{key_part(OTHER)}.rows"] == counts["a"] + counts["new"]
    assert "region.a.rows" not in result.metrics
    assert f"region: {counts['new']:,}" in result.info["untracked"]


def segmented_world():
    """Binary: two segment columns, one with more values than max_values and missing values; current has unknown labels."""
    context = world(n=1200, seed=3)
    rng = np.random.default_rng(3)
    segments = {}
    for ds in (context.reference, context.current):
        city = pd.Series(rng.choice(["p", "q", "r", "s", "t", "u"], len(ds), p=[0.3, 0.25, 0.2, 0.1, 0.1, 0.05]),
                         index=ds.X.index, dtype=object)
        city[rng.random(len(ds)) < 0.08] = None
        segments[ds.name] = ds.segments.assign(city=city)
    return replace(context, reference=replace(context.reference, segments=segments["reference"]),
                   current=replace(context.current, segments=segments["current"]))


def multiclass_world():
    rng = np.random.default_rng(5)
    n = 900
    X = pd.DataFrame({"x": rng.normal(size=n), "band": pd.Series(rng.choice(["lo", "mid", "hi"], n), dtype="str")})
    y = pd.Series(np.select([X["x"] < -0.4, X["x"] < 0.4], ["a", "b"], "c"), name="y")

    def proba(frame):
        centre = np.array([-1.0, 0.0, 1.0])
        logits = -((frame["x"].to_numpy()[:, None] - centre) ** 2) * np.where(frame["band"].to_numpy() == "hi", 0.3, 3.0)[:, None]
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    classes = ("a", "b", "c")
    model = ModelUnderAudit(task="classification", predict=lambda f: np.asarray(classes, dtype=object)[proba(f).argmax(axis=1)],
                            predict_proba=proba, classes=classes, flavor="test")
    return build_context(model, (X.iloc[:300], y.iloc[:300]), (X.iloc[300:], y.iloc[300:]), target="y",
                         segments=(X.iloc[:300][["band"]], X.iloc[300:][["band"]]))


@pytest.mark.parametrize("config", [{"sensitive": ["group", "city"], "max_values": 3, "min_rows": 20},
                                    {"max_values": 10, "bins": 7},
                                    {"max_values": 2, "tracked_values": 3, "coverage": False}])
@pytest.mark.parametrize("pieces", [2, 7])
def test_merged_states_equal_the_one_frame_answer_with_several_segment_columns(config, pieces):
    context = segmented_world()
    audit = SegmentsAudit(SegmentsConfig.model_validate(config))
    whole = assert_merges_to_one_frame(audit, context, pieces)
    assert ("city._other_.rows" if config["max_values"] < 7 else "city._missing_.rows") in whole.metrics


def test_multiclass_merged_states_equal_the_one_frame_answer_and_sklearn():
    context = multiclass_world()
    audit = SegmentsAudit(SegmentsConfig(min_rows=5))
    whole = assert_merges_to_one_frame(audit, context, 5, seeds=(0,))
    ds = context.current
    for band in ("lo", "mid", "hi"):
        rows = (ds.segments["band"] == band).to_numpy()
        assert whole.metrics[f"band.{band}.accuracy"] == pytest.approx(skm.accuracy_score(ds.y[rows], ds.predictions.labels[rows]))
    assert whole.metrics["band.hi.ece"] > whole.metrics["band.mid.ece"]


def test_one_frame_figures_equal_fairlearn_metricframe():
    """The counts give fairlearn's own per-group metrics and fairness summaries on the same rows."""
    from fairlearn.metrics import (
        MetricFrame,
        demographic_parity_difference,
        equalized_odds_difference,
        false_positive_rate,
        selection_rate,
        true_positive_rate,
    )

    context = segmented_world()
    result = SegmentsAudit(SegmentsConfig(sensitive=["city"], max_values=4, coverage=False)).compute(context)
    ds = context.current
    labels = ds.segments["city"].astype(object).where(ds.segments["city"].notna(), "(missing)").astype(str)
    keep = list(labels.value_counts().index[:4])
    groups = labels.where(labels.isin(keep), OTHER).to_numpy()
    y, pred = ds.y.to_numpy(), ds.predictions.labels
    frame = MetricFrame(metrics={"accuracy": skm.accuracy_score, "selection_rate": lambda a, b: selection_rate(a, b, pos_label="yes"),
                                 "tpr": lambda a, b: true_positive_rate(a, b, pos_label="yes"),
                                 "fpr": lambda a, b: false_positive_rate(a, b, pos_label="yes")},
                        y_true=y, y_pred=pred, sensitive_features=groups)
    for group, row in frame.by_group.iterrows():
        for metric, value in row.items():
            assert result.metrics[f"city.{key_part(group)}.{metric}"] == pytest.approx(value, rel=1e-12), (group, metric)
    yb, pb = (y == "yes").astype(int), (pred == "yes").astype(int)
    assert result.metrics["fairness.city.demographic_parity_difference"] == pytest.approx(
        demographic_parity_difference(yb, pb, sensitive_features=groups), rel=1e-12)
    assert result.metrics["fairness.city.equalized_odds_difference"] == pytest.approx(
        equalized_odds_difference(yb, pb, sensitive_features=groups), rel=1e-12)


def test_labels_the_model_never_saw_count_as_wrong_as_sklearn_does():
    context = segmented_world()
    y = context.current.y.copy()
    y.iloc[:9] = "maybe"
    context = replace(context, current=replace(context.current, y=y))
    audit = SegmentsAudit(SegmentsConfig(coverage=False))
    whole, merged = audit.compute(context), merged_result(audit, context, 4, 0)
    pred = context.current.predictions.labels
    for group in ("a", "b", "c"):
        rows = (context.current.segments["group"] == group).to_numpy()
        for result in (whole, merged):
            assert result.metrics[f"group.{group}.accuracy"] == pytest.approx(skm.accuracy_score(y[rows], pred[rows]), rel=1e-12)
            negatives = (y[rows] != "yes").to_numpy()
            assert result.metrics[f"group.{group}.fpr"] == pytest.approx((pred[rows][negatives] == "yes").mean(), rel=1e-12)
