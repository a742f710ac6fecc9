"""Pickles of scikit-learn models, loaded without running anything a model's author chose.

A pickle is a program: each global it names is imported and may be called with arguments of the file's choosing.
Two gates stand before any object exists:

1. **Static analysis** (the standard library's ``pickletools`` reads the opcodes without executing them, and the stack
   is followed to the names each STACK_GLOBAL takes): every global the file names must be
   on our allowlist, and the file must parse as a plain pickle (no persistent ids, no extension registry). The refusal
   names each global that is not allowed, so the message says what was found.
2. **An allowlisting unpickler**: the same allowlist is enforced again while loading (Python's documented
   ``find_class`` restriction), and a global may be *called* (REDUCE, NEWOBJ) only if it is a class of the allowlist or
   one of numpy's and scikit-learn's array reconstructors. Functions a model holds as values (SelectKBest's
   ``f_classif``, FeatureAgglomeration's ``numpy.mean``, numpy ufuncs) may be referenced, never called while loading.

The allowlist is exact, not a prefix: a name is allowed only when importing it gives the object whose own
``__module__`` and ``__qualname__`` are that name (so ``numpy.distutils.exec_command.Popen``, which is
``subprocess.Popen``, is not numpy's), and it is one of:

- a scikit-learn estimator (a ``BaseEstimator`` subclass defined in scikit-learn, outside its testing modules): its
  constructor only stores parameters, and its state is its ``__dict__``;
- a class defined in one of the scikit-learn modules that hold an estimator's fitted internals (trees, losses, links,
  kernels, neighbour trees, distance metrics, CV splitters, scorers, optimisers);
- numpy's arrays, dtypes, scalar types, masked arrays and random generators; scipy's sparse matrices and B-splines;
- a handful of builtins that hold data (slice, set, frozenset, bytearray, complex, OrderedDict);
- ``security.trusted_types`` from the configuration (exact ``module.Name`` entries), for a user's own classes.

``tests/unit/test_safe_pickle.py`` fits every estimator of the locked scikit-learn, pickles it with pickle and with
cloudpickle, and loads it through this gate; and it plants the known tricks (os.system, eval through builtins, getattr,
``numpy.load``/``joblib.load``/``torch.load`` trampolines, a decoy STACK_GLOBAL, a re-exported ``Popen``) and checks
that each is refused before anything runs.
"""

from __future__ import annotations

import importlib
import io
import pickle
from collections.abc import Iterable, Iterator
from typing import Any

# modules whose classes hold a fitted estimator's internals: trees, losses and links, kernels, neighbour trees,
# distance metrics, splitters, scorers, optimisers. Every class defined in one of these (by its own __module__).
SKLEARN_INTERNALS = frozenset({
    "sklearn._loss.loss", "sklearn._loss._loss", "sklearn._loss.link",
    "sklearn.tree._tree", "sklearn.tree._criterion", "sklearn.tree._splitter",
    "sklearn.ensemble._hist_gradient_boosting.predictor", "sklearn.ensemble._hist_gradient_boosting.binning",
    "sklearn.gaussian_process.kernels",
    "sklearn.neighbors._kd_tree", "sklearn.neighbors._ball_tree", "sklearn.metrics._dist_metrics",
    "sklearn.linear_model._sgd_fast", "sklearn.model_selection._split", "sklearn.metrics._scorer",
    "sklearn.neural_network._stochastic_optimizers", "sklearn.utils._bunch", "sklearn.utils._metadata_requests",
    "sklearn.calibration", "sklearn.cluster._birch", "sklearn.cluster._bisect_k_means",
    "sklearn.preprocessing._encoders", "sklearn.compose._column_transformer",
})  # fmt: skip
# scikit-learn modules whose classes are never a model's state (they write files, run tests, fetch data)
SKLEARN_NEVER = ("sklearn.utils._testing", "sklearn.utils.estimator_checks", "sklearn.utils._test_common",
                 "sklearn.datasets", "sklearn.externals", "sklearn.conftest", "sklearn.utils.parallel",
                 "sklearn.utils._joblib", "sklearn.experimental")
SCIPY_CLASSES = frozenset({
    *(f"scipy.sparse._{kind}.{kind}_{form}" for kind in ("csr", "csc", "coo", "bsr", "dia", "dok", "lil")
      for form in ("matrix", "array")),
    "scipy.interpolate._bsplines.BSpline", "scipy.interpolate._interpolate.interp1d",
})  # fmt: skip
NUMPY_CLASSES = frozenset({
    "numpy.ndarray", "numpy.dtype", "numpy.ma.MaskedArray", "numpy.ma.core.MaskedArray", "numpy.ma.core.MaskedConstant",
    "numpy.random._generator.Generator", "numpy.random.mtrand.RandomState", "numpy.random.bit_generator.SeedSequence",
    "numpy.random._mt19937.MT19937", "numpy.random._pcg64.PCG64", "numpy.random._pcg64.PCG64DXSM",
    "numpy.random._philox.Philox", "numpy.random._sfc64.SFC64",
})  # fmt: skip
BUILTIN_CLASSES = frozenset({"builtins.slice", "builtins.set", "builtins.frozenset", "builtins.bytearray",
                             "builtins.complex", "builtins.object", "collections.OrderedDict"})
# functions that rebuild arrays, scalars, random generators and neighbour trees from their data: called while loading
RECONSTRUCTORS = frozenset({
    # numpy 1.x pickles name them under numpy.core: ALIASES reads those as numpy._core
    "numpy._core.multiarray._reconstruct", "numpy._core.multiarray.scalar", "numpy._core.numeric._frombuffer",
    "numpy.ma.core._mareconstruct",
    "numpy.random._pickle.__bit_generator_ctor", "numpy.random._pickle.__generator_ctor",
    "numpy.random._pickle.__randomstate_ctor", "numpy.random.bit_generator.__pyx_unpickle_SeedSequence",
    "sklearn.neighbors._kd_tree.newObj", "sklearn.neighbors._ball_tree.newObj", "sklearn.metrics._dist_metrics.newObj",
    "copyreg._reconstructor",
})  # fmt: skip
# functions an estimator may hold as a parameter (score functions, pooling functions): referenced, never called here
REFERENCED_FUNCTIONS = frozenset({
    *(f"sklearn.feature_selection._univariate_selection.{f}" for f in ("f_classif", "f_regression", "chi2", "r_regression",
                                                                        "f_oneway")),
    *(f"sklearn.feature_selection._mutual_info.{f}" for f in ("mutual_info_classif", "mutual_info_regression")),
    *(f"numpy.{f}" for f in ("mean", "median", "average", "sum", "max", "min", "amax", "amin", "std", "var",
                              "nanmean", "nanmedian", "nansum", "nanmax", "nanmin", "log", "log1p", "exp", "expm1", "sqrt")),
    "sklearn.cluster._kmeans._kmeans_single_lloyd", "sklearn.cluster._kmeans._kmeans_single_elkan",
    "scipy._lib.array_api_compat.numpy._aliases.asarray",
})  # fmt: skip
# the modules of scikit-learn's metric functions (scorers hold one): referenced, never called here
METRIC_MODULES = ("sklearn.metrics._classification", "sklearn.metrics._regression", "sklearn.metrics._ranking")
# (module, name) pairs numpy and Python rename on load: a name is checked as what it resolves to
ALIASES = {"numpy.core": "numpy._core"}


class UnsafePickleError(Exception):
    """A pickle names something outside the allowlist, or is not a plain pickle. ``found``: what, in words."""

    def __init__(self, found: list[str], where: str = "") -> None:
        self.found, self.where = found, where
        super().__init__(f"{where}: " + "; ".join(found) if where else "; ".join(found))


def _normalised(dotted: str) -> str:
    """``dotted`` (a module, or module.name) under the name numpy gives it now (numpy.core -> numpy._core)."""
    for old, new in ALIASES.items():
        if dotted == old or dotted.startswith(old + "."):
            return new + dotted[len(old):]
    return dotted


def canonical(module: str, name: str) -> Any:
    """The object ``module.name`` names, if it is that object's own name; else None (a re-export, a missing name).
    Importing ``module`` runs its code: callers decide first that the module is one they may import."""
    module = _normalised(module)
    try:
        target = importlib.import_module(module)
    except Exception:
        return None
    obj = target
    for part in name.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    if isinstance(obj, type) or callable(obj):
        own_module = getattr(obj, "__module__", None)
        own_name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
        if own_module is None and _is_ufunc(obj):  # numpy ufuncs have no __module__; pickled as numpy.<name>
            own_module = "numpy"
        if (own_module, own_name) != (module, name):
            return None
    return obj


def _is_ufunc(obj: Any) -> bool:
    import numpy as np

    return isinstance(obj, np.ufunc)


class Allowlist:
    """Which globals a pickle may name (``allowed``) and which of them it may call (``callable``)."""

    def __init__(self, trusted_types: Iterable[str] = ()) -> None:
        self.trusted = frozenset(trusted_types)
        self._cache: dict[tuple[str, str], tuple[Any, bool] | None] = {}

    def resolve(self, module: str, name: str) -> tuple[Any, bool] | None:
        """(the object, whether it may be called while loading), or None when it is not allowed."""
        key = (module, name)
        if key not in self._cache:
            self._cache[key] = self._decide(module, name)
        return self._cache[key]

    def _decide(self, module: str, name: str) -> tuple[Any, bool] | None:
        full = f"{module}.{name}"
        root = module.split(".", 1)[0]
        if full not in self.trusted and root not in {"sklearn", "numpy", "scipy", "builtins", "collections", "copyreg"}:
            return None  # never import a module outside the stack only to look at it
        obj = canonical(module, name)
        if obj is None:
            return None
        if full in self.trusted:
            return obj, isinstance(obj, type)
        normal = _normalised(full)
        if normal in RECONSTRUCTORS:
            return obj, True
        if isinstance(obj, type):
            return (obj, True) if self._allowed_class(obj, normal) else None
        if normal in REFERENCED_FUNCTIONS or _is_ufunc(obj) and module == "numpy":
            return obj, False
        if module in METRIC_MODULES and not name.startswith("_"):
            return obj, False
        return None

    @staticmethod
    def _allowed_class(cls: type, full: str) -> bool:
        module = cls.__module__
        if full in NUMPY_CLASSES or full in SCIPY_CLASSES or full in BUILTIN_CLASSES:
            return True
        if module in ("numpy", "numpy.dtypes"):  # scalar types (numpy.float64) and dtype classes (numpy.dtypes.Int64DType)
            import numpy as np

            return issubclass(cls, (np.generic, np.dtype))
        if not module.startswith("sklearn.") or any(module == m or module.startswith(m + ".") for m in SKLEARN_NEVER):
            return False
        if ".tests" in module:
            return False
        if module in SKLEARN_INTERNALS:
            return True
        from sklearn.base import BaseEstimator

        return issubclass(cls, BaseEstimator)


# ---------------------------------------------------------------------------------------------
# 1. static analysis: what the file names, before anything is imported from it


def named_globals(data: bytes) -> list[str]:
    """Every global the pickle names, as ``module.name``, read from its opcodes by the standard library's disassembler
    (``pickletools``: nothing is imported or executed). The stack is followed so that a STACK_GLOBAL's module and name
    are the strings the unpickler would use, through the memo; a name the file computes instead is refused.

    (fickling's decompiler was the first choice; its 0.1.12 cannot read BYTEARRAY8, which cloudpickle writes for every
    numpy array, so it could not read most saved models.)"""
    import pickletools

    stack: list[Any] = []
    memo: dict[int, Any] = {}
    names: set[str] = set()
    try:
        for op, arg, _ in pickletools.genops(data):
            name = op.name
            if name in _REFUSED_OPCODES:
                raise UnsafePickleError([f"opcode {name} (a persistent id or the extension registry), which a saved model "
                                         "never needs"])
            if name in _STRING_OPCODES:
                stack.append(arg)
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = stack[-1]
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo.get(arg, _UNKNOWN))
            elif name == "GLOBAL":
                module, _, attr = arg.partition(" ")
                names.add(f"{module}.{attr}")
                stack.append(_UNKNOWN)
            elif name == "STACK_GLOBAL":
                attr, module = stack.pop(), stack.pop()
                if not (isinstance(module, str) and isinstance(attr, str)):
                    raise UnsafePickleError(["a global whose module or name is computed by the file, not written in it"])
                names.add(f"{module}.{attr}")
                stack.append(_UNKNOWN)
            elif name == "MARK":
                stack.append(_MARK)
            else:
                _apply(op, stack)
    except UnsafePickleError:
        raise
    except Exception as exc:
        raise UnsafePickleError([f"not a readable pickle ({type(exc).__name__}: {str(exc)[:120]})"]) from None
    return sorted(names)


_REFUSED_OPCODES = frozenset({"PERSID", "BINPERSID", "EXT1", "EXT2", "EXT4", "INST", "OBJ"})
_STRING_OPCODES = frozenset({"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE",
                             "BINUNICODE8"})
_UNKNOWN, _MARK = object(), object()


def _apply(op: Any, stack: list[Any]) -> None:
    """An opcode's effect on the stack's depth, from pickletools' description of what it pops and pushes."""
    import pickletools

    before = op.stack_before
    if pickletools.markobject in before:
        while stack and stack[-1] is not _MARK:
            stack.pop()
        if not stack:
            raise ValueError(f"{op.name} without a MARK")
        stack.pop()
        count = before.index(pickletools.markobject)
    else:
        count = len(before)
    if count > len(stack):
        raise ValueError(f"{op.name} pops more than the stack holds")
    del stack[len(stack) - count:]
    stack.extend([_UNKNOWN] * len(op.stack_after))


def check(data: bytes, allowlist: Allowlist) -> list[str]:
    """The globals a pickle names, all allowed; else UnsafePickleError naming those that are not."""
    names = named_globals(data)
    bad = []
    for full in names:
        module, _, name = full.rpartition(".")
        if not module or allowlist.resolve(module, name) is None:
            bad.append(full)
    if bad:
        raise UnsafePickleError([f"{n} ({_why(n)})" for n in bad])
    return names


def _why(full: str) -> str:
    root = full.split(".", 1)[0]
    if root in {"os", "posix", "nt", "subprocess", "sys", "shutil", "socket", "pty", "runpy", "importlib"}:
        return "runs commands or touches the system"
    if full.startswith("builtins."):
        return "a builtin that can run code" if full.rsplit(".", 1)[1] in {"eval", "exec", "compile", "getattr", "__import__",
                                                                               "open", "setattr", "breakpoint"} else "not a data builtin"
    if full.endswith(".load") or full.endswith(".loads"):
        return "a loader that would deserialise another file"
    if root in {"cloudpickle", "dill", "types", "marshal", "functools", "operator", "code"}:
        return "rebuilds or calls code"
    return "not on auditlens's allowlist"


# ---------------------------------------------------------------------------------------------
# 2. the loader: the allowlist again, and calls only to classes and reconstructors


class _Unpickler(pickle._Unpickler):  # the pure-Python unpickler: its REDUCE can be checked, the C one's cannot
    def __init__(self, file: Any, allowlist: Allowlist) -> None:
        super().__init__(file)
        self.allowlist = allowlist
        self.callable_ids: set[int] = set()

    def find_class(self, module: str, name: str) -> Any:
        resolved = self.allowlist.resolve(module, name)
        if resolved is None:
            raise UnsafePickleError([f"{module}.{name} ({_why(f'{module}.{name}')})"])
        obj, may_call = resolved
        if may_call:
            self.callable_ids.add(id(obj))
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(["a persistent id, which a saved model never needs"])

    def _checked_call(self, func: Any) -> None:
        if id(func) not in self.callable_ids:
            name = f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', type(func).__name__)}"
            raise UnsafePickleError([f"a call to {name}, which may be held as a value but is never called while loading"])

    def load_reduce(self) -> None:
        stack = self.stack
        args = stack.pop()
        func = stack[-1]
        self._checked_call(func)
        stack[-1] = func(*args)

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self._checked_call(cls)
        self.append(cls.__new__(cls, *args))

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self._checked_call(cls)
        self.append(cls.__new__(cls, *args, **kwargs))

    def _refuse(self) -> None:
        raise UnsafePickleError(["protocol 0/1 instance opcodes (INST, OBJ) or the extension registry"])

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex
    for _op in (pickle.INST, pickle.OBJ, pickle.EXT1, pickle.EXT2, pickle.EXT4):
        dispatch[_op[0]] = _refuse
    del _op


def loads(data: bytes, allowlist: Allowlist | None = None) -> Any:
    """The object in ``data``, after the static check and through the allowlisting unpickler."""
    allowlist = allowlist or Allowlist()
    check(data, allowlist)
    obj = _Unpickler(io.BytesIO(data), allowlist).load()
    check_loaded(obj)
    return obj


# ---------------------------------------------------------------------------------------------
# 3. after loading: what an allowed class can still be made to hold


def walk(obj: Any, limit: int = 2_000_000) -> Iterator[Any]:
    """Every object reachable from ``obj`` through attributes and containers (not inside numpy arrays of numbers)."""
    import numpy as np

    seen: set[int] = set()
    todo = [obj]
    while todo and len(seen) < limit:
        item = todo.pop()
        if id(item) in seen or isinstance(item, (str, bytes, int, float, bool, type(None))):
            continue
        seen.add(id(item))
        yield item
        if isinstance(item, _Attributes):
            continue
        if isinstance(item, dict):
            todo.extend(item.keys())
            todo.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            todo.extend(item)
        elif isinstance(item, np.ndarray):
            if item.dtype == object:
                todo.extend(item.ravel().tolist())
        elif not isinstance(item, type):
            state = getattr(item, "__dict__", None)
            if isinstance(state, dict):
                todo.extend(state.values())
                todo.append(_Attributes(type(item), state))


class _Attributes:
    def __init__(self, cls: type, state: dict) -> None:
        self.cls, self.state = cls, state


def check_loaded(obj: Any) -> None:
    """Refuse a loaded model whose objects hold attributes that shadow their class's methods (``predict`` set to
    another callable), or trees whose node indices point outside the tree (compiled code reads them unchecked)."""
    problems = []
    for item in walk(obj):
        if isinstance(item, _Attributes):
            for key in item.state:
                if isinstance(key, str) and callable(getattr(item.cls, key, None)) and not key.startswith("__"):
                    problems.append(f"an instance of {item.cls.__name__} whose attribute {key!r} replaces its method")
                if key in ("__class__", "__dict__", "__reduce__", "__reduce_ex__", "__setstate__", "__getattr__"):
                    problems.append(f"an instance of {item.cls.__name__} with an attribute {key!r}")
            continue
        problems.extend(_tree_problems(item))
    if problems:
        raise UnsafePickleError(sorted(set(problems))[:5])


def _tree_problems(item: Any) -> list[str]:
    import numpy as np

    kind = type(item).__name__
    module = type(item).__module__
    if module == "sklearn.tree._tree" and kind == "Tree":
        count = int(item.node_count)
        left, right, feature = item.children_left, item.children_right, item.feature
        leaf = left == -1
        bad = ((left < -1) | (left >= count) | (right < -1) | (right >= count) | ((left == -1) != (right == -1))
               | (~leaf & ((feature < 0) | (feature >= item.n_features))))
        if len(left) != count or bad.any():
            return [f"a decision tree whose nodes point outside it ({int(bad.sum())} of {count} nodes)"]
    elif module == "sklearn.ensemble._hist_gradient_boosting.predictor" and kind == "TreePredictor":
        nodes = item.nodes
        count = len(nodes)
        inner = ~nodes["is_leaf"].astype(bool)
        bad = inner & ((nodes["left"] >= count) | (nodes["right"] >= count))
        if bad.any():
            return [f"a boosting tree whose nodes point outside it ({int(bad.sum())} of {count} nodes)"]
        if np.any(inner & (nodes["feature_idx"] < 0)):
            return ["a boosting tree with a negative feature index"]
    return []
