"""ZeRO-1 benchmark: per-rank optimizer step time and optimizer-state memory, 1 vs 2 ranks.

``torch.distributed.optim.ZeroRedundancyOptimizer`` wraps an inner optimizer built over
each rank's shard of the parameters.  This script measures, for 1 and for 2 ranks (gloo on
127.0.0.1, CPU), with each inner optimizer:

* ``local step``: the inner optimizer's ``step()`` on this rank's shard (what fastadam
  replaces),
* ``zero step``: ``ZeroRedundancyOptimizer.step()``: the local step plus the broadcast of
  the updated shards to the other ranks,
* ``state``: bytes of the optimizer state tensors this rank holds (from the inner
  optimizer's ``state_dict``; each storage counted once).

Contenders run interleaved round by round inside the same processes (fastadam, torch's
for-loop Adam, torch's fused Adam), on identical models and gradients; the figures are
medians over rounds, and ratios are taken within the same world size.  These machines are
shared, so absolute times drift between runs; ratios hold better.

Run::

    python benchmarks/zero_bench.py                  # ~4.2M params, 24 tensors
    python benchmarks/zero_bench.py --width 1024 --layers 8 --rounds 9
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import statistics
import sys
import tempfile
import time

CONTENDERS = ("fastadam", "torch-forloop", "torch-fused")

# run from a checkout without installing: the spawned ranks inherit this sys.path
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _inner(name):
    import functools

    import torch
    if name == "fastadam":
        import fastadam.torch
        return fastadam.torch.Adam
    kw = dict(foreach=False) if name == "torch-forloop" else dict(fused=True)
    return type("Adam", (torch.optim.Adam,),
                {"__init__": functools.partialmethod(torch.optim.Adam.__init__, **kw)})


def _model(width, layers):
    import torch
    torch.manual_seed(0)
    mods = []
    for _ in range(layers):
        mods += [torch.nn.Linear(width, width), torch.nn.GELU()]
    return torch.nn.Sequential(*mods)


def _state_bytes(opt):
    import torch
    seen, total = set(), 0
    for st in opt.state_dict()["state"].values():
        for v in st.values():
            if torch.is_tensor(v) and v.dim() > 0:
                key = (v.untyped_storage().data_ptr(), v.storage_offset())
                if key not in seen:
                    seen.add(key)
                    total += v.numel() * v.element_size()
    return total


def _rank(rank, world, port, args, out):
    import torch
    import torch.distributed as dist
    threads = args.threads or max(1, (os.cpu_count() or 1) // world)
    torch.set_num_threads(threads)
    try:
        import numba
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    except ImportError:
        pass
    if os.path.exists("/sys/class/net/lo"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=120))
    try:
        from torch.distributed.optim import ZeroRedundancyOptimizer
        runs = {}
        for name in args.contenders:
            model = _model(args.width, args.layers)
            zero = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=_inner(name),
                                           lr=1e-4)
            g = torch.Generator().manual_seed(1)
            for p in model.parameters():
                grad = torch.randn(p.shape, generator=g) * 1e-3
                if p.grad is None:          # fastadam binds p.grad to its flat buffer
                    p.grad = grad
                else:
                    p.grad.copy_(grad)
            zero.step()                      # warm-up: JIT, lazy state
            zero.optim.step()
            runs[name] = (model, zero)
        times = {n: {"local": [], "zero": []} for n in args.contenders}
        for _ in range(args.rounds):
            for name in args.contenders:
                _, zero = runs[name]
                dist.barrier()
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    zero.optim.step()
                t1 = time.perf_counter()
                dist.barrier()
                t2 = time.perf_counter()
                for _ in range(args.steps):
                    zero.step()
                t3 = time.perf_counter()
                times[name]["local"].append((t1 - t0) / args.steps)
                times[name]["zero"].append((t3 - t2) / args.steps)
        res = {}
        base = times[args.contenders[0]]["local"]
        for name in args.contenders:
            model, zero = runs[name]
            res[name] = {
                # the same round's ratio to the first contender, median over rounds: the
                # figure that survives other load on the machine best
                "local_ratio": statistics.median(t / b for t, b in zip(times[name]["local"],
                                                                        base)),
                "local_s": statistics.median(times[name]["local"]),
                "zero_s": statistics.median(times[name]["zero"]),
                "state_bytes": _state_bytes(zero.optim),
                "shard_params": sum(p.numel() for gr in zero.optim.param_groups
                                    for p in gr["params"]),
                "params": sum(p.numel() for p in model.parameters()),
                "tensors": len(list(model.parameters())),
                "threads": threads,
            }
        with open(os.path.join(out, f"w{world}_r{rank}.json"), "w") as f:
            json.dump(res, f)
    finally:
        dist.destroy_process_group()


def run_world(world, args):
    import torch.multiprocessing as mp
    with tempfile.TemporaryDirectory() as out:
        ctx = mp.start_processes(_rank, args=(world, _free_port(), args, out), nprocs=world,
                                 join=False, start_method="spawn")
        deadline = time.monotonic() + args.timeout
        try:
            while not ctx.join(timeout=5):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"world={world}: no result in {args.timeout} s")
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
        return [json.load(open(os.path.join(out, f"w{world}_r{r}.json"))) for r in range(world)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--width", type=int, default=416)
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=5, help="steps per round")
    ap.add_argument("--threads", type=int, default=0,
                    help="threads per rank (default: cores / ranks)")
    ap.add_argument("--worlds", default="1,2")
    ap.add_argument("--contenders", default=",".join(CONTENDERS))
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--json", default=None, help="also write the raw figures here")
    args = ap.parse_args(argv)
    args.contenders = args.contenders.split(",")
    allres = {}
    for world in (int(w) for w in args.worlds.split(",")):
        allres[world] = run_world(world, args)
    first = next(iter(allres.values()))[0][args.contenders[0]]
    print(f"model: {first['params']:,} fp32 params in {first['tensors']} tensors; "
          f"medians of {args.rounds} rounds x {args.steps} steps; gloo on 127.0.0.1; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'ranks':>5} {'rank':>4} {'inner optimizer':<15} {'threads':>7} {'shard params':>12} "
          f"{'local step':>11} {'zero step':>11} {'state MiB':>9} "
          f"{'local / ' + args.contenders[0]:>17}")
    for world, ranks in allres.items():
        for r, res in enumerate(ranks):
            for name in args.contenders:
                x = res[name]
                ratio = f"{x['local_ratio']:.2f}x"
                print(f"{world:>5} {r:>4} {name:<15} {x['threads']:>7} {x['shard_params']:>12,} "
                      f"{x['local_s'] * 1e3:>9.3f}ms {x['zero_s'] * 1e3:>9.3f}ms "
                      f"{x['state_bytes'] / 2**20:>9.2f} {ratio:>17}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(allres, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
