"""What :class:`MLPClassifier` and :class:`MLPRegressor` share: parameters, building the
:class:`nnx.Sequential`, scikit-learn's epoch bookkeeping and stopping rule, the fit."""

from __future__ import annotations

import warnings
from numbers import Integral, Real
from typing import Any

import numpy as np
from array_api_compat import array_namespace
from sklearn.base import BaseEstimator, is_classifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, InvalidParameterError, Options, StrOptions
from sklearn.utils.validation import check_is_fitted

from nnx.backends import get_backend, to_numpy
from nnx.callbacks import Callback
from nnx.layers import Dense
from nnx.model import Sequential
from nnx.optimizers import SGD, Adam, Schedule
from nnx.sklearn import _array_api

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
    """scikit-learn's per-epoch bookkeeping and stopping rule (``_fit_stochastic``).

    ``val`` is ``(X_val, y_val, sample_weight_val)``: X on the model's device, y and the
    weights on the host, where scikit-learn's score function takes them."""

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


class BaseMLP(BaseEstimator):
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
        # L-BFGS's budget in scikit-learn: accepted so that its calls run unchanged, unused
        # (solver='lbfgs' is refused).
        "max_fun": [Interval(Integral, 1, None, closed="left")],
        "backend": "no_validation",  # checked by nnx.get_backend at fit
        "device": "no_validation",
        "dtype": [StrOptions({"float32", "float64"}), None],
    }

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 backend=None, device=None, dtype=None):
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
        self.max_fun = max_fun
        self.backend = backend
        self.device = device
        self.dtype = dtype

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.array_api_support = True
        return tags

    def __sklearn_array_api_convert__(self, converter):
        """What ``sklearn.utils._array_api.move_estimator_to`` calls: a copy on another
        namespace and device (see :func:`nnx.sklearn._array_api.moved_estimator`)."""
        return _array_api.moved_estimator(self, converter)

    @property
    def _first_coef(self) -> Any:
        """``coefs_[0]``: what scikit-learn's ``check_same_namespace`` compares X with."""
        return self.coefs_[0]

    # -- what the subclasses say ------------------------------------------------------------
    def _validate_input(self, X, y, sample_weight, incremental, reset, classes=None):
        """``(X, y for the model, sample_weight or None, X's backend)``."""
        raise NotImplementedError

    def _loss_factor(self) -> float:
        return 1.0

    def _refuse_unsupported(self) -> None:
        """Raise for a scikit-learn option that nnx accepts only to refuse (beyond lbfgs)."""

    def _score_model(self, model, X, y, sample_weight) -> float:
        raise NotImplementedError

    # -- building -------------------------------------------------------------------------
    def _hidden_sizes(self) -> list[int]:
        sizes = self.hidden_layer_sizes
        sizes = [sizes] if isinstance(sizes, Integral) else list(sizes)
        if any(int(s) <= 0 for s in sizes):
            raise ValueError(f"hidden_layer_sizes must be > 0, got {sizes}.")
        return [int(s) for s in sizes]

    def _model_backend(self, follows: bool, space):
        """The backend the model trains on: X's (``space``) when everything follows X, else
        the ``backend``/``device`` parameters (default: nnx's usual choice)."""
        if follows:
            return space if self.device is None else get_backend(space.name, self.device)
        return get_backend(self.backend, self.device)

    def _initial_weights(self, n_features: int, n_outputs: int,
                         rs: np.random.RandomState) -> list[np.ndarray]:
        """scikit-learn's Glorot-uniform draws ``[W0, b0, W1, b1, ...]`` from `rs` (its
        ``_init_coef``, in its order); sets the architecture's fitted attributes."""
        sizes = [n_features, *self._hidden_sizes(), n_outputs]
        weights = []
        factor = 2.0 if self.activation == "logistic" else 6.0
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            bound = np.sqrt(factor / (fan_in + fan_out))
            weights.append(rs.uniform(-bound, bound, (fan_in, fan_out)))
            weights.append(rs.uniform(-bound, bound, fan_out))
        self.n_layers_ = len(sizes)
        self.n_outputs_ = n_outputs
        self.out_activation_ = self._out_activation_name()
        return weights

    def _build(self, weights: list[np.ndarray], seed: int, backend,
               dtype_name: str) -> Sequential:
        hidden = _HIDDEN[self.activation]
        shapes = [w.shape for w in weights[0::2]]
        layers = [Dense(n_in, n_out, hidden if i < len(shapes) - 1
                        else self._out_nnx_activation())
                  for i, (n_in, n_out) in enumerate(shapes)]
        model = Sequential(layers, dtype=dtype_name, seed=seed, backend=backend)
        model.set_weights(weights)
        return model

    def _dtype_name(self, X, backend) -> str:
        """``dtype``, else X's: float32 stays float32, anything else is float64 (as
        scikit-learn's MLP), or float32 on a device without float64."""
        if self.dtype is not None:
            return self.dtype
        if str(X.dtype).endswith("float32") or not backend.supports_float64:
            return "float32"
        return "float64"

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
    def _fit(self, X, y, sample_weight=None, incremental=False, classes=None):
        self._validate_params()
        if self.solver == "lbfgs":
            raise InvalidParameterError(
                f"The 'solver' parameter of {type(self).__name__} must be a str among "
                "{'adam', 'sgd'}. Got 'lbfgs' instead: nnx has no L-BFGS solver (it trains "
                "by minibatch gradient descent only); use solver='adam' or solver='sgd', or "
                "sklearn.neural_network for L-BFGS.")
        self._refuse_unsupported()
        self._hidden_sizes()
        first_pass = not hasattr(self, "model_") or (not self.warm_start and not incremental)
        if not first_pass and hasattr(self, "coefs_"):
            _array_api.check_same_space(self, X, "partial_fit" if incremental else "fit")
        follows = _array_api.follows_input(self, X)  # before X is validated (maybe to NumPy)
        X, y_fit, sw, space = self._validate_input(X, y, sample_weight, incremental,
                                                   reset=first_pass, classes=classes)
        rs = check_random_state(self.random_state)
        if first_pass:
            weights = self._initial_weights(X.shape[1], self._n_model_outputs(y_fit), rs)
            self._initialize()
        k = self.n_outputs_
        regression = not is_classifier(self)
        lr_factor = k / 2 if regression else 1.0
        eps_factor = 2 / k if regression else 1.0

        early_stopping = self.early_stopping and not incremental
        val = None
        if early_stopping:
            # scikit-learn's split in _fit_stochastic: drawn from the random state right
            # after the initial weights, stratified for one output (binary) only, so the
            # same rows; drawn as host indices so that the rows stay on X's device.
            stratify = y_fit if is_classifier(self) and k == 1 else None
            train_idx, val_idx = train_test_split(
                np.arange(X.shape[0]), random_state=rs, test_size=self.validation_fraction,
                stratify=stratify)
            if val_idx.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase "
                                 "'validation_fraction' or the size of your dataset.")
            take = _array_api.take_rows
            val = (take(X, val_idx), to_numpy(take(y_fit, val_idx)),
                   None if sw is None else to_numpy(take(sw, val_idx)))
            X, y_fit, sw = take(X, train_idx), take(y_fit, train_idx), take(sw, train_idx)
            if self.validation_scores_ is None:  # a warm start after a fit without it
                self.validation_scores_, self.best_validation_score_ = [], -np.inf
        if first_pass:
            seed = int(rs.randint(np.iinfo(np.int32).max))  # nnx's generator: batch order
            backend = self._model_backend(follows, space)
            self.model_ = self._build(weights, seed, backend, self._dtype_name(X, backend))
        model = self.model_
        if not early_stopping and self.best_loss_ is None:
            self.best_loss_ = np.inf
        n = X.shape[0]
        if self.batch_size == "auto":
            batch_size = min(200, n)
        else:
            if self.batch_size > n:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is "
                              "going to be clipped", stacklevel=3)
            batch_size = int(np.clip(self.batch_size, 1, n))
        # scikit-learn divides the L2 term of a batch by the batch's weight (its n without
        # weights); nnx keeps one l2 per fit, so the batch's weight is taken as batch_size
        # times the mean weight: exact for full batches (see the package's docstring).
        mean_weight = 1.0 if sw is None else float(array_namespace(sw).sum(sw)) / n
        l2 = self.alpha / (batch_size * mean_weight) * (2 / k if regression else 1.0)

        optimizer = None
        if not incremental or model.optimizer is None:
            optimizer = self._optimizer(lr_factor, eps_factor)
        rule = _SklearnRule(self, n, val, incremental, lr_factor)
        self._best_params = None
        model.fit(X, y_fit, epochs=1 if incremental else self.max_iter, l2=l2,
                  batch_size=batch_size, optimizer=optimizer, shuffle=bool(self.shuffle),
                  callbacks=[rule], verbose=False, sample_weight=sw)
        if early_stopping and self._best_params is not None:
            model.assign_parameters(self._best_params)
        self._best_params = None
        weights = _array_api.fitted_arrays(space, model)
        self.coefs_ = weights[0::2]
        self.intercepts_ = weights[1::2]
        return self

    def fit(self, X, y, sample_weight=None):
        """Train on ``(X, y)`` for up to ``max_iter`` epochs (from the current weights with
        ``warm_start=True``).

        Parameters
        ----------
        X : array, shape (n_samples, n_features)
            NumPy or, with array API dispatch (or no ``backend``), any nnx backend's array.
        y : array, shape (n_samples,) or (n_samples, n_outputs)
        sample_weight : array, shape (n_samples,), optional
            Weights >= 0: each batch's loss is the weighted mean, and the L2 term is divided
            by the batch's total weight, as in scikit-learn.
        """
        return self._fit(X, y, sample_weight=sample_weight, incremental=False)

    # -- predicting -----------------------------------------------------------------------
    def _check_X(self, X, method: str):
        """``(X, X's backend)`` for a prediction: fitted, the fit's namespace and device (with
        dispatch), the fit's number of features."""
        check_is_fitted(self)
        _array_api.check_same_space(self, X, method)
        X, _, _, space = _array_api.validate(self, X, reset=False)
        return X, space

    def _score(self, X, y, sample_weight=None) -> float:
        """``_score_function`` (accuracy, R²) of ``predict(X)`` against ``y``, weighted by
        ``sample_weight``; y and the weights follow the predictions' namespace and device."""
        pred, y, sample_weight = _array_api.like(self.predict(X), y, sample_weight)
        return float(self._score_function(y, pred, sample_weight=sample_weight))
