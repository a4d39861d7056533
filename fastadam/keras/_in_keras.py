"""The Keras-side twins of the fastadam.keras optimizers.

Imported only once the user has imported Keras (:mod:`fastadam.keras._bridge`
decides); it imports Keras, then already loaded, and never torch (the torch
backend's code, :mod:`fastadam.keras._torch_views`, is imported when a step on
Keras variables runs there).

:func:`twin` builds, once per fastadam class ``C``, the class
``C_keras(KerasSide, C, keras.optimizers.Optimizer)``, named like ``C`` and
registered as the Keras serializable ``"fastadam>C"``.  Its instances are
Keras optimizers in every respect Keras looks at (``iterations`` and
``learning_rate`` are Keras variables, the state is Keras variables with Keras'
names, in Keras' order, so ``optimizer.variables``, ``model.save`` and
``load_model`` work unchanged), and fastadam optimizers in every other:
the hyperparameters, their checks, the per-step scalars and the kernels are
``C``'s.  Given NumPy arrays they take ``C``'s NumPy path, as before.
"""

from __future__ import annotations

import keras
import numpy as np

from .._errors import BackendUnavailableError
from ._keras_step import KerasStepMixin
from ._transforms import LearningRateMixin

KerasOptimizer = keras.optimizers.Optimizer
KerasVariable = keras.Variable
LearningRateSchedule = keras.optimizers.schedules.LearningRateSchedule

_TWINS: dict = {}

#: attributes of the NumPy path that Keras' tracker need not wrap (never hold variables)
_UNTRACKED = frozenset({"_call_cache", "_slots", "_flat", "_built_vars", "_scratch",
                        "_kviews", "_kstate", "_kscalars", "_klayout"})


def twin(cls):
    """The Keras-side class of fastadam.keras optimizer class ``cls`` (built once)."""
    t = _TWINS.get(cls)
    if t is None:
        # named "<Class>._keras_twin" in the fastadam class's module, where the
        # descriptor _bridge.TwinName finds it again: pickle finds classes by name
        ns = {"__module__": cls.__module__, "__qualname__": cls.__qualname__ + "._keras_twin",
              "__doc__": cls.__doc__, "_keras_side": True}
        t = type(cls.__name__, (KerasSide, cls, KerasOptimizer), ns)
        if cls.__module__.startswith("fastadam.keras"):
            keras.saving.register_keras_serializable(package="fastadam",
                                                     name=cls.__name__)(t)
        _TWINS[cls] = t
    return t


def _is_keras_variable(v):
    return isinstance(v, KerasVariable)


class KerasSide(KerasStepMixin):
    """What makes a fastadam.keras optimizer a Keras optimizer (mixed in by :func:`twin`).

    Keras variables go through Keras' protocol (``build`` creates the state as
    Keras variables, ``apply`` is :meth:`KerasStepMixin._keras_apply`); NumPy
    arrays through the fastadam class's own methods.
    """

    def __init__(self, *args, **kwargs):
        object.__setattr__(self, "_lock", False)   # Keras' "super().__init__ called" mark
        super().__init__(*args, **kwargs)           # the fastadam class: every check
        lr = self._lr if callable(self._lr) else float(self._lr)
        KerasOptimizer.__init__(
            self, learning_rate=lr, weight_decay=self.weight_decay,
            clipnorm=self.clipnorm, clipvalue=self.clipvalue,
            global_clipnorm=self.global_clipnorm, use_ema=False,
            ema_momentum=self.ema_momentum, ema_overwrite_frequency=None,
            loss_scale_factor=self.loss_scale_factor, gradient_accumulation_steps=None,
            name=self._name_arg)
        object.__setattr__(self, "_kviews", {})
        object.__setattr__(self, "_kstate", None)
        object.__setattr__(self, "_kscalars", {})
        object.__setattr__(self, "_klayout", None)

    def __reduce_ex__(self, protocol):
        # as Keras' own optimizers: pickled through Keras' saving library (config and
        # variables), which finds the twin as the registered "fastadam>Name"; the
        # fastadam class's own reduction would name the twin by the fastadam class
        return KerasOptimizer.__reduce__(self)

    def __setattr__(self, name, value):
        # Keras' __setattr__ tracks variables (and containers that may hold some);
        # plain values and the NumPy path's caches skip it.
        if name not in _UNTRACKED and isinstance(value, (KerasVariable, list, tuple, dict)):
            KerasOptimizer.__setattr__(self, name, value)
        else:
            object.__setattr__(self, name, value)

    # -- one step count, one learning rate: Keras' variables --------------------------
    @property
    def _steps(self):
        it = self.__dict__.get("_iterations")
        if it is None:
            return 0
        t = getattr(it, "_value", None)           # the backend's tensor: Keras'
        return int(it.value if t is None else t)  # .value property is 10x slower

    @_steps.setter
    def _steps(self, n):
        it = self.__dict__.get("_iterations")
        if it is not None:
            it.assign(n)

    @property
    def iterations(self):
        """Steps applied so far: Keras' ``iterations`` variable."""
        return self._iterations

    @property
    def learning_rate(self):
        """Keras' reading: the variable, or the schedule's value at ``iterations``."""
        if callable(self._lr) and self._lr_takes_step \
                and not isinstance(self._lr, LearningRateSchedule):
            return self._scheduled_lr()      # fastadam calls it with the step count
        return KerasOptimizer.learning_rate.fget(self)

    @learning_rate.setter
    def learning_rate(self, value):
        LearningRateMixin.learning_rate.fset(self, value)     # checks, as fastadam does
        KerasOptimizer.learning_rate.fset(self, self._lr if callable(self._lr)
                                          else float(self._lr))

    @staticmethod
    def _is_schedule(lr):
        return isinstance(lr, LearningRateSchedule)

    # -- Keras variables or NumPy arrays -----------------------------------------------
    def _kind(self, variables, what="variables"):
        """"keras" or "numpy", from the first variable; TypeError for anything else."""
        if not variables:
            return "keras" if self.built or self._built_vars is None else "numpy"
        v = variables[0]
        if _is_keras_variable(v):
            return "keras"
        if isinstance(v, np.ndarray):
            return "numpy"
        raise TypeError(f"{what}[0] must be a keras.Variable (or a numpy.ndarray), got "
                        f"{type(v).__name__}")

    def build(self, variables):
        """Create the state of ``variables``: Keras variables (Keras' ``build``) or arrays."""
        variables = list(variables)
        if self._kind(variables) == "numpy":
            return super().build(variables)
        self._keras_build(variables)

    def apply_gradients(self, grads_and_vars):
        """Apply one step to (gradient, variable) pairs; returns :attr:`iterations`."""
        pairs = list(grads_and_vars)
        for k, pair in enumerate(pairs):
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise TypeError(f"grads_and_vars[{k}] must be a (gradient, variable) pair")
        self.apply([p[0] for p in pairs], [p[1] for p in pairs])
        return self._iterations

    def apply(self, grads, trainable_variables=None):
        """Apply one step (Keras' ``apply``): to Keras variables, or to NumPy arrays."""
        grads = list(grads)
        if not grads:                       # a no-op, as in Keras
            return
        if trainable_variables is None:
            if not self.built and self._built_vars is None:
                raise ValueError("When passing `grads` without `variables`, the optimizer "
                                 "must already be built: call `build(variables)` first")
            kind = "keras" if self.built else "numpy"
        else:
            trainable_variables = list(trainable_variables)
            kind = self._kind(trainable_variables)
        if kind == "numpy":
            return super().apply(grads, trainable_variables)
        return self._keras_apply(grads, trainable_variables)

    def get_slot(self, variable, name):
        """The state ``name`` of ``variable``: a Keras variable for a Keras variable."""
        if not _is_keras_variable(variable):
            return super().get_slot(variable, name)
        if not self.built or self._var_key(variable) not in self._trainable_variables_indices:
            raise KeyError("this variable has no state in this optimizer yet")
        if name not in self._kstate:
            raise KeyError(f"no state {name!r}; this optimizer keeps {list(self._kstate)}")
        return self._kstate[name][self._get_variable_index(variable)]

    # -- Keras' build --------------------------------------------------------------------
    def _require_torch(self):
        """Refuse Keras variables on a backend where fastadam's step is not wired."""
        name = keras.backend.backend()
        if name != "torch":
            cls = type(self).__name__
            raise BackendUnavailableError(
                f"fastadam.keras.{cls} updates Keras variables in place, which is wired "
                f"for Keras' torch backend only; this Keras runs on {name!r}.  What "
                f"works: set KERAS_BACKEND=torch before importing keras; or, on "
                f"{name!r}, use keras.optimizers.{cls}.  (fastadam.keras on NumPy "
                f"arrays works whatever Keras' backend.)")

    def _keras_build(self, variables):
        self._require_torch()
        if self.built:
            return
        for i, v in enumerate(variables):
            if not _is_keras_variable(v):
                raise TypeError(f"variables[{i}] must be a keras.Variable, got "
                                f"{type(v).__name__}")
            if v.dtype not in ("float32", "float64"):
                raise TypeError(
                    f"variables[{i}] ({v.path}) has dtype {v.dtype}; fastadam.keras "
                    "updates float32 and float64 variables (for float16 / bfloat16 "
                    "compute use a mixed precision policy: its variables are float32)")
        KerasOptimizer.build(self, variables)
        init = dict(self._state_specs())
        state = {}
        for names in self._keras_state_groups():
            made = self.add_optimizer_variables(
                variables, list(names), [keras.initializers.Constant(init[n])
                                         for n in names])
            for n, vs in zip(names, made):
                state[n] = vs
        for n in self._scalar_state:
            dtype = variables[0].dtype if variables else keras.config.floatx()
            self._kscalars[n] = self.add_variable(
                shape=(), dtype=dtype, name=n,
                initializer=keras.initializers.Constant(getattr(self, n)))
        object.__setattr__(self, "_kstate", state)

    # -- configuration -------------------------------------------------------------------
    def get_config(self):
        """Keras' configuration (``learning_rate`` serialized as Keras does) and ours."""
        cfg = KerasOptimizer.get_config(self)
        cfg.update(self._config())
        if self.decay:
            cfg["decay"] = self.decay
        if self.backend != "auto":
            cfg["backend"] = self.backend
        return cfg
