"""fastadam's cuda Adam step against ``torch.optim.Adam(fused=True)`` on one GPU.

Usage (needs a CUDA GPU, PyTorch with CUDA, and numba-cuda)::

    python benchmarks/gpu_adam.py                      # 16M, 64M, 256M fp32 params
    python benchmarks/gpu_adam.py --sizes 1M,16M --rounds 7

For each size it times, interleaved round by round (median over rounds):

* ``fastadam``: ``fastadam.functional.adam_`` on torch CUDA tensors (validation,
  zero-copy views and one kernel launch, on torch's current stream);
* ``fastadam-run``: the bare backend ``run`` on views made once (the launch alone);
* ``torch-fused``: ``torch.optim.Adam([p], fused=True).step()``;
* ``copy``: ``dst.copy_(src)`` of a 28*n/2 byte buffer (moves 28 bytes per param:
  the best a kernel with Adam's traffic can hope for on this GPU).

GPU time is measured with CUDA events around ``--iters`` back-to-back steps that
the host queues behind a ``torch.cuda._sleep``, so host dispatch overhead is
hidden; ``host us/step`` is the wall-clock time of the same loop without the
sleep, where dispatch overhead shows.  Bandwidth counts Adam's 28 bytes/param
(reads p, g, m, v; writes p, m, v) and is given as a fraction of the GPU's
theoretical memory bandwidth (from the device's memory clock and bus width, or
``--peak-gbs``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

BYTES_PER_PARAM = 28
_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(s: str) -> int:
    """``"16M"`` -> 16 * 2**20; plain integers are element counts."""
    s = s.strip().upper()
    if s and s[-1] in _UNITS:
        return int(float(s[:-1]) * _UNITS[s[-1]])
    return int(s)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="16M,64M,256M",
                    help="comma-separated param counts; K/M/G are powers of 2 (default %(default)s)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median)")
    ap.add_argument("--iters", type=int, default=20, help="steps per timed round")
    ap.add_argument("--peak-gbs", type=float, default=None,
                    help="theoretical memory bandwidth in GB/s (default: from the device)")
    ap.add_argument("--block-size", type=int, default=None,
                    help="fastadam.kernels.cuda.BLOCK_SIZE for the run")
    ap.add_argument("--no-check", action="store_true",
                    help="skip the correctness check against torch before timing")
    args = ap.parse_args(argv)
    args.sizes = [parse_size(x) for x in args.sizes.split(",") if x.strip()]
    if not args.sizes or min(args.sizes) < 1:
        ap.error("--sizes needs positive sizes")
    if args.rounds < 1 or args.iters < 1:
        ap.error("--rounds and --iters must be >= 1")
    return args


#: Published memory bandwidths (GB/s), used when the device attributes are unavailable.
KNOWN_PEAK_GBS = {"H200": 4800.0, "H100 PCIe": 2000.0, "H100 NVL": 3900.0, "H100": 3350.0,
                  "A100-SXM4-80GB": 2039.0, "A100-PCIE-40GB": 1555.0, "A100": 1555.0}


def peak_bandwidth_gbs(device_name=""):
    """Theoretical DRAM bandwidth of the current device: 2 * memory clock * bus width.

    Falls back to :data:`KNOWN_PEAK_GBS` by device name; None if unknown.
    """
    try:
        from numba import cuda
        dev = cuda.get_current_device()
        clock_khz = dev.MEMORY_CLOCK_RATE
        bus_bits = dev.GLOBAL_MEMORY_BUS_WIDTH
        if clock_khz > 0 and bus_bits > 0:
            return 2.0 * clock_khz * 1e3 * bus_bits / 8 / 1e9
    except Exception:  # attribute missing in this driver / numba version
        pass
    for key, gbs in KNOWN_PEAK_GBS.items():
        if key in device_name:
            return gbs
    return None


def _gpu_time(torch, fn, iters):
    """GPU seconds per call of ``fn`` with the host running ahead of the GPU."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    torch.cuda._sleep(200_000_000)        # ~0.1 s of GPU cycles: the host queues meanwhile
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / iters


def _host_time(torch, fn, iters):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters


def check(torch, F):
    """One fastadam step equals torch's fused Adam step (fp32, rtol 1e-5)."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    p = torch.randn(100_003, device="cuda", generator=gen)
    g = torch.randn(100_003, device="cuda", generator=gen)
    ref = p.clone().requires_grad_(True)
    ref.grad = g.clone()
    opt = torch.optim.Adam([ref], lr=1e-3, fused=True)
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    for t in (1, 2, 3):
        opt.step()
        F.adam_(p, g, m, v, step=t, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, backend="cuda")
    torch.testing.assert_close(p, ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(v, opt.state[ref]["exp_avg_sq"], rtol=1e-5, atol=1e-6)


def bench_size(torch, F, backend, n, args):
    dev = "cuda"
    p = torch.randn(n, device=dev)
    g = torch.randn(n, device=dev)
    m, v = torch.zeros(n, device=dev), torch.zeros(n, device=dev)
    tp = p.clone().requires_grad_(True)
    tp.grad = g.clone()
    opt = torch.optim.Adam([tp], lr=1e-3, fused=True)
    src = torch.empty(n * BYTES_PER_PARAM // 8, dtype=torch.float32, device=dev)
    dst = torch.empty_like(src)
    step = [0]

    def fastadam_step():
        step[0] += 1
        F.adam_(p, g, m, v, step=step[0], lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
                backend="cuda")

    import numpy as np

    from fastadam import _scalars
    views = backend.check({"param": p, "grad": g, "exp_avg": m, "exp_avg_sq": v},
                          ("param", "exp_avg", "exp_avg_sq"))
    arrays = (views["param"], views["grad"], views["exp_avg"], views["exp_avg_sq"])
    kname, scal = _scalars.adam(np.dtype(np.float32), step=1000, lr=1e-3, beta1=0.9,
                                beta2=0.999, eps=1e-8, weight_decay=0.0,
                                decoupled_weight_decay=False, amsgrad=False, maximize=False)

    contenders = {
        "fastadam": fastadam_step,
        "fastadam-run": lambda: backend.run(kname, arrays, scal),
        "torch-fused": opt.step,
        "copy": lambda: dst.copy_(src),
    }
    for fn in contenders.values():      # warm up: compile, allocate state
        fn()
    gpu = {k: [] for k in contenders}
    host = {k: [] for k in contenders}
    for _ in range(args.rounds):
        for k, fn in contenders.items():
            gpu[k].append(_gpu_time(torch, fn, args.iters))
            host[k].append(_host_time(torch, fn, args.iters))
    return ({k: statistics.median(x) for k, x in gpu.items()},
            {k: statistics.median(x) for k, x in host.items()})


def gpu_setup(prog: str, block_size=None):
    """``(torch, the cuda backend, fastadam.kernels.cuda)`` for a run on a real GPU, with
    ``BLOCK_SIZE`` set when ``block_size`` is given; or None after saying on stderr why
    nothing can be measured (no torch, no CUDA GPU, no cuda backend, the simulator)."""
    try:
        import torch
    except ImportError:
        print(f"{prog}: needs PyTorch with CUDA (pip install torch==2.13.0)", file=sys.stderr)
        return None
    if not torch.cuda.is_available():
        print(f"{prog}: needs a CUDA GPU (torch.cuda.is_available() is False); nothing "
              "measured", file=sys.stderr)
        return None
    from fastadam import _backends
    try:
        backend = _backends.get_backend("cuda")
    except _backends.BackendUnavailableError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return None
    from fastadam.kernels import cuda as K
    if K.SIMULATOR:
        print(f"{prog}: NUMBA_ENABLE_CUDASIM is set; timings would be meaningless",
              file=sys.stderr)
        return None
    if block_size:
        K.BLOCK_SIZE = block_size
    return torch, backend, K


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        import fastadam  # noqa: F401
    except ImportError:  # run from a checkout: python benchmarks/gpu_adam.py
        import os
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ready = gpu_setup("gpu_adam", args.block_size)
    if ready is None:
        return 2
    torch, backend, K = ready
    import fastadam.functional as F
    name = torch.cuda.get_device_name()
    peak = args.peak_gbs or peak_bandwidth_gbs(name)
    peak_s = f"{peak:.0f} GB/s" if peak else "unknown (pass --peak-gbs)"
    print(f"# {name}; theoretical memory bandwidth {peak_s}; torch {torch.__version__}; "
          f"block size {K.BLOCK_SIZE}; {args.rounds} interleaved rounds x {args.iters} steps, "
          "median; 28 bytes/param")
    if not args.no_check:
        check(torch, F)
        print("# check: fastadam Adam == torch fused Adam (3 fp32 steps, rtol 1e-5): ok")
    print(f"{'params':>12} {'contender':>13} {'GPU us/step':>12} {'GB/s':>8} {'% peak':>7} "
          f"{'host us/step':>13} {'vs torch-fused':>15}")
    for n in args.sizes:
        gpu, host = bench_size(torch, F, backend, n, args)
        torch.cuda.empty_cache()          # free this size's buffers before the next
        for k in gpu:
            gbs = BYTES_PER_PARAM * n / gpu[k] / 1e9
            ratio = gpu["torch-fused"] / gpu[k]
            pct = f"{100 * gbs / peak:>6.1f}%" if peak else f"{'n/a':>7}"
            print(f"{n:>12,} {k:>13} {gpu[k] * 1e6:>12.1f} {gbs:>8.0f} {pct} "
                  f"{host[k] * 1e6:>13.1f} {ratio:>14.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
