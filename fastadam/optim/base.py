"""The small base class of the NumPy façade optimizers."""

from __future__ import annotations

import copy

import numpy as np

from .. import _backends
from ..flat import FlatParams

STATE_DICT_FORMAT = "fastadam.optimizer"
STATE_DICT_VERSION = 1


class Optimizer:
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
        entries replaced by views of the buffer.
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
        fp = p if isinstance(p, FlatParams) else FlatParams(p, replace=True)
        full["params"] = fp.keys
        self.param_groups.append(full)
        self.flat.append(fp)
        self.state.append({str(fb.dtype): {"step": 0} for fb in fp.buffers})

    def add_param_group(self, group: dict) -> None:
        """Add a group of parameters (a dict with ``"params"`` and optional hyperparameters)."""
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError("param group must be a dict with a 'params' key")
        self._add_group(dict(group))
        self._group_input = True

    @property
    def params(self):
        if self._group_input:
            return [fp.params for fp in self.flat]
        return self.flat[0].params

    @property
    def grads(self):
        if self._group_input:
            return [fp.grads for fp in self.flat]
        return self.flat[0].grads

    # -- to be provided by subclasses ------------------------------------------------
    def _hparams(self, group: dict, st: dict, step: int) -> dict:  # pragma: no cover
        raise NotImplementedError

    def _state_spec(self, group: dict) -> dict:  # pragma: no cover
        raise NotImplementedError

    def _after_step(self, group, st, hp) -> None:
        """Scalar state updates after a successful step (e.g. NAdam's mu_product)."""

    # -- stepping --------------------------------------------------------------------
    def zero_grad(self) -> None:
        """Fill every gradient buffer with zeros."""
        for fp in self.flat:
            fp.zero_grad()

    def step(self, closure=None):
        """Apply one fused step to every flat buffer (one kernel call each).

        Parameters
        ----------
        closure : callable, optional
            Called first (it may recompute the gradients); its result is returned.

        Every group's hyperparameters are validated before any buffer is touched.
        """
        loss = closure() if closure is not None else None
        plan = []
        for gi, group in enumerate(self.param_groups):
            spec = self._state_spec(group)
            for fb in self.flat[gi].buffers:
                st = self.state[gi][str(fb.dtype)]
                hp = self._hparams(group, st, st["step"] + 1)
                plan.append((group, fb, st, spec, hp))
        for group, fb, st, spec, hp in plan:
            for name, fill in spec.items():
                if name not in st:
                    st[name] = np.full(fb.size, fill, dtype=fb.dtype)
            arrays = {"param": fb.data, "grad": fb.grad}
            for name in spec:
                arrays[name] = st[name]
            self._backend.step(self._opt, arrays, hp)
            st["step"] += 1
            self._after_step(group, st, hp)
        return loss

    # -- checkpoints -------------------------------------------------------------------
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
                    if v.shape != (fb.size,) or v.dtype != fb.dtype:
                        raise ValueError(f"checkpoint state {k!r} (group {gi}, {dt}) has shape "
                                         f"{v.shape} / dtype {v.dtype}, expected ({fb.size},) "
                                         f"/ {fb.dtype}")
                    st[k] = np.array(v, dtype=fb.dtype, copy=True)
                else:
                    st[k] = v
            if not isinstance(st.get("step"), (int, np.integer)) or st["step"] < 0:
                raise ValueError(f"checkpoint state (group {gi}, {dt}) has no valid 'step'")
            st["step"] = int(st["step"])
            new_state[gi][dt] = st
            seen.add((gi, dt))
        self.param_groups = new_groups
        self.state = new_state

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} (backend={self.backend!r})"]
        for i, g in enumerate(self.param_groups):
            hp = ", ".join(f"{k}={v!r}" for k, v in g.items() if k != "params")
            lines.append(f"  group {i}: {len(g['params'])} params, {hp}")
        return "\n".join(lines)
