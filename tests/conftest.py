"""The one backend fixture: every numeric test runs on every backend and device that the
registry (:func:`nnx.backends.test_targets`) lists for this machine.

numpy; array_api_strict on its CPU_DEVICE, on its simulated accelerator ``device1`` (refuses
conversion to NumPy and mixing devices, as CuPy does) and on its ``no_float64`` device; torch on
the CPU (and CUDA where usable); cupy where a CUDA device is usable (skipped with the reason
elsewhere). With ``NNX_BACKEND`` set (e.g. ``NNX_BACKEND=cupy`` on a GPU machine) only that
backend runs, read exactly as nnx reads it; a value that selects no backend fails the run.
"""

from __future__ import annotations

import os

# The tests' arrays are tiny, and on a shared 2-core machine a parallel region waits for a
# descheduled worker: the 3000-epoch moons fit took 16 s on torch's default pool and 0.6 s on
# one thread (the same 0.965 accuracy). Set before torch is imported (listing the test targets
# below imports it), so that torch, and every command the tests start, reads it. A session
# that also times benchmarks gives them the default pool back (bench/conftest.py).
if "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["NNX_TESTS_SET_THREADS"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from helpers import resolve  # noqa: E402

from nnx.backends import selected_targets  # noqa: E402


def _selected():
    targets = selected_targets()  # an unknown NNX_BACKEND raises here: the run fails
    if not targets:
        raise pytest.UsageError("NNX_BACKEND selects no backend of the registry")
    return targets


@pytest.fixture(params=[pytest.param(t, id=t[0]) for t in _selected()])
def backend(request):
    """A resolved :class:`nnx.Backend` (namespace + device); skipped if unusable here."""
    _, name, device = request.param
    resolved, why = resolve(name, device)
    if resolved is None:
        pytest.skip(f"{name} unavailable: {why}")
    # Tests compute on the backend's arrays directly, outside any model, in float64 too: as a
    # user would, inside the backend's scope (JAX's x64 mode; a no-op elsewhere). Models
    # enter it themselves (tests/test_jax.py checks that without this).
    with resolved.scope("float64"):
        yield resolved


@pytest.fixture
def xp(backend):
    """The namespace of the current backend."""
    return backend.xp


@pytest.fixture
def float64(backend):
    """Skip on devices without float64 (array_api_strict's no_float64); else 'float64'."""
    if not backend.supports_float64:
        pytest.skip(f"{backend.name} {backend.device_label()} has no float64")
    return "float64"


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def pytest_sessionfinish(session, exitstatus):
    """A run whose backend tests all skipped proves nothing: with NNX_BACKEND naming a
    backend, fail unless some test ran on it."""
    if exitstatus != 0 or not os.environ.get("NNX_BACKEND", "").strip():
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    ran = len(reporter.stats.get("passed", [])) + len(reporter.stats.get("failed", []))
    if ran == 0:
        session.exitstatus = pytest.ExitCode.NO_TESTS_COLLECTED


def pytest_terminal_summary(terminalreporter):
    """One line for the skips (the GPU tests skip on a machine without one), instead of a
    line per test: what was skipped, grouped by reason, most common first."""
    from collections import Counter

    reasons = Counter()
    for report in terminalreporter.stats.get("skipped", []):
        text = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        text = text.removeprefix("Skipped: ")
        # "cupy unavailable: backend='cupy' but CuPy is not installed (...)" -> its first part
        head = text.split(" (")[0].split(";")[0]
        reasons[head[:90]] += 1
    if reasons:
        parts = [f"{n} {why}" for why, n in reasons.most_common(4)]
        rest = sum(reasons.values()) - sum(n for _, n in reasons.most_common(4))
        terminalreporter.write_line("skipped: " + "; ".join(parts)
                                    + (f"; {rest} other" if rest else ""))
