"""Reviewed as a reviewer would: two audited versions in a store, `mlflow ui` on it, and a real headless
browser (Debian's Chromium under Playwright) that checks what the pages show, not what the API returns:

1. the model registry shows each version's audit verdict (on the model's page and on each version's page);
2. the compare-runs page shows both audit runs side by side, every metric with a value for both;
3. ``audit_report.html`` renders in the artifact viewer with its figures (decoded, and at a readable size).

Everything shown is checked against the store (MlflowClient) and the artifacts the audit wrote.
Screenshots of every page are kept in bench/out/screenshots/reviewer_ui/ (git-ignored); their paths are printed.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from flows.audit_model import audit_model
from tasks.adapters.tracking import make_client
from tests.helpers import audited_model_inputs, build_world, write_config
from tests.integration.browser import (
    Screenshots,
    chromium,
    compare_page_metrics,
    compare_page_row,
    compare_runs_route,
    expect,
    first_screen,
    format_metric,
    html_artifact_frame,
    images_in,
    require_chromium,
    reviewer_page,
    top_and_bottom,
    ui_url,
    visible_height,
)
from tests.integration.servers import free_port, healthy, log_tail, port_free, stop_group, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_harness")]

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "bench" / "out" / "screenshots" / "reviewer_ui"
STARTUP_TIMEOUT_S = 120
MODEL = "e2e-model"
# v1 (gradient boosting) scores 0.77 on the current rows and v2 (logistic) 0.82: the two verdicts differ.
PLAN = [
    {"audit": "performance", "thresholds": [{"metric": "performance.current.accuracy", "min": 0.8}]},
    {"audit": "shap", "config": {"rows": 40}},
]


# The case: a planted drift in a feature the model barely uses. The audit rightly FAILs, for the data alone:
# accuracy, calibration and the predictions are fine, and the first screen must not read as a broken model.
DRIFT_PLAN = [
    {"audit": "drift"},
    {"audit": "performance", "thresholds": [{"metric": "performance.current.accuracy", "min": 0.6}]},
    {"audit": "calibration"},
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    require_chromium()  # fail fast, before a minute of setup, when the browser is missing
    return build_world(tmp_path_factory.mktemp("reviewer-ui"), versions=3)  # v3 for the drift case alone


@pytest.fixture(scope="module")
def drifted(world):
    """v3 (logistic regression, as v2) audited on current data whose 'noise' column moved by 2.5 sd."""
    frame = pd.read_csv(world.current)
    frame["noise"] += 2.5
    frame.to_csv(world.folder / "current_drifted.csv", index=False)
    config = write_config(world.folder, world.tracking_uri, name="drifted.yaml", audits=DRIFT_PLAN,
                          data={"reference": "reference.csv", "current": "current_drifted.csv", "target": "label"})
    summary = audit_model(model_uri=f"models:/{MODEL}/3", config_path=str(config), tracking_uri=world.tracking_uri)
    assert summary["verdict"] == "FAIL" and {a: s["verdict"] for a, s in summary["audits"].items()} == {
        "drift": "FAIL", "performance": "PASS", "calibration": "PASS"}, summary
    return summary


@pytest.fixture(scope="module")
def audited(world):
    """A SQLite store with two registered versions, each audited by the audit_model flow."""
    config = write_config(world.folder, world.tracking_uri, name="reviewer.yaml", audits=PLAN)
    summaries = {
        version: audit_model(model_uri=f"models:/{MODEL}/{version}", config_path=str(config), tracking_uri=world.tracking_uri)
        for version in ("1", "2")
    }  # fmt: skip
    assert {s["verdict"] for s in summaries.values()} == {"FAIL", "PASS"}, summaries  # the pages must tell them apart
    return world, summaries


@pytest.fixture(scope="module")
def mlflow_ui(audited):
    """`mlflow ui` over the store, on 127.0.0.1 and a free port; stopped (process group) afterwards."""
    world, _ = audited
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = world.folder / "mlflow-ui.log"
    log = log_path.open("w")
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri", world.tracking_uri,
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=world.folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not healthy(f"{url}/health"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow ui did not start:\n{log_tail(log_path)}")
            time.sleep(0.5)
        yield url
    finally:
        stop_group(process)  # the CLI and uvicorn
        wait_for(lambda: port_free(port), timeout=30, what=f"port {port} free")
        log.close()


@pytest.fixture(scope="module")
def browser():
    with chromium() as browser:
        yield browser


@pytest.fixture(scope="module")
def shots(request):
    shots = Screenshots(SCREENSHOTS)
    for old in SCREENSHOTS.glob("*.png"):
        old.unlink()
    yield shots
    capmanager = request.config.pluginmanager.getplugin("capturemanager")
    with capmanager.global_and_fixture_disabled():
        print(f"\nscreenshots of the MLflow UI ({len(shots.paths)}):")
        for path in shots.paths:
            print(f"  {path}")


def test_the_registry_shows_each_versions_verdict(audited, mlflow_ui, browser, shots):
    world, summaries = audited
    client = make_client(world.tracking_uri)
    expected = {v: client.get_model_version(MODEL, v).tags["audit.verdict"] for v in summaries}
    assert expected == {v: s["verdict"] for v, s in summaries.items()}

    # A first visit, as a link takes a new reviewer there: the GenAI view, the assistant panel open.
    with reviewer_page(browser, mlflow_ui, first_visit=True) as page:
        page.goto(ui_url(mlflow_ui, f"models/{MODEL}", view=None))
        _expect_version_verdicts(page, expected)
        shots.take(page, "models_first_visit")

    with reviewer_page(browser, mlflow_ui) as page:
        page.goto(ui_url(mlflow_ui, f"models/{MODEL}"))
        _expect_version_verdicts(page, expected)
        shots.take(page, "models")
        for version, verdict in expected.items():
            page.goto(ui_url(mlflow_ui, f"models/{MODEL}/versions/{version}"))
            expect(page.get_by_role("heading", name=f"Version {version}", exact=True)).to_be_visible()
            row = page.locator("tr[data-row-key='audit.verdict']")  # the version's tags table
            expect(row.get_by_role("cell")).to_have_text(["audit.verdict", verdict, ""])
            expect(row).to_be_in_viewport()  # no scrolling needed to see it
            shots.take(page, f"version_{version}")


def _expect_version_verdicts(page, expected: dict[str, str]) -> None:
    """On the model's page, each version's row carries its ``audit.verdict`` tag, visible, with its value."""
    for version, verdict in expected.items():
        row = page.get_by_role("row").filter(has=page.get_by_role("link", name=f"Version {version}", exact=True))
        expect(row).to_have_count(1)
        tag = row.locator("[role='status'][title='audit.verdict']")  # MLflow's key-value tag chip
        expect(tag).to_be_visible()
        expect(tag).to_have_text(f"audit.verdict: {verdict}")


def test_the_two_audits_compare_side_by_side(audited, mlflow_ui, browser, shots):
    world, summaries = audited
    client = make_client(world.tracking_uri)
    runs = [client.get_run(summaries[v]["run_id"]) for v in ("1", "2")]
    assert runs[0].data.metrics.keys() == runs[1].data.metrics.keys()  # the plan's keys are stable across versions

    with reviewer_page(browser, mlflow_ui) as page:
        route = compare_runs_route([r.info.run_id for r in runs], [r.info.experiment_id for r in runs])
        page.goto(ui_url(mlflow_ui, route))
        expect(page.get_by_role("heading", name="Comparing 2 Runs from 1 Experiment")).to_be_visible()
        assert compare_page_row(page, "Run ID:") == [r.info.run_id for r in runs]
        assert compare_page_row(page, "Run Name:") == [r.info.run_name for r in runs] == [f"audit {MODEL} v1", f"audit {MODEL} v2"]
        assert compare_page_row(page, "audit.verdict") == [summaries["1"]["verdict"], summaries["2"]["verdict"]]
        shots.take(page, "compare_runs")

        shown = compare_page_metrics(page)
        page.get_by_role("switch", name="Metrics - Show diff only").scroll_into_view_if_needed()
        shots.take(page, "compare_runs_metrics")

    assert set(shown) == set(runs[0].data.metrics), "the Metrics grid does not list exactly the runs' metric keys"
    for key, values in shown.items():
        assert values == [format_metric(r.data.metrics[key]) for r in runs], key  # one value per run, as stored
        assert "NaN" not in values and "" not in values, key


def test_the_report_renders_with_its_figures(audited, mlflow_ui, browser, shots, tmp_path):
    world, summaries = audited
    client = make_client(world.tracking_uri)
    with reviewer_page(browser, mlflow_ui) as page:
        for version, summary in summaries.items():
            run = client.get_run(summary["run_id"])
            artifacts = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / version)))
            figures = {f"data:image/png;base64,{base64.b64encode(p.read_bytes()).decode('ascii')}": p.relative_to(artifacts).as_posix()
                       for p in sorted(artifacts.rglob("*.png"))}  # fmt: skip
            assert figures, "the plan's audits draw figures"

            page.goto(ui_url(mlflow_ui, f"experiments/{run.info.experiment_id}/runs/{run.info.run_id}/artifacts/audit_report.html"))
            frame = html_artifact_frame(page)
            heading = frame.get_by_role("heading", level=1)
            expect(heading).to_have_text(f"Audit of {MODEL} v{version} {summary['verdict']}")
            expect(heading).to_be_visible()
            images = images_in(frame)
            assert sorted(figures[i["src"]] for i in images) == sorted(figures.values()), "the report shows exactly the run's figures"
            for image in images:
                name = figures[image["src"]]
                assert image["naturalWidth"] > 0 and image["naturalHeight"] > 0, f"{name} did not decode"
                assert image["shownWidth"] >= 0.6 * image["naturalWidth"], f"{name} is shrunk to {image['shownWidth']:.0f} px"
            shots.take(page, f"report_v{version}")
            frame.locator("img").first.scroll_into_view_if_needed()
            shots.take(page, f"report_v{version}_first_figure")
        assert not page.blocked_requests, f"the UI tried to fetch from elsewhere: {page.blocked_requests}"


def test_the_first_screens_lead_with_what_drove_the_verdict(world, drifted, mlflow_ui, browser, shots):
    """The drift run's report and run page, as a reviewer first sees them (no scrolling): the verdict per question and
    the findings come before any table, and say it is the data, not the model, that fails; the run page links to the
    version it audited, and the version's logged model lists the run."""
    client = make_client(world.tracking_uri)
    run = client.get_run(drifted["run_id"])
    verdict = ("FAIL \u2014 the data: FAIL (drift in 1 of 5 features); the model's behaviour: fine (accuracy 0.81 vs 0.853 "
               "on the reference data, predictions did not drift); its certainty: fine (ECE ")  # fmt: skip
    finding = "Drift failed: 1 of 5 features drifted (noise moved 2.8 sd), a classifier tells current rows from reference rows"
    with reviewer_page(browser, mlflow_ui) as page:
        page.goto(ui_url(mlflow_ui, f"experiments/{run.info.experiment_id}/runs/{run.info.run_id}/artifacts/audit_report.html"))
        frame = html_artifact_frame(page)
        expect(frame.locator("#verdict-by-question")).to_contain_text(verdict)
        shown, height = first_screen(page, frame), visible_height(page, frame)
        shots.take(page, "drift_report_first_screen")
        assert verdict in shown and finding in shown, f"the report's first screen shows: {shown[:1500]}"
        assert "the model's behaviour: FAIL" not in shown
        line, findings, table = (top_and_bottom(frame, s) for s in ("#verdict-by-question", "ol.findings", "table"))
        assert line[1] <= height and findings[0] < height, (line, findings, height)  # the line whole, the findings begun
        assert table[0] >= findings[1], "a table comes before the findings"

        page.goto(ui_url(mlflow_ui, f"experiments/{run.info.experiment_id}/runs/{run.info.run_id}"))
        link = page.get_by_role("link", name=f"{MODEL} v3", exact=True)
        expect(link).to_be_in_viewport()
        shown = first_screen(page)
        shots.take(page, "drift_run_first_screen")
        assert f"Audit of {MODEL} v3: FAIL {verdict.removeprefix('FAIL ')}" in shown, f"the run page's first screen: {shown[:1500]}"
        assert "Drift failed: 1 of 5 features drifted" in shown
        assert link.get_attribute("href") == f"#/models/{MODEL}/versions/3"
        # and the run's overview names it under "Registered models" (through the version's reference in this
        # experiment): a link to the version page beside the description's
        expect(page.locator("body")).to_contain_text(re.compile(rf"Registered models\s*{MODEL}\s*v3(?!\d)"))
        assert page.locator(f"a[href*='/models/{MODEL}/versions/3']").count() >= 2
        with page.context.expect_page() as opened:  # the UI opens description links in a new tab
            link.click()
        version_page = opened.value
        expect(version_page.get_by_role("heading", name="Version 3", exact=True)).to_be_visible()
        version_page.close()

        # the other way: the version's logged model lists the audit run (its checked metrics, on the current data)
        [logged], _ = audited_model_inputs(client, run)
        page.goto(ui_url(mlflow_ui, f"experiments/{logged.experiment_id}/models/{logged.model_id}"))
        expect(page.locator(f"a[href*='/runs/{run.info.run_id}']").first).to_have_text(run.info.run_name)  # Source run
        expect(page.locator(f"a[href*='/models/{MODEL}/versions/3']")).to_have_text(re.compile(rf"^\s*{MODEL}\s*v3\s*$"))
        shots.take(page, "drift_logged_model")
