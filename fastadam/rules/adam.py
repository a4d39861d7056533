"""Adam, AdamW and AMSGrad, per element (torch.optim's for-loop math).

With ``s`` the per-step scalars computed by :func:`fastadam._scalars.adam`::

    g  = gsign * g + l2 * p              # maximize flips the sign; L2 decay
    p  = p * decay                       # decoupled (AdamW) decay, 1 otherwise
    m  = lerp(m, g, 1 - beta1)           # torch's two branches, each one FMA (below)
    v  = beta2 * v + omb2 * g * g        # fma(omb2 * g, g, beta2 * v): torch's addcmul_
    vh = max(vmax, v)                    # AMSGrad only, stored back in vmax
    p  = p + neg_step * m / (sqrt(vh) * inv_bc2_sqrt + eps)

where ``neg_step = -lr / (1 - beta1**t)`` and ``inv_bc2_sqrt = 1 / sqrt(1 - beta2**t)``.

``lerp`` is torch's: with ``w = 1 - beta1``, ``m + w * (g - m)`` when ``|w| < 0.5``,
else ``g - (g - m) * (1 - w)``, each a fused multiply-add (as torch's CPU kernel).
The façade picks the branch once per step and passes it in the sign of ``omb1``
(:func:`fastadam._scalars.lerp_weight`): ``omb1 = w > 0`` for the first branch,
``omb1 = w - 1 <= 0`` for the second (``beta1`` is in ``[0, 1)``, so ``w`` is in
``(0, 1]``), and the rule computes ``fma(omb1, g - m, m or g)``.
"""

import math

from .fma import fma


def adam(p, g, m, v, gsign, l2, decay, omb1, beta2, omb2, neg_step, inv_bc2_sqrt, eps):
    g = gsign * g
    if l2:  # as torch: no L2 term at all when weight_decay == 0
        g = fma(l2, p, g)   # torch: grad.add(param, alpha=weight_decay), one FMA
    p = p * decay
    m = fma(omb1, g - m, m if omb1 > -omb1 else g)
    v = fma(omb2 * g, g, beta2 * v)      # torch: mul_(beta2).addcmul_(g, g, omb2)
    p = p + neg_step * m / (math.sqrt(v) * inv_bc2_sqrt + eps)
    return p, m, v


def adam_amsgrad(p, g, m, v, vmax, gsign, l2, decay, omb1, beta2, omb2, neg_step,
                 inv_bc2_sqrt, eps):
    g = gsign * g
    if l2:  # as torch: no L2 term at all when weight_decay == 0
        g = fma(l2, p, g)   # torch: grad.add(param, alpha=weight_decay), one FMA
    p = p * decay
    m = fma(omb1, g - m, m if omb1 > -omb1 else g)
    v = fma(omb2 * g, g, beta2 * v)      # torch: mul_(beta2).addcmul_(g, g, omb2)
    vmax = vmax if (vmax >= v or vmax != vmax) else v
    p = p + neg_step * m / (math.sqrt(vmax) * inv_bc2_sqrt + eps)
    return p, m, v, vmax
