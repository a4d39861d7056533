"""Gradient-list calls: a run of parameters whose gradients are separate tensors, stepped
in one kernel call that reads each gradient where it is.

After torch's default ``zero_grad()`` (``set_to_none=True``) each backward makes fresh
gradient tensors, apart from fastadam's flat gradient buffer.  In a plain step (no
unscaling, clipping or skipping) of a bucket on the numba CPU kernels with plain float
state, :meth:`_GradListMixin._runs` joins the parameters whose fresh gradients
are contiguous, of the bucket's dtype and the parameter's shape (checked by
``_plan`` first) and smaller than :data:`_GRADLIST_MAX_BYTES` with their neighbours whose
gradients are in the flat buffer, into runs of one call each: the kernel's
gradient-list form (:func:`fastadam._scalars.gradlist_name`) gets the flat arrays'
slices and, for the gradient, each tensor's address and offset in the run
(:meth:`_GradListMixin._gradlist_arrays`).  Nothing is copied and no call is made per
tensor (what remains per fresh tensor is its check, about 0.85 us of Python), and the
flat gradient buffer's memory is not touched.

Measured (thread CPU time of ``step()``, Adam float32, quiet 2-core VM, before / after in
alternating processes): 16 tensors of 4,096 elements with fresh gradients 71-96 ->
42-43 us (bound: 28-34 us); 64 tensors of 1,024 elements 153-155 -> 90-94 us (bound
36-41 us); the 6.9M-parameter, 76-tensor transformer of ``fastadam bench --loop``
3.47-3.56 -> 3.27-3.28 ms wall (bound 3.0-3.1 ms, torch fused 3.3-3.4 ms).
"""

from __future__ import annotations

from itertools import repeat
from operator import is_ as _is

import numpy as np

from .buffers import _data_ptr

#: Gradients of at least this many bytes are not joined into a gradient-list call
#: (:class:`_GradList`): each is a call of its own, where the parallel kernels run in
#: prefetched sub-blocks where ``fastadam._config.PREFETCH_SUB_BLOCKS`` is on (from
#: :data:`fastadam.kernels._blocked.MIN_BYTES`, the same 8 MiB; not imported from there,
#: which would import numba with fastadam.torch).
_GRADLIST_MAX_BYTES = 8 << 20
#: ``_plan``'s mark of a gradient to read where it is, in its run's gradient-list call.
_JOIN = object()


class _GradList(list):
    """The gradients of a run of parameters, read where they are in one call of the
    kernel's gradient-list form: per parameter, its gradient tensor (contiguous, of
    the bucket's dtype and the parameter's shape: checked while planning), or None
    where the gradient is the parameter's view of the flat gradient buffer."""

    __slots__ = ()


class _GradListMixin:
    """The runs of :class:`~fastadam.torch.base.FlatOptimizer`'s step, gradient lists
    included."""

    def _run_keys(self, b, hp):
        """Per parameter, what its run's step-dependent scalars depend on (the step
        count, mu, whether it has started), or None where one call may cover any run."""
        if b.uniform:                     # every parameter at the same step (and mu)
            return None
        if self._needs_mu:
            return list(zip(b.steps.tolist(), b.mu.tolist()))
        if self._needs_step:
            return b.steps.tolist()
        if self._needs_first and hp["momentum"] != 0:
            return (b.steps > 0).tolist()
        return None

    def _runs(self, b, hp, grads, has):
        """The runs of a step, from ``has`` (per parameter: None, no gradient; True, in
        the flat buffer; :data:`_JOIN`, read where it is in its run's call; else a
        gradient used in a call of its own, a big or a sparse one): consecutive
        parameters whose gradients are in the flat buffer or joined and that share the
        step-dependent scalars make one run, with a :class:`_GradList` of their
        gradients (None for one in the flat buffer) when any is joined."""
        keys = None if b.uniform else self._run_keys(b, hp)
        n = len(has)
        if n and keys is None and all(map(_is, has, repeat(_JOIN, n))):  # all fresh: one call
            runs = [(0, n, _GradList(grads) if n > 1 else grads[0])]
            if self._needs_mu:
                self._check_mu(hp, int(b.steps[0]) + 1, float(b.mu[0]))
            return runs
        runs = []
        i = 0
        while i < n:
            h = has[i]
            if h is None:
                i += 1
                continue
            j = i + 1
            if h is not True and h is not _JOIN:
                runs.append((i, j, h))
                i = j
                continue
            k = None if keys is None else keys[i]
            while j < n and (has[j] is True or has[j] is _JOIN) and (keys is None
                                                                      or keys[j] == k):
                j += 1
            if j == i + 1 and h is _JOIN:       # alone: the plain call, read in place
                runs.append((i, j, grads[i]))
            elif any(h is _JOIN for h in has[i:j]):
                runs.append((i, j, _GradList(g if h is _JOIN else None
                                             for g, h in zip(grads[i:j], has[i:j]))))
            else:
                runs.append((i, j, None))
            i = j
        if self._needs_mu:
            for a, _, _ in runs:
                self._check_mu(hp, int(b.steps[a]) + 1, float(b.mu[a]))
        return runs

    def _gradlist_arrays(self, b, arrays, a, z, gl):
        """The arguments of the gradient-list call over parameters ``a:z``: the flat
        arrays' slices with the gradient replaced by ``gaddr, goff``."""
        o = b.offsets
        lo, hi = o[a], o[z]
        run = b.goffs.get((a, z))
        if run is None:       # the run's offsets, and an address array it refills each step
            run = b.goffs[(a, z)] = (np.array(o[a:z + 1], dtype=np.int64) - lo,
                                     np.empty(z - a, dtype=np.int64))
        goff, gaddr = run
        # (identity tests only: ``in`` would compare tensors with ==)
        if any(g is None for g in gl):
            base, size = b.grad.data_ptr(), b.grad.element_size()
            gaddr[:] = [base + o[i] * size if g is None else g.data_ptr()
                        for i, g in enumerate(gl, a)]
        else:
            gaddr[:] = list(map(_data_ptr, gl))
        if lo == 0 and hi == arrays[0].shape[0]:
            return (arrays[0], gaddr, goff) + arrays[2:]
        return (arrays[0][lo:hi], gaddr, goff) + tuple(x[lo:hi] for x in arrays[2:])
