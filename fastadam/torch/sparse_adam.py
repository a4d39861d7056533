"""SparseAdam, as ``torch.optim.SparseAdam``: row-sparse steps for embedding tables.

A thin :class:`~fastadam.torch.base.FlatOptimizer` that requires sparse gradients:
torch.optim's defaults and constructor checks, the validated hyperparameters of a
group, the row-sparse step's name in :mod:`fastadam._scalars`, and ``state_dict``
in torch's format (``step`` a Python int).  The class docstring writes the
algorithm out.
"""

from __future__ import annotations

import torch

from .. import _hparams
from .base import FlatOptimizer
from .hparams import _betas, _num


class SparseAdam(FlatOptimizer):
    r"""SparseAdam, as ``torch.optim.SparseAdam``: Adam's moments kept only where the
    gradient is.

    For each parameter with a (sparse COO) gradient, at its step :math:`t`, with the
    gradient's duplicate rows summed (in lookup order) into :math:`g`, for the rows
    :math:`r` it holds and only those:

    .. math::

        &m_r \leftarrow m_r + (1-\beta_1)(g_r - m_r) \\
        &v_r \leftarrow v_r + (1-\beta_2)(g_r^2 - v_r) \\
        &\theta_r \leftarrow \theta_r - \gamma\,\frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}\,
            \frac{m_r}{\sqrt{v_r}+\epsilon}

    (:math:`g \to -g` with ``maximize``).  :math:`\epsilon` is added to
    :math:`\sqrt{v}` before the bias correction of :math:`v`, which is folded into
    the step size: not Adam's placement (that is
    ``fastadam.torch.Adam(sparse_grads="lazy")``).  The parameters are views of
    one flat buffer per group like every fastadam.torch parameter; a step is one
    row-sparse kernel call per parameter that reads and writes only the rows of
    the flat parameter and moment buffers the gradient holds
    (:func:`fastadam.functional.sparse_adam_`).

    Parameters
    ----------
    params : iterable
        Dense float32 / float64 CPU tensors (``nn.Embedding(sparse=True)``'s weight),
        (name, tensor) pairs or param-group dicts.
    lr : float, default 1e-3
        :math:`\gamma > 0`.
    betas : (float, float), default (0.9, 0.999)
    eps : float, default 1e-8
        :math:`\epsilon > 0`.
    maximize : bool, default False
    backend : str, default "auto"
        ``"auto"``, ``"numba"`` or ``"numpy"`` (the reference); keyword only.

    Raises
    ------
    ValueError
        As torch: ``lr`` or ``eps`` not > 0, a beta outside [0, 1), sparse or
        complex parameters.
    RuntimeError
        At ``step()``, as torch: a dense gradient.

    Notes
    -----
    State per parameter: ``step``, ``exp_avg``, ``exp_avg_sq`` (views of flat
    buffers; ``state[p]["step"]`` is a tensor, and ``state_dict()`` saves it as the
    Python int torch saves).  ``torch.optim.SparseAdam`` loads a fastadam checkpoint
    and this class loads torch's.  With ``torch.amp.GradScaler`` the scaler unscales
    the gradients itself, as for torch's SparseAdam.
    """

    _opt = "sparse_adam"
    _hp_keys = ("lr", "betas", "eps", "maximize")
    _flag_keys = ()
    _needs_step = True
    _sparse = "require"
    _step_supports_amp_scaling = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, maximize=False, *,
                 backend="auto"):
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if isinstance(params, torch.Tensor):
            params = [params]
        params = list(params)
        groups = params if params and isinstance(params[0], dict) else [{"params": params}]
        sparse, complex_ = [], []
        for gi, g in enumerate(groups):
            ps = g["params"] if isinstance(g, dict) else []
            ps = [ps] if isinstance(ps, torch.Tensor) else list(ps)
            for pi, p in enumerate(ps):
                p = p[1] if isinstance(p, tuple) and len(p) == 2 else p
                if isinstance(p, torch.Tensor) and p.is_sparse:
                    sparse.append([gi, pi])
                if isinstance(p, torch.Tensor) and p.is_complex():
                    complex_.append([gi, pi])
        defaults = dict(lr=lr, betas=tuple(betas) if isinstance(betas, list) else betas,
                        eps=eps, maximize=maximize)
        self._group_hparams(defaults)               # torch's messages, before the params
        if sparse:
            raise ValueError(f"Sparse params at indices {sparse}: SparseAdam requires dense "
                             "parameter tensors")
        if complex_:
            raise ValueError(f"Complex params at indices {complex_}: SparseAdam does not "
                             "support complex parameters")
        super().__init__(params, defaults, backend)

    def _group_hparams(self, g):
        b1, b2 = _betas(g)
        hp = _hparams.sparse_adam(step=1, lr=_num("lr", g["lr"]), beta1=b1, beta2=b2,
                                  eps=g["eps"], maximize=g.get("maximize", False))
        del hp["step"]
        return hp

    def _sparse_step_hp(self, hp, t, sg):
        return "sparse_adam", dict(hp, step=t)

    def state_dict(self):
        """torch.optim.SparseAdam's format: ``step`` a Python int per parameter."""
        sd = super().state_dict()
        state = {}
        for k, st in sd["state"].items():
            st = dict(st)                       # torch hands out the live state dicts
            if isinstance(st.get("step"), torch.Tensor):
                st["step"] = int(st["step"].item())
            state[k] = st
        sd["state"] = state
        return sd
