"""Optimizers and learning-rate schedules.

Updates are functional (``p = p - lr * g`` makes a new array, the same number of kernels as an
in-place update): the arrays a model held before a step are never written, so keeping a
reference to them is a free snapshot, which is how ``fit`` rolls back after a non-finite loss
and how early stopping restores the best weights. State is made with ``xp.zeros_like(param)``,
so it lives on the parameter's device.
"""

from __future__ import annotations

import math
from typing import Any

from nnx._validation import check_bool, check_int, check_real
from nnx.errors import InvalidParameterError


def _positive(value: Any, name: str, where: str, allow_zero: bool = False) -> float:
    return check_real(value, name, where, low=0, low_open=not allow_zero)


def _fraction(value: Any, name: str, where: str) -> float:
    return check_real(value, name, where, low=0, high=1, high_open=True)


# -- schedules ------------------------------------------------------------------------------
class Schedule:
    """A learning-rate multiplier as a function of the epoch (0-based)."""

    def __call__(self, epoch: int) -> float:
        raise NotImplementedError


class Constant(Schedule):
    def __call__(self, epoch: int) -> float:
        return 1.0

    def __repr__(self) -> str:
        return "Constant()"


class StepDecay(Schedule):
    """Multiply the rate by `factor` every `every` epochs."""

    def __init__(self, every: int = 10, factor: float = 0.5) -> None:
        self.every = check_int(every, "every", "StepDecay", low=1)
        self.factor = _positive(factor, "factor", "StepDecay")

    def __call__(self, epoch: int) -> float:
        return self.factor ** (epoch // self.every)

    def __repr__(self) -> str:
        return f"StepDecay(every={self.every}, factor={self.factor})"


class ExponentialDecay(Schedule):
    """``rate ** (epoch / every)``: smooth decay by `rate` every `every` epochs."""

    def __init__(self, rate: float = 0.96, every: int = 1) -> None:
        self.rate = _positive(rate, "rate", "ExponentialDecay")
        self.every = _positive(every, "every", "ExponentialDecay")

    def __call__(self, epoch: int) -> float:
        return self.rate ** (epoch / self.every)

    def __repr__(self) -> str:
        return f"ExponentialDecay(rate={self.rate}, every={self.every})"


class InverseTimeDecay(Schedule):
    """``1 / (1 + rate * epoch)``."""

    def __init__(self, rate: float = 0.01) -> None:
        self.rate = _positive(rate, "rate", "InverseTimeDecay", allow_zero=True)

    def __call__(self, epoch: int) -> float:
        return 1.0 / (1.0 + self.rate * epoch)

    def __repr__(self) -> str:
        return f"InverseTimeDecay(rate={self.rate})"


SCHEDULES = {"constant": Constant, "step": StepDecay, "exponential": ExponentialDecay,
             "inverse_time": InverseTimeDecay}


def get_schedule(schedule: str | Schedule | None, **kwargs: Any) -> Schedule:
    if schedule is None:
        return Constant()
    if isinstance(schedule, Schedule):
        return schedule
    if callable(schedule) and not isinstance(schedule, str):
        return _CallableSchedule(schedule)
    key = str(schedule).lower()
    if key not in SCHEDULES:
        raise InvalidParameterError(f"schedule={schedule!r} is unknown; choose one of: "
                         f"{', '.join(SCHEDULES)}.")
    return SCHEDULES[key](**kwargs)


class _CallableSchedule(Schedule):
    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def __call__(self, epoch: int) -> float:
        return self.fn(epoch)

    def __repr__(self) -> str:
        return f"schedule {getattr(self.fn, '__name__', self.fn)!r}"


def _finite_non_negative(value: Any) -> bool:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return False
    return math.isfinite(number) and number >= 0


# -- optimizers -----------------------------------------------------------------------------
class Optimizer:
    """Base class.

    ``step(xp, params, grads, decay)`` returns the new parameters, where ``decay[i]`` is the L2
    strength on ``params[i]`` (the model's ``l2`` for weight matrices, 0 for biases): the
    gradient of the objective is ``grads[i] + decay[i] * params[i]``. ``grads`` arrive
    multiplied by :meth:`grad_scale`.
    """

    def __init__(self, lr: float, schedule: str | Schedule | None = None) -> None:
        self.lr = _positive(lr, "lr", type(self).__name__)
        self.schedule = get_schedule(schedule)
        self.epoch = 0

    def rate(self) -> float:
        """The learning rate in force for the current epoch (the schedule's multiplier is
        checked: a finite number >= 0, else nothing trains on it)."""
        factor = self.schedule(self.epoch)
        if (isinstance(factor, bool) or not isinstance(factor, (int, float))
                and type(factor).__module__ != "numpy") or not _finite_non_negative(factor):
            raise InvalidParameterError(
                f"{type(self).__name__}: the {self.schedule!r} gave {factor!r} at epoch "
                f"{self.epoch}; a schedule must return a finite number >= 0 (the factor on "
                f"lr={self.lr:g}).")
        return self.lr * float(factor)

    def grad_scale(self) -> float:
        """The factor the model should fold into the loss gradient (1: raw gradients)."""
        return 1.0

    def step(self, xp: Any, params: list[Any], grads: list[Any],
             decay: list[float]) -> list[Any]:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget the state (momentum, moments); the next step starts afresh."""


def _with_decay(params: list[Any], grads: list[Any], decay: list[float]) -> list[Any]:
    return [g + d * p if d else g for p, g, d in zip(params, grads, decay)]


class SGD(Optimizer):
    """Gradient descent with optional (Nesterov) momentum.

    ``v = momentum * v - lr * g``; ``p = p + v`` (or ``p + momentum * v - lr * g`` with
    Nesterov). With ``momentum=0`` this is the tutorials' ``p = p - lr * g``.
    """

    def __init__(self, lr: float = 0.01, momentum: float = 0.0, nesterov: bool = False,
                 schedule: str | Schedule | None = None) -> None:
        super().__init__(lr, schedule)
        self.momentum = _fraction(momentum, "momentum", "SGD")
        nesterov = check_bool(nesterov, "nesterov", "SGD")
        if nesterov and self.momentum == 0:
            raise InvalidParameterError("SGD: nesterov=True needs momentum > 0; received "
                                        "momentum=0.")
        self.nesterov = nesterov
        self.velocity: list[Any] | None = None

    def __repr__(self) -> str:
        return f"SGD(lr={self.lr}, momentum={self.momentum}, nesterov={self.nesterov})"

    def reset(self) -> None:
        self.velocity = None

    def grad_scale(self) -> float:
        # Plain SGD only ever uses lr * g: folding lr into the loss gradient (where the
        # division by n happens anyway) saves one multiplication per parameter per step.
        return self.rate() if self.momentum == 0 else 1.0

    def step(self, xp, params, grads, decay):
        lr = self.rate()
        if self.momentum == 0:
            # grads are lr * g already; p - lr * (g + d * p) = p * (1 - lr * d) - lr * g
            return [p * (1 - lr * d) - g if d else p - g
                    for p, g, d in zip(params, grads, decay)]
        grads = _with_decay(params, grads, decay)
        if self.velocity is None:
            self.velocity = [xp.zeros_like(p) for p in params]
        mu = self.momentum
        self.velocity = [mu * v - lr * g for v, g in zip(self.velocity, grads)]
        if self.nesterov:
            return [p + mu * v - lr * g for p, v, g in zip(params, self.velocity, grads)]
        return [p + v for p, v in zip(params, self.velocity)]


class Adam(Optimizer):
    """Adam (Kingma & Ba), with bias-corrected moment estimates."""

    def __init__(self, lr: float = 0.001, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8, schedule: str | Schedule | None = None) -> None:
        super().__init__(lr, schedule)
        self.beta1 = _fraction(beta1, "beta1", "Adam")
        self.beta2 = _fraction(beta2, "beta2", "Adam")
        self.eps = _positive(eps, "eps", "Adam")
        self.t = 0
        self.m: list[Any] | None = None
        self.v: list[Any] | None = None

    def __repr__(self) -> str:
        return f"Adam(lr={self.lr}, beta1={self.beta1}, beta2={self.beta2}, eps={self.eps})"

    def reset(self) -> None:
        self.t, self.m, self.v = 0, None, None

    def step(self, xp, params, grads, decay):
        grads = _with_decay(params, grads, decay)
        if self.m is None:
            self.m = [xp.zeros_like(p) for p in params]
            self.v = [xp.zeros_like(p) for p in params]
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        self.m = [b1 * m + (1 - b1) * g for m, g in zip(self.m, grads)]
        self.v = [b2 * v + (1 - b2) * (g * g) for v, g in zip(self.v, grads)]
        # Fold both bias corrections into host scalars: no extra device work.
        step = self.rate() * math.sqrt(1 - b2**self.t) / (1 - b1**self.t)
        eps = self.eps * math.sqrt(1 - b2**self.t)
        return [p - step * m / (xp.sqrt(v) + eps) for p, m, v in zip(params, self.m, self.v)]


OPTIMIZERS = {"sgd": SGD, "momentum": SGD, "nesterov": SGD, "adam": Adam}


def get_optimizer(optimizer: str | Optimizer | None, lr: float | None = None,
                  schedule: str | Schedule | None = None, **kwargs: Any) -> Optimizer:
    """Make an optimizer from a name (``sgd``, ``momentum``, ``nesterov``, ``adam``)."""
    if isinstance(optimizer, Optimizer):
        given = [f"{name}={value!r}" for name, value in (("lr", lr), ("schedule", schedule))
                 if value is not None]
        if given:
            raise InvalidParameterError(
                f"optimizer={optimizer!r} was given with {' and '.join(given)}; set them on "
                f"the optimizer itself (e.g. nnx.{type(optimizer).__name__}(lr=..., "
                "schedule=...)) or pass the optimizer by name."
            )
        return optimizer
    name = (optimizer or "sgd").lower() if isinstance(optimizer, (str, type(None))) else None
    if name not in OPTIMIZERS:
        raise InvalidParameterError(
            f"optimizer={optimizer!r} is unknown; choose one of: {', '.join(OPTIMIZERS)}."
        )
    if name == "momentum":
        kwargs.setdefault("momentum", 0.9)
    if name == "nesterov":
        kwargs.setdefault("momentum", 0.9)
        kwargs["nesterov"] = True
    if lr is not None:
        kwargs["lr"] = lr
    return OPTIMIZERS[name](schedule=schedule, **kwargs)
