"""The pickle gate: every estimator of the locked scikit-learn loads; every known trick is refused before it runs.

Each trick's payload, if it ran, would create a file in tmp_path: the tests check that the file does not exist, so a
refusal that came after the payload ran would fail them.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import warnings

import cloudpickle
import numpy as np
import pytest
from sklearn.utils import all_estimators

from tasks.adapters import safe_pickle
from tasks.adapters.safe_pickle import Allowlist, UnsafePickleError


def _instances():
    from sklearn.utils._test_common.instance_generator import _construct_instances

    for name, cls in all_estimators():
        try:
            yield from ((name, est) for est in _construct_instances(cls))
        except Exception:  # FrozenEstimator needs an estimator to freeze: built below
            continue
    from sklearn.frozen import FrozenEstimator
    from sklearn.linear_model import LogisticRegression

    rng = np.random.RandomState(0)
    X = rng.uniform(1, 3, size=(40, 4))
    yield "FrozenEstimator", FrozenEstimator(LogisticRegression().fit(X, (X[:, 0] > 2).astype(int)))


def _fitted(est):
    from sklearn.utils.estimator_checks import _enforce_estimator_tags_X, _enforce_estimator_tags_y

    rng = np.random.RandomState(0)
    X = rng.uniform(1, 3, size=(40, 4))
    y = (X[:, 0] > 2).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            est.fit(_enforce_estimator_tags_X(est, X), _enforce_estimator_tags_y(est, y))
        except Exception:  # text vectorisers, label encoders: fitted on what they take, else pickled unfitted
            for data in (["a cat", "a dog", "two cats"], [{"a": 1, "b": 2}, {"a": 3}], y):
                try:
                    est.fit(data)
                    break
                except Exception:
                    continue
    return est


def test_every_estimator_of_the_locked_scikit_learn_loads_through_the_gate_with_pickle_and_cloudpickle():
    instances = list(_instances())
    assert len({name for name, _ in instances}) == len(all_estimators()), "every estimator class is covered"
    refused = {}
    for name, est in instances:
        est = _fitted(est)
        for dumps in (pickle.dumps, cloudpickle.dumps):
            data = dumps(est)
            try:
                loaded = safe_pickle.loads(data)
            except UnsafePickleError as exc:
                refused[f"{name} ({dumps.__module__})"] = str(exc)
                continue
            assert type(loaded) is type(est)
            # the same object graph as Python's own unpickler makes of these bytes
            assert pickle.dumps(loaded) == pickle.dumps(pickle.loads(data)), f"{name}: loaded back differs"
    assert refused == {}


def test_a_loaded_model_predicts_exactly_as_the_original():
    from sklearn.datasets import make_classification
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = make_classification(300, 6, random_state=0)
    for model in (HistGradientBoostingClassifier(max_iter=20, random_state=0), make_pipeline(StandardScaler(), RandomForestClassifier(20, random_state=0))):
        model.fit(X, y)
        loaded = safe_pickle.loads(cloudpickle.dumps(model))
        np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))


# ---------------------------------------------------------------------------------------------
# the tricks


class _Reduce:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payloads(marker):
    import builtins
    import os
    import subprocess

    command = f"touch {marker}"
    code = f"open({str(marker)!r}, 'w').write('ran')"
    return {
        "os.system": _Reduce(os.system, command),
        "subprocess.Popen": _Reduce(subprocess.Popen, ["touch", str(marker)]),
        "builtins.eval": _Reduce(builtins.eval, code),
        "builtins.exec": _Reduce(builtins.exec, code),
        "builtins.open": _Reduce(builtins.open, str(marker), "w"),
        "numpy.load trampoline": _Reduce(np.load, str(marker)),
        "a function held as a value, called": _Reduce(np.mean, [1, 2]),
    }


@pytest.mark.parametrize("trick", list(_payloads("x")))
def test_a_pickle_that_runs_code_is_refused_before_it_runs(trick, tmp_path):
    marker = tmp_path / "ran"
    data = pickle.dumps(_payloads(marker)[trick], protocol=4)
    with pytest.raises(UnsafePickleError):
        safe_pickle.loads(data)
    assert not marker.exists()


def test_the_static_check_names_what_it_found_before_anything_is_imported(tmp_path):
    import os

    data = pickle.dumps(_Reduce(os.system, "true"))
    with pytest.raises(UnsafePickleError) as refused:
        safe_pickle.check(data, Allowlist())
    assert "posix.system" in str(refused.value) or "os.system" in str(refused.value)
    assert "runs commands" in str(refused.value)


def _stack_global(module: str, name: str, then_call: bytes = b"") -> bytes:
    def text(s: str) -> bytes:
        raw = s.encode()
        return b"\x8c" + bytes([len(raw)]) + raw

    return b"\x80\x04" + text(module) + text(name) + b"\x93" + then_call + b"."


def test_joblib_and_torch_loaders_are_refused_as_trampolines(tmp_path):
    for module, name in (("joblib.numpy_pickle", "load"), ("torch.serialization", "load"), ("numpy.lib._npyio_impl", "load"),
                         ("pickle", "loads"), ("builtins", "getattr"), ("builtins", "__import__")):
        data = _stack_global(module, name)
        with pytest.raises(UnsafePickleError, match=name):
            safe_pickle.loads(data)


def test_a_decoy_stack_global_through_the_memo_is_read_as_the_unpickler_reads_it():
    # the module name is memoised as 'numpy', then a later STACK_GLOBAL fetches 'os' from the memo: a scanner that
    # reads the last string literal sees numpy; the stack says os.system
    def text(s: str) -> bytes:
        raw = s.encode()
        return b"\x8c" + bytes([len(raw)]) + raw

    data = (b"\x80\x04" + text("os") + b"\x94" + text("numpy") + b"\x94" + b"0" + b"0"  # memo 0='os', 1='numpy', popped
            + b"h\x00" + text("system") + b"\x93" + text("true") + b"\x85R.")
    assert "os.system" in safe_pickle.named_globals(data)
    with pytest.raises(UnsafePickleError, match="os.system"):
        safe_pickle.loads(data)


def test_a_global_whose_name_is_computed_is_refused():
    # STACK_GLOBAL on a value built by a call (an allowed class's result): the name is not written in the file
    data = _stack_global("numpy", "dtype")[:-1] + b"\x8c\x02f8\x85R" + b"\x8c\x04load\x93."
    with pytest.raises(UnsafePickleError, match="computed"):
        safe_pickle.named_globals(data)


def test_a_re_exported_class_is_not_its_importers_own():
    import gzip

    import sklearn.datasets._covtype as covtype

    assert covtype.GzipFile is gzip.GzipFile  # importable under sklearn, but gzip's
    assert Allowlist().resolve("sklearn.datasets._covtype", "GzipFile") is None
    with pytest.raises(UnsafePickleError):
        safe_pickle.loads(_stack_global("sklearn.datasets._covtype", "GzipFile"))


def test_numpy_classes_that_touch_files_are_not_allowed():
    allowlist = Allowlist()
    for module, name in (("numpy", "memmap"), ("numpy", "load"), ("numpy", "fromfile"), ("numpy.lib._datasource", "DataSource")):
        assert allowlist.resolve(module, name) is None, f"{module}.{name}"
    assert allowlist.resolve("numpy", "ndarray") is not None
    assert allowlist.resolve("numpy", "float64") == (np.float64, True)


def test_persistent_ids_and_protocol_0_instances_are_refused():
    class WithId(pickle.Pickler):
        def persistent_id(self, obj):
            return "x" if obj == "secret" else None

    buffer = io.BytesIO()
    WithId(buffer, protocol=4).dump(["secret"])
    with pytest.raises(UnsafePickleError, match="persistent"):
        safe_pickle.loads(buffer.getvalue())
    inst = b"(ios\nsystem\nS'true'\n."  # INST: protocol 0's call of a class
    with pytest.raises(UnsafePickleError):
        safe_pickle.loads(inst)


def test_an_attribute_that_replaces_a_method_is_refused():
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression().fit(np.eye(4), [0, 1, 0, 1])
    model.__dict__["predict_proba"] = np.mean  # an allowed function, set where the audit would call the method
    with pytest.raises(UnsafePickleError, match="replaces its method"):
        safe_pickle.loads(pickle.dumps(model))


def test_a_tree_whose_nodes_point_outside_it_is_refused():
    from sklearn.tree import DecisionTreeClassifier

    tree = DecisionTreeClassifier(random_state=0).fit(np.random.RandomState(0).normal(size=(50, 3)), [0, 1] * 25)
    data = pickle.dumps(tree)
    state = tree.tree_.__getstate__()
    nodes = state["nodes"].copy()
    nodes["left_child"][0] = 10_000  # compiled code would read far past the node array
    forged = tree.tree_.__class__(tree.tree_.n_features, np.array([tree.tree_.n_classes[0]], dtype=np.intp), tree.tree_.n_outputs)
    forged.__setstate__({**state, "nodes": nodes})
    tree.tree_ = forged
    assert safe_pickle.loads(data) is not None  # the original loads
    with pytest.raises(UnsafePickleError, match="point outside"):
        safe_pickle.loads(pickle.dumps(tree))


def test_trusted_types_admit_exactly_the_named_class():
    from collections import Counter

    data = pickle.dumps(Counter("aab"))
    with pytest.raises(UnsafePickleError, match="collections.Counter"):
        safe_pickle.loads(data)
    assert safe_pickle.loads(data, Allowlist(["collections.Counter"])) == Counter("aab")
    assert Allowlist(["collections.Counter"]).resolve("collections", "ChainMap") is None


def test_every_opcode_of_a_real_model_pickle_is_followed():
    from sklearn.ensemble import HistGradientBoostingRegressor

    model = HistGradientBoostingRegressor(max_iter=5).fit(np.random.RandomState(0).normal(size=(60, 3)), np.arange(60.0))
    data = cloudpickle.dumps(model)
    found = safe_pickle.named_globals(data)
    # the same names the standard library's own disassembler prints for GLOBAL / STACK_GLOBAL
    assert "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor" in found
    assert any(op.name == "BYTEARRAY8" for op, _, _ in pickletools.genops(data))  # protocol 5 arrays, read too
