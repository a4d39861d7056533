"""The small base class of the NumPy façade optimizers.

:class:`Optimizer` holds the constructor, the subclass hooks and :meth:`Optimizer.step`;
its mixins hold the rest: param groups and their flat buffers
(:mod:`fastadam.optim._groups`), step plans and bound kernels
(:mod:`fastadam.optim._plan`) and checkpoints (:mod:`fastadam.optim._checkpoint`).
"""

from __future__ import annotations

import numpy as np

from .. import _alloc, _backends
from .. import lowp as _lowp
from ._checkpoint import CheckpointMixin
from ._groups import GroupsMixin
from ._plan import StepPlanMixin


class Optimizer(GroupsMixin, StepPlanMixin, CheckpointMixin):
    """Base of the façade optimizers: param groups, flat buffers, state, checkpoints.

    Subclasses set ``_opt`` (the name of the step in :mod:`fastadam._scalars` and
    :mod:`fastadam.reference`), ``_defaults`` (torch.optim's names and defaults)
    and implement ``_hparams(group, st, step)`` (validated hyperparameters of one
    step of one buffer) and ``_state_spec(group)`` (the state arrays a group
    needs, with their initial fill values).

    Parameters
    ----------
    params : dict, list, FlatParams, or list of group dicts
        ``{name: ndarray}``, ``[ndarray, ...]``, a :class:`fastadam.FlatParams`,
        or ``[{"params": <one of those>, "lr": ...}, ...]`` for param groups
        with their own hyperparameters.  Arrays are copied once into one
        contiguous buffer per (group, dtype); a dict or list passed in has its
        entries replaced by views of the buffer (a tuple, which cannot take
        them, is a TypeError).  Use those views (or :attr:`params`) from then
        on: the arrays passed in are never updated.  An array whose own memory
        a user would expect to change (read-only, strided such as ``W.T``, a
        slice of a larger array, another object's memory such as
        ``tensor.numpy()``) gets a UserWarning naming it
        (:class:`fastadam.FlatParams`).
    backend : str
        ``"auto"``, ``"numba"``, ``"cython"`` or ``"numpy"``.

    Attributes
    ----------
    param_groups : list of dict
        Hyperparameters of each group (change them between steps, e.g. a
        schedule writing ``opt.param_groups[0]["lr"]``), and under ``"params"``
        the keys of the group's parameters.
    params, grads : dict or list
        Views of the parameters and gradients, with the caller's keys (for
        group input, a list with one such container per group).  Gradients
        are given by writing into ``opt.grads[k][...]``.
    flat : list of FlatParams
        One per group.
    state : list of dict
        Per group, ``{dtype name: {"step": int, <state name>: flat ndarray}}``.
    """

    _opt = ""
    _defaults: dict = {}
    #: Fused gradient clipping for every step (see :meth:`step`); None = off.
    max_grad_norm = None
    clip_value = None
    #: Steps skipped for non-finite gradients (:meth:`step`), and the last total
    #: gradient norm computed for ``max_grad_norm`` (None when not computed).
    skipped_steps = 0
    last_grad_norm = None

    def __init__(self, params, defaults: dict, backend: str = "auto"):
        self.defaults = dict(defaults)
        groups = self._normalize(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        self.param_groups = []
        self.flat = []
        self.state = []
        self._group_input = isinstance(params, (list, tuple)) and params and \
            isinstance(params[0], dict)
        for g in groups:
            self._add_group(g)
        if isinstance(backend, str) and backend == "cuda":
            raise _backends.BackendUnavailableError(
                "the NumPy façade works on host arrays; use fastadam.functional or "
                "fastadam.torch for device arrays")
        self._backend = _backends.resolve(backend, self.flat[0].buffers[0].data
                                          if self.flat[0].buffers else np.empty(0))
        self.backend = self._backend.name
        # validate every group's hyperparameters now, as torch does in the constructor
        for g in self.param_groups:
            self._hparams(g, {}, 1)

    # -- to be provided by subclasses ------------------------------------------------
    def _hparams(self, group: dict, st: dict, step: int) -> dict:  # pragma: no cover
        raise NotImplementedError

    def _state_spec(self, group: dict) -> dict:  # pragma: no cover
        raise NotImplementedError

    def _buffer_backend(self, fb):
        """The backend that steps buffer ``fb`` (default: the optimizer's backend)."""
        return self._backend

    def _buffer_spec(self, group: dict, fb) -> dict:
        """The state arrays of buffer ``fb`` of ``group`` (default: the group's spec)."""
        return self._state_spec(group)

    def _new_state(self, name: str, fill, fb):
        """A new state array ``name`` for buffer ``fb`` (lowp Adam stores other dtypes)."""
        return _alloc.full(fb.size, fill, fb.dtype)

    def _state_layout(self, name: str, fb):
        """``(shape, dtype)`` a checkpoint's state array ``name`` of buffer ``fb`` must have."""
        return (fb.size,), fb.dtype

    def _after_step(self, group, st, hp) -> None:
        """Scalar state updates after a successful step (e.g. NAdam's mu_product)."""

    # -- stepping --------------------------------------------------------------------
    def zero_grad(self) -> None:
        """Fill every gradient buffer with zeros."""
        for fp in self.flat:
            fp.zero_grad()

    def step(self, closure=None, *, grad_scale=None, found_inf=None, max_grad_norm=None,
             clip_value=None):
        """Apply one fused step to every flat buffer (one kernel call each).

        Parameters
        ----------
        closure : callable, optional
            Called first (it may recompute the gradients); its result is returned.
            Gradients are not an argument of ``step``: write them into
            :attr:`grads` (``opt.grads[k][...] = g``) before the call.
        grad_scale : float, optional
            AMP loss scale: the gradients hold ``grad_scale * g``; the step
            uses ``g`` (unscaled inside the kernel; the buffers are not written).
        found_inf : bool or float, optional
            Truthy: skip this step (params, state and step counts unchanged),
            as torch's fused optimizers do with ``GradScaler``.  When None and a
            first pass runs (``grad_scale``, ``max_grad_norm`` or
            ``clip_value``), non-finite gradients are detected in it and skip
            the step.
        max_grad_norm : float, optional
            Clip the global L2 norm of all gradients (every group and buffer)
            to this, as ``torch.nn.utils.clip_grad_norm_``; overrides the
            optimizer's ``max_grad_norm`` attribute for this step.
        clip_value : float, optional
            Clip each gradient element to ``[-clip_value, clip_value]`` (before
            the norm clipping), as ``torch.nn.utils.clip_grad_value_``;
            overrides the ``clip_value`` attribute for this step.

        Every group's hyperparameters are validated before any buffer is touched.
        See docs/lowp.md for the two-pass scheme.

        Raises
        ------
        TypeError
            ``closure`` is neither None nor callable (e.g. an array of gradients,
            which belong in :attr:`grads`); nothing is called or written.
        """
        if closure is not None and not callable(closure):
            raise TypeError(
                f"step() takes an optional closure (a callable that recomputes the loss), "
                f"got {type(closure).__name__}; gradients are not passed to step(): write "
                "them into the optimizer's gradient views first, opt.grads[k][...] = g "
                "(keys and shapes as opt.params), then call opt.step()")
        loss = closure() if closure is not None else None
        if grad_scale is not None or found_inf is not None or max_grad_norm is not None or \
                clip_value is not None or self.max_grad_norm is not None or \
                self.clip_value is not None:
            _lowp.transformed_step(self, grad_scale, found_inf, max_grad_norm, clip_value)
            return loss
        for gi, group, fb, st, spec, hp, run in self._step_plan():
            if run is None:             # first step: make the state, then bind
                for name, fill in spec.items():
                    if name not in st:
                        st[name] = self._new_state(name, fill, fb)
                run = self._prepare(gi, fb, st, spec, hp)
            run[0](*run[1])
            st["step"] += 1
            self._after_step(group, st, hp)
        return loss

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} (backend={self.backend!r})"]
        for i, g in enumerate(self.param_groups):
            hp = ", ".join(f"{k}={v!r}" for k, v in g.items() if k != "params")
            lines.append(f"  group {i}: {len(g['params'])} params, {hp}")
        return "\n".join(lines)
