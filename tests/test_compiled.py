"""``fit(..., compile=True)``: the compiled functional step (JAX) against the eager loop on JAX,
float64 — the same weights, history and optimizer state — and the clear refusal elsewhere."""

import numpy as np
import pytest

import nnx
from nnx.optimizers import StepDecay

jax = pytest.importorskip("jax")

RTOL = 1e-10
OPTIMIZERS = ["sgd", "momentum", "nesterov", "adam"]
EPOCHS = 12


@pytest.fixture(scope="module")
def moons():
    return nnx.datasets.make_moons(64, noise=0.2, seed=0)


def model(backend="jax", l2=0.01, out="softmax", n_out=2, width=5):
    layers = [nnx.Dense(2, width, "tanh"), nnx.Dense(width, n_out, out)]
    return nnx.Sequential(layers, dtype="float64", l2=l2, seed=3, backend=backend)


def assert_same(eager, compiled, h_eager=None, h_compiled=None):
    for a, b in zip(eager.get_weights(), compiled.get_weights()):
        np.testing.assert_allclose(b, a, rtol=RTOL, atol=1e-14)
    assert compiled.epochs_trained == eager.epochs_trained
    if h_eager is not None:
        assert h_compiled.keys() == h_eager.keys()
        for key in h_eager.keys():
            np.testing.assert_allclose(h_compiled[key], h_eager[key], rtol=RTOL, atol=1e-14,
                                       err_msg=key)
        assert h_compiled.epochs == h_eager.epochs


def fit_both(data, l2=0.01, width=5, **kwargs):
    X, y = data
    eager, compiled = model(l2=l2, width=width), model(l2=l2, width=width)
    h_eager = eager.fit(X, y, epochs=EPOCHS, verbose=False, **kwargs)
    h_compiled = compiled.fit(X, y, epochs=EPOCHS, verbose=False, compile=True, **kwargs)
    assert_same(eager, compiled, h_eager, h_compiled)
    return eager, compiled


@pytest.mark.parametrize("width", [5, 16])
@pytest.mark.parametrize("l2", [0.0, 0.01])
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_full_batch_in_one_compiled_loop_matches_eager(moons, optimizer, l2, width):
    # sync_every=50 > epochs: all 12 epochs in one fori_loop, figures back at the end.
    # Width 5 compiles without YNNPACK's products on the CPU, 16 as XLA does by default.
    from nnx.backends.jax import _is_tiny

    assert _is_tiny(model(width=width).parameters()) == (width < 8)
    fit_both(moons, l2=l2, width=width, lr=0.3, optimizer=optimizer, sync_every=50)


@pytest.mark.parametrize("batch_size", [None, 16])
def test_an_xla_that_refuses_the_tiny_network_option_falls_back(moons, monkeypatch,
                                                                 batch_size):
    """Where XLA no longer knows the option that turns YNNPACK off, the default compilation
    runs, and the option is not tried again."""
    import nnx.backends.jax as nj

    calls = []

    def refuse(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("INVALID_ARGUMENT: No such compile option: 'xla_cpu_...'")

    eager, compiled = model(), model()
    engine = nj._engine(nnx.compiled.step_spec(compiled, nnx.SGD(0.3)))
    monkeypatch.setattr(engine, "_window", (engine._window[0], refuse))
    monkeypatch.setattr(engine, "_batches", (engine._batches[0], refuse))
    monkeypatch.setattr(engine, "_tiny_ok", True)
    X, y = moons
    h_eager = eager.fit(X, y, epochs=3, lr=0.3, batch_size=batch_size, verbose=False)
    h_compiled = compiled.fit(X, y, epochs=3, lr=0.3, batch_size=batch_size, compile=True,
                              verbose=False)
    assert_same(eager, compiled, h_eager, h_compiled)
    assert calls == [1] and engine._tiny_ok is False


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_full_batch_each_epoch_with_a_schedule_matches_eager(moons, optimizer):
    fit_both(moons, lr=0.3, optimizer=optimizer, sync_every=1,
             schedule=StepDecay(every=4, factor=0.5))


def test_windows_that_do_not_divide_the_epochs(moons):
    fit_both(moons, lr=0.3, optimizer="adam", sync_every=5, schedule="exponential")


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_minibatches_match_eager_with_the_same_shuffle(moons, optimizer):
    eager, compiled = fit_both(moons, lr=0.3, optimizer=optimizer, batch_size=16)
    # The generator advanced the same way: the next draws agree too.
    assert eager.rng.integers(1 << 30) == compiled.rng.integers(1 << 30)


def test_minibatches_with_a_remainder_no_shuffle_and_a_schedule(moons):
    fit_both(moons, lr=0.3, optimizer="sgd", batch_size=24, shuffle=False,
             schedule=StepDecay(3, 0.5))


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_state_is_written_back_so_eager_and_compiled_fits_continue(moons, optimizer):
    X, y = moons
    eager, mixed = model(), model()
    eager.fit(X, y, epochs=3 * EPOCHS, lr=0.3, optimizer=optimizer, verbose=False)
    mixed.fit(X, y, epochs=EPOCHS, lr=0.3, optimizer=optimizer, sync_every=50, compile=True)
    opt = mixed.optimizer
    if optimizer == "adam":
        assert opt.t == EPOCHS and opt.m is not None
        assert all(isinstance(m, jax.Array) for m in opt.m + opt.v)
    else:
        assert opt.velocity is not None
    mixed.fit(X, y, epochs=EPOCHS, verbose=False)  # eager, from the compiled state
    mixed.fit(X, y, epochs=EPOCHS, sync_every=50, compile=True)
    assert_same(eager, mixed)
    if optimizer == "adam":
        assert mixed.optimizer.t == eager.optimizer.t == 3 * EPOCHS
        for a, b in zip(eager.optimizer.m + eager.optimizer.v,
                        mixed.optimizer.m + mixed.optimizer.v):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=RTOL, atol=1e-14)


@pytest.mark.parametrize("batch_size", [None, 16])
def test_validation_and_early_stopping(moons, batch_size):
    X, y = moons
    eager, compiled = fit_both((X[:48], y[:48]), lr=0.3, optimizer="adam",
                               batch_size=batch_size, validation_data=(X[48:], y[48:]),
                               early_stopping=nnx.EarlyStopping(patience=2, min_delta=1e9))
    assert "val_accuracy" in eager.history.keys()
    assert eager.history.stopped_epoch == compiled.history.stopped_epoch is not None


def test_callbacks_see_each_epoch_and_can_stop(moons):
    X, y = moons
    seen = []

    class Stop(nnx.Callback):
        def on_epoch_end(self, model, epoch, logs):
            seen.append((epoch, logs["loss"], model.epochs_trained))
            if epoch == 4:
                model.stop_training = True

    m = model()
    history = m.fit(X, y, epochs=EPOCHS, lr=0.3, callbacks=[Stop()], sync_every=50,
                    compile=True)
    assert [s[0] for s in seen] == list(range(5)) and len(history) == 5
    assert [s[2] for s in seen] == list(range(1, 6)) and history.stopped_epoch == 4


def test_binary_and_regression_heads(moons):
    X, y = moons
    for out, n_out, target in (("sigmoid", 1, y), ("identity", 1, X[:, 0] * X[:, 1])):
        eager, compiled = model(out=out, n_out=n_out), model(out=out, n_out=n_out)
        h1 = eager.fit(X, target, epochs=EPOCHS, lr=0.1, optimizer="momentum", sync_every=50)
        h2 = compiled.fit(X, target, epochs=EPOCHS, lr=0.1, optimizer="momentum",
                          sync_every=50, compile=True)
        assert_same(eager, compiled, h1, h2)


def test_a_diverging_fit_rolls_back_as_eager(moons):
    X, y = moons
    results = []
    for compile_ in (False, True):
        m = model(l2=0.0)
        with pytest.raises(nnx.NonFiniteLossError) as info:
            m.fit(X, y, epochs=EPOCHS, lr=1e306, sync_every=50, compile=compile_)
        results.append((m, str(info.value)))
    assert_same(results[0][0], results[1][0])
    assert results[0][1] == results[1][1]


def test_float64_leaves_jax_global_x64_switch_alone(moons):
    assert not jax.config.jax_enable_x64
    m = model()
    m.fit(*moons, epochs=3, compile=True)
    assert all(p.dtype == jax.numpy.float64 for p in m.parameters())
    assert not jax.config.jax_enable_x64


def test_backends_without_a_compiled_step_refuse_clearly(moons):
    m = model(backend="numpy")
    before = m.get_weights()
    with pytest.raises(nnx.InvalidParameterError,
                       match=r"compile=True needs a backend with a compiled step \(jax\); "
                             r"numpy has none: drop compile=True"):
        m.fit(*moons, epochs=2, compile=True)
    assert m.optimizer is None and m.epochs_trained == 0
    for a, b in zip(before, m.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_what_cannot_be_compiled_is_refused(moons):
    class MySGD(nnx.SGD):
        def step(self, xp, params, grads, decay):
            return params

    with pytest.raises(nnx.InvalidParameterError, match=r"compile=True supports nnx.SGD"):
        model().fit(*moons, epochs=2, optimizer=MySGD(lr=0.1), compile=True)
    with pytest.raises(nnx.InvalidParameterError, match=r"compile must be"):
        model().fit(*moons, epochs=2, compile="yes")
