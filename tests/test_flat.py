"""FlatParams: flatten, views, grads, unflatten."""

import numpy as np
import pytest

from fastadam import FlatParams


def test_dict_views_share_the_buffer():
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([7.0, 8.0], dtype=np.float32)
    fp = FlatParams({"w": w, "b": b})
    assert len(fp.buffers) == 1
    fb = fp.buffers[0]
    assert fb.data.shape == (8,) and fb.data.flags.c_contiguous
    np.testing.assert_array_equal(fb.data, [0, 1, 2, 3, 4, 5, 7, 8])
    fp.params["w"][1, 2] = 42
    assert fb.data[5] == 42
    fb.data[6] = -1
    assert fp.params["b"][0] == -1
    fp.grads["b"][...] = 3
    np.testing.assert_array_equal(fb.grad, [0, 0, 0, 0, 0, 0, 3, 3])
    assert w[1, 2] == 5          # the input array itself is not aliased (copied once)


def test_list_and_replace():
    arrs = [np.ones((2, 2)), np.zeros(3)]
    fp = FlatParams(arrs, replace=True)
    assert isinstance(fp.params, list)
    assert arrs[0] is fp.params[0] and arrs[1] is fp.params[1]
    arrs[0][0, 0] = 5.0
    assert fp.buffers[0].data[0] == 5.0


def test_mixed_dtypes_get_one_buffer_each():
    fp = FlatParams({"a": np.ones(3, np.float32), "b": np.ones(2), "c": np.ones(4, np.float32)})
    assert [str(fb.dtype) for fb in fp.buffers] == ["float32", "float64"]
    assert fp.buffers[0].keys == ["a", "c"] and fp.buffers[0].size == 7
    assert list(fp.params) == ["a", "b", "c"]      # caller's order kept
    assert fp.size == 9 and len(fp) == 3


def test_unflatten_flatten_set_grads():
    fp = FlatParams({"w": np.zeros((2, 3)), "b": np.zeros(2)})
    state = np.arange(8, dtype=np.float64)
    views = fp.unflatten(state)
    np.testing.assert_array_equal(views["w"], [[0, 1, 2], [3, 4, 5]])
    np.testing.assert_array_equal(views["b"], [6, 7])
    assert np.shares_memory(views["w"], state)
    (flat,) = fp.flatten({"w": np.ones((2, 3)), "b": np.full(2, 2.0)})
    np.testing.assert_array_equal(flat, [1, 1, 1, 1, 1, 1, 2, 2])
    fp.set_grads({"w": np.ones((2, 3)), "b": np.full(2, 2.0)})
    np.testing.assert_array_equal(fp.buffers[0].grad, flat)
    fp.zero_grad()
    assert not fp.buffers[0].grad.any()


@pytest.mark.parametrize("bad,exc,match", [
    ({"w": [1.0, 2.0]}, TypeError, "'w'"),
    ({"w": np.ones(3, dtype=np.int32)}, TypeError, "float32 and float64"),
    (42, TypeError, "dict"),
])
def test_bad_params(bad, exc, match):
    with pytest.raises(exc, match=match):
        FlatParams(bad)


def test_same_array_twice_is_refused():
    a = np.ones(3)
    with pytest.raises(ValueError, match="same array"):
        FlatParams([a, a])


def test_set_grads_checks_all_shapes_first():
    fp = FlatParams({"w": np.zeros(3), "b": np.zeros(2)})
    fp.grads["w"][...] = 9
    with pytest.raises(ValueError, match="shape"):
        fp.set_grads({"w": np.ones(3), "b": np.ones(5)})
    np.testing.assert_array_equal(fp.grads["w"], [9, 9, 9])


def test_unflatten_unknown_layout():
    fp = FlatParams({"w": np.zeros(3)})
    with pytest.raises(ValueError, match="no buffer"):
        fp.unflatten(np.zeros(4))
