"""``fastadam bench --sparse`` (fastadam.bench.sparse) runs, on a small table; no timing
is asserted (speed lives in the benchmarks)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from fastadam.bench import sparse


def test_lookups_are_in_range_and_zipf_repeats_rows():
    rng = np.random.default_rng(0)
    perm = rng.permutation(1000)
    z = sparse.lookups(1000, 4096, "zipf", rng, perm)
    u = sparse.lookups(1000, 4096, "uniform", rng)
    assert z.min() >= 0 and z.max() < 1000 and u.min() >= 0 and u.max() < 1000
    assert np.unique(z).size < np.unique(u).size


def test_contenders_step_and_update_their_tables():
    pytest.importorskip("torch")
    cont = sparse.contenders(2048, 8, 256)
    assert {"row-traffic loop", "torch SparseAdam", "fastadam SparseAdam",
            "fastadam Adagrad (sparse)", "torch fused Adam (dense)"} <= set(cont)
    for fn in cont.values():
        fn()
        fn()
    only = sparse.contenders(2048, 8, 256, only=("fastadam SGD (sparse)",))
    assert list(only) == ["fastadam SGD (sparse)"]


def test_run_prints_the_table_and_writes_json(tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch")
    monkeypatch.setattr(sparse, "QUICK_TABLES", ((4096, 16, 512, "zipf"),))
    out = tmp_path / "sparse.json"
    args = argparse.Namespace(quick=True, rounds=1, batch_time=0.001, stat="median",
                              no_progress=True, no_peers=False, json=str(out))
    assert sparse.run(args) == 0
    text = capsys.readouterr().out
    assert "4K x 16 table" in text and "fastadam SparseAdam vs torch SparseAdam" in text
    data = json.loads(out.read_text())
    (r,) = data["sparse"]
    assert r["rows"] == 4096 and r["times_s"]["fastadam SparseAdam"] > 0
    assert {c["against"] for c in r["comparisons"]} >= {"torch SparseAdam", "row-traffic loop"}
    assert "target" not in text


def test_cli_flag(monkeypatch):
    from fastadam.bench import main
    seen = {}
    monkeypatch.setattr(sparse, "run", lambda args: seen.setdefault("args", args) and 0)
    parser = argparse.ArgumentParser()
    main.add_arguments(parser)
    args = parser.parse_args(["--sparse", "--quick"])
    main.run(args)
    assert seen["args"].sparse and seen["args"].quick
