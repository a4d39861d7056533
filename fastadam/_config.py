"""Settings shared by the compiled backends, in one place."""

import os

#: LLVM fast-math flags for the numba kernels.  ``nnan`` and ``ninf`` are left
#: out on purpose: NaN and Inf must propagate exactly as in torch.optim.
#: ``afn``/``arcp``/``reassoc`` are left out too, and so is ``contract``: the
#: steps are memory-bound, so fused multiply-adds or approximate sqrt/division
#: buy no speed, while rounding each operation as the reference (and torch)
#: does keeps float32 results within an ulp of theirs even where a momentum
#: update cancels.  Only ``nsz`` (signed zeros may be ignored) remains.
FASTMATH = {"nsz"}

#: Below this many elements the numba backend runs a serial loop: a parallel
#: region's fork/join costs more than it saves there.  Chosen by measurement
#: (``fastadam bench``); override with the ``FASTADAM_PARALLEL_THRESHOLD``
#: environment variable.
PARALLEL_THRESHOLD = int(os.environ.get("FASTADAM_PARALLEL_THRESHOLD", "65536"))
