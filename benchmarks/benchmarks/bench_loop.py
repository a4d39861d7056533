"""Training-loop iterations (``zero_grad`` + forward + backward + ``step()``) with each
optimizer: what ``fastadam bench --loop`` times (``fastadam/bench/loop.py``), tracked
across commits.

Workloads: the seed's MLP (6.5K params), an ~8M-param MLP (6 tensors) and a small
transformer (6 layers x 256 with a tied token embedding, 6.9M params, 76 tensors).
Optimizers: torch.optim.Adam foreach / fused, DeepSpeedCPUAdam (skipped unless
DeepSpeed imports), fastadam.torch.Adam with torch's default ``zero_grad()``
(fresh gradients) and with ``zero_grad(set_to_none=False)`` (bound gradients).
``time_iteration``: one whole iteration; ``track_fwd_bwd_s``: the median
``zero_grad`` + forward + backward time of 5 iterations (seconds), each right after
the previous step, to show an optimizer's threads do not slow the next backward.
Skipped where torch is missing.
"""

OPTIMIZERS = ["fastadam.torch", "fastadam.torch, grads kept", "torch fused", "torch foreach",
              "DeepSpeedCPUAdam"]
WORKLOADS = ["seed MLP", "MLP 8M", "transformer 6x256"]


class TrainingLoop:
    params = [OPTIMIZERS, WORKLOADS]
    param_names = ["optimizer", "workload"]
    timeout = 600
    number = 1
    repeat = (3, 20, 60.0)

    def setup(self, optimizer, workload):
        try:
            import torch
        except ImportError:
            raise NotImplementedError("torch is not installed")
        from fastadam.bench import loop
        if optimizer not in loop.contender_names(torch):
            raise NotImplementedError(f"{optimizer} is not importable here")
        self.it = loop.contenders(torch, workload, names=[optimizer])[optimizer]
        for _ in range(3):           # the state, the compiled kernels
            self.it()

    def time_iteration(self, optimizer, workload):
        self.it()

    def track_fwd_bwd_s(self, optimizer, workload):
        runs = [self.it()[0] for _ in range(5)]
        return sorted(runs)[len(runs) // 2]

    track_fwd_bwd_s.unit = "seconds"
