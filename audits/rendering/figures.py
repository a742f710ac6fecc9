"""Figures shared by several audits: images, attribution maps, 2-D projections."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure


# --- figures -----------------------------------------------------------------------------------------
def show_image(ax, image: np.ndarray) -> None:
    """One (C, H, W) image: grey for one channel, RGB (scaled to [0, 1]) for three, else the channel mean."""
    if image.shape[0] == 3:
        low, high = float(image.min()), float(image.max())
        ax.imshow(np.transpose((image - low) / ((high - low) or 1.0), (1, 2, 0)), interpolation="nearest")
    else:
        ax.imshow(image.mean(axis=0), cmap="gray", interpolation="nearest")
    _bare(ax)


def show_map(ax, values: np.ndarray, signed: bool, limit: float | None = None, under: np.ndarray | None = None):
    """A (H, W) map: red for evidence for the class and blue against, centred on 0; absolute maps in reds.
    With ``under`` (a (C, H, W) image), the image shows faintly where the map is near 0, for orientation."""
    import matplotlib
    from matplotlib.colors import ListedColormap

    limit = limit if limit is not None else float(np.max(np.abs(values))) or 1.0
    if under is not None:
        ax.imshow(under.mean(axis=0), cmap="gray", alpha=0.25, interpolation="nearest")
    if signed:
        colours = matplotlib.colormaps["RdBu_r"](np.linspace(0, 1, 256))
        if under is not None:  # transparent at 0, opaque from half the limit on
            colours[:, 3] = np.minimum(1.0, 2 * np.abs(np.linspace(-1, 1, 256)))
        image = ax.imshow(values, cmap=ListedColormap(colours), vmin=-limit, vmax=limit, interpolation="nearest")
    else:
        image = ax.imshow(values, cmap="Reds", vmin=0, vmax=limit, interpolation="nearest")
    _bare(ax)
    return image


def _bare(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def show_image_scaled(ax, image: np.ndarray, low: float | None = None, high: float | None = None) -> None:
    """One (C, H, W) image on an axis: grey for one channel, RGB (min-max scaled) for three."""
    image = np.asarray(image, dtype=float)
    if image.shape[0] == 3:
        lo, hi = (image.min(), image.max()) if low is None else (low, high)
        ax.imshow(np.clip((image.transpose(1, 2, 0) - lo) / ((hi - lo) or 1.0), 0, 1))
    else:
        ax.imshow(image.mean(axis=0), cmap="gray", vmin=low, vmax=high)
    ax.set_xticks([])
    ax.set_yticks([])


@dataclass(frozen=True)
class Colouring:
    column: str  # column of the coordinates table
    title: str
    categorical: bool
    categories: tuple[str, ...] = ()


def _labels(values: np.ndarray) -> np.ndarray:
    return np.array([str(v) for v in values], dtype=object)


def _categorical_values(table: pd.DataFrame, colouring: Colouring) -> np.ndarray:
    if colouring.column == "error":
        values = table["error"].to_numpy(dtype=float)
        return np.array([None if np.isnan(v) else ("misclassified" if v > 0.5 else "correct") for v in values], dtype=object)
    return table[colouring.column].to_numpy(dtype=object)


def _categories(values: np.ndarray, colouring: Colouring) -> list[str]:
    present = {v for v in values.tolist() if v is not None}
    known = [c for c in colouring.categories if c in present]
    return known + sorted(present - set(known))


def _colour_range(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if not len(finite):
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(finite, [1, 99]))
    return (low, high) if high > low else (low - 0.5, high + 0.5)


def projection_figure(table: pd.DataFrame, embedding: str, colourings: list[Colouring]) -> Figure:
    """Small multiples: one panel per colouring, reference rows drawn first, current rows on top."""
    from matplotlib import colormaps

    x, y = table[f"{embedding}_x"].to_numpy(dtype=float), table[f"{embedding}_y"].to_numpy(dtype=float)
    shown = np.isfinite(x) & np.isfinite(y)
    order = np.flatnonzero(shown)  # the table lists reference rows before current rows
    size = 6 if len(order) > 1500 else 12
    columns = min(3, len(colourings))
    rows = math.ceil(len(colourings) / columns)
    fig = Figure(figsize=(5.2 * columns, 4.4 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes[len(colourings):]:
        ax.set_axis_off()
    n_ref = int((table["dataset"].to_numpy()[order] == "reference").sum())
    n_cur = len(order) - n_ref
    for ax, colouring in zip(axes, colourings, strict=False):
        if colouring.categorical:
            values = _categorical_values(table, colouring)[order]
            categories = _categories(values, colouring)
            palette = colormaps["tab10" if len(categories) <= 10 else "tab20"]
            missing = np.array([v is None for v in values])
            if missing.any():
                ax.scatter(x[order][missing], y[order][missing], s=size, color="lightgrey", alpha=0.5, linewidths=0,
                           label=f"(no label) ({int(missing.sum())})")
            for j, category in enumerate(categories):
                mask = values == category
                ax.scatter(x[order][mask], y[order][mask], s=size, color=palette(j % palette.N), alpha=0.6,
                           linewidths=0, label=f"{str(category)[:30]} ({int(mask.sum())})")
            ax.legend(fontsize=7, markerscale=2, loc="best", ncols=1 if len(categories) <= 6 else 2)
        else:
            values = table[colouring.column].to_numpy(dtype=float)[order]
            low, high = _colour_range(values)
            missing = ~np.isfinite(values)
            if missing.any():
                ax.scatter(x[order][missing], y[order][missing], s=size, color="lightgrey", alpha=0.5, linewidths=0)
            rising = np.flatnonzero(~missing)[np.argsort(values[~missing], kind="stable")]  # the highest values on top
            points = ax.scatter(x[order][rising], y[order][rising], c=values[rising], s=size, cmap="viridis",
                                vmin=low, vmax=high, alpha=0.7, linewidths=0)
            fig.colorbar(points, ax=ax, shrink=0.85)
        ax.set_title(colouring.title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{TITLES[embedding]}: {n_ref} reference rows (map fitted on them), {n_cur} current rows placed")
    return fig


TITLES = {"pca": "PCA of the standardised features", "tsne": "t-SNE of the standardised features",
          "shap_tsne": "t-SNE of the SHAP values"}
