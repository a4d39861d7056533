"""Row-sparse steps on the cython backend (fastadam._cython.backend.sparse_run).

The Cython kernels against the NumPy reference (fastadam.reference) and the numba
kernels, over the index patterns of test_sparse.py and under hypothesis, serial and
parallel; the same results on 1 and 2 OpenMP threads; refusals (bad dtype, shape,
layout, read-only tables, rows out of range) raised before anything is written; the
functional API and fastadam.torch with ``backend="cython"``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

if os.environ.get("FASTADAM_REQUIRE_CYTHON") != "1":  # CI sets it: then these must run
    pytest.importorskip("fastadam._cython.backend",
                        reason="the Cython extension is not built "
                               "(python setup.py build_ext --inplace)")

from fastadam import _config  # noqa: E402
from fastadam._cython import backend as cb  # noqa: E402
from test_sparse import (OPS, assert_batches_match_reference, assert_close,  # noqa: E402
                         index_batches, make_tables, patterns, run, step)

try:
    import numba  # noqa: F401
    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - numba is a dependency
    HAVE_NUMBA = False


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_patterns_match_reference_and_numba(op, dtype):
    rows, dim = 97, 5
    for name, idx in patterns(rows, np.random.default_rng(3)).items():
        batches = [idx, idx[::-1].copy(), idx]
        got = run(op, "cython", rows, dim, dtype, batches)
        want = run(op, "numpy", rows, dim, dtype, batches)
        for k, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, dtype, f"{op} {name} array {k}")
        if HAVE_NUMBA:
            nb = run(op, "numba", rows, dim, dtype, batches)
            for g, w in zip(got, nb):       # the same rules, the same summation order
                np.testing.assert_allclose(g, w, rtol=4 * np.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize("op", ["sparse_adam", "sparse_adagrad", "sparse_sgd",
                                "rowwise_adagrad_wd", "lazy_adamw_amsgrad"])
def test_parallel_loop_matches_reference(op):
    rows, dim = 3000, 32
    rng = np.random.default_rng(5)
    batches = [(rng.zipf(1.1, 4096) - 1) % rows for _ in range(3)]
    assert 4096 * dim >= _config.PARALLEL_THRESHOLD      # the OpenMP loop runs
    assert_batches_match_reference("cython", (rows, dim, batches), op, np.float64)


def test_untouched_rows_are_not_written():
    rows, dim = 40, 4
    idx = np.array([3, 7, 7, 3, 30])
    untouched = np.setdiff1d(np.arange(rows), idx)
    for op in OPS:
        tables = make_tables(op, rows, dim, np.float32)
        before = [t.copy() for t in tables]
        step(op, tables, idx, np.ones((5, dim), np.float32), 1, "cython")
        for a, b in zip(tables, before):
            np.testing.assert_array_equal(a[untouched], b[untouched])
            assert not np.array_equal(a[idx], b[idx]), op


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=index_batches(), op=st.sampled_from(list(OPS)),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_hypothesis_index_patterns_match_reference(data, op, dtype):
    assert_batches_match_reference("cython", data, op, dtype)


_THREADS_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from fastadam._cython import backend as cb
    from fastadam import _scalars
    rng = np.random.default_rng(9)
    rows, dim = 500, 64
    p = rng.standard_normal((rows, dim)).astype(np.float32)
    m = np.zeros_like(p); v = np.zeros_like(p); s = np.zeros(rows, np.float32)
    q = p.copy()
    for t in (1, 2, 3):
        idx = ((rng.zipf(1.05, 3000) - 1) % rows).astype(np.int64)
        vals = rng.standard_normal((3000, dim)).astype(np.float32)
        _, sc = _scalars.sparse_adam(np.dtype(np.float32), step=t, lr=0.01, beta1=0.9,
                                     beta2=0.99, eps=1e-8, maximize=False)
        cb.sparse_run("sparse_adam", (p, m, v), idx, vals, sc)
        _, sc = _scalars.rowwise_adagrad(np.dtype(np.float32), lr=0.1, eps=1e-8,
                                         weight_decay=0.0, maximize=False, dim=dim)
        cb.sparse_run("rowwise_adagrad", (q, s), idx, vals, sc)
    sys.stdout.buffer.write(p.tobytes() + m.tobytes() + v.tobytes() + q.tobytes() + s.tobytes())
""")


def test_result_independent_of_thread_count():
    if not cb.openmp_enabled():
        pytest.skip("a build without OpenMP runs serial loops only")
    out = []
    for n in ("1", "2"):
        env = dict(os.environ, OMP_NUM_THREADS=n)
        r = subprocess.run([sys.executable, "-c", _THREADS_SCRIPT], env=env,
                           capture_output=True, timeout=120)
        assert r.returncode == 0, r.stderr.decode()
        out.append(r.stdout)
    assert len(out[0]) > 0 and out[0] == out[1]


def _sgd_args(rows=6, dim=3, dtype=np.float32):
    p = np.arange(rows * dim, dtype=dtype).reshape(rows, dim)
    return p, np.array([1, 4, 1]), np.ones((3, dim), dtype), (dtype(1.0), dtype(-0.1))


@pytest.mark.parametrize("bad, exc, match", [
    (dict(indices=np.array([1, 6, 2])), IndexError, "outside"),
    (dict(indices=np.array([1, -1, 2])), IndexError, "outside"),
    (dict(indices=np.array([1, 2, 3], np.int32)), ValueError, "indices"),
    (dict(indices=np.array([1.0, 2.0, 3.0])), ValueError, "indices"),
    (dict(values=np.ones((3, 3), np.float64)), ValueError, "values"),
    (dict(values=np.ones((2, 3), np.float32)), ValueError, "values"),
    (dict(values=np.ones((3, 4), np.float32)), ValueError, "values"),
    (dict(values=np.ones((3, 6), np.float32)[:, ::2]), ValueError, "values"),
    (dict(scalars=(1.0,)), ValueError, "scalars"),
])
def test_refusals_change_nothing(bad, exc, match):
    p, idx, vals, sc = _sgd_args()
    args = dict(indices=idx, values=vals, scalars=sc)
    args.update(bad)
    before = p.copy()
    with pytest.raises(exc, match=match):
        cb.sparse_run("sparse_sgd", (p,), args["indices"], args["values"], args["scalars"])
    np.testing.assert_array_equal(p, before)


def test_table_refusals_name_the_argument():
    p, idx, vals, sc = _sgd_args()
    ro = p.copy()
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="param"):
        cb.sparse_run("sparse_sgd", (ro,), idx, vals, sc)
    with pytest.raises(ValueError, match="param"):
        cb.sparse_run("sparse_sgd", (np.ones(6, np.float32),), idx, vals, sc)
    m = np.zeros((6, 4), np.float32)
    with pytest.raises(ValueError, match="state 1"):
        cb.sparse_run("sparse_adagrad", (p, m), idx, vals, (sc[0], sc[1], np.float32(1e-10)))
    with pytest.raises(ValueError, match="state 1"):
        cb.sparse_run("rowwise_adagrad", (p, np.zeros(5, np.float32)), idx, vals,
                      (1.0, 0.0, -0.1, 1e-8, 3.0))
    with pytest.raises(ValueError, match="tables"):
        cb.sparse_run("sparse_adam", (p,), idx, vals, sc)
    with pytest.raises(KeyError, match="unknown"):
        cb.sparse_run("sparse_nope", (p,), idx, vals, sc)
    with pytest.raises(TypeError, match="float32 or float64"):
        cb.sparse_run("sparse_sgd", (p.astype(np.int32),), idx, vals, sc)
    np.testing.assert_array_equal(p, _sgd_args()[0])


def test_empty_lookups_and_empty_rows_do_nothing():
    p, _, _, sc = _sgd_args()
    before = p.copy()
    cb.sparse_run("sparse_sgd", (p,), np.zeros(0, np.int64), np.zeros((0, 3), np.float32), sc)
    np.testing.assert_array_equal(p, before)
    z = np.zeros((4, 0), np.float32)
    cb.sparse_run("sparse_sgd", (z,), np.array([1, 3]), np.zeros((2, 0), np.float32), sc)


def test_functional_api_takes_backend_cython():
    import fastadam.functional as F
    rng = np.random.default_rng(0)
    p = rng.standard_normal((50, 4))
    idx = np.array([3, 3, 49, 0], np.int32)            # normalized to int64 by the checks
    vals = rng.standard_normal((4, 4))
    q = p.copy()
    s1, s2 = np.zeros_like(p), np.zeros_like(p)
    F.sparse_adagrad_(p, idx, vals, s1, step=1, lr=0.1, backend="cython")
    F.sparse_adagrad_(q, idx, vals, s2, step=1, lr=0.1, backend="numpy")
    assert_close(p, q, np.float64)
    with pytest.raises(IndexError):
        F.sparse_adagrad_(p, np.array([50]), vals[:1], s1, step=2, lr=0.1, backend="cython")


def test_torch_optimizers_on_the_cython_backend():
    torch = pytest.importorskip("torch")
    import fastadam.torch as ft
    out = {}
    for backend in ("cython", "numpy"):
        emb = torch.nn.Embedding(30, 6, sparse=True).double()
        with torch.no_grad():
            emb.weight.copy_(torch.arange(180, dtype=torch.float64).reshape(30, 6) / 100)
        opt = ft.SparseAdam(emb.parameters(), lr=0.05, backend=backend)
        g = torch.Generator().manual_seed(1)
        for _ in range(4):
            idx = torch.randint(0, 30, (20,), generator=g)      # duplicates
            emb.zero_grad()
            emb(idx).pow(2).sum().backward()
            opt.step()
        out[backend] = emb.weight.detach().clone()
    torch.testing.assert_close(out["cython"], out["numpy"], rtol=1e-12, atol=1e-14)
    assert not torch.equal(out["cython"], torch.arange(180, dtype=torch.float64).reshape(30, 6)
                           / 100)
