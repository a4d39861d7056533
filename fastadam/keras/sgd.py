"""SGD with Keras' momentum (the learning rate inside the momentum buffer), and Nesterov."""

from __future__ import annotations

from .. import _validate as _v
from ._common import KERAS_RULES, common_doc
from .base import Optimizer


@common_doc(lr="0.01")
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
            return KERAS_RULES, "sgd", (), scal
        return KERAS_RULES, "sgd_momentum", ("momentum",), scal + (
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
