"""numba CUDA kernels for row-sparse (embedding) steps, and their checks and launches.

The device twin of :mod:`fastadam.kernels.cpu_sparse`.  A call gets a table and its
state (device arrays, 2-D ``(rows, dim)``, or ``(rows,)`` for row-wise state), the
looked-up rows ``indices`` (a host or device integer array) and one gradient row per
lookup ``values`` (a device array ``(len(indices), dim)``):

1. the indices are brought to the host (a copy of the lookups, never of the table),
   checked (every row in range: IndexError otherwise) and **coalesced there** by
   :func:`fastadam.kernels.cpu_sparse.coalesce` -- the stable radix sort and the
   segments of equal rows -- and the sort order, the segment starts and rows go to
   the device on the caller's stream (what a call allocates on the device is
   proportional to the lookups);
2. one launch: a block per distinct row (grid-stride over them), its threads over
   the row's elements; each thread sums its element's gradient over the row's
   lookups **in lookup order** and applies the rule of :mod:`fastadam.rules.sparse`
   (or :func:`fastadam.rules.adam.adam` for lazy Adam) to the element of the table
   and its state.  Row-wise Adagrad reduces the row's squared gradient in shared
   memory, in a fixed tree of :data:`SPARSE_BLOCK` partial sums.

So the result does not depend on the grid size: every sum has one order (row-wise
Adagrad's reduction: the order of its fixed tree, not the CPU kernel's sequential
one, so the two agree to rounding).  Only the looked-up rows are read or written.

This module is imported only with the ``cuda`` backend; under numba's CUDA
simulator it runs on host memory, which is how the tests check it.
"""

from __future__ import annotations

import types

import numba
import numpy as np
from numba import cuda

from .._validate import FLOAT_DTYPES
from . import cuda as _cu
from . import cpu_sparse as _cpu
from ..rules import adam as _adam_r
from ..rules import sparse as _sparse_r

#: Threads per block of the row-sparse kernels (a power of two: row-wise Adagrad's
#: reduction tree); the kernels are made per value (a module attribute, read at launch).
SPARSE_BLOCK = 128


def _device(f):
    return cuda.jit(device=True)(f)


r_sparse_adam = _device(_sparse_r.sparse_adam)
r_sparse_adagrad = _device(_sparse_r.sparse_adagrad)
r_sparse_sgd = _device(_sparse_r.sparse_sgd)
r_rowwise_grad = _device(_sparse_r.rowwise_grad)
r_rowwise_state = _device(_sparse_r.rowwise_adagrad_state)
r_rowwise_scale = _device(_sparse_r.rowwise_adagrad_scale)
r_rowwise_adagrad = _device(_sparse_r.rowwise_adagrad)
r_adam = _device(_adam_r.adam)
r_adam_amsgrad = _device(_adam_r.adam_amsgrad)


@cuda.jit(device=True)
def grad_elem(vals, order, a, z, j):
    """Element ``j`` of the summed gradient of the lookups ``order[a:z]``, in order."""
    g = vals[order[a], j]
    for k in range(a + 1, z):
        g += vals[order[k], j]
    return g


# --- the kernels: 2-D views of the table and state (row-wise state 1-D) ---------------
# A block per distinct row (grid-stride over them), its threads over the row's elements.

def sparse_adam(p, m, v, order, starts, rows, vals, s0, s1, s2, s3, s4):
    for s in range(cuda.blockIdx.x, rows.shape[0], cuda.gridDim.x):
        a, z, r = starts[s], starts[s + 1], rows[s]
        for j in range(cuda.threadIdx.x, p.shape[1], cuda.blockDim.x):
            g = grad_elem(vals, order, a, z, j)
            p[r, j], m[r, j], v[r, j] = r_sparse_adam(p[r, j], g, m[r, j], v[r, j], s0, s1,
                                                      s2, s3, s4)


def sparse_adagrad(p, sm, order, starts, rows, vals, s0, s1, s2):
    for s in range(cuda.blockIdx.x, rows.shape[0], cuda.gridDim.x):
        a, z, r = starts[s], starts[s + 1], rows[s]
        for j in range(cuda.threadIdx.x, p.shape[1], cuda.blockDim.x):
            g = grad_elem(vals, order, a, z, j)
            p[r, j], sm[r, j] = r_sparse_adagrad(p[r, j], g, sm[r, j], s0, s1, s2)


def sparse_sgd(p, order, starts, rows, vals, s0, s1):
    for s in range(cuda.blockIdx.x, rows.shape[0], cuda.gridDim.x):
        a, z, r = starts[s], starts[s + 1], rows[s]
        for j in range(cuda.threadIdx.x, p.shape[1], cuda.blockDim.x):
            p[r, j] = r_sparse_sgd(p[r, j], grad_elem(vals, order, a, z, j), s0, s1)


def lazy_adam(p, m, v, order, starts, rows, vals, s0, s1, s2, s3, s4, s5, s6, s7, s8):
    for s in range(cuda.blockIdx.x, rows.shape[0], cuda.gridDim.x):
        a, z, r = starts[s], starts[s + 1], rows[s]
        for j in range(cuda.threadIdx.x, p.shape[1], cuda.blockDim.x):
            g = grad_elem(vals, order, a, z, j)
            p[r, j], m[r, j], v[r, j] = r_adam(p[r, j], g, m[r, j], v[r, j], s0, s1, s2, s3,
                                               s4, s5, s6, s7, s8)


def lazy_adam_amsgrad(p, m, v, vmax, order, starts, rows, vals, s0, s1, s2, s3, s4, s5, s6,
                      s7, s8):
    for s in range(cuda.blockIdx.x, rows.shape[0], cuda.gridDim.x):
        a, z, r = starts[s], starts[s + 1], rows[s]
        for j in range(cuda.threadIdx.x, p.shape[1], cuda.blockDim.x):
            g = grad_elem(vals, order, a, z, j)
            p[r, j], m[r, j], v[r, j], vmax[r, j] = r_adam_amsgrad(
                p[r, j], g, m[r, j], v[r, j], vmax[r, j], s0, s1, s2, s3, s4, s5, s6, s7, s8)


def _rowwise_kernel(nbtype, block):
    """Row-wise Adagrad for one float type and block size (its shared reduction tree)."""

    def rowwise_adagrad(p, st, order, starts, rows, vals, s0, s1, s2, s3, s4):
        part = cuda.shared.array(block, nbtype)
        t = cuda.threadIdx.x
        dim = p.shape[1]
        for s in range(cuda.blockIdx.x, rows.shape[0], cuda.gridDim.x):
            a, z, r = starts[s], starts[s + 1], rows[s]
            acc = s4 - s4                         # 0 in the table's dtype (dim is finite)
            for j in range(t, dim, block):
                x = r_rowwise_grad(p[r, j], grad_elem(vals, order, a, z, j), s0, s1)
                acc += x * x
            part[t] = acc
            cuda.syncthreads()
            half = block // 2
            while half > 0:
                if t < half:
                    part[t] += part[t + half]
                cuda.syncthreads()
                half //= 2
            snew = r_rowwise_state(st[r], part[0], s4)
            scale = r_rowwise_scale(snew, s2, s3)
            cuda.syncthreads()                    # every thread has read st[r] and part[0]
            if t == 0:
                st[r] = snew
            for j in range(t, dim, block):
                x = r_rowwise_grad(p[r, j], grad_elem(vals, order, a, z, j), s0, s1)
                p[r, j] = r_rowwise_adagrad(p[r, j], x, scale)
            cuda.syncthreads()                    # part is reused by the next row
    return rowwise_adagrad


KERNEL_NAMES = ("sparse_adam", "sparse_adagrad", "sparse_sgd", "rowwise_adagrad",
                "lazy_adam", "lazy_adam_amsgrad")
_compiled: dict = {}


def get(name: str, dtype, block: int):
    """The kernel ``name`` for tables of ``dtype`` launched with ``block`` threads."""
    key = (name, np.dtype(dtype), block) if name == "rowwise_adagrad" else name
    k = _compiled.get(key)
    if k is None:
        if name not in KERNEL_NAMES:
            raise KeyError(f"no cuda kernel named {name!r}")
        if name == "rowwise_adagrad":
            k = cuda.jit(_rowwise_kernel(numba.from_dtype(np.dtype(dtype)), block))
        else:
            src = globals()[name]
            f = types.FunctionType(src.__code__, src.__globals__, name + "_cuda_sparse",
                                   src.__defaults__, src.__closure__)
            f.__qualname__ = src.__qualname__ + "_cuda_sparse"
            f.__module__ = src.__module__
            k = cuda.jit(f)
        _compiled[key] = k
    return k


# --- checks ------------------------------------------------------------------------------

def _host_indices(indices):
    """The lookups as a host array (a copy of a device array's; a NumPy array as it is)."""
    if isinstance(indices, np.ndarray):
        return indices
    t = _cu._torch_tensor(indices)
    if t is not None:
        return t.detach().cpu().numpy()
    if _cu._is_numba_device_array(indices):
        return indices.copy_to_host()
    if hasattr(indices, "__cuda_array_interface__"):
        info = _cu._info("indices", indices)
        if not info.c_contiguous():
            raise ValueError("indices is not C-contiguous")
        return _cu._flat_view(info, info.size).copy_to_host().reshape(info.shape)
    raise TypeError(f"indices must be a NumPy or device array, got {type(indices).__name__}")


def check(tables: dict, indices, values, row_states=()):
    """The device counterpart of :func:`fastadam._validate.sparse_arrays`.

    ``tables`` (the parameter table first) and ``values`` must be device arrays of
    one float dtype on one device, C-contiguous, the tables writeable and not
    overlapping each other or ``values``; shapes as for the host check.  ``indices``
    may live on the host or the device.  Returns ``(views of the tables (the
    parameter's carrying the stream), host int64 indices, view of values)``, numba
    device arrays over the caller's memory.  Nothing is written.
    """
    items = list(tables.items())
    first_name, first = items[0]
    infos = {}
    for name, a in items + [("values", values)]:
        info = _cu._info(name, a)
        if info is None:
            raise TypeError(f"{name} is a host array ({_cu._kind(a)}); the cuda backend's "
                            "row-sparse steps take device tables and values (the indices "
                            "may be on the host): use backend='numba' for host arrays")
        infos[name] = info
    f = infos[first_name]
    if f.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{first_name} must have dtype float32 or float64, got {f.dtype}")
    if len(f.shape) != 2:
        raise ValueError(f"{first_name} must be a 2-D table (rows, dim), got shape {f.shape}")
    rows, dim = f.shape
    for name, info in infos.items():
        if name == first_name:
            continue
        if info.dtype != f.dtype:
            raise TypeError(f"{name} has dtype {info.dtype}, but {first_name} has {f.dtype}")
        if info.device is not None and f.device is not None and info.device != f.device:
            raise ValueError(f"{name} is on device {info.device}, but {first_name} is on "
                             f"device {f.device}")
        if name != "values":
            want = (rows,) if name in row_states else f.shape
            if info.shape != want:
                raise ValueError(f"{name} has shape {info.shape}; expected {want}")
    host = _host_indices(indices)
    if host.dtype.kind not in "iu":
        raise TypeError(f"indices must be an integer array, got dtype {host.dtype}")
    if host.ndim != 1:
        raise ValueError(f"indices must be 1-D, got shape {host.shape}")
    n = host.shape[0]
    if infos["values"].shape != (n, dim):
        raise ValueError(f"values has shape {infos['values'].shape}; expected {(n, dim)}")
    if n:
        lo, hi = host.min(), host.max()
        if lo < 0 or hi >= rows:
            raise IndexError(f"indices: row {int(lo if lo < 0 else hi)} is out of range for "
                             f"{first_name} with {rows} rows")
    for name, info in infos.items():
        if not info.c_contiguous():
            raise ValueError(f"{name} is not C-contiguous (a strided view)")
        if name != "values" and info.readonly:
            raise ValueError(f"{name} is read-only; it is updated in place")
    spans = {name: (info.ptr, info.ptr + info.size * info.dtype.itemsize)
             for name, info in infos.items() if info.size}
    names = list(spans)
    for k, n1 in enumerate(names):
        for n2 in names[k + 1:]:
            (a1, e1), (a2, e2) = spans[n1], spans[n2]
            if a1 < e2 and a2 < e1:
                raise ValueError(f"{n1} and {n2} overlap in memory; each buffer of a step "
                                 "must be distinct")
    views = {name: _view(infos[name]) for name, _ in items}
    views[first_name] = _cu._with_stream(views[first_name], list(infos.values()))
    return views, np.ascontiguousarray(host, dtype=np.int64), _view(infos["values"])


def _view(info):
    """A numba device array of ``info``'s shape over its memory (zero copy)."""
    v = _cu._flat_view(info, info.size)
    return v if isinstance(v, _cu._Empty) else v.reshape(info.shape)


# --- the launch ----------------------------------------------------------------------------

def run(name: str, tables, indices, values, scalars) -> None:
    """Launch row-sparse kernel ``name`` (asynchronous, on the parameter's stream).

    ``tables``, ``values``: device views from :func:`check` (the parameter's first),
    ``indices``: host int64 lookups in range.  The launch waits for the work pending on
    the other arrays' streams (see :func:`fastadam.kernels.cuda.launch`).
    """
    n = indices.shape[0]
    p = tables[0]
    if n == 0 or p.size == 0:
        return
    order, starts, rows, _ = _cpu.coalesce(indices, p.shape[0], 1,
                                           _cpu.index_dtype(p.shape[0], n))
    stream, joins, dev = _cu._launch_of_view(p)
    d_order = cuda.to_device(order, stream=stream)
    d_starts = cuda.to_device(starts, stream=stream)
    d_rows = cuda.to_device(rows, stream=stream)
    block = SPARSE_BLOCK
    blocks = max(1, min(rows.shape[0], _cu._max_blocks(block)))
    kernel = get(name, p.dtype, block)
    with _cu._on_device(dev):
        _cu.launch(kernel, blocks, block, stream,
                   (*tables, d_order, d_starts, d_rows, values, *scalars), joins)
