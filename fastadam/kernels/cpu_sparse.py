"""numba CPU kernels for row-sparse (embedding) steps.

A row-sparse step gets a table ``p`` of shape ``(rows, dim)`` (and state arrays of
the same layout, or one value per row), the row ``indices`` a batch looked up
(1-D, int32 or int64, duplicates allowed, any order) and one gradient row per
lookup, ``values`` ``(len(indices), dim)``.  Each kernel call:

1. **coalesces** the lookups (:func:`coalesce`): a stable LSD radix argsort of the
   indices (two passes of 10 bits for a million rows, each lookup moved as one 64-bit
   ``row << bits | position``) and the segments
   of equal rows, so that the gradient rows of each distinct row are found together
   *in the order of the lookups*;
2. splits the distinct rows into work items of about equal cost (lookups plus
   row updates: a hot Zipf row with a thousand lookups is not one thread's
   burden while the other idles);
3. runs the work items in parallel (``prange``), each distinct row once: its
   gradient is the sum of its lookups' rows, added in lookup order into a
   scratch row of the work item (a row looked up once is read where it is),
   then the rule of :mod:`fastadam.rules.sparse` (or :func:`fastadam.rules.adam.adam`
   for lazy Adam) updates that row of the table and of its state in one pass,
   after issuing prefetch hints for the rows :data:`AHEAD` distinct rows ahead (and
   for the gradient rows :data:`LOOKUPS_AHEAD` lookups ahead).

Every distinct row is summed and updated by one thread in a fixed order, so the
result does not depend on the thread count or the schedule.  Only the looked-up
rows of the table and state are read or written; what is allocated per call
(the sort order, the segments, the scratch rows) is proportional to the number
of lookups, never to the table.

The callers (:func:`fastadam.functional.sparse_adam_` and friends, the
fastadam.torch optimizers) check everything first: indices in ``[0, rows)``,
shapes, dtypes, contiguity, overlap.  Nothing is checked here.

Both variants (``parallel=True`` and serial, chosen by ``lookups * dim`` against
:data:`fastadam._config.PARALLEL_THRESHOLD`) are compiled lazily and cached on disk,
keyed by a hash of the rule sources and compile flags (numba itself only
watches this file).
"""

from __future__ import annotations

import hashlib
import pathlib

import numba
import numpy as np
from numba import prange

from .._config import FASTMATH
from . import _blocked, _fma  # noqa: F401  (_fma: the rules' fma, for numba)
from ._variants import NJIT_OPTIONS, KernelVariants, use_parallel
from ..rules import adam as _adam_r
from ..rules import sparse as _sparse_r

#: Distinct rows ahead of the current one whose table and state rows get prefetch
#: hints (random rows of a big table miss every cache level and the TLB).
AHEAD = 4
#: Lookups ahead (in sorted order) of the current one whose gradient rows get prefetch
#: hints (measured: 15% faster at 100K x 128 with 32K Zipf lookups, 5% at 1M x 64 / 8K).
LOOKUPS_AHEAD = 8
#: Work items per thread in the parallel variant (balanced by cost, see ``coalesce``).
ITEMS_PER_THREAD = 4
#: Relative cost of updating a distinct row against reading one lookup's gradient row
#: (used only to balance the work items; no effect on results).
ROW_COST = 3
#: Radix digit width of the index sort, in bits (at most; the passes share the bits).
RADIX_BITS = 11


def _inline(f):
    return numba.njit(inline="always", fastmath=FASTMATH, cache=False)(f)


r_sparse_adam = _inline(_sparse_r.sparse_adam)
r_sparse_adagrad = _inline(_sparse_r.sparse_adagrad)
r_sparse_sgd = _inline(_sparse_r.sparse_sgd)
r_rowwise_grad = _inline(_sparse_r.rowwise_grad)
r_rowwise_state = _inline(_sparse_r.rowwise_adagrad_state)
r_rowwise_scale = _inline(_sparse_r.rowwise_adagrad_scale)
r_rowwise_adagrad = _inline(_sparse_r.rowwise_adagrad)
r_adam = _inline(_adam_r.adam)
r_adam_amsgrad = _inline(_adam_r.adam_amsgrad)

prefetch_row = _blocked.prefetch_ahead


# --- coalescing ----------------------------------------------------------------------

@numba.njit(cache=True, **NJIT_OPTIONS)
def index_range(x):
    """``(min, max)`` of the non-empty integer array ``x``, in one pass (the façades'
    range check of the lookups: a fifth of NumPy's ``x.min()`` and ``x.max()``)."""
    lo = x[0]
    hi = x[0]
    for i in range(1, x.shape[0]):
        y = x[i]
        lo = min(lo, y)
        hi = max(hi, y)
    return lo, hi


@numba.njit(cache=True, **NJIT_OPTIONS)
def sort_rows(idx, nrows, kdt):
    """``(order, keys)``: a stable argsort of ``idx`` (values in ``[0, nrows)``) and
    the sorted values, by an LSD radix sort of (key, position) pairs of dtype ``kdt``
    (a NumPy integer dtype: int32 where rows and lookups fit, half the bytes to move);
    small inputs an insertion sort.  Stable, so the lookups of one row keep their
    order (the order their gradient rows are summed in).  :func:`coalesce` sorts
    tables of up to ``2 * RADIX_BITS`` bits of row with :func:`_packed_segments`
    instead.
    """
    bits = 1
    while (1 << bits) < nrows:
        bits += 1
    return _sort_rows_general(idx, bits, kdt)


@numba.njit(cache=True, **NJIT_OPTIONS)
def _packed_segments(idx, bits, kdt):
    """``(order, starts, rows, nseg)`` of :func:`coalesce` for rows of at most
    ``2 * RADIX_BITS`` bits: the two LSD radix passes written out, their histograms
    counted in one read of ``idx``, each lookup moved as one int64 ``row << pb | pos``
    (one store per pass instead of a key and a position: 42 -> 37 us for 8,192 Zipf
    lookups), unpacked into ``order`` while the segments are found.  The second pass
    keeps the slot of the current digit in a register while the digit repeats (after
    the first pass a row's lookups are one run among those of its low digit): 33 -> 27
    us for 8,192 Zipf lookups over 1M rows (uniform ones: unchanged), where each store
    of a hot row waited on the previous one's counter in memory."""
    n = idx.shape[0]
    pb = 1
    while (1 << pb) < n:
        pb += 1
    width = (bits + 1) // 2
    mask = (1 << width) - 1
    pmask = (1 << pb) - 1
    h0 = np.zeros(1 << width, np.int64)
    h1 = np.zeros(1 << width, np.int64)
    for i in range(n):
        key = idx[i]
        h0[key & mask] += 1
        h1[(key >> width) & mask] += 1
    t0 = 0
    t1 = 0
    for d in range(1 << width):
        c0 = h0[d]
        h0[d] = t0
        t0 += c0
        c1 = h1[d]
        h1[d] = t1
        t1 += c1
    pk1 = np.empty(n, np.int64)
    for i in range(n):                      # pass 1: the low digit
        key = idx[i]
        d = key & mask
        pos = h0[d]
        h0[d] = pos + 1
        pk1[pos] = (key << pb) | i
    pk = np.empty(n, np.int64)
    dp = np.int64(0)                        # pass 2: the high digit, its next slot kept
    pos = h1[0]                             # in a register while it repeats (a hot
    for i in range(n):                      # row's lookups: one long run)
        x = pk1[i]
        d = (x >> (pb + width)) & mask
        if d != dp:
            h1[dp] = pos
            pos = h1[d]
            dp = d
        pk[pos] = x
        pos += 1
    order = np.empty(n, kdt)
    starts = np.empty(n + 1, kdt)
    rows = np.empty(n, np.int64)
    nseg = 0
    prev = -1
    for i in range(n):
        x = pk[i]
        key = x >> pb
        order[i] = x & pmask
        if key != prev:
            starts[nseg] = i
            rows[nseg] = key
            nseg += 1
            prev = key
    starts[nseg] = n
    return order, starts, rows, nseg


@numba.njit(cache=True, **NJIT_OPTIONS)
def _sort_rows_general(idx, bits, kdt):
    """:func:`sort_rows` for any number of passes (and an insertion sort when small)."""
    n = idx.shape[0]
    order = np.empty(n, kdt)
    keys = np.empty(n, kdt)
    for i in range(n):
        keys[i] = idx[i]
        order[i] = i
    if n <= 32:
        for i in range(1, n):
            key = keys[i]
            k = i - 1
            while k >= 0 and keys[k] > key:
                keys[k + 1] = keys[k]
                order[k + 1] = order[k]
                k -= 1
            keys[k + 1] = key
            order[k + 1] = i
        return order, keys
    passes = (bits + RADIX_BITS - 1) // RADIX_BITS
    width = (bits + passes - 1) // passes
    mask = (1 << width) - 1
    off = np.zeros((passes, 1 << width), kdt)
    for i in range(n):
        key = keys[i]
        for q in range(passes):
            off[q, (key >> (q * width)) & mask] += 1
    for q in range(passes):
        total = 0
        for d in range(1 << width):
            c = off[q, d]
            off[q, d] = total
            total += c
    keys2 = np.empty(n, kdt)
    order2 = np.empty(n, kdt)
    for q in range(passes):
        shift = q * width
        for i in range(n):
            key = keys[i]
            d = (key >> shift) & mask
            pos = off[q, d]
            off[q, d] = pos + 1
            keys2[pos] = key
            order2[pos] = order[i]
        keys, keys2 = keys2, keys
        order, order2 = order2, order
    return order, keys


@numba.njit(cache=True, **NJIT_OPTIONS)
def coalesce(idx, nrows, nitems, ksample):
    """``(order, starts, rows, bounds)`` of a row-sparse call.

    ``order``: the lookups sorted by row, stably; ``starts``: the segments of equal
    rows (segment ``s`` is ``order[starts[s]:starts[s+1]]``, the lookups of row
    ``rows[s]``); ``bounds``: the work items (item ``c`` is segments
    ``bounds[c]:bounds[c+1]``), at most ``nitems`` of them, split so that each holds
    about the same number of lookups plus ``ROW_COST`` per segment.  ``ksample``: an
    empty array of the integer dtype of ``order`` and ``starts`` (:func:`index_dtype`;
    an array, not a dtype, is what numba's dispatcher types fastest).
    """
    n = idx.shape[0]
    kdt = ksample.dtype
    bits = 1
    while (1 << bits) < nrows:
        bits += 1
    if n > 32 and bits <= 2 * RADIX_BITS:
        order, starts, rows, nseg = _packed_segments(idx, bits, kdt)
    else:
        order, keys = _sort_rows_general(idx, bits, kdt)
        starts = np.empty(n + 1, kdt)
        rows = np.empty(n, np.int64)
        nseg = 0
        for i in range(n):
            if i == 0 or keys[i] != keys[i - 1]:
                starts[nseg] = i
                rows[nseg] = keys[i]
                nseg += 1
        starts[nseg] = n
    items = max(1, min(nitems, nseg))
    bounds = np.empty(items + 1, np.int64)
    bounds[0] = 0
    total = n + ROW_COST * nseg
    s = 0
    for c in range(1, items):
        target = total * c // items
        while s < nseg and starts[s] + ROW_COST * s < target:
            s += 1
        bounds[c] = s
    bounds[items] = nseg
    return order, starts[:nseg + 1], rows[:nseg], bounds


@numba.njit(inline="always", cache=False)
def grad_row(vals, order, a, z, buf):
    """The summed gradient of segment ``order[a:z]`` (lookups of one row), in lookup
    order: the lookup's own row when it is alone, else the sum in ``buf``.  Each
    lookup first issues prefetch hints for the gradient row :data:`LOOKUPS_AHEAD`
    lookups further in sorted order (random rows of ``vals``)."""
    n = order.shape[0]
    q = order[a]
    if a + LOOKUPS_AHEAD < n:
        prefetch_row(vals[order[a + LOOKUPS_AHEAD]], 0, vals.shape[1])
    if z - a == 1:
        return vals[q]
    for j in range(buf.shape[0]):
        buf[j] = vals[q, j]
    for k in range(a + 1, z):
        if k + LOOKUPS_AHEAD < n:
            prefetch_row(vals[order[k + LOOKUPS_AHEAD]], 0, vals.shape[1])
        q = order[k]
        for j in range(buf.shape[0]):
            buf[j] += vals[q, j]
    return buf


@numba.njit(inline="always", cache=False)
def prefetch_rows(t, rows, s):
    """Prefetch hints for the row of ``t`` that segment ``s + AHEAD`` updates."""
    s2 = s + AHEAD
    if s2 < rows.shape[0]:
        prefetch_row(t[rows[s2]], 0, t.shape[1])


# --- the kernels ---------------------------------------------------------------------
# Each: the table and state arrays (2-D, C-contiguous, or 1-D for row-wise state), then
# idx, vals, the number of work items, an empty array of the sort's dtype (index_dtype),
# then the rule's scalars.  Written out per kernel:
# they differ in the arrays they touch and the rule they call.

def sparse_adam(p, m, v, idx, vals, nitems, ksample, s0, s1, s2, s3, s4):
    order, starts, rows, bounds = coalesce(idx, p.shape[0], nitems, ksample)
    scratch = np.empty((bounds.shape[0] - 1, vals.shape[1]), vals.dtype)
    for c in prange(bounds.shape[0] - 1):
        buf = scratch[c]
        for s in range(bounds[c], bounds[c + 1]):
            prefetch_rows(p, rows, s)
            prefetch_rows(m, rows, s)
            prefetch_rows(v, rows, s)
            a, z = starts[s], starts[s + 1]
            r = rows[s]
            g = grad_row(vals, order, a, z, buf)
            pr, mr, vr = p[r], m[r], v[r]
            for j in range(g.shape[0]):
                pr[j], mr[j], vr[j] = r_sparse_adam(pr[j], g[j], mr[j], vr[j], s0, s1, s2,
                                                    s3, s4)


def sparse_adagrad(p, sm, idx, vals, nitems, ksample, s0, s1, s2):
    order, starts, rows, bounds = coalesce(idx, p.shape[0], nitems, ksample)
    scratch = np.empty((bounds.shape[0] - 1, vals.shape[1]), vals.dtype)
    for c in prange(bounds.shape[0] - 1):
        buf = scratch[c]
        for s in range(bounds[c], bounds[c + 1]):
            prefetch_rows(p, rows, s)
            prefetch_rows(sm, rows, s)
            a, z = starts[s], starts[s + 1]
            r = rows[s]
            g = grad_row(vals, order, a, z, buf)
            pr, sr = p[r], sm[r]
            for j in range(g.shape[0]):
                pr[j], sr[j] = r_sparse_adagrad(pr[j], g[j], sr[j], s0, s1, s2)


def sparse_sgd(p, idx, vals, nitems, ksample, s0, s1):
    order, starts, rows, bounds = coalesce(idx, p.shape[0], nitems, ksample)
    scratch = np.empty((bounds.shape[0] - 1, vals.shape[1]), vals.dtype)
    for c in prange(bounds.shape[0] - 1):
        buf = scratch[c]
        for s in range(bounds[c], bounds[c + 1]):
            prefetch_rows(p, rows, s)
            a, z = starts[s], starts[s + 1]
            r = rows[s]
            g = grad_row(vals, order, a, z, buf)
            pr = p[r]
            for j in range(g.shape[0]):
                pr[j] = r_sparse_sgd(pr[j], g[j], s0, s1)


def rowwise_adagrad(p, st, idx, vals, nitems, ksample, s0, s1, s2, s3, s4):
    """``st``: 1-D, one value per row; scalars ``gsign, l2, neg_lr, eps, dim``."""
    order, starts, rows, bounds = coalesce(idx, p.shape[0], nitems, ksample)
    scratch = np.empty((bounds.shape[0] - 1, vals.shape[1]), vals.dtype)
    for c in prange(bounds.shape[0] - 1):
        buf = scratch[c]
        for s in range(bounds[c], bounds[c + 1]):
            prefetch_rows(p, rows, s)
            a, z = starts[s], starts[s + 1]
            r = rows[s]
            g = grad_row(vals, order, a, z, buf)
            pr = p[r]
            sumsq = s4 - s4                # 0 in the state's dtype (dim is finite)
            for j in range(g.shape[0]):
                x = r_rowwise_grad(pr[j], g[j], s0, s1)
                sumsq += x * x
            sr = r_rowwise_state(st[r], sumsq, s4)
            st[r] = sr
            scale = r_rowwise_scale(sr, s2, s3)
            for j in range(g.shape[0]):
                pr[j] = r_rowwise_adagrad(pr[j], r_rowwise_grad(pr[j], g[j], s0, s1), scale)


def lazy_adam(p, m, v, idx, vals, nitems, ksample, s0, s1, s2, s3, s4, s5, s6, s7, s8):
    order, starts, rows, bounds = coalesce(idx, p.shape[0], nitems, ksample)
    scratch = np.empty((bounds.shape[0] - 1, vals.shape[1]), vals.dtype)
    for c in prange(bounds.shape[0] - 1):
        buf = scratch[c]
        for s in range(bounds[c], bounds[c + 1]):
            prefetch_rows(p, rows, s)
            prefetch_rows(m, rows, s)
            prefetch_rows(v, rows, s)
            a, z = starts[s], starts[s + 1]
            r = rows[s]
            g = grad_row(vals, order, a, z, buf)
            pr, mr, vr = p[r], m[r], v[r]
            for j in range(g.shape[0]):
                pr[j], mr[j], vr[j] = r_adam(pr[j], g[j], mr[j], vr[j], s0, s1, s2, s3, s4,
                                             s5, s6, s7, s8)


def lazy_adam_amsgrad(p, m, v, vmax, idx, vals, nitems, ksample, s0, s1, s2, s3, s4, s5, s6,
                      s7, s8):
    order, starts, rows, bounds = coalesce(idx, p.shape[0], nitems, ksample)
    scratch = np.empty((bounds.shape[0] - 1, vals.shape[1]), vals.dtype)
    for c in prange(bounds.shape[0] - 1):
        buf = scratch[c]
        for s in range(bounds[c], bounds[c + 1]):
            prefetch_rows(p, rows, s)
            prefetch_rows(m, rows, s)
            prefetch_rows(v, rows, s)
            prefetch_rows(vmax, rows, s)
            a, z = starts[s], starts[s + 1]
            r = rows[s]
            g = grad_row(vals, order, a, z, buf)
            pr, mr, vr, xr = p[r], m[r], v[r], vmax[r]
            for j in range(g.shape[0]):
                pr[j], mr[j], vr[j], xr[j] = r_adam_amsgrad(
                    pr[j], g[j], mr[j], vr[j], xr[j], s0, s1, s2, s3, s4, s5, s6, s7, s8)


KERNEL_NAMES = ("sparse_adam", "sparse_adagrad", "sparse_sgd", "rowwise_adagrad",
                "lazy_adam", "lazy_adam_amsgrad")


def _source_hash() -> str:
    h = hashlib.sha256(repr(sorted(FASTMATH)).encode())
    h.update(f"{AHEAD}/{LOOKUPS_AHEAD}/{ITEMS_PER_THREAD}/{ROW_COST}/{RADIX_BITS}".encode())
    for mod in (_sparse_r, _adam_r):
        h.update(pathlib.Path(mod.__file__).read_bytes())
    return h.hexdigest()[:12] + _blocked.HASH + _fma.HASH


# Cache entries are keyed by the rules' sources, the prefetch helper's and the compile
# flags, which numba's own cache check (this file's timestamp) does not see.
_variants = KernelVariants(globals(), _source_hash(), FASTMATH, names=KERNEL_NAMES)
get = _variants.get


_KSAMPLES = (np.empty(0, np.int32), np.empty(0, np.int64))


def _wide_keys(nrows: int, n: int) -> bool:
    """Whether the sort's keys and positions need int64: the table's rows or the
    lookups do not fit in int32."""
    return max(nrows, n) >= (1 << 31)


def index_dtype(nrows: int, n: int):
    """An empty array of the dtype of the sort's keys and positions: int32 when the
    table's rows and the lookups fit in it, else int64 (:func:`_wide_keys`)."""
    return _KSAMPLES[_wide_keys(nrows, n)]


#: Work items of a parallel call: :data:`ITEMS_PER_THREAD` per thread numba may run
#: (``NUMBA_NUM_THREADS``; fewer threads set with ``numba.set_num_threads`` share them).
#: A constant: ``numba.get_num_threads()`` costs 0.7 us per call.
PARALLEL_ITEMS = ITEMS_PER_THREAD * numba.config.NUMBA_NUM_THREADS


def work_items(parallel: bool) -> int:
    """Work items of a call: :data:`PARALLEL_ITEMS` in parallel, else 1."""
    return PARALLEL_ITEMS if parallel else 1


def run(name: str, tables, indices, values, scalars) -> None:
    """Run row-sparse kernel ``name``.

    ``tables``: the table and its state arrays (2-D ``(rows, dim)``; row-wise state
    1-D), ``indices`` 1-D int32/int64 in ``[0, rows)``, ``values`` 2-D C-contiguous
    ``(len(indices), dim)``; ``scalars`` of the table's dtype.  All checked by the
    caller.
    """
    n = indices.shape[0]
    if n == 0 or values.shape[1] == 0:
        return
    par = use_parallel(n * values.shape[1])
    _variants.call(name, par, *tables, indices, values, work_items(par),
                   index_dtype(tables[0].shape[0], n), *scalars)


class Bound:
    """:func:`run` of kernel ``name`` on fixed ``tables``, for a caller that steps the
    same tables again and again (fastadam.torch): ``bound(indices, values, scalars)``.

    The compiled entry point of each variant (serial or parallel, by the call's size;
    int32 or int64 sort keys, :func:`index_dtype`) is resolved on first use from the
    call's arguments and then entered directly, skipping numba's type dispatch; the
    scalars may be Python floats (the entry point rounds them to the tables' dtype as
    ``dtype.type`` does: :class:`fastadam._scalars.PythonFloats`).  The caller
    guarantees that every call's ``indices`` (1-D C-contiguous int64) and ``values``
    (2-D C-contiguous, the tables' dtype, writeable) have the types of the first
    call's, that ``scalars`` are as many as the kernel takes (all of the tables' dtype, or
    Python floats), and everything :func:`run` requires; nothing is checked here.
    """

    __slots__ = ("name", "tables", "rows", "entries")

    def __init__(self, name: str, tables):
        self.name = name
        self.tables = tuple(tables)
        self.rows = self.tables[0].shape[0]
        self.entries = {}

    def __call__(self, indices, values, scalars) -> None:
        n = indices.shape[0]
        if n == 0 or values.shape[1] == 0:
            return
        par = use_parallel(n * values.shape[1])
        wide = _wide_keys(self.rows, n)
        f = self.entries.get((par, wide))
        if f is None:
            ft = numba.from_dtype(self.tables[0].dtype)     # every scalar: the table's
            sig = tuple(numba.typeof(a) for a in self.tables + (indices, values)) + (
                numba.int64, numba.typeof(_KSAMPLES[wide])) + (ft,) * len(scalars)
            f = self.entries[(par, wide)] = _variants.entry(self.name, par, sig)
        f(*self.tables, indices, values, work_items(par), _KSAMPLES[wide], *scalars)
