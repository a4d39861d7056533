"""Adam on each host backend: the functional call and the bare compiled kernel.

(The cython backend's loops, ``run``/``bind`` and cold start are in bench_cython.py.)
"""

import numpy as np

from . import BETAS, DTYPES, EPS, LR, SIZES, SMALL, backend_available, data, zeros_like


class FunctionalAdam:
    """``fastadam.functional.adam_``: full argument checks every call."""

    params = (["numba", "cython", "numpy"], DTYPES, SIZES)
    param_names = ["backend", "dtype", "size"]

    def setup(self, backend, dtype, n):
        if not backend_available(backend):
            raise NotImplementedError(f"{backend} backend unavailable")
        if backend == "numpy" and n > SMALL[-1]:
            raise NotImplementedError("the NumPy reference is timed at small sizes only")
        from fastadam import functional
        self.f = functional.adam_
        self.p, self.g = data(n, dtype)
        self.m, self.v = zeros_like(self.p), zeros_like(self.p)
        self.backend = backend
        self.t = 0
        self.time_adam()

    def time_adam(self, *args):
        self.t += 1
        self.f(self.p, self.g, self.m, self.v, step=self.t, lr=LR, beta1=BETAS[0],
               beta2=BETAS[1], eps=EPS, backend=self.backend)


class Kernel:
    """The compiled numba kernel alone (no checks, no scalar work): serial and parallel
    variants at every size, whatever PARALLEL_THRESHOLD would choose."""

    params = (["adam", "adam_amsgrad", "rmsprop", "sgd_momentum"], ["serial", "parallel"],
              SIZES)
    param_names = ["kernel", "variant", "size"]

    def setup(self, kernel, variant, n):
        if not backend_available("numba"):
            raise NotImplementedError("numba unavailable")
        from fastadam import _scalars
        from fastadam.kernels import cpu
        hp = {"adam": ("adam", dict(step=1, lr=LR, beta1=BETAS[0], beta2=BETAS[1], eps=EPS,
                                    weight_decay=0.0, decoupled_weight_decay=False,
                                    amsgrad=False, maximize=False)),
              "adam_amsgrad": ("adam", dict(step=1, lr=LR, beta1=BETAS[0], beta2=BETAS[1],
                                            eps=EPS, weight_decay=0.0,
                                            decoupled_weight_decay=False, amsgrad=True,
                                            maximize=False)),
              "rmsprop": ("rmsprop", dict(lr=LR, alpha=0.99, eps=EPS, weight_decay=0.0,
                                          momentum=0.0, centered=False, maximize=False)),
              "sgd_momentum": ("sgd", dict(first=False, lr=LR, momentum=0.9, dampening=0.0,
                                           weight_decay=0.0, nesterov=False,
                                           maximize=False))}[kernel]
        name, self.scal = getattr(_scalars, hp[0])(np.dtype(np.float32), **hp[1])
        assert name == kernel
        p, g = data(n)
        self.arrays = [p, g] + [zeros_like(p) for _ in _scalars.KERNEL_STATES[kernel]]
        self.k = cpu.get(kernel, variant == "parallel")
        self.time_kernel()

    def time_kernel(self, *args):
        self.k(*self.arrays, *self.scal)
