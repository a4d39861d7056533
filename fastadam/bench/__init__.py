r"""``fastadam bench``: fastadam's steps against the peers and the memory roofline.

Every contender runs in this one process, **interleaved round by round**: in
each round every contender times one batch of calls (the order rotates from
round to round), and the reported time is the median over rounds of the time
per call.  On a shared machine whose speed drifts, this keeps the *ratios*
between contenders honest even when absolute times move.

Contenders, for float32 Adam (lr=1e-3, betas=(0.9, 0.999), eps=1e-8) on one
tensor of each size:

* ``roofline``: the fastest loop moving exactly Adam's bytes (reads p, g, m, v;
  writes p, m, v; trivial math), see :mod:`fastadam.bench.roofline`; the fastest of
  its four forms (serial or parallel, plain or software-prefetched).  ``% roofline`` is its time over a
  contender's time.
* ``fastadam step()``: the whole façade call ``fastadam.Adam(...).step()``;
  ``fastadam adam_()``: the functional call; ``fastadam[cython] step()`` when
  the cython backend is built; ``numpy reference`` at small sizes.
* the peers, when importable: ``torch for-loop`` / ``torch foreach`` /
  ``torch fused`` (``torch.optim.Adam``), ``DeepSpeedCPUAdam``.
  ``vs best peer`` is the best peer's time over a contender's time (> 1 is
  faster than every peer).

Then a GPT-like model (76 tensors, 6,967,296 params: token and position
embeddings, 6 layers of attention and MLP weights, biases and norms) stepped
through ``fastadam.torch.Adam`` (when that module exists), the NumPy façade
over a dict of 76 arrays, and the peers; and every other optimizer (the
façade ``step()``) against the roofline of its own traffic; the
reduced-precision table (:mod:`fastadam.bench.lowp`: bf16 / int8 state,
bf16 parameters with master weights and the AMP step at 8M params, against
their rooflines).  Finally the start-up costs: ``import fastadam`` and the first step in a new process with
a warm numba cache.

Run ``fastadam bench --help`` for the options.

The package, each module importing only those earlier in this list (and
fastadam's façades, kernels and configuration below the tools):

* :mod:`fastadam.bench.timing`: interleaved rounds and their statistic, sizes
  (``64K``, ``4M``) and times as text;
* :mod:`fastadam.bench.roofline`: the memory-roofline loops (numba; imported
  only when a measurement needs them, so that ``fastadam --help`` stays light);
* :mod:`fastadam.bench.contenders`: what is timed: fastadam's steps and the
  peers' on one tensor, the GPT-like model and the other optimizers, the
  serial / parallel crossover and the start-up costs;
* :mod:`fastadam.bench.lowp`: the reduced-precision and AMP section, its
  contenders, ratios and table;
* :mod:`fastadam.bench.report`: the ratios and tables, the machine information
  and the plot;
* :mod:`fastadam.bench.loop`: the training-loop section (``--loop``): whole
  iterations of PyTorch training loops with each optimizer;
* :mod:`fastadam.bench.memory`: the NumPy façade's peak memory (construction and
  the first steps) measured in a new process;
* :mod:`fastadam.bench.main`: the options and the order of the measurements
  (:func:`add_arguments` and :func:`run`, which :mod:`fastadam.cli` calls).

The names below are re-exported from those modules, so that
``fastadam.bench.interleave``, ``fastadam.bench.gpt_shapes`` and the rest keep
working.
"""

from __future__ import annotations

from .contenders import (BETAS, EPS, GPT, LR, OPTIMIZERS, PEERS, REFERENCE_MAX, crossover,
                         gpt_shapes, model_contenders, optimizer_contenders,
                         single_tensor_contenders, startup_times)
from .main import DEFAULT_SIZES, QUICK_SIZES, add_arguments, run
from .report import format_table, machine_info, plot, print_report
from .timing import interleave, interleave_samples

# the one private helper reached from outside (tests: fastadam.bench._size)
from .timing import _size  # noqa: F401

__all__ = [
    "BETAS", "DEFAULT_SIZES", "EPS", "GPT", "LR", "OPTIMIZERS", "PEERS", "QUICK_SIZES",
    "REFERENCE_MAX", "add_arguments", "crossover", "format_table", "gpt_shapes",
    "interleave", "interleave_samples", "machine_info", "model_contenders",
    "optimizer_contenders", "plot", "print_report", "run", "single_tensor_contenders",
    "startup_times",
]
