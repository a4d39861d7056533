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

A bottom layer: imports NumPy and the standard library only.
"""

from __future__ import annotations

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


def alignment(nbytes: int) -> int:
    """The alignment, in bytes, of a buffer of ``nbytes`` bytes."""
    return PAGE if nbytes >= PAGE_MIN else LINE


def _buffer(nbytes: int):
    """Zero-filled writable memory of ``nbytes`` bytes starting on the alignment that
    :func:`alignment` gives, as a buffer object (never a NumPy array)."""
    align = alignment(nbytes)
    if align == PAGE and hasattr(mmap, "MAP_PRIVATE"):
        # an anonymous mapping: page-aligned, its pages zero and committed on first touch
        m = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE)
        if nbytes >= HUGE_MIN and hasattr(mmap, "MADV_HUGEPAGE"):
            m.madvise(mmap.MADV_HUGEPAGE)
        return m
    # elsewhere (small buffers; platforms without MAP_PRIVATE): a slice of a larger
    # zero-filled NumPy array (calloc: lazy pages too), seen through a memoryview
    raw = np.zeros(nbytes + align, np.uint8)
    off = -raw.ctypes.data % align
    return memoryview(raw)[off:off + nbytes]


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
