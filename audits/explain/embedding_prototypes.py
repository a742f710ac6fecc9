"""Prototypes in a network's own embedding space, and how far "this row is like these prototypes" explains it.

Rows are represented by the network's penultimate-layer embedding e(x) (``TorchClassifier.embed``: the input of
its last linear layer), so "alike" means alike to the network, not pixel by pixel.

- Prototypes: MMD-critic (``audits.explain.prototypes.mmd_critic``, Kim et al. 2016) on the embeddings of a
  seeded sample of reference rows, ``prototypes_per_group`` per class the network predicts there (RBF kernel,
  median-heuristic width); criticisms: the reference rows those prototypes represent worst.
- Attention of a row x on prototype p_i: a_i(x) = softmax_i(<e(x), e(p_i)> / temperature), the inner product of
  embeddings. The network's logits are linear in e(x), so rows whose embeddings align with a prototype's tend to
  get its class. ``temperature`` defaults to 1 (the plain softmax of inner products). Inner products of ReLU
  embeddings are large (on the digits network they differ by hundreds between prototypes), so the attention is
  then nearly one-hot: the surrogate answers with the most aligned prototype's probabilities. A larger
  temperature spreads it; ``temperature: auto`` sets it to the median over current rows of the standard
  deviation of their scores across prototypes, which spreads it a lot (and moves the surrogate's probabilities
  towards the average prototype's, raising the total variation).
- Surrogate: sum_i a_i(x) * model(p_i), the attention-weighted average of the prototypes' predicted probability
  vectors. ``fidelity`` = share of current rows where the surrogate's most probable class is the network's;
  ``total_variation`` = mean of 0.5 * ||surrogate - model(x)||_1 (0: the same probabilities, 1: disjoint);
  ``accuracy`` of the surrogate against labels when the current rows are labelled.

Kernels are O(n^2): at most ``max_reference_rows`` reference rows are used.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pydantic import Field

from audits.core import Artifact, Audit, AuditConfig, AuditContext, AuditResult, Requirements, Threshold
from audits.methods.mmd import mmd_critic, reference_groups
from audits.methods.network import network_of
from audits.methods.sampling import informative_rows, reference_sample
from audits.rendering.figures import show_image_scaled


class EmbeddingPrototypesConfig(AuditConfig):
    prototypes_per_group: int = Field(3, ge=1, le=50)
    criticisms: int = Field(5, ge=0, le=200)
    max_reference_rows: int = Field(2000, ge=2, le=5000)
    gamma: float | None = Field(None, gt=0)  # RBF width for MMD-critic; None: median heuristic
    temperature: Annotated[float, Field(gt=0)] | Literal["auto"] = 1.0  # attention; auto: median std of current rows' scores over prototypes
    rows: int = Field(6, ge=0, le=20)  # current rows shown with their top-attended prototypes
    top: int = Field(3, ge=1, le=10)  # prototypes shown per current row


def attention_scores(rows: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    """Inner products <e(x), e(p_i)>, ``(rows, prototypes)``."""
    return np.asarray(rows, dtype=float) @ np.asarray(prototypes, dtype=float).T


def default_temperature(scores: np.ndarray) -> float:
    """Median over rows of the standard deviation of a row's scores across prototypes (1 if that is 0)."""
    spread = np.std(scores, axis=1) if scores.shape[1] > 1 else np.zeros(len(scores))
    tau = float(np.median(spread)) if len(spread) else 0.0
    return tau if tau > 0 else 1.0


def attention(scores: np.ndarray, temperature: float) -> np.ndarray:
    from scipy.special import softmax

    return softmax(np.asarray(scores, dtype=float) / temperature, axis=1)


def surrogate_fidelity(surrogate: np.ndarray, model_proba: np.ndarray) -> tuple[float, float]:
    """(share of rows where the argmaxes agree, mean total-variation distance between the probability vectors)."""
    agree = float(np.mean(surrogate.argmax(axis=1) == model_proba.argmax(axis=1)))
    return agree, float(np.mean(0.5 * np.abs(surrogate - model_proba).sum(axis=1)))


class EmbeddingPrototypesAudit(Audit):
    """MMD-critic prototypes of the network's embeddings and the fidelity of an inner-product attention surrogate."""

    name = "embedding_prototypes"
    question = "behaviour"
    metric_keys = (
        "prototypes", "criticisms", "mmd2", "fidelity", "fidelity_baseline", "accuracy", "mean_max_attention",
        "temperature", "total_variation",
    )
    Config = EmbeddingPrototypesConfig
    requires = Requirements(modalities=("image",), network=True, tasks=("classification",), probabilities=True)
    description = "Prototypes chosen in the network's embedding space; fidelity of explaining current rows by attention on them."
    # As the tabular prototypes audit: below 0.7 agreement the prototypes explain more of their own than of the network.
    default_thresholds = (Threshold(metric="fidelity", min=0.7, severity="warn"),)

    def compute(self, context: AuditContext) -> AuditResult:
        cfg: EmbeddingPrototypesConfig = self.config
        model = network_of(context)
        reference, current = context.reference, context.current
        positions = reference_sample(len(reference), cfg.max_reference_rows, context.random_state("embedding_prototypes.reference_rows"))
        E = model.embed(reference.X.iloc[positions])
        groups, labels, _ = reference_groups(context, positions, bins=1)
        critic = mmd_critic(E, groups, cfg.prototypes_per_group, cfg.criticisms, cfg.gamma, "logdet", labels)
        proto_rows = positions[critic.prototypes]
        answers = reference.predictions.proba[proto_rows]

        scores = attention_scores(model.embed(current.X), E[critic.prototypes])
        tau = default_temperature(scores) if cfg.temperature == "auto" else float(cfg.temperature)
        weights = attention(scores, tau)
        surrogate = weights @ answers
        fidelity, tv = surrogate_fidelity(surrogate, current.predictions.proba)
        classes = np.asarray(context.model.classes)
        metrics: dict[str, float] = {
            "fidelity": fidelity,
            "total_variation": tv,
            "prototypes": float(len(proto_rows)),
            "criticisms": float(len(critic.criticisms)),
            "mmd2": critic.mmd2,
            "mean_max_attention": float(weights.max(axis=1).mean()),
            "temperature": float(tau),
            "fidelity_baseline": float(pd.Series(current.predictions.labels).value_counts(normalize=True).iloc[0]) if len(current) else float("nan"),
        }
        if current.labelled:
            metrics["accuracy"] = float(np.mean(classes[surrogate.argmax(axis=1)] == current.y.to_numpy()))

        proto_ids = [str(i) for i in reference.X.index[proto_rows]]
        shown = informative_rows(context, cfg.rows)["position"].to_numpy(dtype=int) if cfg.rows else np.zeros(0, dtype=int)
        images = context.images(reference.X.iloc[proto_rows])
        proto_names = [_proto_title(context, r) for r in proto_rows]
        table = _attention_table(context, weights, surrogate, proto_ids, cfg.top)
        return AuditResult(
            audit=self.name,
            metrics=metrics,
            artifacts=(
                _gallery(images, proto_names, groups[critic.prototypes], labels),
                _explained(context, shown, weights, surrogate, images, proto_names, cfg.top),
                Artifact.table("prototypes", _prototype_table(context, critic, positions, groups), "Prototypes per predicted class (MMD-critic on embeddings)"),
                Artifact.table("criticisms", _criticism_table(context, critic, positions, groups), "Criticisms: reference rows the prototypes represent worst"),
                Artifact.table("attention", table, f"Every current row: surrogate answer and its top {cfg.top} prototypes"),
            ),
            info={
                "embedding": f"input of the network's last linear layer ({E.shape[1]} dimensions)",
                "groups": f"the network's predicted class on the reference: {', '.join(labels)}",
                "gamma": repr(critic.gamma),
                "temperature": repr(float(tau)),
                "temperature_source": "median over current rows of the std of their scores across prototypes" if cfg.temperature == "auto" else "configured (default 1)",
                "attention": "softmax over prototypes of <e(x), e(p)> / temperature",
                "fidelity": "share of current rows where the surrogate's most probable class is the network's",
                "total_variation": "mean of 0.5 * L1 distance between surrogate and network probability vectors",
                "fidelity_baseline": "share of the network's most frequent predicted class among current rows",
                "reference_rows_used": f"{len(positions)} of {len(reference)}",
            },
        )


def _proto_title(context: AuditContext, row: int) -> str:
    ref = context.reference
    text = f"pred {ref.predictions.labels[row]}"
    if ref.y is not None:
        text += f" / label {ref.y.iloc[row]}"
    return text


def _prototype_table(context: AuditContext, critic, positions: np.ndarray, groups: np.ndarray) -> pd.DataFrame:
    rows = positions[critic.prototypes]
    ref = context.reference
    table = pd.DataFrame({
        "group": [str(g) for g in groups[critic.prototypes]],
        "row": [str(i) for i in ref.X.index[rows]],
        "order": critic.prototype_order,
        "group_mmd2_after": critic.prototype_mmd2,
        "prediction": [str(v) for v in ref.predictions.labels[rows]],
        "confidence": ref.predictions.proba[rows].max(axis=1),
    })
    if ref.y is not None:
        table["label"] = [str(v) for v in ref.y.to_numpy()[rows]]
    return table


def _criticism_table(context: AuditContext, critic, positions: np.ndarray, groups: np.ndarray) -> pd.DataFrame:
    rows = positions[critic.criticisms]
    ref = context.reference
    table = pd.DataFrame({
        "order": np.arange(1, len(rows) + 1),
        "row": [str(i) for i in ref.X.index[rows]],
        "group": [str(g) for g in groups[critic.criticisms]],
        "witness": critic.witness[critic.criticisms],
        "represented": np.where(critic.witness[critic.criticisms] > 0, "under", "over"),
        "prediction": [str(v) for v in ref.predictions.labels[rows]],
    })
    if ref.y is not None:
        table["label"] = [str(v) for v in ref.y.to_numpy()[rows]]
    return table


def _attention_table(context: AuditContext, weights: np.ndarray, surrogate: np.ndarray, proto_ids: list[str],
                     top: int) -> pd.DataFrame:
    current = context.current
    classes = np.asarray(context.model.classes)
    table: dict[str, Any] = {
        "row": [str(i) for i in current.X.index],
        "model_output": [str(v) for v in current.predictions.labels],
        "surrogate_output": [str(c) for c in classes[surrogate.argmax(axis=1)]],
        "agrees": surrogate.argmax(axis=1) == current.predictions.proba.argmax(axis=1),
        "total_variation": 0.5 * np.abs(surrogate - current.predictions.proba).sum(axis=1),
    }
    order = np.argsort(-weights, axis=1, kind="stable")[:, :min(top, weights.shape[1])]
    for k in range(order.shape[1]):
        table[f"prototype_{k + 1}"] = [proto_ids[j] for j in order[:, k]]
        table[f"attention_{k + 1}"] = weights[np.arange(len(weights)), order[:, k]]
    return pd.DataFrame(table)


def _gallery(images: np.ndarray, names: list[str], groups: np.ndarray, labels: list[str]) -> Artifact:
    per_group = {g: np.flatnonzero(groups == g) for g in labels}
    columns = max((len(v) for v in per_group.values()), default=1)
    fig = Figure(figsize=(1.5 * columns + 0.8, 1.5 * max(len(labels), 1) + 0.6), layout="constrained")
    axes = fig.subplots(max(len(labels), 1), columns, squeeze=False)
    low, high = float(images.min()), float(images.max())
    for i, g in enumerate(labels):
        for j in range(columns):
            ax = axes[i, j]
            if j < len(per_group[g]):
                k = per_group[g][j]
                show_image_scaled(ax, images[k], low, high)
                ax.set_title(names[k], fontsize=7)
            else:
                ax.set_axis_off()
        axes[i, 0].set_ylabel(f"class {g}", fontsize=8)
    fig.suptitle(_fit_title("Prototypes (MMD-critic on the network's embeddings), one row per predicted class", fig))
    return Artifact.figure("prototypes", fig, "Prototype images per predicted class, with prediction / label")


def _explained(context: AuditContext, shown: np.ndarray, weights: np.ndarray, surrogate: np.ndarray,
               proto_images: np.ndarray, proto_names: list[str], top: int) -> Artifact:
    top = min(top, weights.shape[1])
    fig = Figure(figsize=(1.7 * (top + 1) + 0.5, 1.8 * max(len(shown), 1) + 0.6), layout="constrained")
    axes = fig.subplots(max(len(shown), 1), top + 1, squeeze=False)
    images = context.images(context.current.X.iloc[shown]) if len(shown) else np.zeros((0, *context.input_shape))
    low = float(min(images.min(), proto_images.min())) if len(images) else 0.0
    high = float(max(images.max(), proto_images.max())) if len(images) else 1.0
    classes = np.asarray(context.model.classes)
    current = context.current
    for i, at in enumerate(shown):
        show_image_scaled(axes[i, 0], images[i], low, high)
        title = f"row {current.X.index[at]}\nnet {current.predictions.labels[at]}, surr {classes[surrogate[at].argmax()]}"
        if current.y is not None:
            title += f"\nlabel {current.y.iloc[at]}"
        axes[i, 0].set_title(title, fontsize=7)
        for k, j in enumerate(np.argsort(-weights[at], kind="stable")[:top]):
            show_image_scaled(axes[i, k + 1], proto_images[j], low, high)
            axes[i, k + 1].set_title(f"{proto_names[j]}\nweight {weights[at, j]:.2f}", fontsize=7)
    if not len(shown):
        for ax in axes.ravel():
            ax.set_axis_off()
    fig.suptitle(_fit_title("Current rows (left) and the prototypes they attend to most", fig))
    return Artifact.figure("explained_rows", fig, "Informative current rows with their top-attended prototypes and attention weights")


def _fit_title(text: str, fig) -> str:
    """``text`` wrapped to the figure's width (a narrow gallery would clip a one-line title)."""
    import textwrap

    return textwrap.fill(text, width=max(20, int(fig.get_figwidth() * 9)))
