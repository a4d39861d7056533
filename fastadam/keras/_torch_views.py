"""Keras variables on the torch backend as the arrays fastadam's kernels run on.

Imported by :mod:`fastadam.keras._keras_step` when a step on Keras variables
runs, after the backend was checked to be torch: it imports torch.

A Keras variable on torch holds a ``torch.nn.Parameter``.  On the CPU its
storage is shared with a NumPy view, which the host kernels update in place
(:class:`_Host`); on a CUDA device the kernels of fastadam's cuda backend run on
1-D torch tensors over that storage (:class:`_Device`: no copy, launched on
torch's current stream), the packs' flat buffers and the state are device
memory, and the gradient norms are reduced there (:func:`sumsq`: one copy of
all the sums to the host per step).  Everything else -- the checks, the layout,
the packs, the per-step scalars, the kernels' names and arguments -- is the
same code for both: :func:`chunks` checks one call's (gradient, variable) pairs
and returns the kernel chunks:

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

from .. import _alloc, _backends, _threads
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


class _Host:
    """Keras variables on the CPU: NumPy views of their storage, run by the host
    kernels (:mod:`fastadam.kernels.cpu` / :mod:`~fastadam.kernels.cpu_keras`)."""

    device = False

    @staticmethod
    def flat(t):
        return t.detach().numpy().reshape(-1)

    @staticmethod
    def empty(n, t):
        return _alloc.empty(n, _NP[t.dtype])    # aligned NumPy memory (see fastadam.torch)

    @staticmethod
    def adopt(t, flat_view):
        """Make tensor ``t``'s storage ``flat_view`` (its values already copied there)."""
        with torch.no_grad():
            t.data = torch.from_numpy(flat_view).view(t.shape)

    @staticmethod
    def from_tensor(g, t):
        if g.dtype != t.dtype:
            g = g.to(t.dtype)
        return g.detach().contiguous().numpy().reshape(-1)

    @staticmethod
    def from_numpy(g, t):
        return np.ascontiguousarray(g, dtype=_NP[t.dtype]).reshape(-1)

    @staticmethod
    def overlap(a, b):
        return bool(a.size) and np.may_share_memory(a, b)

    @staticmethod
    def gather(flat, views, grads):
        for gv, g in zip(views, grads):
            np.copyto(gv, g)

    @staticmethod
    def clip_values(opt, g):
        return opt._clip_values(g)


class _Device:
    """Keras variables on a CUDA device: 1-D torch tensors over their storage, run by
    the cuda kernels (:mod:`fastadam.kernels.cuda` / :mod:`~fastadam.kernels.cuda_keras`)
    on the tensors themselves; new buffers are made on the variables' device."""

    device = True

    @staticmethod
    def flat(t):
        return t.detach().view(-1)

    @staticmethod
    def empty(n, t):
        return torch.empty(n, dtype=t.dtype, device=t.device)

    @staticmethod
    def adopt(t, flat_view):
        with torch.no_grad():
            t.data = flat_view.view(t.shape)

    @staticmethod
    def from_tensor(g, t):
        if g.dtype != t.dtype:
            g = g.to(t.dtype)
        return g.detach().contiguous().view(-1)

    @staticmethod
    def from_numpy(g, t):
        """A host gradient for a device variable: copied to the device."""
        a = np.ascontiguousarray(g, dtype=_NP[t.dtype]).reshape(-1)
        return torch.from_numpy(a).to(t.device)

    @staticmethod
    def overlap(a, b):
        n = a.numel() * a.element_size()
        m = b.numel() * b.element_size()
        return bool(n and m) and a.data_ptr() < b.data_ptr() + m \
            and b.data_ptr() < a.data_ptr() + n

    @staticmethod
    def gather(flat, views, grads):
        torch.cat(grads, out=flat)              # one copy for the whole pack

    @staticmethod
    def clip_values(opt, g):
        """``clip(g, -clipvalue, clipvalue)`` (unscaled first) on the device, into a
        scratch tensor kept between steps (as :meth:`GradientTransformMixin._clip_values`)."""
        key = ("device", g.dtype, g.device)
        buf = opt._scratch.get(key)
        if buf is None or buf.numel() < g.numel():
            buf = opt._scratch[key] = torch.empty(g.numel(), dtype=g.dtype, device=g.device)
        out = buf[:g.numel()]
        c = _NP[g.dtype].type
        clip = float(c(opt.clipvalue))          # the buffer's precision, as on the host
        if opt.loss_scale_factor:
            torch.mul(g, float(c(1.0 / opt.loss_scale_factor)), out=out)
            torch.clamp(out, -clip, clip, out=out)
        else:
            torch.clamp(g, -clip, clip, out=out)
        return out


def is_cuda(t) -> bool:
    """Whether tensor ``t`` is on a CUDA device (the device path)."""
    return t.device.type == "cuda"


def sumsq(grads):
    """The sum of squares of each gradient (host arrays or device tensors), as floats:
    NumPy's dot for host arrays; on each device one dot per gradient, in the
    gradient's precision, and one copy of all of them to the host."""
    out = [None] * len(grads)
    by_device: dict = {}
    for k, g in enumerate(grads):
        if isinstance(g, np.ndarray):
            out[k] = float(np.vdot(g, g))
        else:
            by_device.setdefault(g.device, []).append(k)
    for ks in by_device.values():
        dots = torch.stack([torch.dot(grads[k], grads[k]).to(torch.float64) for k in ks])
        for k, s in zip(ks, dots.tolist()):
            out[k] = s
    return out


class Chunk:
    """One kernel call: 1-D arrays (``p``, ``g``, ``state`` by name) of ``n`` elements
    of NumPy dtype ``dtype``; ``ops`` is :class:`_Host` or :class:`_Device`."""

    __slots__ = ("p", "g", "state", "decay_on", "n", "dtype", "ops")

    def __init__(self, p, g, state, decay_on, n, dtype, ops):
        self.p, self.g, self.state, self.decay_on = p, g, state, decay_on
        self.n, self.dtype, self.ops = n, dtype, ops


class _Entry:
    """One variable: its tensor, 1-D views of it and of its state; its pack."""

    __slots__ = ("var", "tensor", "ptr", "p", "state", "svars", "decay_on", "pack", "off",
                 "ops", "n", "dtype")

    def __init__(self, var, t, state, svars, decay_on, ops):
        self.var, self.tensor, self.ptr = var, t, t.data_ptr()
        self.ops, self.n, self.dtype = ops, t.numel(), _NP[t.dtype]
        self.p = ops.flat(t)
        self.state, self.svars, self.decay_on = state, svars, decay_on
        self.pack, self.off = None, 0


class _Pack:
    """Small variables sharing flat storage: parameter, gradient and state buffers
    (NumPy memory for CPU variables, device memory for CUDA ones)."""

    __slots__ = ("entries", "p", "g", "state", "gviews", "n")

    def __init__(self, entries):
        e0 = entries[0]
        ops, t0 = e0.ops, e0.tensor
        n = self.n = sum(e.n for e in entries)
        self.entries = entries
        self.p = ops.empty(n, t0)
        self.g = ops.empty(n, t0)
        self.state = {name: ops.empty(n, t0) for name in e0.state}
        self.gviews = []
        off = 0
        for e in entries:
            k = e.n
            self.p[off:off + k] = e.p
            ops.adopt(e.tensor, self.p[off:off + k])
            for name, a in self.state.items():
                a[off:off + k] = e.state[name]
                ops.adopt(tensor(e.svars[name]), a[off:off + k])
                e.state[name] = a[off:off + k]
            e.p, e.pack, e.off, e.ptr = self.p[off:off + k], self, off, e.tensor.data_ptr()
            self.gviews.append(self.g[off:off + k])
            off += k


def _device_ops(opt, i, v, t):
    """:class:`_Device` for variable ``i`` on a CUDA device, once the cuda backend is
    known to run here (else a clear refusal)."""
    if opt.backend != "auto":
        raise ValueError(
            f"variables[{i}] ({v.path}) is on {t.device}, but backend={opt.backend!r} runs "
            "on host memory; use backend='auto' (the cuda kernels) for variables on a GPU")
    try:
        _backends.get_backend("cuda")
    except BackendUnavailableError as err:
        raise BackendUnavailableError(
            f"variables[{i}] ({v.path}) is on {t.device}: fastadam.keras updates Keras "
            f"variables on a GPU with fastadam's cuda backend, which cannot run here "
            f"({err}).  What works: install the CUDA kernels' compiler (pip install "
            f"'fastadam[cuda]', with an NVIDIA driver); or keep the model on the CPU; or "
            f"use keras.optimizers.{type(opt).__name__} on the GPU.") from None
    return _Device


def _entry(opt, i, v, t):
    """Check variable ``i`` and make its views (state: Keras' optimizer variables)."""
    if t.dtype not in _NP:
        raise TypeError(f"variables[{i}] ({v.path}) has dtype {v.dtype}; fastadam.keras "
                        "updates float32 and float64 variables")
    if is_cuda(t):
        ops = _device_ops(opt, i, v, t)
    elif t.device.type == "cpu":
        ops = _Host
    else:
        raise BackendUnavailableError(
            f"variables[{i}] ({v.path}) is on {t.device}; fastadam.keras updates Keras "
            f"variables on the CPU and on CUDA GPUs: use keras.optimizers."
            f"{type(opt).__name__} on {t.device.type!r}")
    if not t.is_contiguous():
        raise ValueError(f"variables[{i}] ({v.path}) is not contiguous")
    k = opt._get_variable_index(v)
    svars = {name: vs[k] for name, vs in opt._kstate.items()}
    state = {}
    for name, s in svars.items():
        st = tensor(s)
        if st.device != t.device:    # the state lives where its variable does
            with torch.no_grad():
                st.data = st.detach().to(t.device)
        state[name] = ops.flat(tensor(s))
    decay_on = opt.weight_decay is not None and opt._use_weight_decay(v)
    return _Entry(v, t, state, svars, decay_on, ops)


def _grad(i, g, e):
    """Gradient ``i`` as a 1-D array of the variable's dtype (cast as Keras' ops cast it),
    on the variable's device."""
    t = e.tensor
    if isinstance(g, torch.Tensor):
        if g.shape != t.shape:
            raise ValueError(f"grads[{i}] has shape {tuple(g.shape)}, but variables[{i}] "
                             f"has {tuple(t.shape)}")
        if g.device != t.device:
            raise ValueError(f"grads[{i}] is on {g.device}, variables[{i}] on {t.device}")
        a = e.ops.from_tensor(g, t)
    elif isinstance(g, np.ndarray):
        if g.shape != tuple(t.shape):
            raise ValueError(f"grads[{i}] has shape {g.shape}, but variables[{i}] has "
                             f"{tuple(t.shape)}")
        a = e.ops.from_numpy(g, t)
    elif hasattr(g, "value") and hasattr(g, "path"):     # a Keras variable
        return _grad(i, tensor(g), e)
    else:
        raise TypeError(f"grads[{i}] must be a torch.Tensor (or a numpy.ndarray), got "
                        f"{type(g).__name__}")
    if e.ops.overlap(a, e.p):
        raise ValueError(f"grads[{i}] shares memory with variables[{i}]")
    return a


def _packs(opt, entries):
    """Group the small variables of a call into packs (reusing one that still fits)."""
    groups: dict = {}
    if not opt.clipnorm:                   # clipnorm scales each variable on its own
        for e in entries:
            if e.n <= PACK_MAX:
                groups.setdefault((e.dtype, e.tensor.device, e.decay_on), []).append(e)
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

    Each chunk is a :class:`Chunk`: 1-D arrays (NumPy views for CPU variables, torch
    tensors for CUDA ones; the state by name) and whether weight decay applies.
    Nothing the user sees is written before every check has passed; then small
    variables may be moved into (or between) packs, their values unchanged, and
    their gradients copied into the pack's buffer.  (A state variable that Keras
    made on another device than its variable's is moved there when first seen,
    its values unchanged.)
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
        e0 = pack.entries[0]
        e0.ops.gather(pack.g, pack.gviews, [grads[k] for k in where])
        out.append(Chunk(pack.p, pack.g, pack.state, e0.decay_on, pack.n, e0.dtype, e0.ops))
    for k, e in lay.singles:
        out.append(Chunk(e.p, grads[k], e.state, e.decay_on, e.n, e.dtype, e.ops))
    return out
