"""nnx.sklearn: scikit-learn's estimator checks, and the MLP estimators' own behaviour."""

import copy
import io
import pickle
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

import joblib  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.datasets import load_digits, make_classification, make_regression  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils._param_validation import InvalidParameterError  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from nnx.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

ESTIMATORS = [
    MLPClassifier(hidden_layer_sizes=(16,), max_iter=200, learning_rate_init=0.01,
                  random_state=0),
    MLPRegressor(hidden_layer_sizes=(16,), max_iter=200, learning_rate_init=0.01,
                 random_state=0),
]


# Every check scikit-learn has for the two estimators, with no expected failures (no
# ``expected_failed_checks``, so nothing is marked xfail) and no dtype override: the default
# ``dtype=None`` trains in X's float dtype, float64 for the checks' float64 data, as
# scikit-learn's MLP does, so no check needs ``dtype='float64'`` set for its precision. The
# array API checks among them run too (SCIPY_ARRAY_API=1); scikit-learn skips those whose
# library or device is not here (CuPy, CUDA, torch's xpu and mps, dpnp), with its reason.
# tests/test_sklearn_array_api.py runs them again with the values compared.
@parametrize_with_checks(ESTIMATORS)
def test_sklearn_estimator_checks(estimator, check, monkeypatch):
    monkeypatch.setenv("SCIPY_ARRAY_API", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


def _blobs(n=120, classes=3, seed=0):
    X, y = make_classification(n_samples=n, n_features=6, n_informative=4, n_redundant=0,
                               n_classes=classes, n_clusters_per_class=1, class_sep=2.0,
                               random_state=seed)
    return X, y


def _small(**kw):
    kw.setdefault("hidden_layer_sizes", (12,))
    kw.setdefault("max_iter", 300)
    kw.setdefault("learning_rate_init", 0.01)
    kw.setdefault("random_state", 0)
    return MLPClassifier(**kw)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_string_labels_round_trip():
    X, y = _blobs()
    names = np.array(["cat", "dog", "emu"])[y]
    clf = _small().fit(X, names)
    assert list(clf.classes_) == ["cat", "dog", "emu"]
    pred = clf.predict(X)
    assert pred.dtype == names.dtype and set(pred) <= set(names)
    assert clf.score(X, names) > 0.9
    proba = clf.predict_proba(X)
    assert proba.shape == (len(X), 3) and np.allclose(proba.sum(axis=1), 1)
    assert clf.out_activation_ == "softmax" and clf.n_outputs_ == 3 and clf.n_layers_ == 3


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_binary_one_based_and_bool_labels():
    X, y = _blobs(classes=2)
    for labels in (y + 1, y.astype(bool)):
        clf = _small().fit(X, labels)
        assert clf.out_activation_ == "logistic" and clf.n_outputs_ == 1
        assert set(clf.predict(X)) <= set(labels)
        assert clf.predict(X).dtype == labels.dtype
        assert clf.predict_proba(X).shape == (len(X), 2)
        assert clf.score(X, labels) > 0.9
        assert [c.shape for c in clf.coefs_] == [(6, 12), (12, 1)]


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_clone_keeps_parameters_not_fit():
    X, y = _blobs()
    clf = _small(alpha=0.01, solver="sgd", backend="numpy").fit(X, y)
    other = clone(clf)
    assert other.get_params() == clf.get_params()
    assert not hasattr(other, "model_") and not hasattr(other, "coefs_")


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_pickle_deepcopy_joblib_predict_the_same():
    X, y = _blobs()
    clf = _small().fit(X, y)
    expected = clf.predict_proba(X)
    buffer = io.BytesIO()
    joblib.dump(clf, buffer)
    buffer.seek(0)
    for other in (pickle.loads(pickle.dumps(clf)), copy.deepcopy(clf), joblib.load(buffer)):
        np.testing.assert_array_equal(other.predict_proba(X), expected)
        other.partial_fit(X, y)  # the optimizer's state came along too


def test_pipeline_on_digits():
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, random_state=0, stratify=y)
    pipe = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(64,),
                                                         max_iter=30, random_state=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipe.fit(X_train, y_train)
    assert pipe.score(X_test, y_test) > 0.9


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_torch_backend_returns_numpy():
    pytest.importorskip("torch")
    X, y = _blobs()
    clf = _small(backend="torch", max_iter=50).fit(X, y)
    assert clf.model_.backend.name == "torch"
    for out in (clf.predict(X), clf.predict_proba(X)):
        assert isinstance(out, np.ndarray)
    assert all(isinstance(c, np.ndarray) for c in clf.coefs_ + clf.intercepts_)
    ref = _small(backend="numpy", max_iter=50).fit(X, y)
    np.testing.assert_allclose(clf.predict_proba(X), ref.predict_proba(X), atol=1e-8)
    back = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(back.predict_proba(X), clf.predict_proba(X))


def test_lbfgs_refused_with_reason():
    X, y = _blobs()
    with pytest.raises(InvalidParameterError, match="nnx has no L-BFGS"):
        MLPClassifier(solver="lbfgs").fit(X, y)


def test_max_iter_warns_convergence():
    X, y = _blobs()
    with pytest.warns(ConvergenceWarning, match=r"Maximum iterations \(3\) reached"):
        clf = _small(max_iter=3, tol=0).fit(X, y)
    assert clf.n_iter_ == 3 and len(clf.loss_curve_) == 3 and clf.t_ == 3 * len(X)


def test_stops_on_tol_like_sklearn():
    X, y = _blobs()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        clf = _small(max_iter=5000, tol=1e-2, n_iter_no_change=5).fit(X, y)
    assert clf.n_iter_ < 5000
    curve = np.array(clf.loss_curve_)
    # Each of the last n_iter_no_change + 1 epochs failed to beat the best loss before it by
    # tol (scikit-learn's _update_no_improvement_count).
    for i in range(len(curve) - clf.n_iter_no_change - 1, len(curve)):
        assert curve[i] > curve[:i].min() - clf.tol
    assert clf.best_loss_ == curve.min() and clf.loss_ == curve[-1]


def test_early_stopping_keeps_best_validation_weights():
    X, y = _blobs(n=300)
    clf = _small(early_stopping=True, max_iter=500, n_iter_no_change=5).fit(X, y)
    assert clf.best_loss_ is None
    assert len(clf.validation_scores_) == clf.n_iter_
    assert clf.best_validation_score_ == max(clf.validation_scores_)


def test_partial_fit_needs_classes_then_counts_epochs():
    X, y = _blobs()
    clf = _small()
    with pytest.raises(ValueError, match="classes must be passed"):
        clf.partial_fit(X, y)
    clf.partial_fit(X[:60], y[:60], classes=np.unique(y))
    clf.partial_fit(X[60:], y[60:])
    assert clf.n_iter_ == 2 and clf.t_ == len(X)
    with pytest.raises(ValueError, match="classes not in"):
        clf.partial_fit(X, y + 5)


def test_loss_matches_sklearn_objective():
    """loss_curve_[0] is scikit-learn's objective at the initial (shared) weights, alpha
    included: one full-batch epoch, so the loss is computed before the update."""
    from sklearn.neural_network import MLPClassifier as SkMLP
    from sklearn.neural_network import MLPRegressor as SkReg

    X, y = _blobs()
    Xr, yr = make_regression(n_samples=80, n_features=5, noise=0.1, random_state=0)
    for ours, theirs, data in (
        (_small(alpha=0.5, max_iter=1), SkMLP, (X, y)),
        (MLPRegressor(hidden_layer_sizes=(12,), alpha=0.5, max_iter=1, random_state=0),
         SkReg, (Xr, yr / 100)),
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            ours.fit(*data)
            ref = theirs(**{k: v for k, v in ours.get_params().items()
                            if k not in ("backend", "device", "dtype", "class_weight")}).fit(*data)
        np.testing.assert_allclose(ours.loss_curve_[0], ref.loss_curve_[0], rtol=1e-10)


@pytest.mark.parametrize("learning_rate", ["constant", "invscaling", "adaptive"])
def test_sgd_learning_rates_train(learning_rate):
    X, y = _blobs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = _small(solver="sgd", learning_rate=learning_rate, learning_rate_init=0.1,
                     max_iter=200).fit(X, y)
    assert clf.score(X, y) > 0.9
    if learning_rate == "adaptive":  # a long run at tol=0.01 stalls: lr / 5, as sklearn
        stalled = _small(solver="sgd", learning_rate="adaptive", learning_rate_init=0.1,
                         tol=0.01, n_iter_no_change=2, max_iter=300).fit(X, y)
        assert stalled.model_.optimizer.lr <= 0.1 / 5
    if learning_rate == "invscaling":
        assert clf.model_.optimizer.rate() < 0.1 / (clf.t_ - len(X)) ** 0.5 * 1.0001


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_regressor_multioutput_and_warm_start():
    X, y = make_regression(n_samples=100, n_features=4, n_targets=2, noise=0.1,
                           random_state=0)
    reg = MLPRegressor(hidden_layer_sizes=(20,), max_iter=400, learning_rate_init=0.01,
                       random_state=0, warm_start=True)
    reg.fit(X, y / 100)
    assert reg.predict(X).shape == (100, 2) and reg.out_activation_ == "identity"
    first = reg.n_iter_
    reg.fit(X, y / 100)
    assert reg.n_iter_ > first
    assert reg.score(X, y / 100) > 0.9


@pytest.mark.parametrize("learning_rate", ["constant", "invscaling"])
def test_full_batch_sgd_follows_sklearn(learning_rate):
    """Full batch (no minibatch order involved) and the same initial weights: nnx's SGD with
    Nesterov momentum takes scikit-learn's steps, alpha included, for both estimators."""
    from sklearn.neural_network import MLPClassifier as SkMLP
    from sklearn.neural_network import MLPRegressor as SkReg

    X, y = _blobs()
    Xr, yr = make_regression(n_samples=80, n_features=5, n_targets=2, noise=0.1,
                             random_state=0)
    settings = dict(hidden_layer_sizes=(12,), solver="sgd", alpha=0.3, max_iter=25,
                    learning_rate=learning_rate, learning_rate_init=0.05, random_state=0,
                    tol=0, power_t=0.3)
    for ours, theirs, data in ((MLPClassifier(**settings), SkMLP(**settings), (X, y)),
                               (MLPRegressor(**settings), SkReg(**settings), (Xr, yr / 100)),
                               (MLPRegressor(**settings), SkReg(**settings), (Xr, yr[:, 0] / 100))):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            ours.fit(*data)
            theirs.fit(*data)
        for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
        if ours.n_outputs_ == 1:  # loss_ is exact for one output (see nnx.sklearn)
            np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-9)


@pytest.mark.parametrize("name", ["MLPClassifier", "MLPRegressor"])
def test_signature_is_sklearns_plus_nnx_parameters(name):
    """scikit-learn's own signature (names, order, positional or keyword-only, defaults), so
    that its calls run unchanged, then nnx's additions."""
    import inspect

    import sklearn.neural_network

    import nnx.sklearn

    theirs = inspect.signature(getattr(sklearn.neural_network, name)).parameters
    ours = inspect.signature(getattr(nnx.sklearn, name)).parameters
    extra = (["class_weight"] if name == "MLPClassifier" else []) + ["backend", "device",
                                                                     "dtype"]
    assert list(ours) == list(theirs) + extra
    for key, param in theirs.items():
        assert (ours[key].kind, ours[key].default) == (param.kind, param.default), key


def test_poisson_loss_refused_with_reason():
    X, y = make_regression(n_samples=30, n_features=3, random_state=0)
    with pytest.raises(InvalidParameterError, match="squared error only"):
        MLPRegressor(loss="poisson").fit(X, np.abs(y))


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_feature_names_log_proba_and_array_api_tag():
    pd = pytest.importorskip("pandas")
    X, y = _blobs()
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])])
    clf = _small(max_iter=20).fit(frame, y)
    assert list(clf.feature_names_in_) == list(frame.columns) and clf.n_features_in_ == 6
    with pytest.raises(ValueError, match="feature names should match"):
        clf.predict(frame.rename(columns={"f0": "other"}))
    with pytest.warns(UserWarning, match="X does not have valid feature names"):
        clf.predict(X)
    proba = clf.predict_proba(frame)
    np.testing.assert_allclose(clf.predict_log_proba(frame), np.log(proba), rtol=1e-15)
    np.testing.assert_array_equal(clf.predict(frame), clf.classes_[np.argmax(proba, axis=1)])
    for est in (clf, MLPRegressor()):
        assert est.__sklearn_tags__().array_api_support is True
