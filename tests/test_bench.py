"""Smoke tests of ``fastadam bench`` (tiny sizes; speed itself is never asserted here)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fastadam import bench, cli
from fastadam.bench import roofline as _roofline


def test_bench_quick_tiny(tmp_path, capsys):
    out_json = tmp_path / "bench.json"
    rc = cli.main(["bench", "--quick", "--sizes", "1K,4K", "--rounds", "2", "--batch-time",
                   "0.0005", "--no-model", "--no-startup", "--no-peers", "--opt-size", "2K",
                   "--lowp-size", "3K", "--json", str(out_json), "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "Adam, float32, one tensor" in text
    assert "Other optimizers" in text
    res = json.loads(out_json.read_text())
    assert {r["size"] for r in res["single"]} == {1024, 4096}
    for n in (1024, 4096):
        rows = [r for r in res["single"] if r["size"] == n]
        names = {r["contender"] for r in rows}
        assert {"roofline", "fastadam step()", "fastadam adam_()", "numpy reference"} <= names
        for r in rows:
            assert r["median_s"] > 0
            assert math.isclose(r["params_per_s"], n / r["median_s"])
            roof = next(x for x in rows if x["contender"] == "roofline")["median_s"]
            assert math.isclose(r["pct_roofline"], 100 * roof / r["median_s"])
    kernels = {r["kernel"] for r in res["optimizers"]}
    assert {"adam", "adam_amsgrad", "rmsprop", "adagrad", "sgd_momentum"} <= kernels
    assert res["meta"]["cpus"] >= 1 and res["meta"]["rounds"] == 2
    # the reduced-precision table: ratios recomputed from the reported times
    assert "Reduced precision and AMP" in text
    low = res["lowp"]
    assert low["size"] == 3072
    names = {r["contender"] for r in low["rows"]}
    assert {"adam fp32 state", "adam bf16 state", "adam int8 state"} <= names
    for r in low["rows"]:
        assert math.isclose(r["vs_fp32_roofline"], low["roofline_s"] / r["median_s"])
        assert math.isclose(r["bytes_ratio"], 28 / r["bytes_per_param"])
    # each state format against its own roofline (the loop moving its bytes)
    rows = {r["contender"]: r for r in low["rows"]}
    for name in ("adam fp32 state", "adam bf16 state", "adam int8 state"):
        r = rows[name]
        assert math.isclose(r["pct_own_roofline"], 100 * r["own_roofline_s"] / r["median_s"])
        assert math.isclose(r["own_vs_fp32_roofline"], low["roofline_s"] / r["own_roofline_s"])
    assert rows["adam fp32 state"]["own_roofline_s"] == low["roofline_s"]
    assert rows["bf16 params, fp32 master"]["own_roofline_s"] is None
    assert "% of own" in text
    # measurements and the limits they are measured against, no project goals
    assert "target" not in text.lower()
    assert all("target" not in r for r in low["rows"])
    assert math.isclose(low["amp_pct"], 100 * low["roofline_amp_s"] / low["amp_s"])


def test_interleave_median_and_order():
    calls = []
    med = bench.interleave({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                           rounds=3, batch_time=1e-4)
    assert set(med) == {"a", "b"} and all(v > 0 for v in med.values())
    assert "a" in calls and "b" in calls


@pytest.mark.parametrize("text,n", [("4096", 4096), ("4K", 4096), ("64k", 65536),
                                    ("1M", 1 << 20), ("1.5K", 1536)])
def test_size_parsing(text, n):
    assert bench._size(text) == n


@pytest.mark.parametrize("text", ["", "0", "x", "-4K"])
def test_size_parsing_rejects(text):
    with pytest.raises(ValueError):
        bench._size(text)


def test_gpt_shapes_match_the_anchor_model():
    shapes = bench.gpt_shapes()
    assert len(shapes) == 76
    # 8192 x 256 + 512 x 256 embeddings; per layer 12 d^2 + 13 d; final norm 2 d
    d, layers = 256, 6
    assert sum(math.prod(s) for _, s in shapes) == 8704 * d + layers * (12 * d * d + 13 * d) \
        + 2 * d == 6_967_296


@pytest.mark.parametrize("variant", sorted(_roofline.VARIANTS))
@pytest.mark.parametrize("kernel", sorted(_roofline.TRAFFIC))
def test_roofline_moves_the_kernels_bytes(kernel, variant):
    """Each roofline loop, in every form, reads every array it gets and writes all but
    the gradient, every element (sizes past a sub-block and a chunk of the prefetched form)."""
    from fastadam import _scalars
    reads, writes = _roofline.TRAFFIC[kernel]
    assert reads == 2 + len(_scalars.KERNEL_STATES[kernel]) and writes == reads - 1
    par, pre = _roofline.VARIANTS[variant]
    n = 37 if not pre else 3 * 4096 + 37
    arrays = [np.full(n, 1.0, np.float32) for _ in range(reads)]
    arrays[1][...] = 2.0                                  # the gradient
    _roofline.get(reads, par, prefetch=pre)(*arrays, np.float32(0.5))
    assert np.all(arrays[1] == 2.0)                       # read only
    for a in arrays[:1] + arrays[2:]:
        assert np.all(a == 2.0)                           # 1 + 0.5 * 2: read and written


@pytest.mark.parametrize("itemsize", [1, 2, 4])
@pytest.mark.parametrize("n", [1, 37, 3 * 4096 + 37])
def test_state_roofline_moves_the_state_bytes(itemsize, n):
    """The reduced-precision roofline loop, in both forms, reads p, g and every word of
    the moments' bytes and writes p and every moment word."""
    words = _roofline.state_words(n, itemsize)
    assert words.dtype == np.float32 and words.size * 4 == -(-n // 128) * 128 * itemsize
    p, g = np.full(n, 1.0, np.float32), np.full(n, 2.0, np.float32)
    s1, s2 = np.full_like(words, 1.0), np.full_like(words, 4.0)
    loops = _roofline.state_loops(p, g, s1, s2, itemsize, scale=0.5)
    assert set(loops) == {"parallel", "parallel prefetched"}
    for k, label in enumerate(sorted(loops)):
        loops[label]()
        assert np.all(g == 2.0)                           # read only
        assert np.all(p == 1.0 + (k + 1))                 # + 0.5 * 2 per pass
        assert np.all(s1 == 1.5 ** (k + 1)) and np.all(s2 == 4.0 * 1.5 ** (k + 1))


def test_state_roofline_rejects_bad_arrays():
    p = np.zeros(300, np.float32)
    w = _roofline.state_words(300, 2)
    with pytest.raises(ValueError, match="itemsize"):
        _roofline.state_words(300, 3)
    with pytest.raises(ValueError, match="state_words"):
        _roofline.state_loops(p, p, w[:-1], w, 2)
    with pytest.raises(ValueError, match="g has"):
        _roofline.state_loops(p, p[:5], w, w, 2)
    with pytest.raises(TypeError, match="s1"):
        _roofline.state_loops(p, p, w.astype(np.float64), w, 2)


def test_plot(tmp_path):
    pytest.importorskip("matplotlib")
    res = {"single": [dict(size=n, contender=c, pct_roofline=p) for n, c, p in
                      [(4096, "a", 50.0), (65536, "a", 80.0), (4096, "roofline", 100.0)]],
           "meta": {"date": "today", "cpu": "cpu"}}
    path = tmp_path / "p.png"
    bench.plot(res, str(path))
    assert path.stat().st_size > 1000


def test_torch_contenders_both_gradient_regimes():
    torch = pytest.importorskip("torch")
    from fastadam.bench.contenders import TORCH_FRESH, single_tensor_contenders
    cont = single_tensor_contenders(4096, peers=False)
    assert {"fastadam.torch step()", TORCH_FRESH} <= set(cont)
    cont[TORCH_FRESH]()                       # a step with fresh gradient tensors: runs
    del torch


def test_crossover_after_torch_work_times_each_call(monkeypatch):
    pytest.importorskip("torch")
    from fastadam.bench import contenders
    calls = []
    out = contenders._after_torch_work({"a": lambda: calls.append("a"),
                                        "b": lambda: calls.append("b")}, 3, min)
    assert set(out) == {"a", "b"} and all(t >= 0 for t in out.values())
    assert calls.count("a") == 3 and calls.count("b") == 3 and calls[:2] == ["a", "b"]
    monkeypatch.setattr(contenders, "_torch", lambda: None)
    assert contenders._after_torch_work({"a": lambda: None}, 2, min) is None
