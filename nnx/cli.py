"""The ``nnx`` command: train a classifier, apply a saved one to a CSV file, show the backends.

    nnx train --data moons --hidden 3 --epochs 2000 --out moons.npz --plot moons.png
    nnx predict moons.npz points.csv --out predictions.csv
    nnx info
    nnx bench ...

A mistake on the command line or in the data is reported as one line,
``nnx: error: ...``, with exit status 2.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from nnx import datasets
from nnx.backends import CHOICES, get_backend, test_targets, to_numpy
from nnx.errors import NnxError
from nnx.saving import check_writable, write_atomically

GENERATED = ("moons", "circles", "spiral")
DEFAULT_LR = {"sgd": 0.5, "momentum": 0.05, "nesterov": 0.05, "adam": 0.01}
SMALL_DATA = 50  # below this many samples no validation set is held out by default


class UsageError(NnxError, ValueError):
    """A mistake on the command line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of argparse's usage block
        raise UsageError(f"{message} (see '{self.prog} --help')")


# -- nnx train --------------------------------------------------------------------------------
def _add_train(sub: Any) -> None:
    p = sub.add_parser(
        "train", help="train a classifier on a built-in data set or a CSV file",
        description="Train a classifier (Dense layers, then a softmax over the classes in the\n"
                    "labels) and report how it did.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  nnx train --data moons --hidden 3 --epochs 2000 --plot moons.png\n"
               "  nnx train --data digits --hidden 64 --optimizer adam --lr 0.01 \\\n"
               "            --epochs 100 --batch-size 64 --test-size 0.25 --out digits.npz\n"
               "  nnx train --data points.csv --target label --hidden 16 8")
    data = p.add_argument_group("data")
    data.add_argument("--data", default="moons", metavar="NAME|FILE.csv",
                      help="a built-in data set (" + ", ".join([*datasets.BUILTIN,
                                                                *datasets.SKLEARN])
                      + ") or a numeric CSV file with a header row (default: moons)")
    data.add_argument("--target", metavar="COLUMN",
                      help="the CSV column holding the class labels: text, integers (any, "
                           "e.g. 1-based) or true/false; the model keeps them and predicts "
                           "them")
    data.add_argument("--scale", action=argparse.BooleanOptionalAction, default=None,
                      help="standardise the features (a Standardize layer, fitted on the "
                           "training data and saved in the model, so predict applies it "
                           "too); default: on for CSV files and scikit-learn's data sets, off "
                           "for the generated ones (the tutorials train on raw points)")
    data.add_argument("--samples", type=int, metavar="N",
                      help="points to generate for moons, circles, spiral (spiral: N/3 per "
                           "arm); default: 200, 200, 300")
    data.add_argument("--noise", type=float,
                      help="noise of the generated data (default: 0.2 moons and spiral, "
                           "0.1 circles)")
    data.add_argument("--validation-split", type=float, metavar="FRACTION",
                      help="fraction of the training data held out to validate after every "
                           f"epoch (default: 0.2; 0 with fewer than {SMALL_DATA} samples)")
    data.add_argument("--test-size", type=float, metavar="FRACTION",
                      help="fraction held out (stratified) before training, to report the "
                           "test accuracy at the end (default: none)")
    model = p.add_argument_group("model")
    model.add_argument("--task", choices=("classification", "regression"),
                       help="what the target is (default: regression for a target of "
                            "non-integer numbers, else classification); regression trains "
                            "one linear output on the mean squared error and reports R²")
    model.add_argument("--hidden", type=int, nargs="*", default=[3], metavar="SIZE",
                       help="hidden layer sizes, e.g. --hidden 3 or --hidden 64 32; none for "
                            "softmax regression (default: 3)")
    model.add_argument("--activation", default="tanh",
                       help="hidden activation: tanh, sigmoid, relu, leaky_relu, identity "
                            "(default: tanh)")
    model.add_argument("--l2", type=float, default=0.0,
                       help="L2 strength: adds (l2/2) * sum ||W||^2 to the loss (default: 0)")
    model.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                       help="(default: float32)")
    fit = p.add_argument_group("training")
    fit.add_argument("--optimizer", choices=tuple(DEFAULT_LR), default="sgd",
                     help="(default: sgd)")
    fit.add_argument("--lr", type=float,
                     help="learning rate (default: " + ", ".join(
                         f"{lr:g} {name}" for name, lr in DEFAULT_LR.items()) + ")")
    fit.add_argument("--schedule", choices=("step", "exponential", "inverse_time"),
                     help="learning-rate decay over the run: step halves the rate every "
                          "quarter of the epochs; exponential and inverse_time bring it "
                          "smoothly down to a tenth by the last epoch (default: constant)")
    fit.add_argument("--epochs", type=int, default=1000, help="(default: 1000)")
    fit.add_argument("--batch-size", type=int, metavar="N",
                     help="minibatch size (default: the whole training set)")
    fit.add_argument("--early-stopping", type=int, metavar="PATIENCE",
                     help="stop when the validation loss has not improved for PATIENCE "
                          "epochs and keep the best weights")
    fit.add_argument("--seed", type=int, default=0,
                     help="seeds the data, the splits, the initial weights and the batch "
                          "order (default: 0)")
    _add_backend_options(fit)
    out = p.add_argument_group("output")
    out.add_argument("--out", metavar="MODEL.npz", help="save the trained model here")
    out.add_argument("--plot", metavar="FILE.png",
                     help="save one figure with the decision boundary (2-D data only) "
                          "beside the loss and accuracy curves")
    out.add_argument("--quiet", action="store_true",
                     help="no progress bar and no per-epoch table; the results are still "
                          "printed")
    p.set_defaults(run=train)


def _add_backend_options(group: Any) -> None:
    group.add_argument("--backend", choices=CHOICES,
                       help="array library to run on (default: $NNX_BACKEND, else numpy)")
    group.add_argument("--device",
                       help="device of that backend: e.g. cuda:1 for torch, 1 for cupy, "
                            "device1 for array_api_strict (default: the backend's default)")


def _load_data(args: Any) -> tuple[np.ndarray, np.ndarray, str, list[str] | None]:
    name = args.data
    generated = args.samples is not None or args.noise is not None
    if name in datasets.BUILTIN or name in datasets.SKLEARN:
        if args.target is not None:
            raise UsageError(f"--target names a CSV column; --data {name} is a built-in data "
                             "set.")
        kwargs: dict[str, Any] = {}
        if generated and name not in GENERATED:
            raise UsageError(f"--samples and --noise apply to generated data "
                             f"({', '.join(GENERATED)}); --data {name} is fixed.")
        if args.noise is not None:
            kwargs["noise"] = args.noise
        if args.samples is not None:
            if name == "spiral":
                kwargs["n_per_class"] = max(1, args.samples // 3)
            else:
                kwargs["n"] = args.samples
        if name in datasets.SKLEARN:
            kwargs["scale"] = False  # the model's own Standardize layer scales (--no-scale: not)
        X, y = datasets.load(name, seed=args.seed, **kwargs)
        return np.asarray(X, np.float64), np.asarray(y), name, None
    looks_like_file = os.path.exists(name) or name.lower().endswith(".csv") or os.sep in name
    if not looks_like_file:
        datasets.load(name)  # raises the list of known names
    if generated:
        raise UsageError("--samples and --noise apply to generated data "
                         f"({', '.join(GENERATED)}), not to a CSV file.")
    if args.target is None:
        raise UsageError(f"--data {name} is a CSV file: name its label column with --target "
                         "COLUMN.")
    X, y, features = datasets.load_csv(name, target=args.target)
    _check_fits(X, args.dtype, name, features, "use --dtype float64")
    return X, y, os.path.basename(name), features


def _labels(y: np.ndarray, where: str) -> tuple[np.ndarray, list[Any]]:
    """``(codes, classes)``: the labels as 0 .. K-1 and the classes they stand for (text,
    any integers or bools; sorted), kept in the model so predictions read as the data did."""
    y = np.asarray(y)
    if y.dtype.kind == "f":
        if not np.all(y == np.round(y)):
            bad = y[y != np.round(y)][0]
            raise UsageError(f"{where}: the labels must be classes (integers or text); "
                             f"received {bad:g}. Is the label column (--target) the right one?")
        y = y.astype(np.int64)
    classes, codes = np.unique(y, return_inverse=True)
    if len(classes) > max(20, len(y) // 2):
        raise UsageError(f"{where}: the labels hold {len(classes)} different classes in "
                         f"{len(y)} rows; is the label column (--target) the right one?")
    return codes.astype(np.int64), [c.item() if hasattr(c, "item") else c for c in classes]


def _check_fits(X: np.ndarray, dtype: str, source: str, features: list[str] | None,
                remedy: str) -> None:
    """Refuse values the model's dtype cannot hold (1e39 is finite in float64, inf in
    float32), naming the column, before NumPy warns about an overflow in the cast."""
    largest = float(np.finfo(dtype).max)
    too_large = np.abs(X) > largest
    if not too_large.any():
        return
    row, col = (int(k) for k in np.argwhere(too_large)[0])
    column = repr(features[col]) if features is not None else str(col)
    raise UsageError(f"{source}: column {column}, data row {row + 1}: {X[row, col]:g} is too "
                     f"large for {dtype} (it holds magnitudes up to {largest:.4g}); scale the "
                     f"column, or {remedy}.")


def _schedule(name: str | None, epochs: int) -> Any:
    from nnx.optimizers import ExponentialDecay, InverseTimeDecay, StepDecay

    if name is None:
        return None
    if name == "step":
        return StepDecay(every=max(1, epochs // 4), factor=0.5)
    if name == "exponential":
        return ExponentialDecay(rate=0.1, every=max(1, epochs))
    return InverseTimeDecay(rate=9.0 / max(1, epochs))


def _check_output_path(path: str | None, option: str, command: str) -> None:
    """Everything :func:`write_atomically` will check, before any work: the folder exists
    and is writable, `path` is not a folder nor a read-only file."""
    if path is None:
        return
    check_writable(path, f"nnx {command} {option}")


def _check_plot_path(path: str | None) -> None:
    if path is None:
        return
    from nnx.plot import _matplotlib

    _matplotlib()
    from matplotlib.backend_bases import FigureCanvasBase

    ext = os.path.splitext(path)[1].lstrip(".").lower()
    formats = FigureCanvasBase.get_supported_filetypes()
    if ext and ext not in formats:
        raise UsageError(f"--plot {path}: matplotlib cannot write .{ext} files; use one of: "
                         f"{', '.join(sorted(formats))}.")


def _where(backend: Any) -> str:
    """'numpy 2.1.3 on cpu', 'cupy 14.0.0 on NVIDIA H100 80GB HBM3 (cuda:0)'."""
    return backend.describe()


def _architecture(model: Any, arrow: str = " -> ") -> str:
    parts = [str(model.n_in)]
    parts += ["standardize" if layer.type_name == "Standardize"
              else f"{layer.n_out} {layer.activation.name}" for layer in model.layers]
    return arrow.join(parts)


def _table(history: Any) -> list[str]:
    """A few epochs of the history, the first and last among them (and the best one)."""
    keys = [k for k in ("loss", "accuracy", "val_loss", "val_accuracy") if k in history]
    n = len(history)
    rows = sorted({0, n // 4 - 1, n // 2 - 1, (3 * n) // 4 - 1, n - 1} - {-1}
                  | ({history.epochs.index(history.best_epoch)}
                     if history.best_epoch in history.epochs else set()))
    widths = [max(len(k), 8) for k in keys]
    lines = ["  epoch  " + "  ".join(k.rjust(w) for k, w in zip(keys, widths))]
    for i in rows:
        cells = []
        for key, width in zip(keys, widths):
            value = history[key][i]
            cells.append((f"{value:.3f}" if key.endswith("accuracy") else f"{value:.4f}")
                         .rjust(width))
        best = "  (best)" if history.epochs[i] == history.best_epoch and n > 1 else ""
        lines.append(f"{history.epochs[i] + 1:7d}  " + "  ".join(cells) + best)
    return lines


def _figures(label: str, result: dict[str, float], n: int) -> str:
    accuracy = f"  accuracy {result['accuracy']:.3f}" if "accuracy" in result else ""
    r2 = f"  R² {result['r2']:.4f}" if "r2" in result else ""
    return f"{label:<11} loss {result['loss']:.4f}{accuracy}{r2}  ({n} samples)"


def _r2(y: np.ndarray, predicted: np.ndarray) -> float:
    """The coefficient of determination, 1 - SSE / SST."""
    y, predicted = np.asarray(y, np.float64).ravel(), np.asarray(predicted, np.float64).ravel()
    total = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - float(np.sum((y - predicted) ** 2)) / total if total > 0 else float("nan")


def _evaluate(model: Any, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
    figures = model.evaluate(X, y)
    if not model.head.classifier:
        figures["r2"] = _r2(y, to_numpy(model.predict(X)))
    return figures


def _saved_path(path: str) -> str:
    if not os.path.exists(path) and os.path.exists(path + ".npz"):
        return path + ".npz"
    return path


class _EpochLines:
    """Progress as plain lines on stderr, for logs (a progress bar's carriage returns make one
    endless line there): the first and last epoch, and at most one line every few seconds."""

    def __init__(self, epochs: int, every_s: float = 3.0) -> None:
        from nnx.callbacks import Callback

        self.epochs, self.every_s, self.last = epochs, every_s, None
        outer = self

        class _Lines(Callback):
            def on_epoch_end(self, model: Any, epoch: int, logs: dict[str, float]) -> None:
                outer.show(epoch, logs)

        self.callback = _Lines()

    def show(self, epoch: int, logs: dict[str, float]) -> None:
        now = time.monotonic()
        done = epoch + 1
        if self.last is None or now - self.last >= self.every_s or done == self.epochs:
            figures = "  ".join(f"{k} {v:.4g}" for k, v in logs.items())
            print(f"epoch {done}/{self.epochs}  {figures}", file=sys.stderr, flush=True)
            self.last = now


def _warnings(history: Any, y_train: np.ndarray, X_train: np.ndarray,
              figures: dict[str, float], scaled: bool) -> list[str]:
    """What a user needs to hear about a run that went wrong without an error."""
    out = []
    losses = history["loss"]
    if len(losses) > 1 and losses[-1] > losses[0]:
        out.append(f"the training loss rose from {losses[0]:.4g} to {losses[-1]:.4g}: the "
                   "learning rate is probably too high (try a smaller --lr)")
    if "accuracy" in figures and len(y_train):
        _, counts = np.unique(y_train, return_counts=True)
        majority = counts.max() / len(y_train)
        if abs(figures["accuracy"] - majority) < 0.5 / len(y_train) and len(counts) > 1:
            out.append(f"the training accuracy {figures['accuracy']:.3f} is the share of the "
                       "most common class: the network predicts one class. Scale the "
                       "features, or train longer or with another --lr")
    spans = np.ptp(np.asarray(X_train, np.float64), axis=0)
    spans = spans[spans > 0]
    if not scaled and spans.size > 1 and spans.max() / spans.min() > 100:
        out.append(f"the features' ranges differ by a factor of {spans.max() / spans.min():.3g}"
                   ": scale them (--scale) for gradient descent to work well")
    return out


def train(args: Any) -> int:
    from nnx.callbacks import EarlyStopping
    from nnx.layers import Dense, Standardize
    from nnx.model import Sequential
    from nnx.optimizers import get_optimizer

    _check_output_path(args.out, "--out", "train")
    _check_output_path(args.plot, "--plot", "train")
    _check_plot_path(args.plot)
    if args.epochs < 1:
        raise UsageError(f"--epochs must be >= 1; received {args.epochs}.")
    if args.seed < 0:
        raise UsageError(f"--seed must be an integer >= 0; received {args.seed}.")
    if any(size < 1 for size in args.hidden):
        raise UsageError("--hidden sizes must be integers >= 1; received "
                         f"{' '.join(map(str, args.hidden))}.")
    if args.validation_split is not None and not 0 <= args.validation_split < 1:
        raise UsageError("--validation-split must be a fraction in [0, 1); received "
                         f"{args.validation_split:g}.")
    if args.test_size is not None and not 0 < args.test_size < 1:
        raise UsageError(f"--test-size must be a fraction in (0, 1); received "
                         f"{args.test_size:g}.")
    backend = get_backend(args.backend, args.device)
    X, y, name, features = _load_data(args)
    y = np.asarray(y)
    task = args.task or ("regression" if y.dtype.kind == "f" and not np.all(y == np.round(y))
                         else "classification")
    regression = task == "regression"
    if regression:
        if y.dtype.kind not in "fiub":
            raise UsageError(f"{name}: --task regression needs a numeric target; the column "
                             f"holds text such as {str(y[0])!r}.")
        y, classes, n_classes = y.astype(np.float64), None, 1
    else:
        y, classes = _labels(y, name)
        n_classes = max(2, len(classes))
    n_features = X.shape[1]
    n_total = X.shape[0]

    X_train, y_train = X, y
    test = None
    if args.test_size is not None:
        X_train, X_test, y_train, y_test = datasets.train_test_split(
            X, y, test_size=args.test_size, seed=args.seed, stratify=not regression)
        test = (X_test, y_test)
    split = args.validation_split
    if split is None:
        split = 0.2 if len(y_train) >= SMALL_DATA else 0.0
    val = None
    if split:
        X_train, X_val, y_train, y_val = datasets.train_test_split(
            X_train, y_train, test_size=split, seed=args.seed + 1, stratify=not regression)
        val = (X_val, y_val)

    # Every setting is checked before anything is printed or trained.
    lr = DEFAULT_LR[args.optimizer] if args.lr is None else args.lr
    optimizer = get_optimizer(args.optimizer, lr=lr,
                              schedule=_schedule(args.schedule, args.epochs))
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1; received {args.batch_size}.")
    early_stopping = None
    if args.early_stopping is not None:
        early_stopping = EarlyStopping(patience=args.early_stopping)
    sizes = [n_features, *args.hidden]
    scale = args.scale if args.scale is not None else name not in GENERATED + tuple(
        datasets.BUILTIN)
    layers: list[Any] = [Standardize(n_features)] if scale else []
    layers += [Dense(a, b, args.activation) for a, b in zip(sizes, sizes[1:])]
    layers.append(Dense(sizes[-1], 1, "identity") if regression
                  else Dense(sizes[-1], n_classes, "softmax"))
    model = Sequential(layers, l2=args.l2, dtype=args.dtype, seed=args.seed, backend=backend)
    # The model learns on the codes 0 .. K-1; it is given the classes they stand for when it
    # is saved (so that its predict, and nnx predict, give the labels).
    model.feature_names = features
    batch = "full batch" if args.batch_size is None else f"batch size {args.batch_size}"
    parts = [f"{len(y_train)} training"]
    if val is not None:
        parts.append(f"{len(val[1])} validation")
    if test is not None:
        parts.append(f"{len(test[1])} test")
    schedule = f", {args.schedule} decay" if args.schedule else ""
    print(f"backend  {_where(backend)}, {args.dtype}")
    what = "a regression target" if regression else f"{n_classes} classes"
    print(f"data     {name}: {n_total} samples, {n_features} features, {what}; "
          + ", ".join(parts))
    print(f"model    {_architecture(model)} ({model.n_params} parameters), l2={args.l2:g}")
    print(f"fit      {args.optimizer} lr={lr:g}{schedule}, {args.epochs} epochs, {batch}",
          flush=True)

    # A progress bar on a terminal; plain lines where stderr is a file or a pipe.
    terminal = sys.stderr.isatty()
    callbacks = [] if early_stopping is None else [early_stopping]
    if not args.quiet and not terminal:
        callbacks.append(_EpochLines(args.epochs).callback)
    start = time.perf_counter()
    history = model.fit(X_train, y_train, epochs=args.epochs, optimizer=optimizer,
                        batch_size=args.batch_size, validation_data=val,
                        callbacks=callbacks, verbose=not args.quiet and terminal)
    seconds = time.perf_counter() - start
    sys.stderr.flush()
    if not args.quiet:
        print("\n".join(_table(history)))
    print(f"trained {len(history)} epochs in {seconds:.1f} s")
    watched = "validation" if val is not None else "training"
    if history.stopped_epoch is not None:
        print(f"stopped early: no better {watched} loss for {args.early_stopping} epochs")
    if history.best_epoch is not None:
        print(f"restored the weights of epoch {history.best_epoch + 1} (lowest {watched} "
              "loss)")
    trained = _evaluate(model, X_train, y_train)
    print(_figures("training", trained, len(y_train)))
    if val is not None:
        print(_figures("validation", _evaluate(model, *val), len(val[1])))
    if test is not None:
        print(_figures("test", _evaluate(model, *test), len(test[1])))
    for warning in _warnings(history, y_train, X_train, trained, scale):
        print(f"warning: {warning}", file=sys.stderr)
    model.classes = classes
    if args.out is not None:
        model.save(args.out)
        print(f"saved model to {_saved_path(args.out)}")
    if args.plot is not None:
        title = f"{name}: {_architecture(model, arrow=' → ')}, {args.optimizer} lr={lr:g}"
        what = _save_plot(args.plot, model, X, y, history, title)
        print(f"saved plot to {args.plot} ({what})")
    return 0


def _save_plot(path: str, model: Any, X: np.ndarray, y: np.ndarray, history: Any,
               title: str) -> str:
    from matplotlib.figure import Figure

    from nnx import plot

    boundary = X.shape[1] == 2
    panels = 3 if boundary else 2
    fig = Figure(figsize=(5.2 * panels, 4.4), layout="constrained")
    axes = fig.subplots(1, panels)
    if boundary:
        plot.decision_boundary(model, X, y, ax=axes[0], title="decision boundary")
    plot.history(history, ax=list(axes[-2:]))
    fig.suptitle(title)
    ext = os.path.splitext(path)[1].lstrip(".").lower() or "png"
    write_atomically(path, lambda handle: fig.savefig(handle, format=ext, dpi=100),
                     "nnx train --plot")
    return "decision boundary, loss, accuracy" if boundary else "loss, accuracy"


# -- nnx predict ------------------------------------------------------------------------------
def _add_predict(sub: Any) -> None:
    p = sub.add_parser(
        "predict", help="apply a saved model to a CSV file",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Predict the class (and the class probabilities), or the value, of every\n"
                    "row of a CSV file with a model saved by 'nnx train --out' or model.save().",
        epilog="output (CSV with a header row, one row per input row, in the input's order):\n"
               "  classifier   prediction: the class, as the training labels name it (text,\n"
               "               1-based numbers, ...); then probability_<class> for each class\n"
               "               (a one-unit sigmoid model: probability_<second class> only)\n"
               "  regression   prediction (output_0, output_1, ... for several outputs)\n"
               "With --target, the accuracy (or the mean squared error and R²) on that column\n"
               "goes to stderr (to stdout with --out).")
    p.add_argument("model", metavar="MODEL.npz",
                   help="a model file written by 'nnx train --out MODEL.npz' or "
                        "model.save(); it records the feature names, any scaling and the "
                        "classes")
    p.add_argument("data", metavar="DATA.csv",
                   help="CSV file with a header row; the columns the model was trained on "
                        "are found by name, in any order (other columns are refused, except "
                        "--target)")
    p.add_argument("--target", metavar="COLUMN",
                   help="a label column in the CSV: left out of the features and used to "
                        "report the accuracy")
    p.add_argument("--out", metavar="PRED.csv",
                   help="write the predictions here (default: print them as CSV)")
    _add_backend_options(p)
    p.set_defaults(run=predict)


def _same_number(a: Any, b: Any) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return False


def _by_name(X: np.ndarray, features: list[str], names: list[str], path: str) -> np.ndarray:
    """The columns of `X` in the order the model was trained on, found by their names."""
    missing = [name for name in names if name not in features]
    unknown = [name for name in features if name not in names]
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"it lacks the column{'s' * (len(missing) > 1)} "
                         f"{', '.join(map(repr, missing))} the model was trained on")
        if unknown:
            parts.append(f"it has {', '.join(map(repr, unknown))}, which the model does not "
                         "know (name a label column with --target)")
        raise UsageError(f"{path}: " + "; ".join(parts) + ".")
    return X[:, [features.index(name) for name in names]]


def predict(args: Any) -> int:
    import nnx

    _check_output_path(args.out, "--out", "predict")
    if not os.path.isfile(args.model):
        raise UsageError(f"{args.model}: no such model file.")
    model = nnx.load(args.model, backend=args.backend, device=args.device)
    X, y, features = datasets.load_csv(args.data, target=args.target)
    _check_fits(X, model.dtype_name, args.data, features, "retrain the model with --dtype float64")
    if model.feature_names is not None:
        X = _by_name(X, features, model.feature_names, args.data)
    elif args.target is None and X.shape[1] == model.n_in + 1:
        raise UsageError(f"{args.data} has {X.shape[1]} columns but the model takes "
                         f"{model.n_in} features; name the label column with --target COLUMN.")
    outputs = to_numpy(model.predict(X))
    classifier = outputs.ndim == 1
    if classifier:
        proba = np.asarray(to_numpy(model.predict_proba(X)), np.float64)
        classes = model.classes if model.classes is not None else list(
            range(max(2, proba.shape[1])))
        if proba.shape[1] == 1:
            header = ["prediction", f"probability_{classes[1]}"]
        else:
            header = ["prediction"] + [f"probability_{c}" for c in classes]
        rows = [[str(label)] + [f"{p:.6g}" for p in ps] for label, ps in zip(outputs, proba)]
    else:
        values = np.asarray(outputs, np.float64)
        header = (["prediction"] if values.shape[1] == 1
                  else [f"output_{j}" for j in range(values.shape[1])])
        rows = [[f"{v:.6g}" for v in row] for row in values]

    report = []
    if y is not None:
        if classifier:
            same = [str(a) == str(b) or _same_number(a, b) for a, b in zip(outputs, y)]
            accuracy = float(np.mean(same))
            report.append(f"accuracy {accuracy:.3f} on {len(y)} rows ({args.target!r})")
        elif values.shape[1] == 1:
            y = np.asarray(y, np.float64)
            mse = float(np.mean((values[:, 0] - y) ** 2))
            report.append(f"mean squared error {mse:.6g}, R² {_r2(y, values[:, 0]):.4f} on "
                          f"{len(y)} rows ({args.target!r})")
    if args.out is None:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        sys.stdout.flush()
        for line in report:
            print(line, file=sys.stderr)
    else:
        def write(handle: Any) -> None:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)

        write_atomically(args.out, write, "nnx predict --out", text=True)
        for line in report:
            print(line)
        print(f"wrote {len(rows)} predictions to {args.out}")
    return 0


# -- nnx info ---------------------------------------------------------------------------------
def _add_info(sub: Any) -> None:
    p = sub.add_parser("info", help="show the backend nnx would use and which ones work here",
                       description="Show the backend nnx would use (from --backend or "
                                   "NNX_BACKEND) and try every backend on this machine.")
    _add_backend_options(p)
    p.set_defaults(run=info)


def _probe(name: str, device: Any = None) -> tuple[bool, str]:
    """Whether `name` works here: resolve it and compute on one tiny array."""
    try:
        backend = get_backend(name, device)
        xp = backend.xp
        total = xp.sum(backend.asarray(np.arange(3.0), dtype=xp.float32))
        if float(total) != 3.0:
            return False, f"a test sum gave {float(total)} instead of 3"
    except Exception as exc:  # noqa: BLE001 - any failure means "not usable", with its reason
        return False, " ".join(str(exc).split()) or type(exc).__name__
    return True, _where(backend)


def info(args: Any) -> int:
    import array_api_compat

    import nnx

    print(f"nnx {nnx.__version__} (numpy {np.__version__}, array-api-compat "
          f"{array_api_compat.__version__}, python {sys.version.split()[0]})")
    env = os.environ.get("NNX_BACKEND")
    print(f"NNX_BACKEND  {env!r}" if env else "NNX_BACKEND  (unset)")
    error = None
    try:
        selected = get_backend(args.backend, args.device)
        details = nnx.backend_info(selected)
    except NnxError as exc:
        error = exc
    else:
        float64 = "float64 supported" if details["float64_supported"] else "no float64"
        print(f"selected     {_where(selected)} ({float64})")
        if details["reason"]:
            print(f"because      {details['reason']}")
    print("backends here:")
    candidates = test_targets()
    width = max(len(label) for label, _, _ in candidates)
    for label, name, device in candidates:
        ok, detail = _probe(name, device)
        print(f"  {label:<{width}}  {'yes' if ok else 'no ':3}  {detail}")
    if error is not None:
        raise error
    return 0


# -- nnx bench --------------------------------------------------------------------------------
def _bench_dir(argv: list[str]) -> tuple[str, list[str]]:
    """The checkout's ``bench/`` folder: ``--bench-dir DIR`` if given, else ``./bench``."""
    folder = "bench"
    rest = list(argv)
    if "--bench-dir" in rest:
        k = rest.index("--bench-dir")
        if k + 1 >= len(rest):
            raise UsageError("--bench-dir needs a folder (the bench/ of an nnx checkout).")
        folder = rest[k + 1]
        del rest[k:k + 2]
    return folder, rest


def bench(argv: Sequence[str]) -> int:
    """``nnx bench``: run the benchmarks of a source checkout (they are not installed with
    nnx) through ``bench/report.py``."""
    import importlib.util

    folder, rest = _bench_dir(list(argv))
    script = os.path.join(folder, "report.py")
    if not os.path.isfile(script):
        raise UsageError(
            f"'nnx bench' runs the benchmarks of an nnx source checkout, and {script} does not "
            "exist: run it from the repository's root, pass --bench-dir PATH/TO/bench, or run "
            "'nox -s bench' there.")
    spec = importlib.util.spec_from_file_location("nnx_bench_report", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return int(module.main(["--bench-dir", folder, *rest]) or 0)


# -- main -------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from nnx import __version__

    parser = _Parser(prog="nnx",
                     description="Neural networks on NumPy, CuPy, PyTorch and array-api-strict.")
    parser.add_argument("--version", action="version", version=f"nnx {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_train(sub)
    _add_predict(sub)
    _add_info(sub)
    sub.add_parser("bench", help="run the benchmarks (nnx bench --help for their options)",
                   add_help=False)
    return parser


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``nnx`` command with `argv` (default: ``sys.argv[1:]``); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "bench":
            return bench(argv[1:])
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help(sys.stderr)
            return 2
        return args.run(args)
    except MemoryError as exc:
        detail = f" ({_one_line(exc)})" if str(exc) else ""
        print(f"nnx: error: out of memory{detail}; use smaller --hidden sizes, a smaller "
              "--batch-size, or --dtype float32.", file=sys.stderr)
        return 2
    except (NnxError, OSError) as exc:
        # nnx's own errors and the system's (a file that cannot be read or written) are the
        # user's to fix: one line. Anything else is a bug, and keeps its traceback.
        if isinstance(exc, BrokenPipeError):
            # The reader of our output went away (| head): not an error of ours.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        print(f"nnx: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nnx: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
