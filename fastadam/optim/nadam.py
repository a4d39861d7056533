"""NAdam over flat buffers."""

from __future__ import annotations

from .. import _hparams, _scalars
from .. import _validate as _v
from ._betas import split_betas
from .base import Optimizer


class NAdam(Optimizer):
    r"""NAdam (Dozat, 2016): Adam with Nesterov momentum; torch.optim's math.

    .. math::

        &\mu_t = \beta_1(1 - \tfrac12 0.96^{t\psi}), \qquad \Pi_t = \Pi_{t-1}\mu_t \\
        &g_t \leftarrow \pm\nabla f_t(\theta_{t-1}) \;(+\lambda\theta_{t-1}
            \text{ unless decoupled}),\quad
            \theta_{t-1} \leftarrow \theta_{t-1}(1-\gamma\lambda) \text{ (decoupled)} \\
        &m_t \leftarrow \beta_1 m_{t-1} + (1-\beta_1) g_t,\qquad
          v_t \leftarrow \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
        &\theta_t \leftarrow \theta_{t-1}
          - \gamma\frac{1-\mu_t}{1-\Pi_t}\frac{g_t}{\sqrt{v_t/(1-\beta_2^t)}+\epsilon}
          - \gamma\frac{\mu_{t+1}}{1-\Pi_t\mu_{t+1}}\frac{m_t}{\sqrt{v_t/(1-\beta_2^t)}+\epsilon}

    Parameters
    ----------
    params : dict, list, FlatParams or list of group dicts
    lr : float, default 2e-3
    betas : (float, float), default (0.9, 0.999)
    eps : float, default 1e-8
    weight_decay : float, default 0
    momentum_decay : float, default 4e-3
    decoupled_weight_decay : bool, default False
    maximize : bool, default False
    backend : str, default "auto"

    Notes
    -----
    State per buffer: ``step``, ``mu_product`` (a float), ``exp_avg``, ``exp_avg_sq``.
    """

    _opt = "nadam"

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 momentum_decay=4e-3, decoupled_weight_decay=False, *, maximize=False,
                 backend="auto"):
        defaults = dict(lr=lr, betas=tuple(betas) if isinstance(betas, list) else betas,
                        eps=eps, weight_decay=weight_decay, momentum_decay=momentum_decay,
                        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)
        super().__init__(params, defaults, backend)

    def _hparams(self, group, st, step):
        beta1, beta2 = split_betas(group["betas"])
        hp = _hparams.nadam(step=step, lr=group["lr"], beta1=beta1, beta2=beta2,
                            eps=group["eps"], weight_decay=group["weight_decay"],
                            momentum_decay=group["momentum_decay"],
                            decoupled_weight_decay=group["decoupled_weight_decay"],
                            maximize=group["maximize"])
        hp["mu_product"] = _v.real("mu_product", st.get("mu_product", 1.0))
        _scalars.check_nadam_mu_product(beta1, hp["momentum_decay"], step, hp["mu_product"])
        return hp

    def _state_spec(self, group):
        return {"exp_avg": 0.0, "exp_avg_sq": 0.0}

    def _after_step(self, group, st, hp):
        st["mu_product"] = hp["mu_product"] * _scalars.nadam_mu(
            hp["beta1"], hp["momentum_decay"], hp["step"])
