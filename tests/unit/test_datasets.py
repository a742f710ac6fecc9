"""Reading, checking and sampling the datasets: bad data gets one clear error naming the file and column."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasks.adapters.datasets import frame_sha256, prepare, read_columns
from tasks.adapters.errors import DataError
from tests.conftest import make_tabular


@pytest.fixture()
def csv(tmp_path):
    X, y = make_tabular(300)
    path = tmp_path / "data.csv"
    pd.concat([X, y], axis=1).to_csv(path, index=False)
    return path


FEATURES = ["x1", "x2", "x3", "noise", "colour"]


def test_csv_and_parquet_read_the_same(csv, tmp_path):
    parquet = tmp_path / "data.parquet"
    pd.read_csv(csv).to_parquet(parquet)
    a = prepare("reference", csv, FEATURES, "label", True, 10_000, 0)
    b = prepare("reference", parquet, FEATURES, "label", True, 10_000, 0)
    pd.testing.assert_frame_equal(a.X, b.X)
    assert read_columns(csv) == read_columns(parquet) == FEATURES + ["label"]
    assert a.fingerprint["rows"] == 300 and a.fingerprint["labelled"] is True
    assert a.fingerprint["sample_sha256"] == b.fingerprint["sample_sha256"]
    assert a.fingerprint["sha256"] != b.fingerprint["sha256"]  # different files, same content


def test_sampling_respects_the_budget_and_the_seed(csv):
    a = prepare("current", csv, FEATURES, "label", False, 100, seed=1)
    b = prepare("current", csv, FEATURES, "label", False, 100, seed=1)
    c = prepare("current", csv, FEATURES, "label", False, 100, seed=2)
    assert len(a.X) == 100 and a.fingerprint["rows_used"] == 100 and a.fingerprint["rows"] == 300
    assert list(a.X.index) == list(b.X.index) != list(c.X.index)
    assert (a.y.index == a.X.index).all()
    assert frame_sha256(a.X) == frame_sha256(b.X) != frame_sha256(c.X)


def test_target_is_optional_on_current_data(csv, tmp_path):
    unlabelled = tmp_path / "unlabelled.csv"
    pd.read_csv(csv).drop(columns="label").to_csv(unlabelled, index=False)
    assert prepare("current", unlabelled, FEATURES, "label", False, 1000, 0).y is None
    with pytest.raises(DataError, match="lacks the target column 'label'"):
        prepare("reference", unlabelled, FEATURES, "label", True, 1000, 0)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda df: df.drop(columns="x2"), r"lacks feature column\(s\) \['x2'\]"),
        (lambda df: df.iloc[0:0], "has no rows"),
        (lambda df: df.assign(**{c: np.nan for c in FEATURES}), "every feature value is missing"),
        (lambda df: df.assign(label=np.where(np.arange(len(df)) % 10 == 0, None, df["label"])), "has 30 missing labels"),
    ],
    ids=["missing-feature", "empty", "all-nan", "missing-labels"],
)
def test_bad_data_gets_one_clear_error(csv, tmp_path, mutate, message):
    bad = tmp_path / "bad.csv"
    mutate(pd.read_csv(csv)).to_csv(bad, index=False)
    with pytest.raises(DataError, match=message) as info:
        prepare("current", bad, FEATURES, "label", False, 1000, 0)
    assert str(bad) in str(info.value) and info.value.fix


def test_unknown_formats_and_missing_files(tmp_path):
    with pytest.raises(DataError, match="unsupported file type '.xlsx'"):
        read_columns(tmp_path / "data.xlsx")
    with pytest.raises(DataError, match="does not exist"):
        read_columns(tmp_path / "missing.csv")
