"""The findings that open the report and the run description, and the verdict per question: exact sentences for a
small set of results (checks evaluated as the runner does), in milliseconds."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from audits.core.audit import Audit
from audits.core.registry import available_audits, get_audit_class
from audits.core.result import Artifact, AuditResult, Verdict
from audits.core.runner import overall_verdict, verdict_from_checks
from audits.core.thresholds import Threshold
from audits.rendering.findings import QUESTIONS, findings, question_of, shown_findings, verdict_by_question
from audits.rendering.html import FOLD_ROWS, markdown_summary, render_report


def judged(audit: str, metrics: dict[str, float], thresholds: list[dict], artifacts=()) -> AuditResult:
    checks = tuple(Threshold(**t).evaluate(metrics) for t in thresholds)
    verdict, reason = verdict_from_checks(list(checks))
    return AuditResult(audit=audit, verdict=verdict, reason=reason, metrics=metrics, checks=checks, artifacts=tuple(artifacts))


FEATURES = pd.DataFrame({
    "feature": ["age", "clinic", "weight", "height"],
    "type": ["numeric", "categorical", "numeric", "numeric"],
    "effect_measure": ["wasserstein / reference std", "psi", "wasserstein / reference std", "wasserstein / reference std"],
    "effect": [0.31, 0.42, 1.2, 0.02],
    "drifted": [True, True, True, False],
})  # fmt: skip
DRIFT = judged("drift", {"drift.drifted_features": 3.0, "drift.domain_auc": 0.93, "drift.prediction.drifted": 0.0},
               [{"metric": "drift.drifted_features", "max": 0, "severity": "warn"},
                {"metric": "drift.domain_auc", "max": 0.6, "severity": "warn"}, {"metric": "drift.domain_auc", "max": 0.8}],
               [Artifact.table("features", FEATURES)])  # fmt: skip
PERFORMANCE = judged("performance", {"performance.current.accuracy": 0.94, "performance.reference.accuracy": 0.95},
                     [{"metric": "performance.current.accuracy", "min": 0.9}])  # fmt: skip
CALIBRATION = judged("calibration", {"calibration.current.ece": 0.021, "calibration.current.ece_excess": 0.0},
                     [{"metric": "calibration.current.ece_excess", "max": 0.1}])  # fmt: skip
EXPECTATIONS = pd.DataFrame({
    "suite": ["user", "baseline", "baseline"],
    "expectation": ["expect_column_values_to_not_be_null", "expect_column_values_to_be_between", "expect_column_values_to_be_in_set"],
    "column": ["income", "weight", "income"],
    "success": [False, False, True],
    "unexpected_percent": [12.0, 3.25, None],
})  # fmt: skip
DATA_QUALITY = judged("data_quality", {"data_quality.user.failed": 1.0, "data_quality.user.evaluated": 4.0,
                                       "data_quality.baseline.failed": 1.0, "data_quality.baseline.evaluated": 30.0},
                      [{"metric": "data_quality.user.failed", "max": 0}, {"metric": "data_quality.baseline.failed", "max": 0, "severity": "warn"}],
                      [Artifact.table("expectations", EXPECTATIONS)])  # fmt: skip


def test_a_fail_for_drift_alone_does_not_read_as_a_broken_model():
    results = [PERFORMANCE, CALIBRATION, DRIFT]
    assert verdict_by_question(overall_verdict(results), results) == (
        "FAIL \u2014 the data: FAIL (drift in 3 of 4 features); the model's behaviour: fine (accuracy 0.94 vs 0.95 on the "
        "reference data, predictions did not drift); its certainty: fine (ECE 0.021)")
    [drift] = findings(results)
    assert drift.sentence == (
        "Drift failed: 3 of 4 features drifted (weight moved 1.2 sd, clinic PSI 0.42 and age moved 0.31 sd), a classifier "
        "tells current rows from reference rows apart with AUC 0.93 (0.13 above the maximum of 0.8, where 0.5 means no "
        "difference) and the model's predictions did not drift; check the data pipeline feeding weight, clinic and age, "
        "and if the shift is real, retrain on recent data.")


def test_failed_expectations_say_which_columns_and_how_many_rows():
    [finding] = findings([DATA_QUALITY])
    assert finding.verdict is Verdict.FAIL and finding.question == "data"
    assert finding.short == "2 failed expectations on income and weight"
    assert finding.sentence == (
        "Data quality failed: 1 of 4 expectations of your suite failed and 1 of 30 expectations of the baseline inferred "
        "from the reference data failed, on income ('values to not be null': 12% of rows unexpected) and weight ('values "
        "to be between': 3.25% of rows unexpected); fix the source of income and weight upstream, or update the "
        "expectation if the change is legitimate.")


def test_a_bound_missed_says_by_how_much_beside_the_reference():
    low = judged("performance", {"performance.current.accuracy": 0.77, "performance.reference.accuracy": 0.81},
                 [{"metric": "performance.current.accuracy", "min": 0.8}])  # fmt: skip
    relative = judged("champion_challenger", {"champion_challenger.challenger.primary": 0.7, "champion_challenger.champion.primary": 0.8},
                      [{"metric": "champion_challenger.challenger.primary", "compare_to": "champion_challenger.champion.primary",
                        "relative": True, "min": -0.05}])  # fmt: skip
    assert [f.sentence for f in findings([low, relative])] == [
        "Performance failed: accuracy on the current data is 0.77, 0.03 below the minimum of 0.8 (0.81 on the reference "
        "data); see where the errors concentrate (segments) and whether the data drifted, and if the drop is real, retrain "
        "on recent labelled data or keep the previous version.",
        "Champion challenger failed: the relative change from the champion's primary metric to the challenger's primary "
        "metric is -0.125, 0.075 below the minimum of -0.05; keep the champion until the challenger at least matches it.",
    ]


def test_most_severe_first_errors_said_and_the_rest_counted():
    warned = judged("ood", {"ood.max_excess_z": 4.5}, [{"metric": "ood.max_excess_z", "max": 3, "severity": "warn"}])
    crashed = AuditResult(audit="shap", verdict=Verdict.ERROR, reason="ValueError: no rows")
    skipped = AuditResult.skipped("lime", "needs probabilities")
    found = findings([warned, crashed, skipped, DATA_QUALITY])
    assert [(f.audit, f.verdict) for f in found] == [("data_quality", Verdict.FAIL), ("shap", Verdict.ERROR), ("ood", Verdict.WARN)]
    assert found[1].sentence == ("Shap could not run (ValueError: no rows); its section has the message, and the other "
                                 "audits' verdicts stand without it.")  # fmt: skip
    assert found[2].sentence == ("Ood warns: excess of unfamiliar rows (z) is 4.5, 1.5 above the maximum of 3; look at the "
                                 "most unfamiliar rows in its section: send such inputs to a person, or retrain with data "
                                 "like them.")  # fmt: skip
    assert verdict_by_question(Verdict.FAIL, [warned, crashed, skipped, DATA_QUALITY]) == (
        "FAIL \u2014 the data: FAIL (2 failed expectations on income and weight); the model's behaviour: ERROR (shap could "
        "not run); its certainty: WARN (excess of unfamiliar rows (z) 4.5)")
    many = [judged(f"a{i}", {f"a{i}.x": 1.0}, [{"metric": f"a{i}.x", "max": 0}]) for i in range(7)]
    shown, more = shown_findings(findings(many, questions={f"a{i}": "data" for i in range(7)}))
    assert len(shown) == 5 and more == 2


def test_questions_nobody_asked_or_nobody_could_answer():
    results = [DRIFT, AuditResult.skipped("calibration", "needs probabilities")]
    assert verdict_by_question(Verdict.FAIL, results) == (
        "FAIL \u2014 the data: FAIL (drift in 3 of 4 features); the model's behaviour: not checked; its certainty: not "
        "answered (every audit skipped)")
    assert verdict_by_question(Verdict.PASS, [PERFORMANCE], questions={"performance": "behaviour"}).startswith(
        "PASS \u2014 the model's behaviour: fine (accuracy 0.94 vs 0.95 on the reference data)")


def test_every_registered_audit_answers_one_of_the_three_questions():
    unanswered = {name: question_of(get_audit_class(name)) for name in available_audits()}
    assert {name: q for name, q in unanswered.items() if q not in QUESTIONS} == {}

    class ThirdParty(Audit):
        name = "third_party"

        def compute(self, context):  # pragma: no cover
            raise NotImplementedError

    assert question_of(ThirdParty) == "other"
    planted = judged("third_party", {"third_party.x": 2.0}, [{"metric": "third_party.x", "max": 1}])
    assert verdict_by_question(Verdict.FAIL, [planted], questions={"third_party": "other"}) == (
        "FAIL \u2014 other checks: FAIL (x 2); the model's behaviour: not checked; its certainty: not checked; the data: "
        "not checked")


def test_the_report_and_the_description_open_with_the_findings():
    long = judged("segments", {f"segments.c.v{i}.accuracy": 0.9 for i in range(FOLD_ROWS + 5)}, [],
                  [Artifact.table("by_segment", pd.DataFrame({"segment": range(FOLD_ROWS + 5)}), "Metrics per segment"),
                   Artifact.table("gaps", pd.DataFrame({"gap": [0.1]}), "Largest gap")])  # fmt: skip
    results = [PERFORMANCE, CALIBRATION, DRIFT, long]
    html = render_report("m v1", "models:/m/1", Verdict.FAIL, results, {"seed": 0})
    first_table = html.index("<table")
    assert html.index("the data</strong>: FAIL (drift in 3 of 4 features)") < html.index("Drift failed: 3 of 4") < first_table
    assert html.index("<h2>Verdicts</h2>") < first_table
    folded = re.findall(r"<details><summary>([^<]*)</summary>", html)
    assert folded == [f"Metrics: {FOLD_ROWS + 5} values", f"Metrics per segment: {FOLD_ROWS + 5} rows"]
    assert "<h3>Largest gap</h3>" in html  # short tables stay open

    calm = render_report("m v1", "", Verdict.PASS, [PERFORMANCE, AuditResult.skipped("shap", "no rows")], {})
    assert "<p>No check failed or warned; 1 audit could not tell or did not apply (see the verdicts).</p>" in calm

    summary = markdown_summary("m v1", Verdict.FAIL, results)
    lines = summary.splitlines()
    assert lines[0] == ("**Audit of m v1: FAIL** \u2014 the data: FAIL (drift in 3 of 4 features); the model's behaviour: fine "
                        "(accuracy 0.94 vs 0.95 on the reference data, predictions did not drift); its certainty: fine (ECE 0.021)")
    assert lines[2].startswith("1. Drift failed: 3 of 4 features drifted") and lines[4] == "| audit | verdict | reason |"


@pytest.mark.parametrize("name, question", [("calibration", "certainty"), ("conformal", "certainty"),
                                            ("performance_estimation", "behaviour"), ("slices", "behaviour")])
def test_the_uncertainty_and_label_free_audits_declare_their_question(name, question):
    from audits.rendering.findings import question_of_name

    assert question_of_name(name) == question


def test_an_estimate_without_labels_and_a_weak_slice_are_told_in_their_own_words():
    estimated = {"performance_estimation.estimated.accuracy": 0.789, "performance_estimation.estimated.accuracy_low": 0.766,
                 "performance_estimation.estimated.accuracy_high": 0.819, "performance_estimation.held_out.accuracy": 0.857,
                 "performance_estimation.degradation": 0.044, "performance_estimation.trusted": 1.0}
    thresholds = [{"metric": "performance_estimation.degradation", "max": 0.02, "severity": "warn"},
                  {"metric": "performance_estimation.trusted", "min": 1, "severity": "warn"}]
    slices = AuditResult(audit="slices", verdict=Verdict.WARN, reason="slices.top.lift = 2.66, must be <= 2",
                         metrics={"slices.found": 1.0, "slices.top.lift": 2.66},
                         checks=(Threshold(metric="slices.top.lift", max=2, severity="warn").evaluate({"slices.top.lift": 2.66}),),
                         info={"slice_1": "age <= 45 and clinic = north: 7.4 % of rows, error 0.402 vs 0.131"})
    estimate, weak = findings([judged("performance_estimation", estimated, thresholds), slices])
    assert estimate.sentence == (
        "Performance estimation warns: without labels, accuracy is estimated at 0.789 [0.766, 0.819], against 0.857 on "
        "the held-out rows and even the band's better end is 4.4 % worse; confirm with labels as soon as they arrive, "
        "and look for the shift behind it (drift, slices).")
    assert weak.sentence == (
        "Slices warns: the weakest slice found by search is age <= 45 and clinic = north: 7.4 % of rows, error 0.402 vs "
        "0.131; look at that group's data and labels: collect more of it, or give it a model or a threshold of its own.")
    untrusted = judged("performance_estimation", {**estimated, "performance_estimation.degradation": 0.0,
                                                  "performance_estimation.trusted": 0.0}, thresholds)
    untrusted = AuditResult(**{**untrusted.__dict__, "info": {"trusted": "NO: 41.0% of current rows lie where the holdout "
                                                                         "has no rows like them (bound 5%)"}})
    [told] = findings([untrusted])
    assert "the estimate is not to be trusted: 41.0% of current rows lie where the holdout has no rows like them" in told.sentence
    assert told.sentence.endswith("give labelled rows the model did not train on (data.holdout) and read the estimate as "
                                  "a rough guide until then.")
