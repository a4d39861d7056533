# fastadam C-level API: fused, in-place optimizer steps on raw pointers.
#
# Another Cython extension can run a step without the GIL and without Python
# objects:
#
#     from fastadam.capi cimport adam              # or: from fastadam._cython.kernels cimport adam
#
#     cdef float[::1] p = ..., g = ..., m = ..., v = ...
#     with nogil:
#         adam(&p[0], &g[0], &m[0], &v[0], p.shape[0],
#              gsign, l2, decay, omb1, beta2, omb2, neg_step, inv_bc2_sqrt, eps,
#              parallel=True)
#
# Every function is a fused function over ``floating`` (float or double): the
# pointer and scalar types pick the float32 or float64 version.  Conventions:
#
# * ``p`` (the parameter) and the state buffers are read and written in place;
#   ``g`` (the gradient) is only read.  All point to ``n`` contiguous elements
#   and must not overlap one another (nothing is checked at this level).
# * The scalars are the per-step values of ``fastadam._scalars`` (bias
#   corrections already folded in: e.g. ``neg_step = -lr / (1 - beta1**t)``),
#   in the same order, of the buffer's type.  ``fastadam._scalars.adam(np.float32,
#   step=..., lr=..., ...)`` returns them in this order, or compute them in C.
#   ``gsign`` is -1 for ``maximize`` else 1; ``l2`` is the L2 (coupled) weight
#   decay, ``decay`` the decoupled (AdamW) factor ``1 - lr * weight_decay``.
# * ``parallel``: nonzero runs an OpenMP ``prange`` loop (static schedule) over
#   the team set by OMP_NUM_THREADS / omp_set_num_threads, zero a serial loop.
#   Below ~12K-16K elements a serial loop is faster (no fork/join); fastadam's own
#   backends switch at ``fastadam._config.PARALLEL_THRESHOLD`` (32K).  In a build of
#   fastadam without OpenMP both are serial.
# * The functions are ``noexcept nogil``: call them with or without the GIL,
#   from any thread.  They run fastadam's compiled loops (exported through Cython's
#   C-API capsules), so the calling extension needs no OpenMP flags; on x86-64 the
#   loops exist in baseline and AVX2 versions, picked for the CPU at load time.
#
# The per-element math is generated from fastadam/rules/*.py (see _codegen.py),
# the same source the numba backend compiles.  The update rules, per element:
#
#   adam:          g = gsign*g + l2*p; p = p*decay; m = fma(omb1, g - m, m if omb1 > 0 else g)
#                  (torch's lerp: omb1 = w = 1 - beta1 if w < 0.5, else w - 1;
#                  fastadam._scalars.lerp_weight; fma rounds once);
#                  v = beta2*v + omb2*g*g; p = p + neg_step*m / (sqrt(v)*inv_bc2_sqrt + eps)
#   adam_amsgrad:  as adam, with vmax = max(vmax, v) (NaN-propagating) in place of v
#                  in the denominator; vmax is stored back
#   rmsprop*:      g = gsign*g + l2*p; sq = alpha*sq + oma*g*g;
#                  [centered (one more scalar, last: lw = lerp_weight(1 - alpha)):
#                   ga = fma(lw, g - ga, ga if lw == oma else g);
#                   avg = sqrt(fma(-ga, ga, sq)) + eps]
#                  [else: avg = sqrt(sq) + eps]
#                  [momentum: buf = momentum*buf + g/avg; p = p + neg_lr*buf]
#                  [else: p = p + neg_lr*g/avg]
#   adagrad:       g = gsign*g + l2*p; s = s + g*g; p = p + neg_clr*g / (sqrt(s) + eps)
#   sgd:           p = p + neg_lr*(gsign*g + l2*p)
#   sgd_momentum:  g = gsign*g + l2*p; buf = g if first else momentum*buf + omd*g;
#                  d = g + momentum*buf if nesterov else buf; p = p + neg_lr*d
#   adadelta:      g = gsign*g + l2*p; sq = rho*sq + omr*g*g;
#                  delta = sqrt(acc + eps)/sqrt(sq + eps)*g; acc = rho*acc + omr*delta*delta;
#                  p = p + neg_lr*delta
#   nadam:         g = gsign*g + l2*p; p = p*decay; m as in adam;
#                  v = beta2*v + omb2*g*g; denom = sqrt(v*inv_bc2) + eps;
#                  p = p + cg*g/denom; p = p + cm*m/denom
#   adamax:        g = gsign*g + l2*p; m as in adam;
#                  u = max(beta2*u, |g| + eps) (NaN-propagating); p = p + neg_clr*m/u

from cython cimport floating

cdef void adam(floating* p, const floating* g, floating* m, floating* v, Py_ssize_t n,
               floating gsign, floating l2, floating decay, floating omb1, floating beta2,
               floating omb2, floating neg_step, floating inv_bc2_sqrt, floating eps,
               bint parallel) noexcept nogil

cdef void adam_amsgrad(floating* p, const floating* g, floating* m, floating* v,
                       floating* vmax, Py_ssize_t n,
                       floating gsign, floating l2, floating decay, floating omb1,
                       floating beta2, floating omb2, floating neg_step,
                       floating inv_bc2_sqrt, floating eps, bint parallel) noexcept nogil

cdef void rmsprop(floating* p, const floating* g, floating* sq, Py_ssize_t n,
                  floating gsign, floating l2, floating alpha, floating oma, floating neg_lr,
                  floating eps, bint parallel) noexcept nogil

cdef void rmsprop_momentum(floating* p, const floating* g, floating* sq, floating* buf,
                           Py_ssize_t n, floating gsign, floating l2, floating alpha,
                           floating oma, floating neg_lr, floating eps, floating momentum,
                           bint parallel) noexcept nogil

cdef void rmsprop_centered(floating* p, const floating* g, floating* sq, floating* ga,
                           Py_ssize_t n, floating gsign, floating l2, floating alpha,
                           floating oma, floating neg_lr, floating eps, floating lw,
                           bint parallel) noexcept nogil

cdef void rmsprop_centered_momentum(floating* p, const floating* g, floating* sq,
                                    floating* ga, floating* buf, Py_ssize_t n,
                                    floating gsign, floating l2, floating alpha,
                                    floating oma, floating neg_lr, floating eps,
                                    floating momentum, floating lw,
                                    bint parallel) noexcept nogil

cdef void adagrad(floating* p, const floating* g, floating* s, Py_ssize_t n,
                  floating gsign, floating l2, floating neg_clr, floating eps,
                  bint parallel) noexcept nogil

cdef void sgd(floating* p, const floating* g, Py_ssize_t n,
              floating gsign, floating l2, floating neg_lr, bint parallel) noexcept nogil

cdef void sgd_momentum(floating* p, const floating* g, floating* buf, Py_ssize_t n,
                       floating gsign, floating l2, floating neg_lr, floating momentum,
                       floating omd, bint first, bint nesterov, bint parallel) noexcept nogil

cdef void adadelta(floating* p, const floating* g, floating* sq, floating* acc, Py_ssize_t n,
                   floating gsign, floating l2, floating rho, floating omr, floating neg_lr,
                   floating eps, bint parallel) noexcept nogil

cdef void nadam(floating* p, const floating* g, floating* m, floating* v, Py_ssize_t n,
                floating gsign, floating l2, floating decay, floating omb1, floating beta2,
                floating omb2, floating inv_bc2, floating eps, floating cg, floating cm,
                bint parallel) noexcept nogil

cdef void adamax(floating* p, const floating* g, floating* m, floating* u, Py_ssize_t n,
                 floating gsign, floating l2, floating omb1, floating beta2, floating eps,
                 floating neg_clr, bint parallel) noexcept nogil

# 1 when this build of fastadam runs ``parallel`` loops with OpenMP, else 0.
cdef int openmp_enabled() noexcept nogil

# --- row-sparse (embedding) steps ----------------------------------------------------
#
# A table ``p`` of ``rows x dim`` elements (C order) and its state, ``n`` lookups
# ``idx`` (rows, any order, duplicates allowed) and one gradient row per lookup,
# ``vals`` (``n x dim``, C order).  Each call sorts the lookups by row (stable), sums
# each distinct row's gradient rows in lookup order (one thread per row: the result
# does not depend on the thread count) and updates only those rows of the table and
# state with the rule of fastadam/rules/sparse.py (lazy_adam*: rules/adam.py), the
# scalars those of fastadam._scalars' function of the same name, in order.  Returns 0;
# -2 when an index is outside [0, rows) and -1 when out of memory, both with nothing
# written (the indices are checked here; the buffers' sizes and overlaps are not).
# ``rowwise_adagrad``'s ``state`` has one value per row; ``fdim`` is ``dim`` as a float.
# Memory allocated per call: ~ 40 bytes per lookup plus a row per thread, never
# proportional to the table.
#
#   sparse_adam:      g = gsign*g; m = m + (g - m)*omb1; v = v + (g*g - v)*omb2;
#                     p = p + neg_step*(m / (sqrt(v) + eps))
#   sparse_adagrad:   g = gsign*g; s = s + g*g; p = p + neg_clr*(g / (sqrt(s) + eps))
#   sparse_sgd:       p = p + neg_lr*(gsign*g)
#   rowwise_adagrad:  g = gsign*g + l2*p (per element); state = state + sum(g*g)/fdim;
#                     p = p + neg_lr / (sqrt(state) + eps) * g
#   lazy_adam[_amsgrad]: adam[_amsgrad] above, on the looked-up rows

from libc.stdint cimport int64_t

cdef int sparse_adam(floating* p, floating* m, floating* v, Py_ssize_t rows, Py_ssize_t dim,
                     const int64_t* idx, const floating* vals, Py_ssize_t n,
                     floating gsign, floating omb1, floating omb2, floating neg_step,
                     floating eps, bint parallel) noexcept nogil

cdef int sparse_adagrad(floating* p, floating* s, Py_ssize_t rows, Py_ssize_t dim,
                        const int64_t* idx, const floating* vals, Py_ssize_t n,
                        floating gsign, floating neg_clr, floating eps,
                        bint parallel) noexcept nogil

cdef int sparse_sgd(floating* p, Py_ssize_t rows, Py_ssize_t dim, const int64_t* idx,
                    const floating* vals, Py_ssize_t n, floating gsign, floating neg_lr,
                    bint parallel) noexcept nogil

cdef int rowwise_adagrad(floating* p, floating* state, Py_ssize_t rows, Py_ssize_t dim,
                         const int64_t* idx, const floating* vals, Py_ssize_t n,
                         floating gsign, floating l2, floating neg_lr, floating eps,
                         floating fdim, bint parallel) noexcept nogil

cdef int lazy_adam(floating* p, floating* m, floating* v, Py_ssize_t rows, Py_ssize_t dim,
                   const int64_t* idx, const floating* vals, Py_ssize_t n,
                   floating gsign, floating l2, floating decay, floating omb1, floating beta2,
                   floating omb2, floating neg_step, floating inv_bc2_sqrt, floating eps,
                   bint parallel) noexcept nogil

cdef int lazy_adam_amsgrad(floating* p, floating* m, floating* v, floating* vmax,
                           Py_ssize_t rows, Py_ssize_t dim, const int64_t* idx,
                           const floating* vals, Py_ssize_t n,
                           floating gsign, floating l2, floating decay, floating omb1,
                           floating beta2, floating omb2, floating neg_step,
                           floating inv_bc2_sqrt, floating eps, bint parallel) noexcept nogil
