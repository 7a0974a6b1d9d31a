"""One set of parameter checks, one message style, one exception type.

Every check raises :class:`~nnx.errors.InvalidParameterError` (both ValueError and TypeError)
with the message ``"{where}: {name} must be {what}; received {name}={value!r}."``, so that the
same mistake gets the same answer everywhere: ``Dense(2.5, 3)``, ``fit(epochs=2.5)`` and
``StepDecay(every=2.5)`` are one case. ``True`` is not a number and ``"0.1"`` is not a number.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

from nnx.errors import InvalidParameterError


def _fail(where: str, name: str, what: str, value: Any) -> InvalidParameterError:
    return InvalidParameterError(f"{where}: {name} must be {what}; received {name}={value!r}.")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and not (
        type(value).__module__ == "numpy" and type(value).__name__ == "bool_")


def _is_real(value: Any) -> bool:
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and type(value).__name__ not in ("bool_", "bool"))


def _range_words(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is None:
        return f"> {low:g}" if low_open else f">= {low:g}"
    if high is not None and low is None:
        return f"< {high:g}" if high_open else f"<= {high:g}"
    if low is None and high is None:
        return ""
    return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def _in_range(x: float, low: float | None, high: float | None, low_open: bool,
              high_open: bool) -> bool:
    if low is not None and (x < low or (low_open and x == low)):
        return False
    return not (high is not None and (x > high or (high_open and x == high)))


def check_int(value: Any, name: str, where: str, *, low: int | None = None,
              high: int | None = None, allow_none: bool = False) -> int | None:
    """`value` as an ``int`` in ``[low, high]``; None passes when `allow_none`."""
    if value is None and allow_none:
        return None
    bounds = _range_words(low, high, False, False)
    what = f"an integer {bounds}".rstrip() + (" or None" if allow_none else "")
    if not _is_int(value) or not _in_range(int(value), low, high, False, False):
        raise _fail(where, name, what, value)
    return int(value)


def check_real(value: Any, name: str, where: str, *, low: float | None = None,
               high: float | None = None, low_open: bool = False, high_open: bool = False,
               allow_none: bool = False) -> float | None:
    """`value` as a finite ``float`` in the given range; None passes when `allow_none`."""
    if value is None and allow_none:
        return None
    bounds = _range_words(low, high, low_open, high_open)
    what = f"a finite number {bounds}".rstrip() + (" or None" if allow_none else "")
    if not _is_real(value):
        raise _fail(where, name, what, value)
    number = float(value)
    if not math.isfinite(number) or not _in_range(number, low, high, low_open, high_open):
        raise _fail(where, name, what, value)
    return number


def check_bool(value: Any, name: str, where: str) -> bool:
    """`value` as a ``bool`` (True/False, or NumPy's bool)."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    raise _fail(where, name, "True or False", value)


def check_choice(value: Any, name: str, where: str, choices: Iterable[Any]) -> Any:
    """`value` if it is one of `choices`."""
    choices = tuple(choices)
    if isinstance(value, str) and value in choices:
        return value
    if not isinstance(value, str) and any(value is c for c in choices):
        return value
    names = ", ".join(repr(c) for c in choices)
    raise _fail(where, name, f"one of {names}", value)


def check_instance(value: Any, name: str, where: str, types: type | tuple[type, ...],
                   what: str) -> Any:
    """`value` if it is an instance of `types` (described to the user as `what`)."""
    if not isinstance(value, types):
        raise InvalidParameterError(f"{where}: {name} must be {what}; received {value!r} "
                                    f"({type(value).__name__}).")
    return value
