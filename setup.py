"""Build script: the Cython backend's extensions are compiled here at install.

Everything else lives in pyproject.toml.  Extensions are built from
``fastadam/_cython/*.pyx`` when that folder has sources (see that folder).
"""

import glob
import os
import sys

from setuptools import setup

# PEP 517 builds (pip install .) do not put the project directory on sys.path.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

ext_modules = []
cmdclass = {}
if glob.glob(os.path.join("fastadam", "_cython", "*.pyx")):
    try:
        from _build_ext import BuildExt, cython_extensions  # noqa: E402  (helper beside setup.py)
    except ImportError:
        cython_extensions = None
    if cython_extensions is not None:
        ext_modules = cython_extensions()
        cmdclass["build_ext"] = BuildExt  # adds -O3 and OpenMP flags for the compiler in use

setup(ext_modules=ext_modules, cmdclass=cmdclass)
