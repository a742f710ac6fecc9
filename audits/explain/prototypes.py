"""Prototypes and criticisms (MMD-critic), and how far a prototype-based explanation of the model holds.

Kim, Khanna & Koyejo, "Examples are not enough, learn to criticize! Criticism for interpretability",
NeurIPS 2016. Rows live in a model-independent standardised space (``FeatureSpace``: numeric columns
median-imputed and z-scored, categoricals one-hot), fitted on the reference data.

- Groups: the model's predicted class on the reference rows (classifiers), or quantile bins of its
  prediction (regressors). Grouping by the model's own output, for both tasks, makes the prototypes
  a summary of what the model does, and works on unlabelled reference data.
- Prototypes: per group, chosen greedily to minimise the (biased) MMD^2 between the group and its
  prototypes under an RBF kernel k(x, y) = exp(-gamma ||x - y||^2); gamma defaults to the median
  heuristic, 1 / median squared pairwise distance of the reference sample.
- Criticisms: non-prototype rows where the witness function |mean_k(x, group) - mean_k(x, prototypes)|
  is large, chosen greedily with the paper's log-determinant diversity regulariser (a second copy of
  an already chosen row adds log(0): it is never chosen twice). A positive witness marks a row the
  prototypes under-represent, a negative one a row they over-represent (with few prototypes, each a
  point mass of 1/m, rows near a prototype); the criticism table says which. The witness measures
  mass: an isolated row carries 1/n of its group's mass, so it is flagged only where the prototypes
  represent the bulk of the group better than that. The median heuristic sets the kernel width from
  between-group distances when groups are well separated; a larger gamma resolves finer structure.
- Explaining a current row x: attention a_i = softmax_i(-||x - p_i||^2 / tau) over all prototypes
  (tau defaults to the median squared distance from current rows to their nearest prototype), and
  a surrogate output sum_i a_i * model(p_i), where model(p_i) is the model's probability vector
  (classifiers) or prediction (regressors) at the prototype. Its fidelity to the model says how far
  the prototypes can be trusted as an explanation; its accuracy against labels is reported when the
  current data are labelled (the key is absent otherwise: labels are a property of the plan's data).

Kernels are O(n^2): at most ``max_reference_rows`` reference rows are used, sampled with the seed.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pydantic import Field

from audits.core import Artifact, Audit, AuditConfig, AuditContext, AuditResult, Requirements, Threshold
from audits.core.feature_space import FeatureSpace
from audits.core.strata import stratified_positions
from audits.methods.mmd import MMDCritic, mmd_critic, reference_groups, squared_distances
from audits.methods.sampling import informative_rows, reference_sample


class PrototypesConfig(AuditConfig):
    prototypes_per_group: int = Field(3, ge=1, le=50)
    criticisms: int = Field(5, ge=0, le=200)  # overall, not per group
    bins: int = Field(4, ge=1, le=50)  # regressors: quantile bins of the model's reference predictions
    max_reference_rows: int = Field(2000, ge=2, le=5000)  # kernel matrices are n^2 floats (5000 rows: 200 MB)
    gamma: float | None = Field(None, gt=0)  # RBF width; None: 1 / median squared pairwise distance
    temperature: float | None = Field(None, gt=0)  # attention; None: median squared distance to nearest prototype
    regularizer: Literal["logdet", "none"] = "logdet"  # criticisms: diversity term, or plainly the top witness values
    rows: int = Field(10, ge=1)  # current rows shown in the attention table (informative rows)


# ---------------------------------------------------------------------------------------------
# MMD-critic on a standardised matrix Z (rows x features)


# ---------------------------------------------------------------------------------------------
# Explaining rows by prototypes


def default_temperature(squared: np.ndarray) -> float:
    """Median squared distance of each row to its nearest prototype (positive ones if that is 0; else 1)."""
    nearest = squared.min(axis=1)
    tau = float(np.median(nearest))
    if tau <= 0 and np.any(nearest > 0):
        tau = float(np.median(nearest[nearest > 0]))
    return tau if tau > 0 else 1.0


def attention(squared: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax over prototypes of -squared distance / temperature; each row sums to 1."""
    from scipy.special import softmax

    return softmax(-squared / temperature, axis=1)


# ---------------------------------------------------------------------------------------------
# The audit


class PrototypesAudit(Audit):
    """MMD-critic prototypes and criticisms per group, and the fidelity of a prototype-attention surrogate."""

    name = "prototypes"
    question = "behaviour"
    metric_keys = (
        "prototypes", "criticisms", "mmd2", "fidelity", "accuracy", "mean_max_attention",
    )
    Config = PrototypesConfig
    requires = Requirements(probabilities=True)
    description = "MMD-critic prototypes and criticisms of the reference data; fidelity of explaining rows by prototypes."
    stratified = True  # prototypes of every predicted class of a stratified sample; current-row figures weighted
    # A prototype surrogate below 0.7 agreement (classifiers) or R^2 (regressors) disagrees with the
    # model on more than 3 rows in 10 (or misses 30% of its variance): its explanations are then more
    # the prototypes' than the model's. A warning, not a failure: the model itself may be fine.
    default_thresholds = (Threshold(metric="fidelity", min=0.7, severity="warn"),)

    def compute(self, context: AuditContext) -> AuditResult:
        cfg: PrototypesConfig = self.config
        classification = context.task == "classification"
        reference, current = context.reference, context.current
        if reference.strata is None:
            space = FeatureSpace.fit(reference.X, context.categorical)
            positions = reference_sample(len(reference), cfg.max_reference_rows, context.random_state("prototypes.reference_rows"))
        else:  # a stratified sample: every group has rows; the scaling is fitted on rows drawn in proportion to the weights
            space = FeatureSpace.fit(reference.X.sample(n=len(reference), replace=True, weights=reference.strata.weights,
                                                        random_state=context.random_state("prototypes.space")), context.categorical)
            positions, drawn = stratified_positions(reference.strata, cfg.max_reference_rows, context.rng("prototypes.reference_rows"))
        # each current row's share of the population (a stratified sample's rows stand for different numbers of rows)
        row_weight = None if current.strata is None else current.strata.weights
        Z = space.transform(reference.X.iloc[positions])
        groups, labels, grouped_by = reference_groups(context, positions, cfg.bins)
        critic = mmd_critic(Z, groups, cfg.prototypes_per_group, cfg.criticisms, cfg.gamma, cfg.regularizer, labels)

        proto_rows = positions[critic.prototypes]  # positions into the full reference
        if classification:
            answers = reference.predictions.proba[proto_rows]
        else:
            answers = reference.predictions.labels[proto_rows].astype(float)[:, None]
        squared = squared_distances(space.transform(current.X), Z[critic.prototypes])
        tau = cfg.temperature if cfg.temperature is not None else default_temperature(squared)
        weights = attention(squared, tau)
        surrogate = weights @ answers

        model_out = current.predictions.labels
        metrics: dict[str, float] = {}
        if classification:
            from sklearn.metrics import accuracy_score

            classes = np.asarray(context.model.classes)
            surrogate_out: np.ndarray = classes[surrogate.argmax(axis=1)]
            metrics["fidelity"] = float(accuracy_score(model_out, surrogate_out, sample_weight=row_weight))
            if current.labelled:
                metrics["accuracy"] = float(accuracy_score(current.y.to_numpy(), surrogate_out, sample_weight=row_weight))
            shares = pd.Series(row_weight if row_weight is not None else np.ones(len(model_out))).groupby(model_out).sum()
            baseline = float(shares.max() / shares.sum())
            baseline_text = f"{baseline:.4g} (share of the model's most frequent predicted class)"
        else:
            from sklearn.metrics import r2_score

            surrogate_out = surrogate[:, 0]
            metrics["fidelity"] = float(r2_score(model_out.astype(float), surrogate_out, sample_weight=row_weight))
            if current.labelled:
                metrics["accuracy"] = float(r2_score(current.y.to_numpy(dtype=float), surrogate_out, sample_weight=row_weight))
            baseline_text = "0 (R^2 of a constant surrogate at the mean prediction)"
        metrics.update(
            prototypes=float(len(critic.prototypes)),
            criticisms=float(len(critic.criticisms)),
            mmd2=critic.mmd2,
            mean_max_attention=float(np.average(weights.max(axis=1), weights=row_weight)),
        )

        proto_ids = [str(i) for i in reference.X.index[proto_rows]]
        artifacts = (
            Artifact.table("prototypes", _prototype_gallery(context, critic, positions, groups), "Prototypes per group (MMD-critic), in greedy order"),
            Artifact.table("criticisms", _criticism_gallery(context, critic, positions, groups), "Criticisms: the reference rows the prototypes represent worst"),
            Artifact.table("attention", _attention_table(context, cfg.rows, weights, surrogate_out, surrogate, proto_ids),
                           "Informative current rows explained by prototypes: attention on the top 3"),
            _pca_figure(Z, groups, labels, critic, context.random_state("prototypes.pca"), classification),
        )
        return AuditResult(
            audit=self.name,
            metrics=metrics,
            artifacts=artifacts,
            info={
                "groups": f"{grouped_by}: {', '.join(labels)}",
                "gamma": repr(critic.gamma),
                "gamma_source": "configured" if cfg.gamma is not None else "median heuristic (1 / median squared pairwise distance)",
                "temperature": repr(float(tau)),
                "temperature_source": "configured" if cfg.temperature is not None else "median squared distance from current rows to their nearest prototype",
                "reference_rows_used": f"{len(positions)} of {len(reference)}" + (
                    "" if reference.strata is None else f", {reference.strata.take(positions, drawn).describe()}; the current "
                                                        "rows' figures are weighted by the population rows each stands for"),
                "criticism_selection": "|witness| + log-det diversity gain (greedy)" if cfg.regularizer == "logdet" else "top |witness|",
                "fidelity": "share of current rows where the surrogate's most probable class is the model's label" if classification
                else "R^2 of the surrogate against the model's predictions",
                "fidelity_baseline": baseline_text,
                "feature_space": "numeric median-imputed and z-scored, categoricals one-hot (fitted on reference)",
            },
        )


def _with_features(meta: pd.DataFrame, X: pd.DataFrame) -> pd.DataFrame:
    """Meta columns, then the row's original feature values (a feature named like a meta column gets a suffix)."""
    features = X.reset_index(drop=True).copy()
    features.columns = [f"{c} (feature)" if str(c) in meta.columns else str(c) for c in features.columns]
    for column in features.columns:  # JSON-ready cells: categories and objects as strings, missing as missing
        if not pd.api.types.is_numeric_dtype(features[column]) or pd.api.types.is_bool_dtype(features[column]):
            features[column] = features[column].astype(object).where(features[column].notna(), None).map(lambda v: v if v is None else str(v))
    return pd.concat([meta.reset_index(drop=True), features], axis=1)


def _model_output_columns(context: AuditContext, rows: np.ndarray) -> dict[str, Any]:
    predictions = context.reference.predictions
    if context.task == "regression":
        return {"model_prediction": predictions.labels[rows].astype(float)}
    out: dict[str, Any] = {"model_label": [str(v) for v in predictions.labels[rows]]}
    for k, cls in enumerate(context.model.classes):
        out[f"proba[{cls}]"] = predictions.proba[rows, k]
    return out


def _prototype_gallery(context: AuditContext, critic: MMDCritic, positions: np.ndarray, groups: np.ndarray) -> pd.DataFrame:
    rows = positions[critic.prototypes]
    meta = pd.DataFrame({
        "group": [str(g) for g in groups[critic.prototypes]],
        "row": [str(i) for i in context.reference.X.index[rows]],
        "order": critic.prototype_order,
        "group_mmd2_after": critic.prototype_mmd2,
        **_model_output_columns(context, rows),
    })
    return _with_features(meta, context.reference.X.iloc[rows])


def _criticism_gallery(context: AuditContext, critic: MMDCritic, positions: np.ndarray, groups: np.ndarray) -> pd.DataFrame:
    rows = positions[critic.criticisms]
    meta = pd.DataFrame({
        "order": np.arange(1, len(rows) + 1),
        "row": [str(i) for i in context.reference.X.index[rows]],
        "group": [str(g) for g in groups[critic.criticisms]],
        "witness": critic.witness[critic.criticisms],
        # > 0: the group has more mass here than its prototypes (under-represented); < 0: over-represented
        "represented": np.where(critic.witness[critic.criticisms] > 0, "under", "over"),
        "selection_score": critic.criticism_scores,
        **_model_output_columns(context, rows),
    })
    return _with_features(meta, context.reference.X.iloc[rows])


def _attention_table(context: AuditContext, n: int, weights: np.ndarray, surrogate_out: np.ndarray, surrogate: np.ndarray,
                     proto_ids: list[str]) -> pd.DataFrame:
    chosen = informative_rows(context, n)
    at = chosen["position"].to_numpy(dtype=int)
    model_out = context.current.predictions.labels[at]
    table: dict[str, Any] = {"row": [str(r) for r in chosen["row"]], "reason": chosen["reason"].tolist()}
    if context.task == "classification":
        table["model_output"] = [str(v) for v in model_out]
        table["model_confidence"] = context.current.predictions.proba[at].max(axis=1)
        table["surrogate_output"] = [str(v) for v in surrogate_out[at]]
        table["surrogate_confidence"] = surrogate[at].max(axis=1)
        table["agrees"] = [bool(a == b) for a, b in zip(model_out, surrogate_out[at], strict=True)]
    else:
        table["model_output"] = model_out.astype(float)
        table["surrogate_output"] = surrogate_out[at].astype(float)
        table["abs_difference"] = np.abs(table["model_output"] - table["surrogate_output"])
    top = np.argsort(-weights[at], axis=1, kind="stable")[:, : min(3, weights.shape[1])]
    for k in range(top.shape[1]):
        table[f"prototype_{k + 1}"] = [proto_ids[j] for j in top[:, k]]
        table[f"attention_{k + 1}"] = weights[at, top[:, k]]
    return pd.DataFrame(table)


def _pca_figure(Z: np.ndarray, groups: np.ndarray, labels: list[str], critic: MMDCritic, random_state: int,
                classification: bool) -> Artifact:
    from matplotlib import colormaps
    from sklearn.decomposition import PCA

    components = min(2, Z.shape[1], len(Z))
    coords = PCA(n_components=components, random_state=random_state).fit_transform(Z)
    if components < 2:
        coords = np.column_stack([coords, np.zeros(len(coords))])
    cmap = colormaps["tab10" if classification else "viridis"]
    colours = {g: cmap(k % 10) if classification else cmap(k / max(len(labels) - 1, 1)) for k, g in enumerate(labels)}
    fig = Figure(figsize=(7.5, 6), layout="constrained")
    ax = fig.add_subplot()
    for g in labels:
        mask = groups == g
        ax.scatter(coords[mask, 0], coords[mask, 1], s=10, alpha=0.35, color=colours[g], label=str(g))
    P, C = critic.prototypes, critic.criticisms
    ax.scatter(coords[P, 0], coords[P, 1], s=220, marker="*", color=[colours[g] for g in groups[P]], edgecolors="black",
               linewidths=1.2, label="prototype", zorder=3)
    if len(C):
        ax.scatter(coords[C, 0], coords[C, 1], s=90, marker="X", color="crimson", edgecolors="black", linewidths=0.8,
                   label="criticism", zorder=4)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2" if components == 2 else "(one component)")
    ax.set_title("Reference sample (standardised space, PCA): prototypes and criticisms")
    ax.legend(fontsize=8, loc="best", markerscale=0.8)
    return Artifact.figure("prototypes_pca", fig, "PCA of the reference sample: prototypes (stars) and criticisms (crosses) by group")
