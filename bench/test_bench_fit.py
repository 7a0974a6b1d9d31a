"""``Sequential.fit`` against its own ``train_step`` ceiling, NumPy, 1M x 64 (full mode).

One call of ``fit(X, y, epochs=1, batch_size=256)`` (shuffled: the rows of each batch are
gathered from the caller's arrays, and the call checks and encodes the data) against the same
number of ``train_step`` calls on batches already encoded on the device, in order (the
ceiling: nothing but the steps). Network 64 -> 256 (tanh) -> 10 (softmax), float32, SGD.

Target: fit >= 0.9x the ceiling's throughput, i.e. ``ratio_fit_vs_ceiling`` (a ratio of times,
fit / ceiling) <= 1.11. ``ratio_epoch_vs_ceiling`` is the same for a 3-epoch fit against 3
passes of the ceiling: the per-call checks spread over three epochs. With
``--benchmark-disable`` each runs once on 4096 rows (a smoke check that fit trains).
"""

from __future__ import annotations

import numpy as np
import pytest
from benchlib import environment_info, paired_ratio, paired_rounds, seconds_per_call

import nnx

N_IN, HIDDEN, N_OUT, BATCH = 64, 256, 10, 256


def network(hidden: int = HIDDEN) -> nnx.Sequential:
    model = nnx.Sequential([nnx.Dense(N_IN, hidden, activation="tanh"),
                            nnx.Dense(hidden, N_OUT, activation="softmax")],
                           seed=0, backend="numpy")
    model.set_optimizer("sgd", lr=0.05)
    return model


def record(benchmark, key: str, ratio: dict[str, float]) -> None:
    for part in ("median", "q1", "q3", "rounds"):
        suffix = "" if part == "median" else f"_{part}"
        benchmark.extra_info[f"ratio_{key}{suffix}"] = ratio[part]


def test_fit_vs_its_train_step_ceiling(benchmark, mode):
    n = 4096 if mode == "smoke" else 1 << 20
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, N_IN), dtype=np.float32)
    y = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0)
    fitted, ceiling = network(), network()
    Xc, Yc = ceiling.encode(X, y)
    slices = [slice(i, min(i + BATCH, n)) for i in range(0, n, BATCH)]

    def fit(epochs=1):
        return fitted.fit(X, y, epochs=epochs, batch_size=BATCH)

    def steps(epochs=1):
        for _ in range(epochs):
            for rows in slices:
                loss, _ = ceiling.train_step(Xc[rows], Yc[rows])
        return float(loss)

    # The answer: one epoch of fit lowers the loss from where it started.
    start = network().evaluate(X, y)["loss"]
    assert fit()["loss"][0] < start
    assert fitted.evaluate(X, y)["loss"] < start

    benchmark.extra_info.update(environment_info())
    benchmark.extra_info.update({"rows": n, "batch_size": BATCH, "n_in": N_IN,
                                 "hidden": HIDDEN})
    benchmark(fit)
    rounds = 1 if mode == "smoke" else min(
        paired_rounds(mode, seconds_per_call(benchmark, fit), budget=20.0), 9)
    record(benchmark, "fit_vs_ceiling", paired_ratio(fit, steps, rounds))
    record(benchmark, "epoch_vs_ceiling",
           paired_ratio(lambda: fit(3), lambda: steps(3), max(1, rounds // 2)))


@pytest.mark.parametrize("hidden,batch", [(256, 256), (1024, 4096)])
def test_one_blas_thread_against_the_default(benchmark, mode, hidden, batch):
    """The same ``train_step`` calls (64 -> H (tanh) -> 10 (softmax), float32, SGD) with the
    BLAS library's default threads and limited to one (threadpoolctl, interleaved):
    ``ratio_one_thread_vs_default`` below 1 means one thread is faster for these products.
    A measurement for the README's advice, not a target."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if not any(pool["user_api"] == "blas" for pool in threadpoolctl.threadpool_info()):
        pytest.skip("NumPy's BLAS exposes no thread pool to threadpoolctl")
    steps_per_call = 2 if mode == "smoke" else 64
    n = batch * steps_per_call
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, N_IN), dtype=np.float32)
    y = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0)
    model, twin = network(hidden), network(hidden)
    Xc, Yc = model.encode(X, y)
    slices = [slice(i, i + batch) for i in range(0, n, batch)]

    def default(m=model):
        for rows in slices:
            loss, _ = m.train_step(Xc[rows], Yc[rows])
        return float(loss)

    def one_thread(m=model):
        with threadpoolctl.threadpool_limits(1, user_api="blas"):
            return default(m)

    # The answer: one thread computes the same steps (up to the products' summation order).
    assert one_thread(twin) == pytest.approx(default(model), rel=1e-4)
    for a, b in zip(model.get_weights(), twin.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)

    benchmark.extra_info.update(environment_info())
    benchmark.extra_info.update({"hidden": hidden, "batch_size": batch, "steps": len(slices),
                                 "blas_threads": [pool["num_threads"] for pool in
                                                  threadpoolctl.threadpool_info()
                                                  if pool["user_api"] == "blas"]})
    benchmark(default)
    rounds = 1 if mode == "smoke" else min(
        paired_rounds(mode, seconds_per_call(benchmark, default), budget=15.0), 15)
    record(benchmark, "one_thread_vs_default", paired_ratio(one_thread, default, rounds))
