"""Codecs of reduced-precision state: bf16 and the 8-bit codes, checked against
independent references (exact rational rounding in Python, torch's bfloat16),
and the float discipline of the low-precision kernels."""

import math
import struct
from fractions import Fraction

import numpy as np
import pytest

import fastadam.functional as F
from fastadam import lowp
from fastadam.rules import codecs as C


def _bits(x):
    return struct.unpack("<I", struct.pack("<f", float(x)))[0]


def _f32(bits):
    return struct.unpack("<f", struct.pack("<I", int(bits) & 0xFFFFFFFF))[0]


def _bf16_exact(x):
    """Nearest bf16 (ties to even) of a float32, by exact rational comparison."""
    x = float(x)
    b = _bits(x)
    if math.isnan(x):
        return None
    if math.isinf(x):
        return b >> 16
    lo = b >> 16                       # truncation toward zero (same sign)
    hi = lo + 1
    xl, xh = _f32(lo << 16), _f32(hi << 16)
    if math.isinf(xh):                 # rounding past the largest bf16
        half = Fraction(xl) + (Fraction(xl) - Fraction(_f32((lo - 1) << 16))) / 2
        return hi if abs(Fraction(x)) >= abs(half) else lo
    dl, dh = abs(Fraction(x) - Fraction(xl)), abs(Fraction(x) - Fraction(xh))
    if dl < dh:
        return lo
    if dh < dl:
        return hi
    return lo if lo % 2 == 0 else hi


def _special_f32():
    vals = [0.0, -0.0, 1.0, -1.0, 1.00390625, 1.005859375, 1.001953125, 1.0029296875,
            3.4028234663852886e38, -3.4028234663852886e38, 3.3895313892515355e38,
            1e-45, -1e-45, 1.1754943508222875e-38, 1e-40, math.inf, -math.inf]
    rng = np.random.default_rng(0)
    r = rng.standard_normal(1500).astype(np.float32) * np.exp(
        rng.uniform(-80, 80, 1500)).astype(np.float32)
    ties = (rng.integers(0, 1 << 16, 300, dtype=np.uint32) << 16 | np.uint32(0x8000)) \
        .view(np.float32)
    allv = np.concatenate([np.array(vals, np.float32), r, ties])
    return allv[np.isfinite(allv) | np.isinf(allv)]


def test_bf16_encode_matches_exact_rounding():
    x = _special_f32()
    want = np.array([_bf16_exact(v) for v in x], dtype=np.uint16)
    got_np = lowp.bf16_encode(x)
    got_rule = np.array([C.bf16_encode(_bits(v)) for v in x], dtype=np.uint16)
    np.testing.assert_array_equal(got_np, want)
    np.testing.assert_array_equal(got_rule, want)


def test_bf16_nan_stays_nan_with_sign():
    x = np.array([np.nan, -np.nan], np.float32)
    x = np.concatenate([x, np.array([0x7F800001, 0xFF800001, 0x7FC00000], np.uint32)
                        .view(np.float32)])
    for h in list(lowp.bf16_encode(x)) + [C.bf16_encode(_bits(v)) for v in x]:
        assert math.isnan(_f32(int(h) << 16))
    assert lowp.bf16_encode(x)[3] >> 15 == 1           # sign kept


def test_bf16_against_torch():
    torch = pytest.importorskip("torch")
    x = _special_f32()
    want = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(lowp.bf16_encode(x), want)


def test_bf16_decode_is_exact():
    h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    d = lowp.bf16_decode(h)
    np.testing.assert_array_equal(d.view(np.uint32), h.astype(np.uint32) << 16)
    finite = np.isfinite(d)
    np.testing.assert_array_equal(lowp.bf16_encode(d[finite]), h[finite])
    assert all(C.bf16_decode(int(v)) == int(v) << 16 for v in h[::257])


def test_kernel_stores_bf16_of_the_float32_moment():
    """From zero state the new moments are exact float32 expressions; the kernel must
    store their stochastic rounding with the step's bits (codecs spec and NumPy)."""
    pytest.importorskip("numba")
    x = _special_f32()
    g = x[np.isfinite(x) & (np.abs(x) < 1e18)]
    n = g.shape[0]
    p = np.zeros(n, np.float32)
    m = np.zeros(n, np.uint16)
    v = np.zeros(n, np.uint16)
    F.adam_(p, g, m, v, step=3, lr=1e-3, beta1=0.5, beta2=0.75, eps=1e-8,
            state_dtype="bfloat16", backend="numba")
    z, f = np.float32(0), np.float32
    m32 = z + f(0.5) * (g - z)                    # the rule's order of operations
    v32 = f(0.75) * z + f(0.25) * g * g
    sm, sv = lowp.sr_seeds(3)
    mb, vb = m32.view(np.uint32), v32.view(np.uint32)
    want_m = np.array([C.bf16_encode_sr(int(b), C.sr_bits(i, sm)) for i, b in enumerate(mb)],
                      np.uint16)
    want_v = np.array([C.bf16_encode_sr(int(b), C.sr_bits(i, sv)) for i, b in enumerate(vb)],
                      np.uint16)
    np.testing.assert_array_equal(want_m, lowp.bf16_encode_sr(m32, sm))
    # compared as values: the kernels may ignore the sign of zero (fastmath nsz)
    np.testing.assert_array_equal(lowp.bf16_decode(m), lowp.bf16_decode(want_m))
    np.testing.assert_array_equal(lowp.bf16_decode(v), lowp.bf16_decode(want_v))


def test_bf16_stochastic_rounding_is_unbiased():
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(64) * np.exp(rng.uniform(-20, 20, 64))).astype(np.float32)
    lo = lowp.bf16_decode(x.view(np.uint32) >> 16)                  # truncation
    ulp = lowp.bf16_decode((x.view(np.uint32) >> 16) + 1) - lo      # next bf16 (same sign)
    N = 4096
    dec = np.stack([lowp.bf16_decode(lowp.bf16_encode_sr(x, lowp.sr_seeds(t)[1]))
                    for t in range(1, N + 1)])
    # every result is one of the two neighbours
    assert np.all((dec == lo) | (dec == lo + ulp))
    # mean error: Bernoulli rounding has std <= ulp / (2 sqrt(N)) = ulp / 128
    err = dec.astype(np.float64).mean(axis=0) - x
    assert np.all(np.abs(err) <= np.abs(ulp) / 20)


def test_bf16_state_second_moment_does_not_stagnate():
    """beta2 = 0.999 moves v by less than half a bf16 ulp per step: round to nearest
    would leave it where it is; the stored state follows float32 state."""
    pytest.importorskip("numba")
    n, steps = 4096, 800
    g = np.full(n, np.sqrt(1.5), np.float32)
    hp = dict(lr=0.0, beta1=0.9, beta2=0.999, eps=1e-8)
    p32, m32, v32 = np.zeros(n, np.float32), np.zeros(n, np.float32), np.ones(n, np.float32)
    p16, m16 = np.zeros(n, np.float32), np.zeros(n, np.uint16)
    v16 = lowp.bf16_encode(np.ones(n, np.float32))
    v_rne = np.ones(n, np.float32)
    for t in range(1, steps + 1):
        F.adam_(p32, g, m32, v32, step=t, backend="numba", **hp)
        F.adam_(p16, g, m16, v16, step=t, state_dtype="bfloat16", backend="numba", **hp)
        v_rne = lowp.bf16_decode(lowp.bf16_encode(np.float32(0.999) * v_rne +
                                                  np.float32(0.001) * g * g))
    v_sr = lowp.bf16_decode(v16)
    assert abs(v_sr.mean() / v32.mean() - 1) < 0.005
    assert v32.mean() > 1.25 and np.all(v_rne == 1.0)          # RNE is stuck at 1


# --- 8-bit codes -------------------------------------------------------------------

def test_log8_code_table():
    q = np.arange(256)
    want = np.array([0.0 if c == 0 else 2.0 ** ((c >> 4) - 15) * (1 + (c & 15) / 16)
                     for c in q], np.float32)
    np.testing.assert_array_equal(lowp.log8_decode(q.astype(np.uint8),
                                                   np.ones(1, np.float32)), want)
    for c in range(241):
        assert _f32(C.log8_decode(c)) == want[c]
    # every used code encodes back to itself, in both implementations
    codes, _ = lowp.log8_encode(np.concatenate([want[:241], [1.0]]).astype(np.float32))
    np.testing.assert_array_equal(codes[:241], np.arange(241))
    assert [C.log8_encode(_bits(w)) for w in want[:241]] == list(range(241))


def test_log8_relative_error_and_floor():
    rng = np.random.default_rng(1)
    v = np.exp(rng.uniform(np.log(2.0 ** -15 * 17 / 16), 0, 20000)).astype(np.float32)
    v[0] = 1.0                                   # the block absmax
    codes, scale = lowp.log8_encode(v)
    d = lowp.log8_decode(codes, scale)
    # mantissa rounded to 4 bits: relative error <= 2**-5 (plus float32 rounding)
    assert np.all(np.abs(d - v) <= v * (2.0 ** -5 + 1e-6))
    # nearest: in one block with absmax 1, no other code is closer to v
    c1, s1 = lowp.log8_encode(v[:256])
    assert s1[0] == 1.0
    d1 = lowp.log8_decode(c1, s1)
    table = lowp.log8_decode(np.arange(241).astype(np.uint8), np.ones(1, np.float32))
    best = np.abs(table[None, :] - v[:256, None]).min(axis=1)
    assert np.all(np.abs(d1 - v[:256]) <= best * (1 + 1e-6))
    # the Python codec agrees with NumPy's
    assert [C.log8_encode(_bits(x)) for x in v[:256]] == list(c1)
    # tiny but non-zero second moments never decode to 0 (that would blow the step up)
    tiny = np.array([1.0, 1e-12, 1e-30, 0.0], np.float32)
    c2, s2 = lowp.log8_encode(tiny)
    d2 = lowp.log8_decode(c2, s2)
    assert list(c2) == [240, 1, 1, 0]
    assert np.all(d2[1:3] >= tiny[1:3]) and d2[3] == 0


def test_log8_nearest_ties_up():
    """A value exactly between two codes takes the larger (codecs.log8_encode: nearest,
    ties up), in the specification, NumPy's encoder and the kernels' two intrinsics; one
    float32 step either side of the tie goes to the nearer code."""
    table = [0.0] + [2.0 ** ((c >> 4) - 15) * (1 + (c & 15) / 16) for c in range(1, 241)]
    mids, below, above, want = [], [], [], []
    for c in range(1, 240):
        mid = (table[c] + table[c + 1]) / 2            # exact in float32 (5 mantissa bits)
        assert float(np.float32(mid)) == mid
        mids.append(mid)
        below.append(np.nextafter(np.float32(mid), np.float32(0)))
        above.append(np.nextafter(np.float32(mid), np.float32(2)))
        want.append(c + 1)
    x = np.array(mids + below + above, np.float32)
    want = np.array(want + [w - 1 for w in want] + want)
    assert [C.log8_encode(_bits(v)) for v in x] == want.tolist()
    blocks = np.ones((x.size, 256), np.float32)          # one block each, absmax 1
    blocks[:, 0] = x
    codes, scale = lowp.log8_encode(blocks.reshape(-1))
    assert np.all(scale == 1)
    np.testing.assert_array_equal(codes.reshape(-1, 256)[:, 0], want)
    numba = pytest.importorskip("numba")
    from fastadam.kernels import cpu_lowp as K

    @numba.njit
    def run(x):
        a = np.empty(x.shape[0], np.uint8)
        b = np.empty(x.shape[0], np.uint8)
        for i in range(x.shape[0]):
            a[i] = K.k_log8_encode(x[i])
            b[i] = K.k_log8_encode_finite(x[i])
        return a, b

    a, b = run(x)
    np.testing.assert_array_equal(a, want)
    np.testing.assert_array_equal(b, want)


def test_lin8_code():
    rng = np.random.default_rng(2)
    m = rng.standard_normal(3 * 256 + 7).astype(np.float32) * np.repeat(
        [1e-3, 10.0, 1.0, 5.0], 256)[:3 * 256 + 7].astype(np.float32)
    q, scale = lowp.int8_encode(m)
    d = lowp.int8_decode(q, scale)
    amax = np.repeat(np.max(np.abs(np.concatenate([m, np.zeros(249)]).reshape(-1, 256)),
                            axis=1), 256)[:m.size]
    assert np.all(np.abs(d - m) <= amax / 254 * (1 + 1e-5))
    assert q.min() >= -127 and q.max() <= 127
    assert sorted(set(np.abs(q[np.abs(m) == amax]).tolist())) == [127]
    # ties go to even, like the kernel's round()
    assert [C.lin8_encode(y) for y in (0.5, 1.5, 2.5, -0.5, -2.5, 126.5, 200.0, -200.0)] == \
        [0, 2, 2, 0, -2, 126, 127, -127]


# --- float discipline of the kernels --------------------------------------------------

@pytest.mark.parametrize("name", ["adam_bf16", "adam_int8", "adam_f32"])
def test_lowp_kernels_stay_float32(name):
    """The optimized LLVM IR of each Adam kernel has no double-precision arithmetic."""
    numba = pytest.importorskip("numba")
    from fastadam._config import FASTMATH
    from fastadam.kernels import cpu_lowp as K
    k = numba.njit(fastmath=FASTMATH, error_model="numpy", boundscheck=False)(getattr(K, name))
    f = np.float32
    n = 300
    p, g = np.zeros(n, f), np.zeros(n, f)
    sc = (f(1),) * 9
    if name == "adam_int8":
        args = (p, g, np.zeros(n, np.int8), np.zeros(2, f), np.zeros(n, np.uint8),
                np.zeros(2, f), 1, f(1), f(np.inf), f(127)) + sc
    elif name == "adam_bf16":
        args = (p, g, np.zeros(n, np.uint16), np.zeros(n, np.uint16), np.uint32(1),
                np.uint32(2), f(1), f(np.inf)) + sc
    else:
        args = (p, g, np.zeros(n, f), np.zeros(n, f), f(1), f(np.inf)) + sc
    k(*args)
    ir = "\n".join(k.inspect_llvm().values())
    body = ir[ir.index("define"):]
    for op in ("fadd double", "fmul double", "fdiv double", "fsub double", "fpext float",
               "llvm.sqrt.f64"):
        assert op not in body, f"{name} does {op}"
    assert "llvm.sqrt.f32" in body or "sqrt" in body


# --- the kernels' 32-bit transcriptions == the codec specification --------------------

def test_kernel_intrinsics_match_codecs():
    numba = pytest.importorskip("numba")
    from fastadam.kernels import cpu_lowp as K

    @numba.njit
    def run(x, h, q, y, f):
        f8 = np.empty(f.shape[0], np.uint8)
        e16 = np.empty(x.shape[0], np.uint16)
        s16 = np.empty(x.shape[0], np.uint16)
        sh16 = np.empty(x.shape[0], np.uint16)
        e8 = np.empty(x.shape[0], np.uint8)
        l8 = np.empty(y.shape[0], np.int8)
        d16 = np.empty(h.shape[0], np.float32)
        d8 = np.empty(q.shape[0], np.float32)
        mx = np.uint32(0)
        for i in range(x.shape[0]):
            e16[i] = K.k_bf16_encode(x[i])
            s16[i] = K.k_bf16_encode_sr(x[i], i, np.uint32(0xDEADBEEF))
            sh16[i] = K.k_bf16_encode_srh(x[i], K.k_hash_index(i), np.uint32(0xDEADBEEF))
            e8[i] = K.k_log8_encode(x[i])
            mx = K.k_absbits_max(mx, x[i])
        for i in range(y.shape[0]):
            l8[i] = K.k_lin8_encode(y[i])
        for i in range(f.shape[0]):
            f8[i] = K.k_log8_encode_finite(f[i])
        for i in range(h.shape[0]):
            d16[i] = K.k_bf16_decode(h[i])
        for i in range(q.shape[0]):
            d8[i] = K.k_log8_decode(q[i])
        return e16, s16, sh16, e8, l8, d16, d8, mx, f8

    rng = np.random.default_rng(7)
    bits = rng.integers(0, 1 << 32, 4000, dtype=np.uint64).astype(np.uint32)
    x = np.concatenate([_special_f32(), bits.view(np.float32),
                        rng.uniform(0, 1, 2000).astype(np.float32)])
    y = np.concatenate([np.arange(-300, 300, 0.5), [np.nan, np.inf, -np.inf, 1e30, -1e30],
                        rng.uniform(-130, 130, 2000)]).astype(np.float32)
    h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    q = np.arange(256, dtype=np.uint16).astype(np.uint8)
    # the finite-scale encoder's domain, [-0, 1 + 2**-22]: every code's value and the
    # float32 values around it, denormals, zeros, random values
    table = np.array([0.0] + [2.0 ** ((c >> 4) - 15) * (1 + (c & 15) / 16)
                              for c in range(1, 241)], np.float32)
    tb = table.view(np.uint32).astype(np.int64)
    near = (tb[:, None] + np.arange(-3, 4)[None, :]).reshape(-1)
    near = near[(near >= 0) & (near <= 0x3F800002)].astype(np.uint32).view(np.float32)
    f = np.concatenate([near, [0.0, -0.0, 1e-45, 1e-40, 2.0 ** -126, 2.0 ** -15, 1.0],
                        (rng.integers(0, 0x3F800003, 4000, dtype=np.int64)
                         .astype(np.uint32).view(np.float32)),
                        rng.uniform(0, 1, 2000)]).astype(np.float32)
    e16, s16, sh16, e8, l8, d16, d8, mx, f8 = run(x, h, q, y, f)
    np.testing.assert_array_equal(f8, [C.log8_encode(b) for b in f.view(np.uint32).tolist()])
    xb = [int(b) for b in x.view(np.uint32)]      # exact bits, NaN payloads included
    np.testing.assert_array_equal(e16, [C.bf16_encode(b) for b in xb])
    np.testing.assert_array_equal(s16, [C.bf16_encode_sr(b, C.sr_bits(i, 0xDEADBEEF))
                                        for i, b in enumerate(xb)])
    np.testing.assert_array_equal(sh16, s16)       # the kernels' hashed-index variant, NaNs too
    np.testing.assert_array_equal(e8, [C.log8_encode(b) for b in xb])
    np.testing.assert_array_equal(l8, [C.lin8_encode(float(v)) for v in y])
    np.testing.assert_array_equal(d16.view(np.uint32), [C.bf16_decode(int(v)) for v in h])
    np.testing.assert_array_equal(d8.view(np.uint32), [C.log8_decode(int(v)) for v in q])
    want = 0
    for b in xb:
        want = C.bigger_bits(want, C.absbits(b))
    assert int(mx) == want


# --- the kernels' loop copies agree bit for bit -----------------------------------------

@pytest.mark.parametrize("sd", ["bfloat16", "int8"])
@pytest.mark.parametrize("n", [1, 127, 128, 129, 255, 257, 4095, 4097, 70001])
def test_kernel_loop_copies_agree(sd, n):
    """adam_bf16 / adam_int8 keep two copies of their loop: with the gradient transform
    (``clamp(g * gscale, clip)``) and without it (``gscale == 1``, ``clip`` +inf; it also
    takes ``gsign == 1`` and ``l2 == 0`` as constants, so maximize and L2 decay use the
    other copy either way).  With ``clip`` the largest float32 the transform is the
    identity on finite gradients, so both copies must give the same bits; sizes straddle
    the sub-block (128), block (256), work-item and parallel thresholds."""
    pytest.importorskip("numba")
    from cases import LOOP_COPY_OPTIONS, adam_kernel_scalars, loop_copy_problem
    from fastadam.kernels import cpu_lowp as K
    f = np.float32
    fmax = f(np.finfo(np.float32).max)
    p0, g, m0, v0 = loop_copy_problem(n)
    g[::97] = 0.0
    for opts in LOOP_COPY_OPTIONS:
        sc = adam_kernel_scalars(opts)
        out = []
        for clip in (f(np.inf), fmax):          # no transform / the identity transform
            p = p0.copy()
            if sd == "bfloat16":
                st = [lowp.bf16_encode(m0), lowp.bf16_encode(v0)]
                K.run("adam_bf16", (p, g) + tuple(st),
                      (np.uint32(11), np.uint32(12), f(1), clip) + sc)
            else:
                mq, ms = lowp.int8_encode(m0)
                vq, vs = lowp.log8_encode(v0)
                st = [mq, ms, vq, vs]
                K.run("adam_int8", (p, g) + tuple(st), (f(1), clip, f(127)) + sc)
            out.append([p] + st)
        for a, b in zip(*out):
            np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))


# --- shift widths of the integer codecs (their device code is this Python) --------------

class _Int64Ops(int):
    """An int whose shifts check what LLVM (the numba CPU and CUDA targets) defines:
    a shift amount in [0, 64), and a left shift that stays within 64 bits."""

    def _w(self, v):
        return _Int64Ops(v)

    def __rshift__(self, k):
        assert 0 <= int(k) < 64, f"shift by {int(k)}"
        return _Int64Ops(int(self) >> int(k))

    def __lshift__(self, k):
        assert 0 <= int(k) < 64, f"shift by {int(k)}"
        v = int(self) << int(k)
        assert -(1 << 63) <= v < (1 << 63), f"{int(self)} << {int(k)} overflows 64 bits"
        return _Int64Ops(v)

    def __rrshift__(self, o):
        return _Int64Ops(o).__rshift__(self)

    def __rlshift__(self, o):
        return _Int64Ops(o).__lshift__(self)


for _op in ("add", "sub", "mul", "and", "or", "xor", "floordiv", "mod"):
    for _pre in ("__", "__r"):
        _name = f"{_pre}{_op}__"
        setattr(_Int64Ops, _name, (lambda n: lambda s, o: _Int64Ops(getattr(int, n)(s, o)))(
            _name))
_Int64Ops.__invert__ = lambda s: _Int64Ops(~int(s))
_Int64Ops.__neg__ = lambda s: _Int64Ops(-int(s))


def _f16_inputs():
    """float32 bit patterns of every exponent (subnormals, normals, inf/NaN), a few
    mantissas each, both signs."""
    for e in range(256):
        for mant in (0, 1, 0x2AAAAA, 0x400000, 0x7FFFFF):
            for s in (0, 0x80000000):
                yield s | (e << 23) | mant


def test_param_codec_shifts_stay_below_64_bits():
    """f16_encode_sr's tiny-value branch shifted by up to 109 bits (undefined in LLVM at
    >= 64, right only by accident of code generation): every shift is now < 64."""
    from fastadam.rules import param_codecs as P
    for b in _f16_inputs():
        for r in (0, 1, 0x7FFF, 0xFFFF):
            P.f16_encode_sr(_Int64Ops(b), _Int64Ops(r))
        P.f16_encode(_Int64Ops(b))
    for h in range(0, 1 << 16, 7):
        P.f16_decode(_Int64Ops(h))


def test_f16_sr_below_the_smallest_subnormal_is_exact():
    """|x| < 2**-24 rounds to 2**-24 iff r + floor(|x| * 2**40) >= 2**16 (the documented
    rule, by exact rationals): the clamped shift changes no result."""
    from fastadam.rules import param_codecs as P
    rng = np.random.default_rng(5)
    for e in range(0, 103):
        for mant in (0, 1, 0x155555, 0x7FFFFF, int(rng.integers(0, 1 << 23))):
            b = (e << 23) | mant
            if b == 0:
                continue
            x = Fraction(_f32(b))
            for r in (0, 1, 0x8000, 0xFFFF, int(rng.integers(0, 1 << 16))):
                up = r + math.floor(x * 2 ** 40) >= 2 ** 16
                want = 0x0001 if up else 0x0000
                assert P.f16_encode_sr(b, r) == want, (e, mant, r)
                assert P.f16_encode_sr(b | 0x80000000, r) == want | 0x8000, (e, mant, r)
