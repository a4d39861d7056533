"""FlatParams: flatten, views, grads, unflatten; the arrays it cannot update in place."""

import warnings

import numpy as np
import pytest

import fastadam
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


# --------------------------------------------------------------------------------------
# arrays whose own memory step() can never update: warned about, once, by name
# --------------------------------------------------------------------------------------
def _read_only():
    a = np.ones(6)
    a.flags.writeable = False
    return a


STALE = {   # how the array is made -> the reason the warning gives
    "transpose": (lambda: np.ones((3, 2)).T, "not C-contiguous"),
    "strided slice": (lambda: np.ones(12)[::2], "not C-contiguous"),
    "slice of a larger array": (lambda: np.ones(12)[:6], "slice of a larger array"),
    "read-only": (_read_only, "read-only"),
    "foreign memory": (lambda: np.frombuffer(bytearray(48), np.float64),
                       "views memory owned by a bytearray"),
}


def _caught(fn):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        out = fn()
    return out, [w for w in rec if issubclass(w.category, UserWarning)]


@pytest.mark.parametrize("kind", sorted(STALE))
def test_facade_warns_once_naming_a_parameter_it_cannot_update(kind):
    make, why = STALE[kind]
    bad = make()
    before = bad.copy()
    d = {"ok": np.ones(4), "w": bad}
    opt, rec = _caught(lambda: fastadam.SGD(d, lr=0.5))
    assert len(rec) == 1                           # the owning, contiguous 'ok' is not named
    msg = str(rec[0].message)
    assert msg.startswith(f"parameter 'w' {'is ' if 'memory' not in why else ''}")
    assert why in msg and "opt.params['w']" in msg and "a.copy()" in msg
    assert rec[0].filename == __file__             # points at the caller's line
    assert d["w"] is opt.params["w"]               # what the message tells the user to use
    opt.grads["w"][...] = 1.0
    _, again = _caught(opt.step)
    assert again == []                             # once: at construction, not per step
    np.testing.assert_array_equal(opt.params["w"], before.reshape(bad.shape) - 0.5)
    np.testing.assert_array_equal(bad, before)     # the trap the warning is about


def test_list_parameters_are_named_by_index_and_each_warned_once():
    big = np.ones(10)
    _, rec = _caught(lambda: fastadam.Adam([np.ones(2), big[:5], np.ones((2, 3)).T]))
    assert [str(w.message).split(" ", 2)[1] for w in rec] == ["1", "2"]


@pytest.mark.parametrize("make", [
    lambda: np.ones((4, 3)),
    lambda: np.arange(12, dtype=np.float32).reshape(3, 4),      # a view of the same bytes
    lambda: np.ones((4, 3), order="F").copy(),
    lambda: np.ones((1, 5))[0],                                 # the whole base, reshaped
    lambda: np.ones(0),
], ids=["fresh", "reshaped", "copy", "row of 1", "empty"])
def test_arrays_that_own_their_memory_are_not_warned_about(make):
    a = make()
    _, rec = _caught(lambda: fastadam.Adam({"w": a}))
    assert rec == []


def test_warning_as_error_refuses_before_anything_changes():
    t = np.ones((3, 2)).T
    d = {"w": t}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserWarning, match="parameter 'w' is not C-contiguous"):
            fastadam.Adam(d)
    assert d["w"] is t


def test_flatparams_without_replace_points_at_its_views():
    fp, rec = _caught(lambda: FlatParams({"w": np.ones((3, 2)).T}))
    (w,) = rec
    assert "fp.params['w']" in str(w.message) and "replace=True" in str(w.message)
    assert fp.params["w"].flags.c_contiguous


def test_tuples_cannot_take_the_views():
    t = (np.ones(3), np.zeros(2))
    assert len(FlatParams(t).params) == 2                      # flattening alone is fine
    with pytest.raises(TypeError, match="tuple.*pass a list"):
        FlatParams(t, replace=True)
    with pytest.raises(TypeError, match="tuple.*pass a list"):
        fastadam.Adam(t)
    with pytest.raises(TypeError, match="tuple.*pass a list"):
        fastadam.Adam([{"params": t}])
