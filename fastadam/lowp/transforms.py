"""Gradient transforms: validation of their scalars, and the first pass of a step.

A scaled / clipped step sees ``clamp(g * gscale, clip)`` with
``gscale = clip_coef / grad_scale`` and ``clip = clip_value * clip_coef``
(``_transform_scalars``); the norm-clipping factor needs the global norm first,
which :func:`grad_stats` computes in one read of every gradient buffer (with the
finiteness flag that inf/NaN skipping needs).  The fused second pass is
:func:`fastadam.lowp.step.step_arrays`; the façade's two-pass step is
:func:`fastadam.lowp.facade.transformed_step`.
"""

from __future__ import annotations

import math

import numpy as np

from .. import _backends
from .. import _validate as _v
from .._config import PARALLEL_THRESHOLD
from . import master as _master


def _transform_scalars(grad_scale, clip_coef, clip_value):
    """Validated ``(gscale, clip)`` for the kernels: ``g -> clamp(g * gscale, clip)``."""
    s = 1.0
    if grad_scale is not None:
        s = _v.real("grad_scale", grad_scale)
        if not s > 0:
            raise ValueError(f"Invalid grad_scale: {grad_scale} (must be > 0)")
    k = 1.0
    if clip_coef is not None:
        k = _v.nonneg("clip_coef", clip_coef, "clip_coef value")
    c = math.inf
    if clip_value is not None:
        c = _v.nonneg("clip_value", clip_value, "clip_value")
    return k / s, c * k if c != math.inf else math.inf


def clip_coef(total_norm: float, max_norm: float) -> float:
    """torch.nn.utils.clip_grad_norm_'s factor: ``min(1, max_norm / (total_norm + 1e-6))``."""
    return min(1.0, max_norm / (total_norm + 1e-6))


def grad_stats(grads, *, grad_scale=None, clip_value=None, write=False, backend="auto",
               formats=None):
    """First pass of a scaled / clipped step over gradient buffers: one read of each.

    Parameters
    ----------
    grads : sequence of ndarray
        Flat (1-D contiguous) gradient buffers, float32 or float64, or
        low-precision: float16, ``ml_dtypes.bfloat16``, or uint16 bit patterns
        with their format in ``formats`` (these are read, never written).
    grad_scale : float, optional
        The gradients hold ``grad_scale * g``; statistics are of ``g``.
    clip_value : float, optional
        Statistics of ``clamp(g, -clip_value, clip_value)`` (value clipping
        applies before norm clipping).
    write : bool, default False
        Store ``clamp(g / grad_scale, -clip_value, clip_value)`` back into each
        buffer (used where the transform cannot be fused into the update;
        float32 / float64 buffers only).
    formats : sequence of {None, "float16", "bfloat16"}, optional
        Per buffer, the low-precision format of a uint16 buffer (None: from
        its dtype).

    Returns
    -------
    sumsq : float
        Sum over all buffers of the squared transformed gradient (float64
        accumulation), i.e. the squared global L2 norm.
    finite : bool
        Whether every raw gradient element is finite.
    """
    gscale, clip = _transform_scalars(grad_scale, None, clip_value)
    total, finite = 0.0, True
    grads = list(grads)
    formats = [None] * len(grads) if formats is None else list(formats)
    if backend == "cuda" or any(map(_backends.is_device_array, grads)):
        # device buffers: one reduction kernel each, one small copy back
        be = _backends.resolve("cuda" if backend == "auto" else backend, None)
        if be.name != "cuda":
            raise TypeError("grads must be 1-D contiguous numpy arrays (device arrays need "
                            "backend 'auto' or 'cuda')")
        from ..kernels import cuda_lowp_launch
        return cuda_lowp_launch.grad_stats(grads, formats, gscale, clip, bool(write))
    for i, g in enumerate(grads):
        if not isinstance(g, np.ndarray) or g.ndim != 1 or not g.flags.c_contiguous:
            raise TypeError("grads must be 1-D contiguous numpy arrays")
        fmt = formats[i] or _master.param_format(g.dtype)
        if fmt is not None and g.itemsize == 2:
            if write:
                raise ValueError("write=True needs float32/float64 gradients")
            formats[i] = fmt
        elif g.dtype not in _v.FLOAT_DTYPES:
            raise TypeError("grads must be float32/float64 (or float16 / bfloat16) arrays")
    be = None
    for g, fmt in zip(grads, formats):
        if g.size == 0:
            continue
        if be is None:
            be = _backends.resolve(backend, g)
        if fmt is not None:
            s, ok = _master.lo_grad_stats(g, fmt, gscale, clip, be.name)
            total += s
            finite = finite and ok
        elif be.name == "numba" and g.dtype == np.float32:
            s, ok = _f32_stats(g, gscale, clip, write)
            total += s
            finite = finite and ok
        else:
            ok = bool(np.isfinite(g).all())
            c = g.dtype.type
            y = np.clip(g * c(gscale), -c(clip), c(clip))
            if write:
                g[...] = y
            y64 = y.astype(np.float64)
            total += float(np.dot(y64, y64))
            finite = finite and ok
    return total, finite


def _f32_stats(g, gscale, clip, write):
    """``(sumsq, finite)`` of a 1-D contiguous float32 ``g`` from the numba first pass
    (``grad_sumsq``, through its bound entry point: :func:`_bound_sumsq`).  A float32
    block sum that overflowed is recomputed in float64."""
    s, bad = _bound_sumsq(g)(g, gscale, clip, write)
    ok = bool(bad == 0)
    if ok and not math.isfinite(s):      # a float32 block sum overflowed
        y = g.astype(np.float64) if write else \
            np.clip(g.astype(np.float64) * gscale, -clip, clip)
        s = float(np.dot(y, y))
    return float(s), ok


#: (parallel, writeable) -> the first pass's entry point for 1-D C-contiguous float32 arrays
_SUMSQ_ENTRIES: dict = {}


def _bound_sumsq(g):
    """The entry point of the numba first pass (``cpu_lowp``'s ``grad_sumsq``, the
    parallel or serial variant by ``g``'s length) compiled for a 1-D C-contiguous
    float32 array like ``g``: called as ``f(g, gscale, clip, write)`` with Python scalars
    (converted as ``np.float32`` does), it skips numba's type dispatch (as
    :func:`fastadam.kernels.cpu.bind`)."""
    key = (g.shape[0] >= PARALLEL_THRESHOLD, g.flags.writeable)
    f = _SUMSQ_ENTRIES.get(key)
    if f is None:       # a parallel entry point runs serially in a forked child (its guard)
        import numba

        from ..kernels import cpu_lowp
        f = _SUMSQ_ENTRIES[key] = cpu_lowp.entry(
            "grad_sumsq", key[0], (numba.typeof(g), numba.float32, numba.float32, numba.boolean))
    return f
