"""Backend registry: which implementations exist, and which one a call uses.

A backend turns one validated step into work on flat buffers.  The compiled
backends (``numba``, ``cython``, ``cuda``) share the per-step scalar work of
:mod:`fastadam._scalars` and only supply ``run(kernel_name, arrays, scalars)``;
the ``numpy`` backend is :mod:`fastadam.reference`.

``backend="auto"`` picks ``cuda`` for device arrays (``__cuda_array_interface__``)
and, for host arrays, ``numba``, else ``cython``, else ``numpy``.  An explicit
backend that cannot be used raises :class:`BackendUnavailableError` saying why.
"""

from __future__ import annotations

import importlib

from . import _scalars, _validate
from ._errors import BackendUnavailableError

BACKEND_NAMES = ("numba", "cython", "cuda", "numpy")
_HOST_PREFERENCE = ("numba", "cython", "numpy")


class Backend:
    """One implementation of the fused steps.

    Attributes
    ----------
    name : str
    device : bool
        True for backends that work on device (GPU) arrays.
    """

    name = "?"
    device = False

    def check(self, named: dict, outputs: tuple) -> dict:
        return _validate.host_arrays(named, outputs)

    def step(self, opt: str, arrays: dict, hp: dict) -> None:
        raise NotImplementedError

    #: whether :meth:`sparse_step` is implemented (row-sparse steps)
    sparse = False

    def sparse_check(self, tables: dict, indices, values, row_states=()):
        """The checks of a row-sparse step: ``(tables, indices, values)`` for
        :meth:`sparse_step` (:func:`fastadam._validate.sparse_arrays` on the host)."""
        return _validate.sparse_arrays(tables, indices, values, row_states)

    def sparse_step(self, opt: str, tables: dict, indices, values, hp: dict) -> None:
        """A row-sparse step (:mod:`fastadam.kernels.cpu_sparse`): ``tables`` maps the
        names of :data:`fastadam._scalars.SPARSE_KERNEL_STATES` (and ``"param"``) to
        the checked arrays, ``opt`` names a row-sparse function of :mod:`._scalars`."""
        raise BackendUnavailableError(
            "row-sparse steps are implemented on the numba, cython, cuda and numpy backends, "
            f"not {self.name!r}")


class CompiledBackend(Backend):
    """A backend given by a ``run(kernel_name, arrays, scalars)`` function."""

    def __init__(self, name, run, check=None, device=False, bind=None, sparse_run=None,
                 sparse_check=None, entry=None, sparse_bind=None):
        self.name = name
        self.run = run
        #: optional ``entry(kernel_name, arrays, typed_scalars) -> f``: ``f(*arrays,
        #: *scalars)`` runs the kernel on arrays typed as those (checked by the caller)
        #: with the least per-call overhead (:func:`fastadam.kernels.cpu.entry`)
        self.entry = entry
        #: optional ``sparse_run(kernel_name, tables, indices, values, scalars)``: the
        #: row-sparse kernels (:func:`fastadam.kernels.cpu_sparse.run`,
        #: :func:`fastadam.kernels.cuda_sparse.run` with ``sparse_check`` its checks)
        self.sparse_run = sparse_run
        self.sparse = sparse_run is not None
        #: optional ``sparse_bind(kernel_name, tables) -> f``: ``f(indices, values,
        #: scalars)`` is ``sparse_run`` on those (checked) tables with the least per-call
        #: overhead, the scalars as Python floats (:class:`fastadam.kernels.cpu_sparse.Bound`)
        self.sparse_bind = sparse_bind
        if sparse_check is not None:
            self.sparse_check = sparse_check
        self.device = device
        if check is not None:
            self.check = check
        #: optional ``bind(kernel_name, arrays, typed_scalars) -> f``: ``f(*scalars)`` runs
        #: the kernel on those (already checked) arrays with the least per-call overhead,
        #: taking the scalars as Python floats (and bools) and rounding them to the
        #: arrays' dtype as ``dtype.type`` does; used by the façades, which step the
        #: same buffers again and again (``fastadam/optim/_plan.py``).
        self.bind = bind

    def step(self, opt, arrays, hp):
        p = arrays["param"]
        kname, scal = getattr(_scalars, opt)(p.dtype, **hp)
        self.run(kname, (p, arrays["grad"]) + tuple(arrays[s] for s in _scalars.KERNEL_STATES[kname]),
                 scal)

    def sparse_step(self, opt, tables, indices, values, hp):
        if self.sparse_run is None:
            return super().sparse_step(opt, tables, indices, values, hp)
        p = tables["param"]
        kname, scal = getattr(_scalars, opt)(p.dtype, **hp)
        self.sparse_run(kname, (p,) + tuple(tables[s] for s in
                                            _scalars.SPARSE_KERNEL_STATES[kname]),
                        indices, values, scal)


class NumpyBackend(Backend):
    """The reference implementation (:mod:`fastadam.reference`)."""

    name = "numpy"

    def step(self, opt, a, hp):
        from . import reference as r
        p, g = a["param"], a["grad"]
        if opt == "adam":
            r.adam_(p, g, a["exp_avg"], a["exp_avg_sq"], a.get("max_exp_avg_sq"), **hp)
        elif opt == "rmsprop":
            r.rmsprop_(p, g, a["square_avg"], a.get("momentum_buffer"), a.get("grad_avg"), **hp)
        elif opt == "adagrad":
            r.adagrad_(p, g, a["sum"], **hp)
        elif opt == "sgd":
            r.sgd_(p, g, a.get("momentum_buffer"), **hp)
        elif opt == "adadelta":
            r.adadelta_(p, g, a["square_avg"], a["acc_delta"], **hp)
        elif opt == "nadam":
            r.nadam_(p, g, a["exp_avg"], a["exp_avg_sq"], **hp)
        elif opt == "adamax":
            r.adamax_(p, g, a["exp_avg"], a["exp_inf"], **hp)
        else:  # pragma: no cover - programming error
            raise KeyError(opt)

    sparse = True

    def sparse_step(self, opt, t, indices, values, hp):
        from . import reference as r
        hp = dict(hp)
        hp.pop("dim", None)
        f = getattr(r, opt + "_")
        if opt == "lazy_adam":
            f(t["param"], indices, values, t["exp_avg"], t["exp_avg_sq"],
              t.get("max_exp_avg_sq"), **hp)
        else:
            states = {"sparse_adam": ("exp_avg", "exp_avg_sq"), "sparse_adagrad": ("sum",),
                      "sparse_sgd": (), "rowwise_adagrad": ("sum",)}[opt]
            f(t["param"], indices, values, *(t[s] for s in states), **hp)


def _load_numba():
    try:
        from .kernels import cpu, cpu_sparse
    except ImportError as e:
        raise BackendUnavailableError(f"the numba backend needs numba, which failed to import: {e}") from e
    return CompiledBackend("numba", cpu.run, bind=cpu.bind, sparse_run=cpu_sparse.run,
                           entry=cpu.entry, sparse_bind=cpu_sparse.Bound)


def _load_cython():
    try:
        from ._cython import backend as cy
    except ImportError as e:
        raise BackendUnavailableError(
            "the cython backend's compiled extension is not built or failed to import "
            f"({e}); reinstall fastadam with a C compiler (pip install .)") from e
    return CompiledBackend("cython", cy.run, bind=getattr(cy, "bind", None),
                           sparse_run=getattr(cy, "sparse_run", None))


def _load_cuda():
    try:
        from .kernels import cuda
    except ImportError as e:
        raise BackendUnavailableError(f"the cuda backend is not available: {e}") from e
    ok, why = cuda.available()
    if not ok:
        raise BackendUnavailableError(f"the cuda backend is not available: {why}")
    from .kernels import cuda_sparse
    return CompiledBackend("cuda", cuda.run, check=cuda.check, device=True,
                           sparse_run=cuda_sparse.run, sparse_check=cuda_sparse.check)


def _load_numpy():
    return NumpyBackend()


_LOADERS = {"numba": _load_numba, "cython": _load_cython, "cuda": _load_cuda,
            "numpy": _load_numpy}
_cache: dict = {}
_failures: dict = {}


def get_backend(name: str) -> Backend:
    """The backend called ``name``; raises :class:`BackendUnavailableError` if it cannot run."""
    b = _cache.get(name)
    if b is not None:
        return b
    if name not in _LOADERS:
        raise ValueError(f"Invalid backend: {name!r}; expected 'auto' or one of {BACKEND_NAMES}")
    if name in _failures:
        raise BackendUnavailableError(_failures[name])
    try:
        b = _LOADERS[name]()
    except BackendUnavailableError as e:
        _failures[name] = str(e)
        raise
    _cache[name] = b
    return b


def available_backends() -> list:
    """The names of the backends that work on this machine, in order of preference."""
    out = []
    for name in BACKEND_NAMES:
        try:
            get_backend(name)
        except BackendUnavailableError:
            continue
        out.append(name)
    return out


def is_device_array(a) -> bool:
    """True for arrays exposing ``__cuda_array_interface__`` (NumPy arrays never do), and
    for the device arrays of numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``), which
    do not expose it."""
    import numpy as np
    if isinstance(a, np.ndarray):
        return False
    t = type(a)
    if t.__name__ == "FakeCUDAArray" and t.__module__.startswith("numba"):
        return True
    try:
        return hasattr(a, "__cuda_array_interface__")
    except RuntimeError:
        # torch raises RuntimeError (not AttributeError) for a CUDA tensor that
        # requires grad: it is a device array all the same.
        return True


def resolve(name, array) -> Backend:
    """The backend for a call: ``name`` itself, or for ``"auto"`` the best one for ``array``."""
    if not isinstance(name, str):
        raise TypeError(f"backend must be a str, got {type(name).__name__}")
    if name != "auto":
        return get_backend(name)
    if is_device_array(array):
        return get_backend("cuda")
    for n in _HOST_PREFERENCE:
        try:
            return get_backend(n)
        except BackendUnavailableError:
            continue
    raise BackendUnavailableError("no backend available")  # pragma: no cover


#: bumped by :func:`reset_cache`: a caller that keeps a backend (cached plans) checks it
generation = 0


def reset_cache() -> None:  # used by tests that hide a backend
    global generation
    generation += 1
    _cache.clear()
    _failures.clear()
    importlib.invalidate_caches()
