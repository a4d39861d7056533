"""Reduced-precision Adam state and the fused AMP step against the memory roofline.

Run from the repository root::

    python benchmarks/lowp_bench.py [--n 8M] [--rounds 15] [--train]

Contenders, interleaved round by round in one process (median of the rounds;
each timing a batch of calls):

* ``roofline fp32 adam``: :mod:`fastadam._roofline`'s loop moving exactly a
  float32 Adam step's bytes (reads p, g, m, v; writes p, m, v: 28 B/param) --
  the speed limit of any float32-state Adam;
* ``adam fp32 state``: ``fastadam.functional.adam_`` (the numba kernel);
* ``adam bf16 state`` (20 B/param) and ``adam int8 state`` (about 16.06 B/param):
  ``adam_(..., state_dtype=...)``;
* ``amp step``: ``AdamW(max_grad_norm=1.0).step(grad_scale=...)`` on one flat
  buffer -- the fused first pass (unscale, inf/nan check, global norm) and the
  update with the factor folded in;
* ``roofline amp``: its own roofline, a read-only pass over g (4 B/param)
  followed by the float32 Adam roofline loop (28 B/param).

Targets (issue 8): bf16 >= 1.3x and int8 >= 1.6x faster than ``roofline fp32
adam``; ``amp step`` >= 90% of ``roofline amp``.  With ``--train``, also the
seed model's final loss per state_dtype (fastadam.demo's data and model).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numba  # noqa: E402
from numba import prange  # noqa: E402

import fastadam  # noqa: E402
import fastadam.functional as F  # noqa: E402
from fastadam import _roofline, lowp  # noqa: E402
from fastadam._config import FASTMATH  # noqa: E402

HP = dict(step=10, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8)


@numba.njit(parallel=True, cache=True, fastmath=set(FASTMATH) | {"reassoc"}, nogil=True,
            error_model="numpy", boundscheck=False)
def _read_pass(g):
    """A read-only pass over g with trivial math (the first pass's roofline)."""
    acc = np.float32(0)
    for i in prange(g.shape[0]):
        acc += g[i]
    return acc


def _size(text):
    text = text.upper()
    mult = {"K": 1 << 10, "M": 1 << 20}.get(text[-1], 1)
    return int(float(text.rstrip("KM")) * mult)


def contenders(n):
    rng = np.random.default_rng(0)
    f32 = np.float32
    p0 = rng.standard_normal(n).astype(f32)
    g0 = (rng.standard_normal(n) * 1e-2).astype(f32)
    out = {}

    roof = [np.full(n, 0.5, f32) for _ in range(4)]
    out["roofline fp32 adam"] = lambda: _roofline.run(roof, True)

    p, g = p0.copy(), g0.copy()
    m, v = np.zeros(n, f32), np.zeros(n, f32)
    out["adam fp32 state"] = lambda: F.adam_(p, g, m, v, **HP)

    for sd in ("bfloat16", "int8"):
        pp, st = p0.copy(), lowp.new_state(sd, n)
        # start from a realistic state, not zeros
        F.adam_(pp, g0, st["exp_avg"], st["exp_avg_sq"], exp_avg_scale=st.get("exp_avg_scale"),
                exp_avg_sq_scale=st.get("exp_avg_sq_scale"), state_dtype=sd, **HP)

        def run(pp=pp, st=st, sd=sd):
            F.adam_(pp, g0, st["exp_avg"], st["exp_avg_sq"],
                    exp_avg_scale=st.get("exp_avg_scale"),
                    exp_avg_sq_scale=st.get("exp_avg_sq_scale"), state_dtype=sd, **HP)
        out[f"adam {sd} state"] = run

    params = [p0.copy()]
    opt = fastadam.AdamW(params, lr=1e-3, max_grad_norm=1.0)
    opt.grads[0][...] = g0 * 1024
    opt.step(grad_scale=1024.0)
    out["amp step"] = lambda: opt.step(grad_scale=1024.0)

    roof2 = [np.full(n, 0.5, f32) for _ in range(4)]

    def roof_amp():
        _read_pass(roof2[1])
        _roofline.run(roof2, True)
    out["roofline amp"] = roof_amp
    return out


def interleave(fns, rounds, batch_time=0.15):
    for fn in fns.values():          # warm up (compile or load from cache)
        fn()
        fn()
    reps = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        reps[name] = max(1, int(batch_time / max(dt, 1e-6)))
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            k = reps[name]
            t0 = time.perf_counter()
            for _ in range(k):
                fn()
            times[name].append((time.perf_counter() - t0) / k)
    return {name: statistics.median(ts) for name, ts in times.items()}


def train_losses():
    from fastadam import demo
    n_train, epochs = 40000, 10               # the seed's fit(epochs=10, batch_size=32)
    X, y = demo.make_data(n_train, seed=0)
    out = {}
    for sd in lowp.STATE_DTYPES:
        P = demo.init_params(0)
        opt = fastadam.Adam(P, lr=1e-3, state_dtype=sd)
        demo.fit(P, opt, X, y, epochs=epochs, rng=np.random.default_rng(1))
        out[sd] = demo.evaluate(P, X, y)[0]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", default="8M", help="parameters (e.g. 8M, 1048576)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--train", action="store_true",
                    help="also train the seed model per state_dtype (40000 x 10 epochs)")
    args = ap.parse_args(argv)
    n = _size(args.n)
    med = interleave(contenders(n), args.rounds)
    print(f"n = {n:,} params, {numba.get_num_threads()} threads, median of {args.rounds} "
          "interleaved rounds")
    for name, t in med.items():
        print(f"  {name:22s} {t * 1e3:9.3f} ms")
    roof = med["roofline fp32 adam"]
    print(f"bf16 state vs fp32 roofline:  {roof / med['adam bfloat16 state']:.2f}x "
          "(target >= 1.3x; bytes ratio 28/20 = 1.40x)")
    print(f"int8 state vs fp32 roofline:  {roof / med['adam int8 state']:.2f}x "
          "(target >= 1.6x; bytes ratio 28/16.06 = 1.74x)")
    print(f"fp32 state  vs fp32 roofline: {roof / med['adam fp32 state']:.2f}x")
    print(f"amp step vs its roofline:     {100 * med['roofline amp'] / med['amp step']:.1f}% "
          "(target >= 90%)")
    if args.train:
        losses = train_losses()
        ref = losses["float32"]
        for sd, loss in losses.items():
            print(f"seed model final loss, {sd:9s}: {loss:.5f} ({100 * (loss / ref - 1):+.2f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
