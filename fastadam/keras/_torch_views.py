"""Keras variables on the torch backend as the arrays fastadam's kernels run on.

Imported by :mod:`fastadam.keras._keras_step` when a step on Keras variables
runs, after the backend was checked to be torch: it imports torch.

A Keras variable on torch holds a ``torch.nn.Parameter``; on the CPU its
storage is shared with a NumPy view, which the kernels update in place.
:func:`chunks` checks one call's (gradient, variable) pairs and returns the
kernel chunks:

* a variable of more than :data:`PACK_MAX` elements is its own chunk: the
  views of its parameter, of its gradient (autograd's tensor, not copied) and
  of its state;
* smaller variables of one dtype (and the same weight-decay setting) are
  *packed*: their parameters' storage, and their state variables' storage, are
  made views of one flat buffer each (``param.data = view``, as
  :mod:`fastadam.torch` does), their gradients are copied into a flat gradient
  buffer, and the pack is one chunk: one kernel call.

Why not one flat buffer for everything: Keras' train step sets every
``param.grad`` to None before ``backward()`` (``Module.zero_grad()``), so the
gradients arrive as new tensors each step and a flat gradient buffer costs a
copy of every gradient.  Measured (``fastadam bench --keras``, ``apply()``
alone, Adam, float32, min of 3 interleaved rounds on a 2-core machine): on
the ~8M-parameter MLP (1024-2048-2048-1024), one call per variable on the
variables' own storage 2.6 ms, the small ones (the biases) packed 2.9 ms,
everything in one flat buffer with the gradients copied in 9.2 ms (Keras'
own Adam 24.6 ms); on 64 variables of <= 2,304 elements: 391 us, 359 us and
349 us (Keras 1.7 ms).  Below ~4K elements a kernel call costs more than
copying the gradient (bare kernels, 8 variables of 256: 9.9 us as 8 calls,
4.5 us packed).

The views and the layout of the last call are kept (``opt._kviews``,
``opt._klayout``) while every parameter keeps its tensor and storage.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import _threads
from .._errors import BackendUnavailableError

#: variables of at most this many elements are packed into one flat buffer
PACK_MAX = 4096

_NP = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}


def follow_torch_threads():
    """Make the numba kernels launched from this thread use ``torch.get_num_threads()``
    threads, as Keras' torch ops do (and as :mod:`fastadam.torch` does):
    :func:`fastadam._threads.follow`."""
    _threads.follow(torch.get_num_threads())


def _call(f, *args):
    return f(*args)


#: ``eager(f, *args)`` calls ``f(*args)``, outside any torch.compile graph (TorchDynamo
#: cannot trace NumPy views of tensors nor numba kernels: it breaks the graph here)
eager = torch.compiler.disable(_call)


def tensor(v):
    """The torch tensor holding Keras variable ``v``'s storage (not an autocast copy)."""
    t = getattr(v, "_value", None)
    return v.value if t is None else t


def bump(v, by=1):
    """Add ``by`` to the scalar Keras variable ``v`` in place (``iterations``)."""
    tensor(v).add_(by)


def set_scalar(v, value):
    """Set the scalar Keras variable ``v`` to ``value`` in place."""
    tensor(v).fill_(value)


class _Entry:
    """One variable: its tensor, 1-D NumPy views of it and of its state; its pack."""

    __slots__ = ("var", "tensor", "ptr", "p", "state", "svars", "decay_on", "pack", "off")

    def __init__(self, var, t, state, svars, decay_on):
        self.var, self.tensor, self.ptr = var, t, t.data_ptr()
        self.p = t.detach().numpy().reshape(-1)
        self.state, self.svars, self.decay_on = state, svars, decay_on
        self.pack, self.off = None, 0


class _Pack:
    """Small variables sharing flat storage: parameter, gradient and state buffers."""

    __slots__ = ("entries", "p", "g", "state", "gviews")

    def __init__(self, entries):
        n = sum(e.p.size for e in entries)
        dtype = entries[0].p.dtype
        self.entries = entries
        self.p = np.empty(n, dtype)                # NumPy memory (see fastadam.torch)
        self.g = np.empty(n, dtype)
        self.state = {name: np.empty(n, dtype) for name in entries[0].state}
        self.gviews = []
        off = 0
        for e in entries:
            k = e.p.size
            self.p[off:off + k] = e.p
            _adopt(e.tensor, self.p[off:off + k])
            for name, a in self.state.items():
                a[off:off + k] = e.state[name]
                _adopt(tensor(e.svars[name]), a[off:off + k])
                e.state[name] = a[off:off + k]
            e.p, e.pack, e.off, e.ptr = self.p[off:off + k], self, off, e.tensor.data_ptr()
            self.gviews.append(self.g[off:off + k])
            off += k


def _adopt(t, flat_view):
    """Make tensor ``t``'s storage ``flat_view`` (its values already copied there)."""
    with torch.no_grad():
        t.data = torch.from_numpy(flat_view).view(t.shape)


def _entry(opt, i, v, t):
    """Check variable ``i`` and make its views (state: Keras' optimizer variables)."""
    if t.dtype not in _NP:
        raise TypeError(f"variables[{i}] ({v.path}) has dtype {v.dtype}; fastadam.keras "
                        "updates float32 and float64 variables")
    if t.device.type != "cpu":
        raise BackendUnavailableError(
            f"variables[{i}] ({v.path}) is on {t.device}; fastadam.keras updates Keras "
            "variables on the CPU (CUDA is not wired yet: use keras.optimizers there)")
    if not t.is_contiguous():
        raise ValueError(f"variables[{i}] ({v.path}) is not contiguous")
    k = opt._get_variable_index(v)
    svars = {name: vs[k] for name, vs in opt._kstate.items()}
    state = {name: tensor(s).detach().numpy().reshape(-1) for name, s in svars.items()}
    decay_on = opt.weight_decay is not None and opt._use_weight_decay(v)
    return _Entry(v, t, state, svars, decay_on)


def _grad(i, g, e):
    """Gradient ``i`` as a 1-D array of the variable's dtype (cast as Keras' ops cast it)."""
    t = e.tensor
    if isinstance(g, torch.Tensor):
        if g.shape != t.shape:
            raise ValueError(f"grads[{i}] has shape {tuple(g.shape)}, but variables[{i}] "
                             f"has {tuple(t.shape)}")
        if g.device != t.device:
            raise ValueError(f"grads[{i}] is on {g.device}, variables[{i}] on {t.device}")
        if g.dtype != t.dtype:
            g = g.to(t.dtype)
        a = g.detach().contiguous().numpy().reshape(-1)
    elif isinstance(g, np.ndarray):
        if g.shape != tuple(t.shape):
            raise ValueError(f"grads[{i}] has shape {g.shape}, but variables[{i}] has "
                             f"{tuple(t.shape)}")
        a = np.ascontiguousarray(g, dtype=e.p.dtype).reshape(-1)
    elif hasattr(g, "value") and hasattr(g, "path"):     # a Keras variable
        return _grad(i, tensor(g), e)
    else:
        raise TypeError(f"grads[{i}] must be a torch.Tensor (or a numpy.ndarray), got "
                        f"{type(g).__name__}")
    if a.size and np.may_share_memory(a, e.p):
        raise ValueError(f"grads[{i}] shares memory with variables[{i}]")
    return a


def _packs(opt, entries):
    """Group the small variables of a call into packs (reusing one that still fits)."""
    groups: dict = {}
    if not opt.clipnorm:                   # clipnorm scales each variable on its own
        for e in entries:
            if e.p.size <= PACK_MAX:
                groups.setdefault((e.p.dtype, e.decay_on), []).append(e)
    packs = []
    for members in groups.values():
        if len(members) < 2:
            continue
        old = members[0].pack
        if old is None or len(old.entries) != len(members) \
                or any(e.pack is not old for e in members):
            old = _Pack(members)
        packs.append(old)
    return packs


class _Layout:
    """The chunks' structure for one call's variables: packs, then single variables."""

    __slots__ = ("key", "entries", "packs", "singles")

    def __init__(self, key, entries, packs):
        self.key, self.entries = key, entries
        where = {id(e): k for k, e in enumerate(entries)}
        # (pack, the positions of its members' gradients in the call)
        self.packs = [(p, [where[id(e)] for e in p.entries]) for p in packs]
        packed = {id(e) for p in packs for e in p.entries}
        self.singles = [(k, e) for k, e in enumerate(entries) if id(e) not in packed]

    def still_valid(self, variables):
        for e, v in zip(self.entries, variables):
            t = tensor(v)
            if t is not e.tensor or t.data_ptr() != e.ptr:
                return False
        return True


def chunks(opt, pairs):
    """Check ``pairs`` ((index, grad, variable)); return the kernel chunks.

    Each chunk is ``(param, grad, state, decay_on)``: 1-D NumPy arrays (the
    state by name).  Nothing the user sees is written before every check has
    passed; then small variables may be moved into (or between) packs, their
    values unchanged, and their gradients copied into the pack's buffer.
    """
    variables = [v for _, _, v in pairs]
    key = (bool(opt.clipnorm),) + tuple(map(id, variables))   # clipnorm: no packs
    lay = opt._klayout
    if lay is None or lay.key != key or not lay.still_valid(variables):
        cache = opt._kviews
        entries = []
        for i, _, v in pairs:
            t = tensor(v)
            e = cache.get(id(v))
            if e is None or e.var is not v or e.tensor is not t or t.data_ptr() != e.ptr:
                e = cache[id(v)] = _entry(opt, i, v, t)
            entries.append(e)
        lay = None
    else:
        entries = lay.entries
    grads = [_grad(i, g, e) for (i, g, _), e in zip(pairs, entries)]
    if lay is None:
        lay = opt._klayout = _Layout(key, entries, _packs(opt, entries))
    out = []
    for pack, where in lay.packs:
        for k, gv in zip(where, pack.gviews):
            np.copyto(gv, grads[k])
        out.append((pack.p, pack.g, pack.state, pack.entries[0].decay_on))
    for k, e in lay.singles:
        out.append((e.p, grads[k], e.state, e.decay_on))
    return out
