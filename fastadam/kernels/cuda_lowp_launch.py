"""Host side of the CUDA reduced-precision kernels: checks, flat views, launches, steps.

The kernels are :mod:`fastadam.kernels.cuda_lowp`; this module validates device
arrays (numba device arrays, CuPy, torch CUDA tensors, anything with
``__cuda_array_interface__``) for one step without writing anything, takes flat
zero-copy views of them, and launches on the parameter's stream:

* :func:`adam_` and :func:`step_arrays`: ``fastadam.lowp.adam_`` / ``step_arrays``
  on the cuda backend (reduced-precision state, the fused transform, master
  weights);
* :func:`grad_stats`: the first pass of a scaled / clipped step on device buffers.
"""

from __future__ import annotations

import math
import sys

import numpy as np
from numba import cuda

from .. import _errors, _scalars
from ..rules.formats import I8_QMAX, nblocks, param_seed, sr_seeds
from . import cuda as K
from .cuda_lowp import I8_THREADS, RED_THREADS, SIMULATOR, get


# --- device arrays: checks and flat views ----------------------------------------------------

_TORCH_FMT = {"float16": "float16", "bfloat16": "bfloat16"}


def _info(name, a):
    """``(info, fmt)`` of a device array (None if ``a`` is not one); ``fmt`` is
    ``"float16"`` / ``"bfloat16"`` for 2-byte float formats.  Every 2-byte array is
    seen as uint16 bits (a torch ``bfloat16``, ``float16``, ``int16`` or ``uint16``
    tensor: the bits of its elements; ``fmt`` None for the integer types)."""
    t = K._torch_tensor(a)
    if t is not None and t.is_cuda:
        return _torch_info(name, t)
    info = K._info(name, a)
    if info is None:
        return None, None
    fmt = None
    if info.dtype == np.float16:
        fmt = "float16"
    elif info.dtype.itemsize == 2 and (info.dtype.name == "bfloat16" or
                                       info.dtype.kind == "V"):
        # typestr "<V2": bfloat16 (torch's and ml_dtypes' array-interface spelling)
        fmt = "bfloat16"
    return info, fmt


def _torch_info(name, t):
    """:func:`_info` of a torch CUDA tensor."""
    torch = sys.modules["torch"]
    if t.dtype in (torch.float32, torch.float64):
        return K._info(name, t), None
    fmt = _TORCH_FMT.get(str(t.dtype).replace("torch.", ""))
    d = t.detach()
    two = d.element_size() == 2
    if two and d.dtype != torch.int16:
        d = d.view(torch.int16)   # the interface knows no bfloat16; the same bits
    try:
        cai = d.__cuda_array_interface__
    except (TypeError, RuntimeError):
        raise TypeError(f"{name} has torch dtype {t.dtype}, which the cuda backend "
                        "cannot read") from None
    strides = cai.get("strides")
    info = K._Info(t, tuple(cai["shape"]), np.dtype(np.uint16) if two else
                   np.dtype(cai["typestr"]), None if strides is None else tuple(strides),
                   cai["data"][0], bool(cai["data"][1]), ("torch", t.device.index),
                   t.device.index)
    return info, fmt


def _view(info, n, dtype):
    """A flat 1-D numba device array of ``dtype`` over ``info``'s memory (zero copy)."""
    dtype = np.dtype(dtype)
    if SIMULATOR:
        if K._is_numba_device_array(info.obj):
            from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray
            h = info.obj._ary.reshape(n)
            return info.obj.reshape(n) if h.dtype == dtype else FakeCUDAArray(h.view(dtype))
        info.dtype = dtype
        return K._flat_view(info, n)
    if n == 0:  # pragma: no cover - real GPU
        return K._Empty(dtype)
    if K._is_numba_device_array(info.obj) and info.obj.dtype == dtype:  # pragma: no cover
        return info.obj.reshape(n)
    desc = {"shape": (n,), "typestr": dtype.str, "data": (info.ptr, False),  # pragma: no cover
            "strides": None, "version": 2}
    with K._on_device(info.device):  # pragma: no cover - real GPU
        return cuda.from_cuda_array_interface(desc, owner=info.obj, sync=False)


class Checked:
    """Validated flat views by name, the parameter's info (device), the formats, and
    the streams ``(launch stream, other streams)`` of all the arrays."""

    def __init__(self, views, info, fmts, n, streams=(0, ())):
        self.views, self.info, self.fmts, self.n = views, info, fmts, n
        self.streams = streams


def check(named, want, outputs, first_fmt=None):
    """Check device arrays for one step; nothing is written.

    ``named``: arrays by name, the parameter first; ``want``: per name, the allowed
    dtypes (tuple of NumPy dtypes; the formats ``"float16"`` / ``"bfloat16"`` stand for
    2-byte arrays of that format or uint16 bits) and the shape (None: the first
    array's shape).  Refuses host arrays, wrong dtypes or shapes, arrays on another
    device, strided views, read-only outputs and overlapping buffers, with the
    argument's name, as :func:`fastadam.kernels.cuda.check` does.
    """
    items = list(named.items())
    first_name, first = items[0]
    infos, fmts = {}, {}
    for name, a in items:
        info, fmt = _info(name, a)
        if info is None:
            if name == first_name:
                raise TypeError(
                    f"{name} is a host array ({K._kind(a)}); the cuda backend works on device "
                    "arrays exposing __cuda_array_interface__ (numba device arrays, CuPy "
                    "arrays, torch CUDA tensors); use backend='numba' for host arrays")
            raise TypeError(
                f"{name} is a host array ({K._kind(a)}) but {first_name} is a device array "
                f"({K._kind(first)}); all arrays of a step must be on the same device")
        infos[name], fmts[name] = info, fmt
    f = infos[first_name]
    for name, _ in items:
        i = infos[name]
        dts, shape = want[name]
        ok = False
        for d in dts:
            if isinstance(d, str):
                ok = ok or fmts[name] == d or (i.dtype == np.uint16 and fmts[name] is None)
            elif np.dtype(d) == np.uint16:
                # bf16 moments: uint16 bits, or a bfloat16 array (a torch bfloat16 tensor)
                ok = ok or (i.dtype == np.uint16 and fmts[name] in (None, "bfloat16"))
            else:
                ok = ok or (i.dtype == np.dtype(d) and fmts[name] is None)
        if not ok:
            what = fmts[name] or i.dtype
            names = " or ".join(d if isinstance(d, str) else
                                "uint16 (bfloat16 bits)" if np.dtype(d) == np.uint16 else
                                str(np.dtype(d)) for d in dts)
            raise TypeError(f"{name} has dtype {what}; expected {names}")
        want_shape = f.shape if shape is None else shape
        if i.shape != want_shape and not (shape is not None and i.size == math.prod(shape)
                                          and len(i.shape) == 1):
            raise ValueError(f"{name} has shape {i.shape}, expected {want_shape}")
        if i.device is not None and f.device is not None and i.device != f.device:
            raise ValueError(f"{name} is on device {i.device}, but {first_name} is on device "
                             f"{f.device}; all arrays of a step must be on one device")
        if not i.c_contiguous():
            raise ValueError(f"{name} is not C-contiguous (a strided view); fastadam updates "
                             "buffers in place: pass a contiguous array")
        if name in outputs and i.readonly:
            raise ValueError(f"{name} is read-only; it is updated in place")
    for k, (n1, _) in enumerate(items):
        for n2, _ in items[k + 1:]:
            if n1 not in outputs and n2 not in outputs:
                continue
            a, b = infos[n1], infos[n2]
            la, lb = a.size * a.dtype.itemsize, b.size * b.dtype.itemsize
            if la and lb and a.ptr < b.ptr + lb and b.ptr < a.ptr + la:
                raise ValueError(f"{n1} and {n2} overlap in memory; each buffer of a step "
                                 "must be distinct")
    views = {}
    for name, _ in items:
        i = infos[name]
        dt = np.dtype(np.uint16) if fmts[name] is not None else i.dtype
        views[name] = _view(i, i.size, dt)
    # the launch view carries the streams of every array (cuda.py's AMSGrad kernel)
    views[first_name] = K._with_stream(views[first_name], [infos[n] for n, _ in items])
    if first_fmt is None:
        first_fmt = fmts[first_name]
    return Checked(views, f, dict(fmts, **{first_name: first_fmt}), f.size,
                   K._streams_of_view(views[first_name]) if f.size else (0, ()))


def _launch(name, c, args, threads=None, blocks=None):
    if c.n == 0:
        return
    k = get(name)
    stream, joins = c.streams
    with K._on_device(c.info.device):
        if threads is None:
            blocks, threads = K.grid_size(c.n)
        K.launch(k, blocks, threads, stream, args, joins)


def _blocks_for(n, threads):
    return max(1, min(-(-n // threads), K._max_blocks(threads)))


# --- steps ---------------------------------------------------------------------------------

_FLOAT = (np.float32, np.float64)


def adam_step(c: Checked, hp, state_dtype, gscale, clip, index_base=0):
    """One validated Adam step on checked device arrays (``param``, ``grad``, moments)."""
    v = c.views
    p = v["param"]
    dt = np.dtype(p.dtype)
    _, scal = _scalars.adam(dt, **hp)
    if c.n == 0:
        return
    if hp.get("amsgrad"):
        # float32 state only: fold the factor into gsign (clip refused by the caller)
        kname, scal = _scalars.adam(dt, **hp)
        if gscale != 1.0:
            scal = _scalars.scale_grad(dt, scal, gscale)
        K.run(kname, (p, v["grad"], v["exp_avg"], v["exp_avg_sq"], v["max_exp_avg_sq"]), scal)
        return
    f = dt.type
    if state_dtype == "bfloat16":
        sm, sv = sr_seeds(hp["step"], index_base)
        args = (p, v["grad"], v["exp_avg"], v["exp_avg_sq"], int(sm), int(sv),
                f(gscale), f(clip)) + scal
        _launch("adam_bf16", c, args)
    elif state_dtype == "int8":
        args = (p, v["grad"], v["exp_avg"], v["exp_avg_scale"], v["exp_avg_sq"],
                v["exp_avg_sq_scale"], f(gscale), f(clip), f(I8_QMAX)) + scal
        nb = nblocks(c.n)
        _launch("adam_int8", c, args, I8_THREADS,
                max(1, min(nb, K._max_blocks(I8_THREADS))))
    else:
        args = (p, v["grad"], v["exp_avg"], v["exp_avg_sq"], f(gscale), f(clip)) + scal
        _launch("adam_t", c, args)


def master_step(c: Checked, hp, fmt, rounding, state_dtype, gscale, clip, index_base=0):
    """One validated master-weight Adam step on checked device arrays."""
    if c.n == 0:
        return
    v = c.views
    gfmt = c.fmts["grad"] if v["grad"].dtype == np.uint16 else None
    if gfmt is None and v["grad"].dtype == np.uint16:
        gfmt = fmt
    name = f"master_{fmt}_g{gfmt or 'float32'}_s{state_dtype}"
    _, scal = _scalars.adam(np.dtype(np.float32), **hp)
    sm, sv = sr_seeds(hp["step"], index_base)
    f = np.float32
    args = (v["param"], v["grad"], v["master_param"], v["exp_avg"], v["exp_avg_sq"],
            int(sm), int(sv), int(param_seed(hp["step"], index_base)),
            rounding == "stochastic",
            f(gscale), f(clip)) + scal
    _launch(name, c, args)


# --- the entry points used by fastadam.lowp ---------------------------------------------------

def adam_(param, grad, state, master_param, hp, *, state_dtype, gscale, clip, rounding,
          param_format=None, index_base=0):
    """Validate device arrays and run one Adam step (``fastadam.lowp.adam_`` on cuda).

    ``state``: ``exp_avg``, ``exp_avg_sq`` (+ the int8 scales, + ``max_exp_avg_sq``
    for AMSGrad).  Everything is checked before the launch.
    """
    n = _size(param)
    if master_param is not None or _is_lowp(param):
        if master_param is None:
            raise TypeError("param is a float16 / bfloat16 device array: low-precision "
                            "parameters need master_param (float32 master weights)")
        if hp.get("amsgrad"):
            raise ValueError("amsgrad=True is not supported with low-precision parameters "
                             "(master weights)")
        if state_dtype == "int8":
            raise ValueError("state_dtype='int8' is not supported with low-precision "
                             "parameters (master weights); use 'float32' or 'bfloat16'")
        sdt = np.uint16 if state_dtype == "bfloat16" else np.float32
        lo = ("float16", "bfloat16")
        named = {"param": param, "grad": grad, "master_param": master_param,
                 "exp_avg": state["exp_avg"], "exp_avg_sq": state["exp_avg_sq"]}
        want = {"param": (lo, None), "grad": (lo + (np.float32,), None),
                "master_param": ((np.float32,), None), "exp_avg": ((sdt,), None),
                "exp_avg_sq": ((sdt,), None)}
        c = check(named, want, ("param", "master_param", "exp_avg", "exp_avg_sq"),
                  first_fmt=param_format)
        fmt = c.fmts["param"]
        if fmt is None:
            raise TypeError("param holds uint16 bits of an unnamed format; pass a float16 "
                            "array (or a torch bfloat16 tensor), or param_format")
        gf = c.fmts["grad"]
        if gf is not None and gf != fmt:
            raise TypeError(f"grad is {gf} but param is {fmt}; grad must have the param's "
                            "format or be float32")
        master_step(c, hp, fmt, rounding, state_dtype, gscale, clip, index_base)
        return
    if rounding != "nearest":
        raise ValueError("param_rounding applies to low-precision parameters with "
                         "master_param only")
    if state_dtype != "float32":
        ps = ((np.float32,), None)
    else:
        ps = (_FLOAT, None)
    named = {"param": param, "grad": grad}
    want = {"param": ps, "grad": ps}
    if state_dtype == "float32":
        keys = ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if hp.get("amsgrad") else [])
        if hp.get("amsgrad") and clip != math.inf:
            raise _errors.BackendUnavailableError("amsgrad=True with clip_value is not implemented "
                                          "on the cuda backend")
        for k in keys:
            named[k], want[k] = state[k], ps
    elif state_dtype == "bfloat16":
        for k in ("exp_avg", "exp_avg_sq"):
            named[k], want[k] = state[k], ((np.uint16,), None)
    else:
        nb = (nblocks(n),)
        for k, dt, shape in (("exp_avg", np.int8, None), ("exp_avg_scale", np.float32, nb),
                             ("exp_avg_sq", np.uint8, None),
                             ("exp_avg_sq_scale", np.float32, nb)):
            if state.get(k) is None:
                raise ValueError(f"state_dtype='int8' needs the {k} array")
            named[k], want[k] = state[k], ((dt,), shape)
    for k in named:
        if named[k] is None:
            raise ValueError(f"state_dtype={state_dtype!r} needs the {k} array")
    c = check(named, want, tuple(k for k in named if k != "grad"))
    if c.views["param"].dtype != c.views["grad"].dtype:
        raise TypeError(f"grad has dtype {c.views['grad'].dtype}, but param has "
                        f"{c.views['param'].dtype}")
    for k in named:
        if k not in ("param", "grad") and state_dtype == "float32" and \
                c.views[k].dtype != c.views["param"].dtype:
            raise TypeError(f"{k} has dtype {c.views[k].dtype}, but param has "
                            f"{c.views['param'].dtype}")
    adam_step(c, hp, state_dtype, gscale, clip, index_base)


def _size(a):
    info, _ = _info("param", a)
    return 0 if info is None else info.size


def _is_lowp(a):
    info, fmt = _info("param", a)
    return fmt is not None


def step_arrays(arrays, hp, *, state_dtype, gscale, clip, param_format=None,
                param_rounding="nearest", index_base=0):
    """``fastadam.lowp.step_arrays`` on the cuda backend (Adam only): flat device arrays
    by state name, checked here (cheaply) and launched."""
    state = {k: a for k, a in arrays.items() if k not in ("param", "grad", "master_param")}
    adam_(arrays["param"], arrays["grad"], state, arrays.get("master_param"), hp,
          state_dtype=state_dtype, gscale=gscale, clip=clip, rounding=param_rounding,
          param_format=param_format, index_base=index_base)


def grad_stats(grads, formats, gscale, clip, write):
    """``(sum of squares, all finite)`` of device gradient buffers (see
    :func:`fastadam.lowp.grad_stats`).

    Every buffer is checked first.  Then, per device (the gradients may be on
    several), one reduction kernel per buffer writes its per-block partial sums
    into slots of its own, one more adds them in a fixed order, and the host
    reads 2 numbers per device, which it adds in the order the devices first
    appear in ``grads``: the result is the same bits run after run.  The work of
    a device goes on the stream of its first gradient, after the work pending on
    its other gradients' streams.
    """
    checked = []
    for k, g in enumerate(grads):
        fmt = formats[k]
        c = check({f"grads[{k}]": g}, {f"grads[{k}]": (("float16", "bfloat16") + _FLOAT, None)},
                  (f"grads[{k}]",) if write else (), first_fmt=fmt)
        gf = c.fmts[f"grads[{k}]"]
        view = c.views[f"grads[{k}]"]
        if view.dtype == np.uint16 and gf is None:
            raise TypeError(f"grads[{k}] holds uint16 bits: name their format in formats")
        if gf is not None and write:
            raise ValueError("write=True needs float32/float64 gradients")
        checked.append((c, view, gf))
    by_device = {}
    for item in checked:
        if item[0].n:
            by_device.setdefault(item[0].info.device, []).append(item)
    if not by_device:
        return 0.0, True
    pending = [_sumsq_on(dev, items, gscale, clip, write)
               for dev, items in by_device.items()]
    total, bad = 0.0, 0.0
    for dev, fetch in pending:
        with K._on_device(dev):
            s, b = fetch()
        total += s
        bad += b
    return total, bad == 0


def _sumsq_on(dev, items, gscale, clip, write):
    """Queue the reduction of the gradients ``items`` of device ``dev``; returns
    ``(dev, fetch)``, ``fetch()`` waiting for and returning ``(sum, non-finite count)``."""
    with K._on_device(dev):
        stream, joins = K._streams([c.info.stream for c, _, _ in items])
        slots = [_blocks_for(c.n, RED_THREADS) for c, _, _ in items]
        m = sum(slots)
        part, out, hout = _stats_arrays(dev, m)
        for s in joins:
            K._order(s, stream)
        base = 0
        for (c, g, gf), nb in zip(items, slots):
            dt = np.dtype(np.float32) if gf is not None else np.dtype(g.dtype)
            f = dt.type
            args = (g, np.float64(0), f(np.finfo(dt).max), f(gscale), f(clip), bool(write),
                    part, np.int64(base))
            K.launch(get(f"sumsq_{gf or 'float'}"), nb, RED_THREADS, stream, args)
            base += nb
        K.launch(get("sumsq_total"), 1, RED_THREADS, stream,
                 (part, np.int64(m), np.float64(0), out))
        if SIMULATOR:
            res = out.copy_to_host()
        else:  # pragma: no cover - real GPU
            out.copy_to_host(hout, stream=stream)
        for s in joins:
            K._order(stream, s)

    def fetch():
        if SIMULATOR:
            r = res
        else:  # pragma: no cover - real GPU
            if stream:          # (on the default stream the copy itself was synchronous)
                stream.synchronize()
            r = hout.copy()
        return float(r[0]), float(r[1])
    return dev, fetch


def _stats_arrays(dev, m):
    """The partials (2 x >= m float64), the 2-element total and its pinned host copy of
    device ``dev``: made once and grown as needed (calls from several host threads at
    once are not supported)."""
    if SIMULATOR:
        return (cuda.to_device(np.zeros((2, m), np.float64)),
                cuda.to_device(np.zeros(2, np.float64)), None)
    buf = _stats_buffers.get(dev)  # pragma: no cover - real GPU
    if buf is None or buf[0].shape[1] < m:  # pragma: no cover - real GPU
        cap = 1 << max(10, (m - 1).bit_length())
        if buf is not None:
            cuda.synchronize()      # the old arrays may still be read by queued work
        buf = _stats_buffers[dev] = (cuda.device_array((2, cap), np.float64),
                                     cuda.device_array(2, np.float64),
                                     cuda.pinned_array(2, np.float64))
    return buf  # pragma: no cover - real GPU


#: Per device: the partials, the total and its pinned host copy of grad_stats.
_stats_buffers: dict = {}
