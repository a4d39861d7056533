"""Adamax, per element (torch.optim's for-loop math).

::

    g = gsign * g + l2 * p
    m = m + omb1 * (g - m)
    u = max(beta2 * u, |g| + eps)             # NaN propagates, as torch.maximum
    p = p + neg_clr * m / u                   # neg_clr = -lr / (1 - beta1**t)
"""


def adamax(p, g, m, u, gsign, l2, omb1, beta2, eps, neg_clr):
    g = gsign * g
    if l2:  # as torch: no L2 term at all when weight_decay == 0
        g = g + l2 * p
    m = m + omb1 * (g - m)
    a = beta2 * u
    b = abs(g) + eps
    u = a if (a >= b or a != a) else b
    p = p + neg_clr * m / u
    return p, m, u
