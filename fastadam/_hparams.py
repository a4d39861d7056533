"""Hyperparameter validation per optimizer, shared by the functional API and the façades.

Each function returns a dict of clean Python values (floats, ints, bools) ready
for :mod:`fastadam._scalars` / :mod:`fastadam.reference`, or raises a
``TypeError``/``ValueError`` naming the argument (torch.optim's wording).
"""

from __future__ import annotations

from . import _validate as v


def _common(lr, eps, weight_decay, maximize) -> dict:
    """The hyperparameters every optimizer has."""
    return dict(lr=v.nonneg("lr", lr, "learning rate"),
                eps=v.nonneg("eps", eps, "epsilon value"),
                weight_decay=v.nonneg("weight_decay", weight_decay, "weight_decay value"),
                maximize=v.flag("maximize", maximize))


def _betas(beta1, beta2) -> dict:
    return dict(beta1=v.unit("beta1", beta1, "beta parameter at index 0"),
                beta2=v.unit("beta2", beta2, "beta parameter at index 1"))


def adam(*, step, lr, beta1, beta2, eps, weight_decay, decoupled_weight_decay, amsgrad,
         maximize):
    return dict(step=v.step(step), **_common(lr, eps, weight_decay, maximize),
                **_betas(beta1, beta2),
                decoupled_weight_decay=v.flag("decoupled_weight_decay", decoupled_weight_decay),
                amsgrad=v.flag("amsgrad", amsgrad))


def rmsprop(*, lr, alpha, eps, weight_decay, momentum, centered, maximize):
    return dict(**_common(lr, eps, weight_decay, maximize),
                alpha=v.unit("alpha", alpha, "alpha value"),
                momentum=v.nonneg("momentum", momentum, "momentum value"),
                centered=v.flag("centered", centered))


def adagrad(*, step, lr, lr_decay, eps, weight_decay, maximize):
    return dict(step=v.step(step), **_common(lr, eps, weight_decay, maximize),
                lr_decay=v.nonneg("lr_decay", lr_decay, "lr_decay value"))


def sgd(*, lr, momentum, dampening, weight_decay, nesterov, maximize):
    hp = dict(
        lr=v.nonneg("lr", lr, "learning rate"),
        momentum=v.nonneg("momentum", momentum, "momentum value"),
        dampening=v.real("dampening", dampening),
        weight_decay=v.nonneg("weight_decay", weight_decay, "weight_decay value"),
        nesterov=v.flag("nesterov", nesterov), maximize=v.flag("maximize", maximize))
    if hp["nesterov"] and (hp["momentum"] <= 0 or hp["dampening"] != 0):
        raise ValueError("Nesterov momentum requires a momentum and zero dampening")
    return hp


def adadelta(*, lr, rho, eps, weight_decay, maximize):
    return dict(**_common(lr, eps, weight_decay, maximize),
                rho=v.closed_unit("rho", rho, "rho value"))


def nadam(*, step, lr, beta1, beta2, eps, weight_decay, momentum_decay,
          decoupled_weight_decay, maximize):
    return dict(step=v.step(step), **_common(lr, eps, weight_decay, maximize),
                **_betas(beta1, beta2),
                momentum_decay=v.nonneg("momentum_decay", momentum_decay,
                                        "momentum_decay value"),
                decoupled_weight_decay=v.flag("decoupled_weight_decay", decoupled_weight_decay))


def adamax(*, step, lr, beta1, beta2, eps, weight_decay, maximize):
    return dict(step=v.step(step), **_common(lr, eps, weight_decay, maximize),
                **_betas(beta1, beta2))


def sparse_adam(*, step, lr, beta1, beta2, eps, maximize):
    """torch.optim.SparseAdam's checks: the learning rate and epsilon must be > 0."""
    return dict(step=v.step(step), lr=v.positive("lr", lr, "learning rate"),
                eps=v.positive("eps", eps, "epsilon value"), **_betas(beta1, beta2),
                maximize=v.flag("maximize", maximize))


def sparse_adagrad(*, step, lr, lr_decay, eps, maximize):
    return dict(step=v.step(step), lr=v.nonneg("lr", lr, "learning rate"),
                eps=v.nonneg("eps", eps, "epsilon value"),
                lr_decay=v.nonneg("lr_decay", lr_decay, "lr_decay value"),
                maximize=v.flag("maximize", maximize))


def sparse_sgd(*, lr, maximize):
    return dict(lr=v.nonneg("lr", lr, "learning rate"), maximize=v.flag("maximize", maximize))


def rowwise_adagrad(*, lr, eps, weight_decay, maximize):
    return _common(lr, eps, weight_decay, maximize)
