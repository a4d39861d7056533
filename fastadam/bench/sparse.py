r"""The row-sparse (embedding) section of ``fastadam bench`` (``fastadam bench --sparse``).

One float32 embedding table per measurement (default: 1M x 64 with 8,192 lookups
per step and 100K x 128 with 32,768), lookups drawn from a Zipf distribution
(exponent :data:`ZIPF`, hot rows scattered over the table by a fixed permutation;
about 1,800 distinct rows of 8,192 at 1M rows) or uniformly.  Each step's gradient
is what ``nn.Embedding(sparse=True)`` hands the optimizer: an uncoalesced COO tensor
with one row per lookup; :data:`BATCHES` different ones are cycled.  Every
contender runs interleaved in one process (:func:`fastadam.bench.timing.interleave`):

* ``torch SparseAdam``, ``torch Adagrad (sparse)``, ``torch SGD (sparse)``: the
  ``step()`` of ``torch.optim.SparseAdam`` / ``Adagrad`` / ``SGD`` (for-loop path);
* ``torch fused Adam (dense)``: ``torch.optim.Adam(fused=True)`` over the whole
  table with a dense gradient (what the table costs when its gradient is dense);
* ``row-traffic loop``: the limit a row-sparse Adam step is measured against -- a
  plain compiled parallel loop over the *pre-deduplicated* rows (the lookups given
  already grouped by row: no sorting, no deduplication) that moves every byte such a
  step must move: it reads each lookup's index entry and gradient row (all
  ``lookups x dim`` of them, summed per row in lookup order, with plain loops) and
  reads and writes the table, ``exp_avg`` and ``exp_avg_sq`` rows (trivial math), on
  tables allocated as fastadam's flat buffers (:mod:`fastadam._alloc`: page-aligned,
  transparent huge pages);
  ``row-traffic loop, torch memory``: the same loop on torch-allocated tables (4 KiB
  pages where THP is in its ``madvise`` mode: what torch's optimizers run on);
  ``row-traffic loop, pre-summed``: a lower floor that also skips the gradient reads
  -- one pre-summed gradient row per distinct row (what the previous versions of this
  bench called the row-traffic loop);
* ``fastadam SparseAdam``, ``fastadam Adagrad (sparse)``, ``fastadam SGD (sparse)``,
  ``fastadam RowWiseAdagrad``, ``fastadam Adam lazy``: the whole ``step()`` of the
  fastadam.torch optimizer, coalescing included.

Below each table, the ratios that say where fastadam stands: its SparseAdam against
torch's SparseAdam and sparse SGD and against the traffic loops (the limits), its
sparse Adagrad against torch's.

See Also
--------
fastadam.kernels.cpu_sparse : the kernels measured here.
"""

from __future__ import annotations

import gc
import json
import statistics
import sys

import numpy as np

from .. import _alloc
from .._progress import Progress
from .contenders import _fastadam_torch, _torch, _torch_copy
from .report import machine_info
from .timing import _fmt_time, _label, interleave

#: (rows, dim, lookups per step, distribution) of the default measurements
TABLES = ((1 << 20, 64, 8192, "zipf"), (100_000, 128, 32768, "zipf"),
          (1 << 20, 64, 8192, "uniform"))
QUICK_TABLES = ((1 << 20, 64, 8192, "zipf"),)
#: exponent of the Zipf lookups (numpy.random.Generator.zipf)
ZIPF = 1.25
#: distinct gradients cycled through the steps
BATCHES = 4
LR = 1e-3
#: the ratios printed below each table: (contender, against) -- against a peer, how many
#: times faster; against a traffic loop (a limit), how many times its time
COMPARISONS = (("fastadam SparseAdam", "torch SparseAdam"),
               ("fastadam SparseAdam", "torch SGD (sparse)"),
               ("fastadam SparseAdam", "row-traffic loop"),
               ("fastadam SparseAdam", "row-traffic loop, torch memory"),
               ("fastadam SparseAdam", "row-traffic loop, pre-summed"),
               ("fastadam Adagrad (sparse)", "torch Adagrad (sparse)"))


def lookups(rows: int, n: int, dist: str, rng, perm=None) -> np.ndarray:
    """``n`` looked-up rows: Zipf ranks mapped through ``perm`` (hot rows scattered),
    or uniform."""
    if dist == "uniform":
        return rng.integers(0, rows, n)
    ranks = (rng.zipf(ZIPF, n) - 1) % rows
    return ranks if perm is None else perm[ranks]


_LOOPS = {}


def _presummed_loop():
    """The pre-summed row-traffic loop (numba, compiled on first use, cached): one
    gradient row per distinct row, given summed."""
    if "presummed" not in _LOOPS:
        import numba

        @numba.njit(parallel=True, cache=True, nogil=True, boundscheck=False)
        def rows_adam_traffic(p, m, v, rows, g):
            for k in numba.prange(rows.shape[0]):
                r = rows[k]
                for j in range(p.shape[1]):
                    x = g[k, j]
                    m[r, j] = m[r, j] + x
                    v[r, j] = v[r, j] + x
                    p[r, j] = p[r, j] - x
        _LOOPS["presummed"] = rows_adam_traffic
    return _LOOPS["presummed"]


def _row_loop():
    """The row-traffic loop: over the distinct rows, given grouped (``order``: the
    lookups by row; distinct row ``s`` has lookups ``order[starts[s]:starts[s+1]]``),
    in ``nitems`` work items of consecutive rows.  Per row it reads each lookup's
    entry of ``idx`` (the row is taken from there) and gradient row, sums them in a
    scratch row, and moves the row's bytes of an Adam step (trivial math)."""
    if "rows" not in _LOOPS:
        import numba

        @numba.njit(parallel=True, cache=True, nogil=True, boundscheck=False)
        def rows_lookups_adam_traffic(p, m, v, idx, order, starts, vals, nitems):
            nseg = starts.shape[0] - 1
            dim = p.shape[1]
            scratch = np.empty((nitems, dim), p.dtype)
            for c in numba.prange(nitems):
                buf = scratch[c]
                for s in range(c * nseg // nitems, (c + 1) * nseg // nitems):
                    a = starts[s]
                    q = order[a]
                    r = idx[q]
                    for j in range(dim):
                        buf[j] = vals[q, j]
                    for k in range(a + 1, starts[s + 1]):
                        q = order[k]
                        r = idx[q]
                        for j in range(dim):
                            buf[j] += vals[q, j]
                    for j in range(dim):
                        x = buf[j]
                        m[r, j] = m[r, j] + x
                        v[r, j] = v[r, j] + x
                        p[r, j] = p[r, j] - x
        _LOOPS["rows"] = rows_lookups_adam_traffic
    return _LOOPS["rows"]


def _cycle(fn, items):
    state = [0]

    def step():
        k = state[0]
        state[0] = (k + 1) % len(items)
        fn(items[k])
    return step


#: the torch.optim contenders: name -> (constructor of the optimizer, dense gradient?)
PEERS = {
    "torch SparseAdam": (lambda torch, ft, p: torch.optim.SparseAdam(p, lr=LR), False),
    "torch Adagrad (sparse)": (lambda torch, ft, p: torch.optim.Adagrad(p, lr=LR), False),
    "torch SGD (sparse)": (lambda torch, ft, p: torch.optim.SGD(p, lr=LR), False),
    "torch fused Adam (dense)": (lambda torch, ft, p: torch.optim.Adam(p, lr=LR, fused=True),
                                 True),
}
#: fastadam's contenders, the same way
FASTADAM = {
    "fastadam SparseAdam": (lambda torch, ft, p: ft.SparseAdam(p, lr=LR), False),
    "fastadam Adagrad (sparse)": (lambda torch, ft, p: ft.Adagrad(p, lr=LR), False),
    "fastadam SGD (sparse)": (lambda torch, ft, p: ft.SGD(p, lr=LR), False),
    "fastadam RowWiseAdagrad": (lambda torch, ft, p: ft.RowWiseAdagrad(p, lr=LR), False),
    "fastadam Adam lazy": (lambda torch, ft, p: ft.Adam(p, lr=LR, sparse_grads="lazy"), False),
}


def contenders(rows: int, dim: int, n: int, dist: str = "zipf", peers: bool = True,
               seed: int = 0, only=None) -> dict:
    """``name -> fn`` (one step each) for a ``rows x dim`` float32 table, ``n`` lookups
    (``only``: just these names; each contender has tables of its own)."""
    torch = _torch()
    ft = _fastadam_torch()
    rng = np.random.default_rng(seed)
    perm = rng.permutation(rows)
    idx = [lookups(rows, n, dist, rng, perm) for _ in range(BATCHES)]
    vals = [(rng.standard_normal((n, dim), dtype=np.float32) * 0.01) for _ in range(BATCHES)]
    base = rng.standard_normal((rows, dim), dtype=np.float32)
    want = (lambda name: only is None or name in only)
    out = {}
    # the row-traffic loops: over pre-deduplicated rows (the lookups grouped by row)
    import numba
    nitems = 4 * numba.get_num_threads()
    grouped, presummed = [], []
    for i, x in zip(idx, vals):
        order = np.argsort(i, kind="stable")
        _, starts = np.unique(i[order], return_index=True)
        grouped.append((i, order, np.append(starts, len(i)), x, nitems))
        r, inv = np.unique(i, return_inverse=True)
        g = np.zeros((r.size, dim), np.float32)
        np.add.at(g, inv.reshape(-1), x)
        presummed.append((r, g))
    if want("row-traffic loop"):
        tables = [_alloc.copy(base), _alloc.zeros(base.shape, base.dtype),
                  _alloc.zeros(base.shape, base.dtype)]
        loop = _row_loop()
        out["row-traffic loop"] = _cycle(lambda a, t=tables: loop(*t, *a), grouped)
    if want("row-traffic loop, pre-summed"):
        tables2 = [_alloc.copy(base), _alloc.zeros(base.shape, base.dtype),
                   _alloc.zeros(base.shape, base.dtype)]
        loop2 = _presummed_loop()
        out["row-traffic loop, pre-summed"] = _cycle(lambda rg, t=tables2: loop2(*t, *rg),
                                                     presummed)
    if torch is None:
        return out
    if want("row-traffic loop, torch memory"):
        # the same loop on tables torch allocated (as torch's own optimizers' state):
        # no transparent huge pages where THP is in its "madvise" mode
        tt = [_torch_copy(torch, base), torch.zeros(rows, dim), torch.zeros(rows, dim)]
        arrs = [t.numpy() for t in tt]
        loop = _row_loop()
        out["row-traffic loop, torch memory"] = _cycle(
            lambda a, arrs=arrs, tt=tt: loop(*arrs, *a), grouped)
    # every tensor in torch's own memory (64-byte aligned), as a model's: NumPy puts a
    # large array 16 bytes past a page boundary, so each 256-byte row would span 5 lines
    grads = [torch.sparse_coo_tensor(torch.from_numpy(i)[None], _torch_copy(torch, x),
                                     (rows, dim)) for i, x in zip(idx, vals)]
    dense = []
    makers = dict(PEERS if peers else {})
    if ft is not None and hasattr(ft, "SparseAdam"):
        makers.update(FASTADAM)
    for name, (make, is_dense) in makers.items():
        if not want(name):
            continue
        w = torch.nn.Parameter(_torch_copy(torch, base))
        opt = make(torch, ft, [w])
        if is_dense and not dense:
            dense.append(_torch_copy(
                torch, rng.standard_normal((rows, dim), dtype=np.float32) * 0.01))

        def step(g, w=w, opt=opt, d=dense[0] if is_dense else None):
            w.grad = g if d is None else d
            opt.step()
        out[name] = _cycle(step, grads)
    return out


def summarize(rows: int, dim: int, n: int, dist: str, times: dict, distinct: float) -> dict:
    """The measurement as a dict: times, speed-ups over torch SparseAdam, the ratios of
    :data:`COMPARISONS`."""
    ref = times.get("torch SparseAdam")
    res = {"rows": rows, "dim": dim, "lookups": n, "dist": dist, "distinct_rows": distinct,
           "times_s": times,
           "vs_torch_sparse_adam": {k: ref / t for k, t in times.items()} if ref else None,
           "comparisons": []}
    for a, b in COMPARISONS:
        if a in times and b in times:
            res["comparisons"].append({"contender": a, "against": b,
                                       "ratio": times[b] / times[a]})
    return res


def format_section(results: list, stat: str) -> str:
    lines = [f"Row-sparse steps, float32 ({stat} of interleaved rounds; whole step())"]
    for r in results:
        lines.append("")
        lines.append(f"{_label(r['rows'])} x {r['dim']} table, {r['lookups']:,} {r['dist']} "
                     f"lookups per step (~{r['distinct_rows']:,.0f} distinct rows)")
        lines.append(f"  {'contender':<28} {'time':>11} {'vs torch SparseAdam':>20}")
        for name, t in sorted(r["times_s"].items(), key=lambda kv: kv[1]):
            vs = r["vs_torch_sparse_adam"]
            vs = f"{vs[name]:.2f}x" if vs else "-"
            lines.append(f"  {name:<28} {_fmt_time(t)} {vs:>20}")
        for c in r["comparisons"]:
            if "traffic loop" in c["against"]:
                lines.append(f"  {c['contender']} / {c['against']}: {1 / c['ratio']:.2f}x "
                             "the time")
            else:
                lines.append(f"  {c['contender']} vs {c['against']}: {c['ratio']:.2f}x faster")
    return "\n".join(lines)


def run(args) -> int:
    """``fastadam bench --sparse``: the tables of :data:`TABLES` (``--quick``: the first)."""
    import warnings
    warnings.filterwarnings("ignore", "Sparse invariant checks")    # torch's, once per run
    stat_name = getattr(args, "stat", "median")
    stat = {"median": statistics.median, "min": min}[stat_name]
    quick = getattr(args, "quick", False)
    rounds = args.rounds or (3 if quick else 7)
    batch_time = args.batch_time or (0.02 if quick else 0.1)
    tables = QUICK_TABLES if quick else TABLES
    progress = Progress(len(tables) * rounds, enabled=not getattr(args, "no_progress", False))
    results = []
    try:
        for rows, dim, n, dist in tables:
            progress.tick(f"{_label(rows)} x {dim}, {n} {dist}: preparing")
            rng = np.random.default_rng(0)
            perm = rng.permutation(rows)
            distinct = float(np.mean([np.unique(lookups(rows, n, dist, rng, perm)).size
                                      for _ in range(BATCHES)]))
            cont = contenders(rows, dim, n, dist, peers=not getattr(args, "no_peers", False))
            times = interleave(cont, rounds, batch_time, progress, stat)
            results.append(summarize(rows, dim, n, dist, times, distinct))
            del cont
            gc.collect()
    finally:
        progress.close()
    print(format_section(results, stat_name))
    if getattr(args, "json", None):
        with open(args.json, "w") as f:
            json.dump({"sparse": results, "meta": dict(machine_info(), rounds=rounds,
                                                      batch_time=batch_time, stat=stat_name)},
                      f, indent=1)
        print(f"\nresults written to {args.json}", file=sys.stderr)
    return 0
