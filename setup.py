"""Build script: the Cython backend's extensions are compiled here at install.

Everything else lives in pyproject.toml.  Extensions are built from
``fastadam/_cython/*.pyx`` when that folder has sources (see that folder).
"""

import glob
import os

from setuptools import setup

ext_modules = []
if glob.glob(os.path.join("fastadam", "_cython", "*.pyx")):
    try:
        from _build_ext import cython_extensions  # noqa: E402  (helper beside setup.py)
    except ImportError:
        cython_extensions = None
    if cython_extensions is not None:
        ext_modules = cython_extensions()

setup(ext_modules=ext_modules)
