"""Build helper for fastadam's Cython backend (used by setup.py; not installed).

``cython_extensions()`` generates ``fastadam/_cython/_rules.pxi`` from the rule
sources (``fastadam/_cython/_codegen.py``), cythonizes the ``.pyx`` files and
returns the extensions.  ``BuildExt`` (setup.py's ``build_ext``) adds the compiler
flags once the compiler is known:

* ``-O3``, ``-ffp-contract=off`` (no fused multiply-add contraction: each
  operation is rounded as in the reference and the numba kernels) and
  ``-fno-math-errno`` (lets ``sqrt`` be a single instruction; changes no result).
  Never ``-ffast-math`` and never ``-march=native``: wheels must be portable and
  results must match the other backends.
* OpenMP (``-fopenmp``, MSVC ``/openmp``) when a tiny OpenMP program compiles and
  links with the compiler in use; otherwise, or with ``FASTADAM_NO_OPENMP=1``,
  a serial build (the ``prange`` loops then run serially).
* Function multi-versioning on x86-64 (GCC >= 6 / clang >= 14
  ``target_clones("avx2", "default")``; GCC >= 12: ``"arch=x86-64-v3"``, AVX2 with
  FMA, where the rules' ``fma`` is one instruction rather than a libm call): every
  loop is compiled twice, for baseline x86-64 (SSE2) and for AVX2, and the dynamic
  loader picks one for the CPU at hand.
  The wheel stays portable; on AVX2 machines cache-resident steps run with 8-wide
  vectors.  Results are identical (IEEE operations, no contraction into FMA; the
  rules' explicit ``fma`` is correctly rounded in both versions).
  Cython has no syntax for the attribute, so ``mark_target_clones`` prefixes the
  loop definitions (``_loop_*``) of the generated ``kernels.c`` with the macro
  ``FASTADAM_CLONES`` (defined in kernels.pyx), which expands to the attribute when
  ``-DFASTADAM_TARGET_CLONES`` is passed: that is done when a probe program using
  the attribute compiles and links.  The exported API functions are plain
  wrappers around the loops (GCC rejects taking the address of a multi-versioned
  static function twice, as Cython's C-API export table does).

Environment:

``FASTADAM_NO_OPENMP=1``
    build without OpenMP.
``FASTADAM_NO_CYTHON=1``
    build no extension at all (the cython backend is then unavailable).
``FASTADAM_NO_TARGET_CLONES=1``
    no AVX2 versions of the loops (baseline instructions only).
``FASTADAM_EXTRA_CFLAGS``
    extra compiler flags, e.g. ``-mavx2`` for a machine-specific build (not portable).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import sys
import tempfile

from setuptools import Extension
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
PKG = os.path.join("fastadam", "_cython")
MODULES = ("kernels", "backend")

# x86-64-v3 (AVX2 + FMA: the rules' fma() is one instruction there, a libm call in the
# baseline version) where the compiler knows it (GCC >= 12), else AVX2.
_CLONES_V3_TEST = r"""
#include <math.h>
__attribute__((target_clones("arch=x86-64-v3", "default")))
static void scale(float* p, long n, float a)
{ for (long i = 0; i < n; i++) p[i] = fmaf(p[i], a, a); }
int main(void) { float p[4] = {1, 2, 3, 4}; scale(p, 4, 2.0f); return p[3] == 10.0f ? 0 : 1; }
"""

_CLONES_TEST = r"""
__attribute__((target_clones("avx2", "default")))
static void scale(float* p, long n, float a) { for (long i = 0; i < n; i++) p[i] *= a; }
int main(void) { float p[4] = {1, 2, 3, 4}; scale(p, 4, 2.0f); return p[3] == 8.0f ? 0 : 1; }
"""

# A loop definition in Cython's output (not its prototype, which ends in "; /*proto*/"):
# "static void __pyx_fuse_<k>__pyx_f_8fastadam_7_cython_7kernels__loop_<name>(...) {"
_LOOP_DEF = re.compile(
    r"^static void (__pyx_fuse_\d+__pyx_f_8fastadam_7_cython_7kernels__loop_\w+\([^;{}]*\)) \{$",
    re.M)

_OMP_TEST = r"""
#include <omp.h>
int main(void) {
    int s = 0;
    #pragma omp parallel for reduction(+:s)
    for (int i = 0; i < 16; i++) s += i;
    return (s == 120 && omp_get_max_threads() >= 1) ? 0 : 1;
}
"""


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def _load_codegen():
    path = os.path.join(HERE, PKG, "_codegen.py")
    spec = importlib.util.spec_from_file_location("_fastadam_codegen", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def generate_rules() -> str:
    """Write ``fastadam/_cython/_rules.pxi`` from ``fastadam/rules`` (if it changed)."""
    target = os.path.join(HERE, PKG, "_rules.pxi")
    _load_codegen().write(os.path.join(HERE, "fastadam", "rules"), target)
    return target


def mark_target_clones(c_file: str) -> int:
    """Prefix each loop definition in ``c_file`` with ``FASTADAM_CLONES``; return the count.

    Idempotent: a definition already prefixed does not match again.
    """
    with open(c_file) as f:
        text = f.read()
    new, n = _LOOP_DEF.subn(r"FASTADAM_CLONES static void \1 {", text)
    if n:
        with open(c_file, "w") as f:
            f.write(new)
    return n


def cython_extensions() -> list:
    """The Cython extensions, cythonized (``[]`` with ``FASTADAM_NO_CYTHON=1``)."""
    if _truthy("FASTADAM_NO_CYTHON"):
        print("fastadam: FASTADAM_NO_CYTHON set; not building the cython backend")
        return []
    try:
        from Cython.Build import cythonize
    except ImportError as e:
        raise RuntimeError(
            "building fastadam's Cython backend needs Cython>=3.0 (pip install 'cython>=3'); "
            "set FASTADAM_NO_CYTHON=1 to install without it") from e

    generate_rules()
    exts = [Extension(f"fastadam._cython.{m}", [os.path.join(PKG, f"{m}.pyx")])
            for m in MODULES]
    exts = cythonize(exts, language_level=3, quiet=True,
                     compiler_directives={"embedsignature": True})
    mark_target_clones(os.path.join(HERE, PKG, "kernels.c"))
    return exts


def _compiles(compiler, cflags, ldflags=None, code=_OMP_TEST) -> bool:
    """Whether ``code`` compiles with ``cflags`` and links with ``ldflags`` (default: the same)."""
    tmp = tempfile.mkdtemp(prefix="fastadam-build-")
    try:
        src = os.path.join(tmp, "t.c")
        with open(src, "w") as f:
            f.write(code)
        devnull = open(os.devnull, "w")
        old_out, old_err = os.dup(1), os.dup(2)
        try:  # keep the expected failure output of a probe out of the build log
            os.dup2(devnull.fileno(), 1)
            os.dup2(devnull.fileno(), 2)
            objs = compiler.compile([src], output_dir=tmp, extra_postargs=cflags)
            compiler.link_executable(objs, os.path.join(tmp, "t"),
                                     extra_postargs=cflags if ldflags is None else ldflags)
        finally:
            os.dup2(old_out, 1)
            os.dup2(old_err, 2)
            os.close(old_out)
            os.close(old_err)
            devnull.close()
        return True
    except Exception:
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class BuildExt(build_ext):
    """``build_ext`` adding optimization and (when available) OpenMP flags."""

    def build_extensions(self):
        msvc = self.compiler.compiler_type == "msvc"
        if msvc:
            cflags, omp = ["/O2", "/fp:precise"], (["/openmp"], [])
        else:
            cflags = ["-O3"]
            for flag in ("-ffp-contract=off", "-fno-math-errno"):
                if _compiles(self.compiler, [flag], code="int main(void) { return 0; }\n"):
                    cflags.append(flag)
            omp = (["-fopenmp"], ["-fopenmp"])
        if msvc or _truthy("FASTADAM_NO_TARGET_CLONES"):
            pass
        elif _compiles(self.compiler, ["-O2"], ["-lm"], code=_CLONES_V3_TEST):
            cflags.append("-DFASTADAM_TARGET_CLONES=3")
            print("fastadam: loops built for baseline x86-64 and x86-64-v3 (target_clones)")
        elif _compiles(self.compiler, ["-O2"], [], code=_CLONES_TEST):
            cflags.append("-DFASTADAM_TARGET_CLONES")
            print("fastadam: loops built for baseline x86-64 and AVX2 (target_clones)")
        extra = os.environ.get("FASTADAM_EXTRA_CFLAGS", "").split()
        cflags += extra
        ldflags = []
        if _truthy("FASTADAM_NO_OPENMP"):
            print("fastadam: FASTADAM_NO_OPENMP set; building the serial Cython backend")
        elif _compiles(self.compiler, omp[0], omp[1]):
            cflags += omp[0]
            ldflags += omp[1]
            print("fastadam: building the Cython backend with OpenMP")
        else:
            print("fastadam: the compiler does not support OpenMP; building the serial "
                  "Cython backend", file=sys.stderr)
        for ext in self.extensions:
            ext.extra_compile_args = list(ext.extra_compile_args or []) + cflags
            ext.extra_link_args = list(ext.extra_link_args or []) + ldflags
        super().build_extensions()

    def run(self):
        # The Cython backend is optional: without a working C compiler fastadam still
        # installs (numba is the default backend) -- unless FASTADAM_REQUIRE_CYTHON=1
        # (CI), where a failed build must fail the install.
        from setuptools.errors import BaseError, CCompilerError
        try:
            super().run()
        except (BaseError, CCompilerError, OSError) as e:
            if _truthy("FASTADAM_REQUIRE_CYTHON"):
                raise
            print(f"fastadam: WARNING: the Cython backend was not built ({e}); fastadam "
                  "works without it (backend='numba'). Set FASTADAM_REQUIRE_CYTHON=1 to "
                  "make this an error.", file=sys.stderr)
