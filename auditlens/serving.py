"""The deployments of automatic audits, built from a deployments configuration:

- ``audit-model/audit-model``: the audit, started by the watcher, the webhook receiver or ``run_deployment``;
- ``audit-model/scheduled-<model>``: the version behind an alias, on a cron or interval schedule;
- ``watch-registry/watch-registry``: the watcher, on a short interval, one run at a time.

``auditlens serve`` serves them in one process (no work pool); ``prefect.yaml`` (``render_prefect_yaml``)
declares the same deployments for a work pool and workers.
"""

from __future__ import annotations

import os
from pathlib import Path

from prefect.schedules import Cron, Interval

from flows.audit_model import audit_model
from flows.watch_registry import watch_registry
from tasks.adapters.deployments import LoadedDeployments, WatchedModel

WORK_POOL = "audit-pool"


def _schedule(model: WatchedModel):
    spec = model.schedule
    return Cron(spec.cron, timezone=spec.timezone) if spec.cron else Interval(spec.interval_seconds, timezone=spec.timezone)


def scheduled_parameters(loaded: LoadedDeployments, model: WatchedModel, tracking_uri: str | None, relative_to: Path | None = None) -> dict:
    def path(value: Path | str | None) -> str | None:
        if value is None or relative_to is None:
            return None if value is None else str(value)
        return os.path.relpath(value, relative_to)

    return {
        "model_uri": f"models:/{model.name}@{model.schedule.alias}",
        "config_path": path(loaded.audit_config(model)),
        "tracking_uri": tracking_uri,
        "reason": "schedule",
        "current_data": path(loaded.current_pattern(model)),
        "model_loading": model.model_loading,
    }


def build_deployments(loaded: LoadedDeployments, tracking_uri: str) -> list:
    deployments = [audit_model.to_deployment(name="audit-model", description="An audit of one model version.")]
    for model in loaded.settings.models:
        if model.schedule is not None:
            deployments.append(audit_model.to_deployment(
                name=f"scheduled-{model.name}",
                schedules=[_schedule(model)],
                parameters=scheduled_parameters(loaded, model, tracking_uri),
                description=f"The version of {model.name} behind @{model.schedule.alias}, on schedule.",
            ))  # fmt: skip
    deployments.append(watch_registry.to_deployment(
        name="watch-registry",
        interval=loaded.settings.watcher.interval_seconds,
        parameters={"deployments_path": str(loaded.path), "tracking_uri": tracking_uri},
        concurrency_limit=1,
        description="Start audits of new model versions; settle audits that died.",
    ))  # fmt: skip
    return deployments


def render_prefect_yaml(loaded: LoadedDeployments, root: Path) -> str:
    """prefect.yaml for a process work pool, paths relative to ``root`` (the repository)."""
    import yaml

    work_pool = {"name": WORK_POOL}
    deployments = [{"name": "audit-model", "entrypoint": "flows/audit_model.py:audit_model", "work_pool": dict(work_pool)}]
    for model in loaded.settings.models:
        if model.schedule is None:
            continue
        spec = model.schedule
        schedule = {"cron": spec.cron} if spec.cron else {"interval": spec.interval_seconds}
        deployments.append({
            "name": f"scheduled-{model.name}",
            "entrypoint": "flows/audit_model.py:audit_model",
            "work_pool": dict(work_pool),
            "parameters": scheduled_parameters(loaded, model, None, root),
            "schedules": [{**schedule, "timezone": spec.timezone}],
        })  # fmt: skip
    deployments.append({
        "name": "watch-registry",
        "entrypoint": "flows/watch_registry.py:watch_registry",
        "work_pool": dict(work_pool),
        "parameters": {"deployments_path": os.path.relpath(loaded.path, root)},
        "schedules": [{"interval": loaded.settings.watcher.interval_seconds}],
        "concurrency_limit": 1,
    })  # fmt: skip
    document = {
        "name": "auditlens",
        "prefect-version": "3.8.8",
        "pull": [{"prefect.deployments.steps.set_working_directory": {"directory": "{{ $AUDITLENS_HOME }}"}}],
        "deployments": deployments,
    }
    header = (
        f"# Generated from {os.path.relpath(loaded.path, root)} by `auditlens deployments render`: edit that file, not this one.\n"
        f"# prefect work-pool create {WORK_POOL} --type process; prefect --no-prompt deploy --all;\n"
        f"# prefect worker start --pool {WORK_POOL}   (with AUDITLENS_HOME=<this folder>, MLFLOW_TRACKING_URI set)\n"
    )
    return header + yaml.safe_dump(document, sort_keys=False)


def release_orphaned_watcher_slot(deployment_name: str = "watch-registry/watch-registry", dead_after_s: float = 300) -> bool:
    """Free the watcher deployment's concurrency slot from runs that died with an earlier server or runner;
    True if something was freed. Called when ``auditlens serve`` starts.

    The watcher allows one run at a time, and a watcher pass takes seconds. A run still PENDING or RUNNING
    ``dead_after_s`` after it started lost its process (a killed ``auditlens up``, a restarted machine): it is
    marked Crashed, which returns its slot. A slot counted with no live run left (Prefect keeps deployment
    concurrency leases in memory unless told otherwise; ``auditlens up`` and docker/ keep them on disk) is reset.
    Without this, every later watcher run would wait for the slot forever."""
    from datetime import datetime, timedelta, timezone

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
    from prefect.client.schemas.filters import DeploymentFilter, FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Crashed

    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(deployment_name)
        except ObjectNotFound:
            return False  # first start: nothing to reconcile
        in_flight = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id={"any_": [deployment.id]}),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
                any_=[StateType.PENDING, StateType.RUNNING, StateType.CANCELLING]))),
            limit=50,
        )  # fmt: skip
        cutoff = datetime.now(timezone.utc) - timedelta(seconds=dead_after_s)
        freed = False
        for run in in_flight:
            began = run.start_time or run.expected_start_time
            if began is not None and began < cutoff:
                client.set_flow_run_state(run.id, Crashed(message=f"watcher run still {run.state_type.value} "
                                                                  f"{dead_after_s:g} s after it began: its process died"), force=True)
                freed = True
        alive = [r for r in in_flight if not ((r.start_time or r.expected_start_time) and (r.start_time or r.expected_start_time) < cutoff)]
        limit = client.read_deployment(deployment.id).global_concurrency_limit
        if limit is not None and limit.active_slots > len(alive):
            client.update_global_concurrency_limit(limit.name, GlobalConcurrencyLimitUpdate(active_slots=len(alive)))
            freed = True
        return freed
