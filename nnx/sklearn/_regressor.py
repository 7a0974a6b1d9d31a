""":class:`MLPRegressor`: scikit-learn's ``MLPRegressor`` on nnx (squared error)."""

from __future__ import annotations

import numpy as np
from sklearn.base import RegressorMixin
from sklearn.metrics import r2_score
from sklearn.utils import column_or_1d
from sklearn.utils._param_validation import InvalidParameterError, StrOptions

from nnx.backends import to_numpy
from nnx.sklearn import _array_api
from nnx.sklearn._base import BaseMLP


class MLPRegressor(RegressorMixin, BaseMLP):
    """Multi-layer perceptron regressor on nnx (scikit-learn's ``MLPRegressor`` API, squared
    error only).

    Parameters are scikit-learn's (see :mod:`nnx.sklearn` for how ``alpha`` maps onto nnx's
    ``l2`` and the few deliberate differences), plus ``backend``, ``device`` and ``dtype`` for
    the :class:`nnx.Sequential` it trains (``model_``). ``loss`` is scikit-learn's first
    parameter, as there; only ``'squared_error'`` is supported (``'poisson'`` is refused).
    """

    _parameter_constraints: dict = {
        **BaseMLP._parameter_constraints,
        # 'poisson' is scikit-learn's; it is accepted here only to be refused with a reason.
        "loss": [StrOptions({"squared_error", "poisson"})],
    }

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *,
                 solver="adam", alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 backend=None, device=None, dtype=None):
        super().__init__(
            hidden_layer_sizes, activation, solver=solver, alpha=alpha, batch_size=batch_size,
            learning_rate=learning_rate, learning_rate_init=learning_rate_init,
            power_t=power_t, max_iter=max_iter, shuffle=shuffle, random_state=random_state,
            tol=tol, verbose=verbose, warm_start=warm_start, momentum=momentum,
            nesterovs_momentum=nesterovs_momentum, early_stopping=early_stopping,
            validation_fraction=validation_fraction, beta_1=beta_1, beta_2=beta_2,
            epsilon=epsilon, n_iter_no_change=n_iter_no_change, max_fun=max_fun,
            backend=backend, device=device, dtype=dtype)
        self.loss = loss

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

    def _refuse_unsupported(self) -> None:
        if self.loss == "poisson":
            raise InvalidParameterError(
                "The 'loss' parameter of MLPRegressor must be 'squared_error'. Got 'poisson' "
                "instead: nnx's regressor trains on the squared error only; use "
                "sklearn.neural_network.MLPRegressor for the Poisson deviance.")

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
