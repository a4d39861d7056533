"""fastadam.keras optimizers inside Keras (torch backend): compile / fit / apply.

Every result is compared with Keras 3's own optimizer run side by side from the
same initial weights on the same batches (``shuffle=False``):

* float32: ``assert_allclose(rtol=1e-4, atol=1e-6)`` after 16 ``fit()`` steps;
* float64 (``keras.config.set_floatx("float64")``): 1e-9 relative to the largest
  weight (measured <= 1e-14).

Skipped without torch or keras; ``KERAS_BACKEND`` is set to ``torch`` before
keras is imported.  Tests needing another backend run in a subprocess.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import skips

keras = skips.keras_on_torch()

import torch  # noqa: E402

import fastadam.keras as FK  # noqa: E402
from fastadam._errors import BackendUnavailableError  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: (optimizer, arguments): every optimizer, and the options that change its kernel
FIT_CASES = [
    ("Adam", {}),
    ("Adam", dict(amsgrad=True, weight_decay=0.01)),
    ("AdamW", {}),
    ("RMSprop", {}),
    ("RMSprop", dict(momentum=0.9, centered=True)),
    ("Adagrad", dict(learning_rate=0.01)),
    ("SGD", {}),
    ("SGD", dict(momentum=0.9, nesterov=True)),
    ("Adadelta", dict(learning_rate=1.0)),
    ("Nadam", {}),
    ("Adamax", {}),
]
STEPS, BATCH = 16, 8


def case_id(case):
    name, kw = case
    return name + "".join(f"-{k}={v}" for k, v in kw.items())


@pytest.fixture
def floatx():
    """Set floatx and the default dtype policy (layers' variables) for one test."""
    old, old_policy = keras.config.floatx(), keras.config.dtype_policy()

    def set_(dtype):
        keras.config.set_floatx(dtype)
        keras.config.set_dtype_policy(dtype)
    yield set_
    keras.config.set_floatx(old)
    keras.config.set_dtype_policy(old_policy)


def data(dtype, n=STEPS * BATCH, d=12):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d)).astype(dtype)
    y = (rng.random((n, 1)) > 0.5).astype(dtype)
    return x, y


def seed_model(d=12, width=8):
    """The seed's model, smaller: Dense(relu) -> Dense(1, sigmoid)."""
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((d,)), keras.layers.Dense(width, activation="relu"),
                             keras.layers.Dense(1, activation="sigmoid")])


def fit_both(name, kw, dtype, loss="binary_crossentropy", model=seed_model, **fit_kw):
    """fit() with keras.optimizers.<name> and fastadam.keras.<name>; (ours, theirs)."""
    x, y = data(dtype)
    out = []
    for mod in (FK, keras.optimizers):
        m = model()
        opt = getattr(mod, name)(**kw)
        m.compile(loss=loss, optimizer=opt)
        m.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, **fit_kw)
        assert int(m.optimizer.iterations) == STEPS
        out.append([v.numpy() for v in m.weights])
    return out


def max_rel(ours, theirs):
    return max(float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))
               for a, b in zip(ours, theirs))


# -- what Keras sees ------------------------------------------------------------------

def test_is_a_keras_optimizer_and_a_fastadam_one():
    opt = FK.Adam(learning_rate=0.001)
    assert isinstance(opt, keras.optimizers.Optimizer)
    assert isinstance(opt, FK.Adam) and isinstance(opt, FK.Optimizer)
    assert keras.optimizers.get(opt) is opt
    assert keras.saving.get_registered_name(type(opt)) == "fastadam>Adam"


@pytest.mark.parametrize("name", ["Adam", "AdamW", "RMSprop", "Adagrad", "SGD", "Adadelta",
                                  "Nadam", "Adamax"])
def test_optimizer_variables_as_keras_makes_them(name):
    """Same variables (names, shapes, dtypes, initial values), in the same order."""
    kw = {"momentum": 0.9} if name in ("SGD", "RMSprop") else {}
    got, m = [], seed_model()
    for mod in (FK, keras.optimizers):
        opt = getattr(mod, name)(name="opt", **kw)
        opt.build(m.trainable_variables)
        got.append([(v.path, v.shape, v.dtype, v.numpy().tolist()) for v in opt.variables])
    if name == "Nadam":   # Keras' u_product is an unnamed "variable"; ours "opt/u_product"
        assert got[0][-1][0] == "opt/u_product" and got[1][-1][0].startswith("variable")
        got = [[v[1:] for v in vs] for vs in got]
    assert got[0] == got[1]


# -- fit() parity ---------------------------------------------------------------------

@pytest.mark.parametrize("case", FIT_CASES, ids=case_id)
def test_fit_float32(case):
    ours, theirs = fit_both(*case, "float32")
    for a, b in zip(ours, theirs):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("case", FIT_CASES, ids=case_id)
def test_fit_float64(case, floatx):
    floatx("float64")
    ours, theirs = fit_both(*case, "float64")
    assert all(a.dtype == np.float64 for a in ours)
    assert max_rel(ours, theirs) < 1e-9


def test_fit_changes_the_weights_and_the_loss_goes_down():
    x, y = data("float32", n=256)
    m = seed_model()
    m.compile(loss="binary_crossentropy", optimizer=FK.Adam(learning_rate=0.01),
              metrics=["accuracy"])
    w0 = [v.numpy().copy() for v in m.weights]
    hist = m.fit(x, y, batch_size=32, epochs=5, shuffle=False, verbose=0)
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    assert all(not np.array_equal(a, v.numpy()) for a, v in zip(w0, m.weights))


def test_train_on_batch(floatx):
    floatx("float64")
    x, y = data("float64")
    out = []
    for mod in (FK, keras.optimizers):
        m = seed_model()
        m.compile(loss="binary_crossentropy", optimizer=mod.Nadam(learning_rate=0.01))
        for k in range(4):
            m.train_on_batch(x[k * BATCH:(k + 1) * BATCH], y[k * BATCH:(k + 1) * BATCH])
        out.append([v.numpy() for v in m.weights])
    assert max_rel(*out) < 1e-12


# -- custom loops: apply / apply_gradients on Keras variables -------------------------

@pytest.mark.parametrize("how", ["apply", "apply_gradients", "build_then_apply"])
@pytest.mark.parametrize("name", ["Adam", "RMSprop", "Adadelta"])
def test_custom_loop(name, how, floatx):
    floatx("float64")
    rng = np.random.default_rng(1)
    shapes = [(5, 3), (3,), (1,)]
    init = [rng.standard_normal(s) for s in shapes]
    grads = [[torch.from_numpy(rng.standard_normal(s)) for s in shapes] for _ in range(6)]
    out = []
    for mod in (FK, keras.optimizers):
        vs = [keras.Variable(a.copy()) for a in init]
        opt = getattr(mod, name)(learning_rate=0.05)
        if how == "build_then_apply":
            opt.build(vs)
        for gs in grads:
            gs = [g.clone() for g in gs]
            if how == "apply":
                opt.apply(gs, vs)
            elif how == "apply_gradients":
                assert opt.apply_gradients(zip(gs, vs)) is opt.iterations
            else:
                opt.apply(gs)
        assert int(opt.iterations) == 6
        out.append([v.numpy() for v in vs])
    assert max_rel(*out) < 1e-12


def test_custom_loop_with_autograd():
    """A loop the Keras-on-torch way: torch autograd, then optimizer.apply."""
    m = seed_model()
    x, y = data("float32", n=32)
    opt = FK.Adam(learning_rate=0.01)
    loss_fn = keras.losses.BinaryCrossentropy()
    losses = []
    for _ in range(20):
        m.zero_grad()
        loss = loss_fn(torch.from_numpy(y), m(torch.from_numpy(x)))
        loss.backward()
        with torch.no_grad():
            opt.apply([v.value.grad for v in m.trainable_variables], m.trainable_variables)
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


def test_get_slot_is_the_keras_state_variable():
    v = keras.Variable(np.ones(3, dtype="float32"))
    opt = FK.Adam(learning_rate=0.1)
    opt.apply([torch.ones(3)], [v])
    m = opt.get_slot(v, "momentum")
    assert isinstance(m, keras.Variable) and any(m is w for w in opt.variables)
    np.testing.assert_allclose(m.numpy(), 0.1 * np.ones(3), rtol=1e-6)


def test_none_gradient_is_skipped_with_keras_warning():
    a, b = keras.Variable(np.ones(2)), keras.Variable(np.ones(2))
    opt = FK.SGD(learning_rate=0.5)
    with pytest.warns(UserWarning, match="Gradients do not exist"):
        opt.apply([None, torch.ones(2, dtype=torch.float64)], [a, b])
    np.testing.assert_array_equal(a.numpy(), [1, 1])
    np.testing.assert_array_equal(b.numpy(), [0.5, 0.5])


@pytest.mark.parametrize("bad, exc, match", [
    (lambda: torch.ones(3), ValueError, r"grads\[1\] has shape"),
    (lambda: "nope", TypeError, r"grads\[1\] must be"),
    (lambda: torch.ones(2, 2), ValueError, r"grads\[1\] has shape"),
])
def test_bad_gradient_changes_nothing(bad, exc, match):
    a, b = keras.Variable(np.ones(2)), keras.Variable(np.ones((2,)))
    opt = FK.Adam(learning_rate=0.1)
    opt.apply([torch.ones(2, dtype=torch.float64)] * 2, [a, b])
    before = [v.numpy().copy() for v in [a, b] + opt.variables]
    with pytest.raises(exc, match=match):
        opt.apply([torch.ones(2, dtype=torch.float64), bad()], [a, b])
    after = [v.numpy() for v in [a, b] + opt.variables]
    assert all(np.array_equal(x, y) for x, y in zip(before, after))
    assert int(opt.iterations) == 1


def test_unknown_variable_is_refused():
    a, b = keras.Variable(np.ones(2)), keras.Variable(np.ones(2))
    opt = FK.Adam()
    opt.apply([torch.ones(2, dtype=torch.float64)], [a])
    with pytest.raises(ValueError, match="Unknown variable"):
        opt.apply([torch.ones(2, dtype=torch.float64)], [b])


def test_numpy_arrays_still_take_the_numpy_path():
    w = np.ones(4)
    opt = FK.SGD(learning_rate=0.5)
    opt.apply_gradients([(np.ones(4), w)])
    np.testing.assert_array_equal(w, 0.5)
    assert int(opt.iterations) == 1
    with pytest.raises(TypeError, match=r"variables\[0\] must be a keras.Variable"):
        opt.apply([torch.ones(4)], [torch.ones(4)])


# -- other backends and import hygiene (fresh processes) ------------------------------

def run_python(code, backend="torch", timeout=120):
    env = dict(os.environ, KERAS_BACKEND=backend)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, timeout=timeout, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


@pytest.mark.parametrize("backend", ["jax", "tensorflow", "numpy"])
def test_refused_on_another_backend(backend, monkeypatch):
    """The refusal itself (Keras' backend name patched: JAX and TensorFlow are not
    installed here); the real numpy backend runs in the next test where it can."""
    m = seed_model()
    opt = FK.Adam(learning_rate=0.001)
    m.compile(loss="mse", optimizer=opt)
    monkeypatch.setattr(keras.backend, "backend", lambda: backend)
    before = [v.numpy().copy() for v in m.weights]
    for call in (lambda: opt.build(m.trainable_variables),
                 lambda: opt.apply([torch.ones(v.shape) for v in m.trainable_variables],
                                   m.trainable_variables)):
        with pytest.raises(BackendUnavailableError) as e:
            call()
        msg = str(e.value)
        assert repr(backend) in msg and "KERAS_BACKEND=torch" in msg
        assert "keras.optimizers.Adam" in msg and "NumPy arrays" in msg
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(before, m.weights))
    assert not opt.built


@pytest.mark.skipif(importlib.util.find_spec("scipy") is None,
                    reason="Keras' numpy backend needs scipy")
def test_refused_on_the_numpy_backend_with_a_clear_error():
    out = run_python("""
        import numpy as np, keras
        import fastadam.keras as FK
        from fastadam._errors import BackendUnavailableError
        assert keras.backend.backend() == "numpy"
        m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        opt = FK.Adam(learning_rate=0.001)
        m.compile(loss="mse", optimizer=opt)          # Keras calls nothing of ours here
        for call in (lambda: opt.build(m.trainable_variables),
                     lambda: opt.apply([np.ones((3, 2)), np.ones(2)], m.trainable_variables)):
            try:
                call()
            except BackendUnavailableError as e:
                print("refused:", e)
            else:
                raise AssertionError("not refused")
        w = np.ones(3)                                # NumPy arrays: as ever
        opt2 = FK.SGD(learning_rate=0.5)
        opt2.apply_gradients([(np.ones(3), w)])
        assert np.all(w == 0.5)
        """, backend="numpy")
    assert out.count("refused:") == 2
    assert "'numpy'" in out and "KERAS_BACKEND=torch" in out and "keras.optimizers.Adam" in out


def test_import_order_and_no_keras_without_the_user():
    out = run_python("""
        import sys
        import fastadam, fastadam.keras as FK
        assert not any(m.split(".")[0] in ("keras", "torch") for m in sys.modules)
        assert type(FK.Adam()) is FK.Adam             # NumPy optimizer, no Keras
        import keras                                  # the user imports Keras later
        opt = FK.Adam()
        assert isinstance(opt, keras.optimizers.Optimizer)
        assert keras.saving.get_registered_object("fastadam>Adam") is type(opt)
        print("ok")
        """)
    assert "ok" in out


# -- the flat-buffer packs (small variables share one buffer and one kernel call) -----

@pytest.mark.parametrize("pack_max", [0, 64, 1 << 30], ids=["no-packs", "some", "all"])
@pytest.mark.parametrize("name", ["Adam", "RMSprop", "Nadam"])
def test_packs_give_the_same_weights(name, pack_max, floatx, monkeypatch):
    from fastadam.keras import _torch_views
    monkeypatch.setattr(_torch_views, "PACK_MAX", pack_max)
    floatx("float64")
    kw = {"momentum": 0.9} if name == "RMSprop" else {}
    ours, theirs = fit_both(name, kw, "float64")
    assert max_rel(ours, theirs) < 1e-12


def test_small_variables_share_one_buffer_and_one_kernel_call(monkeypatch):
    from fastadam.kernels import cpu
    from fastadam.keras import _torch_views
    monkeypatch.setattr(_torch_views, "PACK_MAX", 50)    # the kernel (12 x 8) stays apart
    calls = []
    real = cpu.run
    monkeypatch.setattr(cpu, "run", lambda name, arrays, scal: (
        calls.append(arrays[0].size), real(name, arrays, scal)))
    m = seed_model()
    opt = FK.Adam()
    m.compile(loss="binary_crossentropy", optimizer=opt)
    x, y = data("float32", n=2 * BATCH)
    m.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    assert sorted(calls) == [8 + 8 + 1, 8 + 8 + 1, 96, 96]      # 2 steps, 2 calls each
    small = [v for v in m.trainable_variables if v.value.numel() <= 50]
    ptrs = sorted((v.value.data_ptr(), v.value.numel() * 4) for v in small)
    assert all(a + n == b for (a, n), (b, _) in zip(ptrs, ptrs[1:]))   # contiguous
    # and so is their state; saving / assigning still works through the views
    w = [v.numpy().copy() for v in m.weights]
    m.set_weights([a + 1 for a in w])
    np.testing.assert_array_equal(m.weights[1].numpy(), w[1] + 1)


def test_a_call_with_a_missing_gradient_keeps_every_value(floatx):
    """Packs re-form when the set of variables changes (a None gradient): the
    values and the state move with the variables."""
    floatx("float64")
    rng = np.random.default_rng(3)
    shapes = [(4,), (3,), (2, 2)]
    init = [rng.standard_normal(s) for s in shapes]
    steps = [[rng.standard_normal(s) for s in shapes] for _ in range(6)]
    out = []
    for mod in (FK, keras.optimizers):
        vs = [keras.Variable(a.copy()) for a in init]
        opt = mod.Adam(learning_rate=0.1)
        for k, gs in enumerate(steps):
            gs = [None if (j == 0 and k in (2, 3)) else torch.from_numpy(g.copy())
                  for j, g in enumerate(gs)]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                opt.apply(gs, vs)
        out.append([v.numpy() for v in vs])
    assert max_rel(*out) < 1e-12


def test_kernels_follow_torch_thread_count():
    """As Keras' torch ops (and fastadam.torch): torch.set_num_threads(1) -> one thread."""
    import numba
    from fastadam.keras import _torch_views
    old = torch.get_num_threads()
    v = keras.Variable(np.ones(3, dtype="float32"))
    opt = FK.Adam()
    try:
        opt.apply([torch.ones(3)], [v])
        torch.set_num_threads(1)
        opt.apply([torch.ones(3)], [v])
        assert numba.get_num_threads() == 1
    finally:
        torch.set_num_threads(old)
        _torch_views.follow_torch_threads()


def test_apply_without_variables_before_build():
    opt = FK.Adam()
    opt.apply([])                                   # no gradients: a no-op, as in Keras
    with pytest.raises(ValueError, match="must already be built"):
        opt.apply([torch.ones(2)])
    assert int(opt.iterations) == 0
