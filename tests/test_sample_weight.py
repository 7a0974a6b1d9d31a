"""Sample weights in the core: ``fit``, ``evaluate``, ``loss``, ``accuracy`` and validation.

The expected values come from elsewhere: duplicated or removed rows (a weight of 2 is a row
twice, 0 is no row, in full-batch training), and the weighted mean written out in NumPy on
the model's own probabilities.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from helpers import host

import nnx
from nnx.errors import InvalidDataError, InvalidParameterError


def _data(kind, n=30, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    if kind == "softmax":
        y = rng.integers(0, 3, size=n)
    elif kind == "sigmoid":
        y = rng.integers(0, 2, size=n)
    else:
        y = rng.normal(size=(n, 2))
    return X, y


def _model(kind, backend, dtype="float64", l2=0.01):
    out = {"softmax": nnx.Dense(4, 3, activation="softmax"),
           "sigmoid": nnx.Dense(4, 1, activation="sigmoid"),
           "linear": nnx.Dense(4, 2, activation="linear")}[kind]
    return nnx.Sequential([nnx.Dense(3, 4, activation="tanh"), out], l2=l2, dtype=dtype,
                          seed=3, backend=backend)


KINDS = ["softmax", "sigmoid", "linear"]


@pytest.mark.parametrize("kind", KINDS)
def test_integer_weights_train_as_duplicated_rows(backend, float64, kind):
    X, y = _data(kind)
    w = np.tile([2, 1, 0], 10)
    weighted = _model(kind, backend)
    weighted.fit(X, y, epochs=5, lr=0.3, sample_weight=w)
    repeated = _model(kind, backend)
    rows = np.repeat(np.arange(len(X)), w)
    repeated.fit(X[rows], y[rows], epochs=5, lr=0.3)
    for a, b in zip(weighted.get_weights(), repeated.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(weighted.history["loss"], repeated.history["loss"], rtol=1e-12)
    if kind != "linear":
        np.testing.assert_allclose(weighted.history["accuracy"],
                                   repeated.history["accuracy"], rtol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_weighted_evaluate_is_the_weighted_mean(backend, float64, kind):
    X, y = _data(kind, seed=1)
    w = np.random.default_rng(2).uniform(0, 3, size=len(X))
    model = _model(kind, backend, l2=0.0)
    p = host(model.predict_proba(X))
    if kind == "softmax":
        per_row = -np.log(p[np.arange(len(y)), y])
        hit = p.argmax(axis=1) == y
    elif kind == "sigmoid":
        q = p[:, 0]
        per_row = -(y * np.log(q) + (1 - y) * np.log(1 - q))
        hit = (q >= 0.5) == (y == 1)
    else:
        per_row = ((p - y) ** 2).mean(axis=1)
        hit = None
    figures = model.evaluate(X, y, sample_weight=w, batch_size=7)
    assert figures["loss"] == pytest.approx(np.sum(w * per_row) / np.sum(w), rel=1e-10)
    assert model.loss(X, y, sample_weight=w) == pytest.approx(figures["loss"], rel=1e-12)
    if hit is not None:
        assert figures["accuracy"] == pytest.approx(np.sum(w * hit) / np.sum(w), rel=1e-12)
        assert model.accuracy(X, y, sample_weight=w) == pytest.approx(figures["accuracy"])


def test_constant_weights_change_nothing_in_minibatches(backend, float64):
    X, y = _data("softmax", n=50)
    plain = _model("softmax", backend)
    plain.fit(X, y, epochs=4, lr=0.2, batch_size=8, optimizer="momentum")
    weighted = _model("softmax", backend)
    weighted.fit(X, y, epochs=4, lr=0.2, batch_size=8, optimizer="momentum",
                 sample_weight=np.full(len(X), 3.5))
    for a, b in zip(plain.get_weights(), weighted.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(plain.history["loss"], weighted.history["loss"], rtol=1e-11)
    np.testing.assert_allclose(plain.history["accuracy"], weighted.history["accuracy"],
                               rtol=1e-12)


def test_minibatch_epoch_loss_weights_the_batches(float64, backend):
    # Unshuffled batches of 10 with lr tiny: the epoch's loss is the weighted mean of the
    # rows' losses at (nearly) the initial weights, whatever the batches' weight sums.
    X, y = _data("softmax", n=30)
    w = np.concatenate([np.full(10, 5.0), np.full(10, 1.0), np.full(10, 0.5)])
    model = _model("softmax", backend, l2=0.0)
    expected = model.loss(X, y, sample_weight=w)
    model.fit(X, y, epochs=1, lr=1e-9, batch_size=10, shuffle=False, sample_weight=w)
    assert model.history["loss"][0] == pytest.approx(expected, rel=1e-7)
    unweighted = model.loss(X, y)
    assert abs(unweighted - expected) > 1e-4  # the weights matter here


def test_zero_weights_are_rows_left_out(backend, float64):
    X, y = _data("softmax")
    keep = np.arange(len(X)) % 4 != 0
    weighted = _model("softmax", backend)
    weighted.fit(X, y, epochs=5, lr=0.5, sample_weight=keep.astype(float))
    subset = _model("softmax", backend)
    subset.fit(X[keep], y[keep], epochs=5, lr=0.5)
    for a, b in zip(weighted.get_weights(), subset.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


def test_validation_weights_follow_their_rows(backend, float64):
    X, y = _data("softmax", n=40)
    w = np.random.default_rng(5).uniform(0.5, 2, size=len(X))
    Xv, yv = _data("softmax", n=12, seed=9)
    wv = np.random.default_rng(6).uniform(0, 2, size=len(Xv))
    model = _model("softmax", backend)
    model.fit(X, y, epochs=3, lr=0.3, sample_weight=w, validation_data=(Xv, yv, wv))
    p = host(model.predict_proba(Xv))
    per_row = -np.log(p[np.arange(len(yv)), yv])
    l2 = sum(np.sum(W ** 2) for W in model.get_weights()[::2]) * model.l2 / 2
    assert model.history["val_loss"][-1] == pytest.approx(
        np.sum(wv * per_row) / np.sum(wv) + l2, rel=1e-10)
    hit = p.argmax(axis=1) == yv
    assert model.history["val_accuracy"][-1] == pytest.approx(np.sum(wv * hit) / np.sum(wv))


def test_a_validation_split_splits_the_weights(backend, float64):
    X, y = _data("softmax", n=40)
    w = np.tile([1.0, 2.0, 0.0, 4.0], 10)
    model = _model("softmax", backend)
    # The split is drawn from the model's generator: a copy of it draws the same rows.
    order = copy.deepcopy(model.rng).permutation(len(X))
    model.fit(X, y, epochs=2, lr=0.3, sample_weight=w, validation_split=0.25)
    val, train = order[:10], order[10:]
    repeated = _model("softmax", backend)
    rows = np.repeat(train, w[train].astype(int))
    repeated.fit(X[rows], y[rows], epochs=2, lr=0.3)
    for a, b in zip(model.get_weights(), repeated.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)
    p = host(model.predict_proba(X[val]))
    per_row = -np.log(p[np.arange(10), y[val]])
    l2 = sum(np.sum(W ** 2) for W in model.get_weights()[::2]) * model.l2 / 2
    assert model.history["val_loss"][-1] == pytest.approx(
        np.sum(w[val] * per_row) / np.sum(w[val]) + l2, rel=1e-10)


def test_weighted_gradient_matches_finite_differences(backend, float64):
    from helpers import central_difference

    X, y = _data("softmax", n=12)
    w = np.random.default_rng(3).uniform(0, 2, size=len(X))
    model = _model("softmax", backend, l2=0.05)
    _, grads = model.value_and_grad(X, y, sample_weight=w)
    weights = model.get_weights()
    for i, W in enumerate(weights):
        def f(value, i=i):
            trial = [v.copy() for v in weights]
            trial[i] = value
            model.set_weights(trial)
            return model.loss(X, y, sample_weight=w)

        numeric = central_difference(f, W)
        model.set_weights(weights)
        np.testing.assert_allclose(host(grads[i]), numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("bad, message", [
    (np.full(30, -1.0), ">= 0"),
    (np.zeros(30), "0 for every sample"),
    (np.ones(29), "same length"),
    (np.ones((30, 2)), "shape (n_samples,)"),
    (np.r_[np.ones(29), np.nan], "NaN or inf"),
    (["a"] * 30, "numeric"),
])
def test_bad_sample_weight_is_refused_and_changes_nothing(backend, bad, message):
    X, y = _data("softmax")
    model = _model("softmax", backend, dtype="float32")
    before = model.get_weights()
    with pytest.raises(InvalidDataError, match="sample_weight") as info:
        model.fit(X, y, epochs=2, lr=0.1, sample_weight=bad)
    assert message in str(info.value)
    assert model.optimizer is None and model.epochs_trained == 0
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(InvalidDataError, match="sample_weight"):
        model.evaluate(X, y, sample_weight=bad)


def test_validation_weights_are_named_when_bad(backend):
    X, y = _data("softmax")
    model = _model("softmax", backend, dtype="float32")
    with pytest.raises(InvalidDataError, match=r"validation_data\[2\]"):
        model.fit(X, y, validation_data=(X, y, -np.ones(len(X))))


def test_compile_refuses_sample_weights_clearly():
    X, y = _data("softmax")
    model = _model("softmax", "numpy")
    with pytest.raises(InvalidParameterError, match="compile=True does not take sample"):
        model.fit(X, y, compile=True, sample_weight=np.ones(len(X)))
