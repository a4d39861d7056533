"""Multi-process training with fastadam.torch.Adam under DDP or ZeRO-1.

Launch with torchrun (one process per rank)::

    torchrun --nproc-per-node 2 examples/distributed_train.py               # DDP
    torchrun --nproc-per-node 2 examples/distributed_train.py --mode zero   # ZeRO-1

On CPU the ranks talk over gloo; when CUDA is available each rank takes the GPU
``LOCAL_RANK`` and the ranks talk over NCCL.  The model is a small MLP fitted to a fixed
random "teacher" network; each rank draws its own batches (data parallelism), DDP
averages the gradients, and the optimizer is ``fastadam.torch.Adam``:

* ``--mode ddp``: every rank holds the whole optimizer state, steps every parameter;
* ``--mode zero``: ``torch.distributed.optim.ZeroRedundancyOptimizer`` gives each rank
  a ``fastadam.torch.Adam`` over its shard of the parameters (ZeRO stage 1: optimizer
  state is partitioned) and broadcasts the updated shards after each step.

At the end the script checks that every rank holds the same parameters and that the loss
went down, and exits non-zero otherwise.  ``--save PATH`` writes a checkpoint (model and
consolidated optimizer state) from rank 0 that a single process can load into
``fastadam.torch.Adam`` to continue training.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=("ddp", "zero"), default="ddp",
                    help="DDP (replicated optimizer) or ZeRO-1 (sharded optimizer state)")
    ap.add_argument("--optimizer", choices=("fastadam", "torch"), default="fastadam",
                    help="inner optimizer: fastadam.torch.Adam or torch.optim.Adam")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=64, help="batch size per rank")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--save", default=None, help="checkpoint path written by rank 0")
    return ap.parse_args(argv)


def make_model(hidden):
    nn = torch.nn
    return nn.Sequential(nn.Linear(32, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                         nn.Linear(hidden, 8))


def batch(step, rank, size, device, teacher):
    g = torch.Generator().manual_seed(10_000 * step + rank)
    x = torch.randn(size, 32, generator=g)
    with torch.no_grad():
        y = teacher(x)
    return x.to(device), y.to(device)


def optimizer_class(name):
    if name == "torch":
        return torch.optim.Adam
    try:
        import fastadam.torch
    except ImportError:            # run from a checkout that is not installed
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        import fastadam.torch
    return fastadam.torch.Adam


def main(argv=None) -> int:
    args = parse_args(argv)
    use_cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get(
            "LOCAL_WORLD_SIZE", 1))))
    # rendezvous from torchrun's environment (MASTER_ADDR/PORT, RANK, WORLD_SIZE)
    dist.init_process_group("nccl" if use_cuda else "gloo",
                            timeout=datetime.timedelta(seconds=120))
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        torch.manual_seed(0)                  # same initial weights on every rank
        teacher = make_model(args.hidden)
        model = make_model(args.hidden).to(device)
        ddp = DDP(model, device_ids=[local_rank] if use_cuda else None)
        cls = optimizer_class(args.optimizer)
        if args.mode == "zero":
            from torch.distributed.optim import ZeroRedundancyOptimizer
            opt = ZeroRedundancyOptimizer(ddp.parameters(), optimizer_class=cls, lr=args.lr)
        else:
            opt = cls(ddp.parameters(), lr=args.lr)

        first = last = None
        for step in range(args.steps):
            x, y = batch(step, rank, args.batch, device, teacher)
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(ddp(x), y)
            loss.backward()
            opt.step()
            avg = loss.detach().clone()
            dist.all_reduce(avg)
            avg = avg.item() / world
            first = avg if first is None else first
            last = avg
            if rank == 0 and (step % 20 == 0 or step == args.steps - 1):
                print(f"step {step:4d}  loss {avg:.6f}", flush=True)

        # every rank must hold rank 0's parameters, bit for bit
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        ref = flat.clone()
        dist.broadcast(ref, src=0)
        mismatch = torch.tensor([float((flat != ref).sum())], device=device)
        dist.all_reduce(mismatch)
        ok = mismatch.item() == 0 and last < first

        if args.mode == "zero":
            opt.consolidate_state_dict(to=0)   # collective: every rank calls it
        if args.save and rank == 0:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                        "step": args.steps}, args.save)
        if rank == 0:
            n = sum(p.numel() for p in model.parameters())
            print(f"{args.mode} x {world} ranks ({device.type}), {args.optimizer} Adam, "
                  f"{n} params: loss {first:.4f} -> {last:.4f}; "
                  f"ranks agree: {mismatch.item() == 0}", flush=True)
        # tear the process group down together: a rank that destroys it while rank 0 is
        # still saving aborted once in CI ("terminate called without an active exception")
        dist.barrier()
        return 0 if ok else 1
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
