"""Activations: forward against NumPy float64 references, backward against finite differences,
and the stable forms at extreme inputs, on every backend."""

import warnings

import numpy as np
import pytest
from helpers import assert_on_backend, central_difference, host, relative_error, tolerance

from nnx import activations as A

REFERENCES = {
    "identity": lambda z: z,
    "tanh": np.tanh,
    "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
    "relu": lambda z: np.maximum(z, 0),
    "leaky_relu": lambda z: np.where(z > 0, z, 0.01 * z),
    "softmax": lambda z: np.exp(z) / np.exp(z).sum(axis=1, keepdims=True),
}


@pytest.mark.parametrize("name", list(REFERENCES))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_forward_matches_numpy_reference(backend, name, dtype, rng):
    if dtype == "float64" and not backend.supports_float64:
        pytest.skip("no float64 on this device")
    z = rng.normal(size=(7, 5)) * 3
    act = A.get_activation(name)
    out = act.forward(backend.xp, backend.asarray(z, dtype=getattr(backend.xp, dtype)))
    assert_on_backend(out, backend, dtype, z.shape)
    np.testing.assert_allclose(host(out), REFERENCES[name](z), rtol=tolerance(dtype),
                               atol=tolerance(dtype))


@pytest.mark.parametrize("name", list(REFERENCES))
def test_backward_matches_finite_differences(backend, float64, name, rng):
    """d/dz sum(G * f(z)) computed by backward(a, G) equals central differences."""
    xp = backend.xp
    z0 = rng.normal(size=(4, 5))
    if name in ("relu", "leaky_relu"):
        z0 += np.sign(z0) * 0.1  # keep away from the kink, where no derivative exists
    G = rng.normal(size=z0.shape)
    act = A.get_activation(name)

    def scalar(z):
        return float(xp.sum(backend.asarray(G, xp.float64) * act.forward(xp, backend.asarray(z))))

    a = act.forward(xp, backend.asarray(z0))
    analytic = act.backward(xp, a, backend.asarray(G))
    assert_on_backend(analytic, backend, "float64", z0.shape)
    numeric = central_difference(scalar, z0)
    assert relative_error(host(analytic), numeric) < 1e-6


def test_sigmoid_extremes_do_not_overflow_or_warn(backend):
    xp = backend.xp
    z = backend.asarray(np.array([[-1000.0, -50.0, 0.0, 50.0, 1000.0]]), xp.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = host(A.sigmoid(xp, z))
    assert np.all(np.isfinite(s))
    assert s[0, 0] == 0.0 and s[0, -1] == 1.0 and s[0, 2] == 0.5
    assert 0 < s[0, 1] < 1e-20  # small but not flushed to zero: the exp(-|z|) form keeps it


def test_softmax_and_log_softmax_are_shift_invariant_at_huge_logits(backend):
    xp = backend.xp
    base = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    z = backend.asarray(base + 1e4, xp.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = host(A.softmax(xp, z))
        logp = host(A.log_softmax(xp, z))
    expected = np.exp(base) / np.exp(base).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(p, expected, rtol=1e-5)
    np.testing.assert_allclose(logp, np.log(expected), rtol=1e-4, atol=1e-5)


def test_unknown_activation_names_the_choices():
    with pytest.raises(ValueError, match=r"activation='tanhh' is unknown; choose one of: identity"):
        A.get_activation("tanhh")
    with pytest.raises(TypeError, match="activation must be a name"):
        A.get_activation(3)


def test_leaky_relu_slope_is_checked():
    with pytest.raises(ValueError, match=r"slope must be a finite number in \(0, 1\); received "
                                         r"slope=1.5"):
        A.leaky_relu(1.5)
