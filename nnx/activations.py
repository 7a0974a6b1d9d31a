"""Activations: stateless forward/backward pairs, written once against the Array API.

Every ``forward(xp, z)`` returns the activation ``a``; every ``backward(xp, a, grad)`` returns
the gradient with respect to ``z`` from the cached *output* ``a`` (all of these derivatives can
be written in terms of the output, so a layer caches one array, not two).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from nnx._validation import check_real
from nnx.errors import InvalidParameterError


@dataclasses.dataclass(frozen=True)
class Activation:
    """A named elementwise (or row-wise, for softmax) function with its backward."""

    name: str
    forward: Callable[[Any, Any], Any]
    backward: Callable[[Any, Any, Any], Any]

    def __repr__(self) -> str:
        return self.name


def identity(xp, z):
    return z


def identity_backward(xp, a, grad):
    return grad


def tanh(xp, z):
    return xp.tanh(z)


# The backward passes below compute grad * f'(a) in one fresh array updated in place: one
# temporary of the layer's size instead of three (a large temporary is fresh pages, faulted
# in on first touch). The rounding is that of the plain expression, step for step.
def tanh_backward(xp, a, grad):
    d = -a
    d *= a
    d += 1
    d *= grad  # grad * (1 - a * a)
    return d


def sigmoid(xp, z):
    # exp of a non-positive number never overflows, so neither branch warns or produces inf.
    e = xp.exp(-xp.abs(z))
    return xp.where(z >= 0, 1 / (1 + e), e / (1 + e))


def sigmoid_backward(xp, a, grad):
    d = 1 - a
    d *= a
    d *= grad  # grad * (a * (1 - a))
    return d


def relu(xp, z):
    return xp.maximum(z, 0)


def relu_backward(xp, a, grad):
    return xp.where(a > 0, grad, 0)


# Up to this many columns, a row max or sum is k - 1 elementwise operations on column slices:
# NumPy's reductions along a short last axis cost 10-17 us at 200 x 2, a slice op about 1 us.
# On a GPU both are one kernel launch per operation, so nothing is lost there for k = 2.
_UNROLL_COLUMNS = 4


def row_max(xp, z):
    """Maximum of each row, shape ``(n, 1)``."""
    k = z.shape[1]
    if k > _UNROLL_COLUMNS:
        return xp.max(z, axis=1, keepdims=True)
    out = z[:, 0:1]
    for j in range(1, k):
        out = xp.maximum(out, z[:, j:j + 1])
    return out


def row_sum(xp, z):
    """Sum of each row, shape ``(n, 1)``."""
    k = z.shape[1]
    if k > _UNROLL_COLUMNS:
        return xp.sum(z, axis=1, keepdims=True)
    out = z[:, 0:1]
    for j in range(1, k):
        out = out + z[:, j:j + 1]
    return out


def softmax(xp, z):
    # Shift by the row maximum so exp never overflows; the result is unchanged.
    e = xp.exp(z - row_max(xp, z))
    return e / row_sum(xp, e)


def log_softmax(xp, z):
    shifted = z - row_max(xp, z)
    return shifted - xp.log(row_sum(xp, xp.exp(shifted)))


def softmax_backward(xp, a, grad):
    return a * (grad - row_sum(xp, grad * a))


def leaky_relu(slope: float = 0.01) -> Activation:
    """Leaky ReLU, ``max(z, slope * z)``, for a slope in (0, 1)."""
    slope = check_real(slope, "slope", "leaky_relu", low=0, high=1, low_open=True,
                       high_open=True)

    def forward(xp, z):
        return xp.where(z > 0, z, slope * z)

    def backward(xp, a, grad):
        # With 0 < slope the output has the sign of the input, so the output decides.
        return xp.where(a > 0, grad, slope * grad)

    return Activation("leaky_relu" if slope == 0.01 else f"leaky_relu({slope})", forward, backward)


ACTIVATIONS: dict[str, Activation] = {
    "identity": Activation("identity", identity, identity_backward),
    "tanh": Activation("tanh", tanh, tanh_backward),
    "sigmoid": Activation("sigmoid", sigmoid, sigmoid_backward),
    "relu": Activation("relu", relu, relu_backward),
    "leaky_relu": leaky_relu(0.01),
    "softmax": Activation("softmax", softmax, softmax_backward),
}
_ALIASES = {None: "identity", "linear": "identity", "none": "identity"}


def get_activation(activation: str | Activation | None) -> Activation:
    """Look an activation up by name (or pass an :class:`Activation` through)."""
    if isinstance(activation, Activation):
        return activation
    if activation is not None and not isinstance(activation, str):
        raise InvalidParameterError(
            f"activation must be a name or nnx.activations.Activation; "
            f"received {type(activation).__name__}."
        )
    key = _ALIASES.get(activation.lower() if activation else None, activation)
    key = key.lower().replace(" ", "") if isinstance(key, str) else key
    if key.startswith("leaky_relu(") and key.endswith(")"):
        # The name a leaky_relu(slope) carries, so that a saved model's config loads back.
        try:
            slope = float(key[len("leaky_relu("):-1])
        except ValueError:
            slope = None
        if slope is not None:
            return leaky_relu(slope)
    if key not in ACTIVATIONS:
        raise InvalidParameterError(
            f"activation={activation!r} is unknown; choose one of: {', '.join(ACTIVATIONS)}."
        )
    return ACTIVATIONS[key]
