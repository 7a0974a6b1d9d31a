"""CUDA fast paths against the generic code they replace, side by side in one run (CuPy only).

``test_moons_step``, ``test_wide_step``
    One full-batch training step (forward, loss, backward, SGD update) as
    ``Sequential.train_step`` (``eager``: one launch per operation, Python in between) and as
    a CUDA graph (``captured``: ``nnx.cuda.CapturedStep``, one launch). The moons network is
    the tutorial's (2-3-2, 200 samples, float64, L2); the wide one is 64-H-H-10, batch 4096,
    float32.
``test_activation_backward``
    tanh, sigmoid and relu backward at 4096 x 1024 float32: the generic Array API code
    (``generic``, two or three kernels), the fused kernel (``fused``, one) and a plain
    ``a * grad`` with the same memory traffic (``ceiling``).
``test_loss_gradient``
    Softmax cross-entropy and binary cross-entropy, loss and gradient, at 4096 x 1024 float32.

Every benchmark first checks that its paths agree. Skipped without a usable CuPy (or when
``--bench-backends`` leaves cupy out). The rows carry ``kind='cuda-fastpath'`` in
``extra_info``, with the device name, the CuPy, CUDA runtime and driver versions and TF32,
and the device's own times (``device_us_median``, from ``cupyx.profiler.benchmark``: CUDA
events around each call, no host sync per call) next to pytest-benchmark's host rounds.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import numpy as np
import pytest
from benchlib import (
    BenchBackend,
    assert_close,
    record_rate,
    record_throughput,
    resolve_backend,
    selected_backend_ids,
    tolerance,
    warm_up,
)

import nnx
from nnx import cuda
from nnx.activations import ACTIVATIONS
from nnx.backends.cupy.kernels import _fusable
from nnx.losses import LOSSES

SHAPE = {"smoke": (256, 64), "quick": (4096, 1024), "full": (4096, 1024)}


@pytest.fixture
def gpu(request: pytest.FixtureRequest) -> BenchBackend:
    if "cupy" not in selected_backend_ids(request.config):
        pytest.skip("cupy not in --bench-backends")
    return resolve_backend("cupy")


def cuda_info(bench: BenchBackend) -> dict[str, Any]:
    """What the rows record: :meth:`BenchBackend.info` (device, CuPy, CUDA runtime and
    driver versions), the kind and whether CUPY_TF32 asks for TF32."""
    return {**bench.info(), "kind": "cuda-fastpath", "cupy": bench.backend.library_version(),
            "cupy_tf32": cuda.tf32_enabled()}


def synced(fn, backend: nnx.Backend):
    """`fn` followed by a device sync: CuPy launches asynchronously."""
    def run():
        out = fn()
        backend.synchronize()
        return out
    return run


def record_bandwidth(benchmark, nbytes: int) -> None:
    """GB/s at the minimum and median round time, from the bytes the operation must move."""
    benchmark.extra_info["bytes"] = nbytes
    record_rate(benchmark, nbytes, "gbytes_per_s")


def record_device_times(benchmark, fn, nbytes: int | None = None, n_repeat: int = 200) -> None:
    """The kernels' own time: ``cupyx.profiler.benchmark`` puts CUDA events around each call
    on the current stream (no host sync per call), so a 12-40 us kernel is not measured with
    the ~10 us of host time that ``synced()`` adds to each pytest-benchmark round, which
    pulls fused/generic ratios towards 1. Medians and minima in microseconds, and GB/s from
    the device median when `nbytes` is given."""
    from cupyx.profiler import benchmark as device_benchmark

    result = device_benchmark(fn, n_repeat=n_repeat, n_warmup=10, max_duration=2.0)
    gpu = np.asarray(result.gpu_times)[0] * 1e6
    cpu = np.asarray(result.cpu_times) * 1e6
    info = benchmark.extra_info
    info.update({"device_us_median": float(np.median(gpu)), "device_us_min": float(gpu.min()),
                 "device_host_us_median": float(np.median(cpu)),
                 "device_repeats": int(gpu.size)})
    if nbytes is not None:
        info["device_gbytes_per_s"] = nbytes / (info["device_us_median"] * 1e-6) / 1e9


# -- a whole training step: eager against captured ----------------------------------------------
def _network(sizes, n, dtype, l2, backend, seed):
    layers = [nnx.Dense(a, b, "tanh") for a, b in pairwise(sizes[:-1])]
    layers.append(nnx.Dense(sizes[-2], sizes[-1], "softmax"))
    return nnx.Sequential(layers, l2=l2, dtype=dtype, seed=seed, backend=backend)


def _step_flops(sizes, n) -> int:
    """Matmul FLOPs of one step: forward, dW of every layer, dx of all but the first."""
    products = sum(n * a * b for a, b in pairwise(sizes))
    return 2 * (3 * products - n * sizes[0] * sizes[1])


def run_step_benchmark(benchmark, bench: BenchBackend, variant: str, name: str, sizes, n: int,
                       dtype: str, l2: float, lr: float, X, y) -> None:
    backend = bench.backend
    # The check: one eager step and one replay from the same weights agree.
    eager = _network(sizes, n, dtype, l2, backend, seed=1)
    eager.optimizer = nnx.SGD(lr=lr)
    Xd, Yd = eager.encode(X, y)
    twin = _network(sizes, n, dtype, l2, backend, seed=1)
    step = cuda.capture_step(twin, Xd, Yd, optimizer="sgd", lr=lr)
    want, got = eager.train_step(Xd, Yd)[0], step()
    tol = tolerance(dtype, bench.info()["tf32"])
    assert_close(got, np.asarray(float(want)), tol, f"{name}: captured loss")
    step.sync_to_model()
    for i, (p, q) in enumerate(zip(twin.parameters(), eager.parameters())):
        assert_close(p, np.asarray(nnx.to_numpy(q), dtype=np.float64), tol,
                     f"{name}: parameter {i} after one step")

    if variant == "eager":
        run = synced(lambda: eager.train_step(Xd, Yd)[0], backend)
    else:
        run = synced(step, backend)
    warm_up(run, 3)
    benchmark.group = f"cuda train {name}"
    benchmark.extra_info.update(cuda_info(bench))
    benchmark.extra_info.update({
        "impl": variant, "config": name, "sizes": list(sizes), "batch": n, "dtype": dtype,
        "l2": l2, "lr": lr, "flops": _step_flops(sizes, n),
        "what": ("Sequential.train_step" if variant == "eager"
                 else "nnx.cuda.CapturedStep (one CUDA graph launch)"),
    })
    loss = benchmark(run)
    record_throughput(benchmark, _step_flops(sizes, n))
    if variant == "eager":
        record_device_times(benchmark, lambda: eager.train_step(Xd, Yd), n_repeat=50)
    else:
        record_device_times(benchmark, step, n_repeat=50)
    assert np.isfinite(float(nnx.to_numpy(loss)))


@pytest.mark.parametrize("variant", ["eager", "captured"])
def test_moons_step(benchmark, gpu: BenchBackend, variant: str) -> None:
    X, y = nnx.datasets.make_moons(200, noise=0.2, seed=0)
    run_step_benchmark(benchmark, gpu, variant, "moons", (2, 3, 2), 200, "float64",
                       0.01, 0.1, X, y)


@pytest.mark.parametrize("variant", ["eager", "captured"])
def test_wide_step(benchmark, gpu: BenchBackend, variant: str, train_hidden: int,
                   mode: str) -> None:
    n = 256 if mode == "smoke" else 4096
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((n, 64)), rng.integers(0, 10, n)
    run_step_benchmark(benchmark, gpu, variant, f"wide-H{train_hidden}",
                       (64, train_hidden, train_hidden, 10), n, "float32", 1e-3, 0.1, X, y)


# -- kernels: generic against fused ---------------------------------------------------------
@pytest.mark.parametrize("impl", ["generic", "fused", "ceiling"])
@pytest.mark.parametrize("name", ["tanh", "sigmoid", "relu"])
def test_activation_backward(benchmark, gpu: BenchBackend, name: str, impl: str,
                             mode: str) -> None:
    backend, xp = gpu.backend, gpu.backend.xp
    shape = SHAPE[mode]
    rng = np.random.default_rng(2)
    a = ACTIVATIONS[name].forward(xp, backend.asarray(rng.standard_normal(shape), xp.float32))
    grad = backend.asarray(rng.standard_normal(shape), xp.float32)
    generic = ACTIVATIONS[name].backward
    fused = cuda.fused_activations()[name].backward
    assert _fusable(a, grad)
    want = np.asarray(nnx.to_numpy(generic(xp, a, grad)), dtype=np.float64)
    assert_close(fused(xp, a, grad), want, 2e-6, f"{name} backward: fused against generic")

    fn = {"generic": lambda: generic(xp, a, grad), "fused": lambda: fused(xp, a, grad),
          "ceiling": lambda: xp.multiply(a, grad)}[impl]
    run = synced(fn, backend)
    warm_up(run, 3)
    benchmark.group = f"cuda {name} backward {shape[0]}x{shape[1]}"
    benchmark.extra_info.update(cuda_info(bench=gpu))
    benchmark.extra_info.update({"impl": impl, "op": f"{name}_backward", "shape": list(shape),
                                 "dtype": "float32"})
    benchmark(run)
    record_bandwidth(benchmark, 3 * a.size * 4)  # read a and grad, write the result
    record_device_times(benchmark, fn, 3 * a.size * 4)


@pytest.mark.parametrize("impl", ["generic", "fused"])
@pytest.mark.parametrize("loss", ["cross_entropy", "binary_cross_entropy"])
def test_loss_gradient(benchmark, gpu: BenchBackend, loss: str, impl: str, mode: str) -> None:
    backend, xp = gpu.backend, gpu.backend.xp
    n, k = SHAPE[mode]
    rng = np.random.default_rng(3)
    logits = backend.asarray(rng.standard_normal((n, k)) * 3, xp.float32)
    targets = (np.eye(k)[rng.integers(0, k, n)] if loss == "cross_entropy"
               else rng.integers(0, 2, (n, k)))
    Y = backend.asarray(targets, xp.float32)
    generic, fused = LOSSES[loss].fn, cuda.fused_losses()[loss].fn
    assert _fusable(logits, Y)
    want_loss, want_grad = generic(xp, logits, Y)
    got_loss, got_grad = fused(xp, logits, Y)
    tol = tolerance("float32")
    assert_close(got_loss, np.asarray(float(want_loss)), tol, f"{loss}: fused loss")
    assert_close(got_grad, np.asarray(nnx.to_numpy(want_grad), dtype=np.float64), tol,
                 f"{loss}: fused gradient")

    fn = generic if impl == "generic" else fused
    run = synced(lambda: fn(xp, logits, Y), backend)
    warm_up(run, 3)
    benchmark.group = f"cuda {loss} loss+gradient {n}x{k}"
    benchmark.extra_info.update(cuda_info(gpu))
    benchmark.extra_info.update({"impl": impl, "op": f"{loss} loss and gradient",
                                 "shape": [n, k], "dtype": "float32"})
    benchmark(run)
    record_bandwidth(benchmark, 3 * n * k * 4)  # read logits and Y, write the gradient
    record_device_times(benchmark, lambda: fn(xp, logits, Y), 3 * n * k * 4)
