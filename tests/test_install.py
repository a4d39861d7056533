"""An installed fastadam never writes into its own folder.

The sequence a new user runs (README): ``pip install ".[demo]" && fastadam demo``, later
``pip install -e ...``.  numba's default cache location is the source's ``__pycache__``,
inside ``site-packages``; those files outlived the uninstall of the first install and the
folder left behind shadowed the editable install (``import fastadam`` found a namespace
package).  Here: a non-editable install into a folder of its own, the demo and a step from
another folder, then the install's own files removed as ``pip uninstall`` removes them:
nothing of fastadam may remain, and the kernels must have been cached in the per-user
folder (``fastadam.kernels._cache``).
"""

from __future__ import annotations

import csv
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

STEP = ("import numpy as np, fastadam; o = fastadam.Adam([np.zeros(70000, np.float32), "
        "np.zeros(10, np.float32)]); o.grads[0][:] = 1; o.step(); o.step(); print('stepped')")


def _files(folder):
    return {str(p.relative_to(folder)) for p in pathlib.Path(folder).rglob("*") if p.is_file()}


@pytest.mark.slow
def test_installed_package_stays_as_installed(tmp_path):
    src = tmp_path / "src"          # a copy of the sources, so the build leaves the repo alone
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".ci-venv", ".venv", "build", "*.egg-info", "__pycache__", "*.so", "*.c",
        ".pytest_cache", ".hypothesis", ".asv", "demo-out", "*.png"))
    site = tmp_path / "site"
    env = dict(os.environ, FASTADAM_NO_CYTHON="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("FASTADAM_REQUIRE_CYTHON", None)
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps",
                        "--no-build-isolation", "--no-cache-dir", "--target", str(site),
                        str(src)], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    pkg = site / "fastadam"
    installed = _files(pkg)
    assert "kernels/cpu.py" in installed

    home = tmp_path / "home"
    run_env = dict(os.environ, PYTHONPATH=str(site), HOME=str(home),
                   XDG_CACHE_HOME=str(home / ".cache"))
    for k in ("FASTADAM_CACHE_DIR", "NUMBA_CACHE_DIR"):
        run_env.pop(k, None)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for cmd in ([sys.executable, "-c", STEP],
                [sys.executable, "-m", "fastadam", "demo", "--quick", "--optimizers",
                 "Adam,SGD", "--no-plot", "--out", str(elsewhere / "demo")],
                [sys.executable, "-c", "import fastadam; print(fastadam.__file__, "
                 "fastadam.__version__, fastadam.Adam)"]):
        r = subprocess.run(cmd, cwd=elsewhere, env=run_env, capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
    assert str(pkg) in r.stdout, r.stdout

    # nothing written inside the installed package (bytecode aside: pip compiles it too)
    new = {f for f in _files(pkg) - installed if not f.endswith(".pyc")}
    assert not new, f"files written into the installed package: {sorted(new)[:10]}"
    cached = _files(home / ".cache" / "fastadam")
    assert any(f.endswith(".nbi") for f in cached), sorted(cached)[:10]
    assert all(f.startswith(f"{_version(site)}/") for f in cached), sorted(cached)[:10]

    # pip uninstall removes the files its RECORD lists (and their bytecode): nothing of
    # fastadam may be left to shadow a later install
    dist = next(site.glob("fastadam-*.dist-info"))
    with open(dist / "RECORD", newline="") as f:
        for row in csv.reader(f):
            (site / row[0]).unlink(missing_ok=True)
    for d in sorted(pkg.rglob("__pycache__"), reverse=True):
        for p in d.glob("*.pyc"):
            p.unlink()
        d.rmdir()
    left = _files(pkg) if pkg.exists() else set()
    assert not left, f"left after uninstall: {sorted(left)[:10]}"


def _version(site):
    ns: dict = {}
    exec((site / "fastadam" / "_version.py").read_text(), ns)
    return ns["__version__"]
