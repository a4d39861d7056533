r"""The report of ``fastadam bench``: ratios, tables, machine information and plot.

From the times of :mod:`fastadam.bench.timing` (a ``name -> seconds`` dict per
measurement), :func:`_summarize` makes the rows of a table: each contender's
time, params/s, ``% roofline`` (the fastest roofline loop's time over the
contender's time) and ``vs best peer`` (the best peer's time over the
contender's time; > 1 is faster than every peer).  :func:`format_table` and
:func:`print_report` write them as text (the reduced-precision section through
:func:`fastadam.bench.lowp.format_section`), :func:`machine_info` records where
and with what they were measured (the ``meta`` of the JSON results) and
:func:`plot` draws ``% roofline`` per contender and size.

See Also
--------
fastadam.bench.main : runs the measurements and hands their results here.
"""

from __future__ import annotations

import os
import platform
import time

import numpy as np

from .contenders import PEERS, _deepspeed_adam, _torch, gpt_shapes
from .lowp import format_section
from .timing import _fmt_time, _label


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
    from .. import __version__
    from .._config import PARALLEL_THRESHOLD
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


def print_report(results: dict, stat: str, rounds: int, opt_size: int) -> None:
    """Print the tables of ``results`` (as :func:`fastadam.bench.main.run` gathers them),
    ``stat`` of ``rounds`` interleaved rounds, the other optimizers at ``opt_size``."""
    m = results["meta"]
    print(f"fastadam bench  {m['date']}  {m.get('cpu', m['machine'])}, {m['cpus']} cpus, "
          f"numba {m.get('numba')} ({m.get('threading_layer', '?')}, "
          f"{m.get('numba_threads')} threads), torch {m.get('torch', '-')}, "
          f"deepspeed {m.get('deepspeed', '-')}")
    print(f"{stat} of {rounds} interleaved rounds; % roofline = time of the fastest loop "
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
        from .roofline import bytes_per_param
        for r in results["optimizers"]:
            if r["contender"] == "roofline":
                continue
            lines.append(f"{r['contender']:<28} {r['kernel']:<26} "
                         f"{bytes_per_param(r['kernel']):>11} {_fmt_time(r['median_s'])} "
                         f"{_fmt_time(r['roofline_s'])} {r['pct_roofline']:9.0f}%")
        print("\n".join(lines))
    if results["lowp"]:
        print()
        print(format_section(results["lowp"]))
    if results["crossover"]:
        print("\nnumba Adam kernel, serial vs parallel (PARALLEL_THRESHOLD = "
              f"{m['parallel_threshold']})")
        for r in results["crossover"]:
            line = (f"{_label(r['size']):>10}  serial {_fmt_time(r['serial_s'])}  parallel "
                    f"{_fmt_time(r['parallel_s'])}  parallel speed-up "
                    f"{r['parallel_speedup']:.2f}x")
            if "parallel_speedup_after_torch" in r:   # right after torch's pool ran
                line += (f"  | after torch work: serial {_fmt_time(r['serial_after_torch_s'])}"
                         f"  parallel {_fmt_time(r['parallel_after_torch_s'])}  "
                         f"{r['parallel_speedup_after_torch']:.2f}x")
            print(line)
    if results["startup"]:
        s = results["startup"]
        print(f"\nstart-up (new process, warm numba cache): import fastadam "
              f"{s['import_s'] * 1e3:.0f} ms, first Adam step {s['first_step_s'] * 1e3:.0f} ms")
