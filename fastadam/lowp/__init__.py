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
float32 master weights: :mod:`fastadam.lowp.master`).

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

Where things live:

=============================  ==============================================================
:mod:`.state`                  formats, layouts (:func:`state_layout`, :func:`new_state`) and
                               the NumPy reference codecs
:mod:`.master`                 low-precision parameters with float32 master weights
:mod:`.transforms`             the transforms' scalars, :func:`clip_coef`, :func:`grad_stats`
:mod:`.step`                   :func:`adam_` (the array API) and ``step_arrays`` (the kernels)
:mod:`.facade`                 what :mod:`fastadam.optim` and :mod:`fastadam.torch` use:
                               ``StateBackend``, ``transformed_step``
=============================  ==============================================================

The block count, seed derivation and parameter formats that the kernels share live
below this layer, in :mod:`fastadam.rules.formats`; the kernels' scalar arguments in
:func:`fastadam._scalars.kernel_scalars`.
"""

from __future__ import annotations

from ..rules.codecs import INT8_BLOCK
from ..rules.formats import nblocks, shift_seed, sr_seeds
from . import master
from .facade import StateBackend, _found_inf_value, transformed_step
from .state import (STATE_DTYPES, bf16_decode, bf16_encode, bf16_encode_sr, check_state_arrays,
                    check_state_dtype, decode_state, int8_decode, int8_encode, log8_decode,
                    log8_encode, new_state, state_layout)
from .step import adam_, step_arrays
from .transforms import _transform_scalars, clip_coef, grad_stats

__all__ = ["STATE_DTYPES", "INT8_BLOCK", "adam_", "grad_stats", "clip_coef", "state_layout",
           "new_state", "bf16_encode", "bf16_encode_sr", "bf16_decode", "int8_encode",
           "int8_decode",
           "log8_encode", "log8_decode", "decode_state"]
