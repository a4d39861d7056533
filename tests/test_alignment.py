"""Every flat buffer fastadam allocates starts on a page (>= 64 KiB) or a cache line;
the large ones (>= HUGE_MIN) take the colours of :mod:`fastadam._alloc` in turn.

NumPy's own allocations are 16-byte aligned; AVX-512 loads and stores that span two
cache lines made a step up to 1.4x slower (:mod:`fastadam._alloc`).  These tests read
the addresses of the buffers the façades made: each would fail on a plain ``np.empty``
buffer (16 bytes past a page boundary).
"""

from __future__ import annotations

import mmap

import numpy as np
import pytest

import fastadam
from fastadam import _alloc

BIG = 1 << 15          # float32 elements: 128 KiB, page-aligned
SMALL = 100            # 400 bytes: cache-line-aligned


def _aligned(a, nbytes=None) -> bool:
    a = np.asarray(a)
    nbytes = a.nbytes if nbytes is None else nbytes
    return a.ctypes.data % _alloc.alignment(nbytes) == 0


def test_numpy_allocations_are_not_aligned_here():
    """What the module works around: a large ``np.empty`` is not page-aligned (if this
    fails, NumPy or glibc changed and the alignment tests below prove less)."""
    a = np.empty(1 << 20, np.float32)
    assert a.ctypes.data % _alloc.PAGE != 0


@pytest.mark.parametrize("make", ["empty", "zeros", "full", "copy"])
@pytest.mark.parametrize("shape", [1, 7, SMALL, BIG, (BIG, 3), (3, 5)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int8, np.uint16])
def test_alloc(make, shape, dtype):
    src = np.arange(int(np.prod(shape))).reshape(shape).astype(dtype)
    if make == "empty":
        a = _alloc.empty(shape, dtype)
    elif make == "zeros":
        a = _alloc.zeros(shape, dtype)
        assert not a.any()
    elif make == "full":
        a = _alloc.full(shape, 3, dtype)
        assert (a == 3).all()
    else:
        a = _alloc.copy(src)
        np.testing.assert_array_equal(a, src)
    assert a.shape == np.empty(shape).shape and a.dtype == dtype
    assert a.flags.c_contiguous and a.flags.writeable
    assert _aligned(a)
    want = _alloc.PAGE if a.nbytes >= _alloc.PAGE_MIN else _alloc.LINE
    assert a.ctypes.data % want == 0


@pytest.mark.parametrize("n", [SMALL, BIG])
def test_buffers_own_their_memory(n):
    """The array is the end of its ``.base`` chain (a buffer object, not a larger array):
    fastadam.keras takes a variable's owner as its flat buffer."""
    a = _alloc.zeros(n, np.float32)
    assert not isinstance(a.base, np.ndarray)
    assert a.base is not None


def test_without_anonymous_mappings(monkeypatch):
    """Where ``mmap.MAP_PRIVATE`` is missing (Windows), large buffers are still
    page-aligned and zero-filled (a slice of a larger zero-filled array); so is
    lazy_zeros' (without a mapping to advise)."""
    monkeypatch.delattr(mmap, "MAP_PRIVATE")
    a = _alloc.zeros(BIG, np.float32)
    assert a.ctypes.data % _alloc.PAGE == 0 and not a.any()
    lz, region = _alloc.lazy_zeros(_alloc.HUGE_MIN // 4 + 1000, np.float32)
    assert region is None and lz.ctypes.data % _alloc.PAGE == 0 and not lz.any()
    assert not isinstance(a.base, np.ndarray)
    a[:] = 1.0
    assert (_alloc.full(BIG, 2.0, np.float32) == 2.0).all()


HUGE_ELEMS = _alloc.HUGE_MIN // 4 + 1000       # float32: past HUGE_MIN, not whole huge pages
linux_mmap = pytest.mark.skipif(
    not (hasattr(mmap, "MAP_PRIVATE") and hasattr(mmap, "MADV_HUGEPAGE")),
    reason="anonymous mappings with huge-page advice (the coloured path) missing")


@linux_mmap
def test_large_buffers_take_the_colours_in_turn():
    """Consecutive buffers of HUGE_MIN bytes or more start 0 .. COLORS - 1 pages past a
    2 MiB boundary, each colour once in COLORS allocations, so two buffers allocated one
    after the other are never a multiple of 2 MiB apart (equal tables packed exactly 256
    MiB apart made a row-sparse Adam step 1.5x as long)."""
    bufs = [_alloc.zeros(HUGE_ELEMS, np.float32) for _ in range(_alloc.COLORS)]
    colors = sorted(a.ctypes.data % _alloc.HUGE // _alloc.PAGE for a in bufs)
    assert colors == list(range(_alloc.COLORS))
    for a, b in zip(bufs, bufs[1:]):
        assert (a.ctypes.data - b.ctypes.data) % _alloc.HUGE != 0
    for a in bufs:
        assert a.ctypes.data % _alloc.PAGE == 0 and not a.any()
        a[:] = 1.0                                   # the whole buffer is writable
        assert a.sum() == HUGE_ELEMS
    # lazy_zeros (fastadam.torch's flat gradient) takes its colour from the same turn
    lazy = [_alloc.lazy_zeros(HUGE_ELEMS, np.float32)[0] for _ in range(_alloc.COLORS)]
    assert len({a.ctypes.data % _alloc.HUGE for a in lazy}) == _alloc.COLORS


@linux_mmap
@pytest.mark.parametrize("n", [HUGE_ELEMS, 3 * (_alloc.HUGE // 4), _alloc.HUGE_MIN // 4])
def test_huge_page_advice_stays_inside_the_buffer(n):
    """The stretch advised MADV_HUGEPAGE is whole huge pages, starts at most COLORS - 1
    pages before the buffer and ends inside it: no huge page commits memory past the
    buffer's end (the peak-memory tests of test_memory.py measure the same)."""
    a, region = _alloc.lazy_zeros(n, np.float32)
    base = np.frombuffer(region.mmap, np.uint8, count=1).ctypes.data
    lo = a.ctypes.data - base                         # the buffer's place in the mapping
    hi = lo + a.nbytes
    assert (base + region.start) % _alloc.HUGE == 0
    assert region.length % _alloc.HUGE == 0 and region.length > 0
    assert region.start <= lo < region.start + _alloc.COLORS * _alloc.PAGE
    assert region.start + region.length <= hi < region.start + region.length + _alloc.HUGE
    region.madvise(mmap.MADV_HUGEPAGE)                # what bind_grad does: accepted
    a[:] = 2.0
    assert (a == 2.0).all()


def test_small_lazy_zeros_are_plain_zeros():
    a, region = _alloc.lazy_zeros(SMALL, np.float32)
    assert region is None and not a.any() and _aligned(a)


def test_views_keep_the_memory_alive():
    a = _alloc.full(BIG, 2.0, np.float32)
    v = a[10:20]
    del a
    import gc
    gc.collect()
    assert (v == 2.0).all()


@pytest.mark.parametrize("state_dtype", ["float32", "bfloat16", "int8"])
def test_numpy_facade_buffers(state_dtype):
    opt = fastadam.Adam({"w": np.ones(BIG, np.float32), "b": np.ones(SMALL, np.float32)},
                        state_dtype=state_dtype)
    opt.step()
    fb = opt.flat[0].buffers[0]
    assert _aligned(fb.data) and _aligned(fb.grad)
    st = opt.state[0]["float32"]
    arrays = [v for v in st.values() if isinstance(v, np.ndarray)]
    assert len(arrays) >= 2
    assert all(_aligned(a) for a in arrays)


@pytest.mark.parametrize("state_dtype", ["float32", "int8"])
def test_numpy_facade_state_after_a_checkpoint_load(state_dtype):
    """A checkpoint's arrays (NumPy's own, 16-byte aligned) are copied into aligned state:
    a resumed run is as fast as the first."""
    n = 4 * BIG                               # int8 state: 128 KiB, page-aligned too
    a = fastadam.Adam({"w": np.ones(n, np.float32)}, state_dtype=state_dtype)
    a.step()
    sd = a.state_dict()
    sd["state"] = [{k: (np.array(v, copy=True) if isinstance(v, np.ndarray) else v)
                    for k, v in e.items()} for e in sd["state"]]
    assert any(isinstance(v, np.ndarray) and v.nbytes >= _alloc.PAGE_MIN and not _aligned(v)
               for e in sd["state"] for v in e.values())    # the case bites
    b = fastadam.Adam({"w": np.ones(n, np.float32)}, state_dtype=state_dtype)
    b.load_state_dict(sd)
    st = b.state[0]["float32"]
    arrays = [v for v in st.values() if isinstance(v, np.ndarray)]
    assert arrays and all(_aligned(v) for v in arrays)
    for k, v in st.items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(v, a.state[0]["float32"][k])


@pytest.mark.parametrize("cls", ["RMSprop", "Adagrad", "SGD", "Adadelta", "NAdam", "Adamax"])
def test_numpy_facade_state_of_every_optimizer(cls):
    kw = {"momentum": 0.9} if cls == "SGD" else {}
    opt = getattr(fastadam, cls)({"w": np.ones(BIG, np.float32)}, **kw)
    opt.step()
    st = opt.state[0]["float32"]
    arrays = [v for v in st.values() if isinstance(v, np.ndarray) and v.size == BIG]
    assert arrays and all(_aligned(a) for a in arrays)


torch = pytest.importorskip("torch")


@pytest.mark.parametrize("state_dtype", ["float32", "bfloat16", "int8"])
@pytest.mark.parametrize("set_to_none", [True, False])
def test_torch_buffers(state_dtype, set_to_none):
    import fastadam.torch as ft
    ps = [torch.nn.Parameter(torch.ones(BIG)), torch.nn.Parameter(torch.ones(SMALL))]
    opt = ft.Adam(ps, state_dtype=state_dtype)
    for p in ps:
        p.grad = torch.ones_like(p)
    opt.step()
    opt.zero_grad(set_to_none=set_to_none)
    b = opt._buckets[0]
    assert b.data.data_ptr() % _alloc.PAGE == 0
    assert ps[0].data_ptr() == b.data.data_ptr()           # the first parameter's view
    assert b.grad.data_ptr() % _alloc.PAGE == 0
    assert b.state and all(t.data_ptr() % _alloc.alignment(t.numel() * t.element_size()) == 0
                           for t in b.state.values())


def test_torch_master_weights():
    import fastadam.torch as ft
    p = torch.nn.Parameter(torch.ones(BIG, dtype=torch.bfloat16))
    opt = ft.Adam([p])
    p.grad = torch.ones_like(p)
    opt.step()
    b = opt._buckets[0]
    assert "master_param" in b.state
    assert all(t.data_ptr() % _alloc.PAGE == 0 for t in b.state.values())
    assert b.data.data_ptr() % _alloc.PAGE == 0


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_numpy_facade_copies_are_aligned(how):
    import copy
    import pickle
    a = fastadam.Adam({"w": np.ones(BIG, np.float32)})
    a.step()
    b = copy.deepcopy(a) if how == "deepcopy" else pickle.loads(pickle.dumps(a))
    fb = b.flat[0].buffers[0]
    assert _aligned(fb.data) and _aligned(fb.grad)
    arrays = [v for v in b.state[0]["float32"].values() if isinstance(v, np.ndarray)]
    assert arrays and all(_aligned(v) for v in arrays)
