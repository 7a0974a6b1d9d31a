"""The matrix-multiply core: one Dense layer's forward and backward against raw matmuls.

nnx's side is exactly what a training step runs for a layer H -> H:
``Dense.logits(x, training=True)`` (``x @ W + b``, keeping `x` for the backward) and
``Dense.backward(g, through_activation=False)`` (``x.T @ g``, ``g @ W.T`` and the bias gradient
``sum(g, axis=0)``). The ceiling is the same three ``xp.matmul`` calls and the sum, on the same
backend and arrays, with no layer around them.
"""

from __future__ import annotations

import numpy as np
import pytest
from benchlib import (
    BenchBackend,
    assert_close,
    paired_ratio,
    paired_rounds,
    record_throughput,
    seconds_per_call,
    tolerance,
    warm_up,
)

import nnx

BATCH = 4096
SMOKE_BATCH = 256  # --benchmark-disable: one call each, to check the answers quickly
# A 4096 x 4096 layer on a batch of 4096 is 412 GFLOP per call: seconds on a CPU. The CPU
# backends use a batch of 1024 there (recorded as extra_info["batch"]).
CPU_BATCH_AT_4096 = 1024
CHECK_ROWS = 32  # rows (and columns of dW) compared with the float64 NumPy reference


def core_batch(hidden: int, on_gpu: bool, mode: str = "full") -> int:
    if mode == "smoke":
        return SMOKE_BATCH
    return CPU_BATCH_AT_4096 if hidden >= 4096 and not on_gpu else BATCH


def core_flops(batch: int, hidden: int) -> int:
    """2*m*n*k for each of x @ W, x.T @ g and g @ W.T."""
    return 3 * 2 * batch * hidden * hidden


def _inputs(backend: nnx.Backend, hidden: int, batch: int, dtype_name: str):
    """A built Dense(H -> H) with random (never zero) W and b, and random x and g on the
    device; plus their float64 host copies for the reference."""
    rng = np.random.default_rng(hidden)
    layer = nnx.Dense(hidden, hidden).build(backend, dtype_name, rng)
    layer.b = rng.standard_normal(hidden)
    x_host = rng.standard_normal((batch, hidden))
    g_host = rng.standard_normal((batch, hidden)) / batch
    x = backend.asarray(x_host, dtype=layer.dtype)
    g = backend.asarray(g_host, dtype=layer.dtype)
    # What the device actually holds (rounded to the dtype), so only the arithmetic is compared.
    host = {name: np.asarray(nnx.to_numpy(a), dtype=np.float64)
            for name, a in (("x", x), ("g", g), ("W", layer.W), ("b", layer.b))}
    return layer, x, g, host


def _check(outputs, host, tol: float, with_bias: bool) -> None:
    """Compare slices of z, dW, dx and all of db with a float64 NumPy reference."""
    z, dW, dx, db = outputs
    x, g, W, b = host["x"], host["g"], host["W"], host["b"]
    rows = slice(0, min(CHECK_ROWS, x.shape[0], W.shape[1]))  # in bounds, as the standard asks
    z_ref = x[rows] @ W + (b if with_bias else 0)
    assert_close(z[rows, ...], z_ref, tol, "forward x @ W" + (" + b" if with_bias else ""))
    assert_close(dW[:, rows], x.T @ g[:, rows], tol, "dW = x.T @ g")
    assert_close(dx[rows, ...], g[rows] @ W.T, tol, "dx = g @ W.T")
    assert_close(db, np.sum(g, axis=0), tol, "db = sum(g, axis=0)")


@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
@pytest.mark.parametrize("impl", ["nnx", "raw"])
def test_dense_core(benchmark, bench_backend: BenchBackend, core_hidden: int, dtype_name: str,
                    impl: str, mode: str) -> None:
    backend = bench_backend.backend
    if dtype_name == "float64" and not backend.supports_float64:
        pytest.skip(f"{bench_backend.id} has no float64")
    # Both sides inside the backend's scope for the dtype, as nnx's models run (JAX computes
    # in float32 outside its x64 scope).
    with backend.scope(dtype_name):
        _measure(benchmark, bench_backend, core_hidden, dtype_name, impl, mode)


def _measure(benchmark, bench_backend: BenchBackend, hidden: int, dtype_name: str, impl: str,
             mode: str) -> None:
    backend = bench_backend.backend
    batch = core_batch(hidden, bench_backend.on_gpu, mode)
    layer, x, g, host = _inputs(backend, hidden, batch, dtype_name)
    xp = backend.xp
    W = layer.W
    sync = backend.synchronize

    def run_nnx():
        z = layer.logits(x, training=True)
        dx = layer.backward(g, through_activation=False)
        sync()
        return z, layer.dW, dx, layer.db

    def run_raw():
        z = xp.matmul(x, W)
        dW = xp.matmul(x.T, g)
        dx = xp.matmul(g, W.T)
        db = xp.sum(g, axis=0)
        sync()
        return z, dW, dx, db

    run = run_nnx if impl == "nnx" else run_raw
    flops = core_flops(batch, hidden)
    benchmark.group = f"core {dtype_name} H={hidden}"
    benchmark.extra_info.update(bench_backend.info())
    benchmark.extra_info.update({
        "kind": "core", "impl": impl, "hidden": hidden, "batch": batch, "dtype": dtype_name,
        "flops": flops,
        "ops": ("Dense.logits(training=True) + Dense.backward(through_activation=False)"
                if impl == "nnx"
                else "xp.matmul x3 + xp.sum"),
    })
    warm_up(run, 1 if flops > 2e10 else 2)  # pytest-benchmark's calibration call follows
    outputs = benchmark(run)
    record_throughput(benchmark, flops)
    _check(outputs, host, tolerance(dtype_name, bench_backend.info()["tf32"]),
           with_bias=impl == "nnx")
    if impl == "nnx":
        # The share of the ceiling from interleaved calls (raw time / nnx time of neighbours),
        # which a drift of the machine's speed between two benchmarks cannot fake.
        rounds = paired_rounds(mode, seconds_per_call(benchmark, run))
        paired = paired_ratio(run_raw, run_nnx, rounds)
        benchmark.extra_info.update({f"paired_share_{k}": v for k, v in paired.items()})
