"""FlatParams: many parameter arrays living in one contiguous buffer per dtype.

A fused optimizer step is one kernel call per *buffer*, not per tensor, so the
arrays of a model are copied once into a single flat buffer (one per dtype) and
handed back as views into it.  The caller's model code keeps using the views;
the optimizer sees one long 1-D array.  A matching flat gradient buffer gets
the same layout, and so does every optimizer state buffer.
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass, field

import numpy as np

from . import _alloc
from ._validate import FLOAT_DTYPES
from .rules.formats import param_format


@dataclass
class FlatBuffer:
    """The parameters of one dtype: a flat data buffer, a flat grad buffer, the layout.

    Attributes
    ----------
    dtype : numpy.dtype
    data, grad : ndarray
        1-D contiguous buffers of ``size`` elements.
    keys : list
        The caller's keys (dict input) or positions (list input) of the members.
    offsets, shapes : list
        Where each member starts in the buffer, and its shape.
    """

    dtype: np.dtype
    data: np.ndarray
    grad: np.ndarray
    keys: list = field(default_factory=list)
    offsets: list = field(default_factory=list)
    shapes: list = field(default_factory=list)

    @property
    def size(self) -> int:
        """Number of elements in the buffer."""
        return int(self.data.shape[0])

    def views(self, flat: np.ndarray) -> list:
        """Views of ``flat`` (laid out like this buffer) shaped as the members."""
        out = []
        for off, shape in zip(self.offsets, self.shapes):
            n = int(np.prod(shape, dtype=np.int64))
            out.append(flat[off:off + n].reshape(shape))
        return out


def _not_updated(a: np.ndarray) -> str | None:
    """Why the caller would expect step() to update ``a``'s memory, though it cannot.

    Every parameter is copied into the flat buffer; the caller then reads the
    buffer's view.  An array that owns its C-contiguous, writeable memory is
    simply superseded by that view.  For the others the copy is a trap: a strided
    view (``W.T``, ``big[:, :3]``) or a slice of a larger array leaves that array
    stale, memory that belongs to another object (``tensor.numpy()``, a memory
    map) is never written back, and a read-only array was never meant to change.
    Returns the reason in words, or None when the copy surprises no one.
    """
    if not a.flags.writeable:
        return "is read-only"
    if not a.flags.c_contiguous:
        return "is not C-contiguous (a transpose or a strided slice of another array)"
    base = a.base
    if isinstance(base, np.ndarray):
        if base.nbytes > a.nbytes:
            return "is a slice of a larger array"
        return None
    if base is not None:
        if isinstance(base, memoryview) and base.obj is not None:
            base = base.obj                  # np.frombuffer: the buffer's owner
        kind = type(base)
        name = kind.__name__ if kind.__module__ == "builtins" else \
            f"{kind.__module__}.{kind.__name__}"
        return f"views memory owned by a {name}"
    return None


def _caller_stacklevel() -> int:
    """The ``stacklevel`` of the first frame outside fastadam (the user's call)."""
    pkg = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(pkg):
        frame, level = frame.f_back, level + 1
    return level


class FlatParams:
    """Parameters flattened into one contiguous buffer per dtype.

    Parameters
    ----------
    params : dict of str -> ndarray, or list/tuple of ndarray
        The arrays to flatten: float32 or float64, any shape, each a distinct
        array; also float16 and ``ml_dtypes.bfloat16`` (low-precision
        parameters, which :class:`fastadam.Adam` / :class:`fastadam.AdamW`
        optimize with float32 master weights).  Their values are copied once;
        afterwards :attr:`params` holds views into the flat buffers, in the
        same container type and order.
    replace : bool, default False
        Also put the views into the given dict or list (``params[k] = view``),
        so code holding that container sees the flat-backed arrays (the
        optimizers of :mod:`fastadam.optim` always do this).  A tuple cannot
        take them: ``replace=True`` with a tuple is a TypeError.  Each entry is
        replaced right after its array is copied, so an array that nothing else
        references is released then: the flattening's peak memory is the
        parameters plus about the largest array, not twice the parameters.

    Warns
    -----
    UserWarning
        Once per parameter (naming its key or index) whose own memory will
        never see an update: an array that is read-only, not C-contiguous (a
        transpose, a strided slice), a slice of a larger array, or a view of
        memory another object owns (``tensor.numpy()``, a memory map).  Its
        values are copied like any other's; read and write the parameter
        through its view, ``params[k]`` (``opt.params[k]``), or pass an array
        that owns C-contiguous, writeable memory (e.g. ``a.copy()``).  Raised
        before anything is copied, so ``-W error`` turns it into a refusal that
        changes nothing.

    Attributes
    ----------
    buffers : list of FlatBuffer
        One per dtype, in order of first appearance.
    params, grads : dict or list
        Views of the parameters and of their gradients (zero-filled), with the
        caller's keys.  Write gradients into ``grads[k][...]``.

    Examples
    --------
    >>> import numpy as np, fastadam
    >>> fp = fastadam.FlatParams({"w": np.ones((2, 3)), "b": np.zeros(3)})
    >>> fp.buffers[0].data.shape
    (9,)
    >>> fp.params["w"].base is not None
    True
    """

    def __init__(self, params, *, replace: bool = False):
        if isinstance(params, dict):
            self._is_dict = True
            items = list(params.items())
        elif isinstance(params, (list, tuple)):
            self._is_dict = False
            items = list(enumerate(params))
        else:
            raise TypeError("params must be a dict of name -> ndarray or a list of ndarrays, "
                            f"got {type(params).__name__}")
        if replace and isinstance(params, tuple):
            raise TypeError("params is a tuple, which cannot take the views of the flat "
                            "buffer (replace=True): pass a list (its entries are replaced by "
                            "the views) or a dict")
        seen = {}
        by_dtype: dict = {}
        stale = []
        order = [k for k, _ in items]
        a = None
        for k, a in items:
            if not isinstance(a, np.ndarray):
                raise TypeError(f"parameter {k!r} must be a numpy.ndarray, got {type(a).__name__}")
            if a.dtype not in FLOAT_DTYPES and param_format(a.dtype) is None:
                raise TypeError(f"parameter {k!r} has dtype {a.dtype}; only float32 and "
                                "float64 parameters can be optimized (and float16 / bfloat16 "
                                "ones by Adam / AdamW, with float32 master weights)")
            if id(a) in seen:
                raise ValueError(f"parameter {k!r} is the same array as {seen[id(a)]!r}")
            seen[id(a)] = k
            why = _not_updated(a)
            if why is not None:
                stale.append((k, why))
            # the layout only: no reference to the array is kept past this loop, so that
            # with ``replace`` each one can be released as soon as it is copied
            by_dtype.setdefault(a.dtype, []).append((k, int(a.size), tuple(a.shape)))
        del items, a
        if stale:
            level = _caller_stacklevel()
            for k, why in stale:
                use = (f"use the view your dict / list now holds (opt.params[{k!r}])" if replace
                       else f"use its view fp.params[{k!r}] (FlatParams(..., replace=True) "
                       "also puts it into your dict / list)")
                warnings.warn(
                    f"parameter {k!r} {why}: step() updates a copy of it in the flat buffer, "
                    f"never this array or the memory it views; {use}, or pass a C-contiguous, "
                    "writeable array that owns its memory (e.g. a.copy()) to silence this "
                    "warning", UserWarning, stacklevel=level)
        # Memory: ``np.empty`` and ``np.zeros`` of a large buffer commit no page until it
        # is written (the gradient buffer's until the first gradient is), and with
        # ``replace`` each array is swapped for its view right after its copy, so that an
        # array nobody else holds is released before the next is copied: construction
        # then adds about the largest array, not a second copy of every parameter.
        # Every buffer is allocated before the first array is swapped for its view.
        self.buffers: list = []
        for dtype, members in by_dtype.items():
            total = sum(n for _, n, _ in members)
            self.buffers.append(FlatBuffer(dtype=np.dtype(dtype),
                                           data=_alloc.empty(total, dtype),
                                           grad=_alloc.zeros(total, dtype)))
        for fb, members in zip(self.buffers, by_dtype.values()):
            data = fb.data
            off = 0
            for k, n, shape in members:
                view = data[off:off + n].reshape(shape)
                view[...] = params[k]
                if replace:
                    params[k] = view
                fb.keys.append(k)
                fb.offsets.append(off)
                fb.shapes.append(shape)
                off += n
        self._n = len(order)
        self._order = order
        self.params = self._assemble(lambda fb: fb.views(fb.data))
        self.grads = self._assemble(lambda fb: fb.views(fb.grad))
        if replace:
            for k in self._order:
                params[k] = self.params[k]

    # -- copy / pickle ---------------------------------------------------------------
    def __getstate__(self):
        """What ``copy.deepcopy`` and ``pickle`` keep: the flat buffers and the layout,
        not the views (copied on their own they would no longer view the buffers)."""
        d = dict(self.__dict__)
        del d["params"], d["grads"]
        return d

    def __setstate__(self, d):
        """Rebuild from :meth:`__getstate__`: the buffers copied into aligned memory
        (:mod:`fastadam._alloc`) and the views of them made again."""
        self.__dict__.update(d)
        for fb in self.buffers:
            fb.data, fb.grad = _alloc.copy(fb.data), _alloc.copy(fb.grad)
        self.params = self._assemble(lambda fb: fb.views(fb.data))
        self.grads = self._assemble(lambda fb: fb.views(fb.grad))

    # -- layout helpers ------------------------------------------------------------
    def _assemble(self, per_buffer):
        found = {}
        for fb in self.buffers:
            for k, v in zip(fb.keys, per_buffer(fb)):
                found[k] = v
        if self._is_dict:
            return {k: found[k] for k in self._order}
        return [found[k] for k in self._order]

    @property
    def keys(self) -> list:
        """The parameters' keys (dict input) or positions (list input), in order."""
        return list(self._order)

    @property
    def size(self) -> int:
        """Total number of elements over all buffers."""
        return sum(fb.size for fb in self.buffers)

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        desc = ", ".join(f"{fb.dtype}: {len(fb.keys)} arrays / {fb.size} elements"
                         for fb in self.buffers)
        return f"FlatParams({desc})"

    def zero_grad(self) -> None:
        """Fill every flat gradient buffer with zeros."""
        for fb in self.buffers:
            fb.grad.fill(0)

    def unflatten(self, flat) -> dict | list:
        """Views of a flat array laid out like one of the buffers, with the caller's keys.

        Parameters
        ----------
        flat : ndarray
            1-D, with the dtype and size of one of :attr:`buffers` (e.g. an
            optimizer state buffer).

        Returns
        -------
        dict or list
            The members of that buffer, as views of ``flat`` (only those members:
            in a mixed-dtype FlatParams the others live in other buffers).
        """
        flat = np.asarray(flat)
        if flat.ndim != 1:
            raise ValueError(f"flat must be 1-D, got shape {flat.shape}")
        for fb in self.buffers:
            if fb.dtype == flat.dtype and fb.size == flat.shape[0]:
                views = fb.views(flat)
                if self._is_dict:
                    return dict(zip(fb.keys, views))
                return views
        raise ValueError(f"no buffer has dtype {flat.dtype} and size {flat.shape[0]}; "
                         f"buffers: {[(str(fb.dtype), fb.size) for fb in self.buffers]}")

    def flatten(self, arrays) -> list:
        """Copy arrays laid out like the parameters into new flat arrays, one per buffer.

        Parameters
        ----------
        arrays : dict or list
            Same keys and shapes as the parameters (values are cast to each
            buffer's dtype).
        """
        out = []
        for fb in self.buffers:
            flat = _alloc.empty(fb.size, fb.dtype)
            for k, off, shape in zip(fb.keys, fb.offsets, fb.shapes):
                a = np.asarray(arrays[k])
                if a.shape != shape:
                    raise ValueError(f"{k!r} has shape {a.shape}, expected {shape}")
                flat[off:off + a.size] = a.reshape(-1)
            out.append(flat)
        return out

    def set_grads(self, grads) -> None:
        """Copy gradients (same keys and shapes as the parameters) into the flat grad buffers.

        All shapes are checked before anything is copied.
        """
        flats = self.flatten(grads)
        for fb, f in zip(self.buffers, flats):
            fb.grad[...] = f
