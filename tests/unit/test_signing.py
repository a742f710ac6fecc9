"""The manifest's signature (tasks/adapters/signing.py): a canonical form that no key order or indentation changes, a
signature that any edit breaks, a key named only by its fingerprint, and keys that cannot sign refused with the fix.
The check of a stored run against its manifest: tests/integration/test_verify.py."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import pickle
from pathlib import Path

import pytest

from tasks.adapters import signing
from tasks.adapters.errors import ConfigError
from tasks.adapters.signing import SigningKey, canonical, signing_key

SECRET = "k" * 20 + "-unit-test-secret-0123"  # 42 bytes
KEY = SigningKey(SECRET.encode(), "test")


def manifest() -> dict:
    return {
        "auditlens_manifest": 1, "run_id": "abc123", "complete": True, "verdict": "FAIL",
        "model": {"uri": "models:/credit/3", "name": "credit", "version": "3"},
        "audits": [{"id": "performance", "verdict": "FAIL"}, {"id": "shap", "verdict": "PASS"}],
        "metrics": {"performance.current.accuracy": 0.8125, "shap.rows_explained": 60.0, "calibration.ece": "NaN"},
        "artifacts": {"shap/importance.csv": {"bytes": 120, "sha256": "ab" * 32}},
        "note": "é ünïcode",
    }  # fmt: skip


def reordered(value):
    if isinstance(value, dict):
        return {key: reordered(value[key]) for key in reversed(list(value))}
    if isinstance(value, list):
        return [reordered(item) for item in value]
    return value


def test_the_canonical_form_ignores_key_order_indentation_and_the_signature():
    signed = KEY.sign(manifest())
    assert canonical(reordered(signed)) == canonical(manifest())
    assert canonical(json.loads(json.dumps(signed, indent=2))) == canonical(manifest())
    text = canonical(manifest()).decode("ascii")  # ASCII only, no whitespace between tokens, keys sorted
    assert "\\u00e9" in text and ", " not in text and ": " not in text
    assert text.index('"artifacts"') < text.index('"audits"') < text.index('"verdict"')


def test_a_signed_manifest_matches_after_a_round_trip_through_its_file(tmp_path):
    signed = KEY.sign(signing.as_stored({**manifest(), "config": {"path": Path("/x/audit.yaml"), "shape": (3, 4)}}))
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(signed, indent=2))
    read = json.loads(path.read_text())
    assert read["signature"] == {"alg": "HMAC-SHA256", "key_id": KEY.key_id, "value": signed["signature"]["value"]}
    assert KEY.matches(reordered(read))


EDITS = {
    "the verdict": lambda m: m.update(verdict="PASS"),
    "an audit's verdict": lambda m: m["audits"][0].update(verdict="PASS"),
    "a metric": lambda m: m["metrics"].update({"performance.current.accuracy": 0.8125000000000001}),
    "a NaN metric": lambda m: m["metrics"].update({"calibration.ece": 0.0}),
    "an artifact's hash": lambda m: m["artifacts"]["shap/importance.csv"].update(sha256="cd" * 32),
    "an artifact's size": lambda m: m["artifacts"]["shap/importance.csv"].update(bytes=121),
    "the run": lambda m: m.update(run_id="def456"),
    "the model version": lambda m: m["model"].update(version="4"),
    "an added field": lambda m: m.update(extra=None),
    "a removed artifact": lambda m: m["artifacts"].clear(),
    "an audit's order": lambda m: m["audits"].reverse(),
    "completeness": lambda m: m.update(complete=False),
}


@pytest.mark.parametrize("edit", EDITS.values(), ids=EDITS.keys())
def test_any_edit_breaks_the_signature(edit):
    signed = KEY.sign(manifest())
    assert KEY.matches(signed)
    tampered = copy.deepcopy(signed)
    edit(tampered)
    assert not KEY.matches(tampered)


def test_another_key_or_a_broken_signature_never_matches():
    other = SigningKey(b"another key, also long enough to sign with", "test")
    assert other.key_id != KEY.key_id and not KEY.matches(other.sign(manifest()))
    signed = KEY.sign(manifest())
    for value in (None, "", "zz", 42, signed["signature"]["value"].upper()):
        assert not KEY.matches({**signed, "signature": {**signed["signature"], "value": value}})
    assert not KEY.matches({**signed, "signature": None}) and not KEY.matches(manifest())


def test_the_key_id_is_a_fingerprint_not_the_key():
    assert len(KEY.key_id) == 16 and int(KEY.key_id, 16) >= 0
    assert KEY.key_id not in (SECRET, SECRET.encode().hex()) and KEY.key_id not in SECRET.encode().hex()
    assert KEY.key_id != hashlib.sha256(SECRET.encode()).hexdigest()[:16]  # not the plain hash a reused secret shares
    assert KEY.key_id == SigningKey(SECRET.encode(), "elsewhere").key_id  # stable: it names the key
    assert SECRET not in repr(KEY) and KEY.key_id in repr(KEY)
    assert SECRET not in json.dumps(KEY.sign(manifest()))
    with pytest.raises(TypeError):
        pickle.dumps(KEY)
    assert KEY.without_key(f"oops {SECRET} and {SECRET.encode().hex()}") == "oops *** and ***"


def test_the_key_comes_from_the_environment_or_a_file(tmp_path):
    assert signing_key({}) is None and signing_key({"AUDITLENS_SIGNING_KEY": ""}) is None
    assert signing_key({"AUDITLENS_SIGNING_KEY": SECRET}).key_id == KEY.key_id
    secret_file = tmp_path / "signing.key"
    secret_file.write_text(SECRET + "\n")  # as `echo` or an editor writes it
    from_file = signing_key({"AUDITLENS_SIGNING_KEY_FILE": str(secret_file)})
    assert from_file.key_id == KEY.key_id and str(secret_file) in from_file.source


@pytest.mark.parametrize("environ, named, says", [
    ({"AUDITLENS_SIGNING_KEY": "too-short-a-key"}, "AUDITLENS_SIGNING_KEY", "at least 32 bytes"),
    ({"AUDITLENS_SIGNING_KEY_FILE": "{short}"}, "AUDITLENS_SIGNING_KEY_FILE", "at least 32 bytes"),
    ({"AUDITLENS_SIGNING_KEY_FILE": "{missing}"}, "AUDITLENS_SIGNING_KEY_FILE", "cannot be read"),
    ({"AUDITLENS_SIGNING_KEY": SECRET, "AUDITLENS_SIGNING_KEY_FILE": "{short}"}, "both", "not clear which key"),
], ids=["short", "short file", "missing file", "both"])  # fmt: skip
def test_a_key_that_cannot_sign_is_refused_with_the_fix(tmp_path, environ, named, says):
    (tmp_path / "short").write_text("too-short-a-key\n")
    environ = {k: v.format(short=tmp_path / "short", missing=tmp_path / "missing") for k, v in environ.items()}
    with pytest.raises(ConfigError) as refused:
        signing_key(environ)
    message = str(refused.value)
    assert named in message and says in message and refused.value.fix
    assert "too-short-a-key" not in message and SECRET not in message
    if says == "at least 32 bytes":
        assert "secrets.token_hex(32)" in refused.value.fix


def test_metrics_json_cannot_hold_are_named_and_compared_as_the_store_keeps_them():
    assert [signing.metric_entry(v) for v in (0.5, math.nan, math.inf, -math.inf, 3)] == [0.5, "NaN", "Infinity", "-Infinity", 3.0]
    json.dumps([signing.metric_entry(math.nan)], allow_nan=False)  # valid JSON for any reader
    same = signing._same_metric
    assert same(0.1 + 0.2, 0.30000000000000004) and not same(0.3, 0.30000000000000004)  # exact
    assert same(math.nan, math.nan) and not same(math.nan, 0.0) and not same(0.0, math.nan)
    assert same(math.inf, signing.SQL_INFINITY) and same(-math.inf, -signing.SQL_INFINITY) and not same(math.inf, -signing.SQL_INFINITY)
    assert signing._metric_value("NaN") != signing._metric_value("NaN")  # a NaN
    assert signing._metric_value(True) is None and signing._metric_value("0.5") is None
