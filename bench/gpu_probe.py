"""Try each GPU path of nnx once and print one [ok] / [FAIL] / [skip] line per path, so that
a broken path costs seconds of a lent GPU's time, not the budget (bench/gpu_check.sh runs it
first). Exit status 0 whatever failed: the lines are the result."""

from __future__ import annotations

import time
import traceback

import nnx


def attempt(name, fn):
    start = time.perf_counter()
    try:
        detail = fn() or ""
    except Exception as exc:  # noqa: BLE001 - every failure is reported, none stops the probe
        if isinstance(exc, (nnx.BackendError, ImportError)) or "unavailable" in str(exc):
            print(f"[skip] {name}: {' '.join(str(exc).split())[:200]}", flush=True)
            return
        last = traceback.format_exc().strip().splitlines()[-1]
        print(f"[FAIL] {name} ({time.perf_counter() - start:.1f} s): {last[:300]}", flush=True)
        return
    print(f"[ok]   {name} ({time.perf_counter() - start:.1f} s) {detail}", flush=True)


def moons_fit(backend, **kwargs):
    X, y = nnx.datasets.load("moons", seed=0)
    model = nnx.Sequential([nnx.Dense(2, 8, "tanh"), nnx.Dense(8, 2, "softmax")],
                           backend=backend, **kwargs)
    history = model.fit(X, y, epochs=20, lr=0.5, batch_size=50)
    return model, f"loss {history['loss'][0]:.4f} -> {history['loss'][-1]:.4f}"


def cupy_fused():
    import cupy

    from nnx.activations import ACTIVATIONS
    from nnx.cuda import fused_activations

    backend = nnx.get_backend("cupy")
    a = cupy.tanh(cupy.random.standard_normal((512, 256), dtype=cupy.float32))
    g = cupy.random.standard_normal((512, 256), dtype=cupy.float32)
    fused = fused_activations()["tanh"].backward(backend.xp, a, g)
    generic = ACTIVATIONS["tanh"].backward(backend.xp, a, g)
    err = float(cupy.max(cupy.abs(fused - generic)))
    if err > 1e-6:
        raise AssertionError(f"fused tanh backward differs from the generic one by {err}")
    return f"max difference {err:.2g}"


def cupy_no_sync_step():
    import cupyx

    model, _ = moons_fit("cupy")
    X, y = nnx.datasets.load("moons", seed=0)
    Xd, Yd = model.encode(X, y)
    with cupyx.allow_synchronize(False):
        for _ in range(3):
            model.train_step(Xd, Yd)
    return "3 steps without a host synchronisation"


def cupy_captured():
    model, _ = moons_fit("cupy")
    X, y = nnx.datasets.load("moons", seed=0)
    step = model.capture_step(X, y, optimizer="sgd", lr=0.1)
    loss = step()
    step.sync_to_model()
    return f"loss {float(loss):.4f}"


def jax_gpu_compiled():
    import jax

    if not any(d.platform == "gpu" for d in jax.devices()):
        raise nnx.BackendError("jax-gpu unavailable: jax sees no GPU")
    backend = nnx.get_backend("jax", "gpu")
    X, y = nnx.datasets.load("moons", seed=0)
    model = nnx.Sequential([nnx.Dense(2, 3, "tanh"), nnx.Dense(3, 2, "softmax")],
                           backend=backend, dtype="float64", l2=0.01)
    history = model.fit(X, y, epochs=200, lr=0.5, compile=True, sync_every=100)
    return f"loss {history['loss'][-1]:.4f} on {backend.describe()}"


def torch_cuda():
    import torch

    if not torch.cuda.is_available():
        raise nnx.BackendError("torch-cuda unavailable: torch.cuda.is_available() is False")
    return moons_fit(nnx.get_backend("torch", "cuda"))[1]


def main() -> None:
    attempt("cupy backend", lambda: nnx.get_backend("cupy").describe())
    attempt("cupy moons fit (fused kernels in use)", lambda: moons_fit("cupy")[1])
    attempt("cupy fused tanh backward = generic", cupy_fused)
    attempt("cupy train_step under cupyx.allow_synchronize(False)", cupy_no_sync_step)
    attempt("cupy captured step (CUDA graph)", cupy_captured)
    attempt("torch cuda moons fit", torch_cuda)
    attempt("jax gpu fit(compile=True), float64", jax_gpu_compiled)
    attempt("numpy moons fit (reference)", lambda: moons_fit("numpy")[1])


if __name__ == "__main__":
    main()
