"""MMD-critic (Kim et al. 2016): prototypes and criticisms by greedy maximum mean discrepancy."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from audits.core import AuditContext

_LOG_FLOOR = 1e-300  # log-det gain of a candidate (numerically) spanned by the chosen ones: log(0) -> about -690


@dataclass(frozen=True)
class MMDCritic:
    """Prototypes and criticisms as positions into the rows of Z."""

    gamma: float
    prototypes: np.ndarray  # positions, grouped, in greedy order within each group
    prototype_order: np.ndarray  # 1-based greedy order within the group
    prototype_mmd2: np.ndarray  # the group's MMD^2 once this prototype (and those before it) are chosen
    witness: np.ndarray  # (rows,): signed witness of every row against its own group's prototypes
    criticisms: np.ndarray  # positions, in greedy order
    criticism_scores: np.ndarray  # |witness| + log-det gain at the time of choosing (= |witness| without regulariser)
    mmd2: float  # between all rows of Z and all prototypes


def rbf_kernel(A: np.ndarray, B: np.ndarray, gamma: float) -> np.ndarray:
    from sklearn.metrics.pairwise import rbf_kernel as sk_rbf

    return sk_rbf(A, B, gamma=gamma)


def median_heuristic_gamma(Z: np.ndarray) -> float:
    """1 / median squared pairwise distance (positive distances when the median is 0; 1 if all rows coincide)."""
    from scipy.spatial.distance import pdist

    squared = pdist(Z, "sqeuclidean")
    median = float(np.median(squared)) if len(squared) else 0.0
    if median <= 0 and np.any(squared > 0):
        median = float(np.median(squared[squared > 0]))
    return 1.0 / median if median > 0 else 1.0


def mmd2(K: np.ndarray, prototypes: np.ndarray) -> float:
    """Biased MMD^2 between all rows of K's block and the prototype rows: mean K - 2 mean K[:, P] + mean K[P, P]."""
    P = np.asarray(prototypes, dtype=int)
    return float(K.mean() - 2 * K[:, P].mean() + K[np.ix_(P, P)].mean())


def greedy_prototypes(K: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Greedy minimisation of MMD^2(group, prototypes) over the group's own rows; (positions, MMD^2 path)."""
    n = len(K)
    colmean = K.mean(axis=0)  # mean_k(c, group) for every candidate c
    total = K.mean()
    chosen: list[int] = []
    path: list[float] = []
    cross_sum, self_sum = 0.0, 0.0  # sum_p colmean[p], sum_{p,q} K[p, q] over chosen ones
    to_chosen = np.zeros(n)  # sum_p K[c, p] for every candidate c
    diagonal = np.diag(K)
    for size in range(1, min(m, n) + 1):
        values = total - 2 * (cross_sum + colmean) / size + (self_sum + 2 * to_chosen + diagonal) / size**2
        values[chosen] = np.inf
        best = int(np.argmin(values))  # ties: the first position, for determinism
        chosen.append(best)
        path.append(float(values[best]))
        cross_sum += colmean[best]
        self_sum += 2 * to_chosen[best] + diagonal[best]
        to_chosen += K[:, best]
    return np.array(chosen, dtype=int), np.array(path)


def greedy_criticisms(K: np.ndarray, witness: np.ndarray, candidates: np.ndarray, count: int, regularizer: str = "logdet") -> tuple[np.ndarray, np.ndarray]:
    """Maximise sum |witness(c)| + log det K[C, C] greedily (the paper's regulariser); (positions, scores).

    The log-det gain of adding c to C is log(K[c, c] - K[c, C] K[C, C]^-1 K[C, c]) (a Schur complement):
    0 for a row unlike every chosen one, -> -inf for a row the chosen ones already span.
    """
    score = np.abs(witness)
    remaining = list(np.asarray(candidates, dtype=int))
    chosen: list[int] = []
    scores: list[float] = []
    for _ in range(min(count, len(remaining))):
        idx = np.array(remaining)
        gain = score[idx].copy()
        if regularizer == "logdet":
            if chosen:
                KC = K[np.ix_(chosen, chosen)]
                cross = K[np.ix_(chosen, idx)]  # (chosen, candidates)
                schur = K[idx, idx] - np.einsum("ij,ij->j", cross, np.linalg.solve(KC, cross))
            else:
                schur = K[idx, idx]
            gain += np.log(np.maximum(schur, _LOG_FLOOR))
        best = int(np.argmax(gain))
        chosen.append(int(idx[best]))
        scores.append(float(gain[best]))
        remaining.pop(best)
    return np.array(chosen, dtype=int), np.array(scores)


def mmd_critic(Z: np.ndarray, groups: np.ndarray, per_group: int, criticisms: int, gamma: float | None = None,
               regularizer: str = "logdet", order: list | None = None) -> MMDCritic:
    """Prototypes per group (groups in ``order``, default: first appearance in ``groups``), criticisms overall."""
    gamma = median_heuristic_gamma(Z) if gamma is None else float(gamma)
    K = rbf_kernel(Z, Z, gamma)
    groups = np.asarray(groups)
    prototypes, ranks, path = [], [], []
    witness = np.zeros(len(Z))
    for label in (pd.unique(groups) if order is None else order):
        members = np.flatnonzero(groups == label)
        KG = K[np.ix_(members, members)]
        local, local_path = greedy_prototypes(KG, per_group)
        prototypes.append(members[local])
        ranks.append(np.arange(1, len(local) + 1))
        path.append(local_path)
        witness[members] = KG.mean(axis=1) - KG[:, local].mean(axis=1)
    P = np.concatenate(prototypes)
    candidates = np.setdiff1d(np.arange(len(Z)), P)
    chosen, scores = greedy_criticisms(K, witness, candidates, criticisms, regularizer)
    return MMDCritic(gamma, P, np.concatenate(ranks), np.concatenate(path), witness, chosen, scores, mmd2(K, P))


def squared_distances(rows: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    from sklearn.metrics.pairwise import euclidean_distances

    return euclidean_distances(rows, prototypes, squared=True)


def reference_groups(context: AuditContext, positions: np.ndarray, bins: int) -> tuple[np.ndarray, list[str], str]:
    """Group label (a string) of each sampled reference row, the groups present in order, how groups were formed."""
    predictions = context.reference.predictions.labels[positions]
    if context.task == "classification":
        groups = np.array([str(label) for label in predictions], dtype=object)
        present = set(groups.tolist())
        return groups, [str(c) for c in context.model.classes if str(c) in present], "the model's predicted class"
    values = predictions.astype(float)
    codes, edges = pd.qcut(values, bins, labels=False, duplicates="drop", retbins=True)
    if np.isnan(codes).any():  # constant predictions: one group
        codes, edges = np.zeros(len(values)), np.array([values.min(), values.max()])
    names = [f"q{k + 1} [{edges[k]:.4g}, {edges[k + 1]:.4g}]" for k in range(len(edges) - 1)]
    groups = np.array([names[int(c)] for c in codes], dtype=object)
    present = set(groups.tolist())
    return groups, [n for n in names if n in present], "quantile bins of the model's prediction"
