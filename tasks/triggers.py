"""Starting an audit of one model version through the audit deployment, exactly once.

The watcher and the webhook receiver both come here. The Prefect idempotency key names the version,
what the audit is asked to do (configuration and data pattern) and the attempt, so concurrent triggers
of the same audit get the same flow run. Trigger first, tag second: if tagging fails, the next trigger
re-sends the same key and finds the same run.

Tagging ("queued") may land after the audit has moved on (a second trigger that got the same, already running
or finished, flow run): ``VersionStates.mark_queued`` then re-reads the audit's run and re-applies its state, so the
version never ends behind its audit.
"""

from __future__ import annotations

from prefect.deployments import run_deployment

from tasks.adapters.deployments import AUDIT_DEPLOYMENT, LoadedDeployments, WatchedModel
from tasks.adapters.version_state import VersionStates


def idempotency_key(name: str, version: str, config_hash: str, attempt: int) -> str:
    return f"audit:{name}:{version}:{config_hash}:{attempt}"


def trigger_audit(loaded: LoadedDeployments, model: WatchedModel, version: str, attempt: int, reason: str,
                  tracking_uri: str) -> str:
    config_hash = loaded.config_hash(model)
    flow_run = run_deployment(
        AUDIT_DEPLOYMENT,
        parameters={
            "model_uri": f"models:/{model.name}/{version}",
            "config_path": str(loaded.audit_config(model)),
            "tracking_uri": tracking_uri,
            "reason": reason,
            "current_data": loaded.current_pattern(model),
            "model_loading": model.model_loading,
        },
        timeout=0,
        idempotency_key=idempotency_key(model.name, version, config_hash, attempt),
        as_subflow=False,
    )
    VersionStates.connect(tracking_uri).mark_queued(model.name, version, attempt, str(flow_run.id), config_hash)
    return str(flow_run.id)
