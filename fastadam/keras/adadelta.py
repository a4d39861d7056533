"""Adadelta with Keras' defaults (``learning_rate=0.001``, ``rho=0.95``)."""

from __future__ import annotations

import numpy as np

from .. import _validate as _v
from ._common import KERAS_RULES, check_eps, common_doc
from .base import Optimizer


@common_doc()
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
        self.epsilon = check_eps(epsilon)
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm,
                         use_ema, ema_momentum, ema_overwrite_frequency, loss_scale_factor,
                         gradient_accumulation_steps, name, decay=decay, backend=backend)

    def _state_specs(self):
        return [("accumulated_grad", 0.0), ("accumulated_delta_var", 0.0)]

    def _plan(self, dtype, gscale, st):
        c = dtype.type
        return KERAS_RULES, "adadelta", ("accumulated_grad", "accumulated_delta_var"), (
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
