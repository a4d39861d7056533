"""Keras' fit() with keras.optimizers.X against its fastadam.keras twin (torch backend).

``KerasFit.time_fit_epoch``: one epoch of ``fit()`` (``shuffle=False``), from the same
initial weights, on the seed's model (``Dense(100 -> 64, relu) -> Dense(64 -> 1,
sigmoid)``, batch 32, 50 batches) and on an ~8M-parameter MLP (``1024 -> 2048 ->
2048 -> 1024``, batch 64, 6 batches); see :mod:`fastadam.bench.keras`, which builds
the contenders (``fastadam bench --keras`` prints the same comparison, interleaved).
Skipped where torch or Keras is missing, or where Keras was imported on another
backend.
"""

import os

MODELS = ["seed", "mlp 8M"]
OPTIMIZERS = ["Adam", "AdamW", "RMSprop", "Adagrad", "SGD", "Adadelta", "Nadam", "Adamax"]


class KerasFit:
    params = [MODELS, OPTIMIZERS, ["keras", "fastadam"]]
    param_names = ["model", "optimizer", "implementation"]
    timeout = 600
    number = 1
    repeat = (3, 5, 120.0)

    def setup(self, model, name, impl):
        try:
            import torch  # noqa: F401
        except ImportError:
            raise NotImplementedError("torch is not installed")
        os.environ.setdefault("KERAS_BACKEND", "torch")
        from fastadam.bench import keras as kb
        keras = kb._keras()
        if keras is None:
            raise NotImplementedError("Keras on its torch backend is not available")
        label = f"{impl} {name}"
        self.fn = kb.fit_contenders(keras, model, (name,), only=label)[label]
        self.fn()                      # the first epoch: kernels compiled, state built

    def time_fit_epoch(self, model, name, impl):
        self.fn()
