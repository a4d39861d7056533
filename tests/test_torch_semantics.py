"""fastadam.torch as torch.optim in real scripts: what users do to ``optimizer.state``,
to a group's ``"params"``, shared memory (Hogwild), pickle, ``torch.compile`` and
``copy.deepcopy`` (issue 21).

Every pattern runs side by side with ``torch.optim.X(foreach=False)`` from the same
model and data in float64, the same edit made to both, and the parameters and
``state_dict()`` compared to 1e-10 after each step.
"""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
import textwrap
from collections import defaultdict

import pytest

torch = pytest.importorskip("torch")
import fastadam.torch as ft  # noqa: E402

RTOL, ATOL = 1e-10, 1e-13

#: (fastadam / torch.optim class name, keyword arguments)
OPTS = [
    ("Adam", dict(lr=0.05)),
    ("AdamW", dict(lr=0.05, amsgrad=True, weight_decay=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("RMSprop", dict(lr=0.01, momentum=0.5, centered=True)),
    ("Adagrad", dict(lr=0.05)),
    ("NAdam", dict(lr=0.05)),
    ("Adamax", dict(lr=0.05)),
    ("Adadelta", dict(lr=0.5)),
]
IDS = [name for name, _ in OPTS]


@pytest.fixture(autouse=True)
def _float64_default():
    """float64 step counts and scalars in torch.optim too (its step tensors take the
    default dtype), so that the comparison is to 1e-10."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _model(n_layers=2, seed=0):
    torch.manual_seed(seed)
    layers = []
    for _ in range(n_layers):
        layers += [torch.nn.Linear(5, 5), torch.nn.Tanh()]
    return torch.nn.Sequential(*layers).double()


def _data(k, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(7, 5, generator=g, dtype=torch.float64),
             torch.randn(7, 5, generator=g, dtype=torch.float64)) for _ in range(k)]


def _pair(name, kw, n_layers=2):
    m = _model(n_layers)
    mt = copy.deepcopy(m)
    return m, getattr(ft, name)(m.parameters(), **kw), mt, getattr(torch.optim, name)(
        mt.parameters(), foreach=False, **kw)


def _train(model, opt, batch, set_to_none=True):
    x, y = batch
    opt.zero_grad(set_to_none=set_to_none)
    ((model(x) - y) ** 2).mean().backward()
    opt.step()


def _close(a, b, what):
    torch.testing.assert_close(a.detach().double(), b.detach().double(), rtol=RTOL,
                               atol=ATOL, msg=lambda m: f"{what}: {m}")


def _same(m, o, mt, ot, when=""):
    """Parameters and state_dict of (m, o) equal torch's (mt, ot)."""
    for i, (p, q) in enumerate(zip(m.parameters(), mt.parameters())):
        _close(p, q, f"{when} parameter {i}")
    sd, sdt = o.state_dict(), ot.state_dict()
    assert sorted(sd["state"]) == sorted(sdt["state"]), when
    for k, st in sdt["state"].items():
        assert sorted(sd["state"][k]) == sorted(st), (when, k)
        for key, v in st.items():
            if isinstance(v, torch.Tensor):
                _close(sd["state"][k][key].reshape(v.shape), v, f"{when} state {k} {key}")
            else:
                assert sd["state"][k][key] == v
    assert [g["params"] for g in sd["param_groups"]] == [g["params"] for g in
                                                          sdt["param_groups"]]


# -- 2. optimizer.state edits ----------------------------------------------------------
def _first_tensor_key(opt, p):
    return next(k for k, v in opt.state[p].items()
                if isinstance(v, torch.Tensor) and v.numel() == p.numel())


def _iadd_step(o, p, val):
    o.state[p]["step"] += 3


EDITS = {
    "clear": lambda o, p, val: o.state[p].clear(),
    "del": lambda o, p, val: o.state.__delitem__(p),
    "pop": lambda o, p, val: o.state.pop(p),
    "new_state_dict": lambda o, p, val: setattr(o, "state", defaultdict(dict)),
    "assign_tensor": lambda o, p, val: o.state[p].__setitem__(_first_tensor_key(o, p), val),
    "assign_step": lambda o, p, val: o.state[p].__setitem__("step", torch.tensor(7.0)),
    "iadd_step": _iadd_step,
    "assign_dict": lambda o, p, val: o.state.__setitem__(
        p, {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in o.state[p].items()}),
}


@pytest.mark.parametrize("edit", list(EDITS))
@pytest.mark.parametrize("name,kw", OPTS, ids=IDS)
def test_state_edit_means_what_it_means_in_torch(name, kw, edit):
    if edit.endswith("_step") and name == "SGD":
        pytest.skip("SGD keeps no step")
    m, o, mt, ot = _pair(name, kw)
    data = _data(7)
    for batch in data[:3]:
        _train(m, o, batch)
        _train(mt, ot, batch)
    p, pt = next(m.parameters()), next(mt.parameters())
    val = torch.full_like(p, 0.25)
    EDITS[edit](ot, pt, val.clone())
    EDITS[edit](o, p, val.clone())
    _same(m, o, mt, ot, f"after {edit}")          # state_dict: what the next step uses
    for k, batch in enumerate(data[3:]):
        _train(m, o, batch)
        _train(mt, ot, batch)
        _same(m, o, mt, ot, f"step {k} after {edit}")


def test_state_edit_is_bound_to_the_flat_buffers():
    """After an edit, state[p] holds views of the flat buffers again; an in-place edit of
    a view is seen by the step (as torch's in-place edit of its own tensor)."""
    m, o, mt, ot = _pair("Adam", dict(lr=0.05))
    data = _data(5)
    for batch in data[:2]:
        _train(m, o, batch)
        _train(mt, ot, batch)
    p, pt = next(m.parameters()), next(mt.parameters())
    o.state[p]["exp_avg"] = torch.zeros_like(p)
    ot.state[pt]["exp_avg"] = torch.zeros_like(pt)
    _train(m, o, data[2])
    _train(mt, ot, data[2])
    with torch.no_grad():
        o.state[p]["exp_avg_sq"].mul_(2)
        ot.state[pt]["exp_avg_sq"].mul_(2)
    for batch in data[3:]:
        _train(m, o, batch)
        _train(mt, ot, batch)
        _same(m, o, mt, ot)
    flat = o._where[p][0].state["exp_avg"]
    assert o.state[p]["exp_avg"].data_ptr() == flat.data_ptr()


def test_incomplete_state_raises_before_changing_anything():
    m, o, _, _ = _pair("Adam", dict(lr=0.05))
    _train(m, o, _data(1)[0])
    p = next(m.parameters())
    del o.state[p]["exp_avg"]                        # torch.optim: KeyError at the step
    before = [q.detach().clone() for q in m.parameters()]
    with pytest.raises(KeyError, match="exp_avg"):
        o.step()
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters()))
    o.state[p]["exp_avg"] = torch.zeros(3)           # wrong size
    with pytest.raises(ValueError, match="exp_avg"):
        o.step()
    o.state[p].clear()                               # a fresh start is fine
    o.step()


def test_loaded_optimizer_state_is_not_an_edit():
    """load_state_dict and the step's own bookkeeping leave no pending edit."""
    m, o, _, _ = _pair("Adam", dict(lr=0.05))
    _train(m, o, _data(1)[0])
    assert not o._flag.dirty
    o.load_state_dict(o.state_dict())
    assert not o._flag.dirty
    _ = o.state[torch.nn.Parameter(torch.zeros(1))]   # reading a missing entry
    assert not o._flag.dirty


# -- 3. a group's "params" edited --------------------------------------------------------
@pytest.mark.parametrize("how", ["append", "extend", "replace", "insert", "remove"])
@pytest.mark.parametrize("name,kw", [OPTS[0], OPTS[2], OPTS[5]], ids=["Adam", "SGD", "NAdam"])
def test_group_params_edit_is_adopted(name, kw, how):
    m = _model(3)
    mt = copy.deepcopy(m)
    first = lambda mod: [p for i, p in enumerate(mod.parameters()) if i < 4]   # noqa: E731
    o = getattr(ft, name)(first(m), **kw)
    ot = getattr(torch.optim, name)(first(mt), foreach=False, **kw)
    data = _data(6)
    for batch in data[:2]:
        _train(m, o, batch, set_to_none=False)
        _train(mt, ot, batch, set_to_none=False)
    extra, extra_t = list(m.parameters())[4:], list(mt.parameters())[4:]
    for opt, ex in ((o, extra), (ot, extra_t)):
        g = opt.param_groups[0]
        if how == "append":
            g["params"].append(ex[0])
            g["params"].append(ex[1])
        elif how == "extend":
            g["params"].extend(ex)
        elif how == "replace":
            g["params"] = list(g["params"]) + ex
        elif how == "insert":
            g["params"].insert(1, ex[1])
        else:
            del g["params"][1]
    if how != "remove":         # torch's state_dict() fails on a removed parameter's state
        _same(m, o, mt, ot, f"after {how}")
    for k, batch in enumerate(data[2:]):
        _train(m, o, batch, set_to_none=k % 2 == 0)
        _train(mt, ot, batch, set_to_none=k % 2 == 0)
        for i, (p, q) in enumerate(zip(m.parameters(), mt.parameters())):
            _close(p, q, f"step {k} after {how}: parameter {i}")
        if how != "remove":
            _same(m, o, mt, ot, f"step {k} after {how}")


def test_group_params_bad_edit_raises():
    m = _model(1)
    o = ft.Adam(m.parameters())
    o.param_groups[0]["params"].append(torch.zeros(3, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"param_groups\[0\]\['params'\]"):
        o.step()
    o.param_groups[0]["params"].pop()
    m2 = _model(1)
    o.add_param_group({"params": list(m2.parameters())})
    o.param_groups[0]["params"].append(next(m2.parameters()))
    with pytest.raises(ValueError, match="more than one parameter group"):
        o.step()


# -- 1. Hogwild: shared parameters stay shared -------------------------------------------
HOGWILD = textwrap.dedent("""
    import copy, sys
    import torch
    import torch.multiprocessing as mp
    import fastadam.torch as ft

    def data(seed):
        g = torch.Generator().manual_seed(seed)
        return [(torch.randn(8, 6, generator=g, dtype=torch.float64),
                 torch.randn(8, 2, generator=g, dtype=torch.float64)) for _ in range(5)]

    def train(model, opt, batches):
        for x, y in batches:
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()

    def worker(model, seed):        # mnist_hogwild: the worker builds its own optimizer
        torch.set_num_threads(1)
        train(model, ft.SGD(model.parameters(), lr=0.1, momentum=0.5), data(seed))

    if __name__ == "__main__":
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Tanh(),
                                    torch.nn.Linear(4, 2)).double()
        ref = copy.deepcopy(model)
        model.share_memory()
        parent_opt = ft.Adam(model.parameters(), lr=0.01)   # built before the workers
        assert all(p.is_shared() for p in model.parameters()), "no longer shared"
        ctx = mp.get_context("spawn")
        for seed in (1, 2):                                 # one after the other
            w = ctx.Process(target=worker, args=(model, seed))
            w.start()
            w.join(120)
            assert w.exitcode == 0, w.exitcode
        train(model, parent_opt, data(3))                   # the parent trains on
        for seed in (1, 2):
            train(ref, torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.5,
                                       foreach=False), data(seed))
        train(ref, torch.optim.Adam(ref.parameters(), lr=0.01, foreach=False), data(3))
        for p, q in zip(model.parameters(), ref.parameters()):
            torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-10, atol=1e-13)
        assert all(p.is_shared() for p in model.parameters())
        print("OK")
""")


def _run_script_ok(script, tmp_path):
    """Run ``script`` in a new interpreter (this fastadam first on its path, 300 s at
    most); it must exit 0 with its output ending in ``OK``."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(ft.__file__))))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       timeout=300, env=env, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), r.stdout + r.stderr


def test_hogwild_spawned_workers_train_the_shared_model(tmp_path):
    script = tmp_path / "hogwild.py"
    script.write_text(HOGWILD)
    _run_script_ok(script, tmp_path)


def test_shared_parameters_laid_out_flat_are_taken_in_place():
    """Parameters that already lie back to back in one shared storage (a worker given
    such a layout) are stepped where they are: no private copy."""
    flat = torch.zeros(12, dtype=torch.float64).share_memory_()
    ps = [torch.nn.Parameter(flat[:8].view(2, 4)), torch.nn.Parameter(flat[8:])]
    with torch.no_grad():
        flat.copy_(torch.arange(12.0))
    o = ft.SGD(ps, lr=0.5)
    assert o._buckets[0].data.data_ptr() == flat.data_ptr()
    for p in ps:
        p.grad = torch.ones_like(p)
    o.step()
    _close(flat, torch.arange(12.0) - 0.5, "shared flat")
    assert ps[0].data_ptr() == flat.data_ptr()


def test_low_precision_shared_parameters_are_refused():
    p = torch.nn.Parameter(torch.zeros(4, dtype=torch.bfloat16).share_memory_())
    with pytest.raises(ValueError, match="shared memory"):
        ft.Adam([p])


# -- 4. pickle sizes ------------------------------------------------------------------------
def _pickled_sizes(n_tensors):
    m = torch.nn.Sequential(*[torch.nn.Linear(32, 32) for _ in range(n_tensors // 2)])
    mt = copy.deepcopy(m)
    o, ot = ft.Adam(m.parameters()), torch.optim.Adam(mt.parameters(), foreach=False)
    x = torch.randn(4, 32)
    for mm, oo in ((m, o), (mt, ot)):
        mm(x).sum().backward()
        oo.step()
    return (m, o, len(pickle.dumps(o.state_dict())), len(pickle.dumps(ot.state_dict())),
            len(pickle.dumps(m.state_dict())), len(pickle.dumps(mt.state_dict())))


@pytest.mark.parametrize("n_tensors", [6, 40, 80])
def test_pickled_state_dicts_are_torch_sized(n_tensors):
    m, o, so, st, mo, mt = _pickled_sizes(n_tensors)
    assert so <= 1.2 * st, (so, st)
    assert mo <= 1.2 * mt, (mo, mt)
    sd = pickle.loads(pickle.dumps(o.state_dict()))      # values unchanged
    for k, s in o.state_dict()["state"].items():
        for key, v in s.items():
            assert torch.equal(sd["state"][k][key], v)
    msd = pickle.loads(pickle.dumps(m.state_dict()))
    for k, v in m.state_dict().items():
        assert torch.equal(msd[k], v)


# -- 5. torch.compile(opt.step) ----------------------------------------------------------
@pytest.mark.parametrize("name,kw", [OPTS[0], OPTS[2]], ids=["Adam", "SGD"])
def test_compiled_step_gives_torchs_results(name, kw):
    m, o, mt, ot = _pair(name, kw)
    compiled = torch.compile(o.step)

    @torch.compile
    def step_in_compiled_fn():
        o.step()

    for k, batch in enumerate(_data(4)):
        for mm in (m, mt):
            mm.zero_grad()
            x, y = batch
            ((mm(x) - y) ** 2).mean().backward()
        (compiled if k % 2 == 0 else step_in_compiled_fn)()
        ot.step()
        _same(m, o, mt, ot, f"step {k}")


# -- 6. copy.deepcopy((model, opt)) and pickle of the optimizer --------------------------
@pytest.mark.parametrize("name,kw", OPTS, ids=IDS)
def test_deepcopy_model_and_optimizer(name, kw):
    m, o, mt, ot = _pair(name, kw)
    data = _data(6)
    for opt in (o, ot):     # a scheduler wraps opt.step on the instance
        torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for batch in data[:2]:
        _train(m, o, batch)
        _train(mt, ot, batch)
    m2, o2 = copy.deepcopy((m, o))
    mt2, ot2 = copy.deepcopy((mt, ot))
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(m.parameters(), m2.parameters()))
    for batch in data[2:4]:                      # the copy trains on its own
        _train(m2, o2, batch)
        _train(mt2, ot2, batch)
    _same(m2, o2, mt2, ot2, "copy")
    for batch in data[4:]:                       # the original is unaffected by the copy
        _train(m, o, batch)
        _train(mt, ot, batch)
    _same(m, o, mt, ot, "original")


def test_pickle_model_and_optimizer_round_trip():
    m, o, mt, ot = _pair("Adam", dict(lr=0.05, amsgrad=True))
    data = _data(4)
    for batch in data[:2]:
        _train(m, o, batch)
        _train(mt, ot, batch)
    m2, o2 = pickle.loads(pickle.dumps((m, o)))
    for batch in data[2:]:
        _train(m2, o2, batch)
        _train(mt, ot, batch)
    _same(m2, o2, mt, ot)
    with pytest.raises(TypeError, match="copy.copy"):
        copy.copy(o)


def test_parameter_moved_to_another_group():
    m = _model(2)
    mt = copy.deepcopy(m)
    opts = []
    for mod, cls, extra in ((m, ft.Adam, {}), (mt, torch.optim.Adam, {"foreach": False})):
        ps = list(mod.parameters())
        opts.append(cls([{"params": ps[:2]}, {"params": ps[2:], "lr": 0.01}], lr=0.05,
                        **extra))
    o, ot = opts
    data = _data(5)
    for batch in data[:2]:
        _train(m, o, batch)
        _train(mt, ot, batch)
    for opt in (o, ot):
        opt.param_groups[1]["params"].append(opt.param_groups[0]["params"].pop())
    for batch in data[2:]:
        _train(m, o, batch)
        _train(mt, ot, batch)
        for i, (p, q) in enumerate(zip(m.parameters(), mt.parameters())):
            _close(p, q, f"parameter {i}")


@pytest.mark.parametrize("set_to_none", [False, True])
def test_share_memory_after_construction(set_to_none):
    """model.share_memory() once the optimizer is made (gradients bound to the flat
    buffer move too): the step follows the parameters and gradients into shared memory."""
    m, o, mt, ot = _pair("Adam", dict(lr=0.05))
    data = _data(5)
    for batch in data[:2]:
        _train(m, o, batch, set_to_none=set_to_none)
        _train(mt, ot, batch, set_to_none=set_to_none)
    m.share_memory()
    mt.share_memory()
    for batch in data[2:]:
        _train(m, o, batch, set_to_none=set_to_none)
        _train(mt, ot, batch, set_to_none=set_to_none)
        _same(m, o, mt, ot)
    assert all(p.is_shared() for p in m.parameters())


def _emb_grad(p, k):
    idx = torch.tensor([k % 6, (k + 2) % 6, k % 6])
    vals = torch.linspace(-1, 1, 3 * p.shape[1], dtype=p.dtype).reshape(3, -1) * (k + 1)
    return torch.sparse_coo_tensor(idx[None], vals, p.shape)


FRESH = {   # optimizers beyond torch.optim's: a cleared state must restart as a new one
    "Adam-int8": (lambda ps: ft.Adam(ps, lr=0.01, state_dtype="int8"), torch.float32, False),
    "Adam-bf16-state": (lambda ps: ft.Adam(ps, lr=0.01, state_dtype="bfloat16"),
                        torch.float32, False),
    "Adam-bf16-param": (lambda ps: ft.Adam(ps, lr=0.01), torch.bfloat16, False),
    "SparseAdam": (lambda ps: ft.SparseAdam(ps, lr=0.01), torch.float32, True),
    "RowWiseAdagrad": (lambda ps: ft.RowWiseAdagrad(ps, lr=0.1), torch.float32, True),
    "Adam-lazy": (lambda ps: ft.Adam(ps, lr=0.01, sparse_grads="lazy"), torch.float32, True),
}


@pytest.mark.parametrize("case", list(FRESH))
def test_cleared_state_restarts_as_a_new_optimizer(case):
    make, dtype, sparse = FRESH[case]
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(6, 300, dtype=torch.float32).to(dtype))

    def grad(k):
        if sparse:
            return _emb_grad(p, k)
        return (torch.linspace(-1, 1, p.numel()).reshape(p.shape) * (k + 1)).to(dtype)

    o = make([p])
    for k in range(2):
        p.grad = grad(k)
        o.step()
    q = torch.nn.Parameter(p.detach().clone())
    o.state[p].clear()
    fresh = make([q])
    for k in range(2, 5):
        p.grad = grad(k)
        o.step()
        q.grad = grad(k).clone() if not sparse else _emb_grad(q, k)
        fresh.step()
        assert torch.equal(p.detach(), q.detach()), k
        sa, sb = o.state_dict()["state"], fresh.state_dict()["state"]
        assert sorted(sa[0]) == sorted(sb[0])
        for key in sa[0]:
            assert torch.equal(torch.as_tensor(sa[0][key]), torch.as_tensor(sb[0][key])), key


ZERO_LOAD = textwrap.dedent("""
    import copy, os, socket, sys
    import torch, torch.distributed as dist
    from torch.distributed.optim import ZeroRedundancyOptimizer
    import fastadam.torch as ft

    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=0, world_size=1)
    torch.set_default_dtype(torch.float64)

    def run(cls, **kw):
        torch.manual_seed(0)
        m = torch.nn.Linear(4, 3)
        z = ZeroRedundancyOptimizer(m.parameters(), optimizer_class=cls, lr=0.1, **kw)
        x = torch.randn(5, 4)
        def step():
            z.zero_grad()
            (m(x) ** 2).sum().backward()
            z.step()
        step(); step()
        z.consolidate_state_dict(0)
        ckpt = copy.deepcopy(z.state_dict())
        step(); step()
        z.load_state_dict(ckpt)     # sets z.optim.state[p] = ... (an edit of the state)
        step()
        return [p.detach().clone() for p in m.parameters()], z.optim.state_dict()["state"]

    (pa, sa), (pb, sb) = run(torch.optim.Adam, foreach=False), run(ft.Adam)
    for a, b in zip(pa, pb):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-13)
    for k in sa:
        for key in sa[k]:
            torch.testing.assert_close(sb[k][key], sa[k][key], rtol=1e-10, atol=1e-13)
    dist.destroy_process_group()
    print("OK")
""")


def test_zero_redundancy_optimizer_load_state_dict(tmp_path):
    """ZeroRedundancyOptimizer.load_state_dict assigns the inner optimizer's
    ``state[p]``: fastadam now takes it (it was silently ignored)."""
    script = tmp_path / "zero_load.py"
    script.write_text(ZERO_LOAD)
    _run_script_ok(script, tmp_path)


def test_load_state_dict_after_appending_a_parameter():
    """A parameter appended before load_state_dict is part of the group the checkpoint
    is matched against (torch: the same)."""
    data = _data(4)
    m, o, mt, ot = _pair("Adam", dict(lr=0.05), n_layers=2)
    for batch in data[:2]:
        _train(m, o, batch)
        _train(mt, ot, batch)
    extra, extra_t = (torch.nn.Parameter(torch.ones(5, dtype=torch.float64)) for _ in range(2))
    o.param_groups[0]["params"].append(extra)
    ot.param_groups[0]["params"].append(extra_t)
    sd = ot.state_dict()
    o.load_state_dict(sd)
    ot.load_state_dict(sd)
    for batch in data[2:]:
        _train(m, o, batch)
        _train(mt, ot, batch)
        _same(m, o, mt, ot)
