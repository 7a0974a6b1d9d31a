"""CuPy, on an NVIDIA GPU: the backend, with its fast paths in the modules beside it
(:mod:`.kernels`: fused kernels; :mod:`.graph`: a training step captured as a CUDA graph;
:mod:`.tf32`: TF32 matrix products). CuPy itself is imported only when the backend is built.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from nnx.backends.base import Backend, import_library
from nnx.errors import BackendError, InvalidParameterError

INSTALL = "pip install 'nnx-arrays[cuda13]' (or [cuda12] for a CUDA 12 driver)"
_OOM_STATUSES = ("cudaErrorMemoryAllocation", "CUBLAS_STATUS_ALLOC_FAILED",
                 "CUSOLVER_STATUS_ALLOC_FAILED")


class CupyBackend(Backend):
    library = "cupy"
    has_scope = True

    @property
    def is_accelerator(self) -> bool:
        return True

    def device_label(self) -> str:
        return f"cuda:{self.device.id}"

    def device_name(self) -> str:
        import cupy

        name = cupy.cuda.runtime.getDeviceProperties(self.device.id)["name"]
        return name.decode() if isinstance(name, bytes) else str(name)

    def runtime_versions(self) -> dict[str, str]:
        import cupy

        runtime = cupy.cuda.runtime
        return {"cuda_runtime": str(runtime.runtimeGetVersion()),
                "cuda_driver": str(runtime.driverGetVersion())}

    @classmethod
    def is_array(cls, x: Any) -> bool:
        # By the class's module, so that other libraries' arrays never import CuPy.
        return type(x).__module__.split(".")[0] == "cupy"

    @classmethod
    def to_numpy(cls, x: Any) -> np.ndarray:
        return x.get()

    def synchronize(self) -> None:
        import cupy

        cupy.cuda.get_current_stream().synchronize()

    @contextlib.contextmanager
    def scope(self, dtype_name: str):
        # Kernels and cuBLAS run on the *current* device, and array-api-compat ignores
        # device= for CuPy's creation functions other than asarray: make the model's current.
        with self.device:
            yield

    @classmethod
    def is_memory_error(cls, exc: BaseException) -> bool:
        for klass in type(exc).__mro__:
            if (klass.__module__ or "").split(".")[0] in ("cupy", "cupy_backends"):
                if klass.__name__ == "OutOfMemoryError":
                    return True
                if any(status in str(exc) for status in _OOM_STATUSES):
                    return True
        return False

    def matmul_function(self) -> Any:
        from nnx.backends.cupy.kernels import matmul

        return matmul

    def fast_activation(self, activation: Any) -> Any:
        from nnx.backends.cupy.kernels import fast_activation

        return fast_activation(activation)

    def fast_loss(self, loss: Any) -> Any:
        from nnx.backends.cupy.kernels import fast_loss

        return fast_loss(loss)


def _usable(where: str, hint: str) -> Any:
    cupy = import_library("cupy", "CuPy", INSTALL, where)
    try:
        count = cupy.cuda.runtime.getDeviceCount()
        if count < 1:
            raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")
        cupy.empty(1)  # the first allocation is where a missing driver shows itself
    except Exception as exc:  # noqa: BLE001 - CuPy raises several unrelated types here
        raise BackendError(f"{where} but no CUDA device is usable ({exc}); {hint} to use "
                           "numpy, or check the driver with nvidia-smi.") from None
    return cupy


def build(device: Any, where: str, hint: str = "choose another backend") -> CupyBackend:
    cupy = _usable(where, hint)
    import array_api_compat

    xp = array_api_compat.array_namespace(cupy.empty(0))
    if device is None:
        return CupyBackend("cupy", xp, cupy.cuda.Device())
    count = cupy.cuda.runtime.getDeviceCount()
    ordinal = getattr(device, "id", None)
    if ordinal is None:
        try:
            ordinal = int(str(device).removeprefix("cuda:"))
        except ValueError:
            ordinal = -1
    if not 0 <= ordinal < count:
        raise InvalidParameterError(f"{where}: device={device!r} is not a CUDA device here; "
                                    f"choose an ordinal from 0 to {count - 1}.")
    return CupyBackend("cupy", xp, cupy.cuda.Device(ordinal))
