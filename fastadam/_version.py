"""The version of fastadam, in a module of its own: the kernel cache is keyed by it
(:mod:`fastadam.kernels._cache`) and a kernel module may not import the package root."""

__version__ = "0.1.0"
