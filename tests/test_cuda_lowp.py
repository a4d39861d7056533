"""Reduced-precision state, fused gradient transforms and master weights on the cuda backend
(fastadam.kernels.cuda_lowp) against the numba CPU kernels.

Under numba's CUDA simulator (tests/conftest.py) each float32 operation rounds on its own
as on the CPU, so the results must equal the numba CPU kernels' bit for bit: same rule,
same codecs, same stochastic-rounding bits.  On a real GPU (``FASTADAM_REAL_GPU=1``)
NVVM fuses multiply-adds, so the same checks hold within the float32 contract instead
(parameters to rtol 1e-5, stored codes within one step of their neighbours).  Block size
16 and a grid of 3 blocks, so grid-stride remainders run; int8 blocks are 256 threads.
"""


import numpy as np
import pytest
import skips

import fastadam.functional as F
from fastadam import _backends, lowp
from fastadam.lowp import master

skips.cuda_backend()

from numba import cuda  # noqa: E402

from fastadam.kernels import cuda as K  # noqa: E402
from fastadam.kernels import cuda_lowp as KL  # noqa: E402
from fastadam.rules import codecs, param_codecs  # noqa: E402

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
SIM = K.SIMULATOR
requires_gpu = pytest.mark.skipif(SIM or not cuda.is_available(), reason="needs a real CUDA GPU")
HP = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8)


@pytest.fixture(autouse=True)
def small_grid(monkeypatch):
    monkeypatch.setattr(K, "BLOCK_SIZE", 16)
    monkeypatch.setattr(K, "MAX_BLOCKS", 3)


class CAIArray:
    """A device array known only by its ``__cuda_array_interface__`` (as CuPy / torch)."""

    def __init__(self, x, readonly=False):
        x = np.ascontiguousarray(x)
        if SIM:
            self.host = x.copy()
            ptr = self.host.__array_interface__["data"][0]
        else:  # pragma: no cover - real GPU: numba copies 2-byte floats as uint16 bits
            self.dev = cuda.to_device(x.view(np.uint16) if _half(x) else x)
            ptr = self.dev.__cuda_array_interface__["data"][0]
        self.shape, self.dtype = x.shape, x.dtype
        self.__cuda_array_interface__ = {
            "shape": tuple(x.shape), "typestr": x.dtype.str, "data": (ptr, readonly),
            "strides": None, "version": 3, "stream": None}

    def get(self):
        return self.host.copy() if SIM else self.dev.copy_to_host().view(self.dtype)


def _half(x):
    return x.dtype.itemsize == 2 and x.dtype.kind in "fV"


def dev(x, kind="numba"):
    x = np.ascontiguousarray(x)
    if kind == "numba" and (SIM or not _half(x)):
        return cuda.to_device(x)
    return CAIArray(x)


def host(d):
    return d.get() if isinstance(d, CAIArray) else d.copy_to_host()


def _bits(a):
    a = np.ascontiguousarray(a)
    return a.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[a.itemsize])


def same(got, want, what, codes=None):
    """Bitwise under the simulator; on a GPU within the float32 contract."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape, what
    if SIM:
        np.testing.assert_array_equal(_bits(got), _bits(want), err_msg=what)
        return
    if codes == "bf16":  # pragma: no cover - real GPU
        np.testing.assert_allclose(lowp.bf16_decode(got), lowp.bf16_decode(want),
                                   rtol=2 ** -6, atol=1e-30, err_msg=what)
    elif codes in ("f16", "bf16p"):  # pragma: no cover
        fmt = "float16" if codes == "f16" else "bfloat16"
        np.testing.assert_allclose(master.decode_param(got, fmt), master.decode_param(want, fmt),
                                   rtol=2 ** -7, atol=2 ** -24, err_msg=what)
    elif got.dtype.kind in "iu":  # pragma: no cover - int8 / log8 codes
        assert np.abs(got.astype(int) - want.astype(int)).max(initial=0) <= 1, what
    else:  # pragma: no cover
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=what)


def _grads(n, steps, seed, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(n) * np.exp(rng.uniform(-3, 1, n))).astype(dtype)
            for _ in range(steps)]


def _state_step(sd, n, steps, kind="numba", seed=0, **kw):
    """``steps`` steps on device and with the numba CPU kernels, compared each step."""
    rng = np.random.default_rng(seed + 1)
    p = rng.standard_normal(n).astype(np.float32)
    st = lowp.new_state(sd, n)
    dp = dev(p, kind)
    dst = {k: dev(a, kind) for k, a in st.items()}
    for t, g in enumerate(_grads(n, steps, seed), start=1):
        if not SIM and t > 1:  # pragma: no cover - real GPU: each step from the CPU's state
            dp = dev(p, kind)    # (FMA contraction: a moment may round to the next code,
            dst = {k: dev(a, kind) for k, a in st.items()}    # which later steps carry)
        args = dict(HP, step=t, state_dtype=sd, **kw)
        F.adam_(p, g, st["exp_avg"], st["exp_avg_sq"], backend="numba",
                exp_avg_scale=st.get("exp_avg_scale"),
                exp_avg_sq_scale=st.get("exp_avg_sq_scale"), **args)
        F.adam_(dp, dev(g, kind), dst["exp_avg"], dst["exp_avg_sq"], backend="cuda",
                exp_avg_scale=dst.get("exp_avg_scale"),
                exp_avg_sq_scale=dst.get("exp_avg_sq_scale"), **args)
        same(host(dp), p, f"param step {t}")
        for k in st:
            same(host(dst[k]), st[k], f"{k} step {t}", "bf16" if sd == "bfloat16" else None)


# --- bf16 / int8 / float32 state --------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 17, 513, 1000])
@pytest.mark.parametrize("kind", ["numba", "cai"])
def test_bf16_state_equals_cpu(n, kind):
    _state_step("bfloat16", n, 2, kind, seed=n)


OPTIONS = [dict(weight_decay=0.1), dict(weight_decay=0.1, decoupled_weight_decay=True),
           dict(maximize=True), dict(grad_scale=1024.0), dict(clip_coef=0.3),
           dict(clip_value=0.05, grad_scale=4.0, clip_coef=0.5)]


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "-".join(o))
def test_bf16_state_options_and_transforms_equal_cpu(opts):
    _state_step("bfloat16", 300, 2, seed=7, **opts)


@pytest.mark.parametrize("n,steps,opts", [(0, 1, {}), (513, 2, dict(clip_value=0.1,
                                                                  weight_decay=0.1))])
def test_int8_state_equals_cpu(n, steps, opts):
    _state_step("int8", n, steps, seed=n, **opts)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the simulator runs NaN math in Python
def test_int8_nonfinite_block_equals_cpu():
    """An inf gradient makes its block's scale non-finite, the other blocks go on (4
    quantization blocks on a grid of 3: a grid-stride step too)."""
    n = 1000
    p = np.linspace(-1, 1, n).astype(np.float32)
    g = _grads(n, 1, 3)[0]
    g[300] = np.inf
    st = lowp.new_state("int8", n)
    st["exp_avg_scale"][:] = 1e-3              # a state that is not all zero
    st["exp_avg"][:] = np.arange(n) % 255 - 127
    dp, dg, dst = dev(p), dev(g), {k: dev(a) for k, a in st.items()}
    kw = dict(HP, step=1, state_dtype="int8", grad_scale=8.0)
    F.adam_(p, g, st["exp_avg"], st["exp_avg_sq"], backend="numba",
            exp_avg_scale=st["exp_avg_scale"], exp_avg_sq_scale=st["exp_avg_sq_scale"], **kw)
    with np.errstate(invalid="ignore"):       # the simulator computes with NumPy scalars
        F.adam_(dp, dg, dst["exp_avg"], dst["exp_avg_sq"], exp_avg_scale=dst["exp_avg_scale"],
                exp_avg_sq_scale=dst["exp_avg_sq_scale"], backend="cuda", **kw)
    assert not np.isfinite(st["exp_avg_scale"][1]) and np.isfinite(st["exp_avg_scale"][0])
    same(host(dp), p, "param")
    for k in st:
        same(host(dst[k]), st[k], k)


@pytest.mark.parametrize("opts", [dict(clip_value=0.05), dict(grad_scale=2.0, clip_coef=0.5)])
def test_float32_state_with_transform_equals_cpu(opts):
    _state_step("float32", 300, 2, kind="cai", seed=5, **opts)


def test_float64_and_amsgrad_with_transform():
    """float64 + clip_value: the NumPy reference path on the CPU; AMSGrad + grad_scale: the
    factor folded into gsign on both backends."""
    n = 300
    for dt, kw in ((np.float64, dict(clip_value=0.1, grad_scale=2.0)),
                   (np.float32, dict(amsgrad=True, grad_scale=4.0))):
        p = np.linspace(-1, 1, n).astype(dt)
        m, v, mx = (np.zeros(n, dt) for _ in range(3))
        d = [dev(a) for a in (p, m, v, mx)]
        for t, g in enumerate(_grads(n, 2, 1, dt), start=1):
            extra = dict(max_exp_avg_sq=mx) if kw.get("amsgrad") else {}
            dextra = dict(max_exp_avg_sq=d[3]) if kw.get("amsgrad") else {}
            F.adam_(p, g, m, v, step=t, backend="numba", **HP, **kw, **extra)
            F.adam_(d[0], dev(g), d[1], d[2], step=t, backend="cuda", **HP, **kw, **dextra)
        tol = dict(rtol=1e-12) if dt == np.float64 else dict(rtol=1e-5, atol=1e-6)
        for a, b in zip(d, (p, m, v, mx)):
            np.testing.assert_allclose(host(a), b, **tol)


# --- master weights ------------------------------------------------------------------------

FMT_DTYPE = {"float16": np.dtype(np.float16), "bfloat16": BF16}


def _master_run(fmt, n, rounding, sd, grad32, kind="numba", steps=2, **kw):
    rng = np.random.default_rng(n)
    w = (rng.standard_normal(n) * 2).astype(np.float32)
    lo = w.astype(FMT_DTYPE[fmt])
    w = lo.astype(np.float32)
    st = lowp.new_state(sd, n)
    d = {"lo": dev(lo, kind), "w": dev(w, kind)}
    d.update((k, dev(a, kind)) for k, a in st.items())
    for t in range(1, steps + 1):
        g = (rng.standard_normal(n) * np.exp(rng.uniform(-3, 1, n))).astype(FMT_DTYPE[fmt])
        g = g.astype(np.float32) if grad32 else g
        args = dict(HP, step=t, state_dtype=sd, param_rounding=rounding, **kw)
        F.adam_(lo, g, st["exp_avg"], st["exp_avg_sq"], master_param=w, backend="numba",
                **args)
        F.adam_(d["lo"], dev(g, kind), d["exp_avg"], d["exp_avg_sq"], master_param=d["w"],
                backend="cuda", **args)
        codes = "f16" if fmt == "float16" else "bf16p"
        same(_bits(host(d["lo"])), _bits(lo), f"param copy step {t}", codes)
        same(host(d["w"]), w, f"master step {t}")
        for k in st:
            same(host(d[k]), st[k], f"{k} step {t}", "bf16" if sd == "bfloat16" else None)


@pytest.mark.parametrize("fmt", ["float16", "bfloat16"])
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("sd,grad32", [("float32", False), ("bfloat16", True)])
def test_master_weights_equal_cpu(fmt, rounding, sd, grad32):
    _master_run(fmt, 100, rounding, sd, grad32)


@pytest.mark.parametrize("n", [0, 1, 17, 513])
def test_master_sizes_and_cai_arrays(n):
    _master_run("float16", n, "stochastic", "bfloat16", False, kind="cai")


def test_master_with_transform_and_options():
    _master_run("bfloat16", 300, "stochastic", "float32", False, kind="cai", grad_scale=64.0,
                clip_value=0.5, weight_decay=0.1, decoupled_weight_decay=True)


def test_step_arrays_takes_uint16_bits_with_a_format():
    """The internal flat-buffer entry (façades, adapters): uint16 bits + param_format."""
    n = 100
    rng = np.random.default_rng(2)
    lo = rng.standard_normal(n).astype(BF16)
    w = lo.astype(np.float32)
    g = rng.standard_normal(n).astype(BF16)
    st = lowp.new_state("float32", n)
    ref = dict(param=lo.copy(), grad=g, master_param=w.copy(), **{k: a.copy() for k, a in
                                                                 st.items()})
    hp = dict(HP, step=1, weight_decay=0.0, decoupled_weight_decay=False, amsgrad=False,
              maximize=False)
    lowp.step_arrays(_backends.get_backend("numba"), "adam", ref, hp)
    d = {"param": dev(_bits(lo)), "grad": dev(_bits(g)), "master_param": dev(w)}
    d.update((k, dev(a)) for k, a in st.items())
    lowp.step_arrays(_backends.get_backend("cuda"), "adam", d, hp, param_format="bfloat16")
    same(host(d["param"]), _bits(ref["param"]), "param", "bf16p")
    same(host(d["master_param"]), ref["master_param"], "master")


def test_codec_device_functions_match_the_spec():
    """The codecs as compiled for the device (on a GPU: NVVM's int64 code and libdevice bit
    casts) against the spec functions run in Python, on special and random values."""
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 65504, 65519.99, 65520, -70000,
                        2 ** -14, 2 ** -24, 2 ** -25, 3 * 2 ** -26, 1e-30, 1.0, -1.5, 3.4e38],
                       np.float32)
    x = np.concatenate([special, (np.random.default_rng(0).standard_normal(300)
                                  * np.exp2(np.random.default_rng(1).integers(-30, 18, 300))
                                  ).astype(np.float32)])
    xb = x.view(np.uint32)
    n = x.size
    seed = 0x1234567
    out = cuda.to_device(np.zeros((6, n), np.uint32))

    @cuda.jit
    def codecs_kernel(x, h16, out, seed):
        for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
            out[0, i] = KL.enc_p_f16(x[i], i, seed, False)
            out[1, i] = KL.enc_p_f16(x[i], i, seed, True)
            out[2, i] = KL.enc_p_bf16(x[i], i, seed, True)
            out[3, i] = KL.f32_bits(KL.dec_f16(h16[i]))
            out[4, i] = KL.f32_bits(KL.dec_bf16(h16[i]))
            out[5, i] = KL.c_log8_encode(KL.f32_bits(abs(x[i])))

    h16 = (np.arange(n) * 211 % 65536).astype(np.uint16)
    codecs_kernel[3, 16](dev(x), dev(h16), out, seed)
    got = out.copy_to_host()
    b = [int(v) for v in xb]
    sr = [codecs.sr_bits(i, seed) for i in range(n)]
    want = [[param_codecs.f16_encode(u) for u in b],
            [param_codecs.f16_encode_sr(u, r) for u, r in zip(b, sr)],
            [codecs.bf16_encode_sr(u, r) for u, r in zip(b, sr)],
            [param_codecs.f16_decode(int(h)) for h in h16],
            [codecs.bf16_decode(int(h)) for h in h16],
            [codecs.log8_encode(u & 0x7FFFFFFF) for u in b]]
    np.testing.assert_array_equal(got, np.array(want, np.uint32))


# --- grad_stats -------------------------------------------------------------------------------

@pytest.mark.parametrize("n,kw", [(0, {}), (1, {}), (1000, dict(grad_scale=8.0,
                                                                   clip_value=0.3))])
def test_grad_stats_equals_cpu(n, kw):
    gs = _grads(n, 1, n)[0]
    g64 = _grads(n + 3, 1, n + 1, np.float64)[0]
    f16 = _grads(n, 1, n + 2, np.float16)[0]
    b16 = _grads(n, 1, n + 3)[0].astype(BF16)
    want = lowp.grad_stats([gs, g64, f16, b16], **kw)
    got = lowp.grad_stats([dev(gs), dev(g64, "cai"), dev(f16), dev(b16)], **kw)
    assert got[1] is want[1] is True
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    # uint16 bits with their format named
    got = lowp.grad_stats([dev(_bits(b16))], formats=["bfloat16"], **kw)
    np.testing.assert_allclose(got[0], lowp.grad_stats([b16], **kw)[0], rtol=1e-6)


def test_grad_stats_finds_nonfinite_even_when_clipped():
    """found-inf: one inf / NaN element anywhere (hidden by the clamp or not) in any
    buffer clears the flag, as on the CPU."""
    for k, bad in enumerate([np.inf, -np.inf, np.nan]):
        g = _grads(300, 1, k)[0]
        g[250 - k] = bad
        h = g.astype(np.float16)
        for arrays in ([g], [np.ones(5, np.float32), h]):
            want = lowp.grad_stats(arrays, clip_value=0.1)
            got = lowp.grad_stats([dev(a) for a in arrays], clip_value=0.1)
            assert got[1] is want[1] is False


def test_grad_stats_write_equals_cpu():
    g = _grads(513, 1, 4)[0]
    d = dev(g)
    want = lowp.grad_stats([g], grad_scale=4.0, clip_value=0.2, write=True)
    got = lowp.grad_stats([d], grad_scale=4.0, clip_value=0.2, write=True)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    same(host(d), g, "written gradient")


# --- refusals, before any write -----------------------------------------------------------

def _bad_calls():
    n = 64
    p, g = np.linspace(-1, 1, n).astype(np.float32), np.ones(n, np.float32)
    bf = lowp.new_state("bfloat16", n)
    i8 = lowp.new_state("int8", n)
    f32 = lowp.new_state("float32", n)
    lo16, w = p.astype(np.float16), p.copy()
    D = lambda a: dev(a)  # noqa: E731
    dp, dg = D(p), D(g)
    dm, dv = D(bf["exp_avg"]), D(bf["exp_avg_sq"])
    touched = [dp, dm, dv]
    base = dict(HP, step=1)
    calls = [
        (TypeError, "host", lambda: F.adam_(dp, g, dm, dv, state_dtype="bfloat16",
                                            backend="cuda", **base)),
        (TypeError, "exp_avg", lambda: F.adam_(dp, dg, D(f32["exp_avg"]), dv,
                                               state_dtype="bfloat16", backend="cuda", **base)),
        (ValueError, "shape", lambda: F.adam_(dp, D(g[:10]), dm, dv, state_dtype="bfloat16",
                                              backend="cuda", **base)),
        (ValueError, "overlap", lambda: F.adam_(dp, dg, dm, dm, state_dtype="bfloat16",
                                                backend="cuda", **base)),
        (ValueError, "grad_scale", lambda: F.adam_(dp, dg, dm, dv, state_dtype="bfloat16",
                                                   grad_scale=-1.0, backend="cuda", **base)),
        (ValueError, "read-only", lambda: F.adam_(
            dp, dg, CAIArray(bf["exp_avg"], readonly=True), dv, state_dtype="bfloat16",
            backend="cuda", **base)),
        (ValueError, "exp_avg_scale", lambda: F.adam_(
            dp, dg, D(i8["exp_avg"]), D(i8["exp_avg_sq"]), exp_avg_scale=D(np.zeros(3,
                                                                                np.float32)),
            exp_avg_sq_scale=D(i8["exp_avg_sq_scale"]), state_dtype="int8", backend="cuda",
            **base)),
        (ValueError, "param_rounding", lambda: F.adam_(dp, dg, dm, dv, state_dtype="bfloat16",
                                                       param_rounding="stochastic",
                                                       backend="cuda", **base)),
        (ValueError, "amsgrad", lambda: F.adam_(dp, dg, dm, dv, state_dtype="bfloat16",
                                                amsgrad=True, max_exp_avg_sq=dv,
                                                backend="cuda", **base)),
        (_backends.BackendUnavailableError, "amsgrad", lambda: F.adam_(
            dp, dg, D(f32["exp_avg"]), D(f32["exp_avg_sq"]), amsgrad=True,
            max_exp_avg_sq=D(f32["exp_avg"]), clip_value=1.0, backend="cuda", **base)),
        (TypeError, "master_param", lambda: F.adam_(D(lo16), D(lo16), dm, dv,
                                                    state_dtype="bfloat16", backend="cuda",
                                                    **base)),
        (TypeError, "master_param", lambda: F.adam_(D(lo16), D(lo16), dm, dv,
                                                    master_param=D(lo16),
                                                    state_dtype="bfloat16", backend="cuda",
                                                    **base)),
        (ValueError, "int8", lambda: F.adam_(D(lo16), D(lo16), D(i8["exp_avg"]),
                                             D(i8["exp_avg_sq"]), master_param=D(w),
                                             state_dtype="int8", backend="cuda", **base)),
        (TypeError, "grad", lambda: F.adam_(D(lo16), D(p.astype(BF16)), dm, dv,
                                            master_param=D(w), state_dtype="bfloat16",
                                            backend="cuda", **base)),
        (TypeError, "format", lambda: F.adam_(D(_bits(lo16)), D(_bits(lo16)), dm, dv,
                                              master_param=D(w), state_dtype="bfloat16",
                                              backend="cuda", **base)),
        (TypeError, "host", lambda: lowp.grad_stats([dg, g])),
        (TypeError, "formats", lambda: lowp.grad_stats([D(_bits(lo16))])),
        (ValueError, "write", lambda: lowp.grad_stats([dg, D(lo16)], clip_value=1.0,
                                                      write=True)),
    ]
    return calls, touched + [dg]


def test_bad_inputs_are_refused_before_any_write():
    calls, arrays = _bad_calls()
    before = [host(a) for a in arrays]
    for exc, word, call in calls:
        with pytest.raises(exc, match=word):
            call()
    for a, b in zip(arrays, before):
        np.testing.assert_array_equal(_bits(host(a)), _bits(b))


def test_device_param_with_host_backend_is_refused():
    d = dev(np.zeros(4, np.float32))
    s = lowp.new_state("bfloat16", 4)
    with pytest.raises(TypeError, match="numpy"):
        F.adam_(d, d, s["exp_avg"], s["exp_avg_sq"], state_dtype="bfloat16", backend="numba",
                step=1, **HP)


# --- real GPU only --------------------------------------------------------------------------

@requires_gpu
@pytest.mark.parametrize("sd", ["bfloat16", "int8"])
def test_large_buffer_matches_cpu_on_gpu(sd, monkeypatch):  # pragma: no cover
    monkeypatch.setattr(K, "BLOCK_SIZE", 256)
    monkeypatch.setattr(K, "MAX_BLOCKS", 0)
    _state_step(sd, (1 << 20) + 7, 3, seed=11, grad_scale=2.0, clip_value=1.0)


@requires_gpu
@pytest.mark.parametrize("dtn", ["float16", "bfloat16"])
def test_torch_low_precision_tensors_with_master_weights(dtn):  # pragma: no cover
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    n = 4099
    dt = getattr(torch, dtn)
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(n, generator=gen)
    lo = w.to(dt)
    w = lo.float()
    g = torch.randn(n, generator=gen).to(dt)
    st = lowp.new_state("bfloat16", n)
    lo_np = lo.view(torch.int16).numpy().view(np.uint16).copy()
    fmt_np = {"float16": np.float16, "bfloat16": BF16}[dtn]
    lo_h, w_h = lo_np.view(fmt_np), w.numpy().copy()
    F.adam_(lo_h, g.view(torch.int16).numpy().view(np.uint16).view(fmt_np), st["exp_avg"],
            st["exp_avg_sq"], master_param=w_h, step=1, state_dtype="bfloat16",
            param_rounding="stochastic", backend="numba", **HP)
    dl, dg, dw = lo.cuda(), g.cuda(), w.cuda()
    dm = torch.zeros(n, dtype=torch.int16, device="cuda")
    dv = torch.zeros(n, dtype=torch.int16, device="cuda")
    from numba.cuda import as_cuda_array
    F.adam_(dl, dg, as_cuda_array(dm.view(torch.int16)).view(np.uint16),
            as_cuda_array(dv).view(np.uint16), master_param=dw, step=1,
            state_dtype="bfloat16", param_rounding="stochastic", **HP)
    torch.cuda.synchronize()
    np.testing.assert_allclose(dw.cpu().numpy(), w_h, rtol=1e-5, atol=1e-6)
    got = dl.cpu().float().numpy()
    np.testing.assert_allclose(got, lo_h.astype(np.float32), rtol=2 ** -7, atol=1e-6)
