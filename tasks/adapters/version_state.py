"""The audit state on model versions: the only module that writes model-version tags and registered-model aliases.

Audit state on a model version (``audit.status`` queued / running / done / failed and its fields) has several
writers: the trigger (watcher, webhook), the audit flow, the watcher's repairs, ``auditlens doctor``. MLflow has
no compare-and-set and no batch for version tags, so every writer goes through one protocol here:

- the audit's run is the source of truth for an attempt that opened one: the flow writes the run's state (its
  ``audit.status`` tag and its run status, through ``MlflowSink``) before it writes the version, and a version write
  projects one state (``apply_state``): outcome fields first, ``audit.status`` last, so a new status never shows
  before its fields;
- an attempt is the Prefect flow run (``audit.prefect_flow_run_id``; the run's ``auditlens.audit_key`` is
  ``prefect:<id>``); no writer sets an attempt back (queued < running < done | failed); a new attempt may
  follow a finished one;
- a trigger's "queued" can still land after the flow's later state (it read the version before the flow
  wrote): the trigger then re-reads the run and re-applies what it overwrote (``settle``);
- the previous audit's verdict, error and run move to ``audit.previous_*`` when the next audit's flow first
  writes (running, or failed on bad input): they never sit beside a newer status as if they were its own.

``VersionStates`` shares its client with the sink that writes the runs (``MlflowSink.versions``), or connects on its
own (``VersionStates.connect``) for writers that touch no run (a trigger, a refused input, a promotion).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from tasks.adapters.tracking import ResilientClient, clipped

logger = logging.getLogger(__name__)

AUDIT_KEY = "auditlens.audit_key"  # on the run: prefect:<flow run id>, the attempt it records
STATUS, ATTEMPT = "audit.status", "audit.prefect_flow_run_id"
RANK = {"queued": 0, "running": 1, "done": 2, "failed": 2}
OUTCOME = ("audit.run_id", "audit.verdict", "audit.error")  # what one audit concluded; archived as audit.previous_*
PREVIOUS = {key: key.replace("audit.", "audit.previous_", 1) for key in OUTCOME}
# An attempt that failed before any run opened (bad input, or dead while queued) has no run to be its source of
# truth; this tag stands in for it: the attempt whose failure audit.error describes. Triggers never write it.
RUNLESS_FAILURE = "audit.failed_flow_run_id"
PROMOTED_TO = "audit.promoted_to"  # on the version: the alias its passing audit pointed at it
SETTLE_ROUNDS = 8  # each round follows one change of the run's state; an audit has at most three


def attempt_of(audit_key: str | None) -> str | None:
    return audit_key.removeprefix("prefect:") if audit_key and audit_key.startswith("prefect:") else None


@dataclass(frozen=True)
class VersionState:
    """What a model version says about one audit: its status, attempt and outcome."""

    status: str
    attempt: str | None = None  # the Prefect flow run id
    run_id: str | None = None
    verdict: str | None = None
    error: str | None = None

    def outcome(self) -> dict[str, str | None]:
        """The outcome tags of this state; None: the tag must be absent."""
        runless = self.status == "failed" and self.run_id is None and self.attempt is not None
        return {"audit.run_id": self.run_id, "audit.verdict": self.verdict,
                "audit.error": None if self.error is None else clipped(self.error),
                RUNLESS_FAILURE: self.attempt if runless else None}

    def shown_by(self, tags: dict[str, str]) -> bool:
        return (tags.get(STATUS) == self.status and all(tags.get(k) == v for k, v in self.outcome().items())
                and (self.attempt is None or tags.get(ATTEMPT) == self.attempt))

    def named_by(self, tags: dict[str, str]) -> bool:
        """The version still describes this audit, not another attempt that took the version over."""
        if self.attempt is None or tags.get(ATTEMPT) in (None, self.attempt):
            return True
        # versions written before audits recorded their attempt on opening a run: a version running this run is its
        return tags.get(STATUS) == "running" and self.run_id is not None and tags.get("audit.run_id") == self.run_id


def run_state(run: Any) -> VersionState:
    """The state an audit's run records. The flow writes it there (status tag, then run status) before the version."""
    tags, status = run.data.tags, run.info.status
    said = tags.get(STATUS)
    if status in ("FAILED", "KILLED"):
        state = "failed"
    elif status == "FINISHED":
        state = said if said in ("done", "failed") else "done"
    else:  # RUNNING (or SCHEDULED): the tags lead the run status by one call
        state = said if said in ("running", "done", "failed") else "running"
    error = (tags.get("audit.error") or f"its MLflow run ended {status}") if state == "failed" else None
    verdict = tags.get("audit.verdict") if state == "done" else None
    return VersionState(state, attempt_of(tags.get(AUDIT_KEY)), run.info.run_id, verdict, error)


def experiment_ids(client: Any) -> list[str]:
    """Every active experiment's id."""
    ids, token = [], None
    while True:
        page = client.search_experiments(max_results=1000, page_token=token)
        ids.extend(e.experiment_id for e in page)
        token = getattr(page, "token", None)
        if not token:
            return ids


def find_audit_run(client: Any, audit_key: str) -> Any | None:
    """The run of one audit attempt, in any experiment (the audit's config names the experiment, not the trigger)."""
    ids = experiment_ids(client)
    for start in range(0, len(ids), 100):
        runs = client.search_runs(ids[start : start + 100], filter_string=f"tags.`{AUDIT_KEY}` = '{audit_key}'", max_results=1)
        if runs:
            return runs[0]
    return None


class VersionStates:
    """Reads and writes the audit state on model versions (the protocol of the module docstring), and aliases."""

    def __init__(self, client: Any) -> None:
        self.client = client  # a ResilientClient: each call waits out an outage, up to its bound

    @classmethod
    def connect(cls, tracking_uri: str, outage_timeout_s: float = 120.0) -> VersionStates:
        return cls(ResilientClient.connect(tracking_uri, outage_timeout_s))

    def version_tags(self, name: str, version: str) -> dict[str, str]:
        return dict(self.client.get_model_version(name, version).tags or {})

    def apply_state(self, name: str, version: str, state: VersionState) -> bool:
        """Write ``state`` on the version, unless that would set its attempt back. Order: the previous audit's
        outcome moves to audit.previous_* (when it is another audit's), fields this state lacks go, its fields are
        written, and ``audit.status`` comes last."""
        tags = self.version_tags(name, version)
        if state.attempt and tags.get(ATTEMPT) == state.attempt and RANK.get(tags.get(STATUS), -1) > RANK[state.status]:
            return False
        outcome = state.outcome()
        if state.run_id:
            own = tags.get("audit.run_id") == state.run_id
        else:
            own = state.attempt is not None and tags.get(RUNLESS_FAILURE) == state.attempt
        # Only while a verdict or an error is there to move: another writer may be half-way through this same move
        # (verdict moved and deleted, run id not yet replaced), and moving again would erase what it moved.
        if not own and (tags.get("audit.verdict") or tags.get("audit.error")):
            for key in OUTCOME:  # as one set: the previous_* tags always describe the same earlier audit
                if tags.get(key):
                    self.client.set_model_version_tag(name, version, PREVIOUS[key], tags[key])
                elif PREVIOUS[key] in tags:
                    self.client.delete_model_version_tag(name, version, PREVIOUS[key])
        for key in ("audit.verdict", "audit.error", RUNLESS_FAILURE, "audit.run_id"):  # never a verdict without its run
            if outcome[key] is None and key in tags:
                self.client.delete_model_version_tag(name, version, key)
        fields = {key: value for key, value in outcome.items() if value is not None}
        if state.attempt:
            fields[ATTEMPT] = state.attempt
        for key, value in fields.items():
            if tags.get(key) != value:
                self.client.set_model_version_tag(name, version, key, value)
        self.client.set_model_version_tag(name, version, STATUS, state.status)
        return True

    def mark_queued(self, name: str, version: str, attempt: int, flow_run_id: str, config_hash: str) -> str | None:
        """The trigger's write: the version is queued for ``flow_run_id``. Returns the status it settles on.

        ``run_deployment`` returns the same flow run to concurrent triggers, and a late one's "queued" can land
        after the audit has moved on; ``settle`` then re-applies the state the audit's run records."""
        tags = self.version_tags(name, version)
        if tags.get(ATTEMPT) == flow_run_id and tags.get(STATUS) in RANK:
            return tags[STATUS]  # queued already, or further along: writing would only set it back
        fields = {"audit.attempts": str(attempt), "audit.config_hash": config_hash, ATTEMPT: flow_run_id,
                  "audit.queued_at": f"{time.time():.0f}"}
        for key, value in fields.items():
            self.client.set_model_version_tag(name, version, key, value)
        self.client.set_model_version_tag(name, version, STATUS, "queued")  # last: queued shows with its fields
        return self.settle(name, version, flow_run_id)

    def settle(self, name: str, version: str, flow_run_id: str) -> str | None:
        """Re-apply what a "queued" may have overwritten: the run of ``flow_run_id`` (or its run-less failure) is
        read first, then the version; while the version shows less than the run, the run's state is written and
        both are read again. Converges: the flow writes each state on the run before the version, so a state this
        loop did not see on the run reaches the version after this loop's last write."""
        for _ in range(SETTLE_ROUNDS):
            run = find_audit_run(self.client, f"prefect:{flow_run_id}")
            tags = self.version_tags(name, version)
            if tags.get(ATTEMPT) != flow_run_id:
                return None  # another audit took the version over: its own writers keep it
            if run is not None:
                state = run_state(run)
            elif tags.get(RUNLESS_FAILURE) == flow_run_id:
                state = VersionState("failed", flow_run_id, error=tags.get("audit.error") or "the audit stopped before opening a run")
            else:
                return tags.get(STATUS)  # nothing of this attempt is past queued yet
            if state.shown_by(tags) or RANK.get(tags.get(STATUS), -1) > RANK[state.status]:
                return tags.get(STATUS)
            self.apply_state(name, version, state)
        logger.warning("%s v%s: audit state still moving after %d rounds; the watcher settles it", name, version, SETTLE_ROUNDS)
        return None

    def mark_input_failed(self, name: str, version: str, flow_run_id: str, reason: str) -> bool:
        """An audit started by the watcher or the webhook (the version names its flow run) stopped on bad input before
        any run was opened: the version says 'failed' with the reason, so that the attempt counts. A version whose state
        another audit keeps (a CLI audit of a watched version, say) is left alone."""
        if self.version_tags(name, version).get(ATTEMPT) != flow_run_id:
            return False
        self.apply_state(name, version, VersionState("failed", flow_run_id, error=reason))
        return True

    def sync_version(self, name: str, version: str, run_id: str) -> bool:
        """The version says what its audit's run says (the run is written first, so it is the one that is right)."""
        state = run_state(self.client.get_run(run_id))
        if not state.named_by(self.version_tags(name, version)):
            return False
        return self.apply_state(name, version, state)

    def mark_dead(self, name: str, version: str, run_id: str | None, reason: str, flow_run_id: str | None = None) -> None:
        """An audit that will never finish: the version says 'failed', unless another audit has taken it over. With a
        run, what the run says: end it first (``MlflowSink.end_dead_run``), since the run is the source of truth; with
        none, the reason, for the attempt ``flow_run_id``."""
        if run_id:
            self.sync_version(name, version, run_id)
            return
        state = VersionState("failed", flow_run_id, error=reason)
        if state.named_by(self.version_tags(name, version)):
            self.apply_state(name, version, state)

    def tag_version(self, name: str, version: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(name, version, key, clipped(value))

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(name, alias, version)

    def promote(self, name: str, version: str, alias: str) -> None:
        """Point ``alias`` at the version whose audit passed, and say so on the version (``audit.promoted_to``)."""
        self.set_alias(name, alias, version)
        self.tag_version(name, version, {PROMOTED_TO: alias})
