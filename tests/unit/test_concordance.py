"""Concordance audit against synthetic ground truth and libraries we did not write: errors planted on
out-of-distribution rows (clearly positive correlations), labels that are pure noise (correlations near
0), entropy by scipy, Spearman by scipy, ROC-AUC by scikit-learn and by the Mann-Whitney U statistic."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from scipy.stats import entropy as scipy_entropy
from scipy.stats import mannwhitneyu, spearmanr
from sklearn.gaussian_process import GaussianProcessClassifier
from sklearn.linear_model import LinearRegression
from sklearn.metrics import roc_auc_score

from audits.core.context import ModelUnderAudit, build_context
from audits.testing import check_audit_contract
from audits.uncertainty.concordance import ConcordanceAudit, ConcordanceConfig, signals


def draw(n: int, rng: np.random.Generator, shift: float = 0.0) -> pd.DataFrame:
    """Two latent factors seen twice (z and a noisy copy w); ``shift`` moves w off that structure."""
    z = rng.normal(size=(n, 2))
    return pd.DataFrame({"z1": z[:, 0], "z2": z[:, 1],
                         "w1": z[:, 0] + 0.2 * rng.normal(size=n) + shift, "w2": z[:, 1] + 0.2 * rng.normal(size=n) - shift})


def labels(X: pd.DataFrame, rng: np.random.Generator, noise_only: bool = False) -> pd.Series:
    rule = X["z1"] + 0.1 * rng.normal(size=len(X)) > 0
    return pd.Series(np.where(rng.random(len(X)) < 0.5 if noise_only else rule, "yes", "no"), index=X.index, name="label")


def classifier_case(seed: int, errors_on_ood: bool):
    """A Gaussian-process classifier, whose probabilities revert to 1/2 far from its data."""
    rng = np.random.default_rng(seed)
    if errors_on_ood:  # clean labels in distribution; shifted rows whose labels are coin flips
        X = draw(300, rng)
        inside, outside = draw(600, rng), draw(300, rng, shift=4.0)
        current = pd.concat([inside, outside], ignore_index=True)
        y_current = pd.concat([labels(inside, rng), labels(outside, rng, noise_only=True)], ignore_index=True)
        y = labels(X, rng)
    else:  # labels independent of everything, everywhere
        X, current = draw(300, rng), draw(2000, rng)
        y, y_current = labels(X, rng, noise_only=True), labels(current, rng, noise_only=True)
    model = ModelUnderAudit.from_estimator(GaussianProcessClassifier(random_state=0).fit(X, y))
    return build_context(model, (X, y), (current, y_current), seed=seed)


def compute(context, **config):
    return ConcordanceAudit(ConcordanceConfig(**config)).compute(context)


def test_contract_on_both_fixtures(classifier_context, regressor_context):
    classifier = check_audit_contract(ConcordanceAudit, classifier_context)
    assert {"concordance.spearman.uncertainty_vs_knn", "concordance.spearman.uncertainty_vs_error",
            "concordance.spearman.knn_vs_error", "concordance.auroc.uncertainty_detects_errors",
            "concordance.auroc.knn_detects_errors"} <= classifier.metrics.keys()
    regressor = check_audit_contract(ConcordanceAudit, regressor_context)
    assert {"concordance.spearman.uncertainty_vs_error", "concordance.spearman.pca_vs_error"} <= regressor.metrics.keys()
    assert not any(key.startswith("concordance.auroc") for key in regressor.metrics)


def test_errors_planted_on_ood_rows_give_clearly_positive_concordance():
    context = classifier_case(seed=0, errors_on_ood=True)
    m = compute(context).metrics
    for signal in ("uncertainty", "knn", "pca"):
        assert m[f"spearman.{signal}_vs_error"] > 0.3, signal
        assert m[f"auroc.{signal}_detects_errors"] > 0.75, signal
    assert m["spearman.uncertainty_vs_knn"] > 0.5  # the model is unsure exactly where rows are unfamiliar


def test_noise_independent_of_everything_gives_concordance_near_zero():
    """2,000 rows: the standard error of a Spearman correlation is about 1/sqrt(n) = 0.022 and of an AUROC
    with about 1,000 errors and 1,000 correct rows about 0.013; the bounds are more than 4 of them."""
    context = classifier_case(seed=1, errors_on_ood=False)
    m = compute(context).metrics
    assert 0.4 < m["error_rate"] < 0.6
    for signal in ("uncertainty", "knn", "pca"):
        assert abs(m[f"spearman.{signal}_vs_error"]) < 0.1, signal
        assert abs(m[f"auroc.{signal}_detects_errors"] - 0.5) < 0.06, signal


def test_metrics_agree_with_scipy_and_sklearn_on_the_same_arrays():
    context = classifier_case(seed=0, errors_on_ood=True)
    frame, _ = signals(context, ConcordanceConfig())
    current = context.current
    assert np.allclose(frame["uncertainty"], scipy_entropy(current.predictions.proba, axis=1), rtol=0, atol=1e-12)
    wrong = current.predictions.labels != current.y.to_numpy()
    assert (frame["error"].to_numpy() == wrong).all()
    m = compute(context).metrics
    for signal in ("uncertainty", "knn", "pca"):
        auroc = roc_auc_score(wrong, frame[signal])
        u = mannwhitneyu(frame[signal][wrong], frame[signal][~wrong]).statistic
        assert m[f"auroc.{signal}_detects_errors"] == pytest.approx(auroc, abs=1e-12)
        assert auroc == pytest.approx(u / (wrong.sum() * (~wrong).sum()), abs=1e-12)
    for a, b in [("uncertainty", "knn"), ("knn", "pca"), ("pca", "error"), ("uncertainty", "error")]:
        assert m[f"spearman.{a}_vs_{b}"] == pytest.approx(spearmanr(frame[a], frame[b]).statistic, abs=1e-12)
    assert m["error_rate"] == pytest.approx(wrong.mean())


def test_worst_rows_are_the_planted_ones():
    context = classifier_case(seed=0, errors_on_ood=True)
    result = compute(context, rows=20)
    worst = next(a.content for a in result.artifacts if a.name == "worst_rows.json")
    assert len(worst) == 20 and worst["combined_rank"].is_monotonic_decreasing
    assert (worst["row"].astype(int) >= 600).all()  # all shifted rows (positions 600 on)
    assert (worst["prediction"] != worst["label"]).all()


def test_regression_errors_on_ood_rows():
    """Off the latent structure the relation changes (y gains 3 (w1 - z1)): residuals grow with unfamiliarity,
    and the bootstrap spread of a linear fit grows in the poorly determined direction w1 - z1."""
    rng = np.random.default_rng(3)

    def target(X):
        return pd.Series(2 * X["z1"] - X["z2"] + 3 * (X["w1"] - X["z1"]) ** 2 + 0.3 * rng.normal(size=len(X)), name="y")

    X = draw(400, rng)
    current = pd.concat([draw(400, rng), draw(200, rng, shift=2.0)], ignore_index=True)
    y = target(X)
    model = ModelUnderAudit.from_estimator(LinearRegression().fit(X, y))
    context = build_context(model, (X, y), (current, target(current)), seed=0)
    m = compute(context).metrics
    for signal in ("uncertainty", "knn", "pca"):
        assert m[f"spearman.{signal}_vs_error"] > 0.3, signal
    frame, notes = signals(context, ConcordanceConfig())
    assert np.allclose(frame["error"], np.abs(context.current.y - context.current.predictions.labels), rtol=0, atol=1e-12)
    assert "5 bootstrap" in notes["uncertainty"]


def test_missing_columns_are_explained_not_invented(classifier_context, regressor_context):
    unlabelled = dataclasses.replace(classifier_context, current=dataclasses.replace(classifier_context.current, y=None))
    result = compute(unlabelled)
    assert not any("error" in key for key in result.metrics) and "absent from the current data" in result.info["error"]
    assert "spearman.uncertainty_vs_knn" in result.metrics

    pyfunc = dataclasses.replace(regressor_context, model=dataclasses.replace(regressor_context.model, estimator=None, flavor="python_function"))
    result = compute(pyfunc)
    assert not any("uncertainty" in key for key in result.metrics) and "native scikit-learn model" in result.info["uncertainty"]
    assert {"spearman.knn_vs_pca", "spearman.knn_vs_error", "spearman.pca_vs_error"} <= result.metrics.keys()
