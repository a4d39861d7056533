"""Storage codecs for reduced-precision optimizer state, per element.

Plain functions of scalars, like the update rules: the numba kernels of
:mod:`fastadam.kernels.cpu_lowp` inline them (``njit(inline="always")``) and the
tests call them from Python on Python ints.  The update itself is always the
float32 rule of :mod:`fastadam.rules.adam`, applied to decoded values; these
functions only say how a float32 is stored and read back.

Bit-level codecs work on the IEEE-754 bit pattern of a float32 held in an
integer (the kernels reinterpret with a bit cast; NumPy with ``.view``).
Integer constants here are bit masks and shifts, not float literals, so the
float discipline of the rules (no float literal that could widen float32
arithmetic) holds.

These functions are the specification.  numba widens integer arithmetic to 64
bits, which halves the vector width of a float32 loop, so the kernels run the
integer codecs as small LLVM intrinsics (:mod:`fastadam.kernels.cpu_lowp`)
that transcribe these functions in 32-bit arithmetic; tests check the two
bit for bit on every bf16 / 8-bit code and on special values.

bfloat16 (``state_dtype="bfloat16"``)
    The upper 16 bits of a float32: 8 exponent bits, 7 mantissa bits.
    :func:`bf16_encode` rounds to nearest, ties to even (relative error
    <= 2**-8); the optimizer state uses :func:`bf16_encode_sr`, stochastic
    rounding (relative error < 2**-7, unbiased), because Adam's second moment
    changes by less than half a bf16 ulp per step.  NaN stays a (quiet) NaN
    of the same sign, +-inf stay +-inf.

int8 linear code (first moment ``exp_avg``)
    Per block of :data:`INT8_BLOCK` elements, ``absmax`` = largest ``|m|`` of the
    block; code ``q = rint(m / (absmax / 127))`` in [-127, 127]; decoded
    ``m = q * (absmax / 127)``.  Absolute error <= absmax / 254.

8-bit logarithmic code (second moment ``exp_avg_sq``, non-negative, wide range)
    Per block, ``absmax`` = largest ``v``; ``x = v * (1 / absmax)`` in [0, 1] is
    stored as a tiny float with 4 exponent and 4 mantissa bits (uint8):
    code 0 is 0, codes 1..240 are ``x = 2**(e - 15) * (1 + f / 16)`` with
    ``e = code >> 4``, ``f = code & 15`` (code 240 is ``x = 1``).  The
    mantissa is rounded to nearest, ties up (a tie, which needs the 19 dropped bits
    of ``x`` to be exactly ``0x40000``, goes to the larger code: one add and a
    shift, where ties to even take three more integer operations per element in
    the kernels' 512-bit loops), so the relative error of a
    stored ``v`` is <= 2**-5 (and of ``sqrt(v)``, what Adam divides by,
    <= 2**-6 roughly); values below ``absmax * 2**-15 * (1 + 1/16)``
    are stored as that smallest code, never as 0, so a small but non-zero
    ``v`` is never read back as 0 (which would make the step ``m / eps``).
"""

#: Elements per int8 quantization block (one float32 scale per block and moment).
INT8_BLOCK = 256


def bf16_encode(bits):
    """float32 bit pattern -> bfloat16 bit pattern, round to nearest even."""
    if (bits & 0x7FFFFFFF) > 0x7F800000:          # NaN: keep sign, force quiet bit
        return (bits >> 16) | 0x0040
    return (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16


def mix32(x):
    """murmur3's 32-bit finalizer: a well-mixed 32-bit hash of an integer (per-step seeds)."""
    x = x & 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x85EBCA6B) & 0xFFFFFFFF
    x ^= x >> 13
    x = (x * 0xC2B2AE35) & 0xFFFFFFFF
    x ^= x >> 16
    return x


def sr_bits(i, seed):
    """16 rounding bits for element ``i`` under a per-step 32-bit ``seed``.

    The high half of ``(i * 0x9E3779B1 + seed) mod 2**32``: for a fixed element,
    uniform over the seeds, and the seed changes every step (``mix32`` of the
    step count), so each element's rounding is unbiased over steps; it is a
    pure function of (step, index), so runs and checkpoints are reproducible.
    """
    return ((i * 0x9E3779B1 + seed) & 0xFFFFFFFF) >> 16


def bf16_encode_sr(bits, r):
    """float32 bit pattern -> bfloat16, stochastic rounding with 16 random bits ``r``.

    Rounds away from zero (in magnitude) with probability equal to the dropped
    fraction, so ``E[decode(encode(x))] = x``: a moment whose per-step change is
    below half a bf16 ulp (``v`` with beta2 = 0.999) still moves on average,
    where round-to-nearest would leave it stuck.  NaN as in :func:`bf16_encode`.
    """
    if (bits & 0x7FFFFFFF) > 0x7F800000:
        return (bits >> 16) | 0x0040
    return (bits + r) >> 16


def bf16_decode(h):
    """bfloat16 bit pattern -> float32 bit pattern (exact)."""
    return h << 16


def absbits(bits):
    """Bit pattern of ``|x|``; as integers these order like ``|x|``, NaN above +inf."""
    return bits & 0x7FFFFFFF


def bigger_bits(a, b):
    """The larger of two ``absbits`` (an integer max: NaN wins, as it should)."""
    return a if a >= b else b


def clamp(g, c):
    """``g`` clamped to ``[-c, c]`` (``c = inf`` leaves it alone); NaN passes through."""
    if g > c:
        return c
    if g < -c:
        return -c
    return g


def lin8_encode(y):
    """Round ``y = m * (127 / absmax)`` to the nearest int8 code (ties to even), clamped
    to +-127; NaN (a block with no usable scale) gives 0."""
    if y != y:
        return 0
    if y >= 127:
        return 127
    if y <= -127:
        return -127
    return round(y)


def log8_encode(bits):
    """Bit pattern of ``x = v * (1 / absmax)`` (>= 0) -> 8-bit log code (see module doc)."""
    bits = bits & 0x7FFFFFFF                 # -0.0 is 0
    if bits == 0:
        return 0
    t = ((bits + 0x40000) >> 19) - 1792      # nearest, ties up; (127 - 15) << 4
    if t < 1:
        return 1
    if t > 240:
        return 240
    return t


def log8_decode(q):
    """8-bit log code -> bit pattern of ``x = v / absmax`` (exact)."""
    if q == 0:
        return 0
    return (q + 1792) << 19
