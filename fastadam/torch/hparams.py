"""Hyperparameters of a step: read from ``param_groups``, validated, cached.

:class:`_HparamsMixin` is the part of :class:`~fastadam.torch.base.FlatOptimizer`
that turns a param group into what the kernels take: the record of a group
(validated hyperparameters, kernel name, state names; cached on a frozen
snapshot of the group's values), the step-dependent values of one kernel call
and its kernel scalars, NAdam's ``mu_product``, and the hooks a subclass
overrides (``_group_hparams``, ``_fill``, ``_advances``, ``_check_mu``).
:func:`_num` and :func:`_betas` read one hyperparameter of a group.
"""

from __future__ import annotations

import operator

import numpy as np
import torch

from .. import _scalars


class _Stale(Exception):
    """Raised while planning a step whose group's ``"params"`` list was replaced."""


def _frozen(v):
    """A hashable, comparable snapshot of a hyperparameter value and its type."""
    if type(v) is list or type(v) is tuple:
        return (type(v), tuple(map(_frozen, v)))
    return (type(v), v)


_is = operator.is_
#: Types whose objects never change: the same object is the same value of the same type.
_IMMUTABLE = frozenset((float, int, bool, str, type(None), complex))


def _immutable(v) -> bool:
    """Whether ``v`` (a hyperparameter value) can never change in place."""
    t = type(v)
    return t in _IMMUTABLE or (t is tuple and all(type(x) in _IMMUTABLE for x in v))


def _num(name, value):
    """A hyperparameter as a Python number (a 1-element tensor is read out)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"Tensor {name} must be 1-element")
        return value.item()
    return value


def _betas(group):
    b = group["betas"]
    if isinstance(b, (str, bytes)) or not hasattr(b, "__len__") or len(b) != 2:
        raise TypeError(f"betas must be a pair (beta1, beta2), got {b!r}")
    return _num("betas[0]", b[0]), _num("betas[1]", b[1])


class _HparamsMixin:
    """The hyperparameters of a :class:`~fastadam.torch.base.FlatOptimizer`'s groups."""

    def _check_flags(self, group):
        for k in self._flag_keys:
            if group.get(k, False):
                raise NotImplementedError(
                    f"fastadam.torch.{type(self).__name__} does not support {k}=True")

    def _group_hparams(self, group) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def _fill(self, name) -> float:
        return 0.0

    def _hp_record(self, gi, group):
        """(validated hyperparameters, kernel name, state names) of a group, cached.

        The cache is keyed on a frozen snapshot of the group's values -- each with its
        type, lists and tuples copied item by item -- so an in-place edit
        (``group["betas"][0] = ...``) or a change of type (``amsgrad=1`` for ``True``)
        is validated again, never silently ignored.  While the group holds the very
        objects of the snapshot and none of them can change in place (numbers,
        strings, None, tuples of those: :func:`_immutable`), that is the whole check.
        """
        vals = self._group_key(group)
        rec = self._hp_cache.get(gi)
        if rec is not None and rec[2] is group["params"]:
            # the very objects of the snapshot, none of them mutable: unchanged
            if rec[3] is not None and all(map(_is, vals, rec[3])):
                return rec[1]
            key = tuple(map(_frozen, vals))
            if rec[0] == key:
                return rec[1]
        else:
            key = tuple(map(_frozen, vals))
        if group["params"] is not self._plists[gi]:
            raise _Stale            # the list was replaced: flatten the group again first
        self._check_flags(group)
        hp = self._group_hparams(group)
        if self._sparse == "require":            # row-sparse steps only: SparseAdam, ...
            kname = self._opt
        else:
            kname = self._scalar(np.dtype(np.float64), **self._full(hp, 1, 0.5))[0]
        out = (hp, kname, _scalars.kernel_states(kname), self._advances(hp))
        if not any(isinstance(x, torch.Tensor) for x in vals):
            self._hp_cache[gi] = (key, out, group["params"],
                                  vals if all(map(_immutable, vals)) else None)
        return out

    def _full(self, hp, step, mu):
        """The hyperparameters of one kernel call (step-dependent values added)."""
        if self._needs_mu:
            return dict(hp, step=step, mu_product=mu)
        if self._needs_step:
            return dict(hp, step=step)
        if self._needs_first:
            return dict(hp, first=step == 1)
        return hp

    def _advances(self, hp) -> bool:
        return True

    def _check_mu(self, hp, step, mu):
        pass

    def _scalars_of(self, b, hp, t, mu, memo):
        """(full hyperparameters, kernel name, scalars) of a call at step ``t``, memoized."""
        key = (t, mu)
        r = memo.get(key)
        if r is None:
            if self._needs_mu:               # (_full, inline: this runs every step)
                fhp = dict(hp, step=t, mu_product=float(mu))
            elif self._needs_step:
                fhp = dict(hp, step=t)
            else:
                fhp = self._full(hp, t, mu)
            if b.entry is not None:      # the entry point rounds Python floats itself
                k, scal = self._scalar(_scalars.python_floats(b.np_dtype), **fhp)
            elif b.run is not None:
                k, scal = self._scalar(b.np_dtype, **fhp)
            else:
                k = scal = None
            r = memo[key] = (fhp, k, scal)
        return r

    def _next_mu(self, hp, t, mu):
        return float(mu) * _scalars.nadam_mu(hp["beta1"], hp["momentum_decay"], t)
