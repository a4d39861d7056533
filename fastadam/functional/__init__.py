r"""Functional, in-place optimizer steps on arrays.

Each function applies **one** fused step of an optimizer to one parameter array
and its state arrays, in place: one pass that reads the parameter, the gradient
and each state array once and writes each updated array once.  The math is
torch.optim's single-tensor ("for-loop") implementation.

Arrays: NumPy arrays of one dtype (float32 or float64) and one shape,
C-contiguous; the parameter and state arrays writeable and not overlapping
anything else.  :func:`adam_` also takes float16 (or ``ml_dtypes.bfloat16``)
parameters with float32 master weights (``master_param=``, see
:mod:`fastadam.lowp.master`).  On the ``cuda`` backend, device arrays exposing
``__cuda_array_interface__`` instead.  Every check (arrays and
hyperparameters) runs before anything is written, so a call that raises
changes nothing.

Step counts ``step`` are the count *including* this step (1 on the first
call), as torch.optim's ``state["step"]`` after its increment.

Repeated calls on the same arrays are cheap: the dense steps remember, per set of
host arrays on the numba or cython backend, that its checks passed (a cached plan
holding weak references, never the arrays), and while none of those arrays is
replaced or changed (shape, strides, dtype, writeability) a call checks its
hyperparameters, computes the scalars and makes one call of the compiled kernel
(``fastadam/functional/_plans.py``).  Any change goes through every check again.

``backend`` is ``"auto"`` (numba for host arrays, cuda for device arrays), or
one of :func:`fastadam.available_backends`.

Row-sparse steps (embedding tables: :func:`sparse_adam_`, :func:`sparse_adagrad_`,
:func:`sparse_sgd_`, :func:`rowwise_adagrad_`, :func:`lazy_adam_`) take the table
``param`` and its state as 2-D C-contiguous ``(rows, dim)`` arrays, the looked-up
rows ``indices`` (1-D integers, duplicates allowed, any order) and one gradient
row per lookup ``values`` ``(len(indices), dim)``.  The gradient rows of a
repeated row are summed (in lookup order: the result does not depend on the
thread count), and only the distinct rows looked up, and their state, are read
and written.  Out-of-range or negative rows raise IndexError, float indices
TypeError, a shape or dtype mismatch ValueError / TypeError, all before anything
is written.  Implemented on the numba, cython, cuda (device tables and values; the
lookups are coalesced on the host) and numpy backends (see docs/embeddings.md).
"""

from ._dense import adadelta_, adagrad_, adam_, adamax_, nadam_, rmsprop_, sgd_
from ._sparse import lazy_adam_, rowwise_adagrad_, sparse_adagrad_, sparse_adam_, sparse_sgd_

__all__ = ["adam_", "rmsprop_", "adagrad_", "sgd_", "adadelta_", "nadam_", "adamax_",
           "sparse_adam_", "sparse_adagrad_", "sparse_sgd_", "rowwise_adagrad_", "lazy_adam_"]
