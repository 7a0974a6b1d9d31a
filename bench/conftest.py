"""Benchmark fixtures: the backends to measure, the sizes, and the smoke/full switch.

With ``--benchmark-disable`` (how CI runs ``pytest -q tests bench --benchmark-disable``) every
benchmark runs once, on the smallest sizes only, as a quick check that the code paths work and
compute the right answer. Without it the full size sweep runs (opt-in; ``bench/report.py``, or
``nnx bench`` from a checkout, drives it and prints the tables). ``--bench-quick`` measures a
short sweep.

The backends and devices are the targets of nnx's registry (:func:`nnx.backends.test_targets`,
as ``nnx info`` lists them), less :data:`benchlib.NOT_TIMED` unless ``--bench-backends`` names
them. Targets that cannot run here (CuPy without a CUDA device) are skipped with the reason.
"""

from __future__ import annotations

import os

import pytest
from benchlib import NOT_TIMED, BenchBackend, limit_threads, resolve_backend, selected_backend_ids

# Hidden sizes of the Dense-core sweep and of the wide training network, per mode.
CORE_HIDDEN = {"smoke": (16,), "quick": (16, 256, 1024), "full": (16, 64, 256, 1024, 2048, 4096)}
TRAIN_HIDDEN = {"smoke": (32,), "quick": (256,), "full": (256, 1024, 2048)}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("nnx-bench", "nnx benchmarks (bench/)")
    group.addoption("--bench-quick", action="store_true", default=False,
                    help="measure a short sweep (core H in 16, 256, 1024; wide network H=256).")
    group.addoption("--bench-backends", default=None, metavar="IDS",
                    help="comma-separated target ids to measure, as nnx info lists them "
                         "(nnx.backends.test_targets()); default: all of them but "
                         f"{', '.join(NOT_TIMED)}.")
    group.addoption("--bench-hidden", default=None, metavar="SIZES",
                    help="comma-separated hidden sizes for the Dense-core sweep.")
    group.addoption("--bench-train-hidden", default=None, metavar="SIZES",
                    help="comma-separated hidden sizes for the wide training network.")
    group.addoption("--bench-threads", default=None, type=int, metavar="N",
                    help="limit BLAS/OpenMP threads (NumPy's BLAS, torch) to N for the whole "
                         "run: steadier figures on a shared machine, where a parallel region "
                         "waits for a descheduled thread.")


def pytest_configure(config: pytest.Config) -> None:
    threads = config.getoption("bench_threads", None)
    if threads is not None:
        limit_threads(threads)
    elif os.environ.get("NNX_TESTS_SET_THREADS") and bench_mode(config) != "smoke":
        # tests/conftest.py put torch on one thread for this session (tests/ and bench/ in one
        # run); timed figures get the library's default pool back.
        limit_threads(os.cpu_count() or 1)


def bench_mode(config: pytest.Config) -> str:
    """``smoke`` (benchmarks disabled: smallest sizes), ``quick`` or ``full``."""
    disabled = config.getoption("benchmark_disable") and not config.getoption("benchmark_enable")
    if disabled or config.getoption("benchmark_skip"):
        return "smoke"
    return "quick" if config.getoption("bench_quick") else "full"


def _sizes(config: pytest.Config, option: str, table: dict[str, tuple[int, ...]]) -> list[int]:
    raw = config.getoption(option)
    if raw:
        try:
            sizes = [int(part) for part in raw.split(",") if part.strip()]
        except ValueError:
            raise pytest.UsageError(f"--{option.replace('_', '-')}={raw!r}: expected "
                                    "comma-separated integers, e.g. 16,256,1024.") from None
        if not sizes or min(sizes) < 1:
            raise pytest.UsageError(f"--{option.replace('_', '-')}={raw!r}: sizes must be >= 1.")
        return sizes
    return list(table[bench_mode(config)])


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    config = metafunc.config
    if "core_hidden" in metafunc.fixturenames:
        sizes = _sizes(config, "bench_hidden", CORE_HIDDEN)
        metafunc.parametrize("core_hidden", sizes, ids=[f"H{h}" for h in sizes])
    if "train_hidden" in metafunc.fixturenames:
        sizes = _sizes(config, "bench_train_hidden", TRAIN_HIDDEN)
        metafunc.parametrize("train_hidden", sizes, ids=[f"H{h}" for h in sizes])
    if "bench_backend" in metafunc.fixturenames:
        ids = selected_backend_ids(config)
        metafunc.parametrize("bench_backend", ids, ids=ids, indirect=True)


@pytest.fixture
def bench_backend(request: pytest.FixtureRequest) -> BenchBackend:
    """One target of the registry (``--bench-backends`` selects), skipped if unusable."""
    return resolve_backend(request.param)


@pytest.fixture
def mode(request: pytest.FixtureRequest) -> str:
    return bench_mode(request.config)
