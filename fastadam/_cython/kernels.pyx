# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
# cython: cdivision=True, infer_types=False
"""The Cython kernels: one fused, in-place loop per optimizer variant (C API).

Declared in ``kernels.pxd`` (documented there; also re-exported by
``fastadam/capi.pxd``).  Each loop applies the rule of :mod:`fastadam.rules`,
translated to Cython at build time into ``_rules.pxi`` by ``_codegen.py``, to
every element.  The loops (``_loop_adam``, ...) are generated there too, all
from one template (``_codegen.LOOP_TEMPLATE``): a plain loop when ``parallel``
is zero; otherwise an OpenMP ``prange`` (static schedule), which for buffers of
8 MiB and more runs in prefetched sub-blocks like the numba kernels
(``fastadam/kernels/_blocked.py``), with the same results.  ``cdivision=True``
gives IEEE division (x/0 is inf or nan, as in NumPy and numba), never a Python
ZeroDivisionError.

Each API function (``adam``, ...) is a thin wrapper around its loop
(``_loop_adam``, ...): the build compiles the loops in a baseline and an AVX2
version (``target_clones``, see ``_build_ext.py``), which GCC does not allow on a
function whose address Cython's C-API export table takes.
"""

from cython.parallel cimport prange

include "_rules.pxi"

cdef extern from *:
    """
    #ifdef _OPENMP
    #define FASTADAM_OPENMP 1
    #else
    #define FASTADAM_OPENMP 0
    #endif
    /* _build_ext.py puts FASTADAM_CLONES before each _loop_* definition of the
       generated C and defines FASTADAM_TARGET_CLONES where the compiler supports
       function multi-versioning: each loop is then compiled for baseline x86-64 and
       for AVX2, and the loader picks the one for the CPU at hand. */
    #if defined(FASTADAM_TARGET_CLONES) && (defined(__x86_64__) || defined(__i386__))
    #if FASTADAM_TARGET_CLONES == 3
    #define FASTADAM_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
    #else
    #define FASTADAM_CLONES __attribute__((target_clones("avx2", "default")))
    #endif
    #define FASTADAM_HAVE_CLONES 1
    #else
    #define FASTADAM_CLONES
    #define FASTADAM_HAVE_CLONES 0
    #endif
    """
    int FASTADAM_OPENMP
    int FASTADAM_HAVE_CLONES


cdef int openmp_enabled() noexcept nogil:
    return FASTADAM_OPENMP


def _openmp_enabled():
    """True when this build runs its parallel loops with OpenMP."""
    return bool(FASTADAM_OPENMP)


def _target_clones():
    """True when the loops were built in baseline and AVX2 versions (picked at load)."""
    return bool(FASTADAM_HAVE_CLONES)


cdef void adam(floating* p, const floating* g, floating* m, floating* v, Py_ssize_t n,
               floating gsign, floating l2, floating decay, floating omb1, floating beta2,
               floating omb2, floating neg_step, floating inv_bc2_sqrt, floating eps,
               bint parallel) noexcept nogil:
    _loop_adam(p, g, m, v, n, gsign, l2, decay, omb1, beta2, omb2, neg_step,
               inv_bc2_sqrt, eps, parallel)


cdef void adam_amsgrad(floating* p, const floating* g, floating* m, floating* v,
                       floating* vmax, Py_ssize_t n,
                       floating gsign, floating l2, floating decay, floating omb1,
                       floating beta2, floating omb2, floating neg_step,
                       floating inv_bc2_sqrt, floating eps, bint parallel) noexcept nogil:
    _loop_adam_amsgrad(p, g, m, v, vmax, n, gsign, l2, decay, omb1, beta2, omb2,
                       neg_step, inv_bc2_sqrt, eps, parallel)


cdef void rmsprop(floating* p, const floating* g, floating* sq, Py_ssize_t n,
                  floating gsign, floating l2, floating alpha, floating oma, floating neg_lr,
                  floating eps, bint parallel) noexcept nogil:
    _loop_rmsprop(p, g, sq, n, gsign, l2, alpha, oma, neg_lr, eps, parallel)


cdef void rmsprop_momentum(floating* p, const floating* g, floating* sq, floating* buf,
                           Py_ssize_t n, floating gsign, floating l2, floating alpha,
                           floating oma, floating neg_lr, floating eps, floating momentum,
                           bint parallel) noexcept nogil:
    _loop_rmsprop_momentum(p, g, sq, buf, n, gsign, l2, alpha, oma, neg_lr, eps,
                           momentum, parallel)


cdef void rmsprop_centered(floating* p, const floating* g, floating* sq, floating* ga,
                           Py_ssize_t n, floating gsign, floating l2, floating alpha,
                           floating oma, floating neg_lr, floating eps, floating lw,
                           bint parallel) noexcept nogil:
    _loop_rmsprop_centered(p, g, sq, ga, n, gsign, l2, alpha, oma, neg_lr, eps, lw,
                           parallel)


cdef void rmsprop_centered_momentum(floating* p, const floating* g, floating* sq,
                                    floating* ga, floating* buf, Py_ssize_t n,
                                    floating gsign, floating l2, floating alpha,
                                    floating oma, floating neg_lr, floating eps,
                                    floating momentum, floating lw,
                                    bint parallel) noexcept nogil:
    _loop_rmsprop_centered_momentum(p, g, sq, ga, buf, n, gsign, l2, alpha, oma, neg_lr,
                                    eps, momentum, lw, parallel)


cdef void adagrad(floating* p, const floating* g, floating* s, Py_ssize_t n,
                  floating gsign, floating l2, floating neg_clr, floating eps,
                  bint parallel) noexcept nogil:
    _loop_adagrad(p, g, s, n, gsign, l2, neg_clr, eps, parallel)


cdef void sgd(floating* p, const floating* g, Py_ssize_t n,
              floating gsign, floating l2, floating neg_lr, bint parallel) noexcept nogil:
    _loop_sgd(p, g, n, gsign, l2, neg_lr, parallel)


cdef void sgd_momentum(floating* p, const floating* g, floating* buf, Py_ssize_t n,
                       floating gsign, floating l2, floating neg_lr, floating momentum,
                       floating omd, bint first, bint nesterov, bint parallel) noexcept nogil:
    _loop_sgd_momentum(p, g, buf, n, gsign, l2, neg_lr, momentum, omd, first, nesterov,
                       parallel)


cdef void adadelta(floating* p, const floating* g, floating* sq, floating* acc, Py_ssize_t n,
                   floating gsign, floating l2, floating rho, floating omr, floating neg_lr,
                   floating eps, bint parallel) noexcept nogil:
    _loop_adadelta(p, g, sq, acc, n, gsign, l2, rho, omr, neg_lr, eps, parallel)


cdef void nadam(floating* p, const floating* g, floating* m, floating* v, Py_ssize_t n,
                floating gsign, floating l2, floating decay, floating omb1, floating beta2,
                floating omb2, floating inv_bc2, floating eps, floating cg, floating cm,
                bint parallel) noexcept nogil:
    _loop_nadam(p, g, m, v, n, gsign, l2, decay, omb1, beta2, omb2, inv_bc2, eps, cg,
                cm, parallel)


cdef void adamax(floating* p, const floating* g, floating* m, floating* u, Py_ssize_t n,
                 floating gsign, floating l2, floating omb1, floating beta2, floating eps,
                 floating neg_clr, bint parallel) noexcept nogil:
    _loop_adamax(p, g, m, u, n, gsign, l2, omb1, beta2, eps, neg_clr, parallel)