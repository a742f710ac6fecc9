"""Slices: a planted two-condition weak slice is found first and its interval covers the planted rate; on exchangeable
data nothing passes the guard; without labels the uncertainty is searched; the predicate text is exact."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from audits.core.context import ModelUnderAudit, build_context
from audits.core.plan import PlannedAudit
from audits.core.result import Verdict
from audits.core.runner import run_planned
from audits.methods import slicing
from audits.performance.slices import SlicesAudit, SlicesConfig

BASE, PLANTED = 0.1, 0.5  # error rates outside and inside the planted slice


class FixedRule:
    """A classifier that says 'yes' when c > 0, with probabilities that can be made uncertain on a region."""

    classes = ("no", "yes")

    def __init__(self, uncertain=None):
        self.uncertain = uncertain  # X -> bool array: rows where the model hesitates

    def predict_proba(self, X):
        p = np.where(X["c"].to_numpy() > 0, 0.95, 0.05)
        if self.uncertain is not None:
            p = np.where(self.uncertain(X), np.where(p > 0.5, 0.55, 0.45), p)
        return np.column_stack([1 - p, p])

    def predict(self, X):
        return np.asarray(self.classes)[(self.predict_proba(X)[:, 1] > 0.5).astype(int)]


def world(n=4000, seed=0, planted=True, labelled=True, uncertain=None, extra_segment=False):
    """Features a (x/y/z), b, c, d (four values), e; the model's error rate is PLANTED where a = x and b is in its
    top quarter (8 % of rows), BASE elsewhere; with planted=False, errors at BASE everywhere, independent of X."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({
        "a": pd.Series(rng.choice(["x", "y", "z"], n), dtype="str"),
        "b": rng.normal(size=n),
        "c": rng.normal(size=n),
        "d": pd.Series(rng.choice(["p", "q", "r", "s"], n), dtype="str"),
        "e": rng.normal(size=n),
    })
    model = FixedRule(uncertain)
    predicted = model.predict(X)
    weak = ((X["a"] == "x") & (X["b"] > np.quantile(X["b"].iloc[n // 2:], 0.75))).to_numpy()
    rate = np.where(weak & planted, PLANTED, BASE)
    flip = rng.random(n) < rate
    y = pd.Series(np.where(flip, np.where(predicted == "yes", "no", "yes"), predicted), name="y")
    m = ModelUnderAudit(task="classification", predict=model.predict, predict_proba=model.predict_proba,
                        classes=model.classes, flavor="test")
    half = n // 2
    segments = (None, None)
    if extra_segment:
        clinic = pd.DataFrame({"clinic": rng.choice(["north", "south"], n)})
        segments = (clinic.iloc[:half], clinic.iloc[half:])
    return build_context(m, (X.iloc[:half], y.iloc[:half]), (X.iloc[half:], y.iloc[half:] if labelled else None),
                         target="y", seed=seed, segments=segments)


def run(context, **config):
    audit = SlicesAudit(SlicesConfig.model_validate(config))
    return run_planned(PlannedAudit("slices", audit, SlicesAudit.default_thresholds), context)


def table_of(result):
    return next(a.content for a in result.artifacts if a.name == "slices.json")


def test_a_planted_two_condition_slice_is_found_first_with_an_interval_covering_its_rate():
    context = world()
    result = run(context)
    table = table_of(result)
    top = table[table["passes"]].iloc[0]
    b_edge = slicing.readable_edges(context.current.X["b"].to_numpy(), 4)[-1]  # the top quarter's readable edge
    assert top["slice"] == f"a = x and b > {b_edge:g}"
    assert abs(b_edge - np.quantile(context.current.X["b"], 0.75)) < 0.01
    assert top["interval_low"] <= PLANTED <= top["interval_high"]
    assert top["rest_figure"] == pytest.approx(BASE, abs=0.03)
    assert result.metrics["slices.top.conditions"] == 2
    assert result.metrics["slices.top.share"] == pytest.approx(1 / 12, abs=0.02)
    assert result.metrics["slices.labelled"] == 1 and result.metrics["slices.found"] >= 1
    # each condition alone is weaker than the pair: neither is the top slice
    singles = table[table["conditions"] == 1]
    assert (singles["figure"] < top["figure"] - 0.1).all()
    assert result.verdict is Verdict.WARN  # lift about 0.5 / 0.133: far above 2
    assert "error" in result.info["figure"] and "labels are present" in result.info["figure"]
    assert result.info["slice_1"].startswith(f"a = x and b > {b_edge:g}: ")
    assert "a sample of 2,000 current rows" in result.info["searched"]


@pytest.mark.parametrize("seed", range(5))
def test_on_exchangeable_data_nothing_passes_the_guard(seed):
    result = run(world(seed=seed, planted=False))
    table = table_of(result)
    assert len(table) > 0  # SliceLine did propose slices: the guard turned them down
    assert not table["passes"].any(), table[["slice", "figure", "rest_figure", "p_value_adjusted"]]
    assert result.metrics["slices.found"] == 0
    assert result.metrics["slices.top.gap"] == 0 and result.metrics["slices.top.lift"] == 1
    assert result.verdict is Verdict.PASS, result.reason


def test_without_labels_the_uncertainty_is_searched_and_an_uncertain_region_is_found():
    def hesitant(X):
        return ((X["d"] == "q") & (X["e"] <= np.quantile(X["e"], 0.25))).to_numpy()

    context = world(labelled=False, uncertain=hesitant)
    result = run(context)
    assert result.metrics["slices.labelled"] == 0
    assert result.info["figure"].startswith("uncertainty (uncertainty): no labels on current data")
    top = table_of(result).iloc[0]
    assert top["passes"] and top["slice"].startswith("d = q and e <= ")
    assert top["figure"] == pytest.approx(0.45, abs=0.01)


def test_predicates_read_as_rules():
    frame = pd.DataFrame({"clinic": ["north", "south", "north", None, "east", "north", "south", "north"],
                          "bmi": [20.0, 25.5, 31.24, 40.0, np.nan, 33.0, 22.0, 18.0]})
    encoded = slicing.encode(frame, {"clinic"}, bins=4, max_values=2, min_rows=1)
    assert encoded.labels[0] == ("clinic = north", "clinic = south", "clinic = (other)")
    edges = slicing.readable_edges(frame["bmi"].dropna().to_numpy(), 4)
    assert edges.tolist() == [21.0, 25.5, 32.1]
    assert encoded.labels[1] == ("bmi <= 21", "21 < bmi <= 25.5", "25.5 < bmi <= 32.1", "bmi > 32.1", "bmi = (missing)")
    north, top_bmi = (0, 0), (1, 3)
    assert slicing.predicate(encoded, (top_bmi, north)) == "clinic = north and bmi > 32.1"
    rows = slicing.membership(encoded.codes, [slicing.Candidate((north, top_bmi), 1.0, 0, 0.0)])[:, 0]
    assert rows.tolist() == [False, False, False, False, False, True, False, False]


def test_segment_columns_that_are_not_features_are_searched_as_values():
    result = run(world(extra_segment=True))
    assert "clinic" in result.info["columns"]


def test_holm_and_the_permutation_test():
    assert slicing.holm(np.array([0.01, 0.04, 0.03])).tolist() == pytest.approx([0.03, 0.06, 0.06])
    rng = np.random.default_rng(0)
    figure = np.r_[np.ones(30), np.zeros(70)]
    masks = np.column_stack([np.arange(100) < 30, np.arange(100) >= 30])
    p = slicing.permutation_p_values(figure, masks, 999, rng)
    assert p[0] == pytest.approx(1 / 1000) and p[1] == 1.0


def test_too_few_rows_is_skipped_with_the_reason():
    context = world(n=100)
    result = run(context)
    assert result.verdict is Verdict.SKIPPED and "too few current rows" in result.reason


def test_a_regressor_without_labels_searches_unfamiliarity_fitted_on_the_reference():
    rng = np.random.default_rng(3)
    n = 4000
    X = pd.DataFrame({"a": pd.Series(rng.choice(["x", "y", "z"], n), dtype="str"), "b": rng.normal(size=n),
                      "e": rng.normal(size=n)})
    current = X.iloc[n // 2:].copy()
    away = (current["a"] == "x") & (current["b"] > np.quantile(current["b"], 0.75))
    current.loc[away, "e"] += 4.0  # a region of the current data that the reference never had
    m = ModelUnderAudit(task="regression", predict=lambda X: X["b"].to_numpy() * 2.0, flavor="test")
    context = build_context(m, (X.iloc[: n // 2], None), (current, None), seed=0)
    result = run(context)
    assert result.metrics["slices.labelled"] == 0
    assert result.info["figure"].startswith("unfamiliarity (unfamiliarity): no labels on current data, and the model is a regressor")
    top = table_of(result).iloc[0]
    assert top["passes"] and top["ratio"] > 2 and top["slice"].startswith("a = x and b > ")


@pytest.mark.parametrize("max_l", [2, 3])
def test_the_blocked_search_finds_what_sliceline_itself_finds(max_l, monkeypatch):
    """The dense-block evaluation (``slicing.finder_class``) against SliceLine's own ``Slicefinder``: the same slices
    and the same statistics, on a continuous figure, with blocks of a few rows so that the blocks' sums are exercised."""
    from sliceline.slicefinder import Slicefinder

    rng = np.random.default_rng(3)
    codes = rng.integers(0, 4, size=(1500, 7))
    figure = rng.random(1500) * (1 + 0.4 * codes[:, 0] + 0.3 * codes[:, 2] + 2 * ((codes[:, 1] == 2) & (codes[:, 4] == 0)))
    monkeypatch.setattr(slicing, "EVAL_BLOCK", 5_000)  # a few dozen rows a block at these candidate counts
    fits = [cls(alpha=0.99, k=15, max_l=max_l, min_sup=30, verbose=False).fit(codes, figure)
            for cls in (Slicefinder, slicing.finder_class())]
    assert len(fits[0].top_slices_statistics_) == 15
    np.testing.assert_array_equal(fits[1].top_slices_, fits[0].top_slices_)
    for ours, theirs in zip(fits[1].top_slices_statistics_, fits[0].top_slices_statistics_, strict=True):
        assert ours == pytest.approx(theirs, rel=1e-12)
    assert max(len([v for v in s if v is not None]) for s in fits[0].top_slices_) == max_l
