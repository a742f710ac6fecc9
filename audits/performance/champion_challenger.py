"""Champion against challenger: the audited version (the challenger) and the deployed one (the champion,
behind ``model.baseline_alias``) scored on the same labelled current rows.

Every metric of the performance audit is computed for both, with their difference; thresholds are data,
as everywhere: an absolute bound on the challenger, or a bound on its change against the champion
(absolute or relative), in the direction that matters (``min`` for scores, ``max`` for losses).
The ``primary`` metric (ROC-AUC for binary classifiers, accuracy for multiclass, R^2 for regressors)
carries the default check, so a plan needs no task-specific keys.
"""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from audits.core import Artifact, Audit, AuditConfig, AuditContext, AuditResult, Requirements, Threshold
from audits.core.context import Dataset, predict
from audits.methods.metrics import classification_metrics, regression_metrics

LOWER_IS_BETTER = {"log_loss", "rmse", "mae"}


class ChampionChallengerConfig(AuditConfig):
    pass


def primary_metric(context: AuditContext) -> str:
    if context.task == "regression":
        return "r2"
    return "roc_auc" if len(context.model.classes) == 2 and context.model.predict_proba is not None else "accuracy"


class ChampionChallengerAudit(Audit):
    """Both versions on the same labelled current rows: every performance metric, and the deltas."""

    name = "champion_challenger"
    question = "behaviour"
    metric_keys = (
        "{champion,challenger,delta}.{accuracy,balanced_accuracy,f1,roc_auc,log_loss,rmse,mae,r2}",
        "{champion,challenger}.primary", "rows",
    )
    Config = ChampionChallengerConfig
    requires = Requirements(labels="current", modalities=("tabular", "image", "text"), baseline="champion")
    description = "The audited version against the deployed one (baseline alias) on the same current data."
    default_sample_rows = 200_000  # one prediction per row and version: the metrics' sampling error shrinks as 1/sqrt(rows)
    # A challenger may not lose more than 0.02 of the primary score to the deployed champion.
    default_thresholds = (
        Threshold(metric="challenger.primary", compare_to="champion.primary",
                  min=-0.02, severity="fail"),
    )

    def compute(self, context: AuditContext) -> AuditResult:
        current = context.current
        champion_view = Dataset("current", current.X, current.y, predict(context.baseline, current.X), current.source)
        scores = {}
        for role, model, ds in (("challenger", context.model, current), ("champion", context.baseline, champion_view)):
            if context.task == "classification":
                scores[role] = classification_metrics(ds, model.classes)
            else:
                scores[role] = regression_metrics(ds)
        shared = [m for m in scores["challenger"] if m in scores["champion"]]
        primary = primary_metric(context)
        metrics: dict[str, float] = {"rows": float(len(current))}
        for role in ("challenger", "champion"):
            for metric in shared:
                metrics[f"{role}.{metric}"] = scores[role][metric]
            metrics[f"{role}.primary"] = scores[role][primary]
        for metric in shared:
            metrics[f"delta.{metric}"] = scores["challenger"][metric] - scores["champion"][metric]
        table = pd.DataFrame({
            "metric": shared,
            "challenger": [scores["challenger"][m] for m in shared],
            "champion": [scores["champion"][m] for m in shared],
        })  # fmt: skip
        table["delta"] = table["challenger"] - table["champion"]
        table["better"] = [
            "challenger" if (d < 0 if m in LOWER_IS_BETTER else d > 0) else ("champion" if d != 0 else "tie")
            for m, d in zip(table["metric"], table["delta"], strict=True)
        ]
        return AuditResult(
            audit=self.name,
            metrics=metrics,
            artifacts=(
                Artifact.table("comparison", table, f"{context.model.label} (challenger) against {context.baseline.label} (champion)"),
                _figure(table, context.model.label, context.baseline.label),
            ),
            info={"challenger": context.model.label, "champion": context.baseline.label, "primary_metric": primary},
        )


def _figure(table: pd.DataFrame, challenger: str, champion: str) -> Artifact:
    fig = Figure(figsize=(7, 0.45 * len(table) + 1.4), layout="constrained")
    ax = fig.add_subplot()
    positions = range(len(table))[::-1]
    ax.barh([p + 0.2 for p in positions], table["champion"], height=0.38, color="#9aa0a6", label=f"champion: {champion}")
    ax.barh([p - 0.2 for p in positions], table["challenger"], height=0.38, color="#1f77b4", label=f"challenger: {challenger}")
    ax.set_yticks(list(positions), table["metric"])
    ax.set_title("Champion against challenger on current data")
    ax.legend(loc="lower right", fontsize=8)
    return Artifact.figure("comparison", fig, "Both versions' metrics on the same rows")
