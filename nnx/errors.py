"""nnx's exceptions: one base class, so that a program (and the ``nnx`` command) can tell a
mistake nnx reported from a bug in nnx or elsewhere.

Each keeps the built-in type that the same mistake raised before (a ``ValueError`` stays a
``ValueError``), so ``except ValueError`` in existing code still catches it.
"""

from __future__ import annotations


class NnxError(Exception):
    """Base of every error nnx raises on purpose, with a message that says what to change."""


class InvalidParameterError(NnxError, ValueError, TypeError):
    """An argument has the wrong type or value (``Dense(2.5, 3)``, ``fit(epochs=0)``).

    Both a ValueError and a TypeError, as scikit-learn's error of the same name: the same
    mistake gets the same exception whatever its kind.
    """


class InvalidDataError(NnxError, ValueError, TypeError):
    """Data given to nnx (X, y, a CSV file) is not what it must be: shape, dtype, values."""


class BackendError(NnxError, RuntimeError):
    """A backend was asked for that cannot be used here."""


class MissingDependencyError(NnxError, ImportError):
    """An optional package a feature needs is not installed; the message says what to install."""


class NonFiniteLossError(NnxError, ValueError, FloatingPointError):
    """The training loss became NaN or inf; the weights were rolled back."""


class ModelFileError(NnxError, ValueError):
    """A file that :func:`nnx.load` cannot read as a model; ``path`` and ``reason`` say why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, reason)
        self.path, self.reason = path, reason

    def __str__(self) -> str:
        return f"nnx.load: cannot load {self.path}: {self.reason}"
