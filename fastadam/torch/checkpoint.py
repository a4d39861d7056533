"""Checkpoints: ``load_state_dict`` of torch.optim's format into the flat buffers.

``state_dict()`` is torch.optim's own (``optimizer.state[p]`` holds views of the
flat state buffers, so it saves torch.optim's format as it is).
:class:`_CheckpointMixin` is the part of :class:`~fastadam.torch.base.FlatOptimizer`
that loads one -- from fastadam.torch or torch.optim -- checking every saved group
and state tensor (count, shape, dtype against ``state_dtype``) before anything is
changed, then copying the values into the flat buffers.
"""

from __future__ import annotations

from copy import deepcopy

import torch

from .. import _scalars
from .. import _validate as _v
from .. import lowp as _lowp
from .buffers import _LOWP_TORCH, _SCALES
from .hparams import _num


class _CheckpointMixin:
    """``load_state_dict`` of a :class:`~fastadam.torch.base.FlatOptimizer`."""

    def _state_names(self) -> tuple:
        names = []
        for k, v in list(_scalars.KERNEL_STATES.items()) + list(
                _scalars.SPARSE_KERNEL_STATES.items()):
            if k == self._opt or k.startswith(self._opt + "_"):
                names.extend(s for s in v if s not in names)
        if self._state_dtype == "int8":
            names.extend(_SCALES)
        return tuple(names)

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a checkpoint of torch.optim's format (from fastadam.torch or torch.optim).

        Values are copied into the flat buffers (cast to each parameter's dtype
        and device).  The hyperparameters of the saved param groups replace the
        current ones, except ``foreach``, ``fused``, ``capturable`` and
        ``differentiable``, which keep this optimizer's values.  Parameters
        without saved state start afresh.  Everything is checked before anything
        is changed.

        Raises
        ------
        TypeError, ValueError
            On a checkpoint that does not fit this optimizer.
        """
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        sd = state_dict.copy()
        self._sync_groups()         # a pending edit of a group's "params" list (.tracked)
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            r = hook(self, sd)
            if r is not None:
                sd = r
        if "param_groups" not in sd or "state" not in sd:
            raise ValueError("state_dict must have 'state' and 'param_groups' entries")
        groups = self.param_groups
        saved_groups = deepcopy(sd["param_groups"])
        if len(groups) != len(saved_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        if any(len(g["params"]) != len(s["params"]) for g, s in zip(groups, saved_groups)):
            raise ValueError("loaded state dict contains a parameter group that doesn't match "
                             "the size of optimizer's group")
        id_map = {}
        for g, s in zip(groups, saved_groups):
            id_map.update(zip(s["params"], g["params"]))
        new_groups = []
        for g, s in zip(groups, saved_groups):
            new = dict(s)
            new["params"] = g["params"]
            if "param_names" in g and "param_names" not in s:
                new["param_names"] = g["param_names"]
            for k, v in self.defaults.items():
                new.setdefault(k, v)
            for k in ("foreach", "fused", "capturable", "differentiable"):
                if k in g:
                    new[k] = g[k]
            self._fix_loaded_group(new)
            self._group_hparams(new)
            new_groups.append(new)
        entries = []
        for k, v in sd["state"].items():
            p = id_map.get(k)
            if p is None:
                continue
            entries.append(self._parse_state(k, p, v))
        # -- commit
        state = self.state
        for b in self._buckets:
            for p in b.params:
                dict.pop(state, p, None)
            b.steps[:] = 0
            if b.mu is not None:
                b.mu[:] = 1.0
            for name, t in b.state.items():
                if name == "master_param":      # unless loaded: the parameters' values
                    t.copy_(b.data)
                else:
                    t.fill_(self._fill(name))
            b.started = [False] * len(b.params)
            b.all_started = False
        for gi, new in enumerate(new_groups):
            groups[gi] = new
        self._hp_cache.clear()
        self._commit_states(entries)
        for b in self._buckets:
            self._refresh_uniform(b)
            b.all_started = all(b.started)
        self._flag.dirty = False
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)

    def _parse_state(self, k, p, v, strict=True):
        """Check the saved state ``v`` of parameter ``p`` (``k``: its name in messages).

        Returns ``(bucket, index, v, step, mu_product, tensors)`` for
        :meth:`_commit_states`; changes nothing.  ``strict``: an unknown key raises
        (``load_state_dict``), else it is left alone (an edit of ``optimizer.state``).
        """
        known = self._state_names()
        if not isinstance(v, dict):
            raise TypeError(f"state of parameter {k!r} must be a dict, got "
                            f"{type(v).__name__}")
        b, i = self._where[p]
        step, mu, tensors = None, None, {}
        for key, val in v.items():
            if val is None:         # e.g. SGD's momentum_buffer=None (momentum 0)
                continue
            if key == "step" and self._has_step:
                step = _v.real(f"step of parameter {k!r}", _num("step", val))
                if step < 0 or not step.is_integer():
                    raise ValueError(f"Invalid step of parameter {k!r}: {val} (must be "
                                     "a count >= 0)")
            elif key == "mu_product" and self._needs_mu:
                mu = _v.real("mu_product", _num("mu_product", val))
            elif key in known or (key == "master_param" and b.fmt):
                if not isinstance(val, torch.Tensor):
                    raise TypeError(f"state {key!r} of parameter {k!r} must be a Tensor, "
                                    f"got {type(val).__name__}")
                if val.layout != torch.strided:   # torch SGD's sparse momentum buffer
                    val = val.to_dense()
                self._check_state_dtype(k, key, val, b.fmt)
                want = _lowp.nblocks(p.numel()) if key in _SCALES else p.numel()
                if key in self._row_states:
                    want = p.shape[0] if p.dim() else 1
                if val.numel() != want or val.is_complex():
                    raise ValueError(f"state {key!r} of parameter {k!r} has {val.numel()} "
                                     f"elements of {val.dtype}; the parameter has "
                                     f"{p.numel()} of {p.dtype}"
                                     + (" (one scale per 256-element block)"
                                        if key in _SCALES else ""))
                # a private copy: the checkpoint may hold views of this optimizer's
                # own flat buffers (opt.load_state_dict(opt.state_dict())), which the
                # commit below refills before copying in
                tensors[key] = val.detach().clone()
            elif strict:
                raise ValueError(f"unexpected state {key!r} of parameter {k!r} for "
                                 f"{type(self).__name__}")
        if v and self._has_step and step is None:
            raise ValueError(f"state of parameter {k!r} has no 'step'")
        if self._state_dtype == "int8" and "exp_avg" in tensors:
            for key in _SCALES:
                if key not in tensors:
                    raise ValueError(f"state of parameter {k!r} has no {key!r} (needed "
                                     "with state_dtype='int8')")
        if self._needs_first:
            step = 1 if "momentum_buffer" in tensors else 0
        if v and self._needs_mu and mu is None:
            raise ValueError(f"state of parameter {k!r} has no 'mu_product'")
        return b, i, v, step, mu, tensors

    def _commit_states(self, entries):
        """Copy parsed states (:meth:`_parse_state`) into the flat buffers; point
        ``optimizer.state`` at their views."""
        with torch.no_grad():
            for b, i, v, step, mu, tensors in entries:
                for name, val in tensors.items():
                    self._ensure(b, name)
                    view = b.sviews[name][i]
                    view.copy_(val.reshape(view.shape))
                if step is not None:
                    b.steps[i] = step
                if mu is not None:
                    b.mu[i] = mu
        for b, i, v, step, mu, tensors in entries:
            if v:
                self._populate(b, i)

    def _fix_loaded_group(self, group):
        pass

    def _check_state_dtype(self, k, key, val, fmt=None):
        """A saved state tensor must have this optimizer's ``state_dtype`` storage.

        ``fmt``: the parameter's low-precision format, if any: its ``master_param``
        is any floating tensor, and float32 moments may come as the parameter's
        dtype (torch.optim keeps a bfloat16 parameter's moments in bfloat16).
        """
        sd = self._state_dtype
        lowp_dtypes = (torch.bfloat16, torch.int8, torch.uint8)
        if key == "master_param" or (fmt and sd == "float32"):
            ok = val.is_floating_point() and key not in _SCALES
            want = "a floating-point tensor"
        elif sd == "float32":
            ok = val.is_floating_point() and val.dtype not in lowp_dtypes and key not in _SCALES
            want = "a float32/float64 tensor"
        else:
            want = _LOWP_TORCH[sd].get(key)
            ok = val.dtype == want
            want = want or "no such state"
        if not ok:
            raise ValueError(
                f"state {key!r} of parameter {k!r} has dtype {val.dtype}, but this optimizer "
                f"stores state_dtype={sd!r} ({want}); a checkpoint saved with another "
                "state_dtype cannot be loaded (build the optimizer with the checkpoint's "
                "state_dtype)")

