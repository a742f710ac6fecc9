"""The contract every registered audit keeps, through the public checks of audits/testing.py (the same a third-party
audit runs): deterministic under a seed, inputs untouched, MLflow-valid keys, a result that serialises, no figures
left open, SKIPPED with its reason where it does not apply."""

from __future__ import annotations

from audits.core.plan import PlannedAudit
from audits.core.registry import get_audit_class
from audits.core.runner import run_planned
from audits.testing import check_audit_on, parametrize_audits


def run(name, context):
    cls = get_audit_class(name)
    return run_planned(PlannedAudit(name, cls(), cls.default_thresholds), context)


@parametrize_audits()
def test_audit_contract(audit_class, context_name):
    check_audit_on(audit_class, context_name)


def test_a_different_seed_changes_sampled_audits(tabular):
    from tests.conftest import context_for, make_pipeline_model

    X, y = tabular
    model = make_pipeline_model(X, y, "gbm")
    a = run("shap", context_for(model, X, y, seed=1))
    b = run("shap", context_for(model, X, y, seed=2))
    rows_a = a.artifacts[[x.name for x in a.artifacts].index("values.json")].content["row"].tolist()
    rows_b = b.artifacts[[x.name for x in b.artifacts].index("values.json")].content["row"].tolist()
    assert rows_a != rows_b
