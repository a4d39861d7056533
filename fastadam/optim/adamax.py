"""Adamax over flat buffers."""

from __future__ import annotations

from .. import _hparams
from ._betas import split_betas
from .base import Optimizer


class Adamax(Optimizer):
    r"""Adamax (Kingma & Ba, 2015): Adam with the infinity norm; torch.optim's math.

    .. math::

        &g_t \leftarrow \pm\nabla f_t(\theta_{t-1}) + \lambda\theta_{t-1} \\
        &m_t \leftarrow \beta_1 m_{t-1} + (1-\beta_1) g_t \\
        &u_t \leftarrow \max(\beta_2 u_{t-1}, |g_t| + \epsilon) \\
        &\theta_t \leftarrow \theta_{t-1} - \frac{\gamma}{1-\beta_1^t}\frac{m_t}{u_t}

    Parameters
    ----------
    params : dict, list, FlatParams or list of group dicts
    lr : float, default 2e-3
    betas : (float, float), default (0.9, 0.999)
    eps : float, default 1e-8
    weight_decay : float, default 0
    maximize : bool, default False
    backend : str, default "auto"

    Notes
    -----
    State per buffer: ``step``, ``exp_avg``, ``exp_inf``.
    """

    _opt = "adamax"

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, *,
                 maximize=False, backend="auto"):
        defaults = dict(lr=lr, betas=tuple(betas) if isinstance(betas, list) else betas,
                        eps=eps, weight_decay=weight_decay, maximize=maximize)
        super().__init__(params, defaults, backend)

    def _hparams(self, group, st, step):
        beta1, beta2 = split_betas(group["betas"])
        return _hparams.adamax(step=step, lr=group["lr"], beta1=beta1, beta2=beta2,
                               eps=group["eps"], weight_decay=group["weight_decay"],
                               maximize=group["maximize"])

    def _state_spec(self, group):
        return {"exp_avg": 0.0, "exp_inf": 0.0}
