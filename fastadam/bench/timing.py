r"""Timing of ``fastadam bench``: interleaved rounds, their statistic, sizes and times.

Every contender runs in one process, **interleaved round by round**: in each
round every contender times one batch of calls (the order rotates from round
to round), and the reported time is the statistic (the median by default) over
rounds of the time per call.  On a shared machine whose speed drifts, this
keeps the *ratios* between contenders honest even when absolute times move.

Also the sizes of the command line (``4096``, ``64K``, ``1.5K``, ``4M``) and
their labels, and times as the tables print them.

This is the lowest layer of :mod:`fastadam.bench`: it imports nothing of
fastadam, and every other module of the package may import it.

See Also
--------
fastadam.bench.contenders : what is timed.
fastadam.bench.roofline : the memory-roofline loops the steps are measured against.
"""

from __future__ import annotations

import gc
import statistics
import time


# --------------------------------------------------------------------------------------
# sizes and times as text
# --------------------------------------------------------------------------------------
def _size(text: str) -> int:
    t = text.strip().upper()
    mult = 1
    if t and t[-1] in "KMG":
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[t[-1]]
        t = t[:-1]
    try:
        v = int(float(t) * mult)
    except ValueError:
        raise ValueError(f"invalid size {text!r} (e.g. 4096, 64K, 4M)") from None
    if v < 1:
        raise ValueError(f"invalid size {text!r}: must be >= 1")
    return v


def _sizes(text: str):
    import argparse
    try:
        return [_size(s) for s in text.split(",") if s.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _label(n: int) -> str:
    for unit, v in (("M", 1 << 20), ("K", 1 << 10)):
        if n >= v and n % v == 0:
            return f"{n // v}{unit}"
    return str(n)


def _fmt_time(t: float) -> str:
    if t < 1e-3:
        return f"{t * 1e6:8.2f} us"
    if t < 1:
        return f"{t * 1e3:8.3f} ms"
    return f"{t:8.3f} s "


# --------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------
def _calibrate(fn, batch_time: float) -> int:
    fn()
    fn()                            # compile / warm caches, then estimate one call
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    if dt < batch_time / 20:        # cheap call: estimate over a few more
        k = 20
        t0 = time.perf_counter()
        for _ in range(k):
            fn()
        dt = (time.perf_counter() - t0) / k
    return int(max(1, min(100000, batch_time / max(dt, 1e-9))))


def interleave(contenders: dict, rounds: int, batch_time: float, progress=None,
               stat=statistics.median) -> dict:
    """``stat`` (median) of the seconds per call of each ``name -> fn``, timed interleaved."""
    samples = interleave_samples(contenders, rounds, batch_time, progress)
    return {name: stat(ts) for name, ts in samples.items()}


def interleave_samples(contenders: dict, rounds: int, batch_time: float,
                       progress=None) -> dict:
    """Seconds per call of each ``name -> fn``, one sample per round, timed interleaved:
    in each round every contender runs one batch, the order rotating between rounds."""
    reps = {}
    for name, fn in contenders.items():
        reps[name] = _calibrate(fn, batch_time)
    times = {name: [] for name in contenders}
    names = list(contenders)
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for r in range(rounds):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                fn, n = contenders[name], reps[name]
                t0 = time.perf_counter()
                for _ in range(n):
                    fn()
                times[name].append((time.perf_counter() - t0) / n)
            if progress is not None:
                progress.tick(f"round {r + 1}/{rounds}")
    finally:
        if gc_was:
            gc.enable()
    return times
