"""Adagrad over flat buffers."""

from __future__ import annotations

from .. import _hparams
from .. import _validate as _v
from .base import Optimizer


class Adagrad(Optimizer):
    r"""Adagrad (Duchi et al., 2011); torch.optim's math.

    .. math::

        &g_t \leftarrow \pm\nabla f_t(\theta_{t-1}) + \lambda\theta_{t-1} \\
        &\tilde\gamma = \gamma / (1 + (t-1)\eta) \\
        &s_t \leftarrow s_{t-1} + g_t^2 \qquad (s_0 = \text{initial\_accumulator\_value}) \\
        &\theta_t \leftarrow \theta_{t-1} - \tilde\gamma\, g_t / (\sqrt{s_t} + \epsilon)

    Parameters
    ----------
    params : dict, list, FlatParams or list of group dicts
    lr : float, default 1e-2
    lr_decay : float, default 0
    weight_decay : float, default 0
    initial_accumulator_value : float, default 0
    eps : float, default 1e-10
    maximize : bool, default False
    backend : str, default "auto"

    Notes
    -----
    State per buffer: ``step`` and ``sum`` (one array the size of the parameters).
    ``initial_accumulator_value`` may be set per param group here (each group's
    accumulator starts at its own value); torch.optim.Adagrad and
    :class:`fastadam.torch.Adagrad` use the constructor's value for every group.
    """

    _opt = "adagrad"

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
                 initial_accumulator_value=0.0, eps=1e-10, *, maximize=False, backend="auto"):
        defaults = dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, eps=eps,
                        maximize=maximize)
        super().__init__(params, defaults, backend)

    def _hparams(self, group, st, step):
        _v.nonneg("initial_accumulator_value", group["initial_accumulator_value"],
                  "initial_accumulator_value value")
        return _hparams.adagrad(step=step, lr=group["lr"], lr_decay=group["lr_decay"],
                                eps=group["eps"], weight_decay=group["weight_decay"],
                                maximize=group["maximize"])

    def _state_spec(self, group):
        return {"sum": float(group["initial_accumulator_value"])}
