r"""``fastadam bench``: fastadam's steps against the peers and the memory roofline.

Every contender runs in this one process, **interleaved round by round**: in
each round every contender times one batch of calls (the order rotates from
round to round), and the reported time is the median over rounds of the time
per call.  On a shared machine whose speed drifts, this keeps the *ratios*
between contenders honest even when absolute times move.

Contenders, for float32 Adam (lr=1e-3, betas=(0.9, 0.999), eps=1e-8) on one
tensor of each size:

* ``roofline``: the fastest loop moving exactly Adam's bytes (reads p, g, m, v;
  writes p, m, v; trivial math), see :mod:`fastadam._roofline`; the fastest of
  its four forms (serial or parallel, plain or software-prefetched).  ``% roofline`` is its time over a
  contender's time.
* ``fastadam step()``: the whole façade call ``fastadam.Adam(...).step()``;
  ``fastadam adam_()``: the functional call; ``fastadam[cython] step()`` when
  the cython backend is built; ``numpy reference`` at small sizes.
* the peers, when importable: ``torch for-loop`` / ``torch foreach`` /
  ``torch fused`` (``torch.optim.Adam``), ``DeepSpeedCPUAdam``.
  ``vs best peer`` is the best peer's time over a contender's time (> 1 is
  faster than every peer).

Then a GPT-like model (76 tensors, 6,967,296 params: token and position
embeddings, 6 layers of attention and MLP weights, biases and norms) stepped
through ``fastadam.torch.Adam`` (when that module exists), the NumPy façade
over a dict of 76 arrays, and the peers; and every other optimizer (the
façade ``step()``) against the roofline of its own traffic; the
reduced-precision table (:mod:`fastadam._bench_lowp`: bf16 / int8 state,
bf16 parameters with master weights and the AMP step at 8M params, against
issue 8's targets).  Finally the start-up costs: ``import fastadam`` and the first step in a new process with
a warm numba cache.

Run ``fastadam bench --help`` for the options.
"""

from __future__ import annotations

import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

from ._progress import Progress

LR, BETAS, EPS = 1e-3, (0.9, 0.999), 1e-8
DEFAULT_SIZES = (4096, 65536, 1 << 20, 1 << 22, 1 << 25)
QUICK_SIZES = (4096, 65536, 1 << 20)
REFERENCE_MAX = 65536          # the NumPy reference only runs up to this size
PEERS = ("torch for-loop", "torch foreach", "torch fused", "DeepSpeedCPUAdam")

#: GPT-like model: vocabulary, context, width, layers -> 76 tensors, 6,967,296 params
GPT = dict(vocab=8192, ctx=512, d=256, layers=6)

#: other optimizers: label -> (façade class, kwargs, kernel name)
OPTIMIZERS = {
    "Adam": ("Adam", {}, "adam"),
    "AdamW": ("AdamW", {}, "adam"),
    "Adam amsgrad": ("Adam", {"amsgrad": True}, "adam_amsgrad"),
    "NAdam": ("NAdam", {}, "nadam"),
    "Adamax": ("Adamax", {}, "adamax"),
    "RMSprop": ("RMSprop", {}, "rmsprop"),
    "RMSprop momentum": ("RMSprop", {"momentum": 0.9}, "rmsprop_momentum"),
    "RMSprop centered": ("RMSprop", {"centered": True}, "rmsprop_centered"),
    "RMSprop centered+momentum": ("RMSprop", {"centered": True, "momentum": 0.9},
                                  "rmsprop_centered_momentum"),
    "Adagrad": ("Adagrad", {}, "adagrad"),
    "SGD": ("SGD", {"lr": 1e-2}, "sgd"),
    "SGD momentum": ("SGD", {"lr": 1e-2, "momentum": 0.9}, "sgd_momentum"),
    "Adadelta": ("Adadelta", {}, "adadelta"),
}


# --------------------------------------------------------------------------------------
# command line
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


# --------------------------------------------------------------------------------------
# contenders
# --------------------------------------------------------------------------------------
def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _deepspeed_adam():
    if _torch() is None:
        return None
    try:
        import contextlib
        import io
        import logging
        logging.getLogger("DeepSpeed").setLevel(logging.ERROR)
        with contextlib.redirect_stdout(io.StringIO()):     # its accelerator banner
            from deepspeed.ops.adam import DeepSpeedCPUAdam
    except Exception:  # ImportError, or its op failing to build
        return None
    return DeepSpeedCPUAdam


def _fastadam_torch():
    try:
        import fastadam.torch as ft
    except ImportError:
        return None
    return ft if hasattr(ft, "Adam") else None


def _cython_available() -> bool:
    import fastadam
    return "cython" in fastadam.available_backends()


def _data(n: int, dtype, seed: int = 0):
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(n, dtype=np.float32).astype(dtype, copy=False)
    g = (rng.standard_normal(n, dtype=np.float32) * 0.01).astype(dtype, copy=False)
    return p, g


def _roofline_fns(kernel: str, n: int, dtype):
    from . import _roofline
    arrays = [np.full(n, 0.5, dtype=dtype) for _ in range(_roofline.arrays_for(kernel))]
    # every form (serial / parallel, plain / prefetched): the tables take the fastest
    return {"roofline " + k: f for k, f in _roofline.loops(arrays).items()}


def _facade(cls_name: str, kwargs: dict, p0, g0, backend="auto"):
    import fastadam
    params = {"w": p0.copy()}
    opt = getattr(fastadam, cls_name)(params, backend=backend, **kwargs)
    opt.grads["w"][...] = g0
    return opt.step


def _torch_adam(torch, params_grads, mode):
    ps = []
    for p0, g0 in params_grads:
        p = torch.nn.Parameter(torch.from_numpy(np.array(p0, copy=True)))
        p.grad = torch.from_numpy(np.array(g0, copy=True))
        ps.append(p)
    kw = {"for-loop": dict(foreach=False), "foreach": dict(foreach=True),
          "fused": dict(fused=True)}[mode]
    opt = torch.optim.Adam(ps, lr=LR, betas=BETAS, eps=EPS, **kw)
    return opt.step


def _ds_adam(DS, torch, params_grads):
    ps = []
    for p0, g0 in params_grads:
        p = torch.nn.Parameter(torch.from_numpy(np.array(p0, copy=True)))
        p.grad = torch.from_numpy(np.array(g0, copy=True))
        ps.append(p)
    opt = DS(ps, lr=LR, betas=BETAS, eps=EPS, adamw_mode=False)
    return opt.step


def single_tensor_contenders(n: int, dtype=np.float32, peers: bool = True) -> dict:
    """``name -> step function`` for Adam on one tensor of ``n`` params."""
    import fastadam
    from fastadam import functional as F
    p0, g0 = _data(n, dtype)
    out = _roofline_fns("adam", n, dtype)
    out["fastadam step()"] = _facade("Adam", dict(lr=LR, betas=BETAS, eps=EPS), p0, g0)
    p, g = p0.copy(), g0.copy()
    m, v = np.zeros_like(p), np.zeros_like(p)
    t = [0]

    def functional():
        t[0] += 1
        F.adam_(p, g, m, v, step=t[0], lr=LR, beta1=BETAS[0], beta2=BETAS[1], eps=EPS)
    out["fastadam adam_()"] = functional
    if _cython_available():
        out["fastadam[cython] step()"] = _facade("Adam", dict(lr=LR, betas=BETAS, eps=EPS),
                                                 p0, g0, backend="cython")
    if n <= REFERENCE_MAX:
        out["numpy reference"] = _facade("Adam", dict(lr=LR, betas=BETAS, eps=EPS), p0, g0,
                                         backend="numpy")
    torch = _torch()
    if torch is not None and _fastadam_torch() is not None:
        out["fastadam.torch step()"] = _fastadam_torch_adam(torch, [(p0, g0)])
    if torch is not None and peers and dtype == np.float32:
        for mode in ("for-loop", "foreach", "fused"):
            out["torch " + mode] = _torch_adam(torch, [(p0, g0)], mode)
        DS = _deepspeed_adam()
        if DS is not None:
            out["DeepSpeedCPUAdam"] = _ds_adam(DS, torch, [(p0, g0)])
    del fastadam
    return out


def gpt_shapes(vocab=GPT["vocab"], ctx=GPT["ctx"], d=GPT["d"], layers=GPT["layers"]):
    """The parameter shapes of a small GPT: 4 + 12 * layers tensors."""
    shapes = [("wte", (vocab, d)), ("wpe", (ctx, d))]
    for i in range(layers):
        shapes += [(f"h{i}.ln1.w", (d,)), (f"h{i}.ln1.b", (d,)),
                   (f"h{i}.attn.qkv.w", (d, 3 * d)), (f"h{i}.attn.qkv.b", (3 * d,)),
                   (f"h{i}.attn.proj.w", (d, d)), (f"h{i}.attn.proj.b", (d,)),
                   (f"h{i}.ln2.w", (d,)), (f"h{i}.ln2.b", (d,)),
                   (f"h{i}.mlp.fc.w", (d, 4 * d)), (f"h{i}.mlp.fc.b", (4 * d,)),
                   (f"h{i}.mlp.proj.w", (4 * d, d)), (f"h{i}.mlp.proj.b", (d,))]
    shapes += [("ln_f.w", (d,)), ("ln_f.b", (d,))]
    return shapes


def model_contenders(shapes, peers: bool = True) -> dict:
    """``name -> step function`` for Adam over the tensors of ``shapes``."""
    rng = np.random.default_rng(1)
    arrays = [(name, rng.standard_normal(s, dtype=np.float32) * 0.02) for name, s in shapes]
    grads = [rng.standard_normal(s, dtype=np.float32) * 0.01 for _, s in shapes]
    total = sum(a.size for _, a in arrays)
    out = _roofline_fns("adam", total, np.float32)
    import fastadam
    params = {name: a.copy() for name, a in arrays}
    opt = fastadam.Adam(params, lr=LR, betas=BETAS, eps=EPS)
    for (name, _), g in zip(arrays, grads):
        opt.grads[name][...] = g
    out["fastadam step() (numpy façade)"] = opt.step
    torch = _torch()
    if torch is None:
        return out
    pg = [(a, g) for (_, a), g in zip(arrays, grads)]
    if _fastadam_torch() is not None:
        out["fastadam.torch step()"] = _fastadam_torch_adam(torch, pg)
    if peers:
        for mode in ("for-loop", "foreach", "fused"):
            out["torch " + mode] = _torch_adam(torch, pg, mode)
        DS = _deepspeed_adam()
        if DS is not None:
            out["DeepSpeedCPUAdam"] = _ds_adam(DS, torch, pg)
    return out


def _fastadam_torch_adam(torch, params_grads):
    ft = _fastadam_torch()
    ps = [torch.nn.Parameter(torch.from_numpy(np.array(p, copy=True))) for p, _ in params_grads]
    opt = ft.Adam(ps, lr=LR, betas=BETAS, eps=EPS)
    # after a first step, zero_grad(set_to_none=False) binds every .grad to a view of
    # the flat gradient buffer; backward then accumulates straight into it: the fast path.
    # (With set_to_none=True, backward makes fresh gradient tensors each step, which
    # fastadam.torch then has to handle per parameter.)
    def backward():
        loss = sum((p * torch.from_numpy(g)).sum() for p, (_, g) in zip(ps, params_grads))
        loss.backward()
    backward()
    opt.step()
    opt.zero_grad(set_to_none=False)
    backward()
    return opt.step


def optimizer_contenders(label: str, n: int) -> dict:
    cls, kwargs, kernel = OPTIMIZERS[label]
    p0, g0 = _data(n, np.float32)
    out = _roofline_fns(kernel, n, np.float32)
    out[label] = _facade(cls, kwargs, p0, g0)
    return out


# --------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------
def _summarize(section: str, n: int, medians: dict) -> list:
    roof = min(t for name, t in medians.items() if name.startswith("roofline "))
    peers = [t for name, t in medians.items() if name in PEERS]
    best_peer = min(peers) if peers else None
    rows = []
    for name, t in medians.items():
        if name.startswith("roofline "):
            continue
        rows.append(dict(section=section, size=n, contender=name, median_s=t,
                         params_per_s=n / t, pct_roofline=100.0 * roof / t, roofline_s=roof,
                         vs_best_peer=(best_peer / t) if best_peer else None))
    rows.sort(key=lambda r: r["median_s"])
    rows.insert(0, dict(section=section, size=n, contender="roofline", median_s=roof,
                        params_per_s=n / roof, pct_roofline=100.0,
                        vs_best_peer=(best_peer / roof) if best_peer else None,
                        roofline_serial_s=medians["roofline serial"],
                        roofline_parallel_s=medians["roofline parallel"]))
    return rows


def _fmt_time(t: float) -> str:
    if t < 1e-3:
        return f"{t * 1e6:8.2f} us"
    if t < 1:
        return f"{t * 1e3:8.3f} ms"
    return f"{t:8.3f} s "


def format_table(rows: list, title: str) -> str:
    lines = [title, f"{'size':>10}  {'contender':<32} {'median':>11} {'params/s':>10} "
                    f"{'% roofline':>10} {'vs best peer':>12}"]
    last = None
    for r in rows:
        size = _label(r["size"]) if r["size"] != last else ""
        last = r["size"]
        peer = f"{r['vs_best_peer']:.2f}x" if r["vs_best_peer"] else "-"
        lines.append(f"{size:>10}  {r['contender']:<32} {_fmt_time(r['median_s'])} "
                     f"{r['params_per_s']:10.3g} {r['pct_roofline']:9.0f}% {peer:>12}")
    return "\n".join(lines)


def machine_info() -> dict:
    info = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": platform.machine(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "numpy": np.__version__}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import numba
        info["numba"] = numba.__version__
        info["numba_threads"] = numba.get_num_threads()
        try:
            info["threading_layer"] = numba.threading_layer()
        except ValueError:
            pass
    except ImportError:
        pass
    from . import __version__
    from ._config import PARALLEL_THRESHOLD
    info["fastadam"] = __version__
    info["parallel_threshold"] = PARALLEL_THRESHOLD
    torch = _torch()
    if torch is not None:
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    if _deepspeed_adam() is not None:
        import deepspeed
        info["deepspeed"] = deepspeed.__version__
    return info


_STARTUP = r"""
import time
t0 = time.perf_counter()
import fastadam
t1 = time.perf_counter()
import numpy as np
opt = fastadam.Adam({"w": np.zeros(4096, np.float32)})
opt.grads["w"][...] = 1.0
opt.step()
t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""


def startup_times(repeats: int = 3) -> dict:
    """``import fastadam`` and first-step times in new processes (warm numba cache)."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    imp, first = [], []
    for i in range(repeats + 1):     # the first run warms the numba cache
        out = subprocess.run([sys.executable, "-c", _STARTUP], capture_output=True, text=True,
                             env=env, timeout=300, check=True)
        a, b = map(float, out.stdout.split())
        if i:
            imp.append(a)
            first.append(b)
    return {"import_s": statistics.median(imp), "first_step_s": statistics.median(first)}


def crossover(rounds: int, batch_time: float, progress=None, stat=statistics.median) -> list:
    """Serial vs parallel numba Adam kernel time at sizes from 4K to 1M."""
    from . import _scalars
    from .kernels import cpu
    rows = []
    for n in (4096, 8192, 12288, 16384, 24576, 32768, 49152, 65536, 131072, 262144, 1 << 20):
        p, g = _data(n, np.float32)
        m, v = np.zeros_like(p), np.zeros_like(p)
        _, scal = _scalars.adam(np.dtype(np.float32), step=1, lr=LR, beta1=BETAS[0],
                                beta2=BETAS[1], eps=EPS, weight_decay=0.0,
                                decoupled_weight_decay=False, amsgrad=False, maximize=False)
        fns = {par: (lambda k=cpu.get("adam", par == "parallel"): k(p, g, m, v, *scal))
               for par in ("serial", "parallel")}
        med = interleave(fns, rounds, batch_time, progress, stat)
        rows.append(dict(size=n, serial_s=med["serial"], parallel_s=med["parallel"],
                         parallel_speedup=med["serial"] / med["parallel"]))
    return rows


def plot(results: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in results["single"] if r["contender"] != "roofline"]
    names = []
    for r in rows:
        if r["contender"] not in names:
            names.append(r["contender"])
    fig, ax = plt.subplots(figsize=(8, 5))
    for name in names:
        pts = sorted((r["size"], r["pct_roofline"]) for r in rows if r["contender"] == name)
        ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.axhline(100, color="k", lw=0.8, ls="--")
    ax.set_xlabel("float32 params (one tensor)")
    ax.set_ylabel("% of memory roofline (higher is faster)")
    ax.set_title("Adam step, " + results["meta"].get("cpu", "") + f", {results['meta']['date']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------
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
            from . import _bench_lowp
            progress.tick(f"reduced precision {_label(lowp_size)}: preparing")
            cont = _bench_lowp.contenders(lowp_size)
            results["lowp"] = _bench_lowp.summarize(
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

    m = results["meta"]
    print(f"fastadam bench  {m['date']}  {m.get('cpu', m['machine'])}, {m['cpus']} cpus, "
          f"numba {m.get('numba')} ({m.get('threading_layer', '?')}, "
          f"{m.get('numba_threads')} threads), torch {m.get('torch', '-')}, "
          f"deepspeed {m.get('deepspeed', '-')}")
    print(f"{args.stat} of {rounds} interleaved rounds; % roofline = time of the fastest loop "
          "moving the same bytes / time; vs best peer = best peer's time / time\n")
    print(format_table(results["single"], "Adam, float32, one tensor"))
    if results["model"]:
        print()
        print(format_table(results["model"], f"Adam, GPT-like model: {len(gpt_shapes())} "
                                             "tensors"))
    if results["optimizers"]:
        print()
        lines = ["Other optimizers, float32, one tensor of "
                 f"{_label(opt_size)}, against the roofline of their own traffic",
                 f"{'optimizer':<28} {'kernel':<26} {'bytes/param':>11} {'median':>11} "
                 f"{'roofline':>11} {'% roofline':>10}"]
        from ._roofline import bytes_per_param
        for r in results["optimizers"]:
            if r["contender"] == "roofline":
                continue
            lines.append(f"{r['contender']:<28} {r['kernel']:<26} "
                         f"{bytes_per_param(r['kernel']):>11} {_fmt_time(r['median_s'])} "
                         f"{_fmt_time(r['roofline_s'])} {r['pct_roofline']:9.0f}%")
        print("\n".join(lines))
    if results["lowp"]:
        from ._bench_lowp import format_section
        print()
        print(format_section(results["lowp"]))
    if results["crossover"]:
        print("\nnumba Adam kernel, serial vs parallel (PARALLEL_THRESHOLD = "
              f"{m['parallel_threshold']})")
        for r in results["crossover"]:
            print(f"{_label(r['size']):>10}  serial {_fmt_time(r['serial_s'])}  parallel "
                  f"{_fmt_time(r['parallel_s'])}  parallel speed-up {r['parallel_speedup']:.2f}x")
    if results["startup"]:
        s = results["startup"]
        print(f"\nstart-up (new process, warm numba cache): import fastadam "
              f"{s['import_s'] * 1e3:.0f} ms, first Adam step {s['first_step_s'] * 1e3:.0f} ms")
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
