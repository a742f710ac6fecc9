"""Prefect tasks: names in the Prefect UI, retries on MLflow I/O, no logic of their own.

Errors a user can fix (AuditlensError) are not retried: a missing column stays missing.
Tasks that take models or DataFrames never cache (hashing them is slow and meaningless).
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.tasks import exponential_backoff
from prefect.utilities.annotations import quote

from audits.core.plan import PlannedAudit
from audits.core.result import AuditResult, Verdict
from audits.core.runner import judge, overall_verdict
from audits.rendering.findings import plan_names, plan_questions
from audits.rendering.html import markdown_summary, render_report
from tasks import progress
from tasks.adapters import provenance
from tasks.adapters.errors import AuditlensError, ConfigError, ModelLoadError, ModelTimeoutError
from tasks.adapters.history import AS_OF, find_history_run, history_uri, write_history
from tasks.adapters.mlflow_sink import AuditRun, MlflowSink
from tasks.adapters.model_worker import ModelWorker, RecordedInputs, decode_result, encode_result
from tasks.adapters.result_cache import CacheKeys, ResultCache, cache_folder, cache_keys, reused
from tasks.adapters.models import ModelRef, baseline_ref, fetch_model_files, resolve_model
from tasks.adapters.settings import LoadedSettings, load_settings
from tasks.adapters.tracking import configure_http, make_client, redact
from tasks.adapters.version_state import VersionStates


def _retry_unless_user_error(task, task_run, state) -> bool:
    exc = state.result(raise_on_failure=False)
    return not isinstance(exc, AuditlensError)


MLFLOW_IO = {  # outages are waited out inside the sink; these retries cover other transient errors
    "retries": 1,
    "retry_delay_seconds": exponential_backoff(backoff_factor=1),
    "retry_jitter_factor": 0.2,
    "retry_condition_fn": _retry_unless_user_error,
    "cache_policy": NO_CACHE,
}


@task(name="load-config", cache_policy=NO_CACHE)
def load_config(config_path: str, current_data: str | None = None, model_loading: str | None = None) -> LoadedSettings:
    loaded = load_settings(config_path, current_data)
    if model_loading is not None:  # the deployment's say, for automatic audits
        loaded = loaded.with_model_loading(model_loading)
    mlflow_settings = loaded.settings.mlflow
    configure_http(mlflow_settings.request_timeout_s, mlflow_settings.request_max_retries)
    return loaded


@task(name="resolve-model", **MLFLOW_IO)
def resolve(model_uri: str, tracking_uri: str) -> ModelRef:
    return resolve_model(model_uri, make_client(tracking_uri))


@task(name="open-audit-run", **MLFLOW_IO)
def open_audit_run(ref: ModelRef, loaded: LoadedSettings, tracking_uri: str, audit_key: str, reason: str,
                   as_of: str | None = None) -> AuditRun:
    experiment = loaded.settings.mlflow.experiment.format(model_name=ref.name or "unregistered")
    return MlflowSink(tracking_uri, loaded.settings.mlflow.outage_timeout_s).open_run(
        experiment=experiment,
        run_name=f"audit {ref.label}",
        audit_key=audit_key,
        tags={
            "auditlens.model_uri": ref.uri,
            "auditlens.model_name": ref.name or "",
            "auditlens.model_version": ref.version or "",
            "auditlens.trigger": reason,
            # the day the audit speaks for (a scheduled run's date, a simulated day): the history orders audits by it
            AS_OF: as_of or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
        params=provenance.model_params(ref, loaded, tracking_uri),
        model_name=ref.name,
        model_version=ref.version,
        artifact_location=loaded.settings.resolved_artifact_location(tracking_uri),
    )


@contextlib.contextmanager
def model_process(loaded: LoadedSettings | None = None) -> Iterator[ModelWorker]:
    """The model's own process (``model_worker``), started with no credentials and stopped when the audit ends, its
    libraries' threads its share of the cores (``model_threads``, from ``loaded``). This process's own /proc entries
    (its environment, which may hold them) become unreadable to it first."""
    from tasks.adapters.model_worker import model_threads
    from tasks.adapters.sandbox import not_inspectable

    not_inspectable()
    worker = ModelWorker(model_threads(loaded) if loaded is not None else None)
    try:
        yield worker
    finally:
        worker.close()


@dataclasses.dataclass
class Reuse:
    """The results this audit takes from the cache (by audit id, judged again here) and where to keep the others."""

    cache: ResultCache | None = None
    keys: CacheKeys | None = None
    hits: dict[str, AuditResult] = dataclasses.field(default_factory=dict)

    def keep(self, result: AuditResult, run_id: str) -> None:
        if self.cache is not None and self.keys is not None and result.audit in self.keys.audits:
            self.cache.put_result(self.keys.audits[result.audit], encode_result(result), run_id)

    def order(self, plan: list[PlannedAudit]) -> list[PlannedAudit]:
        """The audits to compute, the longest first (as long as each took when it last ran here, else its
        ``typical_cost_s``), so that the lanes of the model's process finish together."""
        known = self.cache.durations() if self.cache is not None else {}
        pending = [p for p in plan if p.id not in self.hits]
        return sorted(pending, key=lambda p: -known.get(p.audit.name, type(p.audit).typical_cost_s))

    def remember(self, results: list[AuditResult], plan: list[PlannedAudit]) -> None:
        names = {p.id: p.audit.name for p in plan}
        if self.cache is not None:
            self.cache.put_durations({names[r.audit]: r.duration_s for r in results
                                      if "cached" not in r.info and r.verdict is not Verdict.SKIPPED and r.audit in names})


NOT_STARTED = "not started: every audit's result was reused from the cache"


def _lookup(ref: ModelRef, loaded: LoadedSettings, model_dir: str, baseline, note: str, use_cache: bool) -> Reuse:
    """The cached results of this plan, by content (``result_cache``); none when the cache is off or a file cannot be
    hashed (the audit then reads it, and says what is wrong). ``use_cache`` False (``--no-cache``) looks nothing up,
    and the results it computes replace those kept."""
    settings = loaded.settings
    if not settings.cache.enabled:
        return Reuse()
    from tasks.adapters.signing import signing_key

    cache = ResultCache(cache_folder(settings.cache.folder), signing_key())
    try:
        keys = cache_keys(ref, loaded, model_dir, baseline, note)
    except (OSError, AuditlensError):
        return Reuse()
    hits = {}
    for planned in loaded.plan if use_cache else ():
        found = cache.result(keys.audits[planned.id])
        if found is None:
            continue
        try:
            result = decode_result(found[0])
        except (ValueError, KeyError, TypeError):
            continue  # an entry that does not read back is not a result
        if result.audit == planned.id:
            hits[planned.id] = reused(judge(planned, result), found[1])
    return Reuse(cache, keys, hits)


@task(name="load-inputs", cache_policy=NO_CACHE)
def load_inputs(ref: ModelRef, loaded: LoadedSettings, tracking_uri: str, worker: ModelWorker,
                use_cache: bool = True) -> tuple[RecordedInputs, Reuse]:
    """Download the model's files (and the baseline's) here, where the credentials are; look up the plan's results in
    the cache by content; unless every one is there, load the model through the gate and assemble the inputs in the
    model's process, within ``limits.inputs_s``."""
    from concurrent.futures import TimeoutError as FutureTimeout

    client = make_client(tracking_uri)
    settings = loaded.settings
    with tempfile.TemporaryDirectory(prefix="auditlens-model-files-") as folder:
        model_dir = fetch_model_files(ref, client, f"{folder}/model")
        base, note = baseline_ref(ref, settings.model.baseline_alias, client)
        baseline = None
        if base is not None:
            try:
                baseline = (base, fetch_model_files(base, client, f"{folder}/baseline"))
            except ModelLoadError as exc:
                note = f"the @{base.alias} version {base.version} could not be fetched: {exc.problem}"
        _key_file_out_of_reach(loaded, model_dir, baseline)
        reuse = _lookup(ref, loaded, model_dir, baseline, note, use_cache)
        if reuse.keys is not None and len(reuse.hits) == len(loaded.plan):
            known = reuse.cache.inputs(reuse.keys.inputs)
            if known is not None:  # nothing to compute: the model's process is never started
                params = {k: (NOT_STARTED if k.startswith(("isolation.", "execution.audit_processes")) else v)
                          for k, v in known["params"].items()}
                return RecordedInputs(**{**known, "params": params}), reuse
        limit = settings.limits.inputs_s
        try:
            recorded = worker.prepare(ref, without_tracking(loaded), model_dir, baseline, note, timeout_s=limit)
        except FutureTimeout:
            raise ModelTimeoutError(
                f"loading {ref.label} and its predictions on the reference and current data did not finish within {limit:g} s",
                "check that the model answers (call its predict on a few rows by hand), or raise limits.inputs_s in the config",
            ) from None
        if reuse.keys is not None:
            reuse.cache.put_inputs(reuse.keys.inputs, dataclasses.asdict(recorded))
        return recorded, reuse


def _key_file_out_of_reach(loaded: LoadedSettings, model_dir: str, baseline) -> None:
    """The signing key's file must lie where the model's process cannot read it (/run/secrets, a folder of its own):
    not beneath the system's folders, Python, this checkout, the model's files or the data's folders."""
    import os

    from tasks.adapters.model_worker import _readable
    from tasks.adapters.signing import KEY_FILE_ENV

    path = os.environ.get(KEY_FILE_ENV)
    if not path:
        return
    key_file = Path(path).resolve()
    exposed = [root for root in _readable(loaded, model_dir, baseline) if key_file.is_relative_to(root)]
    if exposed:
        raise ConfigError(f"{KEY_FILE_ENV} is {key_file}, beneath {exposed[0]}, which the model's process may read",
                          "keep the key where only the auditor reads it: a Docker secret (/run/secrets/...), or a folder "
                          "of its own outside the data, the checkout, Python and /etc")


def without_tracking(loaded: LoadedSettings) -> LoadedSettings:
    """The settings the model's process gets: the tracking store's section left at its defaults (no URI)."""
    from tasks.adapters.settings import MlflowSettings

    return dataclasses.replace(loaded, settings=loaded.settings.model_copy(update={"mlflow": MlflowSettings()}))


@task(name="audit", cache_policy=NO_CACHE)
def run_one(planned: PlannedAudit, worker: ModelWorker) -> AuditResult:
    if not progress.listening():
        return worker.audit(planned)
    # running from when a lane of the model's process takes it (it may wait there behind others), told to the display
    return worker.audit(planned, on_start=lambda: progress.emit(progress.Started(planned.id)))


def run_audits(plan: list[PlannedAudit], worker: ModelWorker, reuse: Reuse | None = None, run_id: str = "") -> list[AuditResult]:
    """Every audit of the plan not taken from the cache, one Prefect task each here; each runs in the model's process
    (in its worker processes, or on the Dask cluster it started), and its result comes back as data, judged again here,
    where the only writer to MLflow (and to the cache) runs."""
    reuse = reuse or Reuse()
    listening = progress.listening()  # the command's display; nobody else listens, and then nothing below is told
    for planned in plan if listening else ():
        if planned.id in reuse.hits:  # a cached result ends at once
            hit = reuse.hits[planned.id]
            progress.emit(progress.Finished(planned.id, hit.verdict.value, hit.duration_s, True, hit.reason))
    futures = {p.id: run_one.with_options(task_run_name=f"audit-{p.id}").submit(quote(p), quote(worker)) for p in reuse.order(plan)}
    if listening:
        _tell_as_each_ends(futures)
    results = []
    for planned in plan:
        if planned.id in reuse.hits:
            results.append(reuse.hits[planned.id])
            continue
        result = futures[planned.id].result()
        reuse.keep(result, run_id)
        results.append(result)
    reuse.remember(results, plan)
    return results


def _tell_as_each_ends(futures: dict) -> None:
    """Tell each audit's end as it comes, here in the flow's thread (so before the flow's next phase); run_audits then
    gathers the results in the plan's order. The first audit that raised (the model's process died) ends the telling,
    and run_audits raises its error."""
    ids = {future: audit_id for audit_id, future in futures.items()}
    for future in as_completed(list(ids)):
        try:
            result = future.result(raise_on_failure=False)
        except Exception as exc:  # noqa: BLE001 - raised again from the future by run_audits
            result = exc
        if not isinstance(result, AuditResult):
            progress.emit(progress.Finished(ids[future], Verdict.ERROR.value, None, False, f"{type(result).__name__}: {result}"))
            return
        progress.emit(progress.Finished(ids[future], result.verdict.value, result.duration_s, False, result.reason))


@task(name="record-audit", **MLFLOW_IO)
def record_audit(run: AuditRun, ref: ModelRef, loaded: LoadedSettings, inputs: RecordedInputs,
                 results: list[AuditResult]) -> dict:
    verdict = overall_verdict(results)
    manifest = provenance.build_manifest(ref, loaded, inputs, results, verdict, run.tracking_uri, run.run_id)
    sink = MlflowSink(run.tracking_uri, run.outage_timeout_s)  # its client waits out an outage, as every write does
    history_of = history_uri(ref.name, ref.alias) if ref.name else None
    history_run = find_history_run(sink.client, run.experiment_id, history_of) if history_of else None
    questions, names = plan_questions(loaded.plan), plan_names(loaded.plan)
    report = render_report(
        title=ref.label,
        subtitle=f"{ref.uri} · config {loaded.path.name} ({loaded.config_hash}) · MLflow run {run.run_id}",
        verdict=verdict,
        results=results,
        questions=questions,
        names=names,
        provenance={
            "model URI": ref.uri,
            "loaded": ref.load_uri,
            "audited at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
            **{f"{role} data": _data_line(fp, inputs.every_row) for role, fp in inputs.fingerprints.items()},
            **({"engine": f"{inputs.every_row['engine']} ({inputs.every_row['workers']} worker(s)); every-row audits read "
                          f"all rows, the others a seeded sample"} if inputs.every_row and inputs.every_row["audits"] else {}),
            "compared with": inputs.baseline_label or inputs.baseline_note,
            "config hash": loaded.config_hash,
            **({"plan": f"preset {loaded.preset} (with the configuration's own entries)"} if loaded.preset else {}),
            "seed": loaded.settings.seed,
            "code version": provenance.code_version(),
            **({"history": f"{history_of}: MLflow run {history_run} (history.html), its last audits in one page"}
               if history_run else {}),
        },
    )
    sink.log_params(run, inputs.params)
    sink.link_inputs(run, inputs.datasets, ref.model_id)
    current = next((d for d in inputs.datasets if d["context"] == "current"), None)
    sink.record(run, results, report, manifest, model_id=ref.model_id,
                dataset=(current["name"], current["digest"][:36]) if current else None)
    note = markdown_summary(ref.label, verdict, results, questions, names, (ref.name, ref.version) if ref.registered else None)
    if history_run:
        note += (f"\n\nHistory of {history_of}: [its last audits, in one page]"
                 f"(#/experiments/{run.experiment_id}/runs/{history_run}) (artifact history.html).")
    sink.close(run, verdict, note)
    return {
        "run_id": run.run_id,
        "experiment_id": run.experiment_id,
        "experiment": run.experiment_name,
        "tracking_uri": redact(run.tracking_uri),
        "model": ref.label,
        "verdict": verdict.value,
        "audits": {r.audit: {"verdict": r.verdict.value, "reason": r.reason, "cached": "cached" in r.info} for r in results},
    }


@task(name="record-history", **MLFLOW_IO)
def record_history(ref: ModelRef, tracking_uri: str, experiment_id: str, last: int = 30) -> str:
    """The history page of the audited alias (or model) over its last ``last`` audits, written to its history run."""
    return write_history(MlflowSink(tracking_uri), experiment_id, history_uri(ref.name, ref.alias), last)[0]


def _data_line(fp: dict, every_row: dict | None) -> str:
    where = f"{fp['path']}" + (f" ({fp['files']} file(s), {fp['partitions']} partition(s))" if "partitions" in fp else "")
    if str(fp.get("predictions", "")).startswith("read from"):
        where += f"; predictions {fp['predictions']}"
    if fp["rows_used"] == fp["rows"]:
        return f"{where}: all {fp['rows']:,} rows; sha256 {fp['sha256'][:16]}…"
    every = "every-row audits read all of them, " if every_row and every_row["audits"] else ""
    return f"{where}: {fp['rows']:,} rows; {every}sample audits a seeded sample of {fp['rows_used']:,}; sha256 {fp['sha256'][:16]}…"


@task(name="promote-on-pass", **MLFLOW_IO)
def promote_on_pass(run: AuditRun, alias: str) -> str | None:
    """The audit PASSed and its run is closed: point ``alias`` at the audited version (``mlflow.promote_alias_on_pass``)
    and tag the version ``audit.promoted_to``. Returns the model URI now behind the alias; None when the audited model
    is not a registered version (a runs:/ URI), which has no alias to move."""
    if not (run.model_name and run.model_version):
        return None
    VersionStates.connect(run.tracking_uri, run.outage_timeout_s).promote(run.model_name, run.model_version, alias)
    return f"models:/{run.model_name}@{alias}"


@task(name="input-failed", **{**MLFLOW_IO, "retry_condition_fn": None})
def input_failed(ref: ModelRef, tracking_uri: str, flow_run_id: str, reason: str) -> bool:
    """The audit's input was refused before any run opened: a version whose audit this flow run is says 'failed'."""
    if not ref.registered:
        return False
    return VersionStates.connect(tracking_uri).mark_input_failed(ref.name, ref.version, flow_run_id, reason)


@task(name="fail-audit-run", **{**MLFLOW_IO, "retry_condition_fn": None})
def fail_audit_run(run: AuditRun, reason: str, server_down: bool = False) -> None:
    """End the run FAILED. ``server_down``: the audit already waited out ``outage_timeout_s`` for this server, so
    try once, without waiting again (the watcher settles the run once the server answers)."""
    MlflowSink(run.tracking_uri, 0 if server_down else run.outage_timeout_s).fail(run, reason)

