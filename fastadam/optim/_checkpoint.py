"""Checkpoints of the NumPy façade optimizers: ``state_dict`` and ``load_state_dict``.

The checkpoint half of :class:`fastadam.optim.Optimizer`, as a mixin: a
checkpoint is plain Python values and NumPy arrays (copies), one ``state``
entry per flat buffer; loading checks everything (format, version, optimizer,
param groups and their hyperparameters, each buffer's layout and state
arrays) before anything is loaded.

Notes
-----
The mixin calls the optimizer's ``defaults``, ``param_groups``, ``flat``,
``state``, ``_hparams`` (validation), ``_state_layout`` (the shape and dtype a
state array must have) and ``_clear_caches`` (:mod:`fastadam.optim._plan`).

See Also
--------
fastadam.optim.base : the optimizer base class that uses it.
"""

from __future__ import annotations

import copy

import numpy as np

from .. import _alloc

STATE_DICT_FORMAT = "fastadam.optimizer"
STATE_DICT_VERSION = 1


class CheckpointMixin:
    """``state_dict`` / ``load_state_dict`` (see the module docstring)."""

    def state_dict(self) -> dict:
        """A checkpoint as plain Python values and NumPy arrays (copies).

        Format::

            {"format": "fastadam.optimizer", "version": 1, "optimizer": "Adam",
             "param_groups": [{<hyperparameters>, "params": [keys]}, ...],
             "state": [{"group": i, "dtype": "float32", "keys": [...], "size": n,
                        "step": t, <state name>: 1-D ndarray or float, ...}, ...]}

        One ``state`` entry per flat buffer; arrays are laid out like the buffer
        (:meth:`FlatParams.unflatten` gives per-parameter views).
        """
        state = []
        for gi, fp in enumerate(self.flat):
            for fb in fp.buffers:
                st = self.state[gi][str(fb.dtype)]
                entry = {"group": gi, "dtype": str(fb.dtype), "keys": list(fb.keys),
                         "size": fb.size}
                for k, v in st.items():
                    entry[k] = v.copy() if isinstance(v, np.ndarray) else v
                state.append(entry)
        return {"format": STATE_DICT_FORMAT, "version": STATE_DICT_VERSION,
                "optimizer": type(self).__name__,
                "param_groups": copy.deepcopy(self.param_groups), "state": state}

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a checkpoint made by :meth:`state_dict` of the same optimizer over the same layout.

        Everything is checked before anything is loaded: a bad checkpoint raises
        and leaves the optimizer as it was.
        """
        if not isinstance(state_dict, dict) or state_dict.get("format") != STATE_DICT_FORMAT:
            raise ValueError("state_dict is not a fastadam optimizer checkpoint")
        if state_dict.get("version") != STATE_DICT_VERSION:
            raise ValueError(f"unsupported checkpoint version {state_dict.get('version')}")
        if state_dict.get("optimizer") != type(self).__name__:
            raise ValueError(f"checkpoint is for {state_dict.get('optimizer')}, "
                             f"not {type(self).__name__}")
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"checkpoint has {len(groups)} param groups, optimizer has "
                             f"{len(self.param_groups)}")
        new_groups = []
        for gi, (g_old, g_new) in enumerate(zip(self.param_groups, groups)):
            if list(g_new.get("params", [])) != list(g_old["params"]):
                raise ValueError(f"param group {gi}: parameter keys differ from the checkpoint's")
            ng = {k: g_new[k] for k in self.defaults if k in g_new}
            missing = set(self.defaults) - set(ng)
            if missing:
                raise ValueError(f"param group {gi} lacks {sorted(missing)}")
            self._hparams(ng, {}, 1)
            ng["params"] = g_old["params"]
            new_groups.append(ng)
        new_state = [{str(fb.dtype): {"step": 0} for fb in fp.buffers} for fp in self.flat]
        seen = set()
        for entry in state_dict["state"]:
            gi, dt = entry.get("group"), entry.get("dtype")
            if not isinstance(gi, int) or not 0 <= gi < len(self.flat) or \
                    dt not in new_state[gi]:
                raise ValueError(f"checkpoint state entry for group {gi!r}, dtype {dt!r} does "
                                 "not match this optimizer's buffers")
            fb = next(b for b in self.flat[gi].buffers if str(b.dtype) == dt)
            if entry.get("size") != fb.size or list(entry.get("keys", [])) != list(fb.keys):
                raise ValueError(f"checkpoint buffer (group {gi}, {dt}) has a different layout")
            st = {}
            for k, v in entry.items():
                if k in ("group", "dtype", "keys", "size"):
                    continue
                if isinstance(v, np.ndarray):
                    shape, sdt = self._state_layout(k, fb)
                    if v.shape != shape or v.dtype != sdt:
                        raise ValueError(f"checkpoint state {k!r} (group {gi}, {dt}) has shape "
                                         f"{v.shape} / dtype {v.dtype}, expected {shape} "
                                         f"/ {sdt}")
                    st[k] = _alloc.copy(v)      # (aligned, as the state it replaces)
                else:
                    st[k] = v
            if not isinstance(st.get("step"), (int, np.integer)) or st["step"] < 0:
                raise ValueError(f"checkpoint state (group {gi}, {dt}) has no valid 'step'")
            st["step"] = int(st["step"])
            if (gi, dt) in seen:
                raise ValueError(f"checkpoint has two state entries for group {gi}, {dt}")
            new_state[gi][dt] = st
            seen.add((gi, dt))
        missing = [(gi, dt) for gi, sts in enumerate(new_state) for dt in sts
                   if (gi, dt) not in seen]
        if missing:
            raise ValueError(f"checkpoint has no state entry for buffer(s) {missing} "
                             "(group, dtype)")
        self.param_groups = new_groups
        self.state = new_state
        self._clear_caches()
