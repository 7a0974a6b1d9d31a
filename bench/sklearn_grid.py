"""A grid search with nnx's MLPClassifier beside scikit-learn's own, on scikit-learn's digits.

``python bench/sklearn_grid.py [--rounds 9] [--max-iter 30] [--json PATH]`` runs
``GridSearchCV(Pipeline(StandardScaler, MLPClassifier), {hidden_layer_sizes, learning_rate_init},
cv=3)`` on a stratified three quarters of the 1,797 digits, once with ``nnx.sklearn`` and once
with ``sklearn.neural_network``, in interleaved rounds (nnx, scikit-learn, scikit-learn, nnx,
...), and prints a table: each one's median time per search (with quartiles), the ratio of the
two (median and quartiles of the per-round ratios), the best parameters, the best mean CV
accuracy and the best estimator's accuracy on the held-out quarter.

Both train for exactly ``max_iter`` epochs in every fit (``tol=0`` and ``n_iter_no_change``
above ``max_iter``: neither stops early); the scorer checks ``n_iter_`` of every fitted model,
so a run in which either stopped early fails instead of timing different work. Both use Adam,
minibatches of 200 (``batch_size='auto'``), ``alpha=1e-4``, float64 (the data's dtype).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
import warnings
from typing import Any

import numpy as np

GRID = {"mlp__hidden_layer_sizes": [(32,), (64,)], "mlp__learning_rate_init": [1e-3, 1e-2]}


def _estimator(library: str, max_iter: int) -> Any:
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    if library == "nnx":
        from nnx.sklearn import MLPClassifier
    else:
        from sklearn.neural_network import MLPClassifier
    mlp = MLPClassifier(max_iter=max_iter, tol=0.0, n_iter_no_change=max_iter + 1,
                        random_state=0)
    return Pipeline([("scale", StandardScaler()), ("mlp", mlp)])


def _search(library: str, X: np.ndarray, y: np.ndarray, max_iter: int, cv: int,
            grid: dict[str, list[Any]]) -> tuple[float, Any]:
    """``(seconds, fitted GridSearchCV)``; every fitted model is checked to have run
    ``max_iter`` epochs."""
    from sklearn.model_selection import GridSearchCV

    def accuracy(estimator: Any, X_part: np.ndarray, y_part: np.ndarray) -> float:
        epochs = estimator[-1].n_iter_
        if epochs != max_iter:
            raise RuntimeError(f"{library}: a fit ran {epochs} epochs, not max_iter="
                               f"{max_iter}: the comparison would time different work.")
        return float(estimator.score(X_part, y_part))

    # error_score='raise': a failed fit or check stops the run (the default scores it NaN).
    search = GridSearchCV(_estimator(library, max_iter), grid, cv=cv, scoring=accuracy,
                          n_jobs=1, error_score="raise")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: max_iter is reached on purpose
        start = time.perf_counter()
        search.fit(X, y)
        seconds = time.perf_counter() - start
    if search.best_estimator_[-1].n_iter_ != max_iter:
        raise RuntimeError(f"{library}: the refit ran {search.best_estimator_[-1].n_iter_} "
                           f"epochs, not {max_iter}.")
    return seconds, search


def run(rounds: int = 9, max_iter: int = 30, cv: int = 3, n_samples: int | None = None,
        grid: dict[str, list[Any]] | None = None) -> dict[str, Any]:
    """The interleaved rounds; returns the figures the table shows (times in seconds)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    grid = GRID if grid is None else grid
    X, y = load_digits(return_X_y=True)
    if n_samples is not None:
        X, y = X[:n_samples], y[:n_samples]
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, stratify=y,
                                                        random_state=0)
    times: dict[str, list[float]] = {"nnx": [], "sklearn": []}
    searches: dict[str, Any] = {}
    for i in range(rounds):
        order = ("nnx", "sklearn") if i % 2 == 0 else ("sklearn", "nnx")
        for library in order:
            seconds, searches[library] = _search(library, X_train, y_train, max_iter, cv,
                                                 grid)
            times[library].append(seconds)
    ratios = [a / b for a, b in zip(times["nnx"], times["sklearn"])]
    out: dict[str, Any] = {"rounds": rounds, "max_iter": max_iter, "cv": cv,
                           "n_train": len(y_train), "n_test": len(y_test),
                           "grid": {k: [list(v) if isinstance(v, tuple) else v for v in vs]
                                    for k, vs in grid.items()},
                           "fits_per_search": cv * int(np.prod([len(v) for v in grid.values()]))
                           + 1}
    for library, search in searches.items():
        out[library] = {
            "seconds": _quartiles(times[library]),
            "best_params": {k: (list(v) if isinstance(v, tuple) else v)
                            for k, v in search.best_params_.items()},
            "best_cv_accuracy": float(search.best_score_),
            "test_accuracy": float(search.score(X_test, y_test)),
            "times": times[library],
        }
    out["ratio"] = _quartiles(ratios)
    return out


def _quartiles(values: list[float]) -> dict[str, float]:
    if len(values) < 2:
        return {"median": values[0], "q1": values[0], "q3": values[0]}
    q1, median, q3 = statistics.quantiles(values, n=4)
    return {"median": statistics.median(values), "q1": q1, "q3": q3}


def versions() -> dict[str, str]:
    import sklearn

    import nnx

    return {"python": platform.python_version(), "numpy": np.__version__,
            "scikit-learn": sklearn.__version__, "nnx": nnx.__version__,
            "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs"}


def table(result: dict[str, Any]) -> str:
    """The Markdown table of :func:`run`'s figures."""
    def params(p: dict[str, Any]) -> str:
        return (f"hidden {tuple(p['mlp__hidden_layer_sizes'])}, "
                f"lr {p['mlp__learning_rate_init']:g}")

    rows = ["| | time per search (s), median [quartiles] | best parameters | best CV "
            "accuracy | test accuracy |", "|---|---:|---|---:|---:|"]
    for library, name in (("nnx", "nnx `MLPClassifier`"),
                          ("sklearn", "scikit-learn `MLPClassifier`")):
        r = result[library]
        s = r["seconds"]
        rows.append(f"| {name} | {s['median']:.2f} [{s['q1']:.2f}-{s['q3']:.2f}] | "
                    f"{params(r['best_params'])} | {r['best_cv_accuracy']:.3f} | "
                    f"{r['test_accuracy']:.3f} |")
    ratio = result["ratio"]
    rows.append(f"\nnnx / scikit-learn time: {ratio['median']:.2f}x (quartiles "
                f"{ratio['q1']:.2f}-{ratio['q3']:.2f}) over {result['rounds']} interleaved "
                f"rounds; {result['fits_per_search']} fits per search (cv={result['cv']}, "
                f"refit included), {result['max_iter']} epochs each, "
                f"{result['n_train']} training and {result['n_test']} test digits.")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--max-iter", type=int, default=30)
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    result = run(rounds=args.rounds, max_iter=args.max_iter)
    result["versions"] = versions()
    result["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    result["command"] = " ".join(["python", "bench/sklearn_grid.py", *(argv or sys.argv[1:])])
    print(f"{result['command']}  ({result['date']})")
    print(", ".join(f"{k} {v}" for k, v in result["versions"].items()))
    print(table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
