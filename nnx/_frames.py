"""Tables and labels at the data edge: DataFrames' column names, and class labels of any kind.

DataFrames (pandas, polars, or anything with the dataframe interchange protocol) are read
without importing their library: a frame has ``columns`` and ``to_numpy()``, or
``__dataframe__()``. Their column names become the model's ``feature_names`` at the first fit;
later calls find the columns by name (reordered columns are put back in order; missing or
unknown ones are refused by name), as the nnx command does with CSV headers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nnx.errors import InvalidDataError


def is_frame(data: Any) -> bool:
    """Whether `data` is a DataFrame (not an array, not a Series)."""
    if hasattr(data, "__array_namespace__"):
        return False
    columns = getattr(data, "columns", None)
    if columns is not None and callable(getattr(data, "to_numpy", None)):
        return getattr(data, "ndim", 2) == 2
    return callable(getattr(data, "__dataframe__", None))


def frame_columns(frame: Any) -> list[str]:
    if getattr(frame, "columns", None) is not None:
        return [str(c) for c in list(frame.columns)]
    return [str(c) for c in frame.__dataframe__().column_names()]


def frame_to_numpy(frame: Any, names: list[str], where: str, name: str) -> np.ndarray:
    """The frame's columns `names`, in that order, as one 2-D NumPy array."""
    if callable(getattr(frame, "to_numpy", None)) and getattr(frame, "columns", None) is not None:
        # pandas and polars: one conversion of the whole frame, then the columns by position.
        columns = [str(c) for c in list(frame.columns)]
        if columns == names:
            return np.asarray(frame.to_numpy())
        order = [columns.index(n) for n in names]
        return np.asarray(frame.to_numpy())[:, order]
    # Only the interchange protocol: pandas reads it (nnx does not depend on pandas).
    try:
        from pandas.api.interchange import from_dataframe
    except ImportError:
        raise InvalidDataError(f"{where}: {name} is a {type(frame).__name__}, which nnx reads "
                               "through pandas (not installed); convert it with to_numpy() "
                               "or install pandas.") from None
    return frame_to_numpy(from_dataframe(frame), names, where, name)


def columns_in_order(frame: Any, expected: list[str] | None, where: str,
                     name: str = "X") -> tuple[np.ndarray, list[str]]:
    """The frame as an array whose columns follow `expected` (the model's feature names; None:
    the frame's own order), and the names it has."""
    columns = frame_columns(frame)
    if len(set(columns)) != len(columns):
        dupes = sorted({c for c in columns if columns.count(c) > 1})
        raise InvalidDataError(f"{where}: {name} has duplicate column names {dupes}; each "
                               "feature needs its own name.")
    if expected is None:
        return frame_to_numpy(frame, columns, where, name), columns
    missing = [c for c in expected if c not in columns]
    unknown = [c for c in columns if c not in expected]
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing {missing}")
        if unknown:
            parts.append(f"not seen at fit {unknown}")
        raise InvalidDataError(f"{where}: {name}'s columns do not match the features the "
                               f"model was trained on ({expected}): " + "; ".join(parts) + ".")
    return frame_to_numpy(frame, expected, where, name), columns


# -- class labels ---------------------------------------------------------------------------
def label_array(y: Any) -> np.ndarray | None:
    """`y` as a 1-D NumPy array of labels (from a list, NumPy, a Series or any backend's
    array: labels are few, and every backend must read them alike), None when it is not 1-D
    labels (the shape checks then say so)."""
    if hasattr(y, "__array_namespace__") and not isinstance(y, np.ndarray):
        from nnx.backends import to_numpy

        try:
            y = to_numpy(y)
        except Exception:  # noqa: BLE001 - e.g. torch's meta device: the data edge says so
            return None
    elif callable(getattr(y, "to_numpy", None)):
        y = y.to_numpy()
    try:
        array = np.asarray(y)
    except (TypeError, ValueError):
        return None
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    return array if array.ndim == 1 else None


def are_positions(classes: list[Any]) -> bool:
    """Whether `classes` are 0 .. K-1 themselves (integers, not bools)."""
    return all(type(c) is int for c in classes) and classes == list(range(len(classes)))


def is_code_range(array: np.ndarray, k: int) -> bool:
    """Whether `array` holds integers (or integral floats, or bools) in 0 .. k-1."""
    if array.dtype.kind == "b":
        return True
    if array.dtype.kind not in "iuf" or array.size == 0:
        return False
    with np.errstate(invalid="ignore"):
        if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            return False
        return bool(np.all(array == np.round(array)) and array.min() >= 0 and array.max() < k)


def learn_classes(array: np.ndarray, k: int, where: str, name: str) -> list[Any] | None:
    """The classes labels other than 0 .. k-1 stand for (sorted, as ``np.unique``), when there
    are exactly `k` of them; None when `array` holds the codes themselves."""
    if array.dtype.kind == "b" and k == 2:
        return [False, True]  # predict gives bools back
    if is_code_range(array, k):
        return None
    try:
        classes = np.unique(array)
    except TypeError:
        raise InvalidDataError(f"{where}: {name} mixes labels that cannot be sorted (e.g. "
                               "text and numbers); use one kind of label.") from None
    if classes.dtype.kind == "f" and not (np.all(np.isfinite(classes))
                                          and np.all(classes == np.round(classes))):
        return None  # NaN, inf or fractions are no labels: the numeric checks say so
    if len(classes) != k and classes.dtype.kind in "iuf":
        return None  # numbers that are not K classes: the range check names the culprits
    if len(classes) != k:
        shown = [_plain(c) for c in classes[:10]]
        raise InvalidDataError(
            f"{where}: {name} holds {len(classes)} different labels {shown}"
            f"{' ...' if len(classes) > 10 else ''} but the output layer stands for {k} "
            f"classes; set model.classes to the {k} labels in the order of the outputs, or "
            f"use labels 0 .. {k - 1}.")
    return [_plain(c) for c in classes]


def encode_labels(array: np.ndarray, classes: list[Any], where: str, name: str) -> np.ndarray:
    """Labels as their positions in `classes`; a label not among them is refused by name."""
    lookup = {c: i for i, c in enumerate(classes)}
    codes = np.empty(array.shape[0], dtype=np.int64)
    unknown = []
    for i, value in enumerate(array.tolist()):
        code = lookup.get(value)
        if code is None:
            unknown.append(value)
            if len(unknown) >= 5:
                break
        else:
            codes[i] = code
    if unknown:
        raise InvalidDataError(f"{where}: {name} holds labels the model does not know: "
                               f"{unknown}; its classes are {classes}.")
    return codes


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value
