""":class:`MLPClassifier`: scikit-learn's ``MLPClassifier`` on nnx."""

from __future__ import annotations

import numpy as np
from array_api_compat import device as array_device
from sklearn.base import ClassifierMixin
from sklearn.metrics import accuracy_score
from sklearn.utils import column_or_1d
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.class_weight import compute_sample_weight
from sklearn.utils.multiclass import check_classification_targets, type_of_target, unique_labels

from nnx.backends import to_numpy
from nnx.sklearn import _array_api
from nnx.sklearn._base import BaseMLP


class MLPClassifier(ClassifierMixin, BaseMLP):
    """Multi-layer perceptron classifier on nnx (scikit-learn's ``MLPClassifier`` API).

    Parameters are scikit-learn's (see :mod:`nnx.sklearn` for how ``alpha`` maps onto nnx's
    ``l2`` and the few deliberate differences), plus ``class_weight`` (None, ``{label:
    weight}`` or ``'balanced'``, multiplied into ``sample_weight``) and ``backend``,
    ``device`` and ``dtype`` for the :class:`nnx.Sequential` it trains (``model_``).

    ``classes_`` is a NumPy array, as in scikit-learn. ``predict`` returns labels of X's
    namespace and device when the classes are numbers (bool, integers, floats), and a NumPy
    array when they are not (strings, objects: no other array library holds them).
    """

    _parameter_constraints: dict = {
        **BaseMLP._parameter_constraints,
        "class_weight": [dict, StrOptions({"balanced"}), None],
    }

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 class_weight=None, backend=None, device=None, dtype=None):
        super().__init__(
            hidden_layer_sizes, activation, solver=solver, alpha=alpha, batch_size=batch_size,
            learning_rate=learning_rate, learning_rate_init=learning_rate_init,
            power_t=power_t, max_iter=max_iter, shuffle=shuffle, random_state=random_state,
            tol=tol, verbose=verbose, warm_start=warm_start, momentum=momentum,
            nesterovs_momentum=nesterovs_momentum, early_stopping=early_stopping,
            validation_fraction=validation_fraction, beta_1=beta_1, beta_2=beta_2,
            epsilon=epsilon, n_iter_no_change=n_iter_no_change, max_fun=max_fun,
            backend=backend, device=device, dtype=dtype)
        self.class_weight = class_weight

    _score_function = staticmethod(accuracy_score)

    def _out_activation_name(self) -> str:
        return "softmax" if len(self.classes_) > 2 else "logistic"

    def _n_model_outputs(self, y_enc) -> int:
        return len(self.classes_) if len(self.classes_) > 2 else 1

    def _validate_input(self, X, y, sample_weight, incremental, reset, classes=None):
        if incremental and isinstance(self.class_weight, str):
            raise ValueError("class_weight='balanced' is not supported by partial_fit: the "
                             "class frequencies of one batch are not those of the data. Pass "
                             "class_weight=dict(zip(classes, compute_class_weight('balanced', "
                             "classes=classes, y=y))) with the whole y instead.")
        X, y, sample_weight, space = _array_api.validate(
            self, X, y, sample_weight, reset=reset, y_space="host", multi_output=True)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        if type_of_target(y) == "multilabel-indicator" or y.ndim != 1:
            raise ValueError(f"{type(self).__name__} (nnx) does not support multilabel or "
                             "multi-output targets; y must be 1-D class labels.")
        if incremental and not hasattr(self, "classes_"):
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit.")
            self.classes_ = unique_labels(classes)
        elif not hasattr(self, "classes_") or (not self.warm_start and not incremental):
            self.classes_ = unique_labels(y)
        else:
            present = unique_labels(y)
            if self.warm_start and not incremental:
                if set(present) != set(self.classes_):
                    raise ValueError("warm_start can only be used where `y` has the same "
                                     f"classes as in the previous call to fit. Previously got "
                                     f"{self.classes_}, `y` has {present}")
            elif not np.isin(present, self.classes_).all():
                raise ValueError("`y` has classes not in `self.classes_`. `self.classes_` has "
                                 f"{self.classes_}. 'y' has {present}.")
        y_enc = np.searchsorted(self.classes_, y).astype(np.int64)
        if self.class_weight is not None:
            xp = space.xp if _array_api.dispatch() else np
            per_row = xp.asarray(compute_sample_weight(self.class_weight, y), dtype=X.dtype,
                                 device=array_device(X))
            sample_weight = per_row if sample_weight is None else sample_weight * per_row
        return X, y_enc, sample_weight, space

    def _proba(self, model, X):
        """Class probabilities, ``(n_samples, n_classes)``, on the model's device."""
        p = model.predict_proba(X)
        if len(self.classes_) > 2:
            return p
        xp = model.xp
        with model.backend.scope(model.dtype_name):
            if len(self.classes_) == 1:
                return xp.ones((p.shape[0], 1), dtype=p.dtype, device=array_device(p))
            return xp.concat([1 - p, p], axis=1)

    def _score_model(self, model, X, y_enc, sample_weight) -> float:
        labels = np.argmax(to_numpy(self._proba(model, X)), axis=1)
        return float(accuracy_score(y_enc, labels, sample_weight=sample_weight))

    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch over ``(X, y)``; ``classes`` (every label) is required on the first
        call."""
        if not hasattr(self, "classes_") and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit.")
        return self._fit(X, y, sample_weight=sample_weight, incremental=True, classes=classes)

    def predict_proba(self, X):
        """Class probabilities, shape ``(n_samples, n_classes)``, columns in ``classes_``
        order; an array of X's namespace and device, in the model's dtype."""
        X, space = self._check_X(X, "predict_proba")
        return _array_api.to_space(space, self._proba(self.model_, X))

    def predict_log_proba(self, X):
        """``log(predict_proba(X))``."""
        X, space = self._check_X(X, "predict_log_proba")
        model = self.model_
        p = self._proba(model, X)
        with model.backend.scope(model.dtype_name), np.errstate(divide="ignore"):
            return _array_api.to_space(space, model.xp.log(p))

    def predict(self, X):
        """Labels from ``classes_`` (the most probable class): of X's namespace and device
        for numeric classes, NumPy for the others."""
        X, space = self._check_X(X, "predict")
        model = self.model_
        p = self._proba(model, X)
        with model.backend.scope(model.dtype_name):
            best = model.xp.argmax(p, axis=1)
        classes = self.classes_
        if classes.dtype.kind not in "biuf":
            return classes[to_numpy(best)]
        dtype = None
        if classes.dtype.kind == "f" and not space.supports_float64:
            dtype = space.xp.float32
        with space.scope("float64"):
            return space.xp.take(space.asarray(classes, dtype=dtype),
                                 _array_api.to_space(space, best), axis=0)

    def score(self, X, y, sample_weight=None):
        """Accuracy of ``predict(X)`` against ``y`` (weighted by ``sample_weight``)."""
        return self._score(X, y, sample_weight)
