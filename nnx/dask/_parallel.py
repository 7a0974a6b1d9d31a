"""Data-parallel ``fit`` on a ``dask.distributed`` cluster.

The data set's row blocks are persisted on the workers and stay where they are: each worker
trains a replica of the model on the blocks it holds. Every step, the workers' gradients
combine into the whole data set's as the size-weighted mean ``sum_k n_k g_k / sum_k n_k``
(an unweighted mean of unequal shards would drift from full-batch training), and every
replica applies the same update: synchronous full-batch gradient descent, equal to a
single-process ``fit(batch_size=None)`` up to rounding. With ``batch_size``, synchronous
minibatch SGD: every epoch has ``ceil(n / batch_size)`` steps, and at each step every worker
contributes its share of the rows (``ceil(n_k / steps)`` of its ``n_k``), so that a step's
global batch is about ``batch_size`` rows drawn from every shard, and the update is the one
``train_step`` would make on that global batch.

Two ways to combine the gradients:

- ``reduction="collective"``: one long-lived task per worker, the gradients summed by a
  ``torch.distributed`` all-reduce (``gloo`` on CPUs; ``nccl`` would be the choice between
  GPUs). Needs torch on the workers.
- ``reduction="client"``: each step, every worker sends its gradient sum to the client,
  which combines them, updates its model and sends the new weights back. Needs nothing but
  dask; costs a round trip through the client per step.
"""

from __future__ import annotations

import math
import pickle
import socket
import uuid
from datetime import timedelta
from typing import Any

import numpy as np

from nnx._validation import check_choice, check_real
from nnx.backends import to_numpy
from nnx.callbacks import History
from nnx.dask._predict import as_rows, as_targets, check_model
from nnx.dask._stream import dask_weights, l2_term, weight_column
from nnx.errors import (
    InvalidDataError,
    InvalidParameterError,
    MissingDependencyError,
    NonFiniteLossError,
)
from nnx.training import FitSettings

_WHERE = "nnx.dask.fit_parallel"
# What each worker keeps between a run's tasks: its replica and encoded shards, by
# (run id, rank). Removed when the run ends.
_STATE: dict[tuple[str, int], dict[str, Any]] = {}


# -- on the workers ---------------------------------------------------------------------------
def _prepare(key: tuple[str, int], model: Any, xs: list[Any], ys: list[Any],
             ws: list[Any] | None) -> int:
    """Copy the model, check and encode the worker's shards ``(X, Y, weight column or
    None)``; the number of rows. (For minibatches :func:`_batch_rows` joins the shards into
    one array, once.)"""
    replica = pickle.loads(pickle.dumps(model))  # the scattered original stays untouched
    shards = []
    for i, (Xc, yc) in enumerate(zip(xs, ys)):
        where = f"{_WHERE} (shard {i} of rank {key[1]})"
        # Arrays received over the network may be unaligned or read-only views.
        Xc = np.require(Xc, requirements="CA")
        yc = np.require(yc, requirements="CA")
        Xd, Y = replica.encode(Xc, yc, where=where)
        weight = (None if ws is None
                  else weight_column(replica, np.require(ws[i], requirements="CA"), where))
        shards.append((Xd, Y, weight))
    _STATE[key] = {"model": replica, "shards": shards}
    return sum(int(X.shape[0]) for X, _, _ in shards)


def _local_sum(model: Any, shards: list[tuple[Any, Any, Any]]) -> Any:
    """``[sum_c m_c g_c (flattened) ..., sum_c m_c loss_c, sum_c m_c]`` as one 1-D device
    array, ``m_c`` a shard's rows or its weights' sum (zeros when the shards have no rows
    or no weight: a worker with nothing left in a step adds nothing)."""
    xp = model.xp
    sums, loss, mass = None, None, None
    for Xd, Y, weight in shards:
        if Xd.shape[0] == 0:
            continue
        m_c = Xd.shape[0] if weight is None else xp.sum(weight)
        if weight is not None and not bool(m_c > 0):
            continue  # the weighted mean of rows that all weigh 0 is not defined
        part_loss, grads = model.gradients(Xd, Y, weight, encoded=True)
        scaled = [g * m_c for g in grads]
        sums = scaled if sums is None else [s + g for s, g in zip(sums, scaled)]
        loss = part_loss * m_c if loss is None else loss + part_loss * m_c
        mass = m_c if mass is None else mass + m_c
    if sums is None:
        size = sum(math.prod(p.shape) for p in model.trained_parameters()) + 2
        return xp.zeros((size,), dtype=model.dtype, device=model.backend.device)
    tail = xp.stack([xp.asarray(loss, dtype=model.dtype, device=model.backend.device),
                     xp.asarray(mass, dtype=model.dtype, device=model.backend.device)])
    return xp.concat([xp.reshape(s, (-1,)) for s in sums] + [tail])


def _split(model: Any, total: Any, n: float) -> tuple[list[Any], float]:
    """The mean gradient (arrays shaped as the trained parameters) and the mean data loss
    from a summed buffer of :func:`_local_sum`."""
    xp = model.xp
    grads, start = [], 0
    for p in model.trained_parameters():
        size = math.prod(p.shape)
        grads.append(xp.reshape(total[start:start + size], p.shape) / n)
        start += size
    return grads, float(total[start]) / n


def _step(model: Any, total: Any, rows: float, weighted: bool) -> tuple[float, float]:
    """One update from the summed buffer of a step of `rows` rows; the objective at the
    weights before it (no update when it is not finite) and the step's share of the epoch
    (its rows, or with sample weights their sum, read from the buffer). As
    ``Sequential.fit``, a step whose rows all weigh 0 has a data loss and gradient of 0 (the
    optimizer still steps, with its L2 term)."""
    share = float(total[-1]) if weighted else rows
    grads, loss = _split(model, total, share if share > 0 else 1.0)
    objective = loss + float(l2_term(model))
    if math.isfinite(objective):
        model.optimizer.epoch = model.epochs_trained
        model.apply_gradients(grads)
    return objective, share


class _Plan:
    """The steps of an epoch: ``steps`` per epoch; at step ``s`` rank ``k`` takes rows
    ``[s * b_k, (s + 1) * b_k)`` of its (permuted) rows, ``b_k = ceil(n_k / steps)``.
    ``batch_size=None``: one step of every row (full batch)."""

    def __init__(self, sizes: list[int], batch_size: int | None, shuffle: bool,
                 seed: int | None, weighted: bool = False) -> None:
        n = sum(sizes)
        self.sizes, self.shuffle, self.seed, self.weighted = sizes, shuffle, seed, weighted
        self.full = batch_size is None or batch_size >= n
        self.steps = 1 if self.full else -(-n // batch_size)
        self.local = [-(-n_k // self.steps) for n_k in sizes]

    def rows(self, step: int) -> float:
        """How many rows step `step` trains on, over every rank (exact: Python ints)."""
        return float(sum(max(0, min(b, n_k - step * b))
                         for b, n_k in zip(self.local, self.sizes)))

    @staticmethod
    def epoch(shares: list[float], objectives: list[float]) -> float:
        """The epoch's figure, the mean of its steps' objectives weighted by their shares
        (rows, or weights' sums), as ``Sequential.fit`` reports a minibatch epoch."""
        return sum(r * o for r, o in zip(shares, objectives)) / sum(shares)


def _batch_rows(state: dict[str, Any], plan: _Plan, rank: int, epoch: int,
                step: int) -> list[tuple[Any, Any]]:
    """This rank's rows of one step, as a shard list for :func:`_local_sum`."""
    if plan.full:
        return state["shards"]
    model = state["model"]
    xp = model.xp
    if "joined" not in state:
        shards = state.pop("shards")
        state["joined"] = (xp.concat([X for X, _, _ in shards], axis=0),
                           xp.concat([Y for _, Y, _ in shards], axis=0),
                           None if shards[0][2] is None
                           else xp.concat([W for _, _, W in shards], axis=0))
    X, Y, W = state["joined"]
    b = plan.local[rank]
    if not plan.shuffle:
        rows = slice(min(step * b, X.shape[0]), min((step + 1) * b, X.shape[0]))
        return [(X[rows, ...], Y[rows, ...], None if W is None else W[rows, ...])]
    if state.get("order_epoch") != epoch:
        order = np.random.default_rng([plan.seed, rank, epoch]).permutation(X.shape[0])
        state["order"], state["order_epoch"] = model.backend.asarray(order), epoch
    take = state["order"][min(step * b, X.shape[0]):min((step + 1) * b, X.shape[0])]
    return [(xp.take(X, take, axis=0), xp.take(Y, take, axis=0),
             None if W is None else xp.take(W, take, axis=0))]


def _collective(key: tuple[str, int], world: int, host: str, port: int, backend: str,
                epochs: int, plan: _Plan, timeout: float) -> Any:
    """The long-lived task of one worker: `epochs` epochs of synchronous steps, each step's
    sums all-reduced."""
    try:
        import torch
        import torch.distributed as dist
    except ImportError:
        raise MissingDependencyError(f"{_WHERE}: reduction='collective' needs torch on the "
                                     "workers (pip install 'nnx-arrays[torch]'); or use "
                                     "reduction='client'.") from None
    state = _STATE[key]
    model, rank = state["model"], key[1]
    dist.init_process_group(backend, init_method=f"tcp://{host}:{port}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=timeout))

    def all_reduce(flat: Any) -> Any:
        if backend == "gloo":  # CPU tensors: through the host
            host_flat = np.require(to_numpy(flat), requirements="CA")
            dist.all_reduce(torch.from_numpy(host_flat))
            return model.backend.asarray(host_flat)
        tensor = torch.from_dlpack(flat)  # device tensors, shared through DLPack
        dist.all_reduce(tensor)
        return model.xp.from_dlpack(tensor)

    try:
        losses = _epochs(model, plan, epochs, lambda epoch, step: all_reduce(
            _local_sum(model, _batch_rows(state, plan, rank, epoch, step))))
    finally:
        dist.destroy_process_group()
    if rank != 0:
        return None
    return [to_numpy(p) for p in model.trained_parameters()], model.optimizer, losses


def _epochs(model: Any, plan: _Plan, epochs: int, summed: Any) -> list[float]:
    """Train `model` for `epochs` epochs of `plan`'s steps, `summed(epoch, step)` giving each
    step's buffer summed over the ranks; the epochs' figures. Every rank (and the client)
    sees the same sums, so all stop at the same epoch when a figure is not finite, back at
    the weights of the last finite one."""
    losses: list[float] = []
    previous = None
    for _ in range(epochs):
        start, epoch = model.trained_parameters(), model.epochs_trained
        shares, objectives = [], []
        for step in range(plan.steps):
            objective, share = _step(model, summed(epoch, step), plan.rows(step),
                                     plan.weighted)
            objectives.append(objective)
            shares.append(share)
            if not math.isfinite(objective):
                break
        figure = (plan.epoch(shares, objectives) if math.isfinite(objectives[-1])
                  else objectives[-1])
        losses.append(figure)
        if not math.isfinite(figure):
            model.assign_trained_parameters(previous or start)
            break
        previous = start
        model.epochs_trained += 1
    return losses


def _client_round(key: tuple[str, int], params: list[Any] | None, plan: _Plan, epoch: int,
                  step: int) -> np.ndarray:
    """One step of the client reduction on a worker: take the weights, send back the sums."""
    state = _STATE[key]
    model = state["model"]
    if params is not None:
        model.assign_trained_parameters(
            [model.backend.asarray(np.require(p, requirements="CA"), dtype=model.dtype)
             for p in params])
    return to_numpy(_local_sum(model, _batch_rows(state, plan, key[1], epoch, step)))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _forget(run: str) -> None:
    for key in [k for k in _STATE if k[0] == run]:
        del _STATE[key]


# -- on the client ----------------------------------------------------------------------------
def shard_placement(client: Any, X: Any) -> dict[str, list[int]]:
    """Which worker holds which row blocks of the persisted dask array `X` (waiting for them
    to be computed): ``{address: [block, ...]}``, each block on one worker. Training puts
    a block's targets next to it."""
    from distributed import wait

    wait(X)
    keys = [k for row in X.__dask_keys__() for k in row] if X.ndim == 2 else \
        list(X.__dask_keys__())
    held = client.who_has(X)
    placement: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        workers = sorted(held.get(key, ()))
        if not workers:
            raise InvalidDataError(f"{_WHERE}: row block {i} of X is on no worker after "
                                   "persist; was a worker lost?")
        placement.setdefault(workers[0], []).append(i)
    return placement


def fit_parallel(model: Any, X: Any, y: Any, *, client: Any, sample_weight: Any = None,
                 epochs: int = 1,
                 lr: float | None = None, l2: float | None = None, optimizer: Any = None,
                 schedule: Any = None, batch_size: int | None = None, shuffle: bool = True,
                 reduction: str = "collective", collective_backend: str = "gloo",
                 timeout: float = 120.0) -> History:
    """Synchronous data-parallel training on the workers of `client`, full batch or in
    minibatches, continuing from the model's weights and optimizer state; the trained
    weights and optimizer come back into `model`.

    Parameters
    ----------
    model : nnx.Sequential
    X : dask.array.Array, shape (n_samples, n_in)
        Persisted on the cluster if it is not already; each worker trains on the row blocks
        it holds.
    y : dask.array.Array or array, shape (n_samples,) or (n_samples, n_out)
    client : dask.distributed.Client
    sample_weight : dask.array.Array or array, shape (n_samples,), optional
        Each row's weight, as ``Sequential.fit``'s: a step's loss is the weighted mean over
        its global batch, the epoch's figure the weighted mean over all rows (the sum is
        computed once, before training, and must be > 0; each shard's weights are checked
        on its worker). Minibatch shares are still counted in rows.
    epochs : int
        Passes over the data.
    lr, l2, optimizer, schedule
        As ``Sequential.fit``.
    batch_size : int or None
        None (the default): full batch, one update per epoch from the whole data set's
        gradient, as ``Sequential.fit(batch_size=None)``. An int: rows per update over all
        workers; an epoch has ``ceil(n / batch_size)`` steps, and at each step every worker
        takes ``ceil(n_k / steps)`` of its ``n_k`` rows (its last steps may have fewer, or
        none), so each update is ``train_step`` on a global batch of about `batch_size`
        rows drawn from every shard.
    shuffle : bool
        With `batch_size`, each worker visits its rows in a new order every epoch (drawn from
        a seed taken from ``model.rng`` once per call, the worker's rank and the epoch);
        False: in the order of its blocks. A minibatch run depends on which worker holds
        which blocks too: persist `X` once to repeat a run exactly.
    reduction : {'collective', 'client'}
        How the gradients combine: a torch.distributed all-reduce among the workers, or
        through the client (nothing but dask needed).
    collective_backend : str
        torch.distributed's backend for ``reduction='collective'``: ``'gloo'`` (CPU),
        ``'nccl'`` between GPUs.
    timeout : float
        Seconds the workers wait for one another (joining the group, each all-reduce).

    Returns
    -------
    History
        ``loss``: the objective at the weights before each step (full batch), or the
        rows-weighted mean of an epoch's steps' objectives (minibatches).
    """
    check_model(model, _WHERE)
    try:
        from distributed import Client, futures_of, wait
    except ImportError:
        raise MissingDependencyError(f"{_WHERE} needs dask.distributed: pip install "
                                     "'nnx-arrays[dask]'.") from None
    if not isinstance(client, Client):
        raise InvalidParameterError(f"{_WHERE}: client must be a dask.distributed.Client; "
                                    f"received {type(client).__name__}.")
    reduction = check_choice(reduction, "reduction", _WHERE, ("collective", "client"))
    if not isinstance(collective_backend, str) or not collective_backend:
        raise InvalidParameterError(f"{_WHERE}: collective_backend must be a torch."
                                    "distributed backend name such as 'gloo' or 'nccl'; "
                                    f"received collective_backend={collective_backend!r}.")
    timeout = check_real(timeout, "timeout", _WHERE, low=0, low_open=True)
    settings = FitSettings(
        model, epochs=epochs, lr=lr, l2=l2, batch_size=batch_size, optimizer=optimizer,
        schedule=schedule, shuffle=shuffle, validation_data=None, validation_split=0.0,
        callbacks=(), early_stopping=None, verbose=False, sync_every=1, where=_WHERE)
    X = as_rows(X, _WHERE, n_in=model.n_in)
    y = as_targets(y, X, _WHERE)
    if X.shape[0] == 0:
        raise InvalidDataError(f"{_WHERE}: X has no rows.")

    weights, _ = dask_weights(sample_weight, X, _WHERE)

    X, y, *weights = client.persist([X, y] + ([] if weights is None else [weights]))
    wait([X, y] + weights)
    placement = shard_placement(client, X)
    x_futures = {f.key: f for f in futures_of(X)}
    y_futures = {f.key: f for f in futures_of(y)}
    x_keys = [k for row in X.__dask_keys__() for k in row]
    y_keys = list(y.__dask_keys__())
    y_keys = [k for row in y_keys for k in row] if y.ndim == 2 else y_keys
    w_futures = {f.key: f for f in futures_of(weights[0])} if weights else {}
    w_keys = list(weights[0].__dask_keys__()) if weights else []
    workers = sorted(placement)

    # The model as it will train: the optimizer chosen and set, sent to the workers once.
    trial = pickle.loads(pickle.dumps(model))
    opt = settings.optimizer
    trial.optimizer = pickle.loads(pickle.dumps(opt))
    for name, value in settings.optimizer_changes.items():
        setattr(trial.optimizer, name, value)
    trial.l2 = settings.l2
    shared = client.scatter(trial, workers=workers, broadcast=True, hash=False)
    run = uuid.uuid4().hex
    keys = {w: (run, rank) for rank, w in enumerate(workers)}
    try:
        rows = client.gather([
            client.submit(_prepare, keys[w], shared,
                          [x_futures[x_keys[i]] for i in placement[w]],
                          [y_futures[y_keys[i]] for i in placement[w]],
                          [w_futures[w_keys[i]] for i in placement[w]] if w_keys else None,
                          workers=[w], allow_other_workers=False, pure=False)
            for w in workers])
        minibatches = settings.batch_size is not None and settings.batch_size < sum(rows)
        seed = (int(model.rng.integers(2**63)) if minibatches and settings.shuffle
                else None)
        plan = _Plan([int(r) for r in rows], settings.batch_size, settings.shuffle, seed,
                     weighted=bool(w_keys))
        if reduction == "collective":
            trained, trained_opt, losses = _run_collective(
                client, keys, workers, collective_backend, settings.epochs, plan, timeout)
        else:
            trained, trained_opt, losses = _run_client(client, trial, keys, workers,
                                                       settings.epochs, plan)
    finally:
        client.run(_forget, run, workers=workers)

    # Only now does the model change: the weights, the optimizer and its state, the history.
    model.assign_trained_parameters([model.backend.asarray(np.require(p, requirements="CA"),
                                                           dtype=model.dtype)
                                     for p in trained])
    model.optimizer, model.l2, model.stop_training = trained_opt, settings.l2, False
    history = History()
    start = model.epochs_trained
    finite = [v for v in losses if math.isfinite(v)]
    for i, value in enumerate(finite):
        history.append(start + i, {"loss": value})
    model.epochs_trained = start + len(finite)
    model.history = history
    if len(finite) < len(losses):
        # Back at the weights the last finite loss was computed at (as Sequential.fit).
        model.epochs_trained = max(start, model.epochs_trained - 1)
        model.optimizer.reset()
        raise NonFiniteLossError(
            f"{_WHERE}: the training loss became {losses[-1]} at epoch "
            f"{start + len(finite)} (lr={model.optimizer.rate():g}); the weights were rolled "
            "back to their last values with a finite loss. Try a smaller learning rate (or "
            "scale the inputs).")
    return history


def _run_collective(client: Any, keys: dict[str, tuple[str, int]], workers: list[str],
                    backend: str, epochs: int, plan: _Plan, timeout: float) -> Any:
    from distributed.comm import get_address_host

    host = get_address_host(workers[0])
    port = client.submit(_free_port, workers=[workers[0]], allow_other_workers=False,
                         pure=False).result()
    tasks = [client.submit(_collective, keys[w], len(workers), host, port, backend, epochs,
                           plan, timeout, workers=[w], allow_other_workers=False, pure=False)
             for w in workers]
    return client.gather(tasks)[0]


def _run_client(client: Any, model: Any, keys: dict[str, tuple[str, int]],
                workers: list[str], epochs: int, plan: _Plan) -> Any:
    """The client's loop: send the weights of the last update (the workers start from the
    model's own), gather the sums, update `model` (a copy)."""
    first = [True]

    def summed(epoch: int, step: int) -> Any:
        sent = None if first[0] else client.scatter(
            [to_numpy(p) for p in model.trained_parameters()], workers=workers,
            broadcast=True, hash=False)
        first[0] = False
        parts = client.gather([client.submit(_client_round, keys[w], sent, plan, epoch, step,
                                             workers=[w], allow_other_workers=False,
                                             pure=False)
                               for w in workers])
        total = parts[0]
        for part in parts[1:]:
            total = total + part
        return model.backend.asarray(total)

    losses = _epochs(model, plan, epochs, summed)
    return [to_numpy(p) for p in model.trained_parameters()], model.optimizer, losses
