"""Readers of ``.npy`` and ``.zarr`` files as dask arrays, one row block per task.

Each task opens the file itself and reads only its rows: nothing is read, copied or hashed
when the graph is built. ``da.from_array(np.load(path, mmap_mode="r"))`` would instead hash
(and in dask 2026.x copy) the whole memmap before the first task runs (dask #11850). Here
``from_array`` receives a small lazy object (path, shape, dtype; its ``__getitem__`` opens
the file) under a name made from the path, size and modification time, so dask never looks
inside it.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import dask.array as da
import numpy as np

from nnx._validation import check_int
from nnx.errors import InvalidDataError, InvalidParameterError, MissingDependencyError

# Rows per block when none is asked for: about this many bytes of data per task.
_BLOCK_BYTES = 64 << 20


class _NpyRows:
    """A ``.npy`` file's shape and dtype, read by rows: each ``__getitem__`` maps the file,
    copies the asked rows out and unmaps it, so that a task holds only its own block."""

    def __init__(self, path: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path, self.shape, self.dtype = path, shape, dtype
        self.ndim = len(shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        mapped = np.load(self.path, mmap_mode="r")
        try:
            return np.array(mapped[key])  # a copy: the map closes when `mapped` goes
        finally:
            del mapped


class _ZarrRows:
    """A zarr array opened read-only by each ``__getitem__`` (zarr reads only the chunks
    the rows touch)."""

    def __init__(self, path: str, component: str | None, shape: tuple[int, ...],
                 dtype: np.dtype) -> None:
        self.path, self.component, self.shape, self.dtype = path, component, shape, dtype
        self.ndim = len(shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(_open_zarr(self.path, self.component)[key])


def _open_zarr(path: str, component: str | None) -> Any:
    try:
        import zarr
    except ImportError:
        raise MissingDependencyError("nnx.dask.read_zarr needs zarr: pip install zarr") from None
    opened = zarr.open(path, mode="r")
    if component is not None:
        opened = opened[component]
    if not hasattr(opened, "shape"):
        raise InvalidDataError(f"nnx.dask.read_zarr: {path!r} is a zarr group, not an array; "
                               "name the array with component='...'.")
    return opened


def _name(kind: str, path: str, *parts: Any) -> str:
    """A graph name for the file as it is now (a rewritten file gets a new name)."""
    st = os.stat(path)
    text = repr((kind, os.path.realpath(path), st.st_size, st.st_mtime_ns, *parts))
    return f"nnx-{kind}-{hashlib.sha1(text.encode()).hexdigest()[:16]}"


def _row_chunks(shape: tuple[int, ...], itemsize: int, chunk_rows: Any, default: int | None,
                where: str) -> tuple[Any, ...]:
    rows = check_int(chunk_rows, "chunk_rows", where, low=1, allow_none=True)
    if rows is None:
        rows = default
    if rows is None:
        row_bytes = max(1, itemsize * int(np.prod(shape[1:], dtype=np.int64)))
        rows = max(1, _BLOCK_BYTES // row_bytes)
    return (min(rows, max(1, shape[0])),) + tuple(shape[1:])


def _check_path(path: Any, where: str) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidParameterError(f"{where}: path must be a str or os.PathLike; received "
                                    f"{path!r} ({type(path).__name__}).")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InvalidDataError(f"{where}: no such file or directory: {path!r}.")
    return path


def read_npy(path: Any, *, chunk_rows: int | None = None) -> da.Array:
    """A ``.npy`` file as a dask array chunked by rows, each block read by its own task.

    Parameters
    ----------
    path : str or os.PathLike
    chunk_rows : int, optional
        Rows per block (default: about 64 MiB of data per block).

    Returns
    -------
    dask.array.Array, shape as in the file, chunks ``(chunk_rows, *shape[1:])``
    """
    where = "nnx.dask.read_npy"
    path = _check_path(path, where)
    try:
        mapped = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as exc:
        raise InvalidDataError(f"{where}: {path!r} is not a .npy file ({exc}).") from None
    if not isinstance(mapped, np.memmap):
        raise InvalidDataError(f"{where}: {path!r} holds {type(mapped).__name__}, not one "
                               "array (.npz archives are not read by rows).")
    shape, dtype = tuple(mapped.shape), mapped.dtype
    del mapped
    if len(shape) == 0:
        raise InvalidDataError(f"{where}: {path!r} holds a 0-d array; expected rows.")
    chunks = _row_chunks(shape, dtype.itemsize, chunk_rows, None, where)
    source = _NpyRows(path, shape, dtype)
    return da.from_array(source, chunks=chunks, name=_name("npy", path, chunks),
                         asarray=False, lock=False, meta=np.empty((0,) * len(shape), dtype))


def read_zarr(path: Any, *, component: str | None = None,
              chunk_rows: int | None = None) -> da.Array:
    """A zarr array (a ``.zarr`` store) as a dask array chunked by rows.

    Parameters
    ----------
    path : str or os.PathLike
    component : str, optional
        The array's name inside a zarr group.
    chunk_rows : int, optional
        Rows per block (default: the store's own chunk rows, so each task reads whole
        zarr chunks).
    """
    where = "nnx.dask.read_zarr"
    path = _check_path(path, where)
    if component is not None and not isinstance(component, str):
        raise InvalidParameterError(f"{where}: component must be a str or None; received "
                                    f"{component!r}.")
    opened = _open_zarr(path, component)
    shape, dtype = tuple(opened.shape), np.dtype(opened.dtype)
    if len(shape) == 0:
        raise InvalidDataError(f"{where}: {path!r} holds a 0-d array; expected rows.")
    chunks = _row_chunks(shape, dtype.itemsize, chunk_rows, int(opened.chunks[0]), where)
    source = _ZarrRows(path, component, shape, dtype)
    return da.from_array(source, chunks=chunks,
                         name=_name("zarr", path, component, chunks),
                         asarray=False, lock=False, meta=np.empty((0,) * len(shape), dtype))


def read_array(path: Any, *, chunk_rows: int | None = None,
               component: str | None = None) -> da.Array:
    """:func:`read_npy` for a ``.npy`` file, :func:`read_zarr` for anything else (a zarr
    store: a ``.zarr`` directory)."""
    if isinstance(path, (str, os.PathLike)) and os.fspath(path).endswith(".npy"):
        if component is not None:
            raise InvalidParameterError("nnx.dask.read_array: component is for zarr stores; "
                                        f"received component={component!r} for a .npy file.")
        return read_npy(path, chunk_rows=chunk_rows)
    return read_zarr(path, component=component, chunk_rows=chunk_rows)
