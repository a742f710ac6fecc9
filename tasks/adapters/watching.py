"""Reading the registry for the watcher: which versions still need an audit, and which audits died.

State lives in each version's own tags, where reviewers see it too:
``audit.status`` (queued / running / done / failed), ``audit.attempts``, ``audit.config_hash`` (what the
trigger asked for), ``audit.run_id``, ``audit.prefect_flow_run_id``, ``audit.queued_at`` (epoch seconds).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

ACTIVE = ("queued", "running")


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


def dead_audits(versions: list, name: str, run_status, flow_state, stale_after_s: float, now: float | None = None) -> list[DeadAudit]:
    """Active audits that will never finish: their MLflow run ended without the tag following (the server was
    down when the flow tried), their flow run crashed or failed, or nothing moved for ``stale_after_s``.

    ``run_status(run_id)`` -> MLflow run status or None; ``flow_state(flow_run_id)`` -> (terminal, failed, message).
    """
    now = time.time() if now is None else now
    dead = []
    for mv in versions:
        tags, version = mv.tags or {}, str(mv.version)
        if tags.get("audit.status") not in ACTIVE:
            continue
        run_id = tags.get("audit.run_id")
        status = run_status(run_id) if run_id else None
        if status in ("FAILED", "KILLED"):
            dead.append(DeadAudit(name, version, run_id, f"its MLflow run ended {status}"))
            continue
        flow_run_id = tags.get("audit.prefect_flow_run_id")
        if flow_run_id:
            terminal, failed, message = flow_state(flow_run_id)
            if terminal and failed:
                dead.append(DeadAudit(name, version, run_id, f"its flow run ended: {message}"))
                continue
            if terminal and status == "FINISHED":
                continue  # finished; the tag will be (or was) written by the flow
        queued_at = float(tags.get("audit.queued_at", "0") or 0)
        if queued_at and now - queued_at > stale_after_s:
            dead.append(DeadAudit(name, version, run_id, f"no progress for {int(now - queued_at)} s (stale after {int(stale_after_s)} s)"))
    return dead
