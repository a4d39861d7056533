"""Adagrad, as ``torch.optim.Adagrad``.

A thin :class:`~fastadam.torch.base.FlatOptimizer`: torch.optim's defaults, the
validated hyperparameters of a group (``_group_hparams``) and the rule's name in
:mod:`fastadam._scalars`; the class docstring writes the algorithm out.
"""

from __future__ import annotations

from .. import _hparams
from .. import _validate as _v
from .base import FlatOptimizer, _fill_common_doc
from .hparams import _num


class Adagrad(FlatOptimizer):
    r"""Adagrad, as ``torch.optim.Adagrad``.

    .. math::

        &g \leftarrow \pm g + \lambda\theta \\
        &\tilde\gamma = \gamma / (1 + (t-1)\eta) \\
        &s \leftarrow s + g^2 \\
        &\theta \leftarrow \theta - \tilde\gamma\, g/(\sqrt{s}+\epsilon)

    Parameters
    ----------
    params : iterable
    lr : float, default 1e-2
    lr_decay : float, default 0
        :math:`\eta`.
    weight_decay : float, default 0
    initial_accumulator_value : float, default 0
        Initial value of ``sum`` (as in torch, the constructor's value is used
        for every group).
    eps : float, default 1e-10
    maximize : bool, default False
    {common}
    Notes
    -----
    State (made at construction, as torch does): ``step``, ``sum``.

    Sparse gradients (``nn.Embedding(sparse=True)``) are taken as torch takes them,
    with torch's sparse-path math: the duplicate rows of the gradient summed, then
    for those rows only :math:`s \leftarrow s + g^2`,
    :math:`\theta \leftarrow \theta - \tilde\gamma\, g/(\sqrt{s}+\epsilon)`: one
    row-sparse kernel call on the parameter's rows of the flat buffers
    (:func:`fastadam.functional.sparse_adagrad_`).  As torch, ``weight_decay`` (and
    ``fused=True``) with a sparse gradient raise RuntimeError.
    """

    _opt = "adagrad"
    _sparse = "accept"
    _hp_keys = ("lr", "lr_decay", "eps", "weight_decay", "maximize", "differentiable")
    _flag_keys = ("differentiable",)
    _needs_step = True

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0,
                 eps=1e-10, foreach=None, *, maximize=False, differentiable=False, fused=None,
                 backend="auto"):
        defaults = dict(lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, foreach=foreach,
                        maximize=maximize, differentiable=differentiable, fused=fused)
        super().__init__(params, defaults, backend)
        for b in self._buckets:
            b.ensure_state("sum", self._fill("sum"))
            for i in range(len(b.params)):
                self._populate(b, i)
            b.all_started = True

    def _group_hparams(self, g):
        _v.nonneg("initial_accumulator_value", g["initial_accumulator_value"],
                  "initial_accumulator_value value")
        hp = _hparams.adagrad(step=1, lr=_num("lr", g["lr"]), lr_decay=g["lr_decay"],
                              eps=g["eps"], weight_decay=g["weight_decay"],
                              maximize=g["maximize"])
        del hp["step"]
        return hp

    def _fill(self, name):
        return float(self.defaults["initial_accumulator_value"])

    def _check_sparse_group(self, group, hp):
        if group.get("fused"):
            raise RuntimeError("`fused` does not support sparse grad or complex param")
        if hp["weight_decay"] != 0:
            raise RuntimeError("weight_decay option is not compatible with sparse gradients")
        return False

    def _sparse_step_hp(self, hp, t, sg):
        return "sparse_adagrad", dict(step=t, lr=hp["lr"], lr_decay=hp["lr_decay"],
                                      eps=hp["eps"], maximize=hp["maximize"])


_fill_common_doc(Adagrad)
