"""`auditlens init` without a model registry: what it finds in tiny frames and files, what it decides, and the YAML it
writes (read back by the audit's own loader). The model is described by hand (ModelFacts), as the model's process
would describe it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from tasks.adapters import scaffold
from tasks.adapters.errors import ConfigError, DataError
from tasks.adapters.scaffold import ModelFacts, decide, describe_frame, inspect_data

CLASSIFIER = ModelFacts(uri="models:/clinic/1", label="clinic v1", flavors=("python_function", "sklearn"),
                        serialization="skops", model_file="model.skops", task="classification", classes=(0, 1),
                        features=("age", "glucose", "clinic"), features_from="the model's feature_names_in_",
                        estimator="Pipeline (ColumnTransformer, LogisticRegression)", loaded=True)


def patients(rows: int = 12, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "age": rng.integers(20, 80, rows),
        "glucose": rng.normal(100, 20, rows),
        "clinic": (["north", "south", "east"] * rows)[:rows],
        "ward": ([1, 2] * rows)[:rows],                      # a low-cardinality integer: not a segment candidate
        "smoker": ([True, False, False] * rows)[:rows],
        "patient_id": [f"P{i:04d}" for i in range(rows)],   # a string of one value per row: not a candidate
        "readmitted": ([0, 1, 1, 0] * rows)[:rows],
    })


def facts(frame: pd.DataFrame, role: str = "reference") -> scaffold.DataFacts:
    return describe_frame(frame, role, f"/data/{role}.csv")


def test_columns_are_described_by_kind_and_cardinality():
    found = facts(patients())
    kinds = {c.name: (c.kind, c.distinct) for c in found.columns}
    assert kinds == {"age": ("integer", kinds["age"][1]), "glucose": ("number", 12), "clinic": ("category", 3),
                     "ward": ("integer", 2), "smoker": ("boolean", 2), "patient_id": ("category", 12),
                     "readmitted": ("integer", 2)}
    clinic = found.column("clinic")
    assert clinic.common == ("east", "north", "south") and clinic.summary(20) == "category, 3 values (east, north, south)"
    assert found.column("readmitted").common == ("0", "1") and found.rows == 12


def test_the_target_is_the_reference_column_the_model_does_not_read_whose_values_are_its_classes():
    target, why = scaffold.infer_target(facts(patients()), CLASSIFIER)
    assert target == "readmitted"  # ward, smoker and patient_id are not features either; only its values are {0, 1}
    assert "the model's classes" in why
    only = patients()[["age", "glucose", "clinic", "readmitted"]]
    assert scaffold.infer_target(facts(only), CLASSIFIER) == (
        "readmitted", "the one reference column that is not among the 3 features the model expects")


def test_a_model_that_does_not_name_its_features_gets_the_column_named_like_a_target():
    frame = patients().rename(columns={"readmitted": "label"})
    unnamed = ModelFacts(uri="models:/x/1", label="x v1", task="regression")
    assert scaffold.infer_target(facts(frame[["age", "glucose", "label"]]), unnamed)[0] == "label"


def test_an_ambiguous_target_is_one_error_that_asks_for_target():
    frame = patients().assign(readmitted_again=lambda f: f["readmitted"])
    with pytest.raises(DataError) as caught:
        scaffold.infer_target(facts(frame), CLASSIFIER)
    assert "readmitted" in caught.value.problem and "readmitted_again" in caught.value.problem
    assert "--target" in caught.value.fix


def test_a_target_whose_values_are_not_the_models_classes_is_refused():
    frame = patients().assign(readmitted=lambda f: np.where(f["readmitted"] == 1, "yes", "no"))
    with pytest.raises(DataError, match=r"holds \[no, yes\], which are not among the model's classes \[0, 1\]"):
        decide(CLASSIFIER, facts(frame), facts(frame, "current"), target="readmitted")


def test_decisions_on_a_tabular_classifier():
    chosen = decide(CLASSIFIER, facts(patients()), facts(patients(8, seed=1), "current"), max_values=20)
    assert chosen.target == "readmitted" and chosen.task == "classification" and chosen.modality == "tabular"
    assert chosen.features == ("age", "glucose", "clinic") and not chosen.features_written  # the model's own names
    assert chosen.categorical == ("clinic",)
    assert chosen.segments == ("clinic", "smoker")  # strings and booleans of few values; never ward, patient_id, the target


def test_segment_candidates_are_low_cardinality_strings_present_in_every_file():
    reference = facts(patients(40))
    current = facts(patients(40).drop(columns="smoker"), "current")
    assert scaffold.segment_candidates("readmitted", [reference, current], max_values=20) == ("clinic",)
    assert scaffold.segment_candidates("readmitted", [reference, current], max_values=2) == ()  # clinic has 3
    assert scaffold.segment_candidates("clinic", [reference], max_values=20) == ("smoker",)


def test_segments_given_override_the_candidates_and_must_exist_everywhere():
    reference, current = facts(patients()), facts(patients(8).drop(columns="smoker"), "current")
    assert decide(CLASSIFIER, reference, current, segments=()).segments == ()
    assert decide(CLASSIFIER, reference, current, segments=("patient_id",)).segments == ("patient_id",)
    with pytest.raises(DataError, match="--segments names 'smoker', which the current data"):
        decide(CLASSIFIER, reference, current, segments=("smoker",))


def test_an_image_archive_is_image_data_whose_target_is_its_one_other_array(tmp_path):
    rng = np.random.default_rng(0)
    for role in ("reference", "current"):
        np.savez(tmp_path / f"{role}.npz", images=rng.random((6, 1, 4, 4)).astype(np.float32), digit=np.arange(6) % 3)
    reference, current = (inspect_data(role, f"{role}.npz", tmp_path) for role in ("reference", "current"))
    assert reference.image_shape == (1, 4, 4) and reference.names == ["digit"] and reference.rows == 6
    network = ModelFacts(uri="models:/digits/1", label="digits v1", flavors=("pytorch",), task="classification",
                         classes=(0, 1, 2), input_shape=(1, 4, 4))
    chosen = decide(network, reference, current)
    assert (chosen.modality, chosen.target, chosen.features, chosen.segments) == ("image", "digit", (), ())


def test_one_column_of_free_text_is_text_data():
    words = "the quick brown fox jumps over a lazy dog while it rains".split()
    adverts = pd.DataFrame({"advert": [" ".join(np.roll(words, i)[: 6 + i % 4]) for i in range(10)],
                            "salary": ["high", "low"] * 5})
    assert facts(adverts).column("advert").kind == "text"
    model = ModelFacts(uri="models:/adverts/1", label="adverts v1", task="classification", classes=("high", "low"),
                       features=("advert",), features_from="the model's feature_names_in_")
    chosen = decide(model, facts(adverts), facts(adverts, "current"))
    assert (chosen.modality, chosen.target, chosen.features) == ("text", "salary", ("advert",))


def test_empty_data_is_one_error(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="is empty"):
        inspect_data("reference", "empty.csv", tmp_path)
    with pytest.raises(DataError, match="has a header but no rows"):
        inspect_data("current", "header.csv", tmp_path)
    with pytest.raises(DataError, match="--reference missing.csv: there is no such file"):
        inspect_data("reference", "missing.csv", tmp_path)


def test_a_folder_or_glob_of_files_is_read_as_one_dataset(tmp_path):
    (tmp_path / "parts").mkdir()
    patients(5, seed=1).to_csv(tmp_path / "parts" / "a.csv", index=False)
    patients(7, seed=2).to_csv(tmp_path / "parts" / "b.csv", index=False)
    for spec in ("parts", "parts/*.csv"):
        found = inspect_data("current", spec, tmp_path)
        assert (found.rows, found.files, found.sampled) == (12, 2, False)
    assert inspect_data("current", "parts", tmp_path, max_rows=6).sampled


def written(tmp_path, model=CLASSIFIER, **choices):
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    patients(40).to_csv(data / "reference.csv", index=False)
    patients(30, seed=1).drop(columns="readmitted").to_csv(data / "current.csv", index=False)
    reference = inspect_data("reference", "data/reference.csv", tmp_path)
    current = inspect_data("current", "data/current.csv", tmp_path)
    chosen = decide(model, reference, current, **choices)
    out = tmp_path / "configs" / "auditlens.yaml"
    command = scaffold.audit_command(model.uri, out, tmp_path)
    return scaffold.write_checked(scaffold.render(chosen, out.parent, tmp_path, command), out), out


def test_the_written_yaml_is_a_valid_configuration_that_says_what_was_found(tmp_path):
    loaded, out = written(tmp_path, plan="quick", tracking_uri="sqlite:///store/mlflow.db")
    settings = loaded.settings
    assert settings.plan == "quick" and settings.model.task == "classification"
    assert settings.data.target == "readmitted" and list(settings.data.segments) == ["clinic", "smoker"]
    assert settings.data.features is None and settings.data.categorical is None  # the defaults find them
    assert loaded.data_path("reference") == tmp_path / "data" / "reference.csv"  # written relative to the file
    assert settings.data.reference == "../data/reference.csv"
    assert loaded.tracking_uri() == f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    assert settings.security.model_loading == "strict" and settings.security.trusted_types == []
    assert [p.id for p in loaded.plan] == ["data_quality", "drift", "performance", "calibration", "shap"]
    text = out.read_text()
    assert "#   clinic      category, 3 values (north, east, south); feature, categorical, a segment" in text
    assert "#   patient_id  category, 40 values; not read by the model" in text
    assert "  target: readmitted" in text and "labels absent" in text  # the current data has none
    assert "the gate accepts every type in model.skops" in text
    assert "#   - {audit: segments}" in text  # quick leaves segments out: offered, not added
    assert text.startswith("# An audit configuration for models:/clinic/1")
    assert "#   auditlens audit --model models:/clinic/1 --config configs/auditlens.yaml" in text


def test_the_standard_plan_gets_segments_from_data_segments(tmp_path):
    loaded, _ = written(tmp_path)
    assert "segments" in [p.id for p in loaded.plan] and loaded.settings.audits == []


def test_a_model_named_by_its_signature_and_trusted_writes_its_features_and_the_choice(tmp_path):
    pyfunc = ModelFacts(uri="models:/echo/2", label="echo v2", flavors=("python_function",), task=None,
                        features=("age", "glucose"), features_from="its MLflow signature",
                        refusal="echo v2 has flavors python_function; ... runs the model's own code")
    loaded, out = written(tmp_path, model=pyfunc, task="classification", model_loading="trusted", target="readmitted")
    assert loaded.settings.data.features == ["age", "glucose"] and loaded.settings.security.model_loading == "trusted"
    assert "given (--task): the model does not say" in out.read_text()
    assert "# under strict the gate refuses it: echo v2 has flavors python_function" in out.read_text()


def test_names_from_the_data_cannot_break_out_of_a_comment_or_a_value(tmp_path):
    frame = patients(6).rename(columns={"clinic": "clinic\nsecurity: {model_loading: trusted} #"})
    model = ModelFacts(uri="models:/x/1", label="x v1", task="classification", classes=(0, 1),
                       features=("age", "glucose", "clinic\nsecurity: {model_loading: trusted} #"),
                       features_from="its MLflow signature")
    chosen = decide(model, facts(frame), facts(frame, "current"))
    text = scaffold.render(chosen, tmp_path, tmp_path, "auditlens audit ...")
    parsed = yaml.safe_load(text)
    assert parsed["security"] == {"model_loading": "strict"}
    assert parsed["data"]["features"][2] == "clinic\nsecurity: {model_loading: trusted} #"
    assert parsed["data"]["segments"] == ["clinic\nsecurity: {model_loading: trusted} #", "smoker"]
    assert all(line.startswith(("#", " ", "kind", "plan", "seed", "model", "security", "data", "mlflow")) or not line
               for line in text.splitlines())


def test_an_existing_file_is_never_replaced_without_force(tmp_path):
    out = tmp_path / "auditlens.yaml"
    out.write_text("mine\n")
    with pytest.raises(ConfigError, match="exists") as caught:
        scaffold.write_checked("kind: audit\nplan: quick\n", out)
    assert "--force" in caught.value.fix and out.read_text() == "mine\n"


def test_the_command_refuses_to_overwrite_before_it_inspects_anything(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from auditlens import init_command
    from auditlens.cli import app

    monkeypatch.setattr(init_command, "_setup", lambda: None)  # no SIGTERM handler in the test process
    monkeypatch.chdir(tmp_path)
    (tmp_path / "auditlens.yaml").write_text("mine\n")
    result = CliRunner().invoke(app, ["init", "--model", "models:/nowhere/1", "--reference", "nothing.csv",
                                      "--current", "nothing.csv"])
    assert result.exit_code == 2 and "auditlens.yaml exists" in result.output and "--force" in result.output
    assert (tmp_path / "auditlens.yaml").read_text() == "mine\n" and sorted(p.name for p in tmp_path.iterdir()) == ["auditlens.yaml"]


def test_an_invalid_rendering_leaves_nothing_behind(tmp_path):
    out = tmp_path / "auditlens.yaml"
    with pytest.raises(ConfigError, match="invalid configuration"):
        scaffold.write_checked("kind: audit\nplan: quick\ndata: {reference: a.csv}\n", out)
    assert list(tmp_path.iterdir()) == []


def test_a_refusal_says_which_choice_fixes_it():
    listable = scaffold.refusal_error(ModelFacts(uri="models:/m/1", label="m v1", refusal="m v1: refused before loading: ...",
                                                 refused=("mypackage.models.Scaler",)), "auditlens init --model models:/m/1")
    assert "auditlens init --model models:/m/1 --trusted-type mypackage.models.Scaler" in listable.fix
    script = scaffold.refusal_error(ModelFacts(uri="models:/m/1", label="m v1", refusal="m v1: refused before loading: ...",
                                               refused=("__main__.Doubler", "mypackage.models.Scaler")), "auditlens init")
    assert "--trusted-type" not in script.fix and "__main__.Doubler" in script.fix
    assert "auditlens init --model-loading trusted" in script.fix


def test_the_model_process_reply_is_checked_as_data():
    with pytest.raises(Exception, match="answered task"):
        scaffold.facts_from_reply({"task": "world domination"}, "models:/m/1", "m v1")
    with pytest.raises(Exception, match="answered features that is not a list of names"):
        scaffold.facts_from_reply({"task": "regression", "features": [{"a": 1}]}, "models:/m/1", "m v1")
    facts_ = scaffold.facts_from_reply({"task": "classification", "classes": [0, 1], "features": ["a\nb", "c"],
                                        "refused": ["x.Y", "\x1b[31mred"], "estimator": "A\x1b[2J"}, "models:/m/1", "m v1")
    assert facts_.features == ("a\nb", "c") and facts_.classes == (0, 1)  # exact: compared with the data's columns
    assert facts_.refused == ("x.Y",) and facts_.estimator == "A?[2J"  # what reaches a terminal is one clean line
