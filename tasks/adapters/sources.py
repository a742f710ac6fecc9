"""Data as partitions: a Parquet file, a Parquet dataset (a folder, or a glob of files) or CSV files (one, or a glob),
read lazily one partition at a time.

A partition is a Parquet row group range or a run of CSV lines, at most ``partition_rows`` rows: a worker holds one at a
time, whatever the size of the dataset. Nothing here loads a whole dataset into one frame.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tasks.adapters.datasets import READERS, _unreadable, read_header
from tasks.adapters.errors import DataError

PARTITIONED = (".parquet", ".pq", ".csv")
GLOB_CHARS = set("*?[")
CSV_BYTES_PER_COUNT = 1 << 22


def is_glob(spec: str) -> bool:
    return any(ch in GLOB_CHARS for ch in spec)


@dataclass(frozen=True)
class Fragment:
    """One partition of a source: a file, a range of its Parquet row groups, or (CSV) the whole file read in chunks."""

    role: str
    path: str
    fmt: str  # parquet | csv
    index: int  # its position among the source's fragments: seeds its rows' sample keys
    row_groups: tuple[int, ...] | None = None  # Parquet: which row groups; None: all
    rows: int | None = None  # known for Parquet (its metadata), not for CSV

    @property
    def label(self) -> str:
        if self.row_groups is None:
            return self.path
        return f"{self.path} (row groups {self.row_groups[0]}-{self.row_groups[-1]})"


@dataclass(frozen=True)
class Source:
    """One side's data: its files, in a stable order, all with the same columns."""

    role: str
    spec: str  # as configured, for messages
    files: tuple[str, ...]
    fmt: str
    columns: tuple[str, ...]
    encoding: str = "utf-8"

    @property
    def partitioned(self) -> bool:
        return len(self.files) > 1 or is_glob(self.spec) or Path(self.spec).is_dir()

    def arrow_types(self) -> dict:
        """Parquet's column types (of the first file: every file has the same columns), by name."""
        import pyarrow.parquet as pq

        schema = pq.read_schema(self.files[0])
        return {name: schema.field(name).type for name in schema.names}

    def estimated_rows(self) -> int:
        """Rows from Parquet metadata (exact); for CSV, line breaks counted in binary (an upper bound: a quoted field
        may hold a line break), without parsing."""
        if self.fmt == "parquet":
            import pyarrow.parquet as pq

            return sum(pq.ParquetFile(f).metadata.num_rows for f in self.files)
        total = 0
        for name in self.files:
            with open(name, "rb") as handle:
                for block in iter(lambda: handle.read(CSV_BYTES_PER_COUNT), b""):
                    total += block.count(b"\n")
            total -= 1  # the header
        return max(total, 0)

    def fragments(self, partition_rows: int) -> list[Fragment]:
        out: list[Fragment] = []
        if self.fmt == "csv":
            return [Fragment(self.role, f, "csv", i) for i, f in enumerate(self.files)]
        import pyarrow.parquet as pq

        for name in self.files:
            meta = pq.ParquetFile(name).metadata
            group, rows = [], 0
            for g in range(meta.num_row_groups):
                n = meta.row_group(g).num_rows
                if group and rows + n > partition_rows:
                    out.append(Fragment(self.role, name, "parquet", len(out), tuple(group), rows))
                    group, rows = [], 0
                group.append(g)
                rows += n
            if group or meta.num_row_groups == 0:
                out.append(Fragment(self.role, name, "parquet", len(out), tuple(group), rows))
        return out


def _files(role: str, spec: str, base: Path) -> list[str]:
    path = Path(spec).expanduser()
    if not path.is_absolute():
        path = base / path
    if is_glob(spec):
        found = sorted(f for f in glob.glob(str(path), recursive=True) if os.path.isfile(f))
        if not found:
            raise DataError(f"{role} data {spec!r}: no file matches this pattern (looked in {path.parent})",
                            "check the pattern, e.g. data/current/*.parquet or data/**/*.csv")
        return found
    if path.is_dir():
        found = sorted(str(f) for f in path.rglob("*") if f.is_file() and f.suffix.lower() in PARTITIONED
                       and not any(part.startswith((".", "_")) for part in f.relative_to(path).parts))
        if not found:
            raise DataError(f"{role} data {path} is a folder with no .parquet or .csv files",
                            "point it at a Parquet dataset (a folder of .parquet files), a file, or a glob such as data/*.csv")
        return found
    if not path.exists():
        raise DataError(f"data file {path} does not exist",
                        "check the path under 'data:' in the config (relative paths start at the config file's folder)")
    return [str(path)]


def open_source(role: str, spec: str, base: Path, encoding: str = "utf-8") -> Source:
    """The files of one side, checked to be one format with one header (a file with other columns is named)."""
    files = _files(role, spec, base)
    formats = {READERS.get(Path(f).suffix.lower()) for f in files}
    if None in formats or "npz" in formats:
        odd = next(f for f in files if READERS.get(Path(f).suffix.lower()) in (None, "npz"))
        raise DataError(f"{role} data {spec!r}: {odd} is not a .parquet or .csv file",
                        "keep only .parquet or only .csv files in a partitioned dataset")
    if len(formats) > 1:
        raise DataError(f"{role} data {spec!r} mixes Parquet and CSV files", "keep one format per dataset")
    fmt = formats.pop()
    columns = None
    for name in files:
        found = tuple(read_header(Path(name), fmt, encoding))
        if columns is None:
            columns = found
        elif set(found) != set(columns):
            missing, extra = sorted(set(columns) - set(found)), sorted(set(found) - set(columns))
            raise DataError(f"{role} data {name} has other columns than {files[0]} (missing {missing[:10]}, extra {extra[:10]})",
                            "give every file of a dataset the same columns")
    return Source(role, spec, tuple(files), fmt, columns or (), encoding)


def read_fragment(fragment: Fragment, columns: list[str], encoding: str = "utf-8", chunk_rows: int = 250_000) -> Iterator[pd.DataFrame]:
    """The fragment's rows, ``columns`` only, in frames of at most ``chunk_rows`` rows (CSV) or its row groups (Parquet)."""
    path = Path(fragment.path)
    try:
        if fragment.fmt == "parquet":
            import pyarrow.parquet as pq

            handle = pq.ParquetFile(path)
            groups = list(fragment.row_groups) if fragment.row_groups is not None else list(range(handle.num_row_groups))
            if not groups:
                return
            table = handle.read_row_groups(groups, columns=columns)
            frame = table.to_pandas()
            frame.columns = [str(c) for c in frame.columns]
            yield frame
            return
        names = read_header(path, "csv", encoding)
        with pd.read_csv(path, encoding=encoding, usecols=lambda c: c in set(columns), chunksize=chunk_rows) as reader:
            for chunk in reader:
                chunk.columns = [str(c) for c in chunk.columns]
                yield chunk[[c for c in columns if c in chunk.columns and c in names]]
    except DataError:
        raise
    except Exception as exc:
        raise _unreadable(path, fragment.fmt, exc, encoding) from None
