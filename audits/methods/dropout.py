"""Monte Carlo dropout: K stochastic passes of a network, and the uncertainty scores made of them."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from audits.methods.network import module_tensor, seeded
from audits.methods.scores import entropy

BATCH = 2048


def dropout_layers(module) -> list:
    """The dropout modules of a network (Dropout, Dropout1d/2d/3d, AlphaDropout, FeatureAlphaDropout)."""
    import torch

    return [m for m in module.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)]


def mc_dropout_probabilities(module, images: np.ndarray, passes: int, seed: int) -> np.ndarray:
    """Softmax outputs ``(passes, N, n_classes)`` with only the dropout modules in training mode.

    Every module's training flag is restored afterwards, and torch's global random state too.
    """
    import torch

    module = copy.deepcopy(module)  # dropout switched on in a private copy: other audits share the network concurrently
    layers = dropout_layers(module)
    if not layers:
        raise ValueError("the network has no dropout module: MC dropout would repeat one deterministic answer")
    modes = {m: m.training for m in module.modules()}
    x = module_tensor(module, images)
    out = []
    try:
        module.eval()
        for layer in layers:
            layer.train()
        with seeded(seed), torch.no_grad():  # dropout draws from the global generator: one audit at a time
            for _ in range(passes):
                logits = [module(x[i:i + BATCH]) for i in range(0, len(x), BATCH)]
                out.append(torch.softmax(torch.cat(logits), dim=1).double().cpu().numpy() if logits else np.zeros((0, 0)))
    finally:
        for m, training in modes.items():
            m.train(training)
    return np.stack(out)


@dataclass(frozen=True)
class MCScores:
    """Per-row summaries of MC-dropout passes; ``predicted`` is a class position (argmax of the mean)."""

    mean: np.ndarray  # (N, n_classes) mean probability vectors
    predicted: np.ndarray
    mean_probability: np.ndarray  # mean probability of the predicted class
    std: np.ndarray  # its standard deviation over the passes
    predictive_entropy: np.ndarray
    mutual_information: np.ndarray

    def score(self, name: str) -> np.ndarray:
        return getattr(self, name)


def mc_scores(probabilities: np.ndarray) -> MCScores:
    """Summaries of ``(passes, N, n_classes)`` softmax outputs."""
    p = np.asarray(probabilities, dtype=float)
    mean = p.mean(axis=0)
    predicted = mean.argmax(axis=1)
    rows = np.arange(p.shape[1])
    of_predicted = p[:, rows, predicted]
    total = entropy(mean)
    return MCScores(mean, predicted, of_predicted.mean(axis=0), of_predicted.std(axis=0), total,
                    np.maximum(total - entropy(p).mean(axis=0), 0.0))


def score_images(module, images: np.ndarray, passes: int = 30, seed: int = 0) -> MCScores:
    """MC-dropout scores of images ``(N, C, H, W)``: the public entry point (the truth tests use it)."""
    return mc_scores(mc_dropout_probabilities(module, images, passes, seed))
