"""The result cache's keys: a change to anything a result depends on is a new key; nothing else is."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tasks.adapters import result_cache
from tasks.adapters.models import ModelRef
from tasks.adapters.result_cache import ResultCache, cache_keys, files_digest
from tasks.adapters.settings import load_settings

AUDITS = [{"audit": "performance"}, {"audit": "drift", "config": {"bins": 10}}]


@pytest.fixture()
def world(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "MLmodel").write_text("flavors: {}\n")
    (tmp_path / "model" / "model.pkl").write_bytes(b"weights-1")
    (tmp_path / "reference.csv").write_text("a,label\n1,0\n2,1\n")
    (tmp_path / "current.csv").write_text("a,label\n1,0\n3,1\n")
    return tmp_path


def keys(world: Path, ref: ModelRef | None = None, **overrides):
    config = {"kind": "audit", "seed": 1, "data": {"reference": "reference.csv", "current": "current.csv", "target": "label"},
              "audits": AUDITS, **overrides}
    (world / "audit.yaml").write_text(yaml.safe_dump(config))
    ref = ref or ModelRef(uri="models:/m/1", load_uri="models:/m/1", name="m", version="1")
    return cache_keys(ref, load_settings(world / "audit.yaml"), str(world / "model"), None, "no baseline")


def test_the_same_inputs_give_the_same_keys(world):
    assert keys(world) == keys(world)


@pytest.mark.parametrize("change", ["model bytes", "model file name", "reference bytes", "current bytes", "seed",
                                    "sampling", "model version", "features", "security", "holdout", "holdout bytes"])
def test_a_change_to_the_shared_inputs_changes_every_key(world, change):
    before = keys(world)
    overrides: dict = {}
    ref = None
    if change == "model bytes":
        (world / "model" / "model.pkl").write_bytes(b"weights-2")
    elif change == "model file name":
        shutil.move(world / "model" / "model.pkl", world / "model" / "model2.pkl")
    elif change == "reference bytes":
        (world / "reference.csv").write_text("a,label\n1,0\n2,0\n")
    elif change == "current bytes":
        (world / "current.csv").write_text("a,label\n1,0\n3,0\n")
    elif change == "seed":
        overrides["seed"] = 2
    elif change == "sampling":
        overrides["sampling"] = {"current_rows": 1}
    elif change == "model version":
        ref = ModelRef(uri="models:/m/2", load_uri="models:/m/2", name="m", version="2")
    elif change == "features":
        overrides["data"] = {"reference": "reference.csv", "current": "current.csv", "target": "label", "features": ["a"]}
    elif change == "security":
        overrides["security"] = {"model_loading": "trusted"}
    elif change in ("holdout", "holdout bytes"):
        (world / "holdout.csv").write_text("a,label\n5,1\n6,0\n")
        with_holdout = {"reference": "reference.csv", "current": "current.csv", "target": "label", "holdout": "holdout.csv"}
        if change == "holdout bytes":
            before = keys(world, **{"data": with_holdout})
            (world / "holdout.csv").write_text("a,label\n5,1\n6,1\n")
        overrides["data"] = with_holdout
    after = keys(world, ref, **overrides)
    assert after.inputs != before.inputs
    assert not set(after.audits.values()) & set(before.audits.values())


def test_a_change_to_one_audit_changes_its_key_only(world):
    before = keys(world)
    config = keys(world, audits=[AUDITS[0], {"audit": "drift", "config": {"bins": 12}}])
    threshold = keys(world, audits=[AUDITS[0], {**AUDITS[1], "thresholds": [{"metric": "drift.domain_auc", "max": 0.7}]}])
    for after in (config, threshold):
        assert after.audits["performance"] == before.audits["performance"]
        assert after.audits["drift"] != before.audits["drift"]


def test_the_file_mlflow_adds_when_the_version_is_loaded_is_not_part_of_the_key(world):
    before = keys(world)
    (world / "model" / "registered_model_meta").write_text("model_name: m\nmodel_version: '1'\n")
    assert keys(world) == before


def test_where_the_record_goes_and_how_long_an_audit_may_take_are_not_part_of_the_key(world):
    before = keys(world)
    assert keys(world, mlflow={"tracking_uri": "http://127.0.0.1:5999"}, limits={"audit_s": 60}) == before


def test_a_change_to_the_code_or_the_packages_changes_every_key(world, monkeypatch):
    before = keys(world)
    monkeypatch.setattr(result_cache, "code_digest", lambda: "another version of the code")
    after = keys(world)
    assert after.inputs != before.inputs and not set(after.audits.values()) & set(before.audits.values())


def test_the_code_digest_reads_every_source_file_and_the_installed_packages():
    from importlib.metadata import version

    digest = result_cache.code_digest()
    assert len(digest) == 64 and digest == result_cache.code_digest()
    # a change to one byte of a file changes the digest of the files: the same function hashes the sources
    assert files_digest([Path(result_cache.__file__)]) != files_digest([Path(__file__)])
    assert version("scikit-learn")  # the packages are read from the installed distributions' metadata


def test_the_installed_packages_read_from_folder_names_are_those_their_metadata_names():
    """``installed_distributions`` reads a .dist-info folder's name instead of parsing its metadata: the same
    distributions and versions as importlib.metadata says, names compared as packaging canonicalises them."""
    from importlib.metadata import distributions

    from packaging.utils import canonicalize_name

    def canonical(entries):
        return {(canonicalize_name(name), version) for name, version in entries}

    ours = canonical(entry.rsplit("-", 1) for entry in result_cache.installed_distributions())
    theirs = canonical((d.metadata["Name"], d.version) for d in distributions() if d.metadata["Name"])
    assert len(ours) > 50 and ours == theirs
    assert ("scikit-learn", __import__("sklearn").__version__) in ours


def test_an_error_is_never_kept_and_an_entry_reads_back_only_under_its_own_key(tmp_path):
    cache = ResultCache(tmp_path)
    cache.put_result("a" * 64, {"audit": "x", "verdict": "ERROR"}, "run1")
    assert cache.result("a" * 64) is None
    cache.put_result("b" * 64, {"audit": "x", "verdict": "PASS"}, "run1")
    assert cache.result("b" * 64)[0]["verdict"] == "PASS" and cache.result("b" * 64)[1]["run_id"] == "run1"
    # an entry copied under another key is not served
    target = tmp_path / "results" / "cc" / f"{'c' * 64}.json"
    target.parent.mkdir(parents=True)
    shutil.copy(tmp_path / "results" / "bb" / f"{'b' * 64}.json", target)
    assert cache.result("c" * 64) is None


def test_the_longest_audits_start_first_by_their_last_timing_else_their_typical_cost(tmp_path):
    from audits.core.plan import AuditPlan
    from audits.core.result import AuditResult
    from tasks.audit_tasks import Reuse

    plan = AuditPlan(audits=[{"audit": "performance"}, {"audit": "drift"}, {"audit": "calibration"},
                             {"audit": "projections"}]).build()
    cache = ResultCache(tmp_path)
    reuse = Reuse(cache=cache)
    assert [p.id for p in reuse.order(plan)] == ["drift", "projections", "performance", "calibration"]  # typical costs
    reuse.remember([AuditResult(audit="calibration", duration_s=9.0), AuditResult(audit="drift", duration_s=2.0)], plan)
    assert cache.durations() == {"calibration": 9.0, "drift": 2.0}
    assert [p.id for p in Reuse(cache=cache).order(plan)] == ["calibration", "projections", "drift", "performance"]
    # what the cache serves is not computed, so not scheduled
    hits = {"projections": AuditResult(audit="projections", info={"cached": "x"})}
    assert [p.id for p in Reuse(cache=cache, hits=hits).order(plan)] == ["calibration", "drift", "performance"]


def test_with_a_signing_key_only_entries_signed_with_it_are_served(tmp_path):
    import json

    from tasks.adapters.signing import SigningKey

    key, other = SigningKey(b"k" * 32, "test"), SigningKey(b"o" * 32, "test")
    signed = ResultCache(tmp_path, key)
    signed.put_result("d" * 64, {"audit": "x", "verdict": "PASS", "metrics": {"x.a": float("nan")}}, "run1")
    assert signed.result("d" * 64)[0]["verdict"] == "PASS"
    assert ResultCache(tmp_path, other).result("d" * 64) is None  # another key: not served
    # a planted entry (no signature, or the signature of the real entry on changed content) is not served
    path = tmp_path / "results" / "dd" / f"{'d' * 64}.json"
    entry = json.loads(path.read_text())
    entry["result"]["verdict"] = "FAIL"
    path.write_text(json.dumps(entry))
    assert signed.result("d" * 64) is None
    ResultCache(tmp_path).put_result("e" * 64, {"audit": "x", "verdict": "PASS"}, "run1")
    assert signed.result("e" * 64) is None and ResultCache(tmp_path).result("e" * 64) is not None
