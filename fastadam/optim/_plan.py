"""Step planning of the NumPy façade optimizers: validated hyperparameters and bound kernels.

The per-step hot path of :class:`fastadam.optim.Optimizer`, as a mixin: for
each flat buffer, this step's validated hyperparameters and the ``(fn, args)``
doing the plain step (:meth:`StepPlanMixin._step_plan`), with the caches that
make a step at 4K parameters cost a few microseconds of Python: validated
hyperparameters per distinct group values (``_hp_cache``), kernels bound once
to a buffer's arrays (``_bound``) and whole cached plans (``_fast``).

Notes
-----
Every cache is keyed so that any change (a scheduler writing ``lr``, a new or
replaced state array, NAdam's ``mu_product``) goes through the full checks
again; :meth:`StepPlanMixin._clear_caches` forgets them all (new param groups,
a loaded checkpoint).  The mixin calls the optimizer's ``_opt``, ``defaults``,
``param_groups``, ``flat``, ``state``, ``_hparams``, ``_buffer_spec`` and
``_buffer_backend``.  :func:`fastadam.lowp.transformed_step` (the AMP /
clipped step) plans through ``_step_plan`` and ``_prepare`` too.

See Also
--------
fastadam.optim.base : the optimizer base class that uses it.
fastadam._scalars : the kernels' scalar arguments.
"""

from __future__ import annotations

import operator

import numpy as np

from .. import _alloc, _scalars, _validate

_DTYPE_NAMES: dict = {}


def _dtype_name(dtype) -> str:
    """``str(dtype)``, memoized: ``str`` of a NumPy dtype costs microseconds."""
    name = _DTYPE_NAMES[dtype] = str(dtype)
    return name


_python_floats = _scalars.python_floats


def _hp_argument(_dtype, **hp):
    """The ``scalars_of`` of a cached plan whose bound step takes the hyperparameters
    themselves (:meth:`StepPlanMixin._prepare_state`): ``(None, (hp,))``."""
    return None, (hp,)


#: The per-step caches (see the module docstring): dropped by :meth:`_clear_caches` and
#: by copies.
_CACHES = ("_fast", "_bound", "_hp_cache")


class StepPlanMixin:
    """Step plans, bound kernels and their caches (see the module docstring)."""

    def _clear_caches(self) -> None:
        """Forget the per-step caches (validated hyperparameters, bound kernels)."""
        for name in _CACHES:
            self.__dict__.pop(name, None)

    def __getstate__(self):
        """What ``copy.deepcopy`` and ``pickle`` keep: everything but the per-step caches,
        whose bound kernels hold this optimizer's own arrays."""
        return {k: v for k, v in self.__dict__.items() if k not in _CACHES}

    def __setstate__(self, d):
        """Rebuild from :meth:`__getstate__`: the state arrays copied into aligned memory
        (:mod:`fastadam._alloc`; the flat parameters re-align themselves)."""
        self.__dict__.update(d)
        for per_dtype in self.state:
            for st in per_dtype.values():
                for k, v in st.items():
                    if isinstance(v, np.ndarray):
                        st[k] = _alloc.copy(v)

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
        return hp, (b[3], scalars_of(_python_floats(fb.data.dtype), **hp)[1])

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
        kname, scal = getattr(_scalars, self._opt)(_python_floats(fb.data.dtype), **hp)
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
