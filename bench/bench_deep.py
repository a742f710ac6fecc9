"""What explaining and doubting a network costs, on the demo's digits CNN (pure path: no Prefect, no MLflow).

    .venv/bin/python bench/bench_deep.py [--seed 0] [--rows 20] [--device cpu|cuda] [--skip-audits]

1. SHAP on the network: DeepExplainer (DeepLIFT through the layers) against the model-agnostic KernelExplainer
   over the 64 pixels, on the same rows and both explaining the logits; the ratio of their times in this one
   run, and how far the two agree (Pearson correlation of the attributions, additivity error of each).
2. The whole network audit: every audit of the demo's digits plan, each timed, on this machine's CPU (or
   ``--device cuda``: the network, its inputs and everything trained on them on the GPU).

Figures also go to bench/out/deep.json (or deep-<device>.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("MPLBACKEND", "Agg")

NETWORK_PLAN = ["performance", "calibration", "conformal", "ood", "network_attributions", "occlusion", "network_sanity",
                "mc_dropout", "autoencoder_ood", "embedding_projections", "embedding_prototypes"]


def digits_context(seed: int, device: str):
    """The demo's digits data (15 % inverted and 10 % noise in the current rows) and CNN, on ``device``."""
    import numpy as np

    from audits.core.context import ModelUnderAudit, build_context
    from tasks.adapters.demo import digits, make_estimator

    data = digits(7, 0.4)
    X_ref, y_ref = data.reference.drop(columns=[data.target]), data.reference[data.target]
    X_cur, y_cur = data.current.drop(columns=[data.target]), data.current[data.target]
    began = time.perf_counter()
    model = make_estimator("cnn", X_ref, "classification", seed).set_params(device=device).fit(X_ref, y_ref)
    trained = time.perf_counter() - began
    accuracy = float(np.mean(model.predict(X_cur) == y_cur.to_numpy()))
    context = build_context(ModelUnderAudit.from_estimator(model, flavor="pytorch", name="demo-digits", version="1"),
                            (X_ref, y_ref), (X_cur, y_cur), target=data.target, seed=seed, modality="image",
                            input_shape=(1, 8, 8))  # fmt: skip
    return context, {"train_s": round(trained, 2), "current_accuracy": round(accuracy, 4), "reference_rows": len(X_ref),
                     "current_rows": len(X_cur)}


def shap_deep_vs_kernel(context, rows: int, seed: int) -> dict:
    import numpy as np
    import shap
    import torch

    from audits.methods.network import module_tensor

    model = context.model.estimator
    rng = np.random.default_rng(seed)
    background = context.images(context.reference)[rng.choice(len(context.reference), 50, replace=False)]
    x = context.images(context.current)[:rows]
    net = model.network()
    with torch.no_grad():
        logits = net(module_tensor(net, x)).cpu().numpy()

    began = time.perf_counter()
    import copy

    deep = shap.DeepExplainer(copy.deepcopy(net), module_tensor(net, background))
    deep_values = np.asarray(deep.shap_values(module_tensor(net, x), check_additivity=False))  # (rows, 1, 8, 8, classes)
    deep_s = time.perf_counter() - began
    deep_error = float(np.abs(deep_values.reshape(rows, -1, logits.shape[1]).sum(1) + np.asarray(deep.expected_value) - logits).max())

    def f(flat):
        with torch.no_grad():
            return net(module_tensor(net, flat.reshape(-1, *x.shape[1:]).astype(np.float32))).cpu().numpy()

    began = time.perf_counter()
    summary = shap.kmeans(background.reshape(len(background), -1), 10)
    kernel = shap.KernelExplainer(f, summary, seed=seed)
    kernel_values = np.asarray(kernel.shap_values(x.reshape(rows, -1), silent=True))  # (rows, 64, classes)
    kernel_s = time.perf_counter() - began
    kernel_error = float(np.abs(kernel_values.sum(1) + np.asarray(kernel.expected_value) - logits).max())
    correlation = float(np.corrcoef(deep_values.reshape(-1), kernel_values.reshape(-1))[0, 1])
    return {"rows": rows, "deep_s": round(deep_s, 3), "kernel_s": round(kernel_s, 3),
            "ratio_deep_to_kernel": round(deep_s / kernel_s, 4), "kernel_nsamples": "auto (2 x 64 + 2048)",
            "kernel_background": "shap.kmeans of the same 50 background rows, 10 centres",
            "additivity_max_error_deep": deep_error, "additivity_max_error_kernel": kernel_error,
            "pearson_deep_vs_kernel": round(correlation, 4)}  # fmt: skip


def network_audit(context, plan: list[str]) -> dict:
    from audits.core.plan import PlannedAudit
    from audits.core.registry import get_audit_class
    from audits.core.runner import run_planned

    timings, verdicts, reasons = {}, {}, {}
    for name in plan:
        cls = get_audit_class(name)
        began = time.perf_counter()
        result = run_planned(PlannedAudit(name, cls(), cls.default_thresholds), context)
        timings[name] = round(time.perf_counter() - began, 3)
        verdicts[name] = result.verdict.value
        reasons[name] = result.reason[:300]
        if result.verdict.value == "ERROR":
            print(result.info.get("traceback", result.reason)[-2500:])
    return {"seconds": timings, "total_s": round(sum(timings.values()), 2), "verdicts": verdicts, "reasons": reasons}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-audits", action="store_true")
    parser.add_argument("--audits", default=",".join(NETWORK_PLAN), help="comma-separated audits (default: the demo's network plan)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    context, setup = digits_context(args.seed, args.device)
    report = {"device": args.device, "cuda": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None,
              "cpu_count": os.cpu_count(), "machine": platform.machine(), "torch": torch.__version__, "setup": setup}  # fmt: skip
    report["shap"] = shap_deep_vs_kernel(context, args.rows, args.seed)
    s = report["shap"]
    print(f"SHAP on the digits CNN, {s['rows']} rows: DeepExplainer {s['deep_s']:.2f} s, KernelExplainer {s['kernel_s']:.2f} s, "
          f"ratio {s['ratio_deep_to_kernel']:.3f}; agreement r = {s['pearson_deep_vs_kernel']:.3f}; additivity "
          f"deep {s['additivity_max_error_deep']:.1e}, kernel {s['additivity_max_error_kernel']:.1e}")  # fmt: skip
    if not args.skip_audits:
        report["network_audit"] = network_audit(context, args.audits.split(","))
        for name, seconds in report["network_audit"]["seconds"].items():
            print(f"  {name:22s} {seconds:7.2f} s  {report['network_audit']['verdicts'][name]}")
        print(f"whole network audit on {args.device}: {report['network_audit']['total_s']:.1f} s "
              f"(network trained in {setup['train_s']:.1f} s, current accuracy {setup['current_accuracy']:.3f})")
    out = args.out or REPO / "bench" / "out" / ("deep.json" if args.device == "cpu" else f"deep-{args.device.split(':')[0]}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"figures: {out}")


if __name__ == "__main__":
    main()
