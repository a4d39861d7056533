"""fastadam.torch's step fast paths give the bits of the checked path and still refuse bad
input before writing.

The fast paths (``fastadam/torch/step.py``, ``hparams.py``): the group's hyperparameters
taken from the cache while the group holds the very same immutable objects; the kernel
called through its compiled entry point with the scalars as Python floats; parameters
that advance together advanced with one update of the step counts.  The reference is
``fastadam.reference.adam_`` (plain NumPy, float32 arithmetic) on copies, and the
checked path is ``fastadam.functional.adam_`` (typed scalars, the backend's ``run``).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastadam.torch as ft  # noqa: E402
from fastadam import functional as F  # noqa: E402

SHAPES = [(64, 300), (300,), (130, 130), (7,)]     # big (in place) and small (copied)


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g)) for s in SHAPES]


def _grads(k):
    g = torch.Generator().manual_seed(100 + k)
    return [torch.randn(s, generator=g) * 0.1 for s in SHAPES]


def _functional_steps(p0, grads_per_step, lrs, skip):
    """The checked path on NumPy copies: one adam_ call per parameter and step."""
    ps = [p.detach().numpy().copy() for p in p0]
    ms = [np.zeros_like(p) for p in ps]
    vs = [np.zeros_like(p) for p in ps]
    steps = [0] * len(ps)
    for k, (gs, lr) in enumerate(zip(grads_per_step, lrs)):
        for i in range(len(ps)):
            if (k, i) in skip:
                continue
            steps[i] += 1
            F.adam_(ps[i].reshape(-1), gs[i].numpy().reshape(-1), ms[i].reshape(-1),
                    vs[i].reshape(-1), step=steps[i], lr=lr, beta1=0.9, beta2=0.999,
                    eps=1e-8, backend="numba")
    return ps, ms, vs


@pytest.mark.parametrize("regime", ["fresh", "bound", "mixed"])
def test_same_bits_as_the_checked_path(regime):
    params = _params()
    p0 = [p.detach().clone() for p in params]
    opt = ft.Adam(params, lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    nsteps = 6
    grads = [_grads(k) for k in range(nsteps)]
    skip = {(3, 1)} if regime == "mixed" else set()    # a None gradient at step 3
    lrs = []
    for k in range(nsteps):
        opt.zero_grad(set_to_none=regime == "fresh" or (regime == "mixed" and k % 2 == 0))
        for i, (p, g) in enumerate(zip(params, grads[k])):
            if (k, i) in skip:
                p.grad = None
            elif p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert len(set(lrs)) == 3                 # the scheduler's lr was taken at each step
    ps, ms, vs = _functional_steps(p0, grads, lrs, skip)
    for i, p in enumerate(params):
        st = opt.state[p]
        assert np.array_equal(p.detach().numpy(), ps[i]), i
        assert np.array_equal(st["exp_avg"].numpy(), ms[i]), i
        assert np.array_equal(st["exp_avg_sq"].numpy(), vs[i]), i
        assert float(st["step"]) == nsteps - sum(1 for k, j in skip if j == i)


def test_same_bits_as_torch_reference_float64():
    """The Python-float scalars are rounded to float64 buffers as dtype.type rounds them:
    against torch.optim.Adam (for-loop) to 1e-12 over steps with a changing lr."""
    g = torch.Generator().manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(s, generator=g, dtype=torch.float64)) for s in SHAPES]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    oa, ob = ft.Adam(a, lr=1e-2), torch.optim.Adam(b, lr=1e-2, foreach=False)
    for k in range(5):
        for o in (oa, ob):
            o.param_groups[0]["lr"] = 1e-2 / (k + 1)
        for x, y, gr in zip(a, b, _grads(k)):
            x.grad = gr.double()
            y.grad = gr.double()
        oa.step()
        ob.step()
    for x, y in zip(a, b):
        torch.testing.assert_close(x.detach(), y.detach(), rtol=1e-12, atol=1e-14)


def test_hyperparameter_edits_after_cached_steps_are_seen_and_checked():
    params = _params()
    opt = ft.Adam(params, lr=1e-3)
    for p, g in zip(params, _grads(0)):
        p.grad = g
    opt.step()
    opt.step()                                # cached: the same objects
    before = [p.detach().clone() for p in params]
    st = {k: v.clone() for k, v in opt.state[params[0]].items()}
    opt.param_groups[0]["lr"] = -1.0          # a new object: validated again
    with pytest.raises(ValueError, match="Invalid learning rate"):
        opt.step()
    opt.param_groups[0]["lr"] = 1e-3
    opt.param_groups[0]["betas"] = [0.9, 0.999]        # a list: never the identity check
    opt.step()
    opt.param_groups[0]["betas"][0] = 1.5     # an in-place edit of the list
    with pytest.raises(ValueError, match="beta"):
        opt.step()
    opt.param_groups[0]["betas"][0] = 0.9
    opt.param_groups[0]["amsgrad"] = 1        # equal to True, another type: checked again
    with pytest.raises(TypeError, match="amsgrad"):
        opt.step()
    assert float(opt.state[params[0]]["step"]) == 3.0      # refused before any change
    opt.param_groups[0]["amsgrad"] = True
    opt.step()
    assert "max_exp_avg_sq" in opt.state[params[0]]
    assert not torch.equal(params[0].detach(), before[0])
    assert float(st["step"]) == 2.0


@pytest.mark.parametrize("big", [True, False])
def test_bad_fresh_gradient_refused_before_anything_changes(big):
    params = _params()
    opt = ft.Adam(params, lr=1e-3)
    for k in range(2):                         # cached plans and entry points in place
        for p, g in zip(params, _grads(k)):
            p.grad = g
        opt.step()
    i = 0 if big else 1
    snap = [p.detach().clone() for p in params]
    state = [{k: v.clone() for k, v in opt.state[p].items()} for p in params]
    for p, g in zip(params, _grads(5)):
        p.grad = g
    bad = torch.zeros(params[i].shape)
    params[i].grad = bad
    bad.data = torch.zeros(params[i].numel() + 1)   # torch's setter checks only at assignment
    with pytest.raises(ValueError, match=f"gradient of parameter {i} .* has shape"):
        opt.step()
    bad.data = torch.zeros(params[i].shape, dtype=torch.float64)
    with pytest.raises(ValueError, match=f"gradient of parameter {i} .* dtype torch.float64"):
        opt.step()
    for p, s, st in zip(params, snap, state):
        assert torch.equal(p.detach(), s)
        for k, v in st.items():
            assert torch.equal(opt.state[p][k], v), k


@pytest.mark.parametrize("regime", ["fresh", "bound"])
@pytest.mark.parametrize("name,kw,key", [
    ("Adam", dict(betas=(0.4, 0.999)), "exp_avg"),
    ("NAdam", dict(betas=(0.4, 0.999)), "exp_avg"),
    ("Adamax", dict(betas=(0.4, 0.999)), "exp_avg"),
    ("RMSprop", dict(alpha=0.4, centered=True), "grad_avg"),
])
def test_lerp_branch_of_repeated_steps_is_torchs(name, kw, key, regime):
    """float32, a lerp weight of 0.6 (torch's second branch, ``end - (end - self) * (1 -
    w)``, with ``1 - w`` in float32): the lerped state after repeated steps, the cached
    path included, has torch's bits.  The state depends on the gradients only, so it
    must be equal however the parameters round."""
    torch.manual_seed(3)
    p0 = torch.randn(4096)
    a, b = torch.nn.Parameter(p0.clone()), torch.nn.Parameter(p0.clone())
    oa = getattr(ft, name)([a], lr=1e-2, **kw)
    ob = getattr(torch.optim, name)([b], lr=1e-2, foreach=False, **kw)
    for _ in range(5):
        g = torch.randn(4096)
        if regime == "fresh" or a.grad is None:
            a.grad = g.clone()
        else:
            a.grad.copy_(g)
        b.grad = g.clone()
        oa.step()
        ob.step()
        if regime == "bound":
            oa.zero_grad(set_to_none=False)
        assert torch.equal(oa.state[a][key], ob.state[b][key])


def test_bound_whole_buffer_call_follows_a_kernel_change():
    """The whole-buffer call with bound gradients keeps its compiled entry point between
    steps; switching ``amsgrad`` (another kernel) off and on again mid-run gives
    torch.optim's results at every step (float64, for-loop torch)."""
    g = torch.Generator().manual_seed(7)
    a = [torch.nn.Parameter(torch.randn(s, generator=g, dtype=torch.float64))
         for s in [(40, 3), (7,)]]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    oa = ft.Adam(a, lr=1e-2, amsgrad=True)      # (torch cannot turn it on mid-run: its
    ob = torch.optim.Adam(b, lr=1e-2, amsgrad=True, foreach=False)   # state lacks the max)
    for k in range(8):
        if k in (3, 6):
            for o in (oa, ob):
                o.param_groups[0]["amsgrad"] = k == 6
        grads = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in a]
        for p, q, gr in zip(a, b, grads):
            if p.grad is None:
                p.grad = gr.clone()
            else:
                p.grad.copy_(gr)                   # bound after the first zero_grad
            q.grad = gr.clone()
        oa.step()
        ob.step()
        oa.zero_grad(set_to_none=False)
        for x, y in zip(a, b):
            torch.testing.assert_close(x.detach(), y.detach(), rtol=1e-12, atol=1e-14)
    assert oa._buckets[0].whole is not None       # the direct call was taken
