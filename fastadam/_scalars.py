"""Per-step scalar work, done once per step in Python and cast to the buffer dtype.

Every compiled backend (numba CPU, numba CUDA, Cython) takes its scalars from
here, in the argument order of the rules in :mod:`fastadam.rules`.  Doing the
arithmetic in float64 Python floats and casting the results once with
``dtype.type`` is what keeps float32 kernels in float32.

Each function returns ``(kernel_name, scalars)``: the name of the kernel
(one per set of arrays it touches) and the tuple of scalars.
"""

from __future__ import annotations

import math

import numpy as np

from .rules.formats import I8_QMAX, param_seed, sr_seeds

#: The state arrays each kernel reads and writes, in argument order (after p, g).
KERNEL_STATES = {
    "adam": ("exp_avg", "exp_avg_sq"),
    "adam_amsgrad": ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
    "rmsprop": ("square_avg",),
    "rmsprop_momentum": ("square_avg", "momentum_buffer"),
    "rmsprop_centered": ("square_avg", "grad_avg"),
    "rmsprop_centered_momentum": ("square_avg", "grad_avg", "momentum_buffer"),
    "adagrad": ("sum",),
    "sgd": (),
    "sgd_momentum": ("momentum_buffer",),
    "adadelta": ("square_avg", "acc_delta"),
    "nadam": ("exp_avg", "exp_avg_sq"),
    "adamax": ("exp_avg", "exp_inf"),
}


#: The state arrays of each row-sparse kernel (:mod:`fastadam.kernels.cpu_sparse`), in
#: argument order after the table; ``rowwise_adagrad``'s ``sum`` holds one value per row.
SPARSE_KERNEL_STATES = {
    "sparse_adam": ("exp_avg", "exp_avg_sq"),
    "sparse_adagrad": ("sum",),
    "sparse_sgd": (),
    "rowwise_adagrad": ("sum",),
    "lazy_adam": ("exp_avg", "exp_avg_sq"),
    "lazy_adam_amsgrad": ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
}

#: Suffix of a dense kernel's gradient-list form (:func:`gradlist_name`).
GRADLIST_SUFFIX = "_gradlist"


def gradlist_name(kname: str) -> str:
    """The name of dense kernel ``kname``'s gradient-list form (numba CPU): the kernel's
    arguments with the gradient replaced by ``gaddr, goff``, int64 arrays -- the
    gradient of elements ``goff[k]:goff[k+1]`` is the contiguous array at address
    ``gaddr[k]`` (:func:`fastadam.kernels._blocked.gradlist_loop`).  fastadam.torch
    steps a run of parameters whose gradients are separate tensors (fresh from
    autograd) in one call of it, reading each gradient where it is."""
    return kname + GRADLIST_SUFFIX


def kernel_states(kname: str) -> tuple:
    """The state arrays of kernel ``kname``, dense (:data:`KERNEL_STATES`) or row-sparse."""
    if kname in KERNEL_STATES:
        return KERNEL_STATES[kname]
    return SPARSE_KERNEL_STATES[kname]


class PythonFloats:
    """Stands in for a dtype here so the scalars stay Python floats.

    A bound numba kernel's compiled entry point converts each to the buffer's float
    type on entry, rounding exactly as ``dtype.type`` would (float64 -> float32
    round-to-nearest), which saves constructing a NumPy scalar per value per step.
    """

    type = float
    #: The kernel's float type, where known: what :func:`lerp_weight` computes in.
    kernel_type = None


class PythonFloats32(PythonFloats):
    """:class:`PythonFloats` for a float32 kernel."""

    kernel_type = np.float32


class PythonFloats64(PythonFloats):
    """:class:`PythonFloats` for a float64 kernel."""

    kernel_type = np.float64


_PYTHON_FLOATS = {np.dtype(np.float32): PythonFloats32, np.dtype(np.float64): PythonFloats64}


def python_floats(dtype):
    """:class:`PythonFloats32` or :class:`PythonFloats64` for a float32 / float64 ``dtype``
    (else :class:`PythonFloats`; a dict lookup: it runs once per buffer per step)."""
    return _PYTHON_FLOATS.get(dtype, PythonFloats)


#: ``(dtype, w) -> lerp_weight(dtype, w)``: the weight depends on the hyperparameters
#: only, not on the step, so it is computed once per (dtype, weight) (a dict lookup per
#: step instead of a NumPy scalar's round trip); a bounded cache.
_LERP = {}


def lerp_weight(dtype, w):
    """The lerp weight ``w`` as the rules take it: torch's branch in its sign.

    torch's ``lerp(a, b, w)`` computes ``a + w * (b - a)`` when ``|w| < 0.5`` and
    ``b - (b - a) * (1 - w)`` otherwise, ``w`` and ``1 - w`` in the buffer's float
    type.  For ``w`` in ``(0, 1]`` (``1 - beta1``, ``beta1`` in ``[0, 1)``), this
    returns ``w`` for the first branch (positive) and ``w - 1`` for the second (zero
    or negative): the rules compute ``fma(lw, b - a, a if lw > -lw else b)``
    (:mod:`fastadam.rules.adam`); ``w == 0`` (``beta1 == 1``) is refused before this.
    RMSprop's centered rules take the same value and tell the branch by ``lw == oma``
    instead, a test that holds for any ``w`` (torch accepts ``alpha > 1``).
    """
    key = (dtype, w) if type(w) is float else None     # (a float weight: hashable)
    r = _LERP.get(key)
    if r is not None:
        return r
    c = dtype.type
    f = getattr(dtype, "kernel_type", None) or c     # the kernel's type (PythonFloats*)
    wt = f(w)
    r = c(wt) if abs(float(wt)) < 0.5 else c(f(wt - f(1.0)))
    if key is not None and len(_LERP) < 256:
        _LERP[key] = r
    return r


def _common(c, maximize, l2):
    return c(-1.0 if maximize else 1.0), c(l2)


def adam(dtype, *, step, lr, beta1, beta2, eps, weight_decay, decoupled_weight_decay,
         amsgrad, maximize):
    c = dtype.type
    bc1 = 1.0 - beta1 ** step
    bc2 = 1.0 - beta2 ** step
    if decoupled_weight_decay:
        l2, decay = 0.0, 1.0 - lr * weight_decay
    else:
        l2, decay = weight_decay, 1.0
    scal = _common(c, maximize, l2) + (
        c(decay), lerp_weight(dtype, 1.0 - beta1), c(beta2), c(1.0 - beta2),
        c(-lr / bc1), c(1.0 / math.sqrt(bc2)), c(eps))
    return ("adam_amsgrad" if amsgrad else "adam"), scal


def rmsprop(dtype, *, lr, alpha, eps, weight_decay, momentum, centered, maximize):
    c = dtype.type
    scal = _common(c, maximize, weight_decay) + (c(alpha), c(1.0 - alpha), c(-lr), c(eps))
    name = "rmsprop"
    if centered:
        name += "_centered"
    if momentum > 0:
        name += "_momentum"
        scal += (c(momentum),)
    if centered:
        scal += (lerp_weight(dtype, 1.0 - alpha),)
    return name, scal


def adagrad(dtype, *, step, lr, lr_decay, eps, weight_decay, maximize):
    c = dtype.type
    clr = lr / (1.0 + (step - 1) * lr_decay)
    return "adagrad", _common(c, maximize, weight_decay) + (c(-clr), c(eps))


def sgd(dtype, *, first, lr, momentum, dampening, weight_decay, nesterov, maximize):
    c = dtype.type
    scal = _common(c, maximize, weight_decay) + (c(-lr),)
    if momentum == 0:
        return "sgd", scal
    return "sgd_momentum", scal + (c(momentum), c(1.0 - dampening), bool(first),
                                   bool(nesterov))


def adadelta(dtype, *, lr, rho, eps, weight_decay, maximize):
    c = dtype.type
    return "adadelta", _common(c, maximize, weight_decay) + (
        c(rho), c(1.0 - rho), c(-lr), c(eps))


def nadam_mu(beta1, momentum_decay, step):
    """NAdam's momentum schedule ``mu_t`` (torch.optim's formula)."""
    return beta1 * (1.0 - 0.5 * (0.96 ** (step * momentum_decay)))


def check_nadam_mu_product(beta1, momentum_decay, step, mu_product) -> None:
    """Raise ValueError if NAdam's step ``step`` from ``mu_product`` would divide by zero.

    The one definition of that check (functional API, façade and fastadam.torch).
    """
    mu = nadam_mu(beta1, momentum_decay, step)
    mu_next = nadam_mu(beta1, momentum_decay, step + 1)
    if mu_product * mu == 1.0 or mu_product * mu * mu_next == 1.0:
        raise ValueError(f"Invalid mu_product: {mu_product} (the step would divide by zero)")


def nadam(dtype, *, step, mu_product, lr, beta1, beta2, eps, weight_decay, momentum_decay,
          decoupled_weight_decay, maximize):
    """Scalars for one NAdam step; ``mu_product`` is the product *before* this step."""
    c = dtype.type
    mu = nadam_mu(beta1, momentum_decay, step)
    mu_product = mu_product * mu
    mu_next = nadam_mu(beta1, momentum_decay, step + 1)
    bc2 = 1.0 - beta2 ** step
    if decoupled_weight_decay:
        l2, decay = 0.0, 1.0 - lr * weight_decay
    else:
        l2, decay = weight_decay, 1.0
    cg = -lr * (1.0 - mu) / (1.0 - mu_product)
    cm = (-lr * mu_next) / (1.0 - mu_product * mu_next)
    return "nadam", _common(c, maximize, l2) + (
        c(decay), lerp_weight(dtype, 1.0 - beta1), c(beta2), c(1.0 - beta2), c(1.0 / bc2),
        c(eps), c(cg), c(cm))


def adamax(dtype, *, step, lr, beta1, beta2, eps, weight_decay, maximize):
    c = dtype.type
    clr = lr / (1.0 - beta1 ** step)
    return "adamax", _common(c, maximize, weight_decay) + (
        lerp_weight(dtype, 1.0 - beta1), c(beta2), c(eps), c(-clr))


def scale_grad(dtype, scalars, gscale):
    """``scalars`` with a gradient factor folded into ``gsign`` (every kernel's scalar 0).

    Used for fused unscaling / norm clipping (:mod:`fastadam.lowp`): the kernel
    then sees ``gsign * gscale * g``, with one rounding of ``gsign * gscale``.
    """
    return (dtype.type(float(scalars[0]) * float(gscale)),) + tuple(scalars[1:])


def kernel_scalars(kernel, hp, dtype, gscale=1.0, clip=math.inf, index_base=0, sr=False):
    """The scalar arguments after the arrays of numba kernel ``kernel`` (``"adam_bf16"``,
    ``"adam_int8"`` without its ``nwork``, or ``"master"``: cpu_master's loops) for a
    step with hyperparameters ``hp``: the transform ``gscale`` / ``clip``, the seeds of
    stochastic rounding (index base ``index_base``; ``sr``: the parameter copy's), then
    :func:`adam`'s.  ``dtype``: ``np.dtype(np.float32)`` (NumPy
    scalars, for numba's dispatch) or :class:`PythonFloats` (Python
    numbers, for an entry point compiled for them, which converts them the same way)."""
    if dtype is PythonFloats:
        dtype = PythonFloats32                        # these kernels are float32
    c = dtype.type
    u = int if c is float else np.uint32
    scal = adam(dtype, **hp)[1]
    if kernel == "adam_int8":
        return (c(gscale), c(clip), c(I8_QMAX)) + scal
    sm, sv = sr_seeds(hp["step"], index_base)
    if kernel == "adam_bf16":
        return (u(sm), u(sv), c(gscale), c(clip)) + scal
    return (u(sm), u(sv), u(param_seed(hp["step"], index_base)), bool(sr), c(gscale),
            c(clip)) + scal


# -- row-sparse steps (rules/sparse.py; lazy Adam is rules/adam.py on the touched rows) --

def sparse_adam(dtype, *, step, lr, beta1, beta2, eps, maximize):
    """torch.optim.SparseAdam: the bias correction of ``v`` is in the step size."""
    c = dtype.type
    bias_correction1 = 1.0 - beta1 ** step
    bias_correction2 = 1.0 - beta2 ** step
    step_size = lr * math.sqrt(bias_correction2) / bias_correction1
    return "sparse_adam", (c(-1.0 if maximize else 1.0), c(1.0 - beta1), c(1.0 - beta2),
                           c(-step_size), c(eps))


def sparse_adagrad(dtype, *, step, lr, lr_decay, eps, maximize):
    c = dtype.type
    clr = lr / (1.0 + (step - 1) * lr_decay)
    return "sparse_adagrad", (c(-1.0 if maximize else 1.0), c(-clr), c(eps))


def sparse_sgd(dtype, *, lr, maximize):
    c = dtype.type
    return "sparse_sgd", (c(-1.0 if maximize else 1.0), c(-lr))


def rowwise_adagrad(dtype, *, lr, eps, weight_decay, maximize, dim):
    """Row-wise Adagrad; ``dim``, the row length, divides the row's sum of squares."""
    c = dtype.type
    return "rowwise_adagrad", _common(c, maximize, weight_decay) + (c(-lr), c(eps), c(dim))


def lazy_adam(dtype, **hp):
    """Adam's scalars (:func:`adam`), for its kernels over the touched rows."""
    name, scal = adam(dtype, **hp)
    return "lazy_" + name, scal
