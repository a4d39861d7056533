"""The base of the Keras-style optimizers: variables, state, ``apply_gradients``.

:class:`Optimizer` holds what every optimizer of :mod:`fastadam.keras` shares:
the constructor's common arguments, the choice of backend, the per-variable
state (built on first use, keyed by the array's identity), the flat-buffer
path (variables tiling one buffer and gradients tiling another are updated by
one kernel call over the whole buffer), and the step itself (checks, then one
kernel call or NumPy update per chunk).  Its learning rate / legacy ``decay``
and its gradient clipping come from the mixins of
:mod:`fastadam.keras._transforms`; the argument and memory checks are
:mod:`fastadam.keras._checks`.  The optimizers themselves (one module each)
subclass it with their hyperparameters and update rule.
"""

from __future__ import annotations

import numpy as np

from .. import _alloc, _backends
from .. import _validate as _v
from .._validate import extent
from . import _bridge
from ._checks import check_pairs, check_variables, optional_nonneg, owner
from ._common import runner
from ._transforms import GradientTransformMixin, LearningRateMixin

BACKENDS = ("auto", "numba", "numpy")


class _Slot:
    """The state of one variable: ``arrays`` (shaped like it); ``flat`` if backed by one."""

    __slots__ = ("var", "arrays", "flat")

    def __init__(self, var, arrays, flat=None):
        self.var, self.arrays, self.flat = var, arrays, flat


class _FlatSlot:
    """The state of one flat buffer ``base``: 1-D arrays of ``base.size``."""

    __slots__ = ("base", "arrays")

    def __init__(self, base, arrays):
        self.base, self.arrays = base, arrays


class _Step:
    """The per-step scalars shared by every chunk of one ``apply`` call."""

    __slots__ = ("t", "lr", "decay", "extra")

    def __init__(self, t, lr, decay, extra=None):
        self.t, self.lr, self.decay, self.extra = t, lr, decay, extra


class Optimizer(LearningRateMixin, GradientTransformMixin):
    """Base of the Keras-style optimizers (see the module docstring).

    Subclasses implement ``_state_specs()`` (state names in kernel order with
    their initial values), ``_plan(dtype, gscale, st)`` (the kernel family,
    :data:`~fastadam.keras._common.TORCH_RULES` or
    :data:`~fastadam.keras._common.KERAS_RULES`, the kernel's name, its state
    names and its scalars) and
    ``_numpy_update(p, g, s, gscale, st)`` (the readable NumPy step).

    Attributes
    ----------
    iterations : int
        Steps applied so far (``apply_gradients`` calls).
    learning_rate : float
        The learning rate of the next step, before the legacy ``decay``.
    """

    def __new__(cls, *args, **kwargs):
        # With Keras imported, an optimizer is made as its Keras-side twin (a subclass
        # of ``cls`` and of ``keras.optimizers.Optimizer``, see fastadam.keras._in_keras),
        # so that ``model.compile(optimizer=...)`` accepts it; NumPy arrays still work.
        return object.__new__(_bridge.class_for(cls))

    #: the Keras-side twin of this class, by name (for pickle; see _bridge.TwinName)
    _keras_twin = _bridge.TwinName()

    def __reduce_ex__(self, protocol):
        # copy / pickle rebuild the same class (not a twin chosen by __new__)
        return _bridge.bare_instance, (type(self),), self.__dict__.copy()

    def __init__(self, learning_rate, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, use_ema=False, ema_momentum=0.99,
                 ema_overwrite_frequency=None, loss_scale_factor=None,
                 gradient_accumulation_steps=None, name=None, *, decay=None,
                 backend="auto"):
        self._set_lr(learning_rate)
        self.weight_decay = optional_nonneg("weight_decay", weight_decay)
        self._set_clipping(clipnorm, clipvalue, global_clipnorm)
        if use_ema is not False:
            raise ValueError("use_ema is not supported by fastadam.keras (must be False)")
        if ema_overwrite_frequency is not None:
            raise ValueError("ema_overwrite_frequency is not supported by fastadam.keras")
        self.ema_momentum = _v.real("ema_momentum", ema_momentum)
        if gradient_accumulation_steps is not None:
            raise ValueError("gradient_accumulation_steps is not supported by fastadam.keras")
        self._set_loss_scale(loss_scale_factor)
        self._set_decay(decay)
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str or None, got {type(name).__name__}")
        self._name_arg = name           # (a Keras-side optimizer lets Keras name itself)
        self.name = name or type(self).__name__.lower()
        if not isinstance(backend, str) or backend not in BACKENDS:
            raise ValueError(f"Invalid backend: {backend!r}; fastadam.keras supports "
                             f"{BACKENDS}")
        if backend == "numba":
            _backends.get_backend("numba")  # raises BackendUnavailableError saying why
        self.backend = backend
        self._be = None
        self._steps = 0
        self._slots: dict = {}
        self._flat: dict = {}
        self._built_vars = None
        self._call_cache = None

    @property
    def iterations(self) -> int:
        return self._steps

    # -- backend ---------------------------------------------------------------------
    def _backend(self):
        if self._be is None:
            if self.backend == "numpy":
                self._be = "numpy"
            else:
                try:
                    _backends.get_backend("numba")
                    self._be = "numba"
                except _backends.BackendUnavailableError:
                    if self.backend == "numba":
                        raise
                    self._be = "numpy"
        return self._be

    # -- state -----------------------------------------------------------------------
    #: float attributes that are state too (Nadam's ``u_product``); Keras variables on
    #: the Keras side, saved with the rest
    _scalar_state = ()

    def _state_specs(self):
        raise NotImplementedError

    def _keras_state_groups(self):
        """The state names in the order Keras makes its optimizer variables: a list
        of groups, each made for every variable in turn, interleaved as Keras does."""
        names = tuple(n for n, _ in self._state_specs())
        return [names] if names else []

    def _new_slot(self, v):
        root = owner(v)
        fs = self._flat.get(id(root))
        if fs is not None and fs.base is root:
            off = (extent(v)[0] - extent(root)[0]) // v.itemsize
            arrays = {n: a[off:off + v.size].reshape(v.shape) for n, a in fs.arrays.items()}
            return _Slot(v, arrays, fs)
        return _Slot(v, {n: _alloc.full(v.shape, init, v.dtype)
                         for n, init in self._state_specs()})

    def _slot(self, v):
        s = self._slots.get(id(v))
        if s is None or s.var is not v:
            s = self._slots[id(v)] = self._new_slot(v)
        return s

    def _flat_slot(self, base, members):
        fs = self._flat.get(id(base))
        if fs is not None and fs.base is base:
            return fs
        fs = _FlatSlot(base, {n: _alloc.full(base.shape, init, base.dtype)
                              for n, init in self._state_specs()})
        b0 = extent(base)[0]
        for v in members:
            off = (extent(v)[0] - b0) // v.itemsize
            old = self._slots.get(id(v))
            views = {n: a[off:off + v.size].reshape(v.shape) for n, a in fs.arrays.items()}
            if old is not None and old.var is v:
                for n, a in old.arrays.items():   # state built earlier moves into the buffer
                    views[n][...] = a
            self._slots[id(v)] = _Slot(v, views, fs)
        self._flat[id(base)] = fs
        return fs

    def build(self, variables):
        """Create the state of ``variables`` now (Keras' ``build``); optional."""
        variables = list(variables)
        check_variables(variables)
        for v in variables:
            self._slot(v)
        self._built_vars = variables

    def get_slot(self, variable, name):
        """The state array ``name`` of ``variable`` (Keras' state names, e.g. "momentum")."""
        s = self._slots.get(id(variable))
        if s is None or s.var is not variable:
            raise KeyError("this variable has no state in this optimizer yet")
        if name not in s.arrays:
            raise KeyError(f"no state {name!r}; this optimizer keeps {list(s.arrays)}")
        return s.arrays[name]

    # -- the step --------------------------------------------------------------------
    def apply_gradients(self, grads_and_vars):
        """Apply one step: ``grads_and_vars`` is an iterable of (gradient, variable) pairs.

        Variables are updated in place.  Every check (types, dtypes, shapes,
        contiguity, aliasing, the schedule's value) runs before anything is
        written.  Returns :attr:`iterations` (after the step), as tf.keras did.
        """
        pairs = list(grads_and_vars)
        for k, pair in enumerate(pairs):
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise TypeError(f"grads_and_vars[{k}] must be a (gradient, variable) pair")
        grads = [p[0] for p in pairs]
        variables = [p[1] for p in pairs]
        self.apply(grads, variables)
        return self._steps

    def apply(self, grads, trainable_variables=None):
        """Apply one step to ``trainable_variables`` (default: those given to :meth:`build`)."""
        grads = list(grads)
        if not grads:
            return
        if trainable_variables is None:
            if self._built_vars is None:
                raise ValueError("When passing `grads` without `variables`, the optimizer "
                                 "must already be built: call `build(variables)` first")
            trainable_variables = self._built_vars
        variables = list(trainable_variables)
        # The checks and the layout (flat buffers, state arrays) of the last call are
        # kept: a loop stepping the same arrays pays for them once.  Holding the arrays
        # keeps their ids from being reused; only writeability can change meanwhile.
        key = (tuple(map(id, grads)), tuple(map(id, variables)))
        cached = self._call_cache
        if cached is not None and cached[0] == key and \
                all(v.flags.writeable for _, _, v in cached[1]):
            pairs, chunks = cached[1], cached[2]
            lr = self._current_lr()
        else:
            self._call_cache = None
            pairs = check_pairs(grads, variables)
            lr = self._current_lr()          # a bad schedule value raises before any state
            chunks = self._chunks(pairs)
            if len(pairs) == len(grads):     # (a call with None gradients warns each time)
                self._call_cache = (key, pairs, chunks, grads, variables)
        be = self._backend()
        st = self._prepare_step(lr)
        gscales = self._grad_scales(pairs)
        for p, g, arrays, k in chunks:
            if p.size == 0:
                continue
            gscale = gscales[k]
            if self.clipvalue:
                g = self._clip_values(g)
            if be == "numpy":
                self._numpy_update(p, g, arrays, gscale, st)
            else:
                family, kname, names, scal = self._plan(p.dtype, gscale, st)
                runner(family)(kname, (p, g) + tuple(arrays[n] for n in names), scal)
        self._finish_step(st)
        self._steps += 1

    def _prepare_step(self, lr):
        decay = 1.0 - self.weight_decay * lr if self.weight_decay is not None else 1.0
        return _Step(self._steps + 1, lr, decay)

    def _finish_step(self, st):
        pass

    def _chunks(self, pairs):
        """(param, grad, state arrays, pair index) of 1-D arrays: flat buffers where possible.

        The pair index says whose gradient factor applies (all of a flat chunk share one).
        """
        out = []
        rest = list(enumerate(pairs))
        if not self.clipnorm and len(pairs) > 1:
            groups: dict = {}
            for item in rest:
                groups.setdefault(id(owner(item[1][2])), []).append(item)
            rest = []
            for items in groups.values():
                flat = self._as_flat(items) if len(items) > 1 else None
                if flat is None:
                    rest.extend(items)
                else:
                    out.append(flat)
        for k, (_, g, v) in rest:
            s = self._slot(v)
            out.append((v.reshape(-1), g.reshape(-1),
                        {n: a.reshape(-1) for n, a in s.arrays.items()}, k))
        return out

    def _as_flat(self, items):
        """One chunk for variables tiling one buffer with grads tiling another, else None."""
        v_first, g_first = items[0][1][2], items[0][1][1]
        base = owner(v_first)
        if base.ndim != 1 or not base.flags.c_contiguous or not base.flags.writeable \
                or base.dtype != v_first.dtype:
            return None
        if sum(v.size for _, (_, _, v) in items) != base.size:
            return None   # the variables (disjoint, checked) do not cover the buffer
        gbase = owner(g_first)
        if gbase is base or gbase.ndim != 1 or not gbase.flags.c_contiguous \
                or gbase.size != base.size or gbase.dtype != base.dtype \
                or np.may_share_memory(base, gbase):
            return None
        b0, g0 = extent(base)[0], extent(gbase)[0]
        for _, (_, g, v) in items:
            if owner(g) is not gbase or extent(g)[0] - g0 != extent(v)[0] - b0:
                return None
        fs = self._flat_slot(base, [v for _, (_, _, v) in items])
        return base, gbase, fs.arrays, items[0][0]

    # -- per optimizer ---------------------------------------------------------------
    def _plan(self, dtype, gscale, st):
        raise NotImplementedError

    def _numpy_update(self, p, g, s, gscale, st):
        raise NotImplementedError

    def get_config(self) -> dict:
        """The constructor arguments (Keras' ``get_config``)."""
        cfg = {"name": self.name, "learning_rate": self._lr,
               "weight_decay": self.weight_decay, "clipnorm": self.clipnorm,
               "clipvalue": self.clipvalue, "global_clipnorm": self.global_clipnorm,
               "loss_scale_factor": self.loss_scale_factor, "decay": self.decay}
        cfg.update(self._config())
        return cfg

    def _config(self):
        return {}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self._config().items())
        return f"fastadam.keras.{type(self).__name__}(learning_rate={self._lr!r}, {args})"
