"""A trained PyTorch classifier seen as a scikit-learn one, so every audit that works on a classifier
(performance, calibration with scikit-learn's temperature scaling, conformal sets, drift, OOD, projections)
works on a network too, and the network audits reach the module itself for gradients and embeddings.

Inputs arrive as the audits hold them: a DataFrame (or array) of flattened values, one column per input
element (``p{c}_{h}_{w}`` for images, see ``image_columns``), reshaped here to ``(N, *input_shape)``.

``fit`` trains the network from freshly initialised weights (seeded), which makes ``sklearn.base.clone``
plus ``fit`` work: the bootstrap ensemble and the shuffled-label sanity check retrain networks that way.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin


def require_torch():
    try:
        import torch
    except ImportError:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "PyTorch is not installed: network audits need the 'deep' extra "
            "(pip install -c requirements.lock -e '.[deep]'; it installs torch==2.13.0, the CPU build)"
        ) from None
    return torch


def image_columns(shape: Sequence[int]) -> list[str]:
    """Column names of a flattened (C, H, W) image, in C order: p{c}_{h}_{w}."""
    c, h, w = shape
    return [f"p{i}_{j}_{k}" for i in range(c) for j in range(h) for k in range(w)]


_TORCH_RNG = threading.RLock()


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Torch's global random generators seeded with ``seed`` for the block, then restored, one block at a time.

    Some of torch's and Captum's randomness (weight initialisation, dropout, NoiseTunnel's noise) can only draw
    from the global generators, and Prefect runs audits concurrently in threads: without the lock, two audits
    would interleave their draws and neither would be reproducible."""
    torch = require_torch()
    with _TORCH_RNG:
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield


def evaluating(module):
    """``module`` in eval mode; a torch.export program (MLflow's pt2 format) has no train/eval modes: as it is."""
    try:
        return module.eval()
    except NotImplementedError:
        return module


def network_of(context: Any) -> TorchClassifier:
    """The TorchClassifier behind an AuditContext's model (``network()``, ``as_tensor``, ``embed``, ``fit``)."""
    estimator = context.model.estimator
    if estimator is None or not hasattr(estimator, "network"):
        raise TypeError(f"{context.model.label} has no network() to reach its layers (a TorchClassifier is needed)")
    return estimator


def module_device(module):
    """The device a module's weights are on (CPU for a module without parameters)."""
    torch = require_torch()
    first = next(iter(module.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def module_tensor(module, array: Any):
    """A float32 tensor of ``array`` on ``module``'s device: what every network audit feeds the network."""
    torch = require_torch()
    if isinstance(array, torch.Tensor):
        return array.to(module_device(module), dtype=torch.float32)
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(module_device(module))


def as_array(X: Any) -> np.ndarray:
    if isinstance(X, pd.DataFrame):
        return X.to_numpy(dtype=np.float32)
    return np.asarray(X, dtype=np.float32)


class TorchClassifier(ClassifierMixin, BaseEstimator):
    """``module`` maps a float tensor ``(N, *input_shape)`` to class logits ``(N, n_classes)``.

    Use ``TorchClassifier.from_trained`` for a network trained elsewhere (a logged model); ``fit`` trains
    ``module``'s architecture from scratch with Adam and cross-entropy.
    """

    def __init__(self, module: Any, input_shape: tuple[int, ...], epochs: int = 30, lr: float = 1e-2,
                 batch_size: int = 64, weight_decay: float = 1e-4, random_state: int = 0, device: str = "cpu") -> None:
        self.module = module
        self.input_shape = input_shape
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.random_state = random_state
        self.device = device  # where the network runs and trains ("cpu", "cuda"); results are returned as numpy

    @classmethod
    def from_trained(cls, module: Any, classes: Sequence[Any], input_shape: Sequence[int], **params: Any) -> TorchClassifier:
        model = cls(module, tuple(int(s) for s in input_shape), **params)
        model.module_ = evaluating(module.to(model.device))
        model.classes_ = np.asarray(list(classes))
        return model

    # --- tensors -------------------------------------------------------------------------------
    def as_tensor(self, X: Any):
        """``X`` as a float32 tensor ``(N, *input_shape)`` on the CPU."""
        torch = require_torch()
        array = as_array(X)
        return torch.from_numpy(np.ascontiguousarray(array.reshape((len(array), *self.input_shape))))

    def network(self):
        """The trained module, in eval mode (a torch.export program, MLflow's pt2 format, has no modes: as is)."""
        return evaluating(self.module_)

    def logits(self, X: Any) -> np.ndarray:
        torch = require_torch()
        x = self.as_tensor(X)
        net = self.network()
        with torch.no_grad():
            parts = [net(module_tensor(net, x[i:i + 2048])).cpu().numpy() for i in range(0, len(x), 2048)]
        return np.concatenate(parts or [np.zeros((0, len(self.classes_)))]).astype(float)

    def predict_proba(self, X: Any) -> np.ndarray:
        z = self.logits(X)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, X: Any) -> np.ndarray:
        return self.classes_[np.argmax(self.logits(X), axis=1)]

    def embedding_layer(self):
        """The last ``nn.Linear``: its input is the network's penultimate-layer embedding."""
        torch = require_torch()
        linears = [m for m in self.module_.modules() if isinstance(m, torch.nn.Linear)]
        if not linears:
            raise ValueError("the network has no nn.Linear layer, so it has no penultimate-layer embedding")
        return linears[-1]

    def embed(self, X: Any) -> np.ndarray:
        """The penultimate-layer embedding (the input of the last linear layer), ``(N, d)``.

        The hook goes on a private copy of the network: audits run concurrently in threads, and a hook on the
        shared module would also catch the other audits' forward passes."""
        torch = require_torch()
        net = copy.deepcopy(self.network())
        linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
        if not linears:
            raise ValueError("the network has no nn.Linear layer, so it has no penultimate-layer embedding")
        captured: list = []
        linears[-1].register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach().cpu()))
        x = self.as_tensor(X)
        with torch.no_grad():
            for i in range(0, len(x), 2048):
                net(module_tensor(net, x[i:i + 2048]))
        if not captured:
            return np.zeros((0, 0))
        return torch.cat(captured).reshape(len(x), -1).numpy().astype(float)

    # --- training ------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any) -> TorchClassifier:
        torch = require_torch()
        self.classes_, codes = np.unique(np.asarray(y), return_inverse=True)
        with seeded(self.random_state):
            net = copy.deepcopy(self.module).cpu()
            for layer in net.modules():
                if hasattr(layer, "reset_parameters") and layer is not net:
                    layer.reset_parameters()  # on the CPU, seeded: the same initial weights on every device
            net = net.to(self.device)
            x, target = self.as_tensor(X).to(self.device), torch.from_numpy(codes.astype(np.int64)).to(self.device)
            optimiser = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            generator = torch.Generator().manual_seed(self.random_state)
            loss_fn = torch.nn.CrossEntropyLoss()
            net.train()  # dropout draws from the global generator: inside seeded()
            for _ in range(self.epochs):
                order = torch.randperm(len(x), generator=generator).to(self.device)
                for start in range(0, len(x), self.batch_size):
                    batch = order[start:start + self.batch_size]
                    optimiser.zero_grad()
                    loss_fn(net(x[batch]), target[batch]).backward()
                    optimiser.step()
        self.module_ = net.eval()
        return self

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags


# --- scikit-learn's MLPClassifier as a network ----------------------------------------------------
def is_sklearn_mlp(estimator: Any) -> bool:
    """An ``MLPClassifier``, alone or after ``StandardScaler`` steps in a ``Pipeline``."""
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    if isinstance(estimator, Pipeline):
        *before, last = [step for _, step in estimator.steps if step not in (None, "passthrough")]
        return isinstance(last, MLPClassifier) and all(isinstance(s, StandardScaler) for s in before)
    return isinstance(estimator, MLPClassifier)


def mlp_module(estimator: Any):
    """The same function as a fitted ``MLPClassifier`` (and its ``StandardScaler`` steps, folded into the first
    layer) as a torch ``nn.Sequential`` returning logits: softmax of them equals scikit-learn's predict_proba
    (a binary MLP's single logistic output z becomes the logits (0, z))."""
    torch = require_torch()
    from sklearn.pipeline import Pipeline

    steps = [s for _, s in estimator.steps if s not in (None, "passthrough")] if isinstance(estimator, Pipeline) else [estimator]
    *scalers, mlp = steps
    activations = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh, "logistic": torch.nn.Sigmoid, "identity": torch.nn.Identity}
    weights = [np.asarray(w, dtype=np.float64) for w in mlp.coefs_]
    biases = [np.asarray(b, dtype=np.float64) for b in mlp.intercepts_]
    for scaler in scalers:  # x' = (x - mean) / scale  ->  W' = W / scale, b' = b - (mean / scale) W
        mean = np.asarray(scaler.mean_ if scaler.with_mean else np.zeros(weights[0].shape[0]), dtype=np.float64)
        scale = np.asarray(scaler.scale_ if scaler.with_std else np.ones(weights[0].shape[0]), dtype=np.float64)
        biases[0] = biases[0] - (mean / scale) @ weights[0]
        weights[0] = weights[0] / scale[:, None]
    layers: list = [torch.nn.Flatten()]
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        linear = torch.nn.Linear(w.shape[0], w.shape[1])
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(w.T.astype(np.float32)))
            linear.bias.copy_(torch.from_numpy(b.astype(np.float32)))
        layers.append(linear)
        if i < len(weights) - 1:
            layers.append(activations[mlp.activation]())
    if mlp.out_activation_ == "logistic" and weights[-1].shape[1] == 1:
        layers.append(_BinaryLogits())
    return torch.nn.Sequential(*layers).eval()


def _binary_logits_module():
    torch = require_torch()

    class BinaryLogits(torch.nn.Module):
        """z -> (0, z): softmax gives (1 - sigmoid(z), sigmoid(z)), scikit-learn's binary probabilities."""

        def forward(self, z):
            return torch.cat([torch.zeros_like(z), z], dim=1)

    return BinaryLogits


def _BinaryLogits():  # noqa: N802 - builds the module class lazily (torch is optional)
    return _binary_logits_module()()


def network_from_sklearn_mlp(estimator: Any, input_shape: Sequence[int]) -> TorchClassifier:
    """A fitted MLPClassifier (or StandardScaler + MLPClassifier Pipeline) as a TorchClassifier with the same
    predictions, so the network audits (gradients, occlusion, embeddings) apply to it."""
    return TorchClassifier.from_trained(mlp_module(estimator), estimator.classes_, tuple(input_shape))
