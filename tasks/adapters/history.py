"""The history of a deployed model, read from MLflow: its last audits as records for ``audits.rendering.history``.

A history is of a model (``models:/NAME``: every audit of every version) or of an alias (``models:/NAME@ALIAS``: the
audits of whatever version the alias pointed at, as scheduled audits record it). The page and its figures are
written to one ``history`` run per model or alias in the audits' experiment (``MlflowSink.record_history``), updated
at the end of every scheduled audit and by ``auditlens history``.
"""

from __future__ import annotations

import json
import re
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from audits.rendering.history import HistoryRecord, estimated_series, findings, render_history
from tasks.adapters.errors import ConfigError

AS_OF = "audit.as_of"  # on an audit run: the day (ISO date or date-time, UTC) its current data speaks for
KIND, HISTORY_OF = "auditlens.kind", "auditlens.history_of"  # on a history run: 'history', and models:/NAME[@ALIAS]
CHECKS = "checks.json"  # on an audit run: every check with its bounds (MlflowSink.record)


def history_target(uri: str) -> tuple[str, str | None]:
    """(name, alias or None) of ``models:/NAME`` or ``models:/NAME@ALIAS``."""
    match = re.fullmatch(r"models:/([^/@]+)(?:@([^/@]+))?", uri.strip())
    if match is None:
        raise ConfigError(f"{uri!r} names no model or alias to write the history of",
                          "give models:/NAME (every audit of the model) or models:/NAME@ALIAS (the audits of that alias)")
    return match.group(1), match.group(2)


def history_uri(name: str, alias: str | None) -> str:
    return f"models:/{name}@{alias}" if alias else f"models:/{name}"


def as_of(run: Any) -> str:
    """When the run's audit speaks for: its ``audit.as_of`` tag, else its start (UTC, ISO)."""
    tagged = run.data.tags.get(AS_OF)
    if tagged:
        return tagged
    return datetime.fromtimestamp(run.info.start_time / 1000, tz=timezone.utc).isoformat(timespec="seconds")


def audit_runs(client: Any, experiment_id: str, name: str, alias: str | None, last: int) -> list[Any]:
    """The finished audit runs of the model (of the alias, when given), oldest first by ``as_of``, at most ``last``."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=f"tags.`auditlens.model_name` = '{name}'",
                                  max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            break
    wanted = history_uri(name, alias)
    runs = [r for r in runs if r.info.status == "FINISHED" and r.data.tags.get("audit.verdict")
            and r.data.tags.get(KIND) != "history"
            and (alias is None or r.data.tags.get("auditlens.model_uri") == wanted)]
    runs.sort(key=lambda r: (as_of(r), r.info.start_time))
    return runs[-last:] if last else runs


def _checks(client: Any, run: Any, folder: Path) -> list[dict[str, Any]]:
    """The run's checks: its checks.json, else each audit's result.json (runs recorded before checks.json existed)."""
    try:
        path = client.download_artifacts(run.info.run_id, CHECKS, str(folder))
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except Exception:  # noqa: BLE001 (an older run: read its audits' results)
        pass
    checks = []
    for tag in run.data.tags:
        match = re.fullmatch(r"audit\.(.+)\.verdict", tag)
        if match is None:
            continue
        try:
            path = client.download_artifacts(run.info.run_id, f"{match.group(1)}/result.json", str(folder))
            checks += json.loads(Path(path).read_text(encoding="utf-8")).get("checks", [])
        except Exception:  # noqa: BLE001 (a result that was not written: no checks from it)
            continue
    return checks


def collect_history(client: Any, experiment_id: str, name: str, alias: str | None, last: int = 30) -> list[HistoryRecord]:
    records = []
    with tempfile.TemporaryDirectory(prefix="auditlens-history-") as tmp:
        for i, run in enumerate(audit_runs(client, experiment_id, name, alias, last)):
            folder = Path(tmp) / str(i)
            folder.mkdir()
            records.append(HistoryRecord(
                run_id=run.info.run_id, as_of=as_of(run), version=run.data.tags.get("auditlens.model_version", "?"),
                verdict=run.data.tags.get("audit.verdict", "?"), metrics=dict(run.data.metrics),
                checks=_checks(client, run, folder), trigger=run.data.tags.get("auditlens.trigger", ""),
                link=f"#/experiments/{experiment_id}/runs/{run.info.run_id}"))
    return records


def build_history(client: Any, experiment_id: str, uri: str, last: int = 30) -> tuple[str, list[HistoryRecord]]:
    """The page and the records it was drawn from."""
    name, alias = history_target(uri)
    records = collect_history(client, experiment_id, name, alias, last)
    title = f"History of {history_uri(name, alias)}: the last {len(records)} audit(s)"
    return render_history(title, records), records


def find_history_run(client: Any, experiment_id: str, uri: str) -> str | None:
    """The id of the history run of ``uri`` in the experiment, if one was written."""
    found = client.search_runs([experiment_id], filter_string=f"tags.`{KIND}` = 'history' and tags.`{HISTORY_OF}` = '{uri}'",
                               max_results=1)
    return found[0].info.run_id if found else None


def history_summary(uri: str, records: list[HistoryRecord]) -> tuple[str, dict[str, float]]:
    """The history run's description (its findings, in Markdown) and metrics (the latest figures, one step per update)."""
    lines = [f"**History of {uri}**: the last {len(records)} audit(s); the page is the artifact `history.html`.", ""]
    lines += [f"- {sentence}" for sentence in findings(records)]
    metrics = {"history.audits": float(len(records)),
               "history.not_passed": float(sum(r.verdict != "PASS" for r in records))}
    estimated = estimated_series(records)
    if estimated is not None and records:
        _, headline, series = estimated
        metrics[f"history.estimated.{headline}"] = float(series["estimate"][-1])
    return "\n".join(lines), metrics


def write_history(sink: Any, experiment_id: str, uri: str, last: int = 30) -> tuple[str, str, list[HistoryRecord], str]:
    """``uri``'s history over its last ``last`` audits, drawn and written to its history run through ``sink`` (an
    ``MlflowSink``: its client waits out an outage): (the run's id, the page, the records, the description)."""
    page, records = build_history(sink.client, experiment_id, uri, last)
    if not records:
        raise ConfigError(f"no finished audit of {uri} in the audits' experiment (id {experiment_id})",
                          "audit the model first (auditlens audit), or name the alias its scheduled audits use")
    summary, metrics = history_summary(uri, records)
    return sink.record_history(experiment_id, uri, page, summary, metrics), page, records, summary
