"""The only module that writes to MLflow.

Everything goes through ``MlflowClient`` with an explicit run id: MLflow's fluent active run is
thread-local, and Prefect runs tasks in threads, where ``mlflow.log_*`` would silently start stray
runs. Every write here is idempotent (same keys, same files, metrics stamped with the run's start
time so a repeated batch is deduplicated by the store), so a retried write cannot duplicate anything;
the manifest is written last and marks the record complete.

When the tracking server goes away, each call is retried with exponential backoff for up to
``outage_timeout_s`` (on top of MLflow's own short HTTP retries); past that the error names the
server, the outage and the fix.

Audit state on a model version (``audit.status`` queued / running / done / failed and its fields) has several
writers: the trigger (watcher, webhook), the audit flow, the watcher's repairs, ``auditlens doctor``. MLflow has
no compare-and-set and no batch for version tags, so every writer goes through one protocol here:

- the audit's run is the source of truth for an attempt that opened one: the flow writes the run's state (its
  ``audit.status`` tag and its run status) before it writes the version, and a version write projects one
  state (``apply_state``): outcome fields first, ``audit.status`` last, so a new status never shows before its
  fields;
- an attempt is the Prefect flow run (``audit.prefect_flow_run_id``; the run's ``auditlens.audit_key`` is
  ``prefect:<id>``); no writer sets an attempt back (queued < running < done | failed); a new attempt may
  follow a finished one;
- a trigger's "queued" can still land after the flow's later state (it read the version before the flow
  wrote): the trigger then re-reads the run and re-applies what it overwrote (``settle``);
- the previous audit's verdict, error and run move to ``audit.previous_*`` when the next audit's flow first
  writes (running, or failed on bad input): they never sit beside a newer status as if they were its own.
"""

from __future__ import annotations

import getpass
import hashlib
import html
import json
import logging
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audits.core.result import AuditResult, Verdict
from tasks.adapters.tracking import redact  # the one redaction; flows and tasks import it from here too

logger = logging.getLogger(__name__)
TABLE_TAG = "mlflow.loggedArtifacts"  # how MLflow's own log_table lists tables for the UI's comparison view
MAX_BATCH = {"metrics": 1000, "params": 100, "tags": 100}

AUDIT_KEY = "auditlens.audit_key"  # on the run: prefect:<flow run id>, the attempt it records
STATUS, ATTEMPT = "audit.status", "audit.prefect_flow_run_id"
RANK = {"queued": 0, "running": 1, "done": 2, "failed": 2}
OUTCOME = ("audit.run_id", "audit.verdict", "audit.error")  # what one audit concluded; archived as audit.previous_*
PREVIOUS = {key: key.replace("audit.", "audit.previous_", 1) for key in OUTCOME}
# An attempt that failed before any run opened (bad input, or dead while queued) has no run to be its source of
# truth; this tag stands in for it: the attempt whose failure audit.error describes. Triggers never write it.
RUNLESS_FAILURE = "audit.failed_flow_run_id"
HEARTBEAT_AT, HEARTBEAT_S = "audit.heartbeat_at", "audit.heartbeat_s"  # on the run: epoch seconds, the interval
SETTLE_ROUNDS = 8  # each round follows one change of the run's state; an audit has at most three


@dataclass(frozen=True)
class AuditRun:
    run_id: str
    experiment_id: str
    experiment_name: str
    tracking_uri: str
    model_name: str | None = None
    model_version: str | None = None
    start_ms: int = 0  # every metric of the audit carries this timestamp: re-logging is a no-op
    outage_timeout_s: float = 120.0
    audit_key: str | None = None  # prefect:<flow run id>: the attempt, on the version as audit.prefect_flow_run_id

    @property
    def ui_path(self) -> str:
        return f"#/experiments/{self.experiment_id}/runs/{self.run_id}"


def _chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _colspec_type(dtype: Any) -> str:
    import pandas as pd

    if pd.api.types.is_bool_dtype(dtype):
        return "boolean"
    if pd.api.types.is_integer_dtype(dtype):
        return "long"
    if pd.api.types.is_float_dtype(dtype):
        return "double"
    return "string"


def is_outage(exc: BaseException) -> bool:
    """A failure to reach the tracking server (as opposed to a request the server refused)."""
    import requests

    if isinstance(exc, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError)):
        return True
    text = str(exc)
    return any(marker in text for marker in ("Max retries exceeded", "Connection refused", "Failed to establish",
                                             "RemoteDisconnected", "Connection aborted", "TEMPORARILY_UNAVAILABLE"))


class ResilientClient:
    """MlflowClient whose calls wait out a tracking-server outage, with exponential backoff, up to a bound."""

    def __init__(self, client: Any, outage_timeout_s: float, first_delay_s: float = 0.5, max_delay_s: float = 10.0) -> None:
        self._client, self._bound, self._first, self._max = client, outage_timeout_s, first_delay_s, max_delay_s

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            deadline, delay = time.monotonic() + self._bound, self._first
            while True:
                try:
                    return attribute(*args, **kwargs)
                except Exception as exc:
                    if not is_outage(exc):
                        raise
                    if time.monotonic() + delay > deadline:
                        from tasks.adapters.errors import TrackingServerError

                        raise TrackingServerError(
                            f"MLflow tracking server {redact(str(self._client.tracking_uri))} unreachable for "
                            f"{self._bound:g} s while calling {name} ({type(exc).__name__})",
                            "bring the server back (the audit's run is ended FAILED or reaped by the watcher once it "
                            "answers again), or raise mlflow.outage_timeout_s",
                        ) from None
                    logger.warning("MLflow unreachable during %s; retrying in %.1f s", name, delay)
                    time.sleep(delay)
                    delay = min(delay * 2, self._max)

        return call


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (containers)
        return "auditlens"


def _text(value: Any, limit: int = 5000) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def attempt_of(audit_key: str | None) -> str | None:
    return audit_key.removeprefix("prefect:") if audit_key and audit_key.startswith("prefect:") else None


@dataclass(frozen=True)
class VersionState:
    """What a model version says about one audit: its status, attempt and outcome."""

    status: str
    attempt: str | None = None  # the Prefect flow run id
    run_id: str | None = None
    verdict: str | None = None
    error: str | None = None

    def outcome(self) -> dict[str, str | None]:
        """The outcome tags of this state; None: the tag must be absent."""
        runless = self.status == "failed" and self.run_id is None and self.attempt is not None
        return {"audit.run_id": self.run_id, "audit.verdict": self.verdict,
                "audit.error": None if self.error is None else _text(self.error),
                RUNLESS_FAILURE: self.attempt if runless else None}

    def shown_by(self, tags: dict[str, str]) -> bool:
        return (tags.get(STATUS) == self.status and all(tags.get(k) == v for k, v in self.outcome().items())
                and (self.attempt is None or tags.get(ATTEMPT) == self.attempt))

    def named_by(self, tags: dict[str, str]) -> bool:
        """The version still describes this audit, not another attempt that took the version over."""
        if self.attempt is None or tags.get(ATTEMPT) in (None, self.attempt):
            return True
        # versions written before audits recorded their attempt on opening a run: a version running this run is its
        return tags.get(STATUS) == "running" and self.run_id is not None and tags.get("audit.run_id") == self.run_id


def run_state(run: Any) -> VersionState:
    """The state an audit's run records. The flow writes it there (status tag, then run status) before the version."""
    tags, status = run.data.tags, run.info.status
    said = tags.get(STATUS)
    if status in ("FAILED", "KILLED"):
        state = "failed"
    elif status == "FINISHED":
        state = said if said in ("done", "failed") else "done"
    else:  # RUNNING (or SCHEDULED): the tags lead the run status by one call
        state = said if said in ("running", "done", "failed") else "running"
    error = (tags.get("audit.error") or f"its MLflow run ended {status}") if state == "failed" else None
    verdict = tags.get("audit.verdict") if state == "done" else None
    return VersionState(state, attempt_of(tags.get(AUDIT_KEY)), run.info.run_id, verdict, error)


class Heartbeat:
    """Proof of life on an audit's run: ``audit.heartbeat_at`` (epoch seconds) every ``interval_s`` from a daemon
    thread, the interval recorded once as ``audit.heartbeat_s``.

    A process that is SIGKILLed (an OOM kill, a lost container) ends nothing: its run stays RUNNING. Only the stopped
    heartbeat tells, so the watcher and ``auditlens doctor`` call a RUNNING run dead once its heartbeat is a few
    intervals old (``tasks.adapters.repair``). Beats use their own client, outside the sink's outage backoff: a
    beat that fails is logged and tried again sooner, and never holds up the audit.
    """

    def __init__(self, tracking_uri: str, run_id: str, interval_s: float) -> None:
        self.tracking_uri, self.run_id, self.interval_s = tracking_uri, run_id, float(interval_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: Any = None
        self._interval_recorded = False
        self._failing = False

    def start(self) -> Heartbeat:
        from tasks.adapters.tracking import make_client

        self._client = make_client(self.tracking_uri)
        self.beat()  # at once: the run has a heartbeat before the audit's work starts
        self._thread = threading.Thread(target=self._loop, name=f"auditlens-heartbeat-{self.run_id[:8]}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)  # a beat stuck on a dead server must not hold up the end of the audit

    def __enter__(self) -> Heartbeat:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def beat(self) -> bool:
        from mlflow.entities import RunTag

        tags = [RunTag(HEARTBEAT_AT, f"{time.time():.1f}")]
        if not self._interval_recorded:
            tags.append(RunTag(HEARTBEAT_S, f"{self.interval_s:g}"))
        try:
            self._client.log_batch(self.run_id, tags=tags)
        except Exception as exc:  # an outage, a locked SQLite file: the next beat may pass
            if not self._failing:
                logger.warning("heartbeat of run %s not recorded (%s); retrying", self.run_id, type(exc).__name__)
            self._failing = True
            return False
        self._interval_recorded, self._failing = True, False
        return True

    def _loop(self) -> None:
        wait = self.interval_s
        while not self._stop.wait(wait):
            wait = self.interval_s if self.beat() else min(self.interval_s, 5.0)


class MlflowSink:
    def __init__(self, tracking_uri: str, outage_timeout_s: float = 120.0) -> None:
        from tasks.adapters.tracking import make_client

        self.tracking_uri = tracking_uri
        self.client = ResilientClient(make_client(tracking_uri), outage_timeout_s)

    # --- runs -----------------------------------------------------------------------------------
    def experiment_id(self, name: str, artifact_location: str | None = None) -> str:
        from mlflow.exceptions import MlflowException

        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            if experiment.lifecycle_stage == "deleted":
                self.client.restore_experiment(experiment.experiment_id)
            return experiment.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=artifact_location)
        except MlflowException:  # created concurrently by another audit
            return self.client.get_experiment_by_name(name).experiment_id

    def open_run(
        self,
        *,
        experiment: str,
        run_name: str,
        audit_key: str,
        tags: dict[str, str],
        params: dict[str, Any],
        model_name: str | None,
        model_version: str | None,
        artifact_location: str | None = None,
    ) -> AuditRun:
        """Create the audit's run, or find the one this audit (``audit_key``) already created."""
        experiment_id = self.experiment_id(experiment, artifact_location)
        # Search before create: a create whose answer was lost to an outage must not make a second run.
        existing = self.client.search_runs(
            [experiment_id], filter_string=f"tags.`auditlens.audit_key` = '{audit_key}'", max_results=1
        )
        if existing:
            run = existing[0]
            if run.info.status != "RUNNING" or run.data.tags.get(STATUS) != "running":
                # the same flow run audits again (a rerun): the run, the source of truth, is live again first
                self._log_batch(run.info.run_id, tags={STATUS: "running"})
                self.client.update_run(run.info.run_id, status="RUNNING")
        else:
            origin = {"mlflow.source.name": "auditlens", "mlflow.source.type": "JOB", "mlflow.user": _user()}
            run = self.client.create_run(
                experiment_id, run_name=run_name,
                tags={**origin, **tags, AUDIT_KEY: audit_key, STATUS: "running"},
            )
        self._log_batch(run.info.run_id, params=params)  # identical params again are accepted by MLflow
        audit_run = AuditRun(run.info.run_id, experiment_id, experiment, self.tracking_uri, model_name, model_version,
                             run.info.start_time, self.client._bound, audit_key)
        self._project(audit_run, VersionState("running", attempt_of(audit_key), audit_run.run_id))
        return audit_run

    def _project(self, run: AuditRun, state: VersionState) -> None:
        if run.model_name is not None and run.model_version is not None:
            self.apply_state(run.model_name, run.model_version, state)

    def tag_version(self, run: AuditRun, tags: dict[str, str]) -> None:
        if run.model_name is None or run.model_version is None:
            return
        for key, value in tags.items():
            self.client.set_model_version_tag(run.model_name, run.model_version, key, _text(value))

    def log_params(self, run: AuditRun, params: dict[str, Any]) -> None:
        self._log_batch(run.run_id, params=params)

    def _log_batch(self, run_id: str, metrics: dict[str, float] | None = None, params: dict[str, Any] | None = None,
                   tags: dict[str, str] | None = None, timestamp_ms: int | None = None) -> None:
        from mlflow.entities import Metric, Param, RunTag

        now = timestamp_ms or int(time.time() * 1000)
        for chunk in _chunks(sorted((metrics or {}).items()), MAX_BATCH["metrics"]):
            self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in chunk])
        for chunk in _chunks(sorted((params or {}).items()), MAX_BATCH["params"]):
            self.client.log_batch(run_id, params=[Param(k, _text(v, 6000)) for k, v in chunk])
        for chunk in _chunks(sorted((tags or {}).items()), MAX_BATCH["tags"]):
            self.client.log_batch(run_id, tags=[RunTag(k, _text(v)) for k, v in chunk])

    def link_inputs(self, run: AuditRun, datasets: list[dict[str, Any]], model_id: str | None) -> None:
        """Show the audited data and model as the run's inputs (the UI's Datasets and Models columns).

        Each dataset: {"name", "frame", "source", "target", "digest", "context"}. The entity is built
        directly: ``mlflow.data.from_pandas`` infers a schema value by value (0.3 s for 20,000 x 30) and
        warns about integer columns on every call.
        """
        from mlflow.entities import Dataset, DatasetInput, InputTag, LoggedModelInput

        inputs = []
        for item in datasets:
            frame = item["frame"]
            schema = {"mlflow_colspec": [{"name": str(c), "type": _colspec_type(frame[c].dtype)} for c in frame.columns]}
            entity = Dataset(
                name=item["name"],
                digest=item["digest"][:36],
                source_type="local",
                source=json.dumps({"uri": item["source"]}),
                schema=json.dumps(schema),
                profile=json.dumps({"num_rows": len(frame), "num_elements": int(frame.size), "target": item["target"]}),
            )
            inputs.append(DatasetInput(entity, tags=[InputTag("mlflow.data.context", item["context"])]))
        models = [LoggedModelInput(model_id)] if model_id else None
        self.client.log_inputs(run.run_id, datasets=inputs, models=models)

    # --- the record -----------------------------------------------------------------------------
    def record(self, run: AuditRun, results: list[AuditResult], report_html: str, manifest: dict[str, Any]) -> dict[str, Any]:
        """Log metrics, tags and every artifact; the manifest (with each file's sha256) goes last."""
        metrics = {k: v for r in results for k, v in r.metrics.items()}
        tags = {f"audit.{r.audit}.verdict": r.verdict.value for r in results}
        tables: list[dict[str, str]] = []
        files: dict[str, dict[str, Any]] = {}
        with tempfile.TemporaryDirectory(prefix="auditlens-record-") as tmp:
            root = Path(tmp)
            for result in results:
                folder = root / result.audit
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "result.json").write_text(json.dumps(result.to_dict(with_content=False), indent=2, default=str))
                for artifact in result.artifacts:
                    path = folder / artifact.name
                    if artifact.kind == "figure":
                        path.write_bytes(artifact.content)
                    elif artifact.kind == "table":
                        artifact.content.to_json(path, orient="split", index=False, date_format="iso")
                        tables.append({"path": f"{result.audit}/{artifact.name}", "type": "table"})
                    elif artifact.kind == "html":
                        path.write_text(artifact.content, encoding="utf-8")
                    elif artifact.kind == "fragment":  # a snippet: wrapped so that it opens as a page too
                        path.write_text(f'<!doctype html><meta charset="utf-8"><title>{html.escape(artifact.title or artifact.name)}</title>'
                                        f"{artifact.content}", encoding="utf-8")
                    else:
                        path.write_text(json.dumps(artifact.content, indent=2, default=str), encoding="utf-8")
            (root / "audit_report.html").write_text(report_html, encoding="utf-8")
            for path in sorted(p for p in root.rglob("*") if p.is_file()):
                data = path.read_bytes()
                files[path.relative_to(root).as_posix()] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            self.client.log_artifacts(run.run_id, tmp)
        if tables:
            tags[TABLE_TAG] = json.dumps(tables)
        self._log_batch(run.run_id, metrics=metrics, tags=tags, timestamp_ms=run.start_ms or None)
        complete = {**manifest, "artifacts": files, "complete": True}
        self.client.log_dict(run.run_id, complete, "manifest.json")
        return complete

    def close(self, run: AuditRun, verdict: Verdict, note: str, promote_alias: str | None = None) -> None:
        self._log_batch(run.run_id, tags={"audit.verdict": verdict.value, STATUS: "done", "mlflow.note.content": note})
        self.client.set_terminated(run.run_id, "FINISHED")
        self._project(run, VersionState("done", attempt_of(run.audit_key), run.run_id, verdict=verdict.value))
        if promote_alias and verdict is Verdict.PASS and run.model_name and run.model_version:
            self.client.set_registered_model_alias(run.model_name, promote_alias, run.model_version)
            self.tag_version(run, {"audit.promoted_to": promote_alias})

    def fail(self, run: AuditRun, reason: str) -> None:
        """End the run FAILED with the reason; the version says 'failed'. Never leaves a run RUNNING."""
        try:
            self._log_batch(run.run_id, tags={"audit.status": "failed", "audit.error": reason,
                                              "mlflow.note.content": f"**Audit failed**\n\n```\n{_text(reason, 4000)}\n```"})
        finally:
            self.client.set_terminated(run.run_id, "FAILED")
            self._project(run, VersionState("failed", attempt_of(run.audit_key), run.run_id, error=reason))

    # --- audit state on model versions: the protocol of the module docstring ------------------------
    def version_tags(self, name: str, version: str) -> dict[str, str]:
        return dict(self.client.get_model_version(name, version).tags or {})

    def apply_state(self, name: str, version: str, state: VersionState) -> bool:
        """Write ``state`` on the version, unless that would set its attempt back. Order: the previous audit's
        outcome moves to audit.previous_* (when it is another audit's), fields this state lacks go, its fields are
        written, and ``audit.status`` comes last."""
        tags = self.version_tags(name, version)
        if state.attempt and tags.get(ATTEMPT) == state.attempt and RANK.get(tags.get(STATUS), -1) > RANK[state.status]:
            return False
        outcome = state.outcome()
        if state.run_id:
            own = tags.get("audit.run_id") == state.run_id
        else:
            own = state.attempt is not None and tags.get(RUNLESS_FAILURE) == state.attempt
        # Only while a verdict or an error is there to move: another writer may be half-way through this same move
        # (verdict moved and deleted, run id not yet replaced), and moving again would erase what it moved.
        if not own and (tags.get("audit.verdict") or tags.get("audit.error")):
            for key in OUTCOME:  # as one set: the previous_* tags always describe the same earlier audit
                if tags.get(key):
                    self.client.set_model_version_tag(name, version, PREVIOUS[key], tags[key])
                elif PREVIOUS[key] in tags:
                    self.client.delete_model_version_tag(name, version, PREVIOUS[key])
        for key in ("audit.verdict", "audit.error", RUNLESS_FAILURE, "audit.run_id"):  # never a verdict without its run
            if outcome[key] is None and key in tags:
                self.client.delete_model_version_tag(name, version, key)
        fields = {key: value for key, value in outcome.items() if value is not None}
        if state.attempt:
            fields[ATTEMPT] = state.attempt
        for key, value in fields.items():
            if tags.get(key) != value:
                self.client.set_model_version_tag(name, version, key, value)
        self.client.set_model_version_tag(name, version, STATUS, state.status)
        return True

    def mark_queued(self, name: str, version: str, attempt: int, flow_run_id: str, config_hash: str) -> str | None:
        """The trigger's write: the version is queued for ``flow_run_id``. Returns the status it settles on.

        ``run_deployment`` returns the same flow run to concurrent triggers, and a late one's "queued" can land
        after the audit has moved on; ``settle`` then re-applies the state the audit's run records."""
        tags = self.version_tags(name, version)
        if tags.get(ATTEMPT) == flow_run_id and tags.get(STATUS) in RANK:
            return tags[STATUS]  # queued already, or further along: writing would only set it back
        fields = {"audit.attempts": str(attempt), "audit.config_hash": config_hash, ATTEMPT: flow_run_id,
                  "audit.queued_at": f"{time.time():.0f}"}
        for key, value in fields.items():
            self.client.set_model_version_tag(name, version, key, value)
        self.client.set_model_version_tag(name, version, STATUS, "queued")  # last: queued shows with its fields
        return self.settle(name, version, flow_run_id)

    def settle(self, name: str, version: str, flow_run_id: str) -> str | None:
        """Re-apply what a "queued" may have overwritten: the run of ``flow_run_id`` (or its run-less failure) is
        read first, then the version; while the version shows less than the run, the run's state is written and
        both are read again. Converges: the flow writes each state on the run before the version, so a state this
        loop did not see on the run reaches the version after this loop's last write."""
        for _ in range(SETTLE_ROUNDS):
            run = self.find_audit_run(f"prefect:{flow_run_id}")
            tags = self.version_tags(name, version)
            if tags.get(ATTEMPT) != flow_run_id:
                return None  # another audit took the version over: its own writers keep it
            if run is not None:
                state = run_state(run)
            elif tags.get(RUNLESS_FAILURE) == flow_run_id:
                state = VersionState("failed", flow_run_id, error=tags.get("audit.error") or "the audit stopped before opening a run")
            else:
                return tags.get(STATUS)  # nothing of this attempt is past queued yet
            if state.shown_by(tags) or RANK.get(tags.get(STATUS), -1) > RANK[state.status]:
                return tags.get(STATUS)
            self.apply_state(name, version, state)
        logger.warning("%s v%s: audit state still moving after %d rounds; the watcher settles it", name, version, SETTLE_ROUNDS)
        return None

    def experiment_ids(self) -> list[str]:
        ids, token = [], None
        while True:
            page = self.client.search_experiments(max_results=1000, page_token=token)
            ids.extend(e.experiment_id for e in page)
            token = getattr(page, "token", None)
            if not token:
                return ids

    def find_audit_run(self, audit_key: str) -> Any | None:
        """The run of one audit attempt, in any experiment (the audit's config names the experiment, not the trigger)."""
        for chunk in _chunks(self.experiment_ids(), 100):
            runs = self.client.search_runs(chunk, filter_string=f"tags.`{AUDIT_KEY}` = '{audit_key}'", max_results=1)
            if runs:
                return runs[0]
        return None

    def mark_input_failed(self, name: str, version: str, flow_run_id: str, reason: str) -> bool:
        """An audit started by the watcher or the webhook (the version names its flow run) stopped on bad input before
        any run was opened: the version says 'failed' with the reason, so that the attempt counts. A version whose state
        another audit keeps (a CLI audit of a watched version, say) is left alone."""
        if self.version_tags(name, version).get(ATTEMPT) != flow_run_id:
            return False
        self.apply_state(name, version, VersionState("failed", flow_run_id, error=reason))
        return True

    def end_dead_run(self, run_id: str, reason: str, status: str = "KILLED") -> bool:
        """End a RUNNING audit run whose process is gone: the reason in audit.error, then the run status."""
        if self.client.get_run(run_id).info.status != "RUNNING":
            return False
        self._log_batch(run_id, tags={STATUS: "failed", "audit.error": reason,
                                      "mlflow.note.content": f"**Audit stopped**\n\n{_text(reason, 4000)}"})
        self.client.set_terminated(run_id, status)
        return True

    def sync_version(self, name: str, version: str, run_id: str) -> bool:
        """The version says what its audit's run says (the run is written first, so it is the one that is right)."""
        state = run_state(self.client.get_run(run_id))
        if not state.named_by(self.version_tags(name, version)):
            return False
        return self.apply_state(name, version, state)

    def mark_dead(self, name: str, version: str, run_id: str | None, reason: str, end_as: str = "FAILED",
                  flow_run_id: str | None = None) -> None:
        """An audit that will never finish: its run (if still RUNNING) ends ``end_as`` with the reason, then the
        version says 'failed' (what the run now says), unless another audit has taken the version over."""
        if run_id:
            self.end_dead_run(run_id, reason, end_as)
            self.sync_version(name, version, run_id)
            return
        state = VersionState("failed", flow_run_id, error=reason)
        if state.named_by(self.version_tags(name, version)):
            self.apply_state(name, version, state)

    def ensure_webhook(self, name: str, url: str, secret: str, events: list[str]) -> str:
        """One webhook named ``name`` delivering ``events`` to ``url`` (replaced if it pointed elsewhere)."""
        for hook in self.client.list_webhooks():
            if hook.name == name:
                if hook.url == url:
                    return hook.webhook_id
                self.client.delete_webhook(hook.webhook_id)
        return self.client.create_webhook(name, url, events=events, secret=secret,
                                          description="auditlens: audit every new model version").webhook_id

    # --- the registry (used by the demo) --------------------------------------------------------
    def register_sklearn_model(self, estimator: Any, *, name: str, experiment: str, input_example: Any,
                               params: dict[str, Any], description: str = "", artifact_location: str | None = None) -> str:
        """Save a scikit-learn model (cloudpickle: skops would need every tree type listed as trusted;
        loading handles both formats) and register it as a new version of ``name``."""
        import mlflow.sklearn
        from importlib.metadata import version as installed

        with tempfile.TemporaryDirectory(prefix="auditlens-model-") as tmp:
            path = Path(tmp) / "model"
            mlflow.sklearn.save_model(
                estimator,
                str(path),
                serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE,
                input_example=input_example,
                # stated, not inferred: inference imports the model in a subprocess, for seconds
                pip_requirements=[f"{p}=={installed(p)}" for p in ("scikit-learn", "pandas", "numpy", "cloudpickle")],
            )
            return self.register_model_files(path, name=name, experiment=experiment, params=params,
                                             description=description, artifact_location=artifact_location)

    def register_pytorch_model(self, module: Any, *, name: str, experiment: str, input_example: Any, classes: list,
                               params: dict[str, Any], description: str = "", artifact_location: str | None = None) -> str:
        """Save a PyTorch classifier and register it as a new version of ``name``.

        Pickle format (the module's class must be importable where it is loaded, as ours are from the installed
        package): MLflow's default, pt2 (torch.export), freezes eval mode and cannot switch dropout on again,
        which MC dropout and the gradient explainers need. ``metadata.auditlens`` records the classes and the
        input shape (C, H, W) for the loader."""
        import mlflow.pytorch
        from importlib.metadata import version as installed

        module = module.eval()
        with tempfile.TemporaryDirectory(prefix="auditlens-model-") as tmp:
            path = Path(tmp) / "model"
            mlflow.pytorch.save_model(
                module, str(path), serialization_format="pickle", input_example=input_example,
                metadata={"auditlens": {"classes": list(classes), "input_shape": list(input_example.shape[1:])}},
                pip_requirements=[f"torch=={installed('torch').split('+')[0]}", f"numpy=={installed('numpy')}"],
            )
            return self.register_model_files(path, name=name, experiment=experiment, params=params,
                                             description=description, artifact_location=artifact_location)

    def register_model_files(self, path: Path, *, name: str, experiment: str, params: dict[str, Any],
                             description: str = "", artifact_location: str | None = None) -> str:
        """Register a saved MLflow model folder as a new version of ``name``, through a training run and an
        MLflow 3 logged model. Client calls only: the fluent API would set process-wide tracking URIs (and
        MLFLOW_TRACKING_URI in the environment, which child processes then inherit)."""
        experiment_id = self.experiment_id(experiment, artifact_location)
        origin = {"mlflow.source.name": "auditlens", "mlflow.source.type": "LOCAL", "mlflow.user": _user()}
        run_id = self.client.create_run(experiment_id, run_name=f"train {name}", tags=origin).info.run_id
        try:
            self._log_batch(run_id, params=params)
            logged = self.client.create_logged_model(experiment_id, name="model", source_run_id=run_id)
            self.client.log_model_artifacts(logged.model_id, str(path))
            self.client.finalize_logged_model(logged.model_id, "READY")
            if not self.client.search_registered_models(filter_string=f"name = '{name}'"):
                self.client.create_registered_model(name)
            # the storage URI, not models:/m-...: a SQL registry would resolve that through the global tracking URI
            version = self.client.create_model_version(
                name, source=logged.artifact_location, run_id=run_id, model_id=logged.model_id, description=description
            ).version
        except BaseException:
            self.client.set_terminated(run_id, "FAILED")
            raise
        self.client.set_terminated(run_id, "FINISHED")
        return str(version)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(name, alias, version)
