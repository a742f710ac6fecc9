"""Models that misbehave in the ways deployed models do, for the bad-input corpus.

Each wraps a real fitted Pipeline and breaks one promise. They are saved with cloudpickle *by value* (the class travels
inside the model file), so the CLI process loads them without this test package on its path, as it would a user's model.
"""

from __future__ import annotations

import time

import numpy as np
from mlflow.pyfunc import PythonModel
from sklearn.base import BaseEstimator, ClassifierMixin


class Faulty(ClassifierMixin, BaseEstimator):
    """A classifier whose ``fault`` is one of: raises, nan_proba, wrong_shape, unknown_class, not_probabilities,
    hangs (predict never returns), hangs_when_refitted (fit never returns: audits that retrain clones hang)."""

    def __init__(self, inner=None, fault: str = "raises") -> None:
        self.inner = inner
        self.fault = fault

    def fit(self, X, y):
        if self.fault == "hangs_when_refitted":
            time.sleep(3600)
        self.inner.fit(X, y)
        self.classes_ = self.inner.classes_
        return self

    def _labels(self, X):
        if self.fault == "raises":
            raise RuntimeError("the feature store behind this model is down")
        if self.fault == "hangs":
            time.sleep(3600)
        labels = np.asarray(self.inner.predict(X), dtype=object)
        if self.fault == "wrong_shape":
            return np.column_stack([labels, labels])
        if self.fault == "unknown_class":
            labels[len(labels) // 2] = "maybe"
        return labels

    def predict(self, X):
        return self._labels(X)

    def predict_proba(self, X):
        self._labels(X)
        proba = self.inner.predict_proba(X)
        if self.fault == "nan_proba":
            proba[::7] = np.nan
        if self.fault == "not_probabilities":
            proba = proba * 3
        return proba


def fitted(inner, fault: str) -> Faulty:
    model = Faulty(inner, fault)
    model.classes_ = inner.classes_
    return model


class Snoop(PythonModel):
    """A pyfunc model that, the first time it
    predicts, looks for what would let it forge its own audit, and prints what it found to stderr (lines starting
    SNOOP): credentials in its environment, in the auditor's (its parent's) and in any other process's environment, in
    ~/.mlflow/credentials; a tag written to its version in the tracking store whose path it was given; a TCP
    connection to a port it was given. Its predictions are those of a linear formula."""

    done = False

    def load_context(self, context):
        self.config = dict(context.model_config or {})

    def predict(self, context, model_input, params=None):
        if not Snoop.done:
            Snoop.done = True
            self._snoop()
        return 2.0 * model_input["x1"] - model_input["x2"]

    def _snoop(self) -> None:
        import glob
        import os
        import socket
        import sys

        say = lambda what, found: print(f"SNOOP {what}: {found}", file=sys.stderr, flush=True)  # noqa: E731
        say("env", sorted(k for k, v in os.environ.items()
                          if "SNOOP_BAIT" in v or k.endswith(("PASSWORD", "USERNAME", "TOKEN", "_KEY", "_SECRET"))))
        say("tracking uri", os.environ.get("MLFLOW_TRACKING_URI"))
        leaked = []
        for path in glob.glob("/proc/[0-9]*/environ"):
            try:
                with open(path, "rb") as handle:
                    if b"SNOOP_BAIT" in handle.read():
                        leaked.append(path)
            except OSError:
                continue
        say("other environments", leaked)
        try:
            with open(os.path.expanduser("~/.mlflow/credentials")) as handle:
                say("credentials file", "read " + handle.read().strip().replace("\n", " "))
        except OSError as exc:
            say("credentials file", f"refused ({type(exc).__name__})")
        try:
            import sqlite3

            with sqlite3.connect(self.config["store"]) as db:
                db.execute("INSERT INTO model_version_tags (key, value, name, version) VALUES ('audit.verdict', 'PASS', ?, ?)",
                           (self.config["name"], int(self.config["version"])))
            say("tag", "written")
        except Exception as exc:
            say("tag", f"refused ({type(exc).__name__}: {exc})")
        try:
            socket.create_connection(("127.0.0.1", int(self.config["port"])), timeout=5).close()
            say("tcp", "connected")
        except OSError as exc:
            say("tcp", f"refused ({type(exc).__name__})")
