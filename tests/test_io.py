"""Saving and loading models: round trips on and across backends, damaged files, atomic
writes, and no pickle anywhere."""

from __future__ import annotations

import io
import json
import os
import pickle
import sys
import zipfile

import numpy as np
import pytest
from helpers import assert_on_backend, available_cpu_backends, host, tolerance

import nnx
import nnx.saving
from nnx.saving import ModelFileError

X, Y = nnx.datasets.make_moons(50, seed=0)


def trained(backend="numpy", dtype="float64", epochs=3):
    model = nnx.Sequential([nnx.Dense(2, 3, "tanh"), nnx.Dense(3, 2, "softmax")], dtype=dtype,
                           backend=backend, seed=0)
    model.fit(X, Y, epochs=epochs, lr=0.5)
    return model


def dtype_for(backend):
    return "float64" if backend.supports_float64 else "float32"


def npy_bytes(array, allow_pickle=False):
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=allow_pickle)
    return buffer.getvalue()


def read_members(path):
    """The file's members as raw bytes, read independently of nnx.saving."""
    with zipfile.ZipFile(path) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def read_metadata(path):
    data = read_members(path)["metadata.npy"]
    return json.loads(np.lib.format.read_array(io.BytesIO(data)).tobytes().decode())


def write_zip(path, members):
    """A hand-made archive: ``{member name: bytes}``."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def rewrite(src, dst, change=None, metadata=None):
    """Copy the model file `src` to `dst`, letting `change(arrays, metadata)` edit the arrays
    (``{name: ndarray}``) and the metadata (a dict) in place."""
    members = {name.removesuffix(".npy"): np.lib.format.read_array(io.BytesIO(data))
               for name, data in read_members(src).items()}
    meta = json.loads(members.pop("metadata").tobytes().decode())
    if change is not None:
        change(members, meta)
    text = metadata if metadata is not None else json.dumps(meta)
    members["metadata"] = np.frombuffer(text.encode(), dtype=np.uint8)
    return write_zip(dst, {name + ".npy": npy_bytes(a) for name, a in members.items()})


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A numpy float64 model (3 epochs) and the file it was saved to."""
    model = trained()
    path = tmp_path_factory.mktemp("saved") / "model.npz"
    model.save(path)
    return model, path


# -- round trips ------------------------------------------------------------------------------
def test_round_trip_on_each_backend(backend, tmp_path):
    dtype = dtype_for(backend)
    model = trained(backend, dtype)
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = nnx.load(path, backend=backend)
    assert loaded.backend.name == backend.name and loaded.backend.device == backend.device
    assert loaded.dtype_name == dtype and loaded.epochs_trained == 3
    assert loaded.get_config() == model.get_config()
    for got, want in zip(loaded.parameters(), model.get_weights()):
        assert_on_backend(got, backend, dtype, want.shape)
        np.testing.assert_array_equal(nnx.to_numpy(got), want)
    # The same dtype on the same backend: exactly the same predictions.
    np.testing.assert_array_equal(nnx.to_numpy(loaded.predict_proba(X)),
                                  nnx.to_numpy(model.predict_proba(X)))


def test_every_activation_round_trips(backend, tmp_path):
    """Each activation's saved name loads back as the same function (leaky_relu's slope too)."""
    from nnx.activations import ACTIVATIONS, leaky_relu

    hidden = [*ACTIVATIONS.values(), leaky_relu(0.2)]
    hidden = [a for a in hidden if a.name != "softmax"]
    layers = [nnx.Dense(2, 3, a) for a in hidden[:1]]
    for a in hidden[1:]:
        layers.append(nnx.Dense(3, 3, a))
    layers.append(nnx.Dense(3, 2, "softmax"))
    model = nnx.Sequential(layers, backend=backend, seed=3)
    model.save(tmp_path / "acts.npz")
    loaded = nnx.load(tmp_path / "acts.npz", backend=backend)
    assert [layer.activation.name for layer in loaded.layers] == [
        *(a.name for a in hidden), "softmax"]
    assert "leaky_relu(0.2)" in [layer.activation.name for layer in loaded.layers]
    np.testing.assert_array_equal(nnx.to_numpy(loaded.predict_proba(X)),
                                  nnx.to_numpy(model.predict_proba(X)))


def test_metadata_records_where_the_model_was_trained(backend, tmp_path):
    model = trained(backend, dtype_for(backend), epochs=2)
    model.save(tmp_path / "model.npz")
    meta = read_metadata(tmp_path / "model.npz")
    assert meta["backend"] == backend.name and meta["device"] == str(backend.device)
    assert meta["nnx_version"] == nnx.__version__ and meta["format"] == nnx.saving.FORMAT_NAME
    assert meta["format_version"] == nnx.saving.FORMAT_VERSION == 2
    assert meta["config"] == model.get_config() and meta["dtype"] == model.dtype_name
    assert meta["seed"] == 0 and meta["epochs_trained"] == 2


def test_numpy_float64_file_loads_on_each_backend(backend, saved):
    model, path = saved
    if backend.supports_float64:
        loaded, dtype = nnx.load(path, backend=backend), "float64"
    else:
        with pytest.raises(ValueError, match="has no float64; pass dtype='float32' to nnx.load"):
            nnx.load(path, backend=backend)
        loaded = nnx.saving.load(path, backend=backend, dtype="float32")
        dtype = "float32"
    for got, want in zip(loaded.parameters(), model.get_weights()):
        assert_on_backend(got, backend, dtype, want.shape)
        np.testing.assert_allclose(nnx.to_numpy(got), want, rtol=tolerance(dtype))
    proba = loaded.predict_proba(X)
    assert_on_backend(proba, backend, dtype, (50, 2))
    np.testing.assert_allclose(nnx.to_numpy(proba), nnx.to_numpy(model.predict_proba(X)),
                               rtol=tolerance(dtype), atol=tolerance(dtype))


def test_file_from_each_backend_loads_on_numpy(backend, tmp_path):
    dtype = dtype_for(backend)
    model = trained(backend, dtype)
    model.save(tmp_path / "model.npz")
    loaded = nnx.load(tmp_path / "model.npz", backend="numpy")
    numpy = nnx.get_backend("numpy")
    for got, want in zip(loaded.parameters(), model.get_weights()):
        assert_on_backend(got, numpy, dtype, want.shape)
        np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(loaded.predict_proba(X), nnx.to_numpy(model.predict_proba(X)),
                               rtol=tolerance(dtype), atol=tolerance(dtype))


def test_other_byte_order_loads_on_each_backend(backend, saved, tmp_path):
    def swap(arrays, meta):
        for name in [name for name in arrays if name.startswith("layers.")]:
            arrays[name] = arrays[name].astype(arrays[name].dtype.newbyteorder())

    path = rewrite(saved[1], tmp_path / "swapped.npz", swap)
    assert np.lib.format.read_array(io.BytesIO(read_members(path)["layers.0.W.npy"])
                                    ).dtype.byteorder != "="
    dtype = dtype_for(backend)
    loaded = nnx.saving.load(path, backend=backend, dtype=dtype)
    for got, want in zip(loaded.parameters(), saved[0].get_weights()):
        assert_on_backend(got, backend, dtype, want.shape)
        np.testing.assert_array_equal(nnx.to_numpy(got), want.astype(dtype))


def test_load_defaults_to_nnx_backend(saved, monkeypatch):
    monkeypatch.setenv("NNX_BACKEND", "array_api_strict")
    assert nnx.load(saved[1]).backend.name == "array_api_strict"
    monkeypatch.delenv("NNX_BACKEND")
    assert nnx.load(saved[1]).backend.name == "numpy"


@pytest.mark.parametrize("target", available_cpu_backends(), ids=lambda b: b.name)
def test_cupy_trained_file_loads_without_cupy(saved, tmp_path, monkeypatch, target):
    def as_if_from_cupy(arrays, meta):
        meta["backend"], meta["device"] = "cupy", "<CUDA Device 0>"

    path = rewrite(saved[1], tmp_path / "cupy.npz", as_if_from_cupy)
    monkeypatch.setitem(sys.modules, "cupy", None)  # any import of cupy now fails
    loaded = nnx.load(path, backend=target)
    np.testing.assert_array_equal(loaded.get_weights()[0], saved[0].get_weights()[0])


def test_loaded_model_keeps_training(saved):
    loaded = nnx.load(saved[1])
    before = loaded.loss(X, Y)
    loaded.fit(X, Y, epochs=5, lr=0.5)
    assert loaded.epochs_trained == 8 and loaded.loss(X, Y) < before


def test_float32_model_loaded_as_float64_keeps_its_values(tmp_path):
    model = trained(dtype="float32")
    model.save(tmp_path / "model.npz")
    loaded = nnx.saving.load(tmp_path / "model.npz", dtype="float64")
    assert loaded.dtype_name == "float64"
    for got, want in zip(loaded.get_weights(), model.get_weights()):
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got, want.astype(np.float64))


# -- where and how the file is written --------------------------------------------------------
def test_writes_exactly_the_path_given(tmp_path):
    model = trained(epochs=1)
    model.save(str(tmp_path / "model"))
    assert sorted(os.listdir(tmp_path)) == ["model"]
    np.testing.assert_array_equal(nnx.load(tmp_path / "model").get_weights()[0],
                                  model.get_weights()[0])


def test_overwrite_replaces_the_old_model(tmp_path):
    path = tmp_path / "model.npz"
    trained(epochs=1).save(path)
    newer = trained(epochs=4)
    newer.save(path)
    assert nnx.load(path).epochs_trained == 4
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]


def test_file_gets_the_usual_permissions(tmp_path):
    trained(epochs=1).save(tmp_path / "model.npz")
    (tmp_path / "plain").write_bytes(b"")
    assert os.stat(tmp_path / "model.npz").st_mode == os.stat(tmp_path / "plain").st_mode


def test_save_into_a_missing_folder_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="folder .*missing.* does not exist"):
        trained(epochs=1).save(tmp_path / "missing" / "model.npz")
    assert os.listdir(tmp_path) == []


def test_save_onto_a_folder_says_so(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a folder; give a file name"):
        trained(epochs=1).save(tmp_path)


def test_save_refuses_non_finite_weights_and_writes_nothing(tmp_path):
    model = trained(epochs=1)
    model.assign_parameters(model.parameters()[:3] + [np.array([0.0, np.nan])])
    with pytest.raises(ValueError, match=r"layers\[1\].b contains NaN or inf; nothing"):
        model.save(tmp_path / "model.npz")
    assert os.listdir(tmp_path) == []


def _interrupt_replace(*args, **kwargs):
    raise OSError("disk full (simulated)")


def _interrupt_write(member, array, allow_pickle=True):
    member.write(b"\x93NUMPY partial")
    raise KeyboardInterrupt


@pytest.mark.parametrize("target, fake", [("os.replace", _interrupt_replace),
                                          ("numpy.lib.format.write_array", _interrupt_write)],
                         ids=["replace", "mid-write"])
def test_interrupted_save_leaves_the_old_file_and_no_temporary_file(tmp_path, monkeypatch,
                                                                    target, fake):
    old, path = trained(epochs=1), tmp_path / "model.npz"
    old.save(path)
    before = path.read_bytes()
    newer = trained(epochs=4)
    monkeypatch.setattr(target, fake)
    with pytest.raises((OSError, KeyboardInterrupt)):
        newer.save(path)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]
    assert path.read_bytes() == before
    loaded = nnx.load(path, backend="numpy")  # old's backend, whatever NNX_BACKEND says
    assert loaded.epochs_trained == 1
    np.testing.assert_array_equal(loaded.predict_proba(X), old.predict_proba(X))


# -- no pickle --------------------------------------------------------------------------------
def test_every_member_is_a_plain_array(saved):
    members = read_members(saved[1])
    assert sorted(members) == ["layers.0.W.npy", "layers.0.b.npy", "layers.1.W.npy",
                               "layers.1.b.npy", "metadata.npy"]
    for data in members.values():
        array = np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
        assert not array.dtype.hasobject
    with np.load(saved[1], allow_pickle=False) as archive:  # an ordinary .npz
        np.testing.assert_array_equal(archive["layers.0.W"], saved[0].get_weights()[0])


def test_save_and_load_never_call_pickle(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("pickle was used")

    for name in ("dump", "dumps", "load", "loads", "Pickler", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    model = trained(epochs=2)
    model.save(tmp_path / "model.npz")
    loaded = nnx.load(tmp_path / "model.npz", backend="torch" if _has("torch") else "numpy")
    np.testing.assert_allclose(nnx.to_numpy(loaded.predict_proba(X)), model.predict_proba(X),
                               rtol=1e-10)


def test_pickled_member_is_refused_without_unpickling(saved, tmp_path, monkeypatch):
    members = read_members(saved[1])
    members["layers.0.W.npy"] = npy_bytes(np.array([{"W": 1}], dtype=object), allow_pickle=True)
    path = write_zip(tmp_path / "pickled.npz", members)

    def refuse(*args, **kwargs):
        raise AssertionError("pickle was used")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    with pytest.raises(ModelFileError, match="'layers.0.W.npy' is not a plain .npy array.*"
                                             "allow_pickle=False"):
        nnx.load(path)


def _has(module):
    try:
        __import__(module)
    except ImportError:
        return False
    return True


# -- files that are not valid models ----------------------------------------------------------
def _flip_inside(name):
    """Flip a byte in the middle of member `name`'s data (under its CRC-32)."""
    def damage(src, dst):
        data = bytearray(src.read_bytes())
        with zipfile.ZipFile(src) as archive:
            info = archive.getinfo(name)
        # The local header: 30 bytes, then the name and the extra field, then the data.
        start = info.header_offset + 30 + int.from_bytes(
            data[info.header_offset + 26:info.header_offset + 28], "little") + int.from_bytes(
            data[info.header_offset + 28:info.header_offset + 30], "little")
        middle = start + info.compress_size // 2
        data[middle] ^= 0xFF
        dst.write_bytes(bytes(data))
    return damage


def _truncate(fraction):
    def damage(src, dst):
        data = src.read_bytes()
        dst.write_bytes(data[:int(len(data) * fraction)])
    return damage


def _bytes(content):
    return lambda src, dst: dst.write_bytes(content)


def _zip(change):
    """Members edited in place: ``change({name: bytes})``."""
    def damage(src, dst):
        members = read_members(src)
        change(members)
        write_zip(dst, members)
    return damage


def _model(change=None, metadata=None):
    return lambda src, dst: rewrite(src, dst, change, metadata)


def _set(key, value):
    def change(arrays, meta):
        meta[key] = value
    return change


def _array(name, value):
    def change(arrays, meta):
        arrays[name] = value(arrays[name])
    return change


def _nan(array):
    array = array.copy()
    array.flat[1] = np.nan
    return array


def _layer(**fields):
    def change(arrays, meta):
        meta["config"]["layers"][0]["config"].update(fields)
    return change


BROKEN = {
    "empty": (_bytes(b""), "not a zip"),
    "garbage": (_bytes(b"these are not the weights you are looking for" * 20), "not a zip"),
    "truncated-half": (_truncate(0.5), "not a zip"),
    "truncated-end": (_truncate(0.97), "not a zip"),
    "flip-W0": (_flip_inside("layers.0.W.npy"), "'layers.0.W.npy' is damaged.*CRC"),
    "flip-b1": (_flip_inside("layers.1.b.npy"), "'layers.1.b.npy' is damaged.*CRC"),
    "flip-metadata": (_flip_inside("metadata.npy"), "'metadata.npy' is damaged.*CRC"),
    "not-npy-member": (_zip(lambda m: m.update({"layers.0.W.npy": b"not an array"})),
                       "'layers.0.W.npy' is not a plain .npy array"),
    "trailing-bytes": (_zip(lambda m: m.update({"layers.0.b.npy": m["layers.0.b.npy"] + b"x"})),
                       "1 bytes after its array"),
    "odd-member-name": (_zip(lambda m: m.update({"notes.txt": b"hello"})),
                        "'notes.txt' is not a .npy array"),
    "plain-npz-no-metadata": (_zip(lambda m: m.pop("metadata.npy")), "no 'metadata' member"),
    "metadata-not-bytes": (_zip(lambda m: m.update({"metadata.npy": npy_bytes([1.5, 2.5])})),
                           "1-D uint8 array of JSON"),
    "metadata-not-json": (_model(metadata="{not json"), "not valid JSON"),
    "metadata-not-utf8": (_zip(lambda m: m.update({"metadata.npy": npy_bytes(
        np.frombuffer(b"\xff\xfe{}", np.uint8))})), "not valid JSON"),
    "metadata-a-list": (_model(metadata="[1, 2]"), "not a JSON object"),
    "unknown-format": (_model(_set("format", "keras")), "format='keras'; expected "
                                                        "'nnx.Sequential'"),
    "newer-format": (_model(_set("format_version", 999)),
                     "written by a newer nnx.*format version 999.*[Uu]pgrade nnx"),
    "format-version-text": (_model(_set("format_version", "1")), "format_version='1'"),
    "no-config": (_model(_set("config", None)), "config=None; expected a JSON object"),
    "dtype-mismatch": (_model(_set("dtype", "float32")), "dtype='float32' .*config "
                                                         "dtype='float64'"),
    "bad-epochs": (_model(_set("epochs_trained", -1)), "epochs_trained=-1"),
    "missing-array": (_model(lambda a, m: a.pop("layers.1.b")),
                      r"missing 'layers.1.b', unexpected none"),
    "extra-array": (_model(lambda a, m: a.update({"layers.2.W": np.zeros((2, 2))})),
                    r"missing none, unexpected 'layers.2.W'"),
    "wrong-shape": (_model(_array("layers.0.W", lambda w: w.T.copy())),
                    r"'layers.0.W' is float64 shape \(3, 2\); .*float64 shape \(2, 3\)"),
    "wrong-dtype": (_model(_array("layers.1.W", lambda w: w.astype(np.float32))),
                    r"'layers.1.W' is float32 shape \(3, 2\); the architecture needs float64"),
    "integer-dtype": (_model(_array("layers.0.b", lambda b: b.astype(np.int64))),
                      "'layers.0.b' is int64"),
    "nan": (_model(_array("layers.1.W", _nan)), "'layers.1.W' holds 1 NaN or inf value;"),
    "inf": (_model(_array("layers.0.b", lambda b: b + np.inf)),
            "'layers.0.b' holds 3 NaN or inf values"),
    "bad-layer-size": (_model(_layer(n_in="2")), "layer 0 of the architecture is"),
    "unknown-activation": (_model(_layer(activation="swish-ish")),
                           "architecture in the metadata is invalid.*activation='swish-ish'"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_file_gives_one_clear_error(case, saved, tmp_path):
    damage, reason = BROKEN[case]
    path = tmp_path / f"{case}.npz"
    damage(saved[1], path)
    with pytest.raises(ModelFileError, match=reason) as info:
        nnx.load(path)
    message = str(info.value)
    assert message.startswith(f"nnx.load: cannot load {path}: ")
    assert info.value.path == str(path) and isinstance(info.value, ValueError)
    # One error: nothing from zipfile, json or numpy chained onto it.
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__ or info.value.__context__ is None


def test_sizes_that_do_not_chain_are_caught_by_the_arrays(saved, tmp_path):
    # layers[1] claims 4 inputs: the arrays no longer fit, whichever check sees it first.
    path = rewrite(saved[1], tmp_path / "chain.npz",
                   lambda a, m: m["config"]["layers"][1]["config"].update(n_in=4))
    with pytest.raises(ModelFileError, match=r"'layers.1.W' is float64 shape \(3, 2\); the "
                                             r"architecture needs float64 shape \(4, 2\)"):
        nnx.load(path)


def test_sizes_that_do_not_chain_with_matching_arrays(saved, tmp_path):
    def change(arrays, meta):
        meta["config"]["layers"][1]["config"]["n_in"] = 4
        arrays["layers.1.W"] = np.zeros((4, 2))

    path = rewrite(saved[1], tmp_path / "chain.npz", change)
    with pytest.raises(ModelFileError, match="architecture in the metadata is invalid.*do not "
                                             "chain"):
        nnx.load(path)


def test_duplicate_member_is_refused(saved, tmp_path):
    members = read_members(saved[1])
    path = tmp_path / "twice.npz"
    with zipfile.ZipFile(path, "w") as archive, pytest.warns(UserWarning, match="Duplicate"):
        for name, data in members.items():
            archive.writestr(name, data)
        archive.writestr("layers.0.W.npy", npy_bytes(np.zeros((2, 3))))
    with pytest.raises(ModelFileError, match="'layers.0.W.npy' appears twice"):
        nnx.load(path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ModelFileError, match="no such file"):
        nnx.load(tmp_path / "nope.npz")
    with pytest.raises(ModelFileError, match="it is not a file"):
        nnx.load(tmp_path)


def test_unreadable_file(saved, monkeypatch):
    def locked(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(saved[1]))

    # Simulated: a chmod 0 file is still readable when the tests run as root.
    monkeypatch.setattr(zipfile, "ZipFile", locked)
    with pytest.raises(ModelFileError, match="cannot be read \\(Permission denied\\)"):
        nnx.load(saved[1])


def test_backend_problems_are_not_file_errors(saved):
    with pytest.raises(ValueError, match="is not a backend") as info:
        nnx.load(saved[1], backend="nmpy")
    assert not isinstance(info.value, ModelFileError)
    with pytest.raises(ValueError, match="dtype='float16' is not supported"):
        nnx.saving.load(saved[1].parent / "never-read.npz", dtype="float16")  # checked first


@pytest.mark.parametrize("name", ["moons-format1.npz", "binary-format1.npz"])
def test_a_format_1_file_saved_by_nnx_0_1_0_still_loads(backend, name):
    """Files written before the restructuring (format version 1: no layer types) load, and
    predict what a forward pass written here by hand with the file's own arrays gives."""
    path = os.path.join(os.path.dirname(__file__), "data", name)
    with np.load(path, allow_pickle=False) as raw:
        meta = json.loads(raw["metadata"].tobytes().decode())
        arrays = [raw[f"layers.{i}.{p}"] for i in range(len(meta["config"]["layers"]))
                  for p in ("W", "b")]
    assert meta["format_version"] == 1 and "type" not in meta["config"]["layers"][0]
    dtype = meta["dtype"] if backend.supports_float64 else "float32"
    model = nnx.load(path, backend=backend, dtype=dtype)
    assert model.epochs_trained == meta["epochs_trained"]
    for got, want in zip(model.get_weights(), arrays):
        np.testing.assert_array_equal(got, want.astype(dtype))
    X = np.random.default_rng(0).normal(size=(7, arrays[0].shape[0]))
    a = X
    for i, (W, b) in enumerate(zip(arrays[0::2], arrays[1::2])):
        z = a @ W + b
        spec = meta["config"]["layers"][i]["activation"]
        a = {"tanh": np.tanh, "softmax": lambda z: np.exp(z - z.max(1, keepdims=True))
             / np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True),
             "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
             "leaky_relu(0.2)": lambda z: np.where(z > 0, z, 0.2 * z)}[spec](z)
    tol = 1e-12 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(host(model.predict_proba(X)), a, rtol=tol, atol=tol)
