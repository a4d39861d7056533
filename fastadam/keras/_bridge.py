"""Where a fastadam.keras optimizer meets Keras, without importing it.

``import fastadam.keras`` imports neither Keras nor torch.  When the user has
imported Keras (``"keras"`` is in :data:`sys.modules`), an optimizer is made as
its *Keras-side twin*: a class built once per optimizer class by
:mod:`fastadam.keras._in_keras`, a subclass both of the fastadam class and of
``keras.optimizers.Optimizer``, so that Keras accepts it wherever it accepts its
own (``model.compile``, ``fit``, ``LossScaleOptimizer``, ``load_model``).

This module only looks at :data:`sys.modules`; :mod:`._in_keras` (which imports
Keras, then already loaded) is imported from here, when a twin is needed.
"""

from __future__ import annotations

import sys


def loaded_keras():
    """The ``keras`` module if the user imported it (and its import completed), else None."""
    k = sys.modules.get("keras")
    if k is None or getattr(k, "optimizers", None) is None \
            or getattr(k, "saving", None) is None:
        return None
    return k


def class_for(cls):
    """The class an optimizer ``cls(...)`` is made as: its Keras-side twin when Keras is
    loaded, else ``cls`` itself (and always ``cls`` for a twin)."""
    if cls.__dict__.get("_keras_side", False) or loaded_keras() is None:
        return cls
    from . import _in_keras
    return _in_keras.twin(cls)


class TwinName:
    """``Class._keras_twin``: the Keras-side twin of ``Class`` (a twin's own is itself), the
    name under which pickle finds a twin class (its ``__qualname__``)."""

    def __get__(self, obj, owner):
        if owner.__dict__.get("_keras_side", False):
            return owner
        from . import _in_keras
        return _in_keras.twin(owner)


def bare_instance(cls):
    """An instance of exactly ``cls``, uninitialized (used by copy and pickle)."""
    return object.__new__(cls)


def register_if_loaded(classes):
    """Register the twins of ``classes`` as Keras serializables if Keras is loaded.

    Done when :mod:`fastadam.keras` is imported after Keras, so that
    ``keras.models.load_model`` finds ``"fastadam>Adam"`` even before any
    optimizer was made in this process (otherwise the first optimizer made
    registers its class).
    """
    if loaded_keras() is None:
        return
    from . import _in_keras
    for cls in classes:
        _in_keras.twin(cls)
