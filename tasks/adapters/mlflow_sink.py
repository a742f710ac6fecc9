"""The audit's run in MLflow: its lifecycle (open, heartbeat, close, fail, end a dead one) and its record (params,
metrics, tags, artifacts, inputs). Audit runs are written here and nowhere else; the audit state on the model version
follows each change of the run's state through ``version_state`` (the run first: it is the source of truth).

Everything goes through ``MlflowClient`` with an explicit run id: MLflow's fluent active run is
thread-local, and Prefect runs tasks in threads, where ``mlflow.log_*`` would silently start stray
runs. Every write here is idempotent (same keys, same files, metrics stamped with the run's start
time so a repeated batch is deduplicated by the store), so a retried write cannot duplicate anything;
the manifest is written last and marks the record complete.

When the tracking server goes away, each call is retried with exponential backoff for up to
``outage_timeout_s`` (``tracking.ResilientClient``, on top of MLflow's own short HTTP retries); past that the
error names the server, the outage and the fix.
"""

from __future__ import annotations

import getpass
import hashlib
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
from tasks.adapters import signing
from tasks.adapters.tracking import ResilientClient, clipped, make_client
from tasks.adapters.version_state import AUDIT_KEY, STATUS, VersionState, VersionStates, attempt_of

logger = logging.getLogger(__name__)
TABLE_TAG = "mlflow.loggedArtifacts"  # how MLflow's own log_table lists tables for the UI's comparison view
REFERENCE_TAG = "auditlens.audited_model_id"  # on a reference logged model (``version_reference``): the model it stands for
MODEL_VERSIONS_TAG = "mlflow.modelVersions"  # on a logged model: the registered versions made from it (MLflow's key)
MAX_BATCH = {"metrics": 1000, "params": 100, "tags": 100}
HEARTBEAT_AT, HEARTBEAT_S = "audit.heartbeat_at", "audit.heartbeat_s"  # on the run: epoch seconds, the interval


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


def version_entry(name: str, version: str) -> dict[str, Any]:
    """One registered version as an entry of a logged model's ``mlflow.modelVersions`` tag, as MLflow writes it: the
    version a number (its UI reads either)."""
    return {"name": name, "version": int(version) if str(version).isdigit() else str(version)}


def _chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def fenced(text: str) -> str:
    """``text`` as a Markdown code block whose fence is longer than any run of backticks in it: a reason that quotes
    the data (a model's message, a column name) cannot close the block and reach the run description as Markdown or
    HTML."""
    import re

    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{text}\n{fence}"


def _colspec_type(dtype: Any) -> str:
    """MLflow's column type of a pandas dtype (or its name: 'int64', 'bool', 'str')."""
    import pandas as pd

    try:
        dtype = pd.api.types.pandas_dtype(dtype)
    except TypeError:
        return "string"
    if pd.api.types.is_bool_dtype(dtype):
        return "boolean"
    if pd.api.types.is_integer_dtype(dtype):
        return "long"
    if pd.api.types.is_float_dtype(dtype):
        return "double"
    return "string"


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (containers)
        return "auditlens"


def origin_tags(source_type: str) -> dict[str, str]:
    """Who wrote a run, as MLflow's UI shows it: auditlens, as a JOB (an audit) or LOCAL (a demo model's training)."""
    return {"mlflow.source.name": "auditlens", "mlflow.source.type": source_type, "mlflow.user": _user()}


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
        self.tracking_uri = tracking_uri
        self.client = ResilientClient.connect(tracking_uri, outage_timeout_s)

    @property
    def versions(self) -> VersionStates:
        """The audit state on model versions, through this sink's client: each change of a run's state is written on
        the run here first, then projected onto its version there."""
        return VersionStates(self.client)

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
                self.log_batch(run.info.run_id, tags={STATUS: "running"})
                self.client.update_run(run.info.run_id, status="RUNNING")
        else:
            run = self.client.create_run(
                experiment_id, run_name=run_name,
                tags={**origin_tags("JOB"), **tags, AUDIT_KEY: audit_key, STATUS: "running"},
            )
        self.log_batch(run.info.run_id, params=params)  # identical params again are accepted by MLflow
        audit_run = AuditRun(run.info.run_id, experiment_id, experiment, self.tracking_uri, model_name, model_version,
                             run.info.start_time, self.client.outage_timeout_s, audit_key)
        self._project(audit_run, VersionState("running", attempt_of(audit_key), audit_run.run_id))
        return audit_run

    def _project(self, run: AuditRun, state: VersionState) -> None:
        """The version follows its audit's run (written just before)."""
        if run.model_name is not None and run.model_version is not None:
            self.versions.apply_state(run.model_name, run.model_version, state)

    def log_params(self, run: AuditRun, params: dict[str, Any]) -> None:
        self.log_batch(run.run_id, params=params)

    def log_batch(self, run_id: str, metrics: dict[str, float] | None = None, params: dict[str, Any] | None = None,
                  tags: dict[str, str] | None = None, timestamp_ms: int | None = None, model_id: str | None = None,
                  dataset: tuple[str, str] | None = None, step: int = 0) -> None:
        """Values of a run, in batches within MLflow's limits; text values clipped to what MLflow accepts. With
        ``model_id``, the metrics are also the logged model's, measured on ``dataset`` (name, digest), as
        ``mlflow.models.evaluate`` links an evaluation's metrics to the model it evaluated; ``step``: the metrics'."""
        from mlflow.entities import Metric, Param, RunTag

        now = timestamp_ms or int(time.time() * 1000)
        name, digest = dataset or (None, None)
        for chunk in _chunks(sorted((metrics or {}).items()), MAX_BATCH["metrics"]):
            self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, step, model_id=model_id, dataset_name=name,
                                                          dataset_digest=digest) for k, v in chunk])
        for chunk in _chunks(sorted((params or {}).items()), MAX_BATCH["params"]):
            self.client.log_batch(run_id, params=[Param(k, clipped(v, 6000)) for k, v in chunk])
        for chunk in _chunks(sorted((tags or {}).items()), MAX_BATCH["tags"]):
            self.client.log_batch(run_id, tags=[RunTag(k, clipped(v)) for k, v in chunk])

    def link_inputs(self, run: AuditRun, datasets: list[dict[str, Any]], model_id: str | None) -> None:
        """Show the audited data and model as the run's inputs (the UI's Datasets and Models columns).

        Each dataset: {"name", "source", "target", "digest", "context", "schema" ([column, dtype] pairs), "rows",
        "elements"}, as the model's process describes the frames it read (``model_worker.describe_inputs``). The entity
        is built directly: ``mlflow.data.from_pandas`` infers a schema value by value (0.3 s for 20,000 x 30) and
        warns about integer columns on every call.
        """
        from mlflow.entities import Dataset, DatasetInput, InputTag, LoggedModelInput

        inputs = []
        for item in datasets:
            schema = {"mlflow_colspec": [{"name": str(c), "type": _colspec_type(dtype)} for c, dtype in item["schema"]]}
            entity = Dataset(
                name=item["name"],
                digest=item["digest"][:36],
                source_type="local",
                source=json.dumps({"uri": item["source"]}),
                schema=json.dumps(schema),
                profile=json.dumps({"num_rows": item["rows"], "num_elements": item["elements"], "target": item["target"]}),
            )
            inputs.append(DatasetInput(entity, tags=[InputTag("mlflow.data.context", item["context"])]))
        models = [LoggedModelInput(model_id)] if model_id else []
        if model_id and run.model_name and run.model_version:
            self.list_version_on_model(model_id, run.model_name, run.model_version)
            reference = self.version_reference(run, model_id)
            if reference:  # after the audited model: the first model input stays the model itself
                models.append(LoggedModelInput(reference))
        self.client.log_inputs(run.run_id, datasets=inputs, models=models or None)

    def version_reference(self, run: AuditRun, model_id: str) -> str | None:
        """A logged model in the audit run's own experiment that stands for the audited version: no files, type
        ``auditlens-reference``, tags naming the audited logged model and the version (``mlflow.modelVersions``).

        Why: MLflow 3.17's run page lists "Registered models" from its model inputs' ``mlflow.modelVersions`` tags,
        but looks the models up only in the run's own experiment (``search_logged_models(experiment_ids=[run's])``);
        the audited model lives in its training experiment, so without this the audit run's page says "None". One per
        audited logged model and experiment, found again by tag for later audits of the version. None when the model
        is already in the run's experiment (its own tag does the work) or the store refuses (only the listing is lost).
        """
        from mlflow.exceptions import MlflowException

        name, version = run.model_name, run.model_version
        try:
            if self.client.get_logged_model(model_id).experiment_id == run.experiment_id:
                return None
            found = self.client.search_logged_models([run.experiment_id], max_results=1,
                                                     filter_string=f"tags.`{REFERENCE_TAG}` = '{model_id}'")
            if found:
                return found[0].model_id
            entry = version_entry(name, version)
            reference = self.client.create_logged_model(
                run.experiment_id, name=f"{name}-v{version}", model_type="auditlens-reference",
                tags={REFERENCE_TAG: model_id, MODEL_VERSIONS_TAG: json.dumps([entry]),
                      "mlflow.note.content": f"Stands for {name} v{version} (logged model {model_id}) in this "
                                             "experiment, so that its audit runs' pages list the version; no files."})
            self.client.finalize_logged_model(reference.model_id, "READY")
            return reference.model_id
        except MlflowException as exc:
            logger.warning("no reference to %s v%s in experiment %s (%s): the audit run's page in the MLflow UI will "
                           "not list the version", name, version, run.experiment_id, exc)
            return None

    def list_version_on_model(self, model_id: str, name: str, version: str) -> bool:
        """Make sure the logged model names the registered version made from it (tag ``mlflow.modelVersions``, the
        record MLflow's server writes when a version is created from a logged model, ``server/handlers.py``). A client
        writing to a database directly (``MlflowClient.create_model_version`` on ``sqlite:///``) leaves it out, and the
        model's page in the UI then lists no version. Written only when the version is missing, beside those already
        listed; nothing else of the model or the version changes (the version's source run stays its training run). A
        store that refuses (permissions) costs only the listing. Returns whether the tag was written.

        What MLflow 3.17's UI does with it: the logged model's page shows the version under "Model versions". A run's
        page lists "Registered models" from its model inputs' tags too, but only of models in the run's own experiment
        (the lookup by id is behind a flag that is off): ``version_reference`` covers that."""
        from mlflow.exceptions import MlflowException

        entry = version_entry(name, version)
        try:
            listed = json.loads(self.client.get_logged_model(model_id).tags.get(MODEL_VERSIONS_TAG) or "[]")
            listed = listed if isinstance(listed, list) else []
            if any(isinstance(e, dict) and (e.get("name"), str(e.get("version"))) == (name, str(version)) for e in listed):
                return False
            self.client.set_logged_model_tags(model_id, {MODEL_VERSIONS_TAG: json.dumps([*listed, entry])})
        except (MlflowException, ValueError) as exc:
            logger.warning("logged model %s not tagged with version %s v%s (%s): its page in the MLflow UI will not list "
                           "the version", model_id, name, version, exc)
            return False
        return True

    # --- the record -----------------------------------------------------------------------------
    def record(self, run: AuditRun, results: list[AuditResult], report_html: str, manifest: dict[str, Any], *,
               model_id: str | None = None, dataset: tuple[str, str] | None = None) -> dict[str, Any]:
        """Log metrics, tags and every artifact; the manifest goes last: each file's sha256 and size, every metric value
        logged, signed with the key in the environment when there is one (``signing``), so that ``auditlens verify``
        can tell a changed file, tag or metric, and a rewritten manifest.

        With ``model_id`` (the audited logged model), the metrics the checks read (the figures the verdict rests on)
        are also the model's, measured on ``dataset`` (the current data's name and digest): the logged model's page
        then lists this run under Runs, beside its training run."""
        key = signing.signing_key()  # first: a key that cannot sign is refused before anything is written
        metrics = {k: v for r in results for k, v in r.metrics.items()}
        metrics.update({f"audit.{r.audit}.cached": 1.0 if "cached" in r.info else 0.0 for r in results})
        tags = {f"audit.{r.audit}.verdict": r.verdict.value for r in results}
        tags[signing.SIGNED_TAG] = "true" if key is not None else "false"
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
                    path.write_bytes(artifact.encoded())  # each kind encodes itself (audits.core.result)
                    if artifact.kind == "table":
                        tables.append({"path": f"{result.audit}/{artifact.name}", "type": "table"})
            (root / "audit_report.html").write_text(report_html, encoding="utf-8")
            # every check with its bounds in one file: the model's history reads this, not each audit's result
            (root / "checks.json").write_text(json.dumps([{**c.to_dict(), "audit": r.audit} for r in results
                                                          for c in r.checks], default=str), encoding="utf-8")
            for path in sorted(p for p in root.rglob("*") if p.is_file()):
                data = path.read_bytes()
                files[path.relative_to(root).as_posix()] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            self.client.log_artifacts(run.run_id, tmp)
        if tables:
            tags[TABLE_TAG] = json.dumps(tables)
        checked = {key for r in results for c in r.checks for key in (c.metric, c.compare_to) if key in metrics}
        checked = checked if model_id else set()
        self.log_batch(run.run_id, metrics={k: v for k, v in metrics.items() if k not in checked}, tags=tags,
                       timestamp_ms=run.start_ms or None)
        self.log_batch(run.run_id, metrics={k: metrics[k] for k in checked}, timestamp_ms=run.start_ms or None,
                       model_id=model_id, dataset=dataset)
        complete = signing.as_stored({**manifest, "metrics": {k: signing.metric_entry(v) for k, v in sorted(metrics.items())},
                                      "artifacts": files, "complete": True})
        complete = key.sign(complete) if key is not None else {**complete, "signature": None}
        self.client.log_dict(run.run_id, complete, signing.MANIFEST)
        return complete

    def record_history(self, experiment_id: str, uri: str, page: str, summary: str, metrics: dict[str, float]) -> str:
        """Write a model's (or alias's) history page to its ``history`` run in the audits' experiment: found by its
        tags, else created; each update replaces the page and the description (the findings), and logs ``metrics``
        (the latest figures) at the next step, so that the run's charts trace them over updates. Returns the run id."""
        from tasks.adapters.history import HISTORY_OF, KIND, find_history_run

        run_id = find_history_run(self.client, experiment_id, uri)
        if run_id:
            self.client.update_run(run_id, status="RUNNING")
            step = 1 + max((m.step for m in self.client.get_metric_history(run_id, "history.audits")), default=-1)
        else:
            run_id = self.client.create_run(experiment_id, run_name=f"history {uri.removeprefix('models:/')}",
                                            tags={KIND: "history", HISTORY_OF: uri, **origin_tags("LOCAL")}).info.run_id
            step = 0
        try:
            self.client.log_text(run_id, page, "history.html")
            self.log_batch(run_id, metrics=metrics, tags={"mlflow.note.content": summary}, step=step)
        finally:
            self.client.set_terminated(run_id, "FINISHED")
        return run_id

    def close(self, run: AuditRun, verdict: Verdict, note: str) -> None:
        """End the run FINISHED with its verdict; the version says 'done'. Promotion on PASS is a step of its own
        (``audit_tasks.promote_on_pass``), after this."""
        self.log_batch(run.run_id, tags={"audit.verdict": verdict.value, STATUS: "done", "mlflow.note.content": note})
        self.client.set_terminated(run.run_id, "FINISHED")
        self._project(run, VersionState("done", attempt_of(run.audit_key), run.run_id, verdict=verdict.value))

    def fail(self, run: AuditRun, reason: str) -> None:
        """End the run FAILED with the reason; the version says 'failed'. Never leaves a run RUNNING."""
        try:
            self.log_batch(run.run_id, tags={"audit.status": "failed", "audit.error": reason,
                                             "mlflow.note.content": f"**Audit failed**\n\n{fenced(clipped(reason, 4000))}"})
        finally:
            self.client.set_terminated(run.run_id, "FAILED")
            self._project(run, VersionState("failed", attempt_of(run.audit_key), run.run_id, error=reason))

    def end_dead_run(self, run_id: str, reason: str, status: str = "KILLED") -> bool:
        """End a RUNNING audit run whose process is gone: the reason in audit.error, then the run status."""
        if self.client.get_run(run_id).info.status != "RUNNING":
            return False
        self.log_batch(run_id, tags={STATUS: "failed", "audit.error": reason,
                                     "mlflow.note.content": f"**Audit stopped**\n\n{fenced(clipped(reason, 4000))}"})
        self.client.set_terminated(run_id, status)
        return True
