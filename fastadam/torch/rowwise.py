"""RowWiseAdagrad: Adagrad with one state value per row, for big embedding tables.

A thin :class:`~fastadam.torch.base.FlatOptimizer` that requires sparse gradients
(FBGEMM's EXACT_ROWWISE_ADAGRAD on the CPU); the class docstring writes the
algorithm out.  Its state ``sum`` holds one value per row of each parameter (a
flat buffer of the rows of all, made by ``_Bucket.ensure_row_state``).
"""

from __future__ import annotations

import torch

from .. import _hparams
from .. import _validate as _v
from .base import FlatOptimizer
from .hparams import _num


class RowWiseAdagrad(FlatOptimizer):
    r"""Row-wise Adagrad (FBGEMM's EXACT_ROWWISE_ADAGRAD): one state value per row.

    For each parameter with a (sparse COO) gradient -- an embedding table of rows
    of length :math:`D`, the gradient's duplicate rows summed into :math:`g` -- for
    each row :math:`r` it holds:

    .. math::

        &g_r \leftarrow \pm g_r + \lambda\theta_r \\
        &s_r \leftarrow s_r + \tfrac{1}{D}\textstyle\sum_j g_{rj}^2 \\
        &\theta_r \leftarrow \theta_r - \frac{\gamma}{\sqrt{s_r}+\epsilon}\, g_r

    :math:`s_r` is a scalar: 4 bytes of state per row of a float32 table, where
    Adagrad keeps 4 per element, and a step reads and writes only the parameter's
    rows and their state (:func:`fastadam.functional.rowwise_adagrad_`).  Rows not
    in the gradient are not touched (weight decay included).

    Parameters
    ----------
    params : iterable
        Float32 / float64 CPU tensors of at least one dimension (rows are the first);
        their gradients must be sparse in the first dimension only
        (``nn.Embedding(sparse=True)``, ``nn.EmbeddingBag(sparse=True)``).
    lr : float, default 1e-2
    eps : float, default 1e-10
    weight_decay : float, default 0
        :math:`\lambda`, L2 added to the gradient of the rows present.
    initial_accumulator_value : float, default 0
        Initial :math:`s` (the constructor's value, for every group).
    maximize : bool, default False
    backend : str, default "auto"
        ``"auto"``, ``"numba"`` or ``"numpy"`` (the reference); keyword only.

    Raises
    ------
    RuntimeError
        At ``step()``: a dense gradient.
    ValueError
        At ``step()``: a gradient sparse in more than the first dimension.

    Notes
    -----
    State per parameter: ``step`` (counted, not used by the rule) and ``sum``, shape
    ``(rows,)``.  fastadam's own optimizer: torch.optim has no row-wise Adagrad.
    """

    _opt = "rowwise_adagrad"
    _hp_keys = ("lr", "eps", "weight_decay", "maximize")
    _flag_keys = ()
    _sparse = "require"
    _row_states = ("sum",)
    _step_supports_amp_scaling = False

    def __init__(self, params, lr=1e-2, eps=1e-10, weight_decay=0, initial_accumulator_value=0,
                 maximize=False, *, backend="auto"):
        defaults = dict(lr=lr, eps=eps, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, maximize=maximize)
        super().__init__(params, defaults, backend)

    def add_param_group(self, param_group):
        """As :meth:`FlatOptimizer.add_param_group`; a 0-d parameter (no rows) is refused."""
        if isinstance(param_group, dict) and not isinstance(param_group.get("params"), set):
            ps = param_group.get("params", ())
            ps = [ps] if isinstance(ps, torch.Tensor) else list(ps)
            param_group["params"] = ps
            for i, p in enumerate(ps):
                p = p[1] if isinstance(p, tuple) and len(p) == 2 else p
                if isinstance(p, torch.Tensor) and p.dim() == 0:
                    raise ValueError(f"RowWiseAdagrad keeps one state value per row: parameter "
                                     f"{i} of the group is 0-d (no rows)")
        super().add_param_group(param_group)

    def _group_hparams(self, g):
        _v.nonneg("initial_accumulator_value", g["initial_accumulator_value"],
                  "initial_accumulator_value value")
        return _hparams.rowwise_adagrad(lr=_num("lr", g["lr"]), eps=g["eps"],
                                        weight_decay=g["weight_decay"],
                                        maximize=g["maximize"])

    def _fill(self, name):
        return float(self.defaults["initial_accumulator_value"])

    def _sparse_step_hp(self, hp, t, sg):
        return "rowwise_adagrad", dict(hp, dim=sg.dim)
