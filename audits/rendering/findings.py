"""What drove the verdict, in plain sentences, and which of the three questions it answers badly.

A reviewer opening an audit wants first what failed, by how much, where, and what to do about it; then whether it is
the model's behaviour (how well it predicts, what it relies on), its certainty (calibration, coverage, unfamiliar
rows) or the data (quality, drift) that is answered badly. A FAIL for drift alone, with accuracy and calibration
fine, must not read as a broken model.

Pure: results in, text out. The text is not escaped here (it quotes the data: feature names, segment values,
reasons); the report and the run description escape it for their own markup.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from audits.core.result import AuditResult, CheckResult, Verdict

QUESTIONS = ("behaviour", "certainty", "data")
OTHER = "other"
LABELS = {"behaviour": "the model's behaviour", "certainty": "its certainty", "data": "the data", OTHER: "other checks"}
# Audits whose modules do not declare their question (being edited elsewhere, or not registered yet) have it here.
SHOWN = 5  # findings shown; the rest are counted
BAD = (Verdict.FAIL, Verdict.ERROR, Verdict.WARN)


@dataclass(frozen=True)
class Finding:
    """One audit that failed, warned or could not run: ``sentence`` says what, by how much, where and what to do;
    ``short`` is its few words in the verdict line ("drift in 3 of 8 features")."""

    audit: str
    question: str
    verdict: Verdict
    short: str
    sentence: str


# --- which question an audit answers ---------------------------------------------------------------

def question_of(audit_class: type) -> str:
    """The question an audit class answers: its own ``question``, else "other"."""
    declared = getattr(audit_class, "question", None)
    return declared if declared in QUESTIONS else OTHER


def question_of_name(name: str) -> str:
    """The question of the audit registered as ``name``; "other" for a name no audit is registered under."""
    from audits.core.registry import UnknownAuditError, get_audit_class

    try:
        return question_of(get_audit_class(name))
    except (UnknownAuditError, ImportError, TypeError):
        return OTHER


def plan_questions(plan: Iterable[Any]) -> dict[str, str]:
    """{audit id: question} for a plan's PlannedAudits (an id may differ from its audit's name)."""
    return {planned.id: question_of(type(planned.audit)) for planned in plan}


def plan_names(plan: Iterable[Any]) -> dict[str, str]:
    """{audit id: registered audit name} for a plan's PlannedAudits."""
    return {planned.id: type(planned.audit).name for planned in plan}


def _questions(results: list[AuditResult], questions: Mapping[str, str] | None) -> dict[str, str]:
    given = dict(questions or {})
    return {r.audit: given[r.audit] if r.audit in given else question_of_name(r.audit) for r in results}


# --- numbers and names ------------------------------------------------------------------------------

def number(value: float | None) -> str:
    """A figure for a sentence: a count as an integer, anything else to three significant digits."""
    if value is None or not math.isfinite(value):
        return "undefined"
    if float(value).is_integer() and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.3g}"


def _joined(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


_NAMES = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "f1": "F1", "roc_auc": "ROC-AUC",
          "log_loss": "log loss", "rmse": "RMSE", "mae": "MAE", "r2": "R\u00b2", "ece": "calibration error (ECE)",
          "ece_excess": "calibration error beyond chance", "brier": "Brier score", "mce": "largest calibration error",
          "coverage": "coverage", "coverage_shortfall_z": "coverage shortfall (z)", "max_excess_z": "excess of unfamiliar rows (z)",
          "excess_z": "excess of unfamiliar rows (z)", "epistemic_ratio": "epistemic uncertainty against the reference data's",
          "domain_auc": "AUC of a classifier telling current rows from reference rows",
          "drifted_features": "drifted features", "fidelity": "surrogate fidelity", "fidelity_mean": "mean surrogate fidelity",
          "additivity_relative_error": "SHAP additivity error", "primary": "primary metric"}  # fmt: skip
_SIDES = {"current": "on the current data", "reference": "on the reference data"}
_OWNERS = {"challenger": "the challenger's", "champion": "the champion's"}


def metric_name(key: str, audit: str) -> str:
    """A metric key in words: 'performance.current.accuracy' -> 'accuracy on the current data'."""
    parts = key.removeprefix(f"{audit}.").split(".")
    side = ""
    if len(parts) > 1 and parts[0] in _SIDES:
        side, parts = f" {_SIDES[parts[0]]}", parts[1:]
    elif len(parts) > 1 and parts[0] in _OWNERS:
        return f"{_OWNERS[parts[0]]} " + " ".join(_NAMES.get(p, p.replace("_", " ")) for p in parts[1:])
    elif len(parts) > 1 and parts[0] == "delta":
        return f"change in {_NAMES.get(parts[-1], parts[-1].replace('_', ' '))} from the reference to the current data"
    last = _NAMES.get(parts[-1], parts[-1].replace("_", " "))
    return " ".join([*(p.replace("_", " ") for p in parts[:-1]), last]) + side


def _miss(check: CheckResult) -> str:
    """How far a violated check's value lies beyond its bound: '0.04 above the maximum of 0.1'."""
    value = check.value if check.value is not None else float("nan")
    if check.high is not None and value > check.high:
        return f"{number(value - check.high)} above the maximum of {number(check.high)}"
    if check.low is not None and value < check.low:
        return f"{number(check.low - value)} below the minimum of {number(check.low)}"
    return f"beyond {check.rule}"


def check_phrase(check: CheckResult, result: AuditResult) -> str:
    """A violated check in words: what it measured, its value, and how far beyond its bound."""
    name = metric_name(check.metric, result.audit)
    if check.compare_to is None:
        quantity = name
    else:
        baseline = metric_name(check.compare_to, result.audit)
        quantity = (f"the relative change from {baseline} to {name}" if check.relative
                    else f"the change from {baseline} to {name}")  # fmt: skip
    phrase = f"{quantity} is {number(check.value)}, {_miss(check)}"
    if check.compare_to is None and ".current." in f".{check.metric}":  # the same figure on the reference, for scale
        reference = result.metrics.get(check.metric.replace(".current.", ".reference."))
        if reference is not None and math.isfinite(reference):
            phrase += f" ({number(reference)} on the reference data)"
    return phrase


def violated(result: AuditResult) -> list[CheckResult]:
    """The checks that failed or warned, the failing ones first; one per metric (a metric with a warn and a fail bound,
    both crossed, is told once, at its failing bound)."""
    out: dict[str, CheckResult] = {}
    for check in sorted((c for c in result.checks if c.passed is False), key=lambda c: c.severity != "fail"):
        out.setdefault(check.metric, check)
    return list(out.values())


def _table(result: AuditResult, name: str) -> pd.DataFrame | None:
    for artifact in result.artifacts:
        if artifact.kind == "table" and artifact.name == f"{name}.json" and isinstance(artifact.payload, pd.DataFrame):
            return artifact.payload
    return None


def _title(result: AuditResult) -> str:
    return result.audit.replace("_", " ").capitalize()


# --- per audit: what went wrong, where, and what to do --------------------------------------------

@dataclass(frozen=True)
class _Told:
    body: str  # what failed and by how much, where
    short: str  # a few words for the verdict line
    hint: str  # what to do about it


def _generic(result: AuditResult, hint: str) -> _Told:
    checks = violated(result)
    if not checks:  # the audit judged itself
        reason = result.reason if len(result.reason) <= 200 else result.reason[:199] + "\u2026"
        return _Told(reason or result.verdict.value.lower(), result.audit.replace("_", " "), hint)
    first = checks[0]
    short = f"{metric_name(first.metric, result.audit)} {number(first.value)}"
    return _Told(_joined([check_phrase(c, result) for c in checks]), short, hint)


def _drifted_features(result: AuditResult) -> tuple[list[tuple[str, str]], int]:
    """(feature, its effect in words) for each drifted feature, largest effect first; and how many were compared."""
    table = _table(result, "features")
    if table is not None and {"feature", "drifted", "effect"} <= set(table.columns):
        drifted = table[table["drifted"].astype(bool)].sort_values("effect", ascending=False, kind="stable")
        described = []
        for row in drifted.itertuples():
            measure = str(getattr(row, "effect_measure", ""))
            if measure == "psi" or getattr(row, "type", "") == "categorical":
                described.append((row.feature, f"{row.feature} PSI {row.effect:.2g}"))
            else:
                unit = "IQR" if measure.endswith("iqr") else "sd"
                described.append((row.feature, f"{row.feature} moved {row.effect:.2g} {unit}"))
        return described, len(table)
    prefix = f"{result.audit}.feature."
    flags = {k[len(prefix):-len(".drifted")]: v for k, v in result.metrics.items()
             if k.startswith(prefix) and k.endswith(".drifted")}
    effect = lambda f: result.metrics.get(f"{prefix}{f}.effect", 0.0)  # noqa: E731
    names = sorted((f for f, v in flags.items() if v), key=effect, reverse=True)
    return [(f, f"{f} effect {effect(f):.2g}") for f in names], len(flags)


def _drift(result: AuditResult) -> _Told:
    described, compared = _drifted_features(result)
    names = [name for name, _ in described[:3]]
    parts = []
    if described:
        more = f" and {len(described) - 3} more" if len(described) > 3 else ""
        parts.append(f"{len(described)} of {compared} features drifted ({_joined([d for _, d in described[:3]])}{more})")
    for check in violated(result):
        if check.metric.endswith(".domain_auc"):
            parts.append(f"a classifier tells current rows from reference rows apart with AUC {number(check.value)} "
                         f"({_miss(check)}, where 0.5 means no difference)")  # fmt: skip
        elif not check.metric.endswith(".drifted_features"):
            parts.append(check_phrase(check, result))
    predictions = result.metrics.get(f"{result.audit}.prediction.drifted")
    if predictions is not None:
        parts.append("the model's predictions drifted too" if predictions else "the model's predictions did not drift")
    auc = result.metrics.get(f"{result.audit}.domain_auc")
    short = f"drift in {len(described)} of {compared} features" if described else f"drift (AUC {number(auc)})"
    feeding = f" feeding {_joined(names)}" if names else ""
    hint = f"check the data pipeline{feeding}, and if the shift is real, retrain on recent data"
    return _Told(_joined(parts) or result.reason, short, hint)


def _pretty_expectation(kind: str) -> str:
    return re.sub(r"^expect_(column_)?", "", kind).replace("_", " ")


def _data_quality(result: AuditResult) -> _Told:
    m = result.metrics
    counts = []
    for suite, words in (("user", "your suite"), ("baseline", "the baseline inferred from the reference data")):
        failed, evaluated = m.get(f"{result.audit}.{suite}.failed"), m.get(f"{result.audit}.{suite}.evaluated")
        if failed:
            counts.append(f"{number(failed)} of {number(evaluated)} expectations of {words} failed")
    table = _table(result, "expectations")
    where, columns = "", []
    if table is not None and {"success", "expectation", "column"} <= set(table.columns):
        failing = table[~table["success"].astype(bool)]
        described = []
        for row in failing.itertuples():
            column = str(row.column or "")
            if column and column not in columns:
                columns.append(column)
            percent = getattr(row, "unexpected_percent", None)
            share = f": {number(float(percent))}% of rows unexpected" if percent is not None and pd.notna(percent) else ""
            described.append(f"{column or 'the table'} ('{_pretty_expectation(str(row.expectation))}'{share})")
        if described:
            more = f" and {len(described) - 3} more" if len(described) > 3 else ""
            where = f", on {_joined(described[:3])}{more}"
    failed = sum(m.get(f"{result.audit}.{s}.failed", 0.0) for s in ("user", "baseline"))
    short = f"{number(failed)} failed expectation{'s' if failed != 1 else ''}{f' on {_joined(columns[:3])}' if columns else ''}"
    of = f" of {_joined(columns[:3])}" if columns else ""
    body = (_joined(counts) or _generic(result, "").body) + where
    return _Told(body, short, f"fix the source{of} upstream, or update the expectation if the change is legitimate")


def _segments(result: AuditResult) -> _Told:
    told = _generic(result, "")
    gaps, worst = _table(result, "gaps"), ""
    checks = violated(result)
    if checks and gaps is not None and {"column", "metric", "gap", "worst_group"} <= set(gaps.columns):
        metric = checks[0].metric.rsplit(".", 1)[-1]
        rows = gaps[(gaps["metric"] == metric) & gaps["gap"].notna()].sort_values("gap", ascending=False, kind="stable")
        if len(rows):
            worst = f"{rows.iloc[0]['column']} = {rows.iloc[0]['worst_group']}"
    where = f", worst in {worst}" if worst else ""
    return _Told(told.body + where, told.short + (f" ({worst})" if worst else ""),
                 f"look at the rows of {worst or 'the worst segment'}: collect more of them or reweight them before "
                 "retraining, and decide whether the gap is acceptable for the people in it")


_SEGMENT_KEY = re.compile(r"\.segment\.([^.]+)\.(.+)\.[^.]+$")


def _conformal(result: AuditResult) -> _Told:
    told = _generic(result, "")
    segments = [m.groups() for c in violated(result) if (m := _SEGMENT_KEY.search(c.metric))]
    where = f", in {_joined([f'{c} = {v}' for c, v in segments[:3]])}" if segments else ""
    return _Told(told.body + where, told.short,
                 "recalibrate the conformal threshold on recent labelled data, since until then its sets or intervals "
                 "cover less than they promise")


def _performance_estimation(result: AuditResult) -> _Told:
    m, audit = result.metrics, result.audit
    head = "accuracy" if f"{audit}.estimated.accuracy" in m else "mae"
    named = "accuracy" if head == "accuracy" else "MAE"
    est, low, high, held = (m.get(f"{audit}.{key}") for key in
                            (f"estimated.{head}", f"estimated.{head}_low", f"estimated.{head}_high", f"held_out.{head}"))
    trusted = m.get(f"{audit}.trusted") != 0
    if est is None:
        return _generic(result, HINTS["performance"])
    parts = [f"without labels, {named} is estimated at {number(est)} [{number(low)}, {number(high)}], against "
             f"{number(held)} on the held-out rows"]
    degradation = m.get(f"{audit}.degradation")
    if degradation is not None and any(c.metric.endswith(".degradation") for c in violated(result)):
        parts.append(f"even the band's better end is {number(100 * degradation)} % worse")
    if not trusted:
        parts.append("the estimate is not to be trusted: " + str(result.info.get("trusted", "")).removeprefix("NO: "))
    short = f"estimated {named} {number(est)} vs {number(held)} held out" + ("" if trusted else ", not to be trusted")
    hint = ("confirm with labels as soon as they arrive, and look for the shift behind it (drift, slices)" if trusted else
            "give labelled rows the model did not train on (data.holdout) and read the estimate as a rough guide until then")
    return _Told(_joined(parts), short, hint)


def _slices(result: AuditResult) -> _Told:
    top = result.info.get("slice_1")
    if not top:
        return _generic(result, "read the slices table in its section")
    found = int(result.metrics.get(f"{result.audit}.found", 1))
    more = f" ({found} slices pass the guard)" if found > 1 else ""
    return _Told(f"the weakest slice found by search is {top}{more}", str(top).split(":")[0],
                 "look at that group's data and labels: collect more of it, or give it a model or a threshold of its own")


HINTS = {
    "performance": "see where the errors concentrate (segments) and whether the data drifted, and if the drop is real, "
                   "retrain on recent labelled data or keep the previous version",
    "champion_challenger": "keep the champion until the challenger at least matches it",
    "calibration": "recalibrate the probabilities (its section shows what temperature or isotonic scaling would give) "
                   "before anyone reads them as risks",
    "ood": "look at the most unfamiliar rows in its section: send such inputs to a person, or retrain with data like them",
    "autoencoder_ood": "look at the most unfamiliar rows in its section: send such inputs to a person, or retrain with data "
                       "like them",
    "mc_dropout": "look at the most uncertain rows in its section: send such inputs to a person, or retrain with data like them",
    "disagreement": "the model is unsure about more rows than on its reference data: collect labelled data like them, or "
                    "treat those predictions with care",
    "shap": "the SHAP values do not add up to the model's outputs: check the explainer's settings before reading them",
    "sanity_checks": "the explanations barely change when the model is randomised, so they describe the data more than the "
                     "model: do not use them to justify decisions",
    "network_sanity": "the explanations barely change when the network is randomised: do not use them to justify decisions",
    "projections": "the maps distort neighbourhoods: read them as sketches, not as evidence",
    "embedding_projections": "the maps distort neighbourhoods: read them as sketches, not as evidence",
}
QUESTION_HINTS = {
    "behaviour": "treat the model's explanations with caution: do not use them to justify individual decisions until "
                 "this is resolved",
    "certainty": "treat the model's confidence with care until this is resolved",
    "data": "check the data pipeline before trusting this audit's other figures",
    OTHER: "read its section in the report",
}
_DESCRIBERS = {"drift": _drift, "data_quality": _data_quality, "segments": _segments, "conformal": _conformal,
               "performance_estimation": _performance_estimation, "slices": _slices}


def _told(result: AuditResult, name: str, question: str) -> _Told:
    if name in _DESCRIBERS:
        return _DESCRIBERS[name](result)
    return _generic(result, HINTS.get(name, QUESTION_HINTS[question]))


def _error(result: AuditResult) -> _Told:
    reason = result.reason if len(result.reason) <= 160 else result.reason[:159] + "\u2026"
    if "was not produced" in result.reason:
        hint = "check the metric's name in the plan's thresholds (auditlens check-config names the nearest)"
    else:
        hint = "its section has the message, and the other audits' verdicts stand without it"
    return _Told(reason, f"{result.audit.replace('_', ' ')} could not run", hint)


def finding(result: AuditResult, question: str, name: str | None = None) -> Finding | None:
    """The finding of one result (None when it passed or was skipped); ``name``: the registered audit it ran, where
    it differs from its id."""
    if result.verdict not in BAD:
        return None
    if result.verdict is Verdict.ERROR:
        told = _error(result)
        sentence = f"{_title(result)} could not run ({told.body}); {told.hint}."
    else:
        told = _told(result, name or result.audit, question)
        verb = "failed" if result.verdict is Verdict.FAIL else "warns"
        sentence = f"{_title(result)} {verb}: {told.body}; {told.hint}."
    return Finding(result.audit, question, result.verdict, told.short, sentence)


def findings(results: list[AuditResult], questions: Mapping[str, str] | None = None,
             names: Mapping[str, str] | None = None) -> list[Finding]:
    """Every finding, most severe first (FAIL, then ERROR, then WARN; within one, in the plan's order).
    ``questions``: {audit id: question} (default: by the registered audit of that name); ``names``: {audit id:
    registered audit} where they differ."""
    asked = _questions(results, questions)
    found = [f for r in results if (f := finding(r, asked[r.audit], (names or {}).get(r.audit))) is not None]
    return sorted(found, key=lambda f: -f.verdict.severity)


# --- the verdict, per question ---------------------------------------------------------------------

def _figure(results: list[AuditResult], asked: dict[str, str], question: str) -> str:
    """A reassuring figure for a question answered well: the accuracy (or R²) beside the reference's, the ECE."""
    words = []
    mine = [r for r in results if asked[r.audit] == question and r.verdict is Verdict.PASS]
    if question == "behaviour":
        for result in mine:
            for metric in ("accuracy", "r2"):
                current = result.metrics.get(f"{result.audit}.current.{metric}")
                if current is not None and math.isfinite(current):
                    reference = result.metrics.get(f"{result.audit}.reference.{metric}")
                    known = reference is not None and math.isfinite(reference)
                    against = f" vs {number(reference)} on the reference data" if known else ""
                    words.append(f"{_NAMES[metric]} {number(current)}{against}")
                    break
            if words:
                break
        drift = [r for r in results if f"{r.audit}.prediction.drifted" in r.metrics]
        if drift and not any(r.metrics[f"{r.audit}.prediction.drifted"] for r in drift):
            words.append("predictions did not drift")
    elif question == "certainty":
        for result in mine:
            ece = result.metrics.get(f"{result.audit}.current.ece")
            if ece is not None and math.isfinite(ece):
                words.append(f"ECE {number(ece)}")
                break
    return f" ({', '.join(words)})" if words else ""


def question_status(results: list[AuditResult], found: list[Finding], asked: dict[str, str], question: str) -> str | None:
    """How one question is answered, in a few words; None for "other" when no audit answers it."""
    mine = [r for r in results if asked[r.audit] == question]
    if not mine:
        return None if question == OTHER else "not checked"
    bad = [f for f in found if f.question == question]
    if bad:
        worst = max(bad, key=lambda f: f.verdict.severity).verdict
        return f"{worst.value} ({', '.join(f.short for f in bad)})"
    if all(r.verdict is Verdict.SKIPPED for r in mine):
        return "not answered (every audit skipped)"
    return "fine" + _figure(results, asked, question)


def question_statuses(results: list[AuditResult], questions: Mapping[str, str] | None = None,
                      names: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """(question in words, how it is answered) for each question, those answered worst first, the others in the order
    behaviour, certainty, data, other."""
    asked = _questions(results, questions)
    found = findings(results, asked, names)
    statuses = {q: s for q in (*QUESTIONS, OTHER) if (s := question_status(results, found, asked, q)) is not None}
    worst = {q: max((f.verdict.severity for f in found if f.question == q), default=0) for q in statuses}
    return [(LABELS[q], statuses[q]) for q in sorted(statuses, key=lambda q: -worst[q])]  # sorted() is stable


def verdict_by_question(verdict: Verdict, results: list[AuditResult], questions: Mapping[str, str] | None = None,
                        names: Mapping[str, str] | None = None) -> str:
    """One line: the verdict, then each question, those answered badly first:
    'FAIL — the data: FAIL (drift in 3 of 8 features); the model's behaviour: fine (accuracy 0.94 vs 0.95 on the
    reference data); its certainty: fine'."""
    return f"{verdict.value} \u2014 " + "; ".join(f"{q}: {s}" for q, s in question_statuses(results, questions, names))


def shown_findings(found: list[Finding], limit: int = SHOWN) -> tuple[list[Finding], int]:
    """The findings shown, and how many more there are."""
    return found[:limit], max(0, len(found) - limit)
