"""Start-up costs in a fresh interpreter: ``import fastadam`` and the first step
(numba cache warm: asv runs each timeraw benchmark several times)."""

from . import PATH_SETUP


class Startup:
    timeout = 300

    def timeraw_import(self):
        return "import fastadam", PATH_SETUP

    def timeraw_first_step(self):
        return ("""
opt = fastadam.Adam({"w": np.zeros(4096, np.float32)})
opt.grads["w"][...] = 1.0
opt.step()
""", PATH_SETUP + "; import numpy as np, fastadam")
