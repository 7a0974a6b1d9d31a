"""Weight initialisers: drawn on the host by a NumPy Generator, then moved to the backend.

Drawing on the host in float64 and only then casting and moving means that one seed gives
identical initial weights on every backend and device.
"""

from __future__ import annotations

import numpy as np

from nnx.errors import InvalidParameterError

SCHEMES = ("tutorial", "glorot", "he", "auto")


def draw_weights(rng: np.random.Generator, n_in: int, n_out: int, scheme: str,
                 activation: str = "identity") -> np.ndarray:
    """Draw a weight matrix of shape ``(n_in, n_out)`` in float64 on the host.

    Parameters
    ----------
    scheme : {'tutorial', 'glorot', 'he', 'auto'}
        ``tutorial``: ``randn / sqrt(n_in)``, the tutorials' choice (LeCun normal).
        ``glorot``: uniform in ``±sqrt(6 / (n_in + n_out))``.
        ``he``: ``randn * sqrt(2 / n_in)``, for ReLU layers.
        ``auto``: ``he`` for (leaky) ReLU layers, ``tutorial`` otherwise.
    """
    if scheme == "auto":
        scheme = "he" if activation.startswith(("relu", "leaky_relu")) else "tutorial"
    if scheme == "tutorial":
        return rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)
    if scheme == "glorot":
        limit = np.sqrt(6.0 / (n_in + n_out))
        return rng.uniform(-limit, limit, size=(n_in, n_out))
    if scheme == "he":
        return rng.standard_normal((n_in, n_out)) * np.sqrt(2.0 / n_in)
    raise InvalidParameterError(f"init={scheme!r} is unknown; choose one of: {', '.join(SCHEMES)}.")
