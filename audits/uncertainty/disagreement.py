"""Disagreement of a bootstrap ensemble: how much of the model's uncertainty comes from the model
class itself (epistemic) rather than from noise it has learned (aleatoric)?

Members are clones of the audited estimator (``sklearn.base.clone``), refitted on bootstrap resamples
of the labelled reference data (``ensemble.bootstrap_members``). Part of the reference (``holdout``)
is kept from every member and scored like the current rows: those held-out rows are exchangeable
with an unshifted current batch, so their means are the baseline the current means are compared with
(in-sample reference rows would look more certain than any new row).

- Classifiers (``ensemble.decompose``): total uncertainty = entropy of the members' mean
  probabilities, split into the members' expected entropy (aleatoric) and their mutual information
  (epistemic, >= 0). Also the variance across members of P(the model's predicted class).
- Regressors: the variance (and std) across members of their predictions, the epistemic spread of
  the model class (a bootstrap of point predictors does not estimate the noise).

``epistemic_ratio`` = current mean epistemic uncertainty (classifiers: mutual information;
regressors: member variance) / the same mean on held-out reference rows; about 1 without shift.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pydantic import Field

from audits.core import Artifact, Audit, AuditConfig, AuditContext, AuditResult, Requirements, Threshold
from audits.methods.ensemble import fit_ensemble, row_uncertainty

PLOT_POINTS = 5000  # scatter plots draw at most this many rows (sampled with the seed)


class DisagreementConfig(AuditConfig):
    members: int = Field(10, ge=2, le=200)  # bootstrap clones of the model
    max_rows: int = Field(5000, ge=10)  # rows per member's resample; also caps the held-out reference rows scored
    holdout: float = Field(0.25, ge=0.05, le=0.5)  # share of the reference kept from the members, scored for comparison
    rows: int = Field(200, ge=1)  # current rows in the per-row table (the most uncertain ones)


def summary(frame: pd.DataFrame, task: str) -> dict[str, float]:
    if task == "regression":
        return {"mean_std": float(frame["std"].mean()), "mean_variance": float(frame["variance"].mean())}
    total, epistemic = float(frame["total"].mean()), float(frame["epistemic"].mean())
    return {
        "mean_total": total,
        "mean_aleatoric": float(frame["aleatoric"].mean()),
        "mean_epistemic": epistemic,
        "epistemic_share": epistemic / total if total > 0 else float("nan"),
        "mean_variance": float(frame["variance"].mean()),
    }


def ratio(current: float, reference: float) -> float:
    """current / reference, with 0 / 0 = 1 (members that agree everywhere) and x / 0 = inf."""
    if reference > 0:
        return current / reference
    return 1.0 if current == 0 else float("inf")


class DisagreementAudit(Audit):
    """Bootstrap-ensemble uncertainty of the model class: aleatoric vs epistemic, current vs held-out reference."""

    name = "disagreement"
    question = "certainty"
    typical_cost_s = 4.0  # for the scheduler (audits.core.audit)
    metric_keys = (
        "epistemic_ratio",
        "{,reference.}{epistemic_share,mean_aleatoric,mean_epistemic,mean_std,mean_total,mean_variance}", "members",
        "{,reference.}rows",
    )
    Config = DisagreementConfig
    requires = Requirements(labels="reference", estimator=True, probabilities=True, modalities=("tabular", "image"))
    description = "Epistemic uncertainty from a bootstrap ensemble of clones of the model, current vs held-out reference rows."
    # the members fit on at most max_rows rows; each current row costs one prediction per member (bench/bench_sample_sizes.py:
    # 4.1 s at 20k rows a side, 15.6 s at 400k)
    default_sample_rows = 200_000
    # Held-out reference rows are exchangeable with an unshifted current batch: the ratio is about 1
    # (up to sampling noise, tens of percent on small batches); twice the reference's epistemic
    # uncertainty means the model class is markedly less sure about the current data.
    default_thresholds = (Threshold(metric="epistemic_ratio", max=2.0, severity="warn"),)

    def compute(self, context: AuditContext) -> AuditResult:
        cfg: DisagreementConfig = self.config
        ensemble = fit_ensemble(context, cfg.members, cfg.max_rows, cfg.holdout, self.name)
        reference, current = context.reference, context.current
        frames = {
            "current": row_uncertainty(context, ensemble.members, current.X, current.predictions.labels),
            "reference": row_uncertainty(context, ensemble.members, reference.X.iloc[ensemble.holdout_positions],
                                         reference.predictions.labels[ensemble.holdout_positions]),
        }
        per_set = {name: summary(frame, context.task) for name, frame in frames.items()}
        spread = "mean_epistemic" if context.task == "classification" else "mean_variance"
        metrics = {
            **per_set["current"],
            **{f"reference.{key}": value for key, value in per_set["reference"].items()},
            "epistemic_ratio": ratio(per_set["current"][spread], per_set["reference"][spread]),
            "members": float(len(ensemble.members)),
            "rows": float(len(current)),
            "reference.rows": float(len(ensemble.holdout_positions)),
        }
        plot_rows = context.rng("disagreement.plot")
        figures = (
            [_decomposition_figure(frames)]
            if context.task == "classification"
            else [_std_histogram(frames), _std_vs_prediction(frames, current.predictions.labels, plot_rows)]
        )
        return AuditResult(
            audit=self.name,
            metrics=metrics,
            artifacts=(
                Artifact.table("rows", _rows_table(frames["current"], current, cfg.rows, context.task),
                               f"The {min(cfg.rows, len(current))} current rows the members disagree on most"),
                *figures,
            ),
            info={
                "members": f"{len(ensemble.members)} clones of {type(context.model.estimator).__name__}, each fitted on "
                           f"{min(cfg.max_rows, len(ensemble.fit_positions))} rows resampled from {len(ensemble.fit_positions)} reference rows",
                "reference": f"{len(ensemble.holdout_positions)} held-out reference rows no member saw: comparable with current rows",
                "epistemic": "mutual information between the prediction and the member (nats)"
                             if context.task == "classification" else "variance of the members' predictions",
                "epistemic_ratio": f"current {spread} / reference {spread}; about 1 without shift",
            },
        )


def _rows_table(frame: pd.DataFrame, ds, n: int, task: str) -> pd.DataFrame:
    key = "epistemic" if task == "classification" else "std"
    order = np.argsort(-frame[key].to_numpy(), kind="stable")[:n]
    table = frame.iloc[order].reset_index(drop=True)
    table.insert(0, "prediction", ds.predictions.labels[order].tolist())
    table.insert(0, "row", [str(i) for i in ds.X.index[order]])
    if ds.y is not None:
        table.insert(2, "label", ds.y.iloc[order].tolist())
    return table


def _histogram(ax, values: dict[str, np.ndarray], xlabel: str) -> None:
    bins = np.histogram_bin_edges(np.concatenate(list(values.values())), bins=40)
    for name, v in values.items():
        ax.hist(v, bins=bins, density=True, histtype="step", linewidth=1.5, label=f"{name} (n={len(v)})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.legend()


def _decomposition_figure(frames: dict[str, pd.DataFrame]) -> Artifact:
    fig = Figure(figsize=(10, 4), layout="constrained")
    for ax, part in zip(fig.subplots(1, 2), ("aleatoric", "epistemic"), strict=True):
        _histogram(ax, {name: frame[part].to_numpy() for name, frame in frames.items()}, f"{part} uncertainty (nats)")
        ax.set_title(f"{part}: current vs held-out reference")
    return Artifact.figure("uncertainty_histograms", fig, "Aleatoric (expected entropy) and epistemic (mutual information) uncertainty")


def _std_histogram(frames: dict[str, pd.DataFrame]) -> Artifact:
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    _histogram(ax, {name: frame["std"].to_numpy() for name, frame in frames.items()}, "std of the members' predictions")
    ax.set_title("Ensemble spread: current vs held-out reference")
    return Artifact.figure("std_histogram", fig, "Standard deviation of the members' predictions")


def _std_vs_prediction(frames: dict[str, pd.DataFrame], prediction: np.ndarray, rng: np.random.Generator) -> Artifact:
    frame = frames["current"]
    shown = np.sort(rng.choice(len(frame), size=min(PLOT_POINTS, len(frame)), replace=False))
    fig = Figure(figsize=(6, 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.scatter(np.asarray(prediction, dtype=float)[shown], frame["std"].to_numpy()[shown], s=6, alpha=0.5)
    ax.set_xlabel("model prediction")
    ax.set_ylabel("std of the members' predictions")
    ax.set_title(f"Current rows (n={len(shown)} shown)")
    return Artifact.figure("std_vs_prediction", fig, "Ensemble spread against the model's prediction")
