"""Module-level requirements shared by test files: each returns what the file needs, or
skips the whole module where this machine cannot run it.

* :func:`cuda_backend`: fastadam's cuda backend (numba's CUDA simulator in CI, where
  ``NUMBA_ENABLE_CUDASIM=1``: then its absence is a failure, not a skip);
* :func:`keras_on_torch`: Keras 3 on its torch backend.
"""

from __future__ import annotations

import os

import pytest


def cuda_backend():
    """The registry's cuda backend, or a module-level skip (an error under the simulator,
    which always works)."""
    from fastadam import _backends
    try:
        return _backends.get_backend("cuda")
    except _backends.BackendUnavailableError as e:  # pragma: no cover - depends on the machine
        if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
            raise
        pytest.skip(f"cuda backend unavailable: {e}", allow_module_level=True)


def keras_on_torch():
    """The ``keras`` module on its torch backend (``KERAS_BACKEND=torch`` set first), or a
    module-level skip (no torch, no Keras, or Keras already imported on another backend)."""
    pytest.importorskip("torch")
    os.environ["KERAS_BACKEND"] = "torch"
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":  # pragma: no cover - keras imported elsewhere first
        pytest.skip(f"keras runs on {keras.backend.backend()!r}, not torch",
                    allow_module_level=True)
    return keras
