"""Runs one audit safely: SKIPPED before computing, ERROR on a crash, checks into a verdict."""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from typing import TypeVar

from audits.core.context import AuditContext
from audits.core.plan import PlannedAudit
from audits.core.result import AuditResult, CheckResult, Verdict, is_valid_key, worst


T = TypeVar("T")


class TimeLimitExceeded(Exception):
    """A call that did not return within its time limit."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        super().__init__(f"did not finish within {seconds:g} s")


def call_with_time_limit(function: Callable[[], T], seconds: float | None, name: str = "auditlens-limited") -> T:
    """``function()``, or TimeLimitExceeded once ``seconds`` have passed without it returning.

    Python cannot stop a thread: the call goes on in a daemon thread, which dies with the process (the CLI exits after
    the audit; a long-lived worker keeps the thread until its own end). Its result, if it ever comes, is dropped.
    """
    if seconds is None:
        return function()
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["value"] = function()
        except BaseException as exc:  # noqa: BLE001 (handed to the caller)
            outcome["error"] = exc

    worker = threading.Thread(target=target, name=name, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise TimeLimitExceeded(seconds)
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


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
        result = namespaced(call_with_time_limit(lambda: planned.audit.compute(context), planned.time_limit_s,
                                                 f"audit-{planned.id}"), planned.id)
    except TimeLimitExceeded as exc:
        return finish(AuditResult(audit=planned.id, verdict=Verdict.ERROR,
                                  reason=f"{exc} (time_limit_s; the model or the audit may hang on this data)"))
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
