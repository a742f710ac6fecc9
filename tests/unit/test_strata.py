"""Stratified samples (sampling.stratify_by): every stratum gets rows, every row its weight, and the audits that honour
the weights estimate the population's figures, checked against the figures computed on every row."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import GradientBoostingClassifier

from audits.core.context import ModelUnderAudit, build_context, stratify, subsample
from audits.core.plan import PlannedAudit
from audits.core.runner import run_planned
from audits.core.strata import Strata, allocate, stratified_positions, weighted_mean_interval
from audits.explain.prototypes import PrototypesAudit
from audits.explain.shap import ShapAudit, ShapConfig


def test_each_stratum_gets_its_floor_and_the_rest_is_shared_by_size():
    take = allocate(np.array([980_000, 19_900, 100]), np.array([980_000, 19_900, 100]), 20_000, 200)
    assert take.sum() == 20_000 and take[2] == 100  # all a small stratum has
    assert take[1] >= 200 and take[0] / take[1] == pytest.approx(980_000 / 19_900, rel=0.02)  # the rest by size
    assert allocate(np.array([5, 5, 5]), np.ones(3), 7, 200).tolist() in ([3, 2, 2], [2, 3, 2], [2, 2, 3])
    assert allocate(np.array([5, 5]), np.ones(2), 50, 3).tolist() == [5, 5]  # never more rows than there are


def test_weights_say_how_many_population_rows_a_row_stands_for():
    labels = np.array(["a"] * 9000 + ["b"] * 900 + ["c"] * 100)
    strata = Strata("prediction", labels, np.ones(len(labels)), floor=50)
    positions, weights = stratified_positions(strata, 500, np.random.default_rng(0))
    drawn = pd.Series(labels[positions]).value_counts()
    assert len(positions) == 500 and drawn["c"] >= 50 and drawn["b"] >= 50
    for name, size in (("a", 9000), ("b", 900), ("c", 100)):
        assert weights[labels[positions] == name].sum() == pytest.approx(size)
    again = stratified_positions(strata, 500, np.random.default_rng(0))
    assert np.array_equal(again[0], positions)


def test_the_stratified_mean_is_numpys_weighted_average_and_its_interval_covers_the_population_mean():
    rng = np.random.default_rng(3)
    labels = np.array(["a"] * 90_000 + ["b"] * 9_000 + ["c"] * 1_000)
    values = np.where(labels == "c", 10.0, np.where(labels == "b", 2.0, 0.0))[:, None] + rng.normal(size=(100_000, 1))
    strata = Strata("segment", labels, np.ones(len(labels)), floor=300)
    covered = 0
    for seed in range(40):
        positions, weights = stratified_positions(strata, 1_000, np.random.default_rng(seed))
        mean, half = weighted_mean_interval(values[positions], strata.take(positions, weights))
        assert mean[0] == pytest.approx(np.average(values[positions, 0], weights=weights), rel=1e-12)
        covered += abs(mean[0] - values.mean()) <= half[0]
    assert covered >= 34  # a 95 % interval: 38 of 40 expected; fewer than 34 has probability below 0.3 %


def test_a_cut_of_a_stratified_context_keeps_every_stratum_and_a_uniform_one_does_not(rare_world):
    context, _ = rare_world
    stratified = stratify(context, "prediction", 100)
    rare = int((context.current.predictions.labels == "yes").sum())
    cut = subsample(stratified, 2_000)
    assert (cut.current.predictions.labels == "yes").sum() == min(100, rare)
    assert cut.current.strata.weights[cut.current.predictions.labels == "yes"].sum() == pytest.approx(rare)
    assert cut.current.strata.weights.sum() == pytest.approx(len(context.current))
    uniform = subsample(context, 2_000)
    assert (uniform.current.predictions.labels == "yes").sum() < 20  # 2,000 of 40,000 rows: a 20th of the rare ones


@pytest.fixture(scope="module")
def rare_world():
    """A binary model that predicts 'yes' for about 0.3 % of the rows (x_rare beyond 2.75), 'no' otherwise."""
    rng = np.random.default_rng(11)
    n = 50_000
    X = pd.DataFrame(rng.normal(size=(n, 4)), columns=["a", "b", "x_rare", "noise"])
    y = pd.Series(np.where((X["x_rare"] > 2.75) | (X["a"] + X["b"] > 4.2), "yes", "no"), name="label")
    model = GradientBoostingClassifier(n_estimators=30, max_depth=3, random_state=0).fit(X, y)
    m = ModelUnderAudit.from_estimator(model, uri="test://rare", name="rare", version="1")
    context = build_context(m, (X.iloc[:10_000], y.iloc[:10_000]), (X.iloc[10_000:].reset_index(drop=True),
                                                                    y.iloc[10_000:].reset_index(drop=True)), target="label")
    return context, model


def test_shap_explains_the_rare_class_and_weights_its_importances_back_to_the_population(rare_world):
    """The reference: SHAP's mean |SHAP| over every one of the 40,000 current rows. A uniform 400-row sample explains
    about one row of the rare class; the stratified one explains all of them up to the floor, and its weighted
    importances still estimate the population's (the unweighted mean over the same rows would not)."""
    context, _ = rare_world
    every_row = run_planned(PlannedAudit("shap", ShapAudit(ShapConfig(rows=40_000)), ()), context)
    population = next(a.content for a in every_row.artifacts if a.name == "importance.json").set_index("feature")["mean_abs_shap"]

    stratified = dataclasses.replace(context, stratified=stratify(context, "prediction", 150))
    result = run_planned(PlannedAudit("shap", ShapAudit(ShapConfig(rows=400)), ()), stratified)
    table = next(a.content for a in result.artifacts if a.name == "importance.json").set_index("feature")
    values = next(a.content for a in result.artifacts if a.name == "values.json")
    rare = int((context.current.predictions.labels == "yes").sum())
    explained_rare = values["stratum (prediction)"] == "yes"
    assert explained_rare.sum() == min(150, rare) and rare > 60
    assert values.loc[explained_rare, "weight"].sum() == pytest.approx(rare)
    assert f"'yes' {min(150, rare)} rows for {rare}" in result.info["explained_rows"]
    for feature in population.index:
        half = (table.loc[feature, "ci95_high"] - table.loc[feature, "ci95_low"]) / 2
        assert abs(table.loc[feature, "mean_abs_shap"] - population[feature]) <= 3 * half + 1e-9, feature
    unweighted = values["x_rare"].abs().mean()  # the rare class over-represented: x_rare looks far more important
    assert unweighted > 3 * population["x_rare"] and table.loc["x_rare", "mean_abs_shap"] < 2 * population["x_rare"]


def test_prototypes_of_the_rare_class_need_a_stratified_sample(rare_world):
    """500 uniform reference rows hold one or two of the rare class: one prototype at most, a group of one row. The
    stratified 500 hold every rare row up to the floor, and the class gets its three prototypes."""
    context, _ = rare_world
    small = PrototypesAudit(PrototypesAudit.Config(max_reference_rows=500, prototypes_per_group=3))
    uniform = run_planned(PlannedAudit("prototypes", small, ()), context)
    stratified = run_planned(PlannedAudit("prototypes", small, ()),
                             dataclasses.replace(context, stratified=stratify(context, "prediction", 100)))
    rare = int((context.reference.predictions.labels == "yes").sum())
    galleries = [next(a.content for a in r.artifacts if a.name == "prototypes.json") for r in (uniform, stratified)]
    assert (galleries[0]["group"] == "yes").sum() < 3 and (galleries[1]["group"] == "yes").sum() == 3
    assert f"'yes' {min(100, rare)} rows for {rare}" in stratified.info["reference_rows_used"]


def test_stratifying_a_regressor_by_prediction_is_refused_with_the_fix(regressor_context):
    from tasks.adapters.errors import ConfigError
    from tasks.adapters.context import stratified
    from tasks.adapters.settings import Sampling

    with pytest.raises(ConfigError, match="stratify_by: prediction needs a classifier") as caught:
        stratified(regressor_context, Sampling(stratify_by="prediction"))
    assert "set sampling.stratify_by to a segment column" in caught.value.fix
    assert stratified(regressor_context, Sampling()) is regressor_context  # not asked: untouched
