"""Attribution maps of images: where the mass lies, class-mean maps, example positions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


# --- maps and their summaries ------------------------------------------------------------------
def pixel_mass(attributions: np.ndarray) -> np.ndarray:
    """|attribution| summed over channels: ``(N, C, H, W)`` -> ``(N, H, W)``."""
    return np.abs(np.asarray(attributions, dtype=float)).sum(axis=1)

TOP_FRACTION = 0.1  # the share of pixels whose attribution mass top_share measures



def top_share(attributions: np.ndarray, fraction: float = TOP_FRACTION) -> np.ndarray:
    """Per row, the share of |attribution| mass in the ``fraction`` of pixels that hold the most (NaN: no mass)."""
    mass = pixel_mass(attributions).reshape(len(attributions), -1)
    k = max(1, int(np.ceil(fraction * mass.shape[1])))
    top = -np.sort(-mass, axis=1)[:, :k].sum(axis=1)
    total = mass.sum(axis=1)
    return np.divide(top, total, out=np.full(len(mass), np.nan), where=total > 0)


def mass_share(attributions: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per row, the share of |attribution| mass inside ``mask`` (``(H, W)``, or ``(C, H, W)`` reduced with any)."""
    mask = np.asarray(mask, dtype=bool)
    mask = mask.any(axis=0) if mask.ndim == 3 else mask
    mass = pixel_mass(attributions)
    total = mass.reshape(len(mass), -1).sum(axis=1)
    inside = mass[:, mask].sum(axis=1)
    return np.divide(inside, total, out=np.full(len(mass), np.nan), where=total > 0)


def mean_map(attributions: np.ndarray) -> np.ndarray:
    """Where a method looks on average: each row's |attribution| normalised to sum 1, averaged over rows, ``(H, W)``."""
    mass = pixel_mass(attributions)
    total = mass.reshape(len(mass), -1).sum(axis=1)[:, None, None]
    shares = np.divide(mass, total, out=np.zeros_like(mass), where=total > 0)
    return shares.mean(axis=0) if len(mass) else np.zeros(mass.shape[1:])


# --- the audit ---------------------------------------------------------------------------------------
def sample_positions(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(n, size=min(k, n), replace=False))


def class_example_positions(classes: Sequence[Any], proba: np.ndarray, predicted: np.ndarray, truth: np.ndarray | None,
                            eligible: np.ndarray) -> dict[Any, int]:
    """Per class (in ``classes``' order, which is ``proba``'s columns), the position of the row that stands for it: among
    the ``eligible`` rows, one the model classifies correctly (``truth`` = ``predicted`` = the class) with the highest
    probability of the class; without ``truth``, the one predicted as the class with the highest probability. Ties go
    to the first row. A class without such a row is left out."""
    predicted, eligible = np.asarray(predicted, dtype=object), np.asarray(eligible, dtype=bool)
    truth = None if truth is None else np.asarray(truth, dtype=object)
    picked: dict[Any, int] = {}
    for k, label in enumerate(classes):
        candidates = eligible & (predicted == label)
        if truth is not None:
            candidates &= truth == label
        rows = np.flatnonzero(candidates)
        if len(rows):
            picked[label] = int(rows[np.argmax(proba[rows, k])])  # argmax: the first of equal maxima
    return picked


def most_confident_of_each(groups: np.ndarray, proba: np.ndarray, skip: Sequence[Any] = ()) -> dict[Any, int]:
    """Per value of ``groups`` (a planted kind; None and ``skip`` excluded), in order of first appearance, the position
    of its row with the highest top probability: the input of that kind the model is surest about."""
    groups = np.asarray(groups, dtype=object)
    top = np.max(proba, axis=1)
    picked: dict[Any, int] = {}
    for value in dict.fromkeys(groups.tolist()):
        if value is None or value in skip:
            continue
        rows = np.flatnonzero(groups == value)
        picked[value] = int(rows[np.argmax(top[rows])])
    return picked
