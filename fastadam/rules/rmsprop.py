"""RMSprop, per element (torch.optim's for-loop math), in its four variants.

::

    g   = gsign * g + l2 * p
    sq  = alpha * sq + oma * g * g                  # oma = 1 - alpha
    ga  = ga + oma * (g - ga)                       # centered only
    avg = sqrt(sq - ga * ga) + eps                  # centered
    avg = sqrt(sq) + eps                            # otherwise
    buf = momentum * buf + g / avg                  # momentum > 0 only
    p   = p + neg_lr * buf                          # momentum > 0
    p   = p + neg_lr * g / avg                      # otherwise
"""

import math


def rmsprop(p, g, sq, gsign, l2, alpha, oma, neg_lr, eps):
    g = gsign * g
    if l2:  # as torch: no L2 term at all when weight_decay == 0
        g = g + l2 * p
    sq = alpha * sq + oma * g * g
    p = p + neg_lr * g / (math.sqrt(sq) + eps)
    return p, sq


def rmsprop_momentum(p, g, sq, buf, gsign, l2, alpha, oma, neg_lr, eps, momentum):
    g = gsign * g
    if l2:  # as torch: no L2 term at all when weight_decay == 0
        g = g + l2 * p
    sq = alpha * sq + oma * g * g
    buf = momentum * buf + g / (math.sqrt(sq) + eps)
    p = p + neg_lr * buf
    return p, sq, buf


def rmsprop_centered(p, g, sq, ga, gsign, l2, alpha, oma, neg_lr, eps):
    g = gsign * g
    if l2:  # as torch: no L2 term at all when weight_decay == 0
        g = g + l2 * p
    sq = alpha * sq + oma * g * g
    ga = ga + oma * (g - ga)
    p = p + neg_lr * g / (math.sqrt(sq - ga * ga) + eps)
    return p, sq, ga


def rmsprop_centered_momentum(p, g, sq, ga, buf, gsign, l2, alpha, oma, neg_lr, eps,
                              momentum):
    g = gsign * g
    if l2:  # as torch: no L2 term at all when weight_decay == 0
        g = g + l2 * p
    sq = alpha * sq + oma * g * g
    ga = ga + oma * (g - ga)
    buf = momentum * buf + g / (math.sqrt(sq - ga * ga) + eps)
    p = p + neg_lr * buf
    return p, sq, ga, buf
