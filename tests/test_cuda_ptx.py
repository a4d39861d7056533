"""The cuda kernels compile for a real GPU target, with the types the design asks for.

The simulator runs the kernels as Python, so it cannot see numba-CUDA typing or
code generation.  This test compiles every kernel of :mod:`fastadam.kernels.cuda`,
:mod:`~fastadam.kernels.cuda_keras`, :mod:`~fastadam.kernels.cuda_lowp` and
:mod:`~fastadam.kernels.cuda_sparse` for
sm_90 with numba-cuda and NVVM (no GPU needed), in a subprocess without the
simulator, with the argument types their launches pass, and checks that

* the loop indices are int64 (buffers over 2**31 elements);
* every float variable of a float32 kernel is float32, and its PTX has no
  double-precision instruction (no silent promotion); the gradient-norm
  reductions (``sumsq_*``), which accumulate in float64 on purpose, excepted.

It is skipped where the toolchain is not installed
(``pip install "numba-cuda[cu12]"``: numba-cuda, NVVM and NVRTC); the
table of signatures is checked against every kernel without it.
"""

import inspect
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def signatures(types):
    """``(module, name, py_func, argument types, float32?, f64 allowed?)`` for every
    kernel of the four modules, each float kernel in float32 and float64 (as launched:
    Python ints are int64, flags booleans, scalars of the buffer dtype)."""
    from fastadam import _scalars
    from fastadam.kernels import cuda as K
    from fastadam.kernels import cuda_keras as KK
    from fastadam.kernels import cuda_lowp as L
    from fastadam.kernels import cuda_sparse as S

    f32, f64, i64, b1 = types.float32, types.float64, types.int64, types.boolean

    def arr(dt, nd=1):
        return types.Array(dt, nd, "C")

    out = []
    for name in K.KERNEL_NAMES:
        nar = 2 + len(_scalars.KERNEL_STATES[name])
        params = list(inspect.signature(getattr(K, name)).parameters)
        for dt in (f32, f64):
            sig = (arr(dt),) * nar + tuple(b1 if p in ("first", "nesterov") else dt
                                           for p in params[nar:])
            out.append(("cuda", name, K.get(name).py_func, sig, dt == f32, False))
    for name in KK.KERNEL_NAMES:    # arrays, then scalars s0, s1, ... (and nesterov)
        fn = KK.get(name).py_func
        params = list(inspect.signature(fn).parameters)
        for dt in (f32, f64):
            sig = tuple(b1 if p == "nesterov" else dt if p[0] == "s" and p[1:].isdigit()
                        else arr(dt) for p in params)
            out.append(("cuda_keras", name, fn, sig, dt == f32, False))
    u16 = arr(types.uint16)
    adam9 = (f32,) * 9
    for name in L.KERNEL_NAMES:
        fn = L.get(name).py_func
        if name == "adam_t":
            for dt in (f32, f64):
                out.append(("cuda_lowp", name, fn, (arr(dt),) * 4 + (dt,) * 11, dt == f32,
                            False))
        elif name == "adam_bf16":
            out.append(("cuda_lowp", name, fn, (arr(f32),) * 2 + (u16, u16, i64, i64, f32,
                                                                  f32) + adam9, True, False))
        elif name == "adam_int8":
            out.append(("cuda_lowp", name, fn, (arr(f32), arr(f32), arr(types.int8), arr(f32),
                                                arr(types.uint8), arr(f32)) + (f32,) * 3
                        + adam9, True, False))
        elif name.startswith("master_"):
            _, _, g, s = name.split("_")
            garr = arr(f32) if g == "gfloat32" else u16
            sarr = arr(f32) if s == "sfloat32" else u16
            out.append(("cuda_lowp", name, fn, (u16, garr, arr(f32), sarr, sarr, i64, i64, i64,
                                                b1, f32, f32) + adam9, True, False))
        elif name == "sumsq_total":
            out.append(("cuda_lowp", name, fn, (arr(f64, 2), i64, f64, arr(f64)), False, True))
        elif name.startswith("sumsq_"):
            for dt in ((f32, f64) if name == "sumsq_float" else (f32,)):
                g = arr(dt) if name == "sumsq_float" else u16
                out.append(("cuda_lowp", name, fn, (g, f64, dt, dt, dt, b1, arr(f64, 2), i64),
                            dt == f32, True))
        else:  # pragma: no cover - a kernel this table does not know
            raise AssertionError(f"no signature for cuda_lowp.{name}")
    nscal = {"sparse_adam": 5, "sparse_adagrad": 3, "sparse_sgd": 2, "rowwise_adagrad": 5,
             "lazy_adam": 9, "lazy_adam_amsgrad": 9}
    for name in S.KERNEL_NAMES:
        for dt in (f32, f64):
            fn = S.get(name, "float32" if dt == f32 else "float64", S.SPARSE_BLOCK).py_func
            for idx in (types.int32, types.int64):
                if name == "rowwise_adagrad":
                    tables = (arr(dt, 2), arr(dt))
                else:
                    tables = (arr(dt, 2),) * (1 + len(_scalars.SPARSE_KERNEL_STATES[name]))
                sig = tables + (arr(idx), arr(idx), arr(i64), arr(dt, 2)) + (dt,) * nscal[name]
                out.append(("cuda_sparse", name, fn, sig, dt == f32, False))
    return out


SCRIPT = r"""
import re, sys, types as pytypes
try:
    import numba_cuda  # noqa: F401  (the maintained CUDA target)
    from numba import cuda, types
    from numba.cuda.cudadrv.nvvm import NVVM
    NVVM()
    from numba.cuda.cudadrv import nvrtc
    nvrtc._get_nvrtc_version()          # NVRTC's library (compile_ptx needs it)
    from numba.cuda.compiler import compile_cuda
    import numba.cuda.dispatcher as D
except Exception as e:
    print("SKIP", type(e).__name__, str(e).splitlines()[0] if str(e) else "")
    sys.exit(0)
if not cuda.is_available():
    # Device functions are compiled for the current device's compute capability;
    # with no device, name one.
    D.get_current_device = lambda: pytypes.SimpleNamespace(compute_capability=(9, 0))
sys.path.insert(0, sys.argv[1])
from test_cuda_ptx import signatures
from fastadam.kernels import cuda as K
assert not K.SIMULATOR
INDEX = {"cuda": ("i",), "cuda_keras": ("i",), "cuda_lowp": ("i", "b"), "cuda_sparse": ("s", "j")}
for mod, name, fn, sig, is32, f64_ok in signatures(types):
    cres = compile_cuda(fn, types.void, sig, cc=(9, 0))
    tm = cres.fndesc.typemap
    for k in INDEX[mod]:
        if k in tm:
            assert str(tm[k]) == "int64", (mod, name, k, tm[k])
    ptx, _ = cuda.compile_ptx(fn, sig, device=False, cc=(9, 0))
    f64_ops = re.findall(r"^\s*[a-z.]+\.f64\b", ptx, re.M)
    if is32 and not f64_ok:
        bad = {k: str(v) for k, v in tm.items() if "float64" in str(v)}
        assert not bad, (mod, name, bad)
        assert not f64_ops, (mod, name, f64_ops[:5])
    elif not is32 and not f64_ok:
        assert f64_ops, (mod, name)
    print("OK", mod, name, "f32" if is32 else "f64")
"""


def test_kernels_compile_for_sm90_with_the_right_types():
    env = dict(os.environ)
    env["NUMBA_ENABLE_CUDASIM"] = "0"
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    r = subprocess.run([sys.executable, "-c", SCRIPT, HERE], capture_output=True, text=True,
                       timeout=600, env=env, cwd=ROOT)
    if r.returncode == 0 and r.stdout.startswith("SKIP"):
        pytest.skip("numba-cuda / NVVM / NVRTC not installed: " + r.stdout.strip())
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    from numba import types
    want = len(signatures(types))
    assert r.stdout.count("OK") == want, r.stdout


def test_the_signature_table_covers_every_kernel():
    """Every kernel of the four modules has argument types, one per parameter (checked
    without the toolchain, so that a new kernel cannot skip the compile test)."""
    from numba import types

    from fastadam.kernels import cuda as K
    from fastadam.kernels import cuda_keras as KK
    from fastadam.kernels import cuda_lowp as L
    from fastadam.kernels import cuda_sparse as S
    sigs = signatures(types)
    seen = {(m, n) for m, n, *_ in sigs}
    want = {("cuda", n) for n in K.KERNEL_NAMES} | {("cuda_lowp", n) for n in L.KERNEL_NAMES} \
        | {("cuda_sparse", n) for n in S.KERNEL_NAMES} \
        | {("cuda_keras", n) for n in KK.KERNEL_NAMES}
    assert seen == want
    for mod, name, fn, sig, _, _ in sigs:
        assert len(sig) == len(inspect.signature(fn).parameters), (mod, name)
