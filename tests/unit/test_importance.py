"""Occlusion and permutation importance: ~0 for features the target ignores, scikit-learn's own
permutation importance reproduced, agreement with SHAP summarised."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from audits.core.context import ModelUnderAudit, build_context
from audits.core.plan import PlannedAudit
from audits.core.result import Verdict
from audits.core.runner import run_planned
from audits.explain.importance import ImportanceAudit, ImportanceConfig, occlusion_importance, scorer_for
from audits.testing import check_audit_contract


def two_feature_world(seed=0, n=600):
    from sklearn.ensemble import GradientBoostingClassifier

    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(n, 6)), columns=[f"f{i}" for i in range(6)])
    y = pd.Series(np.where(X["f0"] + 0.8 * X["f1"] + rng.normal(scale=0.3, size=n) > 0, "pos", "neg"), name="y")
    model = GradientBoostingClassifier(n_estimators=60, max_depth=2, random_state=0).fit(X.iloc[:400], y.iloc[:400])
    context = build_context(ModelUnderAudit.from_estimator(model), (X.iloc[:400], y.iloc[:400]), (X.iloc[400:], y.iloc[400:]),
                            target="y", seed=3)
    return context, model


def test_features_the_target_ignores_get_almost_nothing():
    context, _ = two_feature_world()
    result = run_planned(PlannedAudit("importance", ImportanceAudit(), ImportanceAudit.default_thresholds), context)
    assert result.verdict is Verdict.PASS, result.reason
    for method in ("occlusion", "permutation"):
        values = {f: result.metrics[f"importance.{method}.{f}"] for f in context.features}
        top = max(values["f0"], values["f1"])
        assert {max(values, key=values.get)} <= {"f0", "f1"}
        assert all(abs(values[f]) < 0.1 * top for f in ("f2", "f3", "f4", "f5")), (method, values)
    assert result.metrics["importance.spearman.occlusion_vs_shap"] > 0.5


def test_permutation_importance_is_sklearns_own():
    from sklearn.inspection import permutation_importance

    context, model = two_feature_world()
    audit = ImportanceAudit(ImportanceConfig(n_repeats=4, permutation_rows=200))
    result = run_planned(PlannedAudit("importance", audit, ()), context)
    sample = context.current.X.sample(n=200, random_state=context.random_state("importance.perm_rows"))
    expected = permutation_importance(model, sample, context.current.y.loc[sample.index], scoring="roc_auc", n_repeats=4,
                                      random_state=context.random_state("importance.permutation"))
    # sklearn's 'roc_auc' scorer uses the positive class of the estimator: the same as ours
    got = [result.metrics[f"importance.permutation.{f}"] for f in context.features]
    np.testing.assert_allclose(got, expected.importances_mean, atol=1e-12)


def test_occlusion_of_a_linear_model_is_coefficient_times_mean_absolute_deviation():
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(2)
    X = pd.DataFrame(rng.normal(size=(300, 3)) * [1.0, 2.0, 0.5], columns=["a", "b", "c"])
    y = X @ np.array([3.0, -1.0, 0.0]) + 1.0
    model = ModelUnderAudit.from_estimator(LinearRegression().fit(X, y))
    rows, donors = X.iloc[:50], X.iloc[50:]
    got = occlusion_importance(model, rows, donors, draws=len(donors), rng=np.random.default_rng(0))
    # with many draws, E_b f(x with b_j) = f(x) - coef_j (x_j - E[b_j]): importance_j -> |coef_j| E|x_j - mean_b|
    expected = [abs(c) * np.mean(np.abs(rows[col] - donors[col].mean())) for c, col in zip((3.0, -1.0, 0.0), "abc", strict=True)]
    np.testing.assert_allclose(got, expected, rtol=0.15, atol=1e-9)
    assert got[2] == pytest.approx(0.0, abs=1e-9)


def test_unlabelled_current_data_scores_permutation_on_the_reference(tabular):
    from tests.conftest import context_for, make_pipeline_model

    X, y = tabular
    context = context_for(make_pipeline_model(X, y, "gbm"), X, None)
    context = build_context(context.model, (X.iloc[:250], y.iloc[:250]), (X.iloc[250:], None), target="label")
    result = run_planned(PlannedAudit("importance", ImportanceAudit(ImportanceConfig(rows=40, n_repeats=2)), ()), context)
    assert "reference data" in result.info["permutation_scored_on"] and "in-sample" in result.info["permutation_scored_on"]


def test_scorer_names():
    context, _ = two_feature_world()
    assert scorer_for(context.model)[1] == "roc_auc"


@pytest.mark.parametrize("fixture", ["classifier_context", "regressor_context"])
def test_contract(fixture, request):
    check_audit_contract(ImportanceAudit, request.getfixturevalue(fixture), {"rows": 40, "draws": 5, "n_repeats": 2})
