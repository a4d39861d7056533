"""Reduced-precision Adam state: the formats, their layouts, and the NumPy codecs.

``state_dtype`` names how Adam's two moments are stored (see :mod:`fastadam.lowp`):
:func:`state_layout` gives the arrays of each format, :func:`new_state` makes them,
and the NumPy encode / decode functions below are the *reference* codecs, written
with NumPy bit operations and sharing no code with the kernels' codecs
(:mod:`fastadam.rules.codecs`), so that tests compare two independent
transcriptions of one specification.
"""

from __future__ import annotations

import numpy as np

from .. import _alloc
from ..rules.codecs import INT8_BLOCK
from ..rules.formats import I8_QMAX as _I8_QMAX
from ..rules.formats import nblocks

STATE_DTYPES = ("float32", "bfloat16", "int8")


def check_state_dtype(state_dtype) -> str:
    if not isinstance(state_dtype, str) or state_dtype not in STATE_DTYPES:
        raise ValueError(f"Invalid state_dtype: {state_dtype!r}; expected one of {STATE_DTYPES}")
    return state_dtype



def state_layout(state_dtype: str, n: int, dtype=np.float32) -> dict:
    """``{state name: (shape, dtype)}`` of Adam's state for ``n`` parameters.

    ``float32``: ``exp_avg``, ``exp_avg_sq`` of ``(n,)`` and the parameter dtype;
    ``bfloat16``: the same names, uint16; ``int8``: ``exp_avg`` int8 ``(n,)``,
    ``exp_avg_scale`` float32 ``(ceil(n/256),)``, ``exp_avg_sq`` uint8 ``(n,)``,
    ``exp_avg_sq_scale`` float32 ``(ceil(n/256),)``.
    """
    check_state_dtype(state_dtype)
    n = int(n)
    if state_dtype == "float32":
        return {"exp_avg": ((n,), np.dtype(dtype)), "exp_avg_sq": ((n,), np.dtype(dtype))}
    if state_dtype == "bfloat16":
        u16 = np.dtype(np.uint16)
        return {"exp_avg": ((n,), u16), "exp_avg_sq": ((n,), u16)}
    nb, f32 = nblocks(n), np.dtype(np.float32)
    return {"exp_avg": ((n,), np.dtype(np.int8)), "exp_avg_scale": ((nb,), f32),
            "exp_avg_sq": ((n,), np.dtype(np.uint8)), "exp_avg_sq_scale": ((nb,), f32)}


def new_state(state_dtype: str, n: int, dtype=np.float32) -> dict:
    """Zero-initialized Adam state for ``n`` parameters (every encoding of 0 is all-zero bits)."""
    layout = state_layout(state_dtype, n, dtype)
    return {k: _alloc.zeros(shape, dt) for k, (shape, dt) in layout.items()}


# --- NumPy codecs (the reference; independent of fastadam.rules.codecs) ----------

def bf16_encode(x) -> np.ndarray:
    """float32 array -> bfloat16 bit patterns (uint16), round to nearest even, NaN kept."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    u = x.view(np.uint32).astype(np.uint64)
    lsb = (u >> np.uint64(16)) & np.uint64(1)
    r = ((u + np.uint64(0x7FFF) + lsb) >> np.uint64(16)).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        r[nan] = ((u[nan] >> np.uint64(16)) | np.uint64(0x40)).astype(np.uint16)
    return r



def bf16_encode_sr(x, seed: int) -> np.ndarray:
    """float32 array -> bfloat16 bits with stochastic rounding (the state's encoding).

    Element ``i`` adds the 16 bits ``((i * 0x9E3779B1 + seed) mod 2**32) >> 16``
    to its float32 bits and truncates: rounds up in magnitude with
    probability equal to the dropped fraction.  NaN as :func:`bf16_encode`.
    """
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    u = x.view(np.uint32).astype(np.uint64)
    i = np.arange(x.shape[0], dtype=np.uint64)
    r = ((i * np.uint64(0x9E3779B1) + np.uint64(seed)) & np.uint64(0xFFFFFFFF)) \
        >> np.uint64(16)
    out = ((u + r) >> np.uint64(16)).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        out[nan] = ((u[nan] >> np.uint64(16)) | np.uint64(0x40)).astype(np.uint16)
    return out


def bf16_decode(h) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32 (exact)."""
    h = np.ascontiguousarray(h, dtype=np.uint16)
    return (h.astype(np.uint32) << np.uint32(16)).view(np.float32)


def _blocks(x, fill=0):
    n = x.shape[0]
    pad = nblocks(n) * INT8_BLOCK - n
    return np.concatenate([x, np.full(pad, fill, x.dtype)]).reshape(-1, INT8_BLOCK)


def _absmax(x) -> np.ndarray:
    """Per-block max of |x|, NaN if the block holds a NaN."""
    if x.shape[0] == 0:
        return np.zeros(0, np.float32)
    return np.max(np.abs(_blocks(x)), axis=1).astype(np.float32)   # np.max propagates NaN


def int8_encode(m):
    """First moment -> (int8 codes, per-block float32 absmax): linear code, ties to even."""
    m = np.ascontiguousarray(m, dtype=np.float32).reshape(-1)
    scale = _absmax(m)
    with np.errstate(invalid="ignore", divide="ignore"):
        # per block, the float32 factor 127 / absmax (0 for a zero or NaN scale)
        inv = np.where(scale > 0, np.float32(_I8_QMAX) / np.where(scale > 0, scale, 1),
                       np.float32(0)).astype(np.float32)
        y = m * np.repeat(inv, INT8_BLOCK)[:m.shape[0]]
        q = np.clip(np.rint(y), -127, 127)
    return np.where(np.isnan(q), 0, q).astype(np.int8), scale


def int8_decode(q, scale) -> np.ndarray:
    """int8 codes and per-block absmax -> float32 first moment."""
    q = np.asarray(q).reshape(-1)
    step = np.asarray(scale, np.float32) / np.float32(_I8_QMAX)
    return q.astype(np.float32) * np.repeat(step, INT8_BLOCK)[:q.shape[0]]


def log8_encode(v):
    """Second moment (>= 0) -> (uint8 log codes, per-block float32 max)."""
    v = np.ascontiguousarray(v, dtype=np.float32).reshape(-1)
    scale = _absmax(v)
    with np.errstate(invalid="ignore", divide="ignore"):
        inv = np.where(scale > 0, np.float32(1) / np.where(scale > 0, scale, 1),
                       np.float32(0)).astype(np.float32)
        x = np.abs(v * np.repeat(inv, INT8_BLOCK)[:v.shape[0]]).astype(np.float32)
    # x in [0, 1]: write it with its mantissa rounded to 4 bits (nearest, ties up),
    # then read exponent e and mantissa f: x ~ 2**(e-127) * (1 + f/16)
    u = x.view(np.uint32).astype(np.int64)
    r = (u + 0x40000) >> 19                             # = e * 16 + f
    code = np.clip(r - (112 << 4), 1, 240)              # e = 112 is 2**-15
    code = np.where(np.isnan(x), 240, code)
    code = np.where(x == 0, 0, code)
    return code.astype(np.uint8), scale


def log8_decode(q, scale) -> np.ndarray:
    """uint8 log codes and per-block max -> float32 second moment."""
    q = np.asarray(q).reshape(-1).astype(np.int64)
    e = (q >> 4) - 15
    f = (q & 15).astype(np.float32)
    x = np.ldexp(np.float32(1) + f / np.float32(16), e.astype(np.int32)).astype(np.float32)
    x = np.where(q == 0, np.float32(0), x)
    return x * np.repeat(np.asarray(scale, np.float32), INT8_BLOCK)[:q.shape[0]]


def decode_state(state_dtype: str, state: dict) -> dict:
    """Float32 copies ``{"exp_avg": m, "exp_avg_sq": v}`` of stored Adam state."""
    check_state_dtype(state_dtype)
    if state_dtype == "float32":
        return {"exp_avg": np.array(state["exp_avg"], np.float32),
                "exp_avg_sq": np.array(state["exp_avg_sq"], np.float32)}
    if state_dtype == "bfloat16":
        return {k: bf16_decode(state[k]).reshape(np.shape(state[k]))
                for k in ("exp_avg", "exp_avg_sq")}
    return {"exp_avg": int8_decode(state["exp_avg"], state["exp_avg_scale"]),
            "exp_avg_sq": log8_decode(state["exp_avg_sq"], state["exp_avg_sq_scale"])}


def check_state_arrays(state, layout, state_dtype, shape, how=""):
    """Check the arrays of :func:`state_layout`'s ``layout`` in ``state`` (by name): each
    given, an ndarray of the layout's dtype, of the parameter's ``shape`` (block scales:
    the layout's shape).  ``how`` qualifies the storage in messages."""
    for k, (want, dt) in layout.items():
        a = state.get(k)
        if a is None:
            raise ValueError(f"state_dtype={state_dtype!r} needs the {k} array")
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{k} must be a numpy.ndarray, got {type(a).__name__}")
        if a.dtype != dt:
            raise TypeError(f"{k} has dtype {a.dtype}; {how}state_dtype={state_dtype!r} "
                            f"stores it as {dt}")
        scale = k.endswith("_scale")
        if a.shape != (want if scale else shape):
            raise ValueError(f"{k} has shape {a.shape}, expected {want if scale else shape}"
                             + (" (one float32 scale per 256-element block)" if scale else ""))
