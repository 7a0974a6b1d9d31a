"""CUDA fast paths for the cupy backend: fused kernels, a CUDA-graph training step, device
out-of-memory errors and TF32.

Every fast path here computes the same function as the generic Array API code it stands beside,
is chosen in one place (:func:`fast_activation`, :func:`fast_loss`, :func:`capture_step`) and
falls back to the generic code where it does not apply (thinc's CupyOps does the same).
Importing this module never imports CuPy or torch: they are imported inside the functions that
only run on their arrays.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import re
import sys
import types
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from nnx import activations, losses
from nnx.activations import Activation, row_max, row_sum
from nnx.losses import Loss

__all__ = [
    "CapturedStep", "DeviceMemoryError", "capture_step", "device_memory_error",
    "enable_tf32", "fast_activation", "fast_loss", "fused_activations", "fused_losses",
    "is_device_memory_error", "tf32_enabled", "translate_memory_errors",
]


# -- fused elementwise kernels ----------------------------------------------------------------
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
        # A sum over every element, in T, as xp.sum does.
        return cupy.ReductionKernel(params, "T total", body, "a + b", "total = a", "0", name,
                                    options=_NVRTC_OPTIONS)

    return types.SimpleNamespace(
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


def softmax_cross_entropy(xp, logits, Y, grad=True, scale=1.0):
    """:func:`nnx.losses.softmax_cross_entropy` with the exponentials, the loss and the
    gradient ``scale * (e / s - Y) / n`` each in one kernel.

    Parameters
    ----------
    logits : array, shape (n_samples, n_classes)
    Y : array, shape (n_samples, n_classes), one-hot rows
    """
    if logits.ndim != 2 or not _fusable(logits, Y):
        return losses.softmax_cross_entropy(xp, logits, Y, grad=grad, scale=scale)
    kernels = _kernels()
    n = logits.shape[0]
    # The row maximum and sum are the generic ones: the same numbers as the generic path.
    zmax = row_max(xp, logits)
    e = kernels.exp_shifted(logits, zmax)
    s = row_sum(xp, e)
    loss = kernels.softmax_ce_loss(Y, logits, zmax, s) / n
    if not grad:
        return loss, None
    return loss, kernels.softmax_ce_grad(e, s, Y, _scalar(scale / n, logits))


def binary_cross_entropy(xp, logits, Y, grad=True, scale=1.0):
    """:func:`nnx.losses.binary_cross_entropy` with the loss and the gradient
    ``scale * (sigmoid(logits) - Y) / n`` each in one kernel.

    Parameters
    ----------
    logits : array, shape (n_samples, n_outputs)
    Y : array, shape (n_samples, n_outputs)
    """
    if logits.ndim != 2 or not _fusable(logits, Y):
        return losses.binary_cross_entropy(xp, logits, Y, grad=grad, scale=scale)
    kernels = _kernels()
    n = logits.shape[0]
    loss = kernels.bce_loss(logits, Y) / n
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


def _backend_name(backend: Any) -> str | None:
    return backend if isinstance(backend, str) or backend is None else getattr(
        backend, "name", None)


def fast_activation(activation: Activation, backend: Any) -> Activation:
    """The activation to use on `backend`: the fused one on cupy, `activation` otherwise.

    Only nnx's own activations are replaced (a user's Activation that happens to be called
    ``tanh`` is kept), and calling it again on the result returns the result.

    Parameters
    ----------
    activation : Activation
    backend : Backend or str
        A :class:`nnx.Backend` or a backend name.
    """
    fused = _FUSED_ACTIVATIONS.get(activation.name)
    generic = activations.ACTIVATIONS.get(activation.name)
    if _backend_name(backend) != "cupy" or fused is None or generic is None:
        return activation
    if activation.forward is not generic.forward or activation.backward is not generic.backward:
        return activation
    return fused


def fast_loss(loss: Loss | Callable[..., Any], backend: Any) -> Any:
    """The loss to use on `backend`: the fused one on cupy, `loss` otherwise.

    Parameters
    ----------
    loss : Loss or function
        An :class:`nnx.losses.Loss` (a Loss is returned) or one of the functions of
        :mod:`nnx.losses` (a function is returned).
    backend : Backend or str
    """
    if _backend_name(backend) != "cupy":
        return loss
    if isinstance(loss, Loss):
        fused, generic = _FUSED_LOSSES.get(loss.name), losses.LOSSES.get(loss.name)
        if fused is None or generic is None or loss.fn is not generic.fn:
            return loss
        return dataclasses.replace(loss, fn=fused.fn)
    for name, fused in _FUSED_LOSSES.items():
        if loss is losses.LOSSES[name].fn:
            return fused.fn
    return loss


# -- out of device memory ---------------------------------------------------------------------
class DeviceMemoryError(MemoryError):
    """The device ran out of memory. The message says where, how much, on which device and
    dtype, which arrays were involved, and what to change.

    Attributes
    ----------
    what : str
    backend : str
    dtype : str or None
    shapes : dict of str to tuple
    requested_bytes : int or None
        The allocation that failed, where the library says.
    """

    def __init__(self, message: str, *, what: str, backend: str, dtype: str | None,
                 shapes: dict[str, tuple[int, ...]], requested_bytes: int | None) -> None:
        super().__init__(message)
        self.what, self.backend, self.dtype = what, backend, dtype
        self.shapes, self.requested_bytes = shapes, requested_bytes


_OOM_LIBRARIES = ("cupy", "cupy_backends", "torch")
_OOM_STATUSES = ("cudaErrorMemoryAllocation", "CUBLAS_STATUS_ALLOC_FAILED",
                 "CUSOLVER_STATUS_ALLOC_FAILED", "CUDA out of memory")


def is_device_memory_error(exc: BaseException) -> bool:
    """Whether `exc` is CuPy's or torch's out-of-device-memory error.

    Recognised by class name and module (``cupy.cuda.memory.OutOfMemoryError``,
    ``torch.OutOfMemoryError``, ``torch.cuda.OutOfMemoryError``) and, for the errors CUDA
    libraries raise with a status, by that status (``cudaErrorMemoryAllocation``,
    ``CUBLAS_STATUS_ALLOC_FAILED``, torch's older ``CUDA out of memory``), so that neither CuPy
    nor torch is imported here.
    """
    if isinstance(exc, DeviceMemoryError):
        return False
    for cls in type(exc).__mro__:
        if (cls.__module__ or "").split(".")[0] in _OOM_LIBRARIES:
            if cls.__name__ == "OutOfMemoryError":
                return True
            if any(status in str(exc) for status in _OOM_STATUSES):
                return True
    # torch before 1.13 raised a plain RuntimeError.
    return isinstance(exc, RuntimeError) and "CUDA out of memory" in str(exc)


def _itemsize(dtype: Any) -> int | None:
    name = str(getattr(dtype, "name", dtype)).removeprefix("torch.")
    try:
        return np.dtype(name).itemsize
    except TypeError:
        return None


def _dtype_name(dtype: Any) -> str | None:
    return None if dtype is None else str(getattr(dtype, "name", dtype)).removeprefix("torch.")


def _format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError(n)


def _device_words(backend: Any) -> str:
    name = _backend_name(backend) or str(backend)
    device = getattr(backend, "device", None)
    try:
        label = backend.device_name()
    except Exception:  # noqa: BLE001 - only a label: never hide the memory error behind another
        label = None
    parts = [str(part) for part in (label, device) if part is not None]
    where = ", ".join(dict.fromkeys(parts))
    return f"{name} ({where})" if where else name


def _requested_bytes(exc: BaseException) -> int | None:
    size = getattr(exc, "_size", None)  # cupy.cuda.memory.OutOfMemoryError(size, total, limit)
    if isinstance(size, int):
        return size
    match = re.search(r"Tried to allocate ([\d.]+) (B|KiB|MiB|GiB|TiB)", str(exc))
    if match:  # torch: "Tried to allocate 2.00 GiB"
        power = ("B", "KiB", "MiB", "GiB", "TiB").index(match.group(2))
        return int(float(match.group(1)) * 1024**power)
    return None


def device_memory_error(exc: BaseException, what: str,
                        shapes: Mapping[str, Any] | Iterable[tuple[str, Any]]
                        | Callable[[], Any],
                        backend: Any, dtype: Any = None) -> DeviceMemoryError | None:
    """Turn CuPy's or torch's out-of-memory error into a :class:`DeviceMemoryError` that says
    what to change; None for any other exception (re-raise it as it is).

    Use as ``raise err from exc`` so that the library's own message stays in the chain.

    Parameters
    ----------
    exc : BaseException
    what : str
        Where it happened, e.g. ``'Sequential.fit'``.
    shapes : mapping of str to tuple, or pairs, or a function returning either
        The arrays involved, e.g. ``{'X': X.shape, 'layers[0] output': (n, 4096)}``.
    backend : Backend or str
    dtype : dtype or str, optional
    """
    if not is_device_memory_error(exc):
        return None
    if callable(shapes):
        shapes = shapes()
    pairs = shapes.items() if isinstance(shapes, Mapping) else shapes
    shapes = {str(name): tuple(int(d) for d in shape) for name, shape in pairs}
    dtype_name = _dtype_name(dtype)
    itemsize = _itemsize(dtype_name) if dtype_name else None
    requested = _requested_bytes(exc)

    allocating = f" allocating {_format_bytes(requested)}" if requested is not None else ""
    held = getattr(exc, "_total", None)
    if isinstance(held, int) and held > 0:
        allocating += f" (the memory pool already held {_format_bytes(held)})"
    sizes = []
    for name, shape in shapes.items():
        size = f" = {_format_bytes(math.prod(shape) * itemsize)}" if itemsize else ""
        sizes.append(f"{name} {shape}{size}")
    arrays = f" Arrays involved{f' ({dtype_name})' if dtype_name else ''}: " + (
        "; ".join(sizes) + "." if sizes else "none recorded.")
    fixes = ["pass a smaller batch_size= (it bounds every per-batch array)"]
    if dtype_name == "float64":
        fixes.append("use dtype='float32' (half the memory of float64)")
    fixes.append("use fewer or smaller layers")
    fixes.append("free other device arrays (and, on CuPy, "
                 "cupy.get_default_memory_pool().free_all_blocks())")
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    message = (f"{what}: the {_device_words(backend)} device ran out of memory{allocating}."
               f"{arrays} To fit: {'; '.join(fixes)}. [{type(exc).__name__}: {first_line}]")
    return DeviceMemoryError(message, what=what, backend=_backend_name(backend) or str(backend),
                             dtype=dtype_name, shapes=shapes, requested_bytes=requested)


@contextlib.contextmanager
def translate_memory_errors(what: str, shapes: Any, backend: Any, dtype: Any = None):
    """Inside the block, CuPy's and torch's out-of-memory errors become
    :class:`DeviceMemoryError` (see :func:`device_memory_error`); others pass unchanged.

    `shapes` may be a function, called only if memory runs out.
    """
    try:
        yield
    except Exception as exc:
        err = device_memory_error(exc, what, shapes, backend, dtype)
        if err is None:
            raise
        raise err from exc


# -- TF32 -------------------------------------------------------------------------------------
TF32_ENV = "CUPY_TF32"


def enable_tf32() -> bool:
    """Let CuPy's float32 matrix products use TF32 tensor cores (``CUPY_TF32=1``).

    CuPy reads ``CUPY_TF32`` once, at the first float32 matrix product of the process, so this
    must run before that: at program start, or export ``CUPY_TF32=1`` in the shell. Whether a
    product already ran cannot be known from here; if CuPy is already imported a warning says
    so.

    Returns
    -------
    bool
        True when CuPy was not yet imported (the setting is sure to apply), else False.
    """
    os.environ[TF32_ENV] = "1"
    if "cupy" in sys.modules:
        warnings.warn(
            "nnx.cuda.enable_tf32: CuPy is already imported; CUPY_TF32=1 applies only if no "
            "float32 matrix product has run in this process yet (CuPy reads it once, at the "
            "first). Call enable_tf32() at program start or export CUPY_TF32=1.",
            UserWarning, stacklevel=2)
        return False
    return True


def tf32_enabled() -> bool:
    """Whether ``CUPY_TF32`` asks for TF32 (as CuPy reads it: an integer > 0), for a
    benchmark's ``extra_info``. It says what was asked, not what CuPy already decided."""
    try:
        return int(os.environ.get(TF32_ENV, "0").strip() or "0") > 0
    except ValueError:
        return False


# -- the captured training step ---------------------------------------------------------------
class _HoldingAllocator:
    """A CuPy allocator that keeps every block it hands out until :meth:`release`, so the
    memory pool cannot give a block that a CUDA graph writes to another array."""

    def __init__(self, base: Callable[[int], Any]) -> None:
        self.base = base
        self.blocks: list[Any] = []

    def __call__(self, size: int) -> Any:
        pointer = self.base(size)
        self.blocks.append(pointer)
        return pointer

    @property
    def nbytes(self) -> int:
        return sum(int(getattr(p.mem, "size", 0)) for p in self.blocks)

    def release(self) -> None:
        self.blocks = []


class _Saved:
    """Shallow copies of objects' attributes, put back by :meth:`restore` (train_step
    replaces arrays, never writes into them, so these copies are snapshots)."""

    def __init__(self, *objects: Any) -> None:
        self.items = [(obj, dict(vars(obj))) for obj in objects]

    def restore(self) -> None:
        for obj, attributes in self.items:
            vars(obj).clear()
            vars(obj).update(attributes)


_capture_streams: dict[int, Any] = {}


def _capture_stream(device_id: int) -> Any:
    """One non-blocking capture stream per device, kept for the process: the memory pool
    caches freed blocks per stream, so later captures reuse what earlier ones gave back, and
    cuBLAS keeps its workspace for the stream."""
    if device_id not in _capture_streams:
        import cupy

        _capture_streams[device_id] = cupy.cuda.Stream(non_blocking=True)
    return _capture_streams[device_id]


def _check_batch_size(batch_size: Any, n: int, where: str) -> None:
    if batch_size is None:
        return
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"{where}: batch_size must be None or an integer >= 1; received "
                         f"batch_size={batch_size!r}.")
    if batch_size < n:
        raise ValueError(
            f"{where}: batch_size={batch_size} < {n} samples asks for minibatches, but a "
            "captured step replays one fixed full batch (the shuffling and slicing of "
            "minibatches happen on the host). Pass batch_size=None, or train minibatches with "
            f"model.fit(X, y, batch_size={batch_size}).")


def _check_optimizer(opt: Any, where: str) -> None:
    from nnx.optimizers import SGD, Adam, Constant

    if isinstance(opt, Adam):
        raise ValueError(
            f"{where}: {opt!r} cannot be captured: its bias corrections depend on the step "
            "count t, host numbers that a CUDA graph freezes at their values of the captured "
            "step. Use optimizer='sgd', 'momentum' or 'nesterov', or train with Adam eagerly "
            "(model.fit or model.train_step).")
    if type(opt) is not SGD:
        raise ValueError(f"{where}: only nnx.SGD (any momentum, Nesterov or not) can be "
                         f"captured; received {opt!r}.")
    if not isinstance(opt.schedule, Constant):
        raise ValueError(
            f"{where}: the learning-rate schedule {opt.schedule!r} changes the rate per epoch, "
            "but a CUDA graph keeps the rate it captured. Capture without a schedule and "
            "capture again whenever you change the rate.")


def _check_backend(model: Any, where: str) -> None:
    if model.backend.name != "cupy":
        raise ValueError(
            f"{where}: the model runs on {model.backend.name}; a CUDA graph needs the cupy "
            "backend (Sequential(..., backend='cupy') or NNX_BACKEND=cupy). Elsewhere use "
            "model.train_step(X, Y) or model.fit.")


def _encoded_targets(model: Any, Y: Any, n: int, where: str) -> Any:
    """Y as train_step takes it: already-encoded ``(n, n_out)`` targets are kept (in the
    model's dtype), labels are encoded as ``fit`` does."""
    if np.ndim(Y) == 2 and tuple(np.shape(Y)) == (n, model.n_out):
        Yd = model.backend.asarray(Y, dtype=model.dtype)
        model._check_finite(Yd, "Y", where)
        return Yd
    return model._as_y(Y, n, where)[0]


class CapturedStep:
    """One full-batch training step of a cupy :class:`~nnx.Sequential`, captured once as a
    CUDA graph and replayed by each call: forward, loss, backward and the SGD update in one
    launch, with no Python in between.

    The graph reads and writes fixed addresses: it reads ``X``, ``Y`` and persistent parameter
    (and momentum) buffers, and at its end copies the new parameters, velocities and loss into
    those buffers. Every block the step allocates is held for the graph's lifetime. The model
    itself is not touched by replays: :meth:`sync_to_model` copies the trained parameters (and
    the optimizer's velocity) into it.

    The learning rate, momentum and L2 strength are host numbers baked into the graph: a call
    raises if they changed since the capture (capture again). Schedules and Adam are refused.

    Parameters
    ----------
    model : Sequential
        On the cupy backend, with ``model.optimizer`` an :class:`nnx.SGD` without a schedule.
    X : array, shape (n_samples, n_in)
    Y : array, shape (n_samples, n_out), or labels as ``fit`` takes them
        Write new data of the same shape into ``step.X`` / ``step.Y`` in place
        (``cupy.copyto``) to train on it without capturing again.
    """

    def __init__(self, model: Any, X: Any, Y: Any) -> None:
        where = "nnx.cuda.CapturedStep"
        opt = model.optimizer
        if opt is None:
            raise ValueError(f"{where}: the model has no optimizer; use nnx.cuda.capture_step("
                             "model, X, Y, optimizer='sgd', lr=...) or set model.optimizer.")
        _check_optimizer(opt, where)
        _check_backend(model, where)
        import cupy

        self._cupy = cupy
        self.model, self.optimizer = model, opt
        self.X = model._as_X(X, where)
        self.Y = _encoded_targets(model, Y, self.X.shape[0], where)
        self.steps = 0
        self._settings = self._current_settings()
        self._graph: Any = None
        self._held: _HoldingAllocator | None = None
        self._last_stream: Any = None
        try:
            self._capture(where)
        except Exception as exc:
            err = device_memory_error(exc, where, self._shapes, model.backend, model.dtype)
            if err is None:
                raise
            raise err from exc

    def __repr__(self) -> str:
        state = "closed" if self._graph is None else f"{self.steps} replays"
        return (f"CapturedStep({self.model!r}, X {tuple(self.X.shape)}, {self.optimizer!r}, "
                f"{state})")

    def _current_settings(self) -> tuple[Any, ...]:
        opt = self.optimizer
        return (opt.rate(), opt.momentum, opt.nesterov, self.model.l2)

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        n = self.X.shape[0]
        shapes = {"X": tuple(self.X.shape), "Y": tuple(self.Y.shape)}
        for i, layer in enumerate(self.model.layers):
            shapes[f"layers[{i}] output"] = (n, layer.n_out)
        return shapes

    @property
    def held_bytes(self) -> int:
        """Device memory held for the graph's temporaries (besides X, Y and the buffers)."""
        return 0 if self._held is None else self._held.nbytes

    def _record(self, params: list[Any], velocity: list[Any], loss: Any) -> None:
        """One train_step, then its results copied into the given buffers."""
        copyto = self._cupy.copyto
        step_loss, _ = self.model.train_step(self.X, self.Y)
        for buffer, new in zip(params, self.model.get_params()):
            if new is not buffer:
                copyto(buffer, new)
        for buffer, new in zip(velocity, self.optimizer.velocity or ()):
            if new is not buffer:
                copyto(buffer, new)
        copyto(loss, step_loss)

    def _capture(self, where: str) -> None:
        cupy, model, opt = self._cupy, self.model, self.optimizer
        base = cupy.cuda.get_allocator()
        if base is cupy.cuda.malloc_async or isinstance(
                getattr(base, "__self__", None), cupy.cuda.MemoryAsyncPool):
            raise ValueError(
                f"{where}: CuPy's allocator is the stream-ordered one (malloc_async); a "
                "captured step needs the default memory pool (cupy.cuda.set_allocator("
                "cupy.get_default_memory_pool().malloc)).")
        saved = _Saved(model, opt, *model.layers)
        origin = cupy.cuda.get_current_stream()
        try:
            self._params = [cupy.array(p, copy=True) for p in model.get_params()]
            if opt.momentum:
                start = opt.velocity or [cupy.zeros_like(p) for p in self._params]
                self._velocity = [cupy.array(v, copy=True) for v in start]
            else:
                self._velocity = []
            self._loss = cupy.zeros((), dtype=self._params[0].dtype)
            # The capture stream does not wait for the origin stream by itself.
            origin.synchronize()
            stream = _capture_stream(cupy.cuda.Device().id)
            with stream:
                # Warm-up: the same step, eagerly, on scratch copies, so that kernels are
                # compiled and cuBLAS has its workspace for this stream before the capture;
                # holding its blocks, then freeing them, leaves the pool's cache for this
                # stream with enough blocks that the capture needs no cudaMalloc.
                warm = _HoldingAllocator(base)
                with cupy.cuda.using_allocator(warm):
                    scratch = [p.copy() for p in self._params]
                    scratch_velocity = [v.copy() for v in self._velocity]
                    model.set_params(scratch)
                    if self._velocity:
                        opt.velocity = scratch_velocity
                    self._record(scratch, scratch_velocity, cupy.zeros_like(self._loss))
                stream.synchronize()
                saved.restore()
                del scratch, scratch_velocity
                warm.release()

                held = _HoldingAllocator(base)
                with cupy.cuda.using_allocator(held):
                    model.set_params(self._params)
                    if self._velocity:
                        opt.velocity = list(self._velocity)
                    stream.begin_capture()
                    capturing = True
                    try:
                        self._record(self._params, self._velocity, self._loss)
                        capturing = False
                        graph = stream.end_capture()
                    except BaseException as exc:
                        if capturing:
                            # End the (maybe invalidated) capture, or the stream stays unusable.
                            with contextlib.suppress(Exception):
                                stream.end_capture()
                        if not isinstance(exc, Exception) or is_device_memory_error(exc):
                            raise
                        raise RuntimeError(
                            f"{where}: the training step could not be captured as a CUDA graph "
                            f"({type(exc).__name__}: {exc}). Something in it waits for the "
                            "host (a float() or bool() of a device array, a host-to-device "
                            "copy) or is not capturable; model.train_step(X, Y) still trains "
                            "eagerly.") from exc
        finally:
            saved.restore()
        self._graph, self._held = graph, held

    def __call__(self) -> Any:
        """Replay the step on the current stream; returns the loss buffer (a 0-d device
        array, overwritten by the next call; no host sync)."""
        if self._graph is None:
            raise RuntimeError("nnx.cuda.CapturedStep: this step was closed; capture a new "
                               "one with nnx.cuda.capture_step(model, X, Y).")
        if (self.model.optimizer is not self.optimizer
                or self._current_settings() != self._settings):
            raise RuntimeError(
                "nnx.cuda.CapturedStep: the optimizer, its learning rate or momentum, or the "
                "model's l2 changed since the capture, but the graph replays the values it "
                "captured. Call step.sync_to_model(), then capture again: "
                "step = nnx.cuda.capture_step(model, X, Y).")
        stream = self._cupy.cuda.get_current_stream()
        self._graph.launch(stream)
        self._last_stream = stream
        self.steps += 1
        return self._loss

    @property
    def loss(self) -> Any:
        """The loss of the last replayed step (0-d device array; 0 before the first)."""
        return self._loss

    def sync_to_model(self) -> None:
        """Copy the trained parameters (and SGD's velocity) into the model, as new arrays:
        afterwards ``model.get_params()`` holds the result of every replay so far, and the
        model keeps its rule that nothing writes into the arrays it hands out."""
        self.model.set_params([p.copy() for p in self._params])
        if self._velocity:
            self.optimizer.velocity = [v.copy() for v in self._velocity]

    def close(self) -> None:
        """Wait for the last replay, then free the graph and the memory it holds (the
        buffers stay, so :meth:`sync_to_model` still works)."""
        if self._graph is None:
            return
        if self._last_stream is not None:
            self._last_stream.synchronize()
        self._graph = None
        if self._held is not None:
            self._held.release()
        self._held = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def capture_step(model: Any, X: Any, Y: Any, optimizer: Any = None, lr: float | None = None,
                 batch_size: int | None = None) -> CapturedStep:
    """Capture one full-batch training step of a cupy model as a CUDA graph.

    Parameters
    ----------
    model : Sequential
        On the cupy backend.
    X : array, shape (n_samples, n_in)
    Y : array, shape (n_samples, n_out), or labels as ``fit`` takes them
    optimizer : {'sgd', 'momentum', 'nesterov'} or SGD, optional
        Default: the model's optimizer, else ``SGD``. Adam and schedules are refused.
    lr : float, optional
    batch_size : int, optional
        None (or at least the number of samples): full batch, the only kind captured.

    Returns
    -------
    CapturedStep
        ``loss = step()`` trains one step; ``step.sync_to_model()`` puts the weights back.

    >>> step = nnx.cuda.capture_step(model, X, y, optimizer="momentum", lr=0.1)
    >>> for _ in range(1000):
    ...     loss = step()
    >>> step.sync_to_model()
    """
    from nnx.optimizers import Optimizer, get_optimizer

    where = "nnx.cuda.capture_step"
    _check_batch_size(batch_size, int(np.shape(X)[0]), where)
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float))
                           or not math.isfinite(lr) or lr <= 0):
        raise ValueError(f"{where}: lr must be a finite number > 0; received lr={lr!r}.")
    if optimizer is None and model.optimizer is not None:
        opt, new_lr = model.optimizer, lr
    elif isinstance(optimizer, Optimizer):
        opt, new_lr = optimizer, lr
    else:
        opt, new_lr = get_optimizer(optimizer, lr=lr), None
    _check_optimizer(opt, where)
    _check_backend(model, where)
    # Everything is checked: only now does the model change (and changes back on failure).
    previous, previous_lr = model.optimizer, opt.lr
    if new_lr is not None:
        opt.lr = float(new_lr)
    model.optimizer = opt
    try:
        return CapturedStep(model, X, Y)
    except BaseException:
        model.optimizer, opt.lr = previous, previous_lr
        raise
