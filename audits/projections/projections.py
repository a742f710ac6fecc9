"""Maps a reviewer can look at: where do the current rows land on a map of the reference data?

Three 2-D maps, each fitted on a seeded sample of REFERENCE rows and then asked to place the
current rows, so the reference map stays fixed and new data shows where it lands:

- ``pca``: scikit-learn's PCA (2 components) of the standardised feature space (``FeatureSpace``,
  fitted on the reference: numeric columns median-imputed and standardised, categories one-hot);
- ``tsne``: openTSNE's t-SNE of the same space; the current rows are placed into the finished
  reference embedding with ``TSNEEmbedding.transform`` (openTSNE's defaults for placing points:
  perplexity 5, median initialisation from the 25 nearest reference rows, 250 iterations that move
  only the new points). The reference map never moves;
- ``shap_tsne``: the same t-SNE of SHAP values (``audits.methods.shap_values.explain``), on up to
  ``shap_rows`` rows per side: rows that the model treats alike land together, whatever their
  feature values. Multiclass attributions are concatenated over classes (features x classes
  columns): a row's position then reflects its whole explanation, not only the class it was given.
  SHAP values keep the model's output units (not standardised): features that move the model more
  weigh more in the distances, which is the point of the map.

Every map is coloured by dataset, label, prediction, error (misclassified, or |residual|), uncertainty
(the entropy of a classifier's predicted probabilities; regressors have none) and OOD score (mean
distance to the 5 nearest reference rows, ``ood.fit_ood``'s knn scorer, fitted on reference rows
outside the map's sample when there are enough, so reference rows are not scored against themselves).

How far to trust a map: ``trustworthiness`` (scikit-learn; Venna and Kaski) with ``k`` neighbours, on
the reference rows and on the placed current rows: 1 when every row's k nearest neighbours in the map
are among its nearest in the original space, about 0.5 for a random map.

``current_in_new_region``: share of current rows whose nearest mapped reference row in the t-SNE map
is farther away than for 95 % of held-out reference rows (reference rows kept out of the map and
placed into it exactly like the current rows), a map-based novelty share. Held-out and current rows
are placed the same way, so when nothing shifted the share is about 5 % (the held-out rows' own rate,
by construction). The map uses at most 80 % of the reference rows so that at least 20 % (up to 1,000)
stay out for this. What it can and cannot see: it rises when current rows land in sparse parts of the
map. It does NOT rise for rows far from every reference row: openTSNE places a new row through
affinities calibrated to a perplexity, which removes absolute distance, so a far-away cluster is
placed right next to its nearest reference rows (the tests pin this). ``current_ood_share`` answers
that question in feature space: the share of current rows whose OOD score exceeds the OOD scorer's
own threshold (95th percentile of held-out reference scores; about 5 % when nothing shifted). Read the
map together with its OOD panel, never alone.

Speed (``bench/bench_tsne.py``, 10,000 x 30 rows, 2 cores): exact nearest neighbours (scikit-learn)
up to 20,000 rows, Annoy above (Annoy's 50 trees cost more than an exact search at these sizes);
Barnes-Hut gradients below 10,000 rows and FFT interpolation from 10,000 (openTSNE's own rule), with
grid cells of 2 embedding units instead of 1 (the late iterations, when the map is widest, cost a third);
half of openTSNE's default iterations (125 early-exaggeration + 250). openTSNE's defaults take about
22 s there, these settings about 4.5 s, scikit-learn's TSNE about 27 s; the maps' trustworthiness is
within 0.01 of scikit-learn's and their KL divergence within about 3 %.

Determinism: with exact neighbours the coordinates do not depend on ``n_jobs`` (openTSNE writes each
row's gradient separately and sums serially; only its KL report, unused here, is a threaded sum), so
two threads are safe; Annoy's multi-threaded build is not reproducible, so Annoy runs on one thread.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from audits.core import Artifact, Audit, AuditConfig, AuditContext, AuditResult, Threshold
from audits.core.feature_space import FeatureSpace
from audits.methods.ood import fit_ood
from audits.methods.sampling import reference_sample
from audits.methods.scores import entropy
from audits.methods.shap_values import choose_explainer, explain, unexplainable
from audits.methods.tsne import (
    MIN_ROWS,
    TsneSettings,
    pca_embed,
    trustworthiness,
    tsne_embed,
    tsne_settings,
)
from audits.rendering.figures import TITLES, Colouring, _labels, projection_figure
from audits.rendering.html import html_view

OOD_MIN_REST = 20  # reference rows outside the map sample needed to fit the OOD scorer on them alone
NEW_REGION_PERCENTILE = 95.0
HELD_OUT_SHARE = 0.2  # of the reference rows at least, kept out of the map to calibrate the novelty share
HELD_OUT_MAX = 1000


class ProjectionsConfig(AuditConfig):
    reference_rows: int = Field(2000, ge=MIN_ROWS)  # reference rows mapped (sampled with the seed)
    current_rows: int = Field(2000, ge=1)  # current rows placed on the maps (sampled with the seed)
    perplexity: float = Field(30.0, gt=0, le=500)  # lowered to (rows - 1) / 3 for small samples
    # None: by the map's size (audits/methods/tsne.py: 75 + 125 up to 10,000 rows, else 125 + 250; openTSNE's are 250 + 500)
    early_exaggeration_iter: int | None = Field(None, ge=0, le=5000)
    n_iter: int | None = Field(None, ge=1, le=10000)
    neighbors: Literal["auto", "exact", "annoy"] = "auto"  # auto: exact up to 20,000 rows, Annoy above
    gradient: Literal["auto", "bh", "fft"] = "auto"  # auto: Barnes-Hut below 10,000 rows, FFT from 10,000
    n_jobs: int | None = Field(None, ge=1, le=64)  # threads (default: OMP_NUM_THREADS, else the cores); results do not depend on it
    include_shap: bool = True
    shap_rows: int = Field(1000, ge=MIN_ROWS)  # rows per side explained for the SHAP map (tree and linear explainers)
    shap_agnostic_rows: int = Field(200, ge=MIN_ROWS)  # rows per side for the costlier model-agnostic explainers
    shap_background_rows: int = Field(50, ge=1)
    k: int = Field(10, ge=1, le=200)  # neighbours for trustworthiness
    html: bool = True  # a self-contained interactive view (inline canvas, no external scripts)


# ---------------------------------------------------------------------------------------------
# t-SNE with openTSNE: fit on reference rows, place new rows


def new_region(reference: np.ndarray, held_out: np.ndarray, current: np.ndarray,
               percentile: float = NEW_REGION_PERCENTILE) -> tuple[float, np.ndarray, np.ndarray, float]:
    """(share of current rows beyond the threshold, mapped reference rows' distances to their nearest
    other mapped reference row, current rows' distances to their nearest mapped reference row, threshold:
    the percentile of held-out reference rows' distances to their nearest mapped reference row)."""
    from sklearn.neighbors import NearestNeighbors

    index = NearestNeighbors(n_neighbors=2).fit(reference)
    ref_distance = index.kneighbors(reference, n_neighbors=2)[0][:, 1]  # the nearest other reference row
    held_distance = index.kneighbors(held_out, n_neighbors=1)[0][:, 0]
    cur_distance = index.kneighbors(current, n_neighbors=1)[0][:, 0]
    threshold = float(np.percentile(held_distance, percentile))
    return float(np.mean(cur_distance > threshold)), ref_distance, cur_distance, threshold


def split_reference(n: int, map_rows: int, random_state: int) -> tuple[np.ndarray, np.ndarray]:
    """(sorted positions of the mapped reference rows, sorted positions of the held-out ones): the map
    takes at most 80 % of the rows; the held-out rows are the rest, at most 1,000."""
    rng = np.random.default_rng(random_state)
    order = rng.permutation(n)
    mapped = min(map_rows, n - max(1, round(HELD_OUT_SHARE * n)))
    held = min(HELD_OUT_MAX, n - mapped)
    return np.sort(order[:mapped]), np.sort(order[mapped:mapped + held])


def flat_shap(values: np.ndarray) -> np.ndarray:
    """(rows, features, outputs) -> (rows, features x outputs): outputs concatenated, feature-major per output."""
    values = np.asarray(values, dtype=float)
    return values.transpose(0, 2, 1).reshape(len(values), -1)


# ---------------------------------------------------------------------------------------------
# What each map is coloured by


def row_variables(context: AuditContext, positions: dict[str, np.ndarray], ood_scores: dict[str, np.ndarray]) -> tuple[pd.DataFrame, list[Colouring], dict[str, str]]:
    """One row per sampled row (reference first): identity and colouring variables; the colourings that apply."""
    classification = context.task == "classification"
    frames, notes = [], {}
    for name in ("reference", "current"):
        ds, at = context.dataset(name), positions[name]
        n = len(at)
        predictions = ds.predictions.labels[at]
        frame = pd.DataFrame({"row": [str(i) for i in ds.X.index[at]], "dataset": name})
        if ds.y is not None:
            y = ds.y.to_numpy()[at]
            if classification:
                frame["label"] = _labels(y)
                frame["error"] = (predictions != y).astype(float)  # 1 = misclassified
            else:
                frame["label"] = y.astype(float)
                frame["error"] = np.abs(predictions.astype(float) - y.astype(float))
        else:
            frame["label"] = np.full(n, None, dtype=object) if classification else np.full(n, np.nan)
            frame["error"] = np.full(n, np.nan)
        frame["prediction"] = _labels(predictions) if classification else predictions.astype(float)
        proba = ds.predictions.proba
        frame["uncertainty"] = entropy(proba[at]) if classification and proba is not None else np.full(n, np.nan)
        frame["ood_score"] = ood_scores[name]
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)

    colourings = [Colouring("dataset", "dataset", True, ("reference", "current"))]
    labelled = context.reference.labelled or context.current.labelled
    classes = tuple(str(c) for c in context.model.classes) if classification and context.model.classes else ()
    if labelled:
        colourings.append(Colouring("label", "label", classification, classes))
    colourings.append(Colouring("prediction", "prediction", classification, classes))
    if labelled:
        colourings.append(Colouring("error", "misclassified" if classification else "|residual|", classification,
                                    ("correct", "misclassified") if classification else ()))
    else:
        notes["error"] = "no labels on either dataset: no label or error panels"
    if classification and context.model.predict_proba is not None:
        colourings.append(Colouring("uncertainty", "uncertainty (entropy of predicted probabilities, nats)", False))
    else:
        notes["uncertainty"] = ("a regressor has no predicted probabilities: no uncertainty panel" if not classification
                                else "the classifier has no predict_proba: no uncertainty panel")
    colourings.append(Colouring("ood_score", "OOD score (mean distance to 5 nearest reference rows)", False))
    return table, colourings, notes


# ---------------------------------------------------------------------------------------------
# Figures and the interactive view


# ---------------------------------------------------------------------------------------------
# The audit


def _ood_scores(context: AuditContext, positions: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float, str]:
    """(knn OOD score of each mapped and placed row, the scorer's flag threshold, where it was fitted)."""
    reference = context.reference.X
    rest = np.setdiff1d(np.arange(len(reference)), positions["reference"])
    if len(rest) >= OOD_MIN_REST:
        fitted_on, note = reference.iloc[rest], f"fitted on {len(rest)} reference rows outside the map sample"
    else:
        fitted_on = reference
        note = "fitted on all reference rows, the mapped ones included: reference rows' scores are in-sample (optimistic)"
    model = fit_ood(fitted_on, context.categorical, context.random_state("projections.ood"), scorers=("knn",))
    scores = {name: model.scores(context.dataset(name).X.iloc[positions[name]])["knn"] for name in ("reference", "current")}
    return scores, model.thresholds["knn"], note


def _shap_map(context: AuditContext, cfg: ProjectionsConfig, positions: dict[str, np.ndarray]) -> tuple[dict[str, Any] | None, str]:
    """SHAP values of a sub-sample of each side's mapped rows, embedded like the features."""
    reason = unexplainable(context)
    if reason:
        return None, reason
    kind = choose_explainer(context.model.estimator, "auto", len(context.features))
    budget = cfg.shap_rows if kind in ("tree", "linear") else cfg.shap_agnostic_rows
    chosen, frames = {}, []
    for name in ("reference", "current"):
        n = len(positions[name])
        chosen[name] = reference_sample(n, budget, context.random_state(f"projections.shap_rows.{name}"))
        frames.append(context.dataset(name).X.iloc[positions[name][chosen[name]]])
    if len(chosen["reference"]) < MIN_ROWS:
        return None, f"fewer than {MIN_ROWS} reference rows to explain"
    reference = context.reference.X
    background = reference.iloc[reference_sample(len(reference), cfg.shap_background_rows,
                                                 context.random_state("projections.shap_background"))]
    attr = explain(context, pd.concat(frames), background)
    values = flat_shap(attr.values)
    n_ref = len(chosen["reference"])
    high = {"reference": values[:n_ref], "current": values[n_ref:]}
    settings = settings_from(cfg, n_ref)
    ref_map, cur_map = tsne_embed(high["reference"], high["current"], settings, context.random_state("projections.shap_tsne"))
    note = (f"{attr.explainer} explainer, {attr.output_space} of {', '.join(attr.output_names)}"
            + (" (classes concatenated)" if len(attr.output_names) > 1 else "")
            + f"; {n_ref} reference and {len(chosen['current'])} current rows; {settings.describe()}")
    return {"chosen": chosen, "high": high, "map": {"reference": ref_map, "current": cur_map}}, note


def _shap_block(context: AuditContext, cfg: ProjectionsConfig, positions: dict[str, np.ndarray]
                ) -> tuple[dict[str, np.ndarray], dict[str, float], dict[str, int], str]:
    """(table columns shap_tsne_x/y, NaN for rows not explained; metrics, NaN when SHAP is unavailable;
    the trustworthiness k used per side, empty when unavailable; a note)."""
    n_ref, n_cur = len(positions["reference"]), len(positions["current"])
    x, y = np.full(n_ref + n_cur, np.nan), np.full(n_ref + n_cur, np.nan)
    metrics = {"shap_tsne.trustworthiness_reference": float("nan"), "shap_tsne.trustworthiness_current": float("nan"),
               "shap_tsne.rows": 0.0}
    k_used: dict[str, int] = {}
    shap_map, note = _shap_map(context, cfg, positions)
    if shap_map is not None:
        for side, offset in (("reference", 0), ("current", n_ref)):
            at, coords = offset + shap_map["chosen"][side], shap_map["map"][side]
            x[at], y[at] = coords[:, 0], coords[:, 1]
            metrics[f"shap_tsne.trustworthiness_{side}"], k_used[f"shap_tsne.{side}"] = trustworthiness(shap_map["high"][side], coords, cfg.k)
        metrics["shap_tsne.rows"] = float(sum(len(v) for v in shap_map["chosen"].values()))
    return {"shap_tsne_x": x, "shap_tsne_y": y}, metrics, k_used, note


class ProjectionsAudit(Audit):
    """PCA, t-SNE and SHAP t-SNE maps of the reference with the current rows placed in, and how far to trust them."""

    name = "projections"
    imports = ("openTSNE",)  # imported when it runs (audits.core.audit)
    question = "data"
    typical_cost_s = 5.0  # for the scheduler (audits.core.audit)
    metric_keys = (
        "{pca,tsne,shap_tsne}.trustworthiness_{reference,current}", "pca.explained_variance", "shap_tsne.rows",
        "rows_{reference,current}", "current_in_new_region", "current_ood_share",
    )
    Config = ProjectionsConfig
    description = "2-D maps (PCA, t-SNE, t-SNE of SHAP values) fitted on reference rows with the current rows placed in; trustworthiness."
    # Trustworthiness is 1 when every row's 10 nearest neighbours on the map are among its 10 nearest in
    # the data, and about 0.5 for a random map (the tests check both ends). Below 0.8 the rows that
    # look close on the map already carry 40 % of a random map's rank penalty: clusters, gaps and
    # "where current data lands" read off such a map are as much the projection's as the data's.
    # Well-separated data scores about 0.98 (make_blobs), the fixtures about 0.94, 30 columns of which
    # 20 are noise about 0.85 at 2,000 rows. A warning, not a failure: the map is doubtful, not the model.
    default_thresholds = (Threshold(metric="tsne.trustworthiness_reference", min=0.8, severity="warn"),)

    def skip_reason(self, context: AuditContext) -> str | None:
        reason = super().skip_reason(context)
        if reason:
            return reason
        if len(context.reference) < MIN_ROWS:
            return f"needs at least {MIN_ROWS} reference rows for a map; there are {len(context.reference)}"
        if len(context.features) < 2:
            return f"a 2-D map needs at least 2 features; the model has {len(context.features)}: look at drift's distribution plot"
        if len(context.current) < 1:
            return "no current rows to place on the map"
        return None

    def compute(self, context: AuditContext) -> AuditResult:
        cfg: ProjectionsConfig = self.config
        mapped, held_out = split_reference(len(context.reference), cfg.reference_rows, context.random_state("projections.reference_rows"))
        positions = {
            "reference": mapped,
            "current": reference_sample(len(context.current), cfg.current_rows, context.random_state("projections.current_rows")),
        }
        space = FeatureSpace.fit(context.reference.X, context.categorical)
        Z = {name: space.transform(context.dataset(name).X.iloc[positions[name]]) for name in positions}
        Z_held = space.transform(context.reference.X.iloc[held_out])
        ood, ood_threshold, ood_note = _ood_scores(context, positions)
        table, colourings, notes = row_variables(context, positions, ood)
        table["ood_flag"] = table["ood_score"].to_numpy() > ood_threshold
        n_ref = len(positions["reference"])

        pca_ref, pca_cur, explained = pca_embed(Z["reference"], Z["current"], context.random_state("projections.pca"))
        settings = settings_from(cfg, n_ref)
        # Held-out reference rows are placed in the same call as the current rows (each placed row moves
        # against the fixed reference map only, never against the other placed rows).
        tsne_ref, placed = tsne_embed(Z["reference"], np.vstack([Z["current"], Z_held]), settings, context.random_state("projections.tsne"))
        tsne_cur, tsne_held = placed[:len(Z["current"])], placed[len(Z["current"]):]
        share, ref_nn, cur_nn, threshold = new_region(tsne_ref, tsne_held, tsne_cur)

        maps = {"pca": (pca_ref, pca_cur), "tsne": (tsne_ref, tsne_cur)}
        for name, (ref, cur) in maps.items():
            table[f"{name}_x"] = np.concatenate([ref[:, 0], cur[:, 0]])
            table[f"{name}_y"] = np.concatenate([ref[:, 1], cur[:, 1]])
        table["tsne_nn_distance"] = np.concatenate([ref_nn, cur_nn])
        table["tsne_new_region"] = np.concatenate([ref_nn > threshold, cur_nn > threshold])

        metrics: dict[str, float] = {
            "rows_reference": float(n_ref),
            "rows_current": float(len(positions["current"])),
            "pca.explained_variance": explained,
            "current_in_new_region": share,
            "current_ood_share": float(np.mean(ood["current"] > ood_threshold)),
        }
        k_used: dict[str, int] = {}
        for name, (ref, cur) in maps.items():
            for side, high, low in (("reference", Z["reference"], ref), ("current", Z["current"], cur)):
                metrics[f"{name}.trustworthiness_{side}"], k_used[f"{name}.{side}"] = trustworthiness(high, low, cfg.k)

        embeddings = ["pca", "tsne"]
        info = {
            "feature_space": f"{Z['reference'].shape[1]} standardised columns (numeric scaled, categories one-hot), fitted on all reference rows",
            "tsne": settings.describe() + "; current rows placed with openTSNE transform (perplexity 5, 250 iterations)",
            "ood_score": f"{ood_note}; flagged above {ood_threshold:.4g}, the 95th percentile of the scorer's held-out reference rows",
            "current_in_new_region": (f"current rows whose nearest mapped reference row on the t-SNE map is farther than "
                                      f"{threshold:.4g}, the {NEW_REGION_PERCENTILE:g}th percentile for {len(held_out)} held-out "
                                      "reference rows placed the same way; about 0.05 when nothing shifted"),
            **{f"note.{key}": value for key, value in notes.items()},
        }
        if cfg.include_shap:
            shap_columns, shap_metrics, shap_k, info["shap_tsne"] = _shap_block(context, cfg, positions)
            for column, values in shap_columns.items():
                table[column] = values
            metrics.update(shap_metrics)
            k_used.update(shap_k)
            if shap_k:
                embeddings.append("shap_tsne")

        coordinate_columns = [f"{e}_{axis}" for e in ("pca", "tsne", "shap_tsne") if f"{e}_x" in table for axis in "xy"]
        variables = ["label", "prediction", "error", "uncertainty", "ood_score", "ood_flag", "tsne_nn_distance", "tsne_new_region"]
        table = table[["row", "dataset", *coordinate_columns, *variables]]
        artifacts = [Artifact.table("coordinates", table, "Map coordinates of every sampled row and what the maps are coloured by "
                                    "(tsne_new_region: beyond the held-out threshold; for reference rows, their nearest other reference row)")]
        for embedding in embeddings:
            fig = projection_figure(table, embedding, colourings)
            artifacts.append(Artifact.figure(f"map_{embedding}", fig, f"{TITLES[embedding]}, one panel per colouring"))
        if cfg.html:
            page = html_view(table, embeddings, colourings, f"Projections: {context.model.label}")
            artifacts.append(Artifact.html("maps", page, "Interactive maps (self-contained page)"))
        info["rows"] = (f"{n_ref} of {len(context.reference)} reference rows mapped, {len(held_out)} held out (placed, not drawn), "
                        f"{len(positions['current'])} of {len(context.current)} current rows placed")
        info["trustworthiness_k"] = ", ".join(f"{key}: {value}" for key, value in k_used.items())
        return AuditResult(audit=self.name, metrics=metrics, artifacts=tuple(artifacts), info=info)


def settings_from(config: ProjectionsConfig, n_rows: int) -> TsneSettings:
    return tsne_settings(n_rows, config.perplexity, config.early_exaggeration_iter, config.n_iter, config.neighbors,
                         config.gradient, config.n_jobs)
