"""Shared test helpers: finite differences and host conversion."""

from __future__ import annotations

import numpy as np

import nnx


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
