"""Data for the network audits' demo and truth tests, all generated or shipped inside scikit-learn (nothing is
downloaded), each with a known truth:

- ``digits``: scikit-learn's bundled 8x8 handwritten digits as ``(N, 1, 8, 8)`` float32 in [0, 1];
- ``corrupt``: the same digits made unfamiliar (inverted, noise, rotated) for the OOD truth tests;
- ``quadrant_images``: images whose class depends only on the top-left quadrant (bright distractors elsewhere
  carry no information), so an attribution map must put its mass there;
- ``job_adverts``: job adverts whose salary class depends only on a few planted words, so a text explanation
  must rank those words first.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

HIGH_WORDS = ("senior", "principal", "director")  # planted: make an advert "high"
LOW_WORDS = ("junior", "trainee", "intern")  # planted: make an advert "low"
FILLER = (
    "we", "are", "hiring", "a", "team", "player", "to", "join", "our", "office", "in", "the", "city", "role",
    "offers", "flexible", "hours", "and", "training", "you", "will", "work", "with", "customers", "data",
    "reports", "projects", "colleagues", "apply", "today", "friendly", "company", "growing", "remote", "options",
    "benefits", "include", "pension", "holiday", "support", "engineer", "analyst", "assistant", "manager",
    "sales", "marketing", "logistics", "warehouse", "software", "finance",
)


def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 digits: images ``(N, 1, 8, 8)`` in [0, 1] and labels 0-9."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return (bunch.images / 16.0).astype(np.float32)[:, None, :, :], bunch.target.astype(np.int64)


def corrupt(images: np.ndarray, kind: str, seed: int = 0) -> np.ndarray:
    """Unfamiliar versions of images in [0, 1]: ``inverted`` (1 - x), ``noise`` (uniform noise), ``rotated`` (90°)."""
    rng = np.random.default_rng(seed)
    if kind == "inverted":
        out = 1.0 - images
    elif kind == "noise":
        out = rng.uniform(0.0, 1.0, size=images.shape)
    elif kind == "rotated":
        out = np.rot90(images, k=1, axes=(-2, -1))
    else:
        raise ValueError(f"unknown corruption {kind!r}: use inverted, noise or rotated")
    return np.ascontiguousarray(out, dtype=np.float32)


def quadrant_images(n: int, seed: int = 0, size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """``(N, 1, size, size)`` images and labels 0/1. Class 1 has a bright 2x2 square somewhere in the top-left
    quadrant, class 0 a dim one there; every image also has bright squares in the other three quadrants at
    random, independent of the class. Only the top-left quadrant tells the classes apart."""
    rng = np.random.default_rng(seed)
    half = size // 2
    X = rng.uniform(0.0, 0.15, size=(n, 1, size, size)).astype(np.float32)
    y = rng.integers(0, 2, size=n)
    for i in range(n):
        r, c = rng.integers(0, half - 1, size=2)
        X[i, 0, r:r + 2, c:c + 2] = 1.0 if y[i] == 1 else 0.35
        for qr, qc in ((0, half), (half, 0), (half, half)):  # distractors: bright or not, by coin flip
            if rng.random() < 0.5:
                r, c = rng.integers(0, half - 1, size=2)
                X[i, 0, qr + r:qr + r + 2, qc + c:qc + c + 2] = 1.0
    return X, y.astype(np.int64)


def quadrant_mask(size: int = 8) -> np.ndarray:
    """Boolean ``(1, size, size)`` mask of the informative (top-left) quadrant."""
    mask = np.zeros((1, size, size), dtype=bool)
    mask[0, : size // 2, : size // 2] = True
    return mask


def job_adverts(n: int, seed: int = 0, words: int = 14, noise: float = 0.0) -> pd.DataFrame:
    """``n`` adverts (column ``text``) and their ``salary`` class ("high"/"low"). Each advert has filler words and
    exactly one planted word, which alone decides the class (``noise``: the share of labels flipped)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        high = bool(rng.random() < 0.5)
        planted = str(rng.choice(HIGH_WORDS if high else LOW_WORDS))
        tokens = [str(t) for t in rng.choice(FILLER, size=words)]
        tokens.insert(int(rng.integers(0, words + 1)), planted)
        label = "high" if high != bool(rng.random() < noise) else "low"
        rows.append({"text": " ".join(tokens), "salary": label})
    return pd.DataFrame(rows)
