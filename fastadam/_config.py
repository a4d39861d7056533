"""Settings shared by the compiled backends, in one place."""

import os

#: LLVM fast-math flags for the numba kernels.  ``nnan`` and ``ninf`` are left
#: out on purpose: NaN and Inf must propagate exactly as in torch.optim.
#: ``afn``/``arcp``/``reassoc`` are left out too, and so is ``contract``: the
#: steps are memory-bound, so fused multiply-adds or approximate sqrt/division
#: buy no speed, while rounding each operation as torch does keeps float32
#: results within an ulp of torch's even where a momentum update cancels.  Where
#: torch's kernels do fuse (``lerp``, ``addcmul``, ``add(alpha=)``), the rules call
#: :func:`fastadam.rules.fma.fma` explicitly.  Only ``nsz`` (signed zeros may be
#: ignored) remains.
FASTMATH = {"nsz"}

#: Below this many elements the numba backend runs a serial loop: a parallel
#: region's fork/join costs more than it saves there.  Chosen by measurement
#: (``fastadam bench --crossover``, float32 Adam, 2 cores, omp layer): serial and
#: parallel break even at 12K-16K; parallel is 1.25x faster at 24K, 1.4x at 32K,
#: 1.5-1.6x at 48K-64K.  32K keeps the marginal sizes serial, where a parallel
#: region would gain little and, on a loaded machine, can stall waiting for a
#: descheduled worker.  Override with ``FASTADAM_PARALLEL_THRESHOLD``.
PARALLEL_THRESHOLD = int(os.environ.get("FASTADAM_PARALLEL_THRESHOLD", "32768"))
