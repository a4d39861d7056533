"""Keras 3's per-element math, where it differs from torch.optim's (``fastadam.keras``).

Keras Adam/AdamW and Nadam need no rule of their own: they are the torch rules of
:mod:`fastadam.rules.adam` and :mod:`fastadam.rules.nadam` with different
per-step scalars (see :mod:`fastadam.keras`).  The rules here are those whose
per-element math differs: ``epsilon`` inside the square root (RMSprop, Adagrad),
the learning rate inside the momentum buffer (SGD, RMSprop), ``epsilon`` added
after Adamax's maximum, and, for all of them, Keras' decoupled weight decay fused
into the same pass.

Every rule starts with the same two scalars:

* ``gscale``: the gradient multiplier (``clipnorm`` / ``global_clipnorm`` scale
  and ``1 / loss_scale_factor``; 1 when neither is used);
* ``decay``: Keras' decoupled weight decay ``1 - weight_decay * lr``, applied to
  the parameter *before* the update (1 when ``weight_decay`` is None).

The same conventions as the other rule modules hold: arguments are already of
the buffer's dtype, no numeric literal appears, ``math.sqrt`` is the only
library call, and a maximum propagates NaN as ``torch.maximum`` does.

::

    rmsprop:    v = rho*v + (1-rho)*g*g
                ga = rho*ga + (1-rho)*g                    (centered)
                inc = lr*g / sqrt(v - ga*ga + eps)         (centered; else sqrt(v + eps))
                mom = momentum*mom + inc; p = p - mom       (momentum > 0)
                p = p - inc                                (otherwise)
    adagrad:    acc = acc + g*g;  p = p - lr*g / sqrt(acc + eps)
    sgd:        p = p - lr*g
    sgd_momentum:
                m = momentum*m - lr*g
                p = p + m                                  (plain)
                p = p + (momentum*m - lr*g)                (nesterov)
    adadelta:   ag = rho*ag + (1-rho)*g*g
                delta = -sqrt(ad + eps) * g / sqrt(ag + eps)
                ad = rho*ad + (1-rho)*delta*delta
                p = p + lr*delta
    adamax:     m = m + (1-beta_1)*(g - m)
                u = max(beta_2*u, |g|)
                p = p + neg_clr * m / (u + eps)            (neg_clr = -lr / (1 - beta_1**t))
"""

import math


def rmsprop(p, g, vel, gscale, decay, rho, omr, lr, eps):
    g = gscale * g
    p = p * decay
    vel = rho * vel + omr * (g * g)
    p = p - lr * g / math.sqrt(vel + eps)
    return p, vel


def rmsprop_momentum(p, g, vel, mom, gscale, decay, rho, omr, lr, eps, momentum):
    g = gscale * g
    p = p * decay
    vel = rho * vel + omr * (g * g)
    mom = momentum * mom + lr * g / math.sqrt(vel + eps)
    p = p - mom
    return p, vel, mom


def rmsprop_centered(p, g, vel, ga, gscale, decay, rho, omr, lr, eps):
    g = gscale * g
    p = p * decay
    vel = rho * vel + omr * (g * g)
    ga = rho * ga + omr * g
    p = p - lr * g / math.sqrt(vel - ga * ga + eps)
    return p, vel, ga


def rmsprop_centered_momentum(p, g, vel, ga, mom, gscale, decay, rho, omr, lr, eps,
                              momentum):
    g = gscale * g
    p = p * decay
    vel = rho * vel + omr * (g * g)
    ga = rho * ga + omr * g
    mom = momentum * mom + lr * g / math.sqrt(vel - ga * ga + eps)
    p = p - mom
    return p, vel, ga, mom


def adagrad(p, g, acc, gscale, decay, lr, eps):
    g = gscale * g
    p = p * decay
    acc = acc + g * g
    p = p - lr * g / math.sqrt(acc + eps)
    return p, acc


def sgd(p, g, gscale, decay, lr):
    g = gscale * g
    p = p * decay
    return p - lr * g


def sgd_momentum(p, g, m, gscale, decay, lr, momentum, nesterov):
    g = gscale * g
    p = p * decay
    m = momentum * m - lr * g
    if nesterov:
        p = p + (momentum * m - lr * g)
    else:
        p = p + m
    return p, m


def adadelta(p, g, ag, ad, gscale, decay, rho, omr, lr, eps):
    g = gscale * g
    p = p * decay
    ag = rho * ag + omr * (g * g)
    delta = -(math.sqrt(ad + eps) * g / math.sqrt(ag + eps))
    ad = rho * ad + omr * (delta * delta)
    p = p + lr * delta
    return p, ag, ad


def adamax(p, g, m, u, gscale, decay, omb1, beta2, eps, neg_clr):
    g = gscale * g
    p = p * decay
    m = m + omb1 * (g - m)
    a = beta2 * u
    b = abs(g)
    u = a if (a >= b or a != a) else b
    p = p + neg_clr * m / (u + eps)
    return p, m, u
