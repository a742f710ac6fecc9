"""Unfamiliar images by reconstruction: a small convolutional autoencoder trained on reference images only.

The autoencoder squeezes each image through a ``latent``-dimensional bottleneck (a strided convolution and a
linear layer down, a linear layer, upsampling and convolutions back). Trained on reference images, it learns to
redraw what the reference looks like; an image unlike them (inverted, noisy, a new kind of object) comes back
worse. The score of an image is its mean squared reconstruction error, in pixel units standardised per channel
with the training images' mean and standard deviation.

As in the ``ood`` audit, the reference is split (seeded): the autoencoder trains on one part and the flag
threshold is the ``percentile`` of the reconstruction errors of the held-out part, so an unshifted current
batch is flagged at about 1 - percentile / 100; ``excess_z`` (``ood_audit.excess_z``) says how surprising the
flagged count is under no shift. The histograms compare the held-out reference rows with the current rows.

Training is seeded (weights, shuffling) and runs inside ``torch.random.fork_rng``, leaving torch's global
random state as it was. Nothing fitted is kept on the audit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pydantic import Field

from audits.core import Artifact, Audit, AuditConfig, AuditContext, AuditResult, Requirements, Threshold
from audits.methods.network import module_device, module_tensor, network_of, seeded
from audits.methods.ood import excess_z, excess_z_range
from audits.rendering.figures import show_image_scaled

BATCH = 2048


class AutoencoderOODConfig(AuditConfig):
    epochs: int = Field(60, ge=1, le=2000)
    latent: int = Field(16, ge=1, le=1024)  # bottleneck width
    channels: int = Field(16, ge=1, le=256)  # width of the first convolution (the second has twice as many)
    lr: float = Field(3e-3, gt=0, le=1)
    batch_size: int = Field(64, ge=1)
    percentile: float = Field(95.0, gt=0, lt=100)  # of held-out reference errors: the flag threshold
    holdout: float = Field(0.25, ge=0.05, le=0.5)  # share of the reference rows kept for the threshold
    max_rows: int = Field(5000, ge=20)  # reference rows used (sampled with the seed)
    rows: int = Field(20, ge=1)  # most unfamiliar current rows in the table
    images: int = Field(6, ge=0, le=20)  # worst-reconstructed current images drawn


def build_autoencoder(shape: tuple[int, ...], latent: int = 16, channels: int = 16):
    """A convolutional autoencoder for ``(C, H, W)`` images, as an ``nn.Sequential`` of (encoder, decoder)."""
    import torch

    nn = torch.nn
    c, h, w = shape
    h2, w2 = (h + 1) // 2, (w + 1) // 2
    wide = 2 * channels
    encoder = nn.Sequential(
        nn.Conv2d(c, channels, 3, padding=1), nn.ReLU(),
        nn.Conv2d(channels, wide, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(wide * h2 * w2, latent),
    )
    decoder = nn.Sequential(
        nn.Linear(latent, wide * h2 * w2), nn.ReLU(), nn.Unflatten(1, (wide, h2, w2)),
        nn.Upsample(size=(h, w), mode="nearest"),
        nn.Conv2d(wide, channels, 3, padding=1), nn.ReLU(),
        nn.Conv2d(channels, c, 3, padding=1),
    )
    return nn.Sequential(encoder, decoder)


@dataclass(frozen=True)
class FittedAutoencoder:
    module: Any  # the trained nn.Sequential, eval mode
    mean: np.ndarray  # (C, 1, 1) per-channel mean of the training images
    scale: np.ndarray  # (C, 1, 1) per-channel standard deviation (1 where constant)
    losses: tuple[float, ...]  # mean training loss per epoch

    def _standardise(self, images: np.ndarray) -> np.ndarray:
        return ((np.asarray(images, dtype=np.float32) - self.mean) / self.scale).astype(np.float32)

    def reconstruct(self, images: np.ndarray) -> np.ndarray:
        """Reconstructions in the images' own units."""
        import torch

        z = module_tensor(self.module, self._standardise(images))
        with torch.no_grad():
            out = [self.module(z[i:i + BATCH]).cpu().numpy() for i in range(0, len(z), BATCH)]
        rebuilt = np.concatenate(out) if out else np.zeros((0, *images.shape[1:]), dtype=np.float32)
        return rebuilt * self.scale + self.mean

    def errors(self, images: np.ndarray) -> np.ndarray:
        """Mean squared reconstruction error per image, in standardised units (the OOD score)."""
        images = np.asarray(images, dtype=np.float32)
        rebuilt = (self.reconstruct(images) - self.mean) / self.scale
        return ((self._standardise(images) - rebuilt) ** 2).reshape(len(images), -1).mean(axis=1).astype(float)


def fit_autoencoder(images: np.ndarray, seed: int, epochs: int = 60, latent: int = 16, channels: int = 16,
                    lr: float = 3e-3, batch_size: int = 64, device: Any = "cpu") -> FittedAutoencoder:
    """Train the autoencoder on images ``(N, C, H, W)`` (seeded, initial weights drawn on the CPU) on ``device``;
    the public scoring entry point."""
    import torch

    images = np.asarray(images, dtype=np.float32)
    mean = images.mean(axis=(0, 2, 3), keepdims=True)[0]
    scale = images.std(axis=(0, 2, 3), keepdims=True)[0]
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    x = torch.from_numpy(np.ascontiguousarray((images - mean) / scale, dtype=np.float32)).to(device)
    losses = []
    with seeded(seed):
        module = build_autoencoder(tuple(images.shape[1:]), latent, channels).to(device)
        optimiser = torch.optim.Adam(module.parameters(), lr=lr)
        generator = torch.Generator().manual_seed(seed)
        module.train()
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=generator).to(device)
            total = 0.0
            for start in range(0, len(x), batch_size):
                batch = x[order[start:start + batch_size]]
                optimiser.zero_grad()
                loss = torch.mean((module(batch) - batch) ** 2)
                loss.backward()
                optimiser.step()
                total += float(loss.detach()) * len(batch)
            losses.append(total / max(len(x), 1))
    return FittedAutoencoder(module.eval(), mean.astype(np.float32), scale, tuple(losses))


def split_reference(n: int, max_rows: int, holdout: float, random_state: int) -> tuple[np.ndarray, np.ndarray]:
    """(sorted positions to train on, sorted held-out positions for the threshold) among ``n`` reference rows."""
    rng = np.random.default_rng(random_state)
    used = rng.permutation(n)[:min(n, max_rows)]
    n_holdout = max(1, int(round(holdout * len(used))))
    return np.sort(used[n_holdout:]), np.sort(used[:n_holdout])


class AutoencoderOODAudit(Audit):
    """Reconstruction error of a convolutional autoencoder trained on reference images, thresholded on held-out ones."""

    name = "autoencoder_ood"
    question = "certainty"
    typical_cost_s = 4.0  # for the scheduler (audits.core.audit)
    metric_keys = (
        "{reference,current}.mean_error", "error_ratio", "excess_z", "expected_share", "flagged_share", "threshold",
        "train_loss", "training_rows", "calibration_rows", "rows",
    )
    Config = AutoencoderOODConfig
    requires = Requirements(modalities=("image",), network=True, tasks=("classification",))
    description = "Share of current images an autoencoder trained on the reference reconstructs worse than most held-out reference images."
    # As the ood audit: z > 3 is a flagged count an unshifted batch reaches with probability 0.13 % or less.
    default_thresholds = (Threshold(metric="excess_z", max=3.0, severity="warn"),)

    def compute(self, context: AuditContext) -> AuditResult:
        cfg: AutoencoderOODConfig = self.config
        train_at, held_at = split_reference(len(context.reference), cfg.max_rows, cfg.holdout,
                                            context.random_state("autoencoder_ood.split"))
        if len(train_at) < 2:
            raise ValueError(f"{len(context.reference)} reference rows: too few to train an autoencoder and hold some out")
        reference = context.images(context.reference)
        device = module_device(network_of(context).network())  # beside the audited network (model.device)
        autoencoder = fit_autoencoder(reference[train_at], context.random_state("autoencoder_ood.fit"), cfg.epochs,
                                      cfg.latent, cfg.channels, cfg.lr, cfg.batch_size, device)
        held_errors = autoencoder.errors(reference[held_at])
        current = context.images(context.current)
        errors = autoencoder.errors(current)
        threshold = float(np.percentile(held_errors, cfg.percentile))
        flagged = errors > threshold
        n, m = len(errors), len(held_at)
        metrics = {
            "flagged_share": float(flagged.mean()),
            "expected_share": 1 - cfg.percentile / 100,
            "excess_z": excess_z(int(flagged.sum()), n, m, cfg.percentile),
            "threshold": threshold,
            "current.mean_error": float(errors.mean()),
            "reference.mean_error": float(held_errors.mean()),
            "error_ratio": float(np.median(errors) / max(np.median(held_errors), np.finfo(float).tiny)),
            "train_loss": autoencoder.losses[-1],
            "rows": float(n),
            "calibration_rows": float(m),
            "training_rows": float(len(train_at)),
        }
        worst = np.argsort(-errors, kind="stable")
        return AuditResult(
            ranges={"excess_z": excess_z_range(n, m, cfg.percentile)},
            audit=self.name,
            metrics=metrics,
            artifacts=(
                _figure(held_errors, errors, threshold, cfg.percentile, current[worst[:cfg.images]],
                        autoencoder.reconstruct(current[worst[:cfg.images]]), errors[worst[:cfg.images]],
                        [str(i) for i in context.current.X.index[worst[:cfg.images]]]),
                Artifact.table("most_unfamiliar", _table(context, worst[:cfg.rows], errors, threshold),
                               f"The {min(cfg.rows, n)} current images the autoencoder reconstructs worst"),
            ),
            info={
                "autoencoder": f"conv {cfg.channels}-{2 * cfg.channels} (stride 2), latent {cfg.latent}; {cfg.epochs} epochs of Adam (lr {cfg.lr:g})",
                "score": "mean squared reconstruction error, pixels standardised per channel with the training images' mean and std",
                "threshold": f"the {cfg.percentile:g}th percentile of {m} held-out reference images' errors",
                "fitted_on": f"{len(train_at)} reference images",
                "error_ratio": "median current error / median held-out reference error",
                "excess_z": "normal quantile of the chance of flagging at least as many unshifted rows (beta-binomial)",
            },
        )


def _table(context: AuditContext, order: np.ndarray, errors: np.ndarray, threshold: float) -> pd.DataFrame:
    current = context.current
    table = pd.DataFrame({
        "row": [str(i) for i in current.X.index[order]],
        "reconstruction_error": errors[order],
        "error_over_threshold": errors[order] / max(threshold, np.finfo(float).tiny),
        "flagged": errors[order] > threshold,
        "prediction": [str(v) for v in current.predictions.labels[order]],
    })
    if current.predictions.proba is not None:
        table["confidence"] = current.predictions.proba[order].max(axis=1)
    if current.y is not None:
        table["label"] = [str(v) for v in current.y.to_numpy()[order]]
    return table


def _figure(held: np.ndarray, current: np.ndarray, threshold: float, percentile: float, worst: np.ndarray,
            rebuilt: np.ndarray, worst_errors: np.ndarray, worst_rows: list[str]) -> Artifact:
    columns = max(len(worst), 1)
    fig = Figure(figsize=(max(9.0, 1.6 * columns), 4 + (3.4 if len(worst) else 0)), layout="constrained")
    grid = fig.add_gridspec(3 if len(worst) else 1, columns, height_ratios=[3, 1.2, 1.2] if len(worst) else [1])
    ax = fig.add_subplot(grid[0, :])
    values = np.concatenate([held, current])
    positive = values[values > 0]
    if len(positive) and positive.max() > 10 * positive.min():
        bins = np.geomspace(positive.min(), positive.max(), 41)
        ax.set_xscale("log")
    else:
        bins = np.histogram_bin_edges(values, bins=40)
    for label, v in (("reference (held out)", held), ("current", current)):
        ax.hist(np.clip(v, bins[0], None), bins=bins, weights=np.full(len(v), 1 / len(v)), histtype="step", linewidth=1.5,
                label=f"{label} (n={len(v)})")
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold (p{percentile:g})")
    ax.set_xlabel("reconstruction error (mean squared, standardised pixels)")
    ax.set_ylabel("share of rows")
    ax.legend(fontsize="small")
    if len(worst):
        low, high = float(min(worst.min(), rebuilt.min())), float(max(worst.max(), rebuilt.max()))
        for j in range(len(worst)):
            top, bottom = fig.add_subplot(grid[1, j]), fig.add_subplot(grid[2, j])
            show_image_scaled(top, worst[j], low, high)
            show_image_scaled(bottom, rebuilt[j], low, high)
            top.set_title(f"row {worst_rows[j]}\nerror {worst_errors[j]:.3g}", fontsize=8)
            if j == 0:
                top.set_ylabel("input", fontsize=8)
                bottom.set_ylabel("reconstruction", fontsize=8)
    fig.suptitle("Autoencoder reconstruction error: held-out reference vs current; the worst-reconstructed current images")
    return Artifact.figure("reconstruction", fig, "Reconstruction errors with the flag threshold, and the worst-reconstructed current images")
