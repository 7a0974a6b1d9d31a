"""nnx: neural networks written once against the Python Array API standard.

The same code trains on NumPy, CuPy (NVIDIA GPUs), PyTorch, JAX and array-api-strict; choose
the backend with ``NNX_BACKEND``, ``nnx.use_backend(...)`` or a model's ``backend=`` argument.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("nnx-arrays")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.1.0.dev0"

from nnx import activations, cuda, datasets, losses, optimizers
from nnx.backends import Backend, backend_info, get_backend, to_numpy, use_backend
from nnx.callbacks import Callback, EarlyStopping, History
from nnx.errors import (
    BackendError,
    InvalidDataError,
    InvalidParameterError,
    ModelFileError,
    NnxError,
    NonFiniteLossError,
)
from nnx.layers import Dense, Layer
from nnx.model import Sequential
from nnx.optimizers import SGD, Adam, ExponentialDecay, InverseTimeDecay, StepDecay

__all__ = [
    "Adam", "Backend", "BackendError", "Callback", "Dense", "EarlyStopping",
    "ExponentialDecay", "History", "InvalidDataError", "InvalidParameterError",
    "InverseTimeDecay", "Layer", "ModelFileError", "NnxError", "NonFiniteLossError", "SGD",
    "Sequential", "StepDecay", "__version__", "activations", "backend_info", "cuda",
    "datasets", "get_backend", "load", "losses", "optimizers", "to_numpy", "use_backend",
]


def load(path, backend=None, device=None, *, dtype=None):
    """Read a model written by ``model.save(path)`` onto `backend` (see
    :func:`nnx.saving.load`)."""
    from nnx.saving import load as _load

    return _load(path, backend=backend, device=device, dtype=dtype)
