"""Out of device memory: the library's error turned into one that says what to change.

Which exception means "out of memory" is each backend's to say
(:meth:`nnx.backends.base.Backend.is_memory_error`); the message is built here, once, for all.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from nnx.errors import NnxError


class DeviceMemoryError(NnxError, MemoryError):
    """The device ran out of memory. The message says where, how much, on which device and
    dtype, which arrays were involved, and what to change.

    Attributes
    ----------
    what : str
    backend : str
    dtype : str or None
    shapes : dict of str to tuple
    requested_bytes : int or None
        The allocation that failed, where the library says.
    """

    def __init__(self, message: str, *, what: str, backend: str, dtype: str | None,
                 shapes: dict[str, tuple[int, ...]], requested_bytes: int | None) -> None:
        super().__init__(message)
        self.what, self.backend, self.dtype = what, backend, dtype
        self.shapes, self.requested_bytes = shapes, requested_bytes


def is_device_memory_error(exc: BaseException, backend: Any = None) -> bool:
    """Whether `exc` is an out-of-device-memory error of `backend`'s library or of any other
    registered backend's (each backend says which of its errors mean that). Imports no array
    library."""
    if isinstance(exc, DeviceMemoryError):
        return False
    if backend is not None and hasattr(backend, "is_memory_error") and \
            backend.is_memory_error(exc):
        return True
    from nnx.backends import backend_classes

    return any(cls.is_memory_error(exc) for cls in backend_classes())


def _backend_name(backend: Any) -> str | None:
    return backend if isinstance(backend, str) or backend is None else getattr(
        backend, "name", None)


def _itemsize(dtype: Any) -> int | None:
    name = str(getattr(dtype, "name", dtype)).removeprefix("torch.")
    try:
        return np.dtype(name).itemsize
    except TypeError:
        return None


def _dtype_name(dtype: Any) -> str | None:
    return None if dtype is None else str(getattr(dtype, "name", dtype)).removeprefix("torch.")


def format_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError(n)


def _device_words(backend: Any) -> str:
    name = _backend_name(backend) or str(backend)
    device = getattr(backend, "device", None)
    try:
        label = backend.device_name()
    except Exception:  # noqa: BLE001 - only a label: never hide the memory error behind another
        label = None
    parts = [str(part) for part in (label, device) if part is not None]
    where = ", ".join(dict.fromkeys(parts))
    return f"{name} ({where})" if where else name


def _requested_bytes(exc: BaseException) -> int | None:
    size = getattr(exc, "_size", None)  # cupy.cuda.memory.OutOfMemoryError(size, total, limit)
    if isinstance(size, int):
        return size
    match = re.search(r"Tried to allocate ([\d.]+) (B|KiB|MiB|GiB|TiB)", str(exc))
    if match:  # torch: "Tried to allocate 2.00 GiB"
        power = ("B", "KiB", "MiB", "GiB", "TiB").index(match.group(2))
        return int(float(match.group(1)) * 1024**power)
    return None


def device_memory_error(exc: BaseException, what: str,
                        shapes: Mapping[str, Any] | Iterable[tuple[str, Any]]
                        | Callable[[], Any],
                        backend: Any, dtype: Any = None) -> DeviceMemoryError | None:
    """Turn CuPy's or torch's out-of-memory error into a :class:`DeviceMemoryError` that says
    what to change; None for any other exception (re-raise it as it is).

    Use as ``raise err from exc`` so that the library's own message stays in the chain.

    Parameters
    ----------
    exc : BaseException
    what : str
        Where it happened, e.g. ``'Sequential.fit'``.
    shapes : mapping of str to tuple, or pairs, or a function returning either
        The arrays involved, e.g. ``{'X': X.shape, 'layers[0] output': (n, 4096)}``.
    backend : Backend or str
    dtype : dtype or str, optional
    """
    if not is_device_memory_error(exc, None if isinstance(backend, str) else backend):
        return None
    if callable(shapes):
        shapes = shapes()
    pairs = shapes.items() if isinstance(shapes, Mapping) else shapes
    shapes = {str(name): tuple(int(d) for d in shape) for name, shape in pairs}
    dtype_name = _dtype_name(dtype)
    itemsize = _itemsize(dtype_name) if dtype_name else None
    requested = _requested_bytes(exc)

    allocating = f" allocating {format_bytes(requested)}" if requested is not None else ""
    held = getattr(exc, "_total", None)
    if isinstance(held, int) and held > 0:
        allocating += f" (the memory pool already held {format_bytes(held)})"
    sizes = []
    for name, shape in shapes.items():
        size = f" = {format_bytes(math.prod(shape) * itemsize)}" if itemsize else ""
        sizes.append(f"{name} {shape}{size}")
    arrays = f" Arrays involved{f' ({dtype_name})' if dtype_name else ''}: " + (
        "; ".join(sizes) + "." if sizes else "none recorded.")
    fixes = ["pass a smaller batch_size= (it bounds every per-batch array)"]
    if dtype_name == "float64":
        fixes.append("use dtype='float32' (half the memory of float64)")
    fixes.append("use fewer or smaller layers")
    fixes.append("free other device arrays (and, on CuPy, "
                 "cupy.get_default_memory_pool().free_all_blocks())")
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    message = (f"{what}: the {_device_words(backend)} device ran out of memory{allocating}."
               f"{arrays} To fit: {'; '.join(fixes)}. [{type(exc).__name__}: {first_line}]")
    return DeviceMemoryError(message, what=what, backend=_backend_name(backend) or str(backend),
                             dtype=dtype_name, shapes=shapes, requested_bytes=requested)


@contextlib.contextmanager
def translate_memory_errors(what: str, shapes: Any, backend: Any, dtype: Any = None):
    """Inside the block, CuPy's and torch's out-of-memory errors become
    :class:`DeviceMemoryError` (see :func:`device_memory_error`); others pass unchanged.

    `shapes` may be a function, called only if memory runs out.
    """
    try:
        yield
    except Exception as exc:
        err = device_memory_error(exc, what, shapes, backend, dtype)
        if err is None:
            raise
        raise err from exc
