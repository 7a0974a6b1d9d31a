"""The one backend fixture: every numeric test runs on every available backend and device.

numpy; array_api_strict on its CPU_DEVICE, on its simulated accelerator ``device1`` (refuses
conversion to NumPy and mixing devices, as CuPy does) and on its ``no_float64`` device; torch on
the CPU; cupy where a CUDA device is usable (skipped with the reason elsewhere). With
``NNX_BACKEND`` set (e.g. ``NNX_BACKEND=cupy`` on a GPU machine) only that backend runs.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import nnx
from nnx.backend import BackendError

# (id, backend name, device)
CANDIDATES = [
    ("numpy", "numpy", None),
    ("strict-cpu", "array_api_strict", "CPU_DEVICE"),
    ("strict-device1", "array_api_strict", "device1"),
    ("strict-no_float64", "array_api_strict", "no_float64"),
    ("torch-cpu", "torch", "cpu"),
    ("cupy", "cupy", None),
]


def _selected():
    wanted = os.environ.get("NNX_BACKEND", "").strip().lower()
    if wanted in ("", "auto"):
        return CANDIDATES
    return [c for c in CANDIDATES if c[1] == wanted]


def _resolve(name, device):
    try:
        return nnx.get_backend(name, device), None
    except (BackendError, ImportError) as exc:
        return None, str(exc)


@pytest.fixture(params=[pytest.param(c, id=c[0]) for c in _selected()])
def backend(request):
    """A resolved :class:`nnx.Backend` (namespace + device); skipped if unusable here."""
    _, name, device = request.param
    resolved, why = _resolve(name, device)
    if resolved is None:
        pytest.skip(f"{name} unavailable: {why}")
    return resolved


@pytest.fixture
def xp(backend):
    """The namespace of the current backend."""
    return backend.xp


@pytest.fixture
def float64(backend):
    """Skip on devices without float64 (array_api_strict's no_float64); else 'float64'."""
    if not backend.supports_float64:
        pytest.skip(f"{backend.name} {backend.device} has no float64")
    return "float64"


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
    """Backends that support float64 and are usable here, for cross-backend comparisons."""
    out = []
    for _, name, device in CANDIDATES:
        if name == "cupy" or device == "no_float64":
            continue
        resolved, _ = _resolve(name, device)
        if resolved is not None:
            out.append(resolved)
    return out


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
