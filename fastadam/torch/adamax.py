"""Adamax, as ``torch.optim.Adamax``.

A thin :class:`~fastadam.torch.base.FlatOptimizer`: torch.optim's defaults, the
validated hyperparameters of a group (``_group_hparams``) and the rule's name in
:mod:`fastadam._scalars`; the class docstring writes the algorithm out.
"""

from __future__ import annotations

from .. import _hparams
from .base import FlatOptimizer, _fill_common_doc
from .hparams import _betas, _num


class Adamax(FlatOptimizer):
    r"""Adamax, as ``torch.optim.Adamax``.

    .. math::

        &g \leftarrow \pm g + \lambda\theta \\
        &m \leftarrow \beta_1 m + (1-\beta_1) g \\
        &u \leftarrow \max(\beta_2 u, |g| + \epsilon) \\
        &\theta \leftarrow \theta - \frac{\gamma}{1-\beta_1^t}\frac{m}{u}

    Parameters
    ----------
    params : iterable
    lr : float, default 2e-3
    betas : (float, float), default (0.9, 0.999)
    eps : float, default 1e-8
    weight_decay : float, default 0
    maximize : bool, default False
    {common}
    Notes
    -----
    State: ``step``, ``exp_avg``, ``exp_inf``.
    """

    _opt = "adamax"
    _hp_keys = ("lr", "betas", "eps", "weight_decay", "maximize", "capturable",
                "differentiable")
    _needs_step = True

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 foreach=None, *, maximize=False, differentiable=False, capturable=False,
                 backend="auto"):
        if isinstance(betas, (tuple, list)) and len(betas) == 2:
            betas = tuple(betas)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        foreach=foreach, maximize=maximize, differentiable=differentiable,
                        capturable=capturable)
        super().__init__(params, defaults, backend)

    def _group_hparams(self, g):
        b1, b2 = _betas(g)
        hp = _hparams.adamax(step=1, lr=_num("lr", g["lr"]), beta1=b1, beta2=b2, eps=g["eps"],
                             weight_decay=g["weight_decay"], maximize=g["maximize"])
        del hp["step"]
        return hp


_fill_common_doc(Adamax)
