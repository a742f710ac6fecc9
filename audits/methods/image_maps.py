"""Attribution maps of images: where the mass lies, class-mean maps, example positions."""

from __future__ import annotations

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

