r"""What ``fastadam bench`` times: the step functions of fastadam and of its peers.

Contenders, for float32 Adam (lr=1e-3, betas=(0.9, 0.999), eps=1e-8) on one
tensor of each size (:func:`single_tensor_contenders`):

* ``roofline serial`` / ``roofline parallel`` / ...: every form of the loop
  moving exactly Adam's bytes (:mod:`fastadam.bench.roofline`; the report takes
  the fastest);
* ``fastadam step()``: the whole façade call ``fastadam.Adam(...).step()``;
  ``fastadam adam_()``: the functional call; ``fastadam[cython] step()`` when
  the cython backend is built; ``fastadam.torch step()`` (gradients bound to the
  flat buffer, ``zero_grad(set_to_none=False)``) and ``fastadam.torch, fresh grads``
  (fresh gradient tensors each step, torch's default ``zero_grad()``) when torch is
  importable; ``numpy reference`` at small sizes;
* the peers, when importable: ``torch for-loop`` / ``torch foreach`` /
  ``torch fused`` (``torch.optim.Adam``), ``DeepSpeedCPUAdam``.

The same over the 76 tensors of a GPT-like model (:func:`gpt_shapes`,
:func:`model_contenders`), every other optimizer's façade ``step()`` beside the
roofline of its own traffic (:data:`OPTIMIZERS`, :func:`optimizer_contenders`),
the serial and parallel numba kernels across sizes (:func:`crossover`) and the
start-up costs in a new process (:func:`startup_times`).

Each contender is a ``name -> fn`` entry: ``fn()`` makes one step, and
:func:`fastadam.bench.timing.interleave` times them.

See Also
--------
fastadam.bench.timing : how they are timed.
fastadam.bench.report : the ratios and tables made of their times.
fastadam.bench.lowp : the contenders of the reduced-precision section.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

import numpy as np

from .. import _alloc
from .timing import interleave

LR, BETAS, EPS = 1e-3, (0.9, 0.999), 1e-8
REFERENCE_MAX = 65536          # the NumPy reference only runs up to this size
PEERS = ("torch for-loop", "torch foreach", "torch fused", "DeepSpeedCPUAdam")
#: fastadam.torch's contender with fresh gradient tensors each step (the other,
#: ``fastadam.torch step()``, keeps them bound to the flat gradient buffer)
TORCH_FRESH = "fastadam.torch, fresh grads"

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
    return _alloc.copy(p), _alloc.copy(g)       # aligned, as fastadam's own buffers


def _roofline_fns(kernel: str, n: int, dtype):
    from .roofline import arrays_for, loops
    # aligned as fastadam's own buffers (fastadam._alloc): the limit of the fastest layout
    arrays = [_alloc.full(n, 0.5, dtype) for _ in range(arrays_for(kernel))]
    # every form (serial / parallel, plain / prefetched): the tables take the fastest
    return {"roofline " + k: f for k, f in loops(arrays).items()}


def _facade(cls_name: str, kwargs: dict, p0, g0, backend="auto"):
    import fastadam
    params = {"w": p0.copy()}
    opt = getattr(fastadam, cls_name)(params, backend=backend, **kwargs)
    opt.grads["w"][...] = g0
    return opt.step


def _torch_copy(torch, a):
    """A copy of NumPy array ``a`` in memory torch allocated (64-byte aligned, as the
    parameters and gradients of a torch model): NumPy's own allocations of large arrays
    sit 16 bytes past a page boundary, which slows torch's and DeepSpeed's steps on them
    (measured at 1M: fused Adam 1.13x, DeepSpeedCPUAdam 1.08x slower)."""
    return torch.from_numpy(a).clone()


def _torch_adam(torch, params_grads, mode):
    ps = []
    for p0, g0 in params_grads:
        p = torch.nn.Parameter(_torch_copy(torch, p0))
        p.grad = _torch_copy(torch, g0)
        ps.append(p)
    kw = {"for-loop": dict(foreach=False), "foreach": dict(foreach=True),
          "fused": dict(fused=True)}[mode]
    opt = torch.optim.Adam(ps, lr=LR, betas=BETAS, eps=EPS, **kw)
    return opt.step


def _ds_adam(DS, torch, params_grads):
    ps = []
    for p0, g0 in params_grads:
        p = torch.nn.Parameter(_torch_copy(torch, p0))
        p.grad = _torch_copy(torch, g0)
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
    p, g = _alloc.copy(p0), _alloc.copy(g0)   # aligned, as the façades' buffers
    m, v = _alloc.zeros(n, p.dtype), _alloc.zeros(n, p.dtype)
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
        out[TORCH_FRESH] = _fastadam_torch_fresh(torch, [(p0, g0)])
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
        out[TORCH_FRESH] = _fastadam_torch_fresh(torch, pg)
    if peers:
        for mode in ("for-loop", "foreach", "fused"):
            out["torch " + mode] = _torch_adam(torch, pg, mode)
        DS = _deepspeed_adam()
        if DS is not None:
            out["DeepSpeedCPUAdam"] = _ds_adam(DS, torch, pg)
    return out


def _fastadam_torch_adam(torch, params_grads):
    ft = _fastadam_torch()
    ps = [torch.nn.Parameter(_torch_copy(torch, p)) for p, _ in params_grads]
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


def _fastadam_torch_fresh(torch, params_grads):
    """fastadam.torch.Adam's step with fresh gradient tensors, as after torch's default
    ``zero_grad()`` (``set_to_none=True``) and a backward: before each step every
    ``.grad`` is assigned a gradient tensor other than the last one (two sets, used in
    turn; the assignment is part of the time), never a view of the flat buffer."""
    ft = _fastadam_torch()
    ps = [torch.nn.Parameter(_torch_copy(torch, p)) for p, _ in params_grads]
    sets = [[_torch_copy(torch, g) for _, g in params_grads]
            for _ in range(2)]
    opt = ft.Adam(ps, lr=LR, betas=BETAS, eps=EPS)
    turn = [0]

    def step():
        turn[0] ^= 1
        for p, g in zip(ps, sets[turn[0]]):
            p.grad = g
        opt.step()
    step()
    return step


def optimizer_contenders(label: str, n: int) -> dict:
    cls, kwargs, kernel = OPTIMIZERS[label]
    p0, g0 = _data(n, np.float32)
    out = _roofline_fns(kernel, n, np.float32)
    out[label] = _facade(cls, kwargs, p0, g0)
    return out


# --------------------------------------------------------------------------------------
# start-up and the serial / parallel crossover
# --------------------------------------------------------------------------------------
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
    # the directory holding the fastadam package (this file is fastadam/bench/contenders.py)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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
    """Serial vs parallel numba Adam kernel time at sizes from 4K to 1M; with torch, also
    each call right after torch's own thread pool has run (:func:`_after_torch_work`:
    ``serial_after_torch_s``, ``parallel_after_torch_s``), as a step runs after backward."""
    from .. import _scalars
    from ..kernels import cpu
    rows = []
    for n in (4096, 8192, 12288, 16384, 24576, 32768, 49152, 65536, 131072, 262144, 1 << 20):
        p, g = _data(n, np.float32)
        m, v = _alloc.zeros(n, p.dtype), _alloc.zeros(n, p.dtype)
        _, scal = _scalars.adam(np.dtype(np.float32), step=1, lr=LR, beta1=BETAS[0],
                                beta2=BETAS[1], eps=EPS, weight_decay=0.0,
                                decoupled_weight_decay=False, amsgrad=False, maximize=False)
        fns = {par: (lambda k=cpu.get("adam", par == "parallel"): k(p, g, m, v, *scal))
               for par in ("serial", "parallel")}
        med = interleave(fns, rounds, batch_time, progress, stat)
        row = dict(size=n, serial_s=med["serial"], parallel_s=med["parallel"],
                   parallel_speedup=med["serial"] / med["parallel"])
        after = _after_torch_work(fns, 20 * rounds, stat)
        if after is not None:
            row.update(serial_after_torch_s=after["serial"],
                       parallel_after_torch_s=after["parallel"],
                       parallel_speedup_after_torch=after["serial"] / after["parallel"])
        rows.append(row)
    return rows


def _after_torch_work(fns: dict, calls: int, stat) -> dict | None:
    """``stat`` of the seconds of one call of each ``name -> fn`` made right after
    about half a millisecond of torch matrix products on torch's own threads (as a
    step follows backward: torch's thread pool has just run, numba's has been idle);
    None without torch.  The calls alternate between the contenders."""
    torch = _torch()
    if torch is None:
        return None
    y = torch.randn(192, 192)

    def torch_work():
        for _ in range(6):
            torch.mm(y, y)
    times = {name: [] for name in fns}
    names = list(fns)
    for r in range(calls):
        for name in names[r % len(names):] + names[:r % len(names)]:
            torch_work()
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return {name: stat(ts) for name, ts in times.items()}
