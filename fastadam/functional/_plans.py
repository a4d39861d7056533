"""Cached plans: the array checks of a dense functional step, done once per array set.

A call of :func:`fastadam.functional.adam_` (or any dense step) on arrays it has
checked before, unchanged since, skips those checks and numba's type dispatch: it
computes the step's scalars and makes one call of the compiled kernel.  What a plan
remembers and checks on every call:

* the arrays themselves, by identity: the cache is keyed by their ``id``, and the
  plan holds a :mod:`weakref` to each (never a reference: the cache keeps no array
  alive), so an ``id`` reused by a new array after the old one was collected does
  not match (the dead reference does not return the new array; a plan whose
  arrays die is dropped);
* per array, its shape, strides, dtype and writeability (``flags.writeable``) as
  they were when checked: an array reshaped, given other strides or another dtype
  in place or made read-only since goes through every check again, so it is
  refused as the first call would have refused it, before anything is written;
* on NumPy versions where ``ndarray.data`` may be assigned (a new buffer under the
  same array, same shape), the data pointer too;
* the backend (:data:`fastadam._backends.generation`: a reset registry
  invalidates every plan) and the kernel (``amsgrad``, ``momentum`` ... choose it).

What a plan does not check again: whether two of the arrays overlap.  Without a
change of shape, strides or (where assignable) pointer, an array's memory stays
where it was checked: NumPy moves an array's data only in ``ndarray.resize``, which
it refuses for an array with a weak reference (the plan's).  Array contents are
never checked (no check depends on them).

Only the compiled host backends (numba, cython) use plans; the numpy reference
and device arrays take the checked path every call.  A plan is created on an
array set's first checked call and gets its compiled entry point on the next call
(the first use pays the lookup of numba's compiled signature, ~50 us, only for
arrays stepped more than once).
"""

from __future__ import annotations

import functools
import warnings
import weakref

import numpy as np

from .. import _backends, _scalars

#: plans kept at most (the oldest is dropped); plans of collected arrays drop themselves
MAX_PLANS = 256

_plans: dict = {}
_python_floats = _scalars.python_floats


def _data_assignable() -> bool:
    """Whether this NumPy lets ``a.data = buffer`` move an array's data (NumPy 1.x,
    deprecated); then a plan checks data pointers too."""
    a, b = np.zeros(1), np.zeros(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a.data = b.data
    except Exception:     # AttributeError ("not writable"); a warning turned into one
        return False
    return True


if _data_assignable():      # pragma: no cover - NumPy 1.x
    def _sig(a):
        return (a.shape, a.strides, a.dtype, a.flags.writeable,
                a.__array_interface__["data"][0])
else:
    def _sig(a):
        return (a.shape, a.strides, a.dtype, a.flags.writeable)


class Plan:
    """The checked layout of one array set, and the kernel call for it.

    ``call(arrays, scalars)`` runs kernel ``kname`` on ``arrays`` (the very arrays
    the plan was made for, re-checked by :meth:`valid`), flattened to 1-D when any
    is not, with the step's scalars as Python floats.
    """

    __slots__ = ("refs", "sigs", "be", "gen", "kname", "flat", "call", "__weakref__")

    def valid(self, arrays) -> bool:
        """Whether ``arrays`` are the plan's arrays, unchanged (see the module doc)."""
        if self.gen != _backends.generation:
            return False
        for r, a, s in zip(self.refs, arrays, self.sigs):
            if r() is not a or _sig(a) != s:
                return False
        return True

    def bind(self, arrays, opt: str, hp: dict) -> None:
        """Resolve the compiled call (on the second use of the plan)."""
        flat = tuple(a.reshape(-1) for a in arrays)
        entry = getattr(self.be, "entry", None)
        if entry is not None:
            typed = getattr(_scalars, opt)(arrays[0].dtype, **hp)[1]
            f = entry(self.kname, flat, typed)
            self.call = lambda a, s: f(*a, *s)
        else:
            self.call = functools.partial(self.be.run, self.kname)


def _forget(key, ref) -> None:
    """Weak-reference callback: drop the plan of ``key`` once one of its arrays dies."""
    p = _plans.get(key)
    if p is not None and any(r is ref for r in p.refs):
        _plans.pop(key, None)


def step(opt: str, backend, names: tuple, arrays: tuple, outputs: tuple, hp: dict) -> None:
    """One dense step of ``opt`` on ``arrays`` (named ``names``; ``outputs`` written in
    place) with validated hyperparameters ``hp``: through the cached plan of these
    arrays when it holds, else every check (:meth:`fastadam._backends.Backend.check`)
    and the backend's step, remembering a plan for the next call."""
    key = (names, backend) + tuple(map(id, arrays))
    p = _plans.get(key) if type(backend) is str else None
    if p is not None and p.valid(arrays):
        kname, scal = getattr(_scalars, opt)(_python_floats(arrays[0].dtype), **hp)
        if kname == p.kname:
            if p.call is None:
                p.bind(arrays, opt, hp)
            p.call(arrays if p.flat else tuple(a.reshape(-1) for a in arrays), scal)
            return
    be = _backends.resolve(backend, arrays[0])
    checked = be.check(dict(zip(names, arrays)), outputs)
    be.step(opt, checked, hp)
    if isinstance(be, _backends.CompiledBackend) and not be.device and type(backend) is str:
        kname = getattr(_scalars, opt)(_python_floats(arrays[0].dtype), **hp)[0]
        _remember(key, arrays, be, kname)


def _remember(key, arrays, be, kname: str) -> None:
    p = Plan()
    try:
        p.refs = tuple(weakref.ref(a, functools.partial(_forget, key)) for a in arrays)
    except TypeError:         # an array type without weak references: no plan
        return
    p.sigs = tuple(map(_sig, arrays))
    p.be, p.gen, p.kname, p.call = be, _backends.generation, kname, None
    p.flat = all(a.ndim == 1 for a in arrays)
    if len(_plans) >= MAX_PLANS and key not in _plans:
        try:
            _plans.pop(next(iter(_plans)), None)
        except (StopIteration, RuntimeError):   # emptied or changed by another thread
            pass
    _plans[key] = p


def clear() -> None:
    """Forget every plan (the next call of each array set runs every check)."""
    _plans.clear()
