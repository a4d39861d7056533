"""numba's implementations of :func:`fastadam.rules.fma.fma`, registered on import.

CPU: the ``llvm.fma`` intrinsic (one ``vfmadd`` per vector on x86-64 with FMA; a
correctly rounded library call elsewhere), for float32 or float64 operands of one
type.  CUDA: :func:`register_cuda` overloads it for the CUDA target with
``cuda.fma`` (numba's CUDA simulator runs the rule's Python body instead).
Every kernel module that compiles a rule imports this module first.
"""

from __future__ import annotations

import hashlib
import pathlib

from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

from ..rules.fma import fma as _fma

#: Hash of this file, part of the on-disk cache keys of the kernels that inline the rules
#: (numba's own cache check sees only the kernel's file).
HASH = hashlib.sha256(pathlib.Path(__file__).read_bytes()).hexdigest()[:8]


@intrinsic
def llvm_fma(typingctx, a, b, c):
    """``llvm.fma`` of three floats of one type."""
    if not (isinstance(a, types.Float) and a == b == c):
        return None

    def codegen(context, builder, signature, args):
        ty = args[0].type
        f = builder.module.declare_intrinsic("llvm.fma", [ty], ir.FunctionType(ty, [ty] * 3))
        return builder.call(f, args)

    return a(a, b, c), codegen


@overload(_fma, inline="always")
def _fma_cpu(a, b, c):
    if isinstance(a, types.Float) and a == b == c:
        return lambda a, b, c: llvm_fma(a, b, c)
    return None


_cuda_done = False


def register_cuda() -> None:
    """Overload :func:`fastadam.rules.fma.fma` for numba's CUDA target (once)."""
    global _cuda_done
    if _cuda_done:
        return
    from numba import cuda

    @overload(_fma, target="cuda", inline="always")
    def _fma_cuda(a, b, c):
        if isinstance(a, types.Float) and a == b == c:
            return lambda a, b, c: cuda.fma(a, b, c)
        return None

    _cuda_done = True
