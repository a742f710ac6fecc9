"""Inputs for data larger than one frame: every row checked and scored by partition, the audits' context on a sample."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import pandas as pd

from audits.core.context import AuditContext, Dataset, ModelUnderAudit, infer_categorical
from audits.core.partial import FullData, audit_mode
from audits.core.runner import sample_for
from tasks.adapters.context import AuditInputs, context_or_error, stratified
from tasks.adapters.datasets import check_columns, frame_sha256
from tasks.adapters.errors import ConfigError, DataError
from tasks.adapters.full_pass import (KEY, STRATUM, PassPlan, Reducer, Survey, integer_columns, labels_follow_proba,
                                      open_engine, score, segment_frame, survey)
from tasks.adapters.models import ModelRef
from tasks.adapters.settings import LoadedSettings
from tasks.adapters.sources import Source


def numeric_columns(source: Source, features: list[str], encoding: str) -> tuple[str, ...]:
    """The features that hold numbers in the reference: Parquet's schema says so; for CSV, pandas' reading of the first
    rows of the first file (text in any later row of a column read as numbers is then an error, named with its row)."""
    if source.fmt == "parquet":
        import pyarrow as pa

        types = source.arrow_types()
        return tuple(f for f in features if f in types and (pa.types.is_integer(types[f]) or pa.types.is_floating(types[f])
                                                            or pa.types.is_decimal(types[f])))
    head = pd.read_csv(source.files[0], encoding=encoding, usecols=lambda c: c in set(features), nrows=10_000)
    return tuple(f for f in features if f in head.columns and pd.api.types.is_numeric_dtype(head[f])
                 and not pd.api.types.is_bool_dtype(head[f]))


def prediction_columns(data: Any, model: ModelUnderAudit, sources: dict[str, Source]) -> tuple[str | None, tuple[str, ...]]:
    """The label's column and the probability columns in the model's class order, checked against the model and the
    data; (None, ()) when the model scores every row itself."""
    columns = data.prediction_columns
    if columns is None:
        return None, ()
    probabilities = columns.probabilities or {}
    if model.task == "regression" and probabilities:
        raise DataError(f"data.prediction_columns.probabilities is set, but {model.label} is a regressor",
                        "remove probabilities (a regressor's prediction is the label column alone)")
    proba: tuple[str, ...] = ()
    if model.task == "classification" and model.predict_proba is not None:
        classes = [str(c) for c in model.classes or ()]
        if set(probabilities) != set(classes):
            raise DataError(f"data.prediction_columns.probabilities names classes {sorted(probabilities)}; {model.label} has "
                            f"classes {classes[:20]} and gives a probability for each",
                            "map every class of the model to the column of its predicted probability (calibration, ROC-AUC "
                            "and conformal sets need them)")
        proba = tuple(probabilities[c] for c in classes)
    wanted = (columns.label, *proba)
    for role, source in sources.items():
        missing = [c for c in wanted if c not in source.columns]
        if missing and len(missing) < len(wanted):
            raise DataError(f"{role} data {source.spec} lacks the prediction column(s) {missing} named in data.prediction_columns",
                            "add the model's predictions to the data, or remove data.prediction_columns to let auditlens score every row")
    if not any(columns.label in source.columns for source in sources.values()):
        raise DataError(f"neither dataset has the prediction column(s) {list(wanted)} named in data.prediction_columns",
                        "add the model's predictions to the data, or remove data.prediction_columns to let auditlens score every row")
    return columns.label, proba


def check_prediction_columns(model: ModelUnderAudit, ds: Dataset, sample: pd.DataFrame, label: str, proba: tuple[str, ...],
                             tolerance: float, source: Source) -> str:
    """The predictions in the data equal the model's on every row of the sample, or an error: an audit of this model
    version audits its predictions, not someone else's. Returns how the predictions were obtained, in words."""
    given = sample[label].to_numpy()
    own = ds.predictions.labels
    if model.task == "regression":
        wrong = ~np.isclose(pd.to_numeric(pd.Series(given), errors="coerce").to_numpy(dtype=float),
                            np.asarray(own, dtype=float), rtol=tolerance, atol=tolerance)
    else:
        wrong = pd.Series(given).astype(str).to_numpy() != pd.Series(own).astype(str).to_numpy()
    if proba and ds.predictions.proba is not None:
        values = sample[list(proba)].to_numpy(dtype=float, na_value=np.nan)
        wrong |= ~(np.abs(values - ds.predictions.proba) <= tolerance).all(axis=1)
    if wrong.any():
        first = int(np.flatnonzero(wrong)[0])
        raise DataError(f"{ds.name} data {source.spec}: the predictions in data.prediction_columns disagree with {model.label} "
                        f"on {int(wrong.sum()):,} of {len(wrong):,} sampled rows (e.g. {label}={given[first]!r} where the "
                        f"model says {own[first]!r}): they were not made by this model version",
                        "score the data with this version, or remove data.prediction_columns to let auditlens score every row")
    return (f"read from {', '.join([label, *proba])}; equal to {model.label}'s own on all {len(wrong):,} sampled rows "
            f"(tolerance {tolerance:g})")


def _checked_survey(result: Survey, source: Source, features: list[str], target: str | None, required: bool) -> bool:
    """Refuse what the one-frame path refuses, counted on every row; whether this side is labelled."""
    where = f"{source.role} data {source.spec}"
    if result.rows == 0:
        raise DataError(f"{where} has no rows", f"point 'data.{source.role}' at data with rows")
    if all(result.nonnull.get(f, 0) == 0 for f in features):
        raise DataError(f"{where}: every feature value is missing (NaN) in all {result.rows:,} rows", "check how the data was exported")
    if source.role == "reference":
        empty = [f for f in features if result.nonnull.get(f, 0) == 0]
        if empty:
            raise DataError(f"{where}: column(s) {empty} are entirely missing in all {result.rows:,} rows",
                            "the reference is what the model was trained on; fix the export or drop those features")
    if not target or target not in source.columns:
        return False
    if result.target_nulls == result.rows:
        if required:
            raise DataError(f"{where}: the target column {target!r} is entirely missing", "fill in the labels")
        return False
    if result.target_nulls:
        raise DataError(f"{where}: the target column {target!r} has {result.target_nulls:,} missing labels of {result.rows:,}",
                        "drop the unlabelled rows, or remove the target column to audit without labels")
    return True


def with_flagged_rows(context: AuditContext, partials: list[Reducer], states: dict[str, Any]) -> AuditContext:
    """``context`` (and its stratified sample) with the current rows that every-row audits flagged, typed as the
    sample's features, for the explanations to look at beside the sample."""
    found = [r.audit.flagged_rows(states[r.id], r.fitted, context.features) for r in partials if r.id in states]
    found = [frame for frame in found if frame is not None and len(frame)]
    if not found:
        return context
    rows = pd.concat(found, ignore_index=True)
    for column in context.features:
        try:
            rows[column] = rows[column].astype(context.current.X[column].dtype)
        except (TypeError, ValueError):  # e.g. a missing value in a whole-number column: the model gets it as read
            pass
    stratified = None if context.stratified is None else dataclasses.replace(context.stratified, flagged=rows)
    return dataclasses.replace(context, flagged=rows, stratified=stratified)


def assemble_every_row(ref: ModelRef, loaded: LoadedSettings, model: ModelUnderAudit, baseline: ModelUnderAudit | None,
                       baseline_note: str, features: list[str], sources: dict[str, Source], modality: str, engine: Any = None,
                       timings: dict[str, float] | None = None, attach: Any = None):
    """The inputs of an audit of data read by partition. ``engine``: one already open (the benchmark measures its
    workers); by default the configured one, opened and closed here. ``timings`` receives each stage's seconds.
    ``attach``: what every context built here goes through before any audit fits on it (the holdout)."""
    if engine is not None:
        return _assemble(ref, loaded, model, baseline, baseline_note, features, sources, modality, engine, timings, attach)
    with open_engine(loaded.settings.execution) as opened:
        return _assemble(ref, loaded, model, baseline, baseline_note, features, sources, modality, opened, timings, attach)


def _assemble(ref, loaded, model, baseline, baseline_note, features, sources, modality, engine, timings, attach=None):
    settings = loaded.settings
    data, execution = settings.data, settings.execution
    for role, source in sources.items():
        check_columns(role, source.spec, list(source.columns), features, data.target, target_required=role == "reference")
        missing = [c for c in data.segments if c not in source.columns]
        if missing:
            raise DataError(f"{role} data {source.spec} lacks segment column(s) {missing} named in data.segments",
                            "add the columns to the data or remove them from data.segments")
    label_column, proba_columns = prediction_columns(data, model, sources)
    plan = PassPlan(features=tuple(features), target=data.target, segments=tuple(data.segments),
                    numeric=numeric_columns(sources["reference"], features, data.encoding), encoding=data.encoding,
                    seed=settings.seed, chunk_rows=execution.partition_rows,
                    prediction_label=label_column, prediction_proba=proba_columns,
                    stratify_by=settings.sampling.stratify_by, stratum_floor=settings.sampling.min_rows_per_stratum)
    if plan.stratify_by == "prediction" and model.task != "classification":
        raise ConfigError(f"sampling.stratify_by is 'prediction', but {model.label} is a regressor (its predictions have no "
                          "classes to stratify by)", "set sampling.stratify_by to a segment column, or remove it")
    budgets = {role: loaded.sample_rows(role) for role in ("reference", "current")}
    timings = timings if timings is not None else {}
    clock = time.perf_counter()
    surveys = {role: survey(engine, source, plan, budgets[role], execution.partition_rows) for role, source in sources.items()}
    timings["survey_s"] = time.perf_counter() - clock
    labelled = {role: _checked_survey(surveys[role], sources[role], features, data.target, role == "reference")
                for role in sources}
    if data.segments:
        plan = dataclasses.replace(plan, integer_segments=integer_columns(
            sources["reference"], tuple(data.segments), surveys["reference"].sample))
    def frames_of(samples: dict[str, pd.DataFrame]) -> dict[str, tuple]:
        """(features, target when labelled, segments) of each side's sampled rows."""
        return {role: (sample[features], sample[data.target] if labelled[role] else None,
                       segment_frame(sample, plan) if data.segments else None) for role, sample in samples.items()}

    frames = frames_of({role: result.sample.drop(columns=[KEY]) for role, result in surveys.items()})
    categorical = tuple(data.categorical) if data.categorical is not None else infer_categorical(frames["reference"][0])
    unknown = [c for c in categorical if c not in features]
    if unknown:
        raise DataError(f"data.categorical names {unknown}, which are not features ({features[:20]})",
                        "list only feature columns under data.categorical")
    def context_of(frames: dict[str, tuple]) -> AuditContext:
        return (attach or (lambda context: context))(context_or_error(
            ref, model, frames["reference"][:2], frames["current"][:2],
            categorical=categorical, target=data.target, seed=settings.seed,
            sources=(sources["reference"].spec, sources["current"].spec), baseline=baseline, baseline_note=baseline_note,
            segments=(frames["reference"][2], frames["current"][2]), modality=modality,
        ))

    context = context_of(frames)
    predictions = {role: f"{model.label}, on every row" for role in sources}
    if label_column:  # a side without the columns (the training data, often) is scored by the model
        for role, result in surveys.items():
            if label_column not in sources[role].columns:
                continue
            predictions[role] = check_prediction_columns(model, context.dataset(role), result.sample, label_column,
                                                          proba_columns, data.prediction_columns.tolerance, sources[role])
    timings["sample_context_s"] = time.perf_counter() - clock - timings["survey_s"]
    plan = dataclasses.replace(plan, labels_from_proba=labels_follow_proba(model, context))
    partials: list[Reducer] = []
    errors: dict[str, str] = {}
    fitted: dict[str, Any] = {}
    for planned in loaded.plan:
        if audit_mode(planned.audit) == "sample" or planned.audit.skip_reason(context):
            continue
        own = sample_for(planned, context)  # a hybrid audit's own sample (the runner cuts the same one to finalize)
        try:
            fitted[planned.id] = planned.audit.fit(own)
        except Exception as exc:
            errors[planned.id] = f"fitting on the sample: {type(exc).__name__}: {exc}"
            continue
        partials.append(Reducer(planned.id, planned.audit, fitted[planned.id], own))
    clock = time.perf_counter()
    states, score_errors, strata = ({}, {}, {})
    if partials or plan.stratify_by:
        states, score_errors, _, strata = score(engine, sources, plan, model, partials, execution.partition_rows)
    timings["score_s"] = time.perf_counter() - clock
    if plan.stratify_by:
        # the uniform sample's rows, and each stratum's rows with the smallest keys beyond them: the same keys, so a
        # stratum's rows are its first rows by key, a uniform sample of the stratum, however many there are
        union = {role: pd.concat([surveys[role].sample, strata[role].rows.drop(columns=[STRATUM])], ignore_index=True)
                 .drop_duplicates(KEY).sort_values(KEY, kind="stable").drop(columns=[KEY]).reset_index(drop=True)
                 for role in sources}
        context = stratified(context, settings.sampling, {role: strata[role].counts for role in sources},
                             sample=context_of(frames_of(union)))
    context = with_flagged_rows(context, partials, states)
    engine_name, workers = engine.name, engine.workers
    errors.update(score_errors)
    full = FullData(
        population={role: surveys[role].rows for role in sources},
        sample={role: len(frames[role][0]) for role in sources},
        states=states, fitted=fitted, errors=errors,
        partitions={role: surveys[role].partitions for role in sources},
        engine=engine_name, workers=workers,
    )
    fingerprints = {}
    for role, source in sources.items():
        X, y, _ = frames[role]
        fingerprints[role] = {
            "path": source.spec,
            "sha256": surveys[role].sha256,  # of the values read, partition by partition (files in a stable order)
            "sample_sha256": frame_sha256(X if y is None else pd.concat([X, y], axis=1)),
            "rows": surveys[role].rows,
            "rows_used": len(X),
            "columns": len(source.columns),
            "labelled": y is not None,
            "files": len(source.files),
            "partitions": surveys[role].partitions,
            "predictions": predictions[role],
        }
    return AuditInputs(context, fingerprints, full)
