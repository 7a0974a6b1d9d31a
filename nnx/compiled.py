"""A compiled training step: the training step as a pure function of arrays, and the epoch loop
that drives a backend's compiled version of it (``fit(..., compile=True)``).

Wrapping :meth:`~nnx.Sequential.train_step` in a compiler (``jax.jit``) would be silently wrong:
the optimizers keep their state (momentum, Adam's moments and step count) as Python
attributes, which a trace reads once and freezes. Here the state travels as arrays:

``train_step(xp, spec, params, state, X, Y, scalars, labels)
-> (params, state, loss, correct)``

with the same maths as the eager path, operation for operation: the model's activations'
forward and backward, its loss fused from logits (:mod:`nnx.losses`), the L2 term
``(l2/2) * sum ||W||^2`` on the weights only, and the optimizers' update rules of
:mod:`nnx.optimizers` (plain SGD folds ``lr`` into the loss gradient; Adam's bias corrections
are folded into two scalars). The per-step scalars (the learning rate from the schedule,
Adam's corrected step and eps) are computed on the host in Python floats, exactly as the eager
optimizers compute them, by :func:`host_scalars`, and passed in as an array.

Everything here is written against the Array API and takes ``xp``; the compiler and the loops
(``jax.jit``, ``lax.fori_loop``) are the backend's (:meth:`nnx.backends.jax.JaxBackend.
compiled_trainer`). :class:`CompiledTrainer` is :class:`~nnx.training.Trainer` with its epochs
run by such a backend engine; history, rollback, callbacks and progress are the Trainer's.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from nnx.activations import Activation
from nnx.errors import InvalidParameterError
from nnx.optimizers import SGD, Adam, Constant, Optimizer
from nnx.training import Trainer, Window, row_slices


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """What of an optimizer a compiled step is specialised on (its rates come as arrays)."""

    kind: str  # "sgd" (no momentum), "momentum" (incl. Nesterov), "adam"
    momentum: float = 0.0
    nesterov: bool = False
    beta1: float = 0.0
    beta2: float = 0.0

    @property
    def n_scalars(self) -> int:
        return {"sgd": 2, "momentum": 1, "adam": 2}[self.kind]


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """A model's training step, as hashable values (the key a compiled step is cached by)."""

    activations: tuple[Activation, ...]
    fused: bool  # the loss sees the last layer's logits
    loss: Callable[..., Any]
    l2: float
    decays: tuple[bool, ...]  # per parameter [W0, b0, W1, ...]
    head: tuple[type, int, bool]  # (head class, n_out, fused)
    optimizer: OptimizerSpec
    eval_rows: int  # rows per chunk of an evaluation (as Sequential._chunk_rows(None))

    def make_head(self) -> Any:
        cls, n_out, fused = self.head
        return cls(n_out, fused)


# -- what can be compiled ---------------------------------------------------------------------
def optimizer_spec(optimizer: Optimizer, where: str = "Sequential.fit") -> OptimizerSpec:
    """The spec of an nnx SGD or Adam; anything else (a subclass with its own ``step``) is
    refused: its update is Python code the compiled step cannot know."""
    if isinstance(optimizer, SGD) and type(optimizer).step is SGD.step \
            and type(optimizer).grad_scale is SGD.grad_scale:
        if optimizer.momentum == 0:
            return OptimizerSpec("sgd")
        return OptimizerSpec("momentum", momentum=optimizer.momentum,
                             nesterov=optimizer.nesterov)
    if isinstance(optimizer, Adam) and type(optimizer).step is Adam.step:
        return OptimizerSpec("adam", beta1=optimizer.beta1, beta2=optimizer.beta2)
    raise InvalidParameterError(
        f"{where}: compile=True supports nnx.SGD (plain, momentum, Nesterov) and nnx.Adam; "
        f"received {optimizer!r} ({type(optimizer).__name__}), whose step is its own Python "
        "code: drop compile=True.")


def check_model(model: Any, where: str = "Sequential.fit") -> None:
    """Refuse models whose layers the functional step does not know (it knows Dense)."""
    from nnx.layers import Dense

    for i, layer in enumerate(model.layers):
        if type(layer).forward is not Dense.forward or type(layer).backward is not \
                Dense.backward or type(layer).logits is not Dense.logits \
                or list(layer.params()) != ["W", "b"]:
            raise InvalidParameterError(
                f"{where}: compile=True knows nnx.Dense layers; layers[{i}] is "
                f"{type(layer).__name__}: drop compile=True.")


def step_spec(model: Any, optimizer: Optimizer) -> StepSpec:
    return StepSpec(
        activations=tuple(layer.activation for layer in model.layers),
        fused=bool(model.head.fused),
        loss=model.loss_function.fn,
        l2=float(model.l2),
        decays=tuple(bool(d) for layer in model.layers for d in layer.decay().values()),
        head=(type(model.head), int(model.head.n_out), bool(model.head.fused)),
        optimizer=optimizer_spec(optimizer),
        eval_rows=model._chunk_rows(None),
    )


# -- the functional step ----------------------------------------------------------------------
def output(xp: Any, spec: StepSpec, params: list[Any], X: Any
           ) -> tuple[Any, list[Any], list[Any]]:
    """What the loss sees (logits for a fused loss), each layer's input and each layer's
    output (as :meth:`~nnx.Sequential._output` with ``training=True`` caches them)."""
    last = len(spec.activations) - 1
    inputs, outputs = [], []
    a = X
    for i, activation in enumerate(spec.activations):
        inputs.append(a)
        z = a @ params[2 * i]
        z = z + params[2 * i + 1]
        a = z if (i == last and spec.fused) else activation.forward(xp, z)
        outputs.append(a)
    return a, inputs, outputs


def l2_term(xp: Any, spec: StepSpec, params: list[Any]) -> Any:
    """``(l2 / 2) * sum ||W||^2`` (as :meth:`~nnx.Sequential._l2_term`)."""
    total = None
    for p, decays in zip(params, spec.decays):
        if decays:
            # One fused reduction under jit (a dot of the flattened weights is a library
            # call of its own: one more dispatch per layer and step on XLA's CPU).
            square = xp.sum(p * p)
            total = square if total is None else total + square
    return (spec.l2 / 2) * total


def loss_and_grads(xp: Any, spec: StepSpec, params: list[Any], X: Any, Y: Any,
                   scale: Any = 1.0) -> tuple[Any, Any, list[Any]]:
    """The objective, the loss's input and ``scale`` times the data gradient of every
    parameter (the L2 gradient is the optimizer's, as in the eager step)."""
    out, inputs, outputs = output(xp, spec, params, X)
    loss, grad = spec.loss(xp, out, Y, grad=True, scale=scale)
    if spec.l2:
        loss = loss + l2_term(xp, spec, params)
    last = len(spec.activations) - 1
    grads: list[Any] = [None] * len(params)
    for i in range(last, -1, -1):
        if not (i == last and spec.fused):
            grad = spec.activations[i].backward(xp, outputs[i], grad)
        grads[2 * i] = inputs[i].T @ grad
        grads[2 * i + 1] = xp.sum(grad, axis=0)
        if i > 0:
            grad = grad @ params[2 * i].T
    return loss, out, grads


def update(xp: Any, spec: StepSpec, params: list[Any], grads: list[Any],
           state: dict[str, Any], scalars: Any) -> tuple[list[Any], dict[str, Any]]:
    """The optimizer's step (:mod:`nnx.optimizers`) with its state as arrays; `scalars` is
    one row of :func:`host_scalars`."""
    opt = spec.optimizer
    decay = [spec.l2 if d else 0.0 for d in spec.decays]
    if opt.kind == "sgd":
        # grads are lr * g already; p - lr * (g + d * p) = p * (1 - lr * d) - g
        keep = scalars[1]
        return [p * keep - g if d else p - g for p, g, d in zip(params, grads, decay)], state
    grads = [g + d * p if d else g for p, g, d in zip(params, grads, decay)]
    if opt.kind == "momentum":
        lr, mu = scalars[0], opt.momentum
        velocity = [mu * v - lr * g for v, g in zip(state["velocity"], grads)]
        if opt.nesterov:
            new = [p + mu * v - lr * g for p, v, g in zip(params, velocity, grads)]
        else:
            new = [p + v for p, v in zip(params, velocity)]
        return new, {"velocity": velocity}
    b1, b2 = opt.beta1, opt.beta2
    m = [b1 * m + (1 - b1) * g for m, g in zip(state["m"], grads)]
    v = [b2 * v + (1 - b2) * (g * g) for v, g in zip(state["v"], grads)]
    step, eps = scalars[0], scalars[1]
    new = [p - step * mi / (xp.sqrt(vi) + eps) for p, mi, vi in zip(params, m, v)]
    return new, {"m": m, "v": v, "t": state["t"] + 1}


def train_step(xp: Any, spec: StepSpec, params: list[Any], state: dict[str, Any], X: Any,
               Y: Any, scalars: Any, labels: Any = None
               ) -> tuple[list[Any], dict[str, Any], Any, Any]:
    """One step: ``(params, state, loss, correct)``; `correct` is the head's count of right
    answers (None without `labels`)."""
    scale = scalars[0] if spec.optimizer.kind == "sgd" else 1.0
    loss, out, grads = loss_and_grads(xp, spec, params, X, Y, scale)
    params, state = update(xp, spec, params, grads, state, scalars)
    correct = None
    if labels is not None:
        correct = spec.make_head().correct(xp, out, labels, X.dtype)
    return params, state, loss, correct


def evaluate(xp: Any, spec: StepSpec, params: list[Any], X: Any, Y: Any,
             labels: Any) -> tuple[Any, Any]:
    """``(objective, correct count)`` on encoded data, as
    :meth:`~nnx.Sequential.evaluate_encoded` computes them."""
    n = X.shape[0]
    total = correct = None
    head = spec.make_head()
    for rows in row_slices(n, spec.eval_rows):
        part = X[rows, ...]
        out = output(xp, spec, params, part)[0]
        loss, _ = spec.loss(xp, out, Y[rows, ...], grad=False)
        loss = loss * part.shape[0]
        total = loss if total is None else total + loss
        if labels is not None:
            hit = head.correct(xp, out, labels[rows, ...], X.dtype)
            correct = hit if correct is None else correct + hit
    loss = total / n
    if spec.l2:
        loss = loss + l2_term(xp, spec, params)
    return loss, correct


# -- the optimizer's state, between the Python optimizer and arrays ---------------------------
def read_state(xp: Any, spec: StepSpec, optimizer: Optimizer, params: list[Any]
               ) -> dict[str, Any]:
    kind = spec.optimizer.kind
    if kind == "sgd":
        return {}
    if kind == "momentum":
        velocity = optimizer.velocity
        return {"velocity": list(velocity) if velocity is not None
                else [xp.zeros_like(p) for p in params]}
    if optimizer.m is None:
        m = [xp.zeros_like(p) for p in params]
        v = [xp.zeros_like(p) for p in params]
    else:
        m, v = list(optimizer.m), list(optimizer.v)
    return {"m": m, "v": v, "t": xp.asarray(optimizer.t, device=params[0].device)}


def write_state(spec: StepSpec, optimizer: Optimizer, state: dict[str, Any],
                steps: int) -> None:
    """Put the state after `steps` compiled steps back on the Python optimizer, so that the
    eager ``train_step``/``fit`` (and a later compiled fit) continue from it."""
    kind = spec.optimizer.kind
    if kind == "momentum":
        optimizer.velocity = list(state["velocity"])
    elif kind == "adam":
        optimizer.m, optimizer.v = list(state["m"]), list(state["v"])
        optimizer.t += steps  # the array state["t"] holds the same count


def host_scalars(spec: StepSpec, optimizer: Optimizer, l2: float, rates: list[float],
                 t0: int) -> np.ndarray:
    """The scalars of consecutive steps, one row per step, in float64 as the eager optimizer
    computes them in Python: plain SGD ``(lr, 1 - lr * l2)``; momentum ``(lr,)``; Adam
    ``(lr * sqrt(1 - b2^t) / (1 - b1^t), eps * sqrt(1 - b2^t))`` at ``t = t0 + 1, ...``."""
    kind = spec.optimizer.kind
    if kind in ("sgd", "momentum"):  # the same float64 operations, by columns
        lr = np.asarray(rates, dtype=np.float64)
        return np.stack([lr, 1 - lr * l2] if kind == "sgd" else [lr], axis=1)
    b1, b2, rows = optimizer.beta1, optimizer.beta2, []
    for j, lr in enumerate(rates):
        t = t0 + j + 1
        rows.append((lr * math.sqrt(1 - b2**t) / (1 - b1**t),
                     optimizer.eps * math.sqrt(1 - b2**t)))
    return np.asarray(rows, dtype=np.float64).reshape(len(rates), spec.optimizer.n_scalars)


# -- the epoch loop ---------------------------------------------------------------------------
class CompiledTrainer(Trainer):
    """:class:`~nnx.training.Trainer` with the epochs run by a backend's compiled engine.

    `engine(spec)` returns an object with

    ``window(params, state, X, Y, labels, val, table, count) -> (params, state, host)``
        full batch: `count` epochs (``count <= len(table)``) in one compiled loop, the rows of
        `table` the steps' scalars; `host` a NumPy array of the epochs' figures, shape
        ``(len(table), n_figures)``, and a last element: whether the weights are finite;
    ``batches(params, state, acc, X, Y, labels, order, start, first, count, size, table)``
        `count` minibatches of `size` rows in one compiled loop, batch ``j`` the rows
        ``order[start + j * size:][:size]`` (rows ``start + j * size...`` without `order`)
        with the scalars ``table[first + j]``; returns ``(params, state, acc)`` where
        ``acc`` is the summed ``loss * rows`` and the correct count;
    ``evaluate(params, X, Y, labels) -> (loss, correct)``;
    ``zeros(dtype) -> acc`` (the initial accumulators).
    """

    def __init__(self, engine: Callable[[StepSpec], Any], optimizer: Optimizer, model: Any,
                 *args: Any) -> None:
        super().__init__(model, *args)
        check_model(model)
        optimizer_spec(optimizer)  # refuses, before the model changes, what cannot compile
        self.engine_for = engine
        self.cap = min(self.sync_every, self.epochs)

    def _engine(self) -> tuple[StepSpec, Any]:
        spec = step_spec(self.model, self.model.optimizer)
        return spec, self.engine_for(spec)

    def _rates(self, k: int) -> list[float]:
        """The learning rate of each of the next `k` epochs (the schedule's, checked), leaving
        ``optimizer.epoch`` at the last of them as the eager loop does."""
        model, opt = self.model, self.model.optimizer
        if type(opt.schedule) is Constant:  # one rate for every epoch: check it once
            opt.epoch = model.epochs_trained + k - 1
            return [opt.rate()] * k
        rates = []
        for j in range(k):
            opt.epoch = model.epochs_trained + j
            rates.append(opt.rate())
        return rates

    def _table(self, spec: StepSpec, rates: list[float], t0: int, rows: int) -> Any:
        model = self.model
        table = host_scalars(spec, model.optimizer, model.l2, rates, t0)
        if rows > table.shape[0]:
            table = np.concatenate([table, np.zeros((rows - table.shape[0], table.shape[1]))])
        return model.backend.asarray(table, dtype=model.dtype)

    def _t(self) -> int:
        return getattr(self.model.optimizer, "t", 0)

    def _run_window(self, k: int, before: Callable[[], tuple[list[Any], int]],
                    last: bool) -> Window:
        if self.batch < self.X.shape[0]:
            return super()._run_window(k, before, last)  # epochs of compiled minibatch steps
        model, xp = self.model, self.model.xp
        spec, engine = self._engine()
        opt, epoch0 = model.optimizer, model.epochs_trained
        params0 = model.parameters()
        state0 = read_state(xp, spec, opt, params0)
        table = self._table(spec, self._rates(k), self._t(), self.cap)
        data = (self.X, self.Y, self.labels, self.val)
        params, state, host = engine.window(params0, state0, *data, table, k)
        model.assign_parameters(params)
        write_state(spec, opt, state, k)
        model.epochs_trained += k
        figures = host[:-1].reshape(self.cap, -1)[:k].astype(np.float64)
        keys = self.figure_names()

        def rerun(j: int) -> tuple[list[Any], int]:
            # The parameters at the start of the window's epoch j: the same loop, j epochs.
            if j == 0:
                return params0, epoch0
            return engine.window(params0, state0, *data, table, j)[0], epoch0 + j

        def start_of(j: int) -> tuple[list[Any], int]:
            return rerun(j) if j >= 0 else before()

        return Window(list(range(epoch0, epoch0 + k)), keys, figures,
                      bool(host[-1] == 1) if last else None, start_of, lambda: rerun(k - 1))

    def _run_epoch(self) -> dict[str, Any]:
        model, xp = self.model, self.model.xp
        spec, engine = self._engine()
        opt, n, size = model.optimizer, self.X.shape[0], self.batch
        starts = list(range(0, n, size))
        params = model.parameters()
        state = read_state(xp, spec, opt, params)
        # The order comes from the model's NumPy generator, as in the eager loop.
        order = model.backend.asarray(model.rng.permutation(n)) if self.shuffle else None
        table = self._table(spec, [opt.rate()] * len(starts), self._t(), len(starts))
        acc = engine.zeros(model.dtype)
        # The full batches in one loop, then the short last one (another size: its own).
        full, rest = divmod(n, size)
        runs = ([(0, 0, full, size)] if full else []) + ([(full * size, full, 1, rest)]
                                                         if rest else [])
        for start, first, count, rows in runs:
            params, state, acc = engine.batches(params, state, acc, self.X, self.Y,
                                                self.labels, order, start, first, count,
                                                rows, table)
        model.assign_parameters(params)
        write_state(spec, opt, state, len(starts))
        figures = {"loss": acc[0] / n}
        if self.labels is not None:
            figures["accuracy"] = acc[1]
        if self.val is not None:
            loss, correct = engine.evaluate(params, *self.val)
            figures["val_loss"] = loss
            if correct is not None:
                figures["val_accuracy"] = correct
        return figures
