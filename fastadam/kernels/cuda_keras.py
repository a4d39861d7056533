"""numba CUDA kernels for the Keras rules of :mod:`fastadam.rules.keras`.

The CUDA twin of :mod:`fastadam.kernels.cpu_keras`, built as
:mod:`fastadam.kernels.cuda` builds its own: each rule wrapped once as a
``cuda.jit(device=True)`` function (:func:`fastadam.kernels.cuda._device`), one
fused, in-place grid-stride loop per kernel with 64-bit indices, compiled
lazily on first launch and cached on disk under a name that carries the hash of
the rule sources (:func:`fastadam.kernels.cuda.jit_kernel`).  Launching is
:mod:`fastadam.kernels.cuda`'s (:func:`fastadam.kernels.cuda.run_with`): the
same arrays (flat views from :func:`fastadam.kernels.cuda.check`, or raw
contiguous device arrays: torch CUDA tensors, CuPy or numba device arrays),
the same checks, streams, grid size and launch.

Keras Adam/AdamW and Nadam run on :mod:`fastadam.kernels.cuda`'s ``adam`` /
``adam_amsgrad`` / ``nadam`` kernels with Keras' per-step scalars and are not
repeated here.  Arguments are 1-D arrays of one dtype followed by the scalars,
already cast to that dtype (flags as bool), in the order of the rules.

Under numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) the same kernels run in
Python threads on host memory; ``tests/test_cuda_keras.py`` checks them there
against :mod:`fastadam.kernels.cpu_keras`.
"""

from __future__ import annotations

import hashlib
import pathlib

from numba import cuda

from .. import rules as _rules
from ..rules import keras as _k
from . import cuda as _cu

r_rmsprop = _cu._device(_k.rmsprop)
r_rmsprop_momentum = _cu._device(_k.rmsprop_momentum)
r_rmsprop_centered = _cu._device(_k.rmsprop_centered)
r_rmsprop_centered_momentum = _cu._device(_k.rmsprop_centered_momentum)
r_adagrad = _cu._device(_k.adagrad)
r_sgd = _cu._device(_k.sgd)
r_sgd_momentum = _cu._device(_k.sgd_momentum)
r_adadelta = _cu._device(_k.adadelta)
r_adamax = _cu._device(_k.adamax)


# --- the loops (grid-stride, int64 indices: see fastadam.kernels.cuda) ---------------

def rmsprop(p, g, vel, s0, s1, s2, s3, s4, s5):
    for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
        p[i], vel[i] = r_rmsprop(p[i], g[i], vel[i], s0, s1, s2, s3, s4, s5)


def rmsprop_momentum(p, g, vel, mom, s0, s1, s2, s3, s4, s5, s6):
    for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
        p[i], vel[i], mom[i] = r_rmsprop_momentum(
            p[i], g[i], vel[i], mom[i], s0, s1, s2, s3, s4, s5, s6)


def rmsprop_centered(p, g, vel, ga, s0, s1, s2, s3, s4, s5):
    for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
        p[i], vel[i], ga[i] = r_rmsprop_centered(
            p[i], g[i], vel[i], ga[i], s0, s1, s2, s3, s4, s5)


def rmsprop_centered_momentum(p, g, vel, ga, mom, s0, s1, s2, s3, s4, s5, s6):
    for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
        p[i], vel[i], ga[i], mom[i] = r_rmsprop_centered_momentum(
            p[i], g[i], vel[i], ga[i], mom[i], s0, s1, s2, s3, s4, s5, s6)


def adagrad(p, g, acc, s0, s1, s2, s3):
    for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
        p[i], acc[i] = r_adagrad(p[i], g[i], acc[i], s0, s1, s2, s3)


def sgd(p, g, s0, s1, s2):
    for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
        p[i] = r_sgd(p[i], g[i], s0, s1, s2)


def sgd_momentum(p, g, m, s0, s1, s2, s3, nesterov):
    for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
        p[i], m[i] = r_sgd_momentum(p[i], g[i], m[i], s0, s1, s2, s3, nesterov)


def adadelta(p, g, ag, ad, s0, s1, s2, s3, s4, s5):
    for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
        p[i], ag[i], ad[i] = r_adadelta(p[i], g[i], ag[i], ad[i], s0, s1, s2, s3, s4, s5)


def adamax(p, g, m, u, s0, s1, s2, s3, s4, s5):
    for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
        p[i], m[i], u[i] = r_adamax(p[i], g[i], m[i], u[i], s0, s1, s2, s3, s4, s5)


#: the kernels, named as in :mod:`fastadam.kernels.cpu_keras`
KERNEL_NAMES = (
    "rmsprop", "rmsprop_momentum", "rmsprop_centered", "rmsprop_centered_momentum",
    "adagrad", "sgd", "sgd_momentum", "adadelta", "adamax",
)


def _source_hash() -> str:
    h = hashlib.sha256(_rules.source_hash(extra="cuda_keras").encode())
    h.update(pathlib.Path(_k.__file__).read_bytes())
    return h.hexdigest()[:12]


_RULES_HASH = _source_hash()
_compiled: dict = {}


def get(name: str):
    """The dispatcher of Keras kernel ``name`` (made lazily, compiled on its first launch)."""
    k = _compiled.get(name)
    if k is None:
        if name not in KERNEL_NAMES:
            raise KeyError(f"no cuda_keras kernel named {name!r}")
        k = _compiled[name] = _cu.jit_kernel(globals()[name], "_cudakeras_" + _RULES_HASH)
    return k


def run(name: str, arrays, scalars) -> None:
    """Launch Keras kernel ``name`` on device ``arrays`` with the given scalars.

    Asynchronous, on the first array's stream after the work pending on the
    others' (:func:`fastadam.kernels.cuda.run_with`); ``arrays`` and
    ``scalars`` as for :func:`fastadam.kernels.cpu_keras.run`.
    """
    _cu.run_with(get, name, arrays, scalars)
