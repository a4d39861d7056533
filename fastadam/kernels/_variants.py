"""Lazily compiled parallel and serial variants of a module's kernel loops.

Each kernel module (:mod:`.cpu`, :mod:`.cpu_keras`, :mod:`.cpu_lowp`) writes its
loops once, with ``prange``, and gets two numba dispatchers per loop from here:
``parallel=True`` and a serial one for small buffers (a module may compile another
form of the loop for the parallel variant: ``parallel_source``).  Both use numba's
on-disk cache.  numba names cache files after a function's qualified name and
only checks the timestamp of the file that holds it, so each variant is a
renamed copy of the loop whose name carries ``key``: a hash of the rule sources
and compile flags the loop inlines (edit a rule, and new cache entries are made).
"""

from __future__ import annotations

import hashlib
import types

import numba

#: numba options every kernel variant is compiled with (besides parallel/fastmath);
#: they are part of the cache key, so editing them never loads stale cached code.
NJIT_OPTIONS = {"nogil": True, "error_model": "numpy", "boundscheck": False}


class KernelVariants:
    """Parallel/serial dispatchers of the loops defined in ``namespace``.

    Parameters
    ----------
    namespace : dict
        The kernel module's ``globals()``; loops are looked up there by name.
    key : str
        Cache key suffix (rule-source hash and flags).
    fastmath : set or callable
        numba fastmath flags, or ``fastmath(name) -> flags`` per loop.
    names : iterable of str, optional
        The loop names that may be requested (others raise ``KeyError``).
    parallel_source : callable, optional
        ``parallel_source(name) -> function``: the loop compiled for the parallel
        variant (e.g. :func:`._blocked.blocked_loop`'s prefetched form), called once
        per name; by default the same loop as the serial variant.
    """

    def __init__(self, namespace: dict, key: str, fastmath, names=None,
                 parallel_source=None):
        self._ns = namespace
        self._parallel_source = parallel_source
        self._sources: dict = {}
        opts = hashlib.sha256(repr(sorted(NJIT_OPTIONS.items())).encode()).hexdigest()[:6]
        self._key = key + opts
        self._fastmath = fastmath if callable(fastmath) else (lambda name: fastmath)
        self._names = frozenset(names) if names is not None else None
        self.compiled: dict = {}

    def make(self, name: str, parallel: bool, cache: bool = True):
        """A new dispatcher of loop ``name``; ``cache=False`` gives one whose generated
        code can be inspected (numba refuses that for code loaded from its cache)."""
        if self._names is not None and name not in self._names:
            raise KeyError(f"no kernel named {name!r}")
        src = self.source(name, parallel)
        suffix = ("_par_" if parallel else "_ser_") + self._key
        f = types.FunctionType(src.__code__, src.__globals__, name + suffix, src.__defaults__,
                               src.__closure__)
        f.__qualname__ = src.__qualname__ + suffix
        f.__module__ = src.__module__
        f.__doc__ = src.__doc__
        return numba.njit(parallel=parallel, cache=cache, fastmath=self._fastmath(name),
                          **NJIT_OPTIONS)(f)

    def source(self, name: str, parallel: bool):
        """The Python function compiled for variant ``(name, parallel)``."""
        if not parallel or self._parallel_source is None:
            return self._ns[name]
        src = self._sources.get(name)
        if src is None:
            src = self._sources[name] = self._parallel_source(name)
        return src

    def get(self, name: str, parallel: bool):
        """The dispatcher of loop ``name`` (created lazily, compiled on first call)."""
        key = (name, parallel)
        k = self.compiled.get(key)
        if k is None:
            k = self.compiled[key] = self.make(name, parallel)
        return k
