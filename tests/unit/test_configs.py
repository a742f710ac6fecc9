"""Every YAML in config/ validates; every file in tests/invalid_configs/ fails with the message its first line names."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tasks.adapters.demo import load_demo_settings
from tasks.adapters.errors import ConfigError
from tasks.adapters.settings import load_settings, read_yaml
from tests.conftest import ROOT

SHIPPED = sorted((ROOT / "config").rglob("*.yaml"))
INVALID = sorted((ROOT / "tests" / "invalid_configs").glob("*.yaml"))


def load_any(path: Path):
    from tasks.adapters.deployments import load_deployments

    kind = read_yaml(path).get("kind", "audit")
    if kind == "deployments":
        return load_deployments(path, check_files=False)  # its audit configs are written by `make demo`
    return load_demo_settings(path) if kind == "demo" else load_settings(path)


def test_there_are_shipped_and_invalid_configs():
    assert {p.name for p in SHIPPED} >= {"demo.yaml", "example-audit.yaml", "deployments.yaml"}
    assert len(INVALID) >= 10


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    loaded = load_any(path)
    if path.name == "example-audit.yaml":
        assert [p.id for p in loaded.plan][:3] == ["data_quality", "performance", "shap"] and len(loaded.plan) == 10
        assert len(loaded.config_hash) == 16


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_configs_fail_with_a_clear_message(path):
    expected = path.read_text().splitlines()[0].removeprefix("# expect: ")
    with pytest.raises(ConfigError) as info:
        load_any(path)
    message = str(info.value)
    assert str(path) in message
    assert expected in message
    assert "fix:" in message


@pytest.mark.parametrize("path", INVALID[:3], ids=lambda p: p.name)
def test_cli_reports_invalid_configs_in_one_message_with_exit_code_2(path):
    result = subprocess.run([str(Path(sys.executable).parent / "auditlens"), "check-config", str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "error:" in result.stderr and "Traceback" not in result.stderr + result.stdout


def test_config_hash_is_stable_and_sensitive(tmp_path):
    text = (ROOT / "config" / "example-audit.yaml").read_text()
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(text)
    b.write_text(text.replace("seed: 7", "seed: 8"))
    assert load_settings(a).config_hash == load_settings(ROOT / "config" / "example-audit.yaml").config_hash
    assert load_settings(a).config_hash != load_settings(b).config_hash


def test_relative_paths_start_at_the_config_file(tmp_path, monkeypatch):
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "a.yaml").write_text(
        "kind: audit\ndata: {reference: data/ref.csv, current: /abs/cur.csv}\n"
        "mlflow: {tracking_uri: sqlite:///../store/mlflow.db}\naudits: [{audit: performance}]\n"
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://from-env:5000")
    loaded = load_settings(folder / "a.yaml")
    assert loaded.data_path("reference") == folder / "data" / "ref.csv"
    assert str(loaded.data_path("current")) == "/abs/cur.csv"
    assert loaded.tracking_uri() == f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    assert loaded.tracking_uri("http://flag:1") == "http://flag:1"
    (folder / "b.yaml").write_text("kind: audit\ndata: {reference: r.csv, current: c.csv}\naudits: [{audit: shap}]\n")
    assert load_settings(folder / "b.yaml").tracking_uri() == "http://from-env:5000"


def test_prefect_yaml_is_rendered_from_the_deployments_configuration():
    from auditlens.serving import render_prefect_yaml
    from tasks.adapters.deployments import load_deployments

    rendered = render_prefect_yaml(load_deployments(ROOT / "config" / "deployments.yaml", check_files=False), ROOT)
    assert (ROOT / "prefect.yaml").read_text() == rendered, "run `auditlens deployments render` and commit prefect.yaml"
    names = [d["name"] for d in __import__("yaml").safe_load(rendered)["deployments"]]
    assert names == ["audit-model", "scheduled-demo-classifier", "scheduled-demo-regressor", "scheduled-demo-digits",
                     "scheduled-demo-adverts", "watch-registry"]


def test_the_sample_is_what_the_planned_audits_afford_unless_sampling_caps_it(tmp_path):
    base = "kind: audit\ndata: {reference: r.csv, current: c.csv}\n"
    (tmp_path / "a.yaml").write_text(base + "audits: [{audit: shap}, {audit: drift}]\n")
    assert load_settings(tmp_path / "a.yaml").sample_rows("current") == 20_000
    (tmp_path / "b.yaml").write_text(base + "audits: [{audit: shap}, {audit: concordance}]\n")
    grown = load_settings(tmp_path / "b.yaml")
    assert grown.sample_rows("reference") == grown.sample_rows("current") == 200_000
    (tmp_path / "c.yaml").write_text(base + "sampling: {current_rows: 5000}\naudits: [{audit: shap}, {audit: concordance}]\n")
    capped = load_settings(tmp_path / "c.yaml")
    assert capped.sample_rows("current") == 5000 and capped.sample_rows("reference") == 200_000
