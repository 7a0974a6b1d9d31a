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
from helpers import CANDIDATES, resolve


def _selected():
    wanted = os.environ.get("NNX_BACKEND", "").strip().lower()
    if wanted in ("", "auto"):
        return CANDIDATES
    return [c for c in CANDIDATES if c[1] == wanted]


@pytest.fixture(params=[pytest.param(c, id=c[0]) for c in _selected()])
def backend(request):
    """A resolved :class:`nnx.Backend` (namespace + device); skipped if unusable here."""
    _, name, device = request.param
    resolved, why = resolve(name, device)
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


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
