"""SGD with optional momentum / Nesterov, as ``torch.optim.SGD``.

A thin :class:`~fastadam.torch.base.FlatOptimizer`: torch.optim's defaults, the
validated hyperparameters of a group (``_group_hparams``) and the rule's name in
:mod:`fastadam._scalars`; the class docstring writes the algorithm out.
"""

from __future__ import annotations

from .. import _hparams
from .base import FlatOptimizer, _fill_common_doc
from .hparams import _num


class SGD(FlatOptimizer):
    r"""SGD with optional momentum / Nesterov, as ``torch.optim.SGD``.

    .. math::

        &g \leftarrow \pm g + \lambda\theta \\
        &b \leftarrow g \;\text{(first step)}, \qquad
         b \leftarrow \mu b + (1-\tau) g \;\text{(later)} \\
        &d = g + \mu b \;\text{(nesterov; else } d = b) \\
        &\theta \leftarrow \theta - \gamma d

    (without momentum :math:`\theta \leftarrow \theta - \gamma g`).

    Parameters
    ----------
    params : iterable
    lr : float, default 1e-3
    momentum : float, default 0
        :math:`\mu`.
    dampening : float, default 0
        :math:`\tau`.
    weight_decay : float, default 0
    nesterov : bool, default False
    maximize : bool, default False
    {common}
    Notes
    -----
    State (with momentum only): ``momentum_buffer``; no ``step``, as in torch.

    Sparse gradients are taken as torch takes them.  Without momentum, the rows
    the gradient holds move by :math:`-\gamma g` (duplicates summed; one row-sparse
    kernel call, :func:`fastadam.functional.sparse_sgd_`).  With momentum, torch keeps
    a sparse momentum buffer that gathers every row ever touched and moves them all
    at each step; fastadam computes the same values with its dense momentum buffer:
    the gradient is scattered into the flat gradient buffer and the step is the
    dense one (its cost is the whole parameter's, as torch's grows to be).  The
    checkpoint then holds a dense ``momentum_buffer`` where torch's is a sparse
    tensor (loading torch's converts it).  As torch, ``weight_decay`` (and
    ``fused=True``) with a sparse gradient raise RuntimeError.
    """

    _opt = "sgd"
    _sparse = "accept"
    _hp_keys = ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize",
                "differentiable")
    _flag_keys = ("differentiable",)
    _has_step = False
    _needs_first = True

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0,
                 nesterov=False, *, maximize=False, foreach=None, differentiable=False,
                 fused=None, backend="auto"):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening,
                        weight_decay=weight_decay, nesterov=nesterov, maximize=maximize,
                        foreach=foreach, differentiable=differentiable, fused=fused)
        super().__init__(params, defaults, backend)

    def _group_hparams(self, g):
        return _hparams.sgd(lr=_num("lr", g["lr"]), momentum=g["momentum"],
                            dampening=g["dampening"],
                            weight_decay=_num("weight_decay", g["weight_decay"]),
                            nesterov=g["nesterov"], maximize=g["maximize"])

    def _check_sparse_group(self, group, hp):
        if group.get("fused"):
            raise RuntimeError("`_fused_sgd` does not support sparse gradients")
        if hp["weight_decay"] != 0:
            raise RuntimeError("SGD: weight_decay is not supported with sparse gradients "
                               "(torch.optim.SGD: add(sparse, dense) is not supported)")
        return hp["momentum"] != 0          # momentum: the dense step, as torch's values

    def _sparse_step_hp(self, hp, t, sg):
        return "sparse_sgd", dict(lr=hp["lr"], maximize=hp["maximize"])

    def _advances(self, hp):
        return hp["momentum"] != 0   # counts momentum steps: 0 means "no buffer yet"


_fill_common_doc(SGD)
