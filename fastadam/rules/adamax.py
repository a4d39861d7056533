"""Adamax, per element (torch.optim's for-loop math).

::

    g = gsign * g + l2 * p
    m = lerp(m, g, 1 - beta1)                 # as in rules/adam.py (omb1's sign)
    u = max(beta2 * u, |g| + eps)             # NaN propagates, as torch.maximum
    p = p + neg_clr * m / u                   # neg_clr = -lr / (1 - beta1**t)
"""

from .fma import fma


def adamax(p, g, m, u, gsign, l2, omb1, beta2, eps, neg_clr):
    g = gsign * g
    if l2:  # as torch: no L2 term at all when weight_decay == 0
        g = fma(l2, p, g)   # torch: grad.add(param, alpha=weight_decay), one FMA
    m = fma(omb1, g - m, m if omb1 > -omb1 else g)
    a = beta2 * u
    b = abs(g) + eps
    u = a if (a >= b or a != a) else b
    p = p + neg_clr * m / u
    return p, m, u
