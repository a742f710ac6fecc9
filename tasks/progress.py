"""How far an audit has got, told to whoever listens: the command's display (auditlens/progress.py) listens for the
length of its flow call; deployments, `auditlens serve` and the demo do not, and then emitting is one test of an
empty tuple.

The flow says which phase it is in and which audits it plans; ``run_audits`` says when each audit starts and ends.
Events come from several threads at once (Prefect runs tasks in threads): listeners are called in the emitting thread
and must guard their own state. A listener that raises is ignored: a broken display never fails an audit.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

# The phases of an audit, in order. CHECK and START are the command's own (its checks of the input before the flow,
# then Prefect creating the flow run); the others are the flow's.
CHECK, START, RESOLVE, LOAD, OPEN, AUDITS, RECORD, DONE = "check", "start", "resolve", "load", "open", "audits", "record", "done"
PHASES = (CHECK, START, RESOLVE, LOAD, OPEN, AUDITS, RECORD)


@dataclass(frozen=True)
class Plan:
    """The audits the plan holds, in its order."""

    ids: tuple[str, ...]


@dataclass(frozen=True)
class Phase:
    """A phase begins (and the one before it ends); ``detail`` names what it works on (a model URI)."""

    name: str
    detail: str = ""


@dataclass(frozen=True)
class Started:
    """An audit began to run (its Prefect task started; it may wait there for a free lane of the model's process)."""

    id: str


@dataclass(frozen=True)
class Finished:
    """An audit ended: its verdict's name, its own duration (None when it did not return a result), whether the result
    was taken from the result cache, and its reason."""

    id: str
    verdict: str
    seconds: float | None
    cached: bool = False
    reason: str = ""


Event = Plan | Phase | Started | Finished
Listener = Callable[[Event], None]

_listeners: tuple[Listener, ...] = ()  # replaced, never changed in place: emit reads it without a lock
_lock = threading.Lock()
_log = logging.getLogger(__name__)


@contextmanager
def listen(listener: Listener) -> Iterator[Listener]:
    """Call ``listener`` with every event emitted in this process, from any thread, until the block ends."""
    global _listeners
    with _lock:
        _listeners = (*_listeners, listener)
    try:
        yield listener
    finally:
        with _lock:
            _listeners = tuple(other for other in _listeners if other is not listener)


def listening() -> bool:
    return bool(_listeners)


def emit(event: Event) -> None:
    for listener in _listeners:
        try:
            listener(event)
        except Exception:  # noqa: BLE001 - a display's failure is not the audit's
            _log.debug("a progress listener failed on %r", event, exc_info=True)


def phase(name: str, detail: str = "") -> None:
    if _listeners:
        emit(Phase(name, detail))


def plan(ids: Iterable[str]) -> None:
    if _listeners:
        emit(Plan(tuple(ids)))
