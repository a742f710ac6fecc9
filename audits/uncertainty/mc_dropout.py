"""Monte Carlo dropout (Gal & Ghahramani, 2016): how much does a network's answer move when its dropout stays on?

The network runs ``passes`` times on every row with its Dropout modules in training mode and every other module
in eval mode (BatchNorm keeps its running statistics: only the dropout masks are random). From the K probability
vectors of a row:

- ``mean_probability`` of the predicted class (the argmax of the mean vector) and its ``std`` over the passes;
- ``predictive_entropy`` H(mean p): total uncertainty, in nats;
- ``mutual_information`` H(mean p) - mean H(p_k): the part due to the passes disagreeing (epistemic), >= 0.

Each score is compared between reference and current rows as the ``ood`` audit does: a current row is flagged
when its score exceeds the reference scores' ``percentile``, so an unshifted batch is flagged at about
1 - percentile / 100, and ``<score>.excess_z`` (``ood_audit.excess_z``) says how surprising the flagged count is.
Nothing is fitted, so every sampled reference row calibrates. The reference should be rows the network did not
train on: a network is more certain on its own training rows, and unshifted current rows then look uncertain.

The dropout masks come from torch's global generator (Dropout takes no generator): the passes run inside
``torch.random.fork_rng`` seeded from the context, so the results are reproducible and torch's global random
state is left as it was. Two threads running MC dropout at once on the same process would interleave draws.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pydantic import Field

from audits.core import Artifact, Audit, AuditConfig, AuditContext, AuditResult, Requirements, Threshold
from audits.methods.dropout import MCScores, dropout_layers, score_images
from audits.methods.network import network_of
from audits.methods.ood import excess_z, excess_z_range
from audits.methods.sampling import reference_sample

SCORES = ("std", "mutual_information", "predictive_entropy")


class MCDropoutConfig(AuditConfig):
    passes: int = Field(30, ge=2, le=1000)  # stochastic forward passes per row
    percentile: float = Field(95.0, gt=0, lt=100)  # of reference scores: the flag threshold
    max_reference_rows: int = Field(2000, ge=20)  # reference rows scored (sampled with the seed)
    max_current_rows: int = Field(5000, ge=1)  # current rows scored (sampled with the seed)
    rows: int = Field(20, ge=1)  # most uncertain current rows in the table


class MCDropoutAudit(Audit):
    """Spread of a network's answers with dropout kept on, reference rows against current rows."""

    name = "mc_dropout"
    question = "certainty"
    typical_cost_s = 3.0  # for the scheduler (audits.core.audit)
    metric_keys = (
        "{reference,current}.{mean_mutual_information,mean_predictive_entropy,mean_probability,mean_std}",
        "current.agreement_with_deterministic",
        "{std,mutual_information,predictive_entropy}.{excess_z,flagged_share,threshold}", "expected_share",
        "max_excess_z", "passes", "reference_rows", "rows",
    )
    Config = MCDropoutConfig
    requires = Requirements(modalities=("image",), network=True, tasks=("classification",))
    description = "MC-dropout uncertainty (std, predictive entropy, mutual information) of current rows against the reference."
    # As the ood audit: z > 3 is a flagged count an unshifted batch reaches with probability 0.13 % or less.
    default_thresholds = (Threshold(metric="max_excess_z", max=3.0, severity="warn"),)

    def skip_reason(self, context: AuditContext) -> str | None:
        reason = super().skip_reason(context)
        if reason:
            return reason
        if not dropout_layers(network_of(context).network()):  # a network: Requirements(network=True) checked it
            return f"{context.model.label} has no dropout module: MC dropout needs dropout to sample from"
        return None

    def compute(self, context: AuditContext) -> AuditResult:
        cfg: MCDropoutConfig = self.config
        model = network_of(context)
        module = model.network()
        positions = {
            "reference": reference_sample(len(context.reference), cfg.max_reference_rows, context.random_state("mc_dropout.reference_rows")),
            "current": reference_sample(len(context.current), cfg.max_current_rows, context.random_state("mc_dropout.current_rows")),
        }
        seed = context.random_state("mc_dropout.passes")
        scored = {name: score_images(module, context.images(context.dataset(name).X.iloc[at]), cfg.passes, seed)
                  for name, at in positions.items()}
        ref, cur = scored["reference"], scored["current"]
        n, m = len(positions["current"]), len(positions["reference"])
        metrics: dict[str, float] = {"expected_share": 1 - cfg.percentile / 100, "rows": float(n), "reference_rows": float(m),
                                     "passes": float(cfg.passes)}
        thresholds, flags = {}, {}
        for score in SCORES:
            thresholds[score] = float(np.percentile(ref.score(score), cfg.percentile))
            flags[score] = cur.score(score) > thresholds[score]
            metrics[f"{score}.threshold"] = thresholds[score]
            metrics[f"{score}.flagged_share"] = float(flags[score].mean())
            metrics[f"{score}.excess_z"] = excess_z(int(flags[score].sum()), n, m, cfg.percentile)
            for side, values in (("reference", ref), ("current", cur)):
                metrics[f"{side}.mean_{score}"] = float(values.score(score).mean())
        for side, values in (("reference", ref), ("current", cur)):
            metrics[f"{side}.mean_probability"] = float(values.mean_probability.mean())
        deterministic = context.current.predictions.proba[positions["current"]].argmax(axis=1)
        metrics["current.agreement_with_deterministic"] = float(np.mean(cur.predicted == deterministic))
        metrics["max_excess_z"] = max(metrics[f"{s}.excess_z"] for s in SCORES)
        span = excess_z_range(n, m, cfg.percentile)
        ranges = {"max_excess_z": span, **{f"{s}.excess_z": span for s in SCORES}}

        table = _uncertain_table(context, positions["current"], cur, flags, cfg.rows)
        return AuditResult(
            ranges=ranges,
            audit=self.name,
            metrics=metrics,
            artifacts=(
                _histograms(ref, cur, thresholds, cfg.percentile),
                Artifact.table("most_uncertain", table, f"The {len(table)} current rows with the largest MC-dropout mutual information"),
            ),
            info={
                "passes": f"{cfg.passes} forward passes, {len(dropout_layers(module))} dropout module(s) on, everything else in eval mode",
                "thresholds": f"the {cfg.percentile:g}th percentile of {m} reference rows' scores",
                "predicted_class": "argmax of the mean probability vector over the passes",
                "mutual_information": "entropy of the mean probabilities minus the mean entropy of each pass (nats)",
                "excess_z": "normal quantile of the chance of flagging at least as many unshifted rows (beta-binomial)",
                "reference_caveat": "a network is more certain on its training rows: a reference of training rows makes current rows look uncertain",
            },
        )


def _uncertain_table(context: AuditContext, positions: np.ndarray, scores: MCScores, flags: dict[str, np.ndarray],
                     n: int) -> pd.DataFrame:
    order = np.argsort(-scores.mutual_information, kind="stable")[:n]
    current = context.current
    classes = np.asarray(context.model.classes)
    at = positions[order]
    table = pd.DataFrame({
        "row": [str(i) for i in current.X.index[at]],
        "mutual_information": scores.mutual_information[order],
        "predictive_entropy": scores.predictive_entropy[order],
        "std": scores.std[order],
        "mean_probability": scores.mean_probability[order],
        "mc_prediction": [str(c) for c in classes[scores.predicted[order]]],
        "prediction": [str(c) for c in current.predictions.labels[at]],
        "flagged_by": [", ".join(s for s in SCORES if flags[s][i]) for i in order],
    })
    if current.y is not None:
        table["label"] = [str(v) for v in current.y.to_numpy()[at]]
    return table


def _histograms(ref: MCScores, cur: MCScores, thresholds: dict[str, float], percentile: float) -> Artifact:
    titles = {"std": "std of the predicted class's probability", "mutual_information": "mutual information (nats)",
              "predictive_entropy": "predictive entropy (nats)"}
    fig = Figure(figsize=(4.5 * len(SCORES), 4), layout="constrained")
    for ax, score in zip(fig.subplots(1, len(SCORES), squeeze=False)[0], SCORES, strict=True):
        sides = {"reference": ref.score(score), "current": cur.score(score)}
        bins = np.histogram_bin_edges(np.concatenate(list(sides.values())), bins=40)
        for label, values in sides.items():
            ax.hist(values, bins=bins, weights=np.full(len(values), 1 / len(values)), histtype="step", linewidth=1.5,
                    label=f"{label} (n={len(values)})")
        ax.axvline(thresholds[score], color="black", linestyle="--", label=f"threshold (p{percentile:g})")
        ax.set_xlabel(titles[score])
        ax.set_ylabel("share of rows")
        ax.set_title(score)
        ax.legend(fontsize="small")
    return Artifact.figure("mc_dropout_histograms", fig, "MC-dropout uncertainty: reference rows vs current rows, with the flag thresholds")
