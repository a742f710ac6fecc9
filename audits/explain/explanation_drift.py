"""Explanation drift between versions: how the audited version's reliance on each feature differs
from the deployed version's (the one behind the baseline alias, `champion` by default).

Two versions may explain in different output spaces (log-odds for boosting, probabilities for a
forest), so importance is compared as shares of each model's total, and per-feature SHAP
distributions after dividing by each model's mean total |SHAP|. Both are explained on the same rows,
with the same background.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pydantic import Field

from audits.core import Artifact, Audit, AuditConfig, AuditContext, AuditResult, Requirements
from audits.core.result import key_part
from audits.methods.compare import spearman
from audits.methods.shap_values import Attribution, explain


class ExplanationDriftConfig(AuditConfig):
    rows: int = Field(200, ge=2)
    background_rows: int = Field(50, ge=1)
    top: int = Field(10, ge=1)  # features shown in the figure and named in the summary


def scaled_attributions(attr: Attribution, features: list[str]) -> np.ndarray:
    """(rows, features): signed values for single-output models, |values| summed over outputs for multiclass,
    divided by the model's mean total |SHAP| per row so that two models' scales compare."""
    values = attr.values[:, [attr.features.index(f) for f in features], :]
    per_row = values[:, :, 0] if values.shape[2] == 1 else np.abs(values).sum(axis=2)
    scale = np.abs(values).sum(axis=(1, 2)).mean() or 1.0
    return per_row / scale


class ExplanationDriftAudit(Audit):
    """Global importance and per-feature SHAP distributions of this version against the deployed one."""

    name = "explanation_drift"
    question = "behaviour"
    metric_keys = (
        "importance_spearman", "share_change.*", "max_share_change", "distribution_distance.*",
        "max_distribution_distance", "rows",
    )
    Config = ExplanationDriftConfig
    requires = Requirements(baseline="other version")
    description = "How the features' roles changed from the deployed version (baseline alias) to this one."

    def compute(self, context: AuditContext) -> AuditResult:
        from scipy.stats import wasserstein_distance

        cfg: ExplanationDriftConfig = self.config
        X = context.current.X.sample(n=min(cfg.rows, len(context.current)), random_state=context.random_state("drift.rows"))
        reference = context.reference.X
        background = reference.sample(n=min(cfg.background_rows, len(reference)), random_state=context.random_state("drift.background"))
        audited = explain(context, X, background)
        deployed = explain(context, X, background, model=context.baseline)
        features = [f for f in context.features if f in audited.features and f in deployed.features]

        a, b = scaled_attributions(audited, features), scaled_attributions(deployed, features)
        share_a, share_b = np.abs(a).mean(axis=0), np.abs(b).mean(axis=0)
        share_a, share_b = share_a / (share_a.sum() or 1.0), share_b / (share_b.sum() or 1.0)
        distance = np.array([wasserstein_distance(a[:, j], b[:, j]) for j in range(len(features))])
        table = pd.DataFrame({
            "feature": features,
            "share_audited": share_a,
            "share_baseline": share_b,
            "share_change": share_a - share_b,
            "rank_audited": pd.Series(share_a).rank(ascending=False, method="min").astype(int).to_numpy(),
            "rank_baseline": pd.Series(share_b).rank(ascending=False, method="min").astype(int).to_numpy(),
            "distribution_distance": distance,
        }).sort_values("distribution_distance", ascending=False, kind="stable")  # fmt: skip

        metrics: dict[str, float] = {
            "importance_spearman": spearman(share_a, share_b),
            "max_share_change": float(np.abs(share_a - share_b).max()),
            "max_distribution_distance": float(distance.max()),
            "rows": float(len(X)),
        }
        for row in table.itertuples():
            metrics[f"share_change.{key_part(row.feature)}"] = float(row.share_change)
            metrics[f"distribution_distance.{key_part(row.feature)}"] = float(row.distribution_distance)
        changed = table.head(3)
        return AuditResult(
            audit=self.name,
            metrics=metrics,
            artifacts=(
                Artifact.table("feature_roles", table, f"Feature roles: {context.model.label} against {context.baseline.label}"),
                _figure(table, cfg.top, context.model.label, context.baseline.label),
            ),
            info={
                "compared_with": context.baseline.label,
                "explainers": f"{audited.explainer} ({audited.output_space}) vs {deployed.explainer} ({deployed.output_space})",
                "most_changed": "; ".join(
                    f"{r.feature}: share {r.share_baseline:.2f} -> {r.share_audited:.2f}" for r in changed.itertuples()
                ),
            },
        )


def _figure(table: pd.DataFrame, top: int, audited: str, baseline: str) -> Artifact:
    shown = table.sort_values("share_audited", ascending=False, kind="stable").head(top).iloc[::-1]
    fig = Figure(figsize=(8, 0.38 * len(shown) + 1.6), layout="constrained")
    ax = fig.add_subplot()
    positions = np.arange(len(shown))
    ax.barh(positions + 0.2, shown["share_baseline"], height=0.38, label=baseline, color="#9aa0a6")
    ax.barh(positions - 0.2, shown["share_audited"], height=0.38, label=audited, color="#1f77b4")
    ax.set_yticks(positions, shown["feature"])
    ax.set_xlabel("share of total mean |SHAP|")
    ax.set_title("Feature roles: this version against the deployed one")
    ax.legend(loc="lower right")
    return Artifact.figure("feature_roles", fig, "Importance shares of both versions")
