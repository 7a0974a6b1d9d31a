"""nnx.plot on every backend: decision boundaries drawn where the model's classes change, loss
curves holding the history's figures, the hidden-size grid, and PNG files that are real
pictures."""

import struct
import sys

import numpy as np
import pytest
from helpers import host

import nnx

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.image  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.contour import ContourSet  # noqa: E402

from nnx import plot  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path, min_width=200, min_height=150):
    """`path` is a PNG of at least that size whose pixels are not all one colour."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG file"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= min_width and height >= min_height, (width, height)
    assert width <= 5000 and height <= 5000, (width, height)
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[:2] == (height, width)
    rgba = np.round(pixels.reshape(-1, pixels.shape[-1]) * 255).astype(np.uint32)
    colours = np.unique(rgba @ (256 ** np.arange(rgba.shape[1], dtype=np.uint32)))
    assert len(colours) > 20, f"{path} has only {len(colours)} colours"
    return width, height


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def moons():
    return nnx.datasets.make_moons(120, noise=0.2, seed=0)


def trained(backend, X, y, hidden=5, epochs=300):
    model = nnx.Sequential([nnx.Dense(2, hidden, "tanh"), nnx.Dense(hidden, int(y.max()) + 1,
                                                                     "softmax")],
                           seed=0, backend=backend)
    history = model.fit(X, y, epochs=epochs, lr=1.0, validation_data=(X[:30], y[:30]),
                        verbose=False)
    return model, history


def boundary_lines(ax):
    """Vertices of the drawn class boundaries (the unfilled contours)."""
    paths = [p for c in ax.collections if isinstance(c, ContourSet) and not c.filled
             for p in c.get_paths()]
    return np.concatenate([p.vertices for p in paths if len(p.vertices)])


def test_decision_boundary_on_every_backend(backend, moons, tmp_path):
    """Drawn on strict's device1 too (its arrays refuse np.asarray); the line lies where the
    model's two class probabilities are equal."""
    X, y = moons
    model, _ = trained(backend, X, y, epochs=100)
    fig = plot.decision_boundary(model, backend.asarray(X.astype(np.float32)), backend.asarray(y),
                                 resolution=150,
                                 title="moons")
    ax = fig.axes[0]
    assert ax.get_title() == "moons"
    line = boundary_lines(ax)
    assert len(line) > 20
    p1 = host(model.predict_proba(line))[:, 1]
    assert np.max(np.abs(p1 - 0.5)) < 0.05
    # the line separates the plane: points on either side near it get different classes
    assert set(np.unique(host(model.predict(X)))) == {0, 1}
    path = tmp_path / "boundary.png"
    fig.savefig(path, dpi=80)
    assert_png(path)


def test_decision_boundary_colours_every_class_of_a_spiral(moons):
    X, y = nnx.datasets.make_spiral(40, 3, seed=1)
    model, _ = trained("numpy", X, y, hidden=20, epochs=400)
    fig, ax = plt.subplots()
    assert plot.decision_boundary(model, X, y, ax=ax, resolution=80) is fig
    filled = [c for c in ax.collections if isinstance(c, ContourSet) and c.filled]
    # one filled region per class the model predicts somewhere on the plane
    predicted = np.unique(host(model.predict(X)))
    assert len(filled) == len(predicted) == 3
    assert len({tuple(np.round(c.get_facecolor()[0], 3)) for c in filled}) == 3
    scatter = [c for c in ax.collections if not isinstance(c, ContourSet)]
    assert len(scatter) == 1 and len(scatter[0].get_offsets()) == len(X)


def test_decision_boundary_rejects_what_it_cannot_draw(moons):
    X, y = moons
    model, _ = trained("numpy", X, y, epochs=1)
    with pytest.raises(ValueError, match=r"X must have shape \(n_samples, 2\)"):
        plot.decision_boundary(model, np.c_[X, X[:, :1]], y)
    with pytest.raises(ValueError, match=r"y must have shape \(120,\)"):
        plot.decision_boundary(model, X, y[:5])
    with pytest.raises(ValueError, match="resolution must be an integer >= 2"):
        plot.decision_boundary(model, X, y, resolution=1)
    three = nnx.Sequential([nnx.Dense(3, 2, "softmax")])
    with pytest.raises(ValueError, match="must take 2 inputs"):
        plot.decision_boundary(three, X, y)
    regression = nnx.Sequential([nnx.Dense(2, 2)])
    with pytest.raises(ValueError, match="must be a classifier"):
        plot.decision_boundary(regression, X, y)


def test_history_plots_the_recorded_figures(backend, moons, tmp_path):
    X, y = moons
    _, history = trained(backend, X, y, epochs=40)
    fig = plot.history(history)
    loss_ax, acc_ax = fig.axes
    lines = {line.get_label(): line for ax in fig.axes for line in ax.get_lines()}
    assert set(lines) == {"training loss", "validation loss", "training accuracy",
                          "validation accuracy"}
    for label, key in [("training loss", "loss"), ("validation loss", "val_loss"),
                       ("training accuracy", "accuracy"),
                       ("validation accuracy", "val_accuracy")]:
        np.testing.assert_allclose(lines[label].get_ydata(), history[key])
        np.testing.assert_array_equal(lines[label].get_xdata(), np.arange(1, 41))
    assert loss_ax.get_xlabel() == "epoch" and acc_ax.get_ylabel() == "accuracy"
    path = tmp_path / "history.png"
    fig.savefig(path, dpi=80)
    assert_png(path)


def test_history_on_one_axes_uses_a_twin_axis_and_accepts_dicts(moons):
    X, y = moons
    _, history = trained("numpy", X, y, epochs=10)
    fig, ax = plt.subplots()
    plot.history(history, ax=ax)
    assert len(fig.axes) == 2  # accuracy on a twin axis at the right
    fig, ax = plt.subplots()
    plot.history({"loss": [3.0, 2.0, 1.0]}, ax=ax)
    assert len(fig.axes) == 1
    np.testing.assert_array_equal(ax.get_lines()[0].get_ydata(), [3, 2, 1])
    with pytest.raises(TypeError, match="must be an nnx.History"):
        plot.history([1.0, 2.0])
    with pytest.raises(ValueError, match="no 'loss' figures"):
        plot.history({"accuracy": [0.5]})


def test_early_stopping_marks_the_best_epoch(moons):
    X, y = moons
    history = nnx.History()
    for epoch, loss in enumerate([1.0, 0.5, 0.7, 0.8]):
        history.append(epoch, {"loss": loss})
    history.best_epoch = 1
    fig = plot.history(history)
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert "best epoch (2)" in labels


def test_hidden_size_grid(moons, tmp_path):
    X, y = moons
    fig = plot.hidden_size_grid(X, y, sizes=(1, 2, 3, 20, 50), epochs=300, resolution=60,
                                 backend="numpy")
    drawn = [ax for ax in fig.axes if ax.axison]
    assert len(fig.axes) == 8 and len(drawn) == 5  # a 2 x 4 grid, three cells left empty
    titles = [ax.get_title() for ax in drawn]
    assert titles[0].startswith("1 hidden unit: accuracy ")
    assert titles[-1].startswith("50 hidden units: accuracy ")
    accuracies = [float(title.rsplit(" ", 1)[1]) for title in titles]
    assert accuracies[-1] > accuracies[0]  # more units fit the moons better than one
    assert "300 epochs" in fig.get_suptitle()
    path = tmp_path / "grid.png"
    fig.savefig(path, dpi=60)
    width, height = assert_png(path)
    assert width > height


def test_missing_matplotlib_says_what_to_install(moons, monkeypatch):
    X, y = moons
    model, history = trained("numpy", X, y, epochs=1)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    for call in (lambda: plot.decision_boundary(model, X, y), lambda: plot.history(history),
                 lambda: plot.hidden_size_grid(X, y, sizes=(1,), epochs=1)):
        with pytest.raises(ImportError, match=r"pip install 'nnx-arrays\[plot\]'"):
            call()
