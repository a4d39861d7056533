"""RMSprop with Keras' math (epsilon inside the root, the learning rate in the momentum)."""

from __future__ import annotations

import numpy as np

from .. import _validate as _v
from ._common import KERAS_RULES, check_eps, common_doc
from .base import Optimizer


@common_doc()
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
        self.epsilon = check_eps(epsilon)
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

    def _keras_state_groups(self):
        return [("velocity",)] + ([("momentum",)] if self.momentum > 0 else []) + (
            [("average_gradient",)] if self.centered else [])

    def _plan(self, dtype, gscale, st):
        c = dtype.type
        scal = (c(gscale), c(st.decay), c(self.rho), c(1.0 - self.rho), c(st.lr),
                c(self.epsilon))
        names = tuple(n for n, _ in self._state_specs())
        kname = "rmsprop" + ("_centered" if self.centered else "")
        if self.momentum > 0:
            kname += "_momentum"
            scal += (c(self.momentum),)
        return KERAS_RULES, kname, names, scal

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
