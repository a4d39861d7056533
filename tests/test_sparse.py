"""Row-sparse steps (fastadam.functional.sparse_adam_ and friends).

The numba kernels against the NumPy reference (fastadam.reference) over a table of
index patterns and under hypothesis; float64 runs side by side with
torch.optim.SparseAdam, Adagrad (sparse path) and SGD (sparse path); refusals, and
that a refused call changes nothing; results independent of the thread count; no
per-step allocation proportional to the table.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastadam
import fastadam.functional as F

# name -> (function, state names, row-wise state?, has step, hyperparameters)
OPS = {
    "sparse_adam": (F.sparse_adam_, ("exp_avg", "exp_avg_sq"), False, True,
                    dict(lr=0.05, beta1=0.8, beta2=0.9, eps=1e-6)),
    "sparse_adam_max": (F.sparse_adam_, ("exp_avg", "exp_avg_sq"), False, True,
                        dict(lr=0.05, beta1=0.8, beta2=0.9, eps=1e-6, maximize=True)),
    "sparse_adagrad": (F.sparse_adagrad_, ("sum",), False, True,
                       dict(lr=0.1, lr_decay=0.05, eps=1e-10)),
    "sparse_adagrad_max": (F.sparse_adagrad_, ("sum",), False, True,
                           dict(lr=0.1, eps=1e-8, maximize=True)),
    "sparse_sgd": (F.sparse_sgd_, (), False, False, dict(lr=0.1)),
    "sparse_sgd_max": (F.sparse_sgd_, (), False, False, dict(lr=0.1, maximize=True)),
    "rowwise_adagrad": (F.rowwise_adagrad_, ("state",), True, False, dict(lr=0.1, eps=1e-8)),
    "rowwise_adagrad_wd": (F.rowwise_adagrad_, ("state",), True, False,
                           dict(lr=0.1, weight_decay=0.1, maximize=True)),
    "lazy_adam": (F.lazy_adam_, ("exp_avg", "exp_avg_sq"), False, True,
                  dict(lr=0.05, beta1=0.9, beta2=0.99, eps=1e-8)),
    "lazy_adamw_amsgrad": (F.lazy_adam_, ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"), False,
                           True, dict(lr=0.05, beta1=0.9, beta2=0.99, eps=1e-8,
                                      weight_decay=0.1, decoupled_weight_decay=True,
                                      amsgrad=True)),
    "lazy_adam_l2_max": (F.lazy_adam_, ("exp_avg", "exp_avg_sq"), False, True,
                         dict(lr=0.05, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1,
                              maximize=True)),
}


def make_tables(op, rows, dim, dtype, seed=0):
    _, states, rowwise, _, _ = OPS[op]
    rng = np.random.default_rng(seed)
    p = rng.standard_normal((rows, dim)).astype(dtype)
    shape = (rows,) if rowwise else (rows, dim)
    return [p] + [np.full(shape, 0.05, dtype) for _ in states]


def step(op, tables, indices, values, t, backend):
    fn, states, _, has_step, hp = OPS[op]
    kw = dict(hp, backend=backend)
    if has_step:
        kw["step"] = t
    if "max_exp_avg_sq" in states:
        kw["max_exp_avg_sq"] = tables[3]
        tables = tables[:3]
    fn(tables[0], indices, values, *tables[1:], **kw)


def run(op, backend, rows, dim, dtype, index_batches, seed=0):
    tables = make_tables(op, rows, dim, dtype, seed)
    rng = np.random.default_rng(seed + 1)
    for t, idx in enumerate(index_batches, 1):
        values = rng.standard_normal((len(idx), dim)).astype(dtype)
        step(op, tables, idx, values, t, backend)
    return tables


def patterns(rows, rng):
    """Index patterns: empty, one, all the same row, sorted distinct, unsorted with
    duplicates, Zipf (a few hot rows), the first and last rows, int32 and uint16."""
    zipf = (rng.zipf(1.2, 300) - 1) % rows
    return {
        "empty": np.array([], dtype=np.int64),
        "one": np.array([rows // 2]),
        "all_same": np.full(50, rows - 1),
        "sorted": np.arange(rows),
        "unsorted_dups": rng.integers(0, rows, 200),
        "zipf": zipf,
        "ends": np.array([0, rows - 1, 0, rows - 1, 0]),
        "int32": rng.integers(0, rows, 64).astype(np.int32),
        "uint16": rng.integers(0, rows, 64).astype(np.uint16),
    }


def assert_close(got, want, dtype, what=""):
    rtol, atol = (2e-6, 1e-6) if dtype == np.float32 else (1e-12, 1e-13)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=what)


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_patterns_match_reference(op, dtype):
    rows, dim = 97, 5
    pats = patterns(rows, np.random.default_rng(3))
    for name, idx in pats.items():
        batches = [idx, idx[::-1].copy(), idx]
        got = run(op, "numba", rows, dim, dtype, batches)
        want = run(op, "numpy", rows, dim, dtype, batches)
        for k, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, dtype, f"{op} {name} array {k}")


@pytest.mark.parametrize("op", ["sparse_adam", "sparse_adagrad", "sparse_sgd",
                                "rowwise_adagrad_wd", "lazy_adamw_amsgrad"])
def test_parallel_variant_matches_reference(op):
    # lookups * dim over the parallel threshold: the parallel kernel, balanced work items
    rows, dim = 3000, 32
    rng = np.random.default_rng(5)
    batches = [(rng.zipf(1.1, 4096) - 1) % rows for _ in range(3)]
    assert_batches_match_reference("numba", (rows, dim, batches), op, np.float64)


def test_untouched_rows_are_not_written():
    rows, dim = 40, 4
    idx = np.array([3, 7, 7, 3, 30])
    for op in OPS:
        tables = make_tables(op, rows, dim, np.float32)
        before = [t.copy() for t in tables]
        step(op, tables, idx, np.ones((5, dim), np.float32), 1, "numba")
        untouched = np.setdiff1d(np.arange(rows), idx)
        for a, b in zip(tables, before):
            np.testing.assert_array_equal(a[untouched], b[untouched])   # bit for bit
            assert not np.array_equal(a[idx], b[idx]), op


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 numba threads")
@pytest.mark.parametrize("op", ["sparse_adam", "sparse_adagrad", "rowwise_adagrad"])
def test_result_independent_of_thread_count(op):
    rows, dim = 500, 32
    rng = np.random.default_rng(9)
    batches = [(rng.zipf(1.05, 3000) - 1) % rows for _ in range(2)]
    old = numba.get_num_threads()
    try:
        out = []
        for n in (1, 2):
            numba.set_num_threads(n)
            out.append(run(op, "numba", rows, dim, np.float32, batches))
    finally:
        numba.set_num_threads(old)
    for a, b in zip(*out):
        np.testing.assert_array_equal(a, b)


# -- hypothesis over index patterns ----------------------------------------------------

@st.composite
def index_batches(draw):
    rows = draw(st.integers(1, 40))
    dim = draw(st.integers(0, 9))
    batches = []
    for _ in range(draw(st.integers(1, 3))):
        idx = draw(st.lists(st.integers(0, rows - 1), max_size=60))
        kind = draw(st.sampled_from(["as drawn", "sorted", "all same", "empty"]))
        if kind == "sorted":
            idx = sorted(idx)
        elif kind == "all same":
            idx = [idx[0]] * len(idx) if idx else [rows - 1] * 5
        elif kind == "empty":
            idx = []
        dt = draw(st.sampled_from([np.int64, np.int32, np.uint8 if rows <= 255 else np.int64]))
        batches.append(np.array(idx, dtype=dt))
    return rows, dim, batches


@settings(max_examples=80, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=index_batches(), op=st.sampled_from(list(OPS)),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_hypothesis_index_patterns_match_reference(data, op, dtype):
    assert_batches_match_reference("numba", data, op, dtype)


def assert_batches_match_reference(backend, data, op, dtype):
    """``backend``'s steps over the batches of ``index_batches()`` (``data``) equal the
    NumPy reference's (test_cython_sparse runs it for the cython backend)."""
    rows, dim, batches = data
    got = run(op, backend, rows, dim, dtype, batches)
    want = run(op, "numpy", rows, dim, dtype, batches)
    for g, w in zip(got, want):
        assert_close(g, w, dtype)


# -- float64 parity with torch.optim, side by side ---------------------------------------

def _torch_run(kind, torch_kw, fast, fast_kw, dtype, steps=20, rows=60, dim=7, acc=0.0):
    torch = pytest.importorskip("torch")
    tdt = torch.float64 if dtype == np.float64 else torch.float32
    gen = torch.Generator().manual_seed(0)
    emb = torch.nn.Embedding(rows, dim, sparse=True).to(tdt)
    p = emb.weight.detach().numpy().copy()
    state = [np.full_like(p, acc) for _ in range({"adam": 2, "adagrad": 1, "sgd": 0}[kind])]
    cls = {"adam": torch.optim.SparseAdam, "adagrad": torch.optim.Adagrad,
           "sgd": torch.optim.SGD}[kind]
    opt = cls(emb.parameters(), **torch_kw)
    for t in range(1, steps + 1):
        # many duplicates: 64 lookups among 12 rows, in random order
        idx = (torch.randint(0, 12, (64,), generator=gen) * 5) % rows
        out = emb(idx)
        opt.zero_grad()
        (out * torch.randn(out.shape, generator=gen, dtype=tdt)).sum().backward()
        g = emb.weight.grad
        kw = dict(fast_kw)
        if kind != "sgd":
            kw["step"] = t
        fast(p, g._indices()[0].numpy(), g._values().numpy(), *state, **kw)
        opt.step()
    st_ = opt.state[emb.weight]
    want = [emb.weight.detach().numpy()] + [st_[k].numpy() for k in
                                             {"adam": ("exp_avg", "exp_avg_sq"),
                                              "adagrad": ("sum",), "sgd": ()}[kind]]
    return [p] + state, want


TORCH_CASES = [
    ("adam", dict(lr=0.05, betas=(0.8, 0.9), eps=1e-6),
     dict(lr=0.05, beta1=0.8, beta2=0.9, eps=1e-6), 0.0),
    ("adam", dict(lr=0.01, maximize=True), dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8), 0.0),
    ("adagrad", dict(lr=0.1), dict(lr=0.1), 0.0),
    ("adagrad", dict(lr=0.1, lr_decay=0.1, initial_accumulator_value=0.3, eps=1e-6,
                     maximize=True),
     dict(lr=0.1, lr_decay=0.1, eps=1e-6, maximize=True), 0.3),
    ("sgd", dict(lr=0.1), dict(lr=0.1), 0.0),
    ("sgd", dict(lr=0.1, maximize=True), dict(lr=0.1, maximize=True), 0.0),
]


@pytest.mark.parametrize("kind,torch_kw,fast_kw,acc", TORCH_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(TORCH_CASES)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_parity_with_torch(kind, torch_kw, fast_kw, acc, dtype):
    fast = {"adam": F.sparse_adam_, "adagrad": F.sparse_adagrad_, "sgd": F.sparse_sgd_}[kind]
    if kind == "adam" and "maximize" in torch_kw:
        fast_kw = dict(fast_kw, maximize=True)
    got, want = _torch_run(kind, torch_kw, fast, fast_kw, dtype, acc=acc)
    for g, w in zip(got, want):
        if dtype == np.float64:
            np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)
        else:
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


# -- refusals: every check before anything is written ------------------------------------

def _refusals():
    rows, dim = 10, 3
    p = np.zeros((rows, dim), np.float32)
    idx = np.array([1, 2])
    vals = np.ones((2, dim), np.float32)
    yield "negative row", dict(indices=np.array([1, -1])), IndexError, "row -1"
    yield "row past the end", dict(indices=np.array([1, rows])), IndexError, "out of range"
    yield "float indices", dict(indices=np.array([1.0, 2.0])), TypeError, "integer"
    yield "bool indices", dict(indices=np.array([True, False])), TypeError, "integer"
    yield "list indices", dict(indices=[1, 2]), TypeError, "indices must be a numpy"
    yield "2-D indices", dict(indices=idx.reshape(1, 2)), ValueError, "1-D"
    yield "values rows", dict(values=np.ones((3, dim), np.float32)), ValueError, "values"
    yield "values dim", dict(values=np.ones((2, dim + 1), np.float32)), ValueError, "values"
    yield "values dtype", dict(values=vals.astype(np.float64)), TypeError, "values"
    yield "state dtype", dict(exp_avg=np.zeros((rows, dim))), TypeError, "exp_avg"
    yield "state shape", dict(exp_avg_sq=np.zeros((rows + 1, dim), np.float32)), ValueError, \
        "exp_avg_sq"
    yield "1-D table", dict(param=np.zeros(rows, np.float32)), ValueError, "2-D"
    yield "int table", dict(param=np.zeros((rows, dim), np.int32)), TypeError, "float32"
    yield "strided table", dict(param=np.zeros((rows, 2 * dim), np.float32)[:, ::2]), \
        ValueError, "contiguous"
    ro = np.zeros((rows, dim), np.float32)
    ro.flags.writeable = False
    yield "read-only state", dict(exp_avg=ro), ValueError, "read-only"
    yield "values overlap the table", dict(values="alias"), ValueError, "overlap"
    yield "state is the table", dict(exp_avg="param"), ValueError, "overlap"
    yield "lr 0", dict(lr=0.0), ValueError, "learning rate"
    yield "eps 0", dict(eps=0.0), ValueError, "epsilon"
    yield "beta1 1", dict(beta1=1.0), ValueError, "index 0"
    yield "step 0", dict(step=0), ValueError, "step"
    yield "unknown backend", dict(backend="fortran"), ValueError, "Invalid backend"
    del p


@pytest.mark.parametrize("name,change,exc,match", list(_refusals()),
                         ids=[r[0] for r in _refusals()])
def test_refusals_change_nothing(name, change, exc, match):
    rows, dim = 10, 3
    rng = np.random.default_rng(0)
    arrays = dict(param=rng.standard_normal((rows, dim)).astype(np.float32),
                  exp_avg=np.full((rows, dim), 0.5, np.float32),
                  exp_avg_sq=np.full((rows, dim), 0.25, np.float32))
    args = dict(indices=np.array([1, 2]), values=np.ones((2, dim), np.float32))
    hp = dict(step=1, lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8)
    for k, v in change.items():
        if k in arrays:
            arrays[k] = arrays["param"] if isinstance(v, str) else v
        elif k in args:
            args[k] = v
        else:
            hp[k] = v
    if isinstance(change.get("values"), str):
        args["values"] = arrays["param"][:2]
    snap = {k: v.copy() for k, v in arrays.items()}
    with pytest.raises(exc, match=match):
        F.sparse_adam_(arrays["param"], args["indices"], args["values"], arrays["exp_avg"],
                       arrays["exp_avg_sq"], **hp)
    for k, v in arrays.items():
        np.testing.assert_array_equal(v, snap[k])


def test_backends_without_sparse_kernels_refuse(monkeypatch):
    from fastadam import _backends
    p = np.zeros((4, 2), np.float32)
    # a compiled backend built without row-sparse kernels (as the cython backend was)
    monkeypatch.setitem(_backends._cache, "cython",
                        _backends.CompiledBackend("cython", run=None))
    with pytest.raises(fastadam.BackendUnavailableError, match="cython"):
        F.sparse_sgd_(p, np.array([1]), np.ones((1, 2), np.float32), lr=0.1, backend="cython")
    if "cuda" in fastadam.available_backends():
        with pytest.raises(TypeError, match="host array"):      # host tables on cuda
            F.sparse_sgd_(p, np.array([1]), np.ones((1, 2), np.float32), lr=0.1,
                          backend="cuda")
    np.testing.assert_array_equal(p, 0)


def test_rowwise_and_lazy_refusals():
    p = np.zeros((4, 2), np.float32)
    with pytest.raises(ValueError, match=r"\(4,\)"):
        F.rowwise_adagrad_(p, np.array([1]), np.ones((1, 2), np.float32),
                           np.zeros((4, 2), np.float32), lr=0.1)
    with pytest.raises(ValueError, match="max_exp_avg_sq"):
        F.lazy_adam_(p, np.array([1]), np.ones((1, 2), np.float32), np.zeros_like(p),
                     np.zeros_like(p), step=1, lr=0.1, beta1=0.9, beta2=0.9, eps=1e-8,
                     amsgrad=True)
    with pytest.raises(ValueError, match="weight_decay"):
        F.rowwise_adagrad_(p, np.array([1]), np.ones((1, 2), np.float32),
                           np.zeros(4, np.float32), lr=0.1, weight_decay=-1.0)
    np.testing.assert_array_equal(p, 0)


@pytest.mark.parametrize("backend", ["auto", "cython"])
def test_no_allocation_proportional_to_the_table(backend):
    if backend not in fastadam.available_backends() + ["auto"]:
        pytest.skip(f"no {backend} backend here")
    # a 64 MiB table per array; steps of 2,048 lookups must not raise the peak RSS by more
    # than a few MiB (run in a subprocess: a fresh peak, and a timeout if anything hangs)
    code = textwrap.dedent("""
        import resource, numpy as np
        import fastadam.functional as F
        rows, dim = 1 << 20, 16
        p = np.zeros((rows, dim), np.float32)
        m, v, s = np.zeros_like(p), np.zeros_like(p), np.zeros(rows, np.float32)
        rng = np.random.default_rng(0)
        def steps(k):
            for t in range(1, k + 1):
                idx = rng.integers(0, rows, 2048)
                vals = rng.standard_normal((2048, dim)).astype(np.float32)
                F.sparse_adam_(p, idx, vals, m, v, step=t, lr=0.1, beta1=0.9, beta2=0.99,
                               eps=1e-8, backend=BACKEND)
                F.sparse_adagrad_(p, idx, vals, m, step=t, lr=0.1, backend=BACKEND)
                F.sparse_sgd_(p, idx, vals, lr=0.1, backend=BACKEND)
                F.rowwise_adagrad_(p, idx, vals, s, lr=0.1, backend=BACKEND)
                F.lazy_adam_(p, idx, vals, m, v, step=t, lr=0.1, beta1=0.9, beta2=0.99,
                             eps=1e-8, backend=BACKEND)
        steps(2)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        steps(5)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print("grew_kib", after - before)
    """).replace("BACKEND", repr(backend))
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    grew = int(out.stdout.split("grew_kib")[1])
    assert grew < 8 * 1024, out.stdout          # the table is 64 MiB


@pytest.mark.parametrize("nrows, n, hot", [(97, 20, None), (97, 500, None),
                                           (1 << 20, 5000, None), (1 << 23, 3000, None),
                                           (1 << 20, 3000, 0.9), (1 << 20, 3000, 1.0),
                                           (1 << 20, 40, 0.5)],
                         ids=["insertion", "packed-small", "packed-1M", "general-8M",
                              "packed-hot-row", "packed-all-same", "packed-hot-few"])
def test_coalesce_is_a_stable_argsort(nrows, n, hot):
    # every path of the lookups' sort (insertion, the packed two passes, the general
    # passes for tables over 2 * RADIX_BITS bits) against NumPy's stable argsort; "hot":
    # that share of the lookups on one row (with a high digit other than 0), the rest
    # on rows sharing its low digit or not (long runs of one digit in the second pass)
    from fastadam.kernels import cpu_sparse as cs
    rng = np.random.default_rng(nrows + n)
    if hot is None:
        idx = np.concatenate([(rng.zipf(1.2, n // 2) - 1) % nrows,
                              rng.integers(0, nrows, n - n // 2)]).astype(np.int64)
    else:
        row = 777_777 % nrows
        other = np.where(rng.random(n) < 0.5, rng.integers(0, nrows, n),
                         (rng.integers(0, 1024, n) << 10) | (row & 1023))
        idx = np.where(rng.random(n) < hot, row, other).astype(np.int64)
    order, starts, rows, bounds = cs.coalesce(idx, nrows, 8, cs.index_dtype(nrows, n))
    want = np.argsort(idx, kind="stable")
    urows, ustarts = np.unique(idx[want], return_index=True)
    np.testing.assert_array_equal(order, want)
    np.testing.assert_array_equal(starts, np.append(ustarts, n))
    np.testing.assert_array_equal(rows, urows)
    assert bounds[0] == 0 and bounds[-1] == len(rows) and np.all(np.diff(bounds) >= 0)
