"""Aligned flat buffers: every flat parameter, gradient and state buffer fastadam allocates.

NumPy's allocator returns memory 16 bytes past a page boundary (glibc's chunk header), so
a plain ``np.empty`` buffer is 16-byte aligned, never 64-byte: every 64-byte vector load
and store of a compiled step (AVX-512) then spans two cache lines.  Measured on the
development VM (AMD EPYC, AVX-512; the memory-roofline loop moving float32 Adam's
traffic; one process, the two layouts interleaved, four quiet runs): with 2 threads
1.2-1.6x longer on 16-byte-aligned buffers than on page-aligned ones at 8M elements,
1.3-2.0x at 32M; with one thread 1.7-2.1x at 8M.

:func:`empty`, :func:`zeros`, :func:`full` and :func:`copy` make buffers whose first
element lies on a page (4,096 bytes) from :data:`PAGE_MIN` bytes on -- an anonymous
memory mapping each, whose pages are committed only when written, advised to use
transparent huge pages from :data:`HUGE_MIN` bytes on as NumPy advises its own -- else
on a cache line (64 bytes: a view of a slightly larger zero-filled array).  The array's
``.base`` is a buffer object (the mapping, or a ``memoryview``), not another array, so
it is its own owner along NumPy's ``.base`` chain.

**Colours.**  Linux places anonymous mappings one below the other, and one whose length
is a multiple of 2 MiB on a 2 MiB boundary: equal tables (a 1M x 64 float32 embedding
table, its ``exp_avg`` and ``exp_avg_sq``: 256 MiB each) then lay exactly 256 MiB apart, so
row ``r`` of each was a power of two away from the others.  A dense step streams through
them and does not mind; a row-sparse step jumps to row ``r`` of each at once, and took
1.5x as long.  Measured (SparseAdam's kernel, 1M x 64, 8,192 Zipf lookups, the three
tables placed by hand in one mapping, interleaved): 256 or 512 MiB apart 208-225 us; 384
MiB apart 162-172; 257 or 258 MiB, or 256 MiB + 4 KiB apart, 134-145 (the offset modulo 2
MiB alone is not it: tables on 2 MiB boundaries 258 MiB apart were fast; likely
conflicts in a structure indexed by higher address bits, such as a TLB, under the VM's
nested paging -- not isolated).  So each buffer of :data:`HUGE_MIN` bytes or more starts
``k`` pages past a 2 MiB boundary, ``k`` taking the values ``0 .. COLORS - 1`` in turn:
two buffers allocated one after the other are then never a multiple of 2 MiB apart
(still page-aligned; the mapping is 2 MiB and ``k`` pages longer, address space only:
those pages are never touched).  Through ``fastadam bench --sparse``, SparseAdam's whole
step at 1M x 64 went from 248 to 189 us.  The dense Adam kernel: unchanged
(1.00-1.03x at 256K-8M elements).

A bottom layer: imports NumPy and the standard library only.
"""

from __future__ import annotations

import itertools
import mmap

import numpy as np

#: Alignment, in bytes, of a buffer smaller than :data:`PAGE_MIN` bytes (a cache line).
LINE = 64
#: Alignment, in bytes, of a larger buffer (a page).
PAGE = 4096
#: Buffers of at least this many bytes start on a page; smaller ones on a cache line (a
#: page each would cost up to 4 KiB per small buffer, e.g. per Keras slot variable).
PAGE_MIN = 64 << 10
#: Buffers of at least this many bytes are advised to use transparent huge pages
#: (``MADV_HUGEPAGE``), as NumPy advises its own large allocations.
HUGE_MIN = 4 << 20
#: A transparent huge page (x86-64; most aarch64 kernels).
HUGE = 2 << 20
#: Buffers of :data:`HUGE_MIN` bytes or more start 0, 1, ... ``COLORS - 1`` pages past a
#: :data:`HUGE` boundary, in turn (see the module's docstring).
COLORS = 8

_colors = itertools.count()        # next() is atomic under the GIL


def alignment(nbytes: int) -> int:
    """The alignment, in bytes, of a buffer of ``nbytes`` bytes."""
    return PAGE if nbytes >= PAGE_MIN else LINE


def _buffer(nbytes: int):
    """Zero-filled writable memory of ``nbytes`` bytes starting on the alignment that
    :func:`alignment` gives, as a buffer object (never a NumPy array)."""
    align = alignment(nbytes)
    if align == PAGE and hasattr(mmap, "MAP_PRIVATE"):
        huge = nbytes >= HUGE_MIN and hasattr(mmap, "MADV_HUGEPAGE")
        return _mapping(nbytes, mmap.MADV_HUGEPAGE if huge else None)[0]
    # elsewhere (small buffers; platforms without MAP_PRIVATE): a slice of a larger
    # zero-filled NumPy array (calloc: lazy pages too), seen through a memoryview
    raw = np.zeros(nbytes + align, np.uint8)
    off = -raw.ctypes.data % align
    return memoryview(raw)[off:off + nbytes]


class Mapping:
    """The anonymous memory mapping under a buffer of :func:`_mapping`, for advice
    (``madvise``) later: :meth:`madvise` covers the 2 MiB-aligned stretch of the mapping
    that the buffer fills (its first huge page includes the colour's few pages before the
    buffer; the pages past its last whole huge page keep 4 KiB pages, so a huge page
    never commits memory beyond the buffer's end)."""

    __slots__ = ("mmap", "start", "length")

    def __init__(self, m, start: int, length: int):
        self.mmap, self.start, self.length = m, start, length

    def madvise(self, advice) -> None:
        if self.length:
            self.mmap.madvise(advice, self.start, self.length)


def _mapping(nbytes: int, advice):
    """``(buffer, mapping)``: an anonymous mapping (page-aligned, its pages zero and
    committed on first touch) and the buffer of ``nbytes`` bytes in it, advised
    ``advice`` (an ``mmap.MADV_*``, or None).  Below :data:`HUGE_MIN` bytes: the
    ``mmap`` itself, twice.  From there: a ``memoryview`` of the ``mmap`` that starts the
    next colour's number of pages past a :data:`HUGE` boundary (the mapping is 2 MiB and
    that many pages longer; the pages around the buffer are never touched, so they commit
    no memory), and its :class:`Mapping`."""
    if nbytes < HUGE_MIN:
        m = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE)
        if advice is not None:
            m.madvise(advice)
        return m, m
    color = PAGE * (next(_colors) % COLORS)
    m = mmap.mmap(-1, nbytes + HUGE + color, flags=mmap.MAP_PRIVATE)
    start = -np.frombuffer(m, np.uint8, count=1).ctypes.data % HUGE
    region = Mapping(m, start, (color + nbytes) // HUGE * HUGE)
    if advice is not None:
        region.madvise(advice)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):       # the tail: never a huge page (THP "always")
        tail = start + region.length
        m.madvise(mmap.MADV_NOHUGEPAGE, tail, len(m) - tail)
    return memoryview(m)[start + color:start + color + nbytes], region


def lazy_zeros(n: int, dtype):
    """``(array, mapping)``: ``n`` zeros of ``dtype`` (1-D) that commit no page before
    it is written and start without transparent huge pages, and the :class:`Mapping` to
    advise ``MADV_HUGEPAGE`` later; from :data:`HUGE_MIN` bytes on where ``madvise``
    exists, else a :func:`zeros` array and None."""
    dtype = np.dtype(dtype)
    nbytes = n * dtype.itemsize
    if nbytes >= HUGE_MIN and hasattr(mmap, "MADV_HUGEPAGE") and hasattr(mmap, "MAP_PRIVATE"):
        buf, m = _mapping(nbytes, mmap.MADV_NOHUGEPAGE)
        return np.frombuffer(buf, dtype=dtype, count=n), m
    return zeros(n, dtype), None


def _aligned(shape, dtype):
    dtype = np.dtype(dtype)
    shape = (shape,) if np.ndim(shape) == 0 else tuple(int(s) for s in shape)
    n = 1
    for s in shape:
        n *= s
    if n == 0:
        return np.zeros(shape, dtype)
    # the typed array's base is the buffer, not another array: it owns its memory as
    # far as NumPy's ``.base`` chain tells (what fastadam.keras looks for)
    a = np.frombuffer(_buffer(n * dtype.itemsize), dtype=dtype, count=n)
    return a if len(shape) == 1 else a.reshape(shape)


def empty(shape, dtype) -> np.ndarray:
    """An aligned C-contiguous array (its memory zero-filled, as :func:`zeros`: the
    large ones commit no page before it is written)."""
    return _aligned(shape, dtype)


def zeros(shape, dtype) -> np.ndarray:
    """A zero-filled aligned array (nothing committed before it is written, from
    :data:`PAGE_MIN` bytes on)."""
    return _aligned(shape, dtype)


def full(shape, fill, dtype) -> np.ndarray:
    """An aligned array filled with ``fill``."""
    a = _aligned(shape, dtype)
    a.fill(fill)
    return a


def copy(a) -> np.ndarray:
    """An aligned C-contiguous copy of array ``a``."""
    a = np.asarray(a)
    out = _aligned(a.shape, a.dtype)
    out[...] = a
    return out
