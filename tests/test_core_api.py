"""Updates outside ``fit``: ``set_optimizer``, ``gradients``, ``apply_gradients``,
``train_on_batch`` (what streaming and data-parallel training build on), and the checks of
``assign_parameters``.

Expected values: a forward and backward pass written here in NumPy, shards' gradients combined
by hand, and ``fit``'s own full-batch epochs (a different code path: the Trainer).
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import central_difference, host

import nnx
from nnx.errors import InvalidParameterError


def _data(n=24, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 3)), rng.integers(0, 3, size=n)


def _model(backend, l2=0.1, dtype="float64"):
    return nnx.Sequential([nnx.Dense(3, 5, activation="tanh"),
                           nnx.Dense(5, 3, activation="softmax")],
                          l2=l2, dtype=dtype, seed=1, backend=backend)


def _numpy_data_loss(weights, X, y, w=None):
    """Mean (weighted mean) cross-entropy of the 3-5-3 tanh/softmax network, no L2."""
    W0, b0, W1, b1 = weights
    z = np.tanh(X @ W0 + b0) @ W1 + b1
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    per_row = -logp[np.arange(len(y)), y]
    return per_row.mean() if w is None else np.sum(w * per_row) / np.sum(w)


def test_gradients_are_the_data_loss_gradient_without_l2(backend, float64):
    X, y = _data()
    w = np.random.default_rng(4).uniform(0, 2, size=len(X))
    model = _model(backend, l2=0.3)
    for sample_weight in (None, w):
        loss, grads = model.gradients(X, y, sample_weight=sample_weight)
        weights = model.get_weights()
        assert float(loss) == pytest.approx(_numpy_data_loss(weights, X, y, sample_weight),
                                            rel=1e-12)
        assert len(grads) == len(model.trained_parameters())
        for i, W in enumerate(weights):
            def f(value, i=i, weights=weights, sample_weight=sample_weight):
                trial = list(weights)
                trial[i] = value
                return _numpy_data_loss(trial, X, y, sample_weight)

            np.testing.assert_allclose(host(grads[i]), central_difference(f, W), rtol=1e-6,
                                       atol=1e-9)
        for a, b in zip(weights, model.get_weights()):  # nothing changed
            np.testing.assert_array_equal(a, b)


def test_shard_gradients_combine_by_their_sizes(backend, float64):
    X, y = _data(n=30)
    model = _model(backend)
    _, whole = model.gradients(X, y)
    shards = [slice(0, 4), slice(4, 21), slice(21, 30)]  # unequal on purpose
    parts = [(s.stop - s.start, model.gradients(X[s], y[s])[1]) for s in shards]
    for i, g in enumerate(whole):
        combined = sum(n * host(grads[i]) for n, grads in parts) / len(X)
        np.testing.assert_allclose(combined, host(g), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_apply_gradients_steps_as_fit_does(backend, float64, optimizer):
    X, y = _data()
    fitted = _model(backend)
    fitted.fit(X, y, epochs=3, lr=0.2, optimizer=optimizer)
    manual = _model(backend)
    manual.set_optimizer(optimizer, lr=0.2)
    for epoch in range(3):
        manual.optimizer.epoch = epoch
        _, grads = manual.gradients(X, y)
        manual.apply_gradients(grads)
    for a, b in zip(fitted.get_weights(), manual.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    assert manual.epochs_trained == 0 and manual.history is None


def test_train_on_batch_is_one_update_and_not_an_epoch(backend, float64):
    X, y = _data()
    fitted = _model(backend)
    fitted.fit(X, y, epochs=1, lr=0.5)
    stepped = _model(backend)
    stepped.set_optimizer("sgd", lr=0.5)
    before = stepped.loss(X, y)
    assert stepped.train_on_batch(X, y) == pytest.approx(before, rel=1e-12)
    for a, b in zip(fitted.get_weights(), stepped.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    assert stepped.epochs_trained == 0 and stepped.history is None


def test_updates_outside_fit_need_an_optimizer(backend):
    X, y = _data()
    model = _model(backend, dtype="float32")
    with pytest.raises(InvalidParameterError, match="set_optimizer"):
        model.train_on_batch(X, y)
    with pytest.raises(InvalidParameterError, match="set_optimizer"):
        model.apply_gradients(model.gradients(X, y)[1])


@pytest.mark.parametrize("bad, message", [
    (3, "optimizer must be a name"),
    ("rmsprop", "unknown"),
])
def test_set_optimizer_refuses_bad_values(bad, message):
    model = _model("numpy")
    with pytest.raises(InvalidParameterError, match=message):
        model.set_optimizer(bad)
    with pytest.raises(InvalidParameterError, match="lr"):
        model.set_optimizer("sgd", lr=-1)
    assert model.optimizer is None


def test_apply_gradients_refuses_what_does_not_fit_and_changes_nothing(backend):
    X, y = _data()
    model = _model(backend, dtype="float32")
    model.set_optimizer("sgd", lr=0.1)
    _, grads = model.gradients(X, y)
    before = model.get_weights()
    with pytest.raises(InvalidParameterError, match="4 arrays"):
        model.apply_gradients(grads[:3])
    with pytest.raises(InvalidParameterError, match=r"grads\[1\]"):
        model.apply_gradients([grads[0], grads[0], grads[2], grads[3]])
    if backend.name != "numpy":
        with pytest.raises(InvalidParameterError, match=r"grads\[0\]"):
            model.apply_gradients([np.asarray(nnx.to_numpy(g)) for g in grads])
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_assign_parameters_refuses_other_arrays_with_a_clear_message(backend):
    model = _model(backend, dtype="float32")
    params = model.parameters()
    before = model.get_weights()
    with pytest.raises(InvalidParameterError, match="4 arrays"):
        model.assign_parameters(params[:2])
    with pytest.raises(InvalidParameterError, match=r"params\[0\].*set_weights"):
        model.assign_parameters([[[0.0] * 5] * 3, *params[1:]])
    if backend.name != "numpy":
        with pytest.raises(InvalidParameterError, match=r"params\[0\]"):
            model.assign_parameters(model.get_weights())
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    model.assign_parameters(params)  # its own arrays go back in


def test_pickle_and_deepcopy_keep_dtype_values_and_optimizer_state(backend):
    """A trained model with Adam's state, pickled and deep-copied, and both loaded in another
    thread: outside every scope this test holds (JAX's x64 mode is per thread), as a worker
    process or a later session loads it. The copies hold the model's dtype and values, and
    train on exactly as the original does (the optimizer's moments came along intact)."""
    import copy
    import pickle
    import threading

    dtype = "float64" if backend.supports_float64 else "float32"
    X, y = _data()
    model = _model(backend, dtype=dtype)
    model.fit(X, y, epochs=3, lr=0.05, optimizer="adam")
    data = pickle.dumps(model)
    copies = {}

    def load():
        copies["pickled"] = pickle.loads(data)
        copies["deepcopy"] = copy.deepcopy(model)

    thread = threading.Thread(target=load)
    thread.start()
    thread.join()
    model.fit(X, y, epochs=2)
    for how, other in copies.items():
        assert other.backend == model.backend, how
        assert all(w.dtype == np.dtype(dtype) for w in other.get_weights()), how
        assert all(p.dtype == q.dtype for p, q in zip(other.parameters(), model.parameters()))
        other.fit(X, y, epochs=2)
        for a, b in zip(other.get_weights(), model.get_weights()):
            np.testing.assert_array_equal(a, b, err_msg=how)
