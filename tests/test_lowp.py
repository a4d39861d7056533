"""Reduced-precision Adam state (bfloat16, blockwise int8): per-step error bounds
derived from the codecs' resolution, numba-vs-NumPy-reference parity, training on
the seed's model, memory per parameter, checkpoints and input checks."""

import numpy as np
import pytest

import fastadam
import fastadam.functional as F
from cases import NoBind, assert_same_optimizer
from fastadam import lowp
from fastadam.rules import codecs as C

pytest.importorskip("numba")

HP = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8)
OPTIONS = [dict(), dict(weight_decay=0.1), dict(weight_decay=0.1, decoupled_weight_decay=True),
           dict(maximize=True)]
SIZES = (0, 1, 3, 17, 255, 256, 257, 513, 100003)


def _encoded_state(sd, n, rng):
    """A random non-trivial state in ``sd`` (and its exact float32 value)."""
    m = (rng.standard_normal(n) * np.exp(rng.uniform(-6, 0, n))).astype(np.float32)
    v = (m.astype(np.float64) ** 2 * rng.uniform(1, 50, n)).astype(np.float32)
    st = lowp.new_state(sd, n)
    if sd == "bfloat16":
        st["exp_avg"][...], st["exp_avg_sq"][...] = lowp.bf16_encode(m), lowp.bf16_encode(v)
    elif sd == "int8":
        st["exp_avg"][...], st["exp_avg_scale"][...] = lowp.int8_encode(m)
        st["exp_avg_sq"][...], st["exp_avg_sq_scale"][...] = lowp.log8_encode(v)
    else:
        st["exp_avg"][...], st["exp_avg_sq"][...] = m, v
    return st


def _step(p, g, st, sd, t, backend, **kw):
    F.adam_(p, g, st["exp_avg"], st["exp_avg_sq"], exp_avg_scale=st.get("exp_avg_scale"),
            exp_avg_sq_scale=st.get("exp_avg_sq_scale"), step=t, state_dtype=sd,
            backend=backend, **dict(HP, **kw))


def _blocks_absmax(x):
    pad = (-x.size) % lowp.INT8_BLOCK
    return np.max(np.abs(np.concatenate([x, np.zeros(pad, x.dtype)]).reshape(-1, 256)), axis=1)


# --- one step against float32 state: error bounded by the codec's resolution --------

@pytest.mark.parametrize("sd", ["bfloat16", "int8"])
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "-".join(o) or "plain")
def test_one_step_error_bound_vs_float32_state(sd, opts):
    rng = np.random.default_rng(3)
    n = 4099
    st = _encoded_state(sd, n, rng)
    dec = lowp.decode_state(sd, st)
    p = rng.standard_normal(n).astype(np.float32)
    g = (rng.standard_normal(n) * np.exp(rng.uniform(-4, 1, n))).astype(np.float32)
    p32, m32, v32 = p.copy(), dec["exp_avg"].copy(), dec["exp_avg_sq"].copy()
    F.adam_(p32, g, m32, v32, step=7, backend="numba", **dict(HP, **opts))
    _step(p, g, st, sd, 7, "numba", **opts)
    # the parameter update uses this step's exact float32 moments: same as float32 state
    np.testing.assert_allclose(p, p32, rtol=1e-6, atol=1e-7)
    new = lowp.decode_state(sd, st)
    m, v = new["exp_avg"], new["exp_avg_sq"]
    if sd == "bfloat16":
        # stochastic rounding to 8 significant bits: one of the two neighbours,
        # |error| < 1 ulp <= 2**-7 |x|
        assert np.all(np.abs(m - m32) < 2.0 ** -7 * np.abs(m32) + 1e-38)
        assert np.all(np.abs(v - v32) < 2.0 ** -7 * v32 + 1e-38)
        tm = lowp.bf16_decode(m32.view(np.uint32) >> 16)
        assert np.all((m == tm) | (np.abs(m) > np.abs(tm)))
    else:
        amax_m = _blocks_absmax(m32)
        np.testing.assert_array_equal(st["exp_avg_scale"], amax_m)      # scale = new absmax
        np.testing.assert_array_equal(st["exp_avg_sq_scale"], _blocks_absmax(v32))
        # linear code: |error| <= absmax / 254 (half a step), float32 slack 1e-5
        bound = np.repeat(amax_m / 254, 256)[:n] * (1 + 1e-5)
        assert np.all(np.abs(m - m32) <= bound)
        # log code: relative error <= 2**-5, except below the smallest code, which
        # stores absmax * 2**-15 * 17/16 (never less than v)
        floor = np.repeat(st["exp_avg_sq_scale"] * 2.0 ** -15 * 17 / 16, 256)[:n]
        small = v32 < floor
        assert np.all(np.abs(v - v32)[~small] <= (2.0 ** -5 + 1e-6) * v32[~small])
        assert np.all((v[small] >= v32[small]) & (v[small] <= floor[small] * (1 + 1e-6)))


# --- the fused kernels against the NumPy reference ------------------------------------

@pytest.mark.parametrize("sd", ["bfloat16", "int8"])
@pytest.mark.parametrize("n", SIZES)
def test_numba_matches_numpy_reference(sd, n):
    for opts in OPTIONS:
        rng = np.random.default_rng(n + 1)
        st_a = _encoded_state(sd, n, rng)
        st_b = {k: a.copy() for k, a in st_a.items()}
        p_a = rng.standard_normal(n).astype(np.float32)
        p_b = p_a.copy()
        g = rng.standard_normal(n).astype(np.float32)
        _step(p_a, g, st_a, sd, 3, "numba", **opts)
        _step(p_b, g, st_b, sd, 3, "numpy", **opts)
        np.testing.assert_allclose(p_a, p_b, rtol=1e-5, atol=1e-6)
        da, db = lowp.decode_state(sd, st_a), lowp.decode_state(sd, st_b)
        # the two derivations may round a float32 moment 1 ulp apart, which can move
        # the stored value by at most one code
        if sd == "bfloat16":
            for k in da:
                assert np.all(np.abs(da[k] - db[k]) <= 2.0 ** -7 * np.abs(db[k]))
        else:
            np.testing.assert_allclose(st_a["exp_avg_scale"], st_b["exp_avg_scale"], rtol=1e-6)
            np.testing.assert_allclose(st_a["exp_avg_sq_scale"], st_b["exp_avg_sq_scale"],
                                       rtol=1e-6)
            step = np.repeat(st_b["exp_avg_scale"] / 127, 256)[:n]
            assert np.all(np.abs(da["exp_avg"] - db["exp_avg"]) <= step * 1.0001)
            assert np.all(np.abs(da["exp_avg_sq"] - db["exp_avg_sq"]) <=
                          2.0 ** -4 * db["exp_avg_sq"] * 1.0001)
            # and nearly always exactly the same codes
            assert n == 0 or np.mean(st_a["exp_avg"] == st_b["exp_avg"]) > 0.99


def test_nonfinite_gradient_propagates_like_float32():
    """A NaN gradient makes the parameter NaN, as torch.optim would (no silent repair)."""
    for sd in ("bfloat16", "int8"):
        n = 600
        st = lowp.new_state(sd, n)
        p = np.ones(n, np.float32)
        g = np.ones(n, np.float32)
        g[5] = np.nan
        _step(p, g, st, sd, 1, "numba")
        assert np.isnan(p[5]) and np.isfinite(p[300:]).all()
        assert np.isnan(lowp.decode_state(sd, st)["exp_avg"][5])


def test_int8_nan_block_scale_is_absmax_bits():
    """A block whose new exp_avg_sq holds a NaN with the sign bit set (from a NaN gradient:
    the moment takes its payload) gets codecs.absbits of it as its scale (the kernel keeps
    the payload; NumPy's encoder may not), as a block with a positive NaN does; blocks
    without NaNs get NumPy's scale."""
    n = 4 * 256 + 9
    st = lowp.new_state("int8", n)
    p = np.ones(n, np.float32)
    g = np.linspace(-1, 1, n).astype(np.float32)
    bits = g.view(np.uint32)
    bits[5] = 0xFFC01234            # a negative quiet NaN with a payload
    bits[300] = 0x7FC00042          # a positive one
    bits[600] = 0xFFC00000          # x86's default NaN, negative
    ref = {k: a.copy() for k, a in st.items()}
    p_ref = p.copy()
    _step(p, g, st, "int8", 1, "numba")
    _step(p_ref, g, ref, "int8", 1, "numpy")
    got = st["exp_avg_sq_scale"].view(np.uint32)
    want = ref["exp_avg_sq_scale"].view(np.uint32)
    assert [int(b) for b in got[:3]] == [C.absbits(int(bits[i])) for i in (5, 300, 600)]
    assert np.all(np.isnan(ref["exp_avg_sq_scale"][:3]))
    np.testing.assert_array_equal(got[3:], want[3:])
    assert np.all(got[3:] < 0x7F800000)


# --- training the seed's model -----------------------------------------------------
# The seed's model and data come from fastadam.demo (Dense 100->64 relu ->1 sigmoid,
# binary cross-entropy, batch 32, NumPy forward/backward by hand; synthetic teacher
# data with 2% flipped labels): its quick configuration, 4000 samples x 4 epochs.

def _train(state_dtype, seed=0, n_train=4000, epochs=4, backend="numba"):
    from fastadam import demo
    X, y = demo.make_data(n_train, seed=0)
    P = demo.init_params(seed)
    opt = fastadam.Adam(P, lr=1e-3, state_dtype=state_dtype, backend=backend)
    demo.fit(P, opt, X, y, epochs=epochs, rng=np.random.default_rng(seed + 1))
    return demo.evaluate(P, X, y)[0], opt


def _state_bytes(opt):
    return sum(a.nbytes for st in opt.state for s in st.values() for a in s.values()
               if isinstance(a, np.ndarray))


@pytest.mark.parametrize("seed", [0, 1])
def test_seed_model_final_loss_within_2_percent(seed):
    from fastadam import demo
    ref, opt32 = _train("float32", seed)
    start = demo.evaluate(demo.init_params(seed), *demo.make_data(4000, seed=0))[0]
    assert ref < 0.5 * start                         # it did train
    for sd, bpp in (("bfloat16", 4.5), ("int8", 2.5)):
        loss, opt = _train(sd, seed)
        assert abs(loss - ref) <= 0.02 * ref, (sd, loss, ref)
        # state bytes per parameter: every state array (moments and per-block
        # scales), not the parameter or gradient buffers (float32 state: 8)
        assert _state_bytes(opt) / opt.flat[0].size <= bpp, sd
    assert _state_bytes(opt32) / opt32.flat[0].size == 8


def test_state_bytes_per_param_large():
    n = 1 << 20
    for sd, want in (("float32", 8.0), ("bfloat16", 4.0), ("int8", 2 + 8 / 256)):
        nbytes = sum(a.nbytes for a in lowp.new_state(sd, n).values())
        assert nbytes / n == want


# --- façade: checkpoints, construction checks --------------------------------------------

@pytest.mark.parametrize("sd", ["bfloat16", "int8"])
def test_state_dict_round_trip_is_exact(sd):
    from fastadam import demo
    X, y = demo.make_data(256)

    def run(stop=None):
        P = demo.init_params()
        opt = fastadam.AdamW(P, lr=1e-2, state_dtype=sd)
        for k in range(8):
            if k == stop:
                ckpt = opt.state_dict()
                Pc = {kk: a.copy() for kk, a in P.items()}
                P = Pc
                opt = fastadam.AdamW(P, lr=1e-2, state_dtype=sd)
                opt.load_state_dict(ckpt)
            demo.loss_and_grads(P, X[k * 32:(k + 1) * 32], y[k * 32:(k + 1) * 32], opt.grads)
            opt.step()
        return P, opt.state_dict()

    P1, s1 = run()
    P2, s2 = run(stop=4)
    for k in P1:
        np.testing.assert_array_equal(P1[k], P2[k])
    for a, b in zip(s1["state"], s2["state"]):
        assert a.keys() == b.keys()
        for k in a:
            if isinstance(a[k], np.ndarray):
                assert a[k].dtype == b[k].dtype
                np.testing.assert_array_equal(a[k], b[k])
    # a checkpoint of one state_dtype does not load into another
    other = fastadam.AdamW(demo.init_params(), state_dtype="float32")
    with pytest.raises(ValueError, match="dtype"):
        other.load_state_dict(s1)


def test_facade_construction_checks():
    with pytest.raises(ValueError, match="state_dtype"):
        fastadam.Adam([np.zeros(3, np.float32)], state_dtype="float16")
    with pytest.raises(ValueError, match="amsgrad"):
        fastadam.Adam([np.zeros(3, np.float32)], state_dtype="int8", amsgrad=True)
    with pytest.raises(TypeError, match="float32"):
        fastadam.Adam({"w": np.zeros(3)}, state_dtype="bfloat16")


def test_functional_bad_input_changes_nothing():
    n = 300
    rng = np.random.default_rng(0)
    p = rng.standard_normal(n).astype(np.float32)
    g = rng.standard_normal(n).astype(np.float32)
    st = _encoded_state("int8", n, rng)
    before = [p.copy()] + [a.copy() for a in st.values()]

    def same():
        after = [p] + list(st.values())
        return all(np.array_equal(a, b) for a, b in zip(before, after))

    bad = [
        (dict(exp_avg_scale=np.zeros(1, np.float32)), ValueError, "exp_avg_scale"),
        (dict(exp_avg_sq_scale=None), ValueError, "exp_avg_sq_scale"),
        (dict(exp_avg=st["exp_avg"].astype(np.uint8)), TypeError, "exp_avg"),
        (dict(grad_scale=0.0), ValueError, "grad_scale"),
        (dict(clip_value=-1.0), ValueError, "clip_value"),
        (dict(state_dtype="fp8"), ValueError, "state_dtype"),
        (dict(amsgrad=True), ValueError, "amsgrad"),
        (dict(lr=-1.0), ValueError, "learning rate"),
        (dict(exp_avg_sq=st["exp_avg"]), TypeError, "exp_avg_sq"),
    ]
    for kw, exc, msg in bad:
        args = dict(exp_avg=st["exp_avg"], exp_avg_sq=st["exp_avg_sq"],
                    exp_avg_scale=st["exp_avg_scale"], exp_avg_sq_scale=st["exp_avg_sq_scale"],
                    step=1, state_dtype="int8", backend="numba", **HP)
        args.update(kw)
        with pytest.raises(exc, match=msg):
            F.adam_(p, g, **args)
        assert same(), kw
    with pytest.raises(TypeError, match="float32"):
        F.adam_(p.astype(np.float64), g.astype(np.float64), np.zeros(n, np.uint16),
                np.zeros(n, np.uint16), step=1, state_dtype="bfloat16", **HP)


def test_unsupported_backend_says_why():
    if "cython" not in fastadam.available_backends():
        pytest.skip("cython backend not built")
    n = 10
    with pytest.raises(fastadam.BackendUnavailableError, match="numba and numpy"):
        F.adam_(np.zeros(n, np.float32), np.zeros(n, np.float32), np.zeros(n, np.uint16),
                np.zeros(n, np.uint16), step=1, state_dtype="bfloat16", backend="cython", **HP)


@pytest.mark.parametrize("sd,pdtype,rounding", [("bfloat16", np.float32, "nearest"),
                                                 ("int8", np.float32, "nearest"),
                                                 ("float32", np.float16, "stochastic"),
                                                 ("bfloat16", np.float16, "nearest")])
def test_bound_state_route_equals_general_route(sd, pdtype, rounding):
    """The façade binds the reduced-precision and master-weight kernels once and caches
    the plan (StateBackend.bind_state): bit for bit what the general route (step_arrays)
    gives, through an lr change, AMP steps, a checkpoint loaded in between and two
    groups (a serial-size and a parallel-size buffer)."""
    pytest.importorskip("numba")
    rng = np.random.default_rng(0)
    shapes = {"a": (70, 3), "b": (40000,)}          # b: past PARALLEL_THRESHOLD

    def make():
        P = {k: np.random.default_rng(1).standard_normal(s).astype(pdtype)
             for k, s in shapes.items()}
        groups = [{"params": {"a": P["a"]}}, {"params": {"b": P["b"]}, "lr": 3e-3}]
        return fastadam.AdamW(groups, lr=1e-2, weight_decay=0.1, state_dtype=sd,
                              param_rounding=rounding, backend="numba")

    o1, o2 = make(), make()
    o2._buffer_backend = lambda fb: NoBind(o2._backend)
    steps = [{}, {}, "lr", {}, dict(grad_scale=8.0, max_grad_norm=1.0), {}, "load", {}, {}]
    for t, s in enumerate(steps):
        g = {k: rng.standard_normal(v).astype(pdtype) for k, v in shapes.items()}
        if s == "lr":
            for o in (o1, o2):
                o.param_groups[1]["lr"] = 1e-3
            s = {}
        if s == "load":                                  # new state arrays: rebinds
            for o in (o1, o2):
                o.load_state_dict(o.state_dict())
            s = {}
        for o in (o1, o2):
            for gi, k in enumerate(shapes):
                o.grads[gi][k][...] = g[k] * s.get("grad_scale", 1.0)
            o.step(**s)
        assert_same_optimizer(o1, o2, f"step {t}: {s}")
    assert len(o1._fast) == 2 and not o2._fast       # the bound route was taken
