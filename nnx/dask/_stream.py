"""``fit`` streaming the row blocks of a dask array: one block in memory at a time (and the
next, read in a background thread while the current one trains).

The epoch loop is the core's :class:`~nnx.training.Trainer` (windows, history, rollback on a
non-finite loss, callbacks, early stopping, progress); only the epoch itself differs. Each
epoch visits the blocks in an order drawn from the model's generator, and each block's rows
in an order drawn from it too, so one seed gives one run.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dask
import dask.array as da
import numpy as np

from nnx._data import check_weight
from nnx._validation import check_bool
from nnx.callbacks import History
from nnx.dask._predict import as_rows, as_targets, as_weights, check_model, evaluate
from nnx.errors import InvalidDataError, InvalidParameterError, NonFiniteLossError
from nnx.training import EpochSums, FitSettings, Trainer

_WHERE = "nnx.dask.fit"


class _Blocks:
    """The row blocks of `X`, `y` (and the sample weights `w`), read (``dask.compute``) and
    encoded for the model: ``(X, Y, labels, weight)`` on its device, `weight` a column
    ``(rows, 1)`` or None."""

    def __init__(self, model: Any, X: da.Array, y: da.Array, w: da.Array | None) -> None:
        self.model = model
        parts = [X.to_delayed().ravel(), y.to_delayed().ravel()]
        if w is not None:
            parts.append(w.to_delayed().ravel())
        self.parts = list(zip(*parts))
        self.rows = X.chunks[0]

    def __len__(self) -> int:
        return len(self.parts)

    def load(self, i: int) -> tuple[Any, Any, Any, Any]:
        model = self.model
        where = f"{_WHERE} (row block {i})"
        Xc, yc, *wc = dask.compute(*self.parts[i])
        Xd, Y, labels = encoded(model, Xc, yc, where)
        weight = weight_column(model, wc[0], where) if wc else None
        return Xd, Y, labels, weight


def weight_column(model: Any, w: Any, where: str) -> Any:
    """A block's sample weights as a column ``(rows, 1)`` in the model's dtype on its device,
    checked there (the blocks may be CuPy's): finite and >= 0."""
    xp = model.xp
    with np.errstate(over="ignore"):
        weight = xp.reshape(model.backend.asarray(w, dtype=model.dtype), (-1, 1))
    if not bool(xp.all(xp.isfinite(weight))):
        raise InvalidDataError(f"{where}: sample_weight must be finite numbers >= 0 "
                               f"(in {model.dtype_name}); received NaN or inf.")
    if bool(xp.any(weight < 0)):
        raise InvalidDataError(f"{where}: sample_weight must be finite numbers >= 0; "
                               f"received {float(xp.min(weight)):g}.")
    return weight


def encoded(model: Any, X: Any, y: Any, where: str) -> tuple[Any, Any, Any]:
    """``(X, Y, labels)`` as ``Sequential.fit`` prepares them: `X` checked on the model's
    device, `Y` encoded for the loss, and what ``head.correct`` counts against (class
    positions for a softmax output, the 0/1 columns for sigmoid, None for regression), taken
    from the encoding (not recovered from one-hot rows: one argmax a block fewer)."""
    Xd = model._as_X(X, where)
    Y, labels = model._as_y(y, Xd.shape[0], where)
    return Xd, Y, labels


class StreamTrainer(Trainer):
    """:class:`~nnx.training.Trainer` whose epoch streams row blocks.

    ``batch_size=None`` is full-batch gradient descent as in ``Sequential.fit``: one update
    per epoch, from the blocks' gradients combined as ``sum_c n_c g_c / n``.
    """

    def __init__(self, model: Any, blocks: _Blocks, n: int, val: Any, val_lazy: Any,
                 epochs: int, batch_size: int | None, shuffle: bool, callbacks: list[Any],
                 verbose: bool | None, sync_every: int, prefetch: bool,
                 total_weight: float | None = None) -> None:
        labels = True if model.head.classifier else None  # only "is there accuracy" is read
        super().__init__(model, _Rows(n), None, labels, val, epochs, batch_size, shuffle,
                         callbacks, verbose, sync_every)
        self.full_batch = batch_size is None
        self.blocks, self.val_lazy = blocks, val_lazy
        # What the epoch's sums are divided by: the rows, or the weights' sum.
        self.n = n if total_weight is None else total_weight
        self.counted["accuracy"] = self.n
        if val_lazy is not None:
            Xv, _, _, mass = val_lazy
            self.counted["val_accuracy"] = Xv.shape[0] if mass is None else mass
        self.prefetch = prefetch
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="nnx-dask-prefetch")
        self._ahead: tuple[int, Any] | None = None  # (block, future) read in the background
        self._next_order: np.ndarray | None = None
        self._epochs_started = 0

    def figure_names(self) -> list[str]:
        names = super().figure_names()
        if self.val_lazy is not None:
            names += ["val_loss"] + (["val_accuracy"] if self.model.head.classifier else [])
        return names

    # -- reading ahead ------------------------------------------------------------------------
    def _start(self, i: int) -> None:
        if self.prefetch and (self._ahead is None or self._ahead[0] != i):
            self._ahead = (i, self._pool.submit(self.blocks.load, i))

    def _take(self, i: int) -> tuple[Any, Any, Any]:
        if self._ahead is not None and self._ahead[0] == i:
            future, self._ahead = self._ahead[1], None
            return future.result()
        return self.blocks.load(i)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._ahead = None

    # -- the epoch ------------------------------------------------------------------------------
    def _order(self) -> np.ndarray:
        k = len(self.blocks)
        return self.model.rng.permutation(k) if self.shuffle else np.arange(k)

    def _run_epoch(self) -> dict[str, Any]:
        model = self.model
        order = self._next_order if self._next_order is not None else self._order()
        self._next_order = None
        self._epochs_started += 1
        more = self._epochs_started < self.epochs
        self._start(int(order[0]))
        total = correct = None
        sums: list[Any] | None = None
        batches = None if self.full_batch else EpochSums(model)
        for j, i in enumerate(order):
            Xd, Y, labels, weight = self._take(int(i))
            n_c = Xd.shape[0]
            perm = model.rng.permutation(n_c) if self.shuffle and not self.full_batch else None
            # The next block is read while this one trains (the next epoch's first block,
            # in the order drawn now, at the end of an epoch: the generator's draws stay in
            # the order of a run split into several fits).
            if j + 1 < len(order):
                self._start(int(order[j + 1]))
            elif more:
                self._next_order = self._order()
                self._start(int(self._next_order[0]))
            if self.full_batch:
                if weight is not None and not bool(model.xp.any(weight > 0)):
                    continue  # a block whose weights are all 0 adds nothing
                loss, hit, sums = self._accumulate(Xd, Y, labels, weight, sums)
                total = loss if total is None else total + loss
                if hit is not None:
                    correct = hit if correct is None else correct + hit
            else:
                self._train_block(Xd, Y, labels, weight, perm, batches)
        if batches is not None:
            total, correct = batches.totals()
        if self.full_batch:
            # The objective at the weights before the update, as a full-batch fit reports it.
            total = total / self.n + l2_term(model)
            model.apply_gradients([g / self.n for g in sums])
        else:
            total = total / self.n
        figures = {"loss": total}
        if correct is not None:
            figures["accuracy"] = correct  # a count: the host divides it
        figures.update(self._validation())
        return figures

    def _train_block(self, Xd: Any, Y: Any, labels: Any, weight: Any, perm: Any,
                     sums: EpochSums) -> None:
        for batch in self._minibatches((Xd, Y, labels, weight), min(self.batch, Xd.shape[0]),
                                       perm):
            self._train_batch(sums, *batch)

    def _accumulate(self, Xd: Any, Y: Any, labels: Any, weight: Any, sums: list[Any] | None
                    ) -> tuple[Any, Any, list[Any]]:
        model = self.model
        # The block's share: its rows, or its weights' sum.
        n_c = Xd.shape[0] if weight is None else model.xp.sum(weight)
        hit = None
        if labels is not None:
            hit = model.evaluate_encoded(Xd, Y, labels, weight=weight)["accuracy"]
        loss, grads = model.gradients(Xd, Y, weight, encoded=True)
        scaled = [g * n_c for g in grads]
        sums = scaled if sums is None else [s + g for s, g in zip(sums, scaled)]
        return loss * n_c, hit, sums

    def _validation(self) -> dict[str, Any]:
        model = self.model
        if self.val is not None:
            Xv, Yv, labels, weight = self.val
            return {"val_" + key: value for key, value in
                    model.evaluate_encoded(Xv, Yv, labels, weight=weight).items()}
        if self.val_lazy is None:
            return {}
        Xv, yv, wv, mass = self.val_lazy
        figures = evaluate(model, Xv, yv, sample_weight=wv)
        xp = model.xp
        out = {"val_loss": xp.asarray(figures["loss"], dtype=model.dtype,
                                      device=model.backend.device)}
        if "accuracy" in figures:
            # A count (a weighted count with weights), as the host divides it.
            count = (round(figures["accuracy"] * Xv.shape[0]) if mass is None
                     else figures["accuracy"] * mass)
            out["val_accuracy"] = xp.asarray(count, dtype=model.dtype,
                                             device=model.backend.device)
        return out

    def _roll_back(self, params: list[Any], epochs_trained: int, what: str) -> None:
        model = self.model
        self._restore(params, epochs_trained)
        # Already not finite at the starting weights (checked on the first block): the data
        # overflow the model's dtype; no learning rate is to blame.
        Xd, Y, labels, weight = self.blocks.load(0)
        initial = float(model.evaluate_encoded(Xd, Y, labels, weight=weight)["loss"])
        if not math.isfinite(initial):
            raise NonFiniteLossError(
                f"{_WHERE}: {what}, but the loss is already {initial} on the first row block "
                f"at the weights the fit started from: the data overflow in "
                f"{model.dtype_name}. Scale the targets and inputs, or use dtype='float64'; "
                "the weights are unchanged.")
        raise NonFiniteLossError(
            f"{_WHERE}: {what} (lr={model.optimizer.rate():g}); the weights were rolled back "
            "to their last values with a finite loss. Try a smaller learning rate (or scale "
            "the inputs).")


def l2_term(model: Any) -> Any:
    """``(l2 / 2) * sum ||W||^2`` over the weights L2 applies to, as a 0-d device array (0
    without L2)."""
    if not model.l2:
        return 0
    total = 0
    for layer in model.layers:
        for p, decays in zip(layer.params().values(), layer.decay().values()):
            if decays:
                w = model.xp.reshape(p, (-1,))
                total = total + w @ w
    return (model.l2 / 2) * total


def dask_weights(sample_weight: Any, X: da.Array, where: str, name: str = "sample_weight"
                 ) -> tuple[da.Array | None, float | None]:
    """The weights as a dask array of `X`'s row blocks and their sum (read once, here)."""
    if sample_weight is None:
        return None, None
    w = as_weights(sample_weight, X, where, name)
    with np.errstate(invalid="ignore", over="ignore"):
        total = float(w.astype(np.float64).sum().compute())
    if not math.isfinite(total) or total <= 0:
        raise InvalidDataError(f"{where}: {name} must be finite numbers >= 0, not all 0; "
                               f"their sum is {total!r}.")
    return w, total


class _Rows:
    """Stands in for the data in the base Trainer, which reads only its row count."""

    def __init__(self, n: int) -> None:
        self.shape = (n,)


def _validation_data(model: Any, validation_data: Any) -> tuple[Any, Any]:
    """``((X, Y, labels, weight column or None), None)`` encoded in memory, or ``(None,
    (X, y, weights or None, their sum or None))`` as dask arrays."""
    if validation_data is None:
        return None, None
    if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
        raise InvalidParameterError(
            f"{_WHERE}: validation_data must be (X_val, y_val) or (X_val, y_val, "
            f"sample_weight_val); received {type(validation_data).__name__}"
            + (f" of {len(validation_data)} items." if isinstance(validation_data, (tuple, list))
               else "."))
    Xv, yv, wv = (*validation_data, None)[:3]
    name = "validation_data[2]"
    if isinstance(Xv, da.Array):
        Xv = as_rows(Xv, _WHERE, "validation_data[0]", model.n_in)
        yv = as_targets(yv, Xv, _WHERE, "validation_data[1]")
        return None, (Xv, yv, *dask_weights(wv, Xv, _WHERE, name))
    Xd, Y, labels = encoded(model, Xv, yv, _WHERE)
    weight = None if wv is None else check_weight(model.backend, model.dtype, model.dtype_name,
                                                  wv, Xd.shape[0], _WHERE, name)
    return (Xd, Y, labels, weight), None


def fit(model: Any, X: Any, y: Any, *, sample_weight: Any = None, epochs: int = 1,
        lr: float | None = None,
        l2: float | None = None, batch_size: int | None = 32, optimizer: Any = None,
        schedule: Any = None, shuffle: bool = True, validation_data: Any = None,
        callbacks: Any = (), early_stopping: Any = None, verbose: bool | None = None,
        sync_every: int = 1, prefetch: bool = True) -> History:
    """Train `model` on the row blocks of the dask arrays `X`, `y`, one block in memory at a
    time; continues from the model's weights and optimizer state, as ``Sequential.fit``.

    Parameters
    ----------
    model : nnx.Sequential
    X : dask.array.Array, shape (n_samples, n_in)
        Chunked by rows (:func:`nnx.dask.read_npy` reads one from a file); a block should fit
        in memory twice over (the next one is read while the current one trains).
    y : dask.array.Array or array, shape (n_samples,) or (n_samples, n_out)
        Rechunked to the row blocks of `X`.
    sample_weight : dask.array.Array or array, shape (n_samples,), optional
        Each row's weight, as ``Sequential.fit``'s: a batch's loss is its weighted mean, the
        epoch's the weighted mean over all rows (a block of 0 weights adds nothing; the sum
        is computed once, before training, and must be > 0).
    epochs, lr, l2, optimizer, schedule, callbacks, early_stopping, verbose, sync_every
        As ``Sequential.fit``.
    batch_size : int or None
        Rows per update, within a block (a block's last batch may be short). None: full
        batch, one update per epoch from the gradient of the whole data set.
    shuffle : bool
        Visit the blocks in a new order each epoch and each block's rows in a new order, both
        drawn from ``model.rng``.
    validation_data : (X_val, y_val) or (X_val, y_val, sample_weight_val), optional
        In memory, or dask arrays (then evaluated by blocks every epoch); with weights, the
        validation figures are their weighted means, as ``Sequential.fit``'s.
    prefetch : bool
        Read the next block in a background thread while the current one trains.

    Returns
    -------
    History
    """
    check_model(model, _WHERE)
    settings = FitSettings(
        model, epochs=epochs, lr=lr, l2=l2, batch_size=batch_size, optimizer=optimizer,
        schedule=schedule, shuffle=shuffle, validation_data=validation_data,
        validation_split=0.0, callbacks=callbacks, early_stopping=early_stopping,
        verbose=verbose, sync_every=sync_every, where=_WHERE)
    prefetch = check_bool(prefetch, "prefetch", _WHERE)
    X = as_rows(X, _WHERE, n_in=model.n_in)
    y = as_targets(y, X, _WHERE)
    if X.shape[0] == 0:
        raise InvalidDataError(f"{_WHERE}: X has no rows.")
    w, total_weight = dask_weights(sample_weight, X, _WHERE)
    if any(getattr(layer, "adapted", True) is False for layer in model.layers):
        raise InvalidParameterError(
            f"{_WHERE}: the model has a layer that adapts to its data (Standardize) and has "
            "not been adapted; adapt it first (layer.adapt(sample), or set its mean and "
            "scale from X.mean(axis=0) and X.std(axis=0) computed with dask).")
    val, val_lazy = _validation_data(model, validation_data)
    sync = 1 if settings.callbacks or validation_data is not None else settings.sync_every
    trainer = StreamTrainer(model, _Blocks(model, X, y, w), X.shape[0], val, val_lazy,
                            settings.epochs, settings.batch_size, settings.shuffle,
                            settings.callbacks, settings.verbose, sync, prefetch, total_weight)
    before = (model.parameters(), model.epochs_trained, model.optimizer,
              None if model.optimizer is None else dict(vars(model.optimizer)),
              model.history, model.l2)
    opt = settings.optimizer
    for name, value in settings.optimizer_changes.items():
        setattr(opt, name, value)
    model.optimizer, model.l2, model.stop_training = opt, settings.l2, False
    model.history = History()
    try:
        return trainer.run()
    except InvalidDataError:
        # A block that fails its checks mid-run: the model goes back to where it was.
        params, epochs_trained, optimizer, state, history, l2 = before
        model.assign_parameters(params)
        model.epochs_trained, model.optimizer, model.history, model.l2 = (
            epochs_trained, optimizer, history, l2)
        if optimizer is not None:
            vars(optimizer).clear()
            vars(optimizer).update(state)
        raise
    finally:
        trainer.close()
