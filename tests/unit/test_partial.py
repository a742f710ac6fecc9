"""The every-row contract: a partial or hybrid audit's states merge over any split of the rows to the one-frame answer,
and states travel as bytes without pickle. Runs over every registered audit that declares a mode other than 'sample'."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from sklearn import metrics as skm

from audits.core.context import Dataset, Predictions
from audits.core.partial import PartialAudit, audit_mode, decode_state, encode_state
from audits.core.registry import available_audits, get_audit_class

PARTIAL = sorted(name for name in available_audits() if audit_mode(get_audit_class(name)) != "sample")
CONTEXTS = ["classifier_context", "regressor_context"]


def split(ds: Dataset, pieces: int, rng: np.random.Generator) -> list[Dataset]:
    """``ds`` cut at random points into ``pieces`` partitions (some may be empty)."""
    cuts = np.sort(rng.integers(0, len(ds) + 1, size=pieces - 1))
    out = []
    for start, stop in zip([0, *cuts], [*cuts, len(ds)], strict=True):
        rows = np.arange(start, stop)
        proba = None if ds.predictions.proba is None else ds.predictions.proba[rows]
        out.append(replace(ds, X=ds.X.iloc[rows], y=None if ds.y is None else ds.y.iloc[rows],
                           predictions=Predictions(ds.predictions.labels[rows], proba),
                           segments=None if ds.segments is None else ds.segments.iloc[rows]))
    return out


def merged_result(audit: PartialAudit, context, pieces: int, seed: int):
    """Each partition reduced on its own, its state sent through bytes, the states merged in a shuffled order."""
    rng = np.random.default_rng(seed)
    fitted = audit.fit(context)
    parts = split(context.reference, pieces, rng) + split(context.current, pieces, rng)
    states = [decode_state(encode_state(audit.update(audit.init(context, fitted), p, context, fitted))) for p in parts]
    order = rng.permutation(len(states))
    state = audit.init(context, fitted)
    for i in order:
        state = audit.merge(state, states[i])
    return audit.finalize(state, context, fitted, {"reference": len(context.reference), "current": len(context.current)})


def assert_same_metrics(got: dict, want: dict, nan_ok: bool = True) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12, nan_ok=nan_ok), key


def assert_merges_to_one_frame(audit: PartialAudit, context, pieces: int, seeds=(0, 1), nan_ok: bool = True):
    """For each seed, a split into ``pieces`` partitions a side, merged in a shuffled order, gives the one-frame
    metrics; returns the one-frame result."""
    whole = audit.compute(context)
    for seed in seeds:
        assert_same_metrics(merged_result(audit, context, pieces, seed).metrics, whole.metrics, nan_ok)
    return whole


def test_some_audits_run_on_every_row():
    assert {"performance"} <= set(PARTIAL)
    for name in PARTIAL:
        assert issubclass(get_audit_class(name), PartialAudit)


@pytest.mark.parametrize("context_name", CONTEXTS)
@pytest.mark.parametrize("name", PARTIAL)
@pytest.mark.parametrize("pieces", [2, 7])
def test_merged_states_equal_the_one_frame_answer(name, context_name, pieces, request):
    context = request.getfixturevalue(context_name)
    audit = get_audit_class(name)()
    reason = audit.skip_reason(context)
    if reason:  # calibration on a regressor: not applicable, and the audit says so from what it declares it needs
        assert reason == audit.requires.unmet(context), reason
        return
    assert_merges_to_one_frame(audit, context, pieces)


def test_state_codec_round_trips_and_refuses_what_needs_pickle():
    state = {"n": 3, "x": np.arange(6, dtype=np.float32).reshape(2, 3), "b": b"\x00\xff", "nested": [{"s": "é", "f": np.nan}]}
    back = decode_state(encode_state(state))
    assert back["n"] == 3 and back["b"] == b"\x00\xff" and back["nested"][0]["s"] == "é" and np.isnan(back["nested"][0]["f"])
    assert back["x"].dtype == np.float32 and np.array_equal(back["x"], state["x"])
    with pytest.raises(TypeError, match="object arrays"):
        encode_state({"x": np.array([object()])})
    with pytest.raises(TypeError, match="not set"):
        encode_state({"x": {1, 2}})
    assert b"pickle" not in encode_state(state)


def test_performance_beyond_exact_rows_uses_histograms_within_their_bound(classifier_context):
    """Past exact_auc_rows, ROC-AUC comes from score histograms; scikit-learn's exact figure lies within the bound."""
    from audits.performance.performance import PerformanceAudit, PerformanceConfig

    exact = PerformanceAudit().compute(classifier_context).metrics
    for bins in (16, 4096):
        binned = merged_result(PerformanceAudit(PerformanceConfig(exact_auc_rows=0, auc_bins=bins)), classifier_context, 5, 0).metrics
        for side in ("reference", "current"):
            bound = binned[f"{side}.roc_auc_bound"]
            assert bound > 0
            assert abs(binned[f"{side}.roc_auc"] - exact[f"{side}.roc_auc"]) <= bound + 1e-12
            assert binned[f"{side}.accuracy"] == exact[f"{side}.accuracy"]  # counts are exact at any size
        if bins == 4096:
            assert binned["current.roc_auc_bound"] < 0.01


def test_performance_counts_labels_the_model_never_saw_as_sklearn_does(classifier_context):
    """A label outside the model's classes is a class it always gets wrong: accuracy, balanced accuracy and F1 as sklearn."""
    from audits.performance.performance import PerformanceAudit

    ds = classifier_context.current
    y = ds.y.copy()
    y.iloc[:7] = "maybe"
    current = replace(ds, y=y)
    context = replace(classifier_context, current=current)
    result = merged_result(PerformanceAudit(), context, 3, 0).metrics
    pred = ds.predictions.labels
    assert result["current.accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert result["current.balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    # sklearn calls a binary task with a third label multiclass; the F1 of the positive class is still defined
    assert result["current.f1"] == pytest.approx(skm.f1_score(y, pred, labels=["yes"], average=None)[0])
    assert np.isnan(result["current.log_loss"])  # sklearn refuses a label outside labels=
