"""Where the kernels' on-disk cache goes (fastadam.kernels._cache): the per-user folder,
the overrides, and the private fallback when that folder cannot be used."""

from __future__ import annotations

import os

import pytest

from fastadam import _version
from fastadam.kernels import _cache
from fastadam.rules import adam as rule

pytest.importorskip("numba")


def _locate(monkeypatch, tmp, **env):
    for k in ("FASTADAM_CACHE_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(_cache.tempfile, "gettempdir", lambda: str(tmp))
    tmp.mkdir(exist_ok=True)
    loc = _cache._locator_class().from_function(rule.adam, rule.__file__)
    return None if loc is None else loc.get_cache_path()


def test_per_user_folder_and_overrides(monkeypatch, tmp_path):
    path = _locate(monkeypatch, tmp_path / "tmp", XDG_CACHE_HOME=str(tmp_path / "xdg"))
    assert path.startswith(str(tmp_path / "xdg" / "fastadam" / _version.__version__))
    path = _locate(monkeypatch, tmp_path / "tmp", FASTADAM_CACHE_DIR=str(tmp_path / "mine"))
    assert path.startswith(str(tmp_path / "mine" / _version.__version__))
    assert os.path.isdir(path)


def test_unusable_folder_falls_back_to_a_private_one(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    # a relative folder (an unexpanded "~", a relative XDG_CACHE_HOME) is never used
    path = _locate(monkeypatch, tmp_path / "tmp", FASTADAM_CACHE_DIR="relative/dir")
    root = _cache._fallback_dir()
    assert root.startswith(str(tmp_path / "tmp")) and path.startswith(root)
    assert os.stat(root).st_mode & 0o077 == 0
    assert not os.path.exists("relative") and not (tmp_path / "relative").exists()


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX permissions")
def test_fallback_that_others_may_write_is_refused(monkeypatch, tmp_path):
    monkeypatch.setattr(_cache.tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.chdir(tmp_path)
    planted = tmp_path / os.path.basename(_cache._fallback_dir())
    planted.mkdir()
    planted.chmod(0o777)                 # as if another user had made it for us
    assert _cache._private_fallback_dir() is None
    assert _locate(monkeypatch, tmp_path, FASTADAM_CACHE_DIR="relative") is None
    planted.chmod(0o700)
    assert _cache._private_fallback_dir() == str(planted)
