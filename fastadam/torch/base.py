"""The optimizer base: :class:`FlatOptimizer`, a ``torch.optim.Optimizer`` over flat buffers.

:class:`FlatOptimizer` holds what is its own -- construction, ``add_param_group``
(every check on a new group's parameters, then flattening it), the patched
``step`` wrapper that skips torch's profiler and hook loops while none is active
(and that Dynamo does not trace: :func:`_skip_dynamo`), ``state_dict``, and pickle /
deepcopy (rebuilt over the copied parameters) -- and is composed of the mixins that do
the rest:

* :class:`~fastadam.torch.step._StepMixin` (:mod:`.step`): ``step()``,
  ``zero_grad()``, planning the kernel runs, gradient copies, kernel calls;
* :class:`~fastadam.torch.transformed._TransformMixin` (:mod:`.transformed`):
  unscaling, inf/nan skipping and clipping;
* :class:`~fastadam.torch.checkpoint._CheckpointMixin` (:mod:`.checkpoint`):
  ``load_state_dict``;
* :class:`~fastadam.torch.buffers._BufferMixin` (:mod:`.buffers`): the flat
  buffers of the param groups and engine-owned parameter storage;
* :class:`~fastadam.torch.tracked._SyncMixin` (:mod:`.tracked`): ``state``, and
  carrying edits of it and of the groups' ``"params"`` into the flat buffers;
* :class:`~fastadam.torch.hparams._HparamsMixin` (:mod:`.hparams`): the
  hyperparameters of the groups.

``_COMMON_DOC`` is the docstring text of the arguments every optimizer class
takes (:func:`_fill_common_doc` puts it in place of ``{common}``).
"""

from __future__ import annotations

import functools
import operator

import torch
from torch.optim.optimizer import Optimizer as _TorchOptimizer

from .. import _backends, _scalars
from .. import lowp as _lowp
from .buffers import _LOWP_PARAMS, _NP_DTYPES, _BufferMixin, _is_dtensor
from .checkpoint import _CheckpointMixin
from .hparams import _HparamsMixin
from .sparse import _SparseMixin
from .step import _StepMixin
from .tracked import _Flag, _ParamState, _State, _SyncMixin
from .transformed import _TransformMixin

try:  # private in torch, but stable since 2.0; only used to skip an empty loop
    from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks
except ImportError:  # pragma: no cover - older/newer torch
    _global_optimizer_pre_hooks = _global_optimizer_post_hooks = None


#: whether torch's autograd profiler is on (its C function, called directly: per step)
_profiler_enabled = torch.autograd._profiler_enabled


#: attributes that __setstate__ rebuilds (the flat buffers and what indexes them) or,
#: as torch.optim.Optimizer.__setstate__, starts empty (the hooks)
_TRANSIENT = frozenset((
    "_backends", "_buckets", "_where", "_hp_cache", "_flag", "_state", "_plists",
    "_gparams", "param_groups", "state", "_optimizer_step_pre_hooks",
    "_optimizer_step_post_hooks", "_optimizer_state_dict_pre_hooks",
    "_optimizer_state_dict_post_hooks", "_optimizer_load_state_dict_pre_hooks",
    "_optimizer_load_state_dict_post_hooks"))


def _skip_dynamo(fn) -> None:
    """Have torch.compile run ``fn`` (and what it calls) as it is, untraced.

    fastadam's step is already one fused kernel per flat buffer, run by NumPy /
    numba / Cython, which Dynamo cannot trace: ``torch.compile(opt.step)`` (or a
    compiled function calling ``opt.step()``) runs it eagerly instead.  A code
    flag, read only by Dynamo: no cost on an eager call (``torch._dynamo.disable``'s
    wrapper costs about 0.4 us per call).
    """
    fn._torchdynamo_disable = True            # a compiled caller: graph break here
    fn._torchdynamo_disable_recursive = True
    try:                                       # the frame and its callees: not traced
        from torch._C._dynamo.eval_frame import (_FrameAction, _FrameExecStrategy,
                                                 set_code_exec_strategy)
        set_code_exec_strategy(fn.__code__,
                               _FrameExecStrategy(_FrameAction.SKIP, _FrameAction.SKIP))
    except (ImportError, AttributeError, TypeError):   # pragma: no cover - other torch
        pass


class FlatOptimizer(_StepMixin, _TransformMixin, _CheckpointMixin, _SparseMixin,
                    _BufferMixin, _SyncMixin, _HparamsMixin, _TorchOptimizer):
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
        self._flag = _Flag()                # see .tracked
        self._state = _State(self._flag)
        self._plists = []                   # per group: its "params" list (a _Params)
        self._gparams = []                  # per group: its parameters when flattened
        super().__init__(params, defaults)
        self._flag.dirty = False

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
        _skip_dynamo(step)
        cls.step = step

    def state_dict(self) -> dict:
        """torch.optim's ``state_dict``, after applying any edit of ``state`` or of a
        group's ``"params"`` (so it describes exactly what the next step uses)."""
        self._settle()
        sd = super().state_dict()
        # plain dicts (torch.load(weights_only=True) refuses a subclass); the values are
        # the live views, as torch.optim's
        sd["state"] = {k: dict(v) if type(v) is _ParamState else v
                       for k, v in sd["state"].items()}
        return sd

    # -- pickle / deepcopy -------------------------------------------------------------
    def __getstate__(self):
        """What rebuilds this optimizer (``copy.deepcopy``, ``pickle``): its options,
        param groups (with the parameters) and a copy of the state, keyed by parameter."""
        self._settle()
        # as torch.optim keeps only its own: not what others set on the instance (an LR
        # scheduler's wrapper of ``step``, bound to this optimizer, and its flag)
        cls = type(self)
        d = {k: v for k, v in self.__dict__.items() if k not in _TRANSIENT
             and k != "_opt_called" and not (callable(v) and hasattr(cls, k))}
        d["param_groups"] = [dict(g, params=list(g["params"])) for g in self.param_groups]
        d["_saved_state"] = {
            p: {k: v.detach().clone() if isinstance(v, torch.Tensor) else v
                for k, v in st.items()}
            for p, st in self._state.items() if st and p in self._where}
        return d

    def __setstate__(self, d):
        """Rebuild from :meth:`__getstate__`: the (copied) parameters are flattened into
        new flat buffers, as at construction, and the state copied in."""
        d = dict(d)
        saved, groups = d.pop("_saved_state"), d.pop("param_groups")
        self.__dict__.update(d)
        self._backends, self._buckets, self._where, self._hp_cache = {}, [], {}, {}
        self._flag = _Flag()
        self._state = _State(self._flag)
        self._plists, self._gparams = [], []
        _TorchOptimizer.__setstate__(self, {"param_groups": []})   # hooks, step patch
        for g in groups:
            self.param_groups.append(g)
            self._flatten_group(len(self.param_groups) - 1)
        self._commit_states([self._parse_state(f"{i}", p, st)
                             for i, (p, st) in enumerate(saved.items()) if p in self._where])
        for b in self._buckets:
            self._refresh_uniform(b)
            b.all_started = all(b.started)
        self._flag.dirty = False

    def __copy__(self):
        raise TypeError(f"{type(self).__name__}: copy.copy would share the parameters with "
                        "this optimizer while flattening them again; use copy.deepcopy "
                        "(of the model and the optimizer together) or state_dict()")

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
        self._check_params(tensors, merged, len(self.param_groups), "the group")
        super().add_param_group(param_group)
        self._flatten_group(len(self.param_groups) - 1)

    def _check_params(self, tensors, merged, gi, where, other_groups=True):
        """Check the parameters of group ``gi`` (its options ``merged``); changes nothing.

        ``other_groups``: also refuse a parameter of another group (the caller checks
        that itself when several groups' lists change at once)."""
        seen = set()
        for i, p in enumerate(tensors):
            if not isinstance(p, torch.Tensor):
                raise TypeError("optimizer can only optimize Tensors, but one of the params "
                                f"is {torch.typename(p)}")
            lowp = p.dtype in _LOWP_PARAMS
            if lowp and self._opt != "adam":
                raise TypeError(f"fastadam.torch.{type(self).__name__} optimizes float32 and "
                                f"float64 tensors; parameter {i} of {where} has dtype "
                                f"{p.dtype} (float16 / bfloat16 parameters are supported by "
                                "Adam and AdamW, with float32 master weights)")
            if p.dtype not in _NP_DTYPES and not lowp:
                raise TypeError(f"fastadam.torch optimizes float32 and float64 tensors (and "
                                f"float16 / bfloat16 ones with Adam / AdamW); parameter {i} "
                                f"of {where} has dtype {p.dtype}")
            if p.device.type not in ("cpu", "cuda"):
                raise TypeError(f"fastadam.torch runs on CPU and CUDA tensors; parameter {i} "
                                f"of {where} is on {p.device}")
            if _is_dtensor(p):
                raise TypeError(
                    f"parameter {i} of {where} is a DTensor (FSDP2 fully_shard or tensor "
                    "parallelism); fastadam.torch optimizes plain tensors only: use FSDP1 "
                    "(FullyShardedDataParallel), ZeroRedundancyOptimizer or DDP, or "
                    "torch.optim for DTensor parameters")
            if p.is_sparse or p.layout != torch.strided:
                raise TypeError(f"parameter {i} of {where} is not a dense (strided) tensor")
            if lowp:
                if p.device.type != "cpu":
                    raise _backends.BackendUnavailableError(
                        f"{p.dtype} parameters (master weights) run on CPU tensors in "
                        f"fastadam.torch; parameter {i} of {where} is on {p.device} (on "
                        "CUDA, fastadam.functional.adam_ takes them with master_param=)")
                if self._state_dtype == "int8":
                    raise ValueError(f"state_dtype='int8' is not supported with {p.dtype} "
                                    "parameters (master weights); use 'float32' or 'bfloat16'")
                if merged.get("amsgrad"):
                    raise ValueError(f"amsgrad=True is not supported with {p.dtype} parameters "
                                     "(master weights)")
                if p.is_shared():
                    raise ValueError(f"parameter {i} of {where} is a {p.dtype} tensor in shared "
                                     "memory (model.share_memory()); fastadam.torch keeps "
                                     "float32 master weights of float16 / bfloat16 parameters, "
                                     "which other processes would not see: use float32 "
                                     "parameters for Hogwild training")
            if self._state_dtype != "float32":
                if p.dtype != torch.float32 and not lowp:
                    raise TypeError(f"state_dtype={self._state_dtype!r} needs float32 "
                                    f"parameters; parameter {i} of {where} has dtype "
                                    f"{p.dtype}")
            if id(p) in seen:
                raise ValueError(f"parameter {i} of {where} appears twice in it; each "
                                 "parameter can be optimized once")
            seen.add(id(p))
            if other_groups and p in self._where and self._where[p][0].gi != gi:
                raise ValueError("some parameters appear in more than one parameter group")
            be = self._backend_for(p.device)
            if self._state_dtype != "float32" and be.name not in ("numba", "numpy", "cuda"):
                raise _backends.BackendUnavailableError(
                    f"state_dtype={self._state_dtype!r} is implemented on the numba, numpy "
                    f"and cuda backends, not {be.name!r}")
            if lowp and be.name not in ("numba", "numpy"):
                raise _backends.BackendUnavailableError(
                    f"{p.dtype} parameters (master weights) are implemented on the numba and "
                    f"numpy backends, not {be.name!r}")


_skip_dynamo(FlatOptimizer.zero_grad)

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


def _fill_common_doc(*classes):
    """Put ``_COMMON_DOC`` in place of ``{common}`` in each class's docstring."""
    for cls in classes:
        cls.__doc__ = cls.__doc__.replace("{common}\n", _COMMON_DOC + "\n")
