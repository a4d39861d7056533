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


def _prefetch_sub_blocks() -> bool:
    """Whether the dense parallel loops (numba :mod:`fastadam.kernels.cpu`, the Cython
    backend) run in prefetched sub-blocks on arrays of 8 MiB and more:
    ``FASTADAM_PREFETCH_SUB_BLOCKS`` (``0`` or ``1``) if set, else true except on AMD
    CPUs.  Measured, float32 Adam's traffic, 2 threads: on an Intel Sapphire Rapids VM
    (2026-11-28) the form moved the same bytes 1.20-1.30x faster than the plain loop at
    8M params; on an AMD EPYC (Zen 4) VM (2026-12-05), with the page-aligned buffers of
    :mod:`fastadam._alloc`, 1.16-1.37x slower at 8M-32M in the VM's fast memory mode,
    1.0-1.07x in its slow one (up to 1.8x with one thread)."""
    env = os.environ.get("FASTADAM_PREFETCH_SUB_BLOCKS")
    if env in ("0", "1"):
        return env == "1"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return "AuthenticAMD" not in line
    except OSError:
        pass
    return True


#: See :func:`_prefetch_sub_blocks`.
PREFETCH_SUB_BLOCKS = _prefetch_sub_blocks()
