"""The data edge: user data checked, cast to the model's dtype and moved to its device once.

Arrays of the model's own backend stay where they are; anything else (lists, NumPy, another
library's arrays) goes through the host. Finiteness is checked *after* the cast, in the dtype
the model computes in: 1e39 is finite in float64 and inf in float32.
"""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np

from nnx.backends import to_numpy
from nnx.errors import InvalidDataError


def host_or_device(backend: Any, data: Any, name: str, where: str) -> Any:
    """`data` as an array: this backend's arrays as they are, anything else as NumPy."""
    if isinstance(data, np.ma.MaskedArray):
        raise InvalidDataError(
            f"{where}: {name} is a masked array; nnx does not treat masked entries as missing. "
            f"Drop the masked rows, or fill them ({name}.filled(value)), first.")
    if backend.owns(data):
        return data
    if array_api_compat.is_array_api_obj(data):
        try:
            data = to_numpy(data)
        except Exception as exc:  # noqa: BLE001 - e.g. a torch 'meta' tensor has no data
            raise InvalidDataError(f"{where}: {name} cannot be read as numbers "
                                   f"({type(exc).__name__}: {exc}).") from None
    try:
        array = np.asarray(data)
    except (ValueError, TypeError) as exc:
        raise InvalidDataError(f"{where}: {name} must be a numeric array; could not convert "
                               f"{type(data).__name__} ({exc}).") from None
    if array.dtype.kind not in "biuf":
        raise InvalidDataError(
            f"{where}: {name} must be numeric (bool, integer or real floating); received "
            f"dtype {array.dtype}. Convert strings or objects to numbers first.")
    return array


def _all_finite(array: Any) -> bool:
    xp = array_api_compat.array_namespace(array)
    if not xp.isdtype(array.dtype, "real floating"):
        return True
    # A finite sum means every element is finite (a NaN or inf makes the sum NaN or inf), and
    # a sum reads the array once without writing a boolean array of its size (scikit-learn's
    # check does the same). Only a sum that overflows, or a non-finite one, needs the exact
    # test, which also tells those two apart.
    with np.errstate(over="ignore", invalid="ignore"):
        if bool(xp.isfinite(xp.sum(array))):
            return True
    return bool(xp.all(xp.isfinite(array)))


def check_finite(array: Any, name: str, where: str) -> None:
    if not _all_finite(array):
        raise InvalidDataError(f"{where}: {name} contains NaN or inf; remove or impute those "
                               "values first.")


def _may_overflow(source: Any, dtype_name: str) -> bool:
    """Whether casting finite values of dtype `source` to the float `dtype_name` can make
    them inf: float64 to float32 can; float32 to float64 or integers to float32 cannot. An
    unknown dtype may."""
    try:
        # (torch.float32, array_api_strict.float32: the name after the library's)
        kind = np.dtype(str(getattr(source, "name", source)).rsplit(".", 1)[-1])
    except TypeError:
        return True
    if kind.kind == "b":
        return False
    largest = np.iinfo(kind).max if kind.kind in "iu" else (
        np.finfo(kind).max if kind.kind == "f" else np.inf)
    return float(largest) > float(np.finfo(dtype_name).max)


def to_model(backend: Any, array: Any, dtype: Any, dtype_name: str, name: str,
             where: str) -> Any:
    """`array` (finite, checked) cast to the model's dtype on its device, checked again."""
    may_overflow = _may_overflow(array.dtype, dtype_name)
    # NumPy (and array-api-strict, which computes with it) warns when a cast overflows: the
    # check below says so clearly instead.
    with np.errstate(over="ignore"):
        if isinstance(array, np.ndarray) and may_overflow:
            # Host data that may overflow is cast and checked on the host, then moved (one
            # device operation fewer, and half the bytes moved for float64 to float32).
            host = array.astype(dtype_name, copy=False)
            if not _all_finite(host):
                _too_large(name, dtype_name, where)
            return backend.asarray(host, dtype=dtype)
        moved = backend.asarray(array, dtype=dtype)
    # (No cast, the same array, or one that cannot overflow: the caller's check stands.)
    if moved is not array and may_overflow and not _all_finite(moved):
        _too_large(name, dtype_name, where)
    return moved


def _too_large(name: str, dtype_name: str, where: str) -> None:
    raise InvalidDataError(
        f"{where}: {name} holds values too large for {dtype_name} (they become inf); "
        f"the largest magnitude {dtype_name} holds is {float(np.finfo(dtype_name).max):.4g}. "
        "Scale the data, or use dtype='float64'.")


def check_X(backend: Any, dtype: Any, dtype_name: str, X: Any, n_in: int, first_layer: Any,
            where: str, name: str = "X") -> Any:
    """`X`, shape ``(n_samples, n_in)``, on the model's device in its dtype."""
    array = host_or_device(backend, X, name, where)
    xp = array_api_compat.array_namespace(array)
    if not xp.isdtype(array.dtype, ("bool", "integral", "real floating")):
        raise InvalidDataError(f"{where}: {name} must be numeric; received dtype "
                               f"{array.dtype}.")
    if array.ndim != 2:
        raise InvalidDataError(f"{where}: {name} must be 2-D, shape (n_samples, n_features); "
                               f"received {array.ndim}-D shape {tuple(array.shape)}.")
    if array.shape[0] == 0:
        raise InvalidDataError(f"{where}: {name} is empty (0 samples); expected at least one "
                               "row.")
    if array.shape[1] != n_in:
        raise InvalidDataError(f"{where}: {name} has {array.shape[1]} features; the model "
                               f"expects {n_in} (layers[0] is {first_layer!r}).")
    check_finite(array, name, where)
    return to_model(backend, array, dtype, dtype_name, name, where)


def check_y(backend: Any, dtype: Any, dtype_name: str, head: Any, y: Any, n: int,
            output_layer: Any, where: str, name: str = "y") -> tuple[Any, Any]:
    """Targets checked against `head` and encoded: ``(Y, labels)`` on the device."""
    array = host_or_device(backend, y, name, where)
    xp_in = array_api_compat.array_namespace(array)
    k = head.n_out
    if not xp_in.isdtype(array.dtype, ("bool", "integral", "real floating")):
        raise InvalidDataError(f"{where}: {name} must be numeric; received dtype "
                               f"{array.dtype}.")
    if array.ndim == 0 or array.ndim > 2:
        raise InvalidDataError(f"{where}: {name} must be 1-D or 2-D; received shape "
                               f"{tuple(array.shape)}.")
    if array.shape[0] != n:
        raise InvalidDataError(f"{where}: X has {n} samples but {name} has {array.shape[0]}; "
                               "they must have the same length.")
    check_finite(array, name, where)
    multiclass = head.name == "multiclass"
    if array.ndim == 2 and array.shape[1] == 1 and (k == 1 or multiclass):
        array = xp_in.reshape(array, (n,))
    want, expected = head.target_shape(n)
    if tuple(array.shape) not in {want, (n, k)} or (multiclass and array.ndim != 1):
        hint = ""
        if multiclass and array.ndim == 2 and array.shape[1] == k:
            hint = f" For one-hot rows, pass {name}.argmax(axis=1)."
        raise InvalidDataError(f"{where}: {name} must have shape {expected}; received shape "
                               f"{tuple(array.shape)}.{hint}")
    head.check_labels(xp_in, array, where, name, repr(output_layer))
    if not head.classifier:
        array = to_model(backend, array, dtype, dtype_name, name, where)
    return head.encode(backend, dtype, array, n)


def check_weight(backend: Any, dtype: Any, dtype_name: str, weight: Any, n: int, where: str,
                 name: str = "sample_weight") -> Any:
    """Sample weights: ``(n_samples,)`` (or ``(n_samples, 1)``) finite numbers >= 0, not all
    0, as a column ``(n_samples, 1)`` on the model's device in its dtype."""
    array = host_or_device(backend, weight, name, where)
    xp = array_api_compat.array_namespace(array)
    if array.ndim == 2 and array.shape[1] == 1:
        array = xp.reshape(array, (array.shape[0],))
    if array.ndim != 1:
        raise InvalidDataError(f"{where}: {name} must have shape (n_samples,), one weight per "
                               f"row; received shape {tuple(array.shape)}.")
    if array.shape[0] != n:
        raise InvalidDataError(f"{where}: X has {n} samples but {name} has {array.shape[0]}; "
                               "they must have the same length.")
    check_finite(array, name, where)
    moved = to_model(backend, array, dtype, dtype_name, name, where)
    mxp = backend.xp
    if bool(mxp.any(moved < 0)):
        raise InvalidDataError(f"{where}: {name} must be >= 0; received a negative weight "
                               f"(smallest {float(mxp.min(moved)):g}).")
    if not bool(mxp.any(moved > 0)):
        raise InvalidDataError(f"{where}: {name} is 0 for every sample; at least one weight "
                               "must be > 0.")
    return mxp.reshape(moved, (n, 1))
