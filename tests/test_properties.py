"""Properties over random shapes, dtypes, batch sizes and architectures (hypothesis), on every
backend of the registry: batch invariance of inference, the shape contracts of forward and
backward, save -> load identity, and the loader under random damage of a real file.

Every expected value comes from NumPy in float64, written here from the formulas, never from
nnx itself. Example counts are small: each test runs once per backend.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_on_backend, host
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import nnx
from nnx.errors import ModelFileError

ACTIVATIONS = ("identity", "tanh", "sigmoid", "relu", "leaky_relu")
OUTPUTS = ("softmax", "sigmoid", "identity")


def property_settings(examples):
    return settings(max_examples=examples, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


def examples(backend, n):
    """`n`, or a third of it on JAX: its eager operations compile once per shape (about 50 ms
    each), and every random shape is a new one."""
    return max(2, n // 3) if backend.name == "jax" else n


def dtype_on(backend, want):
    return "float32" if not backend.supports_float64 else want


# -- a NumPy float64 reference, from the formulas ----------------------------------------------
def reference_activation(name, z):
    if name == "identity":
        return z
    if name == "tanh":
        return np.tanh(z)
    if name == "sigmoid":
        return 0.5 * (1 + np.tanh(z / 2))
    if name == "relu":
        return np.maximum(z, 0)
    if name.startswith("leaky_relu"):
        slope = float(name[len("leaky_relu("):-1]) if "(" in name else 0.01
        return np.where(z > 0, z, slope * z)
    if name == "softmax":
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    raise KeyError(name)


def reference_derivative(name, z):
    """d activation / d z elementwise (not for softmax)."""
    if name == "identity":
        return np.ones_like(z)
    if name == "tanh":
        return 1 - np.tanh(z) ** 2
    if name == "sigmoid":
        s = 0.5 * (1 + np.tanh(z / 2))
        return s * (1 - s)
    if name == "relu":
        return (z > 0).astype(np.float64)
    if name.startswith("leaky_relu"):
        slope = float(name[len("leaky_relu("):-1]) if "(" in name else 0.01
        return np.where(z > 0, 1.0, slope)
    raise KeyError(name)


def reference_proba(model, X):
    """The model's output activation from its own weights, in float64 NumPy."""
    a = np.asarray(X, np.float64)
    weights = iter(model.get_weights())
    for layer in model.layers:
        first, second = np.float64(next(weights)), np.float64(next(weights))
        if layer.type_name == "Standardize":
            a = (a - first) / second
        else:
            a = reference_activation(layer.activation.name, a @ first + second)
    return a


@st.composite
def architectures(draw, max_layers=3, max_width=6):
    """``(sizes, hidden activations, output activation)``."""
    depth = draw(st.integers(1, max_layers))
    sizes = draw(st.lists(st.integers(1, max_width), min_size=depth + 1, max_size=depth + 1))
    hidden = draw(st.lists(st.sampled_from(ACTIVATIONS), min_size=depth - 1,
                           max_size=depth - 1))
    output = draw(st.sampled_from(OUTPUTS))
    if output == "softmax" and sizes[-1] == 1:
        sizes[-1] = 2  # one softmax unit is always 1: not a classifier nnx builds
    return sizes, hidden, output


def build(sizes, hidden, output, backend, dtype, seed, standardize=False):
    layers = [nnx.layers.Standardize(sizes[0])] if standardize else []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        activation = hidden[i] if i < len(hidden) else output
        layers.append(nnx.Dense(n_in, n_out, activation))
    return nnx.Sequential(layers, dtype=dtype, backend=backend, seed=seed)


def tolerance(dtype):
    return 1e-12 if dtype == "float64" else 2e-5


# -- (a) inference does not depend on the batch size ------------------------------------------
def test_predict_is_the_same_in_any_batch_size(backend):
    @property_settings(examples(backend, 8))
    @given(arch=architectures(), n=st.integers(1, 40), batch=st.integers(1, 45),
           want=st.sampled_from(["float32", "float64"]), seed=st.integers(0, 2**16))
    def check(arch, n, batch, want, seed):
        batch_invariance(backend, arch, n, batch, want, seed)

    check()


def batch_invariance(backend, arch, n, batch, want, seed):
    dtype = dtype_on(backend, want)
    model = build(*arch, backend, dtype, seed)
    X = np.random.default_rng(seed).normal(scale=2.0, size=(n, arch[0][0]))
    expected = reference_proba(model, X)
    tol = tolerance(dtype)

    whole = model.predict_proba(X)
    parts = model.predict_proba(X, batch_size=batch)
    for got in (whole, parts):
        assert_on_backend(got, backend, dtype, (n, arch[0][-1]))
        np.testing.assert_allclose(host(got), expected, rtol=tol, atol=tol)
    np.testing.assert_allclose(host(parts), host(whole), rtol=tol, atol=tol)

    labels, labels_parts = host(model.predict(X)), host(model.predict(X, batch_size=batch))
    output = arch[2]
    if output == "identity":  # regression: the outputs themselves
        np.testing.assert_allclose(labels_parts, expected, rtol=tol, atol=tol)
        np.testing.assert_allclose(labels, expected, rtol=tol, atol=tol)
        return
    if output == "softmax":
        want_labels = expected.argmax(axis=1)
        top = np.sort(expected, axis=1)
        clear = top[:, -1] - top[:, -2] > 10 * tol  # a near tie may go either way
    else:
        want_labels = (expected > 0.5).astype(np.int64)
        clear = np.abs(expected - 0.5) > 10 * tol
        if expected.shape[1] == 1:
            want_labels, clear = want_labels[:, 0], clear[:, 0]
    np.testing.assert_array_equal(labels[clear], want_labels[clear])
    np.testing.assert_array_equal(labels_parts[clear], want_labels[clear])


# -- (b) forward and backward keep the shapes, for n = 1 too ----------------------------------
def test_dense_forward_backward_shapes_and_values(backend):
    @property_settings(examples(backend, 10))
    @given(n_in=st.integers(1, 7), n_out=st.integers(1, 7), n=st.sampled_from([1, 2, 3, 17]),
           activation=st.sampled_from(ACTIVATIONS), seed=st.integers(0, 2**16))
    def check(n_in, n_out, n, activation, seed):
        dense_contract(backend, n_in, n_out, n, activation, seed)

    check()


def dense_contract(backend, n_in, n_out, n, activation, seed):
    dtype = dtype_on(backend, "float64")  # gradients in float64 where the device has it
    layer = nnx.Dense(n_in, n_out, activation).build(backend, dtype, seed)
    rng = np.random.default_rng(seed)
    x, grad = rng.normal(size=(n, n_in)), rng.normal(size=(n, n_out))
    xd = backend.asarray(x, dtype=getattr(backend.xp, dtype))
    out = layer.forward(xd, training=True)
    assert_on_backend(out, backend, dtype, (n, n_out))
    dx = layer.backward(backend.asarray(grad, dtype=getattr(backend.xp, dtype)))
    assert_on_backend(dx, backend, dtype, (n, n_in))
    grads, params = layer.grads(), layer.params()
    assert set(grads) == set(params) == {"W", "b"}
    for name in params:
        assert_on_backend(grads[name], backend, dtype, tuple(params[name].shape))

    W, b = host(layer.W), host(layer.b)
    z = x @ W + b
    dz = grad * reference_derivative(layer.activation.name, z)
    tol = tolerance(dtype) * 100
    np.testing.assert_allclose(host(out), reference_activation(layer.activation.name, z),
                               rtol=tol, atol=tol)
    np.testing.assert_allclose(host(dx), dz @ W.T, rtol=tol, atol=tol)
    np.testing.assert_allclose(host(grads["W"]), x.T @ dz, rtol=tol, atol=tol)
    np.testing.assert_allclose(host(grads["b"]), dz.sum(axis=0), rtol=tol, atol=tol)


def test_sequential_forward_backward_shapes(backend):
    @property_settings(examples(backend, 8))
    @given(arch=architectures(), n=st.sampled_from([1, 2, 9]), seed=st.integers(0, 2**16))
    def check(arch, n, seed):
        sequential_contract(backend, arch, n, seed)

    check()


def sequential_contract(backend, arch, n, seed):
    dtype = dtype_on(backend, "float64")
    sizes = arch[0]
    model = build(*arch, backend, dtype, seed)
    rng = np.random.default_rng(seed)
    out = model.forward(rng.normal(size=(n, sizes[0])))
    assert_on_backend(out, backend, dtype, (n, sizes[-1]))
    dx = model.backward(backend.asarray(rng.normal(size=(n, sizes[-1])),
                                        dtype=getattr(backend.xp, dtype)))
    assert_on_backend(dx, backend, dtype, (n, sizes[0]))
    for i, layer in enumerate(model.layers):
        params, grads = layer.params(), layer.grads()
        assert set(grads) == set(params), i
        for name, value in params.items():
            assert_on_backend(grads[name], backend, dtype, tuple(value.shape))
        assert tuple(params["W"].shape) == (sizes[i], sizes[i + 1])
        assert tuple(params["b"].shape) == (sizes[i + 1],)


# -- (c) save -> load is the identity ---------------------------------------------------------
def test_save_then_load_gives_the_same_model(backend, tmp_path):
    @property_settings(examples(backend, 6))
    @given(arch=architectures(max_layers=4), want=st.sampled_from(["float32", "float64"]),
           standardize=st.booleans(), epochs=st.integers(0, 2), seed=st.integers(0, 2**16))
    def check(arch, want, standardize, epochs, seed):
        round_trip(backend, tmp_path, arch, want, standardize, epochs, seed)

    check()


def round_trip(backend, tmp_path, arch, want, standardize, epochs, seed):
    dtype = dtype_on(backend, want)
    model = build(*arch, backend, dtype, seed, standardize=standardize)
    rng = np.random.default_rng(seed)
    X = rng.normal(loc=3.0, scale=2.0, size=(12, arch[0][0]))
    output = arch[2]
    if output == "softmax":
        y = np.arange(12) % arch[0][-1]
    elif output == "sigmoid":
        y = (rng.random((12, arch[0][-1])) > 0.5).astype(np.int64)
        y = y[:, 0] if arch[0][-1] == 1 else y
    else:
        y = rng.normal(size=(12, arch[0][-1]))
    if epochs:
        model.fit(X, y, epochs=epochs, lr=0.1)
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = nnx.load(path, backend=backend)

    assert loaded.get_config() == model.get_config() and loaded.dtype_name == dtype
    assert loaded.epochs_trained == epochs and loaded.backend == model.backend
    for got, want_array in zip(loaded.get_weights(), model.get_weights(), strict=True):
        assert got.dtype == want_array.dtype and got.shape == want_array.shape
        assert got.tobytes() == want_array.tobytes()  # bit for bit
    np.testing.assert_array_equal(host(loaded.predict_proba(X)), host(model.predict_proba(X)))
    np.testing.assert_array_equal(host(loaded.predict(X)), host(model.predict(X)))
    # and both compute the function the weights define
    np.testing.assert_allclose(host(loaded.predict_proba(X)), reference_proba(model, X),
                               rtol=tolerance(dtype) * 10, atol=tolerance(dtype) * 10)


# -- (d) the loader under damage: a ModelFileError or the very same model ----------------------
@pytest.fixture(scope="module")
def saved_files(tmp_path_factory):
    """Three real files: float32 with a Standardize layer and class names, float64 with
    feature names, a deeper float64 regressor."""
    X, y = nnx.datasets.make_moons(30, seed=1)
    folder = tmp_path_factory.mktemp("damage")
    files = []
    for i, (layers, dtype, target) in enumerate([
            ([nnx.layers.Standardize(2), nnx.Dense(2, 4, "relu"), nnx.Dense(4, 2, "softmax")],
             "float32", np.where(y == 1, "yes", "no")),
            ([nnx.Dense(2, 3, "tanh"), nnx.Dense(3, 1, "sigmoid")], "float64", y),
            ([nnx.Dense(2, 5, "leaky_relu"), nnx.Dense(5, 3, "tanh"), nnx.Dense(3, 1)],
             "float64", X[:, 0] * X[:, 1])]):
        model = nnx.Sequential(layers, dtype=dtype, seed=i)
        if target.dtype.kind == "U":
            model.classes = ["no", "yes"]
        else:
            model.feature_names = ["x0", "x1"]
        model.fit(X, target, epochs=2, lr=0.1)
        path = folder / f"model{i}.npz"
        model.save(path)
        files.append((path.read_bytes(), model))
    return files


def damage_plans(size):
    """Flips (anywhere, or in the first and last 128 bytes, where the headers and the zip
    directory are), truncations, insertions and deletions."""
    offset = st.one_of(st.integers(0, size - 1), st.integers(0, min(127, size - 1)),
                       st.integers(max(0, size - 128), size - 1))
    flip = st.tuples(st.just("flip"), offset, st.integers(1, 255))
    cut = st.tuples(st.just("cut"), st.integers(0, size - 1), st.just(0))
    insert = st.tuples(st.just("insert"), offset, st.integers(1, 16))
    delete = st.tuples(st.just("delete"), offset, st.integers(1, 16))
    return st.lists(st.one_of(flip, flip, cut, insert, delete), min_size=1, max_size=3)


def apply(data, plan):
    out = bytearray(data)
    for kind, at, amount in plan:
        at = min(at, max(len(out) - 1, 0))
        if kind == "flip" and out:
            out[at] ^= amount
        elif kind == "cut":
            del out[at:]
        elif kind == "insert":
            out[at:at] = bytes(range(amount))
        else:
            del out[at:at + amount]
    return bytes(out)


@property_settings(200)
@given(data=st.data())
def test_damaged_files_give_a_model_file_error_or_the_same_model(tmp_path, saved_files, data):
    original, model = data.draw(st.sampled_from(saved_files), label="file")
    damaged = apply(original, data.draw(damage_plans(len(original)), label="damage"))
    path = tmp_path / "damaged.npz"
    path.write_bytes(damaged)
    try:
        loaded = nnx.load(path, backend="numpy")
    except ModelFileError as exc:
        assert str(exc).startswith(f"nnx.load: cannot load {path}: ")
        event("refused")
        return
    event("loaded")
    # It loaded: then nothing it holds may differ from what was saved.
    assert loaded.get_config() == model.get_config()
    assert loaded.epochs_trained == model.epochs_trained
    assert loaded.classes == model.classes and loaded.feature_names == model.feature_names
    for got, want in zip(loaded.get_weights(), model.get_weights(), strict=True):
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes()
