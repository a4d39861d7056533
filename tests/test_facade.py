"""The NumPy façade optimizers: containers, groups, schedules, checkpoints, failures."""

import inspect

import numpy as np
import pytest

import fastadam
from cases import CASES, functional_step, make_state

FACADES = {
    "adam": fastadam.Adam, "rmsprop": fastadam.RMSprop, "adagrad": fastadam.Adagrad,
    "sgd": fastadam.SGD, "adadelta": fastadam.Adadelta, "nadam": fastadam.NAdam,
    "adamax": fastadam.Adamax,
}


def _facade_kwargs(case):
    o = dict(case.options)
    if case.opt in ("adam", "nadam", "adamax"):
        o["betas"] = (o.pop("beta1"), o.pop("beta2"))
    if case.opt == "adagrad":
        o["initial_accumulator_value"] = case.init.get("sum", 0.0)
    return o


def _model(dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return {"w1": rng.standard_normal((5, 7)).astype(dtype),
            "b1": rng.standard_normal(7).astype(dtype),
            "w2": rng.standard_normal((7, 1)).astype(dtype)}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_facade_equals_functional_reference(case, backend):
    """A façade over three arrays equals the NumPy reference applied to each array."""
    params = _model()
    ref = {k: v.copy() for k, v in params.items()}
    ref_state = {k: make_state(case, v) for k, v in ref.items()}
    opt = FACADES[case.opt](params, backend=backend, **_facade_kwargs(case))
    rng = np.random.default_rng(1)
    mp = {k: 1.0 for k in ref}
    for t in range(1, 11):
        for k in params:
            g = rng.standard_normal(params[k].shape)
            opt.grads[k][...] = g
            r = functional_step(case, ref[k], g.copy(), ref_state[k], t, "numpy", mp[k])
            if case.opt == "nadam":
                mp[k] = r
        opt.step()
    for k in params:
        scale = np.max(np.abs(ref[k]))
        np.testing.assert_allclose(params[k], ref[k], rtol=1e-10, atol=1e-12 * scale)
    st = opt.state[0]["float64"]
    assert st["step"] == 10
    for name in case.states():
        views = opt.flat[0].unflatten(st[name])
        for k in params:
            s = np.max(np.abs(ref_state[k][name])) or 1.0
            np.testing.assert_allclose(views[k].reshape(-1), ref_state[k][name].reshape(-1),
                                       rtol=1e-10, atol=1e-12 * s)


def test_defaults_match_torch():
    torch = pytest.importorskip("torch")
    pairs = [(fastadam.Adam, torch.optim.Adam), (fastadam.AdamW, torch.optim.AdamW),
             (fastadam.RMSprop, torch.optim.RMSprop), (fastadam.Adagrad, torch.optim.Adagrad),
             (fastadam.Adadelta, torch.optim.Adadelta), (fastadam.NAdam, torch.optim.NAdam),
             (fastadam.Adamax, torch.optim.Adamax), (fastadam.SGD, torch.optim.SGD)]
    for ours, theirs in pairs:
        ps = inspect.signature(ours).parameters
        ts = inspect.signature(theirs).parameters
        for name, p in ps.items():
            if name in ("params", "backend") or name not in ts:
                continue
            td = ts[name].default
            if isinstance(td, torch.Tensor):
                td = td.item()
            assert p.default == td or (isinstance(td, tuple) and tuple(p.default) == td), \
                (ours.__name__, name, p.default, td)


def test_containers_are_replaced_by_views():
    params = _model(np.float32)
    opt = fastadam.Adam(params, lr=0.1)
    fb = opt.flat[0].buffers[0]
    assert all(np.shares_memory(v, fb.data) for v in params.values())
    assert opt.params is not None and set(opt.params) == set(params)
    lst = [np.ones(3), np.ones((2, 2))]
    opt2 = fastadam.SGD(lst, lr=0.1)
    assert isinstance(opt2.params, list) and lst[0] is opt2.params[0]
    opt2.grads[1][...] = 1.0
    opt2.step()
    np.testing.assert_allclose(lst[1], 0.9)
    np.testing.assert_allclose(lst[0], 1.0)


def test_dtype_preserved():
    params = {"a": np.ones(5, np.float32), "b": np.ones(5, np.float64)}
    opt = fastadam.Adam(params)
    opt.grads["a"][...] = 1
    opt.grads["b"][...] = 1
    opt.step()
    assert params["a"].dtype == np.float32 and params["b"].dtype == np.float64
    assert opt.state[0]["float32"]["exp_avg"].dtype == np.float32


def test_param_groups_and_schedule():
    """Per-group lr, and an lr changed between steps takes effect from the next step."""
    ga, gb = [np.zeros(4)], [np.zeros(4)]     # the group lists get the views
    opt = fastadam.SGD([{"params": ga, "lr": 0.1}, {"params": gb}], lr=0.01)
    assert opt.params[0][0] is ga[0]
    opt.grads[0][0][...] = 1.0
    opt.grads[1][0][...] = 1.0
    opt.step()
    np.testing.assert_allclose(ga[0], -0.1)
    np.testing.assert_allclose(gb[0], -0.01)
    opt.param_groups[1]["lr"] = 0.5
    opt.step()
    np.testing.assert_allclose(gb[0], -0.51)
    gc = [np.zeros(2)]
    opt.add_param_group({"params": gc, "lr": 1.0})
    opt.grads[2][0][...] = 2.0
    opt.step()
    np.testing.assert_allclose(gc[0], -2.0)
    np.testing.assert_allclose(ga[0], -0.3)


def test_closure_result_is_returned():
    opt = fastadam.Adam({"w": np.zeros(3)})
    calls = []

    def closure():
        calls.append(1)
        opt.grads["w"][...] = 1.0
        return 3.5
    assert opt.step(closure) == 3.5 and calls == [1]


@pytest.mark.parametrize("name", sorted(FACADES))
@pytest.mark.parametrize("clip", [False, True])
def test_step_given_gradients_says_where_they_go(name, clip):
    """``opt.step(grads)`` (a common first guess) is a TypeError naming the closure and
    ``opt.grads``, raised before anything runs: no state made, no parameter written."""
    params = _model()
    opt = FACADES[name](params)
    if clip:
        opt.max_grad_norm = 1.0                  # the two-pass (clipping) path
    snap = {k: v.copy() for k, v in params.items()}
    for bad in (np.ones(3), [np.ones(3)], {"w1": np.ones((5, 7))}, 0.5):
        with pytest.raises(TypeError, match=r"optional closure.*opt\.grads\[k\]"):
            opt.step(bad)
    assert opt.state[0]["float64"] == {"step": 0}
    for k, v in params.items():
        np.testing.assert_array_equal(v, snap[k])
    opt.grads["w1"][...] = 1.0
    opt.step()                                   # and the optimizer still works
    assert opt.state[0]["float64"]["step"] == 1 and not np.array_equal(params["w1"], snap["w1"])


def test_bad_group_hyperparameter_changes_nothing():
    ga, gb = [np.ones(4)], [np.ones(4)]
    opt = fastadam.Adam([{"params": ga}, {"params": gb}], lr=0.1)
    a, b = ga[0], gb[0]
    opt.grads[0][0][...] = 1.0
    opt.grads[1][0][...] = 1.0
    opt.step()
    snap = (a.copy(), b.copy(), opt.state_dict())
    opt.param_groups[1]["betas"] = (0.9, 1.5)
    with pytest.raises(ValueError, match="beta parameter at index 1"):
        opt.step()
    np.testing.assert_array_equal(a, snap[0])
    np.testing.assert_array_equal(b, snap[1])
    assert opt.state[0]["float64"]["step"] == 1
    np.testing.assert_array_equal(opt.state[0]["float64"]["exp_avg"],
                                  snap[2]["state"][0]["exp_avg"])


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(lr=-1.0), ValueError, "learning rate"),
    (dict(betas=(0.9,)), TypeError, "betas"),
    (dict(eps="x"), TypeError, "eps"),
])
def test_bad_constructor_arguments(kwargs, exc, match):
    params = {"w": np.ones(3)}
    with pytest.raises(exc, match=match):
        fastadam.Adam(params, **kwargs)
    assert isinstance(params["w"], np.ndarray) and params["w"].base is None  # untouched


def test_bad_params_argument():
    with pytest.raises(TypeError):
        fastadam.Adam(42)
    with pytest.raises(ValueError, match="empty"):
        fastadam.Adam([])
    with pytest.raises(TypeError, match="unknown hyperparameter"):
        fastadam.Adam([{"params": [np.ones(2)], "learning_rate": 0.1}])


@pytest.mark.parametrize("cls", list(FACADES.values()) + [fastadam.AdamW],
                         ids=lambda c: c.__name__)
def test_checkpoint_resume_is_bitwise(cls):
    kw = {"momentum": 0.9} if cls in (fastadam.SGD, fastadam.RMSprop) else {}
    rng = np.random.default_rng(5)
    grads = [{k: rng.standard_normal(v.shape) for k, v in _model().items()} for _ in range(12)]

    def run(params, opt, gs):
        for g in gs:
            for k in g:
                opt.grads[k][...] = g[k]
            opt.step()

    p_full = _model()
    o_full = cls(p_full, **kw)
    run(p_full, o_full, grads)

    p_a = _model()
    o_a = cls(p_a, **kw)
    run(p_a, o_a, grads[:5])
    ckpt = o_a.state_dict()
    saved = {k: v.copy() for k, v in p_a.items()}
    run(p_a, o_a, grads[5:7])             # the checkpoint must not see later steps
    p_b = saved
    o_b = cls(p_b, **kw)
    o_b.load_state_dict(ckpt)
    run(p_b, o_b, grads[5:])
    for k in p_full:
        assert np.array_equal(p_b[k], p_full[k]), k
    sd_full, sd_b = o_full.state_dict(), o_b.state_dict()
    for e_full, e_b in zip(sd_full["state"], sd_b["state"]):
        for key, val in e_full.items():
            if isinstance(val, np.ndarray):
                assert np.array_equal(val, e_b[key]), key
            else:
                assert val == e_b[key], key


def test_load_state_dict_refuses_mismatches_and_changes_nothing():
    opt = fastadam.Adam(_model())
    opt.grads["w1"][...] = 1.0
    opt.step()
    before = opt.state_dict()
    other = fastadam.RMSprop(_model())
    with pytest.raises(ValueError, match="RMSprop"):
        opt.load_state_dict(other.state_dict())
    bad = opt.state_dict()
    bad["state"][0]["exp_avg"] = bad["state"][0]["exp_avg"][:-1]
    with pytest.raises(ValueError, match="shape"):
        opt.load_state_dict(bad)
    bad = opt.state_dict()
    bad["param_groups"][0]["lr"] = -5
    with pytest.raises(ValueError, match="learning rate"):
        opt.load_state_dict(bad)
    with pytest.raises(ValueError, match="checkpoint"):
        opt.load_state_dict({"state": []})
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"]
    assert np.array_equal(after["state"][0]["exp_avg"], before["state"][0]["exp_avg"])


def test_repr_mentions_backend_and_groups():
    r = repr(fastadam.Adam({"w": np.ones(2)}, backend="numpy"))
    assert "numpy" in r and "group 0" in r


def test_same_parameters_in_two_groups_are_refused():
    fp = fastadam.FlatParams({"w": np.ones(3)})
    with pytest.raises(ValueError, match="more than one parameter group"):
        fastadam.SGD([{"params": fp}, {"params": fp}], lr=1.0)
    d = {"w": np.ones(3)}
    opt = fastadam.SGD([{"params": d}], lr=1.0)
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": d})        # d now holds views of the buffer
    assert len(opt.param_groups) == 1


def test_checkpoint_missing_or_duplicated_entries_are_refused():
    opt = fastadam.Adam(_model())
    opt.grads["w1"][...] = 1.0
    opt.step()
    before = opt.state_dict()
    bad = opt.state_dict()
    bad["state"] = []
    with pytest.raises(ValueError, match="no state entry"):
        opt.load_state_dict(bad)
    bad = opt.state_dict()
    bad["state"] = bad["state"] * 2
    with pytest.raises(ValueError, match="two state entries"):
        opt.load_state_dict(bad)
    assert opt.state[0]["float64"]["step"] == 1
    np.testing.assert_array_equal(opt.state[0]["float64"]["exp_avg"],
                                  before["state"][0]["exp_avg"])


def test_repeated_loads_keep_no_old_state_alive():
    """The per-step caches are dropped on load: no generation of old arrays is kept."""
    import gc
    import weakref
    opt = fastadam.Adam({"w": np.zeros(1000)})
    opt.grads["w"][...] = 1.0
    opt.step()
    refs = []
    for _ in range(3):
        refs.append(weakref.ref(opt.state[0]["float64"]["exp_avg"]))
        opt.load_state_dict(opt.state_dict())
        opt.step()
    gc.collect()
    assert all(r() is None for r in refs)


def test_nadam_bad_mu_product_in_checkpoint_fails_before_any_write():
    from fastadam import _scalars
    params = _model()
    opt = fastadam.NAdam(params)
    opt.grads["w1"][...] = 1.0
    opt.step()
    sd = opt.state_dict()
    sd["state"][0]["mu_product"] = 1.0 / _scalars.nadam_mu(0.9, 4e-3, 2)   # mu * m == 1
    opt.load_state_dict(sd)
    snap = {k: v.copy() for k, v in params.items()}
    with pytest.raises(ValueError, match="mu_product"):
        opt.step()
    for k in params:
        np.testing.assert_array_equal(params[k], snap[k])


def test_refused_state_dtype_leaves_the_callers_arrays_alone():
    d = {"w": np.ones(3)}                      # float64: reduced state needs float32
    w = d["w"]
    with pytest.raises(TypeError, match="float32"):
        fastadam.Adam(d, state_dtype="bfloat16")
    assert d["w"] is w and w.base is None


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("name, kw", [("Adam", {}), ("Adam", {"state_dtype": "int8"}),
                                      ("SGD", {"momentum": 0.9}), ("RMSprop", {})])
def test_copies_keep_params_and_grads_viewing_their_buffers(how, name, kw):
    """A copy (``copy.deepcopy``, ``pickle``) of an optimizer is a working optimizer: its
    ``params`` / ``grads`` view its own flat buffers (gradients written there are the
    ones its step reads; the step's results show in ``params``), its steps continue the
    original's exactly, and the original is untouched by them."""
    import copy
    import pickle
    rng = np.random.default_rng(3)
    init = {"w": rng.standard_normal((64, 33)).astype(np.float32),
            "b": rng.standard_normal(7).astype(np.float32)}
    grads = [{k: rng.standard_normal(v.shape).astype(np.float32) for k, v in init.items()}
             for _ in range(3)]
    a = getattr(fastadam, name)({k: v.copy() for k, v in init.items()}, lr=0.01, **kw)
    for k in init:
        a.grads[k][...] = grads[0][k]
    a.step()
    b = copy.deepcopy(a) if how == "deepcopy" else pickle.loads(pickle.dumps(a))
    before = {k: v.copy() for k, v in a.params.items()}
    for g in grads[1:]:
        for k in init:
            b.grads[k][...] = g[k]
        b.step()
    for k in init:
        np.testing.assert_array_equal(a.params[k], before[k])      # the original: untouched
        assert not np.array_equal(b.params[k], before[k])          # the copy's steps show
    for g in grads[1:]:
        for k in init:
            a.grads[k][...] = g[k]
        a.step()
    for k in init:
        np.testing.assert_array_equal(b.params[k], a.params[k])    # the same steps
    fb = b.flat[0].buffers[0]
    assert all(np.shares_memory(b.params[k], fb.data) for k in init)
    assert all(np.shares_memory(b.grads[k], fb.grad) for k in init)
