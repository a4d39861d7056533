"""Compiled backends against the NumPy reference, every optimizer and option."""

import numpy as np
import pytest

from cases import CASES, DEFAULT_CASES, SIZES, functional_step, make_state, problem, \
    run_functional


def _close64(a, b):
    scale = np.max(np.abs(b)) if b.size else 1.0
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12 * scale)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("n", [17, 100003])
def test_float64_20_steps_every_option(backend, case, n):
    p, st = run_functional(case, backend, n, np.float64)
    pr, str_ = run_functional(case, "numpy", n, np.float64)
    _close64(p, pr)
    for k in st:
        _close64(st[k], str_[k])


@pytest.mark.parametrize("case", DEFAULT_CASES, ids=lambda c: c.opt)
@pytest.mark.parametrize("n", SIZES)
def test_float64_every_size(backend, case, n):
    p, st = run_functional(case, backend, n, np.float64)
    pr, str_ = run_functional(case, "numpy", n, np.float64)
    _close64(p, pr)
    for k in st:
        _close64(st[k], str_[k])


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("n", [513, 100003])
def test_float32_step_by_step(backend, case, n):
    """From the same state, each float32 step agrees with the reference within rtol 1e-5."""
    p, grads = problem(n, np.float32, seed=1, steps=8)
    st = make_state(case, p)
    mp = 1.0
    for t, g in enumerate(grads, start=1):
        p_ref, st_ref = p.copy(), {k: v.copy() for k, v in st.items()}
        mp_ref = functional_step(case, p_ref, g, st_ref, t, "numpy", mp)
        mp_new = functional_step(case, p, g, st, t, backend, mp)
        assert p.dtype == np.float32 and all(v.dtype == np.float32 for v in st.values())
        np.testing.assert_allclose(p, p_ref, rtol=1e-5, atol=1e-6)
        for k in st:
            np.testing.assert_allclose(st[k], st_ref[k], rtol=1e-5, atol=1e-6, err_msg=k)
        if case.opt == "nadam":
            assert mp_new == mp_ref
            mp = mp_new
        # continue both from the compiled backend's state (step-by-step comparison)


@pytest.mark.parametrize("case", DEFAULT_CASES, ids=lambda c: c.opt)
@pytest.mark.parametrize("n", SIZES)
def test_float32_every_size(backend, case, n):
    p, grads = problem(n, np.float32, seed=2, steps=3)
    st = make_state(case, p)
    for t, g in enumerate(grads, start=1):
        p_ref, st_ref = p.copy(), {k: v.copy() for k, v in st.items()}
        functional_step(case, p_ref, g, st_ref, t, "numpy")
        functional_step(case, p, g, st, t, backend)
        np.testing.assert_allclose(p, p_ref, rtol=1e-5, atol=1e-6)


def test_nd_arrays_are_updated_in_place(backend):
    """A C-contiguous N-d array is updated through a flat view, not a copy."""
    rng = np.random.default_rng(0)
    p = rng.standard_normal((7, 5, 3))
    g = rng.standard_normal((7, 5, 3))
    m, v = np.zeros_like(p), np.zeros_like(p)
    p_ref, m_ref, v_ref = p.copy(), m.copy(), v.copy()
    import fastadam.functional as F
    kw = dict(step=1, lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8)
    F.adam_(p, g, m, v, backend=backend, **kw)
    F.adam_(p_ref, g, m_ref, v_ref, backend="numpy", **kw)
    np.testing.assert_allclose(p, p_ref, rtol=1e-12)
    assert not np.array_equal(p, rng.standard_normal((7, 5, 3)))


def test_nan_and_inf_propagate(backend):
    """fastmath keeps IEEE semantics: a NaN or Inf gradient poisons exactly its element."""
    import fastadam.functional as F
    p = np.ones(64, dtype=np.float32)
    g = np.full(64, 0.5, dtype=np.float32)
    g[3], g[10] = np.nan, np.inf
    m, v, vmax = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    F.adam_(p, g, m, v, step=1, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, amsgrad=True,
            max_exp_avg_sq=vmax, backend=backend)
    assert np.isnan(p[3]) and np.isnan(m[3]) and np.isnan(vmax[3])
    assert np.isinf(v[10]) and np.isinf(vmax[10])
    mask = np.ones(64, bool)
    mask[[3, 10]] = False
    assert np.all(np.isfinite(p[mask]))


@pytest.mark.parametrize("case", [c for c in CASES if not c.options.get("weight_decay")
                                  and not c.options.get("decoupled_weight_decay")],
                         ids=lambda c: c.id)
def test_nonfinite_param_without_weight_decay_leaves_state_finite(backend, case):
    """As torch.optim: with weight_decay == 0 a NaN/Inf parameter never enters the gradient,
    so the state of that element stays finite (only the parameter itself is non-finite)."""
    p, grads = problem(40, np.float64, seed=7, steps=3)
    p[5], p[9] = np.nan, np.inf
    st = make_state(case, p)
    mp = 1.0
    for t, g in enumerate(grads, start=1):
        mp = functional_step(case, p, g, st, t, backend, mp) or mp
    for k, v in st.items():
        assert np.all(np.isfinite(v)), k
