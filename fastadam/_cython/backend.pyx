# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
# cython: cdivision=True
"""The ``cython`` backend: ``run(kernel_name, arrays, scalars)`` and the row-sparse
``sparse_run(kernel_name, tables, indices, values, scalars)``.

The same contract as :func:`fastadam.kernels.cpu.run` (the numba backend):
``arrays`` are 1-D C-contiguous float32 or float64 arrays of one length, the
parameter, the gradient, then the state arrays in the order of
:data:`fastadam._scalars.KERNEL_STATES`; ``scalars`` is the tuple made by
:mod:`fastadam._scalars`.  Buffers of at least
:data:`fastadam._config.PARALLEL_THRESHOLD` elements run the OpenMP loop,
smaller ones the serial loop.  The loops are those of the C API
(``kernels.pxd``); the arrays are taken as typed memoryviews, which check
dtype, dimension, contiguity and (outputs) writability, and the loop runs
without the GIL.  :func:`bind` does those checks once for callers that step the
same buffers again and again.
"""

from cython cimport floating
from libc.stdint cimport int64_t

cimport fastadam._cython.kernels as K
from fastadam import _config
from fastadam._scalars import KERNEL_STATES

import numpy as np

KERNEL_NAMES = ("adam", "adam_amsgrad", "rmsprop", "rmsprop_momentum", "rmsprop_centered",
                "rmsprop_centered_momentum", "adagrad", "sgd", "sgd_momentum", "adadelta",
                "nadam", "adamax")
_NARRAYS = {"adam": 4, "adam_amsgrad": 5, "rmsprop": 3, "rmsprop_momentum": 4,
            "rmsprop_centered": 4, "rmsprop_centered_momentum": 5, "adagrad": 3, "sgd": 2,
            "sgd_momentum": 3, "adadelta": 4, "nadam": 4, "adamax": 4}
_NSCALARS = {"adam": 9, "adam_amsgrad": 9, "rmsprop": 6, "rmsprop_momentum": 7,
             "rmsprop_centered": 7, "rmsprop_centered_momentum": 8, "adagrad": 4, "sgd": 3,
             "sgd_momentum": 7, "adadelta": 6, "nadam": 10, "adamax": 6}
_IDS = {name: i for i, name in enumerate(KERNEL_NAMES)}
cdef tuple _NSCALARS_BY_ID = tuple(_NSCALARS[k] for k in KERNEL_NAMES)

_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)


def check_fresh(rules_dir=None):
    """Raise ImportError when the kernels were built from other rule sources.

    The loops are generated from ``fastadam/rules/*.py`` at build time; after a rule
    is edited in a development checkout, the extension computes the old rule until
    it is rebuilt.  Importing this module runs this check, so a stale build makes
    the ``cython`` backend unavailable (with this message) instead of wrong.
    """
    import pathlib
    from fastadam._cython import _codegen, kernels
    if rules_dir is None:
        rules_dir = pathlib.Path(_config.__file__).resolve().parent / "rules"
    sha = _codegen.rules_sha(rules_dir)
    if sha != kernels.RULES_SHA:
        raise ImportError(
            "fastadam's Cython extension was built from other versions of fastadam/rules "
            "than those installed; rebuild it: python setup.py build_ext --inplace "
            "(or pip install -e . / pip install .)")


check_fresh()


def openmp_enabled():
    """True when this build's parallel loops use OpenMP (False: a serial build)."""
    return bool(K.openmp_enabled())


cdef str _label(int kid, Py_ssize_t j):
    if j == 0:
        return "param"
    if j == 1:
        return "grad"
    return KERNEL_STATES[KERNEL_NAMES[kid]][j - 2]


cdef Py_ssize_t _acquire(floating t, int kid, tuple a, void** ptr, list keep) except -1:
    """Check ``a`` (param, grad, *states) and store their data pointers in ``ptr``.

    ``t`` only selects the specialization.  A typed memoryview is taken of every
    array: it checks the dtype, the dimension, C-contiguity and, for every array but
    the gradient, writability; errors name the array.  With ``keep`` the
    memoryviews are kept there (a bound caller holds the pointers).
    """
    cdef floating[::1] w
    cdef const floating[::1] r
    cdef Py_ssize_t n = 0, j
    for j in range(len(a)):
        try:
            if j == 1:
                r = a[j]
            else:
                w = a[j]
        except (TypeError, ValueError, BufferError) as e:
            x = a[j]
            what = (f"dtype {x.dtype}" if hasattr(x, "dtype") else type(x).__name__)
            raise type(e)(f"{_label(kid, j)} ({what}): {e}") from None
        if j == 0:
            n = w.shape[0]
        elif (r.shape[0] if j == 1 else w.shape[0]) != n:
            raise ValueError(f"{_label(kid, j)} has {r.shape[0] if j == 1 else w.shape[0]} "
                             f"elements, but param has {n}")
        if j == 1:
            ptr[j] = <void*>&r[0] if n else NULL
        else:
            ptr[j] = <void*>&w[0] if n else NULL
        if keep is not None:
            keep.append(r if j == 1 else w)
    return n


cdef int _call(floating t, int kid, void** ptr, Py_ssize_t n, tuple s, bint par) except -1:
    """Convert the scalars to ``floating`` and run kernel ``kid`` without the GIL."""
    cdef floating c[10]
    cdef bint first = False, nesterov = False
    cdef Py_ssize_t j, ns = len(s)
    if ns != _NSCALARS_BY_ID[kid]:
        raise ValueError(f"kernel {KERNEL_NAMES[kid]!r} takes {_NSCALARS_BY_ID[kid]} "
                         f"scalars, got {ns}")
    if kid == 8:  # sgd_momentum: five numbers, then first and nesterov
        ns = 5
        first = s[5]
        nesterov = s[6]
    for j in range(ns):
        c[j] = s[j]
    if n == 0:
        return 0
    cdef floating* p = <floating*>ptr[0]
    cdef const floating* g = <const floating*>ptr[1]
    cdef floating* s0 = <floating*>ptr[2]
    cdef floating* s1 = <floating*>ptr[3]
    cdef floating* s2 = <floating*>ptr[4]
    with nogil:
        if kid == 0:
            K.adam(p, g, s0, s1, n, c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], par)
        elif kid == 1:
            K.adam_amsgrad(p, g, s0, s1, s2, n,
                           c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], par)
        elif kid == 2:
            K.rmsprop(p, g, s0, n, c[0], c[1], c[2], c[3], c[4], c[5], par)
        elif kid == 3:
            K.rmsprop_momentum(p, g, s0, s1, n, c[0], c[1], c[2], c[3], c[4], c[5], c[6], par)
        elif kid == 4:
            K.rmsprop_centered(p, g, s0, s1, n, c[0], c[1], c[2], c[3], c[4], c[5], c[6],
                               par)
        elif kid == 5:
            K.rmsprop_centered_momentum(p, g, s0, s1, s2, n,
                                        c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7],
                                        par)
        elif kid == 6:
            K.adagrad(p, g, s0, n, c[0], c[1], c[2], c[3], par)
        elif kid == 7:
            K.sgd(p, g, n, c[0], c[1], c[2], par)
        elif kid == 8:
            K.sgd_momentum(p, g, s0, n, c[0], c[1], c[2], c[3], c[4], first, nesterov, par)
        elif kid == 9:
            K.adadelta(p, g, s0, s1, n, c[0], c[1], c[2], c[3], c[4], c[5], par)
        elif kid == 10:
            K.nadam(p, g, s0, s1, n, c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8],
                    c[9], par)
        elif kid == 11:
            K.adamax(p, g, s0, s1, n, c[0], c[1], c[2], c[3], c[4], c[5], par)
    return 0


cdef int _kernel_id(str name, tuple a) except -1:
    cdef int kid
    try:
        kid = _IDS[name]
    except KeyError:
        raise KeyError(f"unknown kernel {name!r}; expected one of {KERNEL_NAMES}") from None
    if len(a) != _NARRAYS[name]:
        raise ValueError(f"kernel {name!r} takes {_NARRAYS[name]} arrays "
                         f"(param, grad, states), got {len(a)}")
    return kid


cdef int _is_f64(object p) except -1:
    dt = p.dtype
    if dt == _F32:
        return 0
    if dt == _F64:
        return 1
    raise TypeError(f"param must have dtype float32 or float64, got {dt}")


def run(str name, arrays, scalars):
    """Run kernel ``name`` in place on 1-D contiguous ``arrays`` with ``scalars``.

    Parameters
    ----------
    name : str
        A kernel of :data:`fastadam._scalars.KERNEL_STATES` (``"adam"``, ...).
    arrays : sequence of numpy.ndarray
        ``(param, grad, *states)``, states in ``KERNEL_STATES`` order: 1-D,
        C-contiguous, all float32 or all float64, all of one length; every array
        but ``grad`` is updated in place.
    scalars : sequence
        The per-step scalars of :mod:`fastadam._scalars` for this kernel, of the
        arrays' dtype (Python floats are converted as ``dtype.type`` does).

    Raises
    ------
    KeyError
        For an unknown kernel name.
    ValueError, TypeError
        For a wrong number of arrays or scalars, arrays of another dtype, length,
        dimension or layout, or read-only outputs: raised before anything is written.
    """
    cdef void* ptr[5]
    cdef tuple a = tuple(arrays)
    cdef tuple s = tuple(scalars)
    cdef int kid = _kernel_id(name, a)
    cdef Py_ssize_t n
    cdef bint par
    if _is_f64(a[0]):
        n = _acquire(<double>0, kid, a, ptr, None)
        par = n >= _config.PARALLEL_THRESHOLD
        _call(<double>0, kid, ptr, n, s, par)
    else:
        n = _acquire(<float>0, kid, a, ptr, None)
        par = n >= _config.PARALLEL_THRESHOLD
        _call(<float>0, kid, ptr, n, s, par)


cdef class Bound:
    """Kernel ``name`` bound to fixed arrays: ``f(*scalars)`` runs one step.

    Made by :func:`bind`.  The arrays were checked once, when bound; this object
    keeps them (and memoryviews of them) alive, so their data stays where it was.
    """

    cdef int kid
    cdef bint f64, par
    cdef Py_ssize_t n
    cdef void* ptr[5]
    cdef list keep
    cdef readonly str name

    def __call__(self, *scalars):
        if self.f64:
            _call(<double>0, self.kid, self.ptr, self.n, scalars, self.par)
        else:
            _call(<float>0, self.kid, self.ptr, self.n, scalars, self.par)


def bind(str name, arrays, scalars=None):
    """A low-overhead caller of kernel ``name`` on fixed ``arrays``: ``f(*scalars)``.

    The arrays are checked as by :func:`run` once, here; the serial or parallel
    loop is chosen by their length.  Each call ``f(*scalars)`` then only converts
    the scalars (float32 or float64 values, or Python floats, converted as
    ``dtype.type`` does) and runs the loop without the GIL.  ``scalars``, when
    given, is a sample whose length is checked.  The same contract as
    :func:`fastadam.kernels.cpu.bind`.
    """
    cdef tuple a = tuple(arrays)
    cdef Bound b = Bound.__new__(Bound)
    b.kid = _kernel_id(name, a)
    b.name = name
    b.keep = []
    b.f64 = _is_f64(a[0])
    if b.f64:
        b.n = _acquire(<double>0, b.kid, a, b.ptr, b.keep)
    else:
        b.n = _acquire(<float>0, b.kid, a, b.ptr, b.keep)
    b.par = b.n >= _config.PARALLEL_THRESHOLD
    if scalars is not None and len(scalars) != _NSCALARS[name]:
        raise ValueError(f"kernel {name!r} takes {_NSCALARS[name]} scalars, "
                         f"got {len(scalars)}")
    return b


# --- row-sparse (embedding) steps -----------------------------------------------------

SPARSE_KERNEL_NAMES = ("sparse_adam", "sparse_adagrad", "sparse_sgd", "rowwise_adagrad",
                       "lazy_adam", "lazy_adam_amsgrad")
_SPARSE_IDS = {name: i for i, name in enumerate(SPARSE_KERNEL_NAMES)}
_SPARSE_NTABLES = (3, 2, 1, 2, 3, 4)
_SPARSE_NSCALARS = (5, 3, 2, 5, 9, 9)


cdef int _sparse_call(floating t, int kid, tuple tables, object indices, object values,
                      tuple s) except -1:
    """Check ``tables`` / ``indices`` / ``values`` (as typed memoryviews, errors naming
    the argument), convert the scalars, run kernel ``kid`` without the GIL."""
    cdef floating[:, ::1] p
    cdef floating[:, ::1] w
    cdef floating[::1] rs
    cdef const int64_t[::1] ix
    cdef const floating[:, ::1] vl
    cdef floating* ptr[4]
    cdef floating c[9]
    cdef Py_ssize_t rows, dim, n, j
    cdef int err = 0
    cdef bint par
    for j in range(4):
        ptr[j] = NULL
    try:
        p = tables[0]
    except (TypeError, ValueError, BufferError) as e:
        raise type(e)(f"param: {e}") from None
    rows = p.shape[0]
    dim = p.shape[1]
    if rows and dim:
        ptr[0] = &p[0, 0]
    for j in range(1, len(tables)):
        if kid == 3:                            # rowwise_adagrad: one value per row
            try:
                rs = tables[j]
            except (TypeError, ValueError, BufferError) as e:
                raise type(e)(f"state {j}: {e}") from None
            if rs.shape[0] != rows:
                raise ValueError(f"state {j} has shape ({rs.shape[0]},); expected ({rows},)")
            if rows:
                ptr[j] = &rs[0]
        else:
            try:
                w = tables[j]
            except (TypeError, ValueError, BufferError) as e:
                raise type(e)(f"state {j}: {e}") from None
            if w.shape[0] != rows or w.shape[1] != dim:
                raise ValueError(f"state {j} has shape ({w.shape[0]}, {w.shape[1]}); "
                                 f"expected ({rows}, {dim})")
            if rows and dim:
                ptr[j] = &w[0, 0]
    try:
        ix = indices
    except (TypeError, ValueError, BufferError) as e:
        raise type(e)(f"indices (int64, 1-D, C-contiguous): {e}") from None
    try:
        vl = values
    except (TypeError, ValueError, BufferError) as e:
        raise type(e)(f"values: {e}") from None
    n = ix.shape[0]
    if vl.shape[0] != n or vl.shape[1] != dim:
        raise ValueError(f"values has shape ({vl.shape[0]}, {vl.shape[1]}); expected "
                         f"({n}, {dim})")
    if len(s) != _SPARSE_NSCALARS[kid]:
        raise ValueError(f"kernel {SPARSE_KERNEL_NAMES[kid]!r} takes "
                         f"{_SPARSE_NSCALARS[kid]} scalars, got {len(s)}")
    for j in range(len(s)):
        c[j] = s[j]
    if n == 0 or dim == 0:
        return 0
    par = n * dim >= _config.PARALLEL_THRESHOLD
    cdef const int64_t* ip = &ix[0]
    cdef const floating* vp = &vl[0, 0]
    with nogil:
        if kid == 0:
            err = K.sparse_adam(ptr[0], ptr[1], ptr[2], rows, dim, ip, vp, n,
                                c[0], c[1], c[2], c[3], c[4], par)
        elif kid == 1:
            err = K.sparse_adagrad(ptr[0], ptr[1], rows, dim, ip, vp, n, c[0], c[1], c[2], par)
        elif kid == 2:
            err = K.sparse_sgd(ptr[0], rows, dim, ip, vp, n, c[0], c[1], par)
        elif kid == 3:
            err = K.rowwise_adagrad(ptr[0], ptr[1], rows, dim, ip, vp, n,
                                    c[0], c[1], c[2], c[3], c[4], par)
        elif kid == 4:
            err = K.lazy_adam(ptr[0], ptr[1], ptr[2], rows, dim, ip, vp, n,
                              c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], par)
        else:
            err = K.lazy_adam_amsgrad(ptr[0], ptr[1], ptr[2], ptr[3], rows, dim, ip, vp, n,
                                      c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8],
                                      par)
    if err == -2:
        raise IndexError(f"indices: a row outside [0, {rows}) (nothing was written)")
    if err == -1:
        raise MemoryError("row-sparse step: out of memory (nothing was written)")
    return 0


def sparse_run(str name, tables, indices, values, scalars):
    """Run row-sparse kernel ``name`` in place: the same contract as
    :func:`fastadam.kernels.cpu_sparse.run` (the numba backend's).

    Parameters
    ----------
    name : str
        One of :data:`SPARSE_KERNEL_NAMES`.
    tables : sequence of numpy.ndarray
        The table and its state arrays, in the order of
        :data:`fastadam._scalars.SPARSE_KERNEL_STATES`: 2-D ``(rows, dim)``
        C-contiguous, float32 or float64 (all one dtype), writeable; row-wise
        Adagrad's state 1-D ``(rows,)``.
    indices : numpy.ndarray
        1-D C-contiguous int64 rows, duplicates allowed, any order.
    values : numpy.ndarray
        ``(len(indices), dim)`` C-contiguous, the table's dtype.
    scalars : sequence
        The scalars of :mod:`fastadam._scalars` for this kernel.

    Raises
    ------
    KeyError
        For an unknown kernel name.
    ValueError, TypeError
        For arrays of another dtype, shape or layout, a read-only table or state, a
        wrong number of arrays or scalars.
    IndexError
        For a row outside ``[0, rows)``.  All raised before anything is written.
    """
    cdef tuple t = tuple(tables)
    cdef int kid
    try:
        kid = _SPARSE_IDS[name]
    except KeyError:
        raise KeyError(f"unknown row-sparse kernel {name!r}; expected one of "
                       f"{SPARSE_KERNEL_NAMES}") from None
    if len(t) != _SPARSE_NTABLES[kid]:
        raise ValueError(f"kernel {name!r} takes {_SPARSE_NTABLES[kid]} tables (param, "
                         f"states), got {len(t)}")
    if _is_f64(t[0]):
        _sparse_call(<double>0, kid, t, indices, values, tuple(scalars))
    else:
        _sparse_call(<float>0, kid, t, indices, values, tuple(scalars))
