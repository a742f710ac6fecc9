"""Every row of a dataset larger than one frame, in two passes over its partitions, on this machine or a Dask cluster.

1. *Survey*: every row is checked (text in a numeric column, infinities, missing labels, all-missing columns) and a
   uniform sample is drawn without replacement over all partitions: each row gets a key from a generator seeded by the
   configured seed, its side and its partition's position, and the rows with the smallest keys are kept (bottom-k
   sampling, which merges exactly and gives the same sample on any engine, in any order).
2. *Score*: the model predicts on every row once, and each partial or hybrid audit folds the partition into its state
   (``audits.core.partial``); states come back as bytes, without pickle, and are merged here as they arrive.

The model is sent once to each worker (scattered, ``broadcast=True``), not once per partition. Between passes the
sample becomes the audits' context (the model predicts on it here), and hybrid audits fit what they apply to every row.
A worker holds one partition at a time; this process holds merged states and the sample only.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from audits.core.context import (AuditContext, Dataset, InvalidPredictions, ModelUnderAudit, argmax_classifier,
                                 checked_predictions)
from audits.core.partial import PartialAudit, State, decode_state, encode_state
from audits.core.strata import stratum_labels
from tasks.adapters.datasets import check_finite, check_numeric
from tasks.adapters.errors import AuditlensError, DataError, ModelOutputError
from tasks.adapters.sources import Fragment, Source, read_fragment

ROLE_CODE = {"reference": 0, "current": 1}
KEY = "__auditlens_key"
STRATUM = "__auditlens_stratum"
MAX_STRATA = 1000  # strata a side may have: each keeps stratum_floor rows in the auditing process


class EngineError(AuditlensError):
    """The execution engine (a Dask cluster) cannot be started or reached."""


@dataclass(frozen=True)
class PassPlan:
    features: tuple[str, ...]
    target: str | None
    segments: tuple[str, ...]
    numeric: tuple[str, ...]  # columns that hold numbers in the reference: text in them is an error, in any row
    encoding: str
    seed: int
    chunk_rows: int
    # the model's labels are its classes' argmax of predict_proba (checked on the sample, for estimators whose predict is
    # defined so): one pass through the model per partition instead of two
    labels_from_proba: bool = False
    # the model's predictions read from the data (data.prediction_columns): the label's column, and one column of
    # probabilities per class in the model's order; the model is then not sent to the workers
    prediction_label: str | None = None
    prediction_proba: tuple[str, ...] = ()
    # segment columns that hold whole numbers: read as nullable integers in every chunk, so that a value is named "3"
    # whether or not its chunk has a missing value (pandas reads an integer column with a gap as floats: "3.0")
    integer_segments: tuple[str, ...] = ()
    # sampling.stratify_by: the scoring pass keeps, per stratum, the rows with the smallest keys (the keys the survey
    # drew), so that the stratified sample has stratum_floor rows of every stratum the population has
    stratify_by: str | None = None
    stratum_floor: int = 0

    def columns(self, source_columns: tuple[str, ...]) -> list[str]:
        wanted = [*self.features, *([self.target] if self.target else []), *self.segments,
                  *([self.prediction_label] if self.prediction_label else []), *self.prediction_proba]
        return [c for c in dict.fromkeys(wanted) if c in source_columns]


# ---------------------------------------------------------------------------------------------
# Pass 1: checks on every row, and the sample


def fragment_keys(plan: PassPlan, fragment: Fragment) -> np.random.Generator:
    """The generator of a fragment's sampling keys, one uniform key per row in reading order: the survey draws the
    sample with them and the scoring pass draws them again for the strata, so both must come from here."""
    return np.random.default_rng([plan.seed, ROLE_CODE[fragment.role], fragment.index])


def survey_fragment(fragment: Fragment, plan: PassPlan, columns: list[str], sample_rows: int) -> dict[str, Any]:
    """Counts for the checks, and the fragment's ``sample_rows`` rows with the smallest keys (with their keys)."""
    rng = fragment_keys(plan, fragment)
    rows, offset = 0, 0
    nonnull = dict.fromkeys(plan.features, 0)
    target_nulls = 0
    kept: pd.DataFrame | None = None
    digest = hashlib.sha256()
    for chunk in read_fragment(fragment, columns, plan.encoding, plan.chunk_rows):
        _check_chunk(chunk, plan, fragment, offset)
        digest.update(pd.util.hash_pandas_object(chunk, index=False).to_numpy().tobytes())
        for column in plan.features:
            nonnull[column] += int(chunk[column].notna().sum())
        if plan.target and plan.target in chunk.columns:
            target_nulls += int(chunk[plan.target].isna().sum())
        keyed = chunk.assign(**{KEY: rng.random(len(chunk))})
        kept = keyed if kept is None else pd.concat([kept, keyed], ignore_index=True)
        kept = kept.nsmallest(sample_rows, KEY) if len(kept) > sample_rows else kept
        rows += len(chunk)
        offset += len(chunk)
    return {"rows": rows, "nonnull": nonnull, "target_nulls": target_nulls, "sample": kept,
            "digest": digest.hexdigest(), "label": fragment.label}


def _check_chunk(chunk: pd.DataFrame, plan: PassPlan, fragment: Fragment, offset: int) -> None:
    where = f"{fragment.role} data {fragment.label}"
    check_numeric(chunk, plan.numeric, where, offset, scope=" in this partition")
    check_finite(chunk, plan.numeric, where, offset)


@dataclass
class Survey:
    role: str
    rows: int = 0
    nonnull: dict[str, int] = field(default_factory=dict)
    target_nulls: int = 0
    sample: pd.DataFrame | None = None
    digests: list[tuple[str, str]] = field(default_factory=list)
    partitions: int = 0

    def add(self, part: dict[str, Any], sample_rows: int) -> None:
        self.rows += part["rows"]
        for column, count in part["nonnull"].items():
            self.nonnull[column] = self.nonnull.get(column, 0) + count
        self.target_nulls += part["target_nulls"]
        self.digests.append((part["label"], part["digest"]))
        self.partitions += 1
        if part["sample"] is not None:
            both = part["sample"] if self.sample is None else pd.concat([self.sample, part["sample"]], ignore_index=True)
            # ties between keys are broken by position, so the sample does not depend on the order partitions arrive in
            self.sample = both.sort_values(KEY, kind="stable").head(sample_rows).reset_index(drop=True)

    @property
    def sha256(self) -> str:
        digest = hashlib.sha256()
        for label, part in sorted(self.digests):
            digest.update(f"{label}:{part}\n".encode())
        return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Pass 2: predictions on every row, folded into each partial audit's state


@dataclass(frozen=True)
class Reducer:
    """A partial or hybrid audit in the pass over every row: what it fitted, and the context it was fitted on (its own
    seeded sample; a partial audit's is the whole sample)."""

    id: str
    audit: PartialAudit
    fitted: Any
    context: AuditContext


def score_fragment(fragment: Fragment, plan: PassPlan, columns: list[str], model: ModelUnderAudit,
                   partials: list[Reducer], labelled: bool) -> dict[str, Any]:
    states = {r.id: r.audit.init(r.context, r.fitted) for r in partials}
    errors: dict[str, str] = {}
    rows = 0
    # the survey's keys, drawn again in the same order (same seed, fragment and chunks): a stratum's smallest keys here
    # extend the uniform sample's rows of that stratum, they never replace them
    keys = fragment_keys(plan, fragment) if plan.stratify_by else None
    strata = StratumRows()
    for chunk in read_fragment(fragment, columns, plan.encoding, plan.chunk_rows):
        X = chunk[list(plan.features)]
        if plan.prediction_label and plan.prediction_label in chunk.columns:
            predictions = _read_predictions(chunk, plan, model, fragment, rows)
        else:
            predictions = _predict(X, plan, model, fragment, rows)
        y = chunk[plan.target] if labelled and plan.target in chunk.columns else None
        segments = segment_frame(chunk, plan) if plan.segments else None
        if keys is not None:
            by = predictions.labels if plan.stratify_by == "prediction" else segments[plan.stratify_by]
            strata.add(chunk.assign(**{KEY: keys.random(len(chunk)), STRATUM: stratum_labels(by)}), plan, fragment.label)
        partition = Dataset(fragment.role, X, y, predictions, fragment.path, segments)
        for r in partials:
            if r.id in errors:
                continue
            try:
                states[r.id] = r.audit.update(states[r.id], partition, r.context, r.fitted)
            except Exception as exc:  # this audit becomes ERROR; the others go on
                errors[r.id] = f"{type(exc).__name__} in {fragment.label}: {exc}"
        rows += len(chunk)
    encoded = {}
    for audit_id, state in states.items():
        if audit_id in errors:
            continue
        try:
            encoded[audit_id] = encode_state(state)
        except TypeError as exc:
            errors[audit_id] = f"its state cannot be sent without pickle: {exc}"
    return {"rows": rows, "states": encoded, "errors": errors, "strata": strata}


@dataclass
class StratumRows:
    """Rows per stratum, and each stratum's ``stratum_floor`` rows with the smallest keys (all columns read)."""

    counts: dict[str, int] = field(default_factory=dict)
    rows: pd.DataFrame | None = None

    def add(self, keyed: pd.DataFrame, plan: PassPlan, where: str) -> None:
        """A chunk's rows, with their keys and strata."""
        self._count(keyed[STRATUM].value_counts().items(), plan, where)
        self._keep(keyed, plan)

    def merge(self, other: StratumRows, plan: PassPlan, where: str) -> None:
        self._count(other.counts.items(), plan, where)
        if other.rows is not None:
            self._keep(other.rows, plan)

    def _count(self, counts: Any, plan: PassPlan, where: str) -> None:
        for name, count in counts:
            self.counts[str(name)] = self.counts.get(str(name), 0) + int(count)
        if len(self.counts) > MAX_STRATA:
            raise DataError(f"sampling.stratify_by: {plan.stratify_by!r} has more than {MAX_STRATA:,} values (in {where})",
                            "stratify by a column with fewer values (a region, a product line), or remove sampling.stratify_by")

    def _keep(self, keyed: pd.DataFrame, plan: PassPlan) -> None:
        both = keyed if self.rows is None else pd.concat([self.rows, keyed], ignore_index=True)
        self.rows = both.sort_values(KEY, kind="stable").groupby(STRATUM, sort=False).head(plan.stratum_floor)


def segment_frame(frame: pd.DataFrame, plan: PassPlan) -> pd.DataFrame:
    """The segment columns of some rows, whole-number columns as nullable integers (the same names in every chunk)."""
    segments = frame[list(plan.segments)].copy()
    for column in plan.integer_segments:
        try:
            segments[column] = pd.to_numeric(segments[column]).astype("Int64")
        except (TypeError, ValueError):  # a fraction in a later chunk of a CSV: left as read
            pass
    return segments


def integer_columns(source: Source, columns: tuple[str, ...], sample: pd.DataFrame) -> tuple[str, ...]:
    """The columns that hold whole numbers: Parquet's schema says so; for CSV, every value of the sample is one."""
    if source.fmt == "parquet":
        import pyarrow as pa

        types = source.arrow_types()
        return tuple(c for c in columns if c in types and pa.types.is_integer(types[c]))
    out = []
    for column in columns:
        values = sample[column] if column in sample.columns else pd.Series(dtype=object)
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            present = values.dropna().to_numpy(dtype=float)
            if len(present) and np.all(np.mod(present, 1) == 0):
                out.append(column)
    return tuple(out)


def _read_predictions(chunk: pd.DataFrame, plan: PassPlan, model: ModelUnderAudit, fragment: Fragment, rows: int):
    labels = chunk[plan.prediction_label].to_numpy()
    proba = chunk[list(plan.prediction_proba)].to_numpy(dtype=float, na_value=np.nan) if plan.prediction_proba else None
    try:
        return checked_predictions(model, len(chunk), labels, proba)
    except InvalidPredictions as exc:
        message = str(exc).replace("predict_proba returned", "the probability columns hold").replace("predict returned", "the label column holds")
        raise DataError(f"the predictions in data.prediction_columns of {fragment.label} (rows {rows}-{rows + len(chunk) - 1}) "
                        f"are not one valid prediction per row: {message}",
                        "fix the columns, or remove data.prediction_columns to let auditlens score every row with the model") from None


def _predict(X: pd.DataFrame, plan: PassPlan, model: ModelUnderAudit, fragment: Fragment, rows: int):
    try:
        proba = model.predict_proba(X) if model.predict_proba is not None else None
        if plan.labels_from_proba and proba is not None:
            labels = np.asarray(model.classes, dtype=object)[np.asarray(proba).argmax(axis=1)]
            labels = labels.astype(np.asarray(model.classes).dtype)
        else:
            labels = model.predict(X)
        return checked_predictions(model, len(X), labels, proba)
    except InvalidPredictions as exc:
        raise ModelOutputError(f"{model.label} answered, but not with one valid prediction per row of {fragment.label} "
                               f"(rows {rows}-{rows + len(X) - 1}): {exc}",
                               "fix the model (or the rows that make it answer so); every audit would compute on these predictions") from None
    except Exception as exc:
        raise DataError(f"{model.label} cannot predict on {fragment.role} data {fragment.label} ({type(exc).__name__}: {exc})",
                        "check that the columns and their types match what the model was trained on") from None


def _not_on_the_workers(X: Any) -> Any:
    raise RuntimeError("the model is not sent to the workers when its predictions come from data.prediction_columns")


def without_model_code(model: ModelUnderAudit) -> ModelUnderAudit:
    """What the workers need of a model whose predictions are read from the data: its task and classes, not its code."""
    from dataclasses import replace

    return replace(model, predict=_not_on_the_workers, estimator=None,
                   predict_proba=_not_on_the_workers if model.predict_proba is not None else None)


def labels_follow_proba(model: ModelUnderAudit, context: AuditContext) -> bool:
    """Whether labels may be taken from predict_proba: a classifier of ARGMAX_CLASSIFIERS (the last step of a Pipeline),
    and on every row of the sample its predict agrees with the argmax of its probabilities."""
    if not argmax_classifier(model):
        return False
    classes = np.asarray(model.classes)
    for ds in (context.reference, context.current):
        if ds.predictions.proba is None or not np.array_equal(classes[ds.predictions.proba.argmax(axis=1)], ds.predictions.labels):
            return False
    return True


# ---------------------------------------------------------------------------------------------
# Engines: the same two functions, here or on a cluster


class LocalEngine:
    """Partitions one after another in this process: no cluster, the default."""

    name = "local"
    workers = 1

    def map(self, function: Callable[..., Any], items: list[Any], **shared: Any) -> Iterator[Any]:
        for item in items:
            yield function(item, **shared)


class DaskEngine:
    """Partitions on a ``dask.distributed`` cluster; the shared arguments (the model, the context) are sent to each
    worker once, and results are merged as they complete."""

    name = "dask"

    def __init__(self, client: Any) -> None:
        self.client = client
        self.workers = len(client.scheduler_info().get("workers", {})) or 1
        self._shared: dict[int, Any] = {}

    def _scattered(self, value: Any) -> Any:
        if id(value) not in self._shared:
            self._shared[id(value)] = (value, self.client.scatter(value, broadcast=True, hash=False))
        return self._shared[id(value)][1]

    def map(self, function: Callable[..., Any], items: list[Any], **shared: Any) -> Iterator[Any]:
        from distributed import as_completed

        heavy = {k: self._scattered(v) if isinstance(v, (ModelUnderAudit, AuditContext, list)) else v for k, v in shared.items()}
        futures = [self.client.submit(function, item, **heavy, pure=False) for item in items]
        for future in as_completed(futures):
            try:
                yield future.result()
            except BaseException:
                for other in futures:
                    other.cancel()
                raise
            future.release()


@contextlib.contextmanager
def cluster_address(execution: Any) -> Iterator[str | None]:
    """The address of the Dask scheduler an audit uses: the configured cluster's, or that of a LocalCluster of
    ``workers`` processes on 127.0.0.1 started here and stopped when the block ends; None for the local engine. One
    cluster serves both the partitions and (in the flow) the audits themselves."""
    if execution.engine == "local":
        yield None
        return
    if execution.address:
        yield execution.address
        return
    try:
        from distributed import LocalCluster
    except ImportError:
        raise EngineError("execution.engine is dask, but dask.distributed is not installed",
                          "pip install 'auditlens[dask]' (or set execution.engine: local)") from None
    try:
        cluster = LocalCluster(n_workers=execution.workers, threads_per_worker=execution.threads_per_worker,
                               processes=True, host="127.0.0.1", dashboard_address=None,
                               silence_logs=logging.ERROR, memory_limit=execution.worker_memory or "auto")
    except (OSError, TimeoutError, RuntimeError) as exc:
        raise EngineError(f"cannot start a Dask LocalCluster on 127.0.0.1 ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})",
                          "check the machine's free memory and ports, or set execution.engine: local") from None
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()


@contextlib.contextmanager
def open_engine(execution: Any) -> Iterator[LocalEngine | DaskEngine]:
    """The configured engine: local, a LocalCluster of ``workers`` processes on 127.0.0.1 started and stopped here, or the
    existing cluster at ``address``."""
    with cluster_address(execution) as address:
        if address is None:
            yield LocalEngine()
            return
        from distributed import Client

        try:
            client = Client(address, timeout=execution.connect_timeout_s)
        except (OSError, TimeoutError) as exc:
            raise EngineError(f"cannot reach the Dask scheduler at {address} ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})",
                              "start the cluster (dask scheduler; dask worker ADDRESS), check execution.address, "
                              "or set execution.engine: local") from None
        try:
            yield DaskEngine(client)
        finally:
            client.close()


# ---------------------------------------------------------------------------------------------
# The driver


def survey(engine: Any, source: Source, plan: PassPlan, sample_rows: int, partition_rows: int) -> Survey:
    fragments = source.fragments(partition_rows)
    columns = plan.columns(source.columns)
    result = Survey(source.role)
    for part in engine.map(survey_fragment, fragments, plan=plan, columns=columns, sample_rows=sample_rows):
        result.add(part, sample_rows)
    return result


def score(engine: Any, sources: dict[str, Source], plan: PassPlan, model: ModelUnderAudit, partials: list[Reducer],
          partition_rows: int) -> tuple[dict[str, State], dict[str, str], dict[str, int], dict[str, StratumRows]]:
    """The merged state of each partial audit over every row of both sides; errors by audit id; rows scored per side;
    per side, the rows per stratum and each stratum's rows with the smallest keys (plan.stratify_by)."""
    merged: dict[str, State] = {r.id: r.audit.init(r.context, r.fitted) for r in partials}
    labelled = {role: partials[0].context.dataset(role).labelled for role in sources} if partials else {}
    if plan.prediction_label and all(plan.prediction_label in s.columns for s in sources.values()):
        # every prediction is in the data: the model's code stays in this process
        from dataclasses import replace

        model = without_model_code(model)
        partials = [replace(r, context=replace(r.context, model=model, baseline=None)) for r in partials]
    errors: dict[str, str] = {}
    rows = {role: 0 for role in sources}
    strata = {role: StratumRows() for role in sources}
    by_id = {r.id: r.audit for r in partials}
    for role, source in sources.items():
        columns = plan.columns(source.columns)
        for part in engine.map(score_fragment, source.fragments(partition_rows), plan=plan, columns=columns,
                               model=model, partials=partials, labelled=labelled[role]):
            rows[role] += part["rows"]
            strata[role].merge(part["strata"], plan, source.spec)
            for audit_id, message in part["errors"].items():
                errors.setdefault(audit_id, message)
            for audit_id, data in part["states"].items():
                if audit_id not in errors:
                    try:
                        merged[audit_id] = by_id[audit_id].merge(merged[audit_id], decode_state(data))
                    except Exception as exc:
                        errors[audit_id] = f"{type(exc).__name__} while merging: {exc}"
    return {k: v for k, v in merged.items() if k not in errors}, errors, rows, strata
