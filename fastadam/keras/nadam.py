"""Nadam with Keras' momentum schedule, on fastadam's (torch-form) NAdam kernel."""

from __future__ import annotations

import numpy as np

from .. import _scalars
from ._common import TORCH_RULES, check_beta, check_eps, common_doc
from .base import Optimizer


@common_doc()
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
        self.beta_1 = check_beta("beta_1", beta_1)
        self.beta_2 = check_beta("beta_2", beta_2)
        self.epsilon = check_eps(epsilon)
        self.u_product = 1.0
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm,
                         use_ema, ema_momentum, ema_overwrite_frequency, loss_scale_factor,
                         gradient_accumulation_steps, name, decay=decay, backend=backend)

    _scalar_state = ("u_product",)

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
        return TORCH_RULES, "nadam", ("momentum", "velocity"), scal

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
