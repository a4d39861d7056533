"""What the Keras-style optimizer classes share (not the base class).

* :func:`cpu_run` and :func:`keras_run`: the compiled kernel runners, looked
  up in :mod:`fastadam.kernels.cpu` / :mod:`fastadam.kernels.cpu_keras` at
  call time (imported lazily, so that ``import fastadam.keras`` does not import
  numba, and read as module attributes, so that a patched ``run`` is seen);
* :func:`check_beta` and :func:`check_eps`: hyperparameter checks;
* :func:`common_doc`: a class decorator filling the ``{common}`` placeholder
  of a class docstring with the arguments every optimizer takes.
"""

from __future__ import annotations

from .. import _validate as _v


def cpu_run():
    """``fastadam.kernels.cpu.run`` (torch-form kernels), looked up now."""
    from ..kernels import cpu
    return cpu.run


def keras_run():
    """``fastadam.kernels.cpu_keras.run`` (Keras-form kernels), looked up now."""
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
