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
from typing import Any

import array_api_compat
import numpy as np

from nnx.backends.base import Backend
from nnx.errors import BackendError, InvalidParameterError

INSTALL = "pip install 'nnx-arrays[jax]' (or jax[cuda13] for a GPU)"


class JaxBackend(Backend):
    library = "jax"

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


def build(device: Any, where: str) -> JaxBackend:
    try:
        import jax
        import jax.numpy as xp
    except ImportError as exc:
        raise BackendError(f"{where} but JAX is not installed ({exc}); install it with "
                           f"{INSTALL}, or choose another backend.") from None
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
