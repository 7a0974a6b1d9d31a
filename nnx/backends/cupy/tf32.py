"""TF32 matrix products for CuPy's float32 ``matmul``."""

from __future__ import annotations

import os
import sys
import warnings

TF32_ENV = "CUPY_TF32"


def enable_tf32() -> bool:
    """Let CuPy's float32 matrix products use TF32 tensor cores (``CUPY_TF32=1``).

    CuPy reads ``CUPY_TF32`` once, at the first float32 matrix product of the process, so this
    must run before that: at program start, or export ``CUPY_TF32=1`` in the shell. Whether a
    product already ran cannot be known from here; if CuPy is already imported a warning says
    so.

    Returns
    -------
    bool
        True when CuPy was not yet imported (the setting is sure to apply), else False.
    """
    os.environ[TF32_ENV] = "1"
    if "cupy" in sys.modules:
        warnings.warn(
            "nnx.cuda.enable_tf32: CuPy is already imported; CUPY_TF32=1 applies only if no "
            "float32 matrix product has run in this process yet (CuPy reads it once, at the "
            "first). Call enable_tf32() at program start or export CUPY_TF32=1.",
            UserWarning, stacklevel=2)
        return False
    return True


def tf32_enabled() -> bool:
    """Whether ``CUPY_TF32`` asks for TF32 (as CuPy reads it: an integer > 0), for a
    benchmark's ``extra_info``. It says what was asked, not what CuPy already decided."""
    try:
        return int(os.environ.get(TF32_ENV, "0").strip() or "0") > 0
    except ValueError:
        return False
