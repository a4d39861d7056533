"""What a real GPU would see of the cuda backend's launches, with fakes where the
simulator cannot show it: several devices, several streams, numba-cuda's launch
warning, the cost of viewing fresh tensors, the order of a reduction's partial sums,
torch bf16 tensors as moments, arrays from other producers of
``__cuda_array_interface__``.

Under numba's CUDA simulator (tests/conftest.py) device memory is host memory: the
fakes below describe host NumPy arrays, so the kernels really run on them, and the
results are checked against NumPy / the numba CPU kernels.
"""

import contextlib
import math
import sys
import types
import warnings

import numpy as np
import pytest
import skips

import fastadam.functional as F
from fastadam import _scalars, lowp

cuda_backend = skips.cuda_backend()

from fastadam.kernels import cuda as K  # noqa: E402
from fastadam.kernels import cuda_lowp_launch as KLL  # noqa: E402

if not K.SIMULATOR:  # pragma: no cover - the fakes describe host memory
    pytest.skip("fakes over host memory: simulator only", allow_module_level=True)

try:
    import torch
except ImportError:  # pragma: no cover - the torch-like tests skip
    torch = None
ADAM = dict(step=1, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
            amsgrad=False, maximize=False)


def _adam_scalars(step):
    return _scalars.adam(np.dtype(np.float64), **dict(ADAM, step=step),
                         decoupled_weight_decay=False)


@pytest.fixture(autouse=True)
def small_grid(monkeypatch):
    monkeypatch.setattr(K, "BLOCK_SIZE", 16)
    monkeypatch.setattr(K, "MAX_BLOCKS", 3)
    K._view_cache.clear()


def _ptr(x):
    return x.__array_interface__["data"][0]


class CAIArray:
    """A device array known only by its ``__cuda_array_interface__`` (v3), over host
    memory; ``stream`` is the interface's stream entry."""

    def __init__(self, x, stream=None):
        self.host = x
        self.__cuda_array_interface__ = {
            "shape": x.shape, "typestr": x.dtype.str, "data": (_ptr(x), False),
            "strides": None, "version": 3, "stream": stream}


class FakeCupy(CAIArray):
    """Stands in for a CuPy array on device ``dev`` (fastadam reads ``.device.id``)."""

    __module__ = "cupy._core.core"

    def __init__(self, x, dev):
        super().__init__(x)
        self.device = types.SimpleNamespace(id=dev)


_TORCH_OF = {np.dtype(np.float32): "float32", np.dtype(np.float64): "float64",
             np.dtype(np.int16): "int16", np.dtype(np.uint16): "uint16",
             np.dtype(np.float16): "float16"}


class FakeTensor:
    """Behaves as a torch CUDA tensor does towards fastadam, over host memory: its
    ``__cuda_array_interface__`` reads are counted; a bfloat16 one has none (as in
    torch), its bits are read through ``view(torch.int16)``."""

    is_cuda = True
    reads = 0

    def __init__(self, x, dtype=None, index=0):
        self.x = x
        self.dtype = dtype if dtype is not None else getattr(torch, _TORCH_OF[x.dtype])
        self.device = types.SimpleNamespace(index=index, type="cuda")

    def detach(self):
        return self

    @property
    def shape(self):
        return self.x.shape

    def is_contiguous(self):
        return self.x.flags.c_contiguous

    def get_device(self):
        return self.device.index

    def data_ptr(self):
        return _ptr(self.x)

    def numel(self):
        return self.x.size

    def element_size(self):
        return self.x.itemsize

    def view(self, dtype):
        np_dt = {torch.int16: np.int16, torch.uint16: np.uint16}[dtype]
        return FakeTensor(self.x.view(np_dt), dtype, self.device.index)

    def __getitem__(self, item):          # a fresh tensor object each time, as torch
        return FakeTensor(self.x[item], self.dtype, self.device.index)

    @property
    def __cuda_array_interface__(self):
        if self.dtype == torch.bfloat16:
            raise TypeError("dtype torch.bfloat16 is not supported by the interface")
        FakeTensor.reads += 1
        return {"shape": self.x.shape, "typestr": self.x.dtype.str,
                "strides": None if self.x.flags.c_contiguous else self.x.strides,
                "data": (_ptr(self.x), False), "version": 2}


@pytest.fixture
def fake_torch(monkeypatch):
    if torch is None:  # pragma: no cover
        pytest.skip("torch is not installed")
    monkeypatch.setattr(K, "_torch_tensor", lambda a: a if isinstance(a, FakeTensor) else None)
    FakeTensor.reads = 0


# --- fakes for launches, streams and devices -------------------------------------------------

class Log:
    """Records stream orderings, device switches and launches, in order."""

    def __init__(self, monkeypatch, streams=True):
        self.events = []
        self.device = [None]
        log = self

        class Event:
            def record(self, stream):
                log.events.append(("record", stream))

            def wait(self, stream):
                log.events.append(("wait", stream))

        @contextlib.contextmanager
        def on_device(dev):
            log.device.append(dev)
            if dev is not None:
                log.events.append(("device", dev))
            try:
                yield
            finally:
                log.device.pop()

        class Kernel:    # logs each launch when it happens (after any waits)
            def __init__(self, k):
                self.k = k
                self.name = getattr(k, "__name__", "?").split("_cuda")[0]

            def __getitem__(self, cfg):
                def call(*args):
                    n = args[0].shape[0] if hasattr(args[0], "shape") else None
                    log.events.append(("launch", self.name, cfg[2], log.device[-1], n))
                    return self.k[cfg](*args)
                return call

        from fastadam.kernels import cuda_sparse as S
        for mod in (K, KLL, S):
            real = mod.get
            monkeypatch.setattr(mod, "get", lambda *a, _g=real: Kernel(_g(*a)))
        monkeypatch.setattr(K, "_new_event", Event, raising=False)
        monkeypatch.setattr(K, "_on_device", on_device)
        if streams:   # stream specs resolve to themselves ("S<handle>"), None/0 to 0
            fake = lambda s: f"S{s}" if s else 0  # noqa: E731
            monkeypatch.setattr(K, "_resolve", fake, raising=False)
            monkeypatch.setattr(K, "_stream_of", lambda info: fake(info.stream))
            monkeypatch.setattr(K, "_handle", lambda s: s or 0, raising=False)

    def of(self, *kinds):
        return [e for e in self.events if e[0] in kinds]


# --- 1. grad_stats with gradients on several devices -----------------------------------------

def test_grad_stats_reduces_each_device_on_its_own(monkeypatch):
    """Each device's gradients are reduced on that device (it was all on the first one's:
    an illegal address on a GPU); the total is the sum over all."""
    log = Log(monkeypatch, streams=False)
    rng = np.random.default_rng(1)
    hs = [rng.standard_normal(n).astype(dt) for n, dt in
          ((100, np.float32), (64, np.float64), (37, np.float32), (5, np.float64))]
    devs = [0, 1, 0, 1]
    grads = [FakeCupy(h, d) for h, d in zip(hs, devs)]
    ss, finite = lowp.grad_stats(grads, clip_value=0.5)
    want = sum(float(np.sum(np.clip(h.astype(np.float64), -0.5, 0.5) ** 2)) for h in hs)
    assert finite is True
    assert ss == pytest.approx(want, rel=1e-6)
    launches = log.of("launch")
    assert sorted((d, n) for _, name, _, d, n in launches if name.startswith("sumsq_f")) == \
        [(0, 37), (0, 100), (1, 5), (1, 64)]
    assert sorted(d for _, name, _, d, _ in launches if name == "sumsq_total") == [0, 1]


# --- 2. streams ---------------------------------------------------------------------------------

def _adam_named(n, streams, kind=CAIArray):
    rng = np.random.default_rng(2)
    hs = [rng.standard_normal(n), rng.standard_normal(n), np.zeros(n), np.zeros(n)]
    return hs, [kind(h, s) for h, s in zip(hs, streams)]


def test_launch_waits_for_the_other_arrays_streams(monkeypatch):
    """The kernel goes on the parameter's stream after the work queued on the gradient's
    (an event), and the gradient's stream then waits for the kernel."""
    log = Log(monkeypatch)
    hs, arrs = _adam_named(50, [5, 7, 5, None])
    want = [h.copy() for h in hs]
    F.adam_(*want, backend="numba", **ADAM)
    F.adam_(*arrs, backend="cuda", **ADAM)
    assert log.of("record", "wait", "launch") == [
        ("record", "S7"), ("wait", "S5"), ("launch", "adam", "S5", None, 50),
        ("record", "S5"), ("wait", "S7")]
    np.testing.assert_array_equal(hs[0], want[0])
    # raw arrays (the path of fastadam.torch) too; arrays on one stream: nothing extra
    log.events.clear()
    kname, scal = _adam_scalars(1)
    cuda_backend.run(kname, [CAIArray(h, s) for h, s in zip(hs, [9, 9, 11, 9])], scal)
    cuda_backend.run(kname, [CAIArray(h, 9) for h in hs], scal)
    assert log.of("record", "wait", "launch") == [
        ("record", "S11"), ("wait", "S9"), ("launch", "adam", "S9", None, 50),
        ("record", "S9"), ("wait", "S11"), ("launch", "adam", "S9", None, 50)]


def test_lowp_and_sparse_launches_wait_for_other_streams(monkeypatch):
    log = Log(monkeypatch)
    n = 40
    st = lowp.new_state("bfloat16", n)
    p, g = np.linspace(-1, 1, n).astype(np.float32), np.ones(n, np.float32)
    arrs = [CAIArray(p, 3), CAIArray(g, 4), CAIArray(st["exp_avg"], 3),
            CAIArray(st["exp_avg_sq"], 6)]
    F.adam_(*arrs, state_dtype="bfloat16", backend="cuda", **dict(ADAM, amsgrad=False))
    ev = log.of("record", "wait", "launch")
    assert ev[:4] == [("record", "S4"), ("wait", "S3"), ("record", "S6"), ("wait", "S3")]
    assert ev[4][:3] == ("launch", "adam_bf16", "S3")
    assert ev[5:] == [("record", "S3"), ("wait", "S4"), ("record", "S3"), ("wait", "S6")]
    log.events.clear()
    ss, _ = lowp.grad_stats([CAIArray(g, 4), CAIArray(g.copy(), 8)])
    assert ss == pytest.approx(2.0 * n)
    ev = log.of("record", "wait", "launch")
    assert ev[:2] == [("record", "S8"), ("wait", "S4")]
    assert {e[2] for e in ev if e[0] == "launch"} == {"S4"}
    assert ev[-2:] == [("record", "S4"), ("wait", "S8")]
    log.events.clear()
    table, vals = np.zeros((6, 3)), np.ones((2, 3))
    F.sparse_sgd_(CAIArray(table, 12), np.array([1, 4]), CAIArray(vals, 13), lr=0.5,
                  backend="cuda")
    ev = log.of("record", "wait", "launch")
    assert [e[:3] for e in ev] == [("record", "S13"), ("wait", "S12"),
                                   ("launch", "sparse_sgd", "S12"), ("record", "S12"),
                                   ("wait", "S13")]
    np.testing.assert_array_equal(table[[1, 4]], -0.5)


def test_numba_arrays_own_streams_are_waited_for(monkeypatch):
    """Raw numba device arrays given to run(): the first's stream, after the others'."""
    from numba import cuda
    log = Log(monkeypatch)
    monkeypatch.setattr(K, "_resolve", lambda s: (s[1] or 0) if s else 0)
    hs, _ = _adam_named(30, [None] * 4)
    want = [h.copy() for h in hs]
    F.adam_(*want, backend="numba", **ADAM)
    d = [cuda.to_device(h).bind(s) for h, s in zip(hs, ["A", "B", "A", 0])]
    kname, scal = _adam_scalars(1)
    cuda_backend.run(kname, d, scal)
    assert log.of("record", "wait", "launch") == [
        ("record", "B"), ("wait", "A"), ("record", 0), ("wait", "A"),
        ("launch", "adam", "A", None, 30), ("record", "A"), ("wait", "B"), ("record", "A"),
        ("wait", 0)]
    np.testing.assert_array_equal(d[0].copy_to_host(), want[0])


def test_cupy_stream_is_the_current_stream_of_the_arrays_device(monkeypatch):
    seen = []

    def get_current_stream(device_id=-1):
        seen.append(device_id)
        return types.SimpleNamespace(ptr=0xC0FFEE)

    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(get_current_stream=get_current_stream)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(K, "SIMULATOR", False)
    monkeypatch.setattr(K, "_external", lambda h: ("external", h))
    assert K._resolve(("cupy", 3)) == ("external", 0xC0FFEE)
    assert seen == [3]          # not the current device's stream
    # an old CuPy (no device argument): asked with the array's device current
    current = []

    class Device:
        def __init__(self, d):
            self.d = d

        def __enter__(self):
            current.append(self.d)

        def __exit__(self, *exc):
            current.pop()

    def old_get_current_stream():
        seen.append(current[-1] if current else "current device")
        return types.SimpleNamespace(ptr=0xBEEF)

    fake.cuda = types.SimpleNamespace(get_current_stream=old_get_current_stream, Device=Device)
    assert K._resolve(("cupy", 2)) == ("external", 0xBEEF)
    assert seen == [3, 2]


def test_streams_dedupe_and_skip_unordered_arrays(monkeypatch):
    monkeypatch.setattr(K, "_resolve", lambda s: s)
    monkeypatch.setattr(K, "_handle", lambda s: s or 0)
    assert K._streams([5, 5, None, 5]) == (5, ())
    assert K._streams([5, 7, 7, None, 0]) == (5, (7, 0))   # the default stream counts
    assert K._streams([None, 7]) == (None, (7,))


# --- 3. bf16 moments as torch tensors ----------------------------------------------------------

@pytest.mark.parametrize("mdt", ["bfloat16", "int16", "uint16"])
def test_torch_bf16_moments_equal_cpu(fake_torch, mdt):
    """Moments given as torch bfloat16 tensors (or int16 / uint16 views of their bits)
    were refused ('expected uint16'): they are the moments' bits."""
    n = 70
    rng = np.random.default_rng(3)
    p, m, v = rng.standard_normal(n).astype(np.float32), np.zeros(n, np.uint16), \
        np.zeros(n, np.uint16)
    hp, hm, hv = p.copy(), m.copy(), v.copy()
    tdt = getattr(torch, mdt)
    mt = FakeTensor(m.view(np.int16) if mdt == "int16" else m, tdt)
    vt = FakeTensor(v.view(np.int16) if mdt == "int16" else v, tdt)
    for step in (1, 2):
        g = rng.standard_normal(n).astype(np.float32)
        hpp = dict(ADAM, step=step)
        F.adam_(hp, g, hm, hv, state_dtype="bfloat16", backend="numba", **hpp)
        F.adam_(FakeTensor(p), FakeTensor(g), mt, vt, state_dtype="bfloat16", backend="cuda",
                **hpp)
    np.testing.assert_array_equal(p.view(np.uint32), hp.view(np.uint32))
    np.testing.assert_array_equal(m, hm)
    np.testing.assert_array_equal(v, hv)
    assert (hm != 0).any() and (hv != 0).any()


def test_torch_float16_moments_are_refused(fake_torch):
    n = 8
    p, g = np.ones(n, np.float32), np.ones(n, np.float32)
    m, v = np.zeros(n, np.float16), np.zeros(n, np.float16)
    with pytest.raises(TypeError, match=r"exp_avg has dtype float16; expected uint16 "
                                        r"\(bfloat16 bits\)"):
        F.adam_(FakeTensor(p), FakeTensor(g), FakeTensor(m), FakeTensor(v),
                state_dtype="bfloat16", backend="cuda", **ADAM)
    assert (p == 1).all()


# --- 4. numba-cuda's low-occupancy warning --------------------------------------------------

def _perf_warning_classes():
    """NumbaPerformanceWarning of numba's built-in CUDA target and, where installed, of
    numba-cuda (a class of its own)."""
    import importlib
    out = []
    for mod in ("numba.core.errors", "numba.cuda.core.errors"):
        try:
            out.append(importlib.import_module(mod).NumbaPerformanceWarning)
        except ImportError:
            pass
    return out


class _WarningKernel:
    """numba-cuda's dispatcher, as far as the warning goes: making the launch
    configuration of a grid under 128 blocks warns (``category``)."""

    def __init__(self, category):
        self.category = category
        self.configs, self.calls = 0, []

    def __getitem__(self, cfg):
        self.configs += 1
        if cfg[0] < 128:
            warnings.warn(self.category(
                f"Grid size {cfg[0]} will likely result in GPU under-utilization due to "
                "low occupancy."))
        return lambda *args: self.calls.append((cfg, args))


@pytest.mark.parametrize("category", _perf_warning_classes(),
                         ids=lambda c: c.__module__.split(".")[1])
def test_fastadams_launches_do_not_warn_under_error_filters(monkeypatch, category):
    NumbaPerformanceWarning = category
    monkeypatch.setattr(K, "SIMULATOR", False)
    monkeypatch.setattr(K, "_configs", {}, raising=False)
    k = _WarningKernel(category)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        K.launch(k, 3, 256, 0, (1, 2))
        K.launch(k, 3, 256, 0, (3,))
    assert k.calls == [((3, 256, 0), (1, 2)), ((3, 256, 0), (3,))]
    assert k.configs == 1                       # the configuration is kept
    with pytest.warns(NumbaPerformanceWarning):  # a user's own launch still warns
        k[2, 32, 0]


# --- 5. fresh tensors each step: cached views ------------------------------------------------

def test_fresh_slices_and_gradients_reuse_cached_views(fake_torch):
    """fastadam.torch passes fresh slices of its flat buffers, and fresh gradient
    tensors, every step: their views are found by the memory they describe (the cache
    keyed by object ids never hit: 4 interface reads and view constructions a launch)."""
    n, lo, hi = 300, 100, 250
    rng = np.random.default_rng(4)
    flat = {k: np.zeros(n) for k in ("p", "m", "v")}
    flat["p"][:] = rng.standard_normal(n)
    bufs = {k: FakeTensor(a) for k, a in flat.items()}
    ref = {k: a[lo:hi].copy() for k, a in flat.items()}
    gmem = [rng.standard_normal(hi - lo) for _ in range(2)]
    reads = []
    for step, gm in enumerate([gmem[0], gmem[0], gmem[1], gmem[0]], start=1):
        kname, scal = _adam_scalars(step)
        before = FakeTensor.reads
        cuda_backend.run(kname, (bufs["p"][lo:hi], FakeTensor(gm), bufs["m"][lo:hi],
                                 bufs["v"][lo:hi]), scal)
        reads.append(FakeTensor.reads - before)
        F.adam_(ref["p"], gm, ref["m"], ref["v"], backend="numba", **dict(ADAM, step=step))
    assert reads == [4, 0, 1, 0]
    for k in ref:
        np.testing.assert_array_equal(flat[k][lo:hi], ref[k])
    assert (flat["p"][:lo] == bufs["p"].x[:lo]).all()


def test_cached_views_check_what_they_are_given(fake_torch):
    kname, scal = _adam_scalars(1)
    a = [FakeTensor(np.zeros(10)) for _ in range(4)]
    cuda_backend.run(kname, a, scal)
    with pytest.raises(ValueError, match=r"arrays\[2\] has 9 elements"):
        cuda_backend.run(kname, a[:2] + [FakeTensor(np.zeros(9)), a[3]], scal)
    with pytest.raises(TypeError, match=r"arrays\[1\] must have dtype float32 or float64"):
        cuda_backend.run(kname, [a[0], FakeTensor(np.zeros(10, np.float16))] + a[2:], scal)
    with pytest.raises(ValueError, match=r"arrays\[3\] is on device 1, but arrays\[0\] is on "
                                         r"device 0"):
        cuda_backend.run(kname, a[:3] + [FakeTensor(np.zeros(10), index=1)], scal)
    with pytest.raises(ValueError, match=r"arrays\[0\] is not C-contiguous"):
        cuda_backend.run(kname, [FakeTensor(np.zeros(20))[::2]] + a[1:], scal)


# --- 6. a deterministic global gradient norm ----------------------------------------------------

class _ShuffledBlocks:
    """numpy for numba's simulator, whose ``ndindex`` runs a grid's blocks (and a block's
    threads) in a random order, as a GPU may complete them."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def __getattr__(self, k):
        return getattr(np, k)

    def ndindex(self, *shape):
        pts = list(np.ndindex(*shape))
        self.rng.shuffle(pts)
        return iter(pts)


def test_grad_norm_does_not_depend_on_block_completion_order(monkeypatch):
    """Per-block partial sums were added atomically in completion order: the norm could
    change in its last bits from run to run.  Now the same bits whatever the order."""
    from numba.cuda.simulator import kernel as simkernel
    monkeypatch.setattr(K, "MAX_BLOCKS", 4)
    rng = np.random.default_rng(6)
    grads = [(rng.standard_normal(n) * np.exp(rng.uniform(-12, 12, n))).astype(np.float32)
             for n in (400, 333)]
    got = set()
    for seed in range(6):
        monkeypatch.setattr(simkernel, "np", _ShuffledBlocks(seed))
        ss, finite = lowp.grad_stats([CAIArray(g) for g in grads])
        got.add(ss)
    assert len(got) == 1, got
    want = math.fsum(float(x) ** 2 for g in grads for x in g.astype(np.float64))
    assert got.pop() == pytest.approx(want, rel=1e-12)


# --- 9. other producers of __cuda_array_interface__ -------------------------------------------

def test_other_producers_take_the_device_of_their_pointer(monkeypatch):
    """An array known only by its interface ran on whatever device was current: its
    device is now the one its pointer is in (cuPointerGetAttribute), and mixed devices
    are refused before anything is written."""
    hs, arrs = _adam_named(20, [None] * 4)
    where = {_ptr(h): d for h, d in zip(hs, [0, 1, 0, 0])}

    def ptr_device(ptr):
        if ptr not in where:
            raise RuntimeError("CUDA_ERROR_INVALID_VALUE")
        return where[ptr]

    monkeypatch.setattr(K, "_ptr_device", ptr_device, raising=False)
    before = hs[0].copy()
    with pytest.raises(ValueError, match="grad is on device 1, but param is on device 0"):
        F.adam_(*arrs, backend="cuda", **ADAM)
    kname, scal = _adam_scalars(1)
    with pytest.raises(ValueError, match=r"arrays\[1\] is on device 1"):
        cuda_backend.run(kname, arrs, scal)
    stray = CAIArray(np.zeros(20))
    with pytest.raises(TypeError, match=r"exp_avg: the CUDA driver does not know the memory"):
        F.adam_(arrs[0], arrs[2], stray, arrs[3], backend="cuda", **ADAM)
    np.testing.assert_array_equal(hs[0], before)
    where[_ptr(hs[1])] = 0
    log = Log(monkeypatch, streams=False)
    F.adam_(*arrs, backend="cuda", **ADAM)
    assert [e[3] for e in log.of("launch")] == [0]      # launched on the pointer's device
    assert not (hs[0] == before).all()
