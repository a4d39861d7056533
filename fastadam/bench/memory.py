r"""Peak memory of the NumPy façade: construction and the first steps, in a new process.

:func:`facade_memory` starts a fresh Python process (so that nothing else this process
allocated counts), which makes float32 parameters of the given sizes (every page
written, as a model's initialized weights are), loads the kernel with a small
warm-up step, then measures its resident set (Linux ``/proc/self/status``:
``VmRSS``, and the peak ``VmHWM``, reset before each phase by writing ``5`` to
``/proc/self/clear_refs``; elsewhere ``resource.getrusage``'s ``ru_maxrss``, which
cannot be reset) around

* construction: ``fastadam.<optimizer>(params)``, with the caller's dict the only
  holder of the arrays (so each one can be released once copied into the flat
  buffer);
* ``steps`` steps, after writing every gradient (the optimizer's state made at the
  first).

Figures are bytes.  ``construct_added``: the peak during construction above the
resident set just before it (the parameters already counted there);
``steps_added``: the peak during the steps above that same figure.

See Also
--------
fastadam.flat.FlatParams : the flattening whose peak this measures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

#: The resident-set probes both measurement scripts start with: the current (VmRSS) and
#: peak (VmHWM; getrusage where /proc is missing) resident set, and a reset of the peak.
_PROBES = r"""
import gc, json, os, sys

def status(key):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None

def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False

def peak():
    hwm = status("VmHWM")
    if hwm is not None:
        return hwm
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

"""

_SCRIPT = _PROBES + r"""
import numpy as np
import fastadam

cfg = json.loads(sys.argv[1])
cls = getattr(fastadam, cfg["optimizer"])
# load the kernels first (serial and parallel variants) and let their memory settle
for n in (1024, 1 << 17):
    w = cls({"w": np.full(n, 0.5, np.float32)})
    w.grads["w"][...] = 0.01
    w.step()
del w
params = {f"p{i}": np.full(n, 0.5, np.float32) for i, n in enumerate(cfg["sizes"])}
gc.collect()
out = {"resettable": reset_peak()}
out["rss_before"] = status("VmRSS") or peak()
out["peak_before"] = peak()
opt = cls(params)
out["peak_construct"] = peak()
out["rss_after_construct"] = status("VmRSS")
reset_peak()
for k in opt.grads:
    opt.grads[k][...] = 0.01
for _ in range(cfg["steps"]):
    opt.step()
out["peak_steps"] = peak()
print(json.dumps(out))
"""


def _measure(script: str, cfg: dict, timeout: float) -> dict:
    """Run measurement ``script`` with ``cfg`` (JSON, its argument) in a new process that
    imports this fastadam; return the JSON object it prints last."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-c", script, json.dumps(cfg)], capture_output=True,
                         text=True, env=env, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"the memory measurement failed:\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def facade_memory(sizes, optimizer: str = "Adam", steps: int = 2, timeout: float = 300) -> dict:
    """Resident-set figures (bytes) of constructing ``fastadam.<optimizer>`` over float32
    parameters of ``sizes`` elements and of ``steps`` steps, in a new process.

    Returns the measured ``rss_before``, ``peak_construct``, ``rss_after_construct``,
    ``peak_steps`` and ``resettable`` (whether the peak could be reset before each
    phase; without it the peaks include everything before), and the derived
    ``params_bytes``, ``largest_bytes``, ``construct_added`` and ``steps_added``.
    """
    out = _measure(_SCRIPT, {"sizes": [int(n) for n in sizes], "optimizer": optimizer,
                             "steps": int(steps)}, timeout)
    out["params_bytes"] = 4 * sum(int(n) for n in sizes)
    out["largest_bytes"] = 4 * max(int(n) for n in sizes)
    out["construct_added"] = out["peak_construct"] - out["rss_before"]
    out["steps_added"] = out["peak_steps"] - out["rss_before"]
    return out


_TORCH_SCRIPT = _PROBES + r"""
cfg = json.loads(sys.argv[1])
import torch
import fastadam.torch as ft

def make(params):
    if cfg["optimizer"] == "torch fused":
        return torch.optim.Adam(params, lr=1e-3, fused=True)
    if cfg["optimizer"] == "torch foreach":
        return torch.optim.Adam(params, lr=1e-3, foreach=True)
    return ft.Adam(params, lr=1e-3)

set_to_none = cfg["grads"] == "fresh"

def train(model, opt, x, steps):
    for _ in range(steps):
        opt.zero_grad(set_to_none=set_to_none)
        model(x).square().mean().backward()
        opt.step()

torch.manual_seed(0)
# load the code (kernels, serial and parallel; torch's ops) on a small model first
w = torch.nn.Sequential(*[torch.nn.Linear(512, 512) for _ in range(2)])
train(w, make(w.parameters()), torch.randn(cfg["batch"], 512), 3)
del w
n = cfg["width"]
model = torch.nn.Sequential(*[torch.nn.Linear(n, n) for _ in range(cfg["layers"])])
x = torch.randn(cfg["batch"], n)
gc.collect()
out = {"resettable": reset_peak()}
out["rss_before"] = status("VmRSS") or peak()
opt = make(model.parameters())
out["peak_construct"] = peak()
out["rss_after_construct"] = status("VmRSS")
reset_peak()
train(model, opt, x, cfg["steps"])
out["peak_steps"] = peak()
out["rss_after_steps"] = status("VmRSS")
print(json.dumps(out))
"""


def torch_memory(optimizer: str = "fastadam.torch", grads: str = "fresh", layers: int = 8,
                 width: int = 2048, steps: int = 2, batch: int = 8,
                 timeout: float = 600) -> dict:
    """Resident-set figures (bytes) of an Adam over ``layers`` ``Linear(width, width)``
    layers (float32) and ``steps`` training steps, in a new process.

    ``optimizer``: ``"fastadam.torch"``, ``"torch fused"`` or ``"torch foreach"``;
    ``grads``: ``"fresh"`` (``zero_grad()``, torch's default) or ``"bound"``
    (``zero_grad(set_to_none=False)``).  Returns ``rss_before``, ``peak_construct``,
    ``rss_after_construct``, ``peak_steps``, ``rss_after_steps``, ``resettable``, and
    the derived ``params_bytes``, ``largest_bytes``, ``construct_added``.
    """
    if optimizer not in ("fastadam.torch", "torch fused", "torch foreach"):
        raise ValueError(f"optimizer must be 'fastadam.torch', 'torch fused' or "
                         f"'torch foreach', got {optimizer!r}")
    if grads not in ("fresh", "bound"):
        raise ValueError(f"grads must be 'fresh' or 'bound', got {grads!r}")
    out = _measure(_TORCH_SCRIPT, {"optimizer": optimizer, "grads": grads,
                                   "layers": int(layers), "width": int(width),
                                   "steps": int(steps), "batch": int(batch)}, timeout)
    out["params_bytes"] = 4 * layers * (width * width + width)
    out["largest_bytes"] = 4 * width * width
    out["construct_added"] = out["peak_construct"] - out["rss_before"]
    return out
