"""Functional kernels against torch.optim's for-loop implementation."""

import numpy as np
import pytest

from cases import CASES, functional_step, make_state, problem, torch_optimizer

torch = pytest.importorskip("torch")

# torch.optim state key -> fastadam state name (identical names by design)
STATE_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "square_avg", "momentum_buffer",
              "grad_avg", "sum", "acc_delta", "exp_inf")


def _run_torch(case, p0, grads, dtype):
    tp = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    opt = torch_optimizer(case, [tp])
    for g in grads:
        tp.grad = torch.from_numpy(g.copy())
        opt.step()
    st = opt.state[tp]
    return tp.detach().numpy(), {k: st[k].numpy() for k in STATE_KEYS if k in st}, st


@pytest.fixture
def torch_float64_default():
    """torch keeps scalar state (NAdam's mu_product, step) in the default dtype,
    float32 unless changed; a float64 comparison needs it in float64 too."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_float64_matches_torch_after_20_steps(case, backend, torch_float64_default):
    p0, grads = problem(1000, np.float64, seed=3, steps=20)
    p = p0.copy()
    st = make_state(case, p)
    mp = 1.0
    for t, g in enumerate(grads, start=1):
        r = functional_step(case, p, g, st, t, backend, mp)
        if case.opt == "nadam":
            mp = r
    tp, tst, raw = _run_torch(case, p0, grads, np.float64)
    scale = np.max(np.abs(tp))
    np.testing.assert_allclose(p, tp, rtol=1e-10, atol=1e-12 * scale)
    assert set(tst) == set(st), (set(tst), set(st))
    for k in st:
        s = np.max(np.abs(tst[k])) or 1.0
        np.testing.assert_allclose(st[k], tst[k], rtol=1e-10, atol=1e-12 * s, err_msg=k)
    if case.opt == "nadam":
        assert mp == pytest.approx(float(raw["mu_product"]), rel=1e-14)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_float32_matches_torch_step_by_step(case, backend):
    p0, grads = problem(4099, np.float32, seed=4, steps=5)
    p = p0.copy()
    st = make_state(case, p)
    tp = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    opt = torch_optimizer(case, [tp])
    mp = 1.0
    for t, g in enumerate(grads, start=1):
        # restart torch from fastadam's current state each step
        with torch.no_grad():
            tp.copy_(torch.from_numpy(p))
        if t > 1:
            for k, v in st.items():
                opt.state[tp][k].copy_(torch.from_numpy(v))
        tp.grad = torch.from_numpy(g.copy())
        opt.step()
        r = functional_step(case, p, g, st, t, backend, mp)
        if case.opt == "nadam":
            mp = r
        np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-5, atol=1e-6)
        for k, v in st.items():
            np.testing.assert_allclose(v, opt.state[tp][k].numpy(), rtol=1e-5, atol=1e-6,
                                       err_msg=k)
