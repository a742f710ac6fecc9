"""The calibration audit on every row: merged states against the one-frame truth computed here, with numpy and
scikit-learn, on data far larger than the sample a context holds.

The issue: a calibration gap in a rare group of rows. A 20k-row sample cannot tell it from sampling noise; every row
can. Partitions are cheap arrays (a ``Dataset`` of probabilities and labels, no model), reduced one by one, sent
through bytes and merged in a shuffled order, as the every-row pipeline does.
"""

from __future__ import annotations

from dataclasses import replace
from functools import reduce

import numpy as np
import pandas as pd
import pytest
from scipy.special import softmax
from sklearn import metrics as skm

from audits.core.context import AuditContext, Dataset, ModelUnderAudit, Predictions
from audits.core.partial import decode_state, encode_state
from audits.methods.reliability import (
    add_summaries,
    calibration_from_sums,
    consistency_ece,
    equal_mass_from_cells,
    expected_calibration_error,
    grid_cells,
    summarise,
)
from audits.uncertainty.calibration import CalibrationAudit, CalibrationConfig
from tests.unit.test_partial import assert_same_metrics

CLASSES = (0, 1, 2)


def rare_gap(n: int, seed: int, group: float) -> tuple[np.ndarray, np.ndarray]:
    """Three classes, the last one rare (about 5 %); labels drawn from the probabilities (calibrated), except for a
    ``group`` share of rows where the model says class 2 with confidence 0.94-0.99 and is right a quarter of the time."""
    rng = np.random.default_rng(seed)
    P = softmax(rng.normal(size=(n, 3)) * 1.5 + np.array([1.0, 0.5, -2.5]), axis=1)
    y = (rng.random(n)[:, None] > np.cumsum(P, axis=1)).sum(axis=1).clip(0, 2)
    bad = rng.random(n) < group
    q = rng.uniform(0.94, 0.99, bad.sum())
    P[bad] = np.column_stack([(1 - q) / 2, (1 - q) / 2, q])
    y[bad] = np.where(rng.random(bad.sum()) < 0.25, 2, rng.integers(0, 2, bad.sum()))
    return P, y


def dataset(name: str, P: np.ndarray, y: np.ndarray) -> Dataset:
    return Dataset(name, pd.DataFrame(index=pd.RangeIndex(len(y))), pd.Series(y), Predictions(P.argmax(axis=1), P))


def sample_context(sides: dict[str, tuple[np.ndarray, np.ndarray]], rows: int, seed: int = 0,
                   classes: tuple = CLASSES) -> AuditContext:
    """What the pipeline's context holds: a seeded sample of ``rows`` rows per side (every row when there are fewer)."""
    rng = np.random.default_rng(seed)
    model = ModelUnderAudit("classification", predict=lambda X: None, predict_proba=lambda X: None, classes=classes)
    picked = {}
    for name, (P, y) in sides.items():
        keep = np.sort(rng.choice(len(y), min(rows, len(y)), replace=False))
        picked[name] = dataset(name, P[keep], y[keep])
    return AuditContext(model, picked["reference"], picked["current"], features=())


def every_row(audit: CalibrationAudit, context: AuditContext, sides: dict[str, tuple[np.ndarray, np.ndarray]],
              pieces: int, seed: int):
    """(result, merged state): each side cut into ``pieces`` partitions, each reduced alone, sent through bytes, merged
    in a shuffled order, finalized with the sample context, as tasks/adapters/full_pass.py does."""
    rng = np.random.default_rng(seed)
    states = []
    for name, (P, y) in sides.items():
        cuts = np.sort(rng.integers(0, len(y) + 1, size=pieces - 1))
        for start, stop in zip([0, *cuts], [*cuts, len(y)], strict=True):
            state = audit.update(audit.init(context, None), dataset(name, P[start:stop], y[start:stop]), context, None)
            states.append(encode_state(state))
    merged = audit.init(context, None)
    for i in rng.permutation(len(states)):
        merged = audit.merge(merged, decode_state(states[i]))
    population = {name: len(y) for name, (_, y) in sides.items()}
    return audit.finalize(merged, context, None, population), merged


def reference_ece(values: np.ndarray, outcome: np.ndarray, edges: np.ndarray) -> tuple[float, float]:
    """ECE and MCE written out: bins (lower, upper] (the first from 0, the last to everything above), each weighted by
    its share of rows, gap |mean value - mean outcome|."""
    ece, mce, lower = 0.0, 0.0, -np.inf
    for i, upper in enumerate(edges):
        inside = (values > lower) & ((values <= upper) | (i == len(edges) - 1))
        if inside.any():
            gap = abs(values[inside].mean() - outcome[inside].mean())
            ece += inside.mean() * gap
            mce = max(mce, gap)
        lower = upper
    return ece, mce


def equal_mass_edges(values: np.ndarray, bins: int) -> np.ndarray:
    """Kumar et al.'s equal-mass bins: sorted values in ``bins`` parts as equal as can be (the first ones one longer),
    cut halfway between neighbouring parts, coinciding cuts merged, the last edge 1."""
    ordered = np.sort(values)
    n = len(ordered)
    sizes = [n // bins + (i < n % bins) for i in range(bins)]
    ends = np.cumsum(sizes)[:-1]
    return np.unique(np.append((ordered[ends - 1] + ordered[ends]) / 2, 1.0))


def truth(P: np.ndarray, y: np.ndarray, bins: int = 15) -> dict[str, float]:
    conf, correct = P.max(axis=1), (P.argmax(axis=1) == y).astype(float)
    uniform = np.arange(1, bins + 1) / bins
    ece, mce = reference_ece(conf, correct, uniform)
    classwise = np.mean([reference_ece(P[:, c], (y == c).astype(float), uniform)[0] for c in range(P.shape[1])])
    return {"ece": ece, "mce": mce, "ece_equal_mass": reference_ece(conf, correct, equal_mass_edges(conf, bins))[0],
            "classwise_ece": classwise, "brier": skm.brier_score_loss(y, P, labels=list(CLASSES)),
            "log_loss": skm.log_loss(y, P, labels=list(CLASSES)), "accuracy": correct.mean(), "mean_confidence": conf.mean()}


@pytest.fixture(scope="module")
def large():
    return {"reference": rare_gap(100_000, 1, 0.0), "current": rare_gap(400_000, 2, 0.004)}


def test_every_row_equals_the_one_frame_truth_and_sees_the_gap_a_sample_cannot(large):
    audit = CalibrationAudit(CalibrationConfig(exact_rows=50_000))  # past the cap: both sides reduced to bins
    context = sample_context(large, 20_000)
    result, state = every_row(audit, context, large, pieces=4, seed=0)
    m = result.metrics
    assert all(state[side]["raw"] is None for side in ("reference", "current"))
    assert len(encode_state(state)) < 3_000_000  # 500,000 rows; the state does not grow with them
    for side, (P, y) in large.items():
        exact = truth(P, y)
        assert m[f"{side}.rows"] == len(y)
        for key in ("brier", "log_loss", "accuracy", "mean_confidence"):
            assert m[f"{side}.{key}"] == pytest.approx(exact[key], rel=1e-9), key
        for key in ("ece", "mce", "classwise_ece"):  # equal-width bins add up: exact
            assert m[f"{side}.{key}"] == pytest.approx(exact[key], abs=1e-10), key
        bound = m[f"{side}.ece_equal_mass_bound"]
        assert 0 < bound < 0.002  # 16,395 cells
        assert abs(m[f"{side}.ece_equal_mass"] - exact["ece_equal_mass"]) <= bound + 1e-12
    assert "±" in result.info["binned"] and "ece_equal_mass_bound" in result.info["binned"]
    assert "every row reduced" in result.info["every_row"] and "400,000 labelled current row(s)" in result.info["every_row"]
    assert "20,000 of 400,000 current rows" in result.info["recalibration_rows"]

    # the class-wise table from every row: the rare class's one-vs-rest bins, exactly
    table = next(a.content for a in result.artifacts if a.name == "classwise.json").set_index(["dataset", "class"])
    P, y = large["current"]
    uniform = np.arange(1, 16) / 15
    ece2, mce2 = reference_ece(P[:, 2], (y == 2).astype(float), uniform)
    assert table.loc[("current", "2"), "ece"] == pytest.approx(ece2, abs=1e-10)
    assert table.loc[("current", "2"), "mce"] == pytest.approx(mce2, abs=1e-10) and mce2 > 0.5  # the group's bin

    # the point of the issue: on every row the gap stands above the noise floor of 400,000 rows, while it is smaller
    # than the noise floor the audit computes for the 20,000-row sample alone (no sample of that size tells it from noise)
    sample_floor = consistency_ece(context.current.predictions.proba.max(axis=1), 15, "uniform",
                                   context.rng("calibration.null.current"), 200)[0]
    assert m["current.ece_excess"] > 0.001, m["current.ece_excess"]
    assert m["current.ece"] < np.quantile(sample_floor, 0.95)
    assert m["reference.ece_excess"] < 0  # the reference has no such group: within its noise floor


def test_under_the_cap_every_figure_is_the_one_frame_answer_in_any_merge_order():
    sides = {"reference": rare_gap(15_000, 3, 0.0), "current": rare_gap(30_000, 4, 0.01)}
    audit = CalibrationAudit()  # exact_rows 200,000: the states keep the rows
    context = sample_context(sides, 2_000)
    first, state = every_row(audit, context, sides, pieces=5, seed=0)
    second, _ = every_row(audit, context, sides, pieces=3, seed=1)
    assert state["current"]["raw"] is not None and len(state["current"]["raw"]["index"]) == 30_000
    assert_same_metrics(second.metrics, first.metrics)  # the noise floor's draws follow the sorted confidences: any order
    whole = sample_context(sides, 10**9)  # a context that holds every row: today's one-frame computation
    one_frame = CalibrationAudit().compute(whole).metrics
    for key, value in one_frame.items():
        if key.startswith(("reference.", "current.")) and "null" not in key and "excess" not in key:
            assert first.metrics[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
        if "null" in key:  # same confidences and rows, draws given to the rows in another order
            assert first.metrics[key] == pytest.approx(value, rel=0.15), key
    assert all(first.metrics[f"{s}.ece_equal_mass_bound"] == 0 for s in sides)


@pytest.mark.parametrize("cells", [100, 1000, 16_384])
def test_the_equal_mass_bound_holds_where_confidences_pile_up(cells):
    """Confidences crowded near 1 or spread, distinct or tied (rounded): cuts fall inside cells, several inside one.
    The equal-mass ECE from merged summaries stays within its bound of the exact one (computed by the function
    test_calibration checks against the uncertainty-calibration package), for any grid; a tie is cut exactly."""
    for seed in range(4):
        rng = np.random.default_rng(seed)
        n = 30_000
        crowded = rng.random(n) < (0.7 if seed < 2 else 0.0)
        top = np.where(crowded, 1 - rng.exponential(0.002, n).clip(0, 0.3), rng.uniform(0.34, 1, n))
        top = np.round(top, 3 if seed % 2 else 12)
        correct = rng.random(n) < np.where(rng.random(n) < 0.05, 0.3, top)
        P = np.column_stack([top, (1 - top) / 2, (1 - top) / 2])
        y = np.where(correct, 0, rng.integers(1, 3, n))
        size = grid_cells(cells, 15)
        parts = [summarise(P[rows], y[rows], 15, size) for rows in np.array_split(rng.permutation(n), 5)]
        summary = reduce(add_summaries, parts)
        edges, ends, bound = equal_mass_from_cells(summary["cells"], 15, summary["extent"])
        mass = np.add.reduceat(summary["cells"], np.concatenate([[0], ends[:-1] + 1]), axis=0)
        ece = calibration_from_sums(edges, mass[:, 0], mass[:, 1], mass[:, 2])[0]
        exact = expected_calibration_error(top, correct, 15, "quantile")[0]
        assert abs(ece - exact) <= bound + 1e-12
        if size > 1000 and seed % 2:  # 0.001 apart: each cell holds one value, so every cut is exact
            assert bound == 0 and ece == pytest.approx(exact, abs=1e-12)
        if seed == 2:  # spread and distinct: the bound shrinks as the grid grows
            assert bound < {105: 0.2, 1005: 0.02, 16_395: 0.001}[size]


@pytest.mark.parametrize("bins,histogram_bins", [(15, 1000), (7, 100), (13, 16_384)])
def test_equal_width_bins_from_the_grid_are_the_exact_bins(bins, histogram_bins):
    """Each equal-width bin is a union of whole grid cells, values on the edges k / bins included."""
    assert grid_cells(histogram_bins, bins) % bins == 0 and grid_cells(histogram_bins, bins) >= histogram_bins
    rng = np.random.default_rng(bins)
    n = 20_000
    top = np.concatenate([rng.integers(1, bins + 1, n // 2) / bins, np.round(rng.uniform(0.5, 1, n // 2) * 30) / 30])
    top = np.maximum(top, 0.5)
    P = np.column_stack([top, 1 - top])
    y = np.where(rng.random(n) < top, 0, 1)
    sides = {"reference": (P, y), "current": (P[::-1].copy(), y[::-1].copy())}
    context = sample_context(sides, 1_000, classes=(0, 1))
    config = CalibrationConfig(exact_rows=0, histogram_bins=histogram_bins, bins=bins)
    result, _ = every_row(CalibrationAudit(config), context, sides, 4, 0)
    tables = next(a.content for a in result.artifacts if a.name == "bins.json")
    binned = tables[(tables["dataset"] == "current") & (tables["binning"] == "equal width")]
    ece, mce, exact = expected_calibration_error(top, y == 0, bins)
    assert binned["count"].tolist() == exact["count"].tolist()
    assert result.metrics["current.ece"] == pytest.approx(ece, abs=1e-12)
    assert result.metrics["current.mce"] == pytest.approx(mce, abs=1e-12)
    # binary class-wise ECE is the ECE of P(class 1), also from its bins
    assert result.metrics["current.classwise_ece"] == pytest.approx(expected_calibration_error(1 - top, y == 1, bins)[0], abs=1e-12)


def test_the_binned_noise_floor_matches_the_row_by_row_one():
    """Binomial draws per grid cell against Bernoulli draws per row: the same noise floor, within Monte Carlo error."""
    sides = {"reference": rare_gap(1_000, 5, 0.0), "current": rare_gap(60_000, 6, 0.0)}
    context = sample_context(sides, 1_000)
    binned = every_row(CalibrationAudit(CalibrationConfig(exact_rows=0, null_resamples=500)), context, sides, 2, 0)[0]
    P, _ = sides["current"]
    rows = consistency_ece(np.sort(P.max(axis=1)), 15, "uniform", np.random.default_rng(0), 500)[0]
    assert binned.metrics["current.ece_null_quantile"] == pytest.approx(np.quantile(rows, 0.95), rel=0.1)
    assert binned.metrics["current.ece_excess"] < 0  # calibrated: no excess


def test_beyond_the_cap_on_the_fixture_every_additive_figure_is_exact(classifier_context):
    """exact_rows=0 on the small classifier fixture: every side is binned from its first row, and still every figure
    that adds up equals the one-frame answer; the figures and tables come out as usual."""
    whole = CalibrationAudit().compute(classifier_context)
    sides = {}
    for ds in (classifier_context.reference, classifier_context.current):
        sides[ds.name] = (ds.predictions.proba, (ds.y == "yes").to_numpy(int))
    context = replace(classifier_context, model=replace(classifier_context.model, classes=(0, 1)),
                      reference=dataset("reference", *sides["reference"]), current=dataset("current", *sides["current"]))
    binned, state = every_row(CalibrationAudit(CalibrationConfig(exact_rows=0)), context, sides, 7, 0)
    assert state["current"]["summary"] is not None
    assert binned.metrics.keys() == whole.metrics.keys()
    for key, value in whole.metrics.items():
        if key.split(".")[-1] in ("ece", "mce", "classwise_ece", "brier", "log_loss", "accuracy", "mean_confidence", "rows"):
            assert binned.metrics[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
        elif key.startswith("recalibrated.") or key == "temperature":  # on the context's rows, as before
            assert binned.metrics[key] == pytest.approx(value, rel=1e-9, abs=1e-12, nan_ok=True), key
    for side in sides:
        assert abs(binned.metrics[f"{side}.ece_equal_mass"] - whole.metrics[f"{side}.ece_equal_mass"]) \
            <= binned.metrics[f"{side}.ece_equal_mass_bound"] + 1e-12
    assert [a.name for a in binned.artifacts] == [a.name for a in whole.artifacts]
    assert "recalibration_rows" not in binned.info  # the context holds every row here
