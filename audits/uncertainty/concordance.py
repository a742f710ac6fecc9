"""Concordance: are the rows the model is unsure about also the unfamiliar ones, and the wrong ones?

Per current row, up to three kinds of signal:

- uncertainty: classifiers, the entropy of the model's own probabilities (``scores.entropy``);
  regressors, the standard deviation of a small bootstrap ensemble of clones of the model
  (``ensemble.bootstrap_members``, fitted on the labelled reference rows);
- unfamiliarity: OOD scores fitted on the reference (``ood.fit_ood``; knn distance and PCA
  reconstruction error by default);
- error, when the current rows are labelled: classifiers, 1 if misclassified else 0; regressors,
  the absolute residual.

Metrics: the Spearman rank correlation of every pair of signals and, for classifiers, the ROC-AUC of
each uncertainty and OOD score at telling misclassified rows from correct ones (0.5: no better than
chance). No default threshold: how strongly uncertainty should track errors depends on the model and
the data, and an AUROC near 0.5 on a model that makes few errors is not a defect in itself.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pydantic import Field
from scipy.stats import rankdata

from audits.core import Artifact, Audit, AuditConfig, AuditContext, AuditResult
from audits.methods.compare import spearman
from audits.methods.ensemble import bootstrap_members, member_predictions, regressor_uncertainty
from audits.methods.ood import Scorers, fit_ood
from audits.methods.scores import entropy

PLOT_POINTS = 5000  # scatter plots draw at most this many rows (sampled with the seed)


class ConcordanceConfig(AuditConfig):
    scorers: Scorers = ("knn", "pca")  # OOD scorers compared
    k: int = Field(5, ge=1, le=100)  # neighbours averaged by the knn scorer
    max_rows: int = Field(5000, ge=20)  # reference rows for the OOD scorers and per ensemble member
    members: int = Field(5, ge=2, le=100)  # regressors: bootstrap clones whose spread is the uncertainty
    rows: int = Field(20, ge=1)  # worst rows in the table


def uncertainty(context: AuditContext, cfg: ConcordanceConfig) -> tuple[np.ndarray | None, str]:
    """(per-row uncertainty of the current rows or None, what it is or why it is missing)."""
    current, reference = context.current, context.reference
    if context.task == "classification":
        if current.predictions.proba is None:
            return None, f"no uncertainty column: {context.model.label} ({context.model.flavor}) has no predict_proba"
        return entropy(current.predictions.proba), "entropy of the model's predicted probabilities (nats)"
    if context.model.estimator is None:
        return None, f"no uncertainty column: a bootstrap ensemble needs a native scikit-learn model; {context.model.label} loads as {context.model.flavor}"
    if not reference.labelled:
        return None, "no uncertainty column: a bootstrap ensemble needs labelled reference rows"
    members = bootstrap_members(context.model.estimator, reference.X, reference.y, cfg.members, cfg.max_rows,
                                context.rng("concordance.members"))
    spread = regressor_uncertainty(member_predictions(members, current.X))["std"].to_numpy()
    return spread, f"std of {cfg.members} bootstrap clones' predictions"


def error(context: AuditContext) -> tuple[np.ndarray | None, str]:
    current = context.current
    if not current.labelled:
        return None, f"no error column: target {context.target!r} is absent from the current data"
    if context.task == "classification":
        return (current.predictions.labels != current.y.to_numpy()).astype(float), "1 if misclassified, else 0"
    return np.abs(current.y.to_numpy(dtype=float) - current.predictions.labels.astype(float)), "absolute residual"


def signals(context: AuditContext, cfg: ConcordanceConfig) -> tuple[pd.DataFrame, dict[str, str]]:
    """Per current row (positions): uncertainty, the OOD scores, error; the columns that exist, and notes."""
    ood = fit_ood(context.reference.X, context.categorical, context.random_state("concordance.ood"), scorers=cfg.scorers,
                  k=cfg.k, max_rows=cfg.max_rows, holdout=0.0)  # thresholds unused: (all but one) rows for fitting
    scores = ood.scores(context.current.X)
    spread, spread_note = uncertainty(context, cfg)
    wrong, error_note = error(context)
    columns = {"uncertainty": spread, **{name: scores[name] for name in cfg.scorers}, "error": wrong}
    frame = pd.DataFrame({name: values for name, values in columns.items() if values is not None})
    return frame, {"uncertainty": spread_note, "ood": f"fit_ood scorers {', '.join(cfg.scorers)} fitted on the reference",
                   "error": error_note}


def detection_auroc(is_error: np.ndarray, score: np.ndarray) -> float:
    """ROC-AUC of ``score`` at ranking misclassified rows above correct ones; NaN with only one kind."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(is_error, score)) if 0 < is_error.sum() < len(is_error) else float("nan")


def concordance_metrics(frame: pd.DataFrame, task: str) -> dict[str, float]:
    names = list(frame.columns)
    metrics = {"rows": float(len(frame))}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            metrics[f"spearman.{a}_vs_{b}"] = spearman(frame[a].to_numpy(), frame[b].to_numpy())
    if "error" in frame:
        wrong = frame["error"].to_numpy()
        if task == "classification":
            metrics["error_rate"] = float(wrong.mean())
            for name in names[:-1]:
                metrics[f"auroc.{name}_detects_errors"] = detection_auroc(wrong.astype(bool), frame[name].to_numpy())
        else:
            metrics["mean_abs_error"] = float(wrong.mean())
    return metrics


class ConcordanceAudit(Audit):
    """Rank agreement between per-row uncertainty, OOD scores and errors on the current rows."""

    name = "concordance"
    question = "certainty"
    metric_keys = (
        "auroc.*_detects_errors", "spearman.*_vs_*", "error_rate", "mean_abs_error", "rows",
    )
    Config = ConcordanceConfig
    description = "Do uncertain rows coincide with out-of-distribution rows and with errors? Spearman correlations, error-detection AUROC."
    # its scorers fit on at most max_rows reference rows; then each current row costs a score (bench/bench_sample_sizes.py:
    # 1.3 s at 20k rows a side, 7.1 s at 400k), so a larger sample is cheap and ranks rarer errors
    default_sample_rows = 200_000

    def compute(self, context: AuditContext) -> AuditResult:
        cfg: ConcordanceConfig = self.config
        frame, notes = signals(context, cfg)
        return AuditResult(
            audit=self.name,
            metrics=concordance_metrics(frame, context.task),
            artifacts=(
                Artifact.table("worst_rows", _worst_rows(context, frame, cfg.rows),
                               f"The {min(cfg.rows, len(frame))} current rows ranked highest on all signals together"),
                _pairs_figure(frame, context.task, context.rng("concordance.plot")),
            ),
            info={**notes, "combined_rank": "mean over the signals of each row's percentile rank (1: highest)"},
        )


def combined_rank(frame: pd.DataFrame) -> np.ndarray:
    return np.mean([rankdata(frame[c].to_numpy()) / len(frame) for c in frame.columns], axis=0)


def _worst_rows(context: AuditContext, frame: pd.DataFrame, n: int) -> pd.DataFrame:
    rank = combined_rank(frame)
    order = np.argsort(-rank, kind="stable")[:n]
    current = context.current
    table = frame.iloc[order].reset_index(drop=True)
    table.insert(0, "combined_rank", rank[order])
    if current.labelled:
        table.insert(0, "label", current.y.iloc[order].tolist())
    table.insert(0, "prediction", current.predictions.labels[order].tolist())
    table.insert(0, "row", [str(i) for i in current.X.index[order]])
    return table


def _pairs_figure(frame: pd.DataFrame, task: str, rng: np.random.Generator) -> Artifact:
    """Lower triangle: percentile ranks of each pair of scores (the quantity Spearman correlates);
    diagonal: each score's distribution. Colour: misclassified (classifiers) or |residual| rank."""
    names = [c for c in frame.columns if c != "error"]
    shown = np.sort(rng.choice(len(frame), size=min(PLOT_POINTS, len(frame)), replace=False))
    data = frame.iloc[shown]
    ranks = {c: rankdata(frame[c].to_numpy())[shown] / len(frame) for c in names}
    colour: dict = {"color": "tab:blue"}
    if "error" in data and task == "classification":
        colour = {"c": np.where(data["error"].to_numpy() > 0, "tab:red", "lightgrey")}
    elif "error" in data:
        colour = {"c": rankdata(frame["error"].to_numpy())[shown] / len(frame), "cmap": "viridis"}
    size = len(names)
    fig = Figure(figsize=(3.2 * size, 3.2 * size), layout="constrained")
    axes = fig.subplots(size, size, squeeze=False)
    for i, row_name in enumerate(names):
        for j, column_name in enumerate(names):
            ax = axes[i][j]
            if i == j:
                if "error" in data and task == "classification":
                    wrong = data["error"].to_numpy() > 0
                    bins = np.histogram_bin_edges(data[row_name], bins=30)
                    ax.hist([data[row_name][~wrong], data[row_name][wrong]], bins=bins, color=["lightgrey", "tab:red"],
                            label=["correct", "misclassified"], histtype="stepfilled", alpha=0.7, density=True)
                    ax.legend(fontsize="small")
                else:
                    ax.hist(data[row_name], bins=30, color="tab:blue", alpha=0.7)
                ax.set_xlabel(row_name)
            elif i > j:
                ax.scatter(ranks[column_name], ranks[row_name], s=5, alpha=0.6, **colour)
                ax.set_xlabel(f"rank of {column_name}")
                ax.set_ylabel(f"rank of {row_name}")
            else:
                ax.set_axis_off()
    note = {"classification": "red: misclassified", "regression": "colour: rank of |residual|"}[task] if "error" in data else "unlabelled"
    fig.suptitle(f"Current rows (n={len(shown)} shown; {note})")
    return Artifact.figure("scatter_matrix", fig, "Uncertainty and OOD scores against each other, coloured by error")
