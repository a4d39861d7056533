"""What users do to ``optimizer.state`` and ``param_groups[i]["params"]``, applied.

In torch.optim, ``optimizer.state[p]`` *is* what the next step uses, and a
parameter appended to a group's ``"params"`` list is trained from the next step
on.  fastadam.torch keeps the state in flat buffers (``state[p]`` holds views of
them) and the parameters of a group in flat buffers too, so an edit must be
carried into the buffers before the next step or ``state_dict()``.

Change detection is cheap: ``optimizer.state`` is a :class:`_State` (a
``defaultdict(dict)``), each ``state[p]`` a :class:`_ParamState` (a ``dict``) and
each group's ``"params"`` a :class:`_Params` (a ``list``); every mutating method of
these sets one flag (:class:`_Flag`), which ``step()``, ``zero_grad()`` and
``state_dict()`` test.  Assigning ``optimizer.state`` converts the new mapping and
sets the flag; replacing a group's ``"params"`` list is caught by the
hyperparameter cache (:meth:`~fastadam.torch.hparams._HparamsMixin._hp_record`).
Only when the flag is set does :meth:`_SyncMixin._sync` walk the parameters:

* a parameter whose state is missing or empty (``state[p].clear()``,
  ``del state[p]``, ``optimizer.state = defaultdict(dict)``) restarts, as in
  torch: its slices of the state buffers are reset, its step count is 0;
* a state value that is not this optimizer's view (``state[p]["exp_avg"] = t``,
  ``state[p]["step"] = torch.tensor(5.)``) is checked as ``load_state_dict``
  checks it and copied into the flat buffers; ``state[p][key]`` then holds the
  view again (``t`` itself is not updated by later steps);
* a group whose ``"params"`` changed is flattened again (its parameters' values
  and state are kept; a new parameter starts afresh, a removed one is no longer
  stepped and its state is dropped).

All three containers pickle and deep-copy as the plain ``dict`` / ``list`` /
``defaultdict(dict)`` they stand for.
"""

from __future__ import annotations

import operator
from collections import defaultdict

import torch

_is = operator.is_


class _Flag:
    """Set when ``optimizer.state`` or a group's ``"params"`` may have changed."""

    __slots__ = ("dirty",)

    def __init__(self):
        self.dirty = False


def _flagging(base, name):
    meth = getattr(base, name)

    def wrapper(self, *args, **kwargs):
        self._flag.dirty = True
        return meth(self, *args, **kwargs)

    wrapper.__name__ = name
    wrapper.__doc__ = meth.__doc__
    return wrapper


class _ParamState(dict):
    """``optimizer.state[p]``: a dict that flags its changes."""

    __slots__ = ("_flag",)

    def __init__(self, flag, *args):
        dict.__init__(self, *args)
        self._flag = flag

    def __reduce_ex__(self, protocol):
        return dict, (dict(self),)

    def copy(self):
        return dict(self)


class _Params(list):
    """A group's ``"params"``: a list that flags its changes."""

    __slots__ = ("_flag",)

    def __init__(self, flag, items=()):
        list.__init__(self, items)
        self._flag = flag

    def __reduce_ex__(self, protocol):
        return list, (list(self),)

    def copy(self):
        return list(self)


class _State(defaultdict):
    """``optimizer.state``: a ``defaultdict(dict)`` whose values are :class:`_ParamState`."""

    __slots__ = ("_flag",)

    def __init__(self, flag, items=()):
        defaultdict.__init__(self)
        self._flag = flag
        for k, v in dict(items).items():
            dict.__setitem__(self, k, _ParamState(flag, v) if isinstance(v, dict) else v)

    def __missing__(self, key):          # reading state[p] of a fresh p changes nothing
        v = _ParamState(self._flag)
        dict.__setitem__(self, key, v)
        return v

    def __setitem__(self, key, value):
        self._flag.dirty = True
        if isinstance(value, dict) and type(value) is not _ParamState:
            value = _ParamState(self._flag, value)
        dict.__setitem__(self, key, value)

    def update(self, *args, **kwargs):
        for k, v in dict(*args, **kwargs).items():
            self[k] = v

    def setdefault(self, key, default=None):
        if key not in self:
            self[key] = default
        return dict.__getitem__(self, key)

    def __ior__(self, other):
        self.update(other)
        return self

    def __reduce_ex__(self, protocol):
        return defaultdict, (dict,), None, None, iter(dict(self).items())

    def copy(self):
        return defaultdict(dict, self)

    __copy__ = copy


for _cls, _base, _names in (
        (_ParamState, dict, ("__setitem__", "__delitem__", "clear", "pop", "popitem",
                             "setdefault", "update", "__ior__")),
        (_Params, list, ("__setitem__", "__delitem__", "append", "extend", "insert", "pop",
                         "remove", "clear", "sort", "reverse", "__iadd__", "__imul__")),
        (_State, dict, ("__delitem__", "clear", "pop", "popitem"))):
    for _n in _names:
        setattr(_cls, _n, _flagging(_base, _n))
del _cls, _base, _names, _n


def _owns(view, val) -> bool:
    """Whether state value ``val`` is (an alias of) this optimizer's ``view``."""
    return (isinstance(val, torch.Tensor) and val.data_ptr() == view.data_ptr()
            and val.dtype == view.dtype and val.shape == view.shape
            and val.device == view.device and val.is_contiguous())


class _SyncMixin:
    """Carrying edits of ``optimizer.state`` and of the groups' ``"params"`` lists into
    the flat buffers of a :class:`~fastadam.torch.base.FlatOptimizer`."""

    @property
    def state(self):
        """Per-parameter state, as in torch.optim (a ``defaultdict(dict)``).

        ``state[p]`` holds views of the flat state buffers.  Edits mean what they
        mean in torch.optim: see :mod:`fastadam.torch.tracked`.
        """
        return self._state

    @state.setter
    def state(self, value):
        if not isinstance(value, dict):
            raise TypeError(f"optimizer.state must be a dict, got {type(value).__name__}")
        self._state = _State(self._flag, value)
        self._flag.dirty = True

    def _sync(self):
        """Apply pending edits of ``state`` and the groups' ``"params"`` (see module doc)."""
        self._sync_groups()
        self._sync_state()
        self._flag.dirty = False

    def _settle(self):
        """:meth:`_sync` if an edit is pending (a replaced ``"params"`` list included)."""
        if self._flag.dirty or any(g["params"] is not pl for g, pl in
                                   zip(self.param_groups, self._plists)):
            self._sync()

    def _group_changed(self, gi, group):
        plist = group["params"]
        old = self._gparams[gi]
        return (type(plist) is not _Params or plist._flag is not self._flag
                or len(plist) != len(old) or not all(map(_is, plist, old)))

    def _sync_groups(self):
        groups = self.param_groups
        if len(groups) != len(self._gparams):
            raise RuntimeError("optimizer.param_groups changed length; add a group with "
                               "add_param_group()")
        changed = [gi for gi, g in enumerate(groups) if self._group_changed(gi, g)]
        if not changed:
            return
        owner = {}                                   # a parameter in two groups?
        for gi, g in enumerate(groups):
            plist = g["params"]
            for p in [plist] if isinstance(plist, torch.Tensor) else plist:
                if owner.setdefault(id(p), gi) != gi:
                    raise ValueError("some parameters appear in more than one parameter "
                                     f"group (param_groups[{gi}]['params'])")
        for gi in changed:                           # check every new list first
            g = groups[gi]
            plist = g["params"]
            if isinstance(plist, torch.Tensor):
                plist = [plist]
            elif isinstance(plist, (set, dict)) or not hasattr(plist, "__iter__"):
                raise TypeError(f"param_groups[{gi}]['params'] must be a list of Tensors")
            merged = dict(self.defaults)
            merged.update((k, v) for k, v in g.items() if k != "params")
            self._check_params(list(plist), merged, gi, f"param_groups[{gi}]['params']",
                               other_groups=False)
        state = self._state
        snap = {}
        for b in [b for b in self._buckets if b.gi in changed]:
            for p in b.params:
                st = dict.get(state, p)
                if id(p) in owner and st:     # still optimized (maybe in another group):
                    snap[p] = {k: v.detach().clone() if isinstance(v, torch.Tensor) else v
                               for k, v in st.items()}    # its state as it is now, copied
                else:
                    dict.pop(state, p, None)  # removed: no longer stepped, state dropped
                self._where.pop(p, None)
        self._buckets = [b for b in self._buckets if b.gi not in changed]
        for gi in changed:
            plist = groups[gi]["params"]
            groups[gi]["params"] = _Params(
                self._flag, [plist] if isinstance(plist, torch.Tensor) else plist)
            self._flatten_group(gi)
        for p, st in snap.items():            # copied into the new buffers by _sync_state
            dict.__setitem__(state, p, _ParamState(self._flag, st))

    def _sync_state(self):
        state = self._state
        entries, resets = [], []
        for b in self._buckets:
            for i, p in enumerate(b.params):
                st = dict.get(state, p)
                if not st:
                    if b.started[i] or b.steps[i] != 0:
                        resets.append((b, i))
                    continue
                if b.started[i] and self._owned(b, i, st):
                    continue
                # what the step reads (torch.optim: KeyError without it)
                need = self._hp_record(b.gi, self.param_groups[b.gi])[2]
                missing = [n for n in need if n not in st]
                if missing:             # torch.optim: KeyError at the step
                    raise KeyError(f"optimizer.state of parameter {i} of param group {b.gi} "
                                   f"has no {missing[0]!r} (a parameter's state is either "
                                   "empty -- it starts afresh -- or complete)")
                entries.append(self._parse_state(f"{i} of param group {b.gi}", p, st,
                                                 strict=False))
        with torch.no_grad():
            for b, i in resets:
                self._reset_param(b, i)
            for e in entries:
                self._reset_param(e[0], e[1])
        self._commit_states(entries)
        for b in self._buckets:
            self._refresh_uniform(b)
            b.all_started = all(b.started)

    def _owned(self, b, i, st):
        """Whether every state value of parameter ``i`` is this optimizer's own view."""
        if self._has_step and not _owns(b.steps_t[i], st.get("step")):
            return False
        if self._needs_mu and not _owns(b.mu_t[i], st.get("mu_product")):
            return False
        return all(_owns(v[i], st.get(name)) for name, v in b.sviews.items())

    def _reset_param(self, b, i):
        """Parameter ``i`` of bucket ``b`` starts afresh (torch: its state is empty)."""
        for name, views in b.sviews.items():
            if name == "master_param":
                views[i].copy_(b.views[i].reshape(views[i].shape))
            else:
                views[i].fill_(self._fill(name))
        b.steps[i] = 0
        if b.mu is not None:
            b.mu[i] = 1.0
        b.started[i] = False
        b.all_started = False
