"""Reading the registry for the watcher: which versions still need an audit, and which audits died.

State lives in each version's own tags, where reviewers see it too:
``audit.status`` (queued / running / done / failed), ``audit.attempts``, ``audit.config_hash`` (what the
trigger asked for), ``audit.run_id``, ``audit.prefect_flow_run_id``, ``audit.queued_at`` (epoch seconds).
Every write goes through the protocol in ``tasks.adapters.version_state``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from tasks.adapters.repair import ACTIVE, RunFacts, stopped


@dataclass(frozen=True)
class PendingAudit:
    name: str
    version: str
    attempt: int
    why: str


@dataclass(frozen=True)
class DeadAudit:
    name: str
    version: str
    run_id: str | None
    reason: str
    end_run_as: str = "FAILED"  # the run's end, if it is still RUNNING: KILLED when its process is gone
    attempt: str | None = None  # the version's flow run


@dataclass(frozen=True)
class LaggingAudit:
    """An audit whose run FINISHED while its version still says queued or running (the version write was lost)."""

    name: str
    version: str
    run_id: str


def registry_versions(client, name: str) -> list:
    """Every READY version of ``name``, oldest first (paged: the registry answers in pages)."""
    versions, token = [], None
    while True:
        page = client.search_model_versions(f"name='{name}'", max_results=200, page_token=token)
        versions.extend(page)
        token = getattr(page, "token", None)
        if not token:
            break
    return sorted((v for v in versions if v.status == "READY"), key=lambda v: int(v.version))


def pending_audits(versions: list, name: str, max_attempts: int, config_hash: str) -> list[PendingAudit]:
    """Versions never audited, audited under another configuration, or failed with attempts left."""
    pending = []
    for mv in versions:
        tags, version = mv.tags or {}, str(mv.version)
        status = tags.get("audit.status")
        attempts = int(tags.get("audit.attempts", "0") or 0)
        same_config = tags.get("audit.config_hash") in (None, config_hash)
        if status is None:
            pending.append(PendingAudit(name, version, 1, "new version"))
        elif status == "done" and not same_config:
            pending.append(PendingAudit(name, version, 1, "configuration changed"))
        elif status == "failed" and (not same_config or attempts < max_attempts):
            attempt = 1 if not same_config else attempts + 1
            pending.append(PendingAudit(name, version, attempt, f"retry {attempt} of {max_attempts}"))
    return pending


def _own_run(tags: dict, run_facts) -> tuple[str | None, RunFacts | None]:
    """The version's run, if it records the version's current attempt (a version queued for a new attempt still
    names the previous attempt's run until the new one opens its own)."""
    run_id = tags.get("audit.run_id")
    facts = run_facts(run_id) if run_id else None
    attempt = tags.get("audit.prefect_flow_run_id")
    if facts is not None and tags.get("audit.status") == "queued" and attempt and facts.attempt not in (None, attempt):
        return None, None
    return run_id, facts


def dead_audits(versions: list, name: str, run_facts, flow_state, stale_after_s: float, now: float | None = None) -> list[DeadAudit]:
    """Active audits that will never finish: their MLflow run ended without the version following (the server was
    down when the flow tried), their flow run crashed or failed, their run is RUNNING but its heartbeat stopped
    (the audit process was killed: no Prefect needed to tell), or nothing moved for ``stale_after_s`` (queued and
    never started, or a run from before heartbeats). A run whose heartbeat is fresh is alive, however old.

    ``run_facts(run_id)`` -> ``RunFacts`` or None; ``flow_state(flow_run_id)`` -> (terminal, failed, message).
    """
    now = time.time() if now is None else now
    dead = []
    for mv in versions:
        tags, version = mv.tags or {}, str(mv.version)
        if tags.get("audit.status") not in ACTIVE:
            continue
        attempt = tags.get("audit.prefect_flow_run_id")
        run_id, facts = _own_run(tags, run_facts)
        status = facts.status if facts else None
        if status in ("FAILED", "KILLED"):
            dead.append(DeadAudit(name, version, run_id, f"its MLflow run ended {status}", attempt=attempt))
            continue
        if attempt:
            terminal, failed, message = flow_state(attempt)
            if terminal and failed:
                dead.append(DeadAudit(name, version, run_id, f"its flow run ended: {message}", attempt=attempt))
                continue
        if status == "FINISHED":
            continue  # finished: the version catches up with its run (lagging_audits)
        if status == "RUNNING":
            why = stopped(facts, now, stale_after_s)
            if why:
                dead.append(DeadAudit(name, version, run_id, why, "KILLED", attempt))
            continue
        queued_at = float(tags.get("audit.queued_at", "0") or 0)
        if queued_at and now - queued_at > stale_after_s:
            dead.append(DeadAudit(name, version, run_id, f"no progress for {int(now - queued_at)} s (stale after {int(stale_after_s)} s)",
                                  attempt=attempt))
    return dead


def lagging_audits(versions: list, name: str, run_facts) -> list[LaggingAudit]:
    """Versions still queued or running whose own run has FINISHED: they take the run's state."""
    lagging = []
    for mv in versions:
        tags = mv.tags or {}
        if tags.get("audit.status") in ACTIVE:
            run_id, facts = _own_run(tags, run_facts)
            if facts is not None and facts.status == "FINISHED":
                lagging.append(LaggingAudit(name, str(mv.version), run_id))
    return lagging
