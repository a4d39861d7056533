"""numba CPU kernels for the Keras rules of :mod:`fastadam.rules.keras`.

The same pattern as :mod:`fastadam.kernels.cpu`: one fused, in-place prange loop
per kernel, the rule inlined; a ``parallel=True`` and a serial variant made
lazily from the same source (serial below
:data:`fastadam._config.PARALLEL_THRESHOLD`); numba's on-disk cache keyed by a
hash of the rule sources (the torch rules and ``rules/keras.py``) and of the
fastmath flags.  Keras Adam/AdamW and Nadam run on :mod:`fastadam.kernels.cpu`'s
``adam``/``adam_amsgrad``/``nadam`` kernels and are not repeated here.

Arguments are 1-D C-contiguous arrays of one dtype followed by the scalars,
already cast to that dtype (flags as bool).
"""

from __future__ import annotations

import hashlib
import pathlib

import numba
from numba import prange

from .. import rules as _rules
from .._config import FASTMATH, PARALLEL_THRESHOLD
from ._variants import KernelVariants, use_parallel
from ..rules import keras as _k


def _inline(f):
    return numba.njit(inline="always", fastmath=FASTMATH, cache=False)(f)


r_rmsprop = _inline(_k.rmsprop)
r_rmsprop_momentum = _inline(_k.rmsprop_momentum)
r_rmsprop_centered = _inline(_k.rmsprop_centered)
r_rmsprop_centered_momentum = _inline(_k.rmsprop_centered_momentum)
r_adagrad = _inline(_k.adagrad)
r_sgd = _inline(_k.sgd)
r_sgd_momentum = _inline(_k.sgd_momentum)
r_adadelta = _inline(_k.adadelta)
r_adamax = _inline(_k.adamax)


# --- the loops -----------------------------------------------------------------

def rmsprop(p, g, vel, s0, s1, s2, s3, s4, s5):
    for i in prange(p.shape[0]):
        p[i], vel[i] = r_rmsprop(p[i], g[i], vel[i], s0, s1, s2, s3, s4, s5)


def rmsprop_momentum(p, g, vel, mom, s0, s1, s2, s3, s4, s5, s6):
    for i in prange(p.shape[0]):
        p[i], vel[i], mom[i] = r_rmsprop_momentum(
            p[i], g[i], vel[i], mom[i], s0, s1, s2, s3, s4, s5, s6)


def rmsprop_centered(p, g, vel, ga, s0, s1, s2, s3, s4, s5):
    for i in prange(p.shape[0]):
        p[i], vel[i], ga[i] = r_rmsprop_centered(
            p[i], g[i], vel[i], ga[i], s0, s1, s2, s3, s4, s5)


def rmsprop_centered_momentum(p, g, vel, ga, mom, s0, s1, s2, s3, s4, s5, s6):
    for i in prange(p.shape[0]):
        p[i], vel[i], ga[i], mom[i] = r_rmsprop_centered_momentum(
            p[i], g[i], vel[i], ga[i], mom[i], s0, s1, s2, s3, s4, s5, s6)


def adagrad(p, g, acc, s0, s1, s2, s3):
    for i in prange(p.shape[0]):
        p[i], acc[i] = r_adagrad(p[i], g[i], acc[i], s0, s1, s2, s3)


def sgd(p, g, s0, s1, s2):
    for i in prange(p.shape[0]):
        p[i] = r_sgd(p[i], g[i], s0, s1, s2)


def sgd_momentum(p, g, m, s0, s1, s2, s3, nesterov):
    for i in prange(p.shape[0]):
        p[i], m[i] = r_sgd_momentum(p[i], g[i], m[i], s0, s1, s2, s3, nesterov)


def adadelta(p, g, ag, ad, s0, s1, s2, s3, s4, s5):
    for i in prange(p.shape[0]):
        p[i], ag[i], ad[i] = r_adadelta(p[i], g[i], ag[i], ad[i], s0, s1, s2, s3, s4, s5)


def adamax(p, g, m, u, s0, s1, s2, s3, s4, s5):
    for i in prange(p.shape[0]):
        p[i], m[i], u[i] = r_adamax(p[i], g[i], m[i], u[i], s0, s1, s2, s3, s4, s5)


KERNEL_NAMES = (
    "rmsprop", "rmsprop_momentum", "rmsprop_centered", "rmsprop_centered_momentum",
    "adagrad", "sgd", "sgd_momentum", "adadelta", "adamax",
)


def _source_hash() -> str:
    h = hashlib.sha256(_rules.source_hash(extra=repr(sorted(FASTMATH))).encode())
    h.update(pathlib.Path(_k.__file__).read_bytes())
    return h.hexdigest()[:12]


# Cache entries are keyed by the rules' sources and the compile flags, which
# numba's own cache check (this file's timestamp) does not see.
_RULES_HASH = _source_hash()
_variants = KernelVariants(globals(), _RULES_HASH, FASTMATH, names=KERNEL_NAMES)
get = _variants.get


def run(name: str, arrays, scalars) -> None:
    """Run Keras kernel ``name`` on 1-D contiguous ``arrays`` with the given scalars."""
    n = arrays[0].shape[0]
    if n < PARALLEL_THRESHOLD:          # the serial loop: safe in threads and after fork
        get(name, False)(*arrays, *scalars)
    else:
        _variants.call(name, use_parallel(n), *arrays, *scalars)
