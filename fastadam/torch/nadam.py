"""NAdam, as ``torch.optim.NAdam``.

A thin :class:`~fastadam.torch.base.FlatOptimizer`: torch.optim's defaults, the
validated hyperparameters of a group (``_group_hparams``) and the rule's name in
:mod:`fastadam._scalars`; the class docstring writes the algorithm out.
"""

from __future__ import annotations

from .. import _hparams, _scalars
from .base import FlatOptimizer, _fill_common_doc
from .hparams import _betas, _num


class NAdam(FlatOptimizer):
    r"""NAdam, as ``torch.optim.NAdam``.

    .. math::

        &\mu_t = \beta_1(1 - \tfrac12 0.96^{t\psi}), \qquad \Pi_t = \Pi_{t-1}\mu_t \\
        &g \leftarrow \pm g + \lambda\theta \;\text{(or } \theta \leftarrow
            \theta(1-\gamma\lambda) \text{ if decoupled)} \\
        &m \leftarrow \beta_1 m + (1-\beta_1) g, \qquad
         v \leftarrow \beta_2 v + (1-\beta_2) g^2 \\
        &d = \sqrt{v/(1-\beta_2^t)} + \epsilon \\
        &\theta \leftarrow \theta - \gamma\frac{1-\mu_t}{1-\Pi_t}\frac{g}{d}
            - \gamma\frac{\mu_{t+1}}{1-\Pi_t\mu_{t+1}}\frac{m}{d}

    Parameters
    ----------
    params : iterable
    lr : float, default 2e-3
    betas : (float, float), default (0.9, 0.999)
    eps : float, default 1e-8
    weight_decay : float, default 0
    momentum_decay : float, default 4e-3
        :math:`\psi`.
    decoupled_weight_decay : bool, default False
    maximize : bool, default False
    {common}
    Notes
    -----
    State: ``step``, ``mu_product`` (:math:`\Pi_t`, kept in float64), ``exp_avg``,
    ``exp_avg_sq``.
    """

    _opt = "nadam"
    _hp_keys = ("lr", "betas", "eps", "weight_decay", "momentum_decay",
                "decoupled_weight_decay", "maximize", "capturable", "differentiable")
    _needs_step = True
    _needs_mu = True

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 momentum_decay=4e-3, decoupled_weight_decay=False, *, foreach=None,
                 maximize=False, capturable=False, differentiable=False, backend="auto"):
        if isinstance(betas, (tuple, list)) and len(betas) == 2:
            betas = tuple(betas)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        momentum_decay=momentum_decay,
                        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize,
                        foreach=foreach, capturable=capturable, differentiable=differentiable)
        super().__init__(params, defaults, backend)

    def _group_hparams(self, g):
        b1, b2 = _betas(g)
        hp = _hparams.nadam(step=1, lr=_num("lr", g["lr"]), beta1=b1, beta2=b2, eps=g["eps"],
                            weight_decay=g["weight_decay"], momentum_decay=g["momentum_decay"],
                            decoupled_weight_decay=g["decoupled_weight_decay"],
                            maximize=g["maximize"])
        del hp["step"]
        return hp

    def _check_mu(self, hp, step, mu):
        _scalars.check_nadam_mu_product(hp["beta1"], hp["momentum_decay"], step, mu)


_fill_common_doc(NAdam)
