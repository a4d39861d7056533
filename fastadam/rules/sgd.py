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

from .fma import fma


def sgd(p, g, gsign, l2, neg_lr):
    g = gsign * g
    if l2:  # as torch: no L2 term at all when weight_decay == 0
        g = fma(l2, p, g)   # torch: grad.add(param, alpha=weight_decay), one FMA
    return fma(neg_lr, g, p)          # torch: param.add_(grad, alpha=-lr)


def sgd_momentum(p, g, buf, gsign, l2, neg_lr, momentum, omd, first, nesterov):
    g = gsign * g
    if l2:  # as torch: no L2 term at all when weight_decay == 0
        g = fma(l2, p, g)   # torch: grad.add(param, alpha=weight_decay), one FMA
    if first:
        buf = g
    else:
        buf = fma(omd, g, momentum * buf)     # mul_(momentum).add_(g, alpha=omd)
    if nesterov:
        d = fma(momentum, buf, g)             # grad.add(buf, alpha=momentum)
    else:
        d = buf
    p = fma(neg_lr, d, p)
    return p, buf
