"""One step on Keras variables: :class:`KerasStepMixin`, a part of the Keras-side twins.

Keras' ``apply`` protocol, with fastadam's update in place of Keras' ops:

1. build on first use, refuse variables the optimizer was not built with, drop
   ``None`` gradients (with Keras' warning);
2. check every (gradient, variable) pair and take the arrays the kernels run
   on (:mod:`fastadam.keras._torch_views`: NumPy views of the torch storage on
   the CPU, 1-D torch tensors over it on a CUDA device), and the learning rate
   (a schedule's value is checked) -- nothing written yet;
3. overwrite the variables marked ``overwrite_with_gradient`` (Keras' float8
   bookkeeping), then run the fastadam class's kernels (``_plan``) over the
   arrays (the host kernels, or the cuda ones for CUDA variables, with the same
   scalars): ``1 / loss_scale_factor`` and the norm clip are a gradient factor,
   ``weight_decay`` the decay factor of the same pass (1 for the variables
   excluded by ``exclude_from_weight_decay``), ``clipvalue`` a clipped copy;
4. apply the variables' constraints and count the step (``iterations``).

Imports neither Keras nor torch: it works through the optimizer's methods.
"""

from __future__ import annotations

import warnings

from ._common import runner
from ._transforms import lr_value


class KerasStepMixin:
    """``_keras_apply``: one step on Keras variables (see the module docstring)."""

    _tv = None    # fastadam.keras._torch_views, imported at the first step on torch

    def _keras_apply(self, grads, variables):
        self._require_torch()
        tv = self._tv
        if tv is None:
            from . import _torch_views as tv
            type(self)._tv = tv
        # under torch.compile (fit(jit_compile=True)) the step runs eagerly: a graph break
        return tv.eager(self._keras_step, grads, variables)

    def _keras_step(self, grads, variables):
        tv = self._tv
        grads = list(grads)
        if not grads:
            return
        if variables is None:
            if not self.built:
                raise ValueError("When passing `grads` without `variables`, the optimizer "
                                 "must already be built on a list of variables. Call "
                                 "`optimizer.build(trainable_variables)` first.")
            variables = self._trainable_variables
        else:
            if not self.built:
                self._keras_build(variables)
            self._check_variables_are_known(variables)
        if len(grads) != len(variables):
            raise ValueError(f"got {len(grads)} gradients for {len(variables)} variables")
        pairs, overwrite, missing = [], [], []
        for i, (g, v) in enumerate(zip(grads, variables)):
            if g is None:
                missing.append(v.path)
            elif getattr(v, "overwrite_with_gradient", False):
                overwrite.append((g, v))
            else:
                pairs.append((i, g, v))
        if not pairs and not overwrite:
            raise ValueError("No gradients provided for any variable.")
        if missing:
            warnings.warn(f"Gradients do not exist for variables {missing} when minimizing "
                          "the loss. If using `model.compile()`, did you forget to provide "
                          "a `loss` argument?", stacklevel=3)
        lr = self._keras_lr()
        chunks = tv.chunks(self, pairs) if pairs else []   # checks every pair first
        for g, v in overwrite:
            v.assign(g)
        if chunks:
            self._keras_update(chunks, lr)
        for _, _, v in pairs:
            if v.constraint is not None:
                v.assign(v.constraint(v))
        tv.bump(self._iterations)

    def _keras_lr(self) -> float:
        """The learning rate of this step, as Keras reads it, then the legacy ``decay``."""
        lr = self._lr
        if callable(lr):
            if self._lr_takes_step:     # a LearningRateSchedule gets Keras' variable
                value = lr(self._iterations if self._is_schedule(lr) else self._steps)
            else:
                value = lr()
            value = lr_value(value, f"learning_rate (the schedule's value at iteration "
                                    f"{self._steps})")
        else:
            value = float(self._tv.tensor(self._learning_rate))   # Keras' variable
        if self.decay:
            value = value / (1.0 + self.decay * self._steps)
        return value

    def _keras_update(self, chunks, lr):
        """Run the kernels over ``chunks`` (:class:`fastadam.keras._torch_views.Chunk`):
        the host kernels (or the NumPy steps) for CPU variables, the cuda kernels for
        CUDA ones, with the same scalars."""
        tv = self._tv
        for n, var in self._kscalars.items():           # Nadam's u_product
            setattr(self, n, float(tv.tensor(var)))
        st = self._prepare_step(lr)
        gscales = self._grad_scales([(None, c.g, None) for c in chunks], tv.sumsq) \
            if (self.clipnorm or self.global_clipnorm or self.loss_scale_factor) else None
        be = self._backend() if any(not c.ops.device for c in chunks) else None
        tv.follow_torch_threads()
        plans = {}                      # chunks alike share their scalars
        for k, c in enumerate(chunks):
            if c.n == 0:
                continue
            gscale = gscales[k] if gscales is not None else 1.0
            s = st if c.decay_on or st.decay == 1.0 else type(st)(st.t, st.lr, 1.0, st.extra)
            g = c.ops.clip_values(self, c.g) if self.clipvalue else c.g
            if be == "numpy" and not c.ops.device:
                self._numpy_update(c.p, g, c.state, gscale, s)
                continue
            key = (c.dtype, gscale, s.decay)
            plan = plans.get(key)
            if plan is None:
                plan = plans[key] = self._plan(c.dtype, gscale, s)
            family, kname, names, scal = plan
            runner(family, c.ops.device)(kname, (c.p, g) + tuple(c.state[n] for n in names),
                                         scal)
        self._finish_step(st)
        for n, var in self._kscalars.items():
            tv.set_scalar(var, getattr(self, n))
