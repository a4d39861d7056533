"""SGD with optional momentum, dampening and Nesterov (torch.optim's for-loop math).

::

    g   = gsign * g + l2 * p
    buf = g                                    # first step (torch: buffer was None)
    buf = momentum * buf + omd * g             # later steps, omd = 1 - dampening
    d   = g + momentum * buf                   # nesterov
    d   = buf                                  # otherwise
    p   = p + neg_lr * d

``first`` and ``nesterov`` are loop-invariant booleans.
"""


def sgd(p, g, gsign, l2, neg_lr):
    g = gsign * g
    if l2:  # as torch: no L2 term at all when weight_decay == 0
        g = g + l2 * p
    return p + neg_lr * g


def sgd_momentum(p, g, buf, gsign, l2, neg_lr, momentum, omd, first, nesterov):
    g = gsign * g
    if l2:  # as torch: no L2 term at all when weight_decay == 0
        g = g + l2 * p
    if first:
        buf = g
    else:
        buf = momentum * buf + omd * g
    if nesterov:
        d = g + momentum * buf
    else:
        d = buf
    p = p + neg_lr * d
    return p, buf
