"""fastadam's asv suite: the façade, functional API and kernels of every optimizer, on
every host backend, dtype and size class, against the memory roofline and the peers.

Shared helpers live here; each ``bench_*.py`` holds one family of benchmarks.  Sizes
(flat float params): 4K and 64K (Python/dispatch overhead dominates), 1M (cache
resident), 4M (memory-bound).  Data is built in ``setup`` and every kernel is warmed
there, so no benchmark times a compilation.
"""

import os
import sys

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: code that makes ``import fastadam`` work in a fresh interpreter (timeraw benchmarks)
PATH_SETUP = "pass"
try:                       # benchmark the working tree when fastadam is not installed
    import fastadam  # noqa: F401
except ImportError:
    sys.path.insert(0, REPO_ROOT)
    PATH_SETUP = f"import sys; sys.path.insert(0, {REPO_ROOT!r})"

#: size classes
SIZES = [4096, 65536, 1 << 20, 1 << 22]
SMALL = [4096, 65536]
DTYPES = ["float32", "float64"]

LR, BETAS, EPS = 1e-3, (0.9, 0.999), 1e-8


def optimizers():
    """label -> (façade class name, kwargs, kernel name); one per kernel variant."""
    from fastadam.bench import OPTIMIZERS
    return OPTIMIZERS


def data(n, dtype="float32", seed=0):
    """A parameter and a gradient array of ``n`` elements, aligned as fastadam's own flat
    buffers (``fastadam._alloc``: a page from 64 KiB; NumPy's are 16-byte aligned)."""
    from fastadam import _alloc
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(n).astype(dtype)
    g = (rng.standard_normal(n) * 0.01).astype(dtype)
    return _alloc.copy(p), _alloc.copy(g)


def zeros_like(a):
    """Zeros of ``a``'s shape and dtype, aligned as :func:`data`'s arrays."""
    from fastadam import _alloc
    return _alloc.zeros(a.shape, a.dtype)


def facade(label, n, dtype="float32", backend="auto"):
    """A façade optimizer of ``label`` over one array of ``n`` params, gradients set,
    stepped twice (kernels compiled, state made)."""
    import fastadam
    cls, kwargs, _ = optimizers()[label]
    p, g = data(n, dtype)
    opt = getattr(fastadam, cls)({"w": p}, backend=backend, **kwargs)
    opt.grads["w"][...] = g
    opt.step()
    opt.step()
    return opt


def backend_available(name):
    import fastadam
    return name in fastadam.available_backends()


def torch_or_skip():
    try:
        import torch
    except ImportError:
        raise NotImplementedError("torch is not installed")
    return torch
