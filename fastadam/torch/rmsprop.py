"""RMSprop, as ``torch.optim.RMSprop``.

A thin :class:`~fastadam.torch.base.FlatOptimizer`: torch.optim's defaults, the
validated hyperparameters of a group (``_group_hparams``) and the rule's name in
:mod:`fastadam._scalars`; the class docstring writes the algorithm out.
"""

from __future__ import annotations

from .. import _hparams
from .base import FlatOptimizer, _fill_common_doc
from .hparams import _num


class RMSprop(FlatOptimizer):
    r"""RMSprop, as ``torch.optim.RMSprop``.

    .. math::

        &g \leftarrow \pm g + \lambda\theta \\
        &s \leftarrow \alpha s + (1-\alpha) g^2 \\
        &\bar g \leftarrow \alpha\bar g + (1-\alpha) g \quad\text{(centered)} \\
        &a = \sqrt{s - \bar g^2} + \epsilon \quad\text{(centered; else } \sqrt{s}+\epsilon) \\
        &b \leftarrow \mu b + g/a, \quad \theta \leftarrow \theta - \gamma b
            \quad\text{(momentum } \mu>0\text{; else } \theta \leftarrow \theta - \gamma g/a)

    Parameters
    ----------
    params : iterable
    lr : float, default 1e-2
    alpha : float, default 0.99
    eps : float, default 1e-8
    weight_decay : float, default 0
    momentum : float, default 0
    centered : bool, default False
    maximize : bool, default False
    {common}
    Notes
    -----
    State: ``step``, ``square_avg``, with momentum ``momentum_buffer``, centered
    ``grad_avg``.
    """

    _opt = "rmsprop"
    _hp_keys = ("lr", "alpha", "eps", "weight_decay", "momentum", "centered", "maximize",
                "capturable", "differentiable")

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0,
                 centered=False, capturable=False, foreach=None, maximize=False,
                 differentiable=False, *, backend="auto"):
        defaults = dict(lr=lr, momentum=momentum, alpha=alpha, eps=eps, centered=centered,
                        weight_decay=weight_decay, capturable=capturable, foreach=foreach,
                        maximize=maximize, differentiable=differentiable)
        super().__init__(params, defaults, backend)

    def _group_hparams(self, g):
        return _hparams.rmsprop(lr=_num("lr", g["lr"]), alpha=g["alpha"], eps=g["eps"],
                                weight_decay=g["weight_decay"], momentum=g["momentum"],
                                centered=g["centered"], maximize=g["maximize"])


_fill_common_doc(RMSprop)
