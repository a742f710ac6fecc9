"""A model version's audit state never goes backwards, on a real SQLite store, with the writers' calls interleaved
deliberately.

Two actors run in threads, one call at a time, and switch only where a schedule says: the "world" (the trigger that
won, then the audit flow's writes through the sink and its version states) and a late second trigger that got the same flow run from
``run_deployment`` and read the version before the first trigger wrote (the defect: its "queued" landed after "done").
Each actor's client is a real ``MlflowClient`` wrapped so that it parks before chosen calls. The late trigger moves in
phases (its read, its queued write, its re-check reads, its re-applying writes); each phase runs at a chosen point of
the world's writes. Every point where the world changes what the trigger reads is tried for every phase, so these are
all the interleavings at the granularity of single MLflow calls that can differ in outcome. Deterministic: no
sleeps, so a saturated machine only makes them slower.

Tag names are spelled out, not imported: the test reads like the state a reviewer sees in the MLflow UI.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from audits.core.result import Verdict
from tasks.adapters.mlflow_sink import MlflowSink
from tasks.adapters.tracking import ResilientClient, make_client
from tasks.adapters.version_state import VersionStates

WRITES = {"set_model_version_tag", "delete_model_version_tag", "log_batch", "set_terminated", "create_run",
          "update_run", "set_tag", "create_experiment"}  # fmt: skip
# what a trigger reads: writes of other tags (previous_*, attempts, params...) cannot change what it does
DECIDING_TAGS = {"audit.status", "audit.prefect_flow_run_id", "audit.run_id", "audit.verdict", "audit.error",
                 "audit.failed_flow_run_id"}  # fmt: skip
MODEL, EXPERIMENT = "m", "auditlens/m"
OLD = {"audit.status": "done", "audit.verdict": "PASS", "audit.prefect_flow_run_id": "flow-old", "audit.attempts": "1",
       "audit.config_hash": "h0"}  # the previous audit, under the previous configuration
WAIT_S = 60  # a hung actor fails the test instead of hanging it


def deciding(name: str, args: tuple, kwargs: dict) -> bool:
    """A world write that can change what the late trigger reads. Not: the first trigger's writes of the very values
    the late one writes itself (the attempt, "queued"); not ``set_terminated``, which in every story follows the run's
    status tag, the field a trigger reads first."""
    if name == "set_model_version_tag":
        return args[2] in DECIDING_TAGS and args[2] != "audit.prefect_flow_run_id" and args[3] != "queued"
    if name == "delete_model_version_tag":
        return args[2] in DECIDING_TAGS
    if name == "log_batch":
        return any(tag.key == "audit.status" for tag in kwargs.get("tags") or [])
    return name in ("create_run", "update_run")


@dataclass
class Turns:
    """Whose turn it is. ``world_budget``: the world parks before its write number ``world_budget``;
    ``late_phase``: the late trigger parks before its first call of a later phase."""

    observe: object  # a plain client: reads the version after each write
    model: str = MODEL
    version: str = ""
    cond: threading.Condition = field(default_factory=threading.Condition)
    turn: str = "test"
    world_budget: float = 0
    world_writes: int = 0
    world_log: list = field(default_factory=list)  # (name, deciding) of each world write
    late_phase: int = -1
    phase: int = 0  # the late trigger's: 0 its read, 1 its queued write, 2 re-check reads, 3 re-applying writes
    actors: set = field(default_factory=set)
    finished: set = field(default_factory=set)
    errors: list = field(default_factory=list)
    snapshots: list = field(default_factory=list)

    def _late_phase_of(self, name: str) -> int:
        if self.phase == 0 and name in WRITES:
            return 1
        if self.phase == 2 and name in WRITES:
            return 3
        return self.phase

    def before(self, actor: str, name: str) -> None:
        with self.cond:
            while True:
                if actor == "world":
                    ready = not (name in WRITES and self.world_writes >= self.world_budget)
                else:
                    wanted = self._late_phase_of(name)
                    ready = wanted <= self.late_phase
                if self.turn == actor and ready:
                    if actor == "late":
                        self.phase = wanted
                    return
                if self.turn == actor:  # parked: the driver decides who goes next
                    self.turn = "test"
                    self.cond.notify_all()
                if not self.cond.wait(WAIT_S):
                    raise TimeoutError(f"{actor} waited {WAIT_S} s for its turn")

    def after(self, actor: str, name: str, args: tuple, kwargs: dict) -> None:
        if name not in WRITES:
            return
        with self.cond:
            if actor == "world":
                self.world_writes += 1
                self.world_log.append((name, deciding(name, args, kwargs)))
            elif name == "set_model_version_tag" and args[2:4] == ("audit.status", "queued"):
                self.phase = 2  # its queued write is done; what follows is its re-check
            if name.endswith("model_version_tag"):  # the only writes that change what a reader of the version sees
                self.snapshots.append((actor, name, args[2], dict(self.observe.get_model_version(self.model, self.version).tags)))

    def give(self, actor: str) -> None:
        with self.cond:
            if actor not in self.actors or actor in self.finished:
                return
            self.turn = actor
            self.cond.notify_all()
            assert self.cond.wait_for(lambda: self.turn == "test", WAIT_S), f"{actor} did not park within {WAIT_S} s"


class ParkingClient:
    """A real client whose every call first waits for its actor's turn (and is recorded after)."""

    def __init__(self, inner, turns: Turns, actor: str) -> None:
        self._inner, self._turns, self._actor = inner, turns, actor

    def __getattr__(self, name):
        attribute = getattr(self._inner, name)
        if not callable(attribute):
            return attribute

        def call(*args, **kwargs):
            self._turns.before(self._actor, name)
            result = attribute(*args, **kwargs)
            self._turns.after(self._actor, name, args, kwargs)
            return result

        return call


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    # hundreds of short stories, each some 30 commits: on tmpfs a commit skips the disk's fsync
    shm = Path("/dev/shm")
    folder = Path(tempfile.mkdtemp(prefix="auditlens-version-state-", dir=shm)) if shm.is_dir() else tmp_path_factory.mktemp("vs")
    yield from _store(folder)
    shutil.rmtree(folder, ignore_errors=True)


def _store(folder: Path):
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = make_client(uri)
    client.create_registered_model(MODEL)
    experiment = client.create_experiment(EXPERIMENT)
    old = client.create_run(experiment, tags={"auditlens.audit_key": "prefect:flow-old", "audit.status": "done",
                                              "audit.verdict": "PASS"})
    client.set_terminated(old.info.run_id, "FINISHED")
    yield uri, client, old.info.run_id


def new_version(store, model: str = MODEL) -> str:
    uri, client, old_run = store
    return str(client.create_model_version(model, source="file:///nowhere", run_id=old_run,
                                           tags={**OLD, "audit.run_id": old_run}).version)


def sink_for(uri: str, turns: Turns, actor: str) -> MlflowSink:
    sink = MlflowSink(uri)
    sink.client = ParkingClient(ResilientClient(make_client(uri), 0), turns, actor)  # sink.versions shares it
    return sink


# --- the world's stories: the first trigger, then what the audit flow writes ---------------------------------
def audit_done(sink: MlflowSink, model: str, version: str, flow: str, out: dict) -> None:
    sink.versions.mark_queued(model, version, 1, flow, "h1")
    run = sink.open_run(experiment=EXPERIMENT, run_name="audit", audit_key=f"prefect:{flow}", tags={}, params={"p": 1},
                        model_name=model, model_version=version)
    out["run_id"] = run.run_id
    sink.close(run, Verdict.WARN, "the verdict table")


def input_refused(sink: MlflowSink, model: str, version: str, flow: str, out: dict) -> None:
    sink.versions.mark_queued(model, version, 1, flow, "h1")
    assert sink.versions.mark_input_failed(model, version, flow, "DataError: current data lacks x1")


def audit_killed(sink: MlflowSink, model: str, version: str, flow: str, out: dict) -> None:
    """The audit process dies after opening its run; the watcher ends the run KILLED, then marks the version."""
    sink.versions.mark_queued(model, version, 1, flow, "h1")
    run = sink.open_run(experiment=EXPERIMENT, run_name="audit", audit_key=f"prefect:{flow}", tags={}, params={"p": 1},
                        model_name=model, model_version=version)
    out["run_id"] = run.run_id
    sink.end_dead_run(run.run_id, "the audit process stopped", "KILLED")
    sink.versions.mark_dead(model, version, run.run_id, "the audit process stopped", flow)


def expected(story, out: dict, old_run: str, flow: str) -> dict:
    common = {"audit.prefect_flow_run_id": flow, "audit.attempts": "1", "audit.config_hash": "h1",
              "audit.previous_verdict": "PASS", "audit.previous_run_id": old_run}
    if story is audit_done:
        return {**common, "audit.status": "done", "audit.verdict": "WARN", "audit.run_id": out["run_id"]}
    if story is input_refused:
        return {**common, "audit.status": "failed", "audit.error": "DataError: current data lacks x1",
                "audit.failed_flow_run_id": flow}
    return {**common, "audit.status": "failed", "audit.error": "the audit process stopped", "audit.run_id": out["run_id"]}


GONE = {audit_done: ("audit.error", "audit.failed_flow_run_id"),
        input_refused: ("audit.verdict", "audit.run_id"),
        audit_killed: ("audit.verdict", "audit.failed_flow_run_id")}


@dataclass
class Outcome:
    tags: dict
    world_log: list
    late_phases: int
    snapshots: list
    out: dict


def play(store, story, schedule: tuple[int, int, int], flow: str, late: bool = True) -> Outcome:
    """``schedule``: after how many world writes the late trigger makes its queued write, its re-check reads, and its
    re-applying writes (it reads the version before anything else happens). Each play's version is the first of a
    registered model of its own: MLflow reads the whole registered model (every version) on each version call, so
    hundreds of plays on one model would each cost more than the one before; the protocol reads and writes only the
    version and its runs, so what each play shows does not depend on other versions being there."""
    uri, client, _ = store
    model = f"{MODEL}-{flow}"
    client.create_registered_model(model)
    version = new_version(store, model)
    turns = Turns(observe=make_client(uri), model=model, version=version)
    out: dict = {}
    world = sink_for(uri, turns, "world")
    second = sink_for(uri, turns, "late")

    def actor(name, body):
        try:
            body()
        except BaseException as exc:  # reported by the test thread
            turns.errors.append((name, exc))
        finally:
            with turns.cond:
                turns.finished.add(name)
                turns.turn = "test"
                turns.cond.notify_all()

    threads = [threading.Thread(target=actor, args=("world", lambda: story(world, model, version, flow, out)), daemon=True)]
    if late:
        threads.append(threading.Thread(target=actor, args=("late", lambda: second.versions.mark_queued(model, version, 1, flow, "h1")),
                                        daemon=True))
    turns.actors = {"world", "late"} if late else {"world"}
    for thread in threads:
        thread.start()
    turns.late_phase = 0
    turns.give("late")  # its read of the version, before the first trigger wrote anything
    for phase, boundary in zip((1, 2, 3), schedule):
        turns.world_budget = boundary
        turns.give("world")
        turns.late_phase = phase
        turns.give("late")
    turns.world_budget = float("inf")
    turns.give("world")
    turns.late_phase = 9
    turns.give("late")
    for thread in threads:
        thread.join(WAIT_S)
    assert not turns.errors, turns.errors
    assert turns.finished == ({"world", "late"} if late else {"world"})
    return Outcome(dict(client.get_model_version(model, version).tags), turns.world_log, turns.phase, turns.snapshots, out)


def deciding_boundaries(store, story) -> list[int]:
    """The points between the world's writes where what a trigger reads can differ: before the first write, and
    after each write that changes a tag or run field a trigger reads. (A dry run of the world alone.)"""
    log = play(store, story, (0, 0, 0), f"{story.__name__}-dry", late=False).world_log
    return [0] + [i + 1 for i, (_, decides) in enumerate(log) if decides]


def check(outcome: Outcome, story, store, flow: str) -> None:
    _, client, old_run = store
    want = expected(story, outcome.out, old_run, flow)
    assert {key: outcome.tags.get(key) for key in want} == want
    assert [key for key in GONE[story] if key in outcome.tags] == []
    # the previous audit's verdict never sits beside a later status as if it were that audit's own
    for actor, call, key, tags in outcome.snapshots:
        if tags.get("audit.verdict") == "PASS":
            assert tags.get("audit.status") in ("done", "queued") and tags.get("audit.run_id") == old_run, (actor, call, key, tags)
    if "run_id" in outcome.out:
        run = client.get_run(outcome.out["run_id"])
        assert run.info.status == ("FINISHED" if story is audit_done else "KILLED")


@pytest.mark.parametrize("story", [audit_done, input_refused, audit_killed], ids=lambda s: s.__name__)
def test_a_late_queued_never_leaves_the_version_behind_its_audit(store, story):
    """Every phase of the late trigger at every deciding point of the world: the version ends in the audit's last
    state (done with the new verdict / failed with its reason), the earlier audit's outcome under audit.previous_*."""
    points = deciding_boundaries(store, story)
    tried, reapplied = 0, 0
    for queued_at, recheck_at in itertools.combinations_with_replacement(points, 2):
        # first with the re-applying writes right after the re-check reads; then, where the trigger did re-apply,
        # with the world moving on between its reads and its writes (its reads are then stale)
        flow = f"{story.__name__}-{tried}"
        outcome = play(store, story, (queued_at, recheck_at, recheck_at), flow)
        check(outcome, story, store, flow)
        tried += 1
        if outcome.late_phases < 3:
            continue
        reapplied += 1
        for apply_at in (p for p in points if p > recheck_at):
            flow = f"{story.__name__}-{tried}"
            check(play(store, story, (queued_at, recheck_at, apply_at), flow), story, store, flow)
            tried += 1
    print(f"{story.__name__}: {tried} interleavings over {len(points)} points, {reapplied} where the late trigger re-applied")
    assert len(points) >= 4 and reapplied >= 1  # the interleavings that matter were reached, not just the easy ones


def test_each_writer_shows_a_new_status_only_with_its_fields(store):
    """No race: the trigger, then the audit. At each write of audit.status, the state it names is complete: a reader
    never sees a new status whose fields are still missing, nor the previous verdict beside 'running'."""
    _, _, old_run = store
    outcome = play(store, audit_done, (0, 0, 0), "flow-seq", late=False)
    run_id = outcome.out["run_id"]
    required = {
        "queued": {"audit.prefect_flow_run_id": "flow-seq", "audit.attempts": "1", "audit.config_hash": "h1"},
        "running": {"audit.prefect_flow_run_id": "flow-seq", "audit.run_id": run_id, "audit.verdict": None,
                    "audit.previous_verdict": "PASS", "audit.previous_run_id": old_run},
        "done": {"audit.prefect_flow_run_id": "flow-seq", "audit.run_id": run_id, "audit.verdict": "WARN"},
    }
    flips = [(tags["audit.status"], tags) for _, _, key, tags in outcome.snapshots if key == "audit.status"]
    assert [status for status, _ in flips] == ["queued", "running", "done"]
    for status, tags in flips:
        assert {key: tags.get(key) for key in required[status]} == required[status], status
        assert tags.get("audit.queued_at"), status


def test_a_trigger_for_an_attempt_already_further_along_writes_nothing(store):
    uri, client, _ = store
    version = new_version(store)
    sink = MlflowSink(uri)
    sink.versions.mark_queued(MODEL, version, 1, "flow-x", "h1")
    run = sink.open_run(experiment=EXPERIMENT, run_name="audit", audit_key="prefect:flow-x", tags={}, params={},
                        model_name=MODEL, model_version=version)
    before = dict(client.get_model_version(MODEL, version).tags)
    assert sink.versions.mark_queued(MODEL, version, 1, "flow-x", "h1") == "running"
    assert dict(client.get_model_version(MODEL, version).tags) == before
    sink.close(run, Verdict.PASS, "note")


def test_promotion_points_the_alias_and_says_so_on_the_version_only(store):
    uri, client, _ = store
    version = new_version(store)
    before = dict(client.get_model_version(MODEL, version).tags)
    VersionStates.connect(uri, 0).promote(MODEL, version, "audited")
    assert str(client.get_registered_model(MODEL).aliases["audited"]) == version
    after = dict(client.get_model_version(MODEL, version).tags)
    assert after == {**before, "audit.promoted_to": "audited"}  # the audit's state is the run's to say, not promotion's
