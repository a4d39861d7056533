"""Compiled loops over flat buffers: :mod:`.cpu` (numba) and, where present, :mod:`.cuda`.

Importing this package registers the per-user location of the kernels' on-disk cache
with numba (:mod:`._cache`): compiled code is never written inside the installed
package.
"""

from ._cache import install as _install_cache

_install_cache()
