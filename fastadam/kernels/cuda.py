"""numba CUDA kernels: one fused, in-place grid-stride loop per optimizer variant.

The per-element math is the rule from :mod:`fastadam.rules` (the same Python
functions the CPU kernels inline), wrapped with ``cuda.jit(device=True)``.
Each kernel reads each of its arrays once and writes each output once per
element, in a grid-stride loop with 64-bit indices (``cuda.grid(1)`` and
``cuda.gridsize(1)`` are int64), so buffers of more than 2**31 elements work.

A step passes the per-step scalars of :mod:`fastadam._scalars` (already cast
to the buffer dtype) as kernel arguments: it needs no host-device
synchronisation and allocates nothing on the device.

Inputs are any C-contiguous arrays exposing ``__cuda_array_interface__``
(numba device arrays, CuPy arrays, PyTorch CUDA tensors), used in place
without a copy.  Work is issued on the caller's stream: for a torch tensor
the current torch stream of its device, for a CuPy array CuPy's current
stream of its device, for a numba device array the array's own stream (else
the default stream), and otherwise the ``stream`` entry of the array
interface.  The launch goes on the first array's stream, after the work
queued on the other arrays' streams (:func:`launch`).  An array of another
producer is on the device that holds its memory (``cuPointerGetAttribute``).

This module is imported only when the ``cuda`` backend is first asked for
(importing :mod:`fastadam` does not import ``numba.cuda``); each kernel is
compiled on its first call for the dtype in hand and cached on disk.

Under numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, set before
``numba.cuda`` is first imported) the same kernels run in Python threads on
host memory: that is how the test suite checks them on machines without a
GPU.  There, a "device array" is a simulator array (``numba.cuda.to_device``)
or any object whose ``__cuda_array_interface__`` points at host memory.

Settings (module attributes, read at each launch; environment variables set
their initial values):

``BLOCK_SIZE`` (``FASTADAM_CUDA_BLOCK_SIZE``, default 256)
    Threads per block.
``MAX_BLOCKS`` (``FASTADAM_CUDA_MAX_BLOCKS``, default 0)
    Upper bound on the grid size; 0 means enough blocks to fill the device
    four times over (``4 * multiprocessors * 2048 // BLOCK_SIZE``).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import types
import warnings

import numpy as np
from numba import config as _nb_config
from numba import cuda

from .. import rules as _rules
from .._validate import FLOAT_DTYPES
from ..rules import adadelta as _adadelta_r
from ..rules import adagrad as _adagrad_r
from ..rules import adam as _adam_r
from ..rules import adamax as _adamax_r
from ..rules import nadam as _nadam_r
from ..rules import rmsprop as _rmsprop_r
from ..rules import sgd as _sgd_r

#: True when numba's CUDA simulator is active (``NUMBA_ENABLE_CUDASIM=1``).
SIMULATOR = bool(_nb_config.ENABLE_CUDASIM)

if not SIMULATOR:   # the rules' fma as cuda.fma (the simulator runs its Python body)
    from ._fma import register_cuda as _register_fma
    _register_fma()

BLOCK_SIZE = int(os.environ.get("FASTADAM_CUDA_BLOCK_SIZE", "256"))
MAX_BLOCKS = int(os.environ.get("FASTADAM_CUDA_MAX_BLOCKS", "0"))

# --- the rules, as device functions ---------------------------------------------------


def _device(f):
    return cuda.jit(device=True)(f)


r_adam = _device(_adam_r.adam)
r_adam_amsgrad = _device(_adam_r.adam_amsgrad)
r_rmsprop = _device(_rmsprop_r.rmsprop)
r_rmsprop_momentum = _device(_rmsprop_r.rmsprop_momentum)
r_rmsprop_centered = _device(_rmsprop_r.rmsprop_centered)
r_rmsprop_centered_momentum = _device(_rmsprop_r.rmsprop_centered_momentum)
r_adagrad = _device(_adagrad_r.adagrad)
r_sgd = _device(_sgd_r.sgd)
r_sgd_momentum = _device(_sgd_r.sgd_momentum)
r_adadelta = _device(_adadelta_r.adadelta)
r_nadam = _device(_nadam_r.nadam)
r_adamax = _device(_adamax_r.adamax)


# --- the loops -------------------------------------------------------------------------
# Grid-stride loops: thread i handles i, i + gridsize, i + 2 * gridsize, ...; both
# are int64, and so is the loop index.  Written out per kernel, as in kernels/cpu.py.

def adam(p, g, m, v, s0, s1, s2, s3, s4, s5, s6, s7, s8):
    for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
        p[i], m[i], v[i] = r_adam(p[i], g[i], m[i], v[i], s0, s1, s2, s3, s4, s5, s6, s7, s8)


def adam_amsgrad(p, g, m, v, vmax, s0, s1, s2, s3, s4, s5, s6, s7, s8):
    for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
        p[i], m[i], v[i], vmax[i] = r_adam_amsgrad(
            p[i], g[i], m[i], v[i], vmax[i], s0, s1, s2, s3, s4, s5, s6, s7, s8)


def rmsprop(p, g, sq, s0, s1, s2, s3, s4, s5):
    for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
        p[i], sq[i] = r_rmsprop(p[i], g[i], sq[i], s0, s1, s2, s3, s4, s5)


def rmsprop_momentum(p, g, sq, buf, s0, s1, s2, s3, s4, s5, s6):
    for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
        p[i], sq[i], buf[i] = r_rmsprop_momentum(
            p[i], g[i], sq[i], buf[i], s0, s1, s2, s3, s4, s5, s6)


def rmsprop_centered(p, g, sq, ga, s0, s1, s2, s3, s4, s5, s6):
    for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
        p[i], sq[i], ga[i] = r_rmsprop_centered(p[i], g[i], sq[i], ga[i], s0, s1, s2, s3, s4, s5,
                                                s6)


def rmsprop_centered_momentum(p, g, sq, ga, buf, s0, s1, s2, s3, s4, s5, s6, s7):
    for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
        p[i], sq[i], ga[i], buf[i] = r_rmsprop_centered_momentum(
            p[i], g[i], sq[i], ga[i], buf[i], s0, s1, s2, s3, s4, s5, s6, s7)


def adagrad(p, g, s, s0, s1, s2, s3):
    for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
        p[i], s[i] = r_adagrad(p[i], g[i], s[i], s0, s1, s2, s3)


def sgd(p, g, s0, s1, s2):
    for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
        p[i] = r_sgd(p[i], g[i], s0, s1, s2)


def sgd_momentum(p, g, buf, s0, s1, s2, s3, s4, first, nesterov):
    for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
        p[i], buf[i] = r_sgd_momentum(p[i], g[i], buf[i], s0, s1, s2, s3, s4, first, nesterov)


def adadelta(p, g, sq, acc, s0, s1, s2, s3, s4, s5):
    for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
        p[i], sq[i], acc[i] = r_adadelta(p[i], g[i], sq[i], acc[i], s0, s1, s2, s3, s4, s5)


def nadam(p, g, m, v, s0, s1, s2, s3, s4, s5, s6, s7, s8, s9):
    for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
        p[i], m[i], v[i] = r_nadam(p[i], g[i], m[i], v[i], s0, s1, s2, s3, s4, s5, s6, s7,
                                   s8, s9)


def adamax(p, g, m, u, s0, s1, s2, s3, s4, s5):
    for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
        p[i], m[i], u[i] = r_adamax(p[i], g[i], m[i], u[i], s0, s1, s2, s3, s4, s5)


KERNEL_NAMES = (
    "adam", "adam_amsgrad", "rmsprop", "rmsprop_momentum", "rmsprop_centered",
    "rmsprop_centered_momentum", "adagrad", "sgd", "sgd_momentum", "adadelta", "nadam",
    "adamax",
)

# numba's cache check sees only this file; the rules are keyed by their hash.
_RULES_HASH = _rules.source_hash(extra="cuda")
_compiled: dict = {}


def jit_kernel(src, suffix: str):
    """The numba CUDA kernel of grid-stride loop ``src`` (a module-level function),
    compiled lazily and cached on disk under the name ``src.__name__ + suffix``: the
    suffix carries the hash of the rules it inlines, which numba's cache check (the
    timestamp of ``src``'s file) does not see.  Also used by :mod:`.cuda_keras`."""
    f = types.FunctionType(src.__code__, src.__globals__, src.__name__ + suffix,
                           src.__defaults__, src.__closure__)
    f.__qualname__ = src.__qualname__ + suffix
    f.__module__ = src.__module__
    # fastmath stays off: IEEE division and square root, NaN/Inf propagate as in torch.
    return cuda.jit(cache=not SIMULATOR)(f)


def _make(name: str):
    return jit_kernel(globals()[name], "_cuda_" + _RULES_HASH)


def get(name: str):
    """The dispatcher of kernel ``name`` (created lazily, compiled on its first launch)."""
    k = _compiled.get(name)
    if k is None:
        if name not in KERNEL_NAMES:
            raise KeyError(f"no cuda kernel named {name!r}")
        k = _compiled[name] = _make(name)
    return k


# --- arrays: what counts as a device array, and zero-copy flat views ---------------------

def _torch_tensor(a):
    """``a`` if it is a torch tensor (torch imported already, never imported here)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(a, torch.Tensor):
        return a
    return None


def _is_numba_device_array(a) -> bool:
    if SIMULATOR:
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray
        return isinstance(a, FakeCUDAArray)
    return cuda.is_cuda_array(a) and isinstance(a, cuda.devicearray.DeviceNDArray)


def _kind(a) -> str:
    mod = type(a).__module__.split(".")[0]
    return f"{mod}.{type(a).__name__}"


class _Info:
    """What the array interface says about one array."""

    __slots__ = ("obj", "shape", "dtype", "strides", "ptr", "readonly", "stream", "device")

    def __init__(self, obj, shape, dtype, strides, ptr, readonly, stream, device):
        self.obj, self.shape, self.dtype, self.strides = obj, shape, dtype, strides
        self.ptr, self.readonly, self.stream, self.device = ptr, readonly, stream, device

    @property
    def size(self):
        return math.prod(self.shape)

    def c_contiguous(self) -> bool:
        if self.strides is None or self.size == 0:
            return True
        want = self.dtype.itemsize
        for n, s in zip(reversed(self.shape), reversed(self.strides)):
            if n != 1 and s != want:
                return False
            want *= n
        return True


def _info(name: str, a) -> _Info | None:
    """The interface of ``a``; None if ``a`` is not a device array."""
    if SIMULATOR and _is_numba_device_array(a):
        h = a._ary  # a simulator array wraps a host array
        ai = h.__array_interface__
        return _Info(a, tuple(h.shape), h.dtype, ai["strides"], ai["data"][0],
                     not h.flags.writeable, None, 0)
    t = _torch_tensor(a)
    if t is not None:
        if not t.is_cuda:
            return None
        torch = sys.modules["torch"]
        if t.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"{name} must have dtype float32 or float64, got {t.dtype}")
        # requires_grad tensors refuse the interface; the optimizer updates .data
        t = t.detach()
        cai = t.__cuda_array_interface__
        dev = t.device.index
        stream = ("torch", dev)
    elif isinstance(a, np.ndarray) or not hasattr(a, "__cuda_array_interface__"):
        return None
    else:
        cai = a.__cuda_array_interface__
        dev = None
        stream = cai.get("stream")
        mod = type(a).__module__.split(".")[0]
        if mod == "cupy":
            dev = a.device.id
            stream = ("cupy", dev)
        elif _is_numba_device_array(a):
            dev = _numba_array_device(a)
            stream = ("numba", a.stream)
        else:  # another producer: the device that holds the memory, asked of the driver
            dev = _pointer_device(name, cai["data"][0])
    try:
        dtype = np.dtype(cai["typestr"])
    except TypeError:
        raise TypeError(f"{name} has an unknown __cuda_array_interface__ typestr "
                        f"{cai.get('typestr')!r}") from None
    if cai.get("mask") is not None:
        raise TypeError(f"{name} is a masked array; fastadam needs a plain dense buffer")
    strides = cai.get("strides")
    ptr, readonly = cai["data"]
    return _Info(a, tuple(cai["shape"]), dtype, None if strides is None else tuple(strides),
                 ptr, bool(readonly), stream, dev)


def _numba_array_device(a):
    try:
        return a.gpu_data.context.device.id
    except AttributeError:  # pragma: no cover - numba internals moved
        return None


def _driver_pointer_device(ptr):  # pragma: no cover - real GPU
    """The ordinal of the device whose memory ``ptr`` is in (cuPointerGetAttribute)."""
    from numba.cuda.cudadrv import driver as drv
    if getattr(drv, "USE_NV_BINDING", True):   # numba-cuda; numba with NVIDIA's bindings
        b = drv.binding
        attr = b.CUpointer_attribute.CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL
        return int(drv.driver.cuPointerGetAttribute(attr, b.CUdeviceptr(ptr)))
    import ctypes
    from numba.cuda.cudadrv import enums
    out = ctypes.c_int(-1)
    drv.driver.cuPointerGetAttribute(ctypes.byref(out),
                                     enums.CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, ptr)
    return out.value


#: ``ptr -> device ordinal`` for memory of producers other than torch, CuPy and numba
#: (None under the simulator, where device memory is host memory); tests replace it.
_ptr_device = None if SIMULATOR else _driver_pointer_device


def _pointer_device(name, ptr):
    """The device of an array known only by its interface, from its pointer."""
    if _ptr_device is None or not ptr:
        return None
    try:
        dev = _ptr_device(ptr)
    except Exception as e:
        raise TypeError(
            f"{name}: the CUDA driver does not know the memory its __cuda_array_interface__ "
            f"points at (cuPointerGetAttribute failed: {e}); the cuda backend needs device "
            "memory (torch CUDA tensors, CuPy or numba device arrays)") from None
    if not isinstance(dev, int) or dev < 0:
        raise TypeError(f"{name}: its __cuda_array_interface__ memory is on no CUDA device "
                        f"(device ordinal {dev!r})")
    return dev


def _flat_view(info: _Info, n: int, owned: bool = True):
    """A 1-D numba device array over ``info``'s memory (zero copy).

    With ``owned=False`` the view keeps no reference to the array it views (for
    cached views, used only while the caller holds that array).
    """
    if SIMULATOR:
        if _is_numba_device_array(info.obj):
            return info.obj.reshape(n)
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray
        if n == 0:
            return FakeCUDAArray(np.empty(0, info.dtype))
        # In the simulator, device memory is host memory: view it in place.
        host = np.asarray(_HostInterface(info, n))
        return FakeCUDAArray(host)
    if n == 0:
        return _Empty(info.dtype)
    if owned and _is_numba_device_array(info.obj):
        return info.obj.reshape(n)
    desc = {"shape": (n,), "typestr": info.dtype.str, "data": (info.ptr, False),
            "strides": None, "version": 2}
    with _on_device(info.device):
        return cuda.from_cuda_array_interface(desc, owner=info.obj if owned else None,
                                              sync=False)


_multi_gpu = None


def _on_device(dev):
    """A context manager making ``dev`` current where there are several GPUs."""
    global _multi_gpu
    if dev is None or SIMULATOR:
        return contextlib.nullcontext()
    if _multi_gpu is None:
        _multi_gpu = len(cuda.gpus) > 1
    if not _multi_gpu or cuda.get_current_device().id == dev:
        return contextlib.nullcontext()
    return cuda.gpus[dev]


class _HostInterface:
    """Exposes simulated device memory through the NumPy array interface."""

    def __init__(self, info, n):
        self.__array_interface__ = {"shape": (n,), "typestr": info.dtype.str,
                                    "data": (info.ptr, False), "strides": None,
                                    "version": 3}


class _Empty:
    """Stands in for a flat view of an empty buffer: nothing is launched for it."""

    def __init__(self, dtype):
        self.dtype = dtype
        self.shape = (0,)
        self.size = 0


def check(named: dict, outputs: tuple) -> dict:
    """Check device arrays for a fused in-place step; return flat 1-D device views.

    The device counterpart of :func:`fastadam._validate.host_arrays`: every
    array must expose ``__cuda_array_interface__`` (a host array mixed in is
    refused), have dtype float32 or float64 (all equal) and the parameter's
    shape, be C-contiguous, live on the parameter's device, and no output may
    overlap another array; outputs must be writeable.  Nothing is written.
    The returned views share the caller's memory; the parameter's view
    carries the stream the step is issued on.
    """
    items = list(named.items())
    first_name, first = items[0]
    infos = {}
    for name, a in items:
        info = _info(name, a)
        if info is None:
            if name == first_name:
                raise TypeError(
                    f"{name} is a host array ({_kind(a)}); the cuda backend works on device "
                    "arrays exposing __cuda_array_interface__ (numba device arrays, CuPy "
                    "arrays, torch CUDA tensors): move the arrays to the GPU, or use "
                    "backend='numba' for host arrays")
            raise TypeError(
                f"{name} is a host array ({_kind(a)}) but {first_name} is a device array "
                f"({_kind(first)}); all arrays of a step must be on the same device")
        infos[name] = info
    f = infos[first_name]
    if f.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{first_name} must have dtype float32 or float64, got {f.dtype}")
    for name, _ in items[1:]:
        i = infos[name]
        if i.dtype != f.dtype:
            raise TypeError(f"{name} has dtype {i.dtype}, but {first_name} has {f.dtype}; "
                            "all arrays of a step must share one dtype")
        if i.shape != f.shape:
            raise ValueError(f"{name} has shape {i.shape}, but {first_name} has {f.shape}")
        if i.device is not None and f.device is not None and i.device != f.device:
            raise ValueError(f"{name} is on device {i.device}, but {first_name} is on device "
                             f"{f.device}; all arrays of a step must be on one device")
    for name, _ in items:
        if not infos[name].c_contiguous():
            raise ValueError(
                f"{name} is not C-contiguous (a strided view); fastadam updates buffers in "
                "place and will not update a silent copy: pass a contiguous array and copy "
                "the result back")
    for name in outputs:
        if infos[name].readonly:
            raise ValueError(f"{name} is read-only; it is updated in place")
    nbytes = f.size * f.dtype.itemsize
    for k, (n1, _) in enumerate(items):
        for n2, _ in items[k + 1:]:
            if (n1 in outputs or n2 in outputs) and nbytes:
                a1, a2 = infos[n1].ptr, infos[n2].ptr
                if a1 < a2 + nbytes and a2 < a1 + nbytes:
                    raise ValueError(f"{n1} and {n2} overlap in memory; each buffer of a step "
                                     "must be distinct")
    n = f.size
    views = {name: _flat_view(infos[name], n) for name, _ in items}
    views[first_name] = _with_stream(views[first_name], [infos[name] for name, _ in items])
    return views


# --- streams ---------------------------------------------------------------------------
# Each array says which stream its pending work is on (``_Info.stream``, a "spec"): the
# launch goes on the first array's stream, after the work queued so far on the other
# arrays' streams (an event recorded there, waited for on the launch stream), and those
# streams then wait for the launch (so what they do next sees the update).  Arrays that
# all name one stream (the usual case: torch's current stream) cost nothing extra.

_external_streams: dict = {}


def _external(handle: int):
    s = _external_streams.get(handle)
    if s is None:
        s = _external_streams[handle] = cuda.external_stream(handle)
    return s


def _stream_of(info: _Info):
    """The numba stream the caller's work on ``info`` is ordered on (0: the default one)."""
    return _resolve(info.stream)


def _resolve(s):
    """The numba stream (or 0) of a stream spec (see :class:`_Info`)."""
    if SIMULATOR or s is None:
        return 0
    if isinstance(s, tuple):
        kind, x = s
        if kind == "torch":
            import torch
            handle = torch.cuda.current_stream(x).cuda_stream
        elif kind == "cupy":   # CuPy's current stream *of the array's device*
            import cupy
            try:
                handle = cupy.cuda.get_current_stream(x).ptr
            except TypeError:  # CuPy < 10: no device argument; ask with it current
                with cupy.cuda.Device(x):
                    handle = cupy.cuda.get_current_stream().ptr
        else:  # numba: the array's own stream, else the default stream
            return x if x else 0
    else:  # the array interface's stream entry (v3): an int, 1/2 = legacy/per-thread
        handle = s
    return _external(handle) if handle else 0


def _handle(s) -> int:
    return int(s) if s else 0


def _streams(specs):
    """``(launch stream, other streams)`` for the stream specs of a launch's arrays (the
    launch array's first); a None spec (the producer asks for no ordering) is skipped."""
    stream = _resolve(specs[0])
    if all(sp == specs[0] or sp is None for sp in specs):
        return stream, ()
    seen = {_handle(stream)}
    joins = []
    for sp in specs[1:]:
        if sp is None:
            continue
        s = _resolve(sp)
        h = _handle(s)
        if h not in seen:
            seen.add(h)
            joins.append(s)
    return stream, tuple(joins)


def _new_event():  # pragma: no cover - real GPU (the simulator's events do nothing)
    return cuda.event(timing=False)


def _order(first, then):
    """Make stream ``then`` wait for the work queued so far on stream ``first``."""
    ev = _new_event()
    ev.record(first)
    ev.wait(then)


def _with_stream(view, infos):
    """The launch view of a checked step, carrying its streams (those of ``infos``:
    every array of the step, the launch array's first) and its device."""
    if not isinstance(view, _Empty):
        with _on_device(infos[0].device):     # (an external stream is made in a context)
            stream, joins = _streams([i.stream for i in infos])
        if not SIMULATOR:
            view.stream = stream
        view._fastadam_launch = (stream, joins, infos[0].device)
    return view


def _streams_of_view(view):
    """``(stream, joins)`` of a launch view (see :func:`_with_stream`)."""
    return _launch_of_view(view)[:2]


def _launch_of_view(view):
    """``(stream, joins, device)`` of a launch view (see :func:`_with_stream`)."""
    st = getattr(view, "_fastadam_launch", None)
    if st is not None:
        return st
    if SIMULATOR:
        return 0, (), None
    return (getattr(view, "stream", 0) or 0), (), _numba_array_device(view)


# --- launching -------------------------------------------------------------------------

_max_blocks_cache: dict = {}


def _max_blocks(bs: int) -> int:
    if MAX_BLOCKS > 0:
        return MAX_BLOCKS
    if SIMULATOR:
        return 16
    dev = cuda.get_current_device()
    key = (dev.id, bs)
    mb = _max_blocks_cache.get(key)
    if mb is None:
        mb = _max_blocks_cache[key] = 4 * dev.MULTIPROCESSOR_COUNT * max(1, 2048 // bs)
    return mb


def grid_size(n: int) -> tuple:
    """``(blocks, threads per block)`` for a launch over ``n`` elements."""
    bs = BLOCK_SIZE
    return max(1, min(-(-n // bs), _max_blocks(bs))), bs


_configs: dict = {}
_CONFIGS_SIZE = 512
_perf_warning_classes = None


def _perf_warnings() -> tuple:
    """numba's NumbaPerformanceWarning classes: numba-cuda has its own (not a subclass of
    numba.core's), numba's built-in CUDA target numba.core's."""
    global _perf_warning_classes
    if _perf_warning_classes is None:
        import importlib
        found = []
        for mod in ("numba.cuda.core.errors", "numba.core.errors"):
            try:
                found.append(importlib.import_module(mod).NumbaPerformanceWarning)
            except (ImportError, AttributeError):
                pass
        _perf_warning_classes = tuple(found)
    return _perf_warning_classes


def launch(kernel, blocks: int, threads: int, stream, args, joins=()) -> None:
    """Launch ``kernel`` with ``blocks`` x ``threads`` on ``stream``, after the work
    queued on the streams ``joins``, which then wait for it.

    Parameters
    ----------
    kernel : numba CUDA dispatcher
        A kernel of this module, :mod:`.cuda_lowp` or :mod:`.cuda_sparse`.
    blocks, threads : int
        Grid and block size.
    stream : numba stream or 0
        The launch stream (0: the default stream).
    args : tuple
        The kernel's arguments.
    joins : tuple of numba streams, optional
        Other streams the arrays' pending work is on (see :func:`_streams`).

    Notes
    -----
    numba-cuda warns (``NumbaPerformanceWarning``) when it makes the launch
    configuration of a grid under 128 blocks, as every buffer under ~32K elements
    has: fastadam sizes its grids itself, so the warning is silenced for its own
    launches (only), and the configurations are kept (one per kernel, grid and
    stream), which also skips numba's per-launch configuration lookup.
    """
    for s in joins:
        _order(s, stream)
    if SIMULATOR:  # the simulator's configuration is the kernel itself: not kept
        kernel[blocks, threads, stream](*args)
    else:
        key = (kernel, blocks, threads, stream)
        cfg = _configs.get(key)
        if cfg is None:
            with warnings.catch_warnings():
                for category in _perf_warnings():
                    warnings.simplefilter("ignore", category)
                cfg = kernel[blocks, threads, stream]
            if len(_configs) >= _CONFIGS_SIZE:
                _configs.clear()
            _configs[key] = cfg
        cfg(*args)
    for s in joins:
        _order(stream, s)


# Views of raw device arrays (``run`` called with torch tensors, CuPy arrays, ...), kept
# by the memory they describe: (pointer, elements, dtype, device) -> flat view (owning
# nothing: used only while the caller holds an array at that memory).  A training loop
# that passes fresh slices of the same flat buffers, or fresh gradient tensors that the
# caching allocator puts where the last ones were, reuses them: a torch tensor's key is
# read without its __cuda_array_interface__ (the slow part of a launch).
_VIEW_CACHE_SIZE = 256
_view_cache: dict = {}


def _raw_view(k: int, a):
    """``(flat view, dtype, size, device, stream spec)`` of raw device array ``a``."""
    t = _torch_tensor(a)
    if t is not None and t.is_cuda and t.is_contiguous():
        dev = t.get_device()
        key = (t.data_ptr(), t.numel(), t.dtype, dev)
        hit = _view_cache.get(key)
        if hit is not None:
            return hit + (("torch", dev),)
    else:
        key = None
    i = _info(f"arrays[{k}]", a)
    if i is None:
        raise TypeError(f"arrays[{k}] is not a device array ({_kind(a)})")
    if not i.c_contiguous():
        raise ValueError(f"arrays[{k}] is not C-contiguous")
    if i.dtype not in FLOAT_DTYPES:
        raise TypeError(f"arrays[{k}] has dtype {i.dtype}; expected float32 or float64, "
                        "the same for all arrays")
    n = i.size
    if _is_numba_device_array(a):      # a numba array: its own stream, no cache
        return _flat_view(i, n), i.dtype, n, i.device, i.stream
    if key is None:
        key = (i.ptr, n, i.dtype, i.device)
    hit = _view_cache.get(key)
    if hit is None:
        if len(_view_cache) >= _VIEW_CACHE_SIZE:
            _view_cache.clear()
        hit = _view_cache[key] = (_flat_view(i, n, owned=False), i.dtype, n, i.device)
    return hit + (i.stream,)


def _numba_launch(arrays):
    """Where to launch on 1-D numba device arrays: what :func:`check` put on the first
    (its views), else the arrays' own streams (the first's, after the others')."""
    if hasattr(arrays[0], "_fastadam_launch"):
        return arrays[0]._fastadam_launch
    dev = None if SIMULATOR else _numba_array_device(arrays[0])
    with _on_device(dev):
        return _streams([("numba", getattr(a, "stream", 0)) for a in arrays]) + (dev,)


def _as_views(arrays):
    """Flat views of ``arrays`` (already-made views pass through) and where to launch:
    ``(stream, joins, device)``; ``(None, None)`` when there is nothing to do."""
    first = arrays[0]
    if isinstance(first, _Empty):
        return None, None
    if SIMULATOR and _is_numba_device_array(first) and len(first.shape) == 1 and \
            all(_is_numba_device_array(a) for a in arrays):
        return arrays, _numba_launch(arrays)
    if not SIMULATOR and isinstance(first, cuda.devicearray.DeviceNDArray) and \
            first.ndim == 1 and all(isinstance(a, cuda.devicearray.DeviceNDArray)
                                    for a in arrays):
        return arrays, _numba_launch(arrays)
    # Raw device arrays (e.g. torch CUDA tensors from fastadam.torch): viewed here.
    got = [_raw_view(k, a) for k, a in enumerate(arrays)]
    _, dt0, n0, _, _ = got[0]
    for k, (_, dt, n, _, _) in enumerate(got[1:], 1):
        if dt != dt0:
            raise TypeError(f"arrays[{k}] has dtype {dt}; expected float32 or float64, "
                            "the same for all arrays")
        if n != n0:
            raise ValueError(f"arrays[{k}] has {n} elements, arrays[0] has {n0}")
    dev0 = got[0][3]
    for k, g in enumerate(got[1:], 1):
        if g[3] is not None and dev0 is not None and g[3] != dev0:
            raise ValueError(f"arrays[{k}] is on device {g[3]}, but arrays[0] is on device "
                             f"{dev0}; all arrays of a step must be on one device")
    if n0 == 0:
        return None, None
    with _on_device(dev0):
        streams = _streams([g[4] for g in got])
    return tuple(g[0] for g in got), streams + (dev0,)


def run(name: str, arrays, scalars) -> None:
    """Launch kernel ``name`` on ``arrays`` (flat views from :func:`check`, or raw
    contiguous device arrays of one dtype and size) with the given scalars.

    Asynchronous: the work is queued on the first array's stream (after the work
    pending on the other arrays' streams) and this returns.
    """
    run_with(get, name, arrays, scalars)


def run_with(get_kernel, name: str, arrays, scalars) -> None:
    """:func:`run` with the kernel ``get_kernel(name)`` (that of another kernel module:
    :func:`fastadam.kernels.cuda_keras.run`): the same views, checks, streams and
    launch."""
    views, where = _as_views(tuple(arrays))
    if views is None:
        return
    n = views[0].shape[0]
    if n == 0:
        return
    stream, joins, dev = where
    kernel = get_kernel(name)
    with _on_device(dev):
        blocks, bs = grid_size(n)
        launch(kernel, blocks, bs, stream, tuple(views) + tuple(scalars), joins)


# --- availability (the backend itself is made by fastadam._backends) -------------------

def available() -> tuple:
    """``(True, "")`` if kernels can run here, else ``(False, reason)``."""
    if SIMULATOR:
        return True, ""
    try:
        ok = cuda.is_available()
    except Exception as e:  # pragma: no cover - driver errors vary
        return False, f"the CUDA driver failed to initialise: {e}"
    if not ok:
        return False, ("no CUDA GPU or driver found (numba.cuda.is_available() is False); "
                       "install a CUDA driver and `pip install fastadam[cuda]`, or set "
                       "NUMBA_ENABLE_CUDASIM=1 before importing numba to use numba's "
                       "(slow) CUDA simulator")
    return True, ""
