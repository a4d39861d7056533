"""Memory of the NumPy façade's construction (``fastadam.Adam(params)``) and first steps,
and of fastadam.torch.Adam's construction and training steps against torch's fused Adam
(:class:`TorchTrainingMemory`, :class:`TorchMemoryAdded`).

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


class TorchTrainingMemory:
    """fastadam.torch.Adam against torch's fused Adam: 4 ``Linear(4096, 4096)`` layers
    (256 MiB of float32 parameters), the optimizer made and two training steps, with
    fresh gradients each step (``zero_grad()``) or kept ones
    (``zero_grad(set_to_none=False)``).

    ``peakmem_construct_and_train``: asv's peak resident set of the process (the model,
    its gradients and Adam's moments; target: fastadam within 2% of torch fused, plus
    numba's code).  ``track_*_mib``: measured in a new process
    (:func:`fastadam.bench.memory.torch_memory`), what construction and the steps add
    above the resident set before construction.
    """

    params = [["fastadam.torch", "torch fused"], ["fresh", "bound"]]
    param_names = ["optimizer", "grads"]
    timeout = 600
    LAYERS, WIDTH = 4, 4096

    def setup(self, optimizer, grads):
        try:
            import torch  # noqa: F401
        except ImportError:
            raise NotImplementedError("torch is not installed")
        import fastadam.torch as ft
        self.torch = torch
        self.make = ((lambda ps: torch.optim.Adam(ps, lr=1e-3, fused=True))
                     if optimizer == "torch fused" else (lambda ps: ft.Adam(ps, lr=1e-3)))
        warm = torch.nn.Linear(256, 256)
        self._train(warm, self.make(warm.parameters()), torch.randn(4, 256), 2, grads)
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(*[torch.nn.Linear(self.WIDTH, self.WIDTH)
                                           for _ in range(self.LAYERS)])
        self.x = torch.randn(8, self.WIDTH)

    @staticmethod
    def _train(model, opt, x, steps, grads):
        for _ in range(steps):
            opt.zero_grad(set_to_none=grads == "fresh")
            model(x).square().mean().backward()
            opt.step()

    def peakmem_construct_and_train(self, optimizer, grads):
        self._train(self.model, self.make(self.model.parameters()), self.x, 2, grads)


class TorchMemoryAdded:
    """What fastadam.torch.Adam's construction and three training steps add above the
    resident set before construction, in MiB, next to torch fused's (see
    :class:`TorchTrainingMemory`; measured in new processes)."""

    params = [["fastadam.torch", "torch fused"], ["fresh", "bound"]]
    param_names = ["optimizer", "grads"]
    timeout = 900
    number = 1
    repeat = 1

    def setup_cache(self):
        import importlib.util
        if importlib.util.find_spec("torch") is None:
            return None
        from fastadam.bench.memory import torch_memory
        return {(o, g): torch_memory(o, g, TorchTrainingMemory.LAYERS,
                                     TorchTrainingMemory.WIDTH, steps=3)
                for o in self.params[0] for g in self.params[1]}

    def setup(self, figures, optimizer, grads):
        if figures is None:
            raise NotImplementedError("torch is not installed")

    def track_construct_added_mib(self, figures, optimizer, grads):
        return figures[(optimizer, grads)]["construct_added"] / 2 ** 20

    def track_steps_added_mib(self, figures, optimizer, grads):
        r = figures[(optimizer, grads)]
        return (r["peak_steps"] - r["rss_before"]) / 2 ** 20

    track_construct_added_mib.unit = "MiB"
    track_steps_added_mib.unit = "MiB"
