"""Global importance three ways, side by side: occlusion, permutation importance and SHAP.

- occlusion: replace one feature with values drawn from the reference (the others kept) and measure
  how much the model's output moves, averaged over rows and draws;
- permutation importance: scikit-learn's ``permutation_importance``, the drop in a score when one
  feature is shuffled (needs labels: current data when labelled, else the reference, in-sample);
- SHAP: mean |SHAP value|, from the same explainer the ``shap`` audit uses.

They measure different things (output sensitivity vs dependence of the score), so disagreement is
a finding worth a look rather than an error; rank correlations summarise it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pydantic import Field

from audits.core import (
    Artifact,
    Audit,
    AuditConfig,
    AuditContext,
    AuditResult,
    ModelUnderAudit,
    Requirements,
    Threshold,
)
from audits.core.result import key_part
from audits.methods.compare import spearman
from audits.methods.shap_values import explain


MIN_RANKED = 3  # features a rank correlation needs to say anything


class ImportanceConfig(AuditConfig):
    rows: int = Field(200, ge=1)  # rows for occlusion and SHAP
    draws: int = Field(20, ge=1)  # reference values substituted per row and feature (occlusion)
    background_rows: int = Field(50, ge=1)  # SHAP's background sample
    n_repeats: int = Field(5, ge=1)  # permutation importance: shuffles per feature
    permutation_rows: int = Field(2000, ge=10)  # rows scored by permutation importance


def output_function(model: ModelUnderAudit):
    """The output whose movement occlusion measures: P(positive class) for binary classifiers, the
    probability vector for multiclass (moved by half its L1 change: total variation), the prediction
    for regressors."""
    if model.task == "regression":
        return lambda X: np.asarray(model.predict(X), dtype=float)[:, None]
    if len(model.classes) == 2:
        return lambda X: np.asarray(model.predict_proba(X), dtype=float)[:, 1:]
    return lambda X: np.asarray(model.predict_proba(X), dtype=float) / 2


def occlusion_importance(model: ModelUnderAudit, X: pd.DataFrame, donors: pd.DataFrame, draws: int,
                         rng: np.random.Generator) -> np.ndarray:
    """Mean over rows of |f(x) - mean over draws of f(x with feature j from a donor row)|, per feature."""
    f = output_function(model)
    base = f(X)
    repeated = X.loc[X.index.repeat(draws)].reset_index(drop=True)
    importance = np.zeros(X.shape[1])
    for j, column in enumerate(X.columns):
        occluded = repeated.copy()
        occluded[column] = donors[column].to_numpy()[rng.integers(0, len(donors), size=len(repeated))]
        moved = f(occluded).reshape(len(X), draws, -1).mean(axis=1)
        importance[j] = np.abs(moved - base).sum(axis=1).mean()
    return importance


def scorer_for(model: ModelUnderAudit):
    """A scorer(estimator, X, y) for sklearn's permutation_importance: ROC-AUC (binary), negative log loss
    (multiclass), R^2 (regression). The estimator argument is ignored: the model may be pyfunc-only."""
    from sklearn import metrics as skm

    def score(_estimator, X, y):
        if model.task == "regression":
            return skm.r2_score(y, model.predict(X))
        proba = model.predict_proba(X)
        if len(model.classes) == 2:
            return skm.roc_auc_score(np.asarray(y) == model.classes[1], proba[:, 1])
        return -skm.log_loss(y, proba, labels=list(model.classes))

    name = "r2" if model.task == "regression" else ("roc_auc" if len(model.classes) == 2 else "neg_log_loss")
    return score, name


class _Scored:
    """What permutation_importance's parameter check wants (an object with fit) for a pyfunc-only model;
    the scoring function calls the model itself."""

    def __init__(self, model: ModelUnderAudit) -> None:
        self.model = model

    def fit(self, *args, **kwargs):  # never called: the model is already fitted
        return self


class ImportanceAudit(Audit):
    """Occlusion and permutation importance, compared with SHAP global importance."""

    name = "importance"
    metric_keys = (
        "{occlusion,permutation}.*", "spearman.{occlusion_vs_permutation,occlusion_vs_shap,permutation_vs_shap}",
        "rows",
    )
    Config = ImportanceConfig
    requires = Requirements(labels="any", probabilities=True)
    description = "Occlusion and permutation importance beside SHAP, with their rank correlations."
    default_thresholds = (Threshold(metric="spearman.occlusion_vs_shap", min=0.5, severity="warn"),)

    def compute(self, context: AuditContext) -> AuditResult:
        from sklearn.inspection import permutation_importance

        cfg: ImportanceConfig = self.config
        model, features = context.model, list(context.features)
        X = context.current.X.sample(n=min(cfg.rows, len(context.current)), random_state=context.random_state("importance.rows"))
        donors = context.reference.X
        occlusion = occlusion_importance(model, X, donors, cfg.draws, context.rng("importance.occlusion"))

        labelled = context.current if context.current.labelled else context.reference
        sample = labelled.X.sample(n=min(cfg.permutation_rows, len(labelled)), random_state=context.random_state("importance.perm_rows"))
        scorer, score_name = scorer_for(model)
        permuted = permutation_importance(
            model.estimator if model.estimator is not None else _Scored(model), sample, labelled.y.loc[sample.index], scoring=scorer, n_repeats=cfg.n_repeats,
            random_state=context.random_state("importance.permutation"),
        )

        background = donors.sample(n=min(cfg.background_rows, len(donors)), random_state=context.random_state("importance.background"))
        attribution = explain(context, X, background)
        by_feature = dict(zip(attribution.features, np.abs(attribution.values).mean(axis=0).sum(axis=1), strict=True))
        shap_importance = np.array([by_feature.get(f, 0.0) for f in features])

        table = pd.DataFrame({
            "feature": features,
            "occlusion": occlusion,
            "permutation": permuted.importances_mean,
            "permutation_std": permuted.importances_std,
            "shap": shap_importance,
        })  # fmt: skip
        for method in ("occlusion", "permutation", "shap"):
            table[f"rank_{method}"] = table[method].rank(ascending=False, method="min").astype(int)
        table = table.sort_values("shap", ascending=False, kind="stable")

        def ranked(a: np.ndarray, b: np.ndarray) -> float:  # 2 features agree (+1) or not (-1) by a coin's toss
            return spearman(a, b) if len(a) >= MIN_RANKED else float("nan")

        metrics: dict[str, float] = {
            "spearman.occlusion_vs_shap": ranked(occlusion, shap_importance),
            "spearman.permutation_vs_shap": ranked(permuted.importances_mean, shap_importance),
            "spearman.occlusion_vs_permutation": ranked(occlusion, permuted.importances_mean),
            "rows": float(len(X)),
        }
        for row in table.itertuples():
            metrics[f"occlusion.{key_part(row.feature)}"] = float(row.occlusion)
            metrics[f"permutation.{key_part(row.feature)}"] = float(row.permutation)
        return AuditResult(
            audit=self.name,
            metrics=metrics,
            artifacts=(
                Artifact.table("importance", table, "Occlusion, permutation and SHAP importance per feature, with ranks"),
                _figure(table),
            ),
            info={
                "permutation_scored_on": f"{labelled.name} data ({score_name}, {len(sample)} rows, {cfg.n_repeats} repeats)"
                + (" - in-sample" if labelled.name == "reference" else ""),
                "occlusion_output": "P(positive class)" if model.task == "classification" and len(model.classes) == 2
                else ("probability vector (total variation)" if model.task == "classification" else "prediction"),
                "shap_explainer": attribution.explainer,
            },
        )


def _figure(table: pd.DataFrame, top: int = 15) -> Artifact:
    shown = table.head(top).iloc[::-1]
    fig = Figure(figsize=(8, 0.35 * len(shown) + 1.6), layout="constrained")
    ax = fig.add_subplot()
    positions = np.arange(len(shown))
    for offset, method in zip((-0.27, 0.0, 0.27), ("shap", "occlusion", "permutation"), strict=True):
        values = shown[method].clip(lower=0)
        total = table[method].clip(lower=0).sum() or 1.0
        ax.barh(positions + offset, values / total, height=0.26, label=method)
    ax.set_yticks(positions, shown["feature"])
    ax.set_xlabel("share of the method's total importance")
    ax.set_title("Global importance: SHAP, occlusion, permutation")
    ax.legend(loc="lower right")
    return Artifact.figure("importance", fig, "Importance shares by method")
