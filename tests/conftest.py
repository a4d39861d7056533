import os
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
