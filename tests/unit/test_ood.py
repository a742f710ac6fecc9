"""OOD audit against a synthetic ground truth: a batch shifted away from the reference is told apart
from an unshifted one (ROC-AUC by scikit-learn), and fresh draws from the reference distribution are
flagged at the configured rate within binomial sampling error (scipy's binomial distribution)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError
from scipy.stats import binom
from sklearn.dummy import DummyClassifier
from sklearn.metrics import roc_auc_score

from audits.core.context import ModelUnderAudit, build_context
from audits.core.plan import PlannedAudit
from audits.core.result import Verdict
from audits.core.runner import run_planned
from audits.methods.ood import SCORERS, calibration_rows, excess_z
from audits.testing import check_audit_contract
from audits.uncertainty.ood import OODAudit, OODConfig

LOADINGS = np.random.default_rng(42).normal(size=(3, 8))  # 8 correlated features driven by 3 latent factors


def draws(n: int, seed: int, shift: float = 0.0, index_start: int = 0) -> pd.DataFrame:
    """Rows from one fixed distribution (low rank plus noise, and a category); ``shift`` sd added to 4 features."""
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(n, 3)) @ LOADINGS + 0.3 * rng.normal(size=(n, 8))
    X = pd.DataFrame(values, columns=[f"f{i}" for i in range(8)], index=pd.RangeIndex(index_start, index_start + n))
    for column in ("f0", "f2", "f4", "f6"):
        X[column] += shift * X[column].std()
    X["kind"] = pd.Series(rng.choice(["a", "b", "c"], n), index=X.index, dtype="str")
    return X


def context_with(reference: pd.DataFrame, current: pd.DataFrame, seed: int = 0):
    y = pd.Series(np.resize(["no", "yes"], len(reference)), index=reference.index, name="label")
    model = ModelUnderAudit.from_estimator(DummyClassifier(strategy="prior").fit(reference, y))
    return build_context(model, (reference, y), (current, None), seed=seed)


def table(result, name: str) -> pd.DataFrame:
    return next(a.content for a in result.artifacts if a.name == f"{name}.json")


def run(context, **config):
    return run_planned(PlannedAudit("ood", OODAudit(OODConfig(**config)), OODAudit.default_thresholds), context)


def test_contract_on_both_fixtures(classifier_context, regressor_context):
    for context in (classifier_context, regressor_context):
        result = check_audit_contract(OODAudit, context)
        assert {f"ood.{s}.{key}" for s in SCORERS for key in ("flagged_share", "mean_score", "threshold", "excess_z")} <= result.metrics.keys()


def test_a_shifted_batch_is_told_apart_from_an_unshifted_one_by_every_scorer():
    reference = draws(3000, seed=1)
    unshifted, shifted = draws(500, seed=2, index_start=10_000), draws(500, seed=3, shift=3.0, index_start=20_000)
    result = run(context_with(reference, pd.concat([unshifted, shifted])), rows=1000)  # every current row in the table
    rows = table(result, "most_unfamiliar")
    assert len(rows) == 1000
    is_shifted = rows["row"].astype(int).to_numpy() >= 20_000
    for scorer in SCORERS:
        assert roc_auc_score(is_shifted, rows[f"{scorer}_score"]) > 0.9, scorer
        # the flagged share is the share of rows above the reported threshold
        above = (rows[f"{scorer}_score"] > result.metrics[f"ood.{scorer}.threshold"]).mean()
        assert result.metrics[f"ood.{scorer}.flagged_share"] == pytest.approx(above, abs=1e-12)
    assert result.metrics["ood.knn.flagged_share"] > 0.5  # the shifted half is flagged almost entirely
    assert result.metrics["ood.max_excess_z"] > 3 and result.verdict is Verdict.WARN
    assert rows["flagged_by"].iloc[0] != ""  # the most unfamiliar row is flagged by at least one scorer


@pytest.mark.parametrize("percentile", [90.0, 99.0])
def test_an_unshifted_batch_is_flagged_at_the_configured_rate(percentile):
    reference, current = draws(4000, seed=4), draws(3000, seed=5)
    result = run(context_with(reference, current), percentile=percentile)
    expected = 1 - percentile / 100
    assert result.metrics["ood.expected_share"] == pytest.approx(expected)
    n = len(current)
    m = int(result.metrics["ood.calibration_rows"])
    assert m == calibration_rows(3000, 5000, 0.25) == 750  # 4000 rows less 1000 kept for display, a quarter of the rest
    # Sampling error of the flagged count: binomial over current rows, widened by the threshold's own
    # error (a percentile of m held-out rows). A 99.9 % two-sided band of the binomial, in shares:
    low, high = binom.ppf([0.0005, 0.9995], n, expected) / n
    widen = np.sqrt(1 + n / m)  # variance e(1-e)(1/n + 1/m) instead of e(1-e)/n
    for scorer in SCORERS:
        share = result.metrics[f"ood.{scorer}.flagged_share"]
        assert expected - (expected - low) * widen <= share <= expected + (high - expected) * widen, (scorer, share)
        assert result.metrics[f"ood.{scorer}.excess_z"] < 3
    assert result.verdict is Verdict.PASS


def test_excess_z_is_calibrated_against_simulated_percentile_thresholds():
    """Distribution-free: uniform scores stand for any continuous score. Thresholds are np.percentile of m
    simulated held-out scores, as in fit_ood; the flagged counts among n fresh rows are simulated too."""
    from scipy.stats import norm

    rng = np.random.default_rng(0)
    for m, n, percentile in [(47, 150, 95.0), (750, 3000, 99.0)]:
        thresholds = np.percentile(rng.random((20_000, m)), percentile, axis=1)
        counts = (rng.random((20_000, n)) > thresholds[:, None]).sum(axis=1)
        z = {c: excess_z(int(c), n, m, percentile) for c in np.unique(counts)}
        z = np.array([z[c] for c in counts])
        for level in (1.0, 2.0, 3.0):
            # a valid one-sided test on a discrete count: P(z > level) at most the normal tail (up to
            # 4 Monte Carlo standard errors), and not far below it
            nominal, rate = norm.sf(level), (z > level).mean()
            assert 0.5 * nominal < rate <= nominal + 4 * np.sqrt(nominal * (1 - nominal) / len(z)), (m, n, level, rate)
    # large samples: the normal approximation (f - e) / sqrt(e (1 - e) (1/n + 1/m)), e at the interpolated position
    n, m = 200_000, 100_000
    e = 1 - (1 + (m - 1) * 0.95) / (m + 1)
    for count in (10_000, 10_200, 10_500, 10_700):
        normal = (count / n - e) / np.sqrt(e * (1 - e) * (1 / n + 1 / m))
        assert excess_z(count, n, m, 95.0) == pytest.approx(normal, rel=0.02, abs=0.01)


def test_one_scorer_gives_only_its_keys():
    reference, current = draws(400, seed=6), draws(300, seed=7, shift=1.0)
    result = run(context_with(reference, current), scorers=("knn",), percentile=80.0)
    share, m = result.metrics["ood.knn.flagged_share"], int(result.metrics["ood.calibration_rows"])
    assert result.metrics["ood.knn.excess_z"] == excess_z(round(share * 300), 300, m, 80.0)
    assert result.metrics["ood.max_excess_z"] == result.metrics["ood.knn.excess_z"]
    assert not any(key.startswith(("ood.pca", "ood.autoencoder")) for key in result.metrics)
    assert result.metrics["ood.flagged_share_any"] == share


def test_the_same_seed_gives_the_same_result_and_another_seed_another_split():
    reference, current = draws(600, seed=8), draws(200, seed=9)
    first, second = run(context_with(reference, current, seed=3)), run(context_with(reference, current, seed=3))
    other = run(context_with(reference, current, seed=4))
    assert first.metrics == second.metrics
    assert [a.content for a in first.artifacts if a.kind == "figure"] == [a.content for a in second.artifacts if a.kind == "figure"]
    assert first.metrics["ood.knn.threshold"] != other.metrics["ood.knn.threshold"]


def test_config_rejects_unknown_or_repeated_scorers():
    with pytest.raises(ValidationError):
        OODConfig(scorers=("knn", "isolation_forest"))
    with pytest.raises(ValidationError):
        OODConfig(scorers=("knn", "knn"))
    with pytest.raises(ValidationError):
        OODConfig(percentile=100)
