"""JAX specifics: float64 models without touching JAX's global x64 switch, and the same
numbers as NumPy from the same seed."""

import numpy as np
import pytest

import nnx

jax = pytest.importorskip("jax")


def moons_model(backend, dtype="float64"):
    layers = [nnx.Dense(2, 5, "tanh"), nnx.Dense(5, 2, "softmax")]
    return nnx.Sequential(layers, dtype=dtype, l2=0.01, seed=3, backend=backend)


def test_a_float64_model_leaves_jax_global_x64_switch_alone():
    assert not jax.config.jax_enable_x64, "the test process must start with x64 off"
    X, y = nnx.datasets.load("moons", seed=0)
    model = moons_model("jax")
    model.fit(X, y, epochs=20, lr=0.5, batch_size=64)
    proba = model.predict_proba(X)
    assert proba.dtype == jax.numpy.float64
    assert all(p.dtype == jax.numpy.float64 for p in model.parameters())
    assert not jax.config.jax_enable_x64
    # The rest of the program keeps JAX's default: float32.
    assert jax.numpy.ones(2).dtype == jax.numpy.float32


def test_same_seed_gives_numpys_float64_predictions_within_1e_8():
    X, y = nnx.datasets.load("moons", seed=0)
    results = []
    for backend in ("numpy", "jax"):
        model = moons_model(backend)
        history = model.fit(X, y, epochs=200, lr=0.5, batch_size=50, optimizer="momentum")
        results.append((nnx.to_numpy(model.predict_proba(X)), history["loss"]))
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=0, atol=1e-8)
    np.testing.assert_allclose(results[1][1], results[0][1], rtol=1e-8)


def test_a_jax_device_that_does_not_exist_is_a_clear_error():
    with pytest.raises(nnx.InvalidParameterError, match=r"device='tpu:3' is not a jax device "
                                                       r"here; choose one of: cpu:0"):
        nnx.get_backend("jax", "tpu:3")
