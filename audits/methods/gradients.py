"""Gradient-based attributions of a network's output, through Captum (not our own code): plain gradients
(saliency), SmoothGrad (gradients averaged over noisy copies of the input) and integrated gradients.

``attribute`` is the one entry point the network audits share (the attribution audit, the sanity checks):
it takes the module, a float32 batch ``(N, *shape)`` and the class index to explain per row, and returns a
float array of the batch's shape. The module is put in eval mode; nothing is left attached to it.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from audits.methods.network import evaluating, module_tensor, require_torch, seeded

Method = Literal["gradients", "smoothgrad", "integrated_gradients"]
METHODS: tuple[Method, ...] = ("gradients", "smoothgrad", "integrated_gradients")


def attribute(module, x: np.ndarray, targets: np.ndarray, method: Method, *, seed: int = 0, smoothgrad_samples: int = 25,
              smoothgrad_noise: float = 0.15, ig_steps: int = 32, baseline: float = 0.0,
              return_delta: bool = False):
    """Attributions ``(N, *shape)`` for ``method``; with ``return_delta`` (integrated gradients only) also the
    per-row completeness gap ``sum(attr) - (f(x) - f(baseline))`` of the target logit.

    ``gradients`` are absolute (saliency maps, as in Adebayo et al. 2018); SmoothGrad averages absolute gradients
    over ``smoothgrad_samples`` copies with Gaussian noise of ``smoothgrad_noise`` times the batch's value range;
    integrated gradients are signed, from a constant ``baseline`` image.
    """
    torch = require_torch()
    from captum.attr import IntegratedGradients, NoiseTunnel, Saliency

    module = evaluating(module)
    inputs = module_tensor(module, x).requires_grad_()
    target = torch.from_numpy(np.asarray(targets, dtype=np.int64)).to(inputs.device)
    delta = None
    if method == "gradients":
        out = Saliency(module).attribute(inputs, target=target, abs=True)
    elif method == "smoothgrad":
        spread = float(x.max() - x.min()) or 1.0
        with seeded(seed):  # NoiseTunnel draws its noise from torch's global generator
            out = NoiseTunnel(Saliency(module)).attribute(inputs, nt_type="smoothgrad", nt_samples=smoothgrad_samples,
                                                          nt_samples_batch_size=smoothgrad_samples,
                                                          stdevs=smoothgrad_noise * spread, target=target, abs=True)  # fmt: skip
    elif method == "integrated_gradients":
        base = torch.full_like(inputs, float(baseline))
        out, delta = IntegratedGradients(module).attribute(inputs, baselines=base, target=target, n_steps=ig_steps,
                                                           method="gausslegendre", return_convergence_delta=True)  # fmt: skip
    else:
        raise ValueError(f"unknown attribution method {method!r}: use one of {METHODS}")
    result = out.detach().cpu().numpy().astype(float)
    if return_delta:
        return result, (None if delta is None else delta.detach().cpu().numpy().astype(float))
    return result
