"""Sparse (COO) gradients: checking them, and the row-sparse kernel call of a step.

:class:`_SparseMixin` is the part of :class:`~fastadam.torch.base.FlatOptimizer`
that takes the sparse gradients ``nn.Embedding(sparse=True)`` and
``nn.EmbeddingBag(sparse=True)`` produce.  An optimizer class says what it does with
them (``_sparse``): refuse them as torch.optim does (the default), accept them
(``Adagrad``, ``SGD``, ``Adam(sparse_grads="lazy")``) or require them
(``SparseAdam``, ``RowWiseAdagrad``).

While a step is planned (nothing changed yet), :meth:`_SparseMixin._sparse_grad`
checks a sparse gradient -- layout, shape, dtype, device, the group's options torch
refuses with sparse gradients, every index in range -- and turns it into a
:class:`_SparseGrad`: the parameter seen as a table of ``rows x dim`` (the sparse
dimensions of the gradient flattened into rows, its dense dimensions into the row),
the row of each stored value (int64, zero-copy for an embedding's gradient) and
the values as a ``(nnz, dim)`` NumPy array.  The step then makes one row-sparse
kernel call for that parameter (:meth:`_SparseMixin._sparse_call`) on its slices of
the flat parameter and state buffers: only the rows the gradient holds are read
or written (:mod:`fastadam.kernels.cpu_sparse`).  SGD with momentum is the one
exception: torch's momentum buffer for a sparse gradient keeps every row ever
touched and each step moves them all, so that step is the dense step over the
gradient scattered into the flat gradient buffer (:func:`_densify`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .. import _scalars
from .._errors import BackendUnavailableError
from .._validate import extent


#: the key of the host arrays' extents in a bucket's ``arrays`` (:func:`_overlaps`)
_EXTENTS = ("sparse", "extents")


class _SparseGrad:
    """A checked sparse gradient of one parameter, as a row-sparse update."""

    __slots__ = ("idx", "vals", "rows", "dim")

    def __init__(self, idx, vals, rows, dim):
        self.idx = idx          # (nnz,) int64 rows, a C-contiguous NumPy array
        self.vals = vals        # (nnz, dim) values, the parameter's dtype, C-contiguous
        self.rows = rows
        self.dim = dim


def _numpy_range(x):
    return x.min(), x.max()


def _index_range(x):
    """``(min, max)`` of a non-empty 1-D integer array: one compiled pass where numba
    is installed (about 1 us for 8,192 lookups, NumPy's two reductions about 5).  The
    first call puts the implementation in this name's place."""
    global _index_range
    try:
        from ..kernels.cpu_sparse import index_range
    except ImportError:                 # no numba: NumPy's reductions
        index_range = _numpy_range
    _index_range = index_range
    return index_range(x)


def _rows_of(g, i, gi):
    """The row of each stored value of COO tensor ``g`` (a NumPy int64 array) and the
    table's ``rows``: the sparse dimensions flattened (row-major); IndexError for an
    index out of range."""
    k = g.sparse_dim()
    shape = g.shape
    ind = g._indices().numpy()                  # (k, nnz) int64; NumPy indexing is cheaper
    if k == 1:                                  # an embedding's gradient
        idx = ind[0]
        if idx.shape[0]:
            lo, hi = _index_range(idx)
            if lo < 0 or hi >= shape[0]:
                _out_of_range(i, gi, 0, lo, hi, shape[0])
        return idx, shape[0]
    if ind.shape[1]:
        for d in range(k):
            lo, hi = _index_range(ind[d])
            if lo < 0 or hi >= shape[d]:
                _out_of_range(i, gi, d, lo, hi, shape[d])
    lin = np.zeros(ind.shape[1], np.int64)
    for d in range(k):
        lin *= shape[d]
        lin += ind[d]
    return lin, math.prod(shape[:k])


def _out_of_range(i, gi, d, lo, hi, size):
    raise IndexError(f"the sparse gradient of parameter {i} of param group {gi} has index "
                     f"{lo if lo < 0 else hi} in dimension {d} of size {size}")


def _overlaps(b, lo, nbytes):
    """Whether bytes ``[lo, lo + nbytes)`` overlap one of bucket ``b``'s host arrays
    (their extents, as ``np.may_share_memory``); the extents are kept in ``b.arrays``,
    which is emptied whenever a host array is added or replaced."""
    ext = b.arrays.get(_EXTENTS)
    if ext is None:
        ext = b.arrays[_EXTENTS] = tuple(extent(a) for a in b.host.values() if a.nbytes)
    hi = lo + nbytes
    for a, z in ext:
        if lo < z and a < hi:
            return True
    return False


def _densify(b, i, sg):
    """Scatter ``sg`` into parameter ``i``'s slice of bucket ``b``'s flat gradient
    buffer (the values of a row added in their order)."""
    gv = b.gviews[i].view(sg.rows, sg.dim)
    with torch.no_grad():
        gv.zero_()
        if sg.idx.shape[0]:
            gv.index_add_(0, torch.from_numpy(sg.idx), torch.from_numpy(sg.vals))


class _SparseMixin:
    """Sparse gradients in a :class:`~fastadam.torch.base.FlatOptimizer`'s step."""

    #: None: sparse gradients refused (torch.optim's behaviour for this optimizer);
    #: "accept": sparse and dense gradients; "require": sparse gradients only
    _sparse = None
    #: row-wise state (one value per row of each parameter): these state names
    _row_states: tuple = ()

    def _sparse_refusal(self) -> str:
        return f"{type(self).__name__} does not support sparse gradients"

    def _check_sparse_group(self, group, hp) -> bool:
        """Raise where torch refuses a sparse gradient with this group's options;
        True when the step is to run dense (the gradient scattered into the flat
        buffer), False for a row-sparse kernel call."""
        return False

    def _sparse_step_hp(self, hp, t, sg):
        """``(name of the step in fastadam._scalars, its hyperparameters)`` of a
        row-sparse call at step ``t``."""
        raise NotImplementedError  # pragma: no cover - every accepting class defines it

    def _check_dense_grads(self, grads):
        if self._sparse == "require":
            for g in grads:
                if g is not None and g.layout == torch.strided:
                    raise RuntimeError(f"{type(self).__name__} does not support dense "
                                       "gradients, please consider Adam instead")

    def _sparse_grad(self, b, i, g, hp):
        """Check sparse gradient ``g`` of parameter ``i`` of bucket ``b``; changes nothing.

        Returns ``(sg, dense)``: the :class:`_SparseGrad`, and whether the step runs
        dense (scattered into the flat gradient buffer) rather than row-sparse.
        """
        name = type(self).__name__
        if self._sparse is None:
            raise RuntimeError(self._sparse_refusal())
        if g.layout != torch.sparse_coo:
            raise RuntimeError(f"{name} takes sparse COO gradients; parameter {i} of param "
                               f"group {b.gi} has a {g.layout} gradient")
        v = b.views[i]
        if (g.shape != v.shape or g.dtype is not b.dtype
                or (g.device != b.device if b.cuda else not g.is_cpu)):
            raise ValueError(f"the gradient of parameter {i} of param group {b.gi} has shape "
                             f"{tuple(g.shape)}, dtype {g.dtype}, device {g.device}; expected "
                             f"{tuple(v.shape)}, {b.dtype}, {b.device}")
        if b.cuda or b.fmt or b.sdt != "float32":
            raise BackendUnavailableError(
                f"{name}: sparse gradients run on float32 / float64 CPU parameters with "
                f"float32 state; parameter {i} of param group {b.gi} is {b.dtype} on "
                f"{b.device} (state_dtype={b.sdt!r})")
        if not getattr(b.backend, "sparse", False):
            raise BackendUnavailableError(
                f"{name}: sparse gradients are implemented on the numba, cython and numpy "
                f"backends, not {b.backend.name!r}")
        dense = self._check_sparse_group(self.param_groups[b.gi], hp)
        if self._row_states and g.sparse_dim() != 1:
            raise ValueError(f"{name} keeps one state value per row: the gradient of parameter "
                             f"{i} of param group {b.gi} must be sparse in its first dimension "
                             f"only (as nn.Embedding's), not in {g.sparse_dim()}")
        if g.requires_grad:
            g = g.detach()
        idx, rows = _rows_of(g, i, b.gi)
        dim = v.numel() // rows if rows else 0
        tv = g._values()
        if tv.is_neg():
            tv = tv.resolve_neg()
        tv = tv.contiguous()
        vals = tv.numpy().reshape(idx.shape[0], dim)
        if vals.nbytes and _overlaps(b, tv.data_ptr(), vals.nbytes):
            vals = vals.copy()                  # values the step would overwrite: a copy
        return _SparseGrad(np.ascontiguousarray(idx), vals, rows, dim), dense

    def _sparse_runs(self, b, grads, hp):
        """The runs of a step of an optimizer that takes sparse gradients only (all of
        ``grads`` sparse or None: checked before): one row-sparse call per gradient,
        each checked (:meth:`_sparse_grad`); None where one would run dense (the general
        planning then takes over; it checks them again).  Changes nothing."""
        runs = []
        for i, g in enumerate(grads):
            if g is not None:
                sg, dense = self._sparse_grad(b, i, g, hp)
                if dense:
                    return None
                runs.append((i, i + 1, sg))
        return runs

    def _ensure(self, b, name):
        """Make state ``name`` of bucket ``b`` if it does not exist yet."""
        if name in self._row_states:
            b.ensure_row_state(name, self._fill(name))
        else:
            b.ensure_state(name, self._fill(name))

    def _sparse_call(self, b, hp, t, i, sg, memo=None):
        """The row-sparse kernel call of parameter ``i`` of bucket ``b`` at step ``t``.

        What does not change from step to step -- the state made, the parameter's
        slices of the flat parameter and state buffers as tables, and on the numba
        backend the kernel bound to them (:class:`fastadam.kernels.cpu_sparse.Bound`:
        its compiled entry points, the scalars as Python floats) -- is kept in
        ``b.arrays`` (emptied whenever a state buffer is made or replaced).  ``memo``
        (a dict of this bucket's step, or None) keeps the step's scalars, which depend on
        ``hp``, the count ``t`` and (row-wise Adagrad) the row width only, keyed by
        ``(t, dim)``: the tables of one step at one count compute them once (26 tables:
        1.5 us each)."""
        bind = getattr(b.backend, "sparse_bind", None)
        key = ("sparse", t, sg.dim)
        got = None if memo is None else memo.get(key)
        if got is None:
            opt, fhp = self._sparse_step_hp(hp, t, sg)
            kname, scal = getattr(_scalars, opt)(
                b.np_dtype if bind is None else _scalars.python_floats(b.np_dtype), **fhp)
            got = (opt, fhp, kname, scal)
            if memo is not None:
                memo[key] = got
        opt, fhp, kname, scal = got
        vals = sg.vals
        if self._xf is not None and self._xf[0] != 1.0:     # GradScaler's unscaling
            vals = vals * b.np_dtype.type(self._xf[0])
        key = ("sparse", kname, i, sg.rows)
        c = b.arrays.get(key)
        if c is None:
            c = b.arrays[key] = self._sparse_tables(b, kname, i, sg, bind)
        names, tables, f = c
        if f is not None:
            f(sg.idx, vals, scal)
            return
        run = getattr(b.backend, "sparse_run", None)
        if run is not None:
            run(kname, tables, sg.idx, vals, scal)
        else:                                   # the NumPy reference
            b.backend.sparse_step(opt, dict(zip(("param",) + names, tables)), sg.idx, vals,
                                  fhp)

    def _sparse_tables(self, b, kname, i, sg, bind):
        """``(state names, tables, bound kernel or None)`` of parameter ``i``'s
        row-sparse calls of kernel ``kname``: its state made, its slices of the flat
        buffers as ``(rows, dim)`` tables (row-wise state ``(rows,)``)."""
        names = _scalars.SPARSE_KERNEL_STATES[kname]
        for name in names:
            self._ensure(b, name)
        h = b.host
        lo, n = b.offsets[i], sg.rows * sg.dim
        tables = [h["param"][lo:lo + n].reshape(sg.rows, sg.dim)]
        for name in names:
            if name in self._row_states:
                ro = b.row_offsets
                tables.append(h[name][ro[i]:ro[i + 1]])
            else:
                tables.append(h[name][lo:lo + n].reshape(sg.rows, sg.dim))
        return names, tables, None if bind is None else bind(kname, tables)
