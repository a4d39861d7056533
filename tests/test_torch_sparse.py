"""fastadam.torch with sparse gradients: SparseAdam, Adagrad / SGD's sparse paths, lazy Adam,
RowWiseAdagrad.

Side by side with torch.optim on models with nn.Embedding(sparse=True) and
nn.EmbeddingBag(sparse=True) (float64: 1e-10), checkpoints across both, the same
refusals with the same exception types, against the NumPy reference where torch has
no counterpart (lazy Adam, row-wise Adagrad), and that a sparse step writes only its
rows of the flat buffers.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import fastadam.reference as ref  # noqa: E402
import fastadam.torch as ft  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Sparse invariant checks:UserWarning")


class Recsys(torch.nn.Module):
    """Two sparse tables and, unless ``sparse_only``, a dense tower."""

    def __init__(self, dtype, sparse_only=False):
        super().__init__()
        torch.manual_seed(0)
        self.user = torch.nn.Embedding(60, 6, sparse=True)
        self.item = torch.nn.EmbeddingBag(40, 6, sparse=True, mode="sum")
        self.tower = None if sparse_only else torch.nn.Linear(6, 1)
        self.to(dtype)

    def forward(self, users, items, w):
        x = torch.tanh(self.user(users) + self.item(items))
        if self.tower is None:
            return (x * w).sum()
        return (self.tower(x).squeeze(-1) * w[:, 0]).sum() + (x * w).sum()


def batches(dtype, n=20, seed=1):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        users = (torch.randint(0, 10, (32,), generator=g) * 7) % 60    # many duplicates
        items = torch.randint(0, 12, (32, 3), generator=g)
        out.append((users, items, torch.randn(32, 6, generator=g, dtype=dtype)))
    return out


def train(model, opt, data, set_to_none=True):
    for users, items, w in data:
        opt.zero_grad(set_to_none=set_to_none)
        model(users, items, w).backward()
        opt.step()


def states(model, opt):
    out = []
    for p in model.parameters():
        out.append(p.detach())
        for k, v in sorted(opt.state[p].items()):
            if k == "step":
                out.append(torch.as_tensor(float(v)))
            elif isinstance(v, torch.Tensor):
                out.append(v.to_dense() if v.is_sparse else v)
    return out


def assert_same(a, b, dtype):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        if dtype == torch.float64:
            torch.testing.assert_close(x.double(), y.double(), rtol=1e-10, atol=1e-12)
        else:   # float32: a few steps (the duplicates' summation orders differ from torch's)
            scale = max(float(x.abs().max()), 1.0) if x.numel() else 1.0
            torch.testing.assert_close(x.float(), y.float(), rtol=1e-5, atol=1e-6 * scale)


CASES = [
    ("SparseAdam", dict(lr=0.05), True),
    ("SparseAdam", dict(lr=0.01, betas=(0.8, 0.95), eps=1e-6, maximize=True), True),
    ("Adagrad", dict(lr=0.1), False),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.2, eps=1e-6,
                     maximize=True), False),
    ("SGD", dict(lr=0.05), False),
    ("SGD", dict(lr=0.05, maximize=True), False),
    ("SGD", dict(lr=0.05, momentum=0.9), False),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.3), False),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True), False),
]


@pytest.mark.parametrize("name,kw,sparse_only", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("set_to_none", [True, False], ids=["none", "zero"])
def test_parity_with_torch(name, kw, sparse_only, dtype, set_to_none):
    data = batches(dtype, 20 if dtype == torch.float64 else 5)
    m1, m2 = Recsys(dtype, sparse_only), Recsys(dtype, sparse_only)
    o1 = getattr(torch.optim, name)(m1.parameters(), **kw)
    o2 = getattr(ft, name)(m2.parameters(), **kw)
    train(m1, o1, data, set_to_none)
    train(m2, o2, data, set_to_none)
    assert_same(states(m1, o1), states(m2, o2), dtype)


def test_sparse_dims_and_hybrid_layouts():
    # gradients sparse in two dimensions, and sparse in one of a 3-D parameter
    dtype = torch.float64
    for shape, sparse_dim in [((8, 5), 2), ((6, 3, 2), 1), ((4, 3, 2), 2)]:
        ps = [torch.nn.Parameter(torch.randn(shape, dtype=dtype)) for _ in range(2)]
        ps[1].data.copy_(ps[0].data)
        o1, o2 = torch.optim.SparseAdam([ps[0]], lr=0.1), ft.SparseAdam([ps[1]], lr=0.1)
        g = torch.Generator().manual_seed(2)
        for _ in range(5):
            dense = torch.randn(shape, generator=g, dtype=dtype)
            dense[torch.rand(shape[:sparse_dim], generator=g) < 0.5] = 0
            sp = dense.to_sparse(sparse_dim)
            # duplicates: the same entries twice, uncoalesced
            sp = torch.sparse_coo_tensor(torch.cat([sp._indices(), sp._indices()], 1),
                                         torch.cat([sp._values(), sp._values() * 0.5]), shape)
            for p, o in zip(ps, (o1, o2)):
                p.grad = sp.clone()
                o.step()
        torch.testing.assert_close(ps[0].detach(), ps[1].detach(), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(o1.state[ps[0]]["exp_avg_sq"], o2.state[ps[1]]["exp_avg_sq"],
                                   rtol=1e-10, atol=1e-12)


def test_sparse_step_touches_only_its_rows_of_the_flat_buffers():
    torch.manual_seed(0)
    a = torch.nn.Embedding(30, 4, sparse=True)
    b = torch.nn.Embedding(20, 4, sparse=True)
    for make in (lambda p: ft.SparseAdam(p, lr=0.1), lambda p: ft.Adagrad(p, lr=0.1),
                 lambda p: ft.SGD(p, lr=0.1), lambda p: ft.RowWiseAdagrad(p, lr=0.1),
                 lambda p: ft.Adam(p, lr=0.1, sparse_grads="lazy")):
        opt = make([a.weight, b.weight])
        (a(torch.tensor([1, 2])).sum() + b(torch.tensor([5])).sum()).backward()
        opt.step()                                      # every state exists now
        bucket = opt._buckets[0]
        flats = [bucket.data] + list(bucket.state.values())
        before = [f.clone() for f in flats]
        opt.zero_grad()
        (a(torch.tensor([7, 7, 3])).sum() * 2).backward()      # table a, rows 3 and 7 only
        opt.step()
        changed = [torch.nonzero(f != g).flatten() for f, g in zip(flats, before)]
        rows = {3, 7}
        assert len(changed[0]) == 8                     # 2 rows x 4 of the parameter
        for name, ch in zip(["param"] + list(bucket.state), changed):
            if name == "sum" and isinstance(opt, ft.RowWiseAdagrad):
                assert set(ch.tolist()) == rows         # one value per row
            else:
                assert {int(i) // 4 for i in ch} <= rows, name     # a's rows come first


def test_empty_sparse_gradient_counts_a_step_and_changes_nothing():
    for cls in (torch.optim.SparseAdam, ft.SparseAdam):
        e = torch.nn.Embedding(5, 2, sparse=True)
        opt = cls(e.parameters())
        e(torch.tensor([1])).sum().backward()
        opt.step()
        before = e.weight.detach().clone()
        opt.zero_grad(set_to_none=False)                # a sparse grad stays sparse, nnz 0
        assert e.weight.grad.is_sparse and e.weight.grad._nnz() == 0
        opt.step()
        assert torch.equal(e.weight.detach(), before)
        assert int(opt.state[e.weight]["step"]) == 2


# -- checkpoints across torch.optim and fastadam.torch -----------------------------------

@pytest.mark.parametrize("name,kw", [("SparseAdam", dict(lr=0.05)),
                                     ("Adagrad", dict(lr=0.1, initial_accumulator_value=0.1)),
                                     ("SGD", dict(lr=0.05, momentum=0.9))])
def test_checkpoints_cross_load(name, kw):
    dtype = torch.float64
    data = batches(dtype, 10)
    sparse_only = name == "SparseAdam"
    # torch -> fastadam
    m1, m2 = Recsys(dtype, sparse_only), Recsys(dtype, sparse_only)
    o1 = getattr(torch.optim, name)(m1.parameters(), **kw)
    train(m1, o1, data[:5])
    m2.load_state_dict(m1.state_dict())
    o2 = getattr(ft, name)(m2.parameters(), **kw)
    o2.load_state_dict(copy.deepcopy(o1.state_dict()))
    train(m1, o1, data[5:])
    train(m2, o2, data[5:])
    assert_same(states(m1, o1), states(m2, o2), dtype)
    # fastadam -> torch, in torch's format
    sd = o2.state_dict()
    if name == "SparseAdam":
        assert type(sd["state"][0]["step"]) is int
        assert set(sd["param_groups"][0]) == {"lr", "betas", "eps", "maximize", "params"}
    m3 = Recsys(dtype, sparse_only)
    m3.load_state_dict(m2.state_dict())
    o3 = getattr(torch.optim, name)(m3.parameters(), **kw)
    o3.load_state_dict(copy.deepcopy(sd))
    more = batches(dtype, 5, seed=7)
    train(m2, o2, more)
    train(m3, o3, more)
    assert_same(states(m3, o3), states(m2, o2), dtype)


def test_fastadam_round_trip_is_bitwise():
    dtype = torch.float32
    data = batches(dtype, 8)
    for make in (lambda p: ft.SparseAdam(p, lr=0.05),
                 lambda p: ft.RowWiseAdagrad(p, lr=0.05, weight_decay=0.01),
                 lambda p: ft.Adam(p, lr=0.05, sparse_grads="lazy", amsgrad=True)):
        m1, m2 = Recsys(dtype, True), Recsys(dtype, True)
        o1 = make(m1.parameters())
        train(m1, o1, data[:4])
        m2.load_state_dict(m1.state_dict())
        o2 = make(m2.parameters())
        o2.load_state_dict(copy.deepcopy(o1.state_dict()))
        train(m1, o1, data[4:])
        train(m2, o2, data[4:])
        for x, y in zip(states(m1, o1), states(m2, o2)):
            assert torch.equal(x, y)


# -- refusals: the same exception types as torch ------------------------------------------

def _both(make_torch, make_fast, grad_kind="sparse", **kw):
    """The exception types torch and fastadam raise (None for none) at construction or step."""
    out = []
    for make in (make_torch, make_fast):
        e = torch.nn.Embedding(6, 3, sparse=grad_kind == "sparse")
        try:
            opt = make(e.parameters(), **kw)
            e(torch.tensor([1, 1, 2])).sum().backward()
            snap = e.weight.detach().clone()
            opt.step()
            out.append(None)
        except Exception as ex:         # noqa: BLE001 - the type is the point
            out.append(type(ex))
            if make is make_fast and "snap" in locals():
                assert torch.equal(e.weight.detach(), snap), "a refused step changed the table"
    return out


REFUSALS = [
    ("SparseAdam", dict(lr=0.0), "sparse"),
    ("SparseAdam", dict(lr=-1.0), "sparse"),
    ("SparseAdam", dict(eps=0.0), "sparse"),
    ("SparseAdam", dict(betas=(1.0, 0.9)), "sparse"),
    ("SparseAdam", dict(betas=(0.9, -0.1)), "sparse"),
    ("SparseAdam", dict(lr=torch.tensor([1e-3, 1e-3])), "sparse"),
    ("SparseAdam", dict(), "dense"),
    ("Adagrad", dict(weight_decay=0.1), "sparse"),
    ("Adagrad", dict(fused=True), "sparse"),
    ("SGD", dict(weight_decay=0.1), "sparse"),
    ("SGD", dict(weight_decay=0.1, momentum=0.9), "sparse"),
    ("SGD", dict(fused=True), "sparse"),
    ("Adam", dict(), "sparse"),
    ("AdamW", dict(), "sparse"),
    ("RMSprop", dict(), "sparse"),
    ("Adamax", dict(), "sparse"),
    ("NAdam", dict(), "sparse"),
    ("Adadelta", dict(), "sparse"),
    ("Adagrad", dict(), "sparse"),          # accepted by both
    ("SGD", dict(momentum=0.5), "sparse"),  # accepted by both
]


@pytest.mark.parametrize("name,kw,grad_kind", REFUSALS,
                         ids=[f"{r[0]}-{i}" for i, r in enumerate(REFUSALS)])
def test_refuses_what_torch_refuses(name, kw, grad_kind):
    t, f = _both(getattr(torch.optim, name), getattr(ft, name), grad_kind, **kw)
    assert t is f, (t, f)


def test_sparse_adam_refuses_sparse_and_complex_params_as_torch():
    for p in (torch.zeros(3, 3).to_sparse(), torch.zeros(3, dtype=torch.complex64)):
        for cls in (torch.optim.SparseAdam, ft.SparseAdam):
            with pytest.raises(ValueError, match="params at indices"):
                cls([torch.nn.Parameter(torch.zeros(2)), p])


def test_bad_sparse_gradients_change_nothing():
    e = torch.nn.Embedding(6, 3, sparse=True)
    opt = ft.SparseAdam(e.parameters(), lr=0.1)
    e(torch.tensor([1])).sum().backward()
    opt.step()
    snap = [e.weight.detach().clone()] + [t.clone() for t in opt._buckets[0].state.values()]
    bad = [(IndexError, torch.sparse_coo_tensor([[1, 6]], torch.ones(2, 3), (6, 3))),
           (IndexError, torch.sparse_coo_tensor([[-1]], torch.ones(1, 3), (6, 3))),
           (RuntimeError, torch.ones(6, 3))]
    for exc, g in bad:
        e.weight.grad = g
        with pytest.raises(exc):
            opt.step()
        assert torch.equal(e.weight.detach(), snap[0])
        for t, s in zip(opt._buckets[0].state.values(), snap[1:]):
            assert torch.equal(t, s)


def test_lazy_adam_and_rowwise_need_what_they_need():
    with pytest.raises(ValueError, match="sparse_grads"):
        ft.Adam([torch.nn.Parameter(torch.zeros(2))], sparse_grads="eager")
    with pytest.raises(ValueError, match="state_dtype"):
        ft.Adam([torch.nn.Parameter(torch.zeros(2))], sparse_grads="lazy", state_dtype="int8")
    with pytest.raises(ValueError, match="0-d"):
        ft.RowWiseAdagrad([torch.nn.Parameter(torch.tensor(1.0))])
    p = torch.nn.Parameter(torch.zeros(4, 3))
    opt = ft.RowWiseAdagrad([p])
    p.grad = torch.zeros(4, 3).to_sparse(2)
    with pytest.raises(ValueError, match="first dimension"):
        opt.step()
    p.grad = torch.zeros(4, 3)
    with pytest.raises(RuntimeError, match="dense gradients"):
        opt.step()


def test_numba_and_numpy_backends_agree():
    dtype = torch.float64
    data = batches(dtype, 6)
    out = []
    for be in ("numba", "numpy"):
        m = Recsys(dtype, True)
        o = ft.SparseAdam(m.parameters(), lr=0.05, backend=be)
        train(m, o, data)
        out.append(states(m, o))
    assert_same(*out, dtype)


def test_grad_scaler():
    # SparseAdam: the scaler unscales the sparse gradients itself (as for torch's);
    # Adagrad: fastadam unscales inside the step, torch's scaler before it
    dtype = torch.float32
    data = batches(dtype, 5)
    for name in ("SparseAdam", "Adagrad"):
        res = []
        for mod in (torch.optim, ft):
            m = Recsys(dtype, name == "SparseAdam")
            o = getattr(mod, name)(m.parameters(), lr=0.05)
            sc = torch.amp.GradScaler("cpu", init_scale=1024.0)
            for users, items, w in data:
                o.zero_grad()
                sc.scale(m(users, items, w)).backward()
                sc.step(o)
                sc.update()
            res.append(states(m, o))
        assert_same(*res, dtype)


# -- no torch counterpart: lazy Adam and RowWiseAdagrad against the NumPy reference -------

def _reference_lazy_run(model, data, hp, rowwise=False):
    """The NumPy reference over the model's sparse tables (dense ones: reference.adam_)."""
    params = [p.detach().numpy().copy() for p in model.parameters()]
    st = [dict(exp_avg=np.zeros_like(p), exp_avg_sq=np.zeros_like(p),
               max_exp_avg_sq=np.zeros_like(p), sum=np.zeros(p.shape[0], p.dtype))
          for p in params]
    for t, (users, items, w) in enumerate(data, 1):
        model.zero_grad()
        for p, v in zip(model.parameters(), params):
            p.data.copy_(torch.from_numpy(v))
        model(users, items, w).backward()
        for p, v, s in zip(model.parameters(), params, st):
            g = p.grad
            if g.is_sparse:
                idx, vals = g._indices()[0].numpy(), g._values().numpy()
                if rowwise:
                    ref.rowwise_adagrad_(v, idx, vals, s["sum"], **hp)
                else:
                    ref.lazy_adam_(v, idx, vals, s["exp_avg"], s["exp_avg_sq"],
                                   s["max_exp_avg_sq"] if hp["amsgrad"] else None, step=t, **hp)
            else:
                ref.adam_(v, g.numpy().copy(), s["exp_avg"], s["exp_avg_sq"],
                          s["max_exp_avg_sq"] if hp["amsgrad"] else None, step=t, **hp)
    return params, st


@pytest.mark.parametrize("cls,kw", [
    ("Adam", dict(lr=0.02)),
    ("Adam", dict(lr=0.02, weight_decay=0.1, amsgrad=True, maximize=True)),
    ("AdamW", dict(lr=0.02, weight_decay=0.1)),
])
def test_lazy_adam_matches_reference(cls, kw):
    dtype = torch.float64
    data = batches(dtype, 10)
    m = Recsys(dtype)
    want, st = _reference_lazy_run(Recsys(dtype), data, dict(
        lr=kw["lr"], beta1=0.9, beta2=0.999, eps=1e-8,
        weight_decay=kw.get("weight_decay", 0.01 if cls == "AdamW" else 0.0),
        decoupled_weight_decay=cls == "AdamW", amsgrad=kw.get("amsgrad", False),
        maximize=kw.get("maximize", False)))
    opt = getattr(ft, cls)(m.parameters(), sparse_grads="lazy", **kw)
    train(m, opt, data)
    for p, w, s in zip(m.parameters(), want, st):
        np.testing.assert_allclose(p.detach().numpy(), w, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(opt.state[p]["exp_avg_sq"].numpy(), s["exp_avg_sq"],
                                   rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_rowwise_adagrad_matches_reference(dtype):
    data = batches(dtype, 10)
    hp = dict(lr=0.05, eps=1e-8, weight_decay=0.01, maximize=False)
    want, st = _reference_lazy_run(Recsys(dtype, True), data, hp, rowwise=True)
    m = Recsys(dtype, True)
    opt = ft.RowWiseAdagrad(m.parameters(), **hp)
    train(m, opt, data)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    for p, w, s in zip(m.parameters(), want, st):
        np.testing.assert_allclose(p.detach().numpy(), w, **tol)
        assert opt.state[p]["sum"].shape == (p.shape[0],)
        np.testing.assert_allclose(opt.state[p]["sum"].numpy(), s["sum"], **tol)


def test_a_sparse_tables_flat_gradient_costs_no_memory():
    # the flat gradient buffer is mapped lazily and a sparse table's slice of it is never
    # touched, zero_grad(set_to_none=False) included (a subprocess: a clean RSS, a timeout)
    import os
    import platform
    import subprocess
    import sys
    import textwrap
    if platform.system() != "Linux":
        pytest.skip("reads /proc/self/statm")
    code = textwrap.dedent("""
        import resource, torch, fastadam.torch as ft
        def rss_mib():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * 4096 / 2**20
        def run(emb, tower, steps):
            opt = ft.Adagrad(list(emb.parameters()) + list(tower.parameters()), lr=0.1)
            for _ in range(steps):
                opt.zero_grad(set_to_none=False)
                tower(emb(torch.randint(0, emb.num_embeddings, (512,)))).sum().backward()
                opt.step()
            return opt
        run(torch.nn.Embedding(64, 16, sparse=True), torch.nn.Linear(16, 1), 2)   # warm
        emb = torch.nn.Embedding(1 << 20, 16, sparse=True)       # 64 MiB
        tower = torch.nn.Linear(16, 1)
        before = rss_mib()
        opt = run(emb, tower, 3)
        print("grew_mib", rss_mib() - before)
    """)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    grew = float(out.stdout.split("grew_mib")[1])
    # the flat table (64 MiB, the old storage freed) and "sum" (64 MiB); a touched flat
    # gradient would add 64 MiB more
    assert grew < 100, out.stdout


# -- the step's kept tables and bound kernels (numba) against the checked functional path -

def _functional_twin(name, kw):
    """``(state arrays of one table, step(t, p, idx, vals, state))``: the
    fastadam.functional call (the checked path: its arguments validated, the kernel
    through numba's dispatcher) that a step of optimizer ``name`` makes on a table."""
    import fastadam.functional as F
    lr = kw["lr"]
    if name == "SparseAdam":
        b1, b2 = kw.get("betas", (0.9, 0.999))
        return (lambda p: [np.zeros_like(p), np.zeros_like(p)],
                lambda t, p, i, g, s: F.sparse_adam_(p, i, g, *s, step=t, lr=lr, beta1=b1,
                                                     beta2=b2, eps=kw.get("eps", 1e-8),
                                                     maximize=kw.get("maximize", False)))
    if name == "Adagrad":
        a0 = kw.get("initial_accumulator_value", 0.0)
        return (lambda p: [np.full_like(p, a0)],
                lambda t, p, i, g, s: F.sparse_adagrad_(p, i, g, *s, step=t, lr=lr,
                                                        lr_decay=kw.get("lr_decay", 0.0),
                                                        eps=kw.get("eps", 1e-10)))
    if name == "SGD":
        return (lambda p: [], lambda t, p, i, g, s: F.sparse_sgd_(p, i, g, lr=lr))
    if name == "RowWiseAdagrad":
        return (lambda p: [np.zeros(p.shape[0], p.dtype)],
                lambda t, p, i, g, s: F.rowwise_adagrad_(p, i, g, *s, lr=lr,
                                                         eps=kw.get("eps", 1e-10),
                                                         weight_decay=kw.get("weight_decay", 0)))
    return (lambda p: [np.zeros_like(p), np.zeros_like(p)],                     # lazy Adam
            lambda t, p, i, g, s: F.lazy_adam_(p, i, g, *s, step=t, lr=lr, beta1=0.9,
                                               beta2=0.999, eps=1e-8, weight_decay=0.0))


@pytest.mark.parametrize("name,kw", [
    ("SparseAdam", dict(lr=0.05, betas=(0.8, 0.95), eps=1e-6, maximize=True)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.2)),
    ("SGD", dict(lr=0.05)),
    ("RowWiseAdagrad", dict(lr=0.05, weight_decay=0.01)),
    ("Adam", dict(lr=0.02, sparse_grads="lazy")),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_bound_kernel_calls_give_the_checked_paths_bits(name, kw, dtype):
    # fastadam.torch keeps each table's slices and, on numba, its kernel's entry points
    # (scalars given as Python floats); fastadam.functional checks its arguments and goes
    # through numba's dispatcher with NumPy scalars.  Same bits, serial and parallel sizes
    # (lookups * dim against the parallel threshold), two tables, many duplicates.
    from fastadam._config import PARALLEL_THRESHOLD
    rng = np.random.default_rng(7)
    shapes = [(300, 8, 40), (4096, 32, max(64, 2 * PARALLEL_THRESHOLD // 32))]
    tables = [rng.standard_normal(s[:2]).astype(dtype) for s in shapes]
    ps = [torch.nn.Parameter(torch.from_numpy(t.copy())) for t in tables]
    opt = getattr(ft, name)(ps, backend="numba", **kw)
    make_state, fstep = _functional_twin(name, kw)
    fstate = [make_state(t) for t in tables]
    for t in range(1, 5):
        for k, ((rows, dim, n), p) in enumerate(zip(shapes, ps)):
            idx = (rng.zipf(1.3, n) - 1) % rows                # hot rows: many duplicates
            vals = rng.standard_normal((n, dim)).astype(dtype)
            p.grad = torch.sparse_coo_tensor(torch.from_numpy(idx)[None],
                                             torch.from_numpy(vals.copy()), (rows, dim))
            fstep(t, tables[k], idx, vals, fstate[k])
        opt.step()
        for k, p in enumerate(ps):
            assert np.array_equal(p.detach().numpy(), tables[k]), (t, k)
            got = [v.numpy() for key, v in sorted(opt.state[p].items()) if key != "step"]
            for g, w in zip(got, fstate[k]):
                assert np.array_equal(g, w), (t, k)


def test_sparse_only_steps_refuse_before_writing_any_table():
    # SparseAdam and RowWiseAdagrad plan sparse-only steps on their own path: a bad
    # gradient of the second table leaves the first table (and every state) as it was
    for make in (lambda ps: ft.SparseAdam(ps, lr=0.1), lambda ps: ft.RowWiseAdagrad(ps, lr=0.1)):
        ps = [torch.nn.Parameter(torch.randn(6, 3)) for _ in range(2)]
        opt = make(ps)
        for p in ps:
            p.grad = torch.sparse_coo_tensor([[1, 2]], torch.ones(2, 3), (6, 3))
        opt.step()
        snap = [p.detach().clone() for p in ps] + [
            t.clone() for t in opt._buckets[0].state.values()]
        for exc, bad in [(IndexError, torch.sparse_coo_tensor([[0, 6]], torch.ones(2, 3), (6, 3))),
                         (IndexError, torch.sparse_coo_tensor([[-1]], torch.ones(1, 3), (6, 3))),
                         (RuntimeError, torch.ones(6, 3))]:
            ps[0].grad = torch.sparse_coo_tensor([[3]], torch.ones(1, 3), (6, 3))
            ps[1].grad = bad
            with pytest.raises(exc):
                opt.step()
            now = [p.detach() for p in ps] + list(opt._buckets[0].state.values())
            assert all(torch.equal(a, b) for a, b in zip(now, snap))
            assert int(opt._buckets[0].steps[0]) == 1


def test_values_in_the_flat_buffers_are_read_before_the_step_writes():
    # a gradient whose values are a view of the flat parameter buffer (its own rows):
    # the step uses them as they were (a copy), as torch.optim.SparseAdam does
    w = [torch.nn.Parameter(torch.randn(5, 4, dtype=torch.float64)) for _ in range(2)]
    w[1].data.copy_(w[0].data)
    o1, o2 = torch.optim.SparseAdam([w[0]], lr=0.5), ft.SparseAdam([w[1]], lr=0.5)
    for _ in range(3):
        for p, o in ((w[0], o1), (w[1], o2)):
            vals = p.detach()[1:3]                  # rows 1, 2 of the parameter itself
            if o is o1:
                vals = vals.clone()
            else:
                assert vals.data_ptr() == o._buckets[0].data.data_ptr() + 4 * 8
            p.grad = torch.sparse_coo_tensor([[2, 1]], vals, (5, 4))
            o.step()
    torch.testing.assert_close(w[1].detach(), w[0].detach(), rtol=1e-12, atol=1e-14)


def test_a_parameter_seen_as_other_tables_by_its_gradients():
    # the tables kept per parameter are per row count: a (4, 3, 2) parameter whose
    # gradients are sparse in one, then two dimensions (4 x 6, then 12 x 2 tables)
    p = [torch.nn.Parameter(torch.randn(4, 3, 2, dtype=torch.float64)) for _ in range(2)]
    p[1].data.copy_(p[0].data)
    o1, o2 = torch.optim.SparseAdam([p[0]], lr=0.1), ft.SparseAdam([p[1]], lr=0.1)
    g = torch.Generator().manual_seed(3)
    for sd in (1, 2, 1, 2):
        d = torch.randn(4, 3, 2, generator=g, dtype=torch.float64)
        for q, o in zip(p, (o1, o2)):
            q.grad = d.to_sparse(sd)
            o.step()
    torch.testing.assert_close(p[1].detach(), p[0].detach(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name,kw", [("SparseAdam", dict(lr=0.05)),
                                     ("Adagrad", dict(lr=0.1, lr_decay=0.05)),
                                     ("RowWiseAdagrad", dict(lr=0.1))])
def test_tables_at_other_counts_and_widths_in_one_step(name, kw):
    # one step's sparse calls share their scalars by (step count, row width): tables that
    # skipped steps (other counts) or have other widths must still get their own. The
    # tables in one optimizer match the same tables each in an optimizer of its own
    shapes = [(30, 8), (20, 8), (25, 4)]
    g = torch.Generator().manual_seed(5)
    init = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    together = [torch.nn.Parameter(t.clone()) for t in init]
    apart = [torch.nn.Parameter(t.clone()) for t in init]
    cls = getattr(ft, name)
    o1 = cls(together, **kw)
    o2 = [cls([p], **kw) for p in apart]
    for k in range(6):
        for i, (rows, dim) in enumerate(shapes):
            if i and (k + i) % 3 == 2:           # table i > 0 skips this step: counts diverge
                together[i].grad = apart[i].grad = None
                continue
            idx = torch.randint(0, rows, (1, 9), generator=g)
            vals = torch.randn(9, dim, generator=g, dtype=torch.float64)
            together[i].grad = torch.sparse_coo_tensor(idx, vals, (rows, dim))
            apart[i].grad = torch.sparse_coo_tensor(idx, vals.clone(), (rows, dim))
        o1.step()
        for o in o2:
            o.step()
    for p, q in zip(together, apart):
        assert torch.equal(p.detach(), q.detach())
    counts = {int(torch.as_tensor(o1.state[p]["step"]).item()) for p in together
              if "step" in o1.state[p]}
    assert name == "RowWiseAdagrad" or len(counts) > 1     # the counts did diverge
