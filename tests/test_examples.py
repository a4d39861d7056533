"""Each script in examples/ runs (as a user would run it) and its loss goes down."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")


def run_example(name: str) -> str:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    # tiny models: one BLAS/OpenMP thread each keeps a loaded CI machine from
    # oversubscribing its cores (results do not depend on it)
    env.setdefault("OMP_NUM_THREADS", "1")
    out = subprocess.run([sys.executable, os.path.join(EXAMPLES, name)], capture_output=True,
                         text=True, timeout=120, env=env, cwd=EXAMPLES)
    assert out.returncode == 0, f"{name} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def number_after(label: str, text: str) -> float:
    m = re.search("^" + re.escape(label) + r":\s*([-+0-9.eE]+)\s*$", text, re.M)
    assert m, f"no {label!r} line in:\n{text}"
    return float(m.group(1))


def losses(text: str):
    initial, final = number_after("initial loss", text), number_after("final loss", text)
    assert 0 < final < initial, text
    return initial, final


def test_numpy_loop():
    text = run_example("numpy_loop.py")
    initial, final = losses(text)
    assert final < 0.5 * initial
    # fastadam.Adam and the hand-written NumPy Adam beside it end on the same weights
    assert number_after("max |fastadam - hand-written Adam| over all weights", text) < 1e-5
    assert "8 bytes per parameter" in text


def test_pytorch_loop():
    pytest.importorskip("torch")
    import fastadam.torch  # noqa: F401  (an import error must fail, not skip)
    text = run_example("pytorch_loop.py")
    initial, final = losses(text)
    assert final < 0.5 * initial
    # the torch.optim.Adam run beside it reaches the same loss
    m = re.search(r"torch.optim.Adam final loss: ([0-9.]+)", text)
    assert m and abs(float(m.group(1)) - final) < 1e-3, text
    m = re.search(r"max \|fastadam - torch.optim\| over all weights: ([-+0-9.eE]+)", text)
    assert m and float(m.group(1)) < 1e-4, text


def test_keras_style():
    import fastadam.keras  # noqa: F401
    initial, final = losses(run_example("keras_style.py"))
    assert final < 0.5 * initial


def test_embeddings():
    pytest.importorskip("torch")
    import fastadam.torch  # noqa: F401  (an import error must fail, not skip)
    text = run_example("embeddings.py")
    initial, final = losses(text)
    assert final < 0.8 * initial
    assert number_after("test accuracy", text) > 0.6
