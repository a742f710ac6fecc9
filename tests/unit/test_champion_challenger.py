"""Champion against challenger: both versions scored by scikit-learn on the same rows; a worse challenger fails."""

from __future__ import annotations

import pytest
from sklearn import metrics as skm

from audits.core.plan import AuditPlan
from audits.core.result import Verdict
from audits.core.runner import run_planned
from audits.performance.champion_challenger import ChampionChallengerAudit
from audits.testing import check_audit_contract
from tests.conftest import context_for, make_pipeline_model


def run(context, thresholds=None):
    spec = {"audit": "champion_challenger"}
    if thresholds is not None:
        spec["thresholds"] = thresholds
    [planned] = AuditPlan.model_validate({"audits": [spec]}).build()
    return run_planned(planned, context)


def test_both_versions_are_scored_by_sklearn_on_the_same_rows(tabular):
    X, y = tabular
    challenger, champion = make_pipeline_model(X, y, "gbm"), make_pipeline_model(X, y, "logistic")
    context = context_for(challenger, X, y, baseline=champion)
    result = run(context)
    rows, labels = context.current.X, context.current.y
    for role, model in (("challenger", challenger), ("champion", champion)):
        auc = skm.roc_auc_score(labels == "yes", model.predict_proba(rows)[:, 1])
        assert result.metrics[f"champion_challenger.{role}.roc_auc"] == pytest.approx(auc)
        assert result.metrics[f"champion_challenger.{role}.primary"] == pytest.approx(auc)
    assert result.metrics["champion_challenger.delta.accuracy"] == pytest.approx(
        skm.accuracy_score(labels, challenger.predict(rows)) - skm.accuracy_score(labels, champion.predict(rows)))


def test_a_clearly_worse_challenger_fails_and_a_relative_threshold_works(tabular):
    X, y = tabular
    good = make_pipeline_model(X, y, "logistic")
    bad = make_pipeline_model(X[["noise", "colour"]].assign(x1=0.0, x2=0.0, x3=0.0)[X.columns], y, "logistic")
    worse = run(context_for(bad, X, y, baseline=good))
    assert worse.verdict is Verdict.FAIL and "champion_challenger.challenger.primary - champion_challenger.champion.primary" in worse.reason
    better = run(context_for(good, X, y, baseline=bad))
    assert better.verdict is Verdict.PASS
    relative = run(context_for(good, X, y, baseline=bad), thresholds=[
        {"metric": "champion_challenger.challenger.log_loss", "compare_to": "champion_challenger.champion.log_loss",
         "max": 0.0, "relative": True}])  # a loss: the challenger's may not be higher
    assert relative.verdict is Verdict.PASS


def test_without_a_champion_it_is_skipped(tabular):
    X, y = tabular
    result = run(context_for(make_pipeline_model(X, y, "gbm"), X, y))
    assert result.verdict is Verdict.SKIPPED and "no champion" in result.reason


@pytest.mark.parametrize("fixture", ["classifier_context", "regressor_context"])
def test_contract(fixture, request):
    check_audit_contract(ChampionChallengerAudit, request.getfixturevalue(fixture))
