"""audit_model: resolve the model -> open the run -> load data -> run the audits -> record -> tag the version."""

from __future__ import annotations

from datetime import datetime, timezone

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from tasks.audit_tasks import fail_audit_run, load_config, load_inputs, open_audit_run, record_audit, resolve, run_one
from tasks.adapters.deployments import resolve_pattern
from tasks.adapters.errors import TrackingServerError
from tasks.adapters.mlflow_sink import redact
from tasks.adapters.tracking import quiet_environment
from tasks.logs import quiet_user_errors

quiet_user_errors()
quiet_environment()  # also when a worker runs the flow without our CLI: no credentialed URL printed, no telemetry


@flow(name="audit-model", log_prints=True)
def audit_model(model_uri: str, config_path: str, tracking_uri: str | None = None, reason: str = "manual",
                current_data: str | None = None) -> dict:
    """Audit one model version against the plan in ``config_path``; return the verdict and the MLflow run.

    ``current_data`` replaces the config's current data; a ``{date:FORMAT}`` in it is the run's scheduled time.
    """
    logger = get_run_logger()
    if current_data:
        current_data = resolve_pattern(current_data, flow_run.scheduled_start_time or datetime.now(timezone.utc))
    loaded = load_config(config_path, current_data)
    store = loaded.tracking_uri(tracking_uri)
    ref = resolve(model_uri, store)
    logger.info("Auditing %s (%s) with %s; recording to %s", ref.label, ref.load_uri, loaded.path.name, redact(store))
    run = open_audit_run(ref, loaded, store, audit_key=f"prefect:{flow_run.id}", reason=reason)
    try:
        inputs = load_inputs(ref, loaded, store)
        futures = [run_one.with_options(task_run_name=f"audit-{p.id}").submit(p, inputs.context) for p in loaded.plan]
        results = [future.result() for future in futures]
        for result in results:
            logger.info("%-14s %-7s %.1fs  %s", result.audit, result.verdict.value, result.duration_s, result.reason[:160])
        summary = record_audit(run, ref, loaded, inputs, results)
    except BaseException as exc:
        server_down = isinstance(exc, TrackingServerError)
        try:
            fail_audit_run(run, f"{type(exc).__name__}: {exc}", server_down)
        except TrackingServerError:
            if not server_down:
                raise
        raise
    logger.info("Verdict for %s: %s (MLflow run %s)", ref.label, summary["verdict"], run.run_id)
    return summary
