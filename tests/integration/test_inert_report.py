"""The report and every HTML artifact are inert: opened in a real browser, nothing from the data runs or loads.

MLflow shows an HTML artifact in an iframe sandboxed with ``allow-scripts allow-same-origin``: a script that got
into one would run with the reviewer's MLflow session. Here the data carry script and markup payloads in every
place a string of theirs reaches a page: column names, category values, segment values, class labels, the texts
of a text dataset, the model's name (the report's title) and provenance values, and a planted audit's reason.
Every audit that applies runs on a tabular classifier and a text classifier; the report and every HTML artifact are
written as the sink writes them (``Artifact.encoded``) and opened from disk in headless Chromium (Debian's package
under Playwright, as tests/integration/browser.py launches it). Each page is opened twice:

- as written: its Content-Security-Policy is the first element of its head, nothing runs or loads, no CSP
  violation is reported (a violation means a payload became markup, even though the policy stopped it), and the
  payloads are shown as text (escaped, not dropped);
- with its CSP removed: escaping alone keeps it inert (the policy is a second wall, not the only one).

A last test plants the payloads raw under the policy: the policy alone stops every one of them.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from audits.core.context import ModelUnderAudit, build_context
from audits.core.plan import PlannedAudit
from audits.core.registry import available_audits, get_audit_class
from audits.core.result import AuditResult, Verdict
from audits.core.runner import overall_verdict, run_planned
from audits.rendering.html import csp_meta, render_report
from audits.testing import make_pipeline_model
from tests.integration.browser import chromium, require_chromium

pytestmark = pytest.mark.integration  # a real browser, as in test_reviewer_ui.py; no server

OUTSIDE = "http://127.0.0.1:9"  # the discard port: nothing answers, and a request to it is the failure


def payloads(place: str) -> dict[str, str]:
    """One payload of each kind, each marking the page with its place and kind if it ever runs."""

    def mark(kind: str) -> str:
        return f"document.documentElement.dataset.pwned+=' {place}:{kind}'"  # every one that runs adds its mark

    return {
        "script": f"<script>{mark('script')}</script>",
        "img": f'<img src=x onerror="{mark("img")};alert(1)">',
        "svg": f'"><svg onload="{mark("svg")}">',
        "breakout": f"</script><script>{mark('breakout')}</script>",
        "link": f'<a href="javascript:{mark("link")};void 0">link</a> javascript:{mark("url")};void 0',
        "load": f"<link rel=stylesheet href={OUTSIDE}/{place}.css><img src={OUTSIDE}/{place}.png>",
    }


COLUMNS, CATEGORIES, SEGMENTS = payloads("column"), payloads("category"), payloads("segment")
LABELS, TEXTS, MODEL, PROVENANCE = payloads("label"), payloads("text"), payloads("model"), payloads("provenance")
REASON = payloads("reason")
PLACES = {"column": COLUMNS, "category": CATEGORIES, "segment": SEGMENTS, "label": LABELS, "text": TEXTS,
          "model": MODEL, "provenance": PROVENANCE, "reason": REASON}  # fmt: skip
MODEL_NAME = MODEL["script"] + " " + MODEL["img"]
MODEL_VERSION = MODEL["svg"]
CSP_META = re.compile(r'<meta http-equiv="Content-Security-Policy" content="[^"]*">')

# What the page reports back once loaded: anything marked, every CSP violation, and its visible text.
PROBE = """() => ({
    pwned: [...document.querySelectorAll('[data-pwned]')].flatMap(e => e.dataset.pwned.split(' ').slice(1)),
    violations: (window.__violations || []).slice(),
    text: document.body ? document.body.innerText : '',
    headFirst: document.head && document.head.firstElementChild ? document.head.firstElementChild.outerHTML : '',
    options: document.querySelectorAll('select option').length,
    foreignLinks: [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href'))
        .filter(h => !h.startsWith('#')),
})"""
SETTLE = "() => new Promise(done => requestAnimationFrame(() => setTimeout(done, 50)))"
# A javascript: link runs only when followed (an <a> inside an <svg> has no click(): an event works for both).
FOLLOW_LINKS = """() => document.querySelectorAll('a').forEach(
    a => a.dispatchEvent(new MouseEvent('click', {bubbles: true, cancelable: true})))"""
WATCH_VIOLATIONS = """window.__violations = [];
document.addEventListener('securitypolicyviolation',
    e => window.__violations.push(e.violatedDirective + ' ' + (e.blockedURI || '') + ' ' + (e.sample || '')));"""


def hostile_tabular(n: int = 200, seed: int = 3) -> tuple[pd.DataFrame, pd.Series, pd.DataFrame]:
    """Five numeric features and one categorical, every name a payload; category and segment values are payloads,
    and so are the two class labels."""
    rng = np.random.default_rng(seed)
    numeric = rng.normal(size=(n, 5))
    category = rng.choice(list(CATEGORIES.values()), n)
    # a short column name: a segment's metric keys hold its column and value, and MLflow takes keys of 250 characters
    segment = pd.DataFrame({"segment": rng.choice(list(SEGMENTS.values()), n)})
    names = list(COLUMNS.values())
    X = pd.DataFrame(numeric, columns=names[:5])
    X[names[5]] = pd.Series(category, dtype="str")
    logit = 2 * numeric[:, 0] - 1.5 * numeric[:, 1] + (category == CATEGORIES["script"]) * 1.5
    y = pd.Series(np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), LABELS["breakout"], LABELS["img"]), name=LABELS["svg"])
    return X, y, segment


def hostile_model(estimator) -> ModelUnderAudit:
    return ModelUnderAudit.from_estimator(estimator, uri=f"models:/{MODEL_NAME}/1", name=MODEL_NAME, version=MODEL_VERSION)


def tabular_context():
    X, y, segment = hostile_tabular()
    split = 120
    cut = lambda frame: (frame.iloc[:split], frame.iloc[split:].reset_index(drop=True))  # noqa: E731
    model = make_pipeline_model(X.iloc[:split], y.iloc[:split], "logistic")
    baseline = ModelUnderAudit.from_estimator(make_pipeline_model(X.iloc[:split], y.iloc[:split], "gbm"),
                                              uri=f"models:/{MODEL_NAME}/0", name=MODEL_NAME, version=MODEL["link"])  # fmt: skip
    (X_ref, X_cur), (y_ref, y_cur) = cut(X), cut(y)
    return build_context(hostile_model(model), (X_ref, y_ref), (X_cur, y_cur), target=y.name, seed=0, baseline=baseline,
                         baseline_note="", segments=cut(segment))  # fmt: skip


def text_context():
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    from audits.methods.synthetic import job_adverts

    data = job_adverts(160, seed=0)
    planted = list(TEXTS.values())
    column = COLUMNS["breakout"]
    X = pd.DataFrame({column: [f"{text} {planted[i % len(planted)]}" for i, text in enumerate(data["text"])]})
    y = data["salary"].map({"high": LABELS["script"], "low": LABELS["link"]}).rename(LABELS["load"])
    model = Pipeline([("tfidf", ColumnTransformer([("words", TfidfVectorizer(), column)])),
                      ("model", LogisticRegression(C=10.0, max_iter=1000))]).fit(X.iloc[:100], y.iloc[:100])  # fmt: skip
    cur = slice(100, None)
    return build_context(hostile_model(model), (X.iloc[:100], y.iloc[:100]),
                         (X.iloc[cur].reset_index(drop=True), y.iloc[cur].reset_index(drop=True)), target=y.name, seed=0,
                         baseline_note="", modality="text")  # fmt: skip


def run_every_audit(context) -> list[AuditResult]:
    """Every registered audit with its default configuration and thresholds (those that do not apply: SKIPPED)."""
    results = []
    for name in available_audits():
        cls = get_audit_class(name)
        results.append(run_planned(PlannedAudit(name, cls(), cls.default_thresholds), context))
    return results


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, Path]:
    """The report over both audits and every HTML artifact, written to disk as the sink writes them."""
    require_chromium()  # fail before the audits run when the browser is missing
    results = {"tabular": run_every_audit(tabular_context()), "text": run_every_audit(text_context())}
    planted = AuditResult(audit="planted", verdict=Verdict.ERROR, reason=REASON["script"] + REASON["img"],
                          info={"column": REASON["svg"], "traceback": REASON["breakout"] + REASON["link"] + REASON["load"]})  # fmt: skip
    folder = tmp_path_factory.mktemp("inert")
    pages: dict[str, Path] = {}
    for modality, audited in results.items():
        for result in audited:
            for artifact in result.artifacts:
                if artifact.kind in ("html", "fragment"):
                    path = folder / modality / result.audit / artifact.name
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(artifact.encoded())
                    pages[f"{modality}/{result.audit}/{artifact.name}"] = path
    everything = results["tabular"] + results["text"] + [planted]
    report = render_report(
        title=f"{MODEL_NAME} v{MODEL_VERSION}",
        subtitle=f"models:/{MODEL_NAME}/1 · config {PROVENANCE['img']}",
        verdict=overall_verdict(everything),
        results=everything,
        provenance={"model URI": f"models:/{MODEL_NAME}/1", "compared with": PROVENANCE["script"], PROVENANCE["svg"]: PROVENANCE["breakout"],
                    "loaded": PROVENANCE["link"], "data": PROVENANCE["load"]},  # fmt: skip
    )
    pages["audit_report.html"] = folder / "audit_report.html"
    pages["audit_report.html"].write_text(report, encoding="utf-8")
    by_name = {f"{m}/{r.audit}": r for m, audited in results.items() for r in audited}
    for emitter in ("tabular/data_quality", "tabular/projections", "text/data_quality", "text/text_explanations"):
        assert by_name[emitter].verdict is not Verdict.ERROR, f"{emitter}: {by_name[emitter].reason}"
    expected = {"audit_report.html", "tabular/data_quality/data_docs.html", "tabular/projections/maps.html",
                "text/data_quality/data_docs.html", "text/text_explanations/highlighted.html"}  # fmt: skip
    assert expected <= set(pages), f"missing pages: {sorted(expected - set(pages))}"
    return pages


def open_page(browser, path: Path) -> dict:
    """Load ``path`` from disk in a fresh profile; what ran, what it asked for, what it showed."""
    from playwright.sync_api import Error as PlaywrightError

    context = browser.new_context()
    requests: list[str] = []
    dialogs: list[str] = []
    console: list[str] = []
    own = path.as_uri()
    left: list[str] = []  # requests that got past the page's policy, to the network (stopped here)

    def stop(route) -> None:
        left.append(route.request.url)
        route.abort()

    context.route(lambda url: not url.startswith((own, "data:", "blob:")), stop)
    context.add_init_script(WATCH_VIOLATIONS)
    try:
        page = context.new_page()
        page.on("request", lambda request: requests.append(request.url))
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        page.on("console", lambda message: console.append(f"{message.type}: {message.text}") if message.type in ("error", "warning") else None)
        page.goto(own, wait_until="load")
        page.evaluate(SETTLE)
        seen = page.evaluate(PROBE)
        moved: list[str] = []  # a link that leaves the page (a javascript: URL that returns a string does too)
        page.on("framenavigated", lambda frame: moved.append(frame.url) if frame == page.main_frame else None)
        try:
            page.evaluate(FOLLOW_LINKS)
            page.evaluate(SETTLE)
            if not moved:
                after = page.evaluate(PROBE)
                seen["pwned"], seen["violations"] = after["pwned"], after["violations"]
        except PlaywrightError as error:  # the page navigated away under the evaluation
            moved.append(f"({str(error).splitlines()[0]})")
        seen["moved"] = moved
    finally:
        context.close()
    seen["requests"] = [url for url in requests if not url.startswith((own, "data:", "blob:"))]
    seen["left"] = left
    seen["dialogs"], seen["console"] = dialogs, console
    return seen


# what a page must not show, by what open_page saw, and how many of the findings a problem quotes
FORBIDDEN = (
    ("pwned", "a payload ran", None),
    ("dialogs", "a dialog opened", None),
    ("moved", "following a link left the page", 3),
    ("requests", "requests for anything but the page and data: URLs", 5),
    ("left", "requests left the page", 5),
    ("violations", "CSP violations (markup from the data, stopped by the policy)", 5),
    ("console", "console errors or warnings", 5),
    ("foreignLinks", "links other than in-page anchors", 5),
)


def problems_of(name: str, seen: dict, with_policy: bool) -> list[str]:
    found = [f"{what}: {seen[key] if shown is None else seen[key][:shown]}" for key, what, shown in FORBIDDEN if seen[key]]
    if name.endswith("maps.html") and not seen["options"]:
        found.append("the viewer's own script did not run (no maps to choose from)")
    if with_policy and not CSP_META.fullmatch(seen["headFirst"]):
        found.append(f"the first element of <head> is not the CSP: {seen['headFirst'][:200]!r}")
    return found


def test_the_report_and_every_html_artifact_are_inert_in_chromium(written, tmp_path):
    problems: dict[str, list[str]] = {}
    shown: dict[str, str] = {}
    with chromium() as browser:
        for name, path in written.items():
            text = path.read_text(encoding="utf-8")
            seen = open_page(browser, path)
            problems[name] = problems_of(name, seen, with_policy=True)
            shown[name] = seen["text"]
            bare = tmp_path / name.replace("/", "__")
            bare.write_text(CSP_META.sub("", text, count=1), encoding="utf-8")
            bare_seen = open_page(browser, bare)
            problems[name] += [f"without its CSP: {p}" for p in problems_of(name, bare_seen, with_policy=False)]
            if not any(p in seen["text"] for place in PLACES.values() for p in place.values()):
                problems[name].append("no payload is shown as text: dropped, or turned into markup")
    failing = {name: found for name, found in problems.items() if found}
    assert not failing, "\n".join(f"{name}:\n  " + "\n  ".join(found) for name, found in failing.items())
    everything = "\n".join(shown.values())
    for place, planted in PLACES.items():  # every place's payloads reached some page, as text
        missing = [kind for kind, payload in planted.items() if payload not in everything]
        assert len(missing) < len(planted), f"no {place} payload is shown as text on any page"
    report = shown["audit_report.html"]
    for payload in (MODEL_NAME, MODEL_VERSION, *PROVENANCE.values(), REASON["script"] + REASON["img"]):
        assert payload in report, f"the report does not show {payload!r} as text"


def test_the_policy_alone_stops_raw_payloads(tmp_path):
    """The payloads planted raw, unescaped: without the policy they run and load (they are live), under the policy
    every page carries none does."""
    raw = "".join(REASON.values())
    pages = {}
    for name, policy in (("bare", ""), ("policed", csp_meta())):
        pages[name] = tmp_path / f"{name}.html"
        pages[name].write_text(f'<!doctype html><html><head>{policy}<meta charset="utf-8"><title>raw</title></head>'
                               f"<body><p>{raw}</p><script>{raw}</script></body></html>", encoding="utf-8")  # fmt: skip
    with chromium() as browser:
        bare, policed = open_page(browser, pages["bare"]), open_page(browser, pages["policed"])
    ran = {entry.split(":")[1] for entry in bare["pwned"]}
    assert {"script", "svg", "link"} <= ran and bare["dialogs"] and bare["left"], "the payloads are not live"
    assert policed["pwned"] == [] and policed["dialogs"] == [] and policed["left"] == []
    assert policed["requests"] and policed["violations"], "the payloads did not even try: this test shows nothing"
