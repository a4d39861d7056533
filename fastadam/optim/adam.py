"""Adam, AdamW and AMSGrad over flat buffers."""

from __future__ import annotations

from .. import _hparams
from ._betas import split_betas
from .base import Optimizer


class Adam(Optimizer):
    r"""Adam (Kingma & Ba, 2015), with AMSGrad and L2 or decoupled weight decay.

    torch.optim.Adam's algorithm, applied in one fused pass per flat buffer:

    .. math::

        &g_t \leftarrow \pm\nabla_\theta f_t(\theta_{t-1}) \;(+\lambda\theta_{t-1}
            \text{ unless decoupled}) \\
        &\theta_{t-1} \leftarrow \theta_{t-1}(1-\gamma\lambda) \quad\text{(decoupled)} \\
        &m_t \leftarrow \beta_1 m_{t-1} + (1-\beta_1) g_t \\
        &v_t \leftarrow \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
        &\hat v_t \leftarrow \max(\hat v_{t-1}, v_t) \quad\text{(amsgrad; else }
            \hat v_t = v_t) \\
        &\theta_t \leftarrow \theta_{t-1} - \frac{\gamma}{1-\beta_1^t}
            \frac{m_t}{\sqrt{\hat v_t}/\sqrt{1-\beta_2^t} + \epsilon}

    Parameters
    ----------
    params : dict, list, FlatParams or list of group dicts
        See :class:`fastadam.optim.Optimizer`.
    lr : float, default 1e-3
    betas : (float, float), default (0.9, 0.999)
    eps : float, default 1e-8
    weight_decay : float, default 0
    amsgrad : bool, default False
    maximize : bool, default False
    decoupled_weight_decay : bool, default False
        AdamW's decay (see :class:`AdamW`).
    backend : str, default "auto"

    Notes
    -----
    State per flat buffer: ``step``, ``exp_avg``, ``exp_avg_sq`` and, with
    amsgrad, ``max_exp_avg_sq`` (torch.optim's names). Memory: two (three with
    amsgrad) arrays the size of the parameters.

    Examples
    --------
    >>> import numpy as np, fastadam
    >>> params = {"w": np.zeros(3, dtype=np.float32)}
    >>> opt = fastadam.Adam(params, lr=0.1)
    >>> opt.grads["w"][...] = 1.0
    >>> _ = opt.step()
    >>> params["w"]            # updated in place: about -lr * sign(grad)
    array([-0.1, -0.1, -0.1], dtype=float32)
    """

    _opt = "adam"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, *, maximize=False, decoupled_weight_decay=False,
                 backend="auto"):
        defaults = dict(lr=lr, betas=tuple(betas) if isinstance(betas, list) else betas,
                        eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults, backend)

    def _hparams(self, group, st, step):
        beta1, beta2 = split_betas(group["betas"])
        return _hparams.adam(step=step, lr=group["lr"], beta1=beta1, beta2=beta2,
                             eps=group["eps"], weight_decay=group["weight_decay"],
                             decoupled_weight_decay=group["decoupled_weight_decay"],
                             amsgrad=group["amsgrad"], maximize=group["maximize"])

    def _state_spec(self, group):
        spec = {"exp_avg": 0.0, "exp_avg_sq": 0.0}
        if group["amsgrad"]:
            spec["max_exp_avg_sq"] = 0.0
        return spec


class AdamW(Adam):
    r"""AdamW (Loshchilov & Hutter, 2019): Adam with decoupled weight decay.

    As :class:`Adam` with ``decoupled_weight_decay=True``: the parameter is
    multiplied by :math:`1 - \gamma\lambda` before the Adam update instead of
    :math:`\lambda\theta` being added to the gradient.  torch.optim.AdamW's
    defaults: ``lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2``.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, backend="auto"):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize, decoupled_weight_decay=True,
                         backend=backend)
