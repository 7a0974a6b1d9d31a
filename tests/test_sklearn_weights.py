"""nnx.sklearn: sample_weight and class_weight, against scikit-learn's own MLP (whose
weighting nnx's follows: per batch the weighted mean loss, the L2 term divided by the batch's
total weight) and against duplicated or removed rows.

Full batches with shuffling off involve no minibatch order, and the estimators draw
scikit-learn's initial weights from ``random_state``: scikit-learn's MLP and nnx then take the
same steps, so their coefficients are compared directly.
"""


import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.datasets import make_classification, make_regression  # noqa: E402
from sklearn.neural_network import MLPClassifier as SkClassifier  # noqa: E402
from sklearn.neural_network import MLPRegressor as SkRegressor  # noqa: E402
from sklearn.utils.class_weight import compute_sample_weight  # noqa: E402

from nnx.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

SGD = dict(hidden_layer_sizes=(10,), solver="sgd", alpha=0.3, learning_rate_init=0.05,
           max_iter=25, tol=0, shuffle=False, random_state=0)


def _classification(n=60, classes=3, seed=0):
    return make_classification(n_samples=n, n_features=5, n_informative=4, n_redundant=0,
                               n_classes=classes, n_clusters_per_class=1, class_sep=1.5,
                               random_state=seed)


def _regression(n=60, targets=1, seed=0):
    X, y = make_regression(n_samples=n, n_features=5, n_targets=targets, noise=0.1,
                           random_state=seed)
    return X, y / 100


def _weights(n, seed=1):
    return np.random.default_rng(seed).uniform(0.2, 3.0, n)


def _params(est):
    return est.coefs_ + est.intercepts_


def _assert_same_params(a, b, rtol, atol):
    for p, q in zip(_params(a), _params(b)):
        np.testing.assert_allclose(p, q, rtol=rtol, atol=atol)


@pytest.mark.parametrize("solver", ["sgd", "adam"])
@pytest.mark.parametrize("kind", ["classifier", "binary", "regressor", "regressor-2"])
def test_weight_two_is_a_duplicated_row_and_zero_a_removed_one(kind, solver):
    estimator = MLPRegressor if kind.startswith("regressor") else MLPClassifier
    if kind.startswith("regressor"):
        X, y = _regression(targets=2 if kind.endswith("2") else 1)
    else:
        X, y = _classification(classes=2 if kind == "binary" else 3)
    params = {**SGD, "solver": solver, "dtype": "float64"}
    w = np.ones(len(y))
    w[:15] = 2.0
    w[40:50] = 0.0
    weighted = estimator(**params).fit(X, y, sample_weight=w)
    rows = np.concatenate([np.arange(15), np.arange(len(y))])
    rows = rows[(rows < 40) | (rows >= 50)]
    expanded = estimator(**params).fit(X[rows], y[rows])
    _assert_same_params(weighted, expanded, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(weighted.loss_curve_, expanded.loss_curve_, rtol=1e-12)


@pytest.mark.parametrize("kind", ["classifier", "binary", "regressor"])
def test_full_batch_sample_weight_follows_sklearn(kind):
    if kind == "regressor":
        ours, theirs, (X, y) = MLPRegressor(**SGD), SkRegressor(**SGD), _regression()
    else:
        ours, theirs = MLPClassifier(**SGD), SkClassifier(**SGD)
        X, y = _classification(classes=2 if kind == "binary" else 3)
    w = _weights(len(y))
    ours.fit(X, y, sample_weight=w)
    theirs.fit(X, y, sample_weight=w)
    _assert_same_params(ours, theirs, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-9)
    # partial_fit continues with the weights, the same optimizer state as scikit-learn's.
    ours.partial_fit(X, y, sample_weight=w[::-1].copy())
    theirs.partial_fit(X, y, sample_weight=w[::-1].copy())
    _assert_same_params(ours, theirs, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ours.loss_, theirs.loss_, rtol=1e-9)


def test_minibatch_sample_weight_follows_sklearn_when_batches_weigh_the_same():
    """Minibatches in order (no shuffle) whose weights sum to the same total each: nnx's one
    l2 (alpha over batch_size times the mean weight) is then scikit-learn's alpha over each
    batch's weight, exactly."""
    X, y = _classification(n=60)
    w = np.tile(_weights(20), 3)
    settings = {**SGD, "batch_size": 20}
    ours = MLPClassifier(**settings).fit(X, y, sample_weight=w)
    theirs = SkClassifier(**settings).fit(X, y, sample_weight=w)
    _assert_same_params(ours, theirs, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-9)


def test_class_weight_multiplies_sample_weight_as_sklearn_computes_it():
    X, y = _classification()
    w = _weights(len(y))
    for class_weight in ("balanced", {0: 2.0, 1: 1.0, 2: 0.25}):
        ours = MLPClassifier(**SGD, class_weight=class_weight).fit(X, y, sample_weight=w)
        per_class = compute_sample_weight(class_weight, y)
        theirs = SkClassifier(**SGD).fit(X, y, sample_weight=w * per_class)
        _assert_same_params(ours, theirs, rtol=1e-9, atol=1e-12)
    # 'balanced' by hand: n / (n_classes * count of the row's class).
    counts = np.bincount(y)
    np.testing.assert_allclose(compute_sample_weight("balanced", y), len(y) / (3 * counts[y]))


def test_class_weight_balanced_refused_by_partial_fit_and_nothing_changes():
    X, y = _classification()
    clf = MLPClassifier(**SGD, class_weight="balanced")
    with pytest.raises(ValueError, match="class_weight='balanced' is not supported by "
                                         "partial_fit"):
        clf.partial_fit(X, y, classes=[0, 1, 2])
    assert not hasattr(clf, "classes_") and not hasattr(clf, "model_")


def test_bad_sample_weight_is_refused_and_the_fit_kept():
    X, y = _classification()
    clf = MLPClassifier(**SGD).fit(X, y)
    before = [p.copy() for p in _params(clf)]
    with pytest.raises(ValueError, match="sample_weight"):
        clf.fit(X, y, sample_weight=-np.ones(len(y)))
    with pytest.raises(ValueError, match=r"sample_weight.shape == \(59,\), expected \(60,\)"):
        clf.fit(X, y, sample_weight=np.ones(59))
    with pytest.raises(ValueError, match="at least one non-zero"):
        clf.partial_fit(X, y, sample_weight=np.zeros(len(y)))
    for p, q in zip(_params(clf), before):
        np.testing.assert_array_equal(p, q)
    assert clf.n_iter_ == SGD["max_iter"]


def test_weighted_score_is_the_weighted_fraction_correct():
    X, y = _classification()
    w = _weights(len(y))
    clf = MLPClassifier(**SGD).fit(X, y)
    hit = clf.predict(X) == y
    assert clf.score(X, y, sample_weight=w) == pytest.approx(np.sum(w * hit) / np.sum(w),
                                                             rel=1e-12)
    Xr, yr = _regression()
    reg = MLPRegressor(**SGD).fit(Xr, yr)
    pred = reg.predict(Xr)
    mean = np.sum(w * yr) / np.sum(w)
    r2 = 1 - np.sum(w * (yr - pred) ** 2) / np.sum(w * (yr - mean) ** 2)
    assert reg.score(Xr, yr, sample_weight=w) == pytest.approx(r2, rel=1e-12)


@pytest.mark.parametrize("classes", [2, 3])
def test_early_stopping_with_weights_follows_sklearn(classes):
    """scikit-learn's split (the same random state after the same initial draws; stratified
    for binary problems only, as scikit-learn does), the validation weights in each epoch's
    score, and the best epoch's weights restored at the end."""
    X, y = _classification(n=200, classes=classes)
    w = _weights(len(y))
    settings = {**SGD, "early_stopping": True, "validation_fraction": 0.2,
                "n_iter_no_change": 3, "max_iter": 40, "learning_rate_init": 0.2}
    ours = MLPClassifier(**settings).fit(X, y, sample_weight=w)
    theirs = SkClassifier(**settings).fit(X, y, sample_weight=w)
    assert ours.n_iter_ == theirs.n_iter_
    np.testing.assert_allclose(ours.validation_scores_, theirs.validation_scores_, rtol=1e-12)
    assert len(set(ours.validation_scores_)) > 2  # the scores moved: a real comparison
    _assert_same_params(ours, theirs, rtol=1e-9, atol=1e-12)
