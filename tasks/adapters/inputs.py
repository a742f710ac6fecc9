"""Everything an audit reads, assembled once: the model, both datasets checked and sampled, predictions."""

from __future__ import annotations

import pandas as pd

from audits.core.context import ModelUnderAudit, infer_categorical
from audits.core.partial import FullData
from tasks.adapters.context import AuditInputs, context_or_error, predicting, stratified
from tasks.adapters.datasets import check_columns, image_shape, prepare, read_columns, resolve_features
from tasks.adapters.errors import DataError
from tasks.adapters.models import ModelRef, load_baseline, load_model
from tasks.adapters.settings import LoadedSettings
from tasks.adapters.sources import Source, open_source


def _model_features(model: ModelUnderAudit) -> list[str] | None:
    names = getattr(model.estimator, "feature_names_in_", None)
    return [str(n) for n in names] if names is not None else None


def _as_network(model: ModelUnderAudit, input_shape: tuple[int, ...]) -> ModelUnderAudit:
    """scikit-learn's MLPClassifier on images, seen as the network it is (same predictions to float32 precision), so
    the network audits (gradients, occlusion, embeddings, sanity checks) apply; anything else unchanged."""
    from dataclasses import replace

    from audits.methods.network import is_sklearn_mlp, network_from_sklearn_mlp

    if not is_sklearn_mlp(model.estimator):
        return model
    try:
        network = network_from_sklearn_mlp(model.estimator, input_shape)
    except ImportError:  # no torch (the 'deep' extra): the network audits say SKIPPED, the others run
        return model
    return replace(model, predict=network.predict, predict_proba=network.predict_proba, estimator=network,
                   flavor="sklearn-mlp")


def _header(loaded: LoadedSettings, role: str) -> list[str]:
    path, encoding = loaded.data_path(role), loaded.settings.data.encoding
    if _partitioned_spec(path):
        return list(open_source(role, str(path), path.parent, encoding).columns)
    return read_columns(path, encoding)


def _feature_columns(loaded: LoadedSettings, columns: list[str]) -> list[str]:
    """The columns features are drawn from by default: every column, but for images only the image's elements (an
    image archive's other per-image arrays, such as an id or a segment, are not inputs of the model)."""
    if loaded.settings.data.modality != "image":
        return columns
    import re

    return [c for c in columns if re.fullmatch(r"p\d+_\d+_\d+", c)]


def _partitioned_spec(path) -> bool:
    from tasks.adapters.sources import is_glob

    return is_glob(str(path)) or path.is_dir()


def preflight_data(loaded: LoadedSettings) -> None:
    """Cheap checks (files exist, headers have the columns) before any run is opened."""
    data = loaded.settings.data
    ref_path, cur_path = loaded.data_path("reference"), loaded.data_path("current")
    ref_columns = _header(loaded, "reference")
    if not ref_columns:
        raise DataError(f"reference data {ref_path} is empty (no header, no rows)", "point data.reference at the training data")
    features = resolve_features(_feature_columns(loaded, ref_columns), data.target, data.features, None,
                                data.prediction_column_names())
    check_columns("reference", ref_path, ref_columns, features, data.target, target_required=True)
    cur_columns = _header(loaded, "current")
    if not cur_columns:
        raise DataError(f"current data {cur_path} is empty (no header, no rows)", "point data.current at the data to audit")
    check_columns("current", cur_path, cur_columns, features, data.target, target_required=False)
    if data.holdout:
        hold_path = _holdout_path(loaded)
        hold_columns = read_columns(hold_path, data.encoding)
        if not hold_columns:
            raise DataError(f"holdout data {hold_path} is empty (no header, no rows)",
                            "point data.holdout at labelled rows the model did not train on, or remove it")
        check_columns("holdout", hold_path, hold_columns, features, data.target, target_required=True)


def _holdout_path(loaded: LoadedSettings):
    """data.holdout's file: one CSV or Parquet file (it is read whole, up to its sample budget, into the sample's frame)."""
    from tasks.adapters.datasets import _format

    path = loaded.data_path("holdout")
    if _partitioned_spec(path):
        raise DataError(f"data.holdout is {path}, a folder or a pattern; a holdout is one CSV or Parquet file",
                        "write the held-out labelled rows to one file and point data.holdout at it")
    if not path.is_file():
        raise DataError(f"holdout data {path} does not exist", "point data.holdout at labelled rows the model did not "
                        "train on (relative paths start at the configuration file's folder), or remove it")
    if loaded.settings.data.target is None:
        raise DataError("data.holdout is set but data.target is not: a holdout is labelled rows",
                        "name the target column under data.target")
    if _format(path) == "npz" and loaded.settings.data.modality != "image":
        raise DataError(f"holdout data {path} is an image archive; this audit's data is {loaded.settings.data.modality}",
                        "give the holdout in the format of the reference")
    return path


class HoldoutRows:
    """data.holdout, read, checked and sampled once and predicted on once, given to every context the inputs build:
    the every-row pass fits its hybrid audits (a calibrator, a loss model) on a context that must already hold it."""

    def __init__(self, ref: ModelRef, loaded: LoadedSettings, features: list[str]) -> None:
        self.ref, self.loaded, self.features = ref, loaded, features
        self.dataset = None
        self.fingerprint: dict | None = None

    def attach(self, context):
        from dataclasses import replace

        if not self.loaded.settings.data.holdout:
            return context
        if self.dataset is None:
            self.dataset, self.fingerprint = self._read(context)
        return replace(context, holdout=self.dataset)

    def _read(self, context):
        from audits.core.context import with_holdout

        settings = self.loaded.settings
        path = _holdout_path(self.loaded)
        numeric = [c for c in self.features if pd.api.types.is_numeric_dtype(context.reference.X[c])]
        held = prepare("holdout", path, self.features, settings.data.target, True, self.loaded.sample_rows("holdout"),
                       settings.seed, settings.data.segments, settings.data.encoding, numeric=numeric)
        with predicting(self.ref, f"the holdout data {path}"):
            return with_holdout(context, held.X, held.y, str(path), held.segments).holdout, held.fingerprint

    def recorded(self, inputs: AuditInputs) -> AuditInputs:
        """``inputs`` with the holdout's fingerprint beside the other datasets' (when there is a holdout)."""
        from dataclasses import replace

        if self.fingerprint is None:
            return inputs
        return replace(inputs, fingerprints={**inputs.fingerprints, "holdout": self.fingerprint})


def _every_row_sources(loaded: LoadedSettings) -> dict[str, Source] | None:
    """Both sides as partitioned sources when the data must be read by partition; None when it fits one frame."""
    from tasks.adapters.datasets import _format

    settings = loaded.settings
    paths = {role: loaded.data_path(role) for role in ("reference", "current")}
    if not any(_partitioned_spec(p) for p in paths.values()):
        if any(_format(p) == "npz" for p in paths.values()):  # today's checks and messages for single files
            return None
    sources = {role: open_source(role, str(path), path.parent, settings.data.encoding) for role, path in paths.items()}
    return sources if _needs_every_row_pass(sources, loaded) else None


def _needs_every_row_pass(sources: dict[str, Source], loaded: LoadedSettings) -> bool:
    """Partitioned data, a Dask engine, or a side larger than its sample: read by partition, every row counted.
    Anything else fits one frame and keeps the one-frame path (the same numbers as ever)."""
    settings = loaded.settings
    if settings.execution.engine != "local" or any(s.partitioned for s in sources.values()):
        return True
    if settings.data.prediction_columns is not None:  # read with the data, on the every-row path whatever the size
        return True
    return any(s.estimated_rows() > loaded.sample_rows(role) for role, s in sources.items())


def assemble(ref: ModelRef, loaded: LoadedSettings, client) -> AuditInputs:
    """The inputs with the model loaded in this process (tests, benchmarks; the flow loads it in the model's process)."""
    settings = loaded.settings
    model = load_model(ref, client, settings.model.task, settings.model.device, settings.security)
    baseline, baseline_note = load_baseline(ref, settings.model.baseline_alias, client, settings.model.task, settings.model.device,
                                            settings.security)
    return assemble_loaded(ref, loaded, model, baseline, baseline_note)


def assemble_loaded(ref: ModelRef, loaded: LoadedSettings, model: ModelUnderAudit, baseline: ModelUnderAudit | None,
                    baseline_note: str) -> AuditInputs:
    """Both datasets read, checked and sampled, the model's predictions on them, and the audits' context."""
    settings = loaded.settings
    ref_path, cur_path = loaded.data_path("reference"), loaded.data_path("current")
    features = resolve_features(_feature_columns(loaded, _header(loaded, "reference")), settings.data.target, settings.data.features,
                                _model_features(model), settings.data.prediction_column_names())
    modality, input_shape = settings.data.modality, None
    if settings.data.prediction_columns is not None and modality != "tabular":
        raise DataError(f"data.prediction_columns is for tabular data; this audit's data is {modality}",
                        "remove data.prediction_columns: auditlens scores images and texts with the model")
    if modality == "text" and len(features) != 1:
        raise DataError(f"a text audit reads one column of raw text; the features are {features[:20]}",
                        "name the text column alone under data.features")
    if modality == "tabular" or modality == "text":
        sources = _every_row_sources(loaded)
        if sources is not None:
            from tasks.adapters.every_row import assemble_every_row

            holdout = HoldoutRows(ref, loaded, features)
            inputs = assemble_every_row(ref, loaded, model, baseline, baseline_note, features, sources, modality,
                                        attach=holdout.attach)
            return holdout.recorded(inputs)
    if modality == "image":
        input_shape = image_shape(ref_path)
        if image_shape(cur_path) != input_shape:
            raise DataError(f"current images {cur_path} are {image_shape(cur_path)}, reference images {input_shape} (C, H, W)",
                            "give both datasets images of the shape the model takes")
        expected = getattr(model.estimator, "input_shape", None)
        if expected is not None and tuple(expected) != input_shape:
            raise DataError(f"{ref.label} takes images of shape {tuple(expected)} (C, H, W); the data has {input_shape}",
                            "point data.reference and data.current at images of the model's shape")
    if modality == "image" and model.estimator is not None and not hasattr(model.estimator, "network"):
        model = _as_network(model, input_shape)
    segments = settings.data.segments
    reference = prepare("reference", ref_path, features, settings.data.target, True,
                        loaded.sample_rows("reference"), settings.seed, segments, settings.data.encoding)
    current = prepare("current", cur_path, features, settings.data.target, False,
                      loaded.sample_rows("current"), settings.seed, segments, settings.data.encoding,
                      numeric=[c for c in features if pd.api.types.is_numeric_dtype(reference.X[c])])
    categorical = tuple(settings.data.categorical) if settings.data.categorical is not None else infer_categorical(reference.X)
    unknown = [c for c in categorical if c not in features]
    if unknown:
        raise DataError(f"data.categorical names {unknown}, which are not features ({features[:20]})",
                        "list only feature columns under data.categorical")
    context = context_or_error(
        ref, model, (reference.X, reference.y), (current.X, current.y),
        categorical=categorical,
        target=settings.data.target,
        seed=settings.seed,
        sources=(str(ref_path), str(cur_path)),
        baseline=baseline,
        baseline_note=baseline_note,
        segments=(reference.segments, current.segments),
        modality=modality,
        input_shape=input_shape,
    )
    holdout = HoldoutRows(ref, loaded, features)
    context = stratified(holdout.attach(context), settings.sampling)
    fingerprints = {"reference": reference.fingerprint, "current": current.fingerprint}
    full = None
    if any(fp["rows_used"] < fp["rows"] for fp in fingerprints.values()):  # sampled in memory (image archives)
        full = FullData(population={r: fp["rows"] for r, fp in fingerprints.items()},
                        sample={r: fp["rows_used"] for r, fp in fingerprints.items()})
    return holdout.recorded(AuditInputs(context, fingerprints, full))
