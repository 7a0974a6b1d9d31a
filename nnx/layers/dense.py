"""The dense layer: ``x @ W + b`` followed by an activation, with its backward beside it."""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from nnx._validation import check_choice, check_int
from nnx.activations import Activation, get_activation
from nnx.backends import Backend, get_backend
from nnx.errors import InvalidDataError, InvalidParameterError
from nnx.initializers import SCHEMES, draw_weights
from nnx.layers.base import Layer, register_layer


@register_layer
class Dense(Layer):
    """A fully connected layer, ``activation(x @ W + b)``.

    Parameters
    ----------
    n_in, n_out : int
        Input and output sizes; ``W`` has shape ``(n_in, n_out)`` and ``b`` shape ``(n_out,)``.
    activation : str or Activation
        One of ``identity``, ``tanh``, ``sigmoid``, ``relu``, ``leaky_relu``, ``softmax``.
    init : {'auto', 'tutorial', 'glorot', 'he'}
        How ``W`` is drawn (see :func:`nnx.initializers.draw_weights`); ``b`` starts at zero.

    The parameters are made when the layer joins a :class:`~nnx.Sequential` (which chooses the
    backend, dtype and random generator), or on :meth:`build`.
    """

    type_name = "Dense"

    def __init__(self, n_in: int, n_out: int, activation: str | Activation | None = "identity",
                 init: str = "auto") -> None:
        self.n_in = check_int(n_in, "n_in", "Dense", low=1)
        self.n_out = check_int(n_out, "n_out", "Dense", low=1)
        self.activation = get_activation(activation)
        self.init = check_choice(init, "init", "Dense", SCHEMES)
        self.backend: Backend | None = None
        self.dtype: Any = None
        self._W: Any = None
        self._b: Any = None
        self.dW: Any = None
        self.db: Any = None
        self._x: Any = None
        self._a: Any = None
        self._matmul: Any = operator.matmul  # the backend's, once built

    def __repr__(self) -> str:
        return f"Dense({self.n_in} -> {self.n_out}, activation={self.activation.name})"

    def get_config(self) -> dict[str, Any]:
        return {"n_in": self.n_in, "n_out": self.n_out, "activation": self.activation.name,
                "init": self.init}

    @classmethod
    def param_shapes(cls, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        n_in, n_out = config.get("n_in"), config.get("n_out")
        return {"W": (n_in, n_out), "b": (n_out,)}

    def _cache_keys(self) -> tuple[str, ...]:
        return ("dW", "db", "_x", "_a")

    def clear_caches(self) -> None:
        self.dW = self.db = self._x = self._a = None

    # -- parameters -------------------------------------------------------------------------
    @property
    def built(self) -> bool:
        return self._W is not None

    @property
    def n_params(self) -> int:
        return self.n_in * self.n_out + self.n_out

    def build(self, backend: Backend | str | None = None, dtype: str = "float32",
              rng: np.random.Generator | int | None = 0) -> Dense:
        """Draw ``W`` on the host with `rng`, zero ``b``, and move both to `backend`."""
        backend = get_backend(backend)
        dtype_obj = backend.dtype(dtype)
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        try:
            W = draw_weights(rng, self.n_in, self.n_out, self.init, self.activation.name)
            with backend.scope(dtype):
                W_device = backend.asarray(W, dtype=dtype_obj)
                b_device = backend.xp.zeros((self.n_out,), dtype=dtype_obj,
                                            device=backend.device)
        except MemoryError as exc:
            from nnx.memory import format_bytes

            need = self.n_in * self.n_out * 8
            raise MemoryError(
                f"{self!r}: its weights ({self.n_in} x {self.n_out}) need "
                f"{format_bytes(need)} on the host to draw (float64) and "
                f"{format_bytes(need * np.dtype(dtype).itemsize // 8)} in {dtype} on "
                f"{backend.describe()}: more memory than there is. Use smaller layers.") from exc
        self.backend, self.dtype = backend, dtype_obj
        # The backend's fast path for this activation (a fused kernel on CuPy), if it has one.
        self.activation = backend.fast_activation(self.activation)
        self._matmul = backend.matmul_function()
        self._W, self._b = W_device, b_device
        return self

    def _require_built(self, what: str) -> None:
        if not self.built:
            raise RuntimeError(
                f"{self!r}: {what} before the layer was built; put it in an nnx.Sequential "
                "or call layer.build(backend, dtype, rng)."
            )

    def _checked(self, name: str, value: Any, shape: tuple[int, ...]) -> Any:
        self._require_built(f"setting {name}")
        host_shape = tuple(getattr(value, "shape", np.shape(value)))
        if host_shape != shape:
            raise InvalidParameterError(f"{self!r}: {name} must have shape {shape}; "
                                        f"received shape {host_shape}.")
        # A copy, so that training never writes into the caller's array (and vice versa).
        xp = self.backend.xp
        array = xp.asarray(self.backend.asarray(value, dtype=self.dtype), copy=True)
        if not bool(xp.all(xp.isfinite(array))):
            raise InvalidDataError(f"{self!r}: {name} contains NaN or inf (or values too "
                                   f"large for {self.dtype}).")
        return array

    @property
    def W(self) -> Any:
        """Weights, shape ``(n_in, n_out)``, on the layer's backend."""
        return self._W

    @W.setter
    def W(self, value: Any) -> None:
        self._W = self._checked("W", value, (self.n_in, self.n_out))

    @property
    def b(self) -> Any:
        """Bias, shape ``(n_out,)``, on the layer's backend."""
        return self._b

    @b.setter
    def b(self, value: Any) -> None:
        self._b = self._checked("b", value, (self.n_out,))

    def params(self) -> dict[str, Any]:
        return {"W": self._W, "b": self._b}

    def grads(self) -> dict[str, Any]:
        return {"W": self.dW, "b": self.db}

    def assign(self, values: Any) -> None:
        if isinstance(values, dict):
            values = (values["W"], values["b"])
        self._W, self._b = values

    def checked_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """`params` checked (shapes, finite) and copied onto the layer's backend and dtype;
        raises before anything changes."""
        return {"W": self._checked("W", params["W"], (self.n_in, self.n_out)),
                "b": self._checked("b", params["b"], (self.n_out,))}

    def decay(self) -> dict[str, bool]:
        return {"W": True, "b": False}

    # -- forward and backward ---------------------------------------------------------------
    def logits(self, x: Any, training: bool = False) -> Any:
        """``x @ W + b``, without the activation (caching `x` for the backward when
        `training`)."""
        if x.ndim != 2 or x.shape[1] != self.n_in:
            raise InvalidDataError(f"{self!r}.forward: x must have shape (n_samples, "
                                   f"{self.n_in}); received shape {tuple(x.shape)}.")
        if training:
            self._x = x
        z = self._matmul(x, self._W)
        # In place: the product is a fresh array, so adding the bias into it is safe, and it
        # saves allocating (and page-faulting) a second (n_samples, n_out) array each call.
        z += self._b
        return z

    def forward(self, x: Any, training: bool = False) -> Any:
        """``activation(x @ W + b)``; with `training`, caches what :meth:`backward` needs.

        Parameters
        ----------
        x : array, shape (n_samples, n_in)
        training : bool
            Keep the input and output for the backward pass. Inference (False) writes
            nothing to the layer, so predictions may run beside a fit in another thread.
        """
        self._require_built("forward")
        a = self.activation.forward(self.backend.xp, self.logits(x, training))
        if training:
            self._a = a
        return a

    def backward(self, grad: Any, through_activation: bool = True,
                 input_grad: bool = True) -> Any:
        """Fill ``dW`` and ``db`` from the upstream `grad` and return d(loss)/dx.

        Parameters
        ----------
        grad : array, shape (n_samples, n_out)
            Gradient with respect to the layer's output, or to its logits when
            ``through_activation`` is False (a loss fused with the activation).
        input_grad : bool
            Whether to compute the gradient with respect to the input (the first layer of a
            model needs none, which saves one matrix product).
        """
        if self._x is None:
            raise RuntimeError(f"{self!r}.backward: no training forward to go back through; "
                               "call forward(x, training=True) first.")
        xp = self.backend.xp
        if through_activation:
            grad = self.activation.backward(xp, self._a, grad)
        self.dW = self._matmul(self._x.T, grad)
        self.db = xp.sum(grad, axis=0)
        return self._matmul(grad, self._W.T) if input_grad else None
