"""Memory-roofline loops: the speed limit that ``fastadam bench`` measures steps against.

An optimizer step on a large buffer is memory-bound: its speed limit is the
time the machine needs to move the step's bytes.  A *roofline loop* moves
exactly the same bytes as a step -- it reads the same arrays once and writes
the same arrays once, element by element, in one fused pass -- but does
trivial arithmetic (one multiply-add per written array), so it can never be
compute-bound.  Its time is the memory limit of that traffic; ``100% of
roofline`` means a step is as fast as moving its bytes can be.

Traffic patterns, ``(reads, writes)`` counted in arrays of the parameter's
size, one per kernel of :data:`fastadam._scalars.KERNEL_STATES`: Adam reads
p, g, m, v and writes p, m, v, i.e. ``(4, 3)``: 28 bytes per float32 param.

Each loop is compiled twice like the real kernels (a ``parallel=True`` prange
loop and a serial one, same numba options, same threading layer); the bench
takes the faster of the two at each size, so the limit is the fastest loop
known for that traffic, not the one fastadam happens to choose.

Importing this module compiles nothing; :func:`get` compiles lazily (cached
on disk by numba).
"""

from __future__ import annotations

import numba
from numba import prange

from ._config import FASTMATH

#: kernel name -> (number of arrays read, number of arrays written), the
#: parameter and gradient included.  Mirrors ``_scalars.KERNEL_STATES``: every
#: state array is read and written; the parameter is read and written; the
#: gradient is only read.
TRAFFIC = {
    "adam": (4, 3),
    "adam_amsgrad": (5, 4),
    "rmsprop": (3, 2),
    "rmsprop_momentum": (4, 3),
    "rmsprop_centered": (4, 3),
    "rmsprop_centered_momentum": (5, 4),
    "adagrad": (3, 2),
    "sgd": (2, 1),
    "sgd_momentum": (3, 2),
    "adadelta": (4, 3),
    "nadam": (4, 3),
    "adamax": (4, 3),
}


def bytes_per_param(kernel: str, itemsize: int = 4) -> int:
    """Bytes a step of ``kernel`` moves per parameter (reads + writes)."""
    r, w = TRAFFIC[kernel]
    return (r + w) * itemsize


# --- the loops: reads r arrays (p, g and the states), writes w = r - 1 ----------
# ``a`` is a scalar of the arrays' dtype, so float32 loops stay float32.

def _rw_2_1(p, g, a):
    for i in prange(p.shape[0]):
        p[i] = p[i] + a * g[i]


def _rw_3_2(p, g, s1, a):
    for i in prange(p.shape[0]):
        gi = g[i]
        p[i] = p[i] + a * gi
        s1[i] = s1[i] + a * gi


def _rw_4_3(p, g, s1, s2, a):
    for i in prange(p.shape[0]):
        gi = g[i]
        p[i] = p[i] + a * gi
        s1[i] = s1[i] + a * gi
        s2[i] = s2[i] + a * gi


def _rw_5_4(p, g, s1, s2, s3, a):
    for i in prange(p.shape[0]):
        gi = g[i]
        p[i] = p[i] + a * gi
        s1[i] = s1[i] + a * gi
        s2[i] = s2[i] + a * gi
        s3[i] = s3[i] + a * gi


_LOOPS = {2: _rw_2_1, 3: _rw_3_2, 4: _rw_4_3, 5: _rw_5_4}
_compiled: dict = {}


def get(n_arrays: int, parallel: bool):
    """The compiled roofline loop over ``n_arrays`` arrays (read all, write all but the 2nd)."""
    key = (n_arrays, parallel)
    k = _compiled.get(key)
    if k is None:
        import types
        src = _LOOPS[n_arrays]
        suffix = "_par" if parallel else "_ser"
        f = types.FunctionType(src.__code__, src.__globals__, src.__name__ + suffix,
                               src.__defaults__, src.__closure__)
        f.__qualname__ = src.__qualname__ + suffix
        f.__module__ = src.__module__
        k = _compiled[key] = numba.njit(parallel=parallel, cache=True, fastmath=FASTMATH,
                                        nogil=True, error_model="numpy",
                                        boundscheck=False)(f)
    return k


def arrays_for(kernel: str) -> int:
    """How many arrays the roofline loop of ``kernel`` takes (= arrays the kernel reads)."""
    return TRAFFIC[kernel][0]


def run(arrays, parallel: bool) -> None:
    """One pass of the roofline loop over ``arrays`` (p, g, states...), all 1-D, one dtype.

    The arrays are modified (each written array gains a tiny multiple of the
    second); use scratch buffers.
    """
    a = arrays[0].dtype.type(1e-12)
    get(len(arrays), parallel)(*arrays, a)
