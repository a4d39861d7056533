"""fastadam.torch.Adam against torch.optim.Adam (for-loop, foreach, fused) on whole models.

Two models, float32 on the CPU:

* ``gpt-7M``: a GPT-like stack (token and position embeddings, 6 layers of
  layer norms, attention and MLP weights and biases, a final norm): 76 tensors,
  6,967,296 parameters — per-tensor dispatch is what fastadam's flat buffer saves.
* ``mlp-16K``: 4 tensors, 16,640 parameters — Python and dispatch overhead is
  the whole cost.

``time_step``: ``step()`` with the gradients in place (after
``zero_grad(set_to_none=False)``, or the second step on).
``time_step_fresh_grads``: fresh gradient tensors assigned first, as after the
default ``zero_grad()`` and a backward — fastadam reads the big ones where they
are (a kernel call each) and copies the small ones into its flat gradient
buffer inside ``step()``.  Skipped where torch is not installed.
"""


def _model_shapes(model):
    if model == "gpt-7M":
        d, layers, vocab, ctx = 256, 6, 8448, 256
        shapes = [(vocab, d), (ctx, d)]
        for _ in range(layers):
            shapes += [(d,), (d,), (3 * d, d), (3 * d,), (d, d), (d,), (d,), (d,),
                       (4 * d, d), (4 * d,), (d, 4 * d), (d,)]
        return shapes + [(d,), (d,)]
    if model == "mlp-16K":
        return [(128, 64), (128,), (64, 128), (64,)]
    raise ValueError(model)


def _make(optimizer, params):
    import torch

    if optimizer == "fastadam":
        import fastadam.torch as ft
        return ft.Adam(params, lr=1e-3)
    kw = {"torch-forloop": dict(foreach=False), "torch-foreach": dict(foreach=True),
          "torch-fused": dict(fused=True)}[optimizer]
    return torch.optim.Adam(params, lr=1e-3, **kw)


class TorchAdamStep:
    params = [["fastadam", "torch-fused", "torch-foreach", "torch-forloop"],
              ["gpt-7M", "mlp-16K"]]
    param_names = ["optimizer", "model"]
    timeout = 300

    def setup(self, optimizer, model):
        try:
            import torch
        except ImportError:
            raise NotImplementedError("torch is not installed")
        g = torch.Generator().manual_seed(0)
        self.params_ = [torch.nn.Parameter(torch.randn(s, generator=g) * 0.02)
                        for s in _model_shapes(model)]
        self.grads = [torch.randn(s, generator=g) * 1e-2 for s in _model_shapes(model)]
        for p, gr in zip(self.params_, self.grads):
            p.grad = gr.clone()
        self.opt = _make(optimizer, self.params_)
        for _ in range(3):          # compiles / loads the kernels, makes the state
            self.opt.step()

    def time_step(self, optimizer, model):
        self.opt.step()

    def time_step_fresh_grads(self, optimizer, model):
        for p, g in zip(self.params_, self.grads):
            p.grad = g
        self.opt.step()

    def peakmem_step(self, optimizer, model):
        self.opt.step()


class TorchZeroGrad:
    """``zero_grad`` cost: set_to_none (both) and in-place zeroing (one fill for fastadam)."""

    params = [["fastadam", "torch-fused"], [True, False]]
    param_names = ["optimizer", "set_to_none"]

    def setup(self, optimizer, set_to_none):
        try:
            import torch
        except ImportError:
            raise NotImplementedError("torch is not installed")
        g = torch.Generator().manual_seed(0)
        shapes = _model_shapes("gpt-7M")
        self.params_ = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
        for p in self.params_:
            p.grad = torch.ones_like(p)
        self.opt = _make(optimizer, self.params_)
        self.opt.step()

    def time_zero_grad(self, optimizer, set_to_none):
        self.opt.zero_grad(set_to_none=set_to_none)
