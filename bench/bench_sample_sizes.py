"""What each sample-mode audit can afford: its time on a sample of n rows a side, for growing n, one process.

    .venv/bin/python bench/bench_sample_sizes.py [--rows 2000 20000 100000] [--seed 0] [--out bench/out/sample_sizes.json]

Workload: make_classification with 30 features (5 informative), reference = training data, current = the same
distribution; a HistGradientBoostingClassifier (100 trees). Each tabular sample-mode audit runs with its default
configuration on a context of n rows a side (predictions made once, outside the timing), once per n.

The figure that sets an audit's default ``sample_rows`` (``Audit.default_sample_rows``) is how its time grows with n:
an audit whose time stays flat (it draws its own small subsample: SHAP's 200 rows, t-SNE's 2,000) gains nothing from
a larger sample and keeps 20,000; an audit whose time grows with n gets the n at which it stays within ``--budget-s``
(60 s on one core by default), rounded down to a round number.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[2_000, 20_000, 100_000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", default=None, help="audit names (default: every tabular sample-mode audit)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "sample_sizes.json")
    args = parser.parse_args()

    import pandas as pd
    from sklearn.datasets import make_classification
    from sklearn.ensemble import HistGradientBoostingClassifier

    from audits.core.context import ModelUnderAudit, build_context
    from audits.core.partial import audit_mode
    from audits.core.registry import available_audits, get_audit_class

    n_max = max(args.rows)
    X, y = make_classification(n_samples=2 * n_max, n_features=30, n_informative=5, random_state=args.seed)
    frame = pd.DataFrame(X, columns=[f"f{i:02d}" for i in range(30)])
    labels = pd.Series(y, name="label")
    model = HistGradientBoostingClassifier(random_state=args.seed).fit(frame.iloc[:n_max], labels.iloc[:n_max])
    under = ModelUnderAudit.from_estimator(model, uri="bench://gbm", name="bench-gbm", version="1")
    names = args.only or [n for n in available_audits()
                          if audit_mode(get_audit_class(n)()) == "sample"]
    results: dict[str, dict[str, float | str]] = {}
    for n in args.rows:
        context = build_context(under, (frame.iloc[:n], labels.iloc[:n]),
                                (frame.iloc[n_max:n_max + n].reset_index(drop=True), labels.iloc[n_max:n_max + n].reset_index(drop=True)),
                                target="label", seed=args.seed, baseline=None, baseline_note="none in this bench")
        for name in names:
            audit = get_audit_class(name)()
            reason = audit.skip_reason(context)
            if reason:
                results.setdefault(name, {})["skipped"] = reason
                continue
            started = time.perf_counter()
            try:
                result = audit.compute(context)
                outcome = result.verdict.value
            except Exception as exc:  # noqa: BLE001 (reported)
                outcome = f"{type(exc).__name__}: {exc}"[:120]
            seconds = time.perf_counter() - started
            results.setdefault(name, {})[str(n)] = round(seconds, 3)
            print(f"{name:24s} n={n:>8,}  {seconds:8.2f} s  {outcome}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
