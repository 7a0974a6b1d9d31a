"""NNX_BACKEND, use_backend and backend_info. The variable is tested in subprocesses, so that
each case starts from a fresh interpreter, as a user's program would."""

import json
import os
import subprocess
import sys

import pytest

import nnx
from nnx.errors import BackendError

PROBE = (
    "import json, sys, nnx\n"
    "before = {m: m in sys.modules for m in ('cupy', 'torch')}\n"
    "m = nnx.Sequential([nnx.Dense(2, 2, 'softmax')])\n"
    "info = nnx.backend_info()\n"
    "print(json.dumps({'model': m.backend.name, 'info': info, 'imported_at_import': before}))\n"
)


def run_probe(value):
    env = {k: v for k, v in os.environ.items() if k != "NNX_BACKEND"}
    if value is not None:
        env["NNX_BACKEND"] = value
    return subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                          text=True, timeout=120)


def cupy_usable():
    try:
        nnx.get_backend("cupy")
    except BackendError:
        return False
    return True


@pytest.mark.parametrize("value,expected", [
    (None, "numpy"), ("", "numpy"), ("   ", "numpy"), ("numpy", "numpy"), (" NumPy ", "numpy"),
    ("torch", "torch"), ("array_api_strict", "array_api_strict"), ("ARRAY-API-STRICT",
                                                                   "array_api_strict"),
    ("cupy", "cupy"), (" CuPy", "cupy"),
])
def test_env_selects_the_backend(value, expected):
    if expected == "torch":
        pytest.importorskip("torch")
    if expected == "cupy" and not cupy_usable():
        pytest.skip("no usable CUDA device here (test_env_cupy_without_a_gpu_says_why runs)")
    result = run_probe(value)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["model"] == expected
    assert out["info"]["backend"] == expected
    assert out["imported_at_import"] == {"cupy": False, "torch": False}


def test_env_auto_records_its_choice_and_why():
    result = run_probe("auto")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)["info"]
    assert info["requested"] == "auto"
    if cupy_usable():
        assert info["backend"] == "cupy" and "CUDA device is usable" in info["reason"]
    else:
        assert info["backend"] == "numpy"
        assert info["reason"].startswith("auto: CuPy not usable, using numpy (")


def test_env_unknown_value_is_a_clear_error():
    result = run_probe("nmpy")
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    choices = ", ".join(nnx.backends.CHOICES)  # the registry's names, then auto
    assert choices.startswith("numpy, cupy, torch") and choices.endswith("array_api_strict, auto")
    assert last == (f"nnx.errors.InvalidParameterError: NNX_BACKEND='nmpy' is not a backend; "
                    f"choose one of: {choices}; unset NNX_BACKEND to use numpy.")


def test_env_cupy_without_a_gpu_says_why():
    if cupy_usable():
        pytest.skip("a CUDA device is usable here")
    result = run_probe("cupy")
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("nnx.errors.BackendError: NNX_BACKEND='cupy' but ")
    try:
        import cupy  # noqa: F401
    except ImportError:
        assert "CuPy is not installed" in last and "nnx-arrays[cuda13]" in last
    else:
        assert "no CUDA device is usable (" in last and "unset NNX_BACKEND" in last


def test_variable_is_read_when_needed_not_at_import(monkeypatch):
    monkeypatch.setenv("NNX_BACKEND", "array_api_strict")
    assert nnx.get_backend().name == "array_api_strict"
    monkeypatch.setenv("NNX_BACKEND", "numpy")
    assert nnx.get_backend().name == "numpy"
    monkeypatch.setenv("NNX_BACKEND", "bogus")
    with pytest.raises(ValueError, match="NNX_BACKEND='bogus' is not a backend"):
        nnx.Sequential([nnx.Dense(2, 2)])


def test_use_backend_is_scoped_and_nests(monkeypatch):
    monkeypatch.delenv("NNX_BACKEND", raising=False)
    with nnx.use_backend("array_api_strict", device="device1") as outer:
        assert nnx.Sequential([nnx.Dense(2, 2)]).backend is outer
        assert str(outer.device) == str(nnx.get_backend("array_api_strict", "device1").device)
        with nnx.use_backend("numpy"):
            assert nnx.Sequential([nnx.Dense(2, 2)]).backend.name == "numpy"
        assert nnx.get_backend().name == "array_api_strict"
    assert nnx.get_backend().name == "numpy"
    # an explicit backend= argument wins over the block
    with nnx.use_backend("array_api_strict"):
        assert nnx.Sequential([nnx.Dense(2, 2)], backend="numpy").backend.name == "numpy"


def test_use_backend_rejects_unknown_names():
    with pytest.raises(ValueError, match=r"backend='mxnet' is not a backend; choose one of"):
        with nnx.use_backend("mxnet"):
            pass
    with pytest.raises(TypeError, match="backend must be a string or nnx.Backend; received int"):
        nnx.get_backend(3)


def _model_backend(_=None):
    return nnx.Sequential([nnx.Dense(2, 2)]).backend.name


def test_use_backend_in_a_thread_pool_needs_carry_context(monkeypatch):
    """A pool's threads do not see the block (documented); carry_context carries it, to
    several tasks at once, and what a task sets stays in that task."""
    from concurrent.futures import ThreadPoolExecutor

    from nnx.backends import carry_context

    monkeypatch.delenv("NNX_BACKEND", raising=False)

    def sets_its_own(_):
        with nnx.use_backend("numpy"):
            inner = _model_backend()
        return inner, _model_backend()

    with nnx.use_backend("array_api_strict"), ThreadPoolExecutor(max_workers=3) as pool:
        assert pool.submit(_model_backend).result() == "numpy"  # the problem: NNX_BACKEND
        assert pool.submit(carry_context(_model_backend)).result() == "array_api_strict"
        assert list(pool.map(carry_context(_model_backend), range(6))) == \
            ["array_api_strict"] * 6
        assert pool.submit(carry_context(sets_its_own), 0).result() == ("numpy",
                                                                          "array_api_strict")
        wrapped = carry_context(_model_backend)
    assert _model_backend() == "numpy"
    # the context is the one captured when wrapped, not the one in force when it runs
    with ThreadPoolExecutor(max_workers=1) as pool:
        assert pool.submit(wrapped).result() == "array_api_strict"
    assert wrapped.__name__ == "_model_backend"


def test_use_backend_inside_a_generator_holds_for_its_caller_between_yields(monkeypatch):
    """Documented: a generator shares its caller's context, so a block around its yields is
    in force in the caller until the generator ends; a block around the loop is the fix."""
    monkeypatch.delenv("NNX_BACKEND", raising=False)

    def batches():
        with nnx.use_backend("array_api_strict"):
            yield 1
            yield 2

    seen = []
    for _ in batches():
        seen.append(_model_backend())  # the caller's own code, between the yields
    assert seen == ["array_api_strict", "array_api_strict"]
    assert _model_backend() == "numpy"  # reset when the generator finished

    def plain():
        yield 1
        yield 2

    with nnx.use_backend("array_api_strict"):
        assert [_model_backend() for _ in plain()] == ["array_api_strict"] * 2
    assert _model_backend() == "numpy"


def test_backend_info_reports_versions_and_device():
    info = nnx.backend_info("array_api_strict")
    assert info["backend"] == "array_api_strict"
    assert info["nnx"] == nnx.__version__
    import array_api_compat
    import numpy

    assert info["numpy"] == numpy.__version__
    assert info["array_api_compat"] == array_api_compat.__version__
    assert info["library"].startswith("array_api_strict ")
    assert info["default_dtype"] == "float32" and "CPU_DEVICE" in info["device"]


def test_the_reason_belongs_to_each_call_not_to_the_first(monkeypatch):
    monkeypatch.delenv("NNX_BACKEND", raising=False)
    assert nnx.get_backend("array_api_strict").reason == "backend= argument"
    assert nnx.backend_info()["reason"] == "default (NNX_BACKEND unset)"
    monkeypatch.setenv("NNX_BACKEND", "array_api_strict")
    assert nnx.get_backend().reason == "NNX_BACKEND='array_api_strict'"
    assert nnx.get_backend("array_api_strict").reason == "backend= argument"
    # the namespace and device are still built once
    assert nnx.get_backend().xp is nnx.get_backend("array_api_strict").xp


def test_to_numpy_brings_device_arrays_back(backend):
    import numpy as np

    data = np.arange(6.0).reshape(2, 3)
    array = backend.asarray(data, backend.xp.float32)
    back = nnx.to_numpy(array)
    assert isinstance(back, np.ndarray)
    np.testing.assert_array_equal(back, data)


def test_simulated_accelerator_refuses_host_conversion_like_cupy():
    """The guard the device1 runs rely on: an accidental np.asarray inside the core fails."""
    import numpy as np

    backend = nnx.get_backend("array_api_strict", "device1")
    array = backend.asarray(np.ones((2, 2)))
    with pytest.raises(RuntimeError, match="Can't convert array on the"):
        np.asarray(array)


FAKE_CUPY = '''
"""A stand-in for CuPy installed on a machine whose driver is missing: it imports, and fails
at the first CUDA call, as the real one does there."""


class CUDARuntimeError(RuntimeError):
    pass


class _Runtime:
    @staticmethod
    def getDeviceCount():
        raise CUDARuntimeError("cudaErrorInsufficientDriver: CUDA driver version is "
                               "insufficient for CUDA runtime version")


class cuda:
    runtime = _Runtime()
'''


def test_env_cupy_installed_without_a_driver_names_the_cuda_error(tmp_path):
    (tmp_path / "cupy").mkdir()
    (tmp_path / "cupy" / "__init__.py").write_text(FAKE_CUPY)
    env = {k: v for k, v in os.environ.items() if k != "NNX_BACKEND"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    for value in ("cupy", "auto"):
        env["NNX_BACKEND"] = value
        result = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                                text=True, timeout=120)
        if value == "cupy":
            assert result.returncode != 0
            last = result.stderr.strip().splitlines()[-1]
            assert last.startswith("nnx.errors.BackendError: NNX_BACKEND='cupy' but no CUDA "
                                   "device is usable (cudaErrorInsufficientDriver"), last
            assert "unset NNX_BACKEND to use numpy" in last
        else:  # auto says why it chose numpy, with the same CUDA error
            assert result.returncode == 0, result.stderr
            info = json.loads(result.stdout)["info"]
            assert info["backend"] == "numpy"
            assert "cudaErrorInsufficientDriver" in info["reason"]


def test_a_read_only_array_into_a_torch_model_warns_nothing():
    """torch warns (once per process) when a tensor shares a read-only NumPy array's memory;
    nnx never writes into its inputs, so a read-only array (a memmap, scikit-learn's
    read-only checks) goes in without a warning. In a fresh process: torch shows it once."""
    pytest.importorskip("torch")
    code = (
        "import warnings, numpy as np, nnx\n"
        "warnings.simplefilter('error')\n"
        "X = np.random.default_rng(0).normal(size=(20, 3)); X.flags.writeable = False\n"
        "y = (X[:, 0] > 0).astype(int); y.flags.writeable = False\n"
        "m = nnx.Sequential([nnx.Dense(3, 2, activation='softmax')], backend='torch')\n"
        "m.fit(X, y, epochs=2)\n"
        "print(m.predict(X).shape)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "(20,)" in result.stdout or "torch.Size([20])" in result.stdout


# The array library each backend imports, as Python names it.
LIBRARIES = {"cupy": "cupy", "torch": "torch", "jax": "jax",
             "array_api_strict": "array_api_strict"}


@pytest.mark.parametrize("name", sorted(LIBRARIES))
def test_a_backend_whose_library_is_missing_says_what_to_install(monkeypatch, name):
    assert set(LIBRARIES) == set(nnx.backends.BACKENDS) - {"numpy"}  # every optional one
    monkeypatch.setitem(sys.modules, LIBRARIES[name], None)  # import now raises ImportError
    monkeypatch.setattr(nnx.backends, "_resolved_cache", {})
    install = nnx.backends.REGISTRY[name].install
    with pytest.raises(nnx.BackendError) as caught:
        nnx.get_backend(name)
    message = str(caught.value)
    assert message.startswith(f"backend={name!r} but ")
    assert " is not installed (" in message
    assert message.endswith(f"install it with {install}, or choose another backend.")
