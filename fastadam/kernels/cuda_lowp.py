"""numba CUDA kernels for reduced-precision Adam state, fused gradient transforms and
low-precision parameters with float32 master weights.

The device counterpart of :mod:`fastadam.kernels.cpu_lowp` and
:mod:`fastadam.kernels.cpu_master`, with the same results bit for bit where the
arithmetic is the same (see "Bits" below):

* ``adam_bf16``: moments stored as bfloat16 bit patterns (uint16), decoded,
  updated by the one float32 Adam rule (:mod:`fastadam.rules.adam`), stored with
  stochastic rounding using the bits ``sr_bits(i, seed)`` of the CPU kernels.
* ``adam_int8``: blockwise 8-bit moments (:data:`INT8_BLOCK` elements per
  quantization block, one float32 absmax per block and moment).  One CUDA thread
  block of :data:`I8_THREADS` threads per quantization block (grid-stride over
  the quantization blocks): each thread loads its 4 elements, updates them and
  keeps the new moments in registers; the block finds the new absmax by a
  shared-memory tree reduction of the integer ``absbits`` (NaN wins, as on the
  CPU); then each thread requantizes its elements.
* ``adam_t``: float32 / float64 state with the gradient transform fused in.
* ``master_*``: float16 / bfloat16 parameters (uint16 bit patterns) with float32
  master weights and float32 or bf16 moments; the parameter is rewritten from the
  new master, to nearest or stochastically (:mod:`fastadam.rules.param_codecs`).
* ``sumsq_*``: the first pass of a scaled / clipped step
  (:func:`fastadam.lowp.grad_stats`): the float64 sum of squares of
  ``clamp(g * gscale, clip)`` and the count of non-finite raw elements,
  reduced per block in shared memory into a slot of its own of a float64
  array of per-block partials; ``sumsq_total`` (one block) then adds the
  partials in a fixed order into a 2-element array that the host reads with
  one small copy.  No atomics: the norm is the same bits run after run, as on
  the CPU.

Every Adam kernel transforms the gradient first, ``g = clamp(g * gscale, clip)``
(``gscale = clip_coef / grad_scale``, ``clip = clip_value * clip_coef``; 1 and
+inf when unused: the identity, bit for bit), as the CPU kernels do.

Codecs: the plain-int functions of :mod:`fastadam.rules.codecs` and
:mod:`fastadam.rules.param_codecs` *are* the device code (wrapped with
``cuda.jit(device=True)``; numba does their integer work in int64 on values
that are never negative, which gives Python's results).  The only additions
are the two bit casts float32 <-> bits: ``libdevice.float_as_int`` /
``int_as_float`` on a GPU; under the simulator (where libdevice is a stub)
NumPy ``.view`` of a scalar.

Bits: under numba's CUDA simulator every float32 operation is rounded on its
own, as on the CPU, so results equal the numba CPU kernels bit for bit (the
tests check it).  On a real GPU NVVM contracts multiply-adds into FMAs (see
docs/cuda.md), so parameters may differ in the last bit and a moment may then
round to the neighbouring bf16 / int8 code: equal within the float32 contract.

Launch: elementwise kernels use :func:`fastadam.kernels.cuda.grid_size`
(``BLOCK_SIZE``, ``MAX_BLOCKS``) and handle two elements per loop trip, all
loads first (twice the bytes in flight per thread); the int8 kernel uses blocks
of :data:`I8_THREADS` threads and the reduction :data:`RED_THREADS` (four
elements per trip).  Work goes on the caller's stream (as
:mod:`fastadam.kernels.cuda`); only :func:`grad_stats` synchronizes (it
returns numbers to the host).
"""

from __future__ import annotations


import numba
import numpy as np
from numba import cuda

from .. import rules as _rules
from ..rules import adam as _adam_r
from ..rules import codecs as _cd
from ..rules import param_codecs as _pc
from . import cuda as K

SIMULATOR = K.SIMULATOR
INT8_BLOCK = _cd.INT8_BLOCK
#: Threads per block of the int8 kernel: each owns INT8_BLOCK / I8_THREADS elements of a
#: quantization block.
I8_THREADS = 64
_RED_INT8 = 2 * I8_THREADS       # the int8 kernel's shared scratch: two absmax reductions
assert INT8_BLOCK == 4 * I8_THREADS     # adam_int8 is written out for 4 elements a thread
#: Threads per block of the gradient-norm reduction (a power of two; smaller under the
#: simulator, where each thread is a Python thread).
RED_THREADS = 32 if SIMULATOR else 128


def _device(f):
    return cuda.jit(device=True)(f)


# --- bit casts and integer loads ---------------------------------------------------------

if SIMULATOR:
    def f32_bits(x):
        """Bit pattern of float32 ``x`` as a non-negative integer."""
        return int(np.float32(x).view(np.uint32))

    def bits_f32(u):
        """The float32 whose bit pattern is the low 32 bits of integer ``u``."""
        return np.uint32(int(u) & 0xFFFFFFFF).view(np.float32)

    def as_int(x):
        """An integer array element as a (Python / int64) integer."""
        return int(x)

    def rint(x):
        """float32 ``x`` rounded to the nearest integer, ties to even, as an integer."""
        return round(x)
else:  # pragma: no cover - real GPU
    from numba.cuda import libdevice

    @cuda.jit(device=True)
    def f32_bits(x):
        return numba.int64(numba.uint32(libdevice.float_as_int(x)))

    @cuda.jit(device=True)
    def bits_f32(u):
        return libdevice.int_as_float(numba.int32(u & 0xFFFFFFFF))

    @cuda.jit(device=True)
    def as_int(x):
        return numba.int64(x)

    @cuda.jit(device=True)
    def rint(x):   # round() of a float32 goes through float64 in numba
        return numba.int64(libdevice.rintf(x))


# --- the rules and codecs as device functions ---------------------------------------------

r_adam = _device(_adam_r.adam)
c_clamp = _device(_cd.clamp)
c_sr_bits = _device(_cd.sr_bits)
c_bf16_encode = _device(_cd.bf16_encode)
c_bf16_encode_sr = _device(_cd.bf16_encode_sr)
c_bf16_decode = _device(_cd.bf16_decode)
c_absbits = _device(_cd.absbits)
c_bigger_bits = _device(_cd.bigger_bits)


@_device
def c_lin8_encode(y, qmax):
    """:func:`fastadam.rules.codecs.lin8_encode` with its bound given as a float32
    (``qmax`` = 127) and float32 rounding: the spec's ``y >= 127`` and ``round(y)``
    go through float64 in numba (exact, but double-precision instructions)."""
    if y != y:
        return 0
    if y >= qmax:
        return 127
    if y <= -qmax:
        return -127
    return rint(y)

c_log8_encode = _device(_cd.log8_encode)
c_log8_decode = _device(_cd.log8_decode)
c_f16_encode = _device(_pc.f16_encode)


def _rebind(f, **names):
    """``f`` with some of its global names bound to device functions (a spec function
    that calls another spec function calls its device version)."""
    import types
    g = dict(f.__globals__, **names)
    return types.FunctionType(f.__code__, g, f.__name__, f.__defaults__, f.__closure__)


c_f16_encode_sr = _device(_rebind(_pc.f16_encode_sr, f16_encode=c_f16_encode))
c_f16_decode = _device(_pc.f16_decode)


# element codecs built from them (float32 <-> storage)

@_device
def dec_f32(x):
    return x


@_device
def dec_bf16(h):
    return bits_f32(c_bf16_decode(as_int(h)))


@_device
def dec_f16(h):
    return bits_f32(c_f16_decode(as_int(h)))


@_device
def enc_f32(x, i, seed):
    return x


@_device
def enc_bf16_sr(x, i, seed):
    return c_bf16_encode_sr(f32_bits(x), c_sr_bits(i, seed))


def _enc_p(nearest, stochastic):
    """The parameter encoder of one format: float32 -> its bits, rounded to nearest even
    or (``sr``) stochastically with the bits ``sr_bits(i, seed)``."""
    @_device
    def enc_p(x, i, seed, sr):
        b = f32_bits(x)
        if sr:
            return stochastic(b, c_sr_bits(i, seed))
        return nearest(b)
    return enc_p


enc_p_bf16 = _enc_p(c_bf16_encode, c_bf16_encode_sr)
enc_p_f16 = _enc_p(c_f16_encode, c_f16_encode_sr)


# --- the loops ------------------------------------------------------------------------------

# Elementwise loops: grid-stride, two elements per trip with all loads issued first
# (elements i and i + gridsize: coalesced, and twice the bytes in flight per thread,
# which is what a memory-bound loop on a GPU needs), then a remainder of one.  Which
# elements go together changes no result: each element's math stands alone.

@_device
def _t_elem(p, g, m, v, i, pi, gi, mi, vi, gscale, clip, s0, s1, s2, s3, s4, s5, s6, s7,
            s8):
    gi = c_clamp(gi * gscale, clip)
    p[i], m[i], v[i] = r_adam(pi, gi, mi, vi, s0, s1, s2, s3, s4, s5, s6, s7, s8)


def adam_t(p, g, m, v, gscale, clip, s0, s1, s2, s3, s4, s5, s6, s7, s8):
    n = p.shape[0]
    st = cuda.gridsize(1)
    i = cuda.grid(1)
    while i + st < n:
        j = i + st
        p0, g0, m0, v0 = p[i], g[i], m[i], v[i]
        p1, g1, m1, v1 = p[j], g[j], m[j], v[j]
        _t_elem(p, g, m, v, i, p0, g0, m0, v0, gscale, clip, s0, s1, s2, s3, s4, s5, s6,
                s7, s8)
        _t_elem(p, g, m, v, j, p1, g1, m1, v1, gscale, clip, s0, s1, s2, s3, s4, s5, s6,
                s7, s8)
        i = j + st
    if i < n:
        _t_elem(p, g, m, v, i, p[i], g[i], m[i], v[i], gscale, clip, s0, s1, s2, s3, s4, s5,
                s6, s7, s8)


@_device
def _bf16_elem(p, m, v, i, pi, gi, mi, vi, seed_m, seed_v, gscale, clip, s0, s1, s2, s3, s4,
               s5, s6, s7, s8):
    gi = c_clamp(gi * gscale, clip)
    pi, mi, vi = r_adam(pi, gi, dec_bf16(mi), dec_bf16(vi), s0, s1, s2, s3, s4, s5, s6, s7,
                        s8)
    p[i] = pi
    m[i] = enc_bf16_sr(mi, i, seed_m)
    v[i] = enc_bf16_sr(vi, i, seed_v)


def adam_bf16(p, g, m, v, seed_m, seed_v, gscale, clip, s0, s1, s2, s3, s4, s5, s6, s7, s8):
    n = p.shape[0]
    st = cuda.gridsize(1)
    i = cuda.grid(1)
    while i + st < n:
        j = i + st
        p0, g0, m0, v0 = p[i], g[i], m[i], v[i]
        p1, g1, m1, v1 = p[j], g[j], m[j], v[j]
        _bf16_elem(p, m, v, i, p0, g0, m0, v0, seed_m, seed_v, gscale, clip, s0, s1, s2, s3,
                   s4, s5, s6, s7, s8)
        _bf16_elem(p, m, v, j, p1, g1, m1, v1, seed_m, seed_v, gscale, clip, s0, s1, s2, s3,
                   s4, s5, s6, s7, s8)
        i = j + st
    if i < n:
        _bf16_elem(p, m, v, i, p[i], g[i], m[i], v[i], seed_m, seed_v, gscale, clip, s0, s1,
                   s2, s3, s4, s5, s6, s7, s8)


@_device
def _i8_update(p, i, n, pq, gq, mq, vq, mstep, vsc, am, av, zero, gscale, clip,
               s0, s1, s2, s3, s4, s5, s6, s7, s8):
    """Element ``i`` of a quantization block: decode, the rule, store the parameter; the
    new moments and the running block absmax bits (``am``, ``av``)."""
    if i < n:
        gi = c_clamp(gq * gscale, clip)
        pi, mi, vi = r_adam(pq, gi, mq * mstep, bits_f32(c_log8_decode(as_int(vq))) * vsc,
                            s0, s1, s2, s3, s4, s5, s6, s7, s8)
        p[i] = pi
        am = c_bigger_bits(am, c_absbits(f32_bits(mi)))
        av = c_bigger_bits(av, c_absbits(f32_bits(vi)))
        return mi, vi, am, av
    return zero, zero, am, av


@_device
def _i8_store(mq, vq, i, n, mi, vi, minv, vinv, qmax):
    if i < n:
        mq[i] = c_lin8_encode(mi * minv, qmax)
        vq[i] = c_log8_encode(f32_bits(vi * vinv))


def adam_int8(p, g, mq, ms, vq, vs, gscale, clip, qmax, s0, s1, s2, s3, s4, s5, s6, s7, s8):
    # launched with I8_THREADS threads per block; one quantization block per trip:
    # thread t owns its elements t, t + I8_THREADS, ... (all loads issued first; indices
    # past the end load the last element and are masked)
    red = cuda.shared.array(_RED_INT8, np.int32)
    t = cuda.threadIdx.x
    n = p.shape[0]
    zero = qmax - qmax
    one = qmax / qmax
    T = I8_THREADS
    for b in range(cuda.blockIdx.x, (n + INT8_BLOCK - 1) // INT8_BLOCK, cuda.gridDim.x):
        i0 = b * INT8_BLOCK + t
        i1 = i0 + T
        i2 = i1 + T
        i3 = i2 + T
        j0, j1, j2, j3 = min(i0, n - 1), min(i1, n - 1), min(i2, n - 1), min(i3, n - 1)
        p0, g0, m0, v0 = p[j0], g[j0], mq[j0], vq[j0]
        p1, g1, m1, v1 = p[j1], g[j1], mq[j1], vq[j1]
        p2, g2, m2, v2 = p[j2], g[j2], mq[j2], vq[j2]
        p3, g3, m3, v3 = p[j3], g[j3], mq[j3], vq[j3]
        mstep = ms[b] / qmax
        vsc = vs[b]
        am = 0
        av = 0
        m0, v0, am, av = _i8_update(p, i0, n, p0, g0, m0, v0, mstep, vsc, am, av, zero,
                                    gscale, clip, s0, s1, s2, s3, s4, s5, s6, s7, s8)
        m1, v1, am, av = _i8_update(p, i1, n, p1, g1, m1, v1, mstep, vsc, am, av, zero,
                                    gscale, clip, s0, s1, s2, s3, s4, s5, s6, s7, s8)
        m2, v2, am, av = _i8_update(p, i2, n, p2, g2, m2, v2, mstep, vsc, am, av, zero,
                                    gscale, clip, s0, s1, s2, s3, s4, s5, s6, s7, s8)
        m3, v3, am, av = _i8_update(p, i3, n, p3, g3, m3, v3, mstep, vsc, am, av, zero,
                                    gscale, clip, s0, s1, s2, s3, s4, s5, s6, s7, s8)
        red[t] = am
        red[t + T] = av
        cuda.syncthreads()
        # tree reduction of the block's largest absbits (NaN's bits are the largest)
        k = T // 2
        while k > 0:
            if t < k:
                if red[t + k] > red[t]:
                    red[t] = red[t + k]
                if red[t + k + T] > red[t + T]:
                    red[t + T] = red[t + k + T]
            cuda.syncthreads()
            k //= 2
        mabs = bits_f32(red[0])
        vmax = bits_f32(red[T])
        # a zero or NaN scale gives factor 0 and codes 0, as on the CPU
        minv = qmax / mabs if mabs > zero else zero
        vinv = one / vmax if vmax > zero else zero
        _i8_store(mq, vq, i0, n, m0, v0, minv, vinv, qmax)
        _i8_store(mq, vq, i1, n, m1, v1, minv, vinv, qmax)
        _i8_store(mq, vq, i2, n, m2, v2, minv, vinv, qmax)
        _i8_store(mq, vq, i3, n, m3, v3, minv, vinv, qmax)
        if t == 0:
            ms[b] = mabs
            vs[b] = vmax
        cuda.syncthreads()          # red is reused by the next quantization block


def _master_loop(dec_g, dec_s, enc_s, enc_p):
    @_device
    def elem(lo, w, m, v, i, gi, wi, mi, vi, seed_m, seed_v, seed_p, sr, gscale, clip,
             s0, s1, s2, s3, s4, s5, s6, s7, s8):
        gi = c_clamp(dec_g(gi) * gscale, clip)
        wi, mi, vi = r_adam(wi, gi, dec_s(mi), dec_s(vi), s0, s1, s2, s3, s4, s5, s6, s7, s8)
        w[i] = wi
        m[i] = enc_s(mi, i, seed_m)
        v[i] = enc_s(vi, i, seed_v)
        lo[i] = enc_p(wi, i, seed_p, sr)

    def master(lo, g, w, m, v, seed_m, seed_v, seed_p, sr, gscale, clip,
               s0, s1, s2, s3, s4, s5, s6, s7, s8):
        n = w.shape[0]
        st = cuda.gridsize(1)
        i = cuda.grid(1)
        while i + st < n:
            j = i + st
            g0, w0, m0, v0 = g[i], w[i], m[i], v[i]
            g1, w1, m1, v1 = g[j], w[j], m[j], v[j]
            elem(lo, w, m, v, i, g0, w0, m0, v0, seed_m, seed_v, seed_p, sr, gscale, clip,
                 s0, s1, s2, s3, s4, s5, s6, s7, s8)
            elem(lo, w, m, v, j, g1, w1, m1, v1, seed_m, seed_v, seed_p, sr, gscale, clip,
                 s0, s1, s2, s3, s4, s5, s6, s7, s8)
            i = j + st
        if i < n:
            elem(lo, w, m, v, i, g[i], w[i], m[i], v[i], seed_m, seed_v, seed_p, sr, gscale,
                 clip, s0, s1, s2, s3, s4, s5, s6, s7, s8)
    return master


@_device
def block_tree_sum(acc, cnt, t):
    """Add the :data:`RED_THREADS` slots of the block's shared arrays ``acc`` and ``cnt``
    into slot 0, in a fixed tree (called by every thread of the block, ``t`` its index,
    once each has written its slot)."""
    cuda.syncthreads()
    k = RED_THREADS // 2
    while k > 0:
        if t < k:
            acc[t] += acc[t + k]
            cnt[t] += cnt[t + k]
        cuda.syncthreads()
        k //= 2


def _sumsq_loop(dec):
    @_device
    def sq_elem(g, i, x, s, bad, zero, big, gscale, clip, write):
        x = dec(x)
        if not (x <= big and x >= -big):    # inf or NaN (big: the largest finite)
            bad += 1
        y = c_clamp(x * gscale, clip)
        if write:
            g[i] = y
        y64 = zero + y                      # square in float64: no overflow
        return s + y64 * y64, bad

    def sumsq(g, zero, big, gscale, clip, write, part, base):
        # launched with RED_THREADS threads per block; block b's sums go to slot base + b
        acc = cuda.shared.array(RED_THREADS, np.float64)
        cnt = cuda.shared.array(RED_THREADS, np.int32)
        t = cuda.threadIdx.x
        s = zero
        bad = 0
        n = g.shape[0]
        st = cuda.gridsize(1)
        i = cuda.grid(1)
        # four elements per trip, loads first (memory-level parallelism), then the rest
        while i + 3 * st < n:
            x0, x1, x2, x3 = g[i], g[i + st], g[i + 2 * st], g[i + 3 * st]
            s, bad = sq_elem(g, i, x0, s, bad, zero, big, gscale, clip, write)
            s, bad = sq_elem(g, i + st, x1, s, bad, zero, big, gscale, clip, write)
            s, bad = sq_elem(g, i + 2 * st, x2, s, bad, zero, big, gscale, clip, write)
            s, bad = sq_elem(g, i + 3 * st, x3, s, bad, zero, big, gscale, clip, write)
            i += 4 * st
        while i < n:
            s, bad = sq_elem(g, i, g[i], s, bad, zero, big, gscale, clip, write)
            i += st
        acc[t] = s
        cnt[t] = bad
        block_tree_sum(acc, cnt, t)
        if t == 0:
            part[0, base + cuda.blockIdx.x] = acc[0]
            part[1, base + cuda.blockIdx.x] = zero + cnt[0]
    return sumsq


def sumsq_total(part, m, zero, out):
    # one block of RED_THREADS threads: the sums of slots 0..m-1 of part, in a fixed
    # order (each thread its slots t, t + RED_THREADS, ... in turn, then a fixed tree),
    # so the total does not depend on the order in which the blocks finished
    acc = cuda.shared.array(RED_THREADS, np.float64)
    cnt = cuda.shared.array(RED_THREADS, np.float64)
    t = cuda.threadIdx.x
    s = zero
    c = zero
    for j in range(t, m, RED_THREADS):
        s += part[0, j]
        c += part[1, j]
    acc[t] = s
    cnt[t] = c
    block_tree_sum(acc, cnt, t)
    if t == 0:
        out[0] = acc[0]
        out[1] = cnt[0]


_LOOPS = {
    "adam_t": lambda: adam_t,
    "adam_bf16": lambda: adam_bf16,
    "adam_int8": lambda: adam_int8,
    "sumsq_total": lambda: sumsq_total,
}
_PARAM_ENC = {"float16": enc_p_f16, "bfloat16": enc_p_bf16}
_DEC = {None: dec_f32, "float16": dec_f16, "bfloat16": dec_bf16}
for _fmt in ("float16", "bfloat16"):
    for _g in (None, _fmt):
        for _s in ("float32", "bfloat16"):
            _LOOPS[f"master_{_fmt}_g{_g or 'float32'}_s{_s}"] = (
                lambda f=_fmt, gg=_g, s=_s: _master_loop(
                    _DEC[gg], dec_f32 if s == "float32" else dec_bf16,
                    enc_f32 if s == "float32" else enc_bf16_sr, _PARAM_ENC[f]))
for _g in (None, "float16", "bfloat16"):
    _LOOPS[f"sumsq_{_g or 'float'}"] = lambda gg=_g: _sumsq_loop(_DEC[gg])

KERNEL_NAMES = tuple(_LOOPS)
_HASH = _rules.source_hash(extra=f"cuda_lowp{INT8_BLOCK}/{RED_THREADS}/{I8_THREADS}")
_compiled: dict = {}


def get(name: str):
    """The dispatcher of kernel ``name`` (made lazily, compiled on its first launch).

    Loops written at module level are cached on disk (keyed by the rules' hash, as
    :mod:`fastadam.kernels.cuda`); the master-weight and reduction loops are closures
    over their codecs and are compiled once per process.
    """
    k = _compiled.get(name)
    if k is None:
        if name not in _LOOPS:
            raise KeyError(f"no cuda_lowp kernel named {name!r}")
        src = _LOOPS[name]()
        closure = src.__closure__ is not None
        import types
        suffix = "_cudalowp_" + _HASH
        f = types.FunctionType(src.__code__, src.__globals__, name + suffix, src.__defaults__,
                               src.__closure__)
        f.__qualname__ = name + suffix
        f.__module__ = src.__module__
        k = _compiled[name] = cuda.jit(cache=not (SIMULATOR or closure))(f)
    return k
