"""``Sequential``: a stack of layers with forward, backward, a training step, predict and
evaluate.

Data enters at the edge (``encode``, ``fit``, ``predict``, ``evaluate``): it is checked there
(:mod:`nnx._data`), moved to the model's device once, and never written to. Inside a training
step everything stays on the device. What the output means is the model's :mod:`head
<nnx.heads>`; the epoch loop is :mod:`nnx.training`.
"""

from __future__ import annotations

import functools
import math
import operator
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from nnx import _data, _frames
from nnx._validation import check_int, check_real
from nnx.backends import Backend, get_backend, to_numpy
from nnx.callbacks import History
from nnx.errors import InvalidDataError, InvalidParameterError, NonFiniteLossError
from nnx.heads import head_for
from nnx.layers import Layer, layer_from_config
from nnx.losses import Loss, default_loss, get_loss
from nnx.memory import translate_memory_errors
from nnx.optimizers import Optimizer
from nnx.training import FitSettings, Trainer, row_slices, split_validation

__all__ = ["NonFiniteLossError", "Sequential"]

_PREDICT_ELEMENTS = 1 << 24  # rows per predict chunk = this / widest layer


def _dtype_name(dtype: Any) -> str:
    try:
        name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    except TypeError:
        name = repr(dtype)
    if name not in ("float32", "float64"):
        raise InvalidParameterError(
            f"dtype must be 'float32' or 'float64'; received dtype={dtype!r}.")
    return name


def _scoped(method: Any) -> Any:
    """Run `method` inside the backend's scope for the model's dtype (JAX's x64 mode for a
    float64 model, the model's CUDA device current on CuPy; nothing elsewhere)."""

    @functools.wraps(method)
    def wrapper(self: Sequential, *args: Any, **kwargs: Any) -> Any:
        if not self.backend.has_scope:  # most backends: no context to enter on a hot path
            return method(self, *args, **kwargs)
        with self.backend.scope(self.dtype_name):
            return method(self, *args, **kwargs)

    return wrapper


class Sequential:
    """Layers applied in order, trained by backpropagation.

    Parameters
    ----------
    layers : sequence of Layer
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

    def __init__(self, layers: Sequence[Layer], *, loss: str | Loss | None = None,
                 l2: float = 0.0, dtype: Any = "float32", seed: int | None = 0,
                 backend: str | Backend | None = None, device: Any = None) -> None:
        where = "Sequential"
        layers = list(layers)
        if not layers:
            raise InvalidParameterError("Sequential: layers must hold at least one layer; "
                                        "received none.")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise InvalidParameterError(f"Sequential: layers[{i}] must be an nnx layer "
                                            f"(nnx.Dense); received {type(layer).__name__}.")
        for i in range(1, len(layers)):
            if layers[i].n_in != layers[i - 1].n_out:
                raise InvalidParameterError(
                    f"Sequential: layer sizes do not chain: layers[{i - 1}] {layers[i - 1]!r} "
                    f"gives {layers[i - 1].n_out} outputs but layers[{i}] {layers[i]!r} expects "
                    f"{layers[i].n_in} inputs.")
        if len({id(layer) for layer in layers}) != len(layers):
            raise InvalidParameterError("Sequential: the same layer object appears twice in "
                                        "layers.")
        output = layers[-1].activation.name
        loss_obj = get_loss(loss) if loss is not None else default_loss(output)
        if loss_obj.fused_activation is not None and loss_obj.fused_activation != output:
            raise InvalidParameterError(
                f"Sequential: loss={loss_obj.name!r} needs a {loss_obj.fused_activation} output "
                f"layer; the last layer has activation={output!r}.")
        if output == "softmax" and layers[-1].n_out < 2:
            raise InvalidParameterError("Sequential: a softmax output needs n_out >= 2; use a "
                                        "sigmoid output with one unit for two classes.")
        seed = check_int(seed, "seed", where, low=0, allow_none=True)
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        l2 = check_real(l2, "l2", where, low=0)
        self.backend = get_backend(backend, device)
        self.dtype_name = _dtype_name(dtype)
        self.dtype = self.backend.dtype(self.dtype_name)
        self.l2 = l2
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)
        for i, layer in enumerate(layers):
            if not layer.built:
                layer.build(self.backend, self.dtype_name, self.rng)
            elif layer.backend != self.backend or layer.dtype != self.dtype:
                raise InvalidParameterError(
                    f"Sequential: layers[{i}] was built for {layer.backend.name} on "
                    f"{layer.backend.device} in {layer.dtype}; this model uses "
                    f"{self.backend.name} on {self.backend.device} in {self.dtype_name}. "
                    "Pass unbuilt layers, or build them with the model's backend and dtype.")
        self.layers = layers
        # Where each layer's parameters sit in parameters(), and which ones L2 applies to:
        # fixed by the architecture, so worked out once, not on every step.
        self._slots: list[tuple[Layer, int, int]] = []
        self._decays: list[bool] = []
        for layer in layers:
            start = len(self._decays)
            self._decays += list(layer.decay().values())
            self._slots.append((layer, start, len(self._decays)))
        # What gradient descent updates: the trainable layers' parameters, in order. A layer
        # needs its input's gradient only if a trainable layer comes before it.
        self._trained = [layer for layer in layers if layer.trainable]
        self._trained_slots: list[tuple[Layer, int, int]] = []
        self._trained_decays: list[bool] = []
        for layer in self._trained:
            start = len(self._trained_decays)
            self._trained_decays += list(layer.decay().values())
            self._trained_slots.append((layer, start, len(self._trained_decays)))
        self._input_grad = [any(layer.trainable for layer in layers[:i])
                            for i in range(len(layers))]
        # The backend's fast path for the loss (fused kernels on CuPy), if it has one.
        self.loss_function: Loss = self.backend.fast_loss(loss_obj)
        self._matmul = self.backend.matmul_function()
        self.head = head_for(output, layers[-1].n_out, loss_obj.fused_activation is not None)
        if not self.head.classifier and loss_obj.classification:
            raise InvalidParameterError(f"Sequential: loss={loss_obj.name!r} is for "
                                        "classification outputs.")
        # What the data looked like, where a caller (the nnx command, nnx.sklearn) records it:
        # the classes the output units stand for, and the features' names in order. Saved
        # with the model.
        self.classes: list[Any] | None = None
        self.feature_names: list[str] | None = None
        self.optimizer: Optimizer | None = None
        self.history: History | None = None
        self.epochs_trained = 0
        self.stop_training = False

    # -- description --------------------------------------------------------------------------
    def __repr__(self) -> str:
        inner = ", ".join(repr(layer) for layer in self.layers)
        return (f"Sequential([{inner}], loss={self.loss_function.name!r}, l2={self.l2}, "
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
        return sum(layer.n_params for layer in self.layers)

    def summary(self) -> str:
        rows = [f"{i}: {layer!r}  params={layer.n_params}" for i, layer in enumerate(self.layers)]
        rows.append(f"loss={self.loss_function.name}, l2={self.l2}, dtype={self.dtype_name}, "
                    f"backend={self.backend.name} on {self.backend.device_label()}, "
                    f"{self.n_params} parameters")
        return "\n".join(rows)

    def get_config(self) -> dict[str, Any]:
        """The architecture and settings, as JSON-ready values (no arrays)."""
        return {
            "layers": [{"type": layer.type_name, "config": layer.get_config()}
                       for layer in self.layers],
            "loss": self.loss_function.name,
            "l2": self.l2,
            "dtype": self.dtype_name,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], **kwargs: Any) -> Sequential:
        """A new model with the architecture of :meth:`get_config` (fresh weights)."""
        layers = []
        for spec in config["layers"]:
            if "type" not in spec:  # format version 1: Dense layers' settings, no type
                spec = {"type": "Dense", "config": spec}
            layers.append(layer_from_config(spec))
        return cls(layers, loss=config.get("loss"), l2=config.get("l2", 0.0),
                   dtype=config.get("dtype", "float32"), seed=config.get("seed", 0), **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        # The layers drop the last step's caches; the history and optimizer state stay.
        return dict(self.__dict__)

    def __reduce_ex__(self, protocol: Any) -> Any:
        if not self.backend.has_scope:
            return super().__reduce_ex__(protocol)
        # A backend with a scope (JAX's x64 mode, CuPy's current device) rebuilds its arrays
        # as the scope in force says: a float64 JAX array unpickled outside x64 mode comes
        # back float32. The state is pickled on its own and loaded inside the model's scope.
        import pickle

        return _unpickle_in_scope, (type(self), self.backend, self.dtype_name,
                                    pickle.dumps(self.__getstate__(), protocol))

    def __deepcopy__(self, memo: dict[int, Any]) -> Sequential:
        # Not through pickle (a schedule may be a lambda), but in the scope, as unpickling.
        import copy

        model = type(self).__new__(type(self))
        memo[id(self)] = model
        with self.backend.scope(self.dtype_name):
            for key, value in self.__getstate__().items():
                model.__dict__[key] = copy.deepcopy(value, memo)
        return model

    # -- parameters ---------------------------------------------------------------------------
    def parameters(self) -> list[Any]:
        """``[W0, b0, W1, b1, ...]``: the device arrays themselves. nnx never writes into
        them (every update makes new arrays), so holding them is a snapshot; do not write
        into them."""
        return [p for layer in self.layers for p in layer.params().values()]

    def assign_parameters(self, params: Sequence[Any]) -> None:
        """Put back arrays from :meth:`parameters` of this model: the same backend, dtype
        and shapes (checked, cheaply: no values are read) and not copied (use
        :meth:`set_weights` for anything else: lists, NumPy, another backend's arrays)."""
        if not isinstance(params, list):
            params = list(params)
        current = self.parameters()
        if len(params) != len(current):
            raise InvalidParameterError(
                f"Sequential.assign_parameters: params must hold {len(current)} arrays "
                f"([W0, b0, ...]); received {len(params)}.")
        for i, (p, q) in enumerate(zip(params, current)):
            if not self.backend.owns(p) or p.dtype != q.dtype or tuple(p.shape) != tuple(q.shape):
                raise InvalidParameterError(
                    f"Sequential.assign_parameters: params[{i}] must be a "
                    f"{self.backend.name} array of shape {tuple(q.shape)} and dtype "
                    f"{self.dtype_name}; received {type(p).__name__} of shape "
                    f"{tuple(getattr(p, 'shape', ()))} and dtype {getattr(p, 'dtype', None)} "
                    "(set_weights converts and copies).")
        for layer, start, stop in self._slots:
            layer.assign(params[start:stop])

    def get_weights(self) -> list[np.ndarray]:
        """Copies of ``[W0, b0, W1, b1, ...]`` as NumPy arrays on the host."""
        return [np.array(to_numpy(p)) for p in self.parameters()]

    @_scoped
    def set_weights(self, weights: Sequence[Any]) -> None:
        """Assign ``[W0, b0, ...]`` (any array or list), checked and copied, all or nothing."""
        weights = list(weights)
        expected = len(self.parameters())
        if len(weights) != expected:
            raise InvalidParameterError(f"set_weights: expected {expected} arrays ([W0, b0, "
                                        f"...]); received {len(weights)}.")
        checked, i = [], 0
        for layer in self.layers:
            names = list(layer.params())
            checked.append(layer.checked_params(dict(zip(names, weights[i:i + len(names)]))))
            i += len(names)
        for layer, params in zip(self.layers, checked):  # raises before anything changes
            layer.assign(params)

    def _decay(self) -> list[float]:
        """The L2 strength on each trained parameter (the model's l2 for weights, else 0)."""
        l2 = self.l2
        return [l2 if decays else 0.0 for decays in self._trained_decays]

    def trained_parameters(self) -> list[Any]:
        """The parameters gradient descent updates (those of trainable layers), in order:
        what the optimizer's state lines up with."""
        return [p for layer in self._trained for p in layer.params().values()]

    def assign_trained_parameters(self, params: Sequence[Any]) -> None:
        """Put back arrays from :meth:`trained_parameters` (unchecked, not copied)."""
        if not isinstance(params, list):
            params = list(params)
        for layer, start, stop in self._trained_slots:
            layer.assign(params[start:stop])

    # -- the data edge ------------------------------------------------------------------------
    def _as_X(self, X: Any, where: str, name: str = "X") -> Any:
        if _frames.is_frame(X):  # columns found by name once the model knows the names
            X, _ = _frames.columns_in_order(X, self.feature_names, where, name)
        return _data.check_X(self.backend, self.dtype, self.dtype_name, X, self.n_in,
                             self.layers[0], where, name)

    def _as_y(self, y: Any, n: int, where: str, name: str = "y",
              classes: Any = "model") -> tuple[Any, Any]:
        y = self._codes(y, self.classes if classes == "model" else classes, where, name)
        return _data.check_y(self.backend, self.dtype, self.dtype_name, self.head, y, n,
                             self.layers[-1], where, name)

    @property
    def _n_classes(self) -> int:
        """How many classes the output stands for (0: not single-label classification)."""
        if self.head.name == "multiclass":
            return self.n_out
        return 2 if self.head.name == "binary" and self.n_out == 1 else 0

    def _codes(self, y: Any, classes: list[Any] | None, where: str, name: str) -> Any:
        """Labels as the output's positions 0 .. K-1, through `classes` when the model has
        them (any labels: text, 1-based integers, bools); otherwise `y` as it is."""
        if classes is None or not self._n_classes:
            return y
        if _frames.are_positions(classes):
            return y
        array = _frames.label_array(y)
        return y if array is None else _frames.encode_labels(array, classes, where, name)

    def _new_classes(self, y: Any, where: str) -> list[Any] | None:
        """The classes a first fit learns from labels other than 0 .. K-1 (None: none)."""
        if self.classes is not None or not self._n_classes:
            return None
        array = _frames.label_array(y)
        return None if array is None else _frames.learn_classes(array, self._n_classes,
                                                                where, "y")

    def _labels_of(self, codes: Any) -> Any:
        """Predicted positions as the model's classes: on the device for integer classes,
        as a NumPy array for any other kind (text cannot live on a device)."""
        classes = self.classes
        if classes is None or not self._n_classes or _frames.are_positions(classes):
            return codes
        if all(isinstance(c, int) and not isinstance(c, bool) for c in classes):
            table = self.backend.asarray(np.asarray(classes, dtype=np.int64))
            return self.xp.take(table, codes, axis=0)
        return np.asarray(classes)[np.asarray(to_numpy(codes))]

    def _as_weight(self, sample_weight: Any, n: int, where: str,
                   name: str = "sample_weight") -> Any:
        if sample_weight is None:
            return None
        return _data.check_weight(self.backend, self.dtype, self.dtype_name, sample_weight, n,
                                  where, name)

    @_scoped
    def encode(self, X: Any, y: Any = None, *, where: str = "Sequential.encode"
               ) -> tuple[Any, Any]:
        """``(X, Y)`` as :meth:`train_step` takes them: `X` checked, in the model's dtype on
        its device, and `y` encoded as the loss compares it (one-hot rows for a softmax
        output, 0/1 columns for sigmoid, values for regression); ``Y`` is None without `y`.

        Parameters
        ----------
        X : array, shape (n_samples, n_in)
        y : array, shape (n_samples,) or (n_samples, n_out), optional
        """
        Xd = self._as_X(X, where)
        return Xd, (None if y is None else self._as_y(y, Xd.shape[0], where)[0])

    # -- forward and backward -----------------------------------------------------------------
    def _output(self, X: Any, training: bool = False) -> Any:
        """What the loss sees: logits for a fused loss, the activation otherwise."""
        a = X
        for layer in self.layers[:-1]:
            a = layer.forward(a, training)
        last = self.layers[-1]
        return last.logits(a, training) if self.head.fused else last.forward(a, training)

    @_scoped
    def forward(self, X: Any, training: bool = True) -> Any:
        """The network's output ``activation(... (X @ W0 + b0) ...)`` on the device; with
        `training` (the default here), caches what :meth:`backward` needs.

        Parameters
        ----------
        X : array, shape (n_samples, n_in)
        """
        a = self._as_X(X, "Sequential.forward")
        for layer in self.layers:
            a = layer.forward(a, training)
        return a

    def backward(self, grad: Any) -> Any:
        """Backpropagate d(loss)/d(output) through every layer after a training
        :meth:`forward`; fills each layer's :meth:`~nnx.layers.Layer.grads` and returns
        d(loss)/dX.

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
        fused = self.head.fused
        needs = self._input_grad
        for i in range(last, -1, -1):
            if not needs[i] and not layers[i].trainable:
                break  # nothing below here learns: no gradient to carry further
            grad = layers[i].backward(grad, through_activation=not (i == last and fused),
                                      input_grad=needs[i])

    def _l2_term(self) -> Any:
        """``(l2 / 2) * sum ||W||^2`` as a 0-d device array."""
        xp = self.xp
        mm = self._matmul
        total = None
        for p, decays in zip(self.parameters(), self._decays):
            if decays:
                # A dot product of the flattened weights: one BLAS call, not a product and a sum
                if mm is operator.matmul:
                    w = xp.reshape(p, (-1,))
                    ww = w @ w
                else:  # the backend's own product (CuPy's avoids cuBLAS in a graph capture)
                    ww = xp.reshape(mm(xp.reshape(p, (1, -1)), xp.reshape(p, (-1, 1))), ())
                total = ww if total is None else total + ww
        return (self.l2 / 2) * total

    def _data_loss(self, out: Any, Y: Any, grad: bool, scale: float = 1.0,
                   weight: Any = None) -> tuple[Any, Any]:
        """The loss function on `out`; `weight` (a column summing to what the mean needs) is
        passed only when given, so that a user's loss without the argument still works."""
        if weight is None:
            return self.loss_function.fn(self.xp, out, Y, grad=grad, scale=scale)
        return self.loss_function.fn(self.xp, out, Y, grad=grad, scale=scale, weight=weight)

    def _objective(self, out: Any, Y: Any, grad: bool, scale: float = 1.0,
                   l2_term: bool = True, weight: Any = None) -> tuple[Any, Any]:
        loss, out_grad = self._data_loss(out, Y, grad, scale, weight)
        if self.l2 and l2_term:
            loss = loss + self._l2_term()
        return loss, out_grad

    @_scoped
    def value_and_grad(self, X: Any, y: Any, sample_weight: Any = None
                       ) -> tuple[float, list[Any]]:
        """The objective (as :meth:`loss`) and its gradient ``[dW0, db0, dW1, ...]`` on the
        device, without changing the weights."""
        where = "Sequential.value_and_grad"
        Xd = self._as_X(X, where)
        Y, _ = self._as_y(y, Xd.shape[0], where)
        weight = self._normalised(self._as_weight(sample_weight, Xd.shape[0], where))
        loss, out_grad = self._objective(self._output(Xd, training=True), Y, grad=True,
                                         weight=weight)
        self._backprop(out_grad)
        grads = []
        for layer in self.layers:
            for (name, g), decays in zip(layer.grads().items(), layer.decay().values()):
                grads.append(g + self.l2 * layer.params()[name] if self.l2 and decays else g)
        return float(loss), grads

    def _normalised(self, weight: Any) -> Any:
        """Weights divided by their sum: the loss is then their weighted mean."""
        return None if weight is None else weight / self.xp.sum(weight)

    @_scoped
    def train_step(self, X: Any, Y: Any, weight: Any = None) -> tuple[Any, Any]:
        """One gradient step on device arrays ``X`` and encoded targets ``Y`` (from
        :meth:`encode`). Returns ``(loss, output)`` on the device, with no host round trip.

        ``weight``, optional, is a column ``(n, 1)`` of the model's dtype: the data loss is
        ``sum_i weight[i] * loss_i`` (weights that sum to 1 give the weighted mean; None, the
        plain mean). Each layer's gradients then hold the data gradient times
        ``optimizer.grad_scale()`` (the learning rate for plain SGD, else 1).
        """
        optimizer = self.optimizer
        if optimizer is None:
            raise InvalidParameterError("Sequential.train_step: the model has no optimizer; "
                                        "set model.optimizer = nnx.SGD(lr=...) or call fit.")
        out = self._output(X, training=True)
        loss, out_grad = self._objective(out, Y, grad=True, scale=optimizer.grad_scale(),
                                         weight=weight)
        self._backprop(out_grad)
        grads = [g for layer in self._trained for g in layer.grads().values()]
        self.assign_trained_parameters(optimizer.step(self.xp, self.trained_parameters(),
                                                      grads, self._decay()))
        return loss, out

    # -- updates outside fit (streaming, data-parallel training) --------------------------------
    def set_optimizer(self, optimizer: str | Optimizer = "sgd", *, lr: float | None = None,
                      schedule: Any = None) -> Optimizer:
        """Make `optimizer` (a name, as ``fit`` takes it, or an nnx Optimizer) the model's,
        with a fresh state; later ``fit``, :meth:`train_on_batch` and
        :meth:`apply_gradients` use it. Returns it."""
        from nnx.optimizers import get_optimizer

        where = "Sequential.set_optimizer"
        if lr is not None:
            lr = check_real(lr, "lr", where, low=0, low_open=True)
        if not isinstance(optimizer, (str, Optimizer)):
            raise InvalidParameterError(
                f"{where}: optimizer must be a name ('sgd', 'momentum', 'nesterov', 'adam') or "
                f"an nnx.Optimizer; received {optimizer!r} ({type(optimizer).__name__}).")
        opt = get_optimizer(optimizer, lr=lr, schedule=schedule)
        opt.reset()
        self.optimizer = opt
        return opt

    def _encoded(self, X: Any, y: Any, sample_weight: Any, encoded: bool, where: str
                 ) -> tuple[Any, Any, Any]:
        if encoded:
            return X, y, sample_weight
        Xd = self._as_X(X, where)
        Y, _ = self._as_y(y, Xd.shape[0], where)
        return Xd, Y, self._as_weight(sample_weight, Xd.shape[0], where)

    @_scoped
    def gradients(self, X: Any, y: Any, sample_weight: Any = None, *,
                  encoded: bool = False) -> tuple[Any, list[Any]]:
        """The *data* loss (its weighted mean over the rows; no L2 term) as a 0-d device
        array, and its gradient: a list aligned with :meth:`trained_parameters`. Changes no
        weights. With ``encoded=True``, `X`, `y` and `sample_weight` are taken as they are:
        device arrays from :meth:`encode`, and a weight column ``(n, 1)`` or None.

        Shards' gradients combine into the whole data's as their weighted mean
        ``sum_k n_k g_k / sum_k n_k`` (``n_k``: the shard's rows, or its weights' sum)."""
        Xd, Y, weight = self._encoded(X, y, sample_weight, encoded, "Sequential.gradients")
        loss, out_grad = self._data_loss(self._output(Xd, training=True), Y, grad=True,
                                         weight=self._normalised(weight))
        self._backprop(out_grad)
        return loss, [g for layer in self._trained for g in layer.grads().values()]

    def _require_optimizer(self, where: str) -> Optimizer:
        if self.optimizer is None:
            raise InvalidParameterError(f"{where}: the model has no optimizer; call "
                                        "model.set_optimizer('sgd', lr=...) or fit first.")
        return self.optimizer

    @_scoped
    def apply_gradients(self, grads: Sequence[Any]) -> None:
        """One update of the model's optimizer from data gradients aligned with
        :meth:`trained_parameters` (as :meth:`gradients` gives them); the optimizer adds the
        L2 term as in a training step. Not an epoch: ``epochs_trained`` and the schedule's
        epoch stay as they are."""
        where = "Sequential.apply_gradients"
        optimizer = self._require_optimizer(where)
        params = self.trained_parameters()
        grads = list(grads)
        if len(grads) != len(params):
            raise InvalidParameterError(f"{where}: grads must hold {len(params)} arrays, one "
                                        f"per trained parameter; received {len(grads)}.")
        for i, (g, p) in enumerate(zip(grads, params)):
            if not self.backend.owns(g) or tuple(g.shape) != tuple(p.shape) \
                    or g.dtype != p.dtype:
                raise InvalidParameterError(
                    f"{where}: grads[{i}] must be a {self.backend.name} array of shape "
                    f"{tuple(p.shape)} and dtype {self.dtype_name} on the model's device; "
                    f"received {type(g).__name__} of shape {tuple(getattr(g, 'shape', ()))} "
                    f"and dtype {getattr(g, 'dtype', None)}.")
        scale = optimizer.grad_scale()
        if scale != 1:
            grads = [g * scale for g in grads]
        self.assign_trained_parameters(optimizer.step(self.xp, params, grads, self._decay()))

    @_scoped
    def train_on_batch(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """One update of the model's optimizer on this batch (its weighted mean loss); not an
        epoch (``epochs_trained``, the history and the schedule's epoch are unchanged).
        Returns the batch's objective before the update."""
        where = "Sequential.train_on_batch"
        self._require_optimizer(where)
        Xd, Y, weight = self._encoded(X, y, sample_weight, False, where)
        loss, _ = self.train_step(Xd, Y, weight=self._normalised(weight))
        return float(loss)

    # -- fit ----------------------------------------------------------------------------------
    @_scoped
    def fit(self, X: Any, y: Any, epochs: int = 1, lr: float | None = None,
            l2: float | None = None, batch_size: int | None = None,
            optimizer: str | Optimizer | None = None, schedule: Any = None,
            shuffle: bool = True, validation_data: tuple[Any, Any] | None = None,
            validation_split: float = 0.0, callbacks: Any = (),
            early_stopping: Any = None, verbose: bool | None = None,
            sync_every: int = 1, compile: bool = False,
            sample_weight: Any = None) -> History:
        """Train by minibatch (or, with ``batch_size=None``, full-batch) gradient descent,
        continuing from the current weights.

        Parameters
        ----------
        X : array, shape (n_samples, n_in)
            NumPy array, list, or array of any backend.
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
        validation_data : (X_val, y_val) or (X_val, y_val, sample_weight_val), optional
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
        compile : bool
            Train with the backend's compiled step (jax: the functional step of
            :mod:`nnx.compiled` under ``jax.jit``, full-batch epochs ``sync_every`` at a time
            in one compiled loop); the same maths, seed and history as the eager loop, and
            the optimizer's state is written back. Backends without one refuse it.
        sample_weight : array, shape (n_samples,), optional
            Weights >= 0 per sample: each batch's data loss (and the epoch's figures) is the
            weighted mean ``sum w_i loss_i / sum w_i``; a weight of 2 counts a row twice,
            0 leaves it out. A ``validation_split`` splits the weights with the rows.

        Returns
        -------
        History
        """
        where = "Sequential.fit"
        settings = FitSettings(
            self, epochs=epochs, lr=lr, l2=l2, batch_size=batch_size, optimizer=optimizer,
            schedule=schedule, shuffle=shuffle, validation_data=validation_data,
            validation_split=validation_split, callbacks=callbacks,
            early_stopping=early_stopping, verbose=verbose, sync_every=sync_every,
            where=where, compile=compile)
        names = (_frames.frame_columns(X) if self.feature_names is None
                 and _frames.is_frame(X) else None)
        Xd = self._as_X(X, where)
        classes = self._new_classes(y, where)
        known = classes if classes is not None else self.classes
        train = (Xd, *self._as_y(y, Xd.shape[0], where, classes=known))
        weight = self._as_weight(sample_weight, Xd.shape[0], where)
        val = None
        if validation_data is not None:
            Xv = self._as_X(validation_data[0], where, "validation_data[0]")
            val = (Xv, *self._as_y(validation_data[1], Xv.shape[0], where,
                                   "validation_data[1]", classes=known))
            if len(validation_data) == 3 and validation_data[2] is not None:
                val = (*val, self._as_weight(validation_data[2], Xv.shape[0], where,
                                             "validation_data[2]"))
        elif settings.split:
            train, val, weight = split_validation(self, train, settings.split, where, weight)
        if settings.compile and (weight is not None or (val is not None and len(val) > 3)):
            raise InvalidParameterError(f"{where}: compile=True does not take sample weights "
                                        "yet; drop sample_weight or compile.")

        sync_every = 1 if settings.callbacks or val is not None else settings.sync_every
        args = (self, *train, val, settings.epochs, settings.batch_size, settings.shuffle,
                settings.callbacks, settings.verbose, sync_every)
        # The backend's compiled loop (or its clear refusal), chosen in one place.
        trainer = (self.backend.compiled_trainer(self, settings.optimizer, *args[1:])
                   if settings.compile else Trainer(*args, weight=weight))

        # Everything is checked: only now does the model change.
        opt = settings.optimizer
        for name, value in settings.optimizer_changes.items():
            setattr(opt, name, value)
        self.optimizer, self.l2, self.stop_training = opt, settings.l2, False
        if classes is not None:
            self.classes = classes
        if names is not None:
            self.feature_names = names
        self._adapt(train[0])
        self.history = History()
        with translate_memory_errors("Sequential.fit", lambda: self._memory_shapes(
                trainer.batch), self.backend, self.dtype_name):
            return trainer.run()

    def _adapt(self, X: Any) -> None:
        """Fit the layers that learn from the data rather than by gradient descent (a
        Standardize layer's mean and scale) on the training data, once: later fits keep them,
        so the model keeps scaling its inputs as it was trained to."""
        pending = [layer for layer in self.layers if getattr(layer, "adapted", True) is False]
        if not pending:
            return
        a = X
        for layer in self.layers:
            if layer in pending:
                layer.adapt(a)
                if layer is pending[-1]:
                    return
            a = layer.forward(a)

    def _memory_shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
        """The per-batch arrays of a training step, for an out-of-memory message."""
        shapes = {"X batch": (batch, self.n_in)}
        for i, layer in enumerate(self.layers):
            for name, p in layer.params().items():
                shapes[f"layers[{i}] {name}"] = tuple(p.shape)
            shapes[f"layers[{i}] output"] = (batch, layer.n_out)
        return shapes

    def capture_step(self, X: Any, y: Any, optimizer: Any = None, lr: float | None = None):
        """One full-batch training step captured as a CUDA graph (cupy only); see
        :func:`nnx.cuda.capture_step`. ``loss = step()`` trains; ``step.sync_to_model()``."""
        from nnx.backends.cupy.graph import capture_step

        return capture_step(self, X, y, optimizer=optimizer, lr=lr)

    # -- inference ----------------------------------------------------------------------------
    def _chunk_rows(self, batch_size: int | None) -> int:
        if batch_size is None:
            widest = max(max(layer.n_in, layer.n_out) for layer in self.layers)
            return max(1, _PREDICT_ELEMENTS // widest)
        return batch_size

    def _batched(self, X: Any, batch_size: int | None, fn: Any) -> Any:
        n = X.shape[0]
        step = self._chunk_rows(batch_size)
        with translate_memory_errors("Sequential.predict", lambda: self._memory_shapes(
                min(n, step)), self.backend, self.dtype_name):
            if n <= step:
                return fn(X)
            return self.xp.concat([fn(X[rows, ...]) for rows in row_slices(n, step)], axis=0)

    def _logits(self, X: Any) -> Any:
        a = X
        for layer in self.layers[:-1]:
            a = layer.forward(a)
        return self.layers[-1].logits(a)

    @_scoped
    def predict_proba(self, X: Any, batch_size: int | None = None) -> Any:
        """The output layer's activation (class probabilities for softmax and sigmoid
        outputs), shape ``(n_samples, n_out)``, on the model's device; computed in batches.
        Writes nothing to the model (safe beside a ``fit`` in another thread)."""
        where = "Sequential.predict_proba"
        batch_size = check_int(batch_size, "batch_size", where, low=1, allow_none=True)
        Xd = self._as_X(X, where)
        out_activation = self.layers[-1].activation
        return self._batched(Xd, batch_size,
                             lambda part: out_activation.forward(self.xp, self._logits(part)))

    @_scoped
    def predict(self, X: Any, batch_size: int | None = None) -> Any:
        """Class labels for classifiers, shape ``(n_samples,)`` (``(n_samples, n_out)`` of
        0/1 for a sigmoid output of several units): the model's ``classes`` when it has them
        (learnt at the first fit from labels other than 0 .. K-1, e.g. text or 1-based
        integers; a NumPy array unless they are integers), else int64 positions on the
        device. The outputs for regression, on the device. Writes nothing to the model (safe
        beside a ``fit`` in another thread)."""
        where = "Sequential.predict"
        batch_size = check_int(batch_size, "batch_size", where, low=1, allow_none=True)
        Xd = self._as_X(X, where)
        return self._labels_of(self._batched(
            Xd, batch_size, lambda part: self.head.predict(self.xp, self._output(part))))

    def _sums(self, Xd: Any, Y: Any, labels: Any, batch_size: int | None,
              weight: Any = None) -> tuple[Any, Any]:
        """Summed data loss and correct count (weighted by `weight`, a column, if given) over
        the data, in batches, on the device."""
        n = Xd.shape[0]
        total, correct = None, None
        for rows in row_slices(n, self._chunk_rows(batch_size)):
            part, Yp = Xd[rows, ...], Y[rows, ...]
            w = None if weight is None else weight[rows, ...]
            out = self._output(part)
            if w is None:
                loss, _ = self._data_loss(out, Yp, grad=False)
                loss = loss * part.shape[0]
            else:  # sum_i w_i loss_i: the loss with the raw weights
                loss, _ = self._data_loss(out, Yp, grad=False, weight=w)
            total = loss if total is None else total + loss
            if labels is not None:
                hit = self.head.correct(self.xp, out, labels[rows, ...], self.dtype, w)
                correct = hit if correct is None else correct + hit
        return total, correct

    def evaluate_encoded(self, Xd: Any, Y: Any, labels: Any,
                         batch_size: int | None = None, weight: Any = None) -> dict[str, Any]:
        """The objective and, for classifiers, the *count* of correct predictions, as 0-d
        device arrays, from encoded data (the count is exact in the model's dtype; the host
        divides it by n, so that 193 of 200 reads 0.965 and not float32's 0.9649999737).
        With `weight` (a column ``(n, 1)``), the loss is the weighted mean and the count the
        right predictions' summed weight."""
        n = Xd.shape[0] if weight is None else self.xp.sum(weight)
        total, correct = self._sums(Xd, Y, labels, batch_size, weight)
        out = {"loss": total / n + (self._l2_term() if self.l2 else 0)}
        if correct is not None:
            out["accuracy"] = correct
        return out

    @_scoped
    def evaluate(self, X: Any, y: Any, batch_size: int | None = None,
                 sample_weight: Any = None) -> dict[str, float]:
        """``{'loss': objective, 'accuracy': fraction correct}`` (accuracy for classifiers);
        with `sample_weight`, the weighted mean loss and the weighted fraction correct."""
        where = "Sequential.evaluate"
        batch_size = check_int(batch_size, "batch_size", where, low=1, allow_none=True)
        Xd = self._as_X(X, where)
        Y, labels = self._as_y(y, Xd.shape[0], where)
        weight = self._as_weight(sample_weight, Xd.shape[0], where)
        # An overflow is reported below, once, in words: not as NumPy's warning per operation.
        with np.errstate(over="ignore", invalid="ignore"):
            figures = {key: float(value) for key, value in
                       self.evaluate_encoded(Xd, Y, labels, batch_size, weight).items()}
        if "accuracy" in figures:
            figures["accuracy"] /= (Xd.shape[0] if weight is None
                                    else float(self.xp.sum(weight)))
        if not math.isfinite(figures["loss"]):
            warnings.warn(f"{where}: the loss is {figures['loss']} on these data: the outputs "
                          f"or targets overflow in {self.dtype_name} (scale them, or use "
                          "dtype='float64').", UserWarning, stacklevel=2)
        return figures

    def loss(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """The objective ``fit`` minimises: mean data loss (weighted mean with
        `sample_weight`) plus ``(l2/2) * sum ||W||^2``."""
        return self.evaluate(X, y, sample_weight=sample_weight)["loss"]

    def accuracy(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """Fraction of samples classified correctly."""
        if not self.head.classifier:
            raise InvalidDataError("Sequential.accuracy: the model is a regressor (its output "
                                   f"is {self.layers[-1].activation.name}); use loss() "
                                   "instead.")
        return self.evaluate(X, y, sample_weight=sample_weight)["accuracy"]

    def save(self, path: Any) -> None:
        """Write the model to one ``.npz`` file (see :func:`nnx.saving.save`)."""
        from nnx.saving import save

        save(self, path)


def _unpickle_in_scope(cls: type, backend: Backend, dtype_name: str, state: bytes) -> Any:
    """A model pickled by :meth:`Sequential.__reduce_ex__`: its state loaded inside its
    backend's scope, so that every array (weights, optimizer state) keeps its dtype and
    device."""
    import pickle

    model = cls.__new__(cls)
    with backend.scope(dtype_name):
        model.__dict__.update(pickle.loads(state))
    return model
