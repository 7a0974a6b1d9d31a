"""Optimizers against hand-computed steps, schedules, minibatches, validation, early stopping
and callbacks, on every backend."""

import numpy as np
import pytest
from helpers import assert_on_backend, available_cpu_backends, host

import nnx


def regression_net(backend, dtype="float64", seed=0):
    return nnx.Sequential([nnx.Dense(3, 2)], dtype=dtype, seed=seed, backend=backend)


@pytest.fixture
def linear_data():
    rng = np.random.default_rng(5)
    return rng.normal(size=(6, 3)), rng.normal(size=(6, 2))


def grads_by_hand(W, b, X, Y):
    """Gradient of mean((X @ W + b - Y)**2) by hand."""
    d = 2 * (X @ W + b - Y) / Y.size
    return X.T @ d, d.sum(axis=0)


@pytest.mark.parametrize("l2", [0.0, 0.05])
@pytest.mark.parametrize("kind", ["sgd", "momentum", "nesterov", "adam"])
def test_optimizer_steps_match_hand_computed_updates(backend, float64, linear_data, kind, l2):
    """Three steps, as two fits (the optimizer's state carries over), against the update
    rules by hand; with L2 the weights (not the bias) get ``l2 * W`` added to their gradient."""
    X, Y = linear_data
    model = regression_net(backend)
    W, b = model.get_weights()
    lr = 0.1
    optimizer = {"sgd": nnx.SGD(lr), "momentum": nnx.SGD(lr, momentum=0.9),
                 "nesterov": nnx.SGD(lr, momentum=0.9, nesterov=True),
                 "adam": nnx.Adam(lr, beta1=0.8, beta2=0.9, eps=1e-7)}[kind]
    model.fit(X, Y, epochs=2, optimizer=optimizer, l2=l2)
    model.fit(X, Y, epochs=1)
    params, state = [W, b], [np.zeros_like(W), np.zeros_like(b)]
    second = [np.zeros_like(W), np.zeros_like(b)]
    for t in range(1, 4):
        gW, gb = grads_by_hand(*params, X, Y)
        grads = [gW + l2 * params[0], gb]
        for i, g in enumerate(grads):
            if kind == "sgd":
                params[i] = params[i] - lr * g
            elif kind in ("momentum", "nesterov"):
                state[i] = 0.9 * state[i] - lr * g
                params[i] = params[i] + (0.9 * state[i] - lr * g if kind == "nesterov"
                                         else state[i])
            else:
                state[i] = 0.8 * state[i] + 0.2 * g
                second[i] = 0.9 * second[i] + 0.1 * g * g
                m_hat, v_hat = state[i] / (1 - 0.8**t), second[i] / (1 - 0.9**t)
                params[i] = params[i] - lr * m_hat / (np.sqrt(v_hat) + 1e-7)
    for got, want in zip(model.get_weights(), params):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    for p in model.parameters():
        assert_on_backend(p, backend, "float64")


@pytest.mark.parametrize("schedule,expected", [
    (nnx.StepDecay(every=2, factor=0.5), [1, 1, 0.5, 0.5, 0.25]),
    (nnx.ExponentialDecay(rate=0.5, every=2), [1, 0.5**0.5, 0.5, 0.5**1.5, 0.25]),
    (nnx.InverseTimeDecay(rate=1.0), [1, 1 / 2, 1 / 3, 1 / 4, 1 / 5]),
])
def test_schedules(schedule, expected):
    assert [schedule(e) for e in range(5)] == pytest.approx(expected)


def test_schedule_scales_each_epochs_step(backend, float64, linear_data):
    X, Y = linear_data
    model = regression_net(backend)
    W, b = model.get_weights()
    model.fit(X, Y, epochs=3, lr=0.1, schedule=nnx.StepDecay(every=1, factor=0.5))
    for epoch in range(3):
        gW, gb = grads_by_hand(W, b, X, Y)
        W, b = W - 0.1 * 0.5**epoch * gW, b - 0.1 * 0.5**epoch * gb
    np.testing.assert_allclose(model.get_weights()[0], W, rtol=1e-12)


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_minibatch_training_converges_on_the_spiral(backend, optimizer):
    X, y = nnx.datasets.make_spiral(60, 3, seed=0)
    model = nnx.Sequential([nnx.Dense(2, 32, "relu"), nnx.Dense(32, 3, "softmax")], seed=0,
                           backend=backend)
    lr = {"sgd": 0.5, "momentum": 0.1, "adam": 0.02}[optimizer]
    history = model.fit(X, y, epochs=120, lr=lr, batch_size=32, optimizer=optimizer)
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert model.accuracy(X, y) > 0.85
    assert history["accuracy"][-1] > 0.8


def test_identical_minibatch_histories_across_backends_float64():
    X, y = nnx.datasets.make_moons(90, noise=0.25, seed=3)
    runs = {}
    for backend in available_cpu_backends():
        model = nnx.Sequential([nnx.Dense(2, 8, "tanh"), nnx.Dense(8, 2, "softmax")],
                               dtype="float64", seed=11, backend=backend)
        history = model.fit(X, y, epochs=15, lr=0.05, batch_size=16, optimizer="adam",
                            validation_split=0.2)
        runs[f"{backend.name}:{backend.device}"] = (history, host(model.predict_proba(X)))
    assert len(runs) >= 3
    ref_history, ref_probs = next(iter(runs.values()))
    for name, (history, probs) in runs.items():
        assert history.keys() == ref_history.keys() == {"loss", "accuracy", "val_loss",
                                                        "val_accuracy"}
        for key in history.keys():
            np.testing.assert_allclose(history[key], ref_history[key], rtol=1e-10, err_msg=name)
        np.testing.assert_allclose(probs, ref_probs, atol=1e-8, err_msg=name)


def test_minibatch_epoch_loss_is_the_sample_weighted_mean():
    """With one epoch of SGD, the recorded loss is the mean of the batches' losses as they
    were trained, weighted by batch size (the last batch is smaller)."""
    X, y = nnx.datasets.make_moons(50, seed=1)
    model = nnx.Sequential([nnx.Dense(2, 4, "tanh"), nnx.Dense(4, 2, "softmax")],
                           dtype="float64", seed=2)
    twin = nnx.Sequential([nnx.Dense(2, 4, "tanh"), nnx.Dense(4, 2, "softmax")],
                          dtype="float64", seed=2)
    history = model.fit(X, y, epochs=1, lr=0.3, batch_size=20, shuffle=False)
    losses = []
    for start in range(0, 50, 20):
        rows = slice(start, start + 20)
        losses.append(twin.loss(X[rows], y[rows]) * len(X[rows]))
        twin.fit(X[rows], y[rows], epochs=1, lr=0.3)
    assert history["loss"][0] == pytest.approx(sum(losses) / 50, rel=1e-12)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("output", [(2, "softmax"), (1, "sigmoid")])
def test_shuffled_minibatches_are_the_generators_permutation_in_batches(
        backend, float64, monkeypatch, weighted, output):
    """Shuffled, the batches are the rows of one permutation from the model's generator per
    epoch, cut in order into batches, whatever the gathering block (here a block of 2
    batches of 6 rows, and 50 rows: the last block and the last batch are short). A softmax
    block makes its one-hot targets from its gathered labels; a sigmoid's targets are its
    labels, gathered."""
    monkeypatch.setattr(nnx.training, "GATHER_BYTES", 2 * 6 * 2 * 8)  # 2 batches of 2 float64
    X, y = nnx.datasets.make_moons(50, seed=3)
    w = np.random.default_rng(4).uniform(0.5, 2, size=50) if weighted else None

    def net():
        return nnx.Sequential([nnx.Dense(2, 4, "tanh"), nnx.Dense(4, *output)],
                              dtype="float64", seed=2, backend=backend)

    model, twin = net(), net()
    history = model.fit(X, y, epochs=2, lr=0.3, batch_size=6, sample_weight=w)
    twin.set_optimizer("sgd", lr=0.3)
    rng = twin.rng
    for _ in range(2):
        order = rng.permutation(50)
        right = np.zeros(50)  # the last epoch's hits: each batch's predictions before its step
        for start in range(0, 50, 6):
            rows = order[start:start + 6]
            right[rows] = host(twin.predict(X[rows])).reshape(-1) == y[rows]
            Xb, Yb = twin.encode(X[rows], y[rows])
            if weighted:
                wb = twin.backend.asarray(w[rows][:, None] / w[rows].sum(), dtype=twin.dtype)
                twin.train_step(Xb, Yb, weight=wb)
            else:
                twin.train_step(Xb, Yb)
    for a, b in zip(model.get_weights(), twin.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    weights = np.ones(50) if w is None else w
    assert history["accuracy"][-1] == pytest.approx((right * weights).sum() / weights.sum(),
                                                    rel=1e-12)


def test_validation_data_and_history(backend):
    X, y = nnx.datasets.make_moons(120, seed=0)
    Xv, yv = nnx.datasets.make_moons(60, seed=1)
    model = nnx.Sequential([nnx.Dense(2, 6, "tanh"), nnx.Dense(6, 2, "softmax")],
                           backend=backend)
    history = model.fit(X, y, epochs=20, lr=0.5, validation_data=(Xv, yv))
    assert len(history) == 20 and history.epochs == list(range(20))
    assert history["val_loss"][-1] == pytest.approx(model.loss(Xv, yv), rel=1e-4)
    assert history["val_accuracy"][-1] == pytest.approx(model.accuracy(Xv, yv))
    assert model.history is history


def test_accuracies_are_exact_fractions_in_float32(backend):
    """Counts are exact in float32; a float32 quotient is not (0.965 would read 0.9649999737)."""
    X, y = nnx.datasets.make_moons(200, seed=0)
    Xv, yv = nnx.datasets.make_moons(60, seed=1)
    model = nnx.Sequential([nnx.Dense(2, 3, "tanh"), nnx.Dense(3, 2, "softmax")],
                           backend=backend, dtype="float32")
    history = model.fit(X, y, epochs=30, lr=0.5, validation_data=(Xv, yv), batch_size=64)
    predicted = host(model.predict(X))
    assert model.accuracy(X, y) == np.count_nonzero(predicted == y) / 200
    assert model.evaluate(Xv, yv)["accuracy"] == history["val_accuracy"][-1]
    for key, n in (("accuracy", 200), ("val_accuracy", 60)):
        for value in history[key]:
            assert value * n == round(value * n) and value == round(value * n) / n


def test_early_stopping_restores_the_best_weights(backend):
    """Noisy labels and a big network overfit: validation loss turns up, training stops after
    `patience` epochs without improvement, and the best epoch's weights are put back."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 2))
    y = (X[:, 0] + 0.8 * rng.normal(size=60) > 0).astype(int)
    Xv = rng.normal(size=(200, 2))
    yv = (Xv[:, 0] > 0).astype(int)
    model = nnx.Sequential([nnx.Dense(2, 64, "tanh"), nnx.Dense(64, 64, "tanh"),
                            nnx.Dense(64, 2, "softmax")], seed=0, backend=backend)
    seen = []

    class Record(nnx.Callback):
        def on_epoch_end(self, model, epoch, logs):
            seen.append((epoch, model.get_weights()))

    stopper = nnx.EarlyStopping(patience=5)
    history = model.fit(X, y, epochs=400, lr=0.01, optimizer="adam", validation_data=(Xv, yv),
                        callbacks=[stopper, Record()])
    best = int(np.argmin(history["val_loss"]))
    assert history.best_epoch == best
    assert history.stopped_epoch == best + 6 == len(history) - 1 < 399
    for got, want in zip(model.get_weights(), seen[best][1]):
        np.testing.assert_array_equal(got, want)
    assert model.loss(Xv, yv) == pytest.approx(min(history["val_loss"]), rel=1e-4)


def test_early_stopping_shortcut_and_monitor_fallback():
    X, y = nnx.datasets.make_moons(40, seed=0)
    model = nnx.Sequential([nnx.Dense(2, 3, "tanh"), nnx.Dense(3, 2, "softmax")],
                           dtype="float64")
    history = model.fit(X, y, epochs=30, lr=1e-3, early_stopping=2)
    # a small learning rate lowers the training loss every epoch: no stop
    assert len(history) == 30
    with pytest.raises(ValueError, match=r"monitor='val_acc' is not among the epoch's figures"):
        model.fit(X, y, epochs=2, callbacks=[nnx.EarlyStopping(monitor="val_acc")])


def test_callback_can_stop_training():
    X, y = nnx.datasets.make_moons(40, seed=0)
    model = nnx.Sequential([nnx.Dense(2, 3, "tanh"), nnx.Dense(3, 2, "softmax")])

    class StopAtThree(nnx.Callback):
        def on_epoch_end(self, model, epoch, logs):
            if epoch == 3:
                model.stop_training = True

    history = model.fit(X, y, epochs=50, callbacks=[StopAtThree()])
    assert len(history) == 4 and model.epochs_trained == 4 and history.stopped_epoch == 3


def test_sync_every_keeps_every_epochs_figures():
    X, y = nnx.datasets.make_moons(40, seed=0)
    a = nnx.Sequential([nnx.Dense(2, 3, "tanh"), nnx.Dense(3, 2, "softmax")], dtype="float64")
    b = nnx.Sequential([nnx.Dense(2, 3, "tanh"), nnx.Dense(3, 2, "softmax")], dtype="float64")
    ha = a.fit(X, y, epochs=23, lr=0.5)
    hb = b.fit(X, y, epochs=23, lr=0.5, sync_every=10)
    assert ha["loss"] == hb["loss"] and len(hb) == 23


def test_progress_bar_when_verbose(capsys):
    X, y = nnx.datasets.make_moons(40, seed=0)
    model = nnx.Sequential([nnx.Dense(2, 3, "tanh"), nnx.Dense(3, 2, "softmax")])
    model.fit(X, y, epochs=5, verbose=True)
    err = capsys.readouterr().err
    assert "5/5" in err and "loss=" in err
    model.fit(X, y, epochs=5, verbose=False)
    assert capsys.readouterr().err == ""


def test_host_reads_are_per_epoch_not_per_step(monkeypatch):
    """On an accelerator (array_api_strict's device1) a minibatch fit reads the device the
    same number of times whatever the number of steps per epoch: the per-step losses and
    counts stay on the device until the epoch's one transfer."""
    import array_api_strict

    Array = type(array_api_strict.asarray(1.0))
    reads = []

    def counting(name):
        original = getattr(Array, name)

        def wrapper(self, *args, **kwargs):
            if name != "to_device" or "CPU_DEVICE" in str(args[0] if args else kwargs):
                reads.append(name)
            return original(self, *args, **kwargs)
        return wrapper

    for name in ("__float__", "__bool__", "__int__", "__index__", "__array__", "to_device",
                 "__dlpack__"):
        monkeypatch.setattr(Array, name, counting(name))

    X, y = nnx.datasets.make_moons(120, seed=0)
    counts = {}
    for batch_size in (120, 40, 8):  # 1, 3 and 15 steps per epoch
        model = nnx.Sequential([nnx.Dense(2, 5, "tanh"), nnx.Dense(5, 2, "softmax")],
                               backend="array_api_strict", device="device1")
        reads.clear()
        model.fit(X, y, epochs=4, batch_size=batch_size, lr=0.1, verbose=False)
        counts[batch_size] = len(reads)
    assert counts[120] == counts[40] == counts[8], counts
    assert counts[8] <= 4 + 8, counts  # about one read per epoch, plus the checks at the start
