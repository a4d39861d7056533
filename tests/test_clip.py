"""Fused gradient transforms: AMP unscaling with inf/nan skipping, global-norm and
value clipping -- against torch (clip_grad_norm_, clip_grad_value_, fused Adam
with grad_scale / found_inf) and against the transform done by hand in NumPy."""

import math

import numpy as np
import pytest

import fastadam
import fastadam.functional as F
from cases import NoBind, assert_same_optimizer
from fastadam import lowp

HP = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8)
SHAPES = {"w": (37, 11), "b": (11,), "u": (700,)}


def _params(seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}


def _grads(t, scale=1.0):
    rng = np.random.default_rng(100 + t)
    return {k: (rng.standard_normal(s) * 3 * scale).astype(np.float32)
            for k, s in SHAPES.items()}


# --- the first pass ------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_grad_stats(backend):
    if backend == "numba":
        pytest.importorskip("numba")
    rng = np.random.default_rng(0)
    gs = [rng.standard_normal(n).astype(np.float32) * 5 for n in (1, 1000, 100003)]
    for scale, clip in ((None, None), (4.0, None), (None, 0.5), (8.0, 0.1)):
        s, ok = lowp.grad_stats(gs, grad_scale=scale, clip_value=clip, backend=backend)
        y = [np.clip(g.astype(np.float64) / (scale or 1), -(clip or np.inf), clip or np.inf)
             for g in gs]
        assert ok
        np.testing.assert_allclose(s, sum(float(np.sum(v * v)) for v in y), rtol=1e-6)
    for bad in (np.inf, -np.inf, np.nan):
        g2 = [g.copy() for g in gs]
        g2[2][77777] = bad
        # the clamp would hide an inf: the flag looks at the raw gradient
        assert lowp.grad_stats(g2, clip_value=1.0, backend=backend)[1] is False
    # squares beyond float32's range (the fused pass sums blocks in float32): still right
    big = [np.array([3e20, -4e20] + [1.0] * 600, np.float32)]
    s_big, ok_big = lowp.grad_stats(big, backend=backend)
    assert ok_big and np.isclose(s_big, 25e40 + 600, rtol=1e-6)
    # float64 buffers take the NumPy path
    s64, ok64 = lowp.grad_stats([gs[1].astype(np.float64)], backend=backend)
    assert ok64 and np.isclose(s64, float(np.sum(gs[1].astype(np.float64) ** 2)))


# --- functional: fused transform == transform by hand -------------------------------------

@pytest.mark.parametrize("sd", ["float32", "bfloat16", "int8"])
@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_functional_transform_equals_manual(sd, backend):
    if backend == "numba":
        pytest.importorskip("numba")
    rng = np.random.default_rng(1)
    n = 1000
    p0 = rng.standard_normal(n).astype(np.float32)
    g = (rng.standard_normal(n) * 1000).astype(np.float32)
    s, k, c = 512.0, 0.25, 0.9
    p1, st1 = p0.copy(), lowp.new_state(sd, n)
    p2, st2 = p0.copy(), lowp.new_state(sd, n)
    kw = dict(step=1, state_dtype=sd, backend=backend, **HP)
    F.adam_(p1, g, st1["exp_avg"], st1["exp_avg_sq"], exp_avg_scale=st1.get("exp_avg_scale"),
            exp_avg_sq_scale=st1.get("exp_avg_sq_scale"), grad_scale=s, clip_coef=k,
            clip_value=c, **kw)
    gm = (np.float32(k) * np.clip(g / np.float32(s), -c, c)).astype(np.float32)
    F.adam_(p2, gm, st2["exp_avg"], st2["exp_avg_sq"], exp_avg_scale=st2.get("exp_avg_scale"),
            exp_avg_sq_scale=st2.get("exp_avg_sq_scale"), **kw)
    np.testing.assert_allclose(p1, p2, rtol=1e-5, atol=1e-6)
    assert np.sum(np.abs(g / s) > c) > 100          # the clamp did something


# --- façade against torch ------------------------------------------------------------------

def _torch_run(torch, opt_name, steps, clip_norm=None, clip_value=None, **kw):
    P = _params()
    tp = [torch.nn.Parameter(torch.from_numpy(P[k].copy())) for k in SHAPES]
    topt = getattr(torch.optim, opt_name)(tp, foreach=False, **kw)
    norms = []
    for t in range(steps):
        for x, (k, g) in zip(tp, _grads(t).items()):
            x.grad = torch.from_numpy(g.copy())
        if clip_value is not None:
            torch.nn.utils.clip_grad_value_(tp, clip_value, foreach=False)
        if clip_norm is not None:
            norms.append(float(torch.nn.utils.clip_grad_norm_(tp, clip_norm, foreach=False)))
        topt.step()
    return {k: x.detach().numpy() for k, x in zip(SHAPES, tp)}, norms


def _ours(opt_name, steps, backend="auto", step_kw=None, **kw):
    P = _params()
    opt = getattr(fastadam, opt_name)(P, backend=backend, **kw)
    norms = []
    for t in range(steps):
        for k, g in _grads(t).items():
            opt.grads[k][...] = g
        opt.step(**(step_kw or {}))
        norms.append(opt.last_grad_norm)
    return P, norms, opt


CLIPS = [dict(max_grad_norm=1.0), dict(clip_value=0.5), dict(max_grad_norm=2.0, clip_value=1.0)]


@pytest.mark.parametrize("clip", CLIPS, ids=lambda c: "-".join(c))
@pytest.mark.parametrize("opt_name,kw", [("AdamW", dict(lr=1e-2)),
                                         ("Adam", dict(lr=1e-2, amsgrad=True)),
                                         ("RMSprop", dict(lr=1e-2)),
                                         ("SGD", dict(lr=1e-2, momentum=0.9))])
@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_clipping_matches_torch(clip, opt_name, kw, backend):
    torch = pytest.importorskip("torch")
    if backend == "numba":
        pytest.importorskip("numba")
    want, tnorms = _torch_run(torch, opt_name, 6, clip_norm=clip.get("max_grad_norm"),
                              clip_value=clip.get("clip_value"), **kw)
    if opt_name.startswith("Adam"):
        got, norms, _ = _ours(opt_name, 6, backend, **clip, **kw)
    else:   # the other optimizers take the knobs as step() arguments
        got, norms, _ = _ours(opt_name, 6, backend, step_kw=clip, **kw)
    for k in SHAPES:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)
    if "max_grad_norm" in clip:
        np.testing.assert_allclose(norms, tnorms, rtol=1e-5)


@pytest.mark.parametrize("fused_name", ["Adam", "AdamW"])
def test_grad_scale_and_found_inf_match_torch_fused(fused_name):
    """torch's fused Adam with GradScaler's grad_scale / found_inf (the AMP protocol)."""
    torch = pytest.importorskip("torch")
    scale = 1024.0
    P = _params()
    tp = [torch.nn.Parameter(torch.from_numpy(P[k].copy())) for k in SHAPES]
    topt = getattr(torch.optim, fused_name)(tp, lr=1e-2, fused=True)
    opt = getattr(fastadam, fused_name)(P, lr=1e-2)
    skip_at = {2, 3}
    for t in range(6):
        gs = _grads(t, scale)
        for x, (k, g) in zip(tp, gs.items()):
            x.grad = torch.from_numpy(g.copy())
            opt.grads[k][...] = g
        fi = 1.0 if t in skip_at else 0.0
        topt.grad_scale = torch.tensor(scale)
        topt.found_inf = torch.tensor(fi)
        topt.step()
        opt.step(grad_scale=scale, found_inf=fi)
        for k, x in zip(SHAPES, tp):
            np.testing.assert_allclose(P[k], x.detach().numpy(), rtol=1e-5, atol=1e-6)
        assert opt.state[0]["float32"]["step"] == int(topt.state[tp[0]]["step"])
    assert opt.skipped_steps == len(skip_at)


# --- skipping: nothing changes ------------------------------------------------------------

def _snapshot(opt, P):
    st = {k: (v.copy() if isinstance(v, np.ndarray) else v)
          for k, v in opt.state[0]["float32"].items()}
    return {k: a.copy() for k, a in P.items()}, st


def _same(a, b):
    (pa, sa), (pb, sb) = a, b
    return (all(np.array_equal(pa[k], pb[k]) for k in pa) and sa.keys() == sb.keys()
            and all(np.array_equal(sa[k], sb[k]) for k in sa))


@pytest.mark.parametrize("sd", ["float32", "bfloat16", "int8"])
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_nonfinite_gradient_skips_the_step(sd, bad):
    P = _params()
    opt = fastadam.AdamW(P, lr=1e-2, state_dtype=sd)
    # a skipped *first* step makes no state either
    for k, g in _grads(0, 64.0).items():
        opt.grads[k][...] = g
    opt.grads["u"][5] = bad
    before = _snapshot(opt, P)
    opt.step(grad_scale=64.0)
    assert _same(before, _snapshot(opt, P)) and opt.state[0]["float32"] == {"step": 0}
    for t in range(3):
        for k, g in _grads(t, 64.0).items():
            opt.grads[k][...] = g
        opt.step(grad_scale=64.0)
    opt.grads["w"][3, 4] = bad
    before = _snapshot(opt, P)
    opt.step(grad_scale=64.0)                    # detected in the fused first pass
    opt.step(grad_scale=64.0, max_grad_norm=1.0)
    opt.step(max_grad_norm=1.0)                  # norm clipping checks too
    opt.step(found_inf=True)                     # told by the caller
    assert _same(before, _snapshot(opt, P))
    assert opt.state[0]["float32"]["step"] == 3 and opt.skipped_steps == 5
    opt.grads["w"][3, 4] = 0.0
    opt.step(grad_scale=64.0)
    assert opt.state[0]["float32"]["step"] == 4 and not _same(before, _snapshot(opt, P))


def test_skipped_steps_equal_never_taken():
    """Steps skipped in between leave the run bitwise equal to one without them."""
    P1, _, o1 = _ours("AdamW", 5, step_kw=dict(grad_scale=1.0), lr=1e-2, state_dtype="int8")
    P2 = _params()
    o2 = fastadam.AdamW(P2, lr=1e-2, state_dtype="int8")
    for t in range(5):
        for k, g in _grads(t).items():
            o2.grads[k][...] = g
        o2.step(grad_scale=1.0)
        o2.grads["b"][0] = np.nan
        o2.step(grad_scale=1.0)
    for k in P1:
        np.testing.assert_array_equal(P1[k], P2[k])


def test_bad_transform_arguments_change_nothing():
    P = _params()
    opt = fastadam.Adam(P, lr=1e-2)
    for k, g in _grads(0).items():
        opt.grads[k][...] = g
    opt.step()
    before = _snapshot(opt, P)
    for kw, exc in ((dict(grad_scale=0.0), ValueError), (dict(grad_scale=math.nan), ValueError),
                    (dict(grad_scale="2"), TypeError), (dict(max_grad_norm=-1.0), ValueError),
                    (dict(clip_value=-0.5), ValueError), (dict(found_inf="yes"), TypeError)):
        with pytest.raises(exc):
            opt.step(**kw)
        assert _same(before, _snapshot(opt, P))
    with pytest.raises(ValueError, match="max_grad_norm"):
        fastadam.Adam(_params(), max_grad_norm=-1.0)


# --- the façade's bound route: the same bits as the general one -------------------------

@pytest.mark.parametrize("opt_name,kw", [("AdamW", dict(lr=1e-2, weight_decay=0.1)),
                                         ("NAdam", dict(lr=1e-2)),
                                         ("SGD", dict(lr=1e-2, momentum=0.9)),
                                         ("RMSprop", dict(lr=1e-3, centered=True))])
def test_amp_bound_route_equals_general_route(opt_name, kw):
    """AMP / clipped steps reuse the plain step's bound kernels and cached plans (the
    factor folded into scalar 0): bit for bit what the general route (step_arrays)
    gives, through hyperparameter changes, skipped steps, plain steps and value
    clipping, with float32 and float64 buffers in two groups; the norm the step keeps is
    grad_stats' over all of them."""
    pytest.importorskip("numba")

    def make():
        P = _params()
        P["d"] = np.linspace(-1, 1, 300)                  # a float64 buffer
        groups = [{"params": {"w": P["w"], "d": P["d"]}},
                  {"params": {"b": P["b"], "u": P["u"]}, "lr": kw["lr"] / 2}]
        return getattr(fastadam, opt_name)(groups, backend="numba", **kw)

    o1, o2 = make(), make()
    o2._buffer_backend = lambda fb: NoBind(o2._backend)
    steps = [dict(grad_scale=64.0, max_grad_norm=1.0), dict(grad_scale=64.0, max_grad_norm=1.0),
             dict(grad_scale=32.0), dict(), dict(max_grad_norm=1e9), "lr",
             dict(grad_scale=16.0, max_grad_norm=0.5), dict(found_inf=True), "inf",
             dict(grad_scale=16.0, clip_value=0.3), dict(grad_scale=8.0, max_grad_norm=2.0)]
    for t, s in enumerate(steps):
        scale = s.get("grad_scale", 1.0) if isinstance(s, dict) else 1.0
        g = _grads(t, scale)
        g["d"] = np.cos(np.arange(300) * (t + 1)) * scale
        if s == "inf":
            g["u"][7] = np.inf
            s = dict(grad_scale=1.0)
        if s == "lr":                                    # a scheduler between steps
            for o in (o1, o2):
                o.param_groups[0]["lr"] = kw["lr"] * 0.3
            s = dict(grad_scale=4.0, max_grad_norm=1.0)
            g = {k: v * 4.0 for k, v in g.items()}
        for o in (o1, o2):
            for k, v in g.items():
                o.grads[0 if k in ("w", "d") else 1][k][...] = v
            o.step(**s)
        assert_same_optimizer(o1, o2, f"step {t}: {s}")
        assert o1.skipped_steps == o2.skipped_steps
        assert (o1.last_grad_norm is None) == (o2.last_grad_norm is None)
        if "max_grad_norm" in s:
            assert o1.last_grad_norm == o2.last_grad_norm
            flat = [fb.grad for fp in o1.flat for fb in fp.buffers]
            sumsq, _ = lowp.grad_stats(flat, grad_scale=s.get("grad_scale"))
            assert o1.last_grad_norm == math.sqrt(sumsq)
    assert o1._fast and not o2._fast                     # the bound route was taken
    assert o1.skipped_steps == 2
