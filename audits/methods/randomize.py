"""Model randomisation for the sanity checks of explanations (Adebayo et al. 2018, "Sanity Checks for
Saliency Maps"): copies of a fitted model whose learned parameters are replaced by random values of
the same scale, cascading from the top of the model down.

Only the final estimator is randomised (inside a Pipeline the fitted preprocessing is kept), and
always on a deep copy: the audited model is never touched. The model is cut into *units* that are
randomised from the last to the first:

- tree ensembles (scikit-learn GradientBoosting*, HistGradientBoosting*, RandomForest*, ExtraTrees*,
  DecisionTree*, ExtraTree*): one unit per boosting stage or tree, the LAST trees first. Leaf values
  are replaced: regression trees (every boosted tree, forest regressors) by draws from a normal with
  the mean and standard deviation of all the ensemble's leaf values (per output); classification
  trees (forests, single trees), whose leaves hold class probabilities, by uniform draws on the
  probability simplex (Dirichlet(1, ..., 1)). Given data in the model's input space, the splits are
  randomised too: each inner node gets a feature drawn uniformly from the model's input columns and a
  threshold drawn uniformly between that column's 5th and 95th percentiles (covers, the training
  counts per node, are kept). The split structure is learned as much as the leaf values are: with
  leaves alone randomised, trees still split on the features that mattered, and every attribution
  method ranks those first however random the leaves (what a leaves-only check then measures is the
  structure, not the explanation). shap's TreeExplainer reads the nodes afresh when it is built and
  recomputes the inner nodes' expectations from the leaves, so it explains the randomised model;
- MLPs (MLPClassifier, MLPRegressor): one unit per layer, the output layer first; the layer's weights
  and biases are replaced by normal draws with the root mean square of that layer's own weights and
  biases (a re-initialisation at the trained scale);
- linear models (``coef_`` and ``intercept_``): ONE unit. A linear model has a single layer, so the
  cascade has a single step: every coefficient (and the intercept) is replaced at once by normal draws
  with the root mean square of the trained coefficients (intercept: of the trained intercept). A
  cascade over blocks of coefficients would only re-rank features by how many were left alone, which
  says nothing about the explanation method.

With ``steps`` steps and ``n`` units, step k randomises the last ceil(k * n / steps) units: with 30
trees and 4 steps, 8, 15, 23 and 30 trees; with a 2-layer MLP, 1, 1, 2 and 2 layers; a linear model
is fully randomised at every step. Every step reports the share it really randomised. Random values
are drawn once per unit, so a unit randomised at step k holds the same values at every later step.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from audits.methods.model_structure import dense, is_linear_model, split_pipeline


class UnsupportedModel(ValueError):
    """The final estimator is of a kind whose learned parameters we do not know how to randomise."""


@dataclass(frozen=True)
class RandomisedModel:
    estimator: Any  # a deep copy of the audited model (Pipeline included), final estimator randomised
    randomised: int  # units randomised, counted from the last
    total: int
    unit: str  # "trees", "layers", "coefficient sets"
    method: str  # how the parameters were replaced

    @property
    def share(self) -> float:
        return self.randomised / self.total

    @property
    def description(self) -> str:
        return f"last {self.randomised} of {self.total} {self.unit}"


@dataclass(frozen=True)
class RandomisationPlan:
    """How to randomise the last ``n`` units of a copy of one final estimator, random values drawn up front."""

    unit: str
    total: int
    apply: Callable[[Any, int], None]  # (final estimator of a copy, n) -> None; writes in place
    method: str


def units_at_step(step: int, steps: int, total: int) -> int:
    """Units randomised at cascade step ``step`` (1-based) of ``steps``."""
    return min(total, math.ceil(step * total / steps))


def cascade(estimator: Any, steps: int, rng: np.random.Generator, data: pd.DataFrame | None = None) -> list[RandomisedModel]:
    """One randomised copy of ``estimator`` per cascade step (steps sharing a unit count share a copy).

    ``data`` (rows in the model's input space, e.g. the reference) lets tree splits be randomised too;
    without it trees keep their learned splits and only their leaf values are replaced. Raises
    ``UnsupportedModel`` when the final estimator is not one this module can randomise.
    """
    preprocessor, final = split_pipeline(estimator)
    Xt = None
    if data is not None:  # the rows as the final estimator's trees see them
        inputs = preprocessor.transform(data) if preprocessor is not None else data
        encoder = getattr(final, "_preprocessor", None)  # HistGradientBoosting's own encoding of categorical columns
        Xt = dense(encoder.transform(inputs) if encoder is not None else inputs)
    plan = randomisation_plan(final, rng, Xt)
    copies: dict[int, Any] = {}
    out = []
    for step in range(1, steps + 1):
        n = units_at_step(step, steps, plan.total)
        if n not in copies:
            model = copy.deepcopy(estimator)
            plan.apply(split_pipeline(model)[1], n)
            copies[n] = model
        out.append(RandomisedModel(copies[n], n, plan.total, plan.unit, plan.method))
    return out


def randomisation_plan(final: Any, rng: np.random.Generator, Xt: np.ndarray | None = None) -> RandomisationPlan:
    """``Xt``: rows in the final estimator's input space, where random tree splits are drawn (None: keep splits)."""
    plan = _tree_plan(final, rng, Xt) or _mlp_plan(final, rng) or _linear_plan(final, rng)
    if plan is None:
        raise UnsupportedModel(
            f"no model randomisation for {type(final).__name__}: supported are scikit-learn tree ensembles, "
            "MLPs and linear models"
        )
    return plan


# --- trees -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _TreeArrays:
    """Writable views into one fitted tree: leaf values, and the split of every inner node."""

    values: np.ndarray  # sklearn: (nodes, outputs, classes); HistGradientBoosting: (nodes,)
    leaf: np.ndarray  # boolean mask
    feature: np.ndarray
    threshold: np.ndarray
    categorical: np.ndarray | None = None  # HistGradientBoosting: native categorical splits, switched off when randomised


def _tree_units(final: Any) -> list[list[_TreeArrays]] | None:
    """Per unit (boosting stage or tree), its trees; None when ``final`` is not a supported tree model."""
    from sklearn import ensemble, tree

    if isinstance(final, (ensemble.HistGradientBoostingClassifier, ensemble.HistGradientBoostingRegressor)):
        return [
            [_TreeArrays(p.nodes["value"], p.nodes["is_leaf"].astype(bool), p.nodes["feature_idx"], p.nodes["num_threshold"],
                         p.nodes["is_categorical"]) for p in iteration]
            for iteration in final._predictors
        ]

    def arrays(t: Any) -> _TreeArrays:
        return _TreeArrays(t.tree_.value, t.tree_.children_left == -1, t.tree_.feature, t.tree_.threshold)

    if isinstance(final, (ensemble.GradientBoostingClassifier, ensemble.GradientBoostingRegressor)):
        return [[arrays(t) for t in stage] for stage in final.estimators_]
    forests = (ensemble.RandomForestClassifier, ensemble.RandomForestRegressor,
               ensemble.ExtraTreesClassifier, ensemble.ExtraTreesRegressor)
    if isinstance(final, forests):
        return [[arrays(t)] for t in final.estimators_]
    if isinstance(final, (tree.DecisionTreeClassifier, tree.DecisionTreeRegressor)):  # ExtraTree* included
        return [[arrays(final)]]
    return None


def _split_ranges(Xt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per input column, where random thresholds are drawn: its 5th to 95th percentile (else min to max)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-missing column: no range, threshold 0
        lo, hi = np.nanquantile(Xt, [0.05, 0.95], axis=0)
        narrow = ~(hi > lo)
        lo[narrow], hi[narrow] = np.nanmin(Xt[:, narrow], axis=0), np.nanmax(Xt[:, narrow], axis=0)
    return np.nan_to_num(lo), np.nan_to_num(hi)


def _tree_plan(final: Any, rng: np.random.Generator, Xt: np.ndarray | None) -> RandomisationPlan | None:
    from sklearn import ensemble, tree

    units = _tree_units(final)
    if units is None:
        return None
    # Leaves of forest and single classification trees hold class probabilities; every other tree
    # here (boosted trees included) is a regression tree on some scale.
    simplex = isinstance(final, (ensemble.RandomForestClassifier, ensemble.ExtraTreesClassifier, tree.DecisionTreeClassifier))
    per_unit = len(units[0])
    pooled = [np.concatenate([unit[p].values[unit[p].leaf].ravel() for unit in units]) for p in range(per_unit)]
    scale = [(float(v.mean()), float(v.std()) or float(abs(v.mean())) or 1.0) for v in pooled]
    ranges = _split_ranges(Xt) if Xt is not None else None

    def draw(t: _TreeArrays, position: int) -> dict[str, np.ndarray]:
        leaves = t.values[t.leaf]
        if simplex:
            new = {"values": rng.dirichlet(np.ones(leaves.shape[-1]), size=leaves.shape[:-1])}
        else:
            new = {"values": rng.normal(*scale[position], size=leaves.shape)}
        if ranges is not None:
            inner = int((~t.leaf).sum())
            feature = rng.integers(0, len(ranges[0]), size=inner)
            new["feature"] = feature
            new["threshold"] = rng.uniform(ranges[0][feature], ranges[1][feature])
        return new

    # drawn once, from the last unit to the first: unit u holds the same values at every step
    draws = {u: [draw(t, p) for p, t in enumerate(units[u])] for u in reversed(range(len(units)))}

    def apply(copy_final: Any, n: int) -> None:
        copied = _tree_units(copy_final)
        for u in range(len(copied) - n, len(copied)):
            for t, new in zip(copied[u], draws[u], strict=True):
                t.values[t.leaf] = new["values"]
                if "feature" in new:
                    t.feature[~t.leaf] = new["feature"]
                    t.threshold[~t.leaf] = new["threshold"]
                    if t.categorical is not None:
                        t.categorical[~t.leaf] = 0

    leaves = ("leaf class probabilities replaced by uniform draws on the probability simplex" if simplex else
              "leaf values replaced by normal draws with the mean and standard deviation of the ensemble's leaf values")
    splits = ("; split features drawn uniformly from the model's input columns, thresholds uniformly between their "
              "5th and 95th reference percentiles (node covers kept as trained)" if ranges is not None else
              "; splits kept as trained (the learned structure stays)")
    return RandomisationPlan("trees", len(units), apply, leaves + splits)


# --- MLPs and linear models --------------------------------------------------------------------


def _rms(values: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(values)))) if np.size(values) else 0.0


def _same_scale(rng: np.random.Generator, values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    return rng.normal(0.0, _rms(values), size=values.shape)


def _mlp_plan(final: Any, rng: np.random.Generator) -> RandomisationPlan | None:
    from sklearn.neural_network import MLPClassifier, MLPRegressor

    if not isinstance(final, (MLPClassifier, MLPRegressor)):
        return None
    layers = len(final.coefs_)
    draws = {i: (_same_scale(rng, final.coefs_[i]), _same_scale(rng, final.intercepts_[i])) for i in reversed(range(layers))}

    def apply(copy_final: Any, n: int) -> None:
        for i in range(layers - n, layers):
            copy_final.coefs_[i] = draws[i][0].astype(copy_final.coefs_[i].dtype)
            copy_final.intercepts_[i] = draws[i][1].astype(copy_final.intercepts_[i].dtype)

    return RandomisationPlan("layers", layers, apply, "layer weights and biases replaced by normal draws at each layer's trained scale (RMS), output layer first")


def _linear_plan(final: Any, rng: np.random.Generator) -> RandomisationPlan | None:
    if not is_linear_model(final):
        return None
    coef, intercept = _same_scale(rng, final.coef_), _same_scale(rng, final.intercept_)

    def apply(copy_final: Any, n: int) -> None:
        copy_final.coef_ = coef.astype(np.asarray(copy_final.coef_).dtype)
        if np.ndim(copy_final.intercept_) == 0:
            copy_final.intercept_ = float(intercept)
        else:
            copy_final.intercept_ = intercept.astype(np.asarray(copy_final.intercept_).dtype)

    return RandomisationPlan("coefficient sets", 1, apply, "all coefficients and the intercept replaced at once by normal draws at their trained scale (RMS)")
