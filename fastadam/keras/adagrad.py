"""Adagrad with Keras' math (the accumulator starts at 0.1, epsilon inside the root)."""

from __future__ import annotations

import numpy as np

from .. import _validate as _v
from ._common import KERAS_RULES, check_eps, common_doc
from .base import Optimizer


@common_doc()
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
        self.epsilon = check_eps(epsilon)
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm,
                         use_ema, ema_momentum, ema_overwrite_frequency, loss_scale_factor,
                         gradient_accumulation_steps, name, decay=decay, backend=backend)

    def _state_specs(self):
        return [("accumulator", self.initial_accumulator_value)]

    def _plan(self, dtype, gscale, st):
        c = dtype.type
        return KERAS_RULES, "adagrad", ("accumulator",), (
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
