"""Training: the checks and preparation of ``fit``, and the epoch loop that runs it.

The loop keeps the epoch's figures on the device and brings them to the host once every
``sync_every`` epochs (each transfer waits for the device), rolls the weights back when the
loss becomes NaN or inf, and calls the callbacks and the progress display.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from nnx._validation import check_bool, check_instance, check_int, check_real
from nnx.backends import to_numpy
from nnx.callbacks import Callback, EarlyStopping, History
from nnx.errors import InvalidParameterError, NonFiniteLossError
from nnx.optimizers import Optimizer, get_optimizer, get_schedule


def row_slices(n: int, step: int) -> list[slice]:
    """Row ranges of at most `step` rows (in bounds, as array-api-strict requires)."""
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


# Shuffled rows are gathered a block of batches at a time, about this many bytes of X. One
# gather of scattered rows per batch cost far more inside the training loop than alone (on
# NumPy, 256k rows of 64 float32 in 256-row batches: 9% of the epoch, against 4% gathered by
# blocks of 16 batches); the batches are then contiguous slices of the block: the same rows
# in the same order.
GATHER_BYTES = 1 << 20


def minibatches(xp: Any, arrays: Sequence[Any], step: int, order: Any = None,
                complete: Callable[[list[Any]], list[Any]] | None = None):
    """Tuples of `step`-row batches of `arrays` (the same rows of each; None entries stay
    None; an array repeated is gathered once): slices in order, or with `order` (a device
    array of row indices) its rows in its order, gathered a block of batches (about
    GATHER_BYTES of the first array) at a time. `complete`, with `order`, is given each
    gathered block's parts and returns them with what was not gathered filled in (rows
    that are cheaper to make from the block than to gather)."""
    n = arrays[0].shape[0]

    def cut(parts: Sequence[Any], rows: slice) -> tuple[Any, ...]:
        return tuple(None if a is None else a[rows, ...] for a in parts)

    if order is None:
        for rows in row_slices(n, step):
            yield cut(arrays, rows)
        return
    first = arrays[0]
    row_bytes = math.prod(first.shape[1:]) * xp.finfo(first.dtype).bits // 8
    block_rows = step * max(1, GATHER_BYTES // max(1, step * row_bytes))
    for block in row_slices(n, block_rows):
        idx = order[block]
        gathered: dict[int, Any] = {}
        for a in arrays:
            if a is not None and id(a) not in gathered:
                gathered[id(a)] = xp.take(a, idx, axis=0)
        parts = [None if a is None else gathered[id(a)] for a in arrays]
        if complete is not None:
            parts = complete(parts)
        for rows in row_slices(block.stop - block.start, step):
            yield cut(parts, rows)


def make_optimizer(model: Any, optimizer: Any, lr: Any, schedule: Any,
                   where: str) -> tuple[Optimizer, dict[str, Any]]:
    """The optimizer ``fit`` will use, and the settings to give it once every argument and the
    data are checked (a fit that raises leaves the model's optimizer as it was)."""
    if lr is not None:
        lr = check_real(lr, "lr", where, low=0, low_open=True)
    if optimizer is None and model.optimizer is not None:
        changes: dict[str, Any] = {}
        if lr is not None:
            changes["lr"] = lr
        if schedule is not None:
            changes["schedule"] = get_schedule(schedule)
        return model.optimizer, changes
    return get_optimizer(optimizer, lr=lr, schedule=schedule), {}


def make_callbacks(callbacks: Any, early_stopping: Any, where: str) -> list[Callback]:
    if callbacks is None:
        callbacks = ()
    if not isinstance(callbacks, Iterable) or isinstance(callbacks, (str, Callback)):
        raise InvalidParameterError(f"{where}: callbacks must be a list of nnx.Callback; "
                                    f"received {callbacks!r}.")
    callbacks = list(callbacks)
    for i, cb in enumerate(callbacks):
        check_instance(cb, f"callbacks[{i}]", where, Callback, "an nnx.Callback")
    if isinstance(early_stopping, EarlyStopping):
        callbacks.append(early_stopping)
    elif early_stopping is not None:
        try:
            patience = check_int(early_stopping, "early_stopping", where, low=0)
        except InvalidParameterError:
            raise InvalidParameterError(
                f"{where}: early_stopping must be a patience (an integer >= 0) or an "
                f"nnx.EarlyStopping; received {early_stopping!r} "
                f"({type(early_stopping).__name__}).") from None
        callbacks.append(EarlyStopping(patience=patience))
    return callbacks


class FitSettings:
    """The arguments of ``fit``, each checked, before any data is looked at."""

    def __init__(self, model: Any, *, epochs: Any, lr: Any, l2: Any, batch_size: Any,
                 optimizer: Any, schedule: Any, shuffle: Any, validation_data: Any,
                 validation_split: Any, callbacks: Any, early_stopping: Any, verbose: Any,
                 sync_every: Any, where: str, compile: Any = False) -> None:
        self.epochs = check_int(epochs, "epochs", where, low=1)
        self.batch_size = check_int(batch_size, "batch_size", where, low=1, allow_none=True)
        self.sync_every = check_int(sync_every, "sync_every", where, low=1)
        self.l2 = model.l2 if l2 is None else check_real(l2, "l2", where, low=0)
        self.split = check_real(validation_split, "validation_split", where, low=0, high=1,
                                high_open=True)
        self.shuffle = check_bool(shuffle, "shuffle", where)
        self.verbose = None if verbose is None else check_bool(verbose, "verbose", where)
        self.compile = check_bool(compile, "compile", where)
        if self.split and validation_data is not None:
            raise InvalidParameterError(f"{where}: give validation_data or validation_split, "
                                        "not both.")
        if validation_data is not None and (not isinstance(validation_data, (tuple, list))
                                            or len(validation_data) not in (2, 3)):
            what = (f"{len(validation_data)} items" if isinstance(validation_data, (tuple, list))
                    else type(validation_data).__name__)
            raise InvalidParameterError(f"{where}: validation_data must be (X_val, y_val) or "
                                        f"(X_val, y_val, sample_weight_val); received {what}.")
        self.validation_data = validation_data
        self.optimizer, self.optimizer_changes = make_optimizer(model, optimizer, lr, schedule,
                                                                where)
        self.callbacks = make_callbacks(callbacks, early_stopping, where)


def split_validation(model: Any, data: tuple[Any, Any, Any], split: float, where: str,
                     weight: Any = None) -> tuple[tuple[Any, ...], tuple[Any, ...], Any]:
    """Hold out `split` of the encoded ``(X, Y, labels)`` (and of the weights), drawn with the
    model's generator: ``(train, val, train_weight)``, with the validation weights as a fourth
    member of ``val`` when there are weights."""
    X, Y, labels = data
    n = X.shape[0]
    n_val = int(round(split * n))
    if n_val < 1 or n_val >= n:
        raise InvalidParameterError(f"{where}: validation_split={split} of {n} samples leaves "
                                    "no validation or no training data.")
    order = model.backend.asarray(model.rng.permutation(n))
    xp = model.xp
    val_idx, train_idx = order[:n_val], order[n_val:]

    def take(idx: Any) -> tuple[Any, Any, Any]:
        return (xp.take(X, idx, axis=0), xp.take(Y, idx, axis=0),
                None if labels is None else xp.take(labels, idx, axis=0))

    if weight is None:
        return take(train_idx), take(val_idx), None
    return (take(train_idx), (*take(val_idx), xp.take(weight, val_idx, axis=0)),
            xp.take(weight, train_idx, axis=0))


@dataclasses.dataclass
class Window:
    """What ``sync_every`` epochs left on the host: the epochs, their figures (`rows`, in the
    order of `keys`), whether the weights are finite (None: not checked), ``start_of(j)``:
    the parameters and ``epochs_trained`` at the start of the window's epoch `j` (-1: of the
    epoch before the window), and ``next_before()``: ``start_of(len(epochs) - 1)`` without
    a reference to this window's predecessors."""

    epochs: list[int]
    keys: list[str]
    rows: np.ndarray  # float64, (len(epochs), len(keys))
    params_ok: bool | None
    start_of: Callable[[int], tuple[list[Any], int]]
    next_before: Callable[[], tuple[list[Any], int]]


class EpochSums:
    """An epoch's summed loss and correct count over its minibatches, kept on the device and
    reduced once, at the end: a batch only appends its mean loss and its size (or its
    weights' sum). Summing as it goes took four more device operations a batch, about a
    tenth of an epoch of a 64-256-10 network on NumPy with 256-row batches. The hits
    (:meth:`nnx.heads.Head.hits`) are taken for HIT_ROWS rows of outputs at once: one
    argmax and comparison for many small batches."""

    HIT_ROWS = 4096

    def __init__(self, model: Any) -> None:
        self.model = model
        self.losses: list[Any] = []
        self.sizes: list[Any] = []
        self.hits: list[Any] = []
        self._pending: list[tuple[Any, Any, Any]] = []  # (out, labels, weight) not yet hit
        self._pending_rows = 0

    def add(self, loss: Any, size: Any, out: Any = None, labels: Any = None,
            weight: Any = None) -> None:
        """One batch: its mean `loss` over `size` rows (an int, or a 0-d array: the batch's
        weights' sum), and, with `labels`, which of its outputs `out` are right."""
        self.losses.append(loss)
        self.sizes.append(size)
        if labels is not None:
            self._pending.append((out, labels, weight))
            self._pending_rows += out.shape[0]
            if self._pending_rows >= self.HIT_ROWS:
                self._hit()

    def _hit(self) -> None:
        xp, pending = self.model.xp, self._pending
        if len(pending) == 1:
            out, labels, weight = pending[0]
        else:
            out, labels, weight = (None if parts[0] is None else xp.concat(parts, axis=0)
                                   for parts in zip(*pending))
        self.hits.append(self.model.head.hits(xp, out, labels, weight))
        self._pending, self._pending_rows = [], 0

    def totals(self) -> tuple[Any, Any]:
        """``(sum of size * loss, correct count or None)``, 0-d arrays on the device."""
        model = self.model
        xp = model.xp
        if isinstance(self.sizes[0], int):
            sizes = model.backend.asarray(np.asarray(self.sizes), dtype=model.dtype)
        else:
            sizes = xp.stack(self.sizes)
        total = xp.sum(xp.stack(self.losses) * sizes)
        if self._pending:
            self._hit()
        correct = (model.head.count(xp, xp.concat(self.hits), model.dtype)
                   if self.hits else None)
        return total, correct


class Trainer:
    """The epoch loop of ``fit``: batches, figures kept on the device, periodic host sync,
    rollback on a non-finite loss, callbacks and progress."""

    def __init__(self, model: Any, X: Any, Y: Any, labels: Any, val: Any, epochs: int,
                 batch_size: int | None, shuffle: bool, callbacks: list[Callback],
                 verbose: bool | None, sync_every: int, weight: Any = None) -> None:
        self.model, self.X, self.Y, self.labels, self.val = model, X, Y, labels, val
        self.epochs, self.shuffle, self.callbacks = epochs, shuffle, callbacks
        self.sync_every = sync_every
        n = X.shape[0]
        self.batch = n if batch_size is None else min(batch_size, n)
        # Sample weights: a column (n, 1) on the device, or None. Each batch's data loss is
        # its weighted mean (the batch's weights divided by their sum), and the epoch's loss
        # the mean of the batches' losses weighted by their weights' sums.
        self.weight = weight
        total = float(model.xp.sum(weight)) if weight is not None else n
        self._full_weight = None if weight is None else weight / total
        # The figures that reach the host as counts (weighted counts with sample weights),
        # and what to divide them by.
        self.counted = {"accuracy": total}
        if val is not None:
            self.counted["val_accuracy"] = (val[0].shape[0] if len(val) < 4 or val[3] is None
                                            else float(model.xp.sum(val[3])))
        self.verbose = sys.stderr.isatty() if verbose is None else bool(verbose)

    def figure_names(self) -> list[str]:
        """The figures every epoch logs."""
        names = ["loss"] + (["accuracy"] if self.labels is not None else [])
        if self.val is not None:
            names += ["val_loss"] + (["val_accuracy"] if self.model.head.classifier else [])
        return names

    def _batches(self):
        """The epoch's batches ``(X, Y, labels, weight)``: slices of the data in order, or,
        shuffled, the rows of one permutation from the model's NumPy generator (identical on
        every backend), gathered by blocks (:func:`minibatches`): the same rows as permuting
        the whole data set first, without copying all of it every epoch."""
        model, n = self.model, self.X.shape[0]
        arrays = (self.X, self.Y, self.labels, self.weight)
        if self.batch >= n:
            yield arrays
            return
        order = model.rng.permutation(n) if self.shuffle else None
        yield from self._minibatches(arrays, self.batch, order)

    def _minibatches(self, arrays: tuple[Any, ...], step: int, order: np.ndarray | None):
        """:func:`minibatches` of `arrays` ``(X, Y, labels, weight)``, in `order` (host row
        indices) when given. Where the head makes ``Y`` from the labels (one-hot rows),
        shuffled batches gather only the labels and each gathered block makes its rows of
        ``Y``: gathering the scattered rows of ``Y`` too cost a third more than the rows of X
        and the labels alone (1M x 64 float32, 10 classes, NumPy: 0.090 s against 0.066 s
        an epoch)."""
        model = self.model
        if order is None:
            return minibatches(model.xp, arrays, step)
        order = model.backend.asarray(order)
        X, Y, labels, weight = arrays
        if labels is None or not model.head.makes_targets:
            return minibatches(model.xp, arrays, step, order)

        def complete(parts: list[Any]) -> list[Any]:
            parts[1] = model.head.targets(model.backend, model.dtype, parts[2])
            return parts

        return minibatches(model.xp, (X, None, labels, weight), step, order, complete)

    def _train_batch(self, sums: EpochSums, X: Any, Y: Any, labels: Any, weight: Any) -> None:
        """One minibatch step, its figures added to `sums`; with sample weights, the step on
        the batch's weighted mean."""
        model = self.model
        if weight is None:
            loss, out = model.train_step(X, Y)
            sums.add(loss, out.shape[0], out, labels)
            return
        xp = model.xp
        mass = xp.sum(weight)
        # A batch whose weights are all 0 contributes nothing (and divides by 1).
        loss, out = model.train_step(
            X, Y, weight=weight / xp.where(mass > 0, mass, xp.ones_like(mass)))
        sums.add(loss, mass, out, labels, weight)

    def _run_epoch(self) -> dict[str, Any]:
        model, n, step = self.model, self.X.shape[0], self.batch
        weighted = self.weight is not None
        if step >= n:  # full batch: one step, its own figures
            X, Y, labels, weight = next(self._batches())
            if weighted:
                total, out = model.train_step(X, Y, weight=self._full_weight)
            else:
                total, out = model.train_step(X, Y)
            correct = None if labels is None else model.head.correct(
                model.xp, out, labels, model.dtype, weight)
        else:
            sums = EpochSums(model)
            for batch in self._batches():
                self._train_batch(sums, *batch)
            total, correct = sums.totals()
            total = total / (self.counted["accuracy"] if weighted else n)
        figures = {"loss": total}
        if correct is not None:
            figures["accuracy"] = correct  # a count: _flush divides it on the host
        if self.val is not None:
            for key, value in model.evaluate_encoded(
                    *self.val[:3], weight=self.val[3] if len(self.val) > 3 else None).items():
                figures["val_" + key] = value
        return figures

    def _progress(self) -> Any:
        if not self.verbose:
            return None
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return _PlainProgress(self.epochs)
        return tqdm(total=self.epochs, unit="epoch", desc="fit", leave=True)

    def run(self) -> History:
        model = self.model
        history = model.history
        bar = self._progress()
        # Parameter arrays are never written in place, so holding them is a free snapshot.
        # before(): the parameters and epoch at the start of the epoch preceding the window
        # (the fit's initial parameters for the first window).
        first = (model.parameters(), model.epochs_trained)

        def before() -> tuple[list[Any], int]:
            return first

        for cb in self.callbacks:
            cb.check_figures(self.figure_names())
        for cb in self.callbacks:
            cb.on_train_begin(model)
        # A diverging run is caught below with a clear error: NumPy's own overflow warnings
        # (numpy and array_api_strict compute with NumPy) would only repeat it, once per op.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            try:
                done = 0
                while done < self.epochs:
                    k = min(self.sync_every, self.epochs - done)
                    done += k
                    window = self._run_window(k, before, done == self.epochs)
                    self._record(window, bar)
                    before = window.next_before
                    if model.stop_training:
                        history.stopped_epoch = window.epochs[-1]
                        break
            finally:
                if bar is not None:
                    bar.close()
        for cb in self.callbacks:
            cb.on_train_end(model)
        return history

    def _run_window(self, k: int, before: Callable[[], tuple[list[Any], int]],
                    last: bool) -> Window:
        """Train `k` epochs and bring their figures to the host in one transfer (with the
        weights' finiteness when `last`)."""
        model = self.model
        starts: list[list[Any]] = []
        pending: list[tuple[int, dict[str, Any]]] = []
        # An interrupt (Ctrl-C) inside the window puts the weights, the optimizer's state and
        # the epoch count back to the window's start, so that they and the history agree
        # (the optimizer replaces its arrays, never writes into them: a shallow copy of its
        # attributes is a snapshot).
        window_start = (model.parameters(), model.epochs_trained,
                        dict(vars(model.optimizer)))
        try:
            for _ in range(k):
                epoch = model.epochs_trained
                model.optimizer.epoch = epoch
                starts.append(model.parameters())
                pending.append((epoch, self._run_epoch()))
                model.epochs_trained += 1
        except KeyboardInterrupt:
            params, epochs_trained, state = window_start
            model.assign_parameters(params)
            model.epochs_trained = epochs_trained
            vars(model.optimizer).clear()
            vars(model.optimizer).update(state)
            raise
        keys, rows, params_ok = self._to_host(pending, last)
        final = (starts[-1], pending[-1][0])

        def start_of(j: int) -> tuple[list[Any], int]:
            return (starts[j], pending[j][0]) if j >= 0 else before()

        return Window([epoch for epoch, _ in pending], keys, rows, params_ok, start_of,
                      lambda: final)

    def _to_host(self, pending, check_params: bool
                 ) -> tuple[list[str], list[list[float]], bool | None]:
        """One transfer of the pending epochs' figures (and of whether the weights are
        finite, with `check_params`)."""
        model = self.model
        xp = model.xp
        keys = list(pending[0][1])
        values = [figures[key] for _, figures in pending for key in keys]
        if check_params:
            finite = [xp.all(xp.isfinite(p)) for p in model.parameters()]
            values.append(xp.astype(xp.all(xp.stack(finite)), model.dtype))
        if model.backend.is_accelerator:
            # One transfer for all the figures: each separate one would wait for the device.
            stacked = xp.stack([xp.astype(v, model.dtype) for v in values])
            host = to_numpy(stacked).astype(np.float64).tolist()
        else:
            host = [float(v) for v in values]
        rows = np.asarray(host[:len(pending) * len(keys)], dtype=np.float64)
        return keys, rows.reshape(len(pending), len(keys)), (
            (host[-1] == 1) if check_params else None)

    def _record(self, window: Window, bar) -> None:
        """Log a window's figures, call the callbacks; roll back on a non-finite loss."""
        model = self.model
        if not self.callbacks and bar is None and len(window.epochs) > 1:
            # Nothing to call per epoch: the window's figures go in at once, by columns (a
            # compiled loop of sync_every epochs would otherwise spend microseconds per
            # epoch here).
            columns = window.rows.T.copy()
            for j, key in enumerate(window.keys):
                if key in self.counted:
                    columns[j] /= self.counted[key]
            if np.isfinite(columns[window.keys.index("loss")]).all() \
                    and window.params_ok is not False:
                model.history.extend_columns(window.epochs, window.keys, columns.tolist())
                return
        rows = window.rows.tolist()
        for i, epoch in enumerate(window.epochs):
            logs = dict(zip(window.keys, rows[i]))
            for key, n in self.counted.items():
                if key in logs:
                    logs[key] /= n
            if not math.isfinite(logs["loss"]):
                # Roll back to the weights that gave the last finite loss.
                params, start = window.start_of(i - 1)
                self._roll_back(params, start,
                                f"the training loss became {logs['loss']} at epoch {epoch}")
            model.history.append(epoch, logs)
            for cb in self.callbacks:
                cb.on_epoch_end(model, epoch, logs)
            if bar is not None:
                # The figures first: update() draws the bar, and it should show this epoch's.
                bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items()}, refresh=False)
                bar.update(1)
        if window.params_ok is False:
            params, start = window.start_of(len(window.epochs) - 1)
            self._roll_back(params, start, f"the update of epoch {window.epochs[-1]} made "
                            "the weights non-finite")

    def _restore(self, params: list[Any], epochs_trained: int) -> None:
        """Put the weights and the epoch count back, and forget the optimizer's state."""
        model = self.model
        model.assign_parameters(params)
        model.epochs_trained = epochs_trained
        if model.optimizer is not None:
            model.optimizer.reset()

    def _roll_back(self, params: list[Any], epochs_trained: int, what: str) -> None:
        model = self.model
        self._restore(params, epochs_trained)
        # Not finite at the weights the training started from, before any update: no
        # learning rate is to blame, the data are (values that overflow the model's dtype).
        initial = model.evaluate_encoded(self.X, self.Y, self.labels,
                                         weight=self.weight)["loss"]
        if not math.isfinite(float(initial)):
            raise NonFiniteLossError(
                f"Sequential.fit: {what}, but the loss is already {float(initial)} at the "
                "weights the fit started from, before any update: the data overflow in "
                f"{model.dtype_name} (targets or inputs too large; the largest "
                f"{model.dtype_name} is {float(np.finfo(model.dtype_name).max):.3g} and the "
                "loss squares them). Scale the targets and inputs, or use dtype='float64'; "
                "the weights are unchanged.")
        raise NonFiniteLossError(
            f"Sequential.fit: {what} (lr={model.optimizer.rate():g}); the weights were rolled "
            "back to their last values with a finite loss. Try a smaller learning rate (or "
            "scale the inputs)."
        )


class _PlainProgress:
    """Without tqdm: a line every tenth of the run."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.every = total, 0, max(1, total // 10)
        self.postfix: dict[str, str] = {}

    def update(self, n: int) -> None:
        self.done += n
        if self.done % self.every == 0 or self.done == self.total:
            figures = " ".join(f"{k}={v}" for k, v in self.postfix.items())
            print(f"epoch {self.done}/{self.total} {figures}", file=sys.stderr)

    def set_postfix(self, postfix: dict[str, str], refresh: bool = False) -> None:
        self.postfix = postfix

    def close(self) -> None:
        pass
