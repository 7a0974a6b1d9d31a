"""JAX (``jax.numpy``), on the CPU or a GPU.

float64: JAX computes in float32 unless its x64 mode is on, and that switch is global
(``jax.config.update("jax_enable_x64", True)`` changes the default dtype of every JAX array in
the program). nnx never flips it: a float64 model runs each of its computations inside
``jax.enable_x64(True)``, a thread-local scope that ends when the call returns, so the rest
of the program keeps its own setting. The arrays nnx returns are float64; JAX operations on
them outside nnx follow the program's setting (in float32 unless x64 is on there too).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
from typing import Any

import array_api_compat
import numpy as np

from nnx.backends.base import Backend, import_library
from nnx.errors import InvalidParameterError

INSTALL = "pip install 'nnx-arrays[jax]' (or jax[cuda13] for a GPU)"


class JaxBackend(Backend):
    library = "jax"
    has_scope = True

    @property
    def is_accelerator(self) -> bool:
        return self.device.platform != "cpu"

    @property
    def supports_float64(self) -> bool:
        return True  # in nnx's x64 scope (see the module's docstring)

    def device_label(self) -> str:
        return f"{self.device.platform}:{self.device.id}"

    def device_name(self) -> str:
        return "cpu" if self.device.platform == "cpu" else str(self.device.device_kind)

    @classmethod
    def is_array(cls, x: Any) -> bool:
        return array_api_compat.is_jax_array(x)

    @classmethod
    def to_numpy(cls, x: Any) -> np.ndarray:
        return np.asarray(x)

    def asarray(self, x: Any, dtype: Any = None) -> Any:
        """Host data is converted by NumPy and placed with one ``jax.device_put``: about
        30 us against 110 us for ``jnp.asarray(x, dtype=..., device=...)``, a fixed cost of
        every ``fit`` call that a compiled fit of a small network notices."""
        if isinstance(x, np.ndarray):  # (Python scalars stay weakly typed: jnp's own path)
            import jax

            host = np.asarray(x, dtype=None if dtype is None else np.dtype(dtype))
            return jax.device_put(host, self.device)
        return super().asarray(x, dtype=dtype)

    def synchronize(self) -> None:
        import jax

        # XLA runs a device's work in order: when a new tiny computation is done, so is
        # everything queued before it.
        jax.block_until_ready(jax.device_put(0.0, self.device) + 0)

    @contextlib.contextmanager
    def scope(self, dtype_name: str):
        import jax

        if dtype_name != "float64" or jax.config.jax_enable_x64:
            yield
            return
        with jax.enable_x64(True):
            yield

    @classmethod
    def is_memory_error(cls, exc: BaseException) -> bool:
        return (type(exc).__module__ or "").startswith(("jax", "jaxlib")) and \
            "RESOURCE_EXHAUSTED" in str(exc)

    # -- fast paths: nnx's own activations and losses, each one jitted function ---------------
    def fast_activation(self, activation: Any) -> Any:
        """nnx's own activation with its forward and backward each under ``jax.jit``: one
        dispatch instead of one per operation (sigmoid's forward is 5, softmax's about 8).
        A user's activation is kept as it is."""
        from nnx import activations

        generic = activations.ACTIVATIONS.get(activation.name)
        if generic is None or activation.forward is not generic.forward \
                or activation.backward is not generic.backward:
            return activation
        return dataclasses.replace(activation, forward=jitted(activation.forward),
                                   backward=jitted(activation.backward))

    def fast_loss(self, loss: Any) -> Any:
        """nnx's own loss, fused with its gradient, under ``jax.jit`` (about 16 operations,
        one dispatch). A user's loss is kept as it is."""
        from nnx import losses

        generic = losses.LOSSES.get(getattr(loss, "name", None))
        if not isinstance(loss, losses.Loss) or generic is None or loss.fn is not generic.fn:
            return loss
        return dataclasses.replace(loss, fn=jitted(loss.fn))

    def compiled_trainer(self, model: Any, optimizer: Any, *args: Any) -> Any:
        """``fit(..., compile=True)``: the functional step of :mod:`nnx.compiled` under
        ``jax.jit``, full-batch epochs ``sync_every`` at a time in one ``lax.fori_loop``."""
        from nnx.compiled import CompiledTrainer

        return CompiledTrainer(_engine, optimizer, model, *args)


class _Engine:
    """The compiled functions of one :class:`nnx.compiled.StepSpec` (see
    :class:`nnx.compiled.CompiledTrainer` for what each computes)."""

    def __init__(self, spec: Any) -> None:
        import jax
        import jax.numpy as jnp
        from jax import lax

        from nnx import compiled

        def figures(params, state, X, Y, labels, val, scalars):
            params, state, loss, correct = compiled.train_step(jnp, spec, params, state, X, Y,
                                                               scalars, labels)
            row = [loss] + ([] if correct is None else [correct])
            if val is not None:
                val_loss, val_correct = compiled.evaluate(jnp, spec, params, *val)
                row += [val_loss] + ([] if val_correct is None else [val_correct])
            return params, state, jnp.stack([jnp.astype(f, X.dtype) for f in row])

        def window(params, state, X, Y, labels, val, table, count):
            n_figures = (2 if labels is not None else 1) + (
                0 if val is None else (2 if val[2] is not None else 1))

            def body(i, carry):
                params, state, buf = carry
                params, state, row = figures(params, state, X, Y, labels, val, table[i])
                return params, state, lax.dynamic_update_index_in_dim(buf, row, i, 0)

            buf = jnp.zeros((table.shape[0], n_figures), dtype=X.dtype)
            params, state, buf = lax.fori_loop(0, count, body, (params, state, buf))
            finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(p)) for p in params]))
            return params, state, jnp.concatenate(
                [jnp.reshape(buf, (-1,)), jnp.astype(finite, X.dtype)[None]])

        def batches(params, state, acc, X, Y, labels, order, start, first, count, table,
                    size):
            def body(j, carry):
                params, state, acc = carry
                at = start + j * size

                def rows(a):
                    if a is None:
                        return None
                    if order is None:
                        return lax.dynamic_slice_in_dim(a, at, size, axis=0)
                    return jnp.take(a, lax.dynamic_slice_in_dim(order, at, size), axis=0)

                params, state, loss, correct = compiled.train_step(
                    jnp, spec, params, state, rows(X), rows(Y), table[first + j], rows(labels))
                total = acc[0] + loss * size
                return params, state, (total, None if correct is None else acc[1] + correct)

            return lax.fori_loop(0, count, body, (params, state, acc))

        # Each loop twice: as XLA compiles it, and, for the CPU and the narrowest networks,
        # with XLA's own dot instead of YNNPACK's (see _TINY_WIDTH).
        self._window = (jax.jit(window), jax.jit(window, compiler_options=_NO_YNN))
        self._batches = tuple(jax.jit(batches, static_argnames=("size",), **kw)
                              for kw in ({}, {"compiler_options": _NO_YNN}))
        self._evaluate = jax.jit(functools.partial(compiled.evaluate, jnp, spec))
        self._jnp = jnp
        self._tiny_ok = True  # until this jaxlib refuses the option

    def _call(self, pair: tuple[Any, Any], params: list[Any], *args: Any, **kw: Any) -> Any:
        """`pair`'s default function, or its tiny-network one where that is faster."""
        if self._tiny_ok and _is_tiny(params):
            try:
                return pair[1](params, *args, **kw)
            except Exception as exc:  # an XLA that no longer knows the option
                if "compile option" not in str(exc):
                    raise
                self._tiny_ok = False
        return pair[0](params, *args, **kw)

    def window(self, params, state, X, Y, labels, val, table, count):
        params, state, flat = self._call(self._window, params, state, X, Y, labels, val,
                                         table, count)
        return params, state, np.asarray(flat)  # the window's one transfer

    def batches(self, params, state, acc, X, Y, labels, order, start, first, count, size,
                table):
        return self._call(self._batches, params, state, acc, X, Y, labels, order, start,
                          first, count, table, size=size)

    def evaluate(self, params, X, Y, labels):
        return self._evaluate(params, X, Y, labels)

    def zeros(self, dtype):
        zero = self._jnp.zeros((), dtype=dtype)
        return zero, zero


class _Jitted:
    """``fn(xp, *arrays, grad=..., scale=..., weight=...)`` of nnx's activations and losses
    under ``jax.jit`` (`xp` and `grad` static; `scale` a traced scalar, so a changing
    learning rate does not recompile). Pickles as the function it wraps."""

    def __init__(self, fn: Any) -> None:
        import jax

        self.fn = fn
        static = ("grad",) if "grad" in inspect.signature(fn).parameters else ()
        self._jit = jax.jit(fn, static_argnums=(0,), static_argnames=static)
        functools.update_wrapper(self, fn)

    def __call__(self, xp: Any, *args: Any, **kwargs: Any) -> Any:
        return self._jit(xp, *args, **kwargs)

    def __reduce__(self) -> tuple[Any, tuple[Any]]:
        return jitted, (self.fn,)


@functools.cache
def jitted(fn: Any) -> _Jitted:
    """The one :class:`_Jitted` of `fn` (its compilations are shared by every model)."""
    return _Jitted(fn)


# XLA's CPU compiler hands matrix products to YNNPACK; for the narrowest networks its call
# costs more than the product. Measured on the 2-core dev machine (jax 0.10.2, float64, full
# batch, 500 epochs in one loop, medians of 7, two runs each): the tutorial's 2-3-2 on 200
# rows 5.4-5.6 ms with YNNPACK, 4.4-4.6 ms without; 2-3-2 on 50 and 2000 rows, 2.6 -> 2.0 and
# 41-42 -> 35-37 ms; 2-4-2 to 2-6-2, 10-3-2 within 5% either way; 2-8-2 6.2-6.6 ms with,
# 6.8-6.9 without; a 64-wide network on 2048 rows 40-43 ms with, 51-54 without. So: without
# YNNPACK on the CPU when no weight matrix has a side of 8 or more.
_TINY_WIDTH = 8
_NO_YNN = {"xla_cpu_experimental_ynn_fusion_type": ""}


def _is_tiny(params: list[Any]) -> bool:
    weights = [p for p in params if p.ndim == 2]
    return bool(weights) and all(max(w.shape) < _TINY_WIDTH for w in weights) \
        and weights[0].devices().pop().platform == "cpu"


@functools.lru_cache(maxsize=64)
def _engine(spec: Any) -> _Engine:
    return _Engine(spec)


def build(device: Any, where: str) -> JaxBackend:
    jax = import_library("jax", "JAX", INSTALL, where)
    import jax.numpy as xp
    if device is None:
        return JaxBackend("jax", xp, jax.devices()[0])
    if isinstance(device, jax.Device):
        return JaxBackend("jax", xp, device)
    text = str(device).strip().lower()
    platform, _, index = text.partition(":")
    platform = {"cuda": "gpu"}.get(platform, platform)
    try:
        devices = jax.devices(platform)
        chosen = devices[int(index or 0)]
    except (RuntimeError, ValueError, IndexError):
        names = [f"{d.platform}:{d.id}" for d in jax.devices()]
        raise InvalidParameterError(
            f"{where}: device={device!r} is not a jax device here; choose one of: "
            f"{', '.join(names)} (or 'cpu', 'gpu').") from None
    return JaxBackend("jax", xp, chosen)


def test_devices() -> list[Any]:
    """The CPU, and a GPU where jax has one."""
    try:
        import jax
    except ImportError:
        return ["cpu"]
    devices: list[Any] = ["cpu"]
    with contextlib.suppress(RuntimeError):
        if jax.devices("gpu"):
            devices.append("gpu")
    return devices
