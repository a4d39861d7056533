"""Where numba's on-disk cache of fastadam's kernels lives: a per-user folder, never the
installed package.

numba's default (``cache=True``) writes next to the source, in the package's
``__pycache__``: inside ``site-packages`` for an installed fastadam.  Those files
outlive an uninstall, and the folder they leave behind becomes a namespace package
that shadows a later (editable) install.  So fastadam's kernels are cached in

1. ``NUMBA_CACHE_DIR`` if set (numba's own setting, honoured as numba does);
2. else ``FASTADAM_CACHE_DIR`` if set;
3. else the platform's per-user cache folder: ``$XDG_CACHE_HOME/fastadam`` (default
   ``~/.cache/fastadam``) on Linux, ``~/Library/Caches/fastadam`` on macOS,
   ``%LOCALAPPDATA%\\fastadam\\Cache`` on Windows;
4. and where that folder cannot be made or written (no home directory, say),
   ``<tempdir>/fastadam-<user>``, made with mode 0700 and used only while this user
   owns it and nobody else may write to it;

inside it, a folder per fastadam version (two versions never load each other's
code) and, as numba does, per source folder (a hash of its path).  Functions of
other packages keep numba's own locators.  :func:`install` registers the locator
with numba; :mod:`fastadam.kernels` calls it when it is imported, before any kernel
is made.
"""

from __future__ import annotations

import getpass
import os
import pathlib
import sys
import tempfile

from .._version import __version__

_PKG_DIR = str(pathlib.Path(__file__).resolve().parents[1])


def user_cache_dir() -> str:
    """The per-user root folder of fastadam's kernel cache (``FASTADAM_CACHE_DIR`` if set);
    the kernels of this version are in its subfolder ``__version__``."""
    env = os.environ.get("FASTADAM_CACHE_DIR")
    if env:
        return env
    home = pathlib.Path.home()
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(home / "AppData" / "Local")
        return os.path.join(base, "fastadam", "Cache")
    if sys.platform == "darwin":
        return str(home / "Library" / "Caches" / "fastadam")
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or str(home / ".cache"), "fastadam")


def _fallback_dir() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # pragma: no cover - no user name on this platform
        user = str(os.getuid()) if hasattr(os, "getuid") else "user"
    return os.path.join(tempfile.gettempdir(), f"fastadam-{user}")


def _private_fallback_dir():
    """:func:`_fallback_dir`, made private to this user (mode 0700), or None where it
    exists but another user owns it or others may write to it: numba's cache files are
    pickles, and loading one runs code, so a folder in a shared temp directory that
    someone else could have planted is never used."""
    path = _fallback_dir()
    os.makedirs(path, mode=0o700, exist_ok=True)
    if hasattr(os, "getuid"):
        st = os.stat(path)
        if st.st_uid != os.getuid() or st.st_mode & 0o022:
            return None
    return path


def _is_ours(py_file) -> bool:
    try:
        path = str(pathlib.Path(py_file).resolve())
    except (OSError, RuntimeError):  # pragma: no cover - odd paths
        return False
    return path.startswith(_PKG_DIR + os.sep)


def _locator_class():
    from numba.core import caching

    class FastadamCacheLocator(caching._SourceFileBackedLocatorMixin, caching._CacheLocator):
        """numba cache locator for fastadam's own kernels (see the module docstring)."""

        def __init__(self, py_func, py_file, root):
            self._py_file = py_file
            self._lineno = py_func.__code__.co_firstlineno
            self._cache_path = os.path.join(root, __version__,
                                            self.get_suitable_cache_subpath(py_file))

        def get_cache_path(self):
            return self._cache_path

        @classmethod
        def from_function(cls, py_func, py_file):
            if not _is_ours(py_file) or not os.path.exists(py_file):
                return None
            for root_of in (user_cache_dir, _private_fallback_dir):
                try:
                    root = root_of()
                    if root is None or not os.path.isabs(root):
                        continue        # e.g. no home directory: "~" left unexpanded
                    self = cls(py_func, py_file, root)
                    self.ensure_cache_path()
                except (OSError, RuntimeError):     # RuntimeError: Path.home() (3.12+)
                    continue
                return self
            return None     # pragma: no cover - neither folder usable: numba's locators

    return FastadamCacheLocator


_installed = None


def install():
    """Put fastadam's locator in numba's list, after the ``NUMBA_CACHE_DIR`` one and
    before the in-tree one (idempotent; a no-op where numba is missing)."""
    global _installed
    if _installed is not None:
        return _installed
    try:
        from numba.core import caching
    except ImportError:  # pragma: no cover - the numba backend is unavailable anyway
        return None
    cls = _locator_class()
    impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl    # renamed in 0.6x
    classes = impl._locator_classes
    user = [c for c in classes if "UserProvided" in c.__name__]
    at = classes.index(user[0]) + 1 if user else 0
    classes.insert(at, cls)
    _installed = cls
    return cls
