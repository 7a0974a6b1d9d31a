"""Standardisation as a layer: ``(x - mean) / scale``, fitted on the training data and carried
by the model (saved in its file, applied by ``predict``), so that data is scaled the same way
everywhere it enters."""

from __future__ import annotations

from typing import Any

import numpy as np

from nnx._validation import check_int
from nnx.activations import get_activation
from nnx.backends import Backend, get_backend
from nnx.errors import InvalidDataError
from nnx.layers.base import Layer, register_layer


@register_layer
class Standardize(Layer):
    """``(x - mean) / scale`` per feature; not trained by gradient descent.

    Parameters
    ----------
    n : int
        The number of features (``n_in == n_out``).

    ``mean`` starts at 0 and ``scale`` at 1 (the identity); :meth:`adapt` sets them from
    data (each column's mean and standard deviation; a constant column keeps scale 1), and
    ``Sequential.fit`` calls it on the training data when the layer has not been adapted yet.
    """

    type_name = "Standardize"
    trainable = False

    def __init__(self, n: int) -> None:
        self.n_in = self.n_out = check_int(n, "n", "Standardize", low=1)
        self.activation = get_activation("identity")
        self.backend: Backend | None = None
        self.dtype: Any = None
        self.mean: Any = None
        self.scale: Any = None
        self.adapted = False

    def __repr__(self) -> str:
        return f"Standardize({self.n_in})"

    def get_config(self) -> dict[str, Any]:
        return {"n": self.n_in}

    @classmethod
    def param_shapes(cls, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        return {"mean": (config.get("n"),), "scale": (config.get("n"),)}

    @property
    def built(self) -> bool:
        return self.mean is not None

    @property
    def n_params(self) -> int:
        return 2 * self.n_in

    def build(self, backend: Backend | str | None = None, dtype: str = "float32",
              rng: Any = None) -> Standardize:
        backend = get_backend(backend)
        dtype_obj = backend.dtype(dtype)
        with backend.scope(dtype):
            self.mean = backend.xp.zeros((self.n_in,), dtype=dtype_obj, device=backend.device)
            self.scale = backend.xp.ones((self.n_in,), dtype=dtype_obj, device=backend.device)
        self.backend, self.dtype = backend, dtype_obj
        return self

    def adapt(self, x: Any) -> None:
        """Set ``mean`` and ``scale`` from `x`, shape ``(n_samples, n)``, on the device."""
        xp = self.backend.xp
        mean = xp.mean(x, axis=0)
        std = xp.sqrt(xp.mean((x - mean) ** 2, axis=0))
        # A constant column carries no information to scale: keep it centred, scale 1.
        scale = xp.where(std > 0, std, xp.ones_like(std))
        self.mean, self.scale, self.adapted = mean, scale, True

    def params(self) -> dict[str, Any]:
        return {"mean": self.mean, "scale": self.scale}

    def grads(self) -> dict[str, Any]:
        return {}

    def decay(self) -> dict[str, bool]:
        return {"mean": False, "scale": False}

    def assign(self, values: Any) -> None:
        if isinstance(values, dict):
            values = (values["mean"], values["scale"])
        self.mean, self.scale = values
        self.adapted = True

    def checked_params(self, params: dict[str, Any]) -> dict[str, Any]:
        xp = self.backend.xp
        out = {}
        for name in ("mean", "scale"):
            value = params[name]
            shape = tuple(getattr(value, "shape", np.shape(value)))
            if shape != (self.n_in,):
                raise InvalidDataError(f"{self!r}: {name} must have shape ({self.n_in},); "
                                       f"received shape {shape}.")
            array = xp.asarray(self.backend.asarray(value, dtype=self.dtype), copy=True)
            if not bool(xp.all(xp.isfinite(array))):
                raise InvalidDataError(f"{self!r}: {name} contains NaN or inf.")
            out[name] = array
        if not bool(xp.all(out["scale"] > 0)):
            raise InvalidDataError(f"{self!r}: scale must be > 0 in every column.")
        return out

    def logits(self, x: Any, training: bool = False) -> Any:
        if x.ndim != 2 or x.shape[1] != self.n_in:
            raise InvalidDataError(f"{self!r}.forward: x must have shape (n_samples, "
                                   f"{self.n_in}); received shape {tuple(x.shape)}.")
        return (x - self.mean) / self.scale

    def forward(self, x: Any, training: bool = False) -> Any:
        return self.logits(x, training)

    def backward(self, grad: Any, through_activation: bool = True,
                 input_grad: bool = True) -> Any:
        return grad / self.scale if input_grad else None
