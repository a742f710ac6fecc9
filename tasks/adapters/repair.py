"""Audits whose process died, and model versions that disagree with their audit's run: found, and repaired
through the writers (the sink ends a dead run, then ``version_state`` brings its version in line).

One rule for a dead audit, shared by the watcher (``watching.dead_audits``) and ``auditlens doctor``: its run is
RUNNING but its heartbeat (``audit.heartbeat_at``, written every ``audit.heartbeat_s`` seconds by the audit's own
process) is more than DEAD_AFTER_BEATS intervals old. A RUNNING run with no heartbeat at all was written by an
auditlens from before heartbeats: it is dead once it started longer ago than ``stale_after_s``. Nothing here needs
Prefect: the MLflow store (SQLite or a server) holds all the evidence.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tasks.adapters.errors import ConfigError, TrackingServerError
from tasks.adapters.mlflow_sink import HEARTBEAT_AT, HEARTBEAT_S, MlflowSink
from tasks.adapters.tracking import redact
from tasks.adapters.version_state import ATTEMPT, AUDIT_KEY, STATUS, attempt_of, experiment_ids, run_state

DEFAULT_HEARTBEAT_S = 30.0  # MlflowSettings.heartbeat_s's default: for a beat whose interval was never recorded
# Missed beats before a RUNNING run is dead: one late beat (a busy SQLite file, a short outage) is not a death.
DEAD_AFTER_BEATS = 4
ACTIVE = ("queued", "running")


def utc(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


@dataclass(frozen=True)
class RunFacts:
    """What liveness needs to know about an audit's run."""

    run_id: str
    status: str  # MLflow's: RUNNING, FINISHED, FAILED, KILLED
    started_at: float  # epoch seconds
    attempt: str | None  # the Prefect flow run it records (from auditlens.audit_key)
    heartbeat_at: float | None = None
    heartbeat_s: float | None = None
    label: str = ""  # "model v3", for messages

    @classmethod
    def of(cls, run: Any) -> RunFacts:
        tags = run.data.tags
        name, version = tags.get("auditlens.model_name"), tags.get("auditlens.model_version")
        return cls(run.info.run_id, run.info.status, (run.info.start_time or 0) / 1000, attempt_of(tags.get(AUDIT_KEY)),
                   _number(tags.get(HEARTBEAT_AT)), _number(tags.get(HEARTBEAT_S)),
                   f"{name} v{version}" if name and version else (tags.get("auditlens.model_uri") or ""))


def stopped(facts: RunFacts, now: float, stale_after_s: float) -> str | None:
    """Why a RUNNING audit run will never finish (its process is gone), or None while it may be alive."""
    if facts.status != "RUNNING":
        return None
    if facts.heartbeat_at is not None:
        interval = facts.heartbeat_s or DEFAULT_HEARTBEAT_S
        age = now - facts.heartbeat_at
        if age <= DEAD_AFTER_BEATS * interval:
            return None
        return (f"the audit process stopped: its last heartbeat was at {utc(facts.heartbeat_at)}, {age:.0f} s before "
                f"{utc(now)} (it beats every {interval:g} s)")
    age = now - facts.started_at
    if age <= stale_after_s:
        return None
    return (f"the audit process stopped: its run started at {utc(facts.started_at)}, {age / 3600:.1f} h before "
            f"{utc(now)}, and records no heartbeat (written by an auditlens without heartbeats; "
            f"dead after {stale_after_s / 3600:g} h)")


# --- auditlens doctor --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Finding:
    subject: str
    problem: str
    action: str  # what --repair does (or did)
    repaired: bool = False

    def line(self) -> str:
        outcome = f"repaired: {self.action}" if self.repaired else f"not repaired (--repair would {self.action})"
        return f"{self.subject}: {self.problem}; {outcome}"


def parse_duration(text: str) -> float:
    """90, 90s, 30m, 6h, 2d -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match or float(match.group(1)) <= 0:
        raise ConfigError(f"--stale-after {text!r} is not a duration",
                          "give a positive number of seconds, or one with a unit: 90s, 30m, 6h, 2d")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def open_store(tracking_uri: str) -> MlflowSink:
    """The store to examine. A SQLite file must exist: MLflow would create an empty store and report it healthy."""
    if tracking_uri.startswith("sqlite:///"):
        database = Path(tracking_uri.removeprefix("sqlite:///")).expanduser()
        if not database.is_file():
            raise TrackingServerError(f"no MLflow store at {database}",
                                      "pass the tracking URI of an existing store, e.g. sqlite:////abs/path/mlflow.db")
    elif not tracking_uri.startswith(("http://", "https://")):
        raise ConfigError(f"unsupported tracking URI {redact(tracking_uri)}",
                          "pass sqlite:////abs/path/mlflow.db or the URL of an MLflow server, e.g. http://127.0.0.1:5000")
    return MlflowSink(tracking_uri, outage_timeout_s=0)  # one try per call: a doctor reports, it does not wait


def running_audit_runs(sink: MlflowSink) -> list:
    """Every RUNNING run that records an audit (it carries auditlens.audit_key), in every active experiment."""
    runs = []
    ids = experiment_ids(sink.client)
    for start in range(0, len(ids), 100):
        token = None
        while True:
            page = sink.client.search_runs(ids[start : start + 100], filter_string="attributes.status = 'RUNNING'",
                                           max_results=1000, page_token=token)
            runs.extend(r for r in page if AUDIT_KEY in r.data.tags)
            token = getattr(page, "token", None)
            if not token:
                break
    return runs


def all_versions(client: Any) -> list:
    versions, token = [], None
    while True:
        page = client.search_model_versions(max_results=1000, page_token=token)
        versions.extend(page)
        token = getattr(page, "token", None)
        if not token:
            return versions


def examine(sink: MlflowSink, *, stale_after_s: float, repair: bool, now: float | None = None) -> list[Finding]:
    """Dead audit runs (ended KILLED with the reason when ``repair``), then versions whose queued/running state
    names a run that has ended or died (brought in line with the run, which the flow writes first)."""
    from mlflow.exceptions import MlflowException

    now = time.time() if now is None else now
    findings, dead = [], {}
    for run in running_audit_runs(sink):
        facts = RunFacts.of(run)
        why = stopped(facts, now, stale_after_s)
        if why is None:
            continue
        dead[facts.run_id] = why
        if repair:
            sink.end_dead_run(facts.run_id, why, "KILLED")  # False when it ended meanwhile: nothing left to do
        findings.append(Finding(f"run {facts.run_id} ({facts.label or 'audit'})", f"RUNNING, but {why}",
                                "end the run KILLED with that reason", repair))
    for mv in all_versions(sink.client):
        tags, name, version = mv.tags or {}, mv.name, str(mv.version)
        status, run_id = tags.get(STATUS), tags.get("audit.run_id")
        if status not in ACTIVE or not run_id:
            continue
        subject = f"version {name} v{version}"
        try:
            run = sink.client.get_run(run_id)
        except MlflowException:
            reason = f"its audit's run {run_id} no longer exists"
            if repair:
                sink.versions.mark_dead(name, version, None, reason, flow_run_id=tags.get(ATTEMPT))
            findings.append(Finding(subject, f"says {status}, but {reason}", "mark it failed with that reason", repair))
            continue
        state = run_state(run)
        if status == "queued" and state.attempt and tags.get(ATTEMPT) not in (None, state.attempt):
            continue  # queued for a new attempt; the run it still names is the previous one
        if run.info.status == "RUNNING":
            if run_id in dead and not repair:
                findings.append(Finding(subject, f"says {status}, but its run {run_id} is dead: {dead[run_id]}",
                                        "mark it failed with that reason, once the run is ended"))
            continue
        if status == state.status:
            continue
        problem = f"says {status}, but its run {run_id} ended {run.info.status}"
        if repair:
            sink.versions.sync_version(name, version, run_id)
        findings.append(Finding(subject, problem, f"mark it {state.status}, as its run says", repair))
    return findings
