"""The cuda backend against the numba CPU backend, every optimizer and option.

Without a GPU these run under numba's CUDA simulator (tests/conftest.py sets
``NUMBA_ENABLE_CUDASIM=1`` unless ``FASTADAM_REAL_GPU=1``), with a small block
size and grid so that several blocks and a grid-stride remainder run.  Device
arrays come in two kinds: numba device arrays (``cuda.to_device``) and plain
objects exposing only ``__cuda_array_interface__`` (as CuPy arrays and torch
tensors do).  Under the simulator the latter point at host memory, so the tests
can see that the step writes the caller's memory in place.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import skips

import fastadam
import fastadam.functional as F
from cases import CASES, DEFAULT_CASES, functional_step, make_state, problem
from fastadam import _backends

cuda_backend = skips.cuda_backend()

from numba import cuda  # noqa: E402

from fastadam.kernels import cuda as K  # noqa: E402

SIM = K.SIMULATOR
requires_gpu = pytest.mark.skipif(SIM or not cuda.is_available(), reason="needs a real CUDA GPU")

BLOCK, BLOCKS = 16, 3          # 48 threads: n=300 runs 6 full strides and a remainder of 12
SIZES = (0, 1, 37, 300)


@pytest.fixture(autouse=True)
def small_grid(monkeypatch):
    monkeypatch.setattr(K, "BLOCK_SIZE", BLOCK)
    monkeypatch.setattr(K, "MAX_BLOCKS", BLOCKS)


# --- device arrays of two kinds -----------------------------------------------------------

class CAIArray:
    """A device array known only by its ``__cuda_array_interface__`` (version 3).

    Under the simulator it describes a host NumPy array (``self.host``); on a real GPU
    it re-exports a numba device array's interface.
    """

    def __init__(self, x, readonly=False, view=None):
        if SIM:
            self.host = x if view is None else view
            ai = self.host.__array_interface__
            ptr, strides = ai["data"][0], ai["strides"]
        else:  # pragma: no cover - real GPU
            self.dev = cuda.to_device(x) if view is None else view
            cai = self.dev.__cuda_array_interface__
            ptr, strides = cai["data"][0], cai["strides"]
            self.host = None
        self.shape = x.shape if view is None else view.shape
        self.dtype = x.dtype
        self.__cuda_array_interface__ = {
            "shape": tuple(self.shape), "typestr": np.dtype(self.dtype).str,
            "data": (ptr, readonly), "strides": strides, "version": 3, "stream": None}

    def get(self):
        return self.host.copy() if SIM else self.dev.copy_to_host()  # pragma: no branch


def to_dev(x, kind):
    x = np.ascontiguousarray(x)
    if kind == "numba":
        return cuda.to_device(x)
    return CAIArray(x.copy())


def get(d):
    return d.get() if isinstance(d, CAIArray) else d.copy_to_host()


# --- parity with the numba CPU backend ------------------------------------------------------

def _close(a, b, dtype, what=""):
    if dtype == np.float64:
        scale = np.max(np.abs(b)) if b.size else 1.0
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14 * scale, err_msg=what)
    else:
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=what)


def _step_by_step(case, n, dtype, steps, kind, seed=0):
    """From the same state, each cuda step equals the numba step on copies of that state."""
    p, grads = problem(n, dtype, seed=seed, steps=steps)
    st = make_state(case, p)
    dp = to_dev(p, kind)
    dst = {k: to_dev(v, kind) for k, v in st.items()}
    mp = 1.0
    for t, g in enumerate(grads, start=1):
        hp, hst = get(dp), {k: get(v) for k, v in dst.items()}
        mp_ref = functional_step(case, hp, g, hst, t, "numba", mp)
        mp_new = functional_step(case, dp, to_dev(g, kind), dst, t, "cuda", mp)
        _close(get(dp), hp, dtype, "param")
        for k in dst:
            _close(get(dst[k]), hst[k], dtype, k)
        if case.opt == "nadam":
            assert mp_new == mp_ref
            mp = mp_new


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_every_option_equals_cpu(case, dtype):
    _step_by_step(case, 300, dtype, steps=2, kind="cai")


@pytest.mark.parametrize("case", DEFAULT_CASES, ids=lambda c: c.opt)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("kind", ["numba", "cai"])
def test_every_size_equals_cpu(case, n, kind):
    _step_by_step(case, n, np.float64, steps=2, kind=kind, seed=n)
    _step_by_step(case, n, np.float32, steps=2, kind=kind, seed=n + 1)


def test_twenty_float64_steps_equal_cpu():
    """Errors do not compound: 20 Adam(AMSGrad, AdamW) steps stay within 1e-12."""
    case = next(c for c in CASES if c.opt == "adam" and c.options["amsgrad"]
                and c.options["decoupled_weight_decay"] and c.options["weight_decay"])
    p, grads = problem(300, np.float64, seed=3, steps=20)
    st = make_state(case, p)
    dp, dst = to_dev(p, "numba"), {k: to_dev(v, "numba") for k, v in st.items()}
    for t, g in enumerate(grads, start=1):
        functional_step(case, p, g, st, t, "numba")
        functional_step(case, dp, to_dev(g, "numba"), dst, t, "cuda")
    _close(get(dp), p, np.float64)
    for k in st:
        _close(get(dst[k]), st[k], np.float64, k)


@pytest.mark.parametrize("n,block,blocks", [(1, 4, 1), (5, 4, 1), (17, 4, 2), (64, 8, 8),
                                            (65, 8, 8), (100, 8, 3), (301, 32, 2)])
def test_grid_stride_covers_every_element_once(monkeypatch, n, block, blocks):
    """SGD with lr=1 from p=0, g=1 gives -1 exactly where an element ran once."""
    monkeypatch.setattr(K, "BLOCK_SIZE", block)
    monkeypatch.setattr(K, "MAX_BLOCKS", blocks)
    want_blocks = min(-(-n // block), blocks)
    assert K.grid_size(n) == (want_blocks, block)
    p = CAIArray(np.zeros(n, np.float32))
    g = CAIArray(np.ones(n, np.float32))
    F.sgd_(p, g, lr=1.0)
    np.testing.assert_array_equal(get(p), np.full(n, -1.0, np.float32))


def test_grid_size_defaults():
    assert K.grid_size(0) == (1, BLOCK)
    assert K.grid_size(10**6) == (BLOCKS, BLOCK)


# --- in place, zero copy, auto ----------------------------------------------------------------

def test_auto_picks_cuda_for_device_arrays():
    d = to_dev(np.zeros(4), "cai")
    # the registry's cuda backend now (another test may have reset the registry since
    # this module's import made ``cuda_backend``)
    current = _backends.get_backend("cuda")
    assert current.name == "cuda"
    assert _backends.resolve("auto", d) is current
    # numba device arrays too (the simulator's expose no __cuda_array_interface__)
    nd = to_dev(np.zeros(4), "numba")
    assert _backends.is_device_array(nd) and _backends.resolve("auto", nd) is current
    assert not _backends.is_device_array(np.zeros(4))
    assert cuda_backend.device
    assert "cuda" in fastadam.available_backends()


@pytest.mark.skipif(not SIM, reason="host-memory view: simulator only")
def test_updates_the_callers_memory_in_place():
    rng = np.random.default_rng(0)
    p, g = rng.standard_normal((7, 5, 3)), rng.standard_normal((7, 5, 3))
    m, v = np.zeros_like(p), np.zeros_like(p)
    hp, hm, hv = p.copy(), m.copy(), v.copy()
    kw = dict(step=1, lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8)
    F.adam_(CAIArray(p), CAIArray(g), CAIArray(m), CAIArray(v), **kw)  # backend="auto"
    F.adam_(hp, g, hm, hv, backend="numba", **kw)
    np.testing.assert_allclose(p, hp, rtol=1e-12)   # the arrays themselves changed
    np.testing.assert_allclose(m, hm, rtol=1e-12)
    np.testing.assert_allclose(v, hv, rtol=1e-12)


def test_nd_device_arrays():
    rng = np.random.default_rng(1)
    p, g = rng.standard_normal((6, 50)), rng.standard_normal((6, 50))
    sq = np.zeros_like(p)
    dp, dg, dsq = to_dev(p, "numba"), to_dev(g, "numba"), to_dev(sq, "numba")
    F.rmsprop_(dp, dg, dsq, lr=1e-2, alpha=0.99, eps=1e-8, backend="cuda")
    F.rmsprop_(p, g, sq, lr=1e-2, alpha=0.99, eps=1e-8, backend="numba")
    assert dp.shape == (6, 50)
    np.testing.assert_allclose(get(dp), p, rtol=1e-12)
    np.testing.assert_allclose(get(dsq), sq, rtol=1e-12)


def test_run_accepts_raw_device_arrays():
    """``run`` (as fastadam.torch calls it) takes unflattened device arrays directly."""
    from fastadam import _scalars
    rng = np.random.default_rng(2)
    p, g = rng.standard_normal((10, 30)).astype(np.float32), \
        rng.standard_normal((10, 30)).astype(np.float32)
    m, v = np.zeros_like(p), np.zeros_like(p)
    devs = [to_dev(x, "cai") for x in (p, g, m, v)]
    name, scal = _scalars.adam(np.dtype(np.float32), step=1, lr=1e-3, beta1=0.9, beta2=0.999,
                               eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False,
                               amsgrad=False, maximize=False)
    cuda_backend.run(name, devs, scal)
    F.adam_(p, g, m, v, step=1, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, backend="numba")
    np.testing.assert_allclose(get(devs[0]), p, rtol=1e-6)
    np.testing.assert_allclose(get(devs[3]), v, rtol=1e-6)
    cuda_backend.run(name, [to_dev(np.zeros(0, np.float32), "cai")] * 4, scal)  # empty: no-op


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the simulator computes in NumPy
def test_nan_and_inf_propagate():
    p = np.ones(64, dtype=np.float32)
    g = np.full(64, 0.5, dtype=np.float32)
    g[3], g[10] = np.nan, np.inf
    d = [to_dev(x, "numba") for x in (p, g, np.zeros_like(p), np.zeros_like(p),
                                      np.zeros_like(p))]
    F.adam_(d[0], d[1], d[2], d[3], step=1, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
            amsgrad=True, max_exp_avg_sq=d[4], backend="cuda")
    p, m, v, vmax = (get(x) for x in (d[0], d[2], d[3], d[4]))
    assert np.isnan(p[3]) and np.isnan(m[3]) and np.isnan(vmax[3])
    assert np.isinf(v[10]) and np.isinf(vmax[10])
    mask = np.ones(64, bool)
    mask[[3, 10]] = False
    assert np.all(np.isfinite(p[mask]))


# --- bad input is refused, and nothing is written -----------------------------------------------

def _adam_arrays(n=40, dtype=np.float64, kind="cai"):
    rng = np.random.default_rng(5)
    return [to_dev(rng.standard_normal(n).astype(dtype), kind) for _ in range(4)]


def _snap(arrays):
    return [get(a) if not isinstance(a, np.ndarray) else a.copy() for a in arrays]


def _assert_unchanged(arrays, before):
    for a, b in zip(arrays, before):
        np.testing.assert_array_equal(get(a) if not isinstance(a, np.ndarray) else a, b)


ADAM = dict(step=1, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8)


@pytest.mark.parametrize("backend", ["auto", "cuda"])
@pytest.mark.parametrize("host_at", [1, 2, 3])
def test_host_array_mixed_in_is_refused(backend, host_at):
    arrays = _adam_arrays()
    arrays[host_at] = np.zeros(40)
    before = _snap(arrays)
    name = ["param", "grad", "exp_avg", "exp_avg_sq"][host_at]
    with pytest.raises(TypeError, match=rf"{name} is a host array \(numpy.ndarray\) but param "
                                        r"is a device array"):
        F.adam_(*arrays, backend=backend, **ADAM)
    _assert_unchanged(arrays, before)


def test_host_param_with_device_grad_is_refused_by_auto():
    arrays = _adam_arrays()
    arrays[0] = np.zeros(40)
    before = _snap(arrays)
    with pytest.raises(TypeError, match="grad"):
        F.adam_(*arrays, **ADAM)
    _assert_unchanged(arrays, before)


def test_host_arrays_on_cuda_backend_are_refused():
    arrays = [np.zeros(8) for _ in range(4)]
    with pytest.raises(TypeError, match=r"param is a host array .*backend='numba'"):
        F.adam_(*arrays, backend="cuda", **ADAM)


def test_non_contiguous_is_refused():
    arrays = _adam_arrays()
    base = np.zeros(80)
    arrays[2] = CAIArray(base, view=base[::2]) if SIM else \
        CAIArray(np.zeros(40), view=cuda.to_device(base)[::2])
    before = _snap(arrays)
    with pytest.raises(ValueError, match="exp_avg is not C-contiguous"):
        F.adam_(*arrays, backend="cuda", **ADAM)
    _assert_unchanged(arrays, before)


def test_non_contiguous_numba_array_is_refused():
    arrays = _adam_arrays(kind="numba")
    arrays[1] = cuda.to_device(np.zeros((40, 2)))[:, 0]
    before = _snap(arrays)
    with pytest.raises(ValueError, match="grad is not C-contiguous"):
        F.adam_(*arrays, backend="cuda", **ADAM)
    _assert_unchanged(arrays, before)


def test_fortran_order_is_refused():
    arrays = [to_dev(np.zeros((4, 5)), "numba") for _ in range(4)]
    arrays[0] = cuda.to_device(np.asfortranarray(np.ones((4, 5))))
    before = _snap(arrays)
    with pytest.raises(ValueError, match="param is not C-contiguous"):
        F.adam_(*arrays, backend="cuda", **ADAM)
    _assert_unchanged(arrays, before)


def test_dtype_mismatch_is_refused():
    arrays = _adam_arrays()
    arrays[3] = to_dev(np.zeros(40, np.float32), "cai")
    before = _snap(arrays)
    with pytest.raises(TypeError, match="exp_avg_sq has dtype float32, but param has float64"):
        F.adam_(*arrays, backend="cuda", **ADAM)
    _assert_unchanged(arrays, before)


def test_non_float_dtype_is_refused():
    arrays = [to_dev(np.zeros(8, np.int32), "cai") for _ in range(4)]
    with pytest.raises(TypeError, match="param must have dtype float32 or float64, got int32"):
        F.adam_(*arrays, backend="cuda", **ADAM)


def test_shape_mismatch_is_refused():
    arrays = _adam_arrays()
    arrays[1] = to_dev(np.zeros(41), "numba")
    before = _snap(arrays)
    with pytest.raises(ValueError, match=r"grad has shape \(41,\), but param has \(40,\)"):
        F.adam_(*arrays, backend="cuda", **ADAM)
    _assert_unchanged(arrays, before)


@pytest.mark.skipif(not SIM, reason="builds overlapping views of host memory")
def test_overlap_is_refused():
    buf = np.arange(100.0)
    p, g = np.ones(50), np.ones(50)
    arrays = [CAIArray(p), CAIArray(g), CAIArray(buf, view=buf[:50]),
              CAIArray(buf, view=buf[30:80])]
    before = _snap(arrays)
    with pytest.raises(ValueError, match="exp_avg and exp_avg_sq overlap"):
        F.adam_(*arrays, backend="cuda", **ADAM)
    _assert_unchanged(arrays, before)
    same = CAIArray(np.zeros(50))
    with pytest.raises(ValueError, match="overlap"):
        F.adam_(CAIArray(p), CAIArray(g), same, same, backend="cuda", **ADAM)
    # the gradient may not alias an output either (it is read while they are written)
    with pytest.raises(ValueError, match="param and grad overlap"):
        F.sgd_(same, same, lr=0.1, backend="cuda")


def test_read_only_output_is_refused():
    arrays = _adam_arrays()
    x = np.zeros(40)
    arrays[2] = CAIArray(x, readonly=True)
    before = _snap(arrays)
    with pytest.raises(ValueError, match="exp_avg is read-only"):
        F.adam_(*arrays, backend="cuda", **ADAM)
    _assert_unchanged(arrays, before)


def test_bad_hyperparameter_writes_nothing():
    arrays = _adam_arrays()
    before = _snap(arrays)
    with pytest.raises(ValueError, match="beta"):
        F.adam_(*arrays, step=1, lr=1e-3, beta1=1.5, beta2=0.999, eps=1e-8, backend="cuda")
    _assert_unchanged(arrays, before)


# --- streams ------------------------------------------------------------------------------

def test_stream_choice(monkeypatch):
    """The launch stream follows the producer: interface entry, numba array's own stream."""
    monkeypatch.setattr(K, "SIMULATOR", False)
    monkeypatch.setattr(K, "_external", lambda h: ("external", h))
    info = K._Info(None, (3,), np.dtype("f4"), None, 0, False, None, None)
    assert K._stream_of(info) == 0                       # no stream: default stream
    info.stream = 0x1234
    assert K._stream_of(info) == ("external", 0x1234)     # CAI v3 "stream" entry
    info.stream = 1
    assert K._stream_of(info) == ("external", 1)          # legacy default stream handle
    info.stream = ("numba", "S")
    assert K._stream_of(info) == "S"                      # numba array's own stream
    info.stream = ("numba", 0)
    assert K._stream_of(info) == 0


# --- loading --------------------------------------------------------------------------------

def _py(code, **env):
    e = dict(os.environ)
    e.update(env)
    e["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(__file__)),
                                       e.get("PYTHONPATH", "")])
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, env=e)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_import_does_not_load_numba_cuda():
    out = _py("import sys, numpy as np, fastadam, fastadam.functional as F\n"
              "p = np.ones(4); F.sgd_(p, p.copy(), lr=0.1)\n"
              "print('numba.cuda' in sys.modules, 'fastadam.kernels.cuda' in sys.modules)")
    assert out.split() == ["False", "False"]


def test_unavailable_without_gpu_or_simulator_says_why():
    out = _py("from numba import cuda\n"
              "from fastadam import _backends\n"
              "if cuda.is_available():\n"
              "    print('GPU')\n"
              "else:\n"
              "    try:\n"
              "        _backends.get_backend('cuda')\n"
              "    except _backends.BackendUnavailableError as e:\n"
              "        print('ERR', e)\n",
              NUMBA_ENABLE_CUDASIM="0")
    if out.strip() == "GPU":  # pragma: no cover - a real GPU is present
        pytest.skip("a real GPU is present")
    assert out.startswith("ERR the cuda backend is not available: no CUDA GPU"), out
    assert "NUMBA_ENABLE_CUDASIM" in out


# --- real GPU only ----------------------------------------------------------------------------

@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_torch_cuda_tensors_match_torch_optim(dtype, amsgrad, wd):  # pragma: no cover
    """torch CUDA tensors (the param requires grad), zero copy, against torch.optim.Adam."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA")
    dt = getattr(torch, dtype)
    gen = torch.Generator(device="cuda").manual_seed(0)
    w = torch.randn(1000, 3, device="cuda", dtype=dt, generator=gen, requires_grad=True)
    ref = w.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([ref], lr=1e-2, weight_decay=wd, amsgrad=amsgrad, foreach=False)
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    vmax = torch.zeros_like(w) if amsgrad else None
    for t in range(1, 6):
        g = torch.randn(w.shape, device="cuda", dtype=dt, generator=gen)
        ref.grad = g.clone()
        opt.step()
        F.adam_(w, g, m, v, step=t, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8,
                weight_decay=wd, amsgrad=amsgrad, max_exp_avg_sq=vmax, backend="cuda")
    assert _backends.resolve("auto", m).name == "cuda"
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == "float32" else dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(w.detach(), ref.detach(), **tol)
    torch.testing.assert_close(m, opt.state[ref]["exp_avg"], **tol)


@pytest.mark.gpu
@requires_gpu
def test_torch_current_stream_is_used():  # pragma: no cover
    """Work issued on a side torch stream is ordered after earlier work on that stream."""
    torch = pytest.importorskip("torch")
    s = torch.cuda.Stream()
    n = 1 << 24
    with torch.cuda.stream(s):
        p = torch.zeros(n, device="cuda")
        g = torch.ones(n, device="cuda")
        torch.cuda._sleep(50_000_000)          # keep the stream busy
        g.mul_(2.0)                             # queued after the sleep, on s
        F.sgd_(p, g, lr=1.0)                    # must see g == 2
    s.synchronize()
    assert torch.all(p == -2.0)


@pytest.mark.gpu
@pytest.mark.slow
@requires_gpu
def test_more_than_2_31_elements(monkeypatch):  # pragma: no cover
    """64-bit indices: the last element of a 2**31 + 5 element buffer is updated."""
    free, _ = cuda.current_context().get_memory_info()
    n = (1 << 31) + 5
    if free < 2 * n * 4 + (1 << 30):
        pytest.skip("not enough GPU memory")
    monkeypatch.setattr(K, "BLOCK_SIZE", 256)
    monkeypatch.setattr(K, "MAX_BLOCKS", 0)
    p = cuda.device_array(n, np.float32)
    g = cuda.device_array(n, np.float32)
    p[:] = 0.0
    g[:] = 1.0
    F.sgd_(p, g, lr=1.0)
    cuda.synchronize()
    assert p[n - 1] == -1.0 and p[(1 << 31) - 1] == -1.0 and p[0] == -1.0
    del p, g


# --- the GPU benchmark script ---------------------------------------------------------------

def _load_benchmark():
    import importlib.util
    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks", "gpu_adam.py")
    spec = importlib.util.spec_from_file_location("gpu_adam", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_benchmark_arguments():
    b = _load_benchmark()
    a = b.parse_args([])
    assert a.sizes == [16 << 20, 64 << 20, 256 << 20]
    assert b.parse_args(["--sizes", "1K, 3, 0.5M"]).sizes == [1024, 3, 1 << 19]
    with pytest.raises(SystemExit):
        b.parse_args(["--sizes", "0"])
    with pytest.raises(SystemExit):
        b.parse_args(["--rounds", "0"])


def test_gpu_benchmark_refuses_to_run_without_a_gpu(capsys):
    b = _load_benchmark()
    try:
        import torch
        if torch.cuda.is_available():  # pragma: no cover
            pytest.skip("a GPU is present: the benchmark would run")
    except ImportError:
        pass
    assert b.main(["--sizes", "1K"]) == 2
    assert "gpu_adam: needs" in capsys.readouterr().err


# --- the torch path, with a stand-in tensor (torch CUDA tensors need a GPU) -----------------

class FakeCudaTensor:
    """Behaves as a torch CUDA tensor does towards fastadam, over host memory."""

    is_cuda = True

    def __init__(self, x, requires_grad=False, index=0):
        import torch
        self.x, self.requires_grad = x, requires_grad
        self.dtype = {np.float32: torch.float32, np.float64: torch.float64}.get(x.dtype.type,
                                                                              torch.float16)
        self.device = type("dev", (), {"index": index})()

    def detach(self):
        return FakeCudaTensor(self.x, False, self.device.index)

    @property
    def __cuda_array_interface__(self):
        if self.requires_grad:   # as torch does
            raise RuntimeError("Can't get __cuda_array_interface__ on Variable that requires grad")
        return {"shape": self.x.shape, "typestr": self.x.dtype.str, "strides": None,
                "data": (self.x.__array_interface__["data"][0], False), "version": 2}


@pytest.mark.skipif(not SIM, reason="host-memory stand-in: simulator only")
def test_torch_like_tensors_requiring_grad(monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.setattr(K, "_torch_tensor",
                        lambda a: a if isinstance(a, FakeCudaTensor) else None)
    rng = np.random.default_rng(9)
    p, g = rng.standard_normal(100), rng.standard_normal(100)
    m, v = np.zeros(100), np.zeros(100)
    hp, hm, hv = p.copy(), m.copy(), v.copy()
    ts = [FakeCudaTensor(p, requires_grad=True), FakeCudaTensor(g), FakeCudaTensor(m),
          FakeCudaTensor(v)]
    F.adam_(*ts, backend="cuda", **ADAM)
    F.adam_(hp, g, hm, hv, backend="numba", **ADAM)
    np.testing.assert_allclose(p, hp, rtol=1e-12)
    np.testing.assert_allclose(v, hv, rtol=1e-12)
    info = K._info("param", ts[0])
    assert info.stream == ("torch", 0) and info.device == 0
    ts[3] = FakeCudaTensor(np.zeros(100), index=1)
    with pytest.raises(ValueError, match="exp_avg_sq is on device 1, but param is on device 0"):
        F.adam_(*ts, backend="cuda", **ADAM)
    ts[3] = FakeCudaTensor(np.zeros(100, np.float16))
    with pytest.raises(TypeError, match="exp_avg_sq must have dtype float32 or float64, got "
                                        "torch.float16"):
        F.adam_(*ts, backend="cuda", **ADAM)


def test_torch_stream_is_the_current_torch_stream(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(K, "SIMULATOR", False)
    monkeypatch.setattr(K, "_external", lambda h: ("external", h))
    seen = []

    def current_stream(device=None):
        seen.append(device)
        return type("S", (), {"cuda_stream": 0xBEEF})()

    monkeypatch.setattr(torch.cuda, "current_stream", current_stream)
    info = K._Info(None, (3,), np.dtype("f4"), None, 0, False, ("torch", 2), 2)
    assert K._stream_of(info) == ("external", 0xBEEF) and seen == [2]
    monkeypatch.setattr(torch.cuda, "current_stream",
                        lambda device=None: type("S", (), {"cuda_stream": 0})())
    assert K._stream_of(info) == 0          # torch's default stream is the legacy default


def test_run_caches_views_of_raw_arrays_and_notices_moved_memory():
    """Repeated ``run`` calls on the same raw arrays reuse their views, unless the memory moved."""
    from fastadam import _scalars
    K._view_cache.clear()
    name, scal = _scalars.sgd(np.dtype(np.float64), first=True, lr=1.0, momentum=0.0,
                              dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False)
    p, g = CAIArray(np.zeros(50)), CAIArray(np.ones(50))
    cuda_backend.run(name, (p, g), scal)
    cuda_backend.run(name, (p, g), scal)
    assert len(K._view_cache) == 2          # one view per buffer, kept by its memory
    np.testing.assert_array_equal(get(p), np.full(50, -2.0))
    if SIM:  # point p's interface at other memory: the cached view must not be used
        other = np.zeros(50)
        p.host = other
        p.__cuda_array_interface__ = dict(p.__cuda_array_interface__,
                                          data=(other.__array_interface__["data"][0], False))
        cuda_backend.run(name, (p, g), scal)
        np.testing.assert_array_equal(other, np.full(50, -1.0))
    with pytest.raises(ValueError, match=r"arrays\[1\] has 49 elements"):
        cuda_backend.run(name, (CAIArray(np.zeros(50)), CAIArray(np.ones(49))), scal)
    with pytest.raises(TypeError, match=r"arrays\[1\] has dtype float32"):
        cuda_backend.run(name, (CAIArray(np.zeros(50)), CAIArray(np.ones(50, np.float32))),
                         scal)
    base = np.zeros(100)
    with pytest.raises(ValueError, match=r"arrays\[0\] is not C-contiguous"):
        cuda_backend.run(name, (CAIArray(base, view=base[::2]) if SIM else
                                CAIArray(np.zeros(50), view=cuda.to_device(base)[::2]),
                                CAIArray(np.ones(50))), scal)
