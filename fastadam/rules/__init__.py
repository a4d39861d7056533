"""Per-element update rules, one module per optimizer family.

Each rule is a plain Python function of scalars that returns the new values of
the parameter and of every state element.  The rules are the *single* definition
of the per-element math: :mod:`fastadam.kernels.cpu` compiles them with
``numba.njit(inline="always")`` into its loops and the CUDA backend wraps them as
``cuda.jit(device=True)`` functions.  The Cython backend cannot import Python
functions, so its inline C functions are *generated* from these sources at build
time (``fastadam/_cython/_codegen.py``); cross-backend parity tests keep them equal.

Conventions (they are what makes the float discipline hold):

* every argument is already of the buffer's dtype: the façade computes the
  per-step scalars once (bias corrections, ``1 - beta``, ``-lr / bc1``, ...)
  and casts them with ``dtype.type`` (see :mod:`fastadam._scalars`);
* no numeric literal appears in a rule: a bare ``1.0`` would promote a float32
  expression to float64;
* ``math.sqrt`` is the only library call, and :func:`fastadam.rules.fma.fma` the
  only other function called (a fused multiply-add, where torch computes one;
  each backend supplies its own);
* a maximum is written so that a NaN in either operand propagates, as
  ``torch.maximum`` does;
* the L2 term ``l2 * p`` is added only when ``l2`` is non-zero (``if l2:``, a
  loop-invariant test), as torch.optim does, so a NaN or Inf parameter does
  not poison the gradient and the state when weight decay is off.
"""

from __future__ import annotations

import hashlib
import pathlib

RULE_MODULES = ("adam", "rmsprop", "adagrad", "sgd", "adadelta", "nadam", "adamax",
                "codecs", "param_codecs", "fma")


def source_hash(extra: str = "") -> str:
    """Hash of the rule sources, used to key compiled-kernel caches.

    numba's on-disk cache only notices edits to the file that holds the jitted
    function; the kernels inline functions from this package, so their cache
    entries are keyed by this hash too.
    """
    h = hashlib.sha256(extra.encode())
    here = pathlib.Path(__file__).parent
    for name in RULE_MODULES:
        h.update((here / f"{name}.py").read_bytes())
    return h.hexdigest()[:12]
