"""Adam, AdamW and AMSGrad over flat buffers."""

from __future__ import annotations

import numpy as np

from .. import _alloc, _backends, _hparams, _validate
from .. import lowp as _lowp
from ..lowp import master as _master
from ._groups import _group_dtypes
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
    param_rounding : {"nearest", "stochastic"}, default "nearest"
        Low-precision parameters (float16, ``ml_dtypes.bfloat16``) are updated
        through a float32 master copy, kept in the state as ``master_param``
        (initialized exactly from the parameters at the first step); the
        parameters are rewritten from it in the same pass, rounded to nearest
        even or stochastically (:mod:`fastadam.lowp.master`, docs/lowp.md).  Their
        gradient buffers have the parameters' dtype; state_dtype
        ``"float32"`` or ``"bfloat16"``; no amsgrad; numba or numpy backend.

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
                 backend="auto", state_dtype="float32", max_grad_norm=None, clip_value=None,
                 param_rounding="nearest"):
        self.state_dtype = _lowp.check_state_dtype(state_dtype)
        self._param_rounding = _master.check_rounding(param_rounding)
        _lowp._transform_scalars(None, None, clip_value)          # validate
        if max_grad_norm is not None:
            _validate.nonneg("max_grad_norm", max_grad_norm, "max_grad_norm value")
        defaults = dict(lr=lr, betas=tuple(betas) if isinstance(betas, list) else betas,
                        eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, decoupled_weight_decay=decoupled_weight_decay)
        try:    # the backend's name, so that groups can be checked before they are copied
            self._early_backend = _backends.resolve(backend, np.empty(0, np.float32)).name
        except Exception:   # the base class raises its own error for a bad backend
            self._early_backend = None
        super().__init__(params, defaults, backend)
        self.max_grad_norm = max_grad_norm
        self.clip_value = clip_value
        self._wrap_backend()

    @property
    def param_rounding(self) -> str:
        """Rounding of float16 / bfloat16 parameters from their master weights (read-only:
        fixed at construction)."""
        return self._param_rounding

    def _buffer_backend(self, fb):
        # float32 / float64 buffers beside low-precision ones keep the bound-kernel fast
        # path of the plain backend (the wrapper only matters for master-weight buffers
        # and reduced-precision state)
        be = self._backend
        if isinstance(be, _lowp.StateBackend) and self.state_dtype == "float32" and \
                _master.param_format(fb.dtype) is None:
            return be.inner
        return be

    def _has_master(self) -> bool:
        """Whether any flat buffer holds low-precision parameters (master weights)."""
        return any(_master.param_format(fb.dtype) is not None
                   for fp in self.flat for fb in fp.buffers)

    def _wrap_backend(self):
        if (self.state_dtype != "float32" or self._has_master()) and \
                not isinstance(self._backend, _lowp.StateBackend):
            self._backend = _lowp.StateBackend(self._backend, self.state_dtype,
                                               self._param_rounding)
        if isinstance(self._backend, _lowp.StateBackend):
            # stochastic rounding: element k of buffer j draws the bits of element
            # (size of the buffers before j) + k, so no two buffers share a stream
            bases, base = {}, 0
            for fp in self.flat:
                for fb in fp.buffers:
                    bases[id(fb.data)] = base        # the buffer object the steps pass
                    base += fb.size
            self._backend.bases = bases

    def add_param_group(self, group):
        super().add_param_group(group)
        self._wrap_backend()

    def _add_group(self, group):
        # before anything is copied: low-precision parameters need no amsgrad, and the
        # backend must run their kernels
        lowp = [dt for dt in _group_dtypes(group.get("params", ()))
                if _master.param_format(dt) is not None]
        if lowp:
            if group.get("amsgrad", self.defaults["amsgrad"]):
                raise ValueError(f"amsgrad=True is not supported with {lowp[0]} parameters "
                                 "(master weights)")
            be = getattr(self, "_backend", None)
            name = getattr(getattr(be, "inner", be), "name", None) or self._early_backend
            if name is not None and name not in ("numba", "numpy"):
                raise _backends.BackendUnavailableError(
                    f"{lowp[0]} parameters (master weights) run on the numba and numpy "
                    f"backends, not {name!r}")
        super()._add_group(group)

    def _check_group_arrays(self, p):
        # before anything is copied: reduced-precision state needs float32 parameters,
        # or float16 / bfloat16 ones (with master weights) for bfloat16 state
        for dt in _group_dtypes(p):
            lowp = _master.param_format(dt) is not None
            if lowp and self.state_dtype == "int8":
                raise ValueError(f"state_dtype='int8' is not supported with {dt} parameters "
                                "(master weights); use 'float32' or 'bfloat16'")
            if self.state_dtype != "float32" and dt != np.float32 and not lowp:
                raise TypeError(f"state_dtype={self.state_dtype!r} needs float32 "
                                f"parameters (or float16 / bfloat16 ones), got {dt}")

    def _group_has_master(self, group) -> bool:
        """Whether the (already added) ``group`` holds low-precision parameters."""
        return any(g is group and any(_master.param_format(fb.dtype) is not None
                                      for fb in fp.buffers)
                   for g, fp in zip(getattr(self, "param_groups", ()), getattr(self, "flat", ())))

    def _hparams(self, group, st, step):
        if group["amsgrad"] and ("master_param" in st or self._group_has_master(group)):
            raise ValueError("amsgrad=True is not supported with low-precision parameters "
                             "(master weights)")
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

    def _buffer_spec(self, group, fb):
        spec = self._state_spec(group)
        if _master.param_format(fb.dtype) is not None:
            spec["master_param"] = None         # made from the parameters
        return spec

    def _state_layout(self, name, fb):
        lowp = _master.param_format(fb.dtype) is not None
        if name == "master_param":
            if not lowp:
                raise ValueError(f"unexpected state 'master_param' for {fb.dtype} parameters")
            return (fb.size,), np.dtype(np.float32)
        if (self.state_dtype == "float32" and not lowp) or name == "step":
            return super()._state_layout(name, fb)
        layout = _lowp.state_layout(self.state_dtype, fb.size,
                                     np.float32 if lowp else fb.dtype)
        if name not in layout:
            raise ValueError(f"unexpected state {name!r} for state_dtype={self.state_dtype!r}")
        return layout[name]

    def sync_master(self) -> int:
        """Re-read the float32 master weights from the low-precision parameters.

        The master is the authoritative copy of float16 / bfloat16 parameters:
        each step updates it and rewrites the parameters from it, so a change
        made to the parameters from outside the optimizer after the master
        exists (loading model weights, re-initializing a layer) is overwritten
        at the next step.  Call this after such a change: every master becomes
        the exact float32 value of its parameter (moments and step counts are
        kept).  Returns the number of parameters re-read (0 when there are no
        low-precision parameters or no master has been made yet).
        """
        count = 0
        for gi, fp in enumerate(self.flat):
            for fb in fp.buffers:
                fmt = _master.param_format(fb.dtype)
                st = self.state[gi].get(str(fb.dtype)) if fmt else None
                if st is not None and "master_param" in st:
                    st["master_param"][...] = _master.decode_param(fb.data, fmt)
                    count += fb.size
        return count

    def _new_state(self, name, fill, fb):
        if name == "master_param":              # exactly the parameters' values
            m = _alloc.empty(fb.size, np.float32)
            m[...] = _master.decode_param(fb.data, _master.param_format(fb.dtype))
            return m
        if self.state_dtype == "float32" and _master.param_format(fb.dtype) is None:
            return super()._new_state(name, fill, fb)
        shape, dt = self._state_layout(name, fb)
        return _alloc.zeros(shape, dt)      # every code of 0 is all-zero bits


class AdamW(Adam):
    r"""AdamW (Loshchilov & Hutter, 2019): Adam with decoupled weight decay.

    As :class:`Adam` with ``decoupled_weight_decay=True``: the parameter is
    multiplied by :math:`1 - \gamma\lambda` before the Adam update instead of
    :math:`\lambda\theta` being added to the gradient.  torch.optim.AdamW's
    defaults: ``lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2``.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, backend="auto", state_dtype="float32",
                 max_grad_norm=None, clip_value=None, param_rounding="nearest"):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize, decoupled_weight_decay=True,
                         backend=backend, state_dtype=state_dtype,
                         max_grad_norm=max_grad_norm, clip_value=clip_value,
                         param_rounding=param_rounding)
