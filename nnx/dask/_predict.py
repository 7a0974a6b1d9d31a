"""``predict``, ``predict_proba`` and ``evaluate`` on dask arrays, lazily, by row blocks.

The model enters the graph once, as a single key (``dask.delayed`` under an explicit name,
so it is never hashed); every block's task refers to that key. On a distributed cluster the
graph is pickled once, one worker materialises the model and the others fetch it from there:
the model travels once per worker, not once per task (a model inside each ``map_blocks``
task made a 60 MiB graph and ran at 0.34x in a prototype). The pickle is small: a
``Sequential`` drops its layers' caches when pickled.
"""

from __future__ import annotations

import uuid
from typing import Any

import array_api_compat
import dask
import dask.array as da
import numpy as np

from nnx._validation import check_bool, check_int
from nnx.backends import to_numpy
from nnx.errors import InvalidDataError, InvalidParameterError


def check_model(model: Any, where: str) -> Any:
    from nnx.model import Sequential

    if not isinstance(model, Sequential):
        raise InvalidParameterError(f"{where}: model must be an nnx.Sequential; received "
                                    f"{type(model).__name__}.")
    return model


def as_rows(X: Any, where: str, name: str = "X", n_in: int | None = None) -> da.Array:
    """`X` as a 2-D dask array chunked by rows only (columns in one block)."""
    if not isinstance(X, da.Array):
        raise InvalidDataError(f"{where}: {name} must be a dask array (dask.array.Array; "
                               "nnx.dask.read_npy reads one from a file); received "
                               f"{type(X).__name__}. For in-memory data use the model's own "
                               "methods.")
    if X.ndim != 2:
        raise InvalidDataError(f"{where}: {name} must be 2-D, shape (n_samples, n_features); "
                               f"received shape {X.shape}.")
    if any(np.isnan(c) for c in X.chunks[0]):
        raise InvalidDataError(f"{where}: {name} has unknown chunk sizes; call "
                               f"{name}.compute_chunk_sizes() first.")
    if n_in is not None and X.shape[1] != n_in:
        raise InvalidDataError(f"{where}: {name} has {X.shape[1]} features; the model "
                               f"expects {n_in}.")
    if len(X.chunks[1]) > 1:
        X = X.rechunk({1: -1})
    return X


def as_targets(y: Any, X: da.Array, where: str, name: str = "y") -> da.Array:
    """`y` as a dask array with the row blocks of `X` (in-memory targets are wrapped)."""
    if not isinstance(y, da.Array):
        try:
            y = np.asarray(y)
        except (TypeError, ValueError) as exc:
            raise InvalidDataError(f"{where}: {name} must be an array; could not convert "
                                   f"{type(y).__name__} ({exc}).") from None
    if y.ndim not in (1, 2) or y.shape[0] != X.shape[0]:
        raise InvalidDataError(f"{where}: {name} must have shape ({X.shape[0]},) or "
                               f"({X.shape[0]}, n_out) to match X; received shape {y.shape}.")
    if not isinstance(y, da.Array):
        y = da.from_array(y, chunks=(X.chunks[0],) + y.shape[1:])
    if y.chunks[0] != X.chunks[0] or (y.ndim == 2 and len(y.chunks[1]) > 1):
        y = y.rechunk((X.chunks[0],) + ((-1,) if y.ndim == 2 else ()))
    return y


def as_weights(sample_weight: Any, X: da.Array, where: str,
               name: str = "sample_weight") -> da.Array:
    """Sample weights as a 1-D dask array with the row blocks of `X` (their values are
    checked where the blocks are read)."""
    w = as_targets(sample_weight, X, where, name)
    if w.ndim == 2 and w.shape[1] == 1:
        w = w[:, 0]
    if w.ndim != 1:
        raise InvalidDataError(f"{where}: {name} must have shape ({X.shape[0]},), one "
                               f"weight per row; received shape {w.shape}.")
    return w


# Bytes of the widest layer's output per forward pass inside a block: with a few threads each
# holding a block and two or three such arrays, memory stays bounded by the blocks.
_PASS_BYTES = 16 << 20


def pass_rows(model: Any, batch_size: int | None) -> int:
    """Rows per forward pass inside a block: `batch_size`, or about 16 MiB of the widest
    layer's output (the model's own default of 2**24 elements is 64 MiB in float32, too much
    beside a block per thread)."""
    if batch_size is not None:
        return batch_size
    widest = max(max(layer.n_in, layer.n_out) for layer in model.layers)
    return max(1, _PASS_BYTES // (widest * np.dtype(model.dtype_name).itemsize))


def model_in_graph(model: Any) -> Any:
    """The model as one graph key (named, not hashed)."""
    return dask.delayed(model, name=f"nnx-model-{uuid.uuid4().hex}", traverse=False)


def _predict_block(block: Any, model: Any, proba: bool, batch_size: int | None) -> Any:
    out = (model.predict_proba(block, batch_size=batch_size) if proba
           else model.predict(block, batch_size=batch_size))
    # Blocks of the model's own array type (CuPy blocks for a CuPy model) stay on the
    # device; anything else comes back as NumPy, as the input blocks were.
    return out if model.backend.owns(block) else to_numpy(out)


def _lazy(model: Any, X: Any, proba: bool, batch_size: Any, where: str) -> da.Array:
    check_model(model, where)
    batch_size = pass_rows(model, check_int(batch_size, "batch_size", where, low=1,
                                            allow_none=True))
    X = as_rows(X, where, n_in=model.n_in)
    # The output's shape and dtype, from the model itself on one row of zeros.
    probe = _predict_block(np.zeros((1, model.n_in), dtype=model.dtype_name), model, proba,
                           None)
    probe = to_numpy(probe)
    kind = "proba" if proba else "predict"
    name = f"nnx-{kind}-{uuid.uuid4().hex}"
    meta = np.empty((0,) * probe.ndim, dtype=probe.dtype)
    if probe.ndim == 1:
        return da.map_blocks(_predict_block, X, model_in_graph(model), proba, batch_size,
                             drop_axis=1, dtype=probe.dtype, meta=meta, name=name)
    return da.map_blocks(_predict_block, X, model_in_graph(model), proba, batch_size,
                         chunks=(X.chunks[0], (probe.shape[1],)), dtype=probe.dtype,
                         meta=meta, name=name)


def predict(model: Any, X: Any, *, batch_size: int | None = None) -> da.Array:
    """``model.predict`` of every row of the dask array `X`, as a lazy dask array.

    Parameters
    ----------
    model : nnx.Sequential
    X : dask.array.Array, shape (n_samples, n_in)
        Chunked by rows (column blocks are joined first).
    batch_size : int, optional
        Rows per forward pass inside a block (default: about 16 MiB of the widest layer's
        output).

    Returns
    -------
    dask.array.Array, shape (n_samples,) or (n_samples, n_out)
        With the row blocks of `X`; NumPy blocks unless the blocks are the model's own
        arrays (CuPy blocks for a CuPy model).
    """
    return _lazy(model, X, False, batch_size, "nnx.dask.predict")


def predict_proba(model: Any, X: Any, *, batch_size: int | None = None) -> da.Array:
    """``model.predict_proba`` of every row of `X`, shape ``(n_samples, n_out)``, lazily."""
    return _lazy(model, X, True, batch_size, "nnx.dask.predict_proba")


def _evaluate_block(i: int, Xb: Any, yb: Any, wb: Any, model: Any, batch_size: int | None
                    ) -> np.ndarray:
    """``[m, m * loss, m * accuracy]`` of row block `i`, `m` its rows or its weights' sum (a
    block whose weights are all 0 adds nothing; other bad weights are refused by
    ``model.evaluate``)."""
    if wb is not None:
        xp = array_api_compat.array_namespace(wb)
        if not bool(xp.any(wb != 0)):
            return np.zeros(3)
    try:
        figures = model.evaluate(Xb, yb, batch_size=batch_size, sample_weight=wb)
    except InvalidDataError as exc:
        raise InvalidDataError(f"nnx.dask.evaluate (row block {i}): {exc}") from None
    m = Xb.shape[0] if wb is None else float(xp.sum(xp.astype(wb, xp.float64)))
    # Every block's loss holds the same L2 term: the weighted mean of the blocks' losses is
    # the data set's loss with that term added once.
    return np.array([m, m * figures["loss"], m * figures.get("accuracy", 0.0)])


def _combine(parts: list[np.ndarray], classifier: bool, weighted: bool) -> dict[str, float]:
    total = np.sum(np.stack(parts), axis=0)
    n = total[0]
    if not n > 0:
        raise InvalidDataError("nnx.dask.evaluate: sample_weight is 0 for every sample; at "
                               "least one weight must be > 0.")
    out = {"loss": float(total[1] / n)}
    if classifier:
        # Unweighted, each block's accuracy is an exact count over its rows: round off the
        # division.
        out["accuracy"] = float((total[2] if weighted else np.round(total[2])) / n)
    return out


def evaluate(model: Any, X: Any, y: Any, *, sample_weight: Any = None,
             batch_size: int | None = None, compute: bool = True) -> Any:
    """``model.evaluate`` over the row blocks of `X` and `y`: the objective (mean data loss
    plus the L2 term) and, for classifiers, the fraction correct; with `sample_weight`, the
    weighted mean loss and the weighted fraction correct.

    Parameters
    ----------
    model : nnx.Sequential
    X : dask.array.Array, shape (n_samples, n_in)
    y : dask.array.Array or array, shape (n_samples,) or (n_samples, n_out)
        Rechunked to the row blocks of `X`.
    sample_weight : dask.array.Array or array, shape (n_samples,), optional
        Finite numbers >= 0, not all 0 (checked block by block, as ``model.evaluate``).
    batch_size : int, optional
    compute : bool
        False: return a ``dask.delayed`` of the dict instead of computing it.

    Returns
    -------
    dict
        ``{'loss': float, 'accuracy': float}`` (accuracy for classifiers).
    """
    where = "nnx.dask.evaluate"
    check_model(model, where)
    batch_size = pass_rows(model, check_int(batch_size, "batch_size", where, low=1,
                                            allow_none=True))
    compute = check_bool(compute, "compute", where)
    X = as_rows(X, where, n_in=model.n_in)
    y = as_targets(y, X, where)
    if X.shape[0] == 0:
        raise InvalidDataError(f"{where}: X has no rows.")
    w = None if sample_weight is None else as_weights(sample_weight, X, where)
    held = model_in_graph(model)
    ws = [None] * X.numblocks[0] if w is None else w.to_delayed().ravel()
    parts = [dask.delayed(_evaluate_block, pure=True)(i, xb, yb, wb, held, batch_size)
             for i, (xb, yb, wb) in enumerate(zip(X.to_delayed().ravel(),
                                                  y.to_delayed().ravel(), ws))]
    result = dask.delayed(_combine, pure=True)(parts, model.head.classifier, w is not None)
    return result.compute() if compute else result
