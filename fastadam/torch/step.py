"""The step: planning the kernel runs of a bucket, gradient copies, the kernel calls.

:class:`_StepMixin` is the part of :class:`~fastadam.torch.base.FlatOptimizer`
that runs ``step()`` and ``zero_grad()``.  Per bucket, ``_plan`` checks the
gradients and moved parameters and splits the bucket into runs (consecutive
parameters with a gradient in the flat buffer and one step count; a big foreign
gradient is a run of its own, read where it is: :data:`_IN_PLACE_MIN`; in a plain
step on the numba CPU kernels, fresh gradients join their run and are read where they
are, :mod:`.gradlist`); then
``_execute`` puts moved parameters and small foreign gradients in place
(``_prepare``, ``_copy_grads``), calls the kernels (``_run``, ``_call``) and
writes back to engine-owned storage (``_finish``).  A step with unscaling,
inf/nan skipping or clipping goes through
:meth:`~fastadam.torch.transformed._TransformMixin._transformed_step` instead.
"""

from __future__ import annotations

import operator

import torch

from .. import _scalars, _threads
from .._config import PARALLEL_THRESHOLD
from .._scalars import gradlist_name
from .buffers import _SCALES, _data_ptr, _view
from .gradlist import _GRADLIST_MAX_BYTES, _JOIN, _GradList, _GradListMixin
from .hparams import _Stale
from .sparse import _densify, _SparseGrad

#: A gradient tensor that is not a view of the flat buffer (a fresh one from
#: autograd after ``zero_grad()``, or one the user assigned) and has at least this
#: many elements is used where it is, in a kernel call of its own; smaller ones are
#: copied into the flat buffer, where they join their neighbours' call.
_IN_PLACE_MIN = 16384

#: kernel name -> the name of its gradient-list form (a string made once)
_GRADLIST_NAMES = {}

_is = operator.is_
_grad_of = operator.attrgetter("grad")


def _np_of(t):
    """The NumPy view of CPU tensor ``t`` (``detach()`` only where it requires grad)."""
    try:
        return t.numpy()
    except RuntimeError:
        return t.detach().numpy()


def _regrid(b):
    """New views of the flat buffers for those whose storage was moved under them.

    ``model.share_memory()`` moves each parameter's storage -- which its view in
    ``b.views`` shares -- and each ``.grad``'s, bound ones included, into shared
    memory.  The moved parameters are then stepped by copy (``_prepare``), the
    moved gradients copied in.  Returns whether a gradient view was replaced.
    """
    o = b.offsets
    for views, flat in ((b.views, b.data), (b.gviews, b.grad)):
        base, size = flat.data_ptr(), flat.element_size()
        stale = [i for i, v in enumerate(views)
                 if v.numel() and v.data_ptr() != base + o[i] * size]
        for i in stale:
            views[i] = _view(flat, o[i], o[i] + views[i].numel(), views[i].shape)
            if views is b.gviews and b.gnp is not None:
                b.gnp[i] = views[i].numpy()
    return bool(stale)


def _copy_grads(b, copies):
    """Copy foreign gradient tensors into the flat gradient buffer.

    On CPU with NumPy (a plain memcpy on this thread): a torch copy would wake
    torch's OpenMP pool between backward and the kernel's own thread pool.  A
    sparse gradient (:class:`~fastadam.torch.sparse._SparseGrad`) is scattered.
    """
    if any(type(g) is _SparseGrad for _, g in copies):
        for i, g in copies:
            if type(g) is _SparseGrad:
                _densify(b, i, g)
        copies = [(i, g) for i, g in copies if type(g) is not _SparseGrad]
        if not copies:
            return
    if not b.cuda and b.gnp is not None:
        views = b.gnp
        try:
            srcs = [_np_of(g) for _, g in copies]
        except (RuntimeError, TypeError):   # e.g. a tensor with the neg/conj bit set
            srcs = None
        if srcs is not None:
            for (i, _), s in zip(copies, srcs):
                views[i][...] = s           # (same dtype and shape: checked in _plan)
            return
    with torch.no_grad():
        torch._foreach_copy_([b.gviews[i] for i, _ in copies], [g for _, g in copies])


class _StepMixin(_GradListMixin):
    """``step()`` and ``zero_grad()`` of a :class:`~fastadam.torch.base.FlatOptimizer`."""

    _regrid = staticmethod(_regrid)
    _copy_grads = staticmethod(_copy_grads)

    def _refresh_uniform(self, b):
        """Whether one kernel call can again cover the whole bucket (same scalars)."""
        s = b.steps
        if not s.size:
            b.uniform = True
        elif self._needs_step:
            b.uniform = bool(s.min() == s.max()) and (
                b.mu is None or bool(b.mu.min() == b.mu.max()))
        elif self._needs_first:
            b.uniform = bool((s > 0).all() or (s == 0).all())
        else:
            b.uniform = True

    # -- zero_grad / step ----------------------------------------------------------------
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients, as ``torch.optim.Optimizer.zero_grad``.

        Parameters
        ----------
        set_to_none : bool, default True
            True: every ``.grad`` becomes None, as in torch; the next backward
            makes fresh gradient tensors, which ``step()`` reads where they are
            (big ones, a kernel call each) or copies into the flat buffer (small
            ones).  False: the flat gradient buffer is zeroed (in one fill when every
            ``.grad`` is bound to it) and every dense ``.grad`` that is not None
            becomes (stays) its view of it, so the next backward accumulates
            straight into the flat buffer and ``step()`` is one kernel call per
            buffer.  A ``.grad`` that is None stays None; a sparse one stays sparse
            and is zeroed, as in torch.
        """
        if self._flag.dirty:
            self._sync()
        for b in self._buckets:
            if set_to_none:
                for p in b.params:
                    p.grad = None
                continue
            probe = b.probe
            if probe is not None and b.gviews[probe[0]].data_ptr() != probe[1]:
                self._regrid(b)             # moved into shared memory: re-bound below
            elif all(map(_is, map(_grad_of, b.params), b.gviews)):
                b.grad.zero_()
                continue
            b.bind_grad()
            # one parameter at a time, and no list of the old gradients: each old
            # gradient's memory is released as its parameter is re-bound, before the
            # flat buffer's pages are written (zeroed) below
            dense = []
            for p, v in zip(b.params, b.gviews):
                g = p.grad
                if g is None:
                    dense.append(False)
                elif g.layout != torch.strided:       # as torch: a sparse gradient
                    with torch.no_grad():             # stays sparse
                        g.zero_()
                    dense.append(False)
                else:
                    if g is not v:
                        p.grad = v
                    dense.append(True)
            g = None
            # the slices of the bound gradients: those of a None or sparse gradient are
            # not read (a sparse table's slice is never touched: no memory)
            o, i, n = b.offsets, 0, len(dense)
            while i < n:
                j = i
                while j < n and dense[j]:
                    j += 1
                if o[j] > o[i]:
                    b.grad[o[i]:o[j]].zero_()
                i = j + 1

    def step(self, closure=None):
        """Perform one optimization step: one fused kernel call per flat buffer.

        Parameters
        ----------
        closure : callable, optional
            Re-evaluates the model and returns the loss (called with grad enabled).

        Returns
        -------
        The closure's loss, or None.

        Raises
        ------
        TypeError, ValueError, RuntimeError
            On a bad hyperparameter in ``param_groups`` or a bad gradient, before
            any parameter, gradient or state is changed.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._flag.dirty:              # optimizer.state or a "params" list edited
            self._sync()
        groups = self.param_groups
        grad_scale = getattr(self, "grad_scale", None)      # set by torch.amp.GradScaler
        found_inf = getattr(self, "found_inf", None)
        plain = (grad_scale is None and found_inf is None and self.max_grad_norm is None
                 and self.clip_value is None)
        try:
            plans = [self._plan(b, self._hp_record(b.gi, groups[b.gi]), plain)
                     for b in self._buckets]
        except _Stale:                    # a group's "params" list was replaced
            self._sync()
            plans = [self._plan(b, self._hp_record(b.gi, groups[b.gi]), plain)
                     for b in self._buckets]
        _threads.follow(torch.get_num_threads())     # as torch's own ops (fastadam._threads)
        if plain:
            for plan in plans:
                self._execute(*plan)
        else:
            self._transformed_step(plans, grad_scale, found_inf)
        return loss

    def _plan(self, b, rec, plain=False):
        """Check one bucket and decide its runs; changes nothing.

        A run is ``(a, z, g)``: parameters ``a:z`` in one kernel call, their gradients
        in the flat buffer (``g`` None), one gradient tensor used in place (``g`` that
        tensor), a sparse one (a :class:`~fastadam.torch.sparse._SparseGrad`), or, in a
        ``plain`` step (no unscaling, clipping or skipping) of a bucket whose kernels
        take a gradient list (float32/float64 state, numba CPU), a :class:`_GradList`:
        each parameter's gradient read where it is, in one call (no copies).
        """
        params = b.params
        grads = list(map(_grad_of, params))
        if self._sparse == "require":
            self._check_dense_grads(grads)
        bound = all(map(_is, grads, b.gviews))
        moved = list(map(_data_ptr, params)) != b.ptrs
        if moved and not b.cuda and self._regrid(b):
            grads = list(map(_grad_of, params))
            bound = False
        if bound and not moved and b.uniform:
            if self._needs_mu:
                self._check_mu(rec[0], int(b.steps[0]) + 1, float(b.mu[0]))
            return b, rec, (), (), ((0, len(params), None),)
        hp = rec[0]
        if self._sparse == "require" and not moved:     # sparse gradients only: a run each
            runs = self._sparse_runs(b, grads, hp)
            if runs is not None:
                return b, rec, (), (), runs
        readopt = []
        if moved:
            for i, p in enumerate(params):
                if _data_ptr(p) != b.ptrs[i]:
                    if p.dtype != b.dtype or p.device != b.device or p.shape != b.views[i].shape:
                        raise RuntimeError(
                            f"parameter {i} of param group {b.gi} was replaced by a tensor of "
                            f"another dtype, device or shape ({p.dtype}, {p.device}, "
                            f"{tuple(p.shape)}) after the optimizer was made; create the "
                            "optimizer after moving or casting the model")
                    readopt.append(i)
        copies = []
        has = []          # per parameter: None (no grad), True (in the flat buffer), or the
        dtype, cuda = b.dtype, b.cuda                         # grad tensor used in place
        in_place = b.sdt != "int8"          # int8: runs must be whole blocks
        # (or _JOIN: read in place in a gradient-list call, see .gradlist)
        gather = plain and b.gradlist       # (plain: no transformation, _xf is None)
        gmax = _GRADLIST_MAX_BYTES // b.np_dtype.itemsize
        gathered = False
        strided = torch.strided
        for i, (g, v) in enumerate(zip(grads, b.gviews)):
            if g is None:
                has.append(None)
                continue
            if g is not v:
                if g.layout is not strided:           # sparse: checked, made a row update
                    sg, dense = self._sparse_grad(b, i, g, hp)
                    if dense:
                        copies.append((i, sg))          # scattered into the flat buffer
                        has.append(True)
                    else:
                        has.append(sg)                  # a run of its own
                    continue
                # (is_cuda / is_cpu: the device without making a torch.device per tensor)
                if (g.dtype is not dtype or g.shape != v.shape
                        or (g.device != b.device if cuda else not g.is_cpu)):
                    raise ValueError(
                        f"the gradient of parameter {i} of param group {b.gi} has shape "
                        f"{tuple(g.shape)}, dtype {g.dtype}, device {g.device}; expected "
                        f"{tuple(v.shape)}, {b.dtype}, {b.device}")
                if in_place and g.is_contiguous() and not g.is_neg():
                    if gather and g.numel() < gmax:
                        has.append(_JOIN)   # read where it is, in its run's call
                        gathered = True
                        continue
                    if g.numel() >= _IN_PLACE_MIN:
                        has.append(g)       # big: its own kernel call, no copy
                        continue
                copies.append((i, g))       # small or strided: copied into the flat slot
            has.append(True)
        if copies and in_place and not gathered:
            # a small gradient that would be a run of its own anyway (no neighbour in the
            # flat buffer: a bias between big weights, a bucket of one) is read in place
            # too: no copy, and the flat gradient's memory is not touched
            n, keep = len(has), []
            for i, g in copies:
                if (type(g) is not _SparseGrad and (i == 0 or has[i - 1] is not True)
                        and (i + 1 == n or has[i + 1] is not True)
                        and g.is_contiguous() and not g.is_neg()):
                    has[i] = g
                else:
                    keep.append((i, g))
            copies = keep
        runs = self._runs(b, hp, grads, has)
        return b, rec, readopt, copies, runs

    def _execute(self, b, rec, readopt, copies, runs):
        if not readopt and not copies:  # nothing to put in place, nothing to copy back
            if runs:
                hp, kname, names, advances = rec
                self._run(b, kname, names, hp, advances, runs)
            return
        back = self._prepare(b, rec, readopt, copies, runs)
        if runs:
            hp, kname, names, advances = rec
            self._run(b, kname, names, hp, advances, runs)
        self._finish(b, back)

    def _prepare(self, b, rec, readopt, copies, runs):
        """Moved parameters and foreign gradients into place; returns what to copy back."""
        copy_back = ()
        if readopt and b.fmt and "master_param" in b.state:
            # a low-precision parameter given new values (p.data = ...): its master takes
            # them, else the step would rewrite the parameter from the stale master
            m, o = b.state["master_param"], b.offsets
            with torch.no_grad():
                for i in readopt:
                    p = b.params[i].detach()
                    m[o[i]:o[i] + p.numel()].copy_(p.reshape(-1))
        if readopt and not self._adopt(b):
            # An engine owns these parameters' storage now (ZeroRedundancyOptimizer's
            # parameter buckets, FSDP's shards) and keeps reading it: step a copy and write
            # it back; never re-point p.data away from the engine's storage.
            with torch.no_grad():
                for i in readopt:
                    b.views[i].copy_(b.params[i].detach())
            copy_back = readopt
        if copies:
            self._copy_grads(b, copies)
        return copy_back

    def _run(self, b, kname, names, hp, advances, runs):
        """The kernel calls of one bucket's step (its runs of parameters)."""
        arrays = b.arrays.get(kname)
        if arrays is None:
            for name in names + (_SCALES if b.sdt == "int8" else ()) + (
                    ("master_param",) if b.fmt else ()):
                self._ensure(b, name)
            arrays = b.kernel_arrays(kname)
        special = b.sdt != "float32" or self._xf is not None or b.fmt is not None
        steps = b.steps
        n = len(b.params)
        g = runs[0][2] if len(runs) == 1 else None
        if (len(runs) == 1 and runs[0][1] - runs[0][0] == n
                and (g is None or (not special and type(g) is not _SparseGrad))):
            t = int(steps[0]) + 1 if n else 1                 # the whole buffer at once
            sc = self._scalars_of(b, hp, t, b.mu[0] if self._needs_mu and n else 1.0, {})
            if special:
                self._call_x(b, names, sc[0], 0, b.offsets[-1], None)
            elif type(g) is _GradList:  # the gradients read where they are, one call
                self._call(b, kname, self._gradlist_arrays(b, arrays, 0, n, g), sc, True)
            elif g is not None:     # one parameter, its gradient read where it is
                g = g.detach().reshape(-1) if b.cuda else _np_of(g).reshape(-1)
                self._call(b, kname, (arrays[0], g) + arrays[2:], sc)
            else:
                w = b.whole         # the bound whole-buffer call: its entry point, direct
                if w is not None and w[0] is sc[1]:
                    w[1](*arrays, *sc[2])
                else:
                    self._call(b, kname, arrays, sc)
                    n_el = arrays[0].shape[0]
                    b.whole = None if b.entry is None or not n_el else (
                        sc[1], b.entries[(sc[1], n_el >= PARALLEL_THRESHOLD)])
            if advances:
                if self._needs_step:              # uniform: every count was t - 1
                    steps.fill(t)
                else:                             # counts may differ (a cleared state)
                    steps += 1
                if self._needs_mu:
                    b.mu[:] = self._next_mu(hp, t, b.mu[0] if n else 1.0)
        else:
            offs = b.offsets
            memo = {}
            # every parameter at one step, and every one in a run: they advance together
            # and stay at one step (no per-run count updates, no new look at the counts)
            together = b.uniform and sum(z - a for a, z, _ in runs) == n
            if together:
                t0 = int(steps[0]) + 1
                mu0 = float(b.mu[0]) if self._needs_mu else 1.0
            for a, z, g in runs:
                if together:
                    t, mu = t0, mu0
                else:
                    t = int(steps[a]) + 1
                    mu = float(b.mu[a]) if self._needs_mu else 1.0
                lo, hi = offs[a], offs[z]
                if type(g) is _SparseGrad:
                    self._sparse_call(b, hp, t, a, g, memo)
                elif type(g) is _GradList:
                    self._call(b, kname, self._gradlist_arrays(b, arrays, a, z, g),
                               self._scalars_of(b, hp, t, mu, memo), True)
                elif special:
                    if g is not None:
                        g = b._host(g.detach().reshape(-1))
                    self._call_x(b, names, self._scalars_of(b, hp, t, mu, memo)[0], lo, hi, g)
                else:
                    if g is None:
                        arr = tuple(x[lo:hi] for x in arrays)
                    else:
                        g = g.detach().reshape(-1) if b.cuda else _np_of(g).reshape(-1)
                        arr = (arrays[0][lo:hi], g) + tuple(x[lo:hi] for x in arrays[2:])
                    self._call(b, kname, arr, self._scalars_of(b, hp, t, mu, memo))
                if advances and not together:
                    steps[a:z] += 1
                    if self._needs_mu:
                        b.mu[a:z] = self._next_mu(hp, t, mu)
            if advances and together:
                if self._needs_step:
                    steps.fill(t0)
                else:
                    steps += 1
                if self._needs_mu:
                    b.mu[:] = self._next_mu(hp, t0, mu0)
            elif advances:
                self._refresh_uniform(b)
        if advances and not b.all_started:
            for a, z, _ in runs:
                for i in range(a, z):
                    self._populate(b, i)
            b.all_started = all(b.started)

    def _call(self, b, kname, arrays, sc, gradlist=False):
        """One kernel call over ``arrays`` (a run of parameters sharing one step;
        ``gradlist``: the kernel's gradient-list form, ``arrays`` from
        :meth:`_gradlist_arrays`).

        On a backend with compiled entry points (numba), the kernel's entry point for
        these array types and this variant (serial or parallel, by the length) is
        resolved once per bucket and called directly, with the scalars as Python
        floats (rounded to the arrays' dtype on entry as ``dtype.type`` rounds them):
        no type dispatch per call.  The arrays are the bucket's flat buffers, their
        slices, or a gradient tensor's NumPy view, checked while planning (dtype,
        1-D, contiguous): always the types the entry point was resolved for.
        """
        n = arrays[0].shape[0]
        if n == 0:
            return
        fhp, k, scal = sc
        if gradlist:
            k = _GRADLIST_NAMES.get(k) or _GRADLIST_NAMES.setdefault(k, gradlist_name(k))
        if b.entry is not None:
            key = (k, n >= PARALLEL_THRESHOLD)
            f = b.entries.get(key)
            if f is None:
                typed = self._scalar(b.np_dtype, **fhp)[1]
                f = b.entries[key] = b.entry(k, arrays, typed)
            f(*arrays, *scal)
        elif b.run is not None:
            b.run(k, arrays, scal)
        else:
            named = {"param": arrays[0], "grad": arrays[1]}
            named.update(zip(_scalars.KERNEL_STATES[kname], arrays[2:]))
            b.backend.step(self._opt, named, fhp)
