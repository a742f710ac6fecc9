"""The TorchClassifier adapter and the image and text contexts the network audits read."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.metrics import accuracy_score


def test_a_trained_cnn_is_a_scikit_learn_classifier(digits_network, image_context):
    model, X, y = digits_network
    held_out = X[1200:]
    assert accuracy_score(y[1200:], model.predict(held_out.reshape(len(held_out), -1))) > 0.9
    proba = model.predict_proba(image_context.current.X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    assert list(model.classes_) == list(range(10)) and image_context.current.predictions.proba.shape == (200, 10)
    assert image_context.images(image_context.current).shape == (200, 1, 8, 8)
    np.testing.assert_array_equal(image_context.images(image_context.current).reshape(200, -1), image_context.current.X.to_numpy(np.float32))
    embedding = model.embed(image_context.current.X)
    assert embedding.shape == (200, 64) and (embedding >= 0).all()  # after ReLU and (eval-mode) dropout


def test_clone_and_fit_retrains_from_fresh_weights_deterministically(digits_network):
    model, X, y = digits_network
    flat = X[:300].reshape(300, -1)
    a = clone(model).set_params(epochs=2).fit(flat, y[:300])
    b = clone(model).set_params(epochs=2).fit(flat, y[:300])
    np.testing.assert_array_equal(a.predict_proba(flat), b.predict_proba(flat))
    assert not np.allclose(a.predict_proba(flat), model.predict_proba(flat))


def test_text_context_reads_one_raw_text_column(text_context):
    assert text_context.text_column == "text" and text_context.modality == "text"
    assert accuracy_score(text_context.current.y, text_context.current.predictions.labels) > 0.95
    with pytest.raises(ValueError, match="modality 'image'"):
        text_context.images(text_context.current)


def test_audits_share_the_network_safely_across_threads(image_context):
    """Prefect runs audits concurrently in threads on one network: embeddings, MC dropout and plain predictions
    at the same time must each give what they give alone (a hook or a dropout switch on the shared module would not)."""
    from concurrent.futures import ThreadPoolExecutor

    from audits.methods.dropout import mc_dropout_probabilities

    model = image_context.model.estimator
    X = image_context.current.X
    images = image_context.images(image_context.current)
    alone = (model.embed(X), model.predict_proba(X), mc_dropout_probabilities(model.network(), images, 5, seed=1))
    with ThreadPoolExecutor(6) as pool:
        futures = [future for _ in range(2) for future in (
            pool.submit(model.embed, X), pool.submit(model.predict_proba, X),
            pool.submit(mc_dropout_probabilities, model.network(), images, 5, 1))]
        results = [f.result() for f in futures]
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result, alone[i % 3])


@pytest.mark.parametrize("kind", ["relu", "scaled_tanh", "binary"])
def test_an_sklearn_mlp_becomes_the_same_network(kind):
    """scikit-learn's MLPClassifier as a torch network: the same probabilities as its own predict_proba (the
    reference), so gradients and embeddings of the network are those of the MLP."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from audits.methods.network import is_sklearn_mlp, network_from_sklearn_mlp
    from audits.methods.synthetic import digits

    X, y = digits()
    flat = X.reshape(len(X), -1)
    estimator, labels = {
        "relu": (MLPClassifier((32,), max_iter=150, random_state=0), y),
        "scaled_tanh": (make_pipeline(StandardScaler(), MLPClassifier((32, 16), activation="tanh", max_iter=150, random_state=0)), y),
        "binary": (MLPClassifier((8,), max_iter=150, random_state=0), np.where(y > 4, "high", "low")),
    }[kind]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        estimator.fit(flat[:1000], labels[:1000])
    assert is_sklearn_mlp(estimator)
    network = network_from_sklearn_mlp(estimator, (1, 8, 8))
    np.testing.assert_allclose(network.predict_proba(flat[1000:]), estimator.predict_proba(flat[1000:]), atol=2e-6)
    np.testing.assert_array_equal(network.predict(flat[1000:]), estimator.predict(flat[1000:]))
    assert network.embed(flat[1000:1010]).shape[1] == (8 if kind == "binary" else 32 if kind == "relu" else 16)
