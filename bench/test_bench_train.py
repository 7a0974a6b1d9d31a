"""One full training step (forward, loss, backward, SGD update) against its peers.

Two networks: the tutorial's moons network (2-3-2, tanh hidden, softmax output, 200 samples,
full batch, L2, float64 as in the tutorial) and a wider one (64 inputs, two tanh layers of H,
10 softmax outputs, batch 4096, L2, float32). Each is measured, in the same run, as:

``numpy-hand``
    The tutorial's way in plain NumPy, no library: ``probs[range(n), y] -= 1``, ``np.tanh``,
    in-place updates. It computes the loss (with the L2 term) every step, as ``train_step`` does.
``torch-hand``
    The same step written by hand with torch ops on the CPU, no autograd.
``torch-autograd``
    PyTorch eager as people write it: ``nn.Linear``/``nn.Tanh``, ``F.cross_entropy`` plus the
    L2 term, ``loss.backward()``, ``torch.optim.SGD``.
``sklearn``
    ``MLPClassifier(solver='sgd', activation='tanh')``, one ``partial_fit`` epoch with one batch
    (the whole data), no momentum, ``alpha = l2 * n`` (the same objective). For two classes
    scikit-learn uses one logistic output unit instead of a 2-way softmax.
``cupy-hand``, ``torch-hand-cuda``
    The hand-written step on a CUDA device, where one is usable.
``nnx-<target>``, ``<target>-matmuls``
    ``Sequential.train_step(X, Y)`` on device arrays (``Sequential.encode``), and the step's
    matrix products alone (its ceiling), on every target of the registry the benchmarks time
    (:func:`benchlib.selected_backend_ids`; ``nnx-numpy``, ``nnx-torch`` for torch-cpu,
    ``nnx-cupy``, ``nnx-torch-cuda``, ...), but array-api-strict's (:data:`NOT_IN_TRAINING`).

Every implementation starts from the same weights and its first step is checked against an
independent float64 NumPy reference (one-hot targets, log-softmax): the loss and the gradient
``(W_before - W_after) / lr`` of every parameter.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
from itertools import pairwise
from typing import Any

import numpy as np
import pytest
from benchlib import (
    BenchBackend,
    assert_close,
    candidates,
    paired_ratio,
    paired_rounds,
    resolve_backend,
    seconds_per_call,
    selected_backend_ids,
    warm_up,
)

import nnx


@dataclasses.dataclass(frozen=True)
class Config:
    name: str
    sizes: tuple[int, ...]  # (n_in, hidden..., n_classes)
    n: int
    dtype: str
    l2: float
    lr: float

    @property
    def n_classes(self) -> int:
        return self.sizes[-1]

    @property
    def flops(self) -> int:
        """Matmul FLOPs of one step: forward, dW of every layer, dx of all but the first."""
        products = sum(self.n * a * b for a, b in pairwise(self.sizes))
        first = self.n * self.sizes[0] * self.sizes[1]
        return 2 * (3 * products - first)


MOONS = Config("moons", (2, 3, 2), 200, "float64", l2=0.01, lr=0.1)


def wide(hidden: int, n: int = 4096) -> Config:
    return Config(f"wide-H{hidden}", (64, hidden, hidden, 10), n, "float32", l2=1e-3, lr=0.1)


def make_data(cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    if cfg.name == "moons":
        return nnx.datasets.make_moons(cfg.n, noise=0.2, seed=0)
    rng = np.random.default_rng(1)
    return rng.standard_normal((cfg.n, cfg.sizes[0])), rng.integers(0, cfg.n_classes, cfg.n)


def initial_weights(cfg: Config) -> list[np.ndarray]:
    """``[W0, b0, W1, b1, ...]`` in float64: W ~ randn / sqrt(n_in), b small and non-zero."""
    rng = np.random.default_rng(2)
    out = []
    for a, b in pairwise(cfg.sizes):
        out += [rng.standard_normal((a, b)) / np.sqrt(a), 0.1 * rng.standard_normal(b)]
    return out


def reference_step(cfg: Config, weights: list[np.ndarray], X: np.ndarray, y: np.ndarray):
    """Objective and gradient in float64, written differently from the peers (one-hot
    targets, log-softmax), so that it checks them rather than repeats them."""
    Ws, bs = weights[0::2], weights[1::2]
    acts = [X]
    for W, b in zip(Ws[:-1], bs[:-1]):
        acts.append(np.tanh(acts[-1] @ W + b))
    logits = acts[-1] @ Ws[-1] + bs[-1]
    top = np.max(logits, axis=1, keepdims=True)
    log_p = logits - top - np.log(np.sum(np.exp(logits - top), axis=1, keepdims=True))
    Y = np.eye(cfg.n_classes)[y]
    loss = -np.sum(Y * log_p) / cfg.n + cfg.l2 / 2 * sum(np.sum(W * W) for W in Ws)
    grad = (np.exp(log_p) - Y) / cfg.n
    grads: list[Any] = [None] * len(weights)
    for i in reversed(range(len(Ws))):
        grads[2 * i] = acts[i].T @ grad + cfg.l2 * Ws[i]
        grads[2 * i + 1] = np.sum(grad, axis=0)
        grad = (grad @ Ws[i].T) * (1 - acts[i] ** 2)
    return loss, grads


def step_tolerance(dtype: str) -> float:
    # The gradient is recovered as (W_before - W_after) / lr, which loses digits in float32.
    return 1e-8 if dtype == "float64" else 3e-3


# -- the implementations -----------------------------------------------------------------------
class Runner:
    """``set_weights``, ``step`` (timed; synchronises), ``get_weights``, ``check``."""

    def __init__(self, cfg: Config, X: np.ndarray, y: np.ndarray) -> None:
        self.cfg, self.X_host, self.y_host = cfg, X, y

    def check(self, start: list[np.ndarray]) -> None:
        cfg = self.cfg
        self.set_weights(start)
        loss = float(nnx.to_numpy(self.step()))
        after = self.get_weights()
        ref_loss, ref_grads = reference_step(cfg, start, self.X_host, self.y_host)
        tol = step_tolerance(cfg.dtype)
        assert_close(np.asarray(loss), np.asarray(ref_loss), tol, "loss")
        for i, (w0, w1, g) in enumerate(zip(start, after, ref_grads)):
            name = f"{'Wb'[i % 2]}{i // 2}"
            assert_close((w0 - w1) / cfg.lr, g, tol, f"gradient of {name}")


class HandNumpy(Runner):
    """The tutorial's step in NumPy (or CuPy, the same code on a GPU)."""

    def __init__(self, cfg, X, y, module: Any, sync=lambda: None) -> None:
        super().__init__(cfg, X, y)
        self.mod, self.sync = module, sync
        self.dtype = getattr(module, cfg.dtype)
        self.X = module.asarray(X, dtype=self.dtype)
        self.y = module.asarray(y)
        self.rows = module.arange(cfg.n)

    def set_weights(self, weights):
        self.params = [self.mod.array(w, dtype=self.dtype) for w in weights]  # copies

    def get_weights(self):
        return [np.asarray(nnx.to_numpy(p), dtype=np.float64) for p in self.params]

    def step(self):
        mod, cfg, n = self.mod, self.cfg, self.cfg.n
        Ws, bs = self.params[0::2], self.params[1::2]
        acts = [self.X]
        for W, b in zip(Ws[:-1], bs[:-1]):
            acts.append(mod.tanh(acts[-1].dot(W) + b))
        scores = acts[-1].dot(Ws[-1]) + bs[-1]
        exp_scores = mod.exp(scores - scores.max(axis=1, keepdims=True))
        probs = exp_scores / exp_scores.sum(axis=1, keepdims=True)
        loss = (-mod.log(probs[self.rows, self.y]).sum() / n
                + cfg.l2 / 2 * sum((W * W).sum() for W in Ws))
        delta = probs
        delta[self.rows, self.y] -= 1
        delta /= n
        for i in reversed(range(len(Ws))):
            dW = acts[i].T.dot(delta)
            dW += cfg.l2 * Ws[i]
            db = delta.sum(axis=0)
            if i > 0:
                delta = delta.dot(Ws[i].T) * (1 - mod.power(acts[i], 2))
            Ws[i] -= cfg.lr * dW
            bs[i] -= cfg.lr * db
        self.sync()
        return loss


class HandTorch(Runner):
    """The same step with torch ops, by hand (no autograd)."""

    def __init__(self, cfg, X, y, device: str) -> None:
        import torch

        super().__init__(cfg, X, y)
        self.torch, self.device = torch, torch.device(device)
        self.dtype = getattr(torch, cfg.dtype)
        self.X = torch.as_tensor(X, dtype=self.dtype, device=self.device)
        self.y = torch.as_tensor(y, device=self.device)
        self.rows = torch.arange(cfg.n, device=self.device)
        on_cuda = self.device.type == "cuda"
        self.sync = (lambda: torch.cuda.synchronize(self.device)) if on_cuda else (lambda: None)

    def set_weights(self, weights):
        self.params = [self.torch.tensor(w, dtype=self.dtype, device=self.device)
                       for w in weights]

    def get_weights(self):
        return [p.double().cpu().numpy() for p in self.params]

    def step(self):
        torch, cfg, n = self.torch, self.cfg, self.cfg.n
        Ws, bs = self.params[0::2], self.params[1::2]
        acts = [self.X]
        for W, b in zip(Ws[:-1], bs[:-1]):
            acts.append(torch.tanh(acts[-1] @ W + b))
        scores = acts[-1] @ Ws[-1] + bs[-1]
        exp_scores = torch.exp(scores - scores.amax(dim=1, keepdim=True))
        probs = exp_scores / exp_scores.sum(dim=1, keepdim=True)
        loss = (-torch.log(probs[self.rows, self.y]).sum() / n
                + cfg.l2 / 2 * sum((W * W).sum() for W in Ws))
        delta = probs
        delta[self.rows, self.y] -= 1
        delta /= n
        for i in reversed(range(len(Ws))):
            dW = acts[i].T @ delta
            dW += cfg.l2 * Ws[i]
            db = delta.sum(dim=0)
            if i > 0:
                delta = (delta @ Ws[i].T) * (1 - acts[i] * acts[i])
            Ws[i] -= cfg.lr * dW
            bs[i] -= cfg.lr * db
        self.sync()
        return loss


class TorchAutograd(Runner):
    """PyTorch eager: modules, autograd and torch.optim.SGD, on the CPU."""

    def __init__(self, cfg, X, y) -> None:
        import torch

        super().__init__(cfg, X, y)
        self.torch = torch
        self.dtype = getattr(torch, cfg.dtype)
        modules: list[Any] = []
        for a, b in pairwise(cfg.sizes):
            modules += [torch.nn.Linear(a, b, dtype=self.dtype), torch.nn.Tanh()]
        self.net = torch.nn.Sequential(*modules[:-1])  # logits out; the loss applies softmax
        self.linears = [m for m in self.net if isinstance(m, torch.nn.Linear)]
        self.opt = torch.optim.SGD(self.net.parameters(), lr=cfg.lr)
        self.X = torch.as_tensor(X, dtype=self.dtype)
        self.y = torch.as_tensor(y)

    def set_weights(self, weights):
        with self.torch.no_grad():
            for lin, W, b in zip(self.linears, weights[0::2], weights[1::2]):
                lin.weight.copy_(self.torch.as_tensor(W.T))  # nn.Linear keeps W as (out, in)
                lin.bias.copy_(self.torch.as_tensor(b))

    def get_weights(self):
        out = []
        for lin in self.linears:
            out += [lin.weight.detach().double().numpy().T, lin.bias.detach().double().numpy()]
        return out

    def step(self):
        torch, cfg = self.torch, self.cfg
        self.opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(self.net(self.X), self.y)
        loss = loss + cfg.l2 / 2 * sum((lin.weight * lin.weight).sum() for lin in self.linears)
        loss.backward()
        self.opt.step()
        return loss.detach()


class Sklearn(Runner):
    """``MLPClassifier.partial_fit``: one epoch of one batch (the whole data)."""

    def __init__(self, cfg, X, y) -> None:
        from sklearn.neural_network import MLPClassifier

        super().__init__(cfg, X, y)
        self.X = np.asarray(X, dtype=cfg.dtype)
        self.y = y
        # scikit-learn's objective is log-loss + alpha/(2 n) ||W||^2: alpha = l2 * n matches.
        self.clf = MLPClassifier(
            hidden_layer_sizes=cfg.sizes[1:-1], activation="tanh", solver="sgd",
            alpha=cfg.l2 * cfg.n, batch_size=cfg.n, learning_rate_init=cfg.lr, momentum=0.0,
            nesterovs_momentum=False, shuffle=False, random_state=0)
        self.clf.partial_fit(self.X, self.y, classes=np.arange(cfg.n_classes))
        self.binary = cfg.n_classes == 2  # scikit-learn then uses one logistic output unit

    def set_weights(self, weights):
        self.clf.coefs_ = [np.array(W, dtype=self.cfg.dtype) for W in weights[0::2]]
        self.clf.intercepts_ = [np.array(b, dtype=self.cfg.dtype) for b in weights[1::2]]

    def get_weights(self):
        pairs = zip(self.clf.coefs_, self.clf.intercepts_)
        return [np.asarray(a, dtype=np.float64) for pair in pairs for a in pair]

    def step(self):
        self.clf.partial_fit(self.X, self.y)
        return self.clf.loss_

    def check(self, start):
        if not self.binary:
            return super().check(start)
        # Not the same network (one logistic unit), so check scikit-learn's reported loss
        # against the objective at the weights before the step, computed here.
        clf, cfg = self.clf, self.cfg
        assert clf.coefs_[0].dtype == np.dtype(cfg.dtype)
        p = clf.predict_proba(self.X)[:, 1].astype(np.float64)
        y = self.y_host
        penalty = cfg.l2 / 2 * sum(np.sum(W.astype(np.float64) ** 2) for W in clf.coefs_)
        expected = -np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)) + penalty
        loss = self.step()
        assert_close(np.asarray(loss), np.asarray(expected), 1e-6, "sklearn loss")


class Nnx(Runner):
    """``Sequential.train_step`` on device arrays encoded as ``fit`` encodes them."""

    def __init__(self, cfg, X, y, bench: BenchBackend) -> None:
        super().__init__(cfg, X, y)
        sizes = cfg.sizes
        layers = [nnx.Dense(a, b, "tanh") for a, b in pairwise(sizes[:-1])]
        layers.append(nnx.Dense(sizes[-2], sizes[-1], "softmax"))
        self.model = nnx.Sequential(layers, l2=cfg.l2, dtype=cfg.dtype, backend=bench.backend)
        self.model.optimizer = nnx.SGD(lr=cfg.lr)
        self.X, self.Y = self.model.encode(X, y)
        self.sync = bench.backend.synchronize

    def set_weights(self, weights):
        self.model.set_weights(weights)

    def get_weights(self):
        return [np.asarray(w, dtype=np.float64) for w in self.model.get_weights()]

    def step(self):
        loss, _ = self.model.train_step(self.X, self.Y)
        self.sync()
        return loss


class Matmuls(Runner):
    """Only the matrix products of one step, with the step's shapes, through the backend's
    ``xp.matmul``: forward ``a @ W`` per layer, then ``a.T @ g`` per layer and ``g @ W.T``
    for all but the first. The ceiling a whole step is measured against (the CuPy target)."""

    def __init__(self, cfg, X, y, bench: BenchBackend) -> None:
        super().__init__(cfg, X, y)
        self.backend = bench.backend
        self.xp = bench.backend.xp
        self.dtype = bench.backend.dtype(cfg.dtype)
        self.X = self.backend.asarray(X, dtype=self.dtype)
        rng = np.random.default_rng(3)
        self.G_host = rng.standard_normal((cfg.n, cfg.n_classes)) / cfg.n
        self.G = self.backend.asarray(self.G_host, dtype=self.dtype)

    def set_weights(self, weights):
        self.weights_host = weights[0::2]
        self.Ws = [self.backend.asarray(W, dtype=self.dtype) for W in self.weights_host]

    def step(self):
        xp, Ws = self.xp, self.Ws
        acts = [self.X]
        for W in Ws:
            acts.append(xp.matmul(acts[-1], W))
        g = self.G
        dW = None
        for i in reversed(range(len(Ws))):
            dW = xp.matmul(acts[i].T, g)
            if i > 0:
                g = xp.matmul(g, Ws[i].T)
        self.backend.synchronize()
        return xp.sum(dW)

    def check(self, start):
        """The first layer's product ``X.T @ g`` against float64 NumPy (it depends on every
        other product of the step)."""
        self.set_weights(start)
        got = self.step()
        g = self.G_host
        for W in reversed(self.weights_host[1:]):
            g = g @ W.T
        expected = np.sum(np.asarray(self.X_host, np.float64).T @ g)
        tol = 1e-8 if self.cfg.dtype == "float64" else 1e-3
        scale = np.sum(np.abs(np.asarray(self.X_host, np.float64).T @ g)) or 1.0
        assert abs(float(nnx.to_numpy(got)) - expected) <= tol * scale, "matmul chain"


# The hand-written peers: impl id -> (target id it needs, or None; what it is).
PEERS = {
    "numpy-hand": ("numpy", "hand-written NumPy (the tutorial's way)"),
    "torch-hand": ("torch-cpu", "hand-written torch ops, no autograd"),
    "torch-autograd": ("torch-cpu", "PyTorch eager: nn.Linear, autograd, optim.SGD"),
    "sklearn": (None, "scikit-learn MLPClassifier.partial_fit, one full-batch epoch"),
    "cupy-hand": ("cupy", "hand-written CuPy (the tutorial's way)"),
    "torch-hand-cuda": ("torch-cuda", "hand-written torch ops, no autograd"),
}
# Each target's hand-written peers that nnx's step on it is also timed against, interleaved
# (beside the step's own matmuls).
HAND_PEERS = {"numpy": ("numpy-hand", "sklearn"), "torch-cpu": ("torch-hand",),
              "cupy": ("cupy-hand",), "torch-cuda": ("torch-hand-cuda",)}
# Backends the training step is not timed on (their Dense core is, in test_bench_core.py).
NOT_IN_TRAINING = {
    "array_api_strict": "the standard's reference implementation, not a library to train on",
}


def short_name(target_id: str) -> str:
    """The target in impl ids: ``torch`` for torch-cpu (``nnx-torch``, ``torch-matmuls``)."""
    return target_id.removesuffix("-cpu")


def impls(target_ids: list[str]) -> dict[str, tuple[str | None, str]]:
    """impl id -> (target id it needs, or None; what it is): the peers, and nnx's step and
    its matmuls on each of `target_ids` but those of :data:`NOT_IN_TRAINING`."""
    out = dict(PEERS)
    for target_id in target_ids:
        if candidates().get(target_id, ("",))[0] in NOT_IN_TRAINING:
            continue
        out[f"nnx-{short_name(target_id)}"] = (target_id, "nnx Sequential.train_step")
        out[f"{short_name(target_id)}-matmuls"] = (
            target_id, "the step's matrix products alone (its ceiling)")
    return out


def paired_peers(impl: str, backend_id: str | None) -> tuple[str, ...]:
    """The impls `impl` is timed against, interleaved: nnx's step against its target's
    hand-written peers and its own matmuls; the peers against nothing."""
    if backend_id is None or impl != f"nnx-{short_name(backend_id)}":
        return ()
    return (*HAND_PEERS.get(backend_id, ()), f"{short_name(backend_id)}-matmuls")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "impl" in metafunc.fixturenames:
        metafunc.parametrize("impl", list(impls(selected_backend_ids(metafunc.config))))


def make_runner(impl: str, cfg: Config, X, y, bench: BenchBackend | None) -> Runner:
    if impl == "numpy-hand":
        return HandNumpy(cfg, X, y, np)
    if impl == "cupy-hand":
        import cupy

        return HandNumpy(cfg, X, y, cupy, bench.backend.synchronize)
    if impl in ("torch-hand", "torch-hand-cuda"):
        return HandTorch(cfg, X, y, str(bench.backend.device))
    if impl == "torch-autograd":
        return TorchAutograd(cfg, X, y)
    if impl == "sklearn":
        return Sklearn(cfg, X, y)
    if impl.endswith("-matmuls"):
        return Matmuls(cfg, X, y, bench)
    return Nnx(cfg, X, y, bench)


def run_step_benchmark(benchmark, request, impl: str, cfg: Config, mode: str) -> None:
    selected = selected_backend_ids(request.config)
    backend_id, what = impls(selected)[impl]
    if backend_id is not None and backend_id in candidates() and backend_id not in selected:
        pytest.skip(f"{backend_id} not in --bench-backends")
    if impl == "sklearn":
        pytest.importorskip("sklearn", reason="scikit-learn is not installed")
    bench = resolve_backend(backend_id) if backend_id else None
    # The matmul ceilings run inside the backend's scope for the dtype, as nnx's steps do
    # (JAX computes in float32 outside its x64 scope).
    with bench.backend.scope(cfg.dtype) if bench else contextlib.nullcontext():
        _measure(benchmark, impl, what, cfg, mode, bench, backend_id)


def _measure(benchmark, impl: str, what: str, cfg: Config, mode: str,
             bench: BenchBackend | None, backend_id: str | None) -> None:
    X, y = make_data(cfg)
    runner = make_runner(impl, cfg, X, y, bench)
    runner.check(initial_weights(cfg))
    warm_up(runner.step, 3)

    benchmark.group = f"train {cfg.name}"
    if bench is not None:
        benchmark.extra_info.update(bench.info())
    else:
        import sklearn

        benchmark.extra_info.update({"backend": "numpy", "device_kind": "cpu",
                                     "library": "sklearn", "library_version": sklearn.__version__})
    benchmark.extra_info.update({
        "kind": "train", "impl": impl, "what": what, "config": cfg.name,
        "sizes": list(cfg.sizes), "batch": cfg.n, "dtype": cfg.dtype, "l2": cfg.l2,
        "lr": cfg.lr, "flops": cfg.flops,
        "autograd": impl == "torch-autograd",
    })
    loss = benchmark(runner.step)
    assert np.isfinite(float(nnx.to_numpy(loss)))
    for peer in paired_peers(impl, backend_id):
        if peer == "sklearn" and importlib.util.find_spec("sklearn") is None:
            continue
        other = make_runner(peer, cfg, X, y, bench)
        other.set_weights(initial_weights(cfg))
        warm_up(other.step, 3)
        # Interleaved with the peer: a drift of the machine's speed between two separately
        # timed benchmarks would otherwise swing the ratio by more than the targets.
        rounds = paired_rounds(mode, seconds_per_call(benchmark, runner.step))
        paired = paired_ratio(runner.step, other.step, rounds)
        benchmark.extra_info.update({f"paired_vs_{peer}_{k}": v for k, v in paired.items()})


def test_moons_step(benchmark, request, impl: str, mode: str) -> None:
    run_step_benchmark(benchmark, request, impl, MOONS, mode)


def test_wide_step(benchmark, request, impl: str, train_hidden: int, mode: str) -> None:
    # The smoke run (--benchmark-disable) only checks the answers: a small batch will do.
    n = 256 if mode == "smoke" else 4096
    run_step_benchmark(benchmark, request, impl, wide(train_hidden, n), mode)
