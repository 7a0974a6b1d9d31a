"""Backend selection: the one module that knows NNX_BACKEND and names the array libraries.

A :class:`Backend` bundles an Array API namespace (through array-api-compat) with the device
that arrays are made on. Everything else in nnx finds its namespace from a model's backend or
from its input arrays and never imports CuPy, torch or array-api-strict itself.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import importlib
import os
from typing import Any

import array_api_compat
import numpy as np

ENV_VAR = "NNX_BACKEND"
BACKENDS = ("numpy", "cupy", "torch", "array_api_strict")
CHOICES = BACKENDS + ("auto",)
_INSTALL_HINT = {
    "cupy": "pip install 'nnx-arrays[cuda13]' (or [cuda12] for a CUDA 12 driver)",
    "torch": "pip install 'nnx-arrays[torch]'",
    "array_api_strict": "pip install array-api-strict",
}

_override: contextvars.ContextVar[Backend | None] = contextvars.ContextVar(
    "nnx_backend_override", default=None
)
_resolved_cache: dict[tuple[str, str | None], Backend] = {}


class BackendError(RuntimeError):
    """A backend was asked for that cannot be used here."""


@dataclasses.dataclass(frozen=True)
class Backend:
    """An Array API namespace and the device its arrays live on.

    Parameters
    ----------
    name : str
        One of ``numpy``, ``cupy``, ``torch``, ``array_api_strict``.
    xp : module
        The namespace (array-api-compat's wrapper where one exists).
    device : object
        The device new arrays are made on.
    requested : str
        What the user asked for (``auto`` may resolve to ``cupy`` or ``numpy``).
    reason : str
        Why this backend was chosen.
    """

    name: str
    xp: Any
    device: Any
    requested: str = ""
    reason: str = ""

    def __repr__(self) -> str:
        return f"Backend({self.name!r}, device={self.device!r})"

    @property
    def is_accelerator(self) -> bool:
        """Whether arrays live off the host (CuPy, torch on CUDA, and array_api_strict's
        simulated devices), so that each host read waits for the device."""
        if self.name == "cupy":
            return True
        if self.name == "torch":
            return str(self.device) != "cpu"
        return self.name == "array_api_strict" and "CPU_DEVICE" not in str(self.device)

    @property
    def supports_float64(self) -> bool:
        info = self.xp.__array_namespace_info__()
        return "float64" in info.dtypes(device=self.device)

    def dtype(self, name: str) -> Any:
        """The namespace's dtype object called `name` (``float32`` or ``float64``)."""
        if name not in ("float32", "float64"):
            raise ValueError(f"dtype={name!r} is not supported; expected 'float32' or 'float64'.")
        if name == "float64" and not self.supports_float64:
            raise ValueError(
                f"dtype='float64' is not available on {self.name} device {self.device!r}; "
                "use dtype='float32'."
            )
        return getattr(self.xp, name)

    def asarray(self, x: Any, dtype: Any = None) -> Any:
        """Move host data (NumPy, lists) or any known array onto this backend's device."""
        if array_api_compat.is_array_api_obj(x) and not isinstance(x, np.ndarray):
            if _namespace_name(x) != self.name:
                x = to_numpy(x)
            elif array_api_compat.device(x) != self.device:
                x = array_api_compat.to_device(x, self.device)
        return self.xp.asarray(x, dtype=dtype, device=self.device)

    def owns(self, x: Any) -> bool:
        """Whether `x` is an array of this backend (any device)."""
        return array_api_compat.is_array_api_obj(x) and _namespace_name(x) == self.name

    def synchronize(self) -> None:
        """Wait until queued device work is done (a no-op on the CPU backends)."""
        if self.name == "cupy":
            import cupy

            cupy.cuda.get_current_stream().synchronize()
        elif self.name == "torch" and str(self.device).startswith("cuda"):
            import torch

            torch.cuda.synchronize(self.device)

    def device_name(self) -> str:
        """A human-readable name of the device (the GPU's name on CUDA)."""
        if self.name == "cupy":
            import cupy

            props = cupy.cuda.runtime.getDeviceProperties(self.device.id)
            name = props["name"]
            return name.decode() if isinstance(name, bytes) else str(name)
        if self.name == "torch" and str(self.device).startswith("cuda"):
            import torch

            return torch.cuda.get_device_name(self.device)
        return f"cpu ({self.device})" if self.name == "array_api_strict" else "cpu"

    def library_version(self) -> str:
        module = {"numpy": "numpy", "cupy": "cupy", "torch": "torch",
                  "array_api_strict": "array_api_strict"}[self.name]
        return importlib.import_module(module).__version__


def _namespace_name(x: Any) -> str:
    if array_api_compat.is_numpy_array(x):
        return "numpy"
    if array_api_compat.is_cupy_array(x):
        return "cupy"
    if array_api_compat.is_torch_array(x):
        return "torch"
    if array_api_compat.is_array_api_strict_namespace(array_api_compat.array_namespace(x)):
        return "array_api_strict"
    return type(x).__module__.split(".")[0]


def to_numpy(x: Any) -> np.ndarray:
    """Copy an array of any backend and device to a NumPy array on the host."""
    if isinstance(x, np.ndarray):
        return x
    if not array_api_compat.is_array_api_obj(x):
        return np.asarray(x)
    name = _namespace_name(x)
    if name == "cupy":
        return x.get()
    if name == "torch":
        return x.detach().cpu().numpy()
    if name == "array_api_strict":
        import array_api_strict

        return np.asarray(x.to_device(array_api_strict.Device("CPU_DEVICE")))
    return np.asarray(x)


def _normalise(value: str | None) -> str:
    name = (value or "").strip().lower().replace("-", "_")
    return name or "numpy"


def _unknown(value: str, source: str) -> ValueError:
    where = f"{ENV_VAR}={value!r}" if source == "env" else f"backend={value!r}"
    fix = f"; unset {ENV_VAR} to use numpy" if source == "env" else ""
    return ValueError(f"{where} is not a backend; choose one of: {', '.join(CHOICES)}{fix}.")


def _cupy_backend(requested: str, where: str, source: str = "env") -> Backend:
    try:
        import cupy
    except ImportError as exc:
        raise BackendError(
            f"{where} but CuPy is not installed ({exc}); install it with "
            f"{_INSTALL_HINT['cupy']}, or choose another backend."
        ) from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
        if count < 1:
            raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")
        device = cupy.cuda.Device()
        cupy.empty(1)  # the first allocation is where a missing driver shows itself
    except Exception as exc:  # noqa: BLE001 - CuPy raises several unrelated types here
        instead = f"unset {ENV_VAR}" if source == "env" else "pass backend='numpy'"
        raise BackendError(
            f"{where} but no CUDA device is usable ({exc}); {instead} to use numpy, "
            "or check the driver with nvidia-smi."
        ) from None
    return Backend("cupy", array_api_compat.array_namespace(cupy.empty(0)), device,
                   requested, "")


def _build(name: str, device: Any, requested: str, reason: str, where: str,
           source: str = "env") -> Backend:
    if name == "numpy":
        import array_api_compat.numpy as xp

        if device is not None and str(device) != "cpu":
            raise ValueError(f"{where}: device={device!r} is not a numpy device; numpy has "
                             "only 'cpu' (use backend='cupy' or 'torch' for a GPU).")
        return Backend("numpy", xp, "cpu", requested, reason)
    if name == "cupy":
        backend = _cupy_backend(requested, where, source)
        if device is not None:
            import cupy

            count = cupy.cuda.runtime.getDeviceCount()
            try:
                ordinal = int(str(device).removeprefix("cuda:"))
            except ValueError:
                ordinal = -1
            if not 0 <= ordinal < count:
                raise ValueError(f"{where}: device={device!r} is not a CUDA device here; "
                                 f"choose an ordinal from 0 to {count - 1}.")
            backend = dataclasses.replace(backend, device=cupy.cuda.Device(ordinal))
        return dataclasses.replace(backend, reason=reason)
    if name == "torch":
        try:
            import torch
        except ImportError as exc:
            raise BackendError(
                f"{where} but torch is not installed ({exc}); install it with "
                f"{_INSTALL_HINT['torch']}, or choose another backend."
            ) from None
        import array_api_compat.torch as xp

        try:
            dev = torch.device(device or "cpu")
            torch.empty(1, device=dev)  # a device that does not exist fails here, not later
        except (RuntimeError, AssertionError, TypeError, ValueError) as exc:
            detail = " ".join(str(exc).split()) or type(exc).__name__
            raise BackendError(
                f"{where}: device={device!r} is not a usable torch device ({detail}); use "
                "'cpu', or 'cuda' / 'cuda:N' where torch.cuda.is_available()."
            ) from None
        return Backend("torch", xp, dev, requested, reason)
    if name == "array_api_strict":
        try:
            import array_api_strict as xp
        except ImportError as exc:
            raise BackendError(
                f"{where} but array-api-strict is not installed ({exc}); install it with "
                f"{_INSTALL_HINT['array_api_strict']}."
            ) from None
        if device is None:
            dev = xp.Device("CPU_DEVICE")
        elif isinstance(device, xp.Device):
            dev = device
        else:
            try:
                dev = xp.Device(str(device))
            except ValueError:
                names = [str(d) for d in xp.__array_namespace_info__().devices()]
                raise ValueError(f"{where}: device={device!r} is not an array_api_strict "
                                 f"device; choose one of: {', '.join(names)}.") from None
        return Backend("array_api_strict", xp, dev, requested, reason)
    raise AssertionError(name)


def _auto(device: Any, where: str) -> Backend:
    try:
        backend = _cupy_backend("auto", where)
    except BackendError as exc:
        reason = f"auto: CuPy not usable, using numpy ({exc})"
        return _build("numpy", None, "auto", reason, where)
    return dataclasses.replace(backend, reason="auto: a CUDA device is usable, using cupy")


def get_backend(backend: str | Backend | None = None, device: Any = None) -> Backend:
    """Resolve a backend.

    Parameters
    ----------
    backend : str, Backend or None
        A name from :data:`CHOICES`, a :class:`Backend`, or None for the innermost
        :func:`use_backend` block, else the ``NNX_BACKEND`` variable, else numpy.
    device : object, optional
        A device of that backend (``'device1'`` for array_api_strict, ``'cuda:1'`` for torch,
        a CUDA ordinal for CuPy). Default: the backend's default device.
    """
    if isinstance(backend, Backend):
        return backend
    if backend is None:
        scoped = _override.get()
        if scoped is not None and device is None:
            return scoped
        raw, source = os.environ.get(ENV_VAR, ""), "env"
    else:
        if not isinstance(backend, str):
            raise TypeError(
                f"backend must be a string or nnx.Backend; received {type(backend).__name__}."
            )
        raw, source = backend, "arg"
    name = _normalise(raw)
    if name not in CHOICES:
        raise _unknown(raw, source)
    key = (name, None if device is None else str(device))
    where = f"{ENV_VAR}={raw!r}" if source == "env" else f"backend={raw!r}"
    resolved = _resolved_cache.get(key)
    if resolved is None:
        # Built once per (backend, device): importing and probing a library costs time.
        resolved = _auto(device, where) if name == "auto" else _build(name, device, name, "",
                                                                      where, source)
        _resolved_cache[key] = resolved
    if name == "auto":
        return resolved
    # Why it was chosen belongs to this call, not to the first one that built it.
    origin = f"{ENV_VAR}={raw!r}" if source == "env" and raw.strip() else (
        "default (NNX_BACKEND unset)" if source == "env" else "backend= argument")
    return resolved if resolved.reason == origin else dataclasses.replace(resolved,
                                                                          reason=origin)


@contextlib.contextmanager
def use_backend(backend: str | Backend, device: Any = None):
    """Use `backend` for models and data made inside the ``with`` block.

    >>> with nnx.use_backend("torch"):
    ...     model = nnx.Sequential([nnx.Dense(2, 3, activation="tanh"), nnx.Dense(3, 2)])
    """
    resolved = get_backend(backend, device)
    token = _override.set(resolved)
    try:
        yield resolved
    finally:
        _override.reset(token)


def namespace_of(*arrays: Any) -> Any:
    """The Array API namespace of `arrays` (for functions that receive arrays)."""
    return array_api_compat.array_namespace(*arrays)


def backend_info(backend: str | Backend | None = None) -> dict[str, Any]:
    """What nnx would run on: requested and resolved backend, why, device, versions."""
    from nnx import __version__

    resolved = get_backend(backend)
    requested = resolved.requested or resolved.name
    return {
        "requested": requested,
        "backend": resolved.name,
        "reason": resolved.reason,
        "device": str(resolved.device),
        "device_name": resolved.device_name(),
        "default_dtype": "float32",
        "float64_supported": resolved.supports_float64,
        "nnx": __version__,
        "numpy": np.__version__,
        "array_api_compat": array_api_compat.__version__,
        "library": f"{resolved.name} {resolved.library_version()}",
    }
