"""Where the estimators' arrays live: scikit-learn's array API rule, "everything follows X".

With ``sklearn.set_config(array_api_dispatch=True)``, or whenever X is a non-NumPy array and
the estimator's ``backend`` is None, the model trains on X's library and device (nnx's
registry finds the backend from the array), y and sample_weight are moved there, and the
outputs and the fitted arrays come back as arrays of X's namespace and device. Without
dispatch, scikit-learn's validation works on NumPy arrays only: a non-NumPy X is then copied
to the host once to be checked (nnx's explicit :func:`~nnx.backends.to_numpy`, which works
for device arrays too) and moved back to its device by the model.
"""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np
from sklearn import get_config
from sklearn.utils._array_api import check_same_namespace, get_namespace_and_device, move_to
from sklearn.utils.validation import _check_sample_weight, validate_data

from nnx.backends import REGISTRY, Backend, array_backend, get_backend, to_numpy

#: The fitted attribute that :func:`check_same_space` compares X with (a property of the
#: estimators: ``coefs_[0]``, an array of the namespace and device of the fit's X).
FITTED_ARRAY = "_first_coef"


def dispatch() -> bool:
    """Whether scikit-learn's array API dispatch is on."""
    return bool(get_config()["array_api_dispatch"])


def is_foreign(x: Any) -> bool:
    """Whether `x` is an array of a library other than NumPy (torch, CuPy, JAX, ...)."""
    return array_api_compat.is_array_api_obj(x) and not isinstance(x, np.ndarray)


def input_backend(x: Any) -> Backend:
    """The nnx backend of the library and device `x` lives on: NumPy's for anything that is
    not an array of a registered library (NumPy arrays, lists, data frames)."""
    cls = array_backend(x) if array_api_compat.is_array_api_obj(x) else None
    if cls is None:
        return get_backend("numpy")
    name = next(name for name, spec in REGISTRY.items() if spec.module == cls.__module__)
    return get_backend(name, array_api_compat.device(x))


def follows_input(estimator: Any, X: Any) -> bool:
    """Whether the model is to be built on X's backend and device (no ``backend`` given, and
    dispatch on or X a non-NumPy array)."""
    return estimator.backend is None and (dispatch() or is_foreign(X))


def host(x: Any) -> Any:
    """`x` as NumPy when it is another library's array (an explicit copy), else as it is."""
    return to_numpy(x) if is_foreign(x) else x


def float_dtypes(space: Backend) -> tuple[Any, ...]:
    """The float dtypes X may keep on `space`, the preferred first (scikit-learn's MLP keeps
    float32 and float64)."""
    xp = space.xp
    return (xp.float64, xp.float32) if space.supports_float64 else (xp.float32,)


def validate(estimator: Any, X: Any, y: Any = "no_validation", sample_weight: Any = None, *,
             reset: bool, y_space: str = "X", **kwargs: Any) -> tuple[Any, Any, Any, Backend]:
    """``(X, y, sample_weight, space)``: X checked by scikit-learn's ``validate_data`` (y with
    it unless ``'no_validation'``, as scikit-learn spells it; ``kwargs`` passed on),
    sample_weight by ``_check_sample_weight`` (>= 0, not all 0), and the backend X lives on.

    With dispatch the arrays stay in X's namespace and on its device, and y (``y_space='X'``)
    and sample_weight are moved there; ``y_space='host'`` brings y to NumPy instead (class
    labels, which may be strings). Without dispatch everything is NumPy.
    """
    space = input_backend(X)
    on = dispatch()
    if not on:
        X, y, sample_weight = host(X), host(y), host(sample_weight)
    dtypes = float_dtypes(space) if on else (np.float64, np.float32)
    if isinstance(y, str) and y == "no_validation":
        X = validate_data(estimator, X, reset=reset, dtype=dtypes, **kwargs)
    else:
        X, y = validate_data(estimator, X, y, reset=reset, dtype=dtypes, **kwargs)
        if on and y_space == "host":
            y = host(y)
        elif on:
            xp, _, device = get_namespace_and_device(X)
            y = move_to(y, xp=xp, device=device)
    if sample_weight is not None:
        sample_weight = _check_sample_weight(sample_weight, X, dtype=X.dtype,
                                             ensure_non_negative=True)
    return X, y, sample_weight, space


def like(reference: Any, *arrays: Any) -> tuple[Any, ...]:
    """``(reference, *arrays)`` with `arrays` moved to the namespace and device of
    `reference` (with dispatch), or all of them as NumPy (without); None stays None. For
    scoring: y and sample_weight follow the predictions."""
    if not dispatch():
        return tuple(None if a is None else host(a) for a in (reference, *arrays))
    xp, _, device = get_namespace_and_device(reference)
    return (reference, *(a if a is None or not array_api_compat.is_array_api_obj(a)
                         else move_to(a, xp=xp, device=device) for a in arrays))


def check_same_space(estimator: Any, X: Any, method: str) -> None:
    """With dispatch, refuse an X of another namespace or device than the fit's, as
    scikit-learn's own estimators do (its ``check_same_namespace``, a ValueError)."""
    check_same_namespace(X, estimator, attribute=FITTED_ARRAY, method=method)


def take_rows(a: Any, idx: np.ndarray) -> Any:
    """Rows `idx` (host integers) of `a`, on `a`'s device."""
    if a is None:
        return None
    if isinstance(a, np.ndarray):
        return a[idx]
    xp = array_api_compat.array_namespace(a)
    return xp.take(a, xp.asarray(idx, device=array_api_compat.device(a)), axis=0)


def to_space(space: Backend, a: Any) -> Any:
    """`a` (an array of the model's backend) as an array of `space`: itself when it is
    already there, else copied."""
    if space.owns(a) and array_api_compat.device(a) == space.device:
        return a
    return space.asarray(a)


def fitted_arrays(space: Backend, model: Any) -> list[Any]:
    """Copies of the model's ``[W0, b0, W1, b1, ...]`` as arrays of `space` (X's namespace
    and device)."""
    with model.backend.scope(model.dtype_name):
        if space == model.backend:
            return [space.xp.asarray(p, copy=True) for p in model.parameters()]
        return [space.asarray(p) for p in model.parameters()]


def moved_estimator(estimator: Any, converter: Any) -> Any:
    """A copy of a fitted `estimator` whose arrays `converter` moved (scikit-learn's
    ``move_estimator_to``, which its ``check_same_namespace`` error suggests): ``coefs_``
    and ``intercepts_`` converted, and ``model_`` rebuilt on their backend and device with
    the same weights. The optimizer's state stays behind: a later ``partial_fit`` starts a
    fresh optimizer."""
    from sklearn.base import clone

    from nnx.model import Sequential

    new = clone(estimator)
    vars(new).update(vars(estimator))
    if not hasattr(estimator, "model_"):
        return new
    new.coefs_ = [converter(a) for a in estimator.coefs_]
    new.intercepts_ = [converter(a) for a in estimator.intercepts_]
    space = input_backend(new.coefs_[0])
    old = estimator.model_
    config = old.get_config()
    config["dtype"] = "float32" if str(new.coefs_[0].dtype).endswith("float32") else "float64"
    model = Sequential.from_config(config, backend=space)
    model.set_weights([a for pair in zip(new.coefs_, new.intercepts_) for a in pair])
    model.classes, model.feature_names = old.classes, old.feature_names
    model.epochs_trained = old.epochs_trained
    new.model_ = model
    return new
