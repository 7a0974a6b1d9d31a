"""Losses with their fused gradients, computed from the output layer's logits where possible.

Each loss is ``fn(xp, out, Y, grad=True, scale=1.0, weight=None) -> (loss, grad)`` where
``loss`` is a 0-d array on the device (no host round trip) and ``grad`` is
``scale * d(loss)/d(out)``. ``out`` is
the last layer's pre-activation (its logits) for the losses fused with their activation, and its
activation otherwise. Targets ``Y`` are already encoded as floats of the model's dtype: one-hot
rows for cross-entropy, 0/1 columns for binary cross-entropy, values for mean squared error.
The data loss is the mean over samples; with ``weight``, a column ``(n_samples, 1)`` of the
model's dtype, it is ``sum_i weight[i] * loss_i`` (the caller normalises: weights divided by their
sum give the weighted mean, ``1 / n`` everywhere the plain mean).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from nnx.activations import row_max, row_sum
from nnx.errors import InvalidParameterError


def softmax_cross_entropy(xp, logits, Y, grad=True, scale=1.0, weight=None):
    """Cross-entropy of softmax(logits) against one-hot `Y`; gradient ``scale * (p - Y) / n``.

    Parameters
    ----------
    logits : array, shape (n_samples, n_classes)
    Y : array, shape (n_samples, n_classes), one-hot rows
    scale : float
        Multiplies the gradient (an optimizer may fold its learning rate in here, where it
        costs nothing: the division by n is there anyway).
    weight : array, shape (n_samples, 1), optional
        Each row's weight in the loss (see the module's docstring); default ``1 / n``.
    """
    n = logits.shape[0]
    # log-sum-exp with the row maximum taken out: exp never overflows.
    shifted = logits - row_max(xp, logits)
    e = xp.exp(shifted)
    s = row_sum(xp, e)
    # -log softmax = log(s) - shifted; rows of Y pick the true class.
    if weight is None:
        loss = xp.sum(Y * (xp.log(s) - shifted)) / n
        if not grad:
            return loss, None
        return loss, (e / s - Y) * (scale / n)
    loss = xp.sum(weight * Y * (xp.log(s) - shifted))
    if not grad:
        return loss, None
    return loss, (e / s - Y) * (weight * scale)


def binary_cross_entropy(xp, logits, Y, grad=True, scale=1.0, weight=None):
    """Log-loss of sigmoid(logits) against 0/1 targets `Y`; gradient
    ``scale * (sigmoid - Y) / n``.

    Parameters
    ----------
    logits : array, shape (n_samples, n_outputs)
    Y : array, shape (n_samples, n_outputs)
    """
    n = logits.shape[0]
    # softplus(z) - y*z written so that exp only ever sees non-positive numbers.
    e = xp.exp(-xp.abs(logits))
    terms = xp.maximum(logits, 0) - logits * Y + xp.log1p(e)
    loss = xp.sum(terms) / n if weight is None else xp.sum(weight * terms)
    if not grad:
        return loss, None
    p = xp.where(logits >= 0, 1 / (1 + e), e / (1 + e))
    return loss, (p - Y) * (scale / n if weight is None else weight * scale)


def mean_squared_error(xp, pred, Y, grad=True, scale=1.0, weight=None):
    """Mean over all elements of ``(pred - Y)**2``; gradient ``scale * 2 (pred - Y) / size``.
    With ``weight``: ``sum_i weight[i] * mean_j (pred - Y)[i, j]**2``.

    Parameters
    ----------
    pred : array, shape (n_samples, n_outputs)
    Y : array, shape (n_samples, n_outputs)
    """
    diff = pred - Y
    if weight is not None:
        k = diff.shape[1]
        loss = xp.sum(weight * (diff * diff)) / k
        if not grad:
            return loss, None
        return loss, diff * (weight * (2 * scale / k))
    size = diff.shape[0] * diff.shape[1]
    loss = xp.sum(diff * diff) / size
    if not grad:
        return loss, None
    return loss, diff * (2 * scale / size)


@dataclasses.dataclass(frozen=True)
class Loss:
    """A loss, the output activation it is fused with (None: applied after the activation),
    and whether its targets are class labels."""

    name: str
    fn: Callable[..., Any]
    fused_activation: str | None
    classification: bool

    def __repr__(self) -> str:
        return self.name

    def __call__(self, xp: Any, out: Any, Y: Any, grad: bool = True,
                 scale: float = 1.0, weight: Any = None) -> tuple[Any, Any]:
        """``(loss, scale * d(loss)/d(out))``; see the module's docstring."""
        if weight is None:
            return self.fn(xp, out, Y, grad=grad, scale=scale)
        return self.fn(xp, out, Y, grad=grad, scale=scale, weight=weight)


LOSSES: dict[str, Loss] = {
    "cross_entropy": Loss("cross_entropy", softmax_cross_entropy, "softmax", True),
    "binary_cross_entropy": Loss("binary_cross_entropy", binary_cross_entropy, "sigmoid", True),
    "mse": Loss("mse", mean_squared_error, None, False),
}
_ALIASES = {
    "categorical_crossentropy": "cross_entropy", "softmax_cross_entropy": "cross_entropy",
    "log_loss": "binary_cross_entropy", "logloss": "binary_cross_entropy",
    "bce": "binary_cross_entropy", "mean_squared_error": "mse",
}


def get_loss(loss: str | Loss) -> Loss:
    if isinstance(loss, Loss):
        return loss
    if not isinstance(loss, str):
        raise InvalidParameterError(f"loss must be a name or nnx.losses.Loss; received "
                                    f"{type(loss).__name__}.")
    key = _ALIASES.get(loss.lower(), loss.lower())
    if key not in LOSSES:
        names = ", ".join(LOSSES)
        raise InvalidParameterError(f"loss={loss!r} is unknown; choose one of: {names}.")
    return LOSSES[key]


def default_loss(output_activation: str) -> Loss:
    """The loss a final activation implies: softmax -> cross-entropy, sigmoid -> log-loss."""
    if output_activation == "softmax":
        return LOSSES["cross_entropy"]
    if output_activation == "sigmoid":
        return LOSSES["binary_cross_entropy"]
    return LOSSES["mse"]
