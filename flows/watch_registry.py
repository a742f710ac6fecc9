"""watch_registry: find model versions with no audit yet (or a failed one with attempts left), start the
audit deployment for each, and settle audits that died. Served on a short interval; idempotent."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.adapters.deployments import load_deployments
from tasks.adapters.mlflow_sink import MlflowSink, redact
from tasks.adapters.tracking import make_client, quiet_environment
from tasks.adapters.watching import dead_audits, pending_audits, registry_versions
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


@task(name="watch-model", cache_policy=NO_CACHE)
def watch_model(deployments_path: str, model_name: str, tracking_uri: str) -> dict:
    logger = get_run_logger()
    loaded = load_deployments(deployments_path)
    model = loaded.model(model_name)
    client = make_client(tracking_uri)
    sink = MlflowSink(tracking_uri)
    versions = registry_versions(client, model.name)

    def run_status(run_id: str) -> str | None:
        try:
            return client.get_run(run_id).info.status
        except Exception:
            return None

    dead = dead_audits(versions, model.name, run_status, _flow_state, loaded.settings.watcher.stale_after_s)
    for audit in dead:
        logger.warning("%s v%s: audit dead (%s); marking it failed", audit.name, audit.version, audit.reason)
        sink.mark_dead(audit.name, audit.version, audit.run_id, audit.reason)
    if dead:
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
