"""The history page of a deployed model, from records: what it says first, what it draws, and that it stays inert."""

from __future__ import annotations

import numpy as np

from audits.rendering.history import HistoryRecord, feature_ranks, findings, gated_metrics, render_history


def degrading(days: int = 6, labelled: int = 3) -> list[HistoryRecord]:
    """Estimated accuracy falling 0.77 -> 0.67; labels on the first days; the degradation check warns from day 5."""
    records = []
    for day in range(days):
        estimate = 0.77 - 0.02 * day
        metrics = {"performance_estimation.estimated.accuracy": estimate,
                   "performance_estimation.estimated.accuracy_low": estimate - 0.02,
                   "performance_estimation.estimated.accuracy_high": estimate + 0.02,
                   "performance_estimation.held_out.accuracy": 0.78, "performance_estimation.trusted": 1.0,
                   "drift.drifted_share": 0.1 * day, "shap.importance.glucose": 1.0 - 0.15 * day,
                   "shap.importance.age": 0.5, "shap.importance.bmi": 0.2}
        if day < labelled:
            metrics["performance.current.accuracy"] = estimate + 0.005
        degradation = 1 - (estimate + 0.02) / 0.78
        checks = [{"metric": "performance_estimation.degradation", "severity": "warn", "value": degradation,
                   "passed": degradation <= 0.02, "min": None, "max": 0.02, "compare_to": None, "relative": False}]
        records.append(HistoryRecord(run_id=f"run{day}", as_of=f"2026-12-0{day + 1}", version="1" if day < 4 else "2",
                                     verdict="PASS" if degradation <= 0.02 else "WARN", metrics=metrics, checks=checks,
                                     trigger="schedule"))
    return records


def test_findings_say_when_the_model_started_to_degrade():
    said = findings(degrading())
    assert said[0] == ("6 audit(s) from 2026-12-01 to 2026-12-06: PASS 2, WARN 4. The latest (v2, 2026-12-06) is WARN. "
                       "No audit has passed since 2026-12-03.")
    assert said[1] == ("Estimated accuracy without labels fell from 0.770 (2026-12-01) to 0.670 [0.650, 0.690] "
                       "(2026-12-06), against 0.780 on the held-out rows: the model is probably degrading.")
    assert said[2].startswith("Labels have arrived for 3 of these audits: the realised accuracy lay within the "
                              "estimate's band in 3 of them")
    assert said[3] == ("performance_estimation.degradation first crossed its WARN bound on 2026-12-03 (v1): 0.03846, "
                       "must be <= 0.02.")


def test_the_page_draws_every_part_and_holds_no_script():
    page = render_history("History of models:/m@champion", degrading())
    assert "<script" not in page.lower() and "javascript:" not in page.lower()
    assert page.count("data:image/png;base64,") == 5  # verdicts, estimate, gated, ranks, drift
    assert page.index("Findings") < page.index("<img")  # findings first
    assert page.count("<tr>") == 7  # a header and one row per audit


def test_feature_ranks_follow_the_latest_audit_of_each_version():
    versions, features, ranks = feature_ranks(degrading())
    assert versions == ["1", "2"]
    # v1's last audit (day 4): glucose 0.55 > age 0.5; v2's (day 6): age 0.5 > glucose 0.25; equal best and total
    # ranks: by name
    assert features == ["age", "glucose", "bmi"]
    assert np.array_equal(ranks, [[2, 1], [1, 2], [3, 3]])


def test_gated_metrics_and_an_empty_history():
    assert gated_metrics(degrading()) == ["performance_estimation.degradation"]
    assert findings([]) == ["No audit of this model has been recorded yet."]
    assert "No audit of this model" in render_history("History", [])


def test_text_from_the_records_is_escaped():
    record = degrading(1)[0]
    hostile = HistoryRecord(**{**record.__dict__, "trigger": "<img src=x onerror=alert(1)>"})
    page = render_history("<b>title</b>", [hostile], with_figures=False)
    assert "<img src=x" not in page and "&lt;b&gt;title" in page
