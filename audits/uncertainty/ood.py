"""Out-of-distribution rows: how many current rows look unlike anything in the reference data?

Scorers (``ood.fit_ood``) are fitted on the reference and calibrated on held-out reference rows: a
row is flagged when its score exceeds the held-out scores' ``percentile``, so an unshifted current
batch is flagged at about ``expected_share`` = 1 - percentile / 100.

``<scorer>.excess_z`` says how surprising the flagged count is under no shift, as a standard-normal
quantile: z = Phi^-1(1 - P(N >= flagged count)). A current row is flagged when it exceeds a
percentile of m held-out scores, and the rate at which an exchangeable row exceeds the order
statistic at position h = (m - 1) percentile / 100 is Beta(m - h, h + 1) distributed, whatever the
scores' distribution; the count N among n unshifted current rows is then BetaBinomial(n, m - h,
h + 1). For large n and m, z tends to (flagged - expected) / sqrt(e (1 - e) (1/n + 1/m)): the 1/m term
is the threshold's own sampling error, which dominates when the current batch is larger than the
calibration set (a plain binomial z over current rows would routinely exceed 3 without any shift).
The exact count distribution also keeps small batches and extreme percentiles, whose counts are
skewed, from warning more often than z > 3 promises (about 0.1 % per scorer).

The score histograms compare current rows with a separate seeded sample of reference rows kept out
of ``fit_ood`` altogether (``fit_ood`` does not expose its own held-out scores), at most 1,000 rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pydantic import Field

from audits.core import Artifact, AuditConfig, AuditContext, AuditResult, Requirements, Threshold
from audits.core.partial import PartialAudit
from audits.methods.ood import SCORERS, Scorers, calibration_rows, excess_z, excess_z_range, fit_ood

DISPLAY_ROWS = 1000  # reference rows kept out of fit_ood for the histograms


class OODConfig(AuditConfig):
    scorers: Scorers = SCORERS
    k: int = Field(5, ge=1, le=100)  # neighbours averaged by the knn scorer
    percentile: float = Field(95.0, gt=0, lt=100)  # of held-out reference scores: the flag threshold
    max_rows: int = Field(5000, ge=20)  # reference rows fitted and calibrated on (sampled with the seed)
    holdout: float = Field(0.25, ge=0.05, le=0.5)  # share of those rows kept for the thresholds
    rows: int = Field(20, ge=1)  # most unfamiliar current rows in the table


def split_display(context: AuditContext, holdout: float, purpose: str) -> tuple[np.ndarray, np.ndarray]:
    """(positions for fit_ood, positions kept out of it for display), both sorted."""
    n = len(context.reference)
    order = context.rng(purpose).permutation(n)
    n_display = min(DISPLAY_ROWS, int(round(holdout * n)), max(0, n - 20))
    return np.sort(order[n_display:]), np.sort(order[:n_display])


class OODAudit(PartialAudit):
    """k-NN distance, PCA and autoencoder reconstruction error of current rows, thresholded on held-out reference rows.

    Hybrid: the scorers are fitted and calibrated on the reference sample, then every current row is scored and the
    flagged rows are counted; the histograms show the current sample's scores, the table the least familiar rows of all.
    """

    name = "ood"
    question = "certainty"
    typical_cost_s = 1.5  # for the scheduler (audits.core.audit)
    metric_keys = (
        "{knn,pca,autoencoder}.{excess_z,flagged_share,mean_score,threshold}", "flagged_share_any", "max_excess_z",
        "expected_share", "calibration_rows", "rows",
    )
    mode = "hybrid"
    requires = Requirements(modalities=("tabular", "image"))
    Config = OODConfig
    description = "Share of current rows that are out of distribution for the reference data, per scorer."
    # z > 3: a flagged count that an unshifted batch reaches with probability 0.13 % or less, per scorer.
    default_thresholds = (Threshold(metric="max_excess_z", max=3.0, severity="warn"),)

    def fit(self, context: AuditContext) -> dict:
        cfg: OODConfig = self.config
        fit_positions, display_positions = split_display(context, cfg.holdout, "ood.display")
        reference = context.reference.X
        model = fit_ood(reference.iloc[fit_positions], context.categorical, context.random_state("ood.fit"),
                        scorers=cfg.scorers, k=cfg.k, percentile=cfg.percentile, holdout=cfg.holdout, max_rows=cfg.max_rows)
        display = model.scores(reference.iloc[display_positions]) if len(display_positions) else {}
        return {"model": model, "display": display, "m": calibration_rows(len(fit_positions), cfg.max_rows, cfg.holdout),
                "fitted_rows": min(cfg.max_rows, len(fit_positions)), "display_rows": len(display_positions)}

    def init(self, context: AuditContext, fitted: dict) -> dict:
        names = list(self.config.scorers)
        return {"rows": 0, "any_flagged": 0, "flagged": dict.fromkeys(names, 0), "score_sum": dict.fromkeys(names, 0.0),
                "top": {"ratio": np.zeros(0), "rows": []}}

    def update(self, state: dict, partition: Any, context: AuditContext, fitted: dict) -> dict:
        if partition.name != "current" or len(partition) == 0:
            return state
        model = fitted["model"]
        scores = model.scores(partition.X)
        flags = model.flags(scores)
        names = list(self.config.scorers)
        ratios = np.column_stack([scores[s] / max(model.thresholds[s], np.finfo(float).tiny) for s in names]).max(axis=1)
        keep = np.argsort(-ratios, kind="stable")[: self.config.rows]
        # a row is named by its index; in a partition of a larger dataset, after its file's name too
        where = "" if partition is context.current else f"{Path(partition.source).name or partition.name}#"
        rows = [_row(f"{where}{partition.X.index[i]}", float(ratios[i]), {s: float(scores[s][i]) for s in names},
                     [s for s in names if flags[s][i]], partition.predictions.labels[i], partition.X.iloc[i]) for i in keep]
        part = {"rows": len(partition), "any_flagged": int(np.any([flags[s] for s in names], axis=0).sum()),
                "flagged": {s: int(flags[s].sum()) for s in names}, "score_sum": {s: float(scores[s].sum()) for s in names},
                "top": {"ratio": ratios[keep], "rows": rows}}
        return self.merge(state, part)

    def merge(self, a: dict, b: dict) -> dict:
        ratio = np.concatenate([a["top"]["ratio"], b["top"]["ratio"]])
        rows = a["top"]["rows"] + b["top"]["rows"]
        keep = np.argsort(-ratio, kind="stable")[: self.config.rows]
        return {"rows": a["rows"] + b["rows"], "any_flagged": a["any_flagged"] + b["any_flagged"],
                "flagged": {s: a["flagged"][s] + b["flagged"][s] for s in a["flagged"]},
                "score_sum": {s: a["score_sum"][s] + b["score_sum"][s] for s in a["score_sum"]},
                "top": {"ratio": ratio[keep], "rows": [rows[i] for i in keep]}}

    def flagged_rows(self, state: dict, fitted: dict, features: tuple[str, ...]) -> pd.DataFrame | None:
        """The least familiar current rows that a scorer flags (of the ``rows`` kept, across every row)."""
        rows = [r for r in state["top"]["rows"] if r["flagged_by"]]
        if not rows:
            return None
        return pd.DataFrame({"row": [r["row"] for r in rows], "flagged_by": [f"ood ({r['flagged_by']})" for r in rows],
                             **{c: [r.get(f"feature: {c}") for r in rows] for c in features}})

    def finalize(self, state: dict, context: AuditContext, fitted: dict, population: dict[str, int]) -> AuditResult:
        cfg: OODConfig = self.config
        model, n, m = fitted["model"], state["rows"], fitted["m"]
        expected = 1 - cfg.percentile / 100
        metrics: dict[str, float] = {"expected_share": expected, "rows": float(n), "calibration_rows": float(m)}
        for name in cfg.scorers:
            metrics[f"{name}.flagged_share"] = state["flagged"][name] / n
            metrics[f"{name}.mean_score"] = state["score_sum"][name] / n
            metrics[f"{name}.threshold"] = model.thresholds[name]
            metrics[f"{name}.excess_z"] = excess_z(state["flagged"][name], n, m, cfg.percentile)
        metrics["flagged_share_any"] = state["any_flagged"] / n
        metrics["max_excess_z"] = max(metrics[f"{name}.excess_z"] for name in cfg.scorers)
        span = excess_z_range(n, m, cfg.percentile)
        ranges = {"max_excess_z": span, **{f"{name}.excess_z": span for name in cfg.scorers}}
        sample_scores = model.scores(context.current.X)
        everything = n == len(context.current)
        return AuditResult(
            audit=self.name,
            metrics=metrics,
            ranges=ranges,
            artifacts=(
                _histograms(sample_scores, fitted["display"], model.thresholds, cfg.percentile,
                            "current" if everything else f"current (sample of {len(context.current):,})"),
                Artifact.table("most_unfamiliar", pd.DataFrame(state["top"]["rows"]),
                               f"The {len(state['top']['rows'])} least familiar current rows of {n:,}: scores, scorers that "
                               "flag them, feature values"),
            ),
            info={
                "scorers": ", ".join(cfg.scorers),
                "thresholds": f"the {cfg.percentile:g}th percentile of {m} held-out reference rows' scores",
                "fitted_on": f"{fitted['fitted_rows'] - m} reference rows (standardised numeric, one-hot categorical)",
                "scored": f"{n:,} current rows, every one" + ("" if everything else "; the histograms show a sample"),
                "histogram_reference": f"{fitted['display_rows']} reference rows kept out of fitting and calibration",
                "excess_z": "normal quantile of the chance of flagging at least as many unshifted rows (beta-binomial)",
            },
        )


def _row(label: str, ratio: float, scores: dict[str, float], flagged_by: list[str], prediction: Any, features: pd.Series) -> dict:
    """One row of the table, in plain values (a state holds no objects)."""
    ratio_scores = {f"{s}_score": v for s, v in scores.items()}
    values = {f"feature: {c}": (v.item() if isinstance(v, np.generic) else v if isinstance(v, (int, float, str)) or v is None
                                else str(v)) for c, v in features.items()}
    prediction = prediction.item() if isinstance(prediction, np.generic) else prediction
    return {"row": label, "flagged_by": ", ".join(flagged_by), "max_score_over_threshold": ratio, **ratio_scores,
            "prediction": prediction if isinstance(prediction, (int, float, str)) else str(prediction), **values}


def _histograms(scores: dict[str, np.ndarray], display: dict[str, np.ndarray], thresholds: dict[str, float],
                percentile: float, current_label: str = "current") -> Artifact:
    names = list(scores)
    fig = Figure(figsize=(4.5 * len(names), 4), layout="constrained")
    for ax, name in zip(fig.subplots(1, len(names), squeeze=False)[0], names, strict=True):
        sides = {"reference (held out)": display.get(name, np.array([])), current_label: scores[name]}
        values = np.concatenate(list(sides.values()))
        positive = values[values > 0]
        log = len(positive) > 0 and positive.max() > 10 * positive.min()
        if log:  # heavy right tails: log-spaced bins, zero scores in the first bin
            bins = np.geomspace(positive.min(), positive.max(), 41)
            sides = {k: np.clip(v, positive.min(), None) for k, v in sides.items()}
            ax.set_xscale("log")
        else:
            bins = np.histogram_bin_edges(values, bins=40)
        for label, v in sides.items():
            if len(v):
                ax.hist(v, bins=bins, weights=np.full(len(v), 1 / len(v)), histtype="step", linewidth=1.5,
                        label=f"{label} (n={len(v)})")
        ax.axvline(thresholds[name], color="black", linestyle="--", label=f"threshold (p{percentile:g})")
        ax.set_xlabel(f"{name} score")
        ax.set_ylabel("share of rows")
        ax.set_title(name)
        ax.legend(fontsize="small")
    return Artifact.figure("score_histograms", fig, "OOD scores: held-out reference rows vs current rows, with the flag thresholds")
