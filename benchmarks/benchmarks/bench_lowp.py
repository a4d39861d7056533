"""Reduced-precision Adam state and low-precision parameters with float32 master weights.

The functional ``adam_`` on one flat buffer: float32 / bfloat16 / int8 moments with
float32 parameters, and bfloat16 parameters with a float32 master (float32 or bfloat16
moments).  Compare with bench_roofline.py (4 arrays read) at the same size; ``fastadam
bench`` prints the ratios (its reduced-precision table).
"""

import numpy as np

CASES = ["fp32 state", "bf16 state", "int8 state", "bf16 params fp32 master",
         "bf16 params bf16 state"]


class LowPrecisionAdam:
    params = (CASES, [1 << 20, 1 << 23])
    param_names = ["case", "size"]

    def setup(self, case, n):
        from fastadam import functional as F
        from fastadam import lowp
        rng = np.random.default_rng(0)
        f32 = np.float32
        p = rng.standard_normal(n, dtype=f32)
        g = rng.standard_normal(n, dtype=f32) * f32(1e-2)
        hp = dict(step=10, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8)
        if case.startswith("bf16 params"):
            try:
                import ml_dtypes
            except ImportError:     # asv: skip (NumPy has no bfloat16 without ml_dtypes)
                raise NotImplementedError("needs ml_dtypes") from None
            bf16 = ml_dtypes.bfloat16
            sd = "float32" if "fp32" in case else "bfloat16"
            lo, gl, w, st = p.astype(bf16), g.astype(bf16), p.copy(), lowp.new_state(sd, n)
            self.fn = lambda: F.adam_(lo, gl, st["exp_avg"], st["exp_avg_sq"], master_param=w,
                                      state_dtype=sd, **hp)
        else:
            sd = {"fp32 state": "float32", "bf16 state": "bfloat16", "int8 state": "int8"}[case]
            st = lowp.new_state(sd, n)
            kw = dict(exp_avg_scale=st.get("exp_avg_scale"),
                      exp_avg_sq_scale=st.get("exp_avg_sq_scale")) if sd == "int8" else {}
            self.fn = lambda: F.adam_(p, g, st["exp_avg"], st["exp_avg_sq"], state_dtype=sd,
                                      **kw, **hp)
        self.fn()                   # compile / load from the cache

    def time_step(self, case, n):
        self.fn()

    def peakmem_step(self, case, n):
        self.fn()


class AmpStep:
    """The façade's AMP step, ``AdamW(max_grad_norm=1.0).step(grad_scale=1024)`` (first
    pass + update), the one-pass ``step(grad_scale=1024, found_inf=0.0)``, and the plain
    ``step()`` of the same optimizer and size: at small sizes the differences are the
    Python of the transformed step, at 8M the first pass."""
    params = (["plain step", "amp step", "amp step, found_inf given"],
              [1 << 12, 1 << 16, 1 << 23])
    param_names = ["case", "size"]

    def setup(self, case, n):
        import fastadam
        rng = np.random.default_rng(0)
        f32 = np.float32
        opt = fastadam.AdamW([rng.standard_normal(n, dtype=f32)], lr=1e-3,
                             max_grad_norm=1.0 if case == "amp step" else None)
        opt.grads[0][...] = rng.standard_normal(n, dtype=f32) * f32(1e-2 * 1024)
        if case == "plain step":
            self.fn = opt.step
        elif case == "amp step":
            self.fn = lambda: opt.step(grad_scale=1024.0)
        else:
            # one pass: the caller (GradScaler) found no inf, no norm clipping
            self.fn = lambda: opt.step(grad_scale=1024.0, found_inf=0.0)
        self.fn()

    def time_step(self, case, n):
        self.fn()
