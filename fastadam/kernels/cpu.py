"""numba CPU kernels: one fused, in-place loop per optimizer variant.

Every kernel reads each of its arrays once and writes each output once per
element; the per-element math is the rule from :mod:`fastadam.rules`, inlined.
Each kernel exists in two compiled variants, made lazily: the serial loop
below, for small buffers (see :data:`fastadam._config.PARALLEL_THRESHOLD`), and
a ``parallel=True`` one.  Where :data:`fastadam._config.PREFETCH_SUB_BLOCKS` is true, the
parallel one is generated from it by :func:`._blocked.blocked_loop`: the same rule
call, as a plain prange loop up to 8 MiB per array and in prefetched sub-blocks
beyond (measured against the plain prange loop on an Intel Sapphire Rapids VM,
float32: 1.1-1.4x faster at 8M params, 1.05-1.15x at 32M; float64 1.05-1.3x at
4M-16M; the same bits); elsewhere (AMD CPUs: it measured up to 1.4x slower on
aligned buffers) it is the plain loop compiled with ``parallel=True``.  Both use
numba's on-disk cache; the cache entries are keyed by a hash of the rule sources,
of :mod:`._blocked` and of that choice, because numba itself only notices edits to
this file.

Arguments are 1-D C-contiguous arrays of one dtype followed by the scalars of
:mod:`fastadam._scalars`, already cast to that dtype.
"""

from __future__ import annotations

import functools

import numba
from numba import prange

from .. import rules as _rules
from .._config import FASTMATH, PARALLEL_THRESHOLD, PREFETCH_SUB_BLOCKS
from .._scalars import GRADLIST_SUFFIX, gradlist_name
from . import _blocked, _fma  # noqa: F401  (_fma: the rules' fma, for numba)
from ._variants import KernelVariants, use_parallel
from ..rules import adadelta as _adadelta_r
from ..rules import adagrad as _adagrad_r
from ..rules import adam as _adam_r
from ..rules import adamax as _adamax_r
from ..rules import nadam as _nadam_r
from ..rules import rmsprop as _rmsprop_r
from ..rules import sgd as _sgd_r


def _inline(f):
    return numba.njit(inline="always", fastmath=FASTMATH, cache=False)(f)


r_adam = _inline(_adam_r.adam)
r_adam_amsgrad = _inline(_adam_r.adam_amsgrad)
r_rmsprop = _inline(_rmsprop_r.rmsprop)
r_rmsprop_momentum = _inline(_rmsprop_r.rmsprop_momentum)
r_rmsprop_centered = _inline(_rmsprop_r.rmsprop_centered)
r_rmsprop_centered_momentum = _inline(_rmsprop_r.rmsprop_centered_momentum)
r_adagrad = _inline(_adagrad_r.adagrad)
r_sgd = _inline(_sgd_r.sgd)
r_sgd_momentum = _inline(_sgd_r.sgd_momentum)
r_adadelta = _inline(_adadelta_r.adadelta)
r_nadam = _inline(_nadam_r.nadam)
r_adamax = _inline(_adamax_r.adamax)


# --- the loops -----------------------------------------------------------------
# ``*s`` cannot be spread into a numba call element-wise per array, so each loop is
# written out; they differ only in which arrays they read and write.  Each body is one
# rule call, ``r_<name>``, writing every array but the gradient: the form
# _blocked.blocked_loop rewrites into the parallel variant.

def adam(p, g, m, v, s0, s1, s2, s3, s4, s5, s6, s7, s8):
    for i in prange(p.shape[0]):
        p[i], m[i], v[i] = r_adam(p[i], g[i], m[i], v[i], s0, s1, s2, s3, s4, s5, s6, s7, s8)


def adam_amsgrad(p, g, m, v, vmax, s0, s1, s2, s3, s4, s5, s6, s7, s8):
    for i in prange(p.shape[0]):
        p[i], m[i], v[i], vmax[i] = r_adam_amsgrad(
            p[i], g[i], m[i], v[i], vmax[i], s0, s1, s2, s3, s4, s5, s6, s7, s8)


def rmsprop(p, g, sq, s0, s1, s2, s3, s4, s5):
    for i in prange(p.shape[0]):
        p[i], sq[i] = r_rmsprop(p[i], g[i], sq[i], s0, s1, s2, s3, s4, s5)


def rmsprop_momentum(p, g, sq, buf, s0, s1, s2, s3, s4, s5, s6):
    for i in prange(p.shape[0]):
        p[i], sq[i], buf[i] = r_rmsprop_momentum(
            p[i], g[i], sq[i], buf[i], s0, s1, s2, s3, s4, s5, s6)


def rmsprop_centered(p, g, sq, ga, s0, s1, s2, s3, s4, s5, s6):
    for i in prange(p.shape[0]):
        p[i], sq[i], ga[i] = r_rmsprop_centered(p[i], g[i], sq[i], ga[i], s0, s1, s2, s3, s4, s5,
                                                s6)


def rmsprop_centered_momentum(p, g, sq, ga, buf, s0, s1, s2, s3, s4, s5, s6, s7):
    for i in prange(p.shape[0]):
        p[i], sq[i], ga[i], buf[i] = r_rmsprop_centered_momentum(
            p[i], g[i], sq[i], ga[i], buf[i], s0, s1, s2, s3, s4, s5, s6, s7)


def adagrad(p, g, s, s0, s1, s2, s3):
    for i in prange(p.shape[0]):
        p[i], s[i] = r_adagrad(p[i], g[i], s[i], s0, s1, s2, s3)


def sgd(p, g, s0, s1, s2):
    for i in prange(p.shape[0]):
        p[i] = r_sgd(p[i], g[i], s0, s1, s2)


def sgd_momentum(p, g, buf, s0, s1, s2, s3, s4, first, nesterov):
    for i in prange(p.shape[0]):
        p[i], buf[i] = r_sgd_momentum(p[i], g[i], buf[i], s0, s1, s2, s3, s4, first, nesterov)


def adadelta(p, g, sq, acc, s0, s1, s2, s3, s4, s5):
    for i in prange(p.shape[0]):
        p[i], sq[i], acc[i] = r_adadelta(p[i], g[i], sq[i], acc[i], s0, s1, s2, s3, s4, s5)


def nadam(p, g, m, v, s0, s1, s2, s3, s4, s5, s6, s7, s8, s9):
    for i in prange(p.shape[0]):
        p[i], m[i], v[i] = r_nadam(p[i], g[i], m[i], v[i], s0, s1, s2, s3, s4, s5, s6, s7,
                                   s8, s9)


def adamax(p, g, m, u, s0, s1, s2, s3, s4, s5):
    for i in prange(p.shape[0]):
        p[i], m[i], u[i] = r_adamax(p[i], g[i], m[i], u[i], s0, s1, s2, s3, s4, s5)


KERNEL_NAMES = (
    "adam", "adam_amsgrad", "rmsprop", "rmsprop_momentum", "rmsprop_centered",
    "rmsprop_centered_momentum", "adagrad", "sgd", "sgd_momentum", "adadelta", "nadam",
    "adamax",
)
#: The kernels' gradient-list forms (:func:`fastadam._scalars.gradlist_name`), made from
#: the loops above by :func:`._blocked.gradlist_loop` on first use.
GRADLIST_NAMES = tuple(gradlist_name(name) for name in KERNEL_NAMES)


def _parallel_loop(name: str):
    """The parallel variant of kernel ``name``: its loop in the prefetched sub-block
    form of :mod:`._blocked` (the same rule call, the same bits)."""
    from .._scalars import KERNEL_STATES
    return _blocked.blocked_loop(globals()[name], 2 + len(KERNEL_STATES[name]), "r_" + name,
                                 globals())


def _gradlist_loop(name: str):
    """The gradient-list form of kernel ``name[:-len(GRADLIST_SUFFIX)]`` (both variants:
    see :func:`fastadam._scalars.gradlist_name`)."""
    from .._scalars import KERNEL_STATES
    base = name[:-len(GRADLIST_SUFFIX)]
    return _blocked.gradlist_loop(globals()[base], 2 + len(KERNEL_STATES[base]), "r_" + base,
                                  globals(), name)


# Cache entries are keyed by the rules' sources, the sub-block loop's source, whether the
# parallel variants take that form, and the compile flags, which numba's own cache check
# (this file's timestamp) does not see.
_RULES_HASH = (_rules.source_hash(extra=repr(sorted(FASTMATH))) + _blocked.HASH
               + _fma.HASH + ("p" if PREFETCH_SUB_BLOCKS else "n"))
_variants = KernelVariants(
    globals(), _RULES_HASH, FASTMATH, names=KERNEL_NAMES + GRADLIST_NAMES,
    parallel_source=_parallel_loop if PREFETCH_SUB_BLOCKS else None,
    generate=_gradlist_loop)
_compiled = _variants.compiled
get = _variants.get


def _make(name: str, parallel: bool, cache: bool = True):
    """A new dispatcher of kernel ``name``; ``cache=False`` gives one whose generated
    code can be inspected (tests/test_codegen.py), numba refusing that for cached code."""
    return _variants.make(name, parallel, cache)


def bind(name: str, arrays, scalars):
    """A low-overhead caller of kernel ``name`` on fixed ``arrays``: ``f(*scalars)``.

    For callers that step the same buffers again and again (the façades): the
    variant (serial/parallel, by the arrays' length) and the compiled signature are
    resolved once, from ``arrays`` and the sample ``scalars`` (typed as for
    :func:`run`); each call of ``f`` then enters the compiled code directly,
    skipping numba's type dispatch.  ``f`` also takes the scalars as Python floats:
    the entry point converts them to the signature's float type exactly as
    ``dtype.type`` does.  The caller must have checked the arrays (1-D,
    C-contiguous, one dtype, writeable, not overlapping): nothing is checked per call.
    """
    return functools.partial(entry(name, arrays, scalars), *arrays)


def entry(name: str, arrays, scalars):
    """The compiled entry point of kernel ``name`` for arrays and scalars typed as
    ``arrays`` and ``scalars``: ``f(*arrays, *scalars)``, skipping numba's dispatch.

    :func:`bind` without the arrays bound, for a caller that holds no reference to
    them (:mod:`fastadam.functional`'s cached plans).  The caller must check that
    every array it passes has the type of the one it was compiled for (dtype, 1-D,
    C-contiguous, writeability, alignment): the entry point does not.
    """
    sig = tuple(numba.typeof(a) for a in arrays) + tuple(numba.typeof(s) for s in scalars)
    return _variants.entry(name, use_parallel(arrays[0].shape[0]), sig)


def run(name: str, arrays, scalars) -> None:
    """Run kernel ``name`` on 1-D contiguous ``arrays`` with the given scalars."""
    n = arrays[0].shape[0]
    if n < PARALLEL_THRESHOLD:          # the serial loop: safe in threads and after fork
        get(name, False)(*arrays, *scalars)
    else:
        _variants.call(name, use_parallel(n), *arrays, *scalars)
