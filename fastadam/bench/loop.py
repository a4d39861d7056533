r"""The training-loop section of ``fastadam bench`` (``fastadam bench --loop``).

What a user feels: whole iterations of real PyTorch training loops, ``zero_grad()``,
forward, backward and ``step()``, with each optimizer on its own copy of the model
made from the same initial weights, interleaved round by round in one process
(each contender runs a batch of iterations per round, the order rotating).

Workloads (float32, CPU), :data:`WORKLOADS`:

* ``seed MLP``: the seed's model, ``Linear(100, 64) -> ReLU -> Linear(64, 1)``,
  binary cross-entropy on logits, batch 32 (6,529 params, 4 tensors);
* ``MLP 8M``: ``1024 -> 2048 -> 2048 -> 1024`` with ReLUs, mean squared error, batch
  64 (8,393,728 params, 6 tensors);
* ``transformer 6x256``: a token embedding (8192 x 256, tied to the output layer), a
  learned position embedding (64 x 256), 6 pre-norm ``nn.TransformerEncoderLayer``
  (width 256, 4 heads, MLP 1024, no dropout, causal mask), a final layer norm;
  next-token cross-entropy on 8 sequences of 64 tokens (6,852,608 params, 76 tensors).

``--quick`` runs small versions of the three (a test runs them in seconds).

Contenders (:func:`contenders`): ``torch foreach`` and ``torch fused``
(``torch.optim.Adam``), ``DeepSpeedCPUAdam`` when DeepSpeed imports (left out
otherwise), and ``fastadam.torch`` (``fastadam.torch.Adam``), all with
``zero_grad()`` as torch's default (``set_to_none=True``: backward makes fresh
gradient tensors each iteration); and ``fastadam.torch, grads kept``: the same
with ``zero_grad(set_to_none=False)``, which keeps every ``.grad`` bound to
fastadam's flat gradient buffer.  Adam, lr 1e-3, default betas and eps.

Reported per contender (the statistic over rounds of each round's mean):
the iteration time, the ``step()`` time and its share of the iteration, the
``zero_grad()`` + forward + backward time and its ratio to torch fused's (an
optimizer whose threads linger after its step would slow the next backward: this
column shows whether one does), and the fastest peer's iteration time over the
contender's (> 1: faster than every peer).
"""

from __future__ import annotations

import copy
import gc
import json
import statistics
import sys
import time

from .._progress import Progress
from .contenders import _deepspeed_adam, _fastadam_torch, _torch
from .report import machine_info
from .timing import _fmt_time

LR = 1e-3
#: name -> (kind, configuration); full size and ``--quick`` size
WORKLOADS = {
    "seed MLP": ("mlp", dict(widths=(100, 64, 1), batch=32, loss="bce")),
    "MLP 8M": ("mlp", dict(widths=(1024, 2048, 2048, 1024), batch=64, loss="mse")),
    "transformer 6x256": ("transformer", dict(vocab=8192, d=256, layers=6, heads=4, ctx=64,
                                              batch=8)),
}
QUICK_WORKLOADS = {
    "seed MLP": WORKLOADS["seed MLP"],
    "MLP 64K": ("mlp", dict(widths=(128, 256, 128), batch=16, loss="mse")),
    "transformer 2x32": ("transformer", dict(vocab=128, d=32, layers=2, heads=2, ctx=16,
                                             batch=2)),
}
PEERS = ("torch foreach", "torch fused", "DeepSpeedCPUAdam")


def _mlp(torch, widths, batch, loss):
    nn = torch.nn
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        if i:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(a, b))
    model = nn.Sequential(*layers)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, widths[0], generator=g)
    if loss == "bce":
        y = (torch.rand(batch, widths[-1], generator=g) > 0.5).float()
        crit = nn.BCEWithLogitsLoss()
    else:
        y = torch.randn(batch, widths[-1], generator=g)
        crit = nn.MSELoss()
    return model, (lambda m: crit(m(x), y))


def _transformer(torch, vocab, d, layers, heads, ctx, batch):
    nn = torch.nn

    class TinyLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok = nn.Embedding(vocab, d)
            self.pos = nn.Parameter(torch.randn(ctx, d) * 0.02)
            self.blocks = nn.ModuleList(
                nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, batch_first=True,
                                           norm_first=True) for _ in range(layers))
            self.norm = nn.LayerNorm(d)
            self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(ctx),
                                 persistent=False)

        def forward(self, idx):
            h = self.tok(idx) + self.pos[:idx.shape[1]]
            for blk in self.blocks:
                h = blk(h, src_mask=self.mask, is_causal=True)
            return self.norm(h) @ self.tok.weight.T          # tied output layer

    model = TinyLM()
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, vocab, (batch, ctx + 1), generator=g)
    x, y = tokens[:, :-1], tokens[:, 1:]
    crit = nn.CrossEntropyLoss()
    return model, (lambda m: crit(m(x).reshape(-1, vocab), y.reshape(-1)))


def build(torch, workload: str, quick: bool = False):
    """``(model, loss_of)`` for ``workload`` (``loss_of(model)`` is one batch's loss),
    the weights drawn from seed 0."""
    kind, cfg = (QUICK_WORKLOADS if quick else WORKLOADS)[workload]
    torch.manual_seed(0)
    return (_mlp if kind == "mlp" else _transformer)(torch, **cfg)


def _optimizer(torch, name: str, params):
    if name == "torch foreach":
        return torch.optim.Adam(params, lr=LR, foreach=True)
    if name == "torch fused":
        return torch.optim.Adam(params, lr=LR, fused=True)
    if name == "DeepSpeedCPUAdam":
        return _deepspeed_adam()(params, lr=LR, adamw_mode=False)
    return _fastadam_torch().Adam(params, lr=LR)


def contender_names(torch) -> list:
    """The contenders this machine can run (DeepSpeed and fastadam.torch when importable)."""
    names = ["torch foreach", "torch fused"]
    if _deepspeed_adam() is not None:
        names.append("DeepSpeedCPUAdam")
    if _fastadam_torch() is not None:
        names += ["fastadam.torch", "fastadam.torch, grads kept"]
    return names


def contenders(torch, workload: str, quick: bool = False, names=None) -> dict:
    """``name -> it`` for ``workload``: ``it()`` runs one training iteration on that
    contender's own copy of the model (the same initial weights for all) and returns
    ``(seconds of zero_grad + forward + backward, seconds of step)``."""
    model0, loss_of = build(torch, workload, quick)
    out = {}
    for name in names or contender_names(torch):
        model = copy.deepcopy(model0)
        opt = _optimizer(torch, name, model.parameters())
        keep = name.endswith("grads kept")

        def it(model=model, opt=opt, keep=keep, clock=time.perf_counter):
            t0 = clock()
            opt.zero_grad(set_to_none=not keep)
            loss_of(model).backward()
            t1 = clock()
            opt.step()
            return t1 - t0, clock() - t1
        out[name] = it
    return out


def interleave_iterations(its: dict, rounds: int, batch_time: float, progress=None,
                          stat=statistics.median) -> dict:
    """``name -> {"iteration": s, "fwd_bwd": s, "step": s}``: ``stat`` over rounds of
    each round's mean per iteration; every contender runs a batch of iterations per
    round (sized to ``batch_time`` from warm-up iterations), the order rotating."""
    reps = {}
    for name, it in its.items():
        for _ in range(2):                   # warm: lazy state, compiled kernels
            it()
        t0 = time.perf_counter()
        it()
        reps[name] = max(1, min(1000, int(batch_time / max(time.perf_counter() - t0, 1e-6))))
    samples = {name: {"fwd_bwd": [], "step": [], "iteration": []} for name in its}
    names = list(its)
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for r in range(rounds):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                it, n = its[name], reps[name]
                fb = st = 0.0
                for _ in range(n):
                    a, b = it()
                    fb += a
                    st += b
                s = samples[name]
                s["fwd_bwd"].append(fb / n)
                s["step"].append(st / n)
                s["iteration"].append((fb + st) / n)
            if progress is not None:
                progress.tick(f"round {r + 1}/{rounds}")
            gc.collect()
    finally:
        if gc_was:
            gc.enable()
    return {name: {k: stat(v) for k, v in s.items()} for name, s in samples.items()}


def rows_of(workload: str, params: int, tensors: int, times: dict) -> list:
    """The table rows of one workload: each contender's times and the ratios."""
    peers = [times[p]["iteration"] for p in PEERS if p in times]
    best_peer = min(peers) if peers else None
    fused = times.get("torch fused")
    rows = []
    for name, t in times.items():
        rows.append(dict(
            workload=workload, params=params, tensors=tensors, contender=name,
            iteration_s=t["iteration"], step_s=t["step"], fwd_bwd_s=t["fwd_bwd"],
            step_share=t["step"] / t["iteration"],
            fwd_bwd_vs_fused=t["fwd_bwd"] / fused["fwd_bwd"] if fused else None,
            vs_best_peer=best_peer / t["iteration"] if best_peer else None))
    return rows


def format_report(rows, stat: str, rounds: int) -> str:
    lines = [f"Training loops: zero_grad + forward + backward + step(), {stat} over "
             f"{rounds} interleaved rounds (float32, CPU)",
             "fwd+bwd / fused: zero_grad + forward + backward time over torch fused's; "
             "vs best peer: the fastest peer's iteration over this one's", ""]
    head = (f"{'contender':28s} {'iteration':>11s} {'step':>11s} {'step %':>7s} "
            f"{'fwd+bwd':>11s} {'fwd+bwd / fused':>16s} {'vs best peer':>13s}")
    workload = None
    for r in rows:
        if r["workload"] != workload:
            workload = r["workload"]
            lines += ([""] if len(lines) > 3 else []) + [
                f"{workload}: {r['params']:,} params in {r['tensors']} tensors", head]
        fb = "-" if r["fwd_bwd_vs_fused"] is None else f"{r['fwd_bwd_vs_fused']:.3f}"
        vs = "-" if r["vs_best_peer"] is None else f"{r['vs_best_peer']:.2f}x"
        lines.append(f"{r['contender']:28s} {_fmt_time(r['iteration_s'])} "
                     f"{_fmt_time(r['step_s'])} {100 * r['step_share']:6.1f}% "
                     f"{_fmt_time(r['fwd_bwd_s'])} {fb:>16s} {vs:>13s}")
    return "\n".join(lines)


def run(args) -> int:
    """``fastadam bench --loop``: the table of every workload, and the JSON if asked."""
    torch = _torch()
    if torch is None:
        print("fastadam bench --loop: needs torch (pip install torch)", file=sys.stderr)
        return 2
    quick = args.quick
    rounds = args.rounds or (3 if quick else 7)
    if rounds < 1:
        print("fastadam bench: --rounds must be >= 1", file=sys.stderr)
        return 2
    batch_time = args.batch_time or (0.01 if quick else 0.3)
    stat = {"median": statistics.median, "min": min}[args.stat]
    workloads = QUICK_WORKLOADS if quick else WORKLOADS
    progress = Progress(rounds * len(workloads), enabled=not args.no_progress)
    rows = []
    try:
        for w in workloads:
            progress.tick(f"{w}: preparing")
            its = contenders(torch, w, quick)
            model, _ = build(torch, w, quick)
            ps = list(model.parameters())
            times = interleave_iterations(its, rounds, batch_time, progress, stat)
            rows += rows_of(w, sum(p.numel() for p in ps), len(ps), times)
            del its, model, ps
            gc.collect()
    finally:
        progress.close()
    print(format_report(rows, args.stat, rounds))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": dict(machine_info(), rounds=rounds, batch_time=batch_time,
                                    stat=args.stat), "loop": rows}, f, indent=1)
        print(f"\nresults written to {args.json}")
    return 0
