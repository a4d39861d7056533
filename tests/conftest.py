import os

# CUDA tests run under numba's CUDA simulator unless FASTADAM_REAL_GPU=1 asks for the
# real device.  This must happen before numba.cuda is first imported (the
# available_backends() call below loads the cuda backend).
if os.environ.get("FASTADAM_REAL_GPU") != "1":
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

import fastadam  # noqa: E402

COMPILED_HOST = [b for b in fastadam.available_backends() if b in ("numba", "cython")]


@pytest.fixture(params=COMPILED_HOST or [pytest.param("numba", marks=pytest.mark.skip(
    reason="no compiled host backend"))])
def backend(request):
    """Every available compiled host backend (numba, cython)."""
    return request.param


@pytest.fixture(params=[np.float32, np.float64], ids=["f32", "f64"])
def dtype(request):
    return request.param
