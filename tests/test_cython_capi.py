"""The C-level API: another Cython extension cimports fastadam.capi and runs steps nogil.

Builds a tiny extension in a temporary directory (cythonize + build_ext --inplace,
in a subprocess with a timeout), imports it, and checks its steps, float32 and
float64, serial and parallel, against the NumPy reference.
"""

import importlib.util
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

if os.environ.get("FASTADAM_REQUIRE_CYTHON") != "1":  # CI sets it: then these must run
    pytest.importorskip("Cython", reason="building a C API user needs Cython (the [test] extra)")
    pytest.importorskip("fastadam._cython.kernels",
                        reason="the Cython extension is not built "
                               "(python setup.py build_ext --inplace)")

import fastadam  # noqa: E402
from fastadam import _scalars, reference  # noqa: E402

pytestmark = pytest.mark.slow  # builds an extension: ~10 s; still run in CI

USER_PYX = r'''
# cython: language_level=3, boundscheck=False, wraparound=False
from cython cimport floating
from fastadam.capi cimport adam, adam_amsgrad, nadam, sgd_momentum, openmp_enabled
from fastadam.capi cimport sparse_adam, rowwise_adagrad
from libc.stdint cimport int64_t


def sparse_adam_step(floating[:, ::1] p, floating[:, ::1] m, floating[:, ::1] v,
                     const int64_t[::1] idx, const floating[:, ::1] vals, tuple s,
                     bint parallel):
    """One row-sparse SparseAdam step through the C API; returns its status."""
    cdef floating c[5]
    cdef int j, err
    for j in range(5):
        c[j] = s[j]
    with nogil:
        err = sparse_adam(&p[0, 0], &m[0, 0], &v[0, 0], p.shape[0], p.shape[1], &idx[0],
                          &vals[0, 0], idx.shape[0], c[0], c[1], c[2], c[3], c[4], parallel)
    return err


def rowwise_adagrad_step(double[:, ::1] p, double[::1] st, const int64_t[::1] idx,
                         const double[:, ::1] vals, tuple s):
    cdef int err
    cdef double c0 = s[0], c1 = s[1], c2 = s[2], c3 = s[3], c4 = s[4]
    with nogil:
        err = rowwise_adagrad(&p[0, 0], &st[0], p.shape[0], p.shape[1], &idx[0], &vals[0, 0],
                              idx.shape[0], c0, c1, c2, c3, c4, False)
    return err


def adam_step(floating[::1] p, const floating[::1] g, floating[::1] m, floating[::1] v,
              floating[::1] vmax, tuple s, bint parallel):
    """One Adam/AdamW (or, with vmax non-empty, AMSGrad) step through the C API."""
    cdef Py_ssize_t n = p.shape[0]
    cdef floating c[9]
    cdef int j
    for j in range(9):
        c[j] = s[j]
    with nogil:
        if vmax.shape[0]:
            adam_amsgrad(&p[0], &g[0], &m[0], &v[0], &vmax[0], n,
                         c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], parallel)
        else:
            adam(&p[0], &g[0], &m[0], &v[0], n,
                 c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], parallel)


def nadam_step(double[::1] p, const double[::1] g, double[::1] m, double[::1] v, tuple s):
    cdef double c[10]
    cdef int j
    for j in range(10):
        c[j] = s[j]
    with nogil:
        nadam(&p[0], &g[0], &m[0], &v[0], p.shape[0],
              c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9], parallel=False)


def sgd_step(float* p_unused=NULL):
    pass


def has_openmp():
    return openmp_enabled()
'''

# a raw-pointer caller, no memoryviews on the user side
USER_PYX = USER_PYX.replace('''def sgd_step(float* p_unused=NULL):
    pass
''', '''def sgd_step(size_t p_addr, size_t g_addr, size_t b_addr, Py_ssize_t n, tuple s):
    """SGD with momentum on raw float32 addresses (e.g. from ndarray.ctypes.data)."""
    cdef float* p = <float*>p_addr
    cdef float* g = <float*>g_addr
    cdef float* b = <float*>b_addr
    cdef float c0 = s[0], c1 = s[1], c2 = s[2], c3 = s[3], c4 = s[4]
    cdef bint first = s[5], nesterov = s[6]
    with nogil:
        sgd_momentum(p, g, b, n, c0, c1, c2, c3, c4, first, nesterov, True)
''')

SETUP = r'''
import sys
from setuptools import setup, Extension
from Cython.Build import cythonize
setup(name="capi_user", script_args=["build_ext", "--inplace", "-q"],
      ext_modules=cythonize([Extension("capi_user", ["capi_user.pyx"])],
                            include_path=[sys.argv[1]], language_level=3, quiet=True))
'''


@pytest.fixture(scope="module")
def user_ext(tmp_path_factory):
    d = tmp_path_factory.mktemp("capi")
    (d / "capi_user.pyx").write_text(USER_PYX)
    (d / "build_it.py").write_text(SETUP)
    # the directory holding the fastadam package (its .pxd files are found there)
    pkg_parent = str(pathlib.Path(fastadam.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([pkg_parent] + ([env["PYTHONPATH"]]
                                                        if env.get("PYTHONPATH") else []))
    env["CFLAGS"] = "-O0"  # the user module is glue: compile it fast (-O0 wins over -O3)
    r = subprocess.run([sys.executable, "build_it.py", pkg_parent], cwd=d, env=env,
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, f"building the C API user failed:\n{r.stdout}\n{r.stderr}"
    (so,) = [p for p in d.iterdir() if p.name.startswith("capi_user") and
             p.suffix in (".so", ".pyd")]
    spec = importlib.util.spec_from_file_location("capi_user", so)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


ADAM_HP = [
    dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
         decoupled_weight_decay=False, amsgrad=False, maximize=False),
    dict(lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1,
         decoupled_weight_decay=True, amsgrad=False, maximize=True),        # AdamW
    dict(lr=1e-2, beta1=0.8, beta2=0.999, eps=1e-6, weight_decay=0.1,
         decoupled_weight_decay=False, amsgrad=True, maximize=False),       # AMSGrad + L2
]


@pytest.mark.parametrize("hp", ADAM_HP, ids=["adam", "adamw", "amsgrad"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])
def test_adam_family_through_capi_matches_reference(user_ext, hp, dtype, parallel):
    rng = np.random.default_rng(0)
    n = 10007
    p = rng.standard_normal(n).astype(dtype)
    m, v = np.zeros_like(p), np.zeros_like(p)
    vmax = np.zeros_like(p) if hp["amsgrad"] else np.zeros(0, dtype)
    pr, mr, vr = p.copy(), m.copy(), v.copy()
    vmr = np.zeros_like(p) if hp["amsgrad"] else None
    for step in range(1, 6):
        g = rng.standard_normal(n).astype(dtype)
        _, s = _scalars.adam(np.dtype(dtype), step=step, **hp)
        user_ext.adam_step(p, g, m, v, vmax, s, parallel)
        reference.adam_(pr, g, mr, vr, vmr, step=step, **hp)
        if dtype == np.float64:
            np.testing.assert_allclose(p, pr, rtol=1e-12, atol=1e-15)
        else:
            np.testing.assert_allclose(p, pr, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(m, mr, rtol=1e-5 if dtype == np.float32 else 1e-12)
        np.testing.assert_allclose(v, vr, rtol=1e-5 if dtype == np.float32 else 1e-12)
        if hp["amsgrad"]:
            np.testing.assert_allclose(vmax, vmr, rtol=1e-5 if dtype == np.float32 else 1e-12)
    assert not np.array_equal(p, rng.standard_normal(n))


def test_nadam_through_capi_matches_reference(user_ext):
    rng = np.random.default_rng(1)
    n = 513
    hp = dict(lr=2e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1, momentum_decay=4e-3,
              decoupled_weight_decay=False, maximize=False)
    p = rng.standard_normal(n)
    m, v = np.zeros(n), np.zeros(n)
    pr, mr, vr = p.copy(), m.copy(), v.copy()
    mu, mu_r = 1.0, 1.0
    for step in range(1, 5):
        g = rng.standard_normal(n)
        _, s = _scalars.nadam(np.dtype(np.float64), step=step, mu_product=mu, **hp)
        user_ext.nadam_step(p, g, m, v, s)
        mu *= _scalars.nadam_mu(hp["beta1"], hp["momentum_decay"], step)
        mu_r = reference.nadam_(pr, g, mr, vr, step=step, mu_product=mu_r, **hp)
        np.testing.assert_allclose(p, pr, rtol=1e-12)


def test_sgd_momentum_on_raw_addresses(user_ext):
    rng = np.random.default_rng(2)
    n = 70001
    p = rng.standard_normal(n).astype(np.float32)
    buf = np.zeros_like(p)
    pr, br = p.copy(), buf.copy()
    hp = dict(lr=1e-2, momentum=0.9, dampening=0.0, weight_decay=0.01, nesterov=True,
              maximize=False)
    for step in (1, 2, 3):
        g = rng.standard_normal(n).astype(np.float32)
        _, s = _scalars.sgd(np.dtype(np.float32), first=step == 1, **hp)
        user_ext.sgd_step(p.ctypes.data, g.ctypes.data, buf.ctypes.data, n, s)
        reference.sgd_(pr, g, br, first=step == 1, **hp)
        np.testing.assert_allclose(p, pr, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(buf, br, rtol=1e-5, atol=1e-6)


def test_openmp_flag_matches_backend(user_ext):
    from fastadam._cython import backend
    assert bool(user_ext.has_openmp()) == backend.openmp_enabled()


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])
def test_sparse_adam_through_capi_matches_reference(user_ext, dtype, parallel):
    rng = np.random.default_rng(3)
    rows, dim = 300, 16
    p = rng.standard_normal((rows, dim)).astype(dtype)
    m, v = np.zeros_like(p), np.zeros_like(p)
    pr, mr, vr = p.copy(), m.copy(), v.copy()
    hp = dict(lr=0.01, beta1=0.9, beta2=0.99, eps=1e-8, maximize=False)
    for step in (1, 2, 3):
        idx = ((rng.zipf(1.2, 500) - 1) % rows).astype(np.int64)     # duplicates
        vals = rng.standard_normal((500, dim)).astype(dtype)
        _, s = _scalars.sparse_adam(np.dtype(dtype), step=step, **hp)
        assert user_ext.sparse_adam_step(p, m, v, idx, vals, s, parallel) == 0
        reference.sparse_adam_(pr, idx, vals, mr, vr, step=step, **hp)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
    for a, b in ((p, pr), (m, mr), (v, vr)):
        np.testing.assert_allclose(a, b, **tol)
    # a row out of range: status -2, nothing written
    before = p.copy()
    bad = np.array([1, rows], np.int64)
    assert user_ext.sparse_adam_step(p, m, v, bad, vals[:2], s, parallel) == -2
    np.testing.assert_array_equal(p, before)


def test_rowwise_adagrad_through_capi_matches_reference(user_ext):
    rng = np.random.default_rng(4)
    rows, dim = 50, 8
    p = rng.standard_normal((rows, dim))
    st = np.zeros(rows)
    pr, sr = p.copy(), st.copy()
    hp = dict(lr=0.1, eps=1e-8, weight_decay=0.01, maximize=True)
    idx = rng.integers(0, rows, 80).astype(np.int64)
    vals = rng.standard_normal((80, dim))
    _, s = _scalars.rowwise_adagrad(np.dtype(np.float64), dim=dim, **hp)
    assert user_ext.rowwise_adagrad_step(p, st, idx, vals, s) == 0
    reference.rowwise_adagrad_(pr, idx, vals, sr, **hp)
    np.testing.assert_allclose(p, pr, rtol=1e-12)
    np.testing.assert_allclose(st, sr, rtol=1e-12)
