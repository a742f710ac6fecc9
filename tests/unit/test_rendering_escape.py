"""Every HTML builder shows a planted string as text, and every page opens with the one Content-Security-Policy.

Milliseconds: each builder gets the string by hand in every place its data go (no audit runs). The browser check
over real audits on hostile data is tests/integration/test_inert_report.py; the parser check over every registered
audit is tests/unit/test_html_escaping.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from html.parser import HTMLParser
from types import SimpleNamespace

import numpy as np
import pandas as pd

from audits.core.result import Artifact, AuditResult, CheckResult, Verdict
from audits.methods.text import indexed
from audits.rendering.figures import Colouring
from audits.rendering.html import (
    content_security_policy,
    csp_meta,
    highlighted_fragment,
    html_view,
    markdown_summary,
    page,
    render_report,
    validation_page,
)

PLANT = """</script><script>alert('x')</script>"'><img src=x onerror=alert(1)><a href="javascript:alert(2)">[a](javascript:alert(3))"""
RAW = ("<script>alert", "'><img", "<img src=x", "<a href=\"javascript")  # what the plant would be as markup
CSP = re.compile(r'<meta http-equiv="Content-Security-Policy" content="([^"]*)">')


class Page(HTMLParser):
    """A page's elements in order, its scripts' text, and its text (everything shown, character references decoded)."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[str] = []
        self.text: list[str] = []
        self._in: str | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))
        if tag in ("script", "style"):
            self._in = tag
            if tag == "script":
                self.scripts.append("")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if tag == self._in:
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "script":
            self.scripts[-1] += data
        elif self._in is None:
            self.text.append(data)

    @property
    def shown(self) -> str:
        return "".join(self.text)


def sha256(script: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii") + "'"


def assert_inert(text: str, scripts: int = 0) -> Page:
    """No planted markup; the CSP opens <head> and lets run exactly the page's own ``scripts`` scripts, by hash."""
    for raw in RAW:
        assert raw not in text, f"{raw!r} unescaped"
    parsed = Page(text)
    handlers = [(tag, name) for tag, attrs in parsed.elements for name in attrs if name.startswith("on")]
    assert handlers == []
    links = [attrs.get("href") for tag, attrs in parsed.elements if tag == "a"]
    assert all(href and href.startswith("#") for href in links), links
    assert not any(tag in ("img", "link", "iframe", "object", "embed", "base", "form") and "data:image/png" not in str(attrs)
                   for tag, attrs in parsed.elements), "an element that loads from elsewhere"  # fmt: skip
    tags = [tag for tag, _ in parsed.elements]
    head = tags.index("head") if "head" in tags else -1  # a page without an explicit <head> opens with its elements
    assert tags[head + 1] == "meta" and parsed.elements[head + 1][1].get("http-equiv") == "Content-Security-Policy"
    policy = parsed.elements[head + 1][1]["content"]
    assert len(parsed.scripts) == scripts
    assert policy == content_security_policy(*parsed.scripts)  # every script it has, and only those
    assert all(sha256(script) in policy for script in parsed.scripts)
    return parsed


def test_the_policy_loads_nothing_and_runs_only_named_scripts():
    assert content_security_policy() == ("default-src 'none'; script-src 'none'; img-src data:; style-src 'unsafe-inline'; "
                                         "base-uri 'none'; form-action 'none'")  # fmt: skip
    named = content_security_policy("alert(1)", "x()")
    assert f"script-src {sha256('alert(1)')} {sha256('x()')};" in named and "unsafe" not in named.split("script-src")[1].split(";")[0]
    assert CSP.fullmatch(csp_meta("a</script>")), "the policy is one attribute of one <meta>"


def test_the_report_shows_every_planted_string_as_text():
    frame = pd.DataFrame({PLANT: [PLANT, 1.5], "value": [0.25, PLANT]})
    planted = AuditResult(
        audit=PLANT, verdict=Verdict.FAIL, reason=PLANT, metrics={"planted.value": 1.0},
        artifacts=(Artifact.table("t", frame, PLANT), Artifact.html("h", "<p>x</p>", PLANT), Artifact.json("j", {}, PLANT)),
        checks=(CheckResult("planted.value", PLANT, "fail", 1.0, None, PLANT),), info={PLANT: PLANT, "traceback": PLANT},
    )  # fmt: skip
    report = render_report(PLANT, PLANT, Verdict.FAIL, [planted], {PLANT: PLANT})
    parsed = assert_inert(report, scripts=1)  # the anchor navigation
    # title, heading, subtitle, provenance (2), verdict table (2), section (2), reason, info (3), check (2), table (3),
    # artifact titles (3)
    assert parsed.shown.count(PLANT) >= 20, parsed.shown.count(PLANT)
    assert Page(report).elements[0][0] == "html"


def test_a_page_and_the_data_quality_page_show_planted_strings_as_text():
    assert assert_inert(page(PLANT, "<p>body</p>")).shown.count(PLANT) == 1  # the <title>
    failed = {"expectation_config": {"type": PLANT, "kwargs": {"column": PLANT, "value_set": [PLANT]}},
              "result": {"observed_value": PLANT, "unexpected_count": 1, "unexpected_percent": 50.0,
                         "partial_unexpected_list": [PLANT, PLANT]}, "success": False}  # fmt: skip
    broken = {"expectation_config": {"type": "expect_column_to_exist", "kwargs": {"column": PLANT}}, "success": False,
              "exception_info": {"raised_exception": True, "exception_message": PLANT}}  # fmt: skip
    validations = {PLANT: {"results": [failed, broken], "meta": {"great_expectations_version": PLANT}}}
    parsed = assert_inert(validation_page(validations, PLANT, 10))
    assert parsed.shown.count(PLANT) >= 5  # heading, version, suite, type, column (twice); the JSON cells quote it


def test_the_text_highlights_show_the_text_and_labels_as_text():
    text = f"senior engineer {PLANT} remote"
    effects = np.linspace(-1, 1, len(indexed(text).inverse_vocab))
    chosen = pd.DataFrame({"position": [0], "row": [PLANT], "reason": [PLANT]})
    context = SimpleNamespace(current=SimpleNamespace(y=pd.Series([PLANT])))
    fragment = highlighted_fragment(chosen, context, [text], np.array([0]), np.array([[0.7, 0.3]]), [PLANT, "b"],
                                    [effects], [effects], [0.5])  # fmt: skip
    for raw in RAW:
        assert raw not in fragment
    assert Page(fragment).shown.count(PLANT) >= 2 * 4  # per method: row, reason, class, label
    written = Artifact.fragment("highlighted", fragment, PLANT).encoded().decode("utf-8")
    parsed = assert_inert(written)
    assert written.startswith(f'<!doctype html><html><head>{csp_meta()}<meta charset="utf-8"><title>')
    assert "".join(text.split()) in "".join(parsed.shown.split())  # the words are wrapped in spans, the text intact


def test_the_maps_viewer_keeps_labels_in_its_data_and_its_title_as_text():
    n = 8
    table = pd.DataFrame({"row": [f"{PLANT}{i}" for i in range(n)], "dataset": ["reference"] * 4 + ["current"] * 4,
                          "tsne_x": np.arange(n, dtype=float), "tsne_y": np.arange(n, dtype=float)[::-1],
                          "label": [PLANT, "b"] * 4, "prediction": ["b", PLANT] * 4})  # fmt: skip
    colourings = [Colouring("label", PLANT, True, (PLANT, "b")), Colouring("prediction", "prediction", True)]
    viewer = html_view(table, ["tsne"], colourings, f"Projections: {PLANT} __SCRIPT__ __CSP__")
    parsed = assert_inert(viewer, scripts=1)
    assert f"Projections: {PLANT} __SCRIPT__ __CSP__" in parsed.shown  # the heading: text, placeholders and all
    script = parsed.scripts[0]
    data = json.loads(script[script.index("const D = ") + len("const D = "):script.index(";\nconst PAL")])
    assert data["colourings"][0]["categories"] == [PLANT, "b"] and data["colourings"][0]["title"] == PLANT


def test_the_run_description_shows_names_and_reasons_as_text_not_links():
    results = [AuditResult(audit="a[b](javascript:alert(1))", verdict=Verdict.ERROR, reason=f"{PLANT}\n\n# heading")]
    summary = markdown_summary(f"{PLANT}\n\n<img src=x>", Verdict.ERROR, results)
    assert not set(summary) & set("<>[]"), summary  # no HTML and no link syntax left for Markdown
    # a line break in a name or reason starts no block of its own: the verdict line, a blank, the one finding (the error
    # quotes the reason), a blank, the table's header, rule and row, a blank, the line naming the report
    assert len(summary.splitlines()) == 9
    assert "&#91;a&#93;(javascript:alert(3))" in summary


def test_the_one_link_in_the_run_description_is_ours():
    """The title links to the audited version's page: the name is escaped in the link's text and percent-encoded in its
    target, so that no bracket, parenthesis or markup of the name's reaches the Markdown."""
    results = [AuditResult(audit="shap", verdict=Verdict.ERROR, reason=PLANT)]
    summary = markdown_summary(f"{PLANT} v1", Verdict.ERROR, results, version=(PLANT, "1"))
    target = "#/models/" + "".join(f"%{b:02X}" if chr(b) not in "-._~" and not chr(b).isalnum() else chr(b)
                                   for b in PLANT.encode("utf-8")) + "/versions/1"
    assert summary.startswith(f"**Audit of [{summary[len('**Audit of ['):].split(']', 1)[0]}]({target}): ERROR**")
    assert summary.count("[") == summary.count("]") == 1 and summary.count("(#/") == 1
    assert not set(target) & set("<>()[] \"'")


def test_a_failure_reason_cannot_close_its_code_block_in_the_run_description():
    from tasks.adapters.mlflow_sink import fenced

    reason = "DataError: column ```\n<img src=x onerror=alert(1)>\n``` `` end"
    block = fenced(reason)
    fence = block.split("\n", 1)[0]
    assert set(fence) == {"`"} and len(fence) == 4 and block.endswith("\n" + fence)
    assert fence not in reason  # nothing inside is as long as the fence: the block ends where we end it
