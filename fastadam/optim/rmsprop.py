"""RMSprop over flat buffers."""

from __future__ import annotations

from .. import _hparams
from .base import Optimizer


class RMSprop(Optimizer):
    r"""RMSprop (Hinton), with momentum and the centered variant; torch.optim's math.

    .. math::

        &g_t \leftarrow \pm\nabla f_t(\theta_{t-1}) + \lambda\theta_{t-1} \\
        &v_t \leftarrow \alpha v_{t-1} + (1-\alpha) g_t^2 \\
        &\bar g_t \leftarrow \alpha\bar g_{t-1} + (1-\alpha) g_t,\quad
            \tilde v_t = v_t - \bar g_t^2 \quad\text{(centered; else } \tilde v_t = v_t) \\
        &b_t \leftarrow \mu b_{t-1} + g_t / (\sqrt{\tilde v_t} + \epsilon),\quad
            \theta_t \leftarrow \theta_{t-1} - \gamma b_t \quad(\mu > 0) \\
        &\theta_t \leftarrow \theta_{t-1} - \gamma g_t / (\sqrt{\tilde v_t} + \epsilon)
            \quad(\mu = 0)

    Parameters
    ----------
    params : dict, list, FlatParams or list of group dicts
    lr : float, default 1e-2
    alpha : float, default 0.99
    eps : float, default 1e-8
    weight_decay : float, default 0
    momentum : float, default 0
    centered : bool, default False
    maximize : bool, default False
    backend : str, default "auto"

    Notes
    -----
    State per buffer: ``step``, ``square_avg``, ``momentum_buffer`` (momentum > 0)
    and ``grad_avg`` (centered).
    """

    _opt = "rmsprop"

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False, *, maximize=False, backend="auto"):
        defaults = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                        momentum=momentum, centered=centered, maximize=maximize)
        super().__init__(params, defaults, backend)

    def _hparams(self, group, st, step):
        return _hparams.rmsprop(lr=group["lr"], alpha=group["alpha"], eps=group["eps"],
                                weight_decay=group["weight_decay"], momentum=group["momentum"],
                                centered=group["centered"], maximize=group["maximize"])

    def _state_spec(self, group):
        spec = {"square_avg": 0.0}
        if group["momentum"] > 0:
            spec["momentum_buffer"] = 0.0
        if group["centered"]:
            spec["grad_avg"] = 0.0
        return spec
