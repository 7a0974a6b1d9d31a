"""``Sequential``: a stack of layers with forward, backward, fit, predict and evaluate.

Data enters at the edge (``fit``, ``predict``, ``evaluate``, ``loss``): it is checked there,
moved to the model's device once, and never written to. Inside a training step everything stays
on the device; figures come to the host once per epoch (or every ``sync_every`` epochs).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import array_api_compat
import numpy as np

from nnx.backend import Backend, get_backend, to_numpy
from nnx.callbacks import Callback, EarlyStopping, History
from nnx.cuda import fast_loss, translate_memory_errors
from nnx.layers import Dense
from nnx.losses import Loss, default_loss, get_loss
from nnx.optimizers import Optimizer, get_optimizer, get_schedule

_PREDICT_ELEMENTS = 1 << 24  # rows per predict chunk = this / widest layer


class NonFiniteLossError(ValueError, FloatingPointError):
    """The training loss became NaN or inf; the weights were rolled back."""


def _check_number(value: Any, name: str, where: str, *, minimum: float = 0.0,
                  strict: bool = False) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{where}: {name} must be a number; received {value!r}.") from None
    if not math.isfinite(number) or number < minimum or (strict and number == minimum):
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        raise ValueError(f"{where}: {name} must be finite and {bound}; received {name}={value!r}.")
    return number


def _check_count(value: Any, name: str, where: str, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{where}: {name} must be an integer >= 1; received {name}={value!r}.")
    return int(value)


def _row_slices(n: int, step: int) -> list[slice]:
    """Row ranges of at most `step` rows (in bounds, as array-api-strict requires)."""
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def _dtype_name(dtype: Any) -> str:
    try:
        name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    except TypeError:
        name = repr(dtype)
    if name not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64'; received dtype={dtype!r}.")
    return name


class Sequential:
    """Layers applied in order, trained by backpropagation.

    Parameters
    ----------
    layers : sequence of Dense
        Kept as ``model.layers`` (the same objects). Sizes must chain: each layer's ``n_in``
        equals the previous layer's ``n_out``.
    loss : str or Loss, optional
        ``cross_entropy`` (softmax output), ``binary_cross_entropy`` (sigmoid output) or
        ``mse``. Default: implied by the last activation (softmax -> cross_entropy,
        sigmoid -> binary_cross_entropy, otherwise mse).
    l2 : float
        L2 strength: the objective is the mean data loss plus ``(l2 / 2) * sum(||W||^2)`` over
        the weight matrices (biases excluded). ``fit(l2=...)`` changes it.
    dtype : {'float32', 'float64'}
        Every array the model makes has this dtype.
    seed : int or None
        Seeds the NumPy generator that draws the initial weights and the minibatch order.
    backend : str or Backend, optional
        Default: the innermost ``nnx.use_backend`` block, else ``NNX_BACKEND``, else numpy.
    device : optional
        A device of that backend (``'device1'`` for array_api_strict, ``'cuda:1'`` for torch).
    """

    def __init__(self, layers: Sequence[Dense], *, loss: str | Loss | None = None,
                 l2: float = 0.0, dtype: Any = "float32", seed: int | None = 0,
                 backend: str | Backend | None = None, device: Any = None) -> None:
        layers = list(layers)
        if not layers:
            raise ValueError("Sequential: layers must hold at least one layer; received none.")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Dense):
                raise TypeError(f"Sequential: layers[{i}] must be an nnx.Dense; received "
                                f"{type(layer).__name__}.")
        for i in range(1, len(layers)):
            if layers[i].n_in != layers[i - 1].n_out:
                raise ValueError(
                    f"Sequential: layer sizes do not chain: layers[{i - 1}] {layers[i - 1]!r} "
                    f"gives {layers[i - 1].n_out} outputs but layers[{i}] {layers[i]!r} expects "
                    f"{layers[i].n_in} inputs."
                )
        if len({id(layer) for layer in layers}) != len(layers):
            raise ValueError("Sequential: the same layer object appears twice in layers.")
        output = layers[-1].activation.name
        loss_obj = get_loss(loss) if loss is not None else default_loss(output)
        if loss_obj.fused_activation is not None and loss_obj.fused_activation != output:
            raise ValueError(
                f"Sequential: loss={loss_obj.name!r} needs a {loss_obj.fused_activation} output "
                f"layer; the last layer has activation={output!r}."
            )
        if output == "softmax" and layers[-1].n_out < 2:
            raise ValueError("Sequential: a softmax output needs n_out >= 2; use a sigmoid "
                             "output with one unit for two classes.")
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        elif isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError("Sequential: seed must be an integer >= 0 or None; "
                             f"received {seed!r}.")
        self.backend = get_backend(backend, device)
        self.dtype_name = _dtype_name(dtype)
        self.dtype = self.backend.dtype(self.dtype_name)
        self.l2 = _check_number(l2, "l2", "Sequential")
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)
        for i, layer in enumerate(layers):
            if not layer.built:
                layer.build(self.backend, self.dtype_name, self.rng)
            elif (layer.backend.name != self.backend.name or layer.dtype != self.dtype
                  or str(layer.backend.device) != str(self.backend.device)):
                raise ValueError(
                    f"Sequential: layers[{i}] was built for {layer.backend.name} on "
                    f"{layer.backend.device} in {layer.dtype}; this model uses "
                    f"{self.backend.name} on {self.backend.device} in {self.dtype_name}. "
                    "Pass unbuilt layers, or build them with the model's backend and dtype."
                )
        self.layers = layers
        # On CuPy, the fused loss-and-gradient kernel (the same function: tests/test_cuda.py).
        self.loss_fn = fast_loss(loss_obj, self.backend)
        self.optimizer: Optimizer | None = None
        self.history: History | None = None
        self.epochs_trained = 0
        self.stop_training = False
        self._fused = loss_obj.fused_activation is not None
        self._task = {"softmax": "multiclass", "sigmoid": "binary"}.get(output, "regression")
        if self._task == "regression" and loss_obj.classification:
            raise ValueError(f"Sequential: loss={loss_obj.name!r} is for classification outputs.")

    # -- description --------------------------------------------------------------------------
    def __repr__(self) -> str:
        inner = ", ".join(repr(layer) for layer in self.layers)
        return (f"Sequential([{inner}], loss={self.loss_fn.name!r}, l2={self.l2}, "
                f"dtype={self.dtype_name!r}, backend={self.backend.name!r})")

    @property
    def xp(self) -> Any:
        return self.backend.xp

    @property
    def n_in(self) -> int:
        return self.layers[0].n_in

    @property
    def n_out(self) -> int:
        return self.layers[-1].n_out

    @property
    def n_params(self) -> int:
        return sum(layer.n_in * layer.n_out + layer.n_out for layer in self.layers)

    def summary(self) -> str:
        rows = [f"{i}: {layer!r}  params={layer.n_in * layer.n_out + layer.n_out}"
                for i, layer in enumerate(self.layers)]
        rows.append(f"loss={self.loss_fn.name}, l2={self.l2}, dtype={self.dtype_name}, "
                    f"backend={self.backend.name} on {self.backend.device}, "
                    f"{self.n_params} parameters")
        return "\n".join(rows)

    def get_config(self) -> dict[str, Any]:
        """The architecture and settings, as JSON-ready values (no arrays)."""
        return {
            "layers": [{"n_in": layer.n_in, "n_out": layer.n_out,
                        "activation": layer.activation.name, "init": layer.init}
                       for layer in self.layers],
            "loss": self.loss_fn.name,
            "l2": self.l2,
            "dtype": self.dtype_name,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], **kwargs: Any) -> Sequential:
        layers = [Dense(spec["n_in"], spec["n_out"], spec["activation"], spec.get("init", "auto"))
                  for spec in config["layers"]]
        return cls(layers, loss=config.get("loss"), l2=config.get("l2", 0.0),
                   dtype=config.get("dtype", "float32"), seed=config.get("seed", 0), **kwargs)

    # -- parameters ---------------------------------------------------------------------------
    def get_params(self) -> list[Any]:
        """``[W0, b0, W1, b1, ...]``: the arrays themselves. nnx never writes into them (every
        update makes new arrays), so holding them is a snapshot; do not write into them."""
        return [p for layer in self.layers for p in (layer._W, layer._b)]

    def set_params(self, params: Sequence[Any]) -> None:
        """Put back arrays from :meth:`get_params` (of this model, unchecked: no copies)."""
        for layer, W, b in zip(self.layers, params[0::2], params[1::2]):
            layer._W, layer._b = W, b

    def get_weights(self) -> list[np.ndarray]:
        """Copies of ``[W0, b0, W1, b1, ...]`` as NumPy arrays on the host."""
        return [np.array(to_numpy(p)) for p in self.get_params()]

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Assign ``[W0, b0, ...]`` (any array or list), checked, all or nothing."""
        weights = list(weights)
        if len(weights) != 2 * len(self.layers):
            raise ValueError(f"set_weights: expected {2 * len(self.layers)} arrays "
                             f"([W0, b0, ...]); received {len(weights)}.")
        probe = [Dense(layer.n_in, layer.n_out, layer.activation) for layer in self.layers]
        for layer, fresh in zip(self.layers, probe):
            fresh.backend, fresh.dtype, fresh._W = layer.backend, layer.dtype, layer._W
        for fresh, W, b in zip(probe, weights[0::2], weights[1::2]):
            fresh.W, fresh.b = W, b  # validates and copies; raises before anything changes
        self.set_params([p for fresh in probe for p in (fresh._W, fresh._b)])

    # -- the data edge ------------------------------------------------------------------------
    def _host_or_device(self, data: Any, name: str, where: str) -> Any:
        """`data` as an array: device arrays of this backend stay where they are, anything
        else becomes a NumPy array on the host (checked for being numeric)."""
        if self.backend.owns(data):
            return data
        if array_api_compat.is_array_api_obj(data):
            data = to_numpy(data)
        try:
            array = np.asarray(data)
        except (ValueError, TypeError) as exc:
            raise TypeError(f"{where}: {name} must be a numeric array; could not convert "
                            f"{type(data).__name__} ({exc}).") from None
        if array.dtype.kind not in "biuf":
            raise TypeError(
                f"{where}: {name} must be numeric (bool, integer or real floating); received "
                f"dtype {array.dtype}. Convert strings or objects to numbers first."
            )
        return array

    def _check_finite(self, array: Any, name: str, where: str) -> None:
        xp = array_api_compat.array_namespace(array)
        if xp.isdtype(array.dtype, "real floating") and not bool(xp.all(xp.isfinite(array))):
            raise ValueError(f"{where}: {name} contains NaN or inf; remove or impute those "
                             "values first.")

    def _as_X(self, X: Any, where: str, name: str = "X") -> Any:
        array = self._host_or_device(X, name, where)
        xp = array_api_compat.array_namespace(array)
        if not xp.isdtype(array.dtype, ("bool", "integral", "real floating")):
            raise TypeError(f"{where}: {name} must be numeric; received dtype {array.dtype}.")
        if array.ndim != 2:
            raise ValueError(f"{where}: {name} must be 2-D, shape (n_samples, n_features); "
                             f"received {array.ndim}-D shape {tuple(array.shape)}.")
        if array.shape[0] == 0:
            raise ValueError(f"{where}: {name} is empty (0 samples); expected at least one row.")
        if array.shape[1] != self.n_in:
            raise ValueError(f"{where}: {name} has {array.shape[1]} features; the model expects "
                             f"{self.n_in} (layers[0] is {self.layers[0]!r}).")
        self._check_finite(array, name, where)
        return self.backend.asarray(array, dtype=self.dtype)

    def _as_y(self, y: Any, n: int, where: str, name: str = "y") -> tuple[Any, Any]:
        """Check targets and encode them: ``(Y, labels)`` on the device, where ``Y`` is what
        the loss compares against and ``labels`` what accuracy counts (None for regression)."""
        array = self._host_or_device(y, name, where)
        xp_in = array_api_compat.array_namespace(array)
        k = self.n_out
        if not xp_in.isdtype(array.dtype, ("bool", "integral", "real floating")):
            raise TypeError(f"{where}: {name} must be numeric; received dtype {array.dtype}.")
        if array.ndim == 0 or array.ndim > 2:
            raise ValueError(f"{where}: {name} must be 1-D or 2-D; received shape "
                             f"{tuple(array.shape)}.")
        if array.shape[0] != n:
            raise ValueError(f"{where}: X has {n} samples but {name} has {array.shape[0]}; they "
                             "must have the same length.")
        self._check_finite(array, name, where)
        if array.ndim == 2 and array.shape[1] == 1 and (k == 1 or self._task == "multiclass"):
            array = xp_in.reshape(array, (n,))
        want = (n,) if self._task == "multiclass" or k == 1 else (n, k)
        if tuple(array.shape) not in {want, (n, k)} or (self._task == "multiclass"
                                                         and array.ndim != 1):
            expected = "(n_samples,) integer labels" if self._task == "multiclass" else (
                f"(n_samples,) or (n_samples, {k})" if k == 1 else f"(n_samples, {k})")
            raise ValueError(f"{where}: {name} must have shape {expected}; received shape "
                             f"{tuple(array.shape)}.")
        if self._task != "regression":
            n_classes = k if self._task == "multiclass" else 2
            if xp_in.isdtype(array.dtype, "real floating") and not bool(
                    xp_in.all(array == xp_in.round(array))):
                raise ValueError(f"{where}: {name} must hold integer class labels; received "
                                 "non-integer values (for regression use a non-softmax, "
                                 "non-sigmoid output).")
            low, high = float(xp_in.min(array)), float(xp_in.max(array))
            if low < 0 or high >= n_classes:
                raise ValueError(f"{where}: {name} labels must be in [0, {n_classes}) for "
                                 f"{self.layers[-1]!r}; received min {low:g}, max {high:g}.")
        xp = self.xp
        if self._task == "multiclass":
            labels = self.backend.asarray(array, dtype=xp.int64)
            classes = xp.arange(k, device=self.backend.device)
            Y = xp.astype(xp.reshape(labels, (n, 1)) == classes, self.dtype)
            return Y, labels
        Y = xp.reshape(self.backend.asarray(array, dtype=self.dtype), (n, k))
        return Y, (Y if self._task == "binary" else None)

    # -- forward and backward -----------------------------------------------------------------
    def _logits(self, X: Any) -> Any:
        a = X
        for layer in self.layers[:-1]:
            a = layer.forward(a)
        return self.layers[-1].logits(a)

    def _output(self, X: Any) -> Any:
        """What the loss sees: logits for a fused loss, the activation otherwise."""
        if self._fused:
            return self._logits(X)
        a = X
        for layer in self.layers:
            a = layer.forward(a)
        return a

    def forward(self, X: Any) -> Any:
        """The network's output ``activation(... (X @ W0 + b0) ...)`` on the device; caches
        what :meth:`backward` needs.

        Parameters
        ----------
        X : array, shape (n_samples, n_in)
        """
        a = self._as_X(X, "Sequential.forward")
        for layer in self.layers:
            a = layer.forward(a)
        return a

    def backward(self, grad: Any) -> Any:
        """Backpropagate d(loss)/d(output) through every layer after :meth:`forward`; fills
        each layer's ``dW`` and ``db`` and returns d(loss)/dX.

        Parameters
        ----------
        grad : array, shape (n_samples, n_out)
        """
        for layer in reversed(self.layers):
            grad = layer.backward(grad)
        return grad

    def _backprop(self, out_grad: Any) -> None:
        layers = self.layers
        last = len(layers) - 1
        grad = out_grad
        for i in range(last, -1, -1):
            through = not (i == last and self._fused)
            grad = layers[i].backward(grad, through_activation=through, input_grad=i > 0)

    def _l2_term(self) -> Any:
        """``(l2 / 2) * sum ||W||^2`` as a 0-d device array."""
        total = None
        for layer in self.layers:
            # A dot product of the flattened weights: one BLAS call, not a multiply and a sum.
            w = self.xp.reshape(layer._W, (-1,))
            total = w @ w if total is None else total + w @ w
        return (self.l2 / 2) * total

    def _objective(self, out: Any, Y: Any, grad: bool, scale: float = 1.0) -> tuple[Any, Any]:
        loss, out_grad = self.loss_fn.fn(self.xp, out, Y, grad=grad, scale=scale)
        if self.l2:
            loss = loss + self._l2_term()
        return loss, out_grad

    def _decay(self) -> list[float]:
        return [self.l2, 0.0] * len(self.layers)

    def value_and_grad(self, X: Any, y: Any) -> tuple[float, list[Any]]:
        """The objective (as :meth:`loss`) and its gradient ``[dW0, db0, dW1, ...]`` on the
        device, without changing the weights."""
        Xd = self._as_X(X, "Sequential.value_and_grad")
        Y, _ = self._as_y(y, Xd.shape[0], "Sequential.value_and_grad")
        loss, out_grad = self._objective(self._output(Xd), Y, grad=True)
        self._backprop(out_grad)
        grads = []
        for layer in self.layers:
            grads += [layer.dW + self.l2 * layer._W if self.l2 else layer.dW, layer.db]
        return float(loss), grads

    def train_step(self, X: Any, Y: Any) -> tuple[Any, Any]:
        """One gradient step on device arrays ``X`` and encoded targets ``Y`` (as ``fit``
        makes them). Returns ``(loss, output)`` on the device, with no host round trip.

        Each layer's ``dW``/``db`` then holds the data gradient times
        ``optimizer.grad_scale()`` (the learning rate for plain SGD, else 1).
        """
        optimizer = self.optimizer
        out = self._output(X)
        loss, out_grad = self._objective(out, Y, grad=True, scale=optimizer.grad_scale())
        self._backprop(out_grad)
        grads = [g for layer in self.layers for g in (layer.dW, layer.db)]
        self.set_params(optimizer.step(self.xp, self.get_params(), grads, self._decay()))
        return loss, out

    def _correct(self, out: Any, labels: Any) -> Any:
        """How many predictions in the batch are right (a 0-d device array)."""
        xp = self.xp
        if self._task == "multiclass":
            hits = xp.argmax(out, axis=1) == labels
        else:
            threshold = 0 if self._fused else 0.5
            hits = (out >= threshold) == (labels > 0.5)
            return xp.sum(xp.astype(hits, self.dtype)) / labels.shape[1]
        return xp.sum(xp.astype(hits, self.dtype))

    # -- fit ----------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any, epochs: int = 1, lr: float | None = None,
            l2: float | None = None, batch_size: int | None = None,
            optimizer: str | Optimizer | None = None, schedule: Any = None,
            shuffle: bool = True, validation_data: tuple[Any, Any] | None = None,
            validation_split: float = 0.0, callbacks: Iterable[Callback] = (),
            early_stopping: int | EarlyStopping | None = None, verbose: bool | None = None,
            sync_every: int = 1) -> History:
        """Train by minibatch (or, with ``batch_size=None``, full-batch) gradient descent,
        continuing from the current weights.

        Parameters
        ----------
        X : array, shape (n_samples, n_in)
            NumPy array, list, or array of the model's backend.
        y : array, shape (n_samples,) or (n_samples, n_out)
            Integer labels for a softmax or sigmoid output, values otherwise.
        epochs : int
            Passes over the data. Full batch: one epoch is one update.
        lr : float, optional
            Learning rate (default 0.01 for a new SGD; else the current optimizer's).
        l2 : float, optional
            L2 strength; kept on the model (``model.l2``) for later fits and :meth:`loss`.
        batch_size : int, optional
            None: full batch (the tutorials' method).
        optimizer : {'sgd', 'momentum', 'nesterov', 'adam'} or Optimizer, optional
            Default: the model's current optimizer (its state carries over), else SGD.
        schedule : {'step', 'exponential', 'inverse_time'} or Schedule or callable, optional
            Learning-rate multiplier per epoch.
        shuffle : bool
            Reshuffle minibatches every epoch (from the model's seeded generator).
        validation_data : (X_val, y_val), optional
        validation_split : float
            Hold out this fraction of (X, y), drawn with the model's generator.
        callbacks : iterable of Callback
        early_stopping : int or EarlyStopping, optional
            An int is the patience on ``val_loss`` (``loss`` without validation data), with the
            best weights restored at the end.
        verbose : bool, optional
            Progress bar (tqdm). Default: on when stderr is a terminal.
        sync_every : int
            Bring the epoch figures to the host every this many epochs (each transfer waits
            for the device). Callbacks and validation need 1.

        Returns
        -------
        History
        """
        where = "Sequential.fit"
        epochs = _check_count(epochs, "epochs", where)
        batch_size = _check_count(batch_size, "batch_size", where, allow_none=True)
        sync_every = _check_count(sync_every, "sync_every", where)
        new_l2 = self.l2 if l2 is None else _check_number(l2, "l2", where)
        split = _check_number(validation_split, "validation_split", where)
        if split >= 1:
            raise ValueError(f"{where}: validation_split must be in [0, 1); received "
                             f"validation_split={validation_split!r}.")
        if split and validation_data is not None:
            raise ValueError(f"{where}: give validation_data or validation_split, not both.")
        opt, opt_changes = self._make_optimizer(optimizer, lr, schedule, where)
        callbacks = list(callbacks)
        for i, cb in enumerate(callbacks):
            if not isinstance(cb, Callback):
                raise TypeError(f"{where}: callbacks[{i}] must be an nnx.Callback; received "
                                f"{type(cb).__name__}.")
        if isinstance(early_stopping, EarlyStopping):
            callbacks.append(early_stopping)
        elif early_stopping is not None:
            if isinstance(early_stopping, bool) or not isinstance(early_stopping,
                                                                  (int, np.integer)):
                raise TypeError(f"{where}: early_stopping must be a patience (an integer >= 0) "
                                "or an nnx.EarlyStopping; received "
                                f"{early_stopping!r} ({type(early_stopping).__name__}).")
            callbacks.append(EarlyStopping(patience=int(early_stopping)))

        Xd = self._as_X(X, where)
        Y, labels = self._as_y(y, Xd.shape[0], where)
        val = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise TypeError(f"{where}: validation_data must be a pair (X_val, y_val); "
                                f"received {type(validation_data).__name__}.")
            Xv = self._as_X(validation_data[0], where, "validation_data[0]")
            val = (Xv, *self._as_y(validation_data[1], Xv.shape[0], where, "validation_data[1]"))
        elif split:
            n_val = int(round(split * Xd.shape[0]))
            if n_val < 1 or n_val >= Xd.shape[0]:
                raise ValueError(f"{where}: validation_split={split} of {Xd.shape[0]} samples "
                                 "leaves no validation or no training data.")
            order = self.backend.asarray(self.rng.permutation(Xd.shape[0]))
            xp = self.xp
            val_idx, train_idx = order[:n_val], order[n_val:]
            val = (xp.take(Xd, val_idx, axis=0), xp.take(Y, val_idx, axis=0),
                   None if labels is None else xp.take(labels, val_idx, axis=0))
            Xd, Y = xp.take(Xd, train_idx, axis=0), xp.take(Y, train_idx, axis=0)
            labels = None if labels is None else xp.take(labels, train_idx, axis=0)

        # Everything is checked: only now does the model change.
        for name, value in opt_changes.items():
            setattr(opt, name, value)
        self.optimizer, self.l2, self.stop_training = opt, new_l2, False
        if callbacks or val is not None:
            sync_every = 1
        history = History()
        self.history = history
        trainer = _Trainer(self, Xd, Y, labels, val, epochs, batch_size, shuffle, callbacks,
                           verbose, sync_every)
        with translate_memory_errors("Sequential.fit", lambda: self._memory_shapes(
                trainer.batch), self.backend, self.dtype_name):
            return trainer.run()

    def _memory_shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
        """The per-batch arrays of a training step, for an out-of-memory message."""
        shapes = {"X batch": (batch, self.n_in)}
        for i, layer in enumerate(self.layers):
            shapes[f"layers[{i}] W"] = (layer.n_in, layer.n_out)
            shapes[f"layers[{i}] output"] = (batch, layer.n_out)
        return shapes

    def capture_step(self, X: Any, y: Any, optimizer: Any = None, lr: float | None = None):
        """One full-batch training step captured as a CUDA graph (cupy only); see
        :func:`nnx.cuda.capture_step`. ``loss = step()`` trains; ``step.sync_to_model()``."""
        from nnx.cuda import capture_step

        return capture_step(self, X, y, optimizer=optimizer, lr=lr)

    def _make_optimizer(self, optimizer: Any, lr: Any, schedule: Any,
                        where: str) -> tuple[Optimizer, dict[str, Any]]:
        """The optimizer ``fit`` will use, and the settings to give it once every argument
        and the data are checked (a fit that raises leaves the model's optimizer as it was)."""
        if lr is not None:
            lr = _check_number(lr, "lr", where, strict=True)
        if optimizer is None and self.optimizer is not None:
            changes: dict[str, Any] = {}
            if lr is not None:
                changes["lr"] = lr
            if schedule is not None:
                changes["schedule"] = get_schedule(schedule)
            return self.optimizer, changes
        return get_optimizer(optimizer, lr=lr, schedule=schedule), {}

    # -- inference ----------------------------------------------------------------------------
    def _chunks(self, n: int, batch_size: int | None) -> range:
        if batch_size is None:
            widest = max(max(layer.n_in, layer.n_out) for layer in self.layers)
            batch_size = max(1, _PREDICT_ELEMENTS // widest)
        return range(0, n, batch_size)

    def _batched(self, X: Any, batch_size: int | None, fn: Any) -> Any:
        xp = self.xp
        n = X.shape[0]
        step = self._chunks(n, batch_size).step
        with translate_memory_errors("Sequential.predict", lambda: self._memory_shapes(
                min(n, step)), self.backend, self.dtype_name):
            if n <= step:
                return fn(X)
            return xp.concat([fn(X[rows, ...]) for rows in _row_slices(n, step)], axis=0)

    def _proba(self, logits: Any) -> Any:
        return self.layers[-1].activation.forward(self.xp, logits)

    def predict_proba(self, X: Any, batch_size: int | None = None) -> Any:
        """The output layer's activation (class probabilities for softmax and sigmoid
        outputs), shape ``(n_samples, n_out)``, on the model's device; computed in batches."""
        where = "Sequential.predict_proba"
        batch_size = _check_count(batch_size, "batch_size", where, allow_none=True)
        Xd = self._as_X(X, where)
        return self._batched(Xd, batch_size, lambda part: self._proba(self._logits(part)))

    def predict(self, X: Any, batch_size: int | None = None) -> Any:
        """Class labels (int64, shape ``(n_samples,)``; ``(n_samples, n_out)`` for a sigmoid
        output of several units) for classifiers, the outputs for regression; on the device."""
        where = "Sequential.predict"
        batch_size = _check_count(batch_size, "batch_size", where, allow_none=True)
        Xd = self._as_X(X, where)
        xp = self.xp

        def labels(part: Any) -> Any:
            logits = self._logits(part)
            if self._task == "multiclass":
                return xp.astype(xp.argmax(logits, axis=1), xp.int64)
            if self._task == "binary":
                hits = xp.astype(logits >= 0, xp.int64)
                return xp.reshape(hits, (-1,)) if self.n_out == 1 else hits
            return self._proba(logits)

        return self._batched(Xd, batch_size, labels)

    def _sums(self, Xd: Any, Y: Any, labels: Any, batch_size: int | None) -> tuple[Any, Any]:
        """Summed data loss and correct count over the data, in batches, on the device."""
        n = Xd.shape[0]
        total, correct = None, None
        step = self._chunks(n, batch_size).step
        for rows in _row_slices(n, step):
            part, Yp = Xd[rows, ...], Y[rows, ...]
            out = self._output(part)
            loss, _ = self.loss_fn.fn(self.xp, out, Yp, grad=False)
            loss = loss * part.shape[0]
            total = loss if total is None else total + loss
            if labels is not None:
                hit = self._correct(out, labels[rows, ...])
                correct = hit if correct is None else correct + hit
        return total, correct

    def _evaluate_device(self, Xd: Any, Y: Any, labels: Any,
                         batch_size: int | None = None) -> dict[str, Any]:
        """The objective and, for classifiers, the *count* of correct predictions (exact in
        the model's dtype; the host divides it by n, so that 193 of 200 reads 0.965 and not
        float32's 0.9649999737)."""
        n = Xd.shape[0]
        total, correct = self._sums(Xd, Y, labels, batch_size)
        out = {"loss": total / n + (self._l2_term() if self.l2 else 0)}
        if correct is not None:
            out["accuracy"] = correct
        return out

    def evaluate(self, X: Any, y: Any, batch_size: int | None = None) -> dict[str, float]:
        """``{'loss': objective, 'accuracy': fraction correct}`` (accuracy for classifiers)."""
        where = "Sequential.evaluate"
        batch_size = _check_count(batch_size, "batch_size", where, allow_none=True)
        Xd = self._as_X(X, where)
        Y, labels = self._as_y(y, Xd.shape[0], where)
        figures = {key: float(value) for key, value in
                   self._evaluate_device(Xd, Y, labels, batch_size).items()}
        if "accuracy" in figures:
            figures["accuracy"] /= Xd.shape[0]
        return figures

    def loss(self, X: Any, y: Any) -> float:
        """The objective ``fit`` minimises: mean data loss plus ``(l2/2) * sum ||W||^2``."""
        return self.evaluate(X, y)["loss"]

    def accuracy(self, X: Any, y: Any) -> float:
        """Fraction of samples classified correctly."""
        if self._task == "regression":
            raise ValueError("Sequential.accuracy: the model is a regressor (its output is "
                             f"{self.layers[-1].activation.name}); use loss() instead.")
        return self.evaluate(X, y)["accuracy"]

    def save(self, path: Any) -> None:
        """Write the model to one ``.npz`` file (see :func:`nnx.save`)."""
        from nnx.io import save

        save(self, path)


class _Trainer:
    """The epoch loop of ``fit``: batches, figures kept on the device, periodic host sync,
    rollback on a non-finite loss, callbacks and progress."""

    def __init__(self, model: Sequential, X: Any, Y: Any, labels: Any, val: Any, epochs: int,
                 batch_size: int | None, shuffle: bool, callbacks: list[Callback],
                 verbose: bool | None, sync_every: int) -> None:
        self.model, self.X, self.Y, self.labels, self.val = model, X, Y, labels, val
        self.epochs, self.shuffle, self.callbacks = epochs, shuffle, callbacks
        self.sync_every = sync_every
        n = X.shape[0]
        self.batch = n if batch_size is None else min(batch_size, n)
        # The figures that reach the host as counts, and what to divide them by.
        self.counted = {"accuracy": n}
        if val is not None:
            self.counted["val_accuracy"] = val[0].shape[0]
        self.verbose = sys.stderr.isatty() if verbose is None else bool(verbose)

    def _epoch_data(self) -> tuple[Any, Any, Any]:
        model, n = self.model, self.X.shape[0]
        if self.batch >= n or not self.shuffle:
            return self.X, self.Y, self.labels
        # The order comes from the model's NumPy generator: identical on every backend.
        order = model.backend.asarray(model.rng.permutation(n))
        xp = model.xp
        X, Y = xp.take(self.X, order, axis=0), xp.take(self.Y, order, axis=0)
        if self.labels is None or self.labels is self.Y:
            return X, Y, (Y if self.labels is self.Y else None)
        return X, Y, xp.take(self.labels, order, axis=0)

    def _run_epoch(self) -> dict[str, Any]:
        model, n, step = self.model, self.X.shape[0], self.batch
        X, Y, labels = self._epoch_data()
        total = correct = None
        for rows in _row_slices(n, step):
            loss, out = model.train_step(X[rows, ...], Y[rows, ...])
            if step < n:
                loss = loss * out.shape[0]
            total = loss if total is None else total + loss
            if labels is not None:
                hit = model._correct(out, labels[rows, ...])
                correct = hit if correct is None else correct + hit
        figures = {"loss": total / n if step < n else total}
        if correct is not None:
            figures["accuracy"] = correct  # a count: _flush divides it on the host
        if self.val is not None:
            for key, value in model._evaluate_device(*self.val).items():
                figures["val_" + key] = value
        return figures

    def _progress(self):
        if not self.verbose:
            return None
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return _PlainProgress(self.epochs)
        return tqdm(total=self.epochs, unit="epoch", desc="fit", leave=True)

    def run(self) -> History:
        model = self.model
        history = model.history
        bar = self._progress()
        # Parameter arrays are never written in place, so holding them is a free snapshot.
        # starts[i]: the parameters at the start of pending epoch i; before: at the start of
        # the epoch preceding the window (the fit's initial parameters for the first window).
        before, before_epoch = model.get_params(), model.epochs_trained
        starts: list[list[Any]] = []
        pending: list[tuple[int, dict[str, Any]]] = []
        for cb in self.callbacks:
            cb.on_train_begin(model)
        # A diverging run is caught below with a clear error: NumPy's own overflow warnings
        # (numpy and array_api_strict compute with NumPy) would only repeat it, once per op.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            try:
                for e in range(self.epochs):
                    epoch = model.epochs_trained
                    model.optimizer.epoch = epoch
                    starts.append(model.get_params())
                    pending.append((epoch, self._run_epoch()))
                    model.epochs_trained += 1
                    last = e == self.epochs - 1
                    if len(pending) >= self.sync_every or last:
                        self._flush(pending, starts, (before, before_epoch), last, bar)
                        before, before_epoch = starts[-1], pending[-1][0]
                        starts, pending = [], []
                        if model.stop_training:
                            history.stopped_epoch = epoch
                            break
            finally:
                if bar is not None:
                    bar.close()
        for cb in self.callbacks:
            cb.on_train_end(model)
        return history

    def _flush(self, pending, starts, before, check_params: bool, bar) -> None:
        """One transfer of the pending epochs' figures; roll back on a non-finite loss."""
        model = self.model
        xp = model.xp
        keys = list(pending[0][1])
        values = [figures[key] for _, figures in pending for key in keys]
        if check_params:
            finite = [xp.all(xp.isfinite(p)) for p in model.get_params()]
            values.append(xp.astype(xp.all(xp.stack(finite)), model.dtype))
        if model.backend.is_accelerator:
            # One transfer for all the figures: each separate one would wait for the device.
            stacked = xp.stack([xp.astype(v, model.dtype) for v in values])
            host = to_numpy(stacked).astype(np.float64).tolist()
        else:
            host = [float(v) for v in values]
        width = len(keys)
        for i, (epoch, _) in enumerate(pending):
            logs = dict(zip(keys, host[i * width:(i + 1) * width]))
            for key, n in self.counted.items():
                if key in logs:
                    logs[key] /= n
            if not math.isfinite(logs["loss"]):
                # Roll back to the weights that gave the last finite loss.
                params, start = (starts[i - 1], pending[i - 1][0]) if i else before
                self._roll_back(params, start,
                                f"the training loss became {logs['loss']} at epoch {epoch}")
            model.history.append(epoch, logs)
            for cb in self.callbacks:
                cb.on_epoch_end(model, epoch, logs)
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items()}, refresh=False)
        if check_params and host[-1] != 1:
            self._roll_back(starts[-1], pending[-1][0],
                            f"the update of epoch {pending[-1][0]} made the weights non-finite")

    def _roll_back(self, params: list[Any], epochs_trained: int, what: str) -> None:
        model = self.model
        model.set_params(params)
        model.epochs_trained = epochs_trained
        if model.optimizer is not None:
            model.optimizer.reset()
        raise NonFiniteLossError(
            f"Sequential.fit: {what} (lr={model.optimizer.rate():g}); the weights were rolled "
            "back to their last values with a finite loss. Try a smaller learning rate (or "
            "scale the inputs)."
        )


class _PlainProgress:
    """Without tqdm: a line every tenth of the run."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.every = total, 0, max(1, total // 10)
        self.postfix: dict[str, str] = {}

    def update(self, n: int) -> None:
        self.done += n
        if self.done % self.every == 0 or self.done == self.total:
            figures = " ".join(f"{k}={v}" for k, v in self.postfix.items())
            print(f"epoch {self.done}/{self.total} {figures}", file=sys.stderr)

    def set_postfix(self, postfix: dict[str, str], refresh: bool = False) -> None:
        self.postfix = postfix

    def close(self) -> None:
        pass
