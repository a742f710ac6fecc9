"""What each audit costs, on the demo's data and on the benchmark workload (pure path: no Prefect, no MLflow).

    .venv/bin/python bench/bench_parts.py [--seed 0] [--audits shap,lime,...] [--skip-bench]

- demo: the demo's breast-cancer classifier (gradient boosting in a Pipeline, 341 reference and
  228 current rows) audited with the logistic-regression version as its baseline;
- bench: the benchmark's 20,000 x 30 workload (make_classification, HistGradientBoostingClassifier),
  with a logistic regression as the baseline version.

Each audit runs once with its default configuration; the table gives seconds per audit and what
share of the whole plan each one takes. Figures also go to bench/out/parts.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def demo_context(seed: int):
    from audits.core.context import ModelUnderAudit, build_context
    from tasks.adapters.demo import breast_cancer, make_estimator

    data = breast_cancer(7, 0.4)
    X_ref, y_ref = data.reference.drop(columns=[data.target]), data.reference[data.target]
    X_cur, y_cur = data.current.drop(columns=[data.target]), data.current[data.target]
    model = make_estimator("gradient_boosting", X_ref, data.task, seed).fit(X_ref, y_ref)
    baseline = make_estimator("logistic_regression", X_ref, data.task, seed).fit(X_ref, y_ref)
    return build_context(ModelUnderAudit.from_estimator(model, name="demo-classifier", version="2"), (X_ref, y_ref), (X_cur, y_cur),
                         target=data.target, seed=seed,
                         baseline=ModelUnderAudit.from_estimator(baseline, name="demo-classifier", version="1"),
                         segments=(X_ref[["clinic", "size_class"]], X_cur[["clinic", "size_class"]]))


def bench_context(seed: int):
    import numpy as np
    import pandas as pd
    from sklearn.datasets import make_classification
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    from audits.core.context import ModelUnderAudit, build_context

    X, y = make_classification(n_samples=40_000, n_features=30, n_informative=10, random_state=seed)
    frame = pd.DataFrame(X, columns=[f"f{i:02d}" for i in range(30)])
    labels = pd.Series(y, name="label")
    X_ref, X_cur = frame.iloc[:20_000], frame.iloc[20_000:].copy()
    X_cur["f03"] = X_cur["f03"] + X_ref["f03"].std()
    model = HistGradientBoostingClassifier(max_iter=100, random_state=seed).fit(X_ref, labels.iloc[:20_000])
    baseline = LogisticRegression(max_iter=1000).fit(X_ref, labels.iloc[:20_000])
    assert np.isfinite(X_cur.to_numpy()).all()
    segment = pd.DataFrame({"segment": pd.qcut(frame["f05"], 4, labels=["q1", "q2", "q3", "q4"]).astype(str)})
    return build_context(ModelUnderAudit.from_estimator(model, name="bench-gbm", version="2"),
                         (X_ref, labels.iloc[:20_000]), (X_cur, labels.iloc[20_000:]), target="label", seed=seed,
                         baseline=ModelUnderAudit.from_estimator(baseline, name="bench-gbm", version="1"),
                         segments=(segment.iloc[:20_000], segment.iloc[20_000:]))


def time_audits(context, names: list[str]) -> dict[str, dict]:
    from audits.core.plan import PlannedAudit
    from audits.core.registry import get_audit_class
    from audits.core.runner import run_planned

    timings = {}
    for name in names:
        cls = get_audit_class(name)
        started = time.perf_counter()
        result = run_planned(PlannedAudit(name, cls(), cls.default_thresholds), context)
        timings[name] = {"seconds": time.perf_counter() - started, "verdict": result.verdict.value,
                         "reason": result.reason[:120]}
        print(f"  {name:24} {timings[name]['seconds']:7.2f} s  {result.verdict.value:7} {result.reason[:70]}", flush=True)
    return timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--audits", default="", help="comma-separated audit names (default: every registered audit)")
    parser.add_argument("--skip-bench", action="store_true", help="only the demo's data")
    args = parser.parse_args()
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    from audits.core.registry import available_audits

    names = [n for n in args.audits.split(",") if n] or list(available_audits())
    results = {}
    for label, build in (("demo", demo_context), ("bench", bench_context)):
        if label == "bench" and args.skip_bench:
            continue
        context = build(args.seed)
        print(f"{label}: {len(context.reference)} reference and {len(context.current)} current rows x {len(context.features)} features")
        results[label] = time_audits(context, names)
        total = sum(t["seconds"] for t in results[label].values())
        print(f"  {'all':24} {total:7.2f} s")
    out = REPO / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "parts.json").write_text(json.dumps(results, indent=2))
    print(f"\nfigures: {out / 'parts.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
