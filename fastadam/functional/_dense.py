"""The dense steps of :mod:`fastadam.functional`: validate, compute the scalars, one kernel call."""

from __future__ import annotations

import math

from .. import _hparams, _scalars
from .. import _validate as _v
from . import _plans

__all__ = ["adam_", "rmsprop_", "adagrad_", "sgd_", "adadelta_", "nadam_", "adamax_"]


_INF = math.inf
_ADAM = (("param", "grad", "exp_avg", "exp_avg_sq"), ("param", "exp_avg", "exp_avg_sq"))


def _run(opt, backend, named, outputs, hp):
    _plans.step(opt, backend, tuple(named), tuple(named.values()), outputs, hp)


def _adam_hp(step, lr, beta1, beta2, eps, weight_decay, decoupled_weight_decay, maximize):
    """Adam's hyperparameters without ``amsgrad`` as :func:`fastadam._hparams.adam`
    returns them, when they are Python floats, bools and an int step that it accepts;
    else None (then :func:`fastadam._hparams.adam` checks them, and raises where it
    must).  A quick subset of its checks: ``tests/test_functional_fast.py`` holds
    them equal."""
    if type(lr) is float and type(beta1) is float and type(beta2) is float and \
            type(eps) is float and type(weight_decay) is float and type(step) is int and \
            step >= 1 and 0.0 <= lr < _INF and 0.0 <= beta1 < 1.0 and \
            0.0 <= beta2 < 1.0 and 0.0 <= eps < _INF and 0.0 <= weight_decay < _INF and \
            (decoupled_weight_decay is False or decoupled_weight_decay is True) and \
            (maximize is False or maximize is True):
        return dict(step=step, lr=lr, eps=eps, weight_decay=weight_decay, maximize=maximize,
                    beta1=beta1, beta2=beta2, decoupled_weight_decay=decoupled_weight_decay,
                    amsgrad=False)
    return None


def adam_(param, grad, exp_avg, exp_avg_sq, *, step, lr, beta1, beta2, eps,
          weight_decay=0.0, decoupled_weight_decay=False, amsgrad=False,
          max_exp_avg_sq=None, maximize=False, backend="auto", state_dtype="float32",
          exp_avg_scale=None, exp_avg_sq_scale=None, grad_scale=None, clip_coef=None,
          clip_value=None, master_param=None, param_rounding="nearest"):
    r"""One Adam / AdamW / AMSGrad step, in place.

    .. math::

        g &\leftarrow \pm g + \lambda_{L2}\,\theta \\
        \theta &\leftarrow \theta\,(1 - \gamma\lambda_{W}) \\
        m &\leftarrow m + (1-\beta_1)(g - m) \\
        v &\leftarrow \beta_2 v + (1-\beta_2) g^2 \\
        \hat v &\leftarrow \max(\hat v, v) \quad\text{(AMSGrad; else } \hat v = v) \\
        \theta &\leftarrow \theta - \frac{\gamma}{1-\beta_1^t}\,
                 \frac{m}{\sqrt{\hat v}/\sqrt{1-\beta_2^t} + \epsilon}

    where ``-g`` is used when ``maximize``, and ``weight_decay`` is
    :math:`\lambda_{L2}` (added to the gradient) unless
    ``decoupled_weight_decay`` (AdamW), when it is :math:`\lambda_W`.

    Parameters
    ----------
    param, grad, exp_avg, exp_avg_sq : ndarray
        Parameter, gradient, first and second moment; same shape and dtype.
    step : int
        The step number including this one (``t`` above, >= 1).
    lr, beta1, beta2, eps : float
        :math:`\gamma`, :math:`\beta_1, \beta_2 \in [0, 1)`, :math:`\epsilon \ge 0`.
    weight_decay : float, default 0
    decoupled_weight_decay : bool, default False
        AdamW's decay of the parameter instead of L2 added to the gradient.
    amsgrad : bool, default False
        Use the running maximum ``max_exp_avg_sq`` (required then).
    max_exp_avg_sq : ndarray, optional
    maximize : bool, default False
    backend : str, default "auto"
    state_dtype : {"float32", "bfloat16", "int8"}, default "float32"
        Storage of the moments; ``"bfloat16"``: uint16 arrays of bf16 bits;
        ``"int8"``: int8 ``exp_avg`` and uint8 ``exp_avg_sq`` codes plus
        ``exp_avg_scale`` / ``exp_avg_sq_scale`` (float32, ``ceil(n/256)``).
        See :func:`fastadam.lowp.adam_` and docs/lowp.md.
    exp_avg_scale, exp_avg_sq_scale : ndarray, optional
        int8 state only.
    grad_scale, clip_coef, clip_value : float, optional
        Fused gradient transform ``g -> clip_coef * clamp(g / grad_scale,
        -clip_value, clip_value)`` (AMP unscaling, norm and value clipping).
    master_param : ndarray, optional
        Low-precision parameters: ``param`` float16 (or ``ml_dtypes.bfloat16``)
        needs ``master_param``, its float32 master weights (same shape,
        C-contiguous, not overlapping).  The update above runs on
        ``master_param`` (:math:`\theta` is the master), then
        ``param = round(master_param)`` in the same pass; ``grad`` has the
        param's dtype or float32; the moments are float32 (or bf16 with
        ``state_dtype="bfloat16"``).  Refused (ValueError) with a float32 or
        float64 ``param``.  See :mod:`fastadam.lowp.master`.
    param_rounding : {"nearest", "stochastic"}, default "nearest"
        Rounding of ``param`` from the master: to nearest (ties to even), or
        stochastic (unbiased; reproducible from the step count and index).

    Raises
    ------
    TypeError, ValueError
        On a bad argument, before anything is written.
    """
    if state_dtype != "float32" or grad_scale is not None or clip_coef is not None or \
            clip_value is not None or master_param is not None or param_rounding != "nearest" \
            or getattr(param, "itemsize", 0) == 2:
        from .. import lowp
        return lowp.adam_(param, grad, exp_avg, exp_avg_sq, step=step, lr=lr, beta1=beta1,
                          beta2=beta2, eps=eps, weight_decay=weight_decay,
                          decoupled_weight_decay=decoupled_weight_decay, amsgrad=amsgrad,
                          max_exp_avg_sq=max_exp_avg_sq, maximize=maximize,
                          state_dtype=state_dtype, exp_avg_scale=exp_avg_scale,
                          exp_avg_sq_scale=exp_avg_sq_scale, grad_scale=grad_scale,
                          clip_coef=clip_coef, clip_value=clip_value, backend=backend,
                          master_param=master_param, param_rounding=param_rounding)
    if amsgrad is False:       # the common case, quickly (the same checks, the same call)
        hp = _adam_hp(step, lr, beta1, beta2, eps, weight_decay, decoupled_weight_decay,
                      maximize)
        if hp is not None:
            _plans.step("adam", backend, _ADAM[0], (param, grad, exp_avg, exp_avg_sq),
                        _ADAM[1], hp)
            return
    hp = _hparams.adam(step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                       weight_decay=weight_decay, decoupled_weight_decay=decoupled_weight_decay,
                       amsgrad=amsgrad, maximize=maximize)
    named = {"param": param, "grad": grad, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
    outputs = ("param", "exp_avg", "exp_avg_sq")
    if hp["amsgrad"]:
        if max_exp_avg_sq is None:
            raise ValueError("amsgrad=True needs the max_exp_avg_sq array")
        named["max_exp_avg_sq"] = max_exp_avg_sq
        outputs += ("max_exp_avg_sq",)
    _run("adam", backend, named, outputs, hp)


def rmsprop_(param, grad, square_avg, *, lr, alpha, eps, weight_decay=0.0, momentum=0.0,
             momentum_buffer=None, centered=False, grad_avg=None, maximize=False,
             backend="auto"):
    r"""One RMSprop step, in place.

    .. math::

        g &\leftarrow \pm g + \lambda\theta \\
        s &\leftarrow \alpha s + (1-\alpha) g^2 \\
        \bar g &\leftarrow \bar g + (1-\alpha)(g - \bar g) \quad\text{(centered)} \\
        a &\leftarrow \sqrt{s - \bar g^2} + \epsilon \quad\text{(centered; else }
              \sqrt{s} + \epsilon) \\
        b &\leftarrow \mu b + g / a \quad\text{(momentum } \mu > 0) \\
        \theta &\leftarrow \theta - \gamma\, b \quad\text{(momentum; else }
              \theta - \gamma g / a)

    Parameters
    ----------
    param, grad, square_avg : ndarray
    lr : float
    alpha : float
        Smoothing constant in [0, 1).
    eps : float
    weight_decay : float, default 0
    momentum : float, default 0
        When > 0, ``momentum_buffer`` is required.
    momentum_buffer : ndarray, optional
    centered : bool, default False
        When True, ``grad_avg`` is required.
    grad_avg : ndarray, optional
    maximize : bool, default False
    backend : str, default "auto"
    """
    hp = _hparams.rmsprop(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                          momentum=momentum, centered=centered, maximize=maximize)
    named = {"param": param, "grad": grad, "square_avg": square_avg}
    outputs = ("param", "square_avg")
    if hp["centered"]:
        if grad_avg is None:
            raise ValueError("centered=True needs the grad_avg array")
        named["grad_avg"] = grad_avg
        outputs += ("grad_avg",)
    if hp["momentum"] > 0:
        if momentum_buffer is None:
            raise ValueError("momentum > 0 needs the momentum_buffer array")
        named["momentum_buffer"] = momentum_buffer
        outputs += ("momentum_buffer",)
    _run("rmsprop", backend, named, outputs, hp)


def adagrad_(param, grad, sum, *, step, lr, lr_decay=0.0, eps, weight_decay=0.0,
             maximize=False, backend="auto"):
    r"""One Adagrad step, in place.

    .. math::

        g &\leftarrow \pm g + \lambda\theta \\
        \tilde\gamma &= \gamma / (1 + (t-1)\,\eta) \\
        s &\leftarrow s + g^2 \\
        \theta &\leftarrow \theta - \tilde\gamma\, g / (\sqrt{s} + \epsilon)

    Parameters
    ----------
    param, grad, sum : ndarray
        ``sum`` is the accumulator (torch.optim's state key ``"sum"``).
    step : int
        ``t`` above, including this step.
    lr : float
    lr_decay : float, default 0
        :math:`\eta`.
    eps : float
    weight_decay : float, default 0
    maximize : bool, default False
    backend : str, default "auto"
    """
    hp = _hparams.adagrad(step=step, lr=lr, lr_decay=lr_decay, eps=eps,
                          weight_decay=weight_decay, maximize=maximize)
    _run("adagrad", backend, {"param": param, "grad": grad, "sum": sum}, ("param", "sum"), hp)


def sgd_(param, grad, momentum_buffer=None, *, lr, momentum=0.0, dampening=0.0,
         weight_decay=0.0, nesterov=False, maximize=False, first_step=False, backend="auto"):
    r"""One SGD step (optionally with momentum / Nesterov), in place.

    .. math::

        g &\leftarrow \pm g + \lambda\theta \\
        b &\leftarrow g \quad\text{(first step)}, \qquad
        b \leftarrow \mu b + (1-\tau) g \quad\text{(later steps)} \\
        d &= g + \mu b \quad\text{(Nesterov; else } d = b) \\
        \theta &\leftarrow \theta - \gamma d

    Without momentum, :math:`\theta \leftarrow \theta - \gamma g`.

    Parameters
    ----------
    param, grad : ndarray
    momentum_buffer : ndarray, optional
        Required when ``momentum != 0``.
    lr : float
    momentum : float, default 0
        :math:`\mu`.
    dampening : float, default 0
        :math:`\tau`.
    weight_decay : float, default 0
    nesterov : bool, default False
    maximize : bool, default False
    first_step : bool, default False
        True on the first step with this buffer: it is set to the gradient
        (torch.optim's "buffer is None" case), whatever it held.
    backend : str, default "auto"
    """
    hp = _hparams.sgd(lr=lr, momentum=momentum, dampening=dampening,
                      weight_decay=weight_decay, nesterov=nesterov, maximize=maximize)
    hp["first"] = _v.flag("first_step", first_step)
    named = {"param": param, "grad": grad}
    outputs = ("param",)
    if hp["momentum"] != 0:
        if momentum_buffer is None:
            raise ValueError("momentum != 0 needs the momentum_buffer array")
        named["momentum_buffer"] = momentum_buffer
        outputs += ("momentum_buffer",)
    _run("sgd", backend, named, outputs, hp)


def adadelta_(param, grad, square_avg, acc_delta, *, lr=1.0, rho=0.9, eps=1e-6,
              weight_decay=0.0, maximize=False, backend="auto"):
    r"""One Adadelta step, in place.

    .. math::

        g &\leftarrow \pm g + \lambda\theta \\
        v &\leftarrow \rho v + (1-\rho) g^2 \\
        \Delta &= \sqrt{u + \epsilon}\,/\,\sqrt{v + \epsilon}\; g \\
        u &\leftarrow \rho u + (1-\rho)\Delta^2 \\
        \theta &\leftarrow \theta - \gamma\Delta

    Parameters
    ----------
    param, grad, square_avg, acc_delta : ndarray
        ``square_avg`` is :math:`v`, ``acc_delta`` is :math:`u`.
    lr : float, default 1.0
    rho : float, default 0.9
    eps : float, default 1e-6
    weight_decay : float, default 0
    maximize : bool, default False
    backend : str, default "auto"
    """
    hp = _hparams.adadelta(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay,
                           maximize=maximize)
    _run("adadelta", backend,
         {"param": param, "grad": grad, "square_avg": square_avg, "acc_delta": acc_delta},
         ("param", "square_avg", "acc_delta"), hp)


def nadam_(param, grad, exp_avg, exp_avg_sq, *, step, mu_product, lr, beta1, beta2, eps,
           weight_decay=0.0, momentum_decay=4e-3, decoupled_weight_decay=False,
           maximize=False, backend="auto"):
    r"""One NAdam step, in place; returns the new ``mu_product``.

    .. math::

        \mu_t &= \beta_1\,(1 - \tfrac12\, 0.96^{t\psi}) \\
        \Pi_t &= \Pi_{t-1}\,\mu_t \\
        g &\leftarrow \pm g + \lambda_{L2}\theta, \qquad
        \theta \leftarrow \theta(1 - \gamma\lambda_W) \\
        m &\leftarrow m + (1-\beta_1)(g - m), \qquad
        v \leftarrow \beta_2 v + (1-\beta_2) g^2 \\
        d &= \sqrt{v / (1-\beta_2^t)} + \epsilon \\
        \theta &\leftarrow \theta - \gamma\frac{1-\mu_t}{1-\Pi_t}\frac{g}{d}
                 - \gamma\frac{\mu_{t+1}}{1-\Pi_t\mu_{t+1}}\frac{m}{d}

    Parameters
    ----------
    param, grad, exp_avg, exp_avg_sq : ndarray
    step : int
        ``t``, including this step.
    mu_product : float
        :math:`\Pi_{t-1}`, the product of the momentum schedule over the previous
        steps (1.0 before the first step; torch.optim's state ``"mu_product"``).
    lr, beta1, beta2, eps : float
    weight_decay : float, default 0
    momentum_decay : float, default 4e-3
        :math:`\psi`.
    decoupled_weight_decay : bool, default False
    maximize : bool, default False
    backend : str, default "auto"

    Returns
    -------
    float
        :math:`\Pi_t`, to pass as ``mu_product`` on the next step.
    """
    hp = _hparams.nadam(step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                        weight_decay=weight_decay, momentum_decay=momentum_decay,
                        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)
    mp = _v.real("mu_product", mu_product)
    _scalars.check_nadam_mu_product(hp["beta1"], hp["momentum_decay"], hp["step"], mp)
    new_mp = mp * _scalars.nadam_mu(hp["beta1"], hp["momentum_decay"], hp["step"])
    hp["mu_product"] = mp
    _run("nadam", backend,
         {"param": param, "grad": grad, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq},
         ("param", "exp_avg", "exp_avg_sq"), hp)
    return new_mp


def adamax_(param, grad, exp_avg, exp_inf, *, step, lr, beta1, beta2, eps, weight_decay=0.0,
            maximize=False, backend="auto"):
    r"""One Adamax step, in place.

    .. math::

        g &\leftarrow \pm g + \lambda\theta \\
        m &\leftarrow m + (1-\beta_1)(g - m) \\
        u &\leftarrow \max(\beta_2 u,\; |g| + \epsilon) \\
        \theta &\leftarrow \theta - \frac{\gamma}{1-\beta_1^t}\,\frac{m}{u}

    Parameters
    ----------
    param, grad, exp_avg, exp_inf : ndarray
    step : int
    lr, beta1, beta2, eps : float
    weight_decay : float, default 0
    maximize : bool, default False
    backend : str, default "auto"
    """
    hp = _hparams.adamax(step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                         weight_decay=weight_decay, maximize=maximize)
    _run("adamax", backend,
         {"param": param, "grad": grad, "exp_avg": exp_avg, "exp_inf": exp_inf},
         ("param", "exp_avg", "exp_inf"), hp)
