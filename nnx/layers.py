"""The dense layer: ``x @ W + b`` followed by an activation, with its backward beside it."""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from nnx.activations import Activation, get_activation
from nnx.backend import Backend, get_backend
from nnx.cuda import fast_activation
from nnx.init import SCHEMES, draw_weights


def _size(value: Any, name: str, where: str) -> int:
    try:
        if isinstance(value, bool):  # operator.index(True) is 1: a size of True is a mistake
            raise TypeError
        size = operator.index(value)
    except TypeError:
        raise TypeError(
            f"{where}: {name} must be an integer >= 1; received {value!r} "
            f"({type(value).__name__})."
        ) from None
    if size < 1:
        raise ValueError(f"{where}: {name} must be an integer >= 1; received {name}={size}.")
    return size


class Dense:
    """A fully connected layer, ``activation(x @ W + b)``.

    Parameters
    ----------
    n_in, n_out : int
        Input and output sizes; ``W`` has shape ``(n_in, n_out)`` and ``b`` shape ``(n_out,)``.
    activation : str or Activation
        One of ``identity``, ``tanh``, ``sigmoid``, ``relu``, ``leaky_relu``, ``softmax``.
    init : {'auto', 'tutorial', 'glorot', 'he'}
        How ``W`` is drawn (see :func:`nnx.init.draw_weights`); ``b`` starts at zero.

    The parameters are made when the layer joins a :class:`~nnx.Sequential` (which chooses the
    backend, dtype and random generator), or on :meth:`build`.
    """

    def __init__(self, n_in: int, n_out: int, activation: str | Activation | None = "identity",
                 init: str = "auto") -> None:
        self.n_in = _size(n_in, "n_in", "Dense")
        self.n_out = _size(n_out, "n_out", "Dense")
        self.activation = get_activation(activation)
        if init not in SCHEMES:
            raise ValueError(f"Dense: init={init!r} is unknown; choose one of: "
                             f"{', '.join(SCHEMES)}.")
        self.init = init
        self.backend: Backend | None = None
        self.dtype: Any = None
        self._W: Any = None
        self._b: Any = None
        self.dW: Any = None
        self.db: Any = None
        self._x: Any = None
        self._a: Any = None

    def __repr__(self) -> str:
        return f"Dense({self.n_in} -> {self.n_out}, activation={self.activation.name})"

    # -- parameters -------------------------------------------------------------------------
    @property
    def built(self) -> bool:
        return self._W is not None

    def build(self, backend: Backend | str | None = None, dtype: str = "float32",
              rng: np.random.Generator | int | None = 0) -> Dense:
        """Draw ``W`` on the host with `rng`, zero ``b``, and move both to `backend`."""
        self.backend = get_backend(backend)
        # On CuPy, the fused backward kernel (the same function: tests/test_cuda.py).
        self.activation = fast_activation(self.activation, self.backend)
        self.dtype = self.backend.dtype(dtype)
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        W = draw_weights(rng, self.n_in, self.n_out, self.init, self.activation.name)
        self._W = self.backend.asarray(W, dtype=self.dtype)
        self._b = self.backend.xp.zeros((self.n_out,), dtype=self.dtype, device=self.backend.device)
        return self

    def _require_built(self, what: str) -> None:
        if not self.built:
            raise RuntimeError(
                f"{self!r}: {what} before the layer was built; put it in an nnx.Sequential "
                "or call layer.build(backend, dtype, rng)."
            )

    def _set_param(self, name: str, value: Any, shape: tuple[int, ...]) -> Any:
        self._require_built(f"setting {name}")
        host_shape = tuple(getattr(value, "shape", np.shape(value)))
        if host_shape != shape:
            raise ValueError(f"{self!r}: {name} must have shape {shape}; "
                             f"received shape {host_shape}.")
        # A copy, so that training never writes into the caller's array (and vice versa).
        array = self.backend.xp.asarray(self.backend.asarray(value, dtype=self.dtype), copy=True)
        if not bool(self.backend.xp.all(self.backend.xp.isfinite(array))):
            raise ValueError(f"{self!r}: {name} contains NaN or inf.")
        return array

    @property
    def W(self) -> Any:
        """Weights, shape ``(n_in, n_out)``, on the layer's backend."""
        return self._W

    @W.setter
    def W(self, value: Any) -> None:
        self._W = self._set_param("W", value, (self.n_in, self.n_out))

    @property
    def b(self) -> Any:
        """Bias, shape ``(n_out,)``, on the layer's backend."""
        return self._b

    @b.setter
    def b(self, value: Any) -> None:
        self._b = self._set_param("b", value, (self.n_out,))

    # -- forward and backward ---------------------------------------------------------------
    def _check_features(self, x: Any) -> None:
        if x.ndim != 2 or x.shape[1] != self.n_in:
            raise ValueError(
                f"{self!r}.forward: x must have shape (n_samples, {self.n_in}); "
                f"received shape {tuple(x.shape)}."
            )

    def logits(self, x: Any) -> Any:
        """``x @ W + b`` (caching `x` for the backward), without the activation."""
        self._check_features(x)
        self._x = x
        z = x @ self._W
        # In place: the product is a fresh array, so adding the bias into it is safe, and it
        # saves allocating (and page-faulting) a second (n_samples, n_out) array each call.
        z += self._b
        return z

    def forward(self, x: Any) -> Any:
        """``activation(x @ W + b)``; caches what :meth:`backward` needs.

        Parameters
        ----------
        x : array, shape (n_samples, n_in)
        """
        self._require_built("forward")
        self._a = self.activation.forward(self.backend.xp, self.logits(x))
        return self._a

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
        xp = self.backend.xp
        if through_activation:
            grad = self.activation.backward(xp, self._a, grad)
        self.dW = self._x.T @ grad
        self.db = xp.sum(grad, axis=0)
        return grad @ self._W.T if input_grad else None

    def params(self) -> dict[str, Any]:
        return {"W": self._W, "b": self._b}

    def grads(self) -> dict[str, Any]:
        return {"W": self.dW, "b": self.db}
