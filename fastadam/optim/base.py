"""The small base class of the NumPy façade optimizers."""

from __future__ import annotations

import copy
import operator

import numpy as np

from .. import _backends, _scalars, _validate
from .. import lowp as _lowp
from ..lowp import master as _master
from ..flat import FlatParams

STATE_DICT_FORMAT = "fastadam.optimizer"
STATE_DICT_VERSION = 1


_DTYPE_NAMES: dict = {}


def _group_dtypes(p) -> list:
    """The dtypes of a group's parameters (a FlatParams, dict or list of arrays)."""
    if isinstance(p, FlatParams):
        return [fb.dtype for fb in p.buffers]
    return [a.dtype for a in (p.values() if isinstance(p, dict) else p)
            if isinstance(a, np.ndarray)]


def _dtype_name(dtype) -> str:
    """``str(dtype)``, memoized: ``str`` of a NumPy dtype costs microseconds."""
    name = _DTYPE_NAMES[dtype] = str(dtype)
    return name


_PythonFloats = _scalars.PythonFloats


def _hp_argument(_dtype, **hp):
    """The ``scalars_of`` of a cached plan whose bound step takes the hyperparameters
    themselves (:meth:`Optimizer._prepare_state`): ``(None, (hp,))``."""
    return None, (hp,)


class Optimizer:
    """Base of the façade optimizers: param groups, flat buffers, state, checkpoints.

    Subclasses set ``_opt`` (the name of the step in :mod:`fastadam._scalars` and
    :mod:`fastadam.reference`), ``_defaults`` (torch.optim's names and defaults)
    and implement ``_hparams(group, st, step)`` (validated hyperparameters of one
    step of one buffer) and ``_state_spec(group)`` (the state arrays a group
    needs, with their initial fill values).

    Parameters
    ----------
    params : dict, list, FlatParams, or list of group dicts
        ``{name: ndarray}``, ``[ndarray, ...]``, a :class:`fastadam.FlatParams`,
        or ``[{"params": <one of those>, "lr": ...}, ...]`` for param groups
        with their own hyperparameters.  Arrays are copied once into one
        contiguous buffer per (group, dtype); a dict or list passed in has its
        entries replaced by views of the buffer.
    backend : str
        ``"auto"``, ``"numba"``, ``"cython"`` or ``"numpy"``.

    Attributes
    ----------
    param_groups : list of dict
        Hyperparameters of each group (change them between steps, e.g. a
        schedule writing ``opt.param_groups[0]["lr"]``), and under ``"params"``
        the keys of the group's parameters.
    params, grads : dict or list
        Views of the parameters and gradients, with the caller's keys (for
        group input, a list with one such container per group).  Gradients
        are given by writing into ``opt.grads[k][...]``.
    flat : list of FlatParams
        One per group.
    state : list of dict
        Per group, ``{dtype name: {"step": int, <state name>: flat ndarray}}``.
    """

    _opt = ""
    _defaults: dict = {}
    #: Fused gradient clipping for every step (see :meth:`step`); None = off.
    max_grad_norm = None
    clip_value = None
    #: Steps skipped for non-finite gradients (:meth:`step`), and the last total
    #: gradient norm computed for ``max_grad_norm`` (None when not computed).
    skipped_steps = 0
    last_grad_norm = None

    def __init__(self, params, defaults: dict, backend: str = "auto"):
        self.defaults = dict(defaults)
        groups = self._normalize(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        self.param_groups = []
        self.flat = []
        self.state = []
        self._group_input = isinstance(params, (list, tuple)) and params and \
            isinstance(params[0], dict)
        for g in groups:
            self._add_group(g)
        if isinstance(backend, str) and backend == "cuda":
            raise _backends.BackendUnavailableError(
                "the NumPy façade works on host arrays; use fastadam.functional or "
                "fastadam.torch for device arrays")
        self._backend = _backends.resolve(backend, self.flat[0].buffers[0].data
                                          if self.flat[0].buffers else np.empty(0))
        self.backend = self._backend.name
        # validate every group's hyperparameters now, as torch does in the constructor
        for g in self.param_groups:
            self._hparams(g, {}, 1)

    # -- construction --------------------------------------------------------------
    @staticmethod
    def _normalize(params):
        if isinstance(params, (dict, FlatParams)):
            return [{"params": params}]
        if isinstance(params, (list, tuple)):
            if params and all(isinstance(p, dict) and "params" in p for p in params):
                return [dict(p) for p in params]
            if any(isinstance(p, dict) for p in params):
                raise TypeError("params must be arrays or group dicts with a 'params' key, "
                                "not a mix")
            return [{"params": params}]
        raise TypeError("params must be a dict, a list of arrays, a FlatParams or a list of "
                        f"group dicts, got {type(params).__name__}")

    def _add_group(self, group: dict) -> None:
        p = group["params"]
        unknown = set(group) - set(self.defaults) - {"params"}
        if unknown:
            raise TypeError(f"unknown hyperparameter(s) in param group: {sorted(unknown)}")
        full = {k: group.get(k, v) for k, v in self.defaults.items()}
        self._hparams(full, {}, 1)          # validate before copying anything
        if not isinstance(p, FlatParams) and len(p) == 0:
            raise ValueError("optimizer got an empty parameter list")
        self._check_not_in_other_group(p)
        self._check_group_arrays(p)
        fp = p if isinstance(p, FlatParams) else FlatParams(p, replace=True)
        full["params"] = fp.keys
        self.param_groups.append(full)
        self.flat.append(fp)
        self.state.append({str(fb.dtype): {"step": 0} for fb in fp.buffers})

    def _check_not_in_other_group(self, p) -> None:
        """Refuse parameters that an existing group already holds (they would step twice,
        or a copy nobody holds would be optimized), as torch.optim does."""
        if isinstance(p, FlatParams):
            if any(fp is p for fp in self.flat):
                raise ValueError("some parameters appear in more than one parameter group "
                                 "(the same FlatParams)")
            return
        arrays = p.values() if isinstance(p, dict) else p
        for a in arrays:
            if isinstance(a, np.ndarray) and any(
                    np.may_share_memory(a, fb.data) for fp in self.flat for fb in fp.buffers):
                raise ValueError("some parameters appear in more than one parameter group")

    def _check_group_arrays(self, p) -> None:
        """Subclass hook: refuse a group's arrays before anything is copied or replaced.

        The base refuses low-precision (float16 / bfloat16) parameters: only
        Adam / AdamW keep float32 master weights for them.
        """
        for dt in _group_dtypes(p):
            if _master.param_format(dt) is not None:
                raise TypeError(f"{type(self).__name__} optimizes float32 and float64 "
                                f"parameters; {dt} parameters are supported by Adam and AdamW "
                                "(with float32 master weights)")

    def _clear_caches(self) -> None:
        """Forget the per-step caches (validated hyperparameters, bound kernels)."""
        for name in ("_fast", "_bound", "_hp_cache"):
            self.__dict__.pop(name, None)

    def add_param_group(self, group: dict) -> None:
        """Add a group of parameters (a dict with ``"params"`` and optional hyperparameters)."""
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError("param group must be a dict with a 'params' key")
        self._add_group(dict(group))
        self._group_input = True
        self._clear_caches()

    @property
    def params(self):
        """Views of the parameters in the flat buffers, with the caller's keys.

        A dict or list like the one given (for group input: a list with one per group).
        """
        if self._group_input:
            return [fp.params for fp in self.flat]
        return self.flat[0].params

    @property
    def grads(self):
        """Views of the flat gradient buffers, laid out like :attr:`params`.

        Write gradients into them (``opt.grads[k][...] = g``) before :meth:`step`.
        """
        if self._group_input:
            return [fp.grads for fp in self.flat]
        return self.flat[0].grads

    # -- to be provided by subclasses ------------------------------------------------
    def _hparams(self, group: dict, st: dict, step: int) -> dict:  # pragma: no cover
        raise NotImplementedError

    def _state_spec(self, group: dict) -> dict:  # pragma: no cover
        raise NotImplementedError

    def _buffer_backend(self, fb):
        """The backend that steps buffer ``fb`` (default: the optimizer's backend)."""
        return self._backend

    def _buffer_spec(self, group: dict, fb) -> dict:
        """The state arrays of buffer ``fb`` of ``group`` (default: the group's spec)."""
        return self._state_spec(group)

    def _new_state(self, name: str, fill, fb):
        """A new state array ``name`` for buffer ``fb`` (lowp Adam stores other dtypes)."""
        return np.full(fb.size, fill, dtype=fb.dtype)

    def _state_layout(self, name: str, fb):
        """``(shape, dtype)`` a checkpoint's state array ``name`` of buffer ``fb`` must have."""
        return (fb.size,), fb.dtype

    def _after_step(self, group, st, hp) -> None:
        """Scalar state updates after a successful step (e.g. NAdam's mu_product)."""

    # -- stepping --------------------------------------------------------------------
    def zero_grad(self) -> None:
        """Fill every gradient buffer with zeros."""
        for fp in self.flat:
            fp.zero_grad()

    def step(self, closure=None, *, grad_scale=None, found_inf=None, max_grad_norm=None,
             clip_value=None):
        """Apply one fused step to every flat buffer (one kernel call each).

        Parameters
        ----------
        closure : callable, optional
            Called first (it may recompute the gradients); its result is returned.
        grad_scale : float, optional
            AMP loss scale: the gradients hold ``grad_scale * g``; the step
            uses ``g`` (unscaled inside the kernel; the buffers are not written).
        found_inf : bool or float, optional
            Truthy: skip this step (params, state and step counts unchanged),
            as torch's fused optimizers do with ``GradScaler``.  When None and a
            first pass runs (``grad_scale``, ``max_grad_norm`` or
            ``clip_value``), non-finite gradients are detected in it and skip
            the step.
        max_grad_norm : float, optional
            Clip the global L2 norm of all gradients (every group and buffer)
            to this, as ``torch.nn.utils.clip_grad_norm_``; overrides the
            optimizer's ``max_grad_norm`` attribute for this step.
        clip_value : float, optional
            Clip each gradient element to ``[-clip_value, clip_value]`` (before
            the norm clipping), as ``torch.nn.utils.clip_grad_value_``;
            overrides the ``clip_value`` attribute for this step.

        Every group's hyperparameters are validated before any buffer is touched.
        See docs/lowp.md for the two-pass scheme.
        """
        loss = closure() if closure is not None else None
        if grad_scale is not None or found_inf is not None or max_grad_norm is not None or \
                clip_value is not None or self.max_grad_norm is not None or \
                self.clip_value is not None:
            _lowp.transformed_step(self, grad_scale, found_inf, max_grad_norm, clip_value)
            return loss
        for gi, group, fb, st, spec, hp, run in self._step_plan():
            if run is None:             # first step: make the state, then bind
                for name, fill in spec.items():
                    if name not in st:
                        st[name] = self._new_state(name, fill, fb)
                run = self._prepare(gi, fb, st, spec, hp)
            run[0](*run[1])
            st["step"] += 1
            self._after_step(group, st, hp)
        return loss

    # -- the per-step hot path ---------------------------------------------------------
    def _step_plan(self, prepare: bool = True) -> list:
        """``(gi, group, fb, st, spec, hp, run)`` per flat buffer: this step's validated
        hyperparameters ``hp`` (every group's, before anything is touched) and ``run``, the
        ``(fn, args)`` doing the plain step (see :meth:`_prepare`).  A buffer whose cached
        plan still holds (nothing it depends on changed) gets ``spec`` None and its bound
        kernel with this step's scalars; the others get their state ``spec`` and, with
        ``prepare``, :meth:`_prepare`'s ``run`` (None until their state is made)."""
        plan = []
        fast = self.__dict__.setdefault("_fast", {})
        for gi, group in enumerate(self.param_groups):
            for fb in self.flat[gi].buffers:
                st = self.state[gi][_DTYPE_NAMES.get(fb.dtype) or _dtype_name(fb.dtype)]
                e = fast.get((gi, id(st)))
                r = e and self._fast_plan(e, group, fb, st, st["step"] + 1)
                if r:                   # nothing changed since the last step: cached plan
                    plan.append((gi, group, fb, st, None, r[0], r[1]))
                    continue
                spec = self._buffer_spec(group, fb)
                hp = self._step_hparams(gi, group, st, st["step"] + 1)
                plan.append((gi, group, fb, st, spec, hp,
                             self._prepare(gi, fb, st, spec, hp) if prepare else None))
        return plan

    # At 4K params the Python around the kernel call is most of a step's time, so
    # validated hyperparameters and the bound kernel of each buffer are cached; every
    # cache is keyed so that any change (a scheduler writing ``lr``, a new or replaced
    # state array, NAdam's ``mu_product``) goes through the full checks again.

    def _step_hparams(self, gi: int, group: dict, st: dict, step) -> dict:
        """``self._hparams(group, st, step)``, validated once per distinct group values.

        The cache entry of ``(gi, st)`` holds a snapshot of the group's
        hyperparameter values and their types (lists copied; the types of the
        items of sequences too), the names in ``st`` and its non-array values; the
        cached result is reused only while all of them are unchanged, so a value
        that would fail validation is always validated.  Subclass contract:
        ``_hparams`` depends on ``step`` only through ``hp["step"] = step``.
        """
        cache = self.__dict__.setdefault("_hp_cache", {})
        ck = (gi, id(st))
        c = cache.get(ck)
        if c is not None and type(step) is int and self._hp_unchanged(c, group, st):
            hp = c[8].copy()
            if "step" in hp:
                hp["step"] = step
            return hp
        hp = self._hparams(group, st, step)
        # snapshot, after a successful validation
        keys = tuple(self.defaults)
        vals = tuple(map(group.get, keys))
        seq = tuple((i, tuple(map(type, v))) for i, v in enumerate(vals)
                    if type(v) is tuple or type(v) is list)
        scalar_keys = tuple(k for k, v in st.items()
                            if k != "step" and not isinstance(v, np.ndarray))
        cache[ck] = (self.defaults, keys, tuple(list(v) if type(v) is list else v for v in vals),
                     tuple(map(type, vals)), tuple(st), scalar_keys,
                     tuple(map(st.get, scalar_keys)), seq, dict(hp),
                     not any(type(v) is list for v in vals))
        return hp

    def _hp_unchanged(self, c, group: dict, st: dict) -> bool:
        """Whether ``group`` and ``st`` still match the snapshot ``c`` of :meth:`_step_hparams`."""
        if c[0] is not self.defaults:
            return False
        vals = tuple(map(group.get, c[1]))
        # the very same objects (no lists among them): unchanged; else equal values of
        # equal types, item types of sequences included (0 == False, 1 == True)
        same = c[9] and all(map(operator.is_, vals, c[2]))
        if not same and tuple(map(type, vals)) == c[3] and vals == c[2]:
            same = all(tuple(map(type, vals[i])) == inner for i, inner in c[7])
        return same and tuple(st) == c[4] and tuple(map(st.get, c[5])) == c[6]

    def _fast_plan(self, e, group: dict, fb, st: dict, step):
        """``(hp, (fn, args))`` of this step from the cached plan ``e``, or None if anything
        it depends on changed (then :meth:`_step_hparams` and :meth:`_prepare` run)."""
        c, b, scalars_of = e
        if type(step) is not int or not self._hp_unchanged(c, group, st) or not all(map(
                operator.is_, (fb.data, fb.grad, *map(st.__getitem__, b[1])), b[2])):
            return None
        hp = c[8].copy()
        if "step" in hp:
            hp["step"] = step
        return hp, (b[3], scalars_of(_PythonFloats, **hp)[1])

    def _prepare(self, gi: int, fb, st: dict, spec: dict, hp: dict):
        """``(fn, args)`` doing this step of buffer ``fb``, or None if its state is not made yet.

        Backends with ``bind`` (numba) get the kernel bound to the buffer's arrays
        once (the arrays checked then, and again whenever one is replaced); each step
        then only computes the scalars and calls the compiled kernel.
        """
        if not spec.keys() <= st.keys():
            return None
        be = self._buffer_backend(fb)
        bind = getattr(be, "bind", None)
        if bind is None:
            return self._prepare_state(gi, fb, st, spec, hp, be)
        kname, scal = getattr(_scalars, self._opt)(_PythonFloats, **hp)
        bound = self.__dict__.setdefault("_bound", {})
        key = (gi, id(st))
        b = bound.get(key)
        if b is None or b[0] != kname or not all(map(
                operator.is_, (fb.data, fb.grad, *map(st.__getitem__, b[1])), b[2])):
            states = _scalars.KERNEL_STATES[kname]
            arrs = (fb.data, fb.grad) + tuple(map(st.__getitem__, states))
            names = ("param", "grad") + states
            _validate.host_arrays(dict(zip(names, arrs)), names[:1] + names[2:])
            typed = getattr(_scalars, self._opt)(fb.dtype, **hp)[1]
            b = bound[key] = (kname, states, arrs, bind(kname, arrs, typed))
        self._remember_plan(key, hp, b, getattr(_scalars, self._opt))
        return b[3], scal

    def _remember_plan(self, key, hp: dict, b, scalars_of) -> None:
        """Cache the plan of buffer ``key`` (its bound kernel ``b``; ``scalars_of(dtype,
        **hp)[1]``: the kernel's arguments) when ``hp`` is the validated snapshot
        :meth:`_step_hparams` keeps for it: later steps may then take the cached plan
        (:meth:`_fast_plan`)."""
        c = self.__dict__.get("_hp_cache", {}).get(key)
        if c is not None and c[8].keys() == hp.keys() and \
                all(c[8][k] == v for k, v in hp.items() if k != "step"):
            self.__dict__.setdefault("_fast", {})[key] = (c, b, scalars_of)

    def _prepare_state(self, gi: int, fb, st: dict, spec: dict, hp: dict, be):
        """:meth:`_prepare` for a backend without ``bind``: ``(be.step, (opt, arrays,
        hp))``, or, where the backend can bind the step of these arrays (``bind_state``:
        reduced-precision Adam state on numba, :class:`fastadam.lowp.StateBackend`),
        ``(f, (hp,))`` with ``f`` bound once and the plan cached as :meth:`_prepare`
        caches its own (the same checks invalidate it)."""
        arrays = {"param": fb.data, "grad": fb.grad}
        for name in spec:
            arrays[name] = st[name]
        bind_state = getattr(be, "bind_state", None)
        if bind_state is None:
            return be.step, (self._opt, arrays, hp)
        bound = self.__dict__.setdefault("_bound", {})
        key = (gi, id(st))
        states = tuple(spec)
        # what the bound kernel was chosen by: the state arrays and amsgrad (which the
        # backend refuses to bind)
        kind = ("state", states, bool(hp.get("amsgrad")))
        b = bound.get(key)
        if b is None or b[0] != kind or not all(map(
                operator.is_, (fb.data, fb.grad, *map(st.__getitem__, states)), b[2])):
            f = bind_state(self._opt, arrays, hp)
            if f is None:
                return be.step, (self._opt, arrays, hp)
            b = bound[key] = (kind, states,
                              (fb.data, fb.grad) + tuple(map(st.__getitem__, states)), f)
        self._remember_plan(key, hp, b, _hp_argument)
        return b[3], (hp,)

    # -- checkpoints -------------------------------------------------------------------
    def state_dict(self) -> dict:
        """A checkpoint as plain Python values and NumPy arrays (copies).

        Format::

            {"format": "fastadam.optimizer", "version": 1, "optimizer": "Adam",
             "param_groups": [{<hyperparameters>, "params": [keys]}, ...],
             "state": [{"group": i, "dtype": "float32", "keys": [...], "size": n,
                        "step": t, <state name>: 1-D ndarray or float, ...}, ...]}

        One ``state`` entry per flat buffer; arrays are laid out like the buffer
        (:meth:`FlatParams.unflatten` gives per-parameter views).
        """
        state = []
        for gi, fp in enumerate(self.flat):
            for fb in fp.buffers:
                st = self.state[gi][str(fb.dtype)]
                entry = {"group": gi, "dtype": str(fb.dtype), "keys": list(fb.keys),
                         "size": fb.size}
                for k, v in st.items():
                    entry[k] = v.copy() if isinstance(v, np.ndarray) else v
                state.append(entry)
        return {"format": STATE_DICT_FORMAT, "version": STATE_DICT_VERSION,
                "optimizer": type(self).__name__,
                "param_groups": copy.deepcopy(self.param_groups), "state": state}

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a checkpoint made by :meth:`state_dict` of the same optimizer over the same layout.

        Everything is checked before anything is loaded: a bad checkpoint raises
        and leaves the optimizer as it was.
        """
        if not isinstance(state_dict, dict) or state_dict.get("format") != STATE_DICT_FORMAT:
            raise ValueError("state_dict is not a fastadam optimizer checkpoint")
        if state_dict.get("version") != STATE_DICT_VERSION:
            raise ValueError(f"unsupported checkpoint version {state_dict.get('version')}")
        if state_dict.get("optimizer") != type(self).__name__:
            raise ValueError(f"checkpoint is for {state_dict.get('optimizer')}, "
                             f"not {type(self).__name__}")
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"checkpoint has {len(groups)} param groups, optimizer has "
                             f"{len(self.param_groups)}")
        new_groups = []
        for gi, (g_old, g_new) in enumerate(zip(self.param_groups, groups)):
            if list(g_new.get("params", [])) != list(g_old["params"]):
                raise ValueError(f"param group {gi}: parameter keys differ from the checkpoint's")
            ng = {k: g_new[k] for k in self.defaults if k in g_new}
            missing = set(self.defaults) - set(ng)
            if missing:
                raise ValueError(f"param group {gi} lacks {sorted(missing)}")
            self._hparams(ng, {}, 1)
            ng["params"] = g_old["params"]
            new_groups.append(ng)
        new_state = [{str(fb.dtype): {"step": 0} for fb in fp.buffers} for fp in self.flat]
        seen = set()
        for entry in state_dict["state"]:
            gi, dt = entry.get("group"), entry.get("dtype")
            if not isinstance(gi, int) or not 0 <= gi < len(self.flat) or \
                    dt not in new_state[gi]:
                raise ValueError(f"checkpoint state entry for group {gi!r}, dtype {dt!r} does "
                                 "not match this optimizer's buffers")
            fb = next(b for b in self.flat[gi].buffers if str(b.dtype) == dt)
            if entry.get("size") != fb.size or list(entry.get("keys", [])) != list(fb.keys):
                raise ValueError(f"checkpoint buffer (group {gi}, {dt}) has a different layout")
            st = {}
            for k, v in entry.items():
                if k in ("group", "dtype", "keys", "size"):
                    continue
                if isinstance(v, np.ndarray):
                    shape, sdt = self._state_layout(k, fb)
                    if v.shape != shape or v.dtype != sdt:
                        raise ValueError(f"checkpoint state {k!r} (group {gi}, {dt}) has shape "
                                         f"{v.shape} / dtype {v.dtype}, expected {shape} "
                                         f"/ {sdt}")
                    st[k] = np.array(v, dtype=sdt, copy=True)
                else:
                    st[k] = v
            if not isinstance(st.get("step"), (int, np.integer)) or st["step"] < 0:
                raise ValueError(f"checkpoint state (group {gi}, {dt}) has no valid 'step'")
            st["step"] = int(st["step"])
            if (gi, dt) in seen:
                raise ValueError(f"checkpoint has two state entries for group {gi}, {dt}")
            new_state[gi][dt] = st
            seen.add((gi, dt))
        missing = [(gi, dt) for gi, sts in enumerate(new_state) for dt in sts
                   if (gi, dt) not in seen]
        if missing:
            raise ValueError(f"checkpoint has no state entry for buffer(s) {missing} "
                             "(group, dtype)")
        self.param_groups = new_groups
        self.state = new_state
        self._clear_caches()

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} (backend={self.backend!r})"]
        for i, g in enumerate(self.param_groups):
            hp = ", ".join(f"{k}={v!r}" for k, v in g.items() if k != "params")
            lines.append(f"  group {i}: {len(g['params'])} params, {hp}")
        return "\n".join(lines)
