"""PyTorch, on the CPU or a CUDA device (through array-api-compat's torch namespace)."""

from __future__ import annotations

import warnings
from typing import Any

import array_api_compat
import numpy as np

from nnx.backends.base import Backend, import_library
from nnx.errors import InvalidParameterError

INSTALL = "pip install 'nnx-arrays[torch]'"


def _oom_class(exc: BaseException) -> bool:
    return any(cls.__name__ == "OutOfMemoryError" and (cls.__module__ or "").startswith("torch")
               for cls in type(exc).__mro__)


class TorchBackend(Backend):
    library = "torch"

    @property
    def is_cuda(self) -> bool:
        return str(self.device).startswith("cuda")

    @property
    def is_accelerator(self) -> bool:
        return str(self.device) != "cpu"

    def device_name(self) -> str:
        if self.is_cuda:
            import torch

            return torch.cuda.get_device_name(self.device)
        return "cpu"

    def runtime_versions(self) -> dict[str, str]:
        if not self.is_cuda:
            return {}
        import torch

        return {"cuda_runtime": str(torch.version.cuda)}

    @classmethod
    def is_array(cls, x: Any) -> bool:
        return array_api_compat.is_torch_array(x)

    def asarray(self, x: Any, dtype: Any = None) -> Any:
        if self.owns(x) and x.requires_grad:
            # Data entering nnx carries no autograd history (it would grow without bound).
            x = x.detach()
        if isinstance(x, np.ndarray) and not x.flags.writeable:
            # torch warns that a tensor sharing a read-only array's memory must not be
            # written to; nnx never writes into its inputs, so the memory is shared (a
            # memmapped data set is not copied) and the warning, meant for code that would
            # write, is not shown to the user.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="The given NumPy array is not "
                                        "writable", category=UserWarning)
                return super().asarray(x, dtype)
        return super().asarray(x, dtype)

    @classmethod
    def to_numpy(cls, x: Any) -> np.ndarray:
        return x.detach().cpu().numpy()

    def synchronize(self) -> None:
        if self.is_cuda:
            import torch

            torch.cuda.synchronize(self.device)

    @classmethod
    def is_memory_error(cls, exc: BaseException) -> bool:
        # torch.OutOfMemoryError (torch.cuda.OutOfMemoryError); before torch 1.13 a plain
        # RuntimeError saying so.
        return _oom_class(exc) or (isinstance(exc, RuntimeError)
                                   and "CUDA out of memory" in str(exc))


def build(device: Any, where: str) -> TorchBackend:
    torch = import_library("torch", "torch", INSTALL, where)
    import array_api_compat.torch as xp

    try:
        dev = torch.device(device or "cpu")
        torch.empty(1, device=dev)  # a device that does not exist fails here, not later
    except (RuntimeError, AssertionError, TypeError, ValueError) as exc:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise InvalidParameterError(
            f"{where}: device={device!r} is not a usable torch device ({detail}); use 'cpu', "
            "or 'cuda' / 'cuda:N' where torch.cuda.is_available().") from None
    return TorchBackend("torch", xp, dev)


def test_devices() -> list[Any]:
    """The devices the tests and benchmarks run on here: the CPU, and CUDA where usable."""
    devices: list[Any] = ["cpu"]
    try:
        import torch
    except ImportError:
        return devices
    if torch.cuda.is_available():
        devices.append("cuda")
    return devices
