"""Adamax with Keras' epsilon (added after the maximum)."""

from __future__ import annotations

import numpy as np

from ._common import KERAS_RULES, check_beta, check_eps, common_doc
from .base import Optimizer


@common_doc()
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
        self.beta_1 = check_beta("beta_1", beta_1)
        self.beta_2 = check_beta("beta_2", beta_2)
        self.epsilon = check_eps(epsilon)
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm,
                         use_ema, ema_momentum, ema_overwrite_frequency, loss_scale_factor,
                         gradient_accumulation_steps, name, decay=decay, backend=backend)

    def _state_specs(self):
        return [("momentum", 0.0), ("norm", 0.0)]

    def _plan(self, dtype, gscale, st):
        c = dtype.type
        neg_clr = -st.lr / (1.0 - self.beta_1 ** st.t)
        return KERAS_RULES, "adamax", ("momentum", "norm"), (
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
