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
from libc.stdint cimport int64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memset

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

# --- row-sparse (embedding) kernels ----------------------------------------------------
# The Cython twin of fastadam/kernels/cpu_sparse.py: the lookups are sorted by row (a
# stable LSD radix argsort, checking every index first), each distinct row's gradient
# rows are summed in lookup order by one thread (results independent of the thread
# count and schedule), and the rule of fastadam/rules/sparse.py (or rules/adam.py for
# lazy Adam), translated into _rules.pxi like the dense rules, updates that row of the
# table and of its state.  Only the looked-up rows are read or written.

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define FASTADAM_MAX_THREADS() omp_get_max_threads()
    #define FASTADAM_THREAD_NUM() omp_get_thread_num()
    #else
    #define FASTADAM_MAX_THREADS() 1
    #define FASTADAM_THREAD_NUM() 0
    #endif
    """
    int _max_threads "FASTADAM_MAX_THREADS"() noexcept nogil
    int _thread_num "FASTADAM_THREAD_NUM"() noexcept nogil

cdef enum:
    _RADIX_BITS = 11          # at most, per pass of the index sort
    _ROWS_AHEAD = 4           # distinct rows ahead whose table rows get prefetch hints
    _LOOKUPS_AHEAD = 8        # lookups ahead whose gradient rows get prefetch hints
    _SPARSE_CHUNK = 8         # distinct rows per dynamically scheduled chunk

cdef enum:
    K_SPARSE_ADAM = 0
    K_SPARSE_ADAGRAD = 1
    K_SPARSE_SGD = 2
    K_ROWWISE_ADAGRAD = 3
    K_LAZY_ADAM = 4
    K_LAZY_ADAM_AMSGRAD = 5


cdef int _coalesce(const int64_t* idx, Py_ssize_t n, Py_ssize_t rows, int64_t** keys_out,
                   int64_t** order_out, int64_t** starts_out,
                   Py_ssize_t* nseg_out) noexcept nogil:
    """Sort lookups ``idx[0:n]`` by row, stably: ``keys`` the sorted rows, ``order`` their
    positions in ``idx``, ``starts[0:nseg+1]`` the segments of equal rows.  Returns 0,
    -2 when an index is outside ``[0, rows)`` (checked before anything else), -1 when
    out of memory; on error nothing stays allocated."""
    cdef int bits = 1, passes, width, q
    cdef Py_ssize_t i, d, nb, pos, total, nseg = 0
    cdef int64_t key, mask
    cdef int64_t* tmp
    for i in range(n):
        if idx[i] < 0 or idx[i] >= rows:
            return -2
    while (<int64_t>1 << bits) < rows:
        bits += 1
    passes = (bits + _RADIX_BITS - 1) // _RADIX_BITS
    width = (bits + passes - 1) // passes
    nb = <Py_ssize_t>1 << width
    mask = nb - 1
    cdef int64_t* keys = <int64_t*>malloc(n * sizeof(int64_t))
    cdef int64_t* keys2 = <int64_t*>malloc(n * sizeof(int64_t))
    cdef int64_t* order = <int64_t*>malloc(n * sizeof(int64_t))
    cdef int64_t* order2 = <int64_t*>malloc(n * sizeof(int64_t))
    cdef int64_t* starts = <int64_t*>malloc((n + 1) * sizeof(int64_t))
    cdef int64_t* cnt = <int64_t*>calloc(passes * nb, sizeof(int64_t))
    if not (keys and keys2 and order and order2 and starts and cnt):
        free(keys); free(keys2); free(order); free(order2); free(starts); free(cnt)
        return -1
    for i in range(n):                      # every pass's histogram in one read
        key = idx[i]
        keys[i] = key
        order[i] = i
        for q in range(passes):
            cnt[q * nb + ((key >> (q * width)) & mask)] += 1
    for q in range(passes):
        total = 0
        for d in range(nb):
            pos = cnt[q * nb + d]
            cnt[q * nb + d] = total
            total += pos
    for q in range(passes):                 # stable scatter by digit q
        for i in range(n):
            key = keys[i]
            d = q * nb + ((key >> (q * width)) & mask)
            pos = cnt[d]
            cnt[d] = pos + 1
            keys2[pos] = key
            order2[pos] = order[i]
        tmp = keys; keys = keys2; keys2 = tmp
        tmp = order; order = order2; order2 = tmp
    for i in range(n):
        if i == 0 or keys[i] != keys[i - 1]:
            starts[nseg] = i
            nseg += 1
    starts[nseg] = n
    free(keys2); free(order2); free(cnt)
    keys_out[0] = keys
    order_out[0] = order
    starts_out[0] = starts
    nseg_out[0] = nseg
    return 0


cdef inline void _prefetch_row(const floating* row, Py_ssize_t dim) noexcept nogil:
    cdef Py_ssize_t j
    cdef Py_ssize_t line = _LINE // sizeof(floating)
    j = 0
    while j < dim:
        _prefetch(row + j)
        j = j + line


cdef inline const floating* _grad_row(const floating* vals, Py_ssize_t dim,
                                      const int64_t* order, Py_ssize_t a, Py_ssize_t z,
                                      Py_ssize_t n, floating* buf) noexcept nogil:
    """The summed gradient of the lookups ``order[a:z]`` (one row), in lookup order:
    the lookup's own gradient row when it is alone, else the sum in ``buf``.  Each
    lookup first issues prefetch hints for the gradient row ``_LOOKUPS_AHEAD`` lookups
    on (of ``n``), as the numba kernels do."""
    cdef Py_ssize_t j, k, q = order[a]
    if a + _LOOKUPS_AHEAD < n:
        _prefetch_row(vals + order[a + _LOOKUPS_AHEAD] * dim, dim)
    if z - a == 1:
        return vals + q * dim
    for j in range(dim):
        buf[j] = vals[q * dim + j]
    for k in range(a + 1, z):
        if k + _LOOKUPS_AHEAD < n:
            _prefetch_row(vals + order[k + _LOOKUPS_AHEAD] * dim, dim)
        q = order[k]
        for j in range(dim):
            buf[j] = buf[j] + vals[q * dim + j]
    return buf


cdef inline void _row_update(int kind, floating* t0, floating* t1, floating* t2,
                             floating* t3, Py_ssize_t dim, Py_ssize_t r,
                             const floating* g, const floating* c) noexcept nogil:
    """Row ``r`` of the table ``t0`` and its state (``t1``.. ``t3``; row-wise Adagrad's
    ``t1`` has one value per row) updated by kernel ``kind``'s rule, ``g`` the row's
    summed gradient, ``c`` the scalars of :mod:`fastadam._scalars` in order."""
    cdef Py_ssize_t j, o = r * dim
    cdef floating x, sumsq, sr, scale
    # the scalars in locals: loaded once, not per element (the table rows written in the
    # loops could alias ``c`` as far as the C compiler knows)
    cdef floating c0 = c[0], c1 = c[1], c2 = c[2], c3 = c[3], c4 = c[4]
    cdef floating c5 = c[5] if kind >= K_LAZY_ADAM else c0
    cdef floating c6 = c[6] if kind >= K_LAZY_ADAM else c0
    cdef floating c7 = c[7] if kind >= K_LAZY_ADAM else c0
    cdef floating c8 = c[8] if kind >= K_LAZY_ADAM else c0
    if kind == K_SPARSE_ADAM:
        for j in range(dim):
            rule_sparse_adam(t0[o + j], g[j], t1[o + j], t2[o + j], c0, c1, c2, c3,
                             c4, &t0[o + j], &t1[o + j], &t2[o + j])
    elif kind == K_SPARSE_ADAGRAD:
        for j in range(dim):
            rule_sparse_adagrad(t0[o + j], g[j], t1[o + j], c0, c1, c2,
                                &t0[o + j], &t1[o + j])
    elif kind == K_SPARSE_SGD:
        for j in range(dim):
            rule_sparse_sgd(t0[o + j], g[j], c0, c1, &t0[o + j])
    elif kind == K_ROWWISE_ADAGRAD:
        sumsq = c4 - c4                 # 0, as the numba kernel starts it
        for j in range(dim):
            rule_rowwise_grad(t0[o + j], g[j], c0, c1, &x)
            sumsq = sumsq + x * x
        rule_rowwise_adagrad_state(t1[r], sumsq, c4, &sr)
        t1[r] = sr
        rule_rowwise_adagrad_scale(sr, c2, c3, &scale)
        for j in range(dim):
            rule_rowwise_grad(t0[o + j], g[j], c0, c1, &x)
            rule_rowwise_adagrad(t0[o + j], x, scale, &t0[o + j])
    elif kind == K_LAZY_ADAM:
        for j in range(dim):
            rule_adam(t0[o + j], g[j], t1[o + j], t2[o + j], c0, c1, c2, c3, c4,
                      c5, c6, c7, c8, &t0[o + j], &t1[o + j], &t2[o + j])
    else:
        for j in range(dim):
            rule_adam_amsgrad(t0[o + j], g[j], t1[o + j], t2[o + j], t3[o + j], c0, c1,
                              c2, c3, c4, c5, c6, c7, c8, &t0[o + j],
                              &t1[o + j], &t2[o + j], &t3[o + j])


cdef inline void _prefetch_rows(int kind, floating* t0, floating* t1, floating* t2,
                                floating* t3, Py_ssize_t dim, Py_ssize_t r) noexcept nogil:
    _prefetch_row(t0 + r * dim, dim)
    if kind == K_SPARSE_ADAM or kind == K_LAZY_ADAM or kind == K_LAZY_ADAM_AMSGRAD:
        _prefetch_row(t1 + r * dim, dim)
        _prefetch_row(t2 + r * dim, dim)
    elif kind == K_SPARSE_ADAGRAD:
        _prefetch_row(t1 + r * dim, dim)
    if kind == K_LAZY_ADAM_AMSGRAD:
        _prefetch_row(t3 + r * dim, dim)


cdef void _loop_sparse_rows(int kind, floating* t0, floating* t1, floating* t2,
                            floating* t3, Py_ssize_t dim, const floating* vals,
                            const int64_t* keys, const int64_t* order, const int64_t* starts,
                            Py_ssize_t nseg, floating* scratch, const floating* c,
                            bint parallel) noexcept nogil:
    """The row loop of a row-sparse step (a ``_loop_*``: built in baseline and AVX2
    versions, see ``kernels.pyx``'s header): distinct row ``s`` is
    ``keys[starts[s]]``, its lookups ``order[starts[s]:starts[s+1]]``; one row of
    ``scratch`` per thread."""
    cdef Py_ssize_t s, a, z
    cdef floating* buf
    cdef const floating* g
    if parallel:
        for s in prange(nseg, schedule="dynamic", chunksize=_SPARSE_CHUNK):
            buf = scratch + _thread_num() * dim
            if s + _ROWS_AHEAD < nseg:
                _prefetch_rows(kind, t0, t1, t2, t3, dim, keys[starts[s + _ROWS_AHEAD]])
            a = starts[s]
            z = starts[s + 1]
            g = _grad_row(vals, dim, order, a, z, starts[nseg], buf)
            _row_update(kind, t0, t1, t2, t3, dim, keys[a], g, c)
    else:
        for s in range(nseg):
            if s + _ROWS_AHEAD < nseg:
                _prefetch_rows(kind, t0, t1, t2, t3, dim, keys[starts[s + _ROWS_AHEAD]])
            a = starts[s]
            z = starts[s + 1]
            g = _grad_row(vals, dim, order, a, z, starts[nseg], scratch)
            _row_update(kind, t0, t1, t2, t3, dim, keys[a], g, c)


cdef int _sparse(int kind, floating* t0, floating* t1, floating* t2, floating* t3,
                 Py_ssize_t rows, Py_ssize_t dim, const int64_t* idx, const floating* vals,
                 Py_ssize_t n, const floating* c, bint parallel) noexcept nogil:
    """One row-sparse step of kernel ``kind``; 0, or -2 (an index out of range) / -1 (out
    of memory) with nothing written."""
    cdef int64_t* keys = NULL
    cdef int64_t* order = NULL
    cdef int64_t* starts = NULL
    cdef Py_ssize_t nseg = 0, nt
    cdef int err
    cdef floating* scratch
    if n == 0:
        return 0
    err = _coalesce(idx, n, rows, &keys, &order, &starts, &nseg)
    if err:
        return err
    nt = _max_threads() if parallel else 1
    scratch = <floating*>malloc((nt * dim + 1) * sizeof(floating))
    if scratch == NULL:
        free(keys); free(order); free(starts)
        return -1
    _loop_sparse_rows(kind, t0, t1, t2, t3, dim, vals, keys, order, starts, nseg, scratch, c,
                      parallel)
    free(scratch); free(keys); free(order); free(starts)
    return 0


cdef int sparse_adam(floating* p, floating* m, floating* v, Py_ssize_t rows, Py_ssize_t dim,
                     const int64_t* idx, const floating* vals, Py_ssize_t n,
                     floating gsign, floating omb1, floating omb2, floating neg_step,
                     floating eps, bint parallel) noexcept nogil:
    cdef floating c[9]
    memset(c, 0, sizeof(c))           # _row_update reads nine
    c[0] = gsign; c[1] = omb1; c[2] = omb2; c[3] = neg_step; c[4] = eps
    return _sparse(K_SPARSE_ADAM, p, m, v, NULL, rows, dim, idx, vals, n, c, parallel)


cdef int sparse_adagrad(floating* p, floating* s, Py_ssize_t rows, Py_ssize_t dim,
                        const int64_t* idx, const floating* vals, Py_ssize_t n,
                        floating gsign, floating neg_clr, floating eps,
                        bint parallel) noexcept nogil:
    cdef floating c[9]
    memset(c, 0, sizeof(c))           # _row_update reads nine
    c[0] = gsign; c[1] = neg_clr; c[2] = eps
    return _sparse(K_SPARSE_ADAGRAD, p, s, NULL, NULL, rows, dim, idx, vals, n, c, parallel)


cdef int sparse_sgd(floating* p, Py_ssize_t rows, Py_ssize_t dim, const int64_t* idx,
                    const floating* vals, Py_ssize_t n, floating gsign, floating neg_lr,
                    bint parallel) noexcept nogil:
    cdef floating c[9]
    memset(c, 0, sizeof(c))           # _row_update reads nine
    c[0] = gsign; c[1] = neg_lr
    return _sparse(K_SPARSE_SGD, p, NULL, NULL, NULL, rows, dim, idx, vals, n, c, parallel)


cdef int rowwise_adagrad(floating* p, floating* state, Py_ssize_t rows, Py_ssize_t dim,
                         const int64_t* idx, const floating* vals, Py_ssize_t n,
                         floating gsign, floating l2, floating neg_lr, floating eps,
                         floating fdim, bint parallel) noexcept nogil:
    cdef floating c[9]
    memset(c, 0, sizeof(c))           # _row_update reads nine
    c[0] = gsign; c[1] = l2; c[2] = neg_lr; c[3] = eps; c[4] = fdim
    return _sparse(K_ROWWISE_ADAGRAD, p, state, NULL, NULL, rows, dim, idx, vals, n, c,
                   parallel)


cdef int lazy_adam(floating* p, floating* m, floating* v, Py_ssize_t rows, Py_ssize_t dim,
                   const int64_t* idx, const floating* vals, Py_ssize_t n,
                   floating gsign, floating l2, floating decay, floating omb1, floating beta2,
                   floating omb2, floating neg_step, floating inv_bc2_sqrt, floating eps,
                   bint parallel) noexcept nogil:
    cdef floating c[9]
    c[0] = gsign; c[1] = l2; c[2] = decay; c[3] = omb1; c[4] = beta2; c[5] = omb2
    c[6] = neg_step; c[7] = inv_bc2_sqrt; c[8] = eps
    return _sparse(K_LAZY_ADAM, p, m, v, NULL, rows, dim, idx, vals, n, c, parallel)


cdef int lazy_adam_amsgrad(floating* p, floating* m, floating* v, floating* vmax,
                           Py_ssize_t rows, Py_ssize_t dim, const int64_t* idx,
                           const floating* vals, Py_ssize_t n,
                           floating gsign, floating l2, floating decay, floating omb1,
                           floating beta2, floating omb2, floating neg_step,
                           floating inv_bc2_sqrt, floating eps, bint parallel) noexcept nogil:
    cdef floating c[9]
    c[0] = gsign; c[1] = l2; c[2] = decay; c[3] = omb1; c[4] = beta2; c[5] = omb2
    c[6] = neg_step; c[7] = inv_bc2_sqrt; c[8] = eps
    return _sparse(K_LAZY_ADAM_AMSGRAD, p, m, v, vmax, rows, dim, idx, vals, n, c, parallel)
