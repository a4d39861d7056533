"""What the compiler makes of the kernels, and what a step costs in dispatch.

* Float discipline: the LLVM IR of every float32 kernel does no double-precision
  arithmetic (a silent float64 promotion costs ~40% of the memory roofline), and
  its machine code uses packed (SIMD) float32 instructions.
* Above ``_blocked.MIN_BYTES`` the parallel kernels run in the prefetched sub-block
  form of :mod:`fastadam.kernels._blocked` (the dense ones where
  ``_config.PREFETCH_SUB_BLOCKS``; the form itself is also tested at small sizes on
  every machine): bit for bit the plain serial loop.
* A step never recompiles: the dispatchers' signatures do not grow over steps of
  one dtype, whatever the step count or learning rate.
* ``import fastadam`` imports neither numba nor torch.
* The façade's cached hot path (validated hyperparameters and bound kernels reused
  between steps) gives exactly the functional API's results and still re-checks
  whatever changes.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import fastadam
from fastadam import _scalars
from fastadam import functional as F

numba = pytest.importorskip("numba")
from fastadam.kernels import cpu  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOOL_SCALARS = ("first", "nesterov")


def _signature(name, dtype=numba.float32):
    base = name.removesuffix(_scalars.GRADLIST_SUFFIX)
    params = list(inspect.signature(getattr(cpu, base)).parameters)
    n_arrays = 2 + len(_scalars.KERNEL_STATES[base])
    arr = numba.types.Array(dtype, 1, "C")
    arrays = [arr] * n_arrays
    if name != base:                  # the gradient-list form: the gradient by address
        arrays[1:2] = [numba.types.Array(numba.int64, 1, "C")] * 2
    return tuple(arrays + [numba.boolean if p in BOOL_SCALARS else dtype
                           for p in params[n_arrays:]])


def _kernel_functions(ir: str):
    """``{name: body}`` of the functions defined in ``ir``, minus numba's Python wrappers."""
    out = {}
    for m in re.finditer(r"^define [^@]*@\"?([^\"(]+)\"?\(.*?^}", ir, re.S | re.M):
        name = m.group(1)
        if re.match(r"(_ZN\d+)?(cpython|cfunc)", name):
            continue                      # boxing/unboxing of the Python arguments
        out[name] = m.group(0)
    return out


DOUBLE_MATH = re.compile(
    r"\b(fadd|fsub|fmul|fdiv|frem|fneg)\b[^\n]*\bdouble\b|\bfcmp \w+ double\b|"
    r"\bfpext\b|@llvm\.\w+\.f64\b|\b(sitofp|uitofp)\b[^\n]*\bto double\b")
PACKED = re.compile(r"^\s*v?(add|sub|mul|div|sqrt|max|min|fmadd\w*|fnmadd\w*)ps\s", re.M)

#: every kernel and its gradient-list form serially; the parallel (prange) variants of a
#: representative few
CASES = [(k, False) for k in cpu.KERNEL_NAMES + cpu.GRADLIST_NAMES] + \
        [(k, True) for k in ("adam", "adam_amsgrad", "sgd_momentum", "adam_gradlist")]


@pytest.fixture(scope="module")
def compiled():
    """Uncached dispatchers (numba will not show the code of cached ones), float32."""
    out = {}
    for name, parallel in CASES:
        disp = cpu._make(name, parallel, cache=False)
        sig = _signature(name)
        disp.compile(sig)
        out[name, parallel] = (disp, sig)
    return out


@pytest.mark.parametrize("name,parallel", CASES,
                         ids=[f"{k}-{'par' if p else 'ser'}" for k, p in CASES])
def test_float32_kernel_has_no_double_math(compiled, name, parallel):
    disp, sig = compiled[name, parallel]
    funcs = _kernel_functions(disp.inspect_llvm(sig))
    assert funcs, "no kernel function found in the LLVM IR"
    bad = [f"{fn}: {line.strip()}" for fn, body in funcs.items()
           for line in body.splitlines() if DOUBLE_MATH.search(line)]
    assert not bad, "float64 arithmetic in a float32 kernel:\n" + "\n".join(bad[:10])


@pytest.mark.parametrize("name,parallel", CASES,
                         ids=[f"{k}-{'par' if p else 'ser'}" for k, p in CASES])
def test_float32_kernel_is_vectorized(compiled, name, parallel):
    disp, sig = compiled[name, parallel]
    asm = disp.inspect_asm(sig)
    packed = PACKED.findall(asm)
    assert packed, f"{name}: no packed float32 (SIMD) arithmetic in the machine code"


def test_the_checks_can_fail():
    """The IR pattern does catch a float64 promotion (a float literal in a float32 loop)."""
    @numba.njit(cache=False)
    def promoted(p, g):
        for i in range(p.shape[0]):
            p[i] = p[i] - 0.1 * g[i]          # 0.1 is a float64 literal

    sig = (numba.types.Array(numba.float32, 1, "C"),) * 2
    promoted.compile(sig)
    funcs = _kernel_functions(promoted.inspect_llvm(sig))
    assert any(DOUBLE_MATH.search(body) for body in funcs.values())


# -- the prefetched sub-block form ------------------------------------------------------
def _kernel_scalars(name, dtype):
    """Scalars of kernel ``name`` for typical hyperparameters (weight decay and
    momentum on, so that every term of the rules runs)."""
    d = np.dtype(dtype)
    if name.startswith("adam") and name != "adamax":
        k, s = _scalars.adam(d, step=3, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8,
                             weight_decay=0.1, decoupled_weight_decay=False,
                             amsgrad=name == "adam_amsgrad", maximize=False)
    elif name.startswith("rmsprop"):
        k, s = _scalars.rmsprop(d, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.1,
                                momentum=0.9 if "momentum" in name else 0.0,
                                centered="centered" in name, maximize=False)
    elif name == "adagrad":
        k, s = _scalars.adagrad(d, step=3, lr=1e-2, lr_decay=0.01, eps=1e-10,
                                weight_decay=0.1, maximize=False)
    elif name.startswith("sgd"):
        k, s = _scalars.sgd(d, first=False, lr=1e-2, momentum=0.9 if "momentum" in name
                            else 0.0, dampening=0.0, weight_decay=0.1, nesterov=True,
                            maximize=False)
    elif name == "adadelta":
        k, s = _scalars.adadelta(d, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.1,
                                 maximize=False)
    elif name == "nadam":
        k, s = _scalars.nadam(d, step=3, mu_product=0.9, lr=2e-3, beta1=0.9, beta2=0.999,
                              eps=1e-8, weight_decay=0.1, momentum_decay=4e-3,
                              decoupled_weight_decay=False, maximize=False)
    else:
        k, s = _scalars.adamax(d, step=3, lr=2e-3, beta1=0.9, beta2=0.999, eps=1e-8,
                               weight_decay=0.1, maximize=False)
    assert k == name
    return s


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_parallel_sub_blocks_equal_the_serial_loop_bitwise(dtype):
    """Every parallel kernel at a size that takes the sub-block form where it is on
    (past ``MIN_BYTES``, ending mid-chunk and mid-sub-block, with non-finite elements):
    the same bits as the plain serial loop."""
    from fastadam.kernels import _blocked
    n = _blocked.MIN_BYTES // np.dtype(dtype).itemsize + _blocked.CHUNK + 77
    _compare_with_serial_loops(_arrays(n, dtype, 3), dtype,
                               lambda name, arrays, s: cpu.get(name, True)(*arrays, *s))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sub_block_form_equals_the_serial_loop_bitwise_on_every_machine(dtype):
    """The prefetched sub-block form of every dense kernel, built with a small
    ``min_bytes`` so that it runs at a small size whatever ``PREFETCH_SUB_BLOCKS`` is on
    this machine (several chunks, the last one ragged): the serial loop's bits."""
    import numba

    from fastadam.kernels import _blocked
    n = 3 * _blocked.CHUNK + 77
    made = {}

    def run(name, arrays, s):
        f = made.get(name)
        if f is None:
            src = _blocked.blocked_loop(getattr(cpu, name), 2 + len(_scalars.KERNEL_STATES[name]),
                                        "r_" + name, vars(cpu), min_bytes=0)
            f = made[name] = numba.njit(parallel=True, fastmath=cpu.FASTMATH)(src)
        f(*arrays, *s)
    _compare_with_serial_loops(_arrays(n, dtype, 6), dtype, run)


@pytest.mark.parametrize("env", ["0", "1"])
def test_prefetch_sub_blocks_follows_the_environment(env, monkeypatch):
    from fastadam import _config
    monkeypatch.setenv("FASTADAM_PREFETCH_SUB_BLOCKS", env)
    assert _config._prefetch_sub_blocks() is (env == "1")


def _arrays(n, dtype, seed):
    """Five arrays of ``n`` elements for a kernel: the third non-negative (a second
    moment), the second (the gradient) with non-finite elements."""
    rng = np.random.default_rng(seed)
    base = [rng.standard_normal(n).astype(dtype) for _ in range(5)]
    base[2] = np.abs(base[2])                    # a second moment / square average
    base[1][[5, n // 2, n - 1]] = [np.nan, np.inf, -np.inf]
    return base


def _compare_with_serial_loops(base, dtype, run):
    """For every kernel, two steps of ``run(name, arrays, scalars)`` on copies of
    ``base`` give the bits of two steps of the plain serial loop."""
    for name in cpu.KERNEL_NAMES:
        na = 2 + len(_scalars.KERNEL_STATES[name])
        s = _kernel_scalars(name, dtype)
        got = [a.copy() for a in base[:na]]
        ref = [a.copy() for a in base[:na]]
        for _ in range(2):
            run(name, got, s)
            cpu.get(name, False)(*ref, *s)
        for k, (a, b) in enumerate(zip(got, ref)):
            assert np.array_equal(a.view(f"u{a.itemsize}"), b.view(f"u{b.itemsize}")), \
                f"{name}: array {k}"


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gradient_list_form_equals_the_plain_loop_bitwise(dtype, parallel):
    """Every kernel's gradient-list form over gradients of many sizes (empty ones, one
    element, several work items, tensors that straddle work items; non-finite
    elements), each read at its own address: the same bits as the plain serial loop
    over the gradients concatenated."""
    from fastadam.kernels import _blocked
    sizes = [3, 0, _blocked.CHUNK - 1, 1, 0, 2 * _blocked.CHUNK + 5, 77, _blocked.CHUNK]
    base = _arrays(sum(sizes), dtype, 5)
    goff = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    grads = [base[1][a:b].copy() for a, b in zip(goff[:-1], goff[1:])]   # apart
    gaddr = np.array([g.ctypes.data for g in grads], dtype=np.int64)

    def run(name, arrays, s):
        cpu.get(cpu.gradlist_name(name), parallel)(arrays[0], gaddr, goff, *arrays[2:], *s)
    _compare_with_serial_loops(base, dtype, run)


def test_clamped_float32_adam_sub_blocks_equal_the_serial_loop_bitwise():
    """cpu_lowp's ``adam_f32`` (the gradient transform fused in), as above."""
    from fastadam.kernels import _blocked, cpu_lowp
    n = _blocked.MIN_BYTES // 4 + _blocked.CHUNK + 77
    rng = np.random.default_rng(4)
    base = [rng.standard_normal(n).astype(np.float32) for _ in range(4)]
    base[3] = np.abs(base[3])
    s = (np.float32(0.5), np.float32(0.3)) + _kernel_scalars("adam", np.float32)
    par = [a.copy() for a in base]
    ser = [a.copy() for a in base]
    cpu_lowp.get("adam_f32", True)(*par, *s)
    cpu_lowp.get("adam_f32", False)(*ser, *s)
    for a, b in zip(par, ser):
        assert np.array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.mark.parametrize("fmt", ["float16", "bfloat16"])
def test_master_weight_sub_blocks_are_float32_adam_and_round_by_index(fmt):
    """Master weights at a size that takes the sub-block form: the master is float32 Adam
    bit for bit, and the stochastically rounded copy uses each element's own index."""
    from fastadam.lowp import master
    from fastadam.kernels import _blocked
    n = _blocked.MIN_BYTES // 4 + _blocked.CHUNK + 77
    dt = np.dtype(np.float16) if fmt == "float16" else \
        np.dtype(pytest.importorskip("ml_dtypes").bfloat16)
    rng = np.random.default_rng(5)
    w = rng.standard_normal(n).astype(np.float32)
    lo_bits = master.encode_param(w, fmt)
    w = master.decode_param(lo_bits, fmt).astype(np.float32)
    lo = lo_bits.view(dt)
    g = rng.standard_normal(n).astype(np.float32)
    m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
    w32, m32, v32 = w.copy(), m.copy(), v.copy()
    hp = dict(step=1, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8)
    F.adam_(lo, g, m, v, master_param=w, backend="numba", param_rounding="stochastic", **hp)
    F.adam_(w32, g, m32, v32, backend="numba", **hp)
    assert np.array_equal(w, w32) and np.array_equal(m, m32) and np.array_equal(v, v32)
    assert np.array_equal(lo.view(np.uint16), master.encode_param(w, fmt, "stochastic", 1))


# -- no recompilation ------------------------------------------------------------------
def _n_signatures():
    return {k: len(d.signatures) for k, d in cpu._compiled.items()}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_steps_do_not_recompile(dtype):
    rng = np.random.default_rng(0)
    opt = fastadam.Adam({"w": rng.standard_normal(100).astype(dtype)}, lr=1e-2)
    opt.grads["w"][...] = rng.standard_normal(100)
    p, g = rng.standard_normal(100).astype(dtype), rng.standard_normal(100).astype(dtype)
    m, v = np.zeros_like(p), np.zeros_like(p)
    opt.step()
    F.adam_(p, g, m, v, step=1, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8)
    before = _n_signatures()
    for t in range(2, 8):
        opt.param_groups[0]["lr"] = 1e-2 / t          # a schedule
        opt.step()
        F.adam_(p, g, m, v, step=t, lr=1e-3 / t, beta1=0.9, beta2=0.999, eps=1e-8)
    assert _n_signatures() == before


def test_import_does_not_import_numba_or_torch():
    code = ("import sys, fastadam; "
            "print(sorted(m for m in ('numba', 'torch', 'llvmlite') if m in sys.modules))")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# -- the façade's cached hot path --------------------------------------------------------
FACADES = [
    ("Adam", {}, "adam_", lambda st: dict(exp_avg=st["exp_avg"], exp_avg_sq=st["exp_avg_sq"])),
    ("Adam", {"amsgrad": True, "weight_decay": 0.1}, "adam_",
     lambda st: dict(exp_avg=st["exp_avg"], exp_avg_sq=st["exp_avg_sq"],
                     max_exp_avg_sq=st["max_exp_avg_sq"])),
    ("SGD", {"momentum": 0.9, "nesterov": True}, "sgd_",
     lambda st: dict(momentum_buffer=st["momentum_buffer"])),
    ("NAdam", {}, "nadam_", lambda st: dict(exp_avg=st["exp_avg"], exp_avg_sq=st["exp_avg_sq"])),
]


def _functional_kwargs(cls, group, step, kw):
    hp = {k: v for k, v in group.items() if k not in ("params", "betas", "foreach",
                                                       "fused", "capturable",
                                                       "differentiable")}
    if "betas" in group:
        hp["beta1"], hp["beta2"] = group["betas"]
    if cls in ("Adam", "NAdam"):
        hp["step"] = step
    if cls == "SGD":
        hp["first_step"] = step == 1
    if cls == "Adam":
        hp["decoupled_weight_decay"] = group.get("decoupled_weight_decay", False)
    hp.update(kw)
    return hp


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls,kwargs,fname,states", FACADES, ids=[f[0] + str(i) for i, f in
                                                                  enumerate(FACADES)])
def test_cached_step_equals_functional(dtype, cls, kwargs, fname, states):
    """Bitwise equal to the functional API over steps, with the lr changing mid-way."""
    rng = np.random.default_rng(1)
    w0 = rng.standard_normal(257).astype(dtype)
    opt = getattr(fastadam, cls)({"w": w0.copy()}, lr=1e-2, backend="numba", **kwargs)
    p = w0.copy()
    ref_state = {}
    mu_product = 1.0
    for t in range(1, 7):
        g = rng.standard_normal(257).astype(dtype)
        opt.grads["w"][...] = g
        if t == 4:
            opt.param_groups[0]["lr"] = 3e-3
        group = dict(opt.param_groups[0])
        opt.step()
        st = opt.state[0][str(np.dtype(dtype))]
        if not ref_state:
            ref_state = {k: np.zeros_like(p) for k in states(st)}
        kw = _functional_kwargs(cls, group, t, dict(ref_state))
        if cls == "NAdam":
            kw["mu_product"] = mu_product
            mu_product = F.nadam_(p, g.copy(), backend="numba", **kw)
        else:
            getattr(F, fname)(p, g.copy(), backend="numba", **kw)
        assert np.array_equal(opt.params["w"], p), f"step {t}"
        for k, a in ref_state.items():
            assert np.array_equal(st[k], a), f"{k} at step {t}"


@pytest.mark.parametrize("change,exc", [
    (lambda g: g.__setitem__("lr", -1.0), ValueError),
    (lambda g: g.__setitem__("betas", (1.0, 0.999)), ValueError),
    (lambda g: g.__setitem__("betas", (False, 0.999)), TypeError),   # 0 == False: typed key
    (lambda g: g.__setitem__("amsgrad", 0), TypeError),
    (lambda g: g.__setitem__("eps", float("nan")), ValueError),
])
def test_cached_step_still_validates(change, exc):
    opt = fastadam.Adam({"w": np.ones(64, np.float32)}, lr=1e-2, betas=(0.0, 0.999))
    opt.param_groups[0]["amsgrad"] = False
    opt.grads["w"][...] = 1.0
    opt.step()
    opt.step()                                  # now served from the cache
    before = opt.state_dict()
    w = opt.params["w"].copy()
    change(opt.param_groups[0])
    with pytest.raises(exc):
        opt.step()
    after = opt.state_dict()
    assert np.array_equal(opt.params["w"], w)
    assert after["state"][0]["step"] == before["state"][0]["step"]
    for k in ("exp_avg", "exp_avg_sq"):
        assert np.array_equal(after["state"][0][k], before["state"][0][k])


def test_cached_step_sees_mutated_list_betas():
    """A list of betas mutated in place between steps is re-read (and re-checked)."""
    opt = fastadam.Adam({"w": np.ones(8)}, lr=1e-2)
    opt.grads["w"][...] = 1.0
    betas = [0.9, 0.999]
    opt.param_groups[0]["betas"] = betas
    opt.step()
    opt.step()
    betas[0] = 1.5
    with pytest.raises(ValueError, match="beta"):
        opt.step()


def test_replaced_state_array_is_checked():
    opt = fastadam.Adam({"w": np.ones(64, np.float32)}, lr=1e-2)
    opt.grads["w"][...] = 1.0
    opt.step()
    st = opt.state[0]["float32"]
    w = opt.params["w"].copy()
    st["exp_avg"] = np.zeros(32, np.float32)          # wrong length: must not be written
    with pytest.raises(ValueError, match="exp_avg"):
        opt.step()
    assert np.array_equal(opt.params["w"], w)
    st["exp_avg"] = np.zeros(64, np.float32)          # a valid replacement is used
    opt.step()
    assert np.all(st["exp_avg"] != 0)


@pytest.mark.parametrize("cls,kwargs", [("Adam", {}), ("Adam", {"amsgrad": True}),
                                        ("RMSprop", {"centered": True, "momentum": 0.9}),
                                        ("SGD", {"momentum": 0.9}), ("NAdam", {})])
def test_step_allocates_nothing_proportional_to_size(cls, kwargs):
    import tracemalloc
    n = 1 << 18                                   # 1 MiB per float32 buffer
    opt = getattr(fastadam, cls)({"w": np.ones(n, np.float32)}, **kwargs)
    opt.grads["w"][...] = 0.5
    opt.step()
    opt.step()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        opt.step()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024, f"a step allocated {peak} bytes for {n} params"
