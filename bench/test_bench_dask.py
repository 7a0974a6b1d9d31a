"""nnx.dask against in-memory nnx, side by side in one run (interleaved pairs of calls).

- ``predict``: ``nnx.dask.predict(model, X).compute()`` on a dask array of NumPy blocks (and
  on :func:`nnx.dask.read_npy` of a file in the page cache) against ``model.predict(X)``.
  Target: >= 0.9x the in-memory throughput (ratio of times <= 1.11).
- ``fit``: one epoch of ``nnx.dask.fit`` (blocks read from a ``.npy`` file, the next read in
  the background) against ``Sequential.fit`` on the same data in memory, and against the
  in-RAM ceiling: the same number of ``train_step`` calls on batches already on the device.
  Targets: >= 1.0x ``Sequential.fit`` and >= 0.8x the ceiling; and ``Sequential.fit`` itself
  >= 0.9x the ceiling (``ratio_fit_vs_ceiling``, a ratio of times: <= 1.11).

``extra_info`` holds ``ratio_*`` (time of nnx.dask / time of the peer: below 1 is faster),
with quartiles. With ``--benchmark-disable`` each runs once on small data (a smoke check of
the code path and its answer).
"""

from __future__ import annotations

import numpy as np
import pytest
from benchlib import environment_info, paired_ratio, paired_rounds, seconds_per_call

da = pytest.importorskip("dask.array")

import nnx  # noqa: E402
import nnx.dask as nd  # noqa: E402

N_IN, HIDDEN, N_OUT = 64, 256, 10


def network(seed=0):
    return nnx.Sequential([nnx.Dense(N_IN, HIDDEN, activation="tanh"),
                           nnx.Dense(HIDDEN, N_OUT, activation="softmax")],
                          seed=seed, backend="numpy")


def data(n):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, N_IN), dtype=np.float32)
    y = ((X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0)).astype(np.int64)
    return X, y


def record(benchmark, key, ratio):
    benchmark.extra_info[f"ratio_{key}"] = ratio["median"]
    benchmark.extra_info[f"ratio_{key}_q1"] = ratio["q1"]
    benchmark.extra_info[f"ratio_{key}_q3"] = ratio["q3"]
    benchmark.extra_info[f"ratio_{key}_rounds"] = ratio["rounds"]


def test_dask_predict(benchmark, mode, tmp_path):
    n = 4096 if mode == "smoke" else 1 << 19  # 128 MiB of float32 inputs
    chunk = 1024 if mode == "smoke" else 1 << 16
    X, _ = data(n)
    model = network()
    np.save(tmp_path / "X.npy", X)
    Xd = da.from_array(X, chunks=(chunk, N_IN))
    Xf = nd.read_npy(tmp_path / "X.npy", chunk_rows=chunk)
    expected = model.predict(X)
    np.testing.assert_array_equal(nd.predict(model, Xd).compute(), expected)
    np.testing.assert_array_equal(nd.predict(model, Xf).compute(), expected)

    def in_memory():
        return model.predict(X)

    def on_dask():
        return nd.predict(model, Xd).compute()

    def from_file():
        return nd.predict(model, Xf).compute()

    benchmark.extra_info.update(environment_info())
    benchmark.extra_info.update({"rows": n, "chunk_rows": chunk, "n_in": N_IN,
                                 "hidden": HIDDEN})
    benchmark(on_dask)
    rounds = paired_rounds(mode, seconds_per_call(benchmark, on_dask))
    record(benchmark, "dask_vs_memory", paired_ratio(on_dask, in_memory, rounds))
    record(benchmark, "file_vs_memory", paired_ratio(from_file, in_memory, rounds))


def test_dask_stream_fit(benchmark, mode, tmp_path):
    n = 4096 if mode == "smoke" else 1 << 18  # 64 MiB of inputs, blocks of 8 MiB
    chunk = 1024 if mode == "smoke" else 1 << 15
    batch = 256
    X, y = data(n)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    Xf = nd.read_npy(tmp_path / "X.npy", chunk_rows=chunk)
    yf = nd.read_npy(tmp_path / "y.npy", chunk_rows=chunk)
    streamed, in_memory, ceiling = network(), network(), network()
    for m in (streamed, in_memory, ceiling):
        m.set_optimizer("sgd", lr=0.05)
    Xc, Yc = ceiling.encode(X, y)
    slices = [slice(i, min(i + batch, n)) for i in range(0, n, batch)]

    def stream():
        return nd.fit(streamed, Xf, yf, epochs=1, batch_size=batch)

    def memory():
        return in_memory.fit(X, y, epochs=1, batch_size=batch)

    def ram_ceiling():
        for rows in slices:
            loss, _ = ceiling.train_step(Xc[rows], Yc[rows])
        return float(loss)

    # The answer: one streamed epoch lowers the loss as one in-memory epoch does.
    start = network().evaluate(X, y)["loss"]
    assert stream()["loss"][0] < start and memory()["loss"][0] < start

    benchmark.extra_info.update(environment_info())
    benchmark.extra_info.update({"rows": n, "chunk_rows": chunk, "batch_size": batch})
    benchmark(stream)
    rounds = paired_rounds(mode, seconds_per_call(benchmark, stream), budget=20.0)
    rounds = 1 if mode == "smoke" else min(rounds, 9)
    record(benchmark, "stream_vs_fit", paired_ratio(stream, memory, rounds))
    record(benchmark, "stream_vs_ceiling", paired_ratio(stream, ram_ceiling, rounds))
    record(benchmark, "fit_vs_ceiling", paired_ratio(memory, ram_ceiling, rounds))
