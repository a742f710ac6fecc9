"""The contract every registered audit keeps (scikit-learn's parametrize_with_checks is the model):
deterministic under a seed, inputs untouched, MLflow-valid keys, a result that serialises, no figures left open."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from audits.core.plan import PlannedAudit
from audits.core.registry import available_audits, get_audit_class
from audits.core.result import Verdict, is_valid_key
from audits.core.runner import run_planned

AUDITS = sorted(available_audits())
CONTEXTS = ["classifier_context", "regressor_context", "image_context", "text_context"]


def fingerprint(context) -> str:
    parts = []
    for ds in (context.reference, context.current):
        parts.append(pd.util.hash_pandas_object(ds.X, index=True).sum())
        if ds.y is not None:
            parts.append(pd.util.hash_pandas_object(ds.y, index=True).sum())
        parts.append(hash(ds.predictions.labels.tobytes()))
        if ds.predictions.proba is not None:
            parts.append(hash(ds.predictions.proba.tobytes()))
    return repr(parts) + repr([ds.X.dtypes.to_dict() for ds in (context.reference, context.current)])


def run(name, context):
    cls = get_audit_class(name)
    return run_planned(PlannedAudit(name, cls(), cls.default_thresholds), context)


def check_audit_contract(audit_cls, context, config=None):
    """The contract, for one audit class on one context. Also called by each audit's own tests."""
    name = audit_cls.name
    cls_config = audit_cls.Config.model_validate(config or {})
    before = fingerprint(context)
    first = run_planned(PlannedAudit(name, audit_cls(cls_config), audit_cls.default_thresholds), context)
    second = run_planned(PlannedAudit(name, audit_cls(cls_config), audit_cls.default_thresholds), context)

    assert first.verdict is not Verdict.ERROR, first.reason
    assert fingerprint(context) == before, "the audit mutated its inputs"

    assert first.metrics.keys() == second.metrics.keys()
    for key in first.metrics:
        assert np.isclose(first.metrics[key], second.metrics[key], rtol=0, atol=0, equal_nan=True), key
    assert [a.name for a in first.artifacts] == [a.name for a in second.artifacts]
    for a, b in zip(first.artifacts, second.artifacts, strict=True):
        if a.kind == "table":
            pd.testing.assert_frame_equal(a.content, b.content)
        elif a.kind == "figure":
            assert a.content == b.content, f"{a.name} differs between two runs with the same seed"

    assert first.metrics, "an audit that ran must report metrics"
    assert all(key.startswith(f"{name}.") and is_valid_key(key) for key in first.metrics)
    assert len({a.name for a in first.artifacts}) == len(first.artifacts)

    encoded = json.dumps(first.to_dict())
    assert json.loads(encoded)["audit"] == name
    assert plt.get_fignums() == [], "figures left open in pyplot's global state"
    return first


@pytest.mark.parametrize("context_name", CONTEXTS)
@pytest.mark.parametrize("name", AUDITS)
def test_audit_contract(name, context_name, request):
    cls, context = get_audit_class(name), request.getfixturevalue(context_name)
    reason = cls().skip_reason(context)
    if reason:  # an audit that does not apply (a classifiers-only audit on a regressor) is SKIPPED with its reason
        result = run_planned(PlannedAudit(name, cls(), cls.default_thresholds), context)
        assert result.verdict is Verdict.SKIPPED and result.reason == reason and not result.metrics
        return
    check_audit_contract(cls, context)


def test_a_different_seed_changes_sampled_audits(tabular):
    from tests.conftest import context_for, make_pipeline_model

    X, y = tabular
    model = make_pipeline_model(X, y, "gbm")
    a = run("shap", context_for(model, X, y, seed=1))
    b = run("shap", context_for(model, X, y, seed=2))
    rows_a = a.artifacts[[x.name for x in a.artifacts].index("values.json")].content["row"].tolist()
    rows_b = b.artifacts[[x.name for x in b.artifacts].index("values.json")].content["row"].tolist()
    assert rows_a != rows_b
