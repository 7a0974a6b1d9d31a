"""Shared test helpers: the backend candidates, checks on arrays, finite differences.

(Kept out of conftest.py: `pytest tests bench` sees two conftest modules, and an
`import conftest` would pick up the wrong one.)
"""

from __future__ import annotations

import importlib.util

import numpy as np

import nnx
from nnx.backends import test_targets
from nnx.errors import BackendError

# (id, backend name, device), from the registry: no list of backends is kept here.
CANDIDATES = test_targets()


def resolve(name, device):
    try:
        return nnx.get_backend(name, device), None
    except (BackendError, ImportError) as exc:
        return None, str(exc)


def tolerance(dtype_name: str) -> float:
    """Relative tolerance for comparing a backend's result with a float64 NumPy reference."""
    return 1e-10 if dtype_name == "float64" else 2e-5


def assert_on_backend(array, backend, dtype_name=None, shape=None):
    """Namespace, device, shape and dtype checks, before any value is compared."""
    assert backend.owns(array), f"{type(array)} is not an array of {backend.name}"
    import array_api_compat

    assert array_api_compat.device(array) == backend.device
    if shape is not None:
        assert tuple(array.shape) == tuple(shape)
    if dtype_name is not None:
        assert array.dtype == getattr(backend.xp, dtype_name)


def available_cpu_backends():
    """Backends that support float64 and are usable here, for cross-backend comparisons.

    torch, when installed (CI installs it), must be among them: a comparison that quietly
    ran without the second real backend would prove less than it says.
    """
    out = []
    for _, name, device in CANDIDATES:
        if name == "cupy" or device == "no_float64" or str(device).startswith("cuda"):
            continue
        resolved, why = resolve(name, device)
        if resolved is not None:
            out.append(resolved)
        elif name == "torch" and importlib.util.find_spec("torch") is not None:
            raise AssertionError(f"torch is installed but not usable: {why}")
    return out





def host(array) -> np.ndarray:
    """Any backend's array as float64 NumPy (through nnx.to_numpy: works on device1 too)."""
    return np.asarray(nnx.to_numpy(array), dtype=np.float64)


def central_difference(f, x0: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """d f / d x at x0 by central differences, f: float64 array -> float."""
    grad = np.zeros_like(x0)
    flat = x0.reshape(-1)
    out = grad.reshape(-1)
    for i in range(flat.size):
        plus, minus = flat.copy(), flat.copy()
        plus[i] += h
        minus[i] -= h
        out[i] = (f(plus.reshape(x0.shape)) - f(minus.reshape(x0.shape))) / (2 * h)
    return grad


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), np.max(np.abs(b)), 1e-12))


def reference_backward(name: str, a: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """d(loss)/dz from the activation's output `a` and the upstream `grad`, in float64 NumPy,
    written here from the derivatives' formulas (independent of nnx)."""
    a, grad = np.asarray(a, np.float64), np.asarray(grad, np.float64)
    return {"tanh": lambda: grad * (1 - a**2), "sigmoid": lambda: grad * a * (1 - a),
            "relu": lambda: np.where(a > 0, grad, 0.0)}[name]()


def reference_loss(name: str, logits: np.ndarray, Y: np.ndarray, scale: float = 1.0):
    """``(loss, scale * d(loss)/d(logits))`` in float64 NumPy from the textbook formulas
    (log-sum-exp for softmax cross-entropy, softplus for the sigmoid log-loss)."""
    z, Y = np.asarray(logits, np.float64), np.asarray(Y, np.float64)
    n = z.shape[0]
    if name == "cross_entropy":
        top = z.max(axis=1, keepdims=True)
        log_p = z - top - np.log(np.exp(z - top).sum(axis=1, keepdims=True))
        return -(Y * log_p).sum() / n, scale * (np.exp(log_p) - Y) / n
    if name == "binary_cross_entropy":
        loss = (np.logaddexp(0, z) - Y * z).sum() / n
        return loss, scale * (0.5 * (1 + np.tanh(z / 2)) - Y) / n
    raise KeyError(name)
