"""Fused CuPy kernels for the backward passes of tanh, sigmoid and ReLU and for the softmax and
sigmoid cross-entropy losses.

Each computes the same function as the generic Array API code it stands beside
(:mod:`nnx.activations`, :mod:`nnx.losses`) and falls back to it where it does not apply (not
CuPy arrays, another dtype, not contiguous), as thinc's CupyOps does. CuPy is imported only
when a kernel is first made.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import threading
import types
from typing import Any

import numpy as np

from nnx import activations, losses
from nnx.activations import Activation, row_max, row_sum
from nnx.losses import Loss

_FUSED_DTYPES = ("float32", "float64")
# The generic path runs one kernel per operation and so rounds after every one; without
# contraction into fused multiply-adds the kernels below round the same way, so they compute
# the same numbers (reductions aside, whose summation order differs).
_NVRTC_OPTIONS = ("--fmad=false",)


def _is_cupy_array(x: Any) -> bool:
    # By the class's module, so that NumPy or torch inputs never import CuPy.
    return type(x).__module__.split(".")[0] == "cupy"


def _fusable(*arrays: Any, same_shape: bool = True) -> bool:
    """Whether the fused kernels apply: CuPy arrays, all float32 or all float64,
    C-contiguous, and (by default) of one shape. Anything else takes the generic path."""
    first = arrays[0]
    for x in arrays:
        if not _is_cupy_array(x) or x.dtype != first.dtype:
            return False
        if x.dtype.name not in _FUSED_DTYPES or not x.flags.c_contiguous:
            return False
        if same_shape and x.shape != first.shape:
            return False
    return True


@functools.cache
def _kernels() -> Any:
    """The CuPy kernels, made on first use (each compiles per dtype at its first call)."""
    import cupy

    def elementwise(params: str, out: str, body: str, name: str) -> Any:
        return cupy.ElementwiseKernel(params, out, body, name, options=_NVRTC_OPTIONS)

    def total(params: str, body: str, name: str) -> Any:
        # A sum, in T, as xp.sum does. Called with axis=1 (one sum per row, rows spread over
        # the GPU's blocks), then summed by xp.sum: with axis=None CuPy's own reduction of a
        # multi-input kernel runs on a single block of 512 threads (cupy/_core/_reduction.pyx;
        # CUB serves one-input, one-output reductions only, such as the xp.sum after it).
        return cupy.ReductionKernel(params, "T total", body, "a + b", "total = a", "0", name,
                                    options=_NVRTC_OPTIONS)

    return types.SimpleNamespace(
        # c[i, j] = sum_k a[i, k, 0] * b[0, k, j]: a matrix product as one reduction over the
        # broadcast (n, k, m) index space, with no (n, k, m) temporary and no cuBLAS.
        matmul=cupy.ReductionKernel("T a, T b", "T c", "a * b", "a + b", "c = a", "0",
                                    "nnx_matmul_in_capture", options=_NVRTC_OPTIONS),
        tanh_backward=elementwise(
            "T act, T grad", "T dz", "dz = grad * (1 - act * act)", "nnx_tanh_backward"),
        sigmoid_backward=elementwise(
            "T act, T grad", "T dz", "dz = grad * (act * (1 - act))", "nnx_sigmoid_backward"),
        relu_backward=elementwise(
            "T act, T grad", "T dz", "dz = act > 0 ? grad : (T)0", "nnx_relu_backward"),
        exp_shifted=elementwise(
            "T z, T zmax", "T e", "e = exp(z - zmax)", "nnx_exp_shifted"),
        softmax_ce_loss=total(
            "T y, T z, T zmax, T s", "y * (log(s) - (z - zmax))", "nnx_softmax_ce_loss"),
        softmax_ce_grad=elementwise(
            "T e, T s, T y, T c", "T dz", "dz = (e / s - y) * c", "nnx_softmax_ce_grad"),
        bce_loss=total(
            "T z, T y", "(z > 0 ? z : (T)0) - z * y + log1p(exp(-fabs(z)))", "nnx_bce_loss"),
        bce_grad=elementwise(
            "T z, T y, T c", "T dz",
            "T e = exp(-fabs(z)); "
            "T p = z >= 0 ? (T)1 / ((T)1 + e) : e / ((T)1 + e); "
            "dz = (p - y) * c",
            "nnx_bce_grad"),
    )


_capture = threading.local()


@contextlib.contextmanager
def capturing():
    """While a training step is captured as a CUDA graph (:mod:`.graph`), matrix products in
    this thread run as nnx's own kernel: every cuBLAS call raises during a stream capture
    (``cupy_backends/cuda/libs/cublas.pyx``: setStream refuses a capturing stream)."""
    before = getattr(_capture, "active", False)
    _capture.active = True
    try:
        yield
    finally:
        _capture.active = before


def matmul(a, b):
    """``a @ b`` for 2-D arrays: cuBLAS, except inside :func:`capturing`, where it is one
    reduction kernel (fine for the small layers whose steps a graph speeds up; far slower than
    cuBLAS for large ones)."""
    if not getattr(_capture, "active", False):
        return a @ b
    return _kernels().matmul(a[:, :, None], b[None, :, :], axis=1)


def _scalar(value: float, like: Any) -> Any:
    """`value` as a NumPy scalar of `like`'s dtype (the kernels' type T)."""
    return np.dtype(like.dtype.name).type(value)


def tanh_backward(xp, a, grad):
    """``grad * (1 - a * a)`` in one kernel; elsewhere :func:`nnx.activations.tanh_backward`."""
    if not _fusable(a, grad):
        return activations.tanh_backward(xp, a, grad)
    return _kernels().tanh_backward(a, grad)


def sigmoid_backward(xp, a, grad):
    """``grad * (a * (1 - a))`` in one kernel."""
    if not _fusable(a, grad):
        return activations.sigmoid_backward(xp, a, grad)
    return _kernels().sigmoid_backward(a, grad)


def relu_backward(xp, a, grad):
    """``grad`` where ``a > 0``, else 0, in one kernel."""
    if not _fusable(a, grad):
        return activations.relu_backward(xp, a, grad)
    return _kernels().relu_backward(a, grad)


def softmax_cross_entropy(xp, logits, Y, grad=True, scale=1.0, weight=None):
    """:func:`nnx.losses.softmax_cross_entropy` with the exponentials, the loss and the
    gradient ``scale * (e / s - Y) / n`` each in one kernel.

    Parameters
    ----------
    logits : array, shape (n_samples, n_classes)
    Y : array, shape (n_samples, n_classes), one-hot rows
    """
    if weight is not None or logits.ndim != 2 or not _fusable(logits, Y):
        return losses.softmax_cross_entropy(xp, logits, Y, grad=grad, scale=scale, weight=weight)
    kernels = _kernels()
    n = logits.shape[0]
    # The row maximum and sum are the generic ones: the same numbers as the generic path.
    zmax = row_max(xp, logits)
    e = kernels.exp_shifted(logits, zmax)
    s = row_sum(xp, e)
    loss = xp.sum(kernels.softmax_ce_loss(Y, logits, zmax, s, axis=1)) / n
    if not grad:
        return loss, None
    return loss, kernels.softmax_ce_grad(e, s, Y, _scalar(scale / n, logits))


def binary_cross_entropy(xp, logits, Y, grad=True, scale=1.0, weight=None):
    """:func:`nnx.losses.binary_cross_entropy` with the loss and the gradient
    ``scale * (sigmoid(logits) - Y) / n`` each in one kernel.

    Parameters
    ----------
    logits : array, shape (n_samples, n_outputs)
    Y : array, shape (n_samples, n_outputs)
    """
    if weight is not None or logits.ndim != 2 or not _fusable(logits, Y):
        return losses.binary_cross_entropy(xp, logits, Y, grad=grad, scale=scale, weight=weight)
    kernels = _kernels()
    n = logits.shape[0]
    loss = xp.sum(kernels.bce_loss(logits, Y, axis=1)) / n
    if not grad:
        return loss, None
    return loss, kernels.bce_grad(logits, Y, _scalar(scale / n, logits))


_FUSED_ACTIVATIONS = {
    "tanh": Activation("tanh", activations.tanh, tanh_backward),
    "sigmoid": Activation("sigmoid", activations.sigmoid, sigmoid_backward),
    "relu": Activation("relu", activations.relu, relu_backward),
}
_FUSED_LOSSES = {
    "cross_entropy": dataclasses.replace(losses.LOSSES["cross_entropy"],
                                         fn=softmax_cross_entropy),
    "binary_cross_entropy": dataclasses.replace(losses.LOSSES["binary_cross_entropy"],
                                                fn=binary_cross_entropy),
}


def fused_activations() -> dict[str, Activation]:
    """``name -> Activation`` whose forward is the generic one and whose backward is a fused
    CuPy kernel (falling back to the generic backward where the kernel does not apply)."""
    return dict(_FUSED_ACTIVATIONS)


def fused_losses() -> dict[str, Loss]:
    """``name -> Loss`` whose ``fn`` computes loss and gradient with fused CuPy kernels (same
    signature as :mod:`nnx.losses`: ``fn(xp, out, Y, grad=True, scale=1.0)``)."""
    return dict(_FUSED_LOSSES)


def fast_activation(activation: Activation) -> Activation:
    """The fused version of one of nnx's own activations, else `activation` itself.

    Only nnx's own activations are replaced (a user's Activation that happens to be called
    ``tanh`` is kept), and calling it again on the result returns the result.
    """
    fused = _FUSED_ACTIVATIONS.get(activation.name)
    generic = activations.ACTIVATIONS.get(activation.name)
    if fused is None or generic is None:
        return activation
    if activation.forward is not generic.forward or activation.backward is not generic.backward:
        return activation
    return fused


def fast_loss(loss: Any) -> Any:
    """The fused version of one of nnx's own losses (a :class:`Loss` or its function), else
    `loss` itself."""
    if isinstance(loss, Loss):
        fused, generic = _FUSED_LOSSES.get(loss.name), losses.LOSSES.get(loss.name)
        if fused is None or generic is None or loss.fn is not generic.fn:
            return loss
        return dataclasses.replace(loss, fn=fused.fn)
    for name, fused in _FUSED_LOSSES.items():
        if loss is losses.LOSSES[name].fn:
            return fused.fn
    return loss
