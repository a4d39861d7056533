"""Param groups of the NumPy façade optimizers and their flat buffers.

The grouping half of :class:`fastadam.optim.Optimizer`, as a mixin: turning
the ``params`` argument into param groups, copying each group's arrays into
one :class:`fastadam.FlatParams` (one contiguous buffer per dtype), the checks
made before anything is copied, :meth:`GroupsMixin.add_param_group` and the
``params`` / ``grads`` views.

Notes
-----
The mixin keeps its state on the optimizer: ``defaults``, ``param_groups``,
``flat``, ``state`` and ``_group_input``, and calls the optimizer's
``_hparams`` (validation) and ``_clear_caches`` (:mod:`fastadam.optim._plan`).
Subclasses override ``_add_group`` and ``_check_group_arrays`` (e.g.
:class:`fastadam.optim.Adam` for low-precision parameters).

See Also
--------
fastadam.optim.base : the optimizer base class that uses it.
fastadam.flat.FlatParams : the flat buffers.
"""

from __future__ import annotations

import numpy as np

from ..flat import FlatParams
from ..lowp import master as _master


def _group_dtypes(p) -> list:
    """The dtypes of a group's parameters (a FlatParams, dict or list of arrays)."""
    if isinstance(p, FlatParams):
        return [fb.dtype for fb in p.buffers]
    return [a.dtype for a in (p.values() if isinstance(p, dict) else p)
            if isinstance(a, np.ndarray)]


class GroupsMixin:
    """Param groups and their flat buffers (see the module docstring)."""

    # -- construction --------------------------------------------------------------
    @staticmethod
    def _normalize(params):
        if isinstance(params, (dict, FlatParams)):
            return [{"params": params}]
        if isinstance(params, (list, tuple)):
            if params and all(isinstance(p, dict) and "params" in p for p in params):
                return [dict(p) for p in params]
            if any(isinstance(p, dict) for p in params):
                raise TypeError("params must be arrays or group dicts with a 'params' key, "
                                "not a mix")
            return [{"params": params}]
        raise TypeError("params must be a dict, a list of arrays, a FlatParams or a list of "
                        f"group dicts, got {type(params).__name__}")

    def _add_group(self, group: dict) -> None:
        p = group["params"]
        unknown = set(group) - set(self.defaults) - {"params"}
        if unknown:
            raise TypeError(f"unknown hyperparameter(s) in param group: {sorted(unknown)}")
        full = {k: group.get(k, v) for k, v in self.defaults.items()}
        self._hparams(full, {}, 1)          # validate before copying anything
        if not isinstance(p, FlatParams) and len(p) == 0:
            raise ValueError("optimizer got an empty parameter list")
        self._check_not_in_other_group(p)
        self._check_group_arrays(p)
        fp = p if isinstance(p, FlatParams) else FlatParams(p, replace=True)
        full["params"] = fp.keys
        self.param_groups.append(full)
        self.flat.append(fp)
        self.state.append({str(fb.dtype): {"step": 0} for fb in fp.buffers})

    def _check_not_in_other_group(self, p) -> None:
        """Refuse parameters that an existing group already holds (they would step twice,
        or a copy nobody holds would be optimized), as torch.optim does."""
        if isinstance(p, FlatParams):
            if any(fp is p for fp in self.flat):
                raise ValueError("some parameters appear in more than one parameter group "
                                 "(the same FlatParams)")
            return
        arrays = p.values() if isinstance(p, dict) else p
        for a in arrays:
            if isinstance(a, np.ndarray) and any(
                    np.may_share_memory(a, fb.data) for fp in self.flat for fb in fp.buffers):
                raise ValueError("some parameters appear in more than one parameter group")

    def _check_group_arrays(self, p) -> None:
        """Subclass hook: refuse a group's arrays before anything is copied or replaced.

        The base refuses low-precision (float16 / bfloat16) parameters: only
        Adam / AdamW keep float32 master weights for them.
        """
        for dt in _group_dtypes(p):
            if _master.param_format(dt) is not None:
                raise TypeError(f"{type(self).__name__} optimizes float32 and float64 "
                                f"parameters; {dt} parameters are supported by Adam and AdamW "
                                "(with float32 master weights)")

    def add_param_group(self, group: dict) -> None:
        """Add a group of parameters (a dict with ``"params"`` and optional hyperparameters)."""
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError("param group must be a dict with a 'params' key")
        self._add_group(dict(group))
        self._group_input = True
        self._clear_caches()

    @property
    def params(self):
        """Views of the parameters in the flat buffers, with the caller's keys.

        A dict or list like the one given (for group input: a list with one per group).
        """
        if self._group_input:
            return [fp.params for fp in self.flat]
        return self.flat[0].params

    @property
    def grads(self):
        """Views of the flat gradient buffers, laid out like :attr:`params`.

        Write gradients into them (``opt.grads[k][...] = g``) before :meth:`step`.
        """
        if self._group_input:
            return [fp.grads for fp in self.flat]
        return self.flat[0].grads
