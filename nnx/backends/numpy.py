"""NumPy: the default backend, on the host."""

from __future__ import annotations

from typing import Any

import array_api_compat

from nnx.backends.base import Backend
from nnx.errors import InvalidParameterError

INSTALL = "it comes with nnx"


class NumpyBackend(Backend):
    library = "numpy"

    @classmethod
    def is_array(cls, x: Any) -> bool:
        return array_api_compat.is_numpy_array(x)


def build(device: Any, where: str) -> NumpyBackend:
    import array_api_compat.numpy as xp

    if device is not None and str(device) != "cpu":
        raise InvalidParameterError(
            f"{where}: device={device!r} is not a numpy device; numpy has only 'cpu' (use "
            "backend='cupy', 'torch' or 'jax' for a GPU).")
    return NumpyBackend("numpy", xp, "cpu")
