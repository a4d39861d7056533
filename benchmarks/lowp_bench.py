"""Reduced-precision Adam state, master weights and the fused AMP step against the roofline.

Run from the repository root::

    python benchmarks/lowp_bench.py [--n 8M] [--rounds 15] [--train]

The contenders and the ratios are those of ``fastadam bench``'s reduced-precision
table (:mod:`fastadam.bench.lowp`: the float32 Adam roofline in every form of
:mod:`fastadam.bench.roofline`, the fastest taken; fp32 / bf16 / int8 state; bf16
parameters with fp32 master weights; the AMP step and its own roofline),
interleaved round by round in one process, median of the rounds.

Targets (issue 8): bf16 state >= 1.3x and int8 state >= 1.6x faster than the
float32 roofline; the AMP step >= 90% of its own roofline.  With ``--train``,
also the seed model's final loss per state_dtype (fastadam.demo's data and model).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numba  # noqa: E402

import fastadam  # noqa: E402
from fastadam import bench, lowp  # noqa: E402
from fastadam.bench import lowp as _bench_lowp  # noqa: E402


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
    ap.add_argument("--n", type=bench._size, default=1 << 23,
                    help="parameters (e.g. 8M, 1048576; default 8M)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--batch-time", type=float, default=0.15,
                    help="seconds each contender runs per round")
    ap.add_argument("--train", action="store_true",
                    help="also train the seed model per state_dtype (40000 x 10 epochs)")
    args = ap.parse_args(argv)
    med = bench.interleave(_bench_lowp.contenders(args.n), args.rounds, args.batch_time)
    print(f"{numba.get_num_threads()} threads, median of {args.rounds} interleaved rounds")
    for name, t in med.items():
        print(f"  {name:32s} {t * 1e3:9.3f} ms")
    print(_bench_lowp.format_section(_bench_lowp.summarize(args.n, med)))
    if args.train:
        losses = train_losses()
        ref = losses["float32"]
        for sd, loss in losses.items():
            print(f"seed model final loss, {sd:9s}: {loss:.5f} ({100 * (loss / ref - 1):+.2f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
