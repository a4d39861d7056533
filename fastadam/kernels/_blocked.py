"""The prefetched sub-block form of an element-wise loop, generated once for all kernels.

At sizes beyond L2 (millions of params) what limits a fused optimizer loop on
this machine (Sapphire Rapids, 2 cores) is how well its memory traffic
overlaps its arithmetic, not the arithmetic nor the bandwidth alone.  A
parallel work item of :data:`CHUNK` elements runs in sub-blocks of
:data:`SUB_LINES` cache lines of the first array (128 float32 elements); each
sub-block first issues one prefetch hint (:func:`k_prefetch`) per 64-byte line
of every array for the sub-block :data:`AHEAD_LINES` lines ahead (4 KiB), then
runs the vectorized element loop over views of the sub-block.  Small bursts of
hints keep the fill buffers free for the demand loads.  Prefetches have no
effect on results: the same bits as the plain ``prange`` loop (tests compare
them).  Arrays under :data:`MIN_BYTES` run the plain loop.  The dense kernels of
:mod:`.cpu` take this form only where ``fastadam._config.PREFETCH_SUB_BLOCKS`` (not on
AMD CPUs, where the plain loop measured faster on aligned buffers).

:func:`blocked_loop` writes that loop for a kernel whose body is one rule
call, ``a0[i], a2[i], ... = rule(a0[i], a1[i], a2[i], ..., scalars...)``
(every array but the second -- the gradient -- is written back), from the
kernel's parameter list; the kernel modules keep their plain loops for the
serial variant and hand this one to :class:`._variants.KernelVariants` for the
parallel one.  The generated code is compiled under the kernel module's file
name (numba caches only functions with a source file; line numbers in error
messages refer to the template, see ``.source`` on the function).
:func:`gradlist_loop` writes, from the same kernel, its *gradient-list form*: the
gradient given as a list of contiguous arrays by address (fastadam.torch's fresh
gradients, read where autograd left them).  :data:`HASH`
keys the numba cache of generated loops (this file's source: numba only
watches the file that holds a loop).
"""

from __future__ import annotations

import hashlib
import inspect
import pathlib

import numba
import numpy as np
from llvmlite import ir
from numba import types as nbt
from numba.core import cgutils
from numba.extending import intrinsic

#: Elements per parallel work item.
CHUNK = 4096
#: Bytes of a cache line (one prefetch hint each).
LINE = 64
#: Cache lines per sub-block of the first array (128 float32, 64 float64 elements): each
#: sub-block first prefetches the sub-block :data:`AHEAD_LINES` lines ahead.
SUB_LINES = 8
#: Software-prefetch distance in lines of the first array (1024 float32 elements, 4 KiB).
AHEAD_LINES = 64
#: Smallest first array, in bytes, run in sub-blocks (2M float32 elements); below, the
#: plain ``prange`` loop, which measured as fast there (and up to 1.5x faster at 64K,
#: where the per-sub-block overhead shows and the data sits in L2).
#: (``fastadam._config.PREFETCH_SUB_BLOCKS`` says whether :mod:`.cpu`'s dense kernels take
#: the sub-block form at all; the other users of :func:`blocked_loop`, the clamped float32
#: Adam of :mod:`.cpu_lowp` and the master-weight kernels, always do.)
MIN_BYTES = 8 << 20

_I32 = ir.IntType(32)

HASH = hashlib.sha256(pathlib.Path(__file__).read_bytes()).hexdigest()[:8]


@intrinsic
def k_prefetch(typingctx, a, i):
    """A prefetch hint (``llvm.prefetch``: read, keep in all cache levels) for the cache
    line of ``a[i]``, ``a`` 1-D; ``i`` may lie past the end of ``a`` (a prefetch never
    faults, and the address is computed without ``inbounds``).  No effect on results.
    Streams from DRAM on the development VM ran ~25% faster with these a few KiB ahead
    than with the hardware prefetchers alone."""
    if not isinstance(a, nbt.Array) or a.ndim != 1 or not isinstance(i, nbt.Integer):
        return None

    def codegen(context, b, sig, args):
        ary = context.make_array(sig.args[0])(context, b, value=args[0])
        idx = args[1] if sig.args[1].bitwidth == 64 else b.sext(args[1], ir.IntType(64))
        i8p = ir.IntType(8).as_pointer()
        ptr = b.bitcast(b.gep(ary.data, [idx]), i8p)
        # the intrinsic's name mangles the pointer type: "p0" (opaque pointers, LLVM >= 15
        # as llvmlite >= 0.44 prints them) or "p0i8" (typed i8*)
        name = "llvm.prefetch.p0" if str(i8p) == "ptr" else "llvm.prefetch.p0i8"
        fn = cgutils.get_or_insert_function(
            b.module, ir.FunctionType(ir.VoidType(), [i8p, _I32, _I32, _I32]), name)
        b.call(fn, [ptr, ir.Constant(_I32, 0), ir.Constant(_I32, 3), ir.Constant(_I32, 1)])
        return context.get_dummy_value()
    return nbt.none(a, i), codegen


@intrinsic
def k_line(typingctx, a):
    """Elements of 1-D array ``a`` per cache line (:data:`LINE` bytes), a constant."""
    if not isinstance(a, nbt.Array):
        return None
    step = max(1, LINE // max(1, a.dtype.bitwidth // 8))

    def codegen(context, b, sig, args):
        return context.get_constant(nbt.intp, step)
    return nbt.intp(a), codegen


@intrinsic
def k_pointer(typingctx, address, a):
    """The integer ``address`` as a pointer to ``a``'s element type (for
    ``numba.carray``): how a gradient-list loop (:func:`gradlist_loop`) reads a tensor
    it was given by address.  The caller guarantees that the memory is alive, of that
    type, contiguous and long enough."""
    if not isinstance(address, nbt.Integer) or not isinstance(a, nbt.Array):
        return None
    ptype = nbt.CPointer(a.dtype)

    def codegen(context, b, sig, args):
        return b.inttoptr(args[0], context.get_value_type(ptype))
    return ptype(address, a), codegen


@numba.njit(inline="always", cache=False)
def prefetch_ahead(a, i, count):
    """Prefetch hints for the lines of ``a[i : i + count]`` (one per line; ``i`` may lie
    past the end of ``a``)."""
    for k in range(0, count, k_line(a)):
        k_prefetch(a, i + k)


_TEMPLATE = '''\
def {name}({params}):
    n = {a0}.shape[0]
    if n < _MIN_LINES * k_line({a0}):
        for i in prange(n):
            {outs_i} = {rule}({ins_i}, {scalars})
    else:
        sub = _SUB_LINES * k_line({a0})
        ahead = _AHEAD_LINES * k_line({a0})
        for c in prange((n + _CHUNK - 1) // _CHUNK):
            for lo in range(c * _CHUNK, min(c * _CHUNK + _CHUNK, n), sub):
                hi = min(lo + sub, n)
{prefetch}
{views}
                for j in range({a0}_.shape[0]):
                    {outs} = {rule}({ins}, {scalars})
'''


_GRADLIST_TEMPLATE = '''\
def {name}({params}):
    n = {a0}.shape[0]
    for c in prange((n + _CHUNK - 1) // _CHUNK):
        lo = c * _CHUNK
        hi = min(lo + _CHUNK, n)
        k = np.searchsorted(goff, lo, "right") - 1
        while lo < hi:
            b = goff[k]
            e = min(hi, goff[k + 1])
            if e > lo:
                {a1}_ = carray(k_pointer(gaddr[k], {a0}), goff[k + 1] - b)[lo - b:e - b]
{views}
                for j in range({a0}_.shape[0]):
                    {outs} = {rule}({ins}, {scalars})
            lo = e
            k += 1
'''


def gradlist_loop(fn, n_arrays: int, rule: str, namespace: dict, name: str):
    """Kernel ``fn`` with its gradient given as a list of tensors, by address.

    The loop ``name`` takes ``fn``'s parameters with the second array (the
    gradient) replaced by ``gaddr, goff``: int64 arrays, ``goff`` of length
    ``len(gaddr) + 1``, rising from 0 to ``len(a0)``; the gradient of elements
    ``goff[k]:goff[k+1]`` of the other arrays is the contiguous array of that length
    at address ``gaddr[k]``, of the first array's dtype.  One call steps a run of
    parameters whose gradients lie anywhere (fresh tensors from autograd, views of a
    flat buffer), in work items of :data:`CHUNK` elements across tensor boundaries:
    no copy of the gradients and no call per tensor.  The same rule call, so the
    same bits as the plain loop over the gradients concatenated.
    """
    params = list(inspect.signature(fn).parameters)
    arrays, scalars = params[:n_arrays], params[n_arrays:]
    outs = [a for k, a in enumerate(arrays) if k != 1]
    src = _GRADLIST_TEMPLATE.format(
        name=name, params=", ".join([arrays[0], "gaddr", "goff"] + arrays[2:] + scalars),
        a0=arrays[0], a1=arrays[1],
        views="\n".join(f"                {a}_ = {a}[lo:e]" for a in outs),
        outs=", ".join(f"{a}_[j]" for a in outs), rule=rule,
        ins=", ".join(f"{a}_[j]" for a in arrays), scalars=", ".join(scalars))
    return _define(src, fn, name, name, namespace, prange=numba.prange, k_pointer=k_pointer,
                   carray=numba.carray, np=np, _CHUNK=CHUNK)


def _define(src, fn, name, qualname, namespace, **names):
    """Function ``name`` of the generated source ``src``, resolving its names in
    ``namespace`` (the kernel module's globals) and ``names``; compiled under ``fn``'s
    file name (numba's cache wants a source file) and carrying ``fn``'s module and
    docstring, ``qualname`` (numba names its cache files after it) and ``.source``."""
    ns = dict(namespace)
    ns.update(names)
    exec(compile(src, fn.__code__.co_filename, "exec"), ns)
    out = ns[name]
    out.__module__ = fn.__module__
    out.__qualname__ = qualname
    out.__doc__ = fn.__doc__
    out.source = src
    return out


def blocked_loop(fn, n_arrays: int, rule: str, namespace: dict, min_bytes: int = MIN_BYTES):
    """The prefetched sub-block form of kernel ``fn`` (same name and parameters).

    ``fn``'s first ``n_arrays`` parameters are arrays, the rest scalars passed on to
    ``rule`` (a name in ``namespace``, the kernel module's globals, where the loop
    resolves it); every array but the second is written with the rule's results, in
    parameter order.  A first array under ``min_bytes`` runs the plain loop instead.
    """
    params = list(inspect.signature(fn).parameters)
    arrays, scalars = params[:n_arrays], params[n_arrays:]
    outs = [a for k, a in enumerate(arrays) if k != 1]
    src = _TEMPLATE.format(
        name=fn.__name__, params=", ".join(params), a0=arrays[0],
        prefetch="\n".join(f"                prefetch_ahead({a}, lo + ahead, sub)"
                            for a in arrays),
        views="\n".join(f"                {a}_ = {a}[lo:hi]" for a in arrays),
        outs_i=", ".join(f"{a}[i]" for a in outs), ins_i=", ".join(f"{a}[i]" for a in arrays),
        outs=", ".join(f"{a}_[j]" for a in outs), rule=rule,
        ins=", ".join(f"{a}_[j]" for a in arrays), scalars=", ".join(scalars))
    return _define(src, fn, fn.__name__, fn.__qualname__, namespace, prange=numba.prange,
                   prefetch_ahead=prefetch_ahead, k_line=k_line, _CHUNK=CHUNK,
                   _SUB_LINES=SUB_LINES, _AHEAD_LINES=AHEAD_LINES,
                   _MIN_LINES=min_bytes // LINE)
