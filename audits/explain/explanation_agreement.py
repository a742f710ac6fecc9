"""Do SHAP and LIME tell the same story about the same rows?

The informative rows (see ``informative_rows``) are explained by both methods. For each row SHAP's
column of the output LIME explained is taken (binary: the positive class; multiclass: the predicted
class; regression: the prediction), aligned to LIME's features by name, and compared:

- Spearman rank correlation of |SHAP| and |LIME| over all features (scipy);
- top-k overlap: the share of SHAP's k largest |attributions| that are also among LIME's k largest;
- sign agreement: among SHAP's top k features, the share where LIME's weight has the same sign.

The two methods answer different questions (SHAP: contribution relative to a background average, in
the model's raw output space; LIME: coefficient of "the row's bin of the feature" in a local linear
surrogate of the probability or prediction), so only ranks and signs are compared, never sizes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pydantic import Field

from audits.core import Artifact, Audit, AuditConfig, AuditContext, AuditResult, Requirements, Threshold
from audits.methods.compare import rowwise, spearman, top_k, topk_overlap
from audits.methods.lime_values import (
    LimeAttribution,
    LimeConfig,
    explain_informative_rows,
    nan_safe,
    output_description,
)
from audits.methods.shap_values import Attribution, explain

# The seed purpose of the SHAP audit's background sample: with the same size, the background is the same.
SHAP_BACKGROUND_SEED = "shap.background"


class AgreementConfig(AuditConfig):
    rows: int = Field(12, ge=1, le=500)  # informative rows of the current data explained by both methods
    top_k: int = Field(3, ge=1)  # size of the top sets compared (capped at one less than the number of features)
    num_samples: int = Field(2000, ge=100)  # LIME's perturbation sample per row
    background_rows: int = Field(50, ge=1)  # SHAP's background sample (linear and model-agnostic explainers)


def aligned_shap(shap: Attribution, lime: LimeAttribution) -> np.ndarray:
    """SHAP values as (rows, LIME's features): per row the output LIME explained, features matched by name.

    A feature SHAP does not report (a column the model never receives) gets 0.
    """
    if len(shap.values) != len(lime.weights):
        raise ValueError(f"SHAP explains {len(shap.values)} rows, LIME {len(lime.weights)}: they must be the same rows")
    outputs = []
    for explained in lime.explained:
        if explained in shap.output_names:
            outputs.append(shap.output_names.index(explained))
        elif len(shap.output_names) == 1:
            outputs.append(0)
        else:
            raise ValueError(f"LIME explained {explained!r}, which is none of SHAP's outputs {shap.output_names}")
    by_row = shap.values[np.arange(len(outputs)), :, outputs]  # (rows, shap features)
    aligned = np.zeros_like(lime.weights, dtype=float)
    for j, feature in enumerate(lime.features):
        if feature in shap.features:
            aligned[:, j] = by_row[:, shap.features.index(feature)]
    return aligned


def sign_agreement(shap_row: np.ndarray, lime_row: np.ndarray, k: int) -> float:
    """Among SHAP's k largest |values|, the share where LIME's weight has the same sign."""
    top = sorted(top_k(shap_row, min(k, len(shap_row))))
    return float(np.mean(np.sign(shap_row[top]) == np.sign(lime_row[top])))


def compare_rows(shap: np.ndarray, lime: np.ndarray, k: int) -> pd.DataFrame:
    """Per-row agreement of two (rows, features) attribution matrices over the same features."""
    return pd.DataFrame(
        {
            "spearman": rowwise(spearman, np.abs(shap), np.abs(lime)),
            "topk_overlap": rowwise(topk_overlap, shap, lime, k=k),
            "sign_agreement_topk": rowwise(sign_agreement, shap, lime, k=k),
        }
    )


def compared_k(requested: int, n_features: int) -> int:
    """k capped below the number of features: two top-p sets of p features always overlap fully."""
    return max(1, min(requested, n_features - 1))


def agreement_metrics(comparison: pd.DataFrame, shap: np.ndarray, lime: np.ndarray, k: int) -> dict[str, float]:
    n_features = shap.shape[1]
    overlap = float(comparison["topk_overlap"].mean())
    chance = min(k, n_features) / n_features  # expected overlap of two top-k sets drawn at random
    return {
        "spearman_mean": nan_safe(np.mean, comparison["spearman"]),
        "spearman_min": nan_safe(np.min, comparison["spearman"]),
        "topk_overlap_mean": overlap,
        "topk_overlap_chance": chance,
        # Cohen's-kappa style: 0 = no better than two random top-k sets, 1 = always the same set
        "topk_overlap_above_chance": (overlap - chance) / (1 - chance) if chance < 1 else float("nan"),
        "sign_agreement_topk": float(comparison["sign_agreement_topk"].mean()),
        "global_spearman": spearman(np.abs(shap).mean(axis=0), np.abs(lime).mean(axis=0)),
        "rows_compared": float(len(comparison)),
    }


class AgreementAudit(Audit):
    """SHAP against LIME on the same informative rows: rank correlation, top-k overlap, sign agreement."""

    name = "explanation_agreement"
    question = "behaviour"
    typical_cost_s = 1.5  # for the scheduler (audits.core.audit)
    metric_keys = (
        "global_spearman", "rows_compared", "sign_agreement_topk", "spearman_{mean,min}",
        "topk_overlap_{above_chance,chance,mean}",
    )
    Config = AgreementConfig
    requires = Requirements(probabilities=True)
    description = "Agreement of SHAP and LIME on the same rows: Spearman of |attributions|, top-k overlap, signs."
    # Warn when SHAP's and LIME's top-k sets overlap less than a quarter of the way from chance (two
    # random sets, k/p) to always identical: the methods then name different drivers for the same rows
    # and neither should be taken at face value. A raw overlap bound would depend on the number of
    # features (chance is 0.6 for 3 of 5 features, 0.1 for 3 of 30); a Spearman bound over all features
    # drops on healthy wide models, where irrelevant features rank at random under both methods.
    # Disagreement is not evidence against the model, so it only warns.
    default_thresholds = (Threshold(metric="topk_overlap_above_chance", min=0.25, severity="warn"),)

    def skip_reason(self, context: AuditContext) -> str | None:
        reason = super().skip_reason(context)
        if reason is None and len(context.features) < 2:
            return f"cannot tell with {len(context.features)} feature: SHAP and LIME have no ranking to agree or disagree on"
        return reason

    def compute(self, context: AuditContext) -> AuditResult:
        cfg: AgreementConfig = self.config
        explained = explain_informative_rows(context, cfg.rows, "current", cfg.num_samples, LimeConfig().training_rows)
        reference = context.reference.X
        background = reference.sample(n=min(cfg.background_rows, len(reference)), random_state=context.random_state(SHAP_BACKGROUND_SEED))
        shap_attr = explain(context, explained.X, background, explainer="auto")
        lime = explained.lime
        shap = aligned_shap(shap_attr, lime)
        k = compared_k(cfg.top_k, len(lime.features))

        comparison = compare_rows(shap, lime.weights, k)
        metrics = agreement_metrics(comparison, shap, lime.weights, k)

        def names(values: np.ndarray) -> str:
            return ", ".join(lime.features[j] for j in np.argsort(-np.abs(values), kind="stable")[:k])

        table = pd.DataFrame(
            {
                "row": [str(r) for r in explained.selection["row"]],
                "reason": explained.selection["reason"].to_numpy(),
                "explained": lime.explained,
                "lime_fidelity_r2": lime.fidelity,
                **{column: comparison[column].to_numpy() for column in comparison.columns},
                f"shap_top{k}": [names(row) for row in shap],
                f"lime_top{k}": [names(row) for row in lime.weights],
            }
        )
        features = feature_table(lime.features, shap, lime.weights)
        undefined = int(comparison["spearman"].isna().sum())
        return AuditResult(
            audit=self.name,
            metrics=metrics,
            artifacts=(
                Artifact.table("rows", table, "SHAP against LIME per row: Spearman of |attributions|, top-k overlap, sign agreement"),
                Artifact.table("features", features, "Mean |SHAP| and mean |LIME weight| per feature over the compared rows"),
                Artifact.figure("agreement", agreement_figure(features, comparison, shap_attr.output_space), "SHAP against LIME"),
            ),
            info={
                "shap_explainer": shap_attr.explainer,
                "shap_output": f"{shap_attr.output_space} of the class LIME explained" if context.task == "classification" else shap_attr.output_space,
                "lime_output": output_description(context, lime.explained),
                "top_k": f"{k} of {len(lime.features)} features (two random top-{k} sets overlap {k / len(lime.features):.2f} on average)",
                "spearman_undefined_rows": f"{undefined} (one side constant)" if undefined else "0",
                "rows_from": "current",
            },
        )


def feature_table(features: list[str], shap: np.ndarray, lime: np.ndarray) -> pd.DataFrame:
    mean_shap, mean_lime = np.abs(shap).mean(axis=0), np.abs(lime).mean(axis=0)
    frame = pd.DataFrame(
        {
            "feature": features,
            "mean_abs_shap": mean_shap,
            "mean_abs_lime": mean_lime,
            "share_shap": mean_shap / (mean_shap.sum() or 1.0),
            "share_lime": mean_lime / (mean_lime.sum() or 1.0),
        }
    )
    frame["rank_shap"] = frame["mean_abs_shap"].rank(ascending=False, method="min").astype(int)
    frame["rank_lime"] = frame["mean_abs_lime"].rank(ascending=False, method="min").astype(int)
    return frame.sort_values("mean_abs_shap", ascending=False, kind="stable")


def agreement_figure(features: pd.DataFrame, comparison: pd.DataFrame, shap_space: str) -> Figure:
    fig = Figure(figsize=(11, 4.8), layout="constrained")
    left, right = fig.subplots(1, 2)
    x, y = features["share_shap"].to_numpy(), features["share_lime"].to_numpy()
    left.scatter(x, y, color="#1f77b4", s=22)
    top = max(float(x.max()), float(y.max()), 1e-12) * 1.08
    left.plot([0, top], [0, top], color="grey", linewidth=0.8, linestyle="--", label="equal share")
    labelled = (features["rank_shap"] <= 15) | (features["rank_lime"] <= 15)  # keep large plans readable
    for name, xi, yi in zip(features["feature"][labelled], x[labelled.to_numpy()], y[labelled.to_numpy()], strict=True):
        left.annotate(str(name), (xi, yi), textcoords="offset points", xytext=(4, 3), fontsize=7)
    left.set_xlim(0, top)
    left.set_ylim(0, top)
    left.set_xlabel(f"share of mean |SHAP| ({shap_space})")
    left.set_ylabel("share of mean |LIME weight|")
    left.set_title("Global importance: SHAP against LIME")
    left.legend(loc="upper left", fontsize=8)

    rho = comparison["spearman"].dropna().to_numpy()
    right.hist(rho, bins=np.linspace(-1, 1, 21), color="#7f7f7f", edgecolor="white")
    if len(rho):
        right.axvline(float(rho.mean()), color="black", linewidth=1, label=f"mean {rho.mean():.2f}")
        right.legend(loc="upper left", fontsize=8)
    right.set_xlim(-1, 1)
    right.set_xlabel("Spearman correlation of |SHAP| and |LIME| in a row")
    right.set_ylabel("rows")
    right.set_title(f"Per-row rank agreement ({len(rho)} of {len(comparison)} rows defined)")
    return fig
