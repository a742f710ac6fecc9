"""What ``auditlens init`` finds in a model and its data, and the commented audit configuration it writes from that.

- The data (``inspect_data``): each column's kind and cardinality on up to ``INSPECT_ROWS`` rows (CSV or Parquet files,
  folders and globs through ``sources``; a ``.npz`` of images), and the modality: image for an image archive, text
  when the model reads one column of free text, else tabular.
- The model (``inspect_model``): resolved in the registry and downloaded here, then described in the model's process
  (``ModelWorker.describe``: no credentials; Landlock-confined before any byte of the model is read, as for an audit,
  reading no data) through the same loading gate: whether it loads under ``security.model_loading: strict`` and, if
  not, what the gate refused; its task, classes and the features it expects. A model that the gate refuses is loaded
  there only when the user chose ``--model-loading trusted``; a pyfunc model is never loaded (its signature says what
  it takes, ``--task`` what it does).
- The decisions (``decide``): the target (given; else the one reference column that is not a feature the model
  expects, narrowed by the model's classes and then by common names), the candidate segment columns (low-cardinality
  text or boolean columns present in every file), what the audit's defaults already cover and what must be written.
- ``render``: the YAML, every key commented with what it is and what was found; ``write_checked`` validates it
  (``load_settings``, ``preflight_data``) before it replaces anything.

Everything read from the model or the data that reaches a comment is cleaned to one printable line: a column or class
name cannot end a comment and start a key.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.adapters.errors import ConfigError, DataError, ModelLoadError, ModelTimeoutError
from tasks.adapters.model_facts import EXACT_CLASS

INSPECT_ROWS = 100_000  # rows read per file to describe its columns (kinds, distinct values)
TARGET_NAMES = ("target", "label", "labels", "y", "class", "outcome", "response")  # common names, in order of preference
TEXT_MIN_WORDS = 5  # a string column whose values average this many words, and are mostly distinct, is free text
COMMON_VALUES = 50  # a column of at most this many distinct values has them listed (a target's, a segment's)
LISTED_COLUMNS = 60  # columns listed one per line in the written file; the rest are counted
MODEL_PROCESS_TIMEOUT_S = 300
PIXEL = re.compile(r"p\d+_\d+_\d+")
# refused names that security.trusted_types cannot make safe: code the model's own author wrote in a script, or
# modules whose objects run commands or code (safe_pickle's own reasons)
NEVER_LISTABLE = ("__main__.", "builtins.", "os.", "posix.", "nt.", "subprocess.", "sys.", "shutil.", "socket.", "pty.",
                  "runpy.", "importlib.", "cloudpickle.", "dill.", "types.", "marshal.", "functools.", "operator.",
                  "code.", "pickle.", "_pickle.", "copyreg.")


def clean(text: object, limit: int = 120) -> str:
    """``text`` as one printable line of at most ``limit`` characters (for comments and messages)."""
    line = "".join(ch if ch.isprintable() else "?" for ch in str(text))
    return line if len(line) <= limit else line[: limit - 3] + "..."


def yaml_value(value: Any) -> str:
    """``value`` as a YAML flow value on one line: PyYAML quotes what needs quoting; a string with a line break or other
    unprintable character is written double-quoted with escapes (a JSON string is a YAML double-quoted scalar)."""
    import yaml

    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_value(v) for v in value) + "]"
    if isinstance(value, str) and not value.isprintable():
        return json.dumps(value)
    dumped = yaml.safe_dump(value, default_flow_style=True, width=1_000_000, allow_unicode=True).strip()
    return dumped.removesuffix("...").strip()


# ---------------------------------------------------------------------------------------------
# the data


@dataclass(frozen=True)
class ColumnFacts:
    name: str
    kind: str  # number | integer | boolean | datetime | category (short strings) | text (free text)
    distinct: int
    missing: int
    common: tuple[str, ...] = ()  # every value, most frequent first, when there are at most COMMON_VALUES

    @property
    def numeric(self) -> bool:
        return self.kind in ("number", "integer")

    def summary(self, max_values: int) -> str:
        plural = "s" * (self.distinct != 1)
        if self.kind == "text":
            what = f"free text, {self.distinct:,} distinct value{plural}"
        elif self.common and self.distinct <= min(max_values, len(self.common)):
            shown = ", ".join(clean(v, 30) for v in self.common[:5]) + (", ..." if self.distinct > 5 else "")
            what = f"{self.kind}, {self.distinct} value{plural} ({shown})"
        elif self.kind == "number":
            what = "number"
        else:
            what = f"{self.kind}, {self.distinct:,} value{plural}"
        return what + (f", {self.missing:,} missing" if self.missing else "")

    def values_within(self, classes: set) -> bool:
        """Whether every value of this column is known (few enough to have been listed) and one of ``classes``."""
        return bool(self.common) and self.distinct <= len(self.common) and {label_key(v) for v in self.common} <= classes


@dataclass(frozen=True)
class DataFacts:
    role: str  # reference | current | holdout
    path: str  # absolute: a file, a folder or a glob
    columns: tuple[ColumnFacts, ...]
    rows: int  # rows read (all of them unless ``sampled``)
    files: int = 1
    sampled: bool = False  # only the first INSPECT_ROWS rows were read
    image_shape: tuple[int, ...] | None = None  # a .npz image archive: (C, H, W); its pixel columns are not listed

    def column(self, name: str) -> ColumnFacts | None:
        return next((c for c in self.columns if c.name == name), None)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def size(self) -> str:
        rows = f"{'at least ' if self.sampled else ''}{self.rows:,} rows"
        if self.image_shape is not None:
            return f"{rows} of {'x'.join(map(str, self.image_shape))} images (C x H x W)"
        files = f" in {self.files} files" if self.files > 1 else ""
        return f"{rows}, {len(self.columns)} columns{files}"


def describe_column(name: str, values: pd.Series) -> ColumnFacts:
    missing = int(values.isna().sum())
    present = values.dropna()
    distinct = int(present.nunique())
    if pd.api.types.is_bool_dtype(values):
        kind = "boolean"
    elif pd.api.types.is_integer_dtype(values):
        kind = "integer"
    elif pd.api.types.is_numeric_dtype(values):
        kind = "number"
    elif pd.api.types.is_datetime64_any_dtype(values):
        kind = "datetime"
    else:
        texts = present.astype(str)
        words = texts.str.split().str.len().mean() if len(texts) else 0.0
        kind = "text" if words >= TEXT_MIN_WORDS and distinct >= 0.5 * len(texts) else "category"
    common: tuple[str, ...] = ()
    if kind != "text" and distinct <= COMMON_VALUES:
        counts = present.astype(str).value_counts(sort=False)
        order = sorted(counts.index, key=lambda v: (-counts[v], v))  # by frequency, ties by value: stable across runs
        common = tuple(order)
    return ColumnFacts(str(name), kind, distinct, missing, common)


def describe_frame(frame: pd.DataFrame, role: str, path: str, files: int = 1, sampled: bool = False,
                   image_shape: tuple[int, ...] | None = None) -> DataFacts:
    """What ``frame`` (the first rows of one side) holds; an image archive's pixel columns are left out."""
    if not len(frame.columns):
        raise DataError(f"{role} data {path} is empty (no header, no rows)", f"pass --{role} the {_ROLES[role]}")
    if not len(frame):
        raise DataError(f"{role} data {path} has a header but no rows", f"pass --{role} the {_ROLES[role]}")
    columns = tuple(describe_column(c, frame[c]) for c in frame.columns
                    if image_shape is None or not PIXEL.fullmatch(str(c)))
    return DataFacts(role, path, columns, len(frame), files, sampled, image_shape)


_ROLES = {"reference": "data the model was trained on", "current": "data the model sees now",
          "holdout": "labelled rows the model did not train on"}


def inspect_data(role: str, spec: str, base: Path, encoding: str = "utf-8", max_rows: int = INSPECT_ROWS) -> DataFacts:
    """The first ``max_rows`` rows of ``spec`` (a CSV or Parquet file, a folder of them, a glob, or a .npz image
    archive; relative to ``base``), described."""
    from tasks.adapters.datasets import image_shape, read_table
    from tasks.adapters.sources import is_glob, open_source, read_fragment

    path = Path(os.path.expandvars(spec)).expanduser()
    path = path if path.is_absolute() else base / path
    if not is_glob(spec) and not path.exists():
        raise DataError(f"--{role} {spec}: there is no such file or folder ({path})",
                        f"pass --{role} the {_ROLES[role]}: a CSV or Parquet file, a folder of them, a glob such as "
                        "'data/*.parquet', or a .npz archive of images")
    shown = str(path.resolve()) if not is_glob(spec) else os.path.normpath(path)
    if path.suffix.lower() == ".npz" and path.is_file():
        frame = read_table(path)
        return describe_frame(frame, role, shown, image_shape=image_shape(path))
    source = open_source(role, str(path), base, encoding)
    if not source.columns:
        raise DataError(f"{role} data {shown} is empty (no header, no rows)", f"pass --{role} the {_ROLES[role]}")
    frames, rows, sampled = [], 0, False
    for fragment in source.fragments(max_rows):
        for chunk in read_fragment(fragment, list(source.columns), encoding, chunk_rows=max_rows):
            frames.append(chunk.iloc[: max_rows - rows])
            rows += len(frames[-1])
            if rows >= max_rows:
                sampled = True
                break
        if sampled:
            break
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(source.columns))
    if sampled and source.estimated_rows() <= rows:
        sampled = False  # exactly max_rows rows
    return describe_frame(frame, role, shown, len(source.files), sampled)


# ---------------------------------------------------------------------------------------------
# the model


@dataclass(frozen=True)
class ModelFacts:
    uri: str  # as given
    label: str  # e.g. "credit v3"
    flavors: tuple[str, ...] = ()
    serialization: str = ""  # skops | pickle | cloudpickle | pth | pt2 | "" (another flavour)
    model_file: str = ""  # the file the gate read, relative to the model's folder
    task: str | None = None  # classification | regression; None: the model does not say (pyfunc)
    classes: tuple[Any, ...] | None = None
    features: tuple[str, ...] | None = None  # the columns it expects, by name
    features_from: str = ""  # where those names come from
    n_features: int | None = None
    estimator: str = ""  # e.g. "Pipeline (ColumnTransformer, LogisticRegression)"
    input_shape: tuple[int, ...] | None = None  # a network's (C, H, W)
    refusal: str = ""  # what the gate said when it refused the model under model_loading: strict ("" when it accepts)
    refused: tuple[str, ...] = ()  # the names it refused, where it can list them
    loaded: bool = False  # whether init loaded it (strict: through the gate; trusted: as MLflow would)
    version_note: str = ""  # e.g. "@champion is version 3 now"

    @property
    def strict_ok(self) -> bool:
        return not self.refusal

    def listable(self) -> tuple[list[str], list[str]]:
        """The refused names that security.trusted_types could accept (exact classes of a package, if installed where
        audits run), and those it never can (a class of the training script, a function that runs code)."""
        good = [n for n in self.refused if EXACT_CLASS.fullmatch(n) and not n.startswith(NEVER_LISTABLE)]
        return good, [n for n in self.refused if n not in good]

    def what(self) -> str:
        parts = [self.estimator or ", ".join(self.flavors) or "a model"]
        if self.serialization:
            parts.append(f"saved as {self.serialization}")
        if self.task:
            parts.append(self.task)
        if self.classes is not None:
            parts.append(f"classes {_listing(self.classes, 10)}")
        if self.features is not None:
            parts.append(f"{len(self.features)} features ({self.features_from})")
        elif self.n_features is not None:
            parts.append(f"{self.n_features} unnamed features")
        if self.input_shape is not None:
            parts.append(f"images of {'x'.join(map(str, self.input_shape))}")
        return clean(", ".join(parts), 300)


def _listing(values: Any, limit: int) -> str:
    values = list(values)
    shown = ", ".join(clean(v, 40) for v in values[:limit])
    return f"[{shown}{', ...' if len(values) > limit else ''}]"


def inspect_model(uri: str, tracking_uri: str, model_loading: str = "strict", trusted_types: tuple[str, ...] = (),
                  worker: Any = None) -> ModelFacts:
    """The model at ``uri``, resolved in the registry at ``tracking_uri`` (which must answer, and, for SQLite, exist:
    init never creates a store), downloaded here and described in a process of its own (``process``, started early so
    that its imports overlap this one's; else started now)."""
    from tasks.adapters.errors import TrackingServerError
    from tasks.adapters.models import fetch_model_files, resolve_model
    from tasks.adapters.tracking import check_reachable, make_client, validate_tracking_uri

    check_reachable(tracking_uri)
    target = validate_tracking_uri(tracking_uri)
    if target.kind == "sqlite" and not Path(target.path).is_file():
        raise TrackingServerError(f"there is no SQLite tracking store at {Path(target.path).absolute()}",
                                  "pass --tracking-uri with the store the model is registered in (sqlite:////abs/path/mlflow.db "
                                  "or http://host:port), or set MLFLOW_TRACKING_URI")
    client = make_client(tracking_uri)
    ref = resolve_model(uri, client)
    from concurrent.futures import TimeoutError as FutureTimeout

    from tasks.adapters.model_worker import ModelWorker

    describer = worker or ModelWorker()
    try:
        with tempfile.TemporaryDirectory(prefix="auditlens-init-model-") as folder:
            model_dir = fetch_model_files(ref, client, f"{folder}/model")
            request = {"model_dir": model_dir, "uri": ref.uri, "load_uri": ref.load_uri, "name": ref.name,
                       "version": ref.version, "trusted": model_loading == "trusted", "trusted_types": list(trusted_types)}
            reply = describer.describe(request, timeout_s=MODEL_PROCESS_TIMEOUT_S)
    except FutureTimeout:
        raise ModelTimeoutError(f"loading {ref.label} did not finish within {MODEL_PROCESS_TIMEOUT_S} s",
                                "check that the model loads (mlflow.pyfunc.load_model) in reasonable time") from None
    finally:
        if worker is None:
            describer.close()
    note = f"@{ref.alias} is version {ref.version} today" if ref.alias else ""
    return replace(facts_from_reply(reply, uri, ref.label), version_note=note)


def facts_from_reply(value: dict, uri: str, label: str) -> ModelFacts:
    """The model process's description, checked as data from an untrusted source: every field of the expected type,
    every name a bounded printable string."""

    def names(key: str, limit: int) -> tuple | None:
        """A list of at most ``limit`` names (strings, or numbers for classes), kept exact: they are compared with the
        data's columns and values, written through YAML's quoting, and cleaned wherever they reach a comment."""
        found = value.get(key)
        if found is None:
            return None
        if (not isinstance(found, list) or len(found) > limit
                or not all(isinstance(v, (str, int, float, bool)) and len(str(v)) <= 1000 for v in found)):
            raise ModelLoadError(f"the process that loaded {label} answered {key} that is not a list of names",
                                 "log the model again with MLflow's log_model")
        return tuple(found)

    task = value.get("task")
    if task not in (None, "classification", "regression"):
        raise ModelLoadError(f"the process that loaded {label} answered task {clean(task, 40)!r}",
                             "log the model again with MLflow's log_model")
    shape = value.get("input_shape")
    n_features = value.get("n_features")
    features = names("features", 100_000)
    return ModelFacts(
        uri=uri, label=label, flavors=tuple(clean(f, 40) for f in value.get("flavors") or ()),
        serialization=clean(value.get("serialization") or "", 40), model_file=clean(value.get("model_file") or "", 200),
        task=task, classes=names("classes", 10_000),
        features=tuple(str(f) for f in features) if features is not None else None,
        features_from=clean(value.get("features_from") or "", 80),
        n_features=n_features if isinstance(n_features, int) else None, estimator=clean(value.get("estimator") or "", 200),
        input_shape=tuple(int(s) for s in shape) if isinstance(shape, list) and all(isinstance(s, int) for s in shape) else None,
        refusal=clean(value.get("refusal") or "", 1000),
        refused=tuple(n for n in names("refused", 1000) or () if isinstance(n, str) and EXACT_CLASS.fullmatch(n)),
        loaded=bool(value.get("loaded")),
    )


# --- in the model's process ------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# the decisions


@dataclass(frozen=True)
class Scaffold:
    """Everything the written configuration says, and why."""

    model: ModelFacts
    reference: DataFacts
    current: DataFacts
    holdout: DataFacts | None
    target: str
    target_reason: str
    task: str
    task_reason: str
    modality: str  # tabular | image | text
    features: tuple[str, ...]  # what the audit will read
    features_written: bool  # data.features is written (the default would not find them)
    categorical: tuple[str, ...]
    segments: tuple[str, ...]
    segments_reason: str
    plan: str = "standard"
    model_loading: str = "strict"
    trusted_types: tuple[str, ...] = ()
    encoding: str = "utf-8"
    tracking_uri: str | None = None  # written only when given
    max_values: int = 20
    notes: tuple[str, ...] = field(default_factory=tuple)  # findings worth a line in the file's header


def segment_max_values() -> int:
    """The most distinct values a segment column may have: the segments audit's own default."""
    from audits.performance.segments import SegmentsAudit

    return int(SegmentsAudit.Config.model_fields["max_values"].default)


def label_key(value: Any) -> Any:
    """A label as a comparable value: 1, 1.0 and '1' are the same class; True and 'True' too."""
    if isinstance(value, bool):
        return str(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return int(number) if number.is_integer() else number


def infer_target(reference: DataFacts, model: ModelFacts, exclude: tuple[str, ...] = ()) -> tuple[str, str]:
    """The target column and why. Candidates: the reference's columns that are not features the model expects (an image
    archive: its arrays beside the images; a model that does not name its features: every column but ``exclude``).
    One candidate is the target; of several, the one whose values are the model's classes (a classifier) or the
    numeric ones (a regressor), then the one named like a target. Anything else is an error that asks for --target."""
    if reference.image_shape is not None:
        candidates, why = list(reference.names), "the one array of the archive beside its images"
    elif model.features is not None:
        expected = set(model.features)
        candidates = [c for c in reference.names if c not in expected]
        why = f"the one reference column that is not among the {len(model.features)} features the model expects"
    else:
        candidates, why = [c for c in reference.names if c not in exclude], ""
    if not candidates:
        raise DataError(f"every column of the reference ({_listing(reference.names, 12)}) is a feature the model expects: "
                        "there is no target column", "add the labels to the reference data, or pass --target NAME")
    if len(candidates) == 1 and why:
        return candidates[0], why
    narrowed, among = candidates, f"among {_listing(candidates, 8)}"
    if model.task == "classification" and model.classes is not None:
        classes = {label_key(c) for c in model.classes}
        fits = [c for c in candidates if reference.column(c).values_within(classes)]
        if len(fits) == 1:
            return fits[0], f"its values are the model's classes, {among}"
        narrowed = fits or candidates
    elif model.task == "regression":
        narrowed = [c for c in candidates if reference.column(c).numeric] or candidates
        if len(narrowed) == 1 and len(candidates) > 1:
            return narrowed[0], f"the only numeric one, for a regressor, {among}"
    named = [c for name in TARGET_NAMES for c in narrowed if c.lower() == name]
    if named:
        return named[0], f"named like a target, {among}"
    raise DataError(f"cannot tell which column of the reference is the target: it could be any of {_listing(narrowed, 12)}",
                    "pass --target NAME (the column that holds the labels the model was trained on)")


def check_target(target: str, reference: DataFacts, holdout: DataFacts | None, model: ModelFacts) -> None:
    """The target exists where it must, is not a feature, and holds what the model predicts."""
    column = reference.column(target)
    if column is None:
        raise DataError(f"the reference data has no column {target!r} (it has {_listing(reference.names, 20)})",
                        "pass --target with the name of the column that holds the labels")
    if model.features is not None and target in model.features:
        raise DataError(f"{target!r} is a feature the model expects, so it cannot be the target",
                        "pass --target with the column that holds the labels")
    if column.missing == reference.rows:
        raise DataError(f"the target column {target!r} of the reference is entirely missing", "fill in the labels")
    if holdout is not None and holdout.column(target) is None:
        raise DataError(f"the holdout data {holdout.path} has no target column {target!r}",
                        "a holdout is labelled rows: add the labels, or leave out --holdout")
    if model.task == "classification" and model.classes is not None and column.common and column.distinct <= len(column.common):
        classes = {label_key(c) for c in model.classes}
        stray = sorted({label_key(v) for v in column.common} - classes, key=str)
        if stray:
            raise DataError(f"the target {target!r} holds {_listing(stray, 8)}, which are not among the model's classes "
                            f"{_listing(model.classes, 10)}", "pass --target with the column of the labels the model was "
                            "trained on")
    if model.task == "regression" and not column.numeric:
        raise DataError(f"the model is a regressor, but the target {target!r} holds {column.kind} values",
                        "pass --target with the numeric column the model predicts")


def segment_candidates(target: str, sides: list[DataFacts], max_values: int) -> tuple[str, ...]:
    """Columns to slice results by: text (category) or boolean columns of at most ``max_values`` distinct values (and
    at least two, each on two rows or more on average: not an identifier), present in every file; never the target."""
    first, others = sides[0], sides[1:]
    return tuple(c.name for c in first.columns if c.name != target and c.kind in ("category", "boolean")
                 and 2 <= c.distinct <= max_values and 2 * c.distinct <= first.rows
                 and all(o.column(c.name) is not None for o in others))


def decide(model: ModelFacts, reference: DataFacts, current: DataFacts, holdout: DataFacts | None = None, *,
           target: str | None = None, segments: tuple[str, ...] | None = None, task: str | None = None,
           plan: str = "standard", model_loading: str = "strict", trusted_types: tuple[str, ...] = (),
           encoding: str = "utf-8", tracking_uri: str | None = None, max_values: int | None = None) -> Scaffold:
    """The configuration's choices from what was found; flags (``target``, ``segments``, ``task``) win over inference.
    Raises a DataError or ConfigError (with the flag that fixes it) where the data and the model disagree."""
    max_values = segment_max_values() if max_values is None else max_values
    sides = [s for s in (reference, current, holdout) if s is not None]
    images = [s.image_shape is not None for s in sides]
    if any(images) and not all(images):
        raise DataError("the reference, current and holdout data must all be image archives (.npz) or none of them",
                        "give every side in the same format")
    if task is not None and model.task is not None and task != model.task:
        raise ConfigError(f"--task {task}, but {model.label} is a {model.task} model", f"leave out --task (it is {model.task})")
    task_reason = ("what the model says it is; the plan keeps the audits for this task" if model.task else
                   "given (--task): the model does not say; the plan keeps the audits for this task")
    task = task or model.task
    if task is None:
        raise ConfigError(f"{model.label} does not say whether it is a classifier or a regressor ({', '.join(model.flavors)})",
                          "pass --task classification or --task regression")
    model = replace(model, task=task)
    if target is None:
        target, target_reason = infer_target(reference, model, tuple(segments or ()))
    else:
        target_reason = "given (--target)"
    check_target(target, reference, holdout, model)
    notes: list[str] = []
    if current.column(target) is None:
        notes.append(f"the current data has no {target!r} column: the audits that need labels there say SKIPPED"
                     + ("" if holdout is not None else "; with --holdout, performance_estimation estimates them"))
    modality = "image" if all(images) else "tabular"
    if modality == "image":
        features, features_written = (), False  # the image's elements: the audit's default
        if reference.image_shape != current.image_shape:
            raise DataError(f"the current images are {current.image_shape}, the reference images {reference.image_shape} "
                            "(C, H, W)", "give both sides images of the shape the model takes")
    else:
        if model.features is not None:
            features = model.features
            features_written = model.features_from != "the model's feature_names_in_"  # the audit reads those itself
        else:
            features = tuple(c for c in reference.names if c != target and c not in (segments or ()))
            features_written = False
        for side in sides:
            missing = [f for f in features if side.column(f) is None]
            if missing:
                raise DataError(f"the {side.role} data {side.path} lacks column(s) {_listing(missing, 12)} that "
                                f"{model.label} expects", f"pass --{side.role} data with the model's features "
                                f"({_listing(features, 12)})")
        kinds = [reference.column(f).kind for f in features]
        if len(features) == 1 and kinds == ["text"]:
            modality = "text"
        elif "text" in kinds and len(features) > 1:
            notes.append("a feature holds free text beside other columns: it is audited as a category (tabular data)")
    categorical = tuple(f for f in features if reference.column(f) is not None and not reference.column(f).numeric)
    if segments is None:
        segments = segment_candidates(target, sides, max_values)
        segments_reason = ("low-cardinality text or boolean columns found in every file" if segments else
                           f"no text or boolean column of 2 to {max_values} values in every file")
    else:
        for name in segments:
            for side in sides:
                if side.column(name) is None:
                    raise DataError(f"--segments names {name!r}, which the {side.role} data {side.path} does not have",
                                    f"name columns present in every file (it has {_listing(side.names, 20)})")
        if target in segments:
            raise DataError(f"--segments names the target {target!r}", "slice by other columns")
        segments_reason = "given (--segments)" if segments else "none (--segments '')"
    return Scaffold(model, reference, current, holdout, target, target_reason, task, task_reason, modality, tuple(features),
                    features_written, categorical, tuple(segments), segments_reason, plan, model_loading,
                    tuple(trusted_types), encoding, tracking_uri, max_values, tuple(notes))


def refusal_error(model: ModelFacts, command: str) -> ConfigError:
    """The model does not load under model_loading strict and the user chose nothing: what was refused, and the two
    choices, as flags of the same command."""
    good, never = model.listable()
    problem = f"{model.label} cannot be loaded under security.model_loading: strict: {model.refusal}"
    if good and not never:
        flags = " ".join(f"--trusted-type {n}" for n in good)
        fix = (f"if these classes come from a package you trust, installed where audits run: {command} {flags} (init then "
               f"writes security.trusted_types); or, to run the model's own code: {command} --model-loading trusted")
    else:
        fix = (f"nothing of it can be trusted by name{' (' + ', '.join(never[:4]) + ')' if never else ''}; if you trust "
               f"this model's code: {command} --model-loading trusted (its code then runs in the model's process, "
               "without credentials)")
    return ConfigError(problem, fix)


# ---------------------------------------------------------------------------------------------
# the file


def relative(path: str, folder: Path) -> str:
    """``path`` (absolute; a file, a folder or a glob) relative to ``folder``, as load_settings resolves data paths."""
    return Path(os.path.relpath(path, folder)).as_posix()


def written_tracking_uri(uri: str, folder: Path, cwd: Path) -> str:
    """``uri`` as the config must say it: a relative SQLite path (from ``cwd``, as given) made relative to the config's
    ``folder``, where load_settings starts it."""
    if uri.startswith("sqlite:///"):
        database = Path(uri.removeprefix("sqlite:///"))
        if not database.is_absolute():
            return f"sqlite:///{relative(str((cwd / database).resolve()), folder)}"
    return uri


def _line(indent: int, key: str, value: Any, comment: str = "", width: int = 44) -> str:
    text = f"{'  ' * indent}{key}: {yaml_value(value)}"
    return f"{text.ljust(width)}  # {clean(comment, 200)}" if comment else text


def _comment(indent: int, text: str) -> str:
    return f"{'  ' * indent}# {clean(text, 200)}"


def _column_lines(scaffold: Scaffold) -> list[str]:
    reference = scaffold.reference
    roles = {scaffold.target: "the target"}
    for name in scaffold.features:
        roles[name] = "feature" + (", categorical" if name in scaffold.categorical else "")
    for name in scaffold.segments:
        roles[name] = (roles[name] + ", " if name in roles else "") + "a segment"
    candidates = set(segment_candidates(scaffold.target, [s for s in (reference, scaffold.current, scaffold.holdout) if s],
                                        scaffold.max_values))
    width = min(max((len(clean(c.name, 30)) for c in reference.columns), default=0), 30)
    lines = []
    for column in reference.columns[:LISTED_COLUMNS]:
        role = roles.get(column.name, "not read by the model")
        if column.name in candidates and column.name not in scaffold.segments:
            role += " (a candidate segment)"
        lines.append(_comment(1, f"  {clean(column.name, 30).ljust(width)}  {column.summary(scaffold.max_values)}; {role}"))
    if len(reference.columns) > LISTED_COLUMNS:
        lines.append(_comment(1, f"  ... and {len(reference.columns) - LISTED_COLUMNS} more columns"))
    return lines


def render(scaffold: Scaffold, folder: Path, cwd: Path, command: str, today: date | None = None) -> str:
    """The configuration, commented: each key says what it is and what was found."""
    s, model = scaffold, scaffold.model
    today = today or date.today()
    lines = [
        f"# An audit configuration for {clean(model.uri, 200)}, written by `auditlens init` on {today.isoformat()} from what",
        "# it found in the model and the data (the comments say what). Edit freely; `auditlens check-config FILE` validates.",
        "# Every key: the README's 'Configuration'; every audit and its keys: `auditlens audits -v`. Run it with:",
        f"#   {clean(command, 400)}",
        *[line for n in s.notes for line in _comments(0, f"Note: {n}")],
        "kind: audit",
        _line(0, "plan", s.plan, "quick | standard | full: which audits run; entries under 'audits:' override it"),
        _line(0, "seed", 0, "every random step (sampling, SHAP rows, backgrounds) derives from it"),
        "",
        "model:",
        *_comments(1, f"found: {model.label}{' (' + model.version_note + ')' if model.version_note else ''}: {model.what()}"),
        _line(1, "task", s.task, s.task_reason),
        "",
        "security:",
        *_security_lines(s),
        "",
        "data:",
        _line(1, "reference", relative(s.reference.path, folder), f"what the model was trained on: {s.reference.size()}"),
        _line(1, "current", relative(s.current.path, folder), f"what it sees now: {s.current.size()}; labels "
              f"{'present' if s.current.column(s.target) is not None else 'absent'}"),
    ]
    if s.holdout is not None:
        lines.append(_line(1, "holdout", relative(s.holdout.path, folder), "labelled rows the model did not train on: "
                           f"{s.holdout.size()} (calibration, conformal and estimates fit on these)"))
    target = s.reference.column(s.target)
    lines.append(_line(1, "target", s.target, f"{s.target_reason}; {target.summary(s.max_values)}"))
    if s.modality != "tabular":
        what = {"image": f"images of {'x'.join(map(str, s.reference.image_shape or ()))} (C x H x W) in .npz archives",
                "text": f"one column of free text, {s.features[0] if s.features else ''!r}"}[s.modality]
        lines.append(_line(1, "modality", s.modality, what))
    if s.features_written:
        lines.append(_line(1, "features", list(s.features), f"as {model.features_from} names them"))
    elif s.modality != "image":
        source = model.features_from or "every column but the target"
        lines.append(_comment(1, f"features: the default, {source}: {_listing(s.features, 12)}"))
    if s.modality == "tabular":
        lines.append(_comment(1, f"categorical: the default, the non-numeric features: {_listing(s.categorical, 12) if s.categorical else 'none'}"))
    if s.encoding != "utf-8":
        lines.append(_line(1, "encoding", s.encoding, "of the CSV files"))
    lines.append(_line(1, "segments", list(s.segments), f"columns to slice results by: {s.segments_reason}"))
    lines.append(_comment(1, "columns of the reference" + (f" (its first {s.reference.rows:,} rows)" if s.reference.sampled else "") + ":"))
    lines.extend(_column_lines(s))
    lines.append("")
    if s.tracking_uri is not None:
        lines += ["mlflow:", _line(1, "tracking_uri", written_tracking_uri(s.tracking_uri, folder, cwd),
                                   "where the model is registered and the audit is recorded")]
    else:
        lines.append(_comment(0, "mlflow: {tracking_uri: ...}  not set: the audit uses --tracking-uri, $MLFLOW_TRACKING_URI, "
                                 "else sqlite:///mlflow.db in the folder it runs from"))
    lines.append("")
    lines += _audit_lines(s)
    return "\n".join(lines) + "\n"


def _security_lines(s: Scaffold) -> list[str]:
    model = s.model
    where = model.model_file or ", ".join(model.flavors)
    if model.serialization and not where.endswith(model.serialization):
        where += f" ({model.serialization})"
    if s.model_loading == "trusted":
        refused = model.refusal or "nothing"
        lines = [_line(1, "model_loading", "trusted", "you chose (--model-loading trusted): the model's own code runs, in "
                       "its process, without credentials"),
                 *_comments(1, f"under strict the gate refuses it: {refused}")]
    elif s.trusted_types:
        lines = [_line(1, "model_loading", "strict", f"through auditlens's allowlist: the gate accepts {where} with the "
                                                     "classes below")]
    else:
        lines = [_line(1, "model_loading", "strict", f"through auditlens's allowlist: the gate accepts every type in {where}")]
    if s.trusted_types:
        lines.append(_line(1, "trusted_types", list(s.trusted_types), "you chose (--trusted-type): exact classes the gate "
                                                                       "found, to be installed where audits run"))
    return lines


def _audit_lines(s: Scaffold) -> list[str]:
    """No entries under audits: unless there is a reason: the plan, expanded for this model's kind, is listed instead
    (with what it would add given more), and how to change it."""
    from audits.core.presets import HOLDOUT, KIND_LABELS, SEGMENTS, kinds_for, preset_entries, preset_table

    kind = kinds_for(s.modality, s.task)[0]
    given = {SEGMENTS: bool(s.segments), HOLDOUT: s.holdout is not None}
    planned = [e.audit for e in preset_entries(s.plan, s.modality, s.task, segments=given[SEGMENTS], holdout=given[HOLDOUT])]
    wanting = [e for e in preset_table(s.plan)[kind] if e.needs is not None and not given[e.needs]]
    lines = [*_comments(0, f"audits: none listed, so the plan runs as it is. Plan '{s.plan}' for a {KIND_LABELS[kind]} "
                           f"({s.task}) runs: {', '.join(planned)}.")]
    if wanting:
        lines += _comments(0, "With " + " and ".join(sorted({e.needs for e in wanting})) + " it would also run "
                           + ", ".join(e.audit for e in wanting) + ".")
    lines += _comments(0, "To change the plan, list entries (an entry for an audit of the plan replaces what it sets; "
                          "any other is added), e.g.:")
    lines += ["# audits:",
              "#   - {audit: shap, config: {rows: 500}}     # its config keys go over the plan's",
              "#   - {audit: ood, enabled: false}          # removes it from the plan",
              "#   - {audit: lime}                         # adds an audit the plan does not hold"]
    if s.segments and "segments" not in planned:
        lines.append(f"#   - {{audit: segments}}                     # the {s.plan} plan leaves out results per "
                     "segment; this adds them")
    return lines


def _comments(indent: int, text: str, width: int = 116) -> list[str]:
    """``text`` as comment lines of at most ``width`` characters."""
    import textwrap

    prefix = "  " * indent + "# "
    return textwrap.wrap(clean(text, 2000), width=width, initial_indent=prefix, subsequent_indent=prefix + "  ")


def write_checked(text: str, out: Path, force: bool = False) -> Any:
    """Write ``text`` to ``out`` once it holds: the configuration validates (load_settings) and its data passes the
    audit's own preflight, checked on a file beside ``out`` (so relative paths resolve the same) that then replaces it.
    Nothing is left behind when a check fails. Returns the LoadedSettings (of ``out``)."""
    from tasks.adapters.inputs import preflight_data
    from tasks.adapters.settings import load_settings

    if out.exists() and not force:
        raise ConfigError(f"{out} exists", "pass --force to replace it, or --out another file")
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".yaml", dir=out.parent)
    staged = Path(name)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staged, 0o666 & ~umask)  # as any file the user writes (mkstemp's is private)
        loaded = load_settings(staged)
        preflight_data(loaded)
        os.replace(staged, out)
    finally:
        staged.unlink(missing_ok=True)
    return load_settings(out)


def audit_command(model_uri: str, out: Path, cwd: Path, program: str = "auditlens") -> str:
    """The command that runs the written configuration, from ``cwd``."""
    import shlex

    shown = os.path.relpath(out, cwd) if out.resolve().is_relative_to(cwd.resolve()) else str(out.resolve())
    return f"{program} audit --model {shlex.quote(model_uri)} --config {shlex.quote(shown)}"

