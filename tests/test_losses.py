"""Losses from logits: values against NumPy float64 references, fused gradients against finite
differences, and stability at extreme logits, on every backend."""

import warnings

import numpy as np
import pytest
from helpers import assert_on_backend, central_difference, host, relative_error

from nnx import losses as L


def _reference(name, out, Y):
    if name == "cross_entropy":
        p = np.exp(out - out.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        return -np.mean(np.sum(Y * np.log(p), axis=1))
    if name == "binary_cross_entropy":
        p = 1 / (1 + np.exp(-out))
        return -np.mean(np.sum(Y * np.log(p) + (1 - Y) * np.log(1 - p), axis=1))
    return np.mean((out - Y) ** 2)


def _targets(name, rng, n, k):
    if name == "cross_entropy":
        return np.eye(k)[rng.integers(0, k, size=n)]
    if name == "binary_cross_entropy":
        return rng.integers(0, 2, size=(n, k)).astype(float)
    return rng.normal(size=(n, k))


@pytest.mark.parametrize("name", list(L.LOSSES))
def test_value_and_fused_gradient(backend, float64, name, rng):
    xp = backend.xp
    n, k = 6, 3
    out0 = rng.normal(size=(n, k)) * 2
    Y = _targets(name, rng, n, k)
    fn = L.LOSSES[name].fn
    loss, grad = fn(xp, backend.asarray(out0), backend.asarray(Y))
    assert_on_backend(loss, backend, "float64", ())
    assert_on_backend(grad, backend, "float64", (n, k))
    assert float(loss) == pytest.approx(_reference(name, out0, Y), rel=1e-12)
    numeric = central_difference(lambda o: _reference(name, o, Y), out0)
    assert relative_error(host(grad), numeric) < 1e-6


@pytest.mark.parametrize("name", ["cross_entropy", "binary_cross_entropy"])
def test_extreme_logits_stay_finite_without_warnings(backend, name):
    xp = backend.xp
    out = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 50.0]])
    Y = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]) if name == "cross_entropy" else \
        np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss, grad = L.LOSSES[name].fn(xp, backend.asarray(out, xp.float32),
                                        backend.asarray(Y, xp.float32))
        loss, grad = float(loss), host(grad)
    # Every confidently wrong logit costs about |z|: the loss is large but finite.
    assert np.isfinite(loss) and loss > 1e3
    assert np.all(np.isfinite(grad)) and np.all(np.abs(grad) <= 1.0)


def test_unknown_loss_names_the_choices():
    with pytest.raises(ValueError, match=r"loss='hinge' is unknown; choose one of: cross_entropy"):
        L.get_loss("hinge")
