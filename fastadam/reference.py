"""The readable NumPy reference: ground truth for the tests, never fast.

Each function is a line-by-line transcription of torch.optim's single-tensor
("for-loop") implementation for one parameter, written with whole-array NumPy
operations in the array's own dtype (NumPy 2 keeps ``float32_array * 0.9`` in
float32).  It deliberately shares no code with :mod:`fastadam.rules` or
:mod:`fastadam._scalars`, so that the compiled kernels are checked against an
independent derivation.  All arrays are updated in place; the caller validates.

Torch's operation order is kept: ``p.addcdiv_(a, b, value=c)`` is ``p += (c * a) / b``;
``lerp_``, ``addcmul_`` and ``add(x, alpha=a)``, which torch's CPU kernels compute as
fused multiply-adds, are evaluated in a wider type to stand in for them (:func:`lerp_`,
:func:`addcmul_`, :func:`sub_square`, :func:`add`).
"""

from __future__ import annotations

import math

import numpy as np


def _wide(dtype):
    """A wider type in which ``a * b + c`` of two ``dtype`` values stands in for a
    fused multiply-add: float64 for float32 (the product exact), the x87 80-bit long
    double for float64 (no overflow of the product; 11 more bits)."""
    return np.float64 if dtype == np.float32 else np.longdouble


def lerp_(start, end, weight):
    """torch's ``start.lerp_(end, weight)`` in place (ATen's ``lerp``), both branches:
    ``start + w * (end - start)`` for ``|w| < 0.5``, else ``end - (end - start) * (1 -
    w)``; ``w``, ``1 - w`` and ``end - start`` in the array's dtype, the multiply-add
    fused as torch's CPU kernel does (here: in a wider type, rounded once more)."""
    w = start.dtype.type(weight)
    wide = _wide(start.dtype)
    d = (end - start).astype(wide)
    with np.errstate(over="ignore", invalid="ignore"):
        if abs(w) < 0.5:
            r = start.astype(wide) + wide(w) * d
        else:
            r = end.astype(wide) - d * wide(1 - w)
        start[...] = r.astype(start.dtype)


def addcmul_(a, t1, t2, value):
    """torch's ``a.addcmul_(t1, t2, value=value)`` in place: ``a + (value * t1) * t2``,
    ``value * t1`` in the array's dtype, the rest one fused multiply-add as torch's CPU
    kernel (here: in a wider type, then rounded to the array's dtype)."""
    wide = _wide(a.dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        vt = (a.dtype.type(value) * t1).astype(wide)
        a[...] = (a.astype(wide) + vt * t2.astype(wide)).astype(a.dtype)


def add(a, b, alpha):
    """torch's ``a.add(b, alpha=alpha)``: ``a + alpha * b``, one fused multiply-add in
    torch's CPU kernel (here: in a wider type, then rounded to the array's dtype)."""
    wide = _wide(a.dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        return (a.astype(wide) + wide(a.dtype.type(alpha)) * b.astype(wide)).astype(a.dtype)


def sub_square(a, b):
    """``a - b * b`` as torch's ``a.addcmul(b, b, value=-1)``: one fused multiply-add
    (here: in a wider type, then rounded to the array's dtype)."""
    wide = _wide(a.dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        return (a.astype(wide) - b.astype(wide) * b.astype(wide)).astype(a.dtype)


def adam_(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, *, step, lr, beta1, beta2,
          eps, weight_decay, decoupled_weight_decay, amsgrad, maximize):
    grad = -grad if maximize else grad
    if weight_decay != 0:
        if decoupled_weight_decay:
            param *= 1 - lr * weight_decay
        else:
            grad = add(grad, param, weight_decay)
    lerp_(exp_avg, grad, 1 - beta1)
    exp_avg_sq *= beta2
    addcmul_(exp_avg_sq, grad, grad, 1 - beta2)
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    step_size = lr / bias_correction1
    bias_correction2_sqrt = math.sqrt(bias_correction2)
    if amsgrad:
        np.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        denom = np.sqrt(max_exp_avg_sq) / bias_correction2_sqrt + eps
    else:
        denom = np.sqrt(exp_avg_sq) / bias_correction2_sqrt + eps
    param += (-step_size * exp_avg) / denom             # torch's addcdiv_(value=-step_size)


def rmsprop_(param, grad, square_avg, momentum_buffer, grad_avg, *, lr, alpha, eps,
             weight_decay, momentum, centered, maximize):
    grad = -grad if maximize else grad
    if weight_decay != 0:
        grad = add(grad, param, weight_decay)
    square_avg *= alpha
    addcmul_(square_avg, grad, grad, 1 - alpha)
    if centered:
        lerp_(grad_avg, grad, 1 - alpha)
        avg = np.sqrt(sub_square(square_avg, grad_avg))
    else:
        avg = np.sqrt(square_avg)
    avg += eps
    if momentum > 0:
        momentum_buffer *= momentum
        momentum_buffer += grad / avg
        param[...] = add(param, momentum_buffer, -lr)
    else:
        param += (-lr * grad) / avg                    # addcdiv_(value=-lr)


def adagrad_(param, grad, state_sum, *, step, lr, lr_decay, eps, weight_decay, maximize):
    grad = -grad if maximize else grad
    if weight_decay != 0:
        grad = add(grad, param, weight_decay)
    clr = lr / (1 + (step - 1) * lr_decay)
    addcmul_(state_sum, grad, grad, 1)
    std = np.sqrt(state_sum) + eps
    param += (-clr * grad) / std                       # addcdiv_(value=-clr)


def sgd_(param, grad, momentum_buffer, *, first, lr, momentum, dampening, weight_decay,
         nesterov, maximize):
    grad = -grad if maximize else grad
    if weight_decay != 0:
        grad = add(grad, param, weight_decay)
    if momentum != 0:
        if first:
            momentum_buffer[...] = grad
        else:
            momentum_buffer *= momentum
            momentum_buffer[...] = add(momentum_buffer, grad, 1 - dampening)
        if nesterov:
            grad = add(grad, momentum_buffer, momentum)
        else:
            grad = momentum_buffer
    param[...] = add(param, grad, -lr)


def adadelta_(param, grad, square_avg, acc_delta, *, lr, rho, eps, weight_decay, maximize):
    grad = -grad if maximize else grad
    if weight_decay != 0:
        grad = add(grad, param, weight_decay)
    square_avg *= rho
    addcmul_(square_avg, grad, grad, 1 - rho)
    std = np.sqrt(square_avg + eps)
    delta = np.sqrt(acc_delta + eps) / std * grad
    acc_delta *= rho
    addcmul_(acc_delta, delta, delta, 1 - rho)
    param[...] = add(param, delta, -lr)


def nadam_(param, grad, exp_avg, exp_avg_sq, *, step, mu_product, lr, beta1, beta2, eps,
           weight_decay, momentum_decay, decoupled_weight_decay, maximize):
    """One NAdam step; returns the new ``mu_product``."""
    grad = -grad if maximize else grad
    bias_correction2 = 1 - beta2 ** step
    if weight_decay != 0:
        if decoupled_weight_decay:
            param *= 1 - lr * weight_decay
        else:
            grad = add(grad, param, weight_decay)
    mu = beta1 * (1.0 - 0.5 * (0.96 ** (step * momentum_decay)))
    mu_next = beta1 * (1.0 - 0.5 * (0.96 ** ((step + 1) * momentum_decay)))
    mu_product = mu_product * mu
    lerp_(exp_avg, grad, 1 - beta1)
    exp_avg_sq *= beta2
    addcmul_(exp_avg_sq, grad, grad, 1 - beta2)
    denom = np.sqrt(exp_avg_sq / bias_correction2) + eps
    mu_product_next = mu_product * mu_next
    param += ((-lr * (1.0 - mu) / (1.0 - mu_product)) * grad) / denom
    param += (((-lr * mu_next) / (1.0 - mu_product_next)) * exp_avg) / denom
    return mu_product


def adamax_(param, grad, exp_avg, exp_inf, *, step, lr, beta1, beta2, eps, weight_decay,
            maximize):
    grad = -grad if maximize else grad
    if weight_decay != 0:
        grad = add(grad, param, weight_decay)
    lerp_(exp_avg, grad, 1 - beta1)
    np.maximum(exp_inf * beta2, np.abs(grad) + eps, out=exp_inf)
    clr = lr / (1 - beta1 ** step)
    param += (-clr * exp_avg) / exp_inf                # addcdiv_(value=-clr)


# -- row-sparse steps ---------------------------------------------------------------
# ``param`` and the state are 2-D tables (rows, dim); ``indices`` the looked-up rows
# (duplicates allowed), ``values`` one gradient row per lookup.  Only the distinct rows
# looked up are read and written.

def coalesce(indices, values):
    """The distinct rows (sorted) and their gradient rows, summed in lookup order."""
    rows, where = np.unique(indices, return_inverse=True)
    grad = np.zeros((rows.size, values.shape[1]), dtype=values.dtype)
    np.add.at(grad, where.reshape(-1), values)        # one lookup after another
    return rows, grad


def sparse_adam_(param, indices, values, exp_avg, exp_avg_sq, *, step, lr, beta1, beta2,
                 eps, maximize):
    """torch.optim.SparseAdam (``torch/optim/_functional.py: sparse_adam``)."""
    rows, grad = coalesce(indices, values)
    if maximize:
        grad = -grad
    if rows.size == 0:
        return
    m = exp_avg[rows]
    v = exp_avg_sq[rows]
    m += (grad - m) * (1 - beta1)
    v += (grad * grad - v) * (1 - beta2)
    exp_avg[rows] = m
    exp_avg_sq[rows] = v
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    step_size = lr * math.sqrt(bias_correction2) / bias_correction1
    param[rows] += -step_size * (m / (np.sqrt(v) + eps))


def sparse_adagrad_(param, indices, values, state_sum, *, step, lr, lr_decay, eps, maximize):
    """torch.optim.Adagrad's sparse path (``_single_tensor_adagrad``, ``grad.is_sparse``)."""
    rows, grad = coalesce(indices, values)
    if maximize:
        grad = -grad
    if rows.size == 0:
        return
    clr = lr / (1 + (step - 1) * lr_decay)
    s = state_sum[rows] + grad * grad
    state_sum[rows] = s
    param[rows] += -clr * (grad / (np.sqrt(s) + eps))


def sparse_sgd_(param, indices, values, *, lr, maximize):
    """torch.optim.SGD with a sparse gradient, no momentum, no weight decay."""
    rows, grad = coalesce(indices, values)
    if maximize:
        grad = -grad
    if rows.size:
        param[rows] += -lr * grad


def rowwise_adagrad_(param, indices, values, state, *, lr, eps, weight_decay, maximize):
    """Row-wise Adagrad (FBGEMM's EXACT_ROWWISE_ADAGRAD): ``state`` holds one value per
    row, the running sum of the row's mean squared gradient."""
    rows, grad = coalesce(indices, values)
    if maximize:
        grad = -grad
    if rows.size == 0 or param.shape[1] == 0:
        return
    if weight_decay != 0:
        grad = grad + weight_decay * param[rows]
    s = state[rows] + (grad * grad).sum(axis=1) / param.shape[1]
    state[rows] = s
    param[rows] -= (lr / (np.sqrt(s) + eps))[:, None] * grad


def lazy_adam_(param, indices, values, exp_avg, exp_avg_sq, max_exp_avg_sq, **hp):
    """Adam (:func:`adam_`, every option) on the looked-up rows only ("lazy" Adam)."""
    rows, grad = coalesce(indices, values)
    if rows.size == 0:
        return
    p, m, v = param[rows], exp_avg[rows], exp_avg_sq[rows]
    vmax = None if max_exp_avg_sq is None else max_exp_avg_sq[rows]
    adam_(p, grad, m, v, vmax, **hp)
    param[rows], exp_avg[rows], exp_avg_sq[rows] = p, m, v
    if vmax is not None:
        max_exp_avg_sq[rows] = vmax
