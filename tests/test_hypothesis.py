"""Hypothesis-generated hyperparameters: compiled backends equal the NumPy reference."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cases import Case, run_functional

unit = st.floats(0.0, 0.999, allow_nan=False)
lr = st.floats(0.0, 1.0, allow_nan=False)
eps = st.floats(1e-12, 1e-2, allow_nan=False)
wd = st.one_of(st.just(0.0), st.floats(0.0, 0.5, allow_nan=False))
flag = st.booleans()
size = st.integers(0, 300)

adam_cases = st.builds(
    lambda lr, b1, b2, eps, wd, dec, ams, mx: Case("adam", dict(
        lr=lr, beta1=b1, beta2=b2, eps=eps, weight_decay=wd, decoupled_weight_decay=dec,
        amsgrad=ams, maximize=mx)),
    lr, unit, unit, eps, wd, flag, flag, flag)
rmsprop_cases = st.builds(
    lambda lr, a, eps, wd, mom, c, mx: Case("rmsprop", dict(
        lr=lr, alpha=a, eps=eps, weight_decay=wd, momentum=mom, centered=c, maximize=mx)),
    lr, unit, eps, wd, st.floats(0.0, 0.99), flag, flag)
adagrad_cases = st.builds(
    lambda lr, d, eps, wd, mx, iav: Case("adagrad", dict(
        lr=lr, lr_decay=d, eps=eps, weight_decay=wd, maximize=mx), init={"sum": iav}),
    lr, st.floats(0.0, 1.0), eps, wd, flag, st.floats(0.0, 1.0))
nadam_cases = st.builds(
    lambda lr, b1, b2, eps, wd, md, dec, mx: Case("nadam", dict(
        lr=lr, beta1=b1, beta2=b2, eps=eps, weight_decay=wd, momentum_decay=md,
        decoupled_weight_decay=dec, maximize=mx)),
    lr, unit, unit, eps, wd, st.floats(0.0, 0.1), flag, flag)
other_cases = st.one_of(
    st.builds(lambda lr, m, n, wd: Case("sgd", dict(
        lr=lr, momentum=m, dampening=0.0, nesterov=n and m > 0, weight_decay=wd)),
        lr, st.floats(0.0, 0.99), flag, wd),
    st.builds(lambda lr, rho, eps, wd: Case("adadelta", dict(
        lr=lr, rho=rho, eps=eps, weight_decay=wd)), lr, unit, eps, wd),
    st.builds(lambda lr, b1, b2, eps, wd: Case("adamax", dict(
        lr=lr, beta1=b1, beta2=b2, eps=eps, weight_decay=wd)), lr, unit, unit, eps, wd),
)


# derandomize: CI explores the same examples every run, so a red run means a change broke
# something, not that a new random example turned up (run with --hypothesis-seed to explore)
@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(case=st.one_of(adam_cases, rmsprop_cases, adagrad_cases, nadam_cases, other_cases),
       n=size, seed=st.integers(0, 2**31 - 1))
@pytest.mark.parametrize("be", ["numba"])
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_random_hyperparameters_match_reference(be, case, n, seed):
    p, s = run_functional(case, be, n, np.float64, steps=5, seed=seed)
    pr, sr = run_functional(case, "numpy", n, np.float64, steps=5, seed=seed)
    for got, want in [(p, pr)] + [(s[k], sr[k]) for k in s]:
        finite = want[np.isfinite(want)]
        scale = max(float(np.max(np.abs(finite))), 1.0) if finite.size else 1.0
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-11 * scale, equal_nan=True)
