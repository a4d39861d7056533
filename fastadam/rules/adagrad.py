"""Adagrad, per element (torch.optim's for-loop math).

::

    g = gsign * g + l2 * p
    s = s + g * g                             # one FMA (torch's addcmul_)
    p = p + neg_clr * g / (sqrt(s) + eps)     # neg_clr = -lr / (1 + (t - 1) * lr_decay)
"""

import math

from .fma import fma


def adagrad(p, g, s, gsign, l2, neg_clr, eps):
    g = gsign * g
    if l2:  # as torch: no L2 term at all when weight_decay == 0
        g = fma(l2, p, g)   # torch: grad.add(param, alpha=weight_decay), one FMA
    s = fma(g, g, s)                      # torch: addcmul_(g, g, value=1), one FMA
    p = p + neg_clr * g / (math.sqrt(s) + eps)
    return p, s
