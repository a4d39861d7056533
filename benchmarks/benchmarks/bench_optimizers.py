"""The façade ``step()`` of every optimizer variant, dtype and size class (numba backend)."""

import tracemalloc

from . import DTYPES, SIZES, facade, optimizers


class OptimizerStep:
    """Whole ``opt.step()`` calls: validation, scalar work and one fused kernel call."""

    params = (list(optimizers()), DTYPES, SIZES)
    param_names = ["optimizer", "dtype", "size"]
    timeout = 120

    def setup(self, label, dtype, n):
        self.opt = facade(label, n, dtype)

    def time_step(self, label, dtype, n):
        self.opt.step()


class StepMemory:
    """A step allocates nothing proportional to the parameter count.

    ``peakmem_step`` is the process's peak memory (buffers made in setup included:
    it grows with the size by exactly the buffers); ``track_step_alloc_bytes`` is
    the peak of what one step allocates (tracemalloc, which sees NumPy's arrays):
    a few hundred bytes at every size.
    """

    params = (["Adam", "Adam amsgrad", "RMSprop centered+momentum", "SGD momentum", "NAdam"],
              [4096, 1 << 22])
    param_names = ["optimizer", "size"]

    def setup(self, label, n):
        self.opt = facade(label, n, "float32")

    def peakmem_step(self, label, n):
        for _ in range(5):
            self.opt.step()

    def track_step_alloc_bytes(self, label, n):
        tracemalloc.start()
        try:
            self.opt.step()
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            self.opt.step()
            return tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()

    track_step_alloc_bytes.unit = "bytes"
