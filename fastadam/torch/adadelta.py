"""Adadelta, as ``torch.optim.Adadelta``.

A thin :class:`~fastadam.torch.base.FlatOptimizer`: torch.optim's defaults, the
validated hyperparameters of a group (``_group_hparams``) and the rule's name in
:mod:`fastadam._scalars`; the class docstring writes the algorithm out.
"""

from __future__ import annotations

from .. import _hparams
from .base import FlatOptimizer, _fill_common_doc
from .hparams import _num


class Adadelta(FlatOptimizer):
    r"""Adadelta, as ``torch.optim.Adadelta``.

    .. math::

        &g \leftarrow \pm g + \lambda\theta \\
        &v \leftarrow \rho v + (1-\rho) g^2 \\
        &\Delta = \sqrt{u+\epsilon}/\sqrt{v+\epsilon}\; g \\
        &u \leftarrow \rho u + (1-\rho)\Delta^2 \\
        &\theta \leftarrow \theta - \gamma\Delta

    Parameters
    ----------
    params : iterable
    lr : float, default 1.0
    rho : float, default 0.9
    eps : float, default 1e-6
    weight_decay : float, default 0
    maximize : bool, default False
    {common}
    Notes
    -----
    State: ``step``, ``square_avg`` (:math:`v`), ``acc_delta`` (:math:`u`).
    """

    _opt = "adadelta"
    _hp_keys = ("lr", "rho", "eps", "weight_decay", "maximize", "capturable", "differentiable")

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0, foreach=None, *,
                 capturable=False, maximize=False, differentiable=False, backend="auto"):
        defaults = dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize,
                        capturable=capturable, foreach=foreach, differentiable=differentiable)
        super().__init__(params, defaults, backend)

    def _group_hparams(self, g):
        return _hparams.adadelta(lr=_num("lr", g["lr"]), rho=g["rho"], eps=g["eps"],
                                 weight_decay=g["weight_decay"], maximize=g["maximize"])


_fill_common_doc(Adadelta)
