"""The cuda kernels compile for a real GPU target, with the types the design asks for.

The simulator runs the kernels as Python, so it cannot see numba-CUDA typing or
code generation.  This test compiles every kernel for sm_90 with numba-cuda and
NVVM (no GPU needed) in a subprocess without the simulator, and checks that

* the grid-stride loop index is int64 (buffers over 2**31 elements);
* every float variable of a float32 kernel is float32, and its PTX has no
  double-precision instruction (no silent promotion).

It is skipped where the toolchain is not installed
(``pip install numba-cuda nvidia-nvvm nvidia-cuda-nvrtc``).
"""

import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import inspect, re, sys, types as pytypes
try:
    import numba_cuda  # noqa: F401  (the maintained CUDA target)
    from numba import cuda, types
    from numba.cuda.cudadrv.nvvm import NVVM
    NVVM()
    from numba.cuda.compiler import compile_cuda
    import numba.cuda.dispatcher as D
except Exception as e:
    print("SKIP", type(e).__name__, str(e).splitlines()[0] if str(e) else "")
    sys.exit(0)
if not cuda.is_available():
    # Device functions are compiled for the current device's compute capability;
    # with no device, name one.
    D.get_current_device = lambda: pytypes.SimpleNamespace(compute_capability=(9, 0))
from fastadam import _scalars
from fastadam.kernels import cuda as K
assert not K.SIMULATOR
for name in K.KERNEL_NAMES:
    assert name in _scalars.KERNEL_STATES, name
    for dt in (types.float32, types.float64):
        arr = types.Array(dt, 1, "C")
        nar = 2 + len(_scalars.KERNEL_STATES[name])
        params = list(inspect.signature(getattr(K, name)).parameters)
        sig = (arr,) * nar + tuple(types.boolean if p in ("first", "nesterov") else dt
                                   for p in params[nar:])
        fn = K.get(name).py_func
        cres = compile_cuda(fn, types.void, sig, cc=(9, 0))
        tm = cres.fndesc.typemap
        assert str(tm["i"]) == "int64", (name, tm["i"])
        if dt == types.float32:
            bad = {k: str(v) for k, v in tm.items() if "float64" in str(v)}
            assert not bad, (name, bad)
        ptx, _ = cuda.compile_ptx(fn, sig, device=False, cc=(9, 0))
        f64_ops = re.findall(r"^\s*[a-z.]+\.f64\b", ptx, re.M)
        if dt == types.float32:
            assert not f64_ops, (name, f64_ops[:5])
        else:
            assert f64_ops, name
        print("OK", name, dt)
"""


def test_kernels_compile_for_sm90_with_the_right_types():
    env = dict(os.environ)
    env["NUMBA_ENABLE_CUDASIM"] = "0"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                       timeout=300, env=env, cwd=root)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    if r.stdout.startswith("SKIP"):
        pytest.skip("numba-cuda/NVVM not installed: " + r.stdout.strip())
    from fastadam.kernels import cuda as K
    assert r.stdout.count("OK") == 2 * len(K.KERNEL_NAMES), r.stdout
