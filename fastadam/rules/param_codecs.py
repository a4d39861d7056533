"""Storage of low-precision parameter copies (master weights), per element.

With master weights the optimizer updates a float32 copy of the parameters
(the *master*) and writes the model's low-precision copy from it in the same
pass.  These functions say how a float32 master value becomes the stored
low-precision value; like :mod:`fastadam.rules.codecs` they are plain
functions of Python ints (bit patterns), the specification that the kernels of
:mod:`fastadam.kernels.cpu_master` transcribe and that tests check bit for bit.

bfloat16 parameters
    Round to nearest even: :func:`fastadam.rules.codecs.bf16_encode`;
    stochastic: :func:`fastadam.rules.codecs.bf16_encode_sr` with the bits
    ``sr_bits(i, param_seed(step))``.

float16 parameters (IEEE binary16: 5 exponent bits, 10 mantissa bits)
    :func:`f16_encode` rounds to nearest even, as a hardware conversion does:
    subnormals (``|x| < 2**-14``, spacing ``2**-24``) rounded on their grid,
    ``|x| >= 65520`` (half an ulp above the largest finite 65504) to +-inf, NaN
    to a quiet NaN of the same sign.  :func:`f16_encode_sr` rounds
    stochastically: up in magnitude with probability equal to the dropped
    fraction ``f`` of the spacing -- precisely, up iff ``r + floor(f * 2**16) >=
    2**16`` for the 16 random bits ``r``, so ``P(up) = floor(f * 2**16) / 2**16``:
    exactly ``f`` for ``|x| >= 2**-17`` (at most 16 dropped bits: every normal
    float16 and the upper subnormals), below that a bias under ``2**-16`` of
    the spacing ``2**-24``; values beyond 65504 (no finite upper neighbour)
    and NaN/inf are rounded as by :func:`f16_encode`.

The stochastic rounding bits of parameter element ``i`` at step ``t`` are
``sr_bits(i, param_seed(t))`` (:func:`fastadam.rules.codecs.sr_bits`): a pure
function of (step, index), reproducible across runs and checkpoints, from a
seed stream of its own (not the moments' ``mix32(2t)``, ``mix32(2t+1)``).
"""

from .codecs import mix32

#: float32 bit pattern of 65504, the largest finite float16.
F16_MAX_BITS = 0x477FE000
#: Mixed into the step count for the parameters' seed stream.
PARAM_SEED_SALT = 0x5BD1E995


def param_seed(step):
    """The stochastic-rounding seed of the parameter copy at step ``step``."""
    return mix32(mix32(step) ^ PARAM_SEED_SALT)


def f16_decode(h):
    """float16 bit pattern -> float32 bit pattern (exact)."""
    s = (h & 0x8000) << 16
    e = (h >> 10) & 0x1F
    f = h & 0x3FF
    if e == 0x1F:                                    # inf / NaN (payload kept)
        return s | 0x7F800000 | (f << 13)
    if e == 0:
        if f == 0:
            return s
        k = 0                                        # subnormal: normalize
        while not f & 0x400:
            f <<= 1
            k += 1
        return s | ((113 - k) << 23) | ((f & 0x3FF) << 13)
    return s | ((e + 112) << 23) | (f << 13)


def f16_encode(bits):
    """float32 bit pattern -> float16 bit pattern, round to nearest, ties to even."""
    s = (bits >> 16) & 0x8000
    a = bits & 0x7FFFFFFF
    if a > 0x7F800000:                               # NaN: quiet, top payload bits kept
        return s | 0x7E00 | (a >> 13) & 0x3FF
    if a >= 0x477FF000:                              # >= 65520: inf (inf itself too)
        return s | 0x7C00
    e = a >> 23
    if e >= 113:                                     # normal float16 (|x| >= 2**-14)
        r = a + 0xFFF + ((a >> 13) & 1)              # nearest even on 13 dropped bits
        return s | ((r >> 13) - (112 << 10))
    # subnormal: value = m * 2**-24 with m = round(|x| * 2**24)
    if e < 102:                                      # |x| < 2**-25: rounds to 0
        return s
    mant = (a & 0x7FFFFF) | 0x800000                 # |x| = mant * 2**(e - 150)
    sh = 126 - e                                     # 14 .. 24 dropped bits
    half = 1 << (sh - 1)
    q = mant >> sh
    rem = mant & ((1 << sh) - 1)
    if rem > half or (rem == half and q & 1):
        q += 1
    return s | q                                     # q == 0x400 is 2**-14, a normal


def f16_encode_sr(bits, r):
    """float32 bit pattern -> float16 bits, stochastic rounding with 16 random bits ``r``.

    ``|x|`` is truncated to the float16 grid and rounded up by one spacing iff
    ``r + floor(f * 2**16) >= 2**16``, ``f`` the dropped fraction of the
    spacing (adding the random bits below the kept ones and truncating: the
    same thing, also across a binade boundary).
    """
    s = bits & 0x80000000
    a = bits & 0x7FFFFFFF
    if a > F16_MAX_BITS:                             # NaN, inf, beyond the largest finite
        return f16_encode(bits)
    e = a >> 23
    if e >= 103:                                     # |x| >= 2**-24: drop bits of the bits
        drop = 13 if e >= 113 else 126 - e           # 13 .. 23
        rnd = r >> (16 - drop) if drop <= 16 else r << (drop - 16)
        t = (a + rnd) & ~((1 << drop) - 1) & 0x7FFFFFFF
    else:                                            # below the smallest subnormal 2**-24:
        # neighbours 0 and 2**-24, dropped fraction f = |x| * 2**24; as above, up iff
        # r + floor(f * 2**16) >= 2**16, with |x| = mant * 2**(ee - 150) exactly
        # (mant < 2**24: a shift of 24 or more gives 0; clamped so that no shift amount
        # reaches the width of the integer, undefined in LLVM, on the device too)
        ee = e if e else 1
        mant = (a & 0x7FFFFF) | (0x800000 if e else 0)
        t = 0x33800000 if r + (mant >> min(110 - ee, 24)) >= 0x10000 else 0
    return f16_encode(s | t)                         # exact: t is on the float16 grid
