"""RMSprop, per element (torch.optim's for-loop math), in its four variants.

::

    g   = gsign * g + l2 * p
    sq  = alpha * sq + oma * g * g                  # oma = 1 - alpha; one FMA (addcmul_)
    ga  = lerp(ga, g, oma)                          # centered only (lw: below)
    avg = sqrt(fma(-ga, ga, sq)) + eps              # centered: sq - ga*ga, one FMA
    avg = sqrt(sq) + eps                            # otherwise
    buf = momentum * buf + g / avg                  # momentum > 0 only
    p   = p + neg_lr * buf                          # momentum > 0
    p   = p + neg_lr * g / avg                      # otherwise

The centered variants take one more scalar, last, ``lw``: the weight of torch's
``lerp`` (see :mod:`fastadam.rules.adam`), ``lw = oma`` when ``|oma| < 0.5``
(``ga + oma * (g - ga)`` as one FMA), else ``lw = oma - 1`` (``g - (g - ga) * (1 -
oma)``, one FMA); ``lw == oma`` tells the rule which.  ``sq - ga*ga`` is torch's
``addcmul(ga, ga, value=-1)``, one FMA as well: a finite ``ga`` whose square
overflows leaves ``sq`` (``inf``) rather than ``inf - inf``.
"""

import math

from .fma import fma


def rmsprop(p, g, sq, gsign, l2, alpha, oma, neg_lr, eps):
    g = gsign * g
    if l2:  # as torch: no L2 term at all when weight_decay == 0
        g = fma(l2, p, g)   # torch: grad.add(param, alpha=weight_decay), one FMA
    sq = fma(oma * g, g, alpha * sq)
    p = p + neg_lr * g / (math.sqrt(sq) + eps)
    return p, sq


def rmsprop_momentum(p, g, sq, buf, gsign, l2, alpha, oma, neg_lr, eps, momentum):
    g = gsign * g
    if l2:  # as torch: no L2 term at all when weight_decay == 0
        g = fma(l2, p, g)   # torch: grad.add(param, alpha=weight_decay), one FMA
    sq = fma(oma * g, g, alpha * sq)
    buf = momentum * buf + g / (math.sqrt(sq) + eps)
    p = fma(neg_lr, buf, p)           # torch: param.add_(buf, alpha=-lr)
    return p, sq, buf


def rmsprop_centered(p, g, sq, ga, gsign, l2, alpha, oma, neg_lr, eps, lw):
    g = gsign * g
    if l2:  # as torch: no L2 term at all when weight_decay == 0
        g = fma(l2, p, g)   # torch: grad.add(param, alpha=weight_decay), one FMA
    sq = fma(oma * g, g, alpha * sq)
    ga = fma(lw, g - ga, ga if lw == oma else g)
    p = p + neg_lr * g / (math.sqrt(fma(-ga, ga, sq)) + eps)
    return p, sq, ga


def rmsprop_centered_momentum(p, g, sq, ga, buf, gsign, l2, alpha, oma, neg_lr, eps,
                              momentum, lw):
    g = gsign * g
    if l2:  # as torch: no L2 term at all when weight_decay == 0
        g = fma(l2, p, g)   # torch: grad.add(param, alpha=weight_decay), one FMA
    sq = fma(oma * g, g, alpha * sq)
    ga = fma(lw, g - ga, ga if lw == oma else g)
    buf = momentum * buf + g / (math.sqrt(fma(-ga, ga, sq)) + eps)
    p = fma(neg_lr, buf, p)           # torch: param.add_(buf, alpha=-lr)
    return p, sq, ga, buf
