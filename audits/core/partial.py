"""Audits over every row: a statistic that adds up over partitions is written as a reducer.

    state = audit.init(context, fitted)                  # empty state
    state = audit.update(state, partition, context, fitted)   # one partition (a Dataset of some rows of one side)
    state = audit.merge(state_a, state_b)                # two states of disjoint rows
    result = audit.finalize(state, context, fitted)      # metrics and artifacts

``fitted = audit.fit(context)`` is computed once, on the sample (``context``'s datasets), before any partition is
seen: a *hybrid* audit fits something there (a suite inferred from the reference sample, an OOD scorer) and applies it
to every row; a *partial* audit fits nothing. The functions are pure (no Dask, no I/O): the same code reduces one
pandas frame in a test, the partitions of a Parquet folder in this process, or the partitions of a cluster.

States are small and travel without pickle: a dict of numbers, strings, bytes (DataSketches' serialised sketches),
numpy arrays and nested dicts and lists of these; ``encode_state`` / ``decode_state`` turn one into bytes and back.
"""

from __future__ import annotations

import base64
import json
from abc import abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd

from audits.core.audit import Audit
from audits.core.context import AuditContext, Dataset
from audits.core.result import AuditResult

State = dict[str, Any]
Mode = Literal["sample", "partial", "hybrid"]


class PartialAudit(Audit):
    """An audit computed on every row. ``compute`` is the one-frame case: one update per side, then finalize."""

    mode: ClassVar[Mode] = "partial"

    def fit(self, context: AuditContext) -> Any:
        """What the partitions need from the sample (hybrid audits); None for a purely partial audit."""
        return None

    @abstractmethod
    def init(self, context: AuditContext, fitted: Any) -> State: ...

    @abstractmethod
    def update(self, state: State, partition: Dataset, context: AuditContext, fitted: Any) -> State:
        """``state`` with the rows of ``partition`` added (``partition.name`` says which side they come from)."""

    @abstractmethod
    def merge(self, a: State, b: State) -> State: ...

    @abstractmethod
    def finalize(self, state: State, context: AuditContext, fitted: Any, population: dict[str, int]) -> AuditResult:
        """The result; ``population`` is the number of rows each side had (every one of them went through update)."""

    def flagged_rows(self, state: State, fitted: Any, features: tuple[str, ...]) -> pd.DataFrame | None:
        """Rows of the population this audit flags on every row (the least familiar rows an OOD scorer flags), for
        the sample audits to look at too: the features, 'row' (where it is) and 'flagged_by'. None: it flags none."""
        return None

    def compute(self, context: AuditContext) -> AuditResult:
        fitted = self.fit(context)
        state = reduce_partitions(self, context, fitted, (context.reference, context.current))
        return self.finalize(state, context, fitted, {"reference": len(context.reference), "current": len(context.current)})


def reduce_partitions(audit: PartialAudit, context: AuditContext, fitted: Any, partitions: Iterable[Dataset]) -> State:
    state = audit.init(context, fitted)
    for partition in partitions:
        state = audit.update(state, partition, context, fitted)
    return state


@dataclass(frozen=True)
class FullData:
    """The outcome of a pass over every row: each partial audit's merged state (or the error that stopped it), what each
    hybrid audit fitted on the sample, and the populations the sample was drawn from."""

    population: dict[str, int]  # rows per side, every one read
    sample: dict[str, int]  # rows per side in the sample the context holds
    states: dict[str, State] = field(default_factory=dict)  # by audit id
    fitted: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    partitions: dict[str, int] = field(default_factory=dict)
    engine: str = "local"
    workers: int = 1

    def describe_population(self) -> str:
        return ", ".join(f"{self.population[s]:,} {s}" for s in self.population)


def audit_mode(audit: Audit) -> Mode:
    return getattr(audit, "mode", "sample")


# ---------------------------------------------------------------------------------------------
# States as bytes, without pickle


def _encoded(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "O":
            raise TypeError("a state holds no object arrays (they would need pickle): use numbers, strings or bytes")
        array = np.ascontiguousarray(value)
        return {"__array__": array.dtype.str, "shape": list(array.shape), "data": base64.b64encode(array.tobytes()).decode()}
    if isinstance(value, (bytes, bytearray)):
        return {"__bytes__": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        if any(not isinstance(k, str) for k in value):
            raise TypeError(f"state keys are strings; found {[k for k in value if not isinstance(k, str)][:3]}")
        return {k: _encoded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encoded(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"a state holds numbers, strings, bytes, arrays, lists and dicts; not {type(value).__name__}")


def _decoded(value: Any) -> Any:
    if isinstance(value, dict):
        if "__array__" in value:
            data = base64.b64decode(value["data"])
            return np.frombuffer(data, dtype=np.dtype(value["__array__"])).reshape(value["shape"]).copy()
        if "__bytes__" in value:
            return base64.b64decode(value["__bytes__"])
        return {k: _decoded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decoded(v) for v in value]
    return value


def encode_state(state: State) -> bytes:
    return json.dumps(_encoded(state), allow_nan=True, separators=(",", ":")).encode()


def decode_state(data: bytes) -> State:
    return _decoded(json.loads(data))
