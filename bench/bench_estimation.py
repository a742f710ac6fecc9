"""Label-free performance estimation: ours (audits/methods/estimation.py) against NannyML's CBPE and DLE, same inputs.

    .venv/bin/python bench/bench_estimation.py  # [--seed 0 --seeds 5] [--workdir bench/out/estimation] [--scenarios]

NannyML (0.13.1) pins nothing we could live with and must never become a dependency of auditlens: it runs in its own
virtual environment, bench/.venv-nannyml (git-ignored), which this script makes when it is missing or its
requirements changed, and which runs bench/nannyml_side.py on one .npz file per scenario.

Every scenario is synthetic (scikit-learn generators, fixed seeds, nothing downloaded). A model is trained on one part
of a pool of rows; a labelled holdout is drawn from the same distribution (the reference NannyML fits on, the rows our
estimator recalibrates on); the current rows are drawn from the rest of the pool, uniformly or with weights that
depend on the features only. Selecting on x alone changes P(x) and leaves P(y | x) exactly as it was: a covariate
shift by construction. Concept drift re-draws some current labels instead.

    binary_shift        two classes; current rows weighted exp(-0.3 |z|^2): concentrated in the centre, where the
                        classes overlap, so accuracy drops
    binary_no_shift     two classes; current rows a uniform draw
    multiclass_shift    three classes; current rows weighted exp(1.5 (z_f00 + z_f08) / sqrt 2): a mean shift of about
                        one standard deviation along two features, a pair chosen because it lowers accuracy
    regression_shift    make_friedman1 plus noise whose spread grows with f05 (an input the mean ignores); current
                        rows weighted exp(3 (x_f00 + x_f05)): more rows where the noise is large, so MAE rises
    binary_concept      the current rows of binary_no_shift (same draw), but where z_f00 > 0 each label is flipped
                        with probability 0.4: P(y | x) changes, P(x) does not (no label-free method can see this)

For each scenario and metric: our estimate and band, NannyML's estimate and band (its own: estimate +/- 3 sampling
errors, clipped), and the realised value on the current labels (scikit-learn's metrics). Figures go to
<workdir>/estimation.json; each scenario's NannyML input and output stay in <workdir>/<scenario>/seed-<n>/. The
table shows the first seed; the summary counts, over every seed, how often each side's band held the realised value.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run as a script from anywhere: audits/ is imported from the checkout

NANNYML_VENV = REPO / "bench" / ".venv-nannyml"
NANNYML_SIDE = REPO / "bench" / "nannyml_side.py"
# nannyml 0.13.1's wheel leaves its libraries unpinned (pip then brings pandas 3, which it predates) and omits
# statsmodels, which it imports: these are the versions of its own poetry.lock at the 0.13.1 tag.
NANNYML_REQUIREMENTS = ("nannyml==0.13.1", "statsmodels==0.14.4", "numpy==2.0.2", "pandas==2.2.3",
                        "scikit-learn==1.6.0", "scipy==1.13.1")

SCENARIOS = ("binary_shift", "binary_no_shift", "multiclass_shift", "regression_shift", "binary_concept")
POOL_ROWS, TRAIN_ROWS, HOLDOUT_ROWS, CURRENT_ROWS = 80_000, 10_000, 5_000, 5_000
N_FEATURES = 10
CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc")
REGRESSION_METRICS = ("mae", "rmse")
OWNED = ("estimation.json", *SCENARIOS)  # what this script writes in the work folder; only these are wiped


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=REPO / "bench" / "out" / "estimation")
    parser.add_argument("--seeds", type=int, default=5,
                        help="how many seeds from --seed on (each a new pool, model and draw); the table shows the first")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated, of {', '.join(SCENARIOS)}")
    parser.add_argument("--resamples", type=int, default=None,
                        help="our classification band's calibrator bootstraps (default: estimate_classification's own)")
    parser.add_argument("--nannyml-venv", type=Path, default=NANNYML_VENV)
    args = parser.parse_args()
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = sorted(set(args.scenarios) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenarios {unknown}; choose from {SCENARIOS}")
    return args


# --- NannyML's virtual environment ---------------------------------------------------------------
def ensure_nannyml_venv(venv: Path) -> tuple[Path, float | None]:
    """The venv's python, made (or remade, when the pinned requirements changed) with venv and pip; seconds spent."""
    python = venv / "bin" / "python"
    stamp = venv / "bench-requirements.txt"
    wanted = "\n".join(NANNYML_REQUIREMENTS) + "\n"
    if python.exists() and stamp.exists() and stamp.read_text(encoding="utf-8") == wanted:
        return python, None
    started = time.perf_counter()
    print(f"making NannyML's virtual environment in {venv} (one to four minutes) ...", flush=True)
    if venv.exists():
        shutil.rmtree(venv)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    for command in (["--upgrade", "pip"], list(NANNYML_REQUIREMENTS)):
        # pip's output only when it fails (the mirror's configuration makes it warn about every package)
        pip = subprocess.run([str(python), "-m", "pip", "install", "--quiet", *command], capture_output=True, text=True)
        if pip.returncode != 0:
            sys.exit(f"pip install {' '.join(command)} failed in {venv}:\n{pip.stdout[-3000:]}\n{pip.stderr[-3000:]}")
    stamp.write_text(wanted, encoding="utf-8")
    return python, time.perf_counter() - started


def nannyml_versions(python: Path) -> dict:
    packages = [r.split("==")[0] for r in NANNYML_REQUIREMENTS] + ["lightgbm"]
    script = ("import importlib.metadata as m, json, sys; "
              "print(json.dumps({p: m.version(p) for p in sys.argv[1:]} | {'python': sys.version.split()[0]}))")
    out = subprocess.run([str(python), "-c", script, *packages], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


# --- scenarios -----------------------------------------------------------------------------------
def weighted_draw(rng, weights, size: int):
    """Rows drawn without replacement with probability proportional to weights (a function of x only)."""
    import numpy as np

    p = np.asarray(weights, float)
    return rng.choice(len(p), size=size, replace=False, p=p / p.sum())


def classification_scenario(name: str, seed: int) -> dict:
    import numpy as np
    from sklearn.datasets import make_classification
    from sklearn.ensemble import HistGradientBoostingClassifier

    classes = 3 if name.startswith("multiclass") else 2
    X, y = make_classification(n_samples=POOL_ROWS, n_features=N_FEATURES, n_informative=5, n_redundant=2,
                               n_classes=classes, flip_y=0.03, class_sep=1.0, random_state=seed)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    train, holdout, pool = np.split(order, [TRAIN_ROWS, TRAIN_ROWS + HOLDOUT_ROWS])
    model = HistGradientBoostingClassifier(max_iter=100, random_state=seed).fit(X[train], y[train])
    z = (X[pool] - X[train].mean(axis=0)) / X[train].std(axis=0)  # the pool in the training data's standard units
    if name == "binary_shift":
        shift = "weights exp(-0.3 |z|^2): current rows concentrated in the centre, where the classes overlap"
        current = pool[weighted_draw(rng, np.exp(-0.3 * (z ** 2).sum(axis=1)), CURRENT_ROWS)]
    elif name == "multiclass_shift":
        shift = "weights exp(1.5 (z_f00 + z_f08) / sqrt 2): a mean shift along two features"
        current = pool[weighted_draw(rng, np.exp(1.5 * (z[:, 0] + z[:, 8]) / np.sqrt(2)), CURRENT_ROWS)]
    else:  # binary_no_shift, binary_concept: a uniform draw
        shift = "none: a uniform draw from the pool"
        current = pool[rng.choice(len(pool), size=CURRENT_ROWS, replace=False)]
    current_y = y[current].copy()
    if name == "binary_concept":
        region = (X[current, 0] - X[train, 0].mean()) > 0
        flip = region & (rng.random(len(current)) < 0.4)
        current_y[flip] = 1 - current_y[flip]
        shift = (f"concept: where z_f00 > 0, labels flipped with probability 0.4 "
                 f"({int(flip.sum())} of {len(current)} rows)")
    return {
        "problem": "classification_binary" if classes == 2 else "classification_multiclass",
        "shift": shift,
        "model": "HistGradientBoostingClassifier(max_iter=100)",
        "holdout_X": X[holdout], "holdout_y": y[holdout], "holdout_proba": model.predict_proba(X[holdout]),
        "holdout_pred": model.predict(X[holdout]),
        "current_X": X[current], "current_y": current_y, "current_proba": model.predict_proba(X[current]),
        "current_pred": model.predict(X[current]),
    }


def regression_scenario(seed: int) -> dict:
    import numpy as np
    from sklearn.datasets import make_friedman1
    from sklearn.ensemble import HistGradientBoostingRegressor

    X, y = make_friedman1(n_samples=POOL_ROWS, n_features=N_FEATURES, noise=0.0, random_state=seed)
    rng = np.random.default_rng(seed)
    y = y + rng.normal(0.0, 0.5 + 3.0 * X[:, 5] ** 2)  # f05 does not enter the mean: it only sets the noise
    order = rng.permutation(len(y))
    train, holdout, pool = np.split(order, [TRAIN_ROWS, TRAIN_ROWS + HOLDOUT_ROWS])
    model = HistGradientBoostingRegressor(max_iter=200, random_state=seed).fit(X[train], y[train])
    current = pool[weighted_draw(rng, np.exp(3.0 * (X[pool, 0] + X[pool, 5])), CURRENT_ROWS)]
    return {
        "problem": "regression",
        "shift": "weights exp(3 (x_f00 + x_f05)): more rows where the noise is large (f05) and f00 is high",
        "model": "HistGradientBoostingRegressor(max_iter=200)",
        "holdout_X": X[holdout], "holdout_y": y[holdout], "holdout_pred": model.predict(X[holdout]),
        "current_X": X[current], "current_y": y[current], "current_pred": model.predict(X[current]),
    }


def build_scenario(name: str, seed: int) -> dict:
    return regression_scenario(seed) if name == "regression_shift" else classification_scenario(name, seed)


# --- the realised figures (scikit-learn, on the current labels) -----------------------------------
def realised(s: dict) -> dict[str, float]:
    import numpy as np
    from sklearn import metrics as skm

    y, pred = s["current_y"], s["current_pred"]
    if s["problem"] == "regression":
        return {"mae": float(skm.mean_absolute_error(y, pred)), "rmse": float(np.sqrt(skm.mean_squared_error(y, pred)))}
    k = s["current_proba"].shape[1]
    average = "binary" if k == 2 else "macro"
    labels = np.arange(k)
    return {
        "accuracy": float(skm.accuracy_score(y, pred)),
        "precision": float(skm.precision_score(y, pred, labels=labels, average=average, zero_division=0)),
        "recall": float(skm.recall_score(y, pred, labels=labels, average=average, zero_division=0)),
        "f1": float(skm.f1_score(y, pred, labels=labels, average=average, zero_division=0)),
        "roc_auc": float(skm.roc_auc_score(y, s["current_proba"][:, 1]) if k == 2
                         else skm.roc_auc_score(y, s["current_proba"], multi_class="ovr", average="macro")),
    }


# --- the two sides -------------------------------------------------------------------------------
def ours(s: dict, seed: int, resamples: int | None) -> dict:
    import pandas as pd

    from audits.methods import estimation

    started = time.perf_counter()
    if s["problem"] == "regression":
        columns = [f"x{i:02d}" for i in range(N_FEATURES)]
        result = estimation.estimate_regression(
            pd.DataFrame(s["holdout_X"], columns=columns), s["holdout_y"], s["holdout_pred"],
            pd.DataFrame(s["current_X"], columns=columns), s["current_pred"], seed=seed)
    else:
        options = {"seed": seed} | ({"resamples": resamples} if resamples is not None else {})
        result = estimation.estimate_classification(s["holdout_proba"], s["holdout_y"], s["current_proba"],
                                                    s["current_pred"], **options)
    seconds = time.perf_counter() - started
    metrics = {k: v for k, v in result.items() if k in CLASSIFICATION_METRICS + REGRESSION_METRICS}
    extra = {k: v for k, v in result.items() if k not in metrics}
    return {"metrics": metrics, "seconds": seconds, **({"extra": extra} if extra else {})}


def nannyml_input(s: dict, path: Path) -> None:
    import numpy as np

    arrays = {"problem": s["problem"], "reference_y": s["holdout_y"], "reference_pred": s["holdout_pred"],
              "analysis_y": s["current_y"], "analysis_pred": s["current_pred"]}
    if s["problem"] == "regression":
        arrays |= {"reference_X": s["holdout_X"], "analysis_X": s["current_X"]}
    else:
        arrays |= {"reference_proba": s["holdout_proba"], "analysis_proba": s["current_proba"]}
    np.savez(path, **arrays)


def nannyml(s: dict, python: Path, folder: Path, seed: int) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    source, target = folder / "nannyml_input.npz", folder / "nannyml_output.json"
    nannyml_input(s, source)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "NML_DISABLE_USAGE_LOGGING": "1"}
    env.pop("PYTHONPATH", None)  # nothing of auditlens's environment leaks into NannyML's
    started = time.perf_counter()
    run = subprocess.run([str(python), str(NANNYML_SIDE), str(source), str(target), "--seed", str(seed)],
                         capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if run.returncode != 0:
        raise RuntimeError(f"nannyml_side.py failed ({run.returncode}):\n{run.stderr[-4000:]}")
    return {**json.loads(target.read_text(encoding="utf-8")), "process_s": seconds}


# --- reporting -----------------------------------------------------------------------------------
def inside(value: float, low: float, high: float) -> bool:
    return bool(low <= value <= high)


def compare(name: str, s: dict, truth: dict, our: dict | None, theirs: dict) -> list[dict]:
    rows = []
    for metric in REGRESSION_METRICS if s["problem"] == "regression" else CLASSIFICATION_METRICS:
        t = theirs["metrics"][metric]
        low, high = t["lower_confidence_boundary"], t["upper_confidence_boundary"]
        row = {"scenario": name, "metric": metric, "realised": truth[metric],
               "nannyml": {"estimate": t["estimate"], "low": t["lower_confidence_boundary"],
                           "high": t["upper_confidence_boundary"], "sampling_error": t["sampling_error"],
                           "inside": inside(truth[metric], low, high),
                           "error": t["estimate"] - truth[metric],
                           # what a 95 % band of the same kind would be: +/- 1.96 sampling errors
                           "inside_1.96se": inside(truth[metric], t["estimate"] - 1.96 * t["sampling_error"],
                                                   t["estimate"] + 1.96 * t["sampling_error"])},
               "nannyml_realised_matches": bool(abs(t.get("realized", float("nan")) - truth[metric]) < 1e-9)}
        if our is not None:
            o = our["metrics"][metric]
            row["ours"] = {**o, "inside": inside(truth[metric], o["low"], o["high"]),
                           "error": o["estimate"] - truth[metric]}
        rows.append(row)
    return rows


def fmt(x: float) -> str:
    return f"{x:.3f}"


def table(rows: list[dict]) -> str:
    lines = ["| scenario | metric | realised | ours: estimate [band] | NannyML: estimate [band] |",
             "|---|---|---|---|---|"]
    for r in rows:
        n = r["nannyml"]
        theirs = f"{fmt(n['estimate'])} [{fmt(n['low'])}, {fmt(n['high'])}]{'' if n['inside'] else ' (out)'}"
        if "ours" in r:
            o = r["ours"]
            mine = f"{fmt(o['estimate'])} [{fmt(o['low'])}, {fmt(o['high'])}]{'' if o['inside'] else ' (out)'}"
        else:
            mine = "not available"
        lines.append(f"| {r['scenario']} | {r['metric']} | {fmt(r['realised'])} | {mine} | {theirs} |")
    return "\n".join(lines)


def summary(rows: list[dict]) -> dict:
    """Per side: how often the realised value fell inside the band, how far the estimates were, how wide the bands;
    classification (probabilities) and regression (the target's units) apart, concept drift apart."""
    import numpy as np

    def figures(picked: list[dict], side: str) -> dict:
        if not picked:
            return {}
        out = {"inside_band": f"{sum(r[side]['inside'] for r in picked)} of {len(picked)}",
               "mean_abs_error": float(np.mean([abs(r[side]["error"]) for r in picked])),
               "mean_band_width": float(np.mean([r[side]["high"] - r[side]["low"] for r in picked]))}
        if side == "nannyml":
            out["inside_1.96se"] = f"{sum(r[side]['inside_1.96se'] for r in picked)} of {len(picked)}"
        return out

    out = {}
    for side in ("ours", "nannyml"):
        picked = [r for r in rows if side in r]
        if not picked:
            continue
        out[side] = {
            "classification, covariate shift or none": figures(
                [r for r in picked if r["metric"] in CLASSIFICATION_METRICS and r["scenario"] != "binary_concept"], side),
            "regression": figures([r for r in picked if r["metric"] in REGRESSION_METRICS], side),
            "concept drift (invisible by design)": figures([r for r in picked if r["scenario"] == "binary_concept"], side),
            "per scenario, inside band": {
                name: f"{sum(r[side]['inside'] for r in picked if r['scenario'] == name)} of "
                      f"{sum(1 for r in picked if r['scenario'] == name)}"
                for name in dict.fromkeys(r["scenario"] for r in picked)},
        }
    return out


def code_version() -> dict:
    """The commit, and the estimator file's own hash: it may be uncommitted or changed since."""
    import hashlib

    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        head = "unknown"
    source = REPO / "audits" / "methods" / "estimation.py"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12] if source.exists() else None
    return {"commit": head, "estimation_py_sha256": digest}


def estimator_defaults() -> dict:
    """The keyword defaults of our two functions as this run found them (what the audit runs unless configured)."""
    import inspect

    from audits.methods import estimation

    return {name: {k: p.default for k, p in inspect.signature(getattr(estimation, name)).parameters.items()
                   if p.default is not inspect.Parameter.empty}
            for name in ("estimate_classification", "estimate_regression")}


def main() -> int:
    args = parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    for name in OWNED:
        path = args.workdir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    python, venv_s = ensure_nannyml_venv(args.nannyml_venv)

    version = code_version()  # before the import: the estimator's file is what this run imports, not what is there later
    started = time.perf_counter()
    import sklearn.ensemble  # noqa: F401 -- loads numpy's BLAS and scikit-learn's OpenMP, so that the limit reaches them
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)  # a shared two-core machine; NannyML's side runs on one thread too
    try:
        import audits.methods.estimation  # noqa: F401
        ours_available, ours_missing = True, None
    except ImportError as exc:
        ours_available, ours_missing = False, str(exc)
        print(f"our estimator is not importable ({exc}): NannyML's side only")

    rows, runs = [], {}
    seeds = [args.seed + i for i in range(args.seeds)]
    for seed in seeds:
        scenarios = runs.setdefault(seed, {})
        for name in args.scenarios:
            t0 = time.perf_counter()
            s = build_scenario(name, seed)
            build_s = time.perf_counter() - t0
            truth = realised(s)
            our = ours(s, seed, args.resamples) if ours_available else None
            theirs = nannyml(s, python, args.workdir / name / f"seed-{seed}", seed)
            rows += [{"seed": seed, **row} for row in compare(name, s, truth, our, theirs)]
            scenarios[name] = {
                "problem": s["problem"], "shift": s["shift"], "model": s["model"],
                "rows": {"train": TRAIN_ROWS, "holdout": HOLDOUT_ROWS, "current": CURRENT_ROWS},
                "realised": truth,
                "holdout_realised": realised({**s, "current_y": s["holdout_y"], "current_pred": s["holdout_pred"],
                                              **({"current_proba": s["holdout_proba"]} if "holdout_proba" in s else {})}),
                "ours": our, "nannyml": theirs,
                "seconds": {"build": build_s, "ours": our["seconds"] if our else None,
                            "nannyml_process": theirs["process_s"]},
            }
            ours_s = our["seconds"] if our else float("nan")
            print(f"seed {seed}, {name}: built in {build_s:.1f} s, ours {ours_s:.1f} s, "
                  f"NannyML {theirs['process_s']:.1f} s (import {theirs['seconds']['import']:.1f})", flush=True)
    total_s = time.perf_counter() - started

    results = {
        "seeds": seeds,
        "code_version": version,
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "nannyml_venv": {"path": str(args.nannyml_venv), "made_in_s": venv_s, "versions": nannyml_versions(python)},
        "ours_available": ours_available,
        **({"ours_missing": ours_missing} if ours_missing else {"ours_defaults": estimator_defaults()}),
        "resamples": args.resamples,
        "bands": {
            "ours": "the central 95 % the method's own docstring describes (audits/methods/estimation.py)",
            "nannyml": "estimate +/- 3 sampling errors (sampling error from the reference, scaled to the chunk's "
                       "size), clipped to the metric's range",
        },
        "runs": runs,
        "rows": rows,
        "summary": summary(rows),
        "total_s": total_s,
    }
    out = args.workdir / "estimation.json"
    out.write_text(json.dumps(results, indent=2, default=float), encoding="utf-8")
    print()
    print(f"seed {seeds[0]}:")
    print(table([r for r in rows if r["seed"] == seeds[0]]))
    print()
    for name, s in runs[seeds[0]].items():
        print(f"{name}: {s['shift']}; holdout accuracy/MAE "
              f"{s['holdout_realised'].get('accuracy', s['holdout_realised'].get('mae')):.3f}")
    print()
    print(f"over seeds {seeds[0]}..{seeds[-1]}:" if len(seeds) > 1 else f"seed {seeds[0]}:")
    print(json.dumps(results["summary"], indent=2))
    print(f"\n{total_s:.1f} s after the venv existed" + (f" (the venv took {venv_s:.0f} s)" if venv_s else ""))
    print(f"figures: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
