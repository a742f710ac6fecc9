"""Everything an audit reads, assembled once: the model, both datasets checked and sampled, predictions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from audits.core.context import AuditContext, ModelUnderAudit, build_context, infer_categorical
from tasks.adapters.datasets import check_columns, image_shape, prepare, read_columns, resolve_features
from tasks.adapters.errors import DataError
from tasks.adapters.models import ModelRef, load_baseline, load_model
from tasks.adapters.settings import LoadedSettings


@dataclass(frozen=True)
class AuditInputs:
    context: AuditContext
    fingerprints: dict[str, dict[str, Any]]


def _model_features(model: ModelUnderAudit) -> list[str] | None:
    names = getattr(model.estimator, "feature_names_in_", None)
    return [str(n) for n in names] if names is not None else None


def _as_network(model: ModelUnderAudit, input_shape: tuple[int, ...]) -> ModelUnderAudit:
    """scikit-learn's MLPClassifier on images, seen as the network it is (same predictions to float32 precision), so
    the network audits (gradients, occlusion, embeddings, sanity checks) apply; anything else unchanged."""
    from dataclasses import replace

    from audits.deep.network import is_sklearn_mlp, network_from_sklearn_mlp

    if not is_sklearn_mlp(model.estimator):
        return model
    try:
        network = network_from_sklearn_mlp(model.estimator, input_shape)
    except ImportError:  # no torch (the 'deep' extra): the network audits say SKIPPED, the others run
        return model
    return replace(model, predict=network.predict, predict_proba=network.predict_proba, estimator=network,
                   flavor="sklearn-mlp")


def preflight_data(loaded: LoadedSettings) -> None:
    """Cheap checks (files exist, headers have the columns) before any run is opened."""
    data = loaded.settings.data
    ref_path, cur_path = loaded.data_path("reference"), loaded.data_path("current")
    ref_columns = read_columns(ref_path)
    if not ref_columns:
        raise DataError(f"reference data {ref_path} is empty (no header, no rows)", "point data.reference at the training data")
    features = resolve_features(ref_columns, data.target, data.features, None)
    check_columns("reference", ref_path, ref_columns, features, data.target, target_required=True)
    cur_columns = read_columns(cur_path)
    if not cur_columns:
        raise DataError(f"current data {cur_path} is empty (no header, no rows)", "point data.current at the data to audit")
    check_columns("current", cur_path, cur_columns, features, data.target, target_required=False)


def assemble(ref: ModelRef, loaded: LoadedSettings, client) -> AuditInputs:
    settings = loaded.settings
    model = load_model(ref, client, settings.model.task, settings.model.device)
    baseline, baseline_note = load_baseline(ref, settings.model.baseline_alias, client, settings.model.task, settings.model.device)
    ref_path, cur_path = loaded.data_path("reference"), loaded.data_path("current")
    features = resolve_features(read_columns(ref_path), settings.data.target, settings.data.features, _model_features(model))
    modality, input_shape = settings.data.modality, None
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
    if modality == "text" and len(features) != 1:
        raise DataError(f"a text audit reads one column of raw text; the features are {features[:20]}",
                        "name the text column alone under data.features")
    segments = settings.data.segments
    reference = prepare("reference", ref_path, features, settings.data.target, True,
                        settings.sampling.reference_rows, settings.seed, segments)
    current = prepare("current", cur_path, features, settings.data.target, False,
                      settings.sampling.current_rows, settings.seed, segments)
    categorical = tuple(settings.data.categorical) if settings.data.categorical is not None else infer_categorical(reference.X)
    unknown = [c for c in categorical if c not in features]
    if unknown:
        raise DataError(f"data.categorical names {unknown}, which are not features ({features[:20]})",
                        "list only feature columns under data.categorical")
    try:
        context = build_context(
            model,
            (reference.X, reference.y),
            (current.X, current.y),
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
    except Exception as exc:
        raise DataError(
            f"{ref.label} cannot predict on the data ({type(exc).__name__}: {exc})",
            "check that the columns and their types match what the model was trained on",
        ) from None
    return AuditInputs(context, {"reference": reference.fingerprint, "current": current.fingerprint})
