"""Input checks, all done before any buffer is written.

Every public entry point validates its hyperparameters and arrays here first;
a call that raises leaves every array exactly as it was.  Messages name the
argument and the offending value, in torch.optim's style where one exists.
"""

from __future__ import annotations

import math
import numbers
import operator

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def real(name: str, value) -> float:
    """``value`` as a Python float; TypeError for non-reals (bools included), ValueError for NaN/inf."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}: {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"Invalid {name} value: {value} (must be finite)")
    return v


def nonneg(name: str, value, label: str | None = None) -> float:
    v = real(name, value)
    if not 0.0 <= v:
        raise ValueError(f"Invalid {label or name}: {value}")
    return v


def positive(name: str, value, label: str | None = None) -> float:
    """A value > 0 (torch.optim.SparseAdam's learning rate and epsilon)."""
    v = real(name, value)
    if not 0.0 < v:
        raise ValueError(f"Invalid {label or name}: {value}")
    return v


def unit(name: str, value, label: str | None = None) -> float:
    """A value in [0, 1) such as a beta, alpha or rho."""
    v = real(name, value)
    if not 0.0 <= v < 1.0:
        raise ValueError(f"Invalid {label or name}: {value} (must be in [0, 1))")
    return v


def closed_unit(name: str, value, label: str | None = None) -> float:
    """A value in [0, 1] (rho, dampening)."""
    v = real(name, value)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"Invalid {label or name}: {value} (must be in [0, 1])")
    return v


def flag(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}: {value!r}")
    return bool(value)


def step(value, name: str = "step") -> int:
    """A step count: an integer >= 1 (the count *after* this step, as in torch.optim)."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int, got bool")
    try:
        v = operator.index(value)
    except TypeError:
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            v = int(value)
        else:
            raise TypeError(f"{name} must be an int, got {type(value).__name__}: {value!r}") from None
    if v < 1:
        raise ValueError(f"Invalid {name}: {value} (must be >= 1; it counts this step)")
    return v


def host_arrays(named: dict, outputs: tuple) -> dict:
    """Check NumPy arrays for a fused in-place step and return flat 1-D views of them.

    ``named`` maps argument names to arrays, the parameter first; ``outputs``
    names those written in place.  Checks: type, dtype (float32/float64, all
    equal), shape (all equal to the first), C-contiguity (a strided view is
    refused rather than a silent copy being updated), writeability of the
    outputs, and that no output overlaps any other array.
    """
    items = list(named.items())
    first_name, first = items[0]
    for name, a in items:
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    dtype = first.dtype
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"{first_name} must have dtype float32 or float64, got {dtype}")
    for name, a in items[1:]:
        if a.dtype != dtype:
            raise TypeError(f"{name} has dtype {a.dtype}, but {first_name} has {dtype}; "
                            "all arrays of a step must share one dtype")
        if a.shape != first.shape:
            raise ValueError(f"{name} has shape {a.shape}, but {first_name} has {first.shape}")
    return in_place_views(named, outputs)


def extent(a):
    """The (start, end) byte addresses of array ``a``'s data."""
    start = a.__array_interface__["data"][0]
    return start, start + a.nbytes


def in_place_views(named: dict, outputs) -> dict:
    """The layout checks of an in-place step, then flat 1-D views of the arrays.

    ``named`` maps argument names to NumPy arrays whose types, dtypes and shapes
    the caller has checked; ``outputs`` names those written in place.  Checks:
    C-contiguity (a strided view is refused rather than a silent copy being
    updated), writeability of the outputs, and that no output overlaps any other
    array.
    """
    items = list(named.items())
    for name, a in items:
        if not a.flags.c_contiguous:
            raise ValueError(
                f"{name} is not C-contiguous (a strided view); fastadam updates buffers in "
                "place and will not update a silent copy: pass a contiguous array "
                "(np.ascontiguousarray) and copy the result back")
    for name in outputs:
        if not named[name].flags.writeable:
            raise ValueError(f"{name} is read-only; it is updated in place")
    for i, (n1, a1) in enumerate(items):
        for n2, a2 in items[i + 1:]:
            if (n1 in outputs or n2 in outputs) and a1.size and a2.size and \
                    np.may_share_memory(a1, a2):
                raise ValueError(f"{n1} and {n2} overlap in memory; each buffer of a step "
                                 "must be distinct")
    return {name: a.reshape(-1) for name, a in items}


def sparse_arrays(tables: dict, indices, values, row_states=()):
    """Check the arrays of a row-sparse step; return ``(tables, indices, values)``.

    ``tables`` maps names to the arrays written in place, the parameter table
    first: a 2-D ``(rows, dim)`` float32/float64 array, C-contiguous and writeable;
    every other table has its shape and dtype, except those named in
    ``row_states``, which hold one value per row (shape ``(rows,)``).  ``indices``:
    a 1-D integer array of rows in ``[0, rows)`` (IndexError otherwise; float or
    bool indices: TypeError); ``values``: ``(len(indices), dim)`` of the table's
    dtype.  No table may overlap another array of the call.  The returned indices
    are int64 and C-contiguous, the values C-contiguous (copies only when the given
    ones are not).
    """
    items = list(tables.items())
    first_name, first = items[0]
    for name, a in items + [("indices", indices), ("values", values)]:
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    dtype = first.dtype
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"{first_name} must have dtype float32 or float64, got {dtype}")
    if first.ndim != 2:
        raise ValueError(f"{first_name} must be a 2-D table (rows, dim), got shape "
                         f"{first.shape}")
    rows, dim = first.shape
    for name, a in items[1:]:
        if a.dtype != dtype:
            raise TypeError(f"{name} has dtype {a.dtype}, but {first_name} has {dtype}; "
                            "all arrays of a step must share one dtype")
        want = (rows,) if name in row_states else first.shape
        if a.shape != want:
            raise ValueError(f"{name} has shape {a.shape}; expected {want} for a "
                             f"{first_name} of shape {first.shape}")
    if indices.dtype.kind not in "iu":
        raise TypeError(f"indices must be an integer array, got dtype {indices.dtype}")
    if indices.ndim != 1:
        raise ValueError(f"indices must be 1-D, got shape {indices.shape}")
    if values.dtype != dtype:
        raise TypeError(f"values has dtype {values.dtype}, but {first_name} has {dtype}")
    if values.shape != (indices.shape[0], dim):
        raise ValueError(f"values has shape {values.shape}; expected "
                         f"{(indices.shape[0], dim)} (one row of {first_name} per index)")
    if indices.size:
        lo, hi = indices.min(), indices.max()
        if lo < 0 or hi >= rows:
            bad = lo if lo < 0 else hi
            raise IndexError(f"indices: row {int(bad)} is out of range for {first_name} "
                             f"with {rows} rows")
    # one index dtype for the kernels (half the compiled variants); a copy of the indices
    # (not of the table) where they come as another integer type
    indices = np.ascontiguousarray(indices, dtype=np.int64)
    values = np.ascontiguousarray(values)
    named = dict(tables)
    named.update(indices=indices, values=values)
    in_place_views(named, tuple(tables))
    return tables, indices, values
