"""Faults from an outside audit: file modes and links kept on re-saving, errors that name the
path the user gave (never a temporary file), CSV files that are not what they seem, damaged
and hostile model files, and the loader under random damage (hypothesis)."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import tracemalloc
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nnx
import nnx.saving
from nnx import cli
from nnx.errors import InvalidDataError, InvalidParameterError, ModelFileError

X, Y = nnx.datasets.make_moons(40, seed=0)


def small(epochs=1, dtype="float64"):
    model = nnx.Sequential([nnx.Dense(2, 3, "tanh"), nnx.Dense(3, 2, "softmax")], dtype=dtype,
                           seed=0)
    model.fit(X, Y, epochs=epochs, lr=0.5)
    return model


def mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def npy_bytes(array):
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def metadata_bytes(metadata):
    return npy_bytes(np.frombuffer(json.dumps(metadata).encode(), dtype=np.uint8))


def one_layer_metadata(layers=None):
    config = {"layers": layers if layers is not None else
              [{"type": "Dense", "config": {"n_in": 2, "n_out": 2, "activation": "softmax"}}],
              "dtype": "float64"}
    return {"format": "nnx.Sequential", "format_version": 2, "nnx_version": nnx.__version__,
            "config": config, "dtype": "float64", "backend": "numpy", "device": "cpu",
            "seed": 0, "epochs_trained": 0}


# -- 1. re-saving keeps the file's mode, refuses a read-only file, follows links ---------------
def test_resave_keeps_the_files_mode(tmp_path):
    path = tmp_path / "model.npz"
    small().save(path)
    os.chmod(path, 0o600)
    small(epochs=2).save(path)
    assert mode(path) == 0o600
    assert nnx.load(path).epochs_trained == 2


def test_resave_refuses_a_read_only_file_and_keeps_it(tmp_path):
    path = tmp_path / "model.npz"
    small().save(path)
    os.chmod(path, 0o444)
    before = path.read_bytes()
    with pytest.raises(PermissionError, match=r"nnx.save: cannot write .*model.npz.*read-only"):
        small(epochs=2).save(path)
    assert path.read_bytes() == before and mode(path) == 0o444
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]


def test_save_through_a_symlink_updates_its_target(tmp_path):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "model.npz"
    small().save(target)
    os.chmod(target, 0o640)
    link = tmp_path / "link.npz"
    link.symlink_to(target)
    small(epochs=2).save(link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert nnx.load(target).epochs_trained == 2 and mode(target) == 0o640
    assert sorted(os.listdir(tmp_path)) == ["link.npz", "real"]
    assert sorted(os.listdir(tmp_path / "real")) == ["model.npz"]


def _csv(path, rows):
    path.write_text("\n".join(",".join(map(str, row)) for row in rows) + "\n")
    return path


def test_predict_out_keeps_mode_and_refuses_a_read_only_file(tmp_path, capsys):
    model_path = tmp_path / "model.npz"
    small().save(model_path)
    data = _csv(tmp_path / "points.csv", [["a", "b"], [0.1, 0.2], [1.0, -0.5]])
    out = tmp_path / "pred.csv"
    out.write_text("old\n")
    os.chmod(out, 0o600)
    assert cli.main(["predict", str(model_path), str(data), "--out", str(out)]) == 0
    assert mode(out) == 0o600 and out.read_text().startswith("prediction")
    os.chmod(out, 0o444)
    before = out.read_text()
    assert cli.main(["predict", str(model_path), str(data), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "pred.csv" in err and "read-only" in err and len(err.strip().splitlines()) == 1
    assert out.read_text() == before


# -- 2. errors name the user's path; temporary files are never left behind -----------------------
def test_save_to_an_empty_name_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidParameterError, match=r"nnx.save: path must be a file name; "
                                                    r"received path=''"):
        small().save("")
    assert os.listdir(tmp_path) == []


def test_save_to_a_name_ending_in_a_slash_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(IsADirectoryError, match=r"nnx.save: 'dir/' names a folder"):
        small().save("dir/")
    assert os.listdir(tmp_path) == []


def test_save_with_a_long_name_names_it_not_a_temporary_file(tmp_path):
    model = small()
    name = "m" * 250  # fits (255 is the usual limit), but a temporary name built on it may not
    model.save(tmp_path / name)
    assert os.listdir(tmp_path) == [name]
    too_long = "m" * 300
    with pytest.raises(OSError) as info:
        model.save(tmp_path / too_long)
    assert too_long in str(info.value)
    assert "tmp" not in str(info.value).replace(str(tmp_path), "")  # no temporary file named
    assert os.listdir(tmp_path) == [name]


def test_save_into_a_read_only_folder_names_the_path(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    os.chmod(folder, 0o555)
    try:
        with pytest.raises(PermissionError) as info:
            small().save(folder / "model.npz")
    finally:
        os.chmod(folder, 0o755)
    text = str(info.value)
    assert "model.npz" in text and "read-only" in text
    assert "tmp" not in text.replace(str(tmp_path), "")
    assert os.listdir(folder) == []


def test_a_save_killed_midway_leaves_a_file_the_next_save_removes(tmp_path):
    path = tmp_path / "model.npz"
    small().save(path)
    script = (
        "import os, signal, numpy as np, nnx\n"
        "X, Y = nnx.datasets.make_moons(40, seed=0)\n"
        "m = nnx.Sequential([nnx.Dense(2, 3, 'tanh'), nnx.Dense(3, 2, 'softmax')], seed=0)\n"
        "def die(member, array, allow_pickle=True):\n"
        "    member.write(b'partial')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "np.lib.format.write_array = die\n"
        f"m.save({str(path)!r})\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert result.returncode == -9
    left = sorted(os.listdir(tmp_path))
    assert len(left) == 2 and "model.npz" in left  # the killed write's temporary file
    assert nnx.load(path).epochs_trained == 1  # the old file is intact
    small(epochs=2).save(path)
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]
    assert nnx.load(path).epochs_trained == 2


# -- 3. CSV files ------------------------------------------------------------------------------
def test_csv_without_a_header_is_refused(tmp_path):
    path = _csv(tmp_path / "points.csv", [[0.1 * i, 0.2 * i, i % 2] for i in range(10)])
    with pytest.raises(InvalidDataError, match=r"points.csv, line 1: .*looks like data, not a "
                                               r"header"):
        nnx.datasets.load_csv(path)


def test_predict_on_a_csv_without_a_header_fails_and_writes_nothing(tmp_path, capsys):
    model_path = tmp_path / "model.npz"
    small().save(model_path)
    data = _csv(tmp_path / "points.csv", [[0.1 * i, -0.2 * i] for i in range(10)])
    out = tmp_path / "pred.csv"
    assert cli.main(["predict", str(model_path), str(data), "--out", str(out)]) == 2
    assert "header" in capsys.readouterr().err
    assert not out.exists()


def test_csv_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfa,b,label\n1,2,0\n3,4,1\n")
    X_, y, features = nnx.datasets.load_csv(path, target="a")
    assert features == ["b", "label"]
    np.testing.assert_array_equal(y, [1, 3])


def test_csv_not_in_utf8_names_the_file_and_line(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("a,b\n1,2\n3,4\n# caf\u00e9\n".encode("latin-1"))
    with pytest.raises(InvalidDataError, match=r"latin.csv, line 4: .*not UTF-8"):
        nnx.datasets.load_csv(path)


@pytest.mark.parametrize("delimiter", [";", "\t"])
def test_csv_with_another_delimiter_is_read(tmp_path, delimiter):
    path = tmp_path / "semi.csv"
    path.write_text(delimiter.join(["a", "b", "label"]) + "\n"
                    + delimiter.join(["1.5", "2", "0"]) + "\n"
                    + delimiter.join(["3", "4", "1"]) + "\n")
    X_, y, features = nnx.datasets.load_csv(path, target="label")
    assert features == ["a", "b"]
    np.testing.assert_array_equal(X_, [[1.5, 2], [3, 4]])


@pytest.mark.parametrize("cell", ["", " ", "NA"])
def test_csv_empty_cell_is_called_a_missing_value(tmp_path, cell):
    path = tmp_path / "gap.csv"
    path.write_text(f"a,b\n1,2\n3,{cell}\n")
    with pytest.raises(InvalidDataError, match=r"gap.csv, line 3, column 'b': .*missing value") \
            as info:
        nnx.datasets.load_csv(path)
    assert "categories" not in str(info.value)


# -- 4. hostile and damaged model files --------------------------------------------------------
def _patch_u16(data, signature, offset, value):
    """Set a 2-byte field at `offset` of every zip header starting with `signature`."""
    out = bytearray(data)
    start = 0
    while (k := out.find(signature, start)) >= 0:
        out[k + offset:k + offset + 2] = value.to_bytes(2, "little")
        start = k + 4
    return bytes(out)


@pytest.mark.parametrize("where", ["central", "local", "both"])
def test_zip_version_needed_too_new_is_a_model_file_error(tmp_path, where):
    path = tmp_path / "model.npz"
    model = small()
    model.save(path)
    data = path.read_bytes()
    if where in ("central", "both"):
        data = _patch_u16(data, b"PK\x01\x02", 6, 99)
    if where in ("local", "both"):
        data = _patch_u16(data, b"PK\x03\x04", 4, 99)
    path.write_bytes(data)
    if where == "local":  # zipfile trusts the central directory's version: read as before
        np.testing.assert_array_equal(nnx.load(path).get_weights()[0], model.get_weights()[0])
        return
    with pytest.raises(ModelFileError, match="needs a zip feature that nnx does not read"):
        nnx.load(path)


def test_metadata_nested_very_deeply(tmp_path):
    path = tmp_path / "deep.npz"
    text = "[" * 100_000 + "]" * 100_000
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("metadata.npy",
                         npy_bytes(np.frombuffer(text.encode(), dtype=np.uint8)))
    with pytest.raises(ModelFileError, match="nested too deeply"):
        nnx.load(path)


def test_metadata_with_too_many_layers_gives_a_short_message(tmp_path):
    path = tmp_path / "many.npz"
    layers = [{"type": "Dense", "config": {"n_in": 1, "n_out": 1}}] * 200_000
    text = json.dumps(one_layer_metadata(layers), separators=(",", ":"))
    assert len(text) > 1 << 20  # over the metadata bound; a smaller one checks MAX_LAYERS below
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("metadata.npy", metadata_bytes(one_layer_metadata(layers)))
    with pytest.raises(ModelFileError) as info:
        nnx.load(path)
    assert len(str(info.value)) < 300
    layers = [{}] * 200_000  # 600 kB of JSON: inside the bound, over MAX_LAYERS
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("metadata.npy", metadata_bytes(one_layer_metadata(layers)))
    with pytest.raises(ModelFileError, match=f"200000 layers; nnx loads at most "
                                             f"{nnx.saving.MAX_LAYERS}") as info:
        nnx.load(path)
    assert len(str(info.value)) < 300


@pytest.mark.parametrize("path", [None, 3, b"model.npz", 2.5, ["model.npz"]])
def test_load_of_something_not_a_path(path):
    with pytest.raises(InvalidParameterError, match="nnx.load: path must be a file name"):
        nnx.load(path)


def _bomb(path, name, declared_small):
    """A 1-layer model file whose member `name` inflates to 50 MB of zeros; with
    `declared_small` its headers declare the honest size of a (2, 2) float64 array."""
    header = io.BytesIO()
    big = (50 << 20) // 8
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False,
                                                  "shape": (big,)})
    zeros = bytes(1 << 20)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("metadata.npy", metadata_bytes(one_layer_metadata()))
        archive.writestr("layers.0.b.npy", npy_bytes(np.zeros(2)))
        if name != "layers.0.W.npy":
            archive.writestr("layers.0.W.npy", npy_bytes(np.zeros((2, 2))))
        with archive.open(name, "w") as member:
            member.write(header.getvalue())
            for _ in range(50):
                member.write(zeros)
    data = path.read_bytes()
    if declared_small:
        fake = len(npy_bytes(np.zeros((2, 2))))
        out = bytearray(data)
        for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
            start = 0
            while (k := out.find(signature, start)) >= 0:
                name_at = k + (30 if signature == b"PK\x03\x04" else 46)
                if out[name_at:name_at + len(name)] == name.encode():
                    out[k + offset:k + offset + 4] = fake.to_bytes(4, "little")
                start = k + 4
        data = bytes(out)
    path.write_bytes(data)
    assert len(data) < 1 << 20  # 50 MB inflated, well under 1 MB on disk
    return path


@pytest.mark.parametrize("name, declared_small", [
    ("layers.0.W.npy", False), ("layers.0.W.npy", True), ("layers.9.W.npy", False)],
    ids=["declared", "declared-small", "unlisted"])
def test_zip_bomb_is_refused_before_it_is_inflated(tmp_path, name, declared_small):
    path = _bomb(tmp_path / "bomb.npz", name, declared_small)
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError) as info:
            nnx.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 << 20  # 50 MB were never inflated
    assert "bomb.npz" in str(info.value) and len(str(info.value)) < 400


def _npy_header(shape, descr="<f8"):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": descr, "fortran_order": False,
                                                  "shape": shape})
    return header.getvalue()


DENSE_2_2 = [{"type": "Dense", "config": {"n_in": 2, "n_out": 2, "activation": "softmax"}}]
HUGE_DENSE = [{"type": "Dense", "config": {"n_in": 1 << 14, "n_out": 1 << 14,
                                           "activation": "softmax"}}]
HEADERS_THAT_LIE = {
    # a (2, 2) layer whose W member's .npy header declares 1 GiB, with 32 bytes behind it
    "parameter-header": ({"metadata.npy": metadata_bytes(one_layer_metadata(DENSE_2_2)),
                          "layers.0.W.npy": _npy_header((1 << 27,)) + bytes(32),
                          "layers.0.b.npy": npy_bytes(np.zeros(2))},
                         r"'layers.0.W.npy' declares a float64 array of shape \(134217728,\) "
                         r"\(1073741824 bytes\) but holds 32 bytes"),
    # the metadata member's header declares 1 GiB of JSON
    "metadata-header": ({"metadata.npy": _npy_header((1 << 30,), "|u1") + b"{}"},
                        r"'metadata.npy' declares a uint8 array .*but holds 2 bytes"),
    # an architecture of 2 GiB of weights, headers that agree with it, no data
    "huge-architecture": ({"metadata.npy": metadata_bytes(one_layer_metadata(HUGE_DENSE)),
                           "layers.0.W.npy": _npy_header((1 << 14, 1 << 14)) + bytes(64),
                           "layers.0.b.npy": _npy_header((1 << 14,))},
                          r"'layers.0.W.npy' declares a float64 array of shape "
                          r"\(16384, 16384\) \(2147483648 bytes\) but holds 64 bytes"),
}


@pytest.mark.parametrize("case", list(HEADERS_THAT_LIE))
def test_declared_shapes_are_refused_before_they_are_allocated(tmp_path, case):
    """A few hundred bytes that declare gigabytes: numpy's reader would allocate the declared
    array before finding the data missing."""
    members, reason = HEADERS_THAT_LIE[case]
    path = tmp_path / "liar.npz"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    assert path.stat().st_size < 4096
    nnx.saving._parse_npy(npy_bytes(np.zeros(3)), "warm-up", str(path))  # imports, not data
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError, match=reason):
            nnx.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 << 20


# -- 5. the command line: outputs checked first, values too large for float32 -----------------
@pytest.mark.parametrize("option", ["--out", "--plot"])
def test_train_output_into_a_read_only_folder_is_found_before_training(tmp_path, capsys,
                                                                        option):
    pytest.importorskip("matplotlib")
    folder = tmp_path / "locked"
    folder.mkdir()
    os.chmod(folder, 0o555)
    name = "model.npz" if option == "--out" else "plot.png"
    try:
        status = cli.main(["train", "--data", "xor", "--epochs", "5", "--quiet",
                           option, str(folder / name)])
    finally:
        os.chmod(folder, 0o755)
    captured = capsys.readouterr()
    assert status == 2
    assert captured.out == ""  # nothing trained, nothing printed
    assert option in captured.err and name in captured.err and "read-only" in captured.err
    assert os.listdir(folder) == []


def test_predict_out_into_a_read_only_folder(tmp_path, capsys):
    model_path = tmp_path / "model.npz"
    small().save(model_path)
    data = _csv(tmp_path / "points.csv", [["a", "b"], [0.1, 0.2]])
    folder = tmp_path / "locked"
    folder.mkdir()
    os.chmod(folder, 0o555)
    try:
        status = cli.main(["predict", str(model_path), str(data), "--out",
                           str(folder / "p.csv")])
    finally:
        os.chmod(folder, 0o755)
    assert status == 2
    err = capsys.readouterr().err
    assert "--out" in err and "p.csv" in err and "read-only" in err


def test_csv_value_too_large_for_float32(tmp_path, capsys):
    model_path = tmp_path / "model.npz"
    small(dtype="float32").save(model_path)
    data = _csv(tmp_path / "points.csv", [["a", "b", "label"], [0.1, 1e39, 0], [0.2, 0.3, 1]])
    assert cli.main(["predict", str(model_path), str(data), "--target", "label"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "too large for float32" in err
    assert "learning rate" not in err
    assert cli.main(["train", "--data", str(data), "--target", "label", "--epochs", "2",
                     "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "too large for float32" in err
    assert "learning rate" not in err


# -- 6. random damage: a clear error or the very same weights ----------------------------------
@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    model = small(epochs=3)
    path = tmp_path_factory.mktemp("fuzz") / "model.npz"
    model.save(path)
    return path.read_bytes(), model.get_weights()


def _load_damaged(tmp_path, data, weights):
    path = tmp_path / "damaged.npz"
    path.write_bytes(data)
    try:
        loaded = nnx.load(path)
    except ModelFileError:
        return
    for got, want in zip(loaded.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(got, want)


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_byte_flips_give_a_model_file_error_or_the_same_weights(tmp_path, model_file,
                                                                       data):
    original, weights = model_file
    damaged = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4), label="flips")):
        k = data.draw(st.integers(0, len(damaged) - 1), label="offset")
        damaged[k] ^= data.draw(st.integers(1, 255), label="mask")
    _load_damaged(tmp_path, bytes(damaged), weights)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_truncations_give_a_model_file_error(tmp_path, model_file, data):
    original, weights = model_file
    keep = data.draw(st.integers(0, len(original) - 1), label="keep")
    _load_damaged(tmp_path, original[:keep], weights)

