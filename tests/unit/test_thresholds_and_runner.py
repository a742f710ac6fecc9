"""Thresholds as data, the runner's SKIPPED / ERROR / verdict logic, metric key rules."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from pydantic import ValidationError

from audits.core import Audit, AuditConfig, AuditResult, Requirements, Threshold, Verdict
from audits.core.partial import PartialAudit
from audits.core.plan import PlannedAudit
from audits.core.result import is_valid_key, key_part, worst
from audits.core.runner import overall_verdict, run_planned


def test_absolute_bounds():
    t = Threshold(metric="m", min=0.5, max=0.9)
    assert t.evaluate({"m": 0.7}).passed is True
    assert t.evaluate({"m": 0.95}).passed is False
    assert t.evaluate({"m": 0.5}).passed is True  # bounds are inclusive


def test_change_against_a_baseline_absolute_and_relative():
    drop = Threshold(metric="cur", compare_to="ref", min=-0.05)
    assert drop.evaluate({"cur": 0.80, "ref": 0.84}).passed is True
    check = drop.evaluate({"cur": 0.70, "ref": 0.84})
    assert check.passed is False and check.value == pytest.approx(-0.14)
    growth = Threshold(metric="cur", compare_to="ref", max=0.5, relative=True)
    assert growth.evaluate({"cur": 14.0, "ref": 10.0}).value == pytest.approx(0.4)
    assert growth.evaluate({"cur": 16.0, "ref": 10.0}).passed is False
    assert growth.evaluate({"cur": 1.0, "ref": 0.0}).passed is None  # relative change to 0 is undefined


def test_missing_or_nan_metric_cannot_be_evaluated():
    t = Threshold(metric="m", min=0)
    assert t.evaluate({}).passed is None and "not produced" in t.evaluate({}).message
    assert t.evaluate({"m": math.nan}).passed is None


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"metric": "m"}, "needs 'min', 'max'"),
        ({"metric": "m", "min": 2, "max": 1}, "greater than"),
        ({"metric": "m", "min": 0, "relative": True}, "compare_to"),
        ({"metric": "m", "min": 0, "sevrity": "warn"}, "Extra inputs"),
    ],
)
def test_invalid_thresholds_are_rejected(bad, message):
    with pytest.raises(ValidationError, match=message):
        Threshold.model_validate(bad)


@pytest.mark.parametrize(
    "key", ["shap.importance.mean radius", "a/b:c-d e", "shap.importance.income ($)", "../up", "a//b", "a/./b", "é.ok", ""]
)
def test_metric_key_rule_agrees_with_mlflow(key):
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import _validate_metric_name

    try:
        _validate_metric_name(key)
        mlflow_accepts = True
    except MlflowException:
        mlflow_accepts = False
    assert is_valid_key(key) == mlflow_accepts


def test_keys_longer_than_mlflow_allows_are_invalid():
    assert is_valid_key("x" * 250) and not is_valid_key("x" * 251)


def test_key_part_makes_any_name_valid():
    assert key_part("income ($)") == "income ___"
    for name in ["weird/../name?", "..", "a//b", " spaced ", "€"]:
        assert is_valid_key(f"shap.importance.{key_part(name)}"), name


def test_verdict_order():
    assert worst([Verdict.PASS, Verdict.WARN]) is Verdict.WARN
    assert worst([Verdict.ERROR, Verdict.FAIL]) is Verdict.FAIL
    assert worst([Verdict.SKIPPED, Verdict.PASS]) is Verdict.PASS
    assert worst([]) is Verdict.SKIPPED


class Fixed(Audit):
    name = "fixed"
    Config = AuditConfig

    def __init__(self, metrics, verdict=Verdict.PASS, requires=Requirements()):
        super().__init__()
        self.metrics, self.verdict = metrics, verdict
        self.requires = requires

    def compute(self, context):
        return AuditResult(audit=self.name, metrics=self.metrics, verdict=self.verdict)


class Crashing(Audit):
    name = "crashing"

    def compute(self, context):
        raise ZeroDivisionError("division by zero in the audit")


def test_runner_namespaces_metrics_and_applies_checks(classifier_context):
    planned = PlannedAudit("fixed", Fixed({"score": 0.4}), (Threshold(metric="fixed.score", min=0.5),))
    result = run_planned(planned, classifier_context)
    assert result.metrics == {"fixed.score": 0.4}
    assert result.verdict is Verdict.FAIL and result.reason == "fixed.score = 0.4, must be >= 0.5"
    warn = PlannedAudit("fixed", Fixed({"score": 0.4}), (Threshold(metric="fixed.score", min=0.5, severity="warn"),))
    assert run_planned(warn, classifier_context).verdict is Verdict.WARN
    typo = PlannedAudit("fixed", Fixed({"score": 0.4}), (Threshold(metric="fixed.scroe", min=0.5),))
    result = run_planned(typo, classifier_context)
    assert result.verdict is Verdict.ERROR and "fixed.scroe" in result.reason


def test_a_crash_becomes_error_and_the_others_still_run(classifier_context):
    results = [
        run_planned(PlannedAudit("crashing", Crashing(), ()), classifier_context),
        run_planned(PlannedAudit("fixed", Fixed({"score": 1.0}), ()), classifier_context),
    ]
    assert results[0].verdict is Verdict.ERROR
    assert results[0].reason == "ZeroDivisionError: division by zero in the audit"
    assert "Traceback" in results[0].info["traceback"]
    assert results[1].verdict is Verdict.PASS
    assert overall_verdict(results) is Verdict.ERROR


def test_unmet_requirements_skip_with_a_reason(classifier_context, regressor_context):
    needs_regression = Fixed({}, requires=Requirements(tasks=("regression",)))
    result = run_planned(PlannedAudit("fixed", needs_regression, ()), classifier_context)
    assert result.verdict is Verdict.SKIPPED and "regression" in result.reason
    needs_proba = Fixed({}, requires=Requirements(probabilities=True))
    assert run_planned(PlannedAudit("fixed", needs_proba, ()), regressor_context).verdict is Verdict.PASS  # regressors need none
    pyfunc_like = dataclasses.replace(classifier_context, model=dataclasses.replace(classifier_context.model, predict_proba=None))
    assert "has no predict_proba" in run_planned(PlannedAudit("fixed", needs_proba, ()), pyfunc_like).reason


def test_invalid_metric_keys_become_an_error(classifier_context):
    result = run_planned(PlannedAudit("fixed", Fixed({"bad key!": 1.0}), ()), classifier_context)
    assert result.verdict is Verdict.ERROR and "MLflow rejects" in result.reason


class RowsSeen(Audit):
    """A sample-mode audit that reports the rows it was given."""

    name = "rows_seen"

    def compute(self, context):
        return AuditResult(audit=self.name, metrics={"reference": len(context.reference), "current": len(context.current),
                                                      "first_current": float(context.current.X.index[0])})


def test_a_sample_audit_sees_its_own_sample_rows_and_the_report_says_how_many(classifier_context):
    """Each audit's sample is the context cut to its sample_rows, seeded: audits with the same figure see the same rows,
    and an audit whose figure exceeds the context sees all of it (the one-frame case: 'every row')."""
    ref, cur = len(classifier_context.reference), len(classifier_context.current)
    cut = run_planned(PlannedAudit("rows_seen", RowsSeen(), (), sample_rows=60), classifier_context)
    assert cut.metrics["rows_seen.reference"] == 60 and cut.metrics["rows_seen.current"] == 60
    assert cut.info["rows"] == f"a seeded sample: 60 of {ref:,} reference rows, 60 of {cur:,} current rows (sample_rows 60)"
    again = run_planned(PlannedAudit("rows_seen", RowsSeen(), (), sample_rows=60), classifier_context)
    assert again.metrics == cut.metrics
    whole = run_planned(PlannedAudit("rows_seen", RowsSeen(), (), sample_rows=10**6), classifier_context)
    assert whole.metrics["rows_seen.current"] == cur and whole.info["rows"] == f"every row ({ref:,} reference, {cur:,} current)"


class CountingHybrid(PartialAudit):
    """Fits on its sample (records its size), then counts every row it is applied to."""

    name = "counting_hybrid"
    mode = "hybrid"

    def fit(self, context):
        return {"fitted_on": len(context.reference) + len(context.current)}

    def init(self, context, fitted):
        return {"rows": 0}

    def update(self, state, partition, context, fitted):
        return {"rows": state["rows"] + len(partition)}

    def merge(self, a, b):
        return {"rows": a["rows"] + b["rows"]}

    def finalize(self, state, context, fitted, population):
        return AuditResult(audit=self.name, metrics={"fitted_on": fitted["fitted_on"], "applied_to": state["rows"],
                                                      "context_rows": len(context.current), "population": population["current"]})


def test_a_hybrid_audit_fits_on_its_sample_and_still_reads_every_row_of_a_larger_frame(classifier_context):
    ref, cur = len(classifier_context.reference), len(classifier_context.current)
    result = run_planned(PlannedAudit("h", CountingHybrid(), (), sample_rows=50), classifier_context)
    assert result.metrics == {"h.fitted_on": 100, "h.applied_to": ref + cur, "h.context_rows": 50, "h.population": cur}
    assert result.info["rows"].startswith(f"fitted on a seeded sample (50 of {ref:,} reference rows, 50 of {cur:,} current rows), "
                                          f"applied to every row ({ref:,} reference, {cur:,} current)")
    # a partial audit is never cut: it reads every row whatever its sample_rows
    class Counting(CountingHybrid):
        mode = "partial"

    partial = run_planned(PlannedAudit("p", Counting(), (), sample_rows=50), classifier_context)
    assert partial.metrics["p.fitted_on"] == ref + cur and partial.metrics["p.applied_to"] == ref + cur


def test_the_plan_draws_the_largest_sample_its_audits_afford_and_a_plan_entry_overrides_an_audits_default():
    from audits.core.plan import AuditPlan, plan_sample_rows

    plan = AuditPlan.model_validate({"audits": [{"audit": "shap"}, {"audit": "drift"}]}).build()
    assert [p.sample_rows for p in plan] == [20_000, 20_000] and plan_sample_rows(plan) == 20_000
    grown = AuditPlan.model_validate({"audits": [{"audit": "shap"}, {"audit": "disagreement"},
                                                 {"audit": "concordance", "sample_rows": 50_000}]}).build()
    assert [p.sample_rows for p in grown] == [20_000, 200_000, 50_000] and plan_sample_rows(grown) == 200_000


def test_a_check_that_cannot_tell_neither_passes_nor_fails_and_the_audit_says_so():
    from audits.core.runner import verdict_from_checks

    bound = Threshold(metric="a.z", max=3.0)
    undefined = bound.evaluate({"a.z": float("nan")})
    assert undefined.cannot_tell and undefined.passed is None and "undefined on this data" in undefined.message
    # on this data the z could only reach 2.1: a bound of 3 could never fail, whatever the data said
    unreachable = bound.evaluate({"a.z": 2.1}, {"a.z": (-8.2, 2.1)})
    assert unreachable.cannot_tell and "could never fail" in unreachable.message
    reachable = bound.evaluate({"a.z": 2.1}, {"a.z": (-8.2, 37.0)})
    assert reachable.passed is True and not reachable.cannot_tell
    assert Threshold(metric="a.z", min=-9).evaluate({"a.z": 0.0}, {"a.z": (-8.2, 2.1)}).cannot_tell
    verdict, reason = verdict_from_checks([reachable, unreachable])
    assert verdict.value == "SKIPPED" and reason.startswith("cannot tell: a.z")
    failed = Threshold(metric="a.y", min=1.0).evaluate({"a.y": 0.0})
    assert verdict_from_checks([failed, unreachable])[0].value == "FAIL"  # what can be told is still told
    missing = Threshold(metric="a.w", min=1.0).evaluate({})
    assert verdict_from_checks([missing, unreachable])[0].value == "ERROR" and not missing.cannot_tell


def test_a_figure_is_rasterised_once_when_first_read_and_travels_as_png():
    import io
    import pickle

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from audits.core.result import Artifact

    fig = Figure(figsize=(2, 2))
    fig.add_subplot().plot([0, 1], [1, 0])
    artifact = Artifact.figure("line", fig)
    assert artifact.payload is fig  # drawn, not rasterised
    expected = io.BytesIO()
    FigureCanvasAgg(fig).print_png(expected, metadata={"Software": None})
    assert artifact.content == expected.getvalue() == artifact.encoded() and artifact.content[:4] == b"\x89PNG"
    assert isinstance(artifact.payload, bytes)  # once
    sent = pickle.loads(pickle.dumps(Artifact.figure("again", fig)))
    assert isinstance(sent.payload, bytes) and sent.content == expected.getvalue()
    table = Artifact.table("t", __import__("pandas").DataFrame({"a": [1, 2]}))
    assert json.loads(table.encoded()) == {"columns": ["a"], "data": [[1], [2]]}


def test_without_figures_an_audit_returns_its_values_and_no_figure(classifier_context):
    from audits.core.registry import get_audit_class

    cls = get_audit_class("calibration")
    drawn = run_planned(PlannedAudit("calibration", cls(), ()), classifier_context)
    bare = run_planned(PlannedAudit("calibration", cls(), ()), dataclasses.replace(classifier_context, with_figures=False))
    assert "figure" in {a.kind for a in drawn.artifacts} and "figure" not in {a.kind for a in bare.artifacts}
    assert bare.metrics == drawn.metrics and [a.name for a in bare.artifacts] == [a.name for a in drawn.artifacts if a.kind != "figure"]


def test_a_long_name_from_the_data_keeps_its_keys_valid_and_distinct():
    from audits.core.result import MAX_KEY_PART

    first, second = "north clinic, " * 30 + "ward A", "north clinic, " * 30 + "ward B"
    parts = key_part(first), key_part(second)
    assert parts[0] != parts[1] and all(len(p) == MAX_KEY_PART for p in parts)
    assert parts[0].startswith("north clinic_ north") and key_part(first) == parts[0]  # stable
    # the longest key an audit builds: audit, segment column, value, metric, class
    assert is_valid_key(f"conformal.segment.{key_part('x' * 300)}.{key_part(first)}.coverage.{key_part('y' * 300)}")
    assert key_part("short name") == "short name"
