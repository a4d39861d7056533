"""One Adam step with reduced-precision state and / or a fused gradient transform.

:func:`adam_` is the array API (``fastadam.lowp.adam_``, also what
:func:`fastadam.functional.adam_` calls for these options): it validates every
argument, then hands flat arrays to :func:`step_arrays`, which picks the kernel --
numba's fused loops (:mod:`fastadam.kernels.cpu_lowp`), master weights
(:mod:`fastadam.lowp.master`), the CUDA kernels, a compiled backend with the factor
folded into ``gsign``, or the NumPy reference (decode, :func:`fastadam.reference.adam_`,
encode).
"""

from __future__ import annotations

import math

import numpy as np

from .. import _backends, _hparams, _scalars
from .. import _validate as _v
from ..rules.formats import sr_seeds
from . import master as _master
from .state import (bf16_encode_sr, check_state_arrays, check_state_dtype, decode_state,
                    int8_encode, log8_encode, state_layout)
from .transforms import _transform_scalars


def _check_arrays(param, grad, state, state_dtype):
    named = {"param": param, "grad": grad}
    for k, a in named.items():
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{k} must be a numpy.ndarray, got {type(a).__name__}")
    if state_dtype != "float32" and param.dtype != np.float32:
        raise TypeError(f"state_dtype={state_dtype!r} needs float32 parameters, got {param.dtype}")
    layout = state_layout(state_dtype, param.size, param.dtype)
    check_state_arrays(state, layout, state_dtype, param.shape)
    if grad.dtype != param.dtype:
        raise TypeError(f"grad has dtype {grad.dtype}, but param has {param.dtype}")
    if grad.shape != param.shape:
        raise ValueError(f"grad has shape {grad.shape}, but param has {param.shape}")
    return _v.in_place_views(dict(named, **{k: state[k] for k in layout}),
                             ["param"] + list(layout))


def adam_(param, grad, exp_avg, exp_avg_sq, *, step, lr, beta1, beta2, eps,
          weight_decay=0.0, decoupled_weight_decay=False, amsgrad=False, max_exp_avg_sq=None,
          maximize=False, state_dtype="bfloat16", exp_avg_scale=None, exp_avg_sq_scale=None,
          grad_scale=None, clip_coef=None, clip_value=None, backend="auto",
          master_param=None, param_rounding="nearest"):
    r"""One Adam / AdamW step with reduced-precision state and/or a fused gradient transform.

    :func:`fastadam.functional.adam_` calls this when ``state_dtype`` is not
    ``"float32"`` or a gradient transform is given; the arguments are the same.

    .. math::

        g &\leftarrow k\,\mathrm{clamp}(g / s, -c, c) \quad\text{(then as Adam:)} \\
        g &\leftarrow \pm g + \lambda_{L2}\theta, \qquad
        \theta \leftarrow \theta(1 - \gamma\lambda_W) \\
        m &\leftarrow D(m) + (1-\beta_1)(g - D(m)), \qquad
        v \leftarrow \beta_2 D(v) + (1-\beta_2) g^2 \\
        \theta &\leftarrow \theta - \frac{\gamma}{1-\beta_1^t}
                 \frac{m}{\sqrt{v}/\sqrt{1-\beta_2^t} + \epsilon} \\
        m, v &\text{ stored as } E(m), E(v)

    with :math:`D`/:math:`E` the decode/encode of ``state_dtype`` (identity
    for float32; see :mod:`fastadam.rules.codecs`), :math:`s` ``grad_scale``,
    :math:`k` ``clip_coef``, :math:`c` ``clip_value``.

    Parameters
    ----------
    param, grad : ndarray
        float32 (float64 allowed only with ``state_dtype="float32"``), same shape.
    exp_avg, exp_avg_sq : ndarray
        ``bfloat16``: uint16 of ``param.shape``; ``int8``: int8 and uint8 of
        ``param.shape``; ``float32``: the parameter dtype.
    exp_avg_scale, exp_avg_sq_scale : ndarray, optional
        ``int8`` only: float32 of shape ``(ceil(param.size / 256),)``, the
        per-block absmax of each moment (zeros initially, with zero codes).
    step, lr, beta1, beta2, eps, weight_decay, decoupled_weight_decay, maximize
        As :func:`fastadam.functional.adam_`.
    amsgrad, max_exp_avg_sq
        Only with ``state_dtype="float32"``.
    state_dtype : {"float32", "bfloat16", "int8"}
    grad_scale : float, optional
        ``s > 0``: the gradient holds ``s * g`` (a loss-scaled AMP gradient).
    clip_coef : float, optional
        ``k >= 0``: a norm-clipping factor (:func:`clip_coef`).
    clip_value : float, optional
        ``c >= 0``: clip by value.
    backend : str, default "auto"
        ``numba`` or ``numpy``; ``cython`` only for float32 state without
        ``clip_value`` (and float32 / float64 parameters); ``cuda`` for device
        arrays (``"auto"`` picks it for them; AMSGrad with ``clip_value`` is
        refused there).
    master_param : ndarray, optional
        float32 master weights of a low-precision ``param`` (NumPy float16 or
        ``ml_dtypes.bfloat16``; required then, refused for a float32 param):
        the rule above runs on ``master_param`` and ``param`` is written as
        its rounding, in the same pass (:mod:`fastadam.lowp.master`).  ``grad``
        then has the param's dtype or float32; state ``"float32"`` or
        ``"bfloat16"``.
    param_rounding : {"nearest", "stochastic"}, default "nearest"
        How ``param`` is rounded from ``master_param``.

    Raises
    ------
    TypeError, ValueError
        On a bad argument, before anything is written.
    fastadam.BackendUnavailableError
        On a backend that does not implement the combination.
    """
    state_dtype = check_state_dtype(state_dtype)
    hp = _hparams.adam(step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                       weight_decay=weight_decay, decoupled_weight_decay=decoupled_weight_decay,
                       amsgrad=amsgrad, maximize=maximize)
    if hp["amsgrad"] and state_dtype != "float32":
        raise ValueError(f"amsgrad=True is not supported with state_dtype={state_dtype!r}")
    gscale, clip = _transform_scalars(grad_scale, clip_coef, clip_value)
    state = {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
    rounding = _master.check_rounding(param_rounding)
    if backend == "cuda" or (backend == "auto" and _backends.is_device_array(param)):
        # device arrays: fastadam.kernels.cuda_lowp validates them all, then launches
        if hp["amsgrad"] and max_exp_avg_sq is None:
            raise ValueError("amsgrad=True needs the max_exp_avg_sq array")
        be = _backends.resolve(backend, param)
        from ..kernels import cuda_lowp_launch
        state.update(exp_avg_scale=exp_avg_scale, exp_avg_sq_scale=exp_avg_sq_scale,
                     max_exp_avg_sq=max_exp_avg_sq)
        cuda_lowp_launch.adam_(param, grad, state, master_param, hp, state_dtype=state_dtype,
                               gscale=gscale, clip=clip, rounding=rounding)
        return
    lowp_param = isinstance(param, np.ndarray) and _master.param_format(param.dtype) is not None
    if master_param is not None or lowp_param:
        if master_param is None:
            raise TypeError(f"param has dtype {param.dtype}: low-precision parameters need "
                            "master_param (float32 master weights of the same shape); "
                            "without it param must have dtype float32 or float64")
        if hp["amsgrad"]:
            raise ValueError("amsgrad=True is not supported with low-precision parameters "
                             "(master weights)")
        arrays, fmt = _master.check_arrays(param, grad, master_param, state, state_dtype)
        be = _backends.resolve(backend, param)
        step_arrays(be, "adam", arrays, hp, state_dtype=state_dtype, gscale=gscale, clip=clip,
                    param_format=fmt, param_rounding=rounding)
        return
    if rounding != "nearest":
        raise ValueError("param_rounding applies to low-precision parameters with "
                         "master_param only")
    if state_dtype == "int8":
        state["exp_avg_scale"] = exp_avg_scale
        state["exp_avg_sq_scale"] = exp_avg_sq_scale
    if hp["amsgrad"]:
        if max_exp_avg_sq is None:
            raise ValueError("amsgrad=True needs the max_exp_avg_sq array")
        if not isinstance(param, np.ndarray):
            raise TypeError(f"param must be a numpy.ndarray, got {type(param).__name__}")
        arrays = _v.host_arrays({"param": param, "grad": grad, "exp_avg": exp_avg,
                                 "exp_avg_sq": exp_avg_sq, "max_exp_avg_sq": max_exp_avg_sq},
                                ("param", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"))
    else:
        if state_dtype == "float32" and isinstance(param, np.ndarray) and \
                param.dtype not in _v.FLOAT_DTYPES:
            raise TypeError(f"param must have dtype float32 or float64, got {param.dtype}")
        arrays = _check_arrays(param, grad, state, state_dtype)
    be = _backends.resolve(backend, param)
    step_arrays(be, "adam", arrays, hp, state_dtype=state_dtype, gscale=gscale, clip=clip)


def step_arrays(be, opt, arrays, hp, *, state_dtype="float32", gscale=1.0, clip=math.inf,
                param_format=None, param_rounding="nearest", index_base=0):
    """Run one validated step on flat arrays with a gradient transform (internal).

    ``be`` a resolved backend, ``opt`` the :mod:`fastadam._scalars` step name,
    ``arrays`` flat arrays by state name, ``hp`` validated hyperparameters,
    ``g -> clamp(g * gscale, clip)`` before the rule.  Used by :func:`adam_` and
    the façade; fastadam.torch can call it with ``.numpy()`` views of flat
    CPU tensors.  With ``master_param`` among the arrays (low-precision
    parameters, :mod:`fastadam.lowp.master`), ``param_format`` names the format of
    ``param`` (taken from its dtype when None; uint16 bits need it).
    ``index_base``: the index of these arrays' element 0 among all the elements the
    caller steps (a slice of a flat buffer, the buffers of several groups), so that
    stochastic rounding draws different bits for every element (:func:`sr_seeds`).
    """
    p = arrays["param"]
    if be.name == "cuda" and opt == "adam":
        from ..kernels import cuda_lowp_launch
        cuda_lowp_launch.step_arrays(arrays, hp, state_dtype=state_dtype, gscale=gscale,
                                     clip=clip, param_format=param_format,
                                     param_rounding=param_rounding, index_base=index_base)
        return
    if p.shape[0] == 0:
        return
    if "master_param" in arrays:
        if opt != "adam":
            raise TypeError(f"low-precision parameters (master weights) are supported by "
                            f"Adam / AdamW only, not {opt!r}")
        fmt = param_format or _master.param_format(p.dtype)
        _master.step_arrays(be, arrays, hp, fmt=fmt, rounding=param_rounding,
                            state_dtype=state_dtype, gscale=gscale, clip=clip,
                            index_base=index_base)
        return
    lowp = state_dtype != "float32"
    if opt != "adam" and lowp:
        raise ValueError(f"state_dtype={state_dtype!r} is implemented for Adam/AdamW only")
    fused_adam = opt == "adam" and not hp.get("amsgrad") and p.dtype == np.float32
    if be.name == "numba" and fused_adam and (lowp or clip != math.inf):
        from ..kernels import cpu_lowp
        if state_dtype == "bfloat16":
            a, k = (p, arrays["grad"], arrays["exp_avg"], arrays["exp_avg_sq"]), "adam_bf16"
        elif state_dtype == "int8":
            a = (p, arrays["grad"], arrays["exp_avg"], arrays["exp_avg_scale"],
                 arrays["exp_avg_sq"], arrays["exp_avg_sq_scale"])
            k = "adam_int8"
        else:
            f = np.float32
            a, k = (p, arrays["grad"], arrays["exp_avg"], arrays["exp_avg_sq"]), "adam_f32"
            cpu_lowp.run(k, a, (f(gscale), f(clip)) + _scalars.adam(p.dtype, **hp)[1])
            return
        cpu_lowp.run(k, a, _scalars.kernel_scalars(k, hp, p.dtype, gscale, clip, index_base))
        return
    if lowp and be.name != "numpy":
        raise _backends.BackendUnavailableError(
            f"state_dtype={state_dtype!r} is implemented on the numba and numpy backends, "
            f"not {be.name!r}")
    if not lowp and clip == math.inf and hasattr(be, "run"):
        # compiled backend, float32 state: fold the factor into gsign (scalar 0)
        kname, scal = getattr(_scalars, opt)(p.dtype, **hp)
        if gscale != 1.0:
            scal = _scalars.scale_grad(p.dtype, scal, gscale)
        be.run(kname, (p, arrays["grad"]) + tuple(arrays[s] for s in
                                                   _scalars.KERNEL_STATES[kname]), scal)
        return
    # the reference path (numpy backend, or a combination no compiled kernel fuses):
    # transform a temporary copy of the gradient, decode state to float32 copies
    g = arrays["grad"]
    c = p.dtype.type
    if gscale != 1.0 or clip != math.inf:
        g = np.clip(g * c(gscale), -c(clip), c(clip))
    if not lowp:
        be.step(opt, dict(arrays, grad=g), hp)
        return
    from .. import reference
    st = decode_state(state_dtype, arrays)
    m, v = st["exp_avg"], st["exp_avg_sq"]
    reference.adam_(p, g, m, v, None, **hp)
    if state_dtype == "bfloat16":
        sm, sv = sr_seeds(hp["step"], index_base)
        arrays["exp_avg"][...] = bf16_encode_sr(m, sm)
        arrays["exp_avg_sq"][...] = bf16_encode_sr(v, sv)
    else:
        arrays["exp_avg"][...], arrays["exp_avg_scale"][...] = int8_encode(m)
        arrays["exp_avg_sq"][...], arrays["exp_avg_sq_scale"][...] = log8_encode(v)
