"""The :class:`Backend` base: an Array API namespace, the device its arrays live on, and what
differs between array libraries, each a method with a generic default.

A backend module (``nnx/backends/<name>.py``) subclasses :class:`Backend` and overrides only
what its library does differently: moving data to the host, waiting for the device, naming
the device, recognising its out-of-memory error, and its fast paths (fused kernels, a compiled
step). The core calls these methods and never asks which library it runs on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import operator
from collections.abc import Callable
from typing import Any, ClassVar

import array_api_compat
import numpy as np

from nnx.errors import BackendError, InvalidParameterError

#: The backends whose :meth:`Backend.compiled_trainer` gives a compiled training step.
COMPILED_STEP_BACKENDS = ("jax",)


def import_library(module: str, library: str, install: str, where: str) -> Any:
    """The backend's array library `module`, or a :class:`BackendError` saying that
    `library` is not installed and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BackendError(f"{where} but {library} is not installed ({exc}); install it with "
                           f"{install}, or choose another backend.") from None


@dataclasses.dataclass(frozen=True, eq=False)
class Backend:
    """An Array API namespace and the device its arrays live on.

    Parameters
    ----------
    name : str
        The registry's name (``numpy``, ``torch``, ``jax``, ``array_api_strict``, ``cupy``).
    xp : module
        The namespace (array-api-compat's wrapper where one exists).
    device : object
        The device new arrays are made on.
    requested : str
        What the user asked for (``auto`` may resolve to ``cupy`` or ``numpy``).
    reason : str
        Why this backend was chosen.

    A backend pickles by name and device (its namespace is a module, which cannot be
    pickled): unpickling resolves the same backend again where it is loaded.
    """

    name: str
    xp: Any
    device: Any
    requested: str = ""
    reason: str = ""

    #: The module whose ``__version__`` is the library's version.
    library: ClassVar[str] = ""
    #: Whether :meth:`scope` does anything (models skip entering it where it does not).
    has_scope: ClassVar[bool] = False

    def __repr__(self) -> str:
        return f"Backend({self.name!r}, device={self.device!r})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Backend) and other.name == self.name
                and str(other.device) == str(self.device))

    def __hash__(self) -> int:
        return hash((self.name, str(self.device)))

    def __reduce__(self) -> tuple[Callable[..., Backend], tuple[Any, ...]]:
        from nnx.backends import get_backend

        return get_backend, (self.name, self.device_label())

    # -- what the device is ---------------------------------------------------------------
    @property
    def is_accelerator(self) -> bool:
        """Whether arrays live off the host, so that each host read waits for the device."""
        return False

    @property
    def supports_float64(self) -> bool:
        info = self.xp.__array_namespace_info__()
        return "float64" in info.dtypes(device=self.device)

    def dtype(self, name: str) -> Any:
        """The namespace's dtype object called `name` (``float32`` or ``float64``)."""
        if name not in ("float32", "float64"):
            raise InvalidParameterError(
                f"dtype={name!r} is not supported; expected 'float32' or 'float64'.")
        if name == "float64" and not self.supports_float64:
            raise InvalidParameterError(
                f"dtype='float64' is not available on {self.name} device "
                f"{self.device_label()!r}; use dtype='float32'.{self.float64_hint()}")
        return getattr(self.xp, name)

    def float64_hint(self) -> str:
        """Text appended to the no-float64 error: how to get float64 on this backend."""
        return ""

    def device_label(self) -> str:
        """The device as a user names it: ``'cpu'``, ``'device1'``, ``'cuda:0'``."""
        return str(self.device)

    def device_name(self) -> str:
        """A human-readable name of the device (the GPU's name on CUDA)."""
        return "cpu"

    def library_version(self) -> str:
        return importlib.import_module(self.library or self.name).__version__

    def describe(self) -> str:
        """``'numpy 2.4.6 on cpu'``, ``'cupy 14.2.0 on NVIDIA H200 (cuda:0)'``."""
        label, name = self.device_label(), self.device_name()
        place = name if label in name else f"{name} ({label})"
        return f"{self.name} {self.library_version()} on {place}"

    def runtime_versions(self) -> dict[str, str]:
        """Versions beside the library's own that a benchmark should record (CUDA, driver)."""
        return {}

    # -- moving data ----------------------------------------------------------------------
    @classmethod
    def is_array(cls, x: Any) -> bool:
        """Whether `x` is an array of this backend's library (any device), decided without
        importing the library."""
        raise NotImplementedError

    def owns(self, x: Any) -> bool:
        """Whether `x` is an array of this backend (any device)."""
        return self.is_array(x)

    def asarray(self, x: Any, dtype: Any = None) -> Any:
        """Move host data (NumPy, lists) or an array of any backend onto this device."""
        if array_api_compat.is_array_api_obj(x) and not isinstance(x, np.ndarray):
            if not self.owns(x):
                from nnx.backends import to_numpy

                x = to_numpy(x)
            elif array_api_compat.device(x) != self.device:
                x = array_api_compat.to_device(x, self.device)
        return self.xp.asarray(x, dtype=dtype, device=self.device)

    @classmethod
    def to_numpy(cls, x: Any) -> np.ndarray:
        """Copy an array of this library to a NumPy array on the host."""
        return np.asarray(x)

    def synchronize(self) -> None:
        """Wait until queued device work is done (a no-op on the CPU backends)."""

    @contextlib.contextmanager
    def scope(self, dtype_name: str):
        """A context that nnx's computations in `dtype_name` run inside (a no-op except
        where the library needs a setting for that dtype, such as JAX's x64 mode)."""
        yield

    # -- failures -------------------------------------------------------------------------
    @classmethod
    def is_memory_error(cls, exc: BaseException) -> bool:
        """Whether `exc` is this library's out-of-device-memory error."""
        return False

    # -- fast paths: each returns the generic object where it has nothing faster ----------
    def fast_activation(self, activation: Any) -> Any:
        """The activation to use on this backend (a fused kernel, or `activation` itself)."""
        return activation

    def fast_loss(self, loss: Any) -> Any:
        """The loss to use on this backend (fused kernels, or `loss` itself)."""
        return loss

    def matmul_function(self) -> Any:
        """The matrix product the layers use: ``a @ b`` (CuPy's leaves cuBLAS while a training
        step is captured as a CUDA graph, where cuBLAS cannot be called)."""
        return operator.matmul

    # -- a compiled training step ---------------------------------------------------------
    def compiled_trainer(self, model: Any, optimizer: Any, *args: Any) -> Any:
        """The epoch loop of ``fit(..., compile=True)``: a :class:`nnx.training.Trainer`
        (made from `model` and the Trainer's other arguments `args`) whose steps are this
        backend's compiled functional step, for `optimizer`. The generic backend has none."""
        raise InvalidParameterError(
            f"Sequential.fit: compile=True needs a backend with a compiled step "
            f"({', '.join(COMPILED_STEP_BACKENDS)}); {self.name} has none: drop compile=True "
            f"(or use backend={COMPILED_STEP_BACKENDS[0]!r}).")
