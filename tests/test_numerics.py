"""torch.optim's results at the extremes (issue #22), every backend against the for-loop
implementation (``foreach=False``) of torch itself, one step from the same state:

* torch's ``lerp`` has two branches (``a + w*(b - a)`` for ``|w| < 0.5``, else
  ``b - (b - a)*(1 - w)``), each a fused multiply-add on the CPU: Adam / NAdam / Adamax's
  ``exp_avg`` and centered RMSprop's ``grad_avg`` at weights on both sides of 0.5;
* centered RMSprop's ``square_avg - grad_avg**2`` is one FMA (``addcmul(value=-1)``):
  a finite gradient whose square overflows leaves the parameter finite;
* Adam's update is ``(-step_size * exp_avg) / denom`` (``addcdiv_(value=-step_size)``):
  where ``-step_size * exp_avg`` overflows, the parameter becomes infinite, in the NumPy
  reference too;
* ``betas`` mixing a tensor and a float is refused as torch refuses it.

States and gradients sweep NaN, +-Inf, denormals, huge values and signed zeros.  The
signs of NaN and of zero are not compared (the issue allows them to differ).
"""

import contextlib
import math

import numpy as np
import pytest

import fastadam.functional as F
from conftest import COMPILED_HOST

torch = pytest.importorskip("torch")

BACKENDS = ["numpy"] + COMPILED_HOST + ["cuda"]   # cuda: numba's simulator in CI
INF, NAN = math.inf, math.nan


def _extremes(dtype):
    fi = np.finfo(dtype)
    tiny = float(fi.smallest_subnormal)
    huge = float(fi.max) / 2
    big = 1e30 if dtype == np.float32 else 1e200       # finite; its square overflows
    g = [0.0, -0.0, tiny, -3 * tiny, float(fi.tiny) / 3, 1.0, -3.0, 0.37, big, -big, huge,
         INF, -INF, NAN]
    m = [0.0, tiny, -2.5, huge, -INF, NAN]
    v = [0.0, tiny, 4.0, big, huge, INF, NAN]
    p = [0.5, -2.0, big, 0.0, -INF]
    return g, m, v, p


def _problem(dtype):
    """Every gradient against every first-moment value; the rest cycled."""
    g, m, v, p = _extremes(dtype)
    n = len(g) * len(m)
    gg = np.array([g[i % len(g)] for i in range(n)], dtype)
    mm = np.array([m[i // len(g)] for i in range(n)], dtype)
    vv = np.array([v[i % len(v)] for i in range(n)], dtype)
    pp = np.array([p[i % len(p)] for i in range(n)], dtype)
    return pp, gg, mm, vv


# (optimizer, options in torch's spelling, the state arrays, their initial values)
def _configs():
    out = []
    for b1 in (0.0, 0.3, 0.5, 0.9):
        out.append(("adam", dict(lr=1e-2, betas=(b1, 0.999), eps=1e-8)))
    out.append(("adam", dict(lr=1e4, betas=(0.5, 0.999), eps=1e-8)))   # overflowing update
    out.append(("adam", dict(lr=1e-2, betas=(0.0, 0.999), eps=1e-8, weight_decay=0.1,
                             decoupled_weight_decay=True, amsgrad=True)))
    for b1 in (0.0, 0.5, 0.9):
        out.append(("nadam", dict(lr=2e-3, betas=(b1, 0.999), eps=1e-8)))
        out.append(("adamax", dict(lr=2e-3, betas=(b1, 0.999), eps=1e-8)))
    for alpha in (0.0, 0.3, 0.5, 0.99):
        for mom in (0.0, 0.9):
            out.append(("rmsprop", dict(lr=1e-2, alpha=alpha, eps=1e-8, centered=True,
                                        momentum=mom)))
    # torch's add(x, alpha=a) is an FMA too: the L2 term, SGD's momentum / Nesterov terms
    # and the parameter updates of SGD, RMSprop with momentum and Adadelta
    out.append(("adam", dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.3)))
    out.append(("rmsprop", dict(lr=1e-2, alpha=0.99, eps=1e-8, centered=False,
                                momentum=0.9, weight_decay=0.3)))
    for nesterov, damp in ((False, 0.25), (True, 0.0)):
        out.append(("sgd", dict(lr=1e-2, momentum=0.9, dampening=damp, nesterov=nesterov,
                                weight_decay=0.3)))
    out.append(("adagrad", dict(lr=1e-2, eps=1e-10, weight_decay=0.3)))
    out.append(("adadelta", dict(lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.3)))
    return out


CONFIGS = _configs()
STEP = 3


def _ids(c):
    name, o = c
    return name + "-" + "-".join(f"{k}={v}" for k, v in o.items())


def _states(name, o, m, v):
    if name == "adam":
        s = {"exp_avg": m, "exp_avg_sq": v}
        if o.get("amsgrad"):
            s["max_exp_avg_sq"] = v[::-1].copy()
        return s
    if name == "nadam":
        return {"exp_avg": m, "exp_avg_sq": v}
    if name == "adamax":
        return {"exp_avg": m, "exp_inf": v}
    if name == "sgd":
        return {"momentum_buffer": m}
    if name == "adagrad":
        return {"sum": v}
    if name == "adadelta":
        return {"square_avg": v, "acc_delta": v[::-1].copy()}
    if not o["centered"]:
        s = {"square_avg": v}
        if o["momentum"] > 0:
            s["momentum_buffer"] = m
        return s
    s = {"square_avg": v, "grad_avg": m}
    if o["momentum"] > 0:
        s["momentum_buffer"] = m[::-1].copy()
    return s


def _mu_product(beta1, momentum_decay=4e-3, steps=STEP - 1):
    out = 1.0
    for t in range(1, steps + 1):
        out *= beta1 * (1.0 - 0.5 * 0.96 ** (t * momentum_decay))
    return out


def torch_step(name, o, p, g, states):
    """One step of torch.optim's for-loop implementation from ``states``."""
    cls = {"adam": torch.optim.Adam, "nadam": torch.optim.NAdam,
           "adamax": torch.optim.Adamax, "rmsprop": torch.optim.RMSprop,
           "sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad,
           "adadelta": torch.optim.Adadelta}[name]
    tp = torch.from_numpy(p.copy())
    tp.grad = torch.from_numpy(g.copy())
    opt = cls([tp], foreach=False, **o)
    st = opt.state[tp]
    for k, a in states.items():
        st[k] = torch.from_numpy(a.copy())
    st["step"] = torch.tensor(float(STEP - 1), dtype=torch.float64)
    if name == "nadam":
        st["mu_product"] = torch.tensor(_mu_product(o["betas"][0]), dtype=torch.float64)
    with np.errstate(all="ignore"):
        opt.step()
    return tp.numpy(), {k: st[k].numpy() for k in states}


class _IEEEMath:
    """``math`` with an IEEE ``sqrt`` (NaN for a negative argument)."""

    @staticmethod
    def sqrt(x):
        with np.errstate(invalid="ignore"):
            return type(x)(np.sqrt(x))


@contextlib.contextmanager
def _ieee_sqrt_in_simulator():
    """numba's CUDA simulator runs the rules as Python, where ``math.sqrt`` of a negative
    raises; a GPU (and every other backend) returns NaN.  Under the simulator, give the
    RMSprop rules (whose centered variance can be negative) an IEEE ``sqrt``."""
    from fastadam.kernels import cuda as K
    if not K.SIMULATOR:  # pragma: no cover - real GPU
        yield
        return
    from fastadam.rules import rmsprop as r
    saved = r.math
    r.math = _IEEEMath
    try:
        yield
    finally:
        r.math = saved


def fastadam_step(name, o, p, g, states, backend):
    kw = dict(o)
    if "betas" in kw:
        kw["beta1"], kw["beta2"] = kw.pop("betas")
    if name in ("adam", "nadam", "adamax", "adagrad"):
        kw["step"] = STEP
    if name == "sgd":
        kw["first_step"] = False
    if name == "nadam":
        kw["mu_product"] = _mu_product(kw["beta1"])
    p, states = p.copy(), {k: a.copy() for k, a in states.items()}
    if backend == "cuda":
        from numba import cuda
        dp, dg = cuda.to_device(p), cuda.to_device(g)
        dst = {k: cuda.to_device(a) for k, a in states.items()}
        with _ieee_sqrt_in_simulator():
            getattr(F, name + "_")(dp, dg, **dst, backend="cuda", **kw)
        return dp.copy_to_host(), {k: a.copy_to_host() for k, a in dst.items()}
    with np.errstate(all="ignore"):
        getattr(F, name + "_")(p, g, **states, backend=backend, **kw)
    return p, states


def assert_as_torch(ours, theirs, dtype, what, exact=False):
    """NaN where torch has NaN, the same infinities, finite values within a few ulps
    (``exact``: bitwise, but for the signs of NaN and zero)."""
    nan_o, nan_t = np.isnan(ours), np.isnan(theirs)
    bad = np.flatnonzero(nan_o != nan_t)
    assert bad.size == 0, (f"{what}: NaN at {bad[:8]}: ours {ours[bad[:8]]}, "
                           f"torch {theirs[bad[:8]]}")
    ok = ~nan_t
    o, t = ours[ok], theirs[ok]
    inf_bad = np.flatnonzero(np.isinf(o) != np.isinf(t))
    assert inf_bad.size == 0, (f"{what}: inf mismatch: ours {o[inf_bad[:8]]}, "
                               f"torch {t[inf_bad[:8]]}")
    assert np.array_equal(o[np.isinf(t)], t[np.isinf(t)]), f"{what}: sign of inf"
    fin = np.isfinite(t)
    if exact:
        np.testing.assert_array_equal(o[fin], t[fin], err_msg=what)
    else:
        fi = np.finfo(dtype)
        np.testing.assert_allclose(o[fin], t[fin], rtol=8 * fi.eps,
                                   atol=4 * float(fi.smallest_subnormal), err_msg=what)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("config", CONFIGS, ids=_ids)
def test_extremes_as_torch(config, dtype, backend):
    name, o = config
    p, g, m, v = _problem(dtype)
    states = _states(name, o, m, v)
    tp, tst = torch_step(name, o, p, g, states)
    fp, fst = fastadam_step(name, o, p, g, states, backend)
    # the lerp'd moment: bitwise in the compiled backends (torch's FMA, torch's branch)
    # the lerp'd and addcmul'd moments: bitwise in the compiled backends (torch's FMAs,
    # torch's lerp branch)
    exact = [k for k in ("exp_avg", "exp_avg_sq", "grad_avg", "square_avg", "sum",
                         "momentum_buffer") if k in fst and backend != "numpy"]
    if name == "rmsprop" and o["momentum"] > 0 and exact:
        exact.remove("momentum_buffer")  # buf + g / avg: torch's sqrt is not IEEE's
    for k in exact:
        assert_as_torch(fst[k], tst[k], dtype, k, exact=True)
    for k in fst:
        assert_as_torch(fst[k], tst[k], dtype, k)
    assert_as_torch(fp, tp, dtype, "param")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["adam", "nadam", "adamax"])
def test_beta1_zero_first_moment_is_the_gradient(name, backend):
    """torch's lerp at weight 1 returns the gradient itself: ``exp_avg == grad`` exactly
    (the one-branch form ``m + 1*(g - m)`` was 1.2e-5 off in float32)."""
    rng = np.random.default_rng(0)
    p = rng.standard_normal(64).astype(np.float32)
    g = (rng.standard_normal(64) * 1e-3).astype(np.float32)
    m = (rng.standard_normal(64) * 1e2).astype(np.float32)
    v = np.abs(rng.standard_normal(64)).astype(np.float32)
    o = dict(lr=1e-3, betas=(0.0, 0.999), eps=1e-8)
    states = _states(name, o, m, v)
    _, tst = torch_step(name, o, p, g, states)
    _, fst = fastadam_step(name, o, p, g, states, backend)
    assert np.array_equal(tst["exp_avg"], g)          # torch's, as a check of the check
    assert np.array_equal(fst["exp_avg"], g)


@pytest.mark.parametrize("backend", BACKENDS)
def test_centered_rmsprop_ill_conditioned(backend):
    """``square_avg - grad_avg**2`` where it cancels (relative gap 1e-7 .. 1e-5): as
    accurate as torch against a float64 shadow of the same step, to a few ulps of the
    parameter (torch's vectorized ``sqrt`` is not correctly rounded, so not bitwise);
    the states themselves are torch's bits in the compiled backends.  The unfused
    ``sq - ga*ga`` was off by up to the whole gap here (2.4x torch's error and more)."""
    rng = np.random.default_rng(3)
    n = 256
    ga = rng.uniform(1, 2, n).astype(np.float32)
    sq = (ga.astype(np.float64) ** 2 * (1 + rng.uniform(1e-7, 1e-5, n))).astype(np.float32)
    g = ga.copy()                             # the lerp keeps grad_avg where it is
    p = np.ones(n, np.float32)
    o = dict(lr=1e-2, alpha=0.99, eps=1e-8, centered=True, momentum=0.0)
    states = {"square_avg": sq, "grad_avg": ga}
    tp, tst = torch_step("rmsprop", o, p, g, states)
    fp, fst = fastadam_step("rmsprop", o, p, g, states, backend)
    tp64, _ = torch_step("rmsprop", o, p.astype(np.float64), g.astype(np.float64),
                         {k: a.astype(np.float64) for k, a in states.items()})
    err_t = np.abs(tp.astype(np.float64) - tp64)
    err_f = np.abs(fp.astype(np.float64) - tp64)
    ulp = np.spacing(np.abs(tp)).astype(np.float64)
    assert np.all(err_f <= err_t + 4 * ulp), np.max((err_f - err_t) / ulp)
    assert np.max(err_t) > 1e3 * np.max(ulp)  # the case does cancel
    if backend != "numpy":                    # compiled: torch's bits
        np.testing.assert_array_equal(fst["grad_avg"], tst["grad_avg"])
        np.testing.assert_array_equal(fst["square_avg"], tst["square_avg"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_centered_rmsprop_square_overflow(backend):
    """A finite float32 gradient whose square overflows (1e30): torch's parameter stays
    finite (``inf - fma(ga, ga)`` is ``inf``, so the step is 0); so does fastadam's."""
    p = np.array([0.5, -1.0, 2.0], np.float32)
    g = np.array([1e30, -1e30, 1e30], np.float32)
    z = np.zeros(3, np.float32)
    o = dict(lr=1e-2, alpha=0.99, eps=1e-8, centered=True, momentum=0.0)
    tp, _ = torch_step("rmsprop", o, p, g, {"square_avg": z, "grad_avg": z})
    fp, _ = fastadam_step("rmsprop", o, p, g, {"square_avg": z, "grad_avg": z}, backend)
    assert np.all(np.isfinite(tp))
    np.testing.assert_array_equal(fp, tp)


@pytest.mark.parametrize("cls", ["Adam", "AdamW"])
@pytest.mark.parametrize("which", [0, 1], ids=["tensor-float", "float-tensor"])
def test_betas_mixing_tensor_and_float_refused(cls, which):
    import fastadam.torch as ft
    b = [0.9, 0.999]
    b[which] = torch.tensor(b[which])
    p = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError) as theirs:
        getattr(torch.optim, cls)([p], betas=tuple(b))
    with pytest.raises(ValueError) as ours:
        getattr(ft, cls)([p], betas=tuple(b))
    assert str(ours.value) == str(theirs.value)
    # both tensors (and both floats) are accepted, as by torch
    getattr(ft, cls)([p], betas=(torch.tensor(0.9), torch.tensor(0.999)))


@pytest.mark.parametrize("beta1", [0.0, 0.3])
def test_bfloat16_state_takes_torchs_lerp_branch(beta1):
    """The reduced-precision kernels run the same rule: with bfloat16 moments and
    ``beta1 <= 0.5`` the new ``exp_avg`` is torch's ``lerp`` (second branch) of the decoded
    state, bit for bit before its stochastic rounding.  Gradients and moments are
    bfloat16 numbers, so that at ``beta1 = 0`` (``exp_avg == grad``, exactly
    representable) the rounding leaves it exact."""
    from fastadam import lowp
    from fastadam.lowp import state as S
    rng = np.random.default_rng(5)
    n = 4096
    p = rng.standard_normal(n).astype(np.float32)
    g = S.bf16_decode(S.bf16_encode(rng.standard_normal(n).astype(np.float32) * 1e-3))
    st = lowp.new_state("bfloat16", n)
    m0 = S.bf16_decode(S.bf16_encode(rng.standard_normal(n).astype(np.float32) * 1e2))
    st["exp_avg"][...] = S.bf16_encode(m0)
    st["exp_avg_sq"][...] = S.bf16_encode(np.abs(m0))
    F.adam_(p, g, st["exp_avg"], st["exp_avg_sq"], state_dtype="bfloat16", step=3,
            lr=1e-3, beta1=beta1, beta2=0.999, eps=1e-8)
    m_t = torch.from_numpy(m0.copy()).lerp_(torch.from_numpy(g), 1 - beta1).numpy()
    m = S.bf16_decode(st["exp_avg"])
    if beta1 == 0.0:
        np.testing.assert_array_equal(m, g)
        np.testing.assert_array_equal(m_t, g)
    else:   # within the stochastic rounding of torch's value (one bfloat16 spacing)
        spacing = np.abs(m_t) * 2.0 ** -7
        assert np.all(np.abs(m - m_t) <= spacing)


@pytest.mark.parametrize("backend", COMPILED_HOST)
def test_repeated_calls_keep_torchs_lerp_weight(backend):
    """The functional API's cached plan (second and later calls on the same arrays) and
    the NumPy façade's bound kernels compute the lerp weight ``w - 1`` in the buffer's
    type, as torch does (``float32(w) - 1``), not in float64: torch's bits at every step.
    beta1 = 0.4: ``float32(0.6) - 1`` differs from ``float32(0.6 - 1)``."""
    import fastadam
    b1 = 0.4
    assert np.float32(np.float32(1 - b1) - 1) != np.float32((1 - b1) - 1)   # the case bites
    rng = np.random.default_rng(2)
    n = 512
    p0 = rng.standard_normal(n).astype(np.float32)
    grads = [rng.standard_normal(n).astype(np.float32) for _ in range(4)]
    p, m, v = p0.copy(), np.zeros(n, np.float32), np.zeros(n, np.float32)
    opt = fastadam.Adam({"w": p0.copy()}, lr=1e-2, betas=(b1, 0.999), backend=backend)
    tp = torch.from_numpy(p0.copy())
    topt = torch.optim.Adam([tp], lr=1e-2, betas=(b1, 0.999), foreach=False)
    g = np.empty(n, np.float32)                       # one gradient buffer, as in training
    for t, gt in enumerate(grads, start=1):
        g[...] = gt
        F.adam_(p, g, m, v, step=t, lr=1e-2, beta1=b1, beta2=0.999, eps=1e-8,
                backend=backend)                      # a cached plan from t = 2
        opt.grads["w"][...] = g
        opt.step()                                    # bound kernel
        tp.grad = torch.from_numpy(g.copy())
        topt.step()
        np.testing.assert_array_equal(m, topt.state[tp]["exp_avg"].numpy(), f"step {t}")
        np.testing.assert_array_equal(opt.state[0]["float32"]["exp_avg"], m, f"step {t}")
        # from the same state: continue both from torch's moments (step by step)
        m[...] = topt.state[tp]["exp_avg"].numpy()
        v[...] = topt.state[tp]["exp_avg_sq"].numpy()
        p[...] = tp.detach().numpy()
        opt.state[0]["float32"]["exp_avg"][...] = m
        opt.state[0]["float32"]["exp_avg_sq"][...] = v
        opt.params["w"][...] = p


def test_lerp_weight_cache_is_per_dtype():
    """``_scalars.lerp_weight`` caches its result per (dtype, weight): asked in float32,
    float64 and for a bound kernel's Python floats, in any order, each gets the weight
    rounded in its own type (torch's ``float32(w) - 1`` against float64's ``w - 1``)."""
    from fastadam import _scalars
    w = 1 - 0.4                                    # the second branch: w - 1
    want32 = np.float32(np.float32(w) - np.float32(1.0))
    want64 = np.float64(w) - 1.0
    assert float(want32) != float(want64)
    order = [np.dtype(np.float32), np.dtype(np.float64), _scalars.PythonFloats32,
             _scalars.PythonFloats64]
    for dts in (order, order[::-1]):
        for dt in dts:
            for _ in range(2):                     # computed, then from the cache
                got = _scalars.lerp_weight(dt, w)
                want = want32 if dt in (order[0], order[2]) else want64
                assert float(got) == float(want), dt
                assert type(got) is (float if dt in order[2:] else dt.type), dt
