"""Exact Shapley values of a cooperative game, by enumerating every coalition.

    phi_i = sum over S not containing i of |S|! (n - |S| - 1)! / n! * (v(S + i) - v(S))

Exact and affordable up to about 15 players (2^15 = 32,768 coalitions). It is the reference the
tests hold SHAP to, and the 'exact' explainer for models with few features: the interventional game
v(S) = mean over background rows b of f(x_S, b_rest), which is what SHAP's model-agnostic explainers
estimate by sampling.
"""

from __future__ import annotations

from collections.abc import Callable
from math import factorial

import numpy as np

MAX_PLAYERS = 20


def coalitions(n_players: int) -> np.ndarray:
    """Every coalition as a boolean row (2^n, n); row m is the coalition whose bitmask is m."""
    if not 0 < n_players <= MAX_PLAYERS:
        raise ValueError(f"exact Shapley values need 1 to {MAX_PLAYERS} players, got {n_players}")
    masks = np.arange(2**n_players, dtype=np.int64)
    return ((masks[:, None] >> np.arange(n_players)) & 1).astype(bool)


def shapley_from_values(values: np.ndarray) -> np.ndarray:
    """Shapley values from v(S) for every coalition S, ``values[mask]`` (trailing axes: several games at once)."""
    values = np.asarray(values, dtype=float)
    n = int(np.log2(len(values)))
    if 2**n != len(values):
        raise ValueError(f"expected 2^n coalition values, got {len(values)}")
    masks = np.arange(2**n, dtype=np.int64)
    sizes = np.array([bin(m).count("1") for m in range(2**n)])
    weights = np.array([factorial(s) * factorial(n - s - 1) / factorial(n) if s < n else 0.0 for s in range(n + 1)])
    phi = np.zeros((n, *values.shape[1:]))
    for i in range(n):
        without = masks[(masks >> i) & 1 == 0]
        marginal = values[without | (1 << i)] - values[without]
        phi[i] = np.tensordot(weights[sizes[without]], marginal, axes=(0, 0))
    return phi


def shapley_values(game: Callable[[np.ndarray], np.ndarray], n_players: int) -> np.ndarray:
    """Shapley values of ``game``, which maps a boolean coalition matrix (k, n) to k values."""
    return shapley_from_values(np.asarray(game(coalitions(n_players)), dtype=float))


def interventional_values(f: Callable[[np.ndarray], np.ndarray], row: np.ndarray, background: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact interventional Shapley values of one row: (phi (features, outputs), base (outputs,)).

    f maps numeric rows (k, features) to outputs (k,) or (k, outputs). Costs 2^features x len(background)
    model evaluations, in one call.
    """
    n = len(row)
    members = coalitions(n)
    mixed = np.where(members[:, None, :], row[None, None, :], background[None, :, :])  # (2^n, m, n)
    outputs = np.asarray(f(mixed.reshape(-1, n)), dtype=float)
    outputs = outputs.reshape(len(members), len(background), -1).mean(axis=1)  # v(S) per output
    return shapley_from_values(outputs), outputs[0]
