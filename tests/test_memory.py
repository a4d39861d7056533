"""Peak memory of the NumPy façade's construction and first steps, measured in a new
process (``fastadam.bench.memory.facade_memory``: ``VmHWM`` reset before each phase).

Construction copies every parameter into the flat buffer; each array the caller's dict
alone holds is released right after its copy, so construction adds at most the largest
array plus 5% of the parameters (before: a second copy of every parameter); two steps
add the gradient and Adam's two moments (3x the parameters) and nothing proportional
beyond.  The sizes are large enough (72 MiB of parameters, the largest 16 MiB) that a
second copy of the parameters, or of any one array, is far outside the allowance.
"""

from __future__ import annotations

import sys

import pytest

from fastadam.bench.memory import facade_memory

M = 1 << 20
SIZES = [4 * M, 3 * M, 3 * M, 2 * M, 2 * M, M, M, M, M]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the peak resident set is reset through /proc")


@pytest.fixture(scope="module")
def figures():
    r = facade_memory(SIZES, "Adam", steps=2)
    if not r["resettable"]:
        pytest.skip("this kernel does not let /proc/self/clear_refs reset the peak")
    return r


def test_construction_adds_at_most_the_largest_array(figures):
    P = 4 * sum(SIZES)
    largest = 4 * max(SIZES)
    assert figures["params_bytes"] == P and figures["largest_bytes"] == largest
    added = figures["peak_construct"] - figures["rss_before"]
    assert added <= largest + 0.05 * P, (added / M, largest / M, P / M)
    # the originals are gone once constructed: the flat buffer took their place
    assert figures["rss_after_construct"] - figures["rss_before"] <= 0.05 * P


def test_two_steps_add_the_gradient_and_the_moments_only(figures):
    P = 4 * sum(SIZES)
    added = figures["peak_steps"] - figures["rss_before"]
    assert added <= 3 * P + 0.05 * P, added / P
    assert added >= 2.5 * P        # the measurement sees the gradient and the moments
