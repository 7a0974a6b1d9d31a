"""nnx.sklearn and the array API: scikit-learn's own array API checks, and "everything follows
X" (backend, device and dtype from X; outputs and fitted arrays there; y and sample_weight
moved there).

The checks run as scikit-learn's own tests parametrise them (over
``yield_namespace_device_dtype_combinations``), on the namespaces nnx has backends for:
NumPy, array_api_strict on its CPU and on ``device1`` (which refuses conversion to NumPy and
mixing devices, as CuPy does), torch on the CPU, and CuPy and torch on CUDA where a GPU is
(skipped elsewhere by scikit-learn with its one-line reason). scikit-learn refuses array API
dispatch unless ``SCIPY_ARRAY_API=1``: each test sets it.
"""

import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("array_api_strict")

import array_api_compat  # noqa: E402
import array_api_strict  # noqa: E402
import sklearn  # noqa: E402
from sklearn.datasets import make_classification, make_regression  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.neural_network import MLPClassifier as SkMLP  # noqa: E402
from sklearn.utils._array_api import NamespaceAndDevice as ND  # noqa: E402
from sklearn.utils._array_api import (  # noqa: E402
    get_namespace_and_device,
    move_estimator_to,
    yield_mixed_namespace_input_permutations,
    yield_namespace_device_dtype_combinations,
)
from sklearn.utils.estimator_checks import (  # noqa: E402
    check_array_api_input_and_values,
    check_array_api_mixed_inputs,
    check_array_api_same_namespace,
)

from nnx.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

ESTIMATORS = [
    MLPClassifier(hidden_layer_sizes=(8,), max_iter=40, learning_rate_init=0.01,
                  random_state=0),
    MLPRegressor(hidden_layer_sizes=(8,), max_iter=40, learning_rate_init=0.01,
                 random_state=0),
]
IDS = ["classifier", "regressor"]

# nnx's backends among scikit-learn's combinations (no dpnp; torch's mps and xpu are not
# devices nnx runs on).
COMBINATIONS = [c for c in yield_namespace_device_dtype_combinations()
                if c[0] in ("numpy", "array_api_strict", "cupy")
                or (c[0] == "torch" and c[1] in ("cpu", "cuda"))]
# scikit-learn's own mixed pairs on nnx's devices (X's namespace, then y's and the weights'),
# plus NumPy and the simulated accelerator each way, which run without a GPU.
MIXED = [(x, other) for other, x, _ in yield_mixed_namespace_input_permutations()
         if "mps" not in (x.device, other.device)] + [
    (ND("array_api_strict", "device1"), ND("numpy", None)),
    (ND("numpy", None), ND("array_api_strict", "device1")),
]


@pytest.fixture(autouse=True)
def _array_api_env(monkeypatch):
    monkeypatch.setenv("SCIPY_ARRAY_API", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


def _strict(a):
    return array_api_compat.is_array_api_strict_namespace(array_api_compat.array_namespace(a))


def _id(combination):
    return "-".join(str(part) for part in combination if part is not None)


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=IDS)
@pytest.mark.parametrize("array_namespace, device_name, dtype_name", COMBINATIONS,
                         ids=[_id(c) for c in COMBINATIONS])
def test_check_array_api_input_and_values(estimator, array_namespace, device_name,
                                          dtype_name):
    """Fitted attributes and every method's output: X's namespace, device, shape, dtype, and
    the values of the NumPy fit (the same initial weights and minibatch order on every
    backend), with and without (all-ones) sample weights."""
    for weighted in (False, True):
        check_array_api_input_and_values(type(estimator).__name__, estimator,
                                         array_namespace, device_name=device_name,
                                         dtype_name=dtype_name, check_sample_weight=weighted)


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=IDS)
@pytest.mark.parametrize("X_space, other_space", MIXED,
                         ids=[f"X_{_id(x)}-y_{_id(o)}" for x, o in MIXED])
def test_check_array_api_mixed_inputs(estimator, X_space, other_space):
    check_array_api_mixed_inputs(type(estimator).__name__, estimator,
                                 X_ns_and_device=X_space, other_ns_and_device=other_space)


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=IDS)
def test_check_array_api_same_namespace(estimator):
    check_array_api_same_namespace(type(estimator).__name__, estimator, "array_api_strict")


def _data(n=90, seed=0):
    return make_classification(n_samples=n, n_features=6, n_informative=4, n_redundant=0,
                               n_classes=3, n_clusters_per_class=1, class_sep=2.0,
                               random_state=seed)


def _clf(**kw):
    kw = {"hidden_layer_sizes": (8,), "max_iter": 30, "learning_rate_init": 0.01,
          "random_state": 0, **kw}
    return MLPClassifier(**kw)


def test_grid_search_on_torch_tensors_predicts_torch_tensors():
    torch = pytest.importorskip("torch")
    from sklearn.model_selection import GridSearchCV

    X, y = _data()
    Xt, yt = torch.asarray(X, dtype=torch.float32), torch.asarray(y)
    with sklearn.config_context(array_api_dispatch=True):
        search = GridSearchCV(_clf(), {"hidden_layer_sizes": [(4,), (8,)]}, cv=3).fit(Xt, yt)
        pred = search.predict(Xt)
        proba = search.predict_proba(Xt)
    assert isinstance(pred, torch.Tensor) and pred.device.type == "cpu"
    assert pred.dtype == torch.int64 and tuple(pred.shape) == (len(y),)
    assert isinstance(proba, torch.Tensor) and proba.dtype == torch.float32
    best = search.best_estimator_
    assert best.model_.backend.name == "torch" and best.model_.dtype_name == "float32"
    assert all(isinstance(c, torch.Tensor) for c in best.coefs_ + best.intercepts_)
    assert set(pred.tolist()) <= set(y.tolist())


def test_everything_follows_X_without_dispatch(monkeypatch):
    """A non-NumPy X and no ``backend``: the model follows X even without dispatch (whose
    validation then runs on a host copy), and so do the outputs."""
    monkeypatch.delenv("NNX_BACKEND", raising=False)  # the default backend: numpy
    X, y = _data()
    device1 = array_api_strict.Device("device1")
    Xs = array_api_strict.asarray(X, dtype=array_api_strict.float32, device=device1)
    ys = array_api_strict.asarray(y, device=device1)
    clf = _clf().fit(Xs, ys, sample_weight=array_api_strict.ones(len(y), device=device1))
    assert clf.model_.backend.name == "array_api_strict"
    assert clf.model_.backend.device == device1 and clf.model_.dtype_name == "float32"
    for out in (clf.predict(Xs), clf.predict_proba(Xs), *clf.coefs_):
        assert _strict(out) and out.device == device1
    assert clf.predict_proba(Xs).dtype == array_api_strict.float32
    assert isinstance(clf.score(Xs, ys), float)
    # The same fit on NumPy float32 gives the same model: one seed, the same weights.
    ref = _clf().fit(X.astype(np.float32), y)
    np.testing.assert_allclose(np.asarray(clf.predict_proba(Xs).to_device(
        array_api_strict.Device("CPU_DEVICE"))), ref.predict_proba(X), atol=1e-5)
    assert isinstance(ref.predict(X), np.ndarray) and ref.model_.backend.name == "numpy"


def test_explicit_backend_computes_there_but_outputs_follow_X():
    X, y = _data()
    device1 = array_api_strict.Device("device1")
    Xs = array_api_strict.asarray(X, device=device1)
    with sklearn.config_context(array_api_dispatch=True):
        clf = _clf(backend="numpy").fit(Xs, array_api_strict.asarray(y, device=device1))
        out = clf.predict_proba(Xs)
    assert clf.model_.backend.name == "numpy" and clf.model_.dtype_name == "float64"
    assert _strict(out) and out.device == device1
    assert clf.coefs_[0].device == device1


def test_string_classes_predict_numpy_and_classes_stay_numpy():
    X, y = _data()
    names = np.array(["cat", "dog", "emu"])[y]
    device1 = array_api_strict.Device("device1")
    Xs = array_api_strict.asarray(X, device=device1)
    with sklearn.config_context(array_api_dispatch=True):
        clf = _clf().fit(Xs, names)
        pred = clf.predict(Xs)
        assert clf.score(Xs, names) > 0.5
    assert isinstance(clf.classes_, np.ndarray) and isinstance(pred, np.ndarray)
    assert set(pred) <= set(names)


def test_predict_on_another_namespace_raises_like_sklearn():
    """The error and its words are scikit-learn's own (its check_same_namespace), for predict
    and for a partial_fit that would continue on another namespace; scikit-learn's
    move_estimator_to (which the message suggests) then works."""
    X, y = _data()
    Xs = array_api_strict.asarray(X)
    with sklearn.config_context(array_api_dispatch=True):
        clf = _clf().fit(Xs, array_api_strict.asarray(y))
        for method in ("predict", "predict_proba", "predict_log_proba"):
            with pytest.raises(ValueError, match=rf"MLPClassifier\.{method}\(\) must use the "
                               "same namespace"):
                getattr(clf, method)(X)
        with pytest.raises(ValueError, match=r"partial_fit\(\) must use the same namespace"):
            clf.partial_fit(X, y)
        assert clf.n_iter_ == 30  # nothing changed
        xp, _, device = get_namespace_and_device(X)
        moved = move_estimator_to(clf, xp, device)
        np.testing.assert_allclose(moved.predict_proba(X), np.asarray(clf.predict_proba(Xs)),
                                   rtol=1e-12)
        assert moved.model_.backend.name == "numpy" and isinstance(moved.coefs_[0], np.ndarray)
        moved.partial_fit(X, y)
    assert moved.n_iter_ == 31 and clf.n_iter_ == 30


def test_without_dispatch_numpy_in_numpy_out(monkeypatch):
    monkeypatch.delenv("NNX_BACKEND", raising=False)  # the default backend: numpy
    X, y = _data()
    clf = _clf().fit(X, y)
    assert clf.model_.backend.name == "numpy" and clf.model_.dtype_name == "float64"
    for out in (clf.predict(X), clf.predict_proba(X), *clf.coefs_, *clf.intercepts_):
        assert isinstance(out, np.ndarray)
    assert clf.predict_proba(X).dtype == np.float64
    assert clf.predict_proba(X.astype(np.float32)).dtype == np.float64  # the model's dtype


def test_sample_weight_on_another_device_moves_to_X():
    """Weights on device1 with X on the CPU (NumPy): they move to X (no mixing of devices),
    and weigh as the same weights on NumPy do, against scikit-learn's own objective."""
    X, y = _data(n=60)
    w = np.random.default_rng(0).uniform(0.5, 2.0, len(y))
    device1 = array_api_strict.Device("device1")
    with sklearn.config_context(array_api_dispatch=True):
        ours = _clf(max_iter=1, alpha=0.3).fit(X, y, sample_weight=array_api_strict.asarray(
            w, device=device1))
    ref = SkMLP(hidden_layer_sizes=(8,), max_iter=1, learning_rate_init=0.01, alpha=0.3,
                random_state=0).fit(X, y, sample_weight=w)
    np.testing.assert_allclose(ours.loss_curve_[0], ref.loss_curve_[0], rtol=1e-10)


def test_regressor_on_torch_keeps_float32_and_device():
    torch = pytest.importorskip("torch")
    X, y = make_regression(n_samples=60, n_features=4, n_targets=2, noise=0.1, random_state=0)
    Xt = torch.asarray(X, dtype=torch.float32)
    with sklearn.config_context(array_api_dispatch=True):
        reg = MLPRegressor(hidden_layer_sizes=(8,), max_iter=20, random_state=0).fit(
            Xt, torch.asarray(y / 100))
        pred = reg.predict(Xt)
    assert isinstance(pred, torch.Tensor) and pred.dtype == torch.float32
    assert tuple(pred.shape) == (60, 2) and reg.model_.backend.name == "torch"


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=IDS)
def test_pickle_deepcopy_clone_joblib_on_every_backend(estimator, backend):
    """A model fitted on each backend of the registry (X on it, under dispatch) comes back
    from pickle, deepcopy and joblib on the same backend and device, predicting the same
    values, and trains on (its optimizer's state came along); clone keeps the parameters
    only."""
    import copy
    import io
    import pickle

    import joblib
    from sklearn.base import clone

    from nnx.backends import to_numpy

    if isinstance(estimator, MLPClassifier):
        X, y = _data(n=40)
    else:
        X, y = make_regression(n_samples=40, n_features=4, noise=0.1, random_state=0)
        y = y / 100
    dtype = backend.xp.float64 if backend.supports_float64 else backend.xp.float32
    Xb = backend.asarray(X, dtype=dtype)
    yb = backend.asarray(y) if isinstance(estimator, MLPClassifier) else backend.asarray(
        y, dtype=dtype)
    with sklearn.config_context(array_api_dispatch=True):
        fitted = clone(estimator).set_params(max_iter=5).fit(Xb, yb)
        assert fitted.model_.backend == backend
        expected = to_numpy(fitted.predict(Xb))
        buffer = io.BytesIO()
        joblib.dump(fitted, buffer)
        buffer.seek(0)
        copies = (pickle.loads(pickle.dumps(fitted)), copy.deepcopy(fitted),
                  joblib.load(buffer))
        for other in copies:
            assert other.model_.backend == backend
            pred = other.predict(Xb)
            assert backend.owns(pred) and array_api_compat.device(pred) == backend.device
            np.testing.assert_array_equal(to_numpy(pred), expected)
            other.partial_fit(Xb, yb)
            assert other.n_iter_ == 6
        fresh = clone(fitted)
    assert fresh.get_params() == fitted.get_params() and not hasattr(fresh, "model_")
