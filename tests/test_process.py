"""Threads and fork: fastadam never kills or hangs the process (docs/architecture.md,
"Threads and fork").

Each scenario runs in its own interpreter with a timeout, so that an abort or a hang is a
failed test and not a crashed run, on numba's default threading layer (``omp`` here) and
on ``workqueue`` (numba's fallback where no OpenMP or TBB runtime is present; not
thread-safe: two threads launching parallel kernels at once abort the process).
Buffers are 1M elements, above the parallel threshold, so the parallel variants run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

LAYERS = ["default", "workqueue"]

THREADS = textwrap.dedent("""
    import threading
    import numpy as np
    import fastadam
    import fastadam.functional as F

    n, k, steps = 1 << 20, 4, 4
    rng = np.random.default_rng(0)
    inits = [rng.standard_normal(n).astype(np.float32) for _ in range(k)]
    grads = [[rng.standard_normal(n).astype(np.float32) for _ in range(steps)]
             for _ in range(k)]

    def facade(i, out):          # bound kernel entry points (the façade's cached plans)
        opt = fastadam.Adam([inits[i].copy()], lr=1e-2)
        for g in grads[i]:
            opt.grads[0][:] = g
            opt.step()
        out[i] = opt.params[0].copy()

    def functional(i, out):      # numba's dispatch (fastadam.functional)
        p = inits[i].copy()
        m, v = np.zeros_like(p), np.zeros_like(p)
        for t, g in enumerate(grads[i], 1):
            F.adam_(p, g, m, v, step=t, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8)
        out[i] = p

    for fn in (facade, functional):
        serial, concurrent = {}, {}
        for i in range(k):
            fn(i, serial)
        ts = [threading.Thread(target=fn, args=(i, concurrent)) for i in range(k)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert all(np.array_equal(serial[i], concurrent[i]) for i in range(k)), fn.__name__
    import numba
    print("OK", numba.threading_layer())
""")

FORK = textwrap.dedent("""
    import multiprocessing as mp
    import numpy as np
    import fastadam

    n = 1 << 20

    def step(seed):
        rng = np.random.default_rng(seed)
        opt = fastadam.Adam([rng.standard_normal(n).astype(np.float32)], lr=1e-2)
        for _ in range(3):
            opt.grads[0][:] = rng.standard_normal(n).astype(np.float32)
            opt.step()
        return opt, opt.params[0].copy()

    def child(q, opt):
        opt.grads[0][:] = 1.0        # the parent's optimizer, inherited, steps once more
        opt.step()
        q.put((step(1)[1].tobytes(), opt.params[0].tobytes()))

    if __name__ == "__main__":
        opt, a = step(0)             # the parent's thread pool has started
        expected = opt.params[0].copy()
        ctx = mp.get_context("fork")
        q = ctx.Queue()
        p = ctx.Process(target=child, args=(q, opt))
        p.start()
        got, inherited = q.get(timeout=120)
        p.join(60)
        assert p.exitcode == 0, p.exitcode
        assert np.array_equal(np.frombuffer(got, np.float32), step(1)[1])
        opt.grads[0][:] = 1.0
        opt.step()                   # the parent keeps working, in parallel
        assert np.array_equal(np.frombuffer(inherited, np.float32), opt.params[0])
        assert np.array_equal(step(0)[1], a)
        print("OK")
""")

TORCH_FORK = textwrap.dedent("""
    import multiprocessing as mp
    import numpy as np
    import torch
    import fastadam.torch as fat

    n = 1 << 20

    def step(seed):
        g = torch.Generator().manual_seed(seed)
        p = torch.nn.Parameter(torch.randn(n, generator=g))
        opt = fat.Adam([p], lr=1e-2)
        for _ in range(3):
            p.grad = torch.randn(n, generator=g)
            opt.step()
        return p.detach().numpy().copy()

    def child(q):
        torch.set_num_threads(1)     # what torch's DataLoader workers do
        q.put(step(1).tobytes())

    if __name__ == "__main__":
        a = step(0)
        ctx = mp.get_context("fork")
        q = ctx.Queue()
        p = ctx.Process(target=child, args=(q,))
        p.start()
        got = q.get(timeout=120)
        p.join(60)
        assert p.exitcode == 0, p.exitcode
        assert np.array_equal(np.frombuffer(got, np.float32), step(1))
        assert np.array_equal(step(0), a)
        print("OK")
""")


def _run(script, layer):
    env = dict(os.environ, NUMBA_THREADING_LAYER=layer)
    try:
        r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                           text=True, timeout=300)
    except subprocess.TimeoutExpired as e:   # a hang is a failure, not a stuck run
        pytest.fail(f"hung (killed after {e.timeout} s): {e.stdout!r} {e.stderr!r}")
    assert r.returncode == 0 and "OK" in r.stdout, (
        f"exit {r.returncode}\nstdout: {r.stdout[-2000:]}\nstderr: {r.stderr[-3000:]}")
    return r.stdout


@pytest.mark.parametrize("layer", LAYERS)
def test_concurrent_steps_in_threads_give_the_serial_bits(layer):
    out = _run(THREADS, layer)
    if layer == "workqueue":
        assert "workqueue" in out, out


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
@pytest.mark.parametrize("layer", LAYERS)
def test_forked_child_steps_and_parent_goes_on(layer):
    _run(FORK, layer)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
@pytest.mark.parametrize("layer", LAYERS)
def test_fastadam_torch_in_a_forked_child(layer):
    pytest.importorskip("torch")
    _run(TORCH_FORK, layer)


THREADS_FOLLOW = textwrap.dedent("""
    import numba
    import numpy as np
    import torch
    import fastadam.torch as fat

    p0 = torch.randn(1 << 20, generator=torch.Generator().manual_seed(0))
    results = []
    for nt in (1, 2, 1):
        torch.set_num_threads(nt)
        p = torch.nn.Parameter(p0.clone())
        opt = fat.Adam([p], lr=1e-2)
        for _ in range(2):
            p.grad = torch.full_like(p, 0.5)
            opt.step()
            assert numba.get_num_threads() == min(nt, numba.config.NUMBA_NUM_THREADS), nt
            assert torch.get_num_threads() == nt, (nt, torch.get_num_threads())
        results.append(p.detach().numpy().copy())
    assert all(np.array_equal(results[0], r) for r in results)
    print("OK")
""")


def test_fastadam_torch_follows_torch_threads():
    """fastadam.torch's kernels run with torch.get_num_threads() threads (1 in a DataLoader
    worker), with the same bits whatever the count; and torch's own thread count stays as the
    user set it (``numba.set_num_threads`` before numba's pool has started resets the
    process's OpenMP count, which torch reads: fastadam starts the pool first and keeps
    torch's count)."""
    pytest.importorskip("torch")
    _run(THREADS_FOLLOW, "default")
