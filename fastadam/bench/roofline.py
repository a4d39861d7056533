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

Each loop exists in two forms: the plain element loop, and the prefetched
sub-block form of :mod:`fastadam.kernels._blocked` (chunks of sub-blocks, each
first prefetching the sub-block ahead), which moved the same bytes up to ~1.3x
faster where the arrays outgrow L2 (8M params) on an Intel Sapphire Rapids VM, and
up to 1.4x slower on an AMD EPYC (Zen 4) VM with aligned arrays.  The arrays are
aligned as fastadam's own buffers (:mod:`fastadam._alloc`).  Each form is compiled twice
like the real kernels (a ``parallel=True`` prange loop and a serial one, same
numba options, same threading layer): the four :data:`VARIANTS`.  The bench
takes the fastest of them at each size (:func:`loops` gives them all), so the
limit is the fastest loop known for that traffic, not the one fastadam happens
to choose.

:func:`state_loops` gives the same for a step whose two moments are stored in a
smaller type (bfloat16: 2 bytes, int8: 1 byte per element): float32 ``p`` and
``g`` plus the moments' bytes, the roofline of the reduced-precision Adam steps
of :mod:`fastadam.lowp` (the bound their speed-ups over the float32 roofline
cannot pass on a given machine).

Importing this module compiles nothing; :func:`get` compiles lazily (cached
on disk by numba).

This is a bottom layer of :mod:`fastadam.bench`, beside
:mod:`fastadam.bench.timing`: it imports only numba, fastadam's configuration and
the sub-block machinery of the kernels, never the rest of the bench.

See Also
--------
fastadam.kernels._blocked : the prefetched sub-block form the loops share with the kernels.
fastadam.bench.contenders : times these loops beside the steps.
"""

from __future__ import annotations

import numba
from numba import prange

from .._config import FASTMATH
from ..kernels._blocked import AHEAD_LINES, CHUNK, HASH as _BHASH, LINE, SUB_LINES, k_prefetch

# float32 elements of the prefetched read pass (the sub-block form of kernels/_blocked.py)
_RCHUNK, _RSUB, _RAHEAD = CHUNK, SUB_LINES * LINE // 4, AHEAD_LINES * LINE // 4

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


# the same per-element work as rules, for the prefetched sub-block form
def _r2(p, g, a):
    return p + a * g


def _r3(p, g, s1, a):
    return p + a * g, s1 + a * g


def _r4(p, g, s1, s2, a):
    return p + a * g, s1 + a * g, s2 + a * g


def _r5(p, g, s1, s2, s3, a):
    return p + a * g, s1 + a * g, s2 + a * g, s3 + a * g


#: label -> (parallel, prefetch): the loop forms the bench times, taking the fastest.
VARIANTS = {
    "serial": (False, False),
    "parallel": (True, False),
    "serial prefetched": (False, True),
    "parallel prefetched": (True, True),
}

_compiled: dict = {}
_rules: dict = {}


def _prefetched(n_arrays: int):
    """The prefetched sub-block form of ``_LOOPS[n_arrays]`` (sub-blocks at every size)."""
    from ..kernels import _blocked
    rule = f"_r{n_arrays}"
    if rule not in _rules:
        _rules[rule] = numba.njit(inline="always", fastmath=FASTMATH, cache=False)(
            globals()[rule])
    ns = dict(globals(), **{rule: _rules[rule]})
    return _blocked.blocked_loop(_LOOPS[n_arrays], n_arrays, rule, ns, min_bytes=0)


def get(n_arrays: int, parallel: bool, prefetch: bool = False):
    """The compiled roofline loop over ``n_arrays`` arrays (read all, write all but the
    2nd): ``parallel`` or serial, plain or in the ``prefetch``-ed sub-block form."""
    key = (n_arrays, parallel, prefetch)
    k = _compiled.get(key)
    if k is None:
        import types
        src = _prefetched(n_arrays) if prefetch else _LOOPS[n_arrays]
        suffix = "_par" if parallel else "_ser"
        if prefetch:
            from ..kernels import _blocked
            suffix += "_pf" + _blocked.HASH
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


def run(arrays, parallel: bool, prefetch: bool = False) -> None:
    """One pass of the roofline loop over ``arrays`` (p, g, states...), all 1-D, one dtype.

    The arrays are modified (each written array gains a tiny multiple of the
    second); use scratch buffers.
    """
    a = arrays[0].dtype.type(1e-12)
    get(len(arrays), parallel, prefetch)(*arrays, a)


def loops(arrays) -> dict:
    """``label -> f``, one per :data:`VARIANTS`: ``f()`` runs that roofline loop once over
    ``arrays`` (as :func:`run`).  Time them all; the roofline is the fastest."""
    a = arrays[0].dtype.type(1e-12)
    out = {}
    for label, (parallel, prefetch) in VARIANTS.items():
        k = get(len(arrays), parallel, prefetch)
        out[label] = lambda k=k: k(*arrays, a)
    return out


# --- reduced-precision state: float32 p and g, two moments of a smaller type -----------
# The moments' bytes are moved as float32 words (the arrays of :func:`state_words`),
# ``wps`` words of each per sub-block of _RSUB params, so that the loop is as simple as
# the float32 ones: one multiply-add per written word.

def state_words(n: int, itemsize: int):
    """A float32 scratch array holding the bytes of ``n`` moment elements of ``itemsize``
    bytes (whole sub-blocks: ``ceil(n / 128) * 128 * itemsize / 4`` words), for
    :func:`state_loops`."""
    import numpy as np

    from .. import _alloc
    if itemsize not in (1, 2, 4):
        raise ValueError(f"itemsize must be 1, 2 or 4, got {itemsize!r}")
    subs = (n + _RSUB - 1) // _RSUB
    return _alloc.full(subs * (_RSUB * itemsize // 4), 0.5, np.float32)


def _rw_state(p, g, s1, s2, wps, pf, a):
    n = p.shape[0]
    for c in prange((n + _RCHUNK - 1) // _RCHUNK):
        for lo in range(c * _RCHUNK, min(c * _RCHUNK + _RCHUNK, n), _RSUB):
            w = lo // _RSUB * wps
            if pf:
                wa = w + _RAHEAD // _RSUB * wps
                for k in range(0, _RSUB, 16):
                    k_prefetch(p, lo + _RAHEAD + k)
                    k_prefetch(g, lo + _RAHEAD + k)
                for k in range(0, wps, 16):
                    k_prefetch(s1, wa + k)
                    k_prefetch(s2, wa + k)
            pb = p[lo:min(lo + _RSUB, n)]
            gb = g[lo:min(lo + _RSUB, n)]
            for j in range(pb.shape[0]):
                pb[j] = pb[j] + a * gb[j]
            b1 = s1[w:w + wps]
            b2 = s2[w:w + wps]
            for j in range(b1.shape[0]):
                b1[j] = b1[j] + a * b1[j]
                b2[j] = b2[j] + a * b2[j]


_state_compiled: dict = {}


def state_loops(p, g, s1, s2, itemsize: int, scale: float = 1e-12) -> dict:
    """``label -> f``: one pass that reads float32 ``p`` and ``g`` and two moments of
    ``itemsize`` bytes per element (``s1``, ``s2`` from :func:`state_words`), and writes
    ``p`` and both moments: ``(8 + 2 * 2 * itemsize)`` bytes per param, parallel, plain
    and with the prefetches of :mod:`fastadam.kernels._blocked`'s sub-block form.  The
    roofline of a reduced-precision Adam step (block scales aside: int8's two float32
    scales per 256 params add 0.06 bytes) is the fastest of them.  Each pass adds
    ``scale * g`` to ``p`` and ``scale * w`` to every moment word ``w``."""
    import types

    import numpy as np
    for name, x in (("p", p), ("g", g), ("s1", s1), ("s2", s2)):
        if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 1 \
                or not x.flags.c_contiguous:
            raise TypeError(f"{name} must be a 1-D contiguous float32 array")
    if g.shape != p.shape:
        raise ValueError(f"g has {g.shape[0]} elements, p {p.shape[0]}")
    words = state_words(p.shape[0], itemsize).shape[0]
    if s1.shape[0] != words or s2.shape[0] != words:
        raise ValueError(f"the moments must be state_words({p.shape[0]}, {itemsize}) arrays")
    k = _state_compiled.get("k")
    if k is None:
        f = types.FunctionType(_rw_state.__code__, _rw_state.__globals__, "_rw_state" + _BHASH)
        f.__qualname__ = "_rw_state" + _BHASH
        k = _state_compiled["k"] = numba.njit(parallel=True, cache=True, fastmath=FASTMATH,
                                              nogil=True, error_model="numpy",
                                              boundscheck=False)(f)
    wps = _RSUB * itemsize // 4
    a = np.float32(scale)
    return {"parallel": lambda: k(p, g, s1, s2, wps, False, a),
            "parallel prefetched": lambda: k(p, g, s1, s2, wps, True, a)}


# --- a read-only pass (the first pass of a clipped / unscaled step reads g once) ----------

def _read_plain(g):
    acc = g[0] - g[0]
    for i in prange(g.shape[0]):
        acc += g[i]
    return acc


def _read_prefetched(g):
    n = g.shape[0]
    acc = g[0] - g[0]
    for c in prange((n + _RCHUNK - 1) // _RCHUNK):
        s = g[0] - g[0]
        for lo in range(c * _RCHUNK, min(c * _RCHUNK + _RCHUNK, n), _RSUB):
            for k in range(0, _RSUB, 16):
                k_prefetch(g, lo + _RAHEAD + k)
            gb = g[lo:min(lo + _RSUB, n)]
            for j in range(gb.shape[0]):
                s += gb[j]
        acc += s
    return acc


_read_compiled: dict = {}


def read_loops(g) -> dict:
    """``label -> f``: a read-only pass over the float32 ``g`` (the sum of its elements,
    in any order), parallel, plain and in the prefetched sub-block form of
    :mod:`fastadam.kernels._blocked`; the roofline of a pass that reads ``g`` once
    (4 bytes/param) is the fastest of them.  ``g`` must be non-empty."""
    import types
    out = {}
    for label, src in (("read parallel", _read_plain),
                       ("read parallel prefetched", _read_prefetched)):
        k = _read_compiled.get(label)
        if k is None:
            # the name carries _blocked's hash: numba's cache does not see its constants
            f = types.FunctionType(src.__code__, src.__globals__, src.__name__ + _BHASH)
            f.__qualname__ = src.__qualname__ + _BHASH
            k = _read_compiled[label] = numba.njit(
                parallel=True, cache=True, fastmath=set(FASTMATH) | {"reassoc"}, nogil=True,
                error_model="numpy", boundscheck=False)(f)
        out[label] = lambda k=k: k(g)
    return out
