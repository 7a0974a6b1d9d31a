"""The ``nnx`` command end to end, in subprocesses (``python -m nnx``) with NNX_BACKEND set:
train, save, plot, predict, info, bench, and one-line errors with exit status 2."""

import csv
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import CANDIDATES, host
from helpers import resolve as _resolve

import nnx
from nnx import cli

HAS_IO = importlib.util.find_spec("nnx.saving") is not None
# The suite's backend (NNX_BACKEND=cupy on a GPU machine); numpy when unset.
SELECTED = os.environ.get("NNX_BACKEND", "").strip() or "numpy"


def nnx_cmd(*args, backend="numpy", cwd=None):
    """Run ``python -m nnx ARGS`` with NNX_BACKEND=backend (unset for None)."""
    env = {k: v for k, v in os.environ.items() if k != "NNX_BACKEND"}
    if backend is not None:
        env["NNX_BACKEND"] = backend
    env["MPLBACKEND"] = "Agg"
    return subprocess.run([sys.executable, "-m", "nnx", *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def ok(result):
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def table(stdout):
    """The per-epoch table of ``nnx train``: {column: [values]} and the epoch numbers."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["epoch", "loss"])
    header = lines[start].split()
    rows = []
    for line in lines[start + 1:]:
        cells = line.split()
        if not cells or not cells[0].isdigit():
            break
        rows.append([float(c) for c in cells[:len(header)]])
    return {name: [row[j] for row in rows] for j, name in enumerate(header)}


def figures(stdout, label):
    """{'loss': ..., 'accuracy': ...} from a result line such as 'training  loss 0.1 ...'."""
    line = next(line for line in stdout.splitlines() if line.startswith(label + " "))
    words = line.split()
    return {words[i]: float(words[i + 1]) for i in range(1, len(words) - 1)
            if words[i] in ("loss", "accuracy")}


def write_csv(path, header, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def trained_moons(tmp_path_factory):
    """One ``nnx train`` on the suite's backend, saving the model and the plot."""
    folder = tmp_path_factory.mktemp("train")
    result = nnx_cmd("train", "--data", "moons", "--hidden", "4", "--epochs", "600",
                     "--seed", "0", "--test-size", "0.2", "--out", folder / "moons.npz",
                     "--plot", folder / "moons.png", backend=SELECTED)
    if not HAS_IO:
        assert result.returncode == 2 and "nnx.saving" in result.stderr
        pytest.skip("nnx.saving (save/load) is not in this tree")
    return folder, ok(result)


def test_train_reports_backend_progress_results_and_files(trained_moons):
    folder, out = trained_moons
    backend = nnx.get_backend(SELECTED)
    assert out.startswith(f"backend  {backend.name} ")
    assert "data     moons: 200 samples, 2 features, 2 classes; 128 training, 32 validation, " \
           "40 test" in out
    assert "model    2 -> 4 tanh -> 2 softmax (22 parameters)" in out
    epochs = table(out)
    assert epochs["epoch"] == [1, 150, 300, 450, 600]
    assert epochs["loss"][-1] < 0.5 * epochs["loss"][0]  # the loss goes down
    assert "trained 600 epochs in " in out
    train, val, test = (figures(out, label) for label in ("training", "validation", "test"))
    assert train["accuracy"] >= 0.9 and val["accuracy"] >= 0.8 and test["accuracy"] >= 0.8
    assert f"saved model to {folder / 'moons.npz'}" in out
    assert f"saved plot to {folder / 'moons.png'} (decision boundary, loss, accuracy)" in out


def test_train_plot_is_a_picture(trained_moons):
    from test_plot import assert_png

    folder, _ = trained_moons
    width, height = assert_png(folder / "moons.png", min_width=900, min_height=300)
    assert width > 2.5 * height  # three panels side by side


def test_saved_model_loads_and_predicts(trained_moons):
    folder, out = trained_moons
    model = nnx.load(folder / "moons.npz")
    assert (model.n_in, model.n_out) == (2, 2)
    assert [layer.n_out for layer in model.layers] == [4, 2]
    X, y = nnx.datasets.make_moons(200, seed=0)
    X_train, _, y_train, _ = nnx.datasets.train_test_split(X, y, 0.2, seed=0, stratify=True)
    X_train, _, y_train, _ = nnx.datasets.train_test_split(X_train, y_train, 0.2, seed=1,
                                                           stratify=True)
    # the very figure the command printed, recomputed from the file
    assert model.accuracy(X_train, y_train) == pytest.approx(figures(out, "training")
                                                             ["accuracy"], abs=1e-3)


def test_predict_writes_predictions_and_reports_accuracy(trained_moons, tmp_path):
    folder, _ = trained_moons
    X, y = nnx.datasets.make_moons(60, seed=7)
    data = write_csv(tmp_path / "points.csv", ["x1", "x2", "label"],
                     [[repr(a), repr(b), int(c)] for (a, b), c in zip(X.tolist(), y)])
    out = ok(nnx_cmd("predict", folder / "moons.npz", data, "--target", "label", "--out",
                     tmp_path / "pred.csv"))
    with open(tmp_path / "pred.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["prediction", "probability_0", "probability_1"]
    assert len(rows) == 61
    labels = np.array([int(row[0]) for row in rows[1:]])
    proba = np.array([[float(p) for p in row[1:]] for row in rows[1:]])
    np.testing.assert_allclose(proba.sum(axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(labels, proba.argmax(axis=1))
    model = nnx.load(folder / "moons.npz")
    np.testing.assert_array_equal(labels, host(model.predict(X)))
    assert f"accuracy {np.mean(labels == y):.3f} on 60 rows ('label')" in out
    assert f"wrote 60 predictions to {tmp_path / 'pred.csv'}" in out

    # without --out: the CSV on stdout, the accuracy on stderr; a features-only file works
    features = write_csv(tmp_path / "features.csv", ["x1", "x2"], X[:5].tolist())
    result = nnx_cmd("predict", folder / "moons.npz", features, backend="array_api_strict")
    lines = ok(result).splitlines()
    assert lines[0] == "prediction,probability_0,probability_1" and len(lines) == 6
    assert [int(line.split(",")[0]) for line in lines[1:]] == list(labels[:5])
    assert result.stderr == ""


def test_predict_with_the_label_column_left_in_says_to_name_it(trained_moons, tmp_path):
    folder, _ = trained_moons
    data = write_csv(tmp_path / "points.csv", ["x1", "x2", "label"], [[0.1, 0.2, 1]])
    result = nnx_cmd("predict", folder / "moons.npz", data)
    assert result.returncode == 2
    assert "--target COLUMN" in result.stderr and "Traceback" not in result.stderr


def available(ids):
    out = []
    for id_, name, device in CANDIDATES:
        wanted = os.environ.get("NNX_BACKEND", "").strip().lower()
        if id_ in ids and wanted in ("", "auto", name) and _resolve(name, device)[0]:
            out.append(pytest.param(name, device, id=id_))
    return out


@pytest.mark.parametrize("name,device", available({"numpy", "strict-device1", "torch-cpu",
                                                    "cupy"}))
def test_train_runs_on_every_backend(name, device, tmp_path):
    """Including strict's device1, whose arrays reach NumPy only through nnx.to_numpy."""
    args = ["train", "--data", "spiral", "--samples", "90", "--hidden", "8", "--optimizer",
            "adam", "--epochs", "30", "--quiet", "--plot", tmp_path / "spiral.png",
            "--backend", name]
    if device is not None:
        args += ["--device", device]
    out = ok(nnx_cmd(*args, backend=None))
    first = out.splitlines()[0]
    assert first.startswith(f"backend  {name} ") and first.endswith(", float32")
    where = {"numpy": " on cpu", "array_api_strict": " on device1", "torch": " on cpu",
             "cupy": "(cuda:0)"}[name]
    assert where in first
    assert "3 classes" in out and "  epoch" not in out  # --quiet: no table
    assert "saved plot to" in out and (tmp_path / "spiral.png").stat().st_size > 10_000


def test_train_digits_with_a_test_set_and_early_stopping():
    pytest.importorskip("sklearn")
    out = ok(nnx_cmd("train", "--data", "digits", "--hidden", "32", "--optimizer", "adam",
                     "--lr", "0.01", "--epochs", "200", "--batch-size", "64",
                     "--test-size", "0.25", "--early-stopping", "3"))
    assert "digits: 1797 samples, 64 features, 10 classes" in out
    assert "stopped early: no better validation loss for 3 epochs" in out
    best = int(out.split("restored the weights of epoch ")[1].split()[0])
    assert f"{best:7d}  " in out and "(best)" in out
    assert figures(out, "test")["accuracy"] >= 0.9
    assert "(450 samples)" in out


def test_info_lists_the_backends():
    out = ok(nnx_cmd("info"))
    assert out.startswith(f"nnx {nnx.__version__} (numpy {np.__version__}")
    assert "selected     numpy" in out
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()
            if line.startswith("  ")}
    assert rows["numpy"] == "yes"
    assert set(rows) == {id_ for id_, _, _ in CANDIDATES}  # every target of the registry
    assert set(rows.values()) <= {"yes", "no"}
    cupy_usable = _resolve("cupy", None)[0] is not None
    assert rows["cupy"] == ("yes" if cupy_usable else "no")


def test_info_with_a_bad_nnx_backend_still_lists_the_backends():
    result = nnx_cmd("info", backend="bogus")
    assert result.returncode == 2
    assert result.stderr.startswith("nnx: error: NNX_BACKEND='bogus' is not a backend")
    assert len(result.stderr.splitlines()) == 1
    assert "  numpy" in result.stdout


@pytest.fixture
def bad_csv(tmp_path):
    return write_csv(tmp_path / "bad.csv", ["x1", "x2", "label"], [[1, 2, 0], [3, "abc", 1]])


ERRORS = [
    (["train", "--data", "nosuch"], "numpy", "data set 'nosuch' is unknown"),
    (["train", "--lr", "-1", "--epochs", "2"], "numpy",
         "lr must be a finite number > 0; received lr=-1.0"),
    (["train", "--lr", "abc"], "numpy", "argument --lr: invalid float value: 'abc'"),
    (["train", "--hidden", "4", "0"], "numpy", "--hidden sizes must be integers >= 1; "
                                               "received 4 0"),
    (["train", "--seed", "-1"], "numpy", "--seed must be an integer >= 0; received -1"),
    (["train", "--validation-split", "1.5"], "numpy",
     "--validation-split must be a fraction in [0, 1); received 1.5"),
    (["train", "--test-size", "0"], "numpy", "--test-size must be a fraction in (0, 1)"),
    (["train", "--data", "HUGE", "--target", "label"], "numpy",
     "the labels hold 60 different classes in 60 rows; is the label column (--target) the "
     "right one?"),
    (["train", "--data", "NAN", "--target", "label"], "numpy",
     "line 3, column 'x1': 'nan' is not a finite number"),
    (["train", "--backend", "torch", "--device", "bogus", "--epochs", "1"], "numpy",
     "device='bogus' is not a usable torch device"),
    (["train", "--backend", "numpy", "--device", "7", "--epochs", "1"], "numpy",
     "device='7' is not a numpy device"),
    (["train", "--epochs", "0"], "numpy", "--epochs must be >= 1"),
    (["train", "--data", "missing.csv", "--target", "y"], "numpy", "cannot read the CSV"),
    (["train", "--data", "BAD", "--target", "label"], "numpy",
     "line 3, column 'x2': 'abc' is not a number"),
    (["train", "--data", "BAD"], "numpy", "name its label column with --target COLUMN"),
    (["train", "--data", "digits", "--samples", "10"], "numpy", "--data digits is fixed"),
    (["train", "--plot", "out.xyz"], "numpy", "matplotlib cannot write .xyz files"),
    (["train", "--out", "no/such/folder/m.npz"], "numpy", "does not exist"),
    (["train", "--epochs", "2"], "bogus", "NNX_BACKEND='bogus' is not a backend"),
    (["train", "--dtype", "float64", "--backend", "array_api_strict", "--device",
      "no_float64"], "numpy", "float64' is not available"),
    (["predict", "missing.npz", "BAD"], "numpy", "missing.npz: no such model file"),
    (["predict", "JUNK", "BAD"], "numpy", "junk.npz: it is not a zip (.npz) archive"),
    (["frobnicate"], "numpy", "invalid choice: 'frobnicate'"),
]


@pytest.mark.parametrize("args,backend,message", ERRORS,
                         ids=[" ".join(args) + f" [{be}]" for args, be, _ in ERRORS])
def test_errors_are_one_line_with_status_2(args, backend, message, bad_csv, tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a model")
    # A label per row (a feature column given as --target): refused, not a 60-class softmax.
    huge = write_csv(tmp_path / "huge.csv", ["x1", "label"], [[0.1 * i, 1e12 + i]
                                                              for i in range(60)])
    nan = write_csv(tmp_path / "nan.csv", ["x1", "label"], [[0.1, 0], ["nan", 1], [0.3, 1]])
    files = {"BAD": str(bad_csv), "JUNK": str(tmp_path / "junk.npz"), "HUGE": str(huge),
             "NAN": str(nan)}
    if "torch" in args:
        pytest.importorskip("torch")
    args = [files.get(a, a) for a in args]
    result = nnx_cmd(*args, backend=backend, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("nnx: error: ")
    assert message in lines[0]
    assert result.stdout == ""


def test_no_command_prints_the_help_and_version_works():
    result = nnx_cmd()
    assert result.returncode == 2 and "train" in result.stderr and "predict" in result.stderr
    assert ok(nnx_cmd("--version")).strip() == f"nnx {nnx.__version__}"


def test_bench_runs_the_checkouts_report_with_every_argument(tmp_path):
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "report.py").write_text("SEEN = []\n"
                                     "def main(argv):\n"
                                     "    print('argv', argv)\n"
                                     "    return 3\n")
    result = subprocess.run([sys.executable, "-m", "nnx", "bench", "--quick", "--help", "x"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stderr
    assert result.stdout.strip() == "argv ['--bench-dir', 'bench', '--quick', '--help', 'x']"


def test_bench_outside_a_checkout_is_a_clean_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "nnx", "bench", "--quick"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("nnx: error: 'nnx bench' runs the benchmarks of an nnx "
                                    "source checkout, and bench/report.py does not exist")
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_failing_plot_or_prediction_write_leaves_the_old_file(trained_moons, tmp_path,
                                                                 monkeypatch, capsys):
    """Figures and predictions are written like models: temporary file, then rename."""
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    folder, _ = trained_moons
    plot, pred = tmp_path / "old.png", tmp_path / "old.csv"
    plot.write_bytes(b"previous figure")
    pred.write_text("previous predictions\n")
    features = write_csv(tmp_path / "features.csv", ["x1", "x2"], [[0.0, 0.5], [1.0, -0.2]])

    def broken_savefig(self, handle, **kwargs):
        handle.write(b"\x89PNG half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    assert cli.main(["train", "--epochs", "5", "--quiet", "--plot", str(plot)]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert plot.read_bytes() == b"previous figure"

    def broken_writerows(self, rows):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(cli.csv, "writer", lambda handle, **kw: type(
        "W", (), {"writerow": lambda self, row: handle.write(",".join(row) + "\n"),
                  "writerows": broken_writerows})())
    assert cli.main(["predict", str(folder / "moons.npz"), str(features), "--out",
                     str(pred)]) == 2
    assert "Input/output error" in capsys.readouterr().err
    assert pred.read_text() == "previous predictions\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features.csv", "old.csv", "old.png"]


def test_progress_into_a_log_is_plain_lines(tmp_path):
    """stderr that is a file (2> log) gets lines, no carriage returns; the figures shown are
    the epoch's own."""
    with open(tmp_path / "log", "w") as log:
        result = subprocess.run([sys.executable, "-m", "nnx", "train", "--epochs", "30",
                                 "--lr", "0.5"], stdout=subprocess.PIPE, stderr=log, text=True,
                                timeout=300, env={**os.environ, "NNX_BACKEND": "numpy"})
    assert result.returncode == 0
    text = (tmp_path / "log").read_text()
    assert "\r" not in text
    lines = [line for line in text.splitlines() if line.startswith("epoch ")]
    assert lines[0].startswith("epoch 1/30  loss ") and lines[-1].startswith("epoch 30/30  loss ")
    last_loss = float(lines[-1].split("  loss ")[1].split()[0])
    table_last = result.stdout.split("     30  ")[1].split()[0]
    assert last_loss == pytest.approx(float(table_last), abs=1e-4)


def test_a_run_stuck_at_the_majority_class_is_warned_about(tmp_path):
    rng = np.random.default_rng(0)
    rows = [[float(a), float(b), int(a > 5000)] for a, b in
            zip(rng.uniform(0, 1e4, 60), rng.uniform(0, 1, 60))]
    data = write_csv(tmp_path / "d.csv", ["big", "small", "label"], rows)
    result = nnx_cmd("train", "--data", data, "--target", "label", "--epochs", "5",
                     "--lr", "50", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "warning: the features' ranges differ by a factor of" not in result.stderr  # scaled
    result = nnx_cmd("train", "--data", data, "--target", "label", "--epochs", "5",
                     "--lr", "50", "--quiet", "--no-scale")
    assert "warning: the features' ranges differ by a factor of" in result.stderr


def _cancer_csv(path, labels=None, order=None):
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    bunch = sklearn_datasets.load_breast_cancer()
    names = [n.replace(" ", "_") for n in bunch.feature_names]
    order = list(range(len(names))) if order is None else order
    rows = [[repr(float(row[i])) for i in order] + [t if labels is None else labels[t]]
            for row, t in zip(bunch.data, bunch.target)]
    return write_csv(path, [names[i] for i in order] + ["target"], rows)


def test_breast_cancer_csv_trains_as_the_built_in_set(tmp_path):
    """The CSV is scaled by default exactly as the built-in set: the same figures."""
    data = _cancer_csv(tmp_path / "cancer.csv")
    common = ["--hidden", "16", "8", "--epochs", "300", "--quiet"]
    from_csv = ok(nnx_cmd("train", "--data", data, "--target", "target", *common))
    built_in = ok(nnx_cmd("train", "--data", "breast_cancer", *common))
    assert figures(from_csv, "validation") == figures(built_in, "validation")
    assert figures(from_csv, "validation")["accuracy"] >= 0.95


def test_string_labels_and_reordered_columns_round_trip(tmp_path):
    data = _cancer_csv(tmp_path / "cancer.csv", labels=["malignant", "benign"])
    ok(nnx_cmd("train", "--data", data, "--target", "target", "--hidden", "8", "--epochs",
               "200", "--quiet", "--out", tmp_path / "m.npz"))
    shuffled = _cancer_csv(tmp_path / "shuffled.csv", labels=["malignant", "benign"],
                           order=list(range(30))[::-1])
    result = ok(nnx_cmd("predict", tmp_path / "m.npz", shuffled, "--target", "target",
                        "--out", tmp_path / "p.csv"))
    assert float(result.split("accuracy ")[1].split()[0]) >= 0.97
    with open(tmp_path / "p.csv") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["prediction", "probability_benign", "probability_malignant"]
    assert {row[0] for row in rows[1:]} == {"benign", "malignant"}


def test_predict_refuses_missing_and_unknown_columns_by_name(tmp_path):
    data = _cancer_csv(tmp_path / "cancer.csv")
    ok(nnx_cmd("train", "--data", data, "--target", "target", "--hidden", "4", "--epochs",
               "5", "--quiet", "--out", tmp_path / "m.npz"))
    lines = (tmp_path / "cancer.csv").read_text().splitlines()
    renamed = [lines[0].replace("mean_radius", "radius")] + lines[1:]
    (tmp_path / "renamed.csv").write_text("\n".join(renamed) + "\n")
    result = nnx_cmd("predict", tmp_path / "m.npz", tmp_path / "renamed.csv", "--target",
                     "target")
    assert result.returncode == 2
    assert "lacks the column 'mean_radius'" in result.stderr and "'radius'" in result.stderr


def test_one_based_labels_make_no_phantom_class(tmp_path):
    rows = [[float(i % 7), float(i % 3), 1 + (i % 2)] for i in range(40)]
    data = write_csv(tmp_path / "d.csv", ["a", "b", "label"], rows)
    out = ok(nnx_cmd("train", "--data", data, "--target", "label", "--epochs", "5",
                     "--quiet", "--out", tmp_path / "m.npz"))
    assert "2 classes" in out
    result = ok(nnx_cmd("predict", tmp_path / "m.npz", data, "--target", "label"))
    assert result.splitlines()[0] == "prediction,probability_1,probability_2"


def test_regression_from_a_csv_is_inferred_trained_and_predicted(tmp_path):
    rng = np.random.default_rng(0)
    a, b = rng.uniform(-1, 1, 300), rng.uniform(0, 100, 300)
    rows = [[x1, x2, 2 * x1 - x2 / 50 + 0.3] for x1, x2 in zip(a, b)]
    data = write_csv(tmp_path / "r.csv", ["a", "b", "value"], rows)
    out = ok(nnx_cmd("train", "--data", data, "--target", "value", "--hidden", "8",
                     "--optimizer", "adam", "--lr", "0.01", "--epochs", "300",
                     "--batch-size", "32", "--quiet", "--out", tmp_path / "r.npz"))
    assert "a regression target" in out and "-> 1 identity" in out
    r2 = float(out.split("validation")[1].split("R² ")[1].split()[0])
    assert r2 > 0.95
    result = ok(nnx_cmd("predict", tmp_path / "r.npz", data, "--target", "value",
                        "--out", tmp_path / "p.csv"))
    assert "mean squared error" in result and float(result.split("R² ")[1].split()[0]) > 0.95
    assert (tmp_path / "p.csv").read_text().splitlines()[0] == "prediction"
