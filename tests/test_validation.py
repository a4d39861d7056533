"""Every bad input is refused with a clear error, and nothing is written."""

import numpy as np
import pytest

import fastadam
import fastadam.functional as F


def _arrays(n=64, dtype=np.float64, k=4):
    rng = np.random.default_rng(0)
    return [rng.standard_normal(n).astype(dtype) for _ in range(k)]


ADAM_KW = dict(step=1, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8)


def _bad_adam_calls():
    """(id, builder) pairs; builder returns (args, kwargs, expected exception, match)."""
    def base(**over):
        p, g, m, v = _arrays()
        kw = dict(ADAM_KW)
        kw.update(over)
        return [p, g, m, v], kw

    def with_arrays(fn):
        def build():
            args, kw = base()
            return fn(args, kw)
        return build

    cases = [
        ("lr-negative", lambda: (*base(lr=-1.0), ValueError, "learning rate")),
        ("lr-nan", lambda: (*base(lr=float("nan")), ValueError, "lr")),
        ("lr-str", lambda: (*base(lr="0.1"), TypeError, "lr")),
        ("lr-bool", lambda: (*base(lr=True), TypeError, "lr")),
        ("beta1-one", lambda: (*base(beta1=1.0), ValueError, "beta parameter at index 0")),
        ("beta2-negative", lambda: (*base(beta2=-0.1), ValueError, "index 1")),
        ("eps-negative", lambda: (*base(eps=-1e-8), ValueError, "epsilon")),
        ("wd-negative", lambda: (*base(weight_decay=-0.1), ValueError, "weight_decay")),
        ("step-zero", lambda: (*base(step=0), ValueError, "step")),
        ("step-float", lambda: (*base(step=1.5), TypeError, "step")),
        ("maximize-str", lambda: (*base(maximize="yes"), TypeError, "maximize")),
        ("amsgrad-no-buffer", lambda: (*base(amsgrad=True), ValueError, "max_exp_avg_sq")),
        ("backend-unknown", lambda: (*base(backend="nope"), ValueError, "backend")),
        ("backend-type", lambda: (*base(backend=3), TypeError, "backend")),
        ("param-list", with_arrays(lambda a, kw: ([list(a[0])] + a[1:], kw, TypeError, "param"))),
        ("grad-dtype", with_arrays(lambda a, kw: ([a[0], a[1].astype(np.float32)] + a[2:], kw,
                                                  TypeError, "grad"))),
        ("int-dtype", with_arrays(lambda a, kw: ([x.astype(np.int64) for x in a], kw, TypeError,
                                                 "float32 or float64"))),
        ("float16", with_arrays(lambda a, kw: ([x.astype(np.float16) for x in a], kw, TypeError,
                                               "float32 or float64"))),
        ("shape", with_arrays(lambda a, kw: ([a[0], a[1][:10]] + a[2:], kw, ValueError,
                                             "shape"))),
        ("strided-param", with_arrays(lambda a, kw: (
            [np.zeros(128)[::2], a[1], a[2], a[3]], kw, ValueError, "C-contiguous"))),
        ("aliased-states", with_arrays(lambda a, kw: ([a[0], a[1], a[2], a[2]], kw, ValueError,
                                                      "overlap"))),
        ("grad-is-param", with_arrays(lambda a, kw: ([a[0], a[0], a[2], a[3]], kw, ValueError,
                                                     "overlap"))),
    ]

    def readonly():
        args, kw = base()
        args[2].flags.writeable = False
        return args, kw, ValueError, "read-only"
    cases.append(("readonly-state", readonly))

    def overlap_slices():
        buf = np.zeros(100)
        args, kw = base()
        return [buf[:64], args[1], buf[36:100], args[3]], kw, ValueError, "overlap"
    cases.append(("partial-overlap", overlap_slices))
    return cases


@pytest.mark.parametrize("build", [c[1] for c in _bad_adam_calls()],
                         ids=[c[0] for c in _bad_adam_calls()])
@pytest.mark.parametrize("be", ["auto", "numpy"])
def test_bad_adam_input_changes_nothing(build, be):
    args, kw, exc, match = build()
    kw.setdefault("backend", be)
    before = [np.array(a, copy=True) if isinstance(a, np.ndarray) else a for a in args]
    with pytest.raises(exc, match=match):
        F.adam_(*args, **kw)
    for a, b in zip(args, before):
        if isinstance(a, np.ndarray):
            assert np.array_equal(a, b, equal_nan=True)


@pytest.mark.parametrize("call,exc,match", [
    (lambda p, g, s: F.rmsprop_(p, g, s, lr=0.01, alpha=0.99, eps=1e-8, momentum=0.9),
     ValueError, "momentum_buffer"),
    (lambda p, g, s: F.rmsprop_(p, g, s, lr=0.01, alpha=0.99, eps=1e-8, centered=True),
     ValueError, "grad_avg"),
    (lambda p, g, s: F.rmsprop_(p, g, s, lr=0.01, alpha=1.5, eps=1e-8), ValueError, "alpha"),
    (lambda p, g, s: F.adagrad_(p, g, s, step=1, lr=0.01, lr_decay=-1, eps=1e-10),
     ValueError, "lr_decay"),
    (lambda p, g, s: F.sgd_(p, g, s, lr=0.01, momentum=0.9, dampening=0.1, nesterov=True),
     ValueError, "Nesterov"),
    (lambda p, g, s: F.sgd_(p, g, None, lr=0.01, momentum=0.9), ValueError, "momentum_buffer"),
    (lambda p, g, s: F.adadelta_(p, g, s, s.copy(), rho=1.5), ValueError, "rho"),
    (lambda p, g, s: F.nadam_(p, g, s, s.copy(), step=1, mu_product="x", lr=1e-3, beta1=0.9,
                              beta2=0.999, eps=1e-8), TypeError, "mu_product"),
    (lambda p, g, s: F.nadam_(p, g, s, s.copy(), step=1, mu_product=1.0, lr=1e-3, beta1=0.9,
                              beta2=0.999, eps=1e-8, momentum_decay=-1), ValueError,
     "momentum_decay"),
    (lambda p, g, s: F.adamax_(p, g, s, s.copy(), step=1, lr=-1, beta1=0.9, beta2=0.999,
                               eps=1e-8), ValueError, "learning rate"),
])
def test_bad_input_other_optimizers(call, exc, match):
    p, g, s = _arrays(k=3)
    before = [p.copy(), g.copy(), s.copy()]
    with pytest.raises(exc, match=match):
        call(p, g, s)
    for a, b in zip((p, g, s), before):
        assert np.array_equal(a, b)


def test_explicit_unavailable_backend_says_why(monkeypatch):
    from fastadam import _backends
    monkeypatch.setitem(_backends._LOADERS, "cython", lambda: (_ for _ in ()).throw(
        _backends.BackendUnavailableError("cython extension not built (test)")))
    _backends.reset_cache()
    try:
        p, g, m, v = _arrays()
        with pytest.raises(fastadam.BackendUnavailableError, match="not built"):
            F.adam_(p, g, m, v, backend="cython", **ADAM_KW)
        assert "cython" not in fastadam.available_backends()
    finally:
        _backends.reset_cache()


def test_empty_arrays_are_a_noop():
    p, g, m, v = (np.zeros(0, dtype=np.float32) for _ in range(4))
    F.adam_(p, g, m, v, **ADAM_KW)
    assert p.shape == (0,)
