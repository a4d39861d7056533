"""Low-precision parameters with float32 master weights (fastadam.lowp.master).

References: the master sequence is compared with fastadam's own float32 Adam step
fed the decoded gradient (bit for bit: the same rule) and with torch.optim.Adam; the
low-precision copy with NumPy's float16 conversion and ml_dtypes' bfloat16 (or a
bit-level transcription written here); stochastic rounding by its two-neighbour
property, its mean over seeds, and the codec specification."""

import numpy as np
import pytest

import fastadam
import fastadam.functional as F
from fastadam import lowp
from fastadam.lowp import master
from fastadam.rules import codecs, param_codecs

numba = pytest.importorskip("numba")
ml_dtypes = pytest.importorskip("ml_dtypes")

BF16 = np.dtype(ml_dtypes.bfloat16)
FORMATS = {"float16": np.dtype(np.float16), "bfloat16": BF16}
HP = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8)
OPTIONS = [dict(), dict(weight_decay=0.1), dict(weight_decay=0.1, decoupled_weight_decay=True),
           dict(maximize=True)]


def _round(x, fmt):
    """Independent round-to-nearest: NumPy's float16 cast, ml_dtypes' bfloat16 cast."""
    with np.errstate(over="ignore"):
        return np.asarray(x, np.float32).astype(FORMATS[fmt])


def _bits(a):
    return np.ascontiguousarray(a).view(np.uint16)


def _run(fmt, n, steps, opts=(), *, backend="numba", sd="float32", grad32=False, seed=0,
         rounding="nearest", **kw):
    """``steps`` master-weight steps and the same float32 Adam steps on the decoded grads."""
    rng = np.random.default_rng(seed)
    dt = FORMATS[fmt]
    w = (rng.standard_normal(n) * 2).astype(np.float32)
    lo = w.astype(dt)
    w = lo.astype(np.float32)                       # master starts exactly at the params
    st = fastadam.lowp.new_state(sd, n)
    w32, m32, v32 = w.copy(), np.zeros(n, np.float32), np.zeros(n, np.float32)
    for t in range(1, steps + 1):
        g = (rng.standard_normal(n) * np.exp(rng.uniform(-3, 1, n))).astype(dt)
        g32 = g.astype(np.float32)
        F.adam_(lo, g32 if grad32 else g, st["exp_avg"], st["exp_avg_sq"], master_param=w,
                step=t, state_dtype=sd, backend=backend, param_rounding=rounding,
                **dict(HP, **dict(opts), **kw))
        F.adam_(w32, g32, m32, v32, step=t, backend="numba", **dict(HP, **dict(opts), **kw))
    return lo, w, st, (w32, m32, v32)


# --- the kernel: master sequence = float32 Adam, copy = round(master) ----------------

@pytest.mark.parametrize("fmt", ["float16", "bfloat16"])
@pytest.mark.parametrize("n", [0, 1, 17, 513, 100003])
def test_master_is_float32_adam_bitwise_and_copy_is_nearest(fmt, n):
    lo, w, st, (w32, m32, v32) = _run(fmt, n, 3)
    np.testing.assert_array_equal(w, w32)
    np.testing.assert_array_equal(st["exp_avg"], m32)
    np.testing.assert_array_equal(st["exp_avg_sq"], v32)
    np.testing.assert_array_equal(_bits(lo), _bits(_round(w, fmt)))


@pytest.mark.parametrize("fmt", ["float16", "bfloat16"])
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "-".join(o) or "plain")
def test_options_and_float32_grads(fmt, opts):
    for grad32 in (False, True):
        lo, w, st, (w32, m32, v32) = _run(fmt, 513, 3, opts.items(), grad32=grad32)
        np.testing.assert_array_equal(w, w32)
        np.testing.assert_array_equal(st["exp_avg_sq"], v32)
        np.testing.assert_array_equal(_bits(lo), _bits(_round(w, fmt)))


@pytest.mark.parametrize("fmt", ["float16", "bfloat16"])
def test_fused_transform_matches_float32_transform(fmt):
    kw = dict(grad_scale=8.0, clip_coef=0.5, clip_value=0.3)
    rng = np.random.default_rng(1)
    n = 40000                                   # parallel path
    dt = FORMATS[fmt]
    lo = rng.standard_normal(n).astype(dt)
    w = lo.astype(np.float32)
    m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
    w32, m32, v32 = w.copy(), m.copy(), v.copy()
    g = (rng.standard_normal(n) * 4).astype(dt)
    F.adam_(lo, g, m, v, master_param=w, step=1, backend="numba", **HP, **kw)
    F.adam_(w32, g.astype(np.float32), m32, v32, step=1, backend="numba", **HP, **kw)
    np.testing.assert_array_equal(w, w32)
    np.testing.assert_array_equal(_bits(lo), _bits(_round(w, fmt)))


@pytest.mark.parametrize("fmt", ["float16", "bfloat16"])
@pytest.mark.parametrize("sd", ["float32", "bfloat16"])
def test_numpy_reference_agrees_with_kernel(fmt, sd):
    for rounding in ("nearest", "stochastic"):
        a = _run(fmt, 2000, 3, backend="numba", sd=sd, rounding=rounding)
        b = _run(fmt, 2000, 3, backend="numpy", sd=sd, rounding=rounding)
        np.testing.assert_allclose(a[1], b[1], rtol=1e-6, atol=1e-7)
        # each copy is its own master rounded: where the masters agree, so do the copies
        same = a[1] == b[1]
        assert same.mean() > 0.9
        np.testing.assert_array_equal(_bits(a[0])[same], _bits(b[0])[same])
        if rounding == "nearest":
            np.testing.assert_array_equal(_bits(b[0]), _bits(_round(b[1], fmt)))


def test_bfloat16_state_with_master_is_bounded_by_its_rounding():
    lo, w, st, (w32, m32, v32) = _run("bfloat16", 4099, 1, sd="bfloat16")
    np.testing.assert_array_equal(w, w32)       # this step's exact moments drive the update
    m = fastadam.lowp.bf16_decode(st["exp_avg"])
    assert np.all(np.abs(m - m32) < 2.0 ** -7 * np.abs(m32) + 1e-38)


# --- codecs: kernel = specification = NumPy reference ---------------------------------

@numba.njit
def _encode(x, seed, f16, sr):
    out = np.empty(x.shape[0], np.uint16)
    for i in range(x.shape[0]):
        out[i] = _K.k_lo_encode(x[i], k_hash_index(i), seed, f16, sr)
    return out


from fastadam.kernels import cpu_master as _K  # noqa: E402
from fastadam.kernels.cpu_lowp import k_hash_index  # noqa: E402


def _special_values():
    rng = np.random.default_rng(5)
    x = (rng.choice([-1, 1], 3000) * np.exp2(rng.uniform(-30, 17, 3000))).astype(np.float32)
    sp = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 65504, 65519, 65520, -7e4,
                   2.0 ** -24, 2.0 ** -25, 3 * 2.0 ** -26, 2.0 ** -14, 6e-8, 1e-45, 3.4e38,
                   1 + 2.0 ** -11, 1 + 3 * 2.0 ** -11], np.float32)
    return np.concatenate([sp, x])


@pytest.mark.parametrize("fmt", ["float16", "bfloat16"])
def test_codecs_kernel_spec_and_reference_agree(fmt):
    x = _special_values()
    seed = 0x2545F491
    f16 = fmt == "float16"
    near = _encode(x, np.uint32(seed), f16, False)
    sr = _encode(x, np.uint32(seed), f16, True)
    u = x.view(np.uint32)
    if f16:
        spec_near = [param_codecs.f16_encode(int(b)) for b in u]
        spec_sr = [param_codecs.f16_encode_sr(int(b), codecs.sr_bits(i, seed))
                   for i, b in enumerate(u)]
        ref_sr = master.f16_encode_sr(x, seed)
    else:
        spec_near = [codecs.bf16_encode(int(b)) for b in u]
        spec_sr = [codecs.bf16_encode_sr(int(b), codecs.sr_bits(i, seed)) for i, b in enumerate(u)]
        ref_sr = fastadam.lowp.bf16_encode_sr(x, seed)
    np.testing.assert_array_equal(near, np.array(spec_near, np.uint16))
    np.testing.assert_array_equal(sr, np.array(spec_sr, np.uint16))
    np.testing.assert_array_equal(sr, ref_sr)
    # nearest is the independent conversion (NaN: a NaN of the same sign)
    want = _bits(_round(x, fmt))
    nan = np.isnan(x)
    np.testing.assert_array_equal(near[~nan], want[~nan])
    got = near.view(FORMATS[fmt]).astype(np.float32)
    assert np.isnan(got[nan]).all() and np.array_equal(np.signbit(got[nan]), np.signbit(x[nan]))


def test_f16_decode_spec_is_exact():
    h = np.arange(65536, dtype=np.uint32)
    want = h.astype(np.uint16).view(np.float16).astype(np.float32)
    got = np.array([param_codecs.f16_decode(int(i)) for i in h], np.uint32).view(np.float32)
    ok = ~np.isnan(want)
    np.testing.assert_array_equal(got[ok], want[ok])
    assert np.isnan(got[~ok]).all()


def _neighbours(x, fmt):
    """The two values of ``fmt`` around each float32 ``x`` (equal when exact), by bits."""
    near = _bits(_round(x, fmt)).astype(np.int64)
    val = near.astype(np.uint16).view(FORMATS[fmt]).astype(np.float32)
    # one step of the magnitude's bit pattern towards x
    toward = np.where(np.abs(val) < np.abs(x), near + 1, np.where(np.abs(val) > np.abs(x),
                                                                 near - 1, near))
    other = toward.astype(np.uint16).view(FORMATS[fmt]).astype(np.float32)
    return np.minimum(val, other), np.maximum(val, other)


@pytest.mark.parametrize("fmt", ["float16", "bfloat16"])
def test_stochastic_rounding_picks_a_neighbour_and_is_unbiased(fmt):
    rng = np.random.default_rng(2)
    # values on a grid fraction f of a spacing: normal, float16 subnormal, below 2**-24
    base = np.array([1.0, -3.0, 1000.0, 2.0 ** -16, 2.0 ** -20, 2.0 ** -26], np.float32)
    frac = rng.uniform(0.05, 0.95, base.size)
    q = np.where(np.abs(base) >= 2.0 ** -14, np.abs(base) * 2.0 ** -10, 2.0 ** -24) \
        if fmt == "float16" else np.abs(base) * 2.0 ** -7
    x = (base + np.sign(base) * frac * q).astype(np.float32)
    x[-1] = np.float32(frac[-1] * 2.0 ** -24) if fmt == "float16" else x[-1]
    n = x.size
    w = x.copy()
    lo = np.zeros(n, FORMATS[fmt])
    m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
    steps = 3000
    outs = np.empty((steps, n), np.float32)
    for t in range(1, steps + 1):     # lr = 0: the master stays x; the seed changes per step
        F.adam_(lo, np.zeros(n, FORMATS[fmt]), m, v, master_param=w, step=t, lr=0.0,
                beta1=0.9, beta2=0.999, eps=1e-8, param_rounding="stochastic")
        outs[t - 1] = lo.astype(np.float32)
    np.testing.assert_array_equal(w, x)
    lo_n, hi_n = _neighbours(x, fmt)
    assert np.all((outs == lo_n) | (outs == hi_n))
    gap = (hi_n - lo_n).astype(np.float64)
    p = (x - lo_n) / gap
    mean = outs.astype(np.float64).mean(axis=0)
    sigma = gap * np.sqrt(p * (1 - p) / steps)
    assert np.all(np.abs(mean - x) <= 5 * sigma + gap * 2.0 ** -16), (mean - x) / gap


@pytest.mark.parametrize("fmt", ["float16", "bfloat16"])
def test_special_values_of_the_copy(fmt):
    x = np.array([np.nan, np.inf, -np.inf, 7e4, -65519.0, 65520.0, 3e-6, -1e-7, 2e-8, 0.0,
                  -0.0, 1e-40, 3e38], np.float32)
    for rounding in ("nearest", "stochastic"):
        w = x.copy()
        lo = np.zeros(x.size, FORMATS[fmt])
        m, v = np.zeros(x.size, np.float32), np.zeros(x.size, np.float32)
        F.adam_(lo, np.zeros(x.size, FORMATS[fmt]), m, v, master_param=w, step=1, lr=0.0,
                beta1=0.9, beta2=0.999, eps=1e-8, param_rounding=rounding)
        got = lo.astype(np.float32)
        assert np.isnan(got[0]) and got[1] == np.inf and got[2] == -np.inf
        if fmt == "float16":
            assert got[3] == np.inf and got[4] == -65504 and got[5] == np.inf
            assert got[12] == np.inf
        else:
            assert got[3] == _round(7e4, fmt).astype(np.float32)
        if rounding == "nearest":
            ok = ~np.isnan(x)
            np.testing.assert_array_equal(_bits(lo)[ok], _bits(_round(x, fmt))[ok])
        else:
            lo_n, hi_n = _neighbours(x[3:], fmt)
            r = got[3:]
            assert np.all((r == lo_n) | (r == hi_n))


def test_nonfinite_float16_gradient_propagates_like_float32():
    lo, w = np.ones(4, np.float16), np.ones(4, np.float32)
    m, v = np.zeros(4, np.float32), np.zeros(4, np.float32)
    g = np.array([np.inf, np.nan, 1, 1], np.float16)
    F.adam_(lo, g, m, v, master_param=w, step=1, **HP)
    w32, m32, v32 = np.ones(4, np.float32), np.zeros(4, np.float32), np.zeros(4, np.float32)
    F.adam_(w32, g.astype(np.float32), m32, v32, step=1, **HP)
    np.testing.assert_array_equal(w, w32)
    assert np.isnan(lo[:2]).all() and np.array_equal(lo[2:], w[2:].astype(np.float16))


def test_grad_stats_reads_low_precision_gradients():
    rng = np.random.default_rng(4)
    for dt in (np.float16, BF16):
        g = rng.standard_normal(70000).astype(dt)
        g32 = g.astype(np.float32)
        for be in ("numba", "numpy"):
            s, ok = fastadam.lowp.grad_stats([g], grad_scale=2.0, clip_value=1.5, backend=be)
            y = np.clip(g32.astype(np.float64) / 2.0, -1.5, 1.5)
            assert ok and s == pytest.approx(float(y @ y), rel=1e-5)
            bad = g.copy()
            bad[12345] = np.float32(np.inf) if dt == np.float16 else np.float32(np.nan)
            assert not fastadam.lowp.grad_stats([bad], backend=be)[1]
    # a float16 overflow to inf (the value itself is finite in float32) is found
    with np.errstate(over="ignore"):
        h = np.full(300, 60000, np.float16) * np.float16(2)
    assert not fastadam.lowp.grad_stats([h])[1]


# --- bad input: nothing written ---------------------------------------------------------

def test_bad_input_raises_before_any_write():
    n = 300
    rng = np.random.default_rng(0)
    lo = rng.standard_normal(n).astype(np.float16)
    w = lo.astype(np.float32)
    g = rng.standard_normal(n).astype(np.float16)
    m, v = np.ones(n, np.float32), np.ones(n, np.float32)
    before = [a.copy() for a in (lo, w, m, v)]
    bad = [
        (dict(master_param=None), TypeError, "master_param"),
        (dict(master_param=w.astype(np.float64)), TypeError, "master_param"),
        (dict(master_param=w[:10]), ValueError, "shape"),
        (dict(master_param=np.zeros(2 * n, np.float32)[::2]), ValueError, "C-contiguous"),
        (dict(master_param=lo.view(np.uint8)[:0]), TypeError, "float32"),
        (dict(grad=g.astype(np.float64)), TypeError, "grad"),
        (dict(grad=w), ValueError, "overlap"),
        (dict(exp_avg=m.astype(np.float16)), TypeError, "exp_avg"),
        (dict(exp_avg_sq=v[:-1]), ValueError, "exp_avg_sq has shape"),
        (dict(exp_avg_sq=None), ValueError, "needs the exp_avg_sq array"),
        (dict(exp_avg=m.tolist()), TypeError, "exp_avg must be a numpy.ndarray"),
        (dict(state_dtype="int8"), ValueError, "int8"),
        (dict(amsgrad=True, max_exp_avg_sq=np.zeros(n, np.float32)), ValueError, "amsgrad"),
        (dict(param_rounding="up"), ValueError, "param_rounding"),
        (dict(lr=-1.0), ValueError, "learning rate"),
        (dict(grad_scale=0.0), ValueError, "grad_scale"),
    ]
    for kw, exc, msg in bad:
        args = dict(grad=g, exp_avg=m, exp_avg_sq=v, master_param=w, step=1, **HP)
        args.update(kw)
        with pytest.raises(exc, match=msg):
            F.adam_(lo, **args)
        assert all(np.array_equal(a, b) for a, b in zip(before, (lo, w, m, v))), kw
    p32 = w.copy()
    with pytest.raises(ValueError, match="master_param"):
        F.adam_(p32, g.astype(np.float32), m, v, master_param=w.copy(), step=1, **HP)
    with pytest.raises(ValueError, match="param_rounding"):
        F.adam_(p32, g.astype(np.float32), m, v, param_rounding="stochastic", step=1, **HP)
    assert np.array_equal(p32, w) and np.array_equal(m, before[2])
    if "cython" in fastadam.available_backends():
        with pytest.raises(fastadam.BackendUnavailableError, match="numba and numpy"):
            F.adam_(lo, g, m, v, master_param=w, step=1, backend="cython", **HP)
    assert all(np.array_equal(a, b) for a, b in zip(before, (lo, w, m, v)))


# --- the NumPy façade -----------------------------------------------------------------

def _facade_run(dt, steps, stop=None, **kw):
    rng = np.random.default_rng(7)
    P = {"w": rng.standard_normal((40, 30)).astype(dt), "b": rng.standard_normal(30).astype(dt),
         "s": np.ones(5, np.float32)}
    opt = fastadam.AdamW(P, lr=1e-2, **kw)
    for t in range(steps):
        if t == stop:
            ckpt = opt.state_dict()
            P = {k: a.copy() for k, a in P.items()}
            opt = fastadam.AdamW(P, lr=1e-2, **kw)
            opt.load_state_dict(ckpt)
        for k, a in opt.grads.items():
            a[...] = rng.standard_normal(a.shape).astype(a.dtype)
        opt.step()
    return P, opt


@pytest.mark.parametrize("dt", [np.float16, BF16], ids=["float16", "bfloat16"])
def test_facade_master_weights(dt):
    rng = np.random.default_rng(7)
    P = {"w": rng.standard_normal((40, 30)).astype(dt)}
    w32 = P["w"].astype(np.float32).reshape(-1)
    m32, v32 = np.zeros_like(w32), np.zeros_like(w32)
    opt = fastadam.AdamW(P, lr=1e-2)
    assert opt.grads["w"].dtype == dt
    for t in range(1, 5):
        g = rng.standard_normal((40, 30)).astype(dt)
        opt.grads["w"][...] = g
        opt.step()
        F.adam_(w32, g.astype(np.float32).reshape(-1), m32, v32, step=t, lr=1e-2, beta1=0.9,
                beta2=0.999, eps=1e-8, weight_decay=1e-2, decoupled_weight_decay=True)
    st = opt.state[0][str(np.dtype(dt))]
    assert st["master_param"].dtype == np.float32 and st["step"] == 4
    np.testing.assert_array_equal(st["master_param"], w32)
    want = _round(w32, master.param_format(dt))
    np.testing.assert_array_equal(_bits(P["w"]).reshape(-1), _bits(want))


@pytest.mark.parametrize("dt", [np.float16, BF16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("kw", [dict(), dict(param_rounding="stochastic", state_dtype="bfloat16")],
                         ids=["nearest", "sr-bf16state"])
def test_facade_state_dict_resume_is_bitwise(dt, kw):
    P1, o1 = _facade_run(dt, 6, **kw)
    P2, o2 = _facade_run(dt, 6, stop=3, **kw)
    for k in P1:
        np.testing.assert_array_equal(_bits(P1[k]) if P1[k].itemsize == 2 else P1[k],
                                      _bits(P2[k]) if P2[k].itemsize == 2 else P2[k])
    for a, b in zip(o1.state_dict()["state"], o2.state_dict()["state"]):
        assert a.keys() == b.keys()
        for k in a:
            if isinstance(a[k], np.ndarray):
                np.testing.assert_array_equal(a[k], b[k])


def test_facade_amp_skip_and_clipping_with_float16():
    P = {"w": np.ones(1000, np.float16)}
    opt = fastadam.Adam(P, lr=1e-2, max_grad_norm=1.0)
    opt.grads["w"][...] = 3
    opt.step()
    st = opt.state[0]["float16"]
    snap = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in st.items()}
    p0 = P["w"].copy()
    opt.grads["w"][7] = np.float16(np.inf)
    opt.step(grad_scale=1024.0)
    assert opt.skipped_steps == 1 and st["step"] == snap["step"]
    assert np.array_equal(P["w"], p0)
    assert all(np.array_equal(st[k], snap[k]) for k in snap if k != "step")
    # clipped + unscaled step = float32 Adam on the clipped float32 gradient
    Q = {"w": np.ones(1000, np.float32)}
    ref = fastadam.Adam(Q, lr=1e-2, max_grad_norm=1.0)
    ref.grads["w"][...] = 3
    ref.step()
    g = (np.arange(1000) % 7).astype(np.float16) * np.float16(64)
    opt.grads["w"][...] = g
    ref.grads["w"][...] = g.astype(np.float32)
    opt.step(grad_scale=64.0)
    ref.step(grad_scale=64.0)
    assert opt.last_grad_norm == pytest.approx(ref.last_grad_norm, rel=1e-6)
    np.testing.assert_allclose(st["master_param"], Q["w"], rtol=1e-6)


def test_facade_refusals():
    for cls in (fastadam.SGD, fastadam.RMSprop, fastadam.NAdam):
        with pytest.raises(TypeError, match="Adam and AdamW"):
            cls([np.zeros(3, np.float16)])
    with pytest.raises(ValueError, match="int8"):
        fastadam.Adam([np.zeros(3, np.float16)], state_dtype="int8")
    with pytest.raises(ValueError, match="amsgrad"):
        fastadam.Adam([np.zeros(3, np.float16)], amsgrad=True)
    with pytest.raises(ValueError, match="param_rounding"):
        fastadam.Adam([np.zeros(3, np.float16)], param_rounding="down")
    if "cython" in fastadam.available_backends():
        d = {"w": np.zeros(3, np.float16)}
        with pytest.raises(fastadam.BackendUnavailableError, match="numba and numpy"):
            fastadam.Adam(d, backend="cython")
        assert d["w"].base is None                  # refused before the copy
    opt = fastadam.Adam([np.zeros(3, np.float16)])
    opt.param_groups[0]["amsgrad"] = True           # changed later: refused at the step
    with pytest.raises(ValueError, match="amsgrad"):
        opt.step()
    assert opt.state[0]["float16"] == {"step": 0}


def test_seed_model_float16_trains_like_float32():
    from fastadam import demo
    X, y = demo.make_data(1024)
    losses = {}
    for dt in (np.float32, np.float16):
        P = {k: a.astype(dt) for k, a in demo.init_params().items()}
        opt = fastadam.Adam(P, lr=1e-2)
        demo.fit(opt.params, opt, X.astype(dt), y.astype(dt), epochs=3,
                 rng=np.random.default_rng(0))
        P32 = {k: a.astype(np.float32) for k, a in opt.params.items()}
        losses[dt] = demo.evaluate(P32, X, y)[0]
    assert losses[np.float16] < 0.6
    assert abs(losses[np.float16] - losses[np.float32]) <= 0.05 * losses[np.float32]


# --- fastadam.torch ------------------------------------------------------------------

def _torch_models(dt, seed=0):
    torch = pytest.importorskip("torch")
    torch.manual_seed(seed)
    ref = torch.nn.Sequential(torch.nn.Linear(20, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    low = torch.nn.Sequential(torch.nn.Linear(20, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    low.load_state_dict(ref.state_dict())
    low.to(dt)
    with torch.no_grad():
        for a, b in zip(ref.parameters(), low.parameters()):
            a.copy_(b.float())                  # the float32 run starts at the same values
    return torch, ref, low


@pytest.mark.parametrize("dtn", ["bfloat16", "float16"])
def test_torch_low_precision_model_trains_like_torch_optim_on_float32(dtn):
    torch = pytest.importorskip("torch")
    import fastadam.torch as ft
    dt = getattr(torch, dtn)
    torch, ref, low = _torch_models(dt)
    opt = ft.AdamW(low.parameters(), lr=1e-2)
    ropt = torch.optim.AdamW(ref.parameters(), lr=1e-2)
    X, y = torch.randn(64, 20), torch.randn(64, 1)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = ((low(X.to(dt)).float() - y) ** 2).mean()
        loss.backward()
        for a, b in zip(ref.parameters(), low.parameters()):
            a.grad = b.grad.float()             # the same (low-precision) gradients
        opt.step()
        ropt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    for a, b in zip(ref.parameters(), low.parameters()):
        st = opt.state[b]
        assert st["master_param"].dtype == torch.float32 and b.dtype == dt
        torch.testing.assert_close(st["master_param"], a.detach(), rtol=1e-5, atol=1e-6)
        assert torch.equal(st["master_param"].to(dt), b.detach())     # nearest copy


@pytest.mark.parametrize("dtn", ["bfloat16", "float16"])
def test_torch_grad_scaler_skip_leaves_everything_unchanged(dtn):
    torch = pytest.importorskip("torch")
    import fastadam.torch as ft
    dt = getattr(torch, dtn)
    torch, ref, low = _torch_models(dt, seed=1)
    opt = ft.Adam(low.parameters(), lr=1e-2)
    ropt = torch.optim.Adam(ref.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    X = torch.randn(32, 20)

    def backward(model, d):
        loss = model(X.to(d)).float().pow(2).mean()
        scaler.scale(loss).backward()

    for _ in range(3):
        opt.zero_grad()
        backward(low, dt)
        for a, b in zip(ref.parameters(), low.parameters()):
            a.grad = b.grad.float() / 256.0     # what the unscaled step must see
        scaler.step(opt)
        scaler.update()
        ropt.step()
    for a, b in zip(ref.parameters(), low.parameters()):
        torch.testing.assert_close(opt.state[b]["master_param"], a.detach(), rtol=1e-5,
                                   atol=1e-6)
    params = [p.detach().clone() for p in low.parameters()]
    state = {k: {kk: (vv.clone() if torch.is_tensor(vv) else vv) for kk, vv in v.items()}
             for k, v in opt.state_dict()["state"].items()}
    opt.zero_grad()
    backward(low, dt)
    next(low.parameters()).grad[0, 0] = float("inf")
    scaler.step(opt)
    scaler.update()
    assert opt.skipped_steps == 1 and scaler.get_scale() == 128.0
    assert all(torch.equal(a, p.detach()) for a, p in zip(params, low.parameters()))
    now = opt.state_dict()["state"]
    assert all(torch.equal(state[k][kk], now[k][kk]) for k in state for kk in state[k])


@pytest.mark.parametrize("dtn", ["bfloat16", "float16"])
def test_torch_state_dict_round_trip_and_master_from_param(dtn):
    torch = pytest.importorskip("torch")
    import fastadam.torch as ft
    dt = getattr(torch, dtn)
    X = torch.randn(16, 20)

    def steps(model, opt, k):
        for _ in range(k):
            opt.zero_grad()
            model(X.to(dt)).float().pow(2).mean().backward()
            opt.step()

    _, _, m1 = _torch_models(dt, seed=2)
    o1 = ft.Adam(m1.parameters(), lr=1e-2, param_rounding="stochastic")
    steps(m1, o1, 3)
    sd = o1.state_dict()
    assert all(v["master_param"].dtype == torch.float32 for v in sd["state"].values())
    _, _, m2 = _torch_models(dt, seed=2)
    m2.load_state_dict(m1.state_dict())
    o2 = ft.Adam(m2.parameters(), lr=1e-2, param_rounding="stochastic")
    o2.load_state_dict(sd)
    steps(m1, o1, 2)
    steps(m2, o2, 2)
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)
        assert torch.equal(o1.state[a]["master_param"], o2.state[b]["master_param"])
    # a checkpoint without master_param (torch.optim's, say): the master is the param
    sd = o1.state_dict()
    for v in sd["state"].values():
        del v["master_param"]
    o2.load_state_dict(sd)
    for p in m2.parameters():
        assert torch.equal(o2.state[p]["master_param"], p.detach().float())


def test_torch_refusals():
    torch = pytest.importorskip("torch")
    import fastadam.torch as ft
    p = torch.nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))
    for cls in (ft.SGD, ft.RMSprop, ft.Adagrad):
        with pytest.raises(TypeError, match="Adam and AdamW"):
            cls([p], lr=0.1)
    with pytest.raises(ValueError, match="int8"):
        ft.Adam([p], state_dtype="int8")
    with pytest.raises(ValueError, match="amsgrad"):
        ft.Adam([p], amsgrad=True)
    with pytest.raises(ValueError, match="param_rounding"):
        ft.Adam([p], param_rounding="zero")


@pytest.mark.parametrize("dt", [np.float16, BF16], ids=["float16", "bfloat16"])
def test_facade_sync_master_adopts_outside_changes(dt):
    rng = np.random.default_rng(3)
    P = {"w": rng.standard_normal(64).astype(dt), "s": np.ones(4, np.float32)}
    opt = fastadam.Adam(P, lr=1e-3)
    assert opt.sync_master() == 0                  # no master made yet
    opt.grads["w"][...] = rng.standard_normal(64).astype(dt)
    opt.step()
    new = rng.standard_normal(64).astype(dt)
    P["w"][...] = new                              # changed outside the optimizer
    st = opt.state[0][str(np.dtype(dt))]
    assert not np.array_equal(st["master_param"], new.astype(np.float32))
    m_before = st["exp_avg"].copy()
    assert opt.sync_master() == 64
    np.testing.assert_array_equal(st["master_param"], new.astype(np.float32))
    np.testing.assert_array_equal(st["exp_avg"], m_before)     # moments kept
    assert st["step"] == 1
    # the next step starts from the new values: a zero-gradient step with lr=0 keeps them
    opt.param_groups[0]["lr"] = 0.0
    opt.grads["w"][...] = 0
    opt.step()
    np.testing.assert_array_equal(_bits(P["w"]), _bits(new))


@pytest.mark.parametrize("dtn", ["bfloat16", "float16"])
def test_torch_sync_master_after_model_load(dtn):
    torch, _, low = _torch_models(getattr(pytest.importorskip("torch"), dtn))
    import fastadam.torch as ft
    opt = ft.Adam(low.parameters(), lr=1e-2)
    x = torch.randn(8, 20, dtype=low[0].weight.dtype)
    low(x).float().pow(2).mean().backward()
    opt.step()
    fresh = {k: torch.randn_like(v) for k, v in low.state_dict().items()}
    low.load_state_dict(fresh)                     # model weights replaced mid-training
    assert opt.sync_master() == sum(p.numel() for p in low.parameters())
    for p in low.parameters():
        assert torch.equal(opt.state[p]["master_param"], p.detach().float())
    for g in opt.param_groups:
        g["lr"] = 0.0
    opt.zero_grad()
    low(x).float().pow(2).mean().backward()
    opt.step()                                     # lr 0: the loaded weights stay
    for k, v in low.state_dict().items():
        assert torch.equal(v, fresh[k]), k


def test_torch_amsgrad_set_later_refused_before_any_bucket_steps():
    torch = pytest.importorskip("torch")
    import fastadam.torch as ft
    a = torch.nn.Parameter(torch.ones(4))
    h = torch.nn.Parameter(torch.ones(4, dtype=torch.float16))
    opt = ft.Adam([a, h], lr=0.1)
    a.grad, h.grad = torch.ones(4), torch.ones(4, dtype=torch.float16)
    opt.step()
    before = a.detach().clone(), h.detach().clone(), opt.state[a]["step"].clone()
    opt.param_groups[0]["amsgrad"] = True
    with pytest.raises(ValueError, match="amsgrad"):
        opt.step()
    assert torch.equal(a, before[0]) and torch.equal(h, before[1])
    assert torch.equal(opt.state[a]["step"], before[2])
    assert "max_exp_avg_sq" not in opt.state[a]


@pytest.mark.parametrize("dtn", ["bfloat16", "float16"])
def test_torch_replaced_param_data_reaches_the_master(dtn):
    torch = pytest.importorskip("torch")
    import fastadam.torch as ft
    dt = getattr(torch, dtn)
    p = torch.nn.Parameter(torch.ones(6, dtype=dt))
    opt = ft.Adam([p], lr=0.0)
    p.grad = torch.ones(6, dtype=dt)
    opt.step()
    p.data = torch.full((6,), 5.0, dtype=dt)           # new storage, new values
    p.grad = torch.zeros(6, dtype=dt)
    opt.step()                                         # lr 0: the values must stay
    assert torch.equal(p.detach(), torch.full((6,), 5.0, dtype=dt))
    assert torch.equal(opt.state[p]["master_param"], torch.full((6,), 5.0))


def test_stochastic_rounding_streams_are_per_element_of_the_optimizer():
    """Equal parameters in different runs, buckets or groups draw different rounding bits,
    and how a step is split into kernel calls does not change the bits."""
    torch = pytest.importorskip("torch")
    import fastadam.torch as ft
    n = 20000                                          # one kernel call per parameter

    def run(set_to_none, groups, sd="float32", steps=3):
        torch.manual_seed(0)
        w = torch.randn(n) * 3
        ps = [torch.nn.Parameter(w.to(torch.bfloat16)) for _ in range(2)]
        args = [{"params": [q]} for q in ps] if groups else ps
        opt = ft.Adam(args, lr=1e-3, param_rounding="stochastic", state_dtype=sd)
        for t in range(steps):
            opt.zero_grad(set_to_none=set_to_none)
            for q in ps:
                q.grad = (torch.cos(w * (t + 1))).to(torch.bfloat16)
            opt.step()
        return ps, opt
    (a, b), opt = run(True, False)
    # the masters are equal (same rule, same inputs); their roundings are not
    assert torch.equal(opt.state[a]["master_param"], opt.state[b]["master_param"])
    assert (a != b).float().mean() > 0.05
    (a2, b2), _ = run(False, False)                    # one call over both: same bits
    assert torch.equal(a, a2) and torch.equal(b, b2)
    (a3, b3), _ = run(True, True)                      # two groups: different streams too
    assert (a3 != b3).float().mean() > 0.05
    # bf16 moments: after one step (equal float32 values) their codes differ too
    (a4, b4), opt4 = run(True, False, "bfloat16", steps=1)
    sa, sb = opt4.state[a4]["exp_avg_sq"], opt4.state[b4]["exp_avg_sq"]
    assert (sa != sb).float().mean() > 0.05


def test_facade_groups_draw_distinct_rounding_bits():
    w = np.random.default_rng(0).standard_normal(5000).astype(np.float32) * 3
    P = [{"params": [w.astype(BF16)]}, {"params": [w.astype(BF16)]}]
    opt = fastadam.Adam(P, lr=1e-3, param_rounding="stochastic")
    for t in range(3):
        for g in opt.grads:
            g[0][...] = np.cos(w * (t + 1)).astype(BF16)
        opt.step()
    a, b = opt.params[0][0], opt.params[1][0]
    np.testing.assert_array_equal(opt.state[0]["bfloat16"]["master_param"],
                                  opt.state[1]["bfloat16"]["master_param"])
    assert (_bits(a) != _bits(b)).mean() > 0.05


@pytest.mark.parametrize("name", ["master_bf16", "master_f16"])
@pytest.mark.parametrize("state", ["float32", "bfloat16"])
def test_master_kernels_stay_float32(name, state):
    """The optimized LLVM IR of the master-weight loops has no double-precision
    arithmetic (float16 is widened to float32 with ``fpext half``, which is exact)."""
    numba = pytest.importorskip("numba")
    from fastadam._config import FASTMATH
    k = numba.njit(fastmath=FASTMATH, error_model="numpy", boundscheck=False)(getattr(_K, name))
    f, n = np.float32, 300
    st = np.zeros(n, f) if state == "float32" else np.zeros(n, np.uint16)
    k(np.zeros(n, np.uint16), np.zeros(n, np.uint16), np.zeros(n, f), st, st.copy(),
      np.uint32(1), np.uint32(2), np.uint32(3), True, f(1), f(np.inf), *(f(1),) * 9)
    ir = "\n".join(k.inspect_llvm().values())
    body = ir[ir.index("define"):]
    for op in ("fadd double", "fmul double", "fdiv double", "fsub double", "fpext float",
               "llvm.sqrt.f64"):
        assert op not in body, f"{name} does {op}"


@pytest.mark.parametrize("name", ["master_bf16", "master_f16"])
@pytest.mark.parametrize("state", ["float32", "bfloat16"])
@pytest.mark.parametrize("n", [1, 129, 4097, 70001])
def test_master_kernel_loop_copies_agree(name, state, n):
    """The master-weight loops keep a plain copy (no gradient transform, ``gsign == 1``
    and ``l2 == 0`` as constants) beside the general one.  With ``clip`` the largest
    float32 the transform is the identity on finite gradients, so both copies must give
    the same bits, for every option (maximize and L2 decay take the general copy either
    way); sizes straddle the vector, sub-block, chunk and parallel thresholds."""
    pytest.importorskip("numba")
    from cases import LOOP_COPY_OPTIONS, adam_kernel_scalars, loop_copy_problem
    f = np.float32
    fmax = f(np.finfo(np.float32).max)
    w0, g, m0, v0 = loop_copy_problem(n, BF16 if name == "master_bf16" else np.float16)
    for opts in LOOP_COPY_OPTIONS:
        sc = adam_kernel_scalars(opts)
        out = []
        for clip in (f(np.inf), fmax):          # no transform / the identity transform
            w = w0.copy()
            lo = np.zeros(n, np.uint16)
            if state == "float32":
                st = [m0.copy(), v0.copy()]
            else:
                st = [lowp.bf16_encode(m0), lowp.bf16_encode(v0)]
            _K.run(name, (lo, g.view(np.uint16), w) + tuple(st),
                   (np.uint32(11), np.uint32(12), np.uint32(13), True, f(1), clip) + sc)
            out.append([lo, w] + st)
        for a, b in zip(*out):
            np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))
