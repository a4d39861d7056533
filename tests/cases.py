"""The table of optimizer configurations every parity test runs over.

One :class:`Case` per (optimizer, option combination).  ``run_functional``
drives :mod:`fastadam.functional` generically from a case, and
``torch_optimizer`` builds the matching torch.optim optimizer (for-loop
implementation) for the torch parity tests.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

import fastadam.functional as F

SIZES = (0, 1, 3, 4, 5, 15, 16, 17, 511, 512, 513, 100003)


@dataclass
class Case:
    opt: str
    options: dict
    init: dict = field(default_factory=dict)   # state fill values other than 0

    @property
    def id(self):
        return self.opt + "-" + "-".join(f"{k}={v}" for k, v in self.options.items())

    def states(self):
        o = self.options
        if self.opt == "adam":
            s = ["exp_avg", "exp_avg_sq"]
            return s + (["max_exp_avg_sq"] if o.get("amsgrad") else [])
        if self.opt == "rmsprop":
            s = ["square_avg"]
            if o.get("momentum", 0) > 0:
                s.append("momentum_buffer")
            if o.get("centered"):
                s.append("grad_avg")
            return s
        if self.opt == "adagrad":
            return ["sum"]
        if self.opt == "sgd":
            return ["momentum_buffer"] if o.get("momentum", 0) != 0 else []
        if self.opt == "adadelta":
            return ["square_avg", "acc_delta"]
        if self.opt == "nadam":
            return ["exp_avg", "exp_avg_sq"]
        if self.opt == "adamax":
            return ["exp_avg", "exp_inf"]
        raise KeyError(self.opt)

    def has_step(self):
        return self.opt in ("adam", "adagrad", "nadam", "adamax")


def _grid(**axes):
    keys = list(axes)
    for values in itertools.product(*(axes[k] for k in keys)):
        yield dict(zip(keys, values))


def all_cases():
    out = []
    for o in _grid(amsgrad=[False, True], maximize=[False, True], weight_decay=[0.0, 0.1],
                   decoupled_weight_decay=[False, True]):
        out.append(Case("adam", dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, **o)))
    for o in _grid(centered=[False, True], momentum=[0.0, 0.9], maximize=[False, True],
                   weight_decay=[0.0, 0.1]):
        out.append(Case("rmsprop", dict(lr=1e-2, alpha=0.99, eps=1e-8, **o)))
    for o in _grid(lr_decay=[0.0, 0.01], weight_decay=[0.0, 0.1], maximize=[False, True],
                   initial_accumulator_value=[0.0, 0.1]):
        iav = o.pop("initial_accumulator_value")
        out.append(Case("adagrad", dict(lr=1e-2, eps=1e-10, **o), init={"sum": iav}))
    for o in _grid(momentum=[0.0, 0.9], dampening=[0.0, 0.5], nesterov=[False, True],
                   weight_decay=[0.0, 0.1], maximize=[False, True]):
        if o["nesterov"] and (o["momentum"] == 0 or o["dampening"] != 0):
            continue
        if o["momentum"] == 0 and o["dampening"] != 0:
            continue
        out.append(Case("sgd", dict(lr=1e-2, **o)))
    for o in _grid(weight_decay=[0.0, 0.1], maximize=[False, True]):
        out.append(Case("adadelta", dict(lr=1.0, rho=0.9, eps=1e-6, **o)))
    for o in _grid(weight_decay=[0.0, 0.1], decoupled_weight_decay=[False, True],
                   maximize=[False, True], momentum_decay=[4e-3, 0.1]):
        out.append(Case("nadam", dict(lr=2e-3, beta1=0.9, beta2=0.999, eps=1e-8, **o)))
    for o in _grid(weight_decay=[0.0, 0.1], maximize=[False, True]):
        out.append(Case("adamax", dict(lr=2e-3, beta1=0.9, beta2=0.999, eps=1e-8, **o)))
    return out


CASES = all_cases()
DEFAULT_CASES = [next(c for c in CASES if c.opt == name)
                 for name in ("adam", "rmsprop", "adagrad", "sgd", "adadelta", "nadam", "adamax")]


def make_state(case, p):
    return {s: np.full_like(p, case.init.get(s, 0.0)) for s in case.states()}


def functional_step(case, p, g, states, step, backend, mu_product=1.0):
    """One functional step from a case; returns the new NAdam mu_product (else None)."""
    fn = getattr(F, case.opt + "_")
    kw = dict(case.options)
    kw.update(states)
    if case.has_step():
        kw["step"] = step
    if case.opt == "sgd":
        kw["first_step"] = step == 1
    if case.opt == "nadam":
        kw["mu_product"] = mu_product
    return fn(p, g, backend=backend, **kw)


def problem(n, dtype, seed=0, steps=20):
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(n).astype(dtype)
    grads = [rng.standard_normal(n).astype(dtype) for _ in range(steps)]
    return p, grads


def run_functional(case, backend, n, dtype, steps=20, seed=0):
    """Run ``steps`` steps; return (param, states)."""
    p, grads = problem(n, dtype, seed, steps)
    st = make_state(case, p)
    mp = 1.0
    for t, g in enumerate(grads, start=1):
        r = functional_step(case, p, g, st, t, backend, mp)
        if case.opt == "nadam":
            mp = r
    return p, st


# --- torch.optim mirror ---------------------------------------------------------------

def torch_optimizer(case, params):
    import torch
    o = dict(case.options)
    if case.opt in ("adam", "nadam", "adamax"):
        o["betas"] = (o.pop("beta1"), o.pop("beta2"))
    cls = {"adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop,
           "adagrad": torch.optim.Adagrad, "sgd": torch.optim.SGD,
           "adadelta": torch.optim.Adadelta, "nadam": torch.optim.NAdam,
           "adamax": torch.optim.Adamax}[case.opt]
    if case.opt == "adagrad":
        o["initial_accumulator_value"] = case.init.get("sum", 0.0)
    return cls(params, foreach=False, **o)


def rel_err(a, b):
    """max |a - b| / max(|b|): the norm-wise relative error (0 for empty arrays)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if b.size == 0:
        return 0.0
    scale = max(np.max(np.abs(b)), 1e-300)
    return float(np.max(np.abs(a - b)) / scale)


#: Adam options that pick each of the reduced-precision kernels' loop copies: none (the
#: plain copy), maximize (gsign -1), L2 decay (l2 != 0) and AdamW's decoupled decay.
LOOP_COPY_OPTIONS = (dict(), dict(maximize=True), dict(weight_decay=0.1),
                     dict(weight_decay=0.1, decoupled_weight_decay=True))


def adam_kernel_scalars(opts, dtype=np.float32):
    """The kernel scalars (:func:`fastadam._scalars.adam`, cast to ``dtype``) of an Adam
    step 5 with lr 1e-2 and the given options (see :data:`LOOP_COPY_OPTIONS`)."""
    from fastadam import _scalars
    hp = dict(step=5, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
              decoupled_weight_decay=False, amsgrad=False, maximize=False)
    hp.update(opts)
    return _scalars.adam(np.dtype(dtype), **hp)[1]


def loop_copy_problem(n, grad_dtype=np.float32):
    """``(p, g, m, v)`` for the loop-copy tests: float32 parameters and moments (``v``
    consistent with ``m``), gradient magnitudes spread over e**-8 .. e**2, in
    ``grad_dtype``."""
    f = np.float32
    rng = np.random.default_rng(n)
    p = rng.standard_normal(n).astype(f)
    g = (rng.standard_normal(n) * np.exp(rng.uniform(-8, 2, n))).astype(grad_dtype)
    m = (rng.standard_normal(n) * 0.1).astype(f)
    v = (m.astype(np.float64) ** 2 * rng.uniform(1, 9, n)).astype(f)
    return p, g, m, v


class NoBind:
    """A backend seen without ``bind`` / ``bind_state``: the façade then takes its general
    (unbound, uncached) route, the reference its bound routes are compared with."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        if name in ("bind", "bind_state"):
            raise AttributeError(name)
        return getattr(self._inner, name)


def assert_same_optimizer(o1, o2, msg=""):
    """The two façade optimizers hold the same bits: every flat parameter buffer (the
    live parameters) and every state array."""
    for gi, (fp1, fp2) in enumerate(zip(o1.flat, o2.flat)):
        for b1, b2 in zip(fp1.buffers, fp2.buffers):
            np.testing.assert_array_equal(b1.data.view(np.uint8), b2.data.view(np.uint8),
                                          err_msg=f"{msg} group {gi} {b1.dtype} params")
            st1, st2 = o1.state[gi][str(b1.dtype)], o2.state[gi][str(b2.dtype)]
            assert st1.keys() == st2.keys(), msg
            for k, v in st1.items():
                if isinstance(v, np.ndarray):
                    np.testing.assert_array_equal(v.view(np.uint8), st2[k].view(np.uint8),
                                                  err_msg=f"{msg} group {gi} {k}")
                else:
                    assert v == st2[k], (msg, gi, k)
