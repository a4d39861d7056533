"""What the Keras-style optimizer classes share (not the base class).

* :data:`TORCH_RULES`, :data:`KERAS_RULES` and :func:`runner`: the kernel
  families an optimizer's ``_plan`` names (fastadam's torch-form kernels, or the
  Keras-form ones), and the compiled runner of a family on the host
  (:mod:`fastadam.kernels.cpu` / :mod:`~fastadam.kernels.cpu_keras`) or on a
  CUDA device (:mod:`fastadam.kernels.cuda` / :mod:`~fastadam.kernels.cuda_keras`),
  imported lazily (``import fastadam.keras`` imports no numba) and read as module
  attributes at each call (so that a patched ``run`` is seen);
* :func:`check_beta` and :func:`check_eps`: hyperparameter checks;
* :func:`common_doc`: a class decorator filling the ``{common}`` placeholder
  of a class docstring with the arguments every optimizer takes.
"""

from __future__ import annotations

from .. import _validate as _v


#: ``_plan``'s kernel family: the torch-form rules of :mod:`fastadam.rules` (Adam, Nadam)
TORCH_RULES = "torch"
#: ``_plan``'s kernel family: the Keras rules of :mod:`fastadam.rules.keras`
KERAS_RULES = "keras"


def runner(family: str, device: bool = False):
    """``run(kernel_name, arrays, scalars)`` of kernel ``family`` (:data:`TORCH_RULES`
    or :data:`KERAS_RULES`), for host arrays or, with ``device``, CUDA device arrays."""
    if device:
        if family == TORCH_RULES:
            from ..kernels import cuda
            return cuda.run
        from ..kernels import cuda_keras
        return cuda_keras.run
    if family == TORCH_RULES:
        from ..kernels import cpu
        return cpu.run
    from ..kernels import cpu_keras
    return cpu_keras.run


def check_beta(name, value):
    """``beta_1`` / ``beta_2``: a float in [0, 1)."""
    return _v.unit(name, value, f"{name} value")


def check_eps(value):
    """``epsilon``: a float >= 0."""
    return _v.nonneg("epsilon", value, "epsilon value")


_COMMON_DOC = """
    learning_rate : float or callable, default {lr}
        A float, or a schedule called with the iteration count (or a callable of
        no argument).
    weight_decay : float or None, default {wd}
        Decoupled weight decay: ``var -= var * weight_decay * lr`` before the update.
    clipnorm, clipvalue, global_clipnorm : float or None
        Gradient clipping (per-variable norm, element-wise value, global norm);
        at most one.
    use_ema, ema_momentum, ema_overwrite_frequency, gradient_accumulation_steps
        Accepted at their defaults only (not implemented).
    loss_scale_factor : float or None
        Gradients are divided by it before clipping.
    name : str or None
    decay : float or None, keyword only
        tf.keras' legacy decay: ``lr_k = lr / (1 + decay * k)`` after ``k`` steps.
    backend : {{"auto", "numba", "numpy"}}, keyword only

    Raises
    ------
    TypeError, ValueError
        On a bad argument, here or in :meth:`apply_gradients` (before anything
        is written).

"""


def common_doc(lr="0.001", wd="None"):
    """Class decorator: the common arguments (defaults ``lr``, ``wd``) into ``{common}``."""
    def deco(cls):
        cls.__doc__ = cls.__doc__.replace("{common}", _COMMON_DOC.format(lr=lr, wd=wd))
        return cls
    return deco
