"""nnx.dask: the readers, predict/evaluate by blocks, streaming fit and data-parallel fit,
each checked against in-memory nnx on NumPy in float64 (or a hand-written NumPy loop)."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys
import threading

import pytest

da = pytest.importorskip("dask.array", reason="nnx.dask needs dask[array,distributed]")
distributed = pytest.importorskip("distributed", reason="nnx.dask needs dask.distributed")

import numpy as np  # noqa: E402

import nnx  # noqa: E402
import nnx.dask as nd  # noqa: E402
from nnx.dask import _stream  # noqa: E402
from nnx.errors import InvalidDataError, InvalidParameterError, NonFiniteLossError  # noqa: E402

ROWS = (70, 130, 50)  # unequal blocks: an unweighted mean of shards would be wrong


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                       host="127.0.0.1", dashboard_address=":0")
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


def moons(n=250, seed=0):
    return nnx.datasets.make_moons(n, noise=0.2, seed=seed)


def classifier(l2=0.001, seed=0):
    return nnx.Sequential([nnx.Dense(2, 8, activation="tanh"),
                           nnx.Dense(8, 3, activation="softmax")],
                          l2=l2, dtype="float64", seed=seed, backend="numpy")


def as_dask(X, y, rows=ROWS):
    return da.from_array(X, chunks=(rows, X.shape[1])), da.from_array(y, chunks=(rows,))


def max_diff(a, b):
    return max(float(np.max(np.abs(p - q))) for p, q in zip(a.get_weights(), b.get_weights()))


def test_import_nnx_does_not_import_dask():
    code = "import sys, nnx; sys.exit('dask' in sys.modules or 'distributed' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# -- readers ----------------------------------------------------------------------------------
def test_read_npy_blocks_equal_the_file_and_the_graph_holds_no_data(tmp_path):
    data = np.arange(40_000, dtype=np.float32).reshape(10_000, 4)
    path = tmp_path / "x.npy"
    np.save(path, data)
    X = nd.read_npy(path, chunk_rows=3000)
    assert X.shape == data.shape and X.dtype == data.dtype
    assert X.chunks == ((3000, 3000, 3000, 1000), (4,))
    # 160 kB of data; the graph is the path and slices only.
    assert len(pickle.dumps(dict(X.__dask_graph__()))) < 5_000
    np.testing.assert_array_equal(X.compute(), data)
    np.testing.assert_array_equal(X[2999:3001].compute(), data[2999:3001])
    assert nd.read_npy(path, chunk_rows=3000).name == X.name  # named from the file, no hashing


def test_read_npy_default_chunks_and_fortran_order(tmp_path):
    data = np.asfortranarray(np.random.default_rng(0).normal(size=(500, 3)))
    np.save(tmp_path / "f.npy", data)
    X = nd.read_array(tmp_path / "f.npy")
    assert X.chunks == ((500,), (3,))
    np.testing.assert_array_equal(X.compute(), data)


def test_read_npy_refuses_bad_input(tmp_path):
    with pytest.raises(InvalidDataError, match="no such file"):
        nd.read_npy(tmp_path / "missing.npy")
    np.savez(tmp_path / "a.npz", x=np.ones(3))
    with pytest.raises(InvalidDataError, match="not a .npy file|not one array"):
        nd.read_npy(tmp_path / "a.npz")
    np.save(tmp_path / "x.npy", np.ones((4, 2)))
    with pytest.raises(InvalidParameterError, match=r"chunk_rows must be an integer >= 1 or None; "
                                                    r"received chunk_rows=0"):
        nd.read_npy(tmp_path / "x.npy", chunk_rows=0)
    with pytest.raises(InvalidParameterError, match="path must be"):
        nd.read_npy(3)


def test_read_zarr_blocks_equal_the_store(tmp_path):
    zarr = pytest.importorskip("zarr")
    data = np.random.default_rng(1).normal(size=(1000, 3))
    z = zarr.open(str(tmp_path / "x.zarr"), mode="w", shape=data.shape, chunks=(128, 3),
                  dtype="f8")
    z[:] = data
    X = nd.read_array(tmp_path / "x.zarr")
    assert X.chunks[0][0] == 128  # whole zarr chunks per task
    np.testing.assert_array_equal(X.compute(), data)
    np.testing.assert_array_equal(nd.read_zarr(tmp_path / "x.zarr", chunk_rows=300)
                                  .compute(), data)
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("a", shape=(10, 2), dtype="f4")
    with pytest.raises(InvalidDataError, match="zarr group"):
        nd.read_zarr(tmp_path / "g.zarr")
    assert nd.read_zarr(tmp_path / "g.zarr", component="a").shape == (10, 2)


# -- predict, predict_proba, evaluate ---------------------------------------------------------
def trained_models():
    X, y = moons()
    multi = classifier()
    multi.fit(X, y, epochs=30, lr=0.5)
    binary = nnx.Sequential([nnx.Dense(2, 5, activation="relu"),
                             nnx.Dense(5, 1, activation="sigmoid")], dtype="float64",
                            backend="numpy")
    binary.fit(X, y, epochs=30, lr=0.5)
    regression = nnx.Sequential([nnx.Dense(2, 4, activation="tanh"), nnx.Dense(4, 2)],
                                dtype="float64", l2=0.01, backend="numpy")
    targets = np.stack([X[:, 0] + X[:, 1], X[:, 0] * X[:, 1]], axis=1)
    regression.fit(X, targets, epochs=30, lr=0.1)
    return X, [(multi, y), (binary, y), (regression, targets)]


def test_predict_and_evaluate_equal_in_memory():
    X, cases = trained_models()
    Xd = da.from_array(X, chunks=(ROWS, 2))
    for model, targets in cases:
        labels = nd.predict(model, Xd)
        assert labels.chunks[0] == ROWS
        expected = model.predict(X)
        assert labels.shape == expected.shape and labels.dtype == expected.dtype
        np.testing.assert_array_equal(labels.compute(), expected)
        np.testing.assert_allclose(nd.predict_proba(model, Xd, batch_size=16).compute(),
                                   model.predict_proba(X), rtol=1e-14, atol=0)
        got, want = nd.evaluate(model, Xd, targets), model.evaluate(X, targets)
        assert got.keys() == want.keys()
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-13, abs=0)


def test_evaluate_with_weights_equals_in_memory():
    X, cases = trained_models()
    Xd = da.from_array(X, chunks=(ROWS, 2))
    w = np.random.default_rng(2).uniform(0, 3, size=len(X))
    w[70:200] = 0  # a block that weighs nothing adds nothing
    for model, targets in cases:
        got = nd.evaluate(model, Xd, targets, sample_weight=da.from_array(w, chunks=50))
        want = model.evaluate(X, targets, sample_weight=w)
        assert got.keys() == want.keys()
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-13, abs=0)
        # The weights matter.
        assert got["loss"] != pytest.approx(model.evaluate(X, targets)["loss"], rel=1e-3)
    model, targets = cases[0]
    bad = w.copy()
    bad[220] = -1
    with pytest.raises(InvalidDataError, match=r"nnx.dask.evaluate \(row block 2\):.*"
                                               r"sample_weight must be >= 0"):
        nd.evaluate(model, Xd, targets, sample_weight=bad)
    with pytest.raises(InvalidDataError, match="sample_weight is 0 for every sample"):
        nd.evaluate(model, Xd, targets, sample_weight=np.zeros(len(X)))
    with pytest.raises(InvalidDataError, match="sample_weight must have shape"):
        nd.evaluate(model, Xd, targets, sample_weight=np.ones((len(X), 2)))


def test_predict_puts_the_model_in_the_graph_once():
    model = nnx.Sequential([nnx.Dense(2, 300, activation="tanh"),
                            nnx.Dense(300, 3, activation="softmax")], backend="numpy")
    Xd = da.from_array(np.ones((250, 2)), chunks=(10, 2))  # 25 blocks
    graph = dict(nd.predict(model, Xd).__dask_graph__())
    size = len(pickle.dumps(model))
    assert size > 7_000  # 25 copies would make a graph of 175 kB or more
    data = len(pickle.dumps(dict(Xd.__dask_graph__())))
    assert len(pickle.dumps(graph)) - data < 1.5 * size
    assert sum(str(k).startswith("nnx-model-") for k in graph) == 1


def test_predict_on_the_cluster_equals_in_memory(client):
    X, cases = trained_models()
    Xd = da.from_array(X, chunks=(ROWS, 2))
    for model, targets in cases:
        np.testing.assert_array_equal(nd.predict(model, Xd).compute(), model.predict(X))
        assert nd.evaluate(model, Xd, targets)["loss"] == pytest.approx(
            model.evaluate(X, targets)["loss"], rel=1e-13)


def test_predict_refuses_bad_input():
    X, cases = trained_models()
    model = cases[0][0]
    with pytest.raises(InvalidDataError, match="X must be a dask array"):
        nd.predict(model, X)
    with pytest.raises(InvalidDataError, match="X has 3 features; the model expects 2"):
        nd.predict(model, da.ones((10, 3), chunks=5))
    with pytest.raises(InvalidParameterError, match="model must be an nnx.Sequential"):
        nd.predict("model", da.ones((10, 2), chunks=5))
    with pytest.raises(InvalidDataError, match=r"y must have shape \(250,\)"):
        nd.evaluate(model, da.from_array(X, chunks=50), np.zeros(10))
    with pytest.raises(InvalidParameterError, match="batch_size"):
        nd.predict(model, da.from_array(X, chunks=50), batch_size=0)


# -- streaming fit ----------------------------------------------------------------------------
def reference_stream(model, rng, X, y, epochs, batch, rows=ROWS):
    """The order nnx.dask.fit documents, replayed on in-memory data with train_on_batch."""
    bounds = np.cumsum((0,) + rows)
    for _ in range(epochs):
        for i in rng.permutation(len(rows)):
            Xc, yc = X[bounds[i]:bounds[i + 1]], y[bounds[i]:bounds[i + 1]]
            perm = rng.permutation(len(Xc))
            for start in range(0, len(Xc), batch):
                idx = perm[start:start + batch]
                model.train_on_batch(Xc[idx], yc[idx])


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_stream_fit_equals_the_documented_order_in_memory(optimizer):
    X, y = moons()
    model, expected = classifier(), classifier()
    rng = copy.deepcopy(model.rng)
    history = nd.fit(model, *as_dask(X, y), epochs=3, lr=0.05, batch_size=32,
                     optimizer=optimizer)
    expected.set_optimizer(optimizer, lr=0.05)
    reference_stream(expected, rng, X, y, 3, 32)
    assert max_diff(model, expected) <= 1e-15
    assert len(history["loss"]) == 3 and model.epochs_trained == 3
    assert all(0 <= a <= 1 for a in history["accuracy"])


def test_stream_fit_full_batch_equals_sequential_fit():
    X, y = moons()
    model, expected = classifier(), classifier()
    history = nd.fit(model, *as_dask(X, y), epochs=5, lr=0.5, batch_size=None)
    want = expected.fit(X, y, epochs=5, lr=0.5)
    assert max_diff(model, expected) <= 1e-15
    np.testing.assert_allclose(history["loss"], want["loss"], rtol=1e-14)
    assert history["accuracy"] == want["accuracy"]


def test_stream_fit_continues_weights_and_optimizer_state():
    X, y = moons()
    Xd, yd = as_dask(X, y)
    once, twice = classifier(), classifier()
    nd.fit(once, Xd, yd, epochs=2, lr=0.01, optimizer="adam", batch_size=64)
    nd.fit(twice, Xd, yd, epochs=1, lr=0.01, optimizer="adam", batch_size=64)
    nd.fit(twice, Xd, yd, epochs=1, batch_size=64)
    assert twice.optimizer.t == once.optimizer.t > 0
    assert max_diff(once, twice) == 0
    assert twice.epochs_trained == 2


def test_stream_fit_reads_the_next_block_in_the_background(monkeypatch):
    X, y = moons()
    threads = []
    load = _stream._Blocks.load

    def recording(self, i):
        threads.append(threading.current_thread().name)
        return load(self, i)

    monkeypatch.setattr(_stream._Blocks, "load", recording)
    model, plain = classifier(), classifier()
    nd.fit(model, *as_dask(X, y), epochs=2, lr=0.1)
    assert len(threads) == 6 and all(t.startswith("nnx-dask-prefetch") for t in threads)
    threads.clear()
    nd.fit(plain, *as_dask(X, y), epochs=2, lr=0.1, prefetch=False)
    assert threads == [threading.current_thread().name] * 6
    assert max_diff(model, plain) == 0


def test_stream_fit_validation_in_memory_and_dask():
    X, y = moons()
    Xv, yv = moons(100, seed=1)
    for val in [(Xv, yv), as_dask(Xv, yv, rows=(60, 40))]:
        model = classifier()
        history = nd.fit(model, *as_dask(X, y), epochs=2, lr=0.1, validation_data=val)
        final = model.evaluate(Xv, yv)
        assert history["val_loss"][-1] == pytest.approx(final["loss"], rel=1e-13)
        assert history["val_accuracy"][-1] == pytest.approx(final["accuracy"], abs=1e-12)


def test_stream_fit_weighted_validation_is_sequential_fits():
    """Validation weights, in memory or as dask arrays: the figures Sequential.fit logs
    with the same validation weights (and not the unweighted ones)."""
    X, y = moons()
    Xv, yv = moons(100, seed=1)
    wv = np.random.default_rng(3).integers(0, 4, size=len(yv)).astype(float)
    expected = classifier()
    want = expected.fit(X, y, epochs=3, lr=0.5, batch_size=10, shuffle=False,
                        validation_data=(Xv, yv, wv))
    for val in [(Xv, yv, wv), (*as_dask(Xv, yv, rows=(60, 40)), da.from_array(wv, chunks=30))]:
        model = classifier()
        history = nd.fit(model, *as_dask(X, y), epochs=3, lr=0.5, batch_size=10,
                         shuffle=False, validation_data=val)
        assert max_diff(model, expected) <= 1e-14
        np.testing.assert_allclose(history["val_loss"], want["val_loss"], rtol=1e-13)
        np.testing.assert_allclose(history["val_accuracy"], want["val_accuracy"], rtol=1e-13)
    unweighted = model.evaluate(Xv, yv)
    assert history["val_loss"][-1] != pytest.approx(unweighted["loss"], rel=1e-4)
    model = classifier()
    for val, pattern in [((Xv, yv, -wv), "validation_data\\[2\\] must be >= 0"),
                         (as_dask(Xv, yv, rows=(60, 40)) + (np.zeros(len(yv)),),
                          r"validation_data\[2\] must be finite numbers >= 0, not all 0")]:
        with pytest.raises(InvalidDataError, match=pattern):
            nd.fit(model, *as_dask(X, y), epochs=1, validation_data=val)
    assert model.optimizer is None and model.epochs_trained == 0


def test_stream_fit_callbacks_and_early_stopping():
    X, y = moons()

    class StopAfterTwo(nnx.Callback):
        def on_epoch_end(self, model, epoch, logs):
            if epoch == 1:
                model.stop_training = True

    model = classifier()
    history = nd.fit(model, *as_dask(X, y), epochs=10, lr=0.1, callbacks=[StopAfterTwo()])
    assert len(history["loss"]) == 2 and model.epochs_trained == 2
    model = classifier()
    # lr so large the loss rises at once: patience 1 stops after two epochs without a gain
    # and puts back the best (the first epoch's starting) weights.
    history = nd.fit(model, *as_dask(X, y), epochs=20, lr=2.0, batch_size=16,
                     early_stopping=nnx.EarlyStopping(monitor="loss", patience=1))
    assert len(history["loss"]) < 20


def test_stream_fit_rolls_back_on_divergence():
    X, _ = moons()
    targets = 1e3 * (X[:, :1] + 10)
    model = nnx.Sequential([nnx.Dense(2, 4, activation="relu"), nnx.Dense(4, 1)],
                           dtype="float64", backend="numpy")
    with pytest.raises(NonFiniteLossError, match="rolled back"):
        nd.fit(model, da.from_array(X, chunks=(ROWS, 2)), targets, epochs=50, lr=10.0)
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())


def test_stream_fit_bad_block_leaves_the_model_unchanged():
    X, y = moons()
    y = y.copy()
    y[-1] = 7  # in the last block: found after other blocks trained
    model = classifier()
    before = model.get_weights()
    with pytest.raises(InvalidDataError, match=r"labels must be in \[0, 3\)"):
        nd.fit(model, *as_dask(X, y), epochs=1, lr=0.1, shuffle=False)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert model.epochs_trained == 0 and model.optimizer is None


@pytest.mark.parametrize("batch_size", [None, 10])
def test_stream_fit_with_weights_is_sequential_fit_with_weights(batch_size):
    """Integer weights, zeros among them, and a whole block of zero weights: in block order
    (no shuffle) with batches that divide the blocks, the streamed epochs are
    Sequential.fit's weighted epochs (whose weights equal duplicated and removed rows:
    tests/test_sample_weight.py)."""
    X, y = moons()
    w = np.random.default_rng(1).integers(0, 4, size=len(y)).astype(float)
    w[70:200] = 0  # the middle block weighs nothing
    Xd, yd = as_dask(X, y)
    streamed, expected = classifier(), classifier()
    history = nd.fit(streamed, Xd, yd, sample_weight=da.from_array(w, chunks=(ROWS,)),
                     epochs=4, lr=0.5, batch_size=batch_size, shuffle=False)
    want = expected.fit(X, y, sample_weight=w, epochs=4, lr=0.5, batch_size=batch_size,
                        shuffle=False)
    assert max_diff(streamed, expected) <= 1e-14
    np.testing.assert_allclose(history["loss"], want["loss"], rtol=1e-13)
    np.testing.assert_allclose(history["accuracy"], want["accuracy"], rtol=1e-13)


def test_stream_fit_refuses_bad_weights_and_changes_nothing():
    X, y = moons()
    Xd, yd = as_dask(X, y)
    model = classifier()
    before = model.get_weights()
    bad = np.ones(len(y))
    bad[220] = -1.0  # in the last block: found when that block is read, mid-epoch
    with pytest.raises(InvalidDataError, match=r"row block 2.*sample_weight must be finite "
                                               r"numbers >= 0; received -1"):
        nd.fit(model, Xd, yd, sample_weight=bad, epochs=2, shuffle=False)
    bad[220] = np.nan  # caught by the sum read before training
    with pytest.raises(InvalidDataError, match=r"finite numbers >= 0, not all 0; their sum is nan"):
        nd.fit(model, Xd, yd, sample_weight=da.from_array(bad, chunks=(ROWS,)), epochs=2,
               shuffle=False)
    with pytest.raises(InvalidDataError, match="sample_weight must have shape"):
        nd.fit(model, Xd, yd, sample_weight=np.ones((len(y), 2)))
    with pytest.raises(InvalidDataError, match="not all 0; their sum is 0.0"):
        nd.fit(model, Xd, yd, sample_weight=np.zeros(len(y)))
    assert model.epochs_trained == 0
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)


def test_stream_fit_refuses_bad_arguments():
    X, y = moons()
    Xd, yd = as_dask(X, y)
    model = classifier()
    with pytest.raises(InvalidParameterError, match="epochs must be an integer >= 1"):
        nd.fit(model, Xd, yd, epochs=0)
    with pytest.raises(InvalidParameterError, match="prefetch must be True or False"):
        nd.fit(model, Xd, yd, prefetch="yes")
    with pytest.raises(InvalidParameterError, match=r"validation_data must be \(X_val, y_val\) "
                                                    r"or .*received 4 items"):
        nd.fit(model, Xd, yd, validation_data=(X, y, np.ones(len(y)), None))
    with pytest.raises(InvalidDataError, match="X must be a dask array"):
        nd.fit(model, X, y)
    assert model.optimizer is None and model.epochs_trained == 0


# -- data-parallel fit ------------------------------------------------------------------------
def placed(client, X, owners):
    """`X` persisted with row block i on worker ``owners[i]`` (the workers in address
    order), whatever the load: Dask's own placement put all three blocks on one worker on a
    loaded machine."""
    workers = sorted(client.scheduler_info()["workers"])
    blocks = [client.persist(X.blocks[i], workers=[workers[k]]) for i, k in enumerate(owners)]
    return da.concatenate(blocks, axis=0).persist()


# Unequal shards on two workers, and every block on one worker (the other holds none).
PLACEMENTS = pytest.mark.parametrize("owners", [(0, 1, 0), (0, 0, 0)],
                                     ids=["two-workers", "one-worker"])


@pytest.mark.parametrize("reduction", ["collective", "client"])
def test_fit_parallel_equals_full_batch_single_process(client, reduction):
    if reduction == "collective":
        pytest.importorskip("torch.distributed")
    X, y = moons()
    Xd, yd = as_dask(X, y)
    held = placed(client, Xd, (0, 1, 0))
    placement = nd.shard_placement(client, held)
    model, expected = classifier(), classifier()
    history = nd.fit_parallel(model, held, yd, client=client, epochs=30, lr=0.5,
                              reduction=reduction)
    want = expected.fit(X, y, epochs=30, lr=0.5)
    assert len(placement) == 2  # both workers train, on shards of unequal size
    assert max_diff(model, expected) <= 1e-15
    np.testing.assert_allclose(history["loss"], want["loss"], rtol=1e-14)
    assert model.epochs_trained == 30


def test_fit_parallel_adam_continues_across_calls(client):
    pytest.importorskip("torch.distributed")
    X, y = moons()
    Xd, yd = as_dask(X, y)
    model, expected = classifier(), classifier()
    nd.fit_parallel(model, Xd, yd, client=client, epochs=10, lr=0.05, optimizer="adam")
    nd.fit_parallel(model, Xd, yd, client=client, epochs=10, reduction="client")
    expected.fit(X, y, epochs=20, lr=0.05, optimizer="adam")
    assert model.optimizer.t == 20 and model.epochs_trained == 20
    # Adam divides by sqrt(v): rounding in near-zero gradients grows more than with SGD.
    assert max_diff(model, expected) <= 1e-12


def documented_shares(client, held, n, batch):
    """Each worker's rows in block order (by rank), the steps of an epoch and each rank's
    rows per step, as fit_parallel documents them, from where the blocks of `held` are."""
    placement = nd.shard_placement(client, held)
    starts = np.cumsum((0,) + ROWS)
    ranks = [np.concatenate([np.arange(starts[i], starts[i + 1]) for i in placement[k]])
             for k in sorted(placement)]
    steps = -(-n // batch)
    return ranks, steps, [-(-len(r) // steps) for r in ranks]


@PLACEMENTS
@pytest.mark.parametrize("reduction", ["collective", "client"])
def test_fit_parallel_minibatches_are_train_steps_on_the_global_batches(client, reduction,
                                                                        owners):
    """Synchronous minibatch SGD, in block order (shuffle=False): each step is one
    train_step on the union of every worker's share of the step's rows, as documented:
    steps = ceil(n / batch_size) per epoch, worker k takes rows [s b_k, (s + 1) b_k) of its
    rows, b_k = ceil(n_k / steps)."""
    if reduction == "collective":
        pytest.importorskip("torch.distributed")
    X, y = moons()
    Xd, yd = as_dask(X, y)
    held = placed(client, Xd, owners)
    batch, epochs = 64, 3
    ranks, steps, shares = documented_shares(client, held, len(X), batch)
    model, expected = classifier(), classifier()
    history = nd.fit_parallel(model, held, yd, client=client, epochs=epochs, lr=0.5,
                              batch_size=batch, shuffle=False, reduction=reduction)
    expected.set_optimizer("sgd", lr=0.5)
    Xe, Ye = expected.encode(X, y)
    want = []
    for _ in range(epochs):
        total = 0.0
        for s in range(steps):
            rows = np.concatenate([r[s * b:(s + 1) * b] for r, b in zip(ranks, shares)])
            loss, _ = expected.train_step(Xe[rows], Ye[rows])
            total += float(loss) * len(rows)
        want.append(total / len(X))
    assert len(ranks) == len(set(owners)) and len({len(r) for r in ranks}) == len(ranks)
    assert max_diff(model, expected) <= 1e-14
    np.testing.assert_allclose(history["loss"], want, rtol=1e-13)
    assert model.epochs_trained == epochs
    del held


def weights_with_zeros(n, seed=1):
    """Integer weights, zeros among them, and the middle block (rows 70-199) all 0."""
    w = np.random.default_rng(seed).integers(0, 4, size=n).astype(float)
    w[70:200] = 0
    return w


@pytest.mark.parametrize("reduction", ["collective", "client"])
def test_fit_parallel_with_weights_is_sequential_fit_with_weights(client, reduction):
    if reduction == "collective":
        pytest.importorskip("torch.distributed")
    X, y = moons()
    w = weights_with_zeros(len(y))
    Xd, yd = as_dask(X, y)
    model, expected = classifier(), classifier()
    history = nd.fit_parallel(model, Xd, yd, client=client, sample_weight=w, epochs=20,
                              lr=0.5, reduction=reduction)
    want = expected.fit(X, y, sample_weight=w, epochs=20, lr=0.5)
    assert max_diff(model, expected) <= 1e-14
    np.testing.assert_allclose(history["loss"], want["loss"], rtol=1e-13)
    # The weights matter: unweighted training ends elsewhere.
    plain = classifier()
    nd.fit_parallel(plain, Xd, yd, client=client, epochs=20, lr=0.5, reduction=reduction)
    assert max_diff(plain, expected) > 1e-3


@PLACEMENTS
@pytest.mark.parametrize("reduction", ["collective", "client"])
def test_fit_parallel_weighted_minibatches_are_weighted_train_steps(client, reduction,
                                                                    owners):
    """As the unweighted replay above, each step a train_step on the global batch with its
    weights divided by their sum (a batch that weighs 0 divides by 1, as Sequential.fit)."""
    if reduction == "collective":
        pytest.importorskip("torch.distributed")
    X, y = moons()
    # Zeros among the weights, but no global batch of only zeros but the one made below,
    # wherever the blocks are (with weights_with_zeros' block of zeros, rows 70-199, on one
    # worker with the rest, four steps would weigh nothing).
    w = np.random.default_rng(1).integers(0, 4, size=len(y)).astype(float)
    Xd, yd = as_dask(X, y)
    held = placed(client, Xd, owners)
    batch, epochs = 40, 3
    ranks, steps, shares = documented_shares(client, held, len(X), batch)
    for r, b in zip(ranks, shares):
        w[r[b:2 * b]] = 0  # the second step's global batch weighs nothing
    model, expected = classifier(), classifier()
    history = nd.fit_parallel(model, held, yd, client=client, sample_weight=w,
                              epochs=epochs, lr=0.5, batch_size=batch, shuffle=False,
                              reduction=reduction)
    expected.set_optimizer("sgd", lr=0.5)
    Xe, Ye = expected.encode(X, y)
    want, empty = [], 0
    for _ in range(epochs):
        total = 0.0
        for s in range(steps):
            rows = np.concatenate([r[s * b:(s + 1) * b] for r, b in zip(ranks, shares)])
            mass = w[rows].sum()
            empty += mass == 0
            loss, _ = expected.train_step(Xe[rows], Ye[rows],
                                          weight=(w[rows] / (mass or 1.0))[:, None])
            total += float(loss) * mass
        want.append(total / w.sum())
    assert empty == epochs  # one step an epoch whose global batch weighs nothing
    assert max_diff(model, expected) <= 1e-14
    np.testing.assert_allclose(history["loss"], want, rtol=1e-13)
    del held


def test_fit_parallel_refuses_bad_weights_and_changes_nothing(client):
    X, y = moons()
    Xd, yd = as_dask(X, y)
    model = classifier()
    before = model.get_weights()
    bad = np.ones(len(y))
    bad[220] = -1.0  # found on the worker that holds the last block
    with pytest.raises(InvalidDataError, match=r"shard \d of rank \d.*sample_weight must be "
                                               r"finite numbers >= 0; received -1"):
        nd.fit_parallel(model, Xd, yd, client=client, sample_weight=bad, reduction="client")
    with pytest.raises(InvalidDataError, match="not all 0; their sum is 0.0"):
        nd.fit_parallel(model, Xd, yd, client=client, sample_weight=np.zeros(len(y)))
    with pytest.raises(InvalidDataError, match="sample_weight must have shape"):
        nd.fit_parallel(model, Xd, yd, client=client, sample_weight=np.ones((len(y), 2)))
    assert model.optimizer is None and model.epochs_trained == 0
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)


def test_fit_parallel_shuffled_minibatches_train_and_repeat_with_the_seed(client):
    pytest.importorskip("torch.distributed")
    X, y = moons()
    Xd, yd = as_dask(X, y)
    # A run depends on which worker holds which block (a worker's rows make its share of a
    # step): the blocks are placed once, as a user persisting X before training does.
    Xd = Xd.persist()
    distributed.wait(Xd)
    runs = []
    for _ in range(2):
        model = classifier(seed=3)
        history = nd.fit_parallel(model, Xd, yd, client=client, epochs=5, lr=0.5,
                                  batch_size=50)
        runs.append((model, history["loss"]))
    in_order = classifier(seed=3)
    nd.fit_parallel(in_order, Xd, yd, client=client, epochs=5, lr=0.5, batch_size=50,
                    shuffle=False)
    (first, losses), (second, again) = runs
    assert losses[-1] < 0.75 * losses[0]  # it trains
    assert max_diff(first, second) == 0 and losses == again  # one seed, one run
    assert max_diff(first, in_order) > 1e-6  # the rows were visited in another order
    del Xd


def test_fit_parallel_rolls_back_on_divergence(client):
    X, _ = moons()
    targets = 1e3 * (X[:, 0] + 10)
    model = nnx.Sequential([nnx.Dense(2, 4, activation="relu"), nnx.Dense(4, 1)],
                           dtype="float64", backend="numpy")
    with pytest.raises(NonFiniteLossError, match="rolled back"):
        nd.fit_parallel(model, da.from_array(X, chunks=(ROWS, 2)), targets, client=client,
                        epochs=50, lr=10.0, reduction="client")
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())
    assert len(model.history["loss"]) == model.epochs_trained + 1


def test_fit_parallel_refuses_bad_arguments(client):
    X, y = moons()
    Xd, yd = as_dask(X, y)
    model = classifier()
    with pytest.raises(InvalidParameterError, match="client must be a dask.distributed"):
        nd.fit_parallel(model, Xd, yd, client=None)
    with pytest.raises(InvalidParameterError, match="reduction must be one of"):
        nd.fit_parallel(model, Xd, yd, client=client, reduction="tree")
    with pytest.raises(InvalidParameterError, match="collective_backend"):
        nd.fit_parallel(model, Xd, yd, client=client, collective_backend="")
    with pytest.raises(InvalidParameterError, match="batch_size"):
        nd.fit_parallel(model, Xd, yd, client=client, batch_size=0)
    with pytest.raises(InvalidParameterError, match="shuffle"):
        nd.fit_parallel(model, Xd, yd, client=client, batch_size=10, shuffle="yes")
    assert model.optimizer is None and model.epochs_trained == 0


# -- scikit-learn's partial_fit under dask-ml -------------------------------------------------
def test_dask_ml_incremental_trains_as_partial_fit_block_by_block():
    pytest.importorskip("sklearn")
    wrappers = pytest.importorskip("dask_ml.wrappers")
    from nnx.sklearn import MLPClassifier

    X, y = moons(300)
    Xd, yd = da.from_array(X, chunks=(100, 2)), da.from_array(y, chunks=100)
    incremental = wrappers.Incremental(MLPClassifier((8,), random_state=0, dtype="float64"),
                                       shuffle_blocks=False)
    incremental.fit(Xd, yd, classes=[0, 1])
    expected = MLPClassifier((8,), random_state=0, dtype="float64")
    for start in (0, 100, 200):
        expected.partial_fit(X[start:start + 100], y[start:start + 100], classes=[0, 1])
    got = incremental.estimator_.model_.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(got, expected.model_.get_weights()))
    np.testing.assert_array_equal(incremental.predict(Xd).compute(), expected.predict(X))


def test_stream_fit_counts_accuracy_in_the_models_own_classes():
    X, y = moons()
    names = np.array(["cat", "dog", "eel"])[y]
    model, expected = classifier(), classifier()
    model.classes = expected.classes = ["eel", "dog", "cat"]  # not in the labels' order
    history = nd.fit(model, da.from_array(X, chunks=(ROWS, 2)), names, epochs=3, lr=0.5,
                     batch_size=None, validation_data=(X, names))
    want = expected.fit(X, names, epochs=3, lr=0.5, validation_data=(X, names))
    assert history["accuracy"] == want["accuracy"] and max(want["accuracy"]) > 0.5
    assert history["val_accuracy"] == want["val_accuracy"]
    assert max_diff(model, expected) <= 1e-15
