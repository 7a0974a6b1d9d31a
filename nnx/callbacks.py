"""Training history and the callback hook (early stopping is one callback)."""

from __future__ import annotations

from typing import Any

from nnx._validation import check_bool, check_instance, check_int, check_real
from nnx.errors import InvalidParameterError


class History:
    """Per-epoch figures of one ``fit``: ``history["loss"]``, ``history["val_accuracy"]``, ...

    ``loss`` is the objective ``fit`` minimises (mean data loss plus the L2 term), averaged over
    the epoch's batches; ``val_loss`` is the same objective on the validation data after the
    epoch. ``accuracy`` is measured on the batches as they were trained.
    """

    def __init__(self) -> None:
        self.epochs: list[int] = []
        self.history: dict[str, list[float]] = {}
        self.stopped_epoch: int | None = None
        self.best_epoch: int | None = None

    def append(self, epoch: int, logs: dict[str, float]) -> None:
        self.epochs.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(float(value))

    def extend_columns(self, epochs: list[int], keys: list[str],
                       columns: list[list[float]]) -> None:
        """Append many epochs at once: ``columns[j]`` holds figure ``keys[j]`` of every
        epoch in `epochs`, as Python floats."""
        self.epochs.extend(epochs)
        for key, column in zip(keys, columns):
            self.history.setdefault(key, []).extend(column)

    def __getitem__(self, key: str) -> list[float]:
        return self.history[key]

    def __contains__(self, key: str) -> bool:
        return key in self.history

    def __len__(self) -> int:
        return len(self.epochs)

    def keys(self):
        return self.history.keys()

    def to_dict(self) -> dict[str, Any]:
        return {"epochs": list(self.epochs), **{k: list(v) for k, v in self.history.items()}}

    def __repr__(self) -> str:
        last = {k: round(v[-1], 4) for k, v in self.history.items() if v}
        return f"History({len(self)} epochs, last={last})"


class Callback:
    """Hook into ``fit``. Set ``model.stop_training = True`` to stop after this epoch."""

    def check_figures(self, figures: list[str]) -> None:
        """Called before the first epoch with the names of the figures every epoch will log;
        raise here if the callback cannot work with them (nothing has been trained yet)."""

    def on_train_begin(self, model: Any) -> None:
        """Called once before the first epoch."""

    def on_epoch_end(self, model: Any, epoch: int, logs: dict[str, float]) -> None:
        """Called after every epoch with that epoch's figures (host floats)."""

    def on_train_end(self, model: Any) -> None:
        """Called once after the last epoch (also after early stopping)."""


class EarlyStopping(Callback):
    """Stop when `monitor` has not improved by `min_delta` for `patience` epochs.

    Parameters
    ----------
    monitor : str
        A key of the epoch logs; ``val_loss`` by default (``loss`` when there is no
        validation data). Names ending in ``accuracy`` are maximised, the rest minimised.
    restore_best_weights : bool
        At the end of training, put back the weights of the best epoch. Costs no copy: the
        optimizers never write into arrays a model has handed out.
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 10, min_delta: float = 0.0,
                 restore_best_weights: bool = True) -> None:
        where = "EarlyStopping"
        self.monitor = check_instance(monitor, "monitor", where, str, "a figure's name")
        self.patience = check_int(patience, "patience", where, low=0)
        self.min_delta = check_real(min_delta, "min_delta", where, low=0)
        self.restore_best_weights = check_bool(restore_best_weights, "restore_best_weights",
                                               where)
        # What this fit watches: `monitor`, or loss when val_loss is asked for and there is
        # no validation data. Kept apart from `monitor`, so a reused callback starts afresh.
        self.watching = monitor
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.best_params: list[Any] | None = None
        self.wait = 0

    def __repr__(self) -> str:
        return f"EarlyStopping(monitor={self.monitor!r}, patience={self.patience})"

    def check_figures(self, figures: list[str]) -> None:
        watching = self.monitor
        if watching not in figures and watching == "val_loss" and "loss" in figures:
            watching = "loss"
        if watching not in figures:
            raise InvalidParameterError(
                f"EarlyStopping: monitor={self.monitor!r} is not among the epoch's figures "
                f"{sorted(figures)}; pass validation_data or monitor one of those.")
        self.watching = watching

    def on_train_begin(self, model: Any) -> None:
        self.best, self.best_epoch, self.best_params, self.wait = None, None, None, 0

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.watching.endswith("accuracy"):
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def on_epoch_end(self, model: Any, epoch: int, logs: dict[str, float]) -> None:
        if self.watching not in logs:
            self.check_figures(list(logs))
        value = logs[self.watching]
        if self._improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            self.best_params = model.parameters()
        else:
            self.wait += 1
            if self.wait > self.patience:
                model.stop_training = True

    def on_train_end(self, model: Any) -> None:
        if self.restore_best_weights and self.best_params is not None:
            model.assign_parameters(self.best_params)
        if model.history is not None:
            model.history.best_epoch = self.best_epoch
