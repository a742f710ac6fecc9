"""A watcher slot orphaned by a server restart is freed when `auditlens serve` starts, and only then: against a
real (temporary) Prefect API."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_harness")]


def test_an_orphaned_watcher_slot_is_freed_and_a_live_one_is_kept(tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
    from prefect.states import Running

    from auditlens.serving import release_orphaned_watcher_slot
    from flows.watch_registry import watch_registry

    name = "watch-registry/reconcile-test"
    assert release_orphaned_watcher_slot(name) is False  # no such deployment yet: nothing to do
    deployment_id = watch_registry.to_deployment(name="reconcile-test", concurrency_limit=1,
                                                 parameters={"deployments_path": str(tmp_path / "d.yaml")}).apply()

    def slots() -> int:
        with get_client(sync_client=True) as client:
            return client.read_deployment(deployment_id).global_concurrency_limit.active_slots

    def leak() -> None:  # what a server restart leaves behind: the slot counted, its in-memory lease gone
        with get_client(sync_client=True) as client:
            limit = client.read_deployment(deployment_id).global_concurrency_limit
            client.update_global_concurrency_limit(limit.name, GlobalConcurrencyLimitUpdate(active_slots=1))

    leak()
    assert slots() == 1
    assert release_orphaned_watcher_slot(name) is True and slots() == 0
    assert release_orphaned_watcher_slot(name) is False  # idempotent

    with get_client(sync_client=True) as client:  # a watcher run that is alive keeps its slot
        run = client.create_flow_run_from_deployment(deployment_id)
        client.set_flow_run_state(run.id, Running(), force=True)
    leak()
    assert release_orphaned_watcher_slot(name) is False and slots() == 1


def test_a_watcher_run_left_running_by_a_dead_process_is_crashed_and_its_slot_freed(tmp_path):
    from datetime import datetime, timedelta, timezone

    from prefect.client.orchestration import get_client
    from prefect.states import Pending, Running

    from auditlens.serving import release_orphaned_watcher_slot
    from flows.watch_registry import watch_registry

    name = "watch-registry/zombie-test"
    deployment_id = watch_registry.to_deployment(name="zombie-test", concurrency_limit=1,
                                                 parameters={"deployments_path": str(tmp_path / "d.yaml")}).apply()
    with get_client(sync_client=True) as client:
        run = client.create_flow_run_from_deployment(deployment_id)
        client.set_flow_run_state(run.id, Pending())  # orchestrated, as a runner does: this takes the slot
        client.set_flow_run_state(run.id, Running())
        assert client.read_deployment(deployment_id).global_concurrency_limit.active_slots == 1
    assert release_orphaned_watcher_slot(name, dead_after_s=3600) is False  # young: may be alive
    with get_client(sync_client=True) as client:
        started = client.read_flow_run(run.id).start_time
    assert started is not None and started > datetime.now(timezone.utc) - timedelta(minutes=5)
    assert release_orphaned_watcher_slot(name, dead_after_s=0) is True  # "older than 0 s": its process is gone
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run.id).state
        assert state.is_crashed() and "its process died" in state.message
        assert client.read_deployment(deployment_id).global_concurrency_limit.active_slots == 0
