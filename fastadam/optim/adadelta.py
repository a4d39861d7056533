"""Adadelta over flat buffers."""

from __future__ import annotations

from .. import _hparams
from .base import Optimizer


class Adadelta(Optimizer):
    r"""Adadelta (Zeiler, 2012); torch.optim's math.

    .. math::

        &g_t \leftarrow \pm\nabla f_t(\theta_{t-1}) + \lambda\theta_{t-1} \\
        &v_t \leftarrow \rho v_{t-1} + (1-\rho) g_t^2 \\
        &\Delta_t = \frac{\sqrt{u_{t-1} + \epsilon}}{\sqrt{v_t + \epsilon}}\, g_t \\
        &u_t \leftarrow \rho u_{t-1} + (1-\rho)\Delta_t^2 \\
        &\theta_t \leftarrow \theta_{t-1} - \gamma\Delta_t

    Parameters
    ----------
    params : dict, list, FlatParams or list of group dicts
    lr : float, default 1.0
    rho : float, default 0.9
    eps : float, default 1e-6
    weight_decay : float, default 0
    maximize : bool, default False
    backend : str, default "auto"

    Notes
    -----
    State per buffer: ``step``, ``square_avg`` (:math:`v`), ``acc_delta`` (:math:`u`).
    """

    _opt = "adadelta"

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, *,
                 maximize=False, backend="auto"):
        defaults = dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize)
        super().__init__(params, defaults, backend)

    def _hparams(self, group, st, step):
        return _hparams.adadelta(lr=group["lr"], rho=group["rho"], eps=group["eps"],
                                 weight_decay=group["weight_decay"], maximize=group["maximize"])

    def _state_spec(self, group):
        return {"square_avg": 0.0, "acc_delta": 0.0}
