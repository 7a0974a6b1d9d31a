"""A quick run of ``bench/sklearn_grid.py``'s grid search (one round, a small grid, a few
epochs, a part of the digits): nothing is timed here; the figures and the table are checked,
and so is the guard that refuses a comparison in which one side stopped early."""

from __future__ import annotations

import pytest

pytest.importorskip("sklearn")

import sklearn_grid  # noqa: E402  (bench/ is on the path: its conftest sits there)

SMALL = {"mlp__hidden_layer_sizes": [(16,)], "mlp__learning_rate_init": [1e-2, 3e-2]}


def test_grid_search_figures_and_table():
    result = sklearn_grid.run(rounds=2, max_iter=5, cv=2, n_samples=400, grid=SMALL)
    assert result["fits_per_search"] == 2 * 2 + 1 and result["n_train"] == 300
    for library in ("nnx", "sklearn"):
        r = result[library]
        assert len(r["times"]) == 2 and all(t > 0 for t in r["times"])
        assert r["seconds"]["q1"] <= r["seconds"]["median"] <= r["seconds"]["q3"]
        assert r["best_params"]["mlp__learning_rate_init"] in (1e-2, 3e-2)
        # Ten classes: chance is 0.1; five epochs of Adam on scaled digits do far better.
        assert 0.6 < r["best_cv_accuracy"] <= 1 and 0.6 < r["test_accuracy"] <= 1
    ratios = [a / b for a, b in zip(result["nnx"]["times"], result["sklearn"]["times"])]
    assert result["ratio"]["median"] == pytest.approx(sum(ratios) / 2)
    text = sklearn_grid.table(result)
    assert "| nnx `MLPClassifier` |" in text and "| scikit-learn `MLPClassifier` |" in text
    assert "over 2 interleaved rounds; 5 fits per search (cv=2, refit included), 5 epochs" in text


def test_a_search_that_stops_early_is_refused(monkeypatch):
    make = sklearn_grid._estimator

    def stops_early(library, max_iter):
        pipe = make(library, max_iter)
        pipe.set_params(mlp__tol=10.0, mlp__n_iter_no_change=1)
        return pipe

    monkeypatch.setattr(sklearn_grid, "_estimator", stops_early)
    with pytest.raises(RuntimeError, match="not max_iter=5"):
        sklearn_grid.run(rounds=1, max_iter=5, cv=2, n_samples=200, grid=SMALL)
