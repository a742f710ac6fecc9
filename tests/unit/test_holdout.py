"""data.holdout: labelled rows the model did not train on, read beside the reference and current data, predicted on
once, and used by the audits that fit on labelled rows to judge the model (they say so, and say when they fell back)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.linear_model import LogisticRegression

from audits.core.context import ModelUnderAudit
from audits.core.plan import PlannedAudit
from audits.core.registry import get_audit_class
from audits.core.runner import run_planned
from tasks.adapters.errors import DataError
from tasks.adapters.inputs import assemble_loaded, preflight_data
from tasks.adapters.models import ModelRef
from tasks.adapters.settings import load_settings

REF = ModelRef(uri="models:/m/1", load_uri="models:/m/1", name="m", version="1")


def rows(rng, n):
    X = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n)})
    return X.assign(label=np.where(rng.random(n) < 1 / (1 + np.exp(-2 * X["a"])), "yes", "no"))


@pytest.fixture()
def world(tmp_path):
    rng = np.random.default_rng(0)
    for name, n in (("reference", 400), ("current", 300), ("holdout", 200)):
        rows(rng, n).to_csv(tmp_path / f"{name}.csv", index=False)
    train = pd.read_csv(tmp_path / "reference.csv")
    model = ModelUnderAudit.from_estimator(LogisticRegression().fit(train[["a", "b"]], train["label"]),
                                           uri="models:/m/1", name="m", version="1")
    return tmp_path, model


def settings(folder, sampling=None, **data):
    config = {"kind": "audit", "data": {"reference": "reference.csv", "current": "current.csv", "target": "label", **data},
              "audits": [{"audit": "calibration"}, {"audit": "conformal"}]}
    if sampling:
        config["sampling"] = sampling
    (folder / "audit.yaml").write_text(yaml.safe_dump(config))
    return load_settings(folder / "audit.yaml")


def run(name, context):
    cls = get_audit_class(name)
    return run_planned(PlannedAudit(name, cls(), cls.default_thresholds), context)


@pytest.mark.parametrize("every_row", [False, True])
def test_the_holdout_is_read_predicted_on_and_recorded(world, every_row):
    folder, model = world
    # a sample budget below the rows: the every-row path (read by partition) must bring the holdout too
    loaded = settings(folder, {"reference_rows": 100, "current_rows": 100} if every_row else None, holdout="holdout.csv")
    preflight_data(loaded)
    inputs = assemble_loaded(REF, loaded, model, None, "no baseline")
    holdout = inputs.context.holdout
    assert holdout is not None and holdout.labelled and holdout.name == "holdout"
    assert len(holdout) == (100 if every_row else 200)
    assert np.array_equal(holdout.predictions.proba, model.predict_proba(holdout.X))
    assert inputs.fingerprints["holdout"]["rows"] == 200
    assert (inputs.full is not None) == every_row
    if every_row:  # the every-row pass fits its hybrid audits on a context that already holds the holdout
        assert inputs.full.fitted["conformal"]["mode"] == "holdout"
        assert inputs.context.stratified is None and inputs.context.holdout is holdout
    assert "holdout" in loaded.data_roles


def test_calibration_and_conformal_fit_on_the_holdout_and_say_so(world):
    folder, model = world
    with_holdout = assemble_loaded(REF, settings(folder, holdout="holdout.csv"), model, None, "").context
    without = assemble_loaded(REF, settings(folder), model, None, "").context
    calibration, conformal = run("calibration", with_holdout), run("conformal", with_holdout)
    assert calibration.info["recalibration_data"].startswith("fitted on the holdout (200 labelled rows")
    assert conformal.info["calibration_data"].startswith("conformalized on the holdout (200 labelled rows")
    assert conformal.metrics["conformal.evaluation_rows"] == 300  # every labelled current row is evaluated
    assert "fitted on the reference" in run("calibration", without).info["recalibration_data"]
    assert "there is no holdout (data.holdout)" in run("conformal", without).info["calibration_data"]


def test_a_holdout_without_labels_or_file_is_refused_with_the_fix(world):
    folder, _ = world
    pd.read_csv(folder / "holdout.csv").drop(columns="label").to_csv(folder / "unlabelled.csv", index=False)
    with pytest.raises(DataError) as raised:
        preflight_data(settings(folder, holdout="unlabelled.csv"))
    assert "holdout" in str(raised.value) and "label" in str(raised.value)
    with pytest.raises(DataError, match="holdout data .*missing.csv does not exist"):
        preflight_data(settings(folder, holdout="missing.csv"))
    (folder / "parts").mkdir()
    with pytest.raises(DataError, match="a holdout is one CSV or Parquet file"):
        preflight_data(settings(folder, holdout="parts"))
