"""Shared pieces of the benchmarks: the backends, what a result records, and checks.

Imported by ``bench/conftest.py`` and the ``bench/test_bench_*.py`` modules (pytest puts
``bench/`` on ``sys.path``, as for any test folder without ``__init__.py``).

The backends and devices come from nnx's registry (:func:`nnx.backends.test_targets`, the
same list the tests and ``nnx info`` use): a backend added there is benchmarked here too.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
from typing import Any

import array_api_compat
import numpy as np
import pytest

import nnx
from nnx.backends import test_targets, to_numpy
from nnx.errors import BackendError

# Targets of the registry the benchmarks leave out unless --bench-backends names them: they
# run strict-cpu's arithmetic on the same CPU, so timing them again measures nothing new.
NOT_TIMED = {
    "strict-device1": "array-api-strict's simulated accelerator (the CPU, as strict-cpu)",
    "strict-no_float64": "array-api-strict's device without float64 (the CPU, as strict-cpu)",
}


@functools.cache
def candidates() -> dict[str, tuple[str, Any]]:
    """``{target id: (nnx backend name, device)}`` for every target of
    :func:`nnx.backends.test_targets` on this machine."""
    return {target_id: (name, device) for target_id, name, device in test_targets()}


def timed_ids() -> list[str]:
    """The target ids measured when ``--bench-backends`` is not given."""
    return [target_id for target_id in candidates() if target_id not in NOT_TIMED]


def selected_backend_ids(config: pytest.Config) -> list[str]:
    """The target ids to measure: ``--bench-backends``, else :func:`timed_ids`.

    An id the registry does not list on this machine but whose backend it knows (such as
    ``torch-cuda`` without CUDA) is kept, and its benchmarks skip with the reason; any other
    unknown id is a usage error.
    """
    raw = config.getoption("bench_backends")
    if not raw:
        return timed_ids()
    wanted = [part.strip() for part in raw.split(",") if part.strip()]
    known = set(candidates())
    prefixes = {target_id.split("-")[0] for target_id in known}
    unknown = [w for w in wanted if w not in known and w.split("-")[0] not in prefixes]
    if unknown:
        raise pytest.UsageError(f"--bench-backends: {', '.join(unknown)} unknown; choose from: "
                                f"{', '.join(candidates())} (the targets of "
                                "nnx.backends.test_targets() here, as nnx info lists them).")
    return wanted


# -- backends -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class BenchBackend:
    """An nnx backend resolved for benchmarking, with what the results should record."""

    id: str
    backend: nnx.Backend

    @property
    def on_gpu(self) -> bool:
        """Whether the arrays live on a real accelerator (array-api-strict's simulated one
        is the CPU)."""
        return self.backend.is_accelerator and not self.backend.device_name().startswith("cpu")

    def info(self) -> dict[str, Any]:
        """Backend, device, library versions and TF32 state, for ``benchmark.extra_info``."""
        return {
            "backend": self.id,
            "nnx_backend": self.backend.name,
            "device": self.backend.device_label(),
            "device_name": self.backend.device_name(),
            "device_kind": "gpu" if self.on_gpu else "cpu",
            "library": self.backend.name,
            "library_version": self.backend.library_version(),
            "tf32": tf32_allowed(self.backend),
            **self.backend.runtime_versions(),
            **environment_info(),
        }


def tf32_allowed(backend: nnx.Backend) -> bool:
    """Whether float32 matrix products may use TF32 (only ever on a CUDA device)."""
    if backend.name == "cupy":
        # CuPy reads CUPY_TF32 once, at its first float32 matmul.
        return nnx.cuda.tf32_enabled()
    if backend.name == "torch" and backend.is_accelerator:
        import torch

        return bool(torch.backends.cuda.matmul.allow_tf32)
    return False


_thread_limit: list[Any] = []  # keeps the threadpoolctl limit alive for the session


def limit_threads(threads: int) -> None:
    """Limit every BLAS/OpenMP pool loaded now (and torch's) to `threads`."""
    if threads < 1:
        raise pytest.UsageError(f"--bench-threads={threads}: expected an integer >= 1.")
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        pass
    try:  # threadpoolctl limits the pools loaded so far: load scikit-learn's (SciPy's) too
        import sklearn.neural_network  # noqa: F401
    except ImportError:
        pass
    try:
        from threadpoolctl import threadpool_limits
    except ImportError as exc:
        raise pytest.UsageError(f"--bench-threads needs threadpoolctl ({exc}).") from None
    _thread_limit.append(threadpool_limits(limits=threads))


def blas_threads() -> str:
    """``library:threads`` of each BLAS/OpenMP pool loaded (via threadpoolctl, if present)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown"
    return ", ".join(f"{p.get('internal_api')}:{p.get('num_threads')}" for p in threadpool_info())


def environment_info() -> dict[str, Any]:
    info = {
        "nnx": nnx.__version__,
        "numpy": np.__version__,
        "array_api_compat": array_api_compat.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "blas_threads": blas_threads(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return info


def resolve_backend(backend_id: str) -> BenchBackend:
    """Resolve a target id of :func:`candidates`, or skip the test with the reason."""
    if backend_id not in candidates():
        pytest.skip(f"{backend_id} is not a target on this machine: nnx.backends.test_targets() "
                    f"lists {', '.join(candidates())}")
    name, device = candidates()[backend_id]
    try:
        backend = nnx.get_backend(name, device)
    except (BackendError, ImportError) as exc:
        pytest.skip(f"{backend_id} unavailable: {exc}")
    return BenchBackend(backend_id, backend)


def warm_up(fn: Any, calls: int = 2) -> None:
    """Call `fn` before timing: pytest-benchmark warms up by itself only on PyPy, and the
    first calls pay for allocation, kernel compilation and (on CUDA) handle creation."""
    for _ in range(calls):
        fn()


def tolerance(dtype_name: str, tf32: bool = False) -> float:
    """Error allowed relative to the largest reference value (float64 NumPy reference)."""
    if dtype_name == "float64":
        return 1e-10
    return 5e-3 if tf32 else 1e-4


def assert_close(actual: Any, reference: np.ndarray, tol: float, what: str) -> None:
    """`actual` (any backend) equals the float64 `reference` within ``tol * max|reference|``."""
    got = np.asarray(to_numpy(actual), dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    assert got.shape == reference.shape, f"{what}: shape {got.shape} != {reference.shape}"
    scale = float(np.max(np.abs(reference))) or 1.0
    np.testing.assert_allclose(got, reference, rtol=0, atol=tol * scale, err_msg=what)


def record_rate(benchmark: Any, amount: float, key: str) -> None:
    """Add ``amount / 1e9`` per second at the minimum and median round time to
    ``benchmark.extra_info`` as ``{key}_min`` and ``{key}_median``."""
    stats = getattr(benchmark, "stats", None)
    if stats is None:  # --benchmark-disable: nothing was timed
        return
    for name in ("min", "median"):
        seconds = getattr(stats.stats, name)
        if seconds > 0:
            benchmark.extra_info[f"{key}_{name}"] = amount / seconds / 1e9


def record_throughput(benchmark: Any, flops: float) -> None:
    """GFLOP/s at the minimum and median round time."""
    record_rate(benchmark, flops, "gflops")


def paired_rounds(mode: str, seconds_per_call: float, budget: float = 4.0) -> int:
    """How many interleaved rounds :func:`paired_ratio` runs: one in the smoke run (the code
    path is checked, nothing is measured), else as many as fit in `budget` seconds, 9 to 41
    (with 5 rounds of the largest sizes one run's median still strayed by 10 points)."""
    if mode == "smoke":
        return 1
    return int(min(41, max(9, budget / max(seconds_per_call, 1e-6))))


def paired_ratio(fn: Any, peer: Any, rounds: int) -> dict[str, float]:
    """Time `fn` and `peer` interleaved (``fn, peer, peer, fn, ...``) and return the median of
    the per-round ratios ``t_fn / t_peer`` with its spread.

    On a shared machine the speed drifts over seconds; two benchmarks timed one after the
    other can land on either side of a drift and differ by more than any target. Adjacent
    calls see the same machine, so the ratio of neighbours is what can be compared.
    """
    import statistics
    import time

    ratios = []
    for i in range(rounds):
        first, second = (fn, peer) if i % 2 == 0 else (peer, fn)
        start = time.perf_counter()
        first()
        middle = time.perf_counter()
        second()
        end = time.perf_counter()
        t_first, t_second = middle - start, end - middle
        t_fn, t_peer = (t_first, t_second) if first is fn else (t_second, t_first)
        ratios.append(t_fn / t_peer)
    ratios.sort()
    q = max(0, len(ratios) // 4)
    return {"median": statistics.median(ratios), "q1": ratios[q], "q3": ratios[-1 - q],
            "rounds": rounds}


def seconds_per_call(benchmark: Any, fn: Any) -> float:
    """The fastest round pytest-benchmark saw, or one timed call when it timed nothing."""
    import time

    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        return float(stats.stats.min)
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
