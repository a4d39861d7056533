"""The façades' side of the reduced-precision layer.

:class:`StateBackend` wraps a backend so that a façade's per-buffer
``backend.step(opt, arrays, hp)`` runs Adam with reduced-precision state and / or
low-precision parameters with master weights (and binds the kernel once where it
can); :func:`transformed_step` is the façade's ``step`` with unscaling, inf/NaN
skipping and clipping (two passes: :func:`fastadam.lowp.grad_stats`, then the fused
update).  Both are used by :mod:`fastadam.optim` and :mod:`fastadam.torch`.
"""

from __future__ import annotations

import math

import numpy as np

from .. import _backends, _scalars
from .. import _validate as _v
from . import master as _master
from .step import step_arrays
from .transforms import _f32_stats, _transform_scalars, clip_coef, grad_stats


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
        from ..kernels import cpu_lowp
        par = cpu_lowp.use_parallel(p.shape[0])
        if self.state_dtype == "bfloat16":
            arrs = (p, arrays["grad"], arrays["exp_avg"], arrays["exp_avg_sq"])
            entry = cpu_lowp.entry("adam_bf16", par,
                                   tuple(map(numba.typeof, arrs)) + (u32, u32, f32, f32) + scal_t)

            def f(hp):
                entry(*arrs, *_scalars.kernel_scalars("adam_bf16", hp, _scalars.PythonFloats,
                                                      index_base=self.index_base(p)))
            return f
        arrs = (p, arrays["grad"], arrays["exp_avg"], arrays["exp_avg_scale"],
                arrays["exp_avg_sq"], arrays["exp_avg_sq_scale"])
        entry = cpu_lowp.entry(
            "adam_int8", par, tuple(map(numba.typeof, arrs)) + (numba.intp, f32, f32, f32) + scal_t)

        def f(hp):
            entry(*arrs, cpu_lowp.work_items(par),
                  *_scalars.kernel_scalars("adam_int8", hp, _scalars.PythonFloats))
        return f

    def _bind_master(self, arrays, scal_t):
        """:meth:`bind_state` for low-precision parameters with float32 master weights
        (float32 or bfloat16 moments): the kernel of :func:`fastadam.lowp.master.step_arrays`."""
        import numba

        from ..kernels import cpu_master
        p = arrays["param"]
        fmt = _master.param_format(p.dtype)
        if fmt is None or self.state_dtype not in ("float32", "bfloat16"):
            return None
        g = arrays["grad"]
        arrs = (_master._bits(p), g if g.dtype == np.float32 else _master._bits(g),
                arrays["master_param"], arrays["exp_avg"], arrays["exp_avg_sq"])
        u32, f32 = numba.uint32, numba.float32
        entry = cpu_master.entry(
            "master_f16" if fmt == "float16" else "master_bf16",
            cpu_master.use_parallel(arrs[0].shape[0]),
            tuple(map(numba.typeof, arrs)) + (u32, u32, u32, numba.boolean, f32, f32) + scal_t)
        sr = self.param_rounding == "stochastic"

        def f(hp):
            entry(*arrs, *_scalars.kernel_scalars("master", hp, _scalars.PythonFloats,
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
