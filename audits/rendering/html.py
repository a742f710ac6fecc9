"""One self-contained HTML report per audit: verdicts, checks, key metrics, figures embedded.

No external CSS, scripts or fonts: the MLflow artifact viewer shows HTML in a sandboxed iframe
from a blob URL, where relative links do not resolve and a reviewer may be offline.
"""

from __future__ import annotations

import base64
import hashlib
import html
import html as html_lib
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd
from jinja2 import Environment

from audits.core.result import AuditResult, Verdict
from audits.methods.expectations import _compact, _error
from audits.methods.text import indexed
from audits.rendering.figures import TITLES, Colouring, _categorical_values, _categories, _colour_range
from audits.rendering.findings import findings, question_statuses, shown_findings

COLOURS = {"PASS": "#1a7f37", "WARN": "#9a6700", "FAIL": "#cf222e", "ERROR": "#8250df", "SKIPPED": "#6e7781"}
MAX_TABLE_ROWS = 25
MAX_METRICS = 40
FOLD_ROWS = 10  # a longer table is folded (<details>, closed) under a line saying what it holds and how many rows

# Shared by every page an audit writes (the data quality audit's validation page too).
STYLE = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#1f2328;max-width:1200px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
h3{font-size:14px;margin:16px 0 6px} .muted{color:#656d76;font-size:13px}
.badge{display:inline-block;padding:2px 10px;border-radius:12px;color:#fff;font-weight:600;font-size:13px}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0 12px} th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa} td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #d0d7de;margin:4px 0} .scroll{overflow-x:auto}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px;font-size:13px} dt{color:#656d76}
td.code{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:11.5px;white-space:pre-wrap;word-break:break-word}
summary{cursor:pointer;font-weight:600;font-size:14px;margin:14px 0 6px} .verdict-line{font-size:15px;margin:10px 0 4px}
ol.findings{margin:4px 0 8px;padding-left:22px;font-size:14px;line-height:1.45} ol.findings li{margin:3px 0}
"""

# The report's one script. MLflow shows artifacts in a sandboxed frame from a blob URL, where #anchors do not
# navigate; the page's policy lets this script run, and no other, by the hash of this exact text.
_NAV_SCRIPT = """
/* MLflow shows artifacts in a sandboxed frame from a blob URL, where #anchors do not navigate. */
document.querySelectorAll('a[href^="#"]').forEach(function (a) {
  a.addEventListener('click', function (e) {
    var target = document.getElementById(a.getAttribute('href').slice(1));
    if (target) { e.preventDefault(); target.scrollIntoView(); }
  });
});
"""

_TEMPLATE = """<!doctype html>
<html lang="en"><head>{{ csp|safe }}<meta charset="utf-8"><title>Audit: {{ title }}</title>
<style>""" + STYLE + """</style></head><body>
<h1>Audit of {{ title }} <span class="badge" style="background:{{ colours[verdict] }}">{{ verdict }}</span></h1>
<div class="muted">{{ subtitle }}</div>
<p class="verdict-line" id="verdict-by-question"><strong>{{ verdict }}</strong> \u2014 {% for q, s in statuses %}<strong>{{ q }}</strong>: {{ s }}{{ "; " if not loop.last }}{% endfor %}</p>
<h2 id="findings">Findings</h2>
{% if shown_findings %}<ol class="findings">{% for f in shown_findings %}<li><span class="badge" style="background:{{ colours[f.verdict.value] }}">{{ f.verdict.value }}</span> {{ f.sentence }}</li>{% endfor %}</ol>
{% if more_findings %}<div class="muted">{{ more_findings }} more finding{{ "s" if more_findings > 1 else "" }} in the verdicts below.</div>{% endif %}
{% else %}<p>No check failed or warned{% if skipped %}; {{ skipped }} audit{{ "s" if skipped > 1 else "" }} could not tell or did not apply (see the verdicts){% endif %}.</p>{% endif %}
<h2>Verdicts</h2>
<table><tr><th>audit</th><th>verdict</th><th>reason</th><th>time (s)</th></tr>
{% for r in results %}<tr><td><a href="#{{ r.audit }}">{{ r.audit }}</a></td>
<td><span class="badge" style="background:{{ colours[r.verdict.value] }}">{{ r.verdict.value }}</span></td>
<td>{{ r.reason }}</td><td class="num">{{ "%.2f"|format(r.duration_s) }}</td></tr>{% endfor %}
</table>
<div class="muted">Times are each audit's wall time; independent audits run concurrently, so they overlap and do not add up.</div>
<h2>Provenance</h2><dl>{% for k, v in provenance %}<dt>{{ k }}</dt><dd>{{ v }}</dd>{% endfor %}</dl>
{% for r in results %}
<h2 id="{{ r.audit }}">{{ r.audit }} <span class="badge" style="background:{{ colours[r.verdict.value] }}">{{ r.verdict.value }}</span></h2>
<div class="muted">{{ r.reason }}</div>
{% if r.info %}<dl>{% for k, v in r.info.items() if k != "traceback" %}<dt>{{ k }}</dt><dd>{{ v }}</dd>{% endfor %}</dl>{% endif %}
{% if r.info.traceback %}<details><summary>traceback</summary><pre>{{ r.info.traceback }}</pre></details>{% endif %}
{% if r.checks %}{% set folded = r.checks|length > fold_rows %}
{% if folded %}<details><summary>Checks: {{ r.checks|length }} thresholds, {{ r.checks|selectattr("passed", "false")|list|length }} violated</summary>{% else %}<h3>Checks</h3>{% endif %}
<table><tr><th>rule</th><th>severity</th><th>value</th><th>outcome</th></tr>
{% for c in r.checks %}<tr><td>{{ c.rule }}</td><td>{{ c.severity }}</td><td class="num">{{ fmt(c.value) }}</td>
<td>{{ "pass" if c.passed else ("not evaluated: " + c.message if c.passed is none else "violated") }}</td></tr>{% endfor %}</table>{% if folded %}</details>{% endif %}{% endif %}
{% if r.metrics %}{% set listed = metrics(r) %}{% set folded = listed|length > fold_rows %}
{% if folded %}<details><summary>Metrics: {{ listed|length }}{% if r.metrics|length > max_metrics %} of {{ r.metrics|length }}{% endif %} values</summary>{% else %}<h3>Metrics</h3>{% endif %}
<table><tr><th>metric</th><th>value</th></tr>
{% for k, v in listed %}<tr><td>{{ k }}</td><td class="num">{{ fmt(v) }}</td></tr>{% endfor %}</table>
{% if r.metrics|length > max_metrics %}<div class="muted">{{ r.metrics|length - max_metrics }} more metrics in the MLflow run.</div>{% endif %}{% if folded %}</details>{% endif %}{% endif %}
{% for a in r.artifacts %}
{% if a.kind == "figure" %}<h3>{{ a.title or a.name }}</h3><img alt="{{ a.name }}" src="data:image/png;base64,{{ b64(a.content) }}">
{% elif a.kind == "table" %}{% set rows = a.content|length %}{% set folded = rows > fold_rows %}
{% if folded %}<details><summary>{{ a.title or a.name }}: {{ rows }} rows{% if rows > max_rows %} (the first {{ max_rows }} shown){% endif %}</summary>{% else %}<h3>{{ a.title or a.name }}</h3>{% endif %}
<div class="scroll">{{ table(a.content) | safe }}</div>{% if folded %}</details>{% endif %}
<div class="muted">{{ rows }} rows; full table: {{ r.audit }}/{{ a.name }}</div>
{% elif a.kind == "fragment" %}<h3>{{ a.title or a.name }}</h3><div class="fragment">{{ a.content | safe }}</div>
{% elif a.kind == "html" %}<div class="muted">{{ a.title or a.name }}: open the artifact {{ r.audit }}/{{ a.name }}</div>
{% else %}<div class="muted">{{ a.title or a.name }}: see artifact {{ r.audit }}/{{ a.name }}</div>{% endif %}
{% endfor %}{% endfor %}
<script>{{ nav_script|safe }}</script>
</body></html>
"""


# Every page we write opens with this policy: nothing is fetched from anywhere (images are embedded as data: URLs,
# styles are inline), no frames, forms, plugins or <base>; a script runs only if it is one of the page's own,
# named by the SHA-256 of its exact text (never 'unsafe-inline'). Markup that got in from the data could neither
# run nor load anything. (frame-ancestors, report-uri and sandbox are ignored in a <meta> policy: left out.)
def content_security_policy(*scripts: str) -> str:
    """The Content-Security-Policy of every page we write; ``scripts``: the exact text of each of its inline scripts."""
    digests = (base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii") for script in scripts)
    allowed = " ".join(f"'sha256-{digest}'" for digest in digests) or "'none'"
    return "; ".join(("default-src 'none'", f"script-src {allowed}", "img-src data:", "style-src 'unsafe-inline'",
                      "base-uri 'none'", "form-action 'none'"))  # fmt: skip


def csp_meta(*scripts: str) -> str:
    """The policy as a <meta> element: the first child of a page's <head>, before anything it governs."""
    return f'<meta http-equiv="Content-Security-Policy" content="{html.escape(content_security_policy(*scripts), quote=False)}">'


def fmt(value: Any) -> str:
    """A value as short text (not escaped: the template, or the caller, escapes it once)."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def page(title: str, body: str) -> str:
    """A self-contained page: ``title`` is text (escaped here), ``body`` is HTML its caller has escaped."""
    return (f'<!doctype html>\n<html lang="en"><head>{csp_meta()}<meta charset="utf-8"><title>{html.escape(title)}</title>\n'
            f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n")


def badge(verdict: str, text: str | None = None) -> str:
    return f'<span class="badge" style="background:{COLOURS[verdict]}">{html.escape(verdict if text is None else text)}</span>'


# Inside <script>, the HTML parser ends the element at the first "</script" and treats "<!--" specially, whatever
# JavaScript thinks of the text; U+2028/9 end a line in JavaScript before ES2019. Their \u escapes mean the same
# characters to JSON.parse and to JavaScript, so the data arrive intact and the markup never sees them.
_SCRIPT_UNSAFE = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def script_json(data: Any) -> str:
    """``data`` as a JavaScript literal that is safe inside an HTML ``<script>`` element (no NaN: JSON has none)."""
    return json.dumps(data, separators=(",", ":"), allow_nan=False).translate(_SCRIPT_UNSAFE)


def _table(frame: pd.DataFrame) -> str:
    shown = frame.head(MAX_TABLE_ROWS)
    return shown.to_html(index=False, border=0, float_format=lambda v: f"{v:.4g}", na_rep="", escape=True)


def _metrics(result: AuditResult) -> list[tuple[str, float]]:
    return list(result.metrics.items())[:MAX_METRICS]


def render_report(title: str, subtitle: str, verdict: Verdict, results: list[AuditResult], provenance: dict[str, Any],
                  questions: Mapping[str, str] | None = None, names: Mapping[str, str] | None = None) -> str:
    """The report: the verdict per question and the findings that drove it first, then the verdicts, provenance and
    each audit's section. ``questions`` / ``names``: {audit id: question / registered audit} (findings.plan_questions,
    plan_names); by default, each id is taken for the registered audit of that name."""
    found = findings(results, questions, names)
    shown, more = shown_findings(found)
    env = Environment(autoescape=True)
    template = env.from_string(_TEMPLATE)
    return template.render(
        csp=csp_meta(_NAV_SCRIPT),
        nav_script=_NAV_SCRIPT,
        title=title,
        subtitle=subtitle,
        verdict=verdict.value,
        statuses=question_statuses(results, questions, names),
        shown_findings=shown,
        more_findings=more,
        skipped=sum(r.verdict is Verdict.SKIPPED for r in results),
        results=results,
        provenance=list(provenance.items()),
        colours=COLOURS,
        fold_rows=FOLD_ROWS,
        max_rows=MAX_TABLE_ROWS,
        max_metrics=MAX_METRICS,
        fmt=fmt,
        b64=lambda data: base64.b64encode(data).decode("ascii"),
        table=_table,
        metrics=_metrics,
    )


# Markdown makes links of "[text](url)" whatever the URL (javascript: included, unless the viewer sanitises) and
# starts a new block at a line break: brackets become character references, shown as brackets, and lines join.
_MARKDOWN_ACTIVE = str.maketrans({"[": "&#91;", "]": "&#93;", "\n": " ", "\r": " "})


def _markdown_text(text: str) -> str:
    """``text`` shown as text by a Markdown viewer: no HTML (escaped), no link, one line."""
    return html.escape(text, quote=False).translate(_MARKDOWN_ACTIVE)


def version_route(name: str, version: str) -> str:
    """The MLflow UI's page of a registered model version, as a link from another of its pages (a hash route)."""
    return f"#/models/{quote(name, safe='')}/versions/{quote(version, safe='')}"


def markdown_summary(title: str, verdict: Verdict, results: list[AuditResult], questions: Mapping[str, str] | None = None,
                     names: Mapping[str, str] | None = None, version: tuple[str, str] | None = None) -> str:
    """The MLflow run's description: the verdict per question, the findings that drove it, then the verdict table.
    The UI shows the first lines of a description and folds the rest, so the findings come first. ``version``: the
    registered model version audited (name, version), whose page the title links to.

    Markdown passes HTML through: the model's name, the findings and the reasons (which can quote the data) are
    escaped, so the UI shows them as text whatever its own sanitising does; the one link is ours, its target
    percent-encoded."""
    line = "; ".join(f"{question}: {status}" for question, status in question_statuses(results, questions, names))
    shown, more = shown_findings(findings(results, questions, names))
    shown_title = _markdown_text(title) if version is None else f"[{_markdown_text(title)}]({version_route(*version)})"
    lines = [f"**Audit of {shown_title}: {verdict.value}** \u2014 {_markdown_text(line)}", ""]
    lines += [f"{i}. {_markdown_text(f.sentence)}" for i, f in enumerate(shown, 1)]
    if more:
        lines.append(f"\nand {more} more finding{'s' if more > 1 else ''} in the table below.")
    if shown:
        lines.append("")
    lines += ["| audit | verdict | reason |", "|---|---|---|"]
    for r in results:
        reason = _markdown_text(r.reason.replace("|", "/")[:200])
        lines.append(f"| {_markdown_text(r.audit)} | {r.verdict.value} | {reason} |")
    lines += ["", "Full report: artifact `audit_report.html`."]
    return "\n".join(lines)


def colour(effect: float, scale: float) -> str:
    rgb = FOR if effect > 0 else AGAINST
    alpha = min(abs(effect) / scale, 1.0) if scale > 0 else 0.0
    return f"rgba({rgb[0]},{rgb[1]},{rgb[2]},{alpha:.2f})"


def highlighted_text(text: str, effects: np.ndarray, scale: float) -> str:
    doc = indexed(text)
    by_word = {w: float(e) for w, e in zip(doc.inverse_vocab, effects, strict=True)}
    parts = []
    for token in doc.as_list:  # separators and words in order; every piece escaped
        if token in by_word:
            value = by_word[token]
            parts.append(f'<span style="background:{colour(value, scale)};padding:0 1px;border-radius:2px" '
                         f'title="{value:+.4f}">{html.escape(token)}</span>')  # fmt: skip
        else:
            parts.append(html.escape(token))
    return "".join(parts)


def highlighted_fragment(chosen, context, texts, target, proba, classes, row_drop, row_lime, fidelity) -> str:
    """One block per method: every explained row's text with each word's background coloured by its effect."""
    y = context.current.y
    out = ['<div style="font-family:sans-serif;font-size:13px;line-height:1.7">',
           '<div style="margin-bottom:6px">Colour: effect of the word on the probability of the predicted class. '
           f'<span style="background:{colour(1, 1)};padding:0 4px">evidence for</span> '
           f'<span style="background:{colour(-1, 1)};padding:0 4px">evidence against</span>; '
           'intensity proportional to |effect|, on one scale per method (the largest |effect| shown is full colour); '
           'hover a word for its value.</div>']  # fmt: skip
    methods = (("Word drop: p(class | text) - p(class | text without the word)", row_drop, None),
               ("LIME: weight of the word in the local surrogate", row_lime, fidelity))  # fmt: skip
    for title, effects, fid in methods:
        scale = max((float(np.abs(e).max()) for e in effects if len(e)), default=0.0)
        out.append(f'<h4 style="margin:10px 0 4px">{html.escape(title)} <span style="font-weight:normal;color:#666">'
                   f"(full colour = {scale:.3g})</span></h4>")  # fmt: skip
        for r, text in enumerate(texts):
            position = int(chosen["position"].iloc[r])
            label = "" if y is None else f"; label {html.escape(str(y.iloc[position]))}"
            extra = "" if fid is None else f"; surrogate R\u00b2 {fid[r]:.2f}"
            out.append(f'<div style="margin:4px 0;padding:4px 6px;border-left:3px solid #ccc">'
                       f'<div style="color:#555;font-size:11px">row {html.escape(chosen["row"].iloc[r])} '
                       f'({html.escape(chosen["reason"].iloc[r])}): predicted {html.escape(classes[target[r]])} '
                       f"p={proba[r, target[r]]:.3f}{label}{extra}</div>"
                       f'<div style="white-space:pre-wrap">{highlighted_text(text, effects[r], scale)}</div></div>')  # fmt: skip
    out.append("</div>")
    return "\n".join(out)


_HTML = """<!doctype html>
<html><head>__CSP__<meta charset="utf-8"><title>__TITLE__</title>
<style>body{font:13px sans-serif;margin:12px}canvas{border:1px solid #ccc}#tip{position:absolute;background:#fff;
border:1px solid #999;padding:4px 6px;pointer-events:none;display:none;white-space:pre;font:12px monospace}
#legend{margin:6px 0;min-height:18px}</style></head><body>
<h3>__TITLE__</h3>
<label>map <select id="emb"></select></label> <label>colour by <select id="col"></select></label>
<div id="legend"></div><canvas id="c" width="760" height="600"></canvas><div id="tip"></div>
<p>Each map is fitted on reference rows; current rows are placed into it (drawn on top). Hover a point for its values.</p>
<script>__SCRIPT__</script></body></html>
"""

# The viewer's script: its data, then its code. The page's policy names this script by the hash of its text once
# the data are in, so it runs and nothing else does.
_VIEWER = """
const D = __DATA__;
const PAL = ["#1f77b4","#ff7f0e","#2ca02c","#d62728","#9467bd","#8c564b","#e377c2","#7f7f7f","#bcbd22","#17becf"];
const VIR = [[68,1,84],[59,82,139],[33,145,140],[94,201,98],[253,231,37]];
const cv = document.getElementById("c"), ctx = cv.getContext("2d"), tip = document.getElementById("tip");
const emb = document.getElementById("emb"), col = document.getElementById("col"), legend = document.getElementById("legend");
D.embeddings.forEach(e => emb.add(new Option(e.title, e.name)));
D.colourings.forEach(c => col.add(new Option(c.title, c.name)));
let px = [], py = [];
function viridis(t){t=Math.min(1,Math.max(0,t))*4;const i=Math.min(3,Math.floor(t)),f=t-i,a=VIR[i],b=VIR[i+1];
 return "rgb("+a.map((v,j)=>Math.round(v+(b[j]-v)*f)).join(",")+")";}
function colour(c, i){const v = D.values[c.name][i]; if (v === null) return "#ccc";
 if (c.categorical) return PAL[v % 10]; return viridis((v - c.low) / ((c.high - c.low) || 1));}
function draw(){
 const e = D.embeddings.find(x => x.name === emb.value), c = D.colourings.find(x => x.name === col.value);
 const xs = D.coords[e.name + "_x"], ys = D.coords[e.name + "_y"], idx = [];
 for (let i = 0; i < xs.length; i++) if (xs[i] !== null) idx.push(i);
 const xmin = Math.min(...idx.map(i => xs[i])), xmax = Math.max(...idx.map(i => xs[i]));
 const ymin = Math.min(...idx.map(i => ys[i])), ymax = Math.max(...idx.map(i => ys[i]));
 px = xs.map(v => v === null ? null : 20 + (v - xmin) / ((xmax - xmin) || 1) * (cv.width - 40));
 py = ys.map(v => v === null ? null : cv.height - 20 - (v - ymin) / ((ymax - ymin) || 1) * (cv.height - 40));
 ctx.clearRect(0, 0, cv.width, cv.height); ctx.globalAlpha = 0.7;
 for (const i of idx){ctx.fillStyle = colour(c, i); ctx.beginPath(); ctx.arc(px[i], py[i], D.dataset[i] ? 3 : 2.2, 0, 6.3); ctx.fill();}
 legend.replaceChildren();  // categories are the data's: text nodes only, never parsed as HTML
 if (c.categorical) c.categories.forEach((k, j) => {const dot = document.createElement("span");
  dot.style.color = PAL[j % 10]; dot.textContent = "\\u25cf "; legend.append(dot, k, "\\u2003");});
 else legend.textContent = "low " + c.low.toPrecision(3) + " (purple) to high " + c.high.toPrecision(3) + " (yellow); grey: not available";
}
cv.addEventListener("mousemove", ev => {
 const r = cv.getBoundingClientRect(), mx = ev.clientX - r.left, my = ev.clientY - r.top; let best = -1, bd = 49;
 for (let i = 0; i < px.length; i++){ if (px[i] === null) continue; const d = (px[i]-mx)**2 + (py[i]-my)**2; if (d < bd){bd = d; best = i;} }
 if (best < 0){tip.style.display = "none"; return;}
 tip.textContent = D.tooltip[best]; tip.style.display = "block";
 tip.style.left = (ev.pageX + 12) + "px"; tip.style.top = (ev.pageY + 12) + "px";
});
emb.onchange = draw; col.onchange = draw; draw();
"""


def _rounded(values: np.ndarray, digits: int = 4) -> list[float | None]:
    return [None if not np.isfinite(v) else float(f"{v:.{digits}g}") for v in np.asarray(values, dtype=float)]


def html_view(table: pd.DataFrame, embeddings: list[str], colourings: list[Colouring], title: str) -> str:
    """A self-contained page: an inline <canvas> scatter per map and colouring, hover for a row's values."""
    coords = {f"{e}_{axis}": _rounded(table[f"{e}_{axis}"].to_numpy(dtype=float), 5) for e in embeddings for axis in "xy"}
    values, described = {}, []
    for c in colourings:
        if c.categorical:
            raw = _categorical_values(table, c)
            categories = _categories(raw, c)
            codes = {k: j for j, k in enumerate(categories)}
            values[c.column] = [None if v is None else codes[v] for v in raw.tolist()]
            described.append({"name": c.column, "title": c.title, "categorical": True, "categories": [str(k) for k in categories]})
        else:
            raw = table[c.column].to_numpy(dtype=float)
            low, high = _colour_range(raw)
            values[c.column] = _rounded(raw)
            described.append({"name": c.column, "title": c.title, "categorical": False, "low": low, "high": high})
    shown = [c for c in ("label", "prediction", "error", "uncertainty", "ood_score") if c in table.columns]
    tooltip = []
    for record in table[["row", "dataset", *shown]].itertuples(index=False):
        parts = [f"{record.dataset} row {record.row}"]
        for name, value in zip(shown, record[2:], strict=True):
            if value is None or (isinstance(value, float) and not np.isfinite(value)):
                continue
            parts.append(f"{name}: {value:.4g}" if isinstance(value, float) else f"{name}: {value}")
        tooltip.append("\n".join(parts))
    data = {
        "embeddings": [{"name": e, "title": TITLES[e]} for e in embeddings],
        "colourings": described,
        "coords": coords,
        "values": values,
        "dataset": [int(d == "current") for d in table["dataset"]],
        "tooltip": tooltip,
    }
    script = _VIEWER.replace("__DATA__", script_json(data), 1)
    # one pass: a title that reads "__SCRIPT__" stays a title
    filled = {"__CSP__": csp_meta(script), "__TITLE__": html_lib.escape(title, quote=True), "__SCRIPT__": script}
    return re.sub("__CSP__|__TITLE__|__SCRIPT__", lambda match: filled[match.group(0)], _HTML)


def _escaped(text: str, limit: int = 300) -> str:
    """``text`` escaped, cut before escaping (a cut never splits an entity)."""
    return html.escape(text if len(text) <= limit else text[: limit - 1] + "\u2026")


def _json(value: Any) -> str:
    return json.dumps(value, default=str)


def _unexpected_values(detail: dict) -> str:
    """The first distinct unexpected values with their counts among GX's partial list. Counted again by their
    JSON text: GX counts every NaN apart (NaN != NaN), which would list "null (x1)" over and over."""
    entries = detail.get("partial_unexpected_counts") or [{"value": v, "count": 1} for v in detail.get("partial_unexpected_list") or []]
    counts: dict[str, int] = {}
    for entry in entries:
        text = _json(entry.get("value"))
        counts[text] = counts.get(text, 0) + int(entry.get("count") or 0)
    shown = list(counts.items())[:SHOWN_UNEXPECTED]
    return "<br>".join(f"{_escaped(text, 120)} (\u00d7{count})" for text, count in shown)


def _expectation_row(result: dict) -> str:
    config, detail = result["expectation_config"], result.get("result", {}) or {}
    error = _error(result)
    if result["success"]:
        outcome = badge("PASS", "pass")
    else:
        outcome = badge("FAIL", "fail") if error is None else badge("ERROR", "error")
    if error is not None:
        observed = _escaped(f"error: {error}")
    else:
        observed = _escaped(_json(detail["observed_value"])) if "observed_value" in detail else ""
    count, percent = detail.get("unexpected_count"), detail.get("unexpected_percent")
    cells = (
        f"<td>{outcome}</td>",
        f"<td>{html.escape(config['type'])}</td>",
        f"<td>{_escaped(str(config['kwargs'].get('column', '')), 120)}</td>",
        f'<td class="code">{_escaped(_json(_compact(config["kwargs"])), 500)}</td>',
        f'<td class="code">{observed}</td>',
        f'<td class="num">{"" if count is None else html.escape(fmt(count))}</td>',
        f'<td class="num">{"" if percent is None else html.escape(fmt(float(percent)))}</td>',
        f'<td class="code">{_unexpected_values(detail)}</td>',
    )
    return "<tr>" + "".join(cells) + "</tr>"


def validation_page(validations: dict[str, dict], model_label: str, rows: int) -> str:
    """One page for both suites: counts per suite, then every expectation (failures first) with its type, column,
    kwargs, outcome, observed value, unexpected count and percent, and the first unexpected values."""
    version = next((v.get("meta", {}).get("great_expectations_version") for v in validations.values()), None)
    body = [f"<h1>Data quality: {html.escape(model_label)}</h1>",
            f'<div class="muted">Great Expectations {html.escape(str(version or ""))} on the current data, {rows} rows. '
            "Values are shown as JSON. Unexpected values come from GX's partial list (the first 20 unexpected rows): "
            f"up to {SHOWN_UNEXPECTED} distinct values, each with its count in that list. "
            "The full results: gx_validation_results.json.</div>"]  # fmt: skip
    header = ("<tr><th>outcome</th><th>expectation</th><th>column</th><th>kwargs</th><th>observed</th>"
              "<th>unexpected</th><th>unexpected %</th><th>unexpected values</th></tr>")  # fmt: skip
    for suite, validation in validations.items():
        results = validation.get("results", [])
        failed = sum(not r["success"] for r in results)
        summary = badge("PASS" if not failed else "FAIL", f"{failed} of {len(results)} failed")
        body.append(f"<h2>{html.escape(suite)} suite {summary if results else ''}</h2>")
        if not results:
            body.append('<div class="muted">No expectations in this suite.</div>')
            continue
        ordered = sorted(results, key=lambda r: bool(r["success"]))  # failures first, stable within each group
        body.append('<div class="scroll"><table>' + header + "".join(_expectation_row(r) for r in ordered) + "</table></div>")
    return page(f"Data quality: {model_label}", "\n".join(body))


FOR, AGAINST = (214, 39, 40), (31, 119, 180)  # red: evidence for the predicted class, blue: against it


SHOWN_UNEXPECTED = 5  # unexpected values listed per expectation on the page (GX's SUMMARY keeps up to 20)
