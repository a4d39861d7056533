"""SGD over flat buffers."""

from __future__ import annotations

from .. import _hparams
from .base import Optimizer


class SGD(Optimizer):
    r"""Stochastic gradient descent with optional momentum, dampening and Nesterov.

    torch.optim.SGD's math:

    .. math::

        &g_t \leftarrow \pm\nabla f_t(\theta_{t-1}) + \lambda\theta_{t-1} \\
        &b_t \leftarrow g_t \;(t = 1), \qquad b_t \leftarrow \mu b_{t-1} + (1-\tau) g_t
            \;(t > 1) \\
        &d_t = g_t + \mu b_t \;\text{(nesterov)}, \qquad d_t = b_t \;\text{(otherwise)} \\
        &\theta_t \leftarrow \theta_{t-1} - \gamma d_t

    (without momentum, :math:`\theta_t \leftarrow \theta_{t-1} - \gamma g_t`).

    Parameters
    ----------
    params : dict, list, FlatParams or list of group dicts
    lr : float, default 1e-3
    momentum : float, default 0
    dampening : float, default 0
    weight_decay : float, default 0
    nesterov : bool, default False
    maximize : bool, default False
    backend : str, default "auto"

    Notes
    -----
    State per buffer: ``step`` and, with momentum, ``momentum_buffer``.
    """

    _opt = "sgd"

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False, *, maximize=False, backend="auto"):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening,
                        weight_decay=weight_decay, nesterov=nesterov, maximize=maximize)
        super().__init__(params, defaults, backend)

    def _hparams(self, group, st, step):
        hp = _hparams.sgd(lr=group["lr"], momentum=group["momentum"],
                          dampening=group["dampening"], weight_decay=group["weight_decay"],
                          nesterov=group["nesterov"], maximize=group["maximize"])
        hp["first"] = "momentum_buffer" not in st
        return hp

    def _state_spec(self, group):
        return {"momentum_buffer": 0.0} if group["momentum"] != 0 else {}
