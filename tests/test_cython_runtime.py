"""The Cython backend in fresh processes: without numba, and beside numba's OpenMP pool."""

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

if os.environ.get("FASTADAM_REQUIRE_CYTHON") != "1":  # CI sets it: then these must run
    pytest.importorskip("fastadam._cython.backend",
                        reason="the Cython extension is not built "
                               "(python setup.py build_ext --inplace)")

import fastadam  # noqa: E402

TESTS = pathlib.Path(__file__).resolve().parent
# where the fastadam under test lives (the source tree, or site-packages when installed)
PKG_PARENT = pathlib.Path(fastadam.__file__).resolve().parent.parent


def _run(code, timeout=120, env=None):
    e = dict(os.environ)
    e.pop("NUMBA_ENABLE_CUDASIM", None)
    e["PYTHONPATH"] = os.pathsep.join([str(PKG_PARENT), str(TESTS)] +
                                      ([e["PYTHONPATH"]] if e.get("PYTHONPATH") else []))
    e.update(env or {})
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                       text=True, timeout=timeout, env=e, cwd=str(PKG_PARENT))
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    return r.stdout


def test_works_where_numba_cannot_be_imported():
    """numba blocked: 'cython' is available, 'auto' picks it, results match the reference."""
    out = _run("""
        import sys
        sys.modules["numba"] = None          # any `import numba` now raises ImportError
        import numpy as np
        import fastadam
        import fastadam.functional as F
        from fastadam import _backends
        from cases import CASES, run_functional, rel_err
        assert "numba" not in sys.modules or sys.modules["numba"] is None
        av = fastadam.available_backends()
        assert "numba" not in av and "cython" in av, av
        p = np.ones(8, np.float32)
        assert _backends.resolve("auto", p).name == "cython"
        try:
            _backends.get_backend("numba")
        except fastadam.BackendUnavailableError as e:
            assert "numba" in str(e)
        else:
            raise AssertionError("numba should be unavailable")
        for case in CASES:
            for n in (5, 70001):
                p, st = run_functional(case, "auto", n, np.float64, steps=5)
                pr, sr = run_functional(case, "numpy", n, np.float64, steps=5)
                assert rel_err(p, pr) < 1e-12, (case.id, rel_err(p, pr))
                for k in st:
                    assert rel_err(st[k], sr[k]) < 1e-12, (case.id, k)
        print("ok", av)
    """)
    assert "ok" in out


_BOTH = """
    import numpy as np
    import numba
    from fastadam import _scalars, _config
    from fastadam.kernels import cpu
    from fastadam._cython import backend as cyb
    n = max(_config.PARALLEL_THRESHOLD, 1) * 3 + 7
    _, s = _scalars.adam(np.dtype(np.float32), step=2, lr=1e-2, beta1=0.9, beta2=0.999,
                         eps=1e-8, weight_decay=0.0, decoupled_weight_decay=True,
                         amsgrad=False, maximize=False)
    rng = np.random.default_rng(0)
    base = [rng.standard_normal(n).astype(np.float32) for _ in range(2)] + \\
           [np.zeros(n, np.float32), np.zeros(n, np.float32)]
    a_nb = [a.copy() for a in base]
    a_cy = [a.copy() for a in base]
    order = {order!r}
    for r in range(20):
        for who in order:
            (cpu.run if who == "numba" else cyb.run)("adam", a_nb if who == "numba" else a_cy, s)
    # and from Python threads, both runtimes at once
    import threading
    def loop(fn, arrs):
        for _ in range(10):
            fn("adam", arrs, s)
    t1 = threading.Thread(target=loop, args=(cpu.run, a_nb))
    t2 = threading.Thread(target=loop, args=(cyb.run, a_cy))
    t1.start(); t2.start(); t1.join(); t2.join()
    for x, y in zip(a_cy, a_nb):
        assert np.array_equal(x, y)
    print("layer", numba.threading_layer())
"""


@pytest.mark.parametrize("order", [("numba", "cython"), ("cython", "numba")])
@pytest.mark.parametrize("layer", ["default", "omp", "workqueue"])
def test_numba_and_cython_parallel_kernels_in_one_process(order, layer):
    """numba's threading layer (an OpenMP runtime with 'omp') and the extension's OpenMP
    runtime loaded and used in one process, interleaved and concurrently."""
    pytest.importorskip("numba")
    env = {} if layer == "default" else {"NUMBA_THREADING_LAYER": layer}
    try:
        out = _run(_BOTH.format(order=order), env=env)
    except AssertionError as e:
        if layer != "default" and "No threading layer could be loaded" in str(e):
            pytest.skip(f"numba threading layer {layer!r} is not available here")
        raise
    assert "layer" in out
