"""The Keras-style optimizers' learning rate and gradient transforms.

Two mixins of :class:`fastadam.keras.base.Optimizer`:

* :class:`LearningRateMixin`: ``learning_rate`` as a float or a schedule
  (a callable taking the iteration count, or none), and tf.keras' legacy time
  ``decay`` (``lr / (1 + decay * k)`` after ``k`` steps);
* :class:`GradientTransformMixin`: ``loss_scale_factor`` and Keras' clipping
  (``clipnorm``, ``global_clipnorm``, ``clipvalue``), as gradient multipliers
  per (gradient, variable) pair and an element-wise clip into a scratch buffer.

Both read the optimizer's ``_steps`` (steps done so far) and write its
``_call_cache`` (dropped when a transform changes), which the base class owns.
"""

from __future__ import annotations

import inspect
import math
import numbers

import numpy as np

from .. import _alloc
from .. import _validate as _v
from ._checks import optional_nonneg


def takes_argument(f) -> bool:
    """Whether callable ``f`` takes a positional argument (a schedule) or none."""
    try:
        sig = inspect.signature(f)
    except (TypeError, ValueError):  # builtins without a signature: assume a schedule
        return True
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD,
             inspect.Parameter.VAR_POSITIONAL)
    return any(p.kind in kinds for p in sig.parameters.values())


def lr_value(value, where) -> float:
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


def norm_scale(norm, clip):
    """Keras ``_clip_by_norm``: ``g * clip / max(norm, clip)``, ``g`` when the norm is 0."""
    if norm != norm:
        return math.nan
    if norm == 0:
        return 1.0
    return clip / max(norm, clip)


def global_norm_scale(norm, clip):
    """Keras ``clip_by_global_norm``'s factor for a global norm ``norm``."""
    if not math.isfinite(norm):
        return math.nan
    if norm == 0:
        return 1.0
    return clip * min(1.0 / norm, 1.0 / clip)


def host_sumsq(grads):
    """The sum of squares of each host array of ``grads`` (NumPy's dot: the arrays'
    precision), as Python floats."""
    return [float(np.vdot(g, g)) for g in grads]


def _transform_attr(name):
    """A gradient-transform attribute (``clipnorm`` ...): validated when set, and
    setting it drops the per-call cache, which was built for the old value."""
    private = "_" + name

    def get(self):
        return getattr(self, private)

    def set(self, value):
        setattr(self, private, optional_nonneg(name, value))
        self._call_cache = None
    return property(get, set, doc=f"``{name}``: None or a float >= 0; may be changed "
                                  "between steps.")


class LearningRateMixin:
    """``learning_rate`` (a float or a schedule) and tf.keras' legacy ``decay``."""

    def _set_lr(self, learning_rate):
        if callable(learning_rate):
            self._lr = learning_rate
            self._lr_takes_step = takes_argument(learning_rate)
        else:
            self._lr = lr_value(learning_rate, "learning_rate")
            self._lr_takes_step = False

    def _set_decay(self, decay):
        """tf.keras' legacy time decay: None or a float >= 0 (None means 0)."""
        self.decay = optional_nonneg("decay", decay) or 0.0

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
            lr = lr(self._steps) if self._lr_takes_step else lr()
            return lr_value(lr, f"learning_rate (the schedule's value at iteration "
                                f"{self._steps})")
        return lr

    def _current_lr(self) -> float:
        """The learning rate of the next step: the schedule's value, then legacy ``decay``."""
        lr = self._scheduled_lr()
        if self.decay:
            lr = lr / (1.0 + self.decay * self._steps)
        return lr


class GradientTransformMixin:
    """``loss_scale_factor`` and Keras' ``clipnorm``, ``global_clipnorm``, ``clipvalue``."""

    clipnorm = _transform_attr("clipnorm")
    clipvalue = _transform_attr("clipvalue")
    global_clipnorm = _transform_attr("global_clipnorm")

    def _set_clipping(self, clipnorm, clipvalue, global_clipnorm):
        """Validate and set the clipping arguments (at most one of them)."""
        self.clipnorm = clipnorm
        self.clipvalue = clipvalue
        self.global_clipnorm = global_clipnorm
        if sum(a is not None for a in (clipnorm, clipvalue, global_clipnorm)) > 1:
            raise ValueError(
                "Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be set. "
                f"Received: clipnorm={clipnorm}, clipvalue={clipvalue}, "
                f"global_clipnorm={global_clipnorm}")
        self._scratch: dict = {}

    def _set_loss_scale(self, loss_scale_factor):
        """Validate and set ``loss_scale_factor`` (None, or a float > 0)."""
        self.loss_scale_factor = None
        if loss_scale_factor is not None:
            self.loss_scale_factor = _v.real("loss_scale_factor", loss_scale_factor)
            if self.loss_scale_factor <= 0:
                raise ValueError(f"Invalid loss_scale_factor: {loss_scale_factor} (must be > 0)")

    def _grad_scales(self, pairs, sumsq=None):
        """Per-pair gradient multipliers: 1/loss_scale_factor and the norm clipping.

        With ``clipvalue`` the multiplier is 1: :meth:`_clip_values` unscales
        before it clips (Keras' order), so the kernel must not unscale again.
        ``sumsq(grads)`` gives the gradients' sums of squares as floats (default:
        :func:`host_sumsq`; Keras variables on a GPU pass one that reduces there).
        """
        if self.clipvalue:
            return [1.0] * len(pairs)
        base = 1.0 / self.loss_scale_factor if self.loss_scale_factor else 1.0
        if not (self.clipnorm or self.global_clipnorm):
            return [base] * len(pairs)
        sq = (sumsq or host_sumsq)([g for _, g, _ in pairs])
        if self.clipnorm:
            return [base * self._norm_scale(math.sqrt(s) * base, self.clipnorm) for s in sq]
        norm = math.sqrt(sum(sq)) * base
        return [base * global_norm_scale(norm, self.global_clipnorm)] * len(pairs)

    _norm_scale = staticmethod(norm_scale)

    def _clip_values(self, g):
        """``clip(g, -clipvalue, clipvalue)`` into a scratch buffer kept between steps."""
        buf = self._scratch.get(g.dtype)
        if buf is None or buf.size < g.size:
            buf = self._scratch[g.dtype] = _alloc.empty(g.size, g.dtype)
        out = buf[:g.size]
        c = g.dtype.type(self.clipvalue)
        if self.loss_scale_factor:
            np.multiply(g, g.dtype.type(1.0 / self.loss_scale_factor), out=out)
            np.clip(out, -c, c, out=out)
        else:
            np.clip(g, -c, c, out=out)
        return out
