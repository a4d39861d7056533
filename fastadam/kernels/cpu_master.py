"""numba CPU kernels for low-precision parameters with float32 master weights.

* ``master_bf16`` / ``master_f16``: one fused pass per element over the
  low-precision parameter copy ``lo`` (bfloat16 / float16 bit patterns in a
  uint16 array), its gradient ``g`` (the same format as uint16, or float32),
  the float32 master ``w`` and Adam's moments ``m``, ``v`` (float32, or
  bfloat16 bit patterns in uint16 written with stochastic rounding as in
  :mod:`fastadam.kernels.cpu_lowp`): decode the gradient, transform it
  (``clamp(g * gscale, clip)``, as the kernels of cpu_lowp), run the one Adam
  rule of :mod:`fastadam.rules.adam` on the master, store master and moments,
  and write ``lo`` = the new master rounded to the parameter format -- to
  nearest even, or stochastically (``sr``) with the bits
  ``sr_bits(i, seed_p)`` (:mod:`fastadam.rules.param_codecs`).  The old
  ``lo`` is never read.  Parallel over chunks of :data:`_CHUNK` elements; from
  8 MiB of master weights (2M params) each chunk runs in sub-blocks, each first
  prefetching the sub-block ahead (the form of :mod:`._blocked`; the same bits;
  measured 1.05-1.3x faster at 4M params, 1.1-1.7x at 8M, 1.1x at 32M).
* ``lo_sumsq_bf16`` / ``lo_sumsq_f16``: the first pass of a clipped / unscaled
  step over a low-precision gradient (as cpu_lowp's ``grad_sumsq``: sum of
  squares of ``clamp(g * gscale, clip)`` in float64 per 256-element block, and
  the count of blocks holding an inf/NaN, detected on the decoded value, so a
  float16 inf is found).

numba has no half type on the CPU: the formats are uint16 bit patterns,
converted by the LLVM intrinsics below (``fpext``/``fptrunc`` through LLVM's
``half`` for float16, which rounds to nearest even with subnormals, overflow
to inf and NaN handled as IEEE says; bit shifts for bfloat16).  They
transcribe the specification in :mod:`fastadam.rules.param_codecs` and
:mod:`fastadam.rules.codecs`; tests compare them bit for bit.  Scalars are
float32 (cast in Python); the rounding mode and the presence of a gradient
transform are loop-invariant and dispatched outside the inner loops (the inner
loop is one inlined function called with constant flags, so LLVM compiles
each combination without the tests).
"""

from __future__ import annotations

import hashlib
import pathlib

import numba
import numpy as np
from llvmlite import ir
from numba import prange
from numba import types as nbt
from numba.extending import intrinsic

from .. import rules as _rules
from .._config import FASTMATH
from ..rules import codecs as _codecs_r
from ..rules import param_codecs as _pc
from . import _blocked, _fma
from ._blocked import k_line, prefetch_ahead
from ._variants import KernelVariants, use_parallel
from .cpu_lowp import bits_f32, k_absbits_max, k_hash_index, k_hash_next, r_adam_t

INT8_BLOCK = _codecs_r.INT8_BLOCK
#: Elements per parallel work item (the hashed index is a 32-bit induction variable).
_CHUNK = 4096
#: Master arrays of at least this many 64-byte lines (8 MiB, 2M params) run each chunk
#: in sub-blocks of :data:`_SUB` elements, each first prefetching the sub-block
#: :data:`_AHEAD` elements ahead (the form of :mod:`._blocked`; the same bits).
_MIN_LINES = _blocked.MIN_BYTES // _blocked.LINE
#: Sub-block and prefetch distance in elements: those of :mod:`._blocked` for float32.
_SUB = _blocked.SUB_LINES * _blocked.LINE // 4
_AHEAD = _blocked.AHEAD_LINES * _blocked.LINE // 4
_F32_MAX_BITS = np.uint32(0x7F7FFFFF)
_REDUCE_FASTMATH = set(FASTMATH) | {"reassoc"}

_I16 = ir.IntType(16)
_I32 = ir.IntType(32)
_F16 = ir.HalfType()
_F32 = ir.FloatType()


def _c(v, t=_I32):
    return ir.Constant(t, v)


# --- codec IR (32-bit integer arithmetic) ------------------------------------------

def _ir_bf16_decode(b, h16):
    return b.bitcast(b.shl(b.zext(h16, _I32), _c(16)), _F32)


def _ir_f16_decode(b, h16):
    return b.fpext(b.bitcast(h16, _F16), _F32)


def _ir_sr_bits(b, h, seed):
    """codecs.sr_bits with the hashed index ``h`` given: 16 bits in an i32."""
    return b.lshr(b.add(h, seed), _c(16))


def _ir_bf16_nearest(b, x):
    """codecs.bf16_encode (nearest even, NaN kept quiet)."""
    u = b.bitcast(x, _I32)
    hi = b.lshr(u, _c(16))
    r = b.lshr(b.add(b.add(u, _c(0x7FFF)), b.and_(hi, _c(1))), _c(16))
    isnan = b.fcmp_unordered("uno", x, x)
    return b.trunc(b.select(isnan, b.or_(hi, _c(0x40)), r), _I16)


def _ir_bf16_sr(b, x, h, seed):
    """codecs.bf16_encode_sr with the bits sr_bits(i, seed), ``h`` the hashed index."""
    u = b.bitcast(x, _I32)
    isnan = b.fcmp_unordered("uno", x, x)
    t = b.select(isnan, b.or_(u, _c(0x400000)), b.add(u, _ir_sr_bits(b, h, seed)))
    return b.trunc(b.lshr(t, _c(16)), _I16)


def _ir_f16_nearest(b, x):
    """param_codecs.f16_encode: LLVM's fptrunc (IEEE round to nearest even)."""
    return b.bitcast(b.fptrunc(x, _F16), _I16)


def _ir_f16_sr(b, x, h, seed):
    """param_codecs.f16_encode_sr."""
    u = b.bitcast(x, _I32)
    s = b.and_(u, _c(0x80000000))
    a = b.and_(u, _c(0x7FFFFFFF))
    r = _ir_sr_bits(b, h, seed)
    e = b.lshr(a, _c(23))
    # |x| >= 2**-24: drop = 13 (normal) or 126 - e (subnormal), clamped to 23 so that
    # no shift amount reaches 32 on the lanes that take the other branch
    drop = b.select(b.icmp_unsigned(">=", e, _c(113)), _c(13), b.sub(_c(126), e))
    drop = b.select(b.icmp_unsigned(">", drop, _c(23)), _c(23), drop)
    rnd = b.select(b.icmp_unsigned("<=", drop, _c(16)), b.lshr(r, b.sub(_c(16), drop)),
                   b.shl(r, b.sub(drop, _c(16))))
    t1 = b.and_(b.add(a, rnd), b.shl(_c(-1), drop))
    # |x| < 2**-24: up to 2**-24 iff r + floor(|x| * 2**40) >= 2**16, i.e. iff
    # |x| * 2**40 >= 2**16 - r (r an integer; both sides exact in float32)
    ax = b.bitcast(a, _F32)
    up = b.fcmp_ordered(">=", b.fmul(ax, _c(float(2 ** 40), _F32)),
                        b.uitofp(b.sub(_c(0x10000), r), _F32))
    t2 = b.select(up, _c(0x33800000), _c(0))
    t = b.select(b.icmp_unsigned(">=", e, _c(103)), t1, t2)
    y = b.bitcast(b.or_(s, t), _F32)
    big = b.icmp_unsigned(">", a, _c(_pc.F16_MAX_BITS))     # NaN, inf, beyond 65504
    return b.bitcast(b.fptrunc(b.select(big, x, y), _F16), _I16)


def _is_flag(t):
    return isinstance(t, (nbt.Boolean, nbt.BooleanLiteral)) or t == nbt.boolean


# --- intrinsics ----------------------------------------------------------------------

@intrinsic
def k_lo_decode(typingctx, x, f16):
    """A gradient element -> float32: uint16 bits of float16 (``f16``) or bfloat16;
    a float32 gradient as it is."""
    if not _is_flag(f16):
        return None
    if x == nbt.float32:
        def codegen(context, b, sig, args):
            return args[0]
    elif x == nbt.uint16:
        def codegen(context, b, sig, args):
            return b.select(args[1], _ir_f16_decode(b, args[0]), _ir_bf16_decode(b, args[0]))
    else:
        return None
    return nbt.float32(x, f16), codegen


@intrinsic
def k_lo_encode(typingctx, x, h, seed, f16, sr):
    """float32 -> uint16 bits of float16 (``f16``) or bfloat16; stochastic rounding
    (``sr``) with the bits ``sr_bits(i, seed)`` (``h`` the hashed index), else nearest."""
    if x != nbt.float32 or h != nbt.uint32 or seed != nbt.uint32 or not _is_flag(f16) \
            or not _is_flag(sr):
        return None

    def codegen(context, b, sig, args):
        v, hh, sd, is16, issr = args
        bf = b.select(issr, _ir_bf16_sr(b, v, hh, sd), _ir_bf16_nearest(b, v))
        hf = b.select(issr, _ir_f16_sr(b, v, hh, sd), _ir_f16_nearest(b, v))
        return b.select(is16, hf, bf)
    return nbt.uint16(x, h, seed, f16, sr), codegen


@intrinsic
def k_state_decode(typingctx, x):
    """A moment element -> float32: bfloat16 bits (uint16) or float32 as it is."""
    if x == nbt.float32:
        def codegen(context, b, sig, args):
            return args[0]
    elif x == nbt.uint16:
        def codegen(context, b, sig, args):
            return _ir_bf16_decode(b, args[0])
    else:
        return None
    return nbt.float32(x), codegen


@intrinsic
def k_state_encode(typingctx, old, x, h, seed):
    """float32 -> the storage of ``old``'s type: bfloat16 bits with stochastic rounding
    (uint16, as cpu_lowp's bf16 state), or float32 as it is."""
    if x != nbt.float32 or h != nbt.uint32 or seed != nbt.uint32:
        return None
    if old == nbt.float32:
        def codegen(context, b, sig, args):
            return args[1]
    elif old == nbt.uint16:
        def codegen(context, b, sig, args):
            return _ir_bf16_sr(b, args[1], args[2], args[3])
    else:
        return None
    return old(old, x, h, seed), codegen


def _inline(f):
    return numba.njit(inline="always", fastmath=FASTMATH, cache=False)(f)


c_clamp = _inline(_codecs_r.clamp)


@_inline
def _pass(lb, gb, wb, mb, vb, h, seed_m, seed_v, seed_p, gscale, clip, s0, s1, s2, s3, s4,
          s5, s6, s7, s8, f16, sr, plain):
    """The inner loop over one chunk or sub-block (inlined with constant ``f16``, ``sr``,
    ``plain``); ``h`` is the hashed index of its first element."""
    for j in range(wb.shape[0]):
        wi, mi, vi = r_adam_t(wb[j], k_lo_decode(gb[j], f16), k_state_decode(mb[j]),
                              k_state_decode(vb[j]), gscale, clip, s0, s1, s2, s3, s4, s5, s6,
                              s7, s8, plain)
        wb[j] = wi
        mb[j] = k_state_encode(mb[j], mi, h, seed_m)
        vb[j] = k_state_encode(vb[j], vi, h, seed_v)
        lb[j] = k_lo_encode(wi, h, seed_p, f16, sr)
        h = k_hash_next(h)


@_inline
def _prefetch(lo, g, w, m, v, a):
    """Prefetch the sub-block :data:`_AHEAD` elements after the one at ``a``."""
    prefetch_ahead(lo, a + _AHEAD, _SUB)
    prefetch_ahead(g, a + _AHEAD, _SUB)
    prefetch_ahead(w, a + _AHEAD, _SUB)
    prefetch_ahead(m, a + _AHEAD, _SUB)
    prefetch_ahead(v, a + _AHEAD, _SUB)


@_inline
def _span(lo, g, w, m, v, a, z, seed_m, seed_v, seed_p, sr, plain, gscale, clip,
          s0, s1, s2, s3, s4, s5, s6, s7, s8, f16):
    """Elements ``[a, z)``: the inner loop with the rounding mode and transform
    dispatched outside it."""
    lb, gb, wb, mb, vb = lo[a:z], g[a:z], w[a:z], m[a:z], v[a:z]
    h = k_hash_index(a)
    if sr:
        if plain:
            _pass(lb, gb, wb, mb, vb, h, seed_m, seed_v, seed_p, gscale, clip,
                  s0, s1, s2, s3, s4, s5, s6, s7, s8, f16, True, True)
        else:
            _pass(lb, gb, wb, mb, vb, h, seed_m, seed_v, seed_p, gscale, clip,
                  s0, s1, s2, s3, s4, s5, s6, s7, s8, f16, True, False)
    elif plain:
        _pass(lb, gb, wb, mb, vb, h, seed_m, seed_v, seed_p, gscale, clip,
              s0, s1, s2, s3, s4, s5, s6, s7, s8, f16, False, True)
    else:
        _pass(lb, gb, wb, mb, vb, h, seed_m, seed_v, seed_p, gscale, clip,
              s0, s1, s2, s3, s4, s5, s6, s7, s8, f16, False, False)


@_inline
def _chunk(lo, g, w, m, v, a, z, pf, seed_m, seed_v, seed_p, sr, plain, gscale, clip,
           s0, s1, s2, s3, s4, s5, s6, s7, s8, f16):
    """One parallel work item ``[a, z)``: whole, or (``pf``) in sub-blocks of
    :data:`_SUB` elements, each first prefetching the sub-block :data:`_AHEAD` ahead."""
    sub = _SUB if pf else _CHUNK
    for b in range(a, z, sub):
        if pf:
            _prefetch(lo, g, w, m, v, b)
        _span(lo, g, w, m, v, b, min(b + sub, z), seed_m, seed_v, seed_p, sr, plain,
              gscale, clip, s0, s1, s2, s3, s4, s5, s6, s7, s8, f16)


# --- the loops ---------------------------------------------------------------------

@_inline
def _plain(gscale, clip, gsign, l2):
    """Whether the plain loop applies: no gradient transform (``clamp(g * 1, inf) == g``
    for every g), ``gsign == 1`` and ``l2 == 0``."""
    one = gscale / gscale
    return (gscale == one and not clip <= bits_f32(_F32_MAX_BITS) and gsign == one
            and l2 == one - one)


def master_bf16(lo, g, w, m, v, seed_m, seed_v, seed_p, sr, gscale, clip,
                s0, s1, s2, s3, s4, s5, s6, s7, s8):
    n = w.shape[0]
    # clamp(g * 1, inf) == g for every g: the plain loop skips the transform (and takes
    # gsign == 1, l2 == 0 as constants)
    plain = _plain(gscale, clip, s0, s1)
    pf = n >= _MIN_LINES * k_line(w)          # large arrays: prefetched sub-blocks
    for c in prange((n + _CHUNK - 1) // _CHUNK):
        _chunk(lo, g, w, m, v, c * _CHUNK, min(c * _CHUNK + _CHUNK, n), pf, seed_m, seed_v,
               seed_p, sr, plain, gscale, clip, s0, s1, s2, s3, s4, s5, s6, s7, s8, False)


def master_f16(lo, g, w, m, v, seed_m, seed_v, seed_p, sr, gscale, clip,
               s0, s1, s2, s3, s4, s5, s6, s7, s8):
    n = w.shape[0]
    plain = _plain(gscale, clip, s0, s1)
    pf = n >= _MIN_LINES * k_line(w)
    for c in prange((n + _CHUNK - 1) // _CHUNK):
        _chunk(lo, g, w, m, v, c * _CHUNK, min(c * _CHUNK + _CHUNK, n), pf, seed_m, seed_v,
               seed_p, sr, plain, gscale, clip, s0, s1, s2, s3, s4, s5, s6, s7, s8, True)


@_inline
def _sumsq(g, gscale, clip, f16):
    """The first pass over low-precision gradient bits ``g`` (inlined with a constant
    ``f16``): float32 sums of squares of ``clamp(decode(g) * gscale, clip)`` within each
    256-element block, added in float64, and the count of blocks with a non-finite
    decoded element."""
    n = g.shape[0]
    nblocks = (n + INT8_BLOCK - 1) // INT8_BLOCK
    zero = gscale - gscale
    acc = 0.0
    bad = 0
    for b in prange(nblocks):
        gb = g[b * INT8_BLOCK:min((b + 1) * INT8_BLOCK, n)]
        s = zero
        # the largest |decoded element| as its bits (NaN above inf): >= 0x7F800000 iff
        # the block holds an inf or NaN (looked at before the clamp, which hides an
        # inf); an integer max, so the loop vectorizes
        big = np.uint32(0)
        for i in range(gb.shape[0]):
            x = k_lo_decode(gb[i], f16)
            y = c_clamp(x * gscale, clip)
            s += y * y
            big = k_absbits_max(big, x)
        acc += np.float64(s)
        bad += 1 if big >= 0x7F800000 else 0
    return acc, bad


def lo_sumsq_bf16(g, gscale, clip):
    """``(sum of squares, blocks with a non-finite element)`` of bfloat16 gradient bits
    (see :func:`_sumsq` and the module docstring)."""
    return _sumsq(g, gscale, clip, False)


def lo_sumsq_f16(g, gscale, clip):
    """As :func:`lo_sumsq_bf16` for float16 bits."""
    return _sumsq(g, gscale, clip, True)


KERNEL_NAMES = ("master_bf16", "master_f16", "lo_sumsq_bf16", "lo_sumsq_f16")

def _imported_hash() -> str:
    """Hash of cpu_lowp's source: its intrinsics are compiled into these loops, and
    numba's cache only watches the file that holds a loop."""
    from . import cpu_lowp
    return hashlib.sha256(pathlib.Path(cpu_lowp.__file__).read_bytes()).hexdigest()[:8]


_HASH = _rules.source_hash(extra=repr(sorted(FASTMATH)) + f"master{INT8_BLOCK}/{_CHUNK}/"
                           + _imported_hash() + _blocked.HASH + _fma.HASH)
_variants = KernelVariants(
    globals(), _HASH, lambda name: _REDUCE_FASTMATH if "sumsq" in name else FASTMATH,
    KERNEL_NAMES)
get = _variants.get
entry = _variants.entry


def run(name: str, arrays, scalars):
    """Run kernel ``name`` on 1-D contiguous ``arrays`` with the given scalars."""
    return _variants.call(name, use_parallel(arrays[0].shape[0]), *arrays, *scalars)
