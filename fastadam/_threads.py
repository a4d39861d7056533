"""numba's thread count following torch's, for the façades that step torch tensors.

:mod:`fastadam.torch` and :mod:`fastadam.keras` (on Keras' torch backend) call
:func:`follow` with ``torch.get_num_threads()`` before each step, so that the numba
kernels they launch use as many threads as torch's own ops (``1`` in a DataLoader
worker that called ``torch.set_num_threads(1)``).  The count is set per calling thread
(numba's ``set_num_threads`` is thread-local) and only when it changes: while it does
not, a call is one dictionary lookup.  Until the numba kernels are loaded it does
nothing (it never imports numba: the cython and cuda backends follow their own
settings).
"""

from __future__ import annotations

import sys
import threading

_followed = threading.local()        # per thread: the count numba was last given


def follow(n: int) -> None:
    """Let this thread's numba kernels use ``n`` threads (see the module docstring)."""
    if _followed.__dict__.get("n") != n:
        variants = sys.modules.get("fastadam.kernels._variants")
        if variants is not None:
            variants.set_threads(n)
            _followed.n = n
