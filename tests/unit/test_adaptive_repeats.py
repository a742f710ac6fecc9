"""Importance that spends only the repeats its figures need: the stopping rule (audits.methods.repeats), the batched
permutation importance held to scikit-learn's own, shuffle for shuffle, and the intervals the audit records held to
scikit-learn's figure with many more repeats."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest

from audits.core.context import ModelUnderAudit, build_context
from audits.core.plan import PlannedAudit
from audits.core.runner import run_planned
from audits.explain.importance import (
    ImportanceAudit,
    ImportanceConfig,
    occlusion_estimate,
    permutation_estimate,
    scorer_for,
)
from audits.methods.permutation import auc_each as _auc_each
from audits.methods.permutation import permutation_batch
from audits.methods.permutation import r2_each as _r2_each
from audits.methods.repeats import next_batch, sequential, t_halfwidth
from audits.testing import make_tabular
from tests.conftest import make_pipeline_model
from tests.unit.test_importance import two_feature_world


# --- the stopping rule ------------------------------------------------------------------------------


def normal_draws(scale: np.ndarray, seed: int = 0):
    """draw/assess for i.i.d. normal repeats around (1, 0.5, 0, ...) with per-figure noise ``scale``."""
    rng, samples = np.random.default_rng(seed), []
    truth = np.r_[1.0, 0.5, np.zeros(len(scale) - 2)]

    def draw(_batch, n):
        samples.append(truth + rng.normal(size=(n, len(scale))) * scale)

    def assess():
        stacked = np.concatenate(samples)
        return stacked.mean(axis=0), t_halfwidth(stacked)

    return draw, assess


def test_t_halfwidth_is_scipys_interval():
    from scipy import stats

    samples = np.random.default_rng(1).normal(size=(7, 3))
    for j in range(3):
        low, high = stats.t.interval(0.9, 6, loc=samples[:, j].mean(), scale=stats.sem(samples[:, j]))
        assert t_halfwidth(samples, 0.9)[j] == pytest.approx((high - low) / 2, rel=1e-12)
    assert np.isnan(t_halfwidth(samples[:1])).all()


def test_an_easy_figure_stops_at_the_minimum_and_a_noisy_one_spends_more():
    easy = sequential(*normal_draws(np.full(4, 0.01)), min_repeats=5, max_repeats=50, relative=0.1)
    noisy = sequential(*normal_draws(np.full(4, 0.3)), min_repeats=5, max_repeats=50, relative=0.1)
    assert (easy.repeats, easy.batches, easy.converged) == (5, (5,), True)
    assert 5 < noisy.repeats <= 50 and noisy.converged and noisy.widest <= noisy.tolerance == pytest.approx(0.1 * abs(noisy.mean[0]))
    assert all(b <= sum(noisy.batches[:i]) for i, b in enumerate(noisy.batches) if i)  # at most doubling
    hopeless = sequential(*normal_draws(np.full(4, 5.0)), min_repeats=5, max_repeats=12, relative=0.01)
    assert (hopeless.repeats, hopeless.converged) == (12, False) and hopeless.widest > hopeless.tolerance


def test_the_floor_stops_a_figure_where_nothing_matters():
    def flat(scale):
        rng, samples = np.random.default_rng(0), []
        return (lambda _b, n: samples.append(rng.normal(size=(n, 3)) * scale),
                lambda: (np.concatenate(samples).mean(0), t_halfwidth(np.concatenate(samples))))

    assert sequential(*flat(0.01), min_repeats=5, max_repeats=50, relative=0.1).repeats == 50  # ~0 everywhere: never 10% of it
    assert sequential(*flat(0.01), min_repeats=5, max_repeats=50, relative=0.1, absolute=0.05).repeats == 5


def test_next_batch():
    assert next_batch(5, widest=0.2, aimed=0.1, max_repeats=50) == 5  # needs 20 in all: doubles
    assert next_batch(8, widest=0.11, aimed=0.1, max_repeats=50) == 2  # ceil(8 * 1.21) = 10
    assert next_batch(40, widest=1.0, aimed=0.1, max_repeats=50) == 10  # never past the maximum
    assert next_batch(50, widest=1.0, aimed=0.1, max_repeats=50) == 0
    with pytest.raises(ValueError, match="min_repeats"):
        sequential(lambda *a: None, lambda: (np.zeros(1), np.zeros(1)), min_repeats=6, max_repeats=5, relative=0.1)


# --- scikit-learn's permutation importance, batched --------------------------------------------------


@functools.cache
def models() -> dict:
    """name -> (model, estimator for scikit-learn, X, y): binary, multiclass, regression, a Pipeline with a string column
    and missing values, and a pyfunc-only model (no estimator: scikit-learn is given the one behind it)."""
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestRegressor
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(5)
    X = pd.DataFrame(rng.normal(size=(150, 4)).round(1), columns=["a", "b", "c", "d"])  # rounded: tied scores
    binary = pd.Series(np.where(X["a"] - X["b"] + rng.normal(scale=0.5, size=150) > 0, "yes", "no"))
    three = pd.Series(np.digitize(X["a"] + 0.5 * X["c"], [-0.5, 0.5]).astype(str))
    target = X["a"] * 2 + X["b"] ** 2 + rng.normal(scale=0.3, size=150)
    gbm = GradientBoostingClassifier(n_estimators=30, max_depth=2, random_state=0).fit(X, binary)
    logistic = LogisticRegression(max_iter=500).fit(X, three)
    forest = RandomForestRegressor(20, random_state=0).fit(X, target)
    tabular_X, tabular_y = make_tabular(n=200)
    pipeline = make_pipeline_model(tabular_X, tabular_y, "gbm")
    pyfunc = ModelUnderAudit(task="classification", predict=gbm.predict, predict_proba=gbm.predict_proba, classes=tuple(gbm.classes_))
    return {
        "binary": (ModelUnderAudit.from_estimator(gbm), gbm, X, binary),
        "multiclass": (ModelUnderAudit.from_estimator(logistic), logistic, X, three),
        "regression": (ModelUnderAudit.from_estimator(forest), forest, X, target),
        "pipeline": (ModelUnderAudit.from_estimator(pipeline), pipeline, tabular_X.iloc[:120], tabular_y.iloc[:120]),
        "pyfunc": (pyfunc, gbm, X, binary),
    }


@pytest.mark.parametrize("case", ["binary", "multiclass", "regression", "pipeline", "pyfunc"])
def test_a_batch_is_sklearns_permutation_importance(case):
    from sklearn.inspection import permutation_importance

    model, estimator, X, y = models()[case]
    scorer, _ = scorer_for(model)
    for random_state, n_repeats, max_call_values in ((0, 3, 5_000_000), (123, 4, 7 * X.shape[1])):  # 7 rows a call too
        expected = permutation_importance(estimator, X, y, scoring=scorer, n_repeats=n_repeats, random_state=random_state)
        got = permutation_batch(model, X, y, n_repeats, random_state, max_call_values)
        np.testing.assert_allclose(got, expected.importances, atol=1e-12)


def test_vectorised_scores_are_sklearns():
    from sklearn.metrics import r2_score, roc_auc_score

    rng = np.random.default_rng(0)
    labels = rng.random(300) < 0.3
    scores = rng.integers(0, 8, size=(6, 300)) / 8  # many ties
    np.testing.assert_allclose(_auc_each(labels, scores), [roc_auc_score(labels, s) for s in scores], atol=1e-14)
    y, predicted = rng.normal(size=50), rng.normal(size=(4, 50))
    np.testing.assert_allclose(_r2_each(y, predicted), [r2_score(y, p) for p in predicted], atol=1e-12)


def test_the_adaptive_figure_is_sklearns_batches_and_agrees_with_50_repeats_within_its_interval():
    from sklearn.inspection import permutation_importance

    context, model = two_feature_world()
    sample = context.current.X
    y = context.current.y
    seeds = [11, 22, 33, 44, 55, 66, 77]
    estimate, shuffles = permutation_estimate(context.model, sample, y, seeds.__getitem__, min_repeats=3, max_repeats=60,
                                              tolerance=0.05)
    assert len(estimate.batches) > 1, estimate  # the rule went on: the batches below are more than one sklearn call
    batches = [permutation_importance(model, sample, y, scoring="roc_auc", n_repeats=n, random_state=seeds[b]).importances
               for b, n in enumerate(estimate.batches)]
    np.testing.assert_allclose(shuffles, np.concatenate(batches, axis=1), atol=1e-12)
    np.testing.assert_allclose(estimate.mean, shuffles.mean(axis=1), atol=1e-15)

    # scikit-learn's figure with 50 other shuffles is a Monte Carlo estimate too: within both intervals of ours
    many = permutation_importance(model, sample, y, scoring="roc_auc", n_repeats=50, random_state=2024)
    theirs = t_halfwidth(many.importances.T)
    inside = np.abs(estimate.mean - many.importances_mean) <= estimate.halfwidth + theirs
    assert inside.all(), (estimate.mean, many.importances_mean, estimate.halfwidth, theirs)
    assert (np.abs(estimate.mean - many.importances_mean) <= estimate.halfwidth).mean() >= 0.5
    assert estimate.converged and estimate.widest <= 0.05 * estimate.mean.max()


def test_the_audit_records_its_intervals_and_its_repeats():
    context, model = two_feature_world()
    result = run_planned(PlannedAudit("importance", ImportanceAudit(), ()), context)
    m = result.metrics
    assert m["importance.permutation_repeats"] >= 5 and m["importance.occlusion_draws"] >= 20
    top = max(m["importance.permutation.f0"], m["importance.permutation.f1"])
    assert 0 < m["importance.permutation_ci_halfwidth_max"] <= max(0.1 * top, 0.002)
    table = next(a for a in result.artifacts if a.kind == "table").content
    assert {"permutation_ci_halfwidth", "occlusion_ci_halfwidth"} <= set(table.columns)
    assert f"{int(m['importance.permutation_repeats'])} repeats" in result.info["permutation_scored_on"]
    again = run_planned(PlannedAudit("importance", ImportanceAudit(), ()), context)
    assert again.metrics == m  # the same seed, the same batches, the same figures
    other = build_context(context.model, (context.reference.X, context.reference.y), (context.current.X, context.current.y),
                          target="y", seed=4)
    assert run_planned(PlannedAudit("importance", ImportanceAudit(), ()), other).metrics != m


def test_a_tight_tolerance_spends_more_and_a_fixed_count_spends_exactly_it():
    context, _ = two_feature_world()

    def spent(**config):
        result = run_planned(PlannedAudit("importance", ImportanceAudit(ImportanceConfig(rows=60, permutation_rows=150, **config)), ()), context)
        return result.metrics["importance.permutation_repeats"], result.metrics["importance.occlusion_draws"]

    loose, tight = spent(ci_tolerance=0.5), spent(ci_tolerance=0.02, max_repeats=30, max_draws=60)
    assert loose == (5, 20) and tight[0] > 5 and tight[1] > 20
    assert spent(n_repeats=3, ci_tolerance=0.001)[0] == 3
    with pytest.raises(ValueError, match="max_draws"):
        ImportanceConfig(draws=30, max_draws=10)


# --- what does not matter gets nothing; occlusion's batches -------------------------------------------


def ignoring_model():
    """A logistic regression on a and b only, seen as a model of a, b, c, d (c and d are never read)."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(3)
    X = pd.DataFrame(rng.normal(size=(400, 4)), columns=["a", "b", "c", "d"])
    y = pd.Series(np.where(X["a"] + 0.5 * X["b"] + rng.normal(scale=0.5, size=400) > 0, 1, 0))
    fitted = LogisticRegression().fit(X[["a", "b"]], y)
    model = ModelUnderAudit(task="classification", predict=lambda F: fitted.predict(F[["a", "b"]]),
                            predict_proba=lambda F: fitted.predict_proba(F[["a", "b"]]), classes=(0, 1))
    return model, X, y


def test_features_the_model_never_reads_get_exactly_nothing_and_a_zero_interval():
    model, X, y = ignoring_model()
    permuted, _ = permutation_estimate(model, X, y, lambda b: b, min_repeats=5, max_repeats=20)
    occluded = occlusion_estimate(model, X.iloc[:100], X.iloc[100:], np.random.default_rng(0), draws=10, max_draws=40)
    for estimate in (permuted, occluded):
        assert (estimate.mean[2:] == 0).all() and (estimate.halfwidth[2:] == 0).all(), estimate
        assert estimate.mean[0] > estimate.mean[1] > 0.02


def test_occlusion_is_the_same_whatever_the_call_size_and_its_interval_covers_many_draws():
    model, X, _ = ignoring_model()
    rows, donors = X.iloc[:60], X.iloc[60:]
    whole = occlusion_estimate(model, rows, donors, np.random.default_rng(1), draws=10)
    chopped = occlusion_estimate(model, rows, donors, np.random.default_rng(1), draws=10, max_call_values=4 * 13)
    # a linear model's probabilities move in the last bits with the size of the call (BLAS blocking), no more
    np.testing.assert_allclose(whole.mean, chopped.mean, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(whole.halfwidth, chopped.halfwidth, rtol=1e-9, atol=1e-15)
    many = occlusion_estimate(model, rows, donors, np.random.default_rng(2), draws=2000)
    assert (np.abs(whole.mean - many.mean) <= whole.halfwidth + many.halfwidth)[:2].all(), (whole, many)
    assert many.widest < whole.widest / 5  # 200 times the draws: about 14 times narrower


def test_occlusion_stops_early_on_many_rows_and_draws_more_on_few():
    model, X, _ = ignoring_model()
    donors = X.iloc[200:]
    many_rows = occlusion_estimate(model, X.iloc[:200], donors, np.random.default_rng(0), draws=5, max_draws=100, tolerance=0.1)
    few_rows = occlusion_estimate(model, X.iloc[:3], donors, np.random.default_rng(0), draws=5, max_draws=100, tolerance=0.1)
    assert many_rows.repeats == 5 and many_rows.converged
    assert few_rows.repeats > 5
