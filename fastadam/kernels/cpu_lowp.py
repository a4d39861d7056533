"""numba CPU kernels for reduced-precision Adam state and fused gradient transforms.

* ``adam_bf16``: moments stored as bfloat16 bit patterns in uint16 arrays;
  one pass per element: decode (bit shift + bit cast), the float32 Adam rule,
  encode with stochastic rounding (bits from a hash of the element index and
  a per-step seed; see :func:`fastadam.rules.codecs.bf16_encode_sr`).  Parallel
  over chunks of :data:`_CHUNK` elements, so that the hashed index
  ``i * 0x9E3779B1 mod 2**32`` is a 32-bit induction variable (one vector add,
  not a vector multiply, per vector).
* ``adam_int8``: blockwise 8-bit moments (:data:`INT8_BLOCK` elements per
  block, one float32 absmax per block and moment); one pass over memory,
  parallel over chunks of blocks: a block is decoded, updated (parameter
  stored) and its new moments kept in one half of a 4 KiB per-work-item scratch
  (L1-resident) while their absmax is found; then the block is requantized
  from the scratch (a block with finite scales, the normal case, rounds its
  linear codes with one conversion instruction and its log codes with an add, a
  shift and a max: no clamps, no NaN test).  Software-pipelined: block ``b``'s
  requantization runs after block ``b + 1``'s update (the other half of the
  scratch), so that it never waits for the end of the update loop (the divider's
  latency, the absmax reductions, the scale divisions), and each pass is one
  vectorized loop over a whole block, its prefetch hints in two bursts of
  :data:`_SUB` elements' lines, one before each pass: 1.13-1.14x faster than a
  requantization right after its block's update in two 128-element sub-blocks
  (AMD EPYC, L2-resident, one thread; the same bits).
  The parameter update uses the exact float32 moments of this step; only what
  is *stored* is rounded.
* ``adam_f32``: float32 state with the gradient transform (below) fused in,
  for clip-by-value, which cannot be folded into a scalar.  Its parallel
  variant is the loop in the prefetched sub-block form of :mod:`._blocked`
  (1.25x faster at 4M params, 1.4-1.6x at 8M, 1.08x at 32M; the same bits).
* ``grad_sumsq``: the first pass of a clipped / unscaled step: the sum of
  squares of ``clamp(g * gscale, clip)`` and a count of blocks holding an
  inf/NaN; optionally writes the transformed gradient back.

Every Adam kernel first transforms the gradient as ``g = clamp(g * gscale,
clip)`` (``gscale = clip_coef / grad_scale``, ``clip = clip_value * clip_coef``;
1 and +inf when unused) and then calls the one Adam rule of
:mod:`fastadam.rules.adam`; storage formats are the codecs of
:mod:`fastadam.rules.codecs`.  Arrays are 1-D contiguous, parameters float32;
scalars float32 (cast in Python).  The reduced-precision kernels write their inner
loop once (``_bf16_pass``, ``_int8_pass1``: inlined functions with a flag ``plain``)
and call it with a constant flag, so LLVM compiles two copies: one with the transform,
and one without it (``gscale == 1``, ``clip`` +inf: the transform is the identity
there, bit for bit), used when it can be; that copy also takes ``gsign == 1`` and
``l2 == 0`` (no maximize, no L2 term) as constants, so it carries neither their two
multiplies and an add nor the rule's ``if l2`` (which LLVM left in the vector loop as
a branch per vector): 4-5% faster bf16 steps at 8M params, 2% int8 (same bits; tests
compare the copies).

Speed (see docs/lowp.md): at sizes beyond L2 (8M params: about 200 MB of
parameters and state) what decides these loops is how well their memory
traffic overlaps their arithmetic.  With the hardware prefetchers alone the
bf16 loop took ~0.8 ns per element and core at 8M, against ~0.45 for its
arithmetic alone (L2-resident) and ~0.45 for its traffic alone.  So the Adam
loops run in sub-blocks of :data:`_SUB` elements, each first prefetching
(:func:`k_prefetch`) the sub-block :data:`_PREFETCH_ADAM` elements ahead:
small bursts of hints, which keep the fill buffers free for the demand loads
(one burst per 4096-element chunk, or per 256-element block, measured slower).
Measured at 8M, interleaved: bf16 ~1.7x and int8 ~1.15x faster than without;
the same bits (prefetches have no effect on results).  What bounds them then
is compute: Adam's exact float32 ``sqrt`` and division share the divider
(about 22 cycles per 16 elements at 512 bits) and the codecs use the two
512-bit ALU ports; the bf16 loop runs at about its L2-resident speed, the
int8 loop (two passes per block) at ~0.6 ns per element and core.  An
approximate ``1 / (sqrt(v) * c + eps)`` with Newton steps (bit-trick seeds,
or LLVM's ``vrcp14ps`` estimate) was measured and does not pay: it costs more
ALU-port instructions than the divider time it saves (measured again on an AVX-512 AMD
EPYC for issue #22, where such an approximation is allowed in these kernels: 12-18%
slower with three Newton steps, still slower with one; LLVM's own ``vrsqrt14ps`` /
``vrcp14ps`` + Newton sequences in the pipelined kernels 10-27% slower, L2-resident, and
the bare estimates without a Newton step no faster; docs/lowp.md).  The bf16 / int8 / norm
loops are compiled with 512-bit vectors (:func:`wide_vectors`): their codec
work is bound by vector-ALU ports, which do twice the work per instruction at
512 bits.  The float32 loop, bound by the divider, is left at LLVM's default
width (512 bits measured slower).
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import prange
from numba import types as nbt
from numba.core import cgutils
from numba.extending import intrinsic

from .. import rules as _rules
from .._config import FASTMATH
from ..rules import adam as _adam_r
from ..rules import codecs as _codecs_r
from . import _blocked, _fma  # noqa: F401  (_fma: the rules' fma, for numba)
from ._blocked import k_prefetch, prefetch_ahead
from ._variants import KernelVariants, use_parallel

INT8_BLOCK = _codecs_r.INT8_BLOCK
#: Parallel work items per thread in the int8 kernel (each allocates one 2 KiB scratch).
_CHUNKS_PER_THREAD = 4
#: Elements per parallel work item of the bf16 kernel.
_CHUNK = _blocked.CHUNK
#: float32 elements per sub-block of the Adam kernels (the sub-block of :mod:`._blocked`,
#: 128): each sub-block first prefetches the sub-block :data:`_PREFETCH_ADAM` elements
#: ahead, then runs its vectorized loop.
_SUB = _blocked.SUB_LINES * _blocked.LINE // 4
#: Software-prefetch distance of the Adam kernels in float32 elements (:mod:`._blocked`'s,
#: 1024).
_PREFETCH_ADAM = _blocked.AHEAD_LINES * _blocked.LINE // 4
#: Blocks per parallel work item of the gradient-norm pass.
_SUMSQ_BLOCKS = 16
#: Software-prefetch distance of the gradient-norm pass, in elements.
_PREFETCH = 4096
_F32_MAX_BITS = np.uint32(0x7F7FFFFF)
_SIGN_BIT = np.uint32(0x80000000)
#: float32 constants (numba freezes globals: LLVM folds ``g * 1`` and ``if 0``)
_ONE = np.float32(1)
_ZERO = np.float32(0)
_SEED0 = np.uint32(0)
#: The gradient-norm reduction may sum in any order (a float64 sum of float32
#: squares; the order changes its last bits, never the update rule's math).
_REDUCE_FASTMATH = set(FASTMATH) | {"reassoc"}


@intrinsic
def bits_f32(typingctx, x):
    """The float32 whose bit pattern is the low 32 bits of integer ``x``."""
    if not isinstance(x, nbt.Integer):
        return None

    def codegen(context, builder, signature, args):
        v = args[0]
        w = signature.args[0].bitwidth
        if w > 32:
            v = builder.trunc(v, ir.IntType(32))
        elif w < 32:
            v = builder.zext(v, ir.IntType(32))
        return builder.bitcast(v, ir.FloatType())
    return nbt.float32(x), codegen


# --- integer codecs in 32-bit arithmetic ---------------------------------------------
# Transcriptions of fastadam.rules.codecs (the specification; tests compare them bit
# for bit): numba would do this integer work in 64 bits, and a float32 loop that
# mixes in 64-bit lanes vectorizes at half width.

_I32 = ir.IntType(32)
_F32 = ir.FloatType()


def _c(v, t=_I32):
    return ir.Constant(t, v)


@intrinsic
def k_bf16_decode(typingctx, h):
    """codecs.bf16_decode, then the bit cast: uint16 -> float32."""
    if h != nbt.uint16:
        return None

    def codegen(context, b, sig, args):
        return b.bitcast(b.shl(b.zext(args[0], _I32), _c(16)), _F32)
    return nbt.float32(nbt.uint16), codegen


@intrinsic
def k_bf16_encode(typingctx, x):
    """The bit cast, then codecs.bf16_encode: float32 -> uint16 (nearest even, NaN kept)."""
    if x != nbt.float32:
        return None

    def codegen(context, b, sig, args):
        u = b.bitcast(args[0], _I32)
        hi = b.lshr(u, _c(16))
        r = b.lshr(b.add(b.add(u, _c(0x7FFF)), b.and_(hi, _c(1))), _c(16))
        isnan = b.icmp_unsigned(">", b.and_(u, _c(0x7FFFFFFF)), _c(0x7F800000))
        return b.trunc(b.select(isnan, b.or_(hi, _c(0x40)), r), ir.IntType(16))
    return nbt.uint16(nbt.float32), codegen


@intrinsic
def k_bf16_encode_sr(typingctx, x, i, seed):
    """codecs.sr_bits + codecs.bf16_encode_sr: float32 -> uint16, stochastic rounding
    with the bits of element ``i`` (int64) under the step's ``seed`` (uint32)."""
    if x != nbt.float32 or not isinstance(i, nbt.Integer) or seed != nbt.uint32:
        return None

    def codegen(context, b, sig, args):
        u = b.bitcast(args[0], _I32)
        i32 = args[1] if sig.args[1].bitwidth == 32 else b.trunc(args[1], _I32)
        r = b.lshr(b.add(b.mul(i32, _c(0x9E3779B1)), args[2]), _c(16))
        hi = b.lshr(u, _c(16))
        isnan = b.icmp_unsigned(">", b.and_(u, _c(0x7FFFFFFF)), _c(0x7F800000))
        res = b.select(isnan, b.or_(hi, _c(0x40)), b.lshr(b.add(u, r), _c(16)))
        return b.trunc(res, ir.IntType(16))
    return nbt.uint16(nbt.float32, i, nbt.uint32), codegen


@intrinsic
def k_hash_index(typingctx, i):
    """``i * 0x9E3779B1 mod 2**32`` (uint32): the index part of codecs.sr_bits."""
    if not isinstance(i, nbt.Integer):
        return None

    def codegen(context, b, sig, args):
        i32 = args[0] if sig.args[0].bitwidth == 32 else b.trunc(args[0], _I32)
        return b.mul(i32, _c(0x9E3779B1))
    return nbt.uint32(i), codegen


@intrinsic
def k_hash_seeded(typingctx, i, seed):
    """``i * 0x9E3779B1 + seed mod 2**32`` (uint32): codecs.sr_bits before its shift."""
    if not isinstance(i, nbt.Integer) or seed != nbt.uint32:
        return None

    def codegen(context, b, sig, args):
        i32 = args[0] if sig.args[0].bitwidth == 32 else b.trunc(args[0], _I32)
        return b.add(b.mul(i32, _c(0x9E3779B1)), args[1])
    return nbt.uint32(i, nbt.uint32), codegen


@intrinsic
def k_hash_next(typingctx, h):
    """``h + 0x9E3779B1 mod 2**32``: the hashed index of the next element (a 32-bit
    induction variable, which LLVM vectorizes as one vector add per vector)."""
    if h != nbt.uint32:
        return None

    def codegen(context, b, sig, args):
        return b.add(args[0], _c(0x9E3779B1))
    return nbt.uint32(nbt.uint32), codegen


@intrinsic
def k_bf16_encode_srh(typingctx, x, h, seed):
    """k_bf16_encode_sr with the hashed index ``h = k_hash_index(i)`` given: codecs.sr_bits +
    codecs.bf16_encode_sr, written as ``(NaN ? u | 0x400000 : u + r) >> 16`` (the same
    bits: ``(u | 0x400000) >> 16 == (u >> 16) | 0x40``), with the NaN test a float compare."""
    if x != nbt.float32 or h != nbt.uint32 or seed != nbt.uint32:
        return None

    def codegen(context, b, sig, args):
        u = b.bitcast(args[0], _I32)
        r = b.lshr(b.add(args[1], args[2]), _c(16))
        isnan = b.fcmp_unordered("uno", args[0], args[0])
        t = b.select(isnan, b.or_(u, _c(0x400000)), b.add(u, r))
        return b.trunc(b.lshr(t, _c(16)), ir.IntType(16))
    return nbt.uint16(nbt.float32, nbt.uint32, nbt.uint32), codegen


@intrinsic
def k_lin8_encode_finite(typingctx, y):
    """k_lin8_encode for ``|y| <= 127.5`` not NaN (a block with a finite scale: ``|m| <=
    absmax`` gives ``|y| <= 127 (1 + 2**-23)``): rint ties to even as one conversion
    (``llvm.lrint``, the current rounding mode: nearest even), no clamps."""
    if y != nbt.float32:
        return None

    def codegen(context, b, sig, args):
        lrint = cgutils.get_or_insert_function(b.module, ir.FunctionType(_I32, [_F32]),
                                               "llvm.lrint.i32.f32")
        return b.trunc(b.call(lrint, [args[0]]), ir.IntType(8))
    return nbt.int8(nbt.float32), codegen


@intrinsic
def wide_vectors(typingctx):
    """No code: asks LLVM to vectorize the enclosing function with 512-bit vectors
    (``"prefer-vector-width"="512"``; LLVM's default for AVX-512 CPUs is 256).  The codec
    loops are bound by vector-ALU ports, not by the divider, and 512-bit ops do twice the
    work per port slot.  On CPUs without AVX-512 the attribute changes nothing."""
    def codegen(context, b, sig, args):
        # llvmlite's attribute set (a set subclass) accepts only the attribute names it
        # knows; the string attribute goes in through set.add.  Any other llvmlite: the
        # default width, the same results.
        attrs = getattr(b.function, "attributes", None)
        if isinstance(attrs, set):
            set.add(attrs, '"prefer-vector-width"="512"')
        return context.get_dummy_value()
    return nbt.none(), codegen


@intrinsic
def k_log8_decode(typingctx, q):
    """codecs.log8_decode, then the bit cast: uint8 -> float32 ``x`` in [0, 1]."""
    if q != nbt.uint8:
        return None

    def codegen(context, b, sig, args):
        q32 = b.zext(args[0], _I32)
        bits = b.shl(b.add(q32, _c(1792)), _c(19))
        bits = b.select(b.icmp_unsigned("==", q32, _c(0)), _c(0), bits)
        return b.bitcast(bits, _F32)
    return nbt.float32(nbt.uint8), codegen


@intrinsic
def k_log8_encode(typingctx, x):
    """The bit cast, then codecs.log8_encode: float32 ``x`` >= 0 -> uint8 code."""
    if x != nbt.float32:
        return None

    def codegen(context, b, sig, args):
        u = b.and_(b.bitcast(args[0], _I32), _c(0x7FFFFFFF))
        t = b.sub(b.lshr(b.add(u, _c(0x40000)), _c(19)), _c(1792))
        t = b.select(b.icmp_signed("<", t, _c(1)), _c(1), t)
        t = b.select(b.icmp_signed(">", t, _c(240)), _c(240), t)
        t = b.select(b.icmp_unsigned("==", u, _c(0)), _c(0), t)
        return b.trunc(t, ir.IntType(8))
    return nbt.uint8(nbt.float32), codegen


@intrinsic
def k_log8_encode_finite(typingctx, x):
    """k_log8_encode for ``x`` in ``[-0, 1 + 2**-22]`` (a block with a finite scale and a
    finite factor ``1 / absmax``: ``0 <= v <= absmax``): the rebased rounded bits
    ``(u + 0x40000 - (1792 << 19)) >> 19`` as one add and an arithmetic shift, raised to
    the smallest code 1, and 0 where ``x`` is +-0 (one masked test); no clamp at 240
    (``x <= 1 + 2**-22`` rounds to at most code 240)."""
    if x != nbt.float32:
        return None

    def codegen(context, b, sig, args):
        u = b.bitcast(args[0], _I32)
        t = b.ashr(b.add(u, _c(0x40000 - (1792 << 19))), _c(19))
        t = b.select(b.icmp_signed("<", t, _c(1)), _c(1), t)
        t = b.select(b.icmp_unsigned("==", b.and_(u, _c(0x7FFFFFFF)), _c(0)), _c(0), t)
        return b.trunc(t, ir.IntType(8))
    return nbt.uint8(nbt.float32), codegen


@intrinsic
def k_lin8_encode(typingctx, y):
    """codecs.lin8_encode: float32 -> int8 (rint ties to even, clamp +-127, NaN -> 0)."""
    if y != nbt.float32:
        return None

    def codegen(context, b, sig, args):
        rint = b.module.declare_intrinsic("llvm.rint", [_F32])
        r = b.call(rint, [args[0]])
        r = b.select(b.fcmp_ordered(">", r, _c(127.0, _F32)), _c(127.0, _F32), r)
        r = b.select(b.fcmp_ordered("<", r, _c(-127.0, _F32)), _c(-127.0, _F32), r)
        r = b.select(b.fcmp_unordered("uno", r, r), _c(0.0, _F32), r)
        return b.fptosi(r, ir.IntType(8))
    return nbt.int8(nbt.float32), codegen


@intrinsic
def k_absbits_max(typingctx, a, x):
    """``max(a, absbits(x))`` in uint32 (codecs.absbits / bigger_bits): the bits of a
    running block absmax, NaN above +inf so it wins; a vectorizable integer max."""
    if a != nbt.uint32 or x != nbt.float32:
        return None

    def codegen(context, b, sig, args):
        u = b.and_(b.bitcast(args[1], _I32), _c(0x7FFFFFFF))
        return b.select(b.icmp_unsigned(">=", args[0], u), args[0], u)
    return nbt.uint32(nbt.uint32, nbt.float32), codegen


@intrinsic
def k_bits_max(typingctx, a, x):
    """``max(a, bits(x))`` in uint32: :func:`k_absbits_max` without the ``abs``, for the
    second moment, which is ``>= +0`` or NaN: its running max equals the ``absbits`` max
    unless it ends ``>= 0x80000000`` (a NaN or -0 with the sign bit; the int8 kernel then
    recomputes that block's max with :func:`k_absbits_max`)."""
    if a != nbt.uint32 or x != nbt.float32:
        return None

    def codegen(context, b, sig, args):
        u = b.bitcast(args[1], _I32)
        return b.select(b.icmp_unsigned(">=", args[0], u), args[0], u)
    return nbt.uint32(nbt.uint32, nbt.float32), codegen


def _inline(f):
    return numba.njit(inline="always", fastmath=FASTMATH, cache=False)(f)


r_adam = _inline(_adam_r.adam)
c_clamp = _inline(_codecs_r.clamp)


@_inline
def r_adam_f32(p, g, m, v, gscale, clip, s0, s1, s2, s3, s4, s5, s6, s7, s8):
    """The Adam rule on the transformed gradient ``clamp(g * gscale, clip)``."""
    return r_adam(p, c_clamp(g * gscale, clip), m, v, s0, s1, s2, s3, s4, s5, s6, s7, s8)


@_inline
def r_adam_t(p, g, m, v, gscale, clip, s0, s1, s2, s3, s4, s5, s6, s7, s8, plain):
    """:func:`r_adam_f32`, or with ``plain`` (a constant: no transform, ``gsign == 1``,
    ``l2 == 0``) the rule on ``g`` itself with ``gsign`` and ``l2`` as the constants 1 and
    0, which LLVM folds away (the same bits)."""
    if plain:
        return r_adam(p, g, m, v, _ONE, _ZERO, s2, s3, s4, s5, s6, s7, s8)
    return r_adam_f32(p, g, m, v, gscale, clip, s0, s1, s2, s3, s4, s5, s6, s7, s8)


# --- the loops -----------------------------------------------------------------

def adam_f32(p, g, m, v, gscale, clip, s0, s1, s2, s3, s4, s5, s6, s7, s8):
    # the parallel variant is this loop in the prefetched sub-block form (_blocked)
    for i in prange(p.shape[0]):
        p[i], m[i], v[i] = r_adam_f32(p[i], g[i], m[i], v[i], gscale, clip,
                                      s0, s1, s2, s3, s4, s5, s6, s7, s8)


@_inline
def _bf16_pass(pb, gb, mb, vb, hm, hv, sm, sv, gscale, clip, s0, s1, s2, s3, s4, s5, s6, s7,
               s8, plain):
    """The bf16 inner loop over one sub-block (inlined with a constant ``plain``): the
    moments are rounded with the bits of ``hm + sm`` and ``hv + sv`` (``h`` the hashed
    index of the element, a 32-bit induction variable from the sub-block's first)."""
    for j in range(pb.shape[0]):
        pi, mi, vi = r_adam_t(pb[j], gb[j], k_bf16_decode(mb[j]), k_bf16_decode(vb[j]),
                              gscale, clip, s0, s1, s2, s3, s4, s5, s6, s7, s8, plain)
        pb[j] = pi
        mb[j] = k_bf16_encode_srh(mi, hm, sm)
        vb[j] = k_bf16_encode_srh(vi, hv, sv)
        hm = k_hash_next(hm)
        hv = k_hash_next(hv)


def adam_bf16(p, g, m, v, seed_m, seed_v, gscale, clip, s0, s1, s2, s3, s4, s5, s6, s7, s8):
    n = p.shape[0]
    nchunks = (n + _CHUNK - 1) // _CHUNK
    # clamp(g * 1, inf) == g for every g: the plain loop skips the transform; it also
    # takes gsign == 1 and l2 == 0 (no maximize, no L2 term: the common case) as the
    # constants they then are, so that the loop carries neither their multiplies nor
    # the rule's ``if l2`` (a branch per vector otherwise)
    one = gscale / gscale
    plain = (gscale == one and not clip <= bits_f32(_F32_MAX_BITS) and s0 == one
             and s1 == one - one)
    for c in prange(nchunks):
        wide_vectors()
        for lo in range(c * _CHUNK, min(c * _CHUNK + _CHUNK, n), _SUB):
            hi = min(lo + _SUB, n)
            # prefetch the sub-block _PREFETCH_ADAM elements ahead (one hint per line)
            prefetch_ahead(p, lo + _PREFETCH_ADAM, _SUB)
            prefetch_ahead(g, lo + _PREFETCH_ADAM, _SUB)
            prefetch_ahead(m, lo + _PREFETCH_ADAM, _SUB)
            prefetch_ahead(v, lo + _PREFETCH_ADAM, _SUB)
            if plain:
                # one seeded hash per moment (the seed added once, not per vector)
                _bf16_pass(p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi], k_hash_seeded(lo, seed_m),
                           k_hash_seeded(lo, seed_v), _SEED0, _SEED0, gscale, clip,
                           s0, s1, s2, s3, s4, s5, s6, s7, s8, True)
            else:
                # one hash, two seeds added per vector
                h = k_hash_index(lo)
                _bf16_pass(p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi], h, h, seed_m, seed_v,
                           gscale, clip, s0, s1, s2, s3, s4, s5, s6, s7, s8, False)


@_inline
def _int8_pass1(pb, gb, mb, vb, bb, mstep, vsc, am, av, gscale, clip, s0, s1, s2, s3, s4, s5,
                s6, s7, s8, plain):
    """Pass 1 of the int8 loop over one sub-block (inlined with a constant ``plain``):
    decode, the rule, store the parameter, keep the new moments in the scratch ``bb``
    (``bb[i]`` and ``bb[i + INT8_BLOCK]``); returns the running absmax bits."""
    for i in range(pb.shape[0]):
        pi, mi, vi = r_adam_t(pb[i], gb[i], mb[i] * mstep, k_log8_decode(vb[i]) * vsc,
                              gscale, clip, s0, s1, s2, s3, s4, s5, s6, s7, s8, plain)
        pb[i] = pi
        bb[i] = mi
        bb[i + INT8_BLOCK] = vi
        am = k_absbits_max(am, mi)
        av = k_bits_max(av, vi)
    return am, av


@_inline
def _int8_pass2(mb, vb, bm, bv, minv, vinv, finite):
    """Pass 2 of the int8 loop over one block: requantize the new moments kept in the
    scratch (``bm``, ``bv``) with the factors ``minv = 127 / absmax`` and ``vinv = 1 / vmax``
    (0 for a zero or NaN scale: codes 0; a NaN scale decodes as NaN).  With ``finite``
    (finite scales and factors, the normal case) ``|m * minv| <= 127 (1 + 2**-23)`` with no
    NaN, so lin8_encode is one rounding conversion, and ``0 <= v * vinv <= 1 + 2**-22``."""
    if finite:
        for i in range(mb.shape[0]):
            mb[i] = k_lin8_encode_finite(bm[i] * minv)
            vb[i] = k_log8_encode_finite(bv[i] * vinv)
    else:
        for i in range(mb.shape[0]):
            mb[i] = k_lin8_encode(bm[i] * minv)
            vb[i] = k_log8_encode(bv[i] * vinv)


@_inline
def _int8_blocks(p, g, mq, ms, vq, vs, buf, b0, b1, gscale, clip, qmax, s0, s1, s2, s3, s4,
                 s5, s6, s7, s8, plain):
    """Blocks ``b0 .. b1 - 1`` of the int8 step (one work item; inlined with a constant
    ``plain``), software-pipelined: pass 1 of block ``b`` (decode, the rule, store the
    parameter, keep the new moments in one half of the scratch ``buf`` and find their
    absmax), then pass 2 of block ``b - 1`` (requantize from the other half, with the
    factors found after its pass 1).  Each pass is one vectorized loop over a block; the
    prefetch hints for the sub-block :data:`_PREFETCH_ADAM` elements ahead go out in two
    bursts of :data:`_SUB` elements' lines, one before each pass."""
    n = p.shape[0]
    zero = qmax - qmax
    one = qmax / qmax
    fmax = bits_f32(_F32_MAX_BITS)
    # block b - 1's factors, for its pass 2 during block b
    minv = zero
    vinv = zero
    finite = True
    for b in range(b0, b1 + 1):
        h = (b & 1) * (2 * INT8_BLOCK)      # block b's half of the scratch
        lo = b * INT8_BLOCK
        hi = min(lo + INT8_BLOCK, n)
        am = np.uint32(0)
        av = np.uint32(0)
        if b < b1:
            prefetch_ahead(p, lo + _PREFETCH_ADAM, _SUB)
            prefetch_ahead(g, lo + _PREFETCH_ADAM, _SUB)
            prefetch_ahead(mq, lo + _PREFETCH_ADAM, _SUB)
            prefetch_ahead(vq, lo + _PREFETCH_ADAM, _SUB)
            am, av = _int8_pass1(p[lo:hi], g[lo:hi], mq[lo:hi], vq[lo:hi], buf[h:],
                                 ms[b] / qmax, vs[b], am, av, gscale, clip,
                                 s0, s1, s2, s3, s4, s5, s6, s7, s8, plain)
            if av >= _SIGN_BIT:
                # a sign bit among the new v (a NaN of either sign; v is otherwise >= +0):
                # the block's max of absbits, as codecs.absbits / bigger_bits define it
                av = np.uint32(0)
                for i in range(hi - lo):
                    av = k_absbits_max(av, buf[h + INT8_BLOCK + i])
        prefetch_ahead(p, lo + _PREFETCH_ADAM + _SUB, _SUB)
        prefetch_ahead(g, lo + _PREFETCH_ADAM + _SUB, _SUB)
        prefetch_ahead(mq, lo + _PREFETCH_ADAM + _SUB, _SUB)
        prefetch_ahead(vq, lo + _PREFETCH_ADAM + _SUB, _SUB)
        if b > b0:
            plo = lo - INT8_BLOCK
            phi = min(lo, n)
            ph = 2 * INT8_BLOCK - h             # block b - 1's half
            _int8_pass2(mq[plo:phi], vq[plo:phi], buf[ph:ph + phi - plo],
                        buf[ph + INT8_BLOCK:ph + INT8_BLOCK + phi - plo], minv, vinv, finite)
        if b < b1:
            mabs = bits_f32(am)
            vmax = bits_f32(av)
            minv = qmax / mabs if mabs > zero else zero
            vinv = one / vmax if vmax > zero else zero
            finite = mabs <= fmax and minv <= fmax and vmax <= fmax and vinv <= fmax
            ms[b] = mabs
            vs[b] = vmax


def adam_int8(p, g, mq, ms, vq, vs, nwork, gscale, clip, qmax, s0, s1, s2, s3, s4, s5, s6,
              s7, s8):
    n = p.shape[0]
    nblocks = (n + INT8_BLOCK - 1) // INT8_BLOCK
    # ``nwork`` work items (a few per thread, see ``run``), each with one
    # scratch: a step allocates O(threads) bytes, never O(n)
    nchunks = max(1, min(nblocks, nwork))
    one = qmax / qmax
    # no transform, gsign == 1, l2 == 0: the plain loops (constants; see adam_bf16)
    plain = (gscale == one and not clip <= bits_f32(_F32_MAX_BITS) and s0 == one
             and s1 == qmax - qmax)
    for c in prange(nchunks):
        wide_vectors()
        # one scratch per work item, two halves of 2 * INT8_BLOCK floats used in turn
        # (block b's new m in [h, h + B), its new v in [h + B, h + 2B), h = (b & 1) * 2B).
        # One allocation keeps the loops' runtime alias checks few enough for LLVM to
        # vectorize them.
        buf = np.empty(4 * INT8_BLOCK, dtype=np.float32)
        b0 = c * nblocks // nchunks
        b1 = (c + 1) * nblocks // nchunks
        # the branch outside the block loop: a copy of the whole loop nest per case
        if plain:
            _int8_blocks(p, g, mq, ms, vq, vs, buf, b0, b1, gscale, clip, qmax,
                         s0, s1, s2, s3, s4, s5, s6, s7, s8, True)
        else:
            _int8_blocks(p, g, mq, ms, vq, vs, buf, b0, b1, gscale, clip, qmax,
                         s0, s1, s2, s3, s4, s5, s6, s7, s8, False)


def grad_sumsq(g, gscale, clip, write):
    """Sum of squares of ``clamp(g*gscale, clip)``, and a non-finite flag.

    The squares are summed in float32 within each 256-element block
    (vectorized; relative error ~1e-6) and the block sums in float64.  A
    float32 block sum overflows only for elements beyond ~1e18; the caller
    then recomputes in float64 (:func:`fastadam.lowp.grad_stats`).  The
    second result counts the blocks holding an inf or NaN in the raw gradient
    (looked at before the clamp, which would hide an inf), from the integer maximum of
    the elements' ``absbits`` (>= 0x7F800000 exactly for inf and NaN).  Without a clamp
    (``clip`` +inf) and without ``write``, the common case, a block's elements are only
    looked at again when its float32 sum is not finite (an inf or NaN element makes it
    inf or NaN: ``gscale > 0``), so the pass is one load, two multiplies and an add per
    element.  With ``write`` the transformed gradient is stored back into ``g``.
    Parallel over chunks of :data:`_SUMSQ_BLOCKS` blocks.  Compiled with ``reassoc``
    (see ``_REDUCE_FASTMATH``).
    """
    n = g.shape[0]
    nblocks = (n + INT8_BLOCK - 1) // INT8_BLOCK
    nchunks = (nblocks + _SUMSQ_BLOCKS - 1) // _SUMSQ_BLOCKS
    zero = gscale - gscale
    fmax = bits_f32(_F32_MAX_BITS)
    fast = not write and not clip <= fmax
    acc = 0.0
    bad = 0
    for c in prange(nchunks):
        wide_vectors()
        cacc = 0.0
        cbad = 0
        for b in range(c * _SUMSQ_BLOCKS, min((c + 1) * _SUMSQ_BLOCKS, nblocks)):
            # prefetch the block _PREFETCH elements ahead (one hint per 64-byte line)
            for k in range(0, INT8_BLOCK, 16):
                k_prefetch(g, b * INT8_BLOCK + _PREFETCH + k)
            gb = g[b * INT8_BLOCK:min((b + 1) * INT8_BLOCK, n)]
            s = zero
            if fast:
                for i in range(gb.shape[0]):
                    y = gb[i] * gscale
                    s += y * y
                if s <= fmax:
                    big = np.uint32(0)
                else:       # an inf/NaN element or an overflowed sum: look at the raw bits
                    big = np.uint32(0)
                    for i in range(gb.shape[0]):
                        big = k_absbits_max(big, gb[i])
            else:
                big = np.uint32(0)
                for i in range(gb.shape[0]):
                    x = gb[i]
                    y = c_clamp(x * gscale, clip)
                    if write:
                        gb[i] = y
                    s += y * y
                    big = k_absbits_max(big, x)
            cacc += np.float64(s)
            cbad += 1 if big >= 0x7F800000 else 0
        acc += cacc
        bad += cbad
    return acc, bad


KERNEL_NAMES = ("adam_f32", "adam_bf16", "adam_int8", "grad_sumsq")

_HASH = _rules.source_hash(extra=repr(sorted(FASTMATH)) + f"lowp{INT8_BLOCK}/{_CHUNKS_PER_THREAD}/"
                           f"{_CHUNK}/{_SUB}/{_PREFETCH_ADAM}/{_SUMSQ_BLOCKS}/{_PREFETCH}/"
                           + _blocked.HASH + _fma.HASH)


def _parallel_loop(name: str):
    """The parallel variant of ``name``: ``adam_f32`` in the prefetched sub-block form of
    :mod:`._blocked` (the same bits); the other loops as written."""
    if name == "adam_f32":
        return _blocked.blocked_loop(adam_f32, 4, "r_adam_f32", globals())
    return globals()[name]


_variants = KernelVariants(
    globals(), _HASH, lambda name: _REDUCE_FASTMATH if name == "grad_sumsq" else FASTMATH,
    parallel_source=_parallel_loop)
get = _variants.get
entry = _variants.entry


def run(name: str, arrays, scalars):
    """Run kernel ``name`` on 1-D contiguous ``arrays`` with the given scalars.

    ``adam_int8`` gets its work-item count (``nwork``) prepended here.
    """
    par = use_parallel(arrays[0].shape[0])
    if name == "adam_int8":
        scalars = (work_items(par),) + tuple(scalars)
    return _variants.call(name, par, *arrays, *scalars)


def work_items(parallel: bool) -> int:
    """``adam_int8``'s work-item count (``nwork``): :data:`_CHUNKS_PER_THREAD` per thread
    for the parallel variant (each item allocates one 2 KiB scratch), 1 for the serial."""
    return _CHUNKS_PER_THREAD * numba.get_num_threads() if parallel else 1
