"""The HTML report is self-contained (readable offline in MLflow's sandboxed viewer) and says what happened."""

from __future__ import annotations

import re

from audits.core.plan import PlannedAudit
from audits.core.result import AuditResult, Verdict
from audits.core.runner import overall_verdict, run_planned
from audits.performance.performance import PerformanceAudit
from audits.rendering.html import markdown_summary, render_report


def test_report_is_self_contained_and_complete(classifier_context):
    results = [
        run_planned(PlannedAudit("performance", PerformanceAudit(), ()), classifier_context),
        AuditResult(audit="shap", verdict=Verdict.ERROR, reason="ValueError: <boom> & co", info={"traceback": "Traceback ..."}),
        AuditResult.skipped("calibration", "needs predicted probabilities"),
    ]
    verdict = overall_verdict(results)
    html = render_report("m v1", "models:/m/1", verdict, results, {"seed": 0})
    assert verdict is Verdict.ERROR
    assert not re.search(r"""(src|href)\s*=\s*["'](https?:|//|[^"'#d])""", html), "external or relative link"
    assert "<link" not in html and "<script src" not in html and "<script>" in html  # inline anchor navigation only
    assert html.count("data:image/png;base64,") == 1  # the confusion matrix
    assert "ValueError: &lt;boom&gt; &amp; co" in html  # escaped, not injected
    for audit_id in ("performance", "shap", "calibration"):
        assert f'id="{audit_id}"' in html
    assert "performance.current.accuracy" in html
    summary = markdown_summary("m v1", verdict, results)
    assert "| shap | ERROR |" in summary and "audit_report.html" in summary


def test_the_run_description_shows_markup_from_names_and_reasons_as_text():
    results = [AuditResult(audit="shap", verdict=Verdict.ERROR, reason="KeyError: '<img src=x onerror=alert(1)>'")]
    summary = markdown_summary("<script>alert(1)</script> v1", Verdict.ERROR, results)
    assert "<" not in summary and ">" not in summary  # MLflow renders the description as Markdown, which passes HTML
    assert "**Audit of &lt;script&gt;alert(1)&lt;/script&gt; v1: ERROR**" in summary
    assert "| shap | ERROR | KeyError: '&lt;img src=x onerror=alert(1)&gt;' |" in summary
