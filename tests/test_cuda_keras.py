"""The CUDA Keras kernels (fastadam/kernels/cuda_keras.py) against the numba CPU ones.

Each kernel of :mod:`fastadam.kernels.cuda_keras` runs two steps from the same state as
:mod:`fastadam.kernels.cpu_keras`'s kernel of the same name (itself checked against
Keras' own optimizers in tests/test_keras_parity.py): float64 agrees to a few units in
the last place, float32 to a few float32 ulps.  Without a GPU these run under numba's
CUDA simulator (tests/conftest.py), with a small grid so that several blocks and a
grid-stride remainder run; device arrays are numba device arrays and plain objects
exposing only ``__cuda_array_interface__`` (as torch CUDA tensors do), the latter
over host memory under the simulator, so the update is seen in place.
"""


import numpy as np
import pytest
import skips


skips.cuda_backend()

from numba import cuda  # noqa: E402

from fastadam.kernels import cpu_keras, cuda_keras  # noqa: E402
from fastadam.kernels import cuda as K  # noqa: E402

SIM = K.SIMULATOR
SIZES = (0, 1, 37, 300)


@pytest.fixture(autouse=True)
def small_grid(monkeypatch):
    monkeypatch.setattr(K, "BLOCK_SIZE", 16)     # 48 threads: 300 = 6 strides + 12
    monkeypatch.setattr(K, "MAX_BLOCKS", 3)


class CAIArray:
    """A device array known only by its ``__cuda_array_interface__`` (over host memory
    under the simulator; over a numba device array on a GPU)."""

    def __init__(self, x):
        if SIM:
            self.host = x
            ptr = x.__array_interface__["data"][0]
        else:  # pragma: no cover - real GPU
            self.dev = cuda.to_device(x)
            ptr = self.dev.__cuda_array_interface__["data"][0]
        self.__cuda_array_interface__ = {"shape": x.shape, "typestr": x.dtype.str,
                                         "data": (ptr, False), "strides": None,
                                         "version": 3, "stream": None}

    def get(self):
        return self.host.copy() if SIM else self.dev.copy_to_host()  # pragma: no branch


def to_dev(x, kind):
    x = np.ascontiguousarray(x).copy()
    return cuda.to_device(x) if kind == "numba" else CAIArray(x)


def get(d):
    return d.get() if isinstance(d, CAIArray) else d.copy_to_host()


# --- the kernels' arguments: (states, scalars as Python values) -------------------------
# Scalars in the rules' order: (gscale, decay, ...); states where a root needs them >= 0.

def _states(kname, n, rng):
    pos = lambda: rng.random(n) + 0.1          # noqa: E731
    if kname.startswith("rmsprop"):
        vel = pos()
        out = [vel]
        if "centered" in kname:
            ga = 0.3 * rng.standard_normal(n)
            out[0] = ga * ga + vel + 0.5          # v - ga^2 stays > 0 after the updates
            out.append(ga)
        if kname.endswith("momentum"):
            out.append(rng.standard_normal(n))
        return out
    return {"adagrad": lambda: [pos()], "sgd": lambda: [],
            "sgd_momentum": lambda: [rng.standard_normal(n)],
            "adadelta": lambda: [pos(), pos()],
            "adamax": lambda: [rng.standard_normal(n), pos()]}[kname]()


GSCALE, DECAY = 0.75, 1.0 - 0.004 * 0.01
KERNELS = [  # (id, kernel, scalars after (gscale, decay))
    ("rmsprop", "rmsprop", (0.9, 0.1, 0.01, 1e-7)),
    ("rmsprop_momentum", "rmsprop_momentum", (0.9, 0.1, 0.01, 1e-7, 0.5)),
    ("rmsprop_centered", "rmsprop_centered", (0.9, 0.1, 0.01, 1e-7)),
    ("rmsprop_centered_momentum", "rmsprop_centered_momentum",
     (0.9, 0.1, 0.01, 1e-7, 0.5)),
    ("adagrad", "adagrad", (0.01, 1e-7)),
    ("sgd", "sgd", (0.01,)),
    ("sgd_momentum", "sgd_momentum", (0.01, 0.9, False)),
    ("sgd_nesterov", "sgd_momentum", (0.01, 0.9, True)),
    ("adadelta", "adadelta", (0.95, 0.05, 1.0, 1e-7)),
    ("adamax", "adamax", (0.1, 0.999, 1e-7, -0.01 / (1 - 0.9 ** 3))),
]


def _scalars(dtype, rest, gscale=GSCALE, decay=DECAY):
    c = np.dtype(dtype).type
    return tuple(x if isinstance(x, bool) else c(x) for x in (gscale, decay) + rest)


def _close(a, b, dtype, what):
    eps = np.finfo(dtype).eps
    scale = np.max(np.abs(b[np.isfinite(b)]), initial=1.0)
    np.testing.assert_allclose(a, b, rtol=4 * eps, atol=4 * eps * scale, err_msg=what)


def _two_steps(kname, rest, n, dtype, kind, seed, poison=False):
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(n).astype(dtype)
    st = [s.astype(dtype) for s in _states(kname, n, rng)]
    grads = [rng.standard_normal(n).astype(dtype) for _ in range(2)]
    if poison and n > 3:             # NaN and Inf propagate as on the CPU (torch's max)
        grads[0][1], grads[1][2] = np.nan, np.inf
    scal = _scalars(dtype, rest)
    dp, dst = to_dev(p, kind), [to_dev(s, kind) for s in st]
    for g in grads:
        cpu_keras.run(kname, (p, g, *st), scal)
        cuda_keras.run(kname, (dp, to_dev(g, kind), *dst), scal)
        _close(get(dp), p, dtype, f"{kname} param")
        for k, (d, h) in enumerate(zip(dst, st)):
            _close(get(d), h, dtype, f"{kname} state {k}")
    return p


@pytest.mark.parametrize("kid,kname,rest", KERNELS, ids=[k[0] for k in KERNELS])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_each_kernel_equals_cpu(kid, kname, rest, dtype):
    p = _two_steps(kname, rest, 300, dtype, "cai", seed=len(kid))
    assert np.isfinite(p).all()


@pytest.mark.parametrize("kid,kname,rest", KERNELS, ids=[k[0] for k in KERNELS])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("kind", ["numba", "cai"])
def test_every_size_and_array_kind(kid, kname, rest, n, kind):
    _two_steps(kname, rest, n, np.float64, kind, seed=n)
    _two_steps(kname, rest, n, np.float32, kind, seed=n + 1)


@pytest.mark.parametrize("kid,kname,rest", KERNELS, ids=[k[0] for k in KERNELS])
def test_nan_and_inf_propagate_as_on_the_cpu(kid, kname, rest):
    p = _two_steps(kname, rest, 37, np.float32, "cai", seed=5, poison=True)
    assert not np.isfinite(p[1:3]).all()            # the poisoned elements show it
    assert np.isfinite(np.delete(p, [1, 2])).all()  # and no other


def test_kernels_are_the_cpu_kernels_names():
    assert cuda_keras.KERNEL_NAMES == cpu_keras.KERNEL_NAMES
    with pytest.raises(KeyError, match="no cuda_keras kernel named 'adam'"):
        cuda_keras.get("adam")


def test_an_independent_rmsprop_step():
    """One centered-momentum RMSprop step against Keras' math written out in NumPy
    (float64), so that both kernels are not merely equal to each other."""
    rng = np.random.default_rng(9)
    n = 40
    p, g = rng.standard_normal(n), rng.standard_normal(n)
    ga = 0.3 * rng.standard_normal(n)
    vel, mom = ga * ga + rng.random(n) + 0.5, rng.standard_normal(n)
    rho, lr, eps, momentum = 0.9, 0.01, 1e-7, 0.5
    ref_g = GSCALE * g
    ref_p = p * DECAY
    ref_vel = rho * vel + (1 - rho) * ref_g ** 2
    ref_ga = rho * ga + (1 - rho) * ref_g
    ref_mom = momentum * mom + lr * ref_g / np.sqrt(ref_vel - ref_ga ** 2 + eps)
    ref_p = ref_p - ref_mom
    arrs = [to_dev(a, "cai") for a in (p, g, vel, ga, mom)]
    cuda_keras.run("rmsprop_centered_momentum", arrs,
                   _scalars(np.float64, (rho, 1 - rho, lr, eps, momentum)))
    for d, ref in zip([arrs[0], arrs[2], arrs[3], arrs[4]], [ref_p, ref_vel, ref_ga, ref_mom]):
        np.testing.assert_allclose(get(d), ref, rtol=1e-13, atol=1e-15)


def test_launches_go_through_the_cuda_launcher(monkeypatch):
    """cuda_keras launches with cuda.launch (its streams, grid, warning filter): one
    launch of the grid cuda.grid_size gives, the scalars after the arrays."""
    calls = []
    real = K.launch
    monkeypatch.setattr(K, "launch", lambda kernel, blocks, threads, stream, args, joins=():
                        (calls.append((blocks, threads, len(args))),
                         real(kernel, blocks, threads, stream, args, joins)))
    a = [to_dev(np.ones(100), "cai") for _ in range(3)]
    cuda_keras.run("adagrad", a, _scalars(np.float64, (0.01, 1e-7)))
    assert calls == [(K.grid_size(100)[0], 16, 3 + 4)]
    cuda_keras.run("adagrad", [to_dev(np.ones(0), "cai") for _ in range(3)],
                   _scalars(np.float64, (0.01, 1e-7)))
    assert len(calls) == 1                          # nothing launched for empty buffers
