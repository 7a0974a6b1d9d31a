"""CUDA fast paths, under the names nnx has always given them.

They live with their backend (:mod:`nnx.backends.cupy`: fused kernels, the captured step,
TF32) and in :mod:`nnx.memory` (out-of-device-memory errors, for every backend); this module
only gathers them. Importing it never imports CuPy.
"""

from __future__ import annotations

from nnx.backends.cupy.graph import CapturedStep, capture_step
from nnx.backends.cupy.kernels import (
    binary_cross_entropy,
    fused_activations,
    fused_losses,
    relu_backward,
    sigmoid_backward,
    softmax_cross_entropy,
    tanh_backward,
)
from nnx.backends.cupy.kernels import fast_activation as _fast_activation
from nnx.backends.cupy.kernels import fast_loss as _fast_loss
from nnx.backends.cupy.tf32 import TF32_ENV, enable_tf32, tf32_enabled
from nnx.memory import (
    DeviceMemoryError,
    device_memory_error,
    is_device_memory_error,
    translate_memory_errors,
)

__all__ = [
    "TF32_ENV", "CapturedStep", "DeviceMemoryError", "binary_cross_entropy", "capture_step",
    "device_memory_error", "enable_tf32", "fast_activation", "fast_loss", "fused_activations",
    "fused_losses", "is_device_memory_error", "relu_backward", "sigmoid_backward",
    "softmax_cross_entropy", "tanh_backward", "tf32_enabled", "translate_memory_errors",
]


def fast_activation(activation, backend):
    """The activation to use on `backend` (a Backend or a name): the fused one on cupy,
    `activation` otherwise (see :meth:`nnx.backends.base.Backend.fast_activation`)."""
    if backend is None or isinstance(backend, str) and backend != "cupy":
        return activation
    if isinstance(backend, str):
        return _fast_activation(activation)
    return backend.fast_activation(activation)


def fast_loss(loss, backend):
    """The loss to use on `backend`: the fused one on cupy, `loss` otherwise."""
    if backend is None or isinstance(backend, str) and backend != "cupy":
        return loss
    if isinstance(backend, str):
        return _fast_loss(loss)
    return backend.fast_loss(loss)
