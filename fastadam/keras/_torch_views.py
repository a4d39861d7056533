"""Keras variables on the torch backend as the arrays fastadam's kernels run on.

Imported by :mod:`fastadam.keras._keras_step` when a step on Keras variables
runs, after the backend was checked to be torch: it imports torch.

A Keras variable on torch holds a ``torch.nn.Parameter`` (``variable.value``);
on the CPU its storage is shared with a NumPy view (``tensor.numpy()``), which
the kernels update in place.  :func:`chunks` checks one call's (gradient,
variable) pairs and returns, per variable, the views of its parameter, its
gradient and its state.  The views of a parameter and of its state are kept
(``opt._kviews``) while the parameter keeps its tensor and storage.
"""

from __future__ import annotations

import numpy as np
import torch

_NP = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}
_TORCH = {v: k for k, v in _NP.items()}


class _Views:
    """The kernel arrays of one variable: its parameter and state, 1-D NumPy views."""

    __slots__ = ("var", "tensor", "ptr", "p", "state", "decay_on")

    def __init__(self, var, tensor, p, state, decay_on):
        self.var, self.tensor, self.ptr = var, tensor, tensor.data_ptr()
        self.p, self.state, self.decay_on = p, state, decay_on


def _host_view(t):
    """The 1-D NumPy view of a contiguous CPU tensor's storage."""
    return t.detach().numpy().reshape(-1)


def _views(opt, i, v, t):
    """Check variable ``i`` and make its views (state: Keras' optimizer variables)."""
    if t.dtype not in _NP:
        raise TypeError(f"variables[{i}] ({v.path}) has dtype {v.dtype}; fastadam.keras "
                        "updates float32 and float64 variables")
    if t.device.type != "cpu":
        raise ValueError(
            f"variables[{i}] ({v.path}) is on {t.device}; fastadam.keras updates Keras "
            "variables on the CPU (CUDA is not wired yet: use keras.optimizers there)")
    if not t.is_contiguous():
        raise ValueError(f"variables[{i}] ({v.path}) is not contiguous")
    k = opt._get_variable_index(v)
    state = {}
    for name, vs in opt._kstate.items():
        s = vs[k].value
        if s.data_ptr() == t.data_ptr():
            raise ValueError(f"the state {name!r} of variables[{i}] shares its memory")
        state[name] = _host_view(s)
    decay_on = opt.weight_decay is not None and opt._use_weight_decay(v)
    return _Views(v, t, _host_view(t), state, decay_on)


def _grad(i, g, t, p):
    """Gradient ``i`` as a 1-D array of ``t``'s dtype (cast as Keras' ops cast it)."""
    if hasattr(g, "value") and not isinstance(g, (torch.Tensor, np.ndarray)):
        g = g.value                             # a Keras variable
    if isinstance(g, torch.Tensor):
        if g.shape != t.shape:
            raise ValueError(f"grads[{i}] has shape {tuple(g.shape)}, but variables[{i}] "
                             f"has {tuple(t.shape)}")
        if g.device != t.device:
            raise ValueError(f"grads[{i}] is on {g.device}, variables[{i}] on {t.device}")
        if g.dtype != t.dtype:
            g = g.to(t.dtype)
        a = g.detach().contiguous().numpy().reshape(-1)
    elif isinstance(g, np.ndarray):
        if g.shape != tuple(t.shape):
            raise ValueError(f"grads[{i}] has shape {g.shape}, but variables[{i}] has "
                             f"{tuple(t.shape)}")
        a = np.ascontiguousarray(g, dtype=p.dtype).reshape(-1)
    else:
        raise TypeError(f"grads[{i}] must be a torch.Tensor (or a numpy.ndarray), got "
                        f"{type(g).__name__}")
    if a.size and np.may_share_memory(a, p):
        raise ValueError(f"grads[{i}] shares memory with variables[{i}]")
    return a


def chunks(opt, pairs):
    """Check ``pairs`` ((index, grad, variable)); return the kernel chunks. Writes nothing.

    Each chunk is ``(indices, param, grad, state, decay_on)``: 1-D NumPy views of a
    variable's storage, of its gradient and of its state arrays (by name).
    """
    cache = opt._kviews
    out = []
    for i, g, v in pairs:
        t = v.value
        e = cache.get(id(v))
        if e is None or e.var is not v or e.tensor is not t or t.data_ptr() != e.ptr:
            e = cache[id(v)] = _views(opt, i, v, t)
        out.append(((i,), e.p, _grad(i, g, t, e.p), e.state, e.decay_on))
    return out
