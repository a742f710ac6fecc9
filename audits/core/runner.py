"""Runs one audit safely: SKIPPED before computing, ERROR on a crash, checks into a verdict."""

from __future__ import annotations

import os
import threading
import time
import traceback
from collections.abc import Callable
from typing import TypeVar

from audits.core.context import AuditContext, subsample
from audits.core.partial import FullData, audit_mode, reduce_partitions
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
    """FAIL, then ERROR (a check that could not be evaluated: a metric never produced), then WARN; a check whose
    metric is undefined on this data (NaN: too few features, rows, classes or labels to measure it), or could never
    cross its bound here, cannot tell, and an audit that cannot tell is SKIPPED with the reason, never PASS; PASS when
    every check passed."""
    undefined = [c for c in checks if c.cannot_tell]
    unevaluated = [c for c in checks if c.passed is None and not c.cannot_tell]
    failed = [c for c in checks if c.passed is False and c.severity == "fail"]
    warned = [c for c in checks if c.passed is False and c.severity == "warn"]
    if failed:
        return Verdict.FAIL, "; ".join(c.message for c in failed)
    if unevaluated:
        return Verdict.ERROR, "; ".join(f"{c.metric}: {c.message}" for c in unevaluated)
    if warned:
        return Verdict.WARN, "; ".join(c.message for c in warned)
    if undefined:
        return Verdict.SKIPPED, "cannot tell: " + "; ".join(f"{c.metric}: {c.message}" for c in undefined)
    return Verdict.PASS, f"{len(checks)} check(s) passed" if checks else "no thresholds configured"


def namespaced(result: AuditResult, audit_id: str) -> AuditResult:
    metrics = {f"{audit_id}.{key}": float(value) for key, value in result.metrics.items()}
    bad = [key for key in metrics if not is_valid_key(key)]
    if bad:
        raise ValueError(f"audit produced metric keys MLflow rejects: {bad[:5]}")
    ranges = {f"{audit_id}.{key}": span for key, span in result.ranges.items()}
    chance = {f"{audit_id}.{key}": band for key, band in result.chance.items()}
    return result.with_(audit=audit_id, metrics=metrics, ranges=ranges, chance=chance)


def sample_for(planned: PlannedAudit, context: AuditContext) -> AuditContext:
    """The rows an audit computes (sample mode) or fits (hybrid) on: the context's sample cut to the audit's own
    sample_rows, seeded (audits with the same sample_rows get the same rows); for a sample audit that honours weights,
    the stratified sample when there is one. A partial audit keeps the whole context."""
    mode = audit_mode(planned.audit)
    if mode == "partial":
        return context
    if mode == "sample" and planned.audit.stratified and context.stratified is not None:
        return subsample(context.stratified, planned.sample_rows)
    return subsample(context, planned.sample_rows)


def _strata(cut: AuditContext, population: dict[str, int]) -> str:
    """"; current: stratified by ..." for each side of a stratified sample; "" for a uniform one."""
    return "".join(f"; {s}: {cut.dataset(s).strata.describe()}" for s in population if cut.dataset(s).strata is not None)


def _describe(cut: AuditContext, population: dict[str, int]) -> str:
    return ", ".join(f"{len(cut.dataset(s)):,} of {population[s]:,} {s} rows" for s in population) + _strata(cut, population)


def rows_seen(planned: PlannedAudit, context: AuditContext, full: FullData | None) -> tuple[Callable[[], AuditResult], str]:
    """How the audit computes, and which rows it sees, in words for the report: every row (its merged state from the
    pass over all partitions, or the whole frame), or a seeded sample cut to the audit's own sample_rows."""
    audit, cut = planned.audit, sample_for(planned, context)
    mode = audit_mode(audit)
    population = full.population if full is not None else {"reference": len(context.reference), "current": len(context.current)}
    if full is not None and planned.id in full.states:
        state, fitted = full.states[planned.id], full.fitted.get(planned.id)
        how = "every row" if mode == "partial" else f"fitted on a seeded sample ({_describe(cut, population)}), applied to every row"
        return (lambda: audit.finalize(state, cut, fitted, population)), f"{how} ({full.describe_population()})"
    if mode == "hybrid" and cut is not context and full is None:  # one frame larger than the audit's sample
        def fitted_then_every_row() -> AuditResult:
            fitted = audit.fit(cut)
            state = reduce_partitions(audit, cut, fitted, (context.reference, context.current))
            return audit.finalize(state, cut, fitted, population)

        return fitted_then_every_row, (f"fitted on a seeded sample ({_describe(cut, population)}), applied to every row "
                                       f"({len(context.reference):,} reference, {len(context.current):,} current)")
    if full is not None or any(len(cut.dataset(s)) < population[s] for s in population):
        return (lambda: audit.compute(cut)), f"a seeded sample: {_describe(cut, population)} (sample_rows {planned.sample_rows:,})"
    return (lambda: audit.compute(cut)), (f"every row ({len(context.reference):,} reference, {len(context.current):,} current)"
                                          f"{_strata(cut, population)}")


def run_planned(planned: PlannedAudit, context: AuditContext, full: FullData | None = None) -> AuditResult:
    started = time.perf_counter()

    def finish(result: AuditResult) -> AuditResult:
        return result.with_(audit=planned.id, duration_s=time.perf_counter() - started)

    reason = planned.audit.skip_reason(context)
    if reason:
        return finish(AuditResult.skipped(planned.id, reason))
    if full is not None and planned.id in full.errors:
        return finish(AuditResult(audit=planned.id, verdict=Verdict.ERROR, reason=f"on every row: {full.errors[planned.id]}"))
    compute, rows = rows_seen(planned, context, full)
    try:
        result = namespaced(call_with_time_limit(compute, planned.time_limit_s, f"audit-{planned.id}"), planned.id)
        result = result.with_(info={**result.info, "rows": rows})
        if not context.with_figures:
            result = result.with_(artifacts=tuple(a for a in result.artifacts if a.kind != "figure"))
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
    return finish(judge(planned, result))


def judge(planned: PlannedAudit, result: AuditResult) -> AuditResult:
    """``result`` with its checks evaluated from its own metrics and the plan's thresholds, and its verdict the worse of
    what the audit reported and what the checks say. The auditor applies it again to each result that comes back from
    the model's process: a result cannot carry a verdict its figures do not support."""
    if result.verdict in (Verdict.SKIPPED, Verdict.ERROR):
        return result
    undeclared = type(planned.audit).undeclared(result.metrics, planned.id)
    if undeclared:  # a key check-config would refuse a threshold on: the declaration is wrong, not the data
        if os.environ.get("AUDITLENS_STRICT_METRIC_KEYS") == "1":  # the test suite: every undeclared key fails loudly
            return AuditResult(audit=planned.id, verdict=Verdict.ERROR, duration_s=result.duration_s,
                               reason=f"reported metric keys it does not declare: {', '.join(undeclared[:5])}")
        result = result.with_(info={**result.info, "undeclared_metrics": ", ".join(undeclared)})
    checks = [threshold.evaluate(result.metrics, result.ranges, result.chance) for threshold in planned.thresholds]
    verdict, check_reason = verdict_from_checks(checks)
    # An audit may itself report WARN or FAIL (with its reason); checks can only make it worse.
    if result.verdict is not Verdict.PASS and result.verdict.severity > verdict.severity:
        verdict, check_reason = result.verdict, result.reason or check_reason
    return result.with_(verdict=verdict, reason=check_reason, checks=tuple(checks))


def overall_verdict(results: list[AuditResult]) -> Verdict:
    return worst([r.verdict for r in results])
