r"""Drop-in ``torch.optim`` optimizers whose parameters live in one flat buffer.

``fastadam.torch.Adam(model.parameters(), lr=1e-3)`` replaces
``torch.optim.Adam(model.parameters(), lr=1e-3)``: same constructor, same
defaults, same math (torch.optim's single-tensor "for-loop" implementation),
same ``param_groups``, ``zero_grad``, ``step(closure)``, ``add_param_group``,
LR schedulers and ``state_dict`` format — and one fused kernel call per flat
buffer per step.

How it works
------------
On construction the parameters of each (param group, dtype, device) are
copied once into one contiguous flat tensor and each parameter's ``.data``
becomes a view of it; a flat gradient tensor of the same layout is made, and
each ``.grad`` is bound to a view of it, so autograd accumulates straight into
the flat buffer.  State tensors (``exp_avg``, ...) are flat too, and
``optimizer.state[p]`` holds per-parameter views of them, as torch.optim would
hold separate tensors.  ``step()`` then runs one kernel over each flat buffer:
on CPU the compiled (numba, else Cython) kernel on the zero-copy NumPy view of
the tensors; on CUDA the ``cuda`` backend on the tensors themselves.

torch.optim's semantics are kept exactly:

* ``zero_grad()`` (``set_to_none=True``) sets every ``.grad`` to None, as torch
  does; the next backward then makes fresh gradient tensors.  ``step()`` reads
  a big one where it is (a kernel call of its own over that parameter's slice
  of the flat buffers: no copy) and copies small ones into the flat gradient
  buffer, where they join their neighbours' call.
  ``zero_grad(set_to_none=False)`` zeroes the flat gradient buffer in one fill
  and binds every non-None ``.grad`` to its view, so backward accumulates in
  place and ``step()`` is one call per buffer.
* A parameter whose ``.grad`` is None at ``step()`` is left untouched and its
  step count does not advance (step counts are per parameter, as in torch);
  the kernel runs over the contiguous runs of parameters that have a gradient
  and share a step count — in the common case, the whole buffer at once.
* A gradient tensor the user assigned (``p.grad = t``) is used (as above).
* Hyperparameters are read from ``param_groups`` at every step, so LR
  schedulers and manual changes take effect; validated values are cached
  while a group's values do not change.
* ``state_dict()`` is torch.optim's format (per-parameter ``step`` tensors,
  ``exp_avg``, ``exp_avg_sq``, NAdam's ``mu_product``, ...), so
  ``torch.optim.Adam`` loads a fastadam checkpoint and ``fastadam.torch.Adam``
  loads a torch.optim one; ``load_state_dict`` copies into the flat buffers.

Mixed precision: every optimizer sets ``_step_supports_amp_scaling = True``, so
``torch.amp.GradScaler`` hands it ``grad_scale`` / ``found_inf`` as it does torch's
fused Adam; ``step()`` unscales inside the kernel and skips the step on inf/nan
(parameters, state and step counts exactly unchanged).  ``max_grad_norm`` /
``clip_value`` (attributes; constructor options of Adam/AdamW) clip in the step, and
``Adam(..., state_dtype="bfloat16"|"int8")`` stores the moments in 2 or about 1 byte
(:mod:`fastadam.lowp`).  CPU tensors only for these.

Parameters that an engine moves after construction (``p.data`` replaced by a view
of its own storage: ZeroRedundancyOptimizer's parameter buckets, FSDP1) are updated
where they now are: ``p.data`` is never re-pointed.  DTensor parameters (FSDP2)
raise ``TypeError``.

``foreach`` and ``fused`` are accepted and have no effect (fastadam is always
fused).  ``capturable=True`` and ``differentiable=True`` raise
:class:`NotImplementedError`.  Parameters must be float32 or float64, on the
CPU or a CUDA device; Adam and AdamW also take float16 / bfloat16 CPU
parameters, updated through float32 master weights (``param_rounding``,
:mod:`fastadam.lowp.master`).  Importing this module imports torch; ``import
fastadam`` alone does not.
"""

from __future__ import annotations

import functools
import math
import operator
from copy import deepcopy

import numpy as np
import torch
from torch.optim.optimizer import Optimizer as _TorchOptimizer
from torch.optim.optimizer import _get_scalar_dtype

from . import _backends, _hparams, _scalars
from . import _validate as _v
from . import lowp as _lowp

try:  # private in torch, but stable since 2.0; only used to skip an empty loop
    from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks
except ImportError:  # pragma: no cover - older/newer torch
    _global_optimizer_pre_hooks = _global_optimizer_post_hooks = None

__all__ = ["Adam", "AdamW", "RMSprop", "Adagrad", "SGD", "Adadelta", "NAdam", "Adamax",
           "FlatOptimizer"]

#: A gradient tensor that is not a view of the flat buffer (a fresh one from
#: autograd after ``zero_grad()``, or one the user assigned) and has at least this
#: many elements is used where it is, in a kernel call of its own; smaller ones are
#: copied into the flat buffer, where they join their neighbours' call.
_IN_PLACE_MIN = 16384

_NP_DTYPES = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}
#: Low-precision parameter dtypes (Adam / AdamW, float32 master weights, CPU) -> format
_LOWP_PARAMS = {torch.float16: "float16", torch.bfloat16: "bfloat16"}


def _u16(t):
    """The uint16 NumPy view of a 2-byte CPU tensor's bits (float16 / bfloat16)."""
    return t.view(torch.int16).numpy().view(np.uint16)


def _frozen(v):
    """A hashable, comparable snapshot of a hyperparameter value and its type."""
    if type(v) is list or type(v) is tuple:
        return (type(v), tuple(map(_frozen, v)))
    return (type(v), v)


def _flat_tensor(n: int, dtype, device, fill=None):
    """A new 1-D tensor of ``n`` elements (uninitialised when ``fill`` is None).

    On the CPU the memory comes from NumPy and is wrapped zero-copy: NumPy asks
    the kernel for transparent huge pages on large buffers (``madvise``) and
    torch's allocator does not.  With THP in its common ``madvise`` mode, an
    Adam step over 32M float32 elements measured 20.0 ms on torch-allocated
    memory against 17.0 ms on NumPy-allocated memory (TLB misses), so every
    flat buffer of the CPU adapter is allocated this way.
    """
    if device.type != "cpu":
        if fill is None:
            return torch.empty(n, dtype=dtype, device=device)
        return torch.full((n,), fill, dtype=dtype, device=device)
    if dtype == torch.bfloat16:          # NumPy has no bfloat16: same bits as int16
        if fill not in (None, 0):
            raise ValueError("bfloat16 flat buffers are only made zero-filled")
        return torch.from_numpy(np.zeros(n, dtype=np.int16)).view(torch.bfloat16)
    npdt = torch.empty(0, dtype=dtype).numpy().dtype
    a = np.empty(n, dtype=npdt) if fill is None else np.full(n, fill, dtype=npdt)
    return torch.from_numpy(a)
_BLOCK = _lowp.INT8_BLOCK
_SCALES = ("exp_avg_scale", "exp_avg_sq_scale")
#: state_dtype -> {state name: torch dtype} (float32: the parameter's dtype)
_LOWP_TORCH = {"bfloat16": {"exp_avg": torch.bfloat16, "exp_avg_sq": torch.bfloat16},
               "int8": {"exp_avg": torch.int8, "exp_avg_sq": torch.uint8,
                        "exp_avg_scale": torch.float32, "exp_avg_sq_scale": torch.float32}}
_is = operator.is_
_grad_of = operator.attrgetter("grad")
_data_ptr = torch.Tensor.data_ptr


def _is_dtensor(t) -> bool:
    """Whether ``t`` is a ``torch.distributed.tensor.DTensor`` (without importing it)."""
    return any(c.__name__ == "DTensor" and c.__module__.startswith("torch.distributed")
               for c in type(t).__mro__)


def _profiler_enabled() -> bool:
    return torch.autograd._profiler_enabled()


def _num(name, value):
    """A hyperparameter as a Python number (a 1-element tensor is read out)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"Tensor {name} must be 1-element")
        return value.item()
    return value


def _betas(group):
    b = group["betas"]
    if isinstance(b, (str, bytes)) or not hasattr(b, "__len__") or len(b) != 2:
        raise TypeError(f"betas must be a pair (beta1, beta2), got {b!r}")
    return _num("betas[0]", b[0]), _num("betas[1]", b[1])


class _Bucket:
    """The parameters of one (group, dtype, device): flat data, grad and state."""

    __slots__ = ("gi", "dtype", "np_dtype", "device", "cuda", "params", "offsets", "data",
                 "grad", "views", "gviews", "ptrs", "state", "sviews", "steps_t", "steps",
                 "mu_t", "mu", "host", "arrays", "uniform", "started", "all_started",
                 "backend", "run", "gnp", "sdt", "fmt", "base")

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
        self.grad = _flat_tensor(n, self.dtype, self.device, 0)
        self.views, self.gviews = [], []
        with torch.no_grad():
            for i, p in enumerate(params):
                e = offs[i] + p.numel()
                v = self.data[offs[i]:e].view(p.shape)
                gv = self.grad[offs[i]:e].view(p.shape)
                v.copy_(p.detach())
                p.data = v
                if p.grad is not None:
                    gv.copy_(p.grad)
                    p.grad = gv
                self.views.append(v)
                self.gviews.append(gv)
        self.ptrs = [_data_ptr(p) for p in params]
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
            self.sviews[name] = [t[o[i] // _BLOCK:o[i] // _BLOCK + _lowp.nblocks(p.numel())]
                                 for i, p in enumerate(self.params)]
        else:
            self.sviews[name] = [t[o[i]:o[i] + p.numel()].view(p.shape)
                                 for i, p in enumerate(self.params)]
        # bf16 state: torch.bfloat16 tensors; the kernels see the same bits as uint16
        self.host[name] = self._host(t)
        self.arrays.clear()
        self.started = [False] * len(self.params)
        self.all_started = False

    def kernel_arrays(self, kname):
        a = self.arrays.get(kname)
        if a is None:
            h = self.host
            a = self.arrays[kname] = (h["param"], h["grad"]) + tuple(
                h[s] for s in _scalars.KERNEL_STATES[kname])
        return a


class FlatOptimizer(_TorchOptimizer):
    """Base of the fastadam.torch optimizers: a ``torch.optim.Optimizer`` over flat buffers.

    Subclasses set ``_opt`` (the step's name in :mod:`fastadam._scalars`),
    ``_hp_keys`` (the group keys the step reads), the flags ``_has_step``,
    ``_needs_step``, ``_needs_first``, ``_needs_mu``, and implement
    ``_group_hparams(group)`` (validated hyperparameters of a group).

    Parameters
    ----------
    params : iterable of Tensor, of (name, Tensor) or of dict
        As for ``torch.optim.Optimizer``.  float32 / float64 tensors on the CPU
        or a CUDA device.  Each parameter's ``.data`` is moved into a flat
        buffer (its values are kept; ``p.data`` becomes a view).
    defaults : dict
        torch.optim's defaults of the optimizer.
    backend : str, default "auto"
        ``"auto"`` (numba for CPU tensors, else cython, else numpy; cuda for CUDA
        tensors), or one of ``"numba"``, ``"cython"``, ``"numpy"``, ``"cuda"``.

    Attributes
    ----------
    param_groups, state, defaults
        As in torch.optim; ``state[p]`` holds views of the flat state buffers.
    """

    _opt = ""
    _hp_keys: tuple = ()
    _has_step = True       # "step" is kept in the per-parameter state
    _needs_step = False    # the kernel's scalars depend on the step count
    _needs_first = False   # SGD: first momentum step
    _needs_mu = False      # NAdam: mu_product
    _flag_keys = ("capturable", "differentiable")
    #: torch.amp.GradScaler sets ``grad_scale`` / ``found_inf`` on the optimizer and calls
    #: ``step()``, which unscales inside the kernel and skips on inf/nan (as torch's fused
    #: Adam); False while a parameter is on CUDA (GradScaler then unscales the gradients).
    _step_supports_amp_scaling = True
    #: clip the global gradient norm / each gradient element in every step (None: off)
    max_grad_norm = None
    clip_value = None
    #: steps skipped because of inf/nan gradients; the last global gradient norm
    skipped_steps = 0
    last_grad_norm = None
    _xf = None          # (gscale, clip) of the kernel calls during a transformed step

    def __init__(self, params, defaults, backend="auto", state_dtype="float32"):
        self._state_dtype = _lowp.check_state_dtype(state_dtype)
        if not isinstance(backend, str):
            raise TypeError(f"backend must be a str, got {type(backend).__name__}")
        if backend not in ("auto",) + _backends.BACKEND_NAMES:
            raise ValueError(f"Invalid backend: {backend!r}; expected 'auto' or one of "
                             f"{_backends.BACKEND_NAMES}")
        self._check_flags(defaults)
        self._group_hparams(defaults)       # validate before anything is touched
        self._backend_name = backend
        self._backends = {}                 # device type -> backend
        self._buckets = []
        self._where = {}                    # param -> (bucket, index)
        self._hp_cache = {}
        self._scalar = getattr(_scalars, self._opt)
        self._group_key = operator.itemgetter(*self._hp_keys)
        super().__init__(params, defaults)

    # -- torch.optim plumbing ----------------------------------------------------------
    def _patch_step_function(self) -> None:
        # torch wraps step() in a profiler range and hook loops (~10 us per call);
        # do that only while a profiler or a step hook is active.
        self._zero_grad_profile_name = (
            f"Optimizer.zero_grad#{self.__class__.__name__}.zero_grad")
        cls = self.__class__
        if getattr(cls.__dict__.get("step"), "hooked", False):
            return
        raw = cls.step
        while getattr(raw, "hooked", False):     # a base class's wrapper: wrap its target
            raw = raw.__wrapped__
        slow = _TorchOptimizer.profile_hook_step(raw)

        @functools.wraps(raw)
        def step(self, *args, **kwargs):
            if (self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks
                    or _global_optimizer_pre_hooks is None or _global_optimizer_pre_hooks
                    or _global_optimizer_post_hooks or _profiler_enabled()):
                return slow(self, *args, **kwargs)
            return raw(self, *args, **kwargs)

        step.hooked = True
        cls.step = step

    def __getstate__(self):
        raise TypeError(f"{type(self).__name__} holds views of flat buffers and cannot be "
                        "pickled or deep-copied; save optimizer.state_dict() instead")

    def _check_flags(self, group):
        for k in self._flag_keys:
            if group.get(k, False):
                raise NotImplementedError(
                    f"fastadam.torch.{type(self).__name__} does not support {k}=True")

    def add_param_group(self, param_group: dict) -> None:
        """Add a param group (a dict with ``"params"`` and optional hyperparameters).

        Its parameters are moved into new flat buffers.  Everything is checked
        before anything is changed.
        """
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group).__name__}")
        if "params" not in param_group:
            raise TypeError("param_group must have a 'params' key")
        params = param_group["params"]
        if isinstance(params, torch.Tensor):
            params = [params]
        elif isinstance(params, set):
            raise TypeError("optimizer parameters need to be organized in ordered collections, "
                            "but the ordering of tensors in sets will change between runs. "
                            "Please use a list instead.")
        else:
            params = list(params)
        param_group["params"] = params
        tensors = [p[1] if isinstance(p, tuple) and len(p) == 2 else p for p in params]
        merged = dict(self.defaults)
        merged.update((k, v) for k, v in param_group.items() if k != "params")
        self._check_flags(merged)
        self._group_hparams(merged)
        seen = set()
        for i, p in enumerate(tensors):
            if not isinstance(p, torch.Tensor):
                raise TypeError("optimizer can only optimize Tensors, but one of the params "
                                f"is {torch.typename(p)}")
            lowp = p.dtype in _LOWP_PARAMS
            if lowp and self._opt != "adam":
                raise TypeError(f"fastadam.torch.{type(self).__name__} optimizes float32 and "
                                f"float64 tensors; parameter {i} of the group has dtype "
                                f"{p.dtype} (float16 / bfloat16 parameters are supported by "
                                "Adam and AdamW, with float32 master weights)")
            if p.dtype not in _NP_DTYPES and not lowp:
                raise TypeError(f"fastadam.torch optimizes float32 and float64 tensors (and "
                                f"float16 / bfloat16 ones with Adam / AdamW); parameter {i} "
                                f"of the group has dtype {p.dtype}")
            if p.device.type not in ("cpu", "cuda"):
                raise TypeError(f"fastadam.torch runs on CPU and CUDA tensors; parameter {i} "
                                f"of the group is on {p.device}")
            if _is_dtensor(p):
                raise TypeError(
                    f"parameter {i} of the group is a DTensor (FSDP2 fully_shard or tensor "
                    "parallelism); fastadam.torch optimizes plain tensors only: use FSDP1 "
                    "(FullyShardedDataParallel), ZeroRedundancyOptimizer or DDP, or "
                    "torch.optim for DTensor parameters")
            if p.is_sparse or p.layout != torch.strided:
                raise TypeError(f"parameter {i} of the group is not a dense (strided) tensor")
            if lowp:
                if p.device.type != "cpu":
                    raise _backends.BackendUnavailableError(
                        f"{p.dtype} parameters (master weights) run on CPU tensors in "
                        f"fastadam.torch; parameter {i} of the group is on {p.device} (on "
                        "CUDA, fastadam.functional.adam_ takes them with master_param=)")
                if self._state_dtype == "int8":
                    raise ValueError(f"state_dtype='int8' is not supported with {p.dtype} "
                                    "parameters (master weights); use 'float32' or 'bfloat16'")
                if merged.get("amsgrad"):
                    raise ValueError(f"amsgrad=True is not supported with {p.dtype} parameters "
                                     "(master weights)")
            if self._state_dtype != "float32":
                if p.dtype != torch.float32 and not lowp:
                    raise TypeError(f"state_dtype={self._state_dtype!r} needs float32 "
                                    f"parameters; parameter {i} of the group has dtype "
                                    f"{p.dtype}")
                if p.device.type != "cpu":
                    raise ValueError(f"state_dtype={self._state_dtype!r} runs on CPU tensors "
                                     f"only; parameter {i} of the group is on {p.device}")
            if id(p) in seen:
                raise ValueError(f"parameter {i} of the group appears twice in it; each "
                                 "parameter can be optimized once")
            seen.add(id(p))
            if p in self._where:
                raise ValueError("some parameters appear in more than one parameter group")
            be = self._backend_for(p.device)
            if self._state_dtype != "float32" and be.name not in ("numba", "numpy"):
                raise _backends.BackendUnavailableError(
                    f"state_dtype={self._state_dtype!r} is implemented on the numba and numpy "
                    f"backends, not {be.name!r}")
            if lowp and be.name not in ("numba", "numpy"):
                raise _backends.BackendUnavailableError(
                    f"{p.dtype} parameters (master weights) are implemented on the numba and "
                    f"numpy backends, not {be.name!r}")
        super().add_param_group(param_group)
        self._flatten_group(len(self.param_groups) - 1)

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
            if b.cuda:
                self._step_supports_amp_scaling = False
        self._hp_cache.clear()

    # -- hyperparameters -----------------------------------------------------------------
    def _group_hparams(self, group) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def _fill(self, name) -> float:
        return 0.0

    def _hp_record(self, gi, group):
        """(validated hyperparameters, kernel name, state names) of a group, cached.

        The cache is keyed on a frozen snapshot of the group's values -- each with its
        type, lists and tuples copied item by item -- so an in-place edit
        (``group["betas"][0] = ...``) or a change of type (``amsgrad=1`` for ``True``)
        is validated again, never silently ignored.
        """
        vals = self._group_key(group)
        key = tuple(map(_frozen, vals))
        rec = self._hp_cache.get(gi)
        if rec is not None and rec[0] == key:
            return rec[1]
        self._check_flags(group)
        hp = self._group_hparams(group)
        kname = self._scalar(np.dtype(np.float64), **self._full(hp, 1, 0.5))[0]
        out = (hp, kname, _scalars.KERNEL_STATES[kname], self._advances(hp))
        if not any(isinstance(x, torch.Tensor) for x in vals):
            self._hp_cache[gi] = (key, out)
        return out

    def _full(self, hp, step, mu):
        """The hyperparameters of one kernel call (step-dependent values added)."""
        if self._needs_mu:
            return dict(hp, step=step, mu_product=mu)
        if self._needs_step:
            return dict(hp, step=step)
        if self._needs_first:
            return dict(hp, first=step == 1)
        return hp

    def _refresh_uniform(self, b):
        """Whether one kernel call can again cover the whole bucket (same scalars)."""
        s = b.steps
        if not s.size:
            b.uniform = True
        elif self._needs_step:
            b.uniform = bool(s.min() == s.max()) and (
                b.mu is None or bool(b.mu.min() == b.mu.max()))
        elif self._needs_first:
            b.uniform = bool((s > 0).all() or (s == 0).all())
        else:
            b.uniform = True

    def _advances(self, hp) -> bool:
        return True

    # -- zero_grad / step ----------------------------------------------------------------
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients, as ``torch.optim.Optimizer.zero_grad``.

        Parameters
        ----------
        set_to_none : bool, default True
            True: every ``.grad`` becomes None, as in torch; the next backward
            makes fresh gradient tensors, which ``step()`` reads where they are
            (big ones, a kernel call each) or copies into the flat buffer (small
            ones).  False: the flat gradient buffer is zeroed in one fill and every
            ``.grad`` that is not None becomes (stays) its view of it, so the next
            backward accumulates straight into the flat buffer and ``step()`` is
            one kernel call per buffer.  A ``.grad`` that is None stays None.
        """
        for b in self._buckets:
            if set_to_none:
                for p in b.params:
                    p.grad = None
                continue
            grads = list(map(_grad_of, b.params))
            if not all(map(_is, grads, b.gviews)):
                for p, g, v in zip(b.params, grads, b.gviews):
                    if g is not None and g is not v:
                        p.grad = v
            b.grad.zero_()

    def step(self, closure=None):
        """Perform one optimization step: one fused kernel call per flat buffer.

        Parameters
        ----------
        closure : callable, optional
            Re-evaluates the model and returns the loss (called with grad enabled).

        Returns
        -------
        The closure's loss, or None.

        Raises
        ------
        TypeError, ValueError, RuntimeError
            On a bad hyperparameter in ``param_groups`` or a bad gradient, before
            any parameter, gradient or state is changed.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        groups = self.param_groups
        plans = [self._plan(b, self._hp_record(b.gi, groups[b.gi])) for b in self._buckets]
        grad_scale = getattr(self, "grad_scale", None)      # set by torch.amp.GradScaler
        found_inf = getattr(self, "found_inf", None)
        if (grad_scale is None and found_inf is None and self.max_grad_norm is None
                and self.clip_value is None):
            for plan in plans:
                self._execute(*plan)
        else:
            self._transformed_step(plans, grad_scale, found_inf)
        return loss

    def _transformed_step(self, plans, grad_scale, found_inf):
        """A step with unscaling, inf/nan skipping and clipping (two passes).

        Pass 1 (only with ``max_grad_norm``, or ``grad_scale`` without
        ``found_inf``): :func:`fastadam.lowp.grad_stats` over every gradient the step
        uses -- the global squared norm of ``clamp(g / grad_scale, ±clip_value)``
        and whether every gradient is finite.  Pass 2, unless the step is skipped:
        the kernels with ``g -> clamp(g * coef / grad_scale, ±clip_value * coef)``
        folded in.  A skipped step changes no parameter, state or step count.
        """
        gs = None if grad_scale is None else _v.real("grad_scale", _num("grad_scale",
                                                                          grad_scale))
        clip_value, max_norm = self.clip_value, self.max_grad_norm
        if max_norm is not None:
            max_norm = _v.nonneg("max_grad_norm", max_norm, "max_grad_norm value")
        _lowp._transform_scalars(gs, None, clip_value)          # validate
        if found_inf is not None:
            if isinstance(found_inf, torch.Tensor):
                found_inf = _num("found_inf", found_inf)
            skip = _lowp._found_inf_value(found_inf)
        else:
            skip = False
        if any(p[0].cuda and p[4] for p in plans):
            raise NotImplementedError(
                "fastadam.torch: grad_scale, found_inf, max_grad_norm and clip_value are "
                "implemented for CPU tensors only (with CUDA tensors, torch.amp.GradScaler "
                "unscales the gradients itself; use torch.nn.utils.clip_grad_norm_)")
        if skip:
            self.skipped_steps += 1
            return
        backs = [self._prepare(*plan) for plan in plans]
        check_inf = max_norm is not None or (gs is not None and found_inf is None)
        sumsq, finite = 0.0, True
        if check_inf:
            grads, formats = [], []
            for b, _, _, _, runs in plans:
                o = b.offsets
                grads.extend(b.host["grad"][o[a]:o[z]] if g is None else
                             b._host(g.detach().reshape(-1)) for a, z, g in runs)
                formats.extend(b.fmt for _ in runs)
            sumsq, finite = _lowp.grad_stats(grads, grad_scale=gs, clip_value=clip_value,
                                             formats=formats)
        self.last_grad_norm = math.sqrt(sumsq) if max_norm is not None else None
        if check_inf and not finite:
            self.skipped_steps += 1
            return
        coef = None if max_norm is None else _lowp.clip_coef(math.sqrt(sumsq), max_norm)
        self._xf = _lowp._transform_scalars(gs, coef, clip_value)
        try:
            for (b, rec, _, _, runs), back in zip(plans, backs):
                if runs:
                    hp, kname, names, advances = rec
                    self._run(b, kname, names, hp, advances, runs)
                self._finish(b, back)
        finally:
            self._xf = None

    def _plan(self, b, rec):
        """Check one bucket and decide its runs; changes nothing."""
        params = b.params
        grads = list(map(_grad_of, params))
        bound = all(map(_is, grads, b.gviews))
        moved = list(map(_data_ptr, params)) != b.ptrs
        if bound and not moved and b.uniform:
            if self._needs_mu:
                self._check_mu(rec[0], int(b.steps[0]) + 1, float(b.mu[0]))
            return b, rec, (), (), ((0, len(params), None),)
        hp = rec[0]
        readopt = []
        if moved:
            for i, p in enumerate(params):
                if _data_ptr(p) != b.ptrs[i]:
                    if p.dtype != b.dtype or p.device != b.device or p.shape != b.views[i].shape:
                        raise RuntimeError(
                            f"parameter {i} of param group {b.gi} was replaced by a tensor of "
                            f"another dtype, device or shape ({p.dtype}, {p.device}, "
                            f"{tuple(p.shape)}) after the optimizer was made; create the "
                            "optimizer after moving or casting the model")
                    readopt.append(i)
        copies = []
        has = []          # per parameter: None (no grad), True (in the flat buffer), or the
        for i, (g, v) in enumerate(zip(grads, b.gviews)):     # grad tensor used in place
            if g is None:
                has.append(None)
                continue
            if g is not v:
                if g.is_sparse or g.layout != torch.strided:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse "
                                       "gradients")
                if g.shape != v.shape or g.dtype != b.dtype or g.device != b.device:
                    raise ValueError(
                        f"the gradient of parameter {i} of param group {b.gi} has shape "
                        f"{tuple(g.shape)}, dtype {g.dtype}, device {g.device}; expected "
                        f"{tuple(v.shape)}, {b.dtype}, {b.device}")
                if (g.numel() >= _IN_PLACE_MIN and g.is_contiguous() and not g.is_neg()
                        and b.sdt != "int8"):       # int8: runs must be whole blocks
                    has.append(g)           # big: its own kernel call, no copy
                    continue
                copies.append((i, g))       # small or strided: copied into the flat slot
            has.append(True)
        # runs: consecutive parameters whose gradients are in the flat buffer and that
        # share the step-dependent scalars; a gradient used in place is a run of its own
        if self._needs_mu:
            keys = list(zip(b.steps.tolist(), b.mu.tolist()))
        elif self._needs_step:
            keys = b.steps.tolist()
        elif self._needs_first and hp["momentum"] != 0:
            keys = (b.steps > 0).tolist()
        else:
            keys = None
        runs = []
        n = len(params)
        i = 0
        while i < n:
            h = has[i]
            if h is None:
                i += 1
                continue
            j = i + 1
            if h is not True:
                runs.append((i, j, h))
                i = j
                continue
            if keys is None:
                while j < n and has[j] is True:
                    j += 1
            else:
                k = keys[i]
                while j < n and has[j] is True and keys[j] == k:
                    j += 1
            runs.append((i, j, None))
            i = j
        if self._needs_mu:
            for a, _, _ in runs:
                self._check_mu(hp, int(b.steps[a]) + 1, float(b.mu[a]))
        return b, rec, readopt, copies, runs

    def _check_mu(self, hp, step, mu):
        pass

    def _execute(self, b, rec, readopt, copies, runs):
        back = self._prepare(b, rec, readopt, copies, runs)
        if runs:
            hp, kname, names, advances = rec
            self._run(b, kname, names, hp, advances, runs)
        self._finish(b, back)

    def _prepare(self, b, rec, readopt, copies, runs):
        """Moved parameters and foreign gradients into place; returns what to copy back."""
        copy_back = ()
        if readopt and b.fmt and "master_param" in b.state:
            # a low-precision parameter given new values (p.data = ...): its master takes
            # them, else the step would rewrite the parameter from the stale master
            m, o = b.state["master_param"], b.offsets
            with torch.no_grad():
                for i in readopt:
                    p = b.params[i].detach()
                    m[o[i]:o[i] + p.numel()].copy_(p.reshape(-1))
        if readopt and not self._adopt(b):
            # An engine owns these parameters' storage now (ZeroRedundancyOptimizer's
            # parameter buckets, FSDP's shards) and keeps reading it: step a copy and write
            # it back; never re-point p.data away from the engine's storage.
            with torch.no_grad():
                for i in readopt:
                    b.views[i].copy_(b.params[i].detach())
            copy_back = readopt
        if copies:
            with torch.no_grad():
                self._copy_grads(b, copies)
        return copy_back

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

    def _run(self, b, kname, names, hp, advances, runs):
        """The kernel calls of one bucket's step (its runs of parameters)."""
        arrays = b.arrays.get(kname)
        if arrays is None:
            for name in names + (_SCALES if b.sdt == "int8" else ()) + (
                    ("master_param",) if b.fmt else ()):
                b.ensure_state(name, self._fill(name))
            arrays = b.kernel_arrays(kname)
        special = b.sdt != "float32" or self._xf is not None or b.fmt is not None
        steps = b.steps
        n = len(b.params)
        if len(runs) == 1 and runs[0][1] - runs[0][0] == n and runs[0][2] is None:
            t = int(steps[0]) + 1 if n else 1                 # the whole buffer at once
            sc = self._scalars_of(b, hp, t, b.mu[0] if self._needs_mu and n else 1.0, {})
            if special:
                self._call_x(b, names, sc[0], 0, b.offsets[-1], None)
            else:
                self._call(b, kname, arrays, sc)
            if advances:
                steps += 1
                if self._needs_mu:
                    b.mu[:] = self._next_mu(hp, t, b.mu[0] if n else 1.0)
        else:
            offs = b.offsets
            memo = {}
            for a, z, g in runs:
                t = int(steps[a]) + 1
                mu = float(b.mu[a]) if self._needs_mu else 1.0
                lo, hi = offs[a], offs[z]
                if g is not None:
                    g = g.detach().reshape(-1)
                    g = g if b.cuda else b._host(g)
                if special:
                    self._call_x(b, names, self._scalars_of(b, hp, t, mu, memo)[0], lo, hi, g)
                else:
                    arr = tuple(x[lo:hi] for x in arrays)
                    if g is not None:
                        arr = (arr[0], g) + arr[2:]
                    self._call(b, kname, arr, self._scalars_of(b, hp, t, mu, memo))
                if advances:
                    steps[a:z] += 1
                    if self._needs_mu:
                        b.mu[a:z] = self._next_mu(hp, t, mu)
            self._refresh_uniform(b)
        if advances and not b.all_started:
            for a, z, _ in runs:
                for i in range(a, z):
                    self._populate(b, i)
            b.all_started = all(b.started)

    def _scalars_of(self, b, hp, t, mu, memo):
        """(full hyperparameters, kernel name, scalars) of a call at step ``t``, memoized."""
        key = (t, float(mu))
        r = memo.get(key)
        if r is None:
            fhp = self._full(hp, t, float(mu))
            k, scal = self._scalar(b.np_dtype, **fhp) if b.run is not None else (None, None)
            r = memo[key] = (fhp, k, scal)
        return r

    @staticmethod
    def _copy_grads(b, copies):
        """Copy foreign gradient tensors into the flat gradient buffer.

        On CPU with NumPy (a plain memcpy on this thread): a torch copy would wake
        torch's OpenMP pool between backward and the kernel's own thread pool.
        """
        if not b.cuda and b.gnp is not None:
            views = b.gnp
            try:
                srcs = [g.detach().numpy() for _, g in copies]
            except (RuntimeError, TypeError):   # e.g. a tensor with the neg/conj bit set
                srcs = None
            if srcs is not None:
                for (i, _), s in zip(copies, srcs):
                    np.copyto(views[i], s, casting="no")
                return
        torch._foreach_copy_([b.gviews[i] for i, _ in copies], [g for _, g in copies])

    def _call_x(self, b, names, fhp, lo, hi, g):
        """One call of a reduced-precision-state and/or transformed step over the
        elements ``lo:hi`` of a CPU bucket (``g``: a gradient used in place)."""
        if hi <= lo:
            return
        h = b.host
        named = {"param": h["param"][lo:hi], "grad": h["grad"][lo:hi] if g is None else g}
        for name in names:
            named[name] = h[name][lo:hi]
        if b.sdt == "int8":                 # lo, hi are multiples of the block size
            for name in _SCALES:
                named[name] = h[name][lo // _BLOCK:-(-hi // _BLOCK)]
        if b.fmt:
            named["master_param"] = h["master_param"][lo:hi]
        gscale, clip = self._xf or (1.0, math.inf)
        _lowp.step_arrays(b.backend, self._opt, named, fhp, state_dtype=b.sdt, gscale=gscale,
                          clip=clip, param_format=b.fmt,
                          param_rounding=getattr(self, "_param_rounding", "nearest"),
                          index_base=b.base + lo)

    def _call(self, b, kname, arrays, sc):
        """One kernel call over ``arrays`` (a run of parameters sharing one step)."""
        if arrays[0].shape[0] == 0:
            return
        fhp, k, scal = sc
        if b.run is not None:
            b.run(k, arrays, scal)
        else:
            named = {"param": arrays[0], "grad": arrays[1]}
            named.update(zip(_scalars.KERNEL_STATES[kname], arrays[2:]))
            b.backend.step(self._opt, named, fhp)

    def _next_mu(self, hp, t, mu):
        return float(mu) * _scalars.nadam_mu(hp["beta1"], hp["momentum_decay"], t)

    def _populate(self, b, i):
        """Point ``self.state[p]`` at the flat views of parameter ``i`` of bucket ``b``."""
        st = self.state[b.params[i]]
        if self._has_step:
            st["step"] = b.steps_t[i]
        if self._needs_mu:
            st["mu_product"] = b.mu_t[i]
        for name, views in b.sviews.items():
            st[name] = views[i]
        b.started[i] = True

    # -- checkpoints ---------------------------------------------------------------------
    def _state_names(self) -> tuple:
        names = []
        for k, v in _scalars.KERNEL_STATES.items():
            if k == self._opt or k.startswith(self._opt + "_"):
                names.extend(s for s in v if s not in names)
        if self._state_dtype == "int8":
            names.extend(_SCALES)
        return tuple(names)

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a checkpoint of torch.optim's format (from fastadam.torch or torch.optim).

        Values are copied into the flat buffers (cast to each parameter's dtype
        and device).  The hyperparameters of the saved param groups replace the
        current ones, except ``foreach``, ``fused``, ``capturable`` and
        ``differentiable``, which keep this optimizer's values.  Parameters
        without saved state start afresh.  Everything is checked before anything
        is changed.

        Raises
        ------
        TypeError, ValueError
            On a checkpoint that does not fit this optimizer.
        """
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        sd = state_dict.copy()
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            r = hook(self, sd)
            if r is not None:
                sd = r
        if "param_groups" not in sd or "state" not in sd:
            raise ValueError("state_dict must have 'state' and 'param_groups' entries")
        groups = self.param_groups
        saved_groups = deepcopy(sd["param_groups"])
        if len(groups) != len(saved_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        if any(len(g["params"]) != len(s["params"]) for g, s in zip(groups, saved_groups)):
            raise ValueError("loaded state dict contains a parameter group that doesn't match "
                             "the size of optimizer's group")
        id_map = {}
        for g, s in zip(groups, saved_groups):
            id_map.update(zip(s["params"], g["params"]))
        new_groups = []
        for g, s in zip(groups, saved_groups):
            new = dict(s)
            new["params"] = g["params"]
            if "param_names" in g and "param_names" not in s:
                new["param_names"] = g["param_names"]
            for k, v in self.defaults.items():
                new.setdefault(k, v)
            for k in ("foreach", "fused", "capturable", "differentiable"):
                if k in g:
                    new[k] = g[k]
            self._fix_loaded_group(new)
            self._group_hparams(new)
            new_groups.append(new)
        known = self._state_names()
        entries = []
        for k, v in sd["state"].items():
            p = id_map.get(k)
            if p is None:
                continue
            if not isinstance(v, dict):
                raise TypeError(f"state of parameter {k!r} must be a dict, got "
                                f"{type(v).__name__}")
            b, i = self._where[p]
            step, mu, tensors = None, None, {}
            for key, val in v.items():
                if val is None:         # e.g. SGD's momentum_buffer=None (momentum 0)
                    continue
                if key == "step" and self._has_step:
                    step = _v.real(f"step of parameter {k!r}", _num("step", val))
                    if step < 0 or not step.is_integer():
                        raise ValueError(f"Invalid step of parameter {k!r}: {val} (must be "
                                         "a count >= 0)")
                elif key == "mu_product" and self._needs_mu:
                    mu = _v.real("mu_product", _num("mu_product", val))
                elif key in known or (key == "master_param" and b.fmt):
                    if not isinstance(val, torch.Tensor):
                        raise TypeError(f"state {key!r} of parameter {k!r} must be a Tensor, "
                                        f"got {type(val).__name__}")
                    self._check_state_dtype(k, key, val, b.fmt)
                    want = _lowp.nblocks(p.numel()) if key in _SCALES else p.numel()
                    if val.numel() != want or val.is_complex():
                        raise ValueError(f"state {key!r} of parameter {k!r} has {val.numel()} "
                                         f"elements of {val.dtype}; the parameter has "
                                         f"{p.numel()} of {p.dtype}"
                                         + (" (one scale per 256-element block)"
                                            if key in _SCALES else ""))
                    # a private copy: the checkpoint may hold views of this optimizer's
                    # own flat buffers (opt.load_state_dict(opt.state_dict())), which the
                    # commit below refills before copying in
                    tensors[key] = val.detach().clone()
                else:
                    raise ValueError(f"unexpected state {key!r} of parameter {k!r} for "
                                     f"{type(self).__name__}")
            if v and self._has_step and step is None:
                raise ValueError(f"state of parameter {k!r} has no 'step'")
            if self._state_dtype == "int8" and "exp_avg" in tensors:
                for key in _SCALES:
                    if key not in tensors:
                        raise ValueError(f"state of parameter {k!r} has no {key!r} (needed "
                                         "with state_dtype='int8')")
            if self._needs_first:
                step = 1 if "momentum_buffer" in tensors else 0
            if v and self._needs_mu and mu is None:
                raise ValueError(f"state of parameter {k!r} has no 'mu_product'")
            entries.append((b, i, v, step, mu, tensors))
        # -- commit
        for b in self._buckets:
            for p in b.params:
                self.state.pop(p, None)
            b.steps[:] = 0
            if b.mu is not None:
                b.mu[:] = 1.0
            for name, t in b.state.items():
                if name == "master_param":      # unless loaded: the parameters' values
                    t.copy_(b.data)
                else:
                    t.fill_(self._fill(name))
            b.started = [False] * len(b.params)
            b.all_started = False
        for gi, new in enumerate(new_groups):
            groups[gi] = new
        self._hp_cache.clear()
        with torch.no_grad():
            for b, i, v, step, mu, tensors in entries:
                for name, val in tensors.items():
                    b.ensure_state(name, self._fill(name))
                    view = b.sviews[name][i]
                    view.copy_(val.reshape(view.shape))
                if step is not None:
                    b.steps[i] = step
                if mu is not None:
                    b.mu[i] = mu
        for b, i, v, step, mu, tensors in entries:
            if v:
                self._populate(b, i)
        for b in self._buckets:
            self._refresh_uniform(b)
            b.all_started = all(b.started)
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)

    def _fix_loaded_group(self, group):
        pass

    def _check_state_dtype(self, k, key, val, fmt=None):
        """A saved state tensor must have this optimizer's ``state_dtype`` storage.

        ``fmt``: the parameter's low-precision format, if any: its ``master_param``
        is any floating tensor, and float32 moments may come as the parameter's
        dtype (torch.optim keeps a bfloat16 parameter's moments in bfloat16).
        """
        sd = self._state_dtype
        lowp_dtypes = (torch.bfloat16, torch.int8, torch.uint8)
        if key == "master_param" or (fmt and sd == "float32"):
            ok = val.is_floating_point() and key not in _SCALES
            want = "a floating-point tensor"
        elif sd == "float32":
            ok = val.is_floating_point() and val.dtype not in lowp_dtypes and key not in _SCALES
            want = "a float32/float64 tensor"
        else:
            want = _LOWP_TORCH[sd].get(key)
            ok = val.dtype == want
            want = want or "no such state"
        if not ok:
            raise ValueError(
                f"state {key!r} of parameter {k!r} has dtype {val.dtype}, but this optimizer "
                f"stores state_dtype={sd!r} ({want}); a checkpoint saved with another "
                "state_dtype cannot be loaded (build the optimizer with the checkpoint's "
                "state_dtype)")


_COMMON_DOC = """foreach, fused : bool, optional
        Accepted for compatibility; no effect (fastadam always runs one fused
        kernel per flat buffer).
    capturable, differentiable : bool, default False
        Where torch.optim's class has them: not supported, True raises
        NotImplementedError.
    backend : str, default "auto"
        ``"auto"``, ``"numba"``, ``"cython"``, ``"numpy"`` (the reference) or
        ``"cuda"``; a fastadam extension, keyword only.
"""


class Adam(FlatOptimizer):
    r"""Adam, as ``torch.optim.Adam``, one fused kernel per flat buffer.

    For each parameter with a gradient, at its step :math:`t`:

    .. math::

        &g \leftarrow \pm\nabla_\theta f(\theta) \;(+\lambda\theta
            \text{ unless decoupled}) \\
        &\theta \leftarrow \theta(1-\gamma\lambda) \quad\text{(decoupled\_weight\_decay)} \\
        &m \leftarrow \beta_1 m + (1-\beta_1) g \\
        &v \leftarrow \beta_2 v + (1-\beta_2) g^2 \\
        &\hat v \leftarrow \max(\hat v, v) \quad\text{(amsgrad; else } \hat v = v) \\
        &\theta \leftarrow \theta - \frac{\gamma}{1-\beta_1^t}
            \frac{m}{\sqrt{\hat v}/\sqrt{1-\beta_2^t} + \epsilon}

    Parameters
    ----------
    params : iterable
        Tensors, (name, tensor) pairs or param-group dicts, as for torch.optim.
    lr : float, default 1e-3
        :math:`\gamma`.
    betas : (float, float), default (0.9, 0.999)
    eps : float, default 1e-8
    weight_decay : float, default 0
        :math:`\lambda`.
    amsgrad : bool, default False
    maximize : bool, default False
    decoupled_weight_decay : bool, default False
        AdamW's decay of the parameter instead of L2 added to the gradient.
    state_dtype : {"float32", "bfloat16", "int8"}, default "float32"
        Storage of the moments (keyword only; reduced ones need float32 CPU
        parameters, the numba or numpy backend and no amsgrad):
        ``"bfloat16"``: ``torch.bfloat16`` tensors written with stochastic
        rounding (4 bytes/param of state); ``"int8"``: int8 ``exp_avg`` and uint8
        (log-coded) ``exp_avg_sq`` with a float32 absmax per 256-element block in
        ``exp_avg_scale`` / ``exp_avg_sq_scale`` (about 2.03 bytes/param).  The
        update is float32 math on the decoded moments; see docs/lowp.md.
    max_grad_norm : float, optional
        Clip the global L2 norm of all gradients of the step to this, as
        ``torch.nn.utils.clip_grad_norm_`` (kept in ``last_grad_norm``); a
        non-finite gradient then skips the step.  Keyword only; CPU only.
    clip_value : float, optional
        Clamp each gradient element to ``[-clip_value, clip_value]`` (before the
        norm clipping), as ``clip_grad_value_``.  Keyword only; CPU only.
    param_rounding : {"nearest", "stochastic"}, default "nearest"
        ``torch.float16`` / ``torch.bfloat16`` parameters (CPU, numba or numpy
        backend, state_dtype ``"float32"`` or ``"bfloat16"``, no amsgrad) are
        updated through float32 master weights ``w`` (per-parameter state
        ``master_param``): the rule above runs on ``w`` with the decoded
        gradient, then :math:`\theta \leftarrow \mathrm{round}(w)` in the same
        pass, to nearest even or stochastically (unbiased, reproducible).
        ``torch.amp.GradScaler`` works with them (float16 included: the
        unscaling is fused into the step).  See :mod:`fastadam.lowp.master`.
    {common}
    Notes
    -----
    State per parameter (``optimizer.state[p]``, views of flat buffers):
    ``step``, ``exp_avg``, ``exp_avg_sq`` and with amsgrad ``max_exp_avg_sq``
    (int8 state: also ``exp_avg_scale``, ``exp_avg_sq_scale``; float16 / bfloat16
    parameters: also ``master_param``, float32).

    With ``torch.amp.GradScaler`` (``grad_scale`` :math:`s`, ``found_inf``) and
    clipping (``clip_value`` :math:`c`, norm factor
    :math:`k=\min(1, \text{max\_grad\_norm}/(\lVert\text{clamp}(g/s,\pm c)\rVert+10^{-6}))`),
    the gradient the rule sees is :math:`k\,\text{clamp}(g/s, -c, c)`; the step
    is skipped when ``found_inf`` is set (or, with ``max_grad_norm``, a gradient
    is not finite).

    Examples
    --------
    >>> import torch, fastadam.torch
    >>> model = torch.nn.Linear(4, 2)
    >>> opt = fastadam.torch.Adam(model.parameters(), lr=1e-3)
    >>> model(torch.ones(3, 4)).sum().backward()
    >>> _ = opt.step(); opt.zero_grad()
    """

    _opt = "adam"
    _hp_keys = ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize",
                "decoupled_weight_decay", "capturable", "differentiable")
    _needs_step = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, *, foreach=None, maximize=False, capturable=False,
                 differentiable=False, fused=None, decoupled_weight_decay=False,
                 backend="auto", state_dtype="float32", max_grad_norm=None, clip_value=None,
                 param_rounding="nearest"):
        if isinstance(betas, (tuple, list)) and len(betas) == 2:
            betas = tuple(betas)
        from .lowp import master as _master
        self._param_rounding = _master.check_rounding(param_rounding)
        _lowp._transform_scalars(None, None, clip_value)          # validate
        if max_grad_norm is not None:
            _v.nonneg("max_grad_norm", max_grad_norm, "max_grad_norm value")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        amsgrad=amsgrad, maximize=maximize, foreach=foreach,
                        capturable=capturable, differentiable=differentiable, fused=fused,
                        decoupled_weight_decay=decoupled_weight_decay)
        self._state_dtype = _lowp.check_state_dtype(state_dtype)   # read by _group_hparams
        super().__init__(params, defaults, backend, state_dtype)
        self.max_grad_norm = max_grad_norm
        self.clip_value = clip_value

    @property
    def state_dtype(self) -> str:
        """Storage of the moments: ``"float32"``, ``"bfloat16"`` or ``"int8"``."""
        return self._state_dtype

    @property
    def param_rounding(self) -> str:
        """Rounding of float16 / bfloat16 parameters from their master weights."""
        return self._param_rounding

    def sync_master(self) -> int:
        """Re-read the float32 master weights from the float16 / bfloat16 parameters.

        The master (state ``master_param``) is the authoritative copy: each step
        updates it and rewrites the parameter from it, so a change made to the
        parameters from outside the optimizer once the master exists (say
        ``model.load_state_dict(...)`` in the middle of training, or
        re-initializing a layer) is overwritten at the next step.  Call this after
        such a change: every master becomes the exact float32 value of its
        parameter (moments and step counts are kept).  Loading this optimizer's
        own ``state_dict`` needs no call (it carries the masters).  Returns the
        number of elements re-read.
        """
        count = 0
        with torch.no_grad():
            for b in self._buckets:
                t = b.state.get("master_param") if b.fmt else None
                if t is not None:
                    t.copy_(b.data)
                    count += t.numel()
        return count

    def _group_hparams(self, g):
        if g["amsgrad"] and self._state_dtype != "float32":
            raise ValueError(f"amsgrad=True is not supported with state_dtype="
                             f"{self._state_dtype!r}")
        if g["amsgrad"] and any(b.fmt and self.param_groups[b.gi] is g
                                for b in getattr(self, "_buckets", ())):
            # checked while planning a step (amsgrad set after construction, or loaded):
            # before any bucket is stepped
            raise ValueError("amsgrad=True is not supported with float16 / bfloat16 "
                             "parameters (master weights)")
        b1, b2 = _betas(g)
        hp = _hparams.adam(step=1, lr=_num("lr", g["lr"]), beta1=b1, beta2=b2, eps=g["eps"],
                           weight_decay=_num("weight_decay", g["weight_decay"]),
                           decoupled_weight_decay=g["decoupled_weight_decay"],
                           amsgrad=g["amsgrad"], maximize=g["maximize"])
        del hp["step"]
        return hp


class AdamW(Adam):
    r"""AdamW, as ``torch.optim.AdamW``: :class:`Adam` with decoupled weight decay.

    .. math::

        &\theta \leftarrow \theta(1-\gamma\lambda) \\
        &m \leftarrow \beta_1 m + (1-\beta_1) g, \qquad
         v \leftarrow \beta_2 v + (1-\beta_2) g^2 \\
        &\theta \leftarrow \theta - \frac{\gamma}{1-\beta_1^t}
            \frac{m}{\sqrt{\hat v}/\sqrt{1-\beta_2^t} + \epsilon}

    Parameters
    ----------
    params : iterable
    lr : float, default 1e-3
    betas : (float, float), default (0.9, 0.999)
    eps : float, default 1e-8
    weight_decay : float, default 1e-2
    amsgrad : bool, default False
    maximize : bool, default False
    state_dtype, max_grad_norm, clip_value, param_rounding
        As :class:`Adam` (keyword only).
    {common}
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, foreach=None, capturable=False,
                 differentiable=False, fused=None, backend="auto", state_dtype="float32",
                 max_grad_norm=None, clip_value=None, param_rounding="nearest"):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach,
                         maximize=maximize, capturable=capturable,
                         differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True, backend=backend,
                         state_dtype=state_dtype, max_grad_norm=max_grad_norm,
                         clip_value=clip_value, param_rounding=param_rounding)

    def _fix_loaded_group(self, group):
        group["decoupled_weight_decay"] = True   # as torch.optim.AdamW.__setstate__


class RMSprop(FlatOptimizer):
    r"""RMSprop, as ``torch.optim.RMSprop``.

    .. math::

        &g \leftarrow \pm g + \lambda\theta \\
        &s \leftarrow \alpha s + (1-\alpha) g^2 \\
        &\bar g \leftarrow \alpha\bar g + (1-\alpha) g \quad\text{(centered)} \\
        &a = \sqrt{s - \bar g^2} + \epsilon \quad\text{(centered; else } \sqrt{s}+\epsilon) \\
        &b \leftarrow \mu b + g/a, \quad \theta \leftarrow \theta - \gamma b
            \quad\text{(momentum } \mu>0\text{; else } \theta \leftarrow \theta - \gamma g/a)

    Parameters
    ----------
    params : iterable
    lr : float, default 1e-2
    alpha : float, default 0.99
    eps : float, default 1e-8
    weight_decay : float, default 0
    momentum : float, default 0
    centered : bool, default False
    maximize : bool, default False
    {common}
    Notes
    -----
    State: ``step``, ``square_avg``, with momentum ``momentum_buffer``, centered
    ``grad_avg``.
    """

    _opt = "rmsprop"
    _hp_keys = ("lr", "alpha", "eps", "weight_decay", "momentum", "centered", "maximize",
                "capturable", "differentiable")

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0,
                 centered=False, capturable=False, foreach=None, maximize=False,
                 differentiable=False, *, backend="auto"):
        defaults = dict(lr=lr, momentum=momentum, alpha=alpha, eps=eps, centered=centered,
                        weight_decay=weight_decay, capturable=capturable, foreach=foreach,
                        maximize=maximize, differentiable=differentiable)
        super().__init__(params, defaults, backend)

    def _group_hparams(self, g):
        return _hparams.rmsprop(lr=_num("lr", g["lr"]), alpha=g["alpha"], eps=g["eps"],
                                weight_decay=g["weight_decay"], momentum=g["momentum"],
                                centered=g["centered"], maximize=g["maximize"])


class Adagrad(FlatOptimizer):
    r"""Adagrad, as ``torch.optim.Adagrad``.

    .. math::

        &g \leftarrow \pm g + \lambda\theta \\
        &\tilde\gamma = \gamma / (1 + (t-1)\eta) \\
        &s \leftarrow s + g^2 \\
        &\theta \leftarrow \theta - \tilde\gamma\, g/(\sqrt{s}+\epsilon)

    Parameters
    ----------
    params : iterable
    lr : float, default 1e-2
    lr_decay : float, default 0
        :math:`\eta`.
    weight_decay : float, default 0
    initial_accumulator_value : float, default 0
        Initial value of ``sum`` (as in torch, the constructor's value is used
        for every group).
    eps : float, default 1e-10
    maximize : bool, default False
    {common}
    Notes
    -----
    State (made at construction, as torch does): ``step``, ``sum``.
    """

    _opt = "adagrad"
    _hp_keys = ("lr", "lr_decay", "eps", "weight_decay", "maximize", "differentiable")
    _flag_keys = ("differentiable",)
    _needs_step = True

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0,
                 eps=1e-10, foreach=None, *, maximize=False, differentiable=False, fused=None,
                 backend="auto"):
        defaults = dict(lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, foreach=foreach,
                        maximize=maximize, differentiable=differentiable, fused=fused)
        super().__init__(params, defaults, backend)
        for b in self._buckets:
            b.ensure_state("sum", self._fill("sum"))
            for i in range(len(b.params)):
                self._populate(b, i)
            b.all_started = True

    def _group_hparams(self, g):
        _v.nonneg("initial_accumulator_value", g["initial_accumulator_value"],
                  "initial_accumulator_value value")
        hp = _hparams.adagrad(step=1, lr=_num("lr", g["lr"]), lr_decay=g["lr_decay"],
                              eps=g["eps"], weight_decay=g["weight_decay"],
                              maximize=g["maximize"])
        del hp["step"]
        return hp

    def _fill(self, name):
        return float(self.defaults["initial_accumulator_value"])


class SGD(FlatOptimizer):
    r"""SGD with optional momentum / Nesterov, as ``torch.optim.SGD``.

    .. math::

        &g \leftarrow \pm g + \lambda\theta \\
        &b \leftarrow g \;\text{(first step)}, \qquad
         b \leftarrow \mu b + (1-\tau) g \;\text{(later)} \\
        &d = g + \mu b \;\text{(nesterov; else } d = b) \\
        &\theta \leftarrow \theta - \gamma d

    (without momentum :math:`\theta \leftarrow \theta - \gamma g`).

    Parameters
    ----------
    params : iterable
    lr : float, default 1e-3
    momentum : float, default 0
        :math:`\mu`.
    dampening : float, default 0
        :math:`\tau`.
    weight_decay : float, default 0
    nesterov : bool, default False
    maximize : bool, default False
    {common}
    Notes
    -----
    State (with momentum only): ``momentum_buffer``; no ``step``, as in torch.
    """

    _opt = "sgd"
    _hp_keys = ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize",
                "differentiable")
    _flag_keys = ("differentiable",)
    _has_step = False
    _needs_first = True

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0,
                 nesterov=False, *, maximize=False, foreach=None, differentiable=False,
                 fused=None, backend="auto"):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening,
                        weight_decay=weight_decay, nesterov=nesterov, maximize=maximize,
                        foreach=foreach, differentiable=differentiable, fused=fused)
        super().__init__(params, defaults, backend)

    def _group_hparams(self, g):
        return _hparams.sgd(lr=_num("lr", g["lr"]), momentum=g["momentum"],
                            dampening=g["dampening"],
                            weight_decay=_num("weight_decay", g["weight_decay"]),
                            nesterov=g["nesterov"], maximize=g["maximize"])

    def _advances(self, hp):
        return hp["momentum"] != 0   # counts momentum steps: 0 means "no buffer yet"


class Adadelta(FlatOptimizer):
    r"""Adadelta, as ``torch.optim.Adadelta``.

    .. math::

        &g \leftarrow \pm g + \lambda\theta \\
        &v \leftarrow \rho v + (1-\rho) g^2 \\
        &\Delta = \sqrt{u+\epsilon}/\sqrt{v+\epsilon}\; g \\
        &u \leftarrow \rho u + (1-\rho)\Delta^2 \\
        &\theta \leftarrow \theta - \gamma\Delta

    Parameters
    ----------
    params : iterable
    lr : float, default 1.0
    rho : float, default 0.9
    eps : float, default 1e-6
    weight_decay : float, default 0
    maximize : bool, default False
    {common}
    Notes
    -----
    State: ``step``, ``square_avg`` (:math:`v`), ``acc_delta`` (:math:`u`).
    """

    _opt = "adadelta"
    _hp_keys = ("lr", "rho", "eps", "weight_decay", "maximize", "capturable", "differentiable")

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0, foreach=None, *,
                 capturable=False, maximize=False, differentiable=False, backend="auto"):
        defaults = dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize,
                        capturable=capturable, foreach=foreach, differentiable=differentiable)
        super().__init__(params, defaults, backend)

    def _group_hparams(self, g):
        return _hparams.adadelta(lr=_num("lr", g["lr"]), rho=g["rho"], eps=g["eps"],
                                 weight_decay=g["weight_decay"], maximize=g["maximize"])


class NAdam(FlatOptimizer):
    r"""NAdam, as ``torch.optim.NAdam``.

    .. math::

        &\mu_t = \beta_1(1 - \tfrac12 0.96^{t\psi}), \qquad \Pi_t = \Pi_{t-1}\mu_t \\
        &g \leftarrow \pm g + \lambda\theta \;\text{(or } \theta \leftarrow
            \theta(1-\gamma\lambda) \text{ if decoupled)} \\
        &m \leftarrow \beta_1 m + (1-\beta_1) g, \qquad
         v \leftarrow \beta_2 v + (1-\beta_2) g^2 \\
        &d = \sqrt{v/(1-\beta_2^t)} + \epsilon \\
        &\theta \leftarrow \theta - \gamma\frac{1-\mu_t}{1-\Pi_t}\frac{g}{d}
            - \gamma\frac{\mu_{t+1}}{1-\Pi_t\mu_{t+1}}\frac{m}{d}

    Parameters
    ----------
    params : iterable
    lr : float, default 2e-3
    betas : (float, float), default (0.9, 0.999)
    eps : float, default 1e-8
    weight_decay : float, default 0
    momentum_decay : float, default 4e-3
        :math:`\psi`.
    decoupled_weight_decay : bool, default False
    maximize : bool, default False
    {common}
    Notes
    -----
    State: ``step``, ``mu_product`` (:math:`\Pi_t`, kept in float64), ``exp_avg``,
    ``exp_avg_sq``.
    """

    _opt = "nadam"
    _hp_keys = ("lr", "betas", "eps", "weight_decay", "momentum_decay",
                "decoupled_weight_decay", "maximize", "capturable", "differentiable")
    _needs_step = True
    _needs_mu = True

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 momentum_decay=4e-3, decoupled_weight_decay=False, *, foreach=None,
                 maximize=False, capturable=False, differentiable=False, backend="auto"):
        if isinstance(betas, (tuple, list)) and len(betas) == 2:
            betas = tuple(betas)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        momentum_decay=momentum_decay,
                        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize,
                        foreach=foreach, capturable=capturable, differentiable=differentiable)
        super().__init__(params, defaults, backend)

    def _group_hparams(self, g):
        b1, b2 = _betas(g)
        hp = _hparams.nadam(step=1, lr=_num("lr", g["lr"]), beta1=b1, beta2=b2, eps=g["eps"],
                            weight_decay=g["weight_decay"], momentum_decay=g["momentum_decay"],
                            decoupled_weight_decay=g["decoupled_weight_decay"],
                            maximize=g["maximize"])
        del hp["step"]
        return hp

    def _check_mu(self, hp, step, mu):
        _scalars.check_nadam_mu_product(hp["beta1"], hp["momentum_decay"], step, mu)


class Adamax(FlatOptimizer):
    r"""Adamax, as ``torch.optim.Adamax``.

    .. math::

        &g \leftarrow \pm g + \lambda\theta \\
        &m \leftarrow \beta_1 m + (1-\beta_1) g \\
        &u \leftarrow \max(\beta_2 u, |g| + \epsilon) \\
        &\theta \leftarrow \theta - \frac{\gamma}{1-\beta_1^t}\frac{m}{u}

    Parameters
    ----------
    params : iterable
    lr : float, default 2e-3
    betas : (float, float), default (0.9, 0.999)
    eps : float, default 1e-8
    weight_decay : float, default 0
    maximize : bool, default False
    {common}
    Notes
    -----
    State: ``step``, ``exp_avg``, ``exp_inf``.
    """

    _opt = "adamax"
    _hp_keys = ("lr", "betas", "eps", "weight_decay", "maximize", "capturable",
                "differentiable")
    _needs_step = True

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 foreach=None, *, maximize=False, differentiable=False, capturable=False,
                 backend="auto"):
        if isinstance(betas, (tuple, list)) and len(betas) == 2:
            betas = tuple(betas)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        foreach=foreach, maximize=maximize, differentiable=differentiable,
                        capturable=capturable)
        super().__init__(params, defaults, backend)

    def _group_hparams(self, g):
        b1, b2 = _betas(g)
        hp = _hparams.adamax(step=1, lr=_num("lr", g["lr"]), beta1=b1, beta2=b2, eps=g["eps"],
                             weight_decay=g["weight_decay"], maximize=g["maximize"])
        del hp["step"]
        return hp


for _cls in (Adam, AdamW, RMSprop, Adagrad, SGD, Adadelta, NAdam, Adamax):
    _cls.__doc__ = _cls.__doc__.replace("{common}\n", _COMMON_DOC + "\n")
del _cls
