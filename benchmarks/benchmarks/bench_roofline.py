"""The memory roofline: loops moving exactly an optimizer's bytes with trivial math.

A step's ``% of roofline`` is the roofline time here over the step's time in
bench_optimizers.py at the same size (``fastadam bench`` prints it directly).
"""

import numpy as np

from . import SIZES


class Roofline:
    params = ([2, 3, 4, 5], ["serial", "parallel", "serial prefetched", "parallel prefetched"],
              SIZES)
    param_names = ["arrays_read", "variant", "size"]

    def setup(self, k, variant, n):
        from fastadam.bench import roofline as _roofline
        from fastadam import _alloc      # aligned, as fastadam's own flat buffers
        self.arrays = [_alloc.full(n, 0.5, np.float32) for _ in range(k)]
        self.a = np.float32(1e-12)
        self.loop = _roofline.get(k, *_roofline.VARIANTS[variant])
        self.time_roofline(k, variant, n)

    def time_roofline(self, *args):
        self.loop(*self.arrays, self.a)
