"""The cython backend beside numba: step time per size, serial/parallel loops, cold start.

* ``AdamRun.time_run``: the backend's ``run(kernel_name, arrays, scalars)`` (the
  compiled-backend contract: array checks + dispatch + loop), numba and cython.
* ``AdamRun.time_bind``: the bound caller (arrays checked once; per call only the
  scalars and the loop), what the façades use.
* (``fastadam.functional.adam_`` per backend, cython included: ``bench_backends.py``.)
* ``CythonLoops.time_loop``: the cython serial and parallel loops at every size (where
  they cross is ``PARALLEL_THRESHOLD``).
* ``ColdStart.timeraw_*``: a new interpreter: import + first Adam step, per backend
  (numba from its warm on-disk cache: asv repeats a timeraw benchmark, so only the first
  repetition compiles).
"""

import numpy as np

from . import BETAS, DTYPES, EPS, LR, PATH_SETUP, SIZES, backend_available, data, zeros_like

BACKENDS = ["numba", "cython"]
BIG = 1 << 25          # 32M params: 28 B/param for Adam fp32, 0.9 GB moved per step
RUN_SIZES = SIZES + [BIG]


def _adam_scalars(dtype, step=10):
    from fastadam import _scalars
    return _scalars.adam(np.dtype(dtype), step=step, lr=LR, beta1=BETAS[0], beta2=BETAS[1],
                         eps=EPS, weight_decay=0.0, decoupled_weight_decay=False,
                         amsgrad=False, maximize=False)


def _runner(backend):
    if not backend_available(backend):
        raise NotImplementedError(f"{backend} backend unavailable")
    if backend == "numba":
        from fastadam.kernels import cpu
        return cpu
    from fastadam._cython import backend as cy
    return cy


class AdamRun:
    """Adam, one flat buffer: ``run`` and ``bind`` of each compiled host backend."""

    params = (BACKENDS, DTYPES, RUN_SIZES)
    param_names = ["backend", "dtype", "size"]
    timeout = 300

    def setup(self, backend, dtype, n):
        if n == BIG and dtype == "float64":
            raise NotImplementedError("32M params timed in float32 only")
        mod = _runner(backend)
        p, g = data(n, dtype)
        self.arrays = (p, g, zeros_like(p), zeros_like(p))
        self.name, self.scalars = _adam_scalars(dtype)
        self.run = mod.run
        bind = getattr(mod, "bind", None)
        self.bound = bind(self.name, self.arrays, self.scalars) if bind else None
        self.run(self.name, self.arrays, self.scalars)     # compile / warm

    def time_run(self, *args):
        self.run(self.name, self.arrays, self.scalars)

    def time_bind(self, *args):
        if self.bound is None:
            raise NotImplementedError("no bind")
        self.bound(*self.scalars)


class CythonLoops:
    """The cython Adam loop, serial and OpenMP-parallel, whatever the threshold says."""

    params = (["serial", "parallel"], ["float32"], SIZES)
    param_names = ["variant", "dtype", "size"]

    def setup(self, variant, dtype, n):
        cy = _runner("cython")
        if variant == "parallel" and not cy.openmp_enabled():
            raise NotImplementedError("serial build (no OpenMP)")
        from fastadam import _config
        p, g = data(n, dtype)
        self.arrays = (p, g, zeros_like(p), zeros_like(p))
        self.name, self.scalars = _adam_scalars(dtype)
        saved = _config.PARALLEL_THRESHOLD
        _config.PARALLEL_THRESHOLD = 0 if variant == "parallel" else 1 << 62
        try:
            self.bound = cy.bind(self.name, self.arrays, self.scalars)
        finally:
            _config.PARALLEL_THRESHOLD = saved
        self.bound(*self.scalars)

    def time_loop(self, *args):
        self.bound(*self.scalars)


_FIRST_STEP = """
import fastadam, fastadam.functional
p = np.zeros(4096, np.float32); g = np.ones(4096, np.float32)
m = np.zeros_like(p); v = np.zeros_like(p)
fastadam.functional.adam_(p, g, m, v, step=1, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
                          backend={backend!r})
"""


class ColdStart:
    """A new interpreter: ``import fastadam`` + the first Adam step, per backend."""

    params = BACKENDS
    param_names = ["backend"]
    timeout = 300
    repeat = (3, 10, 60.0)

    def setup(self, backend):
        _runner(backend)

    def timeraw_import_and_first_step(self, backend):
        # timed: the code (import fastadam + first step); not timed: the setup (numpy)
        return _FIRST_STEP.format(backend=backend), PATH_SETUP + "; import numpy as np"


# --- the interleaved one-run comparison (python -m benchmarks.bench_cython, from benchmarks/) ---

_COLD = r"""
import time, numpy as np
t0 = time.perf_counter()
import fastadam, fastadam.functional
t1 = time.perf_counter()
p = np.zeros(4096, np.float32); g = np.ones(4096, np.float32)
m = np.zeros_like(p); v = np.zeros_like(p)
fastadam.functional.adam_(p, g, m, v, step=1, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
                          backend=BACKEND)
t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""


def main(rounds=15):
    """numba vs cython, Adam fp32, interleaved round by round in one process: ``run`` and
    ``bind`` at 4K, 1M and 32M params (median and best of ``rounds``), then cold start
    (new process: import fastadam + first step; numba's cache warmed first)."""
    import os
    import subprocess
    import sys
    import time
    from fastadam import _scalars  # noqa: F401  (fastadam importable)
    mods = {b: _runner(b) for b in BACKENDS}
    cases = {}
    for n, reps in ((4096, 3000), (1 << 20, 60), (BIG, 4)):
        name, sc = _adam_scalars("float32")
        for b, mod in mods.items():
            p, g = data(n)
            arrs = (p, g, zeros_like(p), zeros_like(p))
            bound = mod.bind(name, arrs, sc)
            cases[(n, b, "run")] = (reps, lambda mod=mod, a=arrs, s=sc, k=name: mod.run(k, a, s))
            cases[(n, b, "bind")] = (reps, lambda f=bound, s=sc: f(*s))
    for reps, f in cases.values():
        f()
    times = {k: [] for k in cases}
    keys = list(cases)
    for r in range(rounds):
        for k in (keys if r % 2 == 0 else keys[::-1]):
            reps, f = cases[k]
            t0 = time.perf_counter()
            for _ in range(reps):
                f()
            times[k].append((time.perf_counter() - t0) / reps)
    print(f"Adam fp32, {rounds} interleaved rounds: time per step, cython / numba")
    for n in sorted({k[0] for k in keys}):
        for how in ("run", "bind"):
            tn, tc = times[(n, "numba", how)], times[(n, "cython", how)]
            print(f"  {n:>9} {how:4}: median numba {np.median(tn)*1e6:10.1f} us, cython "
                  f"{np.median(tc)*1e6:10.1f} us, ratio {np.median(tc)/np.median(tn):.2f}; "
                  f"best ratio {min(tc)/min(tn):.2f}")
    env = dict(os.environ)
    if PATH_SETUP != "pass":
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.dirname(os.path.dirname(
            os.path.dirname(os.path.abspath(__file__)))), env.get("PYTHONPATH")]))

    def cold(b):
        out = subprocess.run([sys.executable, "-c", _COLD.replace("BACKEND", repr(b))],
                             env=env, capture_output=True, text=True, check=True,
                             timeout=300).stdout.split()
        return float(out[0]) + float(out[1])

    for b in BACKENDS:
        cold(b)  # warm numba's cache and the file cache
    cs = {b: [] for b in BACKENDS}
    for r in range(rounds):
        for b in (BACKENDS if r % 2 == 0 else BACKENDS[::-1]):
            cs[b].append(cold(b))
    print(f"Cold start (new process: import fastadam + first step), median of {rounds}:")
    for b in BACKENDS:
        print(f"  {b:6}: {np.median(cs[b])*1e3:7.1f} ms")


if __name__ == "__main__":
    main()
