"""NAdam, per element (torch.optim's for-loop math).

The momentum schedule ``mu_t = beta1 * (1 - 0.5 * 0.96 ** (t * momentum_decay))``
and the running product ``mu_product`` are scalars handled once per step; per
element::

    g     = gsign * g + l2 * p
    p     = p * decay                               # decoupled weight decay
    m     = lerp(m, g, 1 - beta1)                   # as in rules/adam.py (omb1's sign)
    v     = beta2 * v + omb2 * g * g                # one FMA, as torch's addcmul_
    denom = sqrt(v * inv_bc2) + eps                 # inv_bc2 = 1 / (1 - beta2**t)
    p     = p + cg * g / denom + cm * m / denom

with ``cg = -lr * (1 - mu_t) / (1 - mu_product_t)`` and
``cm = -lr * mu_{t+1} / (1 - mu_product_t * mu_{t+1})``.
"""

import math

from .fma import fma


def nadam(p, g, m, v, gsign, l2, decay, omb1, beta2, omb2, inv_bc2, eps, cg, cm):
    g = gsign * g
    if l2:  # as torch: no L2 term at all when weight_decay == 0
        g = fma(l2, p, g)   # torch: grad.add(param, alpha=weight_decay), one FMA
    p = p * decay
    m = fma(omb1, g - m, m if omb1 > -omb1 else g)
    v = fma(omb2 * g, g, beta2 * v)      # torch: mul_(beta2).addcmul_(g, g, omb2)
    denom = math.sqrt(v * inv_bc2) + eps
    p = p + cg * g / denom
    p = p + cm * m / denom
    return p, m, v
