"""The fast path of fastadam.functional: cached plans of checked array sets.

A repeated call on the same, unchanged arrays skips the array checks and numba's
dispatch (``fastadam/functional/_plans.py``).  Here: it gives the bits of the
checked path for every optimizer configuration; every change to an array a plan
was made for (resized, reshaped, replaced, dtype changed in place, made read-only,
strides changed, an ``id`` reused by an overlapping array) and every bad
hyperparameter is still refused before anything is written; plans keep no array
alive; the quick hyperparameter check accepts exactly what the full one accepts.
"""

from __future__ import annotations

import gc
import math
import warnings
import weakref

import numpy as np
import pytest

import fastadam.functional as F
from fastadam import _backends, _hparams
from fastadam.functional import _dense, _plans

from cases import CASES, DEFAULT_CASES, functional_step, make_state

HP = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8)


def _bits(a):
    return a.view(np.uint64 if a.dtype == np.float64 else np.uint32).copy()


def _run(case, backend, shape, dtype, steps, fresh_checks):
    """``steps`` steps of ``case`` on one set of arrays (the gradient rewritten in place
    each step); ``fresh_checks``: forget the plans before each call (the checked path)."""
    rng = np.random.default_rng(7)
    p = rng.standard_normal(shape).astype(dtype)
    g = np.empty_like(p)
    st = make_state(case, p)
    mp = 1.0
    for t in range(1, steps + 1):
        g[...] = rng.standard_normal(shape)
        if fresh_checks:
            _plans.clear()
        r = functional_step(case, p, g, st, t, backend, mp)
        if case.opt == "nadam":
            mp = r
    bound = any(pl.call is not None for pl in _plans._plans.values())
    return [_bits(p)] + [_bits(st[k]) for k in sorted(st)], bound


def _same_bits(case, backend, shape, dtype, steps=5):
    _plans.clear()
    checked, bound = _run(case, backend, shape, dtype, steps, True)
    assert not bound
    fast, bound = _run(case, backend, shape, dtype, steps, False)
    assert bound, "the fast path was not taken"
    for a, b in zip(checked, fast):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_fast_path_same_bits(case, backend):
    _same_bits(case, backend, (513,), np.float32)


@pytest.mark.parametrize("case", DEFAULT_CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("shape", [(100003,), (37, 3, 5)], ids=["parallel", "3d"])
def test_fast_path_same_bits_sizes(case, backend, dtype, shape):
    _same_bits(case, backend, shape, dtype, steps=3)


def _adam_arrays(n=1024, dtype=np.float32):
    rng = np.random.default_rng(3)
    p = rng.standard_normal(n).astype(dtype)
    g = rng.standard_normal(n).astype(dtype)
    return p, g, np.zeros_like(p), np.zeros_like(p)


def _warm(arrays, backend="auto", steps=3):
    """Steps that leave a bound plan for ``arrays``; returns the next step count."""
    for t in range(1, steps + 1):
        F.adam_(*arrays, step=t, backend=backend, **HP)
    assert any(pl.call is not None for pl in _plans._plans.values())
    return steps + 1


def _refused(arrays, exc, match, step, **kw):
    before = [a.copy() for a in arrays]
    with pytest.raises(exc, match=match):
        F.adam_(*arrays, step=step, **{**HP, **kw})
    for a, b in zip(arrays, before):
        np.testing.assert_array_equal(a, b)


def _changes():
    """name -> (change(arrays) -> arrays of the next call, exception, message)."""
    def resize(a):
        p, g, m, v = a
        # NumPy does not resize an array in place while a weak reference (the plan's)
        # to it lives, so its data cannot move under a plan; a resized copy is refused
        with pytest.raises(ValueError, match="cannot resize"):
            m.resize(2048, refcheck=False)
        return p, g, np.resize(m, 2048), v

    def reshape(a):
        p, g, m, v = a
        v.shape = (32, 32)
        return p, g, m, v

    def dtype(a):
        p, g, m, v = a
        m.dtype = np.int32
        return p, g, m, v

    def read_only(a):
        a[2].flags.writeable = False
        return a

    def replaced(a):
        p, g, m, v = a
        return p, g.astype(np.float64), m, v

    def strides(a):
        p, g, m, v = a
        big = np.zeros(2 * v.size, v.dtype)
        w = big[:v.size]
        return p, g, m, w

    def overlap(a):
        p, g, m, v = a
        return p, g, m, p

    return {"resized": (resize, ValueError, "exp_avg has shape"),
            "reshaped": (reshape, ValueError, "exp_avg_sq has shape"),
            "dtype": (dtype, TypeError, "exp_avg has dtype int32"),
            "read-only": (read_only, ValueError, "exp_avg is read-only"),
            "replaced": (replaced, TypeError, "grad has dtype float64"),
            "strides": (strides, None, None),
            "overlap": (overlap, ValueError, "overlap in memory")}


@pytest.mark.parametrize("name", list(_changes()))
def test_changed_arrays_refused(name, backend):
    change, exc, match = _changes()[name]
    arrays = _adam_arrays()
    t = _warm(arrays, backend)
    arrays = change(arrays)
    if name == "strides":
        # an array given other strides in place, no longer contiguous
        v = arrays[3]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            t = _warm(arrays, backend)
            v.strides = (2 * v.itemsize,)
        assert not v.flags.c_contiguous
        exc, match = ValueError, "exp_avg_sq is not C-contiguous"
    _refused(arrays, exc, match, t, backend=backend)


def test_id_reuse_does_not_match():
    """A plan found under the ``id`` of an array that died (its ``id`` taken by a new
    one, here one overlapping the parameter) does not hold: the call is checked."""
    p, g, m, v = _adam_arrays()
    _plans.clear()
    t = _warm((p, g, m, v))
    (key, plan), = _plans._plans.items()
    assert key[-4:] == tuple(map(id, (p, g, m, v))) and plan.call is not None
    alias = p[:]                       # same shape, dtype, flags: only the identity differs
    # the plan as if ``alias`` had got ``v``'s id
    _plans._plans[key[:-1] + (id(alias),)] = plan
    _refused((p, g, m, alias), ValueError, "overlap in memory", t)


@pytest.mark.parametrize("kw, exc, match", [
    (dict(lr=float("nan")), ValueError, "lr"),
    (dict(lr=-1e-3), ValueError, "learning rate"),
    (dict(lr=math.inf), ValueError, "lr"),
    (dict(beta1=1.0), ValueError, "beta parameter at index 0"),
    (dict(beta2=-0.1), ValueError, "beta parameter at index 1"),
    (dict(eps=-1.0), ValueError, "epsilon"),
    (dict(weight_decay=-0.5), ValueError, "weight_decay"),
    (dict(lr=True), TypeError, "lr"),
    (dict(maximize=1), TypeError, "maximize"),
    (dict(step=0), ValueError, "step"),
    (dict(step=2.5), TypeError, "step"),
    (dict(amsgrad=True), ValueError, "max_exp_avg_sq"),
    (dict(backend=["numba"]), TypeError, "backend must be a str"),
])
def test_bad_hyperparameters_refused_with_a_plan(kw, exc, match):
    arrays = _adam_arrays()
    t = _warm(arrays)
    kw.setdefault("step", t)
    step = kw.pop("step")
    _refused(arrays, exc, match, step, **kw)


_VALUES = {
    "lr": [1e-3, 0.0, -0.0, -1e-3, math.inf, math.nan, 1, True, np.float32(1e-3), "x", 1e308],
    "beta1": [0.9, 0.0, 1.0, 0.999999, -1e-9, 1, np.float64(0.5)],
    "beta2": [0.999, 1.0, -0.0, math.nan],
    "eps": [1e-8, 0.0, -1e-8, math.inf, 0],
    "weight_decay": [0.0, 0.1, -0.1, 0, False],
    "step": [1, 7, 0, -1, 2.0, True, np.int64(3)],
    "decoupled_weight_decay": [False, True, 0, np.bool_(True)],
    "maximize": [False, True, 1, None],
}


def test_quick_hyperparameter_check_is_a_subset():
    """Whatever the quick check accepts, the full check accepts with the same values;
    whatever the full check refuses, the quick one refuses (returns None)."""
    base = dict(step=3, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                decoupled_weight_decay=False, maximize=False)
    quick_taken = 0
    for name, values in _VALUES.items():
        for val in values:
            kw = dict(base, **{name: val})
            quick = _dense._adam_hp(**kw)
            try:
                full = _hparams.adam(amsgrad=False, **kw)
            except (TypeError, ValueError):
                assert quick is None, (name, val)
                continue
            if quick is not None:
                quick_taken += 1
                assert quick == full and all(type(quick[k]) is type(full[k]) for k in full), \
                    (name, val)
                assert all(math.copysign(1, quick[k]) == math.copysign(1, full[k])
                           for k in ("lr", "beta1", "beta2", "eps", "weight_decay"))
    assert quick_taken >= 10


def test_plans_keep_no_array_alive():
    arrays = _adam_arrays()
    _plans.clear()
    _warm(arrays)
    refs = [weakref.ref(a) for a in arrays]
    assert len(_plans._plans) == 1
    del arrays
    gc.collect()
    assert all(r() is None for r in refs)
    assert len(_plans._plans) == 0        # dropped with its arrays


def test_plans_are_bounded():
    _plans.clear()
    keep = []
    for i in range(_plans.MAX_PLANS + 10):
        arrays = _adam_arrays(8)
        keep.append(arrays)
        F.adam_(*arrays, step=1, **HP)
    assert len(_plans._plans) == _plans.MAX_PLANS


def test_backend_reset_drops_plans():
    """A reset backend registry (a backend hidden, say) is seen by cached plans."""
    arrays = _adam_arrays()
    t = _warm(arrays)
    plan = next(iter(_plans._plans.values()))
    _backends.reset_cache()
    assert not plan.valid(arrays)
    F.adam_(*arrays, step=t, **HP)
    assert next(iter(_plans._plans.values())) is not plan


def test_numpy_backend_takes_no_plan():
    _plans.clear()
    arrays = _adam_arrays()
    for t in (1, 2):
        F.adam_(*arrays, step=t, backend="numpy", **HP)
    assert not _plans._plans
