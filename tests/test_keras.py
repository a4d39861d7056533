"""fastadam.keras without Keras: closed forms, backends against each other, flat path, bad input.

Parity with Keras 3 itself is in ``test_keras_parity.py`` (skipped without keras).
``KERAS_CASES`` is the table of optimizer x option families both modules run over.
"""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import numpy as np
import pytest

import fastadam
import fastadam.keras as FK

# (class name, constructor kwargs): every optimizer and its option families.
KERAS_CASES = [
    ("Adam", {}),
    ("Adam", dict(learning_rate=0.01, beta_1=0.8, beta_2=0.99, epsilon=1e-8)),
    ("Adam", dict(amsgrad=True)),
    ("Adam", dict(learning_rate=0.01, epsilon=0.1)),
    ("Adam", dict(learning_rate=0.01, weight_decay=0.1)),
    ("Adam", dict(clipnorm=0.5)),
    ("Adam", dict(clipvalue=0.3)),
    ("Adam", dict(global_clipnorm=0.5)),
    ("Adam", dict(loss_scale_factor=128.0)),
    ("SGD", dict(loss_scale_factor=32.0, clipvalue=0.01)),   # unscaled once, then clipped
    ("AdamW", {}),
    ("AdamW", dict(learning_rate=0.01, weight_decay=0.05, amsgrad=True)),
    ("RMSprop", {}),
    ("RMSprop", dict(momentum=0.9)),
    ("RMSprop", dict(centered=True)),
    ("RMSprop", dict(momentum=0.9, centered=True, rho=0.8, epsilon=0.1)),
    ("RMSprop", dict(weight_decay=0.1, clipvalue=0.3)),
    ("Adagrad", {}),
    ("Adagrad", dict(learning_rate=0.05, initial_accumulator_value=0.5, epsilon=0.1)),
    ("Adagrad", dict(weight_decay=0.1, clipnorm=0.5)),
    ("SGD", {}),
    ("SGD", dict(momentum=0.9)),
    ("SGD", dict(momentum=0.9, nesterov=True)),
    ("SGD", dict(momentum=0.5, weight_decay=0.1, global_clipnorm=0.5)),
    ("Adadelta", {}),
    ("Adadelta", dict(learning_rate=1.0, rho=0.9, epsilon=1e-6)),
    ("Adadelta", dict(learning_rate=1.0, weight_decay=0.1, clipvalue=0.3)),
    ("Nadam", {}),
    ("Nadam", dict(learning_rate=0.01, weight_decay=0.1)),
    ("Nadam", dict(clipnorm=0.5, epsilon=0.1)),
    ("Adamax", {}),
    ("Adamax", dict(learning_rate=0.01, weight_decay=0.1)),
    ("Adamax", dict(clipvalue=0.3, epsilon=0.1)),
]

SHAPES = [(3, 4), (5,), (2, 3, 2), (1,)]


def case_id(case):
    name, kw = case
    return name + ("-" + "-".join(f"{k}={v}" for k, v in kw.items()) if kw else "")


def problem(dtype, steps, seed=0, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(steps)]
    return init, grads


def run_fastadam(name, kw, dtype, steps, backend="auto", flat=False, seed=0):
    """Run ``steps`` steps of fastadam.keras.<name>; return the final variables."""
    init, grads = problem(dtype, steps, seed)
    opt = getattr(FK, name)(backend=backend, **kw)
    if flat:
        fp = fastadam.FlatParams([a.copy() for a in init])
        for gs in grads:
            fp.set_grads(gs)
            opt.apply_gradients(zip(fp.grads, fp.params))
        return [np.array(v) for v in fp.params]
    vs = [a.copy() for a in init]
    for gs in grads:
        opt.apply_gradients(zip(gs, vs))
    return vs


def max_rel(a_list, b_list):
    return max(float(np.max(np.abs(a.astype(np.float64) - b)) / max(np.max(np.abs(b)), 1e-300))
               for a, b in zip(a_list, b_list))


# --- the seed's snippet and closed forms -------------------------------------------------

def adam_constant_grad(p0, g, lr_of_step, steps, b1, b2, eps):
    """Keras Adam under a constant gradient, by hand: m_t = (1-b1^t) g, v_t = (1-b2^t) g^2."""
    p = p0.astype(np.float64).copy()
    for k in range(steps):
        t = k + 1
        alpha = lr_of_step(k) * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        m = (1 - b1 ** t) * g
        v = (1 - b2 ** t) * g * g
        p = p - alpha * m / (np.sqrt(v) + eps)
    return p


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_seed_snippet(backend):
    opt = FK.Adam(learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-8, decay=0.0,
                  backend=backend)
    w = np.linspace(-1, 1, 7)
    w0 = w.copy()
    g = np.array([0.5, -2.0, 1e-3, 3.0, -0.25, 1.0, 0.0])
    for _ in range(10):
        assert opt.apply_gradients(zip([g], [w])) == opt.iterations
    assert opt.iterations == 10
    expect = adam_constant_grad(w0, g, lambda k: 0.001, 10, 0.9, 0.999, 1e-8)
    np.testing.assert_allclose(w, expect, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_legacy_decay_closed_form(backend, dtype):
    """tf.keras' decay: the k-th step (k = 0, 1, ...) uses lr / (1 + decay * k)."""
    lr, decay, steps = 0.1, 0.5, 12
    lrs = [lr / (1 + decay * k) for k in range(steps)]   # 0.1, 0.0667, 0.05, ...
    p0 = np.array([1.0, -2.0, 0.5], dtype=dtype)
    g = np.array([0.3, -1.0, 2.0], dtype=dtype)
    # SGD: p_T = p_0 - g * sum(lr_k)
    w = p0.copy()
    opt = FK.SGD(learning_rate=lr, decay=decay, backend=backend)
    for _ in range(steps):
        opt.apply_gradients([(g, w)])
    rtol, atol = (1e-5, 1e-6) if dtype == np.float32 else (1e-13, 1e-14)
    np.testing.assert_allclose(w, p0 - g.astype(np.float64) * sum(lrs), rtol=rtol, atol=atol)
    # Adam with the seed's hyperparameters and a decay
    w = p0.copy()
    opt = FK.Adam(learning_rate=lr, beta_1=0.9, beta_2=0.999, epsilon=1e-8, decay=decay,
                  backend=backend)
    for _ in range(steps):
        opt.apply_gradients([(g, w)])
    np.testing.assert_allclose(w, adam_constant_grad(p0, g.astype(np.float64),
                                                     lambda k: lrs[k], steps, 0.9, 0.999, 1e-8),
                               rtol=rtol, atol=atol)
    # weight decay uses the decayed lr: with g = 0, p_T = p_0 * prod(1 - wd * lr_k)
    w = p0.copy()
    opt = FK.SGD(learning_rate=lr, decay=decay, weight_decay=0.2, backend=backend)
    for _ in range(steps):
        opt.apply_gradients([(np.zeros_like(w), w)])
    np.testing.assert_allclose(w, p0 * np.prod([1 - 0.2 * x for x in lrs]), rtol=rtol,
                               atol=atol)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_schedules_closed_form(backend):
    """A callable of the iteration count, a callable of nothing, legacy decay on top."""
    p0 = np.array([1.0, -2.0])
    g = np.array([0.5, 1.0])
    seen = []

    def sched(step):
        seen.append(step)
        return 0.1 * 0.5 ** step

    w = p0.copy()
    opt = FK.SGD(learning_rate=sched, decay=1.0, backend=backend)
    for _ in range(5):
        opt.apply_gradients([(g, w)])
    assert seen[:5] == [0, 1, 2, 3, 4]
    total = sum(0.1 * 0.5 ** k / (1 + k) for k in range(5))
    np.testing.assert_allclose(w, p0 - g * total, rtol=1e-14)

    box = {"lr": 0.2}
    w = p0.copy()
    opt = FK.SGD(learning_rate=lambda: box["lr"], backend=backend)
    opt.apply_gradients([(g, w)])
    box["lr"] = 0.05
    opt.apply_gradients([(g, w)])
    np.testing.assert_allclose(w, p0 - g * 0.25, rtol=1e-14)


def test_adagrad_accumulator_starts_at_initial_value():
    w = np.array([1.0, 2.0])
    g = np.array([0.5, -1.0])
    opt = FK.Adagrad(learning_rate=0.1)
    opt.apply_gradients([(g, w)])
    acc = 0.1 + g * g
    np.testing.assert_allclose(opt.get_slot(w, "accumulator"), acc, rtol=1e-15)
    np.testing.assert_allclose(w, [1.0, 2.0] - 0.1 * g / np.sqrt(acc + 1e-7), rtol=1e-15)


def test_defaults_follow_keras():
    assert FK.Adam().get_config()["epsilon"] == 1e-7
    assert FK.AdamW().weight_decay == 0.004
    assert FK.SGD().learning_rate == 0.01
    assert FK.RMSprop().rho == 0.9
    assert FK.Adadelta().rho == 0.95 and FK.Adadelta().learning_rate == 0.001
    assert FK.Adagrad().initial_accumulator_value == 0.1
    assert FK.Nadam().epsilon == 1e-7 and FK.Adamax().epsilon == 1e-7


# --- backends, layouts -------------------------------------------------------------

@pytest.mark.parametrize("case", KERAS_CASES, ids=case_id)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_numba_matches_numpy(case, dtype):
    name, kw = case
    ref = run_fastadam(name, kw, dtype, 10, backend="numpy")
    got = run_fastadam(name, kw, dtype, 10, backend="numba")
    assert all(a.dtype == dtype for a in got)
    assert max_rel(got, ref) < (2e-6 if dtype == np.float32 else 1e-13)


@pytest.mark.parametrize("case", [c for c in KERAS_CASES if "clipnorm" not in c[1]][::2],
                         ids=case_id)
@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_flat_path_equals_per_variable(case, backend):
    name, kw = case
    per_var = run_fastadam(name, kw, np.float64, 5, backend=backend)
    flat = run_fastadam(name, kw, np.float64, 5, backend=backend, flat=True)
    for a, b in zip(flat, per_var):
        np.testing.assert_array_equal(a, b)


def test_flat_path_is_one_kernel_call(monkeypatch):
    from fastadam.kernels import cpu, cpu_keras
    calls = []
    for mod in (cpu, cpu_keras):
        orig = mod.run
        monkeypatch.setattr(mod, "run", lambda n, a, s, _o=orig: (calls.append(n), _o(n, a, s)))
    init, grads = problem(np.float32, 2)
    for name, kw in [("Adam", {}), ("RMSprop", {}), ("Nadam", {}), ("SGD", {"momentum": 0.9}),
                     ("Adam", {"global_clipnorm": 1.0}), ("Adamax", {"clipvalue": 0.1})]:
        fp = fastadam.FlatParams([a.copy() for a in init])
        fp.set_grads(grads[0])
        calls.clear()
        opt = getattr(FK, name)(backend="numba", **kw)
        opt.apply_gradients(zip(fp.grads, fp.params))
        assert len(calls) == 1, (name, calls)
        calls.clear()   # a plain list of arrays: one call per variable
        opt2 = getattr(FK, name)(backend="numba", **kw)
        opt2.apply_gradients(zip(grads[0], [a.copy() for a in init]))
        assert len(calls) == len(init)
        # the flat path's state is reachable per variable, shaped like it
        first_state = opt._state_specs()[0][0]
        assert opt.get_slot(fp.params[0], first_state).shape == init[0].shape


@pytest.mark.parametrize("name,kw", [("Adam", {}), ("RMSprop", {"momentum": 0.9}),
                                     ("Adagrad", {})])
def test_mixed_paths_share_state(name, kw):
    """Per-variable steps first (grads not in a flat buffer), then the flat path:
    the state built per variable moves into the flat state buffers."""
    init, grads = problem(np.float64, 6)
    ref = run_fastadam(name, kw, np.float64, 6)
    fp = fastadam.FlatParams([a.copy() for a in init])
    opt = getattr(FK, name)(**kw)
    for k, gs in enumerate(grads):
        if k < 3:
            opt.apply_gradients(zip(gs, fp.params))
        else:
            fp.set_grads(gs)
            opt.apply_gradients(zip(fp.grads, fp.params))
    assert len(opt._flat) == 1
    for a, b in zip(fp.params, ref):
        np.testing.assert_array_equal(a, b)


def test_state_per_variable_and_iterations():
    a, b = np.ones(3), np.ones((2, 2), dtype=np.float32)
    opt = FK.Adam(amsgrad=True)
    opt.apply_gradients([(np.ones(3), a)])
    opt.apply_gradients([(np.ones(3), a), (np.ones((2, 2), np.float32), b)])
    assert opt.iterations == 2
    assert opt.get_slot(b, "velocity_hat").dtype == np.float32
    assert opt.get_slot(b, "momentum").shape == (2, 2)
    with pytest.raises(KeyError):
        opt.get_slot(np.ones(3), "momentum")
    with pytest.raises(KeyError, match="keeps"):
        opt.get_slot(a, "nope")


def test_none_gradient_skipped_with_warning():
    a, b = np.ones(2), np.ones(2)
    with pytest.warns(UserWarning, match="Gradients do not exist"):
        FK.SGD(learning_rate=0.5).apply_gradients([(None, a), (np.ones(2), b)])
    np.testing.assert_array_equal(a, [1, 1])
    np.testing.assert_array_equal(b, [0.5, 0.5])


def test_build_then_apply_without_variables():
    a = np.ones(2)
    opt = FK.SGD(learning_rate=0.5)
    opt.build([a])
    opt.apply([np.ones(2)])
    np.testing.assert_array_equal(a, [0.5, 0.5])


def test_import_does_not_import_torch_keras_or_numba():
    code = ("import sys, fastadam.keras as K, numpy as np; K.Adam(backend='numpy')"
            ".apply_gradients([(np.ones(2), np.ones(2))]);"
            "print([m for m in ('torch', 'keras', 'numba') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "[]"


# --- bad input ---------------------------------------------------------------------

BAD_CTOR = [
    ("Adam", dict(learning_rate=-1.0), ValueError, "learning_rate"),
    ("Adam", dict(learning_rate=float("nan")), ValueError, "learning_rate"),
    ("Adam", dict(learning_rate="0.1"), TypeError, "learning_rate"),
    ("Adam", dict(beta_1=1.0), ValueError, "beta_1"),
    ("Adam", dict(beta_2=-0.1), ValueError, "beta_2"),
    ("Adam", dict(epsilon=-1e-8), ValueError, "epsilon"),
    ("Adam", dict(amsgrad=1), TypeError, "amsgrad"),
    ("Adam", dict(weight_decay=-0.1), ValueError, "weight_decay"),
    ("Adam", dict(clipnorm=1.0, clipvalue=1.0), ValueError, "Only one of"),
    ("Adam", dict(clipnorm=-1.0), ValueError, "clipnorm"),
    ("Adam", dict(decay=-0.5), ValueError, "decay"),
    ("Adam", dict(decay="x"), TypeError, "decay"),
    ("Adam", dict(loss_scale_factor=0.0), ValueError, "loss_scale_factor"),
    ("Adam", dict(use_ema=True), ValueError, "use_ema"),
    ("Adam", dict(gradient_accumulation_steps=2), ValueError, "gradient_accumulation_steps"),
    ("Adam", dict(backend="cuda"), ValueError, "backend"),
    ("Adam", dict(name=3), TypeError, "name"),
    ("AdamW", dict(weight_decay=None), ValueError, "weight_decay"),
    ("SGD", dict(momentum=1.5), ValueError, "momentum"),
    ("SGD", dict(nesterov="yes"), TypeError, "nesterov"),
    ("RMSprop", dict(rho=1.5), ValueError, "rho"),
    ("RMSprop", dict(momentum=-0.1), ValueError, "momentum"),
    ("RMSprop", dict(centered=None), TypeError, "centered"),
    ("Adagrad", dict(initial_accumulator_value=-1.0), ValueError, "initial_accumulator_value"),
    ("Adadelta", dict(rho=2.0), ValueError, "rho"),
    ("Nadam", dict(beta_1=1.5), ValueError, "beta_1"),
    ("Adamax", dict(beta_2=1.0), ValueError, "beta_2"),
]


@pytest.mark.parametrize("name,kw,exc,match", BAD_CTOR,
                         ids=[f"{c[0]}-{next(iter(c[1]))}" for c in BAD_CTOR])
def test_bad_constructor_argument(name, kw, exc, match):
    with pytest.raises(exc, match=match):
        getattr(FK, name)(**kw)


def test_unknown_argument_is_a_type_error():
    with pytest.raises(TypeError, match="lr"):
        FK.Adam(lr=0.1)


def _bad_calls():
    def v():
        return np.ones(4)
    ro = np.ones(4)
    ro.flags.writeable = False
    shared = np.ones(4)
    buf = np.ones(8)
    return [
        ("grad dtype", lambda w: [(np.ones(4, np.float32), w)], TypeError, r"grads\[0\]"),
        ("grad shape", lambda w: [(np.ones(5), w)], ValueError, r"grads\[0\] has shape"),
        ("grad type", lambda w: [([1.0] * 4, w)], TypeError, r"grads\[0\]"),
        ("var type", lambda w: [(np.ones(4), w), (np.ones(4), [1.0] * 4)], TypeError,
         r"variables\[1\]"),
        ("var int", lambda w: [(np.ones(4), w), (np.ones(4), np.ones(4, int))], TypeError,
         r"variables\[1\]"),
        ("var strided", lambda w: [(np.ones(4), w), (np.ones(4), np.ones(8)[::2])], ValueError,
         "C-contiguous"),
        ("var read-only", lambda w: [(np.ones(4), w), (np.ones(4), ro)], ValueError,
         "read-only"),
        ("duplicate", lambda w: [(np.ones(4), w), (np.ones(4), w)], ValueError, "same array"),
        ("overlap", lambda w: [(np.ones(4), w), (np.ones(5), buf[:5]), (np.ones(5), buf[3:])],
         ValueError, "overlapping"),
        ("grad is var", lambda w: [(w, w)], ValueError, "overlaps"),
        ("grad in var", lambda w: [(np.ones(4), w), (shared[:2], v()[:2].copy()),
                                   (np.ones(4), shared)], ValueError, "overlaps"),
        ("all None", lambda w: [(None, w)], ValueError, "No gradients"),
        ("not pairs", lambda w: [(np.ones(4),)], TypeError, "pair"),
    ]


@pytest.mark.parametrize("what", [c[0] for c in _bad_calls()])
@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_bad_call_changes_nothing(what, backend):
    _, make, exc, match = next(c for c in _bad_calls() if c[0] == what)
    w = np.array([1.0, 2.0, 3.0, 4.0])
    opt = FK.Adam(learning_rate=0.1, backend=backend)
    opt.apply_gradients([(np.ones(4), w)])
    before_w, before_m = w.copy(), opt.get_slot(w, "momentum").copy()
    with pytest.raises(exc, match=match):
        opt.apply_gradients(make(w))
    assert opt.iterations == 1
    np.testing.assert_array_equal(w, before_w)
    np.testing.assert_array_equal(opt.get_slot(w, "momentum"), before_m)


@pytest.mark.parametrize("value,exc", [(float("nan"), ValueError), (-0.1, ValueError),
                                       ("x", TypeError), (None, TypeError)])
def test_bad_schedule_value_changes_nothing(value, exc):
    w = np.ones(3)
    opt = FK.SGD(learning_rate=lambda step: 0.1 if step == 0 else value)
    opt.apply_gradients([(np.ones(3), w)])
    before = w.copy()
    with pytest.raises(exc, match="learning_rate"):
        opt.apply_gradients([(np.ones(3), w)])
    np.testing.assert_array_equal(w, before)
    assert opt.iterations == 1


def test_learning_rate_setter():
    opt = FK.SGD(learning_rate=0.1)
    opt.learning_rate = 0.5
    assert opt.learning_rate == 0.5
    with pytest.raises(ValueError, match="learning_rate"):
        opt.learning_rate = -1.0
    opt2 = FK.SGD(learning_rate=lambda s: 0.1)
    with pytest.raises(TypeError, match="schedule"):
        opt2.learning_rate = 0.5


def test_nan_gradient_propagates():
    w = np.ones(3)
    g = np.array([np.nan, 1.0, 1.0])
    FK.Adamax().apply_gradients([(g, w)])
    assert np.isnan(w[0]) and np.isfinite(w[1:]).all()
    w = np.ones(3)
    FK.Adam(clipnorm=1.0).apply_gradients([(g, w)])
    assert np.isnan(w).all()   # Keras: a NaN norm makes the clipped gradient NaN


def test_no_warnings_on_normal_use():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run_fastadam("Nadam", {}, np.float32, 2)


def test_repeated_call_still_checks_writeability():
    """The checks of a repeated call are cached; a variable made read-only is still refused."""
    fp = fastadam.FlatParams([np.ones(3), np.ones(2)])
    opt = FK.SGD(learning_rate=0.5)
    pairs = list(zip(fp.grads, fp.params))
    fp.set_grads([np.ones(3), np.ones(2)])
    opt.apply_gradients(pairs)
    opt.apply_gradients(pairs)
    fp.params[1].flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        opt.apply_gradients(pairs)
    np.testing.assert_array_equal(fp.buffers[0].data, np.zeros(5))
    assert opt.iterations == 2


def test_changing_clipnorm_between_steps_takes_effect():
    """Setting a clip attribute after a step must not reuse the call plan built without it:
    the per-variable clip factor then applies to each variable (Keras' clipnorm is per
    variable); checked against plain SGD arithmetic done here by hand."""
    fp = fastadam.FlatParams({"a": np.ones(4), "b": np.ones(2)})
    opt = FK.SGD(learning_rate=0.1)
    fp.grads["a"][...] = 3.0               # gradients tiling one flat buffer: the fast path
    fp.grads["b"][...] = 0.5
    grads = [fp.grads["a"], fp.grads["b"]]
    opt.apply_gradients(zip(grads, [fp.params["a"], fp.params["b"]]))
    np.testing.assert_allclose(fp.params["a"], 1 - 0.1 * 3.0)
    np.testing.assert_allclose(fp.params["b"], 1 - 0.1 * 0.5)
    opt.clipnorm = 1.0
    a0, b0 = fp.params["a"].copy(), fp.params["b"].copy()
    opt.apply_gradients(zip(grads, [fp.params["a"], fp.params["b"]]))
    # norm(a's grad) = 6 -> scaled by 1/6; norm(b's grad) = 0.707 < 1 -> unchanged
    np.testing.assert_allclose(fp.params["a"], a0 - 0.1 * 3.0 / 6.0, rtol=1e-12)
    np.testing.assert_allclose(fp.params["b"], b0 - 0.1 * 0.5, rtol=1e-12)
    with pytest.raises(ValueError, match="clipnorm"):
        opt.clipnorm = -1.0
