"""Adadelta, per element (torch.optim's for-loop math).

::

    g     = gsign * g + l2 * p
    sq    = rho * sq + omr * g * g                      # omr = 1 - rho
    delta = sqrt(acc + eps) / sqrt(sq + eps) * g
    acc   = rho * acc + omr * delta * delta         # both: one FMA (torch's addcmul_)
    p     = p + neg_lr * delta
"""

import math

from .fma import fma


def adadelta(p, g, sq, acc, gsign, l2, rho, omr, neg_lr, eps):
    g = gsign * g
    if l2:  # as torch: no L2 term at all when weight_decay == 0
        g = fma(l2, p, g)   # torch: grad.add(param, alpha=weight_decay), one FMA
    sq = fma(omr * g, g, rho * sq)        # torch: mul_(rho).addcmul_(g, g, omr)
    delta = math.sqrt(acc + eps) / math.sqrt(sq + eps) * g
    acc = fma(omr * delta, delta, rho * acc)
    p = fma(neg_lr, delta, p)             # torch: param.add_(delta, alpha=-lr)
    return p, sq, acc
