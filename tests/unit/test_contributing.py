"""CONTRIBUTING.md's example audit is real: its code, as written there, passes check_audit with the right values."""

from __future__ import annotations

import re
import types

import numpy as np
import pytest

from audits.testing import check_audit, classifier_context
from tests.conftest import ROOT


def test_the_example_audit_in_contributing_passes_the_contract():
    text = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    module = types.ModuleType("margin_example")
    exec(compile(code, "CONTRIBUTING.md", "exec"), module.__dict__)
    results = check_audit(module.MarginAudit)
    assert set(results) == {"classifier_context", "regressor_context"}
    assert results["regressor_context"].verdict.value == "SKIPPED"  # classifiers only, with the reason
    proba = classifier_context().current.predictions.proba
    top2 = -np.sort(-proba, axis=1)[:, :2]
    assert results["classifier_context"].metrics["margin.current.near_tie_share"] == pytest.approx(float((top2[:, 0] - top2[:, 1] < 0.1).mean()))
