"""The history of a deployed model: one self-contained HTML page over its last audits.

Pure: records in (one per audit run: when it audited, which version, the verdict, its metrics and the checks that
judged them), HTML out. What a reviewer should see in one picture is when the model started to degrade:

- findings first, in sentences: the verdicts, the estimated headline figure from the first audit to the last beside the
  realised one where labels arrived, the first audit that crossed each threshold;
- the verdict of each audit on a time line, with the versions marked;
- estimated performance with its band over time, the realised figure once labels arrive;
- every gated metric over time with its thresholds drawn;
- the ranks of the most important features across versions;
- drift over time.

The page holds no script; its figures are PNGs inside the page.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from audits.core.thresholds import Threshold

VERDICT_COLOURS = {"PASS": "#2e7d32", "WARN": "#f9a825", "FAIL": "#c62828", "ERROR": "#6a1b9a", "SKIPPED": "#9e9e9e"}
SEVERITY_COLOURS = {"warn": "#f9a825", "fail": "#c62828"}
HEADLINES = ("accuracy", "mae")  # the estimated figure shown first, classifiers then regressors
MAX_GATED = 12  # gated metrics drawn (the rest listed)
TOP_FEATURES = 8


@dataclass(frozen=True)
class HistoryRecord:
    """One audit run as the history reads it. ``checks``: dicts as ``CheckResult.to_dict`` writes them: metric,
    severity, passed, value (the quantity checked: the metric, or its change from ``compare_to``), min, max,
    compare_to, relative."""

    run_id: str
    as_of: str  # ISO date or date-time the audit speaks for (the scheduled day), else its start
    version: str
    verdict: str
    metrics: dict[str, float]
    checks: list[dict[str, Any]] = field(default_factory=list)
    trigger: str = ""
    link: str = ""  # where the run's page is, for the table (relative to the page's viewer)


# ------------------------------------------------------------------------------------------------ what the page says


def estimated_series(records: Sequence[HistoryRecord]) -> tuple[str, str, dict[str, np.ndarray]] | None:
    """(audit id, headline, series) of the label-free estimate the records carry: estimate, low, high, realised (NaN
    where unknown) and held_out, one value per record; None when no record has one."""
    for headline in HEADLINES:
        pattern = re.compile(rf"^(.+)\.estimated\.{headline}$")
        ids = sorted({m.group(1) for r in records for key in r.metrics if (m := pattern.match(key))})
        if not ids:
            continue
        audit = ids[0]

        def series(key: str) -> np.ndarray:
            return np.array([r.metrics.get(key, math.nan) for r in records], dtype=float)

        realised = series(f"{audit}.realised.{headline}")
        labelled = series(f"performance.current.{headline}")
        realised = np.where(np.isfinite(realised), realised, labelled)
        return audit, headline, {"estimate": series(f"{audit}.estimated.{headline}"),
                                 "low": series(f"{audit}.estimated.{headline}_low"),
                                 "high": series(f"{audit}.estimated.{headline}_high"),
                                 "realised": realised, "held_out": series(f"{audit}.held_out.{headline}"),
                                 "trusted": series(f"{audit}.trusted")}
    return None


def gated_metrics(records: Sequence[HistoryRecord]) -> list[str]:
    """Every metric some record's checks judged, in the order they first appear."""
    seen: dict[str, None] = {}
    for record in records:
        for check in record.checks:
            seen.setdefault(_quantity(check), None)
    return list(seen)


def _threshold(check: dict[str, Any]) -> Threshold:
    """The threshold a recorded check applied (its metric, bounds, baseline and severity)."""
    return Threshold(metric=check["metric"], min=check.get("min"), max=check.get("max"), compare_to=check.get("compare_to"),
                     relative=bool(check.get("relative")), severity=check["severity"])


def _quantity(check: dict[str, Any]) -> str:
    return _threshold(check).quantity


def _day(value: str) -> str:
    return value[:10]


def findings(records: Sequence[HistoryRecord]) -> list[str]:
    """Plain sentences, most telling first."""
    if not records:
        return ["No audit of this model has been recorded yet."]
    out = []
    counts = {v: sum(r.verdict == v for r in records) for v in VERDICT_COLOURS}
    latest = records[-1]
    tally = ", ".join(f"{v} {n}" for v, n in counts.items() if n)
    first_bad = next((r for r in records if r.verdict in ("WARN", "FAIL", "ERROR")), None)
    sentence = f"{len(records)} audit(s) from {_day(records[0].as_of)} to {_day(latest.as_of)}: {tally}."
    sentence += f" The latest (v{latest.version}, {_day(latest.as_of)}) is {latest.verdict}."
    if first_bad is not None and latest.verdict != "PASS":
        streak = records[[r.run_id for r in records].index(first_bad.run_id):]
        if all(r.verdict != "PASS" for r in streak):
            sentence += f" No audit has passed since {_day(first_bad.as_of)}."
    out.append(sentence)
    estimated = estimated_series(records)
    if estimated is not None:
        audit, headline, s = estimated
        known = np.flatnonzero(np.isfinite(s["estimate"]))
        if len(known) >= 2:
            a, b = known[0], known[-1]
            direction = "fell" if s["estimate"][b] < s["estimate"][a] else "rose"
            worse = (direction == "fell") == (headline == "accuracy")
            text = (f"Estimated {headline} without labels {direction} from {s['estimate'][a]:.3f} ({_day(records[a].as_of)}) "
                    f"to {s['estimate'][b]:.3f} [{s['low'][b]:.3f}, {s['high'][b]:.3f}] ({_day(records[b].as_of)})")
            if np.isfinite(s["held_out"][b]):
                text += f", against {s['held_out'][b]:.3f} on the held-out rows"
            out.append(text + (": the model is probably degrading." if worse and abs(s["estimate"][b] - s["estimate"][a]) > 0.01
                               else "."))
        realised = np.flatnonzero(np.isfinite(s["realised"]) & np.isfinite(s["estimate"]))
        if len(realised):
            inside = int(np.sum((s["low"][realised] <= s["realised"][realised]) & (s["realised"][realised] <= s["high"][realised])))
            out.append(f"Labels have arrived for {len(realised)} of these audits: the realised {headline} lay within the "
                       f"estimate's band in {inside} of them (last realised: {s['realised'][realised[-1]]:.3f} on "
                       f"{_day(records[realised[-1]].as_of)}).")
        untrusted = [i for i in known if s["trusted"][i] == 0]
        if untrusted:
            out.append(f"The estimate was marked not to be trusted in {len(untrusted)} audit(s) (first on "
                       f"{_day(records[untrusted[0]].as_of)}): see that audit's performance_estimation checks.")
    for quantity in gated_metrics(records):
        for record in records:
            crossed = [c for c in record.checks if _quantity(c) == quantity and c.get("passed") is False]
            if crossed:
                check = crossed[0]
                value = check.get("value")
                shown = f"{value:.4g}" if isinstance(value, (int, float)) and value is not None else "?"
                out.append(f"{quantity} first crossed its {check['severity'].upper()} bound on {_day(record.as_of)} "
                           f"(v{record.version}): {shown}, {_bound(check)}.")
                break
        if len(out) >= 8:
            break
    return out


def _bound(check: dict[str, Any]) -> str:
    return f"must be {_threshold(check).bound}"


# ------------------------------------------------------------------------------------------------ figures


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _axis_dates(ax: Any, records: Sequence[HistoryRecord]) -> None:
    x = np.arange(len(records))
    step = max(1, len(records) // 12)
    ax.set_xticks(x[::step], [_day(r.as_of)[5:] for r in records][::step], rotation=45, ha="right", fontsize="small")
    ax.set_xlim(-0.5, len(records) - 0.5)
    for i in range(1, len(records)):
        if records[i].version != records[i - 1].version:
            ax.axvline(i - 0.5, color="0.6", lw=0.8, ls=":")


def verdict_figure(records: Sequence[HistoryRecord]) -> Figure:
    fig = Figure(figsize=(9, 1.9), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(records))
    ax.scatter(x, np.zeros(len(x)), s=180, c=[VERDICT_COLOURS.get(r.verdict, "k") for r in records], marker="s")
    for i, r in enumerate(records):
        if i == 0 or r.version != records[i - 1].version:
            ax.annotate(f"v{r.version}", (i, 0.35), ha="center", fontsize="small")
    ax.set_ylim(-0.6, 0.8)
    ax.set_yticks([])
    _axis_dates(ax, records)
    ax.set_title("Verdicts (green PASS, amber WARN, red FAIL, purple ERROR, grey SKIPPED)", fontsize="medium")
    return fig


def estimated_figure(records: Sequence[HistoryRecord], headline: str, s: dict[str, np.ndarray]) -> Figure:
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(records))
    ax.fill_between(x, s["low"], s["high"], color="C0", alpha=0.2, label="band of the estimate")
    ax.plot(x, s["estimate"], "o-", color="C0", label=f"estimated {headline} (no labels needed)")
    if np.isfinite(s["realised"]).any():
        ax.plot(x, s["realised"], "x", color="C2", ms=9, mew=2, label=f"realised {headline} (labels)")
    if np.isfinite(s["held_out"]).any():
        ax.plot(x, s["held_out"], "--", color="0.4", lw=1, label="on the held-out rows")
    untrusted = np.flatnonzero(s["trusted"] == 0)
    if len(untrusted):
        ax.scatter(untrusted, s["estimate"][untrusted], s=120, facecolors="none", edgecolors="C3",
                   label="estimate not to be trusted")
    _axis_dates(ax, records)
    ax.set_title(f"Estimated against realised {headline}", fontsize="medium")
    ax.legend(fontsize="small", loc="best")
    return fig


def gated_figure(records: Sequence[HistoryRecord], quantities: list[str]) -> Figure:
    cols = 3
    rows = math.ceil(len(quantities) / cols)
    fig = Figure(figsize=(11, 2.6 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    x = np.arange(len(records))
    for ax, quantity in zip(axes, quantities, strict=False):
        values, bounds = np.full(len(records), np.nan), {}
        for i, record in enumerate(records):
            for check in record.checks:
                if _quantity(check) != quantity:
                    continue
                if check.get("value") is not None:
                    values[i] = check["value"]
                elif not check.get("compare_to") and quantity in record.metrics:
                    values[i] = record.metrics[quantity]
                for side in ("min", "max"):
                    if check.get(side) is not None:
                        bounds[(side, check["severity"])] = check[side]
        ax.plot(x, values, "o-", color="C0", ms=4)
        for (side, severity), value in bounds.items():
            ax.axhline(value, color=SEVERITY_COLOURS[severity], ls="--", lw=1)
        ax.set_title(quantity if len(quantity) <= 48 else quantity[:45] + "…", fontsize="small")
        _axis_dates(ax, records)
    for ax in axes[len(quantities):]:
        ax.set_visible(False)
    return fig


def feature_ranks(records: Sequence[HistoryRecord]) -> tuple[list[str], list[str], np.ndarray] | None:
    """(versions, features, ranks[feature, version]) from the last audit of each version that explains the model:
    SHAP's mean |value| per feature, else permutation importance; None without either."""
    for pattern in (re.compile(r"^shap\.importance\.(.+)$"), re.compile(r"^importance\.permutation\.(.+)$")):
        latest: dict[str, dict[str, float]] = {}
        for record in records:
            values = {m.group(1): v for key, v in record.metrics.items() if (m := pattern.match(key)) and math.isfinite(v)}
            if values:
                latest[record.version] = values
        if latest:
            versions = sorted(latest, key=lambda v: int(v) if v.isdigit() else v)
            ranks_by = {v: {f: i + 1 for i, f in enumerate(sorted(vals, key=lambda f, vals=vals: -vals[f]))} for v, vals in latest.items()}
            top = sorted({f for v in versions for f, r in ranks_by[v].items() if r <= TOP_FEATURES},
                         key=lambda f: (min(ranks_by[v].get(f, 99) for v in versions),
                                        sum(ranks_by[v].get(f, 99) for v in versions), f))
            table = np.array([[ranks_by[v].get(f, np.nan) for v in versions] for f in top], dtype=float)
            return versions, top, table
    return None


def ranks_figure(versions: list[str], features: list[str], ranks: np.ndarray) -> Figure:
    fig = Figure(figsize=(6 + 0.6 * len(versions), 0.35 * len(features) + 1.6), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(versions))
    for j, feature in enumerate(features):
        ax.plot(x, ranks[j], "o-", label=feature)
        last = np.flatnonzero(np.isfinite(ranks[j]))
        if len(last):
            ax.annotate(feature, (x[last[-1]] + 0.05, ranks[j][last[-1]]), fontsize="small", va="center")
    ax.set_xticks(x, [f"v{v}" for v in versions])
    ax.invert_yaxis()
    ax.set_ylabel("rank (1 = most important)")
    ax.set_xlim(-0.3, len(versions) - 0.3 + 1.2)
    ax.set_title("Most important features, by version", fontsize="medium")
    return fig


def drift_series(records: Sequence[HistoryRecord]) -> dict[str, np.ndarray]:
    out = {}
    for key in ("drift.drifted_share", "drift.domain_auc"):
        values = np.array([r.metrics.get(key, math.nan) for r in records], dtype=float)
        if np.isfinite(values).any():
            out[key] = values
    return out


def drift_figure(records: Sequence[HistoryRecord], series: dict[str, np.ndarray]) -> Figure:
    fig = Figure(figsize=(9, 3), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(records))
    for key, values in series.items():
        ax.plot(x, values, "o-", label={"drift.drifted_share": "share of features drifted",
                                        "drift.domain_auc": "domain classifier AUC (0.5: no shift)"}.get(key, key))
    _axis_dates(ax, records)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize="small")
    ax.set_title("Drift over time", fontsize="medium")
    return fig


# ------------------------------------------------------------------------------------------------ the page


STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1100px;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}ul.findings li{margin:.3em 0}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left}
img{max-width:100%}.v{font-weight:600}"""


def render_history(title: str, records: Sequence[HistoryRecord], *, with_figures: bool = True) -> str:
    """The page: ``records`` in the order they audited (oldest first)."""
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title><style>{STYLE}</style></head><body>",
             f"<h1>{esc(title)}</h1>", "<h2>Findings</h2><ul class='findings'>",
             *[f"<li>{esc(sentence)}</li>" for sentence in findings(records)], "</ul>"]

    def figure(heading: str, fig: Figure, alt: str) -> None:
        parts.append(f"<h2>{esc(heading)}</h2>")
        if with_figures:
            parts.append(f"<img alt='{esc(alt)}' src='data:image/png;base64,{_png(fig)}'>")

    if records:
        figure("Verdicts", verdict_figure(records), "verdict of each audit over time")
        estimated = estimated_series(records)
        if estimated is not None:
            _, headline, s = estimated
            figure(f"Estimated and realised {headline}", estimated_figure(records, headline, s),
                   f"estimated {headline} with its band over time, realised where labels arrived")
        quantities = gated_metrics(records)
        if quantities:
            figure("Gated metrics and their thresholds", gated_figure(records, quantities[:MAX_GATED]),
                   "every gated metric over time with its thresholds")
            if len(quantities) > MAX_GATED:
                parts.append(f"<p>Also gated, not drawn: {esc(', '.join(quantities[MAX_GATED:]))}.</p>")
        ranks = feature_ranks(records)
        if ranks is not None:
            figure("Feature ranks across versions", ranks_figure(*ranks), "ranks of the most important features by version")
        drift = drift_series(records)
        if drift:
            figure("Drift", drift_figure(records, drift), "drift over time")
    parts.append("<h2>Audits</h2><table><tr><th>date</th><th>version</th><th>trigger</th><th>verdict</th>"
                 "<th>checks crossed</th><th>run</th></tr>")
    for record in reversed(records):
        crossed = [f"{_quantity(c)} ({c['severity']})" for c in record.checks if c.get("passed") is False]
        run = f"<a href='{esc(record.link)}'>{esc(record.run_id[:12])}</a>" if record.link else esc(record.run_id[:12])
        parts.append(f"<tr><td>{esc(record.as_of[:16])}</td><td>v{esc(record.version)}</td><td>{esc(record.trigger)}</td>"
                     f"<td class='v' style='color:{VERDICT_COLOURS.get(record.verdict, '#000')}'>{esc(record.verdict)}</td>"
                     f"<td>{esc('; '.join(crossed)) or '—'}</td><td>{run}</td></tr>")
    parts.append("</table></body></html>")
    return "\n".join(parts)
