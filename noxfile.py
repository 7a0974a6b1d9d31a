"""nox sessions for nnx: tests per backend, lint, and the opt-in GPU tests and benchmarks."""

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True

TORCH = "torch==2.13.0"  # on the project machines a local CPU wheel; never an unpinned torch


@nox.session
def tests(session):
    """The whole suite on every CPU backend (numpy, array_api_strict's devices, torch)."""
    session.install("-e", ".[test]", TORCH)
    session.run("pytest", "-q", "tests", "bench", "--benchmark-disable", *session.posargs)


@nox.session
@nox.parametrize("backend", ["numpy", "array_api_strict", "torch"])
def backend(session, backend):
    """The suite restricted to one backend (NNX_BACKEND=<backend>)."""
    session.install("-e", ".[test]", *([TORCH] if backend == "torch" else []))
    session.run("pytest", "-q", "tests", *session.posargs, env={"NNX_BACKEND": backend})


@nox.session
def lint(session):
    """ruff over the package, tests and benchmarks."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", "nnx", "tests", "bench", "noxfile.py", *session.posargs)


@nox.session(default=False)
def gpu(session):
    """The suite on CuPy (needs an NVIDIA GPU; CUDA 13 wheels)."""
    session.install("-e", ".[test,cuda13]")
    session.run("pytest", "-q", "tests", *session.posargs, env={"NNX_BACKEND": "cupy"})


@nox.session(default=False)
def bench(session):
    """The full benchmarks with the report: table, pytest-benchmark JSON and PNG."""
    session.install("-e", ".[bench]", TORCH)
    session.run("python", "-m", "nnx", "bench", *session.posargs)
