"""Occlusion: cover a patch of the image with grey and see how much the TRUE class's probability drops.

Captum's ``Occlusion`` slides a ``patch`` x ``patch`` window (all channels at once) over each image with the
given ``stride``, fills it with ``fill`` (the reference images' mean per channel, or a number) and records
p(true class | image) - p(true class | occluded image). Each pixel gets the mean drop of the windows that
cover it, so a map reads: "hiding this spot costs the right answer this much probability".

Metrics: ``mean_max_drop`` (mean over rows of the largest drop in a row's map: how much one patch can
cost), ``top10_share`` (mean share of a row's |drop| mass in its top 10 % of pixels: how local the evidence
is), ``mean_true_probability``. A confident prediction whose probability saturates near 1 barely moves under
any patch, so its map holds little mass and its share is noisy; ``pooled_top10_share`` weighs rows by
their mass. There is no default threshold: these numbers are for comparing versions.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pydantic import Field

from audits.core import Artifact, Audit, AuditConfig, AuditContext, AuditResult, Requirements
from audits.methods.image_maps import mean_map, sample_positions, top_share
from audits.methods.network import module_tensor, network_of
from audits.rendering.figures import show_image, show_map


class OcclusionConfig(AuditConfig):
    patch: int = Field(2, ge=1)  # side of the square window, in pixels
    stride: int = Field(1, ge=1)
    fill: Literal["mean"] | float = "mean"  # "mean": the reference images' mean per channel (a grey patch)
    rows: int = Field(20, ge=1)  # labelled current rows occluded (sampled with the seed)
    examples: int = Field(8, ge=1, le=24)  # rows shown in the figure
    batch: int = Field(64, ge=1)  # window positions evaluated per forward pass


def occlusion_drops(module, x: np.ndarray, targets: np.ndarray, *, patch: int = 2, stride: int = 1,
                    fill: float | np.ndarray = 0.0, batch: int = 64) -> np.ndarray:
    """Per pixel, the mean drop in softmax probability of ``targets`` when a window covering it is filled:
    ``(N, C, H, W)`` images -> ``(N, H, W)`` maps. ``fill``: a number, or one value per channel."""
    import torch
    from captum.attr import Occlusion

    c, h, w = x.shape[1:]
    if patch > min(h, w):
        raise ValueError(f"the occlusion patch ({patch} px) is larger than the images ({h}x{w})")
    probabilities = torch.nn.Sequential(module.eval(), torch.nn.Softmax(dim=1))  # holds the module, changes nothing on it
    inputs = module_tensor(module, x)
    fill_values = np.empty((1, c, h, w), dtype=np.float32)
    fill_values[:] = np.asarray(fill, dtype=np.float32).reshape(-1, 1, 1)  # a number, or one per channel
    baselines = module_tensor(module, fill_values)
    with torch.no_grad():
        maps = Occlusion(probabilities).attribute(inputs, sliding_window_shapes=(c, patch, patch), strides=(c, stride, stride),
                                                  baselines=baselines, target=torch.from_numpy(np.asarray(targets, dtype=np.int64)).to(inputs.device),
                                                  perturbations_per_eval=batch)  # fmt: skip
    return maps.cpu().numpy().astype(float).mean(axis=1)  # every channel of a window gets the same drop


class OcclusionAudit(Audit):
    """The drop in the true class's probability when a grey patch hides each part of the image (Captum)."""

    name = "occlusion"
    question = "behaviour"
    metric_keys = (
        "mean_max_drop", "mean_true_probability", "pooled_top10_share", "top10_share", "rows",
    )
    requires = Requirements(labels="current", modalities=("image",), network=True, tasks=("classification",), probabilities=True)
    Config = OcclusionConfig
    description = "How much the true class's probability drops when a patch of the image is hidden, per position."

    def compute(self, context: AuditContext) -> AuditResult:
        cfg: OcclusionConfig = self.config
        module = network_of(context).network()
        index = {c: i for i, c in enumerate(context.model.classes)}
        truth = np.asarray(context.current.y)
        known = np.flatnonzero([label in index for label in truth.tolist()])
        if not len(known):
            raise ValueError("no current row's label is one of the model's classes: there is no true class to occlude")
        positions = known[sample_positions(len(known), cfg.rows, context.rng("occlusion.rows"))]
        x = context.images(context.current)[positions]
        targets = np.array([index[label] for label in truth[positions].tolist()])
        fill = context.images(context.reference).mean(axis=(0, 2, 3)) if cfg.fill == "mean" else np.float32(cfg.fill)
        maps = occlusion_drops(module, x, targets, patch=cfg.patch, stride=cfg.stride, fill=fill, batch=cfg.batch)

        share = top_share(maps[:, None])
        mass = np.abs(maps).reshape(len(maps), -1).sum(axis=1)
        max_drop = maps.reshape(len(maps), -1).max(axis=1)
        p_true = context.current.predictions.proba[positions, targets]
        metrics = {
            "rows": float(len(x)),
            "mean_max_drop": float(max_drop.mean()),
            "top10_share": float(np.nanmean(share)) if not np.all(np.isnan(share)) else float("nan"),
            "pooled_top10_share": float(np.nansum(share * mass) / mass.sum()) if mass.sum() > 0 else float("nan"),
            "mean_true_probability": float(p_true.mean()),
        }
        where = [np.unravel_index(int(np.argmax(m)), m.shape) for m in maps]
        table = pd.DataFrame({
            "row": [str(context.current.X.index[p]) for p in positions],
            "true": [str(v) for v in truth[positions].tolist()],
            "predicted": [str(v) for v in context.current.predictions.labels[positions].tolist()],
            "p_true": p_true,
            "max_drop": max_drop,
            "max_drop_at": [f"row {int(r)}, column {int(c)}" for r, c in where],
            "top10_share": share,
        })
        shown = np.arange(min(cfg.examples, len(x)))
        fill_text = "the reference images' mean per channel" if cfg.fill == "mean" else f"{cfg.fill:g}"
        return AuditResult(
            audit=self.name,
            metrics=metrics,
            artifacts=(
                Artifact.figure("maps", _maps_figure(x[shown], maps[shown], table.iloc[shown]),
                                "Occlusion maps: drop in the true class's probability when a patch hides each spot (red: drop)"),
                Artifact.json("mean_map", mean_map(maps[:, None]).round(6).tolist(),
                              "Mean over occluded rows of each row's |drop| share per pixel (H x W)"),
                Artifact.table("rows", table, "Per occluded row: true class probability, largest drop and where, "
                               "share of |drop| in the top 10 % of pixels"),
            ),
            info={
                "occlusion": f"captum Occlusion, {cfg.patch}x{cfg.patch} patch, stride {cfg.stride}, filled with {fill_text}",
                "rows": f"{len(x)} labelled current rows sampled with the seed; the true class is occluded",
            },
        )


def _maps_figure(images: np.ndarray, maps: np.ndarray, table: pd.DataFrame) -> Figure:
    """Two rows per band of up to 8 examples: the image, then its occlusion map (red: the probability drops)."""
    per_band = 8
    bands = int(np.ceil(len(images) / per_band))
    cols = min(per_band, len(images))
    fig = Figure(figsize=(1.5 * cols, 3.3 * bands + 0.4), layout="constrained")
    axes = fig.subplots(2 * bands, cols, squeeze=False)
    limit = float(np.max(np.abs(maps))) or 1.0  # one scale: drops are probabilities, comparable across images
    shown = None
    for ax in axes.ravel():
        ax.set_axis_off()
    for i in range(len(images)):
        band, col = divmod(i, per_band)
        top, bottom = axes[2 * band, col], axes[2 * band + 1, col]
        top.set_axis_on()
        bottom.set_axis_on()
        show_image(top, images[i])
        row = table.iloc[i]
        top.set_title(f"true {row['true']}\np={row['p_true']:.2f}", fontsize=8)
        shown = show_map(bottom, maps[i], signed=True, limit=limit, under=images[i])
        bottom.set_title(f"max drop {row['max_drop']:.2f}", fontsize=8)
    fig.colorbar(shown, ax=axes[1::2, :].ravel().tolist(), shrink=0.8, label="drop in p(true)")
    fig.suptitle("Occlusion: drop in p(true class) per pixel (red: hiding it lowers the probability, blue: raises it)", fontsize=9)
    return fig
