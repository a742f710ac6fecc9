"""The contract every audit keeps, as checks anyone can run (scikit-learn's ``check_estimator`` is the model).

A third-party audit is checked the way the built-ins are::

    from audits.testing import check_audit
    check_audit(MyAudit)                     # every modality it is made for; AssertionError names the broken rule

or, in pytest, one test per audit and context (the project's own contract test is exactly this)::

    from audits.testing import parametrize_audits, check_audit_on
    @parametrize_audits()                    # every registered audit (built-ins and plugins) x every context
    def test_contract(audit_class, context_name):
        check_audit_on(audit_class, context_name)

The contexts are small, generated datasets of every modality (nothing is downloaded): a tabular classifier and a
regressor (scikit-learn pipelines with a categorical and a missing value), images (scikit-learn's 8x8 digits and a
small CNN; needs the ``deep`` extra) and text (generated job adverts, TF-IDF and logistic regression).

The contract: an audit that does not apply is SKIPPED with its own reason and no metrics; one that applies does not
raise, reports metrics under its own name with keys MLflow accepts, gives the same metrics, tables and figures twice
under one seed, leaves its inputs untouched, returns a result that serialises to JSON, and leaves no figure open in
pyplot's global state.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable

import numpy as np
import pandas as pd

from audits.core.audit import Audit
from audits.core.context import AuditContext, ModelUnderAudit, build_context
from audits.core.plan import PlannedAudit
from audits.core.result import AuditResult, Verdict, is_valid_key
from audits.core.runner import run_planned

CONTEXTS = ("classifier_context", "regressor_context", "image_context", "text_context")

# ------------------------------------------------------------------------------------------------ small datasets


def make_tabular(n: int = 400, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    """Binary task: y depends on x1, x2 and the category 'colour'; 'noise' is pure noise. Some x3 missing."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(
        {
            "x1": rng.normal(size=n),
            "x2": rng.normal(size=n),
            "x3": rng.normal(size=n),
            "noise": rng.normal(size=n),
            "colour": pd.Series(rng.choice(["red", "green", "blue"], n), dtype="str"),
        }
    )
    X.loc[rng.random(n) < 0.05, "x3"] = np.nan
    logit = 2 * X["x1"] - 1.5 * X["x2"] + 0.5 * X["x3"].fillna(0) + (X["colour"] == "red") * 1.5
    y = pd.Series(np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "yes", "no"), name="label")
    return X, y


def make_regression(n: int = 300, seed: int = 1) -> tuple[pd.DataFrame, pd.Series]:
    """y = 3 x1 + x2^2 + a little noise, on make_tabular's columns."""
    rng = np.random.default_rng(seed)
    X, _ = make_tabular(n, seed=seed)
    y = pd.Series(3 * X["x1"] + X["x2"] ** 2 + rng.normal(scale=0.1, size=len(X)), name="target")
    return X, y


def make_pipeline_model(X: pd.DataFrame, y: pd.Series, final: str = "gbm"):
    """A fitted scikit-learn Pipeline: imputation with indicators, scaling, one-hot categoricals, then ``final``."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor, RandomForestRegressor
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    categorical = [c for c in X.columns if not pd.api.types.is_numeric_dtype(X[c])]
    numeric = [c for c in X.columns if c not in categorical]
    pre = ColumnTransformer(
        [
            ("num", make_pipeline(SimpleImputer(add_indicator=True), StandardScaler()), numeric),
            ("cat", OneHotEncoder(handle_unknown="ignore"), categorical),
        ]
    )
    estimator = {
        "gbm": lambda: GradientBoostingClassifier(n_estimators=30, max_depth=2, random_state=0),
        "logistic": lambda: LogisticRegression(max_iter=2000),
        "knn": lambda: KNeighborsClassifier(n_neighbors=15),
        "gbr": lambda: GradientBoostingRegressor(n_estimators=30, max_depth=2, random_state=0),
        "rfr": lambda: RandomForestRegressor(n_estimators=20, max_depth=4, random_state=0),
    }[final]()
    return Pipeline([("pre", pre), ("model", estimator)]).fit(X, y)


def context_for(model, X: pd.DataFrame, y: pd.Series | None, split: int = 250, seed: int = 0, baseline=None,
                segments: tuple[str, ...] = ("colour",)) -> AuditContext:
    """A tabular context: reference = the first ``split`` rows, current = the rest; ``segments`` columns as segments."""
    m = ModelUnderAudit.from_estimator(model, uri="test://model", name="test-model", version="1")
    if baseline is not None:
        baseline = ModelUnderAudit.from_estimator(baseline, uri="test://baseline", name="test-model", version="0")
    return build_context(
        m,
        (X.iloc[:split], None if y is None else y.iloc[:split]),
        (X.iloc[split:], None if y is None else y.iloc[split:]),
        target=None if y is None else y.name,
        seed=seed,
        baseline=baseline,
        baseline_note="" if baseline is not None else "no baseline in this test",
        segments=(X.iloc[:split][list(segments)], X.iloc[split:][list(segments)]) if set(segments) <= set(X.columns) else (None, None),
    )


def image_context_for(model, X: np.ndarray, y: np.ndarray, split: int, seed: int = 0, classes=None) -> AuditContext:
    """An image context: ``X`` ``(N, C, H, W)`` flattened into one column per element, as the data adapter does;
    reference = the first ``split`` rows."""
    from audits.methods.network import image_columns

    shape = X.shape[1:]
    frame = pd.DataFrame(X.reshape(len(X), -1), columns=image_columns(shape))
    labels = pd.Series(y if classes is None else np.asarray(classes)[y], name="label")
    m = ModelUnderAudit.from_estimator(model, flavor="pytorch", uri="test://network", name="test-network", version="1")
    return build_context(m, (frame.iloc[:split], labels.iloc[:split]), (frame.iloc[split:].reset_index(drop=True),
                         labels.iloc[split:].reset_index(drop=True)), target="label", seed=seed,
                         baseline_note="no baseline in this test", modality="image", input_shape=shape)  # fmt: skip


def train_network(module, X: np.ndarray, y: np.ndarray, epochs: int = 15, seed: int = 0):
    """``module`` (a torch ``nn.Module``) trained on images ``X`` (N, C, H, W), wrapped as a scikit-learn classifier."""
    from audits.methods.network import TorchClassifier

    return TorchClassifier(module, tuple(X.shape[1:]), epochs=epochs, lr=3e-3, random_state=seed).fit(X.reshape(len(X), -1), y)


@functools.cache
def digits_network():
    """A small CNN trained on 1,200 of scikit-learn's digits (about 97 % accurate on the rest): (model, X, y)."""
    from audits.methods.architectures import SmallCNN
    from audits.methods.synthetic import digits

    X, y = digits()
    order = np.random.default_rng(0).permutation(len(X))
    X, y = X[order], y[order]
    return train_network(SmallCNN(), X[:1200], y[:1200], epochs=15), X, y


@functools.cache
def classifier_context() -> AuditContext:
    """Gradient boosting on make_tabular (250 reference, 150 current rows), a logistic regression as the baseline."""
    X, y = make_tabular()
    return context_for(make_pipeline_model(X, y, "gbm"), X, y, baseline=make_pipeline_model(X, y, "logistic"))


@functools.cache
def regressor_context() -> AuditContext:
    """A random forest on make_regression (200 reference, 100 current rows), gradient boosting as the baseline."""
    X, y = make_regression()
    return context_for(make_pipeline_model(X, y, "rfr"), X, y, split=200, baseline=make_pipeline_model(X, y, "gbr"))


@functools.cache
def image_context() -> AuditContext:
    """Reference: 300 training digits; current: 200 held-out digits (the CNN of digits_network)."""
    model, X, y = digits_network()
    return image_context_for(model, np.concatenate([X[:300], X[1200:1400]]), np.concatenate([y[:300], y[1200:1400]]), split=300)


@functools.cache
def text_context() -> AuditContext:
    """TF-IDF + logistic regression on generated job adverts (the salary class depends only on planted words)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    from audits.methods.synthetic import job_adverts

    data = job_adverts(600, seed=0)
    X, y = data[["text"]], data["salary"]
    model = Pipeline([("tfidf", ColumnTransformer([("words", TfidfVectorizer(), "text")])),
                      ("model", LogisticRegression(C=10.0, max_iter=1000))]).fit(X.iloc[:400], y.iloc[:400])  # fmt: skip
    m = ModelUnderAudit.from_estimator(model, uri="test://text", name="test-text", version="1")
    return build_context(m, (X.iloc[:400], y.iloc[:400]), (X.iloc[400:].reset_index(drop=True), y.iloc[400:].reset_index(drop=True)),
                         target="salary", seed=0, baseline_note="no baseline in this test", modality="text")  # fmt: skip


@functools.cache
def degenerate_context(kind: str) -> AuditContext:
    """Data too poor for most statistics, each with a known truth:

    - ``one_feature``: one feature, two classes, 150 rows a side; the model learnt the labels backwards (confidently
      wrong) and the current rows are shifted by 3 standard deviations;
    - ``ten_rows``: ten rows a side of four features, a boosted model fitted on flipped labels, the current rows shifted;
    - ``tiny``: one feature, two classes, ten rows a side, an honest model, no shift;
    - ``image_ten_rows``, ``text_ten_rows``: ten rows a side of image_context's digits and text_context's adverts.
    """
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng({"one_feature": 0, "ten_rows": 1, "tiny": 2}.get(kind, 3))
    if kind == "one_feature":
        X = pd.DataFrame({"x1": rng.normal(size=300)})
        y = pd.Series(np.where(X["x1"] + 0.3 * rng.normal(size=300) > 0, "yes", "no"), name="label")
        model = LogisticRegression().fit(X.iloc[:150], y.iloc[:150].map({"yes": "no", "no": "yes"}))
        X.iloc[150:, 0] += 3.0
        return context_for(model, X, y, split=150, segments=())
    if kind == "ten_rows":
        X = pd.DataFrame({f"x{i}": rng.normal(size=20) for i in range(4)})
        y = pd.Series(np.where(X["x0"] > 0, "yes", "no"), name="label")
        model = GradientBoostingClassifier(n_estimators=10, random_state=0).fit(X, y.map({"yes": "no", "no": "yes"}))
        X.iloc[10:] += 3.0
        return context_for(model, X, y, split=10, segments=())
    if kind == "tiny":
        X = pd.DataFrame({"x1": rng.normal(size=20)})
        y = pd.Series(np.where(X["x1"] > 0, "yes", "no"), name="label")
        return context_for(LogisticRegression().fit(X.iloc[:10], y.iloc[:10]), X, y, split=10, segments=())
    if kind in ("image_ten_rows", "text_ten_rows"):
        full = image_context() if kind == "image_ten_rows" else text_context()
        X = pd.concat([full.reference.X.iloc[:10], full.current.X.iloc[:10]], ignore_index=True)
        y = pd.concat([full.reference.y.iloc[:10], full.current.y.iloc[:10]], ignore_index=True)
        return build_context(full.model, (X.iloc[:10], y.iloc[:10]), (X.iloc[10:].reset_index(drop=True), y.iloc[10:].reset_index(drop=True)),
                             target=full.target, seed=0, baseline_note="no baseline in this test", modality=full.modality,
                             input_shape=full.input_shape)  # fmt: skip
    raise ValueError(f"unknown degenerate context {kind!r}; one of {DEGENERATE}")


DEGENERATE = ("one_feature", "ten_rows", "tiny", "image_ten_rows", "text_ten_rows")


def degenerate_modality(kind: str) -> str:
    return MODALITY.get(kind, "tabular")


MODALITY = {"classifier_context": "tabular", "regressor_context": "tabular", "image_context": "image",
            "text_context": "text", "image_ten_rows": "image", "text_ten_rows": "text"}  # the inputs of each dataset


BUILDERS: dict[str, Callable[[], AuditContext]] = {
    "classifier_context": classifier_context,
    "regressor_context": regressor_context,
    "image_context": image_context,
    "text_context": text_context,
}

# ------------------------------------------------------------------------------------------------ the contract


def fingerprint(context: AuditContext) -> str:
    """A digest of everything an audit receives: the same before and after means the audit left its inputs alone."""
    parts = []
    for ds in (context.reference, context.current):  # row hashes in order: a sum would not see rows reordered
        parts.append(hash(pd.util.hash_pandas_object(ds.X, index=True).to_numpy().tobytes()))
        if ds.y is not None:
            parts.append(hash(pd.util.hash_pandas_object(ds.y, index=True).to_numpy().tobytes()))
        parts.append(hash(ds.predictions.labels.tobytes()))
        if ds.predictions.proba is not None:
            parts.append(hash(ds.predictions.proba.tobytes()))
    return repr(parts) + repr([ds.X.dtypes.to_dict() for ds in (context.reference, context.current)])


def check_audit_contract(audit_cls: type[Audit], context: AuditContext, config: dict | None = None) -> AuditResult:
    """The contract, for one audit class that applies to ``context``; the first of its two results."""
    import matplotlib.pyplot as plt

    name = audit_cls.name
    cls_config = audit_cls.Config.model_validate(config or {})
    before = fingerprint(context)
    first = run_planned(PlannedAudit(name, audit_cls(cls_config), audit_cls.default_thresholds), context)
    second = run_planned(PlannedAudit(name, audit_cls(cls_config), audit_cls.default_thresholds), context)

    assert first.verdict is not Verdict.ERROR, f"{name} raised: {first.reason}"
    assert fingerprint(context) == before, f"{name} mutated its inputs"

    assert first.metrics.keys() == second.metrics.keys(), f"{name} reports different metrics under one seed"
    for key in first.metrics:
        assert np.isclose(first.metrics[key], second.metrics[key], rtol=0, atol=0, equal_nan=True), \
            f"{key} differs between two runs with the same seed"
    assert [a.name for a in first.artifacts] == [a.name for a in second.artifacts]
    for a, b in zip(first.artifacts, second.artifacts, strict=True):
        if a.kind == "table":
            pd.testing.assert_frame_equal(a.content, b.content)
        elif a.kind == "figure":
            assert a.content == b.content, f"{a.name} differs between two runs with the same seed"

    assert first.metrics, f"{name} ran and reported no metrics"
    assert audit_cls.metric_keys, f"{name} does not declare the metric keys it reports (metric_keys)"
    undeclared = audit_cls.undeclared(first.metrics, name)
    assert not undeclared, f"{name} reports keys its metric_keys do not declare: {undeclared[:5]}"
    for threshold in audit_cls.thresholds_for(cls_config):
        for key in filter(None, (threshold.metric, threshold.compare_to)):
            assert audit_cls.declares(key.removeprefix(f"{name}.")), f"{name}'s default threshold names {key!r}, which it does not declare"
    bad = [key for key in first.metrics if not (key.startswith(f"{name}.") and is_valid_key(key))]
    assert not bad, f"{name}: metric keys outside its namespace or invalid for MLflow: {bad[:5]}"
    assert len({a.name for a in first.artifacts}) == len(first.artifacts), f"{name} names two artifacts alike"

    encoded = json.dumps(first.to_dict())
    assert json.loads(encoded)["audit"] == name
    assert plt.get_fignums() == [], f"{name} left figures open in pyplot's global state"
    return first


def check_audit_on(audit_cls: type[Audit], context_name: str, config: dict | None = None) -> AuditResult:
    """The contract on one of the contexts in CONTEXTS: SKIPPED with the audit's own reason where it does not apply."""
    context = BUILDERS[context_name]()
    audit = audit_cls(audit_cls.Config.model_validate(config or {}))
    reason = audit.skip_reason(context)
    if reason:
        result = run_planned(PlannedAudit(audit_cls.name, audit, audit_cls.default_thresholds), context)
        assert result.verdict is Verdict.SKIPPED and result.reason == reason and not result.metrics, \
            f"{audit_cls.name} does not apply to {context_name} ({reason}) but was not SKIPPED with that reason"
        return result
    return check_audit_contract(audit_cls, context, config)


def check_degenerate(audit_cls: type[Audit], kind: str, config: dict | None = None) -> AuditResult:
    """An audit on data too poor for it (degenerate_context): SKIPPED with its reason, or a result whose verdict claims
    no more than the data allows. Never ERROR (no crash, no check left undecided), every key declared, and a PASS only
    from checks that were decided on finite values that could have failed (a check that cannot tell makes it SKIPPED)."""
    context = dataclasses.replace(degenerate_context(kind), with_figures=False)  # verdicts and values only
    audit = audit_cls(audit_cls.Config.model_validate(config or {}))
    before = fingerprint(context)
    result = run_planned(PlannedAudit(audit_cls.name, audit, audit_cls.thresholds_for(audit.config)), context)
    assert fingerprint(context) == before, f"{audit_cls.name} mutated its inputs"
    assert result.verdict is not Verdict.ERROR, f"{audit_cls.name} on {kind} data: ERROR ({result.reason}); say SKIPPED with the reason"
    if result.verdict is Verdict.SKIPPED:
        assert result.reason, f"{audit_cls.name} on {kind} data: SKIPPED without a reason"
    else:
        undeclared = audit_cls.undeclared(result.metrics, audit_cls.name)
        assert not undeclared, f"{audit_cls.name} reports keys its metric_keys do not declare: {undeclared[:5]}"
    if result.verdict is Verdict.PASS:
        assert all(c.passed is True and c.value is not None and np.isfinite(c.value) for c in result.checks), \
            f"{audit_cls.name} on {kind} data: PASS from checks that were not all decided: {result.checks}"
    return result


def check_audit(audit_cls: type[Audit], config: dict | None = None,
                contexts: tuple[str, ...] | None = None) -> dict[str, AuditResult]:
    """Run the contract on every context (or those named); the result on each. Image contexts need the deep extra,
    and are built only for audits made for images."""
    if not (isinstance(audit_cls, type) and issubclass(audit_cls, Audit)):
        raise TypeError(f"check_audit takes an audits.core.Audit subclass, not {audit_cls!r}")
    if contexts is None:
        contexts = tuple(c for c in CONTEXTS if MODALITY[c] in audit_cls.requires.modalities)
    return {name: check_audit_on(audit_cls, name, config) for name in contexts}


def parametrize_audits(names: list[str] | None = None, contexts: tuple[str, ...] = CONTEXTS):
    """pytest's parametrisation over (audit_class, context_name): every registered audit, or ``names``."""
    import pytest

    from audits.core.registry import available_audits, get_audit_class

    chosen = sorted(names or available_audits())
    cases = [pytest.param(get_audit_class(n), c, id=f"{n}-{c}") for n in chosen for c in contexts]
    return pytest.mark.parametrize(("audit_class", "context_name"), cases)
