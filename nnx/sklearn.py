"""scikit-learn estimators on nnx: :class:`MLPClassifier` and :class:`MLPRegressor`.

They speak scikit-learn's ``MLPClassifier``/``MLPRegressor`` parameters with their meaning and
set the same fitted attributes, and they train an :class:`nnx.Sequential` (kept as
``model_``, by composition) on any nnx backend (``backend=``, ``device=``, ``dtype=``).
Predictions come back as NumPy arrays.

How scikit-learn's objective maps onto nnx's
---------------------------------------------
scikit-learn minimises, per minibatch of ``n_b`` rows, ``data_loss + alpha / (2 n_b) *
sum ||W||^2`` (its gradient is ``(X^T delta + alpha W) / n_b``); nnx minimises
``mean data loss + (l2 / 2) * sum ||W||^2``. So:

- classifiers (log-loss, the same mean in both): ``l2 = alpha / n_b``; the objective, its
  gradient and ``loss_`` are scikit-learn's exactly.
- regressors: scikit-learn's gradient is that of ``sum_ij (pred - y)^2 / (2 n_b) +
  alpha / (2 n_b) ||W||^2``, which is ``k / 2`` times nnx's ``mse + (l2 / 2) ||W||^2`` (``mse``
  the mean over all ``n_b * k`` elements, ``k`` outputs) with ``l2 = 2 alpha / (k n_b)``. The
  step is made scikit-learn's by running SGD with ``lr = learning_rate_init * k / 2`` and Adam
  with ``eps = epsilon * 2 / k`` (Adam is otherwise invariant to the factor). ``loss_`` is
  nnx's objective / 2: scikit-learn's ``squared_error / 2 + alpha/(2 n_b) ||W||^2`` exactly for
  one output; for ``k > 1`` outputs its L2 part is ``1/k`` of scikit-learn's.

``n_b`` is ``batch_size``: nnx keeps one ``l2`` for a whole fit, so the last, smaller batch of
an epoch (``n % batch_size`` rows, when not zero) is penalised with ``alpha / batch_size``
instead of ``alpha / n_last``. With ``batch_size >= n_samples`` (full batch, the default for
fewer than 200 samples) the equivalence is exact.

Other differences from scikit-learn, all deliberate:

- ``solver='lbfgs'`` is refused (nnx has no L-BFGS), and so is ``sample_weight``.
- Adam: nnx adds ``epsilon`` to the bias-corrected ``sqrt(v_hat)`` (Kingma & Ba's
  algorithm 1); scikit-learn adds it to the uncorrected ``sqrt(v)``. The same for ``eps``
  small next to the gradients.
- The initial weights are scikit-learn's Glorot-uniform draws (from ``random_state``); the
  minibatch order comes from nnx's generator, seeded from ``random_state``, so the run is
  reproducible but not scikit-learn's bit for bit.
- Binary problems use one sigmoid unit (``out_activation_ = 'logistic'``) as scikit-learn
  does; multilabel targets are not supported.
"""

from __future__ import annotations

import warnings
from numbers import Integral, Real
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, is_classifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state, column_or_1d
from sklearn.utils._param_validation import (
    Interval,
    InvalidParameterError,
    Options,
    StrOptions,
)
from sklearn.utils.multiclass import check_classification_targets, type_of_target, unique_labels
from sklearn.utils.validation import check_is_fitted, validate_data

from nnx.backends import to_numpy
from nnx.callbacks import Callback
from nnx.layers import Dense
from nnx.model import Sequential
from nnx.optimizers import SGD, Adam, Schedule

__all__ = ["MLPClassifier", "MLPRegressor"]

_HIDDEN = {"identity": "identity", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu"}


class _InvScaling(Schedule):
    """scikit-learn's ``invscaling``: ``learning_rate_init / (t + 1) ** power_t`` where ``t``
    is the number of samples seen at the end of the previous epoch (the first epoch of an
    optimizer runs at ``learning_rate_init``). ``t`` is set by the estimator's callback."""

    def __init__(self, power_t: float) -> None:
        self.power_t = float(power_t)
        self.t: int | None = None

    def __call__(self, epoch: int) -> float:
        return 1.0 if self.t is None else 1.0 / (self.t + 1) ** self.power_t

    def __repr__(self) -> str:
        return f"invscaling(power_t={self.power_t})"


class _SklearnRule(Callback):
    """scikit-learn's per-epoch bookkeeping and stopping rule (``_fit_stochastic``)."""

    def __init__(self, est: Any, n_samples: int, val: Any, incremental: bool,
                 lr_factor: float) -> None:
        self.est, self.n_samples, self.val = est, n_samples, val
        self.incremental, self.lr_factor = incremental, lr_factor
        self.stopped = False

    def on_epoch_end(self, model: Any, epoch: int, logs: dict[str, float]) -> None:
        est = self.est
        est.n_iter_ += 1
        est.t_ += self.n_samples
        est.loss_ = float(logs["loss"]) * est._loss_factor()
        est.loss_curve_.append(est.loss_)
        if est.verbose:
            print(f"Iteration {est.n_iter_}, loss = {est.loss_:.8f}")
        if self.val is not None:
            score = est._score_model(model, *self.val)
            est.validation_scores_.append(score)
            if est.verbose:
                print(f"Validation score: {score:f}")
            if score < est.best_validation_score_ + est.tol:
                est._no_improvement_count += 1
            else:
                est._no_improvement_count = 0
            if score > est.best_validation_score_:
                est.best_validation_score_ = score
                est._best_params = model.parameters()  # never written in place: a snapshot
        else:
            if est.loss_curve_[-1] > est.best_loss_ - est.tol:
                est._no_improvement_count += 1
            else:
                est._no_improvement_count = 0
            if est.loss_curve_[-1] < est.best_loss_:
                est.best_loss_ = est.loss_curve_[-1]
        opt = model.optimizer
        if isinstance(opt.schedule, _InvScaling):
            opt.schedule.t = est.t_
        if est._no_improvement_count > est.n_iter_no_change:
            what = "Validation score" if self.val is not None else "Training loss"
            msg = (f"{what} did not improve more than tol={est.tol:f} for "
                   f"{est.n_iter_no_change} consecutive epochs.")
            stop = True
            if isinstance(opt, SGD) and est.learning_rate == "adaptive":
                if opt.lr / self.lr_factor > 1e-6:
                    opt.lr /= 5.0
                    stop = False
                    msg += f" Setting learning rate to {opt.lr / self.lr_factor:f}"
                else:
                    msg += " Learning rate too small. Stopping."
            if est.verbose:
                print(msg)
            if stop:
                model.stop_training = self.stopped = True
                return
            est._no_improvement_count = 0
        if not self.incremental and est.n_iter_ == est.max_iter:
            warnings.warn(f"Stochastic Optimizer: Maximum iterations ({est.max_iter}) reached "
                          "and the optimization hasn't converged yet.", ConvergenceWarning,
                          stacklevel=2)


class _BaseMLP(BaseEstimator):
    _parameter_constraints: dict = {
        "hidden_layer_sizes": ["array-like", Interval(Integral, 1, None, closed="left")],
        "activation": [StrOptions({"identity", "logistic", "tanh", "relu"})],
        # 'lbfgs' is scikit-learn's; it is accepted here only to be refused with a reason.
        "solver": [StrOptions({"lbfgs", "sgd", "adam"})],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "batch_size": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "learning_rate": [StrOptions({"constant", "invscaling", "adaptive"})],
        "learning_rate_init": [Interval(Real, 0, None, closed="neither")],
        "power_t": [Interval(Real, 0, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "shuffle": ["boolean"],
        "random_state": ["random_state"],
        "tol": [Interval(Real, 0, None, closed="left")],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
        "momentum": [Interval(Real, 0, 1, closed="both")],
        "nesterovs_momentum": ["boolean"],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "beta_1": [Interval(Real, 0, 1, closed="left")],
        "beta_2": [Interval(Real, 0, 1, closed="left")],
        "epsilon": [Interval(Real, 0, None, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left"),
                             Options(Real, {np.inf})],
        "backend": "no_validation",  # checked by nnx.get_backend at fit
        "device": "no_validation",
        "dtype": [StrOptions({"float32", "float64"})],
    }

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, backend=None,
                 device=None, dtype="float64"):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.backend = backend
        self.device = device
        self.dtype = dtype

    # -- what the subclasses say ------------------------------------------------------------
    def _validate_input(self, X, y, incremental, reset, classes=None):
        raise NotImplementedError

    def _loss_factor(self) -> float:
        return 1.0

    def _score_model(self, model, X, y) -> float:
        raise NotImplementedError

    # -- building -------------------------------------------------------------------------
    def _hidden_sizes(self) -> list[int]:
        sizes = self.hidden_layer_sizes
        sizes = [sizes] if isinstance(sizes, Integral) else list(sizes)
        if any(int(s) <= 0 for s in sizes):
            raise ValueError(f"hidden_layer_sizes must be > 0, got {sizes}.")
        return [int(s) for s in sizes]

    def _build(self, n_features: int, n_outputs: int, rs: np.random.RandomState) -> Sequential:
        sizes = [n_features, *self._hidden_sizes(), n_outputs]
        hidden = _HIDDEN[self.activation]
        layers = [Dense(sizes[i], sizes[i + 1],
                        hidden if i < len(sizes) - 2 else self._out_nnx_activation())
                  for i in range(len(sizes) - 1)]
        weights = []
        factor = 2.0 if self.activation == "logistic" else 6.0  # scikit-learn's _init_coef
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            bound = np.sqrt(factor / (fan_in + fan_out))
            weights.append(rs.uniform(-bound, bound, (fan_in, fan_out)))
            weights.append(rs.uniform(-bound, bound, fan_out))
        seed = int(rs.randint(np.iinfo(np.int32).max))  # nnx's generator: minibatch order
        model = Sequential(layers, dtype=self.dtype, seed=seed, backend=self.backend,
                           device=self.device)
        model.set_weights(weights)
        self.n_layers_ = len(sizes)
        self.n_outputs_ = n_outputs
        self.out_activation_ = self._out_activation_name()
        return model

    def _out_nnx_activation(self) -> str:
        return {"softmax": "softmax", "logistic": "sigmoid"}.get(
            self._out_activation_name(), "identity")

    def _optimizer(self, lr_factor: float, eps_factor: float):
        if self.solver == "adam":
            return Adam(lr=self.learning_rate_init, beta1=self.beta_1, beta2=self.beta_2,
                        eps=self.epsilon * eps_factor)
        schedule = _InvScaling(self.power_t) if self.learning_rate == "invscaling" else None
        return SGD(lr=self.learning_rate_init * lr_factor, momentum=self.momentum,
                   nesterov=bool(self.nesterovs_momentum and self.momentum > 0),
                   schedule=schedule)

    def _initialize(self) -> None:
        self.n_iter_ = 0
        self.t_ = 0
        self.loss_curve_ = []
        self._no_improvement_count = 0
        if self.early_stopping:
            self.validation_scores_ = []
            self.best_validation_score_ = -np.inf
            self.best_loss_ = None
        else:
            self.best_loss_ = np.inf
            self.validation_scores_ = None
            self.best_validation_score_ = None

    # -- fitting --------------------------------------------------------------------------
    def _fit(self, X, y, incremental=False, classes=None):
        self._validate_params()
        if self.solver == "lbfgs":
            raise InvalidParameterError(
                f"The 'solver' parameter of {type(self).__name__} must be a str among "
                "{'adam', 'sgd'}. Got 'lbfgs' instead: nnx has no L-BFGS solver (it trains "
                "by minibatch gradient descent only); use solver='adam' or solver='sgd', or "
                "sklearn.neural_network for L-BFGS.")
        self._hidden_sizes()
        first_pass = not hasattr(self, "model_") or (not self.warm_start and not incremental)
        X, y_enc = self._validate_input(X, y, incremental, reset=first_pass, classes=classes)
        rs = check_random_state(self.random_state)
        if first_pass:
            self.model_ = self._build(X.shape[1], self._n_model_outputs(y_enc), rs)
            self._initialize()
        model = self.model_
        k = self.n_outputs_
        regression = not is_classifier(self)
        lr_factor = k / 2 if regression else 1.0
        eps_factor = 2 / k if regression else 1.0

        early_stopping = self.early_stopping and not incremental
        val = None
        if early_stopping:
            stratify = y_enc if is_classifier(self) else None
            X, X_val, y_enc, y_val = train_test_split(
                X, y_enc, random_state=rs, test_size=self.validation_fraction,
                stratify=stratify)
            if X_val.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase "
                                 "'validation_fraction' or the size of your dataset.")
            val = (X_val, y_val)
            if self.validation_scores_ is None:  # a warm start after a fit without it
                self.validation_scores_, self.best_validation_score_ = [], -np.inf
        elif self.best_loss_ is None:
            self.best_loss_ = np.inf
        n = X.shape[0]
        if self.batch_size == "auto":
            batch_size = min(200, n)
        else:
            if self.batch_size > n:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is "
                              "going to be clipped", stacklevel=3)
            batch_size = int(np.clip(self.batch_size, 1, n))
        l2 = self.alpha / batch_size * (2 / k if regression else 1.0)

        optimizer = None
        if not incremental or model.optimizer is None:
            optimizer = self._optimizer(lr_factor, eps_factor)
        rule = _SklearnRule(self, n, val, incremental, lr_factor)
        self._best_params = None
        model.fit(X, y_enc, epochs=1 if incremental else self.max_iter, l2=l2,
                  batch_size=batch_size, optimizer=optimizer, shuffle=bool(self.shuffle),
                  callbacks=[rule], verbose=False)
        if early_stopping and self._best_params is not None:
            model.assign_parameters(self._best_params)
        self._best_params = None
        weights = model.get_weights()
        self.coefs_ = weights[0::2]
        self.intercepts_ = weights[1::2]
        return self

    def fit(self, X, y):
        """Train on ``(X, y)`` for up to ``max_iter`` epochs (from the current weights with
        ``warm_start=True``)."""
        return self._fit(X, y, incremental=False)

    def _forward(self, model, X) -> np.ndarray:
        return np.asarray(to_numpy(model.predict_proba(X)), dtype=np.float64)

    def _check_X(self, X) -> np.ndarray:
        check_is_fitted(self)
        return validate_data(self, X, reset=False, dtype=(np.float64, np.float32))


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier on nnx (scikit-learn's ``MLPClassifier`` API).

    Parameters are scikit-learn's (see :mod:`nnx.sklearn` for how ``alpha`` maps onto nnx's
    ``l2`` and the few deliberate differences), plus ``backend``, ``device`` and ``dtype`` for
    the :class:`nnx.Sequential` it trains (``model_``).
    """

    def _out_activation_name(self) -> str:
        return "softmax" if len(self.classes_) > 2 else "logistic"

    def _n_model_outputs(self, y_enc) -> int:
        return len(self.classes_) if len(self.classes_) > 2 else 1

    def _validate_input(self, X, y, incremental, reset, classes=None):
        X, y = validate_data(self, X, y, multi_output=True, dtype=(np.float64, np.float32),
                             reset=reset)
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
        y_enc = np.searchsorted(self.classes_, y)
        return X, y_enc.astype(np.int64)

    def _proba(self, model, X) -> np.ndarray:
        p = self._forward(model, X)
        if len(self.classes_) > 2:
            return p
        if len(self.classes_) == 1:
            return np.ones((X.shape[0], 1))
        return np.hstack([1 - p, p])

    def _score_model(self, model, X, y_enc) -> float:
        return float(accuracy_score(y_enc, np.argmax(self._proba(model, X), axis=1)))

    def partial_fit(self, X, y, classes=None):
        """One epoch over ``(X, y)``; ``classes`` (every label) is required on the first
        call."""
        if not hasattr(self, "classes_") and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit.")
        return self._fit(X, y, incremental=True, classes=classes)

    def predict_proba(self, X):
        """Class probabilities, shape ``(n_samples, n_classes)``, columns in ``classes_``
        order."""
        X = self._check_X(X)
        return self._proba(self.model_, X)

    def predict_log_proba(self, X):
        """``log(predict_proba(X))``."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X):
        """Labels from ``classes_`` (the most probable class)."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor on nnx (scikit-learn's ``MLPRegressor`` API, squared
    error only).

    Parameters are scikit-learn's (see :mod:`nnx.sklearn` for how ``alpha`` maps onto nnx's
    ``l2`` and the few deliberate differences), plus ``backend``, ``device`` and ``dtype`` for
    the :class:`nnx.Sequential` it trains (``model_``).
    """

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

    def _validate_input(self, X, y, incremental, reset, classes=None):
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True,
                             dtype=(np.float64, np.float32), reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if not reset and (1 if y.ndim == 1 else y.shape[1]) != self.n_outputs_:
            raise ValueError(f"y has {1 if y.ndim == 1 else y.shape[1]} outputs; the model "
                             f"was fitted with {self.n_outputs_}.")
        return X, y

    def _predict_model(self, model, X) -> np.ndarray:
        out = self._forward(model, X)
        return out[:, 0] if out.shape[1] == 1 else out

    def _score_model(self, model, X, y) -> float:
        pred = self._predict_model(model, X)
        if not np.isfinite(pred).all():
            return -np.inf
        return float(r2_score(y, pred))

    def partial_fit(self, X, y):
        """One epoch over ``(X, y)``."""
        return self._fit(X, y, incremental=True)

    def predict(self, X):
        """The outputs, shape ``(n_samples,)`` or ``(n_samples, n_outputs)``."""
        X = self._check_X(X)
        return self._predict_model(self.model_, X)
