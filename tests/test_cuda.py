"""nnx.cuda: fused kernels, the captured training step, device out-of-memory errors, TF32.

The CuPy tests run only where a CUDA device is usable (skipped with the reason elsewhere, and
when NNX_BACKEND selects another backend). The selection function, the misuse errors, the
out-of-memory translation and TF32 are tested everywhere.
"""

from __future__ import annotations

import os
import sys
import types

import array_api_compat
import numpy as np
import pytest
from helpers import host, reference_backward, reference_loss, relative_error

import nnx
from nnx import cuda
from nnx.activations import ACTIVATIONS, Activation
from nnx.backends.cupy.kernels import _fusable
from nnx.errors import BackendError
from nnx.losses import LOSSES

FUSED_ACTIVATIONS = ("tanh", "sigmoid", "relu")
FUSED_LOSSES = ("cross_entropy", "binary_cross_entropy")
# Fused kernels against the generic CuPy path, relative to the largest value. Without FMA
# contraction the elementwise kernels round exactly as the generic ops do: a few ulps at most.
# The loss is a sum over every element taken in another order: float32 allows more.
FUSED_TOL = {"float64": 1e-12, "float32": 2e-6}
SUM_TOL = {"float64": 1e-12, "float32": 1e-5}


# As tests/conftest.py's helpers of the same names. Not imported from there: run together with
# bench/ (``pytest tests bench``), ``import conftest`` finds bench/conftest.py instead.
def tolerance(dtype_name):
    """Relative tolerance against a float64 NumPy reference."""
    return 1e-10 if dtype_name == "float64" else 2e-5


def assert_on_backend(array, backend, dtype_name, shape):
    """Namespace, device, shape and dtype checks, before any value is compared."""
    assert backend.owns(array), f"{type(array)} is not an array of {backend.name}"
    assert array_api_compat.device(array) == backend.device
    assert tuple(array.shape) == tuple(shape)
    assert array.dtype == getattr(backend.xp, dtype_name)


@pytest.fixture
def cupy_backend():
    """The cupy backend, or skip: no CUDA device here, or NNX_BACKEND selects another."""
    wanted = os.environ.get("NNX_BACKEND", "").strip().lower()
    if wanted not in ("", "auto", "cupy"):
        pytest.skip(f"NNX_BACKEND={wanted} selects another backend")
    try:
        return nnx.get_backend("cupy")
    except (BackendError, ImportError) as exc:
        pytest.skip(f"cupy unavailable: {exc}")


def moons_model(backend, l2=0.0, dtype="float64", output="softmax", hidden="tanh"):
    n_out = 2 if output == "softmax" else 1
    return nnx.Sequential([nnx.Dense(2, 8, hidden), nnx.Dense(8, n_out, output)], l2=l2,
                          dtype=dtype, seed=3, backend=backend)


def moons(n=200):
    return nnx.datasets.make_moons(n, noise=0.2, seed=0)


# -- selection (every backend) ----------------------------------------------------------------
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_fast_activation_is_the_generic_one_off_cupy(backend, name):
    act = ACTIVATIONS[name]
    chosen = cuda.fast_activation(act, backend)
    if backend.name == "jax":  # the same functions, each under jax.jit
        assert chosen.name == act.name
        assert (chosen.forward.fn, chosen.backward.fn) == (act.forward, act.backward)
        assert cuda.fast_activation(chosen, backend) is chosen  # a user's: kept
    elif backend.name != "cupy" or name not in FUSED_ACTIVATIONS:
        assert chosen is act
    else:
        assert chosen is cuda.fused_activations()[name]


@pytest.mark.parametrize("name", list(LOSSES))
def test_fast_loss_is_the_generic_one_off_cupy(backend, name):
    loss = LOSSES[name]
    chosen = cuda.fast_loss(loss, backend)
    if backend.name == "jax":  # the same function under jax.jit
        assert chosen.fn.fn is loss.fn
        assert (chosen.name, chosen.fused_activation) == (loss.name, loss.fused_activation)
        assert cuda.fast_loss(loss.fn, backend) is loss.fn
    elif backend.name != "cupy" or name not in FUSED_LOSSES:
        assert chosen is loss
        assert cuda.fast_loss(loss.fn, backend) is loss.fn
    else:
        assert chosen.fn is cuda.fused_losses()[name].fn
        assert (chosen.name, chosen.fused_activation) == (loss.name, loss.fused_activation)


def test_fast_activation_on_cupy_keeps_name_and_forward():
    for name in FUSED_ACTIVATIONS:
        fused = cuda.fast_activation(ACTIVATIONS[name], "cupy")
        assert fused.name == name
        assert fused.forward is ACTIVATIONS[name].forward
        assert fused.backward is not ACTIVATIONS[name].backward
        assert cuda.fast_activation(fused, "cupy") is fused  # idempotent


def test_fast_activation_keeps_user_and_unfused_activations():
    own = Activation("tanh", ACTIVATIONS["tanh"].forward, lambda xp, a, grad: 2 * grad)
    assert cuda.fast_activation(own, "cupy") is own
    for name in ("identity", "leaky_relu", "softmax"):
        assert cuda.fast_activation(ACTIVATIONS[name], "cupy") is ACTIVATIONS[name]
    assert cuda.fast_activation(ACTIVATIONS["tanh"], None) is ACTIVATIONS["tanh"]


@pytest.mark.parametrize("name", FUSED_ACTIVATIONS)
def test_fused_backward_falls_back_off_cupy(backend, name, rng):
    if backend.name == "cupy":
        pytest.skip("on cupy the kernel applies (tested below)")
    xp = backend.xp
    a = ACTIVATIONS[name].forward(xp, backend.asarray(rng.normal(size=(6, 4)), xp.float32))
    grad = backend.asarray(rng.normal(size=(6, 4)), xp.float32)
    fused = cuda.fused_activations()[name].backward(xp, a, grad)
    assert_on_backend(fused, backend, "float32", (6, 4))
    np.testing.assert_allclose(host(fused), reference_backward(name, host(a), host(grad)),
                               rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", FUSED_LOSSES)
def test_fused_loss_falls_back_off_cupy(backend, name, rng):
    if backend.name == "cupy":
        pytest.skip("on cupy the kernel applies (tested below)")
    xp = backend.xp
    logits = backend.asarray(rng.normal(size=(6, 3)), xp.float32)
    Y = backend.asarray(np.eye(3)[rng.integers(0, 3, 6)], xp.float32)
    loss, grad = cuda.fused_losses()[name].fn(xp, logits, Y, scale=0.5)
    want_loss, want_grad = reference_loss(name, host(logits), host(Y), scale=0.5)
    np.testing.assert_allclose(host(loss), want_loss, rtol=1e-6)
    np.testing.assert_allclose(host(grad), want_grad, rtol=1e-6, atol=1e-7)


# -- fused kernels on CuPy --------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", FUSED_ACTIVATIONS)
def test_fused_activation_backward_matches_generic(cupy_backend, name, dtype, rng):
    backend, xp = cupy_backend, cupy_backend.xp
    z, g = rng.normal(size=(257, 129)) * 3, rng.normal(size=(257, 129))
    a = ACTIVATIONS[name].forward(xp, backend.asarray(z, getattr(xp, dtype)))
    grad = backend.asarray(g, getattr(xp, dtype))
    assert _fusable(a, grad)  # the kernel, not the fallback, is under test
    fused = cuda.fused_activations()[name].backward(xp, a, grad)
    generic = ACTIVATIONS[name].backward(xp, a, grad)
    assert_on_backend(fused, backend, dtype, z.shape)
    assert relative_error(host(fused), host(generic)) <= FUSED_TOL[dtype]
    # and against a NumPy float64 reference of the same formula
    a64 = host(a)
    reference = {"tanh": g * (1 - a64 * a64), "sigmoid": g * (a64 * (1 - a64)),
                 "relu": np.where(a64 > 0, g, 0)}[name]
    assert relative_error(host(fused), reference) <= tolerance(dtype)


@pytest.mark.parametrize("name", FUSED_ACTIVATIONS)
def test_fused_backward_falls_back_where_the_kernel_does_not_apply(cupy_backend, name, rng):
    backend, xp = cupy_backend, cupy_backend.xp
    wide = ACTIVATIONS[name].forward(xp, backend.asarray(rng.normal(size=(9, 12)), xp.float64))
    grad = backend.asarray(rng.normal(size=(9, 12)), xp.float64)
    cases = {
        "non-contiguous": (wide[:, ::2], grad[:, ::2]),
        "float16": (xp.astype(wide, xp.float16), xp.astype(grad, xp.float16)),
        "mixed dtypes": (wide, xp.astype(grad, xp.float32)),
    }
    for what, (a, g) in cases.items():
        assert not _fusable(a, g), what
        fused = cuda.fused_activations()[name].backward(xp, a, g)
        np.testing.assert_array_equal(host(fused), host(ACTIVATIONS[name].backward(xp, a, g)),
                                      err_msg=what)


def _targets(name, rng, n, k):
    if name == "cross_entropy":
        return np.eye(k)[rng.integers(0, k, n)]
    return rng.integers(0, 2, (n, k)).astype(np.float64)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape", [(300, 2), (129, 17)], ids=["k2", "k17"])
@pytest.mark.parametrize("name", FUSED_LOSSES)
def test_fused_loss_matches_generic(cupy_backend, name, shape, dtype, rng):
    backend, xp = cupy_backend, cupy_backend.xp
    n, k = shape
    logits = backend.asarray(rng.normal(size=shape) * 4, getattr(xp, dtype))
    Y = backend.asarray(_targets(name, rng, n, k), getattr(xp, dtype))
    assert _fusable(logits, Y)
    fused_fn, generic_fn = cuda.fused_losses()[name].fn, LOSSES[name].fn
    loss, grad = fused_fn(xp, logits, Y, grad=True, scale=0.5)
    want_loss, want_grad = generic_fn(xp, logits, Y, grad=True, scale=0.5)
    assert_on_backend(loss, backend, dtype, ())
    assert_on_backend(grad, backend, dtype, shape)
    assert relative_error(host(loss), host(want_loss)) <= SUM_TOL[dtype]
    assert relative_error(host(grad), host(want_grad)) <= FUSED_TOL[dtype]
    only_loss, no_grad = fused_fn(xp, logits, Y, grad=False)
    assert no_grad is None
    assert relative_error(host(only_loss), host(want_loss)) <= SUM_TOL[dtype]
    # and against the textbook formulas in NumPy float64 (independent of nnx)
    ref_loss, ref_grad = reference_loss(name, host(logits), host(Y), scale=0.5)
    assert relative_error(host(loss), ref_loss) <= tolerance(dtype)
    assert relative_error(host(grad), ref_grad) <= tolerance(dtype)


@pytest.mark.parametrize("name", FUSED_LOSSES)
def test_fused_loss_is_stable_at_extreme_logits(cupy_backend, name):
    backend, xp = cupy_backend, cupy_backend.xp
    logits = backend.asarray(np.array([[1e4, -1e4], [-1e4, 1e4], [0.0, 800.0]]), xp.float64)
    Y = backend.asarray(np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), xp.float64)
    loss, grad = cuda.fused_losses()[name].fn(xp, logits, Y)
    want_loss, want_grad = LOSSES[name].fn(xp, logits, Y)
    assert np.isfinite(host(loss)) and np.all(np.isfinite(host(grad)))
    assert relative_error(host(loss), host(want_loss)) <= FUSED_TOL["float64"]
    assert relative_error(host(grad), host(want_grad)) <= FUSED_TOL["float64"]


def test_fast_paths_are_chosen_on_cupy(cupy_backend):
    assert cuda.fast_activation(ACTIVATIONS["tanh"], cupy_backend).backward is \
        cuda.tanh_backward
    assert cuda.fast_loss(LOSSES["cross_entropy"], cupy_backend).fn is \
        cuda.softmax_cross_entropy


# -- the captured training step on CuPy -------------------------------------------------------
OPTIMIZERS = {
    "sgd": lambda: nnx.SGD(lr=0.1),
    "momentum": lambda: nnx.SGD(lr=0.1, momentum=0.9),
    "nesterov": lambda: nnx.SGD(lr=0.05, momentum=0.9, nesterov=True),
}
# The same kernels run eagerly and in the graph; cuBLAS may still pick another algorithm
# inside a capture, so float32 allows a few rounding steps over the run.
STEP_TOL = {"float64": 1e-10, "float32": 1e-5}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("net", ["tanh-softmax", "relu-sigmoid"])
@pytest.mark.parametrize("l2", [0.0, 0.01])
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_captured_step_replays_equal_eager_steps(cupy_backend, opt, l2, net, dtype):
    hidden, output = net.split("-")
    X, y = moons()
    eager = moons_model(cupy_backend, l2, dtype, output, hidden)
    captured = moons_model(cupy_backend, l2, dtype, output, hidden)
    eager.optimizer = OPTIMIZERS[opt]()
    Xd = eager._as_X(X, "test")
    Yd, _ = eager._as_y(y, Xd.shape[0], "test")

    step = cuda.capture_step(captured, X, y, optimizer=OPTIMIZERS[opt]())
    start = [host(p) for p in captured.parameters()]
    tol = STEP_TOL[dtype]
    for block in range(2):  # sync_to_model midway and at the end
        for i in range(4):
            want = float(eager.train_step(Xd, Yd)[0])
            got = float(step())
            assert abs(got - want) <= tol * abs(want), f"loss of step {4 * block + i}"
        if block == 0:
            # Replays do not touch the model until sync_to_model.
            for p, p0 in zip(captured.parameters(), start):
                np.testing.assert_array_equal(host(p), p0)
        step.sync_to_model()
        for i, (p, q) in enumerate(zip(captured.parameters(), eager.parameters())):
            assert_on_backend(p, cupy_backend, dtype, q.shape)
            assert relative_error(host(p), host(q)) <= tol, f"parameter {i}"
        if captured.optimizer.momentum:
            for v, w in zip(captured.optimizer.velocity, eager.optimizer.velocity):
                assert relative_error(host(v), host(w)) <= tol
    assert step.steps == 8
    assert relative_error(host(captured.parameters()[0]), start[0]) > 1e-3  # it trained


def test_captured_step_reads_data_written_in_place(cupy_backend):
    import cupy

    X, y = moons()
    X2, y2 = nnx.datasets.make_moons(200, noise=0.3, seed=5)
    eager, captured = moons_model(cupy_backend), moons_model(cupy_backend)
    eager.optimizer = nnx.SGD(lr=0.1, momentum=0.9)
    step = cuda.capture_step(captured, X, y, optimizer=nnx.SGD(lr=0.1, momentum=0.9))
    for data_X, data_y in ((X, y), (X2, y2)):
        Xd = eager._as_X(data_X, "test")
        Yd, _ = eager._as_y(data_y, Xd.shape[0], "test")
        cupy.copyto(step.X, Xd)
        cupy.copyto(step.Y, Yd)
        for _ in range(3):
            want = float(eager.train_step(Xd, Yd)[0])
            assert abs(float(step()) - want) <= 1e-10 * abs(want)
    step.sync_to_model()
    for p, q in zip(captured.parameters(), eager.parameters()):
        assert relative_error(host(p), host(q)) <= 1e-10


def test_captured_step_refuses_changed_settings(cupy_backend):
    X, y = moons()
    model = moons_model(cupy_backend, l2=0.01)
    step = cuda.capture_step(model, X, y, optimizer="sgd", lr=0.1)
    step()
    model.optimizer.lr = 0.2
    with pytest.raises(RuntimeError, match="capture again"):
        step()
    model.optimizer.lr = 0.1
    model.l2 = 0.02
    with pytest.raises(RuntimeError, match="capture again"):
        step()
    model.l2 = 0.01
    step()
    assert step.steps == 2


def test_captured_step_close(cupy_backend):
    X, y = moons()
    model = moons_model(cupy_backend)
    step = cuda.capture_step(model, X, y, lr=0.1)
    assert step.held_bytes > 0
    step()
    step.close()
    assert step.held_bytes == 0
    with pytest.raises(RuntimeError, match="closed"):
        step()
    step.sync_to_model()  # the buffers outlive the graph
    assert np.isfinite(host(model.parameters()[0])).all()


@pytest.mark.parametrize("kwargs, match", [
    ({"optimizer": "adam"}, "Adam"),
    ({"optimizer": nnx.SGD(lr=0.1, schedule="step")}, "schedule"),
    ({"batch_size": 32}, "batch_size"),
])
def test_capture_step_misuse_on_cupy(cupy_backend, kwargs, match):
    X, y = moons()
    model = moons_model(cupy_backend)
    with pytest.raises(ValueError, match=match):
        cuda.capture_step(model, X, y, **kwargs)
    assert model.optimizer is None


# -- misuse, everywhere -----------------------------------------------------------------------
def test_capture_step_refuses_other_backends():
    X, y = moons()
    model = moons_model("numpy")
    with pytest.raises(ValueError, match="needs the cupy backend"):
        cuda.capture_step(model, X, y, optimizer="sgd", lr=0.1)
    assert model.optimizer is None


@pytest.mark.parametrize("kwargs, match", [
    ({"optimizer": "adam"}, "Adam cannot be captured|bias corrections"),
    ({"optimizer": nnx.Adam(lr=0.01)}, "bias corrections"),
    ({"optimizer": nnx.SGD(lr=0.1, schedule="exponential")}, "schedule"),
    ({"optimizer": "sgd", "batch_size": 32}, "minibatches"),
    ({"optimizer": "sgd", "batch_size": 0}, "batch_size must be"),
    ({"optimizer": "sgd", "lr": -1.0}, "lr must be"),
])
def test_capture_step_misuse_is_refused_before_the_backend(kwargs, match):
    X, y = moons()
    model = moons_model("numpy")
    with pytest.raises(ValueError, match=match):
        cuda.capture_step(model, X, y, **kwargs)
    assert model.optimizer is None


def test_capture_step_refuses_sgd_subclasses():
    class MySGD(nnx.SGD):
        pass

    X, y = moons()
    with pytest.raises(ValueError, match="only nnx.SGD"):
        cuda.capture_step(moons_model("numpy"), X, y, optimizer=MySGD(lr=0.1))


def test_captured_step_needs_an_optimizer():
    X, y = moons()
    with pytest.raises(ValueError, match="no optimizer"):
        cuda.CapturedStep(moons_model("numpy"), X, y)


# -- out of device memory, everywhere ---------------------------------------------------------
def fake_error(module, name="OutOfMemoryError", base=MemoryError, message="", **attributes):
    """An exception of a class named `name` in `module`, as CuPy or torch would raise it."""
    cls = type(name, (base,), {"__module__": module})
    exc = cls(message)
    for key, value in attributes.items():
        setattr(exc, key, value)
    return exc


def cupy_oom(size=1 << 30, total=3 << 30):
    return fake_error("cupy.cuda.memory", message=f"Out of memory allocating {size:,} bytes "
                      f"(allocated so far: {total:,} bytes).", _size=size, _total=total,
                      _limit=0)


RECOGNISED = {
    "cupy OutOfMemoryError": cupy_oom(),
    "torch.OutOfMemoryError": fake_error("torch", base=RuntimeError,
                                         message="CUDA out of memory. Tried to allocate 2.00 GiB"),
    "torch.cuda.OutOfMemoryError": fake_error("torch.cuda", base=RuntimeError),
    "cupy CUDARuntimeError": fake_error("cupy_backends.cuda.api.runtime", "CUDARuntimeError",
                                        RuntimeError, "cudaErrorMemoryAllocation: out of memory"),
    "cupy CUBLASError": fake_error("cupy_backends.cuda.libs.cublas", "CUBLASError", RuntimeError,
                                   "CUBLAS_STATUS_ALLOC_FAILED"),
    "old torch RuntimeError": RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"),
}
NOT_RECOGNISED = {
    "MemoryError": MemoryError("host memory"),
    "ValueError": ValueError("Out of memory allocating 10 bytes"),
    "another library's OutOfMemoryError": fake_error("mylib.memory"),
    "cupy CUDARuntimeError, other status": fake_error(
        "cupy_backends.cuda.api.runtime", "CUDARuntimeError", RuntimeError,
        "cudaErrorIllegalAddress: an illegal memory access was encountered"),
    "DeviceMemoryError": cuda.DeviceMemoryError("x", what="w", backend="cupy", dtype=None,
                                                shapes={}, requested_bytes=None),
}


@pytest.mark.parametrize("what", list(RECOGNISED))
def test_device_memory_errors_are_recognised(what):
    before = set(sys.modules)
    assert cuda.is_device_memory_error(RECOGNISED[what])
    err = cuda.device_memory_error(RECOGNISED[what], "Sequential.fit", {"X": (10, 2)}, "cupy")
    assert isinstance(err, cuda.DeviceMemoryError) and isinstance(err, MemoryError)
    assert not {"cupy", "torch"} & (set(sys.modules) - before)  # recognised without importing


@pytest.mark.parametrize("what", list(NOT_RECOGNISED))
def test_other_errors_are_not_translated(what):
    assert not cuda.is_device_memory_error(NOT_RECOGNISED[what])
    assert cuda.device_memory_error(NOT_RECOGNISED[what], "fit", {}, "cupy") is None


def test_device_memory_error_says_sizes_backend_dtype_and_fixes():
    shapes = {"X": (60000, 784), "layers[0] output": (60000, 4096)}
    err = cuda.device_memory_error(cupy_oom(), "Sequential.fit", shapes, "cupy", "float64")
    text = str(err)
    assert text.startswith("Sequential.fit: the cupy device ran out of memory allocating 1.0 GiB")
    assert "already held 3.0 GiB" in text
    assert "(float64)" in text
    assert "X (60000, 784) = 358.9 MiB" in text  # 60000 * 784 * 8 bytes
    assert "layers[0] output (60000, 4096) = 1.8 GiB" in text
    for fix in ("smaller batch_size=", "dtype='float32'", "smaller layers"):
        assert fix in text
    assert "Out of memory allocating 1,073,741,824 bytes" in text  # CuPy's own words
    assert (err.what, err.backend, err.dtype) == ("Sequential.fit", "cupy", "float64")
    assert err.shapes == shapes and err.requested_bytes == 1 << 30


def test_device_memory_error_in_float32_does_not_suggest_float32():
    err = cuda.device_memory_error(cupy_oom(), "predict", [("X", (10, 3))], "cupy", "float32")
    assert "dtype='float32'" not in str(err)
    assert "X (10, 3) = 120 B" in str(err)


def test_device_memory_error_reads_torch_sizes_and_backends():
    backend = nnx.get_backend("numpy")  # any Backend: its name and device are reported
    err = cuda.device_memory_error(RECOGNISED["torch.OutOfMemoryError"], "fit", {}, backend)
    assert err.requested_bytes == 2 * 1024**3
    assert "the numpy (cpu) device ran out of memory allocating 2.0 GiB" in str(err)
    assert "none recorded" in str(err)


def test_translate_memory_errors_chains_and_passes_others():
    calls = []

    def shapes():
        calls.append(1)
        return {"X": (4, 2)}

    oom = cupy_oom()
    with pytest.raises(cuda.DeviceMemoryError) as info:
        with cuda.translate_memory_errors("fit", shapes, "cupy", "float32"):
            raise oom
    assert info.value.__cause__ is oom and calls == [1]
    with pytest.raises(ValueError, match="other"):
        with cuda.translate_memory_errors("fit", shapes, "cupy"):
            raise ValueError("other")
    with cuda.translate_memory_errors("fit", shapes, "cupy"):
        pass
    assert calls == [1]  # shapes are computed only when memory runs out


# -- TF32, everywhere -------------------------------------------------------------------------
def _fake_cupy_linalg(monkeypatch, cc=80):
    """A stand-in for cupy._core._routines_linalg with CuPy's own logic (read from its
    source): the compute type is decided once, from CUPY_TF32, and cached."""
    linalg = types.ModuleType("cupy._core._routines_linalg")
    linalg.COMPUTE_TYPE_TBD, linalg.COMPUTE_TYPE_DEFAULT, linalg.COMPUTE_TYPE_TF32 = 0, 1, 7
    table = {"float32": 0}

    def get_compute_type(dtype):
        if table["float32"] == 0:
            table["float32"] = 7 if int(os.getenv("CUPY_TF32", "0")) > 0 else 1
        return table["float32"]

    def set_compute_type(dtype, compute_type):
        if compute_type == 7 and cc < 80:
            return  # CuPy warns and keeps the old type
        table["float32"] = compute_type

    linalg.get_compute_type, linalg.set_compute_type = get_compute_type, set_compute_type
    monkeypatch.setitem(sys.modules, "cupy._core._routines_linalg", linalg)
    return table


@pytest.mark.parametrize("value, enabled", [(None, False), ("0", False), ("1", True),
                                            (" 2 ", True)])
def test_tf32_enabled_reads_the_variable_as_cupy_does(monkeypatch, value, enabled):
    monkeypatch.setitem(sys.modules, "cupy._core._routines_linalg", None)  # no CuPy
    if value is None:
        monkeypatch.delenv("CUPY_TF32", raising=False)
    else:
        monkeypatch.setenv("CUPY_TF32", value)
    assert cuda.tf32_enabled() is enabled


@pytest.mark.parametrize("value", ["", "yes", "on"])
def test_a_cupy_tf32_value_cupy_would_choke_on_is_a_clear_error(monkeypatch, value):
    monkeypatch.setenv("CUPY_TF32", value)
    with pytest.raises(nnx.InvalidParameterError, match=r"CUPY_TF32=.* is not an integer; "
                                                       r"CuPy reads it with int\(\)"):
        cuda.tf32_enabled()


def test_enable_tf32_applies_after_the_first_float32_product(monkeypatch):
    monkeypatch.delenv("CUPY_TF32", raising=False)
    table = _fake_cupy_linalg(monkeypatch)
    assert cuda.tf32_enabled() is False  # CuPy has now decided (the first product)
    assert cuda.enable_tf32() is True and table["float32"] == 7
    assert cuda.enable_tf32(False) is False and table["float32"] == 1


def test_enable_tf32_reports_a_gpu_that_refuses_it(monkeypatch):
    monkeypatch.delenv("CUPY_TF32", raising=False)
    _fake_cupy_linalg(monkeypatch, cc=75)
    assert cuda.enable_tf32() is False


def test_enable_tf32_without_cupy_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy._core._routines_linalg", None)
    with pytest.raises(nnx.BackendError, match="TF32 is a CuPy setting and CuPy is not usable"):
        cuda.enable_tf32()


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_jax_jitted_activations_and_losses_equal_the_generic_ones_on_numpy(name):
    """JAX's fast paths (nnx's functions under jax.jit) against the same functions run on
    NumPy, in float64, with inputs and scales that change between calls (nothing is baked
    into a trace). The generic functions meet the textbook formulas in test_activations.py
    and test_losses.py."""
    jax = pytest.importorskip("jax")
    backend = nnx.get_backend("jax")
    rng = np.random.default_rng(0)
    with backend.scope("float64"):
        xp = backend.xp
        act, generic = cuda.fast_activation(ACTIVATIONS[name], backend), ACTIVATIONS[name]
        for spread in (1.0, 30.0):
            z, g = rng.normal(size=(6, 3)) * spread, rng.normal(size=(6, 3))
            a = act.forward(xp, xp.asarray(z))
            assert a.dtype == xp.float64 and isinstance(a, jax.Array)
            want = generic.forward(np, z)
            np.testing.assert_allclose(host(a), want, rtol=1e-13, atol=1e-15)
            # (XLA may fuse 1 - a * a into one fused multiply-add: a saturated tanh's
            # derivative is then 1e-15 where NumPy rounds it to 0.)
            np.testing.assert_allclose(host(act.backward(xp, a, xp.asarray(g))),
                                       generic.backward(np, want, g), rtol=1e-12, atol=1e-14)
        for loss in LOSSES.values():
            fast = cuda.fast_loss(loss, backend)
            Y = np.eye(3)[rng.integers(0, 3, size=6)]
            z, w = rng.normal(size=(6, 3)), rng.random((6, 1))
            for scale, weight in ((1.0, None), (0.25, None), (0.5, w)):
                value, grad = fast(xp, xp.asarray(z), xp.asarray(Y), scale=scale,
                                   weight=None if weight is None else xp.asarray(weight))
                want_value, want_grad = loss(np, z, Y, scale=scale, weight=weight)
                np.testing.assert_allclose(float(value), float(want_value), rtol=1e-13)
                np.testing.assert_allclose(host(grad), want_grad, rtol=1e-12, atol=1e-15)
