"""array-api-strict: the standard and nothing more, for proving the core backend-agnostic.

Its ``device1`` is a simulated accelerator that refuses conversion to NumPy and the mixing of
devices, as CuPy does; ``no_float64`` is a device without float64.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nnx.backends.base import Backend, import_library
from nnx.errors import InvalidParameterError

INSTALL = "pip install array-api-strict"
# The devices the tests run on: the CPU, the simulated accelerator, the one without float64.
TEST_DEVICES = ("CPU_DEVICE", "device1", "no_float64")
TEST_IDS = {"CPU_DEVICE": "cpu"}


class StrictBackend(Backend):
    library = "array_api_strict"

    @property
    def is_accelerator(self) -> bool:
        return self.device_label() != "CPU_DEVICE"

    def device_label(self) -> str:
        # array_api_strict.Device has no public name attribute; its repr is Device('name').
        text = repr(self.device)
        return text[text.index("'") + 1:text.rindex("'")] if "'" in text else text

    def device_name(self) -> str:
        return f"cpu ({self.device})"

    def describe(self) -> str:
        return f"{self.name} {self.library_version()} on {self.device_label()}"

    @classmethod
    def is_array(cls, x: Any) -> bool:
        return type(x).__module__.split(".")[0] == "array_api_strict"

    @classmethod
    def to_numpy(cls, x: Any) -> np.ndarray:
        import array_api_strict

        return np.asarray(x.to_device(array_api_strict.Device("CPU_DEVICE")))


def build(device: Any, where: str) -> StrictBackend:
    xp = import_library("array_api_strict", "array-api-strict", INSTALL, where)
    if device is None:
        dev = xp.Device("CPU_DEVICE")
    elif isinstance(device, xp.Device):
        dev = device
    else:
        try:
            dev = xp.Device(str(device))
        except ValueError:
            names = [str(d) for d in xp.__array_namespace_info__().devices()]
            raise InvalidParameterError(
                f"{where}: device={device!r} is not an array_api_strict device; choose one "
                f"of: {', '.join(names)}.") from None
    return StrictBackend("array_api_strict", xp, dev)
