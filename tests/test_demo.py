"""``fastadam demo``: the model's hand-written math, and the command end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fastadam
from fastadam import demo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    # tiny models: one BLAS/OpenMP thread each keeps a loaded CI machine from
    # oversubscribing its cores (results do not depend on it)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MPLBACKEND", "Agg")
    return env


# --------------------------------------------------------------------------------------
# model math
# --------------------------------------------------------------------------------------
def _params64(seed=0):
    return {k: v.astype(np.float64) for k, v in demo.init_params(seed).items()}


def _batch(n=16, seed=1):
    X, y = demo.make_data(n, seed=seed)
    return X.astype(np.float64), y.astype(np.float64)


def test_bce_matches_naive_formula():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((50, 1)) * 3
    y = (rng.random((50, 1)) < 0.5).astype(np.float64)
    p = 1 / (1 + np.exp(-z))
    naive = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert demo.bce_with_logits(z, y) == pytest.approx(naive, rel=1e-12)
    # and it stays finite where the naive formula overflows
    big = np.array([[800.0], [-800.0]])
    assert demo.bce_with_logits(big, np.array([[0.0], [1.0]])) == pytest.approx(800.0)


def test_sigmoid_stable_and_keeps_dtype():
    z = np.array([-1000, -3, 0, 3, 1000], dtype=np.float32)
    s = demo.sigmoid(z)
    assert s.dtype == np.float32
    np.testing.assert_allclose(s, [0, 1 / (1 + np.exp(3)), 0.5, 1 / (1 + np.exp(-3)), 1],
                               rtol=1e-6, atol=0)


def test_forward_is_the_seed_model():
    params = _params64()
    assert {k: v.shape for k, v in params.items()} == \
        {"W1": (100, 64), "b1": (64,), "W2": (64, 1), "b2": (1,)}
    X, _ = _batch(7)
    z2, _ = demo.forward(params, X)
    # an independent loop over samples: relu(x W1 + b1) W2 + b2
    for i in range(7):
        h = np.maximum(X[i] @ params["W1"] + params["b1"], 0)
        assert z2[i, 0] == pytest.approx(h @ params["W2"][:, 0] + params["b2"][0], rel=1e-12)


def test_gradients_match_finite_differences():
    """Central differences of the float64 loss against the hand-written backward pass."""
    params = _params64(3)
    params["b1"] += 0.1                   # nonzero biases: exercise their gradients too
    params["b2"] += 0.2
    X, y = _batch(16, seed=5)
    _, grads = demo.loss_and_grads(params, X, y)
    rng = np.random.default_rng(0)
    h = 1e-6
    for name, p in params.items():
        flat, gflat = p.reshape(-1), grads[name].reshape(-1)
        idx = rng.choice(flat.size, size=min(flat.size, 25), replace=False)
        for i in idx:
            old = flat[i]
            flat[i] = old + h
            lp = demo.loss_and_grads(params, X, y)[0]
            flat[i] = old - h
            lm = demo.loss_and_grads(params, X, y)[0]
            flat[i] = old
            num = (lp - lm) / (2 * h)
            assert gflat[i] == pytest.approx(num, rel=1e-5, abs=1e-9), (name, i)


def test_gradients_written_into_given_arrays_in_float32():
    params = demo.init_params(0)
    opt = fastadam.SGD(params, lr=0.0)          # params now holds views of a flat buffer
    X, y = demo.make_data(32, seed=2)
    loss, grads = demo.loss_and_grads(opt.params, X, y, opt.grads)
    assert grads is opt.grads
    for k, g in opt.grads.items():
        assert g.dtype == np.float32
    assert np.any(opt.flat[0].buffers[0].grad != 0)
    # same values as a float64 computation, to float32 accuracy
    ref = demo.loss_and_grads({k: v.astype(np.float64) for k, v in opt.params.items()},
                              X.astype(np.float64), y.astype(np.float64))[1]
    for k in ref:
        np.testing.assert_allclose(opt.grads[k], ref[k], rtol=1e-3, atol=1e-6)


def test_data_is_learnable_and_deterministic():
    X, y = demo.make_data(2000, seed=4)
    X2, y2 = demo.make_data(2000, seed=4)
    assert X.dtype == np.float32 and y.dtype == np.float32 and X.shape == (2000, 100)
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(y, y2)
    assert 0.4 < y.mean() < 0.6
    # a least-squares linear probe already does better than chance: there is structure
    A = np.c_[X, np.ones(len(X))]
    w = np.linalg.lstsq(A[:1500], y[:1500] - 0.5, rcond=None)[0]
    acc = np.mean(((A[1500:] @ w) > 0) == (y[1500:] > 0.5))
    assert acc > 0.6


def test_training_step_decreases_loss_for_every_optimizer():
    X, y = demo.make_data(1500, seed=0)
    data = (X[:1000], y[:1000], X[1000:], y[1000:])
    for name in demo.OPTIMIZERS:
        r = demo.train_one(name, data, epochs=2, seed=0)
        assert r.epoch_train_loss[-1] < r.epoch_train_loss[0], name
        assert len(r.batch_losses) == 2 * (1000 // demo.BATCH + 1)
        assert 0.0 <= r.val_acc <= 1.0


def test_state_bytes_per_param_reflect_each_optimizer():
    X, y = demo.make_data(200, seed=0)
    data = (X[:100], y[:100], X[100:], y[100:])
    expect = {"Adam": 8, "AdamW": 8, "RMSprop": 4, "Adagrad": 4, "SGD": 0,
              "Adadelta": 8, "NAdam": 8, "Adamax": 8}
    for name, b in expect.items():
        assert demo.train_one(name, data, epochs=1, seed=0).state_bytes_per_param == b, name


def test_table_formatting():
    r = demo.Result("Adam", {"lr": 1e-3}, 0.1, 0.9, 0.2, 0.8, 1.0, 0.1, 0.0, 8.0)
    t = demo.format_table([r]).splitlines()
    assert t[0].split()[:3] == ["optimizer", "lr", "train"]
    assert t[2].split()[:6] == ["Adam", "0.001", "0.1000", "0.900", "0.2000", "0.800"]


def _fake_results(names, epochs=3, steps=40):
    rng = np.random.default_rng(0)
    noise = rng.random(epochs * steps)                       # the batches every run shares
    out = []
    for i, name in enumerate(names):
        r = demo.Result(name, {"lr": 1e-3})
        r.batch_losses = list(0.7 - 0.01 * i + 0.1 * noise)
        r.epoch_val_loss = [0.7 - 0.02 * i * e for e in range(epochs + 1)]
        out.append(r)
    return out


def test_plot_one_legend_for_all_panels_and_differences_to_adam():
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt
    names = ["SGD", "Adam", "AdamW", "RMSprop"]
    res = _fake_results(names)
    fig = demo.figure(res, "t")
    try:
        assert len(fig.axes) == 4
        (legend,) = fig.legends                              # one, shared by every panel
        assert [t.get_text() for t in legend.get_texts()] == names
        assert all(ax.get_legend() is None for ax in fig.axes)
        for ax in fig.axes:                                  # every panel draws every run
            assert [ln.get_label() for ln in ax.get_lines()] == names
        train_diff, val_diff = fig.axes[2], fig.axes[3]
        assert "Adam's" in train_diff.get_title() and "Adam's" in val_diff.get_title()
        lines = {ln.get_label(): ln for ln in val_diff.get_lines()}
        np.testing.assert_allclose(lines["Adam"].get_ydata(), 0.0)
        np.testing.assert_allclose(lines["RMSprop"].get_ydata(),
                                   np.subtract(res[3].epoch_val_loss, res[1].epoch_val_loss))
        # the shared batch noise cancels: the differences of the training curves are flat
        t = {ln.get_label(): ln.get_ydata() for ln in train_diff.get_lines()}
        np.testing.assert_allclose(t["AdamW"], -0.01, atol=1e-12)
        np.testing.assert_allclose(t["SGD"], 0.01, atol=1e-12)
        assert train_diff.get_yscale() == "symlog"
    finally:
        plt.close(fig)
    fig = demo.figure(_fake_results(["SGD"]), "t")           # one run: nothing to subtract
    try:
        assert len(fig.axes) == 2 and len(fig.legends) == 1
    finally:
        plt.close(fig)


def test_plot_subtracts_the_first_run_without_adam():
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt
    fig = demo.figure(_fake_results(["RMSprop", "SGD"]), "t")
    try:
        assert "RMSprop's" in fig.axes[3].get_title()
        np.testing.assert_allclose(fig.axes[3].get_lines()[0].get_ydata(), 0.0)
    finally:
        plt.close(fig)


def test_unknown_optimizer_is_an_error():
    with pytest.raises(ValueError, match="unknown optimizer 'adamz'"):
        demo._parse_optimizers("adam,adamz")
    assert demo._parse_optimizers("sgd, ADAM") == ["SGD", "Adam"]


# --------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------
def test_help_lists_demo_and_bench():
    out = subprocess.run([sys.executable, "-m", "fastadam", "--help"], capture_output=True,
                         text=True, timeout=60, env=_env(), cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "demo" in out.stdout and "bench" in out.stdout


def test_demo_quick_end_to_end(tmp_path):
    out = subprocess.run([sys.executable, "-m", "fastadam", "demo", "--quick", "--out",
                          str(tmp_path)], capture_output=True, text=True, timeout=240,
                         env=_env(), cwd=str(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    header = next(i for i, l in enumerate(lines) if l.startswith("optimizer"))
    rows = {l.split()[0]: l.split() for l in lines[header + 2:header + 2 + 8]}
    assert list(rows) == list(demo.OPTIMIZERS)
    for name, cols in rows.items():
        train_loss, train_acc, val_loss, val_acc = map(float, cols[2:6])
        assert 0 < train_loss < 0.6931, name      # below the loss of a constant guess
        assert 0.5 < val_acc <= 1.0, name
    # the progress went to stderr, the table to stdout
    assert "Adam" in out.stderr and "optimizer" not in out.stderr
    png = tmp_path / "fastadam-demo.png"
    # it says where it wrote each file
    assert f"written to {tmp_path / 'fastadam-demo.json'}" in out.stdout
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib is not installed" in out.stdout
    else:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        assert f"written to {png}" in out.stdout
    summary = json.loads((tmp_path / "fastadam-demo.json").read_text())
    assert [r["name"] for r in summary["results"]] == list(demo.OPTIMIZERS)
    adam = summary["results"][0]
    assert len(adam["epoch_val_loss"]) == summary["epochs"] + 1
    assert float(rows["Adam"][4]) == pytest.approx(adam["val_loss"], abs=1e-4)


def test_demo_filter_epochs_and_bad_input(tmp_path):
    out = subprocess.run([sys.executable, "-m", "fastadam", "demo", "--optimizers", "sgd,adam",
                          "--epochs", "1", "--samples", "256", "--no-plot", "--out",
                          str(tmp_path)], capture_output=True, text=True, timeout=120,
                         env=_env())
    assert out.returncode == 0, out.stderr
    assert "1 epochs" in out.stdout
    names = [r["name"] for r in json.loads((tmp_path / "fastadam-demo.json").read_text())
             ["results"]]
    assert names == ["SGD", "Adam"]
    assert not (tmp_path / "fastadam-demo.png").exists()
    assert f"written to {tmp_path / 'fastadam-demo.json'}" in out.stdout
    assert ".png" not in out.stdout
    bad = subprocess.run([sys.executable, "-m", "fastadam", "demo", "--optimizers", "lion",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=60,
                         env=_env())
    assert bad.returncode == 2 and "unknown optimizer 'lion'" in bad.stderr


def test_progress_bar_draws_on_a_terminal_and_logs_lines_otherwise():
    import io

    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    p = demo.Progress(4, stream=tty, width=10)
    p.set_label("Adam")
    p.advance(2)
    assert "[#####-----]  50.0%  Adam" in tty.getvalue()
    p.log("Adam done")
    p.close()
    assert "Adam done\n" in tty.getvalue() and tty.getvalue().endswith("\r\033[K")

    plain = io.StringIO()
    p = demo.Progress(4, stream=plain)
    p.set_label("Adam")
    p.advance(4)
    p.log("Adam done")
    p.close()
    assert plain.getvalue() == "Adam done\n"          # no control characters in logs
