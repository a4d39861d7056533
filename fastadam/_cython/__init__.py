"""The Cython backend: ahead-of-time OpenMP kernels, built at install.

``backend`` (``run(kernel_name, arrays, scalars)``, the ``"cython"`` backend) and
``kernels`` (the C API declared in ``kernels.pxd``, re-exported by
``fastadam/capi.pxd``) are compiled extensions; see docs/cython.md.
"""
