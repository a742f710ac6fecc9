"""Model performance on labelled current data, beside the same metrics on reference data, on every row.

The metrics are reduced over partitions: a confusion matrix and sums (exact, whatever the row count), and for ROC-AUC the
scores themselves up to ``exact_auc_rows`` rows per side (scikit-learn's own ``roc_auc_score``), beyond that fine score
histograms, whose ties within a bin bound the error; the bound is recorded as ``<side>.roc_auc_bound`` (0 when exact).
On data that fits one frame every figure equals ``sklearn.metrics``' on the same rows (a unit test checks each).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pydantic import Field
from sklearn import metrics as skm

from audits.core import Artifact, AuditConfig, AuditContext, AuditResult, Requirements
from audits.core.context import Dataset
from audits.core.partial import PartialAudit, State
from audits.methods.metrics import (
    _empty_side,
    _merge_classification,
    _merge_regression,
    _update_classification,
    _update_regression,
    classification_figures,
    regression_figures,
)

SIDES = ("reference", "current")


class PerformanceConfig(AuditConfig):
    # ROC-AUC is exact (scikit-learn on the scores) up to this many labelled rows per side, then from score histograms
    exact_auc_rows: int = Field(200_000, ge=0, le=50_000_000)
    auc_bins: int = Field(4096, ge=16, le=1_000_000)  # histogram bins on [0, 1] beyond exact_auc_rows


# ---------------------------------------------------------------------------------------------
# Reducible statistics


class PerformanceAudit(PartialAudit):
    """Accuracy, F1, ROC-AUC, log loss (classifiers) or RMSE, MAE, R2 (regressors), on every labelled row."""

    name = "performance"
    question = "behaviour"
    metric_keys = (
        "{reference,current,delta}.{accuracy,balanced_accuracy,f1,roc_auc,log_loss,rmse,mae,r2}",
        "{reference,current}.roc_auc_bound", "{reference,current}.rows",
    )
    mode = "partial"
    Config = PerformanceConfig
    requires = Requirements(labels="current", modalities=("tabular", "image", "text"))
    description = "Model performance on labelled current data, compared with reference data."

    def init(self, context: AuditContext, fitted: Any) -> State:
        n_classes = len(context.model.classes or ())
        return {side: _empty_side(context.task, n_classes) for side in SIDES}

    def update(self, state: State, partition: Dataset, context: AuditContext, fitted: Any) -> State:
        if not partition.labelled or len(partition) == 0:
            return state
        side = state[partition.name]
        if context.task == "classification":
            updated = _update_classification(side, partition, context.model.classes, self.config)
        else:
            updated = _update_regression(side, partition)
        return {**state, partition.name: updated}

    def merge(self, a: State, b: State) -> State:
        out = {}
        for side in SIDES:
            x, y = a[side], b[side]
            if "confusion" in x:
                out[side] = _merge_classification(x, y, self.config)
            else:
                out[side] = _merge_regression(x, y)
        return out

    def finalize(self, state: State, context: AuditContext, fitted: Any, population: dict[str, int]) -> AuditResult:
        per_set: dict[str, dict[str, float]] = {}
        bounds: dict[str, float] = {}
        for side in SIDES:
            if state[side]["rows"] == 0:
                continue
            if context.task == "classification":
                figures = classification_figures(state[side], context.model.classes, context.model.predict_proba is not None)
                if "roc_auc_bound" in figures:
                    bounds[side] = figures.pop("roc_auc_bound")
                per_set[side] = figures
            else:
                per_set[side] = regression_figures(state[side])
        metrics = {f"{name}.{k}": v for name, values in per_set.items() for k, v in values.items()}
        metrics.update({f"{side}.roc_auc_bound": b for side, b in bounds.items()})
        metrics["current.rows"] = float(state["current"]["rows"])
        if "reference" in per_set and "current" in per_set:
            for key, value in per_set["current"].items():
                metrics[f"delta.{key}"] = value - per_set["reference"][key]

        table = pd.DataFrame(per_set).rename_axis("metric").reset_index()
        if "reference" in per_set and "current" in per_set:
            table["delta"] = table["current"] - table["reference"]
        labelled = [side for side in SIDES if side in per_set]
        if context.task == "classification":
            figure = _confusion_figure({side: state[side]["confusion"] for side in labelled}, context.model.classes)
        else:
            figure = _residual_figure([context.dataset(side) for side in labelled if context.dataset(side).labelled],
                                      context.random_state("performance.residual_subsample"))
        info = {
            "task": context.task,
            "labelled": ", ".join(labelled),
            "rows": ", ".join(f"{side}: {state[side]['rows']:,} labelled row(s), every one" for side in labelled),
            "reference_scores": "in-sample when the reference is the training data: an optimistic baseline",
        }
        if any(b > 0 for b in bounds.values()):
            info["roc_auc"] = (f"from {self.config.auc_bins} score bins beyond {self.config.exact_auc_rows:,} rows; "
                               + ", ".join(f"{side} within ±{b:.2g}" for side, b in bounds.items()))
        unknown = {side: sorted(state[side].get("unknown", {})) for side in labelled if state[side].get("unknown")}
        if unknown:
            info["unknown_labels"] = "; ".join(f"{side}: {', '.join(map(str, labels[:10]))}" for side, labels in unknown.items())
        return AuditResult(
            audit=self.name,
            metrics=metrics,
            artifacts=(Artifact.table("metrics", table, "Performance on reference and current data"), figure),
            info=info,
        )


def _confusion_figure(confusions: dict[str, np.ndarray], classes: tuple) -> Artifact:
    fig = Figure(figsize=(5 * len(confusions), 4.2), layout="constrained")
    axes = fig.subplots(1, len(confusions), squeeze=False)[0]
    for ax, (side, confusion) in zip(axes, confusions.items(), strict=True):
        skm.ConfusionMatrixDisplay(confusion_matrix=confusion, display_labels=list(classes)).plot(ax=ax, colorbar=False)
        ax.set_title(f"{side} (n={int(confusion.sum()):,})")
    return Artifact.figure("confusion_matrix", fig, "Confusion matrices")


def _residual_figure(datasets: list[Dataset], random_state: int) -> Artifact:
    fig = Figure(figsize=(5 * max(len(datasets), 1), 4.2), layout="constrained")
    axes = fig.subplots(1, max(len(datasets), 1), squeeze=False)[0]
    for ax, ds in zip(axes, datasets, strict=False):
        skm.PredictionErrorDisplay.from_predictions(
            ds.y.to_numpy(dtype=float), ds.predictions.labels.astype(float), kind="actual_vs_predicted", ax=ax,
            random_state=random_state,  # the display subsamples 1,000 points
        )
        ax.set_title(f"{ds.name} (sample of n={len(ds):,})")
    return Artifact.figure("actual_vs_predicted", fig, "Actual against predicted")
