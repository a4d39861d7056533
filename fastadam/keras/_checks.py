"""Checks of the Keras-style optimizers' arguments, variables and gradients.

Everything here only reads: :func:`check_pairs` validates one call's
(gradient, variable) pairs before the optimizer writes anything.  The memory
helper :func:`owner` is shared with the flat-buffer layout in :mod:`fastadam.keras.base`
(both use :func:`fastadam._validate.extent`).
"""

from __future__ import annotations

import bisect
import warnings

import numpy as np

from .. import _validate as _v
from .._validate import extent


def optional_nonneg(name, value):
    """``value`` as a float >= 0, or None when it is None."""
    if value is None:
        return None
    v = _v.real(name, value)
    if v < 0:
        raise ValueError(f"Invalid {name}: {value} (must be >= 0 or None)")
    return v


def owner(a):
    """The array at the end of ``a``'s chain of ``.base`` (the one owning the memory)."""
    b = a
    while isinstance(b.base, np.ndarray):
        b = b.base
    return b


def check_variable(i, v):
    """Check that ``variables[i]`` is a writeable, C-contiguous float32/float64 array."""
    if not isinstance(v, np.ndarray):
        raise TypeError(f"variables[{i}] must be a numpy.ndarray, got {type(v).__name__}")
    if v.dtype not in _v.FLOAT_DTYPES:
        raise TypeError(f"variables[{i}] has dtype {v.dtype}; only float32 and float64 "
                        "variables can be optimized")
    if not v.flags.c_contiguous:
        raise ValueError(f"variables[{i}] is not C-contiguous (a strided view); it is "
                         "updated in place, pass a contiguous array")
    if not v.flags.writeable:
        raise ValueError(f"variables[{i}] is read-only; it is updated in place")


def disjoint(indexed):
    """Check that the (index, variable) pairs are pairwise disjoint; return sorted spans."""
    spans = sorted((*extent(v), i) for i, v in indexed if v.size)
    for (s0, e0, i0), (s1, e1, i1) in zip(spans, spans[1:]):
        if s1 < e0:
            what = "the same array" if (s0, e0) == (s1, e1) else "overlapping in memory"
            raise ValueError(f"variables[{i0}] and variables[{i1}] are {what}; each "
                             "variable must be distinct")
    return spans


def check_variables(variables):
    """Check each variable (:func:`check_variable`) and that no two overlap."""
    for i, v in enumerate(variables):
        check_variable(i, v)
    disjoint(list(enumerate(variables)))


def check_pairs(grads, variables):
    """Validate (grad, variable) pairs; return the kept pairs. Writes nothing.

    Returns a list of ``(index, grad, variable)``, leaving out (with a warning)
    the variables whose gradient is None.  Called directly by
    ``Optimizer.apply`` (the warning's ``stacklevel`` counts on that).
    """
    if len(grads) != len(variables):
        raise ValueError(f"got {len(grads)} gradients for {len(variables)} variables")
    pairs, missing = [], []
    for i, (g, v) in enumerate(zip(grads, variables)):
        check_variable(i, v)
        if g is None:
            missing.append(i)
            continue
        if not isinstance(g, np.ndarray):
            raise TypeError(f"grads[{i}] must be a numpy.ndarray, got {type(g).__name__}")
        if g.dtype != v.dtype:
            raise TypeError(f"grads[{i}] has dtype {g.dtype}, but variables[{i}] has "
                            f"{v.dtype}")
        if g.shape != v.shape:
            raise ValueError(f"grads[{i}] has shape {g.shape}, but variables[{i}] has "
                             f"{v.shape}")
        if not g.flags.c_contiguous:
            raise ValueError(f"grads[{i}] is not C-contiguous (a strided view)")
        pairs.append((i, g, v))
    if not pairs:
        raise ValueError("No gradients provided for any variable.")
    if missing:
        warnings.warn(f"Gradients do not exist for variables {missing}; they are not "
                      "updated.", stacklevel=3)
    # Variables must be pairwise disjoint, and no gradient may overlap a variable.
    spans = disjoint([(i, v) for i, _, v in pairs])
    starts = [s for s, _, _ in spans]
    for i, g, _ in pairs:
        if not g.size:
            continue
        gs, ge = extent(g)
        k = bisect.bisect_right(starts, gs) - 1
        for j in (k, k + 1):
            if 0 <= j < len(spans) and spans[j][0] < ge and gs < spans[j][1]:
                raise ValueError(f"grads[{i}] overlaps variables[{spans[j][2]}] in memory")
    return pairs
