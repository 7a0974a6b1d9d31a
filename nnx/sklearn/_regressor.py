""":class:`MLPRegressor`: scikit-learn's ``MLPRegressor`` on nnx (squared error)."""

from __future__ import annotations

import numpy as np
from sklearn.base import RegressorMixin
from sklearn.metrics import r2_score
from sklearn.utils import column_or_1d

from nnx.backends import to_numpy
from nnx.sklearn import _array_api
from nnx.sklearn._base import BaseMLP


class MLPRegressor(RegressorMixin, BaseMLP):
    """Multi-layer perceptron regressor on nnx (scikit-learn's ``MLPRegressor`` API, squared
    error only).

    Parameters are scikit-learn's (see :mod:`nnx.sklearn` for how ``alpha`` maps onto nnx's
    ``l2`` and the few deliberate differences), plus ``backend``, ``device`` and ``dtype`` for
    the :class:`nnx.Sequential` it trains (``model_``).
    """

    _score_function = staticmethod(r2_score)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def _out_activation_name(self) -> str:
        return "identity"

    def _n_model_outputs(self, y) -> int:
        return 1 if y.ndim == 1 else y.shape[1]

    def _loss_factor(self) -> float:
        return 0.5  # nnx's mse is the mean of squares; scikit-learn's is half of it

    def _validate_input(self, X, y, sample_weight, incremental, reset, classes=None):
        X, y, sample_weight, space = _array_api.validate(
            self, X, y, sample_weight, reset=reset, multi_output=True, y_numeric=True)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if not reset and (1 if y.ndim == 1 else y.shape[1]) != self.n_outputs_:
            raise ValueError(f"y has {1 if y.ndim == 1 else y.shape[1]} outputs; the model "
                             f"was fitted with {self.n_outputs_}.")
        return X, y, sample_weight, space

    def _predict_model(self, model, X):
        out = model.predict_proba(X)  # the identity output: the predictions
        return out[:, 0] if out.shape[1] == 1 else out

    def _score_model(self, model, X, y, sample_weight) -> float:
        pred = to_numpy(self._predict_model(model, X))
        if not np.isfinite(pred).all():
            return -np.inf
        return float(r2_score(y, pred, sample_weight=sample_weight))

    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over ``(X, y)``."""
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)

    def predict(self, X):
        """The outputs, shape ``(n_samples,)`` or ``(n_samples, n_outputs)``: an array of X's
        namespace and device, in the model's dtype."""
        X, space = self._check_X(X, "predict")
        return _array_api.to_space(space, self._predict_model(self.model_, X))

    def score(self, X, y, sample_weight=None):
        """R² of ``predict(X)`` against ``y`` (weighted by ``sample_weight``)."""
        return self._score(X, y, sample_weight)
