"""Reduced-precision Adam state and master weights on one GPU (fastadam.kernels.cuda_lowp).

Usage (needs a CUDA GPU, PyTorch with CUDA, and numba-cuda)::

    python benchmarks/gpu_lowp.py                    # 64M params
    python benchmarks/gpu_lowp.py --sizes 16M,64M --rounds 5

For each size it times, interleaved round by round (median over rounds), one step of:

* ``fp32``: ``fastadam.functional.adam_`` with float32 state (28 bytes/param);
* ``bf16``: ``state_dtype="bfloat16"`` (p 4+4, g 4, m 2+2, v 2+2: 20 bytes/param);
* ``int8``: ``state_dtype="int8"`` (p 4+4, g 4, codes 1+1 each, scales: ~16.06 bytes/param);
* ``bf16+clip``: bf16 state with ``grad_scale`` and ``clip_value`` fused in (20 bytes/param);
* ``master-f16`` / ``master-bf16``: float16 / bfloat16 params and grads with float32
  master weights and bf16 moments (p 2, g 2, master 4+4, m 2+2, v 2+2: 20 bytes/param);
* ``grad-stats``: :func:`fastadam.lowp.grad_stats` over a float32 gradient (4 bytes/param,
  one small copy back: includes a synchronisation); ``stats-kernel``: its kernel alone;
* ``torch-fused``: ``torch.optim.Adam(fused=True).step()`` on float32 (28 bytes/param);
* ``copy``: ``dst.copy_(src)`` moving 28 bytes/param (the memory system's practical limit).

GPU time: CUDA events around ``--iters`` back-to-back steps queued behind a
``torch.cuda._sleep`` (``benchmarks/gpu_adam.py``); GB/s counts each contender's bytes
above and is also given as a fraction of the theoretical bandwidth.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gpu_adam import _gpu_time, gpu_setup, parse_size, peak_bandwidth_gbs  # noqa: E402

BYTES = {"fp32": 28, "bf16": 20, "int8": 16 + 16 / 256, "bf16+clip": 20, "master-f16": 20,
         "master-bf16": 20, "grad-stats": 4, "stats-kernel": 4, "torch-fused": 28, "copy": 28}
HP = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="64M", help="comma-separated param counts (K/M/G)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--peak-gbs", type=float, default=None)
    ap.add_argument("--only", default="", help="comma-separated contenders (default: all)")
    ap.add_argument("--block-size", type=int, default=None,
                    help="fastadam.kernels.cuda.BLOCK_SIZE for the elementwise kernels")
    ap.add_argument("--regs", action="store_true",
                    help="print registers per thread of each compiled kernel")
    args = ap.parse_args(argv)
    args.sizes = [parse_size(x) for x in args.sizes.split(",") if x.strip()]
    if not args.sizes or min(args.sizes) < 1 or args.rounds < 1 or args.iters < 1:
        ap.error("--sizes, --rounds and --iters must be positive")
    return args


def contenders(torch, n):
    """``{name: step function}`` on fresh buffers of ``n`` params."""
    import numpy as np
    from numba import cuda

    import fastadam.functional as F
    from fastadam import lowp

    dev = "cuda"
    gen = torch.Generator(device=dev).manual_seed(0)

    def u16():
        return cuda.to_device(np.zeros(n, np.uint16))

    p32 = {k: torch.randn(n, device=dev, generator=gen) for k in ("fp32", "bf16", "int8",
                                                                    "clip")}
    g32 = torch.randn(n, device=dev, generator=gen) * 1e-2
    m32, v32 = torch.zeros(n, device=dev), torch.zeros(n, device=dev)
    bf = {k: (u16(), u16()) for k in ("bf16", "clip", "f16", "bf16p")}
    i8 = {k: cuda.to_device(np.zeros(s, dt)) for k, s, dt in (
        ("exp_avg", n, np.int8), ("exp_avg_sq", n, np.uint8),
        ("exp_avg_scale", lowp.nblocks(n), np.float32),
        ("exp_avg_sq_scale", lowp.nblocks(n), np.float32))}
    lo = {k: torch.randn(n, device=dev, generator=gen).to(dt)
          for k, dt in (("f16", torch.float16), ("bf16p", torch.bfloat16))}
    glo = {k: (g32 * 1).to(a.dtype) for k, a in lo.items()}
    w = {k: a.float() for k, a in lo.items()}
    tp = p32["fp32"].clone().requires_grad_(True)
    tp.grad = g32.clone()
    opt = torch.optim.Adam([tp], fused=True, **{"lr": HP["lr"], "eps": HP["eps"]})
    src = torch.empty(n * 28 // 8, dtype=torch.float32, device=dev)
    dst = torch.empty_like(src)
    t = [0]

    def stepper(fn):
        def run():
            t[0] += 1
            fn(t[0])
        return run

    return {
        "fp32": stepper(lambda s: F.adam_(p32["fp32"], g32, m32, v32, step=s, **HP)),
        "bf16": stepper(lambda s: F.adam_(p32["bf16"], g32, *bf["bf16"], step=s,
                                          state_dtype="bfloat16", **HP)),
        "int8": stepper(lambda s: F.adam_(p32["int8"], g32, i8["exp_avg"], i8["exp_avg_sq"],
                                          exp_avg_scale=i8["exp_avg_scale"],
                                          exp_avg_sq_scale=i8["exp_avg_sq_scale"], step=s,
                                          state_dtype="int8", **HP)),
        "bf16+clip": stepper(lambda s: F.adam_(p32["clip"], g32, *bf["clip"], step=s,
                                               state_dtype="bfloat16", grad_scale=1024.0,
                                               clip_value=1.0, **HP)),
        "master-f16": stepper(lambda s: F.adam_(lo["f16"], glo["f16"], *bf["f16"],
                                                master_param=w["f16"], step=s,
                                                state_dtype="bfloat16",
                                                param_rounding="stochastic", **HP)),
        "master-bf16": stepper(lambda s: F.adam_(lo["bf16p"], glo["bf16p"], *bf["bf16p"],
                                                 master_param=w["bf16p"], step=s,
                                                 state_dtype="bfloat16",
                                                 param_rounding="stochastic", **HP)),
        "grad-stats": lambda: lowp.grad_stats([g32], clip_value=1.0),
        "stats-kernel": _stats_kernel(g32),
        "torch-fused": opt.step,
        "copy": lambda: dst.copy_(src),
    }


def _stats_kernel(g32):
    """The gradient-norm reduction kernel alone (no allocation, copy or synchronisation)."""
    import numpy as np
    from numba import cuda

    from fastadam.kernels import cuda_lowp as KL
    from fastadam.kernels import cuda_lowp_launch as KLL
    c = KLL.check({"grads": g32}, {"grads": ((np.float32,), None)}, ())
    k = KL.get("sumsq_float")
    f = np.float32
    blocks = KLL._blocks_for(c.n, KL.RED_THREADS)
    part = cuda.to_device(np.zeros((2, blocks), np.float64))   # the per-block partials
    args = (c.views["grads"], np.float64(0), f(np.finfo(f).max), f(1), f(1), False, part,
            np.int64(0))
    return lambda: k[blocks, KL.RED_THREADS, 0](*args)


def _print_regs():
    from fastadam.kernels import cuda as K
    from fastadam.kernels import cuda_lowp as KL
    for mod in (K, KL):
        for name, k in mod._compiled.items():
            try:
                regs = k.get_regs_per_thread()
            except Exception as e:  # pragma: no cover - API differences
                regs = repr(e)
            print(f"# regs/thread {name}: {regs}")


def main(argv=None) -> int:
    args = parse_args(argv)
    ready = gpu_setup("gpu_lowp", args.block_size)
    if ready is None:
        return 2
    torch = ready[0]
    name = torch.cuda.get_device_name()
    peak = args.peak_gbs or peak_bandwidth_gbs(name)
    print(f"# {name}; theoretical bandwidth {peak or 'unknown'} GB/s; torch {torch.__version__}; "
          f"{args.rounds} interleaved rounds x {args.iters} steps, median")
    only = [x for x in args.only.split(",") if x]
    print(f"{'params':>12} {'contender':>12} {'B/param':>8} {'GPU us/step':>12} {'GB/s':>7} "
          f"{'% peak':>7} {'vs fp32':>8} {'vs torch':>9}")
    for n in args.sizes:
        cs = contenders(torch, n)
        if only:
            cs = {k: f for k, f in cs.items() if k in only or k in ("fp32", "torch-fused")}
        for fn in cs.values():      # warm up: compile
            fn()
        torch.cuda.synchronize()
        times = {k: [] for k in cs}
        for _ in range(args.rounds):
            for k, fn in cs.items():
                times[k].append(_gpu_time(torch, fn, args.iters))
        med = {k: statistics.median(x) for k, x in times.items()}
        for k, s in med.items():
            gbs = BYTES[k] * n / s / 1e9
            pct = f"{100 * gbs / peak:6.1f}%" if peak else "    n/a"
            print(f"{n:>12,} {k:>12} {BYTES[k]:>8.2f} {s * 1e6:>12.1f} {gbs:>7.0f} {pct} "
                  f"{med['fp32'] / s:>7.2f}x {med['torch-fused'] / s:>8.2f}x")
        if args.regs:
            _print_regs()
        del cs
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
