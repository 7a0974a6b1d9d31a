"""The Layer protocol and the registry of layer types (by name, for saving and loading)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from nnx.errors import InvalidParameterError

LAYERS: dict[str, type[Layer]] = {}


def register_layer(cls: type[Layer]) -> type[Layer]:
    """Class decorator: make `cls` loadable from a saved model by its ``type_name``."""
    LAYERS[cls.type_name] = cls
    return cls


def layer_from_config(spec: dict[str, Any]) -> Layer:
    """Rebuild an (unbuilt) layer from ``{"type": name, "config": {...}}``."""
    type_name = spec.get("type")
    if type_name not in LAYERS:
        raise InvalidParameterError(f"layer type {type_name!r} is unknown; known types: "
                                    f"{', '.join(sorted(LAYERS))}.")
    return LAYERS[type_name].from_config(spec["config"])


class Layer:
    """What :class:`~nnx.Sequential` needs of a layer.

    A layer maps ``x`` of shape ``(n_samples, n_in)`` to ``(n_samples, n_out)``. Its
    parameters are made by :meth:`build` (on a backend, in a dtype, drawn with a NumPy
    generator) and held as arrays that nnx never writes into: an update assigns new ones.

    ``forward(x, training)`` caches what ``backward`` needs only when `training` is true, so
    inference writes nothing to the layer; ``backward(grad)`` fills :meth:`grads` and returns
    the gradient with respect to ``x``. ``activation`` is the output's activation (identity
    where there is none): a loss fused with the output activation asks the last layer for its
    ``logits``.
    """

    type_name: ClassVar[str] = ""
    #: Whether gradient descent updates the parameters (a Standardize layer's are fitted
    #: from the data instead).
    trainable: ClassVar[bool] = True
    n_in: int
    n_out: int
    activation: Any

    @property
    def built(self) -> bool:
        raise NotImplementedError

    def build(self, backend: Any, dtype: str, rng: np.random.Generator) -> Layer:
        raise NotImplementedError

    def forward(self, x: Any, training: bool = False) -> Any:
        raise NotImplementedError

    def logits(self, x: Any, training: bool = False) -> Any:
        """The output before the activation."""
        raise NotImplementedError

    def backward(self, grad: Any, through_activation: bool = True,
                 input_grad: bool = True) -> Any:
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """``name -> array``, in a fixed order (the order of saving and of the optimizer)."""
        raise NotImplementedError

    def grads(self) -> dict[str, Any]:
        """``name -> gradient`` from the last :meth:`backward`, the keys of :meth:`params`."""
        raise NotImplementedError

    def assign(self, values: Any) -> None:
        """Put arrays of this layer's backend, dtype and shapes in place (unchecked): a
        sequence in the order of :meth:`params`, or a dict by name."""
        raise NotImplementedError

    def decay(self) -> dict[str, bool]:
        """Which parameters L2 applies to (weights, not biases)."""
        raise NotImplementedError

    def clear_caches(self) -> None:
        """Drop what the last training forward and backward kept (for a small pickle)."""

    @classmethod
    def param_shapes(cls, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        """The shapes of the parameters a layer of this `config` has (checked on loading
        before any array is trusted)."""
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Layer:
        return cls(**config)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for key in self._cache_keys():
            state[key] = None
        return state

    def _cache_keys(self) -> tuple[str, ...]:
        return ()
