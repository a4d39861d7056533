"""Peak memory of fastadam.torch.Adam against torch's fused Adam, each measured in a new
process (``fastadam.bench.memory.torch_memory``: ``VmHWM`` reset before each phase).

Four ``Linear(3072, 3072)`` layers (148 MiB of float32 parameters, each weight 36 MiB),
three training steps (``zero_grad``, forward, backward, ``step``), in both gradient
regimes: fresh gradient tensors each step (torch's default ``zero_grad()``) and
gradients kept (``zero_grad(set_to_none=False)``; the first backward still makes fresh
ones, which the second ``zero_grad`` replaces by views of the flat buffer).

* Construction adds at most the largest tensor plus 5% of the parameters (each original
  storage is released as soon as it is copied into the flat buffer; before: a second
  copy of every parameter).
* The steps' peak, counted with the parameters (the peak above the resident set before
  construction, plus the parameters' bytes), is at most 1.02x torch fused's measured the
  same way (before: the flat gradient beside the fresh gradients, about 1.25x; with kept
  gradients every old gradient stayed alive while the flat buffer was zeroed).  The
  fixed cost of importing and loading the kernels (numba) is in the resident set before
  construction, and not counted.

The weights are larger than glibc's largest dynamic ``mmap`` threshold (32 MiB), so each
one freed goes back to the system at once in both processes, and the resident set
measures what is alive (with smaller tensors, a freed block may stay in the heap,
differently in each process, depending on what was freed before).
"""

from __future__ import annotations

import sys

import pytest

torch = pytest.importorskip("torch")

from fastadam.bench.memory import torch_memory  # noqa: E402

LAYERS, WIDTH, STEPS = 4, 3072, 3
M = 1 << 20

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the peak resident set is reset through /proc")


@pytest.fixture(scope="module", params=["fresh", "bound"])
def figures(request):
    out = {o: torch_memory(o, request.param, LAYERS, WIDTH, steps=STEPS)
           for o in ("torch fused", "fastadam.torch")}
    if not all(r["resettable"] for r in out.values()):
        pytest.skip("this kernel does not let /proc/self/clear_refs reset the peak")
    return out


def test_construction_adds_at_most_the_largest_tensor(figures):
    r = figures["fastadam.torch"]
    P, largest = r["params_bytes"], r["largest_bytes"]
    assert P == 4 * LAYERS * (WIDTH * WIDTH + WIDTH) and largest == 4 * WIDTH * WIDTH
    added = r["peak_construct"] - r["rss_before"]
    assert added <= largest + 0.05 * P, (added / M, largest / M, P / M)
    # the originals are gone once constructed: the flat buffer took their place
    assert r["rss_after_construct"] - r["rss_before"] <= 0.05 * P


def test_training_peak_within_2_percent_of_torch_fused(figures):
    t, f = figures["torch fused"], figures["fastadam.torch"]
    P = t["params_bytes"]
    torch_peak = P + t["peak_steps"] - t["rss_before"]
    ours = P + f["peak_steps"] - f["rss_before"]
    # the measurement sees the parameters, gradients and Adam's two moments
    assert torch_peak >= 3.9 * P, torch_peak / P
    assert ours <= 1.02 * torch_peak, (ours / M, torch_peak / M)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="optimizer"):
        torch_memory("sgd")
    with pytest.raises(ValueError, match="grads"):
        torch_memory("torch fused", "none")
