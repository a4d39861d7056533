"""The transformed step: unscaling, inf/nan skipping and clipping (the AMP pass).

:class:`_TransformMixin` is the part of :class:`~fastadam.torch.base.FlatOptimizer`
that takes ``torch.amp.GradScaler``'s ``grad_scale`` / ``found_inf`` and the
``max_grad_norm`` / ``clip_value`` options: ``_transformed_step`` (a first pass
for the global gradient norm and finiteness when needed, then the kernels with
the transform folded in, or a skipped step) and ``_call_x``, one kernel call of a
reduced-precision-state, low-precision-parameter and/or transformed step over a
CPU bucket (:func:`fastadam.lowp.step_arrays`).
"""

from __future__ import annotations

import math

import torch

from .. import _validate as _v
from .. import lowp as _lowp
from .buffers import _BLOCK, _SCALES
from .hparams import _num
from .sparse import _SparseGrad


class _TransformMixin:
    """Unscaling, inf/nan skipping and clipping of a
    :class:`~fastadam.torch.base.FlatOptimizer`'s step."""

    #: torch.amp.GradScaler sets ``grad_scale`` / ``found_inf`` on the optimizer and calls
    #: ``step()``, which unscales inside the kernel and skips on inf/nan (as torch's fused
    #: Adam); False while a parameter is on CUDA (GradScaler then unscales the gradients).
    _step_supports_amp_scaling = True
    #: clip the global gradient norm / each gradient element in every step (None: off)
    max_grad_norm = None
    clip_value = None
    #: steps skipped because of inf/nan gradients; the last global gradient norm
    skipped_steps = 0
    last_grad_norm = None
    _xf = None          # (gscale, clip) of the kernel calls during a transformed step

    def _transformed_step(self, plans, grad_scale, found_inf):
        """A step with unscaling, inf/nan skipping and clipping (two passes).

        Pass 1 (only with ``max_grad_norm``, or ``grad_scale`` without
        ``found_inf``): :func:`fastadam.lowp.grad_stats` over every gradient the step
        uses -- the global squared norm of ``clamp(g / grad_scale, ±clip_value)``
        and whether every gradient is finite.  Pass 2, unless the step is skipped:
        the kernels with ``g -> clamp(g * coef / grad_scale, ±clip_value * coef)``
        folded in.  A skipped step changes no parameter, state or step count.
        """
        gs = None if grad_scale is None else _v.real("grad_scale", _num("grad_scale",
                                                                          grad_scale))
        clip_value, max_norm = self.clip_value, self.max_grad_norm
        if max_norm is not None:
            max_norm = _v.nonneg("max_grad_norm", max_norm, "max_grad_norm value")
        _lowp._transform_scalars(gs, None, clip_value)          # validate
        if found_inf is not None:
            if isinstance(found_inf, torch.Tensor):
                found_inf = _num("found_inf", found_inf)
            skip = _lowp._found_inf_value(found_inf)
        else:
            skip = False
        if any(p[0].cuda and p[4] for p in plans):
            raise NotImplementedError(
                "fastadam.torch: grad_scale, found_inf, max_grad_norm and clip_value are "
                "implemented for CPU tensors only (with CUDA tensors, torch.amp.GradScaler "
                "unscales the gradients itself; use torch.nn.utils.clip_grad_norm_)")
        if (max_norm is not None or clip_value is not None) and any(
                type(g) is _SparseGrad for p in plans for _, _, g in p[4]):
            raise RuntimeError(f"{type(self).__name__}: max_grad_norm / clip_value are not "
                               "supported with sparse gradients")
        if skip:
            self.skipped_steps += 1
            return
        backs = [self._prepare(*plan) for plan in plans]
        check_inf = max_norm is not None or (gs is not None and found_inf is None)
        sumsq, finite = 0.0, True
        if check_inf:
            grads, formats = [], []
            for b, _, _, _, runs in plans:
                o = b.offsets
                grads.extend(b.host["grad"][o[a]:o[z]] if g is None else
                             g.vals.reshape(-1) if type(g) is _SparseGrad else
                             b._host(g.detach().reshape(-1)) for a, z, g in runs)
                formats.extend(b.fmt for _ in runs)
            sumsq, finite = _lowp.grad_stats(grads, grad_scale=gs, clip_value=clip_value,
                                             formats=formats)
        self.last_grad_norm = math.sqrt(sumsq) if max_norm is not None else None
        if check_inf and not finite:
            self.skipped_steps += 1
            return
        coef = None if max_norm is None else _lowp.clip_coef(math.sqrt(sumsq), max_norm)
        self._xf = _lowp._transform_scalars(gs, coef, clip_value)
        try:
            for (b, rec, _, _, runs), back in zip(plans, backs):
                if runs:
                    hp, kname, names, advances = rec
                    self._run(b, kname, names, hp, advances, runs)
                self._finish(b, back)
        finally:
            self._xf = None

    def _call_x(self, b, names, fhp, lo, hi, g):
        """One call of a reduced-precision-state and/or transformed step over the
        elements ``lo:hi`` of a CPU bucket (``g``: a gradient used in place)."""
        if hi <= lo:
            return
        h = b.host
        named = {"param": h["param"][lo:hi], "grad": h["grad"][lo:hi] if g is None else g}
        for name in names:
            named[name] = h[name][lo:hi]
        if b.sdt == "int8":                 # lo, hi are multiples of the block size
            for name in _SCALES:
                named[name] = h[name][lo // _BLOCK:-(-hi // _BLOCK)]
        if b.fmt:
            named["master_param"] = h["master_param"][lo:hi]
        gscale, clip = self._xf or (1.0, math.inf)
        _lowp.step_arrays(b.backend, self._opt, named, fhp, state_dtype=b.sdt, gscale=gscale,
                          clip=clip, param_format=b.fmt,
                          param_rounding=getattr(self, "_param_rounding", "nearest"),
                          index_base=b.base + lo)
