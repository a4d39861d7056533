"""numba CPU kernels for reduced-precision Adam state and fused gradient transforms.

* ``adam_bf16``: moments stored as bfloat16 bit patterns in uint16 arrays;
  one pass per element: decode (bit shift + bit cast), the float32 Adam rule,
  encode with stochastic rounding (bits from a hash of the element index and
  a per-step seed; see :func:`fastadam.rules.codecs.bf16_encode_sr`).
* ``adam_int8``: blockwise 8-bit moments (:data:`INT8_BLOCK` elements per
  block, one float32 absmax per block and moment); one pass over memory,
  parallel over chunks of blocks: a block is decoded, updated (parameter
  stored) and its new moments kept in a 2 KiB per-work-item scratch
  (L1-resident) while their absmax is found; then the block is requantized
  from the scratch.  The parameter update uses the exact float32 moments of
  this step; only what is *stored* is rounded.
* ``adam_f32``: float32 state with the gradient transform (below) fused in,
  for clip-by-value, which cannot be folded into a scalar.
* ``grad_sumsq``: the first pass of a clipped / unscaled step: the sum of
  squares of ``clamp(g * gscale, clip)`` and a count of blocks holding an
  inf/NaN; optionally writes the transformed gradient back.

Every Adam kernel first transforms the gradient as ``g = clamp(g * gscale,
clip)`` (``gscale = clip_coef / grad_scale``, ``clip = clip_value * clip_coef``;
1 and +inf when unused) and then calls the one Adam rule of
:mod:`fastadam.rules.adam`; storage formats are the codecs of
:mod:`fastadam.rules.codecs`.  Arrays are 1-D contiguous, parameters float32;
scalars float32 (cast in Python).
"""

from __future__ import annotations


import numba
import numpy as np
from llvmlite import ir
from numba import prange
from numba import types as nbt
from numba.extending import intrinsic

from .. import rules as _rules
from .._config import FASTMATH, PARALLEL_THRESHOLD
from ._variants import KernelVariants
from ..rules import adam as _adam_r
from ..rules import codecs as _codecs_r

INT8_BLOCK = _codecs_r.INT8_BLOCK
#: Parallel work items per thread in the int8 kernel (each allocates one 2 KiB scratch).
_CHUNKS_PER_THREAD = 4
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
        t = b.lshr(b.add(b.add(u, _c(0x3FFFF)), b.and_(b.lshr(u, _c(19)), _c(1))), _c(19))
        t = b.sub(t, _c(1792))
        t = b.select(b.icmp_signed("<", t, _c(1)), _c(1), t)
        t = b.select(b.icmp_signed(">", t, _c(240)), _c(240), t)
        t = b.select(b.icmp_unsigned("==", u, _c(0)), _c(0), t)
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


def _inline(f):
    return numba.njit(inline="always", fastmath=FASTMATH, cache=False)(f)


r_adam = _inline(_adam_r.adam)
c_clamp = _inline(_codecs_r.clamp)


# --- the loops -----------------------------------------------------------------

def adam_f32(p, g, m, v, gscale, clip, s0, s1, s2, s3, s4, s5, s6, s7, s8):
    for i in prange(p.shape[0]):
        gi = c_clamp(g[i] * gscale, clip)
        p[i], m[i], v[i] = r_adam(p[i], gi, m[i], v[i], s0, s1, s2, s3, s4, s5, s6, s7, s8)


def adam_bf16(p, g, m, v, seed_m, seed_v, gscale, clip, s0, s1, s2, s3, s4, s5, s6, s7, s8):
    for i in prange(p.shape[0]):
        gi = c_clamp(g[i] * gscale, clip)
        pi, mi, vi = r_adam(p[i], gi, k_bf16_decode(m[i]), k_bf16_decode(v[i]),
                            s0, s1, s2, s3, s4, s5, s6, s7, s8)
        p[i] = pi
        m[i] = k_bf16_encode_sr(mi, i, seed_m)
        v[i] = k_bf16_encode_sr(vi, i, seed_v)


def adam_int8(p, g, mq, ms, vq, vs, nwork, gscale, clip, qmax, s0, s1, s2, s3, s4, s5, s6,
              s7, s8):
    n = p.shape[0]
    nblocks = (n + INT8_BLOCK - 1) // INT8_BLOCK
    # ``nwork`` work items (a few per thread, see ``run``), each with one
    # scratch: a step allocates O(threads) bytes, never O(n)
    nchunks = max(1, min(nblocks, nwork))
    zero = qmax - qmax
    one = qmax / qmax
    for c in prange(nchunks):
        # one scratch per work item: the new m in [0, B), the new v in [B, 2B).  One
        # allocation for both keeps the loop's runtime alias checks few enough
        # for LLVM to vectorize it.
        buf = np.empty(2 * INT8_BLOCK, dtype=np.float32)
        for b in range(c * nblocks // nchunks, (c + 1) * nblocks // nchunks):
            lo = b * INT8_BLOCK
            hi = min(lo + INT8_BLOCK, n)
            mstep = ms[b] / qmax
            vsc = vs[b]
            # block views indexed from 0 (numba then knows the index is non-negative)
            pb = p[lo:hi]
            gb = g[lo:hi]
            mb = mq[lo:hi]
            vb = vq[lo:hi]
            # pass 1: decode, the rule, store the parameter, keep the new moments in
            # the (L1-resident) scratch and find their absmax
            am = np.uint32(0)
            av = np.uint32(0)
            for i in range(pb.shape[0]):
                gi = c_clamp(gb[i] * gscale, clip)
                pi, mi, vi = r_adam(pb[i], gi, mb[i] * mstep, k_log8_decode(vb[i]) * vsc,
                                    s0, s1, s2, s3, s4, s5, s6, s7, s8)
                pb[i] = pi
                buf[i] = mi
                buf[i + INT8_BLOCK] = vi
                am = k_absbits_max(am, mi)
                av = k_absbits_max(av, vi)
            mabs = bits_f32(am)
            vmax = bits_f32(av)
            # pass 2: requantize with the new scales.  A zero or NaN scale gives
            # factor 0 and codes 0 (a NaN scale decodes as NaN).
            minv = qmax / mabs if mabs > zero else zero
            vinv = one / vmax if vmax > zero else zero
            for i in range(pb.shape[0]):
                mb[i] = k_lin8_encode(buf[i] * minv)
                vb[i] = k_log8_encode(buf[i + INT8_BLOCK] * vinv)
            ms[b] = mabs
            vs[b] = vmax


def grad_sumsq(g, gscale, clip, write):
    """Sum of squares of ``clamp(g*gscale, clip)``, and a non-finite flag.

    The squares are summed in float32 within each 256-element block
    (vectorized; relative error ~1e-6) and the block sums in float64.  A
    float32 block sum overflows only for elements beyond ~1e18; the caller
    then recomputes in float64 (:func:`fastadam.lowp.grad_stats`).  The
    second result counts the blocks holding an inf or NaN in the raw gradient
    (looked at before the clamp, which would hide an inf), from the integer maximum of
    the elements' ``absbits`` (>= 0x7F800000 exactly for inf and NaN).  With
    ``write`` the transformed gradient is stored back into ``g``.  Compiled
    with ``reassoc`` (see ``_REDUCE_FASTMATH``).
    """
    n = g.shape[0]
    nblocks = (n + INT8_BLOCK - 1) // INT8_BLOCK
    zero = gscale - gscale
    acc = 0.0
    bad = 0
    for b in prange(nblocks):
        gb = g[b * INT8_BLOCK:min((b + 1) * INT8_BLOCK, n)]
        s = zero
        big = np.uint32(0)
        for i in range(gb.shape[0]):
            x = gb[i]
            y = c_clamp(x * gscale, clip)
            if write:
                gb[i] = y
            s += y * y
            big = k_absbits_max(big, x)
        acc += np.float64(s)
        bad += 1 if big >= 0x7F800000 else 0
    return acc, bad


KERNEL_NAMES = ("adam_f32", "adam_bf16", "adam_int8", "grad_sumsq")

_HASH = _rules.source_hash(extra=repr(sorted(FASTMATH)) + f"lowp{INT8_BLOCK}/{_CHUNKS_PER_THREAD}")
_variants = KernelVariants(
    globals(), _HASH, lambda name: _REDUCE_FASTMATH if name == "grad_sumsq" else FASTMATH)
get = _variants.get


def run(name: str, arrays, scalars):
    """Run kernel ``name`` on 1-D contiguous ``arrays`` with the given scalars.

    ``adam_int8`` gets its work-item count (``nwork``) prepended here.
    """
    n = arrays[0].shape[0]
    par = n >= PARALLEL_THRESHOLD
    if name == "adam_int8":
        scalars = (_CHUNKS_PER_THREAD * numba.get_num_threads() if par else 1,) + tuple(scalars)
    return get(name, par)(*arrays, *scalars)
