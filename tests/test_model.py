"""Sequential on every backend: gradients, dtype and device of everything it makes, the
tutorials' networks, and identical results across backends for one seed."""

import numpy as np
import pytest
from helpers import (
    assert_on_backend,
    available_cpu_backends,
    central_difference,
    host,
    relative_error,
)

import nnx


def moons_net(backend, dtype="float32", hidden=3, l2=0.0, seed=0):
    return nnx.Sequential([nnx.Dense(2, hidden, "tanh"), nnx.Dense(hidden, 2, "softmax")],
                          l2=l2, dtype=dtype, seed=seed, backend=backend)


@pytest.mark.parametrize("output,loss,k", [("softmax", None, 3), ("sigmoid", None, 1),
                                           ("sigmoid", "mse", 2), ("identity", "mse", 2)])
def test_model_gradient_matches_finite_differences(backend, float64, rng, output, loss, k):
    """The whole backward (fused losses, L2 included) against central differences in float64."""
    model = nnx.Sequential([nnx.Dense(3, 4, "tanh"), nnx.Dense(4, 5, "sigmoid"),
                            nnx.Dense(5, k, output)], loss=loss, l2=0.1, dtype="float64",
                           seed=3, backend=backend)
    X = rng.normal(size=(8, 3))
    if output == "softmax":
        y = rng.integers(0, k, size=8)
    elif output == "sigmoid":
        y = rng.integers(0, 2, size=(8, k)) if k > 1 else rng.integers(0, 2, size=8)
    else:
        y = rng.normal(size=(8, k))
    before = model.get_weights()
    _, grads = model.value_and_grad(X, y)
    for index, analytic in enumerate(grads):
        assert_on_backend(analytic, backend, "float64", before[index].shape)

        def objective(value, index=index):
            weights = [w.copy() for w in before]
            weights[index] = value
            model.set_weights(weights)
            return model.loss(X, y)

        numeric = central_difference(objective, before[index])
        model.set_weights(before)
        assert relative_error(host(analytic), numeric) < 1e-6, f"parameter {index}"


def test_dense_exposes_readable_assignable_weights(backend):
    layer = nnx.Dense(2, 3, "tanh")
    model = nnx.Sequential([layer, nnx.Dense(3, 2, "softmax")], backend=backend)
    assert model.layers[0] is layer
    assert_on_backend(layer.W, backend, "float32", (2, 3))
    assert_on_backend(layer.b, backend, "float32", (3,))
    mine = np.arange(6, dtype=np.float64).reshape(2, 3)
    layer.W = mine
    mine[0, 0] = 100.0  # the model holds a copy: the caller's array is not shared
    assert_on_backend(layer.W, backend, "float32", (2, 3))
    np.testing.assert_array_equal(host(layer.W), np.arange(6).reshape(2, 3))
    X = np.array([[1.0, 2.0]])
    expected = np.tanh(X @ np.arange(6).reshape(2, 3))
    np.testing.assert_allclose(host(layer.forward(backend.asarray(X, backend.xp.float32))),
                               expected, rtol=1e-6)
    with pytest.raises(ValueError, match=r"W must have shape \(2, 3\); received shape \(3, 2\)"):
        layer.W = np.zeros((3, 2))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_array_has_the_model_dtype_and_device(backend, dtype):
    if dtype == "float64" and not backend.supports_float64:
        pytest.skip("no float64 on this device")
    X, y = nnx.datasets.make_moons(40, seed=1)
    model = moons_net(backend, dtype, l2=0.01)
    model.fit(X, y, epochs=3, lr=0.1, optimizer="adam", batch_size=16)
    for p in model.parameters():
        assert_on_backend(p, backend, dtype)
    for state in model.optimizer.m + model.optimizer.v:
        assert_on_backend(state, backend, dtype)
    for layer in model.layers:
        assert_on_backend(layer.dW, backend, dtype)
    assert_on_backend(model.predict_proba(X), backend, dtype, (40, 2))
    labels = model.predict(X)
    assert_on_backend(labels, backend, shape=(40,))
    assert labels.dtype == backend.xp.int64


def test_data_in_the_models_own_backend_is_accepted_and_not_mutated(backend):
    X, y = nnx.datasets.make_moons(30, seed=2)
    Xd, yd = backend.asarray(X, backend.xp.float32), backend.asarray(y)
    copy_X = host(Xd).copy()
    model = moons_net(backend)
    model.fit(Xd, yd, epochs=5, lr=0.5)
    np.testing.assert_array_equal(host(Xd), copy_X)
    from_host = moons_net(backend)
    from_host.fit(X.astype(np.float32), y.tolist(), epochs=5, lr=0.5)
    np.testing.assert_allclose(host(model.predict_proba(X)), host(from_host.predict_proba(Xd)),
                               rtol=1e-6)


def test_same_seed_same_initial_weights_on_every_backend():
    reference = None
    for backend in available_cpu_backends():
        weights = [host(p) for p in moons_net(backend, "float64", hidden=5, seed=7).parameters()]
        if reference is None:
            reference = weights
        for got, want in zip(weights, reference):
            np.testing.assert_array_equal(got, want)
    # and a float32 model holds exactly the float32 rounding of those draws
    w32 = host(moons_net("numpy", "float32", hidden=5, seed=7).layers[0].W)
    np.testing.assert_array_equal(w32, reference[0].astype(np.float32))


def test_same_seed_same_trained_predictions_on_every_backend_float64():
    X, y = nnx.datasets.make_moons(100, noise=0.2, seed=0)
    results = {}
    for backend in available_cpu_backends():
        model = moons_net(backend, "float64", hidden=4, l2=0.01)
        model.fit(X, y, epochs=300, lr=0.5)
        results[f"{backend.name}:{backend.device}"] = host(model.predict_proba(X))
    assert len(results) >= 3, results.keys()
    first = next(iter(results.values()))
    for name, probs in results.items():
        np.testing.assert_allclose(probs, first, rtol=0, atol=1e-8, err_msg=name)


# -- the tutorials, as tests ---------------------------------------------------------------
def test_xor_learned_by_2_3_1_tanh_sigmoid_with_log_loss(backend):
    X, y = nnx.datasets.xor()
    model = nnx.Sequential([nnx.Dense(2, 3, "tanh"), nnx.Dense(3, 1, "sigmoid")],
                           seed=1, backend=backend)
    assert model.loss_function.name == "binary_cross_entropy"
    history = model.fit(X, y, epochs=1500, lr=0.5)
    np.testing.assert_array_equal(host(model.predict(X)), y)
    assert history["loss"][-1] < 0.1 < history["loss"][0]


def test_xor_is_not_learnable_without_a_hidden_layer(backend):
    X, y = nnx.datasets.xor()
    model = nnx.Sequential([nnx.Dense(2, 1, "sigmoid")], seed=0, backend=backend)
    model.fit(X, y, epochs=2000, lr=0.5)
    # A line can get at most 3 of the 4 points right, and log-loss stays near log(2).
    assert model.accuracy(X, y) <= 0.75
    assert model.loss(X, y) > 0.6


@pytest.mark.parametrize("data", ["or_gate", "virus"])
@pytest.mark.parametrize("loss", ["binary_cross_entropy", "mse"])
def test_single_sigmoid_unit_learns_the_perceptron_tutorials(backend, data, loss):
    X, y = getattr(nnx.datasets, data)()
    model = nnx.Sequential([nnx.Dense(X.shape[1], 1, "sigmoid")], loss=loss, seed=0,
                           backend=backend)
    model.fit(X, y, epochs=2000, lr=1.0)
    predicted = host(model.predict(X))
    if data == "or_gate":
        np.testing.assert_array_equal(predicted, y)
    else:
        # The tutorial's table lists [0, 0, 1, 1] twice, once positive and once negative:
        # every other person is classified right, and that pair sits near p = 0.5.
        conflict = np.all(X == [0, 0, 1, 1], axis=1)
        assert conflict.sum() == 2 and set(y[conflict]) == {0, 1}
        np.testing.assert_array_equal(predicted[~conflict], y[~conflict])
        p = host(model.predict_proba(X[conflict]))
        assert np.all(np.abs(p - 0.5) < 0.1)


def test_virus_case_study_weights_single_out_loss_of_smell():
    X, y = nnx.datasets.virus()
    model = nnx.Sequential([nnx.Dense(4, 1, "sigmoid")], seed=0)
    model.fit(X, y, epochs=3000, lr=1.0)
    W = host(model.layers[0].W)[:, 0]
    # the tutorial's reading of the weights: loss of smell matters most, weight loss least
    assert nnx.datasets.VIRUS_SYMPTOMS[int(np.argmax(W))] == "loss of smell"
    assert nnx.datasets.VIRUS_SYMPTOMS[int(np.argmin(np.abs(W)))] == "weight loss"
    assert np.all(W > 0)
    # the tutorial's three queries: [1,0,0,1] positive, [0,0,1,0] negative, [1,0,1,0] positive
    queries = np.array([[1, 0, 0, 1], [0, 0, 1, 0], [1, 0, 1, 0]], dtype=float)
    np.testing.assert_array_equal(host(model.predict(queries)), [1, 0, 1])


def test_moons_network_reaches_high_training_accuracy(backend):
    """The tutorial: 200 moons, noise 0.2, 3 tanh units, softmax, L2, full batch."""
    X, y = nnx.datasets.make_moons(200, noise=0.2, seed=0)
    model = moons_net(backend, hidden=3, l2=0.001)
    history = model.fit(X, y, epochs=3000, lr=1.0)
    assert model.accuracy(X, y) >= 0.95
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    # the reported figures are the objective: data loss plus (l2/2) * sum ||W||^2
    weights = model.get_weights()
    logits = np.tanh(X @ weights[0] + weights[1]) @ weights[2] + weights[3]
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    expected = -logp[np.arange(len(y)), y].mean() + 0.0005 * (
        (weights[0] ** 2).sum() + (weights[2] ** 2).sum())
    assert model.loss(X, y) == pytest.approx(expected, rel=1e-4)


def test_full_batch_is_the_tutorials_gradient_descent(backend, float64):
    """One epoch = one update W -= lr * (dW_data + l2 * W), by hand in NumPy."""
    X, y = nnx.datasets.make_moons(20, seed=3)
    model = moons_net(backend, "float64", l2=0.1)
    W1, b1, W2, b2 = model.get_weights()
    model.fit(X, y, epochs=1, lr=0.3)
    a1 = np.tanh(X @ W1 + b1)
    z = a1 @ W2 + b2
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    d3 = p.copy()
    d3[np.arange(len(y)), y] -= 1
    d3 /= len(y)
    dW2 = a1.T @ d3 + 0.1 * W2
    d2 = d3 @ W2.T * (1 - a1**2)
    dW1 = X.T @ d2 + 0.1 * W1
    expected = [W1 - 0.3 * dW1, b1 - 0.3 * d2.sum(0), W2 - 0.3 * dW2, b2 - 0.3 * d3.sum(0)]
    for got, want in zip(model.get_weights(), expected):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_fit_continues_and_keeps_l2_on_the_model(backend):
    X, y = nnx.datasets.make_moons(60, seed=4)
    once = moons_net(backend, l2=0.0)
    once.fit(X, y, epochs=40, lr=0.5, l2=0.01)
    assert once.l2 == 0.01 and once.epochs_trained == 40
    twice = moons_net(backend)
    twice.fit(X, y, epochs=20, lr=0.5, l2=0.01)
    twice.fit(X, y, epochs=20)
    assert twice.l2 == 0.01 and twice.epochs_trained == 40
    np.testing.assert_allclose(host(twice.predict_proba(X)), host(once.predict_proba(X)),
                               rtol=1e-5, atol=1e-6)


def test_predict_in_batches_equals_one_batch(backend):
    X, y = nnx.datasets.make_moons(50, seed=5)
    model = moons_net(backend)
    model.fit(X, y, epochs=10, lr=0.5)
    whole = host(model.predict_proba(X))
    np.testing.assert_allclose(host(model.predict_proba(X, batch_size=7)), whole, rtol=1e-6)
    np.testing.assert_array_equal(host(model.predict(X, batch_size=7)), host(model.predict(X)))
    assert model.evaluate(X, y, batch_size=7)["loss"] == pytest.approx(model.loss(X, y),
                                                                       rel=1e-5)


@pytest.mark.parametrize("init,activation,std", [
    ("tutorial", "tanh", lambda n_in, n_out: 1 / np.sqrt(n_in)),
    ("he", "tanh", lambda n_in, n_out: np.sqrt(2 / n_in)),
    ("glorot", "tanh", lambda n_in, n_out: np.sqrt(2 / (n_in + n_out))),  # uniform: limit/sqrt(3)
    ("auto", "relu", lambda n_in, n_out: np.sqrt(2 / n_in)),
    ("auto", "leaky_relu", lambda n_in, n_out: np.sqrt(2 / n_in)),
    ("auto", "tanh", lambda n_in, n_out: 1 / np.sqrt(n_in)),
])
def test_initial_weights_have_the_schemes_scale(init, activation, std):
    n_in, n_out = 400, 300
    W = host(nnx.Dense(n_in, n_out, activation, init=init).build("numpy", "float64", 0).W)
    assert abs(W.std() / std(n_in, n_out) - 1) < 0.02  # 120,000 draws: about 0.3% spread
    assert abs(W.mean()) < 0.01 * std(n_in, n_out) * 10
    if init == "glorot":
        assert np.abs(W).max() <= np.sqrt(6 / (n_in + n_out))


def test_model_backward_returns_the_input_gradient(backend, float64, rng):
    """Sequential.forward/backward (the public pair): d(sum(out * R))/dX by finite differences."""
    model = nnx.Sequential([nnx.Dense(3, 4, "tanh"), nnx.Dense(4, 2, "sigmoid")],
                           dtype="float64", backend=backend, seed=2)
    X = rng.normal(size=(5, 3))
    R = rng.normal(size=(5, 2))
    model.forward(X)
    dX = host(model.backward(backend.asarray(R, dtype=backend.xp.float64)))

    def f(x):
        return float(np.sum(host(model.forward(x)) * R))

    assert relative_error(dX, central_difference(f, X)) < 1e-6
