"""Figures shared by several audits: images, attribution maps, 2-D projections."""

from __future__ import annotations

import math
import threading
import warnings
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


# --- shap's image plot ---------------------------------------------------------------------------------
_PYPLOT = threading.Lock()  # shap.image_plot draws through pyplot's global state: one figure at a time, every thread


def shap_image_figure(values: np.ndarray, images: np.ndarray, class_names: list[str], row_titles: list[str],
                      title: str, width: float = 12.0) -> Figure:
    """shap's own image plot (``shap.image_plot``) of ``values`` ``(N, C, H, W, K)`` over ``images`` ``(N, C, H, W)``:
    one row per image, the input first, then one column per class output: the SHAP values (summed over channels) in
    red for the class and blue against, over the faded grey input, on one symmetric scale (its colour bar).

    image_plot has no ``ax`` and returns nothing: it draws with ``plt.subplots``, so it runs under a lock, its figure
    is taken from pyplot (``plt.gcf()``) and closed there at once (the Figure lives on, drawn with Agg). What is
    changed after it has drawn, and why:
    - the faded input gets the attribution map's extent: image_plot places it at (-1, W, H, -1), half a pixel larger
      on every side than the map (-0.5, W - 0.5, ...), so on 8x8 digits each grey pixel sat up to half a pixel off the
      attribution drawn over it (invisible on the 224-pixel images of its examples, not on small ones);
    - the layout: image_plot sizes the figure 3 x 2.5 inches a cell (scaled to ``width``) with no room for the titles
      of rows, which then overlap the row above, and its colour bar reserves 30 % of the height (most of it blank); the
      figure is re-laid out in inches: each row's title above its input, the colour bar in a strip at the bottom;
    - a figure title, smaller titles, and the dpi fixed at 100 (the PNG's size does not follow a user's rcParams)."""
    import matplotlib
    import matplotlib.pyplot as plt
    from matplotlib.backends import BackendFilter, backend_registry

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # importing shap warns about matplotlib colormap deprecations
        import shap

    values, images = np.asarray(values, dtype=float), np.asarray(images, dtype=float)
    n, c, _, _, k = values.shape
    pixels = np.transpose(images, (0, 2, 3, 1))  # image_plot reads channels last
    if c == 3:  # RGB floats outside [0, 1] are clipped by imshow: each image min-max scaled, as show_image does
        low = pixels.min(axis=(1, 2, 3), keepdims=True)
        span = pixels.max(axis=(1, 2, 3), keepdims=True) - low
        pixels = (pixels - low) / np.where(span > 0, span, 1.0)
    per_class = [np.transpose(values[..., j], (0, 2, 3, 1)) for j in range(k)]
    with _PYPLOT:
        if matplotlib.get_backend().lower() in backend_registry.list_builtin(BackendFilter.INTERACTIVE):
            plt.switch_backend("agg")  # a GUI backend opens windows, which fail outside the main thread
        before = set(plt.get_fignums())
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                shap.image_plot(per_class, pixels, labels=[f"class {name}" for name in class_names],
                                true_labels=list(row_titles), width=width, show=False)
            fig = plt.gcf()
            if set(plt.get_fignums()) - before != {fig.number}:  # pyplot is drawn on under this lock only
                raise RuntimeError("shap.image_plot's figure is not pyplot's current one: another thread drew with pyplot")
        finally:
            for number in set(plt.get_fignums()) - before:
                plt.close(number)
    grid = np.array(fig.axes[: n * (k + 1)], dtype=object).reshape(n, k + 1)
    for ax in grid[:, 1:].ravel():
        faded, attribution = ax.images  # image_plot's two layers: the grey input, then the SHAP values
        faded.set_extent(attribution.get_extent())
    for ax in grid.ravel():
        ax.title.set_fontsize(8)
    _lay_out_image_grid(fig, grid, next(im.colorbar for im in grid[-1, -1].images if im.colorbar is not None), width, title)
    return fig


def _lay_out_image_grid(fig: Figure, grid: np.ndarray, bar, width: float, title: str) -> None:
    """Cells as large as the width allows, a title's room above every row, the colour bar in a strip at the bottom."""
    rows, columns = grid.shape
    left, right = 0.3, 0.15  # inches: the first column's titles may be wider than its cell
    wspace = 0.15  # share of a cell
    cell = (width - left - right) / (columns + wspace * (columns - 1))
    lines = max(ax.get_title().count("\n") + 1 for ax in grid.ravel())
    gap = 0.1 + 0.15 * lines  # inches: a row's title
    top, bottom = 0.45 + 0.15 * lines, 0.75  # inches: the figure's title and the first row's; the colour bar
    height = top + bottom + rows * cell + (rows - 1) * gap
    fig.set_size_inches(width, height)
    fig.subplots_adjust(left=left / width, right=1 - right / width, top=1 - top / height, bottom=bottom / height,
                        wspace=wspace, hspace=gap / cell)
    bar.ax.set_position([0.25, 0.4 / height, 0.5, 0.1 / height])
    bar.ax.tick_params(labelsize=8)
    bar.ax.xaxis.label.set_fontsize(8)
    fig.suptitle(title, fontsize=10, y=1 - 0.12 / height, va="top")
    fig.set_dpi(100)
