r"""Keras-style optimizers on NumPy arrays: Keras 3's names, defaults and math.

``fastadam.keras`` offers :class:`Adam`, :class:`AdamW`, :class:`RMSprop`,
:class:`Adagrad`, :class:`SGD`, :class:`Adadelta`, :class:`Nadam` and
:class:`Adamax` with the constructor arguments, defaults and update math of
``keras.optimizers`` (Keras 3), used the Keras way::

    opt = fastadam.keras.Adam(learning_rate=0.001, beta_1=0.9, beta_2=0.999,
                              epsilon=1e-8, decay=0.0)
    opt.apply_gradients(zip(grads, variables))   # NumPy arrays, updated in place

Keras' math differs from torch.optim's, and it is Keras' that is used here:
Adam's "epsilon hat" form (``lr * sqrt(1 - beta_2**t) / (1 - beta_1**t)``,
epsilon added to the un-corrected root), epsilon inside the square root for
RMSprop/Adagrad/Adadelta, the learning rate inside the momentum buffer of SGD
and RMSprop, Nadam's momentum schedule ``beta_1 * (1 - 0.5 * 0.96**t)``,
Adamax's epsilon added after the maximum, Adagrad's accumulator starting at
``initial_accumulator_value=0.1``, and decoupled ``weight_decay`` (every
optimizer: ``var -= var * weight_decay * lr`` before the update).

Common arguments (all optimizers):

* ``learning_rate``: a float, or a callable.  A callable that takes an argument
  (a ``keras.optimizers.schedules.LearningRateSchedule``, ``lambda step: ...``)
  is called with the iteration count (steps done so far, 0 on the first step);
  one that takes none is called with no argument, as Keras does.
* ``weight_decay``: decoupled decay, or None.
* ``clipnorm`` (per-variable norm), ``global_clipnorm`` (norm over all the
  gradients of a call), ``clipvalue`` (element-wise); at most one; 0 or None
  means off, as in Keras.
* ``loss_scale_factor``: gradients are divided by it before clipping.
* ``decay`` (keyword only): tf.keras' legacy time decay, which Keras 3 ignores:
  the learning rate of the step after ``k`` steps is ``lr / (1 + decay * k)``
  (also used by ``weight_decay``).
* ``backend`` (keyword only): ``"auto"`` (numba, else numpy), ``"numba"`` (fused
  kernels) or ``"numpy"`` (a plain NumPy transcription of Keras' update steps,
  written for reading).
* ``use_ema``, ``gradient_accumulation_steps`` and their companions are accepted
  only at their defaults (not implemented).

State is built per variable on first use, keyed by the array's identity (the
optimizer keeps a reference to it); :meth:`Optimizer.get_slot` returns a state
array.  When the variables of a call are views that tile one contiguous buffer
(the views of a :class:`fastadam.FlatParams` buffer) and the gradients tile
another at the same offsets (``FlatParams.grads``), the whole buffer is updated
by one fused kernel call.
"""

from __future__ import annotations

import bisect
import inspect
import math
import numbers
import warnings

import numpy as np

from . import _backends
from . import _scalars
from . import _validate as _v

__all__ = ["Optimizer", "Adam", "AdamW", "RMSprop", "Adagrad", "SGD", "Adadelta", "Nadam",
           "Adamax"]

BACKENDS = ("auto", "numba", "numpy")


# --- argument checks ---------------------------------------------------------------

def _optional_nonneg(name, value):
    if value is None:
        return None
    v = _v.real(name, value)
    if v < 0:
        raise ValueError(f"Invalid {name}: {value} (must be >= 0 or None)")
    return v


def _takes_argument(f) -> bool:
    """Whether callable ``f`` takes a positional argument (a schedule) or none."""
    try:
        sig = inspect.signature(f)
    except (TypeError, ValueError):  # builtins without a signature: assume a schedule
        return True
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD,
             inspect.Parameter.VAR_POSITIONAL)
    return any(p.kind in kinds for p in sig.parameters.values())


def _lr_value(value, where) -> float:
    """A learning rate as a finite float >= 0 (accepts NumPy/torch 0-d scalars)."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{where} must be a real number, got bool")
    if isinstance(value, (str, bytes)) or not (isinstance(value, numbers.Real)
                                               or hasattr(value, "__float__")):
        raise TypeError(f"{where} must be a real number, got "
                        f"{type(value).__name__}: {value!r}")
    if not isinstance(value, numbers.Real):
        try:
            value = float(value)  # 0-d arrays and tensors returned by schedules
        except (TypeError, ValueError):
            raise TypeError(f"{where} must be a real number, got "
                            f"{type(value).__name__}: {value!r}") from None
    v = float(value)
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"Invalid {where}: {value} (must be finite and >= 0)")
    return v


def _extent(a):
    start = a.__array_interface__["data"][0]
    return start, start + a.nbytes


def _owner(a):
    """The array at the end of ``a``'s chain of ``.base`` (the one owning the memory)."""
    b = a
    while isinstance(b.base, np.ndarray):
        b = b.base
    return b


def _check_variable(i, v):
    if not isinstance(v, np.ndarray):
        raise TypeError(f"variables[{i}] must be a numpy.ndarray, got {type(v).__name__}")
    if v.dtype not in _v.FLOAT_DTYPES:
        raise TypeError(f"variables[{i}] has dtype {v.dtype}; only float32 and float64 "
                        "variables can be optimized")
    if not v.flags.c_contiguous:
        raise ValueError(f"variables[{i}] is not C-contiguous (a strided view); it is "
                         "updated in place, pass a contiguous array")
    if not v.flags.writeable:
        raise ValueError(f"variables[{i}] is read-only; it is updated in place")


def _disjoint(indexed):
    """Check that the (index, variable) pairs are pairwise disjoint; return sorted spans."""
    spans = sorted((*_extent(v), i) for i, v in indexed if v.size)
    for (s0, e0, i0), (s1, e1, i1) in zip(spans, spans[1:]):
        if s1 < e0:
            what = "the same array" if (s0, e0) == (s1, e1) else "overlapping in memory"
            raise ValueError(f"variables[{i0}] and variables[{i1}] are {what}; each "
                             "variable must be distinct")
    return spans


def _check_variables(variables):
    for i, v in enumerate(variables):
        _check_variable(i, v)
    _disjoint(list(enumerate(variables)))


def _check_pairs(grads, variables):
    """Validate (grad, variable) pairs; return the kept pairs. Writes nothing."""
    if len(grads) != len(variables):
        raise ValueError(f"got {len(grads)} gradients for {len(variables)} variables")
    pairs, missing = [], []
    for i, (g, v) in enumerate(zip(grads, variables)):
        _check_variable(i, v)
        if g is None:
            missing.append(i)
            continue
        if not isinstance(g, np.ndarray):
            raise TypeError(f"grads[{i}] must be a numpy.ndarray, got {type(g).__name__}")
        if g.dtype != v.dtype:
            raise TypeError(f"grads[{i}] has dtype {g.dtype}, but variables[{i}] has "
                            f"{v.dtype}")
        if g.shape != v.shape:
            raise ValueError(f"grads[{i}] has shape {g.shape}, but variables[{i}] has "
                             f"{v.shape}")
        if not g.flags.c_contiguous:
            raise ValueError(f"grads[{i}] is not C-contiguous (a strided view)")
        pairs.append((i, g, v))
    if not pairs:
        raise ValueError("No gradients provided for any variable.")
    if missing:
        warnings.warn(f"Gradients do not exist for variables {missing}; they are not "
                      "updated.", stacklevel=3)
    # Variables must be pairwise disjoint, and no gradient may overlap a variable.
    spans = _disjoint([(i, v) for i, _, v in pairs])
    starts = [s for s, _, _ in spans]
    for i, g, _ in pairs:
        if not g.size:
            continue
        gs, ge = _extent(g)
        k = bisect.bisect_right(starts, gs) - 1
        for j in (k, k + 1):
            if 0 <= j < len(spans) and spans[j][0] < ge and gs < spans[j][1]:
                raise ValueError(f"grads[{i}] overlaps variables[{spans[j][2]}] in memory")
    return pairs


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


def _cpu_run():
    from .kernels import cpu
    return cpu.run


def _keras_run():
    from .kernels import cpu_keras
    return cpu_keras.run


def _transform_attr(name):
    """A gradient-transform attribute (``clipnorm`` ...): validated when set, and
    setting it drops the per-call cache, which was built for the old value."""
    private = "_" + name

    def get(self):
        return getattr(self, private)

    def set(self, value):
        setattr(self, private, _optional_nonneg(name, value))
        self._call_cache = None
    return property(get, set, doc=f"``{name}``: None or a float >= 0; may be changed "
                                  "between steps.")


class Optimizer:
    """Base of the Keras-style optimizers (see the module docstring).

    Subclasses implement ``_state_specs()`` (state names in kernel order with
    their initial values), ``_plan(dtype, gscale, st)`` (the compiled kernel
    runner, its name, its state names and its scalars) and
    ``_numpy_update(p, g, s, gscale, st)`` (the readable NumPy step).

    Attributes
    ----------
    iterations : int
        Steps applied so far (``apply_gradients`` calls).
    learning_rate : float
        The learning rate of the next step, before the legacy ``decay``.
    """

    clipnorm = _transform_attr("clipnorm")
    clipvalue = _transform_attr("clipvalue")
    global_clipnorm = _transform_attr("global_clipnorm")

    def __init__(self, learning_rate, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, use_ema=False, ema_momentum=0.99,
                 ema_overwrite_frequency=None, loss_scale_factor=None,
                 gradient_accumulation_steps=None, name=None, *, decay=None,
                 backend="auto"):
        self._set_lr(learning_rate)
        self.weight_decay = _optional_nonneg("weight_decay", weight_decay)
        self.clipnorm = clipnorm
        self.clipvalue = clipvalue
        self.global_clipnorm = global_clipnorm
        if sum(a is not None for a in (clipnorm, clipvalue, global_clipnorm)) > 1:
            raise ValueError(
                "Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be set. "
                f"Received: clipnorm={clipnorm}, clipvalue={clipvalue}, "
                f"global_clipnorm={global_clipnorm}")
        if use_ema is not False:
            raise ValueError("use_ema is not supported by fastadam.keras (must be False)")
        if ema_overwrite_frequency is not None:
            raise ValueError("ema_overwrite_frequency is not supported by fastadam.keras")
        _v.real("ema_momentum", ema_momentum)
        if gradient_accumulation_steps is not None:
            raise ValueError("gradient_accumulation_steps is not supported by fastadam.keras")
        self.loss_scale_factor = None
        if loss_scale_factor is not None:
            self.loss_scale_factor = _v.real("loss_scale_factor", loss_scale_factor)
            if self.loss_scale_factor <= 0:
                raise ValueError(f"Invalid loss_scale_factor: {loss_scale_factor} (must be > 0)")
        self.decay = _optional_nonneg("decay", decay) or 0.0
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str or None, got {type(name).__name__}")
        self.name = name or type(self).__name__.lower()
        if not isinstance(backend, str) or backend not in BACKENDS:
            raise ValueError(f"Invalid backend: {backend!r}; fastadam.keras supports "
                             f"{BACKENDS}")
        if backend == "numba":
            _backends.get_backend("numba")  # raises BackendUnavailableError saying why
        self.backend = backend
        self._be = None
        self._iterations = 0
        self._slots: dict = {}
        self._flat: dict = {}
        self._scratch: dict = {}
        self._built_vars = None
        self._call_cache = None

    # -- learning rate ---------------------------------------------------------------
    def _set_lr(self, learning_rate):
        if callable(learning_rate):
            self._lr = learning_rate
            self._lr_takes_step = _takes_argument(learning_rate)
        else:
            self._lr = _lr_value(learning_rate, "learning_rate")
            self._lr_takes_step = False

    @property
    def learning_rate(self) -> float:
        return self._scheduled_lr()

    @learning_rate.setter
    def learning_rate(self, value):
        if callable(self._lr) and not callable(value):
            raise TypeError("This optimizer was created with a learning-rate schedule; "
                            "its learning_rate cannot be set to a float")
        self._set_lr(value)

    def _scheduled_lr(self) -> float:
        lr = self._lr
        if callable(lr):
            lr = lr(self._iterations) if self._lr_takes_step else lr()
            return _lr_value(lr, f"learning_rate (the schedule's value at iteration "
                                 f"{self._iterations})")
        return lr

    def _current_lr(self) -> float:
        """The learning rate of the next step: the schedule's value, then legacy ``decay``."""
        lr = self._scheduled_lr()
        if self.decay:
            lr = lr / (1.0 + self.decay * self._iterations)
        return lr

    @property
    def iterations(self) -> int:
        return self._iterations

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
    def _state_specs(self):
        raise NotImplementedError

    def _new_slot(self, v):
        owner = _owner(v)
        fs = self._flat.get(id(owner))
        if fs is not None and fs.base is owner:
            off = (_extent(v)[0] - _extent(owner)[0]) // v.itemsize
            arrays = {n: a[off:off + v.size].reshape(v.shape) for n, a in fs.arrays.items()}
            return _Slot(v, arrays, fs)
        return _Slot(v, {n: np.full(v.shape, init, dtype=v.dtype)
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
        fs = _FlatSlot(base, {n: np.full(base.shape, init, dtype=base.dtype)
                              for n, init in self._state_specs()})
        b0 = _extent(base)[0]
        for v in members:
            off = (_extent(v)[0] - b0) // v.itemsize
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
        _check_variables(variables)
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
        return self._iterations

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
            pairs = _check_pairs(grads, variables)
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
                run, kname, names, scal = self._plan(p.dtype, gscale, st)
                run(kname, (p, g) + tuple(arrays[n] for n in names), scal)
        self._finish_step(st)
        self._iterations += 1

    def _prepare_step(self, lr):
        decay = 1.0 - self.weight_decay * lr if self.weight_decay is not None else 1.0
        return _Step(self._iterations + 1, lr, decay)

    def _finish_step(self, st):
        pass

    def _grad_scales(self, pairs):
        """Per-pair gradient multipliers: 1/loss_scale_factor and the norm clipping."""
        base = 1.0 / self.loss_scale_factor if self.loss_scale_factor else 1.0
        if self.clipnorm:
            out = []
            for _, g, _ in pairs:
                norm = math.sqrt(float(np.vdot(g, g))) * base
                out.append(base * self._norm_scale(norm, self.clipnorm))
            return out
        if self.global_clipnorm:
            norm = math.sqrt(sum(float(np.vdot(g, g)) for _, g, _ in pairs)) * base
            c = self.global_clipnorm
            if not math.isfinite(norm):
                s = math.nan
            elif norm == 0:
                s = 1.0
            else:
                s = c * min(1.0 / norm, 1.0 / c)   # keras clip_by_global_norm
            return [base * s] * len(pairs)
        return [base] * len(pairs)

    @staticmethod
    def _norm_scale(norm, clip):
        """Keras ``_clip_by_norm``: ``g * clip / max(norm, clip)``, ``g`` when the norm is 0."""
        if norm != norm:
            return math.nan
        if norm == 0:
            return 1.0
        return clip / max(norm, clip)

    def _clip_values(self, g):
        """``clip(g, -clipvalue, clipvalue)`` into a scratch buffer kept between steps."""
        buf = self._scratch.get(g.dtype)
        if buf is None or buf.size < g.size:
            buf = self._scratch[g.dtype] = np.empty(g.size, dtype=g.dtype)
        out = buf[:g.size]
        c = g.dtype.type(self.clipvalue)
        if self.loss_scale_factor:
            np.multiply(g, g.dtype.type(1.0 / self.loss_scale_factor), out=out)
            np.clip(out, -c, c, out=out)
        else:
            np.clip(g, -c, c, out=out)
        return out

    def _chunks(self, pairs):
        """(param, grad, state arrays, pair index) of 1-D arrays: flat buffers where possible.

        The pair index says whose gradient factor applies (all of a flat chunk share one).
        """
        out = []
        rest = list(enumerate(pairs))
        if not self.clipnorm and len(pairs) > 1:
            groups: dict = {}
            for item in rest:
                groups.setdefault(id(_owner(item[1][2])), []).append(item)
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
        base = _owner(v_first)
        if base.ndim != 1 or not base.flags.c_contiguous or not base.flags.writeable \
                or base.dtype != v_first.dtype:
            return None
        if sum(v.size for _, (_, _, v) in items) != base.size:
            return None   # the variables (disjoint, checked) do not cover the buffer
        gbase = _owner(g_first)
        if gbase is base or gbase.ndim != 1 or not gbase.flags.c_contiguous \
                or gbase.size != base.size or gbase.dtype != base.dtype \
                or np.may_share_memory(base, gbase):
            return None
        b0, g0 = _extent(base)[0], _extent(gbase)[0]
        for _, (_, g, v) in items:
            if _owner(g) is not gbase or _extent(g)[0] - g0 != _extent(v)[0] - b0:
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


_COMMON_DOC = """
    learning_rate : float or callable, default {lr}
        A float, or a schedule called with the iteration count (or a callable of
        no argument).
    weight_decay : float or None, default {wd}
        Decoupled weight decay: ``var -= var * weight_decay * lr`` before the update.
    clipnorm, clipvalue, global_clipnorm : float or None
        Gradient clipping (per-variable norm, element-wise value, global norm);
        at most one.
    use_ema, ema_momentum, ema_overwrite_frequency, gradient_accumulation_steps
        Accepted at their defaults only (not implemented).
    loss_scale_factor : float or None
        Gradients are divided by it before clipping.
    name : str or None
    decay : float or None, keyword only
        tf.keras' legacy decay: ``lr_k = lr / (1 + decay * k)`` after ``k`` steps.
    backend : {{"auto", "numba", "numpy"}}, keyword only

    Raises
    ------
    TypeError, ValueError
        On a bad argument, here or in :meth:`apply_gradients` (before anything
        is written).

"""


def _doc(lr="0.001", wd="None"):
    def deco(cls):
        cls.__doc__ = cls.__doc__.replace("{common}", _COMMON_DOC.format(lr=lr, wd=wd))
        return cls
    return deco


def _beta(name, value):
    return _v.unit(name, value, f"{name} value")


def _eps(value):
    return _v.nonneg("epsilon", value, "epsilon value")


@_doc()
class Adam(Optimizer):
    r"""Adam with Keras' math ("epsilon hat"), in place on NumPy arrays.

    With :math:`t` the step (``iterations + 1``) and :math:`g` the clipped gradient::

        m     = m + (1 - beta_1) * (g - m)
        v     = v + (1 - beta_2) * (g*g - v)
        v_hat = max(v_hat, v)                           (amsgrad; the root uses v_hat)
        alpha = lr * sqrt(1 - beta_2**t) / (1 - beta_1**t)
        var   = var - alpha * m / (sqrt(v) + epsilon)

    Runs on fastadam's torch-form Adam kernel with ``inv_bc2_sqrt = 1`` and
    ``neg_step = -alpha``.

    Parameters
    ----------
    beta_1, beta_2 : float, default 0.9, 0.999
    epsilon : float, default 1e-7
    amsgrad : bool, default False{common}    Notes
    -----
    State arrays: ``"momentum"``, ``"velocity"`` (and ``"velocity_hat"``), as Keras names them.
    """

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 amsgrad=False, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, use_ema=False, ema_momentum=0.99,
                 ema_overwrite_frequency=None, loss_scale_factor=None,
                 gradient_accumulation_steps=None, name=None, *, decay=None,
                 backend="auto"):
        self.beta_1 = _beta("beta_1", beta_1)
        self.beta_2 = _beta("beta_2", beta_2)
        self.epsilon = _eps(epsilon)
        self.amsgrad = _v.flag("amsgrad", amsgrad)
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm,
                         use_ema, ema_momentum, ema_overwrite_frequency, loss_scale_factor,
                         gradient_accumulation_steps, name, decay=decay, backend=backend)

    def _state_specs(self):
        s = [("momentum", 0.0), ("velocity", 0.0)]
        return s + ([("velocity_hat", 0.0)] if self.amsgrad else [])

    def _alpha(self, st):
        return st.lr * math.sqrt(1.0 - self.beta_2 ** st.t) / (1.0 - self.beta_1 ** st.t)

    def _plan(self, dtype, gscale, st):
        c = dtype.type
        b1, b2 = self.beta_1, self.beta_2
        # fastadam.rules.adam.adam(p, g, m, v, gsign, l2, decay, omb1, beta2, omb2,
        #                          neg_step, inv_bc2_sqrt, eps)
        scal = (c(gscale), c(0.0), c(st.decay), c(1.0 - b1), c(b2), c(1.0 - b2),
                c(-self._alpha(st)), c(1.0), c(self.epsilon))
        if self.amsgrad:
            return _cpu_run(), "adam_amsgrad", ("momentum", "velocity", "velocity_hat"), scal
        return _cpu_run(), "adam", ("momentum", "velocity"), scal

    def _numpy_update(self, p, g, s, gscale, st):
        c = p.dtype.type
        g = g * c(gscale)
        p *= c(st.decay)
        m, v = s["momentum"], s["velocity"]
        m += (g - m) * c(1.0 - self.beta_1)
        v += (g * g - v) * c(1.0 - self.beta_2)
        if self.amsgrad:
            np.maximum(s["velocity_hat"], v, out=s["velocity_hat"])
            v = s["velocity_hat"]
        p -= m * c(self._alpha(st)) / (np.sqrt(v) + c(self.epsilon))

    def _config(self):
        return {"beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon,
                "amsgrad": self.amsgrad}


@_doc(wd="0.004")
class AdamW(Adam):
    r"""AdamW: :class:`Adam` with a decoupled ``weight_decay`` of 0.004 by default.

    ::

        var = var * (1 - weight_decay * lr)
        (then the Adam update of :class:`Adam`)

    Parameters
    ----------
    beta_1, beta_2 : float, default 0.9, 0.999
    epsilon : float, default 1e-7
    amsgrad : bool, default False{common}    """

    def __init__(self, learning_rate=0.001, weight_decay=0.004, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-7, amsgrad=False, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, use_ema=False, ema_momentum=0.99,
                 ema_overwrite_frequency=None, loss_scale_factor=None,
                 gradient_accumulation_steps=None, name=None, *, decay=None,
                 backend="auto"):
        if weight_decay is None:
            raise ValueError("Argument `weight_decay` must be a float. Received: "
                             "weight_decay=None")
        super().__init__(learning_rate, beta_1, beta_2, epsilon, amsgrad, weight_decay,
                         clipnorm, clipvalue, global_clipnorm, use_ema, ema_momentum,
                         ema_overwrite_frequency, loss_scale_factor,
                         gradient_accumulation_steps, name, decay=decay, backend=backend)


@_doc()
class RMSprop(Optimizer):
    r"""RMSprop with Keras' math (epsilon inside the root, lr inside the momentum).

    ::

        v   = rho * v + (1 - rho) * g*g
        a   = rho * a + (1 - rho) * g                 (centered)
        inc = lr * g / sqrt(v - a*a + epsilon)         (centered; else sqrt(v + epsilon))
        mom = momentum * mom + inc;  var = var - mom   (momentum > 0)
        var = var - inc                                (otherwise)

    Parameters
    ----------
    rho : float, default 0.9
    momentum : float, default 0.0
    epsilon : float, default 1e-7
    centered : bool, default False{common}    Notes
    -----
    State arrays: ``"velocity"``, ``"momentum"``, ``"average_gradient"``.
    """

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7,
                 centered=False, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, use_ema=False, ema_momentum=0.99,
                 ema_overwrite_frequency=None, loss_scale_factor=None,
                 gradient_accumulation_steps=None, name=None, *, decay=None,
                 backend="auto"):
        self.rho = _v.closed_unit("rho", rho, "rho value")
        self.momentum = _v.nonneg("momentum", momentum, "momentum value")
        self.epsilon = _eps(epsilon)
        self.centered = _v.flag("centered", centered)
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm,
                         use_ema, ema_momentum, ema_overwrite_frequency, loss_scale_factor,
                         gradient_accumulation_steps, name, decay=decay, backend=backend)

    def _state_specs(self):
        s = [("velocity", 0.0)]
        if self.centered:
            s.append(("average_gradient", 0.0))
        if self.momentum > 0:
            s.append(("momentum", 0.0))
        return s

    def _plan(self, dtype, gscale, st):
        c = dtype.type
        scal = (c(gscale), c(st.decay), c(self.rho), c(1.0 - self.rho), c(st.lr),
                c(self.epsilon))
        names = tuple(n for n, _ in self._state_specs())
        kname = "rmsprop" + ("_centered" if self.centered else "")
        if self.momentum > 0:
            kname += "_momentum"
            scal += (c(self.momentum),)
        return _keras_run(), kname, names, scal

    def _numpy_update(self, p, g, s, gscale, st):
        c = p.dtype.type
        g = g * c(gscale)
        p *= c(st.decay)
        rho = c(self.rho)
        vel = s["velocity"]
        vel[...] = rho * vel + c(1.0 - self.rho) * np.square(g)
        if self.centered:
            ag = s["average_gradient"]
            ag[...] = rho * ag + c(1.0 - self.rho) * g
            denominator = vel - np.square(ag) + c(self.epsilon)
        else:
            denominator = vel + c(self.epsilon)
        increment = c(st.lr) * g / np.sqrt(denominator)
        if self.momentum > 0:
            mom = s["momentum"]
            mom[...] = c(self.momentum) * mom + increment
            p -= mom
        else:
            p -= increment

    def _config(self):
        return {"rho": self.rho, "momentum": self.momentum, "epsilon": self.epsilon,
                "centered": self.centered}


@_doc()
class Adagrad(Optimizer):
    r"""Adagrad with Keras' math (accumulator from 0.1, epsilon inside the root).

    ::

        acc = acc + g*g                           (acc starts at initial_accumulator_value)
        var = var - lr * g / sqrt(acc + epsilon)

    Parameters
    ----------
    initial_accumulator_value : float, default 0.1
    epsilon : float, default 1e-7{common}    Notes
    -----
    State arrays: ``"accumulator"``.
    """

    def __init__(self, learning_rate=0.001, initial_accumulator_value=0.1, epsilon=1e-7,
                 weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None,
                 use_ema=False, ema_momentum=0.99, ema_overwrite_frequency=None,
                 loss_scale_factor=None, gradient_accumulation_steps=None, name=None, *,
                 decay=None, backend="auto"):
        self.initial_accumulator_value = _v.nonneg(
            "initial_accumulator_value", initial_accumulator_value,
            "initial_accumulator_value")
        self.epsilon = _eps(epsilon)
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm,
                         use_ema, ema_momentum, ema_overwrite_frequency, loss_scale_factor,
                         gradient_accumulation_steps, name, decay=decay, backend=backend)

    def _state_specs(self):
        return [("accumulator", self.initial_accumulator_value)]

    def _plan(self, dtype, gscale, st):
        c = dtype.type
        return _keras_run(), "adagrad", ("accumulator",), (
            c(gscale), c(st.decay), c(st.lr), c(self.epsilon))

    def _numpy_update(self, p, g, s, gscale, st):
        c = p.dtype.type
        g = g * c(gscale)
        p *= c(st.decay)
        acc = s["accumulator"]
        acc += np.square(g)
        p -= c(st.lr) * g / np.sqrt(acc + c(self.epsilon))

    def _config(self):
        return {"initial_accumulator_value": self.initial_accumulator_value,
                "epsilon": self.epsilon}


@_doc(lr="0.01")
class SGD(Optimizer):
    r"""SGD with Keras' momentum (the learning rate inside the buffer).

    ::

        m   = momentum * m - lr * g                  (momentum != 0)
        var = var + momentum * m - lr * g            (nesterov)
        var = var + m                                (momentum, not nesterov)
        var = var - lr * g                           (momentum == 0)

    Parameters
    ----------
    momentum : float, default 0.0
        In [0, 1].
    nesterov : bool, default False{common}    Notes
    -----
    State arrays: ``"momentum"`` (when momentum != 0).
    """

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, weight_decay=None,
                 clipnorm=None, clipvalue=None, global_clipnorm=None, use_ema=False,
                 ema_momentum=0.99, ema_overwrite_frequency=None, loss_scale_factor=None,
                 gradient_accumulation_steps=None, name=None, *, decay=None,
                 backend="auto"):
        self.momentum = _v.closed_unit("momentum", momentum, "momentum value")
        self.nesterov = _v.flag("nesterov", nesterov)
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm,
                         use_ema, ema_momentum, ema_overwrite_frequency, loss_scale_factor,
                         gradient_accumulation_steps, name, decay=decay, backend=backend)

    def _state_specs(self):
        return [("momentum", 0.0)] if self.momentum != 0 else []

    def _plan(self, dtype, gscale, st):
        c = dtype.type
        scal = (c(gscale), c(st.decay), c(st.lr))
        if self.momentum == 0:
            return _keras_run(), "sgd", (), scal
        return _keras_run(), "sgd_momentum", ("momentum",), scal + (
            c(self.momentum), bool(self.nesterov))

    def _numpy_update(self, p, g, s, gscale, st):
        c = p.dtype.type
        g = g * c(gscale)
        p *= c(st.decay)
        lr = c(st.lr)
        if self.momentum == 0:
            p -= g * lr
            return
        mu = c(self.momentum)
        m = s["momentum"]
        m[...] = m * mu - g * lr
        if self.nesterov:
            p += m * mu - g * lr
        else:
            p += m

    def _config(self):
        return {"momentum": self.momentum, "nesterov": self.nesterov}


@_doc()
class Adadelta(Optimizer):
    r"""Adadelta with Keras' defaults (``learning_rate=0.001``, ``rho=0.95``).

    ::

        ag    = rho * ag + (1 - rho) * g*g
        delta = -sqrt(ad + epsilon) * g / sqrt(ag + epsilon)
        ad    = rho * ad + (1 - rho) * delta*delta
        var   = var + lr * delta

    Parameters
    ----------
    rho : float, default 0.95
    epsilon : float, default 1e-7{common}    Notes
    -----
    State arrays: ``"accumulated_grad"``, ``"accumulated_delta_var"``.
    """

    def __init__(self, learning_rate=0.001, rho=0.95, epsilon=1e-7, weight_decay=None,
                 clipnorm=None, clipvalue=None, global_clipnorm=None, use_ema=False,
                 ema_momentum=0.99, ema_overwrite_frequency=None, loss_scale_factor=None,
                 gradient_accumulation_steps=None, name=None, *, decay=None,
                 backend="auto"):
        self.rho = _v.closed_unit("rho", rho, "rho value")
        self.epsilon = _eps(epsilon)
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm,
                         use_ema, ema_momentum, ema_overwrite_frequency, loss_scale_factor,
                         gradient_accumulation_steps, name, decay=decay, backend=backend)

    def _state_specs(self):
        return [("accumulated_grad", 0.0), ("accumulated_delta_var", 0.0)]

    def _plan(self, dtype, gscale, st):
        c = dtype.type
        return _keras_run(), "adadelta", ("accumulated_grad", "accumulated_delta_var"), (
            c(gscale), c(st.decay), c(self.rho), c(1.0 - self.rho), c(st.lr),
            c(self.epsilon))

    def _numpy_update(self, p, g, s, gscale, st):
        c = p.dtype.type
        g = g * c(gscale)
        p *= c(st.decay)
        rho, eps = c(self.rho), c(self.epsilon)
        ag, ad = s["accumulated_grad"], s["accumulated_delta_var"]
        ag[...] = rho * ag + c(1.0 - self.rho) * np.square(g)
        delta = -(np.sqrt(ad + eps) * g / np.sqrt(ag + eps))
        ad[...] = rho * ad + c(1.0 - self.rho) * np.square(delta)
        p += c(st.lr) * delta

    def _config(self):
        return {"rho": self.rho, "epsilon": self.epsilon}


@_doc()
class Nadam(Optimizer):
    r"""Nadam with Keras' momentum schedule ``u_t = beta_1 * (1 - 0.5 * 0.96**t)``.

    With ``P_t = u_1 * ... * u_t`` (kept between steps)::

        m     = m + (1 - beta_1) * (g - m)
        v     = v + (1 - beta_2) * (g*g - v)
        m_hat = u_{t+1} * m / (1 - P_t * u_{t+1}) + (1 - u_t) * g / (1 - P_t)
        v_hat = v / (1 - beta_2**t)
        var   = var - lr * m_hat / (sqrt(v_hat) + epsilon)

    This is torch's NAdam with ``momentum_decay = 1`` (``0.96**(t * 1)``); it runs
    on fastadam's NAdam kernel.

    Parameters
    ----------
    beta_1, beta_2 : float, default 0.9, 0.999
    epsilon : float, default 1e-7{common}    Notes
    -----
    State arrays: ``"momentum"``, ``"velocity"``; the product ``u_product`` is one float.
    """

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None,
                 use_ema=False, ema_momentum=0.99, ema_overwrite_frequency=None,
                 loss_scale_factor=None, gradient_accumulation_steps=None, name=None, *,
                 decay=None, backend="auto"):
        self.beta_1 = _beta("beta_1", beta_1)
        self.beta_2 = _beta("beta_2", beta_2)
        self.epsilon = _eps(epsilon)
        self.u_product = 1.0
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm,
                         use_ema, ema_momentum, ema_overwrite_frequency, loss_scale_factor,
                         gradient_accumulation_steps, name, decay=decay, backend=backend)

    def _state_specs(self):
        return [("momentum", 0.0), ("velocity", 0.0)]

    _KERAS_MOMENTUM_DECAY = 1.0   # Keras' 0.96**t is torch's 0.96**(t * momentum_decay)

    def _u(self, t):
        return _scalars.nadam_mu(self.beta_1, self._KERAS_MOMENTUM_DECAY, t)

    def _prepare_step(self, lr):
        st = super()._prepare_step(lr)
        u_t, u_next = self._u(st.t), self._u(st.t + 1)
        prod = self.u_product * u_t
        st.extra = (u_t, u_next, prod)
        return st

    def _finish_step(self, st):
        self.u_product = st.extra[2]

    def _coefficients(self, st):
        u_t, u_next, prod = st.extra
        cg = -st.lr * (1.0 - u_t) / (1.0 - prod)
        cm = -st.lr * u_next / (1.0 - prod * u_next)
        return cg, cm

    def _plan(self, dtype, gscale, st):
        c = dtype.type
        cg, cm = self._coefficients(st)
        b1, b2 = self.beta_1, self.beta_2
        # fastadam.rules.nadam.nadam(p, g, m, v, gsign, l2, decay, omb1, beta2, omb2,
        #                            inv_bc2, eps, cg, cm)
        scal = (c(gscale), c(0.0), c(st.decay), c(1.0 - b1), c(b2), c(1.0 - b2),
                c(1.0 / (1.0 - b2 ** st.t)), c(self.epsilon), c(cg), c(cm))
        return _cpu_run(), "nadam", ("momentum", "velocity"), scal

    def _numpy_update(self, p, g, s, gscale, st):
        c = p.dtype.type
        g = g * c(gscale)
        p *= c(st.decay)
        u_t, u_next, prod = st.extra
        m, v = s["momentum"], s["velocity"]
        m += (g - m) * c(1.0 - self.beta_1)
        v += (g * g - v) * c(1.0 - self.beta_2)
        m_hat = c(u_next) * m / c(1.0 - prod * u_next) + c(1.0 - u_t) * g / c(1.0 - prod)
        v_hat = v / c(1.0 - self.beta_2 ** st.t)
        p -= m_hat * c(st.lr) / (np.sqrt(v_hat) + c(self.epsilon))

    def _config(self):
        return {"beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon}


@_doc()
class Adamax(Optimizer):
    r"""Adamax with Keras' epsilon (added after the maximum).

    ::

        m   = m + (1 - beta_1) * (g - m)
        u   = max(beta_2 * u, |g|)
        var = var - lr * m / ((1 - beta_1**t) * (u + epsilon))

    Parameters
    ----------
    beta_1, beta_2 : float, default 0.9, 0.999
    epsilon : float, default 1e-7{common}    Notes
    -----
    State arrays: ``"momentum"``, ``"norm"``.
    """

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None,
                 use_ema=False, ema_momentum=0.99, ema_overwrite_frequency=None,
                 loss_scale_factor=None, gradient_accumulation_steps=None, name=None, *,
                 decay=None, backend="auto"):
        self.beta_1 = _beta("beta_1", beta_1)
        self.beta_2 = _beta("beta_2", beta_2)
        self.epsilon = _eps(epsilon)
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm,
                         use_ema, ema_momentum, ema_overwrite_frequency, loss_scale_factor,
                         gradient_accumulation_steps, name, decay=decay, backend=backend)

    def _state_specs(self):
        return [("momentum", 0.0), ("norm", 0.0)]

    def _plan(self, dtype, gscale, st):
        c = dtype.type
        neg_clr = -st.lr / (1.0 - self.beta_1 ** st.t)
        return _keras_run(), "adamax", ("momentum", "norm"), (
            c(gscale), c(st.decay), c(1.0 - self.beta_1), c(self.beta_2), c(self.epsilon),
            c(neg_clr))

    def _numpy_update(self, p, g, s, gscale, st):
        c = p.dtype.type
        g = g * c(gscale)
        p *= c(st.decay)
        m, u = s["momentum"], s["norm"]
        m += (g - m) * c(1.0 - self.beta_1)
        np.maximum(c(self.beta_2) * u, np.abs(g), out=u)
        p -= c(st.lr) * m / (c(1.0 - self.beta_1 ** st.t) * (u + c(self.epsilon)))

    def _config(self):
        return {"beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon}
