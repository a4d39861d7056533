"""``fastadam bench --loop`` (fastadam.bench.loop): the table's shape and sanity on the quick
workloads; the workloads' sizes; no speed is asserted (that lives in the benchmarks)."""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")

from fastadam import cli  # noqa: E402
from fastadam.bench import loop  # noqa: E402


def test_bench_loop_quick(tmp_path, capsys):
    out_json = tmp_path / "loop.json"
    rc = cli.main(["bench", "--loop", "--quick", "--rounds", "2", "--batch-time", "0.001",
                   "--json", str(out_json), "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    res = json.loads(out_json.read_text())
    rows = res["loop"]
    names = loop.contender_names(torch)
    assert {"torch foreach", "torch fused", "fastadam.torch",
            "fastadam.torch, grads kept"} <= set(names)
    assert [r["workload"] for r in rows] == [w for w in loop.QUICK_WORKLOADS for _ in names]
    assert res["meta"]["rounds"] == 2
    for w in loop.QUICK_WORKLOADS:
        wrows = [r for r in rows if r["workload"] == w]
        assert [r["contender"] for r in wrows] == names
        assert f"{w}: {wrows[0]['params']:,} params in {wrows[0]['tensors']} tensors" in text
        fused = next(r for r in wrows if r["contender"] == "torch fused")
        best = min(r["iteration_s"] for r in wrows if r["contender"] in loop.PEERS)
        for r in wrows:
            assert 0 < r["step_s"] < r["iteration_s"] and 0 < r["fwd_bwd_s"] < r["iteration_s"]
            # the statistic is taken per column: the parts add up only roughly
            assert r["step_s"] + r["fwd_bwd_s"] == pytest.approx(r["iteration_s"], rel=0.5)
            assert math.isclose(r["step_share"], r["step_s"] / r["iteration_s"])
            assert math.isclose(r["fwd_bwd_vs_fused"], r["fwd_bwd_s"] / fused["fwd_bwd_s"])
            assert math.isclose(r["vs_best_peer"], best / r["iteration_s"])
            assert r["contender"] in text
    assert "seed MLP: 6,529 params in 4 tensors" in text     # 100*64 + 64 + 64 + 1


def _transformer_params(vocab, d, layers, ctx):
    """Counted from the architecture: embeddings, per layer QKV and output projections,
    the MLP and two norms (weights and biases), the final norm; the output layer is tied."""
    per_layer = (3 * d * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d) + 4 * d
    return vocab * d + ctx * d + layers * per_layer + 2 * d, 2 + 12 * layers + 2


@pytest.mark.parametrize("workload", list(loop.WORKLOADS))
def test_workload_sizes(workload):
    kind, cfg = loop.WORKLOADS[workload]
    if kind == "mlp":
        w = cfg["widths"]
        want = (sum(a * b + b for a, b in zip(w[:-1], w[1:])), 2 * (len(w) - 1))
    else:
        want = _transformer_params(cfg["vocab"], cfg["d"], cfg["layers"], cfg["ctx"])
    model, loss_of = loop.build(torch, workload, quick=False)
    ps = list(model.parameters())
    assert (sum(p.numel() for p in ps), len(ps)) == want
    if workload == "MLP 8M":
        assert 7.5e6 < want[0] < 8.5e6
    if workload == "transformer 6x256":
        assert 6.5e6 < want[0] < 7.5e6


def test_contenders_start_from_the_same_weights_and_train_alike():
    """Every contender's model copy starts from the same weights; after a few iterations
    (Adam, lr 1e-3) nearly every weight agrees with torch fused's, the rest stay within
    a few learning rates, and each moved.

    Rounding differences (torch foreach and fused differ too) change the later gradients
    in the last bits; an element whose gradient is near zero or changes sign can then take
    a step of up to ~2 lr in another direction: 3 steps bound it by 6 lr."""
    its = loop.contenders(torch, "transformer 2x32", quick=True)
    model0, _ = loop.build(torch, "transformer 2x32", quick=True)
    w0 = [p.detach().clone() for p in model0.parameters()]
    finals = {}
    for name, it in its.items():
        for _ in range(3):
            it()
        model = it.__defaults__[0]
        finals[name] = [p.detach().clone() for p in model.parameters()]
    ref = finals["torch fused"]
    for name, ws in finals.items():
        moved = max((a - b).abs().max().item() for a, b in zip(ws, w0))
        assert 1e-4 < moved < 1e-2, name
        diff = torch.cat([(a - b).abs().reshape(-1) for a, b in zip(ws, ref)])
        assert diff.max().item() < 6e-3, name
        assert (diff > 1e-5).float().mean().item() < 0.01, name
