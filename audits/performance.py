"""Model performance on labelled current data, beside the same metrics on reference data.

Every number comes from ``sklearn.metrics``; this module only chooses which ones and lays them out.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn import metrics as skm

from audits.core import Artifact, Audit, AuditConfig, AuditContext, AuditResult, Requirements
from audits.core.context import Dataset


class PerformanceConfig(AuditConfig):
    pass


def classification_metrics(ds: Dataset, classes: tuple) -> dict[str, float]:
    y, pred, proba = ds.y.to_numpy(), ds.predictions.labels, ds.predictions.proba
    binary = len(classes) == 2
    out = {
        "accuracy": skm.accuracy_score(y, pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
        # binary: F1 of the positive class (classes[1], as scikit-learn orders them); multiclass: macro
        "f1": skm.f1_score(y, pred, average="binary", pos_label=classes[1])
        if binary
        else skm.f1_score(y, pred, average="macro", labels=list(classes)),
    }
    if proba is not None:
        present = set(np.unique(y).tolist())
        out["log_loss"] = skm.log_loss(y, proba, labels=list(classes))
        if len(present) < 2:
            out["roc_auc"] = float("nan")  # undefined with one class present; a threshold on it reports ERROR
        elif binary:
            out["roc_auc"] = skm.roc_auc_score(y == classes[1], proba[:, 1])
        else:
            out["roc_auc"] = skm.roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=list(classes))
    return {k: float(v) for k, v in out.items()}


def regression_metrics(ds: Dataset) -> dict[str, float]:
    y, pred = ds.y.to_numpy(dtype=float), ds.predictions.labels.astype(float)
    return {
        "rmse": float(skm.root_mean_squared_error(y, pred)),
        "mae": float(skm.mean_absolute_error(y, pred)),
        "r2": float(skm.r2_score(y, pred)),
    }


class PerformanceAudit(Audit):
    """Accuracy, F1, ROC-AUC, log loss (classifiers) or RMSE, MAE, R2 (regressors)."""

    name = "performance"
    Config = PerformanceConfig
    requires = Requirements(labels="current", modalities=("tabular", "image", "text"))
    description = "Model performance on labelled current data, compared with reference data."

    def compute(self, context: AuditContext) -> AuditResult:
        datasets = [ds for ds in (context.reference, context.current) if ds.labelled]
        per_set: dict[str, dict[str, float]] = {}
        for ds in datasets:
            if context.task == "classification":
                per_set[ds.name] = classification_metrics(ds, context.model.classes)
            else:
                per_set[ds.name] = regression_metrics(ds)
        metrics = {f"{name}.{k}": v for name, values in per_set.items() for k, v in values.items()}
        metrics["current.rows"] = float(len(context.current))
        if "reference" in per_set:
            for key, value in per_set["current"].items():
                metrics[f"delta.{key}"] = value - per_set["reference"][key]

        table = pd.DataFrame(per_set).rename_axis("metric").reset_index()
        if "reference" in per_set:
            table["delta"] = table["current"] - table["reference"]
        figure = (
            _confusion_figure(datasets, context.model.classes)
            if context.task == "classification"
            else _residual_figure(datasets, context.random_state("performance.residual_subsample"))
        )
        return AuditResult(
            audit=self.name,
            metrics=metrics,
            artifacts=(
                Artifact.table("metrics", table, "Performance on reference and current data"),
                figure,
            ),
            info={
                "task": context.task,
                "labelled": ", ".join(ds.name for ds in datasets),
                "reference_scores": "in-sample when the reference is the training data: an optimistic baseline",
            },
        )


def _confusion_figure(datasets: list[Dataset], classes: tuple) -> Artifact:
    fig = Figure(figsize=(5 * len(datasets), 4.2), layout="constrained")
    axes = fig.subplots(1, len(datasets), squeeze=False)[0]
    for ax, ds in zip(axes, datasets, strict=True):
        skm.ConfusionMatrixDisplay.from_predictions(
            ds.y.to_numpy(), ds.predictions.labels, labels=list(classes), ax=ax, colorbar=False
        )
        ax.set_title(f"{ds.name} (n={len(ds)})")
    return Artifact.figure("confusion_matrix", fig, "Confusion matrices")


def _residual_figure(datasets: list[Dataset], random_state: int) -> Artifact:
    fig = Figure(figsize=(5 * len(datasets), 4.2), layout="constrained")
    axes = fig.subplots(1, len(datasets), squeeze=False)[0]
    for ax, ds in zip(axes, datasets, strict=True):
        skm.PredictionErrorDisplay.from_predictions(
            ds.y.to_numpy(dtype=float), ds.predictions.labels.astype(float), kind="actual_vs_predicted", ax=ax,
            random_state=random_state,  # the display subsamples 1,000 points
        )
        ax.set_title(f"{ds.name} (n={len(ds)})")
    return Artifact.figure("actual_vs_predicted", fig, "Actual against predicted")
