"""The flat buffers of a param group, and the storage engines hand back.

A :class:`_Bucket` holds the parameters of one (param group, dtype, device):
the flat data and gradient tensors (each parameter's ``.data`` / ``.grad`` a
view of them), the flat state tensors and their per-parameter views, the
per-parameter step counts, and the NumPy (CPU) or tensor (CUDA) arrays the
kernels are called on.  :func:`_flat_tensor` allocates every flat buffer.

:class:`_BufferMixin` is the part of :class:`~fastadam.torch.base.FlatOptimizer`
that makes and keeps the buckets: the backend of a device, flattening a param
group into buckets, pointing ``optimizer.state[p]`` at the flat views, and
taking the storage of parameters that an engine moved after construction
(ZeroRedundancyOptimizer's parameter buckets, an FSDP1 FlatParameter) as the
flat buffer, or writing the step back to it.  DTensor parameters (FSDP2) are
refused at construction (:func:`_is_dtensor`).
"""

from __future__ import annotations

import mmap

import numpy as np
import torch
from torch.optim.optimizer import _get_scalar_dtype

from .. import _alloc, _backends, _scalars
from .. import lowp as _lowp
from .tracked import _Params

_NP_DTYPES = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}
#: Low-precision parameter dtypes (Adam / AdamW, float32 master weights, CPU) -> format
_LOWP_PARAMS = {torch.float16: "float16", torch.bfloat16: "bfloat16"}


def _u16(t):
    """The uint16 NumPy view of a 2-byte CPU tensor's bits (float16 / bfloat16)."""
    return t.view(torch.int16).numpy().view(np.uint16)


def _flat_tensor(n: int, dtype, device, fill=None):
    """A new 1-D tensor of ``n`` elements (uninitialised when ``fill`` is None).

    On the CPU the memory comes from :mod:`fastadam._alloc` and is wrapped
    zero-copy: page-aligned from 64 KiB (NumPy's own buffers are 16-byte aligned,
    and AVX-512 loads and stores that span two cache lines made a step up to 1.6x
    slower at 8M params, 2.0x at 32M), with transparent huge pages asked for on
    large buffers (``madvise``), which torch's allocator does not do.  With THP in its common ``madvise`` mode, an
    Adam step over 32M float32 elements measured 20.0 ms on torch-allocated
    memory against 17.0 ms on NumPy-allocated memory (TLB misses), so every
    flat buffer of the CPU adapter is allocated this way (the flat gradient:
    :func:`_lazy_zeros`).
    """
    if device.type != "cpu":
        if fill is None:
            return torch.empty(n, dtype=dtype, device=device)
        return torch.full((n,), fill, dtype=dtype, device=device)
    if dtype == torch.bfloat16:          # NumPy has no bfloat16: same bits as int16
        if fill not in (None, 0):
            raise ValueError("bfloat16 flat buffers are only made zero-filled")
        return torch.from_numpy(_alloc.zeros(n, np.int16)).view(torch.bfloat16)
    npdt = torch.empty(0, dtype=dtype).numpy().dtype
    return torch.from_numpy(_alloc.empty(n, npdt) if fill is None
                            else _alloc.full(n, fill, npdt))


def _lazy_zeros(n: int, npdt):
    """``(tensor, mapping)``: ``n`` zeros of NumPy dtype ``npdt`` on the CPU, mapped on
    first touch (``mapping``: the :class:`fastadam._alloc.Mapping` to advise later;
    None below :data:`fastadam._alloc.HUGE_MIN` bytes or where ``madvise`` is missing,
    then a plain zero-filled array): :func:`fastadam._alloc.lazy_zeros`.

    The flat gradient: no page costs memory before it is written, so with fresh
    gradient tensors each step (torch's default ``zero_grad()``, big gradients read
    where they are) only the slices of the small gradients copied in are resident.
    It starts without transparent huge pages (``MADV_NOHUGEPAGE``: a 2 MiB page per
    small gradient would be resident otherwise, 16 MiB for the 8 biases of 8 big
    ``Linear`` layers); :meth:`_Bucket.bind_grad` asks for them once gradients are
    bound to the buffer (``zero_grad(set_to_none=False)``), where the whole buffer
    is written each step and huge pages save TLB misses.
    """
    a, m = _alloc.lazy_zeros(n, npdt)
    return torch.from_numpy(a), m


def _view(flat, lo: int, hi: int, shape=None):
    """Elements ``lo:hi`` of the flat tensor ``flat``, as a tensor of ``shape``.

    On the CPU the view is a tensor with a storage of its own over those
    elements of the flat buffer's memory (``torch.from_numpy`` of a NumPy slice,
    which keeps the buffer alive), not a slice of the flat storage: pickling it
    (``pickle``, ``multiprocessing``, ``copy.deepcopy``, a per-tensor
    ``torch.save``) then writes its own elements, not the whole flat buffer.
    On CUDA, a slice of the flat tensor.
    """
    if flat.device.type != "cpu":
        v = flat[lo:hi]
    elif flat.dtype in _LOWP_PARAMS:
        v = torch.from_numpy(flat.view(torch.int16).numpy()[lo:hi]).view(flat.dtype)
    else:
        v = torch.from_numpy(flat.numpy()[lo:hi])
    return v if shape is None else v.view(shape)


_BLOCK = _lowp.INT8_BLOCK
_SCALES = ("exp_avg_scale", "exp_avg_sq_scale")
#: state_dtype -> {state name: torch dtype} (float32: the parameter's dtype)
_LOWP_TORCH = {"bfloat16": {"exp_avg": torch.bfloat16, "exp_avg_sq": torch.bfloat16},
               "int8": {"exp_avg": torch.int8, "exp_avg_sq": torch.uint8,
                        "exp_avg_scale": torch.float32, "exp_avg_sq_scale": torch.float32}}
_data_ptr = torch.Tensor.data_ptr


def _is_dtensor(t) -> bool:
    """Whether ``t`` is a ``torch.distributed.tensor.DTensor`` (without importing it)."""
    return any(c.__name__ == "DTensor" and c.__module__.startswith("torch.distributed")
               for c in type(t).__mro__)


class _Bucket:
    """The parameters of one (group, dtype, device): flat data, grad and state."""

    __slots__ = ("gi", "dtype", "np_dtype", "device", "cuda", "params", "offsets", "data",
                 "grad", "views", "gviews", "ptrs", "state", "sviews", "steps_t", "steps",
                 "mu_t", "mu", "host", "arrays", "uniform", "started", "all_started",
                 "backend", "run", "gnp", "sdt", "fmt", "base", "row_offsets", "shared",
                 "anchor", "probe", "noadopt", "gmap", "entry", "entries", "goffs",
                 "gradlist", "whole")

    def __init__(self, gi, params, backend, scalar_dtype, state_dtype="float32"):
        p0 = params[0]
        self.gi = gi
        self.dtype = p0.dtype
        # low-precision parameters: float32 master weights, scalars and state
        self.fmt = _LOWP_PARAMS.get(p0.dtype)
        self.np_dtype = _NP_DTYPES[torch.float32 if self.fmt else p0.dtype]
        self.device = p0.device
        self.cuda = p0.device.type == "cuda"
        self.params = list(params)
        self.sdt = state_dtype
        # int8 state: every parameter starts on a quantization block (zero padding
        # between parameters, which stays zero), so a run of parameters is whole blocks
        align = _BLOCK if state_dtype == "int8" else 1
        offs = [0]
        for p in params:
            offs.append(offs[-1] + -(-p.numel() // align) * align)
        self.offsets = offs
        n = offs[-1]
        self.data = _flat_tensor(n, self.dtype, self.device, 0 if align > 1 else None)
        self.gmap = None     # the flat gradient's mapping, until it has huge pages
        if self.cuda:
            self.grad = _flat_tensor(n, self.dtype, self.device, 0)
        elif self.dtype == torch.bfloat16:      # the same bits as int16
            g, self.gmap = _lazy_zeros(n, np.dtype(np.int16))
            self.grad = g.view(torch.bfloat16)
        else:
            self.grad, self.gmap = _lazy_zeros(n, torch.empty(0, dtype=self.dtype).numpy().dtype)
        # a torch view of the flat gradient, kept alive: zero_() of a CPU tensor with
        # no view uses memset, measured 450 ns against 285 ns with one (16 KiB, this
        # machine's glibc); the per-parameter views below have storages of their own
        self.anchor = self.grad[:0]
        self.views, self.gviews = [], []
        # parameters in shared memory (model.share_memory(): Hogwild workers) stay where
        # they are: the optimizer takes their memory as the flat buffer when they lie in
        # it back to back (_adopt), else steps a copy and writes it back each step
        self.shared = not self.cuda and any(p.is_shared() for p in params)
        with torch.no_grad():
            for i, p in enumerate(params):
                e = offs[i] + p.numel()
                v = _view(self.data, offs[i], e, p.shape)
                gv = _view(self.grad, offs[i], e, p.shape)
                v.copy_(p.detach())
                if not self.shared:
                    p.data = v
                if p.grad is not None and p.grad.layout == torch.strided:
                    self.bind_grad()
                    gv.copy_(p.grad)
                    p.grad = gv         # (a sparse gradient is left as it is)
                self.views.append(v)
                self.gviews.append(gv)
        self.ptrs = [_data_ptr(v) for v in self.views]
        self.noadopt = None  # the parameters' addresses when _adopt last failed
        # (index, address) of the first non-empty gradient view: zero_grad() checks that
        # its storage was not moved under it (model.share_memory(): step._regrid)
        k = next((i for i, p in enumerate(params) if p.numel()), None)
        self.probe = None if k is None or self.cuda else (k, self.gviews[k].data_ptr())
        self.state = {}      # name -> flat tensor
        self.sviews = {}     # name -> per-parameter views
        self.steps_t = torch.zeros(len(params), dtype=scalar_dtype)
        self.steps = self.steps_t.numpy()
        self.mu_t = self.mu = None
        self.host = {"param": self._host(self.data), "grad": self._host(self.grad)}
        # NumPy views of each parameter's slice of the flat gradient (CPU; None for
        # low-precision buffers, whose gradients torch copies)
        self.gnp = None if self.cuda or self.fmt else [g.numpy() for g in self.gviews]
        self.arrays = {}     # kernel name -> tuple of arrays in the kernel's order
        self.uniform = True  # every parameter has the same step count (and mu_product)
        self.started = [False] * len(params)
        self.all_started = False
        self.backend = backend
        self.run = getattr(backend, "run", None)
        # compiled entry points (numba, CPU): (kernel, parallel) -> f(*arrays, *scalars)
        self.entry = None if self.cuda else getattr(backend, "entry", None)
        self.entries = {}
        # (kernel name, entry point) of the last whole-buffer call with the gradients in
        # the flat buffer (fastadam.torch.step: called directly while the name matches)
        self.whole = None
        # gradient-list calls (fastadam.torch.gradlist): (first, end parameter) -> the
        # run's gradient offsets, from 0, and an array of its gradients' addresses
        self.goffs = {}
        # whether the kernels take a gradient list (numba CPU, plain float state)
        self.gradlist = self.entry is not None and state_dtype == "float32" and not self.fmt
        self.row_offsets = None

    def bind_grad(self):
        """Gradients are being bound to the flat gradient: let it have huge pages."""
        m = self.gmap
        if m is not None:
            self.gmap = None
            m.madvise(mmap.MADV_HUGEPAGE)

    def _host(self, t):
        if self.cuda:
            return t
        return _u16(t) if t.dtype in _LOWP_PARAMS else t.numpy()

    def ensure_state(self, name, fill):
        if name in self.state:
            return
        o = self.offsets
        if name == "master_param":          # float32 master weights: the parameters' values
            t = _flat_tensor(o[-1], torch.float32, self.device)
            with torch.no_grad():
                t.copy_(self.data)
        elif self.sdt == "float32":
            t = _flat_tensor(o[-1], torch.float32 if self.fmt else self.dtype, self.device,
                             fill)
        else:                               # every encoding of 0 is all-zero bits
            dt = _LOWP_TORCH[self.sdt][name]
            t = _flat_tensor(o[-1] // _BLOCK if name in _SCALES else o[-1], dt, self.device, 0)
        self.state[name] = t
        if name in _SCALES:                 # one float32 scale per block of each parameter
            self.sviews[name] = [_view(t, o[i] // _BLOCK, o[i] // _BLOCK + _lowp.nblocks(p.numel()))
                                 for i, p in enumerate(self.params)]
        else:
            self.sviews[name] = [_view(t, o[i], o[i] + p.numel(), p.shape)
                                 for i, p in enumerate(self.params)]
        # bf16 state: torch.bfloat16 tensors; the kernels see the same bits as uint16
        self.host[name] = self._host(t)
        self.arrays.clear()
        self.started = [False] * len(self.params)
        self.all_started = False

    def ensure_row_state(self, name, fill):
        """State ``name`` with one value per row (first dimension) of each parameter
        (row-wise Adagrad): a flat tensor of the rows of all, ``row_offsets`` apart."""
        if name in self.state:
            return
        ro = [0]
        for p in self.params:
            ro.append(ro[-1] + (p.shape[0] if p.dim() else 1))
        self.row_offsets = ro
        t = _flat_tensor(ro[-1], self.dtype, self.device, fill)
        self.state[name] = t
        self.sviews[name] = [_view(t, ro[i], ro[i + 1]) for i in range(len(self.params))]
        self.host[name] = self._host(t)
        self.arrays.clear()
        self.started = [False] * len(self.params)
        self.all_started = False

    def kernel_arrays(self, kname):
        a = self.arrays.get(kname)
        if a is None:
            h = self.host
            a = self.arrays[kname] = (h["param"], h["grad"]) + tuple(
                h[s] for s in _scalars.kernel_states(kname))
        return a


class _BufferMixin:
    """The buckets of a :class:`~fastadam.torch.base.FlatOptimizer`: making them,
    the state views of ``optimizer.state``, and engine-owned parameter storage."""

    def _backend_for(self, device):
        """The backend for tensors on ``device`` (resolved once per device type)."""
        be = self._backends.get(device.type)
        if be is not None:
            return be
        name = self._backend_name
        if device.type == "cuda":
            if name not in ("auto", "cuda"):
                raise ValueError(f"backend={name!r} cannot run on CUDA tensors; use "
                                 "backend='auto' or 'cuda'")
            be = _backends.get_backend("cuda")
        else:
            if name == "cuda":
                raise ValueError(f"backend='cuda' needs CUDA tensors; these parameters are "
                                 f"on {device}")
            be = _backends.resolve(name, np.empty(0, dtype=np.float32))
        self._backends[device.type] = be
        return be

    def _flatten_group(self, gi):
        group = self.param_groups[gi]
        by_key = {}
        for p in group["params"]:
            by_key.setdefault((p.dtype, p.device), []).append(p)
        for plist in by_key.values():
            b = _Bucket(gi, plist, self._backend_for(plist[0].device), _get_scalar_dtype(),
                        self._state_dtype)
            # stochastic rounding: element k of this bucket draws the bits of element
            # base + k of all the buckets, so no two buckets share a stream
            b.base = sum(x.offsets[-1] for x in self._buckets)
            if self._needs_mu:
                b.mu_t = torch.ones(len(plist), dtype=torch.float64)
                b.mu = b.mu_t.numpy()
            for i, p in enumerate(plist):
                self._where[p] = (b, i)
            self._buckets.append(b)
            if b.shared:
                self._adopt(b)          # the parameters' shared memory, if laid out flat
            if b.cuda:
                self._step_supports_amp_scaling = False
        plist = _Params(self._flag, group["params"])
        group["params"] = plist
        if gi < len(self._plists):
            self._plists[gi], self._gparams[gi] = plist, list(plist)
        else:
            self._plists.append(plist)
            self._gparams.append(list(plist))
        self._hp_cache.clear()

    def _populate(self, b, i):
        """Point ``self.state[p]`` at the flat views of parameter ``i`` of bucket ``b``."""
        st = self.state[b.params[i]]
        put = dict.__setitem__          # not an edit by the user (:mod:`.tracked`)
        if self._has_step:
            put(st, "step", _view(b.steps_t, i, i + 1, ()))
        if self._needs_mu:
            put(st, "mu_product", _view(b.mu_t, i, i + 1, ()))
        for name, views in b.sviews.items():
            put(st, name, views[i])
        b.started[i] = True

    @staticmethod
    def _finish(b, copy_back):
        if copy_back:
            with torch.no_grad():
                for i in copy_back:
                    b.params[i].detach().copy_(b.views[i])

    @staticmethod
    def _adopt(b) -> bool:
        """Take the parameters' new storage as the flat buffer (no copy) when they lie in
        it back to back in the bucket's order (ZeRO's bucket views, an FSDP FlatParameter).
        """
        ptrs = [_data_ptr(p) for p in b.params]
        if ptrs == b.noadopt:                # as at the last try: stepped by copy again
            return False
        b.noadopt = ptrs
        ps = [p.detach() for p in b.params]
        o = b.offsets
        nz = [(i, d) for i, d in enumerate(ps) if d.numel()]
        if not nz or any(o[i] + p.numel() != o[i + 1] for i, p in enumerate(ps)):
            return False                     # nothing to adopt, or a padded layout
        i0, d0 = nz[0]
        st = d0.untyped_storage()
        base = d0.storage_offset() - o[i0]
        for i, d in nz:
            if (not d.is_contiguous() or d.untyped_storage().data_ptr() != st.data_ptr()
                    or d.storage_offset() != base + o[i]):
                return False
        if base < 0 or (base + o[-1]) * d0.element_size() > st.nbytes():
            return False
        b.noadopt = None
        flat = torch.empty(0, dtype=b.dtype, device=b.device).set_(st, base, (o[-1],))
        b.data = flat
        b.views = [flat[o[i]:o[i + 1]].view(p.shape) for i, p in enumerate(b.params)]
        with torch.no_grad():
            for p, v in zip(b.params, b.views):
                if p.numel() == 0:
                    p.data = v
        b.ptrs = [_data_ptr(p) for p in b.params]
        b.host["param"] = b._host(flat)
        b.arrays.clear()
        return True
