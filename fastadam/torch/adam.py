"""Adam and AdamW, as ``torch.optim.Adam`` / ``torch.optim.AdamW``.

A thin :class:`~fastadam.torch.base.FlatOptimizer`: torch.optim's defaults, the
validated hyperparameters of a group (``_group_hparams``) and the rule's name in
:mod:`fastadam._scalars`; the class docstring writes the algorithm out.

Adam takes the fastadam extensions: reduced-precision moments (``state_dtype``),
float16 / bfloat16 parameters through float32 master weights (``param_rounding``,
:meth:`Adam.sync_master`) and clipping (``max_grad_norm``, ``clip_value``).
"""

from __future__ import annotations

import torch

from .. import _hparams
from .. import _validate as _v
from .. import lowp as _lowp
from .base import FlatOptimizer, _fill_common_doc
from .hparams import _betas, _num


class Adam(FlatOptimizer):
    r"""Adam, as ``torch.optim.Adam``, one fused kernel per flat buffer.

    For each parameter with a gradient, at its step :math:`t`:

    .. math::

        &g \leftarrow \pm\nabla_\theta f(\theta) \;(+\lambda\theta
            \text{ unless decoupled}) \\
        &\theta \leftarrow \theta(1-\gamma\lambda) \quad\text{(decoupled\_weight\_decay)} \\
        &m \leftarrow \beta_1 m + (1-\beta_1) g \\
        &v \leftarrow \beta_2 v + (1-\beta_2) g^2 \\
        &\hat v \leftarrow \max(\hat v, v) \quad\text{(amsgrad; else } \hat v = v) \\
        &\theta \leftarrow \theta - \frac{\gamma}{1-\beta_1^t}
            \frac{m}{\sqrt{\hat v}/\sqrt{1-\beta_2^t} + \epsilon}

    Parameters
    ----------
    params : iterable
        Tensors, (name, tensor) pairs or param-group dicts, as for torch.optim.
    lr : float, default 1e-3
        :math:`\gamma`.
    betas : (float, float), default (0.9, 0.999)
    eps : float, default 1e-8
    weight_decay : float, default 0
        :math:`\lambda`.
    amsgrad : bool, default False
    maximize : bool, default False
    decoupled_weight_decay : bool, default False
        AdamW's decay of the parameter instead of L2 added to the gradient.
    state_dtype : {"float32", "bfloat16", "int8"}, default "float32"
        Storage of the moments (keyword only; reduced ones need float32 CPU
        parameters, the numba or numpy backend and no amsgrad):
        ``"bfloat16"``: ``torch.bfloat16`` tensors written with stochastic
        rounding (4 bytes/param of state); ``"int8"``: int8 ``exp_avg`` and uint8
        (log-coded) ``exp_avg_sq`` with a float32 absmax per 256-element block in
        ``exp_avg_scale`` / ``exp_avg_sq_scale`` (about 2.03 bytes/param).  The
        update is float32 math on the decoded moments; see docs/lowp.md.
    max_grad_norm : float, optional
        Clip the global L2 norm of all gradients of the step to this, as
        ``torch.nn.utils.clip_grad_norm_`` (kept in ``last_grad_norm``); a
        non-finite gradient then skips the step.  Keyword only; CPU only.
    clip_value : float, optional
        Clamp each gradient element to ``[-clip_value, clip_value]`` (before the
        norm clipping), as ``clip_grad_value_``.  Keyword only; CPU only.
    sparse_grads : {None, "lazy"}, default None
        None: sparse gradients raise RuntimeError, as in torch.  ``"lazy"``: a
        sparse gradient (``nn.Embedding(sparse=True)``) updates only the rows it
        holds, with the rule above (Adam's :math:`\epsilon` placement, weight decay
        and AMSGrad) on its summed duplicate rows; the moments of other rows do not
        decay and their parameters do not move (TensorFlow's LazyAdam; torch needs
        a ``SparseAdam`` beside the ``Adam`` for this, whose :math:`\epsilon` differs).
        Dense gradients update as usual.  One row-sparse kernel call per sparse
        parameter on its rows of the flat buffers
        (:func:`fastadam.functional.lazy_adam_`); keyword only, float32 state.
    param_rounding : {"nearest", "stochastic"}, default "nearest"
        ``torch.float16`` / ``torch.bfloat16`` parameters (CPU, numba or numpy
        backend, state_dtype ``"float32"`` or ``"bfloat16"``, no amsgrad) are
        updated through float32 master weights ``w`` (per-parameter state
        ``master_param``): the rule above runs on ``w`` with the decoded
        gradient, then :math:`\theta \leftarrow \mathrm{round}(w)` in the same
        pass, to nearest even or stochastically (unbiased, reproducible).
        ``torch.amp.GradScaler`` works with them (float16 included: the
        unscaling is fused into the step).  See :mod:`fastadam.lowp.master`.
    {common}
    Notes
    -----
    State per parameter (``optimizer.state[p]``, views of flat buffers):
    ``step``, ``exp_avg``, ``exp_avg_sq`` and with amsgrad ``max_exp_avg_sq``
    (int8 state: also ``exp_avg_scale``, ``exp_avg_sq_scale``; float16 / bfloat16
    parameters: also ``master_param``, float32).

    With ``torch.amp.GradScaler`` (``grad_scale`` :math:`s`, ``found_inf``) and
    clipping (``clip_value`` :math:`c`, norm factor
    :math:`k=\min(1, \text{max\_grad\_norm}/(\lVert\text{clamp}(g/s,\pm c)\rVert+10^{-6}))`),
    the gradient the rule sees is :math:`k\,\text{clamp}(g/s, -c, c)`; the step
    is skipped when ``found_inf`` is set (or, with ``max_grad_norm``, a gradient
    is not finite).

    Examples
    --------
    >>> import torch, fastadam.torch
    >>> model = torch.nn.Linear(4, 2)
    >>> opt = fastadam.torch.Adam(model.parameters(), lr=1e-3)
    >>> model(torch.ones(3, 4)).sum().backward()
    >>> _ = opt.step(); opt.zero_grad()
    """

    _opt = "adam"
    _hp_keys = ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize",
                "decoupled_weight_decay", "capturable", "differentiable")
    _needs_step = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, *, foreach=None, maximize=False, capturable=False,
                 differentiable=False, fused=None, decoupled_weight_decay=False,
                 backend="auto", state_dtype="float32", max_grad_norm=None, clip_value=None,
                 param_rounding="nearest", sparse_grads=None):
        if sparse_grads not in (None, "lazy"):
            raise ValueError(f"Invalid sparse_grads: {sparse_grads!r}; expected None or 'lazy'")
        if sparse_grads == "lazy" and state_dtype != "float32":
            raise ValueError("sparse_grads='lazy' needs state_dtype='float32'")
        self._sparse = "accept" if sparse_grads else None
        if isinstance(betas, (tuple, list)) and len(betas) == 2:
            betas = tuple(betas)
            if isinstance(betas[0], torch.Tensor) != isinstance(betas[1], torch.Tensor):
                raise ValueError("betas must be either both floats or both Tensors")  # as torch
        from ..lowp import master as _master
        self._param_rounding = _master.check_rounding(param_rounding)
        _lowp._transform_scalars(None, None, clip_value)          # validate
        if max_grad_norm is not None:
            _v.nonneg("max_grad_norm", max_grad_norm, "max_grad_norm value")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        amsgrad=amsgrad, maximize=maximize, foreach=foreach,
                        capturable=capturable, differentiable=differentiable, fused=fused,
                        decoupled_weight_decay=decoupled_weight_decay)
        self._state_dtype = _lowp.check_state_dtype(state_dtype)   # read by _group_hparams
        super().__init__(params, defaults, backend, state_dtype)
        self.max_grad_norm = max_grad_norm
        self.clip_value = clip_value

    @property
    def sparse_grads(self):
        """None (sparse gradients refused, as torch) or ``"lazy"``."""
        return "lazy" if self._sparse else None

    def _sparse_refusal(self):
        return (f"{type(self).__name__} does not support sparse gradients, please consider "
                "SparseAdam instead (or fastadam's sparse_grads='lazy')")

    def _sparse_step_hp(self, hp, t, sg):
        return "lazy_adam", dict(hp, step=t)

    @property
    def state_dtype(self) -> str:
        """Storage of the moments: ``"float32"``, ``"bfloat16"`` or ``"int8"``."""
        return self._state_dtype

    @property
    def param_rounding(self) -> str:
        """Rounding of float16 / bfloat16 parameters from their master weights."""
        return self._param_rounding

    def sync_master(self) -> int:
        """Re-read the float32 master weights from the float16 / bfloat16 parameters.

        The master (state ``master_param``) is the authoritative copy: each step
        updates it and rewrites the parameter from it, so a change made to the
        parameters from outside the optimizer once the master exists (say
        ``model.load_state_dict(...)`` in the middle of training, or
        re-initializing a layer) is overwritten at the next step.  Call this after
        such a change: every master becomes the exact float32 value of its
        parameter (moments and step counts are kept).  Loading this optimizer's
        own ``state_dict`` needs no call (it carries the masters).  Returns the
        number of elements re-read.
        """
        count = 0
        with torch.no_grad():
            for b in self._buckets:
                t = b.state.get("master_param") if b.fmt else None
                if t is not None:
                    t.copy_(b.data)
                    count += t.numel()
        return count

    def _group_hparams(self, g):
        if g["amsgrad"] and self._state_dtype != "float32":
            raise ValueError(f"amsgrad=True is not supported with state_dtype="
                             f"{self._state_dtype!r}")
        if g["amsgrad"] and any(b.fmt and self.param_groups[b.gi] is g
                                for b in getattr(self, "_buckets", ())):
            # checked while planning a step (amsgrad set after construction, or loaded):
            # before any bucket is stepped
            raise ValueError("amsgrad=True is not supported with float16 / bfloat16 "
                             "parameters (master weights)")
        b1, b2 = _betas(g)
        hp = _hparams.adam(step=1, lr=_num("lr", g["lr"]), beta1=b1, beta2=b2, eps=g["eps"],
                           weight_decay=_num("weight_decay", g["weight_decay"]),
                           decoupled_weight_decay=g["decoupled_weight_decay"],
                           amsgrad=g["amsgrad"], maximize=g["maximize"])
        del hp["step"]
        return hp


class AdamW(Adam):
    r"""AdamW, as ``torch.optim.AdamW``: :class:`Adam` with decoupled weight decay.

    .. math::

        &\theta \leftarrow \theta(1-\gamma\lambda) \\
        &m \leftarrow \beta_1 m + (1-\beta_1) g, \qquad
         v \leftarrow \beta_2 v + (1-\beta_2) g^2 \\
        &\theta \leftarrow \theta - \frac{\gamma}{1-\beta_1^t}
            \frac{m}{\sqrt{\hat v}/\sqrt{1-\beta_2^t} + \epsilon}

    Parameters
    ----------
    params : iterable
    lr : float, default 1e-3
    betas : (float, float), default (0.9, 0.999)
    eps : float, default 1e-8
    weight_decay : float, default 1e-2
    amsgrad : bool, default False
    maximize : bool, default False
    state_dtype, max_grad_norm, clip_value, param_rounding, sparse_grads
        As :class:`Adam` (keyword only); with ``sparse_grads="lazy"`` the decay
        :math:`\theta(1-\gamma\lambda)` too applies to the rows present only.
    {common}
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, foreach=None, capturable=False,
                 differentiable=False, fused=None, backend="auto", state_dtype="float32",
                 max_grad_norm=None, clip_value=None, param_rounding="nearest",
                 sparse_grads=None):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach,
                         maximize=maximize, capturable=capturable,
                         differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True, backend=backend,
                         state_dtype=state_dtype, max_grad_norm=max_grad_norm,
                         clip_value=clip_value, param_rounding=param_rounding,
                         sparse_grads=sparse_grads)

    def _fix_loaded_group(self, group):
        group["decoupled_weight_decay"] = True   # as torch.optim.AdamW.__setstate__


_fill_common_doc(Adam, AdamW)
