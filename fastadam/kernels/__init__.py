"""Compiled loops over flat buffers: :mod:`.cpu` (numba) and, where present, :mod:`.cuda`."""
