"""Host-side facts about the stored formats, shared by the kernels and the layers above.

The codecs of :mod:`fastadam.rules.codecs` and :mod:`fastadam.rules.param_codecs`
say how one element is stored; this module holds the few host-side (whole-array,
per-call) derivations that the kernel launchers and the reduced-precision layer
(:mod:`fastadam.lowp`) both need, so that no kernel module imports a layer above
it:

* :func:`param_format`: the low-precision format of a NumPy dtype;
* :func:`nblocks`, :data:`I8_QMAX`: the int8 quantization blocks of a buffer and the
  code's largest magnitude;
* :func:`sr_seeds`, :func:`param_seed`, :func:`shift_seed`: the stochastic-rounding
  seeds of a step, for a slice whose element 0 is element ``index_base`` of the
  optimizer's buffers.

Plain Python (and a NumPy dtype test); nothing here is compiled, so it is not
part of the rule sources that key the kernel caches.
"""

from __future__ import annotations

import numpy as np

from .codecs import INT8_BLOCK, mix32
from .param_codecs import param_seed as _param_seed

__all__ = ["PARAM_FORMATS", "I8_QMAX", "param_format", "nblocks", "shift_seed", "sr_seeds",
           "param_seed"]

#: The low-precision parameter formats that take float32 master weights.
PARAM_FORMATS = ("float16", "bfloat16")

#: The largest magnitude of the int8 linear code (:func:`fastadam.rules.codecs.lin8_encode`),
#: as the float the kernels take for their ``qmax`` argument.
I8_QMAX = 127.0


def param_format(dtype):
    """``"float16"``, ``"bfloat16"`` (``ml_dtypes.bfloat16``) or None for a NumPy dtype."""
    dtype = np.dtype(dtype)
    if dtype.itemsize != 2:
        return None
    if dtype == np.float16:
        return "float16"
    # ml_dtypes (installed with keras / jax) gives NumPy a bfloat16; recognized
    # without importing it
    if dtype.name == "bfloat16" and dtype.type.__module__.split(".")[0] == "ml_dtypes":
        return "bfloat16"
    return None


def nblocks(n: int) -> int:
    """Number of int8 quantization blocks for ``n`` elements: ``ceil(n / 256)``."""
    return (int(n) + INT8_BLOCK - 1) // INT8_BLOCK


def shift_seed(seed: int, index_base: int) -> int:
    """The seed that gives element ``i`` of a slice the rounding bits of element
    ``index_base + i`` of the whole buffer: ``sr_bits(i, shift_seed(s, b)) ==
    sr_bits(b + i, s)`` (``sr_bits`` hashes ``i * 0x9E3779B1 + seed mod 2**32``)."""
    return (int(seed) + int(index_base) * 0x9E3779B1) & 0xFFFFFFFF


def sr_seeds(step: int, index_base: int = 0):
    """The stochastic-rounding seeds ``(exp_avg, exp_avg_sq)`` of step ``step``, for
    arrays whose element 0 is element ``index_base`` of the optimizer's buffers (so
    that every element has bits of its own, however a step is split into calls)."""
    return (shift_seed(mix32(2 * int(step)), index_base),
            shift_seed(mix32(2 * int(step) + 1), index_base))


def param_seed(step: int, index_base: int = 0) -> int:
    """The stochastic-rounding seed of the parameter copy at step ``step``, for arrays
    whose element 0 is element ``index_base`` of the optimizer's buffers (see
    :func:`sr_seeds`)."""
    return shift_seed(_param_seed(int(step)), index_base)
