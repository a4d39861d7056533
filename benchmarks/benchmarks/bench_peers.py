"""The peers on the same work: torch.optim.Adam (for-loop, foreach, fused) and
DeepSpeedCPUAdam when importable, on one tensor and on a GPT-like model; fastadam's
façade beside them.  (fastadam.torch against torch.optim: bench_torch.py.)"""

import math

import numpy as np

from . import BETAS, EPS, LR, SIZES, data, facade, torch_or_skip

PEERS = ["torch for-loop", "torch foreach", "torch fused", "DeepSpeedCPUAdam",
         "fastadam step()"]


def _peer(name, params_grads):
    if name == "fastadam step()":
        import fastadam
        arrays = {f"p{i}": p.copy() for i, (p, _) in enumerate(params_grads)}
        opt = fastadam.Adam(arrays, lr=LR, betas=BETAS, eps=EPS)
        for i, (_, g) in enumerate(params_grads):
            opt.grads[f"p{i}"][...] = g
        return opt
    torch = torch_or_skip()
    ps = []
    for p, g in params_grads:
        # copies in torch's own memory (64-byte aligned, as a model's tensors): NumPy's
        # large arrays sit 16 bytes past a page boundary, which slows the peers' steps
        t = torch.nn.Parameter(torch.from_numpy(p).clone())
        t.grad = torch.from_numpy(g).clone()
        ps.append(t)
    if name == "DeepSpeedCPUAdam":
        try:
            from deepspeed.ops.adam import DeepSpeedCPUAdam
        except Exception:
            raise NotImplementedError("deepspeed is not installed")
        return DeepSpeedCPUAdam(ps, lr=LR, betas=BETAS, eps=EPS, adamw_mode=False)
    kw = {"torch for-loop": dict(foreach=False), "torch foreach": dict(foreach=True),
          "torch fused": dict(fused=True)}[name]
    return torch.optim.Adam(ps, lr=LR, betas=BETAS, eps=EPS, **kw)


class PeerAdamOneTensor:
    params = (PEERS, SIZES)
    param_names = ["contender", "size"]
    timeout = 120

    def setup(self, name, n):
        self.opt = _peer(name, [data(n, "float32")])
        self.opt.step()
        self.opt.step()

    def time_step(self, name, n):
        self.opt.step()


class PeerAdamGPT:
    """76 tensors, 6,967,296 params (see ``fastadam.bench.gpt_shapes``)."""

    params = (PEERS,)
    param_names = ["contender"]
    timeout = 180

    def setup(self, name):
        from fastadam.bench import gpt_shapes
        rng = np.random.default_rng(1)
        pg = [((rng.standard_normal(s) * 0.02).astype(np.float32),
               (rng.standard_normal(s) * 0.01).astype(np.float32)) for _, s in gpt_shapes()]
        self.n = sum(math.prod(s) for _, s in gpt_shapes())
        self.opt = _peer(name, pg)
        self.opt.step()

    def time_step(self, name):
        self.opt.step()


class ReferenceAdam:
    """The NumPy reference (ground truth, not fast), small sizes only."""

    params = ([4096, 65536],)
    param_names = ["size"]

    def setup(self, n):
        self.opt = facade("Adam", n, "float32", backend="numpy")

    def time_step(self, n):
        self.opt.step()
