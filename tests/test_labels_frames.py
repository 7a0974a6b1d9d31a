"""Labels of any kind and DataFrames' feature names in the library (``Sequential``), and a
DataFrame-trained model used by ``nnx predict`` on a CSV with its columns in another order.

Expected values are the labels themselves (mapped by hand to positions) and the predictions on
the columns in their training order.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from helpers import host

import nnx
from nnx.errors import InvalidDataError

pd = pytest.importorskip("pandas")


def _blobs(n=60, seed=0):
    rng = np.random.default_rng(seed)
    codes = np.arange(n) % 3
    X = rng.normal(scale=0.3, size=(n, 2)) + np.array([[0, 0], [3, 0], [0, 3]])[codes]
    return X, codes


def _model(backend=None, n_out=3, activation="softmax"):
    return nnx.Sequential([nnx.Dense(2, 6, activation="tanh"),
                           nnx.Dense(6, n_out, activation=activation)], seed=0,
                          backend=backend)


@pytest.mark.parametrize("labels", [
    np.array(["cat", "dog", "emu"]),
    np.array([1, 2, 3]),
    np.array([-5, 10, 7]),
])
def test_labels_other_than_positions_come_back_from_predict(backend, labels):
    X, codes = _blobs()
    y = labels[codes]
    model = _model(backend)
    model.fit(X, y, epochs=200, lr=0.5)
    assert model.classes == sorted(labels.tolist())
    predicted = model.predict(X)
    if labels.dtype.kind in "iu":  # integers stay on the device
        assert backend.owns(predicted)
        predicted = host(predicted).astype(np.int64)
    assert np.mean(np.asarray(predicted) == y) >= 0.95
    assert model.accuracy(X, y) >= 0.95
    # The order of model.classes is the output units' order.
    proba = host(model.predict_proba(X))
    np.testing.assert_array_equal(np.asarray(model.classes)[proba.argmax(axis=1)],
                                  np.asarray(predicted))


def test_bool_labels_on_one_sigmoid_unit_come_back_as_bools():
    X, codes = _blobs()
    y = codes == 1
    model = _model(n_out=1, activation="sigmoid")
    model.fit(X, y, epochs=300, lr=0.5)
    assert model.classes == [False, True]
    predicted = model.predict(X)
    assert predicted.dtype == bool and np.mean(predicted == y) >= 0.95


def test_positions_stay_positions():
    X, codes = _blobs()
    model = _model("numpy")  # NumPy's int64 (JAX's default integers are int32)
    model.fit(X, codes, epochs=2)
    assert model.classes is None
    assert nnx.to_numpy(model.predict(X)).dtype == np.int64


def test_labels_are_kept_in_the_file(tmp_path):
    X, codes = _blobs()
    y = np.array(["cat", "dog", "emu"])[codes]
    model = _model()
    model.fit(X, y, epochs=100, lr=0.5)
    model.save(tmp_path / "m.npz")
    loaded = nnx.load(tmp_path / "m.npz")
    assert loaded.classes == ["cat", "dog", "emu"]
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))


def test_label_mistakes_are_named():
    X, codes = _blobs()
    model = _model()
    with pytest.raises(InvalidDataError, match=r"2 different labels \['a', 'b'\].*3 classes"):
        model.fit(X, np.array(["a", "b", "a"])[codes])
    assert model.classes is None and model.optimizer is None
    model.fit(X, np.array(["a", "b", "c"])[codes], epochs=1)
    with pytest.raises(InvalidDataError, match=r"labels the model does not know: \['zebra'\]"):
        model.evaluate(X[:2], ["a", "zebra"])


def test_a_dataframe_gives_the_feature_names_and_columns_are_found_by_name():
    X, codes = _blobs()
    frame = pd.DataFrame({"width": X[:, 0], "height": X[:, 1]})
    model = _model()
    model.fit(frame, codes, epochs=50, lr=0.5)
    assert model.feature_names == ["width", "height"]
    expected = host(model.predict_proba(X))
    np.testing.assert_array_equal(host(model.predict_proba(frame[["height", "width"]])),
                                  expected)
    with pytest.raises(InvalidDataError, match=r"missing \['height'\]"):
        model.predict(frame[["width"]].assign(depth=1.0))
    with pytest.raises(InvalidDataError, match=r"not seen at fit \['depth'\]"):
        model.predict(frame.assign(depth=1.0))
    # A plain array is taken in the training order.
    np.testing.assert_array_equal(host(model.predict_proba(X)), expected)


def test_a_polars_frame_is_read_by_name_too():
    pl = pytest.importorskip("polars")
    X, codes = _blobs()
    model = _model()
    model.fit(pl.DataFrame({"a": X[:, 0], "b": X[:, 1]}), codes, epochs=20)
    assert model.feature_names == ["a", "b"]
    np.testing.assert_array_equal(
        host(model.predict_proba(pl.DataFrame({"b": X[:, 1], "a": X[:, 0]}))),
        host(model.predict_proba(X)))


def test_a_dataframe_model_predicts_a_reordered_csv_through_nnx_predict(tmp_path):
    X, codes = _blobs()
    y = np.array(["cat", "dog", "emu"])[codes]
    frame = pd.DataFrame({"width": X[:, 0], "height": X[:, 1]})
    model = _model()
    model.fit(frame, y, epochs=200, lr=0.5)
    model.save(tmp_path / "m.npz")
    frame[["height", "width"]].assign(kind=y).to_csv(tmp_path / "new.csv", index=False)
    result = subprocess.run([sys.executable, "-m", "nnx", "predict", tmp_path / "m.npz",
                             tmp_path / "new.csv", "--target", "kind"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "prediction,probability_cat,probability_dog,probability_emu"
    assert [line.split(",")[0] for line in lines[1:]] == list(model.predict(frame))
    assert "accuracy" in result.stderr


def test_predict_help_says_what_model_and_output_columns_are():
    result = subprocess.run([sys.executable, "-m", "nnx", "predict", "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "a model file written by 'nnx train --out MODEL.npz' or model.save()" in text
    assert "probability_<class> for each class" in text
    assert "found by name, in any order" in text
