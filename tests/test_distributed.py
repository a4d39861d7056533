"""fastadam.torch inside torch.distributed's engines, with real processes.

Two ranks are started with ``torch.multiprocessing`` (spawn), joined over gloo on
127.0.0.1, and run the same training twice: once with a fastadam.torch optimizer and
once with torch.optim's for-loop implementation (``foreach=False``), in float64.  The
parent process compares the results, and also checks the torch.optim runs against one
process stepping on the global batches (so the harness itself is tested).  A single
spawn runs every configuration of every engine (DDP, ZeRO-1, FSDP), each in a try block
whose traceback goes back to the parent: process start-up, not training, is the cost.
The example script is launched once with torchrun.

Every blocking call is bounded: ``init_process_group(timeout=60 s)``, the parent joins
the ranks with a deadline and kills stragglers, the torchrun launch has a timeout.
Deselect with ``-m "not distributed"``.
"""

from __future__ import annotations

import copy
import datetime
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest

from cases import rel_err

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.torch,
    pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                       reason="torch.distributed with gloo is not available"),
]

WORLD = 2
STEPS = 15
RESUME_AT = 8          # ZeRO checkpoint: consolidated after this many steps
RTOL = 1e-10           # float64, norm-wise relative (rel_err)
SPAWN_DEADLINE_S = 120  # only reached on a hang: the file normally takes well under 90 s
REPO = Path(__file__).resolve().parents[1]

# optimizer name -> constructor keywords (torch.optim's names; options off the defaults so
# that a hyperparameter lost on the way through an engine shows up)
OPT_CONFIGS = {
    "Adam": dict(lr=1e-2, betas=(0.8, 0.99), weight_decay=1e-2, amsgrad=True),
    "AdamW": dict(lr=1e-2, weight_decay=0.1),
    "RMSprop": dict(lr=1e-2, momentum=0.9, centered=True, weight_decay=1e-2),
    "Adagrad": dict(lr=0.1, lr_decay=1e-2, initial_accumulator_value=0.1, weight_decay=1e-2),
}

# DDP configurations: (gradient_as_bucket_view, zero_grad set_to_none, optimizer built first)
DDP_VARIANTS = [
    dict(bucket_view=False, set_to_none=True, opt_first=False),
    dict(bucket_view=False, set_to_none=False, opt_first=False),
    dict(bucket_view=True, set_to_none=True, opt_first=False),
    dict(bucket_view=True, set_to_none=False, opt_first=False),
    dict(bucket_view=True, set_to_none=False, opt_first=True),
    dict(bucket_view=False, set_to_none=True, opt_first=True),
]

# groups=True: two param groups (weights at a higher lr) and a StepLR schedule, which
# ZeroRedundancyOptimizer forwards to each rank's inner optimizer
ZERO_VARIANTS = [
    dict(opt="Adam", bucket_view=False, groups=False),
    dict(opt="Adam", bucket_view=True, groups=False),
    dict(opt="AdamW", bucket_view=False, groups=True),
]

FSDP_VARIANTS = ["fsdp2", "fsdp1", "fsdp1-orig-params", "fsdp1-forward-first"]

# fully_shard (FSDP2) parameters are DTensors: fastadam.torch refuses them with a clear
# TypeError (see docs/distributed.md), checked by test_fsdp2_dtensor_params_are_refused.
UNSUPPORTED_FSDP = ("fsdp2",)


def _vid(v):
    return "-".join(f"{k}={val}" for k, val in v.items())


# --- helpers shared by parent and ranks -----------------------------------------------

def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model(seed=0):
    torch.manual_seed(seed)
    nn = torch.nn
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 8), nn.Tanh(),
                         nn.Linear(8, 3)).double()


def _global_batch(step, n=8):
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(n, 6, generator=g, dtype=torch.float64)
    y = torch.randn(n, 3, generator=g, dtype=torch.float64)
    return x, y


def _local_batch(step, rank, world):
    x, y = _global_batch(step)
    return x[rank::world], y[rank::world]


def _optimizer(impl, name, params, **kw):
    if impl == "torch":
        return getattr(torch.optim, name)(params, foreach=False, **kw)
    import fastadam.torch as fat
    return getattr(fat, name)(params, **kw)


def _optimizer_class(impl, name):
    if impl == "torch":
        import functools
        cls = getattr(torch.optim, name)
        return type(name, (cls,), {"__init__": functools.partialmethod(cls.__init__,
                                                                       foreach=False)})
    import fastadam.torch as fat
    return getattr(fat, name)


def _snapshot(params):
    return [p.detach().clone() for p in params]


def _init_rank(rank, world, port):
    # one compute thread per rank: two ranks share this 2-core machine
    torch.set_num_threads(1)
    if os.path.exists("/sys/class/net/lo"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=60))


def _run_cases(rank, world, port, out, tag, cases):
    """Rank body: run each (case id, callable) and save {id: result or error} to a file."""
    _init_rank(rank, world, port)
    try:
        try:
            import numba
            numba.set_num_threads(1)
        except Exception:  # noqa: BLE001 - numba is optional for torch-only runs
            pass
        results = {"_seconds": {}}
        for cid, fn in cases:
            t0 = time.perf_counter()
            try:
                results[cid] = fn(rank, world)
            except Exception:  # noqa: BLE001 - reported to the parent, which fails the test
                results[cid] = {"error": traceback.format_exc()}
            dist.barrier()
            results["_seconds"][cid] = time.perf_counter() - t0
        torch.save(results, os.path.join(out, f"{tag}_rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _spawn(target, out, tag):
    """Start WORLD ranks running ``target(rank, WORLD, port, out)``; bounded; load results."""
    import torch.multiprocessing as mp
    port = _free_port()
    ctx = mp.start_processes(target, args=(WORLD, port, str(out)), nprocs=WORLD,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + SPAWN_DEADLINE_S
    try:
        while not ctx.join(timeout=max(0.1, min(5.0, deadline - time.monotonic()))):
            if time.monotonic() > deadline:
                pytest.fail(f"{tag}: ranks did not finish within {SPAWN_DEADLINE_S} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
            p.join(5)
    return [torch.load(os.path.join(out, f"{tag}_rank{r}.pt"), weights_only=False)
            for r in range(WORLD)]


def _check_ok(res, what):
    if "error" in res:
        pytest.fail(f"{what} raised in a rank:\n{res['error']}")


def _assert_close(a, b, what):
    assert len(a) == len(b), what
    for i, (x, y) in enumerate(zip(a, b)):
        assert x.shape == y.shape, (what, i, x.shape, y.shape)
        err = rel_err(x.numpy(), y.numpy())
        assert err <= RTOL, f"{what}[{i}]: relative error {err:.3e} > {RTOL}"


def _assert_state_close(sd, ref, what):
    """Compare two torch-format optimizer state dicts (state by param index)."""
    assert set(sd["state"]) == set(ref["state"]), (what, set(sd["state"]), set(ref["state"]))
    for idx, rst in ref["state"].items():
        st = sd["state"][idx]
        assert set(st) == set(rst), f"{what} param {idx}: keys {set(st)} != {set(rst)}"
        for k, rv in rst.items():
            v = st[k]
            if torch.is_tensor(rv) and rv.dim() > 0:
                err = rel_err(v.detach().double().numpy(), rv.detach().double().numpy())
                assert err <= RTOL, f"{what} param {idx} {k}: relative error {err:.3e}"
            else:
                assert float(v) == float(rv), f"{what} param {idx} {k}: {v} != {rv}"
    assert len(sd["param_groups"]) == len(ref["param_groups"]), what
    for g, rg in zip(sd["param_groups"], ref["param_groups"]):
        for k, rv in rg.items():
            if k not in ("params", "foreach", "fused", "capturable", "differentiable"):
                assert g.get(k) == rv, f"{what} param_group {k}: {g.get(k)} != {rv}"


def _param_spec(params, groups):
    """The optimizer's ``params``: a list, or two groups (weights at 3x the lr)."""
    params = list(params)
    if not groups:
        return params
    return [{"params": [p for p in params if p.dim() > 1], "lr": 3e-2},
            {"params": [p for p in params if p.dim() == 1]}]


def _schedule(opt, groups):
    return torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5) if groups else None


def _single_process_run(impl, name, kw, steps, model=None, opt=None, start=0, groups=False,
                        sched=None):
    """Single process on the global batches: the ground truth of ZeRO and DDP."""
    if model is None:
        model = _model()
    if opt is None:
        opt = _optimizer(impl, name, _param_spec(model.parameters(), groups), **kw)
        sched = _schedule(opt, groups)
    for step in range(start, steps):
        x, y = _global_batch(step)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        if sched is not None:
            sched.step()
    return model, opt


# --- one spawn runs every engine's cases (process start-up dominates the cost) -----------

def _worker(rank, world, port, out):
    _run_cases(rank, world, port, out, "dist",
               [("ddp-" + c, f) for c, f in _ddp_cases()]
               + [("zero-" + c, f) for c, f in _zero_cases()]
               + [("fsdp-" + c, f) for c, f in _fsdp_cases()])


@pytest.fixture(scope="module")
def dist_results(tmp_path_factory):
    return _spawn(_worker, tmp_path_factory.mktemp("dist"), "dist")


def _prefixed(results, prefix):
    return [{k[len(prefix):]: v for k, v in r.items() if k.startswith(prefix)} for r in results]


@pytest.fixture(scope="module")
def ddp_results(dist_results):
    return _prefixed(dist_results, "ddp-")


@pytest.fixture(scope="module")
def zero_results(dist_results):
    return _prefixed(dist_results, "zero-")


@pytest.fixture(scope="module")
def fsdp_results(dist_results):
    return _prefixed(dist_results, "fsdp-")


# --- DDP ---------------------------------------------------------------------------------

def _ddp_train(rank, world, impl, name, bucket_view, set_to_none, opt_first):
    from torch.nn.parallel import DistributedDataParallel as DDP
    model = _model()
    kw = OPT_CONFIGS[name]
    ddp_kw = dict(gradient_as_bucket_view=bucket_view, bucket_cap_mb=0.0005)  # several buckets
    if opt_first:
        opt = _optimizer(impl, name, model.parameters(), **kw)
        ddp = DDP(model, **ddp_kw)
    else:
        ddp = DDP(model, **ddp_kw)
        opt = _optimizer(impl, name, ddp.parameters(), **kw)
    for step in range(STEPS):
        x, y = _local_batch(step, rank, world)
        opt.zero_grad(set_to_none=set_to_none)
        torch.nn.functional.mse_loss(ddp(x), y).backward()
        opt.step()
    return {"params": _snapshot(model.parameters()), "state": copy.deepcopy(opt.state_dict())}


def _ddp_cases():
    import functools
    out = []
    for name in OPT_CONFIGS:
        for v in DDP_VARIANTS:
            for impl in ("torch", "fastadam"):
                out.append((f"{impl}-{name}-{_vid(v)}",
                            functools.partial(_ddp_train, impl=impl, name=name, **v)))
    return out


@pytest.mark.parametrize("variant", DDP_VARIANTS, ids=_vid)
@pytest.mark.parametrize("name", list(OPT_CONFIGS))
def test_ddp_fastadam_equals_ddp_torch_optim(ddp_results, name, variant):
    for rank, res in enumerate(ddp_results):
        ref = res[f"torch-{name}-{_vid(variant)}"]
        got = res[f"fastadam-{name}-{_vid(variant)}"]
        _check_ok(ref, f"DDP + torch.optim.{name} (rank {rank})")
        _check_ok(got, f"DDP + fastadam.torch.{name} (rank {rank})")
        _assert_close(got["params"], ref["params"], f"rank {rank} params")
        _assert_state_close(got["state"], ref["state"], f"rank {rank} state")
    # the ranks agree with each other (DDP kept them in sync)
    _assert_close(ddp_results[1][f"fastadam-{name}-{_vid(variant)}"]["params"],
                  ddp_results[0][f"fastadam-{name}-{_vid(variant)}"]["params"], "rank 1 vs 0")


@pytest.mark.parametrize("name", list(OPT_CONFIGS))
def test_ddp_harness_matches_single_process(ddp_results, name):
    """The reference itself: DDP + torch.optim equals one process on the global batches."""
    v = DDP_VARIANTS[0]
    ref = ddp_results[0][f"torch-{name}-{_vid(v)}"]
    _check_ok(ref, f"DDP + torch.optim.{name}")
    model, _ = _single_process_run("torch", name, OPT_CONFIGS[name], STEPS)
    _assert_close(ref["params"], _snapshot(model.parameters()), "DDP vs single process")


# --- ZeRO-1 (ZeroRedundancyOptimizer) -------------------------------------------------

def _zero_train(rank, world, impl, opt, bucket_view, groups):
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP
    model = _model()
    ddp = DDP(model)
    zero = ZeroRedundancyOptimizer(_param_spec(ddp.parameters(), groups),
                                   optimizer_class=_optimizer_class(impl, opt),
                                   parameters_as_bucket_view=bucket_view, **OPT_CONFIGS[opt])
    sched = _schedule(zero, groups)
    ckpt = None
    for step in range(STEPS):
        x, y = _local_batch(step, rank, world)
        zero.zero_grad()
        torch.nn.functional.mse_loss(ddp(x), y).backward()
        zero.step()
        if sched is not None:
            sched.step()
        if step + 1 == RESUME_AT:
            zero.consolidate_state_dict(to=0)
            if rank == 0:
                ckpt = {"params": _snapshot(model.parameters()),
                        "optim": copy.deepcopy(zero.state_dict()),
                        "sched": sched.state_dict() if sched is not None else None}
    local = zero.optim.state_dict()
    local_numel = sum(t.numel() for st in local["state"].values() for t in st.values()
                      if torch.is_tensor(t) and t.dim() > 0)
    zero.consolidate_state_dict(to=0)
    final = copy.deepcopy(zero.state_dict()) if rank == 0 else None
    # with parameters_as_bucket_view, fastadam steps ZeRO's bucket itself (no copy)
    buckets = {t.untyped_storage().data_ptr() for per_device in zero._buckets
               for t in per_device}
    adopted = impl == "fastadam" and bucket_view and all(
        b.data.untyped_storage().data_ptr() in buckets for b in zero.optim._buckets)
    return {"params": _snapshot(model.parameters()), "ckpt": ckpt, "final": final,
            "adopted": adopted, "local_state_numel": local_numel,
            "local_param_numel": sum(p.numel() for g in zero.optim.param_groups
                                     for p in g["params"])}


def _zero_cases():
    import functools
    return [(f"{impl}-{_vid(v)}", functools.partial(_zero_train, impl=impl, **v))
            for v in ZERO_VARIANTS for impl in ("torch", "fastadam")]


def _check_zero_against_single_process(zero_results, variant, impl):
    name = variant["opt"]
    model, opt = _single_process_run("torch", name, OPT_CONFIGS[name], STEPS,
                                     groups=variant["groups"])
    ref_params = _snapshot(model.parameters())
    for rank, res in enumerate(zero_results):
        got = res[f"{impl}-{_vid(variant)}"]
        _check_ok(got, f"ZeRO + {impl}.{name} (rank {rank})")
        _assert_close(got["params"], ref_params, f"{impl} rank {rank} params")
    _assert_state_close(zero_results[0][f"{impl}-{_vid(variant)}"]["final"],
                        opt.state_dict(), f"{impl} consolidated state")


@pytest.mark.parametrize("variant", ZERO_VARIANTS, ids=_vid)
def test_zero_fastadam_equals_single_process_torch_optim(zero_results, variant):
    _check_zero_against_single_process(zero_results, variant, "fastadam")


@pytest.mark.parametrize("variant", ZERO_VARIANTS, ids=_vid)
def test_zero_harness_matches_single_process(zero_results, variant):
    """The reference itself: ZeRO + torch.optim equals one process on the global batches."""
    _check_zero_against_single_process(zero_results, variant, "torch")


@pytest.mark.parametrize("variant", ZERO_VARIANTS, ids=_vid)
def test_zero_state_is_sharded(zero_results, variant):
    """Each rank's fastadam optimizer holds state for its own shard only."""
    total = sum(p.numel() for p in _model().parameters())
    res = [r[f"fastadam-{_vid(variant)}"] for r in zero_results]
    for r in res:
        _check_ok(r, "ZeRO + fastadam")
        assert r["adopted"] == variant["bucket_view"]   # ZeRO's bucket is the flat buffer
    assert sum(r["local_param_numel"] for r in res) == total
    n_states = 3 if OPT_CONFIGS[variant["opt"]].get("amsgrad") else 2
    for r in res:
        assert 0 < r["local_param_numel"] < total
        assert r["local_state_numel"] == n_states * r["local_param_numel"]


@pytest.mark.parametrize("variant", ZERO_VARIANTS, ids=_vid)
def test_zero_consolidated_checkpoint_resumes_in_one_process(zero_results, variant):
    import fastadam.torch as fat
    name = variant["opt"]
    run = zero_results[0][f"fastadam-{_vid(variant)}"]
    _check_ok(run, "ZeRO + fastadam")
    ckpt = run["ckpt"]
    model = _model(seed=123)       # different init: everything must come from the checkpoint
    with torch.no_grad():
        for p, v in zip(model.parameters(), ckpt["params"]):
            p.copy_(v)
    opt = getattr(fat, name)(_param_spec(model.parameters(), variant["groups"]),
                             **OPT_CONFIGS[name])
    opt.load_state_dict(ckpt["optim"])
    sched = _schedule(opt, variant["groups"])
    if sched is not None:
        sched.load_state_dict(ckpt["sched"])
    model, opt = _single_process_run("fastadam", name, None, STEPS, model=model, opt=opt,
                                      start=RESUME_AT, sched=sched)
    _assert_close(_snapshot(model.parameters()), run["params"], "resumed vs uninterrupted ZeRO")
    _assert_state_close(opt.state_dict(), run["final"], "resumed vs uninterrupted ZeRO state")


# --- FSDP ----------------------------------------------------------------------------------

def _local(t):
    """The rank-local tensor of a DTensor (FSDP2), else the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def _fsdp_train(rank, world, impl, kind, name="Adam"):
    model = _model()
    if kind == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        mesh = init_device_mesh("cpu", (world,))
        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer, mesh=mesh)
        wrapped = fully_shard(model, mesh=mesh)
    else:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        wrapped = FSDP(model, device_id=torch.device("cpu"),
                       use_orig_params=kind == "fsdp1-orig-params")
        if kind == "fsdp1-forward-first":   # FSDP's lazy init runs before the optimizer exists
            with torch.no_grad():
                wrapped(_local_batch(0, rank, world)[0])
    opt = _optimizer(impl, name, wrapped.parameters(), **OPT_CONFIGS[name])
    for step in range(STEPS):
        x, y = _local_batch(step, rank, world)
        opt.zero_grad()
        torch.nn.functional.mse_loss(wrapped(x), y).backward()
        opt.step()
    full = [v.full_tensor() if hasattr(v, "full_tensor") else v.detach().clone()
            for v in wrapped.state_dict().values()]        # collective for DTensors
    sd = opt.state_dict()
    state = {"state": {i: {k: (_local(v).detach().clone() if torch.is_tensor(v) else v)
                           for k, v in st.items()} for i, st in sd["state"].items()},
             "param_groups": copy.deepcopy(sd["param_groups"])}
    return {"full": full, "state": state}


def _fsdp_cases():
    import functools
    return [(f"{impl}-{kind}", functools.partial(_fsdp_train, impl=impl, kind=kind))
            for kind in FSDP_VARIANTS for impl in ("torch", "fastadam")]


@pytest.mark.parametrize("kind", [k for k in FSDP_VARIANTS if k not in UNSUPPORTED_FSDP])
def test_fsdp_fastadam_equals_fsdp_torch_optim(fsdp_results, kind):
    for rank, res in enumerate(fsdp_results):
        ref, got = res[f"torch-{kind}"], res[f"fastadam-{kind}"]
        _check_ok(ref, f"{kind} + torch.optim.Adam (rank {rank})")
        _check_ok(got, f"{kind} + fastadam.torch.Adam (rank {rank})")
        _assert_close(got["full"], ref["full"], f"rank {rank} full params")
        _assert_state_close(got["state"], ref["state"], f"rank {rank} local state")


def test_fsdp2_dtensor_params_are_refused(fsdp_results):
    """fully_shard's DTensor parameters: a TypeError naming DTensor, from the constructor."""
    for rank, res in enumerate(fsdp_results):
        _check_ok(res["torch-fsdp2"], f"fsdp2 + torch.optim.Adam (rank {rank})")
        err = res["fastadam-fsdp2"].get("error", "")
        assert "TypeError" in err and "DTensor" in err, err or "fastadam accepted DTensors"
        assert "_optimizer(" in err and "opt.step()" not in err, err   # raised on construction


@pytest.mark.parametrize("kind", FSDP_VARIANTS)
def test_fsdp_harness_matches_single_process(fsdp_results, kind):
    """The reference itself: FSDP + torch.optim equals one process on the global batches."""
    model, _ = _single_process_run("torch", "Adam", OPT_CONFIGS["Adam"], STEPS)
    single = [v.detach().clone() for v in model.state_dict().values()]
    for rank, res in enumerate(fsdp_results):
        ref = res[f"torch-{kind}"]
        _check_ok(ref, f"{kind} + torch.optim.Adam (rank {rank})")
        _assert_close(ref["full"], single, f"{kind} + torch.optim vs single process")


# --- the torchrun example ------------------------------------------------------------------

def test_torchrun_example_zero(tmp_path):
    """examples/distributed_train.py under torchrun (2 ranks, gloo): the script itself
    checks that the ranks agree bit for bit and that the loss went down; the consolidated
    ZeRO checkpoint it writes loads into a single-process fastadam.torch.Adam."""
    import fastadam.torch as fat
    script = REPO / "examples" / "distributed_train.py"
    ckpt = tmp_path / "ckpt.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    if os.path.exists("/sys/class/net/lo"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(WORLD),
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), str(script),
           "--mode", "zero", "--steps", "20", "--hidden", "64", "--save", str(ckpt)]
    for attempt in (1, 2):
        # own session: on a timeout the whole group (torchrun's agent and its ranks) is killed
        proc = subprocess.Popen(cmd, env=env, cwd=str(tmp_path), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"torchrun did not finish in 120 s:\n{out}\n{err}")
        # A rank that finished (the script printed its verdict, the checkpoint is written)
        # may still abort in gloo's teardown at interpreter exit ("terminate called without
        # an active exception": a gloo thread still joinable; about 1 run in 20 on a loaded
        # 2-core machine, pytorch/pytorch#179291): run it once more, then it must pass.
        exit_race = (proc.returncode != 0 and attempt == 1 and "ranks agree: True" in out
                     and "terminate called without an active exception" in err)
        if not exit_race:
            break
        cmd[cmd.index("--master-port") + 1] = str(_free_port())
    assert proc.returncode == 0, out + err
    assert "ranks agree: True" in out, out
    sd = torch.load(ckpt, weights_only=False)
    sys.path.insert(0, str(script.parent))
    try:
        import distributed_train as ex
    finally:
        sys.path.remove(str(script.parent))
    model = ex.make_model(64)
    model.load_state_dict(sd["model"])
    opt = fat.Adam(model.parameters(), lr=1e-3)
    opt.load_state_dict(sd["optimizer"])
    n_params = sum(p.numel() for p in model.parameters())
    sd_state = opt.state_dict()["state"]
    assert sum(st["exp_avg"].numel() for st in sd_state.values()) == n_params
    assert all(float(st["step"]) == 20 for st in sd_state.values())
