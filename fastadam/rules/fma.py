"""The fused multiply-add the rules call: ``fma(a, b, c) == a * b + c``, rounded once.

torch's CPU kernels compute ``lerp`` (both of its branches) and ``addcmul`` as
fused multiply-adds (measured on torch 2.13: every element, vector body and
scalar tail alike), so the rules call :func:`fma` exactly where torch.optim's
for-loop implementation calls ``lerp_`` or ``addcmul``: the first moment of
Adam / NAdam / Adamax and RMSprop's centered ``grad_avg`` (``lerp_``), the
second moments (``v.mul_(beta2).addcmul_(g, g, value=1 - beta2)`` is
``fma((1 - beta2) * g, g, beta2 * v)``; RMSprop's ``square_avg``, Adagrad's
``sum``, Adadelta's two averages likewise) and centered RMSprop's
``square_avg - grad_avg**2`` (``addcmul``), and every ``add(x, alpha=a)``:
the L2 term ``grad.add(param, alpha=weight_decay)`` of every optimizer, SGD's
momentum and Nesterov terms and the parameter updates of SGD, RMSprop with
momentum and Adadelta (``param.add_(d, alpha=-lr)``).  ``addcdiv`` (Adam's,
NAdam's, Adamax's, Adagrad's and RMSprop's updates) divides, and is not fused.
Besides the one rounding, a fused ``sq - ga*ga``
never overflows in the product (a finite ``ga`` whose square exceeds the
format leaves ``inf - ga*ga == inf`` where the unfused form gives
``inf - inf == NaN``).

Each compiled backend supplies its own implementation of this function:
numba CPU the ``llvm.fma`` intrinsic (:mod:`fastadam.kernels._fma`), numba CUDA
``cuda.fma``, Cython C's ``fma`` / ``fmaf`` (``_codegen.py``).  The Python body
below is the specification, and what numba's CUDA simulator runs: exact, via
:class:`fractions.Fraction`, for finite operands and a finite result; the IEEE
unfused float64 expression otherwise (the same non-finite results).  For
float32 operands the exact value is rounded once to float32 (not through float64:
that double rounding differs on a float32 tie of the float64 result).
"""

from fractions import Fraction
import math

import numpy as np


def fma(a, b, c):
    """``a * b + c`` with one rounding, in the type of ``c``."""
    t = type(c)
    fa, fb, fc = float(a), float(b), float(c)
    if math.isfinite(fa) and math.isfinite(fb) and not math.isfinite(fc):
        return t(fc)                    # a finite product never overflows inside an FMA
    if not (math.isfinite(fa) and math.isfinite(fb) and math.isfinite(fc)):
        return t(fa * fb + fc)          # Python floats: no overflow of a float32 product
    exact = Fraction(fa) * Fraction(fb) + Fraction(fc)
    try:
        r = float(exact)
    except OverflowError:
        r = math.inf if exact > 0 else -math.inf
    if r == 0.0 and exact == 0:          # an exact zero: the sign IEEE gives it
        r = fa * fb + fc
    if t is float or t(0).itemsize >= 8:
        return t(r)
    return _nearest(t, exact, r)


def _nearest(t, exact, r):
    """``exact`` (a Fraction) rounded once to the narrower NumPy float type ``t``,
    nearest, ties to even (``t(r)`` may round twice: ``r`` is ``exact`` in float64)."""
    with np.errstate(over="ignore"):
        x = t(r)
    if not np.isfinite(x):
        return x
    best = None
    for c in (np.nextafter(x, t(-np.inf)), x, np.nextafter(x, t(np.inf))):
        if not np.isfinite(c):
            continue
        d = abs(Fraction(float(c)) - exact)
        even = not int(c.view(np.uint16 if c.itemsize == 2 else np.uint32)) & 1
        if best is None or d < best[0] or (d == best[0] and even):
            best = (d, c)
    return best[1]
