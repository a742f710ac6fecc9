"""watch_registry: find model versions with no audit yet (or a failed one with attempts left), start the
audit deployment for each, and settle audits that died. Served on a short interval; idempotent."""

from __future__ import annotations

import logging

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.adapters.deployments import load_deployments
from tasks.adapters.mlflow_sink import MlflowSink
from tasks.adapters.repair import RunFacts
from tasks.adapters.tracking import make_client, quiet_environment, redact
from tasks.adapters.watching import DeadAudit, dead_audits, lagging_audits, pending_audits, registry_versions
from tasks.triggers import trigger_audit

quiet_environment()


def _flow_state(flow_run_id: str) -> tuple[bool, bool, str]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        try:
            state = client.read_flow_run(flow_run_id).state
        except Exception:  # an unknown id (another Prefect server): not evidence of death
            return False, False, ""
    if state is None:
        return False, False, ""
    failed = state.is_failed() or state.is_crashed() or state.is_cancelled()
    return state.is_final(), failed, f"{state.type.value}: {state.message or ''}".strip()


def settle_audits(client, sink: MlflowSink, name: str, stale_after_s: float, flow_state=_flow_state,
                  logger: logging.Logger | logging.LoggerAdapter | None = None) -> list[DeadAudit]:
    """One pass over ``name``'s versions: audits that died are marked failed (a run still RUNNING is ended, KILLED
    when its heartbeat stopped, before its version, which then says what the run says), and versions whose run FINISHED
    take the run's state. Returns the dead."""
    logger = logger or logging.getLogger(__name__)
    versions = registry_versions(client, name)
    seen: dict[str, RunFacts | None] = {}

    def run_facts(run_id: str) -> RunFacts | None:
        if run_id not in seen:
            try:
                seen[run_id] = RunFacts.of(client.get_run(run_id))
            except Exception:  # deleted, or another store's: not evidence of anything
                seen[run_id] = None
        return seen[run_id]

    dead = dead_audits(versions, name, run_facts, flow_state, stale_after_s)
    for audit in dead:
        logger.warning("%s v%s: audit dead (%s); marking it failed", audit.name, audit.version, audit.reason)
        if audit.run_id:
            sink.end_dead_run(audit.run_id, audit.reason, audit.end_run_as)
        sink.versions.mark_dead(audit.name, audit.version, audit.run_id, audit.reason, audit.attempt)
    for audit in lagging_audits(versions, name, run_facts):
        logger.info("%s v%s: its audit's run finished; the version follows it", audit.name, audit.version)
        sink.versions.sync_version(audit.name, audit.version, audit.run_id)
    return dead


@task(name="watch-model", cache_policy=NO_CACHE)
def watch_model(deployments_path: str, model_name: str, tracking_uri: str) -> dict:
    logger = get_run_logger()
    loaded = load_deployments(deployments_path)
    model = loaded.model(model_name)
    client = make_client(tracking_uri)
    sink = MlflowSink(tracking_uri)
    dead = settle_audits(client, sink, model.name, loaded.settings.watcher.stale_after_s, logger=logger)
    versions = registry_versions(client, model.name)
    started = []
    for pending in pending_audits(versions, model.name, loaded.settings.watcher.max_attempts, loaded.config_hash(model)):
        flow_run_id = trigger_audit(loaded, model, pending.version, pending.attempt, f"watcher: {pending.why}", tracking_uri)
        logger.info("%s v%s: audit started (%s), flow run %s", pending.name, pending.version, pending.why, flow_run_id)
        started.append(pending.version)
    return {"model": model.name, "started": started, "dead": [a.version for a in dead]}


@flow(name="watch-registry")
def watch_registry(deployments_path: str, tracking_uri: str | None = None) -> list[dict]:
    loaded = load_deployments(deployments_path)
    store = loaded.tracking_uri(tracking_uri)
    get_run_logger().info("Watching %d model(s) in %s", len(loaded.settings.models), redact(store))
    return [watch_model(str(loaded.path), m.name, store) for m in loaded.settings.models if m.on_new_version]
