"""Data as partitions: Parquet folders and globs, CSV globs, read a partition at a time; the sample drawn over every
partition is uniform, seeded, and the same whatever order the partitions are processed in."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from tasks.adapters.errors import DataError
from tasks.adapters.full_pass import KEY, LocalEngine, PassPlan, survey
from tasks.adapters.sources import open_source, read_fragment


def write_parquet_dataset(folder, frames, row_group_size=None):
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        frame.to_parquet(folder / f"part-{i:03d}.parquet", index=False, row_group_size=row_group_size)
    return folder


def plan_for(features, target=None, seed=0, chunk_rows=1000, numeric=None):
    return PassPlan(features=tuple(features), target=target, segments=(), numeric=tuple(numeric if numeric is not None else features),
                    encoding="utf-8", seed=seed, chunk_rows=chunk_rows)


def frames(n_files=4, rows=500, seed=0):
    rng = np.random.default_rng(seed)
    return [pd.DataFrame({"row": np.arange(i * rows, (i + 1) * rows), "x": rng.normal(size=rows)}) for i in range(n_files)]


def test_parquet_folder_is_split_into_row_group_partitions(tmp_path):
    folder = write_parquet_dataset(tmp_path / "ds", frames(3, 1000), row_group_size=100)
    (folder / "_SUCCESS").write_text("")  # Spark's marker files are skipped
    source = open_source("current", str(folder), tmp_path)
    assert source.partitioned and source.fmt == "parquet" and len(source.files) == 3 and source.estimated_rows() == 3000
    fragments = source.fragments(partition_rows=250)
    assert [f.rows for f in fragments] == [200, 200, 200, 200, 200] * 3 and len({f.index for f in fragments}) == 15
    read = pd.concat([chunk for f in fragments for chunk in read_fragment(f, ["row", "x"])], ignore_index=True)
    assert read["row"].tolist() == list(range(3000))


def test_csv_glob_reads_in_chunks_and_counts_rows(tmp_path):
    for i, frame in enumerate(frames(3, 400)):
        frame.to_csv(tmp_path / f"day-{i}.csv", index=False)
    source = open_source("current", "day-*.csv", tmp_path)
    assert source.fmt == "csv" and len(source.files) == 3 and source.estimated_rows() == 1200
    chunks = list(read_fragment(source.fragments(100)[0], ["row", "x"], chunk_rows=150))
    assert [len(c) for c in chunks] == [150, 150, 100]


def test_partitioned_sources_refuse_what_they_cannot_read(tmp_path):
    with pytest.raises(DataError, match="no file matches"):
        open_source("current", "nothing-*.parquet", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .parquet or .csv files"):
        open_source("current", str(tmp_path / "empty"), tmp_path)
    folder = write_parquet_dataset(tmp_path / "ds", frames(2, 10))
    pd.DataFrame({"row": [1], "y": [2.0]}).to_parquet(folder / "part-009.parquet")
    with pytest.raises(DataError, match="other columns"):
        open_source("current", str(folder), tmp_path)
    (tmp_path / "mixed").mkdir()
    frames(1, 5)[0].to_csv(tmp_path / "mixed" / "a.csv", index=False)
    frames(1, 5)[0].to_parquet(tmp_path / "mixed" / "b.parquet")
    with pytest.raises(DataError, match="mixes Parquet and CSV"):
        open_source("current", str(tmp_path / "mixed"), tmp_path)


def test_the_sample_is_the_same_in_any_partition_order_and_uniform(tmp_path):
    folder = write_parquet_dataset(tmp_path / "ds", frames(8, 1000), row_group_size=250)
    source = open_source("current", str(folder), tmp_path)
    plan = plan_for(["row", "x"])
    first = survey(LocalEngine(), source, plan, sample_rows=2000, partition_rows=250)

    class Reversed(LocalEngine):
        def map(self, function, items, **shared):
            return super().map(function, list(reversed(items)), **shared)

    again = survey(Reversed(), source, plan, sample_rows=2000, partition_rows=250)
    assert first.rows == 8000 and first.partitions == 32
    assert first.sample["row"].tolist() == again.sample["row"].tolist()
    assert first.sha256 == again.sha256
    rows = first.sample["row"].to_numpy()
    assert len(set(rows)) == 2000  # without replacement
    # uniform over all partitions: every file holds about a quarter... an eighth of the sample (chi-squared, 8 cells)
    counts = np.bincount(rows // 1000, minlength=8)
    assert stats.chisquare(counts).pvalue > 0.001
    other_seed = survey(LocalEngine(), source, plan_for(["row", "x"], seed=1), sample_rows=2000, partition_rows=250)
    assert set(other_seed.sample["row"]) != set(rows)
    assert KEY in first.sample.columns


def test_every_row_is_checked_not_just_the_sample(tmp_path):
    """One infinity and one text value among 4,000 rows, far from any sample of 10 rows, are each found and located."""
    data = frames(4, 1000)
    data[3].loc[977, "x"] = np.inf
    folder = write_parquet_dataset(tmp_path / "ds", data)
    with pytest.raises(DataError, match=r"infinite value\(s\) \(first in row 977\)"):
        survey(LocalEngine(), open_source("current", str(folder), tmp_path), plan_for(["row", "x"]), 10, 1000)
    text = frames(2, 300)
    for i, frame in enumerate(text):
        frame.to_csv(tmp_path / f"t-{i}.csv", index=False)
    bad = pd.read_csv(tmp_path / "t-1.csv")
    bad["x"] = bad["x"].astype(object)
    bad.loc[250, "x"] = "twelve"
    bad.to_csv(tmp_path / "t-1.csv", index=False)
    with pytest.raises(DataError, match=r"column 'x' holds text .* first 'twelve' in row 250"):
        survey(LocalEngine(), open_source("current", "t-*.csv", tmp_path), plan_for(["row", "x"], chunk_rows=100), 10, 1000)


def test_labels_come_from_probabilities_only_where_predict_is_their_argmax(classifier_context, tabular):
    """A gradient-boosting pipeline predicts the argmax of its probabilities (one pass through the trees suffices); an
    SVC's predict and its Platt-scaled probabilities disagree on some rows, so it is asked for both."""
    from dataclasses import replace

    from sklearn.svm import SVC

    from audits.core.context import ModelUnderAudit
    from tasks.adapters.full_pass import labels_follow_proba
    from tests.conftest import context_for, make_pipeline_model

    assert labels_follow_proba(classifier_context.model, classifier_context)
    X, y = tabular
    svc = make_pipeline_model(X, y, "gbm")
    svc.steps[-1] = ("model", SVC(probability=True, random_state=0))
    svc.fit(X, y)
    assert not labels_follow_proba(ModelUnderAudit.from_estimator(svc), context_for(svc, X, y))
    # an allowed class whose labels were changed after the fact (a wrapper, a threshold) is caught on the sample
    ds = classifier_context.current
    flipped = replace(ds, predictions=replace(ds.predictions, labels=np.where(ds.predictions.labels == "yes", "no", "yes")))
    assert not labels_follow_proba(classifier_context.model, replace(classifier_context, current=flipped))


def test_predictions_read_from_the_data_need_no_model_code(classifier_context, tmp_path):
    """With data.prediction_columns on both sides, every row's predictions come from the columns and the model sent to
    the partitions has no code (a call would raise); the merged state equals the one of the model's own predictions.
    Invalid columns are refused with the row they start at."""
    from audits.core.partial import reduce_partitions
    from audits.performance.performance import PerformanceAudit
    from tasks.adapters.full_pass import Reducer, score

    context = classifier_context
    features = list(context.features)
    sources = {}
    for ds in (context.reference, context.current):
        frame = ds.X.assign(label=ds.y.to_numpy(), predicted=ds.predictions.labels,
                            p_no=ds.predictions.proba[:, 0], p_yes=ds.predictions.proba[:, 1])
        write_parquet_dataset(tmp_path / ds.name, [frame.iloc[:100], frame.iloc[100:]])
        sources[ds.name] = open_source(ds.name, str(tmp_path / ds.name), tmp_path)
    plan = PassPlan(features=tuple(features), target="label", segments=(), numeric=(), encoding="utf-8", seed=0,
                    chunk_rows=1000, prediction_label="predicted", prediction_proba=("p_no", "p_yes"))
    audit = PerformanceAudit()

    def boom(X):
        raise AssertionError("the model was called")

    from dataclasses import replace

    poisoned = replace(context.model, predict=boom, predict_proba=boom)
    states, errors, rows, _ = score(LocalEngine(), sources, plan, poisoned,
                                 [Reducer("performance", audit, None, replace(context, model=poisoned))], 1000)
    assert errors == {} and rows == {"reference": len(context.reference), "current": len(context.current)}
    expected = reduce_partitions(audit, context, None, (context.reference, context.current))
    population = {"reference": len(context.reference), "current": len(context.current)}
    got, want = (audit.finalize(state, context, None, population).metrics for state in (states["performance"], expected))
    assert got.keys() == want.keys() and all(got[k] == pytest.approx(want[k], rel=1e-12, nan_ok=True) for k in want)

    broken = context.current.X.assign(label=context.current.y.to_numpy(), predicted="maybe", p_no=0.5, p_yes=0.5)
    write_parquet_dataset(tmp_path / "broken", [broken])
    sources["current"] = open_source("current", str(tmp_path / "broken"), tmp_path)
    with pytest.raises(DataError, match=r"prediction_columns .* not one valid prediction per row: the label column holds 'maybe' \(row 0\)"):
        score(LocalEngine(), sources, plan, context.model, [Reducer("performance", audit, None, context)], 1000)


def test_a_whole_number_segment_has_the_same_names_in_every_chunk(tmp_path):
    """pandas reads an integer column that has a gap as floats: the chunk with a missing store id would name store 3
    '3.0' and the others '3', splitting one segment in two. Whole-number segment columns are nullable integers in every
    chunk (Parquet by its schema, CSV by the sample)."""
    from tasks.adapters.full_pass import integer_columns, segment_frame

    parts = [pd.DataFrame({"x": [0.1, 0.2, 0.3], "store": pd.array([3, 4, None], dtype="Int64")}),
             pd.DataFrame({"x": [0.4, 0.5, 0.6], "store": pd.array([3, 3, 4], dtype="Int64")})]
    folder = write_parquet_dataset(tmp_path / "p", parts)
    for i, part in enumerate(parts):
        part.to_csv(tmp_path / f"c-{i}.csv", index=False)
    for source in (open_source("current", str(folder), tmp_path), open_source("current", "c-*.csv", tmp_path)):
        sample = pd.concat([chunk for f in source.fragments(1000) for chunk in read_fragment(f, ["x", "store"], "utf-8", 1000)])
        plan = plan_for(["x"])
        plan = PassPlan(**{**plan.__dict__, "segments": ("store",), "integer_segments": integer_columns(source, ("store",), sample)})
        names = set()
        for fragment in source.fragments(1000):
            for chunk in read_fragment(fragment, ["x", "store"], "utf-8", 1000):
                names |= {str(v) for v in segment_frame(chunk, plan)["store"].dropna()}
        assert names == {"3", "4"}, source.spec
