"""nox sessions for nnx: tests per backend, lint, and the opt-in GPU tests and benchmarks."""

import pathlib
import re

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True

TORCH = "torch==2.13.0"  # on the project machines a local CPU wheel; never an unpinned torch
# The backends, read from nnx's registry (nox runs before nnx is installed, so not imported).
REGISTRY = pathlib.Path(__file__).parent / "nnx" / "backends" / "__init__.py"
BACKENDS = re.findall(r'BackendSpec\("(\w+)"', REGISTRY.read_text())
EXTRAS = {"torch": [TORCH], "jax": ["jax>=0.4.32"], "cupy": ["cupy-cuda13x[ctk]>=14"]}


@nox.session
def tests(session):
    """The whole suite on every CPU backend (numpy, array_api_strict's devices, torch, jax)."""
    session.install("-e", ".[test,jax]", TORCH)
    session.run("pytest", "-q", "-n", "auto", "--maxprocesses", "4", "tests", "bench",
                "--benchmark-disable", *session.posargs)


@nox.session
@nox.parametrize("backend", [b for b in BACKENDS if b != "cupy"])
def backend(session, backend):
    """The suite restricted to one backend (NNX_BACKEND=<backend>)."""
    session.install("-e", ".[test]", *EXTRAS.get(backend, []))
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
    """The full benchmarks with the report: table, pytest-benchmark JSON and PNG (run from
    the checkout: bench/ is not part of the installed package; options after --, e.g.
    nox -s bench -- --quick)."""
    session.install("-e", ".[bench]", TORCH)
    session.run("python", "bench/report.py", *session.posargs)
