"""fastadam: fused, in-place Adam-family optimizer steps on flat buffers.

Public names:

* optimizers (NumPy façade, torch.optim's names and defaults): :class:`Adam`,
  :class:`AdamW`, :class:`RMSprop`, :class:`Adagrad`, :class:`SGD`,
  :class:`Adadelta`, :class:`NAdam`, :class:`Adamax`;
* :class:`FlatParams`: parameters in one contiguous buffer, views handed back;
* :mod:`fastadam.functional`: the in-place steps on arrays (``adam_`` ...);
* :mod:`fastadam.keras`: Keras 3's optimizer names, defaults and math on NumPy arrays;
  :mod:`fastadam.torch` (imported on its own, as it imports torch): drop-in
  ``torch.optim`` optimizers over flat buffers;
* :func:`available_backends`, :class:`BackendUnavailableError`.

Importing fastadam compiles nothing and does not import numba; kernels are
compiled (or loaded from numba's cache) on first use.
"""

from . import functional, keras
from ._version import __version__
from ._backends import BackendUnavailableError, available_backends
from .flat import FlatBuffer, FlatParams
from .optim import SGD, Adadelta, Adagrad, Adam, Adamax, AdamW, NAdam, Optimizer, RMSprop

__all__ = ["Adam", "AdamW", "RMSprop", "Adagrad", "SGD", "Adadelta", "NAdam", "Adamax",
           "Optimizer", "FlatParams", "FlatBuffer", "functional", "keras", "available_backends",
           "BackendUnavailableError", "__version__"]
