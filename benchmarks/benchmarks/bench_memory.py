"""Memory of the NumPy façade's construction (``fastadam.Adam(params)``) and first steps.

``peakmem_construct``: the peak resident set while an optimizer is built over float32
parameters of 8 arrays (the process's own memory included, the parameters among it);
construction copies each array into the flat buffer and releases it, so the peak is
the parameters plus about the largest array.  ``track_construct_added_mib`` and
``track_steps_added_mib``: measured in a new process
(:func:`fastadam.bench.memory.facade_memory`), what construction and two steps add
above the resident set before construction, in MiB.
"""

import numpy as np

SIZES = {"8x4M": [1 << 22] * 8, "mixed-18M": [1 << 22, 3 << 20, 3 << 20, 2 << 20, 2 << 20,
                                              1 << 20, 1 << 20, 1 << 20, 1 << 20]}


class FacadeConstruction:
    params = [list(SIZES)]
    param_names = ["params"]
    timeout = 300

    def setup(self, params):
        import fastadam
        warm = fastadam.Adam({"w": np.full(1 << 17, 0.5, np.float32)})
        warm.grads["w"][...] = 0.01
        warm.step()
        self.params_ = {f"p{i}": np.full(n, 0.5, np.float32)
                        for i, n in enumerate(SIZES[params])}

    def peakmem_construct(self, params):
        import fastadam
        fastadam.Adam(self.params_)


class FacadeMemory:
    params = [list(SIZES)]
    param_names = ["params"]
    timeout = 300
    number = 1
    repeat = 1

    def setup_cache(self):
        from fastadam.bench.memory import facade_memory
        return {k: facade_memory(v, "Adam", steps=2) for k, v in SIZES.items()}

    def track_construct_added_mib(self, figures, params):
        return figures[params]["construct_added"] / 2 ** 20

    def track_steps_added_mib(self, figures, params):
        return figures[params]["steps_added"] / 2 ** 20

    track_construct_added_mib.unit = "MiB"
    track_steps_added_mib.unit = "MiB"
