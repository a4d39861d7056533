"""Lazily compiled parallel and serial variants of a module's kernel loops.

Each kernel module (:mod:`.cpu`, :mod:`.cpu_keras`, :mod:`.cpu_lowp`) writes its
loops once, with ``prange``, and gets two numba dispatchers per loop from here:
``parallel=True`` and a serial one for small buffers (a module may compile another
form of the loop for the parallel variant: ``parallel_source``).  Both use numba's
on-disk cache.  numba names cache files after a function's qualified name and
only checks the timestamp of the file that holds it, so each variant is a
renamed copy of the loop whose name carries ``key``: a hash of the rule sources
and compile flags the loop inlines (edit a rule, and new cache entries are made).

The process model (threads, fork) lives here too, for every kernel module:

* :func:`use_parallel` says whether a call over ``n`` elements takes the parallel
  variant: ``n >= PARALLEL_THRESHOLD``, numba allowed more than one thread
  (``NUMBA_NUM_THREADS``), and not in a forked child of a process whose thread pool
  had started (a child then runs the serial variants: an OpenMP pool does not
  survive ``fork``; torch's own ops do the same);
* parallel launches go through :meth:`KernelVariants.call` or an entry point from
  :meth:`KernelVariants.entry`: where numba's threading layer is not thread-safe
  (``workqueue``, numba's fallback where no OpenMP or TBB runtime is present, which
  aborts the process when two threads launch at once) they are serialized by a
  lock; an entry point bound before a ``fork`` runs its serial twin in the child.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import types

import numba

from .._config import PARALLEL_THRESHOLD

#: numba options every kernel variant is compiled with (besides parallel/fastmath);
#: they are part of the cache key, so editing them never loads stale cached code.
NJIT_OPTIONS = {"nogil": True, "error_model": "numpy", "boundscheck": False}

#: numba's threading layer, once a parallel variant has been made (None before).
_layer = None
#: Serializes parallel launches where the threading layer is not thread-safe.
_lock = None
#: True in a forked child of a process whose thread pool had started.
_forked = False
#: Whether parallel variants may run at all: numba has more than one thread, not forked.
_parallel_ok = numba.config.NUMBA_NUM_THREADS > 1
_layer_lock = threading.Lock()


def use_parallel(n: int) -> bool:
    """Whether a call over ``n`` elements runs a parallel variant (see the module doc)."""
    return _parallel_ok and n >= PARALLEL_THRESHOLD


def set_threads(n: int) -> int:
    """Let the calling thread's parallel launches use ``n`` threads (numba's
    ``set_num_threads``, ``n`` clipped to ``[1, NUMBA_NUM_THREADS]``); returns that count.
    fastadam.torch calls it with ``torch.get_num_threads()``."""
    n = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))
    threading_layer()            # start the pool first, keeping torch's thread count
    numba.set_num_threads(n)
    return n


def threading_layer():
    """numba's threading layer, starting its thread pool if that has not happened yet
    (what the first parallel launch would do), and the lock parallel launches then
    take: a :class:`threading.Lock` for ``workqueue``, None for ``omp`` and ``tbb``."""
    global _layer, _lock
    if _layer is None:
        with _layer_lock:
            if _layer is None:
                from numba.np.ufunc import parallel

                # starting numba's OpenMP pool can reset the process's OpenMP thread
                # count, which torch's own ops read: keep the count the user gave torch
                torch = sys.modules.get("torch")
                nt = torch.get_num_threads() if torch is not None else None
                parallel._launch_threads()
                if nt is not None and torch.get_num_threads() != nt:
                    torch.set_num_threads(nt)
                layer = numba.threading_layer()
                _lock = threading.Lock() if layer == "workqueue" else None
                _layer = layer      # set last: a reader seeing _layer sees _lock too
    return _layer, _lock


def _pool_started() -> bool:
    """Whether numba's thread pool has started in this process (by fastadam or not)."""
    if _layer is not None:
        return True
    par = sys.modules.get("numba.np.ufunc.parallel")
    return bool(getattr(par, "_is_initialized", False))


def _after_fork_in_child():
    global _forked, _lock, _parallel_ok, _layer_lock
    _layer_lock = threading.Lock()      # a thread of the parent may have held it at fork
    if _pool_started():          # the parent's pool had started: serial from now on
        _forked = True
        _parallel_ok = False
        _lock = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _launch(f, args):
    lock = _lock
    if lock is None:
        return f(*args)
    with lock:
        return f(*args)


class _GuardedEntry:
    """A parallel variant's compiled entry point that takes the launch lock where the
    layer needs one and, in a forked child, runs the serial variant's entry point for
    the same signature instead (compiled on first use there)."""

    __slots__ = ("entry", "serial", "make_serial")

    def __init__(self, entry, make_serial):
        self.entry, self.serial, self.make_serial = entry, None, make_serial

    def __call__(self, *args):
        if _forked:
            if self.serial is None:
                self.serial = self.make_serial()
            return self.serial(*args)
        lock = _lock
        if lock is None:
            return self.entry(*args)
        with lock:
            return self.entry(*args)


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
    generate : callable, optional
        ``generate(name) -> function``: the loop of a name that ``namespace`` does not
        hold (e.g. :func:`._blocked.gradlist_loop`'s forms), made on first request and
        compiled for both variants.
    """

    def __init__(self, namespace: dict, key: str, fastmath, names=None,
                 parallel_source=None, generate=None):
        self._ns = namespace
        self._parallel_source = parallel_source
        self._generate = generate
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
        if self._generate is not None and name not in self._ns:
            src = self._sources.get(name)
            if src is None:
                src = self._sources[name] = self._generate(name)
            return src
        if not parallel or self._parallel_source is None:
            return self._ns[name]
        src = self._sources.get(name)
        if src is None:
            src = self._sources[name] = self._parallel_source(name)
        return src

    def get(self, name: str, parallel: bool):
        """The dispatcher of loop ``name`` (created lazily, compiled on first call).

        Calling a parallel dispatcher directly bypasses the process model: launch
        through :meth:`call` or an :meth:`entry`."""
        key = (name, parallel)
        k = self.compiled.get(key)
        if k is None:
            if parallel:
                threading_layer()
            k = self.compiled[key] = self.make(name, parallel)
        return k

    def call(self, name: str, parallel: bool, *args):
        """Run loop ``name`` (variant ``parallel``, as :func:`use_parallel` chose it) on
        ``args``; a parallel launch takes the layer's lock, if it needs one."""
        if parallel and not _forked:
            return _launch(self.get(name, True), args)
        return self.get(name, False)(*args)

    def entry(self, name: str, parallel: bool, sig):
        """The entry point of loop ``name`` compiled for ``sig`` (numba types of the
        arguments): called with those arguments, it skips numba's type dispatch.  A
        parallel variant's entry point is wrapped (:class:`_GuardedEntry`) so that it
        stays safe across threads and ``fork``."""
        if not parallel or _forked:
            return self.get(name, False).compile(sig)
        return _GuardedEntry(self.get(name, True).compile(sig),
                             lambda: self.get(name, False).compile(sig))
