"""A map of what the network sees: t-SNE of its penultimate-layer embeddings, current rows placed on the reference map.

Each row is represented by the network's embedding e(x) (``TorchClassifier.embed``: the input of its last linear
layer, the space in which the classes are linearly separated). openTSNE fits a 2-D map on a seeded sample of
reference rows and places the current rows into it without moving the reference map (``projections.tsne_embed``,
the same settings and speed rules as the ``projections`` audit). The map is coloured by dataset, class (the label
where there is one), the network's prediction, error (misclassified, where labelled) and uncertainty: 1 - the
probability of the predicted class, or, with ``uncertainty: mc_dropout``, the MC-dropout standard deviation of the
predicted class's probability (``mc_dropout.score_images``; costs ``mc_passes`` extra forward passes).

How far to trust the map: ``trustworthiness`` (scikit-learn, Venna and Kaski) with ``k`` neighbours between the
embeddings and the map, for the reference rows and for the placed current rows: 1 when every row's map neighbours
are among its nearest in the embedding, about 0.5 for a random map. ``current.neighbour_agreement``: share of
current rows whose prediction is the most frequent prediction among their ``k`` nearest mapped reference rows on
the map (rows that land among another class's rows are where the network's answers are least settled).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field

from audits.core import Artifact, Audit, AuditConfig, AuditContext, AuditResult, Requirements, Threshold
from audits.methods.dropout import dropout_layers, score_images
from audits.methods.network import network_of
from audits.methods.sampling import reference_sample
from audits.methods.tsne import MIN_ROWS, trustworthiness, tsne_embed, tsne_settings
from audits.rendering.figures import Colouring, projection_figure


class EmbeddingProjectionsConfig(AuditConfig):
    reference_rows: int = Field(2000, ge=MIN_ROWS)  # reference rows mapped (sampled with the seed)
    current_rows: int = Field(2000, ge=1)  # current rows placed on the map (sampled with the seed)
    perplexity: float = Field(30.0, gt=0, le=500)  # lowered to (rows - 1) / 3 for small samples
    early_exaggeration_iter: int | None = Field(None, ge=0, le=5000)  # None: by the map's size (audits/methods/tsne.py)
    n_iter: int | None = Field(None, ge=1, le=10000)
    n_jobs: int | None = Field(None, ge=1, le=64)  # threads (default: OMP_NUM_THREADS, else the cores); results do not depend on it
    k: int = Field(10, ge=1, le=200)  # neighbours for trustworthiness and neighbour agreement
    uncertainty: Literal["confidence", "mc_dropout"] = "confidence"
    mc_passes: int = Field(20, ge=2, le=1000)  # only with uncertainty: mc_dropout


def neighbour_agreement(reference_map: np.ndarray, reference_pred: np.ndarray, current_map: np.ndarray,
                        current_pred: np.ndarray, k: int) -> float:
    """Share of current rows whose prediction is the most frequent one among their k nearest mapped reference rows."""
    from sklearn.neighbors import NearestNeighbors

    k = min(k, len(reference_map))
    _, idx = NearestNeighbors(n_neighbors=k).fit(reference_map).kneighbors(current_map)
    votes = reference_pred[idx]
    majority = np.array([pd.Series(v).value_counts().index[0] for v in votes.tolist()], dtype=object)
    return float(np.mean(majority == np.asarray(current_pred, dtype=object)))


class EmbeddingProjectionsAudit(Audit):
    """openTSNE map of the network's embeddings (fitted on reference rows, current rows placed), with its trustworthiness."""

    name = "embedding_projections"
    question = "behaviour"
    typical_cost_s = 3.0  # for the scheduler (audits.core.audit)
    metric_keys = (
        "current.{error_rate,neighbour_agreement}", "rows_{reference,current}", "trustworthiness_{reference,current}",
    )
    Config = EmbeddingProjectionsConfig
    requires = Requirements(modalities=("image",), network=True, tasks=("classification",), probabilities=True)
    description = "t-SNE of the network's penultimate-layer embeddings: reference map, current rows placed, coloured by class, error and uncertainty."
    # As the projections audit: below 0.8 the map's neighbourhoods are as much the projection's as the data's.
    default_thresholds = (Threshold(metric="trustworthiness_reference", min=0.8, severity="warn"),)

    def skip_reason(self, context: AuditContext) -> str | None:
        reason = super().skip_reason(context)
        if reason is None and len(context.reference) < MIN_ROWS:
            return f"needs at least {MIN_ROWS} reference rows for a map; there are {len(context.reference)}"
        return reason

    def compute(self, context: AuditContext) -> AuditResult:
        cfg: EmbeddingProjectionsConfig = self.config
        model = network_of(context)
        positions = {
            "reference": reference_sample(len(context.reference), cfg.reference_rows, context.random_state("embedding_projections.reference_rows")),
            "current": reference_sample(len(context.current), cfg.current_rows, context.random_state("embedding_projections.current_rows")),
        }
        embedded = {name: model.embed(context.dataset(name).X.iloc[at]) for name, at in positions.items()}
        settings = tsne_settings(len(positions["reference"]), cfg.perplexity, cfg.early_exaggeration_iter, cfg.n_iter,
                                 "exact", "auto", cfg.n_jobs)
        ref_map, cur_map = tsne_embed(embedded["reference"], embedded["current"], settings,
                                      context.random_state("embedding_projections.tsne"))
        maps = {"reference": ref_map, "current": cur_map}

        metrics: dict[str, float] = {"rows_reference": float(len(ref_map)), "rows_current": float(len(cur_map))}
        info: dict[str, str] = {"embedding": f"input of the network's last linear layer ({embedded['reference'].shape[1]} dimensions)",
                                "tsne": settings.describe()}
        for side in ("reference", "current"):
            metrics[f"trustworthiness_{side}"], k_used = trustworthiness(embedded[side], maps[side], cfg.k)
            info[f"trustworthiness_{side}_k"] = str(k_used)
        predictions = {side: context.dataset(side).predictions.labels[at] for side, at in positions.items()}
        metrics["current.neighbour_agreement"] = neighbour_agreement(ref_map, predictions["reference"], cur_map,
                                                                     predictions["current"], cfg.k)
        uncertainty, title = self._uncertainty(context, model, positions, info)
        table, colourings = _table(context, positions, maps, uncertainty, title)
        if context.current.labelled:
            metrics["current.error_rate"] = float(np.nanmean(table.loc[table["dataset"] == "current", "error"]))
        fig = projection_figure(table, "tsne", colourings)
        fig.suptitle(f"t-SNE of the network's penultimate-layer embeddings: {len(ref_map)} reference rows (map fitted on them), "
                     f"{len(cur_map)} current rows placed")
        return AuditResult(
            audit=self.name,
            metrics=metrics,
            artifacts=(
                Artifact.figure("embedding_tsne", fig, "t-SNE of the network's embeddings by dataset, class, prediction, error and uncertainty"),
                Artifact.table("coordinates", table, "Map coordinates and colouring values of every mapped and placed row"),
            ),
            info=info,
        )

    def _uncertainty(self, context: AuditContext, model, positions: dict[str, np.ndarray], info: dict[str, str]
                     ) -> tuple[dict[str, np.ndarray], str]:
        cfg: EmbeddingProjectionsConfig = self.config
        module = model.network()
        if cfg.uncertainty == "mc_dropout" and dropout_layers(module):
            seed = context.random_state("embedding_projections.mc_dropout")
            info["uncertainty"] = f"MC-dropout std of the predicted class's probability over {cfg.mc_passes} passes"
            return ({side: score_images(module, context.images(context.dataset(side).X.iloc[at]), cfg.mc_passes, seed).std
                     for side, at in positions.items()}, "uncertainty (MC-dropout std of the predicted class)")
        if cfg.uncertainty == "mc_dropout":
            info["uncertainty"] = "the network has no dropout module: 1 - probability of the predicted class instead of MC dropout"
        else:
            info["uncertainty"] = "1 - probability of the predicted class"
        return ({side: 1 - context.dataset(side).predictions.proba[at].max(axis=1) for side, at in positions.items()},
                "uncertainty (1 - probability of the predicted class)")


def _table(context: AuditContext, positions: dict[str, np.ndarray], maps: dict[str, np.ndarray],
           uncertainty: dict[str, np.ndarray], title: str) -> tuple[pd.DataFrame, list[Colouring]]:
    frames = []
    for side in ("reference", "current"):
        ds, at = context.dataset(side), positions[side]
        predictions = ds.predictions.labels[at]
        frame = pd.DataFrame({"row": [str(i) for i in ds.X.index[at]], "dataset": side,
                              "tsne_x": maps[side][:, 0], "tsne_y": maps[side][:, 1]})
        if ds.y is not None:
            y = ds.y.to_numpy()[at]
            frame["label"] = np.array([str(v) for v in y], dtype=object)
            frame["error"] = (predictions != y).astype(float)
        else:
            frame["label"] = np.full(len(at), None, dtype=object)
            frame["error"] = np.full(len(at), np.nan)
        frame["prediction"] = np.array([str(v) for v in predictions], dtype=object)
        frame["uncertainty"] = uncertainty[side]
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    classes = tuple(str(c) for c in context.model.classes)
    labelled = context.reference.labelled or context.current.labelled
    colourings = [Colouring("dataset", "dataset", True, ("reference", "current"))]
    if labelled:
        colourings.append(Colouring("label", "class (label)", True, classes))
    colourings.append(Colouring("prediction", "prediction", True, classes))
    if labelled:
        colourings.append(Colouring("error", "misclassified", True, ("correct", "misclassified")))
    colourings.append(Colouring("uncertainty", title, False))
    return table, colourings
