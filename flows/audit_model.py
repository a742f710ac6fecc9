"""audit_model: resolve the model -> load model and data -> open the run -> run the audits -> record -> tag the version
-> promote it on PASS (when ``mlflow.promote_alias_on_pass`` names an alias).

The model's files are downloaded here and loaded through the gate in the model's own process (``model_worker``), which
holds no credentials; every audit that calls the model runs there, and only this process records, tags and promotes.

Everything an audit reads (the model, both datasets, the predictions) is loaded and checked before the MLflow run is
opened: bad input (a missing column, strings where numbers belong, a model that cannot predict) ends the flow with one
clear error and leaves no run behind. A run exists only for an audit that ran.

Large arguments (the settings with their plan, the inputs, the results) are passed to tasks quoted: Prefect does not
walk them looking for futures (about 20,000 visits, a tenth of a rerun's second).

The plan and each phase are told to tasks/progress.py, which the command's display listens to (with no listener, as in
deployments and the demo, telling costs nothing).
"""

from __future__ import annotations

from datetime import datetime, timezone

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.utilities.annotations import quote

from tasks import progress
from tasks.audit_tasks import (fail_audit_run, input_failed, load_config, load_inputs, model_process, open_audit_run,
                               promote_on_pass, record_audit, record_history, resolve, run_audits)
from tasks.adapters.deployments import resolve_pattern
from tasks.adapters.errors import AuditlensError, ConfigError, TrackingServerError
from tasks.adapters.model_gate import ModelRefusedError
from tasks.adapters.mlflow_sink import Heartbeat
from tasks.adapters.tracking import quiet_environment, quiet_joblib, redact
from tasks.logs import quiet_user_errors

quiet_user_errors()
quiet_environment()  # also when a worker runs the flow without our CLI: no credentialed URL printed, no telemetry
quiet_joblib()


@flow(name="audit-model", log_prints=True)
def audit_model(model_uri: str, config_path: str, tracking_uri: str | None = None, reason: str = "manual",
                current_data: str | None = None, model_loading: str | None = None, use_cache: bool = True,
                as_of: str | None = None) -> dict:
    """Audit one model version against the plan in ``config_path``; return the verdict and the MLflow run.

    ``current_data`` replaces the config's current data; a ``{date:FORMAT}`` in it is the run's scheduled time.
    ``model_loading`` (strict or trusted) replaces the config's ``security.model_loading``: automatic audits pass their
    deployment's, so a config that trusts a model's code for hand-run audits does not trust every version registered.
    ``use_cache`` False recomputes every audit (``--no-cache``); by default a result whose model, data, settings, audit
    entry and code are unchanged is reused (``tasks/adapters/result_cache.py``) and the record says so.
    ``as_of`` (an ISO date or date-time) is the day the audit speaks for: recorded on the run (``audit.as_of``), the
    order of the model's history, and the date in ``current_data``; default: a scheduled run's scheduled time, else now.
    A scheduled audit (``reason`` 'schedule') ends by writing the history page of the alias or model it audited.
    """
    logger = get_run_logger()
    when = _as_of(as_of, flow_run.scheduled_start_time if reason == "schedule" else None)
    if current_data:
        current_data = resolve_pattern(current_data, when)
    loaded = load_config(config_path, current_data, model_loading)
    progress.plan(planned.id for planned in loaded.plan)
    store = loaded.tracking_uri(tracking_uri)
    progress.phase(progress.RESOLVE, model_uri)
    ref = resolve(model_uri, store)
    progress.phase(progress.LOAD, ref.label)
    logger.info("Auditing %s (%s) with %s; recording to %s", ref.label, ref.load_uri, loaded.path.name, redact(store))
    with model_process(loaded) as worker:  # the model is loaded, scored and explained there, with no credentials
        try:
            inputs, reuse = load_inputs(ref, quote(loaded), store, quote(worker), use_cache)
        except ModelRefusedError as exc:
            # the gate refused the model's files: nothing of it ran. That is an audit's finding, so it has a run,
            # ended FAILED with the reason in audit.error, and the version says 'failed' with it
            run = open_audit_run(ref, quote(loaded), store, audit_key=f"prefect:{flow_run.id}", reason=reason,
                                 as_of=when.isoformat(timespec="seconds"))
            fail_audit_run(run, f"{type(exc).__name__}: {exc}")
            exc.audit_run_id = run.run_id
            raise
        except AuditlensError as exc:
            # no run: the input is wrong, nothing was audited. A version whose state the watcher or the webhook keeps
            # (it names this flow run) says 'failed' with the reason, so that the attempt counts.
            input_failed(ref, store, str(flow_run.id), f"{type(exc).__name__}: {exc}")
            raise
        summary = _audit(ref, loaded, store, inputs, reuse, worker, reason, when.isoformat(timespec="seconds"))
    if reason == "schedule" and ref.name:
        try:  # the audit is recorded and closed: a history that cannot be written is a warning, not a failed audit
            history = record_history(ref, store, summary["experiment_id"])
            logger.info("History of %s updated: MLflow run %s (history.html)", ref.uri, history)
        except Exception as exc:  # noqa: BLE001
            logger.warning("The history of %s was not updated: %s: %s", ref.uri, type(exc).__name__, exc)
    progress.phase(progress.DONE)
    return summary


def _as_of(given: str | None, scheduled: datetime | None) -> datetime:
    if given:
        try:
            moment = datetime.fromisoformat(given)
        except ValueError:
            raise ConfigError(f"as_of is {given!r}, not an ISO date", "give a date such as 2026-12-04") from None
        return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    return scheduled or datetime.now(timezone.utc)


def _audit(ref, loaded, store: str, inputs, reuse, worker, reason: str, as_of: str) -> dict:
    logger = get_run_logger()
    progress.phase(progress.OPEN)
    run = open_audit_run(ref, quote(loaded), store, audit_key=f"prefect:{flow_run.id}", reason=reason, as_of=as_of)
    # proof of life on the run until it is ended: a process killed outright (SIGKILL, OOM) cannot end its run, and
    # the watcher and `auditlens doctor` tell it from a slow one by the heartbeat alone
    heartbeat = Heartbeat(run.tracking_uri, run.run_id, loaded.settings.mlflow.heartbeat_s).start()
    try:
        progress.phase(progress.AUDITS)
        results = run_audits(loaded.plan, worker, reuse, run.run_id)
        for result in results:
            cached = " (cached)" if "cached" in result.info else ""
            logger.info("%-14s %-7s %.1fs%s  %s", result.audit, result.verdict.value, result.duration_s, cached, result.reason[:160])
        progress.phase(progress.RECORD)
        summary = record_audit(run, ref, quote(loaded), quote(inputs), quote(results))
        alias = loaded.settings.mlflow.promote_alias_on_pass
        if alias and summary["verdict"] == "PASS":
            promoted = promote_on_pass(run, alias)
            if promoted:
                logger.info("Promoted %s: %s now points at it (verdict PASS)", ref.label, promoted)
            else:
                logger.info("Not promoted: %s is not a registered model version, so it has no alias %r", ref.label, alias)
    except BaseException as exc:
        heartbeat.stop()  # before the run is ended: no beat after its end
        server_down = isinstance(exc, TrackingServerError)
        try:
            fail_audit_run(run, f"{type(exc).__name__}: {exc}", server_down)
        except TrackingServerError:
            if not server_down:
                raise
        try:
            exc.audit_run_id = run.run_id  # the CLI says which run was ended FAILED
        except AttributeError:
            pass
        raise
    finally:
        heartbeat.stop()
    logger.info("Verdict for %s: %s (MLflow run %s)", ref.label, summary["verdict"], run.run_id)
    return summary
