"""What every audit reads: the model, the reference and current data, predictions computed once."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from audits.core.strata import Strata, stratified_positions, stratum_labels

Task = Literal["classification", "regression"]
Modality = Literal["tabular", "image", "text"]
MODALITIES: tuple[Modality, ...] = ("tabular", "image", "text")


@dataclass(frozen=True)
class ModelUnderAudit:
    """A model as the audits see it, whatever its flavour.

    ``estimator`` is the native scikit-learn object when there is one (a Pipeline included), so
    audits can reach ``predict_proba``, tree internals and ``sklearn.base.clone``; it is None for
    models that only have a pyfunc ``predict``.
    """

    task: Task
    predict: Callable[[pd.DataFrame], np.ndarray]
    predict_proba: Callable[[pd.DataFrame], np.ndarray] | None = None
    classes: tuple[Any, ...] | None = None
    estimator: Any | None = None
    flavor: str = "sklearn"
    uri: str = ""
    name: str | None = None
    version: str | None = None

    @classmethod
    def from_estimator(cls, estimator: Any, **identity: Any) -> ModelUnderAudit:
        from sklearn.base import is_classifier

        if is_classifier(estimator):
            has_proba = hasattr(estimator, "predict_proba")
            return cls(
                task="classification",
                predict=estimator.predict,
                predict_proba=estimator.predict_proba if has_proba else None,
                classes=tuple(estimator.classes_.tolist()),
                estimator=estimator,
                **identity,
            )
        return cls(task="regression", predict=estimator.predict, estimator=estimator, **identity)

    @property
    def label(self) -> str:
        if self.name and self.version:
            return f"{self.name} v{self.version}"
        return self.uri or type(self.estimator).__name__


@dataclass(frozen=True)
class Predictions:
    labels: np.ndarray
    proba: np.ndarray | None = None  # (n_rows, n_classes), columns ordered as model.classes


@dataclass(frozen=True)
class Dataset:
    """One side of the comparison: features, optional target, the model's predictions on them."""

    name: Literal["reference", "current", "holdout"]
    X: pd.DataFrame
    y: pd.Series | None
    predictions: Predictions
    source: str = ""
    segments: pd.DataFrame | None = None  # the configured segment columns (features or not), same index as X
    strata: Strata | None = None  # in a stratified sample only: each row's stratum and the population rows it stands for

    @property
    def labelled(self) -> bool:
        return self.y is not None

    def __len__(self) -> int:
        return len(self.X)


@dataclass(frozen=True)
class AuditContext:
    model: ModelUnderAudit
    reference: Dataset
    current: Dataset
    features: tuple[str, ...]
    categorical: tuple[str, ...] = ()
    target: str | None = None
    seed: int = 0
    baseline: ModelUnderAudit | None = None  # the deployed version (behind an alias) to compare with, if any
    baseline_note: str = ""  # why there is no baseline, when there is none
    # What one row is. tabular: the columns; image: one column per element of a (C, H, W) image, in C order
    # (``images`` gives them back as an array); text: one column holding the raw string.
    modality: Modality = "tabular"
    input_shape: tuple[int, ...] | None = None  # image: (C, H, W)
    # sampling.stratify_by: the same audit on a sample stratified by predicted class or segment (every stratum has
    # rows; each row carries its weight), seen only by the audits that honour the weights (Audit.stratified)
    stratified: AuditContext | None = None
    # data read by partition: current rows that every-row audits flagged (PartialAudit.flagged_rows), with their
    # features, 'row' (file and row) and 'flagged_by', so that explanations can look at them beside the sample
    flagged: pd.DataFrame | None = None
    # False: an audit's figures are left out of its result, never rasterised (tests of values; figures stay lazy
    # otherwise, rendered only when recorded or reported). Audits may also skip drawing when it is False.
    with_figures: bool = True
    # data.holdout: labelled rows the model did not train on (the reference is its training data, on which its
    # probabilities and errors are optimistic); audits that fit on labelled data to judge the model fit on these
    holdout: Dataset | None = None

    @property
    def task(self) -> Task:
        return self.model.task

    @property
    def numeric(self) -> tuple[str, ...]:
        return tuple(f for f in self.features if f not in self.categorical)

    def rng(self, purpose: str) -> np.random.Generator:
        """A generator seeded from the configured seed and a stable name for the random step."""
        return np.random.default_rng([self.seed, zlib.crc32(purpose.encode())])

    def random_state(self, purpose: str) -> int:
        """An integer seed for libraries that take ``random_state``."""
        return int(self.rng(purpose).integers(0, 2**31 - 1))

    def dataset(self, name: str) -> Dataset:
        if name == "holdout":
            if self.holdout is None:
                raise KeyError("this audit has no holdout (data.holdout)")
            return self.holdout
        return {"reference": self.reference, "current": self.current}[name]

    def held_out(self) -> tuple[Dataset, str]:
        """The labelled rows to fit on when judging the model, and what they are: the holdout when there is one, else
        the reference (its training data), said so, since there the model's figures are in-sample and optimistic."""
        if self.holdout is not None and self.holdout.labelled and len(self.holdout):
            return self.holdout, f"the holdout ({len(self.holdout):,} labelled rows the model did not train on)"
        return self.reference, ("the reference, for want of a holdout (data.holdout): the model's training data, on "
                                "which its probabilities and errors are in-sample and optimistic")

    def images(self, data: Dataset | pd.DataFrame) -> np.ndarray:
        """The rows of an image dataset as a float32 array ``(N, C, H, W)``."""
        if self.modality != "image" or self.input_shape is None:
            raise ValueError(f"this is a {self.modality} audit; images() needs modality 'image' and an input_shape")
        X = data.X if isinstance(data, Dataset) else data
        return X.to_numpy(dtype=np.float32).reshape((len(X), *self.input_shape))

    @property
    def text_column(self) -> str:
        """The column holding the raw text of a text dataset."""
        if self.modality != "text" or len(self.features) != 1:
            raise ValueError(f"a text audit reads one text column; this {self.modality} context has {list(self.features)}")
        return self.features[0]


def subsample(context: AuditContext, rows: int) -> AuditContext:
    """``context`` with at most ``rows`` rows a side, drawn without replacement with the context's seed (order kept);
    ``context`` itself when neither side has more. A stratified side is cut stratified (each stratum keeps its floor of
    rows, each row its weight: the population rows it stands for)."""
    from dataclasses import replace

    def cut(ds: Dataset) -> Dataset:
        if len(ds) <= rows:
            return ds
        rng = context.rng(f"sample_rows.{ds.name}")
        if ds.strata is not None:
            keep, weights = stratified_positions(ds.strata, rows, rng)
            strata = ds.strata.take(keep, weights)
        else:
            keep, strata = np.sort(rng.choice(len(ds), size=rows, replace=False)), None
        predictions = Predictions(ds.predictions.labels[keep], None if ds.predictions.proba is None else ds.predictions.proba[keep])
        return replace(ds, X=ds.X.iloc[keep], y=None if ds.y is None else ds.y.iloc[keep], predictions=predictions,
                       segments=None if ds.segments is None else ds.segments.iloc[keep], strata=strata)

    if len(context.reference) <= rows and len(context.current) <= rows:
        return context  # the same object: nothing was cut
    return replace(context, reference=cut(context.reference), current=cut(context.current))


def stratify(context: AuditContext, by: str, floor: int, population: dict[str, dict[str, int]] | None = None) -> AuditContext:
    """``context`` with each side's rows in strata: the predicted class (``by='prediction'``, classifiers) or the value
    of a segment column. ``population``: rows per stratum and side in the data the rows were drawn from (the pass over
    every row); None when the context holds every row (each row then stands for itself)."""
    from dataclasses import replace

    def one(ds: Dataset) -> Dataset:
        if by == "prediction":
            if context.task != "classification":
                raise ValueError("stratify_by: prediction needs a classifier (its predicted classes are the strata)")
            labels = stratum_labels(ds.predictions.labels)
        else:
            if ds.segments is None or by not in ds.segments.columns:
                raise ValueError(f"stratify_by: {by!r} is not a segment column of the {ds.name} data")
            labels = stratum_labels(ds.segments[by])
        names, codes = np.unique(labels, return_inverse=True)
        drawn = np.bincount(codes, minlength=len(names)).astype(float)
        if population is None:
            weights = np.ones(len(labels))
        else:
            counts = population[ds.name]
            whole = np.array([counts.get(str(name), drawn[k]) for k, name in enumerate(names)], dtype=float)
            weights = (whole / drawn)[codes]
        return replace(ds, strata=Strata(by, labels, weights, floor))

    return replace(context, reference=one(context.reference), current=one(context.current), stratified=None)


class InvalidPredictions(ValueError):
    """The model answered, but not with one valid prediction per row: every audit would compute on nonsense."""


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def checked_predictions(model: ModelUnderAudit, n_rows: int, labels: Any, proba: Any) -> Predictions:
    """The model's answers, refused with the reason when they are not one prediction per row: NaN or infinite values,
    the wrong shape, a class the model does not declare, probabilities outside [0, 1] or not summing to 1."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.shape != (n_rows,):
        raise InvalidPredictions(f"predict returned shape {labels.shape} for {n_rows} rows; expected one value per row ({n_rows},)")
    if model.task == "regression" or labels.dtype.kind in "fc":
        numeric = pd.to_numeric(pd.Series(labels), errors="coerce").to_numpy(dtype=float)
        if model.task == "regression" and np.isnan(numeric).all() and labels.dtype.kind not in "fc":
            raise InvalidPredictions(f"predict returned {labels.dtype} values ({labels[0]!r}...) for a regression model")
        bad = ~np.isfinite(numeric)
        if model.task == "regression" and bad.any():
            raise InvalidPredictions(f"predict returned {int(bad.sum())} NaN or infinite value(s) of {n_rows} (first at row {_first(bad)})")
    if model.task == "classification":
        if pd.isna(pd.Series(labels)).any():
            bad = pd.isna(pd.Series(labels)).to_numpy()
            raise InvalidPredictions(f"predict returned {int(bad.sum())} missing label(s) of {n_rows} (first at row {_first(bad)})")
        if model.classes is not None:
            unknown = ~pd.Series(labels).isin(list(model.classes)).to_numpy()
            if unknown.any():
                raise InvalidPredictions(f"predict returned {labels[_first(unknown)]!r} (row {_first(unknown)}), which is not one of "
                                         f"the model's classes {list(model.classes)[:20]}")
    if proba is None:
        return Predictions(labels=labels)
    proba = np.asarray(proba, dtype=float)
    width = len(model.classes) if model.classes is not None else None
    if proba.ndim != 2 or proba.shape[0] != n_rows or (width is not None and proba.shape[1] != width):
        raise InvalidPredictions(f"predict_proba returned shape {proba.shape} for {n_rows} rows; expected ({n_rows}, {width or 'classes'})")
    bad = ~np.isfinite(proba).all(axis=1)
    if bad.any():
        raise InvalidPredictions(f"predict_proba returned NaN or infinite values in {int(bad.sum())} row(s) of {n_rows} (first at row {_first(bad)})")
    bad = (proba < -1e-6).any(axis=1) | (proba > 1 + 1e-6).any(axis=1) | (np.abs(proba.sum(axis=1) - 1) > 1e-3)
    if bad.any():
        row = _first(bad)
        raise InvalidPredictions(f"predict_proba returned rows that are not probabilities in {int(bad.sum())} row(s) of {n_rows} "
                                 f"(row {row}: {np.round(proba[row][:10], 4).tolist()}, sum {proba[row].sum():.4g})")
    return Predictions(labels=labels, proba=proba)


# scikit-learn classifiers whose predict is the class of the largest predicted probability (or of a decision function
# that predict_proba is monotonic in, ties going to the first class both ways), by their code: for these, labels can
# come from predict_proba alone
ARGMAX_CLASSIFIERS = frozenset({
    "HistGradientBoostingClassifier", "GradientBoostingClassifier", "RandomForestClassifier", "ExtraTreesClassifier",
    "DecisionTreeClassifier", "ExtraTreeClassifier", "LogisticRegression", "KNeighborsClassifier", "GaussianNB",
    "MLPClassifier",
})
ARGMAX_CHECK_ROWS = 1000  # rows on which predict itself must agree with argmax(predict_proba) before it is skipped


def argmax_classifier(model: ModelUnderAudit) -> bool:
    """A native scikit-learn classifier of ARGMAX_CLASSIFIERS (the last step of a Pipeline) with predict_proba."""
    if model.task != "classification" or model.predict_proba is None or model.classes is None or model.estimator is None:
        return False
    final = model.estimator.steps[-1][1] if hasattr(model.estimator, "steps") else model.estimator
    return type(final).__name__ in ARGMAX_CLASSIFIERS and type(final).__module__.startswith("sklearn.")


def predict(model: ModelUnderAudit, X: pd.DataFrame) -> Predictions:
    """Labels and probabilities. Labels come from predict itself (for some models, SVC or calibrated wrappers,
    argmax(predict_proba) disagrees with it), except for an ARGMAX_CLASSIFIERS model whose predict agrees with the
    argmax on the first ARGMAX_CHECK_ROWS rows: its whole ensemble then runs once, not twice (half the time of
    building the inputs of a 100-tree gradient boosting model)."""
    proba = model.predict_proba(X) if model.predict_proba is not None else None
    if proba is not None and argmax_classifier(model) and len(X) > ARGMAX_CHECK_ROWS:
        classes = np.asarray(model.classes)
        from_proba = classes[np.asarray(proba).argmax(axis=1)]
        checked = np.asarray(model.predict(X.iloc[:ARGMAX_CHECK_ROWS]))
        if np.array_equal(checked, from_proba[:ARGMAX_CHECK_ROWS]):
            return checked_predictions(model, len(X), from_proba, proba)
    return checked_predictions(model, len(X), model.predict(X), proba)


def infer_categorical(X: pd.DataFrame) -> tuple[str, ...]:
    """Columns that are not numeric (strings, categories, booleans stored as objects)."""
    return tuple(c for c in X.columns if not pd.api.types.is_numeric_dtype(X[c]) or X[c].dtype == bool)


def build_context(
    model: ModelUnderAudit,
    reference: tuple[pd.DataFrame, pd.Series | None],
    current: tuple[pd.DataFrame, pd.Series | None],
    *,
    categorical: tuple[str, ...] | None = None,
    target: str | None = None,
    seed: int = 0,
    sources: tuple[str, str] = ("", ""),
    baseline: ModelUnderAudit | None = None,
    baseline_note: str = "",
    segments: tuple[pd.DataFrame | None, pd.DataFrame | None] = (None, None),
    modality: Modality = "tabular",
    input_shape: tuple[int, ...] | None = None,
) -> AuditContext:
    """Compute predictions once for both datasets; every audit shares them."""
    (X_ref, y_ref), (X_cur, y_cur) = reference, current
    features = tuple(X_ref.columns)
    if categorical is None:
        categorical = infer_categorical(X_ref)
    return AuditContext(
        model=model,
        reference=Dataset("reference", X_ref, y_ref, predict(model, X_ref), sources[0], segments[0]),
        current=Dataset("current", X_cur, y_cur, predict(model, X_cur), sources[1], segments[1]),
        features=features,
        categorical=tuple(categorical),
        target=target,
        seed=seed,
        baseline=baseline,
        baseline_note=baseline_note,
        modality=modality,
        input_shape=tuple(input_shape) if input_shape is not None else None,
    )


def with_holdout(context: AuditContext, X: pd.DataFrame, y: pd.Series, source: str = "",
                 segments: pd.DataFrame | None = None) -> AuditContext:
    """``context`` with its holdout: labelled rows the model did not train on, and its predictions on them."""
    from dataclasses import replace

    if y is None:
        raise ValueError("a holdout needs labels: it is where audits fit what judges the model")
    holdout = Dataset("holdout", X, y, predict(context.model, X), source, segments)  # type: ignore[arg-type]
    return replace(context, holdout=holdout)
