"""What a model's output means: a multiclass, binary or regression head.

The head encodes targets for the loss (one-hot rows, 0/1 columns or values), turns outputs
into predictions, and counts correct answers. :class:`~nnx.Sequential` picks it from its
output activation (softmax -> multiclass, sigmoid -> binary, anything else -> regression).
"""

from __future__ import annotations

from typing import Any

from nnx.errors import InvalidDataError


class Head:
    """Base class. `n_out` is the output layer's width; `fused` says whether the loss sees
    logits (a loss fused with the output activation) or the activation itself."""

    name = ""
    classifier = True
    makes_targets = False  # see targets()

    def __init__(self, n_out: int, fused: bool) -> None:
        self.n_out, self.fused = n_out, fused

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_out={self.n_out})"

    def target_shape(self, n: int) -> tuple[tuple[int, ...], str]:
        """The accepted target shape and its description, for `n` samples."""
        raise NotImplementedError

    def check_labels(self, xp: Any, y: Any, where: str, name: str, layer: str = "") -> None:
        """Refuse targets this head cannot learn from (non-integer or out-of-range labels);
        `layer` names the output layer in the message."""

    def encode(self, backend: Any, dtype: Any, y: Any, n: int) -> tuple[Any, Any]:
        """``(Y, labels)`` on the device from checked targets `y`: ``Y`` is what the loss
        compares with, ``labels`` what :meth:`correct` counts (None for regression)."""
        raise NotImplementedError

    def targets(self, backend: Any, dtype: Any, labels: Any) -> Any:
        """``Y`` made from `labels` as :meth:`encode` makes it, for a head whose
        ``makes_targets`` is true (its labels determine ``Y`` and are not ``Y`` itself):
        shuffled minibatches then gather the labels and make their rows of ``Y`` from them,
        instead of gathering both."""
        raise NotImplementedError

    def predict(self, xp: Any, out: Any) -> Any:
        """Predictions from the loss's input `out` (logits when fused)."""
        raise NotImplementedError

    def hits(self, xp: Any, out: Any, labels: Any, weight: Any = None) -> Any:
        """Which predictions in the batch are right, unreduced (booleans; with `weight`, a
        column (n, 1), the right ones' weights, wrong ones 0); None for regression. Batches'
        hits, concatenated, give :meth:`count` of them all in one reduction."""
        raise NotImplementedError

    def count(self, xp: Any, hits: Any, dtype: Any) -> Any:
        """How many of `hits` are right (a 0-d device array of `dtype`): their weighted sum."""
        raise NotImplementedError

    def correct(self, xp: Any, out: Any, labels: Any, dtype: Any, weight: Any = None) -> Any:
        """How many predictions in the batch are right (a 0-d device array); with `weight`
        (a column (n, 1)), the sum of the right ones' weights. None for regression."""
        hits = self.hits(xp, out, labels, weight)
        return None if hits is None else self.count(xp, hits, dtype)


def _index_dtype(xp: Any, device: Any) -> Any:
    """The namespace's default integer dtype (int64; int32 for JAX outside its x64 mode)."""
    return xp.__array_namespace_info__().default_dtypes(device=device)["integral"]


def _check_integer_labels(xp: Any, y: Any, n_classes: int, where: str, name: str,
                          layer: str) -> None:
    if xp.isdtype(y.dtype, "real floating") and not bool(xp.all(y == xp.round(y))):
        raise InvalidDataError(f"{where}: {name} must hold integer class labels; received "
                               "non-integer values (for regression use a non-softmax, "
                               "non-sigmoid output).")
    low, high = float(xp.min(y)), float(xp.max(y))
    if low < 0 or high >= n_classes:
        raise InvalidDataError(f"{where}: {name} labels must be in [0, {n_classes}) for "
                               f"{layer}; received min {low:g}, max {high:g}.")


class MulticlassHead(Head):
    """A softmax over ``n_out`` classes: integer labels ``0 .. n_out - 1``."""

    name = "multiclass"
    makes_targets = True

    def target_shape(self, n: int) -> tuple[tuple[int, ...], str]:
        return (n,), "(n_samples,) integer labels"

    def check_labels(self, xp, y, where, name, layer=""):
        _check_integer_labels(xp, y, self.n_out, where, name, layer)

    def encode(self, backend, dtype, y, n):
        xp = backend.xp
        labels = xp.reshape(backend.asarray(y, dtype=_index_dtype(xp, backend.device)), (n,))
        return self.targets(backend, dtype, labels), labels

    def targets(self, backend, dtype, labels):
        # One-hot rows gathered from the identity: one pass that writes the (n, k) result
        # (comparing with arange and casting took two, 3x the time at 1M x 10 on NumPy).
        xp = backend.xp
        eye = xp.eye(self.n_out, dtype=dtype, device=backend.device)
        return xp.take(eye, labels, axis=0)

    def predict(self, xp, out):
        return xp.astype(xp.argmax(out, axis=1), _index_dtype(xp, None))

    def hits(self, xp, out, labels, weight=None):
        right = xp.argmax(out, axis=1) == labels
        return right if weight is None else xp.astype(right, weight.dtype) * weight[:, 0]

    def count(self, xp, hits, dtype):
        return xp.sum(xp.astype(hits, dtype, copy=False))


class BinaryHead(Head):
    """Sigmoid outputs: 0/1 labels per output column."""

    name = "binary"

    def target_shape(self, n):
        k = self.n_out
        if k == 1:
            return (n,), "(n_samples,) or (n_samples, 1)"
        return (n, k), f"(n_samples, {k})"

    def check_labels(self, xp, y, where, name, layer=""):
        _check_integer_labels(xp, y, 2, where, name, layer)

    def encode(self, backend, dtype, y, n):
        Y = backend.xp.reshape(backend.asarray(y, dtype=dtype), (n, self.n_out))
        return Y, Y

    def predict(self, xp, out):
        hits = xp.astype(out >= (0 if self.fused else 0.5), _index_dtype(xp, None))
        return xp.reshape(hits, (-1,)) if self.n_out == 1 else hits

    def hits(self, xp, out, labels, weight=None):
        right = (out >= (0 if self.fused else 0.5)) == (labels > 0.5)
        return right if weight is None else xp.astype(right, weight.dtype) * weight

    def count(self, xp, hits, dtype):
        return xp.sum(xp.astype(hits, dtype, copy=False)) / hits.shape[1]


class RegressionHead(Head):
    """Real-valued outputs, compared with the targets as they are."""

    name = "regression"
    classifier = False

    def target_shape(self, n):
        k = self.n_out
        if k == 1:
            return (n,), "(n_samples,) or (n_samples, 1)"
        return (n, k), f"(n_samples, {k})"

    def encode(self, backend, dtype, y, n):
        return backend.xp.reshape(backend.asarray(y, dtype=dtype), (n, self.n_out)), None

    def predict(self, xp, out):
        return out

    def hits(self, xp, out, labels, weight=None):
        return None


def head_for(output_activation: str, n_out: int, fused: bool) -> Head:
    """The head an output activation implies: softmax -> multiclass, sigmoid -> binary,
    anything else -> regression."""
    cls = {"softmax": MulticlassHead, "sigmoid": BinaryHead}.get(output_activation,
                                                                 RegressionHead)
    return cls(n_out, fused)
