"""fastadam.torch's gradient-list calls: a run of parameters whose gradients are separate
tensors (fresh from autograd after ``zero_grad()``) stepped in one kernel call that reads
each gradient where it is (``fastadam/torch/step.py``: ``_GradList``;
``fastadam/kernels/_blocked.py``: ``gradlist_loop``).

The reference is the same optimizer on a copy of the parameters with every gradient
bound to the flat buffer (``zero_grad(set_to_none=False)``, one plain kernel call per
run): the same rule on the same values, so the bits must be equal.  Each test also
checks that the gradient-list form ran (a test that cannot tell the paths apart could
not fail), for every optimizer and variant, float32 and float64, with gradients fresh,
bound, None, strided (copied), big (their own call) and with parameters at different
step counts (several runs).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastadam.torch as ft  # noqa: E402
from fastadam.torch import step as S  # noqa: E402

SHAPES = [(3, 5), (40,), (7, 9, 2), (1,), (0,), (33, 17), (256,), (5,)]

CASES = [
    ("Adam", {}),
    ("Adam", {"amsgrad": True, "weight_decay": 0.1}),
    ("AdamW", {}),
    ("RMSprop", {}),
    ("RMSprop", {"centered": True, "momentum": 0.9}),
    ("SGD", {"momentum": 0.9, "nesterov": True}),
    ("SGD", {}),
    ("Adagrad", {"lr_decay": 0.01}),
    ("Adadelta", {}),
    ("NAdam", {}),
    ("Adamax", {}),
]


def _grads(k, dtype):
    g = torch.Generator().manual_seed(100 + k)
    return [torch.randn(s, generator=g, dtype=dtype) * 0.1 for s in SHAPES]


def _pair(name, kw, dtype):
    g = torch.Generator().manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for s in SHAPES]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    cls = getattr(ft, name)
    return a, cls(a, lr=1e-2, **kw), b, cls(b, lr=1e-2, **kw)


class _Spy:
    """Counts the kernel calls of the gradient-list form."""

    def __init__(self, monkeypatch):
        self.calls = 0
        call = S._StepMixin._call

        def spy(opt, b, kname, arrays, sc, gradlist=False):
            self.calls += bool(gradlist)
            return call(opt, b, kname, arrays, sc, gradlist)
        monkeypatch.setattr(S._StepMixin, "_call", spy)


def _bound_step(params, opt, grads):
    """The reference: every gradient bound to the flat buffer (``None`` stays None)."""
    opt.zero_grad(set_to_none=False)
    for p, g in zip(params, grads):
        if g is None:
            p.grad = None
        elif p.grad is None:          # (bound again by the next zero_grad)
            p.grad = g.clone()
        else:
            p.grad.copy_(g)
    opt.step()


def _assert_same(a, oa, b, ob):
    for i, (x, y) in enumerate(zip(a, b)):
        assert torch.equal(x.detach(), y.detach()), i
        sa, sb = oa.state[x], ob.state[y]
        assert sa.keys() == sb.keys(), i
        for key in sa:
            assert torch.equal(torch.as_tensor(sa[key]), torch.as_tensor(sb[key])), (i, key)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name,kw", CASES)
def test_fresh_gradients_give_the_bits_of_bound_ones(name, kw, dtype, monkeypatch):
    spy = _Spy(monkeypatch)
    a, oa, b, ob = _pair(name, kw, dtype)
    for k in range(4):
        grads = _grads(k, dtype)
        if k == 1:                    # parameter 2 skips a step: different step counts
            grads[2] = None
        oa.zero_grad()
        for p, g in zip(a, grads):
            p.grad = None if g is None else g.clone()
        oa.step()
        _bound_step(b, ob, grads)
    _assert_same(a, oa, b, ob)
    assert spy.calls >= 4


@pytest.mark.parametrize("name,kw", [CASES[0], CASES[4], CASES[5]])
def test_mixed_gradients_in_one_run(name, kw, monkeypatch):
    """Bound, fresh, None, strided (copied into the flat buffer, then read there) and
    negative-bit (copied) gradients side by side; a big gradient (here: over lowered
    limits, _GRADLIST_MAX_BYTES and _IN_PLACE_MIN) is a call of its own."""
    monkeypatch.setattr(S, "_GRADLIST_MAX_BYTES", 200 * 4)
    monkeypatch.setattr(S, "_IN_PLACE_MIN", 200)
    spy = _Spy(monkeypatch)
    a, oa, b, ob = _pair(name, kw, torch.float32)
    for k in range(4):
        grads = _grads(k, torch.float32)
        grads[3] = None if k == 2 else grads[3]
        oa.zero_grad(set_to_none=False)           # all bound ...
        for i, (p, g) in enumerate(zip(a, grads)):
            if g is None:
                p.grad = None
            elif i == 0:                          # ... but a strided one (copied)
                p.grad = g.t().contiguous().t()
            elif i == 5 and k % 2:                # a fresh one with the negative bit set
                p.grad = torch._neg_view(-g)      # (a lazy negation: copied, not read)
                assert p.grad.is_neg()
            elif i in (1, 2, 6):                  # fresh ones (6: 256 > 200, its own call)
                p.grad = g.clone()
            elif p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)
        oa.step()
        _bound_step(b, ob, grads)
    _assert_same(a, oa, b, ob)
    assert spy.calls >= 4


def test_same_bits_as_the_copying_path(monkeypatch):
    """With the gradient-list form switched off, small fresh gradients are copied into
    the flat buffer first (the path before it): the same bits."""
    a, oa, b, ob = _pair("Adam", {}, torch.float32)
    for bucket in ob._buckets:                                         # this one only
        monkeypatch.setattr(bucket, "gradlist", False)
    spy = _Spy(monkeypatch)
    for k in range(3):
        grads = _grads(k, torch.float32)
        for p, q, g in zip(a, b, grads):
            p.grad, q.grad = g.clone(), g.clone()
        oa.step()
        n = spy.calls
        ob.step()
        assert spy.calls == n                     # the copying path: no gradient list
    assert spy.calls >= 3
    _assert_same(a, oa, b, ob)


def test_against_torch_float64():
    """A model's worth of small fresh gradients against torch.optim.Adam (for-loop)."""
    g = torch.Generator().manual_seed(1)
    a = [torch.nn.Parameter(torch.randn(s, generator=g, dtype=torch.float64)) for s in SHAPES]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    oa = ft.Adam(a, lr=1e-2, weight_decay=0.01)
    ob = torch.optim.Adam(b, lr=1e-2, weight_decay=0.01, foreach=False)
    for k in range(5):
        for x, y, gr in zip(a, b, _grads(k, torch.float64)):
            x.grad, y.grad = gr.clone(), gr.clone()
        oa.step()
        ob.step()
    for x, y in zip(a, b):
        torch.testing.assert_close(x.detach(), y.detach(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("bad", ["shape", "dtype"])
def test_bad_gradient_in_a_list_refused_before_anything_changes(bad, monkeypatch):
    spy = _Spy(monkeypatch)
    a, oa, _, _ = _pair("Adam", {}, torch.float32)
    for p, g in zip(a, _grads(0, torch.float32)):
        p.grad = g
    oa.step()
    before = [p.detach().clone() for p in a]
    state = [{k: torch.as_tensor(v).clone() for k, v in oa.state[p].items()} for p in a]
    for p, g in zip(a, _grads(1, torch.float32)):
        p.grad = g
    # (torch's .grad setter checks only at assignment)
    a[5].grad.data = (torch.zeros(a[5].numel()) if bad == "shape"
                      else torch.zeros(a[5].shape, dtype=torch.float64))
    n = spy.calls
    with pytest.raises(ValueError, match="parameter 5"):
        oa.step()
    assert spy.calls == n
    for p, x, st in zip(a, before, state):
        assert torch.equal(p.detach(), x)
        for k, v in st.items():
            assert torch.equal(torch.as_tensor(oa.state[p][k]), v)
