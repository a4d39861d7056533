"""Row-sparse steps on the cuda backend (fastadam.kernels.cuda_sparse) against the numba
CPU kernels.

Without a GPU these run under numba's CUDA simulator (tests/conftest.py), with a small
block (so that rows longer than a block and the shared reduction tree of row-wise
Adagrad run) and a small grid (so that a block strides over several rows).
"""

import numpy as np
import pytest
import skips

import fastadam
import fastadam.functional as F

skips.cuda_backend()

from numba import cuda  # noqa: E402

from fastadam.kernels import cuda as K  # noqa: E402
from fastadam.kernels import cuda_sparse as KS  # noqa: E402

# name -> (function, state names, row-wise state?, has step, hyperparameters)
OPS = {
    "sparse_adam": (F.sparse_adam_, 2, False, True,
                    dict(lr=0.05, beta1=0.8, beta2=0.9, eps=1e-6, maximize=True)),
    "sparse_adagrad": (F.sparse_adagrad_, 1, False, True, dict(lr=0.1, lr_decay=0.05)),
    "sparse_sgd": (F.sparse_sgd_, 0, False, False, dict(lr=0.1)),
    "rowwise_adagrad": (F.rowwise_adagrad_, 1, True, False,
                        dict(lr=0.1, eps=1e-8, weight_decay=0.1)),
    "lazy_adam": (F.lazy_adam_, 2, False, True, dict(lr=0.05, beta1=0.9, beta2=0.99, eps=1e-8,
                                                     weight_decay=0.1)),
    "lazy_adam_amsgrad": (F.lazy_adam_, 3, False, True,
                          dict(lr=0.05, beta1=0.9, beta2=0.99, eps=1e-8, amsgrad=True,
                               decoupled_weight_decay=True, weight_decay=0.1)),
}


@pytest.fixture(autouse=True)
def small_launch(monkeypatch):
    monkeypatch.setattr(KS, "SPARSE_BLOCK", 8)
    monkeypatch.setattr(K, "MAX_BLOCKS", 3)


def _tables(op, rows, dim, dtype, seed=0):
    _, nstates, rowwise, _, _ = OPS[op]
    rng = np.random.default_rng(seed)
    shape = (rows,) if rowwise else (rows, dim)
    return [rng.standard_normal((rows, dim)).astype(dtype)] + [
        np.full(shape, 0.05, dtype) for _ in range(nstates)]


def _step(op, tables, idx, vals, t, backend):
    fn, nstates, _, has_step, hp = OPS[op]
    kw = dict(hp, backend=backend)
    if has_step:
        kw["step"] = t
    if nstates == 3:
        kw["max_exp_avg_sq"] = tables[3]
        tables = tables[:3]
    fn(tables[0], idx, vals, *tables[1:], **kw)


def _run(op, rows, dim, dtype, batches, device, index_on_device=False):
    tables = _tables(op, rows, dim, dtype)
    dev = [cuda.to_device(t) for t in tables] if device else tables
    rng = np.random.default_rng(1)
    for t, idx in enumerate(batches, 1):
        vals = rng.standard_normal((len(idx), dim)).astype(dtype)
        if device:
            _step(op, dev, cuda.to_device(idx) if index_on_device else idx,
                  cuda.to_device(vals), t, "cuda")
        else:
            _step(op, dev, idx, vals, t, "numba")
    return [d.copy_to_host() for d in dev] if device else dev


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("dim", [5, 13])
def test_equals_cpu(op, dtype, dim):
    rng = np.random.default_rng(2)
    batches = [rng.integers(0, 23, 40), np.array([22, 22, 0]), np.array([], dtype=np.int64)]
    got = _run(op, 23, dim, dtype, batches, device=True, index_on_device=dim == 13)
    want = _run(op, 23, dim, dtype, batches, device=False)
    tol = dict(rtol=1e-12, atol=1e-13) if dtype == np.float64 else dict(rtol=2e-6, atol=1e-6)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, **tol)


def test_result_independent_of_grid(monkeypatch):
    rng = np.random.default_rng(3)
    batches = [rng.integers(0, 30, 60)]
    out = []
    for blocks in (1, 3):
        monkeypatch.setattr(K, "MAX_BLOCKS", blocks)
        out.append(_run("rowwise_adagrad", 30, 11, np.float32, batches, device=True) +
                   _run("sparse_adam", 30, 11, np.float32, batches, device=True))
    for a, b in zip(*out):
        np.testing.assert_array_equal(a, b)


def test_auto_picks_cuda_for_device_tables():
    p = cuda.to_device(np.zeros((4, 3), np.float32))
    F.sparse_sgd_(p, np.array([1, 1]), cuda.to_device(np.ones((2, 3), np.float32)), lr=0.5)
    host = p.copy_to_host()
    np.testing.assert_array_equal(host[1], -1.0)
    np.testing.assert_array_equal(host[[0, 2, 3]], 0.0)


def test_refusals_change_nothing():
    p0 = np.arange(12, dtype=np.float32).reshape(4, 3)
    p = cuda.to_device(p0)
    vals = cuda.to_device(np.ones((2, 3), np.float32))
    bad = [
        (IndexError, dict(indices=np.array([1, 4]))),
        (IndexError, dict(indices=cuda.to_device(np.array([-1, 0])))),
        (TypeError, dict(indices=np.array([1.0, 2.0]))),
        (ValueError, dict(values=cuda.to_device(np.ones((3, 3), np.float32)))),
        (TypeError, dict(values=np.ones((2, 3), np.float32))),           # host values
        (TypeError, dict(values=cuda.to_device(np.ones((2, 3))))),        # float64
        (ValueError, dict(values=p[:2])),                                  # overlaps p
    ]
    for exc, change in bad:
        args = dict(indices=np.array([1, 2]), values=vals)
        args.update(change)
        with pytest.raises(exc):
            F.sparse_sgd_(p, args["indices"], args["values"], lr=0.1, backend="cuda")
        np.testing.assert_array_equal(p.copy_to_host(), p0)
    with pytest.raises(TypeError, match="host array"):
        F.sparse_sgd_(p0.copy(), np.array([1]), vals[:1], lr=0.1, backend="cuda")
    assert "cuda" in fastadam.available_backends()
