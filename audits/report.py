"""One self-contained HTML report per audit: verdicts, checks, key metrics, figures embedded.

No external CSS, scripts or fonts: the MLflow artifact viewer shows HTML in a sandboxed iframe
from a blob URL, where relative links do not resolve and a reviewer may be offline.
"""

from __future__ import annotations

import base64
import html
import json
from typing import Any

import pandas as pd
from jinja2 import Environment

from audits.core.result import AuditResult, Verdict

COLOURS = {"PASS": "#1a7f37", "WARN": "#9a6700", "FAIL": "#cf222e", "ERROR": "#8250df", "SKIPPED": "#6e7781"}
MAX_TABLE_ROWS = 25
MAX_METRICS = 40

# Shared by every page an audit writes (audits.data_quality's validation page uses it too).
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
"""

_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Audit: {{ title }}</title>
<style>""" + STYLE + """</style></head><body>
<h1>Audit of {{ title }} <span class="badge" style="background:{{ colours[verdict] }}">{{ verdict }}</span></h1>
<div class="muted">{{ subtitle }}</div>
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
{% if r.checks %}<h3>Checks</h3><table><tr><th>rule</th><th>severity</th><th>value</th><th>outcome</th></tr>
{% for c in r.checks %}<tr><td>{{ c.rule }}</td><td>{{ c.severity }}</td><td class="num">{{ fmt(c.value) }}</td>
<td>{{ "pass" if c.passed else ("not evaluated: " + c.message if c.passed is none else "violated") }}</td></tr>{% endfor %}</table>{% endif %}
{% if r.metrics %}<h3>Metrics</h3><table><tr><th>metric</th><th>value</th></tr>
{% for k, v in metrics(r) %}<tr><td>{{ k }}</td><td class="num">{{ fmt(v) }}</td></tr>{% endfor %}</table>
{% if r.metrics|length > max_metrics %}<div class="muted">{{ r.metrics|length - max_metrics }} more metrics in the MLflow run.</div>{% endif %}{% endif %}
{% for a in r.artifacts %}
{% if a.kind == "figure" %}<h3>{{ a.title or a.name }}</h3><img alt="{{ a.name }}" src="data:image/png;base64,{{ b64(a.content) }}">
{% elif a.kind == "table" %}<h3>{{ a.title or a.name }}</h3><div class="scroll">{{ table(a.content) | safe }}</div>
<div class="muted">{{ a.content|length }} rows; full table: {{ r.audit }}/{{ a.name }}</div>
{% elif a.kind == "fragment" %}<h3>{{ a.title or a.name }}</h3><div class="fragment">{{ a.content | safe }}</div>
{% elif a.kind == "html" %}<div class="muted">{{ a.title or a.name }}: open the artifact {{ r.audit }}/{{ a.name }}</div>
{% else %}<div class="muted">{{ a.title or a.name }}: see artifact {{ r.audit }}/{{ a.name }}</div>{% endif %}
{% endfor %}{% endfor %}
<script>
/* MLflow shows artifacts in a sandboxed frame from a blob URL, where #anchors do not navigate. */
document.querySelectorAll('a[href^="#"]').forEach(function (a) {
  a.addEventListener('click', function (e) {
    var target = document.getElementById(a.getAttribute('href').slice(1));
    if (target) { e.preventDefault(); target.scrollIntoView(); }
  });
});
</script>
</body></html>
"""


def fmt(value: Any) -> str:
    """A value as short text (not escaped: the template, or the caller, escapes it once)."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def page(title: str, body: str) -> str:
    """A self-contained page: ``title`` is text (escaped here), ``body`` is HTML its caller has escaped."""
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>\n'
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


def render_report(title: str, subtitle: str, verdict: Verdict, results: list[AuditResult], provenance: dict[str, Any]) -> str:
    env = Environment(autoescape=True)
    template = env.from_string(_TEMPLATE)
    return template.render(
        title=title,
        subtitle=subtitle,
        verdict=verdict.value,
        results=results,
        provenance=list(provenance.items()),
        colours=COLOURS,
        max_metrics=MAX_METRICS,
        fmt=fmt,
        b64=lambda data: base64.b64encode(data).decode("ascii"),
        table=_table,
        metrics=_metrics,
    )


def markdown_summary(title: str, verdict: Verdict, results: list[AuditResult]) -> str:
    """A short Markdown table for the MLflow run's description.

    Markdown passes HTML through: the model's name and the reasons (which can quote the data) are escaped, so
    the UI shows them as text whatever its own sanitising does."""
    lines = [f"**Audit of {html.escape(title, quote=False)}: {verdict.value}**", "", "| audit | verdict | reason |", "|---|---|---|"]
    for r in results:
        reason = html.escape(r.reason.replace("|", "/").replace("\n", " ")[:200], quote=False)
        lines.append(f"| {html.escape(r.audit, quote=False)} | {r.verdict.value} | {reason} |")
    lines += ["", "Full report: artifact `audit_report.html`."]
    return "\n".join(lines)
