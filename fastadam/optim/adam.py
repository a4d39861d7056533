"""Adam, AdamW and AMSGrad over flat buffers."""

from __future__ import annotations

import numpy as np

from .. import _hparams, _validate
from .. import lowp as _lowp
from ..flat import FlatParams
from ._betas import split_betas
from .base import Optimizer


class Adam(Optimizer):
    r"""Adam (Kingma & Ba, 2015), with AMSGrad and L2 or decoupled weight decay.

    torch.optim.Adam's algorithm, applied in one fused pass per flat buffer:

    .. math::

        &g_t \leftarrow \pm\nabla_\theta f_t(\theta_{t-1}) \;(+\lambda\theta_{t-1}
            \text{ unless decoupled}) \\
        &\theta_{t-1} \leftarrow \theta_{t-1}(1-\gamma\lambda) \quad\text{(decoupled)} \\
        &m_t \leftarrow \beta_1 m_{t-1} + (1-\beta_1) g_t \\
        &v_t \leftarrow \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
        &\hat v_t \leftarrow \max(\hat v_{t-1}, v_t) \quad\text{(amsgrad; else }
            \hat v_t = v_t) \\
        &\theta_t \leftarrow \theta_{t-1} - \frac{\gamma}{1-\beta_1^t}
            \frac{m_t}{\sqrt{\hat v_t}/\sqrt{1-\beta_2^t} + \epsilon}

    Parameters
    ----------
    params : dict, list, FlatParams or list of group dicts
        See :class:`fastadam.optim.Optimizer`.
    lr : float, default 1e-3
    betas : (float, float), default (0.9, 0.999)
    eps : float, default 1e-8
    weight_decay : float, default 0
    amsgrad : bool, default False
    maximize : bool, default False
    decoupled_weight_decay : bool, default False
        AdamW's decay (see :class:`AdamW`).
    backend : str, default "auto"
    state_dtype : {"float32", "bfloat16", "int8"}, default "float32"
        Storage of the moments (float32 parameters only, no amsgrad, numba or
        numpy backend for the reduced ones): ``"bfloat16"`` keeps them as bf16
        bit patterns (uint16 arrays, 4 bytes/param of state); ``"int8"`` as
        blockwise 8-bit codes with a float32 scale per 256 elements (about 2.03
        bytes/param).  The update math stays float32; see docs/lowp.md.
    max_grad_norm : float, optional
        Clip the global L2 norm of all gradients to this in every step (fused:
        one reduction pass, then the update); see :meth:`step`.
    clip_value : float, optional
        Clip every gradient element to ``[-clip_value, clip_value]`` in every
        step (fused into the update).

    Notes
    -----
    State per flat buffer: ``step``, ``exp_avg``, ``exp_avg_sq`` and, with
    amsgrad, ``max_exp_avg_sq`` (torch.optim's names). Memory: two (three with
    amsgrad) arrays the size of the parameters.  With ``state_dtype="int8"``
    also ``exp_avg_scale`` and ``exp_avg_sq_scale`` (float32, one per block);
    ``fastadam.lowp.decode_state`` turns any of them into float32 moments.
    Checkpoints store the encoded arrays as they are, so a round trip is exact.

    ``step(closure=None, *, grad_scale=None, found_inf=None, max_grad_norm=None,
    clip_value=None)``: fused AMP unscaling and inf/nan skipping, see
    :meth:`fastadam.optim.Optimizer.step`.

    Examples
    --------
    >>> import numpy as np, fastadam
    >>> params = {"w": np.zeros(3, dtype=np.float32)}
    >>> opt = fastadam.Adam(params, lr=0.1)
    >>> opt.grads["w"][...] = 1.0
    >>> _ = opt.step()
    >>> params["w"]            # updated in place: about -lr * sign(grad)
    array([-0.1, -0.1, -0.1], dtype=float32)
    """

    _opt = "adam"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, *, maximize=False, decoupled_weight_decay=False,
                 backend="auto", state_dtype="float32", max_grad_norm=None, clip_value=None):
        self.state_dtype = _lowp.check_state_dtype(state_dtype)
        _lowp._transform_scalars(None, None, clip_value)          # validate
        if max_grad_norm is not None:
            _validate.nonneg("max_grad_norm", max_grad_norm, "max_grad_norm value")
        defaults = dict(lr=lr, betas=tuple(betas) if isinstance(betas, list) else betas,
                        eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults, backend)
        self.max_grad_norm = max_grad_norm
        self.clip_value = clip_value
        if self.state_dtype != "float32":
            self._backend = _lowp.StateBackend(self._backend, self.state_dtype)

    def _check_group_arrays(self, p):
        # before anything is copied: reduced-precision state needs float32 parameters
        if self.state_dtype == "float32":
            return
        if isinstance(p, FlatParams):
            dtypes = [fb.dtype for fb in p.buffers]
        else:
            dtypes = [a.dtype for a in (p.values() if isinstance(p, dict) else p)
                      if isinstance(a, np.ndarray)]
        for dt in dtypes:
            if dt != np.float32:
                raise TypeError(f"state_dtype={self.state_dtype!r} needs float32 "
                                f"parameters, got {dt}")

    def _hparams(self, group, st, step):
        if group["amsgrad"] and self.state_dtype != "float32":
            raise ValueError(f"amsgrad=True is not supported with state_dtype="
                             f"{self.state_dtype!r}")
        beta1, beta2 = split_betas(group["betas"])
        return _hparams.adam(step=step, lr=group["lr"], beta1=beta1, beta2=beta2,
                             eps=group["eps"], weight_decay=group["weight_decay"],
                             decoupled_weight_decay=group["decoupled_weight_decay"],
                             amsgrad=group["amsgrad"], maximize=group["maximize"])

    def _state_spec(self, group):
        if self.state_dtype == "int8":
            return {"exp_avg": 0.0, "exp_avg_scale": 0.0, "exp_avg_sq": 0.0,
                    "exp_avg_sq_scale": 0.0}
        spec = {"exp_avg": 0.0, "exp_avg_sq": 0.0}
        if group["amsgrad"]:
            spec["max_exp_avg_sq"] = 0.0
        return spec

    def _state_layout(self, name, fb):
        if self.state_dtype == "float32" or name == "step":
            return super()._state_layout(name, fb)
        layout = _lowp.state_layout(self.state_dtype, fb.size, fb.dtype)
        if name not in layout:
            raise ValueError(f"unexpected state {name!r} for state_dtype={self.state_dtype!r}")
        return layout[name]

    def _new_state(self, name, fill, fb):
        if self.state_dtype == "float32":
            return super()._new_state(name, fill, fb)
        shape, dt = self._state_layout(name, fb)
        return np.zeros(shape, dt)          # every code of 0 is all-zero bits


class AdamW(Adam):
    r"""AdamW (Loshchilov & Hutter, 2019): Adam with decoupled weight decay.

    As :class:`Adam` with ``decoupled_weight_decay=True``: the parameter is
    multiplied by :math:`1 - \gamma\lambda` before the Adam update instead of
    :math:`\lambda\theta` being added to the gradient.  torch.optim.AdamW's
    defaults: ``lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2``.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, backend="auto", state_dtype="float32",
                 max_grad_norm=None, clip_value=None):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize, decoupled_weight_decay=True,
                         backend=backend, state_dtype=state_dtype,
                         max_grad_norm=max_grad_norm, clip_value=clip_value)
