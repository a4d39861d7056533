r"""Keras 3's optimizers -- names, defaults and math -- inside Keras or on NumPy arrays.

``fastadam.keras`` offers :class:`Adam`, :class:`AdamW`, :class:`RMSprop`,
:class:`Adagrad`, :class:`SGD`, :class:`Adadelta`, :class:`Nadam` and
:class:`Adamax` with the constructor arguments, defaults and update math of
``keras.optimizers`` (Keras 3), used the Keras way::

    opt = fastadam.keras.Adam(learning_rate=0.001, beta_1=0.9, beta_2=0.999,
                              epsilon=1e-8, decay=0.0)
    opt.apply_gradients(zip(grads, variables))   # NumPy arrays, updated in place

With Keras imported (Keras 3, torch backend), an optimizer made here is a Keras
optimizer too (its class derives from ``keras.optimizers.Optimizer``), so Keras
takes it wherever it takes its own::

    model.compile(loss="binary_crossentropy",
                  optimizer=fastadam.keras.Adam(learning_rate=0.001))
    model.fit(x, y)                              # fastadam's kernels, Keras' results

(``fit``, custom loops with ``apply`` / ``apply_gradients`` on Keras variables,
``model.save`` / ``load_model``, schedules, clipping, ``loss_scale_factor``,
mixed precision; see docs/keras.md).  On another Keras backend the first step
on Keras variables raises :class:`fastadam._errors.BackendUnavailableError`.

Keras' math differs from torch.optim's, and it is Keras' that is used here:
Adam's "epsilon hat" form (``lr * sqrt(1 - beta_2**t) / (1 - beta_1**t)``,
epsilon added to the un-corrected root), epsilon inside the square root for
RMSprop/Adagrad/Adadelta, the learning rate inside the momentum buffer of SGD
and RMSprop, Nadam's momentum schedule ``beta_1 * (1 - 0.5 * 0.96**t)``,
Adamax's epsilon added after the maximum, Adagrad's accumulator starting at
``initial_accumulator_value=0.1``, and decoupled ``weight_decay`` (every
optimizer: ``var -= var * weight_decay * lr`` before the update).

Common arguments (all optimizers):

* ``learning_rate``: a float, or a callable.  A callable that takes an argument
  (a ``keras.optimizers.schedules.LearningRateSchedule``, ``lambda step: ...``)
  is called with the iteration count (steps done so far, 0 on the first step);
  one that takes none is called with no argument, as Keras does.
* ``weight_decay``: decoupled decay, or None.
* ``clipnorm`` (per-variable norm), ``global_clipnorm`` (norm over all the
  gradients of a call), ``clipvalue`` (element-wise); at most one; 0 or None
  means off, as in Keras.
* ``loss_scale_factor``: gradients are divided by it before clipping.
* ``decay`` (keyword only): tf.keras' legacy time decay, which Keras 3 ignores:
  the learning rate of the step after ``k`` steps is ``lr / (1 + decay * k)``
  (also used by ``weight_decay``).
* ``backend`` (keyword only): ``"auto"`` (numba, else numpy), ``"numba"`` (fused
  kernels) or ``"numpy"`` (a plain NumPy transcription of Keras' update steps,
  written for reading).
* ``use_ema``, ``gradient_accumulation_steps`` and their companions are accepted
  only at their defaults (not implemented).

State is built per variable on first use, keyed by the array's identity (the
optimizer keeps a reference to it); :meth:`Optimizer.get_slot` returns a state
array.  When the variables of a call are views that tile one contiguous buffer
(the views of a :class:`fastadam.FlatParams` buffer) and the gradients tile
another at the same offsets (``FlatParams.grads``), the whole buffer is updated
by one fused kernel call.

Layout
------
The public names are re-exported here; the code lives in:

* :mod:`fastadam.keras.base`: :class:`Optimizer`, the base: the common
  arguments, backend choice, per-variable state, the flat-buffer path and the
  step (``build``, ``get_slot``, ``apply_gradients``, ``apply``, ``get_config``);
* :mod:`fastadam.keras._transforms`: the learning rate (floats, schedules,
  the legacy ``decay``) and the gradient transforms (``loss_scale_factor``,
  ``clipnorm``, ``global_clipnorm``, ``clipvalue``), mixins of the base;
* :mod:`fastadam.keras._checks`: checks of arguments, variables and
  gradients (dtype, shape, contiguity, aliasing), before anything is written;
* :mod:`fastadam.keras._common`: what the optimizer classes share: the kernel
  runners (looked up at call time), hyperparameter checks, the docstring of
  the common arguments;
* :mod:`fastadam.keras._bridge`: whether Keras is loaded (never importing it),
  and the class an optimizer is made as;
* :mod:`fastadam.keras._in_keras` (imported once Keras is loaded): the Keras-side
  classes (``twin``): Keras' construction, ``build`` (state as Keras
  variables), ``apply`` / ``apply_gradients``, ``get_config``, registration;
* :mod:`fastadam.keras._keras_step`: one step on Keras variables (Keras' apply
  protocol around fastadam's kernels);
* :mod:`fastadam.keras._torch_views` (imported at the first step on Keras'
  torch backend): the checks and the NumPy views of the torch storage, the
  small variables packed into flat buffers;
* one module per optimizer, each with its defaults, hyperparameters and
  update rule (kernel plan and NumPy step): :mod:`~fastadam.keras.adam`
  (:class:`Adam`, :class:`AdamW`), :mod:`~fastadam.keras.rmsprop`,
  :mod:`~fastadam.keras.adagrad`, :mod:`~fastadam.keras.sgd`,
  :mod:`~fastadam.keras.adadelta`, :mod:`~fastadam.keras.nadam`,
  :mod:`~fastadam.keras.adamax`.

Importing this package imports neither Keras nor torch (Keras is used only once
the user has imported it); numba only when the numba backend is asked for
(``backend="numba"`` when the optimizer is made, ``"auto"`` at its first step).
"""

from . import _bridge
from .adadelta import Adadelta
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .adamax import Adamax
from .base import BACKENDS, Optimizer  # noqa: F401  (BACKENDS: as in the old keras.py)
from .nadam import Nadam
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = ["Optimizer", "Adam", "AdamW", "RMSprop", "Adagrad", "SGD", "Adadelta", "Nadam",
           "Adamax", "custom_objects"]

_CLASSES = (Adam, AdamW, RMSprop, Adagrad, SGD, Adadelta, Nadam, Adamax)


def custom_objects() -> dict:
    """The Keras-side classes by their registered names (``"fastadam>Adam"``, ...).

    They are registered with Keras already when :mod:`fastadam.keras` is imported
    after Keras, or once an optimizer is made; pass this to
    ``keras.models.load_model(path, custom_objects=fastadam.keras.custom_objects())``
    to load a model saved with a fastadam.keras optimizer in a process that
    imported fastadam.keras before Keras.  Imports Keras.

    Returns
    -------
    dict
        ``{"fastadam>Adam": <class Adam>, ...}`` for the eight optimizers.
    """
    import keras  # noqa: F401  (the user asks for Keras objects)
    return {f"fastadam>{c.__name__}": _bridge.class_for(c) for c in _CLASSES}


_bridge.register_if_loaded(_CLASSES)
