"""A third party's audit, in a package of its own (tests/plugin/site: the package and its dist-info, as pip would
install them), registered through the entry-point group and checked with the public audits.testing.check_audit."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from audits.core.registry import available_audits, get_audit_class
from audits.testing import (
    check_audit,
    check_audit_contract,
    classifier_context,
    context_for,
    make_pipeline_model,
    make_tabular,
)
from tests.conftest import ROOT

SITE = ROOT / "tests" / "plugin" / "site"


@pytest.fixture
def plugin_installed(monkeypatch):
    monkeypatch.syspath_prepend(str(SITE))  # importlib.metadata reads sys.path when asked
    yield
    sys.modules.pop("auditlens_example_plugin", None)


def test_the_plugin_is_not_there_until_installed():
    assert "missing_cells" not in available_audits()


def test_a_plugin_in_its_own_package_registers_and_passes_check_audit(plugin_installed):
    assert available_audits()["missing_cells"] == "auditlens_example_plugin:MissingCellsAudit"
    cls = get_audit_class("missing_cells")
    assert cls.__module__ == "auditlens_example_plugin"
    results = check_audit(cls)
    assert set(results) == {"classifier_context", "regressor_context"}  # the modalities it is made for
    current = classifier_context().current.X
    expected = current.isna().to_numpy().mean()
    assert expected > 0  # x3 is missing in about 5 % of rows
    assert results["classifier_context"].metrics["missing_cells.current.share"] == pytest.approx(expected)
    assert results["classifier_context"].metrics["missing_cells.current.worst_column_share"] == pytest.approx(current["x3"].isna().mean())


def fresh_context():
    X, y = make_tabular(120, seed=3)
    return context_for(make_pipeline_model(X, y, "logistic"), X, y, split=60)


@pytest.mark.parametrize(("broken", "message"), [("ShufflingAudit", "mutated its inputs"),
                                                 ("UnseededAudit", "differs between two runs with the same seed")])
def test_check_audit_catches_a_broken_plugin(plugin_installed, broken, message):
    import auditlens_example_plugin as plugin

    context = fresh_context()  # the broken plugin may damage it: never a shared one
    with pytest.raises(AssertionError, match=message):
        check_audit_contract(getattr(plugin, broken), context)


def test_check_audit_refuses_what_is_not_an_audit():
    with pytest.raises(TypeError, match="Audit subclass"):
        check_audit(np.mean)
