"""NannyML's side of bench_estimation.py: CBPE or DLE on one input file, the figures as JSON.

    bench/.venv-nannyml/bin/python bench/nannyml_side.py INPUT.npz OUTPUT.json [--seed 0]

Runs inside NannyML's own virtual environment only (bench/.venv-nannyml, made by bench_estimation.py): it imports
nannyml, pandas and numpy, never auditlens. The input is an .npz file written by bench_estimation.py:

    problem           "classification_binary" | "classification_multiclass" | "regression"
    reference_y       (n,)   true class index (classification) or target (regression) of the labelled held-out rows
    reference_pred    (n,)   the model's predicted class index, or its predicted value
    reference_proba   (n, k) predicted probabilities in the model's class order (classification)
    reference_X       (n, d) features (regression: DLE models the loss from features and prediction)
    analysis_pred, analysis_proba, analysis_X         the same for the current rows
    analysis_y        (m,)   optional: the current rows' labels, only to have NannyML's own realised values

The whole analysis set is one chunk (chunk_number=1, so the reference is one chunk too). Binary: the positive
class is index 1. NannyML's confidence band is estimate +/- 3 x sampling error (nannyml.sampling_error's
SAMPLING_ERROR_RANGE for CBPE, a literal 3 in DLE), clipped to the metric's range: it is the spread of the metric
over samples of the chunk's size, estimated from the reference; it carries no term for the error of the estimator
itself (calibration, the loss model).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

os.environ.setdefault("NML_DISABLE_USAGE_LOGGING", "1")  # NannyML sends usage events unless told not to

started = time.perf_counter()
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import nannyml  # noqa: E402
from nannyml.sampling_error import SAMPLING_ERROR_RANGE  # noqa: E402

IMPORT_S = time.perf_counter() - started

CLASSIFICATION_METRICS = ["roc_auc", "f1", "precision", "recall", "accuracy"]
REGRESSION_METRICS = ["mae", "rmse"]
BAND = {
    "classification": f"estimate +/- {SAMPLING_ERROR_RANGE} x sampling_error, clipped to [0, 1]",
    "regression": "estimate +/- 3 x sampling_error, clipped at 0",
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help=".npz written by bench_estimation.py")
    parser.add_argument("output", help="JSON to write")
    parser.add_argument("--seed", type=int, default=0, help="DLE's LightGBM random_state")
    return parser.parse_args()


def classification_frames(data) -> tuple[pd.DataFrame, pd.DataFrame | None, pd.DataFrame, dict]:
    k = data["reference_proba"].shape[1]
    proba_columns = {index: f"proba_{index}" for index in range(k)}

    def frame(prefix: str, with_labels: bool) -> pd.DataFrame:
        columns = {name: data[f"{prefix}_proba"][:, index] for index, name in proba_columns.items()}
        columns["y_pred"] = data[f"{prefix}_pred"].astype(int)
        if with_labels:
            columns["y_true"] = data[f"{prefix}_y"].astype(int)
        return pd.DataFrame(columns)

    labelled = frame("analysis", True) if "analysis_y" in data.files else None
    return frame("reference", True), labelled, frame("analysis", False), proba_columns


def regression_frames(data) -> tuple[pd.DataFrame, pd.DataFrame | None, pd.DataFrame, list[str]]:
    d = data["reference_X"].shape[1]
    features = [f"x{index:02d}" for index in range(d)]

    def frame(prefix: str, with_labels: bool) -> pd.DataFrame:
        table = pd.DataFrame(data[f"{prefix}_X"], columns=features)
        table["y_pred"] = data[f"{prefix}_pred"].astype(float)
        if with_labels:
            table["y_true"] = data[f"{prefix}_y"].astype(float)
        return table

    labelled = frame("analysis", True) if "analysis_y" in data.files else None
    return frame("reference", True), labelled, frame("analysis", False), features


def build_estimator(problem: str, data, seed: int):
    if problem == "regression":
        reference, labelled, unlabelled, features = regression_frames(data)
        estimator = nannyml.DLE(
            feature_column_names=features,
            y_pred="y_pred",
            y_true="y_true",
            metrics=REGRESSION_METRICS,
            chunk_number=1,
            # LightGBM's defaults (what DLE fits without hyperparameters), quiet, one thread (a shared machine)
            hyperparameters={"random_state": seed, "n_jobs": 1, "verbosity": -1},
        )
        return estimator, reference, labelled, unlabelled, REGRESSION_METRICS
    reference, labelled, unlabelled, proba_columns = classification_frames(data)
    binary = problem == "classification_binary"
    estimator = nannyml.CBPE(
        problem_type=problem,
        y_pred_proba=proba_columns[1] if binary else proba_columns,
        y_pred="y_pred",
        y_true="y_true",
        metrics=CLASSIFICATION_METRICS,
        chunk_number=1,
    )
    return estimator, reference, labelled, unlabelled, CLASSIFICATION_METRICS


def analysis_row(result) -> pd.Series:
    frame = result.filter(period="analysis").to_df()
    if len(frame) != 1:
        raise RuntimeError(f"expected one analysis chunk, NannyML made {len(frame)}")
    return frame.iloc[0]


def calibration_used(estimator, problem: str) -> bool | dict | None:
    """Whether CBPE's check decided the reference scores need isotonic calibration (per class for multiclass)."""
    if problem == "classification_binary":
        return bool(estimator.needs_calibration)
    if problem == "classification_multiclass":
        return {str(cls): type(c).__name__ != "NoopCalibrator" for cls, c in estimator._calibrators.items()}
    return None


def main() -> int:
    args = parse_args()
    data = np.load(args.input, allow_pickle=False)
    problem = str(data["problem"])
    estimator, reference, labelled, unlabelled, metrics = build_estimator(problem, data, args.seed)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one reference chunk: NannyML warns that its alert thresholds are degenerate
        started = time.perf_counter()
        estimator.fit(reference)
        fit_s = time.perf_counter() - started
        started = time.perf_counter()
        row = analysis_row(estimator.estimate(unlabelled))  # what production has: no labels
        estimate_s = time.perf_counter() - started
        realised = analysis_row(estimator.estimate(labelled)) if labelled is not None else None

    figures = {}
    for metric in metrics:
        entry = {
            "estimate": float(row[(metric, "value")]),
            "lower_confidence_boundary": float(row[(metric, "lower_confidence_boundary")]),
            "upper_confidence_boundary": float(row[(metric, "upper_confidence_boundary")]),
            "sampling_error": float(row[(metric, "sampling_error")]),
        }
        if realised is not None:
            entry["realized"] = float(realised[(metric, "realized")])
            # the labels must not move the estimate: it is computed from scores (CBPE) or features (DLE) only
            same = np.isclose(float(realised[(metric, "value")]), entry["estimate"], rtol=0, atol=1e-12, equal_nan=True)
            entry["estimate_unchanged_with_labels"] = bool(same)
        figures[metric] = entry

    output = {
        "nannyml_version": nannyml.__version__,
        "versions": {"pandas": pd.__version__, "numpy": np.__version__, "python": sys.version.split()[0]},
        "method": "DLE" if problem == "regression" else "CBPE",
        "problem_type": problem,
        "rows": {"reference": int(len(reference)), "analysis": int(len(unlabelled))},
        "chunks": "chunk_number=1: the whole analysis set is one chunk",
        "band": BAND["regression" if problem == "regression" else "classification"],
        "calibration": calibration_used(estimator, problem),
        "metrics": figures,
        "seconds": {"import": IMPORT_S, "fit": fit_s, "estimate": estimate_s},
    }
    with open(args.output, "w", encoding="utf-8") as handle:
        json.dump(output, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
