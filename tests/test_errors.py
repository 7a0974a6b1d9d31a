"""Bad input: a clear error naming the argument, what was expected and what was received, on
every backend, with the model left exactly as it was."""

import math

import numpy as np
import pytest
from helpers import host

import nnx


def make(backend, **kwargs):
    return nnx.Sequential([nnx.Dense(2, 4, "tanh"), nnx.Dense(4, 3, "softmax")],
                          backend=backend, **kwargs)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(10, 2)), rng.integers(0, 3, size=10)


def unchanged(model, before):
    for got, want in zip(model.get_weights(), before):
        np.testing.assert_array_equal(got, want)


BAD_FIT = [
    ("X 1-D", lambda X, y: (X[:, 0], y), ValueError, r"X must be 2-D.*received 1-D shape \(10,\)"),
    ("X 3-D", lambda X, y: (X[None], y), ValueError, r"X must be 2-D.*received 3-D"),
    ("lengths", lambda X, y: (X, y[:7]), ValueError, r"X has 10 samples but y has 7"),
    ("empty", lambda X, y: (X[:0], y[:0]), ValueError, r"X is empty \(0 samples\)"),
    ("NaN in X", lambda X, y: (np.where(np.arange(10)[:, None] == 3, np.nan, X), y),
     ValueError, r"X contains NaN or inf"),
    ("inf in X", lambda X, y: (np.where(np.arange(10)[:, None] == 3, np.inf, X), y),
     ValueError, r"X contains NaN or inf"),
    ("NaN in y", lambda X, y: (X, np.where(np.arange(10) == 2, np.nan, y)), ValueError,
     r"y contains NaN or inf"),
    ("non-integer labels", lambda X, y: (X, y + 0.5), ValueError,
     r"y must hold integer class labels"),
    ("negative label", lambda X, y: (X, np.where(np.arange(10) == 0, -1, y)), ValueError,
     r"labels must be in \[0, 3\).*received min -1"),
    ("label too large", lambda X, y: (X, np.where(np.arange(10) == 0, 3, y)), ValueError,
     r"labels must be in \[0, 3\).*max 3"),
    ("wrong features", lambda X, y: (np.hstack([X, X]), y), ValueError,
     r"X has 4 features; the model expects 2"),
    ("strings", lambda X, y: (X.astype(str), y), TypeError,
     r"X must be numeric.*received dtype <U"),
    ("objects", lambda X, y: ([[1.0, "a"]] * 10, y), TypeError, r"X must be numeric"),
    ("ragged", lambda X, y: ([[1.0, 2.0], [1.0]] + [[0.0, 0.0]] * 8, y), TypeError,
     r"X must be a numeric array"),
    ("complex", lambda X, y: (X.astype(complex), y), TypeError, r"X must be numeric"),
    ("2-D labels", lambda X, y: (X, np.stack([y, y], 1)), ValueError,
     r"y must have shape \(n_samples,\) integer labels; received shape \(10, 2\)"),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c[0]) for c in BAD_FIT])
def test_bad_data_to_fit(backend, data, case):
    _, transform, error, message = case
    X, y = transform(*data)
    model = make(backend)
    before = model.get_weights()
    with pytest.raises(error, match=message):
        model.fit(X, y, epochs=2, lr=0.1)
    unchanged(model, before)
    assert model.epochs_trained == 0 and model.optimizer is None


def test_bad_data_in_the_models_own_backend(backend, data):
    X, y = data
    model = make(backend)
    before = model.get_weights()
    dtype = backend.xp.float32
    bad_X = backend.asarray(np.where(np.arange(10)[:, None] == 1, np.nan, X), dtype)
    with pytest.raises(ValueError, match="X contains NaN or inf"):
        model.fit(bad_X, backend.asarray(y), epochs=1)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\).*max 7"):
        # (0, 1, 2 and 7: four labels, not the three classes a model could learn as labels)
        model.fit(backend.asarray(X, dtype), backend.asarray(np.where(np.arange(10) == 0, 7, y)),
                  epochs=1)
    with pytest.raises(ValueError, match="X has 3 features"):
        model.predict(backend.asarray(np.ones((2, 3)), dtype))
    unchanged(model, before)


def test_finite_values_whose_sum_overflows_pass_and_one_nan_or_inf_does_not(backend):
    """The finiteness check sums first (a NaN or inf makes the sum non-finite) and tests
    element by element only when the sum is not finite: values near float32's maximum, whose
    sum overflows, are finite and pass; a single NaN or inf among them is caught."""
    from nnx._data import check_finite

    big = np.full((4, 3), 3e38)
    check_finite(backend.asarray(big, backend.xp.float32), "X", "test")  # sum is inf: exact test
    for bad in (np.nan, np.inf, -np.inf):
        for values in (big, np.ones((4, 3))):
            array = values.copy()
            array[2, 1] = bad
            with pytest.raises(ValueError, match="X contains NaN or inf"):
                check_finite(backend.asarray(array, backend.xp.float32), "X", "test")


@pytest.mark.parametrize("method", ["predict", "predict_proba"])
def test_bad_data_to_predict(backend, method):
    model = make(backend)
    with pytest.raises(ValueError, match=r"Sequential.predict.*X has 3 features; the model "
                                         r"expects 2"):
        getattr(model, method)(np.ones((4, 3)))
    with pytest.raises(ValueError, match="X must be 2-D"):
        getattr(model, method)(np.ones(2))
    with pytest.raises(ValueError, match="X contains NaN or inf"):
        getattr(model, method)(np.array([[np.nan, 1.0]]))
    with pytest.raises(TypeError, match="X must be numeric"):
        getattr(model, method)(np.array([["a", "b"]]))


BAD_HYPER = [
    ({"lr": 0.0}, ValueError, r"Sequential.fit: lr must be a finite number > 0; received lr=0.0"),
    ({"lr": -1}, ValueError, r"lr must be a finite number > 0; received lr=-1"),
    ({"lr": math.inf}, ValueError, r"lr must be a finite number > 0; received lr=inf"),
    ({"lr": math.nan}, ValueError, r"lr must be a finite number > 0; received lr=nan"),
    ({"lr": "fast"}, TypeError, r"lr must be a finite number > 0; received lr='fast'"),
    ({"lr": "0.1"}, TypeError, r"lr must be a finite number > 0; received lr='0.1'"),
    ({"lr": True}, TypeError, r"lr must be a finite number > 0; received lr=True"),
    ({"l2": True}, TypeError, r"l2 must be a finite number >= 0; received l2=True"),
    ({"validation_split": "0.2"}, TypeError,
         r"validation_split must be a finite number in \[0, 1\); received"),
    ({"epochs": True}, ValueError, r"epochs must be an integer >= 1; received epochs=True"),
    ({"shuffle": "yes"}, ValueError, r"shuffle must be True or False; received shuffle='yes'"),
    ({"callbacks": "early"}, ValueError,
         r"callbacks must be a list of nnx.Callback; received 'early'"),
    ({"callbacks": [nnx.EarlyStopping(monitor="bogus")]}, ValueError,
         r"monitor='bogus' is not among the epoch's figures"),
    ({"schedule": lambda e: -1.0}, ValueError,
         r"gave -1.0 at epoch 0; a schedule must return a finite number >= 0"),
    ({"schedule": lambda e: "x"}, ValueError, r"gave 'x' at epoch 0"),
    ({"schedule": lambda e: float("nan")}, ValueError, r"gave nan at epoch 0"),
    ({"epochs": 0}, ValueError, r"epochs must be an integer >= 1; received epochs=0"),
    ({"epochs": 2.5}, ValueError, r"epochs must be an integer >= 1; received epochs=2.5"),
    ({"batch_size": 0}, ValueError,
         r"batch_size must be an integer >= 1 or None; received batch_size=0"),
    ({"l2": -0.1}, ValueError, r"l2 must be a finite number >= 0; received l2=-0.1"),
    ({"optimizer": "rmsprop"}, ValueError, r"optimizer='rmsprop' is unknown; choose one of"),
    ({"optimizer": "sgd", "momentum": 1.5}, TypeError, r"unexpected keyword"),
    ({"validation_split": 1.0}, ValueError,
         r"validation_split must be a finite number in \[0, 1\); received validation_split=1.0"),
    ({"schedule": "cosine"}, ValueError, r"schedule='cosine' is unknown"),
    ({"early_stopping": "abc"}, TypeError,
     r"early_stopping must be a patience \(an integer >= 0\) or an nnx.EarlyStopping; "
     r"received 'abc'"),
    ({"early_stopping": True}, TypeError, r"early_stopping must be a patience"),
    ({"early_stopping": 2.7}, TypeError, r"early_stopping must be a patience"),
    ({"optimizer": nnx.SGD(lr=0.1), "lr": 0.9}, ValueError,
     r"optimizer=SGD\(lr=0.1.*was given with lr=0.9; set them on the optimizer itself"),
]


@pytest.mark.parametrize("kwargs,error,message", BAD_HYPER)
def test_bad_hyperparameters(backend, data, kwargs, error, message):
    X, y = data
    model = make(backend)
    before = model.get_weights()
    with pytest.raises(error, match=message):
        model.fit(X, y, **{"epochs": 1, **kwargs})
    unchanged(model, before)
    assert model.l2 == 0.0


@pytest.mark.parametrize("build,error,message", [
    (lambda: nnx.Dense(0, 3), ValueError, r"Dense: n_in must be an integer >= 1; received n_in=0"),
    (lambda: nnx.Dense(2, -1), ValueError, r"n_out must be an integer >= 1; received n_out=-1"),
    (lambda: nnx.Dense(2.5, 3), TypeError, r"n_in must be an integer >= 1; received n_in=2.5"),
    (lambda: nnx.Dense(2, 3, "swish"), ValueError, r"activation='swish' is unknown"),
    (lambda: nnx.Sequential([nnx.Dense(2, 3), nnx.Dense(4, 2)]), ValueError,
     r"layer sizes do not chain: layers\[0\] Dense\(2 -> 3.*gives 3 outputs but layers\[1\] "
     r"Dense\(4 -> 2.*expects 4 inputs"),
    (lambda: nnx.Sequential([]), ValueError, r"at least one layer"),
    (lambda: nnx.Sequential([nnx.Dense(2, 2, "tanh")], loss="cross_entropy"), ValueError,
     r"loss='cross_entropy' needs a softmax output layer; the last layer has activation='tanh'"),
    (lambda: nnx.Sequential([nnx.Dense(2, 2)], dtype="float16"), ValueError,
     r"dtype must be 'float32' or 'float64'; received dtype='float16'"),
    (lambda: nnx.Sequential([nnx.Dense(2, 2)], l2=-1), ValueError, r"l2 must be a finite number "
                                                                   r">= 0"),
    (lambda: nnx.StepDecay(every=2.5), ValueError, r"StepDecay: every must be an integer >= 1; "
                                                   r"received every=2.5"),
    (lambda: nnx.StepDecay(every=0.5), TypeError, r"StepDecay: every must be an integer >= 1; "
                                                  r"received every=0.5"),
    (lambda: nnx.SGD(lr="0.1"), TypeError,
         r"SGD: lr must be a finite number > 0; received lr='0.1'"),
    (lambda: nnx.SGD(lr=0.1, nesterov="yes"), ValueError, r"SGD: nesterov must be True or False"),
    (lambda: nnx.EarlyStopping(patience=2.5), ValueError, r"EarlyStopping: patience must be an "
                                                          r"integer >= 0; received patience=2.5"),
    (lambda: nnx.Sequential([nnx.Dense(2, 2)], seed=1.5), ValueError,
     r"Sequential: seed must be an integer >= 0 or None; received seed=1.5"),
    (lambda: nnx.Sequential(["dense"]), TypeError,
         r"layers\[0\] must be an nnx layer \(nnx.Dense\); received str"),
])
def test_bad_architecture(build, error, message):
    with pytest.raises(error, match=message):
        build()


def test_a_fit_that_raises_leaves_the_optimizer_as_it_was(backend, data):
    X, y = data
    model = make(backend)
    model.fit(X, y, epochs=2, lr=0.3, optimizer="momentum")
    optimizer = model.optimizer
    schedule = optimizer.schedule
    velocity = [host(v) for v in optimizer.velocity]
    with pytest.raises(ValueError, match="X contains NaN or inf"):
        model.fit(np.full_like(X, np.nan), y, lr=0.01, schedule="step")
    assert model.optimizer is optimizer and optimizer.lr == 0.3
    assert optimizer.schedule is schedule
    for got, want in zip(optimizer.velocity, velocity):
        np.testing.assert_array_equal(host(got), want)


def test_layers_built_elsewhere_are_refused_with_where_they_were_built():
    layer = nnx.Dense(2, 2, "softmax").build(nnx.get_backend("array_api_strict", "device1"))
    with pytest.raises(ValueError, match=r"layers\[0\] was built for array_api_strict on "
                                         r".*device1.*this model uses array_api_strict on "
                                         r".*CPU_DEVICE.*Pass unbuilt layers"):
        nnx.Sequential([layer], backend="array_api_strict")


def test_a_size_of_true_is_refused():
    with pytest.raises(TypeError, match=r"n_in must be an integer >= 1; received n_in=True"):
        nnx.Dense(True, 3)


@pytest.mark.parametrize("name,device,error,message", [
    ("numpy", "cuda:7", ValueError, r"device='cuda:7' is not a numpy device; numpy has only "
                                    r"'cpu'"),
    ("array_api_strict", "bogus", ValueError,
     r"device='bogus' is not an array_api_strict device; choose one of: .*device1"),
    ("torch", "bogus", ValueError, r"device='bogus' is not a usable torch device"),
    ("torch", "cuda:5", ValueError, r"device='cuda:5' is not a usable torch device"),
])
def test_a_device_the_backend_does_not_have_is_an_error(name, device, error, message):
    if name == "torch":
        torch = pytest.importorskip("torch")
        if device.startswith("cuda") and torch.cuda.device_count() > 5:
            pytest.skip("this machine has a sixth CUDA device")
    with pytest.raises(error, match=message):
        nnx.get_backend(name, device)


def test_float64_on_a_device_without_it():
    with pytest.raises(ValueError, match=r"dtype='float64' is not available on array_api_strict "
                                         r"device.*no_float64.*use dtype='float32'"):
        nnx.Sequential([nnx.Dense(2, 2)], dtype="float64", backend="array_api_strict",
                       device="no_float64")


def test_non_finite_loss_stops_names_the_epoch_and_rolls_back(backend, data):
    """A huge learning rate on a regression blows up; fit stops at the first non-finite loss,
    names that epoch and the fix, and leaves finite weights that give a finite loss."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(20, 2)) * 100
    y = rng.normal(size=(20, 1)) * 100
    model = nnx.Sequential([nnx.Dense(2, 8, "relu"), nnx.Dense(8, 1)], backend=backend)
    with pytest.raises(nnx.NonFiniteLossError,
                       match=r"training loss became (nan|inf) at epoch (\d+).*rolled back.*smaller "
                             r"learning rate") as info:
        model.fit(X, y, epochs=500, lr=10.0)
    assert isinstance(info.value, ValueError)
    epoch = int(info.value.args[0].split(" at epoch ")[1].split()[0])
    assert epoch >= 1
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())
    assert math.isfinite(model.loss(X, y))
    assert len(model.history) == epoch  # the epochs before the failure were recorded
    assert model.history["loss"][-1] == pytest.approx(model.loss(X, y), rel=1e-4)
    assert model.epochs_trained == epoch - 1


def test_non_finite_loss_on_the_first_epoch_leaves_the_model_unchanged(data):
    model = make("numpy")
    before = model.get_weights()
    X, y = data
    weights = model.get_weights()
    weights[2][0, 0] = 3e38  # finite float32, but the logits overflow to inf
    model.set_weights(weights)
    with pytest.raises(nnx.NonFiniteLossError, match="at epoch 0"):
        model.fit(X * 1e3, y, epochs=5, lr=0.1)
    np.testing.assert_array_equal(model.get_weights()[2], weights[2])
    assert model.epochs_trained == 0
    del before


def test_set_weights_is_all_or_nothing(backend):
    model = make(backend)
    before = model.get_weights()
    bad = [w.copy() for w in before]
    bad[3] = np.full(bad[3].shape, np.nan)
    with pytest.raises(ValueError, match=r"b contains NaN or inf"):
        model.set_weights(bad)
    unchanged(model, before)
    with pytest.raises(ValueError, match=r"expected 4 arrays"):
        model.set_weights(before[:3])
    assert np.array_equal(host(model.layers[0].W), before[0])
