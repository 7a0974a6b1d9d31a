"""The tutorials' data sets, made on the host from a seed, plus splitting, one-hot and CSV.

Everything here returns NumPy arrays (features float64, labels int64); a model moves them to
its backend once, in ``fit``/``predict``. One seed gives the same data on every backend.
"""

from __future__ import annotations

import csv
import io
import os
from typing import Any

import numpy as np

from nnx.errors import InvalidDataError, InvalidParameterError, MissingDependencyError


def _rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
                             or seed < 0):
        raise InvalidParameterError("seed must be an integer >= 0, a numpy.random.Generator "
                                    f"or None; received seed={seed!r}.")
    return np.random.default_rng(seed)


def _count(n: Any, name: str, minimum: int = 1) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < minimum:
        raise InvalidParameterError(f"{name} must be an integer >= {minimum}; received "
                                    f"{name}={n!r}.")
    return int(n)


def _noise(noise: Any) -> float:
    if not isinstance(noise, (int, float, np.floating)) or not np.isfinite(noise) or noise < 0:
        raise InvalidParameterError(f"noise must be a finite number >= 0; received "
                                    f"noise={noise!r}.")
    return float(noise)


def make_moons(n: int = 200, noise: float = 0.2, seed: int | None = 0):
    """Two interleaving half circles (the tutorial's data: 200 points, noise 0.2).

    Returns
    -------
    X : ndarray, shape (n, 2), float64
    y : ndarray, shape (n,), int64 in {0, 1}
    """
    n, noise, rng = _count(n, "n", 2), _noise(noise), _rng(seed)
    n_out = n // 2
    n_in = n - n_out
    t_out = np.linspace(0, np.pi, n_out)
    t_in = np.linspace(0, np.pi, n_in)
    X = np.concatenate([
        np.stack([np.cos(t_out), np.sin(t_out)], axis=1),
        np.stack([1 - np.cos(t_in), 0.5 - np.sin(t_in)], axis=1),
    ])
    y = np.concatenate([np.zeros(n_out, np.int64), np.ones(n_in, np.int64)])
    order = rng.permutation(n)
    X, y = X[order], y[order]
    return X + rng.normal(scale=noise, size=X.shape) if noise else X, y


def make_circles(n: int = 200, noise: float = 0.1, factor: float = 0.5, seed: int | None = 0):
    """A small circle (label 1) inside a large one (label 0)."""
    n, noise, rng = _count(n, "n", 2), _noise(noise), _rng(seed)
    if not 0 < factor < 1:
        raise InvalidParameterError(f"factor must be in (0, 1); received factor={factor!r}.")
    n_out = n // 2
    n_in = n - n_out
    t_out = np.linspace(0, 2 * np.pi, n_out, endpoint=False)
    t_in = np.linspace(0, 2 * np.pi, n_in, endpoint=False)
    X = np.concatenate([
        np.stack([np.cos(t_out), np.sin(t_out)], axis=1),
        factor * np.stack([np.cos(t_in), np.sin(t_in)], axis=1),
    ])
    y = np.concatenate([np.zeros(n_out, np.int64), np.ones(n_in, np.int64)])
    order = rng.permutation(n)
    X, y = X[order], y[order]
    return X + rng.normal(scale=noise, size=X.shape) if noise else X, y


def make_spiral(n_per_class: int = 100, n_classes: int = 3, noise: float = 0.2,
                seed: int | None = 0):
    """The CS231n spiral: `n_classes` arms of `n_per_class` points each."""
    n_per_class = _count(n_per_class, "n_per_class")
    n_classes = _count(n_classes, "n_classes", 2)
    noise, rng = _noise(noise), _rng(seed)
    X = np.zeros((n_per_class * n_classes, 2))
    y = np.zeros(n_per_class * n_classes, np.int64)
    for k in range(n_classes):
        rows = slice(n_per_class * k, n_per_class * (k + 1))
        radius = np.linspace(0.0, 1, n_per_class)
        theta = (np.linspace(k * 4, (k + 1) * 4, n_per_class)
                 + rng.standard_normal(n_per_class) * noise)
        X[rows] = np.stack([radius * np.sin(theta), radius * np.cos(theta)], axis=1)
        y[rows] = k
    return X, y


def xor():
    """The XOR truth table: 4 points, label 1 where exactly one input is 1."""
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64)
    return X, np.array([0, 1, 1, 0], dtype=np.int64)


def or_gate():
    """The OR truth table from the perceptron tutorial."""
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64)
    return X, np.array([0, 1, 1, 1], dtype=np.int64)


#: Column names of :func:`virus`'s features, in order.
# The columns of the case study's table. The captured page lost the table itself; its text
# names "loss of smell" as the most influential feature and "weight loss" as the least, which
# is what columns 0 and 1 of the data are (tests/test_model.py trains on it and checks).
VIRUS_SYMPTOMS = ("loss of smell", "weight loss", "runny nose", "body pain")


def virus():
    """The perceptron tutorial's case study: eight people, four yes/no symptoms, tested
    positive (1) or negative (0)."""
    X = np.array([[1, 0, 0, 1], [1, 0, 0, 0], [0, 0, 1, 1], [0, 1, 0, 0],
                  [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 1], [0, 0, 1, 0]], dtype=np.float64)
    return X, np.array([1, 1, 0, 0, 1, 1, 0, 0], dtype=np.int64)


def one_hot(y: Any, n_classes: int | None = None) -> np.ndarray:
    """One-hot rows (float64) for integer labels `y`, checked to lie in ``[0, n_classes)``."""
    labels = np.asarray(y)
    if labels.ndim != 1:
        raise InvalidDataError(f"one_hot: y must be 1-D; received shape {labels.shape}.")
    if labels.size and (not np.all(np.isfinite(labels)) if labels.dtype.kind == "f" else False):
        raise InvalidDataError("one_hot: y contains NaN or inf.")
    if labels.size and labels.dtype.kind not in "iub" and not np.all(labels == np.round(labels)):
        raise InvalidDataError("one_hot: y must hold integer labels; received non-integer values.")
    labels = labels.astype(np.int64)
    k = int(labels.max()) + 1 if n_classes is None and labels.size else (n_classes or 0)
    if labels.size and (labels.min() < 0 or labels.max() >= k):
        raise InvalidDataError(
            f"one_hot: labels must be in [0, {k}); received min {labels.min()}, max {labels.max()}."
        )
    out = np.zeros((labels.size, k))
    out[np.arange(labels.size), labels] = 1.0
    return out


def train_test_split(X: Any, y: Any, test_size: float = 0.25, seed: int | None = 0,
                     stratify: bool = False):
    """Shuffle with `seed` and split into ``X_train, X_test, y_train, y_test``.

    With ``stratify=True`` each class keeps its share in both parts.
    """
    X, y = np.asarray(X), np.asarray(y)
    if len(X) != len(y):
        raise InvalidDataError(f"train_test_split: X has {len(X)} rows but y has {len(y)}.")
    if not 0 < test_size < 1:
        raise InvalidParameterError(f"test_size must be in (0, 1); received "
                                    f"test_size={test_size!r}.")
    rng = _rng(seed)
    if stratify:
        test = []
        for label in np.unique(y):
            rows = rng.permutation(np.flatnonzero(y == label))
            test.extend(rows[: int(round(test_size * len(rows)))])
        test_mask = np.zeros(len(y), bool)
        test_mask[np.asarray(test, dtype=np.int64)] = True
        order = rng.permutation(len(y))
        train_idx, test_idx = order[~test_mask[order]], order[test_mask[order]]
    else:
        order = rng.permutation(len(y))
        n_test = max(1, int(round(test_size * len(y))))
        test_idx, train_idx = order[:n_test], order[n_test:]
    if len(train_idx) == 0 or len(test_idx) == 0:
        raise InvalidDataError(f"train_test_split: {len(y)} samples are too few for "
                         f"test_size={test_size}.")
    return X[train_idx], X[test_idx], y[train_idx], y[test_idx]


_MISSING = frozenset({"", "na", "n/a", "null", "none", "?", "-"})  # "nan": not finite
_DELIMITERS = ",;\t|"


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _read_text(path: str) -> str:
    """The file as text: UTF-8, a byte-order mark dropped; the line of a bad byte named."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise InvalidDataError(f"{path}: cannot read the CSV file ({exc.strerror}).") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InvalidDataError(
            f"{path}, line {line}: the file is not UTF-8 text (byte 0x{data[exc.start]:02x} "
            f"cannot be decoded); save it as UTF-8 (e.g. iconv -f latin1 -t utf-8).") from None


def _delimiter(text: str) -> str:
    """``,`` unless the header row holds no comma and another delimiter (``;``, tab, ``|``)
    splits the first lines into the same number of columns (csv.Sniffer)."""
    first = text.split("\n", 1)[0]
    if "," in first:
        return ","
    try:
        found = csv.Sniffer().sniff("\n".join(text.splitlines()[:20]),
                                    delimiters=_DELIMITERS).delimiter
    except csv.Error:
        return ","
    return found if found in _DELIMITERS else ","


def load_csv(path: str | os.PathLike, target: str | None = None):
    """Read a numeric CSV file with a header row.

    The file is UTF-8 (a byte-order mark is dropped); its cells are separated by commas, or
    by semicolons, tabs or ``|`` where the header row holds no comma. A first row of numbers
    is refused: it is data, not a header.

    Parameters
    ----------
    target : str, optional
        The column holding the target; without it every column is a feature and ``y`` is None.

    Returns
    -------
    X : ndarray, shape (n_rows, n_features), float64
    y : ndarray, shape (n_rows,) or None
    features : list of str

    Raises
    ------
    InvalidDataError
        Naming the file, and the line and column where it applies.
    """
    path = os.fspath(path)
    text = _read_text(path)
    delimiter = _delimiter(text)
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
    except csv.Error as exc:
        raise InvalidDataError(f"{path}: not a readable CSV file ({exc}).") from None
    numbered = [(i, row) for i, row in enumerate(rows, start=1)
                if any(cell.strip() for cell in row)]
    if len(numbered) < 2:
        raise InvalidDataError(f"{path}: expected a header row and at least one data row.")
    header_line, header_row = numbered[0]
    header = [name.strip() for name in header_row]
    if all(_is_number(name) for name in header):
        shown = delimiter.join(header)
        raise InvalidDataError(
            f"{path}, line {header_line}: the first row ({shown[:60]!r}) looks like data, not a "
            "header; nnx reads CSV files whose first row names the columns: add a header row "
            f"(e.g. {delimiter.join(f'x{j}' for j in range(min(len(header), 3)))}).")
    if target is not None and target not in header:
        raise InvalidDataError(f"{path}: no column named {target!r}; the columns are {header}.")
    values = np.empty((len(numbered) - 1, len(header)))
    t = None if target is None else header.index(target)
    labels: list[str] = []
    for r, (i, row) in enumerate(numbered[1:]):
        if len(row) != len(header):
            raise InvalidDataError(f"{path}, line {i}: {len(row)} cells; the header has "
                                   f"{len(header)}.")
        for j, cell in enumerate(row):
            where = f"{path}, line {i}, column {header[j]!r}"
            if j == t:
                if not cell.strip():
                    raise InvalidDataError(f"{where}: the target is missing; every row needs "
                                           "one.")
                labels.append(cell.strip())
                values[r, j] = 0.0
                continue
            if cell.strip().lower() in _MISSING:
                raise InvalidDataError(f"{where}: {cell!r} is a missing value; nnx needs a "
                                       "number in every cell: fill or drop missing values "
                                       "first.")
            try:
                value = float(cell)
            except ValueError:
                hint = (" (a decimal comma? write 1.5, not 1,5)"
                        if delimiter != "," and _is_number(cell.replace(",", ".")) else
                        " (encode categories as numbers first)")
                raise InvalidDataError(
                    f"{where}: {cell!r} is not a number; nnx reads numeric CSV files "
                    f"only{hint}.") from None
            if not np.isfinite(value):
                raise InvalidDataError(f"{where}: {cell.strip()!r} is not a finite number; "
                                       "fill or drop missing values first.")
            values[r, j] = value
    if target is None:
        return values, None, header
    features = [name for j, name in enumerate(header) if j != t]
    # The target as numbers where every cell is one, else as the text of its labels.
    if all(_is_number(label) for label in labels):
        y = np.array([float(label) for label in labels])
        if not np.all(np.isfinite(y)):
            raise InvalidDataError(f"{path}: the target column {target!r} holds a value that "
                                   "is not finite.")
    else:
        y = np.array(labels)
    return np.delete(values, t, axis=1), y, features


def load_sklearn(name: str, scale: bool = True):
    """``digits``, ``iris`` or ``breast_cancer`` from scikit-learn (an optional extra).

    Returns ``X`` (float64; with `scale`, each feature at zero mean and unit variance) and
    ``y``.
    """
    loaders = {"digits": "load_digits", "iris": "load_iris", "breast_cancer": "load_breast_cancer"}
    if name not in loaders:
        known = ", ".join(loaders)
        raise InvalidParameterError(f"data set {name!r} is unknown; choose one of: {known}.")
    try:
        import sklearn.datasets
    except ImportError:
        raise MissingDependencyError(
            f"the {name!r} data set comes with scikit-learn; install it with "
            "pip install 'nnx-arrays[datasets]'."
        ) from None
    bunch = getattr(sklearn.datasets, loaders[name])()
    X = bunch.data.astype(np.float64)
    if scale:
        std = X.std(axis=0)
        X = (X - X.mean(axis=0)) / np.where(std > 0, std, 1.0)
    return X, bunch.target.astype(np.int64)


BUILTIN = {
    "moons": make_moons, "circles": make_circles, "spiral": make_spiral,
    "xor": xor, "or": or_gate, "virus": virus,
}
SKLEARN = ("digits", "iris", "breast_cancer")


def load(name: str, seed: int | None = 0, **kwargs: Any):
    """A data set by name: a built-in one (``moons``, ``circles``, ``spiral``, ``xor``, ``or``,
    ``virus``) or scikit-learn's ``digits``, ``iris``, ``breast_cancer``."""
    if name in SKLEARN:
        return load_sklearn(name, **kwargs)
    if name not in BUILTIN:
        raise InvalidDataError(
            f"data set {name!r} is unknown; choose one of: {', '.join([*BUILTIN, *SKLEARN])}, "
            "or give a CSV file."
        )
    fn = BUILTIN[name]
    if name in ("xor", "or", "virus"):
        return fn()
    return fn(seed=seed, **kwargs)
