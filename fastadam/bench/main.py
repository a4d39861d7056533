r"""The ``fastadam bench`` command: its options and the order of its measurements.

:func:`add_arguments` declares the options (``fastadam bench --help``) and
:func:`run` makes the measurements in turn, each interleaved round by round
(:func:`fastadam.bench.timing.interleave`): Adam on one tensor of each size,
the GPT-like model, the other optimizers, the reduced-precision section
(:mod:`fastadam.bench.lowp`), the serial / parallel crossover and the start-up
costs; then it prints the report (:func:`fastadam.bench.report.print_report`)
and writes the JSON results and the plot when asked.  :mod:`fastadam.cli`
reaches both through :mod:`fastadam.bench`.

This is the top layer of :mod:`fastadam.bench`: no other module of the package
imports it.

See Also
--------
fastadam.bench.contenders : what each measurement times.
fastadam.bench.report : what is printed of the results.
"""

from __future__ import annotations

import gc
import json
import math
import os
import statistics
import sys

from .._progress import Progress
from .contenders import (OPTIMIZERS, _torch, crossover, gpt_shapes, model_contenders,
                         optimizer_contenders, single_tensor_contenders, startup_times)
from .lowp import contenders as lowp_contenders, summarize as lowp_summarize
from .report import _summarize, machine_info, plot, print_report
from .timing import _label, _size, _sizes, interleave

DEFAULT_SIZES = (4096, 65536, 1 << 20, 1 << 22, 1 << 25)
QUICK_SIZES = (4096, 65536, 1 << 20)


def add_arguments(parser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="short run (< 30 s): sizes 4K,64K,1M, 3 rounds, a smaller "
                             "optimizer table")
    parser.add_argument("--sizes", type=_sizes, default=None,
                        help="comma-separated flat-buffer sizes (e.g. 4K,64K,1M,4M,32M; "
                             "default 4K,64K,1M,4M,32M)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="interleaved rounds per measurement (default 7; quick 3)")
    parser.add_argument("--batch-time", type=float, default=None,
                        help="seconds each contender runs per round (default 0.03; quick 0.005)")
    parser.add_argument("--opt-size", type=_size, default=None,
                        help="size for the other-optimizers table (default 4M; quick 1M)")
    parser.add_argument("--no-model", action="store_true", help="skip the GPT-like model")
    parser.add_argument("--no-peers", action="store_true",
                        help="leave out torch.optim and DeepSpeedCPUAdam")
    parser.add_argument("--no-optimizers", action="store_true",
                        help="skip the other-optimizers table")
    parser.add_argument("--lowp-size", type=_size, default=None,
                        help="size for the reduced-precision / AMP table (default 8M; "
                             "quick 1M)")
    parser.add_argument("--no-lowp", action="store_true",
                        help="skip the reduced-precision / AMP table")
    parser.add_argument("--no-startup", action="store_true",
                        help="skip the import / first-step timings")
    parser.add_argument("--crossover", action="store_true",
                        help="also time the serial and the parallel numba kernel from 4K to "
                             "1M to show where parallel starts to win (PARALLEL_THRESHOLD)")
    parser.add_argument("--stat", choices=("median", "min"), default="median",
                        help="statistic over rounds (default median; min is the more robust "
                             "estimate of intrinsic speed on a machine busy with other work)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for every contender (numba, torch, OpenMP); default: "
                             "each library's own (all cores)")
    parser.add_argument("--json", metavar="FILE", default=None, help="write results as JSON")
    parser.add_argument("--plot", metavar="FILE.png", default=None,
                        help="plot %% of roofline per contender and size (needs matplotlib)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument("--sparse", action="store_true",
                        help="only the row-sparse (embedding) table: torch SparseAdam / "
                             "Adagrad / SGD against fastadam's (fastadam.bench.sparse)")
    parser.add_argument("--loop", action="store_true",
                        help="only the training-loop table: zero_grad + forward + backward + "
                             "step() of the seed's MLP, an ~8M-param MLP and a small "
                             "transformer with torch foreach / fused, DeepSpeedCPUAdam and "
                             "fastadam.torch (fastadam.bench.loop)")
    parser.add_argument("--keras", action="store_true",
                        help="only the Keras table (torch backend): fit() step time with "
                             "each keras.optimizers.X against its fastadam.keras twin, on "
                             "the seed's model and an ~8M-param MLP (fastadam.bench.keras)")



def _set_threads(n: int) -> None:
    """Every library's thread count; the environment variables only take effect for
    libraries not imported yet (so this runs before any contender is made)."""
    for var in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    if "numba" in sys.modules:
        import numba
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    torch = _torch()
    if torch is not None:
        torch.set_num_threads(n)


def run(args) -> int:
    if args.threads is not None:
        if args.threads < 1:
            print("fastadam bench: --threads must be >= 1", file=sys.stderr)
            return 2
        _set_threads(args.threads)
    if args.sparse:
        from .sparse import run as run_sparse
        return run_sparse(args)
    if args.loop:
        from .loop import run as run_loop
        return run_loop(args)
    if args.keras:
        from .keras import run as run_keras
        return run_keras(args)
    quick = args.quick
    stat = {"median": statistics.median, "min": min}[args.stat]
    sizes = args.sizes or list(QUICK_SIZES if quick else DEFAULT_SIZES)
    rounds = args.rounds or (3 if quick else 7)
    if rounds < 1:
        print("fastadam bench: --rounds must be >= 1", file=sys.stderr)
        return 2
    batch_time = args.batch_time or (0.005 if quick else 0.03)
    opt_size = args.opt_size or ((1 << 20) if quick else (1 << 22))
    opt_labels = list(OPTIMIZERS)
    if quick:
        opt_labels = ["AdamW", "Adam amsgrad", "RMSprop", "Adagrad", "SGD momentum"]
    do_model = not args.no_model
    do_opts = not args.no_optimizers
    lowp_size = args.lowp_size or ((1 << 20) if quick else (1 << 23))
    do_lowp = not args.no_lowp
    steps = (len(sizes) + (1 if do_model else 0) + (len(opt_labels) if do_opts else 0) +
             (1 if do_lowp else 0) +
             (11 if args.crossover else 0)) * rounds
    progress = Progress(steps, enabled=not args.no_progress)

    results = {"single": [], "model": [], "optimizers": [], "lowp": None, "startup": None,
               "crossover": None}
    try:
        for n in sizes:
            progress.tick(f"Adam {_label(n)}: preparing")
            cont = single_tensor_contenders(n, peers=not args.no_peers)
            results["single"] += _summarize("single", n, interleave(cont, rounds, batch_time,
                                                                    progress, stat))
            del cont
            gc.collect()
        if do_model:
            shapes = gpt_shapes()
            progress.tick("GPT-like model: preparing")
            cont = model_contenders(shapes, peers=not args.no_peers)
            total = sum(math.prod(s) for _, s in shapes)
            rows = _summarize("model", total, interleave(cont, rounds, batch_time, progress, stat))
            for r in rows:
                r["tensors"] = len(shapes)
            results["model"] = rows
            del cont
            gc.collect()
        if do_opts:
            for label in opt_labels:
                progress.tick(f"{label}: preparing")
                cont = optimizer_contenders(label, opt_size)
                rows = _summarize("optimizers", opt_size,
                                  interleave(cont, rounds, batch_time, progress, stat))
                for r in rows:
                    r["kernel"] = OPTIMIZERS[label][2]
                results["optimizers"] += rows
                del cont
                gc.collect()
        if do_lowp:
            progress.tick(f"reduced precision {_label(lowp_size)}: preparing")
            cont = lowp_contenders(lowp_size)
            results["lowp"] = lowp_summarize(
                lowp_size, interleave(cont, rounds, batch_time, progress, stat))
            del cont
            gc.collect()
        if args.crossover:
            results["crossover"] = crossover(rounds, batch_time, progress, stat)
        if not args.no_startup:
            progress.tick("start-up times")
            results["startup"] = startup_times(2 if quick else 3)
    finally:
        progress.close()
    results["meta"] = machine_info()
    results["meta"].update(rounds=rounds, batch_time=batch_time, stat=args.stat)

    print_report(results, args.stat, rounds, opt_size)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
        print(f"\nresults written to {args.json}")
    if args.plot:
        try:
            plot(results, args.plot)
        except ImportError:
            print("fastadam bench: --plot needs matplotlib (pip install matplotlib)",
                  file=sys.stderr)
            return 1
        print(f"plot written to {args.plot}")
    return 0
