r"""Drop-in ``torch.optim`` optimizers whose parameters live in one flat buffer.

``fastadam.torch.Adam(model.parameters(), lr=1e-3)`` replaces
``torch.optim.Adam(model.parameters(), lr=1e-3)``: same constructor, same
defaults, same math (torch.optim's single-tensor "for-loop" implementation),
same ``param_groups``, ``zero_grad``, ``step(closure)``, ``add_param_group``,
LR schedulers and ``state_dict`` format — and one fused kernel call per flat
buffer per step.

How it works
------------
On construction the parameters of each (param group, dtype, device) are
copied once into one contiguous flat tensor and each parameter's ``.data``
becomes a view of it; a flat gradient tensor of the same layout is made, and
each ``.grad`` is bound to a view of it, so autograd accumulates straight into
the flat buffer.  State tensors (``exp_avg``, ...) are flat too, and
``optimizer.state[p]`` holds per-parameter views of them, as torch.optim would
hold separate tensors.  ``step()`` then runs one kernel over each flat buffer:
on CPU the compiled (numba, else Cython) kernel on the zero-copy NumPy view of
the tensors; on CUDA the ``cuda`` backend on the tensors themselves.

torch.optim's semantics are kept exactly:

* ``zero_grad()`` (``set_to_none=True``) sets every ``.grad`` to None, as torch
  does; the next backward then makes fresh gradient tensors.  ``step()`` reads
  a big one where it is (a kernel call of its own over that parameter's slice
  of the flat buffers: no copy) and copies small ones into the flat gradient
  buffer, where they join their neighbours' call.
  ``zero_grad(set_to_none=False)`` zeroes the flat gradient buffer in one fill
  and binds every non-None ``.grad`` to its view, so backward accumulates in
  place and ``step()`` is one call per buffer.
* A parameter whose ``.grad`` is None at ``step()`` is left untouched and its
  step count does not advance (step counts are per parameter, as in torch);
  the kernel runs over the contiguous runs of parameters that have a gradient
  and share a step count — in the common case, the whole buffer at once.
* A gradient tensor the user assigned (``p.grad = t``) is used (as above).
* Sparse COO gradients (``nn.Embedding(sparse=True)``) are taken where torch takes
  them -- :class:`SparseAdam`, :class:`Adagrad`, :class:`SGD`, and beyond torch
  ``Adam(sparse_grads="lazy")`` and :class:`RowWiseAdagrad` -- with one row-sparse
  kernel call per parameter on its rows of the flat buffers (the table's slice of
  the flat gradient is never touched), and refused with RuntimeError elsewhere, as
  torch does (:mod:`.sparse`; docs/embeddings.md).
* Hyperparameters are read from ``param_groups`` at every step, so LR
  schedulers and manual changes take effect; validated values are cached
  while a group's values do not change.
* Edits of ``optimizer.state`` (``state[p].clear()``, ``del state[p]``,
  ``state[p]["exp_avg"] = t``, ``optimizer.state = defaultdict(dict)``) and of a
  group's ``"params"`` list mean what they mean in torch (:mod:`.tracked`).
* ``state_dict()`` is torch.optim's format (per-parameter ``step`` tensors,
  ``exp_avg``, ``exp_avg_sq``, NAdam's ``mu_product``, ...), so
  ``torch.optim.Adam`` loads a fastadam checkpoint and ``fastadam.torch.Adam``
  loads a torch.optim one; ``load_state_dict`` copies into the flat buffers.

Mixed precision: every optimizer sets ``_step_supports_amp_scaling = True``, so
``torch.amp.GradScaler`` hands it ``grad_scale`` / ``found_inf`` as it does torch's
fused Adam; ``step()`` unscales inside the kernel and skips the step on inf/nan
(parameters, state and step counts exactly unchanged).  ``max_grad_norm`` /
``clip_value`` (attributes; constructor options of Adam/AdamW) clip in the step, and
``Adam(..., state_dtype="bfloat16"|"int8")`` stores the moments in 2 or about 1 byte
(:mod:`fastadam.lowp`).  CPU tensors only for these, except ``state_dtype``, which
CUDA tensors take too (the cuda backend's reduced-precision kernels).

Parameters that an engine moves after construction (``p.data`` replaced by a view
of its own storage: ZeroRedundancyOptimizer's parameter buckets, FSDP1) are updated
where they now are: ``p.data`` is never re-pointed.  DTensor parameters (FSDP2)
raise ``TypeError``.

``foreach`` and ``fused`` are accepted and have no effect (fastadam is always
fused).  ``capturable=True`` and ``differentiable=True`` raise
:class:`NotImplementedError`.  Parameters must be float32 or float64, on the
CPU or a CUDA device; Adam and AdamW also take float16 / bfloat16 CPU
parameters, updated through float32 master weights (``param_rounding``,
:mod:`fastadam.lowp.master`).  Importing this module imports torch; ``import
fastadam`` alone does not.

Layout
------
=====================  ===============================================================
:mod:`.base`           :class:`FlatOptimizer`: construction, ``add_param_group`` and its
                       checks, the ``step`` hook/profiler patch, ``state_dict``, pickle
                       and deepcopy; composed of the mixins below
:mod:`.step`           ``step()``, ``zero_grad()``: planning the runs of a bucket,
                       gradient copies, kernel calls
:mod:`.transformed`    the transformed step: unscaling, inf/nan skipping, clipping (AMP)
:mod:`.checkpoint`     ``load_state_dict`` (torch.optim's format) and its checks
:mod:`.buffers`        ``_Bucket`` (the flat buffers of a group), flat tensors, state
                       views, adoption of engine-owned storage (ZeRO, FSDP1)
:mod:`.hparams`        hyperparameters of the groups: validation cache, kernel scalars
:mod:`.tracked`        edits of ``optimizer.state`` and of a group's ``"params"``: change
                       flag, applying them to the flat buffers
:mod:`.adam`           :class:`Adam`, :class:`AdamW`
:mod:`.nadam`          :class:`NAdam`
:mod:`.adamax`         :class:`Adamax`
:mod:`.rmsprop`        :class:`RMSprop`
:mod:`.adagrad`        :class:`Adagrad`
:mod:`.sgd`            :class:`SGD`
:mod:`.adadelta`       :class:`Adadelta`
:mod:`.sparse_adam`    :class:`SparseAdam` (sparse gradients only)
:mod:`.rowwise`        :class:`RowWiseAdagrad` (one state value per row)
:mod:`.sparse`         sparse (COO) gradients: checks, the row-sparse kernel call
=====================  ===============================================================
"""

from .. import _scalars  # noqa: F401  (``fastadam.torch._scalars``, as before the split)
from .adadelta import Adadelta
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .adamax import Adamax
from .base import FlatOptimizer
from .nadam import NAdam
from .rmsprop import RMSprop
from .rowwise import RowWiseAdagrad
from .sgd import SGD
from .sparse_adam import SparseAdam
from .step import _IN_PLACE_MIN  # noqa: F401  (read by the tests)

__all__ = ["Adam", "AdamW", "RMSprop", "Adagrad", "SGD", "Adadelta", "NAdam", "Adamax",
           "SparseAdam", "RowWiseAdagrad", "FlatOptimizer"]
