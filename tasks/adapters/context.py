"""The audits' context built from loaded frames, and the inputs record that both ways of assembling an audit's
inputs return: ``inputs.py`` (data that fits one frame) and ``every_row.py`` (data read by partition). Both import
these from here, so neither imports the other's module back."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from audits.core.context import AuditContext, InvalidPredictions, ModelUnderAudit, build_context, stratify
from audits.core.partial import FullData
from tasks.adapters.errors import ConfigError, DataError, ModelOutputError
from tasks.adapters.models import ModelRef


@dataclass(frozen=True)
class AuditInputs:
    context: AuditContext
    fingerprints: dict[str, dict[str, Any]]
    full: FullData | None = None  # the pass over every row, when the data was larger than the sample budgets


@contextmanager
def predicting(ref: ModelRef, data: str = "the data") -> Iterator[None]:
    """The model predicting on ``data``: what goes wrong becomes the error a user can act on."""
    try:
        yield
    except InvalidPredictions as exc:
        on = "" if data == "the data" else f" on {data}"
        raise ModelOutputError(f"{ref.label} answered{on}, but not with one valid prediction per row: {exc}",
                               "fix the model (or the rows that make it answer so); every audit would compute on these predictions") from None
    except Exception as exc:
        raise DataError(
            f"{ref.label} cannot predict on {data} ({type(exc).__name__}: {exc})",
            "check that the columns and their types match what the model was trained on; if they do, the model itself "
            "fails on them (its own message is in the brackets)",
        ) from None


def context_or_error(ref: ModelRef, model: ModelUnderAudit, reference, current, **kwargs: Any) -> AuditContext:
    """The audits' context (the model predicts on both datasets), or the error a user can act on."""
    with predicting(ref):
        return build_context(model, reference, current, **kwargs)


def stratified(context: AuditContext, sampling: Any, population: dict[str, dict[str, int]] | None = None,
               sample: AuditContext | None = None) -> AuditContext:
    """``context`` with its stratified sample (``sampling.stratify_by``): ``sample``'s rows (default: the context's own,
    every row when the context holds all of them) in strata, weighted by ``population``'s rows per stratum."""
    if sampling.stratify_by is None:
        return context
    try:
        strata = stratify(sample if sample is not None else context, sampling.stratify_by, sampling.min_rows_per_stratum, population)
    except ValueError as exc:
        raise ConfigError(f"sampling.{exc}", "set sampling.stratify_by to a segment column, or remove it") from None
    return replace(context, stratified=strata)
