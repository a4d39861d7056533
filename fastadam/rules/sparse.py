"""Row-sparse (embedding) updates, per element of a touched row.

A row-sparse step receives the rows ``r`` of a table that a batch looked up and
one gradient row per lookup.  The kernels (:mod:`fastadam.kernels.cpu_sparse`)
first sum the gradient rows of each distinct row (duplicates summed in the
order of the lookups), then apply one of these rules to every element of that
row of the table and of its state; rows that were not looked up are not read
or written.  ``g`` below is the summed gradient of the element.

torch.optim.SparseAdam (``sparse_adam``)::

    g  = gsign * g
    m  = m + (g - m) * omb1               # omb1 = 1 - beta1
    v  = v + (g * g - v) * omb2           # omb2 = 1 - beta2
    p  = p + neg_step * (m / (sqrt(v) + eps))
                                          # neg_step = -lr * sqrt(1 - beta2**t) / (1 - beta1**t)

Unlike Adam, SparseAdam adds ``eps`` to ``sqrt(v)`` *before* the bias correction of
``v`` (which is folded into the step size); torch computes the moments in that
order (``(g - m) * (1 - beta1)`` added to ``m``), and so do these rules.

torch.optim.Adagrad's sparse path (``sparse_adagrad``)::

    g = gsign * g
    s = s + g * g
    p = p + neg_clr * (g / (sqrt(s) + eps))   # neg_clr = -lr / (1 + (t - 1) * lr_decay)

SGD without momentum (``sparse_sgd``)::

    p = p + neg_lr * (gsign * g)

Row-wise Adagrad (FBGEMM's EXACT_ROWWISE_ADAGRAD: one state value per row), in
three parts: the row's mean squared gradient is accumulated into its state, the
state gives one multiplier for the row, and every element moves by it::

    g     = gsign * g + l2 * p                # per element (l2: L2 weight decay)
    s     = s + sum_j(g_j * g_j) / dim        # rowwise_adagrad_state, once per row
    scale = neg_lr / (sqrt(s) + eps)          # rowwise_adagrad_scale, once per row
    p     = p + scale * g                     # rowwise_adagrad, per element

Lazy Adam (``fastadam.torch.Adam(sparse_grads="lazy")``) needs no rule here: it is
:func:`fastadam.rules.adam.adam` applied to the touched rows.
"""

import math


def sparse_adam(p, g, m, v, gsign, omb1, omb2, neg_step, eps):
    g = gsign * g
    m = m + (g - m) * omb1
    v = v + (g * g - v) * omb2
    p = p + neg_step * (m / (math.sqrt(v) + eps))
    return p, m, v


def sparse_adagrad(p, g, s, gsign, neg_clr, eps):
    g = gsign * g
    s = s + g * g
    p = p + neg_clr * (g / (math.sqrt(s) + eps))
    return p, s


def sparse_sgd(p, g, gsign, neg_lr):
    return p + neg_lr * (gsign * g)


def rowwise_grad(p, g, gsign, l2):
    """The gradient element a row-wise Adagrad step uses (sign, L2 decay)."""
    g = gsign * g
    if l2:  # as torch: no L2 term at all when weight_decay == 0
        g = g + l2 * p
    return g


def rowwise_adagrad_state(s, sumsq, dim):
    """A row's state after the step: ``sumsq`` is the sum of the row's squared
    gradient elements, ``dim`` the row length (as a float of the state's dtype)."""
    return s + sumsq / dim


def rowwise_adagrad_scale(s, neg_lr, eps):
    """The multiplier of a row's gradient, from its updated state."""
    return neg_lr / (math.sqrt(s) + eps)


def rowwise_adagrad(p, g, scale):
    return p + scale * g
