"""Runs one audit safely: SKIPPED before computing, ERROR on a crash, checks into a verdict."""

from __future__ import annotations

import time
import traceback

from audits.core.context import AuditContext
from audits.core.plan import PlannedAudit
from audits.core.result import AuditResult, CheckResult, Verdict, is_valid_key, worst


def verdict_from_checks(checks: list[CheckResult]) -> tuple[Verdict, str]:
    unevaluated = [c for c in checks if c.passed is None]
    failed = [c for c in checks if c.passed is False and c.severity == "fail"]
    warned = [c for c in checks if c.passed is False and c.severity == "warn"]
    if failed:
        return Verdict.FAIL, "; ".join(c.message for c in failed)
    if unevaluated:
        return Verdict.ERROR, "; ".join(f"{c.metric}: {c.message}" for c in unevaluated)
    if warned:
        return Verdict.WARN, "; ".join(c.message for c in warned)
    return Verdict.PASS, f"{len(checks)} check(s) passed" if checks else "no thresholds configured"


def namespaced(result: AuditResult, audit_id: str) -> AuditResult:
    metrics = {f"{audit_id}.{key}": float(value) for key, value in result.metrics.items()}
    bad = [key for key in metrics if not is_valid_key(key)]
    if bad:
        raise ValueError(f"audit produced metric keys MLflow rejects: {bad[:5]}")
    return result.with_(audit=audit_id, metrics=metrics)


def run_planned(planned: PlannedAudit, context: AuditContext) -> AuditResult:
    started = time.perf_counter()

    def finish(result: AuditResult) -> AuditResult:
        return result.with_(audit=planned.id, duration_s=time.perf_counter() - started)

    reason = planned.audit.skip_reason(context)
    if reason:
        return finish(AuditResult.skipped(planned.id, reason))
    try:
        result = namespaced(planned.audit.compute(context), planned.id)
    except Exception as exc:  # an audit that raises becomes ERROR; the other audits still run
        return finish(
            AuditResult(
                audit=planned.id,
                verdict=Verdict.ERROR,
                reason=f"{type(exc).__name__}: {exc}",
                info={"traceback": "".join(traceback.format_exception(exc))[-4000:]},
            )
        )
    if result.verdict in (Verdict.SKIPPED, Verdict.ERROR):
        return finish(result)
    checks = [threshold.evaluate(result.metrics) for threshold in planned.thresholds]
    verdict, check_reason = verdict_from_checks(checks)
    # An audit may itself report WARN or FAIL (with its reason); checks can only make it worse.
    if result.verdict.severity > verdict.severity:
        verdict, check_reason = result.verdict, result.reason or check_reason
    return finish(result.with_(verdict=verdict, reason=check_reason, checks=tuple(checks)))


def overall_verdict(results: list[AuditResult]) -> Verdict:
    return worst([r.verdict for r in results])
