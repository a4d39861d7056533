r"""Low-precision parameters with float32 master weights (Adam / AdamW).

A float16 or bfloat16 parameter cannot take Adam's small updates: near 1.0
the spacing of bfloat16 is 2**-7 and of float16 2**-10, so an update of
``lr = 1e-4`` rounds away.  With master weights the optimizer keeps a float32
copy ``w`` (the *master*) and updates that; the low-precision parameter
``p`` the model computes with is rewritten from it in the same pass:

.. math::

    g &\leftarrow k\,\mathrm{clamp}(D(g) / s, -c, c) \\
    w, m, v &\leftarrow \mathrm{Adam}(w, g, m, v) \quad\text{(float32,
        :mod:`fastadam.rules.adam`)} \\
    p &\leftarrow R(w)

with :math:`D` the exact decode of the gradient (the parameter's format, or a
float32 gradient as it is), :math:`s, k, c` the optional fused transform of
:mod:`fastadam.lowp`, and :math:`R` the rounding ``param_rounding``:
``"nearest"`` (ties to even; NaN stays NaN, ``\pm\infty`` stay, float16
overflow beyond 65504 gives ``\pm\infty``) or ``"stochastic"`` (up in
magnitude with probability equal to the dropped fraction, so
:math:`E[R(w)] = w`; bits from a hash of (step, element index) with a seed
stream of its own, so runs and checkpoints are reproducible).  The exact
codecs are :mod:`fastadam.rules.param_codecs`.

The master sequence is the float32 Adam sequence on ``D(g)``: bit for bit the
one of :func:`fastadam.functional.adam_` on float32 arrays fed ``D(g)``.

Formats: NumPy ``float16`` arrays, ``ml_dtypes.bfloat16`` arrays (where
ml_dtypes is installed), and torch ``float16`` / ``bfloat16`` tensors through
:mod:`fastadam.torch`.  Moments: ``state_dtype`` ``"float32"`` or
``"bfloat16"`` (``"int8"`` is refused).  Backends: ``numba`` (the fused kernels
of :mod:`fastadam.kernels.cpu_master`) and ``numpy`` (the reference below:
NumPy ``astype`` for float16, NumPy bit operations for bfloat16, sharing no
code with the kernels).

Memory per parameter: low-precision parameter and gradient (2 + 2 bytes),
master (4) and moments (8 float32, or 4 bfloat16): 16 or 12 bytes, against
16 for float32 Adam.  A step reads the gradient (2), the master (4) and the
moments (8, or 4 in bfloat16) and writes the master, the moments and the
low-precision parameter (2; its old value is never read): 28 bytes per
parameter with float32 moments (as float32 Adam), 20 with bfloat16 moments.
"""

from __future__ import annotations

import numpy as np

from .. import _backends, _scalars
from .. import _validate as _v
from ..rules.formats import PARAM_FORMATS, param_format, param_seed, sr_seeds
from . import state as _state

__all__ = ["PARAM_FORMATS", "PARAM_ROUNDINGS", "param_format", "check_rounding",
           "decode_param", "encode_param", "f16_encode_sr", "param_seed"]

PARAM_ROUNDINGS = ("nearest", "stochastic")

_F16_MAX = np.float32(65504.0)


def check_rounding(param_rounding) -> str:
    """Validate ``param_rounding`` (``"nearest"`` or ``"stochastic"``)."""
    if not isinstance(param_rounding, str) or param_rounding not in PARAM_ROUNDINGS:
        raise ValueError(f"Invalid param_rounding: {param_rounding!r}; expected one of "
                         f"{PARAM_ROUNDINGS}")
    return param_rounding


def _bits(a) -> np.ndarray:
    """uint16 view of a 2-byte array (float16, bfloat16 or uint16): a view, never a copy
    (outputs are written through it; callers pass checked C-contiguous arrays)."""
    if not a.flags.c_contiguous:
        raise ValueError("low-precision arrays must be C-contiguous")
    return a.view(np.uint16)


# --- NumPy reference codecs (independent of the kernels and of rules.param_codecs) ----

def decode_param(bits, fmt: str) -> np.ndarray:
    """uint16 bits of ``fmt`` (or a float16 / bfloat16 array) -> float32 (exact)."""
    u = _bits(np.ascontiguousarray(bits))          # read only: a copy is fine here
    if fmt == "float16":
        return u.view(np.float16).astype(np.float32)
    return (u.astype(np.uint32) << np.uint32(16)).view(np.float32)


def f16_encode_sr(x, seed: int) -> np.ndarray:
    """float32 -> float16 bits with stochastic rounding (NumPy reference).

    Element ``i``: with ``r = sr_bits(i, seed)`` (16 bits) and ``q`` the float16
    spacing at ``|x|`` (``2**(e-10)`` for normal ``|x| >= 2**-14``, ``2**-24``
    below), ``|x| = (k + f) q`` with integer ``k`` and ``0 <= f < 1``; the result
    is ``(k + 1) q`` (same sign) if ``r + floor(f * 2**16) >= 2**16``, else
    ``k q``.  That is ``P(up) = floor(f * 2**16) / 2**16``: exactly ``f`` where
    ``f * 2**16`` is an integer, which holds for every ``|x| >= 2**-17``.  NaN,
    inf and ``|x| > 65504`` round to nearest (:meth:`numpy.ndarray.astype`).
    """
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    i = np.arange(x.shape[0], dtype=np.uint64)
    r = (((i * np.uint64(0x9E3779B1) + np.uint64(seed)) & np.uint64(0xFFFFFFFF))
         >> np.uint64(16)).astype(np.float64)
    a = np.abs(x).astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        _, ex = np.frexp(a)                              # a = mant * 2**ex, mant in [0.5, 1)
        q = np.ldexp(1.0, np.maximum(ex - 11, -24))      # float16 spacing at |x|
        k = np.floor(a / q)
        f = a / q - k                                    # exact in float64
        up = r + np.floor(f * 65536.0) >= 65536.0
        y = np.copysign((k + up) * q, x).astype(np.float32)    # on the float16 grid
        special = ~np.isfinite(x) | (np.abs(x) > _F16_MAX)
        y = np.where(special, x, y)
        return y.astype(np.float16).view(np.uint16)


def encode_param(x, fmt: str, rounding: str = "nearest", step: int = 1,
                 index_base: int = 0) -> np.ndarray:
    """float32 master -> uint16 bits of ``fmt`` (NumPy reference).

    ``float16`` nearest: NumPy's ``astype`` (IEEE round to nearest even);
    ``bfloat16`` nearest / stochastic: :func:`fastadam.lowp.bf16_encode` /
    :func:`fastadam.lowp.bf16_encode_sr`; float16 stochastic:
    :func:`f16_encode_sr`.  Stochastic rounding uses the seed
    :func:`param_seed` of ``step``.
    """
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    if rounding == "stochastic":
        seed = param_seed(step, index_base)
        return f16_encode_sr(x, seed) if fmt == "float16" else _state.bf16_encode_sr(x, seed)
    if fmt == "float16":
        with np.errstate(over="ignore"):
            return x.astype(np.float16).view(np.uint16)
    return _state.bf16_encode(x)


# --- checks and the step -----------------------------------------------------------------

def check_arrays(param, grad, master_param, state, state_dtype):
    """Validate a master-weight step's arrays (before any write); flat views by name."""
    for k, a in (("param", param), ("grad", grad), ("master_param", master_param)):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{k} must be a numpy.ndarray, got {type(a).__name__}")
    fmt = param_format(param.dtype)
    if fmt is None and param.dtype in _v.FLOAT_DTYPES:
        raise ValueError(f"master_param is for float16 / bfloat16 parameters; param has dtype "
                         f"{param.dtype} (a float32 parameter is its own master: leave "
                         "master_param out)")
    if fmt is None:
        raise TypeError(f"param has dtype {param.dtype}; master weights need float16 or "
                        "bfloat16 (ml_dtypes) parameters")
    if state_dtype == "int8":
        raise ValueError("state_dtype='int8' is not supported with low-precision parameters "
                         "(master weights); use 'float32' or 'bfloat16'")
    if master_param.dtype != np.float32:
        raise TypeError(f"master_param must have dtype float32, got {master_param.dtype}")
    if grad.dtype != param.dtype and grad.dtype != np.float32:
        raise TypeError(f"grad has dtype {grad.dtype}; with a {param.dtype} param it must be "
                        f"{param.dtype} or float32")
    for k, a in (("grad", grad), ("master_param", master_param)):
        if a.shape != param.shape:
            raise ValueError(f"{k} has shape {a.shape}, but param has {param.shape}")
    layout = _state.state_layout(state_dtype, param.size, np.float32)
    _state.check_state_arrays(state, layout, state_dtype, param.shape, "with master weights, ")
    named = {"param": param, "grad": grad, "master_param": master_param}
    named.update((k, state[k]) for k in layout)
    return _v.in_place_views(named, ["param", "master_param"] + list(layout)), fmt


def step_arrays(be, arrays, hp, *, fmt, rounding="nearest", state_dtype="float32",
                gscale=1.0, clip=float("inf"), index_base=0):
    """One validated master-weight Adam step on flat arrays (internal).

    ``arrays``: ``param`` and ``grad`` (2-byte arrays: float16, bfloat16 or
    their uint16 bits; ``grad`` may be float32), ``master_param`` (float32) and
    the moments of ``state_dtype``; ``fmt`` the parameter format; ``hp``
    validated Adam hyperparameters (no amsgrad).
    """
    w = arrays["master_param"]
    n = w.shape[0]
    if n == 0:
        return
    if hp.get("amsgrad"):
        raise ValueError("amsgrad=True is not supported with low-precision parameters "
                         "(master weights)")
    if state_dtype not in ("float32", "bfloat16"):
        raise ValueError(f"state_dtype={state_dtype!r} is not supported with low-precision "
                         "parameters (master weights); use 'float32' or 'bfloat16'")
    sr = rounding == "stochastic"
    if be.name == "cuda":
        from ..kernels import cuda_lowp_launch
        cuda_lowp_launch.step_arrays(arrays, hp, state_dtype=state_dtype, gscale=gscale,
                                     clip=clip, param_format=fmt, param_rounding=rounding,
                                     index_base=index_base)
        return
    lo = _bits(arrays["param"])
    g = arrays["grad"]
    g = g if g.dtype == np.float32 else _bits(g)
    m, v = arrays["exp_avg"], arrays["exp_avg_sq"]
    if be.name == "numba":
        from ..kernels import cpu_master
        k = "master_f16" if fmt == "float16" else "master_bf16"
        cpu_master.run(k, (lo, g, w, m, v), _scalars.kernel_scalars(
            "master", hp, np.dtype(np.float32), gscale, clip, index_base, sr))
        return
    if be.name != "numpy":
        raise _backends.BackendUnavailableError(
            f"low-precision parameters (master weights) are implemented on the numba and "
            f"numpy backends, not {be.name!r}")
    from .. import reference
    g32 = g if g.dtype == np.float32 else decode_param(g, fmt)
    c = np.float32
    if gscale != 1.0 or clip != float("inf"):
        g32 = np.clip(g32 * c(gscale), -c(clip), c(clip))
    st = _state.decode_state(state_dtype, arrays)
    mm, vv = st["exp_avg"], st["exp_avg_sq"]
    reference.adam_(w, g32, mm, vv, None, **hp)
    if state_dtype == "bfloat16":
        sm, sv = sr_seeds(hp["step"], index_base)
        m[...] = _state.bf16_encode_sr(mm, sm)
        v[...] = _state.bf16_encode_sr(vv, sv)
    else:
        m[...], v[...] = mm, vv
    lo[...] = encode_param(w, fmt, rounding, hp["step"], index_base)


def lo_grad_stats(g, fmt, gscale, clip, backend_name):
    """``(sum of squares of clamp(D(g) * gscale, clip), all finite)`` of a low-precision
    gradient (uint16 bits or a float16 / bfloat16 array).  numba: float32 sums within
    each 256-element block, float64 across blocks (recomputed in float64 if that
    overflows); numpy: float64 throughout."""
    u = _bits(g)
    if backend_name == "numba":
        from ..kernels import cpu_master
        f = np.float32
        s, bad = cpu_master.run("lo_sumsq_f16" if fmt == "float16" else "lo_sumsq_bf16",
                                (u,), (f(gscale), f(clip)))
        ok = bad == 0
        if not ok or np.isfinite(s):
            return float(s), bool(ok)
    x = decode_param(u, fmt)
    ok = bool(np.isfinite(x).all())
    y = np.clip(x.astype(np.float64) * gscale, -clip, clip)
    return float(np.dot(y, y)), ok
