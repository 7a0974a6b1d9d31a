"""The backend registry: the one place that lists the array libraries nnx runs on.

Each backend is a module of this package (``numpy``, ``torch``, ``array_api_strict``,
``cupy``, ...) with a :class:`~nnx.backends.base.Backend` subclass, a ``build(device, where)``
that resolves a device, an ``INSTALL`` hint and the devices it is tested on
(``TEST_DEVICES`` or ``test_devices()``). :func:`get_backend`, :func:`use_backend`, ``nnx
info``, the tests' backend fixture and the benchmarks' candidates all read :data:`REGISTRY`;
adding a backend is adding its module and one line here.

``NNX_BACKEND`` is read when a backend is needed, never at import; no backend's library is
imported before it is asked for; a backend that cannot be used is an error, never a silent
fallback.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import importlib
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from nnx.backends.base import Backend
from nnx.errors import BackendError, InvalidParameterError

ENV_VAR = "NNX_BACKEND"


@dataclasses.dataclass(frozen=True)
class BackendSpec:
    """A registered backend: its name and the module that implements it."""

    name: str
    module: str

    def load(self) -> Any:
        """The backend module (importing it imports nnx's code, not the array library)."""
        return importlib.import_module(self.module)

    @property
    def install(self) -> str:
        return self.load().INSTALL

    def test_devices(self) -> list[Any]:
        """The devices this backend's tests and benchmarks run on, on this machine."""
        module = self.load()
        if hasattr(module, "test_devices"):
            return list(module.test_devices())
        return list(getattr(module, "TEST_DEVICES", (None,)))


REGISTRY: dict[str, BackendSpec] = {spec.name: spec for spec in (
    BackendSpec("numpy", "nnx.backends.numpy"),
    BackendSpec("cupy", "nnx.backends.cupy"),
    BackendSpec("torch", "nnx.backends.torch"),
    BackendSpec("jax", "nnx.backends.jax"),
    BackendSpec("array_api_strict", "nnx.backends.array_api_strict"),
)}
BACKENDS = tuple(REGISTRY)
CHOICES = BACKENDS + ("auto",)

_override: contextvars.ContextVar[Backend | None] = contextvars.ContextVar(
    "nnx_backend_override", default=None)
_resolved_cache: dict[tuple[str, str | None], Backend] = {}


def normalise_name(value: str | None) -> str:
    """A backend name as nnx reads it: case and surrounding blanks ignored, ``-`` as ``_``,
    empty as ``numpy``."""
    name = (value or "").strip().lower().replace("-", "_")
    return name or "numpy"


def backend_classes() -> list[type[Backend]]:
    """The Backend subclass of every registered backend."""
    classes = []
    for spec in REGISTRY.values():
        module = spec.load()
        classes += [obj for obj in vars(module).values() if isinstance(obj, type)
                    and issubclass(obj, Backend) and obj is not Backend
                    and obj.__module__ == module.__name__]
    return classes


def array_backend(x: Any) -> type[Backend] | None:
    """The Backend class whose library `x` is an array of (None for anything else)."""
    for cls in backend_classes():
        if cls.is_array(x):
            return cls
    return None


def to_numpy(x: Any) -> np.ndarray:
    """Copy an array of any backend and device to a NumPy array on the host."""
    if isinstance(x, np.ndarray):
        return x
    cls = array_backend(x)
    return np.asarray(x) if cls is None else cls.to_numpy(x)


def test_targets() -> list[tuple[str, str, Any]]:
    """``(id, backend name, device)`` for every backend and device to test and benchmark on
    this machine, from the registry (ids such as ``numpy``, ``strict-device1``,
    ``torch-cpu``). Targets whose library is missing are listed too: they skip with the
    reason."""
    short = {"array_api_strict": "strict"}
    out = []
    for name, spec in REGISTRY.items():
        ids = getattr(spec.load(), "TEST_IDS", {})
        for device in spec.test_devices():
            label = short.get(name, name)
            suffix = ids.get(device, device)
            out.append((label if suffix is None else f"{label}-{suffix}", name, device))
    return out


def selected_targets(value: str | None = None) -> list[tuple[str, str, Any]]:
    """The targets that ``NNX_BACKEND`` (or `value`) selects: all of them when it is unset
    or ``auto``, else those of the one backend it names; an unknown name is an error."""
    raw = os.environ.get(ENV_VAR, "") if value is None else value
    if raw.strip().lower() in ("", "auto"):
        return test_targets()
    name = normalise_name(raw)
    if name not in REGISTRY:
        raise _unknown(raw, "env")
    return [target for target in test_targets() if target[1] == name]


def _unknown(value: str, source: str) -> InvalidParameterError:
    where = f"{ENV_VAR}={value!r}" if source == "env" else f"backend={value!r}"
    fix = f"; unset {ENV_VAR} to use numpy" if source == "env" else ""
    return InvalidParameterError(
        f"{where} is not a backend; choose one of: {', '.join(CHOICES)}{fix}.")


def _build(name: str, device: Any, where: str, hint: str) -> Backend:
    module = REGISTRY[name].load()
    if name == "cupy":
        return module.build(device, where, hint)
    return module.build(device, where)


def _auto(where: str) -> Backend:
    try:
        backend = _build("cupy", None, where, "unset NNX_BACKEND")
    except BackendError as exc:
        reason = f"auto: CuPy not usable, using numpy ({exc})"
        return dataclasses.replace(_build("numpy", None, where, ""), requested="auto",
                                   reason=reason)
    return dataclasses.replace(backend, requested="auto",
                               reason="auto: a CUDA device is usable, using cupy")


def get_backend(backend: str | Backend | None = None, device: Any = None) -> Backend:
    """Resolve a backend.

    Parameters
    ----------
    backend : str, Backend or None
        A name from :data:`CHOICES`, a :class:`Backend`, or None for the innermost
        :func:`use_backend` block, else the ``NNX_BACKEND`` variable, else numpy.
    device : object, optional
        A device of that backend (``'device1'`` for array_api_strict, ``'cuda:1'`` for torch,
        a CUDA ordinal for CuPy). Default: the backend's default device. With
        ``backend=None`` inside a :func:`use_backend` block, a device of that block's backend.
    """
    if isinstance(backend, Backend):
        return backend
    if backend is None:
        scoped = _override.get()
        if scoped is not None:
            if device is None:
                return scoped
            raw, source = scoped.name, "scope"
        else:
            raw, source = os.environ.get(ENV_VAR, ""), "env"
    else:
        if not isinstance(backend, str):
            raise InvalidParameterError(
                f"backend must be a string or nnx.Backend; received {type(backend).__name__}.")
        raw, source = backend, "arg"
    name = normalise_name(raw)
    if name not in CHOICES:
        raise _unknown(raw, source)
    if source == "scope":
        where = f"use_backend({name!r})"
    elif source == "env":
        where = f"{ENV_VAR}={raw!r}" if raw.strip() else f"{ENV_VAR} unset (numpy)"
    else:
        where = f"backend={raw!r}"
    key = (name, None if device is None else str(device))
    resolved = _resolved_cache.get(key)
    if resolved is None:
        # Built once per (backend, device): importing and probing a library costs time.
        hint = f"unset {ENV_VAR}" if source == "env" else "pass backend='numpy'"
        resolved = _auto(where) if name == "auto" else dataclasses.replace(
            _build(name, device, where, hint), requested=name)
        _resolved_cache[key] = resolved
    if name == "auto":
        return resolved
    # Why it was chosen belongs to this call, not to the first one that built it.
    origin = {"env": f"{ENV_VAR}={raw!r}" if raw.strip() else "default (NNX_BACKEND unset)",
              "scope": f"use_backend({name!r})", "arg": "backend= argument"}[source]
    return resolved if resolved.reason == origin else dataclasses.replace(resolved,
                                                                          reason=origin)


@contextlib.contextmanager
def use_backend(backend: str | Backend, device: Any = None):
    """Use `backend` for models and data made inside the ``with`` block.

    The choice lives in a :mod:`contextvars` variable, so it holds where that variable is
    seen:

    * In the thread that entered the block, and in the asyncio tasks created inside it
      (each task starts from a copy of the context it was created in).
    * **Not** in a thread pool's tasks: a ``ThreadPoolExecutor`` (or a ``threading.Thread``)
      runs them in its own threads' contexts, where the choice falls back to ``NNX_BACKEND``
      (or numpy). Wrap the function with :func:`carry_context` where you submit it --
      ``pool.submit(carry_context(fn), x)``, ``pool.map(carry_context(fn), items)`` -- or pass
      ``backend=`` to the models the tasks make.
    * A generator shares its caller's context: one that enters the block and yields inside
      it leaves the choice in force *for its caller* between its ``yield``\\ s (and resets it
      only when it is resumed to the end or closed). Enter the block around the loop that
      consumes the generator instead.

    >>> with nnx.use_backend("torch"):
    ...     model = nnx.Sequential([nnx.Dense(2, 3, activation="tanh"), nnx.Dense(3, 2)])
    """
    resolved = get_backend(backend, device)
    token = _override.set(resolved)
    try:
        yield resolved
    finally:
        _override.reset(token)


def carry_context(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn`, to run in a copy of the caller's context: the :func:`use_backend` in force here
    (and every other :mod:`contextvars` variable) holds where it runs, in another thread too.

    The context is captured when `carry_context` is called, and each call runs in a fresh
    copy of it, so the wrapped function may run in several threads at once
    (``ThreadPoolExecutor.map``); what one call sets is not seen by the others, nor here.

    >>> with nnx.use_backend("torch"), ThreadPoolExecutor() as pool:
    ...     models = list(pool.map(carry_context(make_model), range(4)))   # on torch
    """
    context = contextvars.copy_context()

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        return context.copy().run(fn, *args, **kwargs)

    return run


def backend_info(backend: str | Backend | None = None) -> dict[str, Any]:
    """What nnx would run on: requested and resolved backend, why, device, versions."""
    import array_api_compat

    from nnx import __version__

    resolved = get_backend(backend)
    return {
        "requested": resolved.requested or resolved.name,
        "backend": resolved.name,
        "reason": resolved.reason,
        "device": resolved.device_label(),
        "device_name": resolved.device_name(),
        "default_dtype": "float32",
        "float64_supported": resolved.supports_float64,
        "nnx": __version__,
        "numpy": np.__version__,
        "array_api_compat": array_api_compat.__version__,
        "library": f"{resolved.name} {resolved.library_version()}",
        **resolved.runtime_versions(),
    }


__all__ = ["BACKENDS", "CHOICES", "ENV_VAR", "REGISTRY", "Backend", "BackendError",
           "BackendSpec", "array_backend", "backend_classes", "backend_info", "carry_context",
           "get_backend", "normalise_name", "selected_targets", "test_targets", "to_numpy",
           "use_backend"]
