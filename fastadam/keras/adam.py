"""Adam and AdamW with Keras' math ("epsilon hat"), on fastadam's torch-form Adam kernel."""

from __future__ import annotations

import math

import numpy as np

from .. import _validate as _v
from ._common import TORCH_RULES, check_beta, check_eps, common_doc
from .base import Optimizer


@common_doc()
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
        self.beta_1 = check_beta("beta_1", beta_1)
        self.beta_2 = check_beta("beta_2", beta_2)
        self.epsilon = check_eps(epsilon)
        self.amsgrad = _v.flag("amsgrad", amsgrad)
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm,
                         use_ema, ema_momentum, ema_overwrite_frequency, loss_scale_factor,
                         gradient_accumulation_steps, name, decay=decay, backend=backend)

    def _state_specs(self):
        s = [("momentum", 0.0), ("velocity", 0.0)]
        return s + ([("velocity_hat", 0.0)] if self.amsgrad else [])

    def _keras_state_groups(self):
        return [("momentum", "velocity")] + ([("velocity_hat",)] if self.amsgrad else [])

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
            return TORCH_RULES, "adam_amsgrad", ("momentum", "velocity", "velocity_hat"), scal
        return TORCH_RULES, "adam", ("momentum", "velocity"), scal

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


@common_doc(wd="0.004")
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
