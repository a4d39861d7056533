r"""Reduced-precision Adam state and fused gradient transforms (unscale, inf check, clipping).

Adam keeps two moments per parameter; in float32 that is 8 bytes per parameter
on top of the parameter itself, and every step moves them through memory
twice.  ``state_dtype`` stores them smaller:

=============  ==========================================  ===============
state_dtype    storage of ``exp_avg`` / ``exp_avg_sq``       state bytes/param
=============  ==========================================  ===============
``float32``    float32 / float32                             8
``bfloat16``   bf16 bit patterns in uint16 / same            4
``int8``       int8 linear codes / uint8 log codes, plus     2 + 8/256
               one float32 absmax per 256-element block
               (``exp_avg_scale``, ``exp_avg_sq_scale``)
=============  ==========================================  ===============

The update is always the float32 Adam rule (:mod:`fastadam.rules.adam`) on
decoded moments; only what is stored is rounded (codecs in
:mod:`fastadam.rules.codecs`): bf16 with stochastic rounding (unbiased; a
pure function of step and index, so reproducible), int8 to nearest.
Parameters and gradients stay float32 (float16 / bfloat16 parameters with
float32 master weights: :mod:`fastadam.master`).

Gradient transforms, fused into the step (one pass, no temporaries on the
numba backend): with ``grad_scale`` ``s``, ``clip_value`` ``c`` and
``clip_coef`` ``k``, the gradient the rule sees is

.. math:: \tilde g = k \cdot \mathrm{clamp}(g / s, -c, c)

(value clipping first, then the norm-clipping factor), computed as
``clamp(g * (k/s), -c k, c k)``.  :func:`grad_stats` is the first pass of a
clipped or scaled step: the sum of squares of ``clamp(g/s, -c, c)``
over a gradient buffer and whether every raw element is finite.  The façade's
``step(grad_scale=..., found_inf=...)`` and ``max_grad_norm`` /
``clip_value`` are built from these two calls (see :mod:`fastadam.optim.base`).

Backends: ``numba`` (the fused kernels of :mod:`fastadam.kernels.cpu_lowp`)
and ``numpy`` (the reference: decode, :func:`fastadam.reference.adam_`,
encode; independent NumPy bit operations, sharing no code with the codecs).
float32 state with only ``grad_scale``/``clip_coef`` also runs on ``cython``
(the factor is folded into the kernels' ``gsign`` scalar).  Device arrays
(``backend="cuda"``, or ``"auto"`` with device arrays) run the kernels of
:mod:`fastadam.kernels.cuda_lowp`: every state dtype, the transforms, master
weights, and :func:`grad_stats` (see docs/cuda.md).
"""

from __future__ import annotations

import math

import numpy as np

from . import _backends, _hparams, _scalars
from . import _validate as _v
from ._config import PARALLEL_THRESHOLD
from .rules.codecs import INT8_BLOCK

__all__ = ["STATE_DTYPES", "INT8_BLOCK", "adam_", "grad_stats", "clip_coef", "state_layout",
           "new_state", "bf16_encode", "bf16_encode_sr", "bf16_decode", "int8_encode",
           "int8_decode",
           "log8_encode", "log8_decode", "decode_state"]

STATE_DTYPES = ("float32", "bfloat16", "int8")
_I8_QMAX = 127.0


def check_state_dtype(state_dtype) -> str:
    if not isinstance(state_dtype, str) or state_dtype not in STATE_DTYPES:
        raise ValueError(f"Invalid state_dtype: {state_dtype!r}; expected one of {STATE_DTYPES}")
    return state_dtype


def nblocks(n: int) -> int:
    """Number of int8 quantization blocks for ``n`` elements: ``ceil(n / 256)``."""
    return (int(n) + INT8_BLOCK - 1) // INT8_BLOCK


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
    return {k: np.zeros(shape, dt) for k, (shape, dt) in layout.items()}


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


def shift_seed(seed: int, index_base: int) -> int:
    """The seed that gives element ``i`` of a slice the rounding bits of element
    ``index_base + i`` of the whole buffer: ``sr_bits(i, shift_seed(s, b)) ==
    sr_bits(b + i, s)`` (``sr_bits`` hashes ``i * 0x9E3779B1 + seed mod 2**32``)."""
    return (int(seed) + int(index_base) * 0x9E3779B1) & 0xFFFFFFFF


def sr_seeds(step: int, index_base: int = 0):
    """The stochastic-rounding seeds ``(exp_avg, exp_avg_sq)`` of step ``step``, for
    arrays whose element 0 is element ``index_base`` of the optimizer's buffers (so
    that every element has bits of its own, however a step is split into calls)."""
    from .rules.codecs import mix32
    return (shift_seed(mix32(2 * int(step)), index_base),
            shift_seed(mix32(2 * int(step) + 1), index_base))


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
    # x in [0, 1]: write it with its mantissa rounded to 4 bits (ties to even),
    # then read exponent e and mantissa f: x ~ 2**(e-127) * (1 + f/16)
    u = x.view(np.uint32).astype(np.int64)
    r = (u + 0x3FFFF + ((u >> 19) & 1)) >> 19          # = e * 16 + f
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


# --- gradient transforms ------------------------------------------------------------

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
    from . import master as _master
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
        from .kernels import cuda_lowp
        return cuda_lowp.grad_stats(grads, formats, gscale, clip, bool(write))
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
    if f is None:
        import numba

        from .kernels import cpu_lowp
        f = _SUMSQ_ENTRIES[key] = cpu_lowp.get("grad_sumsq", key[0]).compile(
            (numba.typeof(g), numba.float32, numba.float32, numba.boolean))
    return f


# --- the step ---------------------------------------------------------------------

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


def _check_arrays(param, grad, state, state_dtype):
    named = {"param": param, "grad": grad}
    for k, a in named.items():
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{k} must be a numpy.ndarray, got {type(a).__name__}")
    if state_dtype != "float32" and param.dtype != np.float32:
        raise TypeError(f"state_dtype={state_dtype!r} needs float32 parameters, got {param.dtype}")
    layout = state_layout(state_dtype, param.size, param.dtype)
    check_state_arrays(state, layout, state_dtype, param.shape)
    if grad.dtype != param.dtype:
        raise TypeError(f"grad has dtype {grad.dtype}, but param has {param.dtype}")
    if grad.shape != param.shape:
        raise ValueError(f"grad has shape {grad.shape}, but param has {param.shape}")
    return _v.in_place_views(dict(named, **{k: state[k] for k in layout}),
                             ["param"] + list(layout))


def adam_(param, grad, exp_avg, exp_avg_sq, *, step, lr, beta1, beta2, eps,
          weight_decay=0.0, decoupled_weight_decay=False, amsgrad=False, max_exp_avg_sq=None,
          maximize=False, state_dtype="bfloat16", exp_avg_scale=None, exp_avg_sq_scale=None,
          grad_scale=None, clip_coef=None, clip_value=None, backend="auto",
          master_param=None, param_rounding="nearest"):
    r"""One Adam / AdamW step with reduced-precision state and/or a fused gradient transform.

    :func:`fastadam.functional.adam_` calls this when ``state_dtype`` is not
    ``"float32"`` or a gradient transform is given; the arguments are the same.

    .. math::

        g &\leftarrow k\,\mathrm{clamp}(g / s, -c, c) \quad\text{(then as Adam:)} \\
        g &\leftarrow \pm g + \lambda_{L2}\theta, \qquad
        \theta \leftarrow \theta(1 - \gamma\lambda_W) \\
        m &\leftarrow D(m) + (1-\beta_1)(g - D(m)), \qquad
        v \leftarrow \beta_2 D(v) + (1-\beta_2) g^2 \\
        \theta &\leftarrow \theta - \frac{\gamma}{1-\beta_1^t}
                 \frac{m}{\sqrt{v}/\sqrt{1-\beta_2^t} + \epsilon} \\
        m, v &\text{ stored as } E(m), E(v)

    with :math:`D`/:math:`E` the decode/encode of ``state_dtype`` (identity
    for float32; see :mod:`fastadam.rules.codecs`), :math:`s` ``grad_scale``,
    :math:`k` ``clip_coef``, :math:`c` ``clip_value``.

    Parameters
    ----------
    param, grad : ndarray
        float32 (float64 allowed only with ``state_dtype="float32"``), same shape.
    exp_avg, exp_avg_sq : ndarray
        ``bfloat16``: uint16 of ``param.shape``; ``int8``: int8 and uint8 of
        ``param.shape``; ``float32``: the parameter dtype.
    exp_avg_scale, exp_avg_sq_scale : ndarray, optional
        ``int8`` only: float32 of shape ``(ceil(param.size / 256),)``, the
        per-block absmax of each moment (zeros initially, with zero codes).
    step, lr, beta1, beta2, eps, weight_decay, decoupled_weight_decay, maximize
        As :func:`fastadam.functional.adam_`.
    amsgrad, max_exp_avg_sq
        Only with ``state_dtype="float32"``.
    state_dtype : {"float32", "bfloat16", "int8"}
    grad_scale : float, optional
        ``s > 0``: the gradient holds ``s * g`` (a loss-scaled AMP gradient).
    clip_coef : float, optional
        ``k >= 0``: a norm-clipping factor (:func:`clip_coef`).
    clip_value : float, optional
        ``c >= 0``: clip by value.
    backend : str, default "auto"
        ``numba`` or ``numpy``; ``cython`` only for float32 state without
        ``clip_value`` (and float32 / float64 parameters); ``cuda`` for device
        arrays (``"auto"`` picks it for them; AMSGrad with ``clip_value`` is
        refused there).
    master_param : ndarray, optional
        float32 master weights of a low-precision ``param`` (NumPy float16 or
        ``ml_dtypes.bfloat16``; required then, refused for a float32 param):
        the rule above runs on ``master_param`` and ``param`` is written as
        its rounding, in the same pass (:mod:`fastadam.master`).  ``grad``
        then has the param's dtype or float32; state ``"float32"`` or
        ``"bfloat16"``.
    param_rounding : {"nearest", "stochastic"}, default "nearest"
        How ``param`` is rounded from ``master_param``.

    Raises
    ------
    TypeError, ValueError
        On a bad argument, before anything is written.
    fastadam.BackendUnavailableError
        On a backend that does not implement the combination.
    """
    state_dtype = check_state_dtype(state_dtype)
    hp = _hparams.adam(step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                       weight_decay=weight_decay, decoupled_weight_decay=decoupled_weight_decay,
                       amsgrad=amsgrad, maximize=maximize)
    if hp["amsgrad"] and state_dtype != "float32":
        raise ValueError(f"amsgrad=True is not supported with state_dtype={state_dtype!r}")
    gscale, clip = _transform_scalars(grad_scale, clip_coef, clip_value)
    state = {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
    from . import master as _master
    rounding = _master.check_rounding(param_rounding)
    if backend == "cuda" or (backend == "auto" and _backends.is_device_array(param)):
        # device arrays: fastadam.kernels.cuda_lowp validates them all, then launches
        if hp["amsgrad"] and max_exp_avg_sq is None:
            raise ValueError("amsgrad=True needs the max_exp_avg_sq array")
        be = _backends.resolve(backend, param)
        from .kernels import cuda_lowp
        state.update(exp_avg_scale=exp_avg_scale, exp_avg_sq_scale=exp_avg_sq_scale,
                     max_exp_avg_sq=max_exp_avg_sq)
        cuda_lowp.adam_(param, grad, state, master_param, hp, state_dtype=state_dtype,
                        gscale=gscale, clip=clip, rounding=rounding)
        return
    lowp_param = isinstance(param, np.ndarray) and _master.param_format(param.dtype) is not None
    if master_param is not None or lowp_param:
        if master_param is None:
            raise TypeError(f"param has dtype {param.dtype}: low-precision parameters need "
                            "master_param (float32 master weights of the same shape); "
                            "without it param must have dtype float32 or float64")
        if hp["amsgrad"]:
            raise ValueError("amsgrad=True is not supported with low-precision parameters "
                             "(master weights)")
        arrays, fmt = _master.check_arrays(param, grad, master_param, state, state_dtype)
        be = _backends.resolve(backend, param)
        step_arrays(be, "adam", arrays, hp, state_dtype=state_dtype, gscale=gscale, clip=clip,
                    param_format=fmt, param_rounding=rounding)
        return
    if rounding != "nearest":
        raise ValueError("param_rounding applies to low-precision parameters with "
                         "master_param only")
    if state_dtype == "int8":
        state["exp_avg_scale"] = exp_avg_scale
        state["exp_avg_sq_scale"] = exp_avg_sq_scale
    if hp["amsgrad"]:
        if max_exp_avg_sq is None:
            raise ValueError("amsgrad=True needs the max_exp_avg_sq array")
        if not isinstance(param, np.ndarray):
            raise TypeError(f"param must be a numpy.ndarray, got {type(param).__name__}")
        arrays = _v.host_arrays({"param": param, "grad": grad, "exp_avg": exp_avg,
                                 "exp_avg_sq": exp_avg_sq, "max_exp_avg_sq": max_exp_avg_sq},
                                ("param", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"))
    else:
        if state_dtype == "float32" and isinstance(param, np.ndarray) and \
                param.dtype not in _v.FLOAT_DTYPES:
            raise TypeError(f"param must have dtype float32 or float64, got {param.dtype}")
        arrays = _check_arrays(param, grad, state, state_dtype)
    be = _backends.resolve(backend, param)
    step_arrays(be, "adam", arrays, hp, state_dtype=state_dtype, gscale=gscale, clip=clip)


def step_arrays(be, opt, arrays, hp, *, state_dtype="float32", gscale=1.0, clip=math.inf,
                param_format=None, param_rounding="nearest", index_base=0):
    """Run one validated step on flat arrays with a gradient transform (internal).

    ``be`` a resolved backend, ``opt`` the :mod:`fastadam._scalars` step name,
    ``arrays`` flat arrays by state name, ``hp`` validated hyperparameters,
    ``g -> clamp(g * gscale, clip)`` before the rule.  Used by :func:`adam_` and
    the façade; fastadam.torch can call it with ``.numpy()`` views of flat
    CPU tensors.  With ``master_param`` among the arrays (low-precision
    parameters, :mod:`fastadam.master`), ``param_format`` names the format of
    ``param`` (taken from its dtype when None; uint16 bits need it).
    ``index_base``: the index of these arrays' element 0 among all the elements the
    caller steps (a slice of a flat buffer, the buffers of several groups), so that
    stochastic rounding draws different bits for every element (:func:`sr_seeds`).
    """
    p = arrays["param"]
    if be.name == "cuda" and opt == "adam":
        from .kernels import cuda_lowp
        cuda_lowp.step_arrays(arrays, hp, state_dtype=state_dtype, gscale=gscale, clip=clip,
                              param_format=param_format, param_rounding=param_rounding,
                              index_base=index_base)
        return
    if p.shape[0] == 0:
        return
    if "master_param" in arrays:
        from . import master as _master
        if opt != "adam":
            raise TypeError(f"low-precision parameters (master weights) are supported by "
                            f"Adam / AdamW only, not {opt!r}")
        fmt = param_format or _master.param_format(p.dtype)
        _master.step_arrays(be, arrays, hp, fmt=fmt, rounding=param_rounding,
                            state_dtype=state_dtype, gscale=gscale, clip=clip,
                            index_base=index_base)
        return
    lowp = state_dtype != "float32"
    if opt != "adam" and lowp:
        raise ValueError(f"state_dtype={state_dtype!r} is implemented for Adam/AdamW only")
    fused_adam = opt == "adam" and not hp.get("amsgrad") and p.dtype == np.float32
    if be.name == "numba" and fused_adam and (lowp or clip != math.inf):
        from .kernels import cpu_lowp
        if state_dtype == "bfloat16":
            a, k = (p, arrays["grad"], arrays["exp_avg"], arrays["exp_avg_sq"]), "adam_bf16"
        elif state_dtype == "int8":
            a = (p, arrays["grad"], arrays["exp_avg"], arrays["exp_avg_scale"],
                 arrays["exp_avg_sq"], arrays["exp_avg_sq_scale"])
            k = "adam_int8"
        else:
            f = np.float32
            a, k = (p, arrays["grad"], arrays["exp_avg"], arrays["exp_avg_sq"]), "adam_f32"
            cpu_lowp.run(k, a, (f(gscale), f(clip)) + _scalars.adam(p.dtype, **hp)[1])
            return
        cpu_lowp.run(k, a, kernel_scalars(k, hp, p.dtype, gscale, clip, index_base))
        return
    if lowp and be.name != "numpy":
        raise _backends.BackendUnavailableError(
            f"state_dtype={state_dtype!r} is implemented on the numba and numpy backends, "
            f"not {be.name!r}")
    if not lowp and clip == math.inf and hasattr(be, "run"):
        # compiled backend, float32 state: fold the factor into gsign (scalar 0)
        kname, scal = getattr(_scalars, opt)(p.dtype, **hp)
        if gscale != 1.0:
            scal = _scalars.scale_grad(p.dtype, scal, gscale)
        be.run(kname, (p, arrays["grad"]) + tuple(arrays[s] for s in
                                                   _scalars.KERNEL_STATES[kname]), scal)
        return
    # the reference path (numpy backend, or a combination no compiled kernel fuses):
    # transform a temporary copy of the gradient, decode state to float32 copies
    g = arrays["grad"]
    c = p.dtype.type
    if gscale != 1.0 or clip != math.inf:
        g = np.clip(g * c(gscale), -c(clip), c(clip))
    if not lowp:
        be.step(opt, dict(arrays, grad=g), hp)
        return
    from . import reference
    st = decode_state(state_dtype, arrays)
    m, v = st["exp_avg"], st["exp_avg_sq"]
    reference.adam_(p, g, m, v, None, **hp)
    if state_dtype == "bfloat16":
        sm, sv = sr_seeds(hp["step"], index_base)
        arrays["exp_avg"][...] = bf16_encode_sr(m, sm)
        arrays["exp_avg_sq"][...] = bf16_encode_sr(v, sv)
    else:
        arrays["exp_avg"][...], arrays["exp_avg_scale"][...] = int8_encode(m)
        arrays["exp_avg_sq"][...], arrays["exp_avg_sq_scale"][...] = log8_encode(v)


def kernel_scalars(kernel, hp, dtype, gscale=1.0, clip=math.inf, index_base=0, sr=False):
    """The scalar arguments after the arrays of numba kernel ``kernel`` (``"adam_bf16"``,
    ``"adam_int8"`` without its ``nwork``, or ``"master"``: cpu_master's loops) for a
    step with hyperparameters ``hp``: the transform ``gscale`` / ``clip``, the seeds of
    stochastic rounding (index base ``index_base``; ``sr``: the parameter copy's), then
    :func:`fastadam._scalars.adam`'s.  ``dtype``: ``np.dtype(np.float32)`` (NumPy
    scalars, for numba's dispatch) or :class:`fastadam._scalars.PythonFloats` (Python
    numbers, for an entry point compiled for them, which converts them the same way)."""
    c = dtype.type
    u = int if c is float else np.uint32
    scal = _scalars.adam(dtype, **hp)[1]
    if kernel == "adam_int8":
        return (c(gscale), c(clip), c(_I8_QMAX)) + scal
    sm, sv = sr_seeds(hp["step"], index_base)
    if kernel == "adam_bf16":
        return (u(sm), u(sv), c(gscale), c(clip)) + scal
    from .master import param_seed
    return (u(sm), u(sv), u(param_seed(hp["step"], index_base)), bool(sr), c(gscale),
            c(clip)) + scal


# --- the façade's side ------------------------------------------------------------------

class StateBackend:
    """A backend wrapper that runs Adam with reduced-precision state and/or
    low-precision parameters with master weights (internal).

    The façade calls ``backend.step(opt, arrays, hp)`` per flat buffer; this
    wrapper sends that to :func:`step_arrays` with its ``state_dtype`` and
    ``param_rounding`` (a buffer whose arrays hold ``master_param`` takes the
    master-weight step).  It has no ``bind`` (its kernels take the gradient transform
    as arguments, not folded into ``gsign``); :meth:`bind_state` gives the façade's
    cached plans a bound plain step where the kernel allows one.
    """

    device = False

    def __init__(self, inner, state_dtype, param_rounding="nearest"):
        if inner.name not in ("numba", "numpy"):
            what = (f"state_dtype={state_dtype!r}" if state_dtype != "float32" else
                    "low-precision parameters (master weights)")
            raise _backends.BackendUnavailableError(
                f"{what} is implemented on the numba and numpy backends, not {inner.name!r}")
        self.inner = inner
        self.name = inner.name
        self.state_dtype = state_dtype
        self.param_rounding = param_rounding
        #: id of a flat parameter buffer -> index of its element 0 among all the
        #: optimizer's elements (stochastic rounding draws distinct bits per element;
        #: set by the façade, see fastadam.optim.adam.Adam._wrap_backend)
        self.bases = {}

    def index_base(self, param) -> int:
        """The stochastic-rounding index base of flat buffer ``param`` (0 if unknown)."""
        return self.bases.get(id(param), 0) if self.bases else 0

    def check(self, named, outputs):  # pragma: no cover - the façade owns its arrays
        return self.inner.check(named, outputs)

    def step(self, opt, arrays, hp):
        step_arrays(self.inner, opt, arrays, hp, state_dtype=self.state_dtype,
                    param_rounding=self.param_rounding,
                    index_base=self.index_base(arrays["param"]))

    def bind_state(self, opt, arrays, hp):
        """``f(hp)`` doing :meth:`step` on these ``arrays`` with little Python, or None.

        For the façade's cached plans (:meth:`fastadam.optim.base.Optimizer._prepare`):
        Adam / AdamW without amsgrad on numba, float32 parameters with bfloat16 or int8
        state, or float16 / bfloat16 parameters with master weights.  The kernel's entry
        point is compiled for the arrays' types once and called directly (as
        :func:`fastadam.kernels.cpu.bind`); each call computes the step's scalars and
        stochastic-rounding seeds (the index base looked up then).  The caller has
        checked the arrays; the same bits as :meth:`step`.
        """
        p = arrays["param"]
        if self.inner.name != "numba" or opt != "adam" or hp.get("amsgrad") or p.size == 0:
            return None
        import numba
        f32, u32 = numba.float32, numba.uint32
        scal_t = (f32,) * 9
        if "master_param" in arrays:
            return self._bind_master(arrays, scal_t)
        if self.state_dtype == "float32" or p.dtype != np.float32:
            return None
        from .kernels import cpu_lowp
        par = p.shape[0] >= PARALLEL_THRESHOLD
        if self.state_dtype == "bfloat16":
            arrs = (p, arrays["grad"], arrays["exp_avg"], arrays["exp_avg_sq"])
            entry = cpu_lowp.get("adam_bf16", par).compile(
                tuple(map(numba.typeof, arrs)) + (u32, u32, f32, f32) + scal_t)

            def f(hp):
                entry(*arrs, *kernel_scalars("adam_bf16", hp, _scalars.PythonFloats,
                                             index_base=self.index_base(p)))
            return f
        arrs = (p, arrays["grad"], arrays["exp_avg"], arrays["exp_avg_scale"],
                arrays["exp_avg_sq"], arrays["exp_avg_sq_scale"])
        entry = cpu_lowp.get("adam_int8", par).compile(
            tuple(map(numba.typeof, arrs)) + (numba.intp, f32, f32, f32) + scal_t)

        def f(hp):
            entry(*arrs, cpu_lowp.work_items(par),
                  *kernel_scalars("adam_int8", hp, _scalars.PythonFloats))
        return f

    def _bind_master(self, arrays, scal_t):
        """:meth:`bind_state` for low-precision parameters with float32 master weights
        (float32 or bfloat16 moments): the kernel of :func:`fastadam.master.step_arrays`."""
        import numba

        from . import master as _master
        from .kernels import cpu_master
        p = arrays["param"]
        fmt = _master.param_format(p.dtype)
        if fmt is None or self.state_dtype not in ("float32", "bfloat16"):
            return None
        g = arrays["grad"]
        arrs = (_master._bits(p), g if g.dtype == np.float32 else _master._bits(g),
                arrays["master_param"], arrays["exp_avg"], arrays["exp_avg_sq"])
        u32, f32 = numba.uint32, numba.float32
        entry = cpu_master.get("master_f16" if fmt == "float16" else "master_bf16",
                               arrs[0].shape[0] >= PARALLEL_THRESHOLD).compile(
            tuple(map(numba.typeof, arrs)) + (u32, u32, u32, numba.boolean, f32, f32) + scal_t)
        sr = self.param_rounding == "stochastic"

        def f(hp):
            entry(*arrs, *kernel_scalars("master", hp, _scalars.PythonFloats,
                                         index_base=self.index_base(p), sr=sr))
        return f


def _found_inf_value(found_inf) -> bool:
    if type(found_inf) in (bool, int, float):           # the common case, without NumPy
        return found_inf != 0
    try:
        v = float(np.asarray(found_inf).reshape(-1)[0]) if np.size(found_inf) == 1 else None
    except (TypeError, ValueError):
        v = None
    if v is None:
        raise TypeError(f"found_inf must be a bool or a number (or a 1-element array), got "
                        f"{type(found_inf).__name__}: {found_inf!r}")
    return v != 0.0


def transformed_step(opt, grad_scale=None, found_inf=None, max_grad_norm=None, clip_value=None):
    """The façade's ``step`` with unscaling, inf/nan skipping and clipping (two passes).

    Pass 1 (only where needed): :func:`grad_stats` over every flat gradient
    buffer of every group -- the global squared norm and a finiteness flag.
    Then, unless the step is skipped, pass 2: the fused update of each buffer
    with ``g -> clamp(g * coef / grad_scale, clip_value * coef)``.
    Everything is validated before anything is written; a skipped step
    changes no parameter, state array or step count (and makes no state).
    """
    if max_grad_norm is None:
        max_grad_norm = opt.max_grad_norm
    if clip_value is None:
        clip_value = opt.clip_value
    if max_grad_norm is not None:
        max_grad_norm = _v.nonneg("max_grad_norm", max_grad_norm, "max_grad_norm value")
    gscale1, clip1 = _transform_scalars(grad_scale, None, clip_value)     # validates
    skip = found_inf is not None and _found_inf_value(found_inf)
    # every group validated first; as in the plain step, a buffer whose kernel is bound
    # (numba, float32/float64 state) keeps its cached plan while nothing it depends on
    # changes, and the step is then little Python besides the two kernel calls
    plan = opt._step_plan(prepare=False)
    if skip:
        opt.skipped_steps += 1
        return
    be = opt._backend
    state_dtype = getattr(be, "state_dtype", "float32")
    rounding = getattr(be, "param_rounding", "nearest")
    be = getattr(be, "inner", be)

    def fusable(fb, group):
        from . import master as _master
        if _master.param_format(fb.dtype) is not None:    # master weights: always fused
            return True
        return (be.name == "numba" and opt._opt == "adam" and fb.dtype == np.float32
                and not group.get("amsgrad"))

    check_inf = max_grad_norm is not None or (grad_scale is not None and found_inf is None)
    written = set()
    sumsq, finite = 0.0, True
    if check_inf or (clip_value is not None):
        for i, (gi, group, fb, st, spec, hp, run) in enumerate(plan):
            write = clip_value is not None and not fusable(fb, group)
            if not (check_inf or write) or fb.size == 0:
                continue
            if be.name == "numba" and fb.dtype == np.float32:
                s, ok = _f32_stats(fb.grad, gscale1, clip1, write)
            else:
                s, ok = grad_stats([fb.grad], grad_scale=grad_scale, clip_value=clip_value,
                                   write=write, backend=be.name)
            sumsq += s
            finite = finite and ok
            if write:
                written.add(i)
    opt.last_grad_norm = math.sqrt(sumsq) if max_grad_norm is not None else None
    if check_inf and not finite:
        opt.skipped_steps += 1
        return
    coef = clip_coef(math.sqrt(sumsq), max_grad_norm) if max_grad_norm is not None else 1.0
    gscale2, clip2 = _transform_scalars(grad_scale, coef, clip_value)
    for i, (gi, group, fb, st, spec, hp, run) in enumerate(plan):
        # a buffer whose clamped, unscaled gradient pass 1 wrote back takes the factor only
        gscale, clip = (coef, math.inf) if i in written else (gscale2, clip2)
        bound = clip == math.inf and getattr(opt._buffer_backend(fb), "bind", None)
        if run is None:
            for name, fill in spec.items():
                if name not in st:
                    st[name] = opt._new_state(name, fill, fb)
            if bound:
                run = opt._prepare(gi, fb, st, spec, hp)    # bind the kernel (and cache)
        if run is not None and bound:
            # the bound kernel, the factor folded into gsign (scalar 0) as
            # _scalars.scale_grad does: the entry rounds the Python float product to the
            # buffer's dtype, as dtype.type does there
            fn, scal = run
            fn(scal[0] * gscale, *scal[1:])
        else:
            arrays = {"param": fb.data, "grad": fb.grad}
            for name in spec or opt._buffer_spec(group, fb):
                arrays[name] = st[name]
            base = opt._backend.index_base(fb.data) if hasattr(opt._backend, "index_base") \
                else 0
            step_arrays(be, opt._opt, arrays, hp, state_dtype=state_dtype, gscale=gscale,
                        clip=clip, param_rounding=rounding, index_base=base)
        st["step"] += 1
        opt._after_step(group, st, hp)
