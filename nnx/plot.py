"""Pictures of a model: its decision boundary on 2-D data, its loss curves, and the tutorial's
grid of decision boundaries for growing hidden layers.

matplotlib is optional (``pip install 'nnx-arrays[plot]'``) and imported only when a function
here runs. Models on any backend and device work: their outputs come back to the host through
:func:`nnx.to_numpy`, the one conversion every device allows.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from nnx.backends import to_numpy
from nnx.callbacks import History
from nnx.errors import InvalidDataError, InvalidParameterError, MissingDependencyError

#: Class colours (matplotlib's tab10, whose first two are the tutorials' blue and orange).
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
          "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def _matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise MissingDependencyError(
            "nnx.plot needs matplotlib; install it with pip install 'nnx-arrays[plot]'."
        ) from None
    return matplotlib


def _pyplot() -> Any:
    """pyplot, on the Agg backend where there is no display to show windows on."""
    matplotlib = _matplotlib()
    headless = sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    if headless and "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _class_colors(k: int) -> list[str]:
    return [COLORS[i % len(COLORS)] for i in range(k)]


def _host_2d(X: Any, where: str) -> np.ndarray:
    X = np.asarray(to_numpy(X), dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != 2 or X.shape[0] == 0:
        raise InvalidDataError(f"{where}: X must have shape (n_samples, 2) with n_samples >= 1 "
                               f"(the "
                         f"picture is of the input plane); received shape {X.shape}.")
    if not np.all(np.isfinite(X)):
        raise InvalidDataError(f"{where}: X contains NaN or inf; remove those rows first.")
    return X


def _host_labels(y: Any, n: int, where: str) -> np.ndarray | None:
    if y is None:
        return None
    y = np.asarray(to_numpy(y))
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.shape != (n,):
        raise InvalidDataError(f"{where}: y must have shape ({n},) (one label per row of X); "
                         f"received shape {y.shape}.")
    if y.dtype.kind not in "biuf" or (y.dtype.kind == "f" and not np.all(y == np.round(y))):
        raise InvalidDataError(f"{where}: y must hold integer class labels; received dtype "
                               f"{y.dtype}.")
    return y.astype(np.int64)


def _grid(X: np.ndarray, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """A `resolution` x `resolution` grid over X's range plus a tenth of it on every side."""
    axes = []
    for column in X.T:
        low, high = float(column.min()), float(column.max())
        pad = 0.1 * (high - low) or 0.5
        axes.append(np.linspace(low - pad, high + pad, resolution))
    return np.meshgrid(*axes)


def decision_boundary(model: Any, X: Any, y: Any = None, ax: Any = None, resolution: int = 200,
                      title: str | None = None) -> Any:
    """Colour the input plane by the class `model` predicts there and scatter the data on it.

    Parameters
    ----------
    model : Sequential
        A classifier with 2 inputs (softmax output, or one sigmoid unit), on any backend.
    X : array, shape (n_samples, 2)
    y : array, shape (n_samples,), optional
        Integer labels, used to colour the points (grey without them).
    ax : matplotlib Axes, optional
        Where to draw; default: a new figure.
    resolution : int
        Grid points per axis (``resolution ** 2`` predictions, made in batches).
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
        The figure drawn on (``ax.figure`` when `ax` is given).
    """
    where = "nnx.plot.decision_boundary"
    _matplotlib()
    X = _host_2d(X, where)
    y = _host_labels(y, X.shape[0], where)
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) \
            or resolution < 2:
        raise InvalidParameterError(f"{where}: resolution must be an integer >= 2; received "
                         f"resolution={resolution!r}.")
    n_in = getattr(model, "n_in", None)
    if n_in != 2:
        raise InvalidParameterError(f"{where}: the model must take 2 inputs to be drawn on the "
                                    f"plane; it "
                         f"takes {n_in}.")
    xx, yy = _grid(X, int(resolution))
    grid = np.stack([xx.ravel(), yy.ravel()], axis=1)
    probe = to_numpy(model.predict(grid[:1]))
    if probe.ndim != 1:
        raise InvalidParameterError(f"{where}: the model must be a classifier with one label "
                                    f"per sample "
                         "(a softmax output, or one sigmoid unit); its predictions have shape "
                         f"{probe.shape[1:]} per sample.")
    proba = np.asarray(to_numpy(model.predict_proba(grid)), dtype=np.float64)
    if proba.shape[1] == 1:
        proba = np.concatenate([1 - proba, proba], axis=1)
    k = max(proba.shape[1], 0 if y is None else int(y.max()) + 1)
    colors = _class_colors(k)
    if ax is None:
        _, ax = _pyplot().subplots(figsize=(6, 4.8), layout="constrained")
    # Each class's region is where its probability beats every other class's: contours of
    # that margin are smooth, where contours of the predicted labels would be staircases.
    for i in range(proba.shape[1]):
        margin = (proba[:, i] - np.max(np.delete(proba, i, axis=1), axis=1)).reshape(xx.shape)
        if margin.max() <= 0:
            continue
        if margin.min() >= 0:
            ax.contourf(xx, yy, margin, levels=[margin.min() - 1, margin.max() + 1],
                        colors=[colors[i]], alpha=0.3)
            continue
        ax.contourf(xx, yy, margin, levels=[0, margin.max() + 1], colors=[colors[i]],
                    alpha=0.3)
        ax.contour(xx, yy, margin, levels=[0], colors="0.25", linewidths=0.9)
    from matplotlib.colors import ListedColormap

    cmap = ListedColormap(colors)
    if y is None:
        ax.scatter(X[:, 0], X[:, 1], s=18, c="0.3", edgecolors="white", linewidths=0.5)
    else:
        ax.scatter(X[:, 0], X[:, 1], c=y, cmap=cmap, vmin=-0.5, vmax=k - 0.5, s=20,
                   edgecolors="white", linewidths=0.5)
    ax.set_xlim(xx[0, 0], xx[0, -1])
    ax.set_ylim(yy[0, 0], yy[-1, 0])
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    if title is not None:
        ax.set_title(title)
    return ax.figure


def _curves(history: Any) -> tuple[list[int], dict[str, list[float]], int | None]:
    where = "nnx.plot.history"
    if isinstance(history, History):
        return [e + 1 for e in history.epochs], dict(history.history), history.best_epoch
    if isinstance(history, dict):
        figures = {k: list(v) for k, v in history.items() if k != "epochs"}
        n = max((len(v) for v in figures.values()), default=0)
        epochs = [e + 1 for e in history["epochs"]] if "epochs" in history \
            else list(range(1, n + 1))
        return epochs, figures, None
    raise InvalidParameterError(f"{where}: history must be an nnx.History (what fit returns) or "
                                f"a dict of "
                    f"lists; received {type(history).__name__}.")


def history(history: Any, ax: Any = None) -> Any:
    """Training and validation loss per epoch, and accuracy beside it where it was recorded.

    Parameters
    ----------
    history : History or dict
        What ``model.fit`` returns (or its ``to_dict()``).
    ax : matplotlib Axes or a pair of Axes, optional
        Default: a new figure, with a second panel for accuracy if there is any. One Axes: the
        loss on it and the accuracy on a twin axis at the right. Two Axes: loss, accuracy.

    Returns
    -------
    matplotlib.figure.Figure
    """
    epochs, figures, best = _curves(history)
    if "loss" not in figures or not figures["loss"]:
        raise InvalidDataError("nnx.plot.history: the history holds no 'loss' figures; was fit run "
                         "for at least one epoch?")
    _matplotlib()
    with_accuracy = "accuracy" in figures or "val_accuracy" in figures
    twin = False
    if ax is None:
        width = 11 if with_accuracy else 6
        _, axes = _pyplot().subplots(1, 2 if with_accuracy else 1, figsize=(width, 4.2),
                                     layout="constrained", squeeze=False)
        loss_ax, acc_ax = axes[0, 0], (axes[0, 1] if with_accuracy else None)
    elif isinstance(ax, (list, tuple, np.ndarray)):
        if len(ax) != 2:
            raise InvalidParameterError("nnx.plot.history: ax must be one Axes or a pair (loss, "
                             f"accuracy); received {len(ax)} axes.")
        loss_ax, acc_ax = ax[0], (ax[1] if with_accuracy else None)
        if not with_accuracy:
            ax[1].set_axis_off()
    else:
        loss_ax, acc_ax, twin = ax, (ax.twinx() if with_accuracy else None), with_accuracy
    style = {"": ("C0", "-", "training"), "val_": ("C1", "-", "validation")}
    for prefix, (color, line, name) in style.items():
        if prefix + "loss" in figures:
            loss_ax.plot(epochs[:len(figures[prefix + "loss"])], figures[prefix + "loss"],
                         color=color, linestyle=line, label=f"{name} loss")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss")
    loss_ax.set_title("loss and accuracy" if twin else "loss")
    if acc_ax is not None:
        for prefix, (color, line, name) in style.items():
            if prefix + "accuracy" in figures:
                acc_ax.plot(epochs[:len(figures[prefix + "accuracy"])],
                            figures[prefix + "accuracy"], color=color,
                            linestyle=":" if twin else line, label=f"{name} accuracy")
        acc_ax.set_ylabel("accuracy")
        top = max(max(v) for k, v in figures.items() if k.endswith("accuracy") and v)
        acc_ax.set_ylim(top=min(1.0, top) + 0.02)
        if not twin:
            acc_ax.set_xlabel("epoch")
            acc_ax.set_title("accuracy")
    for axis in (loss_ax, acc_ax):
        if axis is None or (twin and axis is acc_ax):
            continue
        if best is not None:
            axis.axvline(best + 1, color="0.4", linestyle="--", linewidth=0.8,
                         label=f"best epoch ({best + 1})")
        axis.grid(True, alpha=0.3)
    if twin:
        lines = loss_ax.get_lines() + acc_ax.get_lines()
        # Below the axes: no place inside is sure to be clear of two sets of curves.
        loss_ax.legend(lines, [line.get_label() for line in lines], loc="upper center",
                       bbox_to_anchor=(0.5, -0.13), ncol=2, fontsize="small", frameon=False)
    else:
        for axis in (loss_ax, acc_ax):
            if axis is not None:
                axis.legend(loc="best")
    return loss_ax.figure


def hidden_size_grid(X: Any, y: Any, sizes: Sequence[int] = (1, 2, 3, 4, 5, 20, 50),
                     epochs: int = 5000, backend: Any = None, *, seed: int = 0,
                     device: Any = None, dtype: str = "float32", resolution: int = 200,
                     **fit_kwargs: Any) -> Any:
    """The tutorial's figure: decision boundaries of ``2 -> H tanh -> k softmax`` networks, one
    panel per hidden size H, each trained from the same seed on the same data.

    Parameters
    ----------
    X : array, shape (n_samples, 2)
    y : array, shape (n_samples,)
        Integer labels in ``[0, k)``.
    sizes : sequence of int
        Hidden layer sizes, one panel each.
    epochs : int
        Full-batch epochs per network (unless `fit_kwargs` gives a ``batch_size``).
    backend, device, dtype, seed
        Passed to every :class:`~nnx.Sequential`.
    **fit_kwargs
        Passed to ``fit``. Defaults: ``lr=2.0, l2=5e-5``, the tutorial's settings
        (``epsilon=0.01, reg_lambda=0.01`` on the loss summed over its 200 points) written for
        nnx's mean loss.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from nnx.layers import Dense
    from nnx.model import Sequential

    where = "nnx.plot.hidden_size_grid"
    _matplotlib()
    X = _host_2d(X, where)
    y = _host_labels(y, X.shape[0], where)
    if y is None:
        raise InvalidDataError(f"{where}: y is needed to train the networks.")
    sizes = list(sizes)
    if not sizes:
        raise InvalidParameterError(f"{where}: sizes must name at least one hidden layer size.")
    k = max(2, int(y.max()) + 1)
    fit_kwargs = {"lr": 2.0, "l2": 5e-5, "verbose": False, **fit_kwargs}
    cols = min(4, len(sizes))
    rows = math.ceil(len(sizes) / cols)
    fig, axes = _pyplot().subplots(rows, cols, figsize=(3.6 * cols, 3.2 * rows),
                                   layout="constrained", squeeze=False, sharex=True,
                                   sharey=True)
    for ax, size in zip(axes.flat, sizes):
        model = Sequential([Dense(2, size, "tanh"), Dense(size, k, "softmax")], seed=seed,
                           backend=backend, device=device, dtype=dtype)
        model.fit(X, y, epochs=epochs, **fit_kwargs)
        accuracy = model.accuracy(X, y)
        decision_boundary(model, X, y, ax=ax, resolution=resolution)
        unit = "unit" if size == 1 else "units"
        ax.set_title(f"{size} hidden {unit}: accuracy {accuracy:.3f}", fontsize=10)
        ax.label_outer()
    for index, ax in enumerate(axes.flat):
        if index >= len(sizes):
            ax.set_axis_off()
        elif index + cols >= len(sizes):
            # Nothing below this panel: it shows the x axis's ticks and label itself.
            ax.xaxis.set_tick_params(labelbottom=True)
            ax.set_xlabel("$x_1$")
    fig.suptitle(f"Decision boundaries by hidden layer size ({epochs} epochs, "
                 f"lr={fit_kwargs['lr']:g}, l2={fit_kwargs['l2']:g})")
    return fig
