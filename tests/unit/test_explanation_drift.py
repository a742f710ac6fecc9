"""Explanation drift between versions: none for the same model, large where the features' roles swap,
blind to a model's output scale."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from audits.core.context import ModelUnderAudit, build_context
from audits.core.plan import PlannedAudit
from audits.core.result import Verdict
from audits.core.runner import run_planned
from audits.explain.explanation_drift import ExplanationDriftAudit
from audits.testing import check_audit_contract


def world(audited, baseline, n=400, seed=0):
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(n, 4)), columns=["a", "b", "c", "d"])
    ctx = build_context(ModelUnderAudit.from_estimator(audited(X)), (X.iloc[:200], None), (X.iloc[200:], None), seed=1,
                        baseline=ModelUnderAudit.from_estimator(baseline(X), name="m", version="1") if baseline else None,
                        baseline_note="" if baseline else "model 'm' has no version behind @champion")
    return run_planned(PlannedAudit("explanation_drift", ExplanationDriftAudit(), ()), ctx)


def linear(weights, scale=1.0):
    from sklearn.linear_model import LinearRegression

    return lambda X: LinearRegression().fit(X, scale * (X.to_numpy() @ np.array(weights)))


def test_the_same_model_has_not_drifted():
    result = world(linear([3, 1, 0, 0]), linear([3, 1, 0, 0]))
    assert result.metrics["explanation_drift.importance_spearman"] == pytest.approx(1.0)
    assert result.metrics["explanation_drift.max_share_change"] == pytest.approx(0.0, abs=1e-9)
    assert result.metrics["explanation_drift.max_distribution_distance"] == pytest.approx(0.0, abs=1e-9)


def test_scale_alone_is_not_drift():
    result = world(linear([3, 1, 0, 0], scale=10.0), linear([3, 1, 0, 0]))
    assert result.metrics["explanation_drift.max_share_change"] == pytest.approx(0.0, abs=1e-9)
    assert result.metrics["explanation_drift.max_distribution_distance"] == pytest.approx(0.0, abs=1e-9)


def test_swapped_roles_are_the_most_changed():
    result = world(linear([0, 0, 3, 1]), linear([3, 1, 0, 0]))
    shares = {f: result.metrics[f"explanation_drift.share_change.{f}"] for f in "abcd"}
    assert shares["c"] == pytest.approx(0.75, abs=0.05) and shares["a"] == pytest.approx(-0.75, abs=0.05)
    assert result.metrics["explanation_drift.importance_spearman"] < 0
    table = next(a.content for a in result.artifacts if a.name == "feature_roles.json")
    assert set(table["feature"].head(2)) == {"a", "c"}
    assert result.info["most_changed"].startswith(("a:", "c:"))


def test_no_baseline_is_skipped_with_the_reason():
    result = world(linear([1, 0, 0, 0]), None)
    assert result.verdict is Verdict.SKIPPED and "no version behind @champion" in result.reason


@pytest.mark.parametrize("fixture", ["classifier_context", "regressor_context"])
def test_contract(fixture, request):
    check_audit_contract(ExplanationDriftAudit, request.getfixturevalue(fixture), {"rows": 40})
