"""One full-batch training step of a CuPy model captured as a CUDA graph and replayed."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from nnx.backends.cupy.kernels import capturing as no_cublas
from nnx.memory import device_memory_error, is_device_memory_error


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


def _encoded_targets(model: Any, X: Any, Y: Any, n: int, where: str) -> Any:
    """Y as train_step takes it: already-encoded ``(n, n_out)`` targets are kept (in the
    model's dtype), labels are encoded as ``fit`` does."""
    if np.ndim(Y) == 2 and tuple(np.shape(Y)) == (n, model.n_out):
        Yd = model.backend.asarray(Y, dtype=model.dtype)
        xp = model.xp
        if not bool(xp.all(xp.isfinite(Yd))):
            raise ValueError(f"{where}: Y contains NaN or inf; remove or impute those values "
                             "first.")
        return Yd
    return model.encode(X, Y, where=where)[1]


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
        # Copies: the graph reads these buffers, and "write new data into step.X" must never
        # write into the caller's own arrays (encode keeps a CuPy array of the model's dtype).
        self.X = cupy.array(model.encode(X, where=where)[0], copy=True)
        self.Y = cupy.array(_encoded_targets(model, self.X, Y, self.X.shape[0], where),
                            copy=True)
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
        for buffer, new in zip(params, self.model.parameters()):
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
            self._params = [cupy.array(p, copy=True) for p in model.parameters()]
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
                # compiled before the capture;
                # holding its blocks, then freeing them, leaves the pool's cache for this
                # stream with enough blocks that the capture needs no cudaMalloc.
                warm = _HoldingAllocator(base)
                with cupy.cuda.using_allocator(warm):
                    scratch = [p.copy() for p in self._params]
                    scratch_velocity = [v.copy() for v in self._velocity]
                    model.assign_parameters(scratch)
                    if self._velocity:
                        opt.velocity = scratch_velocity
                    # As captured (nnx's matmul kernel): compiled, and its blocks cached.
                    with no_cublas():
                        self._record(scratch, scratch_velocity, cupy.zeros_like(self._loss))
                stream.synchronize()
                saved.restore()
                del scratch, scratch_velocity
                warm.release()

                held = _HoldingAllocator(base)
                with cupy.cuda.using_allocator(held):
                    model.assign_parameters(self._params)
                    if self._velocity:
                        opt.velocity = list(self._velocity)
                    stream.begin_capture()
                    capturing = True
                    try:
                        with no_cublas():  # cuBLAS raises inside a capture
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
        afterwards ``model.parameters()`` holds the result of every replay so far, and the
        model keeps its rule that nothing writes into the arrays it hands out."""
        self.model.assign_parameters([p.copy() for p in self._params])
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
