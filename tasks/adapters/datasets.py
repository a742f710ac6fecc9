"""Reading the reference and current datasets, checking them against the model, sampling to budgets."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks.adapters.errors import DataError

READERS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".npz": "npz"}
IMAGES = "images"  # the array of a .npz image dataset: N x C x H x W; other 1-D arrays of length N are columns


def _format(path: Path) -> str:
    if path.is_dir():
        raise DataError(f"{path} is a folder; auditlens reads one data file per side", "point data.reference / data.current at a .csv or .parquet file")
    fmt = READERS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}", "use a .csv or .parquet file (.npz for images)")
    if not path.is_file():
        raise DataError(f"data file {path} does not exist", "check the path under 'data:' in the config (relative paths start at the config file's folder)")
    return fmt


def _unreadable(path: Path, fmt: str, exc: Exception, encoding: str) -> DataError:
    """One error for a file that is not what its name says, with the fix for its kind of fault."""
    if isinstance(exc, UnicodeDecodeError):
        return DataError(f"{path} is not {encoding} text (byte {exc.start} of its {exc.reason})",
                         "set data.encoding to the file's encoding (e.g. latin-1, cp1252), or save it as UTF-8")
    first_line = " ".join(str(exc).split())[:300]
    if fmt == "parquet":
        return DataError(f"{path}: cannot be read as Parquet ({type(exc).__name__}: {first_line})",
                         "the file is damaged or not Parquet: write it again (e.g. DataFrame.to_parquet)")
    return DataError(f"{path}: cannot be read as {fmt} ({type(exc).__name__}: {first_line})", f"check that the file is valid {fmt}")


def _checked_names(path: Path, names: list[str]) -> list[str]:
    """The header's column names, refused when two are the same (pandas would silently rename the second 'x' to 'x.1',
    and the model would read whichever it finds first)."""
    seen: dict[str, int] = {}
    for position, name in enumerate(names):
        if name in seen:
            raise DataError(f"{path}: column name {name!r} appears twice (columns {seen[name] + 1} and {position + 1})",
                            "give every column its own name")
        seen[name] = position
    return names


def _npz(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The images (N, C, H, W) of a .npz dataset and its other per-row arrays (labels, ids)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except Exception as exc:
        raise DataError(f"{path}: cannot be read as .npz ({exc})", "save it with numpy.savez(path, images=..., label=...)") from None
    images = arrays.pop(IMAGES, None)
    if images is None or images.ndim != 4:
        found = {k: v.shape for k, v in arrays.items()} | ({IMAGES: images.shape} if images is not None else {})
        raise DataError(f"{path}: an image dataset needs an array {IMAGES!r} of shape N x C x H x W (found {found})",
                        "save it with numpy.savez(path, images=X, label=y), X of shape (N, C, H, W)")
    bad = {k: v.shape for k, v in arrays.items() if v.shape != (len(images),)}
    if bad:
        raise DataError(f"{path}: arrays {bad} are not one value per image ({len(images)} images)",
                        "keep only the images and per-image arrays such as labels")
    return images, arrays


def image_shape(path: Path) -> tuple[int, ...]:
    """(C, H, W) of a .npz image dataset."""
    if _format(path) != "npz":
        raise DataError(f"{path}: image data must be a .npz file (arrays: images N x C x H x W, and the labels)",
                        "save it with numpy.savez(path, images=X, label=y), or set data.modality to tabular")
    return tuple(int(s) for s in _npz(path)[0].shape[1:])


def read_columns(path: Path, encoding: str = "utf-8") -> list[str]:
    """The column names alone, cheaply (a CSV header, a Parquet schema, a .npz's arrays)."""
    fmt = _format(path)
    if fmt == "npz":
        return list(read_table(path).columns)
    return read_header(path, fmt, encoding)


def read_header(path: Path, fmt: str, encoding: str = "utf-8") -> list[str]:
    """A CSV or Parquet file's column names, checked (no name twice); an unreadable file gets its one error."""
    try:
        if fmt == "csv":
            import csv

            with path.open(newline="", encoding=encoding) as handle:
                header = next(csv.reader(handle), None)
            return _checked_names(path, [str(c) for c in header]) if header else []
        import pyarrow.parquet as pq

        return _checked_names(path, [str(c) for c in pq.read_schema(path).names])
    except DataError:
        raise
    except Exception as exc:
        raise _unreadable(path, fmt, exc, encoding) from None


def read_table(path: Path, encoding: str = "utf-8") -> pd.DataFrame:
    fmt = _format(path)
    if fmt == "npz":  # one column per image element, p{c}_{h}_{w} (audits.methods.network.image_columns)
        from audits.methods.network import image_columns

        images, columns = _npz(path)
        frame = pd.DataFrame(images.reshape(len(images), -1).astype(np.float32), columns=image_columns(images.shape[1:]))
        for name, values in columns.items():
            frame[name] = values
        return frame
    names = read_columns(path, encoding)  # checked: no column twice
    try:
        frame = pd.read_csv(path, encoding=encoding) if fmt == "csv" else pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        frame = pd.DataFrame()
    except Exception as exc:
        raise _unreadable(path, fmt, exc, encoding) from None
    if fmt == "csv" and len(frame.columns) == len(names):
        frame.columns = names  # the header as written: pandas renames an empty name to 'Unnamed: 3'
    frame.columns = [str(c) for c in frame.columns]
    return frame


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def frame_sha256(frame: pd.DataFrame) -> str:
    digest = hashlib.sha256(",".join(map(str, frame.columns)).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=True).to_numpy().tobytes())
    return digest.hexdigest()


def resolve_features(
    columns: list[str], target: str | None, configured: list[str] | None, model_features: list[str] | None,
    exclude: list[str] | tuple[str, ...] = (),
) -> list[str]:
    """The configured features, else the model's own, else every column but the target and ``exclude`` (the columns
    that hold the model's predictions)."""
    if configured:
        return list(configured)
    if model_features:
        return list(model_features)
    return [c for c in columns if c != target and c not in exclude]


def check_numeric(frame: pd.DataFrame, numeric: list[str] | tuple[str, ...], where: str, offset: int = 0, scope: str = "") -> None:
    """Columns that are numbers in the reference hold numbers here too, in every row: text where the model was trained on
    numbers means an export went wrong (a stray 'n/a', a thousands separator), and the model would fail or guess on it.
    ``where`` names the data in the message, ``offset`` is the first row's number, ``scope`` qualifies the count."""
    for column in numeric:
        now = frame[column]
        if pd.api.types.is_numeric_dtype(now) or now.isna().all():
            continue
        numbers = pd.to_numeric(now, errors="coerce")
        text = numbers.isna() & now.notna()
        if not text.any():
            continue
        first = int(np.flatnonzero(text.to_numpy())[0])
        raise DataError(f"{where}: column {column!r} holds text where the reference holds numbers "
                        f"({int(text.sum())} value(s){scope}, first {str(now.iloc[first])[:40]!r} in row {offset + first})",
                        "fix the export (a stray word, a thousands separator or a decimal comma?) so the column holds numbers")


def check_finite(frame: pd.DataFrame, columns: list[str] | tuple[str, ...], where: str, offset: int = 0) -> None:
    """No infinity in any row of the numeric ``columns``: one among millions breaks means, distances and most models."""
    for column in columns:
        values = frame[column]
        if not pd.api.types.is_numeric_dtype(values):
            values = pd.to_numeric(values, errors="coerce")
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            infinite = np.isinf(values.to_numpy(dtype=float, na_value=np.nan))
            if infinite.any():
                raise DataError(f"{where}: column {column!r} holds {int(infinite.sum())} infinite value(s) "
                                f"(first in row {offset + int(np.flatnonzero(infinite)[0])})",
                                "replace them with missing values (empty cells) or finite numbers")


def check_columns(role: str, path: Path, columns: list[str], features: list[str], target: str | None, target_required: bool) -> None:
    unnamed = [f for f in features if not f.strip()]
    if unnamed:
        raise DataError(f"{role} data {path}: a column has no name in the header, and it would be a feature",
                        "name every column (a DataFrame's index written by to_csv? write it with index=False), "
                        "or list the features under data.features")
    missing = [f for f in features if f not in columns]
    if missing:
        raise DataError(
            f"{role} data {path} lacks feature column(s) {missing} that the model needs (it has {columns[:20]})",
            "add the columns to the file, or list the model's features under 'data.features' in the config",
        )
    if target_required and target and target not in columns:
        raise DataError(
            f"{role} data {path} lacks the target column {target!r} (it has {columns[:20]})",
            "add the label column, or set 'data.target' to the name of the label column",
        )


@dataclass(frozen=True)
class PreparedData:
    X: pd.DataFrame
    y: pd.Series | None
    fingerprint: dict[str, Any] = field(default_factory=dict)
    segments: pd.DataFrame | None = None


def prepare(
    role: str, path: Path, features: list[str], target: str | None, target_required: bool, budget: int, seed: int,
    segments: list[str] | None = None, encoding: str = "utf-8", numeric: list[str] | None = None,
) -> PreparedData:
    """Read, check and sample one dataset; refuse empty or all-missing data, or infinite values, with a clear error."""
    frame = read_table(path, encoding)
    check_columns(role, path, list(frame.columns), features, target, target_required)
    missing_segments = [c for c in segments or [] if c not in frame.columns]
    if missing_segments:
        raise DataError(f"{role} data {path} lacks segment column(s) {missing_segments} named in data.segments",
                        "add the columns to the file or remove them from data.segments")
    if frame.empty:
        raise DataError(f"{role} data {path} has no rows", "point 'data." + role + "' at a file with data")
    X = frame[features]
    check_numeric(X, numeric or [], f"{role} data {path}")
    if X.isna().all().all():
        raise DataError(f"{role} data {path}: every feature value is missing (NaN)", "check how the file was exported")
    check_finite(X, [c for c in features if pd.api.types.is_numeric_dtype(X[c])], f"{role} data {path}")
    all_missing = [c for c in features if X[c].isna().all()]
    if all_missing and role == "reference":
        raise DataError(f"reference data {path}: column(s) {all_missing} are entirely missing",
                        "the reference is what the model was trained on; fix the export or drop those features")
    y = None
    if target and target in frame.columns:
        labels = frame[target]
        if labels.isna().all():
            if target_required:
                raise DataError(f"{role} data {path}: the target column {target!r} is entirely missing", "fill in the labels")
        elif labels.isna().any():
            raise DataError(
                f"{role} data {path}: the target column {target!r} has {int(labels.isna().sum())} missing labels",
                "drop the unlabelled rows, or remove the target column to audit without labels",
            )
        else:
            y = labels
    segment_frame = frame[list(segments)] if segments else None
    if len(frame) > budget:
        index = frame.sample(n=budget, random_state=seed).index.sort_values()
        X, y = X.loc[index], (y.loc[index] if y is not None else None)
        segment_frame = segment_frame.loc[index] if segment_frame is not None else None
    fingerprint = {
        "path": str(path),
        "sha256": file_sha256(path),
        "sample_sha256": frame_sha256(X if y is None else pd.concat([X, y], axis=1)),
        "rows": len(frame),
        "rows_used": len(X),
        "columns": len(frame.columns),
        "labelled": y is not None,
    }
    return PreparedData(X, y, fingerprint, segment_frame)
