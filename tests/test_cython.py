"""The Cython backend: kernel-level parity with numba, its checks, bind, codegen, builds.

The functional-level parity with the NumPy reference and torch.optim runs through
the ``backend`` fixture of conftest.py (test_functional_parity.py,
test_torch_parity.py), which includes "cython" once the extension is built.
Here: every kernel against the numba kernels on the same inputs (special values
included), the checks ``run`` does before writing, ``bind``, the parallel path,
the rule translation (``_codegen``) and a stale-build check.

With FASTADAM_REQUIRE_CYTHON=1 (CI) a missing extension fails instead of skipping.
"""

import os
import pathlib
import sys

import numpy as np
import pytest

from fastadam import _config, _scalars

REPO = pathlib.Path(__file__).resolve().parent.parent

try:
    from fastadam._cython import backend as cyb
    from fastadam._cython import kernels as cyk
except ImportError as e:  # pragma: no cover - depends on the build
    cyb = cyk = None
    _why = f"the Cython extension is not built ({e}); run: python setup.py build_ext --inplace"
else:
    _why = ""

# CI sets FASTADAM_REQUIRE_CYTHON=1: a missing extension then fails these tests
needs_ext = pytest.mark.skipif(cyb is None and os.environ.get("FASTADAM_REQUIRE_CYTHON") != "1",
                               reason=_why or "built")


def test_extension_built_when_required():
    if os.environ.get("FASTADAM_REQUIRE_CYTHON") == "1":
        assert cyb is not None, _why
        import fastadam
        assert "cython" in fastadam.available_backends()


# One hyperparameter set per kernel, through the same _scalars functions the
# backends use.  Non-default options so that every scalar is exercised.
KERNEL_HP = {
    "adam": ("adam", dict(step=3, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1,
                          decoupled_weight_decay=False, amsgrad=False, maximize=True)),
    "adam_amsgrad": ("adam", dict(step=3, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8,
                                  weight_decay=0.1, decoupled_weight_decay=True, amsgrad=True,
                                  maximize=False)),
    "rmsprop": ("rmsprop", dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.1, momentum=0.0,
                                centered=False, maximize=False)),
    "rmsprop_momentum": ("rmsprop", dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0,
                                         momentum=0.9, centered=False, maximize=True)),
    "rmsprop_centered": ("rmsprop", dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.1,
                                         momentum=0.0, centered=True, maximize=False)),
    "rmsprop_centered_momentum": ("rmsprop", dict(lr=1e-2, alpha=0.9, eps=1e-6,
                                                  weight_decay=0.1, momentum=0.9,
                                                  centered=True, maximize=True)),
    "adagrad": ("adagrad", dict(step=4, lr=1e-2, lr_decay=0.01, eps=1e-10, weight_decay=0.1,
                                maximize=False)),
    "sgd": ("sgd", dict(first=True, lr=1e-2, momentum=0.0, dampening=0.0, weight_decay=0.1,
                        nesterov=False, maximize=True)),
    "sgd_momentum": ("sgd", dict(first=False, lr=1e-2, momentum=0.9, dampening=0.5,
                                 weight_decay=0.1, nesterov=False, maximize=False)),
    "adadelta": ("adadelta", dict(lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.1, maximize=True)),
    "nadam": ("nadam", dict(step=5, mu_product=0.5, lr=2e-3, beta1=0.9, beta2=0.999, eps=1e-8,
                            weight_decay=0.1, momentum_decay=4e-3, decoupled_weight_decay=False,
                            maximize=False)),
    "adamax": ("adamax", dict(step=2, lr=2e-3, beta1=0.9, beta2=0.999, eps=1e-8,
                              weight_decay=0.1, maximize=True)),
}
# the sgd_momentum branches (first step, nesterov) as extra cases
EXTRA_HP = [
    ("sgd_momentum", ("sgd", dict(first=True, lr=1e-2, momentum=0.9, dampening=0.0,
                                  weight_decay=0.0, nesterov=True, maximize=False))),
    ("sgd_momentum", ("sgd", dict(first=False, lr=1e-2, momentum=0.9, dampening=0.0,
                                  weight_decay=0.1, nesterov=True, maximize=True))),
    ("adam", ("adam", dict(step=1, lr=1e-3, beta1=0.0, beta2=0.5, eps=0.0, weight_decay=0.0,
                           decoupled_weight_decay=False, amsgrad=False, maximize=False))),
]
ALL_HP = list(KERNEL_HP.items()) + EXTRA_HP


def test_kernel_table_covers_every_kernel():
    assert set(KERNEL_HP) == set(_scalars.KERNEL_STATES)
    for name, (opt, hp) in KERNEL_HP.items():
        assert getattr(_scalars, opt)(np.dtype(np.float64), **hp)[0] == name


def _inputs(name, n, dtype, seed, special):
    """(param, grad, *states) for kernel ``name``; ``special`` sprinkles nan/inf/0/-0/huge."""
    rng = np.random.default_rng(seed)
    k = len(_scalars.KERNEL_STATES[name])
    arrs = [rng.standard_normal(n).astype(dtype), rng.standard_normal(n).astype(dtype)]
    for s in _scalars.KERNEL_STATES[name]:
        a = rng.standard_normal(n).astype(dtype)
        if s in ("exp_avg_sq", "max_exp_avg_sq", "square_avg", "sum", "acc_delta", "exp_inf"):
            a = np.abs(a)  # states that are sums of squares / maxima of |g|
        arrs.append(a)
    if special and n:
        vals = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e30, -1e-30, 3e-39],
                        dtype=np.float64).astype(dtype)
        for a in arrs[:2 + k]:
            idx = rng.integers(0, n, size=min(n, 6))
            a[idx] = rng.choice(vals, size=idx.size)
    return arrs


def _both(name, opt, hp, n, dtype, seed=0, special=False, steps=3):
    from fastadam.kernels import cpu
    _, scal = getattr(_scalars, opt)(np.dtype(dtype), **hp)
    base = _inputs(name, n, dtype, seed, special)
    a_nb = [a.copy() for a in base]
    a_cy = [a.copy() for a in base]
    for _ in range(steps):
        cpu.run(name, tuple(a_nb), scal)
        cyb.run(name, tuple(a_cy), scal)
    return base, a_nb, a_cy


@needs_ext
@pytest.mark.parametrize("name,spec", ALL_HP, ids=[f"{n}-{i}" for i, (n, _) in enumerate(ALL_HP)])
@pytest.mark.parametrize("n", [0, 1, 17, 513, 70001])
def test_every_kernel_equals_numba(name, spec, n, dtype):
    """Same rule source, same operation order, no FMA: the results are bitwise equal.

    (NaN compared equal to NaN, and 0 to -0: numba is allowed ``nsz``.)  That is
    stronger than the contract (float32 within rounding, float64 1e-12 relative).
    70001 elements take the parallel (OpenMP) loop in both backends.
    """
    pytest.importorskip("numba")
    opt, hp = spec
    base, a_nb, a_cy = _both(name, opt, hp, n, dtype)
    assert a_cy[1] is not base[1] and np.array_equal(a_cy[1], base[1])  # grad untouched
    if n:
        assert not np.array_equal(a_cy[0], base[0])  # the step did something
    for i, (x, y) in enumerate(zip(a_cy, a_nb)):
        assert x.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(x, y, err_msg=f"{name}: array {i}")


@needs_ext
@pytest.mark.parametrize("name,spec", ALL_HP, ids=[f"{n}-{i}" for i, (n, _) in enumerate(ALL_HP)])
def test_every_kernel_equals_numba_special_values(name, spec, dtype):
    """NaN, inf, signed zeros, overflowing squares and subnormals propagate as in numba."""
    pytest.importorskip("numba")
    opt, hp = spec
    for seed in range(3):
        base, a_nb, a_cy = _both(name, opt, hp, 257, dtype, seed=seed, special=True)
        for i, (x, y) in enumerate(zip(a_cy, a_nb)):
            np.testing.assert_array_equal(x, y, err_msg=f"{name}: array {i}, seed {seed}")


def _check_parallel_equals_serial(name, dtype, n, seed, monkeypatch):
    """Kernel ``name`` on ``n`` elements: the parallel loop gives the serial loop's bits."""
    opt, hp = KERNEL_HP[name]
    _, scal = getattr(_scalars, opt)(np.dtype(dtype), **hp)
    base = _inputs(name, n, dtype, seed, special=True)
    ser = [a.copy() for a in base]
    par = [a.copy() for a in base]
    monkeypatch.setattr(_config, "PARALLEL_THRESHOLD", 1 << 40)
    cyb.run(name, ser, scal)
    monkeypatch.setattr(_config, "PARALLEL_THRESHOLD", 1)
    cyb.run(name, par, scal)
    for x, y in zip(par, ser):
        np.testing.assert_array_equal(x, y)


@needs_ext
@pytest.mark.parametrize("name", sorted(KERNEL_HP))
def test_parallel_loop_equals_serial_loop(name, dtype, monkeypatch):
    _check_parallel_equals_serial(name, dtype, 10007, 3, monkeypatch)


@needs_ext
@pytest.mark.parametrize("name", ["adam", "sgd_momentum", "rmsprop_centered_momentum"])
def test_parallel_sub_blocks_equal_the_serial_loop(name, dtype, monkeypatch):
    """Past 8 MiB per array the parallel loops run in prefetched sub-blocks (a ragged
    tail included): the same bits as the serial loop."""
    n = (8 << 20) // np.dtype(dtype).itemsize + 4099
    _check_parallel_equals_serial(name, dtype, n, 5, monkeypatch)


@needs_ext
@pytest.mark.parametrize("name", ["adam", "sgd_momentum", "rmsprop_centered_momentum"])
def test_sub_block_form_equals_the_serial_loop_on_every_machine(name, dtype, monkeypatch):
    """The prefetched sub-block form forced at a small size (it is off by default on AMD
    CPUs: ``fastadam._config.PREFETCH_SUB_BLOCKS``): the same bits as the serial loop."""
    from fastadam._cython import kernels
    old = kernels._prefetch_min_bytes(0)
    try:
        assert kernels._prefetch_min_bytes() == 0
        _check_parallel_equals_serial(name, dtype, 3 * 4096 + 77, 6, monkeypatch)
    finally:
        kernels._prefetch_min_bytes(old)
    assert kernels._prefetch_min_bytes() == old


@needs_ext
def test_float32_arithmetic_stays_float32():
    """A float64 promotion anywhere would change float32 results: compare with a
    float32 NumPy evaluation of the Adam rule, op by op, and with a float64 one."""
    opt, hp = KERNEL_HP["adam"]
    _, s = _scalars.adam(np.dtype(np.float32), **hp)
    p, g, m, v = _inputs("adam", 4099, np.float32, 7, special=False)
    exp = [a.copy() for a in (p, g, m, v)]
    gsign, l2, decay, omb1, beta2, omb2, neg_step, inv_bc2_sqrt, eps = s
    f64 = np.float64

    def fma(a, b, c):   # float32 operands: the product is exact in float64, one rounding
        # more to float32 (a double rounding, off only on an exact float32 tie)
        return (np.asarray(a, f64) * np.asarray(b, f64) + np.asarray(c, f64)).astype(np.float32)

    assert omb1 > -omb1         # beta1 = 0.9: torch's first lerp branch
    with np.errstate(all="ignore"):
        gg = fma(l2, p, gsign * g) if l2 else gsign * g
        pp = p * decay
        mm = fma(omb1, gg - m, m)
        vv = fma(omb2 * gg, gg, beta2 * v)
        pp = pp + neg_step * mm / (np.sqrt(vv) * inv_bc2_sqrt + eps)
    assert pp.dtype == np.float32
    cyb.run("adam", exp, s)
    np.testing.assert_array_equal(exp[0], pp)
    np.testing.assert_array_equal(exp[2], mm)
    np.testing.assert_array_equal(exp[3], vv)


@needs_ext
def test_division_by_zero_is_ieee_not_an_exception(dtype):
    """0/0 gives NaN and x/0 inf, as in NumPy and numba (cdivision), never ZeroDivisionError."""
    _, s = _scalars.adam(np.dtype(dtype), step=1, lr=1.0, beta1=0.9, beta2=0.999, eps=0.0,
                         weight_decay=0.0, decoupled_weight_decay=False, amsgrad=False,
                         maximize=False)
    p = np.array([1.0, 2.0], dtype)
    g = np.zeros(2, dtype)
    m, v = np.zeros(2, dtype), np.zeros(2, dtype)
    cyb.run("adam", (p, g, m, v), s)
    assert np.isnan(p).all()
    _, s = _scalars.adagrad(np.dtype(dtype), step=1, lr=1.0, lr_decay=0.0, eps=0.0,
                            weight_decay=0.0, maximize=False)
    p, g, acc = np.zeros(1, dtype), np.array([1.0], dtype), np.array([-1.0], dtype)
    cyb.run("adagrad", (p, g, acc), s)   # sum becomes 0: p += -1 * 1 / 0
    assert p[0] == -np.inf


# --- checks before writing --------------------------------------------------------

def _adam_args(n=64, dtype=np.float32):
    _, s = _scalars.adam(np.dtype(dtype), **KERNEL_HP["adam"][1])
    return _inputs("adam", n, dtype, 0, False), s


def _unchanged(arrs, before):
    return all(np.array_equal(a, b, equal_nan=True) for a, b in zip(arrs, before))


@needs_ext
@pytest.mark.parametrize("mutate,exc,match", [
    (lambda a: a.__setitem__(2, a[2].astype(np.float64)), ValueError, "exp_avg .*mismatch"),
    (lambda a: a.__setitem__(3, a[3][:-1].copy()), ValueError, "exp_avg_sq has 63 elements"),
    (lambda a: a.__setitem__(1, a[1][:-1].copy()), ValueError, "grad has 63"),
    (lambda a: a.__setitem__(2, np.zeros((2, 32), np.float32)), ValueError, "dimensions"),
    (lambda a: a.__setitem__(3, np.zeros(128, np.float32)[::2]), ValueError, "contiguous"),
    (lambda a: a[3].setflags(write=False), ValueError, "exp_avg_sq .*read-only"),
    (lambda a: a.__setitem__(2, list(range(64))), TypeError, "exp_avg \\(list\\)"),
    (lambda a: a.pop(), ValueError, "takes 4 arrays"),
], ids=["dtype", "state-length", "grad-length", "2d", "strided", "readonly", "list", "count"])
def test_bad_arrays_raise_before_writing(mutate, exc, match):
    arrs, s = _adam_args()
    mutate(arrs)
    before = [np.array(a, copy=True) for a in arrs]
    with pytest.raises(exc, match=match):
        cyb.run("adam", arrs, s)
    assert _unchanged(arrs, before)
    with pytest.raises(exc, match=match):
        cyb.bind("adam", arrs, s)


@needs_ext
def test_param_dtype_and_kernel_name_and_scalar_count():
    arrs, s = _adam_args()
    with pytest.raises(KeyError, match="unknown kernel"):
        cyb.run("adamw", arrs, s)
    before = [a.copy() for a in arrs]
    with pytest.raises(ValueError, match="takes 9 scalars, got 8"):
        cyb.run("adam", arrs, s[:-1])
    assert _unchanged(arrs, before)
    ints = [a.astype(np.int32) for a in arrs]
    with pytest.raises(TypeError, match="float32 or float64"):
        cyb.run("adam", ints, s)
    f16 = [a.astype(np.float16) for a in arrs]
    with pytest.raises(TypeError, match="float32 or float64"):
        cyb.run("adam", f16, s)


@needs_ext
def test_read_only_grad_is_accepted():
    arrs, s = _adam_args()
    ref = [a.copy() for a in arrs]
    arrs[1].setflags(write=False)
    cyb.run("adam", arrs, s)
    cyb.run("adam", ref, s)
    for a, b in zip(arrs, ref):
        np.testing.assert_array_equal(a, b)


# --- bind -------------------------------------------------------------------------

@needs_ext
@pytest.mark.parametrize("name", sorted(KERNEL_HP))
def test_bind_equals_run(name, dtype):
    opt, hp = KERNEL_HP[name]
    _, scal = getattr(_scalars, opt)(np.dtype(dtype), **hp)
    base = _inputs(name, 1000, dtype, 5, special=True)
    a_run = [a.copy() for a in base]
    a_bnd = [a.copy() for a in base]
    f = cyb.bind(name, a_bnd, scal)
    for _ in range(3):
        cyb.run(name, a_run, scal)
        f(*scal)
    for x, y in zip(a_bnd, a_run):
        np.testing.assert_array_equal(x, y)


@needs_ext
def test_bind_takes_python_floats_as_dtype_type_does():
    arrs, s = _adam_args(dtype=np.float32)
    other = [a.copy() for a in arrs]
    cyb.bind("adam", arrs, s)(*[float(x) for x in s])
    cyb.run("adam", other, s)
    for x, y in zip(arrs, other):
        np.testing.assert_array_equal(x, y)
    f = cyb.bind("adam", arrs)
    with pytest.raises(ValueError, match="takes 9 scalars"):
        f(*s[:3])


# --- the rule translation ---------------------------------------------------------

def _codegen():
    sys.path.insert(0, str(REPO))
    from fastadam._cython import _codegen
    return _codegen


@needs_ext
def test_build_is_not_stale():
    """The extension was generated from the rules as they are now."""
    cg = _codegen()
    rules = pathlib.Path(_scalars.__file__).parent / "rules"
    assert cyk.RULES_SHA == cg.rules_sha(rules), (
        "fastadam/rules changed since the Cython extension was built; rebuild it "
        "(python setup.py build_ext --inplace, or pip install -e .)")


@needs_ext
def test_stale_build_is_refused(tmp_path):
    """Rules edited after the build: importing the backend raises, naming the fix."""
    import shutil
    rules = pathlib.Path(_scalars.__file__).parent / "rules"
    cyb.check_fresh(rules)  # the sources as built
    copy = tmp_path / "rules"
    shutil.copytree(rules, copy)
    with open(copy / "adam.py", "a") as f:
        f.write("\n# edited\n")
    with pytest.raises(ImportError, match="rebuild"):
        cyb.check_fresh(copy)


def test_mark_target_clones_marks_loop_definitions_only(tmp_path):
    """The build step that multi-versions the loops: definitions of _loop_* only,
    not their prototypes, not the exported wrappers, and only once."""
    sys.path.insert(0, str(REPO))
    import _build_ext
    pre = "__pyx_fuse_0__pyx_f_8fastadam_7_cython_7kernels_"
    c = tmp_path / "k.c"
    c.write_text(
        f"static void {pre}_loop_adam(float *, Py_ssize_t); /*proto*/\n"
        f"static void {pre}adam(float *, Py_ssize_t); /*proto*/\n"
        f"static void {pre}_loop_adam(float *__pyx_v_p, Py_ssize_t __pyx_v_n) {{\n}}\n"
        f"static void {pre}adam(float *__pyx_v_p, Py_ssize_t __pyx_v_n) {{\n}}\n"
        f"static CYTHON_INLINE void {pre}rule_adam(float __pyx_v_p) {{\n}}\n")
    assert _build_ext.mark_target_clones(str(c)) == 1
    text = c.read_text()
    assert f"FASTADAM_CLONES static void {pre}_loop_adam(float *__pyx_v_p" in text
    assert text.count("FASTADAM_CLONES") == 1
    assert _build_ext.mark_target_clones(str(c)) == 0  # idempotent
    if cyk is not None:
        assert isinstance(cyk._target_clones(), bool)
        assert isinstance(cyk._openmp_enabled(), bool)


def test_translation_is_literal():
    cg = _codegen()
    src = ("import math\n"
           "def r(p, g, m, a, b, flag):\n"
           "    '''doc'''\n"
           "    g = a * g + b * p\n"
           "    if flag:\n"
           "        t = g\n"
           "    else:\n"
           "        t = m if (m >= g or m != m) else -g\n"
           "    p = p + a * t / (math.sqrt(abs(m)) + b)\n"
           "    if b:\n"
           "        p = p + b * g\n"
           "    return p, t\n")
    (text,) = cg.translate_module(src, "x.py")
    assert "cdef inline void rule_r(" in text
    assert "bint flag" in text and "floating m" in text and "cdef floating t" in text
    assert "floating b," in text  # a test that is also arithmetic stays floating
    assert "    if b:\n        p = p + b * g" in text
    assert "g = a * g + b * p" in text
    assert "t = m if m >= g or m != m else -g" in text
    assert "p = p + a * t / (_sqrt(_abs(m)) + b)" in text
    assert "_o0[0] = p" in text and "_o1[0] = t" in text


@pytest.mark.parametrize("body,match", [
    ("    p = p * 2.0\n    return p\n", "Constant"),
    ("    p = math.exp(p)\n    return p\n", "only math.sqrt, abs and fma"),
    ("    p, g = g, p\n    return p\n", "one plain name"),
    ("    for i in p:\n        pass\n    return p\n", "For statements"),
    ("    p = p + g\n", "end with a return"),
])
def test_translation_refuses_what_it_cannot_follow(body, match):
    cg = _codegen()
    with pytest.raises(cg.RuleTranslationError, match=match):
        cg.translate_module("import math\ndef r(p, g):\n" + body, "x.py")


def test_every_rule_translates_and_capi_matches_rule_signatures():
    """The C API (kernels.pxd) passes each rule's scalars in the rule's own order."""
    import ast
    import re
    cg = _codegen()
    rules = pathlib.Path(_scalars.__file__).parent / "rules"
    text = cg.generate(rules)
    pxd = (REPO / "fastadam" / "_cython" / "kernels.pxd").read_text()
    decls = dict(re.findall(r"cdef void (\w+)\((.*?)\) noexcept nogil", pxd, re.S))
    assert set(decls) == set(_scalars.KERNEL_STATES)
    for mod in cg.RULE_MODULES:
        for fn in ast.parse((rules / f"{mod}.py").read_text()).body:
            if not isinstance(fn, ast.FunctionDef):
                continue
            assert f"cdef inline void rule_{fn.name}(" in text
            params = [a.arg for a in fn.args.args]
            nstate = len(_scalars.KERNEL_STATES[fn.name])
            args = [x.split()[-1].lstrip("*") for x in " ".join(decls[fn.name].split()).split(",")]
            assert args[:2 + nstate] == params[:2 + nstate], fn.name
            assert args[2 + nstate] == "n" and args[-1] == "parallel"
            assert args[3 + nstate:-1] == params[2 + nstate:], fn.name
