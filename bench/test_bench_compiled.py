"""``fit(..., compile=True)`` on JAX (the compiled functional step of :mod:`nnx.compiled`)
against the steps it replaces.

``moons``
    The tutorial's network (2-3-2, tanh, softmax, 200 samples of ``nnx.datasets.load("moons")``,
    float64, full batch, l2=0.01, lr=0.01): ``fit(epochs=E, compile=True, sync_every=1000)``
    per epoch (``sync_every`` epochs per compiled ``lax.fori_loop``) against the hand-written
    NumPy step (``numpy-hand`` of ``test_bench_train.py``) per epoch. Target: at least 5x
    faster.
``minibatch``
    The wide network (64, two tanh layers of H, 10 softmax outputs, float32, 4096 samples,
    ``batch_size=256``, l2=1e-3, lr=0.1), one epoch of ``fit(compile=True)`` (one jitted step
    per batch) against one epoch of nnx's eager NumPy ``fit``. Target: no slower.

Compilation is excluded: every timed function is warmed up first (the compiled functions are
cached per model architecture and optimizer). The ratios come from interleaved rounds
(:func:`benchlib.paired_ratio`); ``paired_speedup_median`` is ``t_peer / t_compiled``. Before
timing, each checks its answer: the first compiled step against the independent float64
reference of ``test_bench_train.py``, and the compiled fit against the eager one.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
from benchlib import (
    assert_close,
    paired_ratio,
    paired_rounds,
    resolve_backend,
    seconds_per_call,
    selected_backend_ids,
    warm_up,
)
from test_bench_train import Config, HandNumpy, initial_weights, reference_step

import nnx

pytest.importorskip("jax")

TARGET = "jax-cpu"
MOONS = Config("moons", (2, 3, 2), 200, "float64", l2=0.01, lr=0.01)


def _jax_target(request):
    if TARGET not in selected_backend_ids(request.config):
        pytest.skip(f"{TARGET} not in --bench-backends")
    return resolve_backend(TARGET)


def _network(cfg: Config, backend) -> nnx.Sequential:
    layers = [nnx.Dense(a, b, "tanh") for a, b in pairwise(cfg.sizes[:-1])]
    layers.append(nnx.Dense(cfg.sizes[-2], cfg.sizes[-1], "softmax"))
    return nnx.Sequential(layers, l2=cfg.l2, dtype=cfg.dtype, backend=backend, seed=0)


def _record_ratio(benchmark, paired: dict[str, float], peer: str, per: int) -> None:
    info = benchmark.extra_info
    info.update({f"paired_vs_{peer}_{k}": v for k, v in paired.items()})
    info["paired_speedup_median"] = 1.0 / paired["median"]
    info["paired_speedup_q1"] = 1.0 / paired["q3"]
    info["paired_speedup_q3"] = 1.0 / paired["q1"]
    info["epochs_per_call"] = per


def test_moons_compiled_fit_vs_numpy_hand(benchmark, request, mode: str) -> None:
    bench = _jax_target(request)
    cfg = MOONS
    X, y = nnx.datasets.load("moons")
    assert X.shape == (cfg.n, 2)
    start = initial_weights(cfg)

    # The answer: one compiled step is the reference's gradient step ...
    model = _network(cfg, bench.backend)
    model.set_weights(start)
    history = model.fit(X, y, epochs=1, lr=cfg.lr, compile=True, verbose=False)
    ref_loss, ref_grads = reference_step(cfg, start, X, y)
    assert_close(np.asarray(history["loss"][0]), np.asarray(ref_loss), 1e-10, "loss")
    for i, (w0, w1, g) in enumerate(zip(start, model.get_weights(), ref_grads)):
        assert_close((w0 - w1) / cfg.lr, g, 1e-8, f"gradient of parameter {i}")
    # ... and a compiled window of epochs is the eager NumPy fit's.
    epochs = 20 if mode == "smoke" else 1000
    eager = _network(cfg, "numpy")
    eager.set_weights(start)
    eager.fit(X, y, epochs=epochs, lr=cfg.lr, sync_every=1000, verbose=False)
    model.set_weights(start)
    model.fit(X, y, epochs=epochs, lr=cfg.lr, compile=True, sync_every=1000, verbose=False)
    for a, b in zip(eager.get_weights(), model.get_weights()):
        assert_close(b, a, 1e-10, "weights after the compiled fit")

    hand = HandNumpy(cfg, X, y, np)
    hand.set_weights(start)

    def compiled_fit():
        return model.fit(X, y, epochs=epochs, compile=True, sync_every=1000, verbose=False)

    def hand_epochs():
        for _ in range(epochs):
            loss = hand.step()
        return loss

    warm_up(compiled_fit)
    warm_up(hand_epochs, 1)
    benchmark.group = "compiled moons"
    benchmark.extra_info.update(bench.info())
    benchmark.extra_info.update({
        "kind": "compiled-fit", "impl": "nnx-jax-compiled", "peer": "numpy-hand",
        "config": cfg.name, "sizes": list(cfg.sizes), "batch": cfg.n, "dtype": cfg.dtype,
        "l2": cfg.l2, "lr": cfg.lr, "sync_every": 1000, "target_speedup": 5.0,
    })
    history = benchmark(compiled_fit)
    assert len(history) == epochs and np.isfinite(history["loss"][-1])
    rounds = paired_rounds(mode, seconds_per_call(benchmark, compiled_fit))
    _record_ratio(benchmark, paired_ratio(compiled_fit, hand_epochs, rounds), "numpy-hand",
                  epochs)


def test_minibatch_compiled_fit_vs_nnx_numpy(benchmark, request, mode: str) -> None:
    bench = _jax_target(request)
    hidden, n = (32, 512) if mode == "smoke" else (256, 4096)
    cfg = Config(f"wide-H{hidden}", (64, hidden, hidden, 10), n, "float32", l2=1e-3, lr=0.1)
    batch = 256
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((n, 64)), rng.integers(0, 10, n)
    start = initial_weights(cfg)
    model, eager = _network(cfg, bench.backend), _network(cfg, "numpy")
    for m in (model, eager):
        m.set_weights(start)
    # The answer: two epochs agree with the eager NumPy fit from the same seed (float32).
    h_eager = eager.fit(X, y, epochs=2, lr=cfg.lr, batch_size=batch, verbose=False)
    h_model = model.fit(X, y, epochs=2, lr=cfg.lr, batch_size=batch, compile=True,
                        verbose=False)
    np.testing.assert_allclose(h_model["loss"], h_eager["loss"], rtol=1e-4)
    assert h_model["accuracy"] == h_eager["accuracy"]
    for a, b in zip(eager.get_weights(), model.get_weights()):
        assert_close(b, a, 1e-3, "weights after two compiled epochs")

    def compiled_epoch():
        return model.fit(X, y, epochs=1, batch_size=batch, compile=True, verbose=False)

    def eager_epoch():
        return eager.fit(X, y, epochs=1, batch_size=batch, verbose=False)

    warm_up(compiled_epoch)
    warm_up(eager_epoch, 1)
    benchmark.group = "compiled minibatch"
    benchmark.extra_info.update(bench.info())
    benchmark.extra_info.update({
        "kind": "compiled-fit", "impl": "nnx-jax-compiled", "peer": "nnx-numpy-eager",
        "config": cfg.name, "sizes": list(cfg.sizes), "n": n, "batch": batch,
        "dtype": cfg.dtype, "l2": cfg.l2, "lr": cfg.lr, "steps_per_epoch": -(-n // batch),
        "target_speedup": 1.0,
    })
    history = benchmark(compiled_epoch)
    assert np.isfinite(history["loss"][-1])
    rounds = paired_rounds(mode, seconds_per_call(benchmark, compiled_epoch))
    _record_ratio(benchmark, paired_ratio(compiled_epoch, eager_epoch, rounds),
                  "nnx-numpy-eager", 1)
