# fastadam's C-level API for Cython: fused, in-place optimizer steps, nogil.
#
#     from fastadam.capi cimport adam, adam_amsgrad, nadam, ...
#     from fastadam.capi cimport sparse_adam, ...   (row-sparse steps, see kernels.pxd)
#
# The functions, their arguments and their per-element rules are documented in
# fastadam/_cython/kernels.pxd; see also docs/cython.md.
from fastadam._cython.kernels cimport (
    adam, adam_amsgrad, rmsprop, rmsprop_momentum, rmsprop_centered,
    rmsprop_centered_momentum, adagrad, sgd, sgd_momentum, adadelta, nadam, adamax,
    openmp_enabled, sparse_adam, sparse_adagrad, sparse_sgd, rowwise_adagrad, lazy_adam,
    lazy_adam_amsgrad)
