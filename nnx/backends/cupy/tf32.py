"""TF32 matrix products for CuPy's float32 ``matmul``, set and read where CuPy keeps them.

CuPy decides the compute type of float32 products once per process, at the first one, from
``CUPY_TF32``, and caches it (``cupy/_core/_routines_linalg.pyx``: ``get_compute_type``). So
setting the variable after that first product silently does nothing, and a value such as
``"yes"`` makes CuPy raise inside that product. Here the compute type is set and read in
CuPy's own table (``set_compute_type`` / ``get_compute_type``): it applies whenever it is
called, and a bad variable is reported clearly before CuPy trips on it.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from nnx.errors import BackendError, InvalidParameterError

TF32_ENV = "CUPY_TF32"


def _linalg() -> Any:
    try:
        return importlib.import_module("cupy._core._routines_linalg")
    except ImportError as exc:
        raise BackendError(f"nnx.cuda: TF32 is a CuPy setting and CuPy is not usable here "
                           f"({exc}).") from None


def _env_asks_tf32() -> bool:
    raw = os.environ.get(TF32_ENV)
    if raw is None:
        return False
    try:
        return int(raw) > 0  # exactly as CuPy reads it
    except ValueError:
        raise InvalidParameterError(
            f"{TF32_ENV}={raw!r} is not an integer; CuPy reads it with int() and would raise "
            f"at the first float32 matrix product. Set {TF32_ENV}=1 or 0, or unset it.") from None


def enable_tf32(enabled: bool = True) -> bool:
    """Let CuPy's float32 matrix products use TF32 tensor cores (or, with ``enabled=False``,
    not), from now on: the compute type is set in CuPy's own table, so it applies whether or
    not a float32 product already ran.

    Returns
    -------
    bool
        Whether TF32 is now in force (CuPy refuses it, with a warning, on GPUs before compute
        capability 8.0).
    """
    linalg = _linalg()
    import numpy as np

    mode = linalg.COMPUTE_TYPE_TF32 if enabled else linalg.COMPUTE_TYPE_DEFAULT
    linalg.set_compute_type(np.float32, mode)
    return tf32_enabled()


def tf32_enabled() -> bool:
    """Whether CuPy's float32 matrix products use TF32, as CuPy has decided (or, before its
    first float32 product, will decide from ``CUPY_TF32``); False where CuPy is not
    importable and the variable does not ask for it."""
    _env = _env_asks_tf32()  # a bad value is an error either way
    try:
        linalg = importlib.import_module("cupy._core._routines_linalg")
    except ImportError:
        return _env
    import numpy as np

    return int(linalg.get_compute_type(np.float32)) == int(linalg.COMPUTE_TYPE_TF32)
