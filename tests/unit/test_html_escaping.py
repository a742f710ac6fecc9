"""Nothing from the data becomes markup or script in an HTML artifact.

MLflow previews HTML artifacts in an iframe sandboxed with ``allow-scripts allow-same-origin``: a script that
gets into one runs with the reviewer's MLflow session. Every registered audit runs here on data whose column
names, category values, class labels, texts and model name carry payloads, and every HTML page it emits (kind
``html`` and ``fragment``), and the report over all of them, is parsed with the standard library's parser: the
only scripts are our own viewers, no element carries an event handler, and every URL is an in-page anchor or an
embedded PNG (no ``javascript:``, and nothing fetched from outside).
"""

from __future__ import annotations

import html
import json
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from audits.core.context import ModelUnderAudit, build_context
from audits.core.plan import PlannedAudit
from audits.core.registry import available_audits, get_audit_class
from audits.core.result import Verdict
from audits.core.runner import overall_verdict, run_planned
from audits.rendering.figures import Colouring
from audits.rendering.html import html_view, render_report
from tests.conftest import make_pipeline_model, make_tabular

SCRIPT = "<script>alert(1)</script>"
ATTRIBUTE = '"><img src=x onerror=alert(1)>'
BREAKOUT = "</script><script>x()</script>"
JS_URL = "javascript:alert(1)"
PAYLOADS = (SCRIPT, ATTRIBUTE, BREAKOUT, JS_URL)
MARKERS = ("alert(1)", "x()")  # what a payload runs once it gets through
URL_ATTRIBUTES = {"href", "src", "action", "formaction", "xlink:href", "poster", "data", "background", "srcset", "srcdoc"}
NAV_SCRIPT = "/* MLflow shows artifacts in a sandboxed frame"  # the report's anchor navigation
VIEWER_DATA, VIEWER_CODE = "const D = ", ";\nconst PAL"  # the projections viewer: its data, then its code

# The hostile tabular data: make_tabular's columns renamed, its categories and labels replaced.
X1, X2, X3, NOISE, COLOUR = SCRIPT, ATTRIBUTE, BREAKOUT, JS_URL, f"colour{ATTRIBUTE}"
CATEGORIES = {"red": SCRIPT, "green": BREAKOUT, "blue": JS_URL}
LABELS = {"yes": BREAKOUT, "no": ATTRIBUTE}


class Elements(HTMLParser):
    """Every script element's text, every event-handler attribute and every URL-valued attribute of a page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.scripts: list[str] = []
        self.handlers: list[tuple[str, str, str]] = []
        self.urls: list[tuple[str, str, str]] = []
        self._script: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name.startswith("on"):
                self.handlers.append((tag, name, value or ""))
            elif name in URL_ATTRIBUTES:
                self.urls.append((tag, name, value or ""))
        if tag == "script":
            self._script = []

    def handle_data(self, data: str) -> None:
        if self._script is not None:
            self._script.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script" and self._script is not None:
            self.scripts.append("".join(self._script))
            self._script = None


def assert_inert(name: str, page: str) -> Elements:
    """The page runs no script of the data's, and loads nothing."""
    found = Elements()
    found.feed(page)
    found.close()
    assert not found.handlers, f"{name}: event-handler attributes {found.handlers[:3]}"
    for tag, attribute, value in found.urls:
        url = "".join(value.split()).lower()  # browsers ignore whitespace and case in a scheme
        assert url.startswith(("#", "data:image/png;base64,")), f"{name}: <{tag} {attribute}={value[:80]!r}>"
    for text in found.scripts:
        if text.lstrip().startswith(NAV_SCRIPT):
            code = text
        elif text.lstrip().startswith(VIEWER_DATA) and VIEWER_CODE in text:
            start = text.index(VIEWER_DATA) + len(VIEWER_DATA)
            literal, code = text[start:text.index(VIEWER_CODE)], text[text.index(VIEWER_CODE):]
            assert not set(literal) & set("<>&\u2028\u2029"), f"{name}: raw <, >, & or line separators in the viewer's data"
            json.loads(literal)
        else:
            raise AssertionError(f"{name}: a script that is not ours: {text[:120]!r}")
        assert not any(marker in code for marker in MARKERS), f"{name}: the data reached the code of a script"
    for payload in (SCRIPT, ATTRIBUTE, BREAKOUT):
        assert payload not in page, f"{name}: {payload!r} unescaped"
    return found


def hostile_tabular():
    X, y = make_tabular(160, seed=3)
    X["colour"] = X["colour"].map(CATEGORIES).astype("str")
    X = X.rename(columns={"x1": X1, "x2": X2, "x3": X3, "noise": NOISE, "colour": COLOUR})
    return X, y.map(LABELS).rename("label")


def hostile_context(model, X, y, split, modality="tabular", segments=None):
    m = ModelUnderAudit.from_estimator(model, uri=f"models:/{SCRIPT}/1", name=SCRIPT, version=ATTRIBUTE)
    baseline = ModelUnderAudit.from_estimator(model, uri=f"models:/{SCRIPT}/0", name=SCRIPT, version=JS_URL)
    return build_context(
        m, (X.iloc[:split], y.iloc[:split]), (X.iloc[split:].reset_index(drop=True), y.iloc[split:].reset_index(drop=True)),
        target=y.name, seed=0, baseline=baseline if modality == "tabular" else None, baseline_note="hostile test",
        segments=segments or (None, None), modality=modality,
    )  # fmt: skip


@pytest.fixture(scope="module")
def hostile_tabular_context():
    X, y = hostile_tabular()
    segments = (X.iloc[:100][[COLOUR]], X.iloc[100:][[COLOUR]].reset_index(drop=True))
    return hostile_context(make_pipeline_model(X, y, "logistic"), X, y, 100, segments=segments)


@pytest.fixture(scope="module")
def hostile_text_context():
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    from audits.methods.synthetic import job_adverts

    data = job_adverts(160, seed=0)
    texts = [f"{text} {PAYLOADS[i % len(PAYLOADS)]}" for i, text in enumerate(data["text"])]
    X, y = pd.DataFrame({SCRIPT: texts}), data["salary"].map({"high": BREAKOUT, "low": ATTRIBUTE}).rename(ATTRIBUTE)
    model = Pipeline([("tfidf", ColumnTransformer([("words", TfidfVectorizer(), SCRIPT)])),
                      ("model", LogisticRegression(C=10.0, max_iter=1000))]).fit(X.iloc[:100], y.iloc[:100])  # fmt: skip
    return hostile_context(model, X, y, 100, modality="text")


def run_every_audit(context) -> list:
    results = []
    for name in sorted(available_audits()):
        cls = get_audit_class(name)
        results.append(run_planned(PlannedAudit(name, cls(), cls.default_thresholds), context))
    return results


@pytest.fixture(scope="module")
def hostile_results(hostile_tabular_context, hostile_text_context):
    return {"tabular": run_every_audit(hostile_tabular_context), "text": run_every_audit(hostile_text_context)}


def pages(results) -> dict[str, str]:
    return {f"{r.audit}/{a.name}": a.content for r in results for a in r.artifacts if a.kind in ("html", "fragment")}


@pytest.mark.parametrize("modality", ["tabular", "text"])
def test_no_html_artifact_of_any_audit_carries_a_payload(hostile_results, modality):
    results = hostile_results[modality]
    emitted = pages(results)
    expected = {"tabular": {"data_quality/data_docs.html", "projections/maps.html"},
                "text": {"data_quality/data_docs.html", "text_explanations/highlighted.html"}}[modality]  # fmt: skip
    for path, page in emitted.items():
        assert_inert(path, page)
        # what the sink writes for a fragment: the snippet behind a title of its own
        assert_inert(path, f'<!doctype html><meta charset="utf-8"><title>x</title>{page}')
    by_audit = {r.audit: r for r in results}
    for path in expected:  # the audits that emit HTML ran on the hostile data: the checks above were not vacuous
        audit = by_audit[path.split("/")[0]]
        assert audit.verdict is not Verdict.ERROR, f"{audit.audit}: {audit.reason}"
        assert path in emitted, f"{path} missing; emitted: {sorted(emitted)}"
        assert any(html.escape(p) in emitted[path] for p in PAYLOADS), f"{path}: no payload reached it, even as text"


def test_the_data_quality_page_shows_the_hostile_values_as_text(hostile_results):
    [page] = [a.content for r in hostile_results["tabular"] if r.audit == "data_quality" for a in r.artifacts
              if a.kind == "html"]  # fmt: skip
    found = assert_inert("data_docs.html", page)
    assert found.scripts == []
    assert html.escape(SCRIPT) in page and html.escape(BREAKOUT) in page  # column names and values, shown escaped
    assert html.escape(JS_URL) in page and html.escape(ATTRIBUTE) in page


def test_the_report_over_hostile_results_is_inert(hostile_results, hostile_tabular_context):
    results = hostile_results["tabular"] + hostile_results["text"]
    model = hostile_tabular_context.model
    page = render_report(model.label, model.uri, overall_verdict(results), results,
                         {"model": model.label, "version": model.version, "data": JS_URL, SCRIPT: BREAKOUT})  # fmt: skip
    found = assert_inert("audit_report.html", page)
    assert len(found.scripts) == 1  # the anchor navigation, nothing else
    assert html.escape(SCRIPT) in page and html.escape(ATTRIBUTE) in page


def test_json_in_a_script_cannot_end_the_script_or_the_line():
    from audits.rendering.html import script_json

    value = f"{BREAKOUT}<!--<script>&amp;\u2028\u2029 {ATTRIBUTE}"
    text = script_json({"k": value, BREAKOUT: [1, None]})
    assert not set(text) & set("<>&\u2028\u2029")
    assert json.loads(text) == {"k": value, BREAKOUT: [1, None]}


def test_the_maps_viewer_puts_labels_into_the_page_as_text_only():
    n = 12
    rng = np.random.default_rng(0)
    table = pd.DataFrame({
        "row": [f"{SCRIPT}{i}" for i in range(n)], "dataset": np.where(np.arange(n) < 6, "reference", "current"),
        "tsne_x": rng.normal(size=n), "tsne_y": rng.normal(size=n),
        "label": np.array([BREAKOUT, ATTRIBUTE] * 6, dtype=object), "prediction": np.array([SCRIPT, JS_URL] * 6, dtype=object),
    })  # fmt: skip
    colourings = [Colouring("label", "label", True, (BREAKOUT, ATTRIBUTE)), Colouring("prediction", "prediction", True)]
    page = html_view(table, ["tsne"], colourings, f"Projections: {SCRIPT} __DATA__ {ATTRIBUTE}")
    found = assert_inert("maps.html", page)
    assert len(found.scripts) == 1
    # Categories go into the legend: text nodes only, never an HTML sink that would parse them.
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write"):
        assert sink not in found.scripts[0], sink
    data = json.loads(page[page.index(VIEWER_DATA) + len(VIEWER_DATA):page.index(VIEWER_CODE)])
    assert data["colourings"][0]["categories"] == [BREAKOUT, ATTRIBUTE]  # the labels survive, as data
    assert f"<title>Projections: {html.escape(SCRIPT)} __DATA__ {html.escape(ATTRIBUTE)}</title>" in page
