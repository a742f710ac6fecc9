"""Embeddings for projections: openTSNE settings by row count, t-SNE and PCA, trustworthiness."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

MIN_ROWS = 10  # reference rows needed for a map


EXACT_NEIGHBOURS_MAX_ROWS = 20_000  # 'auto' neighbours: exact search up to here (faster than Annoy and exact), Annoy above


FFT_INTS_IN_INTERVAL = 2.0  # openTSNE's default is 1: a grid cell per embedding unit


# Iterations by map size. With PCA initialisation and openTSNE's automatic learning rate, maps of up to 10,000 rows
# are as trustworthy after 75 + 125 iterations as after 125 + 250 (2,000 rows of the benchmark workload: 0.849 and
# 0.846; the breast-cancer data: 0.946 and 0.946) at 55 % of the time; larger maps keep the longer schedule.
SHORT_SCHEDULE_MAX_ROWS = 10_000
SHORT_SCHEDULE, LONG_SCHEDULE = (75, 125), (125, 250)
PLACEMENT_ITER = 100  # placing new rows: the same trustworthiness as openTSNE's 250 (0.771 and 0.774) at 40 % of the time


@dataclass(frozen=True)
class TsneSettings:
    perplexity: float
    early_exaggeration_iter: int
    n_iter: int
    neighbors: str
    gradient: str
    n_jobs: int
    ints_in_interval: float = FFT_INTS_IN_INTERVAL  # FFT only
    placement_iter: int = PLACEMENT_ITER

    def describe(self) -> str:
        grid = f" (grid cell {self.ints_in_interval:g})" if self.gradient == "fft" else ""
        return (f"perplexity {self.perplexity:g}, {self.early_exaggeration_iter} + {self.n_iter} iterations, "
                f"{self.neighbors} neighbours, {self.gradient} gradients{grid}, {self.n_jobs} thread(s)")


def threads_given() -> int:
    """The threads this process is meant to use: OMP_NUM_THREADS when set (an audit worker gets its share of the
    cores there), else its cores. More OpenMP threads than that make every one spin at each of t-SNE's barriers while
    other processes hold the cores (a 600-row map took 11 s instead of 2 beside another audit)."""
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def tsne_settings(n_rows: int, perplexity: float = 30.0, early_exaggeration_iter: int | None = None, n_iter: int | None = None,
                  neighbors: str = "auto", gradient: str = "auto", n_jobs: int | None = None) -> TsneSettings:
    """The settings used for ``n_rows`` reference rows: 'auto' choices resolved, perplexity within reach, iterations
    None: by the map's size (SHORT_SCHEDULE up to SHORT_SCHEDULE_MAX_ROWS rows), ``n_jobs`` None: the threads this
    process is given."""
    n_jobs = n_jobs if n_jobs is not None else threads_given()
    schedule = SHORT_SCHEDULE if n_rows <= SHORT_SCHEDULE_MAX_ROWS else LONG_SCHEDULE
    early_exaggeration_iter = schedule[0] if early_exaggeration_iter is None else early_exaggeration_iter
    n_iter = schedule[1] if n_iter is None else n_iter
    if neighbors == "auto":
        neighbors = "exact" if n_rows <= EXACT_NEIGHBOURS_MAX_ROWS else "annoy"
    if gradient == "auto":
        gradient = "bh" if n_rows < 10_000 else "fft"  # openTSNE's own rule, made explicit
    effective = min(float(perplexity), max(1.0, (n_rows - 1) / 3))  # openTSNE needs 3 x perplexity neighbours
    return TsneSettings(effective, early_exaggeration_iter, n_iter, neighbors, gradient,
                        1 if neighbors == "annoy" else n_jobs)


def tsne_embed(reference: np.ndarray, current: np.ndarray | None, settings: TsneSettings,
               random_state: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(reference map, current rows placed into it). ``transform`` recentres the reference map in
    place, so the reference coordinates are read after the current rows are placed."""
    from openTSNE import TSNE

    tsne = TSNE(
        n_components=2, perplexity=settings.perplexity, metric="euclidean", initialization="pca",
        early_exaggeration_iter=settings.early_exaggeration_iter, n_iter=settings.n_iter,
        neighbors=settings.neighbors, negative_gradient_method=settings.gradient, n_jobs=settings.n_jobs,
        ints_in_interval=settings.ints_in_interval, random_state=random_state, verbose=False,
    )
    embedding = tsne.fit(np.ascontiguousarray(reference, dtype=float))
    placed = None
    if current is not None and len(current):
        # openTSNE's transform perplexity (5), lowered for tiny maps; PLACEMENT_ITER iterations
        placed = np.array(embedding.transform(np.ascontiguousarray(current, dtype=float), perplexity=min(5.0, settings.perplexity),
                                              n_iter=settings.placement_iter), dtype=float)
    return np.array(embedding, dtype=float), placed


def pca_embed(reference: np.ndarray, current: np.ndarray, random_state: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(reference coordinates, current coordinates, share of variance the 2 components explain)."""
    from sklearn.decomposition import PCA

    components = min(2, reference.shape[1], reference.shape[0])
    pca = PCA(n_components=components, random_state=random_state).fit(reference)
    ref, cur = pca.transform(reference), pca.transform(current)
    if components < 2:  # one feature (or one row): a flat second axis
        ref = np.column_stack([ref, np.zeros(len(ref))])
        cur = np.column_stack([cur, np.zeros(len(cur))])
    return ref, cur, float(pca.explained_variance_ratio_.sum())


def trustworthiness(high: np.ndarray, low: np.ndarray, k: int) -> tuple[float, int]:
    """(scikit-learn's trustworthiness, the k used): k is lowered below n / 2 as scikit-learn requires;
    NaN with fewer than 3 rows."""
    from sklearn.manifold import trustworthiness as sk_trustworthiness

    n = len(high)
    k_used = min(k, math.ceil(n / 2) - 1)
    if n < 3 or k_used < 1:
        return float("nan"), 0
    return float(sk_trustworthiness(high, low, n_neighbors=k_used)), k_used
