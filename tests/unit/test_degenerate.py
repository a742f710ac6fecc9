"""Data too poor for a statistic gets "cannot tell", never PASS: every audit on the degenerate datasets of its modality
(audits.testing.degenerate_context) through the public check, then what each must say there, from the truth we planted."""

from __future__ import annotations

import pytest

from audits.core.registry import BUILTIN_AUDITS, get_audit_class
from audits.core.result import Verdict
from audits.testing import DEGENERATE, check_degenerate, degenerate_modality

CASES = [(name, kind) for kind in DEGENERATE for name in sorted(BUILTIN_AUDITS)
         if degenerate_modality(kind) in get_audit_class(name).requires.modalities]


@pytest.mark.parametrize(("name", "kind"), CASES, ids=[f"{n}-{k}" for n, k in CASES])
def test_no_audit_claims_more_than_degenerate_data_allows(name, kind):
    check_degenerate(get_audit_class(name), kind)


def test_every_audit_meets_degenerate_data():
    assert {name for name, _ in CASES} == set(BUILTIN_AUDITS)


def verdicts(kind, *names):
    return {n: check_degenerate(get_audit_class(n), kind) for n in names}


def test_one_feature_rank_statistics_cannot_tell_and_the_planted_faults_are_found():
    out = verdicts("one_feature", "sanity_checks", "explanation_agreement", "explanation_stability", "importance",
                   "projections", "calibration", "drift", "ood")
    # rankings of one feature cannot disagree: every rank-based check says so instead of passing
    for name in ("sanity_checks", "explanation_agreement", "explanation_stability", "importance", "projections"):
        assert out[name].verdict is Verdict.SKIPPED, (name, out[name].reason)
    assert "feature" in out["sanity_checks"].reason and "cannot tell" in out["explanation_stability"].reason
    # what the data can show, it shows: a confidently wrong model, a 3-sd shift
    assert out["calibration"].verdict is Verdict.FAIL and out["calibration"].metrics["calibration.reference.accuracy"] < 0.2
    assert out["drift"].verdict is Verdict.FAIL
    assert out["ood"].verdict in (Verdict.WARN, Verdict.FAIL)


def test_on_ten_rows_an_excess_z_that_could_never_reach_its_bound_cannot_tell():
    out = verdicts("ten_rows", "ood", "conformal", "drift")
    ood = out["ood"]
    # every current row is shifted by 3 sd, but with 10 reference rows (3 held out) even all flagged is unremarkable
    assert ood.verdict is Verdict.SKIPPED and "could never fail" in ood.reason
    assert ood.metrics["ood.knn.flagged_share"] == 1.0 and ood.metrics["ood.max_excess_z"] < 3
    assert out["conformal"].verdict is Verdict.SKIPPED and "too few labelled rows" in out["conformal"].reason
    assert out["drift"].verdict is not Verdict.PASS  # a 3-sd shift shows even on ten rows


def test_a_bootstrap_member_sees_every_class_on_tiny_data():
    result = check_degenerate(get_audit_class("disagreement"), "tiny")
    assert result.verdict is Verdict.PASS and result.metrics["disagreement.members"] >= 2
