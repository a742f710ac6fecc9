"""Segments: per-group metrics equal a direct recomputation, the failing segment is found, fairness
summaries equal their definitions, no segments means SKIPPED."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from audits.core.context import ModelUnderAudit, build_context
from audits.core.plan import PlannedAudit
from audits.core.result import Verdict
from audits.core.runner import run_planned
from audits.performance.segments import SegmentsAudit, SegmentsConfig, grouped
from audits.testing import check_audit_contract


class FailsOnGroupB:
    """A 'model' that is right except on group b, where it always says 'yes'."""

    classes_ = np.array(["no", "yes"])
    _estimator_type = "classifier"

    def predict_proba(self, X):
        truth = (X["x"] > 0).to_numpy()
        p = np.where(truth, 0.9, 0.1)
        p = np.where(X["group"].to_numpy() == "b", 0.8, p)
        return np.column_stack([1 - p, p])

    def predict(self, X):
        return self.classes_[(self.predict_proba(X)[:, 1] > 0.5).astype(int)]


def world(n=2000, seed=0, segments=("group",)):
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({"x": rng.normal(size=n), "group": pd.Series(rng.choice(["a", "b", "c"], n, p=[0.5, 0.3, 0.2]), dtype="str")})
    y = pd.Series(np.where(X["x"] > 0, "yes", "no"), name="y")
    model = FailsOnGroupB()
    m = ModelUnderAudit(task="classification", predict=model.predict, predict_proba=model.predict_proba, classes=("no", "yes"), flavor="test")
    seg = X[list(segments)] if segments else None
    half = n // 2
    return build_context(m, (X.iloc[:half], y.iloc[:half]), (X.iloc[half:], y.iloc[half:]), target="y", seed=seed,
                         segments=(seg.iloc[:half] if seg is not None else None, seg.iloc[half:] if seg is not None else None))


def run(context, **config):
    return run_planned(PlannedAudit("segments", SegmentsAudit(SegmentsConfig.model_validate(config)), ()), context)


def test_per_group_metrics_equal_a_direct_recomputation():
    context = world()
    result = run(context, sensitive=["group"])
    ds = context.current
    for group in ("a", "b", "c"):
        rows = ds.segments["group"] == group
        y, p = ds.y[rows], ds.predictions.labels[rows.to_numpy()]
        assert result.metrics[f"segments.group.{group}.accuracy"] == pytest.approx(skm.accuracy_score(y, p))
        assert result.metrics[f"segments.group.{group}.selection_rate"] == pytest.approx((p == "yes").mean())
        assert result.metrics[f"segments.group.{group}.tpr"] == pytest.approx(skm.recall_score(y, p, pos_label="yes"))
        assert result.metrics[f"segments.group.{group}.rows"] == rows.sum()
    rates = [result.metrics[f"segments.group.{g}.selection_rate"] for g in "abc"]
    assert result.metrics["segments.fairness.group.demographic_parity_difference"] == pytest.approx(max(rates) - min(rates))
    assert result.metrics["segments.fairness.group.demographic_parity_ratio"] == pytest.approx(min(rates) / max(rates))


def test_the_failing_segment_is_the_worst_and_the_gap_is_large():
    result = run(world())
    gaps = next(a.content for a in result.artifacts if a.name == "gaps.json").set_index("metric")
    assert gaps.loc["accuracy", "worst_group"] == "b"
    assert result.metrics["segments.max_gap.accuracy"] > 0.4
    assert result.metrics["segments.group.b.ece"] > result.metrics["segments.group.a.ece"] + 0.2


def test_coverage_per_segment_is_the_mean_over_evaluated_rows():
    context = world()
    result = run(context)
    from audits.methods.conformal_sets import coverage_indicator

    covered = coverage_indicator(context, 0.9, context.rng("segments.coverage"))
    for group in ("a", "b", "c"):
        rows = (context.current.segments["group"] == group).to_numpy()
        assert result.metrics[f"segments.group.{group}.coverage"] == pytest.approx(np.nanmean(covered.to_numpy()[rows]))
    assert covered.notna().sum() == len(context.current) - len(context.current) // 2


def test_small_groups_are_reported_but_left_out_of_gaps():
    context = world(n=400)
    counts = context.current.segments["group"].value_counts()
    result = run(context, min_rows=int(counts["c"]) + 1)  # group c is the smallest
    gaps = next(a.content for a in result.artifacts if a.name == "gaps.json")
    assert (gaps["groups_compared"] == 2).all()
    assert result.metrics["segments.group.c.rows"] == counts["c"]


def test_rare_values_are_grouped_and_missing_values_kept():
    values = pd.Series(["a"] * 5 + ["b"] * 3 + ["c", "d", None])
    assert grouped(values, max_values=2).tolist() == ["a"] * 5 + ["b"] * 3 + ["(other)"] * 3
    labels = grouped(values, max_values=10)
    assert labels.iloc[-1] == "(missing)" and labels.nunique() == 5


def test_without_segment_columns_the_audit_is_skipped():
    result = run(world(segments=()))
    assert result.verdict is Verdict.SKIPPED and "data.segments" in result.reason
    assert "not in data.segments" in run(world(), columns=["region"]).reason


@pytest.mark.parametrize("fixture", ["classifier_context", "regressor_context"])
def test_contract(fixture, request):
    check_audit_contract(SegmentsAudit, request.getfixturevalue(fixture), {"min_rows": 10})
